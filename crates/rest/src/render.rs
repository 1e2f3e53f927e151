//! Response rendering: Bundles (searchset, history, transaction-response), headers, Prefer.

use crate::service::WriteOutcome;
use axum::http::{HeaderMap, HeaderName, header};
use axum::response::Response;
use ehr_core::{Issue, IssueType, Severity, operation_outcome};
use ehr_fhir::search::{SearchQuery, Summary, format_instant};
use ehr_http::fhir_json_response;
use ehr_store::Stored;
use serde::Serialize;
use serde_json::Value;
use serde_json::value::RawValue;

/// The `Prefer: return=` choice (R4 3.1.0.8.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Return {
    Minimal,
    Representation,
    OperationOutcome,
}

/// The parts of the `Prefer` header this server honours.
#[derive(Debug, Clone, Copy)]
pub struct Prefer {
    pub ret: Return,
    /// `handling=strict`: unknown search parameters are errors.
    pub strict: bool,
}

impl Prefer {
    /// Reads `Prefer` (several comma-separated or repeated preferences).
    pub fn from_headers(headers: &HeaderMap) -> Self {
        let mut p = Prefer { ret: Return::Representation, strict: false };
        for value in headers.get_all("prefer").iter().filter_map(|v| v.to_str().ok()) {
            for pref in value.split([',', ';']).map(str::trim) {
                match pref {
                    "return=minimal" => p.ret = Return::Minimal,
                    "return=representation" => p.ret = Return::Representation,
                    "return=OperationOutcome" => p.ret = Return::OperationOutcome,
                    "handling=strict" => p.strict = true,
                    "handling=lenient" => p.strict = false,
                    _ => {}
                }
            }
        }
        p
    }
}

/// How the absolute URLs of responses (`Location`, `fullUrl`, paging links) are formed.
#[derive(Debug, Clone)]
pub enum BaseUrl {
    /// A configured public URL of the FHIR base (`https://ehr.example-hospital.jp/fhir`): what a
    /// deployment behind an ingress or the gateway should use.
    Fixed(String),
    /// The URL the client used: `Host` (and `X-Forwarded-Proto`) plus this mount path.
    FromRequest(String),
}

impl BaseUrl {
    /// The FHIR base URL for a request.
    pub fn resolve(&self, headers: &HeaderMap) -> String {
        match self {
            Self::Fixed(url) => url.clone(),
            Self::FromRequest(path) => {
                let host = headers.get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("localhost");
                let proto = headers.get("x-forwarded-proto").and_then(|h| h.to_str().ok()).unwrap_or("http");
                format!("{proto}://{host}{path}")
            }
        }
    }
}

/// `W/"3"`.
pub fn etag(version: i64) -> String {
    format!("W/\"{version}\"")
}

/// Parses an `If-Match` value (`W/"3"` or `"3"`).
pub fn parse_etag(value: &str) -> Option<i64> {
    let v = value.trim();
    let v = v.strip_prefix("W/").unwrap_or(v);
    v.trim_matches('"').parse().ok().filter(|n: &i64| *n >= 1)
}

/// HTTP-date of an epoch-millisecond instant.
pub fn http_date(ms: i64) -> String {
    let secs = u64::try_from(ms / 1000).unwrap_or(0);
    httpdate::fmt_http_date(std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs))
}

/// The version headers of a stored resource.
pub fn version_headers(s: &Stored) -> Vec<(HeaderName, String)> {
    vec![(header::ETAG, etag(s.version)), (header::LAST_MODIFIED, http_date(s.last_updated))]
}

