//! `POST /$import`: a hospital's data from another vendor, in the formats the export writes
//! (NDJSON, FHIR JSON and XML — a Bundle of any type or one resource — and the CSV layouts of
//! docs/formats/csv.md), stored in one transaction: all of it or none (docs/import.md).
//!
//! The path of a request:
//!
//! 1. **Read** the body (at most `max_import_bytes`) into files: the body itself, or the parts of
//!    a `multipart/form-data` body named by their file names.
//! 2. **Parse** every file into records. A file that cannot be read as a whole (malformed JSON,
//!    XML outside the FHIR namespace, a CSV table without its required columns, an unknown file
//!    type) fails as a whole; a bad NDJSON line or a bad CSV row fails on its own.
//! 3. **Check** each record: a type this deployment stores (never `AuditEvent`), the type its
//!    file declares (`_type`, `<Type>.ndjson`), a valid id, no (type, id) twice. Records without id get one — the uuid of
//!    a `urn:uuid:` full URL, the id of a RESTful full URL, else a new one — and every reference
//!    to a full URL of the request is rewritten to `Type/id`, consistently across files.
//! 4. **Authorize**: create and update scopes on every type the request imports.
//! 5. **Validate** every record as the REST API would (`Validator`, errors reject).
//! 6. Any failure so far: 400 (422 when every failure is a profile failure) listing every failing
//!    record, and nothing is written. Otherwise **write** in one transaction: a record whose id
//!    exists with the same content (ignoring `meta.versionId`/`meta.lastUpdated`, which the store
//!    stamps anew) is left alone (idempotence), a changed one gets a new version, a new one is
//!    created with its id. Should the store refuse a record
//!    while writing, the transaction is dropped — rolling back the records written before it —
//!    and the answer names that record: nothing is stored then either.
//!
//! Import is a data migration, not clinical work: it writes through `Tx` directly, so the
//! services' `WriteRules` (order workflows, slot booking, master-code checks) do not run and no
//! event is emitted — an imported order is not sent to a lab again.

use crate::{ExportError, ExportState};
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, FromRequest, Multipart, RawQuery, Request, State};
use axum::http::header;
use axum::response::Response;
use axum::routing::post;
use ehr_auth::Interaction;
use ehr_core::{Classify, Issue, IssueType, ResourceId, Severity, operation_outcome};
use ehr_http::{Caller, Problem, fhir_json_response, method_not_allowed};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

/// The import routes.
pub(crate) fn routes() -> Router<ExportState> {
    Router::new().route(
        "/$import",
        // The handler bounds the body itself by `max_import_bytes` (a setting, not known when
        // the routes are built); the general limit of the app must not cut an import short.
        post(import).fallback(method_not_allowed).layer(DefaultBodyLimit::disable()),
    )
}

/// At most this many failing records are listed in a rejection (then one issue counts the rest),
/// and at most this many validation warnings in a success.
const MAX_REPORTED: usize = 1000;
const MAX_WARNINGS: usize = 100;
/// At most this many patients are named to the audit trail for one import; beyond them the
/// AuditEvent records the import without naming every patient (docs/import.md).
const MAX_AUDITED_PATIENTS: usize = 1000;
/// Longest file name repeated in the report.
const MAX_NAME: usize = 100;
/// Name of the file a non-multipart body is.
const BODY: &str = "request body";
/// At most this many parts in a multipart body: a whole export (every type, every CSV table, in
/// sets of `max_file_resources`) fits many times over, and the report lists one line per file.
const MAX_FILES: usize = 10_000;
/// Types never imported, whatever the deployment stores: the audit trail is written by the
/// gateway only, and an imported AuditEvent would forge it.
const NEVER_IMPORTED: &[&str] = &["AuditEvent"];

/// How a file is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Ndjson,
    Json,
    Xml,
    Csv,
}

/// One file of the request.
struct File {
    name: String,
    format: Format,
    /// The one resource type its records must have (`Patient.ndjson`, `_type=Patient`).
    declared: Option<String>,
    bytes: Bytes,
}

/// Where a record was found in its file.
#[derive(Debug, Clone)]
enum At {
    /// A line of an NDJSON file (1-based).
    Line(usize),
    /// An entry of a Bundle (0-based, as in `Bundle.entry[i]`).
    Entry(usize),
    /// The file is one resource.
    Whole,
    /// A row of a CSV table, by its resource id.
    Row(String),
}

/// One resource to import.
struct Record {
    file: usize,
    at: At,
    full_url: Option<String>,
    resource: Value,
    /// Set by `check`.
    resource_type: &'static str,
    id: String,
}

/// Why a record (or with `at: None`, a whole file) cannot be imported.
struct Failure {
    file: usize,
    at: Option<At>,
    /// `Type/id`, when known.
    subject: Option<String>,
    /// 400, or 422 for a record that breaks a profile only.
    status: u16,
    issues: Vec<Issue>,
}

