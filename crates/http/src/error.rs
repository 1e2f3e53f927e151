//! Every rejection is an OperationOutcome: this module turns any classified error into one.

use crate::body::FHIR_JSON;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use ehr_core::{Classify, Issue, IssueType, operation_outcome};

/// Errors raised by the HTTP layer itself (before a service sees the request).
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("unsupported content type: expected application/fhir+json")]
    UnsupportedMediaType,
    #[error("unsupported content type for patch: expected application/json-patch+json")]
    UnsupportedPatchType,
    #[error("request body is not valid JSON: {0}")]
    MalformedJson(String),
    #[error("request body must be a JSON object")]
    NotAnObject,
    #[error("request body is too large")]
    TooLarge,
    #[error("no such endpoint")]
    NoRoute,
    #[error("method not allowed on this endpoint")]
    MethodNotAllowed,
    #[error("the URL path is not valid (bad percent-encoding or UTF-8)")]
    BadPath,
}

impl Classify for HttpError {
    fn issue_type(&self) -> IssueType {
        match self {
            Self::UnsupportedMediaType | Self::UnsupportedPatchType => IssueType::NotSupported,
            Self::MalformedJson(_) | Self::NotAnObject => IssueType::Structure,
            Self::TooLarge => IssueType::TooCostly,
            Self::NoRoute => IssueType::NotFound,
            Self::MethodNotAllowed => IssueType::NotSupported,
            Self::BadPath => IssueType::Invalid,
        }
    }

    fn code(&self) -> &'static str {
        match self {
            Self::UnsupportedMediaType => "EHR-HTTP-001",
            Self::UnsupportedPatchType => "EHR-HTTP-002",
            Self::MalformedJson(_) => "EHR-HTTP-003",
            Self::NotAnObject => "EHR-HTTP-004",
            Self::TooLarge => "EHR-HTTP-005",
            Self::NoRoute => "EHR-HTTP-006",
            Self::MethodNotAllowed => "EHR-HTTP-007",
            Self::BadPath => "EHR-HTTP-009",
        }
    }

    fn http_status(&self) -> u16 {
        match self {
            Self::UnsupportedMediaType | Self::UnsupportedPatchType => 415,
            Self::TooLarge => 413,
            Self::MethodNotAllowed => 405,
            _ => self.issue_type().http_status(),
        }
    }
}

/// A classified failure on its way to the client as an OperationOutcome.
#[derive(Debug)]
pub struct Problem {
    status: u16,
    issues: Vec<Issue>,
}

impl Problem {
    /// A problem with explicit status and issues (for validation failures with many issues).
    pub fn new(status: u16, issues: Vec<Issue>) -> Self {
        Self { status, issues }
    }

    /// The HTTP status.
    pub fn status(&self) -> u16 {
        self.status
    }

    /// The issues.
    pub fn issues(&self) -> &[Issue] {
        &self.issues
    }
}

impl<E: Classify> From<E> for Problem {
    fn from(err: E) -> Self {
        Self { status: err.http_status(), issues: err.issues() }
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = operation_outcome(&self.issues).to_string();
        let mut resp = (status, [(header::CONTENT_TYPE, FHIR_JSON)], body).into_response();
        if status == StatusCode::UNAUTHORIZED {
            // RFC 6750 §3: tell the client which scheme to use.
            resp.headers_mut().insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer"));
        }
        resp
    }
}

/// Router fallback: unknown paths answer a 404 OperationOutcome.
pub async fn fallback() -> Problem {
    HttpError::NoRoute.into()
}

/// Handler for a method the route does not support.
pub async fn method_not_allowed() -> Problem {
    HttpError::MethodNotAllowed.into()
}
