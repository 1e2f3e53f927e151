//! Traces (OpenTelemetry over OTLP/HTTP): an in-test collector, and one lab order followed in
//! one process (target `all`) from the client's `traceparent` through the request span, the
//! outbox relay and the lab interface's consumer to the HL7 sender — with ids only, no PHI.
//! `cluster::traces` follows the same order across processes.

use crate::orders::lab_order;
use ehr_lab_sim::LabSimConfig;
use ehr_testkit::{TestApp, json};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use prost::Message;
use serde_json::{Value, json};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One span as a collector received it; ids in lowercase hex.
#[derive(Debug, Clone)]
pub struct ReceivedSpan {
    /// `service.name` of the process that sent it.
    pub service: String,
    pub trace_id: String,
    pub span_id: String,
    /// Empty for a root span.
    pub parent_span_id: String,
    pub name: String,
    /// OTLP `SpanKind`: 2 server, 3 client, 4 producer, 5 consumer.
    pub kind: i32,
    /// The span's attributes, then those of its events (log lines), as text.
    pub attributes: Vec<(String, String)>,
    /// `(trace id, span id)` of each link.
    pub links: Vec<(String, String)>,
    /// The names of its events (log lines, exceptions).
    pub events: Vec<String>,
    /// Its status: OTLP code (0 unset, 1 ok, 2 error) and message.
    pub status: (i32, String),
}

impl ReceivedSpan {
    pub fn attribute(&self, key: &str) -> Option<&str> {
        self.attributes.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }
}

