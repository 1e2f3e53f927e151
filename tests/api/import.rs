//! `POST /$import` through the gateway: NDJSON, Bundles in JSON and XML, CSV tables; ids kept,
//! references rewritten, idempotent; all-or-nothing with a report naming every failing record;
//! scopes; tenant isolation.

use crate::observation;
use ehr_testkit::{ALL_SCOPES, TestApp, json, outcome, patient};
use reqwest::Method;
use reqwest::multipart::{Form, Part};
use serde_json::{Value, json};
use std::collections::BTreeMap;

const JLAC_AST: &str = "3B035000002327201";

fn with_id(mut v: Value, id: &str) -> Value {
    v["id"] = json!(id);
    v
}

fn practitioner(id: &str) -> Value {
    json!({"resourceType": "Practitioner", "id": id, "name": [{"family": "医師", "given": ["一郎"]}]})
}

/// An Observation of `patient` performed by `practitioner`.
fn obs(id: &str, patient: &str, practitioner: &str) -> Value {
    let mut o = with_id(observation(patient, JLAC_AST, 31.0, "2026-11-01"), id);
    o["performer"] = json!([{"reference": format!("Practitioner/{practitioner}")}]);
    o
}

fn ndjson(resources: &[Value]) -> String {
    resources.iter().map(|r| format!("{r}\n")).collect()
}

async fn post_import(
    app: &TestApp,
    query: &str,
    content_type: &str,
    body: impl Into<reqwest::Body>,
) -> reqwest::Response {
    app.req(Method::POST, &format!("/$import{query}"))
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .unwrap()
}

async fn post_files(app: &TestApp, files: &[(&str, Vec<u8>)]) -> reqwest::Response {
    let mut form = Form::new();
    for (name, bytes) in files {
        form = form.part("file", Part::bytes(bytes.clone()).file_name(name.to_string()));
    }
    app.req(Method::POST, "/$import").multipart(form).send().await.unwrap()
}

/// The diagnostics of an OperationOutcome.
fn diagnostics(oo: &Value) -> Vec<String> {
    oo["issue"].as_array().unwrap().iter().map(|i| i["diagnostics"].as_str().unwrap_or("").to_owned()).collect()
}

/// Asserts the report line of `file` (`<file>: N records: C created, U updated, S unchanged`).
fn assert_counts(oo: &Value, file: &str, records: usize, created: usize, updated: usize, unchanged: usize) {
    let line = format!("{file}: {records} records: {created} created, {updated} updated, {unchanged} unchanged");
    assert!(diagnostics(oo).contains(&line), "expected `{line}` in {oo}");
}

/// How many resources of `ty` the tenant has.
async fn count(app: &TestApp, ty: &str) -> u64 {
    json(app.get(&format!("/{ty}?_summary=count")).await, 200).await["total"].as_u64().unwrap()
}

async fn read(app: &TestApp, path: &str) -> Value {
    json(app.get(path).await, 200).await
}

