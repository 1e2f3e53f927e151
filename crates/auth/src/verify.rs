//! Token verification against the keys of one or more trusted issuers.
//!
//! Each key is bound to the issuer whose source published it, and a token verifies only if its
//! `iss` is that issuer: trusting the (public) development key next to the real issuer must never
//! let the development key vouch for the real issuer's users.

use crate::{AuthError, ScopeSet, dev};
use ehr_core::{Principal, TenantId};
use jsonwebtoken::{Algorithm, DecodingKey, Validation, errors::ErrorKind, jwk::JwkSet};
use serde::{Deserialize, Deserializer, Serialize};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

/// The claims this server reads from (and, for tokens it issues, writes to) an access token.
///
/// Fields added after the first release are optional and left out when empty, so tokens issued
/// before them keep verifying and keep their exact serialisation.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
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
    /// The user's job-type roles (`physician`, `nurse`, …), as named in the access matrix.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub roles: Vec<String>,
    /// The OAuth client the token was issued to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    /// The session (refresh-token family) the token belongs to, so that revoking it is one key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sid: Option<String>,
    /// The audience. RFC 7519 §4.1.3 also allows an array: a one-element array reads as its
    /// element, a longer one as `None` (no single audience), which audience checks must treat as
    /// "not for me".
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "single_audience")]
    pub aud: Option<String>,
    /// The user's FHIR resource (`Practitioner/123`), SMART's `fhirUser` claim.
    #[serde(rename = "fhirUser", default, skip_serializing_if = "Option::is_none")]
    pub fhir_user: Option<String>,
}

fn single_audience<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Audience {
        One(String),
        Many(Vec<String>),
    }
    Ok(match Option::<Audience>::deserialize(d)? {
        Some(Audience::One(aud)) => Some(aud),
        Some(Audience::Many(mut auds)) if auds.len() == 1 => auds.pop(),
        _ => None,
    })
}

/// Where verification keys come from.
#[derive(Clone)]
pub enum KeySource {
    /// A JWKS document given inline (from a file or the development key).
    Static(serde_json::Value),
    /// A JWKS URL, fetched at start-up and again (at most every 30 s) when a token names an
    /// unknown key id.
    Url(String),
    /// An in-process JWKS (the gateway's own key ring in single-process mode), read again at once
    /// whenever a token names an unknown key id: asking costs nothing, so no rate limit.
    Provider(Arc<dyn Fn() -> serde_json::Value + Send + Sync>),
}

impl std::fmt::Debug for KeySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Static(jwks) => f.debug_tuple("Static").field(jwks).finish(),
            Self::Url(url) => f.debug_tuple("Url").field(url).finish(),
            Self::Provider(_) => f.write_str("Provider(..)"),
        }
    }
}

/// An issuer and the sources of the keys it signs with.
#[derive(Debug, Clone)]
pub struct Trust {
    pub issuer: String,
    pub sources: Vec<KeySource>,
}

/// A verified token: who is calling, what they may do, and every claim.
#[derive(Debug, Clone)]
pub struct VerifiedToken {
    pub principal: Principal,
    pub scopes: ScopeSet,
    pub claims: Arc<Claims>,
}

/// Verifies bearer tokens. Cheap to clone.
#[derive(Clone)]
pub struct Verifier {
    inner: Arc<Inner>,
}

struct Inner {
    /// Every key source with the issuer it vouches for.
    sources: Vec<(Arc<str>, KeySource)>,
    /// Keys loaded from each source, indexed like `sources`.
    keys: RwLock<Vec<Vec<LoadedKey>>>,
    http: reqwest::Client,
    /// Unix time of the last URL refetch caused by an unknown key id.
    last_refetch: AtomicI64,
    /// Tokens already verified. A client sends the same token on every request of a session;
    /// an ES256 check costs far more than the rest of a read, so it is paid once per token.
    /// Keyed by the whole compact token (the same bytes verify the same way); the expiry is
    /// checked on every hit; cleared when a refresh withdraws or replaces a key, so a withdrawn
    /// key stops verifying at once; cleared when full, which keeps it bounded without bookkeeping.
    verified: Mutex<HashMap<Box<str>, VerifiedToken>>,
}

#[derive(Clone)]
struct LoadedKey {
    kid: String,
    issuer: Arc<str>,
    /// The JWK as published, to tell a replaced key from an unchanged one.
    jwk: String,
    key: DecodingKey,
}

/// Which sources a reload reads.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Reload {
    All,
    ProvidersOnly,
}

/// Entries of the verified-token cache before it is cleared.
const CACHE_CAPACITY: usize = 50_000;

