//! `ehr-bench suite`: the standard workloads in one command, each against the stack's own limit.
//!
//! For each backend it starts the real application (target `all`, as `ehr serve` runs it) on a
//! fresh database, loads a seeded data set, and measures, after a warm-up that is not counted:
//!
//! | workload | what one operation is |
//! |---|---|
//! | create | `POST /fhir/Patient` (a JP Core Patient) |
//! | read | `GET /fhir/Patient/{id}` of a random loaded Patient |
//! | search | one of the seven searches of the `ehr-bench` mix |
//! | transaction | `POST /fhir` transaction Bundle: a Patient and two Observations (`urn:uuid`) |
//! | export | `Patient/$export` kick-off → status polled every 20 ms → complete (NDJSON) |
//! | HL7 ingest | one OUL^R22 result message (5 OBX) over MLLP, until its `MSA|AA` |
//! | login+MFA | authorize (PKCE) → password → TOTP → code → token, per enrolled user |
//!
//! and the limit of the stack on the same box, with the same load generator and pool size:
//! **bare read** — a minimal axum handler answering `SELECT content FROM resources WHERE …` of
//! the same rows through the same driver (sea-orm over sqlx); **bare insert** — pgbench-style
//! single-row `INSERT`s of the same Patient JSON through the same driver, no HTTP. The report
//! gives `read / bare read` and `create / bare insert`.
//!
//! Peak memory is the process's resident high-water mark (`VmHWM`, reset before each workload
//! via `/proc/self/clear_refs`): server and load generator share the process. Random choices and
//! synthetic data come from `--seed`.

use super::{
    BackendChoice, Http, LABS, PatientRec, Rng, Row, SEARCH_KINDS, id_from_location, load_worker, micros,
    search_request, synthetic_observation, synthetic_patient,
};
use axum::extract::{Path, State};
use clap::Parser;
use ehr_app::Target;
use ehr_auth::{Claims, DevSigner};
use ehr_core::{Clock, SystemClock};
use ehr_hl7v2::net::{MllpConnection, MllpTimeouts};
use ehr_hl7v2::{Charset, charset};
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE};
use sea_orm::{ConnectionTrait, Database, DatabaseConnection, DbBackend, Statement};
use serde_json::{Value, json};
use std::future::Future;
use std::process::ExitCode;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const TENANT: &str = "bench";
const PASSWORD: &str = "Correct-Horse-42-battery";
/// OBX results per HL7 message.
const HL7_RESULTS: usize = 5;

/// The standard workloads against SQLite and PostgreSQL, with the bare-stack baselines.
#[derive(Debug, Parser)]
#[command(name = "ehr-bench suite")]
pub struct SuiteArgs {
    /// Which database backend(s) to benchmark.
    #[arg(long, value_enum, default_value = "both")]
    backend: BackendChoice,
    /// CI-sized run (about a minute for both backends) instead of the full one (under 10).
    #[arg(long)]
    quick: bool,
    /// In-flight requests of the HTTP workloads and the baselines (export runs one at a time,
    /// HL7 ingest and login use at most 4).
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// Admin URL of PostgreSQL; a database `ehr_bench_<uuid>` is created next to it and dropped.
    #[arg(long, env = "TEST_POSTGRES_URL", default_value = "postgres://postgres@127.0.0.1:5432/postgres")]
    postgres_url: String,
    /// Redis for the gateway's state and the event bus, as in production.
    #[arg(long, default_value = "redis://127.0.0.1:6379")]
    redis_url: String,
    /// Run without Redis (in-process gateway state and event bus).
    #[arg(long)]
    no_redis: bool,
    /// Also write the report as Markdown to this file.
    #[arg(long)]
    out: Option<std::path::PathBuf>,
    /// Seed of the synthetic data and of the random choices.
    #[arg(long, default_value_t = 20261125)]
    seed: u64,
}

/// Sizes of one run.
struct Plan {
    warmup: Duration,
    measure: Duration,
    /// Patients (each with 4 Observations) loaded before the measurements.
    patients: usize,
    /// HL7 result messages: warm-up, measured.
    hl7: (usize, usize),
    /// Logins: warm-up, measured (one user each).
    logins: (usize, usize),
}

impl Plan {
    fn new(quick: bool) -> Self {
        if quick {
            Self {
                warmup: Duration::from_millis(500),
                measure: Duration::from_secs(3),
                patients: 100,
                hl7: (10, 100),
                logins: (4, 24),
            }
        } else {
            Self {
                warmup: Duration::from_secs(2),
                measure: Duration::from_secs(12),
                patients: 1000,
                hl7: (50, 1000),
                logins: (8, 120),
            }
        }
    }
}

/// One line of the report.
struct Line {
    workload: &'static str,
    backend: &'static str,
    row: Row,
    peak_kib: Option<u64>,
    /// (name of the baseline, ops/s of ours divided by the baseline's).
    ratio: Option<(&'static str, f64)>,
}

impl Line {
    fn rate(&self) -> f64 {
        if self.row.secs > 0.0 { self.row.ops as f64 / self.row.secs } else { 0.0 }
    }