impl Failure {
    fn file(file: usize, code: IssueType, diagnostics: impl Into<String>) -> Self {
        Self {
            file,
            at: None,
            subject: None,
            status: 400,
            issues: vec![Issue::error(code, "EHR-EXP-110", diagnostics)],
        }
    }

    fn record(file: usize, at: At, code: IssueType, ehr_code: &'static str, diagnostics: impl Into<String>) -> Self {
        Self { file, at: Some(at), subject: None, status: 400, issues: vec![Issue::error(code, ehr_code, diagnostics)] }
    }
}

/// What happened to the records of one file.
#[derive(Default, Clone, Copy)]
struct Counts {
    records: usize,
    created: usize,
    updated: usize,
    unchanged: usize,
}

/// `POST /$import`.
async fn import(
    State(state): State<ExportState>,
    caller: Caller,
    RawQuery(query): RawQuery,
    req: Request,
) -> Result<Response, Problem> {
    let svc = &state.service;
    let allowed = allowed_types(svc, query.as_deref())?;
    // What `_type` names must be importable by the caller before anything is read.
    for t in allowed.iter().flatten() {
        require_import(&caller, t)?;
    }
    let (parts, body) = req.into_parts();
    let limit = svc.settings.max_import_bytes;
    let bytes = axum::body::to_bytes(body, limit).await.map_err(|_| ExportError::ImportTooLarge(limit))?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ExportError::ImportEmpty.into());
    }
    let media = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap_or("").trim().to_ascii_lowercase())
        .unwrap_or_default();
    // A body of one file: `_type` naming one type declares it.
    let one_type = match &allowed {
        Some(types) if types.len() == 1 => Some(types[0]),
        _ => None,
    };
    let single =
        |format, bytes| vec![File { name: BODY.to_owned(), format, declared: one_type.map(str::to_owned), bytes }];
    let mut files = match media.as_str() {
        "application/fhir+ndjson" | "application/x-ndjson" | "application/ndjson" => single(Format::Ndjson, bytes),
        "application/fhir+json" | "application/json" | "application/json+fhir" => single(Format::Json, bytes),
        "application/fhir+xml" | "application/xml" | "text/xml" | "application/xml+fhir" => single(Format::Xml, bytes),
        "text/csv" => match &allowed {
            Some(types) if types.len() == 1 => {
                vec![File { name: format!("{}.csv", types[0]), format: Format::Csv, declared: None, bytes }]
            }
            _ => {
                return Err(
                    ExportError::ImportType("a text/csv body needs _type naming its one resource type".into()).into()
                );
            }
        },
        "multipart/form-data" => {
            let req = Request::from_parts(parts, Body::from(bytes));
            read_multipart(req).await?
        }
        _ => return Err(ExportError::ImportMediaType(media.chars().take(64).collect()).into()),
    };

    let mut failures = Vec::new();
    let mut records = parse_files(&files, &mut failures);
    // The bytes are read: only the names are needed from here on (memory: the parsed records
    // are several times the size of the body already).
    for f in &mut files {
        f.bytes = Bytes::new();
    }
    check(svc, &files, allowed.as_deref(), &mut records, &mut failures);
    for t in records.iter().map(|r| r.resource_type).collect::<BTreeSet<_>>() {
        require_import(&caller, t)?;
    }
    let warnings = validate(svc, &files, &records, &mut failures);
    if !failures.is_empty() {
        return Err(rejection(&files, failures).into());
    }

    let patients = audited_patients(&records);
    let now = svc.clock.now();
    let mut counts = vec![Counts::default(); files.len()];
    let tx = svc.store.write(&caller.ctx).await.map_err(ExportError::from)?;
    for r in records {
        let (file, at, resource_type, id) = (r.file, r.at, r.resource_type, r.id);
        match write(&tx, resource_type, &id, r.resource, now).await {
            Ok(written) => {
                let c = &mut counts[file];
                c.records += 1;
                match written {
                    Written::Created => c.created += 1,
                    Written::Updated => c.updated += 1,
                    Written::Unchanged => c.unchanged += 1,
                }
            }
            Err(e) => {
                // Dropping the transaction rolls back what this request wrote before the failing
                // record: all or nothing holds in the write phase too. The report names the
                // record the store refused (database text stays in the log, under the error id).
                drop(tx);
                let subject = format!("{resource_type}/{id}");
                return Err(write_failure(&files, file, &at, &subject, &e).into());
            }
        }
    }
    tx.commit().await.map_err(ExportError::from)?;

    let total = counts.iter().fold(Counts::default(), |a, c| Counts {
        records: a.records + c.records,
        created: a.created + c.created,
        updated: a.updated + c.updated,
        unchanged: a.unchanged + c.unchanged,
    });
    tracing::info!(
        files = files.len(),
        records = total.records,
        created = total.created,
        updated = total.updated,
        unchanged = total.unchanged,
        "import committed"
    );
    let mut issues = vec![info(format!(
        "imported {} records from {} files: {} created, {} updated, {} unchanged",
        total.records,
        files.len(),
        total.created,
        total.updated,
        total.unchanged
    ))];
    for (f, c) in files.iter().zip(&counts) {
        issues.push(info(format!(
            "{}: {} records: {} created, {} updated, {} unchanged",
            f.name, c.records, c.created, c.updated, c.unchanged
        )));
    }
    issues.extend(warnings);
    let mut resp = fhir_json_response(200, Vec::new(), operation_outcome(&issues).to_string());
    patients.apply(&mut resp);
    Ok(resp)
}

