//! Hand-coded JP-CLINS rules that the package snapshots do not enforce, run for a resource whose
//! `meta.profile` (or the caller's extra profile) names the profile they belong to.
//!
//! What the snapshots already enforce is not repeated here: entry[0] is a Patient, the single
//! `meta.tag` resource type, the institution-number extension and its format, the bundle
//! identifier of JP_Bundle_CLINS (IG invariants); the Composition being the first entry of the
//! eReferral / eDischargeSummary / ePCS Bundles (`bdl-11`); the nested section cardinalities of the
//! referral (950, 340, 360 under 300) and of the discharge summary (322, 342, 352, 312, 362, 333,
//! 324, 344, 444, 424 under 300), which are value-sliced on `code.coding.code` and enforced as
//! slices (EHR-VAL-013).
//!
//! | rule | code | profiles | what |
//! |---|---|---|---|
//! | `clins-fullUrl-uuid` | EHR-VAL-020 | CLINS, document Bundles | every entry has a `fullUrl`, `urn:uuid:` + a UUID (hex digits of either case) |
//! | `clins-fullUrl-unique` | EHR-VAL-021 | CLINS, document Bundles | no two entries share a `fullUrl` |
//! | `document-reference-resolves` | EHR-VAL-022 | document Bundles | `Composition.subject` and every `section.entry` reference is the `fullUrl` of an entry |
//! | `R1011` | EHR-VAL-023 | CLINS, document Bundles | the 10 digits of the Patient's local id system (`urn:oid:1.2.392.100495.20.3.51.1` + digits) equal every `JP_eCS_InstitutionNumber` of the Bundle |
//! | `clins-lab-localCode` | EHR-VAL-024 | CLINS, document Bundles (lab Observations) | a coding of `JP_CLINS_ObsLabResult_LocalCode_CS` is present |
//! | `clins-lab-standardCode` | EHR-VAL-025 | CLINS, document Bundles (lab Observations) | a CoreLabo / InfectionLabo JLAC10/11, JLAC10 17-digit or uncoded-marker coding is present |
//! | `clins-lab-characters` | EHR-VAL-026 | CLINS, document Bundles (lab Observations) | `code.coding.display` and `code.text` have no half-width kana, U+3000 or control characters |
//! | `R2152` | EHR-VAL-027 | document Bundles | `identifier` has system `http://jpfhir.jp/fhir/clins/bundle-identifier` and a value `<institution no>^<year>^<serial>` |
//! | `checkup-bundle-type` | EHR-VAL-028 | eCheckupGeneral | `Bundle.type` is `document` |
//! | `checkup-composition-first` | EHR-VAL-029 | eCheckupGeneral | the first entry is a Composition |
//! | `checkup-composition-type` | EHR-VAL-030 | eCheckupGeneral Composition | `type` is doc-typecodes `53576-5` (or the older `JPGCHKUP01`) |
//! | `checkup-composition-category` | EHR-VAL-031 | eCheckupGeneral Composition | `category` has a coding of 報告区分 `urn:oid:2.16.840.1.113883.2.2.1.6.1001` |
//! | `checkup-composition-event` | EHR-VAL-032 | eCheckupGeneral Composition | an `event.code` has a coding of 健診プログラム `urn:oid:1.2.392.200119.6.1002` |
//! | `checkup-section-code` | EHR-VAL-033 | eCheckupGeneral Composition | every section is coded in `http://jpfhir.jp/fhir/eCheckup/CodeSystem/section-code` |
//! | `checkup-section-attachment-xor` | EHR-VAL-034 | eCheckupGeneral Composition | section 01995 (添付書類) xor sections 01910/01920 |
//! | `checkup-observation-coded` | EHR-VAL-035 | eCheckupGeneral | every Observation in section 01910 has a coding with system and code |
//! | `R02143` | EHR-VAL-036 | CLINS | every entry after the Patient is of the resource type of the `BundleResourceType_CS` tag (one type per Bundle) |
//! | `clins-bundleIdentifier-institution` | EHR-VAL-037 | CLINS, document Bundles | the institution number leading `Bundle.identifier.value` equals every `JP_eCS_InstitutionNumber` and the digits of the Patient's local id system |
//!
//! [`rule_number`] gives the 技術解説書 number (R-number) of a rule id, hand rule or IG
//! invariant, where the 技術解説書 numbers it.

