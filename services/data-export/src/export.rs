//! FHIR Bulk Data `$export` (Bulk Data Access IG v2): kick-off at system, `Patient` and
//! `Group/[id]` level, status polling, the manifest, cancellation and file download.
//!
//! Handlers parse and check the request, store a job and answer; the work is done by
//! [`crate::worker`]. A job is visible only to the caller who started it — same tenant and same
//! token subject: its files hold what that caller's scopes allowed, which another caller of the
//! tenant (a tenant administrator included) may not be allowed to read. Anyone else gets 404,
//! as for another tenant's job. docs/bulk-data.md describes the API.

use crate::worker::{
    CSV, FHIR_JSON, FHIR_XML, JobParams, Layout, NDJSON, Output, Plan, PlanRequest, io_error, job_dir, media_type_of,
    parse_type_filters, remove_dir,
};
use crate::{ExportError, ExportState};
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use ehr_auth::Interaction;
use ehr_core::{ResourceId, TenantContext};
use ehr_fhir::compartment::patient_param;
use ehr_fhir::search::{Filter, format_instant, parse_date_range, parse_search, split_reference};
use ehr_http::{Caller, FhirPath, HttpError, Problem, method_not_allowed};
use ehr_store::{ExportJob, ExportKind, ExportState as JobState, NewExportJob};
use serde_json::{Value, json};

/// The export routes.
pub(crate) fn routes() -> Router<ExportState> {
    Router::new()
        .route("/$export", get(system_get).post(system_post).fallback(method_not_allowed))
        .route("/Patient/$export", get(patient_get).post(patient_post).fallback(method_not_allowed))
        .route("/Group/{id}/$export", get(group_get).post(group_post).fallback(method_not_allowed))
        .route("/$export-status/{job}", get(status).delete(cancel).fallback(method_not_allowed))
        .route("/$export-file/{job}/{file}", get(download).fallback(method_not_allowed))
}

/// A job's files whose patients are listed for the audit trail when there are at most this many
/// (a Group's or the `patient` parameter's); larger and system-wide exports name none — the
/// audited URL carries the job id, and the job its request.
const MAX_AUDITED_PATIENTS: usize = 50;

/// Jobs one requester may have queued or running at a time; another kick-off is 429 (the IG's
/// "too many concurrent requests"). Bounds what one client can pile onto the shared workers.
pub(crate) const MAX_ACTIVE_JOBS: u64 = 5;

/// `Retry-After` of a kick-off refused for too many jobs: a job takes a while.
const BUSY_RETRY_SECS: u64 = 30;

async fn system_get(st: State<ExportState>, caller: Caller, uri: Uri, headers: HeaderMap) -> Result<Response, Problem> {
    kick_off(&st, &caller, &uri, &headers, ExportKind::System, None, None).await
}

