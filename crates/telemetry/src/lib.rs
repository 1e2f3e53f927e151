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
    /// Fraction of root traces sampled, 0.0–1.0 (a span whose parent is sampled is sampled).
    pub sample_ratio: f64,
    /// Whether the public edge (targets `gateway` and `all`) takes a client's `traceparent` as
    /// the parent of its request span. Default `false`: the edge starts a trace of its own
    /// (sampled at `sample_ratio`) and records the client's context as a span link only, so a
    /// client cannot force sampling, hide requests (flag `00`) or choose trace ids. Set it only
    /// when every client is trusted (a tracing proxy in front of the gateway). The services
    /// behind the gateway always continue the gateway's trace.
    pub trust_incoming_traceparent: bool,
    /// How long, in milliseconds, a reading of the gauges read at scrape time (database pools,
    /// queues, export jobs) is reused: scrapes within it (replicas of Prometheus, dashboards)
    /// share one reading instead of each querying the database. 0: every scrape reads.
    pub metrics_cache_ms: u64,
    /// Where `/metrics` (Prometheus text format) is served, on a listener of its own so that
    /// only the monitoring system reaches it; unset: no metrics listener.
    pub metrics_listen: Option<String>,
}

impl Default for TelemetrySettings {
    fn default() -> Self {
        Self {
            otlp_endpoint: None,
            service_name: None,
            sample_ratio: 1.0,
            trust_incoming_traceparent: false,
            metrics_cache_ms: 10_000,
            metrics_listen: None,
        }
    }
}

/// Telemetry set-up failures.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("telemetry: {0}")]
    Setup(String),
}
