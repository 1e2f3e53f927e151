//! Login, MFA and SMART checks (`CONF-AUTH-*`), and the logins the other checks need.
//!
//! The flow is the standard one of `docs/security/identity.md` §5 in its JSON mode
//! (`Accept: application/json`): `GET authorize` (PKCE S256) → `POST login` (password) →
//! `POST mfa` (TOTP) → redirect with the code → `POST token` (code + verifier). The endpoints
//! come from `<fhir>/.well-known/smart-configuration`; the password and TOTP steps sit next to
//! the authorization endpoint (`…/login`, `…/mfa`).

use crate::http::Resp;
use crate::{Credentials, Kit, Outcome, Principal, Problem, ensure, fail, run_check, skip};
use base64::Engine;
use serde_json::Value;
use sha2::Digest;

/// Where the login steps are.
#[derive(Debug, Clone)]
pub(crate) struct Endpoints {
    pub authorize: String,
    pub token: String,
    pub login: String,
    pub mfa: String,
}

impl Endpoints {
    /// The standard layout under `<base>/auth`.
    pub fn under(base: &str) -> Self {
        Self::from_authorize(&format!("{base}/auth/authorize"), &format!("{base}/auth/token"))
    }

    fn from_authorize(authorize: &str, token: &str) -> Self {
        let dir = authorize.trim_end_matches("/authorize");
        Self {
            authorize: authorize.to_owned(),
            token: token.to_owned(),
            login: format!("{dir}/login"),
            mfa: format!("{dir}/mfa"),
        }
    }
}

/// A PKCE pair (verifier, S256 challenge).
fn pkce() -> (String, String) {
    use rand::RngCore;
    let mut bytes = [0u8; 48];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    let verifier = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    let challenge = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(verifier.as_bytes()));
    (verifier, challenge)
}

/// `CONF-AUTH-001` … `004`, and the main user's token when no token was given.
pub(crate) async fn discovery_and_first_login(kit: &mut Kit) {
    run_check!(kit, "CONF-AUTH-001", smart_configuration(kit));
    run_check!(kit, "CONF-AUTH-002", pkce_required(kit));
    run_check!(kit, "CONF-AUTH-003", password_alone(kit));
    run_check!(kit, "CONF-AUTH-004", full_login(kit));
}

async fn smart_configuration(kit: &mut Kit) -> Outcome {
    let url = format!("{}/.well-known/smart-configuration", kit.http.fhir);
    let resp = kit.http.send(kit.http.client.get(&url).header("accept", "application/json")).await?;
    ensure!(resp.status == 200, "GET {url}: {}", resp.describe());
    let cfg = resp.json();
    let text = |k: &str| cfg[k].as_str().filter(|s| s.starts_with("http")).map(str::to_owned);
    let (Some(authorize), Some(token)) = (text("authorization_endpoint"), text("token_endpoint")) else {
        return Err(fail("authorization_endpoint or token_endpoint missing or not absolute URLs"));
    };
    kit.endpoints = Endpoints::from_authorize(&authorize, &token);
    let has = |k: &str, v: &str| cfg[k].as_array().is_some_and(|a| a.iter().any(|x| x == v));
    ensure!(has("code_challenge_methods_supported", "S256"), "code_challenge_methods_supported lacks S256");
    ensure!(has("grant_types_supported", "authorization_code"), "grant_types_supported lacks authorization_code");
    ensure!(cfg["capabilities"].as_array().is_some_and(|a| !a.is_empty()), "capabilities missing or empty");
    ensure!(
        has("code_challenge_methods_supported", "S256")
            && !cfg["code_challenge_methods_supported"].as_array().is_some_and(|a| a.iter().any(|x| x == "plain")),
        "the plain PKCE method is advertised"
    );
    Ok(())
}

fn client_of(kit: &Kit) -> Result<Credentials, Problem> {
    kit.opts.user.clone().ok_or_else(|| skip("no --user: the login checks need a user who can log in"))
}

async fn pkce_required(kit: &mut Kit) -> Outcome {
    // Only the client is needed: the user is not asked for.
    let client = match &kit.opts.user {
        Some(c) => c.client.clone(),
        None => match &kit.opts.second_tenant {
            Some(Principal::Login(c)) => c.client.clone(),
            _ => return Err(skip("no client of a user login was given")),
        },
    };
    let req = kit.http.client.get(&kit.endpoints.authorize).header("accept", "application/json").query(&[
        ("response_type", "code"),
        ("client_id", client.as_str()),
        ("redirect_uri", kit.opts.redirect_uri.as_str()),
        ("scope", kit.opts.scope.as_str()),
        ("state", "conformance"),
    ]);
    let resp = kit.http.send(req).await?;
    let location = resp.header("location").unwrap_or_default();
    let refused = (400..500).contains(&resp.status)
        || ((300..400).contains(&resp.status) && location.contains("error=") && !location.contains("code="));
    ensure!(refused, "an authorization request without code_challenge was accepted: {}", resp.describe());
    ensure!(resp.json()["request"].is_null(), "the refusal still carries a login request id");
    Ok(())
}