    fn markdown(&self) -> String {
        let peak = self.peak_kib.map_or("?".to_owned(), |k| format!("{:.0}", k as f64 / 1024.0));
        let ratio = match self.ratio {
            Some((name, r)) => format!("{r:.2} of {name}"),
            None if self.workload.starts_with("bare") => "baseline".to_owned(),
            None => String::new(),
        };
        format!(
            "| {} | {} | {} | {} | {} | {:.1} | {:.2} | {:.2} | {:.2} | {peak} | {ratio} |",
            self.workload,
            self.backend,
            self.row.concurrency,
            self.row.ops,
            self.row.errors,
            self.rate(),
            self.row.percentile(50.0),
            self.row.percentile(95.0),
            self.row.percentile(99.0),
        )
    }
}

const TABLE_HEADER: &str = "| workload | backend | conc | ops | errors | ops/s | p50 ms | p95 ms | p99 ms | peak RSS MiB | ours / bare |\n|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|";

/// The wall clock plus an offset the login workload moves by whole TOTP steps: a code is
/// accepted once per user and step, and a person waits for the next one.
#[derive(Debug, Default)]
struct SteppedClock(AtomicI64);

impl Clock for SteppedClock {
    fn now(&self) -> chrono::DateTime<chrono::Utc> {
        SystemClock.now() + chrono::TimeDelta::seconds(self.0.load(Ordering::Relaxed))
    }
}

/// When a load phase ends: after a time from its start, after a number of operations, or at
/// the first of both.
#[derive(Clone, Copy)]
struct Until {
    duration: Option<Duration>,
    end: Option<usize>,
}

/// Runs `job(i)` for i = 0, 1, … on `concurrency` workers until `until`; returns the latencies
/// (µs), the failed operations and the seconds taken. `next` carries on between phases, so a
/// warm-up and its measurement never repeat an operation.
async fn drive<F, Fut>(
    concurrency: usize,
    until: Until,
    next: &Arc<AtomicUsize>,
    job: &Arc<F>,
) -> (Vec<u32>, usize, f64)
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = bool> + Send,
{
    let start = Instant::now();
    let deadline = until.duration.map(|d| start + d);
    let workers: Vec<_> = (0..concurrency.max(1))
        .map(|_| {
            let (next, job) = (next.clone(), job.clone());
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                let mut errors = 0;
                loop {
                    if deadline.is_some_and(|d| Instant::now() >= d) {
                        break;
                    }
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if until.end.is_some_and(|end| i >= end) {
                        break;
                    }
                    let t = Instant::now();
                    let ok = job(i).await;
                    latencies.push(micros(t));
                    if !ok {
                        errors += 1;
                    }
                }
                (latencies, errors)
            })
        })
        .collect();
    let mut latencies = Vec::new();
    let mut errors = 0;
    for w in workers {
        match w.await {
            Ok((l, e)) => {
                latencies.extend(l);
                errors += e;
            }
            Err(_) => errors += 1,
        }
    }
    (latencies, errors, start.elapsed().as_secs_f64())
}

/// A warm-up (not counted) and a measurement of `job`, with the peak memory of the measurement.
async fn measure<F, Fut>(
    workload: &'static str,
    backend: &'static str,
    concurrency: usize,
    warm: Until,
    run: Until,
    job: F,
) -> Line
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = bool> + Send,
{
    let job = Arc::new(job);
    let next = Arc::new(AtomicUsize::new(0));
    let (_, warm_errors, _) = drive(concurrency, warm, &next, &job).await;
    ehr_bench::reset_peak();
    let (latencies, errors, secs) = drive(concurrency, run, &next, &job).await;
    let row = Row::new(workload, concurrency, latencies, errors + warm_errors, secs);
    let line = Line { workload, backend, row, peak_kib: ehr_bench::peak_kib(), ratio: None };
    println!("{}", line.markdown());
    line
}

fn timed(d: Duration) -> Until {
    Until { duration: Some(d), end: None }
}

fn counted(end: usize) -> Until {
    Until { duration: None, end: Some(end) }
}

fn sign(signer: &DevSigner, scope: &str) -> Result<String, String> {
    let now = SystemClock.now().timestamp();
    let claims = Claims {
        iss: ehr_auth::DEV_ISSUER.into(),
        sub: "ehr-bench-suite".into(),
        exp: now + 6 * 3600,
        iat: now,
        tenant: TENANT.into(),
        scope: scope.into(),
        ..Claims::default()
    };
    signer.sign(&claims).map_err(|e| format!("signing a dev token: {e}"))
}

