//! OpenAPI 3.1 documents of every service, generated from the route tables next to this module
//! ([`routes`]), the resource types each target serves and the search parameter table of
//! `ehr-fhir` — `ehr openapi` writes them to `openapi/`, `ehr openapi --check` (CI) fails when
//! the committed copy differs. See `openapi/README.md`.
//!
//! The schemas are honest rather than complete: FHIR resources are checked for their
//! `resourceType` and the few elements every answer carries (a Bundle's `type` and `entry`, an
//! OperationOutcome's `issue`), not against the full R4 definitions (that is `$validate`'s job);
//! the JSON of the non-FHIR APIs is left open where its shape is documented in prose only.

pub mod routes;

use routes::{Body, Reply, RouteDoc};
use serde_json::{Map, Value, json};
use std::collections::BTreeMap;
use std::path::Path;

/// The FHIR version of every document.
const FHIR_VERSION: &str = "4.0.1";

/// Error statuses every authenticated operation may answer, with an OperationOutcome.
const ERRORS: &[(u16, &str)] = &[
    (400, "The request is malformed"),
    (401, "No valid bearer token"),
    (403, "The token's scopes or the tenant's consent do not allow this"),
    (404, "No such resource"),
    (405, "The method is not supported here"),
    (406, "No acceptable representation"),
    (409, "Conflict with the current state"),
    (410, "The resource was deleted"),
    (412, "A precondition (If-Match) failed"),
    (413, "The body is too large"),
    (415, "The content type is not supported"),
    (422, "The resource is not valid"),
    (429, "Too many requests"),
];

/// One generated document: its file name in `openapi/` and its JSON.
pub struct Document {
    pub file: &'static str,
    pub json: Value,
}

/// Every document, in file-name order.
pub fn documents() -> Vec<Document> {
    let mut patient_record: Vec<&str> = ehr_patient_record::RESOURCE_TYPES.to_vec();
    patient_record.sort_unstable();
    let mut orders: Vec<&str> = ehr_orders::RESOURCE_TYPES.to_vec();
    orders.sort_unstable();
    let mut docs = vec![
        Document {
            file: "gateway.json",
            json: document(
                "gateway",
                "The public entry point: SMART discovery, login and tokens, the admin API and the \
                 gateway's AuditEvents. Every other document's paths are also served here, forwarded.",
                &with_health(&[routes::GATEWAY, routes::AUDIT_EVENTS].concat()),
            ),
        },
        Document {
            file: "metrics.json",
            json: document(
                "metrics",
                "The metrics listener of every target (telemetry.metrics_listen), apart from the API's port.",
                routes::METRICS,
            ),
        },
        Document { file: "patient-record.json", json: fhir_document("patient-record", &patient_record) },
        Document { file: "orders.json", json: fhir_document("orders", &orders) },
        Document {
            file: "data-export.json",
            json: document(
                "data-export",
                "FHIR Bulk Data export and import, and Patient $everything.",
                &with_health(routes::DATA_EXPORT),
            ),
        },
        Document {
            file: "lab-interface.json",
            json: document(
                "lab-interface",
                "The laboratory interface's endpoints, messages and connections (HL7 v2 over MLLP runs on its own listener).",
                &with_health(routes::LAB_INTERFACE),
            ),
        },
        Document {
            file: "clins-adapter.json",
            json: document(
                "clins-adapter",
                "The adapter to the national clinical information sharing service (CLINS).",
                &with_health(routes::CLINS_ADAPTER),
            ),
        },
        Document {
            file: "eprescription-adapter.json",
            json: document(
                "eprescription-adapter",
                "The adapter to the national e-prescription service.",
                &with_health(routes::EPRESCRIPTION_ADAPTER),
            ),
        },
    ];
    docs.sort_by_key(|d| d.file);
    docs
}

