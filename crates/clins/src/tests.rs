//! The 6 items and 3 documents from a realistic patient, checked against the profiles and the
//! simulator; broken Bundles rejected with precise reasons; the transports end to end.

use crate::common::*;
use crate::documents::{self, CheckupRequest, DischargeRequest, DocumentKind, Party, ReferralRequest};
use crate::envelope::{self, Operation, Request, Status, codes};
use crate::items::{self, BuildOptions, ItemKind};
use crate::sim::{Down, SimOptions, Simulator};
use crate::transport::{FileDrop, Transport, TransportError, WebApi};
use chrono::{DateTime, Utc};
use ehr_core::Severity;
use ehr_terminology::Terminology;
use ehr_validation::FullValidator;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;

const INST: &str = "1318814790";
const PASSWORD: &str = "Kx7#pQ2!vL9@wZ4-terminal";

fn now() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2024-11-12T10:00:00+09:00").unwrap().with_timezone(&Utc)
}

fn terminology() -> Terminology {
    Terminology::builtin().unwrap()
}

fn validator() -> FullValidator {
    FullValidator::new(Arc::new(ehr_fhir::validate::Validator::new()), terminology())
}

fn lab(id: &str, jlac10: &str, text: &str, value: Value) -> Value {
    let mut o = json!({
        "resourceType": "Observation", "id": id,
        "meta": {"versionId": "1", "lastUpdated": "2024-11-01T09:00:00.000+09:00"},
        "status": "final",
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "laboratory"}]}],
        "code": {"coding": [
            {"system": "http://hospital.example.jp/lab-codes", "code": format!("L{id}"), "display": text},
            {"system": "http://medis.or.jp/CodeSystem/master-JLAC10-17digits", "code": jlac10}
        ], "text": text},
        "subject": {"reference": "Patient/p1"},
        "encounter": {"reference": "Encounter/enc1"},
        "effectiveDateTime": "2024-10-02T08:30:00+09:00",
        "performer": [{"reference": "Organization/org1"}],
    });
    for (k, v) in value.as_object().unwrap() {
        o[k] = v.clone();
    }
    o
}

/// 牧野 爛漫, 94, admitted for a duodenal ulcer: the record the tests build from.
pub(crate) fn record() -> Record {
    Record {
        patient: json!({
            "resourceType": "Patient", "id": "p1",
            "meta": {"versionId": "3", "lastUpdated": "2024-10-01T09:00:00.000+09:00"},
            "identifier": [
                {"system": "urn:oid:1.2.392.100495.20.3.51.11318814790", "value": "000999739"},
                {"system": INSURANCE_MEMBER_ID, "value": "00012345:あいう:１８７:05"}
            ],
            "name": [
                {"extension": [{"url": EXT_NAME_REPRESENTATION, "valueCode": "IDE"}], "use": "official", "family": "牧野", "given": ["爛漫"]},
                {"extension": [{"url": EXT_NAME_REPRESENTATION, "valueCode": "SYL"}], "use": "official", "family": "マキノ", "given": ["ランマン"]}
            ],
            "gender": "female", "birthDate": "1930-06-28",
            "address": [{"text": "高知県高知市五台山4200-6", "postalCode": "781-8125"}]
        }),
        organization: json!({
            "resourceType": "Organization", "id": "org1", "name": "東京第一テスト病院",
            "identifier": [{"system": INSTITUTION_NO, "value": INST}],
            "address": [{"text": "東京都文京区文京町１−２−３"}]
        }),
        resources: vec![
            json!({"resourceType": "Practitioner", "id": "dr1",
                "name": [{"extension": [{"url": EXT_NAME_REPRESENTATION, "valueCode": "IDE"}], "family": "大河内", "given": ["勘三郎"]}]}),
            json!({"resourceType": "Encounter", "id": "enc1", "status": "finished",
                "class": {"system": ACT_CODE, "code": "IMP"}, "subject": {"reference": "Patient/p1"},
                "period": {"start": "2024-10-01", "end": "2024-10-15"}}),
            json!({"resourceType": "Condition", "id": "c1",
                "meta": {"lastUpdated": "2024-10-01T10:00:00.000+09:00", "tag": [{"system": INDICATION, "code": "LTS"}]},
                "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "active"}]},
                "verificationStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-ver-status", "code": "confirmed"}]},
                "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-category", "code": "encounter-diagnosis"}]}],
                "code": {"coding": [{"system": "http://medis.or.jp/CodeSystem/master-disease-keyNumber", "code": "20064049", "display": "十二指腸潰瘍"}], "text": "十二指腸潰瘍"},
                "subject": {"reference": "Patient/p1"}, "encounter": {"reference": "Encounter/enc1"},
                "onsetDateTime": "2024-09-20", "recorder": {"reference": "Practitioner/dr1"}}),
            json!({"resourceType": "Condition", "id": "c2",
                "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "resolved"}]},
                "code": {"coding": [{"system": "http://medis.or.jp/CodeSystem/master-disease-keyNumber", "code": "20058911", "display": "狭心症"}]},
                "subject": {"reference": "Patient/p1"}, "recordedDate": "2018-05-01"}),
            json!({"resourceType": "AllergyIntolerance", "id": "a1",
                "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical", "code": "active"}]},
                "category": ["medication"],
                "code": {"coding": [{"system": "http://jpfhir.jp/fhir/core/CodeSystem/GCM/JP_JfagyMedicationAllergen_CS", "code": "GCM2260701F1ZZZ", "display": "ポビドンヨード含嗽用液７％"}], "text": "ヨードうがい液"},
                "patient": {"reference": "Patient/p1"}, "recorder": {"reference": "Practitioner/dr1"}}),
            json!({"resourceType": "AllergyIntolerance", "id": "a2",
                "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical", "code": "active"}]},
                "category": ["food"],
                "code": {"coding": [{"system": "http://jpfhir.jp/fhir/core/CodeSystem/JP_JfagyFoodAllergen_CS", "code": "J9FC11310000", "display": "さば"}], "text": "さば"},
                "patient": {"reference": "Patient/p1"}}),
            lab(
                "o1",
                "3H015000002326101",
                "カリウム",
                json!({"valueQuantity": {"value": 4.1, "unit": "mmol/L", "system": "http://unitsofmeasure.org", "code": "mmol/L"}}),
            ),
            lab(
                "o2",
                "3A015000002327101",
                "アルブミン",
                json!({"valueQuantity": {"value": 3.2, "unit": "g/dL", "system": "http://unitsofmeasure.org", "code": "g/dL"}}),
            ),
            lab("o3", "5F016141002305151", "HBs抗原", json!({"valueQuantity": {"value": 0.05, "unit": "S/CO"}})),
            json!({"resourceType": "MedicationRequest", "id": "m1", "status": "active", "intent": "order",
                "medicationCodeableConcept": {"coding": [{"system": "http://capstandard.jp/iyaku.info/CodeSystem/YJ-code", "code": "2316009F1022", "display": "ミヤＢＭ錠"}], "text": "ミヤＢＭ錠"},
                "subject": {"reference": "Patient/p1"}, "authoredOn": "2024-10-15T10:00:00+09:00",
                "requester": {"reference": "Practitioner/dr1"},
                "dosageInstruction": [{"text": "1日3回毎食後",
                    "timing": {"code": {"coding": [{"system": "http://jpfhir.jp/fhir/core/mhlw/CodeSystem/MedicationUsage_ePrescription", "code": "1013044400000000", "display": "１日３回朝昼夕食後"}]},
                               "repeat": {"boundsDuration": {"value": 14, "unit": "日", "system": "http://unitsofmeasure.org", "code": "d"}}},
                    "doseAndRate": [{"doseQuantity": {"value": 2, "unit": "錠", "system": "http://jpfhir.jp/fhir/core/mhlw/CodeSystem/MedicationUnitMERIT9Code", "code": "TAB"}}]}],
                "dispenseRequest": {"expectedSupplyDuration": {"value": 14, "unit": "日", "system": "http://unitsofmeasure.org", "code": "d"}}}),
        ],
    }
}

