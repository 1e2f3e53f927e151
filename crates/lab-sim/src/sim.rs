//! The running simulator: the order desk behind the MLLP listener, the records tests read, and
//! the handle that drives it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use chrono::FixedOffset;
use ehr_core::{Classify, Clock, SystemClock};
use ehr_hl7v2::net::{MllpServerOptions, serve};
use ehr_hl7v2::{
    AckBuilder, AckCode, AckError, Charset, ControlId, Hl7Error, LabTest, Location, Message, MessageBuilder,
    OrderControl, OrderResponse, OrlBuilder, OrlResponse, Patient, ReplyCode, ReplyError, SegmentBuilder, Specimen,
    SpecimenResponse, Timestamp, charset,
};
use tokio::net::TcpListener;
use tokio::sync::{Notify, mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::catalog::filler_order_number;
use crate::checks::{self, Expectations, Problem, ReceivedTest};
use crate::config::{LabCharset, LabSimConfig, ResultMessage};
use crate::error::{LabSimError, Result};
use crate::results::{self, Job};

/// One frame the lab received on its order port, with what it made of it and what it answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedOrder {
    /// The sender's address.
    pub peer: SocketAddr,
    /// The frame's bytes as received (unframed).
    pub raw: Vec<u8>,
    /// The decoded text; `None` when the bytes were not text in the declared character set.
    pub text: Option<String>,
    /// The character set MSH-18 declared, when readable.
    pub charset: Option<Charset>,
    /// MSH-10, when readable.
    pub control_id: Option<String>,
    /// MSH-9, when readable.
    pub message_type: Option<String>,
    /// ORC-2 of the first order.
    pub placer_order_number: Option<String>,
    /// The lab's number for the first order, when it accepted it.
    pub filler_order_number: Option<String>,
    /// PID: id, kanji and kana names, birth date and sex as far as they were valid.
    pub patient: Patient,
    /// The SPM groups, in order.
    pub specimens: Vec<Specimen>,
    /// The ORC/OBR pairs, in order.
    pub tests: Vec<ReceivedTest>,
    /// Everything the checks found, warnings included.
    pub problems: Vec<Problem>,
    /// MSA-1 of the answer.
    pub ack_code: AckCode,
    /// The answer (ORL^O34 or ACK) as text.
    pub reply: String,
    /// A repeated MSH-10 answered as a retransmission (not processed again).
    pub retransmission: bool,
    /// When the lab received it (MSH-7 of the answer).
    pub received_at: Timestamp,
}

impl ReceivedOrder {
    /// SPM-4.1 of the first specimen.
    pub fn specimen_code(&self) -> Option<&str> {
        self.specimens.first().map(|s| s.kind.code.as_str())
    }

    /// The JLAC10 codes of the tests, in order.
    pub fn test_codes(&self) -> Vec<&str> {
        self.tests.iter().filter_map(ReceivedTest::jlac10).collect()
    }

    /// The problems' locations in the terse form (`PID-3`, `OBR(2)-4`), for assertions.
    pub fn problem_locations(&self) -> Vec<String> {
        self.problems.iter().map(|p| p.location.to_string()).collect()
    }
}

/// One result message sent (or tried) to the EHR.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SentResult {
    /// The order the results are for.
    pub placer_order_number: String,
    /// The lab's number of the order.
    pub filler_order_number: String,
    /// MSH-10 of the result message (the same for both copies of a duplicate).
    pub control_id: String,
    /// OUL^R22 or ORU^R01.
    pub message_type: ResultMessage,
    /// The message as text.
    pub text: String,
    /// 1, or 2 for the second copy when duplicates are on.
    pub copy: u8,
    /// Connection attempts made.
    pub attempts: u32,
    /// MSA-1 of the EHR's answer; `None` when no answer was read.
    pub ack_code: Option<ReplyCode>,
    /// MSA-2 of the answer.
    pub acknowledged_control_id: Option<String>,
    /// The ERR segments of the answer.
    pub ack_errors: Vec<ReplyError>,
    /// The error code (`EHR-HL7-023`…) of the last failure when no answer was read, or
    /// `not-configured` when there is no results address.
    pub failure: Option<&'static str>,
}

