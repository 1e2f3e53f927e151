//! A simulator of the e-prescription service (電子処方箋管理サービス) for tests and demos.
//!
//! Web API: `POST /eps/{MessageType}` with the request XML ([`crate::xml`]); the answer is the
//! response XML (HTTP 200 whether processed or refused — the refusal is in
//! `ProcessingResultStatus` 2 with `ResultCode`/`ResultMessage` and `Errors`). It checks what the
//! real service checks, as far as we can read it: the envelope, every CSV record and field
//! ([`crate::csv::check`]: LF only — EPSB0052E —, record order and RP grouping, mandatory
//! records and fields, code formats), the XAdES signature of an electronic prescription (digests,
//! value, a signer certificate in its trust list), and that the insured person of the body is
//! the one of the CSV. A repeat of a request (same institution and `ArbitraryFileIdentifier`)
//! gets the first answer: nothing is registered twice.
//!
//! Tests start it in-process with [`start`] on port 0 and steer it through [`SimHandle`]: down
//! (503) and delay knobs, planted history of other institutions for the duplicate check, a
//! pharmacy dispensing a registered prescription, and counters.

use crate::csv;
use crate::model::{DrugCodeType, Prescription};
use crate::sign;
use crate::xml::{self, DispensedDrug, DispensingResult, ErrorDetail, Finding, IssueType, Request, Response};
use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response as HttpResponse};
use axum::routing::{get, post};
use chrono::NaiveDate;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How `ehr sim eprescription` runs the simulator.
#[derive(Debug, Clone, Default)]
pub struct SimOptions {
    /// Where the Web API listens (`127.0.0.1:9302`).
    pub listen: String,
    /// The terminal file-drop root (`<root>/<institution>/req|res`), when the file method is
    /// served. Not served yet: the simulator speaks the Web API only.
    pub file_root: Option<PathBuf>,
    /// The file-drop encryption password.
    pub password: Option<String>,
    /// Signer certificates (DER) the simulator trusts (production: the HPKI CA chain).
    pub trusted_certificates: Vec<Vec<u8>>,
}

/// The simulator's success code (our reading; the real codes are in the 外部IF仕様書).
pub const OK: &str = "EPSI0000I";
/// Dispensing results asked for before any pharmacy dispensed.
pub const NO_RESULTS: &str = "EPSI0001I";
/// The envelope is not the XML this message takes.
pub const BAD_XML: &str = "EPSX0001E";
/// The URL's message type and the header's differ.
pub const WRONG_TYPE: &str = "EPSX0002E";
/// An `ArbitraryFileIdentifier` used again for a different request of the same type.
pub const ID_REUSED: &str = "EPSX0003E";
/// The insured person of the body is not the one of the CSV.
pub const INSURED_MISMATCH: &str = "EPSB0060E";
/// No prescription with this id (of this institution).
pub const NOT_FOUND: &str = "EPSR0001E";
/// The prescription cannot be cancelled (dispensed, or cancelled already).
pub const NOT_CANCELLABLE: &str = "EPSR0002E";

/// A prescription or dispensing the service already knows of, from another institution: the
/// history the duplicate check looks at.
#[derive(Debug, Clone)]
pub struct History {
    /// 保険者番号:記号:番号:枝番 of the patient.
    pub member_key: String,
    /// `prescription` or `dispensing`.
    pub source: String,
    /// 医療機関番号 / 薬局コード (10 digits) it comes from.
    pub institution: String,
    pub code_type: DrugCodeType,
    pub code: String,
    pub name: String,
    pub date: NaiveDate,
    /// Days of supply.
    pub days: u32,
}

/// A registered prescription.
#[derive(Debug, Clone)]
pub struct Registered {
    pub prescription_id: String,
    pub exchange_number: String,
    pub institution: String,
    pub member_key: String,
    pub issue_type: IssueType,
    pub prescription: Prescription,
    /// `registered`, `cancelled` or `dispensed`.
    pub status: String,
    pub dispensing: Option<DispensingResult>,
    /// The signer's subject, for a signed one.
    pub signer: Option<String>,
}

#[derive(Default)]
struct Data {
    /// (institution, message type, ArbitraryFileIdentifier) → (the request without its
    /// CreationDateTime, the first answer).
    answers: HashMap<(String, String, String), (Request, String)>,
    prescriptions: Vec<Registered>,
    history: Vec<History>,
    trusted: Vec<Vec<u8>>,
    received: HashMap<String, u64>,
}

pub(crate) struct SimState {
    data: Mutex<Data>,
    down: AtomicBool,
    delay_ms: AtomicU64,
    serial: AtomicU64,
}

