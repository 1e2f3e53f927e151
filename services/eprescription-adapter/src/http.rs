//! The routes (JSON behind the gateway; pseudo type `EPrescription`, reached only by scopes
//! naming it):
//!
//! | route | scope |
//! |---|---|
//! | `POST /eprescription/prescriptions` (a draft) | `EPrescription` c |
//! | `GET /eprescription/prescriptions[?patient=]`, `GET …/{id}` | `EPrescription` s / r |
//! | `GET …/{id}/document` (JP_Bundle_ePrescriptionData), `GET …/{id}/csv` | `EPrescription` r |
//! | `POST …/{id}/check`, `…/register`, `…/cancel` | `EPrescription` u |
//! | `POST …/{id}/dispensing` (MedicationDispense created) | `EPrescription` r and `MedicationDispense` c |
//!
//! Every answer that holds patient data names its patient in `x-ehr-audit-patients`.

use crate::{DraftRequest, EPrescriptionAdapter, EPrescriptionAdapterError};
use axum::extract::{FromRef, Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use ehr_auth::Interaction;
use ehr_http::{AuthState, Caller, Problem, method_not_allowed};
use ehr_store::Submission;
use serde_json::{Value, json};
use std::collections::HashMap;

/// State of the routes.
#[derive(Clone)]
pub struct EPrescriptionState {
    pub adapter: EPrescriptionAdapter,
    pub auth: AuthState,
}

impl FromRef<EPrescriptionState> for AuthState {
    fn from_ref(s: &EPrescriptionState) -> AuthState {
        s.auth.clone()
    }
}

/// The routes (`/eprescription/…`).
pub fn router(state: EPrescriptionState) -> Router {
    Router::new()
        .route("/eprescription/prescriptions", get(list).post(create).fallback(method_not_allowed))
        .route("/eprescription/prescriptions/{id}", get(read).fallback(method_not_allowed))
        .route("/eprescription/prescriptions/{id}/check", post(check).fallback(method_not_allowed))
        .route("/eprescription/prescriptions/{id}/register", post(register).fallback(method_not_allowed))
        .route("/eprescription/prescriptions/{id}/cancel", post(cancel).fallback(method_not_allowed))
        .route("/eprescription/prescriptions/{id}/dispensing", post(dispensing).fallback(method_not_allowed))
        .route("/eprescription/prescriptions/{id}/document", get(document).fallback(method_not_allowed))
        .route("/eprescription/prescriptions/{id}/csv", get(csv).fallback(method_not_allowed))
        .route("/eprescription/connections", get(connections).fallback(method_not_allowed))
        .with_state(state)
}

const PSEUDO: &str = "EPrescription";

/// What is wrong with a JSON body, without echoing any of it.
trait ClassifyText {
    fn classify_text(&self) -> String;
}

impl ClassifyText for serde_json::Error {
    fn classify_text(&self) -> String {
        use serde_json::error::Category;
        match self.classify() {
            Category::Io | Category::Eof => "incomplete JSON".into(),
            Category::Syntax => format!("not JSON (line {}, column {})", self.line(), self.column()),
            // Serde's data messages can quote the value: position only.
            Category::Data => {
                format!(
                    "a field has an unknown name or the wrong type (line {}, column {})",
                    self.line(),
                    self.column()
                )
            }
        }
    }
}

/// A prescription as the API shows it.
fn view(s: &Submission) -> Value {
    let r = &s.result;
    json!({
        "id": s.id, "state": s.state, "patient": s.patient, "documentNumber": s.business_key,
        "issueDate": r["issueDate"], "issueType": r["issueType"],
        "medicationRequests": r["medicationRequests"], "rps": r["forms"],
        "check": r["check"], "findings": r["check"]["findings"],
        "prescriptionId": r["prescriptionId"], "exchangeNumber": r["exchangeNumber"],
        "attempts": s.attempts, "nextAttemptAt": s.next_attempt_at, "lastError": s.last_error,
        // An attempt went unanswered after it may have reached the service: no local cancel.
        "mayHaveReachedService": r["mayHaveArrived"] == json!(true),
        "errors": r["errors"], "medicationDispenses": r["medicationDispenses"],
        "createdAt": s.created_at, "updatedAt": s.updated_at,
    })
}

fn respond(status: StatusCode, body: Value, subs: &[&Submission]) -> Response {
    let mut resp = (status, Json(body)).into_response();
    let mut patients = ehr_rest::Patients::default();
    for s in subs {
        if let Some(p) = s.patient.as_deref().and_then(|p| p.strip_prefix("Patient/")) {
            patients.add("Patient", &json!({"resourceType": "Patient", "id": p}).to_string());
        }
    }
    patients.apply(&mut resp);
    resp
}

async fn create(
    State(st): State<EPrescriptionState>,
    caller: Caller,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, Problem> {
    // The scope first: the body is not even parsed for a caller who may not create.
    caller.require_explicitly(PSEUDO, Interaction::Create)?;
    let json_body = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(';').next().is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json")));
    if !json_body {
        return Err(EPrescriptionAdapterError::InvalidRequest("the body must be application/json".into()).into());
    }
    let req: DraftRequest = serde_json::from_slice(&body)
        .map_err(|e| EPrescriptionAdapterError::InvalidRequest(format!("body: {}", e.classify_text())))?;
    let s = st.adapter.draft(&caller.ctx, &req, caller.ctx.subject()).await?;
    Ok(respond(StatusCode::CREATED, view(&s), &[&s]))
}

async fn list(
    State(st): State<EPrescriptionState>,
    caller: Caller,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, Problem> {
    caller.require_explicitly(PSEUDO, Interaction::Search)?;
    let patient = q.get("patient").map(|p| if p.starts_with("Patient/") { p.clone() } else { format!("Patient/{p}") });
    let list = st.adapter.list(&caller.ctx, patient.as_deref()).await?;
    let refs: Vec<&Submission> = list.iter().collect();
    Ok(respond(StatusCode::OK, json!({"prescriptions": list.iter().map(view).collect::<Vec<_>>()}), &refs))
}

async fn read(
    State(st): State<EPrescriptionState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Response, Problem> {
    caller.require_explicitly(PSEUDO, Interaction::Read)?;
    let s = st.adapter.get(&caller.ctx, &id).await?;
    Ok(respond(StatusCode::OK, view(&s), &[&s]))
}

async fn check(
    State(st): State<EPrescriptionState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Response, Problem> {
    caller.require_explicitly(PSEUDO, Interaction::Update)?;
    let s = st.adapter.check(&caller.ctx, &id).await?;
    Ok(respond(StatusCode::OK, view(&s), &[&s]))
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RegisterBody {
    #[serde(default)]
    acknowledge_findings: bool,
}

async fn register(
    State(st): State<EPrescriptionState>,
    caller: Caller,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Result<Response, Problem> {
    caller.require_explicitly(PSEUDO, Interaction::Update)?;
    let b: RegisterBody = if body.is_empty() {
        RegisterBody::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| EPrescriptionAdapterError::InvalidRequest(format!("body: {}", e.classify_text())))?
    };
    let s = st.adapter.register(&caller.ctx, &id, b.acknowledge_findings).await?;
    Ok(respond(StatusCode::ACCEPTED, view(&s), &[&s]))
}

async fn cancel(
    State(st): State<EPrescriptionState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Response, Problem> {
    caller.require_explicitly(PSEUDO, Interaction::Update)?;
    let s = st.adapter.cancel(&caller.ctx, &id).await?;
    Ok(respond(StatusCode::OK, view(&s), &[&s]))
}

async fn dispensing(
    State(st): State<EPrescriptionState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Response, Problem> {
    // Filing dispensings is the pharmacist's duty (access matrix): reading the prescription and
    // creating MedicationDispense, not changing the prescription.
    caller.require_explicitly(PSEUDO, Interaction::Read)?;
    caller.require("MedicationDispense", Interaction::Create)?;
    let (s, created) = st.adapter.fetch_dispensing(&caller.ctx, &id).await?;
    let mut body = view(&s);
    body["created"] = json!(created);
    Ok(respond(StatusCode::OK, body, &[&s]))
}

async fn document(
    State(st): State<EPrescriptionState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Response, Problem> {
    caller.require_explicitly(PSEUDO, Interaction::Read)?;
    let s = st.adapter.get(&caller.ctx, &id).await?;
    let mut resp = respond(StatusCode::OK, s.result["document"].clone(), &[&s]);
    resp.headers_mut()
        .insert(axum::http::header::CONTENT_TYPE, axum::http::HeaderValue::from_static("application/fhir+json"));
    Ok(resp)
}

async fn csv(
    State(st): State<EPrescriptionState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Response, Problem> {
    caller.require_explicitly(PSEUDO, Interaction::Read)?;
    let s = st.adapter.get(&caller.ctx, &id).await?;
    let text = s.result["csv"].as_str().unwrap_or("").to_owned();
    let mut resp =
        (StatusCode::OK, [(axum::http::header::CONTENT_TYPE, "text/csv; charset=utf-8")], text).into_response();
    let mut patients = ehr_rest::Patients::default();
    if let Some(p) = s.patient.as_deref().and_then(|p| p.strip_prefix("Patient/")) {
        patients.add("Patient", &json!({"resourceType": "Patient", "id": p}).to_string());
    }
    patients.apply(&mut resp);
    Ok(resp)
}

/// `GET /eprescription/connections` (scope `Connection` r, like the lab interface's): this
/// tenant's connection to the service, for the inventory of external connections
/// (`/admin/connections`).
async fn connections(State(st): State<EPrescriptionState>, caller: Caller) -> Result<Response, Problem> {
    caller.require_explicitly("Connection", Interaction::Read)?;
    let url = st.adapter.settings.url.clone();
    let tx = st.adapter.store.read(&caller.ctx).await.map_err(EPrescriptionAdapterError::from)?;
    let (last, error) = tx.national_activity("eprescription").await.map_err(EPrescriptionAdapterError::from)?;
    tx.commit().await.map_err(EPrescriptionAdapterError::from)?;
    Ok(Json(json!({"connections": [{
        "kind": "national", "direction": "outbound", "name": "電子処方箋管理サービス",
        "protocol": if url.is_some() { "e-prescription Web API (XML over HTTP)" } else { "not configured" },
        "address": url, "active": url.is_some(), "lastActivityAt": last, "lastError": error,
    }]}))
    .into_response())
}
