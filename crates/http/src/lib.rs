//! Shared axum plumbing of every service: the authenticated-caller extractor, FHIR JSON bodies,
//! error → OperationOutcome responses, health endpoints and request ids. No business rules.

mod auth;
mod body;
mod error;
mod health;

pub use auth::{AuthState, Caller};
pub use body::{FHIR_JSON, FhirBody, FhirPath, JSON_PATCH, fhir_json_response};
pub use error::{HttpError, Problem, fallback, method_not_allowed};
pub use health::{Draining, Readiness, health_router};
