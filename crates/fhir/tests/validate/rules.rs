//! One mutation per JP-CLINS rule: IG invariants now evaluated (regexes), the hand rules of
//! `validate/rules.rs`, the section slices of the document Compositions, the OID ↔ URL reading.

use super::*;

const CLINS_BUNDLE: &str = "http://jpfhir.jp/fhir/clins/StructureDefinition/JP_Bundle_CLINS";
const CHECKUP_BUNDLE: &str = "http://jpfhir.jp/fhir/clins/StructureDefinition/JP_Bundle_eCheckupGeneral";
const CHECKUP_COMPOSITION: &str = "http://jpfhir.jp/fhir/eCheckup/StructureDefinition/JP_Composition_eCheckupGeneral";
const PATIENT_URL: &str = "urn:uuid:0a48a4bf-0d87-4efb-aafd-d45e0842a4dd";

/// Asserts an error with this code, rule and expression.
fn assert_rule(issues: &[Issue], code: &str, rule: &str, expr: &str) {
    let errs = errors(issues);
    assert!(
        errs.iter()
            .any(|i| i.ehr_code == code && i.rule.as_deref() == Some(rule) && i.expression.iter().any(|e| e == expr)),
        "expected {code} [{rule}] at {expr}, got:\n{}",
        show(&errs)
    );
}

fn no_errors(v: &Value) {
    let issues = Validator::new().validate(v);
    assert!(errors(&issues).is_empty(), "{}", show(&errors(&issues)));
}

/// A JP_Bundle_CLINS lab submission built from the IG's Patient and albumin examples.
fn clins_lab_bundle() -> Value {
    let mut obs = load("jp-clins", "Observation-Example-JP-Obs-LabResult-eCS-Alb.json");
    obs["subject"] = json!({"reference": PATIENT_URL});
    json!({
        "resourceType": "Bundle",
        "meta": {"lastUpdated": "2024-04-01T10:00:00+09:00", "profile": [format!("{CLINS_BUNDLE}|1")],
            "tag": [{"system": "http://jpfhir.jp/fhir/clins/CodeSystem/BundleResourceType_CS", "code": "Observation"}]},
        "identifier": {"system": "http://jpfhir.jp/fhir/clins/bundle-identifier", "value": "1318814790^2024^0123-IDa-203949583949"},
        "type": "collection",
        "timestamp": "2024-04-01T10:00:00.000+09:00",
        "entry": [
            {"fullUrl": PATIENT_URL, "resource": load("jp-clins", "Patient-Example-JP-Patient-standard.json")},
            {"fullUrl": "urn:uuid:481835ef-0891-45de-a006-087954ab6b7c", "resource": obs},
        ]
    })
}

fn referral() -> Value {
    load("jp-clins", "Bundle-Bundle-CLINS-Referral-Example-01.json")
}

#[test]
fn built_clins_bundle_is_valid() {
    no_errors(&clins_lab_bundle());
}

#[test]
fn error_example_rule_ids() {
    let ext_eye = load("jp-clins-errors", "MedicationRequest-ErrorExample-JP-MedReq-ExtEye-Total1.json");
    assert_rule(
        &Validator::new().validate(&ext_eye),
        "EHR-VAL-018",
        "needs-anyOfStandardCode-medication",
        "MedicationRequest",
    );
}

#[test]
fn bad_bundle_identifier() {
    // JP_Bundle_CLINS: the IG invariant with its regex (R2152).
    let mut b = clins_lab_bundle();
    b["identifier"]["value"] = json!("1318814790-2024-0123");
    assert_rule(&Validator::new().validate(&b), "EHR-VAL-018", "valid-value-bundleIdenfifier", "Bundle");
    // Document Bundles: the hand rule.
    let mut r = referral();
    r["identifier"]["value"] = json!("1318814790^1999^x");
    assert_rule(&Validator::new().validate(&r), "EHR-VAL-027", "R2152", "Bundle.identifier");
}

#[test]
fn bad_institution_number_and_member_id() {
    let mut b = clins_lab_bundle();
    b["entry"][1]["resource"]["extension"][0]["valueIdentifier"]["value"] = json!("131881479");
    let issues = Validator::new().validate(&b);
    assert_rule(&issues, "EHR-VAL-018", "all-entries-needs-valid-institutionNumber", "Bundle");
    let mut b = clins_lab_bundle();
    b["entry"][0]["resource"]["identifier"][1]["value"] = json!("12345:あいう:１８７:05");
    assert_rule(
        &Validator::new().validate(&b),
        "EHR-VAL-018",
        "valid-value-insurance-patientIdentifier",
        "Bundle.entry[0].resource",
    );
}

