//! Content negotiation (R4 <https://hl7.org/fhir/R4/http.html#mime-type>): FHIR JSON is what
//! handlers read and write; FHIR XML is converted at this boundary, in both directions.
//!
//! | step | rule |
//! |---|---|
//! | response format | `_format` (query string, or the form body of `POST …/_search`) if given: `json`, `application/json`, `application/fhir+json`, `xml`, `text/xml`, `application/xml`, `application/fhir+xml`, anything else → 406; otherwise `Accept`: each format takes the q of the most specific range covering it (`application/fhir+json;q=0, */*` → XML), the highest q wins, then specificity, then order, then JSON (`*/*`, `application/*` or none → JSON; XML types, `text/*` → XML; only unsupported or refused types → 406) |
//! | request body | `POST`/`PUT` with `application/fhir+xml`, `application/xml` or `text/xml` → converted to FHIR JSON before the handler runs; malformed or non-FHIR XML → 400 (EHR-FHIR-004) in the negotiated format. JSON Patch and form bodies are left alone |
//! | response body | when XML was negotiated, every `application/fhir+json` body (resources, Bundles, OperationOutcomes of errors, the CapabilityStatement) becomes `application/fhir+xml; charset=utf-8`; status and all other headers are kept; other bodies pass through, and so does a FHIR body the XML definitions cannot carry (sent as JSON, logged) |

use axum::RequestExt;
use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::http::{HeaderMap, HeaderValue, Method, header, request};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use ehr_core::{Issue, IssueType, operation_outcome};
use ehr_http::{HttpError, Problem};
use serde_json::Value;

use crate::RestError;

/// The FHIR XML media type (R4 `application/fhir+xml`).
pub const FHIR_XML: &str = "application/fhir+xml; charset=utf-8";

/// A representation this server can send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Json,
    Xml,
}

/// The lowercase media type of a header value, without parameters.
fn media_of(v: &str) -> String {
    v.split(';').next().unwrap_or("").trim().to_ascii_lowercase()
}

fn content_media(headers: &HeaderMap) -> Option<String> {
    headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).map(media_of)
}

fn is_xml_media(media: &str) -> bool {
    matches!(media, "application/fhir+xml" | "application/xml" | "text/xml" | "application/xml+fhir")
}

/// A `_format` value. An unencoded `+` arrives as a space (`application/fhir xml`).
fn format_param(v: &str) -> Option<Format> {
    match media_of(v).replace(' ', "+").as_str() {
        "json" | "application/json" | "application/fhir+json" | "application/json+fhir" => Some(Format::Json),
        "xml" | "text/xml" | "application/xml" | "application/fhir+xml" | "application/xml+fhir" => Some(Format::Xml),
        _ => None,
    }
}

/// The first `_format` of a query string or form body: `Ok(None)` if absent, `Err` if unsupported.
fn format_in(form: &[u8]) -> Result<Option<Format>, ()> {
    match form_urlencoded::parse(form).find(|(k, _)| k == "_format") {
        None => Ok(None),
        Some((_, v)) => format_param(&v).map(Some).ok_or(()),
    }
}

/// How specifically `media` (a lowercase media range) names `format`: 2 for a type of it, 1 for
/// a `type/*` range covering one of its types, 0 for `*/*`; `None` if it does not cover it.
fn range_matches(media: &str, format: Format) -> Option<u8> {
    match (media, format) {
        ("application/fhir+json" | "application/json" | "application/json+fhir", Format::Json) => Some(2),
        (m, Format::Xml) if is_xml_media(m) => Some(2),
        // `application/fhir+xml` is an `application/*` type too; `text/xml` a `text/*` one.
        ("application/*", _) | ("text/*", Format::Xml) => Some(1),
        ("*/*", _) => Some(0),
        _ => None,
    }
}

