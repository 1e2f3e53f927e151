//! Test harness: the real `ehr` router on port 0, a fresh database and a fresh tenant per test.
//!
//! The backend comes from `TEST_BACKEND` (`sqlite`, the default, or `postgres`); PostgreSQL is
//! reached through `TEST_POSTGRES_URL` (default `postgres://postgres@127.0.0.1:5432/postgres`),
//! where every test gets a database of its own. A test never skips: if PostgreSQL was asked for
//! and cannot be reached, the test fails.
//!
//! The gateway's security state lives in the real Redis at `TEST_REDIS_URL` (default
//! `redis://127.0.0.1:6379`), under a key prefix of the test's own; `TEST_KV=memory` uses the
//! in-process store instead. The clock is the system clock plus an offset the test can advance
//! ([`TestApp::advance`]): TOTP steps, lockouts and token expiry are tested without sleeping.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a harness: failing loudly is its job

use ehr_app::{Config, Target};
use ehr_auth::{Claims, DevSigner};
use ehr_core::{Clock, SystemClock};
use sea_orm::{ConnectionTrait, Database};
use serde_json::Value;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

/// The scope of a token that may do everything (a system client).
pub const ALL_SCOPES: &str = "user/*.cruds";

/// The system clock shifted by an offset that tests advance.
#[derive(Debug, Default)]
pub struct TestClock {
    offset_secs: AtomicI64,
}

impl Clock for TestClock {
    fn now(&self) -> chrono::DateTime<chrono::Utc> {
        SystemClock.now() + chrono::Duration::seconds(self.offset_secs.load(Ordering::SeqCst))
    }
}

/// A running application.
pub struct TestApp {
    /// `http://127.0.0.1:PORT`.
    pub address: String,
    /// The tenant of this test.
    pub tenant: String,
    /// The database URL the app runs on.
    pub database_url: String,
    pub client: reqwest::Client,
    /// The application's clock.
    pub clock: Arc<TestClock>,
    /// The gateway (its store and security state), for set-up a test does not do over HTTP.
    pub gateway: ehr_gateway::Gateway,
    /// Where the lab interface's MLLP listener accepts results, when the test configured
    /// `lab.listen`.
    pub lab_mllp: Option<std::net::SocketAddr>,
    /// The lab interface (to run a sender pass without waiting for its poll).
    pub lab: Option<ehr_lab_interface::LabInterface>,
    /// `http://127.0.0.1:PORT` of the app's own metrics listener (`GET /metrics`), as
    /// `telemetry.metrics_listen` serves it.
    pub metrics_address: String,
    /// Stops the background workers when the test ends.
    _workers: WorkerGuard,
    token: String,
    signer: DevSigner,
    _data_dir: Option<TempDir>,
    _files_dir: TempDir,
}

/// Cancels an app's background workers when dropped.
struct WorkerGuard(ehr_events::CancellationToken);

impl Drop for WorkerGuard {
    fn drop(&mut self) {
        self.0.cancel();
    }
}

/// A directory removed when dropped.
struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Which database backend the tests run on.
pub fn backend() -> String {
    std::env::var("TEST_BACKEND").unwrap_or_else(|_| "sqlite".into())
}

