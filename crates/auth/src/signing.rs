//! Token issuing: ES256 signing keys, their rotation, and the JWKS that publishes them.
//!
//! A key goes through three phases, all decided by the caller-supplied clock:
//! `created_at` (published, and signing from then on) → `retire_at` (no new tokens, still
//! published so that tokens it signed keep verifying) → `expires_at` (withdrawn; set it to
//! `retire_at` plus the longest token lifetime). Publishing a key before it signs is what lets
//! verifiers that cache the JWKS pick up a rotation without rejecting tokens.

use crate::{AuthError, Claims};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use p256::SecretKey;
use p256::elliptic_curve::sec1::ToEncodedPoint;
use p256::pkcs8::{DecodePrivateKey, EncodePrivateKey, LineEnding};
use rand::rngs::OsRng;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use std::borrow::Cow;
use std::sync::Arc;

/// A freshly generated P-256 key pair.
#[derive(Clone)]
pub struct KeyPair {
    /// Key id: base64url of the first 12 bytes of the RFC 7638 JWK thumbprint.
    pub kid: String,
    /// The private key as a PKCS#8 PEM document.
    pub private_pem: String,
    /// The public key as a JWK (`kty`, `crv`, `alg`, `use`, `kid`, `x`, `y`).
    pub public_jwk: Value,
    /// When the pair was generated.
    pub created_at: i64,
}

impl std::fmt::Debug for KeyPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyPair").field("kid", &self.kid).field("created_at", &self.created_at).finish_non_exhaustive()
    }
}

impl KeyPair {
    /// A new P-256 key pair from the operating system's CSPRNG.
    pub fn generate(now_unix: i64) -> Result<Self, AuthError> {
        let secret = SecretKey::random(&mut OsRng);
        let private_pem =
            secret.to_pkcs8_pem(LineEnding::LF).map_err(|_| AuthError::KeyGeneration)?.as_str().to_owned();
        let (x, y) = coordinates(&secret).ok_or(AuthError::KeyGeneration)?;
        let kid = URL_SAFE_NO_PAD.encode(&jwk_thumbprint(&x, &y)[..12]);
        let public_jwk = json!({"kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig", "kid": kid, "x": x, "y": y});
        Ok(Self { kid, private_pem, public_jwk, created_at: now_unix })
    }

    /// The stored form: signs for `signing_secs`, then stays published `max_token_lifetime_secs`.
    pub fn into_record(self, signing_secs: i64, max_token_lifetime_secs: i64) -> SigningKeyRecord {
        let retire_at = self.created_at.saturating_add(signing_secs);
        SigningKeyRecord {
            kid: self.kid,
            private_pem: self.private_pem,
            public_jwk: self.public_jwk,
            created_at: self.created_at,
            retire_at,
            expires_at: retire_at.saturating_add(max_token_lifetime_secs),
        }
    }
}

/// A signing key as stored: the key pair and its rotation times (unix seconds).
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct SigningKeyRecord {
    pub kid: String,
    /// PKCS#8 PEM of the private key.
    pub private_pem: String,
    pub public_jwk: Value,
    /// Published and signing from this time on.
    pub created_at: i64,
    /// No new tokens are signed with the key from this time on.
    pub retire_at: i64,
    /// No longer published from this time on (`retire_at` + the longest token lifetime).
    pub expires_at: i64,
}

impl std::fmt::Debug for SigningKeyRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKeyRecord")
            .field("kid", &self.kid)
            .field("created_at", &self.created_at)
            .field("retire_at", &self.retire_at)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

/// Signs access tokens with the current key of a key ring and publishes its JWKS. Cheap to clone.
#[derive(Clone)]
pub struct TokenIssuer {
    inner: Arc<IssuerInner>,
}

struct IssuerInner {
    issuer: String,
    /// Newest first, so the first usable key is the one to sign with.
    keys: Vec<LoadedKey>,
}

struct LoadedKey {
    record: SigningKeyRecord,
    encoding: EncodingKey,
}

