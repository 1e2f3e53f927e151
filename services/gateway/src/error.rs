//! The gateway's error type, classified once into FHIR issue types (and HTTP statuses).
//!
//! The OAuth token endpoint answers in RFC 6749 §5.2 form instead; [`GatewayError::oauth_code`]
//! is that mapping.

use ehr_core::{Classify, Issue, IssueType};

/// Everything that can go wrong in the gateway.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error(transparent)]
    Store(#[from] ehr_store::StoreError),
    #[error(transparent)]
    Kv(#[from] ehr_kv::KvError),
    #[error(transparent)]
    Auth(#[from] ehr_auth::AuthError),
    /// Deliberately the same message for an unknown user, a wrong password and an inactive
    /// account: the answer must not tell an attacker which usernames exist.
    #[error("invalid username or password")]
    InvalidCredentials,
    #[error("too many failed attempts: the account is locked for {retry_after} more seconds")]
    Locked { retry_after: i64 },
    #[error("invalid one-time code")]
    MfaInvalid,
    #[error("this one-time code has already been used")]
    MfaReplayed,
    #[error("the login has expired or is unknown: start again")]
    LoginExpired,
    #[error("invalid authorization request: {0}")]
    BadAuthorizationRequest(&'static str),
    #[error("{0}")]
    OAuth(OAuthFailure),
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("rate limit exceeded: retry after {retry_after} seconds")]
    RateLimited { retry_after: i64 },
    #[error("the token has been revoked")]
    Revoked,
    #[error("the tenant of the token is unknown or inactive")]
    InactiveTenant,
    #[error("request body is too large")]
    TooLarge,
    #[error("the service behind the gateway is unavailable")]
    Upstream,
    /// A sealed secret does not open: the key-encryption key is not the one it was sealed with,
    /// or the stored value was changed.
    #[error("a stored secret cannot be decrypted (wrong gateway.secret_key or a changed value)")]
    Sealing,
}

/// An OAuth 2.0 error (RFC 6749 §5.2) with a description safe to show.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OAuthFailure {
    pub code: &'static str,
    pub description: String,
}

impl std::fmt::Display for OAuthFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code, self.description)
    }
}

impl GatewayError {
    /// An OAuth error of the given RFC 6749 code.
    pub fn oauth(code: &'static str, description: impl Into<String>) -> Self {
        Self::OAuth(OAuthFailure { code, description: description.into() })
    }

    /// The RFC 6749 §5.2 error code of this failure at the token endpoint.
    pub fn oauth_code(&self) -> &'static str {
        match self {
            Self::OAuth(f) => f.code,
            Self::InvalidCredentials | Self::MfaInvalid | Self::MfaReplayed | Self::LoginExpired | Self::Revoked => {
                "invalid_grant"
            }
            Self::Locked { .. } | Self::RateLimited { .. } => "temporarily_unavailable",
            Self::Auth(_) => "invalid_client",
            Self::Invalid(_) | Self::BadAuthorizationRequest(_) => "invalid_request",
            _ => "server_error",
        }
    }

    /// Seconds a client should wait before retrying, for throttling answers.
    pub fn retry_after(&self) -> Option<i64> {
        match self {
            Self::Locked { retry_after } | Self::RateLimited { retry_after } => Some((*retry_after).max(1)),
            _ => None,
        }
    }
}

impl Classify for GatewayError {
    fn issue_type(&self) -> IssueType {
        match self {
            Self::Store(e) => e.issue_type(),
            Self::Kv(e) => e.issue_type(),
            Self::Auth(e) => e.issue_type(),
            Self::InvalidCredentials | Self::MfaInvalid | Self::MfaReplayed | Self::LoginExpired => IssueType::Login,
            Self::Revoked | Self::InactiveTenant => IssueType::Login,
            Self::Locked { .. } | Self::RateLimited { .. } => IssueType::Throttled,
            Self::BadAuthorizationRequest(_) | Self::Invalid(_) => IssueType::Invalid,
            Self::OAuth(f) => match f.code {
                "invalid_client" => IssueType::Login,
                "unauthorized_client" | "access_denied" => IssueType::Forbidden,
                _ => IssueType::Invalid,
            },
            Self::NotFound(_) => IssueType::NotFound,
            Self::Conflict(_) => IssueType::Duplicate,
            Self::Forbidden(_) => IssueType::Forbidden,
            Self::TooLarge => IssueType::TooCostly,
            Self::Upstream => IssueType::Transient,
            Self::Sealing => IssueType::Exception,
        }
    }

    fn code(&self) -> &'static str {
        match self {
            Self::Store(e) => e.code(),
            Self::Kv(e) => e.code(),
            Self::Auth(e) => e.code(),
            Self::InvalidCredentials => "EHR-GW-001",
            Self::Locked { .. } => "EHR-GW-002",
            Self::MfaInvalid => "EHR-GW-003",
            Self::MfaReplayed => "EHR-GW-004",
            Self::LoginExpired => "EHR-GW-005",
            Self::BadAuthorizationRequest(_) => "EHR-GW-006",
            Self::OAuth(_) => "EHR-GW-007",
            Self::NotFound(_) => "EHR-GW-008",
            Self::Conflict(_) => "EHR-GW-009",
            Self::Invalid(_) => "EHR-GW-010",
            Self::Forbidden(_) => "EHR-GW-011",
            Self::RateLimited { .. } => "EHR-GW-012",
            Self::Revoked => "EHR-GW-013",
            Self::InactiveTenant => "EHR-GW-014",
            Self::TooLarge => "EHR-GW-015",
            Self::Upstream => "EHR-GW-016",
            Self::Sealing => "EHR-GW-017",
        }
    }

    fn http_status(&self) -> u16 {
        match self {
            Self::TooLarge => 413,
            Self::Upstream => 502,
            Self::OAuth(f) if f.code == "invalid_client" => 401,
            Self::Store(e) => e.http_status(),
            Self::Kv(e) => e.http_status(),
            Self::Auth(e) => e.http_status(),
            _ => self.issue_type().http_status(),
        }
    }

    fn issues(&self) -> Vec<Issue> {
        // Wrapped errors keep their own rendering (a store error hides driver text behind an id).
        match self {
            Self::Store(e) => e.issues(),
            Self::Kv(e) => e.issues(),
            Self::Auth(e) => e.issues(),
            _ => vec![Issue::error(self.issue_type(), self.code(), self.to_string())],
        }
    }
}