async fn system_post(
    st: State<ExportState>,
    caller: Caller,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Problem> {
    kick_off(&st, &caller, &uri, &headers, ExportKind::System, None, Some(body)).await
}

async fn patient_get(
    st: State<ExportState>,
    caller: Caller,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    kick_off(&st, &caller, &uri, &headers, ExportKind::Patient, None, None).await
}

async fn patient_post(
    st: State<ExportState>,
    caller: Caller,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Problem> {
    kick_off(&st, &caller, &uri, &headers, ExportKind::Patient, None, Some(body)).await
}

async fn group_get(
    st: State<ExportState>,
    caller: Caller,
    FhirPath(id): FhirPath<String>,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    kick_off(&st, &caller, &uri, &headers, ExportKind::Group, Some(id), None).await
}

async fn group_post(
    st: State<ExportState>,
    caller: Caller,
    FhirPath(id): FhirPath<String>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Problem> {
    kick_off(&st, &caller, &uri, &headers, ExportKind::Group, Some(id), Some(body)).await
}

/// The kick-off parameters this server reads.
#[derive(Debug, Default)]
struct KickOff {
    output_format: Option<String>,
    since: Option<String>,
    types: Vec<String>,
    type_filters: Vec<String>,
    /// `patient` references (`Patient/123`), when given.
    patients: Option<Vec<String>>,
    /// `_bom=true`: CSV files start with a UTF-8 byte-order mark (for spreadsheet software).
    bom: bool,
}

/// Parameters of the Bulk Data IG this server does not implement.
const UNSUPPORTED: &[&str] =
    &["_until", "_elements", "includeAssociatedData", "organizeOutputBy", "allowPartialManifests"];

impl KickOff {
    fn from_pairs(pairs: Vec<(String, String)>, strict: bool) -> Result<Self, ExportError> {
        let mut k = Self::default();
        let once = |slot: &mut Option<String>, name: &str, value: String| {
            if slot.replace(value).is_some() {
                return Err(ExportError::ExportParam(format!("`{name}` may be given once")));
            }
            Ok(())
        };
        for (name, value) in pairs {
            match name.as_str() {
                "_outputFormat" => once(&mut k.output_format, &name, value)?,
                "_since" => once(&mut k.since, &name, value)?,
                "_type" => k.types.extend(value.split(',').map(str::trim).filter(|t| !t.is_empty()).map(str::to_owned)),
                "_typeFilter" => k.type_filters.extend(split_type_filters(&value)),
                "patient" => k
                    .patients
                    .get_or_insert_with(Vec::new)
                    .extend(value.split(',').map(str::trim).filter(|p| !p.is_empty()).map(str::to_owned)),
                "_bom" => {
                    k.bom = match value.as_str() {
                        "true" => true,
                        "false" => false,
                        _ => return Err(ExportError::ExportParam("`_bom` must be true or false".into())),
                    }
                }
                // The format of this answer (an OperationOutcome, if anything): JSON regardless.
                "_format" => {}
                other if strict && UNSUPPORTED.contains(&other) => {
                    return Err(ExportError::ExportUnsupported(other.to_owned()));
                }
                other if strict => {
                    return Err(ExportError::ExportParam(format!(
                        "unknown parameter `{}`",
                        other.chars().take(64).collect::<String>()
                    )));
                }
                // Lenient (the default, Prefer: handling=lenient): the IG lets a server ignore
                // parameters it does not support.
                _ => {}
            }
        }
        Ok(k)
    }
}

/// Splits a `_typeFilter` value holding several queries separated by commas: a comma starts a
/// new query only where a resource type and `?` follow (`Observation?code=a,b,Condition?…`).
fn split_type_filters(value: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut start = 0;
    for (i, _) in value.match_indices(',') {
        let rest = &value[i + 1..];
        let head = rest.split('?').next().unwrap_or("");
        let starts_query = rest.contains('?')
            && head.starts_with(|c: char| c.is_ascii_uppercase())
            && head.chars().all(|c| c.is_ascii_alphabetic());
        if starts_query {
            out.push(value[start..i].to_owned());
            start = i + 1;
        }
    }
    out.push(value[start..].to_owned());
    out.into_iter().map(|f| f.trim().to_owned()).filter(|f| !f.is_empty()).collect()
}

/// `Prefer`: whether `respond-async` is asked for and whether `handling=strict`.
fn prefer(headers: &HeaderMap) -> (bool, bool) {
    let mut respond_async = false;
    let mut strict = false;
    for value in headers.get_all("prefer") {
        for token in value.to_str().unwrap_or("").split([',', ';']).map(|t| t.trim().to_ascii_lowercase()) {
            match token.replace(' ', "").as_str() {
                "respond-async" => respond_async = true,
                "handling=strict" => strict = true,
                _ => {}
            }
        }
    }
    (respond_async, strict)
}

/// `Accept` must allow `application/fhir+json` (the format of errors and of the manifest's
/// kin); absent is fine.
fn check_accept(headers: &HeaderMap) -> Result<(), ExportError> {
    let Some(value) = headers.get(header::ACCEPT) else { return Ok(()) };
    let text = value.to_str().unwrap_or("");
    let ok = text.split(',').any(|range| {
        let media = range.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
        matches!(
            media.as_str(),
            "application/fhir+json" | "application/json+fhir" | "application/json" | "*/*" | "application/*"
        )
    });
    if ok { Ok(()) } else { Err(ExportError::ExportAccept(text.chars().take(64).collect())) }
}

/// The canonical output format of `_outputFormat` (default NDJSON).
fn output_format(value: Option<&str>) -> Result<&'static str, ExportError> {
    let Some(value) = value else { return Ok(NDJSON) };
    // `+` left unencoded in a query string arrives as a space.
    let media = value.split(';').next().unwrap_or("").trim().replace(' ', "+").to_ascii_lowercase();
    Ok(match media.as_str() {
        "application/fhir+ndjson" | "application/ndjson" | "ndjson" => NDJSON,
        "application/fhir+json" | "application/json" | "json" => FHIR_JSON,
        "application/fhir+xml" | "application/xml" | "xml" => FHIR_XML,
        "text/csv" | "csv" => CSV,
        _ => return Err(ExportError::ExportFormat(value.chars().take(64).collect())),
    })
}

/// The `(name, value)` pairs of a `Parameters` body (an empty body has none).
fn parameters_pairs(headers: &HeaderMap, body: &[u8]) -> Result<Vec<(String, String)>, Problem> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Vec::new());
    }
    let media = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap_or("").trim().to_ascii_lowercase());
    if !matches!(media.as_deref(), Some("application/fhir+json" | "application/json" | "application/json+fhir")) {
        return Err(HttpError::UnsupportedMediaType.into());
    }
    let value: Value =
        serde_json::from_slice(body).map_err(|e| Problem::from(HttpError::MalformedJson(e.to_string())))?;
    if value.get("resourceType").and_then(Value::as_str) != Some("Parameters") {
        return Err(ExportError::ExportParam("the body must be a Parameters resource".into()).into());
    }
    let mut pairs = Vec::new();
    for p in value.get("parameter").and_then(Value::as_array).into_iter().flatten() {
        let Some(name) = p.get("name").and_then(Value::as_str) else {
            return Err(ExportError::ExportParam("every parameter needs a name".into()).into());
        };
        let text = p.as_object().and_then(|o| {
            o.iter().find(|(k, _)| k.starts_with("value")).and_then(|(_, v)| match v {
                Value::String(s) => Some(s.clone()),
                Value::Bool(b) => Some(b.to_string()),
                Value::Object(r) => r.get("reference").and_then(Value::as_str).map(str::to_owned),
                _ => None,
            })
        });
        let Some(text) = text else {
            return Err(ExportError::ExportParam(format!(
                "parameter `{}` needs a string, instant, boolean or reference value",
                name.chars().take(64).collect::<String>()
            ))
            .into());
        };
        pairs.push((name.to_owned(), text));
    }
    Ok(pairs)
}

