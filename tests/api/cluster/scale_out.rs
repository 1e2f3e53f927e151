//! Scale-out: one gateway in front of two instances each of patient-record, orders and
//! lab-interface (one clinical database, one Redis prefix), the gateway's `upstreams` listing
//! both instances of each.
//!
//! While clients load the cluster — patients created, read and searched, lab orders placed, and
//! one Patient updated by many clients at once with `If-Match` — one patient-record and one
//! orders instance are stopped with SIGTERM. Proven: no request failed (the gateway stops
//! sending to a draining instance and fails a refused connection over to the other), every
//! conflicting update is a 200 or a 412 and none is lost, the stopped processes exit 0 within
//! drain + worker timeout, and every order placed produced exactly one OML^O33 in the message log
//! (two lab-interface consumers, relays stopping in between) with nothing left in the outbox.

use super::{Cluster, Node, free_port, login};
use crate::id_of;
use crate::orders::lab_order;
use ehr_testkit::patient;
use sea_orm::{ConnectionTrait, Database, DatabaseConnection, Statement};
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::Mutex;

/// What the test user asks for: the clinical types, and the lab interface's admin API.
const SCOPE: &str = "user/*.cruds user/Connection.crus user/LabMessage.crus";
/// Concurrent clients of the load and of the conflicting updates.
const CLIENTS: usize = 8;
/// Seconds a stopping process keeps serving while `/readyz` answers 503: many times the
/// gateway's 200-ms health checks (and their 1-s timeout), on a loaded machine.
const DRAIN_SECS: u64 = 4;
/// Seconds its workers get after the last request.
const WORKERS_TIMEOUT_SECS: u64 = 10;
/// Requests before the stop, and after the stopped processes exited.
const BEFORE_STOP: usize = 300;
const AFTER_EXIT: usize = 400;
const FHIR_JSON: &str = "application/fhir+json";

/// The clients' shared tally.
#[derive(Default)]
struct Tally {
    requests: AtomicUsize,
    failures: Mutex<Vec<String>>,
    orders: Mutex<Vec<String>>,
    /// Conflicting updates: every PUT answered 200 or 412, by the phone number it wrote.
    puts: Mutex<Vec<Put>>,
    conflicts: AtomicUsize,
    stop: AtomicBool,
}

/// One conditional update of the shared Patient.
#[derive(Clone, Debug)]
struct Put {
    /// The phone number it wrote, unique to it: which version of the history it made, if any.
    phone: String,
    /// The version its `If-Match` named.
    base: i64,
    /// The version a 200 reported; `None` for a 412.
    made: Option<i64>,
}

impl Tally {
    async fn fail(&self, what: String) {
        self.failures.lock().await.push(what);
    }
}

/// One request through the gateway; `Err` describes a transport failure.
async fn call(
    http: &reqwest::Client,
    token: &str,
    method: reqwest::Method,
    url: String,
    headers: &[(&str, String)],
    body: Option<&Value>,
) -> Result<(u16, reqwest::header::HeaderMap, Value), String> {
    let mut req = http.request(method, url).bearer_auth(token).header("accept", FHIR_JSON);
    for (k, v) in headers {
        req = req.header(*k, v);
    }
    if let Some(b) = body {
        req = req.header("content-type", FHIR_JSON).body(b.to_string());
    }
    let resp = req.send().await.map_err(|e| format!("transport: {e}"))?;
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let text = resp.text().await.map_err(|e| format!("body: {e}"))?;
    Ok((status, headers, serde_json::from_str(&text).unwrap_or(Value::String(text))))
}

/// Checks one answer: the expected status, else a failure recorded with what came.
async fn expect(
    tally: &Tally,
    what: &str,
    answer: Result<(u16, reqwest::header::HeaderMap, Value), String>,
    ok: &[u16],
) -> Option<Value> {
    tally.requests.fetch_add(1, Ordering::Relaxed);
    match answer {
        Ok((status, _, body)) if ok.contains(&status) => Some(body),
        Ok((status, _, body)) => {
            let text = body.to_string();
            tally.fail(format!("{what}: {status} {}", &text[..text.len().min(300)])).await;
            None
        }
        Err(e) => {
            tally.fail(format!("{what}: {e}")).await;
            None
        }
    }
}

