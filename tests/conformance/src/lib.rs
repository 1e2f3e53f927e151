//! The conformance kit: a black-box suite a vendor points at any EHR that claims the MHLW
//! standard specification (`ehr conformance --base-url … --client …`).
//!
//! It speaks HTTP only — the FHIR R4 API at `<base-url>/fhir`, the SMART App Launch login with its
//! password and TOTP steps (`docs/security/identity.md` §5), Bulk Data `$export` and `$import` —
//! and never touches a database. Each check has a stable id (`CONF-FHIR-001`) and names the
//! requirement of `docs/conformance.md` it verifies ([`report::CHECKS`]). The run prints a
//! grouped report and can write JUnit XML. What the kit writes is its own synthetic data (names
//! `Conformance` + a run tag), left in place except the resources it deletes on purpose.

mod auth;
mod bulk;
mod fhir;
mod http;
mod isolation;
pub mod report;

use report::{CheckResult, Report, Verdict};
use serde_json::Value;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

pub use report::{CHECKS, CheckDef, Requirement};

/// What can stop the kit before or between checks (a failing check is a [`Verdict`], not this).
#[derive(Debug, thiserror::Error)]
pub enum ConformanceError {
    #[error("{0}")]
    Input(String),
    #[error("request to {url} failed: {source}")]
    Transport {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("cannot build the HTTP client: {0}")]
    Client(#[source] reqwest::Error),
    #[error("the JP Core validator cannot load: {0}")]
    Validator(String),
    #[error("cannot write {path}: {source}")]
    Write {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// What a person knows to log in: a user of a client, the password and — once enrolled — the
/// TOTP secret of the authenticator.
#[derive(Clone)]
pub struct Credentials {
    /// The public client the login runs through (`<tenant>-cli`).
    pub client: String,
    pub username: String,
    pub password: String,
    /// Base32 TOTP secret of an enrolled account. `None`: the account must not be enrolled yet;
    /// the kit enrols it at its first login (and the run reports that it did).
    pub totp_secret: Option<String>,
}

/// How the kit acts as someone: by logging in, or with a bearer token obtained elsewhere.
#[derive(Clone)]
pub enum Principal {
    Login(Credentials),
    Token(String),
}

// Passwords, TOTP secrets and tokens never appear in debug output.
impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("client", &self.client)
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for Principal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Login(c) => f.debug_tuple("Login").field(c).finish(),
            Self::Token(_) => f.write_str("Token(…)"),
        }
    }
}

/// Time for the TOTP codes, and a way to wait for the next 30-second step: a server accepts
/// each step of an account once, so a second login of the same account waits for a new one.
pub trait KitClock: Send + Sync {
    /// Unix seconds.
    fn now_unix(&self) -> i64;
    /// Returns once [`KitClock::now_unix`] is at least `unix`.
    fn wait_until(&self, unix: i64) -> Pin<Box<dyn Future<Output = ()> + Send + '_>>;
}

/// The system clock; waits by sleeping.
#[derive(Debug, Default)]
pub struct SystemKitClock;

impl KitClock for SystemKitClock {
    fn now_unix(&self) -> i64 {
        ehr_core::Clock::now(&ehr_core::SystemClock).timestamp()
    }

    fn wait_until(&self, unix: i64) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        let secs = u64::try_from(unix - self.now_unix()).unwrap_or(0);
        Box::pin(async move {
            if secs > 0 {
                // One second of margin: the server's clock may trail ours a little.
                tokio::time::sleep(std::time::Duration::from_secs(secs + 1)).await;
            }
        })
    }
}

/// Everything a run needs.
#[derive(Clone)]
pub struct Options {
    /// The server's base URL (`https://ehr.example-hospital.jp`); FHIR is at `<base>/fhir`.
    pub base_url: String,
    /// The login of the main (clinical) user; the login checks need it.
    pub user: Option<Credentials>,
    /// A bearer token for the FHIR, export and import checks; without it they use the token
    /// of `user`'s login.
    pub token: Option<String>,
    /// Someone allowed to read the audit trail (`tenant-admin`); without it the audit check is
    /// skipped.
    pub auditor: Option<Principal>,
    /// Someone of another tenant; without it the tenant-isolation checks are skipped.
    pub second_tenant: Option<Principal>,
    /// The redirect URI registered for the clients.
    pub redirect_uri: String,
    /// The scope asked for at authorization.
    pub scope: String,
    pub clock: Arc<dyn KitClock>,
    /// Where to write the TOTP secrets of accounts the kit enrolled (`username secret` lines,
    /// readable by the owner only); without it they are forgotten with the run.
    pub enrolled_secrets_file: Option<std::path::PathBuf>,
}