fn unique() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// Creates a fresh PostgreSQL database and returns its URL (panics when PostgreSQL is unreachable).
pub async fn fresh_postgres() -> String {
    let admin =
        std::env::var("TEST_POSTGRES_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let name = format!("ehr_test_{}", unique());
    let conn = Database::connect(admin.as_str())
        .await
        .unwrap_or_else(|e| panic!("TEST_BACKEND=postgres but PostgreSQL is unreachable at TEST_POSTGRES_URL: {e}"));
    conn.execute_unprepared(&format!("CREATE DATABASE {name}")).await.expect("create test database");
    let _ = conn.close().await;
    let (base, _) = admin.rsplit_once('/').expect("TEST_POSTGRES_URL ends with /database");
    format!("{base}/{name}")
}

impl TestApp {
    /// Starts the application of target `all` on the configured backend.
    pub async fn spawn() -> Self {
        Self::spawn_with(|_| {}).await
    }

    /// Starts the application with a configuration adjusted by `configure` (the database and
    /// data directory are the test's own whatever it sets).
    pub async fn spawn_with(configure: impl FnOnce(&mut Config)) -> Self {
        let mut config = Config::default();
        // Tests send bursts far above a person's rate; the rate-limit test sets its own limits.
        config.gateway.rate_limit.user_per_sec = 100_000.0;
        config.gateway.rate_limit.user_burst = 100_000;
        config.gateway.rate_limit.tenant_per_sec = 100_000.0;
        config.gateway.rate_limit.tenant_burst = 100_000;
        config.gateway.secret_key = Some(ehr_gateway::Sealer::generate_key().into());
        config.gateway.rate_limit.login_per_sec = 100_000.0;
        config.gateway.rate_limit.login_burst = 100_000;
        // The lab sender and the export workers poll often: tests wait on their effects.
        config.lab.poll_interval_ms = 50;
        config.export.poll_interval_ms = 50;
        // Export files in a directory of the test's own (removed with it), on either backend.
        let files_dir = std::env::temp_dir().join(format!("ehr-test-files-{}", unique()));
        std::fs::create_dir_all(&files_dir).expect("temp dir");
        config.export.root = files_dir.join("exports");
        let files_dir = TempDir(files_dir);
        if std::env::var("TEST_KV").as_deref() != Ok("memory") {
            let url = std::env::var("TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
            config.gateway.redis_url = Some(url.into());
            config.gateway.redis_prefix = format!("ehr-test-{}", unique());
        }
        configure(&mut config);
        config.database.max_connections = 4;
        let mut data_dir = None;
        let database_url = if backend() == "postgres" {
            fresh_postgres().await
        } else {
            let dir = std::env::temp_dir().join(format!("ehr-test-{}", unique()));
            std::fs::create_dir_all(&dir).expect("temp dir");
            config.data_dir = dir.clone();
            data_dir = Some(TempDir(dir.clone()));
            format!("sqlite://{}?mode=rwc", dir.join("ehr.db").display())
        };
        config.database.url = Some(database_url.clone().into());
        let clock = Arc::new(TestClock::default());
        let app = ehr_app::build(&config, Target::All, clock.clone()).await.unwrap_or_else(|e| {
            panic!("build app (is Redis running at TEST_REDIS_URL? TEST_KV=memory avoids it): {e}")
        });
        let gateway = app.gateway.clone().expect("target all has a gateway");
        let lab_mllp = app.lab_listener;
        let lab = app.lab.clone();
        let workers = WorkerGuard(app.shutdown.clone());
        let metrics_address = format!("http://{}", ehr_app::serve_metrics(&app, "127.0.0.1:0").await.expect("metrics"));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = format!("http://{}", listener.local_addr().expect("addr"));
        let router = app.router;
        tokio::spawn(async move {
            axum::serve(listener, router.into_make_service_with_connect_info::<std::net::SocketAddr>())
                .await
                .expect("serve");
        });
        let signer = DevSigner::new().expect("dev signer");
        let tenant = format!("t-{}", &unique()[..12]);
        let mut me = Self {
            address,
            tenant: tenant.clone(),
            database_url,
            client: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .expect("http client"),
            clock,
            gateway,
            lab_mllp,
            lab,
            metrics_address,
            _workers: workers,
            token: String::new(),
            signer,
            _data_dir: data_dir,
            _files_dir: files_dir,
        };
        me.token = me.token_for(&tenant, ALL_SCOPES);
        me
    }

    /// Stops the background workers (relay, consumers, senders) as a shutdown would: events
    /// written afterwards stay in the outbox.
    pub fn stop_workers(&self) {
        self._workers.0.cancel();
    }

    /// A development token for any tenant and scopes, valid for an hour.
    pub fn token_for(&self, tenant: &str, scope: &str) -> String {
        self.sign_claims(&self.claims(tenant, scope))
    }

    /// A development token expiring `ttl_secs` from now (negative: already expired).
    pub fn sign(&self, tenant: &str, scope: &str, ttl_secs: i64) -> String {
        let mut claims = self.claims(tenant, scope);
        claims.exp = claims.iat + ttl_secs;
        self.sign_claims(&claims)
    }

    /// Valid claims for `tenant` and `scope`, to alter before signing.
    pub fn claims(&self, tenant: &str, scope: &str) -> Claims {
        let now = self.now();
        Claims {
            iss: ehr_auth::DEV_ISSUER.into(),
            sub: "test-user".into(),
            exp: now + 3600,
            iat: now,
            tenant: tenant.into(),
            scope: scope.into(),
            ..Claims::default()
        }
    }

    /// The application's current time (unix seconds).
    pub fn now(&self) -> i64 {
        self.clock.now().timestamp()
    }

    /// Moves the application's clock forward.
    pub fn advance(&self, secs: i64) {
        self.clock.offset_secs.fetch_add(secs, Ordering::SeqCst);
    }

    /// Signs arbitrary claims with the development key.
    pub fn sign_claims(&self, claims: &Claims) -> String {
        self.signer.sign(claims).expect("sign")
    }

    /// A token for this test's tenant with `scope`.
    pub fn token(&self, scope: &str) -> String {
        self.token_for(&self.tenant, scope)
    }

    /// The absolute URL of a FHIR path (`/Patient/1` → `http://…/fhir/Patient/1`).
    pub fn fhir(&self, path: &str) -> String {
        format!("{}/fhir{path}", self.address)
    }

    /// A request to a FHIR path carrying this test's all-scopes token.
    pub fn req(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.client.request(method, self.fhir(path)).bearer_auth(&self.token)
    }

    /// `GET` a FHIR path.
    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.req(reqwest::Method::GET, path).send().await.expect("request")
    }

    /// `POST` FHIR JSON.
    pub async fn post(&self, path: &str, body: &Value) -> reqwest::Response {
        self.send_json(reqwest::Method::POST, path, body).await
    }

    /// `PUT` FHIR JSON.
    pub async fn put(&self, path: &str, body: &Value) -> reqwest::Response {
        self.send_json(reqwest::Method::PUT, path, body).await
    }

    /// `DELETE` a FHIR path.
    pub async fn delete(&self, path: &str) -> reqwest::Response {
        self.req(reqwest::Method::DELETE, path).send().await.expect("request")
    }

    /// Sends FHIR JSON with a method.
    pub async fn send_json(&self, method: reqwest::Method, path: &str, body: &Value) -> reqwest::Response {
        self.req(method, path)
            .header("content-type", "application/fhir+json")
            .body(body.to_string())
            .send()
            .await
            .expect("request")
    }

    /// Sends FHIR JSON with extra request headers (`If-Match`, `Prefer`, `If-None-Exist`, …).
    pub async fn send_with(
        &self,
        method: reqwest::Method,
        path: &str,
        body: &Value,
        headers: &[(&str, &str)],
    ) -> reqwest::Response {
        let mut req = self.req(method, path).header("content-type", "application/fhir+json");
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        req.body(body.to_string()).send().await.expect("request")
    }

    /// Creates a resource and returns its JSON as stored (panics unless 201).
    pub async fn create(&self, resource: &Value) -> Value {
        let ty = resource["resourceType"].as_str().expect("resourceType");
        let resp = self.post(&format!("/{ty}"), resource).await;
        let status = resp.status().as_u16();
        let body: Value = resp.json().await.expect("json");
        assert_eq!(status, 201, "create {ty}: {body}");
        body
    }
}

/// Reads a response as JSON, asserting its status.
pub async fn json(resp: reqwest::Response, status: u16) -> Value {
    let actual = resp.status().as_u16();
    let text = resp.text().await.expect("body");
    assert_eq!(actual, status, "unexpected status; body: {text}");
    serde_json::from_str(&text).unwrap_or(Value::Null)
}

/// Asserts an OperationOutcome with an issue of `code` and returns it.
pub async fn outcome(resp: reqwest::Response, status: u16, code: &str) -> Value {
    let oo = json(resp, status).await;
    assert_eq!(oo["resourceType"], "OperationOutcome", "{oo}");
    let codes: Vec<&str> = oo["issue"].as_array().into_iter().flatten().filter_map(|i| i["code"].as_str()).collect();
    assert!(codes.contains(&code), "expected issue code {code}, got {codes:?}: {oo}");
    oo
}

/// A minimal valid Patient.
pub fn patient(family: &str, given: &str, birth_date: &str, identifier: &str) -> Value {
    serde_json::json!({
        "resourceType": "Patient",
        "identifier": [{"system": "urn:oid:1.2.392.100495.20.3.51.11311234567", "value": identifier}],
        "name": [{"use": "official", "family": family, "given": [given]}],
        "gender": "female",
        "birthDate": birth_date
    })
}

/// A user account created for a test, with what a person would know: password and, once
/// enrolled, the TOTP secret of their authenticator.
#[derive(Debug, Clone)]
pub struct Account {
    pub id: String,
    pub username: String,
    pub password: String,
    /// Base32 TOTP secret, set by the first login (enrolment).
    pub secret: Option<String>,
    /// Recovery codes shown at enrolment.
    pub recovery_codes: Vec<String>,
}

/// What the token endpoint returned.
#[derive(Debug, Clone)]
pub struct Tokens {
    pub access: String,
    pub refresh: Option<String>,
    pub scope: String,
    pub body: Value,
}

/// A password that satisfies the default policy.
pub const PASSWORD: &str = "Correct-Horse-42-battery";

/// The redirect URI of the bootstrap client.
pub const REDIRECT: &str = "http://127.0.0.1:8765/callback";

/// A PKCE pair (verifier, S256 challenge).
pub fn pkce() -> (String, String) {
    use base64::Engine;
    use sha2::Digest;
    let verifier = format!("{}{}", unique(), unique());
    let challenge = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(verifier.as_bytes()));
    (verifier, challenge)
}

