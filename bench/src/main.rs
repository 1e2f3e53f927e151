//! `ehr-bench`: a load benchmark of the real `ehr` application.
//!
//! For each backend it starts the application in-process exactly like the test kit does
//! (`ehr_app::build` with target `all`, served by `axum::serve` on `127.0.0.1:0`), on a fresh
//! SQLite file in a temporary directory or on a fresh PostgreSQL database `ehr_bench_<uuid>`
//! (dropped at the end), and drives it over HTTP with a development token:
//!
//! 1. **create** — loads `--patients` synthetic Japanese patients with
//!    `--observations-per-patient` laboratory Observations each. The patients are split into
//!    equal shares, one per concurrency level (ascending), so every level's row measures create
//!    throughput and latency while the database grows to its final size.
//! 2. **read** — `GET Patient/{id}` and `GET Observation/{id}` of random existing ids, for
//!    `--duration-secs` at each concurrency level.
//! 3. **search** — a mix of seven realistic searches, for `--duration-secs` at each level, with a
//!    per-kind breakdown at the lowest and the highest level.
//!
//! Every request passes the gateway (token, revocation and rate-limit checks; one AuditEvent per
//! access, written in batches), as in production; `--redis-url` puts the gateway's security state
//! in Redis.
//!
//! The load generator and the server run in the same process on the same tokio runtime, so they
//! share the machine's cores. Any non-2xx answer or transport error is counted and makes the run
//! exit with status 1. See `docs/performance.md`.
//!
//! `ehr-bench suite [--backend …] [--quick] [--out FILE]` runs the standard workloads of issue 8
//! instead (create, read, search, transaction, export, HL7 ingest, login+MFA) beside the bare
//! stack's limits, with the load loops, percentiles and synthetic data of this file
//! (`suite.rs`).

use clap::{Parser, ValueEnum};
use ehr_app::{Config, Target};
use ehr_auth::{Claims, DevSigner, Verifier};
use ehr_core::{Clock, SystemClock};
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, LOCATION};
use sea_orm::{ConnectionTrait, Database};
use serde_json::{Value, json};
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const TENANT: &str = "bench";
const SCOPE: &str = "user/*.cruds";
const PATIENT_ID_SYSTEM: &str = "urn:oid:1.2.392.100495.20.3.51.11319999999";
const JLAC10: &str = "http://medis.or.jp/CodeSystem/master-JLAC10-17digits";
const UCUM: &str = "http://unitsofmeasure.org";
const NAME_REPRESENTATION: &str = "http://hl7.org/fhir/StructureDefinition/iso21090-EN-representation";
const JP_PATIENT: &str = "http://jpfhir.jp/fhir/core/StructureDefinition/JP_Patient";
const JP_LAB_RESULT: &str = "http://jpfhir.jp/fhir/core/StructureDefinition/JP_Observation_LabResult";
/// How many error descriptions are kept for the report.
const KEPT_ERRORS: usize = 10;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum BackendChoice {
    Sqlite,
    Postgres,
    Both,
}

/// Load benchmark of the ehr FHIR server: creates, reads and searches on SQLite and PostgreSQL.
#[derive(Debug, Clone, Parser)]
#[command(name = "ehr-bench")]
struct Args {
    /// Which database backend(s) to benchmark.
    #[arg(long, value_enum, default_value = "both")]
    backend: BackendChoice,
    /// Synthetic patients to create (split evenly across the concurrency levels).
    #[arg(long, default_value_t = 2000)]
    patients: usize,
    /// Laboratory Observations created per patient.
    #[arg(long, default_value_t = 4)]
    observations_per_patient: usize,
    /// Concurrency levels (in-flight requests), comma separated.
    #[arg(long, value_delimiter = ',', default_value = "1,8,32")]
    concurrency: Vec<usize>,
    /// Duration of each read and search measurement, per concurrency level.
    #[arg(long, default_value_t = 10)]
    duration_secs: u64,
    /// Admin URL of PostgreSQL; a database `ehr_bench_<uuid>` is created next to it and dropped.
    #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432/postgres")]
    postgres_url: String,
    /// Database pool size of the application (the `ehr serve` default is 16).
    #[arg(long, default_value_t = 16)]
    max_connections: u32,
    /// Per-request timeout; a request that exceeds it counts as failed.
    #[arg(long, default_value_t = 30)]
    timeout_secs: u64,
    /// Keep the PostgreSQL database (for EXPLAIN afterwards) instead of dropping it.
    #[arg(long)]
    keep_database: bool,
    /// Do not run `ANALYZE` on the PostgreSQL database after the load phase (autovacuum may be off,
    /// and without statistics the planner picks nested loops that make chained searches crawl).
    #[arg(long)]
    no_analyze: bool,
    /// Skip the search phase.
    #[arg(long)]
    no_search: bool,
    /// Redis for the gateway's security state (revocations, rate limits), as in production; without
    /// it the in-process store of `ehr serve` is used.
    #[arg(long)]
    redis_url: Option<String>,
    /// Seed of the synthetic data and of the random choices.
    #[arg(long, default_value_t = 20261125)]
    seed: u64,
}

mod suite;

