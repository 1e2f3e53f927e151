use super::*;
use opentelemetry::trace::{SpanId, TraceId};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{SimpleSpanProcessor, SpanData, SpanExporter};
use std::io::{BufRead, BufReader, Read, Write};
use std::sync::{Arc, Mutex};

const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

/// Collects finished spans in memory.
#[derive(Debug, Clone, Default)]
struct Collect(Arc<Mutex<Vec<SpanData>>>);

impl SpanExporter for Collect {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        self.0.lock().unwrap().extend(batch);
        Ok(())
    }
}

impl Collect {
    fn named(&self, name: &str) -> SpanData {
        let spans = self.0.lock().unwrap();
        spans.iter().find(|s| s.name == name).cloned().unwrap_or_else(|| panic!("no span {name} in {spans:?}"))
    }
}

/// Runs `f` under a subscriber exporting (synchronously) to the returned collector, with the
/// same layer and filter as `init`.
fn traced(f: impl FnOnce()) -> Collect {
    let spans = Collect::default();
    let provider = SdkTracerProvider::builder()
        .with_span_processor(SimpleSpanProcessor::new(spans.clone()))
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::AlwaysOn)))
        .build();
    let subscriber = tracing_subscriber::registry().with(otel_layer(&provider).with_filter(filter_fn(exported)));
    tracing::subscriber::with_default(subscriber, f);
    provider.shutdown().unwrap();
    spans
}

#[test]
fn a_stored_traceparent_parents_a_span_and_the_current_context_is_handed_on() {
    let mut handed_on = None;
    let spans = traced(|| {
        let span = tracing::info_span!(parent: None, "event.consume", event.id = "e1");
        set_parent(&span, Some(PARENT));
        span.in_scope(|| handed_on = current_traceparent());
    });
    let consume = spans.named("event.consume");
    assert_eq!(consume.span_context.trace_id(), TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap());
    assert_eq!(consume.parent_span_id, SpanId::from_hex("00f067aa0ba902b7").unwrap());
    assert!(consume.parent_span_is_remote);
    // What an emitter stores names this span: same trace, its span id, sampled.
    let expected = format!("00-4bf92f3577b34da6a3ce929d0e0e4736-{}-01", consume.span_context.span_id());
    assert_eq!(handed_on.as_deref(), Some(expected.as_str()));
}

#[test]
fn headers_carry_the_context_out_and_in() {
    let mut out = HeaderMap::new();
    let spans = traced(|| {
        let mut incoming = HeaderMap::new();
        incoming.insert(TRACEPARENT, HeaderValue::from_static(PARENT));
        let span = request_span(&axum::http::Method::POST, "/fhir/{*path}", "r-1", &incoming, Incoming::Parent);
        // A client's traceparent is replaced by ours, not passed through.
        out.insert(TRACEPARENT, HeaderValue::from_static(PARENT));
        span.in_scope(|| inject(&mut out));
        // Probes are logged, not traced.
        request_span(&axum::http::Method::GET, "/readyz", "r-2", &incoming, Incoming::Parent).in_scope(|| {});
    });
    assert_eq!(spans.0.lock().unwrap().len(), 1, "the probe is not exported");
    let request = spans.named("POST /fhir/{*path}");
    assert_eq!(request.span_kind, opentelemetry::trace::SpanKind::Server);
    assert_eq!(request.parent_span_id, SpanId::from_hex("00f067aa0ba902b7").unwrap());
    let attribute = |key: &str| request.attributes.iter().find(|a| a.key.as_str() == key).map(|a| a.value.to_string());
    assert_eq!(attribute("route").as_deref(), Some("/fhir/{*path}"));
    assert_eq!(attribute("request_id").as_deref(), Some("r-1"));
    let sent = out.get(TRACEPARENT).unwrap().to_str().unwrap();
    assert_eq!(sent, format!("00-4bf92f3577b34da6a3ce929d0e0e4736-{}-01", request.span_context.span_id()));
}