/// A frame as far as it could be read.
struct Frame {
    bytes: Vec<u8>,
    declared: Option<Charset>,
    text: Option<String>,
    peer: SocketAddr,
}

/// Where an accepted order's results stand.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ResultState {
    Waiting,
    Queued,
    Cancelled,
}

#[derive(Debug)]
struct OrderEntry {
    /// Index into `Records::received`.
    received: usize,
    state: ResultState,
}

#[derive(Debug, Default)]
struct Records {
    received: Vec<ReceivedOrder>,
    sent: Vec<SentResult>,
    /// (MSH-3, MSH-4, MSH-10) → index into `received`.
    control_ids: HashMap<(String, String, String), usize>,
    /// Placer order number → the accepted order.
    orders: HashMap<String, OrderEntry>,
}

/// The settings tests may change while the simulator runs.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Knobs {
    pub charset: LabCharset,
    pub result_message: ResultMessage,
    pub result_delay: Option<Duration>,
    pub duplicate_results: bool,
}

pub(crate) struct Shared {
    pub config: LabSimConfig,
    knobs: Mutex<Knobs>,
    records: Mutex<Records>,
    clock: Arc<dyn Clock>,
    sequence: AtomicU64,
    notify: Notify,
    pub shutdown: CancellationToken,
    outbox: mpsc::UnboundedSender<Job>,
}

/// Locks a mutex, going on after a panic elsewhere: the records stay readable for the test
/// that wants to see what happened.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Japan Standard Time, the offset the lab writes its timestamps in.
fn jst() -> Option<FixedOffset> {
    FixedOffset::east_opt(9 * 3600)
}

impl Shared {
    pub(crate) fn knobs(&self) -> Knobs {
        *lock(&self.knobs)
    }

    /// A fresh MSH-10 and the current time as MSH-7.
    ///
    /// Control ids are `L` + the time to the second + a 5-digit sequence: unique within a run
    /// and, as they start with the time, across restarts (the EHR de-duplicates on them).
    pub(crate) fn next_ids(&self) -> Result<(ControlId, Timestamp), Hl7Error> {
        let now = self.clock.now();
        let local = now.with_timezone(&jst().unwrap_or_else(|| now.fixed_offset().timezone()));
        let sequence = self.sequence.fetch_add(1, Ordering::Relaxed) % 100_000;
        let id = ControlId::new(&format!("L{}{sequence:05}", local.format("%Y%m%d%H%M%S")))?;
        let timestamp = Timestamp::new(&local.format("%Y%m%d%H%M%S%z").to_string())?;
        Ok((id, timestamp))
    }

    pub(crate) fn record_sent(&self, result: SentResult) {
        lock(&self.records).sent.push(result);
        self.notify.notify_waiters();
    }

