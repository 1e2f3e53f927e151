//! Secrets at rest: TOTP shared secrets and token-signing private keys are stored encrypted
//! (AES-256-GCM) under a key-encryption key that is not in the database.
//!
//! A database dump or backup therefore does not hand out the second factor of every user nor
//! the power to mint tokens. Each sealed value is bound to its owner by the associated data (the
//! tenant and account of a TOTP secret, the key id of a signing key), so a value copied onto
//! another row does not open. Format: `v1:` + base64(nonce ‖ ciphertext ‖ tag).

use crate::error::GatewayError;
use aes_gcm::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;

const PREFIX: &str = "v1:";
const NONCE_LEN: usize = 12;

/// Seals and opens secrets with the key-encryption key. Cheap to clone.
#[derive(Clone)]
pub struct Sealer {
    cipher: Aes256Gcm,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sealer(<key>)")
    }
}

impl Sealer {
    /// A sealer from a 32-byte key.
    pub fn new(key: &[u8; 32]) -> Self {
        Self { cipher: Aes256Gcm::new(&(*key).into()) }
    }

    /// A sealer from the base64 text of a 32-byte key (the `gateway.secret_key` setting).
    pub fn from_base64(text: &str) -> Result<Self, GatewayError> {
        let bytes = STANDARD
            .decode(text.trim())
            .map_err(|_| GatewayError::Invalid("gateway.secret_key must be base64".into()))?;
        let key: [u8; 32] = bytes.try_into().map_err(|_| {
            GatewayError::Invalid("gateway.secret_key must be 32 bytes (base64 of 32 random bytes)".into())
        })?;
        Ok(Self::new(&key))
    }

    /// A new random key, as base64 (for a first start without a configured key).
    pub fn generate_key() -> String {
        STANDARD.encode(Aes256Gcm::generate_key(&mut OsRng))
    }

    /// Encrypts `plaintext`, bound to `owner`.
    pub fn seal(&self, plaintext: &str, owner: &str) -> Result<String, GatewayError> {
        let nonce = Aes256Gcm::generate_nonce(&mut OsRng);
        let ct = self
            .cipher
            .encrypt(&nonce, Payload { msg: plaintext.as_bytes(), aad: owner.as_bytes() })
            .map_err(|_| GatewayError::Sealing)?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&ct);
        Ok(format!("{PREFIX}{}", STANDARD.encode(out)))
    }

    /// Decrypts a value sealed for `owner`; a wrong key, owner or a changed value fails.
    pub fn open(&self, sealed: &str, owner: &str) -> Result<String, GatewayError> {
        let raw = sealed.strip_prefix(PREFIX).ok_or(GatewayError::Sealing)?;
        let bytes = STANDARD.decode(raw).map_err(|_| GatewayError::Sealing)?;
        if bytes.len() <= NONCE_LEN {
            return Err(GatewayError::Sealing);
        }
        let (nonce, ct) = bytes.split_at(NONCE_LEN);
        let nonce: [u8; NONCE_LEN] = nonce.try_into().map_err(|_| GatewayError::Sealing)?;
        let plain = self
            .cipher
            .decrypt(&Nonce::from(nonce), Payload { msg: ct, aad: owner.as_bytes() })
            .map_err(|_| GatewayError::Sealing)?;
        String::from_utf8(plain).map_err(|_| GatewayError::Sealing)
    }
}

/// The owner (associated data) of a user's TOTP secret.
pub fn totp_owner(tenant: &ehr_core::TenantId, user_id: &str) -> String {
    format!("totp:{}:{user_id}", tenant.as_str())
}

/// The owner (associated data) of a signing key's private half.
pub fn key_owner(kid: &str) -> String {
    format!("signing-key:{kid}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_values_open_only_with_their_key_and_owner() {
        let s = Sealer::from_base64(&Sealer::generate_key()).expect("key");
        let sealed = s.seal("JBSWY3DPEHPK3PXP", "totp:h1:u1").expect("seal");
        assert!(sealed.starts_with("v1:") && !sealed.contains("JBSWY3DP"));
        assert_eq!(s.open(&sealed, "totp:h1:u1").expect("open"), "JBSWY3DPEHPK3PXP");
        assert!(s.open(&sealed, "totp:h1:u2").is_err(), "moved to another account");
        let other = Sealer::from_base64(&Sealer::generate_key()).expect("key");
        assert!(other.open(&sealed, "totp:h1:u1").is_err(), "another key");
        let mut tampered = sealed.clone();
        tampered.pop();
        tampered.push(if sealed.ends_with('A') { 'B' } else { 'A' });
        assert!(s.open(&tampered, "totp:h1:u1").is_err());
        assert!(s.open("JBSWY3DPEHPK3PXP", "totp:h1:u1").is_err(), "plaintext is not accepted");
        assert!(Sealer::from_base64("c2hvcnQ=").is_err());
    }
}