#[test]
fn at_the_edge_a_client_context_is_a_link_of_a_new_root() {
    let mut out = HeaderMap::new();
    let spans = traced(|| {
        let mut incoming = HeaderMap::new();
        // Unsampled: the client asks for the request to be hidden; it is not.
        incoming
            .insert(TRACEPARENT, HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"));
        let long = "x".repeat(65);
        for id in ["<script>", "a b", long.as_str()] {
            request_span(&axum::http::Method::GET, "/fhir/{*path}", id, &incoming, Incoming::Link).in_scope(|| {});
        }
        let span = request_span(&axum::http::Method::POST, "/fhir/{*path}", "r-1", &incoming, Incoming::Link);
        span.in_scope(|| inject(&mut out));
    });
    let request = spans.named("POST /fhir/{*path}");
    assert_eq!(request.parent_span_id, SpanId::INVALID, "a root span");
    assert_ne!(request.span_context.trace_id(), TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap());
    assert!(request.span_context.is_sampled());
    let linked: Vec<_> = request.links.iter().map(|l| (l.span_context.trace_id(), l.span_context.span_id())).collect();
    assert_eq!(
        linked,
        [(
            TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap(),
            SpanId::from_hex("00f067aa0ba902b7").unwrap()
        )]
    );
    // The service behind the edge continues our trace, not the client's.
    let sent = out.get(TRACEPARENT).unwrap().to_str().unwrap();
    assert_eq!(sent, format!("00-{}-{}-01", request.span_context.trace_id(), request.span_context.span_id()));
    // Request ids a client chose are put into spans only when short and plain.
    let all = spans.0.lock().unwrap().clone();
    let ids: Vec<String> = all
        .iter()
        .filter(|s| s.name == "GET /fhir/{*path}")
        .filter_map(|s| s.attributes.iter().find(|a| a.key.as_str() == "request_id").map(|a| a.value.to_string()))
        .collect();
    assert_eq!(ids, ["invalid", "invalid", "invalid"]);
    assert_eq!(span_request_id("0b9c6a7e-1f2d-4c3b-9a8e-7d6c5b4a3f21"), "0b9c6a7e-1f2d-4c3b-9a8e-7d6c5b4a3f21");
}

#[test]
fn log_events_and_error_texts_do_not_leave_with_the_spans() {
    let spans = traced(|| {
        let span = tracing::info_span!("request", otel.status_code = tracing::field::Empty, tenant = "t1");
        span.in_scope(|| {
            let err = std::io::Error::other("relation \"patients\" violates ... 山田");
            tracing::error!(error = %err, "query failed for 山田");
            tracing::warn!(error = &err as &(dyn std::error::Error + 'static), "again");
            tracing::info!(patient = "山田", "plain");
        });
        mark_error(&span);
    });
    let request = spans.named("request");
    assert!(request.events.is_empty(), "{:?}", request.events);
    assert_eq!(request.status, opentelemetry::trace::Status::error(""));
    let text = format!("{request:?}");
    assert!(!text.contains("山田") && !text.contains("patients"), "{text}");
}

#[test]
fn invalid_or_absent_context_is_ignored() {
    let mut headers = HeaderMap::new();
    assert_eq!(extract(&headers), None);
    for bad in [
        "00-00000000000000000000000000000000-0000000000000000-01",
        "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
        "garbage",
    ] {
        headers.insert(TRACEPARENT, HeaderValue::from_static(bad));
        assert_eq!(extract(&headers), None, "{bad}");
    }
    // Without the OpenTelemetry layer there is no context: nothing is propagated, nothing fails.
    let span = tracing::info_span!("request");
    set_parent(&span, Some(PARENT));
    add_link(&span, Some(PARENT));
    assert_eq!(traceparent_of(&span), None);
    let mut out = HeaderMap::new();
    span.in_scope(|| inject(&mut out));
    assert!(out.is_empty());
}

#[test]
fn worker_loop_spans_are_not_exported_and_parent_nothing() {
    let spans = traced(|| {
        let worker = tracing::info_span!("event_consumer", group = "g");
        worker.in_scope(|| {
            let item = tracing::info_span!("work");
            item.in_scope(|| {});
        });
    });
    let all = spans.0.lock().unwrap().clone();
    assert_eq!(all.iter().map(|s| s.name.as_ref()).collect::<Vec<_>>(), ["work"]);
    assert_eq!(all[0].parent_span_id, SpanId::INVALID);
}

#[test]
fn links_name_a_related_trace() {
    let spans = traced(|| {
        let span = tracing::info_span!(parent: None, "hl7.receive");
        span.in_scope(|| add_link(&tracing::Span::current(), Some(PARENT)));
    });
    let receive = spans.named("hl7.receive");
    let linked: Vec<_> = receive.links.iter().map(|l| l.span_context.span_id()).collect();
    assert_eq!(linked, [SpanId::from_hex("00f067aa0ba902b7").unwrap()]);
}

#[test]
fn endpoints_resolve_to_v1_traces_over_http_or_https() {
    let with = |e: &str| TelemetrySettings { otlp_endpoint: Some(e.into()), ..TelemetrySettings::default() };
    assert_eq!(
        traces_endpoint(&with("http://collector:4318/")).unwrap().as_deref(),
        Some("http://collector:4318/v1/traces")
    );
    assert_eq!(
        traces_endpoint(&with("https://collector:4318")).unwrap().as_deref(),
        Some("https://collector:4318/v1/traces")
    );
    assert!(traces_endpoint(&with("collector:4318")).is_err());
    assert_eq!(service_name(&TelemetrySettings::default(), "ehr-orders"), "ehr-orders");
    let named = TelemetrySettings { service_name: Some("orders-a".into()), ..TelemetrySettings::default() };
    assert_eq!(service_name(&named, "ehr-orders"), "orders-a");
}

/// A one-shot OTLP/HTTP receiver on a thread: the bodies of `POST /v1/traces`.
fn receiver() -> (String, std::sync::mpsc::Receiver<(String, Vec<u8>)>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { return };
            let tx = tx.clone();
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut writer = stream;
                // Requests on a kept-alive connection, one after the other.
                loop {
                    let mut head = Vec::new();
                    loop {
                        let mut line = String::new();
                        if reader.read_line(&mut line).unwrap_or(0) == 0 {
                            return;
                        }
                        if line == "\r\n" {
                            break;
                        }
                        head.push(line.trim_end().to_owned());
                    }
                    let length = head
                        .iter()
                        .find_map(|h| {
                            h.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_owned())
                        })
                        .and_then(|v| v.parse::<usize>().ok())
                        .unwrap_or(0);
                    let mut body = vec![0; length];
                    reader.read_exact(&mut body).unwrap();
                    let _ = tx.send((head.join("\n"), body));
                    writer
                        .write_all(
                            b"HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n",
                        )
                        .unwrap();
                }
            });
        }
    });
    (format!("http://{addr}/v1/traces"), rx)
}

