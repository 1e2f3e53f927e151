//! Test harness: the real `ehr` router on port 0, a fresh database and a fresh tenant per test.
//!
//! The backend comes from `TEST_BACKEND` (`sqlite`, the default, or `postgres`); PostgreSQL is
//! reached through `TEST_POSTGRES_URL` (default `postgres://postgres@127.0.0.1:5432/postgres`),
//! where every test gets a database of its own. A test never skips: if PostgreSQL was asked for
//! and cannot be reached, the test fails.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a harness: failing loudly is its job

use ehr_app::{Config, Target};
use ehr_auth::{Claims, DevSigner};
use ehr_core::{Clock, SystemClock};
use sea_orm::{ConnectionTrait, Database};
use serde_json::Value;
use std::sync::Arc;

/// The scope of a token that may do everything (a system client).
pub const ALL_SCOPES: &str = "user/*.cruds";

/// A running application.
pub struct TestApp {
    /// `http://127.0.0.1:PORT`.
    pub address: String,
    /// The tenant of this test.
    pub tenant: String,
    /// The database URL the app runs on.
    pub database_url: String,
    pub client: reqwest::Client,
    token: String,
    signer: DevSigner,
    _data_dir: Option<TempDir>,
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

/// Creates a fresh PostgreSQL database and returns its URL.
async fn fresh_postgres() -> String {
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
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        let app = ehr_app::build(&config, Target::All, clock).await.expect("build app");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = format!("http://{}", listener.local_addr().expect("addr"));
        tokio::spawn(async move {
            axum::serve(listener, app.router).await.expect("serve");
        });
        let signer = DevSigner::new().expect("dev signer");
        let tenant = format!("t-{}", &unique()[..12]);
        let mut me = Self {
            address,
            tenant: tenant.clone(),
            database_url,
            client: reqwest::Client::new(),
            token: String::new(),
            signer,
            _data_dir: data_dir,
        };
        me.token = me.token_for(&tenant, ALL_SCOPES);
        me
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
        let now = SystemClock.now().timestamp();
        Claims {
            iss: ehr_auth::DEV_ISSUER.into(),
            sub: "test-user".into(),
            exp: now + 3600,
            iat: now,
            tenant: tenant.into(),
            scope: scope.into(),
            jti: None,
            nbf: None,
        }
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