fn query_pairs(uri: &Uri) -> Vec<(String, String)> {
    uri.query().map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect()).unwrap_or_default()
}

/// Whether the caller may read and search `resource_type`.
fn readable(caller: &Caller, resource_type: &str) -> bool {
    caller.scopes.allows(resource_type, Interaction::Read) && caller.scopes.allows(resource_type, Interaction::Search)
}

#[allow(clippy::too_many_arguments)]
async fn kick_off(
    st: &ExportState,
    caller: &Caller,
    uri: &Uri,
    headers: &HeaderMap,
    kind: ExportKind,
    group: Option<String>,
    body: Option<Bytes>,
) -> Result<Response, Problem> {
    let service = &st.service;
    let (respond_async, strict) = prefer(headers);
    if !respond_async {
        return Err(ExportError::ExportPreferAsync.into());
    }
    check_accept(headers)?;
    let mut pairs = query_pairs(uri);
    if let Some(body) = &body {
        pairs.extend(parameters_pairs(headers, body)?);
    }
    let params = KickOff::from_pairs(pairs, strict)?;
    if params.bom {
        // Only CSV has a byte-order mark to add.
        if output_format(params.output_format.as_deref())? != CSV {
            return Err(ExportError::ExportParam("`_bom` applies to _outputFormat=text/csv only".into()).into());
        }
    }
    let format = output_format(params.output_format.as_deref())?;

    // The types: those asked for, each readable by the caller (403 otherwise), or every type the
    // caller may read; Patient- and Group-level exports cover the Patient compartment only.
    let level_types: Vec<&'static str> =
        service.types.iter().copied().filter(|t| kind == ExportKind::System || patient_param(t).is_some()).collect();
    let mut types: Vec<&'static str> = Vec::new();
    if params.types.is_empty() {
        types.extend(level_types.iter().copied().filter(|t| readable(caller, t)));
        if types.is_empty() {
            return Err(ExportError::ExportNoReadableType.into());
        }
    } else {
        for name in &params.types {
            let ty = service.type_of(name).ok_or_else(|| ExportError::ExportType(name.chars().take(64).collect()))?;
            if !level_types.contains(&ty) {
                return Err(ExportError::ExportNotInCompartment(ty.to_owned()).into());
            }
            caller.require(ty, Interaction::Read)?;
            caller.require(ty, Interaction::Search)?;
            if !types.contains(&ty) {
                types.push(ty);
            }
        }
    }

    // `_typeFilter`: a search on an exported type; a chain searches another type too, which needs
    // the caller's search scope on it (as in a plain search).
    let filters = parse_type_filters(&params.type_filters, service)?;
    for (ty, pairs) in &filters {
        if !types.contains(ty) {
            return Err(ExportError::ExportTypeFilter(format!("`{ty}` is not among the exported types")).into());
        }
        let query = parse_search(ty, pairs, true, |t| service.type_of(t))?;
        for filter in &query.filters {
            if let Filter::Chain { target_type, .. } = filter {
                caller.require(target_type, Interaction::Search)?;
            }
        }
    }

    let since = match &params.since {
        Some(s) => Some(parse_date_range(s).ok_or(ExportError::ExportSince)?.low),
        None => None,
    };

    let requested = match &params.patients {
        None => None,
        Some(_) if kind == ExportKind::System => {
            return Err(
                ExportError::ExportParam("`patient` is a parameter of Patient- and Group-level export".into()).into()
            );
        }
        Some(refs) => Some(patient_ids(refs)?),
    };
    let patients = match (&group, requested) {
        (Some(id), requested) => {
            caller.require("Group", Interaction::Read)?;
            let members = group_members(st, &caller.ctx, id).await?;
            Some(match requested {
                Some(asked) => members.into_iter().filter(|m| asked.contains(m)).collect(),
                None => members,
            })
        }
        (None, requested) => requested,
    };

    let layout = Layout::of(format, params.bom).ok_or_else(|| ExportError::ExportFormat(format.to_owned()))?;
    Plan::new(
        &PlanRequest { kind, types: &types, since, filters: &filters, patients: patients.as_deref(), layout },
        service,
    )?;

    let base = st.base.resolve(headers);
    let job_params = JobParams { base: base.clone(), patients, bom: params.bom };
    let now = service.clock.now().timestamp_millis();
    let id = uuid::Uuid::new_v4().simple().to_string();
    let path = uri.path_and_query().map_or_else(|| uri.path().to_owned(), |p| p.as_str().to_owned());
    let job = NewExportJob {
        id: id.clone(),
        requester: caller.principal.subject.clone(),
        request_url: format!("{base}{path}"),
        kind,
        group_id: group,
        types: types.iter().map(|t| (*t).to_owned()).collect(),
        since,
        type_filters: params.type_filters.clone(),
        output_format: format.to_owned(),
        params: serde_json::to_string(&job_params).map_err(|_| ExportError::ExportParam("bad parameters".into()))?,
        transaction_time: now,
        created_at: now,
    };
    let tx = service.store.write(&caller.ctx).await.map_err(ExportError::from)?;
    // Counted in the writing transaction: on SQLite (one writer) the limit is exact; on
    // PostgreSQL two simultaneous kick-offs may both pass it, which is harmless.
    if tx.active_export_jobs(&job.requester).await.map_err(ExportError::from)? >= MAX_ACTIVE_JOBS {
        drop(tx);
        let mut resp = Problem::from(ExportError::ExportTooManyJobs(MAX_ACTIVE_JOBS)).into_response();
        resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(BUSY_RETRY_SECS));
        return Ok(resp);
    }
    tx.create_export_job(&job).await.map_err(ExportError::from)?;
    tx.commit().await.map_err(ExportError::from)?;
    service.kick.notify_one();
    tracing::info!(job = %id, kind = kind.as_str(), types = types.len(), "export job accepted");
    Ok(with_headers(
        StatusCode::ACCEPTED,
        &[(header::CONTENT_LOCATION.as_str(), format!("{base}/$export-status/{id}"))],
        Body::empty(),
    ))
}