impl TestApp {
    /// Registers this test's tenant and its public client `<tenant>-cli`; returns the client id.
    pub async fn bootstrap(&self) -> String {
        let tenant = ehr_core::TenantId::parse(&self.tenant).expect("tenant");
        let done = ehr_gateway::ops::bootstrap_tenant(
            &self.gateway.store,
            &self.gateway.settings,
            self.now(),
            &tenant,
            "Test Hospital",
            None,
        )
        .await
        .expect("bootstrap tenant");
        done.client_id
    }

    /// Creates an account with `roles` in this test's tenant (as the admin API would).
    pub async fn account(&self, username: &str, roles: &[&str]) -> Account {
        self.account_in(&self.tenant.clone(), username, roles).await
    }

    /// Creates an account with `roles` in `tenant`.
    pub async fn account_in(&self, tenant: &str, username: &str, roles: &[&str]) -> Account {
        let tenant = ehr_core::TenantId::parse(tenant).expect("tenant");
        let new = ehr_gateway::admin::NewAccount {
            username: username.into(),
            display_name: username.into(),
            password: PASSWORD.into(),
            roles: roles.iter().map(|r| (*r).to_owned()).collect(),
            fhir_user: None,
        };
        let user =
            self.gateway.create_account(&tenant, new, &ehr_gateway::audit::Actor::default()).await.expect("account");
        Account {
            id: user.id,
            username: username.into(),
            password: PASSWORD.into(),
            secret: None,
            recovery_codes: Vec::new(),
        }
    }

