//! The 6 information items (6情報) as `JP_Bundle_CLINS` collection Bundles: one patient, one
//! resource type per Bundle (`meta.tag` BundleResourceType_CS), the Patient first.
//!
//! | item | kind | resources taken from the record |
//! |---|---|---|
//! | 傷病名 | `condition` | Condition (not refuted / entered-in-error) |
//! | 薬剤アレルギー等 | `drug-allergy` | AllergyIntolerance with category `medication` |
//! | その他アレルギー等 | `other-allergy` | AllergyIntolerance without category `medication` |
//! | 検査 | `lab-result` | laboratory Observation whose code is not a CLINS infection item |
//! | 感染症 | `infection` | laboratory Observation whose JLAC10 code is a CLINS infection item |
//! | 処方 | `medication` | MedicationRequest (see below) |
//!
//! 処方: the IG (core6spec) says prescriptions reach CLINS inside 診療情報提供書 / 退院時サマリー
//! and are extracted there, and the embedded JP_Bundle_CLINS 1.5.2 agrees: its invariants
//! `bundle-meta-tag-resourceType-valid` and `mustHaveOneMoreResources-with-designatedResourceType`
//! allow only Condition, AllergyIntolerance and Observation. So no standalone MedicationRequest
//! Bundle is built ([`build_item`] refuses `medication`); prescriptions are the documents'
//! `430 投薬指示` / `444 退院時投薬指示` entries (JP_MedicationRequest_eCS).

use crate::ClinsError;
use crate::common::*;
use chrono::{DateTime, Utc};
use ehr_terminology::{SystemId, Terminology};
use serde_json::{Value, json};

pub const PROFILE_BUNDLE_CLINS: &str = "http://jpfhir.jp/fhir/clins/StructureDefinition/JP_Bundle_CLINS|1";
pub const LAB_CATEGORY_CS: &str = "http://jpfhir.jp/fhir/core/CodeSystem/JP_SimpleObservationCategory_CS";
pub const LOCAL_LAB_CODE: &str = "http://jpfhir.jp/fhir/clins/CodeSystem/JP_CLINS_ObsLabResult_LocalCode_CS";
pub const LAB_UNCODED_CODE: &str = "99999999999999999";
pub const LAB_UNCODED_DISPLAY: &str = "未標準化コード項目(JLAC)";
pub const USAGE_EPRESCRIPTION: &str = "http://jpfhir.jp/fhir/core/mhlw/CodeSystem/MedicationUsage_ePrescription";
pub const USAGE_UNCODED: &str = "http://jpfhir.jp/fhir/clins/CodeSystem/JP_CLINS_MedicationUsage_Uncoded_CS";
pub const RP_NUMBER: &str = "http://jpfhir.jp/fhir/core/mhlw/IdSystem/Medication-RPGroupNumber";
pub const RP_INDEX: &str = "http://jpfhir.jp/fhir/core/mhlw/IdSystem/MedicationAdministrationIndex";
pub const PERIOD_OF_USE: &str =
    "http://jpfhir.jp/fhir/core/Extension/StructureDefinition/JP_MedicationDosage_PeriodOfUse";
pub const STRENGTH_TYPE: &str = "http://jpfhir.jp/fhir/core/mhlw/CodeSystem/MedicationIngredientStrengthStrengthType";

/// One of the 6 information items.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ItemKind {
    Condition,
    DrugAllergy,
    OtherAllergy,
    LabResult,
    Infection,
    Medication,
}

impl ItemKind {
    /// The items sent as JP_Bundle_CLINS of their own (all but 処方, which travels in documents).
    pub const STANDALONE: [ItemKind; 5] =
        [ItemKind::Condition, ItemKind::DrugAllergy, ItemKind::OtherAllergy, ItemKind::LabResult, ItemKind::Infection];

    pub const ALL: [ItemKind; 6] = [
        ItemKind::Condition,
        ItemKind::DrugAllergy,
        ItemKind::OtherAllergy,
        ItemKind::LabResult,
        ItemKind::Infection,
        ItemKind::Medication,
    ];

