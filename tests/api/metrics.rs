//! `/metrics` (docs/operations/observability.md) scraped from the app's own metrics listener:
//! request counters and latency histograms by route template (never ids or names), the
//! database pool, the outbox lag, the HL7 v2 queue depth, event consumers, export progress.

use crate::id_of;
use crate::orders::lab_order;
use ehr_testkit::{TestApp, json, patient};
use reqwest::Method;
use serde_json::json;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// The `service` label of the FHIR engine the gateway of target `all` calls in-process.
const ENGINE: &str = "patient-record+orders";

/// One sample line of the exposition.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// Every scrape reads the gauges (by default a reading is reused for 10 s, and these tests
/// watch them change).
fn fresh_readings(config: &mut ehr_app::Config) {
    config.telemetry.metrics_cache_ms = 0;
}

/// A scrape, parsed.
struct Scrape {
    text: String,
    samples: Vec<Sample>,
}

impl Scrape {
    fn parse(text: String) -> Self {
        let samples = text.lines().filter(|l| !l.starts_with('#') && !l.is_empty()).map(parse_sample).collect();
        Self { text, samples }
    }

    /// The samples of `name` whose labels include `labels`.
    fn matching<'a>(&'a self, name: &'a str, labels: &'a [(&str, &str)]) -> impl Iterator<Item = &'a Sample> + 'a {
        self.samples.iter().filter(move |s| {
            s.name == name && labels.iter().all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
    }

    /// The sum of the samples of `name` whose labels include `labels` (0 when there is none).
    fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.matching(name, labels).map(|s| s.value).sum()
    }

    fn has(&self, name: &str) -> bool {
        self.samples.iter().any(|s| s.name == name)
    }
}

/// `name{k="v",…} value`; label values may hold `{`, `}`, `,` and escaped quotes.
fn parse_sample(line: &str) -> Sample {
    let name_end = line.find(['{', ' ']).unwrap_or_else(|| panic!("a sample line: {line}"));
    let name = line[..name_end].to_owned();
    let mut labels = BTreeMap::new();
    let mut rest = &line[name_end..];
    if let Some(body) = rest.strip_prefix('{') {
        let mut chars = body.char_indices().peekable();
        let mut key = String::new();
        loop {
            let (i, c) = chars.next().unwrap_or_else(|| panic!("unterminated labels: {line}"));
            match c {
                '}' => {
                    rest = &body[i + 1..];
                    break;
                }
                ',' => {}
                '=' => {
                    assert_eq!(chars.next().map(|(_, c)| c), Some('"'), "{line}");
                    let mut value = String::new();
                    loop {
                        match chars.next().map(|(_, c)| c) {
                            Some('\\') => match chars.next().map(|(_, c)| c) {
                                Some('n') => value.push('\n'),
                                Some(other) => value.push(other),
                                None => panic!("{line}"),
                            },
                            Some('"') => break,
                            Some(other) => value.push(other),
                            None => panic!("unterminated value: {line}"),
                        }
                    }
                    labels.insert(std::mem::take(&mut key), value);
                }
                other => key.push(other),
            }
        }
    }
    let value = rest.trim().split(' ').next().unwrap();
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().unwrap_or_else(|_| panic!("a value: {line}")),
    };
    Sample { name, labels, value }
}

async fn scrape(app: &TestApp) -> Scrape {
    let resp = app.client.get(format!("{}/metrics", app.metrics_address)).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(resp.headers()["content-type"], "text/plain; version=0.0.4; charset=utf-8");
    Scrape::parse(resp.text().await.unwrap())
}