/// A running simulator.
pub struct SimHandle {
    addr: SocketAddr,
    pub(crate) state: Arc<SimState>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for SimHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl SimHandle {
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://host:port`: the base URL the adapter is configured with.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Down: every request answers 503 (and is not processed).
    pub fn set_down(&self, down: bool) {
        self.state.down.store(down, Ordering::SeqCst);
    }

    /// Every answer waits this long first.
    pub fn set_delay(&self, delay: Duration) {
        self.state.delay_ms.store(delay.as_millis() as u64, Ordering::SeqCst);
    }

    /// Trusts a signer certificate (DER).
    pub fn trust(&self, certificate: Vec<u8>) {
        self.with(|d| d.trusted.push(certificate));
    }

    /// Plants another institution's prescription or dispensing in the patient's history.
    pub fn plant(&self, history: History) {
        self.with(|d| d.history.push(history));
    }

    /// Prescriptions registered (each once, however often it was sent).
    pub fn registrations(&self) -> usize {
        self.with(|d| d.prescriptions.len())
    }

    /// Requests received of a message type (processed or refused, repeats included; not while
    /// down).
    pub fn received(&self, message_type: &str) -> u64 {
        self.with(|d| d.received.get(message_type).copied().unwrap_or(0))
    }

    /// A registered prescription.
    pub fn prescription(&self, prescription_id: &str) -> Option<Registered> {
        self.with(|d| d.prescriptions.iter().find(|p| p.prescription_id == prescription_id).cloned())
    }

    /// All registered prescriptions.
    pub fn prescriptions(&self) -> Vec<Registered> {
        self.with(|d| d.prescriptions.clone())
    }

    /// A pharmacy dispenses a registered prescription as prescribed, on `date`.
    pub fn dispense(&self, prescription_id: &str, date: NaiveDate) -> Result<(), String> {
        self.with(|d| {
            let p = d
                .prescriptions
                .iter_mut()
                .find(|p| p.prescription_id == prescription_id)
                .ok_or_else(|| "no such prescription".to_owned())?;
            if p.status != "registered" {
                return Err(format!("the prescription is {}", p.status));
            }
            let mut drugs = Vec::new();
            for rp in &p.prescription.rps {
                for g in &rp.drugs {
                    let total = g.amount.parse::<f64>().unwrap_or(0.0) * f64::from(rp.quantity);
                    drugs.push(DispensedDrug {
                        rp_number: rp.number,
                        drug_index: g.index,
                        code_type: g.code_type.csv_code().to_owned(),
                        code: g.code.clone(),
                        name: g.name.clone(),
                        amount: g.amount.clone(),
                        unit: g.unit.clone(),
                        quantity: rp.quantity,
                        total: if total.fract() == 0.0 { format!("{}", total as i64) } else { format!("{total}") },
                    });
                }
            }
            p.dispensing = Some(DispensingResult {
                prescription_id: p.prescription_id.clone(),
                dispensed_on: date.format("%Y%m%d").to_string(),
                pharmacy_code: "1341234567".into(),
                pharmacy_name: "シミュレータ薬局".into(),
                drugs,
            });
            p.status = "dispensed".into();
            Ok(())
        })
    }

    fn with<T>(&self, f: impl FnOnce(&mut Data) -> T) -> T {
        lock(&self.state, f)
    }
}

fn lock<T>(state: &SimState, f: impl FnOnce(&mut Data) -> T) -> T {
    let mut guard = state.data.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    f(&mut guard)
}

/// Starts the simulator on `options.listen` (`127.0.0.1:0` for tests).
pub async fn start(options: SimOptions) -> Result<SimHandle, String> {
    let listen = if options.listen.is_empty() { "127.0.0.1:0".to_owned() } else { options.listen.clone() };
    let listener = tokio::net::TcpListener::bind(&listen).await.map_err(|e| format!("bind {listen}: {e}"))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let state = Arc::new(SimState {
        data: Mutex::new(Data { trusted: options.trusted_certificates.clone(), ..Data::default() }),
        down: AtomicBool::new(false),
        delay_ms: AtomicU64::new(0),
        serial: AtomicU64::new(1),
    });
    let app = Router::new()
        .route("/eps/{message_type}", post(handle))
        .route("/health", get(|| async { "ok" }))
        .with_state(state.clone());
    let task = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "e-prescription simulator stopped");
        }
    });
    Ok(SimHandle { addr, state, task })
}