#[tokio::test]
async fn ndjson_import_keeps_ids_and_references_and_is_idempotent() {
    let app = TestApp::spawn().await;
    let body = ndjson(&[
        with_id(patient("輸入", "花子", "1980-04-01", "IMP-1"), "imp-p1"),
        practitioner("imp-dr1"),
        obs("imp-o1", "imp-p1", "imp-dr1"),
    ]);
    let oo = json(post_import(&app, "", "application/fhir+ndjson", body.clone()).await, 200).await;
    assert_eq!(oo["resourceType"], "OperationOutcome");
    assert!(oo["issue"].as_array().unwrap().iter().all(|i| i["severity"] != "error"), "{oo}");
    assert_counts(&oo, "request body", 3, 3, 0, 0);

    let o = read(&app, "/Observation/imp-o1").await;
    assert_eq!(o["subject"]["reference"], "Patient/imp-p1");
    assert_eq!(o["performer"][0]["reference"], "Practitioner/imp-dr1");
    assert_eq!(o["meta"]["versionId"], "1");
    assert_eq!(read(&app, "/Patient/imp-p1").await["name"][0]["family"], "輸入");
    // Searchable like any resource: the index rows were written.
    let found = json(app.get("/Observation?patient=imp-p1").await, 200).await;
    assert_eq!(found["total"], 1, "{found}");

    // The same content again: nothing changes, no new version.
    let oo = json(post_import(&app, "", "application/x-ndjson", body).await, 200).await;
    assert_counts(&oo, "request body", 3, 0, 0, 3);
    assert_eq!(read(&app, "/Patient/imp-p1").await["meta"]["versionId"], "1");
    let history = json(app.get("/Observation/imp-o1/_history").await, 200).await;
    assert_eq!(history["total"], 1);

    // One record changed (and old server stamps are ignored): one update, the rest unchanged.
    let mut changed = obs("imp-o1", "imp-p1", "imp-dr1");
    changed["valueQuantity"]["value"] = json!(42.0);
    changed["meta"] = json!({"versionId": "17", "lastUpdated": "2020-01-01T00:00:00Z"});
    let mut same_patient = with_id(patient("輸入", "花子", "1980-04-01", "IMP-1"), "imp-p1");
    same_patient["meta"] = json!({"versionId": "5", "lastUpdated": "2021-01-01T00:00:00Z"});
    let oo = json(post_import(&app, "", "application/ndjson", ndjson(&[same_patient, changed])).await, 200).await;
    assert_counts(&oo, "request body", 2, 0, 1, 1);
    let o = read(&app, "/Observation/imp-o1").await;
    assert_eq!((o["meta"]["versionId"].as_str(), o["valueQuantity"]["value"].as_f64()), (Some("2"), Some(42.0)));
}

#[tokio::test]
async fn a_bundle_with_urn_uuids_gets_its_references_rewritten() {
    let app = TestApp::spawn().await;
    let (p, dr, o) = (
        "urn:uuid:5b0c7d8e-3f1a-4c2b-9d4e-6f7a8b9c0d1e",
        "urn:uuid:0f9e8d7c-6b5a-4c3d-8e2f-1a0b9c8d7e6f",
        "urn:uuid:aa11bb22-cc33-4d44-8e55-ff6677889900",
    );
    let mut observation = observation(p, JLAC_AST, 12.0, "2026-10-01");
    observation["subject"]["reference"] = json!(p);
    observation["performer"] = json!([{"reference": dr}]);
    let bundle = json!({"resourceType": "Bundle", "type": "collection", "entry": [
        {"fullUrl": o, "resource": observation},
        {"fullUrl": p, "resource": patient("束", "太郎", "1975-05-05", "IMP-B1")},
        {"fullUrl": dr, "resource": {"resourceType": "Practitioner", "name": [{"family": "束医師"}]}},
    ]});
    let oo = json(post_import(&app, "", "application/fhir+json", bundle.to_string()).await, 200).await;
    assert_counts(&oo, "request body", 3, 3, 0, 0);
    let found = json(app.get("/Observation?code=3B035000002327201").await, 200).await;
    assert_eq!(found["total"], 1, "{found}");
    let stored = &found["entry"][0]["resource"];
    let subject = stored["subject"]["reference"].as_str().unwrap().to_owned();
    let performer = stored["performer"][0]["reference"].as_str().unwrap().to_owned();
    assert!(subject.starts_with("Patient/") && !subject.contains("urn:"), "{subject}");
    assert_eq!(read(&app, &format!("/{subject}")).await["name"][0]["family"], "束");
    assert_eq!(read(&app, &format!("/{performer}")).await["name"][0]["family"], "束医師");
    // The same Bundle again finds the same resources (the urn:uuid is the id): all unchanged.
    let oo = json(post_import(&app, "", "application/fhir+json", bundle.to_string()).await, 200).await;
    assert_counts(&oo, "request body", 3, 0, 0, 3);
    assert_eq!(count(&app, "Patient").await, 1);
    // A transaction Bundle imports the same way; a single resource too.
    let tx = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": "http://old-vendor.example/fhir/Practitioner/old-7",
         "resource": {"resourceType": "Practitioner", "name": [{"family": "旧"}]},
         "request": {"method": "POST", "url": "Practitioner"}},
        {"resource": with_id(patient("参照", "三郎", "1990-01-01", "IMP-B2"), "ref-p"),
         "request": {"method": "PUT", "url": "Patient/ref-p"}}
    ]});
    let mut tx = tx;
    tx["entry"][1]["resource"]["generalPractitioner"] =
        json!([{"reference": "http://old-vendor.example/fhir/Practitioner/old-7"}]);
    json(post_import(&app, "", "application/fhir+json", tx.to_string()).await, 200).await;
    assert_eq!(read(&app, "/Patient/ref-p").await["generalPractitioner"][0]["reference"], "Practitioner/old-7");
    assert_eq!(read(&app, "/Practitioner/old-7").await["name"][0]["family"], "旧");
    let single = with_id(patient("単", "一", "1991-01-01", "IMP-B3"), "single-p");
    json(post_import(&app, "", "application/fhir+json", single.to_string()).await, 200).await;
    assert_eq!(read(&app, "/Patient/single-p").await["name"][0]["family"], "単");
}

