//! `ehr-bench-export`: throughput and peak memory of data hand-over (issue #5), end to end.
//!
//! The real application (target `all`, as the test kit builds it) on SQLite or PostgreSQL is
//! loaded with `--patients` patients of `--per-patient` resources each (Observations, Conditions,
//! an Encounter). Then, per format (NDJSON, one Bundle per patient in XML, CSV):
//!
//! 1. **export** — `$export` kick-off, status polled until complete, every file downloaded
//!    (streamed, not kept): resources/s from kick-off to the last byte;
//! 2. **import** — the downloaded files posted to `$import` of a second tenant (one request per
//!    file, or per type's CSV tables, as `ehr import` does): resources/s.
//!
//! Peak memory: the process's peak resident set (`VmHWM`), reset before each phase through
//! `/proc/self/clear_refs` — server and client share the process, so the figure is an upper bound
//! for the server (the import client holds one file in memory while posting it).
//!
//! See `docs/performance.md`.

use clap::{Parser, ValueEnum};
use ehr_app::Target;
use ehr_auth::{Claims, DevSigner};
use ehr_core::{Clock, SystemClock};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Backend {
    Sqlite,
    Postgres,
}

#[derive(Debug, Parser)]
#[command(name = "ehr-bench-export")]
struct Args {
    #[arg(long, value_enum, default_value = "postgres")]
    backend: Backend,
    #[arg(long, default_value_t = 1000)]
    patients: usize,
    /// Resources per patient besides the Patient (Observations, Conditions, one Encounter).
    #[arg(long, default_value_t = 19)]
    per_patient: usize,
    /// Formats to measure (comma-separated: ndjson, xml, csv).
    #[arg(long, default_value = "ndjson,xml,csv")]
    formats: String,
    #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432/postgres")]
    postgres_url: String,
    /// Redis for the event bus and the gateway (required with PostgreSQL).
    #[arg(long)]
    redis_url: Option<String>,
}

fn token(signer: &DevSigner, tenant: &str) -> Result<String, String> {
    let now = SystemClock.now().timestamp();
    let claims = Claims {
        iss: ehr_auth::DEV_ISSUER.into(),
        sub: "ehr-bench-export".into(),
        exp: now + 7200,
        iat: now,
        tenant: tenant.into(),
        scope: "system/*.cruds".into(),
        ..Claims::default()
    };
    signer.sign(&claims).map_err(|e| e.to_string())
}

fn patient_bundle(p: usize, per_patient: usize) -> Value {
    let pid = format!("bench-p{p:06}");
    let mut entries = vec![json!({
        "request": {"method": "PUT", "url": format!("Patient/{pid}")},
        "resource": {
            "resourceType": "Patient", "id": pid,
            "identifier": [{"system": "urn:oid:1.2.392.100495.20.3.51.11311234567", "value": format!("{p:08}")}],
            "name": [
                {"extension": [{"url": "http://hl7.org/fhir/StructureDefinition/iso21090-EN-representation", "valueCode": "IDE"}],
                 "use": "official", "text": "山田 太郎", "family": "山田", "given": ["太郎"]},
                {"extension": [{"url": "http://hl7.org/fhir/StructureDefinition/iso21090-EN-representation", "valueCode": "SYL"}],
                 "use": "official", "text": "ヤマダ タロウ", "family": "ヤマダ", "given": ["タロウ"]}
            ],
            "telecom": [{"system": "phone", "value": "03-1234-5678", "use": "home"}],
            "gender": if p.is_multiple_of(2) { "male" } else { "female" },
            "birthDate": format!("19{:02}-0{}-1{}", 30 + p % 60, 1 + p % 9, p % 10),
            "address": [{"text": "東京都千代田区霞が関1-2-2", "postalCode": "100-8916", "country": "JP"}]
        }
    })];
    entries.push(json!({
        "request": {"method": "PUT", "url": format!("Encounter/{pid}-e")},
        "resource": {
            "resourceType": "Encounter", "id": format!("{pid}-e"), "status": "finished",
            "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB", "display": "ambulatory"},
            "subject": {"reference": format!("Patient/{pid}")},
            "period": {"start": "2026-11-01T09:00:00+09:00", "end": "2026-11-01T09:30:00+09:00"}
        }
    }));
    for i in 1..per_patient {
        let resource = if i % 5 == 0 {
            json!({
                "resourceType": "Condition", "id": format!("{pid}-c{i}"),
                "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "active"}]},
                "code": {"coding": [{"system": "http://jpfhir.jp/fhir/core/CodeSystem/JP_ICD10_CS", "code": "E11", "display": "2型糖尿病"}], "text": "2型糖尿病"},
                "subject": {"reference": format!("Patient/{pid}")},
                "encounter": {"reference": format!("Encounter/{pid}-e")},
                "onsetDateTime": "2025-04-01"
            })
        } else {
            json!({
                "resourceType": "Observation", "id": format!("{pid}-o{i}"), "status": "final",
                "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "laboratory"}]}],
                "code": {"coding": [{"system": "urn:oid:1.2.392.200119.4.504", "code": "3D010000001926101", "display": "グルコース"}], "text": "血糖"},
                "subject": {"reference": format!("Patient/{pid}")},
                "encounter": {"reference": format!("Encounter/{pid}-e")},
                "effectiveDateTime": format!("2026-11-01T09:{:02}:00+09:00", i % 60),
                "valueQuantity": {"value": 90 + (p + i) % 40, "unit": "mg/dL", "system": "http://unitsofmeasure.org", "code": "mg/dL"}
            })
        };
        let url = format!(
            "{}/{}",
            resource["resourceType"].as_str().unwrap_or_default(),
            resource["id"].as_str().unwrap_or_default()
        );
        entries.push(json!({"request": {"method": "PUT", "url": url}, "resource": resource}));
    }
    json!({"resourceType": "Bundle", "type": "batch", "entry": entries})
}