    /// The name used in the API and the submission log.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Condition => "condition",
            Self::DrugAllergy => "drug-allergy",
            Self::OtherAllergy => "other-allergy",
            Self::LabResult => "lab-result",
            Self::Infection => "infection",
            Self::Medication => "medication",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// The FHIR resource type the Bundle carries (its BundleResourceType_CS tag).
    pub fn resource_type(self) -> &'static str {
        match self {
            Self::Condition => "Condition",
            Self::DrugAllergy | Self::OtherAllergy => "AllergyIntolerance",
            Self::LabResult | Self::Infection => "Observation",
            Self::Medication => "MedicationRequest",
        }
    }

    /// The envelope's information type (our reading: the item names of the 6情報).
    pub fn information_type(self) -> &'static str {
        match self {
            Self::Condition => "傷病名",
            Self::DrugAllergy => "薬剤アレルギー等",
            Self::OtherAllergy => "その他アレルギー等",
            Self::LabResult => "検査",
            Self::Infection => "感染症",
            Self::Medication => "処方",
        }
    }
}

/// What a build takes besides the record.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    pub bundle_id: BundleId,
    pub now: DateTime<Utc>,
    /// Flags to add to every resource (LTS / UNINFORMED / UNDELIVERED), besides the ones the
    /// stored resources carry.
    pub flags: Vec<String>,
    /// The insurance member id when the stored Patient has none.
    pub member_id: Option<String>,
    /// The department when a resource carries none (default: 01 内科).
    pub department: Option<Value>,
    /// Only these stored resources (`Type/id`); none: every resource of the item.
    pub only: Option<Vec<String>>,
}

/// Builds the JP_Bundle_CLINS of one item for one patient.
pub fn build_item(
    kind: ItemKind,
    record: &Record,
    institution: &Institution,
    terminology: &Terminology,
    options: &BuildOptions,
) -> Result<Value, ClinsError> {
    if kind == ItemKind::Medication {
        return Err(ClinsError::Invalid(
            "prescriptions are submitted inside a referral or a discharge summary, not as a JP_Bundle_CLINS of their own".into(),
        ));
    }
    let selected = select(kind, record, terminology, options.only.as_deref());
    if let Some(only) = &options.only {
        check_requested(record, only, kind.resource_type(), &selected)?;
    }
    let patient_url = new_full_url();
    let patient = patient_ecs(record, institution, options.member_id.as_deref(), options.now)?;
    let mut entries = vec![entry(&patient_url, patient)];
    for stored in selected {
        let resource = convert(kind, stored, record, institution, terminology, options, &patient_url)?;
        entries.push(entry(&new_full_url(), resource));
    }
    if entries.len() < 2 {
        return Err(ClinsError::Empty(format!("the patient has no {} to submit", kind.as_str())));
    }
    Ok(json!({
        "resourceType": "Bundle",
        "meta": {
            "lastUpdated": instant(options.now),
            "profile": [PROFILE_BUNDLE_CLINS],
            "tag": [{"system": BUNDLE_RESOURCE_TYPE, "code": kind.resource_type()}],
        },
        "identifier": {"system": BUNDLE_IDENTIFIER, "value": options.bundle_id.as_str()},
        "type": "collection",
        "timestamp": instant(options.now),
        "entry": entries,
    }))
}

/// Every requested `Type/id` must be a resource of this patient's record (else
/// [`ClinsError::NotFound`]: another patient's or another tenant's resource is not disclosed)
/// and one the item sends (else [`ClinsError::Invalid`]: wrong item, entered in error, refuted…).
pub fn check_requested(record: &Record, requested: &[String], ty: &str, selected: &[&Value]) -> Result<(), ClinsError> {
    for r in requested {
        let stored = record.get(r).filter(|v| v["resourceType"] == ty);
        let Some(stored) = stored else {
            return Err(ClinsError::NotFound(format!("a {ty} of this patient named in the request")));
        };
        if !selected.iter().any(|s| std::ptr::eq(*s, stored)) {
            return Err(ClinsError::Invalid(format!(
                "a requested {ty} is not one this submission may carry (another item, or entered in error, refuted, not final)"
            )));
        }
    }
    Ok(())
}