impl std::fmt::Debug for Options {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Passwords, secrets and tokens are left out.
        f.debug_struct("Options").field("base_url", &self.base_url).finish_non_exhaustive()
    }
}

/// The redirect URI of the `<tenant>-cli` client `ehr admin create-tenant` registers.
pub const DEFAULT_REDIRECT_URI: &str = "http://127.0.0.1:8765/callback";
/// The scope the kit asks for: everything the user's roles allow.
pub const DEFAULT_SCOPE: &str = "openid fhirUser user/*.cruds";

impl Options {
    /// Options with the defaults and no principal yet.
    pub fn new(base_url: impl Into<String>) -> Self {
        Self {
            base_url: base_url.into().trim_end_matches('/').to_owned(),
            user: None,
            token: None,
            auditor: None,
            second_tenant: None,
            redirect_uri: DEFAULT_REDIRECT_URI.into(),
            scope: DEFAULT_SCOPE.into(),
            clock: Arc::new(SystemKitClock),
            enrolled_secrets_file: None,
        }
    }
}

/// Why a check did not pass.
pub(crate) enum Problem {
    Fail(String),
    Skip(String),
}

impl From<ConformanceError> for Problem {
    fn from(e: ConformanceError) -> Self {
        Problem::Fail(e.to_string())
    }
}

pub(crate) type Outcome = Result<(), Problem>;

/// Fails the check with a formatted reason unless the condition holds.
macro_rules! ensure {
    ($cond:expr, $($arg:tt)*) => {
        if !$cond {
            return Err($crate::Problem::Fail(format!($($arg)*)));
        }
    };
}
pub(crate) use ensure;

/// Fails the check with a formatted reason.
pub(crate) fn fail(msg: impl Into<String>) -> Problem {
    Problem::Fail(msg.into())
}

/// Skips the check with a reason.
pub(crate) fn skip(msg: impl Into<String>) -> Problem {
    Problem::Skip(msg.into())
}

/// The state a run carries from check to check.
pub(crate) struct Kit {
    pub http: http::Http,
    pub opts: Options,
    /// A tag unique to this run, in every name and identifier the kit writes.
    pub tag: String,
    /// The FHIR token of the main principal.
    pub token: Option<String>,
    /// Every resource the server returned from a read or search, for the profile check.
    pub returned: Vec<Value>,
    /// What the FHIR checks created.
    pub data: fhir::Data,
    /// Where the login steps are (from the SMART configuration).
    pub endpoints: auth::Endpoints,
    /// TOTP secrets learnt by enrolling an account in this run.
    pub secrets: std::collections::HashMap<String, String>,
    /// Per username, the last TOTP step the kit used.
    pub used_steps: std::collections::HashMap<String, i64>,
    /// Accounts the kit enrolled in this run (their secrets are not printed).
    pub enrolled: Vec<String>,
    results: Vec<CheckResult>,
}

impl Kit {
    /// Records the outcome of a check.
    pub(crate) fn record(&mut self, id: &'static str, started: Instant, outcome: Outcome) {
        let Some(def) = report::definition(id) else {
            return;
        };
        let verdict = match outcome {
            Ok(()) => Verdict::Pass,
            Err(Problem::Fail(why)) => Verdict::Fail(why),
            Err(Problem::Skip(why)) => Verdict::Skip(why),
        };
        self.results.retain(|r| r.def.id != id);
        self.results.push(CheckResult { def, verdict, duration: started.elapsed() });
    }

    /// Whether a check passed (for checks that build on it).
    pub(crate) fn passed(&self, id: &str) -> bool {
        self.results.iter().any(|r| r.def.id == id && r.verdict == Verdict::Pass)
    }

    /// The main FHIR token, or a skip naming why there is none.
    pub(crate) fn token(&self) -> Result<String, Problem> {
        self.token.clone().ok_or_else(|| skip("no FHIR token: give --token-env or a user who can log in"))
    }
}

