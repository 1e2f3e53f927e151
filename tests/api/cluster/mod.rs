//! Several `ehr` processes on PostgreSQL + Redis: the deployment shape of the Helm chart
//! (one process per target, services behind the gateway), started from the built binary.
//!
//! These tests need PostgreSQL and Redis; `.ci/run` runs them only in its PostgreSQL run
//! (like `postgres::`), where they fail — never skip — when either is missing.

mod scale_out;
mod stop;
mod traces;

use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// The password of the accounts these tests create.
pub const PASSWORD: &str = "Correct-Horse-Battery-9";

/// A free TCP port on 127.0.0.1 (bound and released; good enough for tests).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// What the processes of one test share: databases, a Redis prefix, the gateway's issuer and
/// key-encryption key, and a scratch directory (configs and logs).
pub struct Cluster {
    /// The gateway's database (identity, audit).
    pub gateway_db: String,
    /// The services' shared resource store.
    pub clinical_db: String,
    pub redis_url: String,
    pub redis_prefix: String,
    pub issuer: String,
    pub secret_key: String,
    pub dir: PathBuf,
}

impl Cluster {
    /// Fresh databases and a fresh Redis prefix. Panics unless the backend is PostgreSQL.
    pub async fn new() -> Self {
        assert_eq!(
            ehr_testkit::backend(),
            "postgres",
            "cluster tests run on PostgreSQL + Redis only (TEST_BACKEND=postgres)"
        );
        let id = uuid::Uuid::new_v4().simple().to_string();
        let dir = std::env::temp_dir().join(format!("ehr-cluster-{id}"));
        std::fs::create_dir_all(&dir).unwrap();
        Self {
            gateway_db: ehr_testkit::fresh_postgres().await,
            clinical_db: ehr_testkit::fresh_postgres().await,
            redis_url: std::env::var("TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into()),
            redis_prefix: format!("ehr-cluster-{id}"),
            issuer: "urn:ehr:cluster-gateway".into(),
            secret_key: ehr_gateway::Sealer::generate_key(),
            dir,
        }
    }

    /// The TOML configuration of a process of `target` listening on `port`; `extra` is appended
    /// (further tables or keys of tables not written here).
    pub fn config(&self, target: &str, port: u16, gateway_url: &str, extra: &str) -> String {
        let db = if target == "gateway" { &self.gateway_db } else { &self.clinical_db };
        let auth = if target == "gateway" {
            "[auth]\ndevelopment_key = false\n".to_owned()
        } else {
            format!(
                "[auth]\ndevelopment_key = false\nissuer = \"{}\"\njwks_url = \"{gateway_url}/.well-known/jwks.json\"\n",
                self.issuer
            )
        };
        format!(
            "listen = \"127.0.0.1:{port}\"\n\
             data_dir = \"{dir}\"\n\
             [database]\nurl = \"{db}\"\nmax_connections = 4\n\
             {auth}\
             [gateway]\nredis_url = \"{redis}\"\nredis_prefix = \"{prefix}\"\nsecret_key = \"{key}\"\nissuer = \"{issuer}\"\n\
             {extra}\n",
            dir = self.dir.display(),
            redis = self.redis_url,
            prefix = self.redis_prefix,
            key = self.secret_key,
            issuer = self.issuer,
        )
    }

    /// Creates `tenant` with an account `username` of `roles` in the gateway's database with
    /// `ehr admin create-tenant`; returns the tenant's command-line client id.
    pub fn create_tenant(&self, tenant: &str, username: &str, roles: &[&str]) -> String {
        let config = self.dir.join(format!("admin-{tenant}.toml"));
        std::fs::write(&config, self.config("gateway", 1, "", "")).unwrap();
        let mut args: Vec<String> = vec![
            "--config".into(),
            config.display().to_string(),
            "admin".into(),
            "create-tenant".into(),
            "--id".into(),
            tenant.into(),
            "--name".into(),
            format!("{tenant} hospital"),
            "--admin-user".into(),
            username.into(),
        ];
        for role in roles {
            args.push("--role".into());
            args.push((*role).into());
        }
        let out = Command::new(env!("CARGO_BIN_EXE_ehr"))
            .args(&args)
            .env("EHR_ADMIN_PASSWORD", PASSWORD)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(out.status.success(), "create-tenant: {}", String::from_utf8_lossy(&out.stderr));
        format!("{tenant}-cli")
    }

    /// Starts `ehr serve --target <target>` with `config`; waits until `/readyz` answers 200.
    pub async fn start(&self, name: &str, target: &str, port: u16, config: &str) -> Node {
        self.start_with_env(name, target, port, config, &[]).await
    }

    /// [`Cluster::start`] with environment variables `env` set for the process.
    pub async fn start_with_env(
        &self,
        name: &str,
        target: &str,
        port: u16,
        config: &str,
        env: &[(&str, &str)],
    ) -> Node {
        let path = self.dir.join(format!("{name}.toml"));
        std::fs::write(&path, config).unwrap();
        let log = self.dir.join(format!("{name}.log"));
        let file = std::fs::File::create(&log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_ehr"))
            .args(["--config", &path.display().to_string(), "serve", "--target", target])
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .unwrap();
        let node = Node { name: name.into(), url: format!("http://127.0.0.1:{port}"), child, log };
        node.wait_ready(Duration::from_secs(90)).await;
        node
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// One running `ehr` process.
pub struct Node {
    pub name: String,
    /// `http://127.0.0.1:<port>`
    pub url: String,
    child: Child,
    log: PathBuf,
}

impl Node {
    /// Waits until `/readyz` answers 200; panics with the end of the process's log otherwise.
    pub async fn wait_ready(&self, within: Duration) {
        let client = reqwest::Client::new();
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Ok(r) = client.get(format!("{}/readyz", self.url)).send().await
                && r.status() == 200
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("{} not ready within {within:?}; log:\n{}", self.name, self.log_tail());
    }

    /// The last 60 lines of the process's output.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(60)..].join("\n")
    }

    /// The process's whole output so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends SIGTERM (a graceful stop, as Kubernetes does).
    pub fn terminate(&self) {
        self.signal("TERM");
    }

    /// Sends the signal `name` (`TERM`, `INT`).
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill").args([&format!("-{name}"), &self.child.id().to_string()]).status().unwrap();
        assert!(status.success(), "kill -{name} {}", self.name);
    }

    /// Waits until the process's output contains `text`; panics after `within`.
    pub async fn wait_log(&self, text: &str, within: Duration) {
        let deadline = Instant::now() + within;
        while !self.log().contains(text) {
            assert!(
                Instant::now() < deadline,
                "{}: no `{text}` within {within:?}; log:\n{}",
                self.name,
                self.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits for the process to exit; panics after `within`.
    pub async fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "{} did not exit within {within:?}; log:\n{}",
                self.name,
                self.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The whole SMART login of `username` at the gateway (authorize with PKCE → password → TOTP,
/// enrolling on the first login → code → token), by the real clock; returns the access token.
pub async fn login(gateway_url: &str, client_id: &str, username: &str, scope: &str) -> String {
    let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let form = |path: &str, f: Vec<(&str, String)>| {
        http.post(format!("{gateway_url}{path}")).header("accept", "application/json").form(&f).send()
    };
    let (verifier, challenge) = ehr_testkit::pkce();
    let authz = http
        .get(format!("{gateway_url}/auth/authorize"))
        .header("accept", "application/json")
        .query(&[
            ("response_type", "code"),
            ("client_id", client_id),
            ("redirect_uri", ehr_testkit::REDIRECT),
            ("code_challenge", challenge.as_str()),
            ("code_challenge_method", "S256"),
            ("scope", scope),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(authz.status(), 200);
    let request = authz.json::<serde_json::Value>().await.unwrap()["request"].as_str().unwrap().to_owned();
    let step: serde_json::Value =
        form("/auth/login", vec![("request", request), ("username", username.into()), ("password", PASSWORD.into())])
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
    assert_eq!(step["next"], "enrol", "first login enrols TOTP: {step}");
    let secret = ehr_auth::TotpSecret::from_base32(step["secret"].as_str().unwrap()).unwrap();
    let now = ehr_core::Clock::now(&ehr_core::SystemClock).timestamp();
    let done: serde_json::Value =
        form("/auth/mfa", vec![("login", step["login"].as_str().unwrap().to_owned()), ("code", secret.code_at(now))])
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
    let redirect = reqwest::Url::parse(done["redirect"].as_str().expect("redirect")).unwrap();
    let code = redirect.query_pairs().find(|(k, _)| k == "code").unwrap().1.into_owned();
    let tokens: serde_json::Value = form(
        "/auth/token",
        vec![
            ("grant_type", "authorization_code".into()),
            ("code", code),
            ("redirect_uri", ehr_testkit::REDIRECT.into()),
            ("client_id", client_id.into()),
            ("code_verifier", verifier),
        ],
    )
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    tokens["access_token"].as_str().expect("access_token").to_owned()
}
