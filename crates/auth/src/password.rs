//! Password strength policy and argon2id hashing (PHC strings).
//!
//! The MHLW guideline (v6.0, system operation volume, identification and authentication) asks for
//! passwords of sufficient length and character variety when a password is one of the factors;
//! OWASP's password-storage baseline gives the argon2id cost (m = 19 MiB, t = 2, p = 1).

use crate::AuthError;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use rand::rngs::OsRng;
use serde::{Deserialize, Serialize};

/// Longest password accepted, in bytes: long enough for any passphrase, short enough that nobody
/// uses the login form to make the server hash megabytes.
pub const MAX_PASSWORD_BYTES: usize = 256;

/// Password strength rules and the argon2id cost of new hashes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PasswordPolicy {
    /// Minimum length in characters (not bytes: a kana counts once).
    pub min_length: usize,
    /// How many of lowercase, uppercase, digit and symbol must occur.
    pub min_classes: u8,
    /// argon2id memory cost in KiB.
    pub memory_kib: u32,
    /// argon2id time cost (passes).
    pub iterations: u32,
    /// argon2id lanes.
    pub parallelism: u32,
}

impl Default for PasswordPolicy {
    fn default() -> Self {
        Self { min_length: 12, min_classes: 3, memory_kib: 19_456, iterations: 2, parallelism: 1 }
    }
}

impl PasswordPolicy {
    /// Checks a new password against the policy; the error lists what is missing.
    pub fn check(&self, password: &str) -> Result<(), AuthError> {
        let mut problems = Vec::new();
        if password.len() > MAX_PASSWORD_BYTES {
            problems.push(format!("at most {MAX_PASSWORD_BYTES} bytes"));
        }
        if password.chars().count() < self.min_length {
            problems.push(format!("at least {} characters", self.min_length));
        }
        let classes = [
            ("lowercase", password.chars().any(char::is_lowercase)),
            ("uppercase", password.chars().any(char::is_uppercase)),
            ("digit", password.chars().any(char::is_numeric)),
            // Anything else counts as a symbol, which includes kana and kanji: they have no case,
            // and a Japanese passphrase should not be pushed towards ASCII.
            ("symbol", password.chars().any(|c| !c.is_lowercase() && !c.is_uppercase() && !c.is_numeric())),
        ];
        let present = classes.iter().filter(|(_, has)| *has).count();
        let required = usize::from(self.min_classes).min(classes.len());
        if present < required {
            let missing: Vec<&str> = classes.iter().filter(|(_, has)| !has).map(|(name, _)| *name).collect();
            problems
                .push(format!("{required} of lowercase, uppercase, digit, symbol (missing {})", missing.join(", ")));
        }
        if problems.is_empty() { Ok(()) } else { Err(AuthError::WeakPassword(problems.join("; "))) }
    }

    /// Hashes a password with argon2id and a random salt, as a PHC string.
    pub fn hash(&self, password: &str) -> Result<String, AuthError> {
        let salt = SaltString::generate(&mut OsRng);
        let hash = self.argon2()?.hash_password(password.as_bytes(), &salt).map_err(|_| AuthError::PasswordHashing)?;
        Ok(hash.to_string())
    }

    /// Whether a stored hash was made with other parameters than this policy's (rehash on login).
    pub fn needs_rehash(&self, phc: &str) -> bool {
        let Ok(hash) = PasswordHash::new(phc) else { return true };
        let Ok(params) = Params::try_from(&hash) else { return true };
        hash.algorithm != Algorithm::Argon2id.ident()
            || hash.version != Some(Version::V0x13.into())
            || params.m_cost() != self.memory_kib
            || params.t_cost() != self.iterations
            || params.p_cost() != self.parallelism
    }