/// The best format the `Accept` header allows (RFC 9110 §12.5.1). Each format gets the q of the
/// most specific media range that covers it — so `application/fhir+json;q=0` refuses JSON even
/// next to `*/*` — then the format with the highest q wins, then the one named more
/// specifically, then the one listed first, then JSON. No header (or an empty one) means JSON;
/// `Err` if neither format is acceptable.
fn accept_format(headers: &HeaderMap) -> Result<Format, ()> {
    let ranges: Vec<&str> = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|r| !r.is_empty())
        .collect();
    if ranges.is_empty() {
        return Ok(Format::Json);
    }
    const FORMATS: [Format; 2] = [Format::Json, Format::Xml];
    // Per format: (specificity, q, position) of the range that decides it.
    let mut decided: [Option<(u8, f32, usize)>; 2] = [None, None];
    for (position, range) in ranges.iter().enumerate() {
        let mut parts = range.split(';');
        let media = parts.next().unwrap_or("").trim().to_ascii_lowercase();
        // Parameter names are case-insensitive (`Q=0.5`); an unreadable q makes the range
        // unreadable, and it is skipped.
        let q = parts
            .filter_map(|p| p.split_once('='))
            .find(|(k, _)| k.trim().eq_ignore_ascii_case("q"))
            .map_or(Some(1.0), |(_, q)| q.trim().parse::<f32>().ok().filter(|q| (0.0..=1.0).contains(q)));
        let Some(q) = q else { continue };
        for (slot, format) in decided.iter_mut().zip(FORMATS) {
            let Some(specificity) = range_matches(&media, format) else { continue };
            // The most specific range decides; of equally specific ones (`application/json`
            // and `application/fhir+json` both name JSON) the most favourable.
            if slot.is_none_or(|(s, sq, _)| specificity > s || (specificity == s && q > sq)) {
                *slot = Some((specificity, q, position));
            }
        }
    }
    let mut best: Option<(f32, u8, usize, Format)> = None;
    for (slot, format) in decided.iter().zip(FORMATS) {
        // `q=0` means "not acceptable" (RFC 9110 §12.4.2).
        let Some((specificity, q, position)) = slot.filter(|(_, q, _)| *q > 0.0) else { continue };
        let better = best.is_none_or(|(bq, bs, bp, _)| {
            q > bq || (q == bq && (specificity > bs || (specificity == bs && position < bp)))
        });
        if better {
            best = Some((q, specificity, position, format));
        }
    }
    best.map(|(_, _, _, f)| f).ok_or(())
}

/// 406 `EHR-REST-016` (in JSON: no acceptable format was named).
fn not_acceptable() -> Response {
    Problem::from(RestError::NotAcceptable).into_response()
}

/// Reads a request body within the router's body limit (`DefaultBodyLimit`).
async fn read_body(parts: &request::Parts, body: Body) -> Result<Bytes, Problem> {
    let limited = Request::from_parts(parts.clone(), body).into_limited_body();
    axum::body::to_bytes(limited, usize::MAX).await.map_err(|_| HttpError::TooLarge.into())
}

/// Content negotiation middleware of every FHIR router (`.layer(from_fn(negotiate))`).
pub async fn negotiate(req: Request, next: Next) -> Response {
    let (mut parts, body) = req.into_parts();
    let Ok(mut format) = format_in(parts.uri.query().unwrap_or("").as_bytes()) else { return not_acceptable() };
    let media = content_media(&parts.headers);
    let writes = parts.method == Method::POST || parts.method == Method::PUT;
    let xml_body = writes && media.as_deref().is_some_and(is_xml_media);
    let form_body = parts.method == Method::POST && media.as_deref() == Some("application/x-www-form-urlencoded");
    let mut body = body;
    // `_format` may also travel in the form body of `POST [type]/_search`.
    if form_body && format.is_none() {
        let bytes = match read_body(&parts, body).await {
            Ok(b) => b,
            Err(p) => return p.into_response(),
        };
        match format_in(&bytes) {
            Ok(f) => format = f,
            Err(()) => return not_acceptable(),
        }
        body = Body::from(bytes);
    }
    let format = match format.map_or_else(|| accept_format(&parts.headers), Ok) {
        Ok(f) => f,
        Err(()) => return not_acceptable(),
    };
    if xml_body {
        let json = match read_body(&parts, body).await {
            Ok(bytes) => ehr_fhir::xml::from_xml_bytes(&bytes).map_err(Problem::from),
            Err(p) => Err(p),
        };
        match json {
            Ok(v) => {
                parts.headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/fhir+json"));
                parts.headers.remove(header::CONTENT_LENGTH);
                body = Body::from(v.to_string());
            }
            Err(p) => return vary(represent(p.into_response(), format).await),
        }
    }
    let resp = next.run(Request::from_parts(parts, body)).await;
    vary(represent(resp, format).await)
}

/// The representation depends on `Accept`: caches must not serve one for the other.
fn vary(mut resp: Response) -> Response {
    resp.headers_mut().append(header::VARY, HeaderValue::from_static("accept"));
    resp
}

/// The response in the negotiated format: FHIR JSON bodies become XML when XML was asked for.
async fn represent(resp: Response, format: Format) -> Response {
    let fhir_json = content_media(resp.headers()).is_some_and(|m| m == "application/fhir+json");
    if format == Format::Json || !fhir_json {
        return resp;
    }
    let (mut parts, body) = resp.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, usize::MAX).await else {
        return xml_failure();
    };
    let value = match serde_json::from_slice::<Value>(&bytes) {
        Ok(v) if v.get("resourceType").is_some_and(Value::is_string) => v,
        // Not a FHIR resource after all: sent as it was.
        _ => return Response::from_parts(parts, Body::from(bytes)),
    };
    match ehr_fhir::xml::to_xml(&value) {
        Ok(xml) => {
            parts.headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(FHIR_XML));
            parts.headers.remove(header::CONTENT_LENGTH);
            Response::from_parts(parts, Body::from(xml))
        }
        Err(e) => {
            // A resource the XML definitions cannot carry (a stored narrative that is not
            // well-formed XHTML, …). The answer goes out as the JSON it is, with its status and
            // headers (RFC 9110 §12.5.1 lets a server disregard Accept): a 500 instead would
            // report a committed create or transaction as failed, and a retry would repeat it.
            // The message names element paths only (no content).
            tracing::error!(error = %e, "a response could not be written as XML; sent as JSON");
            Response::from_parts(parts, Body::from(bytes))
        }
    }
}

