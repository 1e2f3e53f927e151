//! `POST /` with a `batch` or `transaction` Bundle (R4 3.1.0.11).
//!
//! A transaction runs in one database transaction: all entries succeed or none is stored.
//! Processing order follows the spec (DELETE, POST, PUT/PATCH, GET); `urn:uuid:` full URLs of
//! created resources are assigned ids up front and every reference to them is rewritten;
//! conditional references (`Patient?identifier=…`) are resolved to the single match.

use crate::RestState;
use crate::error::RestError;
use crate::handlers::wants_representation;
use crate::render::{self, Entry, EntryResponse, bundle, bundle_response, raw, raw_value};
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use base64::Engine as _;
use ehr_auth::Interaction;
use ehr_core::{ResourceId, operation_outcome};
use ehr_http::{Caller, FhirBody, Problem};
use ehr_store::{StoreError, Stored, Tx};
use serde_json::Value;
use std::collections::{HashMap, HashSet};

/// One parsed Bundle entry.
struct Op {
    index: usize,
    method: Method,
    resource_type: &'static str,
    id: Option<String>,
    /// The query part of a conditional URL, or of a search.
    condition: Option<String>,
    resource: Option<Value>,
    if_match: Option<i64>,
    if_none_exist: Option<String>,
    full_url: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Method {
    // Declaration order is processing order.
    Delete,
    Post,
    Put,
    Patch,
    Get,
}

impl Method {
    fn interaction(self, has_id: bool) -> Interaction {
        match self {
            Self::Delete => Interaction::Delete,
            Self::Post => Interaction::Create,
            Self::Put | Self::Patch => Interaction::Update,
            Self::Get if has_id => Interaction::Read,
            Self::Get => Interaction::Search,
        }
    }
}

/// What one entry produced.
struct Done {
    status: u16,
    stored: Option<Stored>,
    /// A searchset Bundle for GET searches.
    body: Option<Value>,
    /// A GET read: the resource is the answer, so it is always returned.
    read: bool,
    /// Validation warnings of a write, returned as `response.outcome`.
    warnings: Vec<ehr_core::Issue>,
}

fn entry_error(index: usize, reason: impl Into<String>) -> Problem {
    RestError::BundleEntry { index, reason: reason.into() }.into()
}

/// Prefixes every issue of a failed entry with its position, so the client can find it.
fn locate(index: usize, mut p: Problem) -> Problem {
    let status = p.status();
    let mut issues = p.issues().to_vec();
    for i in &mut issues {
        i.diagnostics = format!("bundle entry {index}: {}", i.diagnostics);
        i.expression = i
            .expression
            .iter()
            .map(|e| format!("Bundle.entry[{index}].resource.{}", e.split_once('.').map_or(e.as_str(), |x| x.1)))
            .collect();
    }
    p = Problem::new(status, issues);
    p
}

/// Parses every entry; an entry that cannot be parsed is an error of that entry only (a batch
/// answers it in place, a transaction fails as a whole).
fn parse_ops(state: &RestState, bundle: &Value) -> Result<Vec<Result<Op, Problem>>, Problem> {
    let entries = match bundle.get("entry") {
        None => return Ok(Vec::new()),
        Some(Value::Array(e)) => e,
        Some(_) => return Err(RestError::InvalidBundle("entry must be an array".into()).into()),
    };
    Ok(entries.iter().enumerate().map(|(index, e)| parse_op(state, index, e)).collect())
}

fn parse_op(state: &RestState, index: usize, e: &Value) -> Result<Op, Problem> {
    let req = e.get("request").ok_or_else(|| entry_error(index, "request is required"))?;
    let method = match req.get("method").and_then(Value::as_str) {
        Some("GET") => Method::Get,
        Some("POST") => Method::Post,
        Some("PUT") => Method::Put,
        Some("PATCH") => Method::Patch,
        Some("DELETE") => Method::Delete,
        _ => return Err(entry_error(index, "request.method must be GET, POST, PUT, PATCH or DELETE")),
    };
    let url = req.get("url").and_then(Value::as_str).ok_or_else(|| entry_error(index, "request.url is required"))?;
    let (path, condition) = match url.split_once('?') {
        Some((p, q)) => (p, Some(q.to_owned())),
        None => (url, None),
    };
    let mut segments = path.trim_matches('/').split('/');
    let type_name = segments.next().unwrap_or_default();
    let resource_type = state.service.resource_type(type_name).map_err(|e| locate(index, e.into()))?;
    let id = segments.next().map(str::to_owned);
    if segments.next().is_some() {
        return Err(entry_error(index, "request.url must be [type], [type]/[id] or [type]?[criteria]"));
    }
    let resource = e.get("resource").cloned();
    if matches!(method, Method::Post | Method::Put | Method::Patch) && resource.is_none() {
        return Err(entry_error(index, "resource is required for POST, PUT and PATCH"));
    }
    let if_match = match req.get("ifMatch").and_then(Value::as_str) {
        Some(v) => Some(render::parse_etag(v).ok_or_else(|| locate(index, RestError::InvalidIfMatch.into()))?),
        None => None,
    };
    Ok(Op {
        index,
        method,
        resource_type,
        id,
        condition,
        resource,
        if_match,
        if_none_exist: req.get("ifNoneExist").and_then(Value::as_str).map(str::to_owned),
        full_url: e.get("fullUrl").and_then(Value::as_str).map(str::to_owned),
    })
}

/// The scope an entry's interaction needs. (Conditions need the search scope too, which
/// `FhirService::parse_condition` checks where each condition is parsed.)
fn authorize(caller: &Caller, op: &Op) -> Result<(), Problem> {
    caller.require(op.resource_type, op.method.interaction(op.id.is_some()))
}

/// Replaces every `reference` found in `map` (old → new) inside a resource, recursively.
fn rewrite_references(v: &mut Value, map: &HashMap<String, String>) {
    match v {
        Value::Object(obj) => {
            for (k, child) in obj.iter_mut() {
                if k == "reference" {
                    if let Value::String(s) = child
                        && let Some(new) = map.get(s.as_str())
                    {
                        *s = new.clone();
                    }
                } else {
                    rewrite_references(child, map);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|i| rewrite_references(i, map)),
        _ => {}
    }
}

/// Collects conditional references (`Type?criteria`) used anywhere in a resource.
fn conditional_references(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(obj) => {
            for (k, child) in obj {
                match (k.as_str(), child) {
                    ("reference", Value::String(s)) if s.contains('?') && !s.contains("://") => out.push(s.clone()),
                    _ => conditional_references(child, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|i| conditional_references(i, out)),
        _ => {}
    }
}

async fn resolve_single(
    state: &RestState,
    tx: &Tx,
    caller: &Caller,
    ty: &'static str,
    condition: &str,
) -> Result<Option<String>, Problem> {
    let query = state.service.parse_condition(caller, ty, condition)?;
    let ids = tx.matching_ids(&query, 2).await?;
    match ids.as_slice() {
        [] => Ok(None),
        [id] => Ok(Some(id.clone())),
        _ => Err(RestError::MultipleMatches(ids.len()).into()),
    }
}

/// Resolves ids and references before anything is written (transaction only).
/// Returns the indexes of POST entries whose `ifNoneExist` matched an existing resource.
async fn prepare(state: &RestState, tx: &Tx, caller: &Caller, ops: &mut [Op]) -> Result<HashSet<usize>, Problem> {
    let mut map: HashMap<String, String> = HashMap::new();
    // POST entries whose If-None-Exist matched an existing resource: no write, 200.
    let mut matched_existing: HashSet<usize> = HashSet::new();
    for op in ops.iter_mut() {
        match op.method {
            Method::Post => {
                let id = match &op.if_none_exist {
                    Some(cond) => {
                        tx.lock_type(op.resource_type).await?;
                        match resolve_single(state, tx, caller, op.resource_type, cond)
                            .await
                            .map_err(|p| locate(op.index, p))?
                        {
                            Some(existing) => {
                                matched_existing.insert(op.index);
                                existing
                            }
                            None => ResourceId::generate().to_string(),
                        }
                    }
                    None => ResourceId::generate().to_string(),
                };
                if let Some(full) = &op.full_url {
                    map.insert(full.clone(), format!("{}/{id}", op.resource_type));
                }
                op.id = Some(id);
            }
            Method::Put if op.id.is_none() => {
                let cond = op
                    .condition
                    .clone()
                    .ok_or_else(|| entry_error(op.index, "PUT needs [type]/[id] or [type]?[criteria]"))?;
                tx.lock_type(op.resource_type).await?;
                let id = match resolve_single(state, tx, caller, op.resource_type, &cond)
                    .await
                    .map_err(|p| locate(op.index, p))?
                {
                    Some(id) => id,
                    None => match op.resource.as_ref().and_then(|r| r.get("id")).and_then(Value::as_str) {
                        // As in `FhirService::conditional_update`: no match never overwrites
                        // an existing resource the criteria did not select.
                        Some(body_id) => {
                            if tx.read(op.resource_type, body_id).await?.is_some_and(|s| !s.deleted) {
                                return Err(locate(op.index, RestError::ConditionalIdConflict.into()));
                            }
                            body_id.to_owned()
                        }
                        None => ResourceId::generate().to_string(),
                    },
                };
                if let Some(full) = &op.full_url {
                    map.insert(full.clone(), format!("{}/{id}", op.resource_type));
                }
                if let Some(Value::Object(r)) = &mut op.resource {
                    match r.get("id").and_then(Value::as_str) {
                        Some(body_id) if body_id != id => return Err(locate(op.index, RestError::IdMismatch.into())),
                        _ => {
                            r.insert("id".into(), Value::String(id.clone()));
                        }
                    }
                }
                op.id = Some(id);
                op.condition = None;
            }
            // Any other entry with an id: other entries may point at it by its full URL.
            _ => {
                if let (Some(full), Some(id)) = (&op.full_url, &op.id) {
                    map.insert(full.clone(), format!("{}/{id}", op.resource_type));
                }
            }
        }
    }
    // Conditional references.
    for op in ops.iter() {
        let mut refs = Vec::new();
        if let Some(r) = &op.resource {
            conditional_references(r, &mut refs);
        }
        for r in refs {
            if map.contains_key(&r) {
                continue;
            }
            let (ty, cond) = r.split_once('?').unwrap_or((r.as_str(), ""));
            let ty = state
                .service
                .known_type(ty)
                .ok_or_else(|| entry_error(op.index, "conditional reference names an unknown type"))?;
            let served = state.service.resource_type(ty).map_err(|e| locate(op.index, e.into()))?;
            // Resolving a conditional reference is a search, scope-checked like one: otherwise it
            // would let a client probe for resources it may not search.
            match resolve_single(state, tx, caller, served, cond).await.map_err(|p| locate(op.index, p))? {
                Some(id) => {
                    map.insert(r.clone(), format!("{ty}/{id}"));
                }
                None => return Err(entry_error(op.index, "conditional reference matched no resource")),
            }
        }
    }
    for op in ops.iter_mut() {
        if let Some(r) = &mut op.resource {
            rewrite_references(r, &map);
        }
    }
    Ok(matched_existing)
}

async fn execute(
    state: &RestState,
    tx: &Tx,
    caller: &Caller,
    op: Op,
    existing: bool,
    base: &str,
) -> Result<Done, Problem> {
    let svc = &state.service;
    let ty = op.resource_type;
    match op.method {
        Method::Post => {
            let id = op.id.ok_or_else(|| entry_error(op.index, "POST entry without a reserved id"))?;
            if existing {
                // `ifNoneExist` matched in `prepare`: no write, the match is the answer.
                let stored = tx.read(ty, &id).await?.ok_or(StoreError::NotFound)?;
                return Ok(Done { status: 200, stored: Some(stored), body: None, read: false, warnings: Vec::new() });
            }
            let id = ResourceId::parse(&id).map_err(|_| RestError::InvalidId)?;
            let out = svc.create(tx, ty, op.resource.unwrap_or_default(), None, Some(&id)).await?;
            Ok(Done { status: 201, stored: Some(out.stored), body: None, read: false, warnings: out.warnings })
        }
        Method::Put => {
            let id = op.id.ok_or_else(|| entry_error(op.index, "PUT needs an id"))?;
            let out = svc.update(tx, ty, &id, op.resource.unwrap_or_default(), op.if_match).await?;
            if out.status == 201 {
                caller.require(ty, Interaction::Create)?;
            }
            Ok(Done { status: out.status, stored: Some(out.stored), body: None, read: false, warnings: out.warnings })
        }
        Method::Patch => {
            let id = op.id.ok_or_else(|| entry_error(op.index, "PATCH needs an id"))?;
            // In a Bundle the JSON Patch travels as a Binary resource (R4 3.1.0.11.2).
            let patch = match op.resource {
                Some(r) if r.get("resourceType").and_then(Value::as_str) == Some("Binary") => {
                    let data = r.get("data").and_then(Value::as_str).unwrap_or_default();
                    let bytes = base64::engine::general_purpose::STANDARD
                        .decode(data)
                        .map_err(|_| entry_error(op.index, "Binary.data is not base64"))?;
                    serde_json::from_slice(&bytes)
                        .map_err(|_| entry_error(op.index, "Binary.data is not a JSON Patch"))?
                }
                _ => return Err(entry_error(op.index, "PATCH entries carry the JSON Patch in a Binary resource")),
            };
            let out = svc.patch(tx, ty, &id, patch, op.if_match).await?;
            Ok(Done { status: 200, stored: Some(out.stored), body: None, read: false, warnings: out.warnings })
        }
        Method::Delete => {
            let deleted = match (&op.id, &op.condition) {
                (Some(id), _) => svc.delete(tx, ty, id).await?,
                (None, Some(cond)) => svc.conditional_delete(tx, ty, &svc.parse_condition(caller, ty, cond)?).await?,
                (None, None) => return Err(entry_error(op.index, "DELETE needs [type]/[id] or [type]?[criteria]")),
            };
            Ok(Done { status: 204, stored: deleted, body: None, read: false, warnings: Vec::new() })
        }
        Method::Get => match op.id {
            Some(id) => Ok(Done {
                status: 200,
                stored: Some(svc.read(tx, ty, &id).await?),
                body: None,
                read: true,
                warnings: Vec::new(),
            }),
            None => {
                let pairs: Vec<(String, String)> =
                    form_urlencoded::parse(op.condition.unwrap_or_default().as_bytes()).into_owned().collect();
                let query = svc.parse_query(caller, ty, &pairs, false)?;
                let page = tx.search(&query).await?;
                let mut b = serde_json::json!({"resourceType": "Bundle", "type": "searchset", "total": page.total, "entry": []});
                if let Some(entries) = b.get_mut("entry").and_then(Value::as_array_mut) {
                    for m in page.matches {
                        let resource: Value = serde_json::from_str(&m.content).unwrap_or_default();
                        entries.push(serde_json::json!({"fullUrl": format!("{base}/{}/{}", m.resource_type, m.id), "resource": resource, "search": {"mode": "match"}}));
                    }
                }
                Ok(Done { status: 200, stored: None, body: Some(b), read: false, warnings: Vec::new() })
            }
        },
    }
}

fn response_entry(done: &Done, include_resource: bool) -> Entry {
    let mut entry = Entry::default();
    let mut resp = EntryResponse { status: render::status_text(done.status), ..EntryResponse::default() };
    if let Some(s) = &done.stored {
        resp.etag = Some(render::etag(s.version));
        resp.last_modified = Some(s.last_updated_instant());
        if done.status == 201 || done.status == 200 {
            resp.location = Some(format!("{}/{}/_history/{}", s.resource_type, s.id, s.version));
        }
        if (include_resource || done.read) && !s.content.is_empty() {
            entry.resource = raw(&s.content);
        }
    }
    if let Some(b) = &done.body {
        entry.resource = raw_value(b);
    }
    if !done.warnings.is_empty() {
        resp.outcome = raw_value(&operation_outcome(&done.warnings));
    }
    entry.response = Some(resp);
    entry
}

/// `POST /` — process a batch or transaction Bundle.
pub async fn process(
    State(state): State<RestState>,
    caller: Caller,
    headers: HeaderMap,
    body: FhirBody,
) -> Result<Response, Problem> {
    let bundle_value = body.value;
    if bundle_value.get("resourceType").and_then(Value::as_str) != Some("Bundle") {
        return Err(RestError::InvalidBundle("expected a Bundle".into()).into());
    }
    let kind = bundle_value.get("type").and_then(Value::as_str).unwrap_or_default();
    let is_transaction = match kind {
        "transaction" => true,
        "batch" => false,
        _ => return Err(RestError::InvalidBundle("Bundle.type must be batch or transaction".into()).into()),
    };
    let parsed = parse_ops(&state, &bundle_value)?;
    let base = state.base.resolve(&headers);
    let representation = wants_representation(&headers);
    let n = parsed.len();
    let mut results: Vec<Option<Entry>> = (0..n).map(|_| None).collect();
    let now = state.service.clock.now().timestamp_millis();
    if is_transaction {
        let mut ops = Vec::with_capacity(n);
        for (index, op) in parsed.into_iter().enumerate() {
            let op = op?;
            authorize(&caller, &op).map_err(|p| locate(index, p))?;
            ops.push(op);
        }
        let tx = state.service.store.write(&caller.ctx).await?;
        let existing = prepare(&state, &tx, &caller, &mut ops).await?;
        ops.sort_by_key(|o| (o.method, o.index));
        for op in ops {
            let index = op.index;
            let was_existing = existing.contains(&index);
            let done = execute(&state, &tx, &caller, op, was_existing, &base).await.map_err(|p| locate(index, p))?;
            results[index] = Some(response_entry(&done, representation));
        }
        tx.commit().await?;
    } else {
        for (index, op) in parsed.into_iter().enumerate() {
            let result = match op {
                Ok(op) => run_batch_entry(&state, &caller, op, &base).await,
                Err(p) => Err(p),
            };
            let entry = match result {
                Ok(done) => response_entry(&done, representation),
                Err(p) => Entry {
                    response: Some(EntryResponse {
                        status: render::status_text(p.status()),
                        outcome: raw_value(&operation_outcome(p.issues())),
                        ..EntryResponse::default()
                    }),
                    ..Entry::default()
                },
            };
            results[index] = Some(entry);
        }
    }
    let mut out = bundle(if is_transaction { "transaction-response" } else { "batch-response" }, now);
    out.entry = results.into_iter().map(Option::unwrap_or_default).collect();
    Ok(bundle_response(&out))
}

/// One batch entry in its own database transaction.
async fn run_batch_entry(state: &RestState, caller: &Caller, op: Op, base: &str) -> Result<Done, Problem> {
    authorize(caller, &op)?;
    let tx = state.service.store.write(&caller.ctx).await?;
    let mut one = vec![op];
    let existing = prepare(state, &tx, caller, &mut one).await?;
    let Some(op) = one.pop() else {
        return Err(RestError::InvalidBundle("empty entry".into()).into());
    };
    let was_existing = existing.contains(&op.index);
    let done = execute(state, &tx, caller, op, was_existing, base).await?;
    tx.commit().await?;
    Ok(done)
}