fn institution() -> Institution {
    Institution::new(INST).unwrap()
}

fn options() -> BuildOptions {
    BuildOptions {
        bundle_id: BundleId::generate(&institution(), now()),
        now: now(),
        flags: Vec::new(),
        member_id: None,
        department: None,
        only: None,
    }
}

/// The errors of a Bundle as `<EHR code> [<rule>] <locations> <message>`.
fn errors(bundle: &Value) -> Vec<String> {
    validator()
        .validate(bundle, None)
        .into_iter()
        .filter(|i| matches!(i.severity, Severity::Error | Severity::Fatal))
        .map(|i| format!("{} [{}] {:?} {}", i.ehr_code, i.rule.as_deref().unwrap_or("-"), i.expression, i.diagnostics))
        .collect()
}

pub(crate) fn referral_request() -> ReferralRequest {
    ReferralRequest {
        purpose: Some("十二指腸潰瘍の精査加療をお願いします。".into()),
        present_illness: Some("２０２４年９月下旬から上腹部痛が続いている。".into()),
        clinical_course: Some("PPI 内服で症状は軽快傾向。".into()),
        destination: Party {
            name: Some("港診療所".into()),
            institution_number: Some("1319876543".into()),
            department_code: Some("01".into()),
            department_name: Some("内科".into()),
            practitioner_name: Some("野口 英世".into()),
            ..Party::default()
        },
        ..ReferralRequest::default()
    }
}

pub(crate) fn discharge_request() -> DischargeRequest {
    DischargeRequest {
        encounter: Some("Encounter/enc1".into()),
        chief_complaint: Some("上腹部痛".into()),
        admission_reason: Some("十二指腸潰瘍の加療".into()),
        present_illness: Some("９月下旬から上腹部痛。".into()),
        hospital_course: Some("絶食・PPI 投与で改善。".into()),
        discharge_instructions: Some("２週間後に外来受診。".into()),
        ..DischargeRequest::default()
    }
}

fn document(kind: DocumentKind) -> Value {
    let (r, i, t, o) = (record(), institution(), terminology(), options());
    match kind {
        DocumentKind::Referral => documents::referral(&r, &i, &t, &referral_request(), &o).unwrap(),
        DocumentKind::Discharge => documents::discharge_summary(&r, &i, &t, &discharge_request(), &o).unwrap(),
        DocumentKind::Checkup => documents::checkup_report(&r, &i, &t, &CheckupRequest::default(), &o).unwrap(),
    }
}

fn item(kind: ItemKind) -> Value {
    items::build_item(kind, &record(), &institution(), &terminology(), &options()).unwrap()
}

#[test]
fn every_item_is_valid() {
    for kind in ItemKind::STANDALONE {
        let b = item(kind);
        assert_eq!(b["entry"][0]["resource"]["resourceType"], "Patient");
        assert_eq!(b["meta"]["tag"][0]["code"], kind.resource_type());
        assert!(b["entry"].as_array().unwrap().len() >= 2, "{kind:?}");
        let e = errors(&b);
        assert!(e.is_empty(), "{kind:?}: {e:#?}");
    }
}

#[test]
fn items_split_as_the_ig_says() {
    let count = |k| item(k)["entry"].as_array().unwrap().len() - 1;
    assert_eq!(count(ItemKind::DrugAllergy), 1);
    assert_eq!(count(ItemKind::OtherAllergy), 1);
    assert_eq!(count(ItemKind::LabResult), 2);
    assert_eq!(count(ItemKind::Infection), 1);
    let labs = item(ItemKind::LabResult);
    let k = &labs["entry"][1]["resource"];
    let systems: Vec<&str> =
        k["code"]["coding"].as_array().unwrap().iter().map(|c| c["system"].as_str().unwrap()).collect();
    assert_eq!(systems[0], items::LOCAL_LAB_CODE);
    assert!(systems.contains(&ehr_terminology::systems::CLINS_CORE_JLAC10), "{systems:?}");
    assert!(systems.contains(&ehr_terminology::systems::JLAC10));
    assert_eq!(k["code"]["coding"][1]["display"], "K");
    let inf = item(ItemKind::Infection);
    assert!(
        inf["entry"][1]["resource"]["code"]["coding"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["system"] == ehr_terminology::systems::CLINS_INFECTION_JLAC10)
    );
    // The Condition: flags kept, contained Encounter, department, onset; no server references.
    let c = item(ItemKind::Condition);
    let first = &c["entry"][1]["resource"];
    assert_eq!(first["meta"]["tag"][0]["code"], "LTS");
    assert_eq!(first["contained"][0]["meta"]["profile"][0], JP_ENCOUNTER);
    assert_eq!(first["extension"][0]["url"], EXT_INSTITUTION_NUMBER);
    assert!(first.get("recorder").is_none());
    assert_eq!(c["entry"][2]["resource"]["onsetDateTime"], "2018-05-01");
    // Patient: local id under the institution, names with a half-width space.
    let p = &c["entry"][0]["resource"];
    assert_eq!(p["identifier"][0]["system"], "urn:oid:1.2.392.100495.20.3.51.11318814790");
    assert_eq!(p["name"][0]["text"], "牧野 爛漫");
    assert_eq!(p["name"][1]["extension"][0]["valueCode"], "SYL");
}

