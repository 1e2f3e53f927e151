//! Observability of every service: traces exported over OTLP with W3C trace context carried
//! across processes, events and HL7 messages (`trace`), and Prometheus metrics (`metrics`).
//!
//! Spans and metric labels carry ids, routes, topics and statuses — never patient data.

pub mod metrics;
pub mod trace;

use serde::{Deserialize, Serialize};

/// `[telemetry]` in the configuration.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetrySettings {
    /// OTLP/HTTP endpoint of a collector (`http://otel-collector:4318`); traces go to
    /// `<endpoint>/v1/traces`. Unset: no traces are exported (the standard
    /// `OTEL_EXPORTER_OTLP_ENDPOINT` is used when this is unset).
    pub otlp_endpoint: Option<String>,
    /// The `service.name` resource attribute; default `ehr-<target>`.
    pub service_name: Option<String>,
    /// Fraction of root traces sampled, 0.0–1.0 (a request carrying a sampled `traceparent`
    /// is always sampled).
    pub sample_ratio: f64,
    /// Where `/metrics` (Prometheus text format) is served, on a listener of its own so that
    /// only the monitoring system reaches it; unset: no metrics listener.
    pub metrics_listen: Option<String>,
}

impl Default for TelemetrySettings {
    fn default() -> Self {
        Self { otlp_endpoint: None, service_name: None, sample_ratio: 1.0, metrics_listen: None }
    }
}

/// Telemetry set-up failures.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("telemetry: {0}")]
    Setup(String),
}
