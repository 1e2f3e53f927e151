//! `GET /Patient/[id]/$everything` (R4 `Patient-everything`): the patient's record as a
//! searchset Bundle, paged.
//!
//! What is returned, in this order (docs/fhir-api.md, "$everything"):
//!
//! 1. the Patient (`search.mode = match`);
//! 2. every resource of its compartment ([`PATIENT_COMPARTMENT`]), type by type, in id order
//!    (`match`);
//! 3. the resources of other types those (and the Patient) reference, one level deep
//!    (Practitioner, PractitionerRole, Organization, Slot, …: `include`). Never another Patient
//!    nor a Group — a list of other patients — which a reference could otherwise pull in.
//!
//! Only types this deployment stores and the caller's token may see are considered: the
//! compartment part lists resources, a search, so its types need read and search scopes (as
//! `GET [type]?patient=` and `$export` do); referenced resources are what `_include` adds to a
//! search, so their types need read.
//!
//! `_type` narrows the types, `_since` keeps resources updated at or after the instant (the Patient
//! included, as the parameter's definition says: "resources updated after this period will be
//! included"), `_count` sets the page size. Pages are chained by `next` links carrying an opaque
//! `_cursor` — the type and id of the last entry — so that a page costs the same however deep
//! it is (keyset over (type order, id) with `Tx::scan`). The referenced resources are found by
//! reading the whole compartment when their part of the record is reached; a page of the
//! compartment part never pays for it.

use crate::{ExportError, ExportState};
use axum::Router;
use axum::extract::{RawQuery, State};
use axum::http::HeaderMap;
use axum::response::Response;
use axum::routing::get;
use base64::Engine as _;
use ehr_auth::Interaction;
use ehr_core::ResourceId;
use ehr_fhir::compartment::{PATIENT_COMPARTMENT, patient_param};
use ehr_fhir::search::{SearchQuery, format_instant, parse_search};
use ehr_http::{Caller, FhirPath, Problem, fhir_json_response, method_not_allowed};
use ehr_store::{StoreError, Stored, Tx};
use serde::Serialize;
use serde_json::Value;
use serde_json::value::RawValue;
use std::collections::{BTreeMap, BTreeSet};

/// The `$everything` routes.
pub(crate) fn routes() -> Router<ExportState> {
    // `{ty}` rather than a literal `Patient`: the same shape as the REST engine's
    // `/{ty}/{id}/_history`, with which this router is merged in target `all`.
    Router::new()
        .route("/{ty}/{id}/$everything", get(everything).fallback(method_not_allowed))
        // `_format` / `Accept`: the Bundle (and any OperationOutcome) in FHIR XML on request.
        .layer(axum::middleware::from_fn(ehr_rest::negotiate))
}

const DEFAULT_COUNT: usize = 50;
const MAX_COUNT: usize = 1000;
/// Resources read per statement while collecting references.
const SCAN_CHUNK: usize = 1000;
/// Ids per `_id` criterion when fetching referenced resources (the parser's limit).
const ID_CHUNK: usize = ehr_fhir::search::MAX_VALUES;

/// The parameters of one request.
struct Params {
    /// `_type`, in the order given, each stored and readable.
    types: Option<Vec<&'static str>>,
    /// `_since` as given (for links) and as epoch milliseconds.
    since: Option<(String, i64)>,
    count: usize,
    /// Where the previous page ended: (type, id).
    cursor: Option<(String, String)>,
}

