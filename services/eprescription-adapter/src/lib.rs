//! The eprescription-adapter: the EHR's side of the national e-prescription service
//! (電子処方箋管理サービス).
//!
//! - A draft ([`EPrescriptionAdapter::draft`]) turns MedicationRequests + Patient (+ Coverage) and
//!   the prescriber into the JAHIS CSV and the JAMI `JP_Bundle_ePrescriptionData` document; what
//!   is missing is named.
//! - The duplicate-medication / contraindication check (重複投薬等チェック, `EPSsiDMP01`) is a
//!   synchronous call with a timeout; its findings are stored with the draft.
//! - Registration (`EPSsiPIR01`) signs the prescription (XAdES-BES by the configured
//!   [`ehr_eprescription::sign::Signer`]) and queues it in the national submission log; the worker
//!   ([`EPrescriptionAdapter::spawn_workers`]) sends it with claims and leases, retries with
//!   exponential back-off while the service is down or slow, and marks it `failed` after
//!   `max_attempts`. The request id (the message's `ArbitraryFileIdentifier`) is the same on every
//!   attempt, so the service registers it once.
//! - Cancel (`EPSsiPIR02`) and dispensing results (`EPSsiDRR01`) are synchronous; dispensing
//!   results become MedicationDispense resources with ids derived from the prescription id, RP
//!   and drug, so a second fetch creates nothing new.
//!
//! States of a prescription: `draft` → `queued` → `registered` → `dispensed`, or `rejected`
//! (the service refused it), `failed` (attempts used up; registering again re-queues it under the
//! same request id), `cancelled`.
//!
//! Cancel: a `draft` or `rejected` one locally; a `queued` or `failed` one locally only while no
//! attempt may have reached the service (every attempt failed to connect or got 503) and — for
//! `queued` — no sender holds it (one statement conditional on its due time, so a sender
//! claiming it at the same moment wins and the cancel is refused); a `registered` one at the
//! service (`EPSsiPIR02`, request id `<request id>-cancel`, so a retry is answered once). An
//! attempt that timed out may have registered it: then the registration runs to `registered`
//! and is cancelled there, never hidden locally.

pub mod error;
pub mod http;

pub use error::EPrescriptionAdapterError;
pub use http::{EPrescriptionState, router};

use ehr_core::{Clock, ResourceId, Severity, TenantContext};
use ehr_eprescription::model::Department;
use ehr_eprescription::sign::{Signer, SoftwareSigner};
use ehr_eprescription::xml::{self, Header, Insured, IssueType, Request};
use ehr_eprescription::{csv, fhir};
use ehr_events::CancellationToken;
use ehr_store::{Store, Submission, SubmissionFilter};
use ehr_validation::FullValidator;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

/// The service name of the submission log.
pub const SERVICE: &str = "eprescription";
/// The submission kind.
pub const KIND: &str = "prescription";
/// The identifier system of MedicationDispenses made from dispensing results.
pub const DISPENSING_SYSTEM: &str = "urn:ehr:eprescription:dispensing";
/// The identifier system of the service's 処方箋ID on MedicationDispense.
pub const PRESCRIPTION_ID_SYSTEM: &str = "urn:ehr:eprescription:prescription-id";

/// Settings of the eprescription-adapter (`[eprescription]` in the config file,
/// `EHR_EPRESCRIPTION__*`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EPrescriptionSettings {
    /// Base URL of the service's Web API (`http://127.0.0.1:9302`); none: the routes answer 503.
    pub url: Option<String>,
    /// Timeout of a registration, cancel or dispensing call.
    pub request_timeout_ms: u64,
    /// Timeout of the synchronous duplicate check.
    pub check_timeout_ms: u64,
    /// How often the sender looks for due submissions when not woken.
    pub poll_interval_ms: u64,
    /// How long a claimed submission is reserved for the worker that claimed it.
    pub lease_secs: u64,
    /// First retry delay; doubled per attempt up to `retry_max_ms`.
    pub retry_base_ms: u64,
    pub retry_max_ms: u64,
    /// Attempts before a registration is `failed`.
    pub max_attempts: i32,
    /// The signer's key (PKCS#8 PEM, P-256) and certificate (PEM).
    pub signer_key_file: Option<PathBuf>,
    pub signer_cert_file: Option<PathBuf>,
    /// Without key files: generate a software key and self-signed certificate at start (demos;
    /// the real service trusts HPKI certificates only).
    pub generate_signer: bool,
    /// The subject (CN) of a generated certificate.
    pub signer_name: String,
    /// `IssueType` of registrations: 1 electronic (signed), 2 paper.
    pub issue_type: u8,
}

impl Default for EPrescriptionSettings {
    fn default() -> Self {
        Self {
            url: None,
            request_timeout_ms: 10_000,
            check_timeout_ms: 5_000,
            poll_interval_ms: 1_000,
            lease_secs: 60,
            retry_base_ms: 2_000,
            retry_max_ms: 300_000,
            max_attempts: 10,
            signer_key_file: None,
            signer_cert_file: None,
            generate_signer: false,
            signer_name: "電子処方箋 テスト署名者".into(),
            issue_type: 1,
        }
    }
}