/// `GET authorize` with PKCE: the login request id.
async fn authorize(kit: &Kit, client: &str, challenge: &str) -> Result<String, Problem> {
    let req = kit.http.client.get(&kit.endpoints.authorize).header("accept", "application/json").query(&[
        ("response_type", "code"),
        ("client_id", client),
        ("redirect_uri", kit.opts.redirect_uri.as_str()),
        ("scope", kit.opts.scope.as_str()),
        ("state", "conformance"),
        ("code_challenge", challenge),
        ("code_challenge_method", "S256"),
    ]);
    let resp = kit.http.send(req).await?;
    ensure!(resp.status == 200, "authorize: {}", resp.describe());
    resp.json()["request"].as_str().map(str::to_owned).ok_or_else(|| fail("authorize: no request id in the answer"))
}

async fn form(kit: &Kit, url: &str, fields: &[(&str, &str)]) -> Result<Resp, Problem> {
    Ok(kit.http.send(kit.http.client.post(url).header("accept", "application/json").form(fields)).await?)
}

/// `POST login`: the answer of the password step.
async fn password(kit: &Kit, request: &str, creds: &Credentials) -> Result<Value, Problem> {
    let resp = form(
        kit,
        &kit.endpoints.login,
        &[("request", request), ("username", &creds.username), ("password", &creds.password)],
    )
    .await?;
    ensure!(resp.status == 200, "password step: {}", resp.describe());
    Ok(resp.json())
}

async fn password_alone(kit: &mut Kit) -> Outcome {
    let creds = client_of(kit)?;
    let (verifier, challenge) = pkce();
    let request = authorize(kit, &creds.client, &challenge).await?;
    let step = password(kit, &request, &creds).await?;
    ensure!(
        step["next"] == "mfa" || step["next"] == "enrol",
        "the password step did not ask for the second factor: next = {}",
        step["next"]
    );
    for leak in ["redirect", "code", "access_token"] {
        ensure!(step[leak].is_null(), "the password step answered `{leak}` before the second factor");
    }
    // The pending login is not an authorization code.
    let login = step["login"].as_str().unwrap_or("none");
    let resp = form(
        kit,
        &kit.endpoints.token,
        &[
            ("grant_type", "authorization_code"),
            ("code", login),
            ("redirect_uri", &kit.opts.redirect_uri),
            ("client_id", &creds.client),
            ("code_verifier", &verifier),
        ],
    )
    .await?;
    ensure!(
        (400..500).contains(&resp.status) && resp.json()["access_token"].is_null(),
        "the token endpoint answered a login without its second factor: {}",
        resp.describe()
    );
    Ok(())
}

/// The second factor: a code of a TOTP step this account has not used yet in the run (waiting
/// for the next step when needed). Returns the redirect URI with the code.
async fn second_factor(kit: &mut Kit, creds: &Credentials, step: &Value) -> Result<String, Problem> {
    let login = step["login"].as_str().ok_or_else(|| fail("password step: no login id"))?.to_owned();
    let secret = if step["next"] == "enrol" {
        let s = step["secret"].as_str().ok_or_else(|| fail("enrolment answer without a secret"))?.to_owned();
        if !kit.enrolled.contains(&creds.username) {
            kit.enrolled.push(creds.username.clone());
        }
        kit.secrets.insert(creds.username.clone(), s.clone());
        s
    } else if let Some(s) = kit.secrets.get(&creds.username).or(creds.totp_secret.as_ref()) {
        s.clone()
    } else {
        return Err(fail(format!(
            "{} is enrolled but no TOTP secret was given (EHR_TOTP_SECRET and the like)",
            creds.username
        )));
    };
    let totp = ehr_auth::TotpSecret::from_base32(&secret).map_err(|e| fail(format!("TOTP secret: {e}")))?;
    let mut now = kit.opts.clock.now_unix();
    if let Some(last) = kit.used_steps.get(&creds.username).copied()
        && now.div_euclid(30) <= last
    {
        kit.opts.clock.wait_until((last + 1) * 30).await;
        now = kit.opts.clock.now_unix();
    }
    kit.used_steps.insert(creds.username.clone(), now.div_euclid(30));
    let code = totp.code_at(now);
    let resp = form(kit, &kit.endpoints.mfa, &[("login", &login), ("code", &code)]).await?;
    ensure!(resp.status == 200, "TOTP step: {}", resp.describe());
    resp.json()["redirect"].as_str().map(str::to_owned).ok_or_else(|| fail("TOTP step: no redirect in the answer"))
}

