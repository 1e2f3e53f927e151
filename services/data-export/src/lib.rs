//! The data-export service: standard-spec requirement ④, moving a hospital's data to another
//! vendor.
//!
//! - Export ([`export`], [`worker`]): FHIR Bulk Data `$export` at system, `Patient` and
//!   `Group/[id]` level — kick-off, status, manifest, cancel — run as jobs that survive a restart
//!   and resume from their last checkpoint, writing NDJSON per type, one Bundle (JSON or XML) per
//!   patient, or the CSV layouts of docs/formats/csv.md.
//! - Import ([`import`]): the same three formats back in, validated, all-or-nothing per file,
//!   ids preserved, references rewritten consistently, idempotent.
//! - `Patient/[id]/$everything` ([`everything`]).

pub mod error;
pub mod everything;
pub mod export;
pub mod import;
pub mod worker;

pub use error::ExportError;

use axum::Router;
use axum::extract::FromRef;
use ehr_core::Clock;
use ehr_fhir::validate::Validator;
use ehr_http::AuthState;
use ehr_rest::BaseUrl;
use ehr_store::Store;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::sync::Arc;
use tokio::sync::Notify;

/// Settings of the data-export service (`[export]` in the config file, `EHR_EXPORT__*`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ExportSettings {
    /// Where export files are written: `<root>/<tenant>/<job>/…`. In Kubernetes a volume every
    /// data-export replica mounts.
    pub root: PathBuf,
    /// How often idle workers look for jobs when not woken.
    pub poll_interval_ms: u64,
    /// How long a claimed job is reserved for the worker that claimed it; a worker that dies
    /// loses it after this and another (or the restarted one) resumes it.
    pub lease_secs: u64,
    /// Resources read per database round trip (and per checkpoint).
    pub page_size: usize,
    /// Resources per output file before a new file of the same type is started.
    pub max_file_resources: u64,
    /// A pause between two pages of an export, sparing the database the full speed of a
    /// worker (0: none).
    pub page_pause_ms: u64,
    /// Completed and cancelled jobs (and their files) are deleted after this many hours.
    pub retention_hours: u64,
    /// The largest request body `$import` accepts.
    pub max_import_bytes: usize,
}

impl Default for ExportSettings {
    fn default() -> Self {
        Self {
            root: PathBuf::from("./data/exports"),
            poll_interval_ms: 1000,
            lease_secs: 60,
            page_size: 500,
            max_file_resources: 100_000,
            page_pause_ms: 0,
            retention_hours: 24,
            max_import_bytes: 256 * 1024 * 1024,
        }
    }
}

/// The service: its store, validator, clock, and the wake-up for export workers. Cheap to clone.
#[derive(Clone)]
pub struct DataExport {
    pub store: Store,
    pub validator: Arc<Validator>,
    pub clock: Arc<dyn Clock>,
    /// The resource types this deployment stores (what a system-level export covers).
    pub types: Vec<&'static str>,
    pub settings: ExportSettings,
    /// Woken when a job is kicked off, so a worker starts it without waiting for the poll.
    pub kick: Arc<Notify>,
}

/// State of the service's routes.
#[derive(Clone)]
pub struct ExportState {
    pub service: DataExport,
    pub auth: AuthState,
    /// How absolute URLs (status, files, bundle links) are formed.
    pub base: BaseUrl,
}

impl FromRef<ExportState> for AuthState {
    fn from_ref(s: &ExportState) -> AuthState {
        s.auth.clone()
    }
}

/// Operation names this service answers (the gateway routes request paths containing them here).
pub const OPERATIONS: &[&str] = &["$export", "$export-status", "$export-file", "$import", "$everything"];

/// The service's routes, relative to the FHIR base (`/fhir`).
pub fn router(state: ExportState) -> Router {
    Router::new().merge(export::routes()).merge(import::routes()).merge(everything::routes()).with_state(state)
}
