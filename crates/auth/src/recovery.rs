//! Single-use recovery codes, for a user who has lost the device holding the TOTP secret.
//!
//! Stored as plain SHA-256, not argon2: a slow hash protects *human-chosen* secrets against
//! guessing, but each code is 50 bits from a CSPRNG, so an offline search of one stored hash costs
//! 2^49 SHA-256 evaluations on average; online guessing is stopped by the login lock-out anyway.
//! A fast hash also lets the caller compare a typed code against all of a user's codes cheaply.

use rand::rngs::OsRng;
use rand::{CryptoRng, RngCore};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// 32 characters without the look-alikes `0`/`o`, `1`/`l`: each one carries exactly 5 bits.
const ALPHABET: &[u8; 32] = b"abcdefghijkmnpqrstuvwxyz23456789";
/// Random characters per code (10 × 5 = 50 bits), shown as `abcd-efgh-jk`.
const CODE_CHARS: usize = 10;

/// Generation of recovery codes.
pub struct RecoveryCodes;

impl RecoveryCodes {
    /// How many codes a user gets by default.
    pub const DEFAULT_COUNT: usize = 10;

    /// `n` new codes: the codes to show the user once, and their hashes to store.
    pub fn generate(n: usize) -> (Vec<String>, Vec<String>) {
        Self::generate_with(&mut OsRng, n)
    }

    /// `n` new codes from `rng`.
    pub fn generate_with(rng: &mut (impl RngCore + CryptoRng), n: usize) -> (Vec<String>, Vec<String>) {
        let codes: Vec<String> = (0..n).map(|_| one_code(rng)).collect();
        let hashes = codes.iter().map(|c| hash_recovery_code(c)).collect();
        (codes, hashes)
    }
}

fn one_code(rng: &mut (impl RngCore + CryptoRng)) -> String {
    let mut bytes = [0u8; CODE_CHARS];
    rng.fill_bytes(&mut bytes);
    let mut code = String::with_capacity(CODE_CHARS + 2);
    for (i, b) in bytes.iter().enumerate() {
        if i == 4 || i == 8 {
            code.push('-');
        }
        // 256 is a multiple of 32, so masking keeps the distribution uniform.
        code.push(char::from(ALPHABET[usize::from(b & 31)]));
    }
    code
}

/// Hex SHA-256 of the normalised code (lowercase, hyphens and spaces removed).
pub fn hash_recovery_code(code: &str) -> String {
    let normalised: String =
        code.chars().filter(|c| *c != '-' && !c.is_whitespace()).map(|c| c.to_ascii_lowercase()).collect();
    format!("{:x}", Sha256::digest(normalised.as_bytes()))
}

/// The index of the stored hash that `code` matches, compared in constant time; the caller then
/// deletes that hash, which is what makes the code single-use.
pub fn find_recovery_code(code: &str, stored_hashes: &[String]) -> Option<usize> {
    let typed = hash_recovery_code(code);
    let mut found = None;
    for (i, stored) in stored_hashes.iter().enumerate() {
        if bool::from(typed.as_bytes().ct_eq(stored.as_bytes())) && found.is_none() {
            found = Some(i);
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_have_the_documented_shape() {
        let (codes, hashes) = RecoveryCodes::generate(RecoveryCodes::DEFAULT_COUNT);
        assert_eq!((codes.len(), hashes.len()), (10, 10));
        for (code, hash) in codes.iter().zip(&hashes) {
            let parts: Vec<&str> = code.split('-').collect();
            assert_eq!(parts.iter().map(|p| p.len()).collect::<Vec<_>>(), [4, 4, 2], "{code}");
            assert!(code.bytes().all(|b| b == b'-' || ALPHABET.contains(&b)), "{code}");
            assert_eq!(hash.len(), 64);
            assert_eq!(&hash_recovery_code(code), hash);
        }
        let unique: std::collections::HashSet<_> = codes.iter().collect();
        assert_eq!(unique.len(), codes.len());
    }

    #[test]
    fn hash_is_of_the_normalised_code() {
        let expected = hash_recovery_code("abcdefghjk");
        assert_eq!(expected, "22f3f00d7f9cfe6eeefa9b71bdcb093a9080fcf4981d2dbf932648fa15a2d793");
        assert_eq!(hash_recovery_code("ABCD-EFGH-JK"), expected);
        assert_eq!(hash_recovery_code(" abcd efgh jk "), expected);
        let stored = vec![hash_recovery_code("zzzz-zzzz-zz"), expected];
        assert_eq!(find_recovery_code("Abcd-Efgh-Jk", &stored), Some(1));
        assert_eq!(find_recovery_code("abcd-efgh-jm", &stored), None);
    }
}