#[test]
fn local_patient_id_differs_from_institution_number() {
    let mut b = clins_lab_bundle();
    b["entry"][0]["resource"]["identifier"][0]["system"] = json!("urn:oid:1.2.392.100495.20.3.51.11311234567");
    assert_rule(
        &Validator::new().validate(&b),
        "EHR-VAL-023",
        "R1011",
        "Bundle.entry[0].resource.identifier[0].system",
    );
}

#[test]
fn full_urls() {
    let mut b = clins_lab_bundle();
    b["entry"][1]["fullUrl"] = json!(PATIENT_URL);
    assert_rule(&Validator::new().validate(&b), "EHR-VAL-021", "clins-fullUrl-unique", "Bundle.entry[1].fullUrl");
    let mut b = clins_lab_bundle();
    b["entry"][1]["fullUrl"] = json!("http://example.org/Observation/1");
    assert_rule(&Validator::new().validate(&b), "EHR-VAL-020", "clins-fullUrl-uuid", "Bundle.entry[1].fullUrl");
    let mut r = referral();
    r["entry"][3]["fullUrl"] = r["entry"][4]["fullUrl"].clone();
    assert_rule(&Validator::new().validate(&r), "EHR-VAL-021", "clins-fullUrl-unique", "Bundle.entry[4].fullUrl");
    let mut b = clins_lab_bundle();
    b["entry"][1].as_object_mut().unwrap().remove("fullUrl");
    assert_rule(&Validator::new().validate(&b), "EHR-VAL-020", "clins-fullUrl-uuid", "Bundle.entry[1].fullUrl");
}

/// R02143: one resource type per JP_Bundle_CLINS, the tagged one.
#[test]
fn clins_bundle_carries_one_resource_type() {
    let mut b = clins_lab_bundle();
    let mut condition = load("jp-clins", "Condition-Example-JP-Condition-eCS-01.json");
    condition["subject"] = json!({"reference": PATIENT_URL});
    b["entry"]
        .as_array_mut()
        .unwrap()
        .push(json!({"fullUrl": "urn:uuid:00000000-0000-4000-8000-000000000007", "resource": condition}));
    assert_rule(&Validator::new().validate(&b), "EHR-VAL-036", "R02143", "Bundle.entry[2].resource");
    assert_eq!(rule_number("R02143"), Some("R02143"));
}

/// The bundle identifier opens with the sender's institution number: the entries' and the local
/// patient id's must be the same.
#[test]
fn bundle_identifier_institution_matches_the_entries() {
    let mut b = clins_lab_bundle();
    b["identifier"]["value"] = json!("1311234567^2024^0123-IDa-203949583949");
    let issues = Validator::new().validate(&b);
    assert_rule(&issues, "EHR-VAL-037", "clins-bundleIdentifier-institution", "Bundle.entry[1].resource.extension[0]");
    assert_rule(
        &issues,
        "EHR-VAL-037",
        "clins-bundleIdentifier-institution",
        "Bundle.entry[0].resource.identifier[0].system",
    );
    assert_eq!(rule_number("clins-bundleIdentifier-institution"), Some("R9012"));
    // The invariants' messages name the 技術解説書 number too.
    let mut b = clins_lab_bundle();
    b["entry"][1]["resource"].as_object_mut().unwrap().remove("contained");
    let issues = Validator::new().validate(&b);
    assert!(
        errors(&issues).iter().any(|i| i.rule.as_deref() == Some("observation-needs-contained-of-Encounter")
            && i.diagnostics.contains("(R9013O)")),
        "{}",
        show(&errors(&issues))
    );
}

