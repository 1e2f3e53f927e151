//! The gateway's settings (the `[gateway]` table of the configuration).

use ehr_auth::{LockoutPolicy, PasswordPolicy};
use secrecy::SecretString;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// Longest access-token lifetime this server issues: the guideline's "short-lived" is read as
/// 15 minutes, the common SMART practice; a setting above it is capped.
pub const MAX_ACCESS_TOKEN_SECS: i64 = 900;

/// Gateway settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GatewaySettings {
    /// The token issuer (`iss`); defaults to `public_url`, else `urn:ehr:gateway`.
    pub issuer: Option<String>,
    /// Access-token lifetime in seconds (capped at 900).
    pub access_token_secs: i64,
    /// Refresh-token family lifetime in seconds (one working shift by default).
    pub refresh_token_secs: i64,
    /// Time a user has to finish login and MFA, in seconds.
    pub login_secs: i64,
    /// Authorization-code lifetime in seconds (RFC 6749 §4.1.2 recommends at most 10 minutes).
    pub code_secs: i64,
    /// Days a signing key signs before a new one takes over (rotation at start-up and on demand).
    pub key_rotation_days: i64,
    pub password: PasswordPolicy,
    pub lockout: LockoutPolicy,
    pub rate_limit: RateLimitSettings,
    /// Proxies in front of the gateway that append the client's address to `X-Forwarded-For`
    /// (the ingress controller, a cloud load balancer): the client's address is the hop this
    /// many places from the right. 0 (the default): the TCP peer, and the header is ignored —
    /// a client can write anything into it.
    pub trusted_proxies: usize,
    /// Origins allowed by CORS (`https://app.example-hospital.jp`); empty: no cross-origin access.
    pub cors_origins: Vec<String>,
    /// Redis for sessions, refresh families, revocations, lockout counters and rate limits;
    /// when absent, an in-process store (single-process `ehr serve` only).
    #[serde(skip_serializing)]
    pub redis_url: Option<SecretString>,
    /// A file holding the Redis URL (takes precedence over `redis_url`).
    pub redis_url_file: Option<PathBuf>,
    /// The key-encryption key of secrets at rest (TOTP secrets, signing keys): base64 of 32
    /// random bytes, the same on every gateway replica. `ehr serve` creates one in `data_dir` on
    /// first start when none is configured.
    #[serde(skip_serializing)]
    pub secret_key: Option<SecretString>,
    /// A file holding the key-encryption key (takes precedence over `secret_key`).
    pub secret_key_file: Option<PathBuf>,
    /// Prefix of every Redis key (several deployments may share one Redis).
    pub redis_prefix: String,
    /// Base URLs of the services in microservices mode (`patient-record = "http://patient-record:8080"`).
    /// In target `all` the services are called in-process and this is ignored.
    pub upstreams: BTreeMap<String, String>,
}

/// Token-bucket rate limits (requests per second and burst), per user and per tenant.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimitSettings {
    pub user_per_sec: f64,
    pub user_burst: u32,
    pub tenant_per_sec: f64,
    pub tenant_burst: u32,
    /// Requests per second to the login endpoints (`/auth/*`) per client address: each costs an
    /// argon2 hash or a TOTP check, and nobody is authenticated yet to be limited as a user.
    pub login_per_sec: f64,
    pub login_burst: u32,
}

impl Default for RateLimitSettings {
    fn default() -> Self {
        Self {
            user_per_sec: 50.0,
            user_burst: 200,
            tenant_per_sec: 2000.0,
            tenant_burst: 5000,
            login_per_sec: 1.0,
            login_burst: 30,
        }
    }
}

impl Default for GatewaySettings {
    fn default() -> Self {
        Self {
            issuer: None,
            access_token_secs: 600,
            refresh_token_secs: 12 * 3600,
            login_secs: 300,
            code_secs: 60,
            key_rotation_days: 30,
            password: PasswordPolicy::default(),
            lockout: LockoutPolicy::default(),
            rate_limit: RateLimitSettings::default(),
            trusted_proxies: 0,
            cors_origins: Vec::new(),
            redis_url: None,
            redis_url_file: None,
            secret_key: None,
            secret_key_file: None,
            redis_prefix: "ehr".into(),
            upstreams: BTreeMap::new(),
        }
    }
}

impl GatewaySettings {
    /// Until when a revocation of a user's tokens must be kept: past the life of every access
    /// token, login in progress and authorization code issued before it.
    pub fn revocation_keep(&self, now: i64) -> i64 {
        now + self.access_secs().max(self.login_secs + self.code_secs) + 60
    }

    /// The access-token lifetime actually used.
    pub fn access_secs(&self) -> i64 {
        self.access_token_secs.clamp(60, MAX_ACCESS_TOKEN_SECS)
    }
}
