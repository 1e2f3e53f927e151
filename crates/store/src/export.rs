//! The data-export service's job table: FHIR Bulk Data `$export` jobs, their leases and
//! checkpoints.
//!
//! A job is a row of `export_jobs`, a tenant table under row-level security (its request, type
//! filters and checkpoint name the tenant's resources). Workers serve every tenant, so beside it
//! `export_queue` — a system table holding only job id, tenant id, whether the job still needs
//! a worker, and when it finished — tells a worker which tenants to look at ([`SysTx::export_tenants`]),
//! the way `lab_endpoints` tells the lab sender; the claim itself runs in the tenant's own
//! transaction ([`Tx::claim_export_job`]), like `claim_due_hl7`. Both rows are written in the
//! same transaction, so they never disagree.
//!
//! # Leases
//!
//! A claim sets a fresh random `lease_token` and a `lease_until`; every later write of the worker
//! (checkpoint, completion, release) is conditional on that token and on the job still running.
//! A worker that dies stops extending its lease; once `lease_until` has passed, the next claim
//! takes the job with a new token, and a write of the old worker — one that was only slow —
//! changes nothing (`false`): it must stop. A cancelled job fails that condition too.
//!
//! # Outputs
//!
//! The files a job has finished are rows of `export_outputs` (tenant table), added in the
//! transaction of the checkpoint (or completion) that covers them — never inside the checkpoint
//! itself: a job writing one file per patient would otherwise rewrite a checkpoint holding every
//! file so far after each patient, quadratic in the number of patients.
//!
//! # Fairness
//!
//! `export_queue` mirrors each active job's `lease_until`, so that [`SysTx::export_tenants`] can
//! list only tenants with a job to claim, those running the fewest jobs first: a tenant that
//! queued a thousand jobs does not keep every worker while another tenant's single job waits.
//!
//! Times are epoch milliseconds chosen by the caller; nothing here reads the clock. The checkpoint
//! and outputs are opaque JSON text to the store; their shape belongs to the service.

use crate::error::StoreError;
use crate::identity::{SysTx, parse_tenant};
use crate::repo::Tx;
use ehr_core::TenantId;
use sea_orm::{QueryResult, Value};
use std::fmt;

/// Where a job is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportState {
    /// Accepted, not yet claimed by a worker.
    Queued,
    /// Claimed at least once and not finished (its lease may have run out).
    Running,
    Completed,
    Failed,
    /// Cancelled (or deleted after completion) by its requester.
    Cancelled,
}

impl ExportState {
    /// The stored code.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Running => "running",
            Self::Completed => "completed",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }

    fn parse(s: &str) -> Result<Self, StoreError> {
        Ok(match s {
            "queued" => Self::Queued,
            "running" => Self::Running,
            "completed" => Self::Completed,
            "failed" => Self::Failed,
            "cancelled" => Self::Cancelled,
            _ => return Err(StoreError::corrupt("export_jobs.state")),
        })
    }

    /// Whether a worker still has something to do.
    pub fn is_active(self) -> bool {
        matches!(self, Self::Queued | Self::Running)
    }
}

/// Which `$export` operation made the job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportKind {
    /// `[base]/$export`.
    System,
    /// `[base]/Patient/$export`.
    Patient,
    /// `[base]/Group/[id]/$export`.
    Group,
}

impl ExportKind {
    /// The stored code.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::System => "system",
            Self::Patient => "patient",
            Self::Group => "group",
        }
    }

    fn parse(s: &str) -> Result<Self, StoreError> {
        Ok(match s {
            "system" => Self::System,
            "patient" => Self::Patient,
            "group" => Self::Group,
            _ => return Err(StoreError::corrupt("export_jobs.kind")),
        })
    }
}

/// What a kick-off request asks for.
#[derive(Clone, PartialEq)]
pub struct NewExportJob {
    pub id: String,
    /// The token subject that asked (only it sees the job).
    pub requester: String,
    /// The kick-off URL, as the manifest's `request` repeats it.
    pub request_url: String,
    pub kind: ExportKind,
    pub group_id: Option<String>,
    /// The resource types to export, in order.
    pub types: Vec<String>,
    /// `_since`, epoch milliseconds.
    pub since: Option<i64>,
    /// `_typeFilter` queries (`Observation?category=laboratory`).
    pub type_filters: Vec<String>,
    /// The output format (a media type).
    pub output_format: String,
    /// Service-specific parameters (JSON object).
    pub params: String,
    /// The manifest's `transactionTime`, epoch milliseconds.
    pub transaction_time: i64,
    pub created_at: i64,
}