/// The text of a document as written to `openapi/`: keys sorted, two-space indent, a final
/// newline — the same bytes on every machine.
pub fn render(doc: &Value) -> String {
    let mut text = serde_json::to_string_pretty(&sorted(doc)).unwrap_or_default();
    text.push('\n');
    text
}

/// Writes every document into `dir` (created when missing); returns the files written.
pub fn write(dir: &Path) -> std::io::Result<Vec<String>> {
    std::fs::create_dir_all(dir)?;
    let mut written = Vec::new();
    for doc in documents() {
        std::fs::write(dir.join(doc.file), render(&doc.json))?;
        written.push(doc.file.to_owned());
    }
    Ok(written)
}

/// Compares `dir` with what the code generates: one line per file that is missing or differs
/// (empty when they match).
pub fn check(dir: &Path) -> Vec<String> {
    let mut problems = Vec::new();
    for doc in documents() {
        let path = dir.join(doc.file);
        let want = render(&doc.json);
        match std::fs::read_to_string(&path) {
            Err(_) => problems.push(format!("{}: missing", path.display())),
            Ok(have) if have != want => {
                let first = have.lines().zip(want.lines()).position(|(a, b)| a != b);
                let line = first.unwrap_or_else(|| have.lines().count().min(want.lines().count())) + 1;
                problems.push(format!(
                    "{}: differs from the generated document (first at line {line}; {} lines committed, {} generated)",
                    path.display(),
                    have.lines().count(),
                    want.lines().count()
                ));
            }
            Ok(_) => {}
        }
    }
    problems
}

/// Every operation of every document, as `(file, method, path)`, for the route-coverage test.
pub fn operations() -> Vec<(&'static str, String, String)> {
    let mut out = Vec::new();
    for doc in documents() {
        if let Some(paths) = doc.json["paths"].as_object() {
            for (path, item) in paths {
                for method in item.as_object().into_iter().flat_map(|m| m.keys()) {
                    if method != "parameters" {
                        out.push((doc.file, method.to_uppercase(), path.clone()));
                    }
                }
            }
        }
    }
    out
}

fn with_health(routes: &[RouteDoc]) -> Vec<RouteDoc> {
    routes.iter().chain(routes::HEALTH).copied().collect()
}

/// A FHIR service's document: the system routes, then every type's routes with its search
/// parameters.
fn fhir_document(service: &str, types: &[&str]) -> Value {
    let mut paths = Map::new();
    for route in routes::FHIR_SYSTEM.iter().chain(routes::HEALTH) {
        add(&mut paths, route, None);
    }
    for ty in types.iter().copied().chain(["Bundle"]) {
        let served = ty != "Bundle";
        for route in routes::fhir_type_ops(ty, served) {
            add(&mut paths, route, Some(ty));
        }
    }
    let description = format!(
        "The FHIR R4 ({FHIR_VERSION}) RESTful API of {service}: {} (and $validate of Bundle), \
         batch/transaction, history, CapabilityStatement and the terminology operations.",
        types.join(", ")
    );
    let mut doc = base(service, &description, paths);
    let schemas = doc["components"]["schemas"].as_object_mut();
    if let Some(schemas) = schemas {
        for ty in types.iter().copied().chain(["Bundle"]) {
            if ty != "Bundle" {
                schemas.insert(ty.to_owned(), typed_resource(ty));
            }
        }
    }
    doc
}

fn document(service: &str, description: &str, routes: &[RouteDoc]) -> Value {
    let mut paths = Map::new();
    for route in routes {
        add(&mut paths, route, None);
    }
    base(service, description, paths)
}

