//! The national-service adapters' submission log: what the clins-adapter and the
//! eprescription-adapter send to the national services (電子カルテ情報共有サービス,
//! 電子処方箋管理サービス), its state, and what came back.
//!
//! A submission is a row of `national_submissions`, a tenant table under row-level security (its
//! payload is patient data). It is also the outbound queue, like the HL7 message log: a
//! submission in state `queued` has a due time; a worker claims due rows by pushing their due
//! time past a lease, sends, and records the answer only while it still holds the claim
//! ([`Tx::record_submission_attempt`] is conditional on the due time its claim set). A worker that
//! dies leaves the row due again when the lease ends, so a submission is sent at least once; the
//! national services see the same `request_id` on every attempt, and a simulator (or the real
//! service) that has seen it answers with its first answer — nothing is registered twice.
//!
//! Workers serve every tenant: `national_queue`, a system table of ids and due times only, tells
//! them which tenants have due work ([`SysTx::national_tenants`]). Every statement here that
//! changes a submission's state or due time rewrites its queue entry from the submission row
//! itself, in the same transaction, so the two never disagree: an entry exists exactly while the
//! submission is `queued`, with its service and due time.
//!
//! Two rules keep the queue sound, checked here rather than trusted to the callers: a `queued`
//! submission always has a due time (a queued row without one would stay listed as due and never
//! be claimable), and nothing but a claim's answer ([`Tx::record_submission_attempt`]) or a
//! withdrawal conditional on the due time read ([`Tx::withdraw_submission`]) moves a submission
//! out of `queued` — [`Tx::change_submission`] refuses `queued` as a source state, since a worker
//! may hold the row and its request be on the wire.
//!
//! Times are epoch milliseconds chosen by the caller; nothing here reads the clock.

use crate::error::StoreError;
use crate::identity::{SysTx, parse_tenant};
use crate::repo::Tx;
use ehr_core::TenantId;
use sea_orm::{QueryResult, Value};

/// One submission to a national service.
#[derive(Debug, Clone, PartialEq)]
pub struct Submission {
    pub id: String,
    /// `clins` or `eprescription`.
    pub service: String,
    /// What is submitted, per service (`condition`, `referral`, `prescription`, …).
    pub kind: String,
    /// What is asked of the service, per service (`register`, `cancel`, `check`, …).
    pub operation: String,
    /// The idempotency key the national service sees on every attempt; unique per tenant and
    /// service.
    pub request_id: String,
    /// The business key at the national service (CLINS bundle identifier, prescription id).
    pub business_key: String,
    /// The patient it is about (`Patient/123`).
    pub patient: Option<String>,
    /// Per service; the queue acts on `queued` only.
    pub state: String,
    pub attempts: i32,
    /// While queued: when it is due (a claim pushes it to the end of its lease).
    pub next_attempt_at: Option<i64>,
    pub last_error: Option<String>,
    /// What is (to be) sent.
    pub payload: String,
    /// The last answer as received.
    pub response: Option<String>,
    /// What the service made of the answer (result code, exchange number, findings, …).
    pub result: serde_json::Value,
    /// The user or client who asked for it.
    pub created_by: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
}

/// Filters of the submission listing.
#[derive(Debug, Default, Clone)]
pub struct SubmissionFilter<'a> {
    pub service: Option<&'a str>,
    pub kind: Option<&'a str>,
    pub state: Option<&'a str>,
    pub patient: Option<&'a str>,
    pub business_key: Option<&'a str>,
    /// At most this many (default 100, at most 1000), newest first.
    pub limit: u64,
}

const COLUMNS: &str = "id, service, kind, operation, request_id, business_key, patient, state, attempts, \
     next_attempt_at, last_error, payload, response, result, created_by, created_at, updated_at";