use std::collections::{HashMap, HashSet};
use std::sync::OnceLock;

use ehr_core::{Issue, IssueType};
use regex::Regex;
use serde_json::Value;

use super::{fhirpath, systems};

pub(crate) const CLINS_BUNDLE: &str = "http://jpfhir.jp/fhir/clins/StructureDefinition/JP_Bundle_CLINS";
pub(crate) const REFERRAL_BUNDLE: &str = "http://jpfhir.jp/fhir/clins/StructureDefinition/JP_Bundle_eReferral";
pub(crate) const DISCHARGE_BUNDLE: &str = "http://jpfhir.jp/fhir/clins/StructureDefinition/JP_Bundle_eDischargeSummary";
pub(crate) const PCS_BUNDLE: &str = "http://jpfhir.jp/fhir/clins/StructureDefinition/JP_Bundle_ePCS";
/// Not in the JP-CLINS 1.5.2 package: hand-coded from the eCheckup IG (jp-standards §A.3/§A.6).
pub(crate) const CHECKUP_BUNDLE: &str = "http://jpfhir.jp/fhir/clins/StructureDefinition/JP_Bundle_eCheckupGeneral";
/// Not in the package either.
pub(crate) const CHECKUP_COMPOSITION: &str =
    "http://jpfhir.jp/fhir/eCheckup/StructureDefinition/JP_Composition_eCheckupGeneral";
const LAB_PROFILE: &str = "http://jpfhir.jp/fhir/eCS/StructureDefinition/JP_Observation_LabResult_eCS";

const INSTITUTION_NUMBER_EXT: &str =
    "http://jpfhir.jp/fhir/clins/Extension/StructureDefinition/JP_eCS_InstitutionNumber";
const LOCAL_PATIENT_ID_ROOT: &str = "urn:oid:1.2.392.100495.20.3.51.1";
const BUNDLE_IDENTIFIER: &str = "http://jpfhir.jp/fhir/clins/bundle-identifier";
const BUNDLE_RESOURCE_TYPE: &str = "http://jpfhir.jp/fhir/clins/CodeSystem/BundleResourceType_CS";
/// R2152, as the JP_Bundle_CLINS invariant `valid-value-bundleIdenfifier` writes it.
const BUNDLE_IDENTIFIER_PATTERN: &str = "^[0-4][0-9][1-3][0-9]{7}[\\^]20[2-3][0-9][\\^][A-Za-z0-9\\-]{1,36}$";

const LAB_LOCAL_CODE: &str = "http://jpfhir.jp/fhir/clins/CodeSystem/JP_CLINS_ObsLabResult_LocalCode_CS";
const LAB_STANDARD_CODES: &[&str] = &[
    "http://jpfhir.jp/fhir/clins/CodeSystem/JLAC10/JP_CLINS_ObsLabResult_CoreLabo_CS",
    "http://jpfhir.jp/fhir/clins/CodeSystem/JLAC11/JP_CLINS_ObsLabResult_CoreLabo_CS",
    "http://jpfhir.jp/fhir/clins/CodeSystem/JLAC10/JP_CLINS_ObsLabResult_InfectionLabo_CS",
    "http://jpfhir.jp/fhir/clins/CodeSystem/JLAC11/JP_CLINS_ObsLabResult_InfectionLabo_CS",
    "http://medis.or.jp/CodeSystem/master-JLAC10-17digits",
    "http://jpfhir.jp/fhir/clins/CodeSystem/JP_CLINS_ObsLabResult_Uncoded_CS",
];

