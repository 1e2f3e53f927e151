//! Integration tests through the real HTTP API (one test binary; see style.md §12).
//!
//! Each test spawns the real `ehr` router (target `all`) on port 0 with a fresh database and a
//! fresh tenant. `TEST_BACKEND=postgres` runs the same tests on PostgreSQL; the `postgres`
//! module holds the tests that only make sense there (row-level security).

#![allow(clippy::unwrap_used)] // tests fail loudly by design

mod access_matrix;
mod audit;
mod auth;
mod backup;
mod bulk;
mod bundle;
mod capability;
mod clins;
mod cluster;
mod concurrency;
mod conformance;
mod crud;
mod eprescription;
mod errors;
mod everything;
mod gateway;
mod handover;
mod hardening;
mod history;
mod identity;
mod import;
mod lab;
mod metrics;
mod openapi;
mod orders;
mod postgres;
mod search;
mod tenancy;
mod terminology;
mod traces;
mod validate;
mod validation;
mod xml;

use serde_json::{Value, json};

/// A laboratory Observation of `patient_id`.
pub fn observation(patient_id: &str, code: &str, value: f64, date: &str) -> Value {
    json!({
        "resourceType": "Observation",
        "status": "final",
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "laboratory"}]}],
        "code": {"coding": [{"system": "http://medis.or.jp/CodeSystem/master-JLAC10-17digits", "code": code}], "text": code},
        "subject": {"reference": format!("Patient/{patient_id}")},
        "effectiveDateTime": date,
        "valueQuantity": {"value": value, "unit": "mg/dL", "system": "http://unitsofmeasure.org", "code": "mg/dL"}
    })
}

/// A fixture file from `tests/fixtures`.
pub fn fixture(name: &str) -> Value {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_str(&std::fs::read_to_string(&path).expect("fixture")).expect("fixture json")
}

/// The id of a created resource.
pub fn id_of(v: &Value) -> String {
    v["id"].as_str().expect("id").to_owned()
}
