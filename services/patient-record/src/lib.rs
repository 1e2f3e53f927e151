//! The patient-record service: the core FHIR R4 store of clinical resources (JP Core profiles).
//!
//! It owns the resource types below and serves them through the shared FHIR REST engine
//! (`ehr-rest`); it has no tables of its own beyond the store's resource tables.

pub mod consumer;

pub use consumer::LabResults;

use axum::Router;
use ehr_rest::RestState;

/// The resource types this service owns (design.md, "Services and what each owns"), sorted.
/// `Group` (issue #5) holds the patient lists that `Group/[id]/$export` exports; it is not in
/// the Patient compartment.
pub const RESOURCE_TYPES: &[&str] = &[
    "AllergyIntolerance",
    "Composition",
    "Condition",
    "Coverage",
    "DiagnosticReport",
    "DocumentReference",
    "Encounter",
    "Group",
    "Immunization",
    "Observation",
    "Organization",
    "Patient",
    "Practitioner",
    "PractitionerRole",
    "Procedure",
];

/// The service's HTTP routes, relative to the FHIR base (`/fhir`).
pub fn router(state: RestState) -> Router {
    ehr_rest::router(state)
}

#[cfg(test)]
mod tests {
    #[test]
    fn types_are_sorted_and_known() {
        assert!(super::RESOURCE_TYPES.windows(2).all(|w| w[0] < w[1]));
        for t in super::RESOURCE_TYPES {
            assert!(ehr_core::ResourceType::parse(t).is_ok(), "{t}");
        }
    }
}
