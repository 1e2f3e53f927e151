//! The export workers: they claim jobs of every tenant, write their files page by page with a
//! checkpoint after each page, resume a job whose worker died from its last checkpoint, and
//! delete jobs past their retention.
//!
//! # Resuming
//!
//! A job is a list of *units* ([`Unit`]): one per resource type, or — for the Bundle layout —
//! one for the patients (a Bundle each) followed by one per type outside the Patient
//! compartment and, at system level, one per compartment type for its resources that name no
//! patient. A unit reads its resources in id order, a page at a time (keyset paging:
//! `Tx::scan` after the last id written), into numbered files. After every page the open files
//! are flushed and fsynced, and only then is the checkpoint committed: the unit, the last id
//! written, the byte length and row count of every open file, and how many files are finished.
//! A worker that takes over a job (its predecessor's lease ran out) copies the open files up to
//! the checkpointed lengths — leaving behind whatever was written after the last checkpoint —
//! and continues after the checkpointed id: no resource is written twice and none is lost.
//! Patient Bundles are written whole between two checkpoints; a Bundle cut short is rewritten.
//!
//! Every write of the job row is conditional on the worker's lease token (see `ehr_store`'s
//! export module): a worker that lost its lease, or whose job was cancelled, learns it at its
//! next checkpoint and stops. Files cannot be fenced that way, and a worker that was only slow
//! goes on writing until that checkpoint; so every claim writes into a directory of its own
//! (`a<attempt>`), and the new owner *copies* the checkpointed prefix of an open file instead of
//! truncating the file the old owner may still hold open. The two never write the same file;
//! the manifest names, for each file, the directory of the claim that finished it.
//!
//! The files a job finished are not part of its checkpoint but rows added in the checkpoint's
//! transaction (`Tx::add_export_outputs`): the Bundle layout writes one file per patient, and a
//! checkpoint listing them all would grow with every patient.

use crate::{DataExport, ExportError};
use ehr_core::{Classify, TenantContext, TenantId};
use ehr_events::CancellationToken;
use ehr_fhir::compartment::patient_param;
use ehr_fhir::search::{Filter, SearchQuery, format_instant, parse_search};
use ehr_store::{ExportEnd, ExportJob, ExportKind, StoreError, Stored, Tx};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufWriter};
use tokio::task::JoinHandle;
use tracing::Instrument;

/// Jobs one process runs at the same time.
const WORKERS: usize = 2;
/// A job claimed this often without finishing (its workers kept dying) is failed.
const MAX_ATTEMPTS: i32 = 20;
/// Patients per `_id` or `patient` criterion (a search parameter takes at most
/// `ehr_fhir::search::MAX_VALUES` alternatives).
pub(crate) const PATIENT_CHUNK: usize = 500;
/// The most resources one page may read when several queries are ORed (each query reads up to
/// a page): the page shrinks as the number of queries grows, so memory stays bounded.
const MAX_CANDIDATES: usize = 2_000;
/// The subject worker transactions act as.
const WORKER_SUBJECT: &str = "data-export:worker";

/// Starts the export workers and the retention sweep; they stop when `shutdown` is cancelled
/// (a worker at its next page boundary, handing its job back for the next start to resume).
pub fn spawn_workers(service: &DataExport, shutdown: CancellationToken) -> Vec<JoinHandle<()>> {
    let process = uuid::Uuid::new_v4().simple().to_string();
    let mut handles = Vec::new();
    for i in 0..WORKERS {
        let (me, shutdown, owner) = (service.clone(), shutdown.clone(), format!("{}-{i}", &process[..12]));
        handles.push(tokio::spawn(async move { me.work(&owner, shutdown).await }));
    }
    let me = service.clone();
    handles.push(tokio::spawn(async move { me.sweep_loop(shutdown).await }));
    handles
}

impl DataExport {
    fn now_ms(&self) -> i64 {
        self.clock.now().timestamp_millis()
    }

    fn lease_ms(&self) -> i64 {
        i64::try_from(self.settings.lease_secs.max(1)).unwrap_or(60).saturating_mul(1000)
    }