const XML_BUNDLE: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<Bundle xmlns="http://hl7.org/fhir">
  <type value="collection"/>
  <entry>
    <fullUrl value="urn:uuid:3c4d5e6f-7a8b-4c9d-8e0f-1a2b3c4d5e6f"/>
    <resource>
      <Patient>
        <id value="xml-p1"/>
        <identifier><system value="urn:oid:1.2.392.100495.20.3.51.11311234567"/><value value="XML-1"/></identifier>
        <name><use value="official"/><family value="江夢"/><given value="瑠子"/></name>
        <gender value="female"/>
        <birthDate value="1985-07-07"/>
      </Patient>
    </resource>
  </entry>
  <entry>
    <resource>
      <Condition>
        <id value="xml-c1"/>
        <code><text value="高血圧症"/></code>
        <subject><reference value="urn:uuid:3c4d5e6f-7a8b-4c9d-8e0f-1a2b3c4d5e6f"/></subject>
      </Condition>
    </resource>
  </entry>
</Bundle>
"#;

#[tokio::test]
async fn an_xml_bundle_is_imported() {
    let app = TestApp::spawn().await;
    let oo = json(post_import(&app, "", "application/fhir+xml", XML_BUNDLE).await, 200).await;
    assert_counts(&oo, "request body", 2, 2, 0, 0);
    let p = read(&app, "/Patient/xml-p1").await;
    assert_eq!((p["name"][0]["given"][0].as_str(), p["birthDate"].as_str()), (Some("瑠子"), Some("1985-07-07")));
    // The entry's full URL pointed at the Patient, whose id is kept: the reference follows it.
    assert_eq!(read(&app, "/Condition/xml-c1").await["subject"]["reference"], "Patient/xml-p1");
    // As a file of a multipart body, and again: unchanged.
    let oo = json(post_files(&app, &[("everything.xml", XML_BUNDLE.as_bytes().to_vec())]).await, 200).await;
    assert_counts(&oo, "everything.xml", 2, 0, 0, 2);
}

/// CSV files of the documented layouts (docs/formats/csv.md), as the export writes them.
fn csv_files(resources: &[Value]) -> BTreeMap<String, Vec<u8>> {
    let mut files: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    for r in resources {
        let tables = ehr_fhir::csv::tables(r["resourceType"].as_str().unwrap()).unwrap();
        for (t, cells) in ehr_fhir::csv::flatten(r).unwrap() {
            let table = &tables[t];
            let file = files.entry(table.file_name()).or_insert_with(|| {
                let mut b = Vec::new();
                ehr_fhir::csv::write_row(&mut b, &table.columns);
                b
            });
            ehr_fhir::csv::write_row(file, &cells);
        }
    }
    files
}