#[test]
fn a_lab_result_without_any_jlac10_code_carries_the_uncoded_marker() {
    let mut r = record();
    r.resources.retain(|x| x["resourceType"] != "Observation");
    r.resources.push(json!({"resourceType": "Observation", "id": "x", "status": "final",
        "category": [{"coding": [{"code": "laboratory"}]}],
        "code": {"coding": [{"system": "http://hospital.example.jp/lab-codes", "code": "Z99", "display": "特殊検査"}]},
        "subject": {"reference": "Patient/p1"}, "effectiveDateTime": "2024-10-02", "valueString": "陰性"}));
    let b = items::build_item(ItemKind::LabResult, &r, &institution(), &terminology(), &options()).unwrap();
    let coding = &b["entry"][1]["resource"]["code"]["coding"];
    assert_eq!(coding[0]["code"], "Z99_000");
    assert_eq!(coding[1]["code"], items::LAB_UNCODED_CODE);
    assert!(errors(&b).is_empty(), "{:#?}", errors(&b));
}

#[test]
fn fresh_full_urls_on_every_build() {
    let a = item(ItemKind::Condition);
    let b = item(ItemKind::Condition);
    assert_ne!(a["entry"][0]["fullUrl"], b["entry"][0]["fullUrl"]);
    assert_eq!(a["entry"][1]["resource"]["subject"]["reference"], a["entry"][0]["fullUrl"]);
}

#[test]
fn prescriptions_travel_in_documents_only() {
    assert!(items::build_item(ItemKind::Medication, &record(), &institution(), &terminology(), &options()).is_err());
    for kind in [DocumentKind::Referral, DocumentKind::Discharge] {
        let b = document(kind);
        let m = b["entry"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["resource"]["resourceType"] == "MedicationRequest")
            .unwrap();
        let m = &m["resource"];
        assert_eq!(m["meta"]["profile"][0], crate::common::PROFILE_MEDREQ);
        assert_eq!(m["status"], "completed");
        assert_eq!(m["dosageInstruction"][0]["extension"][0]["url"], items::PERIOD_OF_USE);
    }
}

#[test]
fn every_document_is_valid() {
    for kind in DocumentKind::ALL {
        let b = document(kind);
        assert_eq!(b["type"], "document");
        assert_eq!(b["entry"][0]["resource"]["resourceType"], "Composition");
        let e = errors(&b);
        assert!(e.is_empty(), "{kind:?}: {e:#?}");
    }
}

#[test]
fn a_referral_without_purpose_names_the_section() {
    let mut req = referral_request();
    req.purpose = None;
    let b = documents::referral(&record(), &institution(), &terminology(), &req, &options()).unwrap();
    let e = errors(&b);
    assert!(
        e.iter().any(|e| e.starts_with("EHR-VAL-013")
            && e.contains("Bundle.entry[0].resource.section[2].section")
            && e.contains("referralPurposeSection (1..1, code.coding.code = 950)")),
        "{e:#?}"
    );
}

/// The discharge summary's Bundle slices its entries by profile: encounter is 1..1.
#[test]
fn a_discharge_summary_without_its_encounter_entry() {
    let mut b = document(DocumentKind::Discharge);
    let entries = b["entry"].as_array_mut().unwrap();
    let at = entries.iter().position(|e| e["resource"]["resourceType"] == "Encounter").unwrap();
    entries.remove(at);
    let e = errors(&b);
    assert!(
        e.iter().any(|e| e.starts_with("EHR-VAL-013 [-] [\"Bundle.entry\"] slice encounter (1..1, JP_Encounter_eCS)")),
        "{e:#?}"
    );
}

