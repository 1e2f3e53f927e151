//! The clins-adapter's JSON API (behind the gateway, which checks the token and audits):
//!
//! | route | scope (`NationalSubmission`) |
//! |---|---|
//! | `POST /clins/preview` — build + validate, nothing sent | r |
//! | `POST /clins/submissions` — register (422 with the issues if invalid; 202 queued) | c |
//! | `GET /clins/submissions?patient=&state=&kind=` | s |
//! | `GET /clins/submissions/{id}` (with the Bundle) | r |
//! | `POST /clins/submissions/{id}/cancel` | u |
//! | `POST /clins/submissions/{id}/change` (new data, same bundle identifier) | u |
//! | `POST /clins/retrieve` — what the national service holds for a patient | r |
//!
//! `NationalSubmission` is a pseudo resource type reached only by scopes naming it (never by
//! `*`). Responses about a patient carry `x-ehr-audit-patients` so the gateway's AuditEvent
//! names the patient.

use crate::service::{RetrieveBody, SubmitBody};
use crate::{ClinsAdapter, ClinsAdapterError};
use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRef, Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use ehr_auth::Interaction;
use ehr_http::{AuthState, Caller, Problem, method_not_allowed};
use ehr_store::{Submission, SubmissionFilter};
use serde_json::{Value, json};
use std::collections::HashMap;

/// The pseudo resource type of the access matrix.
pub const PSEUDO_TYPE: &str = "NationalSubmission";

/// State of the routes.
#[derive(Clone)]
pub struct ClinsState {
    pub adapter: ClinsAdapter,
    pub auth: AuthState,
}

impl FromRef<ClinsState> for AuthState {
    fn from_ref(s: &ClinsState) -> AuthState {
        s.auth.clone()
    }
}

/// The routes (`/clins/…`).
pub fn router(state: ClinsState) -> Router {
    Router::new()
        .route("/clins/preview", post(preview).fallback(method_not_allowed))
        .route("/clins/submissions", get(list).post(submit).fallback(method_not_allowed))
        .route("/clins/submissions/{id}", get(one).fallback(method_not_allowed))
        .route("/clins/submissions/{id}/cancel", post(cancel).fallback(method_not_allowed))
        .route("/clins/submissions/{id}/change", post(change).fallback(method_not_allowed))
        .route("/clins/retrieve", post(retrieve).fallback(method_not_allowed))
        .route("/clins/connections", get(connections).fallback(method_not_allowed))
        .with_state(state)
}

fn body<T>(b: Result<Json<T>, JsonRejection>) -> Result<T, ClinsAdapterError> {
    // Serde's messages can quote the submitted value (patient data): say what is wrong, not what
    // was sent.
    b.map(|Json(v)| v).map_err(|e| {
        ClinsAdapterError::Invalid(
            match e {
                JsonRejection::MissingJsonContentType(_) => "the body must be JSON (content-type application/json)",
                JsonRejection::JsonSyntaxError(_) => "the body is not JSON",
                JsonRejection::JsonDataError(_) => "a field of the body has an unknown name or the wrong type",
                _ => "the body cannot be read",
            }
            .into(),
        )
    })
}

/// Names the patient for the gateway's audit.
fn audited(mut resp: Response, patient: Option<&str>) -> Response {
    if let Some(id) = patient.and_then(|p| p.strip_prefix("Patient/")) {
        let mut p = ehr_rest::Patients::default();
        p.add("Patient", &json!({"resourceType": "Patient", "id": id}).to_string());
        p.apply(&mut resp);
    }
    resp
}

/// The answer to a request about a patient. A refusal that could only come after the patient
/// was found in the caller's tenant (422: the record or its Bundle falls short; 409: the
/// submission's state) names the patient too; a 404 or a malformed request names nobody.
fn answer(result: Result<Response, ClinsAdapterError>, patient: Option<&str>) -> Response {
    match result {
        Ok(resp) => audited(resp, patient),
        Err(e) => {
            let about_patient = matches!(ehr_core::Classify::http_status(&e), 409 | 422);
            let resp = Problem::from(e).into_response();
            if about_patient { audited(resp, patient) } else { resp }
        }
    }
}

/// The `Patient/<id>` a body names, when it is well formed.
fn named_patient(reference: &str) -> Option<String> {
    crate::service::patient_id(reference).ok().map(|id| format!("Patient/{id}"))
}

/// A submission as the API shows it.
pub fn submission_json(s: &Submission, with_bundle: bool) -> Value {
    let mut v = json!({
        "id": s.id, "kind": s.kind, "operation": s.operation, "state": s.state, "attempts": s.attempts,
        "nextAttemptAt": if s.state == "queued" { json!(s.next_attempt_at) } else { Value::Null },
        "lastError": s.last_error, "bundleIdentifier": s.business_key, "requestId": s.request_id,
        "patient": s.patient, "resultCode": s.result["resultCode"], "message": s.result["message"],
        "errors": s.result.get("errors").cloned().unwrap_or_else(|| json!([])), "target": s.result["target"],
        "createdBy": s.created_by, "createdAt": s.created_at, "updatedAt": s.updated_at,
    });
    if with_bundle && let Ok(request) = serde_json::from_str::<Value>(&s.payload) {
        v["bundle"] = request["bundle"].clone();
    }
    v
}