#[tokio::test]
async fn csv_tables_are_imported_from_a_multipart_body() {
    let app = TestApp::spawn().await;
    let resources = [
        with_id(patient("表", "計算", "1960-06-06", "CSV-1"), "csv-p1"),
        with_id(patient("表", "二郎", "1962-02-02", "CSV-2"), "csv-p2"),
        practitioner("csv-dr"),
        obs("csv-o1", "csv-p1", "csv-dr"),
    ];
    let files = csv_files(&resources);
    assert!(files.contains_key("Patient.csv") && files.contains_key("Patient.name.csv"), "{:?}", files.keys());
    let parts: Vec<(&str, Vec<u8>)> = files.iter().map(|(n, b)| (n.as_str(), b.clone())).collect();
    let oo = json(post_files(&app, &parts).await, 200).await;
    assert_counts(&oo, "Patient.csv", 2, 2, 0, 0);
    assert_counts(&oo, "Observation.csv", 1, 1, 0, 0);
    for r in &resources {
        let mut stored =
            read(&app, &format!("/{}/{}", r["resourceType"].as_str().unwrap(), r["id"].as_str().unwrap())).await;
        stored.as_object_mut().unwrap().remove("meta");
        assert_eq!(&stored, r, "the CSV round trip is lossless");
    }
    let oo = json(post_files(&app, &parts).await, 200).await;
    assert_counts(&oo, "Patient.csv", 2, 0, 0, 2);

    // One main table as text/csv, its type named by _type.
    let org = json!({"resourceType": "Organization", "id": "csv-org", "name": "内科", "active": true});
    let body = csv_files(&[org]).remove("Organization.csv").unwrap();
    json(post_import(&app, "?_type=Organization", "text/csv", body.clone()).await, 200).await;
    assert_eq!(read(&app, "/Organization/csv-org").await["name"], "内科");
    // Without _type, text/csv cannot be read.
    outcome(post_import(&app, "", "text/csv", body).await, 400, "invalid").await;
}

#[tokio::test]
async fn bad_files_are_refused_as_a_whole_and_nothing_is_stored() {
    let app = TestApp::spawn().await;
    let good = ndjson(&[with_id(patient("良", "一", "1970-01-01", "BAD-0"), "good-p")]);
    let errors = |oo: &Value| -> Vec<String> {
        oo["issue"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|i| i["severity"] == "error")
            .map(|i| i["diagnostics"].as_str().unwrap().to_owned())
            .collect()
    };

    // A truncated NDJSON line, next to a good file.
    let truncated = format!(
        "{}{{\"resourceType\":\"Patient\",\"id\":\"cut\",\"name\":[{{\"fami\n",
        ndjson(&[practitioner("t-dr")])
    );
    let oo = json(
        post_files(&app, &[("Patient.ndjson", good.clone().into_bytes()), ("more.ndjson", truncated.into_bytes())])
            .await,
        400,
    )
    .await;
    let e = errors(&oo);
    assert_eq!(e.len(), 1, "{oo}");
    assert!(e[0].starts_with("more.ndjson line 2: not valid JSON"), "{}", e[0]);

    // XML outside the FHIR namespace.
    let wrong = XML_BUNDLE.replace("http://hl7.org/fhir", "http://example.org/not-fhir");
    let oo = json(
        post_files(&app, &[("Patient.ndjson", good.clone().into_bytes()), ("b.xml", wrong.into_bytes())]).await,
        400,
    )
    .await;
    let e = errors(&oo);
    assert!(e.len() == 1 && e[0].starts_with("b.xml: "), "{oo}");

    // A CSV table without its required `id` column.
    let files = csv_files(&[with_id(patient("表", "欠", "1960-06-06", "CSV-X"), "csv-x")]);
    let columns = ehr_fhir::csv::tables("Patient").unwrap().remove(0).columns;
    let id_at = columns.iter().position(|c| c == "id").unwrap();
    let rows: Vec<Vec<String>> = ehr_fhir::csv::flatten(&with_id(patient("表", "欠", "1960-06-06", "CSV-X"), "csv-x"))
        .unwrap()
        .into_iter()
        .filter(|(t, _)| *t == 0)
        .map(|(_, cells)| cells)
        .collect();
    let mut main = Vec::new();
    for row in std::iter::once(columns).chain(rows) {
        let cells: Vec<String> = row.into_iter().enumerate().filter(|(i, _)| *i != id_at).map(|(_, c)| c).collect();
        ehr_fhir::csv::write_row(&mut main, &cells);
    }
    let oo = json(
        post_files(&app, &[("Patient.csv", main), ("Patient.name.csv", files["Patient.name.csv"].clone())]).await,
        400,
    )
    .await;
    let e = errors(&oo);
    assert!(e.len() == 1 && e[0].contains("Patient.csv"), "{oo}");

    // A resource of another type in a typed file.
    let mixed = ndjson(&[with_id(patient("混", "在", "1970-01-01", "BAD-1"), "mixed-p"), practitioner("mixed-dr")]);
    let oo = json(post_files(&app, &[("Patient.ndjson", mixed.into_bytes())]).await, 400).await;
    let e = errors(&oo);
    assert!(e.len() == 1 && e[0].starts_with("Patient.ndjson line 2: a Practitioner in a file of Patient"), "{oo}");
    // …and with `_type` for a plain body.
    let oo = json(
        post_import(&app, "?_type=Patient", "application/fhir+ndjson", ndjson(&[practitioner("x-dr")])).await,
        400,
    )
    .await;
    assert!(errors(&oo)[0].starts_with("request body line 1: a Practitioner"), "{oo}");

    // Unknown file type, empty body, unsupported media type, a type not stored here.
    let oo = json(post_files(&app, &[("notes.txt", b"hello".to_vec())]).await, 400).await;
    assert!(errors(&oo)[0].starts_with("notes.txt: unknown file type"), "{oo}");
    outcome(post_import(&app, "", "application/fhir+ndjson", "").await, 400, "invalid").await;
    outcome(post_import(&app, "", "application/pdf", "%PDF").await, 415, "not-supported").await;
    let medication = json!({"resourceType": "Medication", "id": "m1"});
    let oo = json(post_import(&app, "", "application/fhir+ndjson", ndjson(&[medication])).await, 400).await;
    assert!(errors(&oo)[0].contains("Medication is not a resource type this server stores"), "{oo}");

    // None of it was stored, not even the good files' records.
    assert_eq!((count(&app, "Patient").await, count(&app, "Practitioner").await), (0, 0));
}

