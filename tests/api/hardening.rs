//! Regression tests of the security review of the gateway: races, oversized input, audit
//! completeness, revocation edges, and administrators' limits.

use crate::identity::{admin, claims};
use ehr_testkit::{PASSWORD, TestApp, json, outcome, patient, pkce};
use reqwest::Method;

#[tokio::test]
async fn concurrent_code_guesses_cannot_race_past_the_lockout() {
    let app = TestApp::spawn().await;
    let client = app.bootstrap().await;
    let mut u = app.account("target", &["nurse"]).await;
    app.login(&client, &mut u, "user/*.cruds").await;
    app.advance(30);
    let (_, challenge) = pkce();
    let request = app.authorize(&client, "", &challenge).await;
    let step = json(
        app.form("/auth/login", &[("request", &request), ("username", "target"), ("password", PASSWORD)]).await,
        200,
    )
    .await;
    let login = step["login"].as_str().unwrap().to_owned();
    let right = app.totp(u.secret.as_deref().unwrap());
    let mut guesses = Vec::new();
    for i in 0..30 {
        let code = format!("{:06}", (i * 7919) % 1_000_000);
        if code == right {
            continue;
        }
        let (app, login) = (&app, login.clone());
        guesses
            .push(async move { app.form("/auth/mfa", &[("login", &login), ("code", &code)]).await.status().as_u16() });
    }
    let statuses = futures::future::join_all(guesses).await;
    let checked = statuses.iter().filter(|s| **s == 401).count();
    assert!(checked <= 6, "only the threshold's worth of guesses are checked: {statuses:?}");
    assert!(statuses.iter().filter(|s| **s == 429).count() >= 23, "{statuses:?}");
}

#[tokio::test]
async fn oversized_login_input_is_refused_cheaply_and_the_trail_keeps_flowing() {
    let app = TestApp::spawn().await;
    let client = app.bootstrap().await;
    let (_, challenge) = pkce();
    let request = app.authorize(&client, "", &challenge).await;
    let huge = "x".repeat(10_000);
    outcome(
        app.form("/auth/login", &[("request", &request), ("username", &huge), ("password", "p")]).await,
        401,
        "login",
    )
    .await;
    // A body beyond the login endpoints' limit: refused before it is read.
    let body = "y".repeat(64 * 1024);
    let big = app.form("/auth/login", &[("request", &request), ("username", "u"), ("password", &body)]).await;
    assert_eq!(big.status(), 413);
    // A value no index could take (a long identifier) does not stop the audit writer.
    let mut p = patient("長い", "値", "1990-01-01", &"9".repeat(5000));
    p["name"][0]["family"] = "長".repeat(3000).into();
    app.create(&p).await;
    let events = app.audit_events("type=rest").await;
    assert!(!events.is_empty(), "the trail is still written and readable");
}

#[tokio::test]
async fn a_broad_search_names_every_patient_in_the_audit_trail() {
    let app = TestApp::spawn().await;
    let mut ids = Vec::new();
    for i in 0..60 {
        ids.push(crate::id_of(&app.create(&patient("多数", "患者", "1980-01-01", &format!("B-{i}"))).await));
    }
    let resp = app.get("/Patient?family=多数&_count=100").await;
    assert_eq!(json(resp, 200).await["entry"].as_array().unwrap().len(), 60);
    for id in [&ids[0], &ids[31], &ids[59]] {
        let events = app.audit_events(&format!("patient=Patient/{id}&subtype=search-type")).await;
        // (Reading the trail is audited too, naming the patients of the events read: leave the
        // test's own audit searches out.)
        let of_patients = events
            .iter()
            .filter(|e| e["entity"].as_array().unwrap().iter().any(|x| x["description"] == "Patient"))
            .count();
        assert_eq!(of_patients, 1, "the search of 60 patients is found under each of them");
    }
}

#[tokio::test]
async fn deactivating_a_client_ends_its_sessions_and_admins_cannot_promote_themselves() {
    let app = TestApp::spawn().await;
    let client = app.bootstrap().await;
    let admin_token = admin(&app, &client).await;
    let second = format!("{}-app2", app.tenant);
    let created = app
        .client
        .post(format!("{}/admin/clients", app.address))
        .bearer_auth(&admin_token)
        .json(&serde_json::json!({"client_id": second, "name": "app 2", "kind": "public", "redirect_uris": [ehr_testkit::REDIRECT], "scope": "offline_access user/*.cruds"}))
        .send()
        .await
        .unwrap();
    json(created, 201).await;
    let mut u = app.account("via-app2", &["nurse"]).await;
    let t = app.login(&second, &mut u, "offline_access user/*.cruds").await;
    let resp = app
        .client
        .post(format!("{}/admin/clients/{second}/deactivate", app.address))
        .bearer_auth(&admin_token)
        .send()
        .await
        .unwrap();
    json(resp, 200).await;
    let refreshed = app
        .form("/auth/token", &[("grant_type", "refresh_token"), ("refresh_token", t.refresh.as_deref().unwrap())])
        .await;
    assert_eq!(json(refreshed, 400).await["error"], "invalid_grant");

    let me = claims(&admin_token)["sub"].as_str().unwrap().to_owned();
    let promote = app
        .client
        .put(format!("{}/admin/users/{me}/roles", app.address))
        .bearer_auth(&admin_token)
        .json(&serde_json::json!({"roles": ["tenant-admin", "physician"]}))
        .send()
        .await
        .unwrap();
    outcome(promote, 403, "forbidden").await;
}