struct Bench {
    base: String,
    http: reqwest::Client,
    source: String,
    dir: std::path::PathBuf,
}

impl Bench {
    /// Exports tenant `source` in `format`; returns (resources, seconds, files on disk).
    async fn export(&self, format: &str) -> Result<(u64, f64, Vec<std::path::PathBuf>), String> {
        let out = self.dir.join(format!("export-{}", format.replace(['/', '+'], "-")));
        std::fs::create_dir_all(&out).map_err(|e| e.to_string())?;
        let start = Instant::now();
        let resp = self
            .http
            .get(format!("{}/fhir/$export", self.base))
            .query(&[("_outputFormat", format)])
            .bearer_auth(&self.source)
            .header("Prefer", "respond-async")
            .header("Accept", "application/fhir+json")
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if resp.status().as_u16() != 202 {
            return Err(format!("kick-off {format}: {} {}", resp.status(), resp.text().await.unwrap_or_default()));
        }
        let status = resp
            .headers()
            .get("content-location")
            .and_then(|v| v.to_str().ok())
            .ok_or("no Content-Location")?
            .to_owned();
        let manifest: Value = loop {
            let resp = self.http.get(&status).bearer_auth(&self.source).send().await.map_err(|e| e.to_string())?;
            match resp.status().as_u16() {
                202 => tokio::time::sleep(Duration::from_millis(100)).await,
                200 => break resp.json().await.map_err(|e| e.to_string())?,
                s => return Err(format!("status {s}: {}", resp.text().await.unwrap_or_default())),
            }
        };
        let mut files = Vec::new();
        let mut count = 0;
        for o in manifest["output"].as_array().cloned().unwrap_or_default() {
            let url = o["url"].as_str().ok_or("output without url")?;
            let name = url.rsplit('/').next().unwrap_or("file").to_owned();
            // CSV child tables count rows, not resources: only main tables (`<Type>[-n].csv`) count.
            if !name.ends_with(".csv") || !name.trim_end_matches(".csv").contains('.') {
                count += o["count"].as_u64().unwrap_or(0);
            }
            let mut resp = self.http.get(url).bearer_auth(&self.source).send().await.map_err(|e| e.to_string())?;
            let path = out.join(&name);
            let mut file = std::fs::File::create(&path).map_err(|e| e.to_string())?;
            while let Some(chunk) = resp.chunk().await.map_err(|e| e.to_string())? {
                std::io::Write::write_all(&mut file, &chunk).map_err(|e| e.to_string())?;
            }
            files.push(path);
        }
        Ok((count, start.elapsed().as_secs_f64(), files))
    }