const DOC_TYPECODES: &str = "http://jpfhir.jp/fhir/Common/CodeSystem/doc-typecodes";
/// `53576-5` per the eCheckup IG 1.5.0; `JPGCHKUP01` per the doc-typecodes CS of JP-CLINS 1.5.2
/// (open point jp-standards §I.3): both are accepted.
const CHECKUP_TYPES: &[&str] = &["53576-5", "JPGCHKUP01"];
const CHECKUP_CATEGORY: &str = "urn:oid:2.16.840.1.113883.2.2.1.6.1001";
const CHECKUP_PROGRAM: &str = "urn:oid:1.2.392.200119.6.1002";
const CHECKUP_SECTION: &str = "http://jpfhir.jp/fhir/eCheckup/CodeSystem/section-code";
const SECTION_ATTACHMENT: &str = "01995";
const SECTION_RESULTS: &str = "01910";
const SECTION_INTERVIEW: &str = "01920";

/// The 技術解説書 number (R-number) of a rule id (IG invariant key or hand rule), where it has
/// one; several rules may share a number (the 技術解説書 names R0211/R0212 for the tag, the
/// Patient and the entries together).
pub fn rule_number(rule: &str) -> Option<&'static str> {
    Some(match rule {
        "valid-system-bundleIdenfifier" | "valid-value-bundleIdenfifier" | "R2152" => "R2152",
        "first-bundle-entry-is-Patient" | "patients-profile-is-JP-Patient-eCS" => "R0211",
        "bundle-meta-tag-resourceType-exists"
        | "bundle-meta-tag-resourceType-valid"
        | "mustHaveOneMoreResources-with-designatedResourceType" => "R0212",
        "R02143" => "R02143",
        "all-entries-needs-extension-of-institutionNumber" => "R9011",
        "all-entries-needs-valid-institutionNumber" | "clins-bundleIdentifier-institution" => "R9012",
        "condition-needs-contained-of-Encounter" => "R9013C",
        "observation-needs-contained-of-Encounter" => "R9013O",
        "condition-needs-extension-of-Department" | "observation-needs-extension-of-Department" => "R9014",
        "condition-needs-onsetDateTime" => "R9015C",
        "valid-system-local-patientID" => "R1010",
        "R1011" => "R1011",
        "valid-system-insurance-patientIdentifier" | "valid-value-insurance-patientIdentifier" => "R1110",
        "needs-anyOfStandardCode-medication" => "R3010",
        "validUsage-MedicationUsage-codesystem" => "R5020",
        "invalidUsage-MedicationUsage-codesystem" => "R5021",
        _ => return None,
    })
}

/// Profiles that exist only as hand rules (no StructureDefinition is embedded).
pub(crate) const HAND_ONLY: &[&str] = &[CHECKUP_BUNDLE, CHECKUP_COMPOSITION];

/// Whether `url` is one of [`HAND_ONLY`].
pub(crate) fn is_hand_only(url: &str) -> bool {
    hand_only_type(url).is_some()
}

/// The resource type a hand-only profile constrains.
pub(crate) fn hand_only_type(url: &str) -> Option<&'static str> {
    match url {
        CHECKUP_BUNDLE => Some("Bundle"),
        CHECKUP_COMPOSITION => Some("Composition"),
        _ => None,
    }
}

/// Whether a Bundle identifier value has the R2152 form (compiled once).
fn is_bundle_identifier(value: &str) -> bool {
    static RE: OnceLock<Option<Regex>> = OnceLock::new();
    RE.get_or_init(|| fhirpath::compile_regex(BUNDLE_IDENTIFIER_PATTERN)).as_ref().is_some_and(|r| r.is_match(value))
}

/// Runs the hand rules of profile `url` (bare canonical) on resource `v` at FHIRPath `fp`.
pub(crate) fn check(url: &str, v: &Value, fp: &str, out: &mut Vec<Issue>) {
    match url {
        CLINS_BUNDLE => {
            full_urls(v, fp, out);
            local_patient_id(v, fp, out);
            identifier_institution(v, fp, out);
            single_resource_type(v, fp, out);
            lab_codings(v, fp, out);
        }
        REFERRAL_BUNDLE | DISCHARGE_BUNDLE | PCS_BUNDLE => {
            full_urls(v, fp, out);
            references(v, fp, out);
            local_patient_id(v, fp, out);
            bundle_identifier(v, fp, out);
            identifier_institution(v, fp, out);
            lab_codings(v, fp, out);
        }
        CHECKUP_BUNDLE => {
            full_urls(v, fp, out);
            checkup_bundle(v, fp, out);
            references(v, fp, out);
            local_patient_id(v, fp, out);
            bundle_identifier(v, fp, out);
            identifier_institution(v, fp, out);
        }
        CHECKUP_COMPOSITION => checkup_composition(v, fp, out),
        _ => {}
    }
}