fn row_to_submission(row: &QueryResult) -> Result<Submission, StoreError> {
    let result: String = row.try_get("", "result")?;
    Ok(Submission {
        id: row.try_get("", "id")?,
        service: row.try_get("", "service")?,
        kind: row.try_get("", "kind")?,
        operation: row.try_get("", "operation")?,
        request_id: row.try_get("", "request_id")?,
        business_key: row.try_get("", "business_key")?,
        patient: row.try_get("", "patient")?,
        state: row.try_get("", "state")?,
        attempts: row.try_get("", "attempts")?,
        next_attempt_at: row.try_get("", "next_attempt_at")?,
        last_error: row.try_get("", "last_error")?,
        payload: row.try_get("", "payload")?,
        response: row.try_get("", "response")?,
        result: serde_json::from_str(&result).map_err(|_| StoreError::corrupt("national_submissions.result"))?,
        created_by: row.try_get("", "created_by")?,
        created_at: row.try_get("", "created_at")?,
        updated_at: row.try_get("", "updated_at")?,
    })
}

/// The one state the workers' queue acts on.
const QUEUED: &str = "queued";

/// A queued submission needs a due time: without one it would stay listed as due in
/// `national_queue` yet never match a claim.
fn due_when_queued(state: &str, due: Option<i64>) -> Result<(), StoreError> {
    if state == QUEUED && due.is_none() {
        return Err(StoreError::InvalidValue("a queued submission needs its due time (next_attempt_at)"));
    }
    Ok(())
}

fn result_text(result: &serde_json::Value) -> Result<String, StoreError> {
    serde_json::to_string(result).map_err(|_| StoreError::InvalidValue("submission result"))
}

impl Tx {
    /// Stores a submission; a queued one enters the workers' queue. `false` when the tenant
    /// already has a submission to this service with the same `request_id` (nothing changes).
    pub async fn insert_submission(&self, s: &Submission) -> Result<bool, StoreError> {
        due_when_queued(&s.state, s.next_attempt_at)?;
        let inserted = self
            .exec(
                &format!(
                    "INSERT INTO national_submissions (tenant_id, {COLUMNS}) VALUES \
                     ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18) \
                     ON CONFLICT (tenant_id, service, request_id) DO NOTHING"
                ),
                vec![
                    self.tenant.as_str().into(),
                    s.id.as_str().into(),
                    s.service.as_str().into(),
                    s.kind.as_str().into(),
                    s.operation.as_str().into(),
                    s.request_id.as_str().into(),
                    s.business_key.as_str().into(),
                    s.patient.clone().into(),
                    s.state.as_str().into(),
                    s.attempts.into(),
                    s.next_attempt_at.into(),
                    s.last_error.clone().into(),
                    s.payload.as_str().into(),
                    s.response.clone().into(),
                    result_text(&s.result)?.into(),
                    s.created_by.clone().into(),
                    s.created_at.into(),
                    s.updated_at.into(),
                ],
            )
            .await?;
        if inserted == 0 {
            return Ok(false);
        }
        self.sync_queue(&s.id).await?;
        Ok(true)
    }

    /// Rewrites the system-side queue entry of a submission from its row: present, with the
    /// row's service and due time, while it is queued; absent otherwise.
    async fn sync_queue(&self, id: &str) -> Result<(), StoreError> {
        self.exec(
            "DELETE FROM national_queue WHERE tenant_id = $1 AND submission_id = $2",
            vec![self.tenant.as_str().into(), id.into()],
        )
        .await?;
        self.exec(
            "INSERT INTO national_queue (tenant_id, submission_id, service, due_at) \
             SELECT tenant_id, id, service, next_attempt_at FROM national_submissions \
             WHERE tenant_id = $1 AND id = $2 AND state = 'queued'",
            vec![self.tenant.as_str().into(), id.into()],
        )
        .await?;
        Ok(())
    }

    /// One submission of the tenant.
    pub async fn submission(&self, id: &str) -> Result<Option<Submission>, StoreError> {
        let rows = self
            .query(
                &format!("SELECT {COLUMNS} FROM national_submissions WHERE tenant_id = $1 AND id = $2"),
                vec![self.tenant.as_str().into(), id.into()],
            )
            .await?;
        rows.first().map(row_to_submission).transpose()
    }