    /// The resource type `name` if this deployment stores it.
    pub(crate) fn type_of(&self, name: &str) -> Option<&'static str> {
        self.types.iter().copied().find(|t| *t == name)
    }

    async fn work(&self, owner: &str, shutdown: CancellationToken) {
        let poll = Duration::from_millis(self.settings.poll_interval_ms.max(10));
        loop {
            if shutdown.is_cancelled() {
                break;
            }
            match self.run_one(owner, &shutdown).await {
                // Another job may be waiting: look again at once.
                Ok(true) => continue,
                Ok(false) => {}
                Err(e) => tracing::warn!(code = e.code(), "export worker pass failed"),
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = self.kick.notified() => {}
                _ = tokio::time::sleep(poll) => {}
            }
        }
    }

    /// Claims one job of any tenant and runs it until it ends, stops or is handed back; false
    /// when there was none.
    pub(crate) async fn run_one(&self, owner: &str, shutdown: &CancellationToken) -> Result<bool, ExportError> {
        let tenants = {
            let sys = self.store.system_read().await?;
            let list = sys.export_tenants(self.now_ms()).await?;
            sys.commit().await?;
            list
        };
        for tenant in tenants {
            let ctx = TenantContext::new(tenant, WORKER_SUBJECT);
            let token = uuid::Uuid::new_v4().simple().to_string();
            let now = self.now_ms();
            let tx = self.store.write(&ctx).await?;
            let job = tx.claim_export_job(owner, &token, now, now + self.lease_ms()).await?;
            tx.commit().await?;
            if let Some(job) = job {
                self.run_job(ctx, job, token, shutdown.clone()).await;
                return Ok(true);
            }
        }
        Ok(false)
    }

    async fn run_job(&self, ctx: TenantContext, job: ExportJob, token: String, shutdown: CancellationToken) {
        // Ids only: the job's request and filters may name patients.
        let span = tracing::info_span!("export_job", tenant = %job.tenant, job = %job.id);
        self.run_claimed(ctx, job, token, shutdown).instrument(span).await;
    }

    async fn run_claimed(&self, ctx: TenantContext, job: ExportJob, token: String, shutdown: CancellationToken) {
        tracing::info!(attempt = job.attempts, kind = job.kind.as_str(), "export job claimed");
        let dir = job_dir(&self.settings.root, &job.tenant, &job.id);
        let outcome = if job.attempts > MAX_ATTEMPTS {
            Err(ExportError::ExportFailed("the export was interrupted too often".into()))
        } else {
            match Run::start(self, &ctx, &job, &token, &dir, shutdown) {
                Ok(mut run) => run.all().await,
                Err(e) => Err(e),
            }
        };
        let now = self.now_ms();
        let result: Result<(), ExportError> = async {
            match outcome {
                Ok(Step::Done) => tracing::info!("export job completed"),
                Ok(Step::Next) | Ok(Step::Lost) => self.after_lost_lease(&ctx, &job.id, &dir).await?,
                Ok(Step::Shutdown) => {
                    // Handed back: the next start (or another replica) resumes it without
                    // waiting for the lease to run out.
                    let tx = self.store.write(&ctx).await?;
                    tx.release_export_job(&job.id, &token, now).await?;
                    tx.commit().await?;
                    tracing::info!("export job handed back at shutdown");
                }
                Err(e) if is_transient(&e) => {
                    // The database is away: the lease runs out and the job is resumed then.
                    tracing::warn!(code = e.code(), "export job interrupted; it resumes after its lease");
                }
                Err(e) => {
                    let reason = failure_text(&e);
                    let tx = self.store.write(&ctx).await?;
                    let failed =
                        tx.finish_export_job(&job.id, &token, ExportEnd::Failed { error: &reason }, now).await?;
                    tx.commit().await?;
                    if failed {
                        tracing::warn!(code = e.code(), "export job failed");
                    } else {
                        self.after_lost_lease(&ctx, &job.id, &dir).await?;
                    }
                }
            }
            Ok(())
        }
        .await;
        if let Err(e) = result {
            tracing::warn!(code = e.code(), "export job could not be recorded");
        }
    }

    /// The lease is gone: another worker has the job, or it was cancelled — then its files go
    /// (the cancelling request removed them, but this worker may have written more since).
    async fn after_lost_lease(&self, ctx: &TenantContext, id: &str, dir: &Path) -> Result<(), ExportError> {
        let tx = self.store.read(ctx).await?;
        let job = tx.export_job(id).await?;
        tx.commit().await?;
        if job.is_none_or(|j| j.state == ehr_store::ExportState::Cancelled) {
            remove_dir(dir).await?;
            tracing::info!(job = %id, "export job cancelled; its files are removed");
        } else {
            tracing::info!(job = %id, "export job lease lost to another worker");
        }
        Ok(())
    }

    async fn sweep_loop(&self, shutdown: CancellationToken) {
        // Often enough that a test advancing its clock sees the sweep soon; at most a minute.
        let every = Duration::from_millis(self.settings.poll_interval_ms.saturating_mul(20).clamp(1_000, 60_000));
        loop {
            if let Err(e) = self.sweep().await {
                tracing::warn!(code = e.code(), "export retention sweep failed");
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(every) => {}
            }
        }
    }

    /// Deletes the jobs (and files) that finished more than `retention_hours` ago; returns how
    /// many.
    pub async fn sweep(&self) -> Result<usize, ExportError> {
        let hours = i64::try_from(self.settings.retention_hours).unwrap_or(i64::MAX / 3_600_000);
        let cutoff = self.now_ms().saturating_sub(hours.saturating_mul(3_600_000));
        let tenants = {
            let sys = self.store.system_read().await?;
            let list = sys.export_tenants_with_expired(cutoff).await?;
            sys.commit().await?;
            list
        };
        let mut deleted = 0;
        for tenant in tenants {
            let ctx = TenantContext::new(tenant.clone(), WORKER_SUBJECT);
            let tx = self.store.read(&ctx).await?;
            let ids = tx.export_jobs_finished_before(cutoff, 500).await?;
            tx.commit().await?;
            for id in ids {
                // Files first: a crash in between leaves a row the next sweep deletes again.
                remove_dir(&job_dir(&self.settings.root, &tenant, &id)).await?;
                let tx = self.store.write(&ctx).await?;
                if tx.delete_export_job(&id).await? {
                    deleted += 1;
                }
                tx.commit().await?;
            }
        }
        if deleted > 0 {
            tracing::info!(deleted, "expired export jobs deleted");
        }
        Ok(deleted)
    }
}

fn is_transient(e: &ExportError) -> bool {
    matches!(e, ExportError::Store(StoreError::Unavailable(_) | StoreError::Timeout | StoreError::Contention))
}

/// What a failed job's status says: the error's own text, which names no patient data.
fn failure_text(e: &ExportError) -> String {
    match e {
        ExportError::ExportFailed(reason) => reason.clone(),
        other => other.to_string(),
    }
}

/// `<root>/<tenant>/<job>`. Tenant ids may contain dots; one starting with a dot (`..`) is
/// written `%2E…`, which no tenant id can spell, so it can neither climb out of the root nor
/// collide with another tenant's directory.
pub(crate) fn job_dir(root: &Path, tenant: &TenantId, job: &str) -> PathBuf {
    let t = tenant.as_str();
    let t = match t.strip_prefix('.') {
        Some(rest) => format!("%2E{rest}"),
        None => t.to_owned(),
    };
    root.join(t).join(job)
}

/// Removes a job's directory; one that is not there is fine.
pub(crate) async fn remove_dir(dir: &Path) -> Result<(), ExportError> {
    match tokio::fs::remove_dir_all(dir).await {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_error(&e)),
    }
}

/// An I/O failure: the detail (paths hold tenant and job ids, never patient data) is logged
/// under a fresh error id; the error carries the id only.
pub(crate) fn io_error(e: &std::io::Error) -> ExportError {
    let id = uuid::Uuid::new_v4().simple().to_string();
    tracing::error!(error.id = %id, error = %e, "export file i/o failed");
    ExportError::ExportIo(id)
}

// ── What a job writes ───────────────────────────────────────────────────────────────────────

/// How resources are laid out in files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Layout {
    /// FHIR Bulk Data NDJSON: one file series per type, one resource per line.
    Ndjson,
    /// One `collection` Bundle per patient (JSON or XML), and per file of a type outside the
    /// Patient compartment.
    Bundle { xml: bool },
    /// The CSV layouts of docs/formats/csv.md: one file series per table of each type.
    Csv { bom: bool },
}

