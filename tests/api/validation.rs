use crate::fixture;
use ehr_testkit::{TestApp, json, outcome};
use serde_json::{Value, json};

#[tokio::test]
async fn official_jp_core_and_jp_clins_examples_are_accepted() {
    let app = TestApp::spawn().await;
    for name in [
        "Patient-jp-patient-example-1.json",
        "Patient-Example-JP-Patient-standard.json",
        "Encounter-jp-encounter-example-1.json",
        "Encounter-Example-JP-Encounter-eCS-01.json",
        "Condition-jp-condition-example-1.json",
        "Condition-Example-JP-Condition-eCS-01.json",
        "AllergyIntolerance-jp-allergyintolerance-example-1.json",
        "AllergyIntolerance-Example-JP-AllergyIntolerance-eCS-01.json",
        "Observation-jp-observation-labresult-example-1.json",
        "Observation-Example-JP-Obs-LabResult-eCS-Alb.json",
    ] {
        let r = fixture(name);
        let ty = r["resourceType"].as_str().unwrap().to_owned();
        let id = r["id"].as_str().unwrap().to_owned();
        let resp = app.put(&format!("/{ty}/{id}"), &r).await;
        let status = resp.status().as_u16();
        assert_eq!(status, 201, "{name}: {}", resp.text().await.unwrap());
    }
}

fn jp_patient() -> Value {
    fixture("Patient-jp-patient-example-1.json")
}

async fn issues(resp: reqwest::Response, status: u16) -> Vec<(String, Vec<String>)> {
    let oo = json(resp, status).await;
    assert_eq!(oo["resourceType"], "OperationOutcome");
    oo["issue"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            let exprs =
                i["expression"].as_array().into_iter().flatten().map(|e| e.as_str().unwrap().to_owned()).collect();
            (i["code"].as_str().unwrap().to_owned(), exprs)
        })
        .collect()
}

#[tokio::test]
async fn jp_patient_without_identifier_is_unprocessable_with_a_fhirpath() {
    let app = TestApp::spawn().await;
    let mut p = jp_patient();
    p.as_object_mut().unwrap().remove("identifier");
    p.as_object_mut().unwrap().remove("id");
    let found = issues(app.post("/Patient", &p).await, 422).await;
    assert!(
        found.iter().any(|(code, ex)| code == "required" && ex.iter().any(|e| e == "Patient.identifier")),
        "{found:?}"
    );
    // Without the profile claim, the same resource is fine for base R4.
    p.as_object_mut().unwrap().remove("meta");
    assert_eq!(app.post("/Patient", &p).await.status(), 201);
}

#[tokio::test]
async fn base_r4_errors_carry_expressions() {
    let app = TestApp::spawn().await;
    let cases: Vec<(Value, u16, &str, &str)> = vec![
        (json!({"resourceType": "Patient", "birthDate": "1990-13-45"}), 400, "value", "Patient.birthDate"),
        (json!({"resourceType": "Patient", "gender": "x"}), 422, "value", "Patient.gender"),
        (json!({"resourceType": "Patient", "shoeSize": 42}), 400, "structure", "Patient.shoeSize"),
        (json!({"resourceType": "Patient", "gender": ["male"]}), 400, "structure", "Patient.gender"),
        (json!({"resourceType": "Observation", "code": {"text": "x"}}), 400, "required", "Observation.status"),
    ];
    for (body, status, code, expr) in cases {
        let ty = body["resourceType"].as_str().unwrap().to_owned();
        let found = issues(app.post(&format!("/{ty}"), &body).await, status).await;
        assert!(found.iter().any(|(c, ex)| c == code && ex.iter().any(|e| e.starts_with(expr))), "{body}: {found:?}");
    }
}

#[tokio::test]
async fn lab_result_profile_needs_the_laboratory_category() {
    let app = TestApp::spawn().await;
    let mut obs = fixture("Observation-jp-observation-labresult-example-1.json");
    obs.as_object_mut().unwrap().remove("category");
    let resp = app.put("/Observation/jp-observation-labresult-example-1", &obs).await;
    let found = issues(resp, 422).await;
    assert!(found.iter().any(|(_, ex)| ex.iter().any(|e| e.starts_with("Observation.category"))), "{found:?}");
}

#[tokio::test]
async fn resource_type_must_match_the_url() {
    let app = TestApp::spawn().await;
    outcome(app.post("/Observation", &json!({"resourceType": "Patient"})).await, 400, "invalid").await;
    outcome(app.post("/Patient", &json!({"name": "no type"})).await, 400, "invalid").await;
}

#[tokio::test]
async fn unknown_profiles_are_accepted_with_base_validation() {
    let app = TestApp::spawn().await;
    let p = json!({"resourceType": "Patient", "meta": {"profile": ["http://example.org/StructureDefinition/Other"]}, "gender": "male"});
    assert_eq!(app.post("/Patient", &p).await.status(), 201);
}

#[tokio::test]
async fn control_characters_and_malformed_narratives_are_refused() {
    let app = TestApp::spawn().await;
    // R4 strings carry no code point below U+0020 but tab, line feed and carriage return
    // (U+0000 could not even be stored on PostgreSQL).
    for bad in ["山田\u{0}", "a\u{1b}b"] {
        let p = json!({"resourceType": "Patient", "name": [{"family": bad}]});
        let issues = issues(app.post("/Patient", &p).await, 400).await;
        assert!(issues.iter().any(|(_, e)| e.iter().any(|x| x.contains("family"))), "{issues:?}");
    }
    let ok = json!({"resourceType": "Patient", "name": [{"text": "山田\t太郎\r\n"}]});
    json(app.post("/Patient", &ok).await, 201).await;
    // A narrative must be one well-formed XHTML div, so that every stored resource also has an
    // XML form.
    for div in [
        "<div xmlns=\"http://www.w3.org/1999/xhtml\"><p>unclosed</div>",
        "<div xmlns=\"http://www.w3.org/1999/xhtml\">&nbsp;</div>",
        "<div xmlns=\"http://www.w3.org/1999/xhtml\"></div><div>second</div>",
    ] {
        let p = json!({"resourceType": "Patient", "text": {"status": "generated", "div": div}});
        let resp = app.post("/Patient", &p).await;
        assert_eq!(resp.status(), 400, "{div}: {}", resp.text().await.unwrap());
    }
    let good = json!({"resourceType": "Patient", "text": {"status": "generated",
        "div": "<div xmlns=\"http://www.w3.org/1999/xhtml\"><p>山田 &amp; <b>太郎</b></p></div>"}});
    json(app.post("/Patient", &good).await, 201).await;
}
