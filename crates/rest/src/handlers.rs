//! Thin axum handlers: parse, check scope, delegate to [`FhirService`], render.

use crate::RestState;
use crate::error::RestError;
use crate::render::{
    self, Entry, EntryRequest, EntryResponse, Link, Prefer, Return, SearchMode, bundle, bundle_response, parse_etag,
    raw, subset, version_headers, write_response,
};
use crate::service::WriteOutcome;
use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use ehr_auth::Interaction;
use ehr_core::{Issue, IssueType, Severity, operation_outcome};
use ehr_fhir::search::{SearchQuery, Summary};
use ehr_http::{Caller, FhirBody, FhirPath, HttpError, Problem, fhir_json_response};
use ehr_store::{HistoryScope, Stored, Tx};

type Result<T, E = Problem> = std::result::Result<T, E>;

fn if_match(headers: &HeaderMap) -> Result<Option<i64>> {
    match headers.get(header::IF_MATCH) {
        None => Ok(None),
        Some(v) => v.to_str().ok().and_then(parse_etag).map(Some).ok_or_else(|| RestError::InvalidIfMatch.into()),
    }
}

fn query_pairs(raw: Option<&str>) -> Vec<(String, String)> {
    raw.map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect()).unwrap_or_default()
}

/// Runs one write in its own transaction and renders it per `Prefer: return`.
///
/// A write that turned out to create the resource (update-as-create, a conditional update
/// without a match) is a create and needs the create scope too; without it the transaction is
/// dropped uncommitted, which rolls it back.
async fn write(
    state: &RestState,
    caller: &Caller,
    headers: &HeaderMap,
    ty: &'static str,
    op: impl AsyncFnOnce(&Tx) -> Result<WriteOutcome>,
) -> Result<Response> {
    let prefer = Prefer::from_headers(headers);
    let tx = state.service.store.write(&caller.ctx).await?;
    let outcome = op(&tx).await?;
    if outcome.status == 201 {
        caller.require(ty, Interaction::Create)?;
    }
    tx.commit().await?;
    Ok(write_response(outcome, &state.base.resolve(headers), prefer.ret))
}

/// `POST [type]` — create, or conditional create with `If-None-Exist`.
pub async fn create(
    State(state): State<RestState>,
    FhirPath(ty): FhirPath<String>,
    caller: Caller,
    headers: HeaderMap,
    body: FhirBody,
) -> Result<Response> {
    let ty = state.service.resource_type(&ty)?;
    caller.require(ty, Interaction::Create)?;
    if body.is_patch {
        return Err(HttpError::UnsupportedMediaType.into());
    }
    let svc = &state.service;
    let condition = headers
        .get("if-none-exist")
        .and_then(|v| v.to_str().ok())
        .map(|c| svc.parse_condition(&caller, ty, c))
        .transpose()?;
    write(&state, &caller, &headers, ty, async |tx| svc.create(tx, ty, body.value, condition.as_ref(), None).await)
        .await
}

/// `GET [type]/[id]` — read, with `If-None-Match` → 304.
pub async fn read(
    State(state): State<RestState>,
    FhirPath((ty, id)): FhirPath<(String, String)>,
    caller: Caller,
    headers: HeaderMap,
) -> Result<Response> {
    let ty = state.service.resource_type(&ty)?;
    caller.require(ty, Interaction::Read)?;
    let stored = state.service.read_one(&caller.ctx, ty, &id).await?;
    let not_modified = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .and_then(parse_etag)
        .is_some_and(|v| v == stored.version);
    let patients = crate::audit::of_one(ty, &stored.content);
    let mut resp = if not_modified {
        (StatusCode::NOT_MODIFIED, [(header::ETAG, render::etag(stored.version))]).into_response()
    } else {
        fhir_json_response(200, version_headers(&stored), stored.content)
    };
    patients.apply(&mut resp);
    Ok(resp)
}

/// `GET [type]/[id]/_history/[vid]` — vread.
pub async fn vread(
    State(state): State<RestState>,
    FhirPath((ty, id, vid)): FhirPath<(String, String, String)>,
    caller: Caller,
) -> Result<Response> {
    let ty = state.service.resource_type(&ty)?;
    caller.require(ty, Interaction::Read)?;
    let tx = state.service.store.read(&caller.ctx).await?;
    let stored = state.service.vread(&tx, ty, &id, &vid).await?;
    tx.commit().await?;
    let patients = crate::audit::of_one(ty, &stored.content);
    let mut resp = fhir_json_response(200, version_headers(&stored), stored.content);
    patients.apply(&mut resp);
    Ok(resp)
}

