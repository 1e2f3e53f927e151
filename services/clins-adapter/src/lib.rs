//! The clins-adapter service: submissions to the EHR information-sharing service (電子カルテ情報
//! 共有サービス) built from the stored record, queued, sent, retried and tracked.
//!
//! - [`service`]: reads the patient's record in the caller's tenant, builds the Bundle of an
//!   item or a document with `ehr_clins`, validates it (FullValidator: profiles, JP-CLINS rules, master codes) and
//!   queues it in the submission log (`ehr_store::national`, service `clins`) under a request id
//!   that stays the same on every retry.
//! - [`worker`]: claims due submissions across tenants (with a lease, so no request id is ever
//!   in two sends at once), sends them through the configured transport, records accepted /
//!   rejected, retries retryable failures with exponential back-off until `max_attempts`
//!   (then `failed`).
//! - [`http`]: the JSON API under `/clins/…` (pseudo type `NationalSubmission`, explicit scopes).
//!
//! States of a submission: `queued` → `accepted` | `rejected` | `failed`; an accepted one later
//! becomes `cancelled` (a cancel was accepted) or `changed` (a change was accepted); a queued
//! (or failed) one cancelled before any attempt could have reached the service becomes
//! `withdrawn` (see [`ClinsAdapter::cancel`]).

pub mod error;
pub mod http;
pub mod service;
pub mod worker;

pub use error::ClinsAdapterError;
pub use http::{ClinsState, router};

use ehr_clins::crypto::Password;
use ehr_clins::transport::{FileDrop, Transport, WebApi};
use ehr_core::Clock;
use ehr_store::Store;
use ehr_validation::FullValidator;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;

/// The service name in the submission log.
pub const SERVICE: &str = "clins";

/// Settings of the clins-adapter (`[clins]` in the config file, `EHR_CLINS__*`).
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClinsSettings {
    /// `none` (submissions are built, validated and queued, nothing is sent), `web-api` or `file`.
    pub transport: String,
    /// The service's base URL for `web-api` (requests go to `<url>/clins/v1/requests`).
    pub url: Option<String>,
    /// `file`: where request files are dropped and results appear (the terminal's shared folders).
    pub request_dir: Option<PathBuf>,
    pub result_dir: Option<PathBuf>,
    /// `file`: a file holding the encryption password (read once at start, never logged).
    pub password_file: Option<PathBuf>,
    pub connect_timeout_ms: u64,
    /// How long one request may take (Web API) or wait for its result file (file drop).
    pub timeout_ms: u64,
    /// How often the worker looks for due submissions when not woken.
    pub poll_interval_ms: u64,
    /// First retry delay; doubled per attempt up to `retry_max_ms`.
    pub retry_base_ms: u64,
    pub retry_max_ms: u64,
    /// Attempts before a submission is `failed`.
    pub max_attempts: i32,
    /// How long a claimed submission is reserved for the worker that claimed it (never less than
    /// connect + timeout + 10 s: see `ClinsAdapter::lease_ms`).
    pub lease_secs: u64,
}

impl std::fmt::Debug for ClinsSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The password file's path is not secret, but nothing else here is either: all shown.
        f.debug_struct("ClinsSettings")
            .field("transport", &self.transport)
            .field("url", &self.url)
            .field("request_dir", &self.request_dir)
            .field("result_dir", &self.result_dir)
            .field("password_file", &self.password_file)
            .field("timeout_ms", &self.timeout_ms)
            .field("max_attempts", &self.max_attempts)
            .finish_non_exhaustive()
    }
}

impl Default for ClinsSettings {
    fn default() -> Self {
        Self {
            transport: "none".into(),
            url: None,
            request_dir: None,
            result_dir: None,
            password_file: None,
            connect_timeout_ms: 5_000,
            timeout_ms: 30_000,
            poll_interval_ms: 1_000,
            retry_base_ms: 5_000,
            retry_max_ms: 600_000,
            max_attempts: 10,
            lease_secs: 300,
        }
    }
}

