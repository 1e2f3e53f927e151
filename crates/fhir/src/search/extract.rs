//! Extraction of search-index values from resource JSON, driven by [`SearchParamDef`] paths.

use super::datetime::{DateRange, parse_date_range};
use super::params::{ParamKind, SearchParamDef, params_for};
use serde_json::Value;

/// One value of one search parameter of a resource, ready for its index table.
#[derive(Debug, Clone, PartialEq)]
pub enum IndexValue {
    /// `system|code` of a Coding, Identifier, ContactPoint or code/boolean primitive.
    Token {
        system: Option<String>,
        code: Option<String>,
    },
    /// A string part, normalised for case-insensitive prefix matching, and as written.
    String {
        normalized: String,
        exact: String,
    },
    /// The instant range a date value covers, in epoch milliseconds, both ends inclusive.
    Date(DateRange),
    /// A reference, split into type and id where it is a relative (or absolute REST) reference.
    Reference {
        target_type: Option<String>,
        target_id: Option<String>,
        url: String,
    },
    Quantity {
        value: f64,
        system: Option<String>,
        code: Option<String>,
    },
    Number(f64),
    Uri(String),
}

/// A value together with the parameter it belongs to.
#[derive(Debug, Clone, PartialEq)]
pub struct IndexEntry {
    pub param: &'static str,
    pub kind: ParamKind,
    pub value: IndexValue,
}

/// Extracts every index value of every search parameter of the resource's type.
pub fn extract(resource_type: &str, resource: &Value) -> Vec<IndexEntry> {
    let mut out = Vec::new();
    for def in params_for(resource_type) {
        extract_param(def, resource, &mut out);
    }
    out
}

fn extract_param(def: &'static SearchParamDef, resource: &Value, out: &mut Vec<IndexEntry>) {
    let mut nodes = Vec::new();
    for path in def.paths {
        collect(resource, path, &mut nodes);
    }
    for node in nodes {
        let mut push = |value| out.push(IndexEntry { param: def.name, kind: def.kind, value });
        match def.kind {
            ParamKind::Token => tokens(node, &mut push),
            ParamKind::String => strings(node, &mut push),
            ParamKind::Date => {
                if let Some(range) = date(node) {
                    push(IndexValue::Date(range));
                }
            }
            ParamKind::Reference => {
                if let Some(v) = reference(node) {
                    // A parameter restricted to some target types (`patient` is
                    // `subject.where(resolve() is Patient)`) does not index references to others.
                    let other_type = matches!(&v, IndexValue::Reference { target_type: Some(t), .. }
                        if !def.targets.is_empty() && !def.targets.contains(&t.as_str()));
                    if !other_type {
                        push(v);
                    }
                }
            }
            ParamKind::Quantity => {
                if let Some(v) = quantity(node) {
                    push(v);
                }
            }
            ParamKind::Number => {
                if let Some(n) = node.as_f64() {
                    push(IndexValue::Number(n));
                }
            }
            ParamKind::Uri => {
                if let Some(s) = node.as_str() {
                    push(IndexValue::Uri(s.to_owned()));
                }
            }
        }
    }
}

/// Walks a dotted path, flattening arrays. A segment may carry one `[key=value]` filter, which
/// keeps only objects whose `key` equals `value` (used for `telecom[system=phone]`).
fn collect<'a>(root: &'a Value, path: &str, out: &mut Vec<&'a Value>) {
    let mut current = vec![root];
    for segment in path.split('.') {
        let (name, filter) = match segment.split_once('[') {
            Some((name, rest)) => (name, rest.strip_suffix(']').and_then(|f| f.split_once('='))),
            None => (segment, None),
        };
        let mut next = Vec::new();
        for node in current {
            match node.get(name) {
                Some(Value::Array(items)) => next.extend(items.iter()),
                Some(v) => next.push(v),
                None => {}
            }
        }
        if let Some((key, want)) = filter {
            next.retain(|v| v.get(key).and_then(Value::as_str) == Some(want));
        }
        current = next;
    }
    out.extend(current);
}

fn str_field(v: &Value, key: &str) -> Option<String> {
    v.get(key).and_then(Value::as_str).map(str::to_owned)
}

fn tokens(node: &Value, push: &mut impl FnMut(IndexValue)) {
    match node {
        Value::String(s) => push(IndexValue::Token { system: None, code: Some(s.clone()) }),
        Value::Bool(b) => push(IndexValue::Token { system: None, code: Some(b.to_string()) }),
        Value::Object(map) => {
            if let Some(Value::Array(codings)) = map.get("coding") {
                // CodeableConcept
                for c in codings {
                    tokens(c, push);
                }
            } else if map.contains_key("value") && !map.contains_key("code") {
                // Identifier or ContactPoint
                let system = str_field(node, "system");
                push(IndexValue::Token { system, code: str_field(node, "value") });
            } else if map.contains_key("code") || map.contains_key("system") {
                // Coding
                push(IndexValue::Token { system: str_field(node, "system"), code: str_field(node, "code") });
            }
        }
        _ => {}
    }
}