/// A stored job.
#[derive(Clone, PartialEq)]
pub struct ExportJob {
    pub id: String,
    pub tenant: TenantId,
    pub requester: String,
    pub request_url: String,
    pub kind: ExportKind,
    pub group_id: Option<String>,
    pub types: Vec<String>,
    pub since: Option<i64>,
    pub type_filters: Vec<String>,
    pub output_format: String,
    pub params: String,
    pub state: ExportState,
    pub transaction_time: i64,
    /// A short progress text for `X-Progress` (type names and counts only).
    pub progress: Option<String>,
    pub lease_owner: Option<String>,
    pub lease_token: Option<String>,
    pub lease_until: Option<i64>,
    /// How many times the job was claimed.
    pub attempts: i32,
    /// The last checkpoint (JSON), written after every page.
    pub checkpoint: Option<String>,
    /// Why a failed job failed (no patient data).
    pub error: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
    pub finished_at: Option<i64>,
}

/// Debug output leaves out the request URL, type filters, parameters and checkpoint: search
/// values and resource ids of a tenant's data do not belong in logs.
impl fmt::Debug for ExportJob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ExportJob")
            .field("id", &self.id)
            .field("tenant", &self.tenant)
            .field("kind", &self.kind)
            .field("types", &self.types)
            .field("output_format", &self.output_format)
            .field("state", &self.state)
            .field("attempts", &self.attempts)
            .field("lease_until", &self.lease_until)
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for NewExportJob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NewExportJob")
            .field("id", &self.id)
            .field("kind", &self.kind)
            .field("types", &self.types)
            .field("output_format", &self.output_format)
            .finish_non_exhaustive()
    }
}

/// How a worker ends a job it holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportEnd<'a> {
    /// Every file written (the last outputs are added with [`Tx::add_export_outputs`] in the
    /// same transaction).
    Completed,
    /// Given up: why (no patient data).
    Failed { error: &'a str },
}

const JOB_COLUMNS: &str = "id, tenant_id, requester, request_url, kind, group_id, types, since, type_filters, \
     output_format, params, state, transaction_time, progress, lease_owner, lease_token, lease_until, attempts, \
     checkpoint, error, created_at, updated_at, finished_at";

fn row_to_job(row: &QueryResult) -> Result<ExportJob, StoreError> {
    let types: String = row.try_get("", "types")?;
    let filters: String = row.try_get("", "type_filters")?;
    Ok(ExportJob {
        id: row.try_get("", "id")?,
        tenant: parse_tenant(&row.try_get::<String>("", "tenant_id")?)?,
        requester: row.try_get("", "requester")?,
        request_url: row.try_get("", "request_url")?,
        kind: ExportKind::parse(&row.try_get::<String>("", "kind")?)?,
        group_id: row.try_get("", "group_id")?,
        types: types.split(',').filter(|t| !t.is_empty()).map(str::to_owned).collect(),
        since: row.try_get("", "since")?,
        type_filters: serde_json::from_str(&filters).map_err(|_| StoreError::corrupt("export_jobs.type_filters"))?,
        output_format: row.try_get("", "output_format")?,
        params: row.try_get("", "params")?,
        state: ExportState::parse(&row.try_get::<String>("", "state")?)?,
        transaction_time: row.try_get("", "transaction_time")?,
        progress: row.try_get("", "progress")?,
        lease_owner: row.try_get("", "lease_owner")?,
        lease_token: row.try_get("", "lease_token")?,
        lease_until: row.try_get("", "lease_until")?,
        attempts: row.try_get("", "attempts")?,
        checkpoint: row.try_get("", "checkpoint")?,
        error: row.try_get("", "error")?,
        created_at: row.try_get("", "created_at")?,
        updated_at: row.try_get("", "updated_at")?,
        finished_at: row.try_get("", "finished_at")?,
    })
}

