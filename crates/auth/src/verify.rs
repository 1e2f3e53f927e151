//! Token verification against the issuer's keys.

use crate::{AuthError, ScopeSet, dev};
use ehr_core::{Principal, TenantId};
use jsonwebtoken::{Algorithm, DecodingKey, Validation, errors::ErrorKind, jwk::JwkSet};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};

/// The claims this server reads from (and, for development tokens, writes to) an access token.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Claims {
    pub iss: String,
    pub sub: String,
    pub exp: i64,
    #[serde(default)]
    pub iat: i64,
    /// The tenant (hospital) the token is for; the only source of the request's tenant.
    pub tenant: String,
    /// Space-separated SMART scopes.
    pub scope: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jti: Option<String>,
    /// Not before (RFC 7519 §4.1.5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<i64>,
}

/// Where verification keys come from.
#[derive(Debug, Clone)]
pub enum KeySource {
    /// A JWKS document given inline (from a file or the development key).
    Static(serde_json::Value),
    /// A JWKS URL, fetched at start-up and again when a token names an unknown key id.
    Url(String),
}

/// Verifies bearer tokens. Cheap to clone.
#[derive(Clone)]
pub struct Verifier {
    inner: Arc<Inner>,
}

struct Inner {
    issuer: String,
    sources: Vec<KeySource>,
    keys: RwLock<HashMap<String, DecodingKey>>,
    http: reqwest::Client,
    /// Unix time of the last refetch caused by an unknown key id.
    last_refetch: std::sync::atomic::AtomicI64,
    /// Tokens already verified. A client sends the same token on every request of a session;
    /// an ES256 check costs far more than the rest of a read, so it is paid once per token.
    /// Keyed by the whole compact token (the same bytes verify the same way); the expiry is
    /// checked on every hit; cleared on key refresh, so a key withdrawn from the JWKS stops
    /// verifying at once; cleared when full, which keeps it bounded without bookkeeping.
    verified: Mutex<HashMap<Box<str>, Verified>>,
}

#[derive(Clone)]
struct Verified {
    principal: Principal,
    scopes: ScopeSet,
    exp: i64,
}

/// Entries of the verified-token cache before it is cleared.
const CACHE_CAPACITY: usize = 50_000;

/// Tokens naming an unknown key id trigger at most one JWKS refetch per this many seconds, so a
/// flood of forged tokens cannot turn into a flood of requests to the issuer.
const REFETCH_INTERVAL_SECS: i64 = 30;

impl Verifier {
    /// A verifier trusting tokens of `issuer` signed by keys from `sources`.
    pub async fn new(issuer: impl Into<String>, sources: Vec<KeySource>) -> Result<Self, AuthError> {
        let v = Self {
            inner: Arc::new(Inner {
                issuer: issuer.into(),
                sources,
                keys: RwLock::new(HashMap::new()),
                http: reqwest::Client::new(),
                last_refetch: std::sync::atomic::AtomicI64::new(i64::MIN),
                verified: Mutex::new(HashMap::new()),
            }),
        };
        v.refresh().await?;
        Ok(v)
    }

    /// A verifier that trusts the development key only.
    pub async fn development() -> Result<Self, AuthError> {
        Self::new(dev::DEV_ISSUER, vec![KeySource::Static(dev::dev_jwks())]).await
    }

    /// Reloads every key source.
    pub async fn refresh(&self) -> Result<(), AuthError> {
        let mut loaded = HashMap::new();
        for source in &self.inner.sources {
            let jwks = match source {
                KeySource::Static(v) => v.clone(),
                KeySource::Url(url) => {
                    let resp = self.inner.http.get(url).send().await.map_err(|_| AuthError::JwksUnavailable)?;
                    resp.json().await.map_err(|_| AuthError::JwksUnavailable)?
                }
            };
            let set: JwkSet = serde_json::from_value(jwks).map_err(|_| AuthError::JwksUnavailable)?;
            for jwk in &set.keys {
                if let (Some(kid), Ok(key)) = (jwk.common.key_id.clone(), DecodingKey::from_jwk(jwk)) {
                    loaded.insert(kid, key);
                }
            }
        }
        if let Ok(mut keys) = self.inner.keys.write() {
            *keys = loaded;
        }
        if let Ok(mut verified) = self.inner.verified.lock() {
            verified.clear();
        }
        Ok(())
    }

