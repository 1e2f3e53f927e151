//! Prometheus metrics: request rates and latencies per route, and the gauges of the stores and
//! queues (database pool, outbox lag, MLLP queue depth, export progress), read at scrape time.
//!
//! - [`Metrics`] is the registry of one process (cheap to clone). Counters and histograms are
//!   updated as things happen; the gauges of the stores come from *probes*
//!   ([`Metrics::add_probe`]), async functions run at scrape time with a timeout
//!   ([`PROBE_TIMEOUT`]) so that a slow database delays a scrape, never hangs it; their
//!   readings are reused for [`PROBE_CACHE`], and concurrent scrapes share one run.
//! - [`layer`] counts and times every request of a router by its **matched route template**
//!   (`/fhir/{ty}/{id}`), never by its URI: paths carry ids and query strings carry names,
//!   birth dates and identifiers. A request no route matched is `route="unmatched"`; a method
//!   outside the standard ones is `method="other"`, so a client cannot mint label values. A
//!   request that ends without a response (the client went away, a panic) is
//!   `status="cancelled"`.
//! - [`router`] serves `GET /metrics` in the Prometheus text format (0.0.4), or OpenMetrics
//!   when the scraper asks for it (`Accept: application/openmetrics-text`); it is meant for a
//!   listener of its own (`telemetry.metrics_listen`), which only the monitoring system reaches.
//!
//! Two counters are updated where no [`Metrics`] handle is passed around — the event consumers
//! ([`event_consumed`]) and the export workers ([`export_resources_written`]) — and are
//! therefore process-wide; every [`Metrics`] of the process exposes them.
//!
//! Labels carry services, methods, route templates, status codes, consumer groups, topics and
//! states: never ids, names or anything else of a patient. `docs/operations/observability.md`
//! lists every metric.

use axum::Router;
use axum::extract::{MatchedPath, State};
use axum::http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, LazyLock, PoisonError, RwLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

/// Upper bounds of the request-duration buckets, in seconds: 1 ms to 30 s.
pub const DURATION_BUCKETS: [f64; 14] =
    [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

/// How long a scrape waits for one probe; a probe that takes longer is reported as failed
/// (`ehr_metrics_probe_success{probe} 0`) and its gauges are left out of that scrape.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// How long the probes' readings are reused by default: scrapes within that time (several
/// Prometheus replicas, a dashboard refreshing) share one reading instead of each querying the
/// database (`telemetry.metrics_cache_ms`).
pub const PROBE_CACHE: Duration = Duration::from_secs(10);

/// The `route` of a request no route matched.
pub const UNMATCHED: &str = "unmatched";

/// `Content-Type` of the Prometheus text format.
pub const PROMETHEUS_CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// `Content-Type` of the OpenMetrics text format.
pub const OPENMETRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    service: &'static str,
    method: &'static str,
    route: String,
    status: StatusLabel,
}

/// The `status` label: the response's status code, or `cancelled` for a request that ended
/// without one (the client went away and the response future was dropped, or the handler
/// panicked).
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
enum StatusLabel {
    Code(u16),
    Cancelled,
}

