//! FullValidator over the JP-CLINS examples and the `$validate` routes through `router()`.
#![allow(clippy::unwrap_used)]

use super::*;
use serde_json::json;

/// The IG examples, shared with the ehr-fhir validator tests.
fn fixture(dir: &str, name: &str) -> Value {
    let path = format!("{}/../fhir/tests/validate/fixtures/{dir}/{name}", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn fixtures(dir: &str) -> Vec<(String, Value)> {
    let root = format!("{}/../fhir/tests/validate/fixtures/{dir}", env!("CARGO_MANIFEST_DIR"));
    let mut names: Vec<String> = std::fs::read_dir(root)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".json"))
        .collect();
    names.sort();
    names.into_iter().map(|n| (n.clone(), fixture(dir, &n))).collect()
}

fn errors(issues: &[Issue]) -> Vec<&Issue> {
    issues.iter().filter(|i| matches!(i.severity, Severity::Error | Severity::Fatal)).collect()
}

#[test]
fn every_valid_example_has_no_errors() {
    let v = FullValidator::builtin().unwrap();
    for (name, res) in fixtures("jp-clins") {
        let issues = v.validate(&res, None);
        assert!(!has_errors(&issues), "{name}: {:?}", errors(&issues));
    }
}

#[test]
fn both_error_examples_fail_with_their_rule() {
    let v = FullValidator::builtin().unwrap();
    let ext_eye =
        v.validate(&fixture("jp-clins-errors", "MedicationRequest-ErrorExample-JP-MedReq-ExtEye-Total1.json"), None);
    assert!(
        errors(&ext_eye).iter().any(|i| i.ehr_code == "EHR-VAL-018"
            && i.rule.as_deref() == Some("needs-anyOfStandardCode-medication")
            && i.expression == ["MedicationRequest"]),
        "{ext_eye:?}"
    );
    let sid =
        v.validate(&fixture("jp-clins-errors", "MedicationRequest-ErrorExample-JP-MedReq-PO-SID-28days.json"), None);
    let errs = errors(&sid);
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert_eq!(errs[0].ehr_code, "EHR-TERM-016");
    assert_eq!(errs[0].rule.as_deref(), Some(ehr_terminology::CODE_DISPLAY_CONFLICT));
    assert_eq!(errs[0].expression, ["MedicationRequest.medicationCodeableConcept.coding[0]"]);
    // No patient value leaks; the master's code for the display is named.
    assert!(errs[0].diagnostics.contains("1124030F2ZZZ"));
}

#[test]
fn profile_argument_counts_as_meta_profile() {
    let v = FullValidator::builtin().unwrap();
    let mut m = fixture("jp-clins-errors", "MedicationRequest-ErrorExample-JP-MedReq-ExtEye-Total1.json");
    m["meta"].as_object_mut().unwrap().remove("profile");
    assert!(!errors(&v.validate(&m, None)).iter().any(|i| i.ehr_code == "EHR-VAL-018"));
    let issues = v.validate(&m, Some("http://jpfhir.jp/fhir/eCS/StructureDefinition/JP_MedicationRequest_eCS|1.5.2"));
    assert!(errors(&issues).iter().any(|i| i.rule.as_deref() == Some("needs-anyOfStandardCode-medication")));
    // An unknown profile is a warning at the root, not an error.
    let issues = v.validate(&json!({"resourceType": "Patient"}), Some("http://example.org/p"));
    assert!(issues.iter().any(|i| i.ehr_code == "EHR-VAL-016" && i.severity == Severity::Warning));
    assert!(!has_errors(&issues));
}

#[test]
fn errors_are_classified() {
    let e = ValidationError::WrongType { expected: "Patient".into(), found: "Observation".into() };
    assert_eq!((e.code(), e.http_status()), ("EHR-VLD-003", 400));
    assert_eq!(ValidationError::UnknownType("Foo".into()).http_status(), 404);
    assert_eq!(ValidationError::NotAResource.issue_type(), IssueType::Structure);
}

mod routes {
    use super::*;
    use crate::http::{ValidateState, router};
    use axum::body::Body;
    use axum::http::{Request, StatusCode, header};
    use ehr_auth::{Claims, DEV_ISSUER, DevSigner, Verifier};
    use ehr_core::{Clock, SystemClock};
    use ehr_http::AuthState;
    use tower::ServiceExt;

