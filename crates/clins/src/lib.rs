//! The EHR information-sharing service (電子カルテ情報共有サービス, "CLINS").
//!
//! - [`items`]: the 6 information items (傷病名, 薬剤アレルギー等, その他アレルギー等, 検査, 感染症,
//!   処方) as `JP_Bundle_CLINS` collection Bundles built from stored JP Core resources.
//! - [`documents`]: 診療情報提供書, 退院時サマリー and 健康診断結果報告書 as document Bundles.
//! - [`rules`]: what is checked about a submission beyond its Bundle (which kind of Bundle it is,
//!   how a finding's rule is reported); the Bundle's content is checked by
//!   `ehr_validation::FullValidator` alone.
//! - [`envelope`]: the request / response envelope (our reading; the national interface
//!   specification is not public).
//! - [`crypto`]: AES-256-GCM file encryption for the terminal file-drop method.
//! - [`transport`]: file drop and Web API behind one trait, errors split into retryable and
//!   permanent.
//! - [`sim`]: a simulator of the national service (Web API and file-drop watcher).
//!
//! Reference: `docs/national/clins.md` (mapping table, envelope, result codes, open points).
//! Nothing here logs patient data: diagnostics name elements and rules, never values.

pub mod common;
pub mod crypto;
pub mod documents;
pub mod envelope;
pub mod items;
pub mod rules;
pub mod sim;
pub mod transport;

pub use common::{BundleId, Institution, Record};
pub use documents::{CheckupRequest, DischargeRequest, DocumentKind, ReferralRequest};
pub use items::{BuildOptions, ItemKind};

/// Why a Bundle could not be built from the record.
#[derive(Debug, thiserror::Error)]
pub enum ClinsError {
    /// The record lacks something the profile requires and no request field supplies it.
    #[error("the record lacks {0}")]
    Missing(String),
    /// A request field is malformed.
    #[error("invalid request: {0}")]
    Invalid(String),
    /// A resource the request names is not in this patient's record (answered 404: whether it
    /// exists elsewhere is not disclosed).
    #[error("not found: {0}")]
    NotFound(String),
    /// Nothing of the requested kind to submit for this patient.
    #[error("nothing to submit: {0}")]
    Empty(String),
}

#[cfg(test)]
mod tests;
