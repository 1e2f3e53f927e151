//! The crate's error type. Database and driver text never leaves this crate in a message: it is
//! logged with an error id, and the client gets the id.

use ehr_core::{Classify, Issue, IssueType};

/// Errors of the resource repository.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("resource not found")]
    NotFound,
    #[error("resource was deleted")]
    Gone { version: i64, last_updated: i64 },
    #[error("version conflict: the resource is at version {current}, the request expected {expected}")]
    VersionConflict { current: i64, expected: i64 },
    #[error("a resource with this id already exists")]
    AlreadyExists,
    #[error("the database is unavailable; retry later (error id {0})")]
    Unavailable(String),
    #[error("internal storage error (error id {0})")]
    Internal(String),
    #[error("unsupported database url: expected sqlite:// or postgres://")]
    UnsupportedUrl,
    #[error("the database did not answer in time (statement timeout); narrow the request or retry")]
    Timeout,
    #[error("the request collided with a concurrent one (deadlock or busy database); retry it")]
    Contention,
    #[error("invalid value: {0}")]
    InvalidValue(&'static str),
}

impl StoreError {
    /// Wraps a driver error: logs the detail under a fresh error id and keeps only the id.
    pub(crate) fn db(err: sea_orm::DbErr) -> Self {
        match sqlstate(&err).as_deref() {
            Some("57014") => {
                tracing::warn!("statement cancelled by statement_timeout");
                return Self::Timeout;
            }
            // PostgreSQL deadlock / serialization failure; SQLite busy / locked.
            Some("40P01" | "40001" | "5" | "6" | "517") => {
                tracing::warn!("transaction aborted by contention");
                return Self::Contention;
            }
            _ => {}
        }
        let id = uuid::Uuid::new_v4().simple().to_string();
        let transient = matches!(err, sea_orm::DbErr::ConnectionAcquire(_) | sea_orm::DbErr::Conn(_));
        tracing::error!(error.id = %id, error = %err, "database error");
        if transient { Self::Unavailable(id) } else { Self::Internal(id) }
    }

    /// A stored value that does not parse (a column edited behind the store's back): logged
    /// under a fresh error id, like a driver error.
    pub(crate) fn corrupt(what: &'static str) -> Self {
        let id = uuid::Uuid::new_v4().simple().to_string();
        tracing::error!(error.id = %id, column = what, "stored value does not parse");
        Self::Internal(id)
    }
}

/// The driver's error code: the SQLSTATE on PostgreSQL, the (extended) result code on SQLite.
fn sqlstate(err: &sea_orm::DbErr) -> Option<String> {
    use sea_orm::{DbErr, RuntimeErr};
    if let DbErr::Exec(RuntimeErr::SqlxError(e)) | DbErr::Query(RuntimeErr::SqlxError(e)) = err
        && let sea_orm::sqlx::Error::Database(db) = std::ops::Deref::deref(e)
    {
        return db.code().map(|c| c.into_owned());
    }
    None
}

impl From<sea_orm::DbErr> for StoreError {
    fn from(err: sea_orm::DbErr) -> Self {
        Self::db(err)
    }
}

impl Classify for StoreError {
    fn issue_type(&self) -> IssueType {
        match self {
            Self::NotFound => IssueType::NotFound,
            Self::Gone { .. } => IssueType::Deleted,
            Self::VersionConflict { .. } => IssueType::Conflict,
            Self::AlreadyExists => IssueType::Duplicate,
            Self::Unavailable(_) => IssueType::Transient,
            Self::Timeout => IssueType::Timeout,
            Self::Contention => IssueType::Transient,
            Self::InvalidValue(_) => IssueType::Value,
            Self::Internal(_) | Self::UnsupportedUrl => IssueType::Exception,
        }
    }

    fn code(&self) -> &'static str {
        match self {
            Self::NotFound => "EHR-STO-001",
            Self::Gone { .. } => "EHR-STO-002",
            Self::VersionConflict { .. } => "EHR-STO-003",
            Self::AlreadyExists => "EHR-STO-004",
            Self::Unavailable(_) => "EHR-STO-005",
            Self::Internal(_) => "EHR-STO-006",
            Self::UnsupportedUrl => "EHR-STO-007",
            Self::Timeout => "EHR-STO-008",
            Self::Contention => "EHR-STO-009",
            Self::InvalidValue(_) => "EHR-STO-010",
        }
    }

    fn http_status(&self) -> u16 {
        match self {
            // RFC 9110: a failed If-Match precondition is 412, not 409.
            Self::VersionConflict { .. } => 412,
            _ => self.issue_type().http_status(),
        }
    }

    fn issues(&self) -> Vec<Issue> {
        vec![Issue::error(self.issue_type(), self.code(), self.to_string())]
    }
}
