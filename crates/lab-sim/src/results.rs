//! Results out: the OUL^R22/ORU^R01 of an accepted order, and the sender that delivers result
//! messages to the EHR one at a time, resending while it is unreachable.

use std::sync::Arc;
use std::time::Duration;

use ehr_core::Classify;
use ehr_hl7v2::jahis::JLAC10;
use ehr_hl7v2::net::{MllpClient, MllpTimeouts};
use ehr_hl7v2::{
    CodedElement, Coding, ControlId, Hl7Error, Message, MessageHeader, Observation, OrderResults, Timestamp,
    build_oru_r01, build_oul_r22, charset, parse_ack,
};
use tokio::sync::{mpsc, oneshot};

use crate::catalog::{LOCAL_SYSTEM, generate};
use crate::config::{LabSimConfig, ResultMessage};
use crate::sim::{Knobs, ReceivedOrder, SentResult, Shared};

/// A result message waiting to be sent.
pub(crate) struct Job {
    pub placer: String,
    pub filler: String,
    pub control_id: String,
    pub message_type: ResultMessage,
    pub text: String,
    pub wire: Vec<u8>,
    /// 2 when duplicates are on: the same bytes, the same MSH-10, sent again after the first.
    pub copies: u8,
    pub done: Option<oneshot::Sender<Vec<SentResult>>>,
}

/// The results of order `placer` (its `NW` tests) as OUL^R22 or ORU^R01.
///
/// Per test: OBR with the placer and filler numbers and the test as ordered (JLAC10 and the
/// hospital's local code), ORC `SC`/`CM`, OBR-25 and OBX-11 `F`, one NM OBX whose OBX-3 is the
/// JLAC10 code (`JC10`) with the lab's local code as alternate, units, reference range and an
/// `H`/`L` flag when out of range; the specimen with its collection time (the time the order
/// arrived when the order gave none).
pub(crate) fn build(
    order: &ReceivedOrder,
    placer: &str,
    filler: &str,
    config: &LabSimConfig,
    knobs: Knobs,
    control_id: &ControlId,
    now: &Timestamp,
) -> Result<String, Hl7Error> {
    let mut orders = Vec::new();
    for test in order.tests.iter().filter(|t| t.placer_order_number == placer && t.order_control == "NW") {
        let jlac10 = test.jlac10().unwrap_or_default();
        let value = generate(jlac10, placer, order.patient.sex, test.name());
        let specimen = test.specimen.and_then(|i| order.specimens.get(i)).cloned().map(|mut specimen| {
            specimen.collected_at.get_or_insert_with(|| order.received_at.clone());
            specimen
        });
        let observation = Observation {
            set_id: "1".to_owned(),
            value_type: "NM".to_owned(),
            code: CodedElement {
                primary: Coding::new(jlac10, value.name.clone(), JLAC10),
                alternate: Some(Coding::new(value.local_code, value.name, LOCAL_SYSTEM)),
            },
            sub_id: String::new(),
            values: vec![value.value],
            units: value.unit.map(|unit| Coding::new(unit.clone(), unit, LOCAL_SYSTEM)),
            reference_range: value.reference_range,
            abnormal_flags: value.abnormal_flag.into_iter().map(str::to_owned).collect(),
            status: "F".to_owned(),
            observed_at: Some(now.clone()),
            notes: Vec::new(),
        };
        orders.push(OrderResults {
            placer_order_number: placer.to_owned(),
            filler_order_number: filler.to_owned(),
            service: test.code.clone(),
            order_control: Some("SC".to_owned()),
            order_status: Some("CM".to_owned()),
            result_status: Some("F".to_owned()),
            specimen,
            observations: vec![observation],
            notes: Vec::new(),
        });
    }
    let header = MessageHeader::new(
        (&config.sending_application, &config.sending_facility),
        (&config.receiving_application, &config.receiving_facility),
        control_id.clone(),
        now.clone(),
        knobs.charset.charset(),
    );
    match knobs.result_message {
        ResultMessage::OulR22 => build_oul_r22(&order.patient, &orders, &header),
        ResultMessage::OruR01 => build_oru_r01(&order.patient, &orders, &header),
    }
}