fn invalid_again() -> Value {
    let mut p = with_id(patient("不", "正", "1970-01-01", "INV-2"), "inv-p2");
    p["gender"] = json!("unknown-gender-code");
    p
}

#[tokio::test]
async fn one_invalid_record_among_valid_ones_stores_nothing_and_is_named() {
    let app = TestApp::spawn().await;
    let invalid = invalid_again();
    let body = ndjson(&[
        with_id(patient("正", "一", "1970-01-01", "INV-1"), "inv-p1"),
        invalid,
        with_id(patient("正", "三", "1970-01-01", "INV-3"), "inv-p3"),
        with_id(patient("重", "複", "1970-01-01", "INV-4"), "inv-p1"),
    ]);
    let resp = post_import(&app, "", "application/fhir+ndjson", body).await;
    let status = resp.status().as_u16();
    assert_eq!(status, 400);
    let oo = json(resp, 400).await;
    let issues = oo["issue"].as_array().unwrap();
    // One error per failing record, nothing reported as imported.
    assert!(issues.iter().all(|i| i["severity"] == "error"), "{oo}");
    assert_eq!(issues.len(), 2, "{oo}");
    let d = diagnostics(&oo);
    assert!(d[0].starts_with("request body line 2: Patient/inv-p2: "), "{}", d[0]);
    assert_eq!(issues[0]["expression"][0], "Patient.gender", "{oo}");
    assert!(
        d[1].starts_with("request body line 4: Patient/inv-p1 is imported twice (also request body line 1)"),
        "{}",
        d[1]
    );
    assert_eq!(count(&app, "Patient").await, 0);
    outcome(app.get("/Patient/inv-p1").await, 404, "not-found").await;
    // A binding failure alone is a profile-level failure: 422, as for a REST write.
    let oo = json(post_import(&app, "", "application/fhir+ndjson", ndjson(&[invalid_again()])).await, 422).await;
    assert_eq!(
        (oo["issue"][0]["code"].as_str(), oo["issue"][0]["details"]["coding"][0]["code"].as_str()),
        (Some("value"), Some("EHR-VAL-015"))
    );

    // In a Bundle the entry is named, and the expression points into it.
    let mut bad = with_id(patient("不", "正", "1970-01-01", "INV-5"), "inv-p5");
    bad["birthDate"] = json!("not-a-date");
    let bundle = json!({"resourceType": "Bundle", "type": "collection", "entry": [
        {"resource": with_id(patient("正", "一", "1970-01-01", "INV-6"), "inv-p6")},
        {"resource": bad}
    ]});
    let oo = json(post_import(&app, "", "application/fhir+json", bundle.to_string()).await, 400).await;
    assert!(diagnostics(&oo)[0].starts_with("request body entry 1: Patient/inv-p5: "), "{oo}");
    assert_eq!(oo["issue"][0]["expression"][0], "Bundle.entry[1].resource.birthDate", "{oo}");
    assert_eq!(count(&app, "Patient").await, 0);
}

