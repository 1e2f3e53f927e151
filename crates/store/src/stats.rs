//! Figures for the metrics (`ehr-telemetry`): the connection pools, the depth of the HL7 v2
//! outbound queue and the export jobs by state. (The outbox lag is `Store::outbox_lag`.)
//!
//! The queue and the jobs are tenant tables under row-level security. Their figures are one
//! aggregate statement across tenants (a scrape must not cost a transaction per tenant): on
//! PostgreSQL in a transaction switched to the role [`METRICS_ROLE`], which m0008 lets read —
//! across tenants — only the columns counted by (`hl7_messages`: direction, status, creation
//! time; `export_jobs`: state); on SQLite, which has no row-level security, as it is. Only
//! counts and times leave here — no ids, subjects or payloads.
use crate::error::StoreError;
use crate::export::ExportState;
use crate::migration::METRICS_ROLE;
use crate::repo::Store;
use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, QueryResult, Statement};

/// The connections of one pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolStats {
    /// `writer` and `reader` on SQLite (one writer connection, a pool of readers); `main` on
    /// PostgreSQL (one pool for both).
    pub pool: &'static str,
    /// Open connections lent out.
    pub in_use: u32,
    /// Open connections waiting in the pool.
    pub idle: u32,
    /// The most the pool opens.
    pub max: u32,
}

/// Outbound HL7 v2 messages in one state, across tenants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hl7QueueDepth {
    /// `pending` (waiting for a delivery or a retry), `dead` (attempts exhausted or not
    /// sendable) or `rejected` (refused by the lab).
    pub state: &'static str,
    pub messages: u64,
    /// When the oldest was queued, epoch milliseconds.
    pub oldest_created_at: Option<i64>,
}

/// The states of the outbound queue that need a sender or an operator (acknowledged and
/// cancelled messages are history).
const QUEUE_STATES: [&str; 3] = ["pending", "dead", "rejected"];

const EXPORT_STATES: [ExportState; 5] =
    [ExportState::Queued, ExportState::Running, ExportState::Completed, ExportState::Failed, ExportState::Cancelled];

impl Store {
    /// The connection pools' sizes, read from the pools without a query.
    pub fn pool_stats(&self) -> Vec<PoolStats> {
        let (writer, reader) = self.connections();
        match self.backend() {
            DbBackend::Postgres => vec![pool_stats("main", DbBackend::Postgres, writer)],
            backend => vec![pool_stats("writer", backend, writer), pool_stats("reader", backend, reader)],
        }
    }

    /// The outbound HL7 v2 queue of every tenant, by state (each state listed, 0 when empty).
    pub async fn hl7_queue_depth(&self) -> Result<Vec<Hl7QueueDepth>, StoreError> {
        let mut depth: Vec<Hl7QueueDepth> =
            QUEUE_STATES.iter().map(|s| Hl7QueueDepth { state: s, messages: 0, oldest_created_at: None }).collect();
        let rows = self
            .metrics_query(
                "SELECT status, COUNT(*) AS n, MIN(created_at) AS oldest FROM hl7_messages \
                 WHERE direction = 'out' AND status IN ('pending', 'dead', 'rejected') GROUP BY status",
            )
            .await?;
        for row in rows {
            let status: String = row.try_get("", "status")?;
            let Some(d) = depth.iter_mut().find(|d| d.state == status) else { continue };
            d.messages = count(row.try_get("", "n")?);
            d.oldest_created_at = row.try_get("", "oldest")?;
        }
        Ok(depth)
    }

    /// The export jobs of every tenant, by state (each state listed, 0 when none). Finished
    /// jobs count until the retention sweep deletes them.
    pub async fn export_job_counts(&self) -> Result<Vec<(ExportState, u64)>, StoreError> {
        let mut counts: Vec<(ExportState, u64)> = EXPORT_STATES.iter().map(|s| (*s, 0)).collect();
        let rows = self.metrics_query("SELECT state, COUNT(*) AS n FROM export_jobs GROUP BY state").await?;
        for row in rows {
            let state: String = row.try_get("", "state")?;
            if let Some(c) = counts.iter_mut().find(|(s, _)| s.as_str() == state) {
                c.1 = count(row.try_get("", "n")?);
            }
        }
        Ok(counts)
    }

    /// One aggregate statement across tenants: a read transaction without a tenant, on
    /// PostgreSQL as [`METRICS_ROLE`] (module docs). A login role that is not a member fails
    /// loudly rather than counting nothing.
    async fn metrics_query(&self, sql: &str) -> Result<Vec<QueryResult>, StoreError> {
        let txn = self.begin_raw(false, "").await?;
        if self.backend() == DbBackend::Postgres {
            txn.execute_unprepared(&format!("SELECT set_config('role', '{METRICS_ROLE}', true)")).await?;
        }
        let rows = txn.query_all_raw(Statement::from_string(self.backend(), sql)).await?;
        txn.commit().await?;
        Ok(rows)
    }
}

fn pool_stats(pool: &'static str, backend: DbBackend, conn: &DatabaseConnection) -> PoolStats {
    // sea-orm hands out the sqlx pool of the backend it connected (`Store::connect` chose it
    // from the URL, so the accessor matches).
    let (size, idle, max) = match backend {
        DbBackend::Postgres => {
            let p = conn.get_postgres_connection_pool();
            (p.size(), p.num_idle(), p.options().get_max_connections())
        }
        _ => {
            let p = conn.get_sqlite_connection_pool();
            (p.size(), p.num_idle(), p.options().get_max_connections())
        }
    };
    let idle = u32::try_from(idle).unwrap_or(u32::MAX).min(size);
    PoolStats { pool, in_use: size - idle, idle, max }
}

fn count(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}