/// The type named `name` if this deployment stores it and it may be imported; else why not.
fn importable(types: &[&'static str], name: &str) -> Result<&'static str, String> {
    if NEVER_IMPORTED.contains(&name) {
        return Err(format!("{name} is never imported: the audit trail is written by the gateway only"));
    }
    types
        .iter()
        .copied()
        .find(|t| *t == name)
        .ok_or_else(|| format!("{} is not a resource type this server stores", clip(name)))
}

/// The types `_type` allows (comma-separated, may repeat), each one this deployment stores.
fn allowed_types(svc: &crate::DataExport, query: Option<&str>) -> Result<Option<Vec<&'static str>>, ExportError> {
    let mut out: Option<Vec<&'static str>> = None;
    for (k, v) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        if k != "_type" {
            continue;
        }
        for name in v.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            let t = importable(&svc.types, name).map_err(ExportError::ImportType)?;
            let list = out.get_or_insert_with(Vec::new);
            if !list.contains(&t) {
                list.push(t);
            }
        }
    }
    Ok(out)
}

/// Importing a type creates and updates its resources: both scopes are needed.
fn require_import(caller: &Caller, resource_type: &str) -> Result<(), Problem> {
    caller.require(resource_type, Interaction::Create)?;
    caller.require(resource_type, Interaction::Update)
}

fn clip(s: &str) -> String {
    s.chars().take(MAX_NAME).collect()
}

/// The files of a `multipart/form-data` body, named by their file names (or field names).
async fn read_multipart(req: Request) -> Result<Vec<File>, Problem> {
    let mut multipart =
        Multipart::from_request(req, &()).await.map_err(|_| ExportError::ImportMultipart("no multipart boundary"))?;
    let mut files: Vec<File> = Vec::new();
    let mut names: HashSet<String> = HashSet::new();
    while let Some(field) =
        multipart.next_field().await.map_err(|_| ExportError::ImportMultipart("a part is malformed"))?
    {
        if files.len() >= MAX_FILES {
            return Err(ExportError::ImportMultipart("more than 10000 parts (files)").into());
        }
        let raw = field.file_name().or(field.name()).unwrap_or_default();
        // Browsers send base names, some tools whole paths: only the base name counts.
        let name = clip(raw.rsplit(['/', '\\']).next().unwrap_or_default());
        let bytes = field.bytes().await.map_err(|_| ExportError::ImportMultipart("a part is malformed"))?;
        if name.is_empty() {
            return Err(ExportError::ImportMultipart("every part needs a file name").into());
        }
        let lower = name.to_ascii_lowercase();
        let format = if lower.ends_with(".ndjson") {
            Some(Format::Ndjson)
        } else if lower.ends_with(".json") {
            Some(Format::Json)
        } else if lower.ends_with(".xml") {
            Some(Format::Xml)
        } else if lower.ends_with(".csv") {
            Some(Format::Csv)
        } else {
            None
        };
        let declared = (format != Some(Format::Csv)).then(|| declared_type(&name)).flatten();
        let Some(format) = format else {
            return Err(ExportError::ImportRejected {
                status: 400,
                issues: vec![Issue::error(
                    IssueType::NotSupported,
                    "EHR-EXP-110",
                    format!("{name}: unknown file type (expected .ndjson, .json, .xml or .csv)"),
                )],
            }
            .into());
        };
        if !names.insert(name.clone()) {
            return Err(ExportError::ImportMultipart("two parts have the same file name").into());
        }
        files.push(File { name, format, declared, bytes });
    }
    if files.is_empty() {
        return Err(ExportError::ImportEmpty.into());
    }
    Ok(files)
}

/// The one resource type a file name declares: `Patient.ndjson` and `Patient-2.ndjson` (the
/// export's numbered files) declare `Patient`; `export-2024.ndjson` declares none, nor does
/// `Bundle.json` — a Bundle file holds resources of any type.
fn declared_type(name: &str) -> Option<String> {
    let stem = name.split('.').next().unwrap_or_default();
    let stem = match stem.rsplit_once('-') {
        Some((head, n)) if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => head,
        _ => stem,
    };
    let looks_like_type = stem.chars().next().is_some_and(|c| c.is_ascii_uppercase())
        && stem.chars().all(|c| c.is_ascii_alphanumeric())
        && stem != "Bundle";
    looks_like_type.then(|| stem.to_owned())
}