/// Runs a check and records it: `run_check!(kit, "CONF-X-001", some_check(&mut kit))`.
macro_rules! run_check {
    ($kit:expr, $id:literal, $check:expr) => {{
        let started = std::time::Instant::now();
        let outcome = $check.await;
        $kit.record($id, started, outcome);
    }};
}
pub(crate) use run_check;

/// Runs every check against the server of `opts` and returns the report.
pub async fn run(opts: Options) -> Result<Report, ConformanceError> {
    if opts.user.is_none() && opts.token.is_none() {
        return Err(ConformanceError::Input("give a user (with password) or a token for the FHIR checks".into()));
    }
    let http = http::Http::new(&opts.base_url)?;
    let validator = ehr_validation::FullValidator::builtin().map_err(|e| ConformanceError::Validator(e.to_string()))?;
    let tag = random_tag();
    let endpoints = auth::Endpoints::under(&http.base);
    let mut kit = Kit {
        endpoints,
        secrets: Default::default(),
        http,
        token: opts.token.clone(),
        opts,
        tag,
        returned: Vec::new(),
        data: fhir::Data::default(),
        used_steps: Default::default(),
        enrolled: Vec::new(),
        results: Vec::new(),
    };
    // Discovery and the login first: the FHIR checks may need the login's token.
    auth::discovery_and_first_login(&mut kit).await;
    fhir::capability(&mut kit).await;
    fhir::interactions(&mut kit).await;
    fhir::search(&mut kit).await;
    fhir::errors(&mut kit).await;
    bulk::export_and_import(&mut kit).await;
    isolation::audit(&mut kit).await;
    isolation::tenants(&mut kit).await;
    // Validated last: every resource the server returned in the run.
    run_check!(kit, "CONF-PROF-001", fhir::profiles(&kit, &validator));
    // A second full login last: it waits for a fresh TOTP step.
    auth::wrong_verifier(&mut kit).await;
    let mut results = Vec::new();
    for def in CHECKS {
        match kit.results.iter().find(|r| r.def.id == def.id) {
            Some(r) => results.push(r.clone()),
            None => results.push(CheckResult {
                def,
                verdict: Verdict::Skip("not run".into()),
                duration: std::time::Duration::ZERO,
            }),
        }
    }
    let mut notes = Vec::new();
    if !kit.enrolled.is_empty() {
        let users = kit.enrolled.join(", ");
        match &kit.opts.enrolled_secrets_file {
            Some(path) => {
                let lines: String = kit
                    .enrolled
                    .iter()
                    .filter_map(|u| kit.secrets.get(u).map(|s| format!("{u} {s}\n")))
                    .collect();
                write_owner_only(path, &lines)?;
                notes.push(format!("the kit enrolled the authenticator of {users}; the TOTP secrets are in {}", path.display()));
            }
            None => notes.push(format!(
                "the kit enrolled the authenticator of {users}; the TOTP secrets are not kept (--enrolled-secrets-file): reset their MFA before the next run"
            )),
        }
    }
    Ok(Report { base_url: kit.opts.base_url.clone(), results, notes })
}

/// Writes a file readable by its owner only (TOTP secrets).
fn write_owner_only(path: &std::path::Path, text: &str) -> Result<(), ConformanceError> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options
        .open(path)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .map_err(|source| ConformanceError::Write { path: path.display().to_string(), source })
}

/// 10 random lower-case letters and digits.
fn random_tag() -> String {
    use rand::Rng;
    const CHARS: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::thread_rng();
    (0..10).map(|_| char::from(CHARS[rng.gen_range(0..CHARS.len())])).collect()
}