/// A client creating, reading and searching patients and placing a lab order for each, until
/// told to stop.
async fn load(client: usize, gateway: String, token: String, tally: Arc<Tally>) {
    let http = reqwest::Client::builder().timeout(Duration::from_secs(60)).build().unwrap();
    let fhir = |path: &str| format!("{gateway}/fhir/{path}");
    let mut round = 0;
    while !tally.stop.load(Ordering::Relaxed) {
        round += 1;
        let ident = format!("SO-{client}-{round}");
        let body = patient("負荷", "太郎", "1980-04-01", &ident);
        let created = call(&http, &token, reqwest::Method::POST, fhir("Patient"), &[], Some(&body)).await;
        let Some(created) = expect(&tally, "create Patient", created, &[201]).await else { continue };
        let pid = id_of(&created);
        let read = call(&http, &token, reqwest::Method::GET, fhir(&format!("Patient/{pid}")), &[], None).await;
        expect(&tally, "read Patient", read, &[200]).await;
        let query = format!("Patient?identifier=urn:oid:1.2.392.100495.20.3.51.11311234567|{ident}");
        let found = call(&http, &token, reqwest::Method::GET, fhir(&query), &[], None).await;
        if let Some(bundle) = expect(&tally, "search Patient", found, &[200]).await
            && bundle["total"] != 1
        {
            tally.fail(format!("search Patient: total {} for one patient", bundle["total"])).await;
        }
        let order =
            call(&http, &token, reqwest::Method::POST, fhir("ServiceRequest"), &[], Some(&lab_order(&pid))).await;
        if let Some(order) = expect(&tally, "create ServiceRequest", order, &[201]).await {
            tally.orders.lock().await.push(id_of(&order));
        }
    }
}

/// A client updating the one shared Patient with `If-Match` on the version it read, until told
/// to stop: every answer must be 200 (a new version) or 412 (another client was first).
async fn conflict(client: usize, gateway: String, token: String, patient_id: String, tally: Arc<Tally>) {
    let http = reqwest::Client::builder().timeout(Duration::from_secs(60)).build().unwrap();
    let url = format!("{gateway}/fhir/Patient/{patient_id}");
    let mut round = 0;
    while !tally.stop.load(Ordering::Relaxed) {
        round += 1;
        let read = call(&http, &token, reqwest::Method::GET, url.clone(), &[], None).await;
        let Some(mut current) = expect(&tally, "read shared Patient", read, &[200]).await else { continue };
        let version = current["meta"]["versionId"].as_str().unwrap_or_default().to_owned();
        let phone = format!("090-{client}-{round}");
        current["telecom"] = json!([{"system": "phone", "value": phone}]);
        let base: i64 = version.parse().unwrap_or(-1);
        let put = call(
            &http,
            &token,
            reqwest::Method::PUT,
            url.clone(),
            &[("if-match", format!("W/\"{version}\""))],
            Some(&current),
        )
        .await;
        tally.requests.fetch_add(1, Ordering::Relaxed);
        match put {
            Ok((200, _, body)) => {
                let made: i64 = body["meta"]["versionId"].as_str().and_then(|v| v.parse().ok()).unwrap_or(-1);
                tally.puts.lock().await.push(Put { phone, base, made: Some(made) });
            }
            Ok((412, _, _)) => {
                tally.conflicts.fetch_add(1, Ordering::Relaxed);
                tally.puts.lock().await.push(Put { phone, base, made: None });
            }
            Ok((status, _, body)) => {
                let text = body.to_string();
                tally.fail(format!("conditional update: {status} {}", &text[..text.len().min(300)])).await;
            }
            Err(e) => tally.fail(format!("conditional update: {e}")).await,
        }
    }
}

async fn count(db: &DatabaseConnection, sql: &str) -> i64 {
    let row = db.query_one_raw(Statement::from_string(db.get_database_backend(), sql)).await.unwrap().unwrap();
    row.try_get_by_index(0).unwrap()
}

