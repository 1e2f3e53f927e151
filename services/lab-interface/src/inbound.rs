//! Results in: an OUL^R22 / ORU^R01 frame (MLLP or a batch file), or a FHIR Bundle from a lab
//! that speaks FHIR, becomes one `lab.result.received` event per order — committed together with
//! the message-log row before the lab gets its ACK, so a result the lab saw acknowledged is never
//! lost, and a result sent twice (same endpoint, same MSH-10) is stored once.
//!
//! Every refusal is an ACK with MSA-1 `AE` (the content is wrong) or `AR` (the message cannot be
//! processed here at all) and an ERR segment naming the field; nothing is stored.

use crate::LabInterface;
use crate::error::LabError;
use crate::mapping::{self, ResultContext};
use ehr_core::TenantContext;
use ehr_hl7v2::{
    AckBuilder, AckCode, AckError, ErrorCode, LabResults, Location, Message, MessageBuilder, SegmentBuilder, charset,
    parse_lab_results,
};
use ehr_store::{Hl7Message, LabEndpoint, NewEvent, Tx};
use serde_json::{Value, json};
use tracing::Instrument;

/// Topic of results received from a lab, one event per order.
pub const LAB_RESULT_RECEIVED: &str = "lab.result.received";

/// Why a result message was refused: the ACK code and the ERR to send.
struct Refusal {
    code: AckCode,
    error: AckError,
    why: String,
}

impl Refusal {
    fn new(code: AckCode, error_code: ErrorCode, location: Option<Location>, why: &str) -> Self {
        let mut error = AckError::new(error_code).diagnostic(why);
        if let Some(l) = location {
            error = error.at(l);
        }
        Self { code, error, why: why.to_owned() }
    }
}

/// An AR for bytes that are not an HL7 message we can answer in kind (no readable MSH).
fn bare_reject(why: &str, now: &ehr_hl7v2::Timestamp) -> Vec<u8> {
    let control_id = crate::outbound::new_control_id().map(|c| c.as_str().to_owned()).unwrap_or_default();
    let msh = SegmentBuilder::new("MSH")
        .field(3, "EHR")
        .field(7, now.as_str())
        .components(9, ["ACK"])
        .field(10, control_id)
        .field(11, "P")
        .field(12, "2.5");
    let msa = SegmentBuilder::new("MSA").field(1, "AR");
    let err = SegmentBuilder::new("ERR")
        .components(2, ["MSH", "1"])
        .components(3, ["100", "Segment sequence error", "HL70357"])
        .field(4, "E")
        .field(7, why);
    MessageBuilder::new(ehr_hl7v2::Delimiters::default())
        .segment(msh)
        .segment(msa)
        .segment(err)
        .build()
        .map(String::into_bytes)
        .unwrap_or_default()
}

impl LabInterface {
    /// Answers one inbound MLLP frame: the reply bytes (ACK), in the message's own character set.
    pub async fn ingest_frame(&self, frame: &[u8], peer: Option<std::net::IpAddr>) -> Vec<u8> {
        self.answer(frame, None, peer).await
    }

    /// Checks and stores one inbound message (an MLLP frame, or a batch file of `endpoint`) and
    /// builds its ACK, in the message's own character set — in a `hl7.receive` span (ids only:
    /// the message is PHI) whose context the stored rows and `lab.result.received` events
    /// carry, linked to the trace of the order the results answer.
    async fn answer(&self, frame: &[u8], endpoint: Option<&LabEndpoint>, peer: Option<std::net::IpAddr>) -> Vec<u8> {
        let span = tracing::info_span!(
            parent: None,
            "hl7.receive",
            otel.kind = "server",
            otel.status_code = tracing::field::Empty,
            lab.transport = if endpoint.is_some() { "file" } else { "mllp" },
            lab.endpoint = tracing::field::Empty,
            tenant = tracing::field::Empty,
            hl7.message_type = tracing::field::Empty,
            hl7.control_id = tracing::field::Empty,
            hl7.ack = tracing::field::Empty,
        );
        self.answer_in_span(frame, endpoint, peer).instrument(span).await
    }

