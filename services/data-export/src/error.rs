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
    /// A kick-off without `Prefer: respond-async`: Bulk Data export is asynchronous only.
    #[error("$export requires the header Prefer: respond-async")]
    ExportPreferAsync,
    /// A kick-off whose `Accept` excludes `application/fhir+json` (the error format).
    #[error("$export answers application/fhir+json only; Accept was `{0}`")]
    ExportAccept(String),
    #[error(
        "_outputFormat `{0}` is not supported; use application/fhir+ndjson, application/fhir+json, application/fhir+xml or text/csv"
    )]
    ExportFormat(String),
    /// `_type` (or a `_typeFilter`) names a type this server does not export.
    #[error("`{0}` is not a resource type this server exports")]
    ExportType(String),
    /// A Patient- or Group-level export asked for a type outside the Patient compartment.
    #[error("`{0}` is not in the Patient compartment, which Patient and Group exports cover")]
    ExportNotInCompartment(String),
    /// A malformed `_typeFilter`; the message names types and parameters, never values.
    #[error("_typeFilter: {0}")]
    ExportTypeFilter(String),
    #[error("_since must be a FHIR instant")]
    ExportSince,
    /// A malformed kick-off parameter or body.
    #[error("{0}")]
    ExportParam(String),
    /// A kick-off parameter of the Bulk Data IG this server does not implement.
    #[error("$export parameter `{0}` is not supported")]
    ExportUnsupported(String),
    #[error("the token grants read and search on none of the resource types this export covers")]
    ExportNoReadableType,
    /// No such job for this caller (another tenant's or another requester's job included).
    #[error("export job not found")]
    ExportJobNotFound,
    #[error("export file not found")]
    ExportFileNotFound,
    #[error("group not found")]
    ExportGroupNotFound,
    /// The job ended in failure; the reason names no patient data.
    #[error("the export job failed: {0}")]
    ExportFailed(String),
    /// A file of the export could not be written or read; the detail is logged under the id.
    #[error("export files cannot be written or read (error id {0})")]
    ExportIo(String),
    /// The requester has this many jobs queued or running already (the IG's 429).
    #[error("{0} export jobs of this caller are queued or running; wait for one to complete, or cancel one")]
    ExportTooManyJobs(u64),
    // ── import ──
    /// The body's media type is none of those `$import` reads.
    #[error("unsupported content type for $import: {0}")]
    ImportMediaType(String),
    #[error("the import body is larger than the limit of {0} bytes")]
    ImportTooLarge(usize),
    #[error("the import body is empty")]
    ImportEmpty,
    /// `_type` names a type this server does not store, or `text/csv` came without one type.
    #[error("_type: {0}")]
    ImportType(String),
    #[error("the multipart/form-data body cannot be read: {0}")]
    ImportMultipart(&'static str),
    /// Records or files failed: nothing was stored. One issue per failing record or file.
    #[error("the import was rejected; nothing was stored")]
    ImportRejected { status: u16, issues: Vec<ehr_core::Issue> },
    // ── $everything ──
    /// A parameter of `$everything` is malformed.
    #[error("{0}")]
    EverythingParam(String),
    /// A parameter of `$everything` this server does not implement.
    #[error("$everything parameter `{0}` is not supported")]
    EverythingUnsupported(String),
    #[error("the _cursor of this page link is not valid for these parameters")]
    EverythingCursor,
    #[error("$everything is served on Patient only")]
    EverythingType,
}

