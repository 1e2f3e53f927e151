//! The OpenAPI documents (openapi/README.md): the committed copy is what the code generates, and
//! every documented operation is routed by the real app of target `all` (the other direction —
//! every routed path is documented — is `ehr_app::openapi::routes`' test over the router sources).

use ehr_testkit::TestApp;
use reqwest::{Method, StatusCode};

/// Sample values of the path parameters: well-formed ids of nothing.
fn concrete(path: &str) -> String {
    path.split('/')
        .map(|s| match s {
            "{vid}" => "1",
            "{file}" => "Patient-1.ndjson",
            s if s.starts_with('{') => "openapi-probe",
            s => s,
        })
        .collect::<Vec<_>>()
        .join("/")
}

#[test]
fn committed_documents_match_the_code() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("openapi");
    let problems = ehr_app::openapi::check(&dir);
    assert!(problems.is_empty(), "{problems:#?}\nrun `cargo run -- openapi` and commit openapi/");
}

#[tokio::test]
async fn every_documented_operation_is_routed() {
    let app = TestApp::spawn().await;
    let token = app.token("user/*.cruds");
    let operations = ehr_app::openapi::operations();
    assert!(operations.len() > 100, "{} operations", operations.len());
    let mut unrouted = Vec::new();
    for (file, method, path) in &operations {
        let base = if *file == "metrics.json" { &app.metrics_address } else { &app.address };
        let url = format!("{base}{}", concrete(path));
        let method = Method::from_bytes(method.as_bytes()).unwrap();
        let mut req = app.client.request(method.clone(), &url).bearer_auth(&token);
        if matches!(method, Method::POST | Method::PUT | Method::PATCH) {
            req = req.header("content-type", "application/json").body("{}");
        }
        let resp = req.send().await.unwrap();
        let status = resp.status();
        let body = resp.text().await.unwrap_or_default();
        // "No such route" is the fallback's EHR-HTTP-006 (or axum's empty 404); a 404 naming a
        // missing resource, job or endpoint is an answer of the route.
        let no_route = status == StatusCode::METHOD_NOT_ALLOWED
            || (status == StatusCode::NOT_FOUND && (body.is_empty() || body.contains("EHR-HTTP-006")));
        if no_route {
            unrouted.push(format!("{file}: {method} {path} → {status} {body}"));
        }
    }
    assert!(unrouted.is_empty(), "documented but not routed:\n{}", unrouted.join("\n"));
}

/// Found by the fuzzer: in target `all` a path under a service's prefix that no route of the
/// service takes (`POST /fhir/`, the FHIR base is `/fhir`) answered an empty 404, which no
/// client can read; it is an OperationOutcome, as in the services' own targets.
#[tokio::test]
async fn paths_no_route_takes_answer_an_operation_outcome() {
    let app = TestApp::spawn().await;
    let token = app.token("user/*.cruds user/Connection.cruds user/NationalSubmission.cruds user/EPrescription.cruds");
    for (method, path) in [
        (Method::POST, "/fhir/"),
        (Method::GET, "/fhir/Patient/1/_history/1/extra"),
        (Method::GET, "/lab/nothing-here"),
        (Method::GET, "/clins/nothing-here"),
        (Method::GET, "/eprescription/nothing-here"),
    ] {
        let resp = app
            .client
            .request(method.clone(), format!("{}{path}", app.address))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::NOT_FOUND, "{method} {path}");
        let body: serde_json::Value = resp.json().await.unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        assert_eq!(body["resourceType"], "OperationOutcome", "{method} {path}: {body}");
    }
}
