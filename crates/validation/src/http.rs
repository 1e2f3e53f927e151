//! The FHIR `$validate` operation (R4 §2.39 / `Resource-validate`), relative to the FHIR base:
//!
//! - `POST /{type}/$validate` and `POST /{type}/{id}/$validate`.
//! - Body: the resource itself, or a `Parameters` with `resource` (and optional `mode` =
//!   `create | update | delete | profile`, `profile`); `profile` may also be a query parameter
//!   (the body's wins). JSON or XML in and out through `ehr_rest::negotiate`.
//! - Answer: 200 with an OperationOutcome of every issue found (an information issue "no issues"
//!   when clean) — a non-conforming resource is a successful validation, not a failed request.
//!   400 when the body is not a resource or its type (or id) differs from the path; 404 for a
//!   type this server does not serve.
//! - Any authenticated caller may validate: the operation reads no stored data and stores
//!   nothing, so no resource scope is asked for (a caller learns only what the resource it sent
//!   breaks). The `{id}` form does not read the stored resource either; it only checks that the
//!   sent resource carries that id.

use axum::Router;
use axum::extract::{FromRef, RawQuery, State};
use axum::response::Response;
use axum::routing::post;
use ehr_core::{Issue, IssueType, Severity, operation_outcome};
use ehr_http::{AuthState, Caller, FhirBody, FhirPath, Problem, fhir_json_response, method_not_allowed};
use serde_json::Value;

use crate::{FullValidator, ValidationError};

/// State of the `$validate` routes.
#[derive(Clone)]
pub struct ValidateState {
    pub validator: FullValidator,
    pub auth: AuthState,
    /// The resource types served (the `{type}` of the path must be one of them).
    pub types: Vec<&'static str>,
}

impl FromRef<ValidateState> for AuthState {
    fn from_ref(s: &ValidateState) -> AuthState {
        s.auth.clone()
    }
}

/// The `$validate` routes, relative to the FHIR base. The path parameters are named as in the
/// REST router (`{ty}`, `{id}`) so that both can be merged under one base.
pub fn router(state: ValidateState) -> Router {
    Router::new()
        .route("/{ty}/$validate", post(validate_type).fallback(method_not_allowed))
        .route("/{ty}/{id}/$validate", post(validate_instance).fallback(method_not_allowed))
        .layer(axum::middleware::from_fn(ehr_rest::negotiate))
        .with_state(state)
}

/// `POST /{type}/$validate`.
async fn validate_type(
    State(s): State<ValidateState>,
    _caller: Caller,
    FhirPath(ty): FhirPath<String>,
    RawQuery(q): RawQuery,
    body: FhirBody,
) -> Result<Response, Problem> {
    off_the_runtime(s, ty, None, q, body.value).await
}

/// `POST /{type}/{id}/$validate`.
async fn validate_instance(
    State(s): State<ValidateState>,
    _caller: Caller,
    FhirPath((ty, id)): FhirPath<(String, String)>,
    RawQuery(q): RawQuery,
    body: FhirBody,
) -> Result<Response, Problem> {
    off_the_runtime(s, ty, Some(id), q, body.value).await
}

/// Validation is CPU work (a 1,000-entry Bundle takes tens of milliseconds): it runs on the
/// blocking pool, so the async workers keep serving other requests meanwhile.
async fn off_the_runtime(
    s: ValidateState,
    ty: String,
    id: Option<String>,
    query: Option<String>,
    body: Value,
) -> Result<Response, Problem> {
    tokio::task::spawn_blocking(move || run(&s, &ty, id.as_deref(), query.as_deref(), body))
        .await
        .map_err(|_| Problem::from(ValidationError::Interrupted))?
}

/// The operation's inputs once the body is unpacked.
#[derive(Debug)]
struct Input {
    resource: Option<Value>,
    mode: Option<String>,
    profile: Option<String>,
}

const MODES: &[&str] = &["create", "update", "delete", "profile"];

/// The body as the operation reads it: a Parameters (unless the path is `Parameters/$validate`
/// and the body has no `resource` parameter) or the resource itself.
fn unpack(ty: &str, body: Value) -> Result<Input, ValidationError> {
    let is_params =
        body["resourceType"] == "Parameters" && (ty != "Parameters" || params(&body).any(|p| p["name"] == "resource"));
    if !is_params {
        return Ok(Input { resource: Some(body), mode: None, profile: None });
    }
    let mut input = Input { resource: None, mode: None, profile: None };
    for p in params(&body) {
        match p["name"].as_str() {
            Some("resource") => {
                let r = p.get("resource").filter(|r| r.is_object()).ok_or(ValidationError::NotAResource)?;
                input.resource = Some(r.clone());
            }
            Some("mode") => {
                let m = p["valueCode"].as_str().or(p["valueString"].as_str());
                input.mode = Some(
                    m.ok_or(ValidationError::BadParameter { name: "mode", reason: "expected a code" })?.to_string(),
                );
            }
            Some("profile") => {
                let v = p["valueUri"].as_str().or(p["valueCanonical"].as_str()).or(p["valueString"].as_str());
                input.profile = Some(
                    v.ok_or(ValidationError::BadParameter { name: "profile", reason: "expected a canonical URL" })?
                        .to_string(),
                );
            }
            // Unknown inputs are ignored, as for search parameters.
            _ => {}
        }
    }
    Ok(input)
}

fn params(body: &Value) -> impl Iterator<Item = &Value> {
    body["parameter"].as_array().into_iter().flatten()
}

fn run(s: &ValidateState, ty: &str, id: Option<&str>, query: Option<&str>, body: Value) -> Result<Response, Problem> {
    if !s.types.contains(&ty) {
        return Err(ValidationError::UnknownType(ty.to_string()).into());
    }
    let mut input = unpack(ty, body)?;
    let query_profile = query
        .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect::<Vec<_>>())
        .into_iter()
        .flatten()
        .find(|(k, _)| k == "profile")
        .map(|(_, v)| v)
        .filter(|v| !v.is_empty());
    if input.profile.is_none() {
        input.profile = query_profile;
    }
    if let Some(m) = &input.mode
        && !MODES.contains(&m.as_str())
    {
        return Err(ValidationError::BadParameter {
            name: "mode",
            reason: "expected create, update, delete or profile",
        }
        .into());
    }
    let issues = match (input.mode.as_deref(), input.resource) {
        // Nothing here forbids a delete; the stored resource is not consulted.
        (Some("delete"), _) => Vec::new(),
        (_, None) => return Err(ValidationError::NotAResource.into()),
        (_, Some(resource)) => {
            let found = resource["resourceType"].as_str().ok_or(ValidationError::NotAResource)?;
            if found != ty {
                return Err(ValidationError::WrongType { expected: ty.to_string(), found: found.to_string() }.into());
            }
            if let (Some(path_id), Some(res_id)) = (id, resource["id"].as_str())
                && path_id != res_id
            {
                return Err(ValidationError::IdMismatch.into());
            }
            s.validator.validate(&resource, input.profile.as_deref())
        }
    };
    Ok(fhir_json_response(200, Vec::new(), outcome(&issues).to_string()))
}

/// The OperationOutcome of a validation: its issues, or one information issue when clean.
pub fn outcome(issues: &[Issue]) -> Value {
    if issues.is_empty() {
        let clean = Issue::new(Severity::Information, IssueType::Informational, "EHR-VLD-100", "no issues");
        return operation_outcome(&[clean]);
    }
    operation_outcome(issues)
}
