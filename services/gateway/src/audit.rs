//! The audit trail: FHIR R4 AuditEvents following IHE Basic Audit Log Patterns (BALP), written
//! to a hash chain per tenant.
//!
//! Requests hand events to an [`AuditSink`]; one writer task appends them in batches (one
//! transaction per tenant per batch, see `ehr_store::Tx::append_audit`). A read of the audit
//! trail flushes the sink first, so an administrator always sees every access up to her query.
//! The channel is bounded and the writer retries a failing database forever: when audit cannot
//! be written, requests wait rather than go unaudited (fail closed). A graceful shutdown flushes
//! the queue after the last request; a crash (or SIGKILL) loses what was queued and not yet
//! written — normally one batch, at most the queue's 10,000 events if the database had stalled.

use ehr_core::{Clock, TenantContext, TenantId};
use ehr_store::Store;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// Events queued before producers wait.
const QUEUE: usize = 10_000;
/// Events written per batch at most.
const BATCH: usize = 512;

enum Msg {
    Event(TenantId, Box<Value>),
    Flush(oneshot::Sender<()>),
}

/// Where audit events go. Cheap to clone.
#[derive(Clone)]
pub struct AuditSink {
    tx: mpsc::Sender<Msg>,
}

impl AuditSink {
    /// Starts the writer task on `store`.
    pub fn start(store: Store, clock: Arc<dyn Clock>) -> Self {
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(write_loop(rx, store, clock));
        Self { tx }
    }

    /// Queues an event for `tenant`'s chain.
    pub async fn record(&self, tenant: &TenantId, event: Value) {
        if self.tx.send(Msg::Event(tenant.clone(), Box::new(event))).await.is_err() {
            tracing::error!("audit writer has stopped; an audit event was not recorded");
        }
    }

    /// Waits until every event queued before this call is written.
    pub async fn flush(&self) {
        let (done, wait) = oneshot::channel();
        if self.tx.send(Msg::Flush(done)).await.is_ok() {
            let _ = wait.await;
        }
    }
}

async fn write_loop(mut rx: mpsc::Receiver<Msg>, store: Store, clock: Arc<dyn Clock>) {
    while let Some(first) = rx.recv().await {
        let mut groups: BTreeMap<String, (TenantId, Vec<Value>)> = BTreeMap::new();
        let mut flushes = Vec::new();
        let mut next = Some(first);
        let mut count = 0;
        while let Some(msg) = next.take() {
            match msg {
                Msg::Event(tenant, event) => {
                    count += 1;
                    groups.entry(tenant.as_str().to_owned()).or_insert_with(|| (tenant, Vec::new())).1.push(*event);
                }
                Msg::Flush(done) => flushes.push(done),
            }
            if count < BATCH {
                next = rx.try_recv().ok();
            }
        }
        for (tenant, events) in groups.into_values() {
            write_group(&store, &tenant, events, clock.as_ref()).await;
        }
        for done in flushes {
            let _ = done.send(());
        }
    }
}

/// Writes one tenant's events. A database outage is waited out (fail closed: producers block once
/// the queue is full). An event the database refuses for good (a value no index takes, say) is
/// isolated and replaced by a record of the failure, so one bad event cannot stop the trail.
async fn write_group(store: &Store, tenant: &TenantId, events: Vec<Value>, clock: &dyn Clock) {
    if retry_transient(store, tenant, &events, clock).await.is_ok() {
        return;
    }
    for event in events {
        if retry_transient(store, tenant, std::slice::from_ref(&event), clock).await.is_err() {
            tracing::error!(
                tenant = tenant.as_str(),
                "an audit event was refused by the database; recording the failure instead"
            );
            let stand_in = failure_record(&event);
            if retry_transient(store, tenant, &[stand_in], clock).await.is_err() {
                tracing::error!(tenant = tenant.as_str(), "audit event dropped: even its failure record was refused");
            }
        }
    }
}

