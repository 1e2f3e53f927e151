use crate::observation;
use ehr_testkit::{TestApp, json, outcome, patient};
use serde_json::{Value, json};

fn tx(kind: &str, entries: Vec<Value>) -> Value {
    json!({"resourceType": "Bundle", "type": kind, "entry": entries})
}

#[tokio::test]
async fn transaction_rewrites_urn_uuid_references() {
    let app = TestApp::spawn().await;
    let mut obs = observation("placeholder", "3B035000002327201", 10.0, "2024-01-01");
    obs["subject"] = json!({"reference": "urn:uuid:5c5a7f7e-0b1e-4a83-9d2e-000000000001"});
    let bundle = tx(
        "transaction",
        vec![
            json!({"request": {"method": "POST", "url": "Observation"}, "resource": obs}),
            json!({"fullUrl": "urn:uuid:5c5a7f7e-0b1e-4a83-9d2e-000000000001", "request": {"method": "POST", "url": "Patient"},
               "resource": patient("山田", "太郎", "1970-01-01", "T1")}),
        ],
    );
    let resp = json(app.post("", &bundle).await, 200).await;
    assert_eq!(resp["type"], "transaction-response");
    let entries = resp["entry"].as_array().unwrap();
    assert_eq!(entries.len(), 2);
    assert_eq!(entries[0]["response"]["status"], "201 Created");
    let patient_loc = entries[1]["response"]["location"].as_str().unwrap();
    let patient_id = patient_loc.split('/').nth(1).unwrap();
    let obs_loc = entries[0]["response"]["location"].as_str().unwrap();
    let stored = json(app.get(&format!("/{}", obs_loc.split("/_history").next().unwrap())).await, 200).await;
    assert_eq!(stored["subject"]["reference"], format!("Patient/{patient_id}"));
    // And the rewritten reference is searchable.
    let b = json(app.get(&format!("/Observation?patient={patient_id}")).await, 200).await;
    assert_eq!(b["total"], 1);
}

#[tokio::test]
async fn a_failing_entry_rolls_back_the_whole_transaction() {
    let app = TestApp::spawn().await;
    let bundle = tx(
        "transaction",
        vec![
            json!({"request": {"method": "POST", "url": "Patient"}, "resource": patient("A", "B", "1990-01-01", "R1")}),
            json!({"request": {"method": "POST", "url": "Patient"}, "resource": {"resourceType": "Patient", "gender": "not-a-gender"}}),
        ],
    );
    let oo = json(app.post("", &bundle).await, 422).await;
    assert!(oo["issue"][0]["diagnostics"].as_str().unwrap().starts_with("bundle entry 1"), "{oo}");
    let b = json(app.get("/Patient").await, 200).await;
    assert_eq!(b["total"], 0, "nothing of the failed transaction was stored");

    // A version conflict in a later entry also undoes the earlier ones.
    let existing = app.create(&patient("C", "D", "1990-01-01", "R2")).await;
    let mut upd = existing.clone();
    upd["gender"] = json!("male");
    let bundle = tx(
        "transaction",
        vec![
            json!({"request": {"method": "POST", "url": "Patient"}, "resource": patient("E", "F", "1990-01-01", "R3")}),
            json!({"request": {"method": "PUT", "url": format!("Patient/{}", existing["id"].as_str().unwrap()), "ifMatch": "W/\"7\""}, "resource": upd}),
        ],
    );
    outcome(app.post("", &bundle).await, 412, "conflict").await;
    assert_eq!(json(app.get("/Patient").await, 200).await["total"], 1);
}