/// Every check `ehr_clins::rules` used to make by hand is the validator's now, under one rule
/// id each: one mutation per former check, and the rule / code it raises.
#[test]
fn the_former_hand_checks_are_the_validators() {
    type Mutation = fn(&mut Value);
    let items: &[(ItemKind, Mutation, &str)] = &[
        (
            ItemKind::Condition,
            |b| b["identifier"]["value"] = json!("1318814790-2024-abc"),
            "[valid-value-bundleIdenfifier]",
        ),
        (
            ItemKind::Condition,
            |b| b["identifier"]["system"] = json!("http://example.org/id"),
            "[valid-system-bundleIdenfifier]",
        ),
        (
            ItemKind::Condition,
            |b| b["entry"][1]["fullUrl"] = json!("http://example.org/Condition/1"),
            "[clins-fullUrl-uuid]",
        ),
        (
            ItemKind::Condition,
            |b| b["entry"][1]["fullUrl"] = b["entry"][0]["fullUrl"].clone(),
            "[clins-fullUrl-unique]",
        ),
        (ItemKind::Condition, |b| b["type"] = json!("document"), "EHR-VAL-010 [-] [\"Bundle.type\"]"),
        (ItemKind::Condition, |b| b["entry"].as_array_mut().unwrap().swap(0, 1), "[first-bundle-entry-is-Patient]"),
        (
            ItemKind::Condition,
            |b| b["entry"].as_array_mut().unwrap().truncate(1),
            "[mustHaveOneMoreResources-with-designatedResourceType]",
        ),
        (
            ItemKind::Condition,
            |b| {
                let mut extra = b["entry"][1].clone();
                extra["fullUrl"] = json!("urn:uuid:00000000-0000-4000-8000-000000000001");
                extra["resource"] = item(ItemKind::DrugAllergy)["entry"][1]["resource"].clone();
                b["entry"].as_array_mut().unwrap().push(extra);
            },
            "[R02143]",
        ),
        (
            ItemKind::Condition,
            |b| b["entry"][1]["resource"].as_object_mut().unwrap().remove("extension").map(drop).unwrap_or(()),
            "[all-entries-needs-extension-of-institutionNumber]",
        ),
        (
            ItemKind::Condition,
            |b| b["entry"][1]["resource"]["extension"][0]["valueIdentifier"]["value"] = json!("13188"),
            "[all-entries-needs-valid-institutionNumber]",
        ),
        (
            ItemKind::Condition,
            |b| b["identifier"]["value"] = json!("1311234567^2024^abc"),
            "[clins-bundleIdentifier-institution]",
        ),
        (
            ItemKind::Condition,
            |b| b["entry"][1]["resource"].as_object_mut().unwrap().remove("identifier").map(drop).unwrap_or(()),
            "slice resourceIdentifier",
        ),
        (
            ItemKind::Condition,
            |b| b["entry"][1]["resource"].as_object_mut().unwrap().remove("contained").map(drop).unwrap_or(()),
            "[condition-needs-contained-of-Encounter]",
        ),
        (
            ItemKind::LabResult,
            |b| b["entry"][1]["resource"].as_object_mut().unwrap().remove("contained").map(drop).unwrap_or(()),
            "[observation-needs-contained-of-Encounter]",
        ),
        (
            ItemKind::Condition,
            |b| b["entry"][1]["resource"]["extension"].as_array_mut().unwrap().retain(|e| e["url"] != EXT_DEPARTMENT),
            "[condition-needs-extension-of-Department]",
        ),
        (
            ItemKind::Condition,
            |b| b["entry"][1]["resource"].as_object_mut().unwrap().remove("onsetDateTime").map(drop).unwrap_or(()),
            "[condition-needs-onsetDateTime]",
        ),
        (
            ItemKind::Condition,
            |b| {
                b["entry"][0]["resource"]["identifier"]
                    .as_array_mut()
                    .unwrap()
                    .retain(|i| i["system"] != INSURANCE_MEMBER_ID)
            },
            "[valid-system-insurance-patientIdentifier]",
        ),
        (
            ItemKind::Condition,
            |b| {
                b["entry"][0]["resource"]["identifier"][0]["system"] =
                    json!("urn:oid:1.2.392.100495.20.3.51.21318814790")
            },
            "[valid-system-local-patientID]",
        ),
        (
            ItemKind::LabResult,
            |b| b["entry"][1]["resource"]["code"]["coding"].as_array_mut().unwrap().truncate(1),
            "[clins-lab-standardCode]",
        ),
    ];
    for (kind, mutate, expected) in items {
        let mut b = item(*kind);
        mutate(&mut b);
        let e = errors(&b);
        assert!(e.iter().any(|e| e.contains(expected)), "{kind:?} {expected}: {e:#?}");
    }
    let documents: &[(DocumentKind, Mutation, &str)] = &[
        (DocumentKind::Referral, |b| b["identifier"]["value"] = json!("x"), "EHR-VAL-027 [R2152]"),
        (DocumentKind::Referral, |b| b["type"] = json!("collection"), "EHR-VAL-010 [-] [\"Bundle.type\"]"),
        (DocumentKind::Referral, |b| b["entry"].as_array_mut().unwrap().swap(0, 1), "[bdl-11]"),
        (
            DocumentKind::Referral,
            |b| b["entry"][0]["resource"]["type"]["coding"][0]["code"] = json!("18842-5"),
            "EHR-VAL-010",
        ),
        (
            DocumentKind::Referral,
            |b| {
                let entries = b["entry"].as_array_mut().unwrap();
                entries.retain(|e| e["resource"]["resourceType"] != "Patient");
            },
            "slice patient (1..1",
        ),
        (
            DocumentKind::Referral,
            |b| {
                b["entry"][0]["resource"]["section"]
                    .as_array_mut()
                    .unwrap()
                    .retain(|s| s["code"]["coding"][0]["code"] != "300")
            },
            "[checkExist-CDASection-or-CompositionSection",
        ),
        (
            DocumentKind::Checkup,
            |b| b["entry"][0]["resource"]["type"]["coding"][0]["code"] = json!("57133-1"),
            "[checkup-composition-type]",
        ),
        (
            DocumentKind::Checkup,
            |b| b["entry"][0]["resource"]["section"] = json!([]),
            "[checkup-section-attachment-xor]",
        ),
    ];
    for (kind, mutate, expected) in documents {
        let mut b = document(*kind);
        mutate(&mut b);
        let e = errors(&b);
        assert!(e.iter().any(|e| e.contains(expected)), "{kind:?} {expected}: {e:#?}");
    }
}

fn sim() -> Simulator {
    Simulator::new(None, None).unwrap()
}

fn register(bundle: &Value, information_type: &str) -> Request {
    Request {
        version: envelope::VERSION.into(),
        request_id: uuid::Uuid::new_v4().to_string(),
        operation: Operation::Register,
        institution: INST.into(),
        information_type: information_type.into(),
        bundle_identifier: bundle["identifier"]["value"].as_str().map(str::to_owned),
        cancel_keys: None,
        patient_keys: None,
        bundle: Some(bundle.clone()),
        sent_at: instant(now()),
    }
}

#[test]
fn the_simulator_accepts_every_item_and_document() {
    let s = sim();
    for kind in ItemKind::STANDALONE {
        let r = s.process(&register(&item(kind), kind.as_str()), None, "test");
        assert_eq!(r.status, Status::Accepted, "{kind:?}: {:#?}", r.errors);
    }
    for kind in DocumentKind::ALL {
        let r = s.process(&register(&document(kind), kind.as_str()), None, "test");
        assert_eq!(r.status, Status::Accepted, "{kind:?}: {:#?}", r.errors);
    }
}