/// Lowercases and folds full-width ASCII forms to half-width, so `ｙａｍａｄａ` finds `Yamada`.
pub fn normalize_string(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            '\u{FF01}'..='\u{FF5E}' => char::from_u32(c as u32 - 0xFEE0).unwrap_or(c),
            '\u{3000}' => ' ',
            _ => c,
        })
        .flat_map(char::to_lowercase)
        .collect()
}

fn strings(node: &Value, push: &mut impl FnMut(IndexValue)) {
    let mut one = |s: &str| {
        if !s.is_empty() {
            push(IndexValue::String { normalized: normalize_string(s), exact: s.to_owned() });
        }
    };
    match node {
        Value::String(s) => one(s),
        Value::Object(map) => {
            // HumanName and Address: every textual part is searchable.
            for key in ["text", "family", "city", "district", "state", "postalCode", "country"] {
                if let Some(Value::String(s)) = map.get(key) {
                    one(s);
                }
            }
            for key in ["given", "prefix", "suffix", "line"] {
                if let Some(Value::Array(parts)) = map.get(key) {
                    parts.iter().filter_map(Value::as_str).for_each(&mut one);
                }
            }
        }
        _ => {}
    }
}

fn date(node: &Value) -> Option<DateRange> {
    match node {
        Value::String(s) => parse_date_range(s),
        Value::Object(period) => {
            let start = period.get("start").and_then(Value::as_str).and_then(parse_date_range);
            let end = period.get("end").and_then(Value::as_str).and_then(parse_date_range);
            if start.is_none() && end.is_none() {
                return None;
            }
            Some(DateRange { low: start.map_or(i64::MIN, |r| r.low), high: end.map_or(i64::MAX, |r| r.high) })
        }
        _ => None,
    }
}

/// The patients whose data `resource` is (`Patient/123`): itself for a Patient, else the targets
/// of its `patient` search parameter — the audit trail names them (IHE BALP).
pub fn patients_of(resource_type: &str, resource: &Value) -> Vec<String> {
    if resource_type == "Patient" {
        return resource.get("id").and_then(Value::as_str).map(|id| vec![format!("Patient/{id}")]).unwrap_or_default();
    }
    let Some(def) = params_for(resource_type).find(|d| d.name == "patient") else {
        return Vec::new();
    };
    let mut out = Vec::new();
    extract_param(def, resource, &mut out);
    let mut refs: Vec<String> = out
        .into_iter()
        .filter_map(|e| match e.value {
            IndexValue::Reference { target_type: Some(t), target_id: Some(id), .. } if t == "Patient" => {
                Some(format!("Patient/{id}"))
            }
            _ => None,
        })
        .collect();
    refs.dedup();
    refs
}

/// Splits `Patient/123`, `Patient/123/_history/2` or `http://host/fhir/Patient/123` into type and id.
pub fn split_reference(url: &str) -> Option<(&str, &str)> {
    let path = url.split("/_history/").next().unwrap_or(url);
    let mut parts = path.rsplit('/');
    let id = parts.next()?;
    let ty = parts.next()?;
    let is_type =
        ty.chars().next().is_some_and(|c| c.is_ascii_uppercase()) && ty.chars().all(|c| c.is_ascii_alphabetic());
    (is_type && !id.is_empty()).then_some((ty, id))
}

fn reference(node: &Value) -> Option<IndexValue> {
    let url = match node {
        // A canonical (`ServiceRequest.instantiatesCanonical`) is a plain URL string, searched
        // as a reference parameter in R4.
        Value::String(canonical) => canonical.as_str(),
        _ => node.get("reference").and_then(Value::as_str)?,
    };
    if url.starts_with('#') {
        return None; // contained resources are not separately searchable
    }
    // Only relative references name a resource of this server. An absolute URL may be another
    // server's `Patient/1`, a different person from ours: it is indexed by URL alone.
    let (target_type, target_id) = match split_reference(url) {
        Some((t, i)) if !url.contains("://") && !url.starts_with("urn:") => (Some(t.to_owned()), Some(i.to_owned())),
        _ => (None, None),
    };
    Some(IndexValue::Reference { target_type, target_id, url: url.to_owned() })
}