fn base(service: &str, description: &str, paths: Map<String, Value>) -> Value {
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": format!("EHR {service}"),
            "version": env!("CARGO_PKG_VERSION"),
            "description": description,
            "license": {"name": "Apache-2.0", "identifier": "Apache-2.0"},
        },
        "servers": [{"url": "/", "description": "the gateway, or the service itself (same paths)"}],
        "security": [{"bearer": []}],
        "paths": paths,
        "components": {
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT",
                    "description": "An access token of the gateway (SMART scopes), or a development token (`ehr dev-token`)"},
            },
            "responses": error_responses(),
            "schemas": {
                "OperationOutcome": operation_outcome(),
                "Resource": resource(),
                "Bundle": bundle(),
                "Parameters": parameters(),
                "Meta": {"type": "object", "properties": {
                    "versionId": {"type": "string"},
                    "lastUpdated": {"type": "string"},
                    "profile": {"type": "array", "items": {"type": "string"}},
                }},
            },
        },
    })
}

/// Adds one operation; `ty` fills a `{ty}` in the route's path.
fn add(paths: &mut Map<String, Value>, route: &RouteDoc, ty: Option<&str>) {
    let path = match ty {
        Some(ty) => route.path.replace("{ty}", ty),
        None => route.path.to_owned(),
    };
    let resource_ref = match ty {
        Some(ty) if ty != "Bundle" => format!("#/components/schemas/{ty}"),
        _ => "#/components/schemas/Resource".to_owned(),
    };
    let mut operation = Map::new();
    let summary = match ty {
        Some(ty) => format!("{} ({ty})", route.summary),
        None => route.summary.to_owned(),
    };
    operation.insert("summary".into(), json!(summary));
    operation.insert("operationId".into(), json!(operation_id(route.method, &path)));
    let tag = path
        .trim_start_matches('/')
        .split('/')
        .take(if path.starts_with("/fhir/") { 2 } else { 1 })
        .collect::<Vec<_>>()
        .join("/");
    operation.insert("tags".into(), json!([tag]));
    if !route.auth {
        operation.insert("security".into(), json!([]));
    }
    let mut parameters: Vec<Value> = path_params(&path).into_iter().map(|name| {
        json!({"name": name, "in": "path", "required": true, "schema": {"type": "string", "pattern": "^[A-Za-z0-9\\-\\.]{1,64}$"}})
    }).collect();
    if let Some(ty) = ty
        && route.method == "GET"
        && (route.path == "/fhir/{ty}")
    {
        parameters.extend(search_params(ty));
    }
    if !parameters.is_empty() {
        operation.insert("parameters".into(), Value::Array(parameters));
    }
    if let Some(body) = request_body(route.body, &resource_ref) {
        operation.insert("requestBody".into(), body);
    }
    let mut responses = Map::new();
    for (status, reply) in route.ok {
        responses.insert(status.to_string(), response(*reply, &resource_ref));
    }
    for (status, _) in ERRORS {
        if !route.auth && matches!(status, 401 | 403 | 404 | 409 | 410 | 412 | 422) && !path.starts_with("/auth/") {
            continue;
        }
        responses.insert(status.to_string(), json!({"$ref": format!("#/components/responses/Error{status}")}));
    }
    responses.insert("503".into(), json!({"$ref": "#/components/responses/Error503"}));
    operation.insert("responses".into(), Value::Object(responses));
    let item = paths.entry(path).or_insert_with(|| json!({}));
    if let Some(item) = item.as_object_mut() {
        item.insert(route.method.to_lowercase(), Value::Object(operation));
    }
}

fn operation_id(method: &str, path: &str) -> String {
    let mut id = method.to_lowercase();
    for segment in path.split('/').filter(|s| !s.is_empty()) {
        id.push('_');
        id.extend(segment.chars().filter(|c| c.is_ascii_alphanumeric() || *c == '-'));
    }
    id
}

fn path_params(path: &str) -> Vec<String> {
    path.split('/').filter_map(|s| s.strip_prefix('{').and_then(|s| s.strip_suffix('}'))).map(str::to_owned).collect()
}