impl Layout {
    /// The layout of a stored (canonical) output format.
    pub(crate) fn of(format: &str, bom: bool) -> Option<Self> {
        Some(match format {
            NDJSON => Self::Ndjson,
            FHIR_JSON => Self::Bundle { xml: false },
            FHIR_XML => Self::Bundle { xml: true },
            CSV => Self::Csv { bom },
            _ => return None,
        })
    }

    fn extension(self) -> &'static str {
        match self {
            Self::Ndjson => "ndjson",
            Self::Bundle { xml: false } => "json",
            Self::Bundle { xml: true } => "xml",
            Self::Csv { .. } => "csv",
        }
    }
}

/// The canonical output formats (the manifest's and the stored spelling).
pub(crate) const NDJSON: &str = "application/fhir+ndjson";
pub(crate) const FHIR_JSON: &str = "application/fhir+json";
pub(crate) const FHIR_XML: &str = "application/fhir+xml";
pub(crate) const CSV: &str = "text/csv";

/// The media type a file is served with, by its extension.
pub(crate) fn media_type_of(file: &str) -> &'static str {
    match file.rsplit('.').next() {
        Some("ndjson") => NDJSON,
        Some("json") => "application/fhir+json; charset=utf-8",
        Some("xml") => "application/fhir+xml; charset=utf-8",
        Some("csv") => "text/csv; charset=utf-8; header=present",
        _ => "application/octet-stream",
    }
}

/// Service-specific job parameters, stored as the job's `params` JSON.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct JobParams {
    /// The FHIR base URL of the kick-off (the `fullUrl` of Bundle entries).
    pub base: String,
    /// The patients the export is restricted to (a Group's members, the `patient` parameter),
    /// sorted; absent: every patient.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patients: Option<Vec<String>>,
    /// CSV: a UTF-8 byte-order mark first in every file.
    #[serde(default)]
    pub bom: bool,
}

/// One type's resources: ORed alternatives, each an AND of search parameters.
#[derive(Debug, Clone)]
pub(crate) struct TypePlan {
    pub resource_type: &'static str,
    pub alternatives: Vec<Vec<(String, String)>>,
}

impl TypePlan {
    /// The alternatives as queries, each with `extra` criteria added.
    fn queries(&self, extra: &[(String, String)], service: &DataExport) -> Result<Vec<SearchQuery>, ExportError> {
        self.alternatives
            .iter()
            .map(|pairs| {
                let all: Vec<(String, String)> = pairs.iter().chain(extra).cloned().collect();
                Ok(parse_search(self.resource_type, &all, true, |t| service.type_of(t))?)
            })
            .collect()
    }
}

/// A step of a job.
#[derive(Debug, Clone)]
pub(crate) enum Unit {
    /// Every selected resource of a type, into a series of files.
    Type(TypePlan),
    /// One Bundle per selected patient, holding the patient's resources of `types`.
    Patients { selector: TypePlan, types: Vec<TypePlan> },
}

/// What a job writes, derived from its stored request (and checked at kick-off the same way).
#[derive(Debug, Clone)]
pub(crate) struct Plan {
    pub units: Vec<Unit>,
}

/// A parsed `_typeFilter`: the type and its search criteria.
pub(crate) type TypeFilter = (&'static str, Vec<(String, String)>);

/// The request a plan is made from.
pub(crate) struct PlanRequest<'a> {
    pub kind: ExportKind,
    pub types: &'a [&'static str],
    pub since: Option<i64>,
    /// `(type, criteria)` of each `_typeFilter`.
    pub filters: &'a [TypeFilter],
    pub patients: Option<&'a [String]>,
    pub layout: Layout,
}

impl Plan {
    /// The units of a request; every query is parsed once here, so a request the worker could
    /// not run is refused at kick-off.
    pub(crate) fn new(r: &PlanRequest<'_>, service: &DataExport) -> Result<Self, ExportError> {
        let since: Vec<(String, String)> = r
            .since
            .map(|ms| vec![("_lastUpdated".to_owned(), format!("ge{}", format_instant(ms)))])
            .unwrap_or_default();
        // `_typeFilter`s of a type are ORed; a type without one is exported whole.
        let criteria = |ty: &'static str| -> Vec<Vec<(String, String)>> {
            let mut own: Vec<Vec<(String, String)>> =
                r.filters.iter().filter(|(t, _)| *t == ty).map(|(_, pairs)| pairs.clone()).collect();
            if own.is_empty() {
                own.push(Vec::new());
            }
            own.into_iter()
                .map(|mut pairs| {
                    pairs.extend(since.iter().cloned());
                    pairs
                })
                .collect()
        };
        // The Patient compartment restriction of Patient- and Group-level exports.
        let compartment = |ty: &'static str| -> Vec<Vec<(String, String)>> {
            let Some(param) = patient_param(ty) else { return vec![Vec::new()] };
            match (r.kind, r.patients) {
                (ExportKind::System, _) => vec![Vec::new()],
                (_, None) if ty == "Patient" => vec![Vec::new()],
                (_, None) => vec![vec![(format!("{param}:missing"), "false".to_owned())]],
                (_, Some(list)) => list
                    .chunks(PATIENT_CHUNK)
                    .map(|chunk| {
                        let value = if ty == "Patient" {
                            chunk.join(",")
                        } else {
                            chunk.iter().map(|p| format!("Patient/{p}")).collect::<Vec<_>>().join(",")
                        };
                        vec![(param.to_owned(), value)]
                    })
                    .collect(),
            }
        };
        let type_plan = |ty: &'static str| TypePlan {
            resource_type: ty,
            alternatives: criteria(ty)
                .into_iter()
                .flat_map(|c| compartment(ty).into_iter().map(move |p| c.iter().cloned().chain(p).collect()))
                .collect(),
        };
        let mut units = Vec::new();
        match r.layout {
            Layout::Bundle { .. } => {
                let in_compartment: Vec<&'static str> =
                    r.types.iter().copied().filter(|t| patient_param(t).is_some()).collect();
                if !in_compartment.is_empty() {
                    let selector = TypePlan {
                        resource_type: "Patient",
                        alternatives: match r.patients {
                            None => vec![Vec::new()],
                            Some(list) => {
                                list.chunks(PATIENT_CHUNK).map(|c| vec![("_id".to_owned(), c.join(","))]).collect()
                            }
                        },
                    };
                    // Patient first in each Bundle, then the other types in the request's order.
                    let mut ordered = in_compartment.clone();
                    ordered.sort_by_key(|t| *t != "Patient");
                    let types: Vec<TypePlan> = ordered
                        .into_iter()
                        .map(|ty| TypePlan { resource_type: ty, alternatives: criteria(ty) })
                        .collect();
                    units.push(Unit::Patients { selector, types });
                }
                for ty in r.types.iter().copied().filter(|t| patient_param(t).is_none()) {
                    units.push(Unit::Type(type_plan(ty)));
                }
                // At system level every resource is exported: those of a compartment type that
                // name no patient (an Observation about a Device or a Location, a Specimen
                // without subject) belong to no patient's Bundle and go, like the types outside
                // the compartment, into Bundles of their type.
                if r.kind == ExportKind::System {
                    for ty in in_compartment.iter().copied().filter(|t| *t != "Patient") {
                        let Some(param) = patient_param(ty) else { continue };
                        let missing = (format!("{param}:missing"), "true".to_owned());
                        let alternatives = criteria(ty)
                            .into_iter()
                            .map(|mut c| {
                                c.push(missing.clone());
                                c
                            })
                            .collect();
                        units.push(Unit::Type(TypePlan { resource_type: ty, alternatives }));
                    }
                }
            }
            _ => units.extend(r.types.iter().map(|ty| Unit::Type(type_plan(ty)))),
        }
        let plan = Self { units };
        plan.check(service)?;
        Ok(plan)
    }

    /// Parses every query of the plan (a patient Bundle's with a stand-in patient).
    fn check(&self, service: &DataExport) -> Result<(), ExportError> {
        for unit in &self.units {
            match unit {
                Unit::Type(tp) => {
                    tp.queries(&[], service)?;
                }
                Unit::Patients { selector, types } => {
                    selector.queries(&[], service)?;
                    for tp in types {
                        tp.queries(&patient_criterion(tp.resource_type, "example"), service)?;
                    }
                }
            }
        }
        Ok(())
    }
}

