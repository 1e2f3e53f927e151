//! Validator tests against the JP-CLINS / JP Core examples (copied under `fixtures/`) and
//! targeted mutations of them.
#![allow(clippy::unwrap_used)]

mod rules;
mod xml;

use std::path::{Path, PathBuf};
use std::time::Instant;

use ehr_core::{Issue, Severity};
use ehr_fhir::validate::{Validator, rule_number};
use serde_json::{Value, json};

fn fixtures(dir: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/validate/fixtures").join(dir)
}

fn load(dir: &str, name: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(fixtures(dir).join(name)).unwrap()).unwrap()
}

fn all(dir: &str) -> Vec<(String, Value)> {
    let mut v: Vec<_> = std::fs::read_dir(fixtures(dir))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().to_string();
            (name, serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap())
        })
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

fn errors(issues: &[Issue]) -> Vec<&Issue> {
    issues.iter().filter(|i| matches!(i.severity, Severity::Error | Severity::Fatal)).collect()
}

fn show(issues: &[&Issue]) -> String {
    issues.iter().map(|i| format!("{} {:?} {}\n", i.ehr_code, i.expression, i.diagnostics)).collect()
}

/// Asserts exactly one error with this code at this expression is among the errors.
fn assert_error(issues: &[Issue], code: &str, expr: &str) {
    let errs = errors(issues);
    assert!(
        errs.iter().any(|i| i.ehr_code == code && i.expression.iter().any(|e| e == expr)),
        "expected {code} at {expr}, got:\n{}",
        show(&errs)
    );
}

#[test]
fn jp_clins_examples_are_valid() {
    let v = Validator::new();
    let mut failures = String::new();
    for (name, res) in all("jp-clins") {
        let issues = v.validate(&res);
        let errs = errors(&issues);
        if !errs.is_empty() {
            failures.push_str(&format!("{name}:\n{}", show(&errs)));
        }
    }
    assert!(failures.is_empty(), "{failures}");
}

#[test]
fn jp_core_examples_are_valid() {
    let v = Validator::new();
    for (name, res) in all("jp-core") {
        let issues = v.validate(&res);
        assert!(errors(&issues).is_empty(), "{name}:\n{}", show(&errors(&issues)));
    }
}

#[test]
fn eprescription_examples_warn_unknown_profile_only() {
    let v = Validator::new();
    for (name, res) in all("eprescription") {
        let issues = v.validate(&res);
        if name.starts_with("MedicationRequest-") {
            // This example really is invalid R4 JSON: MedicationRequest.note is 0..* but the
            // example sends a single object.
            let errs = errors(&issues);
            assert_eq!(errs.len(), 1, "{name}:\n{}", show(&errs));
            assert_error(&issues, "EHR-VAL-004", "MedicationRequest.note");
        } else {
            assert!(errors(&issues).is_empty(), "{name}:\n{}", show(&errors(&issues)));
        }
        assert!(issues.iter().any(|i| i.ehr_code == "EHR-VAL-016" && i.severity == Severity::Warning), "{name}");
    }
}

#[test]
fn error_examples() {
    // What the IG's two invalid examples get from this validator; see profiles/README.md.
    let v = Validator::new();
    for (name, res) in all("jp-clins-errors") {
        let issues = v.validate(&res);
        println!("{name}:\n{}", show(&issues.iter().collect::<Vec<_>>()));
    }
    let ext_eye = load("jp-clins-errors", "MedicationRequest-ErrorExample-JP-MedReq-ExtEye-Total1.json");
    assert_error(&v.validate(&ext_eye), "EHR-VAL-018", "MedicationRequest");
}

fn jp_patient() -> Value {
    load("jp-core", "Patient-jp-patient-example-1.json")
}