/// `ehr-bench suite …` (`argv` starts with `suite`).
pub fn main(argv: Vec<String>) -> ExitCode {
    let args = SuiteArgs::parse_from(argv);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the tokio runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let backends: &[&'static str] = match args.backend {
        BackendChoice::Sqlite => &["sqlite"],
        BackendChoice::Postgres => &["postgres"],
        BackendChoice::Both => &["sqlite", "postgres"],
    };
    let plan = Plan::new(args.quick);
    let started = Instant::now();
    let machine = runtime.block_on(machine(&args, backends));
    println!("{machine}");
    println!("{TABLE_HEADER}");
    let mut lines = Vec::new();
    let mut failed = false;
    for backend in backends {
        match runtime.block_on(run_backend(backend, &args, &plan)) {
            Ok(mut l) => lines.append(&mut l),
            Err(e) => {
                eprintln!("{backend}: suite aborted: {e}");
                failed = true;
            }
        }
    }
    let errors: usize = lines.iter().map(|l| l.row.errors).sum();
    let mut report = format!("{machine}\n{TABLE_HEADER}\n");
    for l in &lines {
        report.push_str(&l.markdown());
        report.push('\n');
    }
    report.push_str(&format!(
        "\n{} run, {:.0} s in all; {errors} failed operations.\n",
        if args.quick { "`--quick`" } else { "Full" },
        started.elapsed().as_secs_f64()
    ));
    println!("\n{report}");
    if let Some(path) = &args.out
        && let Err(e) = std::fs::write(path, &report)
    {
        eprintln!("cannot write {}: {e}", path.display());
        failed = true;
    }
    if errors > 0 {
        eprintln!("{errors} operation(s) failed");
        failed = true;
    }
    if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS }
}

/// The machine description for the report: cores, CPU model, memory, PostgreSQL version.
async fn machine(args: &SuiteArgs, backends: &[&str]) -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name").and_then(|r| r.split_once(':')).map(|(_, m)| m.trim().to_owned()))
        .unwrap_or_else(|| "?".into());
    let cores = std::thread::available_parallelism().map_or(0, std::num::NonZero::get);
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_gib = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or("?".to_owned(), |k| format!("{:.1} GiB", k / 1024.0 / 1024.0));
    let mut postgres = "not used".to_owned();
    if backends.contains(&"postgres") {
        postgres = match Database::connect(args.postgres_url.as_str()).await {
            Ok(conn) => {
                let version = conn
                    .query_one_raw(Statement::from_string(DbBackend::Postgres, "SHOW server_version"))
                    .await
                    .ok()
                    .flatten()
                    .and_then(|r| r.try_get::<String>("", "server_version").ok());
                let _ = conn.close().await;
                version.unwrap_or_else(|| "?".into())
            }
            Err(e) => format!("unreachable ({e})"),
        };
    }
    let date = SystemClock.now().format("%Y-%m-%d %H:%M UTC");
    let redis = if args.no_redis { "none (in-process state)".to_owned() } else { args.redis_url.clone() };
    format!(
        "Run {date}: {cores} cores ({model}), {mem_gib} RAM; PostgreSQL {postgres}; Redis {redis}; \
         server and load generator in one process. Concurrency {} (export 1, HL7 and login 4); seed {}.\n",
        args.concurrency, args.seed
    )
}

/// The application under test, served on a loopback port, and what the workloads need of it.
struct Stack {
    app: ehr_app::App,
    server: tokio::task::JoinHandle<()>,
    root: String,
    http: Http,
    /// A `system/*` token for `$export`.
    system_token: String,
    clock: Arc<SteppedClock>,
    database_url: String,
    max_connections: u32,
    /// Where the lab's batch files (the orders) are written.
    lab_files: std::path::PathBuf,
}

async fn start(scratch: &mut ehr_bench::Scratch, database_url: String) -> Result<Stack, String> {
    let dir = scratch.dir.clone();
    let config = &mut scratch.config;
    config.database.url = Some(database_url.clone().into());
    config.gateway.rate_limit.login_per_sec = 1e6;
    config.gateway.rate_limit.login_burst = 1_000_000;
    config.export.poll_interval_ms = 20;
    config.export.root = dir.join("exports");
    config.lab.listen = Some("127.0.0.1:0".into());
    config.lab.poll_interval_ms = 50;
    // Orders go out as batch files (instant, always accepted): the workload measures results.
    config.lab.file_root = dir.join("lab-files");
    let max_connections = config.database.max_connections;
    let clock = Arc::new(SteppedClock::default());
    let app = ehr_app::build(config, Target::All, clock.clone()).await.map_err(|e| format!("building the app: {e}"))?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.map_err(|e| format!("bind: {e}"))?;
    let address = listener.local_addr().map_err(|e| format!("local addr: {e}"))?;
    let router = app.router.clone();
    let server = tokio::spawn(async move {
        let service = router.into_make_service_with_connect_info::<std::net::SocketAddr>();
        if let Err(e) = axum::serve(listener, service).await {
            eprintln!("server stopped: {e}");
        }
    });
    let signer = DevSigner::new().map_err(|e| format!("dev signer: {e}"))?;
    let token = sign(&signer, "user/*.cruds user/Connection.crus user/LabMessage.crus")?;
    let system_token = sign(&signer, "system/*.cruds")?;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| format!("http client: {e}"))?;
    let root = format!("http://{address}");
    let http = Http {
        client,
        base: format!("{root}/fhir").into(),
        auth: format!("Bearer {token}").into(),
        errors: Arc::new(Mutex::new(Vec::new())),
    };
    let lab_files = dir.join("lab-files");
    Ok(Stack { app, server, root, http, system_token, clock, database_url, max_connections, lab_files })
}