    /// Verifies a compact JWS and returns the caller it names.
    pub async fn verify(&self, token: &str, now_unix: i64) -> Result<(Principal, ScopeSet), AuthError> {
        let hit = self.inner.verified.lock().ok().and_then(|c| c.get(token).cloned());
        if let Some(v) = hit {
            if v.exp <= now_unix {
                return Err(AuthError::Expired);
            }
            return Ok((v.principal, v.scopes));
        }
        let (principal, scopes, exp) = self.verify_signature(token, now_unix).await?;
        if let Ok(mut cache) = self.inner.verified.lock() {
            if cache.len() >= CACHE_CAPACITY {
                cache.clear();
            }
            cache.insert(token.into(), Verified { principal: principal.clone(), scopes: scopes.clone(), exp });
        }
        Ok((principal, scopes))
    }

    async fn verify_signature(&self, token: &str, now_unix: i64) -> Result<(Principal, ScopeSet, i64), AuthError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| AuthError::InvalidToken("malformed"))?;
        if header.alg != Algorithm::ES256 {
            return Err(AuthError::InvalidToken("algorithm must be ES256"));
        }
        let kid = header.kid.ok_or(AuthError::InvalidToken("no key id"))?;
        let mut key = self.key(&kid);
        if key.is_none() && self.inner.sources.iter().any(|s| matches!(s, KeySource::Url(_))) {
            // Key rotation: the issuer may have published a new key since we last looked.
            let last = self.inner.last_refetch.load(std::sync::atomic::Ordering::Relaxed);
            if now_unix.saturating_sub(last) >= REFETCH_INTERVAL_SECS {
                self.inner.last_refetch.store(now_unix, std::sync::atomic::Ordering::Relaxed);
                self.refresh().await?;
                key = self.key(&kid);
            }
        }
        let key = key.ok_or(AuthError::UnknownKey)?;
        let mut validation = Validation::new(Algorithm::ES256);
        validation.set_issuer(&[self.inner.issuer.as_str()]);
        validation.set_required_spec_claims(&["exp", "iss", "sub"]);
        validation.validate_aud = false;
        // Expiry is checked below against the injected clock, not the system time.
        validation.validate_exp = false;
        let data = jsonwebtoken::decode::<Claims>(token, &key, &validation).map_err(|e| match e.kind() {
            ErrorKind::InvalidIssuer => AuthError::InvalidToken("wrong issuer"),
            ErrorKind::InvalidSignature => AuthError::InvalidToken("bad signature"),
            _ => AuthError::InvalidToken("malformed"),
        })?;
        let claims = data.claims;
        if claims.exp <= now_unix {
            return Err(AuthError::Expired);
        }
        // A minute of leeway for clock skew between the issuer and this server.
        if claims.nbf.is_some_and(|nbf| nbf > now_unix + 60) {
            return Err(AuthError::InvalidToken("not yet valid (nbf)"));
        }
        let tenant = TenantId::parse(&claims.tenant).map_err(|_| AuthError::InvalidToken("bad tenant claim"))?;
        let scopes = ScopeSet::parse(&claims.scope);
        let principal = Principal { subject: claims.sub, tenant };
        Ok((principal, scopes, claims.exp))
    }

    fn key(&self, kid: &str) -> Option<DecodingKey> {
        self.inner.keys.read().ok().and_then(|k| k.get(kid).cloned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::DevSigner;

    fn claims(exp: i64) -> Claims {
        Claims {
            iss: dev::DEV_ISSUER.into(),
            sub: "u1".into(),
            exp,
            iat: 0,
            tenant: "hospital-a".into(),
            scope: "user/*.cruds".into(),
            jti: None,
            nbf: None,
        }
    }

    #[tokio::test]
    async fn dev_tokens_round_trip_and_expire() {
        let v = Verifier::development().await.expect("verifier");
        let t = DevSigner::new().expect("signer").sign(&claims(1000)).expect("sign");
        let (p, _) = v.verify(&t, 999).await.expect("valid");
        assert_eq!(p.tenant.as_str(), "hospital-a");
        // The second call is served from the cache and still honours the expiry.
        assert!(v.verify(&t, 999).await.is_ok());
        assert!(matches!(v.verify(&t, 1000).await, Err(AuthError::Expired)));
        let mut tampered = t.clone();
        tampered.insert(t.len() - 3, 'x');
        assert!(v.verify(&tampered, 0).await.is_err());
    }
}
