//! FHIR R4 (4.0.1) knowledge that is independent of HTTP and SQL: search-parameter definitions
//! and value extraction, search-query parsing, structural + JP Core profile validation, the
//! Patient compartment, the XML representation and the CSV layouts.

pub mod compartment;
pub mod csv;
mod error;
pub mod search;
pub mod validate;
pub mod xml;

pub use error::FhirError;