async fn run_backend(backend: &'static str, args: &SuiteArgs, plan: &Plan) -> Result<Vec<Line>, String> {
    let pg = (backend == "postgres").then_some(args.postgres_url.as_str());
    let redis = (!args.no_redis).then_some(args.redis_url.as_str());
    let mut scratch = ehr_bench::Scratch::new("ehr-bench-suite", pg, redis).await?;
    let database_url = match scratch.postgres_database_url() {
        Some(url) => url,
        None => format!("sqlite://{}?mode=rwc", scratch.dir.join("ehr.db").display()),
    };
    let result = match start(&mut scratch, database_url).await {
        Ok(stack) => {
            let result = workloads(backend, args, plan, &stack).await;
            let kept = stack.http.errors.lock().map(|e| e.clone()).unwrap_or_default();
            for e in kept {
                eprintln!("  {backend}: {e}");
            }
            let mut app = stack.app;
            app.stop_workers(Duration::from_secs(5)).await;
            stack.server.abort();
            let _ = stack.server.await;
            drop(app);
            result
        }
        Err(e) => Err(e),
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    scratch.remove().await;
    result
}

async fn workloads(backend: &'static str, args: &SuiteArgs, plan: &Plan, stack: &Stack) -> Result<Vec<Line>, String> {
    let c = args.concurrency.max(1);
    let seed = args.seed;
    let http = &stack.http;
    let phase = || timed(plan.measure);
    let warm = || timed(plan.warmup);

    // The data set (not measured): patients with 4 laboratory Observations each.
    let next = Arc::new(AtomicUsize::new(0));
    let loaders: Vec<_> =
        (0..c).map(|_| tokio::spawn(load_worker(http.clone(), seed, 4, next.clone(), plan.patients))).collect();
    let mut patients = Vec::new();
    for l in loaders {
        let out = l.await.map_err(|e| format!("load worker: {e}"))?;
        if out.errors > 0 {
            return Err(format!("{} errors while loading the data set", out.errors));
        }
        patients.extend(out.patients);
    }
    if patients.is_empty() {
        return Err("no patient could be created".into());
    }
    if let Some(url) = scratch_analyze_url(backend, &stack.database_url) {
        let conn = Database::connect(url).await.map_err(|e| format!("connect for ANALYZE: {e}"))?;
        conn.execute_unprepared("ANALYZE").await.map_err(|e| format!("ANALYZE: {e}"))?;
        let _ = conn.close().await;
    }
    let patients: Arc<Vec<PatientRec>> = Arc::new(patients);
    let mut lines = Vec::new();

    // create
    let h = http.clone();
    lines.push(
        measure("create", backend, c, warm(), phase(), move |i| {
            let h = h.clone();
            async move {
                let mut rng = Rng::new(seed ^ 0xC0FF_EE00 ^ (i as u64).wrapping_mul(0x9E37_79B9));
                let body = synthetic_patient(&mut rng, 1_000_000 + i).to_string();
                h.send("create", h.post("/Patient", body)).await.is_some()
            }
        })
        .await,
    );

    // read
    let (h, p) = (http.clone(), patients.clone());
    lines.push(
        measure("read", backend, c, warm(), phase(), move |i| {
            let (h, p) = (h.clone(), p.clone());
            async move {
                let mut rng = Rng::new(seed ^ 0x5EAD ^ (i as u64).wrapping_mul(0x9E37_79B9));
                let path = format!("/Patient/{}", p[rng.below(p.len())].id);
                h.send("read", h.get(&path)).await.is_some()
            }
        })
        .await,
    );

    // search
    let (h, p) = (http.clone(), patients.clone());
    lines.push(
        measure("search", backend, c, warm(), phase(), move |i| {
            let (h, p) = (h.clone(), p.clone());
            async move {
                let mut rng = Rng::new(seed ^ 0x5EA4C ^ (i as u64).wrapping_mul(0x9E37_79B9));
                let kind = rng.below(SEARCH_KINDS.len());
                let (path, query) = search_request(&mut rng, kind, &p);
                h.send(SEARCH_KINDS[kind], h.get(path).query(&query)).await.is_some()
            }
        })
        .await,
    );

    // transaction
    let h = http.clone();
    lines.push(
        measure("transaction", backend, c, warm(), phase(), move |i| {
            let h = h.clone();
            async move {
                let mut rng = Rng::new(seed ^ 0x7A ^ (i as u64).wrapping_mul(0x9E37_79B9));
                let body = transaction_bundle(&mut rng, 2_000_000 + i).to_string();
                h.send("transaction", h.post("", body)).await.is_some()
            }
        })
        .await,
    );

    // export
    let (client, root, token) = (http.client.clone(), stack.root.clone(), stack.system_token.clone());
    let errors = http.errors.clone();
    lines.push(
        measure("export (Patient/$export)", backend, 1, counted(1), phase(), move |_| {
            let (client, root, token, errors) = (client.clone(), root.clone(), token.clone(), errors.clone());
            async move {
                match export_once(&client, &root, &token).await {
                    Ok(()) => true,
                    Err(e) => {
                        if let Ok(mut kept) = errors.lock() {
                            kept.push(format!("export: {e}"));
                        }
                        false
                    }
                }
            }
        })
        .await,
    );

    lines.push(hl7_ingest(backend, plan, stack, &patients[0]).await?);
    lines.push(login_mfa(backend, plan, stack).await?);

    // The limit of the stack: the same rows through the same driver, without the application.
    let bare = Bare::connect(&stack.database_url, stack.max_connections).await?;
    let (url, bare_server) = bare_read_server(bare.clone()).await?;
    let client = http.client.clone();
    let p = patients.clone();
    let bare_read = measure("bare read (axum + SELECT)", backend, c, warm(), phase(), move |i| {
        let (client, url, p) = (client.clone(), url.clone(), p.clone());
        async move {
            let mut rng = Rng::new(seed ^ 0x5EAD ^ (i as u64).wrapping_mul(0x9E37_79B9));
            let id = &p[rng.below(p.len())].id;
            match client.get(format!("{url}/{id}")).send().await {
                Ok(resp) if resp.status().is_success() => resp.bytes().await.is_ok(),
                _ => false,
            }
        }
    })
    .await;
    bare.create_insert_table().await?;
    let b = bare.clone();
    let bare_insert = measure("bare insert (1 row)", backend, c, warm(), phase(), move |i| {
        let b = b.clone();
        async move {
            let mut rng = Rng::new(seed ^ 0xC0FF_EE00 ^ (i as u64).wrapping_mul(0x9E37_79B9));
            let body = synthetic_patient(&mut rng, 1_000_000 + i).to_string();
            b.insert(i, body).await
        }
    })
    .await;
    bare_server.abort();
    let _ = bare.conn.clone().close().await;
    let ratio = |ours: &Line, bare: &Line| if bare.rate() > 0.0 { ours.rate() / bare.rate() } else { f64::NAN };
    for l in &mut lines {
        match l.workload {
            "read" => l.ratio = Some(("bare read", ratio(l, &bare_read))),
            "create" | "transaction" => l.ratio = Some(("bare insert", ratio(l, &bare_insert))),
            _ => {}
        }
    }
    lines.push(bare_read);
    lines.push(bare_insert);
    Ok(lines)
}

fn scratch_analyze_url<'a>(backend: &str, url: &'a str) -> Option<&'a str> {
    (backend == "postgres").then_some(url)
}

