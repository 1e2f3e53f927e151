//! The crate's error type. Redis driver text never leaves this crate in a message: it is logged
//! with an error id, and the caller gets the id. The connection URL (which may carry a password)
//! is never logged nor put in a message.

use ehr_core::{Classify, IssueType};
use ehr_store::StoreError;

/// Errors of the event bus, the relay and the consumer runner.
#[derive(Debug, thiserror::Error)]
pub enum EventsError {
    #[error("the event bus is unavailable; retry later (error id {0})")]
    Unavailable(String),
    #[error("an event could not be decoded (error id {0})")]
    Corrupt(String),
    #[error("internal event bus error (error id {0})")]
    Internal(String),
    #[error("invalid event bus url: expected redis://, rediss:// or redis+unix://")]
    InvalidUrl,
    #[error("invalid argument: {0}")]
    InvalidArgument(&'static str),
    #[error("unsupported configuration: {0}")]
    Unsupported(&'static str),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl EventsError {
    /// Wraps a driver error: logs the detail under a fresh error id and keeps only the id.
    pub(crate) fn redis(err: &redis::RedisError) -> Self {
        use redis::ErrorKind as K;
        let id = error_id();
        // Connection-level failures and server states that clear by themselves are worth a retry.
        let transient = err.is_io_error()
            || err.is_timeout()
            || err.is_connection_dropped()
            || err.is_connection_refusal()
            || matches!(err.kind(), K::BusyLoadingError | K::TryAgain | K::ClusterDown | K::MasterDown | K::ReadOnly);
        if transient {
            tracing::warn!(error.id = %id, error = %err, "event bus unavailable");
            Self::Unavailable(id)
        } else {
            tracing::error!(error.id = %id, error = %err, "event bus error");
            Self::Internal(id)
        }
    }

    /// A stored or streamed event that does not decode; `what` names the part, never its value.
    pub(crate) fn corrupt(what: &'static str) -> Self {
        let id = error_id();
        tracing::error!(error.id = %id, what, "undecodable event");
        Self::Corrupt(id)
    }
}

impl From<redis::RedisError> for EventsError {
    fn from(err: redis::RedisError) -> Self {
        Self::redis(&err)
    }
}

fn error_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

impl Classify for EventsError {
    fn issue_type(&self) -> IssueType {
        match self {
            Self::Unavailable(_) => IssueType::Transient,
            Self::Store(e) => e.issue_type(),
            Self::Corrupt(_)
            | Self::Internal(_)
            | Self::InvalidUrl
            | Self::InvalidArgument(_)
            | Self::Unsupported(_) => IssueType::Exception,
        }
    }

    fn code(&self) -> &'static str {
        match self {
            Self::Unavailable(_) => "EHR-EVT-001",
            Self::Corrupt(_) => "EHR-EVT-002",
            Self::Internal(_) => "EHR-EVT-003",
            Self::InvalidUrl => "EHR-EVT-004",
            Self::InvalidArgument(_) => "EHR-EVT-005",
            Self::Unsupported(_) => "EHR-EVT-006",
            Self::Store(e) => e.code(),
        }
    }
}