    async fn answer_in_span(
        &self,
        frame: &[u8],
        endpoint: Option<&LabEndpoint>,
        peer: Option<std::net::IpAddr>,
    ) -> Vec<u8> {
        let now = self.clock().now();
        let Ok(ts) = crate::outbound::hl7_now(now) else { return Vec::new() };
        let text = match charset::decode(frame) {
            Ok(t) => t.into_owned(),
            Err(e) => return bare_reject(&format!("undecodable message: {e}"), &ts),
        };
        let message = match Message::parse(&text) {
            Ok(m) => m,
            Err(e) => return bare_reject(&format!("not an HL7 v2 message: {e}"), &ts),
        };
        let (code, errors) = match self.ingest(&message, &text, endpoint, peer).await {
            Ok(()) => (AckCode::Accept, Vec::new()),
            Err(r) => (r.code, vec![r.error]),
        };
        let span = tracing::Span::current();
        span.record("hl7.ack", code.as_str());
        if code != AckCode::Accept {
            span.record("otel.status_code", "error");
        }
        let Ok(control_id) = crate::outbound::new_control_id() else { return Vec::new() };
        let mut ack = AckBuilder::new(&message, code);
        for e in errors {
            ack = ack.error(e);
        }
        let Ok(reply) = ack.build(&control_id, &ts) else {
            return bare_reject("cannot build the acknowledgment", &ts);
        };
        charset::encode_declared(&reply).map(|b| b.into_owned()).unwrap_or_else(|_| reply.into_bytes())
    }

