//! The 3 documents (3文書) as FHIR document Bundles: 診療情報提供書 (JP_Bundle_eReferral),
//! 退院時サマリー (JP_Bundle_eDischargeSummary) and 健康診断結果報告書
//! (JP_Bundle_eCheckupGeneral, eCheckup IG).
//!
//! The record gives the structured parts (Patient, Conditions, allergies, prescriptions, lab
//! results, the inpatient Encounter, practitioners, our Organization); the request gives what a
//! record does not hold (referral purpose, destination, present illness, clinical course,
//! discharge instructions…). A request field left out leaves its section out: the validation
//! that follows names the missing section, which is how a user learns what to fill in.
//!
//! Readings of the open points (docs/national/clins.md):
//! - discharge sub-sections 現病歴/既往歴/家族歴/社会歴 use 362/372/552/642, the codes the
//!   embedded JP_Composition_eDischargeSummary snapshot fixes (the referral keeps 360/370/550/640);
//! - the checkup Composition.type is `53576-5` (eCheckup IG 1.5.0), not the older `JPGCHKUP01`;
//! - Composition.identifier is `<institution>^<year>^<serial>` (the profile's definition), equal
//!   to the bundle identifier, which therefore also serves as the document id for cancellation.

use crate::ClinsError;
use crate::common::*;
use crate::items::{self, BuildOptions};
use ehr_terminology::Terminology;
use serde::Deserialize;
use serde_json::{Value, json};

pub const PROFILE_BUNDLE_REFERRAL: &str = "http://jpfhir.jp/fhir/clins/StructureDefinition/JP_Bundle_eReferral|1";
pub const PROFILE_BUNDLE_DISCHARGE: &str =
    "http://jpfhir.jp/fhir/clins/StructureDefinition/JP_Bundle_eDischargeSummary|1";
pub const PROFILE_BUNDLE_CHECKUP: &str = "http://jpfhir.jp/fhir/clins/StructureDefinition/JP_Bundle_eCheckupGeneral|1";
pub const PROFILE_COMPOSITION_REFERRAL: &str =
    "http://jpfhir.jp/fhir/eReferral/StructureDefinition/JP_Composition_eReferral|1";
pub const PROFILE_COMPOSITION_DISCHARGE: &str =
    "http://jpfhir.jp/fhir/eDischargeSummary/StructureDefinition/JP_Composition_eDischargeSummary|1";
pub const PROFILE_COMPOSITION_CHECKUP: &str =
    "http://jpfhir.jp/fhir/eCheckup/StructureDefinition/JP_Composition_eCheckupGeneral|1";
pub const DOC_TYPE_CS: &str = "http://jpfhir.jp/fhir/Common/CodeSystem/doc-typecodes";
pub const DOC_SUBTYPE_CS: &str = "http://jpfhir.jp/fhir/Common/CodeSystem/doc-subtypecodes";
pub const CHECKUP_SECTION_CS: &str = "http://jpfhir.jp/fhir/eCheckup/CodeSystem/section-code";
pub const CHECKUP_REPORT_CATEGORY: &str = "urn:oid:2.16.840.1.113883.2.2.1.6.1001";
pub const CHECKUP_PROGRAM: &str = "urn:oid:1.2.392.200119.6.1002";
pub const VERSION_NUMBER: &str = "http://hl7.org/fhir/StructureDefinition/composition-clinicaldocument-versionNumber";

/// One of the 3 documents.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DocumentKind {
    Referral,
    Discharge,
    Checkup,
}

impl DocumentKind {
    pub const ALL: [DocumentKind; 3] = [DocumentKind::Referral, DocumentKind::Discharge, DocumentKind::Checkup];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Referral => "referral",
            Self::Discharge => "discharge-summary",
            Self::Checkup => "checkup",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// The envelope's information type.
    pub fn information_type(self) -> &'static str {
        match self {
            Self::Referral => "診療情報提供書",
            Self::Discharge => "退院時サマリー",
            Self::Checkup => "健康診断結果報告書",
        }
    }
}