impl Tx {
    /// Stores a new job, queued, and enters it in the workers' queue.
    pub async fn create_export_job(&self, job: &NewExportJob) -> Result<ExportJob, StoreError> {
        if job.types.iter().any(|t| t.is_empty() || t.contains(',')) {
            return Err(StoreError::InvalidValue("export type"));
        }
        let filters = serde_json::to_string(&job.type_filters).map_err(|_| StoreError::InvalidValue("type filter"))?;
        let inserted = self
            .exec(
                "INSERT INTO export_jobs (tenant_id, id, requester, request_url, kind, group_id, types, since, \
                 type_filters, output_format, params, state, transaction_time, attempts, created_at, updated_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, 'queued', $12, 0, $13, $13) \
                 ON CONFLICT DO NOTHING",
                vec![
                    self.tenant.as_str().into(),
                    job.id.as_str().into(),
                    job.requester.as_str().into(),
                    job.request_url.as_str().into(),
                    job.kind.as_str().into(),
                    job.group_id.clone().into(),
                    job.types.join(",").into(),
                    job.since.into(),
                    filters.into(),
                    job.output_format.as_str().into(),
                    job.params.as_str().into(),
                    job.transaction_time.into(),
                    job.created_at.into(),
                ],
            )
            .await?;
        if inserted == 0 {
            return Err(StoreError::AlreadyExists);
        }
        // The system-side entry: ids and times only (see the module docs).
        self.exec(
            "INSERT INTO export_queue (job_id, tenant_id, active, lease_until, created_at, finished_at) \
             VALUES ($1, $2, 1, NULL, $3, NULL)",
            vec![job.id.as_str().into(), self.tenant.as_str().into(), job.created_at.into()],
        )
        .await?;
        self.export_job(&job.id).await?.ok_or(StoreError::NotFound)
    }

    /// One job of the tenant.
    pub async fn export_job(&self, id: &str) -> Result<Option<ExportJob>, StoreError> {
        let rows = self
            .query(
                &format!("SELECT {JOB_COLUMNS} FROM export_jobs WHERE tenant_id = $1 AND id = $2"),
                vec![self.tenant.as_str().into(), id.into()],
            )
            .await?;
        rows.first().map(row_to_job).transpose()
    }

    /// How many of `requester`'s jobs still need a worker (queued or running): kick-off refuses
    /// a new one beyond a limit.
    pub async fn active_export_jobs(&self, requester: &str) -> Result<u64, StoreError> {
        let rows = self
            .query(
                "SELECT COUNT(*) AS n FROM export_jobs WHERE tenant_id = $1 AND requester = $2 \
                 AND state IN ('queued', 'running')",
                vec![self.tenant.as_str().into(), requester.into()],
            )
            .await?;
        let n: i64 = rows.first().map(|r| r.try_get("", "n")).transpose()?.unwrap_or(0);
        Ok(u64::try_from(n).unwrap_or(0))
    }

    /// Claims the tenant's oldest job that needs a worker — queued, or running with its lease
    /// run out (its worker died or stalled) — for `owner` under `token` until `lease_until`. On
    /// PostgreSQL a job row another worker is claiming right now is skipped.
    pub async fn claim_export_job(
        &self,
        owner: &str,
        token: &str,
        now: i64,
        lease_until: i64,
    ) -> Result<Option<ExportJob>, StoreError> {
        let lock = if self.backend == sea_orm::DbBackend::Postgres { " FOR UPDATE SKIP LOCKED" } else { "" };
        let due = "state IN ('queued', 'running') AND (lease_until IS NULL OR lease_until <= $2)";
        let rows = self
            .query(
                &format!(
                    "SELECT id FROM export_jobs WHERE tenant_id = $1 AND {due} ORDER BY created_at, id LIMIT 1{lock}"
                ),
                vec![self.tenant.as_str().into(), now.into()],
            )
            .await?;
        let Some(id) = rows.first().map(|r| r.try_get::<String>("", "id")).transpose()? else {
            return Ok(None);
        };
        // The condition again: on SQLite nothing locked the row between the two statements
        // (the single writer connection did: a read transaction could not have claimed it).
        let changed = self
            .exec(
                &format!(
                    "UPDATE export_jobs SET state = 'running', lease_owner = $4, lease_token = $5, lease_until = $6, \
                     attempts = attempts + 1, updated_at = $2 WHERE tenant_id = $1 AND id = $3 AND {due}"
                ),
                vec![
                    self.tenant.as_str().into(),
                    now.into(),
                    id.as_str().into(),
                    owner.into(),
                    token.into(),
                    lease_until.into(),
                ],
            )
            .await?;
        if changed != 1 {
            return Ok(None);
        }
        self.mirror_lease(&id, Some(lease_until)).await?;
        self.export_job(&id).await
    }