fn main() -> ExitCode {
    // `ehr-bench suite …`: the standard workloads and the bare-stack baselines (bench/src/suite.rs).
    let argv: Vec<String> = std::env::args().collect();
    if argv.get(1).map(String::as_str) == Some("suite") {
        return suite::main(argv.into_iter().skip(1).collect());
    }
    let mut args = Args::parse();
    args.concurrency.retain(|c| *c > 0);
    args.concurrency.sort_unstable();
    args.concurrency.dedup();
    if args.concurrency.is_empty() {
        eprintln!("--concurrency needs at least one level > 0");
        return ExitCode::from(2);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the tokio runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let backends: &[&str] = match args.backend {
        BackendChoice::Sqlite => &["sqlite"],
        BackendChoice::Postgres => &["postgres"],
        BackendChoice::Both => &["sqlite", "postgres"],
    };
    let mut failed = false;
    for backend in backends {
        match runtime.block_on(run_backend(backend, &args)) {
            Ok(0) => {}
            Ok(errors) => {
                eprintln!("{backend}: {errors} request(s) failed");
                failed = true;
            }
            Err(e) => {
                eprintln!("{backend}: benchmark aborted: {e}");
                failed = true;
            }
        }
    }
    if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS }
}

// ---------------------------------------------------------------------------------------------
// The application under test
// ---------------------------------------------------------------------------------------------

/// A directory removed when dropped.
struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A PostgreSQL database dropped (best effort) by [`PgDatabase::drop_database`].
struct PgDatabase {
    admin_url: String,
    name: String,
}

impl PgDatabase {
    async fn create(admin_url: &str) -> Result<(Self, String), String> {
        let name = format!("ehr_bench_{}", uuid::Uuid::new_v4().simple());
        let conn =
            Database::connect(admin_url).await.map_err(|e| format!("PostgreSQL unreachable at {admin_url}: {e}"))?;
        conn.execute_unprepared(&format!("CREATE DATABASE {name}"))
            .await
            .map_err(|e| format!("CREATE DATABASE {name}: {e}"))?;
        let _ = conn.close().await;
        let (base, _) = admin_url.rsplit_once('/').ok_or("--postgres-url must end with /<database>")?;
        let url = format!("{base}/{name}");
        Ok((Self { admin_url: admin_url.to_owned(), name }, url))
    }

    async fn drop_database(&self) {
        match Database::connect(self.admin_url.as_str()).await {
            Ok(conn) => {
                if let Err(e) =
                    conn.execute_unprepared(&format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name)).await
                {
                    eprintln!("warning: could not drop database {}: {e}", self.name);
                }
                let _ = conn.close().await;
            }
            Err(e) => eprintln!("warning: could not drop database {}: {e}", self.name),
        }
    }
}

/// The HTTP side of the benchmark: client, base URL, token and the error log.
#[derive(Clone)]
struct Http {
    client: reqwest::Client,
    /// `http://127.0.0.1:PORT/fhir`.
    base: Arc<str>,
    /// `Bearer <jwt>`.
    auth: Arc<str>,
    errors: Arc<Mutex<Vec<String>>>,
}

impl Http {
    fn get(&self, path: &str) -> reqwest::RequestBuilder {
        self.client.get(format!("{}{path}", self.base)).header(AUTHORIZATION, &*self.auth)
    }

    fn post(&self, path: &str, body: String) -> reqwest::RequestBuilder {
        self.client
            .post(format!("{}{path}", self.base))
            .header(AUTHORIZATION, &*self.auth)
            .header(CONTENT_TYPE, "application/fhir+json")
            .body(body)
    }

    /// Sends a request and drains its body; `Some(location header)` on 2xx, `None` (logged) otherwise.
    async fn send(&self, what: &str, rb: reqwest::RequestBuilder) -> Option<Option<String>> {
        match rb.send().await {
            Ok(resp) => {
                let status = resp.status();
                let location = resp.headers().get(LOCATION).and_then(|v| v.to_str().ok()).map(str::to_owned);
                match resp.bytes().await {
                    Ok(_) if status.is_success() => Some(location),
                    Ok(body) => {
                        let text = String::from_utf8_lossy(&body);
                        let cut: String = text.chars().take(400).collect();
                        self.log_error(format!("{what}: HTTP {status}: {cut}"));
                        None
                    }
                    Err(e) => {
                        self.log_error(format!("{what}: reading body: {e}"));
                        None
                    }
                }
            }
            Err(e) => {
                self.log_error(format!("{what}: {e}"));
                None
            }
        }
    }

    fn log_error(&self, message: String) {
        if let Ok(mut errors) = self.errors.lock()
            && errors.len() < KEPT_ERRORS
        {
            errors.push(message);
        }
    }
}

/// The id in a `Location` header (`…/Type/id/_history/n`).
fn id_from_location(location: &str) -> Option<String> {
    let mut parts = location.rsplit('/');
    let _version = parts.next()?;
    let history = parts.next()?;
    if history != "_history" {
        return None;
    }
    parts.next().map(str::to_owned)
}

fn unix_now() -> i64 {
    SystemClock.now().timestamp()
}

