//! `ehr-bench-national`: the national-service paths of issue #6, through the real HTTP API of an
//! in-process application (target `all`) on SQLite or PostgreSQL + Redis, against the in-process
//! simulators of the two services.
//!
//! 1. **validate** — `POST /fhir/Bundle/$validate` of the official JP-CLINS referral example and
//!    `POST /fhir/Patient/$validate` of the JP Patient example, by `--concurrency` clients:
//!    requests/s and latency percentiles; and the in-process cost of
//!    `ehr_validation::FullValidator::validate` on the same inputs (one core), so that the HTTP
//!    overhead shows.
//! 2. **CLINS** — `--patients` patients stored with a realistic record (institution, JP Patient
//!    with insurance member id and kanji/kana names, conditions, allergies, lab results, a
//!    prescription); `POST /clins/preview` (build + validate) per `--clins-kinds` kind; then every
//!    kind of every patient registered through `POST /clins/submissions` against the CLINS
//!    simulator (Web API transport): submissions/s from the first POST until the last is
//!    `accepted` (the server's own timestamps), the latency of each submission from its POST to
//!    its acceptance, and what the simulator received (each registration exactly once).
//! 3. **e-prescription** — `--prescriptions` patients with insurance and a two-RP order (three
//!    MedicationRequests); per patient a draft (JAHIS CSV), the duplicate check (a dispensing
//!    history planted for every `--duplicate-every`th patient, whose finding is acknowledged)
//!    and the XAdES-signed registration against the e-prescription simulator: registrations/s
//!    until every one is `registered`. In process: CSV build + check, XAdES sign, verify (µs/op).
//!
//! See `docs/performance.md`.

use clap::{Parser, ValueEnum};
use ehr_app::Target;
use ehr_auth::{Claims, DevSigner};
use ehr_core::{Clock, SystemClock};
use ehr_eprescription::chrono::{Duration as Days, NaiveDate};
use ehr_eprescription::model::{Department, DrugCodeType};
use ehr_eprescription::sign::{Signer, SoftwareSigner};
use ehr_eprescription::{csv as eps_csv, fhir as eps_fhir, sign as eps_sign};
use sea_orm::ConnectionTrait;
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Backend {
    Sqlite,
    Postgres,
}

#[derive(Debug, Parser)]
#[command(name = "ehr-bench-national")]
struct Args {
    #[arg(long, value_enum, default_value = "sqlite")]
    backend: Backend,
    /// Concurrent HTTP clients in every phase.
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
    /// `$validate` requests per input.
    #[arg(long, default_value_t = 400)]
    validate_requests: usize,
    /// Seconds per in-process measurement.
    #[arg(long, default_value_t = 2.0)]
    inproc_secs: f64,
    /// CLINS: patients stored, previewed and registered.
    #[arg(long, default_value_t = 100)]
    patients: usize,
    /// CLINS: what is previewed and registered per patient (comma-separated: condition,
    /// drug-allergy, other-allergy, lab-result, infection, referral, discharge-summary, checkup).
    #[arg(
        long,
        default_value = "condition,drug-allergy,other-allergy,lab-result,infection,referral,discharge-summary,checkup"
    )]
    clins_kinds: String,
    /// e-prescription: patients, one prescription each (drafted, checked, registered).
    #[arg(long, default_value_t = 100)]
    prescriptions: usize,
    /// e-prescription: a duplicate planted at the service for every n-th patient (0: none).
    #[arg(long, default_value_t = 10)]
    duplicate_every: usize,
    /// Poll interval of both senders (ms; the defaults of the configuration are 1,000).
    #[arg(long, default_value_t = 50)]
    poll_ms: u64,
    /// Do not run `ANALYZE` on PostgreSQL after the load phases (autovacuum may be off, and a
    /// freshly loaded database without statistics gets nested-loop plans).
    #[arg(long)]
    no_analyze: bool,
    /// Submissions and registrations made one at a time on the quiet system after the bursts
    /// (latency without queueing).
    #[arg(long, default_value_t = 20)]
    idle_samples: usize,
    #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432/postgres")]
    postgres_url: String,
    /// Redis for the event bus and the gateway (required with PostgreSQL).
    #[arg(long)]
    redis_url: Option<String>,
}

const CLINS_TENANT: &str = "bench-clins";
const EPS_TENANT: &str = "bench-eps";
const SCOPES: &str = "user/*.cruds user/NationalSubmission.crus user/EPrescription.crus";
const CLINS_INSTITUTION: &str = "1318814790";
const EPS_INSTITUTION: &str = "1311234567";
const IDE: &str = "http://hl7.org/fhir/StructureDefinition/iso21090-EN-representation";
const USAGE: &str = "http://jpfhir.jp/fhir/core/mhlw/CodeSystem/MedicationUsage_ePrescription";
const GENERAL: &str = "http://jpfhir.jp/fhir/core/mhlw/CodeSystem/MedicationGeneralOrderCode";
const YJ: &str = "http://capstandard.jp/iyaku.info/CodeSystem/YJ-code";
const TID: (&str, &str) = ("1013044400000000", "１日３回朝昼夕食後　服用");
const HS: (&str, &str) = ("1050000000000000", "１日１回就寝前　服用");
const FIXTURES: &str = "crates/fhir/tests/validate/fixtures/jp-clins";

type Res<T> = Result<T, String>;

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

fn now_ms() -> i64 {
    SystemClock.now().timestamp_millis()
}

// ---------------------------------------------------------------------------------------------
// Measurement helpers.

/// Latency percentiles (ms) of a sample.
struct Stats {
    n: usize,
    per_sec: f64,
    p50: f64,
    p95: f64,
    p99: f64,
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn stats(mut ms: Vec<f64>, wall_secs: f64) -> Stats {
    ms.sort_by(f64::total_cmp);
    Stats {
        n: ms.len(),
        per_sec: ms.len() as f64 / wall_secs.max(1e-9),
        p50: percentile(&ms, 50.0),
        p95: percentile(&ms, 95.0),
        p99: percentile(&ms, 99.0),
    }
}

fn row(label: &str, s: &Stats) {
    println!("{label:<44} {:>6} {:>9.1} {:>9.1} {:>9.1} {:>9.1}", s.n, s.per_sec, s.p50, s.p95, s.p99);
}

fn header() {
    println!("{:<44} {:>6} {:>9} {:>9} {:>9} {:>9}", "measure", "n", "per s", "p50 ms", "p95 ms", "p99 ms");
}

/// Runs `job(0..n)` by `concurrency` workers; returns the wall time and each job's latency (ms).
async fn load<F, Fut>(n: usize, concurrency: usize, job: F) -> Res<(f64, Vec<f64>)>
where
    F: Fn(usize) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Res<()>> + Send,
{
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency.max(1) {
        let (next, job) = (next.clone(), job.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                if i >= n {
                    break;
                }
                let t = Instant::now();
                job(i).await?;
                lat.push(t.elapsed().as_secs_f64() * 1e3);
            }
            Ok::<_, String>(lat)
        }));
    }
    let mut all = Vec::with_capacity(n);
    for t in tasks {
        all.extend(t.await.map_err(err)??);
    }
    Ok((start.elapsed().as_secs_f64(), all))
}