    /// Records a checkpoint and progress and extends the lease — only while the job is running
    /// under `token`. False: the lease was lost (another worker holds the job) or the job was
    /// cancelled; the caller must stop writing.
    pub async fn checkpoint_export_job(
        &self,
        id: &str,
        token: &str,
        checkpoint: &str,
        progress: &str,
        lease_until: i64,
        now: i64,
    ) -> Result<bool, StoreError> {
        let changed = self
            .exec(
                "UPDATE export_jobs SET checkpoint = $4, progress = $5, lease_until = $6, updated_at = $7 \
                 WHERE tenant_id = $1 AND id = $2 AND lease_token = $3 AND state = 'running'",
                vec![
                    self.tenant.as_str().into(),
                    id.into(),
                    token.into(),
                    checkpoint.into(),
                    progress.into(),
                    lease_until.into(),
                    now.into(),
                ],
            )
            .await?;
        if changed == 1 {
            self.mirror_lease(id, Some(lease_until)).await?;
        }
        Ok(changed == 1)
    }

    /// Adds finished files to a job's outputs: `(file name, output JSON)`, the first at position
    /// `first` of the manifest. Call it only in the transaction in which
    /// [`Tx::checkpoint_export_job`] or [`Tx::finish_export_job`] returned true: that write is
    /// what makes these files the job's (a worker that lost its lease adds nothing).
    pub async fn add_export_outputs(
        &self,
        id: &str,
        first: i64,
        outputs: &[(String, String)],
    ) -> Result<(), StoreError> {
        for (i, (file, output)) in outputs.iter().enumerate() {
            let seq = first.saturating_add(i64::try_from(i).unwrap_or(i64::MAX));
            self.exec(
                "INSERT INTO export_outputs (tenant_id, job_id, seq, file, output) VALUES ($1, $2, $3, $4, $5)",
                vec![self.tenant.as_str().into(), id.into(), seq.into(), file.as_str().into(), output.as_str().into()],
            )
            .await?;
        }
        Ok(())
    }

    /// The outputs of a job (JSON each), in manifest order.
    pub async fn export_outputs(&self, id: &str) -> Result<Vec<String>, StoreError> {
        let rows = self
            .query(
                "SELECT output FROM export_outputs WHERE tenant_id = $1 AND job_id = $2 ORDER BY seq",
                vec![self.tenant.as_str().into(), id.into()],
            )
            .await?;
        rows.iter().map(|r| r.try_get::<String>("", "output").map_err(StoreError::from)).collect()
    }

    /// The output of a job named `file` (JSON), if the job has one.
    pub async fn export_output(&self, id: &str, file: &str) -> Result<Option<String>, StoreError> {
        let rows = self
            .query(
                "SELECT output FROM export_outputs WHERE tenant_id = $1 AND job_id = $2 AND file = $3",
                vec![self.tenant.as_str().into(), id.into(), file.into()],
            )
            .await?;
        rows.first().map(|r| r.try_get::<String>("", "output").map_err(StoreError::from)).transpose()
    }

    /// Gives a held job back without finishing it (a worker shutting down): the next claim may
    /// take it at once and resumes from its checkpoint. False when the lease was already lost.
    pub async fn release_export_job(&self, id: &str, token: &str, now: i64) -> Result<bool, StoreError> {
        let changed = self
            .exec(
                "UPDATE export_jobs SET lease_owner = NULL, lease_token = NULL, lease_until = NULL, updated_at = $4 \
                 WHERE tenant_id = $1 AND id = $2 AND lease_token = $3 AND state = 'running'",
                vec![self.tenant.as_str().into(), id.into(), token.into(), now.into()],
            )
            .await?;
        if changed == 1 {
            self.mirror_lease(id, None).await?;
        }
        Ok(changed == 1)
    }

