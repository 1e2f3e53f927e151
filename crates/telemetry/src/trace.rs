//! Tracing: the process's subscriber (logs + OpenTelemetry), W3C trace context in and out.
//!
//! [`init`] installs one subscriber for the process: the log lines (text or JSON on stderr,
//! filtered by `log.level`) and — when an OTLP endpoint is configured — an OpenTelemetry layer
//! that turns `tracing` spans into OTLP/HTTP (protobuf) exports to `<endpoint>/v1/traces`,
//! batched on a thread of its own. Without an endpoint nothing is exported and the helpers below
//! do nothing (no span has an OpenTelemetry context, so none is propagated either).
//!
//! Context crosses processes as a W3C `traceparent` (`00-<trace id>-<span id>-<flags>`):
//! [`inject`] / [`extract`] for HTTP headers, [`current_traceparent`] / [`set_parent`] for the
//! places that store it (the outbox's `trace` column, the Redis stream field, the HL7 message
//! log).
//!
//! No PHI in spans: their fields are ids (request, tenant, resource, event, message control
//! id), routes, topics and groups — never names, birth dates, identifiers, query strings or
//! payloads. Log events are not exported (they may hold error texts of the database driver
//! or Redis, or formatted data): they stay in the log lines.

use crate::{TelemetryError, TelemetrySettings};
use axum::http::{HeaderMap, HeaderValue};
use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{BatchSpanProcessor, Sampler, SdkTracerProvider};
use std::time::Duration;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::filter::{EnvFilter, FilterExt, filter_fn};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{Layer, Registry};

/// The W3C header carrying the trace context.
pub const TRACEPARENT: &str = "traceparent";

/// Longest wait for one export (connection, request and answer); the exporter's retries stay
/// within it too.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

/// Longest wait at shutdown for the last spans to leave.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

/// Largest collector answer read (an `ExportTraceServiceResponse` is a few bytes).
const MAX_ANSWER_BYTES: u64 = 64 * 1024;

/// Spans that give log lines their context but are not exported: those that live as long as a
/// worker loop (the outbox relay, an event consumer) — a span ends (and is sent) only when its
/// loop does, at shutdown, and one trace would gather hours of unrelated work; the work items
/// inside them (`event.publish`, `event.consume`, `hl7.send`) are spans of their own — and the
/// health probes (`probe`), which load balancers and the gateway send every few hundred
/// milliseconds: a root trace each would drown the requests.
const LOG_ONLY_SPANS: &[&str] = &["outbox_relay", "event_consumer", "probe"];

/// The routes of the health probes (`ehr_http::health_router`): their spans are `probe`.
const PROBE_ROUTES: &[&str] = &["/livez", "/readyz"];

/// The exporting side of the subscriber; [`TraceGuard::shutdown`] sends what is still queued.
#[must_use = "dropping the guard shuts the exporter down: keep it until the process ends"]
pub struct TraceGuard {
    provider: Option<SdkTracerProvider>,
}

impl TraceGuard {
    /// Whether spans are exported (an OTLP endpoint is configured).
    pub fn exporting(&self) -> bool {
        self.provider.is_some()
    }

    /// Exports the spans still queued and stops the exporter, within a bounded time (a
    /// collector that does not answer loses them, and the process still ends). Blocking: call it
    /// outside the async runtime (or on its blocking pool).
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        if let Some(provider) = self.provider.take() {
            match provider.shutdown_with_timeout(SHUTDOWN_TIMEOUT) {
                Ok(()) => tracing::info!("traces flushed"),
                Err(e) => tracing::warn!(error = %e, "traces not flushed: the last spans are lost"),
            }
        }
    }
}