/// The code of a redirect URI.
fn code_of(redirect: &str) -> Result<String, Problem> {
    let url = reqwest::Url::parse(redirect).map_err(|e| fail(format!("redirect is not a URL: {e}")))?;
    url.query_pairs()
        .find(|(k, _)| k == "code")
        .map(|(_, v)| v.into_owned())
        .ok_or_else(|| fail("no code in the redirect"))
}

async fn redeem(kit: &Kit, client: &str, code: &str, verifier: &str) -> Result<Resp, Problem> {
    form(
        kit,
        &kit.endpoints.token,
        &[
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", &kit.opts.redirect_uri),
            ("client_id", client),
            ("code_verifier", verifier),
        ],
    )
    .await
}

/// A whole login: the token response.
pub(crate) async fn login(kit: &mut Kit, creds: &Credentials) -> Result<Value, Problem> {
    let (verifier, challenge) = pkce();
    let request = authorize(kit, &creds.client, &challenge).await?;
    let step = password(kit, &request, creds).await?;
    let redirect = second_factor(kit, creds, &step).await?;
    let resp = redeem(kit, &creds.client, &code_of(&redirect)?, &verifier).await?;
    ensure!(resp.status == 200, "token endpoint: {}", resp.describe());
    Ok(resp.json())
}

/// The bearer token of a principal (logging in when needed).
pub(crate) async fn token_of(kit: &mut Kit, who: &Principal) -> Result<String, Problem> {
    match who {
        Principal::Token(t) => Ok(t.clone()),
        Principal::Login(creds) => {
            let tokens = login(kit, creds).await?;
            tokens["access_token"].as_str().map(str::to_owned).ok_or_else(|| fail("no access_token"))
        }
    }
}

async fn full_login(kit: &mut Kit) -> Outcome {
    let creds = client_of(kit)?;
    let tokens = login(kit, &creds).await?;
    let access = tokens["access_token"].as_str().ok_or_else(|| fail("no access_token in the token response"))?;
    ensure!(
        tokens["token_type"].as_str().is_some_and(|t| t.eq_ignore_ascii_case("bearer")),
        "token_type is {}, not Bearer",
        tokens["token_type"]
    );
    // The guideline's short-lived tokens: at most 15 minutes.
    let expires = tokens["expires_in"].as_i64().ok_or_else(|| fail("no expires_in"))?;
    ensure!(expires > 0 && expires <= 900, "expires_in is {expires} s, more than 15 minutes");
    // The FHIR API accepts the token: 200, or 403 when the user's roles grant no Patient search
    // (a tenant-admin); never 401.
    let resp = kit.http.get("/Patient?_summary=count", access).await?;
    ensure!(matches!(resp.status, 200 | 403), "the FHIR API does not accept the token: {}", resp.describe());
    if kit.token.is_none() {
        kit.token = Some(access.to_owned());
    }
    Ok(())
}

/// `CONF-AUTH-005`.
pub(crate) async fn wrong_verifier(kit: &mut Kit) {
    run_check!(kit, "CONF-AUTH-005", wrong_verifier_check(kit));
}

async fn wrong_verifier_check(kit: &mut Kit) -> Outcome {
    let creds = client_of(kit)?;
    if !kit.passed("CONF-AUTH-004") {
        return Err(skip("depends on CONF-AUTH-004 (a whole login), which did not pass"));
    }
    let (verifier, challenge) = pkce();
    let request = authorize(kit, &creds.client, &challenge).await?;
    let step = password(kit, &request, &creds).await?;
    let code = code_of(&second_factor(kit, &creds, &step).await?)?;
    let (wrong, _) = pkce();
    let resp = redeem(kit, &creds.client, &code, &wrong).await?;
    ensure!(
        (400..500).contains(&resp.status) && resp.json()["access_token"].is_null(),
        "a wrong code_verifier was accepted: status {}",
        resp.status
    );
    let resp = redeem(kit, &creds.client, &code, &verifier).await?;
    ensure!(
        (400..500).contains(&resp.status) && resp.json()["access_token"].is_null(),
        "the code still worked after a wrong verifier was tried with it: status {}",
        resp.status
    );
    Ok(())
}