/// The criterion restricting a type to one patient's compartment.
fn patient_criterion(resource_type: &str, patient: &str) -> Vec<(String, String)> {
    match patient_param(resource_type) {
        Some("_id") => vec![("_id".to_owned(), patient.to_owned())],
        Some(param) => vec![(param.to_owned(), format!("Patient/{patient}"))],
        None => Vec::new(),
    }
}

// ── Checkpoints ─────────────────────────────────────────────────────────────────────────────

/// A job's progress, stored after every page.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Checkpoint {
    /// The unit being written.
    pub unit: usize,
    /// The last id written in the unit (a patient's, in the patients unit).
    pub after: Option<String>,
    /// The number of the unit's next file (patient Bundles: of the next Bundle).
    pub next_file: u32,
    /// The unit's open file set.
    pub open: Option<OpenSet>,
    /// How many files are finished (and stored as the job's outputs with this checkpoint).
    pub outputs: u64,
    /// Resources written, in all.
    pub written: u64,
    /// Resources (patients, in the patients unit) done in the unit, and how many it has.
    pub unit_done: u64,
    pub unit_total: Option<u64>,
}

impl Default for Checkpoint {
    fn default() -> Self {
        Self { unit: 0, after: None, next_file: 1, open: None, outputs: 0, written: 0, unit_done: 0, unit_total: None }
    }
}

/// Files being written, as far as they are durable.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct OpenSet {
    /// The output type of the files (`Observation`, or `Bundle`).
    pub resource_type: String,
    /// The directory of the claim writing them (`a3`), in the job's directory.
    pub dir: String,
    pub index: u32,
    /// Resources written into the set.
    pub count: u64,
    pub files: Vec<FileMark>,
}

/// One open file: its name, durable length and rows (lines, entries, CSV records).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct FileMark {
    pub name: String,
    pub bytes: u64,
    pub rows: u64,
}

/// A finished file, as the manifest lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Output {
    #[serde(rename = "type")]
    pub resource_type: String,
    pub file: String,
    /// Lines (NDJSON), Bundle entries, or CSV records (without the header).
    pub count: u64,
    /// The directory of the claim that wrote the file (`a3`), in the job's directory.
    pub dir: String,
}

impl Output {
    /// Where the file is, under the job's directory: `None` for a name or directory that is not
    /// one this module writes (nothing read from the database becomes a path unchecked).
    pub(crate) fn path(&self, job_dir: &Path) -> Option<PathBuf> {
        let dir_ok =
            self.dir.len() > 1 && self.dir.starts_with('a') && self.dir[1..].bytes().all(|b| b.is_ascii_digit());
        let name_ok = !self.file.is_empty()
            && !self.file.starts_with('.')
            && self.file.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'));
        (dir_ok && name_ok).then(|| job_dir.join(&self.dir).join(&self.file))
    }
}

// ── Files ───────────────────────────────────────────────────────────────────────────────────

struct OpenFile {
    name: String,
    out: BufWriter<tokio::fs::File>,
    bytes: u64,
    rows: u64,
}

/// A set of files written together: one (NDJSON, Bundle) or one per CSV table.
struct FileSet {
    resource_type: String,
    /// Files created since the last sync: their directory entries are made durable too.
    created: bool,
    index: u32,
    count: u64,
    files: Vec<OpenFile>,
}

/// Turns resources into file content.
struct Writer {
    /// The job's directory.
    job_dir: PathBuf,
    /// This claim's directory in it (`a3`): the only place this claim writes.
    attempt: String,
    layout: Layout,
    base: String,
    timestamp: String,
}

impl Writer {
    /// The file names of set `index` of a series (`stem` is the type, or `Bundle`).
    fn names(&self, stem: &str, resource_type: &str, index: u32) -> Result<Vec<String>, ExportError> {
        Ok(match self.layout {
            Layout::Csv { .. } => ehr_fhir::csv::tables(resource_type)?
                .iter()
                .map(|t| if index == 1 { t.file_name() } else { format!("{}-{index}.csv", t.name) })
                .collect(),
            l => vec![format!("{stem}-{index}.{}", l.extension())],
        })
    }