/// Calls `f` for about `secs` seconds (after a warm-up); returns µs per call.
fn per_call(secs: f64, mut f: impl FnMut() -> Res<()>) -> Res<f64> {
    for _ in 0..3 {
        f()?;
    }
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed().as_secs_f64() < secs || n < 5 {
        f()?;
        n += 1;
    }
    Ok(start.elapsed().as_secs_f64() * 1e6 / n as f64)
}

// ---------------------------------------------------------------------------------------------
// The HTTP client.

#[derive(Clone)]
struct Api {
    base: String,
    http: reqwest::Client,
    token: Arc<String>,
}

impl Api {
    async fn send(&self, method: reqwest::Method, path: &str, body: Option<(&str, String)>) -> Res<(u16, Value)> {
        let mut req = self.http.request(method, format!("{}{path}", self.base)).bearer_auth(self.token.as_str());
        if let Some((ctype, body)) = body {
            req = req.header("content-type", ctype).body(body);
        }
        let resp = req.send().await.map_err(err)?;
        let status = resp.status().as_u16();
        let bytes = resp.bytes().await.map_err(err)?;
        let v = if bytes.is_empty() { Value::Null } else { serde_json::from_slice(&bytes).unwrap_or(Value::Null) };
        Ok((status, v))
    }

    async fn get(&self, path: &str) -> Res<Value> {
        let (status, v) = self.send(reqwest::Method::GET, path, None).await?;
        if status != 200 {
            return Err(format!("GET {path}: {status} {v}"));
        }
        Ok(v)
    }

    /// POSTs JSON and insists on `want`.
    async fn post(&self, path: &str, ctype: &str, body: String, want: u16) -> Res<Value> {
        let (status, v) = self.send(reqwest::Method::POST, path, Some((ctype, body))).await?;
        if status != want {
            return Err(format!("POST {path}: {status} (wanted {want}) {v}"));
        }
        Ok(v)
    }

    /// A batch Bundle of PUTs (ids chosen here); every entry must succeed.
    async fn batch(&self, resources: Vec<Value>) -> Res<()> {
        let entries: Vec<Value> = resources
            .into_iter()
            .map(|r| {
                let url = format!(
                    "{}/{}",
                    r["resourceType"].as_str().unwrap_or_default(),
                    r["id"].as_str().unwrap_or_default()
                );
                json!({"request": {"method": "PUT", "url": url}, "resource": r})
            })
            .collect();
        let bundle = json!({"resourceType": "Bundle", "type": "batch", "entry": entries});
        let v = self.post("/fhir", "application/fhir+json", bundle.to_string(), 200).await?;
        for e in v["entry"].as_array().into_iter().flatten() {
            let status = e["response"]["status"].as_str().unwrap_or_default();
            if !status.starts_with("20") {
                return Err(format!("batch entry {status}: {e}"));
            }
        }
        Ok(())
    }
}

fn token(signer: &DevSigner, tenant: &str) -> Res<String> {
    let now = SystemClock.now().timestamp();
    let claims = Claims {
        iss: ehr_auth::DEV_ISSUER.into(),
        sub: "ehr-bench-national".into(),
        exp: now + 7200,
        iat: now,
        tenant: tenant.into(),
        scope: SCOPES.into(),
        ..Claims::default()
    };
    signer.sign(&claims).map_err(err)
}

// ---------------------------------------------------------------------------------------------
// Data.

fn name(kind: &str, family: &str, given: &str) -> Value {
    json!({"extension": [{"url": IDE, "valueCode": kind}], "use": "official", "family": family, "given": [given]})
}

const FAMILIES: &[(&str, &str)] =
    &[("牧野", "マキノ"), ("山田", "ヤマダ"), ("佐藤", "サトウ"), ("鈴木", "スズキ"), ("高橋", "タカハシ")];
const GIVENS: &[(&str, &str)] =
    &[("爛漫", "ランマン"), ("花子", "ハナコ"), ("太郎", "タロウ"), ("一郎", "イチロウ"), ("幸子", "サチコ")];

fn names(p: usize) -> Vec<Value> {
    let (fk, fs) = FAMILIES[p % FAMILIES.len()];
    let (gk, gs) = GIVENS[(p / FAMILIES.len()) % GIVENS.len()];
    vec![name("IDE", fk, gk), name("SYL", fs, gs)]
}

/// Our hospital and its doctor, once per tenant.
fn clins_institution() -> Vec<Value> {
    vec![
        json!({"resourceType": "Organization", "id": "clins-org", "name": "東京第一テスト病院",
            "identifier": [{"system": "http://jpfhir.jp/fhir/core/IdSystem/insurance-medical-institution-no", "value": CLINS_INSTITUTION}],
            "address": [{"text": "東京都文京区文京町１−２−３"}]}),
        json!({"resourceType": "Practitioner", "id": "clins-doc", "name": [name("IDE", "大河内", "勘三郎")]}),
    ]
}