    /// The current TOTP code of a base32 secret, by the application's clock.
    pub fn totp(&self, secret: &str) -> String {
        ehr_auth::TotpSecret::from_base32(secret).expect("secret").code_at(self.now())
    }

    /// `GET /auth/authorize` as JSON; returns the request id.
    pub async fn authorize(&self, client_id: &str, scope: &str, challenge: &str) -> String {
        let resp = self
            .client
            .get(format!("{}/auth/authorize", self.address))
            .query(&[
                ("response_type", "code"),
                ("client_id", client_id),
                ("redirect_uri", REDIRECT),
                ("scope", scope),
                ("state", "st-1"),
                ("code_challenge", challenge),
                ("code_challenge_method", "S256"),
            ])
            .header("accept", "application/json")
            .send()
            .await
            .expect("authorize");
        let body = json(resp, 200).await;
        body["request"].as_str().expect("request id").to_owned()
    }

    /// Posts a form to a gateway path with `Accept: application/json`.
    pub async fn form(&self, path: &str, form: &[(&str, &str)]) -> reqwest::Response {
        self.client
            .post(format!("{}{path}", self.address))
            .header("accept", "application/json")
            .form(form)
            .send()
            .await
            .expect("form post")
    }

    /// The whole login of a person: authorize (PKCE) → password → TOTP (enrolling on the first
    /// login) → code → tokens. The clock moves to a fresh 30-second step first, as a person
    /// waits for the next code: a code is accepted once only.
    pub async fn login(&self, client_id: &str, account: &mut Account, scope: &str) -> Tokens {
        self.advance(30);
        let (verifier, challenge) = pkce();
        let request = self.authorize(client_id, scope, &challenge).await;
        let step = json(
            self.form(
                "/auth/login",
                &[("request", &request), ("username", &account.username), ("password", &account.password)],
            )
            .await,
            200,
        )
        .await;
        let login = step["login"].as_str().expect("login id").to_owned();
        if step["next"] == "enrol" {
            account.secret = Some(step["secret"].as_str().expect("secret").to_owned());
        } else {
            assert_eq!(step["next"], "mfa", "{step}");
        }
        let code = self.totp(account.secret.as_deref().expect("enrolled secret"));
        let done = json(self.form("/auth/mfa", &[("login", &login), ("code", &code)]).await, 200).await;
        if let Some(codes) = done["recovery_codes"].as_array() {
            account.recovery_codes = codes.iter().filter_map(|c| c.as_str().map(str::to_owned)).collect();
        }
        let redirect = done["redirect"].as_str().expect("redirect").to_owned();
        self.redeem(client_id, &redirect, &verifier).await
    }

