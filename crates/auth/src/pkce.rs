//! Proof Key for Code Exchange (RFC 7636), `S256` only.
//!
//! SMART App Launch v2 requires PKCE with `S256` for every client; the `plain` method would put
//! the secret itself in the front channel, so the authorisation endpoint refuses it.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Whether `code_verifier` is well formed (RFC 7636 §4.1) and hashes to `code_challenge`
/// (`BASE64URL(SHA256(verifier))`, §4.2), compared in constant time.
pub fn verify_pkce_s256(code_verifier: &str, code_challenge: &str) -> bool {
    // §4.1: 43 to 128 characters of the unreserved set.
    let well_formed = (43..=128).contains(&code_verifier.len())
        && code_verifier.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'));
    if !well_formed {
        return false;
    }
    let computed = URL_SAFE_NO_PAD.encode(Sha256::digest(code_verifier.as_bytes()));
    bool::from(computed.as_bytes().ct_eq(code_challenge.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const VERIFIER: &str = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
    /// RFC 7636 Appendix B (checked independently: SHA-256 of the verifier, base64url).
    const CHALLENGE: &str = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM";

    #[test]
    fn rfc7636_appendix_b() {
        assert!(verify_pkce_s256(VERIFIER, CHALLENGE));
        assert!(!verify_pkce_s256(VERIFIER, "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cN"));
        assert!(!verify_pkce_s256(VERIFIER, &format!("{CHALLENGE}=")), "padding is not part of the challenge");
        assert!(!verify_pkce_s256(VERIFIER, VERIFIER), "plain is refused");
    }

    #[test]
    fn verifier_syntax() {
        let ok = "a".repeat(43);
        let challenge = URL_SAFE_NO_PAD.encode(Sha256::digest(ok.as_bytes()));
        assert!(verify_pkce_s256(&ok, &challenge));
        for bad in ["a".repeat(42), "a".repeat(129), format!("{}+", "a".repeat(42)), format!("{} ", "a".repeat(42))] {
            let challenge = URL_SAFE_NO_PAD.encode(Sha256::digest(bad.as_bytes()));
            assert!(!verify_pkce_s256(&bad, &challenge), "{bad:?}");
        }
        let longest = "~._-".repeat(32);
        assert!(verify_pkce_s256(&longest, &URL_SAFE_NO_PAD.encode(Sha256::digest(longest.as_bytes()))));
    }
}
