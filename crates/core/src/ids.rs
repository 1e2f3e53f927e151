//! Parsed identifiers: once constructed, they are known to be well-formed.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Why an identifier was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("tenant id must be 1-64 characters of [A-Za-z0-9-_.]")]
    Tenant,
    #[error("resource id must be 1-64 characters of [A-Za-z0-9-.] (FHIR R4 id datatype)")]
    Resource,
    #[error("unknown resource type `{0}`")]
    ResourceType(String),
}

/// A tenant (one hospital or hospital group). Taken from the verified token and nowhere else.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct TenantId(String);

impl TenantId {
    /// Parses a tenant id.
    pub fn parse(s: &str) -> Result<Self, IdError> {
        let ok = !s.is_empty()
            && s.len() <= 64
            && s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
        if ok { Ok(Self(s.to_owned())) } else { Err(IdError::Tenant) }
    }

    /// The tenant id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The reserved tenant of system administrators, whose audit chain also records requests
    /// that name no verifiable tenant.
    pub fn system() -> Self {
        Self("system".to_owned())
    }
}

impl TryFrom<String> for TenantId {
    type Error = IdError;
    fn try_from(s: String) -> Result<Self, IdError> {
        Self::parse(&s)
    }
}

impl From<TenantId> for String {
    fn from(t: TenantId) -> String {
        t.0
    }
}

impl fmt::Display for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A FHIR logical id (R4 `id` datatype: `[A-Za-z0-9\-\.]{1,64}`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ResourceId(String);

impl ResourceId {
    /// Parses a logical id.
    pub fn parse(s: &str) -> Result<Self, IdError> {
        let ok =
            !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.'));
        if ok { Ok(Self(s.to_owned())) } else { Err(IdError::Resource) }
    }

    /// A fresh server-assigned id (a UUID v4).
    pub fn generate() -> Self {
        Self(uuid::Uuid::new_v4().to_string())
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ResourceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A FHIR resource type name that this server knows (`Patient`, `Observation`, …).
///
/// Which types a given service serves is decided by the service; this type only guarantees the
/// name is an R4 resource type known to the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ResourceType(&'static str);

/// Every R4 resource type the server knows of, in alphabetical order.
const KNOWN_TYPES: &[&str] = &[
    "AllergyIntolerance",
    "Appointment",
    "AuditEvent",
    "Composition",
    "Condition",
    "Coverage",
    "DiagnosticReport",
    "DocumentReference",
    "Encounter",
    "Group",
    "Immunization",
    "MedicationDispense",
    "MedicationRequest",
    "Observation",
    "Organization",
    "Patient",
    "Practitioner",
    "PractitionerRole",
    "Procedure",
    "Schedule",
    "ServiceRequest",
    "Slot",
    "Specimen",
    "Task",
];

impl ResourceType {
    /// Parses a resource type name (case-sensitive, as FHIR requires).
    pub fn parse(s: &str) -> Result<Self, IdError> {
        KNOWN_TYPES
            .binary_search(&s)
            .map(|i| Self(KNOWN_TYPES[i]))
            .map_err(|_| IdError::ResourceType(s.chars().take(64).collect()))
    }

    /// The type name.
    pub fn as_str(self) -> &'static str {
        self.0
    }
}

impl fmt::Display for ResourceType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_types_are_sorted_for_binary_search() {
        assert!(KNOWN_TYPES.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn ids_follow_the_r4_id_datatype() {
        assert!(ResourceId::parse("abc-1.2").is_ok());
        assert_eq!(ResourceId::parse("a_b"), Err(IdError::Resource));
        assert_eq!(ResourceId::parse(&"x".repeat(65)), Err(IdError::Resource));
        assert_eq!(ResourceType::parse("patient"), Err(IdError::ResourceType("patient".into())));
    }
}
