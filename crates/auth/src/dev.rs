//! The development signing key: public in this repository, so only for local runs and tests.
//!
//! `auth.development_key = true` (the embedded default of `ehr serve`) makes services trust it
//! and lets `ehr dev-token` sign with it. Production configuration sets it to `false` and names
//! the real issuer's JWKS instead.

use crate::{AuthError, Claims};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

/// Issuer of development tokens.
pub const DEV_ISSUER: &str = "urn:ehr:dev-issuer";
/// Key id of the development key.
pub const DEV_KEY_ID: &str = "ehr-dev-2026";

const DEV_SIGNING_KEY_PEM: &str = include_str!("dev-signing-key.pem");
// The public half, as JWK coordinates (derived from the PEM with openssl; see docs/operations/README.md).
const DEV_X: &str = "ycdL0g_M7O1VEJ3AG1xO6qAvIQBrT6D1aM1tCryMGYA";
const DEV_Y: &str = "cZgcQZ2SHjrZyZwtP74mCk2utFsZ2lyYKQYA2r9_DEc";

/// The JWKS holding the development key's public half.
pub fn dev_jwks() -> Value {
    json!({"keys": [{"kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig", "kid": DEV_KEY_ID, "x": DEV_X, "y": DEV_Y}]})
}

/// Signs tokens with the development key.
#[derive(Clone)]
pub struct DevSigner {
    key: EncodingKey,
}

impl DevSigner {
    /// The development signer.
    pub fn new() -> Result<Self, AuthError> {
        let key = EncodingKey::from_ec_pem(DEV_SIGNING_KEY_PEM.as_bytes()).map_err(|_| AuthError::Signing)?;
        Ok(Self { key })
    }

    /// Signs the claims as an ES256 JWT.
    pub fn sign(&self, claims: &Claims) -> Result<String, AuthError> {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(DEV_KEY_ID.to_owned());
        jsonwebtoken::encode(&header, claims, &self.key).map_err(|_| AuthError::Signing)
    }
}
