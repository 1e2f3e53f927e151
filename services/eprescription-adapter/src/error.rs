//! The adapter's errors, classified once into FHIR issue types (→ OperationOutcome).

use ehr_core::{Classify, Issue, IssueType};
use ehr_store::StoreError;

/// Why an e-prescription operation failed. Messages name resources and elements, never patient
/// data.
#[derive(Debug, thiserror::Error)]
pub enum EPrescriptionAdapterError {
    #[error("eprescription settings: {0}")]
    Settings(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("no such e-prescription")]
    NotFound,
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// What the prescription lacks, one item per missing element.
    #[error("the prescription lacks: {}", .0.join("; "))]
    Incomplete(Vec<String>),
    #[error("the e-prescription is {state}: {why}")]
    WrongState { state: String, why: &'static str },
    #[error(
        "the duplicate-medication check found {0} finding(s); fix the prescription (or acknowledge the findings) before registering"
    )]
    Findings(usize),
    #[error(
        "the e-prescription service is not reachable or did not answer in time; retry later (a retry is answered like the first request, nothing happens twice)"
    )]
    ServiceUnavailable,
    #[error("the e-prescription service is not configured (eprescription.url)")]
    NotConfigured,
    #[error("the e-prescription service refused the request: {code} {message}")]
    Refused { code: String, message: String, details: Vec<String> },
    #[error("no signer is configured (eprescription.signer_key_file/signer_cert_file, or generate_signer)")]
    NoSigner,
    #[error("e-prescription data: {0}")]
    Eps(#[from] ehr_eprescription::EpsError),
    #[error("the dispensing result does not make a valid MedicationDispense: {0}")]
    InvalidDispense(String),
}

impl Classify for EPrescriptionAdapterError {
    fn issue_type(&self) -> IssueType {
        match self {
            Self::Store(e) => e.issue_type(),
            Self::Settings(_) | Self::Eps(_) | Self::InvalidDispense(_) => IssueType::Exception,
            Self::NotFound => IssueType::NotFound,
            Self::InvalidRequest(_) => IssueType::Invalid,
            Self::Incomplete(_) => IssueType::Required,
            Self::WrongState { .. } => IssueType::Conflict,
            Self::Findings(_) | Self::Refused { .. } => IssueType::BusinessRule,
            Self::ServiceUnavailable | Self::NotConfigured => IssueType::Transient,
            Self::NoSigner => IssueType::Exception,
        }
    }

    fn code(&self) -> &'static str {
        match self {
            Self::Store(e) => e.code(),
            Self::Settings(_) => "EHR-EPS-001",
            Self::NotFound => "EHR-EPS-002",
            Self::InvalidRequest(_) => "EHR-EPS-003",
            Self::Incomplete(_) => "EHR-EPS-004",
            Self::WrongState { .. } => "EHR-EPS-005",
            Self::Findings(_) => "EHR-EPS-006",
            Self::ServiceUnavailable => "EHR-EPS-007",
            Self::NotConfigured => "EHR-EPS-008",
            Self::Refused { .. } => "EHR-EPS-009",
            Self::NoSigner => "EHR-EPS-010",
            Self::Eps(_) => "EHR-EPS-011",
            Self::InvalidDispense(_) => "EHR-EPS-012",
        }
    }

    fn http_status(&self) -> u16 {
        match self {
            Self::Store(e) => e.http_status(),
            Self::Incomplete(_) => 422,
            Self::Eps(ehr_eprescription::EpsError::Field { .. } | ehr_eprescription::EpsError::Incomplete(_)) => 422,
            Self::ServiceUnavailable | Self::NotConfigured => 503,
            _ => self.issue_type().http_status(),
        }
    }

    fn issues(&self) -> Vec<Issue> {
        match self {
            Self::Store(e) => e.issues(),
            Self::Incomplete(missing) => missing
                .iter()
                .map(|m| Issue::error(IssueType::Required, self.code(), format!("missing: {m}")))
                .collect(),
            Self::Refused { details, .. } if !details.is_empty() => {
                let mut v = vec![Issue::error(self.issue_type(), self.code(), self.to_string())];
                v.extend(details.iter().map(|d| Issue::error(IssueType::Invalid, self.code(), d.clone())));
                v
            }
            _ => vec![Issue::error(self.issue_type(), self.code(), self.to_string())],
        }
    }
}