impl prometheus_client::encoding::EncodeLabelValue for StatusLabel {
    fn encode(&self, encoder: &mut prometheus_client::encoding::LabelValueEncoder) -> Result<(), fmt::Error> {
        use std::fmt::Write;
        match self {
            Self::Code(code) => write!(encoder, "{code}"),
            Self::Cancelled => encoder.write_str("cancelled"),
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    service: &'static str,
    method: &'static str,
    route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EventLabels {
    group: &'static str,
    topic: String,
    outcome: &'static str,
}

type DurationFamily = Family<RouteLabels, Histogram, fn() -> Histogram>;

fn duration_histogram() -> Histogram {
    Histogram::new(DURATION_BUCKETS)
}

/// Events handled by the consumers of this process (see [`event_consumed`]).
static EVENTS_CONSUMED: LazyLock<Family<EventLabels, Counter>> = LazyLock::new(Family::default);

/// Resources the export workers of this process wrote (see [`export_resources_written`]).
static EXPORT_RESOURCES_WRITTEN: LazyLock<Counter> = LazyLock::new(Counter::default);

/// What became of an event a consumer received.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventOutcome {
    /// The handler applied it.
    Applied,
    /// Its receipt existed: applied before, skipped (a redelivery).
    Duplicate,
    /// The handler (or the store) failed: retried later or dead-lettered.
    Failed,
}

impl EventOutcome {
    /// `Duplicate` when the receipt existed, else `Applied`.
    pub fn handled(duplicate: bool) -> Self {
        if duplicate { Self::Duplicate } else { Self::Applied }
    }

    fn as_str(self) -> &'static str {
        match self {
            Self::Applied => "applied",
            Self::Duplicate => "duplicate",
            Self::Failed => "failed",
        }
    }
}

/// Counts one event handled by consumer group `group` (`ehr_events_consumed_total`).
pub fn event_consumed(group: &'static str, topic: &str, outcome: EventOutcome) {
    let labels = EventLabels { group, topic: topic.to_owned(), outcome: outcome.as_str() };
    EVENTS_CONSUMED.get_or_create(&labels).inc();
}

/// Counts resources an export worker wrote into export files
/// (`ehr_export_resources_written_total`).
pub fn export_resources_written(resources: u64) {
    EXPORT_RESOURCES_WRITTEN.inc_by(resources);
}

/// A value read by a probe at scrape time. Label values are fixed words chosen by the code,
/// never data.
#[derive(Debug, Clone, PartialEq)]
pub enum Reading {
    /// A database connection pool: `ehr_db_pool_connections{pool,state}` and
    /// `ehr_db_pool_max_connections{pool}`.
    DbPool { pool: &'static str, in_use: u64, idle: u64, max: u64 },
    /// Events in the outbox that no relay has published yet, and the age of the oldest
    /// (0 when there is none): `ehr_outbox_unpublished_events`,
    /// `ehr_outbox_oldest_unpublished_age_seconds`.
    Outbox { unpublished: u64, oldest_age_seconds: f64 },
    /// Outbound HL7 v2 messages in one state: `ehr_mllp_queue_messages{state}`; for `pending`
    /// also `ehr_mllp_queue_oldest_pending_age_seconds`.
    MllpQueue { state: &'static str, messages: u64, oldest_age_seconds: Option<f64> },
    /// Bulk Data export jobs in one state: `ehr_export_jobs{state}`.
    ExportJobs { state: &'static str, jobs: u64 },
}

/// What a probe returns: its readings, or `None` when it failed (it logs why, without data).
pub type ProbeFuture = Pin<Box<dyn Future<Output = Option<Vec<Reading>>> + Send>>;

type Probe = Arc<dyn Fn() -> ProbeFuture + Send + Sync>;

/// What one run of the probes read.
type Probed = Vec<(&'static str, Option<Vec<Reading>>)>;

/// The metrics of one process. Cheap to clone; clones share everything.
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

struct Inner {
    /// Counters and histograms; registered once in [`Metrics::new`], never changed after.
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    durations: DurationFamily,
    probes: RwLock<Vec<(&'static str, Probe)>>,
    /// How long a reading is reused ([`PROBE_CACHE`] by default).
    cache_for: Duration,
    /// The last reading and when it was taken. Held across a run of the probes: concurrent
    /// scrapes wait for the one running and share its reading (single flight).
    last: tokio::sync::Mutex<Option<(tokio::time::Instant, Probed)>>,
}

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let probes: Vec<&'static str> = self.probe_names();
        f.debug_struct("Metrics").field("probes", &probes).finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A registry with the request metrics, the build info and the process-wide counters; the
    /// probes' readings are reused for [`PROBE_CACHE`].
    pub fn new() -> Self {
        Self::with_probe_cache(PROBE_CACHE)
    }

    /// [`Metrics::new`], reusing the probes' readings for `cache_for` (zero: every scrape runs
    /// the probes, concurrent scrapes one after the other).
    pub fn with_probe_cache(cache_for: Duration) -> Self {
        let mut registry = Registry::default();
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "ehr_http_requests",
            "HTTP requests answered, by service, method, matched route template and status code",
            requests.clone(),
        );
        let durations: DurationFamily = Family::new_with_constructor(duration_histogram);
        registry.register_with_unit(
            "ehr_http_request_duration",
            "Time from a request reaching the service's router to its response headers, by service, method and matched route template",
            Unit::Seconds,
            durations.clone(),
        );
        let build = Family::<[(&'static str, &'static str); 1], Gauge>::default();
        build.get_or_create(&[("version", env!("CARGO_PKG_VERSION"))]).set(1);
        registry.register("ehr_build_info", "The running build (always 1)", build);
        registry.register(
            "ehr_events_consumed",
            "Events handled by the event consumers of this process, by consumer group, topic and outcome (applied, duplicate, failed)",
            EVENTS_CONSUMED.clone(),
        );
        registry.register(
            "ehr_export_resources_written",
            "Resources the Bulk Data export workers of this process wrote into export files (a page rewritten after a resume counts again)",
            EXPORT_RESOURCES_WRITTEN.clone(),
        );
        Self {
            inner: Arc::new(Inner {
                registry,
                requests,
                durations,
                probes: RwLock::new(Vec::new()),
                cache_for,
                last: tokio::sync::Mutex::new(None),
            }),
        }
    }

    /// Adds a probe run at every scrape; `name` is its `probe` label.
    pub fn add_probe(&self, name: &'static str, probe: impl Fn() -> ProbeFuture + Send + Sync + 'static) {
        self.inner.probes.write().unwrap_or_else(PoisonError::into_inner).push((name, Arc::new(probe)));
        // A reading taken without this probe is stale (probes are added at start-up, before
        // any scrape: the lock is free).
        if let Ok(mut last) = self.inner.last.try_lock() {
            *last = None;
        }
    }

    /// The names of the probes, in the order they were added.
    pub fn probe_names(&self) -> Vec<&'static str> {
        self.inner.probes.read().unwrap_or_else(PoisonError::into_inner).iter().map(|(n, _)| *n).collect()
    }

    /// Records one answered request.
    #[cfg(test)]
    fn record(&self, service: &'static str, method: &'static str, route: &str, status: u16, elapsed: Duration) {
        self.record_as(service, method, route, StatusLabel::Code(status), elapsed);
    }

    fn record_as(
        &self,
        service: &'static str,
        method: &'static str,
        route: &str,
        status: StatusLabel,
        elapsed: Duration,
    ) {
        let route = route.to_owned();
        self.inner
            .durations
            .get_or_create(&RouteLabels { service, method, route: route.clone() })
            .observe(elapsed.as_secs_f64());
        self.inner.requests.get_or_create(&RequestLabels { service, method, route, status }).inc();
    }

    /// What every probe read, in the order the probes were added; `None` for a probe that
    /// failed or timed out. A reading younger than the cache time is reused; otherwise the
    /// probes run (see [`Metrics::probe_now`]) — once for all the scrapes asking meanwhile.
    pub async fn probe(&self) -> Probed {
        let mut last = self.inner.last.lock().await;
        if let Some((at, probed)) = last.as_ref()
            && at.elapsed() < self.inner.cache_for
        {
            return probed.clone();
        }
        let probed = self.probe_now().await;
        *last = Some((tokio::time::Instant::now(), probed.clone()));
        probed
    }

    /// Runs every probe (concurrently, each for at most [`PROBE_TIMEOUT`]) and returns what
    /// each read. The probes' lock is not held while they run.
    async fn probe_now(&self) -> Probed {
        let probes: Vec<(&'static str, Probe)> =
            self.inner.probes.read().unwrap_or_else(PoisonError::into_inner).clone();
        // Tasks of their own: a scrape the client abandons aborts them (the set is dropped).
        let mut tasks = tokio::task::JoinSet::new();
        for (index, (name, probe)) in probes.iter().enumerate() {
            let future = probe();
            let name = *name;
            tasks.spawn(async move {
                match tokio::time::timeout(PROBE_TIMEOUT, future).await {
                    Ok(readings) => (index, readings),
                    Err(_) => {
                        tracing::warn!(probe = name, "metrics probe timed out");
                        (index, None)
                    }
                }
            });
        }
        let mut results: Vec<(&'static str, Option<Vec<Reading>>)> = probes.iter().map(|(n, _)| (*n, None)).collect();
        while let Some(joined) = tasks.join_next().await {
            match joined {
                Ok((index, readings)) => {
                    if let Some(slot) = results.get_mut(index) {
                        slot.1 = readings;
                    }
                }
                Err(_) => tracing::error!("a metrics probe panicked"),
            }
        }
        results
    }

    /// The exposition of one scrape: runs the probes, then encodes everything in `format`.
    pub async fn render(&self, format: Format) -> Result<String, fmt::Error> {
        let probed = self.probe().await;
        self.encode(&probed, format)
    }

    /// Encodes the registry and the probes' readings in `format`.
    pub fn encode(
        &self,
        probed: &[(&'static str, Option<Vec<Reading>>)],
        format: Format,
    ) -> Result<String, fmt::Error> {
        let gauges = gauge_registry(probed);
        let mut text = String::new();
        match format {
            Format::Prometheus => {
                use prometheus_client::encoding::prometheus_text::encode;
                encode(&mut text, &self.inner.registry)?;
                encode(&mut text, &gauges)?;
            }
            Format::OpenMetrics => {
                use prometheus_client::encoding::text::{encode_eof, encode_registry};
                encode_registry(&mut text, &self.inner.registry)?;
                encode_registry(&mut text, &gauges)?;
                encode_eof(&mut text)?;
            }
        }
        Ok(text)
    }
}

type CountGauges<L> = Family<L, Gauge>;
type SecondsGauge = Gauge<f64, AtomicU64>;

/// A registry of this scrape's gauges: only the families some probe read, so that a target
/// without a lab interface shows no MLLP queue.
fn gauge_registry(probed: &[(&'static str, Option<Vec<Reading>>)]) -> Registry {
    let success = CountGauges::<[(&'static str, &'static str); 1]>::default();
    let pool = CountGauges::<[(&'static str, &'static str); 2]>::default();
    let pool_max = CountGauges::<[(&'static str, &'static str); 1]>::default();
    let (unpublished, oldest_event) = (Gauge::<i64>::default(), SecondsGauge::default());
    let mllp = CountGauges::<[(&'static str, &'static str); 1]>::default();
    let oldest_pending = SecondsGauge::default();
    let export = CountGauges::<[(&'static str, &'static str); 1]>::default();
    let (mut has_pool, mut has_outbox, mut has_mllp, mut has_export) = (false, false, false, false);
    for (probe, readings) in probed {
        success.get_or_create(&[("probe", *probe)]).set(i64::from(readings.is_some()));
        for reading in readings.iter().flatten() {
            match reading {
                Reading::DbPool { pool: name, in_use, idle, max } => {
                    has_pool = true;
                    pool.get_or_create(&[("pool", *name), ("state", "in_use")]).set(count(*in_use));
                    pool.get_or_create(&[("pool", *name), ("state", "idle")]).set(count(*idle));
                    pool_max.get_or_create(&[("pool", *name)]).set(count(*max));
                }
                Reading::Outbox { unpublished: n, oldest_age_seconds } => {
                    has_outbox = true;
                    unpublished.set(count(*n));
                    oldest_event.set(oldest_age_seconds.max(0.0));
                }
                Reading::MllpQueue { state, messages, oldest_age_seconds } => {
                    has_mllp = true;
                    mllp.get_or_create(&[("state", *state)]).set(count(*messages));
                    if *state == "pending" {
                        oldest_pending.set(oldest_age_seconds.unwrap_or(0.0).max(0.0));
                    }
                }
                Reading::ExportJobs { state, jobs } => {
                    has_export = true;
                    export.get_or_create(&[("state", *state)]).set(count(*jobs));
                }
            }
        }
    }
    let mut registry = Registry::default();
    registry.register(
        "ehr_metrics_probe_success",
        "Whether the probe answered within the scrape's time limit (1) or failed or timed out (0); a failed probe's gauges are absent",
        success,
    );
    if has_pool {
        registry.register("ehr_db_pool_connections", "Open database connections of the pool, in use or idle", pool);
        registry.register("ehr_db_pool_max_connections", "The pool's maximum number of connections", pool_max);
    }
    if has_outbox {
        registry.register(
            "ehr_outbox_unpublished_events",
            "Events in the outbox (every tenant) that the relay has not published yet",
            unpublished,
        );
        registry.register_with_unit(
            "ehr_outbox_oldest_unpublished_age",
            "Age of the oldest unpublished outbox event (0 when there is none)",
            Unit::Seconds,
            oldest_event,
        );
    }
    if has_mllp {
        registry.register(
            "ehr_mllp_queue_messages",
            "Outbound HL7 v2 messages (every tenant) waiting to be delivered (pending) or given up on (dead, rejected)",
            mllp,
        );
        registry.register_with_unit(
            "ehr_mllp_queue_oldest_pending_age",
            "Age of the oldest pending outbound HL7 v2 message (0 when there is none)",
            Unit::Seconds,
            oldest_pending,
        );
    }
    if has_export {
        registry.register(
            "ehr_export_jobs",
            "Bulk Data export jobs (every tenant) by state: queued, running, completed, failed, cancelled",
            export,
        );
    }
    registry
}

fn count(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// The exposition format of a scrape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Prometheus text format 0.0.4 (the default).
    Prometheus,
    /// OpenMetrics 1.0 text format.
    OpenMetrics,
}

impl Format {
    /// OpenMetrics when the `Accept` header names it with a non-zero quality (`q=0` means
    /// "not acceptable"), else the Prometheus text format.
    pub fn negotiate(accept: Option<&str>) -> Self {
        let Some(accept) = accept else { return Self::Prometheus };
        let wanted = accept.split(',').any(|range| {
            let mut params = range.split(';').map(str::trim);
            let media = params.next().unwrap_or("");
            media.eq_ignore_ascii_case("application/openmetrics-text")
                && !params.any(|p| {
                    p.split_once('=').is_some_and(|(k, v)| {
                        k.trim().eq_ignore_ascii_case("q") && v.trim().parse::<f32>().is_ok_and(|q| q <= 0.0)
                    })
                })
        });
        if wanted { Self::OpenMetrics } else { Self::Prometheus }
    }

    /// The response's `Content-Type`.
    pub fn content_type(self) -> &'static str {
        match self {
            Self::Prometheus => PROMETHEUS_CONTENT_TYPE,
            Self::OpenMetrics => OPENMETRICS_CONTENT_TYPE,
        }
    }
}

/// `GET /metrics`: the exposition of `metrics`, for a listener of its own.
pub fn router(metrics: Metrics) -> Router {
    Router::new().route("/metrics", get(scrape)).with_state(metrics)
}

async fn scrape(State(metrics): State<Metrics>, headers: HeaderMap) -> axum::response::Response {
    let format = Format::negotiate(headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()));
    match metrics.render(format).await {
        Ok(text) => ([(header::CONTENT_TYPE, HeaderValue::from_static(format.content_type()))], text).into_response(),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

/// The `method` label: the standard methods by name, anything else `other`.
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::CONNECT => "CONNECT",
        Method::TRACE => "TRACE",
        _ => "other",
    }
}

/// A layer counting and timing the requests of a router as `service`
/// (`ehr_http_requests_total`, `ehr_http_request_duration_seconds`). Apply it with
/// `Router::layer`, which runs it after routing, so that the matched route is known.
pub fn layer(metrics: &Metrics, service: &'static str) -> MetricsLayer {
    MetricsLayer { metrics: metrics.clone(), service }
}

/// See [`layer`].
#[derive(Clone, Debug)]
pub struct MetricsLayer {
    metrics: Metrics,
    service: &'static str,
}

impl<S> tower::Layer<S> for MetricsLayer {
    type Service = MetricsService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        MetricsService { inner, metrics: self.metrics.clone(), service: self.service }
    }
}

/// See [`layer`].
#[derive(Clone, Debug)]
pub struct MetricsService<S> {
    inner: S,
    metrics: Metrics,
    service: &'static str,
}

impl<S, B, R> tower::Service<Request<B>> for MetricsService<S>
where
    S: tower::Service<Request<B>, Response = Response<R>>,
    S::Future: Send + 'static,
{
    type Response = Response<R>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Response<R>, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let method = method_label(req.method());
        // The template, not the path: `/fhir/{ty}/{id}`, never `/fhir/Patient/123`.
        let route = req.extensions().get::<MatchedPath>().map(|p| p.as_str().to_owned());
        let mut pending = Pending {
            metrics: self.metrics.clone(),
            service: self.service,
            method,
            route,
            started: Instant::now(),
            done: false,
        };
        let response = self.inner.call(req);
        Box::pin(async move {
            // Dropped before the response (a client gone, a panic): `pending` records the
            // request as `cancelled`.
            let response = response.await;
            if let Ok(response) = &response {
                pending.finish(StatusLabel::Code(response.status().as_u16()));
            } else {
                pending.finish(StatusLabel::Cancelled);
            }
            response
        })
    }
}

/// A request on its way: recorded once, with its status when it is answered, else as
/// `cancelled` when dropped.
struct Pending {
    metrics: Metrics,
    service: &'static str,
    method: &'static str,
    route: Option<String>,
    started: Instant,
    done: bool,
}

impl Pending {
    fn finish(&mut self, status: StatusLabel) {
        if !std::mem::replace(&mut self.done, true) {
            let route = self.route.as_deref().unwrap_or(UNMATCHED);
            self.metrics.record_as(self.service, self.method, route, status, self.started.elapsed());
        }
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        self.finish(StatusLabel::Cancelled);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use tower::ServiceExt;

    fn probed(readings: Vec<Reading>) -> Vec<(&'static str, Option<Vec<Reading>>)> {
        vec![("stores", Some(readings)), ("slow", None)]
    }

    #[test]
    fn requests_render_as_counters_and_histograms_in_prometheus_text() {
        let m = Metrics::new();
        m.record("patient-record", "GET", "/fhir/{ty}/{id}", 200, Duration::from_millis(3));
        m.record("patient-record", "GET", "/fhir/{ty}/{id}", 200, Duration::from_millis(40));
        m.record("patient-record", "GET", "/fhir/{ty}/{id}", 404, Duration::from_millis(2));
        let text = m.encode(&[], Format::Prometheus).unwrap();
        assert!(text.contains("# TYPE ehr_http_requests_total counter\n"), "{text}");
        assert!(
            text.contains(
                "ehr_http_requests_total{service=\"patient-record\",method=\"GET\",route=\"/fhir/{ty}/{id}\",status=\"200\"} 2\n"
            ),
            "{text}"
        );
        assert!(text.contains("status=\"404\"} 1\n"), "{text}");
        assert!(text.contains("# TYPE ehr_http_request_duration_seconds histogram\n"), "{text}");
        let labels = "service=\"patient-record\",method=\"GET\",route=\"/fhir/{ty}/{id}\"";
        assert!(text.contains(&format!("ehr_http_request_duration_seconds_count{{{labels}}} 3\n")), "{text}");
        // 2 ms and 3 ms are within 5 ms; 40 ms is not.
        assert!(
            text.contains(&format!("ehr_http_request_duration_seconds_bucket{{{labels},le=\"0.005\"}} 2\n")),
            "{text}"
        );
        assert!(
            text.contains(&format!("ehr_http_request_duration_seconds_bucket{{{labels},le=\"30\"}} 3\n")),
            "{text}"
        );
        assert!(
            text.contains(&format!("ehr_http_request_duration_seconds_bucket{{{labels},le=\"+Inf\"}} 3\n")),
            "{text}"
        );
        assert!(text.contains(&format!("ehr_build_info{{version=\"{}\"}} 1\n", env!("CARGO_PKG_VERSION"))), "{text}");
        assert!(!text.contains("# EOF"), "the Prometheus text format has no EOF marker");
    }

    #[test]
    fn gauges_appear_only_when_read_and_failed_probes_say_so() {
        let m = Metrics::new();
        let text = m
            .encode(
                &probed(vec![
                    Reading::DbPool { pool: "main", in_use: 2, idle: 3, max: 16 },
                    Reading::Outbox { unpublished: 4, oldest_age_seconds: 12.5 },
                    Reading::MllpQueue { state: "pending", messages: 1, oldest_age_seconds: Some(30.0) },
                    Reading::MllpQueue { state: "dead", messages: 0, oldest_age_seconds: None },
                ]),
                Format::Prometheus,
            )
            .unwrap();
        for line in [
            "ehr_db_pool_connections{pool=\"main\",state=\"in_use\"} 2\n",
            "ehr_db_pool_connections{pool=\"main\",state=\"idle\"} 3\n",
            "ehr_db_pool_max_connections{pool=\"main\"} 16\n",
            "ehr_outbox_unpublished_events 4\n",
            "ehr_outbox_oldest_unpublished_age_seconds 12.5\n",
            "ehr_mllp_queue_messages{state=\"pending\"} 1\n",
            "ehr_mllp_queue_messages{state=\"dead\"} 0\n",
            "ehr_mllp_queue_oldest_pending_age_seconds 30.0\n",
            "ehr_metrics_probe_success{probe=\"stores\"} 1\n",
            "ehr_metrics_probe_success{probe=\"slow\"} 0\n",
            "# TYPE ehr_outbox_unpublished_events gauge\n",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
        assert!(!text.contains("ehr_export_jobs"), "no probe read export jobs:\n{text}");
    }

    #[test]
    fn openmetrics_is_served_when_asked_for() {
        assert_eq!(Format::negotiate(None), Format::Prometheus);
        assert_eq!(Format::negotiate(Some("text/plain;version=0.0.4;q=0.3,*/*;q=0.2")), Format::Prometheus);
        let accept = "application/openmetrics-text;version=1.0.0;q=0.5,text/plain;version=0.0.4;q=0.3";
        assert_eq!(Format::negotiate(Some(accept)), Format::OpenMetrics);
        for refused in ["application/openmetrics-text;q=0,text/plain", "Application/OpenMetrics-Text; q=0.0"] {
            assert_eq!(Format::negotiate(Some(refused)), Format::Prometheus, "{refused}");
        }
        assert_eq!(Format::negotiate(Some("text/plain;x=application/openmetrics-text")), Format::Prometheus);
        let m = Metrics::new();
        m.record("data-export", "GET", "/fhir/$export", 202, Duration::from_millis(5));
        let text =
            m.encode(&probed(vec![Reading::ExportJobs { state: "running", jobs: 1 }]), Format::OpenMetrics).unwrap();
        assert!(text.ends_with("# EOF\n"), "{text}");
        assert_eq!(text.matches("# EOF").count(), 1, "{text}");
        assert!(text.contains("ehr_export_jobs{state=\"running\"} 1\n"), "{text}");
        assert!(text.contains("# UNIT ehr_http_request_duration_seconds seconds\n"), "{text}");
    }

    #[test]
    fn process_wide_counters_are_in_every_registry() {
        event_consumed("lab-interface", "order.placed", EventOutcome::Applied);
        export_resources_written(7);
        for m in [Metrics::new(), Metrics::new()] {
            let text = m.encode(&[], Format::Prometheus).unwrap();
            assert!(
                text.contains(
                    "ehr_events_consumed_total{group=\"lab-interface\",topic=\"order.placed\",outcome=\"applied\"} "
                ),
                "{text}"
            );
            assert!(text.contains("ehr_export_resources_written_total "), "{text}");
        }
    }

    #[tokio::test]
    async fn the_layer_labels_by_route_template_and_unknown_methods_as_other() {
        let m = Metrics::new();
        let app = Router::new()
            .route("/fhir/{ty}/{id}", get(|| async { "ok" }))
            .fallback(|| async { StatusCode::NOT_FOUND })
            .layer(layer(&m, "svc"));
        for (method, uri) in [
            ("GET", "/fhir/Patient/p-secret-1?name=Yamada"),
            ("GET", "/nowhere/p-secret-2"),
            ("BREW", "/fhir/Patient/x"),
        ] {
            let req = Request::builder().method(method).uri(uri).body(Body::empty()).unwrap();
            app.clone().oneshot(req).await.unwrap();
        }
        let text = m.encode(&[], Format::Prometheus).unwrap();
        assert!(
            text.contains("{service=\"svc\",method=\"GET\",route=\"/fhir/{ty}/{id}\",status=\"200\"} 1\n"),
            "{text}"
        );
        assert!(text.contains("{service=\"svc\",method=\"GET\",route=\"unmatched\",status=\"404\"} 1\n"), "{text}");
        assert!(text.contains("method=\"other\",route=\"/fhir/{ty}/{id}\""), "{text}");
        for leak in ["p-secret", "Yamada", "BREW"] {
            assert!(!text.contains(leak), "{leak} in\n{text}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_probe_times_out_without_holding_up_the_others() {
        let started = tokio::time::Instant::now();
        let m = Metrics::new();
        m.add_probe("fast", || Box::pin(async { Some(vec![Reading::ExportJobs { state: "queued", jobs: 2 }]) }));
        m.add_probe("stuck", || {
            Box::pin(async {
                tokio::time::sleep(Duration::from_secs(3600)).await;
                Some(Vec::new())
            })
        });
        m.add_probe("broken", || Box::pin(async { None }));
        let probed = m.probe().await;
        assert_eq!(
            probed.iter().map(|(n, r)| (*n, r.is_some())).collect::<Vec<_>>(),
            [("fast", true), ("stuck", false), ("broken", false)]
        );
        let text = m.encode(&probed, Format::Prometheus).unwrap();
        assert!(text.contains("ehr_export_jobs{state=\"queued\"} 2\n"), "{text}");
        assert!(text.contains("ehr_metrics_probe_success{probe=\"stuck\"} 0\n"), "{text}");
        assert!(started.elapsed() < PROBE_TIMEOUT + Duration::from_secs(1), "the scrape waited for the stuck probe");
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_scrapes_share_one_reading_which_is_reused_for_a_while() {
        let runs = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let m = Metrics::with_probe_cache(Duration::from_secs(10));
        let counted = runs.clone();
        m.add_probe("db", move || {
            let counted = counted.clone();
            Box::pin(async move {
                tokio::time::sleep(Duration::from_millis(500)).await;
                let n = counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
                Some(vec![Reading::ExportJobs { state: "queued", jobs: n }])
            })
        });
        let (a, b, c) = tokio::join!(m.probe(), m.probe(), m.probe());
        assert_eq!(runs.load(std::sync::atomic::Ordering::SeqCst), 1, "one run for concurrent scrapes");
        assert!(a == b && b == c);
        tokio::time::advance(Duration::from_secs(5)).await;
        m.probe().await;
        assert_eq!(runs.load(std::sync::atomic::Ordering::SeqCst), 1, "reused within the cache time");
        tokio::time::advance(Duration::from_secs(6)).await;
        let fresh = m.probe().await;
        assert_eq!(runs.load(std::sync::atomic::Ordering::SeqCst), 2);
        assert_eq!(fresh[0].1, Some(vec![Reading::ExportJobs { state: "queued", jobs: 2 }]));
    }

    #[tokio::test]
    async fn a_request_dropped_before_its_response_counts_as_cancelled() {
        let m = Metrics::new();
        let app = Router::new()
            .route(
                "/slow/{id}",
                get(|| async {
                    tokio::time::sleep(Duration::from_secs(3600)).await;
                    "late"
                }),
            )
            .layer(layer(&m, "svc"));
        let req = Request::get("/slow/p-1").body(Body::empty()).unwrap();
        let abandoned = tokio::time::timeout(Duration::from_millis(50), app.oneshot(req)).await;
        assert!(abandoned.is_err());
        let text = m.encode(&[], Format::Prometheus).unwrap();
        assert!(
            text.contains(
                "ehr_http_requests_total{service=\"svc\",method=\"GET\",route=\"/slow/{id}\",status=\"cancelled\"} 1\n"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "ehr_http_request_duration_seconds_count{service=\"svc\",method=\"GET\",route=\"/slow/{id}\"} 1\n"
            ),
            "{text}"
        );
    }

    #[tokio::test]
    async fn the_router_serves_the_negotiated_format() {
        let app = router(Metrics::new());
        let resp = app.clone().oneshot(Request::get("/metrics").body(Body::empty()).unwrap()).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(resp.headers()[header::CONTENT_TYPE], PROMETHEUS_CONTENT_TYPE);
        let req =
            Request::get("/metrics").header("accept", "application/openmetrics-text").body(Body::empty()).unwrap();
        let resp = app.oneshot(req).await.unwrap();
        assert_eq!(resp.headers()[header::CONTENT_TYPE], OPENMETRICS_CONTENT_TYPE);
    }
}