/// A patient's record, the shape of the API tests' CLINS patient: admitted for a duodenal ulcer,
/// an old angina, two allergies, three lab results (one HBs antigen), a discharge prescription.
fn clins_record(p: usize) -> Vec<Value> {
    let pid = format!("cp{p:06}");
    let subject = json!({"reference": format!("Patient/{pid}")});
    let mut out = vec![
        json!({"resourceType": "Patient", "id": pid,
            "identifier": [
                {"system": format!("urn:oid:1.2.392.100495.20.3.51.1{CLINS_INSTITUTION}"), "value": format!("{:09}", 100_000 + p)},
                {"system": "http://jpfhir.jp/fhir/clins/Idsystem/JP_Insurance_memberID", "value": format!("00012345:あいう:{}:05", 100 + p)}],
            "name": names(p),
            "gender": if p.is_multiple_of(2) { "female" } else { "male" }, "birthDate": format!("19{:02}-06-28", 30 + p % 60),
            "address": [{"text": "高知県高知市五台山4200-6", "postalCode": "781-8125"}]}),
        json!({"resourceType": "Encounter", "id": format!("{pid}-e"), "status": "finished",
            "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "IMP"},
            "subject": subject, "period": {"start": "2024-10-01", "end": "2024-10-15"}}),
        json!({"resourceType": "Condition", "id": format!("{pid}-c1"),
            "meta": {"tag": [{"system": "http://jpfhir.jp/fhir/clins/CodeSystem/JP_ehrshrs_indication", "code": "LTS"}]},
            "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "active"}]},
            "verificationStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-ver-status", "code": "confirmed"}]},
            "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-category", "code": "encounter-diagnosis"}]}],
            "code": {"coding": [{"system": "http://medis.or.jp/CodeSystem/master-disease-keyNumber", "code": "20064049", "display": "十二指腸潰瘍"}], "text": "十二指腸潰瘍"},
            "subject": subject, "encounter": {"reference": format!("Encounter/{pid}-e")}, "onsetDateTime": "2024-09-20"}),
        json!({"resourceType": "Condition", "id": format!("{pid}-c2"),
            "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "resolved"}]},
            "code": {"coding": [{"system": "http://medis.or.jp/CodeSystem/master-disease-keyNumber", "code": "20058911", "display": "狭心症"}]},
            "subject": subject, "onsetDateTime": "2018"}),
        json!({"resourceType": "AllergyIntolerance", "id": format!("{pid}-a1"),
            "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical", "code": "active"}]},
            "category": ["medication"],
            "code": {"coding": [{"system": "http://jpfhir.jp/fhir/core/CodeSystem/GCM/JP_JfagyMedicationAllergen_CS", "code": "GCM2260701F1ZZZ", "display": "ポビドンヨード含嗽用液７％"}], "text": "ヨードうがい液"},
            "patient": subject}),
        json!({"resourceType": "AllergyIntolerance", "id": format!("{pid}-a2"),
            "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical", "code": "active"}]},
            "category": ["food"],
            "code": {"coding": [{"system": "http://jpfhir.jp/fhir/core/CodeSystem/JP_JfagyFoodAllergen_CS", "code": "J9FC11310000", "display": "さば"}], "text": "さば"},
            "patient": subject}),
        json!({"resourceType": "MedicationRequest", "id": format!("{pid}-m1"), "status": "active", "intent": "order",
            "medicationCodeableConcept": {"coding": [{"system": YJ, "code": "2316009F1022", "display": "ミヤＢＭ錠"}], "text": "ミヤＢＭ錠"},
            "subject": subject, "authoredOn": "2024-10-15T10:00:00+09:00",
            "dosageInstruction": [{"text": "1日3回毎食後",
                "timing": {"code": {"coding": [{"system": USAGE, "code": "1013044400000000", "display": "１日３回朝昼夕食後"}]}},
                "doseAndRate": [{"doseQuantity": {"value": 2, "unit": "錠", "system": "http://jpfhir.jp/fhir/core/mhlw/CodeSystem/MedicationUnitMERIT9Code", "code": "TAB"}}]}]}),
    ];
    for (n, (local, jlac10, text, value, unit)) in [
        ("K01", "3H015000002326101", "カリウム", 4.1, "mmol/L"),
        ("ALB1", "3A015000002327101", "アルブミン", 3.2, "g/dL"),
        ("HBS1", "5F016141002305151", "HBs抗原", 0.05, "S/CO"),
    ]
    .into_iter()
    .enumerate()
    {
        out.push(json!({"resourceType": "Observation", "id": format!("{pid}-o{n}"), "status": "final",
            "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "laboratory"}]}],
            "code": {"coding": [
                {"system": "http://hospital.example.jp/lab-codes", "code": local, "display": text},
                {"system": "http://medis.or.jp/CodeSystem/master-JLAC10-17digits", "code": jlac10}], "text": text},
            "subject": subject, "effectiveDateTime": "2024-10-02T08:30:00+09:00",
            "valueQuantity": {"value": value + (p % 7) as f64 * 0.1, "unit": unit}}));
    }
    out
}

/// The body of a CLINS preview or submission of `kind` for patient `p`.
fn clins_body(kind: &str, p: usize) -> Res<Value> {
    let patient = format!("Patient/cp{p:06}");
    Ok(match kind {
        "condition" | "drug-allergy" | "other-allergy" | "lab-result" | "infection" => {
            json!({"kind": kind, "patient": patient})
        }
        "referral" => json!({"kind": "referral", "patient": patient, "referral": {
            "purpose": "十二指腸潰瘍の精査加療をお願いします。",
            "presentIllness": "９月下旬から上腹部痛が続いている。",
            "clinicalCourse": "PPI 内服で軽快傾向。",
            "destination": {"name": "港診療所", "institutionNumber": "1319876543", "departmentCode": "01", "departmentName": "内科", "practitionerName": "野口 英世"}}}),
        "discharge-summary" => json!({"kind": "discharge-summary", "patient": patient, "discharge": {
            "encounter": format!("Encounter/cp{p:06}-e"), "chiefComplaint": "上腹部痛", "admissionReason": "十二指腸潰瘍の加療",
            "presentIllness": "９月下旬から上腹部痛。", "hospitalCourse": "絶食と PPI で改善。", "dischargeInstructions": "２週間後に外来受診。"}}),
        "checkup" => json!({"kind": "checkup", "patient": patient, "checkup": {"date": "2024-10-02"}}),
        other => return Err(format!("--clins-kinds: unknown kind {other}")),
    })
}

fn eps_institution() -> Vec<Value> {
    vec![
        json!({"resourceType": "Organization", "id": "eps-org",
            "identifier": [{"system": "http://jpfhir.jp/fhir/core/IdSystem/insurance-medical-institution-no", "value": EPS_INSTITUTION}],
            "name": "第一病院", "telecom": [{"system": "phone", "value": "03-1234-5678"}],
            "address": [{"text": "東京都千代田区千代田９－９－９", "postalCode": "100-0001"}]}),
        json!({"resourceType": "Practitioner", "id": "eps-doc",
            "name": [name("IDE", "神奈川", "花子"), name("SYL", "カナガワ", "ハナコ")]}),
    ]
}

/// The 被保険者証番号 of e-prescription patient `p` (distinct per patient: the service finds
/// histories by the member key).
fn eps_member_number(p: usize) -> String {
    format!("{}", 60_000 + p)
}