    async fn app() -> (axum::Router, String) {
        let auth = AuthState { verifier: Verifier::development().await.unwrap(), clock: Arc::new(SystemClock) };
        let now = SystemClock.now().timestamp();
        // No resource scope: validation reads and writes no data.
        let claims = Claims {
            iss: DEV_ISSUER.into(),
            sub: "doctor-1".into(),
            exp: now + 600,
            iat: now,
            tenant: "hospital-a".into(),
            scope: "openid".into(),
            ..Claims::default()
        };
        let token = DevSigner::new().unwrap().sign(&claims).unwrap();
        let state = ValidateState {
            validator: FullValidator::builtin().unwrap(),
            auth,
            types: vec!["Patient", "MedicationRequest", "Bundle", "Parameters"],
        };
        (router(state), token)
    }

    fn post(uri: &str, token: Option<&str>, content_type: &str, body: String) -> Request<Body> {
        let mut b = Request::post(uri).header(header::CONTENT_TYPE, content_type);
        if let Some(t) = token {
            b = b.header(header::AUTHORIZATION, format!("Bearer {t}"));
        }
        b.body(Body::from(body)).unwrap()
    }

    async fn send(app: &axum::Router, req: Request<Body>) -> (StatusCode, String, String) {
        let resp = app.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let ct = resp.headers().get(header::CONTENT_TYPE).map(|v| v.to_str().unwrap().to_string()).unwrap_or_default();
        let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX).await.unwrap();
        (status, ct, String::from_utf8(bytes.to_vec()).unwrap())
    }

    async fn send_json(app: &axum::Router, uri: &str, token: Option<&str>, body: &Value) -> (StatusCode, Value) {
        let (status, _, text) = send(app, post(uri, token, "application/fhir+json", body.to_string())).await;
        (status, serde_json::from_str(&text).unwrap())
    }

    fn codes(oo: &Value) -> Vec<(String, String, Option<String>)> {
        oo["issue"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| {
                let c = &i["details"]["coding"];
                (
                    i["severity"].as_str().unwrap().to_string(),
                    c[0]["code"].as_str().unwrap().to_string(),
                    c[1]["code"].as_str().map(str::to_string),
                )
            })
            .collect()
    }

    #[tokio::test]
    async fn valid_invalid_and_parameters() {
        let (app, token) = app().await;
        let ok = fixture("jp-clins", "Patient-Example-JP-Patient-standard.json");
        let (status, oo) = send_json(&app, "/Patient/$validate", Some(&token), &ok).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(oo["resourceType"], "OperationOutcome");
        assert!(codes(&oo).iter().all(|(s, _, _)| s != "error"), "{oo}");

        let bad = fixture("jp-clins-errors", "MedicationRequest-ErrorExample-JP-MedReq-ExtEye-Total1.json");
        let (status, oo) = send_json(&app, "/MedicationRequest/$validate", Some(&token), &bad).await;
        assert_eq!(status, StatusCode::OK);
        let issue = oo["issue"].as_array().unwrap().iter().find(|i| i["severity"] == "error").unwrap();
        assert_eq!(issue["expression"], json!(["MedicationRequest"]));
        assert_eq!(
            issue["details"]["coding"][1],
            json!({"system": "urn:ehr:validation-rule", "code": "needs-anyOfStandardCode-medication"})
        );
        assert_eq!(issue["details"]["text"], "rule needs-anyOfStandardCode-medication");

        // Parameters form with a profile; the instance form checks the id.
        let mut plain = bad.clone();
        plain["meta"].as_object_mut().unwrap().remove("profile");
        let params = json!({"resourceType": "Parameters", "parameter": [
            {"name": "resource", "resource": plain},
            {"name": "mode", "valueCode": "create"},
            {"name": "profile", "valueUri": "http://jpfhir.jp/fhir/eCS/StructureDefinition/JP_MedicationRequest_eCS"}]});
        let (status, oo) = send_json(&app, "/MedicationRequest/$validate", Some(&token), &params).await;
        assert_eq!(status, StatusCode::OK);
        assert!(codes(&oo).iter().any(|c| c.2.as_deref() == Some("needs-anyOfStandardCode-medication")), "{oo}");
        // The profile as a query parameter.
        let uri = "/MedicationRequest/$validate?profile=http%3A%2F%2Fjpfhir.jp%2Ffhir%2FeCS%2FStructureDefinition%2FJP_MedicationRequest_eCS";
        let (_, oo) = send_json(&app, uri, Some(&token), &plain).await;
        assert!(codes(&oo).iter().any(|c| c.2.as_deref() == Some("needs-anyOfStandardCode-medication")), "{oo}");
        let id = bad["id"].as_str().unwrap();
        let (status, _) = send_json(&app, &format!("/MedicationRequest/{id}/$validate"), Some(&token), &bad).await;
        assert_eq!(status, StatusCode::OK);
        let (status, oo) = send_json(&app, "/MedicationRequest/other-id/$validate", Some(&token), &bad).await;
        assert_eq!((status, codes(&oo)[0].1.as_str()), (StatusCode::BAD_REQUEST, "EHR-VLD-006"));

        // A clean minimal resource: one information issue.
        let (_, oo) = send_json(&app, "/Patient/$validate", Some(&token), &json!({"resourceType": "Patient"})).await;
        assert_eq!(codes(&oo), [("information".to_string(), "EHR-VLD-100".to_string(), None)]);
    }

    #[tokio::test]
    async fn rejections() {
        let (app, token) = app().await;
        let p = json!({"resourceType": "Patient"});
        let (status, oo) = send_json(&app, "/Patient/$validate", None, &p).await;
        assert_eq!((status, oo["resourceType"].as_str()), (StatusCode::UNAUTHORIZED, Some("OperationOutcome")));
        let (status, oo) = send_json(&app, "/MedicationRequest/$validate", Some(&token), &p).await;
        assert_eq!((status, codes(&oo)[0].1.as_str()), (StatusCode::BAD_REQUEST, "EHR-VLD-003"));
        let (status, oo) = send_json(&app, "/Goal/$validate", Some(&token), &json!({"resourceType": "Goal"})).await;
        assert_eq!((status, codes(&oo)[0].1.as_str()), (StatusCode::NOT_FOUND, "EHR-VLD-004"));
        let params = json!({"resourceType": "Parameters", "parameter": [{"name": "mode", "valueCode": "create"}]});
        let (status, oo) = send_json(&app, "/Patient/$validate", Some(&token), &params).await;
        assert_eq!((status, codes(&oo)[0].1.as_str()), (StatusCode::BAD_REQUEST, "EHR-VLD-002"));
        let params = json!({"resourceType": "Parameters", "parameter": [{"name": "resource", "resource": p}, {"name": "mode", "valueCode": "x"}]});
        let (status, oo) = send_json(&app, "/Patient/$validate", Some(&token), &params).await;
        assert_eq!((status, codes(&oo)[0].1.as_str()), (StatusCode::BAD_REQUEST, "EHR-VLD-005"));
        let (status, _, _) =
            send(&app, post("/Patient/$validate", Some(&token), "application/fhir+json", "[1]".into())).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        // `Parameters/$validate` validates a Parameters resource when it has no resource input.
        let (status, _) =
            send_json(&app, "/Parameters/$validate", Some(&token), &json!({"resourceType": "Parameters"})).await;
        assert_eq!(status, StatusCode::OK);
    }

    #[tokio::test]
    async fn xml_in_and_out() {
        let (app, token) = app().await;
        let bad = fixture("jp-clins-errors", "MedicationRequest-ErrorExample-JP-MedReq-ExtEye-Total1.json");
        let xml = ehr_fhir::xml::to_xml(&bad).unwrap();
        let mut req = post("/MedicationRequest/$validate", Some(&token), "application/fhir+xml", xml);
        req.headers_mut().insert(header::ACCEPT, "application/fhir+xml".parse().unwrap());
        let (status, ct, body) = send(&app, req).await;
        assert_eq!(status, StatusCode::OK);
        assert!(ct.starts_with("application/fhir+xml"), "{ct}");
        assert!(body.contains("<OperationOutcome"), "{body}");
        assert!(body.contains("needs-anyOfStandardCode-medication"), "{body}");
        assert!(body.contains("urn:ehr:validation-rule"), "{body}");
    }

    /// Merged with routes named like the REST router's (`/{ty}/{id}`), the static `$validate`
    /// segment wins and axum does not report a conflict.
    #[tokio::test]
    async fn merges_with_rest_shaped_routes() {
        let (app, token) = app().await;
        let rest = axum::Router::new()
            .route("/{ty}/{id}", axum::routing::get(|| async { "read" }).put(|| async { "update" }))
            .route("/{ty}", axum::routing::post(|| async { "create" }));
        let merged = rest.merge(app);
        let (status, _) =
            send_json(&merged, "/Patient/$validate", Some(&token), &json!({"resourceType": "Patient"})).await;
        assert_eq!(status, StatusCode::OK);
        let resp = merged.oneshot(Request::get("/Patient/1").body(Body::empty()).unwrap()).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
    }
}