impl TokenIssuer {
    /// An issuer named `issuer` (the `iss` of its tokens) signing with `keys`.
    ///
    /// Every key must load, and its published JWK must be the public half of its private key:
    /// a mismatch would issue tokens that no verifier accepts.
    pub fn new(issuer: String, keys: Vec<SigningKeyRecord>) -> Result<Self, AuthError> {
        let mut loaded = Vec::with_capacity(keys.len());
        for record in keys {
            let invalid = || AuthError::InvalidSigningKey { kid: record.kid.clone() };
            let secret = SecretKey::from_pkcs8_pem(&record.private_pem).map_err(|_| invalid())?;
            let (x, y) = coordinates(&secret).ok_or_else(invalid)?;
            let jwk = &record.public_jwk;
            let matches = jwk["x"] == x.as_str()
                && jwk["y"] == y.as_str()
                && jwk["kid"] == record.kid.as_str()
                && jwk["crv"] == "P-256"
                && !record.kid.is_empty();
            if !matches {
                return Err(invalid());
            }
            let encoding = EncodingKey::from_ec_pem(record.private_pem.as_bytes()).map_err(|_| invalid())?;
            loaded.push(LoadedKey { record, encoding });
        }
        loaded.sort_by_key(|k| std::cmp::Reverse(k.record.created_at));
        Ok(Self { inner: Arc::new(IssuerInner { issuer, keys: loaded }) })
    }

    /// The issuer identifier put in the `iss` claim.
    pub fn issuer(&self) -> &str {
        &self.inner.issuer
    }

    /// Signs `claims` as an ES256 JWT with the newest key active at `now_unix`.
    ///
    /// The `iss` claim is set to this issuer whatever the caller put there: a token must never
    /// claim an issuer whose key did not sign it.
    pub fn sign(&self, claims: &Claims, now_unix: i64) -> Result<String, AuthError> {
        let key = self
            .inner
            .keys
            .iter()
            .find(|k| k.record.created_at <= now_unix && now_unix < k.record.retire_at)
            .ok_or(AuthError::NoSigningKey)?;
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(key.record.kid.clone());
        let claims = if claims.iss == self.inner.issuer {
            Cow::Borrowed(claims)
        } else {
            Cow::Owned(Claims { iss: self.inner.issuer.clone(), ..claims.clone() })
        };
        jsonwebtoken::encode(&header, &*claims, &key.encoding).map_err(|_| AuthError::Signing)
    }

    /// The JWKS to publish at `now_unix`: every key not yet expired, including keys that do not
    /// sign yet, newest first.
    pub fn jwks(&self, now_unix: i64) -> Value {
        let keys: Vec<&Value> =
            self.inner.keys.iter().filter(|k| now_unix < k.record.expires_at).map(|k| &k.record.public_jwk).collect();
        json!({ "keys": keys })
    }
}

/// The base64url affine coordinates of the public key.
fn coordinates(secret: &SecretKey) -> Option<(String, String)> {
    let point = secret.public_key().to_encoded_point(false);
    Some((URL_SAFE_NO_PAD.encode(point.x()?), URL_SAFE_NO_PAD.encode(point.y()?)))
}