/// `ehr conformance`: the command-line inputs. Secrets come from the environment only.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The server's base URL (FHIR at <base-url>/fhir, login at <base-url>/auth).
    #[arg(long)]
    pub base_url: String,
    /// The public OAuth client of the main user's tenant (`<tenant>-cli`).
    #[arg(long)]
    pub client: String,
    /// The main (clinical) user: password from EHR_PASSWORD, TOTP secret from EHR_TOTP_SECRET
    /// (unset: the account is enrolled by the kit's first login).
    #[arg(long)]
    pub user: Option<String>,
    /// The name of an environment variable holding a bearer token for the FHIR, export and
    /// import checks (instead of the user's login token).
    #[arg(long)]
    pub token_env: Option<String>,
    /// A user allowed to read the audit trail (tenant-admin), same tenant: password from
    /// EHR_AUDITOR_PASSWORD, TOTP secret from EHR_AUDITOR_TOTP_SECRET.
    #[arg(long)]
    pub auditor: Option<String>,
    /// Environment variable holding the auditor's bearer token (instead of --auditor).
    #[arg(long)]
    pub auditor_token_env: Option<String>,
    /// The public client of a second tenant, for the tenant-isolation checks.
    #[arg(long)]
    pub second_client: Option<String>,
    /// A user of the second tenant: password from EHR_SECOND_PASSWORD, TOTP secret from
    /// EHR_SECOND_TOTP_SECRET.
    #[arg(long)]
    pub second_user: Option<String>,
    /// Environment variable holding a bearer token of the second tenant (instead of a login).
    #[arg(long)]
    pub second_token_env: Option<String>,
    /// The redirect URI registered for the clients.
    #[arg(long, default_value = DEFAULT_REDIRECT_URI)]
    pub redirect_uri: String,
    /// The scope asked for at authorization.
    #[arg(long, default_value = DEFAULT_SCOPE)]
    pub scope: String,
    /// Write the TOTP secrets of the accounts the kit enrols (users without a secret given) to
    /// this file, readable by the owner only.
    #[arg(long)]
    pub enrolled_secrets_file: Option<std::path::PathBuf>,
    /// Write JUnit XML to this file.
    #[arg(long)]
    pub junit: Option<std::path::PathBuf>,
}

fn env(name: &str) -> Result<String, ConformanceError> {
    std::env::var(name).map_err(|_| ConformanceError::Input(format!("{name} is not set")))
}

fn credentials(
    client: &str,
    user: &str,
    password_var: &str,
    secret_var: &str,
) -> Result<Credentials, ConformanceError> {
    Ok(Credentials {
        client: client.to_owned(),
        username: user.to_owned(),
        password: env(password_var)?,
        totp_secret: std::env::var(secret_var).ok().filter(|s| !s.is_empty()),
    })
}

impl Args {
    /// The options these arguments and the environment describe.
    pub fn options(&self) -> Result<Options, ConformanceError> {
        let mut opts = Options::new(&self.base_url);
        opts.redirect_uri.clone_from(&self.redirect_uri);
        opts.scope.clone_from(&self.scope);
        opts.enrolled_secrets_file.clone_from(&self.enrolled_secrets_file);
        if let Some(user) = &self.user {
            opts.user = Some(credentials(&self.client, user, "EHR_PASSWORD", "EHR_TOTP_SECRET")?);
        }
        if let Some(var) = &self.token_env {
            opts.token = Some(env(var)?);
        }
        opts.auditor = match (&self.auditor, &self.auditor_token_env) {
            (_, Some(var)) => Some(Principal::Token(env(var)?)),
            (Some(user), None) => Some(Principal::Login(credentials(
                &self.client,
                user,
                "EHR_AUDITOR_PASSWORD",
                "EHR_AUDITOR_TOTP_SECRET",
            )?)),
            (None, None) => None,
        };
        opts.second_tenant = match (&self.second_client, &self.second_user, &self.second_token_env) {
            (_, _, Some(var)) => Some(Principal::Token(env(var)?)),
            (Some(client), Some(user), None) => {
                Some(Principal::Login(credentials(client, user, "EHR_SECOND_PASSWORD", "EHR_SECOND_TOTP_SECRET")?))
            }
            (None, None, None) => None,
            _ => {
                return Err(ConformanceError::Input(
                    "the second tenant needs --second-client and --second-user, or --second-token-env".into(),
                ));
            }
        };
        Ok(opts)
    }
}

/// `ehr conformance`: runs the kit, prints the report, writes JUnit XML when asked; an error
/// (exit 1) when a check failed.
pub async fn main(args: &Args) -> Result<(), String> {
    let opts = args.options().map_err(|e| e.to_string())?;
    let report = run(opts).await.map_err(|e| e.to_string())?;
    print!("{}", report.to_text());
    if let Some(path) = &args.junit {
        std::fs::write(path, report.to_junit())
            .map_err(|source| ConformanceError::Write { path: path.display().to_string(), source })
            .map_err(|e| e.to_string())?;
    }
    match report.failed().len() {
        0 => Ok(()),
        n => Err(format!("{n} conformance check(s) failed")),
    }
}