/// The sender: takes jobs in order and delivers each (both copies of a duplicate) before the
/// next, as a lab interface engine does over its one outbound connection.
pub(crate) async fn deliver(shared: Arc<Shared>, mut inbox: mpsc::UnboundedReceiver<Job>) {
    let config = &shared.config;
    let timeouts = MllpTimeouts {
        connect: Duration::from_millis(config.connect_timeout_ms),
        write: Duration::from_millis(config.ack_timeout_ms),
        reply: Duration::from_millis(config.ack_timeout_ms),
    };
    let mut client = config.results_to.as_ref().map(|addr| MllpClient::new(addr.clone(), timeouts));
    loop {
        let job = tokio::select! {
            _ = shared.shutdown.cancelled() => break,
            job = inbox.recv() => match job {
                Some(job) => job,
                None => break,
            },
        };
        let mut sent = Vec::new();
        for copy in 1..=job.copies {
            let mut result = SentResult {
                placer_order_number: job.placer.clone(),
                filler_order_number: job.filler.clone(),
                control_id: job.control_id.clone(),
                message_type: job.message_type,
                text: job.text.clone(),
                copy,
                attempts: 0,
                ack_code: None,
                acknowledged_control_id: None,
                ack_errors: Vec::new(),
                failure: None,
            };
            match client.as_mut() {
                Some(client) => send_with_retry(&shared, client, &job.wire, &mut result).await,
                None => result.failure = Some("not-configured"),
            }
            tracing::info!(
                control_id = %result.control_id,
                copy,
                attempts = result.attempts,
                ack = result.ack_code.map(|c| c.as_str()),
                failure = result.failure,
                "result message delivered"
            );
            shared.record_sent(result.clone());
            sent.push(result);
            if shared.shutdown.is_cancelled() {
                break;
            }
        }
        if let Some(done) = job.done {
            // The caller may have stopped waiting; the record is kept either way.
            let _ = done.send(sent);
        }
    }
}

/// Sends until an answer is read; transport failures (refused, timed out, closed) are retried
/// with doubling pauses, anything else ends the attempt. An AE or AR answer is an answer.
async fn send_with_retry(shared: &Shared, client: &mut MllpClient, wire: &[u8], result: &mut SentResult) {
    let config = &shared.config;
    let mut pause = Duration::from_millis(config.retry_initial_ms.max(1));
    let max_pause = Duration::from_millis(config.retry_max_ms.max(config.retry_initial_ms));
    loop {
        result.attempts += 1;
        match client.send(wire).await {
            Ok(reply) => {
                read_reply(&reply, result);
                return;
            }
            Err(err) if err.is_transport_failure() => {
                result.failure = Some(err.code());
                if config.max_attempts != 0 && result.attempts >= config.max_attempts {
                    tracing::warn!(control_id = %result.control_id, code = err.code(), "result not delivered; giving up");
                    return;
                }
                tracing::debug!(control_id = %result.control_id, code = err.code(), "result not delivered; retrying");
                tokio::select! {
                    _ = shared.shutdown.cancelled() => return,
                    _ = tokio::time::sleep(pause) => {}
                }
                pause = (pause * 2).min(max_pause);
            }
            Err(err) => {
                result.failure = Some(err.code());
                return;
            }
        }
    }
}

fn read_reply(reply: &[u8], result: &mut SentResult) {
    let parsed = charset::decode(reply).and_then(|text| parse_ack(&Message::parse(&text)?));
    match parsed {
        Ok(ack) => {
            result.ack_code = Some(ack.code);
            result.acknowledged_control_id = ack.acknowledged.map(|id| id.as_str().to_owned());
            result.ack_errors = ack.errors;
            result.failure = None;
        }
        Err(err) => result.failure = Some(err.code()),
    }
}