impl Params {
    fn parse(svc: &crate::DataExport, caller: &Caller, query: Option<&str>) -> Result<Self, Problem> {
        let mut p = Params { types: None, since: None, count: DEFAULT_COUNT, cursor: None };
        for (k, v) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
            match k.as_ref() {
                "_type" => {
                    for name in v.split(',').map(str::trim).filter(|n| !n.is_empty()) {
                        let t = svc.types.iter().copied().find(|t| *t == name).ok_or_else(|| {
                            let name: String = name.chars().take(64).collect();
                            ExportError::EverythingParam(format!("_type: `{name}` is not a type this server stores"))
                        })?;
                        // Asking for a type one may not see is refused, not silently emptied.
                        caller.require(t, Interaction::Read)?;
                        if in_compartment(t) {
                            caller.require(t, Interaction::Search)?;
                        }
                        let list = p.types.get_or_insert_with(Vec::new);
                        if !list.contains(&t) {
                            list.push(t);
                        }
                    }
                }
                "_since" => {
                    let range = ehr_fhir::search::parse_date_range(&v)
                        .ok_or_else(|| ExportError::EverythingParam("_since must be a FHIR instant".into()))?;
                    p.since = Some((v.into_owned(), range.low));
                }
                "_count" => {
                    let n: usize = v
                        .parse()
                        .map_err(|_| ExportError::EverythingParam("_count must be a positive integer".into()))?;
                    p.count = n.clamp(1, MAX_COUNT);
                }
                "_cursor" => p.cursor = Some(decode_cursor(&v).ok_or(ExportError::EverythingCursor)?),
                // Care-date windows are defined by R4 but not implemented: answering with the
                // whole record instead would mislead.
                "start" | "end" => return Err(ExportError::EverythingUnsupported(k.into_owned()).into()),
                // Others (`_format`, unknown ones) are ignored, as in a lenient search.
                _ => {}
            }
        }
        Ok(p)
    }

    fn selects(&self, ty: &str) -> bool {
        self.types.as_ref().is_none_or(|t| t.contains(&ty))
    }

    fn since_ok(&self, s: &Stored) -> bool {
        self.since.as_ref().is_none_or(|(_, ms)| s.last_updated >= *ms)
    }

    /// The query string of a page link, with `cursor` as its `_cursor`.
    fn link_query(&self, cursor: Option<&str>) -> String {
        let mut s = form_urlencoded::Serializer::new(String::new());
        if let Some(types) = &self.types {
            s.append_pair("_type", &types.join(","));
        }
        if let Some((since, _)) = &self.since {
            s.append_pair("_since", since);
        }
        s.append_pair("_count", &self.count.to_string());
        if let Some(c) = cursor {
            s.append_pair("_cursor", c);
        }
        s.finish()
    }
}

fn encode_cursor(ty: &str, id: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("{ty}/{id}"))
}

fn decode_cursor(s: &str) -> Option<(String, String)> {
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(s).ok()?;
    let text = String::from_utf8(bytes).ok()?;
    let (ty, id) = text.split_once('/')?;
    ResourceId::parse(id).ok()?;
    Some((ty.to_owned(), id.to_owned()))
}

/// Which part of the record a type is read in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Part {
    Patient,
    /// In the compartment by this search parameter.
    Compartment(&'static str),
    Referenced,
}

/// Whether `t` is listed in the compartment part (the Patient itself is read by its id).
fn in_compartment(t: &str) -> bool {
    PATIENT_COMPARTMENT.iter().any(|(c, _)| *c == t)
}

/// Whether the caller may list a patient's resources of `t`: a search, which needs the read and
/// search scopes, as the REST search (`GET [type]?patient=`) and `$export` do.
fn listable(svc: &crate::DataExport, caller: &Caller, t: &str) -> bool {
    svc.types.contains(&t) && caller.scopes.allows(t, Interaction::Read) && caller.scopes.allows(t, Interaction::Search)
}

/// The types of the result in result order, with the part each is read in.
fn plan(svc: &crate::DataExport, caller: &Caller, params: &Params) -> Vec<(&'static str, Part)> {
    // Referenced resources are what `_include` adds to a search: read suffices, as there.
    let readable = |t: &str| svc.types.contains(&t) && caller.scopes.allows(t, Interaction::Read);
    let mut out = Vec::new();
    if params.selects("Patient") {
        out.push(("Patient", Part::Patient));
    }
    for (t, param) in PATIENT_COMPARTMENT {
        if listable(svc, caller, t) && params.selects(t) {
            out.push((*t, Part::Compartment(param)));
        }
    }
    for t in referenced_types(svc) {
        if readable(t) && params.selects(t) {
            out.push((t, Part::Referenced));
        }
    }
    out
}

/// Stored types a compartment resource may pull in by reference: not in the compartment (those
/// come with their patient), not Patient (another patient's record) and not Group (a list of
/// other patients); sorted.
fn referenced_types(svc: &crate::DataExport) -> Vec<&'static str> {
    let mut types: Vec<&'static str> =
        svc.types.iter().copied().filter(|t| patient_param(t).is_none() && *t != "Group").collect();
    types.sort_unstable();
    types
}

/// A search on `ty` with these criteria, as the store's scans take it.
fn query(ty: &'static str, pairs: &[(&str, &str)]) -> Result<SearchQuery, Problem> {
    let pairs: Vec<(String, String)> = pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
    let known = |t: &str| ehr_core::ResourceType::parse(t).ok().map(ehr_core::ResourceType::as_str);
    Ok(parse_search(ty, &pairs, true, known).map_err(ExportError::from)?)
}

