//! Error classification and OperationOutcome rendering, in one place.
//!
//! Every crate has one error enum; each implements [`Classify`], which gives every variant a FHIR
//! issue type and a stable code (`EHR-STO-003`). The issue type alone decides the HTTP status:
//!
//! | issue type | HTTP |
//! |---|---|
//! | invalid, structure, required, value, invariant | 400 (422 for profile failures, chosen by the caller) |
//! | login, security (bad or missing token) | 401 |
//! | forbidden | 403 |
//! | not-found | 404 |
//! | deleted | 410 |
//! | conflict, duplicate | 409 (412 for a version conflict, chosen by the caller) |
//! | not-supported | 400 (405/415 chosen by the caller) |
//! | too-costly | 400 |
//! | throttled | 429 |
//! | transient, timeout | 503 |
//! | processing, exception | 500 |

use serde_json::{Value, json};

/// FHIR R4 `IssueType` codes used by this server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IssueType {
    Invalid,
    Structure,
    Required,
    Value,
    Invariant,
    Security,
    Login,
    Forbidden,
    NotFound,
    Deleted,
    Conflict,
    Duplicate,
    /// `business-rule`: the content is valid but breaks a rule of the server's workflow (a
    /// status transition, a slot already booked elsewhere): 422.
    BusinessRule,
    NotSupported,
    TooCostly,
    Processing,
    Throttled,
    Transient,
    Timeout,
    Exception,
    Informational,
}

impl IssueType {
    /// The FHIR code.
    pub fn code(self) -> &'static str {
        match self {
            Self::Invalid => "invalid",
            Self::Structure => "structure",
            Self::Required => "required",
            Self::Value => "value",
            Self::Invariant => "invariant",
            Self::Security => "security",
            Self::Login => "login",
            Self::Forbidden => "forbidden",
            Self::NotFound => "not-found",
            Self::Deleted => "deleted",
            Self::Conflict => "conflict",
            Self::Duplicate => "duplicate",
            Self::BusinessRule => "business-rule",
            Self::NotSupported => "not-supported",
            Self::TooCostly => "too-costly",
            Self::Processing => "processing",
            Self::Throttled => "throttled",
            Self::Transient => "transient",
            Self::Timeout => "timeout",
            Self::Exception => "exception",
            Self::Informational => "informational",
        }
    }

    /// The HTTP status this issue type maps to by default (see the module table).
    pub fn http_status(self) -> u16 {
        match self {
            Self::Invalid
            | Self::Structure
            | Self::Required
            | Self::Value
            | Self::Invariant
            | Self::NotSupported
            | Self::TooCostly => 400,
            Self::Security | Self::Login => 401,
            Self::Forbidden => 403,
            Self::NotFound => 404,
            Self::Deleted => 410,
            Self::Conflict | Self::Duplicate => 409,
            Self::BusinessRule => 422,
            Self::Throttled => 429,
            Self::Transient | Self::Timeout => 503,
            Self::Processing | Self::Exception => 500,
            Self::Informational => 200,
        }
    }
}

/// `OperationOutcome.issue.severity`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Fatal,
    Error,
    Warning,
    Information,
}

impl Severity {
    /// The FHIR code.
    pub fn code(self) -> &'static str {
        match self {
            Self::Fatal => "fatal",
            Self::Error => "error",
            Self::Warning => "warning",
            Self::Information => "information",
        }
    }
}

/// One `OperationOutcome.issue`.
#[derive(Debug, Clone, PartialEq)]
pub struct Issue {
    pub severity: Severity,
    pub code: IssueType,
    /// Stable machine-readable code (`EHR-VAL-001`), sent as `details.coding`.
    pub ehr_code: &'static str,
    /// Human-readable explanation; lowercase, no trailing period; never SQL or driver text.
    pub diagnostics: String,
    /// FHIRPath expressions locating the problem in the submitted resource.
    pub expression: Vec<String>,
    /// The validation rule broken, when the issue comes from one: a profile invariant's key
    /// (`needs-anyOfStandardCode-medication`) or a hand-coded rule id (`R2152`). Sent as a second
    /// `details.coding` (system [`RULE_SYSTEM`]) and in `details.text`.
    pub rule: Option<String>,
}

