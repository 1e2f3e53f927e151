//! Client authentication by signed assertion (`private_key_jwt`, RFC 7523 §2.2), as SMART Backend
//! Services use it: the client signs a short-lived JWT with a key from its registered JWKS.
//!
//! Replay of the `jti` is checked by the caller (it needs shared state); everything else is here.

use crate::AuthError;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation, errors::ErrorKind};
use serde::Deserialize;
use serde_json::Value;

/// SMART Backend Services: `exp` SHALL be no more than five minutes in the future.
const MAX_LIFETIME_SECS: i64 = 300;
/// Tolerated clock difference with the client, for `nbf` and the five-minute bound.
const CLOCK_SKEW_SECS: i64 = 30;

/// What the caller needs from a verified assertion to refuse its replay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AssertionClaims {
    /// The assertion's unique id; remember it until `exp`.
    pub jti: String,
    /// Expiry (unix seconds).
    pub exp: i64,
}

#[derive(Deserialize)]
struct RawAssertion {
    iss: Option<String>,
    sub: Option<String>,
    aud: Option<Value>,
    exp: Option<i64>,
    nbf: Option<i64>,
    jti: Option<String>,
}

/// Verifies the `client_assertion` of `client_id` against the client's registered JWKS.
pub fn verify_client_assertion(
    assertion: &str,
    client_id: &str,
    client_jwks: &Value,
    token_endpoint: &str,
    now_unix: i64,
) -> Result<AssertionClaims, AuthError> {
    use AuthError::InvalidClientAssertion as Invalid;
    let header = jsonwebtoken::decode_header(assertion).map_err(|_| Invalid("malformed"))?;
    // Servers SHALL support RS384 and ES384; ES256 is what our own tooling signs with. Anything
    // else, above all HS* and `none`, is refused before a key is even looked at.
    if !matches!(header.alg, Algorithm::RS384 | Algorithm::ES384 | Algorithm::ES256) {
        return Err(Invalid("algorithm must be RS384, ES384 or ES256"));
    }
    let kid = header.kid.ok_or(Invalid("no key id"))?;
    let set: JwkSet =
        serde_json::from_value(client_jwks.clone()).map_err(|_| Invalid("the client's jwks is unusable"))?;
    let jwk =
        set.keys.iter().find(|k| k.common.key_id.as_deref() == Some(kid.as_str())).ok_or(Invalid("unknown key id"))?;
    // A key that states its algorithm may only be used with that one (RFC 7517 §4.4).
    if jwk.common.key_algorithm.is_some_and(|alg| alg.to_string() != format!("{:?}", header.alg)) {
        return Err(Invalid("the key is registered for another algorithm"));
    }
    let key = DecodingKey::from_jwk(jwk).map_err(|_| Invalid("the client's key is unusable"))?;
    let mut validation = Validation::new(header.alg);
    // Claims are checked below, against the injected clock and with specific messages.
    validation.validate_exp = false;
    validation.validate_aud = false;
    validation.set_required_spec_claims::<&str>(&[]);
    let claims = jsonwebtoken::decode::<RawAssertion>(assertion, &key, &validation)
        .map_err(|e| match e.kind() {
            ErrorKind::InvalidSignature => Invalid("bad signature"),
            ErrorKind::InvalidAlgorithm => Invalid("the key does not fit the algorithm"),
            _ => Invalid("malformed"),
        })?
        .claims;
    // RFC 7523 §3: the client is both the issuer and the subject of its assertion.
    if claims.iss.as_deref() != Some(client_id) || claims.sub.as_deref() != Some(client_id) {
        return Err(Invalid("iss and sub must be the client id"));
    }
    let aud_ok = match &claims.aud {
        Some(Value::String(aud)) => aud == token_endpoint,
        Some(Value::Array(auds)) => auds.iter().any(|a| a.as_str() == Some(token_endpoint)),
        _ => false,
    };
    if !aud_ok {
        return Err(Invalid("aud must be the token endpoint"));
    }
    let exp = claims.exp.ok_or(Invalid("no exp"))?;
    if exp <= now_unix {
        return Err(Invalid("expired"));
    }
    if exp > now_unix + MAX_LIFETIME_SECS + CLOCK_SKEW_SECS {
        return Err(Invalid("exp is more than five minutes ahead"));
    }
    if claims.nbf.is_some_and(|nbf| nbf > now_unix + CLOCK_SKEW_SECS) {
        return Err(Invalid("not yet valid (nbf)"));
    }
    let jti = claims.jti.filter(|j| !j.is_empty()).ok_or(Invalid("no jti"))?;
    Ok(AssertionClaims { jti, exp })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::KeyPair;
    use jsonwebtoken::{EncodingKey, Header};
    use serde_json::json;

    const CLIENT: &str = "backend-lab";
    const ENDPOINT: &str = "https://ehr.example.jp/auth/token";
    const NOW: i64 = 1_700_000_000;

    struct Client {
        pair: KeyPair,
        jwks: Value,
    }

    fn client() -> Client {
        let pair = KeyPair::generate(0).expect("key");
        let jwks = json!({"keys": [pair.public_jwk.clone()]});
        Client { pair, jwks }
    }

    fn good_claims() -> Value {
        json!({"iss": CLIENT, "sub": CLIENT, "aud": ENDPOINT, "exp": NOW + 240, "jti": "a-1"})
    }

    fn sign(c: &Client, claims: &Value) -> String {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(c.pair.kid.clone());
        let key = EncodingKey::from_ec_pem(c.pair.private_pem.as_bytes()).expect("pem");
        jsonwebtoken::encode(&header, claims, &key).expect("sign")
    }

    fn verify(c: &Client, assertion: &str) -> Result<AssertionClaims, AuthError> {
        verify_client_assertion(assertion, CLIENT, &c.jwks, ENDPOINT, NOW)
    }

    fn refusal(c: &Client, claims: Value) -> &'static str {
        match verify(c, &sign(c, &claims)) {
            Err(AuthError::InvalidClientAssertion(why)) => why,
            other => panic!("accepted or wrong error: {other:?}"),
        }
    }

    #[test]
    fn es256_assertion_is_accepted() {
        let c = client();
        assert_eq!(
            verify(&c, &sign(&c, &good_claims())).expect("valid"),
            AssertionClaims { jti: "a-1".into(), exp: NOW + 240 }
        );
        let mut listed = good_claims();
        listed["aud"] = json!(["https://other.example", ENDPOINT]);
        assert!(verify(&c, &sign(&c, &listed)).is_ok(), "aud as an array containing the endpoint");
    }

    #[test]
    fn claim_rules() {
        let c = client();
        let with = |k: &str, v: Value| {
            let mut claims = good_claims();
            claims[k] = v;
            claims
        };
        let without = |k: &str| {
            let mut claims = good_claims();
            claims.as_object_mut().expect("object").remove(k);
            claims
        };
        assert_eq!(refusal(&c, with("aud", json!("https://ehr.example.jp/other"))), "aud must be the token endpoint");
        assert_eq!(refusal(&c, without("aud")), "aud must be the token endpoint");
        assert_eq!(refusal(&c, with("iss", json!("someone-else"))), "iss and sub must be the client id");
        assert_eq!(refusal(&c, with("sub", json!("someone-else"))), "iss and sub must be the client id");
        assert_eq!(refusal(&c, with("exp", json!(NOW))), "expired");
        assert_eq!(refusal(&c, with("exp", json!(NOW + 3600))), "exp is more than five minutes ahead");
        assert_eq!(refusal(&c, without("exp")), "no exp");
        assert_eq!(refusal(&c, without("jti")), "no jti");
        assert_eq!(refusal(&c, with("jti", json!(""))), "no jti");
        assert_eq!(refusal(&c, with("nbf", json!(NOW + 600))), "not yet valid (nbf)");
    }

    #[test]
    fn key_and_algorithm_rules() {
        let c = client();
        // HS256 with the public key's bytes as the secret: the classic algorithm confusion.
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some(c.pair.kid.clone());
        let hs = jsonwebtoken::encode(&header, &good_claims(), &EncodingKey::from_secret(b"public")).expect("sign");
        assert!(matches!(
            verify(&c, &hs),
            Err(AuthError::InvalidClientAssertion("algorithm must be RS384, ES384 or ES256"))
        ));
        // A key the client never registered, even under a registered kid.
        let other = client();
        assert!(matches!(
            verify(&c, &sign(&other, &good_claims())),
            Err(AuthError::InvalidClientAssertion("unknown key id"))
        ));
        let impostor = Client { pair: KeyPair { kid: c.pair.kid.clone(), ..other.pair }, jwks: other.jwks };
        assert!(matches!(
            verify(&c, &sign(&impostor, &good_claims())),
            Err(AuthError::InvalidClientAssertion("bad signature"))
        ));
        // A registered ES256 key cannot be used to claim ES384.
        let mut header = Header::new(Algorithm::ES384);
        header.kid = Some(c.pair.kid.clone());
        let key = EncodingKey::from_ec_pem(c.pair.private_pem.as_bytes()).expect("pem");
        let es384 = jsonwebtoken::encode(&header, &good_claims(), &key);
        if let Ok(token) = es384 {
            assert!(verify(&c, &token).is_err());
        }
        assert!(matches!(verify(&c, "not.a.jwt"), Err(AuthError::InvalidClientAssertion("malformed"))));
        assert!(
            verify_client_assertion(&sign(&c, &good_claims()), CLIENT, &json!({"keys": "x"}), ENDPOINT, NOW).is_err()
        );
    }
}