/// The other party of a referral (紹介先).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Party {
    /// A stored Organization (`Organization/<id>`), or:
    pub organization: Option<String>,
    /// its name and 10-digit institution number.
    pub name: Option<String>,
    pub institution_number: Option<String>,
    /// The department (SS-MIX2 code, e.g. `08`) and its name.
    pub department_code: Option<String>,
    pub department_name: Option<String>,
    /// The doctor addressed: a stored Practitioner, or a name ("野口 英世").
    pub practitioner: Option<String>,
    pub practitioner_name: Option<String>,
}

/// What a 診療情報提供書 needs beyond the record.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ReferralRequest {
    /// 紹介目的 (section 950, required).
    pub purpose: Option<String>,
    /// 現病歴 (section 360, required).
    pub present_illness: Option<String>,
    /// 臨床経過 (section 330).
    pub clinical_course: Option<String>,
    /// 備考・連絡情報 (section 220).
    pub remarks: Option<String>,
    pub destination: Party,
    /// The author (`Practitioner/<id>`); default: the first Practitioner of the record.
    pub author: Option<String>,
    /// doc-subtypecodes (default OUTPATIENT).
    pub category: Option<String>,
    /// 傷病名・主訴 (section 340): these Conditions; default: the active ones.
    pub problems: Option<Vec<String>>,
}

/// What a 退院時サマリー needs beyond the record.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DischargeRequest {
    /// The inpatient stay (`Encounter/<id>`, with period start and end).
    pub encounter: Option<String>,
    pub author: Option<String>,
    /// 主訴 (352), 入院理由 (312), 現病歴 (362), 入院中経過 (333), 退院時方針指示 (424).
    pub chief_complaint: Option<String>,
    pub admission_reason: Option<String>,
    pub present_illness: Option<String>,
    pub hospital_course: Option<String>,
    pub discharge_instructions: Option<String>,
    /// 入院時詳細 (322) / 退院時詳細 (324) narrative; default: the stay's dates.
    pub admission_details: Option<String>,
    pub discharge_details: Option<String>,
    /// 入院時診断 (342) / 退院時診断 (344): these Conditions; default: every Condition.
    pub admission_diagnoses: Option<Vec<String>>,
    pub discharge_diagnoses: Option<Vec<String>>,
}

/// What a 健康診断結果報告書 needs beyond the record.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CheckupRequest {
    /// 報告区分 (default `40` 特定健診以外の健診結果).
    pub report_category: Option<String>,
    /// 健診プログラムサービス (default `030` 事業者健診).
    pub program: Option<String>,
    /// The checkup date (default: today).
    pub date: Option<String>,
    /// The result Observations (`Observation/<id>`); default: every lab result of the record.
    pub observations: Option<Vec<String>>,
    /// Free title (default 健康診断結果報告書).
    pub title: Option<String>,
    pub author: Option<String>,
}

/// The entries of a document being assembled.
struct Doc<'a> {
    record: &'a Record,
    institution: &'a Institution,
    options: &'a BuildOptions,
    patient_url: String,
    entries: Vec<Value>,
}

impl<'a> Doc<'a> {
    fn new(record: &'a Record, institution: &'a Institution, options: &'a BuildOptions) -> Result<Self, ClinsError> {
        let patient_url = new_full_url();
        let patient = patient_ecs(record, institution, options.member_id.as_deref(), options.now)?;
        Ok(Self { record, institution, options, entries: vec![entry(&patient_url, patient)], patient_url })
    }

    fn add(&mut self, resource: Value) -> String {
        let url = new_full_url();
        self.entries.push(entry(&url, resource));
        url
    }

    /// The author Practitioner entry.
    fn author(&mut self, requested: Option<&str>) -> Result<String, ClinsError> {
        let stored = match requested {
            Some(r) => self.record.get(r).ok_or_else(|| ClinsError::Invalid("author: no such Practitioner".into()))?,
            None => self
                .record
                .of_type("Practitioner")
                .next()
                .ok_or_else(|| ClinsError::Missing("a Practitioner (the author)".into()))?,
        };
        Ok(self.add(practitioner_ecs(stored, self.institution)))
    }

    /// Our Organization entry (author, custodian, 紹介元).
    fn custodian(&mut self) -> String {
        let org = organization_ecs(&self.record.organization, self.institution, None);
        self.add(org)
    }