/// Patient ids of `patient` references (`Patient/123`).
fn patient_ids(refs: &[String]) -> Result<Vec<String>, ExportError> {
    let mut ids = Vec::new();
    for r in refs {
        let bad = || ExportError::ExportParam("`patient` must reference Patient resources (Patient/[id])".into());
        let (ty, id) = split_reference(r).ok_or_else(bad)?;
        if ty != "Patient" {
            return Err(bad());
        }
        ids.push(ResourceId::parse(id).map_err(|_| bad())?.as_str().to_owned());
    }
    ids.sort();
    ids.dedup();
    Ok(ids)
}

/// The active members of a Group that are Patients (sorted, without duplicates); 404 when the
/// Group does not exist (in the caller's tenant).
async fn group_members(st: &ExportState, ctx: &TenantContext, id: &str) -> Result<Vec<String>, ExportError> {
    if ResourceId::parse(id).is_err() {
        return Err(ExportError::ExportGroupNotFound);
    }
    let tx = st.service.store.read(ctx).await?;
    let group = tx.read_json("Group", id).await?;
    tx.commit().await?;
    let group = group.ok_or(ExportError::ExportGroupNotFound)?;
    let mut members: Vec<String> = group
        .get("member")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|m| m.get("inactive").and_then(Value::as_bool) != Some(true))
        .filter_map(|m| m.pointer("/entity/reference").and_then(Value::as_str))
        .filter_map(|r| split_reference(r).filter(|(t, _)| *t == "Patient").map(|(_, id)| id.to_owned()))
        .filter(|id| ResourceId::parse(id).is_ok())
        .collect();
    members.sort();
    members.dedup();
    Ok(members)
}

