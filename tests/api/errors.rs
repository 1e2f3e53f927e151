//! Every error is an OperationOutcome, and none leaks internals.

use ehr_testkit::{TestApp, json, outcome};
use serde_json::Value;

#[tokio::test]
async fn malformed_requests_get_operation_outcomes() {
    let app = TestApp::spawn().await;
    let post = |ct: &'static str, body: &'static str| {
        app.req(reqwest::Method::POST, "/Patient").header("content-type", ct).body(body)
    };
    let oo =
        outcome(post("application/fhir+json", "{\"resourceType\": ").send().await.unwrap(), 400, "structure").await;
    assert!(oo["issue"][0]["diagnostics"].as_str().unwrap().contains("line 1"));
    outcome(post("application/fhir+json", "[1,2]").send().await.unwrap(), 400, "structure").await;
    outcome(post("text/plain", "{}").send().await.unwrap(), 415, "not-supported").await;
    outcome(app.req(reqwest::Method::POST, "/Patient").body("{}").send().await.unwrap(), 415, "not-supported").await;
    outcome(app.get("/Nonsense/1").await, 404, "not-supported").await;
    outcome(app.get("/Medication").await, 404, "not-supported").await;
    outcome(app.req(reqwest::Method::GET, "").send().await.unwrap(), 405, "not-supported").await;
    let resp = app.client.get(format!("{}/no/such/path", app.address)).send().await.unwrap();
    outcome(resp, 404, "not-found").await;
    outcome(app.get("/Patient/bad_id!").await, 404, "not-found").await;
    outcome(app.get("/Patient/x/_history/notanumber").await, 400, "invalid").await;
}

#[tokio::test]
async fn oversized_bodies_are_refused_with_an_outcome() {
    let app = TestApp::spawn().await;
    // The default limit is 16 MiB; one byte more is refused before parsing.
    let big = format!("{{\"resourceType\":\"Patient\",\"text\":{{\"div\":\"{}\"}}}}", "x".repeat(16 * 1024 * 1024));
    let resp = app
        .req(reqwest::Method::POST, "/Patient")
        .header("content-type", "application/fhir+json")
        .body(big)
        .send()
        .await
        .unwrap();
    outcome(resp, 413, "too-costly").await;
    // Below the limit a large body passes the gateway and the in-process service (whose own
    // default would be 2 MiB): a 3 MiB attachment is stored.
    let data = "QUJD".repeat(3 * 1024 * 1024 / 4);
    let doc = serde_json::json!({
        "resourceType": "DocumentReference", "status": "current",
        "content": [{"attachment": {"contentType": "application/pdf", "data": data}}]
    });
    let resp = app.post("/DocumentReference", &doc).await;
    assert_eq!(resp.status(), 201, "{}", resp.text().await.unwrap());
}

#[tokio::test]
async fn error_bodies_never_contain_sql_or_driver_text() {
    let app = TestApp::spawn().await;
    for path in ["/Patient?_count=abc", "/Patient?birthdate=ge19xx", "/Patient?_sort=nonsense", "/Patient/x/_history/0"]
    {
        let resp = app.get(path).await;
        let text = resp.text().await.unwrap();
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["resourceType"], "OperationOutcome", "{path}");
        for needle in ["SELECT", "sqlite", "postgres", "sqlx", "syntax error"] {
            assert!(!text.contains(needle), "{path} leaked {needle}: {text}");
        }
    }
}

