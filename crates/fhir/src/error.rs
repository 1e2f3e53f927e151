//! The crate's error type.

use ehr_core::{Classify, IssueType};

/// Errors of FHIR-level processing (search parsing, resource shape).
#[derive(Debug, thiserror::Error)]
pub enum FhirError {
    #[error("unknown search parameter `{0}`")]
    UnknownParameter(String),
    #[error("invalid value for search parameter `{param}`: {reason}")]
    InvalidSearchValue { param: String, reason: String },
    #[error("{0}")]
    Unsupported(String),
    /// Malformed or non-FHIR XML; the message names the line/element, never element content.
    #[error("FHIR XML: {0}")]
    Xml(String),
    /// A CSV table that does not follow the documented layout (docs/formats/csv.md).
    #[error("CSV: {0}")]
    Csv(String),
}

impl Classify for FhirError {
    fn issue_type(&self) -> IssueType {
        match self {
            Self::UnknownParameter(_) | Self::InvalidSearchValue { .. } | Self::Xml(_) | Self::Csv(_) => {
                IssueType::Invalid
            }
            Self::Unsupported(_) => IssueType::NotSupported,
        }
    }

    fn code(&self) -> &'static str {
        match self {
            Self::UnknownParameter(_) => "EHR-FHIR-001",
            Self::InvalidSearchValue { .. } => "EHR-FHIR-002",
            Self::Unsupported(_) => "EHR-FHIR-003",
            Self::Xml(_) => "EHR-FHIR-004",
            Self::Csv(_) => "EHR-FHIR-005",
        }
    }
}