/// The service: store, clock, validator, settings. Cheap to clone.
#[derive(Clone)]
pub struct ClinsAdapter {
    pub store: Store,
    pub clock: Arc<dyn Clock>,
    pub validator: FullValidator,
    pub settings: ClinsSettings,
    inner: Arc<Inner>,
}

struct Inner {
    transport: Option<Arc<dyn Transport>>,
    wake: Notify,
}

impl ClinsAdapter {
    pub fn new(
        store: Store,
        clock: Arc<dyn Clock>,
        validator: FullValidator,
        settings: ClinsSettings,
    ) -> Result<Self, ClinsAdapterError> {
        let transport = transport_of(&settings)?;
        if settings.max_attempts < 1 {
            return Err(ClinsAdapterError::Settings("max_attempts must be at least 1".into()));
        }
        Ok(Self { store, clock, validator, settings, inner: Arc::new(Inner { transport, wake: Notify::new() }) })
    }

    /// The masters the validator checks against (the built-in subset or the loaded official
    /// files): the builder codes lab results with the same ones.
    pub(crate) fn terminology(&self) -> &ehr_terminology::Terminology {
        self.validator.terminology()
    }

    pub(crate) fn transport(&self) -> Option<&Arc<dyn Transport>> {
        self.inner.transport.as_ref()
    }

    /// Wakes the worker (a submission was queued).
    pub fn wake(&self) {
        self.inner.wake.notify_one();
    }

    /// The workers that send queued submissions.
    pub fn spawn_workers(&self, shutdown: ehr_events::CancellationToken) -> Vec<tokio::task::JoinHandle<()>> {
        if self.inner.transport.is_none() {
            // Nothing to send through: submissions stay queued and visible.
            return Vec::new();
        }
        let me = self.clone();
        let interval = Duration::from_millis(self.settings.poll_interval_ms.max(10));
        vec![tokio::spawn(async move {
            loop {
                // A pass sends a few submissions per tenant (fairness); while passes find work,
                // the next one starts at once — a backlog drains at the service's pace, not at
                // one batch per poll interval.
                let busy = match me.send_due().await {
                    Ok(attempted) => attempted > 0,
                    Err(e) => {
                        tracing::warn!(code = ehr_core::Classify::code(&e), "clins sender pass failed");
                        false
                    }
                };
                if busy {
                    if shutdown.is_cancelled() {
                        break;
                    }
                    continue;
                }
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = me.inner.wake.notified() => {}
                    _ = tokio::time::sleep(interval) => {}
                }
            }
        })]
    }
}

fn transport_of(s: &ClinsSettings) -> Result<Option<Arc<dyn Transport>>, ClinsAdapterError> {
    let bad = |why: &str| ClinsAdapterError::Settings(why.to_owned());
    let connect = Duration::from_millis(s.connect_timeout_ms);
    let timeout = Duration::from_millis(s.timeout_ms);
    match s.transport.as_str() {
        "none" => Ok(None),
        "web-api" => {
            let url = s.url.as_deref().ok_or_else(|| bad("transport web-api needs clins.url"))?;
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(bad("clins.url must be an http(s) URL"));
            }
            let api = WebApi::new(url, connect, timeout).map_err(|_| bad("the HTTP client could not be built"))?;
            Ok(Some(Arc::new(api)))
        }
        "file" => {
            let request_dir = s.request_dir.clone().ok_or_else(|| bad("transport file needs clins.request_dir"))?;
            let result_dir = s.result_dir.clone().ok_or_else(|| bad("transport file needs clins.result_dir"))?;
            let path = s.password_file.as_ref().ok_or_else(|| bad("transport file needs clins.password_file"))?;
            let text = std::fs::read_to_string(path).map_err(|_| bad("clins.password_file cannot be read"))?;
            // The policy error names the rule, never the password.
            let password = Password::new(text.trim_end_matches(['\r', '\n'])).map_err(|e| bad(&e.to_string()))?;
            Ok(Some(Arc::new(FileDrop { request_dir, result_dir, password, timeout, poll: Duration::from_millis(50) })))
        }
        _ => Err(bad("clins.transport must be none, web-api or file")),
    }
}