/// The caller's own job, not cancelled; 404 for anything else (another tenant's or another
/// requester's job, a malformed id).
async fn own_job(st: &ExportState, caller: &Caller, id: &str) -> Result<ExportJob, ExportError> {
    if id.is_empty() || id.len() > 64 || !id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
        return Err(ExportError::ExportJobNotFound);
    }
    let tx = st.service.store.read(&caller.ctx).await?;
    let job = tx.export_job(id).await?;
    tx.commit().await?;
    job.filter(|j| j.requester == caller.principal.subject && j.state != JobState::Cancelled)
        .ok_or(ExportError::ExportJobNotFound)
}

/// `GET $export-status/[job]`: 202 with `X-Progress` while the job runs, 200 with the manifest
/// when it is complete, 500 with an OperationOutcome when it failed.
async fn status(
    State(st): State<ExportState>,
    caller: Caller,
    FhirPath(id): FhirPath<String>,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    let job = own_job(&st, &caller, &id).await?;
    match job.state {
        JobState::Queued | JobState::Running => {
            let progress = match job.state {
                JobState::Queued => "queued".to_owned(),
                _ => job.progress.clone().unwrap_or_else(|| "started".to_owned()),
            };
            let retry = st.service.settings.poll_interval_ms.div_ceil(1000).clamp(1, 60);
            Ok(with_headers(
                StatusCode::ACCEPTED,
                &[("x-progress", progress), (header::RETRY_AFTER.as_str(), retry.to_string())],
                Body::empty(),
            ))
        }
        JobState::Completed => {
            let tx = st.service.store.read(&caller.ctx).await.map_err(ExportError::from)?;
            let rows = tx.export_outputs(&job.id).await.map_err(ExportError::from)?;
            tx.commit().await.map_err(ExportError::from)?;
            let outputs = rows.iter().map(|r| parse_output(r)).collect::<Result<Vec<_>, _>>()?;
            let base = st.base.resolve(&headers);
            let manifest = json!({
                "transactionTime": format_instant(job.transaction_time),
                "request": job.request_url,
                "requiresAccessToken": true,
                "output": outputs.iter().map(|o| json!({
                    "type": o.resource_type,
                    "url": format!("{base}/$export-file/{}/{}", job.id, encode_segment(&o.file)),
                    "count": o.count,
                })).collect::<Vec<_>>(),
                "error": [],
            });
            Ok(with_headers(
                StatusCode::OK,
                &[(header::CONTENT_TYPE.as_str(), "application/json".to_owned())],
                Body::from(manifest.to_string()),
            ))
        }
        JobState::Failed => {
            Err(ExportError::ExportFailed(job.error.unwrap_or_else(|| "no reason was recorded".into())).into())
        }
        JobState::Cancelled => Err(ExportError::ExportJobNotFound.into()),
    }
}