/// An OTLP/HTTP collector on port 0: `POST /v1/traces` with protobuf bodies.
pub struct Receiver {
    /// `http://127.0.0.1:<port>`: what `telemetry.otlp_endpoint` names.
    pub url: String,
    spans: Arc<Mutex<Vec<ReceivedSpan>>>,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn text(value: Option<&AnyValue>) -> String {
    match value.and_then(|v| v.value.as_ref()) {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(any_value::Value::IntValue(i)) => i.to_string(),
        Some(any_value::Value::BoolValue(b)) => b.to_string(),
        Some(any_value::Value::DoubleValue(d)) => d.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

fn pairs(attributes: &[KeyValue]) -> impl Iterator<Item = (String, String)> + '_ {
    attributes.iter().map(|a| (a.key.clone(), text(a.value.as_ref())))
}

impl Receiver {
    pub async fn start() -> Self {
        let spans: Arc<Mutex<Vec<ReceivedSpan>>> = Arc::default();
        let store = spans.clone();
        let app = axum::Router::new()
            .route(
                "/v1/traces",
                axum::routing::post(move |body: axum::body::Bytes| {
                    let store = store.clone();
                    async move {
                        let Ok(export) = ExportTraceServiceRequest::decode(body) else {
                            return axum::http::StatusCode::BAD_REQUEST;
                        };
                        let mut store = store.lock().unwrap();
                        for rs in export.resource_spans {
                            let service = rs
                                .resource
                                .as_ref()
                                .and_then(|r| r.attributes.iter().find(|a| a.key == "service.name"))
                                .map(|a| text(a.value.as_ref()))
                                .unwrap_or_default();
                            for span in rs.scope_spans.into_iter().flat_map(|s| s.spans) {
                                let mut attributes: Vec<(String, String)> = pairs(&span.attributes).collect();
                                attributes.extend(span.events.iter().flat_map(|e| pairs(&e.attributes)));
                                store.push(ReceivedSpan {
                                    service: service.clone(),
                                    trace_id: hex(&span.trace_id),
                                    span_id: hex(&span.span_id),
                                    parent_span_id: hex(&span.parent_span_id),
                                    name: span.name,
                                    kind: span.kind,
                                    attributes,
                                    links: span.links.iter().map(|l| (hex(&l.trace_id), hex(&l.span_id))).collect(),
                                    events: span.events.iter().map(|e| e.name.clone()).collect(),
                                    status: span
                                        .status
                                        .as_ref()
                                        .map(|st| (st.code, st.message.clone()))
                                        .unwrap_or_default(),
                                });
                            }
                        }
                        axum::http::StatusCode::OK
                    }
                }),
            )
            .layer(axum::extract::DefaultBodyLimit::max(64 * 1024 * 1024));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self { url, spans }
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.spans.lock().unwrap().clone()
    }

    /// The spans of one trace.
    pub fn trace(&self, trace_id: &str) -> Vec<ReceivedSpan> {
        self.spans().into_iter().filter(|s| s.trace_id == trace_id).collect()
    }

    /// Waits until `done` holds for the spans received (polling), at most `within`.
    pub async fn wait_until(&self, within: Duration, what: &str, done: impl Fn(&[ReceivedSpan]) -> bool) {
        let deadline = Instant::now() + within;
        loop {
            let spans = self.spans();
            if done(&spans) {
                return;
            }
            assert!(Instant::now() < deadline, "no {what} within {within:?}; received:\n{}", outline(&spans));
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// The spans, one a line, for failure messages.
pub fn outline(spans: &[ReceivedSpan]) -> String {
    spans
        .iter()
        .map(|s| {
            let ack = s.attribute("hl7.ack").map(|a| format!(" ack={a}")).unwrap_or_default();
            let links = if s.links.is_empty() { String::new() } else { format!(" links={:?}", s.links) };
            format!(
                "{} {} {} {}<-{} kind={}{ack}{links}",
                s.service, s.name, s.trace_id, s.span_id, s.parent_span_id, s.kind
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The one span of `spans` matching `pick`, with a readable failure.
pub fn one<'a>(spans: &'a [ReceivedSpan], what: &str, pick: impl Fn(&ReceivedSpan) -> bool) -> &'a ReceivedSpan {
    let found: Vec<&ReceivedSpan> = spans.iter().filter(|s| pick(s)).collect();
    assert_eq!(found.len(), 1, "expected one {what} in:\n{}", outline(spans));
    found[0]
}

/// A client's W3C `traceparent` (sampled) with a fresh trace id: (header, trace id, span id).
pub fn client_traceparent() -> (String, String, String) {
    let trace = uuid::Uuid::new_v4().simple().to_string();
    let span = uuid::Uuid::new_v4().simple().to_string()[..16].to_owned();
    (format!("00-{trace}-{span}-01"), trace, span)
}

/// Fails if a span's name, attribute, event (name or attribute) or status message holds any
/// of `phi`, or if a span carries an event or a status message at all: log lines and error
/// texts (a database driver's, Redis's) are not exported.
pub fn assert_no_phi(spans: &[ReceivedSpan], phi: &[&str]) {
    for span in spans {
        assert!(span.events.is_empty(), "events exported with {span:?}");
        assert_eq!(span.status.1, "", "a status message exported with {span:?}");
        for word in phi {
            assert!(!span.name.contains(word), "{word} in the name of {span:?}");
            assert!(!span.events.iter().any(|e| e.contains(word)), "{word} in an event of {span:?}");
            assert!(!span.status.1.contains(word), "{word} in the status of {span:?}");
            for (key, value) in &span.attributes {
                assert!(
                    !value.contains(word) && !key.contains(word),
                    "{word} in {key} of {} ({})",
                    span.name,
                    span.service
                );
            }
        }
    }
}

/// The patient data the order below carries, none of which may reach a span.
pub const PHI: &[&str] = &["山田", "花子", "ヤマダ", "ハナコ", "1970-01-02", "19700102", "P-12345"];

/// A patient as JP Core writes one: local patient id, kanji and kana names (what the lab
/// simulator checks the OML^O33 against).
pub fn jp_patient() -> Value {
    let mut p = ehr_testkit::patient("山田", "花子", "1970-01-02", "P-12345");
    p["name"] = json!([
        {"extension": [{"url": "http://hl7.org/fhir/StructureDefinition/iso21090-EN-representation", "valueCode": "IDE"}],
         "use": "official", "family": "山田", "given": ["花子"]},
        {"extension": [{"url": "http://hl7.org/fhir/StructureDefinition/iso21090-EN-representation", "valueCode": "SYB"}],
         "use": "official", "family": "ヤマダ", "given": ["ハナコ"]}
    ]);
    p
}

/// A lab endpoint at `address` (the simulator), default for the tenant.
pub fn lab_endpoint(address: &str) -> Value {
    json!({
        "name": "検査センターA", "labFacility": "LABCO", "labApplication": "LABSYS",
        "ourFacility": "HOSP", "ourApplication": "HIS", "address": address,
        "charset": "iso-ir-87", "isDefault": true, "maxAttempts": 8
    })
}

/// The lab simulator answering orders, results sent to `results_to` a second after its ACK (by
/// then the sender has recorded the delivery: results for an order not yet known as sent to
/// this lab are refused).
pub async fn lab_simulator(results_to: Option<String>) -> ehr_lab_sim::LabSimHandle {
    let mut config = LabSimConfig::for_tests(results_to);
    config.result_delay_ms = Some(1000);
    config.sending_facility = "LABCO".into();
    config.receiving_facility = "HOSP".into();
    ehr_lab_sim::start(config).await.unwrap()
}

/// Checks the hops of one lab order's trace: the request span of `order_service` (under the
/// gateway's span `gateway`, when there is one, else under `client_span`, "" for a root) → the
/// lab-interface's `event.consume` → `hl7.send`, and the relay's `event.publish` under the
/// request span, the consume span under it. Returns the consume span (what the OML^O33 stored).
pub fn assert_order_chain(
    spans: &[ReceivedSpan],
    client_span: &str,
    gateway: Option<&ReceivedSpan>,
    order_service: &str,
) -> ReceivedSpan {
    let parent_of_order = gateway.map_or(client_span, |g| g.span_id.as_str());
    let order = one(spans, "orders request span", |s| {
        s.service == order_service && s.name.starts_with("POST /fhir") && s.kind == 2
    });
    assert_eq!(order.parent_span_id, parent_of_order, "the order's request span:\n{}", outline(spans));
    assert!(order.attribute("route").is_some_and(|r| r.starts_with("/fhir/")), "{order:?}");
    let publish = one(spans, "event.publish", |s| s.name == "event.publish");
    assert_eq!(publish.parent_span_id, order.span_id, "the relay's span is the request's child");
    assert_eq!((publish.kind, publish.attribute("event.topic")), (4, Some("order.placed")));
    let consume = one(spans, "event.consume", |s| s.name == "event.consume");
    // Over Redis Streams the event carries the publish span's context; the in-process bus
    // (TEST_KV=memory) reads the outbox row, which holds the request span's.
    assert!(
        consume.parent_span_id == publish.span_id || consume.parent_span_id == order.span_id,
        "the consumer's span is the publish span's (or the request's) child:\n{}",
        outline(spans)
    );
    assert_eq!((consume.kind, consume.attribute("group")), (5, Some("lab-interface")));
    assert_eq!(consume.attribute("event.id"), publish.attribute("event.id"));
    let sends: Vec<&ReceivedSpan> = spans.iter().filter(|s| s.name == "hl7.send").collect();
    assert!(!sends.is_empty(), "no hl7.send:\n{}", outline(spans));
    for send in sends {
        assert_eq!(send.parent_span_id, consume.span_id, "the sender's span is the consumer's child");
        assert_eq!(send.kind, 3);
        assert_eq!(send.attribute("hl7.message_type"), Some("OML^O33"));
        assert!(send.attribute("hl7.control_id").is_some_and(|c| c.len() == 20), "{send:?}");
    }
    consume.clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_process_follows_a_lab_order_from_the_request_to_the_hl7_sender() {
    let collector = Receiver::start().await;
    let settings = ehr_telemetry::TelemetrySettings {
        otlp_endpoint: Some(collector.url.clone()),
        ..ehr_telemetry::TelemetrySettings::default()
    };
    // The process's subscriber, as `ehr serve` installs it (this test is the only one to).
    let guard = ehr_telemetry::trace::init("text", "info", &settings, "ehr-all").unwrap();
    assert!(guard.exporting());

    let app = TestApp::spawn_with(|c| c.lab.listen = Some("127.0.0.1:0".into())).await;
    let sim = lab_simulator(app.lab_mllp.map(|a| a.to_string())).await;
    let admin = app.token("user/*.cruds user/Connection.crus user/LabMessage.crus");
    let resp = app
        .client
        .post(format!("{}/lab/endpoints", app.address))
        .bearer_auth(&admin)
        .json(&lab_endpoint(&sim.local_addr().to_string()))
        .send()
        .await
        .unwrap();
    json(resp, 201).await;
    let patient = app.create(&jp_patient()).await;

    let (traceparent, client_trace, client_span) = client_traceparent();
    let resp = app
        .client
        .post(app.fhir("/ServiceRequest"))
        .bearer_auth(&admin)
        .header("traceparent", &traceparent)
        .header("content-type", "application/fhir+json")
        .body(lab_order(patient["id"].as_str().unwrap()).to_string())
        .send()
        .await
        .unwrap();
    json(resp, 201).await;

    // The edge (target `all`) starts a trace of its own, linked to the client's context: the
    // client decides neither the trace id nor the sampling.
    let client = (client_trace, client_span);
    collector
        .wait_until(Duration::from_secs(60), "the order's request span", |spans| {
            spans.iter().any(|s| s.name.starts_with("POST /fhir") && s.links.contains(&client))
        })
        .await;
    let all = collector.spans();
    let request =
        one(&all, "the order's request span", |s| s.name.starts_with("POST /fhir") && s.links.contains(&client));
    assert_eq!(request.parent_span_id, "", "a root span: {request:?}");
    assert_ne!(request.trace_id, client.0);
    let trace = request.trace_id.clone();
    assert!(collector.trace(&client.0).is_empty(), "a span in the client's trace:\n{}", outline(&all));

    // The order goes out, the lab acknowledges it and sends results back, which are filed; the
    // spans leave in batches every few seconds. Only this order's spans count: the process's
    // subscriber also sees the other tests' (their lab results too).
    collector
        .wait_until(Duration::from_secs(60), "the order's journey", |spans| {
            let ours = |name: &str| spans.iter().any(|s| s.trace_id == trace && s.name == name);
            ours("hl7.send") && ours("event.publish") && ours("event.consume")
        })
        .await;
    let consume = assert_order_chain(&collector.trace(&trace), "", None, "ehr-all");
    let link = (trace.clone(), consume.span_id.clone());
    // The results: their own trace, linked to the order's; the filing consumers under it.
    collector
        .wait_until(Duration::from_secs(60), "the results filed", |spans| {
            let Some(receive) = spans.iter().find(|s| s.name == "hl7.receive" && s.links.contains(&link)) else {
                return false;
            };
            filed_under(spans, receive).len() == 2
        })
        .await;
    tokio::task::spawn_blocking(move || guard.shutdown()).await.unwrap();

    let spans = collector.trace(&trace);
    assert!(spans.iter().all(|s| s.service == "ehr-all"), "{}", outline(&spans));
    let all = collector.spans();
    let receive = one(&all, "hl7.receive linked to the order", |s| s.name == "hl7.receive" && s.links.contains(&link));
    assert_eq!(receive.attribute("hl7.ack"), Some("AA"));
    assert_eq!(receive.attribute("hl7.message_type"), Some("OUL^R22"));
    let filed = filed_under(&all, receive);
    assert_eq!(filed.len(), 2, "patient-record and orders file the results:\n{}", outline(&all));
    assert_no_phi(&all, PHI);
}

/// The `event.consume` spans of `lab.result.received` under `receive`: in its trace, children
/// of its `event.publish` spans (over Redis Streams) or of it (the in-process bus).
pub fn filed_under<'a>(spans: &'a [ReceivedSpan], receive: &ReceivedSpan) -> Vec<&'a ReceivedSpan> {
    let publishes: Vec<&str> = spans
        .iter()
        .filter(|s| s.name == "event.publish" && s.parent_span_id == receive.span_id)
        .map(|s| s.span_id.as_str())
        .collect();
    spans
        .iter()
        .filter(|s| {
            s.name == "event.consume"
                && s.attribute("event.topic") == Some("lab.result.received")
                && s.trace_id == receive.trace_id
                && (s.parent_span_id == receive.span_id || publishes.contains(&s.parent_span_id.as_str()))
        })
        .collect()
}