impl Drop for TraceGuard {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Installs the process's subscriber: log lines (`log_format` `json` or text, on stderr,
/// `log_level` as an `EnvFilter` directive, `info` if it does not parse) and, when
/// `settings.otlp_endpoint` (else `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` as is, else
/// `OTEL_EXPORTER_OTLP_ENDPOINT` + `/v1/traces`) is set, the OpenTelemetry layer exporting
/// spans (never log events, see `exported`) at INFO and above, whatever `log_level` says, with
/// `service.name` = `settings.service_name`, else `OTEL_SERVICE_NAME`, else
/// `default_service_name`. Also makes W3C TraceContext the global propagator.
pub fn init(
    log_format: &str,
    log_level: &str,
    settings: &TelemetrySettings,
    default_service_name: &str,
) -> Result<TraceGuard, TelemetryError> {
    install(log_format, log_level, Some((settings, default_service_name)))
}

/// [`init`] without traces: the log lines only (the commands other than `serve`).
pub fn init_logs(log_format: &str, log_level: &str) -> Result<TraceGuard, TelemetryError> {
    install(log_format, log_level, None)
}

fn install(
    log_format: &str,
    log_level: &str,
    traces: Option<(&TelemetrySettings, &str)>,
) -> Result<TraceGuard, TelemetryError> {
    let filter = || EnvFilter::try_new(log_level).unwrap_or_else(|_| EnvFilter::new("info"));
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let mut layers: Vec<Box<dyn Layer<Registry> + Send + Sync>> = vec![if log_format == "json" {
        fmt.json().with_filter(filter()).boxed()
    } else {
        fmt.with_filter(filter()).boxed()
    }];
    let mut exporting = None;
    if let Some((settings, default_service_name)) = traces
        && let Some(endpoint) = traces_endpoint(settings)?
    {
        let service = service_name(settings, default_service_name);
        let provider = provider(&endpoint, &service, settings.sample_ratio)?;
        // INFO whatever `log.level` says: quieter logs must not cost the traces.
        let level = tracing_subscriber::filter::LevelFilter::INFO;
        layers.push(otel_layer(&provider).with_filter(level.and(filter_fn(exported))).boxed());
        exporting = Some((provider, endpoint, service, settings.sample_ratio));
    }
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    tracing_subscriber::registry()
        .with(layers)
        .try_init()
        .map_err(|e| TelemetryError::Setup(format!("cannot install the tracing subscriber: {e}")))?;
    Ok(TraceGuard {
        provider: exporting.map(|(provider, endpoint, service, ratio)| {
            let endpoint = redacted(&endpoint);
            tracing::info!(%endpoint, %service, ratio, "exporting traces (OTLP/HTTP)");
            provider
        }),
    })
}

/// Whether the OpenTelemetry layer takes a span or event: spans, except [`LOG_ONLY_SPANS`];
/// never a log event. Log lines carry what their call sites put there — a database driver's or
/// Redis's error text (`error = %e`), a formatted message — which must not leave the cluster
/// with the traces: they stay in the logs, and spans carry only the fields their call sites
/// declare (ids, routes, topics, statuses).
fn exported(meta: &tracing::Metadata<'_>) -> bool {
    meta.is_span() && !LOG_ONLY_SPANS.contains(&meta.name())
}

/// The OpenTelemetry layer over `provider`'s tracer.
fn otel_layer(provider: &SdkTracerProvider) -> impl Layer<Registry> + Send + Sync + use<> {
    // Thread ids and names say nothing to whoever reads a trace of a request, and source
    // locations would be most of what is sent: the span names are few. No error text becomes
    // an exception event or a status description (events are not exported at all, see
    // `exported`, and a span field holding an error is not copied either): a failed span says
    // so by `otel.status_code = "error"` alone ([`mark_error`]).
    tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("ehr"))
        .with_threads(false)
        .with_location(false)
        .with_error_fields_to_exceptions(false)
        .with_error_events_to_status(false)
        .with_error_events_to_exceptions(false)
        .with_error_records_to_exceptions(false)
}

/// Where spans go (`…/v1/traces`), if anywhere.
fn traces_endpoint(settings: &TelemetrySettings) -> Result<Option<String>, TelemetryError> {
    let env = |name: &str| std::env::var(name).ok().map(|v| v.trim().to_owned()).filter(|v| !v.is_empty());
    if env("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
        return Ok(None);
    }
    let endpoint = match settings.otlp_endpoint.as_deref().map(str::trim).filter(|e| !e.is_empty()) {
        Some(base) => format!("{}/v1/traces", base.trim_end_matches('/')),
        None => match env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") {
            Some(full) => full,
            None => match env("OTEL_EXPORTER_OTLP_ENDPOINT") {
                Some(base) => format!("{}/v1/traces", base.trim_end_matches('/')),
                None => return Ok(None),
            },
        },
    };
    let uri: axum::http::Uri =
        endpoint.parse().map_err(|_| TelemetryError::Setup(format!("OTLP endpoint {endpoint}: not a URL")))?;
    match uri.scheme_str() {
        // https: TLS 1.2+ with the WebPKI roots (rustls).
        Some("http" | "https") if uri.host().is_some() => Ok(Some(endpoint)),
        _ => Err(TelemetryError::Setup(format!("OTLP endpoint {endpoint}: expected http(s)://host:port"))),
    }
}