#[tokio::test]
async fn importing_needs_create_and_update_scopes_on_every_type() {
    let app = TestApp::spawn().await;
    let body = ndjson(&[with_id(patient("権", "限", "1970-01-01", "SC-1"), "sc-p1"), obs("sc-o1", "sc-p1", "sc-dr")]);
    let send = |scope: &str| {
        app.client
            .post(app.fhir("/$import"))
            .bearer_auth(app.token(scope))
            .header("content-type", "application/fhir+ndjson")
            .body(body.clone())
            .send()
    };
    outcome(send("user/Patient.rs user/Observation.rs").await.unwrap(), 403, "forbidden").await;
    // Create without update is not enough (an import may update).
    outcome(send("user/Patient.cs user/Observation.cs").await.unwrap(), 403, "forbidden").await;
    // Rights on one of the two types only.
    outcome(send("user/Patient.cru user/Observation.rs").await.unwrap(), 403, "forbidden").await;
    // `_type` naming a type the caller cannot write is refused before the body is read.
    outcome(
        app.client
            .post(app.fhir("/$import?_type=Observation"))
            .bearer_auth(app.token("user/Patient.cru"))
            .header("content-type", "application/fhir+ndjson")
            .body(body.clone())
            .send()
            .await
            .unwrap(),
        403,
        "forbidden",
    )
    .await;
    assert_eq!(count(&app, "Patient").await, 0);
    json(send("user/Patient.cu user/Observation.cu").await.unwrap(), 200).await;
    assert_eq!(count(&app, "Observation").await, 1);
    // Without a token: 401.
    let resp = app
        .client
        .post(app.fhir("/$import"))
        .header("content-type", "application/fhir+ndjson")
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
}

#[tokio::test]
async fn importing_into_one_tenant_never_touches_another() {
    let app = TestApp::spawn().await;
    // Tenant A (this test's) has Patient/shared.
    let ours =
        json(app.put("/Patient/shared", &with_id(patient("甲", "病院", "1950-01-01", "A-1"), "shared")).await, 201)
            .await;
    // Tenant B imports its own Patient/shared, twice.
    let body = ndjson(&[with_id(patient("乙", "病院", "1960-01-01", "B-1"), "shared")]);
    let other = app.token_for("other-hospital", ALL_SCOPES);
    for expected in ["1 created", "1 unchanged"] {
        let resp = app
            .client
            .post(app.fhir("/$import"))
            .bearer_auth(&other)
            .header("content-type", "application/fhir+ndjson")
            .body(body.clone())
            .send()
            .await
            .unwrap();
        let oo = json(resp, 200).await;
        assert!(diagnostics(&oo)[0].contains(expected), "{oo}");
    }
    // Ours is untouched, and theirs is theirs.
    let now = read(&app, "/Patient/shared").await;
    assert_eq!(now, ours);
    let theirs = app.client.get(app.fhir("/Patient/shared")).bearer_auth(&other).send().await.unwrap();
    assert_eq!(json(theirs, 200).await["name"][0]["family"], "乙");
    let history = json(app.get("/Patient/shared/_history").await, 200).await;
    assert_eq!(history["total"], 1);
}

#[tokio::test]
async fn an_import_is_audited_with_its_patients() {
    let app = TestApp::spawn().await;
    let body = ndjson(&[
        with_id(patient("監", "査", "1970-01-01", "AU-1"), "au-p1"),
        obs("au-o1", "au-p2", "au-dr"),
        practitioner("au-dr"),
    ]);
    json(post_import(&app, "", "application/fhir+ndjson", body).await, 200).await;
    for p in ["au-p1", "au-p2"] {
        let events = app.audit_events(&format!("patient=Patient/{p}")).await;
        assert_eq!(events.len(), 1, "{p}: {events:?}");
    }
}