#[test]
fn missing_identifier_in_jp_patient() {
    let mut p = jp_patient();
    p.as_object_mut().unwrap().remove("identifier");
    let issues = Validator::new().validate(&p);
    assert_error(&issues, "EHR-VAL-008", "Patient.identifier");
    let i = issues.iter().find(|i| i.ehr_code == "EHR-VAL-008").unwrap();
    assert_eq!(i.code, ehr_core::IssueType::Required);
    assert!(i.diagnostics.contains("minimum cardinality of Patient.identifier is 1"), "{}", i.diagnostics);
}

#[test]
fn bad_birth_date() {
    let mut p = jp_patient();
    p["birthDate"] = json!("1990-13-45");
    let issues = Validator::new().validate(&p);
    assert_error(&issues, "EHR-VAL-005", "Patient.birthDate");
    // The offending value must not leak into diagnostics.
    assert!(issues.iter().all(|i| !i.diagnostics.contains("1990-13-45")));
    assert_eq!(errors(&issues).len(), 1, "{}", show(&errors(&issues)));
}

#[test]
fn unknown_element() {
    let mut p = jp_patient();
    p["name"][0]["nickname"] = json!("x");
    p["favouriteColour"] = json!("blue");
    let issues = Validator::new().validate(&p);
    assert_error(&issues, "EHR-VAL-003", "Patient.name[0].nickname");
    assert_error(&issues, "EHR-VAL-003", "Patient.favouriteColour");
    assert_eq!(errors(&issues).len(), 2, "{}", show(&errors(&issues)));
}

#[test]
fn array_where_single_expected() {
    let mut p = jp_patient();
    p["gender"] = json!(["male"]);
    let issues = Validator::new().validate(&p);
    assert_error(&issues, "EHR-VAL-004", "Patient.gender");
}

#[test]
fn required_binding() {
    let mut p = jp_patient();
    p["gender"] = json!("x");
    let issues = Validator::new().validate(&p);
    assert_error(&issues, "EHR-VAL-015", "Patient.gender");
    assert_eq!(errors(&issues).len(), 1, "{}", show(&errors(&issues)));
}

#[test]
fn lab_result_without_laboratory_category() {
    let mut o = load("jp-core", "Observation-jp-observation-labresult-example-1.json");
    o["category"] = json!([{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "vital-signs"}]}]);
    let issues = Validator::new().validate(&o);
    let errs = errors(&issues);
    assert!(
        errs.iter().any(|i| matches!(i.ehr_code, "EHR-VAL-011" | "EHR-VAL-013")
            && i.expression.iter().any(|e| e.starts_with("Observation.category"))),
        "{}",
        show(&errs)
    );
}

#[test]
fn closed_slice_violation() {
    // JP_Condition_eCS slices meta.tag closed by code (LTS / UNINFORMED / UNDELIVERED).
    let mut c = load("jp-clins", "Condition-Example-JP-Condition-eCS-01.json");
    let ok = json!({"system": "http://jpfhir.jp/fhir/clins/CodeSystem/JP_ehrshrs_indication", "code": "LTS"});
    c["meta"]["tag"] = json!([ok, {"system": "http://example.org/tags", "code": "other"}]);
    let issues = Validator::new().validate(&c);
    assert_error(&issues, "EHR-VAL-014", "Condition.meta.tag[1]");
    // The sliced element itself also binds meta.tag (required) to JP_ehrshrs_indication.
    assert_error(&issues, "EHR-VAL-015", "Condition.meta.tag[1]");
    assert_eq!(errors(&issues).len(), 2, "{}", show(&errors(&issues)));
    // Two items in a 0..1 slice.
    c["meta"]["tag"] = json!([ok, ok]);
    assert_error(&Validator::new().validate(&c), "EHR-VAL-013", "Condition.meta.tag");
}

#[test]
fn profile_choice_type_restriction() {
    // JP_MedicationRequest_eCS restricts medication[x] to CodeableConcept.
    let mut m = load("jp-clins", "MedicationRequest-Example-JP-MedReq-PO-BID-2d.json");
    let obj = m.as_object_mut().unwrap();
    obj.remove("medicationCodeableConcept");
    obj.insert("medicationReference".into(), json!({"reference": "Medication/1"}));
    let issues = Validator::new().validate(&m);
    assert_error(&issues, "EHR-VAL-012", "MedicationRequest.medicationReference");
}