/// The stored resources of an item.
pub fn select<'a>(
    kind: ItemKind,
    record: &'a Record,
    terminology: &Terminology,
    only: Option<&[String]>,
) -> Vec<&'a Value> {
    record
        .of_type(kind.resource_type())
        .filter(|r| {
            only.is_none_or(|list| {
                let key = format!(
                    "{}/{}",
                    r["resourceType"].as_str().unwrap_or_default(),
                    r["id"].as_str().unwrap_or_default()
                );
                list.contains(&key)
            })
        })
        .filter(|r| is_sendable(r))
        .filter(|r| match kind {
            ItemKind::Condition | ItemKind::Medication => true,
            ItemKind::DrugAllergy => is_drug_allergy(r),
            ItemKind::OtherAllergy => !is_drug_allergy(r),
            ItemKind::LabResult => is_lab(r) && !is_infection(r, terminology),
            ItemKind::Infection => is_lab(r) && is_infection(r, terminology),
        })
        .collect()
}

fn is_drug_allergy(r: &Value) -> bool {
    r["category"].as_array().is_some_and(|c| c.iter().any(|c| c == "medication"))
}

/// A reported laboratory Observation (category `laboratory` in any system; [`is_sendable`]).
pub fn is_lab(r: &Value) -> bool {
    is_sendable(r)
        && r["category"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|c| c["coding"].as_array().into_iter().flatten())
            .any(|c| c["code"] == "laboratory")
}

/// The JLAC10 code of an Observation, from any of the JLAC10 systems it is coded in.
pub fn jlac10_of(r: &Value, terminology: &Terminology) -> Option<String> {
    r["code"]["coding"].as_array()?.iter().find_map(|c| {
        let id = terminology.resolve(c["system"].as_str()?)?;
        matches!(id, SystemId::Jlac10 | SystemId::ClinsCoreJlac10 | SystemId::ClinsInfectionJlac10)
            .then(|| c["code"].as_str().map(str::to_owned))
            .flatten()
    })
}

/// Whether an Observation is one of the CLINS infection items (its JLAC10 code is in the
/// InfectionLabo code system, or it already carries that coding).
pub fn is_infection(r: &Value, terminology: &Terminology) -> bool {
    let coded = r["code"]["coding"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["system"].as_str().and_then(|s| terminology.resolve(s)) == Some(SystemId::ClinsInfectionJlac10));
    coded
        || jlac10_of(r, terminology)
            .is_some_and(|code| terminology.lookup(SystemId::ClinsInfectionJlac10.canonical(), &code).is_some())
}

fn convert(
    kind: ItemKind,
    stored: &Value,
    record: &Record,
    institution: &Institution,
    terminology: &Terminology,
    options: &BuildOptions,
    patient_url: &str,
) -> Result<Value, ClinsError> {
    match kind {
        ItemKind::Condition => condition(stored, record, institution, options, patient_url),
        ItemKind::DrugAllergy | ItemKind::OtherAllergy => allergy(stored, institution, options, patient_url),
        ItemKind::LabResult | ItemKind::Infection => {
            lab_observation(stored, record, institution, terminology, options, patient_url)
        }
        ItemKind::Medication => medication_request(stored, institution, options, patient_url),
    }
}

fn department(stored: &Value, options: &BuildOptions) -> Value {
    department_of(stored).or_else(|| options.department.clone()).unwrap_or_else(default_department)
}

