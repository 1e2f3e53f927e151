//! The patients a response holds, reported to the gateway for the audit trail.
//!
//! The gateway writes one AuditEvent per patient whose data a request touched (IHE BALP). Only
//! the service knows which patients those are, so it lists them in an internal response header,
//! which the gateway removes before the response leaves it.

use axum::http::{HeaderName, HeaderValue};
use ehr_fhir::search::{params_for, patients_of};
use std::collections::BTreeSet;

/// What is percent-encoded in a listed reference: everything but letters, digits, `/-._`.
const HEADER_UNSAFE: &percent_encoding::AsciiSet =
    &percent_encoding::NON_ALPHANUMERIC.remove(b'/').remove(b'-').remove(b'.').remove(b'_');

/// The internal header: `Patient/1,Patient/2`.
pub const AUDIT_PATIENTS: HeaderName = HeaderName::from_static("x-ehr-audit-patients");

/// A bound on the list: a page holds at most 1,000 matches and 1,000 included resources.
const MAX_LISTED: usize = 2_100;

/// Collects the patients of resources given as (type, stored JSON).
#[derive(Default)]
pub struct Patients(BTreeSet<String>);

impl Patients {
    /// Adds the patients of one resource. Types without a patient (Organization, Practitioner)
    /// cost nothing; others are parsed, which is the price of naming the patient.
    pub fn add(&mut self, resource_type: &str, content: &str) {
        if self.0.len() > MAX_LISTED {
            return;
        }
        if resource_type != "Patient" && !params_for(resource_type).any(|d| d.name == "patient") {
            return;
        }
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(content) {
            self.0.extend(patients_of(resource_type, &v));
        }
    }

    /// The header value, when there is any patient.
    pub fn header(&self) -> Option<(HeaderName, HeaderValue)> {
        if self.0.is_empty() {
            return None;
        }
        // Percent-encoded: an id with characters a header cannot carry must not make the whole
        // list (and with it every patient's audit event) disappear.
        let list = self
            .0
            .iter()
            .map(|p| percent_encoding::utf8_percent_encode(p, HEADER_UNSAFE).to_string())
            .collect::<Vec<_>>()
            .join(",");
        HeaderValue::from_str(&list).ok().map(|v| (AUDIT_PATIENTS, v))
    }

    /// Adds the header to a response.
    pub fn apply(&self, resp: &mut axum::response::Response) {
        if let Some((name, value)) = self.header() {
            resp.headers_mut().insert(name, value);
        }
    }
}

/// The header for one resource.
pub fn of_one(resource_type: &str, content: &str) -> Patients {
    let mut p = Patients::default();
    p.add(resource_type, content);
    p
}