fn rejected_with(bundle: Value, kind: &str, rule: &str, location: &str) {
    let r = sim().process(&register(&bundle, kind), None, "test");
    assert_eq!(r.status, Status::Rejected);
    assert!(
        r.errors.iter().any(|f| f.rule == rule && f.location.as_deref().is_some_and(|l| l.starts_with(location))),
        "expected {rule} at {location}: {:#?} ({})",
        r.errors,
        r.message
    );
}

#[test]
fn the_simulator_rejects_broken_bundles_precisely() {
    // A referral missing its required section 950.
    let mut b = document(DocumentKind::Referral);
    let sections = b["entry"][0]["resource"]["section"][2]["section"].as_array_mut().unwrap();
    sections.retain(|s| s["code"]["coding"][0]["code"] != "950");
    rejected_with(b, "referral", "EHR-VAL-013", "Bundle.entry[0].resource.section[2].section");

    // A bad, and a missing, bundle identifier.
    let mut b = item(ItemKind::Condition);
    b["identifier"]["value"] = json!("1318814790-2024-abc");
    let bad_id = register(&b, "condition");
    let r = sim().process(&bad_id, None, "test");
    assert!(r.errors.iter().any(|f| f.rule == "R2152" && f.location.as_deref() == Some("Bundle")), "{:#?}", r.errors);
    let mut b = item(ItemKind::Condition);
    b.as_object_mut().unwrap().remove("identifier");
    let mut req = register(&b, "condition");
    req.bundle_identifier = None;
    assert_eq!(sim().process(&req, None, "test").result_code, codes::INVALID_ENVELOPE);

    // A lab result without its local code.
    let mut b = item(ItemKind::LabResult);
    b["entry"][1]["resource"]["code"]["coding"].as_array_mut().unwrap().remove(0);
    rejected_with(b, "lab-result", "clins-lab-localCode", "Bundle.entry[1].resource.code.coding");

    // The Patient not first.
    let mut b = item(ItemKind::Condition);
    b["entry"].as_array_mut().unwrap().swap(0, 1);
    rejected_with(b, "condition", "R0211", "Bundle");

    // A Condition without its contained Encounter.
    let mut b = item(ItemKind::Condition);
    b["entry"][1]["resource"].as_object_mut().unwrap().remove("contained");
    rejected_with(b, "condition", "R9013C", "Bundle");

    // Two resource types in one Bundle.
    let mut b = item(ItemKind::Condition);
    let mut extra = b["entry"][1].clone();
    extra["fullUrl"] = json!("urn:uuid:00000000-0000-4000-8000-000000000001");
    extra["resource"] = item(ItemKind::DrugAllergy)["entry"][1]["resource"].clone();
    let at = format!("Bundle.entry[{}].resource", b["entry"].as_array().unwrap().len());
    b["entry"].as_array_mut().unwrap().push(extra);
    rejected_with(b, "condition", "R02143", &at);

    // A tagged Bundle that does not name JP_Bundle_CLINS is no submission.
    let mut b = item(ItemKind::Condition);
    b["meta"].as_object_mut().unwrap().remove("profile");
    assert_eq!(sim().process(&register(&b, "condition"), None, "test").result_code, codes::INVALID_ENVELOPE);
}

#[test]
fn register_cancel_change_retrieve_and_idempotency() {
    let s = sim();
    let b = item(ItemKind::Condition);
    let id = b["identifier"]["value"].as_str().unwrap().to_owned();
    let req = register(&b, "condition");
    assert_eq!(s.process(&req, None, "test").result_code, codes::ACCEPTED);
    // The same request again: the first answer, registered once.
    assert_eq!(s.process(&req, None, "test").result_code, codes::ACCEPTED);
    assert_eq!(s.registrations_of(&id), 1);
    // A new request registering the same identifier: refused.
    assert_eq!(s.process(&register(&b, "condition"), None, "test").result_code, codes::ALREADY_REGISTERED);
    // Change: same identifier, new data.
    let mut change = register(&b, "condition");
    change.operation = Operation::Change;
    assert_eq!(s.process(&change, None, "test").result_code, codes::ACCEPTED);
    assert_eq!(s.held(INST, &id).unwrap().2, 2);
    // Retrieve by the patient's keys.
    let mut retrieve = register(&b, "patient");
    retrieve.operation = Operation::Retrieve;
    retrieve.bundle = None;
    retrieve.bundle_identifier = None;
    retrieve.patient_keys = envelope::MemberKeys::parse("00012345:あいう:１８７:05");
    let held = s.process(&retrieve, None, "test").held.unwrap();
    assert_eq!(held.len(), 1);
    // Cancel by keys (member + resource identifier), then again: already cancelled.
    let mut cancel = register(&b, "condition");
    cancel.operation = Operation::Cancel;
    cancel.bundle = None;
    cancel.bundle_identifier = None;
    cancel.cancel_keys = Some(envelope::CancelKeys {
        member: envelope::MemberKeys::parse("00012345:あいう:１８７:05").unwrap(),
        resource_identifiers: vec!["Condition-c1".into()],
        document_id: None,
    });
    assert_eq!(s.process(&cancel, None, "test").result_code, codes::ACCEPTED);
    cancel.request_id = uuid::Uuid::new_v4().to_string();
    assert_eq!(s.process(&cancel, None, "test").result_code, codes::ALREADY_CANCELLED);
    assert!(s.held(INST, &id).unwrap().1);
    // Another institution's folder.
    let r = s.process(&register(&item(ItemKind::Condition), "condition"), Some("1319876543"), "file");
    assert_eq!(r.result_code, codes::WRONG_INSTITUTION);
}

