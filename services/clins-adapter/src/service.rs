//! Building, validating and queueing submissions; cancel, change, retrieve.
//!
//! Everything reads the caller's tenant only (`Store::read(&TenantContext)`): the patient, its
//! compartment (Condition, AllergyIntolerance, Observation, MedicationRequest, Encounter,
//! DocumentReference), the tenant's Practitioners and its own Organization — the one carrying
//! the 10-digit institution number (or the one the request names).

use crate::{ClinsAdapter, ClinsAdapterError, SERVICE};
use ehr_clins::common::{BundleId, INSTITUTION_NO, Institution, Record, instant, is_flag};
use ehr_clins::documents::{self, CheckupRequest, DischargeRequest, DocumentKind, ReferralRequest};
use ehr_clins::envelope::{self, CancelKeys, MemberKeys, Operation, Request};
use ehr_clins::items::{self, BuildOptions, ItemKind};
use ehr_core::{Issue, Severity, TenantContext};
use ehr_fhir::search::parse_search;
use ehr_store::{Submission, SubmissionFilter, Tx};
use serde::Deserialize;
use serde_json::{Value, json};

/// The body of a preview, a registration and a change.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SubmitBody {
    /// An item (`condition`, `drug-allergy`, `other-allergy`, `lab-result`, `infection`,
    /// `medication`) or a document (`referral`, `discharge-summary`, `checkup`).
    pub kind: String,
    /// `Patient/<id>`.
    pub patient: String,
    /// Our Organization (`Organization/<id>`) when the tenant has several with an institution number.
    #[serde(default)]
    pub organization: Option<String>,
    /// Only these resources (`Condition/<id>`, …) for an item.
    #[serde(default)]
    pub resources: Option<Vec<String>>,
    /// Flags added to every resource: `LTS`, `UNINFORMED`, `UNDELIVERED`.
    #[serde(default)]
    pub flags: Vec<String>,
    /// When the stored Patient has no JP_Insurance_memberID identifier.
    #[serde(default)]
    pub insurance_member_id: Option<String>,
    /// JP_eCS_Department CodeableConcept for resources that carry none.
    #[serde(default)]
    pub department: Option<Value>,
    #[serde(default)]
    pub referral: Option<ReferralRequest>,
    #[serde(default)]
    pub discharge: Option<DischargeRequest>,
    #[serde(default)]
    pub checkup: Option<CheckupRequest>,
}

/// The body of a retrieve.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RetrieveBody {
    pub patient: String,
    #[serde(default)]
    pub insurance_member_id: Option<String>,
}

/// What the submission is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Item(ItemKind),
    Document(DocumentKind),
}

impl Kind {
    pub fn parse(s: &str) -> Option<Self> {
        ItemKind::parse(s).map(Kind::Item).or_else(|| DocumentKind::parse(s).map(Kind::Document))
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Item(k) => k.as_str(),
            Kind::Document(k) => k.as_str(),
        }
    }
}

/// A built Bundle with its findings.
pub struct Built {
    pub kind: Kind,
    pub patient: String,
    pub institution: Institution,
    pub bundle: Value,
    /// Every finding (warnings included).
    pub issues: Vec<Issue>,
}

impl Built {
    /// The findings that reject a submission.
    pub fn errors(&self) -> Vec<Issue> {
        self.issues.iter().filter(|i| matches!(i.severity, Severity::Error | Severity::Fatal)).cloned().collect()
    }
}

const COMPARTMENT: &[&str] =
    &["Condition", "AllergyIntolerance", "Observation", "MedicationRequest", "Encounter", "DocumentReference"];

fn known(t: &str) -> Option<&'static str> {
    ehr_core::ResourceType::parse(t).ok().map(ehr_core::ResourceType::as_str)
}

async fn search_all(tx: &Tx, ty: &'static str, pairs: &[(&str, &str)]) -> Result<Vec<Value>, ClinsAdapterError> {
    let mut pairs: Vec<(String, String)> = pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
    pairs.push(("_count".into(), "1000".into()));
    let query = parse_search(ty, &pairs, true, known).map_err(|_| ClinsAdapterError::Invalid("search".into()))?;
    let page = tx.search(&query).await?;
    Ok(page.matches.iter().filter_map(|s| serde_json::from_str(&s.content).ok()).collect())
}

