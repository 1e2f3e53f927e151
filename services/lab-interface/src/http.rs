//! The lab interface's admin API (JSON, behind the gateway):
//!
//! | route | scope |
//! |---|---|
//! | `GET/POST /lab/endpoints`, `GET/PUT /lab/endpoints/{id}` | `Connection` r / c / u |
//! | `GET /lab/messages`, `GET /lab/messages/{id}`, `GET /lab/dead-letters` | `LabMessage` r |
//! | `POST /lab/messages/{id}/replay` | `LabMessage` u |
//! | `POST /lab/endpoints/{id}/results` (a FHIR Bundle from a lab that speaks FHIR) | `DiagnosticReport` c and `Observation` c |
//! | `GET /admin/connections` | `Connection` r |
//!
//! `Connection` and `LabMessage` are pseudo resource types of the access matrix, reached only by
//! scopes naming them (never by `*`).

use crate::error::LabError;
use crate::{CHARSETS, LabInterface, TRANSPORTS};
use axum::extract::{FromRef, Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use ehr_auth::Interaction;
use ehr_http::{AuthState, Caller, Problem, method_not_allowed};
use ehr_store::{Hl7Message, LabEndpoint, MessageFilter, StoreError};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::collections::HashMap;

/// State of the admin routes.
#[derive(Clone)]
pub struct LabState {
    pub lab: LabInterface,
    pub auth: AuthState,
    /// The MLLP listener's address, when one runs (for the connections list).
    pub listener: Option<String>,
}

impl FromRef<LabState> for AuthState {
    fn from_ref(s: &LabState) -> AuthState {
        s.auth.clone()
    }
}

/// The admin routes.
pub fn router(state: LabState) -> Router {
    Router::new()
        .route("/lab/endpoints", get(list_endpoints).post(create_endpoint).fallback(method_not_allowed))
        .route("/lab/endpoints/{id}", get(get_endpoint).put(update_endpoint).fallback(method_not_allowed))
        .route("/lab/endpoints/{id}/results", post(fhir_results).fallback(method_not_allowed))
        .route("/lab/messages", get(list_messages).fallback(method_not_allowed))
        .route("/lab/messages/{id}", get(get_message).fallback(method_not_allowed))
        .route("/lab/messages/{id}/replay", post(replay).fallback(method_not_allowed))
        .route("/lab/dead-letters", get(dead_letters).fallback(method_not_allowed))
        .route("/admin/connections", get(connections).fallback(method_not_allowed))
        .with_state(state)
}

/// An endpoint as the API shows and takes it.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EndpointBody {
    #[serde(default)]
    pub id: Option<String>,
    pub name: String,
    pub lab_facility: String,
    pub lab_application: String,
    pub our_facility: String,
    pub our_application: String,
    #[serde(default = "default_transport")]
    pub transport: String,
    pub address: String,
    #[serde(default = "default_charset")]
    pub charset: String,
    #[serde(default)]
    pub organization: Option<String>,
    #[serde(default)]
    pub is_default: bool,
    #[serde(default = "default_attempts")]
    pub max_attempts: i32,
    /// IP addresses results may come from over MLLP; empty: any.
    #[serde(default)]
    pub allowed_peers: Vec<String>,
    #[serde(default = "yes")]
    pub active: bool,
}

fn default_transport() -> String {
    "mllp".into()
}
fn default_charset() -> String {
    "iso-ir-87".into()
}
fn default_attempts() -> i32 {
    10
}
fn yes() -> bool {
    true
}

fn endpoint_json(e: &LabEndpoint) -> Value {
    json!({
        "id": e.id, "name": e.name, "labFacility": e.lab_facility, "labApplication": e.lab_application,
        "ourFacility": e.our_facility, "ourApplication": e.our_application, "transport": e.transport,
        "address": e.address, "charset": e.charset, "organization": e.organization, "isDefault": e.is_default,
        "maxAttempts": e.max_attempts, "allowedPeers": e.allowed_peers, "active": e.active, "createdAt": e.created_at, "updatedAt": e.updated_at,
        "lastOutboundAt": e.last_outbound_at, "lastInboundAt": e.last_inbound_at, "lastError": e.last_error,
    })
}

