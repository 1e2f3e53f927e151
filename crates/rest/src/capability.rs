//! The CapabilityStatement: exactly what this server implements, derived from the same tables
//! the code runs on (served types, search-parameter definitions, the validator's profiles), so
//! it cannot drift. `tests/api/capability.rs` checks every claim against the running router.

use chrono::{DateTime, SecondsFormat, Utc};
use ehr_fhir::search::{ParamKind, params_for};
use ehr_fhir::validate::Validator;
use serde_json::{Value, json};

/// The interactions [`crate::router`] serves on every type it owns.
const INTERACTIONS: [&str; 9] =
    ["read", "vread", "update", "patch", "delete", "history-instance", "history-type", "create", "search-type"];

/// `$validate` (ehr-validation), merged beside every REST router: on each served type and on
/// Bundle (documents and the 6 information items are validated, not stored).
const VALIDATE: &str = "http://hl7.org/fhir/OperationDefinition/Resource-validate";

/// The terminology operations (ehr-terminology), merged beside every REST router; CodeSystem and
/// ValueSet are not stored, so their entries carry the operation only.
const TERMINOLOGY: [(&str, &str, &str); 2] = [
    ("CodeSystem", "lookup", "http://hl7.org/fhir/OperationDefinition/CodeSystem-lookup"),
    ("ValueSet", "validate-code", "http://hl7.org/fhir/OperationDefinition/ValueSet-validate-code"),
];

fn op(name: &str, definition: &str) -> Value {
    json!({"name": name, "definition": definition})
}

/// The entry of a stored type `t` of a service serving `types`.
fn stored_entry(t: &str, types: &[&'static str], validator: &Validator) -> Value {
    let mut params: Vec<Value> =
        vec![json!({"name": "_id", "type": "token"}), json!({"name": "_lastUpdated", "type": "date"})];
    params.extend(params_for(t).map(|d| json!({"name": d.name, "type": d.kind.code()})));
    let includes: Vec<String> =
        params_for(t).filter(|d| d.kind == ParamKind::Reference).map(|d| format!("{t}:{}", d.name)).collect();
    // Reverse includes: reference parameters of served types that may point at `t`.
    let revincludes: Vec<String> = types
        .iter()
        .flat_map(|source| {
            params_for(source)
                .filter(|d| d.kind == ParamKind::Reference)
                .filter(|d| d.targets.is_empty() || d.targets.contains(&t))
                .map(move |d| format!("{source}:{}", d.name))
        })
        .collect();
    let interactions: Vec<Value> = INTERACTIONS.iter().map(|c| json!({"code": c})).collect();
    without_empty_lists(json!({
        "type": t,
        // Enforced when a resource declares them in meta.profile (or `$validate?profile=`).
        "supportedProfile": validator.profiles_for(t),
        "interaction": interactions,
        "versioning": "versioned-update",
        "readHistory": true,
        "updateCreate": true,
        "conditionalCreate": true,
        "conditionalRead": "not-match",
        "conditionalUpdate": true,
        "conditionalDelete": "single",
        "referencePolicy": ["literal", "local"],
        "searchInclude": includes,
        "searchRevInclude": revincludes,
        "searchParam": params,
        "operation": [op("validate", VALIDATE)],
    }))
}

/// FHIR JSON has no empty arrays: a type without profiles or includes omits the element.
fn without_empty_lists(mut entry: Value) -> Value {
    if let Some(obj) = entry.as_object_mut() {
        obj.retain(|_, v| v.as_array().is_none_or(|a| !a.is_empty()));
    }
    entry
}

/// Builds the CapabilityStatement for a service serving `types` (sorted or not; listed in the
/// given order, then the operation-only entries Bundle, CodeSystem and ValueSet).
pub fn capability_statement(types: &[&'static str], base: &str, now: DateTime<Utc>) -> Value {
    let validator = Validator::new();
    let mut resources: Vec<Value> = types.iter().map(|t| stored_entry(t, types, &validator)).collect();
    resources.push(without_empty_lists(json!({
        "type": "Bundle",
        "supportedProfile": validator.profiles_for("Bundle"),
        "operation": [op("validate", VALIDATE)],
    })));
    for (t, name, definition) in TERMINOLOGY {
        resources.push(json!({"type": t, "operation": [op(name, definition)]}));
    }
    json!({
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": now.to_rfc3339_opts(SecondsFormat::Secs, true),
        "publisher": "ehr reference implementation",
        "kind": "instance",
        "software": {"name": "ehr", "version": env!("CARGO_PKG_VERSION")},
        "implementation": {"description": "MHLW standard-spec cloud-native hospital EHR reference implementation", "url": base},
        "fhirVersion": "4.0.1",
        "format": ["application/fhir+json", "application/fhir+xml"],
        "patchFormat": ["application/json-patch+json"],
        "implementationGuide": ["http://jpfhir.jp/fhir/core/ImplementationGuide/jpfhir.jp.core"],
        "rest": [{
            "mode": "server",
            "security": {
                "cors": false,
                "service": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/restful-security-service", "code": "SMART-on-FHIR"}]}],
                "description": "Bearer JWT (ES256) with SMART v2 user/ and system/ scopes; the tenant comes from the token"
            },
            "resource": resources,
            "interaction": [{"code": "transaction"}, {"code": "batch"}, {"code": "history-system"}],
        }],
    })
}
