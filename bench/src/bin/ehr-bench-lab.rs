//! `ehr-bench-lab`: throughput of the HL7 v2 layer and of lab-result ingest, end to end.
//!
//! 1. **parse** — a JAHIS OUL^R22 (ISO-2022-JP, 10 results) decoded, parsed and read into
//!    typed results (`charset::decode` + `Message::parse` + `parse_lab_results`), and parsed
//!    alone, on one core: MB/s and messages/s.
//! 2. **ingest** — the real application (target `all`, as the test kit builds it) with its MLLP
//!    listener; `--connections` lab connections send `--messages` OUL^R22 result messages (each
//!    answering its own order, `--results` OBX each) and wait for each ACK. Reported: messages/s
//!    acknowledged (checked, logged and the event committed), and messages/s filed (until every
//!    Observation and DiagnosticReport exists, through the event bus and the consumers).
//!
//! See `docs/performance.md`.

use clap::{Parser, ValueEnum};
use ehr_app::Target;
use ehr_auth::{Claims, DevSigner};
use ehr_bench::results_message;
use ehr_core::{Clock, SystemClock};
use ehr_hl7v2::net::{MllpConnection, MllpTimeouts};
use ehr_hl7v2::{Charset, Message, charset, parse_lab_results};
use serde_json::{Value, json};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Backend {
    Sqlite,
    Postgres,
}

#[derive(Debug, Parser)]
#[command(name = "ehr-bench-lab")]
struct Args {
    #[arg(long, value_enum, default_value = "sqlite")]
    backend: Backend,
    /// Result messages to ingest.
    #[arg(long, default_value_t = 2000)]
    messages: usize,
    /// Concurrent lab connections.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// OBX results per message.
    #[arg(long, default_value_t = 10)]
    results: usize,
    /// Parse iterations.
    #[arg(long, default_value_t = 20_000)]
    parse_iterations: usize,
    #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432/postgres")]
    postgres_url: String,
    /// Redis for the event bus and the gateway (required with PostgreSQL).
    #[arg(long)]
    redis_url: Option<String>,
}

fn parse_bench(iterations: usize, results: usize) -> Result<(), String> {
    let text = results_message("sr-0001", "P-0001", results, "C0000001")?;
    let wire = charset::encode(&text, Charset::Iso2022Jp).map_err(|e| e.to_string())?.into_owned();
    let mut checksum = 0usize;
    let start = Instant::now();
    for _ in 0..iterations {
        let decoded = charset::decode(&wire).map_err(|e| e.to_string())?;
        let msg = Message::parse(&decoded).map_err(|e| e.to_string())?;
        let parsed = parse_lab_results(&msg).map_err(|e| e.to_string())?;
        checksum += parsed.orders[0].observations.len();
    }
    let full = start.elapsed();
    let start = Instant::now();
    for _ in 0..iterations {
        let msg = Message::parse(&text).map_err(|e| e.to_string())?;
        checksum += msg.segment_count();
    }
    let parse_only = start.elapsed();
    let mb = (wire.len() * iterations) as f64 / 1e6;
    println!("parse: OUL^R22, {results} OBX, {} bytes on the wire (ISO-2022-JP), {iterations} iterations", wire.len());
    println!(
        "  decode + parse + typed results: {:>8.1} MB/s {:>9.0} msg/s",
        mb / full.as_secs_f64(),
        iterations as f64 / full.as_secs_f64()
    );
    println!(
        "  parse only (UTF-8 text):        {:>8.1} MB/s {:>9.0} msg/s   (checksum {checksum})",
        (text.len() * iterations) as f64 / 1e6 / parse_only.as_secs_f64(),
        iterations as f64 / parse_only.as_secs_f64()
    );
    Ok(())
}

fn token(signer: &DevSigner) -> Result<String, String> {
    let now = SystemClock.now().timestamp();
    let claims = Claims {
        iss: ehr_auth::DEV_ISSUER.into(),
        sub: "ehr-bench-lab".into(),
        exp: now + 3600,
        iat: now,
        tenant: "bench".into(),
        scope: "user/*.cruds user/Connection.crus user/LabMessage.crus".into(),
        ..Claims::default()
    };
    signer.sign(&claims).map_err(|e| e.to_string())
}