    fn conditions(
        &mut self,
        only: Option<&[String]>,
        keep: impl Fn(&Value) -> bool,
    ) -> Result<Vec<String>, ClinsError> {
        let list: Vec<Value> =
            sendable(self.record, "Condition", only)?.into_iter().filter(|c| keep(c)).cloned().collect();
        let mut urls = Vec::new();
        for c in &list {
            let r = items::condition(c, self.record, self.institution, self.options, &self.patient_url)?;
            urls.push(self.add(r));
        }
        Ok(urls)
    }

    fn allergies(&mut self) -> Result<Vec<String>, ClinsError> {
        let list: Vec<Value> = sendable(self.record, "AllergyIntolerance", None)?.into_iter().cloned().collect();
        let mut urls = Vec::new();
        for a in &list {
            let r = items::allergy(a, self.institution, self.options, &self.patient_url)?;
            urls.push(self.add(r));
        }
        Ok(urls)
    }

    fn medications(&mut self) -> Result<Vec<String>, ClinsError> {
        let list: Vec<Value> = sendable(self.record, "MedicationRequest", None)?.into_iter().cloned().collect();
        let mut urls = Vec::new();
        for m in &list {
            let r = items::medication_request(m, self.institution, self.options, &self.patient_url)?;
            urls.push(self.add(r));
        }
        Ok(urls)
    }

    fn labs(&mut self, terminology: &Terminology, only: Option<&[String]>) -> Result<Vec<String>, ClinsError> {
        let list: Vec<Value> =
            sendable(self.record, "Observation", only)?.into_iter().filter(|o| items::is_lab(o)).cloned().collect();
        let mut urls = Vec::new();
        for o in &list {
            let r =
                items::lab_observation(o, self.record, self.institution, terminology, self.options, &self.patient_url)?;
            urls.push(self.add(r));
        }
        Ok(urls)
    }

    /// A DocumentReference carrying a text as an inline attachment (臨床経過, 入院中経過).
    fn text_document(&mut self, description: &str, text: &str) -> String {
        use base64::Engine as _;
        let data = base64::engine::general_purpose::STANDARD.encode(text.as_bytes());
        self.add(json!({
            "resourceType": "DocumentReference",
            "meta": {"profile": [PROFILE_DOCREF]},
            "status": "current",
            "type": {"coding": [{"system": "http://loinc.org", "code": "11506-3", "display": "Progress note"}]},
            "description": description,
            "content": [{"attachment": {"contentType": "text/plain; charset=utf-8", "data": data}}],
        }))
    }

    fn bundle(self, profile: &str, composition: Value) -> Value {
        let Doc { options, mut entries, .. } = self;
        let composition_url = new_full_url();
        entries.insert(0, entry(&composition_url, composition));
        json!({
            "resourceType": "Bundle",
            "meta": {"lastUpdated": instant(options.now), "profile": [profile]},
            "identifier": {"system": BUNDLE_IDENTIFIER, "value": options.bundle_id.as_str()},
            "type": "document",
            "timestamp": instant(options.now),
            "entry": entries,
        })
    }
}

fn reference_of(r: &Value) -> Option<String> {
    Some(format!("{}/{}", r["resourceType"].as_str()?, r["id"].as_str()?))
}

/// The stored resources of a type that may be sent ([`is_sendable`]), only the requested ones
/// when the request names some — each of which must be this patient's and sendable.
fn sendable<'r>(record: &'r Record, ty: &'r str, only: Option<&[String]>) -> Result<Vec<&'r Value>, ClinsError> {
    let list: Vec<&Value> = record
        .of_type(ty)
        .filter(|r| is_sendable(r))
        .filter(|r| only.is_none_or(|o| o.iter().any(|x| Some(x.as_str()) == reference_of(r).as_deref())))
        .collect();
    if let Some(only) = only {
        items::check_requested(record, only, ty, &list)?;
    }
    Ok(list)
}