/// `DELETE $export-status/[job]`: cancels a running job (its worker stops at its next page) or
/// deletes a finished one; the files are removed. 202; afterwards the job is 404.
async fn cancel(
    State(st): State<ExportState>,
    caller: Caller,
    FhirPath(id): FhirPath<String>,
) -> Result<Response, Problem> {
    let job = own_job(&st, &caller, &id).await?;
    let now = st.service.clock.now().timestamp_millis();
    let tx = st.service.store.write(&caller.ctx).await.map_err(ExportError::from)?;
    let cancelled = tx.cancel_export_job(&job.id, now).await.map_err(ExportError::from)?;
    tx.commit().await.map_err(ExportError::from)?;
    if !cancelled {
        return Err(ExportError::ExportJobNotFound.into());
    }
    // The job is cancelled: that is the answer. Removing its files may fail while its worker
    // is still writing (or removing them itself); the worker and the retention sweep remove
    // them again, so a failure here is logged (under an error id), not answered.
    if remove_dir(&job_dir(&st.service.settings.root, &job.tenant, &job.id)).await.is_err() {
        tracing::warn!(job = %job.id, "files of a cancelled export job are left for the worker and the sweep");
    }
    tracing::info!(job = %job.id, "export job cancelled");
    Ok(with_headers(StatusCode::ACCEPTED, &[], Body::empty()))
}

/// One stored output of a job.
fn parse_output(text: &str) -> Result<Output, ExportError> {
    serde_json::from_str(text).map_err(|_| ExportError::ExportFailed("the stored manifest could not be read".into()))
}

/// The resource types a file holds: its type, or for a patient Bundle every Patient-compartment
/// type of the job.
fn types_of_file<'a>(job: &'a ExportJob, output: &'a Output) -> Vec<&'a str> {
    if output.resource_type == "Bundle" {
        job.types.iter().map(String::as_str).filter(|t| patient_param(t).is_some()).collect()
    } else {
        vec![output.resource_type.as_str()]
    }
}