    /// What each file of a new set starts with.
    fn headers(&self, resource_type: &str) -> Result<Vec<Vec<u8>>, ExportError> {
        Ok(match self.layout {
            Layout::Ndjson => vec![Vec::new()],
            Layout::Bundle { xml: false } => {
                let id = uuid::Uuid::new_v4();
                vec![
                    format!(
                        "{{\"resourceType\":\"Bundle\",\"id\":\"{id}\",\"type\":\"collection\",\"timestamp\":\"{}\",\"entry\":[",
                        self.timestamp
                    )
                    .into_bytes(),
                ]
            }
            Layout::Bundle { xml: true } => {
                let id = uuid::Uuid::new_v4();
                vec![
                    format!(
                        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Bundle xmlns=\"http://hl7.org/fhir\"><id value=\"{id}\"/>\
                         <type value=\"collection\"/><timestamp value=\"{}\"/>",
                        self.timestamp
                    )
                    .into_bytes(),
                ]
            }
            Layout::Csv { bom } => ehr_fhir::csv::tables(resource_type)?
                .iter()
                .map(|t| {
                    let mut out = if bom { ehr_fhir::csv::BOM.to_vec() } else { Vec::new() };
                    ehr_fhir::csv::write_row(&mut out, &t.columns);
                    out
                })
                .collect(),
        })
    }

    fn footer(&self) -> &'static [u8] {
        match self.layout {
            Layout::Bundle { xml: false } => b"]}\n",
            Layout::Bundle { xml: true } => b"</Bundle>\n",
            _ => b"",
        }
    }

    fn dir(&self) -> PathBuf {
        self.job_dir.join(&self.attempt)
    }

    /// Starts set `index` of a series: new files (one left from before the checkpoint, by a
    /// crash of this same claim, is truncated) with their headers.
    async fn create(&self, output_type: &str, resource_type: &str, index: u32) -> Result<FileSet, ExportError> {
        let dir = self.dir();
        tokio::fs::create_dir_all(&dir).await.map_err(|e| io_error(&e))?;
        let names = self.names(output_type, resource_type, index)?;
        let headers = self.headers(resource_type)?;
        let mut files = Vec::new();
        for (name, header) in names.into_iter().zip(headers) {
            let file = tokio::fs::File::create(dir.join(&name)).await.map_err(|e| io_error(&e))?;
            let mut out = BufWriter::with_capacity(64 * 1024, file);
            out.write_all(&header).await.map_err(|e| io_error(&e))?;
            files.push(OpenFile { name, out, bytes: header.len() as u64, rows: 0 });
        }
        Ok(FileSet { resource_type: output_type.to_owned(), created: true, index, count: 0, files })
    }

    /// Resumes the set of a checkpoint, written by an earlier claim: its files' durable
    /// prefixes are copied into this claim's directory. The earlier claim's files are left as
    /// they are — their worker may still be writing to them, not knowing yet that it lost the
    /// job — and whatever it wrote after the checkpoint is not copied: it is written again.
    async fn reopen(&self, mark: &OpenSet) -> Result<FileSet, ExportError> {
        if mark.dir == self.attempt {
            // Each claim has a directory of its own: its own checkpoint is never resumed.
            return Err(corrupt_job());
        }
        let dir = self.dir();
        tokio::fs::create_dir_all(&dir).await.map_err(|e| io_error(&e))?;
        let mut files = Vec::new();
        for f in &mark.files {
            let from = Output { resource_type: String::new(), file: f.name.clone(), count: 0, dir: mark.dir.clone() }
                .path(&self.job_dir)
                .ok_or_else(corrupt_job)?;
            let source = match tokio::fs::File::open(&from).await {
                Ok(file) => file,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(lost_file()),
                Err(e) => return Err(io_error(&e)),
            };
            let file = tokio::fs::File::create(dir.join(&f.name)).await.map_err(|e| io_error(&e))?;
            let mut out = BufWriter::with_capacity(64 * 1024, file);
            let copied = tokio::io::copy(&mut source.take(f.bytes), &mut out).await.map_err(|e| io_error(&e))?;
            if copied < f.bytes {
                return Err(lost_file());
            }
            files.push(OpenFile { name: f.name.clone(), out, bytes: f.bytes, rows: f.rows });
        }
        Ok(FileSet {
            resource_type: mark.resource_type.clone(),
            created: true,
            index: mark.index,
            count: mark.count,
            files,
        })
    }

    /// Makes the directory entries of newly created files durable (a file fsynced but not its
    /// entry may be gone after a power loss while the checkpoint says it is there).
    async fn sync_dir(&self, set: &mut FileSet) -> Result<(), ExportError> {
        if set.created {
            let dir = tokio::fs::File::open(self.dir()).await.map_err(|e| io_error(&e))?;
            dir.sync_all().await.map_err(|e| io_error(&e))?;
            set.created = false;
        }
        Ok(())
    }

    /// Appends one resource.
    async fn append(&self, set: &mut FileSet, s: &Stored) -> Result<(), ExportError> {
        let mut chunks: Vec<(usize, Vec<u8>)> = Vec::new();
        match self.layout {
            Layout::Ndjson => {
                // Stored JSON is compact; a line break inside would split the record.
                let mut line = if s.content.contains('\n') { compact(&s.content)? } else { s.content.clone() };
                line.push('\n');
                chunks.push((0, line.into_bytes()));
            }
            Layout::Bundle { xml: false } => {
                let url = serde_json::to_string(&format!("{}/{}/{}", self.base, s.resource_type, s.id))
                    .map_err(|_| corrupt())?;
                let sep = if set.files[0].rows > 0 { "," } else { "" };
                chunks.push((0, format!("{sep}{{\"fullUrl\":{url},\"resource\":{}}}", s.content).into_bytes()));
            }
            Layout::Bundle { xml: true } => {
                let value: serde_json::Value = serde_json::from_str(&s.content).map_err(|_| corrupt())?;
                let xml = ehr_fhir::xml::to_xml(&value)?;
                let body = strip_declaration(&xml);
                let url = xml_attr(&format!("{}/{}/{}", self.base, s.resource_type, s.id));
                chunks.push((
                    0,
                    format!("<entry><fullUrl value=\"{url}\"/><resource>{body}</resource></entry>").into_bytes(),
                ));
            }
            Layout::Csv { .. } => {
                let value: serde_json::Value = serde_json::from_str(&s.content).map_err(|_| corrupt())?;
                for (table, fields) in ehr_fhir::csv::flatten(&value)? {
                    let mut row = Vec::new();
                    ehr_fhir::csv::write_row(&mut row, &fields);
                    chunks.push((table, row));
                }
            }
        }
        for (table, bytes) in chunks {
            let file = set.files.get_mut(table).ok_or_else(corrupt)?;
            file.out.write_all(&bytes).await.map_err(|e| io_error(&e))?;
            file.bytes += bytes.len() as u64;
            file.rows += 1;
        }
        set.count += 1;
        Ok(())
    }

    /// Makes the set durable and returns its checkpoint mark.
    async fn sync(&self, set: &mut FileSet) -> Result<OpenSet, ExportError> {
        for f in &mut set.files {
            f.out.flush().await.map_err(|e| io_error(&e))?;
            f.out.get_ref().sync_data().await.map_err(|e| io_error(&e))?;
        }
        self.sync_dir(set).await?;
        Ok(OpenSet {
            resource_type: set.resource_type.clone(),
            dir: self.attempt.clone(),
            index: set.index,
            count: set.count,
            files: set.files.iter().map(|f| FileMark { name: f.name.clone(), bytes: f.bytes, rows: f.rows }).collect(),
        })
    }

    /// Finishes a set: footer, flush, fsync; its files as manifest outputs.
    async fn close(&self, mut set: FileSet) -> Result<Vec<Output>, ExportError> {
        let footer = self.footer();
        let mut outputs = Vec::new();
        for f in &mut set.files {
            f.out.write_all(footer).await.map_err(|e| io_error(&e))?;
            f.out.flush().await.map_err(|e| io_error(&e))?;
            f.out.get_ref().sync_data().await.map_err(|e| io_error(&e))?;
            outputs.push(Output {
                resource_type: set.resource_type.clone(),
                file: f.name.clone(),
                count: f.rows,
                dir: self.attempt.clone(),
            });
        }
        self.sync_dir(&mut set).await?;
        Ok(outputs)
    }
}