/// A Composition section (document-section code system; `text.status = additional`).
pub fn section(code: &str, title: &str, text: &str, entries: &[(String, &str)]) -> Value {
    let mut s = json!({
        "title": title,
        "code": {"coding": [{"system": SECTION_CS, "code": code, "display": format!("{title}セクション")}]},
        "text": {"status": "additional", "div": xhtml(text)},
    });
    if !entries.is_empty() {
        s["entry"] = entries.iter().map(|(url, ty)| json!({"reference": url, "type": ty})).collect();
    }
    s
}

/// Section 300 構造情報: a container of sub-sections, without a narrative of its own (the
/// discharge profile fixes its `text` to 0..0; the referral example has none either).
fn structured_section(sub: Vec<Value>) -> Value {
    json!({
        "title": "構造情報",
        "code": {"coding": [{"system": SECTION_CS, "code": "300", "display": "構造情報セクション"}]},
        "section": sub,
    })
}

fn refs(urls: &[String], ty: &'static str) -> Vec<(String, &'static str)> {
    urls.iter().map(|u| (u.clone(), ty)).collect()
}

fn composition_base(
    profile: &str,
    type_code: (&str, &str),
    category: (&str, &str, &str),
    title: &str,
    options: &BuildOptions,
    patient_url: &str,
) -> Value {
    json!({
        "resourceType": "Composition",
        "meta": {"lastUpdated": instant(options.now), "profile": [profile]},
        "extension": [{"url": VERSION_NUMBER, "valueString": "1.0"}],
        "identifier": {"system": RESOURCE_INSTANCE, "value": options.bundle_id.as_str()},
        "status": "final",
        "type": {"coding": [{"system": DOC_TYPE_CS, "code": type_code.0, "display": type_code.1}]},
        "category": [{"coding": [{"system": category.0, "code": category.1, "display": category.2}]}],
        "subject": {"reference": patient_url},
        "date": instant(options.now),
        "title": title,
    })
}

fn nonempty(s: &Option<String>) -> Option<&str> {
    s.as_deref().map(str::trim).filter(|s| !s.is_empty())
}