/// Makes the database refuse to insert a resource with id `id` (a trigger), as a constraint or
/// a full disk would: a failure found only while the import writes.
async fn refuse_insert_of(app: &TestApp, id: &str) {
    use sea_orm::{ConnectionTrait, Database};
    let db = Database::connect(app.database_url.as_str()).await.unwrap();
    let statements = if ehr_testkit::backend() == "postgres" {
        vec![
            format!(
                "CREATE FUNCTION refuse_import() RETURNS trigger AS $$ BEGIN \
                 IF NEW.id = '{id}' THEN RAISE EXCEPTION 'refused by test'; END IF; RETURN NEW; END $$ LANGUAGE plpgsql"
            ),
            "CREATE TRIGGER refuse_import BEFORE INSERT ON resources FOR EACH ROW EXECUTE FUNCTION refuse_import()"
                .to_owned(),
        ]
    } else {
        vec![format!(
            "CREATE TRIGGER refuse_import BEFORE INSERT ON resources WHEN NEW.id = '{id}' \
             BEGIN SELECT RAISE(ABORT, 'refused by test'); END"
        )]
    };
    for sql in statements {
        db.execute_unprepared(&sql).await.unwrap();
    }
    let _ = db.close().await;
}

#[tokio::test]
async fn a_record_the_store_refuses_while_writing_rolls_back_the_whole_import() {
    let app = TestApp::spawn().await;
    // A Patient that the import will update before it reaches the refused record.
    let before =
        json(app.put("/Patient/wr-old", &with_id(patient("前", "版", "1970-01-01", "WR-0"), "wr-old")).await, 201)
            .await;
    refuse_insert_of(&app, "wr-boom").await;
    let mut changed = with_id(patient("前", "版", "1970-01-01", "WR-0"), "wr-old");
    changed["gender"] = json!("male");
    let body = ndjson(&[
        with_id(patient("新", "一", "1970-01-01", "WR-1"), "wr-new"),
        changed,
        practitioner("wr-dr"),
        with_id(patient("拒", "否", "1970-01-01", "WR-2"), "wr-boom"),
    ]);
    let resp = post_import(&app, "", "application/fhir+ndjson", body.clone()).await;
    assert_eq!(resp.status(), 500);
    let oo = json(resp, 500).await;
    let d = diagnostics(&oo);
    assert_eq!(d.len(), 1, "{oo}");
    assert!(d[0].starts_with("request body line 4: Patient/wr-boom: the record could not be written"), "{}", d[0]);
    assert!(d[0].ends_with("nothing was stored"), "{}", d[0]);
    assert!(!d[0].contains("refused by test") && !d[0].contains("拒"), "database text and data stay out: {}", d[0]);
    assert_eq!(oo["issue"][0]["details"]["coding"][0]["code"], "EHR-STO-006", "{oo}");
    // Nothing of what was written before the failure remains.
    outcome(app.get("/Patient/wr-new").await, 404, "not-found").await;
    outcome(app.get("/Practitioner/wr-dr").await, 404, "not-found").await;
    assert_eq!(read(&app, "/Patient/wr-old").await, before);
    assert_eq!(json(app.get("/Patient/wr-old/_history").await, 200).await["total"], 1);
    assert_eq!(count(&app, "Patient").await, 1);
}

#[tokio::test]
async fn csv_file_sets_of_a_large_export_and_bundle_files_are_imported() {
    let app = TestApp::spawn().await;
    // The export writes a type's CSV tables in sets of `max_file_resources`: `Patient.csv`,
    // `Patient.name.csv`, … then `Patient-2.csv`, `Patient.name-2.csv`, …
    let first = csv_files(&[with_id(patient("一", "組", "1960-06-06", "SET-1"), "set-p1")]);
    let second: BTreeMap<String, Vec<u8>> = csv_files(&[with_id(patient("二", "組", "1962-02-02", "SET-2"), "set-p2")])
        .into_iter()
        .map(|(name, bytes)| (name.replace(".csv", "-2.csv"), bytes))
        .collect();
    assert!(second.contains_key("Patient-2.csv") && second.contains_key("Patient.name-2.csv"), "{second:?}");
    let mut parts: Vec<(&str, Vec<u8>)> = first.iter().map(|(n, b)| (n.as_str(), b.clone())).collect();
    parts.extend(second.iter().map(|(n, b)| (n.as_str(), b.clone())));
    let oo = json(post_files(&app, &parts).await, 200).await;
    assert_counts(&oo, "Patient.csv", 1, 1, 0, 0);
    assert_counts(&oo, "Patient-2.csv", 1, 1, 0, 0);
    assert_eq!(read(&app, "/Patient/set-p2").await["name"][0]["family"], "二");
    // A row failure in a later set is reported against that set's file names.
    let mut broken = second.clone();
    let name_table = broken.get_mut("Patient.name-2.csv").unwrap();
    name_table.extend_from_slice(b"no-such-patient\n");
    let parts: Vec<(&str, Vec<u8>)> = broken.iter().map(|(n, b)| (n.as_str(), b.clone())).collect();
    let oo = json(post_files(&app, &parts).await, 400).await;
    let d = diagnostics(&oo);
    assert!(d[0].starts_with("Patient-2.csv") && d[0].contains("Patient.name-2.csv"), "{oo}");

    // A file named `Bundle.json` (or `.xml`) is a Bundle of any types, not a file of "Bundle"s.
    let bundle = json!({"resourceType": "Bundle", "type": "collection", "entry": [
        {"resource": with_id(patient("束", "一", "1970-01-01", "BF-1"), "bf-p1")},
        {"resource": practitioner("bf-dr")}
    ]});
    let oo = json(post_files(&app, &[("Bundle.json", bundle.to_string().into_bytes())]).await, 200).await;
    assert_counts(&oo, "Bundle.json", 2, 2, 0, 0);
    let oo = json(post_files(&app, &[("Bundle.xml", XML_BUNDLE.as_bytes().to_vec())]).await, 200).await;
    assert_counts(&oo, "Bundle.xml", 2, 2, 0, 0);
}