#[test]
fn lab_codings() {
    let coding = "Bundle.entry[1].resource.code.coding";
    let mut b = clins_lab_bundle();
    b["entry"][1]["resource"]["code"]["coding"].as_array_mut().unwrap().remove(0);
    assert_rule(&Validator::new().validate(&b), "EHR-VAL-024", "clins-lab-localCode", coding);
    let mut b = clins_lab_bundle();
    b["entry"][1]["resource"]["code"]["coding"].as_array_mut().unwrap().remove(1);
    assert_rule(&Validator::new().validate(&b), "EHR-VAL-025", "clins-lab-standardCode", coding);
    // The uncoded marker stands in for a JLAC code.
    b["entry"][1]["resource"]["code"]["coding"].as_array_mut().unwrap().push(json!({
        "system": "http://jpfhir.jp/fhir/clins/CodeSystem/JP_CLINS_ObsLabResult_Uncoded_CS",
        "code": "99999999999999999", "display": "未標準化コード項目(JLAC)"}));
    no_errors(&b);
    let mut b = clins_lab_bundle();
    b["entry"][1]["resource"]["code"]["text"] = json!("ｱﾙﾌﾞﾐﾝ");
    b["entry"][1]["resource"]["code"]["coding"][0]["display"] = json!("アルブミン\u{3000}");
    let issues = Validator::new().validate(&b);
    assert_rule(&issues, "EHR-VAL-026", "clins-lab-characters", "Bundle.entry[1].resource.code.text");
    assert_rule(&issues, "EHR-VAL-026", "clins-lab-characters", "Bundle.entry[1].resource.code.coding[0].display");
    // The rule names the characters, never the value.
    assert!(issues.iter().all(|i| !i.diagnostics.contains("ｱﾙﾌﾞﾐﾝ")));
}

#[test]
fn referral_missing_a_required_section() {
    let mut r = referral();
    // Section 300's sub-sections: 950 紹介目的 is 1..1 in JP_Composition_eReferral.
    r["entry"][0]["resource"]["section"][2]["section"].as_array_mut().unwrap().remove(0);
    let issues = Validator::new().validate(&r);
    let errs = errors(&issues);
    assert!(
        errs.iter().any(|i| i.ehr_code == "EHR-VAL-013"
            && i.diagnostics.contains("referralPurposeSection")
            && i.expression == ["Bundle.entry[0].resource.section[2].section"]),
        "{}",
        show(&errs)
    );
}

#[test]
fn referral_section_entry_must_resolve() {
    let mut r = referral();
    r["entry"][0]["resource"]["section"][2]["section"][1]["entry"][0]["reference"] =
        json!("urn:uuid:00000000-0000-4000-8000-000000000000");
    assert_rule(
        &Validator::new().validate(&r),
        "EHR-VAL-022",
        "document-reference-resolves",
        "Bundle.entry[0].resource.section[2].section[1].entry[0].reference",
    );
    let mut r = referral();
    r["entry"][0]["resource"]["subject"]["reference"] = json!("urn:uuid:00000000-0000-4000-8000-000000000000");
    assert_rule(
        &Validator::new().validate(&r),
        "EHR-VAL-022",
        "document-reference-resolves",
        "Bundle.entry[0].resource.subject.reference",
    );
}

/// JP_Composition_eDischargeSummary: the sub-sections of 300 that are 1..1.
#[test]
fn discharge_summary_required_sections() {
    let required = ["322", "342", "352", "312", "362", "333", "324", "344", "444", "424"];
    let section = |code: &str| {
        json!({"title": "t", "code": {"coding": [{"system": "http://jpfhir.jp/fhir/clins/CodeSystem/document-section", "code": code}]},
            "text": {"status": "additional", "div": "<div xmlns=\"http://www.w3.org/1999/xhtml\">t</div>"},
            "entry": [{"reference": "urn:uuid:00000000-0000-4000-8000-000000000001"}]})
    };
    let composition = |codes: &[&str]| {
        let mut structured = section("300");
        structured.as_object_mut().unwrap().remove("entry");
        structured["section"] = Value::Array(codes.iter().map(|c| section(c)).collect());
        json!({"resourceType": "Composition",
            "meta": {"profile": ["http://jpfhir.jp/fhir/eDischargeSummary/StructureDefinition/JP_Composition_eDischargeSummary"]},
            "status": "final", "type": {"coding": [{"system": "http://jpfhir.jp/fhir/Common/CodeSystem/doc-typecodes", "code": "18842-5"}]},
            "date": "2024-04-01", "author": [{"reference": "urn:uuid:00000000-0000-4000-8000-000000000002"}], "title": "退院時サマリー",
            "section": [structured]})
    };
    let slice_errors = |c: &Value| -> Vec<String> {
        errors(&Validator::new().validate(c))
            .into_iter()
            .filter(|i| i.ehr_code == "EHR-VAL-013" && i.expression == ["Composition.section[0].section"])
            .map(|i| i.diagnostics.clone())
            .collect()
    };
    assert_eq!(slice_errors(&composition(&required)), Vec::<String>::new());
    for missing in required {
        let codes: Vec<&str> = required.iter().copied().filter(|c| *c != missing).collect();
        let errs = slice_errors(&composition(&codes));
        assert!(errs.iter().any(|d| d.contains("requires at least 1")), "{missing}: {errs:?}");
    }
}