    /// Answers one frame from the order port; `None` closes the connection (only when not even
    /// an answer can be written).
    fn take_order(self: &Arc<Self>, frame: Vec<u8>, peer: SocketAddr) -> Option<Vec<u8>> {
        let (reply_id, now) = match self.next_ids() {
            Ok(ids) => ids,
            Err(err) => {
                tracing::error!(code = err.code(), "cannot make a control id; closing the connection");
                return None;
            }
        };
        let knobs = self.knobs();
        let decoded = charset::detect(&frame)
            .and_then(|declared| Ok((declared, charset::decode_as(&frame, declared)?.into_owned())));
        let (declared, text) = match decoded {
            Ok(decoded) => decoded,
            Err(err) => {
                let frame = Frame { bytes: frame, declared: None, text: None, peer };
                return self.unreadable(frame, &err, knobs, &reply_id, &now);
            }
        };
        let message = match Message::parse(&text) {
            Ok(message) => message,
            Err(err) => {
                let frame = Frame { bytes: frame, declared: Some(declared), text: Some(text.clone()), peer };
                return self.unreadable(frame, &err, knobs, &reply_id, &now);
            }
        };

        let receiver = self
            .config
            .require_receiver_match
            .then_some((self.config.sending_application.as_str(), self.config.sending_facility.as_str()));
        let mut inspection = checks::inspect(&message, &Expectations { charset: knobs.charset, receiver });
        let mut records = lock(&self.records);

        // MSH-10 is unique per sender.
        let key = inspection
            .control_id
            .as_ref()
            .map(|id| (inspection.sender.0.clone(), inspection.sender.1.clone(), id.clone()));
        if let Some(previous) = key.as_ref().and_then(|k| records.control_ids.get(k)).copied() {
            if self.config.reject_duplicate_control_ids {
                inspection.problems.push(Problem {
                    location: Location::field("MSH", 10),
                    code: ehr_hl7v2::ErrorCode::DuplicateKeyIdentifier,
                    severity: ehr_hl7v2::ErrorSeverity::Error,
                    message: "MSH-10 was already used by an earlier message from this sender".to_owned(),
                });
            } else if let Some(first) = records.received.get(previous).cloned() {
                // A retransmission: the same answer again, nothing processed twice.
                let reply = first.reply.clone();
                records.received.push(ReceivedOrder {
                    peer,
                    raw: frame,
                    text: Some(text.clone()),
                    retransmission: true,
                    received_at: now,
                    ..first
                });
                drop(records);
                self.notify.notify_waiters();
                tracing::info!(control_id = inspection.control_id.as_deref(), "order retransmission answered again");
                return charset::encode_declared(&reply).ok().map(|wire| wire.into_owned());
            }
        }

        // Placer order numbers: a new order must not reuse one; a cancel must name one.
        let mut cancel_outcomes: HashMap<String, OrderControl> = HashMap::new();
        if inspection.is_order {
            let mut seen = Vec::new();
            for (test, orc) in inspection.tests.iter().zip(&inspection.orc_occurrences) {
                let placer = &test.placer_order_number;
                if placer.is_empty() || seen.contains(placer) {
                    continue;
                }
                seen.push(placer.clone());
                let existing = records.orders.get(placer);
                let at = Location::field("ORC", 2).occurrence(*orc);
                match (test.order_control.as_str(), existing) {
                    ("NW", Some(entry)) if entry.state != ResultState::Cancelled => inspection.problems.push(Problem {
                        location: at,
                        code: ehr_hl7v2::ErrorCode::DuplicateKeyIdentifier,
                        severity: ehr_hl7v2::ErrorSeverity::Error,
                        message: "ORC-2 placer order number is already in use at this laboratory".to_owned(),
                    }),
                    ("CA", None) => inspection.problems.push(Problem {
                        location: at,
                        code: ehr_hl7v2::ErrorCode::UnknownKeyIdentifier,
                        severity: ehr_hl7v2::ErrorSeverity::Error,
                        message: "ORC-2 names no order this laboratory holds".to_owned(),
                    }),
                    ("CA", Some(entry)) => {
                        let outcome = if entry.state == ResultState::Waiting {
                            OrderControl::CanceledAsRequested
                        } else {
                            OrderControl::UnableToCancel
                        };
                        cancel_outcomes.insert(placer.clone(), outcome);
                    }
                    _ => {}
                }
            }
        }

        let errors = inspection.problems.iter().filter(|p| p.is_error());
        let ack_code = if !inspection.is_order || inspection.problems.iter().any(|p| p.is_error() && p.is_rejection()) {
            AckCode::Reject
        } else if errors.count() > 0 {
            AckCode::Error
        } else {
            AckCode::Accept
        };
        let accepted = ack_code == AckCode::Accept;

        let reply = self.answer(&message, &inspection, ack_code, &cancel_outcomes, &reply_id, &now);
        let index = records.received.len();
        let mut to_schedule = Vec::new();
        if accepted {
            for test in &inspection.tests {
                let placer = &test.placer_order_number;
                match test.order_control.as_str() {
                    "NW" if !to_schedule.contains(placer) => {
                        records
                            .orders
                            .insert(placer.clone(), OrderEntry { received: index, state: ResultState::Waiting });
                        to_schedule.push(placer.clone());
                    }
                    "CA" => {
                        if let (Some(entry), Some(OrderControl::CanceledAsRequested)) =
                            (records.orders.get_mut(placer), cancel_outcomes.get(placer))
                        {
                            entry.state = ResultState::Cancelled;
                        }
                    }
                    _ => {}
                }
            }
        }
        if let Some(key) = key {
            records.control_ids.entry(key).or_insert(index);
        }
        let placer = inspection.tests.first().map(|t| t.placer_order_number.clone());
        let filler = placer.as_deref().filter(|_| accepted && !to_schedule.is_empty()).map(filler_order_number);
        tracing::info!(
            control_id = inspection.control_id.as_deref(),
            ack = ack_code.as_str(),
            problems = inspection.problems.len(),
            "order received"
        );
        records.received.push(ReceivedOrder {
            peer,
            raw: frame,
            text: Some(text.clone()),
            charset: Some(declared),
            control_id: inspection.control_id,
            message_type: inspection.message_type,
            placer_order_number: placer,
            filler_order_number: filler,
            patient: inspection.patient,
            specimens: inspection.specimens,
            tests: inspection.tests,
            problems: inspection.problems,
            ack_code,
            reply: reply.clone(),
            retransmission: false,
            received_at: now.clone(),
        });
        drop(records);
        self.notify.notify_waiters();

        if let Some(delay) = knobs.result_delay {
            for placer in to_schedule {
                let shared = Arc::clone(self);
                tokio::spawn(async move {
                    tokio::select! {
                        _ = shared.shutdown.cancelled() => {}
                        _ = tokio::time::sleep(delay) => {
                            // Already sent on demand or cancelled: nothing to do.
                            if let Err(err) = shared.queue_results(&placer, None) {
                                tracing::debug!(code = err.code(), "scheduled results not queued");
                            }
                        }
                    }
                });
            }
        }
        match charset::encode_declared(&reply) {
            Ok(wire) => Some(wire.into_owned()),
            Err(err) => {
                // The answer could not be written in the order's character set: say so in ASCII.
                tracing::warn!(code = err.code(), "answer not encodable; sending a minimal AR");
                minimal_ack(&self.config, LabCharset::Utf8, &err, &reply_id, &now)
                    .ok()
                    .and_then(|text| charset::encode(&text, Charset::Ascii).ok().map(|w| w.into_owned()))
            }
        }
    }