/// `Patient/<id>` → `<id>` (a bare id is taken as is).
pub(crate) fn patient_id(reference: &str) -> Result<&str, ClinsAdapterError> {
    let id = reference.strip_prefix("Patient/").unwrap_or(reference);
    if id.is_empty() || id.len() > 64 || !id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.') {
        return Err(ClinsAdapterError::Invalid("patient must be Patient/<id>".into()));
    }
    Ok(id)
}

fn is_document(s: &Submission) -> bool {
    DocumentKind::parse(&s.kind).is_some()
}

impl ClinsAdapter {
    fn now_ms(&self) -> i64 {
        self.clock.now().timestamp_millis()
    }

    /// The patient's record in the caller's tenant, and our institution.
    pub async fn load_record(
        &self,
        ctx: &TenantContext,
        patient: &str,
        organization: Option<&str>,
    ) -> Result<(Record, Institution), ClinsAdapterError> {
        let id = patient_id(patient)?;
        let tx = self.store.read(ctx).await?;
        let patient = tx.read_json("Patient", id).await?.ok_or(ClinsAdapterError::NotFound("patient"))?;
        let organizations = search_all(&tx, "Organization", &[]).await?;
        let ours = match organization {
            Some(r) => {
                let oid = r.strip_prefix("Organization/").unwrap_or(r);
                organizations.into_iter().find(|o| o["id"] == oid).ok_or(ClinsAdapterError::NotFound("organization"))?
            }
            None => {
                let mut with_number: Vec<Value> = organizations
                    .into_iter()
                    .filter(|o| {
                        o["identifier"].as_array().is_some_and(|ids| ids.iter().any(|i| i["system"] == INSTITUTION_NO))
                    })
                    .collect();
                match with_number.len() {
                    0 => {
                        return Err(ehr_clins::ClinsError::Missing(
                            "an Organization of this hospital with its institution number".into(),
                        )
                        .into());
                    }
                    1 => with_number.remove(0),
                    _ => {
                        return Err(ClinsAdapterError::Invalid(
                            "several Organizations carry an institution number: name ours with organization".into(),
                        ));
                    }
                }
            }
        };
        let institution = Institution::of_organization(&ours)?;
        let reference = format!("Patient/{id}");
        let mut resources = Vec::new();
        for ty in COMPARTMENT {
            resources.extend(search_all(&tx, ty, &[("patient", &reference)]).await?);
        }
        resources.extend(search_all(&tx, "Practitioner", &[]).await?);
        // Stored destination organizations named by a referral.
        resources.extend(search_all(&tx, "Organization", &[]).await?);
        tx.commit().await?;
        Ok((Record { patient, organization: ours, resources }, institution))
    }

    /// The validation of a built Bundle: profiles, JP-CLINS rules and master codes, all in
    /// `FullValidator` (the Bundle is built from the requested kind, so it agrees with it).
    pub fn check(&self, bundle: &Value) -> Vec<Issue> {
        self.validator.validate(bundle, None)
    }

    /// Builds (and checks) the Bundle a body asks for; `bundle_id` is kept for a change.
    pub async fn build(
        &self,
        ctx: &TenantContext,
        body: &SubmitBody,
        bundle_id: Option<BundleId>,
    ) -> Result<Built, ClinsAdapterError> {
        let kind = Kind::parse(&body.kind).ok_or_else(|| {
            ClinsAdapterError::Invalid(
                "kind must be condition, drug-allergy, other-allergy, lab-result, infection, medication, referral, discharge-summary or checkup".into(),
            )
        })?;
        if body.flags.iter().any(|f| !is_flag(f)) {
            return Err(ClinsAdapterError::Invalid("flags must be LTS, UNINFORMED or UNDELIVERED".into()));
        }
        // §A.4: UNINFORMED / UNDELIVERED are flags of 傷病名 (Condition) only; a document carries
        // them on its Conditions.
        let carries_conditions = matches!(
            kind,
            Kind::Item(ItemKind::Condition) | Kind::Document(DocumentKind::Referral | DocumentKind::Discharge)
        );
        if !carries_conditions && body.flags.iter().any(|f| f != "LTS") {
            return Err(ClinsAdapterError::Invalid("UNINFORMED and UNDELIVERED apply to conditions only".into()));
        }
        if let Some(m) = &body.insurance_member_id
            && MemberKeys::parse(m).is_none()
        {
            return Err(ClinsAdapterError::Invalid("insuranceMemberId must be insurer:symbol:number:branch".into()));
        }
        let (record, institution) = self.load_record(ctx, &body.patient, body.organization.as_deref()).await?;
        let now = self.clock.now();
        let options = BuildOptions {
            bundle_id: bundle_id.unwrap_or_else(|| BundleId::generate(&institution, now)),
            now,
            flags: body.flags.clone(),
            member_id: body.insurance_member_id.clone(),
            department: body.department.clone(),
            only: body.resources.clone(),
        };
        let terminology = self.terminology();
        let bundle = match kind {
            Kind::Item(item) => items::build_item(item, &record, &institution, terminology, &options)?,
            Kind::Document(DocumentKind::Referral) => {
                let r = body.referral.clone().unwrap_or_default();
                documents::referral(&record, &institution, terminology, &r, &options)?
            }
            Kind::Document(DocumentKind::Discharge) => {
                let r = body.discharge.clone().unwrap_or_default();
                documents::discharge_summary(&record, &institution, terminology, &r, &options)?
            }
            Kind::Document(DocumentKind::Checkup) => {
                let r = body.checkup.clone().unwrap_or_default();
                documents::checkup_report(&record, &institution, terminology, &r, &options)?
            }
        };
        let issues = self.check(&bundle);
        let patient = format!("Patient/{}", patient_id(&body.patient)?);
        Ok(Built { kind, patient, institution, bundle, issues })
    }

