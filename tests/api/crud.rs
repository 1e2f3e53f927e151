use ehr_testkit::{TestApp, json, outcome, patient};
use serde_json::json;

#[tokio::test]
async fn create_then_read_returns_the_resource_with_version_headers() {
    let app = TestApp::spawn().await;
    let resp = app.post("/Patient", &patient("山田", "花子", "1980-04-01", "P1")).await;
    assert_eq!(resp.status(), 201);
    let location = resp.headers()["location"].to_str().unwrap().to_owned();
    assert_eq!(resp.headers()["etag"], "W/\"1\"");
    assert!(resp.headers().contains_key("last-modified"));
    let created = json(resp, 201).await;
    let id = created["id"].as_str().unwrap();
    assert!(location.ends_with(&format!("/fhir/Patient/{id}/_history/1")), "{location}");
    assert_eq!(created["meta"]["versionId"], "1");

    let resp = app.get(&format!("/Patient/{id}")).await;
    assert_eq!(resp.headers()["etag"], "W/\"1\"");
    assert!(resp.headers()["content-type"].to_str().unwrap().starts_with("application/fhir+json"));
    let read = json(resp, 200).await;
    assert_eq!(read, created);
    assert_eq!(read["name"][0]["family"], "山田");
}

#[tokio::test]
async fn client_ids_on_create_are_replaced_by_server_ids() {
    let app = TestApp::spawn().await;
    let mut p = patient("A", "B", "1990-01-01", "P2");
    p["id"] = json!("chosen-by-client");
    let created = app.create(&p).await;
    assert_ne!(created["id"], "chosen-by-client");
}

#[tokio::test]
async fn update_creates_versions_and_if_match_guards_them() {
    let app = TestApp::spawn().await;
    let created = app.create(&patient("佐藤", "一郎", "1950-02-03", "P3")).await;
    let id = created["id"].as_str().unwrap().to_owned();
    let mut next = created.clone();
    next["gender"] = json!("male");

    let resp = app.send_with(reqwest::Method::PUT, &format!("/Patient/{id}"), &next, &[("if-match", "W/\"1\"")]).await;
    assert_eq!(resp.headers()["etag"], "W/\"2\"");
    let v2 = json(resp, 200).await;
    assert_eq!(v2["meta"]["versionId"], "2");
    assert_eq!(v2["gender"], "male");

    // A stale If-Match is a 412 and changes nothing.
    let resp = app.send_with(reqwest::Method::PUT, &format!("/Patient/{id}"), &next, &[("if-match", "W/\"1\"")]).await;
    outcome(resp, 412, "conflict").await;
    let current = json(app.get(&format!("/Patient/{id}")).await, 200).await;
    assert_eq!(current["meta"]["versionId"], "2");

    // vread of both versions.
    let v1 = json(app.get(&format!("/Patient/{id}/_history/1")).await, 200).await;
    assert_eq!(v1["gender"], "female");
    assert_eq!(json(app.get(&format!("/Patient/{id}/_history/2")).await, 200).await["gender"], "male");
    outcome(app.get(&format!("/Patient/{id}/_history/9")).await, 404, "not-found").await;
}

#[tokio::test]
async fn update_requires_matching_id_and_can_create() {
    let app = TestApp::spawn().await;
    let mut p = patient("A", "B", "1990-01-01", "P4");
    outcome(app.put("/Patient/abc", &p).await, 400, "invalid").await;
    p["id"] = json!("other");
    outcome(app.put("/Patient/abc", &p).await, 400, "invalid").await;
    p["id"] = json!("abc");
    let resp = app.put("/Patient/abc", &p).await;
    assert_eq!(resp.status(), 201, "update-as-create");
    assert_eq!(json(app.put("/Patient/abc", &p).await, 200).await["meta"]["versionId"], "2");
}

