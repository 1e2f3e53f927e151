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
}

impl Classify for AuthError {
    fn issue_type(&self) -> IssueType {
        match self {
            Self::MissingToken | Self::InvalidToken(_) | Self::Expired | Self::UnknownKey => IssueType::Login,
            Self::InsufficientScope { .. } => IssueType::Forbidden,
            Self::JwksUnavailable => IssueType::Transient,
            Self::NoDevKey | Self::Signing => IssueType::Exception,
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
        }
    }
}