fn eps_member_key(p: usize) -> String {
    format!("06139999:12345:{}:01", eps_member_number(p))
}

fn medication_request(
    pid: &str,
    id: String,
    rp: u32,
    idx: u32,
    drug: (&str, &str, &str),
    usage: (&str, &str),
    days: u32,
) -> Value {
    let (system, code, text) = drug;
    json!({"resourceType": "MedicationRequest", "id": id, "status": "active", "intent": "order",
        "identifier": [
            {"system": "http://jpfhir.jp/fhir/core/mhlw/IdSystem/Medication-RPGroupNumber", "value": rp.to_string()},
            {"system": "http://jpfhir.jp/fhir/core/mhlw/IdSystem/MedicationAdministrationIndex", "value": idx.to_string()}],
        "medicationCodeableConcept": {"coding": [{"system": system, "code": code, "display": text}], "text": text},
        "subject": {"reference": format!("Patient/{pid}")},
        "requester": {"reference": "Practitioner/eps-doc"},
        "authoredOn": "2026-04-01T09:00:00+09:00",
        "dosageInstruction": [{
            "timing": {"code": {"coding": [{"system": USAGE, "code": usage.0, "display": usage.1}]}},
            "doseAndRate": [{"doseQuantity": {"value": 1, "unit": "錠", "system": "http://jpfhir.jp/fhir/core/mhlw/CodeSystem/MedicationUnitMERIT9Code", "code": "TAB"}}]}],
        "dispenseRequest": {"expectedSupplyDuration": {"value": days, "unit": "日", "system": "http://unitsofmeasure.org", "code": "d"}}})
}

/// Patient, Coverage and the two-RP order (loxoprofen 一般名 + rebamipide ×3/day 7 days;
/// magnesium oxide at bedtime 14 days) of e-prescription patient `p`.
fn eps_record(p: usize) -> Vec<Value> {
    let pid = format!("ep{p:06}");
    vec![
        json!({"resourceType": "Patient", "id": pid,
            "identifier": [{"system": format!("urn:oid:1.2.392.100495.20.3.51.1{EPS_INSTITUTION}"), "value": format!("{:08}", 10 + p)}],
            "name": names(p), "gender": if p.is_multiple_of(2) { "male" } else { "female" },
            "birthDate": format!("19{:02}-02-11", 30 + p % 60)}),
        json!({"resourceType": "Coverage", "id": format!("{pid}-cov"), "status": "active",
            "subscriberId": eps_member_number(p), "dependent": "01",
            "type": {"coding": [{"system": "urn:oid:1.2.392.100495.20.2.61", "code": "1"}]},
            "beneficiary": {"reference": format!("Patient/{pid}")},
            "relationship": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/subscriber-relationship", "code": "self"}]},
            "payor": [{"identifier": {"system": "http://jpfhir.jp/fhir/core/mhlw/IdSystem/InsurerNumber", "value": "06139999"}}],
            "class": [{"type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/coverage-class", "code": "group"}]}, "value": "12345"}],
            "extension": [{"url": "http://jpfhir.jp/fhir/core/Extension/StructureDefinition/JP_Coverage_InsuredPersonSymbol", "valueString": "12345"}],
            "costToBeneficiary": [{"type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/coverage-copay-type", "code": "copaypct"}]},
                "valueQuantity": {"value": 30, "unit": "%", "system": "http://unitsofmeasure.org", "code": "%"}}]}),
        medication_request(
            &pid,
            format!("{pid}-m1"),
            1,
            1,
            (GENERAL, "1149019F1ZZZ", "【般】ロキソプロフェンＮａ錠６０ｍｇ"),
            TID,
            7,
        ),
        medication_request(&pid, format!("{pid}-m2"), 1, 2, (YJ, "2329021F1021", "レバミピド錠１００ｍｇ"), TID, 7),
        medication_request(
            &pid,
            format!("{pid}-m3"),
            2,
            1,
            (YJ, "2344009F1037", "酸化マグネシウム錠３３０ｍｇ"),
            HS,
            14,
        ),
    ]
}

fn today_jst() -> NaiveDate {
    (SystemClock.now() + Days::hours(9)).date_naive()
}

// ---------------------------------------------------------------------------------------------
// In-process costs.

fn fixture(workspace: &Path, name: &str) -> Res<(Value, usize)> {
    let path = workspace.join(FIXTURES).join(name);
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok((serde_json::from_str(&text).map_err(err)?, text.len()))
}

struct InProcess {
    parse_bundle: f64,
    validate_bundle: f64,
    parse_patient: f64,
    validate_patient: f64,
    csv_build: f64,
    csv_check: f64,
    sign: f64,
    verify: f64,
    csv_bytes: usize,
    doc_bytes: usize,
}

