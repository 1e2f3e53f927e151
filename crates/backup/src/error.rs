//! The crate's error type. Messages name tenants, sections, chunk and record numbers, key ids —
//! never resource content, user data or key material.

use ehr_core::{Classify, IssueType};
use ehr_store::StoreError;

/// Why an archive could not be written, read, verified or restored.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    #[error("not an ehr backup archive (unknown magic bytes)")]
    NotAnArchive,
    #[error("unsupported archive format version {0} (this ehr reads version 1)")]
    UnsupportedVersion(u16),
    #[error("the archive header is malformed: {0}")]
    BadHeader(String),
    #[error("the archive is truncated: {0}")]
    Truncated(&'static str),
    #[error("the archive is damaged or was altered: {0}")]
    Corrupt(String),
    #[error("checksum mismatch: the archive was damaged or altered after it was written")]
    Checksum,
    #[error("the archive's SHA-256 is {actual}, not the {expected} recorded for it")]
    UnexpectedChecksum { expected: String, actual: String },
    #[error("chunk {0} does not authenticate: the archive was damaged or altered")]
    Authentication(u64),
    #[error("wrong key: the archive was encrypted with key {expected}, the given key is {given}")]
    WrongKey { expected: String, given: String },
    #[error("{0}")]
    KeyRequired(&'static str),
    #[error("invalid key: {0}")]
    InvalidKey(&'static str),
    #[error("the archive holds tenant `{found}`, not `{expected}`")]
    WrongTenant { expected: String, found: String },
    #[error("record {line}: {what}")]
    Record { line: u64, what: String },
    #[error("the archive holds {found} {section} record(s), its header says {header}")]
    CountMismatch { section: &'static str, header: u64, found: u64 },
    #[error(
        "the audit chain of tenant `{tenant}` does not verify ({problems} problem(s), first: {first}); \
         `ehr audit verify` reports the same on the source database"
    )]
    AuditChain { tenant: String, problems: usize, first: String },
    #[error("tenant `{tenant}` already has data in the target database ({what}); nothing was restored")]
    TenantExists { tenant: String, what: String },
    #[error("tenant `{0}` is not registered and has no data")]
    NoSuchTenant(String),
    #[error("the restored tenant does not verify in the database ({0}); nothing was restored")]
    RestoreCheck(String),
    #[error(
        "the archive was written by ehr {app_version} at schema level {schema}; this ehr knows schema level \
         {ours}: restore or verify it with that version of ehr or a newer one"
    )]
    NewerArchive { schema: u64, ours: u32, app_version: String },
    #[error(
        "the archive holds the {archive} database's sections of its tenant, but the target is given as the \
         {target} database (--database); restore it into the matching database"
    )]
    WrongDatabase { archive: &'static str, target: &'static str },
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl BackupError {
    /// A record that does not parse: its number and serde's category, never its text (which
    /// may hold patient data).
    pub(crate) fn record(line: u64, err: &serde_json::Error) -> Self {
        let what = match err.classify() {
            serde_json::error::Category::Syntax | serde_json::error::Category::Eof => "is not JSON",
            serde_json::error::Category::Data => "is not a record of this format",
            serde_json::error::Category::Io => "cannot be read",
        };
        Self::Record { line, what: format!("{what} (column {})", err.column()) }
    }
}

impl Classify for BackupError {
    fn issue_type(&self) -> IssueType {
        match self {
            Self::Io(_) => IssueType::Exception,
            Self::Store(e) => e.issue_type(),
            Self::TenantExists { .. } => IssueType::Duplicate,
            Self::NoSuchTenant(_) => IssueType::NotFound,
            Self::WrongKey { .. } | Self::KeyRequired(_) | Self::InvalidKey(_) => IssueType::Security,
            Self::AuditChain { .. } | Self::RestoreCheck(_) => IssueType::Invariant,
            _ => IssueType::Invalid,
        }
    }

    fn code(&self) -> &'static str {
        match self {
            Self::Io(_) => "EHR-BAK-001",
            Self::NotAnArchive => "EHR-BAK-002",
            Self::UnsupportedVersion(_) => "EHR-BAK-003",
            Self::BadHeader(_) => "EHR-BAK-004",
            Self::Truncated(_) => "EHR-BAK-005",
            Self::Corrupt(_) => "EHR-BAK-006",
            Self::Checksum => "EHR-BAK-007",
            Self::UnexpectedChecksum { .. } => "EHR-BAK-008",
            Self::Authentication(_) => "EHR-BAK-009",
            Self::WrongKey { .. } => "EHR-BAK-010",
            Self::KeyRequired(_) => "EHR-BAK-011",
            Self::InvalidKey(_) => "EHR-BAK-012",
            Self::WrongTenant { .. } => "EHR-BAK-013",
            Self::Record { .. } => "EHR-BAK-014",
            Self::CountMismatch { .. } => "EHR-BAK-015",
            Self::AuditChain { .. } => "EHR-BAK-016",
            Self::TenantExists { .. } => "EHR-BAK-017",
            Self::NoSuchTenant(_) => "EHR-BAK-018",
            Self::RestoreCheck(_) => "EHR-BAK-019",
            Self::NewerArchive { .. } => "EHR-BAK-020",
            Self::WrongDatabase { .. } => "EHR-BAK-021",
            Self::Store(e) => e.code(),
        }
    }
}
