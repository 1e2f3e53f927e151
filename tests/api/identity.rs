//! Login → MFA → token → FHIR, through the real HTTP API against real Redis: wrong password,
//! wrong and replayed codes, lockout and unlock, recovery codes, refresh rotation with reuse
//! detection, deactivation, key rotation, SMART discovery and Backend Services.

use ehr_testkit::{PASSWORD, REDIRECT, TestApp, json, outcome, patient, pkce};
use reqwest::Method;
use serde_json::Value;

/// The claims of a JWT (no verification: the server did that).
pub fn claims(jwt: &str) -> Value {
    use base64::Engine;
    let payload = jwt.split('.').nth(1).unwrap();
    serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap()
}

fn kid(jwt: &str) -> String {
    use base64::Engine;
    let header = jwt.split('.').next().unwrap();
    let h: Value =
        serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(header).unwrap()).unwrap();
    h["kid"].as_str().unwrap().to_owned()
}

/// A tenant administrator, logged in.
pub async fn admin(app: &TestApp, client: &str) -> String {
    let mut a = app.account("admin", &["tenant-admin"]).await;
    app.login(client, &mut a, "user/*.cruds").await.access
}

async fn admin_post(app: &TestApp, token: &str, path: &str) -> reqwest::Response {
    app.client.post(format!("{}{path}", app.address)).bearer_auth(token).send().await.unwrap()
}

#[tokio::test]
async fn login_with_totp_enrolment_gives_a_short_lived_token_that_reads_fhir() {
    let app = TestApp::spawn().await;
    let client = app.bootstrap().await;
    let mut doctor = app.account("dr-sato", &["physician"]).await;
    let tokens = app.login(&client, &mut doctor, "openid user/*.cruds").await;
    assert_eq!(doctor.recovery_codes.len(), 10, "enrolment shows the recovery codes once");
    assert!(tokens.body["expires_in"].as_i64().unwrap() <= 900);
    let c = claims(&tokens.access);
    assert_eq!(c["tenant"], app.tenant.as_str());
    assert_eq!(c["sub"], doctor.id.as_str());
    assert_eq!(c["roles"][0], "physician");
    assert!(c["exp"].as_i64().unwrap() - c["iat"].as_i64().unwrap() <= 900);
    // The physician's scopes come from the access matrix, narrowed to what the app asked for.
    assert!(tokens.scope.contains("user/Observation.crus"), "{}", tokens.scope);
    assert!(!tokens.scope.contains("AuditEvent"), "{}", tokens.scope);
    // Patients are registered at the front desk (clerk); the physician reads and records.
    let created = app.create(&patient("佐藤", "花子", "1980-02-03", "P-1")).await;
    let id = created["id"].as_str().unwrap();
    assert_eq!(app.as_user(Method::GET, &format!("/Patient/{id}"), &tokens.access).send().await.unwrap().status(), 200);
    let obs = app
        .as_user(Method::POST, "/Observation", &tokens.access)
        .header("content-type", "application/fhir+json")
        .body(crate::observation(id, "3A015000002327101", 4.1, "2026-11-25").to_string())
        .send()
        .await
        .unwrap();
    json(obs, 201).await;
    let denied = app
        .as_user(Method::POST, "/Patient", &tokens.access)
        .header("content-type", "application/fhir+json")
        .body(patient("佐藤", "次郎", "1981-02-03", "P-2").to_string())
        .send()
        .await
        .unwrap();
    outcome(denied, 403, "forbidden").await;
    // The second login uses the enrolled authenticator, no enrolment.
    let again = app.login(&client, &mut doctor, "user/*.cruds").await;
    assert_ne!(again.access, tokens.access);
}

#[tokio::test]
async fn wrong_password_wrong_code_and_replayed_code_are_refused() {
    let app = TestApp::spawn().await;
    let client = app.bootstrap().await;
    let mut nurse = app.account("ns-ito", &["nurse"]).await;
    app.login(&client, &mut nurse, "user/*.cruds").await;
    let secret = nurse.secret.clone().unwrap();

    let (_, challenge) = pkce();
    let request = app.authorize(&client, "user/*.cruds", &challenge).await;
    let wrong = app
        .form("/auth/login", &[("request", &request), ("username", "ns-ito"), ("password", "Wrong-password-1")])
        .await;
    let oo = outcome(wrong, 401, "login").await;
    assert!(oo.to_string().contains("invalid username or password"));
    // An unknown user gets the very same answer.
    let unknown =
        app.form("/auth/login", &[("request", &request), ("username", "nobody"), ("password", PASSWORD)]).await;
    let oo2 = outcome(unknown, 401, "login").await;
    assert_eq!(oo["issue"][0]["diagnostics"], oo2["issue"][0]["diagnostics"]);

    app.advance(30);
    let step = json(
        app.form("/auth/login", &[("request", &request), ("username", "ns-ito"), ("password", PASSWORD)]).await,
        200,
    )
    .await;
    assert_eq!(step["next"], "mfa");
    let login = step["login"].as_str().unwrap();
    let code = app.totp(&secret);
    let bad = if code == "000000" { "111111" } else { "000000" };
    outcome(app.form("/auth/mfa", &[("login", login), ("code", bad)]).await, 401, "login").await;
    outcome(app.form("/auth/mfa", &[("login", login), ("code", "12ab")]).await, 401, "login").await;
    json(app.form("/auth/mfa", &[("login", login), ("code", &code)]).await, 200).await;

    // The same code, in the same 30-second step, on a new login: refused as a replay.
    let request = app.authorize(&client, "user/*.cruds", &challenge).await;
    let step = json(
        app.form("/auth/login", &[("request", &request), ("username", "ns-ito"), ("password", PASSWORD)]).await,
        200,
    )
    .await;
    let replay = app.form("/auth/mfa", &[("login", step["login"].as_str().unwrap()), ("code", &code)]).await;
    let oo = outcome(replay, 401, "login").await;
    assert!(oo.to_string().contains("already been used"), "{oo}");
}