fn check_body(b: &EndpointBody, settings: &crate::LabSettings) -> Result<(), LabError> {
    let bad = |why: &str| Err(LabError::InvalidEndpoint(why.to_owned()));
    for (name, value) in [
        ("name", &b.name),
        ("labFacility", &b.lab_facility),
        ("labApplication", &b.lab_application),
        ("ourFacility", &b.our_facility),
        ("ourApplication", &b.our_application),
        ("address", &b.address),
    ] {
        if value.trim().is_empty() || value.len() > 200 {
            return bad(&format!("{name} must be 1 to 200 characters"));
        }
        // Facility and application names go into MSH fields verbatim: no HL7 delimiters.
        if name != "address" && name != "name" && value.contains(['|', '^', '~', '\\', '&', '\r', '\n']) {
            return bad(&format!("{name} must not contain HL7 delimiters"));
        }
    }
    if !TRANSPORTS.contains(&b.transport.as_str()) {
        return bad("transport must be mllp or file");
    }
    if !CHARSETS.contains(&b.charset.as_str()) {
        return bad("charset must be iso-ir-87 or utf-8");
    }
    if b.transport == "mllp" && b.address.rsplit_once(':').is_none_or(|(_, p)| p.parse::<u16>().is_err()) {
        return bad("address must be host:port for mllp");
    }
    if b.transport == "mllp"
        && !settings.allowed_destinations.is_empty()
        && !settings.allowed_destinations.contains(&b.address)
    {
        return bad("address is not one of the server's allowed lab destinations (lab.allowed_destinations)");
    }
    // A file endpoint's directory is `<lab.file_root>/<tenant>/<address>`: the address is a
    // plain name, never a path that could reach another tenant's files or the server's.
    let plain = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
    if b.transport == "file" && (b.address.starts_with('.') || !b.address.chars().all(plain) || b.address.len() > 64) {
        return bad("address of a file endpoint must be a plain name (letters, digits, - _ .), not a path");
    }
    if b.allowed_peers.len() > 32 || b.allowed_peers.iter().any(|p| p.parse::<std::net::IpAddr>().is_err()) {
        return bad("allowedPeers must be at most 32 IP addresses");
    }
    if !(1..=100).contains(&b.max_attempts) {
        return bad("maxAttempts must be 1 to 100");
    }
    if let Some(o) = &b.organization
        && !o.starts_with("Organization/")
    {
        return bad("organization must be a reference Organization/<id>");
    }
    Ok(())
}

fn body_json(
    body: Result<Json<EndpointBody>, axum::extract::rejection::JsonRejection>,
) -> Result<EndpointBody, LabError> {
    body.map(|Json(b)| b).map_err(|e| LabError::InvalidEndpoint(e.body_text()))
}

async fn list_endpoints(State(st): State<LabState>, caller: Caller) -> Result<Response, Problem> {
    caller.require_explicitly("Connection", Interaction::Search)?;
    let list = st.lab.endpoints_of(caller.ctx.tenant()).await?;
    Ok(Json(json!({"endpoints": list.iter().map(endpoint_json).collect::<Vec<_>>()})).into_response())
}

async fn get_endpoint(State(st): State<LabState>, caller: Caller, Path(id): Path<String>) -> Result<Response, Problem> {
    caller.require_explicitly("Connection", Interaction::Read)?;
    let sys = st.lab.store().system_read().await.map_err(LabError::from)?;
    let e = sys.lab_endpoint(caller.ctx.tenant(), &id).await.map_err(LabError::from)?;
    sys.commit().await.map_err(LabError::from)?;
    let e = e.ok_or(LabError::EndpointNotFound)?;
    Ok(Json(endpoint_json(&e)).into_response())
}

