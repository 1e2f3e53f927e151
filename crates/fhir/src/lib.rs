//! FHIR R4 (4.0.1) knowledge that is independent of HTTP and SQL: search-parameter definitions
//! and value extraction, search-query parsing, and structural + JP Core profile validation.

mod error;
pub mod search;
pub mod validate;

pub use error::FhirError;
