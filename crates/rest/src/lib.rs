//! The FHIR RESTful API engine, shared by every resource-owning service.
//!
//! A service hands over the resource types it owns; this crate serves the R4 interactions on
//! them (create, read, vread, update, patch, delete, history, search, batch/transaction,
//! capabilities) with the same validation, tenancy and scope rules everywhere, in FHIR JSON and
//! (converted at the boundary by [`negotiate`]) FHIR XML.

mod audit;
mod capability;
mod error;
mod format;
mod handlers;
mod render;
mod service;
mod transaction;

pub use audit::{AUDIT_PATIENTS, Patients};
pub use capability::capability_statement;
pub use error::RestError;
pub use format::{FHIR_XML, negotiate};
pub use render::BaseUrl;
pub use service::{Change, FhirService, WriteOutcome, WriteRules};

use axum::Router;
use axum::extract::FromRef;
use axum::routing::{get, post};
use ehr_http::{AuthState, method_not_allowed};
use std::sync::Arc;

/// State of a FHIR REST router.
#[derive(Clone)]
pub struct RestState {
    pub service: Arc<FhirService>,
    pub auth: AuthState,
    /// How absolute URLs in responses are formed.
    pub base: BaseUrl,
}

impl FromRef<RestState> for AuthState {
    fn from_ref(s: &RestState) -> AuthState {
        s.auth.clone()
    }
}

/// The FHIR REST routes, relative to the FHIR base.
pub fn router(state: RestState) -> Router {
    use handlers as h;
    Router::new()
        .route("/metadata", get(h::metadata).fallback(method_not_allowed))
        .route("/", post(transaction::process).fallback(method_not_allowed))
        .route("/_history", get(h::history_system).fallback(method_not_allowed))
        .route(
            "/{ty}",
            get(h::search_get)
                .post(h::create)
                .put(h::conditional_update)
                .delete(h::conditional_delete)
                .fallback(method_not_allowed),
        )
        .route("/{ty}/_search", post(h::search_post).fallback(method_not_allowed))
        .route("/{ty}/_history", get(h::history_type).fallback(method_not_allowed))
        .route("/{ty}/{id}", get(h::read).put(h::update).patch(h::patch).delete(h::delete).fallback(method_not_allowed))
        .route("/{ty}/{id}/_history", get(h::history_instance).fallback(method_not_allowed))
        .route("/{ty}/{id}/_history/{vid}", get(h::vread).fallback(method_not_allowed))
        .layer(axum::middleware::from_fn(negotiate))
        .with_state(state)
}

/// The read and search routes only — for records no client may write and that have one version,
/// such as the gateway's AuditEvents, which only the audit writer appends (without history rows).
/// The history paths answer 405, as the interactions the type does not support (not a read of
/// the id `_history`); anything else is an OperationOutcome 404.
pub fn read_only_router(state: RestState) -> Router {
    use handlers as h;
    Router::new()
        .route("/{ty}", get(h::search_get).fallback(method_not_allowed))
        .route("/{ty}/_search", post(h::search_post).fallback(method_not_allowed))
        .route("/{ty}/_history", axum::routing::any(method_not_allowed))
        .route("/{ty}/{id}", get(h::read).fallback(method_not_allowed))
        .route("/{ty}/{id}/_history", axum::routing::any(method_not_allowed))
        .route("/{ty}/{id}/_history/{vid}", axum::routing::any(method_not_allowed))
        .fallback(ehr_http::fallback)
        .layer(axum::middleware::from_fn(negotiate))
        .with_state(state)
}
