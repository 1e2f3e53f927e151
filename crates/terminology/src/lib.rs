//! Japanese clinical code systems for the EHR: drugs (YJ, HOT7/9/13, receipt drug code,
//! 一般名処方マスタ), laboratory tests (JLAC10, the JP-CLINS core/infection code systems, JLAC10
//! specimen materials), diseases (MEDIS 標準病名マスター, ICD-10 2013 as used in Japan).
//!
//! - [`systems`]: the canonical URIs (JP Core 1.1.x / JP-CLINS 1.5 URL forms) and the legacy
//!   `urn:oid:` aliases that mean the same systems; the implicit value sets.
//! - [`shape`]: format checks, so that a code is rejected for its form with no master loaded.
//! - Loaders for the official master files (CSV, UTF-8 or Shift_JIS): the MEDIS HOT master, the
//!   receipt drug master, the JLAC10 tables, the MEDIS disease-name table, and FHIR CodeSystem
//!   JSON. A whole directory loads into a new table set that replaces the old one only when
//!   every file read cleanly.
//! - [`Terminology`]: `lookup`, `validate_code`, `check_coding`, `check_resource`, over a small
//!   real subset shipped in `data/` ([`Terminology::builtin`]) plus whatever was loaded.
//! - [`http`]: `GET|POST /CodeSystem/$lookup` and `GET|POST /ValueSet/$validate-code`.
//!
//! Column layouts, URIs, what is verified and what is not: `docs/formats/masters.md`.

mod concept;
mod csv;
mod error;
pub mod http;
mod load;
pub mod shape;
pub mod systems;
mod terminology;

pub use concept::{Concept, Designation, KANA, Property, PropertyValue, property};
pub use error::TerminologyError;
pub use load::{MasterFormat, decode};
pub use systems::SystemId;
pub use terminology::{CODE_DISPLAY_CONFLICT, LoadReport, LoadedFile, Strictness, Terminology, Validation};

#[cfg(test)]
mod tests;
