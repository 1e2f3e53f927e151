//! What the service checks about a *submission* rather than about its Bundle: which kind of
//! Bundle it is (so the envelope's information type and operation can be held against it), and
//! how a content finding is reported.
//!
//! Every check of the Bundle's content — the JP-CLINS profiles, the IG invariants (R2152, R0211,
//! R0212, R9011…R9015C, R1010, R1110, …), the hand rules (fullUrl, R02143, R1011, the lab codings,
//! the institution number of the bundle identifier, the health-checkup structure) and the master
//! codes — is the validator's, `ehr_validation::FullValidator`, with one rule id each: the table
//! is in `docs/national/validation.md`. The adapter and the simulator call it directly.

use crate::common::*;
use crate::documents::DocumentKind;
use crate::items::ItemKind;
use ehr_core::Issue;
use serde_json::Value;

/// The JP_Bundle_CLINS profile, without version.
const CLINS_BUNDLE: &str = "http://jpfhir.jp/fhir/clins/StructureDefinition/JP_Bundle_CLINS";

/// What a Bundle claims to be: an item (JP_Bundle_CLINS, by its BundleResourceType tag) or a
/// document (by its profile).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claimed {
    Item(&'static str),
    Document(DocumentKind),
    Unknown,
}

/// What the Bundle claims to be. A Bundle that names none of the JP-CLINS Bundle profiles is
/// `Unknown`: the validator would check it as a plain Bundle, so it cannot be a submission.
pub fn claimed(bundle: &Value) -> Claimed {
    if bundle["resourceType"] != "Bundle" {
        return Claimed::Unknown;
    }
    let profiles: Vec<&str> = bundle["meta"]["profile"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(|p| p.split('|').next().unwrap_or(p))
        .collect();
    let has = |name: &str| profiles.iter().any(|u| u.ends_with(name));
    if has("/JP_Bundle_eReferral") {
        return Claimed::Document(DocumentKind::Referral);
    }
    if has("/JP_Bundle_eDischargeSummary") {
        return Claimed::Document(DocumentKind::Discharge);
    }
    if has("/JP_Bundle_eCheckupGeneral") {
        return Claimed::Document(DocumentKind::Checkup);
    }
    if !profiles.contains(&CLINS_BUNDLE) {
        return Claimed::Unknown;
    }
    let tag = bundle["meta"]["tag"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|t| t["system"] == BUNDLE_RESOURCE_TYPE)
        .and_then(|t| t["code"].as_str());
    match tag {
        Some(t) => {
            ItemKind::ALL.iter().map(|k| k.resource_type()).find(|rt| *rt == t).map_or(Claimed::Unknown, Claimed::Item)
        }
        None => Claimed::Unknown,
    }
}

/// The rule a content finding is answered under: the 技術解説書 number where the rule has one
/// (`R9013C` for `condition-needs-contained-of-Encounter`), else the validator's rule id
/// (`clins-lab-localCode`), else its EHR code (`EHR-VAL-013` for a slice cardinality).
pub fn reported_rule(issue: &Issue) -> String {
    match issue.rule.as_deref() {
        Some(rule) => ehr_fhir::validate::rule_number(rule).unwrap_or(rule).to_owned(),
        None => issue.ehr_code.to_owned(),
    }
}