/// The service: store, clock, validator, settings, signer. Cheap to clone.
#[derive(Clone)]
pub struct EPrescriptionAdapter {
    pub store: Store,
    pub clock: Arc<dyn Clock>,
    pub validator: FullValidator,
    pub settings: EPrescriptionSettings,
    signer: Option<Arc<dyn Signer>>,
    client: reqwest::Client,
    wake: Arc<Notify>,
}

impl EPrescriptionAdapter {
    pub fn new(
        store: Store,
        clock: Arc<dyn Clock>,
        validator: FullValidator,
        settings: EPrescriptionSettings,
    ) -> Result<Self, EPrescriptionAdapterError> {
        let bad = |m: &str| EPrescriptionAdapterError::Settings(m.to_owned());
        if !matches!(settings.issue_type, 1 | 2) {
            return Err(bad("issue_type must be 1 (electronic) or 2 (paper)"));
        }
        if settings.max_attempts < 1 {
            return Err(bad("max_attempts must be at least 1"));
        }
        // A claim must outlive the attempt it covers, or a second worker sends while the first
        // still waits for the answer.
        if settings.lease_secs.saturating_mul(1000) <= settings.request_timeout_ms.saturating_mul(2) {
            return Err(bad("lease_secs must be more than twice request_timeout_ms"));
        }
        let signer: Option<Arc<dyn Signer>> = match (&settings.signer_key_file, &settings.signer_cert_file) {
            (Some(k), Some(c)) => {
                check_key_permissions(k).map_err(|m| bad(&m))?;
                let key = std::fs::read_to_string(k).map_err(|_| bad("signer_key_file cannot be read"))?;
                let cert = std::fs::read_to_string(c).map_err(|_| bad("signer_cert_file cannot be read"))?;
                Some(Arc::new(SoftwareSigner::from_pem(&key, &cert).map_err(|e| bad(&e.to_string()))?))
            }
            (Some(_), None) | (None, Some(_)) => return Err(bad("signer_key_file and signer_cert_file come together")),
            (None, None) if settings.generate_signer => Some(Arc::new(
                SoftwareSigner::generate(&settings.signer_name, clock.now()).map_err(|e| bad(&e.to_string()))?,
            )),
            (None, None) => None,
        };
        let client = reqwest::Client::builder()
            .timeout(Duration::from_millis(settings.request_timeout_ms.max(1)))
            .build()
            .map_err(|_| bad("http client"))?;
        Ok(Self { store, clock, validator, settings, signer, client, wake: Arc::new(Notify::new()) })
    }

    /// The signer's certificate (DER), to register with the service's trust list.
    pub fn signer_certificate(&self) -> Option<Vec<u8>> {
        self.signer.as_ref().map(|s| s.certificate().to_vec())
    }

    fn now_ms(&self) -> i64 {
        self.clock.now().timestamp_millis()
    }

    fn jst_now(&self) -> chrono::DateTime<chrono::FixedOffset> {
        use chrono::Offset;
        // +09:00 is always a valid offset; UTC is the infallible fallback the type asks for.
        let jst = chrono::FixedOffset::east_opt(9 * 3600).unwrap_or_else(|| chrono::Utc.fix());
        self.clock.now().with_timezone(&jst)
    }

