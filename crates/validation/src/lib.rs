//! Validation as the national services do it: one call that runs every layer on a resource.
//!
//! 1. **Profiles** (`ehr_fhir::validate::Validator`): base R4 structure, the JP Core / JP-CLINS
//!    profiles named in `meta.profile` (plus the caller's `profile`, as if it were listed there):
//!    cardinality, fixed/pattern values (legacy OIDs equal to their URLs), slicing, bindings and
//!    the IG's FHIRPath invariants, whose issues carry the invariant key as their rule.
//! 2. **Hand rules** of the same validator for what the snapshots do not say (fullUrl form and
//!    uniqueness, reference resolution in documents, R1011, the lab coding pattern, R2152 for
//!    document Bundles, the health-checkup report structure, one resource type per CLINS Bundle,
//!    the bundle identifier's institution number); rule ids and EHR-VAL-020…037.
//!
//! This is the only place a Bundle's content is checked: the CLINS adapter and simulator call it
//! and keep only what concerns the submission itself (`ehr_clins::rules`).
//! 3. **Master codes** (`ehr_terminology::Terminology::check_resource`): code shapes, codes
//!    missing from the loaded masters, display mismatches, and a missing code whose display
//!    names another concept (rule `code-display-conflict`).
//!
//! What is checked, the rule table and the readings on open points: `docs/national/validation.md`.
//!
//! | code | variant | issue type | HTTP |
//! |---|---|---|---|
//! | EHR-VLD-001 | `Terminology` | exception | 500 |
//! | EHR-VLD-002 | `NotAResource` | structure | 400 |
//! | EHR-VLD-003 | `WrongType` | invalid | 400 |
//! | EHR-VLD-004 | `UnknownType` | not-found | 404 |
//! | EHR-VLD-005 | `BadParameter` | invalid | 400 |
//! | EHR-VLD-006 | `IdMismatch` | invalid | 400 |

pub mod http;

use std::sync::Arc;

use ehr_core::{Classify, Issue, IssueType, Severity};
use ehr_fhir::validate::Validator;
use ehr_terminology::{Terminology, TerminologyError};
use serde_json::Value;

/// Everything that can go wrong around a validation (not the findings, which are issues).
#[derive(Debug, thiserror::Error)]
pub enum ValidationError {
    #[error("the built-in terminology cannot be loaded")]
    Terminology(#[from] TerminologyError),
    #[error("the body is neither a FHIR resource nor a Parameters with a resource parameter")]
    NotAResource,
    #[error("the resource is a {found}, but the request path names {expected}")]
    WrongType { expected: String, found: String },
    #[error("resource type {0} is not served here")]
    UnknownType(String),
    #[error("invalid parameter `{name}`: {reason}")]
    BadParameter { name: &'static str, reason: &'static str },
    #[error("the resource id differs from the id in the request path")]
    IdMismatch,
    #[error("the validation was interrupted")]
    Interrupted,
}

impl Classify for ValidationError {
    fn issue_type(&self) -> IssueType {
        match self {
            Self::Terminology(_) | Self::Interrupted => IssueType::Exception,
            Self::NotAResource => IssueType::Structure,
            Self::WrongType { .. } | Self::BadParameter { .. } | Self::IdMismatch => IssueType::Invalid,
            Self::UnknownType(_) => IssueType::NotFound,
        }
    }

    fn code(&self) -> &'static str {
        match self {
            Self::Terminology(_) => "EHR-VLD-001",
            Self::NotAResource => "EHR-VLD-002",
            Self::WrongType { .. } => "EHR-VLD-003",
            Self::UnknownType(_) => "EHR-VLD-004",
            Self::BadParameter { .. } => "EHR-VLD-005",
            Self::IdMismatch => "EHR-VLD-006",
            Self::Interrupted => "EHR-VLD-007",
        }
    }
}

/// Profile validation, the JP-CLINS hand rules and the master codes together.
#[derive(Clone)]
pub struct FullValidator {
    validator: Arc<Validator>,
    terminology: Terminology,
}

impl FullValidator {
    /// A validator over shared definitions and masters.
    pub fn new(validator: Arc<Validator>, terminology: Terminology) -> Self {
        Self { validator, terminology }
    }

    /// The embedded definitions and the master subset shipped with `ehr-terminology`.
    pub fn builtin() -> Result<Self, ValidationError> {
        Ok(Self::new(Arc::new(Validator::new()), Terminology::builtin()?))
    }

    /// The masters codes are checked against (load official ones with `Terminology::load_dir`).
    pub fn terminology(&self) -> &Terminology {
        &self.terminology
    }

    /// The issues of `resource` (also against `profile` when given, as if it were in
    /// `meta.profile`): errors, warnings and information, profile layer first.
    pub fn validate(&self, resource: &Value, profile: Option<&str>) -> Vec<Issue> {
        let profiles: Vec<&str> = profile.into_iter().collect();
        let mut issues = self.validator.validate_as(resource, &profiles);
        issues.extend(self.terminology.check_resource(resource));
        issues
    }
}

/// Whether any issue is an error (or fatal): the resource does not conform.
pub fn has_errors(issues: &[Issue]) -> bool {
    issues.iter().any(|i| matches!(i.severity, Severity::Error | Severity::Fatal))
}

#[cfg(test)]
mod tests;