    /// Checks and stores one result message. `endpoint` is given for batch files (the directory
    /// names the lab); MLLP messages are routed by MSH-4 (the lab) and MSH-6 (us).
    async fn ingest(
        &self,
        message: &Message<'_>,
        text: &str,
        endpoint: Option<&LabEndpoint>,
        peer: Option<std::net::IpAddr>,
    ) -> Result<(), Refusal> {
        // Not the message's fault: AR (the lab resends), never AE (which tells it not to).
        let internal = |why: &str| Refusal::new(AckCode::Reject, ErrorCode::ApplicationInternalError, None, why);
        let message_type = message.message_type().map_err(|e| {
            Refusal::new(
                AckCode::Reject,
                ErrorCode::UnsupportedMessageType,
                Some(Location::field("MSH", 9)),
                &e.to_string(),
            )
        })?;
        let kind = format!("{}^{}", message_type.code(), message_type.trigger().unwrap_or_default());
        if kind != "OUL^R22" && kind != "ORU^R01" {
            return Err(Refusal::new(
                AckCode::Reject,
                ErrorCode::UnsupportedMessageType,
                Some(Location::field("MSH", 9)),
                "only OUL^R22 and ORU^R01 results are accepted here",
            ));
        }
        // Test (`T`) and debugging (`D`) messages never reach a patient's record.
        if message.msh().field(11).component(1).raw() != "P" {
            return Err(Refusal::new(
                AckCode::Reject,
                ErrorCode::UnsupportedProcessingId,
                Some(Location::field("MSH", 11)),
                "only production messages (MSH-11 P) are accepted",
            ));
        }
        let endpoint = match endpoint {
            Some(e) => e.clone(),
            None => {
                let lab = message.msh().field(4).component(1).unescape().into_owned();
                let us = message.msh().field(6).component(1).unescape().into_owned();
                let found = async {
                    let sys = self.store().system_read().await?;
                    let e = sys.lab_endpoint_by_facility(&lab, &us).await?;
                    sys.commit().await?;
                    Ok::<_, ehr_store::StoreError>(e)
                }
                .await
                .map_err(|_| internal("the message log is unavailable; resend later"))?;
                found.filter(|e| e.active).ok_or_else(|| {
                    Refusal::new(
                        AckCode::Reject,
                        ErrorCode::UnknownKeyIdentifier,
                        Some(Location::field("MSH", 4)),
                        "no active lab endpoint for this sending facility (MSH-4) and receiving facility (MSH-6)",
                    )
                })?
            }
        };
        if let Some(ip) = peer
            && !endpoint.allowed_peers.is_empty()
            && !endpoint.allowed_peers.iter().any(|p| p.parse::<std::net::IpAddr>().is_ok_and(|a| a == ip))
        {
            // Answered like an unknown facility: a stranger learns nothing about endpoints.
            return Err(Refusal::new(
                AckCode::Reject,
                ErrorCode::UnknownKeyIdentifier,
                Some(Location::field("MSH", 4)),
                "no active lab endpoint for this sending facility (MSH-4) and receiving facility (MSH-6)",
            ));
        }
        let span = tracing::Span::current();
        span.record("lab.endpoint", endpoint.id.as_str());
        span.record("tenant", endpoint.tenant.as_str());
        span.record("hl7.message_type", kind.as_str());
        let results = parse_lab_results(message).map_err(|e| Refusal {
            code: AckCode::Error,
            error: e.to_ack_error(),
            why: e.to_string(),
        })?;
        span.record("hl7.control_id", results.control_id.as_str());
        let ctx = TenantContext::new(endpoint.tenant.clone(), "lab-interface:inbound");
        let outcome = async {
            let tx = self.store().write(&ctx).await.map_err(LabError::from)?;
            let stored = self.store_results(&tx, &endpoint, &results, text, &kind).await?;
            tx.commit().await.map_err(LabError::from)?;
            Ok::<bool, Refused>(stored)
        }
        .await;
        let now = self.clock().now().timestamp_millis();
        let error_text = match &outcome {
            Ok(_) => None,
            Err(Refused::Content(r)) => Some(r.why.clone()),
            Err(Refused::Internal(e)) => Some(e.to_string()),
        };
        if let Ok(sys) = self.store().system_write().await
            && sys.touch_lab_endpoint(&endpoint.tenant, &endpoint.id, "in", now, error_text.as_deref()).await.is_ok()
        {
            let _ = sys.commit().await;
        }
        match outcome {
            Ok(true) => {
                tracing::info!(control_id = %results.control_id, endpoint = %endpoint.id, orders = results.orders.len(), "lab results stored");
                self.wake_relay();
                Ok(())
            }
            Ok(false) => {
                tracing::info!(control_id = %results.control_id, endpoint = %endpoint.id, "duplicate lab result message acknowledged again");
                Ok(())
            }
            Err(Refused::Content(r)) => Err(r),
            Err(Refused::Internal(e)) => {
                tracing::error!(control_id = %results.control_id, code = ehr_core::Classify::code(&e), "lab results not stored");
                Err(internal("the results could not be stored; resend later"))
            }
        }
    }