#[tokio::test]
async fn conditional_entries_and_references_in_transactions() {
    let app = TestApp::spawn().await;
    let sys = "urn:oid:1.2.392.100495.20.3.51.11311234567";
    let existing = app.create(&patient("A", "B", "1990-01-01", "K1")).await;
    let mut obs = observation("x", "3B035000002327201", 1.0, "2024-01-01");
    obs["subject"] = json!({"reference": format!("Patient?identifier={sys}|K1")});
    let bundle = tx(
        "transaction",
        vec![
            json!({"fullUrl": "urn:uuid:00000000-0000-0000-0000-0000000000aa", "request": {"method": "POST", "url": "Patient", "ifNoneExist": format!("identifier={sys}|K1")},
               "resource": patient("A", "B", "1990-01-01", "K1")}),
            json!({"request": {"method": "POST", "url": "Observation"}, "resource": obs}),
            json!({"request": {"method": "PUT", "url": format!("Patient?identifier={sys}|K2")}, "resource": patient("New", "One", "2000-01-01", "K2")}),
            json!({"request": {"method": "GET", "url": format!("Patient/{}", existing["id"].as_str().unwrap())}}),
        ],
    );
    let resp = json(app.post("", &bundle).await, 200).await;
    let e = resp["entry"].as_array().unwrap();
    assert_eq!(e[0]["response"]["status"], "200 OK", "If-None-Exist matched");
    assert_eq!(e[1]["response"]["status"], "201 Created");
    assert_eq!(e[2]["response"]["status"], "201 Created", "conditional update without a match creates");
    assert_eq!(e[3]["resource"]["id"], existing["id"]);
    let obs_path = e[1]["response"]["location"].as_str().unwrap().split("/_history").next().unwrap().to_owned();
    let stored = json(app.get(&format!("/{obs_path}")).await, 200).await;
    assert_eq!(stored["subject"]["reference"], format!("Patient/{}", existing["id"].as_str().unwrap()));
    assert_eq!(json(app.get("/Patient").await, 200).await["total"], 2);
}

#[tokio::test]
async fn batch_entries_succeed_or_fail_independently() {
    let app = TestApp::spawn().await;
    let bundle = tx(
        "batch",
        vec![
            json!({"request": {"method": "POST", "url": "Patient"}, "resource": patient("A", "B", "1990-01-01", "B1")}),
            json!({"request": {"method": "GET", "url": "Patient/does-not-exist"}}),
            json!({"request": {"method": "POST", "url": "Patient"}, "resource": {"resourceType": "Patient", "birthDate": "1990-99-99"}}),
            json!({"request": {"method": "GET", "url": "Patient?identifier=B1"}}),
        ],
    );
    let resp = json(app.post("", &bundle).await, 200).await;
    assert_eq!(resp["type"], "batch-response");
    let e = resp["entry"].as_array().unwrap();
    assert_eq!(e[0]["response"]["status"], "201 Created");
    assert_eq!(e[1]["response"]["status"], "404 Not Found");
    assert_eq!(e[1]["response"]["outcome"]["resourceType"], "OperationOutcome");
    assert!(e[2]["response"]["status"].as_str().unwrap().starts_with("4"));
    assert_eq!(e[3]["resource"]["total"], 1);
}

#[tokio::test]
async fn malformed_bundles_are_rejected() {
    let app = TestApp::spawn().await;
    outcome(app.post("", &json!({"resourceType": "Bundle", "type": "collection"})).await, 400, "invalid").await;
    outcome(app.post("", &json!({"resourceType": "Patient"})).await, 400, "invalid").await;
    let no_request = tx("transaction", vec![json!({"resource": patient("A", "B", "1990-01-01", "M1")})]);
    outcome(app.post("", &no_request).await, 400, "invalid").await;
    let bad_type = tx("transaction", vec![json!({"request": {"method": "GET", "url": "Nonsense/1"}})]);
    outcome(app.post("", &bad_type).await, 404, "not-supported").await;
}