/// Builds a 診療情報提供書.
pub fn referral(
    record: &Record,
    institution: &Institution,
    terminology: &Terminology,
    request: &ReferralRequest,
    options: &BuildOptions,
) -> Result<Value, ClinsError> {
    let mut doc = Doc::new(record, institution, options)?;
    let author = doc.author(request.author.as_deref())?;
    let ours = doc.custodian();
    // 紹介先: a stored Organization or the name and number given.
    let dest = &request.destination;
    let dest_org = match &dest.organization {
        Some(r) => record
            .get(r)
            .cloned()
            .ok_or_else(|| ClinsError::Invalid("destination.organization: no such Organization".into()))?,
        None => {
            json!({"name": nonempty(&dest.name).ok_or_else(|| ClinsError::Invalid("destination: an organization or a name is required".into()))?})
        }
    };
    let dest_inst = match &dest.institution_number {
        Some(n) => Institution::new(n)?,
        None => Institution::of_organization(&dest_org)
            .map_err(|_| ClinsError::Invalid("destination: the institution number is required".into()))?,
    };
    let dest_department = dest.department_code.as_ref().map(|code| {
        json!({"coding": [{"system": DEPARTMENT_CS, "code": code, "display": dest.department_name.clone().unwrap_or_default()}]})
    });
    let dest_url = doc.add(organization_ecs(&dest_org, &dest_inst, dest_department.as_ref()));
    let mut to_entries = vec![(dest_url, "Organization")];
    let dest_doctor = match (&dest.practitioner, nonempty(&dest.practitioner_name)) {
        (Some(r), _) => Some(
            record
                .get(r)
                .cloned()
                .ok_or_else(|| ClinsError::Invalid("destination.practitioner: no such Practitioner".into()))?,
        ),
        (None, Some(name)) => {
            let (family, given) = name.split_once([' ', '\u{3000}']).unwrap_or((name, ""));
            let mut n = json!({"family": family});
            if !given.trim().is_empty() {
                n["given"] = json!([given.trim()]);
            }
            Some(json!({"name": [n]}))
        }
        _ => None,
    };
    if let Some(d) = dest_doctor {
        let mut p = practitioner_ecs(&d, &dest_inst);
        if let Some(o) = p.as_object_mut() {
            o.remove("identifier");
        }
        to_entries.push((doc.add(p), "Practitioner"));
    }
    let dest_name = dest_org["name"].as_str().unwrap_or("紹介先").to_owned();
    let our_name = record.organization["name"].as_str().unwrap_or("紹介元").to_owned();

    let mut structured = Vec::new();
    if let Some(purpose) = nonempty(&request.purpose) {
        let enc = doc.add(json!({
            "resourceType": "Encounter",
            "meta": {"profile": [PROFILE_ENCOUNTER]},
            "status": "finished",
            "class": {"system": ACT_CODE, "code": "AMB", "display": "外来"},
            "reasonCode": [{"text": purpose}],
        }));
        structured.push(section("950", "紹介目的", purpose, &[(enc, "Encounter")]));
    }
    let active = |c: &Value| {
        c["clinicalStatus"]["coding"][0]["code"]
            .as_str()
            .is_none_or(|s| s == "active" || s == "recurrence" || s == "relapse")
    };
    let problems = doc.conditions(request.problems.as_deref(), active)?;
    let problem_text = problem_names(record, request.problems.as_deref(), active);
    if !problems.is_empty() {
        structured.push(section("340", "傷病名・主訴", &problem_text, &refs(&problems, "Condition")));
    }
    if let Some(text) = nonempty(&request.present_illness) {
        structured.push(section("360", "現病歴", text, &[]));
    }
    let resolved = |c: &Value| {
        matches!(c["clinicalStatus"]["coding"][0]["code"].as_str(), Some("resolved" | "inactive" | "remission"))
    };
    if request.problems.is_none() {
        let past = doc.conditions(None, resolved)?;
        if !past.is_empty() {
            structured.push(section(
                "370",
                "既往歴",
                &problem_names(record, None, resolved),
                &refs(&past, "Condition"),
            ));
        }
    }
    let allergies = doc.allergies()?;
    if !allergies.is_empty() {
        let names = names_of(record, "AllergyIntolerance");
        structured.push(section("510", "アレルギー・不耐性反応", &names, &refs(&allergies, "AllergyIntolerance")));
    }
    let labs = doc.labs(terminology, None)?;
    if !labs.is_empty() {
        structured.push(section("620", "検査結果", "検査結果（構造化データ参照）", &refs(&labs, "Observation")));
    }
    let meds = doc.medications()?;
    if !meds.is_empty() {
        structured.push(section(
            "430",
            "投薬指示",
            &names_of(record, "MedicationRequest"),
            &refs(&meds, "MedicationRequest"),
        ));
    }
    if let Some(text) = nonempty(&request.clinical_course) {
        let d = doc.text_document("臨床経過", text);
        structured.push(section("330", "臨床経過", text, &[(d, "DocumentReference")]));
    }
    let mut sections = vec![
        section("920", "紹介元情報", &our_name, &[(ours.clone(), "Organization"), (author.clone(), "Practitioner")]),
        section("910", "紹介先情報", &dest_name, &to_entries),
    ];
    let structured_section = structured_section(structured);
    sections.push(structured_section);
    if let Some(text) = nonempty(&request.remarks) {
        sections.push(section("220", "備考・連絡情報", text, &[]));
    }
    let category = request.category.as_deref().unwrap_or("OUTPATIENT");
    let category_display = match category {
        "ADMISSION" => "入院時文書",
        "SECONDOP" => "セカンドオピニオン",
        "EXAMIN" => "要精査依頼",
        "CONSULT" => "他科コンサルト",
        "DISCHARGE" => "退院時文書",
        "INPATIENT" => "入院中文書",
        _ => "外来文書",
    };
    let mut c = composition_base(
        PROFILE_COMPOSITION_REFERRAL,
        ("57133-1", "診療情報提供書"),
        (DOC_SUBTYPE_CS, category, category_display),
        "診療情報提供書",
        options,
        &doc.patient_url,
    );
    c["author"] = json!([{"reference": author}, {"reference": ours}]);
    c["custodian"] = json!({"reference": ours});
    c["event"] = json!([{"code": [{"text": "診療情報提供書発行"}], "period": {"start": date(options.now)}}]);
    c["section"] = Value::Array(sections);
    Ok(doc.bundle(PROFILE_BUNDLE_REFERRAL, c))
}

