//! The crate's error type: failures of FHIR REST semantics (as opposed to storage or auth).

use ehr_core::{Classify, IssueType};

/// FHIR RESTful API errors.
#[derive(Debug, thiserror::Error)]
pub enum RestError {
    #[error("resource type `{0}` is not served by this endpoint")]
    UnknownType(String),
    #[error("resourceType in the body is `{found}`, the URL says `{expected}`")]
    TypeMismatch { expected: String, found: String },
    #[error("the resource id in the body must equal the id in the URL")]
    IdMismatch,
    #[error("update requires the resource id in the body")]
    MissingId,
    #[error("invalid resource id")]
    InvalidId,
    #[error("invalid version id")]
    InvalidVersion,
    #[error("invalid If-Match header: expected W/\"<version>\"")]
    InvalidIfMatch,
    #[error("the condition matched {0} resources; it must match at most one")]
    MultipleMatches(usize),
    #[error(
        "the condition matched no resource, and the body's id names an existing resource the condition did not select"
    )]
    ConditionalIdConflict,
    #[error("the conditional operation needs search criteria")]
    EmptyCondition,
    #[error("invalid JSON Patch: {0}")]
    InvalidPatch(String),
    #[error("the patch changes resourceType or id")]
    PatchChangesIdentity,
    #[error("invalid bundle: {0}")]
    InvalidBundle(String),
    #[error("bundle entry {index}: {reason}")]
    BundleEntry { index: usize, reason: String },
    #[error("invalid request: {0}")]
    Invalid(String),
    #[error("this server answers in application/fhir+json or application/fhir+xml (`_format=json` or `_format=xml`)")]
    NotAcceptable,
}

impl Classify for RestError {
    fn issue_type(&self) -> IssueType {
        match self {
            Self::UnknownType(_) => IssueType::NotSupported,
            Self::TypeMismatch { .. } | Self::IdMismatch | Self::MissingId | Self::InvalidId | Self::InvalidVersion => {
                IssueType::Invalid
            }
            Self::InvalidIfMatch | Self::EmptyCondition | Self::Invalid(_) => IssueType::Invalid,
            Self::MultipleMatches(_) => IssueType::Duplicate,
            Self::ConditionalIdConflict => IssueType::Conflict,
            Self::InvalidPatch(_) | Self::PatchChangesIdentity => IssueType::Invalid,
            Self::InvalidBundle(_) | Self::BundleEntry { .. } => IssueType::Invalid,
            Self::NotAcceptable => IssueType::NotSupported,
        }
    }

    fn code(&self) -> &'static str {
        match self {
            Self::UnknownType(_) => "EHR-REST-001",
            Self::TypeMismatch { .. } => "EHR-REST-002",
            Self::IdMismatch => "EHR-REST-003",
            Self::MissingId => "EHR-REST-004",
            Self::InvalidId => "EHR-REST-005",
            Self::InvalidVersion => "EHR-REST-006",
            Self::InvalidIfMatch => "EHR-REST-007",
            Self::MultipleMatches(_) => "EHR-REST-008",
            Self::EmptyCondition => "EHR-REST-009",
            Self::InvalidPatch(_) => "EHR-REST-010",
            Self::PatchChangesIdentity => "EHR-REST-011",
            Self::InvalidBundle(_) => "EHR-REST-012",
            Self::BundleEntry { .. } => "EHR-REST-013",
            Self::Invalid(_) => "EHR-REST-015",
            Self::NotAcceptable => "EHR-REST-016",
            Self::ConditionalIdConflict => "EHR-REST-017",
        }
    }

    fn http_status(&self) -> u16 {
        match self {
            // R4 3.1.0.8: a conditional operation matching several resources fails with 412.
            Self::MultipleMatches(_) => 412,
            Self::UnknownType(_) => 404,
            Self::NotAcceptable => 406,
            _ => self.issue_type().http_status(),
        }
    }
}