    /// The ORL^O34 (or, for a message that is not an order, ACK) answering an order.
    fn answer(
        &self,
        message: &Message<'_>,
        inspection: &checks::Inspection,
        ack_code: AckCode,
        cancels: &HashMap<String, OrderControl>,
        reply_id: &ControlId,
        now: &Timestamp,
    ) -> String {
        let errors = || inspection.problems.iter().map(Problem::to_ack_error);
        if !inspection.is_order {
            let ack = errors().fold(AckBuilder::new(message, ack_code), AckBuilder::error);
            return ack.build(reply_id, now).unwrap_or_default();
        }
        let orl = errors().fold(OrlBuilder::new(message, ack_code), OrlBuilder::error);
        match order_response(inspection, ack_code, cancels) {
            Some(response) => match orl.clone().response(response).build(reply_id, now) {
                Ok(text) => text,
                Err(_) => orl.build(reply_id, now).unwrap_or_default(),
            },
            None => orl.build(reply_id, now).unwrap_or_default(),
        }
    }

    /// Answers a frame that is not a readable HL7 message with AR, and records it.
    fn unreadable(
        &self,
        frame: Frame,
        err: &Hl7Error,
        knobs: Knobs,
        reply_id: &ControlId,
        now: &Timestamp,
    ) -> Option<Vec<u8>> {
        tracing::info!(code = err.code(), "unreadable frame rejected");
        let reply = minimal_ack(&self.config, knobs.charset, err, reply_id, now).unwrap_or_default();
        let location = err.location().cloned().unwrap_or_else(|| Location::segment("MSH"));
        let ack_error = err.to_ack_error();
        lock(&self.records).received.push(ReceivedOrder {
            peer: frame.peer,
            raw: frame.bytes,
            text: frame.text,
            charset: frame.declared,
            control_id: None,
            message_type: None,
            placer_order_number: None,
            filler_order_number: None,
            patient: Patient::default(),
            specimens: Vec::new(),
            tests: Vec::new(),
            problems: vec![Problem {
                location,
                code: ack_error.code(),
                severity: ehr_hl7v2::ErrorSeverity::Error,
                message: err.to_string(),
            }],
            ack_code: AckCode::Reject,
            reply: reply.clone(),
            retransmission: false,
            received_at: now.clone(),
        });
        self.notify.notify_waiters();
        charset::encode(&reply, knobs.charset.charset()).ok().map(|wire| wire.into_owned())
    }