fn problem_names(record: &Record, only: Option<&[String]>, keep: impl Fn(&Value) -> bool) -> String {
    record
        .of_type("Condition")
        .filter(|c| is_sendable(c))
        .filter(|c| only.is_none_or(|o| o.iter().any(|r| Some(r.as_str()) == reference_of(c).as_deref())))
        .filter(|c| keep(c))
        .filter_map(|c| c["code"]["text"].as_str().or_else(|| c["code"]["coding"][0]["display"].as_str()))
        .collect::<Vec<_>>()
        .join("、")
}

fn names_of(record: &Record, ty: &str) -> String {
    let field = if ty == "MedicationRequest" { "medicationCodeableConcept" } else { "code" };
    let list: Vec<&str> = record
        .of_type(ty)
        .filter(|r| is_sendable(r))
        .filter_map(|r| r[field]["text"].as_str().or_else(|| r[field]["coding"][0]["display"].as_str()))
        .collect();
    if list.is_empty() { "記載なし".into() } else { list.join("、") }
}

/// Builds a 退院時サマリー.
pub fn discharge_summary(
    record: &Record,
    institution: &Institution,
    terminology: &Terminology,
    request: &DischargeRequest,
    options: &BuildOptions,
) -> Result<Value, ClinsError> {
    let stay_ref = request
        .encounter
        .as_deref()
        .ok_or_else(|| ClinsError::Invalid("encounter: the inpatient stay is required".into()))?;
    let stay = record.get(stay_ref).ok_or_else(|| ClinsError::Invalid("encounter: no such Encounter".into()))?;
    let start = stay["period"]["start"]
        .as_str()
        .ok_or_else(|| ClinsError::Missing("the stay's admission date (Encounter.period.start)".into()))?;
    let end = stay["period"]["end"]
        .as_str()
        .ok_or_else(|| ClinsError::Missing("the stay's discharge date (Encounter.period.end)".into()))?;
    let (start, end) = (start.get(..10).unwrap_or(start).to_owned(), end.get(..10).unwrap_or(end).to_owned());
    let mut doc = Doc::new(record, institution, options)?;
    let author = doc.author(request.author.as_deref())?;
    let ours = doc.custodian();
    let encounter_url = doc.add(json!({
        "resourceType": "Encounter",
        "meta": {"profile": [PROFILE_ENCOUNTER]},
        "identifier": [{"system": RESOURCE_INSTANCE, "value": resource_identifier(stay)}],
        "status": "finished",
        "class": {"system": ACT_CODE, "code": "IMP", "display": "入院"},
        "period": {"start": start, "end": end},
    }));
    let admission = doc.conditions(request.admission_diagnoses.as_deref(), |_| true)?;
    let discharge = doc.conditions(request.discharge_diagnoses.as_deref(), |_| true)?;
    let all = |_: &Value| true;
    let mut structured = Vec::new();
    let admission_details = request.admission_details.clone().unwrap_or_else(|| format!("入院日 {start}"));
    structured.push(section("322", "入院時詳細", &admission_details, &[(encounter_url.clone(), "Encounter")]));
    structured.push(section(
        "342",
        "入院時診断",
        &problem_names(record, request.admission_diagnoses.as_deref(), all),
        &refs(&admission, "Condition"),
    ));
    if let Some(t) = nonempty(&request.chief_complaint) {
        structured.push(section("352", "主訴", t, &[]));
    }
    if let Some(t) = nonempty(&request.admission_reason) {
        structured.push(section("312", "入院理由", t, &[]));
    }
    if let Some(t) = nonempty(&request.present_illness) {
        structured.push(section("362", "現病歴", t, &[]));
    }
    let allergies = doc.allergies()?;
    if !allergies.is_empty() {
        structured.push(section(
            "510",
            "アレルギー・不耐性反応",
            &names_of(record, "AllergyIntolerance"),
            &refs(&allergies, "AllergyIntolerance"),
        ));
    }
    if let Some(t) = nonempty(&request.hospital_course) {
        let d = doc.text_document("入院中経過", t);
        structured.push(section("333", "入院中経過", t, &[(d, "DocumentReference")]));
    }
    let discharge_details = request.discharge_details.clone().unwrap_or_else(|| format!("退院日 {end}"));
    structured.push(section("324", "退院時詳細", &discharge_details, &[(encounter_url.clone(), "Encounter")]));
    structured.push(section(
        "344",
        "退院時診断",
        &problem_names(record, request.discharge_diagnoses.as_deref(), all),
        &refs(&discharge, "Condition"),
    ));
    let meds = doc.medications()?;
    structured.push(section(
        "444",
        "退院時投薬指示",
        &names_of(record, "MedicationRequest"),
        &refs(&meds, "MedicationRequest"),
    ));
    if let Some(t) = nonempty(&request.discharge_instructions) {
        structured.push(section("424", "退院時方針指示", t, &[]));
    }
    let labs = doc.labs(terminology, None)?;
    if !labs.is_empty() {
        structured.push(section(
            "623",
            "入院中検査結果",
            "入院中検査結果（構造化データ参照）",
            &refs(&labs, "Observation"),
        ));
    }
    let structured_section = structured_section(structured);
    let mut c = composition_base(
        PROFILE_COMPOSITION_DISCHARGE,
        ("18842-5", "退院時サマリー"),
        (DOC_SUBTYPE_CS, "DISCHARGE", "退院時文書"),
        "退院時サマリー",
        options,
        &doc.patient_url,
    );
    c["encounter"] = json!({"reference": encounter_url});
    c["author"] = json!([{"reference": author}, {"reference": ours}]);
    c["custodian"] = json!({"reference": ours});
    c["event"] = json!([{"period": {"start": start, "end": end}}]);
    c["section"] = json!([structured_section]);
    Ok(doc.bundle(PROFILE_BUNDLE_DISCHARGE, c))
}