/// The search parameters of `ty` from `ehr-fhir`'s table, and the result parameters the engine
/// takes.
fn search_params(ty: &str) -> Vec<Value> {
    let mut out: Vec<Value> = ["_id", "_lastUpdated"]
        .into_iter()
        .map(|name| {
            json!({"name": name, "in": "query", "required": false, "schema": {"type": "string"},
                "description": if name == "_id" { "token" } else { "date" }})
        })
        .collect();
    for def in ehr_fhir::search::params_for(ty) {
        out.push(json!({
            "name": def.name,
            "in": "query",
            "required": false,
            "schema": {"type": "string"},
            "description": format!("{} search parameter", def.kind.code()),
        }));
    }
    out.push(json!({"name": "_count", "in": "query", "required": false,
        "schema": {"type": "integer", "minimum": 0, "maximum": 1000}, "description": "page size"}));
    out.push(json!({"name": "_sort", "in": "query", "required": false, "schema": {"type": "string"}}));
    out.push(json!({"name": "_total", "in": "query", "required": false,
        "schema": {"type": "string", "enum": ["none", "estimate", "accurate"]}}));
    out
}

fn request_body(body: Body, resource_ref: &str) -> Option<Value> {
    let (media, schema) = match body {
        Body::None => return None,
        Body::Resource => ("application/fhir+json", json!({"$ref": resource_ref})),
        Body::Bundle => ("application/fhir+json", json!({"$ref": "#/components/schemas/Bundle"})),
        Body::AnyResource => ("application/fhir+json", json!({"$ref": "#/components/schemas/Resource"})),
        Body::Parameters => ("application/fhir+json", json!({"$ref": "#/components/schemas/Parameters"})),
        Body::Json => ("application/json", json!({"type": "object"})),
        Body::JsonPatch => (
            "application/json-patch+json",
            json!({"type": "array", "items": {"type": "object", "required": ["op", "path"], "properties": {
                "op": {"type": "string", "enum": ["add", "remove", "replace", "move", "copy", "test"]},
                "path": {"type": "string"},
                "from": {"type": "string"},
                "value": {},
            }}}),
        ),
        Body::Form(fields) => {
            let properties: Map<String, Value> =
                fields.iter().map(|f| ((*f).to_owned(), json!({"type": "string"}))).collect();
            ("application/x-www-form-urlencoded", json!({"type": "object", "properties": properties}))
        }
        Body::Ndjson => (
            "multipart/form-data",
            json!({"type": "object", "properties": {"file": {"type": "string", "contentMediaType": "application/fhir+ndjson"}}}),
        ),
    };
    Some(json!({"required": true, "content": {media: {"schema": schema}}}))
}

fn response(reply: Reply, resource_ref: &str) -> Value {
    let fhir = |schema: Value| json!({"application/fhir+json": {"schema": schema}});
    let (description, content) = match reply {
        Reply::Resource => ("The resource", Some(fhir(json!({"$ref": resource_ref})))),
        Reply::AnyResource => ("A resource", Some(fhir(json!({"$ref": "#/components/schemas/Resource"})))),
        Reply::Bundle => ("A Bundle", Some(fhir(json!({"$ref": "#/components/schemas/Bundle"})))),
        Reply::Outcome => ("An OperationOutcome", Some(fhir(json!({"$ref": "#/components/schemas/OperationOutcome"})))),
        Reply::Parameters => ("Parameters", Some(fhir(json!({"$ref": "#/components/schemas/Parameters"})))),
        Reply::Json => ("JSON (see the docs)", Some(json!({"application/json": {"schema": {}}}))),
        Reply::HtmlOrJson => (
            "The next step: an HTML page, or JSON when the client accepts JSON",
            Some(
                json!({"text/html": {"schema": {"type": "string"}}, "application/json": {"schema": {"type": "object"}}}),
            ),
        ),
        Reply::Text => ("Text", Some(json!({"text/plain": {"schema": {"type": "string"}}}))),
        Reply::Ndjson => ("NDJSON", Some(json!({"application/fhir+ndjson": {"schema": {"type": "string"}}}))),
        Reply::Empty => ("No content", None),
        Reply::Redirect => ("Redirect (Location)", None),
        Reply::Accepted => ("Accepted: Content-Location names the status URL", None),
    };
    match content {
        Some(content) => json!({"description": description, "content": content}),
        None => json!({"description": description}),
    }
}