/// Runs the simulator until Ctrl-C.
pub async fn run(options: SimOptions) -> Result<(), String> {
    if options.file_root.is_some() {
        tracing::warn!("the e-prescription simulator serves the Web API only; file_root is ignored");
    }
    let handle = start(options).await?;
    tracing::info!(addr = %handle.local_addr(), trusted = "configured", "e-prescription simulator listening (POST /eps/{{MessageType}})");
    tokio::signal::ctrl_c().await.map_err(|e| e.to_string())?;
    Ok(())
}

async fn handle(State(state): State<Arc<SimState>>, Path(message_type): Path<String>, body: String) -> HttpResponse {
    // Down is decided on arrival; a request that got in is processed however slow the answer
    // (so a sender that gave up waiting may find it registered when it retries).
    if state.down.load(Ordering::SeqCst) {
        return (StatusCode::SERVICE_UNAVAILABLE, "the service is under maintenance").into_response();
    }
    // Processed in a task of its own: a client that stops waiting does not stop the service.
    let work = tokio::spawn(async move {
        let delay = state.delay_ms.load(Ordering::SeqCst);
        if delay > 0 {
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
        lock(&state, |d| *d.received.entry(message_type.clone()).or_default() += 1);
        process(&state, &message_type, &body)
    });
    let Ok(answer) = work.await else {
        return (StatusCode::INTERNAL_SERVER_ERROR, "the simulator failed").into_response();
    };
    ([("content-type", "application/xml; charset=utf-8")], answer).into_response()
}

/// The simulator's time, JST (it is a peer of its own, with its own clock).
fn now_text() -> String {
    #[allow(clippy::disallowed_methods)] // the simulator stands for another system's clock
    let now = chrono::Utc::now();
    (now + chrono::Duration::hours(9)).format("%Y%m%d%H%M%S").to_string()
}

fn refusal(base: &Response, code: &str, message: &str, errors: Vec<ErrorDetail>) -> Response {
    Response {
        status: xml::STATUS_ERROR.into(),
        result_code: code.into(),
        result_message: message.into(),
        errors,
        ..base.clone()
    }
}

fn csv_errors(issues: &[csv::CsvIssue]) -> Vec<ErrorDetail> {
    issues
        .iter()
        .map(|i| ErrorDetail {
            code: i.code.into(),
            line: Some(i.line).filter(|l| *l > 0),
            record: i.record,
            field: i.field.map(str::to_owned),
            message: i.reason.clone(),
        })
        .collect()
}

/// Processes one request and returns the answer XML (the stored first answer for a repeat).
pub(crate) fn process(state: &SimState, path_type: &str, body: &str) -> String {
    let request = match xml::parse_request(body) {
        Ok(r) => r,
        Err(e) => {
            let base = Response { message_type: path_type.into(), created: now_text(), ..Response::default() };
            return xml::response_xml(&refusal(&base, BAD_XML, &e.to_string(), Vec::new()));
        }
    };
    // One critical section from the look-up of a repeat to the storing of the answer: two
    // copies of a request arriving together are answered once, the second with the first answer.
    lock(state, |d| {
        let h = request.header().clone();
        // A repeat is the same request again (its CreationDateTime may differ: a sender that
        // rebuilds the message on retry still sends the same request).
        let key = (h.institution.clone(), h.message_type.clone(), h.file_id.clone());
        let mut same = request.clone();
        same.header_mut().created.clear();
        if let Some((first_request, first)) = d.answers.get(&key) {
            if *first_request == same {
                return first.clone();
            }
            let base = Response {
                message_type: h.message_type.clone(),
                institution: h.institution.clone(),
                file_id: h.file_id.clone(),
                created: now_text(),
                ..Response::default()
            };
            let refused = refusal(&base, ID_REUSED, "ArbitraryFileIdentifier is used for another request", Vec::new());
            return xml::response_xml(&refused);
        }
        let base = Response {
            message_type: h.message_type.clone(),
            institution: h.institution.clone(),
            file_id: h.file_id.clone(),
            created: now_text(),
            status: xml::STATUS_OK.into(),
            result_code: OK.into(),
            result_message: "正常終了".into(),
            ..Response::default()
        };
        let answer = if path_type != h.message_type {
            refusal(&base, WRONG_TYPE, "MessageType does not match the URL", Vec::new())
        } else {
            answer(state, d, &request, base)
        };
        let text = xml::response_xml(&answer);
        d.answers.insert(key, (same, text.clone()));
        text
    })
}

fn insured_key(i: &xml::Insured) -> String {
    format!("{}:{}:{}:{}", i.insurer_number, i.symbol, i.number, i.branch)
}

/// Parses the CSV and checks the body's insured person against it.
fn read_csv(text: &str, insured: &xml::Insured, base: &Response) -> Result<(Prescription, String), Box<Response>> {
    let p = csv::parse(text).map_err(|issues| {
        let first = issues.first().map(|i| i.code).unwrap_or(csv::EPSB_FORMAT);
        let message = if first == csv::EPSB_LF_ONLY {
            "改行コードはLFで記録してください。"
        } else {
            "処方箋データの記録内容に誤りがあります。"
        };
        Box::new(refusal(base, first, message, csv_errors(&issues)))
    })?;
    let key = p.insurance.as_ref().map(|i| i.member_key()).unwrap_or_default();
    if key != insured_key(insured) {
        return Err(Box::new(refusal(
            base,
            INSURED_MISMATCH,
            "被保険者情報が処方箋データと一致しません。",
            Vec::new(),
        )));
    }
    Ok((p, key))
}

fn answer(state: &SimState, d: &mut Data, request: &Request, base: Response) -> Response {
    match request {
        Request::DuplicateCheck { insured, csv: text, .. } => match read_csv(text, insured, &base) {
            Err(refused) => *refused,
            Ok((p, key)) => Response { findings: check(d, &p, &key, &base.institution), ..base },
        },
        Request::Register { issue_type, insured, document, .. } => {
            let verified = match sign::verify_document(document, &d.trusted, *issue_type == IssueType::Electronic) {
                Ok(v) => v,
                Err(fault) => return refusal(&base, fault.code(), fault.message(), Vec::new()),
            };
            let (p, key) = match read_csv(&verified.csv, insured, &base) {
                Ok(x) => x,
                Err(refused) => return *refused,
            };
            if p.institution.number() != base.institution {
                return refusal(&base, INSURED_MISMATCH, "医療機関コードが処方箋データと一致しません。", Vec::new());
            }
            let serial = state.serial.fetch_add(1, Ordering::SeqCst);
            let prescription_id = uuid::Uuid::new_v4().to_string();
            let exchange_number = format!("{:016}", 4_000_000_000_000_000u64 + serial * 7919 % 1_000_000_000_000);
            d.prescriptions.push(Registered {
                prescription_id: prescription_id.clone(),
                exchange_number: exchange_number.clone(),
                institution: base.institution.clone(),
                member_key: key,
                issue_type: *issue_type,
                prescription: p,
                status: "registered".into(),
                dispensing: None,
                signer: verified.signer,
            });
            Response { prescription_id: Some(prescription_id), exchange_number: Some(exchange_number), ..base }
        }
        Request::Cancel { prescription_id, .. }
        | Request::Copy { prescription_id, .. }
        | Request::Dispensing { prescription_id, .. } => {
            let Some(p) = d
                .prescriptions
                .iter_mut()
                .find(|p| p.prescription_id == *prescription_id && p.institution == base.institution)
            else {
                return refusal(&base, NOT_FOUND, "指定された処方箋IDの処方箋は存在しません。", Vec::new());
            };
            match request {
                Request::Cancel { .. } => {
                    if p.status != "registered" {
                        return refusal(
                            &base,
                            NOT_CANCELLABLE,
                            "調剤済または取消済の処方箋は取り消せません。",
                            Vec::new(),
                        );
                    }
                    p.status = "cancelled".into();
                    Response { prescription_id: Some(p.prescription_id.clone()), ..base }
                }
                Request::Copy { .. } => Response {
                    prescription_id: Some(p.prescription_id.clone()),
                    copy_pdf: Some(copy_pdf(&p.exchange_number)),
                    ..base
                },
                _ => match &p.dispensing {
                    Some(result) => Response { dispensing: vec![result.clone()], ..base },
                    None => Response {
                        result_code: NO_RESULTS.into(),
                        result_message: "調剤結果はまだありません。".into(),
                        ..base
                    },
                },
            }
        }
    }
}

/// Pairs of ingredients (the first seven characters of YJ / 一般名 codes) the simulator treats
/// as contraindicated together. Simulator data for tests, not a drug-interaction master.
pub const CONTRAINDICATED: &[(&str, &str, &str)] = &[
    ("3332001", "6290002", "ワルファリンとミコナゾール（経口）は併用禁忌です。"),
    ("2171022", "2590010", "硝酸薬とPDE5阻害薬は併用禁忌です。"),
];

/// The ingredient a drug code stands for: the first seven characters of a YJ or 一般名 code
/// (薬効分類 4 + 投与経路 1 + 成分 2), the whole code otherwise.
pub fn ingredient(code_type: DrugCodeType, code: &str) -> Option<String> {
    match code_type {
        DrugCodeType::Yj | DrugCodeType::GeneralName => code.get(..7).map(str::to_owned),
        DrugCodeType::Receipt => Some(format!("R{code}")),
        DrugCodeType::None => None,
    }
}

/// 重複投薬等チェック: every drug of `p` against the patient's active history (planted
/// prescriptions and dispensings, and prescriptions registered here and not cancelled): the same
/// ingredient whose supply period covers the new issue date is a duplicate; a contraindicated
/// pair is a contraindication.
fn check(d: &Data, p: &Prescription, key: &str, institution: &str) -> Vec<Finding> {
    struct Item {
        source: &'static str,
        institution: String,
        code: String,
        name: String,
        ingredient: String,
        date: NaiveDate,
        days: u32,
    }
    let mut items: Vec<Item> = d
        .history
        .iter()
        .filter(|h| h.member_key == key)
        .filter_map(|h| {
            Some(Item {
                source: if h.source == "dispensing" { "dispensing" } else { "prescription" },
                institution: h.institution.clone(),
                code: h.code.clone(),
                name: h.name.clone(),
                ingredient: ingredient(h.code_type, &h.code)?,
                date: h.date,
                days: h.days,
            })
        })
        .collect();
    for r in d.prescriptions.iter().filter(|r| r.member_key == key && r.status != "cancelled") {
        for rp in &r.prescription.rps {
            for g in &rp.drugs {
                if let Some(ingredient) = ingredient(g.code_type, &g.code) {
                    items.push(Item {
                        source: "prescription",
                        institution: r.institution.clone(),
                        code: g.code.clone(),
                        name: g.name.clone(),
                        ingredient,
                        date: r.prescription.issue_date,
                        days: rp.quantity,
                    });
                }
            }
        }
    }
    let mut findings = Vec::new();
    for rp in &p.rps {
        for g in &rp.drugs {
            let Some(mine) = ingredient(g.code_type, &g.code) else { continue };
            for h in &items {
                let active =
                    h.date <= p.issue_date && p.issue_date < h.date + chrono::Duration::days(i64::from(h.days.max(1)));
                if !active {
                    continue;
                }
                let (kind, message) = if h.ingredient == mine {
                    ("duplicate", "同一成分の薬剤が処方・調剤されています（重複投薬）。".to_owned())
                } else if let Some((_, _, why)) = CONTRAINDICATED
                    .iter()
                    .find(|(a, b, _)| (*a == mine && *b == h.ingredient) || (*b == mine && *a == h.ingredient))
                {
                    ("contraindication", (*why).to_owned())
                } else {
                    continue;
                };
                findings.push(Finding {
                    kind: kind.into(),
                    rp_number: rp.number,
                    drug_index: g.index,
                    drug_code: g.code.clone(),
                    drug_name: g.name.clone(),
                    other_drug_code: h.code.clone(),
                    other_drug_name: h.name.clone(),
                    other_source: h.source.into(),
                    other_institution: h.institution != institution,
                    other_date: h.date.format("%Y%m%d").to_string(),
                    message,
                });
            }
        }
    }
    findings
}

/// A one-page PDF standing in for the 処方箋控え.
fn copy_pdf(exchange_number: &str) -> Vec<u8> {
    let text = format!("BT /F1 14 Tf 72 720 Td (e-prescription copy / exchange number {exchange_number}) Tj ET");
    let objects = [
        "<< /Type /Catalog /Pages 2 0 R >>".to_owned(),
        "<< /Type /Pages /Kids [3 0 R] /Count 1 >>".to_owned(),
        "<< /Type /Page /Parent 2 0 R /MediaBox [0 0 595 842] /Contents 4 0 R /Resources << /Font << /F1 5 0 R >> >> >>".to_owned(),
        format!("<< /Length {} >>\nstream\n{text}\nendstream", text.len()),
        "<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>".to_owned(),
    ];
    let mut out = String::from("%PDF-1.4\n");
    let mut offsets = Vec::new();
    for (i, o) in objects.iter().enumerate() {
        offsets.push(out.len());
        out.push_str(&format!("{} 0 obj\n{o}\nendobj\n", i + 1));
    }
    let xref = out.len();
    out.push_str(&format!("xref\n0 {}\n0000000000 65535 f \n", objects.len() + 1));
    for off in offsets {
        out.push_str(&format!("{off:010} 00000 n \n"));
    }
    out.push_str(&format!("trailer\n<< /Size {} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n", objects.len() + 1));
    out.into_bytes()
}