#[tokio::test]
async fn delete_then_read_is_gone_and_delete_is_idempotent() {
    let app = TestApp::spawn().await;
    let id = app.create(&patient("A", "B", "1990-01-01", "P5")).await["id"].as_str().unwrap().to_owned();
    let resp = app.delete(&format!("/Patient/{id}")).await;
    assert_eq!(resp.status(), 204);
    outcome(app.get(&format!("/Patient/{id}")).await, 410, "deleted").await;
    assert_eq!(app.delete(&format!("/Patient/{id}")).await.status(), 204);
    assert_eq!(app.delete("/Patient/never-existed").await.status(), 204);
    // The deleted resource is no longer found by search, but its history remains.
    let b = json(app.get(&format!("/Patient?_id={id}")).await, 200).await;
    assert_eq!(b["total"], 0);
    let h = json(app.get(&format!("/Patient/{id}/_history")).await, 200).await;
    assert_eq!(h["total"], 2);
    assert_eq!(h["entry"][0]["request"]["method"], "DELETE");
    // A deleted resource can be brought back by update.
    let mut p = patient("A", "B", "1990-01-01", "P5");
    p["id"] = json!(id);
    assert_eq!(json(app.put(&format!("/Patient/{id}"), &p).await, 201).await["meta"]["versionId"], "3");
}

#[tokio::test]
async fn prefer_return_minimal_and_operation_outcome() {
    let app = TestApp::spawn().await;
    let p = patient("A", "B", "1990-01-01", "P6");
    let resp = app.send_with(reqwest::Method::POST, "/Patient", &p, &[("prefer", "return=minimal")]).await;
    assert_eq!(resp.status(), 201);
    assert!(resp.headers().contains_key("location"));
    assert!(resp.text().await.unwrap().is_empty());
    let resp = app.send_with(reqwest::Method::POST, "/Patient", &p, &[("prefer", "return=OperationOutcome")]).await;
    let oo = json(resp, 201).await;
    assert_eq!(oo["resourceType"], "OperationOutcome");
    assert_eq!(oo["issue"][0]["severity"], "information");
}

#[tokio::test]
async fn if_none_match_answers_not_modified() {
    let app = TestApp::spawn().await;
    let id = app.create(&patient("A", "B", "1990-01-01", "P7")).await["id"].as_str().unwrap().to_owned();
    let resp = app
        .req(reqwest::Method::GET, &format!("/Patient/{id}"))
        .header("if-none-match", "W/\"1\"")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 304);
}

#[tokio::test]
async fn conditional_create_finds_the_existing_match() {
    let app = TestApp::spawn().await;
    let p = patient("A", "B", "1990-01-01", "MRN-1");
    let cond = "identifier=urn:oid:1.2.392.100495.20.3.51.11311234567|MRN-1";
    let send = || {
        app.req(reqwest::Method::POST, "/Patient")
            .header("content-type", "application/fhir+json")
            .header("if-none-exist", cond)
            .body(p.to_string())
    };
    let first = json(send().send().await.unwrap(), 201).await;
    let second = json(send().send().await.unwrap(), 200).await;
    assert_eq!(first["id"], second["id"]);
    // Two matches: 412.
    app.create(&p).await;
    outcome(send().send().await.unwrap(), 412, "duplicate").await;
    // A condition with an unknown parameter is rejected rather than widened.
    let resp = app.send_with(reqwest::Method::POST, "/Patient", &p, &[("if-none-exist", "shoe-size=42")]).await;
    outcome(resp, 400, "invalid").await;
}

#[tokio::test]
async fn conditional_update_and_delete() {
    let app = TestApp::spawn().await;
    let cond = "identifier=urn:oid:1.2.392.100495.20.3.51.11311234567|C-1";
    let p = patient("A", "B", "1990-01-01", "C-1");
    // No match: creates.
    let created = json(app.put(&format!("/Patient?{cond}"), &p).await, 201).await;
    // One match: updates that resource.
    let mut changed = p.clone();
    changed["gender"] = json!("male");
    let updated = json(app.put(&format!("/Patient?{cond}"), &changed).await, 200).await;
    assert_eq!(updated["id"], created["id"]);
    assert_eq!(updated["meta"]["versionId"], "2");
    // Conditional delete of the single match.
    assert_eq!(app.delete(&format!("/Patient?{cond}")).await.status(), 204);
    outcome(app.get(&format!("/Patient/{}", created["id"].as_str().unwrap())).await, 410, "deleted").await;
    // Several matches: 412 for both.
    app.create(&p).await;
    app.create(&p).await;
    outcome(app.put(&format!("/Patient?{cond}"), &p).await, 412, "duplicate").await;
    outcome(app.delete(&format!("/Patient?{cond}")).await, 412, "duplicate").await;
}