/// The (type, id) of every resource of other types that the patient or its compartment
/// references (of types the caller may read), by type.
async fn references(
    svc: &crate::DataExport,
    caller: &Caller,
    tx: &Tx,
    patient: &Stored,
    wanted: &BTreeSet<&'static str>,
) -> Result<BTreeMap<&'static str, BTreeSet<String>>, Problem> {
    let mut out: BTreeMap<&'static str, BTreeSet<String>> = BTreeMap::new();
    let mut add = |content: &str| {
        if let Ok(v) = serde_json::from_str::<Value>(content) {
            collect_references(&v, wanted, &mut out);
        }
    };
    add(&patient.content);
    let reference = format!("Patient/{}", patient.id);
    for (t, param) in PATIENT_COMPARTMENT {
        // Only resources the caller could list point the way: an unlisted Condition's asserter
        // is not revealed through it.
        if !listable(svc, caller, t) {
            continue;
        }
        let q = query(t, &[(param, &reference)])?;
        let mut after: Option<String> = None;
        loop {
            let rows = tx.scan(&q, after.as_deref(), SCAN_CHUNK).await.map_err(ExportError::from)?;
            for r in &rows {
                add(&r.content);
            }
            match rows.last() {
                Some(last) if rows.len() == SCAN_CHUNK => after = Some(last.id.clone()),
                _ => break,
            }
        }
    }
    Ok(out)
}