fn issue(code: IssueType, ehr: &'static str, rule: &str, fp: &str, diag: String) -> Issue {
    Issue::error(code, ehr, diag).at(fp).rule(rule)
}

fn entries(v: &Value) -> impl Iterator<Item = (usize, &Value)> {
    v.get("entry").and_then(Value::as_array).into_iter().flatten().enumerate()
}

fn str_at<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str)
}

fn array<'a>(v: &'a Value, key: &str) -> impl Iterator<Item = (usize, &'a Value)> {
    v.get(key).and_then(Value::as_array).into_iter().flatten().enumerate()
}

fn has_profile(resource: &Value, url: &str) -> bool {
    array(resource.get("meta").unwrap_or(&Value::Null), "profile")
        .filter_map(|(_, p)| p.as_str())
        .any(|p| p.split('|').next() == Some(url))
}

/// `urn:uuid:` followed by a UUID. The hex digits may be of either case: RFC 4122 §3 reads
/// them case-insensitively on input, and fullUrl is a `uri`, not FHIR's lowercase `uuid` type
/// (duplicates are found case-insensitively too).
fn is_urn_uuid(s: &str) -> bool {
    let Some(u) = s.strip_prefix("urn:uuid:") else { return false };
    let mut groups = u.split('-');
    [8, 4, 4, 4, 12]
        .iter()
        .all(|&n| groups.next().is_some_and(|g| g.len() == n && g.bytes().all(|b| b.is_ascii_hexdigit())))
        && groups.next().is_none()
}

/// `clins-fullUrl-uuid`, `clins-fullUrl-unique`.
fn full_urls(v: &Value, fp: &str, out: &mut Vec<Issue>) {
    let mut seen: HashMap<String, usize> = HashMap::new();
    for (i, e) in entries(v) {
        let efp = format!("{fp}.entry[{i}].fullUrl");
        // §A.4: every entry gets a fresh urn:uuid (the snapshots leave fullUrl 0..1).
        let Some(url) = str_at(e, "fullUrl") else {
            out.push(issue(
                IssueType::Required,
                "EHR-VAL-020",
                "clins-fullUrl-uuid",
                &efp,
                "every entry needs a fullUrl, urn:uuid: followed by a UUID".to_string(),
            ));
            continue;
        };
        if !is_urn_uuid(url) {
            out.push(issue(
                IssueType::Value,
                "EHR-VAL-020",
                "clins-fullUrl-uuid",
                &efp,
                "entry.fullUrl must be urn:uuid: followed by a UUID".to_string(),
            ));
        }
        // `urn:uuid:ABC…` and `urn:uuid:abc…` name one UUID.
        let key = if is_urn_uuid(url) { url.to_ascii_lowercase() } else { url.to_string() };
        if let Some(first) = seen.get(&key) {
            out.push(issue(
                IssueType::Duplicate,
                "EHR-VAL-021",
                "clins-fullUrl-unique",
                &efp,
                format!("entry.fullUrl repeats the fullUrl of entry[{first}]; every entry needs its own fresh uuid"),
            ));
        } else {
            seen.insert(key, i);
        }
    }
}

/// What the references of a document may name: every entry's fullUrl and `Type/id`, collected
/// once (a document has one reference per section entry: no scan of the entries per reference).
fn targets(v: &Value) -> HashSet<String> {
    let mut out = HashSet::new();
    for (_, e) in entries(v) {
        if let Some(u) = str_at(e, "fullUrl") {
            out.insert(u.to_string());
        }
        let r = e.get("resource").unwrap_or(&Value::Null);
        if let (Some(t), Some(id)) = (str_at(r, "resourceType"), str_at(r, "id")) {
            out.insert(format!("{t}/{id}"));
        }
    }
    out
}