    /// In `tx`: the message-log row (unless this control id was seen: `false`) and one event per
    /// order. Each order must be one of this tenant's ServiceRequests for the patient in PID.
    async fn store_results(
        &self,
        tx: &Tx,
        endpoint: &LabEndpoint,
        results: &LabResults,
        text: &str,
        kind: &str,
    ) -> Result<bool, Refused> {
        if tx
            .hl7_message_by_control_id(&endpoint.id, "in", results.control_id.as_str())
            .await
            .map_err(LabError::from)?
            .is_some()
        {
            return Ok(false);
        }
        let now = self.clock().now();
        let received_at = now.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        let local_system = format!("urn:ehr:lab:{}:codes", endpoint.id);
        let mut events = Vec::new();
        let content = |code: ErrorCode, location: Location, why: &str| {
            Refused::Content(Refusal::new(AckCode::Error, code, Some(location), why))
        };
        // ERR-2 counts segments across the whole message.
        let mut obx_before = 0;
        for (n, order) in results.orders.iter().enumerate() {
            let obr = Location::field("OBR", 2).occurrence(n + 1);
            let sr_id = order.placer_order_number.as_str();
            let sr = tx.read_json("ServiceRequest", sr_id).await.map_err(|e| Refused::Internal(e.into()))?.ok_or_else(
                || {
                    Refused::Content(Refusal::new(
                        AckCode::Error,
                        ErrorCode::UnknownKeyIdentifier,
                        Some(obr.clone()),
                        "the placer order number names no order of this hospital",
                    ))
                },
            )?;
            // Results for an order cancelled or entered in error (a wrong-patient order, often)
            // are held back for a person to reconcile, not filed.
            if matches!(sr["status"].as_str(), Some("revoked" | "entered-in-error")) {
                return Err(content(
                    ErrorCode::UnknownKeyIdentifier,
                    obr,
                    "the order was cancelled or entered in error",
                ));
            }
            // …and only the lab the order went to reports on it.
            let subject = format!("ServiceRequest/{sr_id}");
            let sent = self.order_message(tx, &subject).await.map_err(Refused::Internal)?;
            // The results answer that order: a link to the trace that placed it.
            ehr_telemetry::trace::add_link(&tracing::Span::current(), sent.as_ref().and_then(|m| m.trace.as_deref()));
            if !sent.is_some_and(|m| was_sent_to(&m, &endpoint.id)) {
                return Err(content(
                    ErrorCode::UnknownKeyIdentifier,
                    obr,
                    "this order was not sent to this laboratory",
                ));
            }
            let patient_ref = sr["subject"]["reference"].as_str().unwrap_or_default().to_owned();
            // Results filed under the wrong patient are among the worst errors a lab interface
            // can make: PID-3 must be the ordering patient's id, as the order sent it.
            let patient = match patient_ref.strip_prefix("Patient/") {
                Some(id) => tx.read_json("Patient", id).await.map_err(|e| Refused::Internal(e.into()))?,
                None => None,
            };
            let expected = patient.as_ref().map(mapping::patient_id).unwrap_or_default();
            if expected.is_empty() || expected != results.patient.id {
                return Err(Refused::Content(Refusal::new(
                    AckCode::Error,
                    ErrorCode::UnknownKeyIdentifier,
                    Some(Location::field("PID", 3)),
                    "the patient id does not match the patient the order was placed for",
                )));
            }
            let mut seen = std::collections::HashSet::new();
            for (i, obx) in order.observations.iter().enumerate() {
                let occurrence = obx_before + i + 1;
                for coding in std::iter::once(&obx.code.primary).chain(obx.code.alternate.iter()) {
                    if coding.is_jlac10()
                        && ehr_terminology::shape::check(ehr_terminology::SystemId::Jlac10, &coding.code).is_err()
                    {
                        return Err(content(
                            ErrorCode::DataTypeError,
                            Location::field("OBX", 3).occurrence(occurrence),
                            "not a JLAC10 code (17 characters: analyte, identification, material, method, result)",
                        ));
                    }
                }
                // One result per test and sub-id: the result's identity (see `mapping`).
                if !seen.insert((obx.code.primary.code.clone(), obx.sub_id.clone())) {
                    return Err(content(
                        ErrorCode::DuplicateKeyIdentifier,
                        Location::field("OBX", 3).occurrence(occurrence),
                        "the same test and sub-id (OBX-3, OBX-4) twice in one order",
                    ));
                }
                if obx.value_type == "NM"
                    && obx.values.iter().any(|v| v.trim().parse::<f64>().is_ok_and(|f| !f.is_finite()))
                {
                    return Err(content(
                        ErrorCode::DataTypeError,
                        Location::field("OBX", 5).occurrence(occurrence),
                        "a numeric result must be a finite number",
                    ));
                }
            }
            obx_before += order.observations.len();
            let service_request = format!("ServiceRequest/{sr_id}");
            let cx = ResultContext {
                endpoint_id: &endpoint.id,
                local_system: &local_system,
                patient: &patient_ref,
                service_request: &service_request,
                performer: endpoint.organization.as_deref(),
                specimen: sr["specimen"][0]["reference"].as_str(),
                received_at: &received_at,
            };
            let (report, observations) = mapping::report(order, &cx);
            // What patient-record will file must be valid before the lab hears AA: a result
            // acknowledged and then refused by the consumer would be lost.
            for r in observations.iter().chain(std::iter::once(&report)) {
                let invalid = self
                    .validator()
                    .validate(r)
                    .into_iter()
                    .any(|i| matches!(i.severity, ehr_core::Severity::Error | ehr_core::Severity::Fatal));
                if invalid {
                    return Err(content(
                        ErrorCode::DataTypeError,
                        Location::segment("OBR").occurrence(n + 1),
                        "the results do not make valid JP Core lab resources",
                    ));
                }
            }
            events.push(NewEvent {
                topic: LAB_RESULT_RECEIVED.to_owned(),
                key: service_request.clone(),
                payload: json!({
                    "endpoint": endpoint.id,
                    "controlId": results.control_id.as_str(),
                    "serviceRequest": service_request,
                    "final": mapping::order_is_final(order),
                    "report": report,
                    "observations": observations,
                }),
                trace: ehr_telemetry::trace::current_traceparent(),
            });
        }
        let row = Hl7Message {
            id: uuid::Uuid::new_v4().to_string(),
            endpoint_id: endpoint.id.clone(),
            direction: "in".into(),
            message_type: kind.to_owned(),
            control_id: results.control_id.as_str().to_owned(),
            status: "accepted".into(),
            attempts: 1,
            next_attempt_at: None,
            last_error: None,
            subject: events.first().map(|e| e.key.clone()),
            payload: text.to_owned(),
            reply: None,
            created_at: now.timestamp_millis(),
            updated_at: now.timestamp_millis(),
            trace: ehr_telemetry::trace::current_traceparent(),
        };
        if !tx.insert_hl7_message(&row).await.map_err(LabError::from)? {
            // A concurrent delivery of the same message got there first.
            return Ok(false);
        }
        for event in &events {
            tx.emit(event, now).await.map_err(LabError::from)?;
        }
        Ok(true)
    }