    /// Exchanges the code in a redirect URL for tokens.
    pub async fn redeem(&self, client_id: &str, redirect: &str, verifier: &str) -> Tokens {
        let url = reqwest::Url::parse(redirect).expect("redirect url");
        let code = url.query_pairs().find(|(k, _)| k == "code").map(|(_, v)| v.into_owned()).expect("code");
        let body = json(
            self.form(
                "/auth/token",
                &[
                    ("grant_type", "authorization_code"),
                    ("code", &code),
                    ("redirect_uri", REDIRECT),
                    ("client_id", client_id),
                    ("code_verifier", verifier),
                ],
            )
            .await,
            200,
        )
        .await;
        Tokens {
            access: body["access_token"].as_str().expect("access_token").to_owned(),
            refresh: body["refresh_token"].as_str().map(str::to_owned),
            scope: body["scope"].as_str().unwrap_or_default().to_owned(),
            body,
        }
    }

    /// A FHIR request with a given bearer token.
    pub fn as_user(&self, method: reqwest::Method, path: &str, token: &str) -> reqwest::RequestBuilder {
        self.client.request(method, self.fhir(path)).bearer_auth(token)
    }

    /// Waits until every audit event so far is written, then returns this tenant's AuditEvents
    /// matching `query`, searched through the API with a development token (each search is
    /// itself audited, as a search of AuditEvent, which callers filter out).
    pub async fn audit_events(&self, query: &str) -> Vec<Value> {
        self.gateway.audit.flush().await;
        let token = self.token_for(&self.tenant, "user/AuditEvent.rs");
        let mut out = Vec::new();
        let mut url = format!(
            "{}/fhir/AuditEvent?_count=1000&_sort=date{}{}",
            self.address,
            if query.is_empty() { "" } else { "&" },
            query
        );
        loop {
            let b = json(self.client.get(&url).bearer_auth(&token).send().await.expect("audit search"), 200).await;
            out.extend(b["entry"].as_array().into_iter().flatten().map(|e| e["resource"].clone()));
            match b["link"].as_array().into_iter().flatten().find(|l| l["relation"] == "next") {
                Some(next) => url = next["url"].as_str().expect("next").to_owned(),
                None => break,
            }
        }
        out
    }
}