/// Strips a UTF-8 byte-order mark, which Windows tools write.
fn without_bom(b: &[u8]) -> &[u8] {
    b.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(b)
}

/// Reads every file into records; what cannot be read becomes a failure.
fn parse_files(files: &[File], failures: &mut Vec<Failure>) -> Vec<Record> {
    let mut records = Vec::new();
    // CSV files by (resource type, file set): the tables of one set are read together.
    let mut csv_groups: BTreeMap<(&str, u32), Vec<usize>> = BTreeMap::new();
    for (i, f) in files.iter().enumerate() {
        let before = (records.len(), failures.len());
        match f.format {
            Format::Ndjson => ndjson(i, without_bom(&f.bytes), &mut records, failures),
            Format::Json => match serde_json::from_slice::<Value>(without_bom(&f.bytes)) {
                // serde_json's message names line, column and the kind of error, never content.
                Err(e) => {
                    failures.push(Failure::file(i, IssueType::Structure, format!("{}: not valid JSON: {e}", f.name)))
                }
                Ok(v) => resources_of(i, &f.name, v, &mut records, failures),
            },
            // Its messages name the line and element, never content.
            Format::Xml => match ehr_fhir::xml::from_xml_bytes(without_bom(&f.bytes)) {
                Err(e) => failures.push(Failure::file(i, IssueType::Structure, format!("{}: {e}", f.name))),
                Ok(v) => resources_of(i, &f.name, v, &mut records, failures),
            },
            Format::Csv => {
                let (table, set) = csv_table(&f.name);
                let ty = table.split('.').next().unwrap_or_default();
                csv_groups.entry((ty, set)).or_default().push(i);
                continue;
            }
        }
        if (records.len(), failures.len()) == before {
            failures.push(Failure::file(i, IssueType::Required, format!("{}: no records", f.name)));
        }
    }
    for ((ty, _), members) in csv_groups {
        // The layout's names (`Patient.name.csv`) for the files of a later set
        // (`Patient.name-2.csv`), and back in messages.
        let layout: Vec<String> = members.iter().map(|&i| format!("{}.csv", csv_table(&files[i].name).0)).collect();
        let tables: Vec<(&str, &[u8])> =
            members.iter().zip(&layout).map(|(&i, name)| (name.as_str(), &files[i].bytes[..])).collect();
        let actual = |message: String| {
            members.iter().zip(&layout).fold(message, |m, (&i, name)| {
                if files[i].name == *name { m } else { m.replace(name.as_str(), &files[i].name) }
            })
        };
        let file = members[0];
        // The main table (`Patient.csv`) is the file its rows are reported against.
        let main = members.iter().copied().find(|&i| !csv_table(&files[i].name).0.contains('.')).unwrap_or(file);
        match ehr_fhir::csv::unflatten(ty, &tables) {
            Err(e) => {
                let names: Vec<&str> = members.iter().map(|&i| files[i].name.as_str()).collect();
                failures.push(Failure::file(main, IssueType::Structure, actual(format!("{}: {e}", names.join(", ")))));
            }
            Ok(rows) if rows.is_empty() => {
                failures.push(Failure::file(main, IssueType::Required, format!("{}: no records", files[main].name)));
            }
            Ok(rows) => {
                for row in rows {
                    match row.result {
                        Ok(resource) => records.push(new_record(main, At::Row(row.id.clone()), None, resource)),
                        Err(reason) => failures.push(Failure::record(
                            main,
                            At::Row(row.id.clone()),
                            IssueType::Invalid,
                            "EHR-EXP-111",
                            actual(reason),
                        )),
                    }
                }
            }
        }
    }
    records
}

/// The layout table of a CSV file name and the file set it belongs to: `Patient.name.csv` is
/// table `Patient.name` of set 1; `Patient.name-2.csv`, as the export names the files of its
/// second set of a type, is the same table of set 2.
fn csv_table(name: &str) -> (&str, u32) {
    let stem = name.get(..name.len().saturating_sub(".csv".len())).unwrap_or(name);
    match stem.rsplit_once('-') {
        Some((table, n)) if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => match n.parse() {
            Ok(set) => (table, set),
            Err(_) => (stem, 1),
        },
        _ => (stem, 1),
    }
}

fn new_record(file: usize, at: At, full_url: Option<String>, resource: Value) -> Record {
    Record { file, at, full_url, resource, resource_type: "", id: String::new() }
}