    /// Builds and queues the results of an accepted order; `done` gets what was sent.
    pub(crate) fn queue_results(&self, placer: &str, done: Option<oneshot::Sender<Vec<SentResult>>>) -> Result<()> {
        let order = {
            let mut records = lock(&self.records);
            let index = match records.orders.get_mut(placer) {
                None => return Err(LabSimError::UnknownOrder),
                Some(entry) if entry.state != ResultState::Waiting => return Err(LabSimError::AlreadyResulted),
                Some(entry) => {
                    entry.state = ResultState::Queued;
                    entry.received
                }
            };
            records.received.get(index).cloned().ok_or(LabSimError::UnknownOrder)?
        };
        let knobs = self.knobs();
        let (control_id, now) = self.next_ids()?;
        let filler = filler_order_number(placer);
        let text = results::build(&order, placer, &filler, &self.config, knobs, &control_id, &now)?;
        let wire = charset::encode(&text, knobs.charset.charset())?.into_owned();
        let job = Job {
            placer: placer.to_owned(),
            filler,
            control_id: control_id.as_str().to_owned(),
            message_type: knobs.result_message,
            text,
            wire,
            copies: if knobs.duplicate_results { 2 } else { 1 },
            done,
        };
        self.outbox.send(job).map_err(|_| LabSimError::ShutDown)
    }
}

/// The response group of the ORL^O34: PID-3, each SPM with its orders' ORC (and OBR when the
/// test has a JLAC10 code). `None` when the order lacks what the group requires.
fn order_response(
    inspection: &checks::Inspection,
    ack_code: AckCode,
    cancels: &HashMap<String, OrderControl>,
) -> Option<OrlResponse> {
    let patient_id = inspection.patient.id.trim();
    if patient_id.is_empty() || inspection.specimens.iter().any(|s| s.kind.code.trim().is_empty()) {
        return None;
    }
    let accepted = ack_code == AckCode::Accept;
    let mut specimens: Vec<SpecimenResponse> = inspection
        .specimens
        .iter()
        .map(|specimen| SpecimenResponse { specimen: specimen.clone(), orders: Vec::new() })
        .collect();
    for test in &inspection.tests {
        let group = specimens.get_mut(test.specimen?)?;
        let placer = test.placer_order_number.clone();
        if placer.trim().is_empty() {
            return None;
        }
        let (control, filler, status) = match (test.order_control.as_str(), accepted) {
            ("NW", true) => (OrderControl::Accepted, Some(filler_order_number(&placer)), None),
            ("CA", true) => {
                let outcome = cancels.get(&placer).cloned().unwrap_or(OrderControl::UnableToCancel);
                let status = (outcome == OrderControl::CanceledAsRequested).then(|| "CA".to_owned());
                (outcome, None, status)
            }
            ("CA", false) => (OrderControl::UnableToCancel, None, None),
            _ => (OrderControl::UnableToAccept, None, None),
        };
        let lab_test = test.jlac10().filter(|code| checks::is_jlac10(code)).map(|code| LabTest {
            jlac10: code.to_owned(),
            name: test.name().to_owned(),
            local: test.code.local().cloned(),
        });
        group.orders.push(OrderResponse {
            control,
            placer_order_number: placer,
            filler_order_number: filler,
            order_status: status,
            test: lab_test,
        });
    }
    Some(OrlResponse { patient_id: patient_id.to_owned(), specimens })
}

/// An AR answering a frame that could not be read: the lab's own MSH (nothing can be copied
/// from the frame), MSA-1 `AR` without MSA-2, and one ERR.
fn minimal_ack(
    config: &LabSimConfig,
    charset: LabCharset,
    err: &Hl7Error,
    reply_id: &ControlId,
    now: &Timestamp,
) -> Result<String, Hl7Error> {
    let charset = charset.charset();
    let mut msh = SegmentBuilder::new("MSH")
        .field(3, &config.sending_application)
        .field(4, &config.sending_facility)
        .field(7, now.as_str())
        .field(9, "ACK")
        .field(10, reply_id.as_str())
        .field(11, "P")
        .field(12, "2.5");
    for name in charset.msh18() {
        msh = msh.repetition(18, [*name]);
    }
    if let Some(scheme) = charset.msh20() {
        msh = msh.field(20, scheme);
    }
    let ack_error: AckError = err.to_ack_error();
    let mut err_segment = SegmentBuilder::new("ERR")
        .components(3, [ack_error.code().code().to_string(), ack_error.code().text().to_owned(), "HL70357".to_owned()])
        .field(4, "E")
        .field(7, err.to_string());
    if let Some(location) = ack_error.location() {
        err_segment = err_segment.components(2, [location.segment_id().to_owned(), "1".to_owned()]);
    }
    MessageBuilder::default()
        .segment(msh)
        .segment(SegmentBuilder::new("MSA").field(1, "AR"))
        .segment(err_segment)
        .build()
}