    /// The workers that send queued submissions: one sender per process, one send at a time.
    pub fn spawn_workers(&self, shutdown: CancellationToken) -> Vec<JoinHandle<()>> {
        let me = self.clone();
        let interval = Duration::from_millis(self.settings.poll_interval_ms.max(10));
        vec![tokio::spawn(async move {
            loop {
                if let Err(e) = me.send_due().await {
                    tracing::warn!(code = ehr_core::Classify::code(&e), "e-prescription sender pass failed");
                }
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = me.wake.notified() => {}
                    _ = tokio::time::sleep(interval) => {}
                }
            }
        })]
    }

    /// One sender pass: every tenant with due submissions, each claimed one sent once.
    pub async fn send_due(&self) -> Result<usize, EPrescriptionAdapterError> {
        let tenants = {
            let sys = self.store.system_read().await?;
            let t = sys.national_tenants(SERVICE, self.now_ms()).await?;
            sys.commit().await?;
            t
        };
        let mut sent = 0;
        for tenant in tenants {
            let ctx = TenantContext::new(tenant, "eprescription-sender");
            loop {
                let now = self.now_ms();
                let lease = now + (self.settings.lease_secs.max(1) as i64) * 1000;
                let tx = self.store.write(&ctx).await?;
                // One at a time: the lease covers one attempt, not a batch sent one after another.
                let claimed = tx.claim_due_submissions(SERVICE, now, lease, 1).await?;
                tx.commit().await?;
                if claimed.is_empty() {
                    break;
                }
                for s in claimed {
                    self.send_one(&ctx, s, lease).await?;
                    sent += 1;
                }
            }
        }
        Ok(sent)
    }

    async fn send_one(
        &self,
        ctx: &TenantContext,
        s: Submission,
        claimed_until: i64,
    ) -> Result<(), EPrescriptionAdapterError> {
        let outcome = self.post(xml::REGISTER, &s.payload, self.settings.request_timeout_ms).await;
        // An answer to another request (another id or message type) is no answer to this one.
        let outcome = match outcome {
            Ok((_, r)) if r.file_id != s.request_id || r.message_type != xml::REGISTER => {
                Err(Unanswered { why: "the service answered another request".into(), may_have_arrived: true })
            }
            other => other,
        };
        let now = self.now_ms();
        let mut result = s.result.clone();
        let (state, next, error, response) = match outcome {
            Ok((text, r)) if r.ok() => {
                result["prescriptionId"] = json!(r.prescription_id);
                result["exchangeNumber"] = json!(r.exchange_number);
                result["registeredAt"] = json!(now);
                tracing::info!(submission = %s.id, "e-prescription registered");
                ("registered", None, None, Some(text))
            }
            Ok((text, r)) => {
                result["errors"] = json!(r.errors);
                tracing::warn!(submission = %s.id, code = %r.result_code, "e-prescription refused");
                ("rejected", None, Some(format!("{} {}", r.result_code, r.result_message)), Some(text))
            }
            Err(Unanswered { why, may_have_arrived }) => {
                // Whether the service may hold this registration although we have no answer:
                // a local cancel is safe only while no attempt may have arrived.
                if may_have_arrived {
                    result["mayHaveArrived"] = json!(true);
                }
                let attempts = s.attempts + 1;
                if attempts >= self.settings.max_attempts {
                    ("failed", None, Some(format!("{why}; attempts used up")), None)
                } else {
                    let due =
                        ehr_core::retry_due(now, attempts, self.settings.retry_base_ms, self.settings.retry_max_ms);
                    result["dueAt"] = json!(due);
                    ("queued", Some(due), Some(why), None)
                }
            }
        };
        let tx = self.store.write(ctx).await?;
        let recorded = tx
            .record_submission_attempt(
                &s.id,
                claimed_until,
                state,
                next,
                error.as_deref(),
                response.as_deref(),
                Some(&result),
                now,
            )
            .await?;
        tx.commit().await?;
        if !recorded {
            tracing::warn!(submission = %s.id, "e-prescription claim lost before the answer was recorded");
        }
        Ok(())
    }

    /// Sends one message; `Err` (a reason without data) when the service is unreachable, slow,
    /// answers other than 200, or answers something that is not its XML — with whether the
    /// request may have reached the service all the same.
    async fn post(
        &self,
        message_type: &str,
        body: &str,
        timeout_ms: u64,
    ) -> Result<(String, xml::Response), Unanswered> {
        let arrived = |why: &str| Unanswered { why: why.to_owned(), may_have_arrived: true };
        let base = self
            .settings
            .url
            .as_deref()
            .ok_or(Unanswered { why: "the service is not configured".into(), may_have_arrived: false })?;
        let url = format!("{}/eps/{message_type}", base.trim_end_matches('/'));
        // The trace context of the request or worker sending it (ids only).
        let mut headers = reqwest::header::HeaderMap::new();
        ehr_telemetry::trace::inject(&mut headers);
        let resp = self
            .client
            .post(url)
            .headers(headers)
            .header("content-type", "application/xml; charset=utf-8")
            .timeout(Duration::from_millis(timeout_ms.max(1)))
            .body(body.to_owned())
            .send()
            .await
            .map_err(|e| {
                if e.is_connect() {
                    // No connection: the request did not leave.
                    Unanswered { why: "the service is not reachable".into(), may_have_arrived: false }
                } else if e.is_timeout() {
                    arrived("the service did not answer in time")
                } else {
                    arrived("the connection to the service failed")
                }
            })?;
        let status = resp.status();
        // 503: the service is down and did not take the request (our reading of its maintenance
        // answer; the simulator decides "down" on arrival). Any other failure may have been
        // processed.
        if status == reqwest::StatusCode::SERVICE_UNAVAILABLE {
            return Err(Unanswered { why: "the service answered HTTP 503".into(), may_have_arrived: false });
        }
        if !status.is_success() {
            return Err(arrived(&format!("the service answered HTTP {}", status.as_u16())));
        }
        if resp.content_length().is_some_and(|n| n > xml::MAX_XML_BYTES as u64) {
            return Err(arrived("the answer is too large"));
        }
        let text = resp.text().await.map_err(|_| arrived("the answer could not be read"))?;
        let parsed = xml::parse_response(&text).map_err(|_| arrived("the answer is not the service's XML"))?;
        Ok((text, parsed))
    }

    /// A synchronous call: the answer to `request` (an answer naming another request counts as
    /// none).
    async fn call(&self, request: &Request, timeout_ms: u64) -> Result<xml::Response, EPrescriptionAdapterError> {
        if self.settings.url.is_none() {
            return Err(EPrescriptionAdapterError::NotConfigured);
        }
        let h = request.header();
        let (_, r) = self
            .post(&h.message_type, &xml::request_xml(request), timeout_ms)
            .await
            .map_err(|_| EPrescriptionAdapterError::ServiceUnavailable)?;
        if r.file_id != h.file_id || r.message_type != h.message_type {
            return Err(EPrescriptionAdapterError::ServiceUnavailable);
        }
        Ok(r)
    }

    fn header(&self, message_type: &str, institution: &str, file_id: &str) -> Header {
        Header {
            message_type: message_type.into(),
            institution: institution.into(),
            file_id: file_id.into(),
            created: self.jst_now().format("%Y%m%d%H%M%S").to_string(),
        }
    }

    /// One prescription of the tenant.
    pub async fn get(&self, ctx: &TenantContext, id: &str) -> Result<Submission, EPrescriptionAdapterError> {
        let tx = self.store.read(ctx).await?;
        let s = tx.submission(id).await?;
        tx.commit().await?;
        s.filter(|s| s.service == SERVICE).ok_or(EPrescriptionAdapterError::NotFound)
    }

    /// The tenant's prescriptions, newest first.
    pub async fn list(
        &self,
        ctx: &TenantContext,
        patient: Option<&str>,
    ) -> Result<Vec<Submission>, EPrescriptionAdapterError> {
        let tx = self.store.read(ctx).await?;
        let f = SubmissionFilter { service: Some(SERVICE), kind: Some(KIND), patient, ..SubmissionFilter::default() };
        let list = tx.submissions(&f).await?;
        tx.commit().await?;
        Ok(list)
    }

    /// A draft from MedicationRequests, the patient and (optionally) Coverage, prescriber and
    /// department.
    pub async fn draft(
        &self,
        ctx: &TenantContext,
        req: &DraftRequest,
        created_by: &str,
    ) -> Result<Submission, EPrescriptionAdapterError> {
        use EPrescriptionAdapterError::*;
        let strip = |r: &str, t: &str| r.strip_prefix(&format!("{t}/")).unwrap_or(r).to_owned();
        let patient_id = strip(&req.patient, "Patient");
        if req.medication_requests.is_empty() {
            return Err(Incomplete(vec!["medicationRequests (at least one MedicationRequest id)".into()]));
        }
        let tx = self.store.read(ctx).await?;
        let mut missing = Vec::new();
        let read = |t: &'static str, id: String| {
            let tx = &tx;
            async move { tx.read_json(t, &id).await.map(|v| v.map(|v| (id, v))) }
        };
        let patient = read("Patient", patient_id.clone()).await?;
        if patient.is_none() {
            missing.push(format!("Patient/{patient_id} (no such patient)"));
        }
        let mut mrs = Vec::new();
        for r in &req.medication_requests {
            let id = strip(r, "MedicationRequest");
            match read("MedicationRequest", id.clone()).await? {
                Some((id, mr)) => {
                    if mr["subject"]["reference"].as_str() != Some(&format!("Patient/{patient_id}")) {
                        missing.push(format!("MedicationRequest/{id}.subject (must be Patient/{patient_id})"));
                    }
                    if !matches!(mr["status"].as_str(), Some("active" | "draft")) {
                        missing.push(format!(
                            "MedicationRequest/{id}.status (active or draft, not cancelled or completed)"
                        ));
                    }
                    mrs.push((id, mr));
                }
                None => missing.push(format!("MedicationRequest/{id} (no such MedicationRequest)")),
            }
        }
        // The prescriber: given, or the first order's requester.
        let requester = mrs.first().and_then(|(_, m)| m["requester"]["reference"].as_str()).map(str::to_owned);
        let mut role = None;
        let practitioner_id = match (&req.practitioner, requester.as_deref()) {
            (Some(p), _) => Some(strip(p, "Practitioner")),
            (None, Some(r)) if r.starts_with("Practitioner/") => Some(strip(r, "Practitioner")),
            (None, Some(r)) if r.starts_with("PractitionerRole/") => {
                role = read("PractitionerRole", strip(r, "PractitionerRole")).await?.map(|(_, v)| v);
                role.as_ref().and_then(|r| r["practitioner"]["reference"].as_str()).map(|p| strip(p, "Practitioner"))
            }
            _ => None,
        };
        let practitioner = match practitioner_id {
            Some(id) => read("Practitioner", id).await?,
            None => None,
        };
        if practitioner.is_none() {
            missing.push("practitioner (a Practitioner, or MedicationRequest.requester naming one)".into());
        }
        let organization_id = req
            .organization
            .clone()
            .or_else(|| role.as_ref().and_then(|r| r["organization"]["reference"].as_str()).map(str::to_owned))
            .or_else(|| {
                patient.as_ref().and_then(|(_, p)| p["managingOrganization"]["reference"].as_str()).map(str::to_owned)
            });
        let organization = match organization_id {
            Some(id) => read("Organization", strip(&id, "Organization")).await?,
            None => None,
        };
        if organization.is_none() {
            missing.push("organization (the issuing Organization, or Patient.managingOrganization)".into());
        }
        let coverage = match &req.coverage {
            Some(c) => {
                let c = read("Coverage", strip(c, "Coverage")).await?;
                if c.is_none() {
                    missing.push("coverage (no such Coverage)".into());
                }
                c
            }
            None => None,
        };
        let payor = match coverage.as_ref().and_then(|(_, c)| c["payor"][0]["reference"].as_str()) {
            Some(r) if r.starts_with("Organization/") => {
                read("Organization", strip(r, "Organization")).await?.map(|(_, v)| v)
            }
            _ => None,
        };
        let mut public = Vec::new();
        for c in &req.public_payments {
            match read("Coverage", strip(c, "Coverage")).await? {
                Some((_, c)) => {
                    let payor = match c["payor"][0]["reference"].as_str() {
                        Some(r) if r.starts_with("Organization/") => {
                            read("Organization", strip(r, "Organization")).await?.map(|(_, v)| v)
                        }
                        _ => None,
                    };
                    public.push((c, payor));
                }
                None => missing.push(format!("publicPayments: Coverage/{c} (no such Coverage)")),
            }
        }
        tx.commit().await?;
        let (Some((_, patient)), Some((_, practitioner)), Some((_, organization))) =
            (patient, practitioner, organization)
        else {
            return Err(Incomplete(missing));
        };
        if !missing.is_empty() {
            return Err(Incomplete(missing));
        }
        let now = self.jst_now();
        let department = req.department.clone();
        let sources = fhir::Sources {
            patient: &patient,
            medication_requests: &mrs,
            coverage: coverage.as_ref().map(|(_, c)| c),
            payor: payor.as_ref(),
            public_coverages: &public,
            organization: &organization,
            practitioner: &practitioner,
            department: department.as_ref(),
            issue_date: now.date_naive(),
        };
        let (model, map) = fhir::prescription(&sources).map_err(|e| match e {
            ehr_eprescription::EpsError::Incomplete(m) => Incomplete(m),
            other => Eps(other),
        })?;
        let text = csv::build(&model)?;
        let id = uuid::Uuid::new_v4();
        let serial: u64 = id.as_u128() as u64 % 100_000_000;
        let document_number = format!("{}-{}-{serial:08}", model.institution.number(), now.format("%Y"));
        let document = fhir::document(&sources, &model, &id.to_string(), &document_number, now);
        let insured = model.insurance.as_ref().map(|i| {
            json!({"insurerNumber": i.insurer_number, "symbol": i.symbol.clone().unwrap_or_default(), "number": i.number, "branch": i.branch.clone().unwrap_or_default()})
        });
        let ms = self.now_ms();
        let s = Submission {
            id: id.to_string(),
            service: SERVICE.into(),
            kind: KIND.into(),
            operation: "register".into(),
            request_id: uuid::Uuid::new_v4().simple().to_string(),
            business_key: document_number.clone(),
            patient: Some(format!("Patient/{patient_id}")),
            state: "draft".into(),
            attempts: 0,
            next_attempt_at: None,
            last_error: None,
            payload: text.clone(),
            response: None,
            result: json!({
                "csv": text,
                "institution": model.institution.number(),
                "insured": insured,
                "issueDate": model.issue_date.format("%Y-%m-%d").to_string(),
                "documentNumber": document_number,
                "medicationRequests": mrs.iter().map(|(id, _)| format!("MedicationRequest/{id}")).collect::<Vec<_>>(),
                "rpMap": map.iter().map(|(rp, idx, id)| json!({"rp": rp, "index": idx, "medicationRequest": format!("MedicationRequest/{id}")})).collect::<Vec<_>>(),
                "forms": model.rps.iter().map(|rp| json!({"rp": rp.number, "form": rp.form, "usage": rp.usage_text})).collect::<Vec<_>>(),
                "document": document,
            }),
            created_by: Some(created_by.to_owned()),
            created_at: ms,
            updated_at: ms,
        };
        let tx = self.store.write(ctx).await?;
        tx.insert_submission(&s).await?;
        tx.commit().await?;
        tracing::info!(submission = %s.id, "e-prescription draft created");
        Ok(s)
    }

    fn insured_of(s: &Submission) -> Insured {
        let i = &s.result["insured"];
        let t = |k: &str| i[k].as_str().unwrap_or("").to_owned();
        Insured { insurer_number: t("insurerNumber"), symbol: t("symbol"), number: t("number"), branch: t("branch") }
    }

    /// 重複投薬等チェック of a draft: synchronous; the findings are stored with it.
    pub async fn check(&self, ctx: &TenantContext, id: &str) -> Result<Submission, EPrescriptionAdapterError> {
        let s = self.get(ctx, id).await?;
        if s.state != "draft" {
            return Err(EPrescriptionAdapterError::WrongState { state: s.state, why: "only a draft is checked" });
        }
        let institution = s.result["institution"].as_str().unwrap_or("").to_owned();
        let csv_text = s.result["csv"].as_str().unwrap_or("").to_owned();
        let file_id = uuid::Uuid::new_v4().simple().to_string();
        let request = Request::DuplicateCheck {
            header: self.header(xml::DUPLICATE_CHECK, &institution, &file_id),
            insured: Self::insured_of(&s),
            csv: csv_text,
        };
        let r = self.call(&request, self.settings.check_timeout_ms).await?;
        if !r.ok() {
            return Err(refused(&r));
        }
        let mut result = s.result.clone();
        result["check"] = json!({"checkedAt": self.now_ms(), "resultCode": r.result_code, "clean": r.findings.is_empty(), "findings": r.findings});
        let tx = self.store.write(ctx).await?;
        let changed = tx.change_submission(id, &["draft"], "draft", None, Some(&result), None, self.now_ms()).await?;
        let after = tx.submission(id).await?;
        tx.commit().await?;
        if !changed {
            return Err(EPrescriptionAdapterError::WrongState {
                state: after.map(|a| a.state).unwrap_or_default(),
                why: "it changed meanwhile",
            });
        }
        after.ok_or(EPrescriptionAdapterError::NotFound)
    }

    /// Signs and queues a checked draft (or re-queues a failed one under the same request id).
    pub async fn register(
        &self,
        ctx: &TenantContext,
        id: &str,
        acknowledge_findings: bool,
    ) -> Result<Submission, EPrescriptionAdapterError> {
        let s = self.get(ctx, id).await?;
        if !matches!(s.state.as_str(), "draft" | "failed") {
            return Err(EPrescriptionAdapterError::WrongState {
                state: s.state,
                why: "only a draft (or a failed registration) is registered",
            });
        }
        let check = &s.result["check"];
        if check.is_null() {
            return Err(EPrescriptionAdapterError::WrongState {
                state: s.state,
                why: "run the duplicate-medication check first",
            });
        }
        let findings = check["findings"].as_array().map_or(0, Vec::len);
        if findings > 0 && !acknowledge_findings {
            return Err(EPrescriptionAdapterError::Findings(findings));
        }
        let issue_type = if self.settings.issue_type == 2 { IssueType::Paper } else { IssueType::Electronic };
        let payload = if s.state == "failed" {
            // The same message again: the service answers a repeat with its first answer.
            s.payload.clone()
        } else {
            let csv_text = s.result["csv"].as_str().unwrap_or("");
            let document = match issue_type {
                IssueType::Electronic => {
                    let signer = self.signer.as_ref().ok_or(EPrescriptionAdapterError::NoSigner)?;
                    ehr_eprescription::sign::signed_document(csv_text, signer.as_ref(), self.clock.now())?
                }
                IssueType::Paper => ehr_eprescription::sign::unsigned_document(csv_text),
            };
            let institution = s.result["institution"].as_str().unwrap_or("");
            xml::request_xml(&Request::Register {
                header: self.header(xml::REGISTER, institution, &s.request_id),
                issue_type,
                insured: Self::insured_of(&s),
                document,
            })
        };
        let now = self.now_ms();
        let mut result = s.result.clone();
        result["issueType"] = json!(issue_type.code());
        // The due time as this change sets it: a claim moves next_attempt_at away from it, which
        // is how a cancel tells a waiting submission from one being sent.
        result["dueAt"] = json!(now);
        if let Some(signer) = &self.signer
            && issue_type == IssueType::Electronic
        {
            result["signerCertificateSha256"] = json!(ehr_eprescription::sign::fingerprint(signer.certificate()));
        }
        let tx = self.store.write(ctx).await?;
        let changed = tx
            .change_submission(id, &[s.state.as_str()], "queued", Some(&payload), Some(&result), Some(now), now)
            .await?;
        let after = tx.submission(id).await?;
        tx.commit().await?;
        if !changed {
            return Err(EPrescriptionAdapterError::WrongState {
                state: after.map(|a| a.state).unwrap_or_default(),
                why: "it changed meanwhile",
            });
        }
        self.wake.notify_one();
        after.ok_or(EPrescriptionAdapterError::NotFound)
    }

    /// Cancels: locally while the service cannot have it, at the service (`EPSsiPIR02`) once
    /// registered. A registration that may have reached the service without our knowing
    /// (an attempt timed out, a connection broke) is never cancelled locally: that would leave a
    /// live prescription at the service that the EHR shows as cancelled.
    pub async fn cancel(&self, ctx: &TenantContext, id: &str) -> Result<Submission, EPrescriptionAdapterError> {
        use EPrescriptionAdapterError::WrongState;
        let s = self.get(ctx, id).await?;
        let now = self.now_ms();
        let may_have_arrived = s.result["mayHaveArrived"] == json!(true);
        let mut result = s.result.clone();
        result["cancelledAt"] = json!(now);
        let changed = match s.state.as_str() {
            "draft" | "rejected" => self.change_in(ctx, id, &[s.state.as_str()], "cancelled", &result).await?,
            "failed" | "queued" if may_have_arrived => {
                return Err(WrongState {
                    state: s.state,
                    why: "a registration attempt may have reached the service: let it (or register it again) \
                          reach `registered`, then cancel",
                });
            }
            "failed" => self.change_in(ctx, id, &["failed"], "cancelled", &result).await?,
            "queued" => {
                // Waiting for its due time (nobody holds it): taken out of the queue in one
                // statement conditional on that due time, so a sender claiming it at the same
                // moment either wins (and this changes nothing) or never sees it.
                let due = s.result["dueAt"].as_i64();
                let Some(due) = due.filter(|d| s.next_attempt_at == Some(*d)) else {
                    return Err(WrongState { state: s.state, why: "it is being sent right now; retry in a moment" });
                };
                result["cancelledBeforeSending"] = json!(true);
                let tx = self.store.write(ctx).await?;
                let done = tx.withdraw_submission(id, due, "cancelled", Some(&result), now).await?;
                tx.commit().await?;
                done
            }
            "registered" => {
                let institution = s.result["institution"].as_str().unwrap_or("").to_owned();
                let prescription_id = s.result["prescriptionId"].as_str().unwrap_or("").to_owned();
                let request = Request::Cancel {
                    // Stable: a retried cancel gets the service's first answer.
                    header: self.header(xml::CANCEL, &institution, &format!("{}-cancel", s.request_id)),
                    prescription_id,
                };
                let r = self.call(&request, self.settings.request_timeout_ms).await?;
                if !r.ok() {
                    return Err(refused(&r));
                }
                self.change_in(ctx, id, &["registered"], "cancelled", &result).await?
            }
            _ => return Err(WrongState { state: s.state, why: "it cannot be cancelled" }),
        };
        let after = self.get(ctx, id).await?;
        if !changed {
            return Err(WrongState { state: after.state, why: "it changed meanwhile" });
        }
        Ok(after)
    }

    /// Moves a submission to `state` from one of `from`; false when it was in none of them.
    async fn change_in(
        &self,
        ctx: &TenantContext,
        id: &str,
        from: &[&str],
        state: &str,
        result: &Value,
    ) -> Result<bool, EPrescriptionAdapterError> {
        let tx = self.store.write(ctx).await?;
        let changed = tx.change_submission(id, from, state, None, Some(result), None, self.now_ms()).await?;
        tx.commit().await?;
        Ok(changed)
    }

    /// Fetches the dispensing results and files each dispensed drug as a MedicationDispense
    /// (validated); returns the prescription and the ids created by this fetch.
    pub async fn fetch_dispensing(
        &self,
        ctx: &TenantContext,
        id: &str,
    ) -> Result<(Submission, Vec<String>), EPrescriptionAdapterError> {
        let s = self.get(ctx, id).await?;
        if !matches!(s.state.as_str(), "registered" | "dispensed") {
            return Err(EPrescriptionAdapterError::WrongState {
                state: s.state,
                why: "only a registered prescription has dispensing results",
            });
        }
        let institution = s.result["institution"].as_str().unwrap_or("").to_owned();
        let prescription_id = s.result["prescriptionId"].as_str().unwrap_or("").to_owned();
        let request = Request::Dispensing {
            // A fetch asks for the results as they are now: a fresh id each time.
            header: self.header(xml::DISPENSING, &institution, &uuid::Uuid::new_v4().simple().to_string()),
            prescription_id: prescription_id.clone(),
        };
        let r = self.call(&request, self.settings.request_timeout_ms).await?;
        if !r.ok() {
            return Err(refused(&r));
        }
        if r.dispensing.is_empty() {
            return Ok((s, Vec::new()));
        }
        let patient = s.patient.clone().unwrap_or_default();
        let rp_map = s.result["rpMap"].as_array().cloned().unwrap_or_default();
        let forms = s.result["forms"].as_array().cloned().unwrap_or_default();
        let mut resources = Vec::new();
        for d in &r.dispensing {
            for g in &d.drugs {
                let mr = rp_map
                    .iter()
                    .find(|m| {
                        m["rp"].as_u64() == Some(u64::from(g.rp_number))
                            && m["index"].as_u64() == Some(u64::from(g.drug_index))
                    })
                    .and_then(|m| m["medicationRequest"].as_str());
                let form = forms
                    .iter()
                    .find(|f| f["rp"].as_u64() == Some(u64::from(g.rp_number)))
                    .and_then(|f| f["form"].as_str());
                let (rid, resource) = dispense_resource(&prescription_id, d, g, &patient, mr, form);
                let errors: Vec<String> = self
                    .validator
                    .validate(&resource, None)
                    .into_iter()
                    .filter(|i| matches!(i.severity, Severity::Error | Severity::Fatal))
                    .map(|i| i.diagnostics)
                    .collect();
                if let Some(first) = errors.into_iter().next() {
                    return Err(EPrescriptionAdapterError::InvalidDispense(first));
                }
                resources.push((rid, resource));
            }
        }
        let now = self.clock.now();
        // The ids are derived from the result, so the list is the same whichever fetch made them.
        let all: Vec<String> = resources.iter().map(|(rid, _)| format!("MedicationDispense/{rid}")).collect();
        let tx = self.store.write(ctx).await?;
        let mut created = Vec::new();
        for (rid, resource) in resources {
            let rid_parsed = ResourceId::parse(&rid)
                .map_err(|_| EPrescriptionAdapterError::InvalidDispense("resource id".into()))?;
            if tx.read("MedicationDispense", &rid).await?.is_some() {
                continue;
            }
            match tx.create("MedicationDispense", Some(&rid_parsed), resource, now).await {
                Ok(_) => created.push(format!("MedicationDispense/{rid}")),
                Err(ehr_store::StoreError::AlreadyExists) => {}
                Err(e) => return Err(e.into()),
            }
        }
        let mut result = s.result.clone();
        result["medicationDispenses"] = json!(all);
        result["dispensing"] = json!(r.dispensing);
        let changed = tx
            .change_submission(id, &["registered", "dispensed"], "dispensed", None, Some(&result), None, self.now_ms())
            .await?;
        let after = tx.submission(id).await?;
        if !changed {
            // Cancelled meanwhile: nothing is filed (the transaction is dropped, not committed).
            return Err(EPrescriptionAdapterError::WrongState {
                state: after.map(|a| a.state).unwrap_or_default(),
                why: "it changed meanwhile",
            });
        }
        tx.commit().await?;
        Ok((after.ok_or(EPrescriptionAdapterError::NotFound)?, created))
    }
}