/// RFC 7638 §3.2: SHA-256 over the required members in lexicographic order, without whitespace.
fn jwk_thumbprint(x: &str, y: &str) -> [u8; 32] {
    Sha256::digest(format!(r#"{{"crv":"P-256","kty":"EC","x":"{x}","y":"{y}"}}"#)).into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{KeySource, Trust, Verifier};

    const ISS: &str = "https://ehr.example.jp/auth";

    fn claims(exp: i64) -> Claims {
        Claims {
            sub: "u1".into(),
            exp,
            tenant: "hospital-a".into(),
            scope: "user/Patient.rs".into(),
            ..Claims::default()
        }
    }

    fn record(created_at: i64) -> SigningKeyRecord {
        KeyPair::generate(created_at).expect("generate").into_record(1000, 100)
    }

    fn kid_of(token: &str) -> String {
        jsonwebtoken::decode_header(token).expect("header").kid.expect("kid")
    }

    #[test]
    fn thumbprint_kid_of_a_known_key() {
        // The development key's coordinates; expected value computed independently.
        let t = jwk_thumbprint(
            "ycdL0g_M7O1VEJ3AG1xO6qAvIQBrT6D1aM1tCryMGYA",
            "cZgcQZ2SHjrZyZwtP74mCk2utFsZ2lyYKQYA2r9_DEc",
        );
        assert_eq!(URL_SAFE_NO_PAD.encode(t), "AffzZECk971MW_AE2hj9aPZp7EvR3pIagcxlxtvof60");
        assert_eq!(URL_SAFE_NO_PAD.encode(&t[..12]), "AffzZECk971MW_AE");
    }

    #[test]
    fn generated_pair_is_well_formed() {
        let pair = KeyPair::generate(5).expect("generate");
        assert!(pair.private_pem.starts_with("-----BEGIN PRIVATE KEY-----"));
        assert_eq!(pair.kid.len(), 16);
        assert_eq!(pair.public_jwk["kid"], pair.kid.as_str());
        assert_eq!(pair.public_jwk["alg"], "ES256");
        assert!(!format!("{pair:?}").contains("PRIVATE"));
        let r = pair.into_record(1000, 100);
        assert_eq!((r.created_at, r.retire_at, r.expires_at), (5, 1005, 1105));
        assert!(!format!("{r:?}").contains("PRIVATE"));
    }

    #[tokio::test]
    async fn signs_with_the_newest_active_key_and_verifies() {
        let old = record(0);
        let new = record(500);
        let issuer = TokenIssuer::new(ISS.into(), vec![old.clone(), new.clone()]).expect("issuer");
        assert_eq!(kid_of(&issuer.sign(&claims(10_000), 100).expect("sign")), old.kid);
        let token = issuer.sign(&claims(10_000), 600).expect("sign");
        assert_eq!(kid_of(&token), new.kid);
        // `iss` is the issuer's, whatever the claims said.
        let verifier = Verifier::with_trusts(vec![Trust {
            issuer: ISS.into(),
            sources: vec![KeySource::Static(issuer.jwks(600))],
        }])
        .await
        .expect("verifier");
        let verified = verifier.verify_token(&token, 600).await.expect("verifies");
        assert_eq!(verified.claims.iss, ISS);
        assert_eq!(verified.principal.subject, "u1");
    }

    #[test]
    fn rotation_phases() {
        let old = record(0); // signs [0, 1000), published until 1100
        let new = record(500); // signs [500, 1500), published until 1600
        let issuer = TokenIssuer::new(ISS.into(), vec![new.clone(), old.clone()]).expect("issuer");
        let kids = |now| -> Vec<Value> {
            issuer.jwks(now)["keys"].as_array().expect("keys").iter().map(|k| k["kid"].clone()).collect()
        };
        assert_eq!(kids(100), [json!(new.kid), json!(old.kid)], "the next key is published before it signs");
        assert_eq!(kids(1050), [json!(new.kid), json!(old.kid)], "a retired key stays published");
        assert_eq!(kids(1100), [json!(new.kid)]);
        assert!(kids(1600).is_empty());
        assert!(matches!(issuer.sign(&claims(2000), 1500), Err(AuthError::NoSigningKey)));
        assert!(matches!(issuer.sign(&claims(2000), -1), Err(AuthError::NoSigningKey)));
        let empty = TokenIssuer::new(ISS.into(), vec![]).expect("issuer");
        assert!(matches!(empty.sign(&claims(2000), 0), Err(AuthError::NoSigningKey)));
    }

    #[test]
    fn mismatched_or_broken_keys_are_refused() {
        let a = record(0);
        let b = record(0);
        let swapped = SigningKeyRecord { public_jwk: b.public_jwk.clone(), kid: b.kid.clone(), ..a.clone() };
        let err = TokenIssuer::new(ISS.into(), vec![swapped]).err().expect("mismatch refused");
        assert!(matches!(err, AuthError::InvalidSigningKey { ref kid } if *kid == b.kid));
        let broken = SigningKeyRecord { private_pem: "not pem".into(), ..a };
        assert!(TokenIssuer::new(ISS.into(), vec![broken]).is_err());
    }
}