/// JP_Condition_eCS: contained Encounter, Department, onsetDateTime (R9013C, R9014, R9015C).
pub fn condition(
    stored: &Value,
    record: &Record,
    institution: &Institution,
    options: &BuildOptions,
    patient_url: &str,
) -> Result<Value, ClinsError> {
    let mut c = prepare(stored, PROFILE_CONDITION, institution, &options.flags, options.now);
    ensure_department(&mut c, &department(stored, options));
    c["contained"] = json!([contained_encounter(record, stored)]);
    c["encounter"] = json!({"reference": "#encounter"});
    c["subject"] = json!({"reference": patient_url});
    if c["clinicalStatus"].is_null() {
        // FHIR con-4: an abated condition is not active; without abatement it is.
        let abated = ["abatementDateTime", "abatementAge", "abatementPeriod", "abatementRange", "abatementString"]
            .iter()
            .any(|k| !stored[*k].is_null());
        let code = if abated { "resolved" } else { "active" };
        c["clinicalStatus"] =
            json!({"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": code}]});
    }
    if c["verificationStatus"].is_null() {
        c["verificationStatus"] = json!({"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-ver-status", "code": "confirmed"}]});
    }
    if c["category"].as_array().is_none_or(|a| a.is_empty()) {
        c["category"] = json!([{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-category", "code": "encounter-diagnosis"}]}]);
    } else if let Some(a) = c["category"].as_array_mut() {
        a.truncate(1);
    }
    fill_code_text(&mut c["code"]);
    // R9015C: onsetDateTime; else the start of a stored onset period; else the recorded date.
    if c["onsetDateTime"].is_null() {
        let onset = stored["onsetPeriod"]["start"].as_str().or_else(|| stored["recordedDate"].as_str());
        let onset = onset.map(str::to_owned).ok_or_else(|| {
            ClinsError::Missing("a Condition onsetDateTime (or onsetPeriod.start, recordedDate)".into())
        })?;
        if let Some(o) = c.as_object_mut() {
            for k in ["onsetAge", "onsetPeriod", "onsetRange", "onsetString"] {
                o.remove(k);
            }
        }
        c["onsetDateTime"] = json!(onset);
    }
    Ok(c)
}

/// `code.text` 1..1: the first display when the record has no text.
fn fill_code_text(code: &mut Value) {
    if code["text"].is_null()
        && let Some(d) = code["coding"].as_array().and_then(|a| a.iter().find_map(|c| c["display"].as_str()))
    {
        code["text"] = json!(d);
    }
}

/// JP_AllergyIntolerance_eCS.
pub fn allergy(
    stored: &Value,
    institution: &Institution,
    options: &BuildOptions,
    patient_url: &str,
) -> Result<Value, ClinsError> {
    let mut a = prepare(stored, PROFILE_ALLERGY, institution, &options.flags, options.now);
    a["patient"] = json!({"reference": patient_url});
    if let Some(o) = a.as_object_mut() {
        o.remove("encounter");
    }
    if a["clinicalStatus"].is_null() {
        a["clinicalStatus"] = json!({"coding": [{"system": "http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical", "code": "active"}]});
    }
    fill_code_text(&mut a["code"]);
    if a["code"]["coding"].as_array().is_none_or(|c| c.is_empty()) {
        return Err(ClinsError::Missing("an AllergyIntolerance code".into()));
    }
    Ok(a)
}

/// The CLINS coding of a lab Observation's code (§A.7): the facility-local code always, the
/// CLINS core / infection JLAC10 coding when the JLAC10 code is one of them, the general JLAC10
/// coding when there is a JLAC10 code, else the uncoded marker.
pub fn lab_code(stored: &Value, terminology: &Terminology) -> Value {
    let codings: Vec<&Value> = stored["code"]["coding"].as_array().into_iter().flatten().collect();
    let text = clins_text(
        stored["code"]["text"]
            .as_str()
            .or_else(|| codings.iter().find_map(|c| c["display"].as_str()))
            .unwrap_or("検査"),
        true,
    );
    let jlac10 = jlac10_of(stored, terminology);
    let material = jlac10.as_deref().and_then(|c| c.get(9..12)).unwrap_or("000");
    let local = codings
        .iter()
        .find(|c| c["system"] == LOCAL_LAB_CODE)
        .map(|c| (*c).clone())
        .or_else(|| {
            // A facility code system (not one of the standard systems) is the local code.
            codings
                .iter()
                .find(|c| {
                    c["system"]
                        .as_str()
                        .is_some_and(|s| terminology.resolve(s).is_none() && !s.starts_with("http://loinc.org"))
                })
                .and_then(|c| c["code"].as_str())
                .map(|code| json!({"system": LOCAL_LAB_CODE, "code": format!("{code}_{material}"), "display": text}))
        })
        .or_else(|| {
            // No facility code in the record: the JLAC10 analyte+identification and material
            // stand in as the facility's own item and material codes.
            jlac10
                .as_deref()
                .and_then(|c| c.get(0..9))
                .map(|item| json!({"system": LOCAL_LAB_CODE, "code": format!("{item}_{material}"), "display": text}))
        });
    let mut out: Vec<Value> = Vec::new();
    if let Some(mut l) = local {
        if l["display"].is_null() {
            l["display"] = json!(text);
        }
        out.push(l);
    }
    match jlac10.as_deref() {
        Some(code) => {
            for system in [SystemId::ClinsCoreJlac10, SystemId::ClinsInfectionJlac10] {
                if let Some(c) = terminology.lookup(system.canonical(), code) {
                    out.push(json!({"system": system.canonical(), "code": code, "display": c.display}));
                }
            }
            let display = terminology
                .lookup(SystemId::Jlac10.canonical(), code)
                .map(|c| c.display)
                .or_else(|| codings.iter().find(|c| c["code"] == code).and_then(|c| c["display"].as_str().map(str::to_owned)))
                .unwrap_or_else(|| text.clone());
            out.push(json!({"system": SystemId::Jlac10.canonical(), "code": code, "display": display}));
        }
        None => out.push(json!({"system": SystemId::ClinsLabUncoded.canonical(), "code": LAB_UNCODED_CODE, "display": LAB_UNCODED_DISPLAY})),
    }
    let mut code = json!({"coding": out, "text": text});
    // §A.7: display and text without half-width kana, U+3000 or control characters.
    clins_concept(&mut code, true);
    code
}

/// JP_Observation_LabResult_eCS.
pub fn lab_observation(
    stored: &Value,
    record: &Record,
    institution: &Institution,
    terminology: &Terminology,
    options: &BuildOptions,
    patient_url: &str,
) -> Result<Value, ClinsError> {
    let mut o = prepare(stored, PROFILE_LAB, institution, &options.flags, options.now);
    ensure_department(&mut o, &department(stored, options));
    o["code"] = lab_code(stored, terminology);
    if o["valueCodeableConcept"].is_object() {
        // A qualitative result (陰性, ＋): its display and text follow the same character rules.
        clins_concept(&mut o["valueCodeableConcept"], true);
    }
    o["category"] = json!([{"coding": [{"system": LAB_CATEGORY_CS, "code": "laboratory", "display": "検体検査"}]}]);
    o["subject"] = json!({"reference": patient_url});
    let mut contained = vec![contained_encounter(record, stored)];
    o["encounter"] = json!({"reference": "#encounter"});
    // specimen 1..1: a contained JP_Specimen with the JLAC10 material, or display only.
    let material = jlac10_of(stored, terminology).and_then(|c| c.get(9..12).map(str::to_owned));
    let material_name = material
        .as_deref()
        .and_then(|m| terminology.lookup(SystemId::SampleMaterial.canonical(), m))
        .map(|c| c.display);
    match (material, material_name) {
        (Some(m), Some(name)) => {
            contained.push(json!({
                "resourceType": "Specimen", "id": "specimen",
                "meta": {"profile": ["http://jpfhir.jp/fhir/core/StructureDefinition/JP_Specimen"]},
                "type": {"coding": [{"system": SystemId::SampleMaterial.canonical(), "code": m, "display": name}], "text": name},
            }));
            o["specimen"] = json!({"reference": "#specimen", "display": name});
        }
        _ => o["specimen"] = json!({"display": "検体"}),
    }
    o["contained"] = Value::Array(contained);
    if o["effectiveDateTime"].is_null() {
        let when = stored["effectivePeriod"]["start"].as_str().or_else(|| stored["issued"].as_str());
        let when = when.ok_or_else(|| ClinsError::Missing("an Observation effectiveDateTime".into()))?;
        if let Some(m) = o.as_object_mut() {
            m.remove("effectivePeriod");
            m.remove("effectiveInstant");
        }
        o["effectiveDateTime"] = json!(when);
    }
    if let Some(m) = o.as_object_mut() {
        // Results that belong to other resources of the record (panels, derivations).
        for k in ["hasMember", "derivedFrom", "basedOn", "partOf", "performer"] {
            m.remove(k);
        }
    }
    Ok(o)
}

/// JP_MedicationRequest_eCS: a standard medication code (YJ / 一般名 / NOCODED, R3010), exactly
/// one usage code (電子処方箋用法 or the uncoded dummy, R5020/R5021), RP numbers.
pub fn medication_request(
    stored: &Value,
    institution: &Institution,
    options: &BuildOptions,
    patient_url: &str,
) -> Result<Value, ClinsError> {
    let mut m = prepare(stored, PROFILE_MEDREQ, institution, &options.flags, options.now);
    ensure_department(&mut m, &department(stored, options));
    m["subject"] = json!({"reference": patient_url});
    m["status"] = json!("completed");
    m["intent"] = json!("order");
    if m["authoredOn"].is_null() {
        m["authoredOn"] =
            json!(stored["meta"]["lastUpdated"].as_str().map(str::to_owned).unwrap_or_else(|| instant(options.now)));
    }
    let med = &mut m["medicationCodeableConcept"];
    if med.is_null() {
        return Err(ClinsError::Missing("a MedicationRequest medicationCodeableConcept".into()));
    }
    fill_code_text(med);
    let standard = med["coding"].as_array().into_iter().flatten().any(|c| {
        matches!(
            c["system"].as_str(),
            Some(
                ehr_terminology::systems::YJ
                    | ehr_terminology::systems::GENERAL_NAME
                    | ehr_terminology::systems::MEDICATION_NOCODED
            )
        )
    });
    if !standard {
        let coding = json!({"system": ehr_terminology::systems::MEDICATION_NOCODED, "code": "NOCODED", "display": "標準コードなし"});
        match med["coding"].as_array_mut() {
            Some(list) => list.push(coding),
            None => med["coding"] = json!([coding]),
        }
    }
    // RP number and index within the RP: 1/1 when the record does not group its orders.
    let ids = m["identifier"].as_array().cloned().unwrap_or_default();
    let mut ids: Vec<Value> = ids;
    if !ids.iter().any(|i| i["system"] == RP_NUMBER) {
        ids.push(json!({"system": RP_NUMBER, "value": "1"}));
    }
    if !ids.iter().any(|i| i["system"] == RP_INDEX) {
        ids.push(json!({"system": RP_INDEX, "value": "1"}));
    }
    m["identifier"] = Value::Array(ids);
    let start =
        m["authoredOn"].as_str().and_then(|a| a.get(..10)).map(str::to_owned).unwrap_or_else(|| date(options.now));
    let dosages = m["dosageInstruction"]
        .as_array_mut()
        .ok_or_else(|| ClinsError::Missing("a MedicationRequest dosageInstruction".into()))?;
    for d in dosages.iter_mut() {
        // JP_MedicationDosage_eCS: periodOfUse (start), text, timing.code.text, doseAndRate.type.
        let has_period = d["extension"].as_array().is_some_and(|e| e.iter().any(|e| e["url"] == PERIOD_OF_USE));
        if !has_period {
            let ext = json!({"url": PERIOD_OF_USE, "valuePeriod": {"start": start}});
            match d["extension"].as_array_mut() {
                Some(list) => list.push(ext),
                None => d["extension"] = json!([ext]),
            }
        }
        let usage_text = d["timing"]["code"]["text"]
            .as_str()
            .or_else(|| d["text"].as_str())
            .or_else(|| {
                d["timing"]["code"]["coding"].as_array().and_then(|c| c.iter().find_map(|c| c["display"].as_str()))
            })
            .unwrap_or("用法記載なし")
            .to_owned();
        if d["timing"]["code"]["text"].is_null() {
            d["timing"]["code"]["text"] = json!(usage_text);
        }
        if d["text"].is_null() {
            d["text"] = json!(usage_text);
        }
        for dr in d["doseAndRate"].as_array_mut().into_iter().flatten() {
            if dr["type"].is_null() {
                dr["type"] = json!({"coding": [{"system": STRENGTH_TYPE, "code": "1", "display": "製剤量"}]});
            }
        }
        let coded = d["timing"]["code"]["coding"]
            .as_array()
            .is_some_and(|c| c.iter().any(|c| c["system"] == USAGE_EPRESCRIPTION || c["system"] == USAGE_UNCODED));
        if !coded {
            let dummy = json!({"system": USAGE_UNCODED, "code": "0X0XXXXXXXXX0000", "display": "ダミー用法コード"});
            match d["timing"]["code"]["coding"].as_array_mut() {
                Some(list) => list.push(dummy),
                None => d["timing"]["code"]["coding"] = json!([dummy]),
            }
        }
    }
    if let Some(o) = m.as_object_mut() {
        for k in ["encounter", "requester", "recorder", "basedOn", "priorPrescription", "reasonReference"] {
            o.remove(k);
        }
    }
    Ok(m)
}
