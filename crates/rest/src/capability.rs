//! The CapabilityStatement: exactly what this server implements, derived from the same tables
//! the code runs on (served types, search-parameter definitions), so it cannot drift.

use chrono::{DateTime, SecondsFormat, Utc};
use ehr_fhir::search::params_for;
use serde_json::{Value, json};

const INTERACTIONS: [&str; 9] =
    ["read", "vread", "update", "patch", "delete", "history-instance", "history-type", "create", "search-type"];

/// Builds the CapabilityStatement for a service serving `types`.
pub fn capability_statement(types: &[&'static str], base: &str, now: DateTime<Utc>) -> Value {
    let resources: Vec<Value> = types
        .iter()
        .map(|t| {
            let mut params: Vec<Value> =
                vec![json!({"name": "_id", "type": "token"}), json!({"name": "_lastUpdated", "type": "date"})];
            params.extend(params_for(t).map(|d| json!({"name": d.name, "type": d.kind.code()})));
            let includes: Vec<String> = params_for(t)
                .filter(|d| d.kind == ehr_fhir::search::ParamKind::Reference)
                .map(|d| format!("{t}:{}", d.name))
                .collect();
            // Reverse includes: reference parameters of served types that may point at `t`.
            let revincludes: Vec<String> = types
                .iter()
                .flat_map(|source| {
                    params_for(source)
                        .filter(|d| d.kind == ehr_fhir::search::ParamKind::Reference)
                        .filter(|d| d.targets.is_empty() || d.targets.contains(t))
                        .map(move |d| format!("{source}:{}", d.name))
                })
                .collect();
            let interactions: Vec<Value> = INTERACTIONS.iter().map(|c| json!({"code": c})).collect();
            json!({
                "type": t,
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
                // Served beside every REST router (ehr-validation): JP Core / JP-CLINS profiles,
                // the JP-CLINS rules and the master codes, as the national services check them.
                "operation": [{"name": "validate", "definition": "http://hl7.org/fhir/OperationDefinition/Resource-validate"}],
            })
        })
        .collect();
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