    fn envelope(&self, operation: Operation, institution: &str, kind: &str, bundle_id: Option<&str>) -> Request {
        Request {
            version: envelope::VERSION.into(),
            request_id: uuid::Uuid::new_v4().to_string(),
            operation,
            institution: institution.to_owned(),
            information_type: kind.to_owned(),
            bundle_identifier: bundle_id.map(str::to_owned),
            cancel_keys: None,
            patient_keys: None,
            bundle: None,
            sent_at: instant(self.clock.now()),
        }
    }

    fn new_submission(
        &self,
        ctx: &TenantContext,
        request: &Request,
        kind: &str,
        patient: &str,
        result: Value,
    ) -> Result<Submission, ClinsAdapterError> {
        let now = self.now_ms();
        let payload = serde_json::to_string(request).map_err(|_| ClinsAdapterError::Invalid("the envelope".into()))?;
        let mut result = result;
        // The due time as queued; a claim moves next_attempt_at away from it (see `cancel`).
        result["dueAt"] = json!(now);
        Ok(Submission {
            id: uuid::Uuid::new_v4().to_string(),
            service: SERVICE.into(),
            kind: kind.to_owned(),
            operation: request.operation.as_str().into(),
            request_id: request.request_id.clone(),
            business_key: request.bundle_identifier.clone().unwrap_or_default(),
            patient: Some(patient.to_owned()),
            state: "queued".into(),
            attempts: 0,
            next_attempt_at: Some(now),
            last_error: None,
            payload,
            response: None,
            result,
            created_by: Some(ctx.subject().to_owned()),
            created_at: now,
            updated_at: now,
        })
    }

    async fn store_submission(&self, ctx: &TenantContext, s: &Submission) -> Result<(), ClinsAdapterError> {
        let tx = self.store.write(ctx).await?;
        tx.insert_submission(s).await?;
        tx.commit().await?;
        self.wake();
        Ok(())
    }

    /// Builds, validates and queues a registration.
    pub async fn submit(&self, ctx: &TenantContext, body: &SubmitBody) -> Result<Submission, ClinsAdapterError> {
        let built = self.build(ctx, body, None).await?;
        let errors = built.errors();
        if !errors.is_empty() {
            return Err(ClinsAdapterError::Validation(errors));
        }
        let bundle_id = built.bundle["identifier"]["value"].as_str().map(str::to_owned);
        let mut request =
            self.envelope(Operation::Register, built.institution.as_str(), built.kind.as_str(), bundle_id.as_deref());
        request.bundle = Some(built.bundle);
        let s = self.new_submission(ctx, &request, built.kind.as_str(), &built.patient, json!({}))?;
        self.store_submission(ctx, &s).await?;
        tracing::info!(submission = %s.id, kind = %s.kind, "clins submission queued");
        Ok(s)
    }

    /// One submission of the caller's tenant.
    pub async fn submission(&self, ctx: &TenantContext, id: &str) -> Result<Submission, ClinsAdapterError> {
        let tx = self.store.read(ctx).await?;
        let s = tx.submission(id).await?;
        tx.commit().await?;
        s.filter(|s| s.service == SERVICE).ok_or(ClinsAdapterError::NotFound("submission"))
    }