/// The order desk as an MLLP handler.
struct OrderDesk {
    shared: Arc<Shared>,
}

impl ehr_hl7v2::MllpHandler for OrderDesk {
    async fn handle(&self, frame: Vec<u8>, peer: SocketAddr) -> Option<Vec<u8>> {
        self.shared.take_order(frame, peer)
    }
}

/// The order listener while it is up.
struct Running {
    token: CancellationToken,
    task: JoinHandle<()>,
}

/// The order port: its address (kept across `set_down`) and the running listener, if up.
struct Port {
    addr: SocketAddr,
    running: Option<Running>,
}

/// A running simulator. Clones drive the same simulator.
#[derive(Clone)]
pub struct LabSimHandle {
    shared: Arc<Shared>,
    port: Arc<tokio::sync::Mutex<Port>>,
    worker: Arc<Mutex<Option<JoinHandle<()>>>>,
    addr: SocketAddr,
}

impl std::fmt::Debug for LabSimHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LabSimHandle").field("addr", &self.addr).finish_non_exhaustive()
    }
}

/// Starts the simulator with the system clock: binds the order port, starts the results
/// sender, and returns at once.
pub async fn start(config: LabSimConfig) -> Result<LabSimHandle> {
    start_with_clock(config, Arc::new(SystemClock)).await
}

/// Starts the simulator with a given clock (MSH-7, OBX-14, control ids).
pub async fn start_with_clock(config: LabSimConfig, clock: Arc<dyn Clock>) -> Result<LabSimHandle> {
    let listener =
        TcpListener::bind(config.listen).await.map_err(|source| LabSimError::Bind { addr: config.listen, source })?;
    let addr = listener.local_addr().map_err(|source| LabSimError::Bind { addr: config.listen, source })?;
    let (outbox, inbox) = mpsc::unbounded_channel();
    let knobs = Knobs {
        charset: config.charset,
        result_message: config.result_message,
        result_delay: config.result_delay(),
        duplicate_results: config.duplicate_results,
    };
    let shared = Arc::new(Shared {
        config,
        knobs: Mutex::new(knobs),
        records: Mutex::new(Records::default()),
        clock,
        sequence: AtomicU64::new(0),
        notify: Notify::new(),
        shutdown: CancellationToken::new(),
        outbox,
    });
    let worker = tokio::spawn(results::deliver(Arc::clone(&shared), inbox));
    let running = listen(&shared, listener);
    Ok(LabSimHandle {
        shared,
        port: Arc::new(tokio::sync::Mutex::new(Port { addr, running: Some(running) })),
        worker: Arc::new(Mutex::new(Some(worker))),
        addr,
    })
}

fn listen(shared: &Arc<Shared>, listener: TcpListener) -> Running {
    let token = shared.shutdown.child_token();
    let config = &shared.config;
    let options = MllpServerOptions {
        idle_timeout: Duration::from_millis(config.idle_timeout_ms),
        max_frame_size: config.max_frame_size,
        ..MllpServerOptions::default()
    };
    let desk = Arc::new(OrderDesk { shared: Arc::clone(shared) });
    let task = tokio::spawn({
        let token = token.clone();
        async move {
            if let Err(err) = serve(listener, desk, options, token).await {
                tracing::error!(code = err.code(), "order listener stopped");
            }
        }
    });
    Running { token, task }
}

impl LabSimHandle {
    /// The order port's address (with the actual port when configured with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Every frame received on the order port, in order.
    pub fn received(&self) -> Vec<ReceivedOrder> {
        lock(&self.shared.records).received.clone()
    }

