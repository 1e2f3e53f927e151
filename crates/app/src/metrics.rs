//! The metrics of a target: which gauges it reads at scrape time, the labels of its routers,
//! and the `/metrics` listener (`telemetry.metrics_listen`).
//!
//! Every target reads its database pools. Where a relay runs (every target but `gateway`) the
//! outbox lag; where the lab interface runs (`all`, `lab-interface`) the HL7 v2 outbound queue;
//! where the export workers run (`all`, `data-export`) the export jobs. The figures are of the
//! whole database (every tenant), so replicas of one target report the same values: aggregate
//! them with `max`, not `sum`.

use crate::{App, AppError, Target};
use axum::Router;
use ehr_core::Clock;
use ehr_store::Store;
use ehr_telemetry::metrics::{Metrics, ProbeFuture, Reading};
use std::net::SocketAddr;
use std::sync::Arc;

/// The `service` label of the routers the gateway of target `all` calls in-process.
pub(crate) const FHIR_ENGINE: &str = "patient-record+orders";
pub(crate) const LAB_INTERFACE: &str = "lab-interface";
pub(crate) const DATA_EXPORT: &str = "data-export";
pub(crate) const CLINS_ADAPTER: &str = "clins-adapter";
pub(crate) const EPRESCRIPTION_ADAPTER: &str = "eprescription-adapter";

/// The `service` label of a target's outer router: the gateway's in targets `all` and
/// `gateway`, else the target's name.
pub(crate) fn service_label(target: Target) -> &'static str {
    match target {
        Target::All | Target::Gateway => "gateway",
        other => other.name(),
    }
}

/// The metrics of `target`, with the probes of the gauges that make sense for it.
/// Their readings are reused for `telemetry.metrics_cache_ms`.
pub(crate) fn for_target(
    target: Target,
    store: &Store,
    clock: &Arc<dyn Clock>,
    settings: &ehr_telemetry::TelemetrySettings,
) -> Metrics {
    let metrics = Metrics::with_probe_cache(std::time::Duration::from_millis(settings.metrics_cache_ms));
    let s = store.clone();
    metrics.add_probe("db_pool", move || pool(&s));
    if target != Target::Gateway {
        let (s, c) = (store.clone(), clock.clone());
        metrics.add_probe("outbox", move || outbox(s.clone(), c.clone()));
    }
    if matches!(target, Target::All | Target::LabInterface) {
        let (s, c) = (store.clone(), clock.clone());
        metrics.add_probe("mllp_queue", move || mllp_queue(s.clone(), c.clone()));
    }
    if matches!(target, Target::All | Target::DataExport) {
        let s = store.clone();
        metrics.add_probe("export_jobs", move || export_jobs(s.clone()));
    }
    metrics
}

fn pool(store: &Store) -> ProbeFuture {
    // No query: the pools count their connections themselves.
    let readings = store
        .pool_stats()
        .into_iter()
        .map(|p| Reading::DbPool {
            pool: p.pool,
            in_use: u64::from(p.in_use),
            idle: u64::from(p.idle),
            max: u64::from(p.max),
        })
        .collect();
    Box::pin(std::future::ready(Some(readings)))
}

/// Seconds from `then` (epoch milliseconds) to now.
fn age_seconds(clock: &dyn Clock, then: i64) -> f64 {
    (clock.now().timestamp_millis().saturating_sub(then)).max(0) as f64 / 1000.0
}

fn outbox(store: Store, clock: Arc<dyn Clock>) -> ProbeFuture {
    Box::pin(async move {
        // Across tenants through the relay's own path (the role `ehr_relay` on PostgreSQL).
        match store.outbox_lag().await {
            Ok((unpublished, oldest)) => Some(vec![Reading::Outbox {
                unpublished,
                oldest_age_seconds: oldest.map_or(0.0, |t| age_seconds(clock.as_ref(), t)),
            }]),
            Err(e) => {
                tracing::warn!(error = %e, "metrics: reading the outbox lag failed");
                None
            }
        }
    })
}

fn mllp_queue(store: Store, clock: Arc<dyn Clock>) -> ProbeFuture {
    Box::pin(async move {
        match store.hl7_queue_depth().await {
            Ok(depth) => Some(
                depth
                    .into_iter()
                    .map(|d| Reading::MllpQueue {
                        state: d.state,
                        messages: d.messages,
                        oldest_age_seconds: d.oldest_created_at.map(|t| age_seconds(clock.as_ref(), t)),
                    })
                    .collect(),
            ),
            Err(e) => {
                tracing::warn!(error = %e, "metrics: reading the HL7 v2 queue failed");
                None
            }
        }
    })
}

fn export_jobs(store: Store) -> ProbeFuture {
    Box::pin(async move {
        match store.export_job_counts().await {
            Ok(counts) => Some(
                counts.into_iter().map(|(state, jobs)| Reading::ExportJobs { state: state.as_str(), jobs }).collect(),
            ),
            Err(e) => {
                tracing::warn!(error = %e, "metrics: counting export jobs failed");
                None
            }
        }
    })
}

/// `GET /metrics` of `app`: to serve on a listener of its own (see [`serve_metrics`]).
pub fn metrics_router(app: &App) -> Router {
    ehr_telemetry::metrics::router(app.metrics.clone())
}

/// Serves `/metrics` of `app` on `listen` (`telemetry.metrics_listen`) until the process ends;
/// returns the bound address (port 0 picks one).
pub async fn serve_metrics(app: &App, listen: &str) -> Result<SocketAddr, AppError> {
    let listener =
        tokio::net::TcpListener::bind(listen).await.map_err(|e| AppError::MetricsListener(listen.to_owned(), e))?;
    let bound = listener.local_addr().map_err(|e| AppError::MetricsListener(listen.to_owned(), e))?;
    let router = metrics_router(app);
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, router).await {
            tracing::error!(error = %e, "the metrics listener failed");
        }
    });
    Ok(bound)
}