/// `GET $export-file/[job]/[file]`: one file of a completed job, streamed from disk. Only names
/// the job's manifest lists are served, so no path can be smuggled in. The token must still
/// allow reading what the file holds: the requester's scopes may have narrowed since kick-off.
async fn download(
    State(st): State<ExportState>,
    caller: Caller,
    FhirPath((id, name)): FhirPath<(String, String)>,
) -> Result<Response, Problem> {
    let job = own_job(&st, &caller, &id).await?;
    if job.state != JobState::Completed {
        return Err(ExportError::ExportFileNotFound.into());
    }
    let tx = st.service.store.read(&caller.ctx).await.map_err(ExportError::from)?;
    let stored = tx.export_output(&job.id, &name).await.map_err(ExportError::from)?;
    tx.commit().await.map_err(ExportError::from)?;
    let output = parse_output(&stored.ok_or(ExportError::ExportFileNotFound)?)?;
    for ty in types_of_file(&job, &output) {
        caller.require(ty, Interaction::Read)?;
        caller.require(ty, Interaction::Search)?;
    }
    let path = output
        .path(&job_dir(&st.service.settings.root, &job.tenant, &job.id))
        .ok_or(ExportError::ExportFileNotFound)?;
    let file = match tokio::fs::File::open(&path).await {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(ExportError::ExportFileNotFound.into()),
        Err(e) => return Err(io_error(&e).into()),
    };
    let len = file.metadata().await.map_err(|e| io_error(&e))?.len();
    let stream = tokio_util::io::ReaderStream::with_capacity(file, 64 * 1024);
    let mut resp = with_headers(
        StatusCode::OK,
        &[
            (header::CONTENT_TYPE.as_str(), media_type_of(&name).to_owned()),
            (header::CONTENT_LENGTH.as_str(), len.to_string()),
        ],
        Body::from_stream(stream),
    );
    // The audit trail names the patients of a small, patient-restricted export; see the module.
    let params: JobParams = serde_json::from_str(&job.params).unwrap_or_default();
    if let Some(list) = params.patients.filter(|l| !l.is_empty() && l.len() <= MAX_AUDITED_PATIENTS) {
        let mut patients = ehr_rest::Patients::default();
        for p in list {
            patients.add("Patient", &json!({"resourceType": "Patient", "id": p}).to_string());
        }
        patients.apply(&mut resp);
    }
    Ok(resp)
}

fn with_headers(status: StatusCode, headers: &[(&str, String)], body: Body) -> Response {
    let mut resp = (status, body).into_response();
    for (name, value) in headers {
        if let (Ok(name), Ok(value)) = (header::HeaderName::try_from(*name), HeaderValue::from_str(value)) {
            resp.headers_mut().insert(name, value);
        }
    }
    resp
}

/// Percent-encodes a file name for a URL path segment (names are ASCII letters, digits, `.`,
/// `-` and `_` in practice; anything else is encoded).
fn encode_segment(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_filters_split_only_before_a_type() {
        assert_eq!(
            split_type_filters("Observation?code=a,b&status=final,Condition?category=x"),
            ["Observation?code=a,b&status=final", "Condition?category=x"]
        );
        assert_eq!(split_type_filters("Observation?code=a,b"), ["Observation?code=a,b"]);
        assert!(split_type_filters("").is_empty());
    }

    #[test]
    fn output_formats_are_canonical() {
        assert_eq!(output_format(None).ok(), Some(NDJSON));
        assert_eq!(output_format(Some("application/fhir ndjson")).ok(), Some(NDJSON));
        assert_eq!(output_format(Some("ndjson")).ok(), Some(NDJSON));
        assert_eq!(output_format(Some("application/fhir+xml")).ok(), Some(FHIR_XML));
        assert_eq!(output_format(Some("text/csv")).ok(), Some(CSV));
        assert!(output_format(Some("application/pdf")).is_err());
    }

    #[test]
    fn prefer_is_read_token_by_token() {
        let mut h = HeaderMap::new();
        assert_eq!(prefer(&h), (false, false));
        h.insert("prefer", HeaderValue::from_static("respond-async, handling=strict"));
        assert_eq!(prefer(&h), (true, true));
        h.insert("prefer", HeaderValue::from_static("return=minimal"));
        assert_eq!(prefer(&h), (false, false));
    }
}