/// Renders the result of a write according to `Prefer: return`. Validation warnings travel in
/// the OperationOutcome form; the other forms have no place for them.
pub fn write_response(outcome: WriteOutcome, base: &str, prefer: Return) -> Response {
    let WriteOutcome { status, stored, warnings } = outcome;
    let patients = crate::audit::of_one(&stored.resource_type, &stored.content);
    let mut headers = version_headers(&stored);
    headers
        .push((header::LOCATION, format!("{base}/{}/{}/_history/{}", stored.resource_type, stored.id, stored.version)));
    let body = match prefer {
        Return::Representation => stored.content,
        Return::Minimal => String::new(),
        Return::OperationOutcome => {
            let mut issues = vec![Issue {
                severity: Severity::Information,
                code: IssueType::Informational,
                ehr_code: "EHR-REST-100",
                diagnostics: format!(
                    "{} {}/{} version {}",
                    if status == 201 { "created" } else { "updated" },
                    stored.resource_type,
                    stored.id,
                    stored.version
                ),
                expression: Vec::new(),
                rule: None,
            }];
            issues.extend(warnings);
            operation_outcome(&issues).to_string()
        }
    };
    let mut resp = fhir_json_response(status, headers, body);
    patients.apply(&mut resp);
    resp
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Bundle {
    pub resource_type: &'static str,
    pub id: String,
    pub meta: BundleMeta,
    #[serde(rename = "type")]
    pub kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub total: Option<u64>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub link: Vec<Link>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub entry: Vec<Entry>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BundleMeta {
    pub last_updated: String,
}

#[derive(Serialize)]
pub struct Link {
    pub relation: &'static str,
    pub url: String,
}

#[derive(Serialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct Entry {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub full_url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resource: Option<Box<RawValue>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub search: Option<SearchMode>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request: Option<EntryRequest>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response: Option<EntryResponse>,
}

#[derive(Serialize)]
pub struct SearchMode {
    pub mode: &'static str,
}

#[derive(Serialize)]
pub struct EntryRequest {
    pub method: String,
    pub url: String,
}

#[derive(Serialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct EntryResponse {
    pub status: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub etag: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_modified: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outcome: Option<Box<RawValue>>,
}

/// Wraps stored JSON for embedding without re-parsing.
pub fn raw(content: &str) -> Option<Box<RawValue>> {
    RawValue::from_string(content.to_owned()).ok()
}

/// Wraps a JSON value for embedding.
pub fn raw_value(v: &Value) -> Option<Box<RawValue>> {
    RawValue::from_string(v.to_string()).ok()
}

/// A new Bundle shell.
pub fn bundle(kind: &'static str, now_ms: i64) -> Bundle {
    Bundle {
        resource_type: "Bundle",
        id: uuid::Uuid::new_v4().to_string(),
        meta: BundleMeta { last_updated: format_instant(now_ms) },
        kind,
        total: None,
        link: Vec::new(),
        entry: Vec::new(),
    }
}

/// Applies `_summary` and `_elements` to a stored resource's JSON (R4 3.1.1.5.7–8).
pub fn subset(content: &str, query: &SearchQuery) -> Option<Box<RawValue>> {
    if query.elements.is_empty() && query.summary == Summary::False {
        return raw(content);
    }
    let Ok(Value::Object(map)) = serde_json::from_str::<Value>(content) else {
        return raw(content);
    };
    let keep = |k: &str| -> bool {
        if matches!(k, "resourceType" | "id" | "meta") {
            return true;
        }
        match query.summary {
            Summary::Text => k == "text",
            Summary::Data => k != "text" && (query.elements.is_empty() || query.elements.iter().any(|e| e == k)),
            _ => query.elements.iter().any(|e| e == k),
        }
    };
    let mut out: serde_json::Map<String, Value> = map.into_iter().filter(|(k, _)| keep(k)).collect();
    // Mark the resource as incomplete so nobody stores it back as if it were whole.
    let meta = out.entry("meta").or_insert_with(|| Value::Object(Default::default()));
    if let Value::Object(meta) = meta {
        let tags = meta.entry("tag").or_insert_with(|| Value::Array(Vec::new()));
        if let Value::Array(tags) = tags {
            tags.push(serde_json::json!({
                "system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue",
                "code": "SUBSETTED"
            }));
        }
    }
    raw_value(&Value::Object(out))
}

/// Serialises a Bundle as a 200 response.
pub fn bundle_response(b: &Bundle) -> Response {
    let body = serde_json::to_string(b).unwrap_or_default();
    fhir_json_response(200, Vec::new(), body)
}

/// The `status` text of a Bundle entry response.
pub fn status_text(status: u16) -> String {
    let reason = match status {
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        409 => "Conflict",
        410 => "Gone",
        412 => "Precondition Failed",
        422 => "Unprocessable Entity",
        _ => "",
    };
    format!("{status} {reason}").trim_end().to_owned()
}