async fn ingest_bench(args: &Args) -> Result<(), String> {
    let pg = (args.backend == Backend::Postgres).then_some(args.postgres_url.as_str());
    let mut scratch = ehr_bench::Scratch::new("ehr-bench-lab", pg, args.redis_url.as_deref()).await?;
    let dir = scratch.dir.clone();
    let config = &mut scratch.config;
    config.lab.listen = Some("127.0.0.1:0".into());
    config.lab.poll_interval_ms = 50;
    // Orders go out as batch files (instant, always accepted): the benchmark measures results.
    config.lab.file_root = dir.join("lab-files");
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let app = ehr_app::build(&scratch.config, Target::All, clock).await.map_err(|e| format!("app: {e}"))?;
    let mllp = app.lab_listener.ok_or("no MLLP listener")?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.map_err(|e| e.to_string())?;
    let base = format!("http://{}", listener.local_addr().map_err(|e| e.to_string())?);
    let router = app.router.clone();
    tokio::spawn(async move {
        let _ = axum::serve(listener, router.into_make_service_with_connect_info::<std::net::SocketAddr>()).await;
    });
    let signer = DevSigner::new().map_err(|e| e.to_string())?;
    let bearer = token(&signer)?;
    let http = reqwest::Client::new();
    let post = |path: &str, body: Value| {
        http.post(format!("{base}{path}"))
            .bearer_auth(&bearer)
            .header("content-type", "application/fhir+json")
            .body(body.to_string())
            .send()
    };
    let resp = post(
        "/lab/endpoints",
        json!({"name": "bench lab", "labFacility": "LABCO", "labApplication": "LABSYS", "ourFacility": "HOSP",
               "ourApplication": "HIS", "transport": "file", "address": "bench", "isDefault": true}),
    )
    .await
    .map_err(|e| e.to_string())?;
    if resp.status().as_u16() != 201 {
        return Err(format!("lab endpoint: {}", resp.status()));
    }
    let patient = json!({"resourceType": "Patient",
        "identifier": [{"system": "urn:oid:1.2.392.100495.20.3.51.11319999999", "value": "P-0001"}],
        "name": [{"family": "山田", "given": ["花子"]}], "gender": "female", "birthDate": "1970-01-02"});
    let resp = post("/fhir/Patient", patient).await.map_err(|e| e.to_string())?;
    let pid = resp.json::<Value>().await.map_err(|e| e.to_string())?["id"].as_str().unwrap_or_default().to_owned();
    // Active lab orders, sent to the lab (as files) before their results arrive.
    println!("ingest ({:?}): placing {} orders…", args.backend, args.messages);
    let mut orders = Vec::with_capacity(args.messages);
    for _ in 0..args.messages {
        let sr = json!({"resourceType": "ServiceRequest", "status": "active", "intent": "order",
            "category": [{"coding": [{"system": "http://snomed.info/sct", "code": "108252007"}]}],
            "code": {"coding": [{"system": "http://medis.or.jp/CodeSystem/master-JLAC10-17digits", "code": "3B035000002327201"}]},
            "subject": {"reference": format!("Patient/{pid}")}});
        let resp = post("/fhir/ServiceRequest", sr).await.map_err(|e| e.to_string())?;
        orders
            .push(resp.json::<Value>().await.map_err(|e| e.to_string())?["id"].as_str().unwrap_or_default().to_owned());
    }
    let sent_at = Instant::now();
    loop {
        let out = dir.join("lab-files").join("bench").join("bench").join("out");
        let n = std::fs::read_dir(&out).map(|d| d.count()).unwrap_or(0);
        if n >= orders.len() {
            break;
        }
        if sent_at.elapsed() > Duration::from_secs(300) {
            return Err(format!("only {n} of {} orders reached the lab", orders.len()));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!("  orders sent to the lab in {:.1} s", sent_at.elapsed().as_secs_f64());
    let mut frames = Vec::with_capacity(orders.len());
    for (i, placer) in orders.iter().enumerate() {
        let text = results_message(placer, "P-0001", args.results, &format!("C{i:08}"))?;
        frames.push(charset::encode(&text, Charset::Iso2022Jp).map_err(|e| e.to_string())?.into_owned());
    }
    let frames = Arc::new(frames);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..args.connections {
        let frames = frames.clone();
        let n = args.connections;
        tasks.push(tokio::spawn(async move {
            let mut conn = MllpConnection::connect(mllp, MllpTimeouts::default()).await.map_err(|e| e.to_string())?;
            let mut refused = 0usize;
            for frame in frames.iter().skip(c).step_by(n) {
                let reply = conn.exchange(frame).await.map_err(|e| e.to_string())?;
                if !String::from_utf8_lossy(&reply).contains("MSA|AA") {
                    refused += 1;
                }
            }
            Ok::<usize, String>(refused)
        }));
    }
    let mut refused = 0;
    for t in tasks {
        refused += t.await.map_err(|e| e.to_string())??;
    }
    let acked = start.elapsed();
    let expected = args.messages;
    if refused > 0 {
        return Err(format!("{refused} of {expected} result messages refused"));
    }
    let mut filed = 0u64;
    let deadline = Instant::now() + Duration::from_secs(600);
    while Instant::now() < deadline {
        let resp = http
            .get(format!("{base}/fhir/DiagnosticReport?_summary=count"))
            .bearer_auth(&bearer)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        filed = resp.json::<Value>().await.map_err(|e| e.to_string())?["total"].as_u64().unwrap_or(0);
        if filed as usize >= expected {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let total = start.elapsed();
    println!(
        "  {} messages × {} OBX over {} MLLP connections: acknowledged {:.0} msg/s ({:.1} s), filed {:.0} msg/s = {:.0} Observations/s ({:.1} s), refused {refused}",
        expected,
        args.results,
        args.connections,
        expected as f64 / acked.as_secs_f64(),
        acked.as_secs_f64(),
        filed as f64 / total.as_secs_f64(),
        (filed as usize * args.results) as f64 / total.as_secs_f64(),
        total.as_secs_f64(),
    );
    let mut app = app;
    app.stop_workers(Duration::from_secs(5)).await;
    drop(app);
    scratch.remove().await;
    if refused > 0 || (filed as usize) < expected {
        return Err(format!("{refused} refused, {filed} of {expected} filed"));
    }
    Ok(())
}

fn main() -> ExitCode {
    let args = Args::parse();
    if let Err(e) = parse_bench(args.parse_iterations, args.results) {
        eprintln!("parse benchmark failed: {e}");
        return ExitCode::FAILURE;
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(ingest_bench(&args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ingest benchmark failed: {e}");
            ExitCode::FAILURE
        }
    }
}