#[tokio::test]
async fn web_api_transport_against_the_simulator() {
    let (addr, handle) =
        Simulator::start(&SimOptions { listen: "127.0.0.1:0".into(), ..SimOptions::default() }).await.unwrap();
    let api = WebApi::new(&format!("http://{addr}"), Duration::from_millis(500), Duration::from_millis(800)).unwrap();
    let req = register(&item(ItemKind::Condition), "condition");
    assert_eq!(api.send(&req).await.unwrap().status, Status::Accepted);
    handle.set_down(Down::Unavailable).await.unwrap();
    assert!(matches!(api.send(&req).await, Err(TransportError::Retryable { .. })));
    handle.set_down(Down::Refuse).await.unwrap();
    assert!(matches!(api.send(&req).await, Err(TransportError::Retryable { .. })));
    handle.set_down(Down::Up).await.unwrap();
    handle.set_delay(Duration::from_millis(1500));
    assert!(matches!(api.send(&req).await, Err(TransportError::Retryable { .. })), "a slow service times out");
    handle.set_delay(Duration::ZERO);
    let again = api.send(&req).await.unwrap();
    assert_eq!(again.status, Status::Accepted);
    assert_eq!(handle.registrations_of(req.bundle_identifier.as_deref().unwrap()), 1);
}

#[tokio::test]
async fn file_drop_transport_against_the_simulators_watcher() {
    let root = std::env::temp_dir().join(format!("clins-drop-{}", uuid::Uuid::new_v4().simple()));
    let options =
        SimOptions { listen: "127.0.0.1:0".into(), file_root: Some(root.clone()), password: Some(PASSWORD.into()) };
    let (_addr, handle) = Simulator::start(&options).await.unwrap();
    let drop = FileDrop {
        request_dir: root.join(INST).join("req"),
        result_dir: root.join(INST).join("res"),
        password: crate::crypto::Password::new(PASSWORD).unwrap(),
        timeout: Duration::from_secs(20),
        poll: Duration::from_millis(20),
    };
    let req = register(&document(DocumentKind::Referral), "referral");
    let answer = drop.send(&req).await.unwrap();
    assert_eq!(answer.status, Status::Accepted, "{:#?}", answer.errors);
    assert_eq!(handle.received()[0].via, "file");
    // What lies in the folders is encrypted, never the Bundle in the clear.
    let mut broken = register(&item(ItemKind::Condition), "condition");
    broken.bundle.as_mut().unwrap()["entry"].as_array_mut().unwrap().swap(0, 1);
    let answer = drop.send(&broken).await.unwrap();
    assert_eq!(answer.result_code, codes::INVALID_BUNDLE);
    // Down: no result in time, a retryable failure; up again: the same request is answered.
    handle.set_down(Down::Unavailable).await.unwrap();
    let slow = FileDrop { timeout: Duration::from_millis(300), ..drop };
    let req = register(&item(ItemKind::DrugAllergy), "drug-allergy");
    assert!(matches!(slow.send(&req).await, Err(TransportError::Retryable { .. })));
    let pending = std::fs::read(root.join(INST).join("req").join(format!("{}.json.enc", req.request_id))).unwrap();
    assert!(!String::from_utf8_lossy(&pending).contains("牧野"));
    handle.set_down(Down::Up).await.unwrap();
    let fine = FileDrop { timeout: Duration::from_secs(20), ..slow };
    assert_eq!(fine.send(&req).await.unwrap().status, Status::Accepted);
    assert_eq!(handle.registrations_of(req.bundle_identifier.as_deref().unwrap()), 1);
    let _ = std::fs::remove_dir_all(&root);
}

fn entry_ids(b: &Value) -> Vec<String> {
    b["entry"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["resource"]["identifier"].as_array())
        .flat_map(|ids| ids.iter())
        .filter(|i| i["system"] == RESOURCE_INSTANCE)
        .map(|i| i["value"].as_str().unwrap().to_owned())
        .collect()
}

/// Entered in error, refuted, cancelled, preliminary: never sent, in items or documents, nor
/// named in a document's narrative.
#[test]
fn what_must_not_be_sent_is_not_sent() {
    let mut r = record();
    let ver = |code: &str| json!({"coding": [{"system": "http://example.org/local", "code": "x"}, {"system": "http://terminology.hl7.org/CodeSystem/condition-ver-status", "code": code}]});
    for (id, code) in [("c-eie", "entered-in-error"), ("c-ref", "refuted")] {
        let mut c = r.get("Condition/c1").unwrap().clone();
        c["id"] = json!(id);
        c["verificationStatus"] = ver(code);
        c["code"]["text"] = json!(format!("誤登録病名{id}"));
        r.resources.push(c);
    }
    let mut a = r.get("AllergyIntolerance/a1").unwrap().clone();
    a["id"] = json!("a-eie");
    a["verificationStatus"] = json!({"coding": [{"system": "http://terminology.hl7.org/CodeSystem/allergyintolerance-verification", "code": "entered-in-error"}]});
    a["code"]["text"] = json!("誤登録アレルギー");
    r.resources.push(a);
    for (id, status) in [("o-cancel", "cancelled"), ("o-pre", "preliminary"), ("o-eie", "entered-in-error")] {
        let mut o = r.get("Observation/o1").unwrap().clone();
        o["id"] = json!(id);
        o["status"] = json!(status);
        r.resources.push(o);
    }
    let (i, t, o) = (institution(), terminology(), options());
    let conditions = entry_ids(&items::build_item(ItemKind::Condition, &r, &i, &t, &o).unwrap());
    assert_eq!(conditions, ["Condition-c1", "Condition-c2"]);
    let allergies = entry_ids(&items::build_item(ItemKind::DrugAllergy, &r, &i, &t, &o).unwrap());
    assert_eq!(allergies, ["AllergyIntolerance-a1"]);
    let labs = entry_ids(&items::build_item(ItemKind::LabResult, &r, &i, &t, &o).unwrap());
    assert_eq!(labs, ["Observation-o1", "Observation-o2"]);
    let referral = documents::referral(&r, &i, &t, &referral_request(), &o).unwrap();
    let ids = entry_ids(&referral);
    assert!(!ids.iter().any(|x| x.contains("eie") || x.contains("ref") || x.contains("o-")), "{ids:?}");
    let text = referral.to_string();
    assert!(!text.contains("誤登録"), "a narrative names what was not sent");
    assert!(errors(&referral).is_empty(), "{:#?}", errors(&referral));
}