#[test]
fn legacy_oid_and_url_are_the_same_system() {
    let mut o = load("jp-clins", "Organization-Example-JP-Org-eCS-Inst-Referral01.json");
    let i = o["extension"]
        .as_array()
        .unwrap()
        .iter()
        .position(|e| e["url"].as_str().unwrap().ends_with("JP_Organization_InsuranceOrganizationNo"))
        .unwrap();
    // The URL (JP-CLINS 1.5) and the OID (JP Core 1.1.2) both pass; another system does not.
    no_errors(&o);
    o["extension"][i]["valueIdentifier"]["system"] = json!("urn:oid:1.2.392.100495.20.3.23");
    no_errors(&o);
    o["extension"][i]["valueIdentifier"]["system"] = json!("urn:oid:1.2.392.100495.20.3.61");
    assert_error(
        &Validator::new().validate(&o),
        "EHR-VAL-010",
        &format!("Organization.extension[{i}].valueIdentifier.system"),
    );
}

/// A mutation, the code and rule it must raise, and where.
type Case = (fn(&mut Value), &'static str, &'static str, String);

/// A minimal 健診結果報告書 built from jp-standards §A.3/§A.6.
fn checkup() -> Value {
    let obs = "urn:uuid:33333333-3333-4333-8333-333333333333";
    let org = "urn:uuid:44444444-4444-4444-8444-444444444444";
    json!({
        "resourceType": "Bundle",
        "meta": {"profile": [CHECKUP_BUNDLE]},
        "identifier": {"system": "http://jpfhir.jp/fhir/clins/bundle-identifier", "value": "1318814790^2025^CHK-0001"},
        "type": "document",
        "timestamp": "2025-04-01T10:00:00.000+09:00",
        "entry": [
            {"fullUrl": "urn:uuid:11111111-1111-4111-8111-111111111111", "resource": {
                "resourceType": "Composition", "meta": {"profile": [CHECKUP_COMPOSITION]}, "status": "final",
                "type": {"coding": [{"system": "http://jpfhir.jp/fhir/Common/CodeSystem/doc-typecodes", "code": "53576-5"}]},
                "category": [{"coding": [{"system": "urn:oid:2.16.840.1.113883.2.2.1.6.1001", "code": "10"}]}],
                "subject": {"reference": PATIENT_URL}, "date": "2025-04-01", "author": [{"reference": org}],
                "title": "健康診断結果のお知らせ",
                "event": [{"code": [{"coding": [{"system": "urn:oid:1.2.392.200119.6.1002", "code": "010"}]}]}],
                "section": [{"title": "検査結果",
                    "code": {"coding": [{"system": "http://jpfhir.jp/fhir/eCheckup/CodeSystem/section-code", "code": "01910"}]},
                    "entry": [{"reference": obs}]}]}},
            {"fullUrl": PATIENT_URL, "resource": load("jp-clins", "Patient-Example-JP-Patient-standard.json")},
            {"fullUrl": obs, "resource": {"resourceType": "Observation", "status": "final",
                "code": {"coding": [{"system": "urn:oid:1.2.392.200119.6.1005", "code": "9N001000000000001", "display": "身長"}]},
                "subject": {"reference": PATIENT_URL}, "valueQuantity": {"value": 170.1, "unit": "cm"}}},
            {"fullUrl": org, "resource": {"resourceType": "Organization", "name": "健診機関"}}
        ]
    })
}

