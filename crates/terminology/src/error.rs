//! The crate's error type, classified once into FHIR issue types.
//!
//! | code | variant | issue type | where it appears |
//! |---|---|---|---|
//! | EHR-TERM-001 | `InvalidCode` | value | resource checks (error), `$validate-code` message |
//! | EHR-TERM-002 | `NotInMaster` | value | resource checks (warning in `Shape` mode, error in `Master`) |
//! | EHR-TERM-003 | `NotInCodeSystem` | value | resource checks (error: the code system is complete) |
//! | EHR-TERM-004 | `DisplayMismatch` | value | resource checks (warning), `$validate-code` message |
//! | EHR-TERM-005 | `NoMaster` | value | resource checks in `Master` mode (warning) |
//! | EHR-TERM-006 | `UnknownCode` | not-found (404) | `$lookup` |
//! | EHR-TERM-007 | `UnknownSystem` | not-found (404) | `$lookup` |
//! | EHR-TERM-008 | `UnknownValueSet` | not-found (404) | `$validate-code` |
//! | EHR-TERM-009 | `MissingParameter` | required (400) | both operations |
//! | EHR-TERM-010 | `InvalidParameter` | invalid (400) | both operations |
//! | EHR-TERM-011 | `Encoding` | invalid | loaders |
//! | EHR-TERM-012 | `BadLine` | invalid | loaders (CSV syntax and field checks, with the line) |
//! | EHR-TERM-013 | `Io` | exception | loaders |
//! | EHR-TERM-014 | `CodeSystemJson` | invalid | loaders (FHIR CodeSystem JSON) |
//! | EHR-TERM-015 | `UnknownAliasTarget` | invalid | `Terminology::with_alias` |
//! | EHR-TERM-016 | `CodeDisplayConflict` | value | resource checks (error, rule `code-display-conflict`), `$validate-code` message |

use ehr_core::{Classify, Issue, IssueType};

/// Everything that can go wrong in this crate.
#[derive(Debug, thiserror::Error)]
pub enum TerminologyError {
    #[error("`{code}` is not a valid {system} code: {reason}")]
    InvalidCode { system: &'static str, code: String, reason: &'static str },
    #[error("{system} code `{code}` is well-formed but not in the loaded master (the shipped masters are partial)")]
    NotInMaster { system: &'static str, code: String },
    #[error("{system} code `{code}` is not defined in the code system")]
    NotInCodeSystem { system: &'static str, code: String },
    /// The display sent is not repeated: it may be free text (a clinician's wording, a name).
    #[error("the display does not match {system} code `{code}` (`{expected}`)")]
    DisplayMismatch { system: &'static str, code: String, expected: String },
    #[error("no master is loaded for {system}; code `{code}` was checked for its format only")]
    NoMaster { system: &'static str, code: String },
    #[error("code `{code}` is not in code system `{system}`")]
    UnknownCode { system: String, code: String },
    #[error("code system `{0}` is not known to this server")]
    UnknownSystem(String),
    #[error("value set `{0}` is not known to this server")]
    UnknownValueSet(String),
    #[error("missing parameter: {0}")]
    MissingParameter(&'static str),
    #[error("invalid parameter `{name}`: {reason}")]
    InvalidParameter { name: String, reason: String },
    #[error("{file} line {line}: the text is neither UTF-8 nor Shift_JIS")]
    Encoding { file: String, line: usize },
    #[error("{file} line {line}: {reason}")]
    BadLine { file: String, line: usize, reason: String },
    #[error("{file}: cannot read the file")]
    Io {
        file: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{file}: {reason}")]
    CodeSystemJson { file: String, reason: String },
    #[error("`{0}` is not a code system this crate knows")]
    UnknownAliasTarget(String),
    #[error("`{code}` is not in the loaded {system} master, but its display names the concept `{known}` there")]
    CodeDisplayConflict { system: &'static str, code: String, known: String },
}

impl TerminologyError {
    /// A loader error for `line` of `file`.
    pub(crate) fn line(file: &str, line: usize, reason: impl Into<String>) -> Self {
        Self::BadLine { file: file.to_owned(), line, reason: reason.into() }
    }
}

impl Classify for TerminologyError {
    fn issue_type(&self) -> IssueType {
        match self {
            Self::InvalidCode { .. }
            | Self::NotInMaster { .. }
            | Self::NotInCodeSystem { .. }
            | Self::DisplayMismatch { .. }
            | Self::CodeDisplayConflict { .. }
            | Self::NoMaster { .. } => IssueType::Value,
            Self::UnknownCode { .. } | Self::UnknownSystem(_) | Self::UnknownValueSet(_) => IssueType::NotFound,
            Self::MissingParameter(_) => IssueType::Required,
            Self::InvalidParameter { .. }
            | Self::Encoding { .. }
            | Self::BadLine { .. }
            | Self::CodeSystemJson { .. }
            | Self::UnknownAliasTarget(_) => IssueType::Invalid,
            Self::Io { .. } => IssueType::Exception,
        }
    }

    fn code(&self) -> &'static str {
        match self {
            Self::InvalidCode { .. } => "EHR-TERM-001",
            Self::NotInMaster { .. } => "EHR-TERM-002",
            Self::NotInCodeSystem { .. } => "EHR-TERM-003",
            Self::DisplayMismatch { .. } => "EHR-TERM-004",
            Self::NoMaster { .. } => "EHR-TERM-005",
            Self::UnknownCode { .. } => "EHR-TERM-006",
            Self::UnknownSystem(_) => "EHR-TERM-007",
            Self::UnknownValueSet(_) => "EHR-TERM-008",
            Self::MissingParameter(_) => "EHR-TERM-009",
            Self::InvalidParameter { .. } => "EHR-TERM-010",
            Self::Encoding { .. } => "EHR-TERM-011",
            Self::BadLine { .. } => "EHR-TERM-012",
            Self::Io { .. } => "EHR-TERM-013",
            Self::CodeSystemJson { .. } => "EHR-TERM-014",
            Self::UnknownAliasTarget(_) => "EHR-TERM-015",
            Self::CodeDisplayConflict { .. } => "EHR-TERM-016",
        }
    }

    fn issues(&self) -> Vec<Issue> {
        match self {
            // The OS error text and the server's paths stay in the log.
            Self::Io { .. } => vec![Issue::error(self.issue_type(), self.code(), "cannot read a master file")],
            _ => vec![Issue::error(self.issue_type(), self.code(), self.to_string())],
        }
    }
}
