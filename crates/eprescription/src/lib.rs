//! The e-prescription service (電子処方箋管理サービス) as the EHR speaks to it:
//!
//! - [`model`]: a typed prescription (institution, doctor, patient, insurance, RPs and drugs);
//! - [`csv`]: that prescription as the JAHIS 2D-symbol CSV the service takes (記録条件仕様,
//!   records 1…281, LF line endings, grouped per RP), and a strict checker of the same CSV;
//! - [`fhir`]: MedicationRequests + Patient + Coverage + Organization/Practitioner → the model,
//!   and the JAMI `JP_Bundle_ePrescriptionData` FHIR document;
//! - [`xml`]: the XML messages (duplicate-check preparation, registration, copy, cancel,
//!   dispensing results) and their answers — our reading of the non-public 外部IF仕様書, kept in
//!   one module;
//! - [`sign`]: the pluggable [`sign::Signer`], a software ECDSA P-256 signer with a self-signed
//!   certificate, and XAdES-BES enveloped signatures with their verifier;
//! - [`sim`]: a simulator of the service for tests and demos.
//!
//! `docs/national/eprescription.md` documents every record, field, message and result code.

/// The date type of the model and the simulator's knobs.
pub use chrono;

pub mod csv;
pub mod der;
pub mod fhir;
pub mod model;
pub mod sign;
pub mod sim;
pub mod xml;

#[cfg(test)]
mod tests;

/// Why an e-prescription operation failed. Messages name records, fields and elements, never
/// patient data.
#[derive(Debug, thiserror::Error)]
pub enum EpsError {
    /// The FHIR resources do not make a prescription (what is missing is named).
    #[error("the prescription lacks: {}", .0.join("; "))]
    Incomplete(Vec<String>),
    /// A value does not fit its CSV field.
    #[error("record {record} field {field}: {reason}")]
    Field { record: u16, field: &'static str, reason: String },
    /// An XML message is malformed.
    #[error("xml: {0}")]
    Xml(String),
    /// Signing or verifying failed.
    #[error("signature: {0}")]
    Signature(String),
    /// A key or certificate could not be read.
    #[error("key material: {0}")]
    Key(String),
}