    /// Imports `files` into the tenant of `token` as `ehr import` does; returns seconds.
    async fn import(&self, token: &str, files: &[std::path::PathBuf]) -> Result<f64, String> {
        let mut groups: BTreeMap<String, Vec<&std::path::PathBuf>> = BTreeMap::new();
        for f in files {
            let name = f.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            let key = if name.ends_with(".csv") {
                name.split('.').next().unwrap_or_default().to_owned()
            } else {
                name.to_owned()
            };
            groups.entry(key).or_default().push(f);
        }
        let start = Instant::now();
        for (label, files) in groups {
            let mut form = reqwest::multipart::Form::new();
            for f in files {
                let name = f.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_owned();
                let bytes = std::fs::read(f).map_err(|e| e.to_string())?;
                let mime = match f.extension().and_then(|e| e.to_str()) {
                    Some("ndjson") => "application/fhir+ndjson",
                    Some("xml") => "application/fhir+xml",
                    Some("json") => "application/fhir+json",
                    _ => "text/csv",
                };
                form = form.part(
                    "file",
                    reqwest::multipart::Part::bytes(bytes).file_name(name).mime_str(mime).map_err(|e| e.to_string())?,
                );
            }
            let resp = self
                .http
                .post(format!("{}/fhir/$import", self.base))
                .bearer_auth(token)
                .multipart(form)
                .send()
                .await
                .map_err(|e| e.to_string())?;
            if !resp.status().is_success() {
                return Err(format!("import {label}: {} {}", resp.status(), resp.text().await.unwrap_or_default()));
            }
        }
        Ok(start.elapsed().as_secs_f64())
    }
}

async fn run(args: &Args) -> Result<(), String> {
    let pg = (args.backend == Backend::Postgres).then_some(args.postgres_url.as_str());
    let mut scratch = ehr_bench::Scratch::new("ehr-bench-export", pg, args.redis_url.as_deref()).await?;
    let dir = scratch.dir.clone();
    let config = &mut scratch.config;
    config.max_body_bytes = 64 * 1024 * 1024;
    config.export.poll_interval_ms = 50;
    config.export.root = dir.join("exports");
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let mut app = ehr_app::build(&scratch.config, Target::All, clock).await.map_err(|e| format!("app: {e}"))?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.map_err(|e| e.to_string())?;
    let base = format!("http://{}", listener.local_addr().map_err(|e| e.to_string())?);
    let router = app.router.clone();
    tokio::spawn(async move {
        let _ = axum::serve(listener, router.into_make_service_with_connect_info::<std::net::SocketAddr>()).await;
    });
    let signer = DevSigner::new().map_err(|e| e.to_string())?;
    let http = reqwest::Client::new();
    let bench =
        Bench { base: base.clone(), http: http.clone(), source: token(&signer, "bench-src")?, dir: dir.clone() };

    let start = Instant::now();
    for p in 0..args.patients {
        let resp = http
            .post(format!("{base}/fhir"))
            .bearer_auth(&bench.source)
            .header("content-type", "application/fhir+json")
            .body(patient_bundle(p, args.per_patient).to_string())
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if resp.status().as_u16() != 200 {
            return Err(format!("load: {} {}", resp.status(), resp.text().await.unwrap_or_default()));
        }
    }
    let total = args.patients * (args.per_patient + 1);
    println!(
        "loaded {total} resources ({} patients) in {:.1} s on {:?}",
        args.patients,
        start.elapsed().as_secs_f64(),
        args.backend
    );
    println!(
        "{:<8} {:>10} {:>12} {:>14} {:>12} {:>14}",
        "format", "resources", "export/s", "export peak", "import/s", "import peak"
    );
    for (n, format) in args.formats.split(',').enumerate() {
        let output_format = match format.trim() {
            "ndjson" => "application/fhir+ndjson",
            "xml" => "application/fhir+xml",
            "json" => "application/fhir+json",
            "csv" => "text/csv",
            other => return Err(format!("--formats: unknown {other}")),
        };
        ehr_bench::reset_peak();
        let (count, secs, files) = bench.export(output_format).await?;
        let export_peak = ehr_bench::peak_kib().unwrap_or(0);
        let target = token(&signer, &format!("bench-dst{n}"))?;
        ehr_bench::reset_peak();
        let import_secs = bench.import(&target, &files).await?;
        let import_peak = ehr_bench::peak_kib().unwrap_or(0);
        println!(
            "{:<8} {:>10} {:>12.0} {:>11} MiB {:>12.0} {:>11} MiB",
            format.trim(),
            count,
            count as f64 / secs,
            export_peak / 1024,
            count as f64 / import_secs,
            import_peak / 1024
        );
    }
    app.stop_workers(Duration::from_secs(5)).await;
    drop(app);
    scratch.remove().await;
    Ok(())
}

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(&args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("export benchmark failed: {e}");
            ExitCode::FAILURE
        }
    }
}
