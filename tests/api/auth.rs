//! Bearer tokens are required and verified; SMART scopes are enforced per type and interaction.

use ehr_testkit::{TestApp, outcome, patient};
use reqwest::Method;

#[tokio::test]
async fn requests_without_a_valid_token_are_unauthorized() {
    let app = TestApp::spawn().await;
    outcome(app.client.get(app.fhir("/Patient")).send().await.unwrap(), 401, "login").await;
    outcome(app.client.get(app.fhir("/Patient")).bearer_auth("not-a-jwt").send().await.unwrap(), 401, "login").await;
    // Flip one character in the middle of the signature (the last one may only carry padding bits).
    let token = app.token("user/*.cruds");
    let at = token.len() - 20;
    let flipped = if &token[at..=at] == "A" { "B" } else { "A" };
    let token = format!("{}{flipped}{}", &token[..at], &token[at + 1..]);
    outcome(app.client.get(app.fhir("/Patient")).bearer_auth(&token).send().await.unwrap(), 401, "login").await;
    outcome(
        app.client.get(app.fhir("/Patient")).header("authorization", "Basic dTpw").send().await.unwrap(),
        401,
        "login",
    )
    .await;
}

#[tokio::test]
async fn scopes_are_enforced_per_type_and_interaction() {
    let app = TestApp::spawn().await;
    let created = app.create(&patient("A", "B", "1990-01-01", "S1")).await;
    let id = created["id"].as_str().unwrap();
    let read_only = app.token("user/Patient.rs");
    let send = |method: Method, path: String, token: &str| {
        app.client.request(method, app.fhir(&path)).bearer_auth(token).header("content-type", "application/fhir+json")
    };
    assert_eq!(send(Method::GET, format!("/Patient/{id}"), &read_only).send().await.unwrap().status(), 200);
    assert_eq!(send(Method::GET, "/Patient?family=A".into(), &read_only).send().await.unwrap().status(), 200);
    let body = patient("C", "D", "1990-01-01", "S2").to_string();
    outcome(
        send(Method::POST, "/Patient".into(), &read_only).body(body.clone()).send().await.unwrap(),
        403,
        "forbidden",
    )
    .await;
    outcome(send(Method::DELETE, format!("/Patient/{id}"), &read_only).send().await.unwrap(), 403, "forbidden").await;
    outcome(send(Method::GET, "/Observation".into(), &read_only).send().await.unwrap(), 403, "forbidden").await;
    // Read without search.
    let r_only = app.token("user/Patient.r");
    assert_eq!(send(Method::GET, format!("/Patient/{id}"), &r_only).send().await.unwrap().status(), 200);
    outcome(send(Method::GET, "/Patient".into(), &r_only).send().await.unwrap(), 403, "forbidden").await;
    // Create-only: can create, cannot read back.
    let c_only = app.token("system/Patient.c");
    assert_eq!(send(Method::POST, "/Patient".into(), &c_only).body(body.clone()).send().await.unwrap().status(), 201);
    outcome(send(Method::GET, format!("/Patient/{id}"), &c_only).send().await.unwrap(), 403, "forbidden").await;
    // patient/ scopes need a launch context this server does not implement: they grant nothing.
    outcome(
        send(Method::GET, format!("/Patient/{id}"), &app.token("patient/*.rs")).send().await.unwrap(),
        403,
        "forbidden",
    )
    .await;
    // Transactions check every entry.
    let bundle = serde_json::json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"request": {"method": "POST", "url": "Observation"}, "resource": {"resourceType": "Observation", "status": "final", "code": {"text": "x"}}}]});
    outcome(
        send(Method::POST, String::new(), &read_only).body(bundle.to_string()).send().await.unwrap(),
        403,
        "forbidden",
    )
    .await;
}

#[tokio::test]
async fn metadata_and_health_need_no_token() {
    let app = TestApp::spawn().await;
    assert_eq!(app.client.get(app.fhir("/metadata")).send().await.unwrap().status(), 200);
    assert_eq!(app.client.get(format!("{}/livez", app.address)).send().await.unwrap().status(), 200);
    assert_eq!(app.client.get(format!("{}/readyz", app.address)).send().await.unwrap().status(), 200);
}

#[tokio::test]
async fn expired_foreign_and_malformed_claims_are_refused() {
    let app = TestApp::spawn().await;
    let get = |token: String| app.client.get(app.fhir("/Patient")).bearer_auth(token).send();
    let resp = get(app.sign(&app.tenant, "user/*.cruds", -1)).await.unwrap();
    assert_eq!(resp.headers()["www-authenticate"], "Bearer");
    let oo = outcome(resp, 401, "login").await;
    assert_eq!(oo["issue"][0]["details"]["coding"][0]["code"], "EHR-AUTH-003");
    // Another issuer, even with a valid signature of a key we know, is not trusted.
    let mut claims = app.claims(&app.tenant, "user/*.cruds");
    claims.iss = "https://evil.example".into();
    outcome(get(app.sign_claims(&claims)).await.unwrap(), 401, "login").await;
    // A tenant claim that is not a tenant id is refused, never defaulted.
    outcome(get(app.token_for("no spaces allowed", "user/*.cruds")).await.unwrap(), 401, "login").await;
    // `alg: none` with the same claims.
    let unsigned = {
        let token = app.token("user/*.cruds");
        let payload = token.split('.').nth(1).unwrap().to_owned();
        format!("eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{payload}.")
    };
    outcome(get(unsigned).await.unwrap(), 401, "login").await;
}

#[tokio::test]
async fn chained_criteria_need_search_scope_on_the_chained_type() {
    let app = TestApp::spawn().await;
    let obs_only = app.token("user/Observation.rs");
    let get = |path: &str| app.client.get(app.fhir(path)).bearer_auth(&obs_only).send();
    assert_eq!(get("/Observation?code=x").await.unwrap().status(), 200);
    outcome(get("/Observation?subject:Patient.name=yamada").await.unwrap(), 403, "forbidden").await;
    // The same holds for conditions of conditional operations.
    let obs_all = app.token("user/Observation.cruds");
    let resp = app
        .client
        .delete(app.fhir("/Observation?subject:Patient.name=yamada"))
        .bearer_auth(&obs_all)
        .send()
        .await
        .unwrap();
    outcome(resp, 403, "forbidden").await;
    let both = app.token("user/Observation.rs user/Patient.s");
    let resp =
        app.client.get(app.fhir("/Observation?subject:Patient.name=yamada")).bearer_auth(&both).send().await.unwrap();
    assert_eq!(resp.status(), 200);
}

#[tokio::test]
async fn tokens_not_yet_valid_are_refused() {
    let app = TestApp::spawn().await;
    let mut claims = app.claims(&app.tenant, "user/*.cruds");
    claims.nbf = Some(claims.iat + 3600);
    let resp = app.client.get(app.fhir("/Patient")).bearer_auth(app.sign_claims(&claims)).send().await.unwrap();
    outcome(resp, 401, "login").await;
}
