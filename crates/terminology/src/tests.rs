//! Tests across modules: the shipped subset, loaders on fixture files (UTF-8 and Shift_JIS),
//! resource checks on the JP-CLINS examples, and the HTTP routes through `router()`.

use crate::systems::{self, SystemId};
use crate::{MasterFormat, Strictness, Terminology, TerminologyError, property};
use ehr_core::Severity;
use serde_json::{Value, json};

const HOT_SJIS: &[u8] = include_bytes!("../tests/fixtures/MEDIS_sample_sjis.txt");
const Y_UTF8: &[u8] = include_bytes!("../tests/fixtures/y_sample_utf8.csv");
const NMAIN_BAD_SJIS: &[u8] = include_bytes!("../tests/fixtures/nmain_bad_line_sjis.txt");

fn fixture(name: &str) -> Value {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn builtin() -> Terminology {
    Terminology::builtin().unwrap()
}

/// A fresh directory under the system temp dir, removed when dropped.
struct TempDir(std::path::PathBuf);

impl TempDir {
    fn new(files: &[(&str, &[u8])]) -> Self {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let dir = std::env::temp_dir().join(format!("ehr-terminology-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for (name, bytes) in files {
            std::fs::write(dir.join(name), bytes).unwrap();
        }
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn builtin_loads_every_shipped_file() {
    let t = builtin();
    assert_eq!(t.concept_count(SystemId::ClinsCoreJlac10), 55 + 437);
    assert_eq!(t.concept_count(SystemId::ClinsInfectionJlac10), 53 + 255);
    assert_eq!(t.concept_count(SystemId::Jlac10), 35);
    assert_eq!(t.concept_count(SystemId::SampleMaterial), 9);
    assert_eq!(t.concept_count(SystemId::Yj), 11);
    assert_eq!(t.concept_count(SystemId::Hot9), 9);
    assert_eq!(t.concept_count(SystemId::DiseaseKeyNumber), 8);
    assert_eq!(t.concept_count(SystemId::GeneralName), 2);
    assert_eq!(t.concept_count(SystemId::ReceiptDrug), 1);
}

#[test]
fn lookup_jlac10_has_structure_and_names() {
    let t = builtin();
    let ast = t.lookup(systems::JLAC10, "3B035000002327201").unwrap();
    assert_eq!(ast.display, "AST(GOT)");
    let props: Vec<(String, Value)> = ast.properties.iter().map(|p| (p.code.clone(), p.value_json().1)).collect();
    assert!(props.contains(&(property::ANALYTE.into(), json!("3B035"))));
    assert!(props.contains(&(
        property::MATERIAL.into(),
        json!({"system": systems::SAMPLE_MATERIAL, "code": "023", "display": "血清"})
    )));
    assert!(props.contains(&(property::MEASUREMENT_METHOD_NAME.into(), json!("紫外吸光光度法(UV法)"))));
    // The legacy OID names the same system.
    assert!(t.lookup("urn:oid:1.2.392.200119.4.504", "3B035000002327201").is_some());
    // JP-CLINS core lab: a child of ALB, with the package's properties and a parent.
    let alb = t.lookup(systems::CLINS_CORE_JLAC10, "3A015000001827101").unwrap();
    assert_eq!(alb.display, "ALB");
    assert!(alb.designations.iter().any(|d| d.value == "アルブミン"));
    assert_eq!(alb.property(property::PARENT).next(), Some(&crate::PropertyValue::Code("ALB".into())));
    assert_eq!(t.lookup(systems::SAMPLE_MATERIAL, "023").unwrap().display, "血清");
}

#[test]
fn lookup_drug_cross_maps() {
    let t = builtin();
    let yj = t.lookup(systems::YJ, "2171022F6276").unwrap();
    assert_eq!(yj.display, "アムロジピンＯＤ錠１０ｍｇ");
    let hot9: Vec<Value> = yj.property(property::HOT9).map(|v| json!(format!("{v:?}"))).collect();
    assert_eq!(hot9.len(), 1);
    assert!(hot9[0].as_str().unwrap().contains("121431401"));
    let hot9 = t.lookup("urn:oid:1.2.392.200119.4.403.1", "121431401").unwrap();
    assert!(hot9.property(property::YJ).next().is_some());
    let loxonin = t.lookup(systems::RECEIPT_DRUG, "620098801").unwrap();
    assert_eq!(loxonin.display, "ロキソニン錠６０ｍｇ");
    assert!(t.lookup(systems::YJ, "1149019F1560").unwrap().property(property::RECEIPT).next().is_some());
    let disease = t.lookup(systems::DISEASE_KEY_NUMBER, "20054178").unwrap();
    assert_eq!(disease.display, "胃癌");
    assert!(disease.property(property::ICD10).next().is_some());
    assert_eq!(t.lookup(systems::DISEASE_EXCHANGE_CODE, "L3RF").unwrap().display, "噴門癌");
}

#[test]
fn validate_code_by_shape_master_and_display() {
    let t = builtin();
    let v = t.validate_code(systems::JLAC10, "3B035000002327201", Some("AST(GOT)"));
    assert!(v.result && v.message.is_none());
    assert_eq!(v.display.as_deref(), Some("AST(GOT)"));
    // Full-width letters and spaces do not matter; another name does.
    assert!(t.validate_code(systems::YJ, "2316009F1022", Some("ミヤBM錠")).result);
    let v = t.validate_code(systems::YJ, "2316009F1022", Some("ビオフェルミン錠"));
    assert!(!v.result);
    assert_eq!(v.display.as_deref(), Some("ミヤＢＭ錠"));
    // Bad shape: rejected with no master needed.
    let v = t.validate_code(systems::JLAC10, "3B03500000232720", None);
    assert!(!v.result && v.message.unwrap().contains("17 characters"));
    // Well-formed, not in the partial subset: valid in Shape mode, not in Master mode.
    let v = t.validate_code(systems::JLAC10, "3B035000002399901", None);
    assert!(v.result && v.message.unwrap().contains("not in the loaded master"));
    assert!(!t.with_strictness(Strictness::Master).validate_code(systems::JLAC10, "3B035000002399901", None).result);
    // A complete code system: a miss is invalid whatever the strictness.
    assert!(!t.validate_code(systems::CLINS_CORE_JLAC10, "3B035000002399901", None).result);
    // No table at all for ICD-10: the form decides.
    assert!(t.validate_code(systems::ICD10_JP, "K269", None).result);
    assert!(!t.validate_code(systems::ICD10_JP, "K26X", None).result);
    assert!(!t.validate_code("http://example.org/cs", "1", None).result);
}

#[test]
fn check_coding_severities() {
    let t = builtin();
    assert!(t.check_coding(&json!({"system": "http://loinc.org", "code": "nonsense"})).is_empty());
    assert!(t.check_coding(&json!({"system": systems::YJ, "code": "2171022F6276"})).is_empty());
    let bad = t.check_coding(&json!({"system": systems::HOT9, "code": "1012309020"}));
    assert_eq!(bad.len(), 1);
    assert_eq!((bad[0].severity, bad[0].ehr_code, bad[0].code.code()), (Severity::Error, "EHR-TERM-001", "value"));
    let miss = t.check_coding(&json!({"system": systems::HOT9, "code": "999999999"}));
    assert_eq!((miss[0].severity, miss[0].ehr_code), (Severity::Warning, "EHR-TERM-002"));
    let strict = t.with_strictness(Strictness::Master);
    assert_eq!(
        strict.check_coding(&json!({"system": systems::HOT9, "code": "999999999"}))[0].severity,
        Severity::Error
    );
    let display = t.check_coding(&json!({"system": systems::SAMPLE_MATERIAL, "code": "023", "display": "血漿"}));
    assert_eq!((display[0].severity, display[0].ehr_code), (Severity::Warning, "EHR-TERM-004"));
    let not_string = t.check_coding(&json!({"system": systems::YJ, "code": 2171022}));
    assert_eq!(not_string[0].severity, Severity::Error);
    // ICD-10 has no table: nothing in Shape mode, a warning in Master mode.
    assert!(t.check_coding(&json!({"system": systems::ICD10_JP, "code": "I10"})).is_empty());
    assert_eq!(strict.check_coding(&json!({"system": systems::ICD10_JP, "code": "I10"}))[0].ehr_code, "EHR-TERM-005");
}

#[test]
fn missing_code_whose_display_names_another_concept() {
    let t = builtin();
    // The IG error example: 2124030F2ZZZ does not exist; its display is 1124030F2ZZZ's.
    let coding =
        json!({"system": systems::GENERAL_NAME, "code": "2124030F2ZZZ", "display": "【般】クアゼパム錠２０ｍｇ"});
    let issues = t.check_coding(&coding);
    assert_eq!(issues.len(), 1, "{issues:?}");
    assert_eq!((issues[0].severity, issues[0].ehr_code), (Severity::Error, "EHR-TERM-016"));
    assert_eq!(issues[0].rule.as_deref(), Some(crate::CODE_DISPLAY_CONFLICT));
    assert!(issues[0].diagnostics.contains("1124030F2ZZZ"), "{}", issues[0].diagnostics);
    // Width and spaces are folded as for display checks.
    assert_eq!(
        t.check_coding(
            &json!({"system": systems::GENERAL_NAME, "code": "2124030F2ZZZ", "display": "【般】クアゼパム錠20mg"})
        )[0]
        .ehr_code,
        "EHR-TERM-016"
    );
    let v = t.validate_code(systems::GENERAL_NAME, "2124030F2ZZZ", Some("【般】クアゼパム錠２０ｍｇ"));
    assert!(!v.result && v.message.unwrap().contains("1124030F2ZZZ"));
    // A missing code with an unknown display stays a miss of the partial master (warning).
    let miss =
        t.check_coding(&json!({"system": systems::GENERAL_NAME, "code": "2124030F2ZZZ", "display": "【般】なにか"}));
    assert_eq!((miss[0].severity, miss[0].ehr_code), (Severity::Warning, "EHR-TERM-002"));
    let issues = t.check_resource(&fixture("MedicationRequest-ErrorExample-JP-MedReq-PO-SID-28days.json"));
    assert!(
        issues.iter().any(|i| i.ehr_code == "EHR-TERM-016"
            && i.expression == ["MedicationRequest.medicationCodeableConcept.coding[0]"]),
        "{issues:?}"
    );
}

#[test]
fn check_resource_on_jp_clins_examples() {
    let t = builtin();
    for clean in [
        "Observation-Example-JP-Obs-LabResult-eCS-Alb.json",
        "MedicationRequest-Example-JP-MedReq-PO-SID-90-AMB.json",
        "Bundle-Bundle-CLINS-Referral-Example-01.json",
    ] {
        let issues = t.check_resource(&fixture(clean));
        assert!(issues.iter().all(|i| i.severity != Severity::Error), "{clean}: {issues:?}");
    }
    // The JAMI ePrescriptionData example carries a 10-digit HOT9 under the legacy OID.
    let issues = t.check_resource(&fixture("MedicationRequest-JP-MedReq-ePreData-Example-zenzou01per03.json"));
    assert_eq!(issues.len(), 1, "{issues:?}");
    assert_eq!(issues[0].expression, ["MedicationRequest.medicationCodeableConcept.coding[0]"]);
    // A contained Specimen with a wrong material code, located inside the Observation.
    let obs = json!({"resourceType": "Observation",
        "contained": [{"resourceType": "Specimen", "id": "s", "type": {"coding": [{"system": systems::SAMPLE_MATERIAL, "code": "23"}]}}],
        "code": {"coding": [{"system": systems::JLAC10, "code": "3B035000002327201"}]}});
    let issues = t.check_resource(&obs);
    assert_eq!(issues.len(), 1);
    assert_eq!(issues[0].expression, ["Observation.contained[0].type.coding[0]"]);
}

#[test]
fn hot_master_in_shift_jis_with_quotes() {
    let t = Terminology::empty();
    let n = t.load_bytes(MasterFormat::HotMaster, HOT_SJIS, "MEDIS_sample_sjis.txt").unwrap();
    // Row 1: HOT13, HOT9, HOT7, YJ, receipt; row 2 adds a HOT13; row 3: HOT13, HOT9, HOT7, YJ.
    assert_eq!(n, 5 + 5 + 4);
    assert_eq!(t.concept_count(SystemId::Hot13), 3);
    assert_eq!(t.concept_count(SystemId::Yj), 2);
    let yj = t.lookup(systems::YJ, "1999990F1010").unwrap();
    assert_eq!(yj.display, "テスト錠１０ｍｇ");
    assert_eq!(yj.property(property::HOT13).count(), 2, "both packages are cross-mapped");
    assert_eq!(t.lookup(systems::HOT7, "1999991").unwrap().display, "試験散");
}

#[test]
fn receipt_master_in_utf8() {
    let t = Terminology::empty();
    assert_eq!(t.load_bytes(MasterFormat::ReceiptDrug, Y_UTF8, "y_sample_utf8.csv").unwrap(), 2);
    let c = t.lookup(systems::RECEIPT_DRUG, "620999902").unwrap();
    assert_eq!(c.display, "試験液,\"特\"");
    assert_eq!(c.designations[0].value, "ｼｹﾝｴｷ");
    assert_eq!(c.designations[0].language.as_deref(), Some(crate::KANA));
    let first = t.lookup(systems::RECEIPT_DRUG, "620999901").unwrap();
    assert_eq!(first.property(property::YAKKA).next(), Some(&crate::PropertyValue::Code("1999990F1010".into())));
}

#[test]
fn a_bad_line_names_its_line_and_loads_nothing() {
    let t = builtin();
    let before = t.concept_count(SystemId::DiseaseKeyNumber);
    let err = t.load_bytes(MasterFormat::DiseaseNames, NMAIN_BAD_SJIS, "nmain_bad_line_sjis.txt").unwrap_err();
    match &err {
        TerminologyError::BadLine { file, line, reason } => {
            assert_eq!((file.as_str(), *line), ("nmain_bad_line_sjis.txt", 3));
            assert!(reason.contains("8 digits"), "{reason}");
        }
        e => panic!("{e}"),
    }
    assert_eq!(err.to_string(), "nmain_bad_line_sjis.txt line 3: column 2: a MEDIS key number has 8 digits");
    // The two good lines before it were not loaded.
    assert_eq!(t.concept_count(SystemId::DiseaseKeyNumber), before);
    assert!(t.lookup(systems::DISEASE_KEY_NUMBER, "29999991").is_none());
}

#[test]
fn load_dir_is_all_or_nothing() {
    let t = Terminology::empty();
    let ok = TempDir::new(&[("MEDIS_sample_sjis.txt", HOT_SJIS), ("y_sample_utf8.csv", Y_UTF8), ("README.md", b"x")]);
    let report = t.load_dir(&ok.0).unwrap();
    assert_eq!(report.files.len(), 2);
    assert_eq!(report.skipped.len(), 1);
    assert_eq!(t.concept_count(SystemId::ReceiptDrug), 2);

    let t = Terminology::empty();
    let bad = TempDir::new(&[("MEDIS_sample_sjis.txt", HOT_SJIS), ("nmain_bad.txt", NMAIN_BAD_SJIS)]);
    assert!(matches!(t.load_dir(&bad.0), Err(TerminologyError::BadLine { line: 3, .. })));
    assert_eq!(t.concept_count(SystemId::Hot13), 0, "the good file was not loaded either");
}

#[test]
fn later_masters_win_the_display() {
    let t = builtin();
    let csv = ",1041958,01,,,,,2316009F1022,,,,ミヤＢＭ錠（２０ｍｇ）,,\n";
    t.load_bytes(MasterFormat::HotMaster, csv.as_bytes(), "hot_update.csv").unwrap();
    let c = t.lookup(systems::YJ, "2316009F1022").unwrap();
    assert_eq!(c.display, "ミヤＢＭ錠（２０ｍｇ）");
    assert!(c.matches_display("ミヤＢＭ錠"), "the earlier name stays a designation");
}

#[test]
fn aliases_can_be_added_for_unverified_uris() {
    let t = builtin().with_alias("urn:oid:1.2.3.4.5", systems::RECEIPT_DRUG).unwrap();
    assert!(t.lookup("urn:oid:1.2.3.4.5", "620098801").is_some());
    assert!(builtin().with_alias("urn:x", "http://example.org").is_err());
}

mod http {
    use super::*;
    use crate::http::{TerminologyState, router};
    use axum::body::Body;
    use axum::http::{Request, StatusCode, header};
    use ehr_auth::{Claims, DEV_ISSUER, DevSigner, Verifier};
    use ehr_core::{Clock, SystemClock};
    use ehr_http::AuthState;
    use std::sync::Arc;
    use tower::ServiceExt;

    async fn app() -> (axum::Router, String) {
        let auth = AuthState { verifier: Verifier::development().await.unwrap(), clock: Arc::new(SystemClock) };
        let now = SystemClock.now().timestamp();
        // No resource scope: any authenticated caller may look codes up.
        let claims = Claims {
            iss: DEV_ISSUER.into(),
            sub: "nurse-1".into(),
            exp: now + 600,
            iat: now,
            tenant: "hospital-a".into(),
            scope: "openid".into(),
            ..Claims::default()
        };
        let token = DevSigner::new().unwrap().sign(&claims).unwrap();
        (router(TerminologyState { terminology: builtin(), auth }), token)
    }

    async fn send(app: &axum::Router, req: Request<Body>) -> (StatusCode, Value) {
        let resp = app.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        assert_eq!(resp.headers()[header::CONTENT_TYPE], ehr_http::FHIR_JSON);
        let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20).await.unwrap();
        (status, serde_json::from_slice(&bytes).unwrap())
    }

    fn get(uri: &str, token: &str) -> Request<Body> {
        Request::get(uri).header(header::AUTHORIZATION, format!("Bearer {token}")).body(Body::empty()).unwrap()
    }

    fn post(uri: &str, token: &str, body: Value) -> Request<Body> {
        Request::post(uri)
            .header(header::AUTHORIZATION, format!("Bearer {token}"))
            .header(header::CONTENT_TYPE, "application/fhir+json")
            .body(Body::from(body.to_string()))
            .unwrap()
    }

    fn param<'a>(p: &'a Value, name: &str) -> Vec<&'a Value> {
        p["parameter"].as_array().unwrap().iter().filter(|x| x["name"] == name).collect()
    }

    fn issue_code(oo: &Value) -> (&str, &str) {
        (oo["issue"][0]["code"].as_str().unwrap(), oo["issue"][0]["details"]["coding"][0]["code"].as_str().unwrap())
    }

    #[tokio::test]
    async fn lookup_get_and_post() {
        let (app, token) = app().await;
        let uri = format!("/CodeSystem/$lookup?system={}&code=3B045000002327201", systems::JLAC10);
        let (status, p) = send(&app, get(&uri, &token)).await;
        assert_eq!(status, StatusCode::OK, "{p}");
        assert_eq!(p["resourceType"], "Parameters");
        assert_eq!(param(&p, "display")[0]["valueString"], "ALT(GPT)");
        assert_eq!(param(&p, "name")[0]["valueString"], "JLAC10");
        let material = param(&p, "property")
            .into_iter()
            .find(|x| x["part"][0]["valueCode"] == property::MATERIAL)
            .map(|x| x["part"][1]["valueCoding"].clone());
        assert_eq!(material, Some(json!({"system": systems::SAMPLE_MATERIAL, "code": "023", "display": "血清"})));

        let body = json!({"resourceType": "Parameters", "parameter": [
            {"name": "coding", "valueCoding": {"system": "urn:oid:1.2.392.200119.4.101.2", "code": "20061593"}},
            {"name": "property", "valueCode": "icd10"}]});
        let (status, p) = send(&app, post("/CodeSystem/$lookup", &token, body)).await;
        assert_eq!(status, StatusCode::OK, "{p}");
        assert_eq!(param(&p, "display")[0]["valueString"], "高血圧症");
        let kana = &param(&p, "designation")[0]["part"];
        assert_eq!(kana[0], json!({"name": "language", "valueCode": "ja-Kana"}));
        assert!(param(&p, "property").is_empty(), "only the asked-for property, which this concept lacks");
    }

    #[tokio::test]
    async fn lookup_errors_are_operation_outcomes() {
        let (app, token) = app().await;
        let uri = format!("/CodeSystem/$lookup?system={}&code=3B045000002399901", systems::JLAC10);
        let (status, oo) = send(&app, get(&uri, &token)).await;
        assert_eq!((status, issue_code(&oo)), (StatusCode::NOT_FOUND, ("not-found", "EHR-TERM-006")));
        let (status, oo) = send(&app, get("/CodeSystem/$lookup?code=1", &token)).await;
        assert_eq!((status, issue_code(&oo)), (StatusCode::BAD_REQUEST, ("required", "EHR-TERM-009")));
        let (status, oo) = send(&app, get("/CodeSystem/$lookup?system=http://example.org&code=1", &token)).await;
        assert_eq!((status, issue_code(&oo)), (StatusCode::NOT_FOUND, ("not-found", "EHR-TERM-007")));
        let (status, oo) = send(&app, post("/CodeSystem/$lookup", &token, json!({"resourceType": "Patient"}))).await;
        assert_eq!((status, issue_code(&oo)), (StatusCode::BAD_REQUEST, ("invalid", "EHR-TERM-010")));
        let unauthenticated = Request::get("/CodeSystem/$lookup?code=1").body(Body::empty()).unwrap();
        let (status, _) = send(&app, unauthenticated).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        let (status, _) = send(&app, Request::delete("/CodeSystem/$lookup").body(Body::empty()).unwrap()).await;
        assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    }

    #[tokio::test]
    async fn validate_code_with_implicit_and_published_value_sets() {
        let (app, token) = app().await;
        let vs = SystemId::Yj.implicit_value_set();
        let uri = format!("/ValueSet/$validate-code?url={}&code=2316009F1022&display=ミヤBM錠", urlencode(&vs));
        let (status, p) = send(&app, get(&uri, &token)).await;
        assert_eq!(status, StatusCode::OK, "{p}");
        assert_eq!(param(&p, "result")[0]["valueBoolean"], true);
        assert_eq!(param(&p, "display")[0]["valueString"], "ミヤＢＭ錠");

        // A system outside the value set.
        let uri = format!("/ValueSet/$validate-code?url={}&system={}&code=121431401", urlencode(&vs), systems::HOT9);
        let (_, p) = send(&app, get(&uri, &token)).await;
        assert_eq!(param(&p, "result")[0]["valueBoolean"], false);

        // A CodeableConcept against the JP-CLINS lab value set: valid if any coding is.
        let body = json!({"resourceType": "Parameters", "parameter": [
            {"name": "url", "valueUri": "http://jpfhir.jp/fhir/eCS/ValueSet/JP_eCS_ObservationLabResultCode_VS"},
            {"name": "codeableConcept", "valueCodeableConcept": {"coding": [
                {"system": "http://jpfhir.jp/fhir/clins/CodeSystem/JP_CLINS_ObsLabResult_LocalCode_CS", "code": "0198394_082"},
                {"system": systems::CLINS_CORE_JLAC10, "code": "3H015000001826101", "display": "K"}]}}]});
        let (status, p) = send(&app, post("/ValueSet/$validate-code", &token, body)).await;
        assert_eq!(status, StatusCode::OK, "{p}");
        assert_eq!(param(&p, "result")[0]["valueBoolean"], true, "{p}");

        // A badly formed code: result false with the reason.
        let uri = format!("/ValueSet/$validate-code?system={}&code=ABC", systems::SAMPLE_MATERIAL);
        let (_, p) = send(&app, get(&uri, &token)).await;
        assert_eq!(param(&p, "result")[0]["valueBoolean"], false);
        assert!(param(&p, "message")[0]["valueString"].as_str().unwrap().contains("3 digits"));

        let (status, oo) = send(&app, get("/ValueSet/$validate-code?url=http://example.org/vs&code=1", &token)).await;
        assert_eq!((status, issue_code(&oo)), (StatusCode::NOT_FOUND, ("not-found", "EHR-TERM-008")));
        let (status, oo) = send(&app, get("/ValueSet/$validate-code?code=1", &token)).await;
        assert_eq!((status, issue_code(&oo)), (StatusCode::BAD_REQUEST, ("required", "EHR-TERM-009")));
    }

    fn urlencode(s: &str) -> String {
        form_urlencoded::byte_serialize(s.as_bytes()).collect()
    }
}

/// The display sent may be free text: no message repeats it (only codes and master names).
#[test]
fn messages_never_repeat_the_display_sent() {
    let t = builtin();
    let free_text = "山田太郎さん用メモ";
    let issues = t.check_coding(&json!({"system": systems::YJ, "code": "2316009F1022", "display": free_text}));
    assert_eq!(issues.len(), 1, "{issues:?}");
    assert_eq!(issues[0].ehr_code, "EHR-TERM-004");
    assert!(!issues[0].diagnostics.contains(free_text), "{}", issues[0].diagnostics);
    assert!(issues[0].diagnostics.contains("ミヤＢＭ錠"), "the master's name is given: {}", issues[0].diagnostics);
    let v = t.validate_code(systems::YJ, "2316009F1022", Some(free_text));
    assert!(!v.result && !v.message.unwrap().contains(free_text));
    let missing = t.check_coding(&json!({"system": systems::YJ, "code": "2316009F1030", "display": free_text}));
    assert!(missing.iter().all(|i| !i.diagnostics.contains(free_text)), "{missing:?}");
}

/// The display index of a table is rebuilt after a load: a name only the new file gives is found.
#[test]
fn code_display_conflict_sees_later_loads() {
    let t = builtin();
    let coding = json!({"system": systems::YJ, "code": "2316009F1030", "display": "ミヤＢＭ錠（２０ｍｇ）"});
    // Builds the index of the YJ table: no concept has that name yet.
    assert_eq!(t.check_coding(&coding)[0].ehr_code, "EHR-TERM-002");
    let csv = ",1041958,01,,,,,2316009F1022,,,,ミヤＢＭ錠（２０ｍｇ）,,\n";
    t.load_bytes(MasterFormat::HotMaster, csv.as_bytes(), "hot_update.csv").unwrap();
    let issues = t.check_coding(&coding);
    assert_eq!(issues[0].ehr_code, "EHR-TERM-016", "{issues:?}");
    assert!(issues[0].diagnostics.contains("2316009F1022"), "{}", issues[0].diagnostics);
    // Designations name their concept too (the earlier display stays one).
    let by_old_name = json!({"system": systems::YJ, "code": "2316009F1030", "display": "ミヤBM錠"});
    assert_eq!(t.check_coding(&by_old_name)[0].ehr_code, "EHR-TERM-016");
}