/// Appends `events`, retrying while the failure is transient; a permanent failure is returned.
async fn retry_transient(
    store: &Store,
    tenant: &TenantId,
    events: &[Value],
    clock: &dyn Clock,
) -> Result<(), ehr_store::StoreError> {
    use ehr_core::{Classify, IssueType};
    let mut delay = Duration::from_millis(100);
    loop {
        match append(store, tenant, events.to_vec(), clock).await {
            Ok(()) => return Ok(()),
            Err(e) if matches!(e.issue_type(), IssueType::Transient | IssueType::Timeout) => {
                tracing::error!(tenant = tenant.as_str(), events = events.len(), error = %e, "audit write failed; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
            Err(e) => return Err(e),
        }
    }
}

/// What stands in the trail for an event the database refused: when, which patients, and that
/// the full record is missing.
fn failure_record(event: &Value) -> Value {
    let patients: Vec<Value> = event["entity"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["role"]["code"] == "1")
        .filter(|e| e["what"]["reference"].as_str().is_some_and(|r| r.len() <= 200))
        .cloned()
        .collect();
    let mut record = json!({
        "resourceType": "AuditEvent",
        "type": coding(DCM, "110113", "Security Alert"),
        "subtype": [coding(EHR_SUBTYPE, "audit-write-failed", "audit-write-failed")],
        "action": "E",
        "recorded": event["recorded"],
        "outcome": "8",
        "outcomeDesc": "the audit record of this access could not be stored; see the server log",
        "agent": [{"type": {"coding": [coding(DCM, "110152", "Destination Role ID")]}, "who": {"display": "ehr gateway"}, "requestor": false}],
        "source": {"observer": {"display": "ehr-gateway"}},
    });
    if !patients.is_empty() {
        record["entity"] = Value::Array(patients);
    }
    record
}

async fn append(
    store: &Store,
    tenant: &TenantId,
    events: Vec<Value>,
    clock: &dyn Clock,
) -> Result<(), ehr_store::StoreError> {
    let ctx = TenantContext::new(tenant.clone(), "audit");
    let tx = store.write(&ctx).await?;
    tx.append_audit(events, clock.now()).await?;
    tx.commit().await
}

/// Who acted: the verified token's subject and client, and where the request came from.
#[derive(Debug, Clone, Default)]
pub struct Actor {
    /// The user id (token `sub`), or the client id for a system client.
    pub subject: Option<String>,
    /// A name given at login (the username), for events before a subject is known.
    pub name: Option<String>,
    pub client_id: Option<String>,
    pub roles: Vec<String>,
    /// The user's FHIR resource (SMART `fhirUser`, `Practitioner/123`), when the account is linked.
    pub fhir_user: Option<String>,
    /// The client's network address (the TCP peer, or the hop a trusted proxy reported).
    pub address: Option<String>,
}

/// AuditEvent.outcome (R4): 0 success, 4 minor failure (client error), 8 serious failure
/// (server error), 12 major failure.
pub fn outcome_of_status(status: u16) -> &'static str {
    match status {
        0..=399 => "0",
        400..=499 => "4",
        _ => "8",
    }
}

/// A RESTful interaction as the audit trail names it (`http://hl7.org/fhir/restful-interaction`)
/// and its CRUDE action.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RestInteraction {
    pub code: &'static str,
    pub action: &'static str,
}

/// Classifies a FHIR request by method and path segments below the base.
pub fn classify(method: &axum::http::Method, segments: &[&str]) -> RestInteraction {
    use axum::http::Method;
    let i = |code, action| RestInteraction { code, action };
    if segments.iter().any(|s| s.starts_with('$')) {
        // `$export`, `Patient/$export`, `$import`, `Patient/1/$everything`, `$export-status/…`.
        return i("operation", "E");
    }
    match (method, segments) {
        (&Method::GET, [] | [""]) => i("history-system", "R"),
        (&Method::GET, ["metadata"]) => i("capabilities", "R"),
        (&Method::GET, ["_history"]) => i("history-system", "R"),
        (&Method::POST, [] | [""]) => i("transaction", "E"),
        (&Method::GET, [_]) => i("search-type", "E"),
        (&Method::POST, [_, "_search"]) => i("search-type", "E"),
        (&Method::GET, [_, "_history"]) => i("history-type", "R"),
        (&Method::POST, [_]) => i("create", "C"),
        (&Method::PUT, _) => i("update", "U"),
        (&Method::PATCH, _) => i("patch", "U"),
        (&Method::DELETE, _) => i("delete", "D"),
        (&Method::GET, [_, _]) => i("read", "R"),
        (&Method::GET, [_, _, "_history"]) => i("history-instance", "R"),
        (&Method::GET, [_, _, "_history", _]) => i("vread", "R"),
        _ => i("operation", "E"),
    }
}