/// `PUT [type]/[id]` — update (or update-as-create), honouring `If-Match`.
pub async fn update(
    State(state): State<RestState>,
    FhirPath((ty, id)): FhirPath<(String, String)>,
    caller: Caller,
    headers: HeaderMap,
    body: FhirBody,
) -> Result<Response> {
    let ty = state.service.resource_type(&ty)?;
    caller.require(ty, Interaction::Update)?;
    let expected = if_match(&headers)?;
    let svc = &state.service;
    write(&state, &caller, &headers, ty, async |tx| svc.update(tx, ty, &id, body.value, expected).await).await
}

/// `PUT [type]?criteria` — conditional update.
pub async fn conditional_update(
    State(state): State<RestState>,
    FhirPath(ty): FhirPath<String>,
    RawQuery(query): RawQuery,
    caller: Caller,
    headers: HeaderMap,
    body: FhirBody,
) -> Result<Response> {
    let ty = state.service.resource_type(&ty)?;
    caller.require(ty, Interaction::Update)?;
    let expected = if_match(&headers)?;
    let svc = &state.service;
    let condition = svc.parse_condition(&caller, ty, query.as_deref().unwrap_or_default())?;
    write(&state, &caller, &headers, ty, async |tx| {
        svc.conditional_update(tx, ty, &condition, body.value, expected).await
    })
    .await
}

/// `PATCH [type]/[id]` — JSON Patch.
pub async fn patch(
    State(state): State<RestState>,
    FhirPath((ty, id)): FhirPath<(String, String)>,
    caller: Caller,
    headers: HeaderMap,
    body: FhirBody,
) -> Result<Response> {
    let ty = state.service.resource_type(&ty)?;
    caller.require(ty, Interaction::Update)?;
    if !body.is_patch {
        return Err(HttpError::UnsupportedPatchType.into());
    }
    let expected = if_match(&headers)?;
    let svc = &state.service;
    write(&state, &caller, &headers, ty, async |tx| svc.patch(tx, ty, &id, body.value, expected).await).await
}

fn deleted_response(stored: Option<&Stored>) -> Response {
    let mut resp = StatusCode::NO_CONTENT.into_response();
    if let Some(s) = stored
        && let Ok(v) = header::HeaderValue::from_str(&render::etag(s.version))
    {
        resp.headers_mut().insert(header::ETAG, v);
    }
    resp
}

/// `DELETE [type]/[id]`.
pub async fn delete(
    State(state): State<RestState>,
    FhirPath((ty, id)): FhirPath<(String, String)>,
    caller: Caller,
) -> Result<Response> {
    let ty = state.service.resource_type(&ty)?;
    caller.require(ty, Interaction::Delete)?;
    let tx = state.service.store.write(&caller.ctx).await?;
    let deleted = state.service.delete(&tx, ty, &id).await?;
    tx.commit().await?;
    Ok(deleted_response(deleted.as_ref()))
}

/// `DELETE [type]?criteria` — conditional delete (single match).
pub async fn conditional_delete(
    State(state): State<RestState>,
    FhirPath(ty): FhirPath<String>,
    RawQuery(query): RawQuery,
    caller: Caller,
) -> Result<Response> {
    let ty = state.service.resource_type(&ty)?;
    caller.require(ty, Interaction::Delete)?;
    let condition = state.service.parse_condition(&caller, ty, query.as_deref().unwrap_or_default())?;
    let tx = state.service.store.write(&caller.ctx).await?;
    let deleted = state.service.conditional_delete(&tx, ty, &condition).await?;
    tx.commit().await?;
    Ok(deleted_response(deleted.as_ref()))
}

/// `GET [type]?…`.
pub async fn search_get(
    State(state): State<RestState>,
    FhirPath(ty): FhirPath<String>,
    RawQuery(query): RawQuery,
    caller: Caller,
    headers: HeaderMap,
) -> Result<Response> {
    let pairs = query_pairs(query.as_deref());
    search(state, ty, pairs, caller, headers).await
}