/// A message that got no usable answer: why (no data), and whether the service may have
/// processed it all the same.
#[derive(Debug)]
struct Unanswered {
    why: String,
    may_have_arrived: bool,
}

/// The signing key must be readable by its owner only (like an SSH key): a key file others can
/// read is refused at start.
fn check_key_permissions(path: &std::path::Path) -> Result<(), String> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let meta = std::fs::metadata(path).map_err(|_| "signer_key_file cannot be read".to_owned())?;
        if meta.permissions().mode() & 0o077 != 0 {
            return Err("signer_key_file must not be readable by group or others (chmod 600)".into());
        }
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

fn refused(r: &xml::Response) -> EPrescriptionAdapterError {
    EPrescriptionAdapterError::Refused {
        code: r.result_code.clone(),
        message: r.result_message.clone(),
        details: r
            .errors
            .iter()
            .map(|e| {
                let mut d = e.code.clone();
                if let Some(n) = e.record {
                    d.push_str(&format!(" record {n}"));
                }
                if let Some(f) = &e.field {
                    d.push_str(&format!(" field {f}"));
                }
                format!("{d}: {}", e.message)
            })
            .collect(),
    }
}

/// The MedicationDispense of one dispensed drug; its id is derived from the prescription id, RP
/// and drug, so the same result never makes two.
fn dispense_resource(
    prescription_id: &str,
    d: &xml::DispensingResult,
    g: &xml::DispensedDrug,
    patient: &str,
    medication_request: Option<&str>,
    form: Option<&str>,
) -> (String, Value) {
    use sha2::Digest;
    let key = format!("{prescription_id}-{}-{}", g.rp_number, g.drug_index);
    let digest = sha2::Sha256::digest(key.as_bytes());
    let rid = format!("epsd-{}", digest.iter().take(16).map(|b| format!("{b:02x}")).collect::<String>());
    let system =
        ehr_eprescription::model::DrugCodeType::from_csv(&g.code_type).map(|t| t.system()).unwrap_or(fhir::NOCODED);
    let code = if system == fhir::NOCODED { "NOCODED" } else { g.code.as_str() };
    let date = chrono::NaiveDate::parse_from_str(&d.dispensed_on, "%Y%m%d")
        .map(|x| x.format("%Y-%m-%d").to_string())
        .unwrap_or_default();
    let mut r = json!({
        "resourceType": "MedicationDispense",
        "identifier": [{"system": DISPENSING_SYSTEM, "value": key}, {"system": PRESCRIPTION_ID_SYSTEM, "value": prescription_id}],
        "status": "completed",
        "medicationCodeableConcept": {"coding": [{"system": system, "code": code, "display": g.name}], "text": g.name},
        "subject": {"reference": patient},
        "performer": [{"actor": {"identifier": {"system": "http://jpfhir.jp/fhir/core/IdSystem/insurance-medical-institution-no", "value": d.pharmacy_code}, "display": d.pharmacy_name}}],
    });
    // Amounts as the service wrote them; one that is not a positive number is left out rather
    // than filed as 0.
    let positive = |v: &str| v.parse::<f64>().ok().filter(|x| x.is_finite() && *x > 0.0);
    if let Some(total) = positive(&g.total) {
        r["quantity"] = json!({"value": total, "unit": g.unit});
    }
    if let Some(amount) = positive(&g.amount) {
        r["dosageInstruction"] = json!([{"doseAndRate": [{"doseQuantity": {"value": amount, "unit": g.unit}}]}]);
    }
    // 調剤数量 is days only for day-based forms (内服, 内滴, 浸煎, 湯); for 頓服 it is times, for
    // 外用/注射 1: no daysSupply then.
    if matches!(form, Some("1" | "2" | "6" | "7")) && g.quantity > 0 {
        r["daysSupply"] =
            json!({"value": g.quantity, "unit": "日", "system": "http://unitsofmeasure.org", "code": "d"});
    }
    if !date.is_empty() {
        r["whenHandedOver"] = json!(date);
    }
    if let Some(mr) = medication_request {
        r["authorizingPrescription"] = json!([{"reference": mr}]);
    }
    (rid, r)
}

/// The body of `POST /eprescription/prescriptions`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DraftRequest {
    /// `Patient/<id>` (or the id).
    pub patient: String,
    /// `MedicationRequest/<id>` (or ids), grouped into RPs by their RP番号 identifiers.
    pub medication_requests: Vec<String>,
    #[serde(default)]
    pub coverage: Option<String>,
    /// 公費 Coverages, at most three.
    #[serde(default)]
    pub public_payments: Vec<String>,
    #[serde(default)]
    pub organization: Option<String>,
    #[serde(default)]
    pub practitioner: Option<String>,
    #[serde(default)]
    pub department: Option<Department>,
}

#[cfg(test)]
mod tests {
    #[cfg(unix)]
    #[test]
    fn a_key_file_others_can_read_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let path = std::env::temp_dir().join(format!("ehr-eps-key-{}.pem", uuid::Uuid::new_v4().simple()));
        std::fs::write(&path, "key").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(super::check_key_permissions(&path).unwrap_err().contains("chmod 600"));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(super::check_key_permissions(&path).is_ok());
        let _ = std::fs::remove_file(&path);
    }
}
