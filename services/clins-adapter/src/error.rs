//! The clins-adapter's errors, classified once into FHIR issue types (and so HTTP statuses).
//!
//! | code | issue type | status | meaning |
//! |---|---|---|---|
//! | EHR-CLN-001 | exception | 500 | settings unusable at start |
//! | EHR-CLN-002 | invalid | 400 | request body malformed |
//! | EHR-CLN-003 | business-rule | 422 | the record lacks what the Bundle needs, or nothing to submit |
//! | EHR-CLN-004 | (per issue) | 422 | the built Bundle is invalid: the validation issues, rule + location |
//! | EHR-CLN-005 | not-found | 404 | no such submission / patient / resource in this tenant (a requested resource not of this patient included) |
//! | EHR-CLN-006 | conflict | 409 | the submission is not in a state that allows this |
//! | EHR-CLN-007 | transient | 503 | no national service configured, or it did not answer |

use ehr_core::{Classify, Issue, IssueType};
use ehr_store::StoreError;

/// Why a clins-adapter operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ClinsAdapterError {
    #[error("clins settings: {0}")]
    Settings(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("invalid request: {0}")]
    Invalid(String),
    #[error("{0}")]
    Build(#[from] ehr_clins::ClinsError),
    #[error("the Bundle is invalid ({} issue(s))", .0.len())]
    Validation(Vec<Issue>),
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error("{0}")]
    Conflict(&'static str),
    #[error("the national service: {0}")]
    Unavailable(String),
}

impl Classify for ClinsAdapterError {
    fn issue_type(&self) -> IssueType {
        match self {
            Self::Settings(_) => IssueType::Exception,
            Self::Store(e) => e.issue_type(),
            Self::Invalid(_) => IssueType::Invalid,
            Self::Build(ehr_clins::ClinsError::Invalid(_)) => IssueType::Invalid,
            Self::Build(ehr_clins::ClinsError::NotFound(_)) => IssueType::NotFound,
            Self::Build(_) => IssueType::BusinessRule,
            Self::Validation(_) => IssueType::BusinessRule,
            Self::NotFound(_) => IssueType::NotFound,
            Self::Conflict(_) => IssueType::Conflict,
            Self::Unavailable(_) => IssueType::Transient,
        }
    }

    fn code(&self) -> &'static str {
        match self {
            Self::Settings(_) => "EHR-CLN-001",
            Self::Store(e) => e.code(),
            Self::Invalid(_) => "EHR-CLN-002",
            Self::Build(ehr_clins::ClinsError::NotFound(_)) => "EHR-CLN-005",
            Self::Build(_) => "EHR-CLN-003",
            Self::Validation(_) => "EHR-CLN-004",
            Self::NotFound(_) => "EHR-CLN-005",
            Self::Conflict(_) => "EHR-CLN-006",
            Self::Unavailable(_) => "EHR-CLN-007",
        }
    }

    fn http_status(&self) -> u16 {
        match self {
            Self::Store(e) => e.http_status(),
            // A Bundle that fails its profile is unprocessable content, whatever each issue's type.
            Self::Validation(_) => 422,
            _ => self.issue_type().http_status(),
        }
    }

    fn issues(&self) -> Vec<Issue> {
        match self {
            Self::Store(e) => e.issues(),
            Self::Validation(issues) => issues.clone(),
            _ => vec![Issue::error(self.issue_type(), self.code(), self.to_string())],
        }
    }
}