/// §A.4: LTS on any item; UNINFORMED / UNDELIVERED on Conditions only (requested or stored).
#[test]
fn flags_apply_to_their_types_only() {
    let mut r = record();
    r.resources.iter_mut().find(|x| x["id"] == "a1").unwrap()["meta"] =
        json!({"tag": [{"system": INDICATION, "code": "UNINFORMED"}]});
    let mut o = options();
    o.flags = vec!["LTS".into(), "UNINFORMED".into(), "UNDELIVERED".into()];
    let (i, t) = (institution(), terminology());
    let tags = |b: &Value| -> Vec<String> {
        b["entry"][1]["resource"]["meta"]["tag"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["code"].as_str().unwrap().to_owned())
            .collect()
    };
    let c = items::build_item(ItemKind::Condition, &r, &i, &t, &o).unwrap();
    assert_eq!(tags(&c), ["LTS", "UNINFORMED", "UNDELIVERED"]);
    assert!(errors(&c).is_empty(), "{:#?}", errors(&c));
    for kind in [ItemKind::DrugAllergy, ItemKind::LabResult] {
        let b = items::build_item(kind, &r, &i, &t, &o).unwrap();
        assert_eq!(tags(&b), ["LTS"], "{kind:?}");
    }
}

/// `resources` (and a document's lists) name this patient's resources of the item, or the build
/// fails: another patient's id is "not found", a wrong or unsendable one is refused.
#[test]
fn requested_resources_must_be_the_patients_and_sendable() {
    let (i, t) = (institution(), terminology());
    let mut r = record();
    let mut eie = r.get("Condition/c1").unwrap().clone();
    eie["id"] = json!("c-eie");
    eie["verificationStatus"]["coding"][0]["code"] = json!("entered-in-error");
    r.resources.push(eie);
    let build = |only: &[&str]| {
        let mut o = options();
        o.only = Some(only.iter().map(|s| (*s).to_owned()).collect());
        items::build_item(ItemKind::Condition, &r, &i, &t, &o)
    };
    assert!(matches!(build(&["Condition/of-another-patient"]), Err(crate::ClinsError::NotFound(_))));
    assert!(matches!(build(&["AllergyIntolerance/a1"]), Err(crate::ClinsError::NotFound(_))));
    assert!(matches!(build(&["Condition/c1", "Condition/c-eie"]), Err(crate::ClinsError::Invalid(_))));
    assert_eq!(entry_ids(&build(&["Condition/c1"]).unwrap()), ["Condition-c1"]);
    let mut req = referral_request();
    req.problems = Some(vec!["Condition/of-another-patient".into()]);
    let r2 = documents::referral(&r, &i, &t, &req, &options());
    assert!(matches!(r2, Err(crate::ClinsError::NotFound(_))));
    let checkup = CheckupRequest { observations: Some(vec!["Observation/nope".into()]), ..CheckupRequest::default() };
    assert!(matches!(documents::checkup_report(&r, &i, &t, &checkup, &options()), Err(crate::ClinsError::NotFound(_))));
}

#[test]
fn clins_text_makes_kana_full_width_and_ascii_half_width() {
    assert_eq!(clins_text("ｶﾞｷﾞﾊﾟﾎﾟ ｳﾞｧ ﾃｽﾄｰ｡", false), "ガギパポ ヴァ テスト—。".replace('—', "ー"));
    assert_eq!(clins_text("牧野\u{3000}爛漫\u{7}", false), "牧野 爛漫");
    assert_eq!(clins_text("ＨＢｓ抗原（１）", true), "HBs抗原(1)");
    assert_eq!(clins_text("ＨＢｓ", false), "ＨＢｓ");
    assert_eq!(clins_text("ﾞ", false), "゛", "a lone voiced mark");
}

/// Records as they come: a kanji-only patient, a kana name typed in half-width, a U+3000 in a
/// name, qualitative (CodeableConcept) and text results with half-width kana, an onset period, a
/// resolved Condition without clinicalStatus.
#[test]
fn realistic_records_build_valid_bundles() {
    let (i, t, o) = (institution(), terminology(), options());
    let mut r = record();
    r.patient["name"] = json!([{"family": "牧野\u{3000}", "given": ["爛漫"]}]);
    let b = items::build_item(ItemKind::Condition, &r, &i, &t, &o).unwrap();
    assert_eq!(b["entry"][0]["resource"]["name"].as_array().unwrap().len(), 1, "kanji only");
    assert_eq!(b["entry"][0]["resource"]["name"][0]["text"], "牧野 爛漫");
    assert!(errors(&b).is_empty(), "{:#?}", errors(&b));

    r.patient["name"] = json!([{"family": "牧野", "given": ["爛漫"]}, {"family": "ﾏｷﾉ", "given": ["ﾗﾝﾏﾝ"]}]);
    let b = items::build_item(ItemKind::Condition, &r, &i, &t, &o).unwrap();
    let kana = &b["entry"][0]["resource"]["name"][1];
    assert_eq!(
        (kana["text"].as_str(), kana["extension"][0]["valueCode"].as_str()),
        (Some("マキノ ランマン"), Some("SYL"))
    );
    assert!(errors(&b).is_empty(), "{:#?}", errors(&b));

    r.resources.retain(|x| x["resourceType"] != "Observation" && x["resourceType"] != "Condition");
    r.resources.push(lab("q1", "3H015000002326101", "ｶﾘｳﾑ定性", json!({"valueCodeableConcept": {"coding": [{"system": "http://hospital.example.jp/results", "code": "N", "display": "ｲﾝｾｲ"}], "text": "ｲﾝｾｲ"}})));
    r.resources.push(lab("q2", "3A015000002327101", "アルブミン", json!({"valueString": "溶血のため再検"})));
    let b = items::build_item(ItemKind::LabResult, &r, &i, &t, &o).unwrap();
    let q1 = &b["entry"][1]["resource"];
    assert_eq!(q1["code"]["text"], "カリウム定性");
    assert_eq!(q1["valueCodeableConcept"]["text"], "インセイ");
    assert_eq!(q1["valueCodeableConcept"]["coding"][0]["display"], "インセイ");
    assert_eq!(b["entry"][2]["resource"]["valueString"], "溶血のため再検");
    assert!(errors(&b).is_empty(), "{:#?}", errors(&b));

    r.resources.push(json!({"resourceType": "Condition", "id": "c9",
        "verificationStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-ver-status", "code": "confirmed"}]},
        "code": {"coding": [{"system": "http://medis.or.jp/CodeSystem/master-disease-keyNumber", "code": "20058911", "display": "狭心症"}]},
        "subject": {"reference": "Patient/p1"}, "onsetPeriod": {"start": "2019-04-01", "end": "2020-03-01"},
        "abatementDateTime": "2020-03-01"}));
    let b = items::build_item(ItemKind::Condition, &r, &i, &t, &o).unwrap();
    let c9 = &b["entry"][1]["resource"];
    assert_eq!(c9["onsetDateTime"], "2019-04-01");
    assert!(c9.get("onsetPeriod").is_none());
    assert_eq!(c9["clinicalStatus"]["coding"][0]["code"], "resolved");
    assert!(errors(&b).is_empty(), "{:#?}", errors(&b));

    // A Condition recorded as text only: built, but refused by the validator for its missing
    // MEDIS code — never sent with a made-up one.
    r.resources.push(json!({"resourceType": "Condition", "id": "c10", "code": {"text": "腰痛症"},
        "verificationStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-ver-status", "code": "confirmed"}]},
        "subject": {"reference": "Patient/p1"}, "onsetDateTime": "2024-01-01"}));
    let mut only = options();
    only.only = Some(vec!["Condition/c10".into()]);
    let b = items::build_item(ItemKind::Condition, &r, &i, &t, &only).unwrap();
    assert!(!errors(&b).is_empty(), "a text-only Condition must not pass");
}

