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
    /// Base URLs of the services in microservices mode (`patient-record = "http://patient-record:8080"`):
    /// one per service, or several instances of it (a TOML array, or one string with commas).
    /// In target `all` the services are called in-process and this is ignored.
    pub upstreams: BTreeMap<String, BaseUrls>,
    /// Milliseconds between two health checks (`GET <base>/readyz`) of each instance of a
    /// service listed in `upstreams`.
    pub upstream_check_ms: u64,
}

/// The base URLs of a service's instances (`http://orders-1:8080`, without `/fhir`): one or
/// more, each `http` or `https`, stored without a trailing `/`; none twice, and none with
/// credentials (`http://user:pass@…`: the URLs are logged, and the services authenticate the
/// caller's bearer token, not the gateway).
///
/// Configured as one URL, a TOML array of URLs, or one string of URLs separated by commas (the
/// form an environment variable gives).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BaseUrls(Vec<String>);

impl BaseUrls {
    /// The URLs, in configured order.
    pub fn as_slice(&self) -> &[String] {
        &self.0
    }

    fn push_list(&mut self, text: &str) -> Result<(), String> {
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            // A text with `@` may hold credentials: not echoed (the message is logged).
            let shown = if part.contains('@') { "a base URL with `@`" } else { part };
            let url = reqwest::Url::parse(part).map_err(|e| format!("`{shown}` is not a URL: {e}"))?;
            if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
                return Err(format!("`{shown}` is not an http(s) URL with a host"));
            }
            if !url.username().is_empty() || url.password().is_some() {
                // Not echoed: the message is logged.
                return Err(format!(
                    "a base URL of host `{}` carries credentials before `@`: not allowed",
                    url.host_str().unwrap_or_default()
                ));
            }
            if url.query().is_some() || url.fragment().is_some() {
                return Err(format!("`{part}`: a base URL has no query or fragment"));
            }
            let base = part.trim_end_matches('/').to_owned();
            // The same instance twice (`http://Orders:80` is `http://orders`) would get twice the
            // share of the requests and be tried twice.
            let same = |other: &String| reqwest::Url::parse(other).ok() == reqwest::Url::parse(&base).ok();
            if self.0.iter().any(same) {
                return Err(format!("`{part}` is listed twice"));
            }
            self.0.push(base);
        }
        Ok(())
    }

    fn checked(self) -> Result<Self, String> {
        if self.0.is_empty() { Err("no base URL given".to_owned()) } else { Ok(self) }
    }
}

impl std::str::FromStr for BaseUrls {
    type Err = String;

    /// One URL, or several separated by commas.
    fn from_str(text: &str) -> Result<Self, String> {
        let mut urls = Self(Vec::new());
        urls.push_list(text)?;
        urls.checked()
    }
}

impl Serialize for BaseUrls {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for BaseUrls {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = BaseUrls;

            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a base URL, a list of them, or a comma-separated string of them")
            }

            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<BaseUrls, E> {
                text.parse().map_err(E::custom)
            }

            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<BaseUrls, A::Error> {
                use serde::de::Error;
                let mut urls = BaseUrls(Vec::new());
                while let Some(text) = seq.next_element::<String>()? {
                    urls.push_list(&text).map_err(A::Error::custom)?;
                }
                urls.checked().map_err(A::Error::custom)
            }
        }
        deserializer.deserialize_any(Visitor)
    }
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
            upstream_check_ms: 1000,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(value: serde_json::Value) -> Result<Vec<String>, String> {
        serde_json::from_value::<BaseUrls>(value).map(|u| u.as_slice().to_vec()).map_err(|e| e.to_string())
    }

    #[test]
    fn upstreams_are_one_url_a_list_or_a_comma_separated_string() {
        let one = parse(serde_json::json!("http://orders:8080")).unwrap();
        assert_eq!(one, ["http://orders:8080"]);
        let commas = parse(serde_json::json!(" http://orders-1:8080/ ,http://orders-2:8080,")).unwrap();
        assert_eq!(commas, ["http://orders-1:8080", "http://orders-2:8080"]);
        let list = parse(serde_json::json!(["http://orders-1:8080", "https://orders-2.example.jp/"])).unwrap();
        assert_eq!(list, ["http://orders-1:8080", "https://orders-2.example.jp"]);
        // What the configuration log shows: the list.
        let urls: BaseUrls = "http://a:1,http://b:2".parse().unwrap();
        assert_eq!(serde_json::to_value(&urls).unwrap(), serde_json::json!(["http://a:1", "http://b:2"]));

        // A whole `[gateway]` table with both forms.
        let settings: GatewaySettings = serde_json::from_value(serde_json::json!({
            "upstreams": {"patient-record": "http://pr:8080", "orders": ["http://o1:8080", "http://o2:8080"]},
            "upstream_check_ms": 250,
        }))
        .unwrap();
        assert_eq!(settings.upstreams["patient-record"].as_slice(), ["http://pr:8080"]);
        assert_eq!(settings.upstreams["orders"].as_slice().len(), 2);
        assert_eq!(settings.upstream_check_ms, 250);
        assert_eq!(GatewaySettings::default().upstream_check_ms, 1000);
    }

    #[test]
    fn a_bad_upstream_is_refused_at_start_up() {
        for bad in [
            serde_json::json!(""),
            serde_json::json!(" , "),
            serde_json::json!([]),
            serde_json::json!("orders:8080"),
            serde_json::json!("ftp://orders"),
            serde_json::json!("http://orders:8080?x=1"),
            serde_json::json!(["http://ok:8080", "not a url"]),
            serde_json::json!(8080),
            serde_json::json!("http://user:secret@orders:8080"),
            serde_json::json!("http://user@orders:8080"),
            serde_json::json!("http://o1:8080,http://o1:8080/"),
            serde_json::json!(["http://o1:8080", "http://O1:8080"]),
            serde_json::json!(["http://o1:80", "http://o1"]),
        ] {
            assert!(parse(bad.clone()).is_err(), "{bad} accepted");
        }
        // The credentials are not repeated in the message (it is logged).
        let refused = parse(serde_json::json!("http://user:secret@orders:8080")).unwrap_err();
        assert!(refused.contains("orders") && !refused.contains("secret") && !refused.contains("user"), "{refused}");
        let refused = parse(serde_json::json!("user:secret@orders:8080")).unwrap_err();
        assert!(!refused.contains("secret"), "{refused}");
        // Two instances on one host are two instances.
        assert_eq!(parse(serde_json::json!("http://o:8080,http://o:8081")).unwrap().len(), 2);
    }
}