/// Scrapes until `ready` holds (the workers run in the background), at most 15 s.
async fn scrape_until(app: &TestApp, what: &str, ready: impl Fn(&Scrape) -> bool) -> Scrape {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let s = scrape(app).await;
        if ready(&s) {
            return s;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}:\n{}", s.text);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Asserts that nothing identifying a patient (nor the tenant) is anywhere in the scrape.
fn assert_no_data(s: &Scrape, secrets: &[&str]) {
    for secret in secrets {
        assert!(!s.text.contains(secret), "{secret:?} appears in the scrape:\n{}", s.text);
    }
}

#[tokio::test]
async fn requests_are_counted_and_timed_by_route_template_without_patient_data() {
    let app = TestApp::spawn_with(fresh_readings).await;
    let before = scrape(&app).await;

    let created = app.create(&patient("Metricsfamily", "花子", "1970-01-02", "P-METRICS-77")).await;
    let pid = id_of(&created);
    for _ in 0..2 {
        json(app.get(&format!("/Patient/{pid}")).await, 200).await;
    }
    json(app.get("/Patient?family=Metricsfamily&birthdate=1970-01-02").await, 200).await;
    json(app.get("/Patient/no-such-patient-4711").await, 404).await;
    let unmatched = app.client.get(format!("{}/no/such/path", app.address)).send().await.unwrap();
    assert_eq!(unmatched.status().as_u16(), 404);

    let after = scrape(&app).await;
    let delta = |name: &str, labels: &[(&str, &str)]| after.sum(name, labels) - before.sum(name, labels);
    let requests = "ehr_http_requests_total";
    // The FHIR engine, called in-process by the gateway, counts by its own route templates.
    let engine =
        |method, route, status| [("service", ENGINE), ("method", method), ("route", route), ("status", status)];
    assert_eq!(delta(requests, &engine("POST", "/fhir/{ty}", "201")), 1.0, "{}", after.text);
    assert_eq!(delta(requests, &engine("GET", "/fhir/{ty}/{id}", "200")), 2.0, "{}", after.text);
    assert_eq!(delta(requests, &engine("GET", "/fhir/{ty}/{id}", "404")), 1.0, "{}", after.text);
    assert_eq!(delta(requests, &engine("GET", "/fhir/{ty}", "200")), 1.0, "{}", after.text);
    let read = [("service", ENGINE), ("method", "GET"), ("route", "/fhir/{ty}/{id}")];
    assert_eq!(delta("ehr_http_request_duration_seconds_count", &read), 3.0, "{}", after.text);
    let inf = [read.as_slice(), &[("le", "+Inf")]].concat();
    assert_eq!(delta("ehr_http_request_duration_seconds_bucket", &inf), 3.0, "{}", after.text);
    assert!(delta("ehr_http_request_duration_seconds_sum", &read) > 0.0, "{}", after.text);
    // The gateway sees the same five FHIR requests on its catch-all route, and the unknown path.
    let gateway_fhir = [("service", "gateway"), ("route", "/fhir/{*rest}")];
    assert_eq!(delta(requests, &gateway_fhir), 5.0, "{}", after.text);
    let gateway_unmatched = [("service", "gateway"), ("route", "unmatched"), ("status", "404")];
    assert_eq!(delta(requests, &gateway_unmatched), 1.0, "{}", after.text);
    for s in after.matching(requests, &[]) {
        let route = &s.labels["route"];
        assert!(route == "unmatched" || route.starts_with('/'), "{s:?}");
        assert!(!route.contains('?'), "{s:?}");
    }

    // The gauges read at scrape time, and what the build is.
    assert!(after.sum("ehr_db_pool_max_connections", &[]) >= 1.0, "{}", after.text);
    assert!(after.matching("ehr_db_pool_connections", &[("state", "in_use")]).count() >= 1, "{}", after.text);
    assert!(after.matching("ehr_db_pool_connections", &[("state", "idle")]).count() >= 1, "{}", after.text);
    for probe in ["db_pool", "outbox", "mllp_queue", "export_jobs"] {
        assert_eq!(after.sum("ehr_metrics_probe_success", &[("probe", probe)]), 1.0, "{probe}: {}", after.text);
    }
    assert!(after.has("ehr_outbox_unpublished_events"), "{}", after.text);
    assert_eq!(after.sum("ehr_build_info", &[]), 1.0, "{}", after.text);
    assert_no_data(
        &after,
        &[&pid, "Metricsfamily", "花子", "P-METRICS-77", "1970-01-02", "no-such-patient-4711", &app.tenant],
    );

    // OpenMetrics for a scraper that asks for it.
    let resp = app
        .client
        .get(format!("{}/metrics", app.metrics_address))
        .header("accept", "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["content-type"], "application/openmetrics-text; version=1.0.0; charset=utf-8");
    assert!(resp.text().await.unwrap().ends_with("# EOF\n"));
    // Only the metrics listener serves them, not the API.
    let api = app.client.get(format!("{}/metrics", app.address)).send().await.unwrap();
    assert_eq!(api.status().as_u16(), 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queues_show_the_lab_backlog_the_consumers_and_the_unpublished_outbox() {
    let app = TestApp::spawn_with(fresh_readings).await;
    // A lab nobody answers for: the order stays in the outbound queue, retried.
    let lab = json!({"name": "検査センター", "labFacility": "LABM", "labApplication": "LABSYS", "ourFacility": "HOSPM",
                     "ourApplication": "HIS", "address": "127.0.0.1:1", "isDefault": true, "maxAttempts": 50});
    let token = app.token("user/*.cruds user/Connection.crus user/LabMessage.crus");
    let resp = app.client.post(format!("{}/lab/endpoints", app.address)).bearer_auth(&token).json(&lab).send().await;
    json(resp.unwrap(), 201).await;
    let pid = id_of(&app.create(&patient("Queuefamily", "花子", "1970-01-02", "P-QUEUE-12")).await);
    let sr = id_of(&app.create(&lab_order(&pid)).await);

    let queued = scrape_until(&app, "the order in the HL7 v2 queue", |s| {
        s.sum("ehr_mllp_queue_messages", &[("state", "pending")]) >= 1.0
    })
    .await;
    assert_eq!(queued.sum("ehr_mllp_queue_messages", &[("state", "dead")]), 0.0, "{}", queued.text);
    let placed = [("group", "lab-interface"), ("topic", "order.placed"), ("outcome", "applied")];
    assert!(queued.sum("ehr_events_consumed_total", &placed) >= 1.0, "{}", queued.text);
    // The age of the oldest pending message follows the clock.
    app.advance(600);
    let later = scrape(&app).await;
    assert!(later.sum("ehr_mllp_queue_oldest_pending_age_seconds", &[]) >= 600.0, "{}", later.text);

    // With the relay stopped, a new order's event stays in the outbox.
    app.stop_workers();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let before = scrape(&app).await.sum("ehr_outbox_unpublished_events", &[]);
    let sr2 = id_of(&app.create(&lab_order(&pid)).await);
    let pending = scrape(&app).await;
    assert_eq!(pending.sum("ehr_outbox_unpublished_events", &[]), before + 1.0, "{}", pending.text);
    app.advance(120);
    let aged = scrape(&app).await;
    assert!(aged.sum("ehr_outbox_oldest_unpublished_age_seconds", &[]) >= 120.0, "{}", aged.text);
    assert_no_data(&aged, &[&pid, &sr, &sr2, "Queuefamily", "P-QUEUE-12", "LABM", "HOSPM", &app.tenant]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_export_shows_as_a_completed_job_and_resources_written() {
    let app = TestApp::spawn_with(fresh_readings).await;
    let mut ids = Vec::new();
    for (family, identifier) in [("Exportone", "P-EXP-1"), ("Exporttwo", "P-EXP-2")] {
        ids.push(id_of(&app.create(&patient(family, "花子", "1970-01-02", identifier)).await));
    }
    ids.push(id_of(&app.create(&crate::observation(&ids[0], "3B035000002327201", 31.0, "2026-01-05")).await));
    let before = scrape(&app).await;
    assert_eq!(before.sum("ehr_export_jobs", &[]), 0.0, "{}", before.text);

    let token = app.token("system/*.read");
    let kick = app
        .client
        .request(Method::GET, app.fhir("/$export"))
        .bearer_auth(&token)
        .header("accept", "application/fhir+json")
        .header("prefer", "respond-async")
        .send()
        .await
        .unwrap();
    assert_eq!(kick.status().as_u16(), 202);
    let status_url = kick.headers()["content-location"].to_str().unwrap().to_owned();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let resp = app.client.get(&status_url).bearer_auth(&token).send().await.unwrap();
        match resp.status().as_u16() {
            200 => break,
            202 => assert!(Instant::now() < deadline, "the export did not finish"),
            s => panic!("export status {s}: {}", resp.text().await.unwrap()),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let after = scrape(&app).await;
    assert_eq!(after.sum("ehr_export_jobs", &[("state", "completed")]), 1.0, "{}", after.text);
    for state in ["queued", "running", "failed", "cancelled"] {
        assert_eq!(after.sum("ehr_export_jobs", &[("state", state)]), 0.0, "{state}: {}", after.text);
    }
    let written =
        after.sum("ehr_export_resources_written_total", &[]) - before.sum("ehr_export_resources_written_total", &[]);
    // At least the three resources (the counter is process-wide: another test's export in the
    // same process adds to it).
    assert!(written >= 3.0, "{written}: {}", after.text);
    // The kick-off and the status polls went to the data-export service's own routes.
    let kickoff = [("service", "data-export"), ("method", "GET"), ("status", "202")];
    assert!(after.sum("ehr_http_requests_total", &kickoff) >= 1.0, "{}", after.text);
    let mut secrets: Vec<&str> = ids.iter().map(String::as_str).collect();
    secrets.extend(["Exportone", "Exporttwo", "P-EXP-1", &app.tenant]);
    assert_no_data(&after, &secrets);
}