#[tokio::test]
async fn repeated_failures_lock_the_account_with_back_off_until_time_passes_or_an_admin_unlocks() {
    let app = TestApp::spawn().await;
    let client = app.bootstrap().await;
    let admin_token = admin(&app, &client).await;
    let mut clerk = app.account("clerk-1", &["clerk"]).await;
    app.login(&client, &mut clerk, "user/*.cruds").await;

    let (_, challenge) = pkce();
    let request = app.authorize(&client, "", &challenge).await;
    let attempt = |password: &'static str| {
        let request = request.clone();
        let app = &app;
        async move {
            app.form("/auth/login", &[("request", &request), ("username", "clerk-1"), ("password", password)]).await
        }
    };
    for _ in 0..4 {
        outcome(attempt("Wrong-password-1").await, 401, "login").await;
    }
    // The fifth failure locks: even the right password is refused, with Retry-After.
    outcome(attempt("Wrong-password-1").await, 401, "login").await;
    let locked = attempt(PASSWORD).await;
    let retry: i64 = locked.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    outcome(locked, 429, "throttled").await;

    // Back-off ends by itself.
    app.advance(61);
    assert_eq!(attempt(PASSWORD).await.status(), 200);

    // Lock again: the sixth failure in the window doubles the lock (120 s); an admin lifts it.
    for _ in 0..6 {
        attempt("Wrong-password-1").await;
    }
    let locked = attempt(PASSWORD).await;
    let retry: i64 = locked.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!(retry > 60, "exponential back-off: {retry}");
    let unlocked = admin_post(&app, &admin_token, &format!("/admin/users/{}/unlock", clerk.id)).await;
    assert_eq!(unlocked.status(), 200);
    assert_eq!(attempt(PASSWORD).await.status(), 200);
}

#[tokio::test]
async fn recovery_codes_work_once() {
    let app = TestApp::spawn().await;
    let client = app.bootstrap().await;
    let mut ph = app.account("ph-kato", &["pharmacist"]).await;
    app.login(&client, &mut ph, "user/*.cruds").await;
    let rc = ph.recovery_codes[0].clone();
    for expected in [200, 401] {
        let (verifier, challenge) = pkce();
        let request = app.authorize(&client, "user/*.cruds", &challenge).await;
        let step = json(
            app.form("/auth/login", &[("request", &request), ("username", "ph-kato"), ("password", PASSWORD)]).await,
            200,
        )
        .await;
        let done = app.form("/auth/mfa", &[("login", step["login"].as_str().unwrap()), ("recovery_code", &rc)]).await;
        assert_eq!(done.status(), expected);
        if expected == 200 {
            let done = json(done, 200).await;
            app.redeem(&client, done["redirect"].as_str().unwrap(), &verifier).await;
        }
    }
}

#[tokio::test]
async fn refresh_tokens_rotate_and_a_reused_one_revokes_the_whole_session() {
    let app = TestApp::spawn().await;
    let client = app.bootstrap().await;
    let mut doctor = app.account("dr-abe", &["physician"]).await;
    let first = app.login(&client, &mut doctor, "offline_access user/*.cruds").await;
    let r1 = first.refresh.clone().unwrap();
    let refresh = |token: String| {
        let app = &app;
        let client = client.clone();
        async move {
            app.form(
                "/auth/token",
                &[("grant_type", "refresh_token"), ("refresh_token", &token), ("client_id", &client)],
            )
            .await
        }
    };
    let second = json(refresh(r1.clone()).await, 200).await;
    let r2 = second["refresh_token"].as_str().unwrap().to_owned();
    let access2 = second["access_token"].as_str().unwrap().to_owned();
    assert_ne!(r1, r2);
    assert_eq!(app.as_user(Method::GET, "/Patient", &access2).send().await.unwrap().status(), 200);

    // r1 again: reuse. The family dies: r2 and the access tokens of the session stop working.
    let reused = refresh(r1).await;
    assert_eq!(reused.status(), 400);
    assert_eq!(json(reused, 400).await["error"], "invalid_grant");
    assert_eq!(json(refresh(r2).await, 400).await["error"], "invalid_grant");
    outcome(app.as_user(Method::GET, "/Patient", &access2).send().await.unwrap(), 401, "login").await;
    outcome(app.as_user(Method::GET, "/Patient", &first.access).send().await.unwrap(), 401, "login").await;
    // A made-up token of an unknown family is just invalid.
    assert_eq!(json(refresh("nope.nope".into()).await, 400).await["error"], "invalid_grant");
}

