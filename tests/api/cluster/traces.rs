//! One trace across processes: a lab order sent through the gateway with a client's
//! `traceparent` (which the gateway records as a link of a trace of its own, not as its
//! parent) is followed from the gateway's span to the orders service's, over the event bus
//! (Redis Streams) to the lab interface's consumer and its HL7 sender, all in one trace; the
//! lab's results start a trace of their own, linked to it. No span holds patient data, and a
//! process stopped with SIGTERM sends its last spans before it exits.

use super::{Cluster, free_port, login};
use crate::traces::{
    PHI, ReceivedSpan, Receiver, assert_no_phi, assert_order_chain, client_traceparent, filed_under, jp_patient,
    lab_endpoint, lab_simulator, one, outline,
};
use serde_json::Value;
use std::time::{Duration, Instant};

/// Sends `req` again while the gateway answers 502/503 (its upstreams just started); returns
/// the first other answer's status and body.
async fn through_gateway(req: reqwest::RequestBuilder) -> (u16, Value) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let resp = req.try_clone().unwrap().send().await.unwrap();
        let status = resp.status().as_u16();
        if !matches!(status, 502 | 503) || Instant::now() > deadline {
            return (status, resp.json().await.unwrap_or(Value::Null));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn has(spans: &[ReceivedSpan], trace: &str, service: &str, name: &str) -> bool {
    spans.iter().any(|s| s.trace_id == trace && s.service == service && s.name.starts_with(name))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_trace_follows_a_lab_order_from_the_gateway_over_the_bus_to_the_hl7_sender() {
    let collector = Receiver::start().await;
    let cluster = Cluster::new().await;
    let client_id = cluster.create_tenant("traced", "admin", &["tenant-admin", "physician", "clerk"]);
    let (gw, pr, ord, lab, mllp) = (free_port(), free_port(), free_port(), free_port(), free_port());
    let gw_url = format!("http://127.0.0.1:{gw}");
    let telemetry = format!("[telemetry]\notlp_endpoint = \"{}\"\n", collector.url);
    let upstreams = format!(
        "[gateway.upstreams]\npatient-record = \"http://127.0.0.1:{pr}\"\norders = \"http://127.0.0.1:{ord}\"\n\
         lab-interface = \"http://127.0.0.1:{lab}\"\n{telemetry}"
    );
    let _gateway = cluster.start("gateway", "gateway", gw, &cluster.config("gateway", gw, &gw_url, &upstreams)).await;
    let lab_extra = format!("[lab]\nlisten = \"127.0.0.1:{mllp}\"\n{telemetry}");
    let configs = [
        cluster.config("patient-record", pr, &gw_url, &telemetry),
        cluster.config("orders", ord, &gw_url, &telemetry),
        cluster.config("lab-interface", lab, &gw_url, &lab_extra),
    ];
    let (_patient_record, _orders, _lab_interface) = tokio::join!(
        cluster.start("patient-record", "patient-record", pr, &configs[0]),
        cluster.start("orders", "orders", ord, &configs[1]),
        cluster.start("lab-interface", "lab-interface", lab, &configs[2]),
    );
    let sim = lab_simulator(Some(format!("127.0.0.1:{mllp}"))).await;
    let token = login(&gw_url, &client_id, "admin", "user/*.cruds user/Connection.crus user/LabMessage.crus").await;
    let http = reqwest::Client::new();

    let (status, body) = through_gateway(
        http.post(format!("{gw_url}/lab/endpoints"))
            .bearer_auth(&token)
            .json(&lab_endpoint(&sim.local_addr().to_string())),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let fhir = |path: &str| {
        http.post(format!("{gw_url}/fhir{path}")).bearer_auth(&token).header("content-type", "application/fhir+json")
    };
    let (status, patient) = through_gateway(fhir("/Patient").body(jp_patient().to_string())).await;
    assert_eq!(status, 201, "{patient}");

    // The order, with a client's trace context: the gateway (the public edge) starts a trace
    // of its own and records the client's context as a link, not as its parent.
    let (traceparent, client_trace, client_span) = client_traceparent();
    let order = crate::orders::lab_order(patient["id"].as_str().unwrap());
    let (status, order) = through_gateway(
        fhir("/ServiceRequest")
            .header("traceparent", &traceparent)
            .header("tracestate", "vendor=secret")
            .header("baggage", "patient=P-12345")
            .body(order.to_string()),
    )
    .await;
    assert_eq!(status, 201, "{order}");
    let order_id = order["id"].as_str().unwrap().to_owned();

    // Spans leave in batches every few seconds.
    let client = (client_trace.clone(), client_span.clone());
    let gateway_span = |spans: &[ReceivedSpan]| {
        spans
            .iter()
            .find(|s| s.service == "ehr-gateway" && s.name.starts_with("POST /fhir") && s.links.contains(&client))
            .cloned()
    };
    collector.wait_until(Duration::from_secs(60), "the gateway's span", |spans| gateway_span(spans).is_some()).await;
    let gateway = gateway_span(&collector.spans()).unwrap();
    assert_eq!(gateway.parent_span_id, "", "the gateway's span is a root, linked to the client's: {gateway:?}");
    assert_ne!(gateway.trace_id, client_trace, "the client chose the trace id");
    assert_eq!(gateway.kind, 2);
    let trace = gateway.trace_id.clone();
    collector
        .wait_until(Duration::from_secs(60), "order trace through every process", |spans| {
            has(spans, &trace, "ehr-orders", "POST /fhir")
                && has(spans, &trace, "ehr-lab-interface", "event.consume")
                && has(spans, &trace, "ehr-lab-interface", "hl7.send")
                && spans.iter().any(|s| s.trace_id == trace && s.name == "event.publish")
        })
        .await;
    let spans = collector.trace(&trace);
    assert!(collector.trace(&client_trace).is_empty(), "a span in the client's trace:\n{}", outline(&spans));
    let consume = assert_order_chain(&spans, &client_span, Some(&gateway), "ehr-orders");
    assert_eq!(consume.service, "ehr-lab-interface");
    assert!(
        spans.iter().filter(|s| s.name == "hl7.send").all(|s| s.service == "ehr-lab-interface"),
        "{}",
        outline(&spans)
    );

    // The results: received over MLLP in a trace of their own, linked to the order's; the
    // patient-record and orders services file them under that span.
    let link = (trace.clone(), consume.span_id.clone());
    collector
        .wait_until(Duration::from_secs(60), "the results filed", |spans| {
            let Some(receive) = spans.iter().find(|s| s.name == "hl7.receive" && s.links.contains(&link)) else {
                return false;
            };
            let filed = filed_under(spans, receive);
            ["ehr-patient-record", "ehr-orders"].iter().all(|service| filed.iter().any(|s| s.service == *service))
        })
        .await;
    let all = collector.spans();
    let receive = one(&all, "hl7.receive", |s| s.name == "hl7.receive" && s.links.contains(&link));
    assert_eq!(
        (receive.service.as_str(), receive.attribute("hl7.ack"), receive.attribute("hl7.message_type")),
        ("ehr-lab-interface", Some("AA"), Some("OUL^R22"))
    );
    assert_no_phi(&all, PHI);

    // SIGTERM: the spans of the last request leave before the process exits. A second orders
    // process whose batch delay is ten minutes: only the flush at shutdown can send them. (A
    // service behind the gateway continues the caller's trace.)
    let port = free_port();
    let config = cluster.config("orders", port, &gw_url, &telemetry);
    let mut orders =
        cluster.start_with_env("orders-2", "orders", port, &config, &[("OTEL_BSP_SCHEDULE_DELAY", "600000")]).await;
    let (traceparent, last_trace, _) = client_traceparent();
    let resp = http
        .get(format!("{}/fhir/ServiceRequest/{order_id}", orders.url))
        .bearer_auth(&token)
        .header("traceparent", &traceparent)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(collector.trace(&last_trace).is_empty(), "exported before the shutdown: the batch delay was not honoured");
    orders.terminate();
    let status = orders.wait_exit(Duration::from_secs(30)).await;
    assert!(status.success(), "orders exited with {status}:\n{}", orders.log_tail());
    let last = collector.trace(&last_trace);
    assert!(
        last.iter().any(|s| s.service == "ehr-orders" && s.name.starts_with("GET /fhir")),
        "the last request's span was not flushed at shutdown:\n{}\n{}",
        outline(&last),
        orders.log_tail()
    );
    assert!(orders.log().contains("traces flushed"), "{}", orders.log_tail());
}