impl Classify for ExportError {
    fn issue_type(&self) -> IssueType {
        match self {
            Self::Store(e) => e.issue_type(),
            Self::Fhir(e) => e.issue_type(),
            // ── export ──
            Self::ExportPreferAsync
            | Self::ExportType(_)
            | Self::ExportNotInCompartment(_)
            | Self::ExportTypeFilter(_)
            | Self::ExportSince
            | Self::ExportParam(_) => IssueType::Invalid,
            Self::ExportAccept(_) | Self::ExportFormat(_) | Self::ExportUnsupported(_) => IssueType::NotSupported,
            Self::ExportNoReadableType => IssueType::Forbidden,
            Self::ExportJobNotFound | Self::ExportFileNotFound | Self::ExportGroupNotFound => IssueType::NotFound,
            Self::ExportFailed(_) | Self::ExportIo(_) => IssueType::Exception,
            Self::ExportTooManyJobs(_) => IssueType::Throttled,
            // ── import ──
            Self::ImportMediaType(_) => IssueType::NotSupported,
            Self::ImportTooLarge(_) => IssueType::TooCostly,
            Self::ImportEmpty | Self::ImportType(_) | Self::ImportRejected { .. } => IssueType::Invalid,
            Self::ImportMultipart(_) => IssueType::Structure,
            // ── $everything ──
            Self::EverythingParam(_) | Self::EverythingCursor => IssueType::Invalid,
            Self::EverythingUnsupported(_) => IssueType::NotSupported,
            Self::EverythingType => IssueType::NotFound,
        }
    }

    fn code(&self) -> &'static str {
        match self {
            Self::Store(e) => e.code(),
            Self::Fhir(e) => e.code(),
            // ── export ──
            Self::ExportPreferAsync => "EHR-EXP-001",
            Self::ExportAccept(_) => "EHR-EXP-002",
            Self::ExportFormat(_) => "EHR-EXP-003",
            Self::ExportType(_) => "EHR-EXP-004",
            Self::ExportNotInCompartment(_) => "EHR-EXP-005",
            Self::ExportTypeFilter(_) => "EHR-EXP-006",
            Self::ExportSince => "EHR-EXP-007",
            Self::ExportParam(_) => "EHR-EXP-008",
            Self::ExportUnsupported(_) => "EHR-EXP-009",
            Self::ExportNoReadableType => "EHR-EXP-010",
            Self::ExportJobNotFound => "EHR-EXP-011",
            Self::ExportFileNotFound => "EHR-EXP-012",
            Self::ExportGroupNotFound => "EHR-EXP-013",
            Self::ExportFailed(_) => "EHR-EXP-014",
            Self::ExportIo(_) => "EHR-EXP-015",
            Self::ExportTooManyJobs(_) => "EHR-EXP-016",
            // ── import ──
            Self::ImportMediaType(_) => "EHR-EXP-101",
            Self::ImportTooLarge(_) => "EHR-EXP-102",
            Self::ImportEmpty => "EHR-EXP-103",
            Self::ImportType(_) => "EHR-EXP-104",
            Self::ImportMultipart(_) => "EHR-EXP-105",
            Self::ImportRejected { .. } => "EHR-EXP-106",
            // ── $everything ──
            Self::EverythingParam(_) => "EHR-EXP-201",
            Self::EverythingUnsupported(_) => "EHR-EXP-202",
            Self::EverythingCursor => "EHR-EXP-203",
            Self::EverythingType => "EHR-EXP-204",
        }
    }

    fn http_status(&self) -> u16 {
        match self {
            Self::Store(e) => e.http_status(),
            Self::Fhir(e) => e.http_status(),
            // ── import ──
            Self::ImportMediaType(_) => 415,
            Self::ImportTooLarge(_) => 413,
            Self::ImportRejected { status, .. } => *status,
            #[allow(unreachable_patterns)]
            _ => self.issue_type().http_status(),
        }
    }

    fn issues(&self) -> Vec<ehr_core::Issue> {
        match self {
            Self::Store(e) => e.issues(),
            Self::Fhir(e) => e.issues(),
            // ── import ──
            Self::ImportRejected { issues, .. } => issues.clone(),
            #[allow(unreachable_patterns)]
            _ => vec![ehr_core::Issue::error(self.issue_type(), self.code(), self.to_string())],
        }
    }
}