fn lost_file() -> ExportError {
    ExportError::ExportFailed(
        "a file of the last checkpoint is missing or shorter (export.root must be shared by every data-export replica)"
            .into(),
    )
}

fn corrupt() -> ExportError {
    ExportError::ExportFailed("a stored resource could not be read".into())
}

fn compact(content: &str) -> Result<String, ExportError> {
    let value: serde_json::Value = serde_json::from_str(content).map_err(|_| corrupt())?;
    serde_json::to_string(&value).map_err(|_| corrupt())
}

/// An XML document without its declaration (`<?xml …?>`), to nest in `<resource>`.
fn strip_declaration(xml: &str) -> &str {
    let t = xml.trim_start();
    match t.strip_prefix("<?xml").and_then(|rest| rest.split_once("?>")) {
        Some((_, rest)) => rest.trim_start(),
        None => t,
    }
}

fn xml_attr(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

// ── Running a job ───────────────────────────────────────────────────────────────────────────

/// How a unit (or the job) ended.
pub(crate) enum Step {
    /// The unit is done; go on with the next.
    Next,
    /// The job is complete, recorded so.
    Done,
    /// The lease was lost, or the job cancelled.
    Lost,
    /// The process is shutting down; the last checkpoint stands.
    Shutdown,
}

struct Run<'a> {
    service: &'a DataExport,
    ctx: &'a TenantContext,
    job: &'a ExportJob,
    token: &'a str,
    plan: Plan,
    writer: Writer,
    cp: Checkpoint,
    /// Files finished since the last checkpoint: stored as outputs with the next one.
    pending: Vec<Output>,
    shutdown: CancellationToken,
    page: usize,
    /// When the lease was last extended (epoch ms).
    extended: i64,
}

impl<'a> Run<'a> {
    fn start(
        service: &'a DataExport,
        ctx: &'a TenantContext,
        job: &'a ExportJob,
        token: &'a str,
        dir: &Path,
        shutdown: CancellationToken,
    ) -> Result<Self, ExportError> {
        let params: JobParams = serde_json::from_str(&job.params).map_err(|_| corrupt_job())?;
        let layout = Layout::of(&job.output_format, params.bom).ok_or_else(corrupt_job)?;
        let types: Vec<&'static str> =
            job.types.iter().map(|t| service.type_of(t).ok_or_else(corrupt_job)).collect::<Result<_, _>>()?;
        let filters = parse_type_filters(&job.type_filters, service)?;
        let request = PlanRequest {
            kind: job.kind,
            types: &types,
            since: job.since,
            filters: &filters,
            patients: params.patients.as_deref(),
            layout,
        };
        let plan = Plan::new(&request, service)?;
        let cp = match &job.checkpoint {
            Some(text) => serde_json::from_str(text).map_err(|_| corrupt_job())?,
            None => Checkpoint::default(),
        };
        Ok(Self {
            service,
            ctx,
            job,
            token,
            plan,
            writer: Writer {
                job_dir: dir.to_owned(),
                attempt: format!("a{}", job.attempts),
                layout,
                base: params.base.trim_end_matches('/').to_owned(),
                timestamp: format_instant(job.transaction_time),
            },
            cp,
            pending: Vec::new(),
            shutdown,
            page: service.settings.page_size.clamp(1, ehr_fhir::search::MAX_COUNT),
            extended: service.now_ms(),
        })
    }

    async fn all(&mut self) -> Result<Step, ExportError> {
        while self.cp.unit < self.plan.units.len() {
            let unit = self.plan.units[self.cp.unit].clone();
            let step = match &unit {
                Unit::Type(tp) => self.type_unit(tp).await?,
                Unit::Patients { selector, types } => self.patients_unit(selector, types).await?,
            };
            match step {
                Step::Next => {}
                other => return Ok(other),
            }
        }
        self.complete().await
    }