async fn create_endpoint(
    State(st): State<LabState>,
    caller: Caller,
    body: Result<Json<EndpointBody>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, Problem> {
    caller.require_explicitly("Connection", Interaction::Create)?;
    let b = body_json(body)?;
    check_body(&b, st.lab.settings())?;
    let now = st.lab.clock().now().timestamp_millis();
    let e = LabEndpoint {
        id: uuid::Uuid::new_v4().to_string(),
        tenant: caller.ctx.tenant().clone(),
        name: b.name,
        lab_facility: b.lab_facility,
        lab_application: b.lab_application,
        our_facility: b.our_facility,
        our_application: b.our_application,
        transport: b.transport,
        address: b.address,
        charset: b.charset,
        organization: b.organization,
        is_default: b.is_default,
        max_attempts: b.max_attempts,
        allowed_peers: b.allowed_peers,
        active: b.active,
        created_at: now,
        updated_at: now,
        last_outbound_at: None,
        last_inbound_at: None,
        last_error: None,
    };
    let sys = st.lab.store().system_write().await.map_err(LabError::from)?;
    one_default(&sys, &e).await?;
    match sys.create_lab_endpoint(&e).await {
        Ok(()) => {}
        Err(StoreError::AlreadyExists) => return Err(LabError::EndpointClash.into()),
        Err(other) => return Err(LabError::from(other).into()),
    }
    sys.commit().await.map_err(LabError::from)?;
    tracing::info!(endpoint = %e.id, "lab endpoint created");
    Ok((StatusCode::CREATED, Json(endpoint_json(&e))).into_response())
}

async fn update_endpoint(
    State(st): State<LabState>,
    caller: Caller,
    Path(id): Path<String>,
    body: Result<Json<EndpointBody>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, Problem> {
    caller.require_explicitly("Connection", Interaction::Update)?;
    let b = body_json(body)?;
    check_body(&b, st.lab.settings())?;
    let sys = st.lab.store().system_write().await.map_err(LabError::from)?;
    let mut e =
        sys.lab_endpoint(caller.ctx.tenant(), &id).await.map_err(LabError::from)?.ok_or(LabError::EndpointNotFound)?;
    e.name = b.name;
    e.lab_facility = b.lab_facility;
    e.lab_application = b.lab_application;
    e.our_facility = b.our_facility;
    e.our_application = b.our_application;
    e.transport = b.transport;
    e.address = b.address;
    e.charset = b.charset;
    e.organization = b.organization;
    e.is_default = b.is_default;
    e.max_attempts = b.max_attempts;
    e.allowed_peers = b.allowed_peers;
    e.active = b.active;
    e.updated_at = st.lab.clock().now().timestamp_millis();
    one_default(&sys, &e).await?;
    // The routing pair is unique across tenants; checked first so that the clash is an answer,
    // not a constraint violation.
    if sys
        .lab_endpoint_by_facility(&e.lab_facility, &e.our_facility)
        .await
        .map_err(LabError::from)?
        .is_some_and(|other| other.id != e.id)
    {
        return Err(LabError::EndpointClash.into());
    }
    match sys.update_lab_endpoint(&e).await {
        Ok(true) => {}
        Ok(false) => return Err(LabError::EndpointNotFound.into()),
        Err(StoreError::AlreadyExists) => return Err(LabError::EndpointClash.into()),
        Err(other) => return Err(LabError::from(other).into()),
    }
    sys.commit().await.map_err(LabError::from)?;
    Ok(Json(endpoint_json(&e)).into_response())
}

/// At most one default lab per tenant: which of two would get an order is not a thing to leave to
/// the order of names.
async fn one_default(sys: &ehr_store::SysTx, e: &LabEndpoint) -> Result<(), LabError> {
    if !e.is_default {
        return Ok(());
    }
    let others = sys.lab_endpoints_of(&e.tenant).await?;
    if others.iter().any(|o| o.id != e.id && o.is_default) {
        return Err(LabError::InvalidEndpoint("isDefault: another endpoint of this tenant is the default".into()));
    }
    Ok(())
}

fn message_json(m: &Hl7Message, with_payload: bool) -> Value {
    let mut v = json!({
        "id": m.id, "endpoint": m.endpoint_id, "direction": m.direction, "messageType": m.message_type,
        "controlId": m.control_id, "status": m.status, "attempts": m.attempts, "nextAttemptAt": m.next_attempt_at,
        "lastError": m.last_error, "subject": m.subject, "createdAt": m.created_at, "updatedAt": m.updated_at,
    });
    if with_payload {
        v["payload"] = Value::String(m.payload.clone());
        v["reply"] = m.reply.clone().map_or(Value::Null, Value::String);
    }
    v
}

async fn list_messages(
    State(st): State<LabState>,
    caller: Caller,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, Problem> {
    caller.require_explicitly("LabMessage", Interaction::Search)?;
    let limit = q.get("_count").and_then(|c| c.parse().ok()).unwrap_or(100);
    let filter = MessageFilter {
        direction: q.get("direction").map(String::as_str),
        status: q.get("status").map(String::as_str),
        subject: q.get("subject").map(String::as_str),
        endpoint_id: q.get("endpoint").map(String::as_str),
        limit,
    };
    let tx = st.lab.store().read(&caller.ctx).await.map_err(LabError::from)?;
    let list = tx.hl7_messages(&filter).await.map_err(LabError::from)?;
    tx.commit().await.map_err(LabError::from)?;
    Ok(Json(json!({"messages": list.iter().map(|m| message_json(m, false)).collect::<Vec<_>>()})).into_response())
}

async fn dead_letters(State(st): State<LabState>, caller: Caller) -> Result<Response, Problem> {
    caller.require_explicitly("LabMessage", Interaction::Search)?;
    let tx = st.lab.store().read(&caller.ctx).await.map_err(LabError::from)?;
    let mut list = Vec::new();
    for status in ["dead", "rejected"] {
        let f = MessageFilter { direction: Some("out"), status: Some(status), limit: 1000, ..MessageFilter::default() };
        list.extend(tx.hl7_messages(&f).await.map_err(LabError::from)?);
    }
    tx.commit().await.map_err(LabError::from)?;
    list.sort_by_key(|m| std::cmp::Reverse(m.updated_at));
    Ok(Json(json!({"messages": list.iter().map(|m| message_json(m, false)).collect::<Vec<_>>()})).into_response())
}

async fn get_message(State(st): State<LabState>, caller: Caller, Path(id): Path<String>) -> Result<Response, Problem> {
    caller.require_explicitly("LabMessage", Interaction::Read)?;
    let tx = st.lab.store().read(&caller.ctx).await.map_err(LabError::from)?;
    let m = tx.hl7_message(&id).await.map_err(LabError::from)?.ok_or(LabError::MessageNotFound)?;
    // The message text is patient data: the gateway audits the read under the order's patient.
    let mut patients = ehr_rest::Patients::default();
    if let Some(sr) = m.subject.as_deref().and_then(|s| s.strip_prefix("ServiceRequest/"))
        && let Some(stored) = tx.read("ServiceRequest", sr).await.map_err(LabError::from)?
    {
        patients.add("ServiceRequest", &stored.content);
    }
    tx.commit().await.map_err(LabError::from)?;
    let mut resp = Json(message_json(&m, true)).into_response();
    patients.apply(&mut resp);
    Ok(resp)
}

async fn replay(State(st): State<LabState>, caller: Caller, Path(id): Path<String>) -> Result<Response, Problem> {
    caller.require_explicitly("LabMessage", Interaction::Update)?;
    let m = st.lab.replay(&caller.ctx, &id).await?;
    tracing::info!(control_id = %m.control_id, "lab message replayed");
    Ok(Json(message_json(&m, false)).into_response())
}

async fn fhir_results(
    State(st): State<LabState>,
    caller: Caller,
    Path(id): Path<String>,
    body: Result<Json<Value>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, Problem> {
    caller.require("DiagnosticReport", Interaction::Create)?;
    caller.require("Observation", Interaction::Create)?;
    let Json(bundle) = body.map_err(|e| LabError::InvalidBundle(e.body_text()))?;
    let orders = st.lab.ingest_bundle(&caller.ctx, &id, &bundle).await?;
    let mut patients = ehr_rest::Patients::default();
    for entry in bundle["entry"].as_array().into_iter().flatten() {
        if entry["resource"]["resourceType"] == "DiagnosticReport" {
            patients.add("DiagnosticReport", &entry["resource"].to_string());
        }
    }
    let mut resp = (StatusCode::ACCEPTED, Json(json!({"orders": orders, "duplicate": orders == 0}))).into_response();
    patients.apply(&mut resp);
    Ok(resp)
}

/// Every external connection of the tenant: the labs (orders out, results in) and the MLLP
/// listener, with their last activity — the MHLW security checklist asks hospitals to know all
/// of their external connections.
async fn connections(State(st): State<LabState>, caller: Caller) -> Result<Response, Problem> {
    caller.require_explicitly("Connection", Interaction::Read)?;
    let endpoints = st.lab.endpoints_of(caller.ctx.tenant()).await?;
    let mut list = Vec::new();
    for e in &endpoints {
        list.push(json!({
            "kind": "lab", "direction": "outbound", "name": e.name, "endpoint": e.id,
            "protocol": if e.transport == "file" { "HL7 v2.5 file batch" } else { "HL7 v2.5 over MLLP" },
            "address": e.address, "active": e.active, "lastActivityAt": e.last_outbound_at, "lastError": e.last_error,
        }));
        list.push(json!({
            "kind": "lab", "direction": "inbound", "name": e.name, "endpoint": e.id,
            "protocol": if e.transport == "file" { "HL7 v2.5 file batch" } else { "HL7 v2.5 over MLLP" },
            "address": if e.transport == "file" { json!(format!("{}/in", e.address)) } else { json!(st.listener) },
            "from": e.lab_facility, "active": e.active, "lastActivityAt": e.last_inbound_at,
        }));
    }
    Ok(Json(json!({"connections": list})).into_response())
}