/// A transaction Bundle: a Patient and two laboratory Observations referring to it by `urn:uuid`.
fn transaction_bundle(rng: &mut Rng, i: usize) -> Value {
    let patient_url = format!("urn:uuid:{}", uuid::Uuid::from_u64_pair(rng.next_u64(), rng.next_u64()));
    let mut entries = vec![json!({
        "fullUrl": patient_url,
        "resource": synthetic_patient(rng, i),
        "request": {"method": "POST", "url": "Patient"}
    })];
    for k in 0..2 {
        let mut obs = synthetic_observation(rng, "placeholder", &LABS[(i + k) % LABS.len()]);
        obs["subject"] = json!({"reference": patient_url});
        entries.push(json!({
            "fullUrl": format!("urn:uuid:{}", uuid::Uuid::from_u64_pair(rng.next_u64(), rng.next_u64())),
            "resource": obs,
            "request": {"method": "POST", "url": "Observation"}
        }));
    }
    json!({"resourceType": "Bundle", "type": "transaction", "entry": entries})
}

/// One `Patient/$export` of the tenant, from kick-off to the complete manifest; the job is
/// deleted afterwards.
async fn export_once(client: &reqwest::Client, root: &str, token: &str) -> Result<(), String> {
    let resp = client
        .get(format!("{root}/fhir/Patient/$export"))
        .bearer_auth(token)
        .header("prefer", "respond-async")
        .header("accept", "application/fhir+json")
        .send()
        .await
        .map_err(|e| e.to_string())?;
    if resp.status().as_u16() != 202 {
        return Err(format!("kick-off: {} {}", resp.status(), resp.text().await.unwrap_or_default()));
    }
    let status =
        resp.headers().get("content-location").and_then(|v| v.to_str().ok()).ok_or("no Content-Location")?.to_owned();
    loop {
        let resp = client.get(&status).bearer_auth(token).send().await.map_err(|e| e.to_string())?;
        match resp.status().as_u16() {
            202 => tokio::time::sleep(Duration::from_millis(20)).await,
            200 => {
                let manifest: Value = resp.json().await.map_err(|e| e.to_string())?;
                if manifest["output"].as_array().is_none_or(Vec::is_empty) {
                    return Err("empty manifest".into());
                }
                break;
            }
            s => return Err(format!("status {s}: {}", resp.text().await.unwrap_or_default())),
        }
    }
    let _ = client.delete(&status).bearer_auth(token).send().await;
    Ok(())
}