    /// Results from a lab that speaks FHIR: a Bundle (transaction, batch or collection) of one
    /// DiagnosticReport per order and its Observations, each report `basedOn` the
    /// ServiceRequest. Goes through the same log, checks and event as HL7 results.
    pub async fn ingest_bundle(
        &self,
        ctx: &TenantContext,
        endpoint_id: &str,
        bundle: &Value,
    ) -> Result<usize, LabError> {
        let endpoint = {
            let sys = self.store().system_read().await?;
            let e = sys.lab_endpoint(ctx.tenant(), endpoint_id).await?;
            sys.commit().await?;
            e.filter(|e| e.active).ok_or(LabError::EndpointNotFound)?
        };
        if bundle["resourceType"] != "Bundle" {
            return Err(LabError::InvalidBundle("expected a Bundle".into()));
        }
        let control_id = bundle["identifier"]["value"]
            .as_str()
            .or_else(|| bundle["id"].as_str())
            .ok_or_else(|| {
                LabError::InvalidBundle(
                    "Bundle.identifier.value (or Bundle.id) identifies the delivery; it is required".into(),
                )
            })?
            .to_owned();
        let resources: Vec<&Value> = bundle["entry"].as_array().into_iter().flatten().map(|e| &e["resource"]).collect();
        let mut issues = Vec::new();
        for r in &resources {
            issues.extend(
                self.validator()
                    .validate(r)
                    .into_iter()
                    .filter(|i| matches!(i.severity, ehr_core::Severity::Error | ehr_core::Severity::Fatal)),
            );
        }
        if let Some(first) = issues.first() {
            return Err(LabError::InvalidBundle(first.diagnostics.clone()));
        }
        let reports: Vec<&Value> =
            resources.iter().copied().filter(|r| r["resourceType"] == "DiagnosticReport").collect();
        if reports.is_empty() {
            return Err(LabError::InvalidBundle("no DiagnosticReport".into()));
        }
        let now = self.clock().now();
        let tx = self.store().write(ctx).await?;
        if tx.hl7_message_by_control_id(&endpoint.id, "in", &control_id).await?.is_some() {
            tx.commit().await?;
            return Ok(0);
        }
        let mut events = Vec::new();
        for report in reports {
            let sr_ref = report["basedOn"]
                .as_array()
                .and_then(|b| b.iter().find_map(|r| r["reference"].as_str()))
                .filter(|r| r.starts_with("ServiceRequest/"))
                .ok_or_else(|| {
                    LabError::InvalidBundle("DiagnosticReport.basedOn must name the ServiceRequest".into())
                })?;
            let sr_id = sr_ref.trim_start_matches("ServiceRequest/");
            // The same checks as for HL7 results: an order of this tenant, not cancelled or
            // entered in error, sent to this lab.
            let sr = tx
                .read_json("ServiceRequest", sr_id)
                .await?
                .filter(|sr| !matches!(sr["status"].as_str(), Some("revoked" | "entered-in-error")))
                .ok_or_else(|| LabError::UnknownOrder(sr_ref.to_owned()))?;
            let sent = self.order_message(&tx, sr_ref).await?;
            ehr_telemetry::trace::add_link(&tracing::Span::current(), sent.as_ref().and_then(|m| m.trace.as_deref()));
            if !sent.is_some_and(|m| was_sent_to(&m, &endpoint.id)) {
                return Err(LabError::UnknownOrder(format!("{sr_ref} was not sent to this laboratory")));
            }
            let patient = sr["subject"]["reference"].as_str().unwrap_or_default().to_owned();
            if report["subject"]["reference"].as_str() != Some(patient.as_str()) {
                return Err(LabError::InvalidBundle("DiagnosticReport.subject is not the ordering patient".into()));
            }
            let mut observations = Vec::new();
            let mut refs = Vec::new();
            for (i, r) in report["result"].as_array().into_iter().flatten().enumerate() {
                let target = r["reference"].as_str().unwrap_or_default();
                let found = bundle["entry"].as_array().into_iter().flatten().find(|e| {
                    e["fullUrl"].as_str() == Some(target)
                        || e["resource"]["id"].as_str().map(|id| format!("Observation/{id}")).as_deref() == Some(target)
                });
                let Some(found) = found else {
                    return Err(LabError::InvalidBundle(format!("DiagnosticReport.result[{i}] is not in the Bundle")));
                };
                let mut o = found["resource"].clone();
                if o["subject"]["reference"].as_str() != Some(patient.as_str()) {
                    return Err(LabError::InvalidBundle("Observation.subject is not the ordering patient".into()));
                }
                // As for HL7 results: the lab, the order and the test — not the position.
                let system = o["code"]["coding"][0]["system"].as_str().unwrap_or_default().to_owned();
                let code = o["code"]["coding"][0]["code"].as_str().unwrap_or_default().to_owned();
                let id = mapping::derived_id(&[&endpoint.id, sr_ref, &system, &code, "fhir"]);
                o["id"] = Value::String(id.clone());
                o["basedOn"] = json!([{"reference": sr_ref}]);
                refs.push(json!({"reference": format!("Observation/{id}")}));
                observations.push(o);
            }
            let final_ = matches!(report["status"].as_str(), Some("final" | "corrected" | "amended"));
            let mut report = report.clone();
            report["id"] = Value::String(mapping::derived_id(&[&endpoint.id, sr_ref, "report", "fhir"]));
            report["result"] = Value::Array(refs);
            events.push(NewEvent {
                topic: LAB_RESULT_RECEIVED.to_owned(),
                key: sr_ref.to_owned(),
                payload: json!({"endpoint": endpoint.id, "controlId": control_id, "serviceRequest": sr_ref,
                                "final": final_, "report": report, "observations": observations}),
                trace: ehr_telemetry::trace::current_traceparent(),
            });
        }
        let row = Hl7Message {
            id: uuid::Uuid::new_v4().to_string(),
            endpoint_id: endpoint.id.clone(),
            direction: "in".into(),
            message_type: "FHIR Bundle".into(),
            control_id: control_id.clone(),
            status: "accepted".into(),
            attempts: 1,
            next_attempt_at: None,
            last_error: None,
            subject: events.first().map(|e| e.key.clone()),
            payload: bundle.to_string(),
            reply: None,
            created_at: now.timestamp_millis(),
            updated_at: now.timestamp_millis(),
            trace: ehr_telemetry::trace::current_traceparent(),
        };
        if !tx.insert_hl7_message(&row).await? {
            return Ok(0);
        }
        for e in &events {
            tx.emit(e, now).await?;
        }
        tx.commit().await?;
        let sys = self.store().system_write().await?;
        sys.touch_lab_endpoint(&endpoint.tenant, &endpoint.id, "in", now.timestamp_millis(), None).await?;
        sys.commit().await?;
        self.wake_relay();
        Ok(events.len())
    }