#[tokio::test]
async fn capability_statement_states_what_is_implemented() {
    let app = TestApp::spawn().await;
    let cs = json(app.client.get(app.fhir("/metadata")).send().await.unwrap(), 200).await;
    assert_eq!(cs["resourceType"], "CapabilityStatement");
    assert_eq!(cs["fhirVersion"], "4.0.1");
    let resources = cs["rest"][0]["resource"].as_array().unwrap();
    let types: Vec<&str> = resources.iter().map(|r| r["type"].as_str().unwrap()).collect();
    for t in [
        "Patient",
        "Practitioner",
        "Organization",
        "Encounter",
        "Condition",
        "AllergyIntolerance",
        "Observation",
        "DiagnosticReport",
        "Procedure",
        "DocumentReference",
        "Composition",
    ] {
        assert!(types.contains(&t), "{t}");
    }
    let patient = resources.iter().find(|r| r["type"] == "Patient").unwrap();
    let params: Vec<&str> =
        patient["searchParam"].as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap()).collect();
    for p in ["_id", "_lastUpdated", "identifier", "name", "family", "given", "birthdate", "gender"] {
        assert!(params.contains(&p), "{p}");
    }
    // Every search parameter the statement lists is accepted by the server in strict mode.
    for r in resources {
        let t = r["type"].as_str().unwrap();
        // Operation-only entries (Bundle, CodeSystem, ValueSet) have no search parameters.
        for p in r["searchParam"].as_array().into_iter().flatten() {
            let name = p["name"].as_str().unwrap();
            let value = match p["type"].as_str().unwrap() {
                "date" => "2024",
                "quantity" | "number" => "1",
                "reference" => "Patient/1",
                _ => "x",
            };
            let resp = app
                .req(reqwest::Method::GET, &format!("/{t}?{name}={value}"))
                .header("prefer", "handling=strict")
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), 200, "{t}?{name}");
        }
    }
}

#[tokio::test]
async fn unsupported_formats_are_not_acceptable_and_wrong_methods_are_405() {
    let app = TestApp::spawn().await;
    outcome(app.get("/Patient?_format=text/turtle").await, 406, "not-supported").await;
    let resp = app.req(reqwest::Method::GET, "/Patient").header("accept", "text/turtle").send().await.unwrap();
    outcome(resp, 406, "not-supported").await;
    // XML is a format of this server now: answered, not refused.
    let resp = app.req(reqwest::Method::GET, "/Patient").header("accept", "application/fhir+xml").send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers()["content-type"].to_str().unwrap().starts_with("application/fhir+xml"));
    let resp = app
        .req(reqwest::Method::GET, "/Patient")
        .header("accept", "application/fhir+json, */*;q=0.1")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers()["content-type"].to_str().unwrap().starts_with("application/fhir+json"));
    outcome(app.req(reqwest::Method::POST, "/metadata").send().await.unwrap(), 405, "not-supported").await;
    outcome(app.req(reqwest::Method::DELETE, "/_history").send().await.unwrap(), 405, "not-supported").await;
}

#[tokio::test]
async fn request_ids_are_echoed_or_assigned() {
    let app = TestApp::spawn().await;
    let resp = app.req(reqwest::Method::GET, "/metadata").header("x-request-id", "abc-123").send().await.unwrap();
    assert_eq!(resp.headers()["x-request-id"], "abc-123");
    let resp = app.req(reqwest::Method::GET, "/metadata").send().await.unwrap();
    assert_eq!(resp.headers()["x-request-id"].to_str().unwrap().len(), 36, "a UUID is assigned");
}