/// HL7 ingest: results for active lab orders (sent to the lab as files beforehand), one message
/// per order over 4 MLLP connections; an operation ends with its acknowledgement `MSA|AA`.
async fn hl7_ingest(backend: &'static str, plan: &Plan, stack: &Stack, patient: &PatientRec) -> Result<Line, String> {
    let http = &stack.http;
    let mllp = stack.app.lab_listener.ok_or("no MLLP listener")?;
    let endpoint = json!({"name": "bench lab", "labFacility": "LABCO", "labApplication": "LABSYS",
        "ourFacility": "HOSP", "ourApplication": "HIS", "transport": "file", "address": "bench", "isDefault": true});
    let resp = http
        .client
        .post(format!("{}/lab/endpoints", stack.root))
        .header(AUTHORIZATION, &*http.auth)
        .header(CONTENT_TYPE, "application/json")
        .body(endpoint.to_string())
        .send()
        .await
        .map_err(|e| format!("lab endpoint: {e}"))?;
    if resp.status().as_u16() != 201 {
        return Err(format!("lab endpoint: {} {}", resp.status(), resp.text().await.unwrap_or_default()));
    }
    let total = plan.hl7.0 + plan.hl7.1;
    let mut orders = Vec::with_capacity(total);
    for _ in 0..total {
        let sr = json!({"resourceType": "ServiceRequest", "status": "active", "intent": "order",
            "category": [{"coding": [{"system": "http://snomed.info/sct", "code": "108252007"}]}],
            "code": {"coding": [{"system": "http://medis.or.jp/CodeSystem/master-JLAC10-17digits", "code": "3B035000002327201"}]},
            "subject": {"reference": format!("Patient/{}", patient.id)}});
        let location = http.send("ServiceRequest", http.post("/ServiceRequest", sr.to_string())).await.flatten();
        orders.push(location.as_deref().and_then(id_from_location).ok_or("ServiceRequest not created")?);
    }
    let sent_at = Instant::now();
    let files = stack.lab_files.join("bench").join("bench").join("out");
    while std::fs::read_dir(&files).map_or(0, Iterator::count) < total {
        if sent_at.elapsed() > Duration::from_secs(120) {
            return Err("lab orders did not reach the lab in 120 s".into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut frames = Vec::with_capacity(total);
    for (i, placer) in orders.iter().enumerate() {
        let text = ehr_bench::results_message(placer, &patient.hospital_no, HL7_RESULTS, &format!("C{i:08}"))?;
        frames.push(charset::encode(&text, Charset::Iso2022Jp).map_err(|e| e.to_string())?.into_owned());
    }
    let frames = Arc::new(frames);
    let connections = 4;
    let (warm_end, end) = (plan.hl7.0, total);
    let next = Arc::new(AtomicUsize::new(0));
    let mut results = Vec::new();
    for (phase_end, measured) in [(warm_end, false), (end, true)] {
        if measured {
            ehr_bench::reset_peak();
        }
        let start = Instant::now();
        let tasks: Vec<_> = (0..connections)
            .map(|_| {
                let (frames, next, errors) = (frames.clone(), next.clone(), stack.http.errors.clone());
                tokio::spawn(async move {
                    let mut conn =
                        MllpConnection::connect(mllp, MllpTimeouts::default()).await.map_err(|e| e.to_string())?;
                    let (mut latencies, mut refused) = (Vec::new(), 0usize);
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= phase_end {
                            break;
                        }
                        let t = Instant::now();
                        let reply = conn.exchange(&frames[i]).await.map_err(|e| e.to_string())?;
                        latencies.push(micros(t));
                        let reply = String::from_utf8_lossy(&reply);
                        if !reply.contains("MSA|AA") {
                            refused += 1;
                            if let Ok(mut kept) = errors.lock()
                                && kept.len() < 3
                            {
                                kept.push(format!("HL7 ingest: {}", reply.chars().take(300).collect::<String>()));
                            }
                        }
                    }
                    Ok::<_, String>((latencies, refused))
                })
            })
            .collect();
        let (mut latencies, mut refused) = (Vec::new(), 0);
        for t in tasks {
            let (l, r) = t.await.map_err(|e| e.to_string())??;
            latencies.extend(l);
            refused += r;
        }
        // The counter overshoots by one per connection: the next phase starts at its end.
        next.store(phase_end, Ordering::Relaxed);
        results.push((latencies, refused, start.elapsed().as_secs_f64()));
    }
    let (latencies, refused, secs) = results.pop().ok_or("no measurement")?;
    let warm_refused = results.pop().map_or(0, |r| r.1);
    let row = Row::new("HL7 ingest (OUL^R22, MLLP)", connections, latencies, refused + warm_refused, secs);
    let line =
        Line { workload: "HL7 ingest (OUL^R22, MLLP)", backend, row, peak_kib: ehr_bench::peak_kib(), ratio: None };
    println!("{}", line.markdown());
    Ok(line)
}

/// login+MFA: enrolled users (their first login enrols TOTP; warm-up), then, one TOTP step
/// later, each measured user's whole login: authorize → password → TOTP → code → token.
async fn login_mfa(backend: &'static str, plan: &Plan, stack: &Stack) -> Result<Line, String> {
    let gateway = stack.app.gateway.as_ref().ok_or("no gateway")?;
    let tenant = ehr_core::TenantId::parse(TENANT).map_err(|e| e.to_string())?;
    let now = stack.clock.now().timestamp();
    let client_id = ehr_gateway::ops::bootstrap_tenant(&gateway.store, &gateway.settings, now, &tenant, "Bench", None)
        .await
        .map_err(|e| format!("bootstrap tenant: {e}"))?
        .client_id;
    let users = plan.logins.0 + plan.logins.1;
    let mut accounts = Vec::with_capacity(users);
    for i in 0..users {
        let new = ehr_gateway::admin::NewAccount {
            username: format!("bench-user-{i:04}"),
            display_name: format!("bench user {i}"),
            password: PASSWORD.into(),
            roles: vec!["physician".into()],
            fhir_user: None,
        };
        gateway
            .create_account(&tenant, new, &ehr_gateway::audit::Actor::default())
            .await
            .map_err(|e| format!("account: {e}"))?;
        accounts.push(format!("bench-user-{i:04}"));
    }
    let login = Arc::new(Login {
        client: stack.http.client.clone(),
        root: stack.root.clone(),
        client_id,
        clock: stack.clock.clone(),
        secrets: Mutex::new(vec![None; users]),
        errors: stack.http.errors.clone(),
    });
    // Enrolment of every user (not measured), then the next TOTP step.
    let enrol = login.clone();
    let next = Arc::new(AtomicUsize::new(0));
    let job = Arc::new(move |i: usize| {
        let l = enrol.clone();
        async move { l.run(i).await }
    });
    let (_, enrol_errors, _) = drive(4, counted(users), &next, &job).await;
    if enrol_errors > 0 {
        return Err(format!("{enrol_errors} enrolments failed"));
    }
    stack.clock.0.fetch_add(30, Ordering::Relaxed);
    let l = login.clone();
    let warm_end = plan.logins.0;
    Ok(measure_from("login+MFA", backend, 4, counted(warm_end), counted(users), move |i| {
        let l = l.clone();
        async move { l.run(i).await }
    })
    .await)
}

/// [`measure`] for count-bound phases (the warm-up runs `0..warm.end`, the measurement the rest).
async fn measure_from<F, Fut>(
    workload: &'static str,
    backend: &'static str,
    concurrency: usize,
    warm: Until,
    run: Until,
    job: F,
) -> Line
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = bool> + Send,
{
    let job = Arc::new(job);
    let next = Arc::new(AtomicUsize::new(0));
    let (_, warm_errors, _) = drive(concurrency, warm, &next, &job).await;
    // Workers overshoot the counter by one each; resume exactly after the warm-up.
    next.store(warm.end.unwrap_or(0), Ordering::Relaxed);
    ehr_bench::reset_peak();
    let (latencies, errors, secs) = drive(concurrency, run, &next, &job).await;
    let row = Row::new(workload, concurrency, latencies, errors + warm_errors, secs);
    let line = Line { workload, backend, row, peak_kib: ehr_bench::peak_kib(), ratio: None };
    println!("{}", line.markdown());
    line
}

/// The browser side of a login.
struct Login {
    client: reqwest::Client,
    root: String,
    client_id: String,
    clock: Arc<SteppedClock>,
    /// The TOTP secret of each user once enrolled.
    secrets: Mutex<Vec<Option<String>>>,
    errors: Arc<Mutex<Vec<String>>>,
}

const REDIRECT: &str = "http://127.0.0.1:8765/callback";

impl Login {
    async fn run(&self, i: usize) -> bool {
        match self.flow(i).await {
            Ok(()) => true,
            Err(e) => {
                if let Ok(mut kept) = self.errors.lock() {
                    kept.push(format!("login: {e}"));
                }
                false
            }
        }
    }

    async fn form(&self, path: &str, form: &[(&str, &str)]) -> Result<Value, String> {
        let resp = self
            .client
            .post(format!("{}{path}", self.root))
            .header("accept", "application/json")
            .form(form)
            .send()
            .await
            .map_err(|e| format!("{path}: {e}"))?;
        let status = resp.status();
        let body: Value = resp.json().await.map_err(|e| format!("{path}: {e}"))?;
        if !status.is_success() {
            return Err(format!("{path}: {status} {body}"));
        }
        Ok(body)
    }

    async fn flow(&self, i: usize) -> Result<(), String> {
        use base64::Engine;
        use sha2::Digest;
        let verifier = format!("bench-verifier-{i:08}-{}", uuid::Uuid::from_u64_pair(i as u64, 0x5EED).simple());
        let challenge =
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(verifier.as_bytes()));
        let resp = self
            .client
            .get(format!("{}/auth/authorize", self.root))
            .query(&[
                ("response_type", "code"),
                ("client_id", self.client_id.as_str()),
                ("redirect_uri", REDIRECT),
                ("scope", "user/*.cruds"),
                ("state", "st"),
                ("code_challenge", challenge.as_str()),
                ("code_challenge_method", "S256"),
            ])
            .header("accept", "application/json")
            .send()
            .await
            .map_err(|e| format!("authorize: {e}"))?;
        let body: Value = resp.json().await.map_err(|e| format!("authorize: {e}"))?;
        let request = body["request"].as_str().ok_or_else(|| format!("authorize: {body}"))?.to_owned();
        let username = format!("bench-user-{i:04}");
        let step =
            self.form("/auth/login", &[("request", &request), ("username", &username), ("password", PASSWORD)]).await?;
        let login = step["login"].as_str().ok_or("no login id")?.to_owned();
        let secret = if step["next"] == "enrol" {
            let s = step["secret"].as_str().ok_or("no secret")?.to_owned();
            if let Ok(mut secrets) = self.secrets.lock()
                && let Some(slot) = secrets.get_mut(i)
            {
                *slot = Some(s.clone());
            }
            s
        } else {
            self.secrets.lock().ok().and_then(|s| s.get(i).cloned().flatten()).ok_or("not enrolled")?
        };
        let totp = ehr_auth::TotpSecret::from_base32(&secret).map_err(|e| e.to_string())?;
        let code = totp.code_at(self.clock.now().timestamp());
        let done = self.form("/auth/mfa", &[("login", &login), ("code", &code)]).await?;
        let redirect = done["redirect"].as_str().ok_or("no redirect")?;
        let url = reqwest::Url::parse(redirect).map_err(|e| e.to_string())?;
        let code = url.query_pairs().find(|(k, _)| k == "code").map(|(_, v)| v.into_owned()).ok_or("no code")?;
        let tokens = self
            .form(
                "/auth/token",
                &[
                    ("grant_type", "authorization_code"),
                    ("code", &code),
                    ("redirect_uri", REDIRECT),
                    ("client_id", &self.client_id),
                    ("code_verifier", &verifier),
                ],
            )
            .await?;
        tokens["access_token"].as_str().map(|_| ()).ok_or_else(|| "no access token".into())
    }
}

/// The bare stack: a connection pool of the same driver and size on the same database.
#[derive(Clone)]
struct Bare {
    conn: DatabaseConnection,
    backend: DbBackend,
}

impl Bare {
    async fn connect(url: &str, max_connections: u32) -> Result<Self, String> {
        let mut options = sea_orm::ConnectOptions::new(url.to_owned());
        options.max_connections(max_connections).sqlx_logging(false);
        let conn = Database::connect(options).await.map_err(|e| format!("bare connection: {e}"))?;
        let backend = conn.get_database_backend();
        Ok(Self { conn, backend })
    }

    async fn read(&self, id: &str) -> Option<String> {
        let stmt = Statement::from_sql_and_values(
            self.backend,
            "SELECT content FROM resources WHERE tenant_id = $1 AND resource_type = $2 AND id = $3",
            vec![TENANT.into(), "Patient".into(), id.into()],
        );
        let row = self.conn.query_one_raw(stmt).await.ok().flatten()?;
        row.try_get::<String>("", "content").ok()
    }

    async fn create_insert_table(&self) -> Result<(), String> {
        self.conn
            .execute_unprepared("CREATE TABLE bench_bare_insert (id BIGINT PRIMARY KEY, content TEXT NOT NULL)")
            .await
            .map(|_| ())
            .map_err(|e| format!("bare insert table: {e}"))
    }

    async fn insert(&self, i: usize, content: String) -> bool {
        let stmt = Statement::from_sql_and_values(
            self.backend,
            "INSERT INTO bench_bare_insert (id, content) VALUES ($1, $2)",
            vec![(i as i64).into(), content.into()],
        );
        self.conn.execute_raw(stmt).await.is_ok()
    }
}

/// A minimal axum server: `GET /r/{id}` answers the Patient's stored JSON. Returns its base URL
/// and its task.
async fn bare_read_server(bare: Bare) -> Result<(String, tokio::task::JoinHandle<()>), String> {
    async fn handler(State(bare): State<Bare>, Path(id): Path<String>) -> axum::response::Response {
        use axum::response::IntoResponse;
        match bare.read(&id).await {
            Some(content) => ([(CONTENT_TYPE, "application/fhir+json")], content).into_response(),
            None => axum::http::StatusCode::NOT_FOUND.into_response(),
        }
    }
    let router = axum::Router::new().route("/r/{id}", axum::routing::get(handler)).with_state(bare);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.map_err(|e| format!("bind: {e}"))?;
    let address = listener.local_addr().map_err(|e| format!("local addr: {e}"))?;
    let server = tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    Ok((format!("http://{address}/r"), server))
}