fn in_process(
    args: &Args,
    bundle: &(Value, usize),
    patient: &(Value, usize),
    signer: &SoftwareSigner,
) -> Res<InProcess> {
    let validator = ehr_validation::FullValidator::builtin().map_err(err)?;
    for (what, v) in [("referral Bundle", &bundle.0), ("Patient", &patient.0)] {
        let issues = validator.validate(v, None);
        if ehr_validation::has_errors(&issues) {
            return Err(format!("the {what} example does not validate: {issues:?}"));
        }
    }
    let bundle_text = bundle.0.to_string();
    let patient_text = patient.0.to_string();
    let parse = |text: &str| serde_json::from_str::<Value>(text).map(|_| ()).map_err(err);
    let parse_bundle = per_call(args.inproc_secs / 2.0, || parse(&bundle_text))?;
    let validate_bundle = per_call(args.inproc_secs, || {
        std::hint::black_box(validator.validate(&bundle.0, None));
        Ok(())
    })?;
    let parse_patient = per_call(args.inproc_secs / 2.0, || parse(&patient_text))?;
    let validate_patient = per_call(args.inproc_secs, || {
        std::hint::black_box(validator.validate(&patient.0, None));
        Ok(())
    })?;

    // The e-prescription of patient 0, as the adapter maps it.
    let record = eps_record(0);
    let org = &eps_institution()[0];
    let prac = &eps_institution()[1];
    let requests: Vec<(String, Value)> =
        record[2..].iter().map(|r| (r["id"].as_str().unwrap_or_default().to_owned(), r.clone())).collect();
    let department = Department { code: Some("01".into()), name: "内科".into() };
    let sources = eps_fhir::Sources {
        patient: &record[0],
        medication_requests: &requests,
        coverage: Some(&record[1]),
        payor: None,
        public_coverages: &[],
        organization: org,
        practitioner: prac,
        department: Some(&department),
        issue_date: today_jst(),
    };
    let build = || -> Res<String> {
        let (model, _) = eps_fhir::prescription(&sources).map_err(err)?;
        eps_csv::build(&model).map_err(err)
    };
    let csv_text = build()?;
    eps_csv::check(&csv_text).map_err(|i| format!("the CSV does not check: {i:?}"))?;
    let csv_build = per_call(args.inproc_secs / 2.0, || build().map(|_| ()))?;
    let csv_check =
        per_call(args.inproc_secs / 2.0, || eps_csv::check(&csv_text).map(|_| ()).map_err(|i| format!("{i:?}")))?;
    let now = SystemClock.now();
    let doc = eps_sign::signed_document(&csv_text, signer, now).map_err(err)?;
    let trusted = vec![signer.certificate().to_vec()];
    eps_sign::verify_document(&doc, &trusted, true).map_err(|f| format!("verify: {f:?}"))?;
    let sign = per_call(args.inproc_secs / 2.0, || {
        eps_sign::signed_document(&csv_text, signer, now).map(|_| ()).map_err(err)
    })?;
    let verify = per_call(args.inproc_secs / 2.0, || {
        eps_sign::verify_document(&doc, &trusted, true).map(|_| ()).map_err(|f| format!("{f:?}"))
    })?;
    Ok(InProcess {
        parse_bundle,
        validate_bundle,
        parse_patient,
        validate_patient,
        csv_build,
        csv_check,
        sign,
        verify,
        csv_bytes: csv_text.len(),
        doc_bytes: doc.len(),
    })
}

// ---------------------------------------------------------------------------------------------
// The application.

/// Runs `ANALYZE` on the benchmark's PostgreSQL database (when there is one and it is wanted).
async fn analyze(url: Option<&str>) -> Res<()> {
    let Some(url) = url else { return Ok(()) };
    let conn = sea_orm::Database::connect(url).await.map_err(|e| format!("connect for ANALYZE: {e}"))?;
    let autovacuum = conn
        .query_one_raw(sea_orm::Statement::from_string(sea_orm::DbBackend::Postgres, "SHOW autovacuum"))
        .await
        .map_err(|e| format!("SHOW autovacuum: {e}"))?
        .and_then(|row| row.try_get::<String>("", "autovacuum").ok())
        .unwrap_or_else(|| "?".to_owned());
    let t = Instant::now();
    conn.execute_unprepared("ANALYZE").await.map_err(|e| format!("ANALYZE: {e}"))?;
    let _ = conn.close().await;
    println!("  ANALYZE took {:.1} s (server autovacuum = {autovacuum})", t.elapsed().as_secs_f64());
    Ok(())
}