/// One resource per line; blank lines are skipped.
fn ndjson(file: usize, bytes: &[u8], records: &mut Vec<Record>, failures: &mut Vec<Failure>) {
    for (n, line) in bytes.split(|b| *b == b'\n').enumerate() {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let at = At::Line(n + 1);
        match serde_json::from_slice::<Value>(line) {
            Ok(v) if v.is_object() => records.push(new_record(file, at, None, v)),
            Ok(_) => failures.push(Failure::record(file, at, IssueType::Structure, "EHR-EXP-111", "not a JSON object")),
            Err(e) => failures.push(Failure::record(
                file,
                at,
                IssueType::Structure,
                "EHR-EXP-111",
                format!("not valid JSON (truncated or malformed): {e}"),
            )),
        }
    }
}

/// A Bundle's entry resources (any Bundle type), or the one resource a file is.
fn resources_of(file: usize, name: &str, v: Value, records: &mut Vec<Record>, failures: &mut Vec<Failure>) {
    if !v.is_object() {
        failures.push(Failure::file(file, IssueType::Structure, format!("{name}: not a FHIR resource")));
        return;
    }
    if v.get("resourceType").and_then(Value::as_str) != Some("Bundle") {
        records.push(new_record(file, At::Whole, None, v));
        return;
    }
    let entries = match v.get("entry") {
        None => return,
        Some(Value::Array(entries)) => entries,
        Some(_) => {
            failures.push(Failure::file(file, IssueType::Structure, format!("{name}: Bundle.entry is not an array")));
            return;
        }
    };
    for (i, e) in entries.iter().enumerate() {
        let full_url = e.get("fullUrl").and_then(Value::as_str).map(str::to_owned);
        match e.get("resource") {
            Some(r) if r.is_object() => records.push(new_record(file, At::Entry(i), full_url, r.clone())),
            _ => failures.push(Failure::record(
                file,
                At::Entry(i),
                IssueType::Required,
                "EHR-EXP-112",
                "the entry has no resource to import",
            )),
        }
    }
}