    /// The tenant's submissions, newest first.
    pub async fn submissions(
        &self,
        ctx: &TenantContext,
        filter: &SubmissionFilter<'_>,
    ) -> Result<Vec<Submission>, ClinsAdapterError> {
        let filter = SubmissionFilter { service: Some(SERVICE), ..filter.clone() };
        let tx = self.store.read(ctx).await?;
        let list = tx.submissions(&filter).await?;
        tx.commit().await?;
        Ok(list)
    }

    /// Another operation on the same bundle identifier still queued: a second one could overtake
    /// it between retries (an older change landing last), so one at a time.
    async fn ensure_nothing_pending(
        &self,
        ctx: &TenantContext,
        original: &Submission,
    ) -> Result<(), ClinsAdapterError> {
        let filter = SubmissionFilter {
            business_key: Some(&original.business_key),
            state: Some("queued"),
            ..Default::default()
        };
        if self.submissions(ctx, &filter).await?.iter().any(|p| p.id != original.id) {
            return Err(ClinsAdapterError::Conflict(
                "another cancel or change of this registration is still queued: wait for its answer",
            ));
        }
        Ok(())
    }

    /// Cancels a registration (or a change).
    ///
    /// - queued, no attempt may have reached the service, and no worker holds it: withdrawn in
    ///   one statement conditional on its due time (`Tx::withdraw_submission`), so a worker
    ///   claiming it at the same moment either wins (and this answers 409) or never sees it;
    /// - queued while on the wire, or after an attempt that may have arrived (timeout, dropped
    ///   file): 409 — withdrawing it would leave the service holding a registration the EHR
    ///   shows as cancelled; once it is accepted (or failed) it is cancelled at the service;
    /// - failed without any attempt that may have arrived: withdrawn;
    /// - accepted, or failed after an attempt that may have arrived: a cancel request (bundle
    ///   identifier + the patient's insurance keys + resource identifiers / document id) is
    ///   queued; 2001 (never held) counts as done.
    ///
    /// Returns the submission that carries the cancellation (or the withdrawn one).
    pub async fn cancel(&self, ctx: &TenantContext, id: &str) -> Result<Submission, ClinsAdapterError> {
        let original = self.submission(ctx, id).await?;
        if !matches!(original.operation.as_str(), "register" | "change") {
            return Err(ClinsAdapterError::Conflict("only a registration or a change can be cancelled"));
        }
        let now = self.now_ms();
        let may_have_arrived = original.result["mayHaveArrived"] == json!(true);
        let mut withdrawn = original.result.clone();
        withdrawn["withdrawnAt"] = json!(now);
        match original.state.as_str() {
            "queued" if may_have_arrived => {
                return Err(ClinsAdapterError::Conflict(
                    "an attempt may have reached the national service: cancel it once it is accepted or failed",
                ));
            }
            "queued" => {
                let due = original.result["dueAt"].as_i64().filter(|d| original.next_attempt_at == Some(*d));
                let Some(due) = due else {
                    return Err(ClinsAdapterError::Conflict("it is being sent right now: try again in a moment"));
                };
                let tx = self.store.write(ctx).await?;
                let done = tx.withdraw_submission(id, due, "withdrawn", Some(&withdrawn), now).await?;
                let current = tx.submission(id).await?.ok_or(ClinsAdapterError::NotFound("submission"))?;
                tx.commit().await?;
                if !done {
                    return Err(ClinsAdapterError::Conflict("it is being sent right now: try again in a moment"));
                }
                return Ok(current);
            }
            "failed" if !may_have_arrived => {
                let tx = self.store.write(ctx).await?;
                let done =
                    tx.change_submission(id, &["failed"], "withdrawn", None, Some(&withdrawn), None, now).await?;
                let current = tx.submission(id).await?.ok_or(ClinsAdapterError::NotFound("submission"))?;
                tx.commit().await?;
                if !done {
                    return Err(ClinsAdapterError::Conflict("the submission changed meanwhile; look again"));
                }
                return Ok(current);
            }
            "accepted" | "failed" => {}
            _ => {
                return Err(ClinsAdapterError::Conflict(
                    "this submission holds nothing at the national service to cancel",
                ));
            }
        }
        self.ensure_nothing_pending(ctx, &original).await?;
        let sent: Request = serde_json::from_str(&original.payload)
            .map_err(|_| ClinsAdapterError::Invalid("stored envelope".into()))?;
        let bundle = sent.bundle.unwrap_or(Value::Null);
        let member = MemberKeys::of_bundle(&bundle).unwrap_or_default();
        let mut request =
            self.envelope(Operation::Cancel, &sent.institution, &original.kind, Some(&original.business_key));
        request.cancel_keys = Some(if is_document(&original) {
            CancelKeys {
                member,
                resource_identifiers: Vec::new(),
                document_id: bundle["entry"][0]["resource"]["identifier"]["value"].as_str().map(str::to_owned),
            }
        } else {
            CancelKeys { member, resource_identifiers: resource_identifiers(&bundle), document_id: None }
        });
        let patient = original.patient.clone().unwrap_or_default();
        let s = self.new_submission(ctx, &request, &original.kind, &patient, json!({"target": original.id}))?;
        self.store_submission(ctx, &s).await?;
        Ok(s)
    }

