//! FHIR JSON request and response bodies.

use crate::error::{HttpError, Problem};
use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use serde_json::Value;

/// The FHIR JSON media type (R4 `application/fhir+json`).
pub const FHIR_JSON: &str = "application/fhir+json; charset=utf-8";
/// The JSON Patch media type (RFC 6902).
pub const JSON_PATCH: &str = "application/json-patch+json";

/// A request body that must be a JSON object sent as `application/fhir+json` (or plain
/// `application/json`, which R4 servers accept too); JSON Patch bodies as
/// `application/json-patch+json` are accepted and marked.
#[derive(Debug)]
pub struct FhirBody {
    pub value: Value,
    pub is_patch: bool,
}

fn media_type(headers: &HeaderMap) -> Option<String> {
    let ct = headers.get(header::CONTENT_TYPE)?.to_str().ok()?;
    Some(ct.split(';').next().unwrap_or("").trim().to_ascii_lowercase())
}

impl<S: Send + Sync> FromRequest<S> for FhirBody {
    type Rejection = Problem;

    async fn from_request(req: Request, state: &S) -> Result<Self, Problem> {
        let media = media_type(req.headers());
        let is_patch = media.as_deref() == Some(JSON_PATCH);
        match media.as_deref() {
            Some("application/fhir+json" | "application/json" | "application/json+fhir") => {}
            Some(JSON_PATCH) => {}
            // Form posts are legal only for `_search`, which does not use this extractor.
            _ => return Err(HttpError::UnsupportedMediaType.into()),
        }
        let bytes = Bytes::from_request(req, state).await.map_err(|_| Problem::from(HttpError::TooLarge))?;
        let value: Value = serde_json::from_slice(&bytes).map_err(|e| {
            // serde_json's message names the line and column and the kind of error, never the
            // content, so it is safe to return.
            Problem::from(HttpError::MalformedJson(e.to_string()))
        })?;
        if !is_patch && !value.is_object() {
            return Err(HttpError::NotAnObject.into());
        }
        Ok(Self { value, is_patch })
    }
}

/// A `200`-class FHIR JSON response with extra headers.
pub fn fhir_json_response(status: u16, headers: Vec<(header::HeaderName, String)>, body: String) -> Response {
    let status = axum::http::StatusCode::from_u16(status).unwrap_or(axum::http::StatusCode::OK);
    let mut resp = (status, [(header::CONTENT_TYPE, FHIR_JSON)], body).into_response();
    for (name, value) in headers {
        if let Ok(v) = header::HeaderValue::from_str(&value) {
            resp.headers_mut().insert(name, v);
        }
    }
    resp
}

/// Path parameters whose rejection (e.g. invalid percent-encoded UTF-8) is an OperationOutcome
/// rather than axum's plain-text 400.
#[derive(Debug)]
pub struct FhirPath<T>(pub T);

impl<S, T> axum::extract::FromRequestParts<S> for FhirPath<T>
where
    T: serde::de::DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, state: &S) -> Result<Self, Problem> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Path(t)| FhirPath(t))
            .map_err(|_| HttpError::BadPath.into())
    }
}
