//! The lab interface's errors, classified once into FHIR issue types.

use ehr_core::{Classify, IssueType};
use ehr_store::StoreError;

/// Why a lab-interface operation failed.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the lab order lacks {0}")]
    OrderIncomplete(&'static str),
    #[error("no lab endpoint of this tenant takes this order (no endpoint for its performer and no default)")]
    NoEndpoint,
    #[error("no such lab endpoint")]
    EndpointNotFound,
    #[error("invalid lab endpoint: {0}")]
    InvalidEndpoint(String),
    #[error("this pair of facilities (lab facility, our facility) is not available; ask the system administrator")]
    EndpointClash,
    #[error("no such message")]
    MessageNotFound,
    #[error(
        "only dead or rejected outbound messages can be replayed (an acknowledged order would be performed twice; inbound messages are replayed by the lab resending)"
    )]
    NotReplayable,
    #[error("HL7 v2: {0}")]
    Hl7(#[from] ehr_hl7v2::Hl7Error),
    #[error("the result bundle is invalid: {0}")]
    InvalidBundle(String),
    #[error("the result answers no order of this tenant: {0}")]
    UnknownOrder(String),
    #[error("file transport: {0}")]
    File(String),
}

impl Classify for LabError {
    fn issue_type(&self) -> IssueType {
        match self {
            Self::Store(e) => e.issue_type(),
            Self::OrderIncomplete(_) | Self::NoEndpoint | Self::UnknownOrder(_) => IssueType::BusinessRule,
            Self::EndpointNotFound | Self::MessageNotFound => IssueType::NotFound,
            Self::InvalidEndpoint(_) | Self::InvalidBundle(_) | Self::Hl7(_) => IssueType::Invalid,
            Self::EndpointClash => IssueType::Duplicate,
            Self::NotReplayable => IssueType::BusinessRule,
            Self::File(_) => IssueType::Exception,
        }
    }

    fn code(&self) -> &'static str {
        match self {
            Self::Store(e) => e.code(),
            Self::OrderIncomplete(_) => "EHR-LAB-001",
            Self::NoEndpoint => "EHR-LAB-002",
            Self::EndpointNotFound => "EHR-LAB-003",
            Self::InvalidEndpoint(_) => "EHR-LAB-004",
            Self::EndpointClash => "EHR-LAB-005",
            Self::MessageNotFound => "EHR-LAB-006",
            Self::NotReplayable => "EHR-LAB-007",
            Self::Hl7(_) => "EHR-LAB-008",
            Self::InvalidBundle(_) => "EHR-LAB-009",
            Self::UnknownOrder(_) => "EHR-LAB-010",
            Self::File(_) => "EHR-LAB-011",
        }
    }

    fn http_status(&self) -> u16 {
        match self {
            Self::Store(e) => e.http_status(),
            _ => self.issue_type().http_status(),
        }
    }

    fn issues(&self) -> Vec<ehr_core::Issue> {
        match self {
            Self::Store(e) => e.issues(),
            _ => vec![ehr_core::Issue::error(self.issue_type(), self.code(), self.to_string())],
        }
    }
}
