//! `ehr login`: the SMART App Launch flow of the README, from a terminal — authorization request
//! with PKCE, password, TOTP (enrolling the authenticator at the first login), code exchange.
//!
//! It speaks the gateway's public HTTP API only (the JSON answers of the login steps), as any
//! client would; nothing here touches the database.

use base64::Engine;
use serde_json::Value;
use sha2::Digest;
use std::io::{BufRead, Write};

/// The loopback redirect URI of the `<tenant>-cli` client that `ehr admin create-tenant` registers.
const REDIRECT: &str = "http://127.0.0.1:8765/callback";

fn prompt(label: &str) -> Result<String, String> {
    eprint!("{label}: ");
    std::io::stderr().flush().map_err(|e| e.to_string())?;
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line).map_err(|e| format!("reading {label}: {e}"))?;
    Ok(line.trim_end_matches(['\r', '\n']).to_owned())
}

fn random_verifier() -> String {
    use rand::RngCore;
    let mut bytes = [0u8; 48];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// What went wrong, from a JSON error answer: an OperationOutcome's diagnostics or an OAuth error.
fn error_text(v: &Value) -> String {
    v["issue"][0]["diagnostics"]
        .as_str()
        .or_else(|| v["error_description"].as_str())
        .or_else(|| v["error"].as_str())
        .unwrap_or("unexpected answer")
        .to_owned()
}

async fn step(resp: Result<reqwest::Response, reqwest::Error>) -> Result<Value, String> {
    let resp = resp.map_err(|e| format!("cannot reach the gateway: {e}"))?;
    let status = resp.status();
    let body: Value = resp.json().await.map_err(|e| format!("unexpected answer ({status}): {e}"))?;
    if status.is_success() { Ok(body) } else { Err(format!("{status}: {}", error_text(&body))) }
}

/// Logs in and prints the token response (JSON) on standard output; prompts go to standard error.
pub async fn login(base: &str, client_id: &str, username: &str, scope: &str) -> Result<(), String> {
    let base = base.trim_end_matches('/');
    let http = reqwest::Client::new();
    let verifier = random_verifier();
    let challenge = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(verifier.as_bytes()));
    let authz = http
        .get(format!("{base}/auth/authorize"))
        .header("accept", "application/json")
        .query(&[
            ("response_type", "code"),
            ("client_id", client_id),
            ("redirect_uri", REDIRECT),
            ("scope", scope),
            ("state", "cli"),
            ("code_challenge", &challenge),
            ("code_challenge_method", "S256"),
        ])
        .send()
        .await;
    let request = step(authz).await?["request"].as_str().ok_or("no request id in the answer")?.to_owned();
    let password = match std::env::var("EHR_PASSWORD") {
        Ok(p) => p,
        Err(_) => prompt("password")?,
    };
    let form = |path: &str, fields: Vec<(&str, String)>| {
        http.post(format!("{base}{path}")).header("accept", "application/json").form(&fields).send()
    };
    let next = step(
        form("/auth/login", vec![("request", request), ("username", username.to_owned()), ("password", password)])
            .await,
    )
    .await?;
    let login = next["login"].as_str().ok_or("no login id in the answer")?.to_owned();
    if next["next"] == "enrol" {
        eprintln!("first login: add this account to an authenticator app (TOTP, 6 digits, 30 s)");
        eprintln!("  {}", next["otpauth_uri"].as_str().unwrap_or_default());
        eprintln!("  secret: {}", next["secret"].as_str().unwrap_or_default());
    }
    let code = prompt("one-time code (or a recovery code)")?;
    let field = if code.trim().chars().all(|c| c.is_ascii_digit()) { "code" } else { "recovery_code" };
    let done = step(form("/auth/mfa", vec![("login", login), (field, code)]).await).await?;
    if let Some(codes) = done["recovery_codes"].as_array() {
        eprintln!("recovery codes (each works once; keep them safe, they are not shown again):");
        for c in codes {
            eprintln!("  {}", c.as_str().unwrap_or_default());
        }
    }
    let redirect = done["redirect"].as_str().ok_or("no redirect in the answer")?;
    let url = reqwest::Url::parse(redirect).map_err(|e| format!("bad redirect: {e}"))?;
    let code = url.query_pairs().find(|(k, _)| k == "code").map(|(_, v)| v.into_owned()).ok_or("no code")?;
    let tokens = step(
        form(
            "/auth/token",
            vec![
                ("grant_type", "authorization_code".into()),
                ("code", code),
                ("redirect_uri", REDIRECT.into()),
                ("client_id", client_id.to_owned()),
                ("code_verifier", verifier),
            ],
        )
        .await,
    )
    .await?;
    println!("{tokens}");
    Ok(())
}