#[tokio::test]
async fn json_patch_applies_and_honours_if_match() {
    let app = TestApp::spawn().await;
    let id = app.create(&patient("A", "B", "1990-01-01", "P8")).await["id"].as_str().unwrap().to_owned();
    let patch = json!([{"op": "replace", "path": "/gender", "value": "other"}, {"op": "add", "path": "/active", "value": true}]);
    let send = |etag: &'static str| {
        app.req(reqwest::Method::PATCH, &format!("/Patient/{id}"))
            .header("content-type", "application/json-patch+json")
            .header("if-match", etag)
            .body(patch.to_string())
    };
    let v2 = json(send("W/\"1\"").send().await.unwrap(), 200).await;
    assert_eq!(v2["gender"], "other");
    assert_eq!(v2["active"], true);
    assert_eq!(v2["meta"]["versionId"], "2");
    outcome(send("W/\"1\"").send().await.unwrap(), 412, "conflict").await;
    // A patch that breaks the resource is refused by validation; one that changes the id too.
    let patch_unconditionally = |patch: serde_json::Value| {
        app.req(reqwest::Method::PATCH, &format!("/Patient/{id}"))
            .header("content-type", "application/json-patch+json")
            .body(patch.to_string())
            .send()
    };
    let resp = patch_unconditionally(json!([{"op": "replace", "path": "/gender", "value": "x"}])).await.unwrap();
    outcome(resp, 422, "value").await;
    let resp = patch_unconditionally(json!([{"op": "replace", "path": "/id", "value": "other"}])).await.unwrap();
    outcome(resp, 400, "invalid").await;
    // A FHIR JSON body is not a patch.
    let resp = app
        .req(reqwest::Method::PATCH, &format!("/Patient/{id}"))
        .header("content-type", "application/fhir+json")
        .body("{}")
        .send()
        .await
        .unwrap();
    outcome(resp, 415, "not-supported").await;
}

#[tokio::test]
async fn every_patient_record_type_supports_create_and_read() {
    let app = TestApp::spawn().await;
    let pid = app.create(&patient("A", "B", "1990-01-01", "P9")).await["id"].as_str().unwrap().to_owned();
    let subject = json!({"reference": format!("Patient/{pid}")});
    let resources = vec![
        json!({"resourceType": "Practitioner", "name": [{"family": "田中"}]}),
        json!({"resourceType": "PractitionerRole", "active": true}),
        json!({"resourceType": "Organization", "name": "テスト病院"}),
        json!({"resourceType": "Encounter", "status": "finished", "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"}, "subject": subject}),
        json!({"resourceType": "Condition", "subject": subject, "code": {"text": "高血圧"}}),
        json!({"resourceType": "AllergyIntolerance", "patient": subject, "code": {"text": "卵"}}),
        json!({"resourceType": "Observation", "status": "final", "code": {"text": "体温"}, "subject": subject}),
        json!({"resourceType": "DiagnosticReport", "status": "final", "code": {"text": "血液検査"}, "subject": subject}),
        json!({"resourceType": "Procedure", "status": "completed", "subject": subject}),
        json!({"resourceType": "DocumentReference", "status": "current", "content": [{"attachment": {"contentType": "text/plain", "data": "SGVsbG8="}}], "subject": subject}),
        json!({"resourceType": "Composition", "status": "final", "type": {"text": "診療情報提供書"}, "date": "2024-01-01", "author": [{"reference": "Practitioner/x"}], "title": "紹介状", "subject": subject}),
        json!({"resourceType": "Immunization", "status": "completed", "vaccineCode": {"text": "influenza"}, "patient": subject, "occurrenceDateTime": "2024-10-01"}),
        json!({"resourceType": "Coverage", "status": "active", "beneficiary": subject, "payor": [{"reference": "Organization/x"}]}),
    ];
    for r in resources {
        let ty = r["resourceType"].as_str().unwrap().to_owned();
        let created = app.create(&r).await;
        let read = json(app.get(&format!("/{ty}/{}", created["id"].as_str().unwrap())).await, 200).await;
        assert_eq!(read["resourceType"], ty.as_str());
    }
}