#[test]
fn fixed_value_in_extension_profile() {
    let mut p = load("jp-clins", "Patient-Example-JP-Patient-standard.json");
    p["extension"] = json!([{"url": "http://jpfhir.jp/fhir/core/Extension/StructureDefinition/JP_Patient_Race", "valueString": "x"}]);
    let issues = Validator::new().validate(&p);
    // JP_Patient_Race only allows valueCodeableConcept.
    assert_error(&issues, "EHR-VAL-012", "Patient.extension[0].valueString");
}

#[test]
fn primitive_extension_siblings() {
    let mut p = jp_patient();
    p["_birthDate"] = json!({"extension": [{"url": "http://example.org/e", "valueBoolean": true}]});
    assert!(errors(&Validator::new().validate(&p)).is_empty());
    p["_birthDate"] = json!({"extension": [{"valueBoolean": "yes"}]});
    let issues = Validator::new().validate(&p);
    assert_error(&issues, "EHR-VAL-006", "Patient._birthDate.extension[0].url");
    assert_error(&issues, "EHR-VAL-005", "Patient._birthDate.extension[0].valueBoolean");
}

#[test]
fn bundle_entries_are_validated() {
    let mut b = load("jp-clins", "Bundle-Bundle-CLINS-PCS-Example-01.json");
    let i = b["entry"].as_array().unwrap().iter().position(|e| e["resource"]["resourceType"] == "Patient").unwrap();
    b["entry"][i]["resource"]["birthDate"] = json!("1990-13-45");
    let issues = Validator::new().validate(&b);
    assert_error(&issues, "EHR-VAL-005", &format!("Bundle.entry[{i}].resource.birthDate"));
}

#[test]
fn hand_table_types() {
    let v = Validator::new();
    let sr = json!({"resourceType": "ServiceRequest", "status": "active", "intent": "order",
        "subject": {"reference": "Patient/1"}, "occurrenceDateTime": "2024-01-01", "quantityRatio": {}});
    let issues = v.validate(&sr);
    assert_error(&issues, "EHR-VAL-004", "ServiceRequest.quantityRatio");
    assert_eq!(errors(&issues).len(), 1, "{}", show(&errors(&issues)));
    let appt = json!({"resourceType": "Appointment", "status": "booked", "participant": [{"status": "maybe"}]});
    assert_error(&v.validate(&appt), "EHR-VAL-015", "Appointment.participant[0].status");
}

#[test]
fn contained_resource_error() {
    let mut e = load("jp-clins", "Encounter-Example-JP-Encounter-eCS-AMB-01.json");
    e["contained"] = json!([{"resourceType": "Practitioner", "id": "p1", "gender": "x", "bogus": true}]);
    let issues = Validator::new().validate(&e);
    assert_error(&issues, "EHR-VAL-003", "Encounter.contained[0].bogus");
    assert_error(&issues, "EHR-VAL-015", "Encounter.contained[0].gender");
}

#[test]
fn contained_without_resource_type() {
    let e = json!({"resourceType": "Patient", "contained": [{"id": "x"}]});
    assert_error(&Validator::new().validate(&e), "EHR-VAL-001", "Patient.contained[0]");
}

#[test]
fn timing_jp_patient() {
    let v = Validator::new();
    let p = jp_patient();
    assert!(errors(&v.validate(&p)).is_empty());
    let n = 2000;
    let t = Instant::now();
    for _ in 0..n {
        std::hint::black_box(v.validate(std::hint::black_box(&p)));
    }
    let per = t.elapsed() / n;
    println!("validate(JP_Patient example): {per:?} per call");
    let big = load("jp-clins", "Bundle-Bundle-CLINS-Referral-Example-01.json");
    let t = Instant::now();
    for _ in 0..50 {
        std::hint::black_box(v.validate(&big));
    }
    println!("validate(CLINS referral Bundle): {:?} per call", t.elapsed() / 50);
}
