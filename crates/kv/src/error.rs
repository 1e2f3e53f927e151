//! The crate's error type. Redis driver text never leaves this crate in a message: it is logged
//! with an error id, and the caller gets the id. The connection URL (which may carry a password)
//! is never logged nor put in a message.

use ehr_core::{Classify, IssueType};

/// Errors of the security-state store.
#[derive(Debug, thiserror::Error)]
pub enum KvError {
    #[error("the security state store is unavailable; retry later (error id {0})")]
    Unavailable(String),
    #[error("a stored security state value could not be decoded (error id {0})")]
    Corrupt(String),
    #[error("internal security state store error (error id {0})")]
    Internal(String),
    #[error("invalid security state store url: expected redis://, rediss:// or redis+unix://")]
    InvalidUrl,
    #[error("invalid argument: {0}")]
    InvalidArgument(&'static str),
}

impl KvError {
    /// Wraps a driver error: logs the detail under a fresh error id and keeps only the id.
    pub(crate) fn redis(err: &redis::RedisError) -> Self {
        use redis::ErrorKind as K;
        let id = error_id();
        // Connection-level failures and server states that clear by themselves (loading a
        // snapshot, failover in progress, a replica that is read-only) are worth a retry.
        let transient = err.is_io_error()
            || err.is_timeout()
            || err.is_connection_dropped()
            || err.is_connection_refusal()
            || matches!(
                err.kind(),
                K::BusyLoadingError
                    | K::TryAgain
                    | K::ClusterDown
                    | K::MasterDown
                    | K::ReadOnly
                    | K::AuthenticationFailed
            );
        if transient {
            tracing::warn!(error.id = %id, error = %err, "security state store unavailable");
            Self::Unavailable(id)
        } else if err.kind() == K::TypeError {
            tracing::error!(error.id = %id, error = %err, "unexpected reply from the security state store");
            Self::Corrupt(id)
        } else {
            tracing::error!(error.id = %id, error = %err, "security state store error");
            Self::Internal(id)
        }
    }

    /// A stored value that does not decode (a foreign writer under our prefix, or a format change).
    pub(crate) fn corrupt(what: &'static str, err: &dyn std::fmt::Display) -> Self {
        let id = error_id();
        tracing::error!(error.id = %id, error = %err, what, "undecodable security state value");
        Self::Corrupt(id)
    }
}

impl From<redis::RedisError> for KvError {
    fn from(err: redis::RedisError) -> Self {
        Self::redis(&err)
    }
}

fn error_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

impl Classify for KvError {
    fn issue_type(&self) -> IssueType {
        match self {
            Self::Unavailable(_) => IssueType::Transient,
            Self::Corrupt(_) | Self::Internal(_) | Self::InvalidUrl | Self::InvalidArgument(_) => IssueType::Exception,
        }
    }

    fn code(&self) -> &'static str {
        match self {
            Self::Unavailable(_) => "EHR-KV-001",
            Self::Corrupt(_) => "EHR-KV-002",
            Self::Internal(_) => "EHR-KV-003",
            Self::InvalidUrl => "EHR-KV-004",
            Self::InvalidArgument(_) => "EHR-KV-005",
        }
    }
}