/// `document-reference-resolves`: the subject and section entries of the first Composition.
fn references(v: &Value, fp: &str, out: &mut Vec<Issue>) {
    let Some((ci, comp)) = entries(v).find(|(_, e)| e["resource"]["resourceType"] == "Composition") else {
        return;
    };
    let cfp = format!("{fp}.entry[{ci}].resource");
    let comp = &comp["resource"];
    let targets = targets(v);
    let mut check = |r: &Value, rfp: String, what: &str| {
        // References without `reference` (identifier / display only) and contained (`#id`) ones
        // are not entry references.
        let Some(reference) = str_at(r, "reference").filter(|s| !s.starts_with('#')) else { return };
        if !targets.contains(reference) {
            out.push(issue(
                IssueType::Invariant,
                "EHR-VAL-022",
                "document-reference-resolves",
                &format!("{rfp}.reference"),
                format!("{what} does not resolve to the fullUrl of an entry of the document Bundle"),
            ));
        }
    };
    if let Some(s) = comp.get("subject") {
        check(s, format!("{cfp}.subject"), "Composition.subject");
    }
    fn sections<'a>(s: &'a Value, fp: &str, acc: &mut Vec<(String, &'a Value)>, depth: usize) {
        if depth > 8 {
            return;
        }
        for (i, sec) in array(s, "section") {
            let sfp = format!("{fp}.section[{i}]");
            for (j, e) in array(sec, "entry") {
                acc.push((format!("{sfp}.entry[{j}]"), e));
            }
            sections(sec, &sfp, acc, depth + 1);
        }
    }
    let mut acc = Vec::new();
    sections(comp, &cfp, &mut acc, 0);
    for (efp, e) in acc {
        check(e, efp, "Composition.section.entry");
    }
}

/// `R1011`: the Patient's local id system carries the same institution number as the entries.
fn local_patient_id(v: &Value, fp: &str, out: &mut Vec<Issue>) {
    let Some((pi, patient)) = entries(v).find(|(_, e)| e["resource"]["resourceType"] == "Patient") else {
        return;
    };
    let Some((ii, digits)) = array(&patient["resource"], "identifier")
        .find_map(|(k, id)| str_at(id, "system")?.strip_prefix(LOCAL_PATIENT_ID_ROOT).map(|d| (k, d)))
    else {
        return;
    };
    for (i, e) in entries(v) {
        if i == pi {
            continue;
        }
        for (j, ext) in array(&e["resource"], "extension") {
            if str_at(ext, "url") != Some(INSTITUTION_NUMBER_EXT) {
                continue;
            }
            let Some(number) = ext["valueIdentifier"]["value"].as_str() else { continue };
            if number != digits {
                out.push(issue(
                    IssueType::Invariant,
                    "EHR-VAL-023",
                    "R1011",
                    &format!("{fp}.entry[{pi}].resource.identifier[{ii}].system"),
                    format!(
                        "the institution number in the local patient id system differs from the \
                         JP_eCS_InstitutionNumber extension of entry[{i}] (extension[{j}])"
                    ),
                ));
                return;
            }
        }
    }
}

/// `R02143`: one resource type per JP_Bundle_CLINS, the one its `BundleResourceType_CS` tag
/// names (the invariants only ask for at least one of it; the closed entry slicing admits all
/// four item types).
fn single_resource_type(v: &Value, fp: &str, out: &mut Vec<Issue>) {
    let tag = array(v.get("meta").unwrap_or(&Value::Null), "tag")
        .find(|(_, t)| str_at(t, "system") == Some(BUNDLE_RESOURCE_TYPE))
        .and_then(|(_, t)| str_at(t, "code"));
    // A missing or unknown tag is the invariants' finding.
    let Some(tag) = tag.filter(|t| matches!(*t, "Condition" | "AllergyIntolerance" | "Observation")) else {
        return;
    };
    for (i, e) in entries(v).skip(1) {
        let Some(ty) = str_at(&e["resource"], "resourceType") else { continue };
        if ty != tag {
            // The type is named only when it is a type name (it is submitted text).
            let ty = if ty.len() <= 64 && ty.bytes().all(|b| b.is_ascii_alphanumeric()) { ty } else { "resource" };
            out.push(issue(
                IssueType::Structure,
                "EHR-VAL-036",
                "R02143",
                &format!("{fp}.entry[{i}].resource"),
                format!("a {ty} in a Bundle tagged {tag}: a JP_Bundle_CLINS carries one resource type"),
            ));
        }
    }
}

