//! The gateway as the single public entry: rate limits, security headers, CORS, the embedded
//! security state, and routing to a service that runs in another process (microservices mode).

use ehr_app::{Config, Target};
use ehr_testkit::{TestApp, TestClock, json, outcome, patient};
use reqwest::Method;
use std::sync::Arc;

#[tokio::test]
async fn rate_limits_answer_429_with_retry_after_per_user() {
    let app = TestApp::spawn_with(|c| {
        c.gateway.rate_limit.user_per_sec = 0.5;
        c.gateway.rate_limit.user_burst = 3;
    })
    .await;
    for _ in 0..3 {
        assert_eq!(app.get("/Patient").await.status(), 200);
    }
    let limited = app.get("/Patient").await;
    let retry: i64 = limited.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=2).contains(&retry), "{retry}");
    outcome(limited, 429, "throttled").await;
    // Another user of the same tenant has a bucket of her own.
    let mut claims = app.claims(&app.tenant, "user/*.cruds");
    claims.sub = "someone-else".into();
    let other = app.sign_claims(&claims);
    assert_eq!(app.as_user(Method::GET, "/Patient", &other).send().await.unwrap().status(), 200);
    // Tokens refill with time.
    app.advance(2);
    assert_eq!(app.get("/Patient").await.status(), 200);
    app.advance(10); // the audit search below is the same user's
    let events = app.audit_events("subtype=rate-limited").await;
    assert_eq!(events.len(), 1);
}

#[tokio::test]
async fn responses_carry_security_headers_and_cors_is_by_configuration() {
    let app = TestApp::spawn_with(|c| c.gateway.cors_origins = vec!["https://app.example-hospital.jp".into()]).await;
    let resp = app.get("/Patient").await;
    let h = resp.headers();
    assert_eq!(h["x-content-type-options"], "nosniff");
    assert_eq!(h["x-frame-options"], "DENY");
    assert_eq!(h["cache-control"], "no-store");
    assert_eq!(h["referrer-policy"], "no-referrer");
    assert!(h["strict-transport-security"].to_str().unwrap().contains("max-age="));
    assert!(h.get("x-ehr-audit-patients").is_none(), "internal headers never leave the gateway");
    let preflight = |origin: &'static str| {
        app.client
            .request(Method::OPTIONS, app.fhir("/Patient"))
            .header("origin", origin)
            .header("access-control-request-method", "GET")
            .header("access-control-request-headers", "authorization")
            .send()
    };
    let allowed = preflight("https://app.example-hospital.jp").await.unwrap();
    assert_eq!(allowed.headers()["access-control-allow-origin"], "https://app.example-hospital.jp");
    let refused = preflight("https://evil.example").await.unwrap();
    assert!(refused.headers().get("access-control-allow-origin").is_none());
    // Patient data in a response is also never cached, and the patient list stays internal.
    let p = crate::id_of(&app.create(&patient("a", "b", "1990-01-01", "H-1")).await);
    let read = app.get(&format!("/Patient/{p}")).await;
    assert!(read.headers().get("x-ehr-audit-patients").is_none());
}

#[tokio::test]
async fn the_embedded_security_state_serves_a_whole_login_without_redis() {
    if ehr_testkit::backend() == "postgres" {
        // Without Redis the events stay in process, which only SQLite orders correctly: target
        // `all` on PostgreSQL without Redis is refused at start-up, saying what to configure.
        let mut config = Config::default();
        config.database.url = Some(ehr_testkit::fresh_postgres().await.into());
        config.gateway.secret_key = Some(ehr_gateway::Sealer::generate_key().into());
        let err = ehr_app::build(&config, Target::All, Arc::new(TestClock::default())).await.err().expect("refused");
        assert!(err.to_string().contains("Redis"), "{err}");
        return;
    }
    let app = TestApp::spawn_with(|c| c.gateway.redis_url = None).await;
    let client = app.bootstrap().await;
    let mut u = app.account("solo", &["physician"]).await;
    let t = app.login(&client, &mut u, "offline_access user/*.cruds").await;
    assert_eq!(app.as_user(Method::GET, "/Patient", &t.access).send().await.unwrap().status(), 200);
    let rotated = app
        .form("/auth/token", &[("grant_type", "refresh_token"), ("refresh_token", t.refresh.as_deref().unwrap())])
        .await;
    json(rotated, 200).await;
}

/// Serves a built app on a listener already bound.
fn serve(listener: tokio::net::TcpListener, router: axum::Router) {
    tokio::spawn(async move {
        axum::serve(listener, router.into_make_service_with_connect_info::<std::net::SocketAddr>()).await.unwrap();
    });
}