    /// Every result message sent or given up on, in order (each copy of a duplicate separately).
    pub fn sent_results(&self) -> Vec<SentResult> {
        lock(&self.shared.records).sent.clone()
    }

    /// Waits until at least `count` frames were received or `timeout` passes; returns them all.
    pub async fn wait_for_received(&self, count: usize, timeout: Duration) -> Vec<ReceivedOrder> {
        self.wait(timeout, |records| records.received.len() >= count).await;
        self.received()
    }

    /// Waits until at least `count` result messages were recorded or `timeout` passes.
    pub async fn wait_for_sent(&self, count: usize, timeout: Duration) -> Vec<SentResult> {
        self.wait(timeout, |records| records.sent.len() >= count).await;
        self.sent_results()
    }

    async fn wait(&self, timeout: Duration, done: impl Fn(&Records) -> bool) {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.shared.notify.notified();
            tokio::pin!(notified);
            // Registered before the check, so a record made in between still wakes us.
            notified.as_mut().enable();
            if done(&lock(&self.shared.records)) {
                return;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return;
            }
        }
    }

    /// Takes the order port down (`true`: the listener is closed and open connections are
    /// dropped, so senders see connects refused) or brings it back on the same port (`false`).
    pub async fn set_down(&self, down: bool) -> Result<()> {
        let mut port = self.port.lock().await;
        if down {
            if let Some(running) = port.running.take() {
                running.token.cancel();
                if let Err(err) = running.task.await {
                    tracing::warn!(panicked = err.is_panic(), "order listener task ended abnormally");
                }
                tracing::info!("order port down");
            }
            return Ok(());
        }
        if port.running.is_some() {
            return Ok(());
        }
        let listener = bind_again(port.addr).await?;
        port.running = Some(listen(&self.shared, listener));
        tracing::info!("order port up");
        Ok(())
    }

    /// Whether the order port is down.
    pub async fn is_down(&self) -> bool {
        self.port.lock().await.running.is_none()
    }

    /// Sends each result message twice with the same MSH-10 (or once).
    pub fn set_duplicate_results(&self, duplicate: bool) {
        lock(&self.shared.knobs).duplicate_results = duplicate;
    }

    /// The character set expected of orders and written in results.
    pub fn set_charset(&self, charset: LabCharset) {
        lock(&self.shared.knobs).charset = charset;
    }

    /// OUL^R22 or ORU^R01 for results queued from now on.
    pub fn set_result_message(&self, message: ResultMessage) {
        lock(&self.shared.knobs).result_message = message;
    }

    /// The delay before results of orders accepted from now on; `None`: on demand only.
    pub fn set_result_delay(&self, delay: Option<Duration>) {
        lock(&self.shared.knobs).result_delay = delay;
    }

    /// Sends the results of an accepted order now (its scheduled sending is skipped) and returns
    /// what was sent once the EHR answered or the sender gave up.
    pub async fn send_result_now(&self, placer_order_number: &str) -> Result<Vec<SentResult>> {
        let (done, sent) = oneshot::channel();
        self.shared.queue_results(placer_order_number, Some(done))?;
        sent.await.map_err(|_| LabSimError::ShutDown)
    }

    /// Stops everything: the order port, scheduled results, the sender (a message being resent
    /// is abandoned). Waits for the tasks to end.
    pub async fn shutdown(&self) {
        self.shared.shutdown.cancel();
        if let Some(running) = self.port.lock().await.running.take() {
            let _ = running.task.await;
        }
        let worker = lock(&self.worker).take();
        if let Some(worker) = worker {
            let _ = worker.await;
        }
    }
}

/// Binds the order port again. The old socket may take a moment to be released; tokio sets
/// SO_REUSEADDR, so connections in TIME_WAIT do not block the bind.
async fn bind_again(addr: SocketAddr) -> Result<TcpListener> {
    let mut attempts = 0;
    loop {
        match TcpListener::bind(addr).await {
            Ok(listener) => return Ok(listener),
            Err(err) if err.kind() == std::io::ErrorKind::AddrInUse && attempts < 40 => {
                attempts += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(source) => return Err(LabSimError::Bind { addr, source }),
        }
    }
}
