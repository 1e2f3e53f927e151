//! The Patient compartment (R4 CompartmentDefinition `patient`), restricted to the resource
//! types this server stores: which search parameter makes a resource belong to a patient.
//!
//! R4 lists several parameters for some types (an Observation is in the compartment of its
//! `subject` and of a `performer` that is a Patient). This server uses the parameter that names
//! the patient the record is *about* (`patient`, which every listed type defines as the subject
//! or patient element restricted to Patient); a patient who merely performed or authored
//! something is not exported with it. `Task` is not in the R4 definition; its `patient`
//! parameter (`Task.for`) is used so that a patient's tasks travel with the patient.

/// `(resource type, search parameter)` pairs, sorted by type. `Patient` itself belongs to its own
/// compartment by id and is not listed.
pub const PATIENT_COMPARTMENT: &[(&str, &str)] = &[
    ("AllergyIntolerance", "patient"),
    ("Appointment", "patient"),
    ("Composition", "patient"),
    ("Condition", "patient"),
    ("Coverage", "patient"),
    ("DiagnosticReport", "patient"),
    ("DocumentReference", "patient"),
    ("Encounter", "patient"),
    ("Immunization", "patient"),
    ("MedicationDispense", "patient"),
    ("MedicationRequest", "patient"),
    ("Observation", "patient"),
    ("Procedure", "patient"),
    ("ServiceRequest", "patient"),
    ("Specimen", "patient"),
    ("Task", "patient"),
];

/// The search parameter linking resources of `resource_type` to their patient, if the type is in
/// the Patient compartment (`Patient` itself is, by `_id`).
pub fn patient_param(resource_type: &str) -> Option<&'static str> {
    if resource_type == "Patient" {
        return Some("_id");
    }
    PATIENT_COMPARTMENT.iter().find(|(t, _)| *t == resource_type).map(|(_, p)| *p)
}

/// Whether resources of `resource_type` can belong to a patient's compartment.
pub fn in_patient_compartment(resource_type: &str) -> bool {
    patient_param(resource_type).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::search::find_param;

    #[test]
    fn every_compartment_parameter_is_a_patient_reference() {
        assert!(PATIENT_COMPARTMENT.windows(2).all(|w| w[0].0 < w[1].0));
        for (ty, param) in PATIENT_COMPARTMENT {
            let def = find_param(ty, param).unwrap_or_else(|| panic!("{ty}.{param} is not defined"));
            assert_eq!(def.targets, ["Patient"], "{ty}.{param}");
        }
        assert_eq!(patient_param("Patient"), Some("_id"));
        assert_eq!(patient_param("Practitioner"), None);
    }
}