/// 500 when a response body cannot be read to be written as XML; the OperationOutcome itself is
/// always representable.
fn xml_failure() -> Response {
    let issues = vec![Issue::error(
        IssueType::Exception,
        "EHR-FHIR-004",
        "the response cannot be represented as FHIR XML; request application/fhir+json".to_owned(),
    )];
    let body = ehr_fhir::xml::to_xml(&operation_outcome(&issues));
    match body {
        Ok(xml) => (
            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
            [(header::CONTENT_TYPE, HeaderValue::from_static(FHIR_XML))],
            xml,
        )
            .into_response(),
        Err(_) => Problem::new(500, issues).into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accept(v: &str) -> Result<Format, ()> {
        let mut h = HeaderMap::new();
        h.insert(header::ACCEPT, HeaderValue::from_str(v).unwrap());
        accept_format(&h)
    }

    #[test]
    fn accept_header_choice() {
        assert_eq!(accept_format(&HeaderMap::new()), Ok(Format::Json));
        assert_eq!(accept(""), Ok(Format::Json));
        assert_eq!(accept("*/*"), Ok(Format::Json));
        assert_eq!(accept("application/fhir+xml"), Ok(Format::Xml));
        assert_eq!(accept("text/xml"), Ok(Format::Xml));
        assert_eq!(accept("application/xml;q=0.9, application/fhir+json;q=0.8"), Ok(Format::Xml));
        assert_eq!(accept("application/fhir+json, application/fhir+xml"), Ok(Format::Json));
        assert_eq!(accept("*/*, application/fhir+xml"), Ok(Format::Xml));
        assert_eq!(accept("text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"), Ok(Format::Xml));
        assert_eq!(accept("application/fhir+json;q=0, application/fhir+xml"), Ok(Format::Xml));
        assert_eq!(accept("text/turtle"), Err(()));
        assert_eq!(accept("application/fhir+json;q=0"), Err(()));
        assert_eq!(accept("application/fhir+xml;q=abc"), Err(()));
    }

    #[test]
    fn a_refused_type_is_not_brought_back_by_a_wildcard() {
        // The most specific range decides a format's q (RFC 9110 §12.5.1).
        assert_eq!(accept("application/fhir+json;q=0, application/json;q=0, */*"), Ok(Format::Xml));
        assert_eq!(accept("application/fhir+xml;q=0, */*"), Ok(Format::Json));
        assert_eq!(accept("application/fhir+json;q=0, application/*"), Ok(Format::Xml));
        assert_eq!(accept("*/*;q=0"), Err(()));
        assert_eq!(accept("*/*;q=0.1, application/fhir+xml;q=0"), Ok(Format::Json));
        // Aliases of one format: the most favourable of equally specific ranges.
        assert_eq!(accept("application/json;q=0, application/fhir+json"), Ok(Format::Json));
        // `application/*` and `text/*` cover the XML types too; JSON wins a tie.
        assert_eq!(accept("application/*"), Ok(Format::Json));
        assert_eq!(accept("text/*"), Ok(Format::Xml));
        assert_eq!(accept("application/*;q=0.5, text/*"), Ok(Format::Xml));
        // Parameter names are case-insensitive.
        assert_eq!(accept("Application/FHIR+XML;Q=0.5, application/fhir+json;q=0.4"), Ok(Format::Xml));
        assert_eq!(
            accept("application/fhir+xml; fhirVersion=4.0; q=0.9, application/fhir+json;q=0.8"),
            Ok(Format::Xml)
        );
    }

    #[test]
    fn format_parameter_values() {
        assert_eq!(format_in(b"_format=xml"), Ok(Some(Format::Xml)));
        assert_eq!(format_in(b"name=a&_format=application/fhir+xml"), Ok(Some(Format::Xml)));
        assert_eq!(format_in(b"_format=application%2Ffhir%2Bxml"), Ok(Some(Format::Xml)));
        assert_eq!(format_in(b"_format=application/fhir+json;charset=utf-8"), Ok(Some(Format::Json)));
        assert_eq!(format_in(b"_format=json"), Ok(Some(Format::Json)));
        assert_eq!(format_in(b"name=a"), Ok(None));
        assert_eq!(format_in(b"_format=text/turtle"), Err(()));
    }
}
