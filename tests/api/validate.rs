//! `$validate` through the real HTTP API, and `ehr validate` as a built binary.

use ehr_testkit::{TestApp, json, outcome};
use serde_json::{Value, json};
use std::path::PathBuf;
use std::process::Command;

const MEDREQ_ECS: &str = "http://jpfhir.jp/fhir/eCS/StructureDefinition/JP_MedicationRequest_eCS";

/// The IG examples shared with the ehr-fhir validator tests.
fn examples(dir: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("crates/fhir/tests/validate/fixtures").join(dir)
}

fn example(dir: &str, name: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(examples(dir).join(name)).unwrap()).unwrap()
}

fn ext_eye() -> Value {
    example("jp-clins-errors", "MedicationRequest-ErrorExample-JP-MedReq-ExtEye-Total1.json")
}

fn severities(oo: &Value) -> Vec<&str> {
    oo["issue"].as_array().unwrap().iter().map(|i| i["severity"].as_str().unwrap()).collect()
}

fn rules(oo: &Value) -> Vec<&str> {
    oo["issue"].as_array().unwrap().iter().filter_map(|i| i["details"]["coding"][1]["code"].as_str()).collect()
}

#[tokio::test]
async fn valid_and_invalid_resources() {
    let app = TestApp::spawn().await;
    let ok = example("jp-clins", "Bundle-Bundle-CLINS-Referral-Example-01.json");
    let oo = json(app.post("/Bundle/$validate", &ok).await, 200).await;
    assert_eq!(oo["resourceType"], "OperationOutcome");
    assert!(!severities(&oo).contains(&"error"), "{oo}");

    let oo = json(app.post("/MedicationRequest/$validate", &ext_eye()).await, 200).await;
    let err = oo["issue"].as_array().unwrap().iter().find(|i| i["severity"] == "error").unwrap();
    assert_eq!(err["expression"], json!(["MedicationRequest"]));
    assert_eq!(err["details"]["coding"][0]["code"], "EHR-VAL-018");
    assert_eq!(err["details"]["coding"][1]["code"], "needs-anyOfStandardCode-medication");

    // The second IG error example fails on the master codes.
    let sid = example("jp-clins-errors", "MedicationRequest-ErrorExample-JP-MedReq-PO-SID-28days.json");
    let oo = json(app.post("/MedicationRequest/$validate", &sid).await, 200).await;
    assert!(rules(&oo).contains(&"code-display-conflict"), "{oo}");

    // The instance form.
    let id = ext_eye()["id"].as_str().unwrap().to_owned();
    let oo = json(app.post(&format!("/MedicationRequest/{id}/$validate"), &ext_eye()).await, 200).await;
    assert!(severities(&oo).contains(&"error"), "{oo}");
}

#[tokio::test]
async fn parameters_form_and_profile() {
    let app = TestApp::spawn().await;
    let mut plain = ext_eye();
    plain["meta"].as_object_mut().unwrap().remove("profile");
    // Without a profile the invariant does not apply.
    let oo = json(app.post("/MedicationRequest/$validate", &plain).await, 200).await;
    assert!(!rules(&oo).contains(&"needs-anyOfStandardCode-medication"), "{oo}");
    let params = json!({"resourceType": "Parameters", "parameter": [
        {"name": "resource", "resource": plain},
        {"name": "mode", "valueCode": "create"},
        {"name": "profile", "valueUri": MEDREQ_ECS}]});
    let oo = json(app.post("/MedicationRequest/$validate", &params).await, 200).await;
    assert!(rules(&oo).contains(&"needs-anyOfStandardCode-medication"), "{oo}");
    let oo = json(app.post(&format!("/MedicationRequest/$validate?profile={MEDREQ_ECS}"), &plain).await, 200).await;
    assert!(rules(&oo).contains(&"needs-anyOfStandardCode-medication"), "{oo}");
}

#[tokio::test]
async fn xml_request_and_response() {
    let app = TestApp::spawn().await;
    let xml = ehr_fhir::xml::to_xml(&ext_eye()).unwrap();
    let resp = app
        .req(reqwest::Method::POST, "/MedicationRequest/$validate")
        .header("content-type", "application/fhir+xml")
        .header("accept", "application/fhir+xml")
        .body(xml)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let ct = resp.headers()["content-type"].to_str().unwrap().to_owned();
    assert!(ct.starts_with("application/fhir+xml"), "{ct}");
    let body = resp.text().await.unwrap();
    assert!(body.contains("<OperationOutcome"), "{body}");
    assert!(body.contains("needs-anyOfStandardCode-medication"), "{body}");
    let oo = ehr_fhir::xml::from_xml(&body).unwrap();
    assert_eq!(oo["issue"][0]["expression"], json!(["MedicationRequest"]), "{oo}");
}

#[tokio::test]
async fn rejections() {
    let app = TestApp::spawn().await;
    let patient = json!({"resourceType": "Patient"});
    // The body's type must be the path's.
    let oo = outcome(app.post("/MedicationRequest/$validate", &patient).await, 400, "invalid").await;
    assert_eq!(oo["issue"][0]["details"]["coding"][0]["code"], "EHR-VLD-003");
    // A Parameters without a resource.
    let params = json!({"resourceType": "Parameters", "parameter": [{"name": "mode", "valueCode": "create"}]});
    outcome(app.post("/Patient/$validate", &params).await, 400, "structure").await;
    // No token.
    let resp = app
        .client
        .post(app.fhir("/Patient/$validate"))
        .header("content-type", "application/fhir+json")
        .body(patient.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 401);
    // The REST routes beside it still answer.
    let created = app.create(&json!({"resourceType": "Patient", "gender": "female"})).await;
    let id = created["id"].as_str().unwrap();
    json(app.get(&format!("/Patient/{id}")).await, 200).await;
}

fn ehr(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_ehr")).arg("validate").args(args).output().unwrap()
}

#[test]
fn cli_over_the_examples() {
    let ok = ehr(&[examples("jp-clins").to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&ok.stdout);
    assert_eq!(ok.status.code(), Some(0), "{stdout}\n{}", String::from_utf8_lossy(&ok.stderr));
    assert!(stdout.lines().filter(|l| l.ends_with(": OK") || l.contains(": OK (")).count() >= 50, "{stdout}");

    let bad = ehr(&[examples("jp-clins-errors").to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&bad.stdout);
    assert_eq!(bad.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("error MedicationRequest [needs-anyOfStandardCode-medication] EHR-VAL-018:"), "{stdout}");
    assert!(
        stdout.contains(
            "error MedicationRequest.medicationCodeableConcept.coding[0] [code-display-conflict] EHR-TERM-016:"
        ),
        "{stdout}"
    );

    let json_out = ehr(&["--json", examples("jp-clins-errors").to_str().unwrap()]);
    assert_eq!(json_out.status.code(), Some(1));
    let lines: Vec<Value> =
        String::from_utf8_lossy(&json_out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 2);
    assert!(lines.iter().all(|oo| oo["resourceType"] == "OperationOutcome"));

    let dir = std::env::temp_dir().join(format!("ehr-validate-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let broken = dir.join("broken.json");
    std::fs::write(&broken, "{").unwrap();
    let xml = dir.join("patient.xml");
    let patient = example("jp-clins", "Patient-Example-JP-Patient-standard.json");
    std::fs::write(&xml, ehr_fhir::xml::to_xml(&patient).unwrap()).unwrap();
    let out = ehr(&[xml.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stdout));
    let out = ehr(&[broken.to_str().unwrap(), xml.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("broken.json"));
    let _ = std::fs::remove_dir_all(&dir);
}