#[tokio::test]
async fn spans_leave_as_otlp_protobuf_from_the_batch_thread_and_shutdown_flushes_them() {
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use prost::Message;
    let (endpoint, bodies) = receiver();
    // Built inside a runtime, as `serve`'s tests may: the blocking client must not mind.
    let provider = provider(&endpoint, "ehr-test", 1.0).unwrap();
    let subscriber = tracing_subscriber::registry().with(otel_layer(&provider));
    tracing::subscriber::with_default(subscriber, || {
        let span = tracing::info_span!("request", otel.kind = "server", route = "/fhir/{*path}", tenant = "t1");
        span.in_scope(|| tracing::info!("inside"));
    });
    // The batch delay is seconds: only the shutdown sends the span now.
    let guard = TraceGuard { provider: Some(provider) };
    tokio::task::spawn_blocking(move || guard.shutdown()).await.unwrap();
    let (head, body) = bodies.recv_timeout(Duration::from_secs(5)).expect("an export");
    assert!(head.starts_with("POST /v1/traces "), "{head}");
    assert!(head.to_ascii_lowercase().contains("content-type: application/x-protobuf"), "{head}");
    let export = ExportTraceServiceRequest::decode(body.as_slice()).unwrap();
    let resource = export.resource_spans[0].resource.as_ref().unwrap();
    let service = resource.attributes.iter().find(|a| a.key == "service.name").unwrap();
    assert_eq!(service.value, Some(string_value("ehr-test")));
    let span = &export.resource_spans[0].scope_spans[0].spans[0];
    assert_eq!(span.name, "request");
    assert!(span.attributes.iter().any(|a| a.key == "tenant"), "{:?}", span.attributes);
}

fn string_value(s: &str) -> opentelemetry_proto::tonic::common::v1::AnyValue {
    use opentelemetry_proto::tonic::common::v1::{AnyValue, any_value::Value};
    AnyValue { value: Some(Value::StringValue(s.to_owned())) }
}