    /// Completes or fails a held job. False when the lease was lost or the job was cancelled
    /// meanwhile (then nothing changes).
    pub async fn finish_export_job(
        &self,
        id: &str,
        token: &str,
        end: ExportEnd<'_>,
        now: i64,
    ) -> Result<bool, StoreError> {
        let (state, error) = match end {
            ExportEnd::Completed => (ExportState::Completed, None),
            ExportEnd::Failed { error } => (ExportState::Failed, Some(error)),
        };
        let changed = self
            .exec(
                "UPDATE export_jobs SET state = $4, error = $5, lease_owner = NULL, lease_token = NULL, \
                 lease_until = NULL, updated_at = $6, finished_at = $6 \
                 WHERE tenant_id = $1 AND id = $2 AND lease_token = $3 AND state = 'running'",
                vec![
                    self.tenant.as_str().into(),
                    id.into(),
                    token.into(),
                    state.as_str().into(),
                    error.map(str::to_owned).into(),
                    now.into(),
                ],
            )
            .await?;
        if changed == 1 {
            self.mark_export_finished(id, now).await?;
        }
        Ok(changed == 1)
    }

    /// Cancels a job in any state but cancelled (a completed one is thereby deleted for its
    /// requester): its lease ends, so its worker stops at its next checkpoint. False when there
    /// is no such job or it was cancelled already.
    pub async fn cancel_export_job(&self, id: &str, now: i64) -> Result<bool, StoreError> {
        let changed = self
            .exec(
                "UPDATE export_jobs SET state = 'cancelled', lease_owner = NULL, lease_token = NULL, \
                 lease_until = NULL, updated_at = $3, finished_at = $3 \
                 WHERE tenant_id = $1 AND id = $2 AND state <> 'cancelled'",
                vec![self.tenant.as_str().into(), id.into(), now.into()],
            )
            .await?;
        if changed == 1 {
            self.mark_export_finished(id, now).await?;
        }
        Ok(changed == 1)
    }

    /// The queue's copy of a job's lease (see the module docs, "Fairness").
    async fn mirror_lease(&self, id: &str, lease_until: Option<i64>) -> Result<(), StoreError> {
        self.exec(
            "UPDATE export_queue SET lease_until = $3 WHERE tenant_id = $1 AND job_id = $2",
            vec![self.tenant.as_str().into(), id.into(), lease_until.into()],
        )
        .await?;
        Ok(())
    }

    async fn mark_export_finished(&self, id: &str, now: i64) -> Result<(), StoreError> {
        self.exec(
            "UPDATE export_queue SET active = 0, lease_until = NULL, finished_at = $3 WHERE tenant_id = $1 AND job_id = $2",
            vec![self.tenant.as_str().into(), id.into(), now.into()],
        )
        .await?;
        Ok(())
    }

    /// Ids of the tenant's jobs that finished (completed, failed, cancelled) at or before `cutoff`:
    /// the retention sweep's list.
    pub async fn export_jobs_finished_before(&self, cutoff: i64, limit: u64) -> Result<Vec<String>, StoreError> {
        let rows = self
            .query(
                &format!(
                    "SELECT id FROM export_jobs WHERE tenant_id = $1 AND finished_at IS NOT NULL AND finished_at <= $2 \
                     ORDER BY finished_at, id LIMIT {}",
                    limit.clamp(1, 10_000)
                ),
                vec![self.tenant.as_str().into(), cutoff.into()],
            )
            .await?;
        rows.iter().map(|r| r.try_get::<String>("", "id").map_err(StoreError::from)).collect()
    }

    /// Deletes a job, its outputs and its queue entry (its files are the caller's); false when
    /// there was none.
    pub async fn delete_export_job(&self, id: &str) -> Result<bool, StoreError> {
        let deleted = self
            .exec(
                "DELETE FROM export_jobs WHERE tenant_id = $1 AND id = $2",
                vec![self.tenant.as_str().into(), id.into()],
            )
            .await?;
        for table in ["export_outputs", "export_queue"] {
            self.exec(
                &format!("DELETE FROM {table} WHERE tenant_id = $1 AND job_id = $2"),
                vec![self.tenant.as_str().into(), id.into()],
            )
            .await?;
        }
        Ok(deleted == 1)
    }
}

