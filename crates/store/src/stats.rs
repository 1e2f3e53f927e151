//! Figures for the metrics (`ehr-telemetry`): the connection pools, the depth of the HL7 v2
//! outbound queue and the export jobs by state. (The outbox lag is `Store::outbox_lag`.)
//!
//! The queue and the jobs are tenant tables under row-level security. Their figures are
//! gathered the way the workers find their work across tenants: a system table names the
//! tenants (`lab_endpoints` for the lab sender, `export_queue` for the export workers), then one
//! read transaction per tenant counts that tenant's rows. Only counts and times leave here —
//! no ids, subjects or payloads.

use crate::error::StoreError;
use crate::export::ExportState;
use crate::identity::parse_tenant;
use crate::repo::Store;
use ehr_core::{TenantContext, TenantId};
use sea_orm::{DatabaseConnection, DbBackend};

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

/// The actor of the transactions that gather figures.
const ACTOR: &str = "metrics";

impl Store {
    /// The connection pools' sizes, read from the pools without a query.
    pub fn pool_stats(&self) -> Vec<PoolStats> {
        let (writer, reader) = self.connections();
        match self.backend() {
            DbBackend::Postgres => vec![pool_stats("main", DbBackend::Postgres, writer)],
            backend => vec![pool_stats("writer", backend, writer), pool_stats("reader", backend, reader)],
        }
    }

    /// The outbound HL7 v2 queue of every tenant with a lab endpoint, by state (each state
    /// listed, 0 when empty).
    pub async fn hl7_queue_depth(&self) -> Result<Vec<Hl7QueueDepth>, StoreError> {
        let mut depth: Vec<Hl7QueueDepth> =
            QUEUE_STATES.iter().map(|s| Hl7QueueDepth { state: s, messages: 0, oldest_created_at: None }).collect();
        for tenant in self.tenants_of("SELECT DISTINCT tenant_id FROM lab_endpoints").await? {
            let tx = self.read(&TenantContext::new(tenant, ACTOR)).await?;
            let rows = tx
                .query(
                    "SELECT status, COUNT(*) AS n, MIN(created_at) AS oldest FROM hl7_messages \
                     WHERE tenant_id = $1 AND direction = 'out' AND status IN ('pending', 'dead', 'rejected') \
                     GROUP BY status",
                    vec![tx.tenant.as_str().into()],
                )
                .await?;
            tx.commit().await?;
            for row in rows {
                let status: String = row.try_get("", "status")?;
                let Some(d) = depth.iter_mut().find(|d| d.state == status) else { continue };
                d.messages += count(row.try_get("", "n")?);
                let oldest: Option<i64> = row.try_get("", "oldest")?;
                d.oldest_created_at = match (d.oldest_created_at, oldest) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
            }
        }
        Ok(depth)
    }

    /// The export jobs of every tenant, by state (each state listed, 0 when none). Finished
    /// jobs count until the retention sweep deletes them.
    pub async fn export_job_counts(&self) -> Result<Vec<(ExportState, u64)>, StoreError> {
        let mut counts: Vec<(ExportState, u64)> = EXPORT_STATES.iter().map(|s| (*s, 0)).collect();
        for tenant in self.tenants_of("SELECT DISTINCT tenant_id FROM export_queue").await? {
            let tx = self.read(&TenantContext::new(tenant, ACTOR)).await?;
            let rows = tx
                .query(
                    "SELECT state, COUNT(*) AS n FROM export_jobs WHERE tenant_id = $1 GROUP BY state",
                    vec![tx.tenant.as_str().into()],
                )
                .await?;
            tx.commit().await?;
            for row in rows {
                let state: String = row.try_get("", "state")?;
                if let Some(c) = counts.iter_mut().find(|(s, _)| s.as_str() == state) {
                    c.1 += count(row.try_get("", "n")?);
                }
            }
        }
        Ok(counts)
    }

    /// The tenants a system-table query (`SELECT DISTINCT tenant_id …`) names.
    async fn tenants_of(&self, sql: &str) -> Result<Vec<TenantId>, StoreError> {
        let sys = self.system_read().await?;
        let rows = sys.query(sql, Vec::new()).await?;
        sys.commit().await?;
        rows.iter().map(|r| parse_tenant(&r.try_get::<String>("", "tenant_id")?)).collect()
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