    /// The submission to `service` with this request id.
    pub async fn submission_by_request_id(
        &self,
        service: &str,
        request_id: &str,
    ) -> Result<Option<Submission>, StoreError> {
        let rows = self
            .query(
                &format!(
                    "SELECT {COLUMNS} FROM national_submissions WHERE tenant_id = $1 AND service = $2 \
                     AND request_id = $3"
                ),
                vec![self.tenant.as_str().into(), service.into(), request_id.into()],
            )
            .await?;
        rows.first().map(row_to_submission).transpose()
    }

    /// The tenant's submissions, newest first.
    pub async fn submissions(&self, f: &SubmissionFilter<'_>) -> Result<Vec<Submission>, StoreError> {
        let mut sql = format!("SELECT {COLUMNS} FROM national_submissions WHERE tenant_id = $1");
        let mut values: Vec<Value> = vec![self.tenant.as_str().into()];
        for (column, value) in [
            ("service", f.service),
            ("kind", f.kind),
            ("state", f.state),
            ("patient", f.patient),
            ("business_key", f.business_key),
        ] {
            if let Some(v) = value {
                values.push(v.into());
                sql.push_str(&format!(" AND {column} = ${}", values.len()));
            }
        }
        let limit = if f.limit == 0 { 100 } else { f.limit.min(1000) };
        sql.push_str(&format!(" ORDER BY created_at DESC, id LIMIT {limit}"));
        let rows = self.query(&sql, values).await?;
        rows.iter().map(row_to_submission).collect()
    }

    /// Claims up to `limit` queued submissions to `service` due at `now`: pushes their due time
    /// to `lease_until` and returns them (oldest due first). On PostgreSQL, rows another worker
    /// holds are skipped.
    pub async fn claim_due_submissions(
        &self,
        service: &str,
        now: i64,
        lease_until: i64,
        limit: u64,
    ) -> Result<Vec<Submission>, StoreError> {
        let lock = if self.backend == sea_orm::DbBackend::Postgres { " FOR UPDATE SKIP LOCKED" } else { "" };
        let rows = self
            .query(
                &format!(
                    "SELECT {COLUMNS} FROM national_submissions WHERE tenant_id = $1 AND service = $2 \
                     AND state = 'queued' AND next_attempt_at <= $3 ORDER BY next_attempt_at, created_at \
                     LIMIT {limit}{lock}"
                ),
                vec![self.tenant.as_str().into(), service.into(), now.into()],
            )
            .await?;
        let mut claimed = Vec::with_capacity(rows.len());
        for row in &rows {
            let mut s = row_to_submission(row)?;
            // Conditional on the due time read: PostgreSQL's row lock and SQLite's single writer
            // already make the read and the write one step; this keeps it so on any isolation.
            let taken = self
                .exec(
                    "UPDATE national_submissions SET next_attempt_at = $3 WHERE tenant_id = $1 AND id = $2 \
                     AND state = 'queued' AND next_attempt_at = $4",
                    vec![
                        self.tenant.as_str().into(),
                        s.id.as_str().into(),
                        lease_until.into(),
                        s.next_attempt_at.into(),
                    ],
                )
                .await?;
            if taken != 1 {
                continue;
            }
            self.exec(
                "UPDATE national_queue SET due_at = $3 WHERE tenant_id = $1 AND submission_id = $2",
                vec![self.tenant.as_str().into(), s.id.as_str().into(), lease_until.into()],
            )
            .await?;
            s.next_attempt_at = Some(lease_until);
            claimed.push(s);
        }
        Ok(claimed)
    }