/// `endpoint` as it may be logged: scheme, host, port and path — no user info or query string,
/// where credentials may be.
fn redacted(endpoint: &str) -> String {
    match endpoint.parse::<axum::http::Uri>() {
        Ok(uri) => format!(
            "{}://{}{}{}",
            uri.scheme_str().unwrap_or("?"),
            uri.host().unwrap_or("?"),
            uri.port_u16().map(|p| format!(":{p}")).unwrap_or_default(),
            uri.path()
        ),
        Err(_) => "(invalid)".to_owned(),
    }
}

/// `service.name`: configured, else `OTEL_SERVICE_NAME`, else the default (`ehr-<target>`).
fn service_name(settings: &TelemetrySettings, default: &str) -> String {
    settings
        .service_name
        .clone()
        .filter(|s| !s.trim().is_empty())
        .or_else(|| std::env::var("OTEL_SERVICE_NAME").ok().filter(|s| !s.trim().is_empty()))
        .unwrap_or_else(|| default.to_owned())
}

/// The tracer provider exporting to `endpoint` in batches, sampling root traces at `ratio`
/// (a parent's decision is followed: a request carrying a sampled `traceparent` is sampled).
fn provider(endpoint: &str, service: &str, ratio: f64) -> Result<SdkTracerProvider, TelemetryError> {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_http_client(BlockingHttp::new()?)
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(endpoint)
        .with_timeout(EXPORT_TIMEOUT)
        .build()
        .map_err(|e| TelemetryError::Setup(format!("OTLP exporter: {e}")))?;
    let ratio = if ratio.is_finite() { ratio.clamp(0.0, 1.0) } else { 1.0 };
    let resource = Resource::builder_empty()
        .with_service_name(service.to_owned())
        .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
        .build();
    Ok(SdkTracerProvider::builder()
        // Queue size, delay and batch size follow OTEL_BSP_* when set.
        .with_span_processor(BatchSpanProcessor::builder(exporter).build())
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(ratio))))
        .with_resource(resource)
        .build())
}

/// The exporter's HTTP client: the workspace's reqwest, blocking. The batch processor exports
/// from a thread of its own, outside any async runtime, so a blocking client is what runs there
/// (an async one would need a runtime that thread does not have).
#[derive(Debug)]
struct BlockingHttp(reqwest::blocking::Client);

impl BlockingHttp {
    fn new() -> Result<Self, TelemetryError> {
        // Built on a thread of its own: the blocking client starts a runtime, which may not
        // happen inside another (`init` may be called from async code, in tests).
        std::thread::spawn(|| reqwest::blocking::Client::builder().timeout(EXPORT_TIMEOUT).build())
            .join()
            .map_err(|_| TelemetryError::Setup("the OTLP HTTP client could not be built".into()))?
            .map(Self)
            .map_err(|e| TelemetryError::Setup(format!("the OTLP HTTP client could not be built: {e}")))
    }
}

#[async_trait::async_trait]
impl opentelemetry_http::HttpClient for BlockingHttp {
    async fn send_bytes(
        &self,
        request: opentelemetry_http::Request<opentelemetry_http::Bytes>,
    ) -> Result<opentelemetry_http::Response<opentelemetry_http::Bytes>, opentelemetry_http::HttpError> {
        use std::io::Read;
        let (parts, body) = request.into_parts();
        let mut resp =
            self.0.request(parts.method, parts.uri.to_string()).headers(parts.headers).body(Vec::from(body)).send()?;
        let mut answer = Vec::new();
        resp.by_ref().take(MAX_ANSWER_BYTES).read_to_end(&mut answer)?;
        let mut out = opentelemetry_http::Response::new(opentelemetry_http::Bytes::from(answer));
        *out.status_mut() = resp.status();
        *out.headers_mut() = resp.headers().clone();
        Ok(out)
    }
}

/// Whose `traceparent` a request span continues (see [`request_span`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Incoming {
    /// A service behind the gateway: the request's `traceparent` (the gateway's span) is the
    /// parent.
    Parent,
    /// The public edge: a new root span (sampled at the configured ratio), with the client's
    /// `traceparent`, when valid, as a link only — a client decides neither sampling nor the
    /// trace id.
    Link,
}

/// Longest request id put into a span (`x-request-id` comes from the client).
const MAX_REQUEST_ID: usize = 64;