#[tokio::test]
async fn multipart_bodies_are_bounded_in_parts_and_audit_events_are_never_imported() {
    let app = TestApp::spawn().await;
    // Many tiny parts: refused once past the limit, quickly (no quadratic name checks).
    let mut form = Form::new();
    for i in 0..10_001 {
        form = form.part("file", Part::bytes(b"{}".to_vec()).file_name(format!("f{i}.ndjson")));
    }
    let started = std::time::Instant::now();
    let resp = app.req(Method::POST, "/$import").multipart(form).send().await.unwrap();
    let oo = outcome(resp, 400, "structure").await;
    assert_eq!(oo["issue"][0]["details"]["coding"][0]["code"], "EHR-EXP-105", "{oo}");
    assert!(started.elapsed() < std::time::Duration::from_secs(20), "{:?}", started.elapsed());

    // The audit trail is the gateway's: neither `_type` nor a record can write an AuditEvent.
    outcome(post_import(&app, "?_type=AuditEvent", "application/fhir+ndjson", "{}\n").await, 400, "invalid").await;
    let event = json!({"resourceType": "AuditEvent", "id": "forged", "recorded": "2026-01-01T00:00:00Z",
        "type": {"code": "rest"}, "agent": [{"requestor": true}], "source": {"observer": {"display": "x"}}});
    let oo = json(post_import(&app, "", "application/fhir+ndjson", ndjson(&[event])).await, 400).await;
    assert!(diagnostics(&oo)[0].contains("AuditEvent is never imported"), "{oo}");
}

#[tokio::test]
async fn another_servers_version_stamps_are_dropped_and_the_rest_of_meta_is_kept() {
    let app = TestApp::spawn().await;
    let mut p = with_id(patient("メ", "タ", "1970-01-01", "META-1"), "meta-p");
    p["meta"] = json!({"versionId": "42", "lastUpdated": "2001-01-01T00:00:00Z", "source": "urn:old-vendor",
        "security": [{"system": "http://terminology.hl7.org/CodeSystem/v3-Confidentiality", "code": "R"}],
        "tag": [{"system": "urn:example:tag", "code": "migrated"}]});
    json(post_import(&app, "", "application/fhir+ndjson", ndjson(std::slice::from_ref(&p))).await, 200).await;
    let stored = read(&app, "/Patient/meta-p").await;
    assert_eq!(stored["meta"]["versionId"], "1", "{stored}");
    assert_ne!(stored["meta"]["lastUpdated"], "2001-01-01T00:00:00Z", "{stored}");
    for k in ["source", "security", "tag"] {
        assert_eq!(stored["meta"][k], p["meta"][k], "{k}");
    }
    // Sent again with other stamps: the same content, unchanged.
    p["meta"]["versionId"] = json!("43");
    let oo = json(post_import(&app, "", "application/fhir+ndjson", ndjson(&[p])).await, 200).await;
    assert_counts(&oo, "request body", 1, 0, 0, 1);
}