/// Checks types and ids, assigns ids, and rewrites references to the request's full URLs.
/// Records that fail are removed from `records`.
fn check(
    svc: &crate::DataExport,
    files: &[File],
    allowed: Option<&[&'static str]>,
    records: &mut Vec<Record>,
    failures: &mut Vec<Failure>,
) {
    let mut seen: HashMap<(&'static str, String), (usize, At)> = HashMap::new();
    let mut urls: HashMap<String, String> = HashMap::new();
    let mut kept = Vec::with_capacity(records.len());
    for mut r in std::mem::take(records) {
        let fail = |code, ehr, why: String| Failure::record(r.file, r.at.clone(), code, ehr, why);
        let Some(found) = r.resource.get("resourceType").and_then(Value::as_str).map(clip) else {
            failures.push(fail(IssueType::Required, "EHR-EXP-113", "resourceType is missing".into()));
            continue;
        };
        if let Some(declared) = &files[r.file].declared
            && *declared != found
        {
            failures.push(fail(
                IssueType::Invalid,
                "EHR-EXP-114",
                format!("a {found} in a file of {declared}: every record of a typed file has its type"),
            ));
            continue;
        }
        if let Some(allowed) = allowed
            && !allowed.contains(&found.as_str())
        {
            failures.push(fail(IssueType::Invalid, "EHR-EXP-114", format!("a {found}, but _type does not list it")));
            continue;
        }
        let ty = match importable(&svc.types, &found) {
            Ok(ty) => ty,
            Err(why) => {
                failures.push(fail(IssueType::NotSupported, "EHR-EXP-115", why));
                continue;
            }
        };
        let id = match r.resource.get("id") {
            None => assigned_id(ty, r.full_url.as_deref()),
            Some(Value::String(id)) if ResourceId::parse(id).is_ok() => id.clone(),
            Some(_) => {
                failures.push(fail(IssueType::Invalid, "EHR-EXP-116", "id is not a valid FHIR id".into()));
                continue;
            }
        };
        if let Some((file, at)) = seen.get(&(ty, id.clone())) {
            failures.push(fail(
                IssueType::Duplicate,
                "EHR-EXP-117",
                format!("{ty}/{id} is imported twice (also {})", place(files, *file, Some(at))),
            ));
            continue;
        }
        if let Some(url) = &r.full_url {
            if urls.contains_key(url) {
                failures.push(fail(IssueType::Duplicate, "EHR-EXP-117", "another entry has the same fullUrl".into()));
                continue;
            }
            urls.insert(url.clone(), format!("{ty}/{id}"));
        }
        seen.insert((ty, id.clone()), (r.file, r.at.clone()));
        if let Value::Object(map) = &mut r.resource {
            map.insert("id".into(), Value::String(id.clone()));
        }
        r.resource_type = ty;
        r.id = id;
        kept.push(r);
    }
    if !urls.is_empty() {
        for r in &mut kept {
            rewrite_references(&mut r.resource, &urls);
        }
    }
    *records = kept;
}

/// The id of a record that has none: the uuid of its `urn:uuid:` full URL (so that importing the
/// same Bundle again finds the same resources), the id of a RESTful full URL of its type, or a
/// new one.
fn assigned_id(resource_type: &str, full_url: Option<&str>) -> String {
    if let Some(url) = full_url {
        if let Some(uuid) = url.strip_prefix("urn:uuid:")
            && uuid::Uuid::parse_str(uuid).is_ok()
        {
            return uuid.to_ascii_lowercase();
        }
        if let Some((ty, id)) = ehr_fhir::search::split_reference(url)
            && ty == resource_type
            && ResourceId::parse(id).is_ok()
            && url.contains("://")
        {
            return id.to_owned();
        }
    }
    ResourceId::generate().to_string()
}

/// Replaces every `reference` that is a key of `map` (a full URL of the request) by its value.
fn rewrite_references(v: &mut Value, map: &HashMap<String, String>) {
    match v {
        Value::Object(obj) => {
            for (k, child) in obj.iter_mut() {
                match child {
                    Value::String(s) if k == "reference" => {
                        if let Some(new) = map.get(s.as_str()) {
                            *s = new.clone();
                        }
                    }
                    _ => rewrite_references(child, map),
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|i| rewrite_references(i, map)),
        _ => {}
    }
}

/// Validates every record as the REST API does; errors become failures, warnings are returned
/// (as issues of the success report).
fn validate(svc: &crate::DataExport, files: &[File], records: &[Record], failures: &mut Vec<Failure>) -> Vec<Issue> {
    let mut warnings = Vec::new();
    for r in records {
        let (errors, warns): (Vec<Issue>, Vec<Issue>) = svc
            .validator
            .validate(&r.resource)
            .into_iter()
            .partition(|i| matches!(i.severity, Severity::Error | Severity::Fatal));
        if warnings.len() < MAX_WARNINGS {
            let at = place(files, r.file, Some(&r.at));
            for mut w in warns.into_iter().take(MAX_WARNINGS - warnings.len()) {
                w.diagnostics = format!("{at}: {}/{}: {}", r.resource_type, r.id, w.diagnostics);
                w.expression = locate(&r.at, &w.expression);
                warnings.push(w);
            }
        }
        if !errors.is_empty() {
            // R4 3.1.0.4: 400 for content that breaks the base rules, 422 for a profile.
            let status = if errors.iter().any(ehr_fhir::validate::is_base_rule) { 400 } else { 422 };
            failures.push(Failure {
                file: r.file,
                at: Some(r.at.clone()),
                subject: Some(format!("{}/{}", r.resource_type, r.id)),
                status,
                issues: errors,
            });
        }
    }
    warnings
}

/// `Patient.ndjson line 3`, `bundle.json entry 2`, `Patient.csv row p1`, `Patient.xml`.
fn place(files: &[File], file: usize, at: Option<&At>) -> String {
    let name = files.get(file).map_or(BODY, |f| f.name.as_str());
    match at {
        Some(At::Line(n)) => format!("{name} line {n}"),
        Some(At::Entry(i)) => format!("{name} entry {i}"),
        Some(At::Row(id)) => format!("{name} row {}", clip(id)),
        Some(At::Whole) | None => name.to_owned(),
    }
}

/// FHIRPath locations within the file: a Bundle entry's are prefixed with the entry.
fn locate(at: &At, expressions: &[String]) -> Vec<String> {
    match at {
        At::Entry(i) => expressions
            .iter()
            .map(|e| match e.split_once('.') {
                Some((_, rest)) => format!("Bundle.entry[{i}].resource.{rest}"),
                None => format!("Bundle.entry[{i}].resource"),
            })
            .collect(),
        _ => expressions.to_vec(),
    }
}

/// The rejection: one issue per failing record or file, in file order.
fn rejection(files: &[File], mut failures: Vec<Failure>) -> ExportError {
    let status = if failures.iter().all(|f| f.status == 422) { 422 } else { 400 };
    failures.sort_by_key(|f| {
        let pos = match &f.at {
            None => 0,
            Some(At::Line(n)) => *n,
            Some(At::Entry(i)) => i + 1,
            Some(At::Whole | At::Row(_)) => 1,
        };
        (f.file, pos)
    });
    let count = failures.len();
    let mut issues: Vec<Issue> = failures
        .into_iter()
        .take(MAX_REPORTED)
        .map(|f| {
            let mut at = place(files, f.file, f.at.as_ref());
            if let Some(subject) = &f.subject {
                at = format!("{at}: {subject}");
            }
            let first = f.issues.first();
            let diagnostics: Vec<&str> = f.issues.iter().map(|i| i.diagnostics.as_str()).collect();
            let expression: Vec<String> = match &f.at {
                Some(a) => f.issues.iter().flat_map(|i| locate(a, &i.expression)).collect(),
                None => Vec::new(),
            };
            Issue {
                severity: Severity::Error,
                code: first.map_or(IssueType::Invalid, |i| i.code),
                ehr_code: first.map_or("EHR-EXP-110", |i| i.ehr_code),
                diagnostics: format!("{at}: {}", diagnostics.join("; ")),
                expression,
                rule: None,
            }
        })
        .collect();
    if count > MAX_REPORTED {
        issues.push(Issue::error(
            IssueType::TooCostly,
            "EHR-EXP-118",
            format!("{} more failing records are not listed", count - MAX_REPORTED),
        ));
    }
    ExportError::ImportRejected { status, issues }
}

fn info(diagnostics: String) -> Issue {
    Issue {
        severity: Severity::Information,
        code: IssueType::Informational,
        ehr_code: "EHR-EXP-150",
        diagnostics,
        expression: Vec::new(),
        rule: None,
    }
}

/// What the write of one record did.
enum Written {
    Created,
    Updated,
    Unchanged,
}

/// Writes one record in the import's transaction: left alone when the stored version has the
/// same content (idempotence), a new version when it differs, created with its id otherwise
/// (also over a deleted resource of that id).
async fn write(
    tx: &ehr_store::Tx,
    resource_type: &'static str,
    id: &str,
    resource: Value,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<Written, ehr_store::StoreError> {
    // Checked in `check`; parsed again for the store's id type.
    let rid =
        ResourceId::parse(id).map_err(|_| ehr_store::StoreError::InvalidValue("the id is not a valid FHIR id"))?;
    match tx.read_for_update(resource_type, id).await? {
        Some(current) if !current.deleted => {
            if unchanged(&current.content, &resource) {
                return Ok(Written::Unchanged);
            }
            tx.update(resource_type, &rid, resource, Some(current.version), "PUT", now).await?;
            Ok(Written::Updated)
        }
        _ => {
            tx.update(resource_type, &rid, resource, None, "PUT", now).await?;
            Ok(Written::Created)
        }
    }
}

/// The rejection of an import whose write of one record failed (after everything was checked):
/// the transaction was rolled back, so the answer says so and names the record, with the store
/// error's own status and code (503 for an unavailable database, 500 for an internal error).
fn write_failure(files: &[File], file: usize, at: &At, subject: &str, e: &ehr_store::StoreError) -> ExportError {
    let place = place(files, file, Some(at));
    ExportError::ImportRejected {
        status: e.http_status(),
        issues: vec![Issue::error(
            e.issue_type(),
            e.code(),
            format!("{place}: {subject}: the record could not be written ({e}); nothing was stored"),
        )],
    }
}

/// Whether the stored resource equals the imported one, `meta.versionId` and `meta.lastUpdated`
/// aside: the store stamps its own, and another server's are not this server's history (they
/// stay in the record until then: JP-CLINS profiles require `meta.lastUpdated` in validation).
/// Compared member by member, so that the record — possibly large — is not copied.
fn unchanged(stored: &str, imported: &Value) -> bool {
    let (Ok(Value::Object(mut stored)), Value::Object(imported)) = (serde_json::from_str::<Value>(stored), imported)
    else {
        return false;
    };
    if without_stamps(stored.remove("meta")) != without_stamps(imported.get("meta").cloned()) {
        return false;
    }
    let members = imported.len() - usize::from(imported.contains_key("meta"));
    stored.len() == members && stored.iter().all(|(k, v)| imported.get(k) == Some(v))
}

/// A `meta` without the server's stamps; `None` if nothing else is in it.
fn without_stamps(meta: Option<Value>) -> Option<Value> {
    let mut meta = meta?;
    if let Value::Object(m) = &mut meta {
        m.remove("versionId");
        m.remove("lastUpdated");
        if m.is_empty() {
            return None;
        }
    }
    Some(meta)
}

/// The patients of the imported records for the audit trail, the first `MAX_AUDITED_PATIENTS`.
fn audited_patients(records: &[Record]) -> ehr_rest::Patients {
    let mut set = BTreeSet::new();
    for r in records {
        if set.len() >= MAX_AUDITED_PATIENTS {
            break;
        }
        for p in ehr_fhir::search::patients_of(r.resource_type, &r.resource) {
            if set.len() < MAX_AUDITED_PATIENTS {
                set.insert(p);
            }
        }
    }
    let mut patients = ehr_rest::Patients::default();
    for p in set {
        let id = p.strip_prefix("Patient/").unwrap_or(&p);
        patients.add("Patient", &serde_json::json!({"resourceType": "Patient", "id": id}).to_string());
    }
    patients
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn audit_events_are_never_importable_even_where_stored() {
        let types = ["AuditEvent", "Patient"];
        assert_eq!(importable(&types, "Patient"), Ok("Patient"));
        assert!(importable(&types, "AuditEvent").unwrap_err().contains("never imported"));
        assert!(importable(&types, "Medication").unwrap_err().contains("not a resource type this server stores"));
    }

    #[test]
    fn file_names_declare_the_type_of_their_records() {
        assert_eq!(declared_type("Patient.ndjson").as_deref(), Some("Patient"));
        assert_eq!(declared_type("Observation-2.ndjson").as_deref(), Some("Observation"));
        assert_eq!(declared_type("Patient.xml").as_deref(), Some("Patient"));
        for none in ["export-2024.ndjson", "Bundle.json", "Bundle-3.xml", "data.json", "Patient-x.ndjson", "-1.json"] {
            assert_eq!(declared_type(none), None, "{none}");
        }
    }

    #[test]
    fn csv_file_names_give_table_and_file_set() {
        assert_eq!(csv_table("Patient.csv"), ("Patient", 1));
        assert_eq!(csv_table("Patient.name.csv"), ("Patient.name", 1));
        assert_eq!(csv_table("Patient-2.csv"), ("Patient", 2));
        assert_eq!(csv_table("Patient.name-12.csv"), ("Patient.name", 12));
        assert_eq!(csv_table("Patient.CSV"), ("Patient", 1));
        // Not a set number: part of the (unknown) table name, refused by the layout.
        assert_eq!(csv_table("Patient-x.csv"), ("Patient-x", 1));
        assert_eq!(csv_table("Patient-.csv"), ("Patient-", 1));
        assert_eq!(csv_table("Patient-99999999999999999999.csv"), ("Patient-99999999999999999999", 1));
    }

    #[test]
    fn ids_come_from_urn_uuids_and_restful_full_urls() {
        let uuid = "9b1deb4d-3b7d-4bad-9bdd-2b0d7b3dcb6d";
        assert_eq!(assigned_id("Patient", Some(&format!("urn:uuid:{uuid}"))), uuid);
        assert_eq!(assigned_id("Patient", Some("http://old.example/fhir/Patient/p-7")), "p-7");
        // Another type's URL, a relative URL or no URL: a new id.
        assert_ne!(assigned_id("Observation", Some("http://old.example/fhir/Patient/p-7")), "p-7");
        assert_ne!(assigned_id("Patient", Some("Patient/p-7")), "p-7");
        assert!(ResourceId::parse(&assigned_id("Patient", None)).is_ok());
    }

    #[test]
    fn references_to_full_urls_are_rewritten_everywhere() {
        let map = HashMap::from([("urn:uuid:1".to_owned(), "Patient/a".to_owned())]);
        let mut v = serde_json::json!({
            "subject": {"reference": "urn:uuid:1"},
            "contained": [{"performer": [{"reference": "urn:uuid:1"}, {"reference": "Practitioner/x"}]}],
            "note": [{"text": "urn:uuid:1"}]
        });
        rewrite_references(&mut v, &map);
        assert_eq!(v["subject"]["reference"], "Patient/a");
        assert_eq!(v["contained"][0]["performer"][0]["reference"], "Patient/a");
        assert_eq!(v["contained"][0]["performer"][1]["reference"], "Practitioner/x");
        assert_eq!(v["note"][0]["text"], "urn:uuid:1", "only references are rewritten");
    }

    #[test]
    fn unchanged_ignores_the_server_stamps_and_key_order() {
        let stored = r#"{"resourceType":"Patient","id":"a","meta":{"versionId":"3","lastUpdated":"2026-01-01T00:00:00Z"},"gender":"male","active":true}"#;
        let same = serde_json::json!({"active": true, "resourceType": "Patient", "id": "a", "gender": "male"});
        assert!(unchanged(stored, &same));
        let old_stamps = serde_json::json!({"resourceType": "Patient", "id": "a", "gender": "male", "active": true,
            "meta": {"versionId": "9", "lastUpdated": "2020-01-01T00:00:00Z"}});
        assert!(unchanged(stored, &old_stamps));
        let extra = serde_json::json!({"resourceType": "Patient", "id": "a", "gender": "male", "active": true,
            "birthDate": "1970"});
        assert!(!unchanged(stored, &extra));
        let fewer = serde_json::json!({"resourceType": "Patient", "id": "a", "gender": "male"});
        assert!(!unchanged(stored, &fewer));
        let changed = serde_json::json!({"resourceType": "Patient", "id": "a", "gender": "female", "active": true});
        assert!(!unchanged(stored, &changed));
        let tagged = serde_json::json!({"resourceType": "Patient", "id": "a", "gender": "male", "active": true,
            "meta": {"tag": [{"code": "x"}]}});
        assert!(!unchanged(stored, &tagged));
    }

    #[test]
    fn ndjson_lines_fail_one_by_one() {
        let mut records = Vec::new();
        let mut failures = Vec::new();
        let body = b"{\"resourceType\":\"Patient\"}\r\n\n{\"resourceType\":\"Pat\n[1]\n";
        ndjson(0, body, &mut records, &mut failures);
        assert_eq!(records.len(), 1);
        let lines: Vec<_> = failures.iter().map(|f| matches!(f.at, Some(At::Line(n)) if n == 3 || n == 4)).collect();
        assert_eq!(lines, [true, true]);
    }
}