#[tokio::test]
async fn a_deactivated_user_loses_access_at_once() {
    let app = TestApp::spawn().await;
    let client = app.bootstrap().await;
    let admin_token = admin(&app, &client).await;
    let mut leaver = app.account("leaver", &["nurse"]).await;
    let tokens = app.login(&client, &mut leaver, "offline_access user/*.cruds").await;
    assert_eq!(app.as_user(Method::GET, "/Patient", &tokens.access).send().await.unwrap().status(), 200);

    let resp = admin_post(&app, &admin_token, &format!("/admin/users/{}/deactivate", leaver.id)).await;
    assert_eq!(json(resp, 200).await["active"], false);
    outcome(app.as_user(Method::GET, "/Patient", &tokens.access).send().await.unwrap(), 401, "login").await;
    let refreshed = app
        .form(
            "/auth/token",
            &[
                ("grant_type", "refresh_token"),
                ("refresh_token", tokens.refresh.as_deref().unwrap()),
                ("client_id", &client),
            ],
        )
        .await;
    assert_eq!(json(refreshed, 400).await["error"], "invalid_grant");
    let (_, challenge) = pkce();
    let request = app.authorize(&client, "", &challenge).await;
    let login = app.form("/auth/login", &[("request", &request), ("username", "leaver"), ("password", PASSWORD)]).await;
    outcome(login, 401, "login").await;
    // An administrator cannot deactivate herself.
    let me = claims(&admin_token)["sub"].as_str().unwrap().to_owned();
    outcome(admin_post(&app, &admin_token, &format!("/admin/users/{me}/deactivate")).await, 403, "forbidden").await;
}

#[tokio::test]
async fn signing_keys_rotate_without_breaking_issued_tokens() {
    let app = TestApp::spawn().await;
    let client = app.bootstrap().await;
    // The system tenant and its administrator rotate keys.
    let sys = ehr_core::TenantId::system();
    ehr_gateway::ops::bootstrap_tenant(&app.gateway.store, &app.gateway.settings, app.now(), &sys, "System", None)
        .await
        .unwrap();
    let mut root = app.account_in("system", "root", &["system-admin"]).await;
    let root_token = app.login("system-cli", &mut root, "user/*.cruds").await.access;
    let mut doctor = app.account("dr-ueda", &["physician"]).await;
    let old = app.login(&client, &mut doctor, "user/*.cruds").await.access;
    let old_kid = kid(&old);

    let rotated = app
        .client
        .post(format!("{}/admin/keys/rotate", app.address))
        .bearer_auth(&root_token)
        .json(&serde_json::json!({"publish_secs": 60}))
        .send()
        .await
        .unwrap();
    let new_kid = json(rotated, 201).await["kid"].as_str().unwrap().to_owned();
    let jwks = json(app.client.get(format!("{}/.well-known/jwks.json", app.address)).send().await.unwrap(), 200).await;
    let kids: Vec<&str> = jwks["keys"].as_array().unwrap().iter().map(|k| k["kid"].as_str().unwrap()).collect();
    assert!(kids.contains(&old_kid.as_str()) && kids.contains(&new_kid.as_str()), "published before use: {kids:?}");

    // login() moves the clock 30 s: still inside the publication delay, the old key signs.
    assert_eq!(kid(&app.login(&client, &mut doctor, "user/*.cruds").await.access), old_kid);
    app.advance(31);
    let new = app.login(&client, &mut doctor, "user/*.cruds").await.access;
    assert_eq!(kid(&new), new_kid);
    // Tokens of both keys verify.
    for t in [&old, &new] {
        assert_eq!(app.as_user(Method::GET, "/Patient", t).send().await.unwrap().status(), 200);
    }
    // Once every token of the old key has expired, the key is no longer published.
    app.advance(3600);
    let jwks = json(app.client.get(format!("{}/.well-known/jwks.json", app.address)).send().await.unwrap(), 200).await;
    assert!(!jwks.to_string().contains(&old_kid));
}