    /// One pass over the endpoints' batch-file inboxes (`<address>/in/*.hl7`): each file is
    /// ingested like an MLLP frame; its ACK is written next to it in `<address>/ack/`, and the
    /// file moves to `<address>/done/` (accepted) or `<address>/error/` (refused).
    pub async fn poll_files(&self) -> Result<usize, LabError> {
        let endpoints = {
            let sys = self.store().system_read().await?;
            let list = sys.active_lab_endpoints().await?;
            sys.commit().await?;
            list
        };
        let mut handled = 0;
        for endpoint in endpoints.iter().filter(|e| e.transport == "file") {
            let base = self.endpoint_dir(endpoint);
            let Ok(mut dir) = tokio::fs::read_dir(base.join("in")).await else { continue };
            let mut files = Vec::new();
            while let Ok(Some(entry)) = dir.next_entry().await {
                let path = entry.path();
                // Only settled files: one modified in the last two seconds may still be arriving.
                let settled = entry
                    .metadata()
                    .await
                    .ok()
                    .and_then(|m| m.modified().ok())
                    .and_then(|t| t.elapsed().ok())
                    .is_some_and(|age| age >= std::time::Duration::from_secs(2));
                if settled && path.extension().is_some_and(|e| e == "hl7") {
                    files.push(path);
                }
            }
            files.sort();
            for path in files {
                let bytes = tokio::fs::read(&path).await.map_err(|e| LabError::File(e.kind().to_string()))?;
                let reply = self.answer(&bytes, Some(endpoint), None).await;
                let code = reply_code(&reply);
                if code.as_deref() == Some("RETRY") {
                    // Not processed (the database was unavailable): left for the next pass.
                    continue;
                }
                let accepted = code.as_deref() == Some("AA");
                let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                let moves = async {
                    tokio::fs::create_dir_all(base.join("ack")).await?;
                    tokio::fs::write(base.join("ack").join(format!("{name}.ack")), &reply).await?;
                    let dest = base.join(if accepted { "done" } else { "error" });
                    tokio::fs::create_dir_all(&dest).await?;
                    tokio::fs::rename(&path, dest.join(&name)).await
                };
                moves.await.map_err(|e| LabError::File(e.kind().to_string()))?;
                handled += 1;
            }
        }
        Ok(handled)
    }
}

/// Whether the order message went to this lab: acknowledged, or sent at least once (the answer
/// may have been lost) and not refused.
fn was_sent_to(m: &Hl7Message, endpoint_id: &str) -> bool {
    m.endpoint_id == endpoint_id
        && (m.status == "acked" || (matches!(m.status.as_str(), "pending" | "dead") && m.attempts > 0))
}

/// MSA-1 of a reply we built, or `RETRY` for an internal failure (ERR-3 207: resend later).
fn reply_code(reply: &[u8]) -> Option<String> {
    let text = charset::decode(reply).ok()?;
    let msg = Message::parse(&text).ok()?;
    if msg.segments_named("ERR").any(|e| e.field(3).component(1).raw() == "207") {
        return Some("RETRY".into());
    }
    msg.field("MSA", 1).map(|f| f.raw().to_owned())
}

/// A refusal of the content (answered AE/AR) or an internal failure (answered AR 207, "resend later").
enum Refused {
    Content(Refusal),
    Internal(LabError),
}

impl From<LabError> for Refused {
    fn from(e: LabError) -> Self {
        Refused::Internal(e)
    }
}