fn dev_token(signer: &DevSigner) -> Result<String, String> {
    let now = unix_now();
    let claims = Claims {
        iss: ehr_auth::DEV_ISSUER.into(),
        sub: "ehr-bench".into(),
        exp: now + 6 * 3600,
        iat: now,
        tenant: TENANT.into(),
        scope: SCOPE.into(),
        ..Claims::default()
    };
    signer.sign(&claims).map_err(|e| format!("signing the dev token: {e}"))
}

/// Mean cost of `Verifier::verify`, in µs: (distinct tokens, i.e. a real ES256 check each; the
/// same token again and again, which a verifier may cache).
async fn verify_cost(signer: &DevSigner, token: &str) -> Result<(f64, f64), String> {
    let verifier = Verifier::development().await.map_err(|e| format!("dev verifier: {e}"))?;
    let now = unix_now();
    let distinct: Vec<String> = (0..500)
        .map(|i| {
            let claims = Claims {
                iss: ehr_auth::DEV_ISSUER.into(),
                sub: "ehr-bench".into(),
                exp: now + 3600,
                iat: now,
                tenant: TENANT.into(),
                scope: SCOPE.into(),
                jti: Some(format!("bench-{i}")),
                ..Claims::default()
            };
            signer.sign(&claims).map_err(|e| format!("signing: {e}"))
        })
        .collect::<Result<_, _>>()?;
    let start = Instant::now();
    for t in &distinct {
        verifier.verify(t, now).await.map_err(|e| format!("verify: {e}"))?;
    }
    let cold = start.elapsed().as_secs_f64() * 1e6 / distinct.len() as f64;
    let n = 2000;
    let start = Instant::now();
    for _ in 0..n {
        verifier.verify(token, now).await.map_err(|e| format!("verify: {e}"))?;
    }
    let repeated = start.elapsed().as_secs_f64() * 1e6 / f64::from(n);
    Ok((cold, repeated))
}

async fn run_backend(backend: &str, args: &Args) -> Result<usize, String> {
    let mut config = Config::default();
    config.database.max_connections = args.max_connections;
    // The load generator is one user: the per-user limit would measure the limiter.
    config.gateway.rate_limit.user_per_sec = 1e6;
    config.gateway.rate_limit.user_burst = 1_000_000;
    config.gateway.rate_limit.tenant_per_sec = 1e6;
    config.gateway.rate_limit.tenant_burst = 1_000_000;
    config.gateway.rate_limit.login_per_sec = 1e6;
    config.gateway.rate_limit.login_burst = 1_000_000;
    if let Some(url) = &args.redis_url {
        config.gateway.redis_url = Some(url.clone().into());
        config.gateway.redis_prefix = format!("ehr-bench-{}", uuid::Uuid::new_v4().simple());
    }
    let mut _data_dir = None;
    let mut pg = None;
    let database_url = if backend == "postgres" {
        let (db, url) = PgDatabase::create(&args.postgres_url).await?;
        pg = Some(db);
        url
    } else {
        let dir = std::env::temp_dir().join(format!("ehr-bench-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).map_err(|e| format!("temp dir {}: {e}", dir.display()))?;
        config.data_dir = dir.clone();
        _data_dir = Some(TempDir(dir.clone()));
        format!("sqlite://{}?mode=rwc", dir.join("ehr.db").display())
    };
    config.database.url = Some(database_url.clone().into());
    let analyze_url = (backend == "postgres").then_some(database_url);

    let result = run_app(backend, args, &config, analyze_url.as_deref()).await;
    if let Some(db) = pg {
        if args.keep_database {
            println!("kept PostgreSQL database {} (drop it yourself)", db.name);
            return result;
        }
        // Give the aborted server's pool a moment to close; FORCE ends whatever is left.
        tokio::time::sleep(Duration::from_millis(200)).await;
        db.drop_database().await;
    }
    result
}

async fn run_app(backend: &str, args: &Args, config: &Config, pg_url: Option<&str>) -> Result<usize, String> {
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let app = ehr_app::build(config, Target::All, clock).await.map_err(|e| format!("building the app: {e}"))?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.map_err(|e| format!("bind: {e}"))?;
    let address = listener.local_addr().map_err(|e| format!("local addr: {e}"))?;
    let router = app.router;
    let server = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, router).await {
            eprintln!("server stopped: {e}");
        }
    });
    let signer = DevSigner::new().map_err(|e| format!("dev signer: {e}"))?;
    let token = dev_token(&signer)?;
    let verify_us = verify_cost(&signer, &token).await?;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(args.timeout_secs))
        .build()
        .map_err(|e| format!("http client: {e}"))?;
    let http = Http {
        client,
        base: format!("http://{address}/fhir").into(),
        auth: format!("Bearer {token}").into(),
        errors: Arc::new(Mutex::new(Vec::new())),
    };
    let outcome = benchmark(backend, args, &http, verify_us, pg_url).await;
    server.abort();
    let _ = server.await;
    drop(app.store);
    outcome
}

// ---------------------------------------------------------------------------------------------
// Synthetic data
// ---------------------------------------------------------------------------------------------