async fn preview(
    State(st): State<ClinsState>,
    caller: Caller,
    b: Result<Json<SubmitBody>, JsonRejection>,
) -> Result<Response, Problem> {
    caller.require_explicitly(PSEUDO_TYPE, Interaction::Read)?;
    let b = body(b)?;
    let patient = named_patient(&b.patient);
    let result = st.adapter.build(&caller.ctx, &b, None).await.map(|built| {
        let valid = built.errors().is_empty();
        let issues: Vec<Value> = built.issues.iter().map(ehr_core::Issue::to_json).collect();
        Json(json!({"kind": built.kind.as_str(), "valid": valid, "bundle": built.bundle, "issues": issues}))
            .into_response()
    });
    Ok(answer(result, patient.as_deref()))
}

async fn submit(
    State(st): State<ClinsState>,
    caller: Caller,
    b: Result<Json<SubmitBody>, JsonRejection>,
) -> Result<Response, Problem> {
    caller.require_explicitly(PSEUDO_TYPE, Interaction::Create)?;
    let b = body(b)?;
    let patient = named_patient(&b.patient);
    let result = st
        .adapter
        .submit(&caller.ctx, &b)
        .await
        .map(|s| (StatusCode::ACCEPTED, Json(submission_json(&s, false))).into_response());
    Ok(answer(result, patient.as_deref()))
}

async fn list(
    State(st): State<ClinsState>,
    caller: Caller,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, Problem> {
    caller.require_explicitly(PSEUDO_TYPE, Interaction::Search)?;
    let patient = q.get("patient").map(|p| if p.starts_with("Patient/") { p.clone() } else { format!("Patient/{p}") });
    let filter = SubmissionFilter {
        kind: q.get("kind").map(String::as_str),
        state: q.get("state").map(String::as_str),
        patient: patient.as_deref(),
        business_key: q.get("bundleIdentifier").map(String::as_str),
        limit: q.get("_count").and_then(|c| c.parse().ok()).unwrap_or(100),
        ..SubmissionFilter::default()
    };
    let list = st.adapter.submissions(&caller.ctx, &filter).await?;
    let mut patients = ehr_rest::Patients::default();
    for s in &list {
        if let Some(id) = s.patient.as_deref().and_then(|p| p.strip_prefix("Patient/")) {
            patients.add("Patient", &json!({"resourceType": "Patient", "id": id}).to_string());
        }
    }
    let mut resp = Json(json!({"submissions": list.iter().map(|s| submission_json(s, false)).collect::<Vec<_>>()}))
        .into_response();
    patients.apply(&mut resp);
    Ok(resp)
}

async fn one(State(st): State<ClinsState>, caller: Caller, Path(id): Path<String>) -> Result<Response, Problem> {
    caller.require_explicitly(PSEUDO_TYPE, Interaction::Read)?;
    let s = st.adapter.submission(&caller.ctx, &id).await?;
    Ok(audited(Json(submission_json(&s, true)).into_response(), s.patient.as_deref()))
}

async fn cancel(State(st): State<ClinsState>, caller: Caller, Path(id): Path<String>) -> Result<Response, Problem> {
    caller.require_explicitly(PSEUDO_TYPE, Interaction::Update)?;
    let before = st.adapter.submission(&caller.ctx, &id).await?;
    let result = st.adapter.cancel(&caller.ctx, &id).await.map(|s| {
        let status = if s.state == "withdrawn" { StatusCode::OK } else { StatusCode::ACCEPTED };
        (status, Json(submission_json(&s, false))).into_response()
    });
    Ok(answer(result, before.patient.as_deref()))
}

async fn change(
    State(st): State<ClinsState>,
    caller: Caller,
    Path(id): Path<String>,
    b: Result<Json<SubmitBody>, JsonRejection>,
) -> Result<Response, Problem> {
    caller.require_explicitly(PSEUDO_TYPE, Interaction::Update)?;
    let b = body(b)?;
    let before = st.adapter.submission(&caller.ctx, &id).await?;
    let result = st
        .adapter
        .change(&caller.ctx, &id, &b)
        .await
        .map(|s| (StatusCode::ACCEPTED, Json(submission_json(&s, false))).into_response());
    Ok(answer(result, before.patient.as_deref()))
}

async fn retrieve(
    State(st): State<ClinsState>,
    caller: Caller,
    b: Result<Json<RetrieveBody>, JsonRejection>,
) -> Result<Response, Problem> {
    caller.require_explicitly(PSEUDO_TYPE, Interaction::Read)?;
    let b = body(b)?;
    let answer = st.adapter.retrieve(&caller.ctx, &b).await?;
    let patient = format!("Patient/{}", b.patient.trim_start_matches("Patient/"));
    Ok(audited(Json(answer).into_response(), Some(&patient)))
}

/// `GET /clins/connections` (scope `Connection` r, like the lab interface's): this tenant's
/// connection to the service, for the inventory of external connections (`/admin/connections`).
async fn connections(State(st): State<ClinsState>, caller: Caller) -> Result<Response, Problem> {
    caller.require_explicitly("Connection", Interaction::Read)?;
    let settings = &st.adapter.settings;
    let (protocol, address) = match settings.transport.as_str() {
        "web-api" => ("CLINS Web API (JSON over HTTP)", json!(settings.url)),
        "file" => ("CLINS terminal file drop (AES-256-GCM files)", json!(settings.request_dir)),
        _ => ("not configured (submissions are kept queued)", Value::Null),
    };
    let tx = st.adapter.store.read(&caller.ctx).await.map_err(ClinsAdapterError::from)?;
    let (last, error) = tx.national_activity("clins").await.map_err(ClinsAdapterError::from)?;
    tx.commit().await.map_err(ClinsAdapterError::from)?;
    Ok(Json(json!({"connections": [{
        "kind": "national", "direction": "outbound", "name": "電子カルテ情報共有サービス",
        "protocol": protocol, "address": address, "active": settings.transport != "none",
        "lastActivityAt": last, "lastError": error,
    }]}))
    .into_response())
}