#[test]
fn checkup_report() {
    let v = Validator::new();
    let ok = checkup();
    let issues = v.validate(&ok);
    assert!(errors(&issues).is_empty(), "{}", show(&errors(&issues)));
    // Hand-coded profiles are known: no "unknown profile" warning.
    assert!(issues.iter().all(|i| i.ehr_code != "EHR-VAL-016"), "{issues:?}");
    assert!(v.knows_profile(CHECKUP_BUNDLE) && v.knows_profile(CHECKUP_COMPOSITION));
    let comp = "Bundle.entry[0].resource";
    // The older doc-typecodes code is accepted too.
    let mut b = checkup();
    b["entry"][0]["resource"]["type"]["coding"][0]["code"] = json!("JPGCHKUP01");
    no_errors(&b);
    let cases: Vec<Case> = vec![
        (|b| b["type"] = json!("collection"), "EHR-VAL-028", "checkup-bundle-type", "Bundle.type".into()),
        (
            |b| b["entry"].as_array_mut().unwrap().swap(0, 1),
            "EHR-VAL-029",
            "checkup-composition-first",
            "Bundle.entry[0]".into(),
        ),
        (
            |b| b["entry"][0]["resource"]["type"]["coding"][0]["code"] = json!("57133-1"),
            "EHR-VAL-030",
            "checkup-composition-type",
            format!("{comp}.type"),
        ),
        (
            |b| b["entry"][0]["resource"]["category"][0]["coding"][0]["system"] = json!("http://example.org"),
            "EHR-VAL-031",
            "checkup-composition-category",
            format!("{comp}.category"),
        ),
        (
            |b| {
                b["entry"][0]["resource"].as_object_mut().unwrap().remove("event");
            },
            "EHR-VAL-032",
            "checkup-composition-event",
            format!("{comp}.event"),
        ),
        (
            |b| {
                b["entry"][0]["resource"]["section"][0]["code"]["coding"][0]["system"] =
                    json!("http://jpfhir.jp/fhir/clins/CodeSystem/document-section")
            },
            "EHR-VAL-033",
            "checkup-section-code",
            format!("{comp}.section[0].code"),
        ),
        (
            |b| {
                let attach = json!({"title": "添付書類", "code": {"coding": [{"system": "http://jpfhir.jp/fhir/eCheckup/CodeSystem/section-code", "code": "01995"}]}, "text": {"status": "additional", "div": "<div xmlns=\"http://www.w3.org/1999/xhtml\">a</div>"}});
                b["entry"][0]["resource"]["section"].as_array_mut().unwrap().push(attach);
            },
            "EHR-VAL-034",
            "checkup-section-attachment-xor",
            format!("{comp}.section"),
        ),
        (
            |b| b["entry"][2]["resource"]["code"] = json!({"text": "身長"}),
            "EHR-VAL-035",
            "checkup-observation-coded",
            format!("{comp}.section[0].entry[0]"),
        ),
        (|b| b["identifier"]["value"] = json!("bad"), "EHR-VAL-027", "R2152", "Bundle.identifier".into()),
        (
            |b| {
                b["entry"][0]["resource"]["section"][0]["entry"][0]["reference"] =
                    json!("urn:uuid:99999999-9999-4999-8999-999999999999")
            },
            "EHR-VAL-022",
            "document-reference-resolves",
            format!("{comp}.section[0].entry[0].reference"),
        ),
    ];
    for (mutate, code, rule, expr) in cases {
        let mut b = checkup();
        mutate(&mut b);
        assert_rule(&v.validate(&b), code, rule, &expr);
    }
    // The Composition alone, named by its profile.
    let mut c = checkup()["entry"][0]["resource"].clone();
    c.as_object_mut().unwrap().remove("section");
    assert_rule(&v.validate(&c), "EHR-VAL-034", "checkup-section-attachment-xor", "Composition.section");
}

#[test]
fn extra_profile_is_applied_to_the_root() {
    let mut b = clins_lab_bundle();
    b["meta"].as_object_mut().unwrap().remove("profile");
    b["entry"][1]["fullUrl"] = json!(PATIENT_URL);
    assert!(Validator::new().validate(&b).iter().all(|i| i.ehr_code != "EHR-VAL-021"));
    let issues = Validator::new().validate_as(&b, &[&format!("{CLINS_BUNDLE}|1")]);
    assert_rule(&issues, "EHR-VAL-021", "clins-fullUrl-unique", "Bundle.entry[1].fullUrl");
}

/// The EHR-VAL-013 findings at `Bundle.entry` (entry slices, `profile` discriminator).
fn entry_slice_errors(b: &Value) -> Vec<String> {
    errors(&Validator::new().validate(b))
        .into_iter()
        .filter(|i| i.ehr_code == "EHR-VAL-013" && i.expression == ["Bundle.entry"])
        .map(|i| i.diagnostics.clone())
        .collect()
}

