//! A resource of another tenant answers 404 on every endpoint and never appears in results.

use crate::{id_of, observation};
use ehr_testkit::{ALL_SCOPES, TestApp, json, outcome, patient};
use reqwest::Method;
use serde_json::{Value, json};

/// Sends a request as tenant `other`.
async fn as_other(app: &TestApp, method: Method, path: &str, body: Option<&Value>) -> reqwest::Response {
    let mut req = app.client.request(method, app.fhir(path)).bearer_auth(app.token_for("other-hospital", ALL_SCOPES));
    if let Some(b) = body {
        req = req.header("content-type", "application/fhir+json").body(b.to_string());
    }
    req.send().await.unwrap()
}

#[tokio::test]
async fn another_tenant_cannot_see_or_touch_our_resources() {
    let app = TestApp::spawn().await;
    let sys = "urn:oid:1.2.392.100495.20.3.51.11311234567";
    let p = app.create(&patient("山田", "太郎", "1970-01-01", "X1")).await;
    let pid = id_of(&p);
    let o = app.create(&observation(&pid, "3B035000002327201", 1.0, "2024-01-01")).await;
    let oid = id_of(&o);

    // read, vread, instance history: 404 (not 403: existence is not disclosed)
    outcome(as_other(&app, Method::GET, &format!("/Patient/{pid}"), None).await, 404, "not-found").await;
    outcome(as_other(&app, Method::GET, &format!("/Patient/{pid}/_history/1"), None).await, 404, "not-found").await;
    outcome(as_other(&app, Method::GET, &format!("/Patient/{pid}/_history"), None).await, 404, "not-found").await;

    // search, chained search, _include, _revinclude, type and system history: empty
    for q in [
        format!("/Patient?_id={pid}"),
        format!("/Patient?identifier={sys}|X1"),
        "/Patient?family=山田".to_owned(),
        format!("/Observation?patient={pid}"),
        format!("/Observation?subject:Patient.identifier={sys}|X1"),
        format!("/Patient?_id={pid}&_revinclude=Observation:subject"),
        "/Patient/_history".to_owned(),
        "/_history".to_owned(),
    ] {
        let b = json(as_other(&app, Method::GET, &q, None).await, 200).await;
        assert_eq!(b["total"], 0, "{q}: {b}");
        assert!(b.get("entry").is_none(), "{q}: {b}");
    }
    // Their own observation pointing at our patient id does not include our patient.
    let theirs =
        json(as_other(&app, Method::POST, "/Observation", Some(&observation(&pid, "x", 1.0, "2024-01-01"))).await, 201)
            .await;
    let b = json(
        as_other(&app, Method::GET, &format!("/Observation?_id={}&_include=Observation:subject", id_of(&theirs)), None)
            .await,
        200,
    )
    .await;
    assert_eq!(b["entry"].as_array().unwrap().len(), 1, "only their own match, no included patient: {b}");

    // update with If-Match, patch, delete: 404 / no effect
    let mut changed = p.clone();
    changed["gender"] = json!("male");
    let resp = app
        .client
        .put(app.fhir(&format!("/Patient/{pid}")))
        .bearer_auth(app.token_for("other-hospital", ALL_SCOPES))
        .header("content-type", "application/fhir+json")
        .header("if-match", "W/\"1\"")
        .body(changed.to_string())
        .send()
        .await
        .unwrap();
    outcome(resp, 404, "not-found").await;
    let resp = app
        .client
        .patch(app.fhir(&format!("/Patient/{pid}")))
        .bearer_auth(app.token_for("other-hospital", ALL_SCOPES))
        .header("content-type", "application/json-patch+json")
        .body(r#"[{"op":"replace","path":"/gender","value":"male"}]"#)
        .send()
        .await
        .unwrap();
    outcome(resp, 404, "not-found").await;
    assert_eq!(as_other(&app, Method::DELETE, &format!("/Observation/{oid}"), None).await.status(), 204);
    // conditional operations only see their own tenant
    let cond = format!("identifier={sys}|X1");
    let resp = app
        .client
        .post(app.fhir("/Patient"))
        .bearer_auth(app.token_for("other-hospital", ALL_SCOPES))
        .header("content-type", "application/fhir+json")
        .header("if-none-exist", &cond)
        .body(patient("A", "B", "1990-01-01", "X1").to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201, "our match must not satisfy their If-None-Exist");
    // Their conditional delete matches only their own observation of that patient id.
    assert_eq!(as_other(&app, Method::DELETE, &format!("/Observation?patient={pid}"), None).await.status(), 204);

    // An update without If-Match creates *their own* resource with that id; ours is untouched.
    assert_eq!(as_other(&app, Method::PUT, &format!("/Patient/{pid}"), Some(&changed)).await.status(), 201);

    // transaction: a conditional reference cannot resolve to our patient
    let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"request": {"method": "POST", "url": "Observation"}, "resource": {
            "resourceType": "Observation", "status": "final", "code": {"text": "x"},
            "subject": {"reference": "Patient?family=山田"}}},
        {"request": {"method": "GET", "url": format!("Observation/{oid}")}}
    ]});
    let resp = as_other(&app, Method::POST, "", Some(&bundle)).await;
    assert!(matches!(resp.status().as_u16(), 400 | 404), "{}", resp.status());

    // A third tenant, which has nothing yet: its conditional update on a criterion only our
    // patient matches creates its own resource, and its batch reads nothing of ours.
    let third = |method: Method, path: String, body: Option<Value>| {
        let mut req =
            app.client.request(method, app.fhir(&path)).bearer_auth(app.token_for("third-hospital", ALL_SCOPES));
        if let Some(b) = body {
            req = req.header("content-type", "application/fhir+json").body(b.to_string());
        }
        req.send()
    };
    let batch = json!({"resourceType": "Bundle", "type": "batch", "entry": [
        {"request": {"method": "GET", "url": format!("Patient/{pid}")}},
        {"request": {"method": "GET", "url": format!("Observation?patient={pid}&_include=Observation:subject")}}
    ]});
    let b = json(third(Method::POST, String::new(), Some(batch)).await.unwrap(), 200).await;
    assert_eq!(b["entry"][0]["response"]["status"], "404 Not Found");
    assert_eq!(b["entry"][1]["resource"]["total"], 0);
    let resp =
        third(Method::PUT, format!("/Patient?identifier={sys}|X1"), Some(patient("山田", "X", "1990-01-01", "X1")))
            .await
            .unwrap();
    assert_eq!(resp.status(), 201, "our patient must not be the match of their conditional update");

    // Our view is unchanged.
    let ours = json(app.get(&format!("/Patient/{pid}")).await, 200).await;
    assert_eq!(ours["gender"], "female");
    assert_eq!(ours["meta"]["versionId"], "1");
    assert_eq!(json(app.get(&format!("/Observation/{oid}")).await, 200).await["meta"]["versionId"], "1");
    assert_eq!(json(app.get("/Patient").await, 200).await["total"], 1);
}
