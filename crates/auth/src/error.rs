//! The crate's error type. Messages say what is wrong with the token, never echo it.

use ehr_core::{Classify, IssueType};

/// Authentication and authorisation failures.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("missing bearer token")]
    MissingToken,
    #[error("invalid bearer token: {0}")]
    InvalidToken(&'static str),
    #[error("bearer token has expired")]
    Expired,
    #[error("bearer token is signed with an unknown key")]
    UnknownKey,
    #[error("the token's scopes do not allow {interaction} on {resource_type}")]
    InsufficientScope { interaction: &'static str, resource_type: String },
    #[error("the signing keys of the token issuer cannot be fetched")]
    JwksUnavailable,
    #[error("no development signing key is configured (auth.development_key = false)")]
    NoDevKey,
    #[error("token signing failed")]
    Signing,
    #[error("the password does not meet the password policy: {0}")]
    WeakPassword(String),
    #[error("password hashing failed")]
    PasswordHashing,
    #[error("a one-time code must be exactly 6 digits")]
    TotpCodeMalformed,
    #[error("the one-time code is wrong")]
    TotpInvalid,
    #[error("the one-time code has already been used")]
    TotpReplayed,
    #[error("the totp secret is not base32 of 20 bytes")]
    TotpSecretInvalid,
    #[error("the qr code cannot be rendered")]
    QrCode,
    #[error("no token-signing key is active")]
    NoSigningKey,
    #[error("the token-signing key {kid} cannot be loaded")]
    InvalidSigningKey { kid: String },
    #[error("signing-key generation failed")]
    KeyGeneration,
    #[error("invalid client assertion: {0}")]
    InvalidClientAssertion(&'static str),
}

impl Classify for AuthError {
    fn issue_type(&self) -> IssueType {
        match self {
            Self::MissingToken | Self::InvalidToken(_) | Self::Expired | Self::UnknownKey => IssueType::Login,
            Self::InsufficientScope { .. } => IssueType::Forbidden,
            Self::JwksUnavailable => IssueType::Transient,
            // A wrong or replayed one-time code is a failed login, like a wrong password.
            Self::TotpInvalid | Self::TotpReplayed => IssueType::Login,
            // RFC 6749 §5.2 answers a bad client authentication with 401 `invalid_client`.
            Self::InvalidClientAssertion(_) => IssueType::Login,
            Self::WeakPassword(_) | Self::TotpCodeMalformed | Self::TotpSecretInvalid => IssueType::Invalid,
            Self::NoDevKey
            | Self::Signing
            | Self::PasswordHashing
            | Self::QrCode
            | Self::NoSigningKey
            | Self::InvalidSigningKey { .. }
            | Self::KeyGeneration => IssueType::Exception,
        }
    }

    fn code(&self) -> &'static str {
        match self {
            Self::MissingToken => "EHR-AUTH-001",
            Self::InvalidToken(_) => "EHR-AUTH-002",
            Self::Expired => "EHR-AUTH-003",
            Self::UnknownKey => "EHR-AUTH-004",
            Self::InsufficientScope { .. } => "EHR-AUTH-005",
            Self::JwksUnavailable => "EHR-AUTH-006",
            Self::NoDevKey => "EHR-AUTH-007",
            Self::Signing => "EHR-AUTH-008",
            Self::WeakPassword(_) => "EHR-AUTH-009",
            Self::PasswordHashing => "EHR-AUTH-010",
            Self::TotpCodeMalformed => "EHR-AUTH-011",
            Self::TotpInvalid => "EHR-AUTH-012",
            Self::TotpReplayed => "EHR-AUTH-013",
            Self::TotpSecretInvalid => "EHR-AUTH-014",
            Self::QrCode => "EHR-AUTH-015",
            Self::NoSigningKey => "EHR-AUTH-016",
            Self::InvalidSigningKey { .. } => "EHR-AUTH-017",
            Self::KeyGeneration => "EHR-AUTH-018",
            Self::InvalidClientAssertion(_) => "EHR-AUTH-019",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn codes_are_unique_and_stable() {
        let all = [
            AuthError::MissingToken,
            AuthError::InvalidToken("x"),
            AuthError::Expired,
            AuthError::UnknownKey,
            AuthError::InsufficientScope { interaction: "read", resource_type: "Patient".into() },
            AuthError::JwksUnavailable,
            AuthError::NoDevKey,
            AuthError::Signing,
            AuthError::WeakPassword("x".into()),
            AuthError::PasswordHashing,
            AuthError::TotpCodeMalformed,
            AuthError::TotpInvalid,
            AuthError::TotpReplayed,
            AuthError::TotpSecretInvalid,
            AuthError::QrCode,
            AuthError::NoSigningKey,
            AuthError::InvalidSigningKey { kid: "k".into() },
            AuthError::KeyGeneration,
            AuthError::InvalidClientAssertion("x"),
        ];
        let codes: HashSet<_> = all.iter().map(Classify::code).collect();
        assert_eq!(codes.len(), all.len());
        for e in &all {
            let msg = e.to_string();
            assert!(!msg.ends_with('.') && msg.starts_with(|c: char| c.is_lowercase()), "{msg}");
        }
        assert_eq!(AuthError::InvalidClientAssertion("x").code(), "EHR-AUTH-019");
    }
}