/// `clins-bundleIdentifier-institution`: the institution number that opens the bundle
/// identifier (R2152's `<institution>^…`) is the one of the entries and of the Patient's local id
/// system. Runs only on an identifier of that form (R2152 reports the others).
fn identifier_institution(v: &Value, fp: &str, out: &mut Vec<Issue>) {
    let value = v.get("identifier").and_then(|id| str_at(id, "value"));
    let Some(number) = value.and_then(|s| s.split('^').next()).filter(|n| n.len() == 10) else { return };
    if !value.is_some_and(is_bundle_identifier) {
        return;
    }
    let mut differs = |at: String, what: &str| {
        out.push(issue(
            IssueType::Invariant,
            "EHR-VAL-037",
            "clins-bundleIdentifier-institution",
            &at,
            format!("{what} differs from the institution number of Bundle.identifier (R9012)"),
        ));
    };
    for (i, e) in entries(v) {
        let r = &e["resource"];
        for (j, ext) in array(r, "extension") {
            if str_at(ext, "url") == Some(INSTITUTION_NUMBER_EXT)
                && ext["valueIdentifier"]["value"].as_str().is_some_and(|n| n != number)
            {
                differs(format!("{fp}.entry[{i}].resource.extension[{j}]"), "the JP_eCS_InstitutionNumber");
            }
        }
        if r["resourceType"] != "Patient" {
            continue;
        }
        for (k, id) in array(r, "identifier") {
            if str_at(id, "system")
                .and_then(|s| s.strip_prefix(LOCAL_PATIENT_ID_ROOT))
                .is_some_and(|digits| digits != number)
            {
                differs(format!("{fp}.entry[{i}].resource.identifier[{k}].system"), "the local patient id system");
            }
        }
    }
}

/// Half-width katakana (U+FF61–FF9F), the ideographic space, or a control character.
fn bad_char(c: char) -> bool {
    matches!(c, '\u{FF61}'..='\u{FF9F}' | '\u{3000}') || c.is_control()
}

/// `clins-lab-localCode`, `clins-lab-standardCode`, `clins-lab-characters` for the lab
/// Observations of a JP_Bundle_CLINS or a document (CLINS extracts the 検査 of documents, §A.7).
fn lab_codings(v: &Value, fp: &str, out: &mut Vec<Issue>) {
    for (i, e) in entries(v) {
        let r = &e["resource"];
        if r["resourceType"] != "Observation" || !has_profile(r, LAB_PROFILE) {
            continue;
        }
        let cfp = format!("{fp}.entry[{i}].resource.code");
        let codings: Vec<(usize, &Value)> = array(&r["code"], "coding").collect();
        // Through the OID table: JP Core 1.1.2 material names JLAC10 by its OID.
        let has = |wanted: &[&str]| {
            codings
                .iter()
                .any(|(_, c)| str_at(c, "system").is_some_and(|s| wanted.iter().any(|w| systems::same_system(w, s))))
        };
        if !has(&[LAB_LOCAL_CODE]) {
            out.push(issue(
                IssueType::Required,
                "EHR-VAL-024",
                "clins-lab-localCode",
                &format!("{cfp}.coding"),
                format!("a lab result needs a coding of {LAB_LOCAL_CODE} (local item code _ local material code)"),
            ));
        }
        if !has(LAB_STANDARD_CODES) {
            out.push(issue(
                IssueType::Required,
                "EHR-VAL-025",
                "clins-lab-standardCode",
                &format!("{cfp}.coding"),
                "a lab result needs a JP-CLINS CoreLabo/InfectionLabo (JLAC10/11), a JLAC10 17-digit or the \
                 uncoded-marker coding besides the local code"
                    .to_string(),
            ));
        }
        let mut texts: Vec<(String, &str)> = codings
            .iter()
            .filter_map(|(k, c)| str_at(c, "display").map(|d| (format!("{cfp}.coding[{k}].display"), d)))
            .collect();
        if let Some(t) = str_at(&r["code"], "text") {
            texts.push((format!("{cfp}.text"), t));
        }
        for (tfp, t) in texts {
            if t.chars().any(bad_char) {
                out.push(issue(
                    IssueType::Value,
                    "EHR-VAL-026",
                    "clins-lab-characters",
                    &tfp,
                    "lab item names must not contain half-width kana, the full-width space (U+3000) or control \
                     characters"
                        .to_string(),
                ));
            }
        }
    }
}