#[test]
fn the_cli_fails_with_a_message_on_bad_input() {
    let ehr = env!("CARGO_BIN_EXE_ehr");
    let run = |args: &[&str], env: &[(&str, &str)]| {
        let out = std::process::Command::new(ehr).args(args).envs(env.iter().copied()).output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let (code, err, _) = run(&["serve", "--target", "bogus"], &[]);
    assert_eq!(code, Some(1));
    assert!(err.contains("unknown target `bogus`"), "{err}");
    let (code, err, _) = run(&["dev-token", "--tenant", "t1"], &[("EHR_AUTH__DEVELOPMENT_KEY", "false")]);
    assert_eq!(code, Some(1));
    assert!(err.contains("no development signing key"), "{err}");
    let (code, err, _) = run(&["dev-token", "--tenant", "t1"], &[("EHR_DATABSE__URL", "x")]);
    assert_eq!(code, Some(1));
    assert!(err.contains("unknown field"), "{err}");
    // A service alone never trusts the public development key…
    let (code, err, _) = run(&["serve", "--target", "patient-record"], &[]);
    assert_eq!(code, Some(1));
    assert!(err.contains("development_key"), "{err}");
    // …and needs its database named.
    let (code, err, _) = run(&["serve", "--target", "patient-record"], &[("EHR_AUTH__DEVELOPMENT_KEY", "false")]);
    assert_eq!(code, Some(1));
    assert!(err.contains("database.url") || err.contains("auth.issuer"), "{err}");
    let (code, _, out) = run(&["dev-token", "--tenant", "t1"], &[]);
    assert_eq!(code, Some(0));
    assert_eq!(out.trim().split('.').count(), 3, "a compact JWS");
}

#[tokio::test]
async fn operation_outcome_shape_is_stable() {
    // The exact shape clients and certification suites parse: one issue with severity, code,
    // the stable error code in details.coding, and a diagnostics text.
    let app = TestApp::spawn().await;
    let oo = json(app.get("/Patient/does-not-exist").await, 404).await;
    assert_eq!(
        oo,
        serde_json::json!({
            "resourceType": "OperationOutcome",
            "issue": [{
                "severity": "error",
                "code": "not-found",
                "details": {"coding": [{"system": "urn:ehr:error-code", "code": "EHR-STO-001"}]},
                "diagnostics": "resource not found"
            }]
        })
    );
}

#[tokio::test]
async fn format_in_a_search_form_and_refused_formats_are_not_acceptable() {
    let app = TestApp::spawn().await;
    let resp = app
        .req(reqwest::Method::POST, "/Patient/_search")
        .header("content-type", "application/x-www-form-urlencoded")
        .body("_format=text/turtle")
        .send()
        .await
        .unwrap();
    outcome(resp, 406, "not-supported").await;
    let resp = app
        .req(reqwest::Method::GET, "/Patient")
        .header("accept", "application/fhir+json;q=0, application/fhir+xml;q=0, text/html")
        .send()
        .await
        .unwrap();
    outcome(resp, 406, "not-supported").await;
    // The gateway's CapabilityStatement in XML keeps what the gateway adds (OAuth endpoints).
    let resp = app.client.get(app.fhir("/metadata?_format=xml")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers()["content-type"].to_str().unwrap().starts_with("application/fhir+xml"));
    let xml = resp.text().await.unwrap();
    assert!(xml.starts_with("<?xml") && xml.contains("<CapabilityStatement xmlns=\"http://hl7.org/fhir\">"), "{xml}");
    assert!(xml.contains("/auth/token") && xml.contains("AuditEvent"), "the gateway's additions are in the XML");
    // The data-export operations are declared (Bulk Data export at three levels, import, $everything).
    let cs: serde_json::Value = app.client.get(app.fhir("/metadata")).send().await.unwrap().json().await.unwrap();
    assert_eq!(cs["instantiates"][0], "http://hl7.org/fhir/uv/bulkdata/CapabilityStatement/bulk-data");
    let names = |ops: &serde_json::Value| -> Vec<String> {
        ops.as_array().into_iter().flatten().map(|o| o["name"].as_str().unwrap().to_owned()).collect()
    };
    assert_eq!(names(&cs["rest"][0]["operation"]), ["export", "import"]);
    let resource =
        |ty: &str| cs["rest"][0]["resource"].as_array().unwrap().iter().find(|r| r["type"] == ty).unwrap().clone();
    assert_eq!(names(&resource("Patient")["operation"]), ["validate", "export", "everything"]);
    assert_eq!(names(&resource("Group")["operation"]), ["validate", "export"]);
    // `$validate` is served for every type (ehr-validation beside each REST router); the
    // terminology entries carry their own operations only.
    let validated =
        |r: &&serde_json::Value| !["AuditEvent", "CodeSystem", "ValueSet"].contains(&r["type"].as_str().unwrap());
    for r in cs["rest"][0]["resource"].as_array().unwrap().iter().filter(validated) {
        assert!(names(&r["operation"]).contains(&"validate".to_owned()), "{}", r["type"]);
    }
}

#[test]
fn the_public_development_key_cannot_be_mixed_with_a_real_issuer() {
    let ehr = env!("CARGO_BIN_EXE_ehr");
    let dir = std::env::temp_dir().join(format!("ehr-cfg-{}", std::process::id()));
    let out = std::process::Command::new(ehr)
        .args(["serve", "--data-dir", dir.to_str().unwrap(), "--listen", "127.0.0.1:0"])
        .env("EHR_AUTH__ISSUER", "https://idp.example-hospital.jp")
        .env("EHR_AUTH__JWKS_URL", "http://127.0.0.1:9/jwks.json")
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("auth.development_key must be false"), "{err}");
}