#[tokio::test]
async fn the_gateway_routes_to_a_patient_record_service_in_another_process_over_http() {
    let dir = std::env::temp_dir().join(format!("ehr-ms-{}", uuid_like()));
    std::fs::create_dir_all(&dir).unwrap();
    let (gw_db, pr_db) = if ehr_testkit::backend() == "postgres" {
        (ehr_testkit::fresh_postgres().await, ehr_testkit::fresh_postgres().await)
    } else {
        (
            format!("sqlite://{}?mode=rwc", dir.join("gw.db").display()),
            format!("sqlite://{}?mode=rwc", dir.join("pr.db").display()),
        )
    };
    let gw_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let pr_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let gw_url = format!("http://{}", gw_listener.local_addr().unwrap());
    let pr_url = format!("http://{}", pr_listener.local_addr().unwrap());
    let clock = Arc::new(TestClock::default());

    // The gateway: its own database, Redis, the service's URL; no development key.
    let mut gw = Config::default();
    gw.database.url = Some(gw_db.into());
    gw.database.max_connections = 4;
    gw.auth.development_key = false;
    gw.gateway.issuer = Some("urn:ehr:test-gateway".into());
    gw.gateway.secret_key = Some(ehr_gateway::Sealer::generate_key().into());
    gw.gateway.redis_url =
        Some(std::env::var("TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into()).into());
    gw.gateway.redis_prefix = format!("ehr-ms-{}", uuid_like());
    gw.gateway.upstreams.insert("patient-record".into(), pr_url.parse().unwrap());
    let gateway = ehr_app::build(&gw, Target::Gateway, clock.clone()).await.unwrap();
    let gw_handle = gateway.gateway.clone().unwrap();
    serve(gw_listener, gateway.router);

    // The service: trusts the gateway's keys, fetched from its JWKS URL.
    let mut pr = Config::default();
    pr.database.url = Some(pr_db.into());
    pr.database.max_connections = 4;
    pr.auth.development_key = false;
    pr.auth.issuer = Some("urn:ehr:test-gateway".into());
    pr.auth.jwks_url = Some(format!("{gw_url}/.well-known/jwks.json"));
    // Services exchange events through Redis Streams.
    pr.gateway.redis_url = gw.gateway.redis_url.clone();
    pr.gateway.redis_prefix = gw.gateway.redis_prefix.clone();
    let service = ehr_app::build(&pr, Target::PatientRecord, clock.clone()).await.unwrap();
    serve(pr_listener, service.router);

    // A user logs in at the gateway and works with patient data held by the other process.
    let tenant = ehr_core::TenantId::parse("ms-hospital").unwrap();
    let boot = ehr_gateway::ops::bootstrap_tenant(&gw_handle.store, &gw_handle.settings, 0, &tenant, "MS", None)
        .await
        .unwrap();
    let user = gw_handle
        .create_account(
            &tenant,
            ehr_gateway::admin::NewAccount {
                username: "clerk".into(),
                display_name: "clerk".into(),
                password: ehr_testkit::PASSWORD.into(),
                roles: vec!["clerk".into()],
                fhir_user: None,
            },
            &ehr_gateway::audit::Actor::default(),
        )
        .await
        .unwrap();
    let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let form = |path: &str, f: Vec<(&str, String)>| {
        http.post(format!("{gw_url}{path}")).header("accept", "application/json").form(&f).send()
    };
    let (verifier, challenge) = ehr_testkit::pkce();
    let authz = http
        .get(format!("{gw_url}/auth/authorize"))
        .header("accept", "application/json")
        .query(&[
            ("response_type", "code"),
            ("client_id", boot.client_id.as_str()),
            ("redirect_uri", ehr_testkit::REDIRECT),
            ("code_challenge", challenge.as_str()),
            ("code_challenge_method", "S256"),
            ("scope", "user/*.cruds"),
        ])
        .send()
        .await
        .unwrap();
    let request = json(authz, 200).await["request"].as_str().unwrap().to_owned();
    let step = json(
        form(
            "/auth/login",
            vec![("request", request), ("username", "clerk".into()), ("password", ehr_testkit::PASSWORD.into())],
        )
        .await
        .unwrap(),
        200,
    )
    .await;
    let secret = ehr_auth::TotpSecret::from_base32(step["secret"].as_str().unwrap()).unwrap();
    let code = secret.code_at(ehr_core::Clock::now(clock.as_ref()).timestamp());
    let done = json(
        form("/auth/mfa", vec![("login", step["login"].as_str().unwrap().to_owned()), ("code", code)]).await.unwrap(),
        200,
    )
    .await;
    let redirect = reqwest::Url::parse(done["redirect"].as_str().unwrap()).unwrap();
    let auth_code = redirect.query_pairs().find(|(k, _)| k == "code").unwrap().1.into_owned();
    let tokens = json(
        form(
            "/auth/token",
            vec![
                ("grant_type", "authorization_code".into()),
                ("code", auth_code),
                ("redirect_uri", ehr_testkit::REDIRECT.into()),
                ("client_id", boot.client_id.clone()),
                ("code_verifier", verifier),
            ],
        )
        .await
        .unwrap(),
        200,
    )
    .await;
    let token = tokens["access_token"].as_str().unwrap();
    let created = http
        .post(format!("{gw_url}/fhir/Patient"))
        .bearer_auth(token)
        .header("content-type", "application/fhir+json")
        .body(patient("遠隔", "太郎", "1990-01-01", "MS-1").to_string())
        .send()
        .await
        .unwrap();
    assert!(
        created.headers()["location"].to_str().unwrap().starts_with(&gw_url),
        "links name the gateway, not the service"
    );
    let created = json(created, 201).await;
    let id = created["id"].as_str().unwrap();
    let read = http.get(format!("{gw_url}/fhir/Patient/{id}")).bearer_auth(token).send().await.unwrap();
    assert!(read.headers().get("x-ehr-audit-patients").is_none());
    json(read, 200).await;
    // The access is audited at the gateway, with the patient the service reported.
    gw_handle.audit.flush().await;
    let audited = {
        // No development key here, so the trail is read from the gateway's store directly.
        let tx = gw_handle.store.read(&ehr_core::TenantContext::new(tenant.clone(), "test")).await.unwrap();
        let q =
            ehr_fhir::search::parse_search("AuditEvent", &[("patient".into(), format!("Patient/{id}"))], false, |_| {
                None
            })
            .unwrap();
        let page = tx.search(&q).await.unwrap();
        tx.commit().await.unwrap();
        page.matches.len()
    };
    assert_eq!(audited, 2, "create and read of the patient");
    // The service verifies tokens itself (zero trust): a token it cannot verify is refused there too.
    let direct = http.get(format!("{pr_url}/fhir/Patient/{id}")).bearer_auth("forged").send().await.unwrap();
    assert_eq!(direct.status(), 401);
    assert_eq!(user.username, "clerk");
}

fn uuid_like() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

#[tokio::test]
async fn the_capability_statement_names_the_oauth_endpoints_and_the_read_only_audit_trail() {
    let app = TestApp::spawn().await;
    let cs = json(app.client.get(app.fhir("/metadata")).send().await.unwrap(), 200).await;
    let security = &cs["rest"][0]["security"];
    assert_eq!(security["service"][0]["coding"][0]["code"], "SMART-on-FHIR");
    let uris = security["extension"][0]["extension"].as_array().unwrap();
    assert!(uris.iter().any(|u| u["url"] == "token" && u["valueUri"].as_str().unwrap().ends_with("/auth/token")));
    let audit = cs["rest"][0]["resource"].as_array().unwrap().iter().find(|r| r["type"] == "AuditEvent").unwrap();
    let interactions: Vec<&str> =
        audit["interaction"].as_array().unwrap().iter().map(|i| i["code"].as_str().unwrap()).collect();
    assert!(
        !interactions.contains(&"create") && !interactions.contains(&"delete") && interactions.contains(&"search-type")
    );
    assert!(audit["searchParam"].as_array().unwrap().iter().any(|p| p["name"] == "patient"));
}

#[tokio::test]
async fn login_endpoints_are_rate_limited_per_client_address() {
    let app = TestApp::spawn_with(|c| {
        c.gateway.rate_limit.login_per_sec = 0.01;
        c.gateway.rate_limit.login_burst = 3;
        // As behind an ingress that appends the client's address.
        c.gateway.trusted_proxies = 1;
    })
    .await;
    for _ in 0..3 {
        let r = app.form("/auth/login", &[("request", "r"), ("username", "u"), ("password", "p")]).await;
        assert_eq!(r.status(), 401, "an unknown login request, but not throttled");
    }
    let limited = app.form("/auth/mfa", &[("login", "x"), ("code", "123456")]).await;
    assert!(limited.headers().contains_key("retry-after"));
    outcome(limited, 429, "throttled").await;
    // The token endpoint (refreshes from behind one hospital NAT) is not limited per address.
    let token = app.form("/auth/token", &[("grant_type", "refresh_token"), ("refresh_token", "a.b")]).await;
    assert_eq!(json(token, 400).await["error"], "invalid_grant");
    // Another address (as the ingress reports it) has its own bucket; what a client writes into
    // the header before the ingress's hop is not an address of its own.
    let spoofed = app
        .client
        .post(format!("{}/auth/login", app.address))
        .header("x-forwarded-for", "10.9.9.9, 127.0.0.1")
        .header("accept", "application/json")
        .form(&[("request", "r"), ("username", "u"), ("password", "p")])
        .send()
        .await
        .unwrap();
    assert_eq!(spoofed.status(), 429);
    let other = app
        .client
        .post(format!("{}/auth/login", app.address))
        .header("x-forwarded-for", "10.1.2.3")
        .header("accept", "application/json")
        .form(&[("request", "r"), ("username", "u"), ("password", "p")])
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), 401);
}