#[tokio::test]
async fn bad_authorization_requests_are_shown_not_redirected() {
    let app = TestApp::spawn().await;
    let client = app.bootstrap().await;
    let (_, challenge) = pkce();
    let cases: Vec<Vec<(&str, &str)>> = vec![
        vec![
            ("response_type", "code"),
            ("client_id", "nope"),
            ("redirect_uri", REDIRECT),
            ("code_challenge", &challenge),
            ("code_challenge_method", "S256"),
        ],
        vec![
            ("response_type", "code"),
            ("client_id", &client),
            ("redirect_uri", "https://evil.example/cb"),
            ("code_challenge", &challenge),
            ("code_challenge_method", "S256"),
        ],
        vec![("response_type", "code"), ("client_id", &client), ("redirect_uri", REDIRECT)],
        vec![
            ("response_type", "code"),
            ("client_id", &client),
            ("redirect_uri", REDIRECT),
            ("code_challenge", &challenge),
            ("code_challenge_method", "plain"),
        ],
        vec![
            ("response_type", "token"),
            ("client_id", &client),
            ("redirect_uri", REDIRECT),
            ("code_challenge", &challenge),
            ("code_challenge_method", "S256"),
        ],
    ];
    for q in cases {
        let resp = app.client.get(format!("{}/auth/authorize", app.address)).query(&q).send().await.unwrap();
        assert_eq!(resp.status(), 400, "{q:?}");
        assert!(resp.headers().get("location").is_none());
        assert!(resp.headers()["content-type"].to_str().unwrap().starts_with("text/html"));
    }
    // The HTML login page escapes and is framed by nobody.
    let ok = app
        .client
        .get(format!("{}/auth/authorize", app.address))
        .query(&[
            ("response_type", "code"),
            ("client_id", client.as_str()),
            ("redirect_uri", REDIRECT),
            ("state", "<x>"),
            ("code_challenge", &challenge),
            ("code_challenge_method", "S256"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    assert!(ok.headers()["content-security-policy"].to_str().unwrap().contains("frame-ancestors 'none'"));
    assert!(ok.text().await.unwrap().contains("name=\"password\""));
}

#[tokio::test]
async fn codes_are_single_use_and_bound_to_the_pkce_verifier() {
    let app = TestApp::spawn().await;
    let client = app.bootstrap().await;
    let mut u = app.account("u1", &["clerk"]).await;
    app.login(&client, &mut u, "user/*.cruds").await;
    app.advance(30);
    let (verifier, challenge) = pkce();
    let request = app.authorize(&client, "user/*.cruds", &challenge).await;
    let step =
        json(app.form("/auth/login", &[("request", &request), ("username", "u1"), ("password", PASSWORD)]).await, 200)
            .await;
    let code = app.totp(u.secret.as_deref().unwrap());
    let done =
        json(app.form("/auth/mfa", &[("login", step["login"].as_str().unwrap()), ("code", &code)]).await, 200).await;
    let redirect = reqwest::Url::parse(done["redirect"].as_str().unwrap()).unwrap();
    assert_eq!(redirect.query_pairs().find(|(k, _)| k == "state").unwrap().1, "st-1");
    let code = redirect.query_pairs().find(|(k, _)| k == "code").unwrap().1.into_owned();
    let exchange = |v: String| {
        let (app, code, client) = (&app, code.clone(), client.clone());
        async move {
            app.form(
                "/auth/token",
                &[
                    ("grant_type", "authorization_code"),
                    ("code", &code),
                    ("redirect_uri", REDIRECT),
                    ("client_id", &client),
                    ("code_verifier", &v),
                ],
            )
            .await
        }
    };
    // A wrong verifier burns the code (it was taken), and the right one cannot use it after.
    let wrong = json(exchange("x".repeat(43)).await, 400).await;
    assert_eq!(wrong["error"], "invalid_grant");
    assert_eq!(json(exchange(verifier).await, 400).await["error"], "invalid_grant");
    let unsupported = json(app.form("/auth/token", &[("grant_type", "password")]).await, 400).await;
    assert_eq!(unsupported["error"], "unsupported_grant_type");
}

#[tokio::test]
async fn smart_discovery_and_jwks_are_published() {
    let app = TestApp::spawn().await;
    for path in ["/.well-known/smart-configuration", "/fhir/.well-known/smart-configuration"] {
        let conf = json(app.client.get(format!("{}{path}", app.address)).send().await.unwrap(), 200).await;
        assert_eq!(conf["code_challenge_methods_supported"], serde_json::json!(["S256"]));
        assert!(conf["token_endpoint"].as_str().unwrap().ends_with("/auth/token"));
        assert!(conf["grant_types_supported"].as_array().unwrap().iter().any(|g| g == "client_credentials"));
    }
    let jwks = json(app.client.get(format!("{}/.well-known/jwks.json", app.address)).send().await.unwrap(), 200).await;
    let key = &jwks["keys"][0];
    assert_eq!(key["alg"], "ES256");
    assert!(key.get("d").is_none(), "never the private part");
}

#[tokio::test]
async fn backend_services_get_system_tokens_with_a_signed_assertion() {
    use p256::pkcs8::EncodePrivateKey;
    let app = TestApp::spawn().await;
    let client = app.bootstrap().await;
    let admin_token = admin(&app, &client).await;
    let lab = format!("{}-lab-system", app.tenant);
    let secret = p256::SecretKey::random(&mut rand::rngs::OsRng);
    let mut jwk: Value = serde_json::from_str(&secret.public_key().to_jwk_string()).unwrap();
    jwk["kid"] = "lab-key-1".into();
    jwk["alg"] = "ES256".into();
    let registered = app
        .client
        .post(format!("{}/admin/clients", app.address))
        .bearer_auth(&admin_token)
        .json(&serde_json::json!({"client_id": lab, "name": "Outsourced lab", "kind": "backend",
            "jwks": {"keys": [jwk]}, "scope": "system/Observation.crus system/Patient.rs"}))
        .send()
        .await
        .unwrap();
    json(registered, 201).await;
    let pem = secret.to_pkcs8_pem(p256::pkcs8::LineEnding::LF).unwrap();
    let key = jsonwebtoken::EncodingKey::from_ec_pem(pem.as_bytes()).unwrap();
    let token_endpoint = format!("{}/auth/token", app.address);
    let assertion = |jti: &str, aud: &str| {
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
        header.kid = Some("lab-key-1".into());
        let now = app.now();
        let claims = serde_json::json!({"iss": lab, "sub": lab, "aud": aud, "exp": now + 240, "jti": jti});
        jsonwebtoken::encode(&header, &claims, &key).unwrap()
    };
    let grant = |a: String, scope: &'static str| {
        let app = &app;
        async move {
            app.form(
                "/auth/token",
                &[
                    ("grant_type", "client_credentials"),
                    ("scope", scope),
                    ("client_assertion_type", "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"),
                    ("client_assertion", &a),
                ],
            )
            .await
        }
    };
    let ok =
        json(grant(assertion("j1", &token_endpoint), "system/Observation.rs system/Encounter.rs").await, 200).await;
    assert_eq!(ok["scope"], "system/Observation.rs", "narrowed to what the client may have");
    assert!(ok.get("refresh_token").is_none());
    let token = ok["access_token"].as_str().unwrap();
    assert_eq!(claims(token)["sub"], lab.as_str());
    assert_eq!(app.as_user(Method::GET, "/Observation", token).send().await.unwrap().status(), 200);
    outcome(app.as_user(Method::GET, "/Encounter", token).send().await.unwrap(), 403, "forbidden").await;
    // Replayed jti, wrong audience, unknown client: invalid_client (401).
    for a in [assertion("j1", &token_endpoint), assertion("j2", "https://elsewhere/token")] {
        let resp = grant(a, "system/Observation.rs").await;
        assert_eq!(json(resp, 401).await["error"], "invalid_client");
    }
    let nothing = grant(assertion("j3", &token_endpoint), "system/Encounter.rs").await;
    assert_eq!(json(nothing, 400).await["error"], "invalid_scope");
}

#[tokio::test]
async fn mfa_reset_forces_a_new_enrolment_and_is_not_allowed_on_oneself() {
    let app = TestApp::spawn().await;
    let client = app.bootstrap().await;
    let admin_token = admin(&app, &client).await;
    let mut lab = app.account("lab-1", &["lab-technician"]).await;
    let tokens = app.login(&client, &mut lab, "user/*.cruds").await;
    let old_secret = lab.secret.clone().unwrap();
    json(admin_post(&app, &admin_token, &format!("/admin/users/{}/reset-mfa", lab.id)).await, 200).await;
    // Sessions opened with the old authenticator end.
    outcome(app.as_user(Method::GET, "/Observation", &tokens.access).send().await.unwrap(), 401, "login").await;
    app.login(&client, &mut lab, "user/*.cruds").await;
    assert_ne!(lab.secret.unwrap(), old_secret, "a new enrolment with a new secret");
    let me = claims(&admin_token)["sub"].as_str().unwrap().to_owned();
    outcome(admin_post(&app, &admin_token, &format!("/admin/users/{me}/reset-mfa")).await, 403, "forbidden").await;
}

#[tokio::test]
async fn accounts_unused_for_n_days_are_reported() {
    let app = TestApp::spawn().await;
    let client = app.bootstrap().await;
    let idle = app.account("idle", &["clerk"]).await;
    app.advance(100 * 86_400);
    let mut active = app.account("active", &["clerk"]).await;
    app.login(&client, &mut active, "user/*.cruds").await;
    let admin_token = admin(&app, &client).await;
    let report = app
        .client
        .get(format!("{}/admin/reports/unused-accounts?days=90", app.address))
        .bearer_auth(&admin_token)
        .send()
        .await
        .unwrap();
    let report = json(report, 200).await;
    let names: Vec<&str> =
        report["users"].as_array().unwrap().iter().map(|u| u["username"].as_str().unwrap()).collect();
    assert_eq!(names, vec!["idle"], "{report}");
    assert!(report.to_string().contains(&idle.id));
    assert!(!report.to_string().contains("password"), "no hashes in any view");
    let bad = app
        .client
        .get(format!("{}/admin/reports/unused-accounts?days=-1", app.address))
        .bearer_auth(&admin_token)
        .send()
        .await
        .unwrap();
    outcome(bad, 400, "invalid").await;
}

#[tokio::test]
async fn logout_ends_the_session() {
    let app = TestApp::spawn().await;
    let client = app.bootstrap().await;
    let mut u = app.account("u2", &["nurse"]).await;
    let t = app.login(&client, &mut u, "offline_access user/*.cruds").await;
    let out = app.client.post(format!("{}/auth/logout", app.address)).bearer_auth(&t.access).send().await.unwrap();
    assert_eq!(out.status(), 204);
    outcome(app.as_user(Method::GET, "/Patient", &t.access).send().await.unwrap(), 401, "login").await;
    let refreshed = app
        .form("/auth/token", &[("grant_type", "refresh_token"), ("refresh_token", t.refresh.as_deref().unwrap())])
        .await;
    assert_eq!(json(refreshed, 400).await["error"], "invalid_grant");
}

#[tokio::test]
async fn the_admin_api_is_tenant_scoped() {
    let app = TestApp::spawn().await;
    let client = app.bootstrap().await;
    let admin_a = admin(&app, &client).await;
    // A second hospital with its own administrator, client and staff.
    let b = format!("{}-b", app.tenant);
    let tb = ehr_core::TenantId::parse(&b).unwrap();
    let boot = ehr_gateway::ops::bootstrap_tenant(&app.gateway.store, &app.gateway.settings, app.now(), &tb, "B", None)
        .await
        .unwrap();
    let mut admin_b_account = app.account_in(&b, "admin", &["tenant-admin"]).await;
    let admin_b = app.login(&boot.client_id, &mut admin_b_account, "user/*.cruds").await.access;
    let staff_b = app.account_in(&b, "staff-b", &["nurse"]).await;
    let get = |path: String, token: &str| app.client.get(format!("{}{path}", app.address)).bearer_auth(token).send();

    let list_a = json(get("/admin/users".into(), &admin_a).await.unwrap(), 200).await;
    let names: Vec<&str> =
        list_a["users"].as_array().unwrap().iter().map(|u| u["username"].as_str().unwrap()).collect();
    assert_eq!(names, vec!["admin"], "only tenant A's accounts");
    outcome(get(format!("/admin/users/{}", staff_b.id), &admin_a).await.unwrap(), 404, "not-found").await;
    outcome(admin_post(&app, &admin_a, &format!("/admin/users/{}/deactivate", staff_b.id)).await, 404, "not-found")
        .await;
    outcome(admin_post(&app, &admin_a, &format!("/admin/users/{}/reset-mfa", staff_b.id)).await, 404, "not-found")
        .await;
    outcome(get(format!("/admin/clients/{}", boot.client_id), &admin_a).await.unwrap(), 404, "not-found").await;
    outcome(
        admin_post(&app, &admin_a, &format!("/admin/clients/{}/deactivate", boot.client_id)).await,
        404,
        "not-found",
    )
    .await;
    let clients_a = json(get("/admin/clients".into(), &admin_a).await.unwrap(), 200).await;
    assert!(!clients_a.to_string().contains(&boot.client_id));
    // B's administrator still sees her nurse, active.
    let nurse = json(get(format!("/admin/users/{}", staff_b.id), &admin_b).await.unwrap(), 200).await;
    assert_eq!(nurse["active"], true);
    // A tenant admin is not a system admin.
    outcome(get("/admin/tenants".into(), &admin_a).await.unwrap(), 403, "forbidden").await;
}

#[tokio::test]
async fn admin_api_bad_input_gets_operation_outcomes() {
    let app = TestApp::spawn().await;
    let client = app.bootstrap().await;
    let token = admin(&app, &client).await;
    let post = |body: &'static str| {
        app.client
            .post(format!("{}/admin/users", app.address))
            .bearer_auth(&token)
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    outcome(post("{not json").await.unwrap(), 400, "invalid").await;
    outcome(post(r#"{"username": "x"}"#).await.unwrap(), 400, "invalid").await;
    let weak = post(r#"{"username": "weak", "password": "short", "roles": ["nurse"]}"#).await.unwrap();
    let oo = outcome(weak, 400, "invalid").await;
    assert!(oo.to_string().contains("password"), "{oo}");
    let role =
        post(r#"{"username": "r", "password": "Correct-Horse-42-battery", "roles": ["janitor"]}"#).await.unwrap();
    assert!(outcome(role, 400, "invalid").await.to_string().contains("unknown role"));
    let escalate =
        post(r#"{"username": "s", "password": "Correct-Horse-42-battery", "roles": ["system-admin"]}"#).await.unwrap();
    outcome(escalate, 403, "forbidden").await;
    json(post(r#"{"username": "ok", "password": "Correct-Horse-42-battery", "roles": ["nurse"]}"#).await.unwrap(), 201)
        .await;
    let dup = post(r#"{"username": "ok", "password": "Correct-Horse-42-battery", "roles": ["nurse"]}"#).await.unwrap();
    outcome(dup, 409, "duplicate").await;
    // The login form without its fields: an outcome too.
    let bad_form = app
        .client
        .post(format!("{}/auth/login", app.address))
        .header("accept", "application/json")
        .form(&[("request", "x")])
        .send()
        .await
        .unwrap();
    outcome(bad_form, 400, "invalid").await;
}

#[tokio::test]
async fn refresh_tokens_only_for_offline_access_and_revocation_needs_the_token_itself() {
    let app = TestApp::spawn().await;
    let client = app.bootstrap().await;
    let mut u = app.account("u3", &["nurse"]).await;
    let online = app.login(&client, &mut u, "user/*.cruds").await;
    assert!(online.refresh.is_none(), "no offline_access, no refresh token");
    let offline = app.login(&client, &mut u, "offline_access user/*.cruds").await;
    let refresh = offline.refresh.clone().unwrap();
    // Knowing the session id (the `sid` of every access token) is not enough to end a session.
    let sid = claims(&offline.access)["sid"].as_str().unwrap().to_owned();
    assert_eq!(app.form("/auth/revoke", &[("token", &format!("{sid}.guess"))]).await.status(), 200);
    assert_eq!(app.as_user(Method::GET, "/Patient", &offline.access).send().await.unwrap().status(), 200);
    // The refresh token itself is.
    assert_eq!(app.form("/auth/revoke", &[("token", &refresh)]).await.status(), 200);
    outcome(app.as_user(Method::GET, "/Patient", &offline.access).send().await.unwrap(), 401, "login").await;
    let again = app.form("/auth/token", &[("grant_type", "refresh_token"), ("refresh_token", &refresh)]).await;
    assert_eq!(json(again, 400).await["error"], "invalid_grant");
}

#[tokio::test]
async fn secrets_are_stored_encrypted() {
    use sea_orm::{ConnectionTrait, Database, Statement};
    let app = TestApp::spawn().await;
    let client = app.bootstrap().await;
    let mut u = app.account("sealed", &["nurse"]).await;
    app.login(&client, &mut u, "user/*.cruds").await;
    let secret = u.secret.clone().unwrap();
    let db = Database::connect(app.database_url.as_str()).await.unwrap();
    let one = |sql: String| {
        let db = &db;
        async move {
            let row = db.query_one_raw(Statement::from_string(db.get_database_backend(), sql)).await.unwrap().unwrap();
            row.try_get_by_index::<String>(0).unwrap()
        }
    };
    let stored = one(format!("SELECT mfa_secret FROM users WHERE id = '{}'", u.id)).await;
    assert!(stored.starts_with("v1:") && !stored.contains(&secret), "the TOTP secret is sealed: {stored}");
    let pem = one("SELECT private_pem FROM signing_keys LIMIT 1".into()).await;
    assert!(pem.starts_with("v1:") && !pem.contains("PRIVATE KEY"), "the signing key is sealed");
    // A sealed secret moved to another account does not open there: that login fails cleanly.
    let mut other = app.account("other", &["nurse"]).await;
    app.login(&client, &mut other, "user/*.cruds").await;
    db.execute_unprepared(&format!("UPDATE users SET mfa_secret = '{stored}' WHERE id = '{}'", other.id))
        .await
        .unwrap();
    let (_, challenge) = pkce();
    let request = app.authorize(&client, "", &challenge).await;
    app.advance(30);
    let step = json(
        app.form("/auth/login", &[("request", &request), ("username", "other"), ("password", PASSWORD)]).await,
        200,
    )
    .await;
    let code = app.totp(&secret);
    let resp = app.form("/auth/mfa", &[("login", step["login"].as_str().unwrap()), ("code", &code)]).await;
    assert_eq!(resp.status(), 500);
    let oo = resp.text().await.unwrap();
    assert!(oo.contains("EHR-GW-017"), "{oo}");
}

#[tokio::test]
async fn backend_clients_get_clinical_scopes_only_and_never_reach_the_admin_api() {
    use p256::pkcs8::EncodePrivateKey;
    let app = TestApp::spawn().await;
    let client = app.bootstrap().await;
    let admin_token = admin(&app, &client).await;
    let secret = p256::SecretKey::random(&mut rand::rngs::OsRng);
    let mut jwk: Value = serde_json::from_str(&secret.public_key().to_jwk_string()).unwrap();
    jwk["kid"] = "k1".into();
    let register = |scope: &'static str, id: String| {
        let jwk = jwk.clone();
        let (app, admin_token) = (&app, &admin_token);
        async move {
            app.client
                .post(format!("{}/admin/clients", app.address))
                .bearer_auth(admin_token)
                .json(&serde_json::json!({"client_id": id, "name": "n", "kind": "backend", "jwks": {"keys": [jwk]}, "scope": scope}))
                .send()
                .await
                .unwrap()
        }
    };
    for bad in [
        "system/Patient.cruds",
        "system/Account.rs",
        "system/Tenant.c",
        "user/Patient.rs",
        "system/Patient.xyz",
        "system/Nonsense.rs",
    ] {
        outcome(register(bad, format!("{}-bad", app.tenant)).await, 400, "invalid").await;
    }
    // Client ids carry their tenant's prefix: no tenant takes a name another one will need.
    outcome(register("system/*.rs", "hospital-z-cli".into()).await, 400, "invalid").await;
    for uri in ["http://localhost.evil.example/cb", "http://127.0.0.1.nip.io/cb", "ftp://x/cb"] {
        let resp = app
            .client
            .post(format!("{}/admin/clients", app.address))
            .bearer_auth(&admin_token)
            .json(&serde_json::json!({"name": "n", "kind": "public", "redirect_uris": [uri], "scope": "user/*.rs"}))
            .send()
            .await
            .unwrap();
        outcome(resp, 400, "invalid").await;
    }
    let reader = format!("{}-reader", app.tenant);
    json(register("system/*.rs", reader.clone()).await, 201).await;
    let pem = secret.to_pkcs8_pem(p256::pkcs8::LineEnding::LF).unwrap();
    let key = jsonwebtoken::EncodingKey::from_ec_pem(pem.as_bytes()).unwrap();
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
    header.kid = Some("k1".into());
    let claims = serde_json::json!({"iss": reader, "sub": reader, "aud": format!("{}/auth/token", app.address), "exp": app.now() + 60, "jti": "a1"});
    let assertion = jsonwebtoken::encode(&header, &claims, &key).unwrap();
    let token = json(
        app.form(
            "/auth/token",
            &[
                ("grant_type", "client_credentials"),
                ("scope", "system/*.rs"),
                ("client_assertion_type", "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"),
                ("client_assertion", &assertion),
            ],
        )
        .await,
        200,
    )
    .await["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(app.as_user(Method::GET, "/Patient", &token).send().await.unwrap().status(), 200);
    // Asking for the admin API's pseudo types by name: the wildcard does not cover them.
    let claims2 = serde_json::json!({"iss": reader, "sub": reader, "aud": format!("{}/auth/token", app.address), "exp": app.now() + 60, "jti": "a2"});
    let assertion2 = jsonwebtoken::encode(&header, &claims2, &key).unwrap();
    let escalate = app
        .form(
            "/auth/token",
            &[
                ("grant_type", "client_credentials"),
                ("scope", "system/Tenant.rs system/Account.rs system/SigningKey.c"),
                ("client_assertion_type", "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"),
                ("client_assertion", &assertion2),
            ],
        )
        .await;
    assert_eq!(json(escalate, 400).await["error"], "invalid_scope");
    // `system/*.rs` is a wildcard: it never reaches the admin API's pseudo types.
    for path in ["/admin/users", "/admin/tenants", "/admin/keys", "/admin/clients"] {
        let resp = app.client.get(format!("{}{path}", app.address)).bearer_auth(&token).send().await.unwrap();
        outcome(resp, 403, "forbidden").await;
    }
}

#[tokio::test]
async fn administrators_see_and_end_a_users_sessions() {
    let app = TestApp::spawn().await;
    let client = app.bootstrap().await;
    let admin_token = admin(&app, &client).await;
    let mut u = app.account("u4", &["nurse"]).await;
    let t1 = app.login(&client, &mut u, "offline_access user/*.cruds").await;
    let t2 = app.login(&client, &mut u, "offline_access user/*.cruds").await;
    let get = app
        .client
        .get(format!("{}/admin/users/{}/sessions", app.address, u.id))
        .bearer_auth(&admin_token)
        .send()
        .await
        .unwrap();
    let list = json(get, 200).await;
    assert_eq!(list["sessions"].as_array().unwrap().len(), 2, "{list}");
    assert!(!list.to_string().contains(t1.refresh.as_deref().unwrap()), "never the tokens");
    let ended = json(admin_post(&app, &admin_token, &format!("/admin/users/{}/sessions/end", u.id)).await, 200).await;
    assert_eq!(ended["ended"], 2);
    for t in [&t1.access, &t2.access] {
        outcome(app.as_user(Method::GET, "/Patient", t).send().await.unwrap(), 401, "login").await;
    }
    // The account itself stays active: a new login works, and the refused tokens were audited.
    app.login(&client, &mut u, "user/*.cruds").await;
    app.gateway.audit.flush().await;
    let sys = app.token_for("system", "user/AuditEvent.rs");
    let rejected = json(
        app.client.get(app.fhir("/AuditEvent?subtype=token-rejected")).bearer_auth(&sys).send().await.unwrap(),
        200,
    )
    .await;
    assert!(rejected.to_string().contains("revoked"), "{rejected}");
}

#[tokio::test]
async fn ehr_login_runs_the_flow_from_a_terminal() {
    use std::io::Write;
    let app = TestApp::spawn().await;
    let client = app.bootstrap().await;
    let mut u = app.account("cli-user", &["nurse"]).await;
    app.login(&client, &mut u, "user/*.cruds").await; // enrolled; the CLI uses the authenticator
    app.advance(30);
    let code = app.totp(u.secret.as_deref().unwrap());
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_ehr"))
        .args(["login", "--url", &app.address, "--client", &client, "--user", "cli-user"])
        .env("EHR_PASSWORD", PASSWORD)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(format!("{code}\n").as_bytes()).unwrap();
    let out = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap()).await.unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let tokens: Value = serde_json::from_slice(&out.stdout).unwrap();
    let access = tokens["access_token"].as_str().unwrap();
    assert!(tokens["refresh_token"].is_string());
    assert_eq!(app.as_user(Method::GET, "/Patient", access).send().await.unwrap().status(), 200);
    // A wrong password: a non-zero exit with the gateway's message.
    // (Off the test's runtime thread, which also serves the gateway the CLI talks to.)
    let (address, client_id) = (app.address.clone(), client.clone());
    let bad = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_ehr"))
            .args(["login", "--url", &address, "--client", &client_id, "--user", "cli-user"])
            .env("EHR_PASSWORD", "Wrong-password-123")
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("invalid username or password"));
}