    /// Records the job as completed, with the files finished since the last checkpoint; `Lost`
    /// when the lease was lost or the job cancelled meanwhile.
    async fn complete(&mut self) -> Result<Step, ExportError> {
        let now = self.service.now_ms();
        let outputs = self.pending_rows()?;
        let tx = self.service.store.write(self.ctx).await?;
        let ok = tx.finish_export_job(&self.job.id, self.token, ExportEnd::Completed, now).await?;
        if ok {
            tx.add_export_outputs(&self.job.id, self.first_pending(), &outputs).await?;
        }
        tx.commit().await?;
        Ok(if ok { Step::Done } else { Step::Lost })
    }

    /// The manifest position of the first pending output.
    fn first_pending(&self) -> i64 {
        i64::try_from(self.cp.outputs).unwrap_or(i64::MAX)
    }

    /// The pending outputs as `(file name, JSON)` rows.
    fn pending_rows(&self) -> Result<Vec<(String, String)>, ExportError> {
        self.pending
            .iter()
            .map(|o| Ok((o.file.clone(), serde_json::to_string(o).map_err(|_| corrupt_job())?)))
            .collect()
    }

    /// Moves on to the next unit and records it.
    async fn next_unit(&mut self) -> Result<Step, ExportError> {
        self.cp.unit += 1;
        self.cp.after = None;
        self.cp.next_file = 1;
        self.cp.open = None;
        self.cp.unit_done = 0;
        self.cp.unit_total = None;
        Ok(if self.checkpoint().await? { Step::Next } else { Step::Lost })
    }

    async fn type_unit(&mut self, tp: &TypePlan) -> Result<Step, ExportError> {
        let queries = tp.queries(&[], self.service)?;
        if self.cp.unit_total.is_none() {
            self.cp.unit_total = self.estimate(&queries).await?;
        }
        let max = self.service.settings.max_file_resources.max(1);
        let mut set = match self.cp.open.clone() {
            Some(mark) => Some(self.writer.reopen(&mark).await?),
            None => None,
        };
        loop {
            // Between pages only: the last checkpoint covers everything written so far.
            if self.shutdown.is_cancelled() {
                return Ok(Step::Shutdown);
            }
            let page = self.read(tp.resource_type, &queries, self.cp.after.clone()).await?;
            let Some(last) = page.last().map(|s| s.id.clone()) else { break };
            for s in &page {
                let mut open = match set.take() {
                    Some(open) => open,
                    None => {
                        let index = self.cp.next_file;
                        self.cp.next_file += 1;
                        self.writer.create(tp.resource_type, tp.resource_type, index).await?
                    }
                };
                self.writer.append(&mut open, s).await?;
                if open.count >= max {
                    let done = self.writer.close(open).await?;
                    self.pending.extend(done);
                } else {
                    set = Some(open);
                }
            }
            let n = page.len() as u64;
            self.cp.after = Some(last);
            self.cp.written += n;
            ehr_telemetry::metrics::export_resources_written(n);
            self.cp.unit_done += n;
            self.cp.open = match set.as_mut() {
                Some(open) => Some(self.writer.sync(open).await?),
                None => None,
            };
            if !self.checkpoint().await? {
                return Ok(Step::Lost);
            }
            self.pause().await;
        }
        if let Some(open) = set.take() {
            let done = self.writer.close(open).await?;
            self.pending.extend(done);
        }
        self.next_unit().await
    }

    async fn patients_unit(&mut self, selector: &TypePlan, types: &[TypePlan]) -> Result<Step, ExportError> {
        let patients = selector.queries(&[], self.service)?;
        if self.cp.unit_total.is_none() {
            self.cp.unit_total = self.estimate(&patients).await?;
        }
        loop {
            if self.shutdown.is_cancelled() {
                return Ok(Step::Shutdown);
            }
            let page = self.read("Patient", &patients, self.cp.after.clone()).await?;
            if page.is_empty() {
                break;
            }
            // One checkpoint per page of patients, not per patient (a commit each would bound
            // the export by the database's commit rate). The checkpoint is consistent whenever
            // it is written — also by `keep_lease` in the middle of a page: `after` moves only
            // once a patient's Bundle is closed and durable.
            for patient in &page {
                let written = self.patient_bundle(&patient.id, types).await?;
                self.cp.after = Some(patient.id.clone());
                self.cp.written += written;
                ehr_telemetry::metrics::export_resources_written(written);
                self.cp.unit_done += 1;
                if self.shutdown.is_cancelled() {
                    return Ok(Step::Shutdown);
                }
            }
            if !self.checkpoint().await? {
                return Ok(Step::Lost);
            }
            self.pause().await;
        }
        self.next_unit().await
    }

    /// Writes one patient's Bundle (none when the patient has nothing selected); returns the
    /// number of entries. A Bundle is finished before the checkpoint that follows it, so a
    /// resumed job rewrites at most the one it was writing.
    async fn patient_bundle(&mut self, patient: &str, types: &[TypePlan]) -> Result<u64, ExportError> {
        let mut set: Option<FileSet> = None;
        for tp in types {
            let queries = tp.queries(&patient_criterion(tp.resource_type, patient), self.service)?;
            let mut after = None;
            loop {
                let rows = self.read(tp.resource_type, &queries, after.take()).await?;
                let Some(last) = rows.last().map(|s| s.id.clone()) else { break };
                for s in &rows {
                    if set.is_none() {
                        set = Some(self.writer.create("Bundle", tp.resource_type, self.cp.next_file).await?);
                    }
                    if let Some(open) = set.as_mut() {
                        self.writer.append(open, s).await?;
                    }
                }
                after = Some(last);
                // A patient with a very long record must not outlive the lease.
                self.keep_lease().await?;
            }
        }
        let Some(open) = set else { return Ok(0) };
        let count = open.count;
        let done = self.writer.close(open).await?;
        self.pending.extend(done);
        self.cp.next_file += 1;
        Ok(count)
    }

    /// The next page of resources matching any of `queries`, after `after` in id order.
    async fn read(
        &self,
        resource_type: &'static str,
        queries: &[SearchQuery],
        after: Option<String>,
    ) -> Result<Vec<Stored>, ExportError> {
        let tx = self.service.store.read(self.ctx).await?;
        let page = page(&tx, resource_type, queries, after.as_deref(), self.page, self.service).await;
        tx.commit().await?;
        page
    }