/// `R2152` for document Bundles (JP_Bundle_CLINS checks it by its own invariant).
fn bundle_identifier(v: &Value, fp: &str, out: &mut Vec<Issue>) {
    let id = v.get("identifier").unwrap_or(&Value::Null);
    let ok = str_at(id, "system") == Some(BUNDLE_IDENTIFIER) && str_at(id, "value").is_some_and(is_bundle_identifier);
    if !ok {
        out.push(issue(
            IssueType::Value,
            "EHR-VAL-027",
            "R2152",
            &format!("{fp}.identifier"),
            format!(
                "Bundle.identifier must have system {BUNDLE_IDENTIFIER} and a value of the form \
                 <10-digit institution number>^<year 20[2-3]x>^<1-36 of A-Z a-z 0-9 ->"
            ),
        ));
    }
}

/// `checkup-bundle-type`, `checkup-composition-first`; the Composition's own rules when it does
/// not name JP_Composition_eCheckupGeneral itself (then they run through its meta.profile), and
/// `checkup-observation-coded`.
fn checkup_bundle(v: &Value, fp: &str, out: &mut Vec<Issue>) {
    if str_at(v, "type") != Some("document") {
        out.push(issue(
            IssueType::Value,
            "EHR-VAL-028",
            "checkup-bundle-type",
            &format!("{fp}.type"),
            "a health-checkup report Bundle must be of type document".to_string(),
        ));
    }
    let first = v.get("entry").and_then(|e| e.get(0)).and_then(|e| e.get("resource"));
    match first {
        Some(c) if c["resourceType"] == "Composition" => {
            let cfp = format!("{fp}.entry[0].resource");
            if !has_profile(c, CHECKUP_COMPOSITION) {
                checkup_composition(c, &cfp, out);
            }
            checkup_observations(v, c, &cfp, out);
        }
        _ => out.push(issue(
            IssueType::Structure,
            "EHR-VAL-029",
            "checkup-composition-first",
            &format!("{fp}.entry[0]"),
            "the first entry of a health-checkup report Bundle must be its Composition".to_string(),
        )),
    }
}

fn codings(cc: &Value) -> impl Iterator<Item = (usize, &Value)> {
    array(cc, "coding")
}

fn has_coding(cc: &Value, system: &str, codes: Option<&[&str]>) -> bool {
    codings(cc).any(|(_, c)| {
        str_at(c, "system") == Some(system)
            && str_at(c, "code").is_some_and(|code| codes.is_none_or(|cs| cs.contains(&code)))
    })
}

fn section_codes(sec: &Value) -> Vec<&str> {
    codings(&sec["code"])
        .filter(|(_, c)| str_at(c, "system") == Some(CHECKUP_SECTION))
        .filter_map(|(_, c)| str_at(c, "code"))
        .collect()
}