/// Waits until `done`, checking every 200 ms; panics after `within`.
async fn wait_until<F, Fut>(what: &str, within: Duration, mut done: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if done().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("timed out after {within:?} waiting for {what}");
}

/// `text` without the terminal colours of the text log format.
fn plain(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // `ESC [ … m`
            for c in chars.by_ref() {
                if c == 'm' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The timestamp opening a log line (RFC 3339, UTC, always microseconds: ordered as text).
fn stamp(line: &str) -> &str {
    line.split_whitespace().next().unwrap_or_default()
}

/// The first line of `log` containing `needle`.
fn line_with<'a>(log: &'a str, needle: &str) -> Option<&'a str> {
    log.lines().find(|l| l.contains(needle))
}

/// Asserts that `node` served FHIR requests before it was told to stop.
fn assert_served_before_stop(node: &Node) {
    let log = plain(&node.log());
    let stop = log.find("shutting down:").unwrap_or(log.len());
    let served = log[..stop]
        .lines()
        .filter(|l| l.contains("finished processing request") && l.contains("route=\"/fhir/"))
        .count();
    assert!(served > 0, "{} served no FHIR request before the stop; log:\n{}", node.name, node.log_tail());
}

/// Asserts that the gateway, in `since_stop` (its log from the SIGTERM on), took `node` (at
/// `url`) out because its `/readyz` answered 503 `draining`, before `node` closed its listener.
fn assert_taken_out_while_draining(since_stop: &str, node: &Node, url: &str) {
    let instance = format!("instance={url} ");
    let taken_out = since_stop
        .lines()
        .find(|l| l.contains("upstream instance taken out") && l.contains(&instance))
        .unwrap_or_else(|| panic!("the gateway did not take {} ({url}) out after the stop:\n{since_stop}", node.name));
    assert!(taken_out.contains("why=\"503 draining\""), "{} taken out for another reason: {taken_out}", node.name);
    let log = plain(&node.log());
    let closed = line_with(&log, "shutting down: listener closed")
        .unwrap_or_else(|| panic!("{}: no `listener closed`; log:\n{}", node.name, node.log_tail()));
    assert!(
        stamp(taken_out) < stamp(closed),
        "the gateway took {} out only after its listener closed:\n{taken_out}\n{closed}",
        node.name
    );
}