/// JP_Bundle_eReferral slices `entry` by the profile of `resource`: organization is 2..4.
#[test]
fn referral_needs_two_organizations() {
    assert_eq!(entry_slice_errors(&referral()), Vec::<String>::new());
    let mut r = referral();
    r["entry"].as_array_mut().unwrap().remove(6);
    let errs = entry_slice_errors(&r);
    assert!(
        errs.iter().any(|d| d
            .starts_with("slice organization (2..4, JP_Organization_eCS) of Bundle.entry requires at least 2")
            && d.ends_with("found 1")),
        "{errs:?}"
    );
    // Membership is conformance, not the declared profile: an Organization that names
    // JP_Organization_eCS but breaks it does not count, one that conforms without naming it does.
    let mut r = referral();
    r["entry"][6]["resource"]["meta"].as_object_mut().unwrap().remove("profile");
    assert_eq!(entry_slice_errors(&r), Vec::<String>::new());
    let mut r = referral();
    r["entry"][6]["resource"].as_object_mut().unwrap().remove("name");
    let errs = entry_slice_errors(&r);
    assert!(errs.iter().any(|d| d.starts_with("slice organization ")), "{errs:?}");
    // At most 4.
    let mut r = referral();
    let org = r["entry"][6].clone();
    let entries = r["entry"].as_array_mut().unwrap();
    for n in 0..3 {
        let mut o = org.clone();
        o["fullUrl"] = json!(format!("urn:uuid:00000000-0000-4000-8000-00000000000{n}"));
        entries.push(o);
    }
    let errs = entry_slice_errors(&r);
    assert!(errs.iter().any(|d| d.contains("organization (2..4") && d.contains("at most 4")), "{errs:?}");
}

/// JP_Bundle_eDischargeSummary: encounter 1..1 (a referral's entries under the discharge Bundle
/// profile; the Composition slice fails too, as it is a referral's).
#[test]
fn discharge_summary_needs_its_encounter() {
    let as_discharge = |mut b: Value| {
        b["meta"]["profile"] = json!(["http://jpfhir.jp/fhir/clins/StructureDefinition/JP_Bundle_eDischargeSummary|1"]);
        b
    };
    let encounter = |errs: &[String]| errs.iter().any(|d| d.starts_with("slice encounter (1..1"));
    // The referral carries two JP_Encounter_eCS entries: one too many.
    let errs = entry_slice_errors(&as_discharge(referral()));
    assert!(errs.iter().any(|d| d.starts_with("slice encounter (1..1") && d.contains("at most 1")), "{errs:?}");
    let mut b = referral();
    b["entry"].as_array_mut().unwrap().remove(7);
    assert!(!encounter(&entry_slice_errors(&as_discharge(b.clone()))));
    b["entry"].as_array_mut().unwrap().remove(2);
    let errs = entry_slice_errors(&as_discharge(b));
    assert!(errs.iter().any(|d| d.starts_with("slice encounter (1..1") && d.ends_with("found 0")), "{errs:?}");
}

/// JP_Bundle_CLINS's entry slicing is closed: an entry conforming to none of its profiles fails.
#[test]
fn clins_bundle_entries_match_a_slice() {
    let mut b = clins_lab_bundle();
    let mut org = load("jp-clins", "Organization-Example-JP-Org-eCS-ReferralTo01.json");
    org["extension"] = json!([{"url": "http://jpfhir.jp/fhir/clins/Extension/StructureDefinition/JP_eCS_InstitutionNumber",
        "valueIdentifier": {"system": "http://jpfhir.jp/fhir/core/IdSystem/insurance-medical-institution-no", "value": "1318814790"}}]);
    b["entry"]
        .as_array_mut()
        .unwrap()
        .push(json!({"fullUrl": "urn:uuid:00000000-0000-4000-8000-000000000009", "resource": org}));
    let issues = Validator::new().validate(&b);
    assert!(
        errors(&issues).iter().any(|i| i.ehr_code == "EHR-VAL-014" && i.expression == ["Bundle.entry[2]"]),
        "{}",
        show(&errors(&issues))
    );
}