/// SplitMix64: small, fast and good enough for picking ids.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Self(seed)
    }

    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`).
    fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }

    /// Uniform in `lo..=hi`.
    fn between(&mut self, lo: u32, hi: u32) -> u32 {
        lo + (self.next_u64() % u64::from(hi - lo + 1)) as u32
    }

    fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Family names: (kanji, kana).
const FAMILIES: &[(&str, &str)] = &[
    ("佐藤", "サトウ"),
    ("鈴木", "スズキ"),
    ("高橋", "タカハシ"),
    ("田中", "タナカ"),
    ("伊藤", "イトウ"),
    ("渡辺", "ワタナベ"),
    ("山本", "ヤマモト"),
    ("中村", "ナカムラ"),
    ("小林", "コバヤシ"),
    ("加藤", "カトウ"),
    ("吉田", "ヨシダ"),
    ("山田", "ヤマダ"),
    ("佐々木", "ササキ"),
    ("松本", "マツモト"),
    ("井上", "イノウエ"),
    ("木村", "キムラ"),
];
const GIVEN_MALE: &[(&str, &str)] = &[
    ("太郎", "タロウ"),
    ("一郎", "イチロウ"),
    ("健太", "ケンタ"),
    ("翔", "ショウ"),
    ("大輔", "ダイスケ"),
    ("誠", "マコト"),
    ("博", "ヒロシ"),
    ("拓也", "タクヤ"),
];
const GIVEN_FEMALE: &[(&str, &str)] = &[
    ("花子", "ハナコ"),
    ("陽子", "ヨウコ"),
    ("美咲", "ミサキ"),
    ("さくら", "サクラ"),
    ("恵子", "ケイコ"),
    ("直美", "ナオミ"),
    ("由美", "ユミ"),
    ("愛", "アイ"),
];
/// (postal code, address text).
const ADDRESSES: &[(&str, &str)] = &[
    ("100-8916", "東京都千代田区霞が関1-2-2"),
    ("530-0001", "大阪府大阪市北区梅田3-1-1"),
    ("450-0002", "愛知県名古屋市中村区名駅1-1-4"),
    ("812-0012", "福岡県福岡市博多区博多駅中央街1-1"),
    ("060-0806", "北海道札幌市北区北6条西4丁目"),
    ("980-0021", "宮城県仙台市青葉区中央1-1-1"),
    ("732-0822", "広島県広島市南区松原町2-37"),
    ("600-8216", "京都府京都市下京区烏丸通塩小路下ル東塩小路町"),
];

/// A laboratory test: JLAC10 code, display, UCUM unit, value range.
struct Lab {
    code: &'static str,
    display: &'static str,
    unit: &'static str,
    low: f64,
    high: f64,
}

const LABS: &[Lab] = &[
    Lab { code: "3B035000002327201", display: "AST", unit: "U/L", low: 10.0, high: 90.0 },
    Lab { code: "3B045000002327201", display: "ALT", unit: "U/L", low: 5.0, high: 110.0 },
    Lab { code: "3A015000002327101", display: "アルブミン", unit: "g/dL", low: 2.5, high: 5.3 },
    Lab { code: "8A065000002391901", display: "eGFR", unit: "mL/min/{1.73_m2}", low: 15.0, high: 120.0 },
    Lab { code: "3C015000002327101", display: "クレアチニン", unit: "mg/dL", low: 0.4, high: 3.0 },
    Lab { code: "3B090000002327101", display: "γ-GT", unit: "U/L", low: 8.0, high: 160.0 },
    Lab { code: "3D046000001906202", display: "HbA1c(NGSP)", unit: "%", low: 4.5, high: 10.0 },
    Lab { code: "3F077000002327101", display: "LDLコレステロール", unit: "mg/dL", low: 50.0, high: 200.0 },
];
/// Labs whose values straddle 50 (for `value-quantity=gt50`).
const LABS_AROUND_50: &[usize] = &[0, 1, 3, 5, 7];

/// What the benchmark remembers of a created patient.
#[derive(Clone)]
struct PatientRec {
    id: String,
    hospital_no: String,
    /// Indices into [`LABS`] of its Observations.
    labs: Vec<usize>,
}

fn hospital_no(i: usize) -> String {
    format!("{:010}", 2_000_000_000u64 + i as u64 * 7)
}

fn synthetic_patient(rng: &mut Rng, i: usize) -> Value {
    let female = rng.below(2) == 0;
    let (fam_kanji, fam_kana) = FAMILIES[rng.below(FAMILIES.len())];
    let givens = if female { GIVEN_FEMALE } else { GIVEN_MALE };
    let (given_kanji, given_kana) = givens[rng.below(givens.len())];
    let (postal, address) = ADDRESSES[rng.below(ADDRESSES.len())];
    let birth = format!("{:04}-{:02}-{:02}", rng.between(1930, 2020), rng.between(1, 12), rng.between(1, 28));
    json!({
        "resourceType": "Patient",
        "meta": {"profile": [JP_PATIENT]},
        "identifier": [{"system": PATIENT_ID_SYSTEM, "value": hospital_no(i)}],
        "name": [
            {
                "extension": [{"url": NAME_REPRESENTATION, "valueCode": "IDE"}],
                "use": "official",
                "text": format!("{fam_kanji} {given_kanji}"),
                "family": fam_kanji,
                "given": [given_kanji]
            },
            {
                "extension": [{"url": NAME_REPRESENTATION, "valueCode": "SYL"}],
                "use": "official",
                "text": format!("{fam_kana} {given_kana}"),
                "family": fam_kana,
                "given": [given_kana]
            }
        ],
        "telecom": [{"system": "phone", "value": format!("0{}-{:04}-{:04}", rng.between(3, 99), rng.between(0, 9999), rng.between(0, 9999)), "use": "home"}],
        "gender": if female { "female" } else { "male" },
        "birthDate": birth,
        "address": [{"use": "home", "text": address, "postalCode": postal, "country": "JP"}]
    })
}

fn synthetic_observation(rng: &mut Rng, patient_id: &str, lab: &Lab) -> Value {
    let value = ((lab.low + rng.unit() * (lab.high - lab.low)) * 10.0).round() / 10.0;
    let effective = format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:00+09:00",
        rng.between(2021, 2026),
        rng.between(1, 12),
        rng.between(1, 28),
        rng.between(8, 18),
        rng.between(0, 59)
    );
    json!({
        "resourceType": "Observation",
        "meta": {"profile": [JP_LAB_RESULT]},
        "status": "final",
        "category": [{"coding": [{
            "system": "http://jpfhir.jp/fhir/core/CodeSystem/JP_SimpleObservationCategory_CS",
            "code": "laboratory",
            "display": "検体検査"
        }]}],
        "code": {"coding": [{"system": JLAC10, "code": lab.code, "display": lab.display}], "text": lab.display},
        "subject": {"reference": format!("Patient/{patient_id}")},
        "effectiveDateTime": effective,
        "valueQuantity": {"value": value, "unit": lab.unit, "system": UCUM, "code": lab.unit},
        "specimen": {"display": "血清"}
    })
}

// ---------------------------------------------------------------------------------------------
// Measurement
// ---------------------------------------------------------------------------------------------

/// One line of the report.
struct Row {
    operation: String,
    concurrency: usize,
    ops: usize,
    errors: usize,
    secs: f64,
    /// Latencies in microseconds, sorted.
    latencies: Vec<u32>,
}

impl Row {
    fn new(
        operation: impl Into<String>,
        concurrency: usize,
        mut latencies: Vec<u32>,
        errors: usize,
        secs: f64,
    ) -> Self {
        latencies.sort_unstable();
        Self { operation: operation.into(), concurrency, ops: latencies.len(), errors, secs, latencies }
    }

    /// Nearest-rank percentile, in milliseconds.
    fn percentile(&self, p: f64) -> f64 {
        if self.latencies.is_empty() {
            return f64::NAN;
        }
        let rank = ((p / 100.0) * self.latencies.len() as f64).ceil() as usize;
        let idx = rank.clamp(1, self.latencies.len()) - 1;
        f64::from(self.latencies[idx]) / 1000.0
    }

    fn print(&self) {
        let rate = if self.secs > 0.0 { self.ops as f64 / self.secs } else { 0.0 };
        println!(
            "{:<28} {:>5} {:>8} {:>7} {:>10.1} {:>8.2} {:>8.2} {:>8.2}",
            self.operation,
            self.concurrency,
            self.ops,
            self.errors,
            rate,
            self.percentile(50.0),
            self.percentile(95.0),
            self.percentile(99.0)
        );
    }
}

fn print_header() {
    println!(
        "{:<28} {:>5} {:>8} {:>7} {:>10} {:>8} {:>8} {:>8}",
        "operation", "conc", "ops", "errors", "ops/s", "p50 ms", "p95 ms", "p99 ms"
    );
}

fn micros(since: Instant) -> u32 {
    u32::try_from(since.elapsed().as_micros()).unwrap_or(u32::MAX)
}

/// What one load worker produced.
#[derive(Default)]
struct LoadOut {
    latencies: Vec<u32>,
    errors: usize,
    patients: Vec<PatientRec>,
    observations: Vec<String>,
}

async fn load_worker(http: Http, seed: u64, obs_per_patient: usize, next: Arc<AtomicUsize>, end: usize) -> LoadOut {
    let mut out = LoadOut::default();
    loop {
        let i = next.fetch_add(1, Ordering::Relaxed);
        if i >= end {
            return out;
        }
        let mut rng = Rng::new(seed ^ (i as u64).wrapping_mul(0xA076_1D64_78BD_642F));
        let body = synthetic_patient(&mut rng, i).to_string();
        let t = Instant::now();
        let created = http.send("create Patient", http.post("/Patient", body)).await;
        out.latencies.push(micros(t));
        let Some(location) = created else {
            out.errors += 1;
            continue;
        };
        let Some(id) = location.as_deref().and_then(id_from_location) else {
            out.errors += 1;
            http.log_error(format!("create Patient: no usable Location header ({location:?})"));
            continue;
        };
        let first = rng.below(LABS.len());
        let mut labs = Vec::with_capacity(obs_per_patient);
        for j in 0..obs_per_patient {
            let lab = (first + j) % LABS.len();
            let body = synthetic_observation(&mut rng, &id, &LABS[lab]).to_string();
            let t = Instant::now();
            let created = http.send("create Observation", http.post("/Observation", body)).await;
            out.latencies.push(micros(t));
            match created.flatten().as_deref().and_then(id_from_location) {
                Some(obs_id) => {
                    out.observations.push(obs_id);
                    labs.push(lab);
                }
                None => out.errors += 1,
            }
        }
        out.patients.push(PatientRec { id, hospital_no: hospital_no(i), labs });
    }
}

/// Creates all patients and observations, one equal share per concurrency level.
async fn load_phase(http: &Http, args: &Args, rows: &mut Vec<Row>) -> Result<(Vec<PatientRec>, Vec<String>), String> {
    let levels = &args.concurrency;
    let share = args.patients / levels.len();
    let mut start = 0;
    let mut patients = Vec::with_capacity(args.patients);
    let mut observations = Vec::with_capacity(args.patients * args.observations_per_patient);
    for (k, &c) in levels.iter().enumerate() {
        let end = if k + 1 == levels.len() { args.patients } else { start + share };
        if end == start {
            continue;
        }
        let next = Arc::new(AtomicUsize::new(start));
        let t = Instant::now();
        let workers: Vec<_> = (0..c)
            .map(|_| {
                tokio::spawn(load_worker(http.clone(), args.seed, args.observations_per_patient, next.clone(), end))
            })
            .collect();
        let mut latencies = Vec::new();
        let mut errors = 0;
        for w in workers {
            let out = w.await.map_err(|e| format!("load worker: {e}"))?;
            latencies.extend(out.latencies);
            errors += out.errors;
            patients.extend(out.patients);
            observations.extend(out.observations);
        }
        let secs = t.elapsed().as_secs_f64();
        let row = Row::new("create (Patient+Obs)", c, latencies, errors, secs);
        row.print();
        rows.push(row);
        start = end;
    }
    Ok((patients, observations))
}

async fn read_worker(
    http: Http,
    seed: u64,
    deadline: Instant,
    patients: Arc<Vec<PatientRec>>,
    observations: Arc<Vec<String>>,
) -> (Vec<u32>, usize) {
    let mut rng = Rng::new(seed);
    let mut latencies = Vec::new();
    let mut errors = 0;
    while Instant::now() < deadline {
        let path = if observations.is_empty() || rng.below(2) == 0 {
            format!("/Patient/{}", patients[rng.below(patients.len())].id)
        } else {
            format!("/Observation/{}", observations[rng.below(observations.len())])
        };
        let t = Instant::now();
        let ok = http.send("read", http.get(&path)).await.is_some();
        latencies.push(micros(t));
        if !ok {
            errors += 1;
        }
    }
    (latencies, errors)
}

async fn read_phase(
    http: &Http,
    args: &Args,
    patients: &Arc<Vec<PatientRec>>,
    observations: &Arc<Vec<String>>,
    rows: &mut Vec<Row>,
) -> Result<(), String> {
    for &c in &args.concurrency {
        let t = Instant::now();
        let deadline = t + Duration::from_secs(args.duration_secs);
        let workers: Vec<_> = (0..c)
            .map(|w| {
                let seed = args.seed.wrapping_add(1000 + w as u64 * 7919 + c as u64);
                tokio::spawn(read_worker(http.clone(), seed, deadline, patients.clone(), observations.clone()))
            })
            .collect();
        let mut latencies = Vec::new();
        let mut errors = 0;
        for w in workers {
            let (l, e) = w.await.map_err(|e| format!("read worker: {e}"))?;
            latencies.extend(l);
            errors += e;
        }
        let row = Row::new("read (Patient|Obs by id)", c, latencies, errors, t.elapsed().as_secs_f64());
        row.print();
        rows.push(row);
    }
    Ok(())
}

/// The kinds of search in the mix.
const SEARCH_KINDS: &[&str] = &[
    "Patient?family",
    "Patient?identifier",
    "Patient?birthdate(year)",
    "Obs?patient&code",
    "Obs?subject:Patient.ident",
    "Obs?patient&_sort=-date",
    "Obs?value-quantity&code",
];

/// The path and query of one search of `kind`.
fn search_request(rng: &mut Rng, kind: usize, patients: &[PatientRec]) -> (&'static str, Vec<(&'static str, String)>) {
    let patient = &patients[rng.below(patients.len())];
    let code_of = |lab: usize| format!("{JLAC10}|{}", LABS[lab].code);
    match kind {
        0 => {
            let (kanji, kana) = FAMILIES[rng.below(FAMILIES.len())];
            ("/Patient", vec![("family", if rng.below(2) == 0 { kanji } else { kana }.to_owned())])
        }
        1 => ("/Patient", vec![("identifier", format!("{PATIENT_ID_SYSTEM}|{}", patient.hospital_no))]),
        2 => {
            let year = rng.between(1930, 2020);
            ("/Patient", vec![("birthdate", format!("ge{year}-01-01")), ("birthdate", format!("lt{}-01-01", year + 1))])
        }
        3 => {
            let lab = if patient.labs.is_empty() {
                rng.below(LABS.len())
            } else {
                patient.labs[rng.below(patient.labs.len())]
            };
            ("/Observation", vec![("patient", format!("Patient/{}", patient.id)), ("code", code_of(lab))])
        }
        4 => (
            "/Observation",
            vec![("subject:Patient.identifier", format!("{PATIENT_ID_SYSTEM}|{}", patient.hospital_no))],
        ),
        5 => (
            "/Observation",
            vec![
                ("patient", format!("Patient/{}", patient.id)),
                ("_sort", "-date".to_owned()),
                ("_count", "10".to_owned()),
            ],
        ),
        _ => {
            let lab = LABS_AROUND_50[rng.below(LABS_AROUND_50.len())];
            (
                "/Observation",
                vec![("value-quantity", "gt50".to_owned()), ("code", code_of(lab)), ("_count", "10".to_owned())],
            )
        }
    }
}

async fn search_worker(
    http: Http,
    seed: u64,
    deadline: Instant,
    patients: Arc<Vec<PatientRec>>,
) -> Vec<(Vec<u32>, usize)> {
    let mut rng = Rng::new(seed);
    let mut per_kind: Vec<(Vec<u32>, usize)> = SEARCH_KINDS.iter().map(|_| (Vec::new(), 0)).collect();
    while Instant::now() < deadline {
        let kind = rng.below(SEARCH_KINDS.len());
        let (path, query) = search_request(&mut rng, kind, &patients);
        let t = Instant::now();
        let ok = http.send(SEARCH_KINDS[kind], http.get(path).query(&query)).await.is_some();
        per_kind[kind].0.push(micros(t));
        if !ok {
            per_kind[kind].1 += 1;
        }
    }
    per_kind
}

/// Runs each kind of search once and prints how many matches it found (a sanity check that the
/// mix is not measuring empty answers).
async fn search_sanity(http: &Http, seed: u64, patients: &[PatientRec]) -> usize {
    let mut rng = Rng::new(seed);
    let mut errors = 0;
    let mut parts = Vec::new();
    for (kind, name) in SEARCH_KINDS.iter().enumerate() {
        let (path, query) = search_request(&mut rng, kind, patients);
        let resp = http.get(path).query(&query).query(&[("_total", "accurate")]).send().await;
        let summary = match resp {
            Ok(resp) if resp.status().is_success() => match resp.json::<Value>().await {
                Ok(bundle) => {
                    let entries = bundle["entry"].as_array().map_or(0, Vec::len);
                    match bundle["total"].as_u64() {
                        Some(total) => format!("{entries}/{total}"),
                        None => format!("{entries}"),
                    }
                }
                Err(e) => {
                    errors += 1;
                    http.log_error(format!("{name}: not a JSON bundle: {e}"));
                    "error".to_owned()
                }
            },
            Ok(resp) => {
                errors += 1;
                let status = resp.status();
                let text = resp.text().await.unwrap_or_default();
                http.log_error(format!("{name}: HTTP {status}: {}", text.chars().take(400).collect::<String>()));
                format!("HTTP {status}")
            }
            Err(e) => {
                errors += 1;
                http.log_error(format!("{name}: {e}"));
                "error".to_owned()
            }
        };
        parts.push(format!("{name}={summary}"));
    }
    println!("search sanity (entries on page/total, one sample each): {}", parts.join(", "));
    errors
}

async fn search_phase(
    http: &Http,
    args: &Args,
    patients: &Arc<Vec<PatientRec>>,
    rows: &mut Vec<Row>,
) -> Result<(), String> {
    let highest = args.concurrency.last().copied().unwrap_or(1);
    let lowest = args.concurrency.first().copied().unwrap_or(1);
    let mut breakdown = Vec::new();
    for &c in &args.concurrency {
        let t = Instant::now();
        let deadline = t + Duration::from_secs(args.duration_secs);
        let workers: Vec<_> = (0..c)
            .map(|w| {
                let seed = args.seed.wrapping_add(5000 + w as u64 * 104_729 + c as u64);
                tokio::spawn(search_worker(http.clone(), seed, deadline, patients.clone()))
            })
            .collect();
        let mut per_kind: Vec<(Vec<u32>, usize)> = SEARCH_KINDS.iter().map(|_| (Vec::new(), 0)).collect();
        for w in workers {
            let out = w.await.map_err(|e| format!("search worker: {e}"))?;
            for (acc, (l, e)) in per_kind.iter_mut().zip(out) {
                acc.0.extend(l);
                acc.1 += e;
            }
        }
        let secs = t.elapsed().as_secs_f64();
        let all: Vec<u32> = per_kind.iter().flat_map(|(l, _)| l.iter().copied()).collect();
        let errors = per_kind.iter().map(|(_, e)| e).sum();
        let row = Row::new("search (mix)", c, all, errors, secs);
        row.print();
        rows.push(row);
        if c == highest || c == lowest {
            breakdown.extend(
                per_kind
                    .into_iter()
                    .zip(SEARCH_KINDS)
                    .map(|((l, e), name)| Row::new(format!("  {name}"), c, l, e, secs)),
            );
        }
    }
    for row in &breakdown {
        row.print();
    }
    rows.extend(breakdown);
    Ok(())
}

/// Creates one patient and one observation and reports the server's answer if it refuses them,
/// so that a data problem shows up before minutes of load.
async fn preflight(http: &Http, seed: u64) -> Result<(), String> {
    let mut rng = Rng::new(seed ^ 0xDEAD_BEEF);
    let patient = synthetic_patient(&mut rng, 999_999_999);
    let resp = http.post("/Patient", patient.to_string()).send().await.map_err(|e| format!("preflight: {e}"))?;
    let status = resp.status();
    let location = resp.headers().get(LOCATION).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let text = resp.text().await.map_err(|e| format!("preflight body: {e}"))?;
    if status.as_u16() != 201 {
        return Err(format!("preflight: create Patient answered {status}: {text}"));
    }
    if text.contains("\"OperationOutcome\"") || text.contains("warning") {
        println!("preflight Patient answer mentions issues: {}", text.chars().take(300).collect::<String>());
    }
    let id = location.as_deref().and_then(id_from_location).ok_or("preflight: no Location header")?;
    let obs = synthetic_observation(&mut rng, &id, &LABS[0]);
    let resp = http.post("/Observation", obs.to_string()).send().await.map_err(|e| format!("preflight: {e}"))?;
    let status = resp.status();
    let text = resp.text().await.map_err(|e| format!("preflight body: {e}"))?;
    if status.as_u16() != 201 {
        return Err(format!("preflight: create Observation answered {status}: {text}"));
    }
    Ok(())
}

/// Runs `ANALYZE` on the bench database (as its owner) and returns the server's autovacuum setting.
async fn analyze(url: &str) -> Result<String, String> {
    let conn = Database::connect(url).await.map_err(|e| format!("connect for ANALYZE: {e}"))?;
    let autovacuum = conn
        .query_one_raw(sea_orm::Statement::from_string(sea_orm::DbBackend::Postgres, "SHOW autovacuum"))
        .await
        .map_err(|e| format!("SHOW autovacuum: {e}"))?
        .and_then(|row| row.try_get::<String>("", "autovacuum").ok())
        .unwrap_or_else(|| "?".to_owned());
    let t = Instant::now();
    conn.execute_unprepared("ANALYZE").await.map_err(|e| format!("ANALYZE: {e}"))?;
    let _ = conn.close().await;
    Ok(format!("ANALYZE took {:.1} s; server autovacuum = {autovacuum}", t.elapsed().as_secs_f64()))
}

async fn benchmark(
    backend: &str,
    args: &Args,
    http: &Http,
    verify_us: (f64, f64),
    pg_url: Option<&str>,
) -> Result<usize, String> {
    let cores = std::thread::available_parallelism().map_or(0, std::num::NonZero::get);
    let planned = args.patients * (1 + args.observations_per_patient);
    println!();
    println!("=== ehr-bench: backend {backend} ===");
    println!(
        "machine: {cores} cores (std::thread::available_parallelism), SHARED by the load generator and the server \
         (same process, one tokio multi-thread runtime)"
    );
    println!(
        "workload: {} patients x (1 + {} observations) = {planned} resources planned; concurrency levels {:?}; \
         {} s per read/search level; app pool max_connections {}",
        args.patients, args.observations_per_patient, args.concurrency, args.duration_secs, args.max_connections
    );
    println!(
        "token verification (Verifier::verify, one thread, in isolation): {:.1} us/op for distinct tokens (ES256), \
         {:.1} us/op for the same token repeated (what the benchmark sends)",
        verify_us.0, verify_us.1
    );
    preflight(http, args.seed).await?;

    print_header();
    let mut rows = Vec::new();
    let (patients, observations) = load_phase(http, args, &mut rows).await?;
    if patients.is_empty() {
        return Err("no patient could be created".into());
    }
    if let Some(url) = pg_url {
        if args.no_analyze {
            println!("(no ANALYZE after load: --no-analyze)");
        } else {
            println!("ran ANALYZE after the load phase: {}", analyze(url).await?);
        }
    }
    let patients = Arc::new(patients);
    let observations = Arc::new(observations);
    read_phase(http, args, &patients, &observations, &mut rows).await?;
    let mut errors: usize = 0;
    if !args.no_search {
        errors += search_sanity(http, args.seed, &patients).await;
        search_phase(http, args, &patients, &mut rows).await?;
    }
    // Breakdown rows repeat the highest level's search row; count errors once.
    errors += rows.iter().filter(|r| !r.operation.starts_with("  ")).map(|r| r.errors).sum::<usize>();
    let created = patients.len() + observations.len() + 2;
    println!(
        "resources in the database: {created} ({} patients, {} observations, +2 from the preflight)",
        patients.len(),
        observations.len()
    );
    let kept = http.errors.lock().map(|e| e.clone()).unwrap_or_default();
    if errors > 0 {
        println!("FAILED REQUESTS: {errors}; first ones:");
        for e in kept {
            println!("  {e}");
        }
    } else {
        println!("failed requests: 0");
    }
    Ok(errors)
}