/// The Composition rules of the health-checkup report.
fn checkup_composition(c: &Value, fp: &str, out: &mut Vec<Issue>) {
    if !has_coding(&c["type"], DOC_TYPECODES, Some(CHECKUP_TYPES)) {
        out.push(issue(
            IssueType::Value,
            "EHR-VAL-030",
            "checkup-composition-type",
            &format!("{fp}.type"),
            format!("Composition.type must be {DOC_TYPECODES} 53576-5 (or JPGCHKUP01)"),
        ));
    }
    if !array(c, "category").any(|(_, cat)| has_coding(cat, CHECKUP_CATEGORY, None)) {
        out.push(issue(
            IssueType::Value,
            "EHR-VAL-031",
            "checkup-composition-category",
            &format!("{fp}.category"),
            format!("Composition.category needs a coding of the report category code system {CHECKUP_CATEGORY}"),
        ));
    }
    if !array(c, "event").any(|(_, ev)| array(ev, "code").any(|(_, cc)| has_coding(cc, CHECKUP_PROGRAM, None))) {
        out.push(issue(
            IssueType::Value,
            "EHR-VAL-032",
            "checkup-composition-event",
            &format!("{fp}.event"),
            format!("Composition.event.code needs a coding of the checkup program code system {CHECKUP_PROGRAM}"),
        ));
    }
    let mut present: Vec<&str> = Vec::new();
    for (i, sec) in array(c, "section") {
        let codes = section_codes(sec);
        if codes.is_empty() {
            out.push(issue(
                IssueType::Value,
                "EHR-VAL-033",
                "checkup-section-code",
                &format!("{fp}.section[{i}].code"),
                format!("every section of a health-checkup report must be coded in {CHECKUP_SECTION}"),
            ));
        }
        present.extend(codes);
    }
    let attachment = present.contains(&SECTION_ATTACHMENT);
    let structured = present.iter().any(|c| *c == SECTION_RESULTS || *c == SECTION_INTERVIEW);
    if attachment == structured {
        out.push(issue(
            IssueType::Invariant,
            "EHR-VAL-034",
            "checkup-section-attachment-xor",
            &format!("{fp}.section"),
            "a health-checkup report has either the attachment section 01995 or the result / interview sections \
             01910 / 01920, not both and not neither"
                .to_string(),
        ));
    }
}

/// `checkup-observation-coded`: the Observations referenced from section 01910.
fn checkup_observations(v: &Value, c: &Value, cfp: &str, out: &mut Vec<Issue>) {
    let mut by_url: HashMap<&str, (usize, &Value)> = HashMap::new();
    for (k, e) in entries(v) {
        if let Some(u) = str_at(e, "fullUrl") {
            by_url.entry(u).or_insert((k, e));
        }
    }
    for (i, sec) in array(c, "section") {
        if !section_codes(sec).contains(&SECTION_RESULTS) {
            continue;
        }
        for (j, r) in array(sec, "entry") {
            let Some(reference) = str_at(r, "reference") else { continue };
            let Some(&(k, e)) = by_url.get(reference) else { continue };
            let res = &e["resource"];
            if res["resourceType"] != "Observation" {
                continue;
            }
            let coded =
                codings(&res["code"]).any(|(_, c)| str_at(c, "system").is_some() && str_at(c, "code").is_some());
            if !coded {
                out.push(issue(
                    IssueType::Required,
                    "EHR-VAL-035",
                    "checkup-observation-coded",
                    &format!("{cfp}.section[{i}].entry[{j}]"),
                    format!(
                        "the Observation of entry[{k}] listed in section 01910 needs a code.coding with system and code"
                    ),
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuid_form() {
        assert!(is_urn_uuid("urn:uuid:830ec2d1-67a7-427e-b6fe-ad0eb29da7fb"));
        // RFC 4122: hex digits are case-insensitive on input.
        assert!(is_urn_uuid("urn:uuid:830EC2D1-67A7-427E-B6FE-AD0EB29DA7FB"));
        assert!(!is_urn_uuid("urn:uuid:830ec2d1-67a7-427e-b6fe-ad0eb29da7fb-1"));
        assert!(!is_urn_uuid("urn:uuid:830ec2d1-67a7-427e-b6fe-ad0eb29da7fg"));
        assert!(!is_urn_uuid("urn:uuid:+30ec2d1-67a7-427e-b6fe-ad0eb29da7fb"));
        assert!(!is_urn_uuid("http://example.org/Patient/1"));
        assert!(!is_urn_uuid("urn:uuid:830ec2d1-67a7-427e-b6fe"));
    }

    #[test]
    fn characters() {
        assert!(bad_char('ｱ'));
        assert!(bad_char('\u{3000}'));
        assert!(bad_char('\n'));
        assert!(!bad_char('ア'));
        assert!(!bad_char('A'));
    }
}