/// Polls `path` until its `state` is not `queued`; returns the final state and `updatedAt`.
async fn settle(api: &Api, path: &str) -> Res<(String, i64)> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let v = api.get(path).await?;
        let state = v["state"].as_str().unwrap_or_default();
        if state != "queued" || Instant::now() > deadline {
            return Ok((state.to_owned(), v["updatedAt"].as_i64().unwrap_or(0)));
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// What the sender did alone: the submissions that completed after the last POST returned, and
/// their rate until the last one completed (server timestamps).
fn drain_line(what: &str, drained: usize, total: usize, post_end: i64, last: i64) {
    let secs = (last - post_end).max(1) as f64 / 1e3;
    println!(
        "  {what}: {} of {total} completed during the POSTs; the other {drained} after the last POST returned, in {secs:.1} s ({:.1}/s, the sender alone)",
        total - drained,
        drained as f64 / secs
    );
}

struct Rows {
    rows: Vec<(String, Stats)>,
}

impl Rows {
    fn push(&mut self, label: impl Into<String>, s: Stats) {
        let label = label.into();
        row(&label, &s);
        self.rows.push((label, s));
    }
}

async fn validate_phase(args: &Args, api: &Api, rows: &mut Rows, inputs: [(&str, &Value); 2]) -> Res<()> {
    for (label, resource) in inputs {
        let ty = resource["resourceType"].as_str().unwrap_or_default().to_owned();
        let body = Arc::new(resource.to_string());
        let path = Arc::new(format!("/fhir/{ty}/$validate"));
        // One checked call: an OperationOutcome without errors.
        let oo = api.post(&path, "application/fhir+json", body.to_string(), 200).await?;
        let errors = oo["issue"].as_array().into_iter().flatten().filter(|i| i["severity"] == "error").count();
        if oo["resourceType"] != "OperationOutcome" || errors > 0 {
            return Err(format!("$validate of the {label}: {oo}"));
        }
        let api = api.clone();
        let (wall, lat) = load(args.validate_requests, args.concurrency, move |_| {
            let (api, body, path) = (api.clone(), body.clone(), path.clone());
            async move { api.post(&path, "application/fhir+json", body.to_string(), 200).await.map(|_| ()) }
        })
        .await?;
        rows.push(format!("$validate {label}"), stats(lat, wall));
    }
    Ok(())
}

async fn clins_phase(
    args: &Args,
    api: &Api,
    sim: &ehr_clins::sim::SimHandle,
    rows: &mut Rows,
    analyze_url: Option<&str>,
) -> Res<()> {
    let kinds: Vec<String> =
        args.clins_kinds.split(',').map(|k| k.trim().to_owned()).filter(|k| !k.is_empty()).collect();
    for k in &kinds {
        clins_body(k, 0)?;
    }
    let start = Instant::now();
    api.batch(clins_institution()).await?;
    let store_api = api.clone();
    let (wall, _) = load(args.patients, args.concurrency, move |p| {
        let api = store_api.clone();
        async move { api.batch(clins_record(p)).await }
    })
    .await?;
    println!(
        "  CLINS: {} patients × {} resources stored in {:.1} s ({:.0} resources/s)",
        args.patients,
        clins_record(0).len(),
        start.elapsed().as_secs_f64(),
        (args.patients * clins_record(0).len()) as f64 / wall
    );
    analyze(analyze_url).await?;

    // Preview (build + validate), per kind.
    for kind in &kinds {
        let (api, kind2) = (api.clone(), Arc::new(kind.clone()));
        let (wall, lat) = load(args.patients, args.concurrency, move |p| {
            let (api, kind) = (api.clone(), kind2.clone());
            async move {
                let body = clins_body(&kind, p)?;
                let v = api.post("/clins/preview", "application/json", body.to_string(), 200).await?;
                if v["valid"] != true {
                    return Err(format!("preview {kind} of patient {p} is not valid: {:#}", v["issues"]));
                }
                Ok(())
            }
        })
        .await?;
        rows.push(format!("CLINS preview {kind}"), stats(lat, wall));
    }

    // Registration: every kind of every patient, POSTed by the clients while the sender works.
    let jobs: Arc<Vec<(usize, String)>> =
        Arc::new((0..args.patients).flat_map(|p| kinds.iter().map(move |k| (p, k.clone()))).collect());
    let posted: Arc<Mutex<Vec<(String, i64)>>> = Arc::new(Mutex::new(Vec::new()));
    let first_post = now_ms();
    let (api2, jobs2, posted2) = (api.clone(), jobs.clone(), posted.clone());
    let (wall, lat) = load(jobs.len(), args.concurrency, move |i| {
        let (api, jobs, posted) = (api2.clone(), jobs2.clone(), posted2.clone());
        async move {
            let (p, kind) = &jobs[i];
            let body = clins_body(kind, *p)?;
            let at = now_ms();
            let s = api.post("/clins/submissions", "application/json", body.to_string(), 202).await?;
            let id = s["id"].as_str().ok_or("submission without id")?.to_owned();
            posted.lock().map_err(err)?.push((id, at));
            Ok(())
        }
    })
    .await?;
    rows.push("CLINS submit (POST: build, validate, queue)", stats(lat, wall));
    let post_end = now_ms();
    let deadline = Instant::now() + Duration::from_secs(900);
    loop {
        let v = api.get("/clins/submissions?state=queued&_count=1").await?;
        if v["submissions"].as_array().is_none_or(Vec::is_empty) {
            break;
        }
        if Instant::now() > deadline {
            return Err("CLINS submissions still queued after 15 minutes".into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Every submission as the server recorded it, patient by patient.
    let mut done: HashMap<String, (String, i64, String)> = HashMap::new();
    for p in 0..args.patients {
        let v = api.get(&format!("/clins/submissions?patient=Patient/cp{p:06}&_count=1000")).await?;
        for s in v["submissions"].as_array().into_iter().flatten() {
            done.insert(
                s["id"].as_str().unwrap_or_default().to_owned(),
                (
                    s["state"].as_str().unwrap_or_default().to_owned(),
                    s["updatedAt"].as_i64().unwrap_or(0),
                    s["bundleIdentifier"].as_str().unwrap_or_default().to_owned(),
                ),
            );
        }
    }
    let posted = posted.lock().map_err(err)?.clone();
    let mut e2e = Vec::with_capacity(posted.len());
    let mut last = first_post;
    let mut not_accepted = BTreeMap::<String, usize>::new();
    let mut keys = Vec::new();
    for (id, at) in &posted {
        match done.get(id) {
            Some((state, updated, key)) if state == "accepted" => {
                e2e.push((updated - at) as f64);
                last = last.max(*updated);
                keys.push(key.clone());
            }
            Some((state, _, _)) => *not_accepted.entry(state.clone()).or_default() += 1,
            None => *not_accepted.entry("missing".into()).or_default() += 1,
        }
    }
    let secs = (last - first_post) as f64 / 1e3;
    rows.push("CLINS registered, POST → accepted (e2e)", stats(e2e, secs));
    let drained = done.values().filter(|(state, updated, _)| state == "accepted" && *updated > post_end).count();
    drain_line("CLINS", drained, posted.len(), post_end, last);
    // What the simulator received: each bundle registered exactly once.
    let received = sim.received();
    let mut per_key: HashMap<&str, usize> = HashMap::new();
    let mut repeated = 0;
    for r in &received {
        if r.repeated {
            repeated += 1;
        } else if r.operation == ehr_clins::envelope::Operation::Register
            && r.result_code == ehr_clins::envelope::codes::ACCEPTED
        {
            *per_key.entry(r.bundle_identifier.as_deref().unwrap_or_default()).or_default() += 1;
        }
    }
    let once = keys.iter().filter(|k| per_key.get(k.as_str()) == Some(&1)).count();
    println!(
        "  CLINS simulator: {} requests received, {} registrations accepted, {} repeated; {once} of {} submissions registered exactly once; not accepted: {not_accepted:?}",
        received.len(),
        per_key.values().sum::<usize>(),
        repeated,
        posted.len()
    );
    if once != posted.len() || !not_accepted.is_empty() {
        return Err(format!(
            "CLINS: {once} of {} registered exactly once, not accepted {not_accepted:?}",
            posted.len()
        ));
    }
    // One at a time on the quiet system: the latency of a submission without a queue.
    let mut idle = Vec::new();
    let start = Instant::now();
    for i in 0..args.idle_samples {
        let body = clins_body(&kinds[i % kinds.len()], i % args.patients.max(1))?;
        let at = now_ms();
        let s = api.post("/clins/submissions", "application/json", body.to_string(), 202).await?;
        let id = s["id"].as_str().ok_or("submission without id")?;
        let (state, updated) = settle(api, &format!("/clins/submissions/{id}")).await?;
        if state != "accepted" {
            return Err(format!("idle submission {id} is {state}"));
        }
        idle.push((updated - at) as f64);
    }
    rows.push("CLINS one at a time, POST → accepted", stats(idle, start.elapsed().as_secs_f64()));
    Ok(())
}

async fn eps_phase(
    args: &Args,
    api: &Api,
    sim: &ehr_eprescription::sim::SimHandle,
    rows: &mut Rows,
    analyze_url: Option<&str>,
) -> Res<()> {
    let n = args.prescriptions;
    let start = Instant::now();
    api.batch(eps_institution()).await?;
    let store_api = api.clone();
    load(n, args.concurrency, move |p| {
        let api = store_api.clone();
        async move { api.batch(eps_record(p)).await }
    })
    .await?;
    println!(
        "  e-prescription: {n} patients × {} resources stored in {:.1} s",
        eps_record(0).len(),
        start.elapsed().as_secs_f64()
    );
    analyze(analyze_url).await?;
    // Dispensing histories at the service: loxoprofen three days ago, from another pharmacy.
    let planted: Vec<usize> =
        if args.duplicate_every == 0 { Vec::new() } else { (0..n).step_by(args.duplicate_every).collect() };
    for &p in &planted {
        sim.plant(ehr_eprescription::sim::History {
            member_key: eps_member_key(p),
            source: "dispensing".into(),
            institution: "1319999999".into(),
            code_type: DrugCodeType::Yj,
            code: "1149019F1560".into(),
            name: "ロキソニン錠６０ｍｇ".into(),
            date: today_jst() - Days::days(3),
            days: 14,
        });
    }

    // Drafts.
    let ids: Arc<Mutex<Vec<Option<String>>>> = Arc::new(Mutex::new(vec![None; n]));
    let (api2, ids2) = (api.clone(), ids.clone());
    let (wall, lat) = load(n, args.concurrency, move |p| {
        let (api, ids) = (api2.clone(), ids2.clone());
        async move {
            let pid = format!("ep{p:06}");
            let body = json!({"patient": format!("Patient/{pid}"), "coverage": format!("Coverage/{pid}-cov"),
                "organization": "Organization/eps-org", "department": {"code": "01", "name": "内科"},
                "medicationRequests": (1..=3).map(|m| format!("MedicationRequest/{pid}-m{m}")).collect::<Vec<_>>()});
            let d = api.post("/eprescription/prescriptions", "application/json", body.to_string(), 201).await?;
            let id = d["id"].as_str().ok_or("draft without id")?.to_owned();
            ids.lock().map_err(err)?[p] = Some(id);
            Ok(())
        }
    })
    .await?;
    rows.push("e-Rx draft (POST: FHIR → JAHIS CSV)", stats(lat, wall));
    let ids: Arc<Vec<String>> =
        Arc::new(ids.lock().map_err(err)?.iter().map(|i| i.clone().unwrap_or_default()).collect());

    // Duplicate check (synchronous call to the service).
    let findings: Arc<Mutex<Vec<usize>>> = Arc::new(Mutex::new(vec![0; n]));
    let (api2, ids2, f2) = (api.clone(), ids.clone(), findings.clone());
    let (wall, lat) = load(n, args.concurrency, move |p| {
        let (api, ids, findings) = (api2.clone(), ids2.clone(), f2.clone());
        async move {
            let v = api
                .post(&format!("/eprescription/prescriptions/{}/check", ids[p]), "application/json", String::new(), 200)
                .await?;
            findings.lock().map_err(err)?[p] = v["findings"].as_array().map_or(0, Vec::len);
            Ok(())
        }
    })
    .await?;
    rows.push("e-Rx duplicate check (POST → service)", stats(lat, wall));
    let findings = findings.lock().map_err(err)?.clone();
    let flagged: Vec<usize> = (0..n).filter(|p| findings[*p] > 0).collect();
    if flagged != planted {
        return Err(format!("duplicate check flagged {flagged:?}, planted {planted:?}"));
    }

    // Registration: signed and queued by the POST, sent by the sender.
    let posted: Arc<Mutex<Vec<(usize, i64)>>> = Arc::new(Mutex::new(Vec::new()));
    let acknowledge: Arc<Vec<bool>> = Arc::new(findings.iter().map(|f| *f > 0).collect());
    let first_post = now_ms();
    let (api2, ids2, p2) = (api.clone(), ids.clone(), posted.clone());
    let (wall, lat) = load(n, args.concurrency, move |p| {
        let (api, ids, posted, ack) = (api2.clone(), ids2.clone(), p2.clone(), acknowledge.clone());
        async move {
            let body = if ack[p] { json!({"acknowledgeFindings": true}).to_string() } else { String::new() };
            let at = now_ms();
            api.post(&format!("/eprescription/prescriptions/{}/register", ids[p]), "application/json", body, 202)
                .await?;
            posted.lock().map_err(err)?.push((p, at));
            Ok(())
        }
    })
    .await?;
    rows.push("e-Rx register (POST: XAdES sign, queue)", stats(lat, wall));
    let post_end = now_ms();
    let deadline = Instant::now() + Duration::from_secs(900);
    while sim.registrations() < n {
        if Instant::now() > deadline {
            return Err(format!("only {} of {n} prescriptions reached the service", sim.registrations()));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let posted = posted.lock().map_err(err)?.clone();
    let mut e2e = Vec::with_capacity(n);
    let mut last = first_post;
    let mut drained = 0;
    for (p, at) in &posted {
        let path = format!("/eprescription/prescriptions/{}", ids[*p]);
        let mut tries = 0;
        let v = loop {
            let v = api.get(&path).await?;
            match v["state"].as_str() {
                Some("registered") => break v,
                Some("queued") if tries < 600 => {
                    tries += 1;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                other => return Err(format!("prescription {} is {other:?}: {v}", ids[*p])),
            }
        };
        if v["exchangeNumber"].as_str().map(str::len) != Some(16) {
            return Err(format!("no exchange number: {v}"));
        }
        let updated = v["updatedAt"].as_i64().unwrap_or(0);
        e2e.push((updated - at) as f64);
        last = last.max(updated);
        drained += usize::from(updated > post_end);
    }
    drain_line("e-Rx", drained, n, post_end, last);
    rows.push("e-Rx registered, POST → registered (e2e)", stats(e2e, (last - first_post) as f64 / 1e3));
    let signed =
        sim.prescriptions().iter().filter(|r| r.signer.as_deref().is_some_and(|s| s.contains("ベンチ署名医"))).count();
    println!(
        "  e-prescription simulator: {} register messages received, {} registered ({signed} signed by the bench signer), {} duplicate findings acknowledged",
        sim.received(ehr_eprescription::xml::REGISTER),
        sim.registrations(),
        flagged.len()
    );
    if sim.registrations() != n || signed != n {
        return Err(format!("{} registered, {signed} signed, {n} expected", sim.registrations()));
    }
    // One at a time on the quiet system: draft, check, register, until registered (a second
    // prescription of the same drugs: its check finds the first, which is acknowledged).
    let mut idle = Vec::new();
    let start = Instant::now();
    for i in 0..args.idle_samples.min(n) {
        let pid = format!("ep{i:06}");
        let body = json!({"patient": format!("Patient/{pid}"), "coverage": format!("Coverage/{pid}-cov"),
            "organization": "Organization/eps-org", "department": {"code": "01", "name": "内科"},
            "medicationRequests": (1..=3).map(|m| format!("MedicationRequest/{pid}-m{m}")).collect::<Vec<_>>()});
        let d = api.post("/eprescription/prescriptions", "application/json", body.to_string(), 201).await?;
        let id = d["id"].as_str().ok_or("draft without id")?.to_owned();
        let path = format!("/eprescription/prescriptions/{id}");
        api.post(&format!("{path}/check"), "application/json", String::new(), 200).await?;
        let at = now_ms();
        let ack = json!({"acknowledgeFindings": true}).to_string();
        api.post(&format!("{path}/register"), "application/json", ack, 202).await?;
        let (state, updated) = settle(api, &path).await?;
        if state != "registered" {
            return Err(format!("idle prescription {id} is {state}"));
        }
        idle.push((updated - at) as f64);
    }
    rows.push("e-Rx one at a time, register → registered", stats(idle, start.elapsed().as_secs_f64()));
    Ok(())
}

async fn run(args: &Args) -> Res<()> {
    let workspace = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let bundle = fixture(&workspace, "Bundle-Bundle-CLINS-Referral-Example-01.json")?;
    let patient = fixture(&workspace, "Patient-Example-JP-Patient-standard.json")?;
    let signer = SoftwareSigner::generate("ベンチ署名医 テスト", SystemClock.now()).map_err(err)?;
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let backend = match args.backend {
        Backend::Sqlite => "SQLite".to_owned(),
        Backend::Postgres => {
            format!("PostgreSQL{}", if args.redis_url.is_some() { " + Redis" } else { " (in-process bus)" })
        }
    };
    println!(
        "ehr-bench-national: {cores} cores, {backend}; server, client, simulators and database in one process / machine"
    );

    let ip = in_process(args, &bundle, &patient, &signer)?;
    println!("in process (one core):");
    println!(
        "  FullValidator::validate referral Bundle ({} B): {:>9.0} µs/op   (serde_json parse {:.0} µs)",
        bundle.1, ip.validate_bundle, ip.parse_bundle
    );
    println!(
        "  FullValidator::validate Patient ({} B):          {:>9.0} µs/op   (serde_json parse {:.1} µs)",
        patient.1, ip.validate_patient, ip.parse_patient
    );
    println!(
        "  e-Rx FHIR → CSV build ({} B):                     {:>9.0} µs/op;  CSV check {:.0} µs/op",
        ip.csv_bytes, ip.csv_build, ip.csv_check
    );
    println!(
        "  e-Rx XAdES sign ({} B document):               {:>9.0} µs/op;  verify {:.0} µs/op",
        ip.doc_bytes, ip.sign, ip.verify
    );

    // The simulators, then the application pointed at them.
    let (clins_addr, clins_sim) = ehr_clins::sim::Simulator::start(&ehr_clins::sim::SimOptions {
        listen: "127.0.0.1:0".into(),
        ..ehr_clins::sim::SimOptions::default()
    })
    .await?;
    let eps_sim = ehr_eprescription::sim::start(ehr_eprescription::sim::SimOptions {
        trusted_certificates: vec![signer.certificate().to_vec()],
        ..ehr_eprescription::sim::SimOptions::default()
    })
    .await?;
    let pg = (args.backend == Backend::Postgres).then_some(args.postgres_url.as_str());
    let mut scratch = ehr_bench::Scratch::new("ehr-bench-national", pg, args.redis_url.as_deref()).await?;
    let dir = scratch.dir.clone();
    let (key_file, cert_file) = (dir.join("signer-key.pem"), dir.join("signer-cert.pem"));
    std::fs::write(&key_file, signer.key_pem().map_err(err)?).map_err(err)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600)).map_err(err)?;
    }
    std::fs::write(&cert_file, signer.cert_pem()).map_err(err)?;
    let config = &mut scratch.config;
    config.clins.transport = "web-api".into();
    config.clins.url = Some(format!("http://{clins_addr}"));
    config.clins.poll_interval_ms = args.poll_ms;
    config.clins.retry_base_ms = 200;
    config.clins.retry_max_ms = 1_000;
    config.clins.max_attempts = 50;
    let e = &mut config.eprescription;
    e.url = Some(eps_sim.url());
    e.signer_key_file = Some(key_file);
    e.signer_cert_file = Some(cert_file);
    e.poll_interval_ms = args.poll_ms;
    e.retry_base_ms = 200;
    e.retry_max_ms = 1_000;
    e.max_attempts = 50;
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let analyze_url = if args.no_analyze { None } else { scratch.postgres_database_url() };
    let mut app = ehr_app::build(&scratch.config, Target::All, clock).await.map_err(|e| format!("app: {e}"))?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.map_err(err)?;
    let base = format!("http://{}", listener.local_addr().map_err(err)?);
    let router = app.router.clone();
    tokio::spawn(async move {
        let _ = axum::serve(listener, router.into_make_service_with_connect_info::<std::net::SocketAddr>()).await;
    });
    let dev = DevSigner::new().map_err(err)?;
    let http = reqwest::Client::builder().pool_max_idle_per_host(args.concurrency * 2).build().map_err(err)?;
    let clins_api = Api { base: base.clone(), http: http.clone(), token: Arc::new(token(&dev, CLINS_TENANT)?) };
    let eps_api = Api { base, http, token: Arc::new(token(&dev, EPS_TENANT)?) };

    println!("HTTP, {} concurrent clients; senders poll every {} ms:", args.concurrency, args.poll_ms);
    header();
    let mut rows = Rows { rows: Vec::new() };
    validate_phase(args, &clins_api, &mut rows, [("referral Bundle", &bundle.0), ("Patient", &patient.0)]).await?;
    let result = async {
        clins_phase(args, &clins_api, &clins_sim, &mut rows, analyze_url.as_deref()).await?;
        eps_phase(args, &eps_api, &eps_sim, &mut rows, analyze_url.as_deref()).await
    }
    .await;
    // The summary, in the order measured.
    println!("summary ({backend}, {cores} cores, concurrency {}):", args.concurrency);
    header();
    for (label, s) in &rows.rows {
        row(label, s);
    }
    app.stop_workers(Duration::from_secs(5)).await;
    drop(app);
    drop(clins_sim);
    drop(eps_sim);
    scratch.remove().await;
    result
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
            eprintln!("national benchmark failed: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_a_small_sample() {
        let s = stats((1..=100).map(f64::from).collect(), 2.0);
        assert_eq!((s.n, s.per_sec), (100, 50.0));
        assert_eq!((s.p50, s.p95, s.p99), (51.0, 95.0, 99.0));
        assert_eq!(percentile(&[], 50.0), 0.0);
    }

    #[test]
    fn member_keys_differ_per_patient() {
        assert_ne!(eps_member_key(1), eps_member_key(2));
        assert_eq!(eps_member_key(0), "06139999:12345:60000:01");
    }
}