impl SysTx {
    /// Tenants with a job a worker may claim at `now` (queued, or running with its lease run
    /// out), those running the fewest jobs under a live lease first, then the tenant of the
    /// oldest claimable job. A tenant's backlog thus never keeps the workers from another
    /// tenant's job (see the module docs, "Fairness").
    pub async fn export_tenants(&self, now: i64) -> Result<Vec<TenantId>, StoreError> {
        let rows = self
            .query(
                "SELECT tenant_id, \
                 SUM(CASE WHEN lease_until > $1 THEN 1 ELSE 0 END) AS busy, \
                 MIN(CASE WHEN lease_until IS NULL OR lease_until <= $1 THEN created_at END) AS oldest \
                 FROM export_queue WHERE active = 1 GROUP BY tenant_id \
                 HAVING MIN(CASE WHEN lease_until IS NULL OR lease_until <= $1 THEN created_at END) IS NOT NULL \
                 ORDER BY busy, oldest, tenant_id",
                vec![Value::from(now)],
            )
            .await?;
        rows.iter().map(|r| parse_tenant(&r.try_get::<String>("", "tenant_id")?)).collect()
    }

    /// Tenants with jobs that finished at or before `cutoff` (due for the retention sweep).
    pub async fn export_tenants_with_expired(&self, cutoff: i64) -> Result<Vec<TenantId>, StoreError> {
        let rows = self
            .query(
                "SELECT DISTINCT tenant_id FROM export_queue WHERE active = 0 AND finished_at <= $1 ORDER BY tenant_id",
                vec![Value::from(cutoff)],
            )
            .await?;
        rows.iter().map(|r| parse_tenant(&r.try_get::<String>("", "tenant_id")?)).collect()
    }
}

/// Tables of m0005: the jobs and their outputs are tenant data (row-level security); the queue
/// holds ids and times only and is read across tenants (grant only, like `lab_endpoints`).
pub(crate) const EXPORT_TENANT_TABLES: &[&str] = &["export_jobs", "export_outputs"];
pub(crate) const EXPORT_SYSTEM_TABLES: &[&str] = &["export_queue"];

pub(crate) const EXPORT_SCHEMA: &str = r#"
CREATE TABLE export_jobs (
    tenant_id        TEXT    NOT NULL,
    id               TEXT    NOT NULL,
    requester        TEXT    NOT NULL,
    request_url      TEXT    NOT NULL,
    kind             TEXT    NOT NULL,
    group_id         TEXT,
    types            TEXT    NOT NULL,
    since            BIGINT,
    type_filters     TEXT    NOT NULL,
    output_format    TEXT    NOT NULL,
    params           TEXT    NOT NULL,
    state            TEXT    NOT NULL,
    transaction_time BIGINT  NOT NULL,
    progress         TEXT,
    lease_owner      TEXT,
    lease_token      TEXT,
    lease_until      BIGINT,
    attempts         INTEGER NOT NULL,
    checkpoint       TEXT,
    error            TEXT,
    created_at       BIGINT  NOT NULL,
    updated_at       BIGINT  NOT NULL,
    finished_at      BIGINT,
    PRIMARY KEY (tenant_id, id)
);
CREATE INDEX export_jobs_due ON export_jobs (tenant_id, state, created_at);
CREATE INDEX export_jobs_finished ON export_jobs (tenant_id, finished_at);
CREATE INDEX export_jobs_requester ON export_jobs (tenant_id, requester, state);

CREATE TABLE export_outputs (
    tenant_id TEXT   NOT NULL,
    job_id    TEXT   NOT NULL,
    seq       BIGINT NOT NULL,
    file      TEXT   NOT NULL,
    output    TEXT   NOT NULL,
    PRIMARY KEY (tenant_id, job_id, seq)
);
CREATE UNIQUE INDEX export_outputs_file ON export_outputs (tenant_id, job_id, file);

CREATE TABLE export_queue (
    job_id      TEXT    NOT NULL PRIMARY KEY,
    tenant_id   TEXT    NOT NULL,
    active      INTEGER NOT NULL,
    lease_until BIGINT,
    created_at  BIGINT  NOT NULL,
    finished_at BIGINT
);
CREATE INDEX export_queue_active ON export_queue (active, tenant_id);
CREATE INDEX export_queue_finished ON export_queue (finished_at)
"#;