#[tokio::test]
async fn batch_entries_that_cannot_be_parsed_fail_alone() {
    let app = TestApp::spawn().await;
    let bundle = tx(
        "batch",
        vec![
            json!({"resource": patient("A", "B", "1990-01-01", "BP1")}),
            json!({"request": {"method": "POST", "url": "Nonsense"}, "resource": {"resourceType": "Nonsense"}}),
            json!({"request": {"method": "POST", "url": "Patient"}, "resource": patient("A", "B", "1990-01-01", "BP2")}),
        ],
    );
    let resp = json(app.post("", &bundle).await, 200).await;
    let e = resp["entry"].as_array().unwrap();
    assert_eq!(e[0]["response"]["status"], "400 Bad Request");
    assert_eq!(e[1]["response"]["status"], "404 Not Found");
    assert_eq!(e[2]["response"]["status"], "201 Created");
}

#[tokio::test]
async fn patch_and_conditional_delete_inside_a_transaction() {
    let app = TestApp::spawn().await;
    let keep = app.create(&patient("Keep", "Me", "1990-01-01", "PD1")).await;
    app.create(&patient("Drop", "Me", "1990-01-01", "PD2")).await;
    let patch = r#"[{"op":"replace","path":"/gender","value":"male"}]"#;
    use base64::Engine as _;
    let data = base64::engine::general_purpose::STANDARD.encode(patch);
    let bundle = tx(
        "transaction",
        vec![
            json!({"request": {"method": "PATCH", "url": format!("Patient/{}", keep["id"].as_str().unwrap())},
               "resource": {"resourceType": "Binary", "contentType": "application/json-patch+json", "data": data}}),
            json!({"request": {"method": "DELETE", "url": "Patient?identifier=PD2"}}),
        ],
    );
    let resp = json(app.post("", &bundle).await, 200).await;
    let e = resp["entry"].as_array().unwrap();
    assert_eq!(e[0]["response"]["status"], "200 OK");
    assert_eq!(e[1]["response"]["status"], "204 No Content");
    let b = json(app.get("/Patient").await, 200).await;
    assert_eq!(b["total"], 1);
    assert_eq!(b["entry"][0]["resource"]["gender"], "male");
}

#[tokio::test]
async fn conditional_references_need_search_scope_on_the_target() {
    let app = TestApp::spawn().await;
    app.create(&patient("A", "B", "1990-01-01", "CR1")).await;
    let bundle = tx(
        "transaction",
        vec![json!({"request": {"method": "POST", "url": "Observation"}, "resource": {
        "resourceType": "Observation", "status": "final", "code": {"text": "x"}, "subject": {"reference": "Patient?identifier=CR1"}}})],
    );
    let resp = app
        .client
        .post(app.fhir(""))
        .bearer_auth(app.token("user/Observation.c"))
        .header("content-type", "application/fhir+json")
        .body(bundle.to_string())
        .send()
        .await
        .unwrap();
    outcome(resp, 403, "forbidden").await;
    let resp = app
        .client
        .post(app.fhir(""))
        .bearer_auth(app.token("user/Observation.c user/Patient.s"))
        .header("content-type", "application/fhir+json")
        .body(bundle.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
}

#[tokio::test]
async fn full_urls_of_put_entries_are_resolved_too() {
    let app = TestApp::spawn().await;
    let mut obs = observation("x", "c", 1.0, "2024-01-01");
    obs["subject"] = json!({"reference": "urn:uuid:00000000-0000-0000-0000-0000000000bb"});
    let mut p = patient("Put", "Me", "1990-01-01", "FU1");
    p["id"] = json!("chosen-id");
    let bundle = tx(
        "transaction",
        vec![
            json!({"fullUrl": "urn:uuid:00000000-0000-0000-0000-0000000000bb", "request": {"method": "PUT", "url": "Patient/chosen-id"}, "resource": p}),
            json!({"request": {"method": "POST", "url": "Observation"}, "resource": obs}),
        ],
    );
    let resp = json(app.post("", &bundle).await, 200).await;
    let loc = resp["entry"][1]["response"]["location"].as_str().unwrap().split("/_history").next().unwrap().to_owned();
    let stored = json(app.get(&format!("/{loc}")).await, 200).await;
    assert_eq!(stored["subject"]["reference"], "Patient/chosen-id");
}