/// Asserts the stop sequence in a stopped process's log, in order.
fn assert_stopped_in_order(node: &Node) {
    let log = node.log();
    let mut from = 0;
    for phase in [
        "shutting down: /readyz answers 503 (draining), still serving",
        "shutting down: listener closed, finishing the requests in flight",
        "shutting down: requests in flight finished; stopping the background workers",
        "shutting down: background workers stopped",
    ] {
        match log[from..].find(phase) {
            Some(at) => from += at + phase.len(),
            None => panic!("{}: `{phase}` missing or out of order; log:\n{}", node.name, node.log_tail()),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_instances_per_service_lose_no_request_no_update_and_no_event() {
    let started = Instant::now();
    let cluster = Cluster::new().await;
    let gw_port = free_port();
    let gw_url = format!("http://127.0.0.1:{gw_port}");
    let ports: Vec<u16> = (0..6).map(|_| free_port()).collect();
    let url = |i: usize| format!("http://127.0.0.1:{}", ports[i]);
    let shutdown = format!("[shutdown]\ndrain_secs = {DRAIN_SECS}\nworkers_timeout_secs = {WORKERS_TIMEOUT_SECS}\n");

    // The gateway: both instances of each service, in the three spellings of the list; health
    // checks every 200 ms; rate limits out of the way of 16 clients of one user.
    let gateway_extra = format!(
        "upstream_check_ms = 200\n\
         [gateway.rate_limit]\nuser_per_sec = 100000.0\nuser_burst = 100000\n\
         [gateway.upstreams]\n\
         patient-record = [\"{}\", \"{}\"]\n\
         orders = \"{},{}\"\n\
         lab-interface = [\"{},{}\"]\n\
         {shutdown}",
        url(0),
        url(1),
        url(2),
        url(3),
        url(4),
        url(5),
    );
    let mut gateway =
        cluster.start("gateway", "gateway", gw_port, &cluster.config("gateway", gw_port, "", &gateway_extra)).await;
    let client_id = cluster.create_tenant("scale", "scale-admin", &["physician", "clerk", "tenant-admin"]);

    // Two instances of each service, started together (migrations take turns on their lock).
    // The lab interface retries an unreachable lab slowly: the lab is not the subject here.
    let lab_extra = format!("{shutdown}[lab]\nretry_base_ms = 30000\nconnect_timeout_ms = 200\n");
    let targets = ["patient-record", "patient-record", "orders", "orders", "lab-interface", "lab-interface"];
    let configs: Vec<String> = (0..6)
        .map(|i| match targets[i] {
            // Each of its 4 consumers holds a transaction and opens a second one (the tenant's
            // lab endpoints): with the 4 connections of `Cluster::config` they starve each other
            // until the pool's 30-s timeout.
            "lab-interface" => {
                let config = cluster.config(targets[i], ports[i], &gw_url, &lab_extra);
                assert!(config.contains("\nmax_connections = 4\n"), "the pool size to raise is not in:\n{config}");
                config.replace("\nmax_connections = 4\n", "\nmax_connections = 10\n")
            }
            target => cluster.config(target, ports[i], &gw_url, &shutdown),
        })
        .collect();
    let start = |i: usize, name: &'static str| cluster.start(name, targets[i], ports[i], &configs[i]);
    let (pr1, pr2, or1, or2, lab1, lab2) = tokio::join!(
        start(0, "patient-record-1"),
        start(1, "patient-record-2"),
        start(2, "orders-1"),
        start(3, "orders-2"),
        start(4, "lab-interface-1"),
        start(5, "lab-interface-2"),
    );
    let (mut pr1, mut or1) = (pr1, or1);
    let mut others = vec![pr2, or2, lab1, lab2];
    // Let the gateway's checks see every instance up (they were down while starting).
    tokio::time::sleep(Duration::from_millis(600)).await;
    let token = login(&gw_url, &client_id, "scale-admin", SCOPE).await;
    let setup = started.elapsed();

    // A lab that never answers: the orders are queued for it, which is all that matters here.
    let http = reqwest::Client::new();
    let closed_port = free_port();
    let endpoint = json!({
        "name": "検査センター", "labFacility": "LABCO", "labApplication": "LABSYS",
        "ourFacility": "HOSP", "ourApplication": "HIS", "address": format!("127.0.0.1:{closed_port}"),
        "charset": "utf-8", "isDefault": true, "maxAttempts": 50
    });
    let resp = http.post(format!("{gw_url}/lab/endpoints")).bearer_auth(&token).json(&endpoint).send().await.unwrap();
    assert_eq!(resp.status(), 201, "lab endpoint: {}", resp.text().await.unwrap());
    let endpoint_id = resp.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned();

    // The Patient every conflicting client updates.
    let shared = call(
        &http,
        &token,
        reqwest::Method::POST,
        format!("{gw_url}/fhir/Patient"),
        &[],
        Some(&patient("競合", "花子", "1975-09-09", "SO-SHARED")),
    )
    .await
    .unwrap();
    assert_eq!(shared.0, 201, "{}", shared.2);
    let shared_id = id_of(&shared.2);

    // Load: 8 clients creating, reading, searching and ordering, 8 clients updating one Patient.
    let tally = Arc::new(Tally::default());
    let mut clients = Vec::new();
    for c in 0..CLIENTS {
        clients.push(tokio::spawn(load(c, gw_url.clone(), token.clone(), tally.clone())));
        clients.push(tokio::spawn(conflict(c, gw_url.clone(), token.clone(), shared_id.clone(), tally.clone())));
    }

    // Midway, one patient-record and one orders instance are stopped as Kubernetes does.
    wait_until("load before the stop", Duration::from_secs(120), || async {
        tally.requests.load(Ordering::Relaxed) >= BEFORE_STOP
    })
    .await;
    let at_stop = tally.requests.load(Ordering::Relaxed);
    // The gateway's log from here on: its take-outs at start-up (every instance was down while
    // starting) are before.
    let gateway_log_at_stop = gateway.log().len();
    pr1.terminate();
    or1.terminate();
    let stop_within = Duration::from_secs(DRAIN_SECS + WORKERS_TIMEOUT_SECS + 30);
    let stopping = Instant::now();
    let (pr1_exit, or1_exit) = tokio::join!(pr1.wait_exit(stop_within), or1.wait_exit(stop_within));
    let stop_took = stopping.elapsed();
    let at_exit = tally.requests.load(Ordering::Relaxed);
    assert!(pr1_exit.success(), "patient-record-1 exited with {pr1_exit}; log:\n{}", pr1.log_tail());
    assert!(or1_exit.success(), "orders-1 exited with {or1_exit}; log:\n{}", or1.log_tail());
    assert_stopped_in_order(&pr1);
    assert_stopped_in_order(&or1);
    // Both served requests before the stop, and the gateway took each out while it drained —
    // by its health check (`/readyz` 503 `draining`), before the listener closed.
    assert_served_before_stop(&pr1);
    assert_served_before_stop(&or1);
    let since_stop = plain(&gateway.log()[gateway_log_at_stop..]);
    assert_taken_out_while_draining(&since_stop, &pr1, &url(0));
    assert_taken_out_while_draining(&since_stop, &or1, &url(2));

    // More load on the survivors, then the clients stop.
    wait_until("load after the stop", Duration::from_secs(120), || async {
        tally.requests.load(Ordering::Relaxed) >= at_exit + AFTER_EXIT
    })
    .await;
    tally.stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.unwrap();
    }
    let requests = tally.requests.load(Ordering::Relaxed);
    let failures = tally.failures.lock().await.clone();
    assert!(failures.is_empty(), "{} of {requests} requests failed:\n{}", failures.len(), failures.join("\n"));

    // (b) No lost update: the history is versions 1..=n with n the current version, every version
    // after the first written by one PUT whose `If-Match` named the version just before it;
    // every 200 made the version it reported. A 412 may have made a version too: a PUT the
    // gateway sent again after the connection broke, whose first attempt had committed (the
    // second then no longer matches) — never one with a stale `If-Match`.
    let puts = tally.puts.lock().await.clone();
    let successes = puts.iter().filter(|p| p.made.is_some()).count() as i64;
    let conflicts = tally.conflicts.load(Ordering::Relaxed);
    assert!(successes > 0);
    let current = call(&http, &token, reqwest::Method::GET, format!("{gw_url}/fhir/Patient/{shared_id}"), &[], None)
        .await
        .unwrap();
    let latest: i64 = current.2["meta"]["versionId"].as_str().unwrap().parse().unwrap();
    let history = call(
        &http,
        &token,
        reqwest::Method::GET,
        format!("{gw_url}/fhir/Patient/{shared_id}/_history?_count=1000"),
        &[],
        None,
    )
    .await
    .unwrap();
    assert_eq!(history.0, 200);
    let mut versions: Vec<(i64, String)> = history.2["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let version = e["resource"]["meta"]["versionId"].as_str().unwrap().parse().unwrap();
            (version, e["resource"]["telecom"][0]["value"].as_str().unwrap_or_default().to_owned())
        })
        .collect();
    versions.sort_unstable();
    let numbers: Vec<i64> = versions.iter().map(|(v, _)| *v).collect();
    assert_eq!(numbers, (1..=latest).collect::<Vec<i64>>(), "the history is every version up to the current one");
    let by_phone: std::collections::HashMap<&str, &Put> = puts.iter().map(|p| (p.phone.as_str(), p)).collect();
    let mut committed_412 = 0;
    for (version, phone) in &versions[1..] {
        let put = by_phone
            .get(phone.as_str())
            .unwrap_or_else(|| panic!("version {version} ({phone}) was made by no PUT that was answered"));
        assert_eq!(put.base, version - 1, "version {version} was written over version {}: a lost update", put.base);
        match put.made {
            Some(made) => assert_eq!(made, *version, "the 200 of {phone} reported version {made}"),
            None => committed_412 += 1,
        }
    }
    for put in puts.iter().filter(|p| p.made.is_some()) {
        assert!(
            versions.iter().any(|(v, phone)| *phone == put.phone && Some(*v) == put.made),
            "the 200 of {} (version {:?}) is not in the history: a lost update",
            put.phone,
            put.made
        );
    }
    assert_eq!(latest, 1 + successes + committed_412);

    // (c) Every order placed produced exactly one OML^O33, queued for the registered lab; the
    // outbox holds nothing unpublished.
    let orders = tally.orders.lock().await.clone();
    let db = Database::connect(cluster.clinical_db.as_str()).await.unwrap();
    let placed = orders.len() as i64;
    wait_until("an OML^O33 for every order", Duration::from_secs(60), || async {
        count(
            &db,
            "SELECT COUNT(DISTINCT subject) FROM hl7_messages WHERE direction = 'out' AND message_type = 'OML^O33'",
        )
        .await
            >= placed
    })
    .await;
    wait_until("an empty outbox", Duration::from_secs(30), || async {
        count(&db, "SELECT COUNT(*) FROM outbox WHERE published_at IS NULL").await == 0
    })
    .await;
    let messages =
        count(&db, "SELECT COUNT(*) FROM hl7_messages WHERE direction = 'out' AND message_type = 'OML^O33'").await;
    assert_eq!(messages, placed, "one OML^O33 per order, none duplicated");
    let subjects: Vec<String> = db
        .query_all_raw(Statement::from_string(
            db.get_database_backend(),
            format!(
                "SELECT subject FROM hl7_messages WHERE direction = 'out' AND message_type = 'OML^O33' \
                 AND endpoint_id = '{endpoint_id}'"
            ),
        ))
        .await
        .unwrap()
        .iter()
        .map(|r| r.try_get_by_index::<String>(0).unwrap())
        .collect();
    let mut expected: Vec<String> = orders.iter().map(|id| format!("ServiceRequest/{id}")).collect();
    let mut subjects_sorted = subjects.clone();
    subjects_sorted.sort();
    expected.sort();
    assert_eq!(subjects_sorted, expected, "the messages name exactly the orders placed, for the registered lab");
    let events = count(&db, "SELECT COUNT(*) FROM outbox WHERE topic = 'order.placed'").await;
    assert_eq!(events, placed, "one order.placed per order");

    // The rest stops gracefully too (the gateway flushing its audit queue).
    others.iter().for_each(Node::terminate);
    gateway.terminate();
    for node in &mut others {
        let status = node.wait_exit(stop_within).await;
        assert!(status.success(), "{} exited with {status}", node.name);
    }
    let status = gateway.wait_exit(stop_within).await;
    assert!(status.success(), "gateway exited with {status}; log:\n{}", gateway.log_tail());
    let gateway_log = gateway.log();
    assert!(gateway_log.contains("audit trail flushed"), "{}", gateway.log_tail());
    let lines = |needle: &str| gateway_log.lines().filter(|l| l.contains(needle)).count();
    let (taken_out, failed_over) = (lines("upstream instance taken out"), lines("upstream request failed"));

    eprintln!(
        "scale-out: {requests} requests by {} clients ({at_stop} before the stop, {} during it, {} after), \
         0 failed; {successes} conditional updates succeeded and {conflicts} were refused with 412 \
         ({committed_412} of them after their first attempt had committed); \
         {placed} orders placed, {messages} OML^O33 queued, 0 unpublished events; \
         stop of 2 instances took {:.1} s (drain {DRAIN_SECS} s); gateway: {taken_out} take-outs logged (start-up, the stop, the final stop), \
         {failed_over} upstream attempts failed (retried or not); setup {:.1} s, total {:.1} s",
        2 * CLIENTS,
        at_exit - at_stop,
        requests - at_exit,
        stop_took.as_secs_f64(),
        setup.as_secs_f64(),
        started.elapsed().as_secs_f64(),
    );
}