/// Adds the relative references (`Practitioner/1`, `Practitioner/1/_history/2`) to `wanted`
/// types found anywhere in a resource.
fn collect_references(v: &Value, wanted: &BTreeSet<&'static str>, out: &mut BTreeMap<&'static str, BTreeSet<String>>) {
    match v {
        Value::Object(map) => {
            for (k, child) in map {
                match child {
                    Value::String(url) if k == "reference" => {
                        // Absolute URLs name other servers' resources; `#x` contained ones.
                        if url.contains(':') || url.starts_with('#') {
                            continue;
                        }
                        if let Some((ty, id)) = ehr_fhir::search::split_reference(url)
                            && let Some(t) = wanted.get(ty)
                            && ResourceId::parse(id).is_ok()
                        {
                            out.entry(*t).or_default().insert(id.to_owned());
                        }
                    }
                    _ => collect_references(child, wanted, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|i| collect_references(i, wanted, out)),
        _ => {}
    }
}

/// One entry of the result.
struct Found {
    stored: Stored,
    include: bool,
}

/// Reads one page (and one entry more, to know whether another page follows).
async fn page(
    svc: &crate::DataExport,
    caller: &Caller,
    tx: &Tx,
    patient: &Stored,
    params: &Params,
    plan: &[(&'static str, Part)],
) -> Result<Vec<Found>, Problem> {
    let want = params.count + 1;
    let start = match &params.cursor {
        None => 0,
        Some((ty, _)) => plan.iter().position(|(t, _)| t == ty).ok_or(ExportError::EverythingCursor)?,
    };
    let reference = format!("Patient/{}", patient.id);
    let since = params.since.as_ref().map(|(_, ms)| format!("ge{}", format_instant(*ms)));
    let mut found: Vec<Found> = Vec::new();
    let mut refs: Option<BTreeMap<&'static str, BTreeSet<String>>> = None;
    for (i, (ty, part)) in plan.iter().enumerate().skip(start) {
        let after = if i == start { params.cursor.as_ref().map(|(_, id)| id.as_str()) } else { None };
        match part {
            Part::Patient => {
                if after.is_none() && params.since_ok(patient) {
                    found.push(Found { stored: patient.clone(), include: false });
                }
            }
            Part::Compartment(param) => {
                let mut criteria = vec![(*param, reference.as_str())];
                if let Some(since) = &since {
                    criteria.push(("_lastUpdated", since));
                }
                let q = query(ty, &criteria)?;
                let rows = tx.scan(&q, after, want - found.len()).await.map_err(ExportError::from)?;
                found.extend(rows.into_iter().map(|stored| Found { stored, include: false }));
            }
            Part::Referenced => {
                if refs.is_none() {
                    let wanted = plan.iter().filter(|(_, p)| *p == Part::Referenced).map(|(t, _)| *t).collect();
                    refs = Some(references(svc, caller, tx, patient, &wanted).await?);
                }
                let ids: Vec<&String> = match refs.as_ref().and_then(|r| r.get(ty)) {
                    Some(set) => match after {
                        Some(a) => {
                            set.range::<str, _>((std::ops::Bound::Excluded(a), std::ops::Bound::Unbounded)).collect()
                        }
                        None => set.iter().collect(),
                    },
                    None => Vec::new(),
                };
                // In the set's order (which the cursor follows), whatever order the database
                // returns a chunk in; missing, deleted and older resources are skipped.
                for chunk in ids.chunks(ID_CHUNK) {
                    let list = chunk.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(",");
                    let q = query(ty, &[("_id", &list)])?;
                    let mut rows: BTreeMap<String, Stored> = tx
                        .scan(&q, None, chunk.len())
                        .await
                        .map_err(ExportError::from)?
                        .into_iter()
                        .map(|s| (s.id.clone(), s))
                        .collect();
                    for id in chunk {
                        if let Some(s) = rows.remove(id.as_str()).filter(|s| params.since_ok(s)) {
                            found.push(Found { stored: s, include: true });
                            if found.len() >= want {
                                break;
                            }
                        }
                    }
                    if found.len() >= want {
                        break;
                    }
                }
            }
        }
        if found.len() >= want {
            break;
        }
    }
    Ok(found)
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Bundle<'a> {
    resource_type: &'static str,
    id: String,
    meta: Meta,
    #[serde(rename = "type")]
    kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    total: Option<usize>,
    link: Vec<Link>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    entry: Vec<Entry<'a>>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Meta {
    last_updated: String,
}

#[derive(Serialize)]
struct Link {
    relation: &'static str,
    url: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Entry<'a> {
    full_url: String,
    resource: &'a RawValue,
    search: Mode,
}

#[derive(Serialize)]
struct Mode {
    mode: &'static str,
}

/// `GET /Patient/[id]/$everything`.
async fn everything(
    State(state): State<ExportState>,
    FhirPath((ty, id)): FhirPath<(String, String)>,
    caller: Caller,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Result<Response, Problem> {
    if ty != "Patient" {
        return Err(ExportError::EverythingType.into());
    }
    let svc = &state.service;
    caller.require("Patient", Interaction::Read)?;
    let params = Params::parse(svc, &caller, raw.as_deref())?;
    // Unknown, or another tenant's (the transaction sees only the caller's): 404.
    ResourceId::parse(&id).map_err(|_| ExportError::Store(StoreError::NotFound))?;
    let tx = svc.store.read(&caller.ctx).await.map_err(ExportError::from)?;
    let patient = tx.read("Patient", &id).await.map_err(ExportError::from)?.ok_or(StoreError::NotFound)?;
    if patient.deleted {
        return Err(StoreError::Gone { version: patient.version, last_updated: patient.last_updated }.into());
    }
    let plan = plan(svc, &caller, &params);
    let mut found = page(svc, &caller, &tx, &patient, &params, &plan).await?;
    tx.commit().await.map_err(ExportError::from)?;

    let has_more = found.len() > params.count;
    found.truncate(params.count);
    let base = state.base.resolve(&headers);
    let path = format!("{base}/Patient/{id}/$everything");
    let cursor = params.cursor.as_ref().map(|(t, i)| encode_cursor(t, i));
    let mut link = vec![Link { relation: "self", url: format!("{path}?{}", params.link_query(cursor.as_deref())) }];
    if has_more && let Some(last) = found.last() {
        let next = encode_cursor(&last.stored.resource_type, &last.stored.id);
        link.push(Link { relation: "next", url: format!("{path}?{}", params.link_query(Some(&next))) });
    }
    // The total is known without another pass only when the whole result is this one page.
    let total = (params.cursor.is_none() && !has_more).then(|| found.iter().filter(|f| !f.include).count());
    let raws: Vec<Box<RawValue>> = found
        .iter()
        .map(|f| RawValue::from_string(f.stored.content.clone()))
        .collect::<Result<_, _>>()
        .map_err(|_| ExportError::Store(StoreError::Internal("stored json".into())))?;
    let bundle = Bundle {
        resource_type: "Bundle",
        id: uuid::Uuid::new_v4().to_string(),
        meta: Meta { last_updated: format_instant(svc.clock.now().timestamp_millis()) },
        kind: "searchset",
        total,
        link,
        entry: found
            .iter()
            .zip(&raws)
            .map(|(f, raw)| Entry {
                full_url: format!("{base}/{}/{}", f.stored.resource_type, f.stored.id),
                resource: raw,
                search: Mode { mode: if f.include { "include" } else { "match" } },
            })
            .collect(),
    };
    let body = serde_json::to_string(&bundle).map_err(|_| ExportError::Store(StoreError::Internal("bundle".into())))?;
    let mut resp = fhir_json_response(200, Vec::new(), body);
    // The record is this patient's, whatever page and whichever types.
    let mut patients = ehr_rest::Patients::default();
    patients.add("Patient", &patient.content);
    patients.apply(&mut resp);
    Ok(resp)
}