/// `POST [type]/_search` with `application/x-www-form-urlencoded` parameters (URL ones too).
pub async fn search_post(
    State(state): State<RestState>,
    FhirPath(ty): FhirPath<String>,
    RawQuery(query): RawQuery,
    caller: Caller,
    headers: HeaderMap,
    body: std::result::Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Response> {
    let body = body.map_err(|_| Problem::from(HttpError::TooLarge))?;
    let form = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
    if !form && !body.is_empty() {
        return Err(HttpError::UnsupportedMediaType.into());
    }
    let mut pairs = query_pairs(query.as_deref());
    // `_format` in the form body was negotiated by `format::negotiate`; search ignores it.
    pairs.extend(form_urlencoded::parse(&body).into_owned());
    search(state, ty, pairs, caller, headers).await
}

async fn search(
    state: RestState,
    ty: String,
    pairs: Vec<(String, String)>,
    caller: Caller,
    headers: HeaderMap,
) -> Result<Response> {
    let ty = state.service.resource_type(&ty)?;
    caller.require(ty, Interaction::Search)?;
    let prefer = Prefer::from_headers(&headers);
    let query = state.service.parse_query(&caller, ty, &pairs, prefer.strict)?;
    let tx = state.service.store.read(&caller.ctx).await?;
    let page = tx.search(&query).await?;
    tx.commit().await?;
    let base = state.base.resolve(&headers);
    let mut b = bundle("searchset", state.service.clock.now().timestamp_millis());
    let mut patients = crate::audit::Patients::default();
    b.total = page.total;
    b.link = paging_links(&base, &query, page.has_more);
    if query.summary != Summary::Count {
        for m in &page.matches {
            patients.add(&m.resource_type, &m.content);
            b.entry.push(Entry {
                full_url: Some(format!("{base}/{}/{}", m.resource_type, m.id)),
                resource: subset(&m.content, &query),
                search: Some(SearchMode { mode: "match" }),
                ..Entry::default()
            });
        }
        // Included resources the caller may not read are left out, not leaked.
        for inc in page.included.iter().filter(|i| caller.scopes.allows(&i.resource_type, Interaction::Read)) {
            patients.add(&inc.resource_type, &inc.content);
            b.entry.push(Entry {
                full_url: Some(format!("{base}/{}/{}", inc.resource_type, inc.id)),
                resource: raw(&inc.content),
                search: Some(SearchMode { mode: "include" }),
                ..Entry::default()
            });
        }
    }
    if !query.ignored.is_empty() {
        let issue = Issue {
            severity: Severity::Warning,
            code: IssueType::NotSupported,
            ehr_code: "EHR-REST-101",
            diagnostics: format!("unknown search parameters were ignored: {}", query.ignored.join(", ")),
            expression: Vec::new(),
            rule: None,
        };
        b.entry.push(Entry {
            resource: render::raw_value(&operation_outcome(&[issue])),
            search: Some(SearchMode { mode: "outcome" }),
            ..Entry::default()
        });
    }
    let mut resp = bundle_response(&b);
    patients.apply(&mut resp);
    Ok(resp)
}

/// `self`, `first`, `previous` and `next` links built from the applied parameters only.
fn paging_links(base: &str, q: &SearchQuery, has_more: bool) -> Vec<Link> {
    let url = |offset: usize| {
        let mut s = form_urlencoded::Serializer::new(String::new());
        for (k, v) in q.applied.iter().filter(|(k, _)| k != "_offset" && k != "_count") {
            s.append_pair(k, v);
        }
        s.append_pair("_count", &q.count.to_string());
        s.append_pair("_offset", &offset.to_string());
        format!("{base}/{}?{}", q.resource_type, s.finish())
    };
    let mut links = vec![Link { relation: "self", url: url(q.offset) }, Link { relation: "first", url: url(0) }];
    if q.offset > 0 {
        links.push(Link { relation: "previous", url: url(q.offset.saturating_sub(q.count)) });
    }
    if has_more {
        links.push(Link { relation: "next", url: url(q.offset + q.count) });
    }
    links
}

/// Parameters of the history interactions.
struct HistoryParams {
    since: Option<i64>,
    /// `_since` as given, carried into the paging links.
    since_text: Option<String>,
    count: usize,
    offset: usize,
}

impl HistoryParams {
    /// A paging link's query string for `offset`.
    fn link_query(&self, offset: usize) -> String {
        let mut s = form_urlencoded::Serializer::new(String::new());
        if let Some(since) = &self.since_text {
            s.append_pair("_since", since);
        }
        s.append_pair("_count", &self.count.to_string());
        s.append_pair("_offset", &offset.to_string());
        s.finish()
    }
}

fn history_params(raw: Option<&str>) -> Result<HistoryParams> {
    let mut p = HistoryParams { since: None, since_text: None, count: 50, offset: 0 };
    for (k, v) in query_pairs(raw) {
        match k.as_str() {
            "_since" => {
                let r = ehr_fhir::search::parse_date_range(&v)
                    .ok_or_else(|| RestError::Invalid("_since must be a FHIR instant".into()))?;
                p.since = Some(r.low);
                p.since_text = Some(v);
            }
            "_count" => {
                p.count =
                    v.parse::<usize>().map_err(|_| RestError::Invalid("_count must be an integer".into()))?.min(1000)
            }
            "_offset" => {
                p.offset = v
                    .parse()
                    .ok()
                    .filter(|o| *o <= ehr_fhir::search::MAX_OFFSET)
                    .ok_or_else(|| RestError::Invalid("_offset must be an integer from 0 to 1000000".into()))?
            }
            _ => {}
        }
    }
    Ok(p)
}

async fn history(
    state: RestState,
    caller: Caller,
    headers: HeaderMap,
    scope: HistoryScope<'_>,
    raw_query: Option<String>,
) -> Result<Response> {
    let params = history_params(raw_query.as_deref())?;
    let tx = state.service.store.read(&caller.ctx).await?;
    let (entries, total) = tx.history(scope, params.since, params.count, params.offset).await?;
    tx.commit().await?;
    let base = state.base.resolve(&headers);
    let mut b = bundle("history", state.service.clock.now().timestamp_millis());
    b.total = Some(total);
    let path = match scope {
        HistoryScope::Instance(t, id) => format!("{t}/{id}/_history"),
        HistoryScope::Type(t) => format!("{t}/_history"),
        HistoryScope::System(_) => "_history".to_owned(),
    };
    b.link.push(Link { relation: "self", url: format!("{base}/{path}?{}", params.link_query(params.offset)) });
    // `_count=0` asks for the total only: no page follows.
    if params.count > 0 && (params.offset + entries.len()) < usize::try_from(total).unwrap_or(usize::MAX) {
        b.link.push(Link {
            relation: "next",
            url: format!("{base}/{path}?{}", params.link_query(params.offset + params.count)),
        });
    }
    // Scope was checked for every type the entries can have before the query ran.
    let mut patients = crate::audit::Patients::default();
    for e in &entries {
        if !e.deleted {
            patients.add(&e.resource_type, &e.content);
        }
        let method = e.method.clone().unwrap_or_else(|| "PUT".into());
        let url = if method == "POST" { e.resource_type.clone() } else { format!("{}/{}", e.resource_type, e.id) };
        let status = match method.as_str() {
            "POST" => 201,
            "DELETE" => 204,
            _ => 200,
        };
        b.entry.push(Entry {
            full_url: Some(format!("{base}/{}/{}", e.resource_type, e.id)),
            resource: if e.deleted { None } else { raw(&e.content) },
            request: Some(EntryRequest { method, url }),
            response: Some(EntryResponse {
                status: render::status_text(status),
                etag: Some(render::etag(e.version)),
                last_modified: Some(e.last_updated_instant()),
                ..EntryResponse::default()
            }),
            ..Entry::default()
        });
    }
    let mut resp = bundle_response(&b);
    patients.apply(&mut resp);
    Ok(resp)
}

/// `GET [type]/[id]/_history`.
pub async fn history_instance(
    State(state): State<RestState>,
    FhirPath((ty, id)): FhirPath<(String, String)>,
    RawQuery(q): RawQuery,
    caller: Caller,
    headers: HeaderMap,
) -> Result<Response> {
    let ty = state.service.resource_type(&ty)?;
    caller.require(ty, Interaction::Read)?;
    // A resource of another tenant (or none at all) has no history: 404, as for read.
    let tx = state.service.store.read(&caller.ctx).await?;
    let exists = tx.read(ty, &id).await?.is_some();
    tx.commit().await?;
    if !exists {
        return Err(ehr_store::StoreError::NotFound.into());
    }
    history(state.clone(), caller, headers, HistoryScope::Instance(ty, &id), q).await
}

/// `GET [type]/_history`.
pub async fn history_type(
    State(state): State<RestState>,
    FhirPath(ty): FhirPath<String>,
    RawQuery(q): RawQuery,
    caller: Caller,
    headers: HeaderMap,
) -> Result<Response> {
    let ty = state.service.resource_type(&ty)?;
    caller.require(ty, Interaction::Search)?;
    history(state.clone(), caller, headers, HistoryScope::Type(ty), q).await
}

/// `GET /_history` — needs search scope on every type this service owns.
pub async fn history_system(
    State(state): State<RestState>,
    RawQuery(q): RawQuery,
    caller: Caller,
    headers: HeaderMap,
) -> Result<Response> {
    for ty in &state.service.types {
        caller.require(ty, Interaction::Search)?;
    }
    let types = state.service.types.clone();
    history(state.clone(), caller, headers, HistoryScope::System(&types), q).await
}

/// `GET /metadata`.
pub async fn metadata(State(state): State<RestState>, headers: HeaderMap) -> Response {
    let base = state.base.resolve(&headers);
    let cs = crate::capability::capability_statement(&state.service.types, &base, state.service.clock.now());
    fhir_json_response(200, Vec::new(), cs.to_string())
}

/// Renders `Prefer: return` for a transaction or batch response.
pub fn wants_representation(headers: &HeaderMap) -> bool {
    Prefer::from_headers(headers).ret == Return::Representation && headers.get("prefer").is_some()
}