#[tokio::test]
async fn a_login_begun_before_the_sessions_were_ended_cannot_finish() {
    let app = TestApp::spawn().await;
    let client = app.bootstrap().await;
    let admin_token = admin(&app, &client).await;
    let mut u = app.account("half-way", &["nurse"]).await;
    app.login(&client, &mut u, "user/*.cruds").await;
    app.advance(30);
    let (_, challenge) = pkce();
    let request = app.authorize(&client, "", &challenge).await;
    let step = json(
        app.form("/auth/login", &[("request", &request), ("username", "half-way"), ("password", PASSWORD)]).await,
        200,
    )
    .await;
    // The administrator ends the user's sessions (a stolen password, say) while the login waits.
    app.advance(2);
    let end = app
        .client
        .post(format!("{}/admin/users/{}/sessions/end", app.address, u.id))
        .bearer_auth(&admin_token)
        .send()
        .await
        .unwrap();
    json(end, 200).await;
    let code = app.totp(u.secret.as_deref().unwrap());
    outcome(app.form("/auth/mfa", &[("login", step["login"].as_str().unwrap()), ("code", &code)]).await, 401, "login")
        .await;
}

#[tokio::test]
async fn the_development_key_is_refused_outside_loopback_and_for_the_gateway_target() {
    for (listen, target) in [("0.0.0.0:8080", ehr_app::Target::All), ("127.0.0.1:8080", ehr_app::Target::Gateway)] {
        let mut config = ehr_app::Config { listen: listen.into(), ..Default::default() };
        config.database.url = Some("sqlite::memory:".to_owned().into());
        let clock: std::sync::Arc<dyn ehr_core::Clock> = std::sync::Arc::new(ehr_core::SystemClock);
        let err = ehr_app::build(&config, target, clock).await.err().expect("refused");
        assert!(err.to_string().contains("development_key"), "{err}");
    }
}

#[tokio::test]
async fn key_publication_delays_are_bounded() {
    let app = TestApp::spawn().await;
    let sys = ehr_core::TenantId::system();
    ehr_gateway::ops::bootstrap_tenant(&app.gateway.store, &app.gateway.settings, app.now(), &sys, "System", None)
        .await
        .unwrap();
    let mut root = app.account_in("system", "root", &["system-admin"]).await;
    let token = app.login("system-cli", &mut root, "user/*.cruds").await.access;
    let resp = app
        .client
        .post(format!("{}/admin/keys/rotate", app.address))
        .bearer_auth(&token)
        .json(&serde_json::json!({"publish_secs": i64::MAX}))
        .send()
        .await
        .unwrap();
    outcome(resp, 400, "invalid").await;
    let resp = app.as_user(Method::GET, "/Patient", &token).send().await.unwrap();
    outcome(resp, 403, "forbidden").await;
}

#[tokio::test]
async fn login_forms_posted_from_another_site_are_refused() {
    let app = TestApp::spawn().await;
    let client = app.bootstrap().await;
    let mut u = app.account("csrf", &["nurse"]).await;
    app.login(&client, &mut u, "user/*.cruds").await;
    let (_, challenge) = pkce();
    let request = app.authorize(&client, "", &challenge).await;
    let post = |origin: String| {
        let (app, request) = (&app, request.clone());
        async move {
            app.client
                .post(format!("{}/auth/login", app.address))
                .header("origin", origin)
                .form(&[("request", request.as_str()), ("username", "csrf"), ("password", PASSWORD)])
                .send()
                .await
                .unwrap()
        }
    };
    let foreign = post("https://evil.example".into()).await;
    assert_eq!(foreign.status(), 403);
    assert!(foreign.text().await.unwrap().contains("another site"));
    // The gateway's own page posts with its own origin: accepted.
    assert_eq!(post(app.address.clone()).await.status(), 200);
}

#[tokio::test]
async fn the_owner_gets_back_in_after_a_long_back_off() {
    let app = TestApp::spawn().await;
    let client = app.bootstrap().await;
    let mut u = app.account("owner", &["nurse"]).await;
    app.login(&client, &mut u, "user/*.cruds").await;
    // Someone guesses eight times, waiting out each lock.
    for _ in 0..8 {
        let (_, challenge) = pkce();
        let request = app.authorize(&client, "", &challenge).await;
        let r = app
            .form("/auth/login", &[("request", &request), ("username", "owner"), ("password", "Wrong-password-1")])
            .await;
        assert!(matches!(r.status().as_u16(), 401 | 429));
        app.advance(3601);
    }
    // The owner, after the last lock: password and code both work, and the count is cleared.
    app.login(&client, &mut u, "user/*.cruds").await;
    let (_, challenge) = pkce();
    let request = app.authorize(&client, "", &challenge).await;
    let wrong = app
        .form("/auth/login", &[("request", &request), ("username", "owner"), ("password", "Wrong-password-1")])
        .await;
    assert_eq!(wrong.status(), 401, "a fresh count after the successful login");
}