impl Issue {
    /// An error-severity issue.
    pub fn error(code: IssueType, ehr_code: &'static str, diagnostics: impl Into<String>) -> Self {
        Self::new(Severity::Error, code, ehr_code, diagnostics)
    }

    /// An issue of any severity; prefer this to a struct literal, which breaks when a field is added.
    pub fn new(severity: Severity, code: IssueType, ehr_code: &'static str, diagnostics: impl Into<String>) -> Self {
        Self { severity, code, ehr_code, diagnostics: diagnostics.into(), expression: Vec::new(), rule: None }
    }

    /// The same issue with another severity.
    pub fn with_severity(mut self, severity: Severity) -> Self {
        self.severity = severity;
        self
    }

    /// Names the validation rule this issue reports (an invariant key or a hand-rule id).
    pub fn rule(mut self, rule: impl Into<String>) -> Self {
        self.rule = Some(rule.into());
        self
    }

    /// Adds a FHIRPath location.
    pub fn at(mut self, expression: impl Into<String>) -> Self {
        self.expression.push(expression.into());
        self
    }

    /// This issue as OperationOutcome.issue JSON.
    pub fn to_json(&self) -> Value {
        let mut details = json!({"coding": [{"system": CODE_SYSTEM, "code": self.ehr_code}]});
        if let Some(rule) = &self.rule {
            details["coding"] =
                json!([{"system": CODE_SYSTEM, "code": self.ehr_code}, {"system": RULE_SYSTEM, "code": rule}]);
            details["text"] = json!(format!("rule {rule}"));
        }
        let mut issue = json!({
            "severity": self.severity.code(),
            "code": self.code.code(),
            "details": details,
            "diagnostics": self.diagnostics,
        });
        if !self.expression.is_empty() {
            issue["expression"] = json!(self.expression);
        }
        issue
    }
}

/// The code system of this server's stable error codes.
pub const CODE_SYSTEM: &str = "urn:ehr:error-code";

/// The code system of validation rule ids (profile invariant keys, JP-CLINS R-numbers and this
/// server's hand-rule keys), sent as the second `details.coding` of an issue that has a rule.
pub const RULE_SYSTEM: &str = "urn:ehr:validation-rule";

/// An error that knows its FHIR classification. Implemented once per crate error enum.
pub trait Classify: std::error::Error {
    /// The FHIR issue type of this error.
    fn issue_type(&self) -> IssueType;

    /// A stable code, such as `EHR-STO-003`.
    fn code(&self) -> &'static str;

    /// The HTTP status; defaults to the issue type's status.
    fn http_status(&self) -> u16 {
        self.issue_type().http_status()
    }

    /// The issues to report. Defaults to one issue carrying the error's display text, which
    /// therefore must never contain internals; errors with internals override this.
    fn issues(&self) -> Vec<Issue> {
        vec![Issue::error(self.issue_type(), self.code(), self.to_string())]
    }
}

/// Renders issues as an OperationOutcome resource.
pub fn operation_outcome(issues: &[Issue]) -> Value {
    json!({
        "resourceType": "OperationOutcome",
        "issue": issues.iter().map(Issue::to_json).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rule_is_rendered_only_when_present() {
        let plain = Issue::error(IssueType::Value, "EHR-VAL-010", "x").at("Patient.gender");
        assert_eq!(plain.to_json()["details"], json!({"coding": [{"system": CODE_SYSTEM, "code": "EHR-VAL-010"}]}));
        let ruled =
            Issue::error(IssueType::Invariant, "EHR-VAL-018", "x").rule("R2152").with_severity(Severity::Warning);
        let j = ruled.to_json();
        assert_eq!(j["severity"], "warning");
        assert_eq!(j["details"]["coding"][1], json!({"system": RULE_SYSTEM, "code": "R2152"}));
        assert_eq!(j["details"]["text"], "rule R2152");
    }
}
