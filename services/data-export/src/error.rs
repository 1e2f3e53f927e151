//! The data-export service's errors, classified once into FHIR issue types.

use ehr_core::{Classify, IssueType};
use ehr_store::StoreError;

/// Why an export, import or `$everything` request failed.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Fhir(#[from] ehr_fhir::FhirError),
    // ── export ──
    // ── import ──
    // ── $everything ──
}

impl Classify for ExportError {
    fn issue_type(&self) -> IssueType {
        match self {
            Self::Store(e) => e.issue_type(),
            Self::Fhir(e) => e.issue_type(),
        }
    }

    fn code(&self) -> &'static str {
        match self {
            Self::Store(e) => e.code(),
            Self::Fhir(e) => e.code(),
        }
    }

    fn http_status(&self) -> u16 {
        match self {
            Self::Store(e) => e.http_status(),
            Self::Fhir(e) => e.http_status(),
            #[allow(unreachable_patterns)]
            _ => self.issue_type().http_status(),
        }
    }

    fn issues(&self) -> Vec<ehr_core::Issue> {
        match self {
            Self::Store(e) => e.issues(),
            Self::Fhir(e) => e.issues(),
            #[allow(unreachable_patterns)]
            _ => vec![ehr_core::Issue::error(self.issue_type(), self.code(), self.to_string())],
        }
    }
}