#[test]
fn a_reused_request_id_with_other_content_is_refused() {
    let s = sim();
    let req = register(&item(ItemKind::Condition), "condition");
    assert_eq!(s.process(&req, None, "test").result_code, codes::ACCEPTED);
    let mut other = register(&item(ItemKind::Condition), "condition");
    other.request_id = req.request_id.clone();
    let r = s.process(&other, None, "test");
    assert_eq!((r.status, r.result_code.as_str()), (Status::Rejected, codes::INVALID_ENVELOPE));
    // The first request, repeated, still gets its first answer.
    assert_eq!(s.process(&req, None, "test").result_code, codes::ACCEPTED);
    assert_eq!(s.registrations_of(other.bundle_identifier.as_deref().unwrap()), 0);
}

/// A result file that answers another request id is never taken as this request's answer; the
/// request file is written without leaving temporary files behind.
#[tokio::test]
async fn a_result_file_of_another_request_is_refused() {
    let root = std::env::temp_dir().join(format!("clins-mismatch-{}", uuid::Uuid::new_v4().simple()));
    let password = crate::crypto::Password::new(PASSWORD).unwrap();
    let drop = FileDrop {
        request_dir: root.join("req"),
        result_dir: root.join("res"),
        password: password.clone(),
        timeout: Duration::from_millis(200),
        poll: Duration::from_millis(20),
    };
    let req = register(&item(ItemKind::Condition), "condition");
    let name = crate::transport::file_name(&req.request_id).unwrap();
    let foreign = envelope::Response {
        request_id: "someone-else".into(),
        status: Status::Accepted,
        result_code: codes::ACCEPTED.into(),
        message: "registered".into(),
        errors: Vec::new(),
        held: None,
        processed_at: instant(now()),
    };
    let sealed = crate::crypto::encrypt(&password, &serde_json::to_vec(&foreign).unwrap()).unwrap();
    crate::transport::write_atomic(&root.join("res"), &name, &sealed).await.unwrap();
    let e = drop.send(&req).await.unwrap_err();
    assert!(matches!(e, TransportError::Permanent { sent: true, .. }), "{e:?}");
    assert!(!root.join("res").join(&name).exists(), "set aside");
    // No result at all: the request file is dropped (once, no temporary left) and may have
    // reached the terminal.
    let e = drop.send(&req).await.unwrap_err();
    assert!(matches!(e, TransportError::Retryable { sent: true, .. }), "{e:?}");
    let files: Vec<String> = std::fs::read_dir(root.join("req"))
        .unwrap()
        .map(|f| f.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(files, [name]);
    let _ = std::fs::remove_dir_all(&root);
}

/// The Web API tells a request that never left (refused, 503) from one that may have arrived
/// (timeout), and takes no answer naming another request.
#[tokio::test]
async fn web_api_failures_say_whether_the_request_may_have_arrived() {
    let (addr, handle) =
        Simulator::start(&SimOptions { listen: "127.0.0.1:0".into(), ..SimOptions::default() }).await.unwrap();
    let api = WebApi::new(&format!("http://{addr}"), Duration::from_millis(500), Duration::from_millis(400)).unwrap();
    let req = register(&item(ItemKind::Condition), "condition");
    handle.set_down(Down::Unavailable).await.unwrap();
    assert!(!api.send(&req).await.unwrap_err().may_have_arrived());
    handle.set_down(Down::Refuse).await.unwrap();
    // A fresh client: a pooled connection that breaks may have carried the request.
    let fresh = WebApi::new(&format!("http://{addr}"), Duration::from_millis(500), Duration::from_millis(400)).unwrap();
    let e = fresh.send(&req).await.unwrap_err();
    assert!(!e.may_have_arrived(), "{e:?}");
    handle.set_down(Down::Up).await.unwrap();
    handle.set_delay(Duration::from_millis(800));
    assert!(api.send(&req).await.unwrap_err().may_have_arrived());

    // A service answering with another request id.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let other = listener.local_addr().unwrap();
    let app = axum::Router::new().route(
        crate::transport::REQUESTS_PATH,
        axum::routing::post(|| async {
            axum::Json(json!({"requestId": "not-yours", "status": "accepted", "resultCode": "0000", "message": "", "processedAt": ""}))
        }),
    );
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    let api = WebApi::new(&format!("http://{other}"), Duration::from_millis(500), Duration::from_millis(800)).unwrap();
    let e = api.send(&req).await.unwrap_err();
    assert!(matches!(e, TransportError::Permanent { sent: true, .. }), "{e:?}");
}