/// RFC 4122 reads UUID hex digits case-insensitively: an uppercase `urn:uuid:` fullUrl is valid,
/// and two fullUrls that differ only in case are the same UUID.
#[test]
fn full_urls_are_case_insensitive_uuids() {
    let mut b = clins_lab_bundle();
    b["entry"][1]["fullUrl"] = json!("urn:uuid:481835EF-0891-45DE-A006-087954AB6B7C");
    no_errors(&b);
    b["entry"][1]["fullUrl"] = json!(PATIENT_URL.to_uppercase().replace("URN:UUID:", "urn:uuid:"));
    assert_rule(&Validator::new().validate(&b), "EHR-VAL-021", "clins-fullUrl-unique", "Bundle.entry[1].fullUrl");
}

/// JP Core 1.1.2 names JLAC10 by its OID (JP_Observation_LabResult fixes it): the lab rule reads
/// it as the `master-JLAC10-17digits` URL.
#[test]
fn lab_standard_code_by_legacy_oid() {
    let mut b = clins_lab_bundle();
    b["entry"][1]["resource"]["code"]["coding"][1] = json!({"system": "urn:oid:1.2.392.200119.4.504",
        "code": "3A015000001827101", "display": "ALB"});
    let issues = Validator::new().validate(&b);
    assert!(issues.iter().all(|i| i.ehr_code != "EHR-VAL-025"), "{}", show(&errors(&issues)));
    b["entry"][1]["resource"]["code"]["coding"][1]["system"] = json!("urn:oid:1.2.392.200119.4.505");
    assert_rule(
        &Validator::new().validate(&b),
        "EHR-VAL-025",
        "clins-lab-standardCode",
        "Bundle.entry[1].resource.code.coding",
    );
}

/// Hand rules run only for the profile that asks for them, on the resource type it constrains:
/// a Bundle without a JP-CLINS profile may use absolute or repeated-form fullUrls and no
/// identifier; a hand-only profile named on another type is EHR-VAL-012 and nothing else.
#[test]
fn hand_rules_only_where_their_profile_applies() {
    let mut b = clins_lab_bundle();
    b.as_object_mut().unwrap().remove("meta");
    b.as_object_mut().unwrap().remove("identifier");
    b["entry"][0]["fullUrl"] = json!("https://ehr.example.jp/fhir/Patient/p1");
    b["entry"][1]["fullUrl"] = json!("https://ehr.example.jp/fhir/Observation/o1");
    b["entry"][1]["resource"]["subject"] = json!({"reference": "Patient/p1"});
    b["entry"][1]["resource"]["extension"][0]["valueIdentifier"]["value"] = json!("1311234567");
    b["entry"][1]["resource"]["code"]["text"] = json!("ｱﾙﾌﾞﾐﾝ");
    let issues = Validator::new().validate(&b);
    let hand: Vec<&Issue> = issues.iter().filter(|i| ("EHR-VAL-020".."EHR-VAL-038").contains(&i.ehr_code)).collect();
    assert!(hand.is_empty(), "{}", show(&hand));
    let mut p = load("jp-clins", "Patient-Example-JP-Patient-standard.json");
    p["meta"]["profile"] = json!([CHECKUP_BUNDLE]);
    let issues = Validator::new().validate(&p);
    let errs = errors(&issues);
    assert_eq!(errs.len(), 1, "{}", show(&errs));
    assert_eq!(
        (errs[0].ehr_code, errs[0].expression.as_slice()),
        ("EHR-VAL-012", &["Patient.meta.profile[0]".to_string()][..])
    );
}

/// A large submission: every entry declares its profile, so entry slicing spends no conformance
/// run (the budget is not what admits them), and `bdl-7` / fullUrl uniqueness hold.
#[test]
fn large_clins_bundle() {
    let mut b = clins_lab_bundle();
    let obs = b["entry"][1].clone();
    let entries = b["entry"].as_array_mut().unwrap();
    for i in 0..300 {
        let mut e = obs.clone();
        e["fullUrl"] = json!(format!("urn:uuid:481835ef-0891-45de-a006-{i:012x}"));
        entries.push(e);
    }
    no_errors(&b);
    b["entry"][300]["fullUrl"] = b["entry"][7]["fullUrl"].clone();
    assert_rule(&Validator::new().validate(&b), "EHR-VAL-021", "clins-fullUrl-unique", "Bundle.entry[300].fullUrl");
}