/// The request id as a span may hold it: up to [`MAX_REQUEST_ID`] characters of
/// `[A-Za-z0-9._:-]` (a UUID, or what a proxy in front set); anything else is replaced by
/// `invalid`, so a client cannot put text of its choice into the traces.
pub fn span_request_id(id: &str) -> &str {
    let ok = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':');
    if id.len() <= MAX_REQUEST_ID && id.chars().all(ok) { id } else { "invalid" }
}

/// The span of one HTTP request: method, **matched route** (never the URI: query strings carry
/// names, birth dates and identifiers), request id (see [`span_request_id`]), and the tenant
/// once the token names it (`ehr_http::Caller` records it). With [`Incoming::Parent`] its
/// parent is the request's `traceparent`, when valid (the gateway's span, for a service); with
/// [`Incoming::Link`] it is a root span linked to the client's `traceparent`.
pub fn request_span(
    method: &axum::http::Method,
    route: &str,
    request_id: &str,
    headers: &HeaderMap,
    incoming: Incoming,
) -> tracing::Span {
    let request_id = span_request_id(request_id);
    if PROBE_ROUTES.contains(&route) {
        return tracing::info_span!("probe", method = %method, route, request_id);
    }
    let span = tracing::info_span!(
        "request",
        otel.name = %format_args!("{method} {route}"),
        otel.kind = "server",
        otel.status_code = tracing::field::Empty,
        method = %method,
        route,
        request_id,
        tenant = tracing::field::Empty,
    );
    match incoming {
        Incoming::Parent => set_parent(&span, extract(headers)),
        Incoming::Link => add_link(&span, extract(headers)),
    }
    span
}

/// Marks the OpenTelemetry status of `span` as an error (a 5xx answer, a failed handler). No
/// description: error texts stay in the logs.
pub fn mark_error(span: &tracing::Span) {
    span.record("otel.status_code", "error");
}

/// The W3C `traceparent` of the current span, when it has a valid OpenTelemetry context (an
/// exporter is configured); what emitters store with the events and messages they cause.
pub fn current_traceparent() -> Option<String> {
    traceparent_of(&tracing::Span::current())
}

/// The W3C `traceparent` naming `span` as parent, when it has a valid OpenTelemetry context.
pub fn traceparent_of(span: &tracing::Span) -> Option<String> {
    format_traceparent(&span.context())
}

fn format_traceparent(cx: &Context) -> Option<String> {
    let span = cx.span();
    let sc = span.span_context();
    sc.is_valid().then(|| {
        let flags = sc.trace_flags() & opentelemetry::trace::TraceFlags::SAMPLED;
        format!("00-{}-{}-{:02x}", sc.trace_id(), sc.span_id(), flags.to_u8())
    })
}

/// Makes the span `traceparent` names the parent of `span` (which must not have been entered
/// yet). Nothing happens without a valid `traceparent`, or without an exporter.
pub fn set_parent(span: &tracing::Span, traceparent: Option<&str>) {
    if let Some(cx) = traceparent.and_then(parse) {
        // Fails only without the OpenTelemetry layer or for a span already started: either
        // way there is no parent to set.
        let _ = span.set_parent(cx);
    }
}

/// Adds a link from `span` to the span `traceparent` names (a related trace that is not the
/// parent: the order a lab result answers).
pub fn add_link(span: &tracing::Span, traceparent: Option<&str>) {
    if let Some(cx) = traceparent.and_then(parse) {
        span.add_link(cx.span().span_context().clone());
    }
}

/// The valid `traceparent` of `headers`, if any (an invalid one is ignored, as W3C asks).
pub fn extract(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(TRACEPARENT)?.to_str().ok()?;
    parse(value).map(|_| value)
}

/// Sets `traceparent` in `headers` to the current span's context, so that the callee's span
/// becomes its child. Without a valid context (no exporter) the headers are left as they are.
pub fn inject(headers: &mut HeaderMap) {
    if let Some(value) = current_traceparent().and_then(|v| HeaderValue::from_str(&v).ok()) {
        headers.insert(TRACEPARENT, value);
    }
}

/// The remote context a W3C `traceparent` value names, if it is valid.
fn parse(traceparent: &str) -> Option<Context> {
    struct One<'a>(&'a str);
    impl Extractor for One<'_> {
        fn get(&self, key: &str) -> Option<&str> {
            (key == TRACEPARENT).then_some(self.0)
        }
        fn keys(&self) -> Vec<&str> {
            vec![TRACEPARENT]
        }
    }
    let cx = TraceContextPropagator::new().extract(&One(traceparent));
    cx.span().span_context().is_valid().then_some(cx)
}

#[cfg(test)]
mod tests;