    /// Changes a registration: new data under the same bundle identifier, sent as one change
    /// request (cancel + register at the service).
    pub async fn change(
        &self,
        ctx: &TenantContext,
        id: &str,
        body: &SubmitBody,
    ) -> Result<Submission, ClinsAdapterError> {
        let original = self.submission(ctx, id).await?;
        if original.state != "accepted" || !matches!(original.operation.as_str(), "register" | "change") {
            return Err(ClinsAdapterError::Conflict(
                "only an accepted registration (or change) can be changed; a queued one can be cancelled and registered anew",
            ));
        }
        self.ensure_nothing_pending(ctx, &original).await?;
        if body.kind != original.kind {
            return Err(ClinsAdapterError::Invalid("kind must be the submission's".into()));
        }
        if original.patient.as_deref() != Some(format!("Patient/{}", patient_id(&body.patient)?).as_str()) {
            return Err(ClinsAdapterError::Invalid("patient must be the submission's".into()));
        }
        let bundle_id = BundleId::parse(&original.business_key)?;
        let built = self.build(ctx, body, Some(bundle_id)).await?;
        let errors = built.errors();
        if !errors.is_empty() {
            return Err(ClinsAdapterError::Validation(errors));
        }
        let mut request = self.envelope(
            Operation::Change,
            built.institution.as_str(),
            built.kind.as_str(),
            Some(&original.business_key),
        );
        request.bundle = Some(built.bundle);
        let s =
            self.new_submission(ctx, &request, built.kind.as_str(), &built.patient, json!({"target": original.id}))?;
        self.store_submission(ctx, &s).await?;
        Ok(s)
    }

    /// What the national service holds for a patient (a synchronous request; not queued).
    pub async fn retrieve(
        &self,
        ctx: &TenantContext,
        body: &RetrieveBody,
    ) -> Result<envelope::Response, ClinsAdapterError> {
        let transport = self
            .transport()
            .ok_or_else(|| ClinsAdapterError::Unavailable("no national service is configured".into()))?
            .clone();
        let (record, institution) = self.load_record(ctx, &body.patient, None).await?;
        let member = body
            .insurance_member_id
            .clone()
            .or_else(|| {
                record.patient["identifier"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|i| i["system"] == ehr_clins::common::INSURANCE_MEMBER_ID)
                    .and_then(|i| i["value"].as_str().map(str::to_owned))
            })
            .and_then(|m| MemberKeys::parse(&m))
            .ok_or_else(|| ehr_clins::ClinsError::Missing("the patient's insurance member id".into()))?;
        let mut request = self.envelope(Operation::Retrieve, institution.as_str(), "patient", None);
        request.patient_keys = Some(member);
        transport.send(&request).await.map_err(|e| ClinsAdapterError::Unavailable(e.to_string()))
    }
}

/// The resource identifiers of a Bundle's entries (the keys of an item's cancellation).
pub fn resource_identifiers(bundle: &Value) -> Vec<String> {
    bundle["entry"]
        .as_array()
        .into_iter()
        .flatten()
        .skip(1)
        .flat_map(|e| e["resource"]["identifier"].as_array().into_iter().flatten())
        .filter(|i| i["system"] == ehr_clins::common::RESOURCE_INSTANCE)
        .filter_map(|i| i["value"].as_str().map(str::to_owned))
        .collect()
}