    /// Records the outcome of an attempt — only while the submission is still queued and held by
    /// this claim (`claimed_until`, the lease its claim set): false when the claim ran out and
    /// another worker took it, or the submission was changed meanwhile. `state` `queued` with a
    /// `next_attempt_at` is a retry; any other state takes it out of the queue.
    #[allow(clippy::too_many_arguments)]
    pub async fn record_submission_attempt(
        &self,
        id: &str,
        claimed_until: i64,
        state: &str,
        next_attempt_at: Option<i64>,
        error: Option<&str>,
        response: Option<&str>,
        result: Option<&serde_json::Value>,
        now: i64,
    ) -> Result<bool, StoreError> {
        due_when_queued(state, next_attempt_at)?;
        let result = result.map(result_text).transpose()?;
        let changed = self
            .exec(
                "UPDATE national_submissions SET state = $3, attempts = attempts + 1, next_attempt_at = $4, \
                 last_error = $5, response = COALESCE($6, response), result = COALESCE($7, result), updated_at = $8 \
                 WHERE tenant_id = $1 AND id = $2 AND state = 'queued' AND next_attempt_at = $9",
                vec![
                    self.tenant.as_str().into(),
                    id.into(),
                    state.into(),
                    next_attempt_at.into(),
                    error.map(str::to_owned).into(),
                    response.map(str::to_owned).into(),
                    result.into(),
                    now.into(),
                    claimed_until.into(),
                ],
            )
            .await?;
        if changed != 1 {
            return Ok(false);
        }
        self.sync_queue(id).await?;
        Ok(true)
    }

    /// The tenant's last exchange with `service`: when the most recent attempt was recorded and
    /// its error (none when it succeeded) — the "last activity" of the connection inventory.
    pub async fn national_activity(&self, service: &str) -> Result<(Option<i64>, Option<String>), StoreError> {
        let rows = self
            .query(
                "SELECT updated_at, last_error FROM national_submissions WHERE tenant_id = $1 AND service = $2 \
                 AND attempts > 0 ORDER BY updated_at DESC LIMIT 1",
                vec![self.tenant.as_str().into(), service.into()],
            )
            .await?;
        match rows.first() {
            Some(row) => Ok((Some(row.try_get("", "updated_at")?), row.try_get("", "last_error")?)),
            None => Ok((None, None)),
        }
    }

    /// Takes a queued submission out of the queue without an attempt (withdrawn or cancelled
    /// before it was sent) — only while no worker holds it: its due time must still be `due`,
    /// the one the caller read. False when a worker claimed it meanwhile (it may be on the wire)
    /// or it left the queue.
    pub async fn withdraw_submission(
        &self,
        id: &str,
        due: i64,
        state: &str,
        result: Option<&serde_json::Value>,
        now: i64,
    ) -> Result<bool, StoreError> {
        if state == QUEUED {
            return Err(StoreError::InvalidValue("a withdrawn submission leaves the queue"));
        }
        let result = result.map(result_text).transpose()?;
        let changed = self
            .exec(
                "UPDATE national_submissions SET state = $3, next_attempt_at = NULL, result = COALESCE($4, result), \
                 updated_at = $5 WHERE tenant_id = $1 AND id = $2 AND state = 'queued' AND next_attempt_at = $6",
                vec![self.tenant.as_str().into(), id.into(), state.into(), result.into(), now.into(), due.into()],
            )
            .await?;
        if changed != 1 {
            return Ok(false);
        }
        self.sync_queue(id).await?;
        Ok(true)
    }