/// Builds a 健康診断結果報告書 (eCheckup IG: category 報告区分, event 健診プログラム, section
/// 01910 検査結果 with the result Observations).
pub fn checkup_report(
    record: &Record,
    institution: &Institution,
    terminology: &Terminology,
    request: &CheckupRequest,
    options: &BuildOptions,
) -> Result<Value, ClinsError> {
    let mut doc = Doc::new(record, institution, options)?;
    let author = doc.author(request.author.as_deref())?;
    let ours = doc.custodian();
    let labs = doc.labs(terminology, request.observations.as_deref())?;
    if labs.is_empty() {
        return Err(ClinsError::Empty("the checkup has no result Observations".into()));
    }
    let category = request.report_category.as_deref().unwrap_or("40");
    let category_display = match category {
        "10" => "特定健診情報",
        "41" => "事業者健診",
        "42" => "自治体検診",
        _ => "特定健診以外の健診結果",
    };
    let program = request.program.as_deref().unwrap_or("030");
    let program_display = match program {
        "010" => "特定健康診査",
        "020" => "広域連合の保健事業",
        "040" => "学校健診",
        "060" => "がん検診",
        "990" => "その他",
        _ => "事業者健診",
    };
    let day = request.date.clone().unwrap_or_else(|| date(options.now));
    let title = request.title.clone().unwrap_or_else(|| "健康診断結果報告書".into());
    let mut c = composition_base(
        PROFILE_COMPOSITION_CHECKUP,
        ("53576-5", "検診・健診報告書"),
        (CHECKUP_REPORT_CATEGORY, category, category_display),
        &title,
        options,
        &doc.patient_url,
    );
    c["author"] = json!([{"reference": author}, {"reference": ours}]);
    c["custodian"] = json!({"reference": ours});
    c["event"] = json!([{"code": [{"coding": [{"system": CHECKUP_PROGRAM, "code": program, "display": program_display}]}], "period": {"start": day}}]);
    let mut results = json!({
        "title": "検査結果",
        "code": {"coding": [{"system": CHECKUP_SECTION_CS, "code": "01910", "display": "検査結果セクション"}]},
        "text": {"status": "additional", "div": xhtml("検査結果（構造化データ参照）")},
    });
    results["entry"] = labs.iter().map(|u| json!({"reference": u, "type": "Observation"})).collect();
    c["section"] = json!([results]);
    Ok(doc.bundle(PROFILE_BUNDLE_CHECKUP, c))
}