#[tokio::test]
async fn validation_warnings_are_reported_with_return_operation_outcome() {
    let app = TestApp::spawn().await;
    let p = json!({"resourceType": "Patient", "meta": {"profile": ["http://example.org/StructureDefinition/Other"]}});
    let resp = app.send_with(reqwest::Method::POST, "/Patient", &p, &[("prefer", "return=OperationOutcome")]).await;
    let oo = json(resp, 201).await;
    let codes: Vec<&str> = oo["issue"].as_array().unwrap().iter().map(|i| i["severity"].as_str().unwrap()).collect();
    assert_eq!(codes, vec!["information", "warning"], "{oo}");
}

#[tokio::test]
async fn absolute_urls_use_the_configured_public_url() {
    let app = TestApp::spawn_with(|c| c.public_url = Some("https://ehr.example-hospital.jp/".into())).await;
    let resp = app.post("/Patient", &patient("A", "B", "1990-01-01", "U1")).await;
    let location = resp.headers()["location"].to_str().unwrap().to_owned();
    assert!(location.starts_with("https://ehr.example-hospital.jp/fhir/Patient/"), "{location}");
    let b = json(app.get("/Patient").await, 200).await;
    assert!(b["entry"][0]["fullUrl"].as_str().unwrap().starts_with("https://ehr.example-hospital.jp/fhir/Patient/"));
}

#[tokio::test]
async fn conditions_without_criteria_are_refused_not_matched_to_everything() {
    let app = TestApp::spawn().await;
    let keep = app.create(&patient("Keep", "Me", "1990-01-01", "NC1")).await;
    outcome(app.delete("/Patient?_format=json").await, 400, "invalid").await;
    outcome(app.delete("/Patient?name=").await, 400, "invalid").await;
    outcome(app.put("/Patient?_count=1", &patient("Over", "Written", "1990-01-01", "NC2")).await, 400, "invalid").await;
    let resp = app
        .send_with(
            reqwest::Method::POST,
            "/Patient",
            &patient("A", "B", "1990-01-01", "NC3"),
            &[("if-none-exist", "_count=1")],
        )
        .await;
    outcome(resp, 400, "invalid").await;
    let still = json(app.get(&format!("/Patient/{}", keep["id"].as_str().unwrap())).await, 200).await;
    assert_eq!(still["meta"]["versionId"], "1");
}

#[tokio::test]
async fn conditional_update_without_a_match_never_overwrites_another_resource() {
    let app = TestApp::spawn().await;
    let existing = app.create(&patient("A", "B", "1990-01-01", "CU1")).await;
    let mut body = patient("C", "D", "1990-01-01", "CU2");
    body["id"] = existing["id"].clone();
    outcome(app.put("/Patient?identifier=CU2", &body).await, 409, "conflict").await;
    let still = json(app.get(&format!("/Patient/{}", existing["id"].as_str().unwrap())).await, 200).await;
    assert_eq!(still["meta"]["versionId"], "1");
    // In a transaction too, and a match with a different body id is a 400.
    let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"request": {"method": "PUT", "url": "Patient?identifier=CU2"}, "resource": body}]});
    outcome(app.post("", &bundle).await, 409, "conflict").await;
    let mut other = patient("A", "B", "1990-01-01", "CU1");
    other["id"] = json!("some-other-id");
    let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"request": {"method": "PUT", "url": "Patient?identifier=CU1"}, "resource": other}]});
    outcome(app.post("", &bundle).await, 400, "invalid").await;
}

#[tokio::test]
async fn malformed_paths_offsets_and_zones_are_outcomes() {
    let app = TestApp::spawn().await;
    outcome(app.get("/Patient/%FF").await, 400, "invalid").await;
    outcome(app.get("/Patient?_offset=18446744073709551615").await, 400, "invalid").await;
    outcome(app.get("/Patient/_history?_offset=18446744073709551615").await, 400, "invalid").await;
    outcome(app.get("/Observation?date=2024-01-01T10:00%2B999999:00").await, 400, "invalid").await;
    let b = json(app.get("/Patient/_history?_count=0").await, 200).await;
    assert!(b["link"].as_array().unwrap().iter().all(|l| l["relation"] != "next"), "{b}");
}