    /// Spends the time of one verification, for logins naming an unknown user: answering those
    /// faster would tell an attacker which user names exist.
    pub fn dummy_verify(&self, password: &str) {
        let mut out = [0u8; 32];
        if let Ok(argon2) = self.argon2() {
            let _ = argon2.hash_password_into(password.as_bytes(), b"ehr-dummy-salt-16", &mut out);
        }
        std::hint::black_box(out);
    }

    fn argon2(&self) -> Result<Argon2<'static>, AuthError> {
        let params = Params::new(self.memory_kib, self.iterations, self.parallelism, None)
            .map_err(|_| AuthError::PasswordHashing)?;
        Ok(Argon2::new(Algorithm::Argon2id, Version::V0x13, params))
    }
}

/// Whether `password` matches a stored PHC hash. The cost parameters come from the hash itself, so
/// hashes made under an older policy keep verifying; the comparison is constant-time.
pub fn verify_password(phc: &str, password: &str) -> bool {
    PasswordHash::new(phc).is_ok_and(|hash| Argon2::default().verify_password(password.as_bytes(), &hash).is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Cheap parameters keep the tests fast; the code path is the same.
    fn fast() -> PasswordPolicy {
        PasswordPolicy { memory_kib: 64, iterations: 1, ..PasswordPolicy::default() }
    }

    #[test]
    fn defaults_are_the_owasp_baseline() {
        let p = PasswordPolicy::default();
        assert_eq!((p.min_length, p.min_classes, p.memory_kib, p.iterations, p.parallelism), (12, 3, 19_456, 2, 1));
        let parsed: PasswordPolicy = serde_json::from_str(r#"{"min_length": 16}"#).expect("partial policy");
        assert_eq!(parsed, PasswordPolicy { min_length: 16, ..PasswordPolicy::default() });
        assert!(serde_json::from_str::<PasswordPolicy>(r#"{"min_len": 16}"#).is_err());
    }

    #[test]
    fn strength_rules() {
        let p = PasswordPolicy::default();
        assert!(p.check("correct-Horse-battery").is_ok());
        assert!(p.check("パスワードは長くて安全です1A").is_ok());
        let Err(AuthError::WeakPassword(msg)) = p.check("short1A") else { panic!("short password accepted") };
        assert!(msg.contains("at least 12 characters"), "{msg}");
        let Err(AuthError::WeakPassword(msg)) = p.check("alllowercaseletters") else { panic!("one class accepted") };
        assert!(msg.contains("missing uppercase, digit, symbol"), "{msg}");
        assert!(!msg.contains("characters"), "{msg}");
        assert!(p.check(&"aA1-".repeat(65)).is_err(), "more than 256 bytes");
        assert!(p.check(&"aA1-".repeat(64)).is_ok(), "exactly 256 bytes");
    }

    #[test]
    fn hash_verify_and_rehash() {
        let p = fast();
        let phc = p.hash("correct-Horse-battery").expect("hash");
        assert!(phc.starts_with("$argon2id$v=19$m=64,t=1,p=1$"), "{phc}");
        assert!(verify_password(&phc, "correct-Horse-battery"));
        assert!(!verify_password(&phc, "correct-Horse-batterz"));
        assert!(!verify_password("not a phc string", "x"));
        assert_ne!(phc, p.hash("correct-Horse-battery").expect("hash"), "salt is random");
        assert!(!p.needs_rehash(&phc));
        // A policy change leaves old hashes verifiable but flags them for rehashing.
        let stronger = PasswordPolicy { memory_kib: 128, ..p.clone() };
        assert!(stronger.needs_rehash(&phc));
        assert!(verify_password(&phc, "correct-Horse-battery"));
        assert!(p.needs_rehash("garbage"));
        p.dummy_verify("anything");
    }

    #[test]
    fn bad_cost_parameters_fail_cleanly() {
        let p = PasswordPolicy { memory_kib: 1, ..fast() };
        assert!(matches!(p.hash("x"), Err(AuthError::PasswordHashing)));
        p.dummy_verify("x");
    }
}