    /// How many resources the unit has, for `X-Progress` (the sum over ORed queries: resources
    /// matching several count more than once). A count the database cannot finish within its
    /// statement timeout (a large table) leaves the total unknown rather than failing the job:
    /// it only feeds a progress text.
    async fn estimate(&self, queries: &[SearchQuery]) -> Result<Option<u64>, ExportError> {
        let tx = self.service.store.read(self.ctx).await?;
        let mut total = 0u64;
        for q in queries {
            let mut q = q.clone();
            q.count = 0;
            q.total = ehr_fhir::search::TotalMode::Accurate;
            match tx.search(&q).await {
                Ok(page) => total += page.total.unwrap_or(0),
                Err(StoreError::Timeout) => {
                    // Dropped: rolled back (PostgreSQL aborted it anyway).
                    drop(tx);
                    return Ok(None);
                }
                Err(e) => return Err(e.into()),
            }
        }
        tx.commit().await?;
        Ok(Some(total))
    }

    /// Records the checkpoint, progress and the files finished since the last one, and extends
    /// the lease — one transaction; false when the lease is lost or the job cancelled.
    async fn checkpoint(&mut self) -> Result<bool, ExportError> {
        let now = self.service.now_ms();
        let rows = self.pending_rows()?;
        let first = self.first_pending();
        let mut cp = self.cp.clone();
        cp.outputs += self.pending.len() as u64;
        let text = serde_json::to_string(&cp).map_err(|_| corrupt_job())?;
        let progress = self.progress();
        let tx = self.service.store.write(self.ctx).await?;
        let ok = tx
            .checkpoint_export_job(&self.job.id, self.token, &text, &progress, now + self.service.lease_ms(), now)
            .await?;
        if ok {
            tx.add_export_outputs(&self.job.id, first, &rows).await?;
        }
        tx.commit().await?;
        if ok {
            self.cp = cp;
            self.pending.clear();
        }
        self.extended = now;
        Ok(ok)
    }

    /// Extends the lease (with the unchanged checkpoint) when a third of it has passed.
    async fn keep_lease(&mut self) -> Result<(), ExportError> {
        if self.service.now_ms() - self.extended > self.service.lease_ms() / 3 && !self.checkpoint().await? {
            return Err(ExportError::ExportFailed("lease lost".into()));
        }
        Ok(())
    }

    /// `X-Progress`: type names and counts only.
    fn progress(&self) -> String {
        let units = self.plan.units.len();
        let total = self.cp.unit_total.map_or_else(|| "?".to_owned(), |t| t.to_string());
        match self.plan.units.get(self.cp.unit) {
            Some(Unit::Type(tp)) => format!(
                "{} {}/{} resources, type {} of {}; {} resources written",
                tp.resource_type,
                self.cp.unit_done,
                total,
                self.cp.unit + 1,
                units,
                self.cp.written
            ),
            Some(Unit::Patients { .. }) => format!(
                "patients {}/{}, step {} of {}; {} resources written",
                self.cp.unit_done,
                total,
                self.cp.unit + 1,
                units,
                self.cp.written
            ),
            None => format!("writing the manifest; {} resources written", self.cp.written),
        }
    }

    /// `page_pause_ms` between pages, cut short by shutdown.
    async fn pause(&self) {
        let ms = self.service.settings.page_pause_ms;
        if ms > 0 {
            tokio::select! {
                _ = self.shutdown.cancelled() => {}
                _ = tokio::time::sleep(Duration::from_millis(ms)) => {}
            }
        }
    }
}

fn corrupt_job() -> ExportError {
    ExportError::ExportFailed("the stored export job could not be read".into())
}

/// The next `limit` resources (fewer when many queries are ORed) matching any of `queries`,
/// after `after` in the database's id order.
///
/// With one query this is `Tx::scan`. With several, each is scanned for the same number of
/// resources and the union's first ones are taken — ordered by the database again (an `_id`
/// scan of the candidates), because its collation, not Rust's byte order, defines "after": any
/// resource among the union's first `n` is among the first `n` of a query it matches, so the
/// candidates hold them all.
async fn page(
    tx: &Tx,
    resource_type: &'static str,
    queries: &[SearchQuery],
    after: Option<&str>,
    limit: usize,
    service: &DataExport,
) -> Result<Vec<Stored>, ExportError> {
    match queries {
        [] => Ok(Vec::new()),
        [one] => Ok(tx.scan(one, after, limit).await?),
        many => {
            let per = limit.min((MAX_CANDIDATES / many.len()).max(1));
            let mut ids = BTreeSet::new();
            for q in many {
                ids.extend(tx.scan(q, after, per).await?.into_iter().map(|s| s.id));
            }
            if ids.is_empty() {
                return Ok(Vec::new());
            }
            let mut order = parse_search(resource_type, &[], true, |t| service.type_of(t))?;
            order.filters.push(Filter::Id(ids.into_iter().collect()));
            Ok(tx.scan(&order, after, per).await?)
        }
    }
}

/// Result parameters a `_typeFilter` may not carry: it selects resources, nothing else.
const RESULT_PARAMETERS: &[&str] = &[
    "_sort",
    "_count",
    "_offset",
    "_total",
    "_summary",
    "_elements",
    "_include",
    "_revinclude",
    "_contained",
    "_containedType",
    "_format",
    "_pretty",
];

/// Parses `_typeFilter` values (`Observation?category=laboratory`) into type and criteria.
/// Messages name types and parameters, never values.
pub(crate) fn parse_type_filters(filters: &[String], service: &DataExport) -> Result<Vec<TypeFilter>, ExportError> {
    filters
        .iter()
        .map(|f| {
            let (ty, query) = f
                .split_once('?')
                .ok_or_else(|| ExportError::ExportTypeFilter("expected [type]?[search parameters]".into()))?;
            let resource_type =
                service.type_of(ty).ok_or_else(|| ExportError::ExportType(ty.chars().take(64).collect()))?;
            let pairs: Vec<(String, String)> = form_urlencoded::parse(query.as_bytes()).into_owned().collect();
            for (name, _) in &pairs {
                let base = name.split([':', '.']).next().unwrap_or(name);
                if RESULT_PARAMETERS.contains(&base) || name.starts_with("_include") || name.starts_with("_revinclude")
                {
                    return Err(ExportError::ExportTypeFilter(format!(
                        "`{}` selects no resources and is not allowed here",
                        name.chars().take(64).collect::<String>()
                    )));
                }
            }
            Ok((resource_type, pairs))
        })
        .collect()
}