fn coding(system: &str, code: &str, display: &str) -> Value {
    json!({"system": system, "code": code, "display": display})
}

const DCM: &str = "http://dicom.nema.org/resources/ontology/DCM";
const EHR_SUBTYPE: &str = "urn:ehr:audit-event-subtype";

fn agents(actor: &Actor, tenant: &TenantId) -> Vec<Value> {
    let network = actor.address.as_ref().map(|a| json!({"address": a, "type": "2"}));
    let mut out = Vec::new();
    if actor.subject.is_some() || actor.name.is_some() {
        let mut who = serde_json::Map::new();
        if let Some(r) = &actor.fhir_user {
            // A FHIR reference, so `AuditEvent?agent=Practitioner/123` finds the user's events.
            who.insert("reference".into(), json!(r));
        }
        if let Some(sub) = &actor.subject {
            who.insert(
                "identifier".into(),
                json!({"system": format!("urn:ehr:user:{}", tenant.as_str()), "value": sub}),
            );
        }
        if let Some(name) = &actor.name {
            who.insert("display".into(), json!(name));
        }
        let mut user = json!({
            // BALP: the human (or system) that requested the access.
            "type": {"coding": [coding("http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "IRCP", "information recipient")]},
            "who": who,
            "requestor": true,
        });
        if let Some(sub) = &actor.subject {
            user["altId"] = json!(sub);
        }
        if let Some(name) = &actor.name {
            user["name"] = json!(name);
        }
        if !actor.roles.is_empty() {
            user["role"] = json!(
                actor
                    .roles
                    .iter()
                    .map(|r| json!({"coding": [{"system": "urn:ehr:role", "code": r}]}))
                    .collect::<Vec<_>>()
            );
        }
        if let Some(n) = &network {
            user["network"] = n.clone();
        }
        out.push(user);
    }
    if let Some(client) = &actor.client_id {
        let mut app = json!({
            "type": {"coding": [coding(DCM, "110153", "Source Role ID")]},
            "who": {"identifier": {"system": "urn:ehr:client", "value": client}},
            "requestor": actor.subject.is_none() && actor.name.is_none(),
        });
        if let Some(n) = &network {
            app["network"] = n.clone();
        }
        out.push(app);
    }
    if out.is_empty() {
        // Nobody identified (no or unverifiable token): the requestor is known by address only.
        let mut anon = json!({"type": {"coding": [coding(DCM, "110153", "Source Role ID")]}, "requestor": true, "who": {"display": "unauthenticated client"}});
        if let Some(n) = &network {
            anon["network"] = n.clone();
        }
        out.push(anon);
    }
    out.push(json!({
        "type": {"coding": [coding(DCM, "110152", "Destination Role ID")]},
        "who": {"display": "ehr gateway"},
        "requestor": false,
    }));
    out
}

fn source(tenant: &TenantId) -> Value {
    json!({
        "site": tenant.as_str(),
        "observer": {"display": "ehr-gateway"},
        "type": [coding("http://terminology.hl7.org/CodeSystem/security-source-type", "4", "Application Server")],
    })
}

fn request_entity(request_id: &str) -> Value {
    // BALP: the X-Request-Id ties the event to the request in logs and traces.
    json!({
        "what": {"identifier": {"system": "urn:ehr:request-id", "value": request_id}},
        "type": coding("http://profiles.ihe.net/ITI/BALP/CodeSystem/BasicAuditEntityType", "XrequestId", "X-Request-Id"),
    })
}

/// What a RESTful access touched.
#[derive(Debug, Clone, Default)]
pub struct Access<'a> {
    /// `Observation/123`, when the request named one resource (or created one).
    pub resource: Option<&'a str>,
    /// `Patient/456`: the patients whose data was accessed (one per event where BALP's
    /// patient-specific pattern applies; all of them in one event for a broad search).
    pub patients: &'a [String],
    /// The query string of a search (BALP records it, base64-encoded).
    pub query: Option<&'a str>,
    pub resource_type: Option<&'a str>,
    pub request_id: Option<&'a str>,
}

/// An AuditEvent for one RESTful FHIR interaction (BALP "Basic AuditEvent for a RESTful
/// activity", patient-specific when `access.patients` names one).
pub fn rest_event(
    now: &str,
    tenant: &TenantId,
    actor: &Actor,
    interaction: RestInteraction,
    status: u16,
    access: &Access<'_>,
) -> Value {
    use base64::Engine;
    let mut entities = Vec::new();
    if let Some(r) = access.resource {
        entities.push(json!({
            "what": {"reference": r},
            "type": coding("http://terminology.hl7.org/CodeSystem/audit-entity-type", "2", "System Object"),
            "role": coding("http://terminology.hl7.org/CodeSystem/object-role", "4", "Domain Resource"),
        }));
    }
    if let Some(q) = access.query {
        let mut query = json!({
            "type": coding("http://terminology.hl7.org/CodeSystem/audit-entity-type", "2", "System Object"),
            "role": coding("http://terminology.hl7.org/CodeSystem/object-role", "24", "Query"),
            "query": base64::engine::general_purpose::STANDARD.encode(q),
        });
        if let Some(t) = access.resource_type {
            query["description"] = json!(t);
        }
        entities.push(query);
    }
    for p in access.patients {
        entities.push(json!({
            "what": {"reference": p},
            "type": coding("http://terminology.hl7.org/CodeSystem/audit-entity-type", "1", "Person"),
            "role": coding("http://terminology.hl7.org/CodeSystem/object-role", "1", "Patient"),
        }));
    }
    if let Some(id) = access.request_id {
        entities.push(request_entity(id));
    }
    let mut event = json!({
        "resourceType": "AuditEvent",
        "type": coding("http://terminology.hl7.org/CodeSystem/audit-event-type", "rest", "RESTful Operation"),
        "subtype": [coding("http://hl7.org/fhir/restful-interaction", interaction.code, interaction.code)],
        "action": interaction.action,
        "recorded": now,
        "outcome": outcome_of_status(status),
        "agent": agents(actor, tenant),
        "source": source(tenant),
    });
    if status >= 400 {
        event["outcomeDesc"] = json!(format!("HTTP {status}"));
    }
    if !entities.is_empty() {
        event["entity"] = Value::Array(entities);
    }
    event
}

/// A security event's kind: its DICOM type and subtype.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecurityKind {
    Login,
    Logout,
    /// A request whose bearer token did not verify (401 at the gateway).
    TokenRejected,
    Lockout,
    RefreshTokenReuse,
    TokenIssued,
    AccountCreated,
    RolesChanged,
    AccountDeactivated,
    AccountActivated,
    MfaEnrolled,
    MfaReset,
    PasswordReset,
    KeyRotated,
    TenantCreated,
    TenantDeactivated,
    ClientRegistered,
    ClientDeactivated,
    /// The rate limiter refused a request.
    Throttled,
}

impl SecurityKind {
    /// (type, subtype) codings.
    fn codes(self) -> (Value, Value) {
        let auth = coding(DCM, "110114", "User Authentication");
        let alert = coding(DCM, "110113", "Security Alert");
        let ehr = |code: &str| coding(EHR_SUBTYPE, code, code);
        match self {
            Self::Login => (auth, coding(DCM, "110122", "Login")),
            Self::Logout => (auth, coding(DCM, "110123", "Logout")),
            Self::TokenRejected => (auth, ehr("token-rejected")),
            Self::TokenIssued => (auth, ehr("token-issued")),
            Self::Lockout => (alert, ehr("lockout")),
            Self::RefreshTokenReuse => (alert, ehr("refresh-token-reuse")),
            Self::Throttled => (alert, ehr("rate-limited")),
            Self::RolesChanged => (alert, coding(DCM, "110136", "Security Roles Changed")),
            Self::AccountCreated => (alert, ehr("account-created")),
            Self::AccountDeactivated => (alert, ehr("account-deactivated")),
            Self::AccountActivated => (alert, ehr("account-activated")),
            Self::MfaEnrolled => (alert, ehr("mfa-enrolled")),
            Self::MfaReset => (alert, ehr("mfa-reset")),
            Self::PasswordReset => (alert, coding(DCM, "110137", "User Security Attributes Changed")),
            Self::KeyRotated => (alert, coding(DCM, "110129", "Security Configuration")),
            Self::TenantCreated => (alert, ehr("tenant-created")),
            Self::ClientRegistered => (alert, ehr("client-registered")),
            Self::TenantDeactivated => (alert, ehr("tenant-deactivated")),
            Self::ClientDeactivated => (alert, ehr("client-deactivated")),
        }
    }
}

/// An AuditEvent for a security event (login, MFA failure, lockout, token reuse, an account
/// change…). `target` names the account or object the event is about.
pub fn security_event(
    now: &str,
    tenant: &TenantId,
    actor: &Actor,
    kind: SecurityKind,
    success: bool,
    description: Option<&str>,
    target: Option<(&str, &str)>,
) -> Value {
    let (ty, subtype) = kind.codes();
    let mut event = json!({
        "resourceType": "AuditEvent",
        "type": ty,
        "subtype": [subtype],
        "action": "E",
        "recorded": now,
        "outcome": if success { "0" } else { "4" },
        "agent": agents(actor, tenant),
        "source": source(tenant),
    });
    if let Some(d) = description {
        event["outcomeDesc"] = json!(d);
    }
    if let Some((system, value)) = target {
        event["entity"] = json!([{
            "what": {"identifier": {"system": system, "value": value}},
            "type": coding("http://terminology.hl7.org/CodeSystem/audit-entity-type", "2", "System Object"),
            "role": coding("http://terminology.hl7.org/CodeSystem/object-role", "11", "Security User Entity"),
        }]);
    }
    event
}

/// The identifier system of user accounts of `tenant` (entity and agent identifiers).
pub fn user_system(tenant: &TenantId) -> String {
    format!("urn:ehr:user:{}", tenant.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::Method;

    #[test]
    fn interactions_are_classified_by_method_and_shape() {
        let c = |m: &Method, p: &str| classify(m, &p.split('/').filter(|s| !s.is_empty()).collect::<Vec<_>>()).code;
        assert_eq!(c(&Method::GET, "Patient/1"), "read");
        assert_eq!(c(&Method::GET, "Patient/1/_history/2"), "vread");
        assert_eq!(c(&Method::GET, "Patient/1/_history"), "history-instance");
        assert_eq!(c(&Method::GET, "Patient"), "search-type");
        assert_eq!(c(&Method::POST, "Patient/_search"), "search-type");
        assert_eq!(c(&Method::POST, "Patient"), "create");
        assert_eq!(c(&Method::PUT, "Patient/1"), "update");
        assert_eq!(c(&Method::PATCH, "Patient/1"), "patch");
        assert_eq!(c(&Method::DELETE, "Patient/1"), "delete");
        assert_eq!(c(&Method::POST, ""), "transaction");
        assert_eq!(c(&Method::GET, "metadata"), "capabilities");
    }

    #[test]
    fn rest_events_name_the_patient_and_the_query() {
        let t = TenantId::parse("h1").expect("tenant");
        let actor = Actor { subject: Some("u1".into()), client_id: Some("app".into()), ..Actor::default() };
        let e = rest_event(
            "2026-11-25T00:00:00Z",
            &t,
            &actor,
            RestInteraction { code: "search-type", action: "E" },
            200,
            &Access { patients: &["Patient/p1".to_owned()], query: Some("code=1"), ..Access::default() },
        );
        assert_eq!(e["outcome"], "0");
        assert_eq!(e["entity"][1]["what"]["reference"], "Patient/p1");
        assert_eq!(e["entity"][0]["query"], "Y29kZT0x");
        assert_eq!(e["agent"][0]["altId"], "u1");
        assert_eq!(e["agent"][1]["requestor"], false);
    }
}