/// Tokens naming an unknown key id trigger at most one JWKS refetch per this many seconds, so a
/// flood of forged tokens cannot turn into a flood of requests to the issuer.
const REFETCH_INTERVAL_SECS: i64 = 30;

/// The `alg` of a compact JWS header, read leniently.
fn header_alg(token: &str) -> Option<String> {
    use base64::Engine;
    let header = token.split('.').next()?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(header).ok()?;
    let v: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    v.get("alg")?.as_str().map(str::to_owned)
}

impl Verifier {
    /// A verifier trusting tokens of `issuer` signed by keys from `sources`.
    pub async fn new(issuer: impl Into<String>, sources: Vec<KeySource>) -> Result<Self, AuthError> {
        Self::with_trusts(vec![Trust { issuer: issuer.into(), sources }]).await
    }

    /// A verifier trusting several issuers, each with its own keys.
    pub async fn with_trusts(trusts: Vec<Trust>) -> Result<Self, AuthError> {
        let sources: Vec<(Arc<str>, KeySource)> = trusts
            .into_iter()
            .flat_map(|t| {
                let issuer: Arc<str> = t.issuer.into();
                t.sources.into_iter().map(move |s| (issuer.clone(), s))
            })
            .collect();
        let v = Self {
            inner: Arc::new(Inner {
                keys: RwLock::new(vec![Vec::new(); sources.len()]),
                sources,
                http: reqwest::Client::new(),
                last_refetch: AtomicI64::new(i64::MIN),
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
        self.reload(Reload::All).await
    }

    async fn reload(&self, which: Reload) -> Result<(), AuthError> {
        // Fetch everything first; the key ring changes only if every source answered.
        let mut fresh = Vec::with_capacity(self.inner.sources.len());
        for (issuer, source) in &self.inner.sources {
            let jwks = match (source, which) {
                (KeySource::Provider(provide), _) => provide(),
                (KeySource::Static(jwks), Reload::All) => jwks.clone(),
                (KeySource::Url(url), Reload::All) => {
                    let resp = self.inner.http.get(url).send().await.map_err(|_| AuthError::JwksUnavailable)?;
                    resp.json().await.map_err(|_| AuthError::JwksUnavailable)?
                }
                (KeySource::Static(_) | KeySource::Url(_), Reload::ProvidersOnly) => {
                    fresh.push(None);
                    continue;
                }
            };
            fresh.push(Some(load_keys(issuer, jwks)?));
        }
        let mut withdrawn = false;
        if let Ok(mut ring) = self.inner.keys.write() {
            let before = fingerprints(&ring);
            for (slot, keys) in ring.iter_mut().zip(fresh) {
                if let Some(keys) = keys {
                    *slot = keys;
                }
            }
            let after = fingerprints(&ring);
            withdrawn = !before.is_subset(&after);
        }
        if withdrawn && let Ok(mut verified) = self.inner.verified.lock() {
            verified.clear();
        }
        Ok(())
    }

    /// Verifies a compact JWS and returns the caller it names.
    pub async fn verify(&self, token: &str, now_unix: i64) -> Result<(Principal, ScopeSet), AuthError> {
        let verified = self.verify_token(token, now_unix).await?;
        Ok((verified.principal, verified.scopes))
    }

    /// Verifies a compact JWS and returns the caller, the scopes and all claims.
    pub async fn verify_token(&self, token: &str, now_unix: i64) -> Result<VerifiedToken, AuthError> {
        let hit = self.inner.verified.lock().ok().and_then(|c| c.get(token).cloned());
        if let Some(v) = hit {
            if v.claims.exp <= now_unix {
                return Err(AuthError::Expired);
            }
            return Ok(v);
        }
        let verified = self.verify_signature(token, now_unix).await?;
        if let Ok(mut cache) = self.inner.verified.lock() {
            if cache.len() >= CACHE_CAPACITY {
                cache.clear();
            }
            cache.insert(token.into(), verified.clone());
        }
        Ok(verified)
    }

    async fn verify_signature(&self, token: &str, now_unix: i64) -> Result<VerifiedToken, AuthError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| {
            // `alg: none` (and other algorithms the library does not know) fail to parse as a
            // header; say what is wrong rather than just "malformed".
            if header_alg(token).is_some() {
                AuthError::InvalidToken("algorithm must be ES256")
            } else {
                AuthError::InvalidToken("malformed")
            }
        })?;
        if header.alg != Algorithm::ES256 {
            return Err(AuthError::InvalidToken("algorithm must be ES256"));
        }
        let kid = header.kid.ok_or(AuthError::InvalidToken("no key id"))?;
        let candidates = self.find_keys(&kid, now_unix).await?;
        // Usually one key; several only if two issuers publish the same key id. Each is tried
        // with its own issuer, and an error past the signature check is the more telling one.
        let mut error = AuthError::UnknownKey;
        for candidate in &candidates {
            let mut validation = Validation::new(Algorithm::ES256);
            validation.set_issuer(&[&*candidate.issuer]);
            validation.set_required_spec_claims(&["exp", "iss", "sub"]);
            validation.validate_aud = false;
            // Expiry is checked below against the injected clock, not the system time.
            validation.validate_exp = false;
            match jsonwebtoken::decode::<Claims>(token, &candidate.key, &validation) {
                Ok(data) => return check_claims(data.claims, now_unix),
                Err(e) => {
                    let signature_failed = matches!(e.kind(), ErrorKind::InvalidSignature);
                    if matches!(error, AuthError::UnknownKey) || !signature_failed {
                        error = match e.kind() {
                            ErrorKind::InvalidIssuer => AuthError::InvalidToken("wrong issuer"),
                            ErrorKind::InvalidSignature => AuthError::InvalidToken("bad signature"),
                            _ => AuthError::InvalidToken("malformed"),
                        };
                    }
                }
            }
        }
        Err(error)
    }

    /// The keys named `kid`, reloading the sources when none is known (key rotation: the issuer
    /// may have published a new key since we last looked).
    async fn find_keys(&self, kid: &str, now_unix: i64) -> Result<Vec<LoadedKey>, AuthError> {
        let mut keys = self.keys_named(kid);
        if keys.is_empty() && self.inner.sources.iter().any(|(_, s)| matches!(s, KeySource::Provider(_))) {
            self.reload(Reload::ProvidersOnly).await?;
            keys = self.keys_named(kid);
        }
        if keys.is_empty() && self.inner.sources.iter().any(|(_, s)| matches!(s, KeySource::Url(_))) {
            let last = self.inner.last_refetch.load(Ordering::Relaxed);
            if now_unix.saturating_sub(last) >= REFETCH_INTERVAL_SECS {
                self.inner.last_refetch.store(now_unix, Ordering::Relaxed);
                self.refresh().await?;
                keys = self.keys_named(kid);
            }
        }
        Ok(keys)
    }

    fn keys_named(&self, kid: &str) -> Vec<LoadedKey> {
        self.inner
            .keys
            .read()
            .map(|ring| ring.iter().flatten().filter(|k| k.kid == kid).cloned().collect())
            .unwrap_or_default()
    }
}

/// The keys of one JWKS document, bound to `issuer`; keys without a kid or of an unusable type are
/// skipped, a document that is not a JWKS fails.
fn load_keys(issuer: &Arc<str>, jwks: serde_json::Value) -> Result<Vec<LoadedKey>, AuthError> {
    let set: JwkSet = serde_json::from_value(jwks).map_err(|_| AuthError::JwksUnavailable)?;
    Ok(set
        .keys
        .iter()
        .filter_map(|jwk| {
            let kid = jwk.common.key_id.clone()?;
            let key = DecodingKey::from_jwk(jwk).ok()?;
            let published = serde_json::to_string(jwk).ok()?;
            Some(LoadedKey { kid, issuer: issuer.clone(), jwk: published, key })
        })
        .collect())
}

fn fingerprints(ring: &[Vec<LoadedKey>]) -> HashSet<(Arc<str>, String, String)> {
    ring.iter().flatten().map(|k| (k.issuer.clone(), k.kid.clone(), k.jwk.clone())).collect()
}

/// The checks after the signature: expiry and not-before against the injected clock, the tenant.
fn check_claims(claims: Claims, now_unix: i64) -> Result<VerifiedToken, AuthError> {
    if claims.exp <= now_unix {
        return Err(AuthError::Expired);
    }
    // A minute of leeway for clock skew between the issuer and this server.
    if claims.nbf.is_some_and(|nbf| nbf > now_unix + 60) {
        return Err(AuthError::InvalidToken("not yet valid (nbf)"));
    }
    let tenant = TenantId::parse(&claims.tenant).map_err(|_| AuthError::InvalidToken("bad tenant claim"))?;
    let scopes = ScopeSet::parse(&claims.scope);
    let principal = Principal { subject: claims.sub.clone(), tenant };
    Ok(VerifiedToken { principal, scopes, claims: Arc::new(claims) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{DevSigner, KeyPair, TokenIssuer};
    use serde_json::json;

    const REAL: &str = "https://ehr.example.jp/auth";

    fn claims(exp: i64) -> Claims {
        Claims {
            iss: dev::DEV_ISSUER.into(),
            sub: "u1".into(),
            exp,
            tenant: "hospital-a".into(),
            scope: "user/*.cruds".into(),
            ..Claims::default()
        }
    }

    fn real_issuer(created_at: i64) -> TokenIssuer {
        let record = KeyPair::generate(created_at).expect("key").into_record(10_000, 3600);
        TokenIssuer::new(REAL.into(), vec![record]).expect("issuer")
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

    #[tokio::test]
    async fn each_key_vouches_only_for_its_own_issuer() {
        let real = real_issuer(0);
        let v = Verifier::with_trusts(vec![
            Trust { issuer: dev::DEV_ISSUER.into(), sources: vec![KeySource::Static(dev::dev_jwks())] },
            Trust { issuer: REAL.into(), sources: vec![KeySource::Static(real.jwks(0))] },
        ])
        .await
        .expect("verifier");
        let dev = DevSigner::new().expect("signer");
        assert!(v.verify(&dev.sign(&claims(1000)).expect("sign"), 0).await.is_ok());
        let real_token = real.sign(&claims(1000), 0).expect("sign");
        assert_eq!(v.verify_token(&real_token, 0).await.expect("real").claims.iss, REAL);
        // The public development key cannot mint tokens of the real issuer.
        let forged = dev.sign(&Claims { iss: REAL.into(), ..claims(1000) }).expect("sign");
        assert!(matches!(v.verify(&forged, 0).await, Err(AuthError::InvalidToken("wrong issuer"))));
    }

    #[tokio::test]
    async fn provider_keys_are_picked_up_at_once() {
        let ring = Arc::new(RwLock::new(json!({"keys": []})));
        let source = ring.clone();
        let provider = KeySource::Provider(Arc::new(move || source.read().map(|j| j.clone()).unwrap_or_default()));
        let v = Verifier::new(REAL, vec![provider]).await.expect("verifier");
        for created_at in [0, 1] {
            let issuer = real_issuer(created_at);
            let token = issuer.sign(&claims(1000), 5).expect("sign");
            assert!(matches!(v.verify(&token, 5).await, Err(AuthError::UnknownKey)));
            *ring.write().expect("lock") = issuer.jwks(5);
            // No 30-second wait between two rotations of an in-process key ring.
            assert!(v.verify(&token, 5).await.is_ok(), "key {created_at}");
            // Withdrawing the key empties the cache, so the token stops verifying at once.
            *ring.write().expect("lock") = json!({"keys": []});
            v.refresh().await.expect("refresh");
            assert!(matches!(v.verify(&token, 5).await, Err(AuthError::UnknownKey)));
        }
    }

    #[tokio::test]
    async fn verified_token_carries_the_new_claims() {
        let real = real_issuer(0);
        let v = Verifier::new(REAL, vec![KeySource::Static(real.jwks(0))]).await.expect("verifier");
        let full = Claims {
            roles: vec!["physician".into()],
            client_id: Some("portal".into()),
            sid: Some("s-1".into()),
            aud: Some("https://ehr.example.jp/fhir".into()),
            fhir_user: Some("Practitioner/p-1".into()),
            ..claims(1000)
        };
        let token = real.sign(&full, 0).expect("sign");
        let first = v.verify_token(&token, 0).await.expect("verifies");
        let cached = v.verify_token(&token, 0).await.expect("cached");
        assert!(Arc::ptr_eq(&first.claims, &cached.claims));
        assert_eq!(*first.claims, Claims { iss: REAL.into(), ..full });
    }

    #[test]
    fn claims_stay_compatible() {
        let old = json!({"iss": "i", "sub": "s", "exp": 1, "tenant": "t", "scope": "openid"});
        let parsed: Claims = serde_json::from_value(old.clone()).expect("old token");
        assert_eq!(parsed.roles, Vec::<String>::new());
        assert_eq!(
            serde_json::to_value(&parsed).expect("json"),
            json!({"iat": 0, "iss": "i", "sub": "s", "exp": 1, "tenant": "t", "scope": "openid"})
        );
        let aud = |v: serde_json::Value| {
            let mut token = old.clone();
            token["aud"] = v;
            serde_json::from_value::<Claims>(token).expect("aud").aud
        };
        assert_eq!(aud(json!("a")), Some("a".into()));
        assert_eq!(aud(json!(["a"])), Some("a".into()));
        assert_eq!(aud(json!(["a", "b"])), None);
        assert_eq!(aud(json!(null)), None);
        let mut smart = old.clone();
        smart["fhirUser"] = json!("Practitioner/p-1");
        let parsed: Claims = serde_json::from_value(smart).expect("fhirUser");
        assert_eq!(parsed.fhir_user.as_deref(), Some("Practitioner/p-1"));
        assert_eq!(serde_json::to_value(&parsed).expect("json")["fhirUser"], "Practitioner/p-1");
    }
}