/// The shared error responses: an OperationOutcome for each status of [`ERRORS`], and 503.
fn error_responses() -> Value {
    let mut out = Map::new();
    for (status, why) in ERRORS {
        out.insert(
            format!("Error{status}"),
            json!({
                "description": why,
                "content": {"application/fhir+json": {"schema": {"$ref": "#/components/schemas/OperationOutcome"}}},
            }),
        );
    }
    out.insert("Error503".into(), json!({"description": "Not ready, draining, or a dependency is unavailable"}));
    Value::Object(out)
}

/// What every FHIR resource this server returns has.
fn resource() -> Value {
    json!({
        "type": "object",
        "required": ["resourceType"],
        "properties": {
            "resourceType": {"type": "string", "pattern": "^[A-Z][A-Za-z]+$"},
            "id": {"type": "string", "pattern": "^[A-Za-z0-9\\-\\.]{1,64}$"},
            "meta": {"$ref": "#/components/schemas/Meta"},
        },
    })
}

fn typed_resource(ty: &str) -> Value {
    json!({
        "type": "object",
        "required": ["resourceType"],
        "properties": {
            "resourceType": {"const": ty},
            "id": {"type": "string", "pattern": "^[A-Za-z0-9\\-\\.]{1,64}$"},
            "meta": {"$ref": "#/components/schemas/Meta"},
        },
    })
}

fn operation_outcome() -> Value {
    json!({
        "type": "object",
        "required": ["resourceType", "issue"],
        "properties": {
            "resourceType": {"const": "OperationOutcome"},
            "issue": {"type": "array", "minItems": 1, "items": {
                "type": "object",
                "required": ["severity", "code"],
                "properties": {
                    "severity": {"enum": ["fatal", "error", "warning", "information"]},
                    "code": {"type": "string"},
                    "diagnostics": {"type": "string"},
                    "details": {"type": "object"},
                    "expression": {"type": "array", "items": {"type": "string"}},
                },
            }},
        },
    })
}

fn bundle() -> Value {
    json!({
        "type": "object",
        "required": ["resourceType", "type"],
        "properties": {
            "resourceType": {"const": "Bundle"},
            "type": {"enum": ["document", "message", "transaction", "transaction-response", "batch",
                "batch-response", "history", "searchset", "collection"]},
            "total": {"type": "integer", "minimum": 0},
            "link": {"type": "array", "items": {"type": "object", "required": ["relation", "url"],
                "properties": {"relation": {"type": "string"}, "url": {"type": "string"}}}},
            "entry": {"type": "array", "items": {"type": "object", "properties": {
                "fullUrl": {"type": "string"},
                "resource": {"$ref": "#/components/schemas/Resource"},
                "search": {"type": "object"},
                "request": {"type": "object"},
                "response": {"type": "object"},
            }}},
        },
    })
}

fn parameters() -> Value {
    json!({
        "type": "object",
        "required": ["resourceType"],
        "properties": {
            "resourceType": {"const": "Parameters"},
            "parameter": {"type": "array", "items": {"type": "object", "required": ["name"],
                "properties": {"name": {"type": "string"}}}},
        },
    })
}

/// `v` with every object's keys in sorted order.
fn sorted(v: &Value) -> Value {
    match v {
        Value::Object(map) => {
            let ordered: BTreeMap<&String, Value> = map.iter().map(|(k, v)| (k, sorted(v))).collect();
            Value::Object(ordered.into_iter().map(|(k, v)| (k.clone(), v)).collect())
        }
        Value::Array(items) => Value::Array(items.iter().map(sorted).collect()),
        other => other.clone(),
    }
}