    /// Moves a submission to `state` only from one of `from` (in one statement, so a worker
    /// recording an answer at the same moment is either before — and this changes nothing — or
    /// after). Optionally replaces its payload and result; `next_attempt_at` is set as given
    /// (the due time, required when moving to `queued`). False when it was in none of `from`.
    ///
    /// `from` may not name `queued`: a worker may hold a queued submission, its request on the
    /// wire, and an answer it could no longer record would be lost — a queued submission leaves
    /// the queue through its claim's answer or [`withdraw_submission`](Self::withdraw_submission).
    #[allow(clippy::too_many_arguments)]
    pub async fn change_submission(
        &self,
        id: &str,
        from: &[&str],
        state: &str,
        payload: Option<&str>,
        result: Option<&serde_json::Value>,
        next_attempt_at: Option<i64>,
        now: i64,
    ) -> Result<bool, StoreError> {
        if from.is_empty() || from.contains(&QUEUED) {
            return Err(StoreError::InvalidValue("the states a submission is changed from"));
        }
        due_when_queued(state, next_attempt_at)?;
        let result = result.map(result_text).transpose()?;
        let mut values: Vec<Value> = vec![
            self.tenant.as_str().into(),
            id.into(),
            state.into(),
            payload.map(str::to_owned).into(),
            result.into(),
            next_attempt_at.into(),
            now.into(),
        ];
        let mut placeholders = Vec::new();
        for f in from {
            values.push((*f).into());
            placeholders.push(format!("${}", values.len()));
        }
        let changed = self
            .exec(
                &format!(
                    "UPDATE national_submissions SET state = $3, payload = COALESCE($4, payload), \
                     result = COALESCE($5, result), next_attempt_at = $6, updated_at = $7 \
                     WHERE tenant_id = $1 AND id = $2 AND state IN ({})",
                    placeholders.join(", ")
                ),
                values,
            )
            .await?;
        if changed != 1 {
            return Ok(false);
        }
        self.sync_queue(id).await?;
        Ok(true)
    }
}

impl SysTx {
    /// Tenants with a queued submission to `service` due at `now`, the longest-waiting first.
    pub async fn national_tenants(&self, service: &str, now: i64) -> Result<Vec<TenantId>, StoreError> {
        let rows = self
            .query(
                "SELECT tenant_id, MIN(due_at) AS due FROM national_queue WHERE service = $1 AND due_at <= $2 \
                 GROUP BY tenant_id ORDER BY due, tenant_id",
                vec![Value::from(service), Value::from(now)],
            )
            .await?;
        rows.iter().map(|r| parse_tenant(&r.try_get::<String>("", "tenant_id")?)).collect()
    }
}

/// Tables of m0006: the submissions are tenant data (row-level security); the queue holds ids
/// and due times only and is read across tenants (grant only, like `export_queue`).
pub(crate) const NATIONAL_TENANT_TABLES: &[&str] = &["national_submissions"];
pub(crate) const NATIONAL_SYSTEM_TABLES: &[&str] = &["national_queue"];

pub(crate) const NATIONAL_SCHEMA: &str = r#"
CREATE TABLE national_submissions (
    tenant_id       TEXT    NOT NULL,
    id              TEXT    NOT NULL,
    service         TEXT    NOT NULL,
    kind            TEXT    NOT NULL,
    operation       TEXT    NOT NULL,
    request_id      TEXT    NOT NULL,
    business_key    TEXT    NOT NULL,
    patient         TEXT,
    state           TEXT    NOT NULL,
    attempts        INTEGER NOT NULL,
    next_attempt_at BIGINT,
    last_error      TEXT,
    payload         TEXT    NOT NULL,
    response        TEXT,
    result          TEXT    NOT NULL,
    created_by      TEXT,
    created_at      BIGINT  NOT NULL,
    updated_at      BIGINT  NOT NULL,
    PRIMARY KEY (tenant_id, id)
);
CREATE UNIQUE INDEX national_submissions_request ON national_submissions (tenant_id, service, request_id);
CREATE INDEX national_submissions_due ON national_submissions (tenant_id, service, state, next_attempt_at);
CREATE INDEX national_submissions_patient ON national_submissions (tenant_id, patient);
CREATE INDEX national_submissions_key ON national_submissions (tenant_id, service, business_key);
CREATE INDEX national_submissions_created ON national_submissions (tenant_id, created_at);

CREATE TABLE national_queue (
    tenant_id     TEXT   NOT NULL,
    submission_id TEXT   NOT NULL,
    service       TEXT   NOT NULL,
    due_at        BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, submission_id)
);
CREATE INDEX national_queue_due ON national_queue (service, due_at)
"#;