fn quantity(node: &Value) -> Option<IndexValue> {
    let value = node.get("value").and_then(Value::as_f64)?;
    let code = str_field(node, "code").or_else(|| str_field(node, "unit"));
    Some(IndexValue::Quantity { value, system: str_field(node, "system"), code })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn values_of(entries: &[IndexEntry], param: &str) -> Vec<IndexValue> {
        entries.iter().filter(|e| e.param == param).map(|e| e.value.clone()).collect()
    }

    #[test]
    fn patient_values() {
        let p = json!({
            "resourceType": "Patient",
            "identifier": [{"system": "urn:oid:1.2.392.100495.20.3.51.11311234567", "value": "00000010"}],
            "name": [{"family": "山田", "given": ["太郎"]}, {"family": "ヤマダ", "given": ["タロウ"]}],
            "gender": "male",
            "birthDate": "1970-01-01",
            "telecom": [{"system": "phone", "value": "0312345678"}, {"system": "email", "value": "t@example.jp"}],
            "managingOrganization": {"reference": "Organization/org1"}
        });
        let e = extract("Patient", &p);
        assert_eq!(values_of(&e, "family").len(), 2);
        assert_eq!(values_of(&e, "name").len(), 4);
        assert_eq!(
            values_of(&e, "identifier"),
            vec![IndexValue::Token {
                system: Some("urn:oid:1.2.392.100495.20.3.51.11311234567".into()),
                code: Some("00000010".into())
            }]
        );
        assert_eq!(
            values_of(&e, "phone"),
            vec![IndexValue::Token { system: Some("phone".into()), code: Some("0312345678".into()) }]
        );
        assert_eq!(
            values_of(&e, "organization"),
            vec![IndexValue::Reference {
                target_type: Some("Organization".into()),
                target_id: Some("org1".into()),
                url: "Organization/org1".into()
            }]
        );
        let IndexValue::Date(range) = &values_of(&e, "birthdate")[0] else { panic!("date") };
        // A date without a zone is a day in Japan Standard Time.
        assert_eq!(range.low, -9 * 3_600_000);
        assert_eq!(range.high, 86_400_000 - 9 * 3_600_000 - 1);
    }

    #[test]
    fn full_width_letters_fold_to_ascii() {
        assert_eq!(normalize_string("ＹａｍａＤＡ　太郎"), "yamada 太郎");
    }

    #[test]
    fn patients_of_resources() {
        let obs = json!({"resourceType": "Observation", "subject": {"reference": "Patient/p1"}});
        assert_eq!(patients_of("Observation", &obs), vec!["Patient/p1".to_owned()]);
        let grp = json!({"resourceType": "Observation", "subject": {"reference": "Group/g1"}});
        assert!(patients_of("Observation", &grp).is_empty());
        assert_eq!(patients_of("Patient", &json!({"id": "p2"})), vec!["Patient/p2".to_owned()]);
        assert!(patients_of("Organization", &json!({"id": "o"})).is_empty());
    }

    #[test]
    fn appointment_patient_is_the_patient_participant() {
        let a = json!({"resourceType": "Appointment", "status": "booked",
        "participant": [
            {"actor": {"reference": "Patient/p1"}, "status": "accepted"},
            {"actor": {"reference": "Practitioner/d1"}, "status": "accepted"},
            {"actor": {"reference": "Location/room1"}, "status": "needs-action"}
        ]});
        let e = extract("Appointment", &a);
        let ids = |param| -> Vec<Option<String>> {
            values_of(&e, param)
                .into_iter()
                .map(|v| match v {
                    IndexValue::Reference { target_id, .. } => target_id,
                    _ => None,
                })
                .collect()
        };
        assert_eq!(ids("patient"), vec![Some("p1".to_owned())]);
        assert_eq!(ids("practitioner"), vec![Some("d1".to_owned())]);
        assert_eq!(ids("location"), vec![Some("room1".to_owned())]);
        assert_eq!(ids("actor").len(), 3);
        assert_eq!(values_of(&e, "part-status").len(), 3);
        assert_eq!(patients_of("Appointment", &a), vec!["Patient/p1".to_owned()]);
    }

    #[test]
    fn canonical_references_are_indexed_by_url() {
        let sr = json!({"resourceType": "ServiceRequest",
            "instantiatesCanonical": ["http://example.org/fhir/PlanDefinition/cbc|1.0"],
            "subject": {"reference": "Patient/p1"}});
        assert_eq!(
            values_of(&extract("ServiceRequest", &sr), "instantiates-canonical"),
            vec![IndexValue::Reference {
                target_type: None,
                target_id: None,
                url: "http://example.org/fhir/PlanDefinition/cbc|1.0".into()
            }]
        );
    }

    #[test]
    fn medication_request_dates_repeat_per_timing_event() {
        let mr = json!({"resourceType": "MedicationRequest",
        "medicationCodeableConcept": {"coding": [{"system": "urn:oid:1.2.392.100495.20.2.74", "code": "620000033"}]},
        "authoredOn": "2024-04-01",
        "dosageInstruction": [
            {"timing": {"event": ["2024-04-01T08:00:00+09:00", "2024-04-01T20:00:00+09:00"]}},
            {"timing": {"event": ["2024-04-02T08:00:00+09:00"]}}
        ]});
        let e = extract("MedicationRequest", &mr);
        assert_eq!(values_of(&e, "date").len(), 3);
        assert_eq!(values_of(&e, "authoredon").len(), 1);
        assert_eq!(values_of(&e, "code").len(), 1);
    }

    #[test]
    fn references_split() {
        assert_eq!(split_reference("Patient/1/_history/2"), Some(("Patient", "1")));
        assert_eq!(split_reference("https://h/fhir/Patient/1"), Some(("Patient", "1")));
        assert_eq!(split_reference("1"), None);
    }
}
