//! Per-tenant backup and restore at the row level: everything of one tenant read in one
//! snapshot, page by page ([`Snapshot`]), and written back verbatim in one transaction
//! ([`Restore`]). The archive around these rows (encryption, checksums, the record stream) is
//! `ehr-backup`'s; this module is only the SQL.
//!
//! Rows travel as stored — resource JSON byte for byte, `version_id`, `last_updated`, history
//! methods, password hashes, sealed TOTP secrets, the audit chain's hashes — so that a restored
//! tenant reads, exports and verifies exactly as the original. The search-index rows are not
//! copied: a restore derives them from the resource content with the extraction every write
//! uses.
//!
//! Sections of a dump: the tenant's registry row, its OAuth clients, its lab endpoints (system
//! tables, read here with the tenant's filter), users, recovery codes, resources (current
//! versions, except the AuditEvents the chain covers), history, the audit chain with each link's
//! AuditEvent, and the chain's head. The AuditEvents travel with their links so that a reader
//! can check the chain in one pass ([`ChainCheck`], the rules of [`Tx::verify_audit_chain`]).

use crate::audit::{AuditProblem, AuditVerification, GENESIS, link_hash};
use crate::error::StoreError;
use crate::repo::{Store, Tx};
use crate::sql::Sql;
use ehr_core::TenantContext;
use ehr_fhir::search::{IndexEntry, extract};
use sea_orm::{DbBackend, QueryResult};
use serde::{Deserialize, Serialize};
use serde_json::Value as Json;
use std::fmt;

/// The tenant's registry row (`tenants`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantRow {
    pub id: String,
    pub name: String,
    pub active: bool,
    pub created_at: i64,
}

/// An OAuth client of the tenant (`oauth_clients`); JSON columns as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientRow {
    pub client_id: String,
    pub name: String,
    pub kind: String,
    pub redirect_uris: String,
    pub jwks: Option<String>,
    pub scope: String,
    pub active: bool,
    pub created_at: i64,
}

/// A lab endpoint of the tenant (`lab_endpoints`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LabEndpointRow {
    pub id: String,
    pub name: String,
    pub lab_facility: String,
    pub lab_application: String,
    pub our_facility: String,
    pub our_application: String,
    pub transport: String,
    pub address: String,
    pub charset: String,
    pub organization: Option<String>,
    pub is_default: bool,
    pub max_attempts: i32,
    pub allowed_peers: String,
    pub active: bool,
    pub created_at: i64,
    pub updated_at: i64,
    pub last_outbound_at: Option<i64>,
    pub last_inbound_at: Option<i64>,
    pub last_error: Option<String>,
}

/// A user of the tenant (`users`): the password as its argon2 hash, the TOTP secret sealed as
/// stored (it opens only under the same `gateway.secret_key`).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserRow {
    pub id: String,
    pub username: String,
    pub display_name: String,
    pub password_hash: String,
    pub roles: String,
    pub active: bool,
    pub created_at: i64,
    pub updated_at: i64,
    pub last_login_at: Option<i64>,
    pub mfa_secret: Option<String>,
    pub mfa_confirmed: bool,
    pub mfa_last_step: Option<i64>,
    pub fhir_user: Option<String>,
}

impl fmt::Debug for UserRow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UserRow")
            .field("id", &self.id)
            .field("username", &self.username)
            .field("password_hash", &"<redacted>")
            .field("mfa_secret", &self.mfa_secret.as_ref().map(|_| "<redacted>"))
            .finish_non_exhaustive()
    }
}

/// A recovery code of a user (`recovery_codes`), hashed.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecoveryCodeRow {
    pub user_id: String,
    pub code_hash: String,
    pub used_at: Option<i64>,
}

impl fmt::Debug for RecoveryCodeRow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RecoveryCodeRow").field("user_id", &self.user_id).field("used_at", &self.used_at).finish()
    }
}

/// The current version of a resource (`resources`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResourceRow {
    #[serde(rename = "type")]
    pub resource_type: String,
    pub id: String,
    pub version: i64,
    pub last_updated: i64,
    pub deleted: bool,
    /// The JSON text as stored; empty when deleted.
    pub content: String,
}

/// One version of a resource (`resource_history`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HistoryRow {
    #[serde(rename = "type")]
    pub resource_type: String,
    pub id: String,
    pub version: i64,
    pub last_updated: i64,
    /// `POST`, `PUT`, `PATCH` or `DELETE`.
    pub method: String,
    pub deleted: bool,
    pub content: String,
}

/// The AuditEvent a link of the chain names, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditEventRow {
    pub version: i64,
    pub last_updated: i64,
    pub deleted: bool,
    pub content: String,
}

/// One link of the audit chain (`audit_chain`) with its AuditEvent, `None` when that is missing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditLinkRow {
    pub seq: i64,
    pub resource_id: String,
    pub hash: String,
    pub event: Option<AuditEventRow>,
}

/// The head of the audit chain (`audit_head`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditHeadRow {
    pub seq: i64,
    pub hash: String,
}

/// The number of rows of each section of a dump, read in the dump's snapshot.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackupCounts {
    /// 1 when the tenant is registered, else 0.
    pub tenant: u64,
    pub clients: u64,
    pub lab_endpoints: u64,
    pub users: u64,
    pub recovery_codes: u64,
    /// Current versions, without the AuditEvents the chain covers (those travel with their links).
    pub resources: u64,
    pub history: u64,
    pub audit_links: u64,
    /// Links whose AuditEvent exists.
    pub audit_events: u64,
    /// 1 when the chain has a head, else 0.
    pub audit_head: u64,
}

impl BackupCounts {
    /// True when the tenant has no row at all.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// Where a restore would overwrite or collide with what the target database already holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Occupancy {
    /// Rows of the tenant in the tables a restore writes (resources counted whole).
    pub tenant_rows: BackupCounts,
    /// Rows of the tenant in tables a restore does not write (outbox, receipts, HL7 message
    /// log, export jobs, national submissions): the tenant was in use here.
    pub other_rows: u64,
    /// Client ids of the archive that exist already (of any tenant: client ids are global).
    pub taken_clients: Vec<String>,
    /// Lab endpoints of the archive whose id or (lab facility, our facility) exists already.
    pub taken_lab_endpoints: Vec<String>,
}

impl Occupancy {
    /// True when a restore collides with nothing.
    pub fn is_free(&self) -> bool {
        self.tenant_rows.is_empty()
            && self.other_rows == 0
            && self.taken_clients.is_empty()
            && self.taken_lab_endpoints.is_empty()
    }
}

/// The condition that leaves out the AuditEvents a chain link covers (they travel with it).
const NOT_CHAINED: &str = "NOT (r.resource_type = 'AuditEvent' AND EXISTS (SELECT 1 FROM audit_chain c \
                           WHERE c.tenant_id = $1 AND c.resource_id = r.id))";

const CLIENT_COLUMNS: &str = "client_id, name, kind, redirect_uris, jwks, scope, active, created_at";
const ENDPOINT_COLUMNS: &str = "id, name, lab_facility, lab_application, our_facility, our_application, transport, \
     address, charset, organization, is_default, max_attempts, allowed_peers, active, created_at, updated_at, \
     last_outbound_at, last_inbound_at, last_error";
const USER_COLUMNS: &str = "id, username, display_name, password_hash, roles, active, created_at, updated_at, \
                            last_login_at, mfa_secret, mfa_confirmed, mfa_last_step, fhir_user";

/// A read-only view of one tenant at one instant: every read of a dump sees the same snapshot
/// (PostgreSQL REPEATABLE READ; SQLite's read transaction), so counts, resources, history and
/// the audit chain agree with each other whatever is written meanwhile.
pub struct Snapshot {
    tx: Tx,
}

/// One transaction that writes a tenant's rows back. Dropping it without [`Restore::commit`]
/// rolls everything back.
pub struct Restore {
    tx: Tx,
}

/// The schema level of this build: the number of migrations it knows. An archive records the
/// level it was written at; one of a higher level (a newer `ehr`, rows this one does not know)
/// is refused.
pub fn schema_level() -> u32 {
    u32::try_from(<crate::migration::Migrator as sea_orm_migration::MigratorTrait>::migrations().len())
        .unwrap_or(u32::MAX)
}

/// Lifts the statement timeout (`database.statement_timeout_ms`, meant for requests) for the
/// rest of a backup's or restore's transaction: one page of a large tenant, or the chain
/// verification, may take longer, and the operator runs them on purpose.
async fn no_statement_timeout(tx: &Tx) -> Result<(), StoreError> {
    if tx.backend == DbBackend::Postgres {
        tx.query("SELECT set_config('statement_timeout', '0', true)", vec![]).await?;
    }
    Ok(())
}

impl Store {
    /// Opens a snapshot of the context's tenant for a dump.
    pub async fn snapshot(&self, ctx: &TenantContext) -> Result<Snapshot, StoreError> {
        let tx = self.begin_snapshot(ctx.tenant().as_str()).await?;
        no_statement_timeout(&tx).await?;
        Ok(Snapshot { tx })
    }

    /// Starts the transaction of a restore into the context's tenant. On PostgreSQL it runs
    /// under row-level security with the tenant set, like every write; the tenant's registry
    /// row, clients and lab endpoints (system tables) are written in the same transaction.
    pub async fn begin_restore(&self, ctx: &TenantContext) -> Result<Restore, StoreError> {
        let tx = self.write(ctx).await?;
        no_statement_timeout(&tx).await?;
        Ok(Restore { tx })
    }
}

fn flag(row: &QueryResult, column: &str) -> Result<bool, StoreError> {
    Ok(row.try_get::<i32>("", column)? != 0)
}

fn count(row: &QueryResult, column: &str) -> Result<u64, StoreError> {
    Ok(u64::try_from(row.try_get::<i64>("", column)?).unwrap_or(0))
}

impl Snapshot {
    fn tenant(&self) -> &str {
        self.tx.tenant.as_str()
    }

    /// The number of rows of every section.
    pub async fn counts(&self) -> Result<BackupCounts, StoreError> {
        let rows = self
            .tx
            .query(
                &format!(
                    "SELECT (SELECT COUNT(*) FROM tenants WHERE id = $1) AS tenant, \
                     (SELECT COUNT(*) FROM oauth_clients WHERE tenant_id = $1) AS clients, \
                     (SELECT COUNT(*) FROM lab_endpoints WHERE tenant_id = $1) AS lab_endpoints, \
                     (SELECT COUNT(*) FROM users WHERE tenant_id = $1) AS users, \
                     (SELECT COUNT(*) FROM recovery_codes WHERE tenant_id = $1) AS recovery_codes, \
                     (SELECT COUNT(*) FROM resources r WHERE r.tenant_id = $1 AND {NOT_CHAINED}) AS resources, \
                     (SELECT COUNT(*) FROM resource_history WHERE tenant_id = $1) AS history, \
                     (SELECT COUNT(*) FROM audit_chain WHERE tenant_id = $1) AS audit_links, \
                     (SELECT COUNT(*) FROM audit_chain c JOIN resources r ON r.tenant_id = $1 \
                      AND r.resource_type = 'AuditEvent' AND r.id = c.resource_id WHERE c.tenant_id = $1) AS audit_events, \
                     (SELECT COUNT(*) FROM audit_head WHERE tenant_id = $1) AS audit_head"
                ),
                vec![self.tenant().into()],
            )
            .await?;
        let row = rows.first().ok_or_else(|| StoreError::Internal("no row from COUNT".into()))?;
        Ok(BackupCounts {
            tenant: count(row, "tenant")?,
            clients: count(row, "clients")?,
            lab_endpoints: count(row, "lab_endpoints")?,
            users: count(row, "users")?,
            recovery_codes: count(row, "recovery_codes")?,
            resources: count(row, "resources")?,
            history: count(row, "history")?,
            audit_links: count(row, "audit_links")?,
            audit_events: count(row, "audit_events")?,
            audit_head: count(row, "audit_head")?,
        })
    }

    /// The tenant's registry row, if it is registered.
    pub async fn tenant_row(&self) -> Result<Option<TenantRow>, StoreError> {
        let rows = self
            .tx
            .query("SELECT id, name, active, created_at FROM tenants WHERE id = $1", vec![self.tenant().into()])
            .await?;
        rows.first()
            .map(|r| {
                Ok(TenantRow {
                    id: r.try_get("", "id")?,
                    name: r.try_get("", "name")?,
                    active: flag(r, "active")?,
                    created_at: r.try_get("", "created_at")?,
                })
            })
            .transpose()
    }

    /// The tenant's OAuth clients, by client id (a handful: read whole).
    pub async fn clients(&self) -> Result<Vec<ClientRow>, StoreError> {
        let rows = self
            .tx
            .query(
                &format!("SELECT {CLIENT_COLUMNS} FROM oauth_clients WHERE tenant_id = $1 ORDER BY client_id"),
                vec![self.tenant().into()],
            )
            .await?;
        rows.iter()
            .map(|r| {
                Ok(ClientRow {
                    client_id: r.try_get("", "client_id")?,
                    name: r.try_get("", "name")?,
                    kind: r.try_get("", "kind")?,
                    redirect_uris: r.try_get("", "redirect_uris")?,
                    jwks: r.try_get("", "jwks")?,
                    scope: r.try_get("", "scope")?,
                    active: flag(r, "active")?,
                    created_at: r.try_get("", "created_at")?,
                })
            })
            .collect()
    }

    /// The tenant's lab endpoints, by id (a handful: read whole).
    pub async fn lab_endpoints(&self) -> Result<Vec<LabEndpointRow>, StoreError> {
        let rows = self
            .tx
            .query(
                &format!("SELECT {ENDPOINT_COLUMNS} FROM lab_endpoints WHERE tenant_id = $1 ORDER BY id"),
                vec![self.tenant().into()],
            )
            .await?;
        rows.iter()
            .map(|r| {
                Ok(LabEndpointRow {
                    id: r.try_get("", "id")?,
                    name: r.try_get("", "name")?,
                    lab_facility: r.try_get("", "lab_facility")?,
                    lab_application: r.try_get("", "lab_application")?,
                    our_facility: r.try_get("", "our_facility")?,
                    our_application: r.try_get("", "our_application")?,
                    transport: r.try_get("", "transport")?,
                    address: r.try_get("", "address")?,
                    charset: r.try_get("", "charset")?,
                    organization: r.try_get("", "organization")?,
                    is_default: flag(r, "is_default")?,
                    max_attempts: r.try_get("", "max_attempts")?,
                    allowed_peers: r.try_get("", "allowed_peers")?,
                    active: flag(r, "active")?,
                    created_at: r.try_get("", "created_at")?,
                    updated_at: r.try_get("", "updated_at")?,
                    last_outbound_at: r.try_get("", "last_outbound_at")?,
                    last_inbound_at: r.try_get("", "last_inbound_at")?,
                    last_error: r.try_get("", "last_error")?,
                })
            })
            .collect()
    }

    /// Users after `after` (an id; `""` for the first page), by id, at most `limit`.
    pub async fn users(&self, after: &str, limit: u64) -> Result<Vec<UserRow>, StoreError> {
        let rows = self
            .tx
            .query(
                &format!("SELECT {USER_COLUMNS} FROM users WHERE tenant_id = $1 AND id > $2 ORDER BY id LIMIT $3"),
                vec![self.tenant().into(), after.into(), limit_value(limit)],
            )
            .await?;
        rows.iter()
            .map(|r| {
                Ok(UserRow {
                    id: r.try_get("", "id")?,
                    username: r.try_get("", "username")?,
                    display_name: r.try_get("", "display_name")?,
                    password_hash: r.try_get("", "password_hash")?,
                    roles: r.try_get("", "roles")?,
                    active: flag(r, "active")?,
                    created_at: r.try_get("", "created_at")?,
                    updated_at: r.try_get("", "updated_at")?,
                    last_login_at: r.try_get("", "last_login_at")?,
                    mfa_secret: r.try_get("", "mfa_secret")?,
                    mfa_confirmed: flag(r, "mfa_confirmed")?,
                    mfa_last_step: r.try_get("", "mfa_last_step")?,
                    fhir_user: r.try_get("", "fhir_user")?,
                })
            })
            .collect()
    }

    /// Recovery codes after `after` (user id, code hash; empty for the first page), at most `limit`.
    pub async fn recovery_codes(&self, after: (&str, &str), limit: u64) -> Result<Vec<RecoveryCodeRow>, StoreError> {
        let rows = self
            .tx
            .query(
                "SELECT user_id, code_hash, used_at FROM recovery_codes WHERE tenant_id = $1 \
                 AND (user_id, code_hash) > ($2, $3) ORDER BY user_id, code_hash LIMIT $4",
                vec![self.tenant().into(), after.0.into(), after.1.into(), limit_value(limit)],
            )
            .await?;
        rows.iter()
            .map(|r| {
                Ok(RecoveryCodeRow {
                    user_id: r.try_get("", "user_id")?,
                    code_hash: r.try_get("", "code_hash")?,
                    used_at: r.try_get("", "used_at")?,
                })
            })
            .collect()
    }

    /// Current versions after `after` (type, id; empty for the first page) in (type, id) order,
    /// at most `limit`, without the AuditEvents the chain covers. Keyset pages on the primary
    /// key: each page is one index range, however far the dump has come.
    pub async fn resources(&self, after: (&str, &str), limit: u64) -> Result<Vec<ResourceRow>, StoreError> {
        let rows = self
            .tx
            .query(
                &format!(
                    "SELECT r.resource_type, r.id, r.version_id, r.last_updated, r.deleted, r.content FROM resources r \
                     WHERE r.tenant_id = $1 AND (r.resource_type, r.id) > ($2, $3) AND {NOT_CHAINED} \
                     ORDER BY r.resource_type, r.id LIMIT $4"
                ),
                vec![self.tenant().into(), after.0.into(), after.1.into(), limit_value(limit)],
            )
            .await?;
        rows.iter()
            .map(|r| {
                Ok(ResourceRow {
                    resource_type: r.try_get("", "resource_type")?,
                    id: r.try_get("", "id")?,
                    version: r.try_get("", "version_id")?,
                    last_updated: r.try_get("", "last_updated")?,
                    deleted: flag(r, "deleted")?,
                    content: r.try_get("", "content")?,
                })
            })
            .collect()
    }

    /// History rows after `after` (type, id, version; `("", "", 0)` for the first page) in that
    /// order, at most `limit`.
    pub async fn history(&self, after: (&str, &str, i64), limit: u64) -> Result<Vec<HistoryRow>, StoreError> {
        let rows = self
            .tx
            .query(
                "SELECT resource_type, id, version_id, last_updated, method, deleted, content FROM resource_history \
                 WHERE tenant_id = $1 AND (resource_type, id, version_id) > ($2, $3, $4) \
                 ORDER BY resource_type, id, version_id LIMIT $5",
                vec![self.tenant().into(), after.0.into(), after.1.into(), after.2.into(), limit_value(limit)],
            )
            .await?;
        rows.iter()
            .map(|r| {
                Ok(HistoryRow {
                    resource_type: r.try_get("", "resource_type")?,
                    id: r.try_get("", "id")?,
                    version: r.try_get("", "version_id")?,
                    last_updated: r.try_get("", "last_updated")?,
                    method: r.try_get("", "method")?,
                    deleted: flag(r, "deleted")?,
                    content: r.try_get("", "content")?,
                })
            })
            .collect()
    }

    /// Links of the audit chain after `after` (a sequence number; `i64::MIN` for the first page)
    /// in sequence order, each with its AuditEvent, at most `limit`.
    pub async fn audit_links(&self, after: i64, limit: u64) -> Result<Vec<AuditLinkRow>, StoreError> {
        let rows = self
            .tx
            .query(
                "SELECT c.seq, c.resource_id, c.hash, r.version_id, r.last_updated, r.deleted, r.content \
                 FROM audit_chain c LEFT JOIN resources r ON r.tenant_id = $1 \
                 AND r.resource_type = 'AuditEvent' AND r.id = c.resource_id \
                 WHERE c.tenant_id = $1 AND c.seq > $2 ORDER BY c.seq LIMIT $3",
                vec![self.tenant().into(), after.into(), limit_value(limit)],
            )
            .await?;
        rows.iter()
            .map(|r| {
                let version: Option<i64> = r.try_get("", "version_id")?;
                let last_updated: Option<i64> = r.try_get("", "last_updated")?;
                let deleted: Option<i32> = r.try_get("", "deleted")?;
                let content: Option<String> = r.try_get("", "content")?;
                let event = match (version, last_updated, deleted, content) {
                    (Some(version), Some(last_updated), Some(deleted), Some(content)) => {
                        Some(AuditEventRow { version, last_updated, deleted: deleted != 0, content })
                    }
                    _ => None,
                };
                Ok(AuditLinkRow {
                    seq: r.try_get("", "seq")?,
                    resource_id: r.try_get("", "resource_id")?,
                    hash: r.try_get("", "hash")?,
                    event,
                })
            })
            .collect()
    }

    /// The head of the audit chain, if the tenant ever audited.
    pub async fn audit_head(&self) -> Result<Option<AuditHeadRow>, StoreError> {
        let rows =
            self.tx.query("SELECT seq, hash FROM audit_head WHERE tenant_id = $1", vec![self.tenant().into()]).await?;
        rows.first().map(|r| Ok(AuditHeadRow { seq: r.try_get("", "seq")?, hash: r.try_get("", "hash")? })).transpose()
    }

    /// Verifies the tenant's audit chain in this snapshot (`ehr audit verify`'s check).
    pub async fn verify_audit_chain(&self) -> Result<AuditVerification, StoreError> {
        self.tx.verify_audit_chain().await
    }

    /// The database backend (`"sqlite"` or `"postgres"`).
    pub fn backend_name(&self) -> &'static str {
        backend_name(self.tx.backend)
    }

    /// Ends the snapshot.
    pub async fn finish(self) -> Result<(), StoreError> {
        self.tx.commit().await
    }
}

fn backend_name(backend: DbBackend) -> &'static str {
    match backend {
        DbBackend::Postgres => "postgres",
        _ => "sqlite",
    }
}

fn limit_value(limit: u64) -> sea_orm::Value {
    i64::try_from(limit).unwrap_or(i64::MAX).into()
}

/// Rows per INSERT statement: far below both drivers' limits on bound parameters.
const ROWS_PER_STATEMENT: usize = 100;

impl Restore {
    fn tenant(&self) -> &str {
        self.tx.tenant.as_str()
    }

    /// What the target database already holds that a restore of these clients and lab endpoints
    /// into this tenant would collide with.
    pub async fn occupancy(
        &self,
        clients: &[ClientRow],
        lab_endpoints: &[LabEndpointRow],
    ) -> Result<Occupancy, StoreError> {
        let rows = self
            .tx
            .query(
                "SELECT (SELECT COUNT(*) FROM tenants WHERE id = $1) AS tenant, \
                 (SELECT COUNT(*) FROM oauth_clients WHERE tenant_id = $1) AS clients, \
                 (SELECT COUNT(*) FROM lab_endpoints WHERE tenant_id = $1) AS lab_endpoints, \
                 (SELECT COUNT(*) FROM users WHERE tenant_id = $1) AS users, \
                 (SELECT COUNT(*) FROM recovery_codes WHERE tenant_id = $1) AS recovery_codes, \
                 (SELECT COUNT(*) FROM resources WHERE tenant_id = $1) AS resources, \
                 (SELECT COUNT(*) FROM resource_history WHERE tenant_id = $1) AS history, \
                 (SELECT COUNT(*) FROM audit_chain WHERE tenant_id = $1) AS audit_links, \
                 (SELECT COUNT(*) FROM audit_head WHERE tenant_id = $1) AS audit_head, \
                 (SELECT COUNT(*) FROM outbox WHERE tenant_id = $1) + \
                 (SELECT COUNT(*) FROM event_receipts WHERE tenant_id = $1) + \
                 (SELECT COUNT(*) FROM hl7_messages WHERE tenant_id = $1) + \
                 (SELECT COUNT(*) FROM export_jobs WHERE tenant_id = $1) + \
                 (SELECT COUNT(*) FROM national_submissions WHERE tenant_id = $1) AS other",
                vec![self.tenant().into()],
            )
            .await?;
        let row = rows.first().ok_or_else(|| StoreError::Internal("no row from COUNT".into()))?;
        let mut occupancy = Occupancy {
            tenant_rows: BackupCounts {
                tenant: count(row, "tenant")?,
                clients: count(row, "clients")?,
                lab_endpoints: count(row, "lab_endpoints")?,
                users: count(row, "users")?,
                recovery_codes: count(row, "recovery_codes")?,
                resources: count(row, "resources")?,
                history: count(row, "history")?,
                audit_links: count(row, "audit_links")?,
                audit_events: 0,
                audit_head: count(row, "audit_head")?,
            },
            other_rows: count(row, "other")?,
            ..Occupancy::default()
        };
        for client in clients {
            let taken = self
                .tx
                .query(
                    "SELECT 1 AS one FROM oauth_clients WHERE client_id = $1",
                    vec![client.client_id.as_str().into()],
                )
                .await?;
            if !taken.is_empty() {
                occupancy.taken_clients.push(client.client_id.clone());
            }
        }
        for endpoint in lab_endpoints {
            let taken = self
                .tx
                .query(
                    "SELECT 1 AS one FROM lab_endpoints WHERE id = $1 OR (lab_facility = $2 AND our_facility = $3)",
                    vec![
                        endpoint.id.as_str().into(),
                        endpoint.lab_facility.as_str().into(),
                        endpoint.our_facility.as_str().into(),
                    ],
                )
                .await?;
            if !taken.is_empty() {
                occupancy.taken_lab_endpoints.push(endpoint.id.clone());
            }
        }
        Ok(occupancy)
    }

    /// Registers the tenant.
    pub async fn insert_tenant(&self, row: &TenantRow) -> Result<(), StoreError> {
        if row.id != self.tenant() {
            return Err(StoreError::InvalidValue("the tenant row names another tenant"));
        }
        self.tx
            .exec(
                "INSERT INTO tenants (id, name, active, created_at) VALUES ($1, $2, $3, $4)",
                vec![
                    self.tenant().into(),
                    row.name.as_str().into(),
                    i32::from(row.active).into(),
                    row.created_at.into(),
                ],
            )
            .await?;
        Ok(())
    }

    /// Inserts OAuth clients of the tenant.
    pub async fn insert_clients(&self, rows: &[ClientRow]) -> Result<(), StoreError> {
        for chunk in rows.chunks(ROWS_PER_STATEMENT) {
            let mut sql = Sql::new(self.tenant());
            let values: Vec<String> = chunk
                .iter()
                .map(|c| {
                    format!(
                        "({}, $1, {}, {}, {}, {}, {}, {}, {})",
                        sql.bind(c.client_id.as_str()),
                        sql.bind(c.name.as_str()),
                        sql.bind(c.kind.as_str()),
                        sql.bind(c.redirect_uris.as_str()),
                        sql.bind(c.jwks.clone()),
                        sql.bind(c.scope.as_str()),
                        sql.bind(i32::from(c.active)),
                        sql.bind(c.created_at),
                    )
                })
                .collect();
            sql.push(&format!(
                "INSERT INTO oauth_clients (client_id, tenant_id, name, kind, redirect_uris, jwks, scope, active, \
                 created_at) VALUES {}",
                values.join(", ")
            ));
            self.tx.exec(&sql.text, sql.values).await?;
        }
        Ok(())
    }

    /// Inserts lab endpoints of the tenant.
    pub async fn insert_lab_endpoints(&self, rows: &[LabEndpointRow]) -> Result<(), StoreError> {
        for e in rows {
            self.tx
                .exec(
                    "INSERT INTO lab_endpoints (id, tenant_id, name, lab_facility, lab_application, our_facility, \
                     our_application, transport, address, charset, organization, is_default, max_attempts, \
                     allowed_peers, active, created_at, updated_at, last_outbound_at, last_inbound_at, last_error) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20)",
                    vec![
                        e.id.as_str().into(),
                        self.tenant().into(),
                        e.name.as_str().into(),
                        e.lab_facility.as_str().into(),
                        e.lab_application.as_str().into(),
                        e.our_facility.as_str().into(),
                        e.our_application.as_str().into(),
                        e.transport.as_str().into(),
                        e.address.as_str().into(),
                        e.charset.as_str().into(),
                        e.organization.clone().into(),
                        i32::from(e.is_default).into(),
                        e.max_attempts.into(),
                        e.allowed_peers.as_str().into(),
                        i32::from(e.active).into(),
                        e.created_at.into(),
                        e.updated_at.into(),
                        e.last_outbound_at.into(),
                        e.last_inbound_at.into(),
                        e.last_error.clone().into(),
                    ],
                )
                .await?;
        }
        Ok(())
    }

    /// Inserts users of the tenant.
    pub async fn insert_users(&self, rows: &[UserRow]) -> Result<(), StoreError> {
        for chunk in rows.chunks(ROWS_PER_STATEMENT) {
            let mut sql = Sql::new(self.tenant());
            let values: Vec<String> = chunk
                .iter()
                .map(|u| {
                    let cols = [
                        sql.bind(u.id.as_str()),
                        sql.bind(u.username.as_str()),
                        sql.bind(u.display_name.as_str()),
                        sql.bind(u.password_hash.as_str()),
                        sql.bind(u.roles.as_str()),
                        sql.bind(i32::from(u.active)),
                        sql.bind(u.created_at),
                        sql.bind(u.updated_at),
                        sql.bind(u.last_login_at),
                        sql.bind(u.mfa_secret.clone()),
                        sql.bind(i32::from(u.mfa_confirmed)),
                        sql.bind(u.mfa_last_step),
                        sql.bind(u.fhir_user.clone()),
                    ];
                    format!("($1, {})", cols.join(", "))
                })
                .collect();
            sql.push(&format!("INSERT INTO users (tenant_id, {USER_COLUMNS}) VALUES {}", values.join(", ")));
            self.tx.exec(&sql.text, sql.values).await?;
        }
        Ok(())
    }

    /// Inserts recovery codes of the tenant's users.
    pub async fn insert_recovery_codes(&self, rows: &[RecoveryCodeRow]) -> Result<(), StoreError> {
        for chunk in rows.chunks(ROWS_PER_STATEMENT) {
            let mut sql = Sql::new(self.tenant());
            let values: Vec<String> = chunk
                .iter()
                .map(|c| {
                    format!(
                        "($1, {}, {}, {})",
                        sql.bind(c.user_id.as_str()),
                        sql.bind(c.code_hash.as_str()),
                        sql.bind(c.used_at)
                    )
                })
                .collect();
            sql.push(&format!(
                "INSERT INTO recovery_codes (tenant_id, user_id, code_hash, used_at) VALUES {}",
                values.join(", ")
            ));
            self.tx.exec(&sql.text, sql.values).await?;
        }
        Ok(())
    }

    /// Inserts current versions and derives their search-index rows from their content, with
    /// the extraction every write uses.
    pub async fn insert_resources(&self, rows: &[ResourceRow]) -> Result<(), StoreError> {
        for chunk in rows.chunks(ROWS_PER_STATEMENT) {
            let mut sql = Sql::new(self.tenant());
            let values: Vec<String> = chunk
                .iter()
                .map(|r| {
                    format!(
                        "($1, {}, {}, {}, {}, {}, {})",
                        sql.bind(r.resource_type.as_str()),
                        sql.bind(r.id.as_str()),
                        sql.bind(r.version),
                        sql.bind(r.last_updated),
                        sql.bind(i32::from(r.deleted)),
                        sql.bind(r.content.as_str()),
                    )
                })
                .collect();
            sql.push(&format!(
                "INSERT INTO resources (tenant_id, resource_type, id, version_id, last_updated, deleted, content) \
                 VALUES {}",
                values.join(", ")
            ));
            self.tx.exec(&sql.text, sql.values).await?;
        }
        let live: Vec<(&str, &str, &str)> = rows
            .iter()
            .filter(|r| !r.deleted)
            .map(|r| (r.resource_type.as_str(), r.id.as_str(), r.content.as_str()))
            .collect();
        self.index(&live).await
    }

    /// Writes the search-index rows of (type, id, content) triples, one batch per run of a type.
    async fn index(&self, resources: &[(&str, &str, &str)]) -> Result<(), StoreError> {
        let mut start = 0;
        while start < resources.len() {
            let ty = resources[start].0;
            let end = resources[start..].iter().position(|r| r.0 != ty).map_or(resources.len(), |n| start + n);
            let mut entries: Vec<(&str, Vec<IndexEntry>)> = Vec::with_capacity(end - start);
            for (_, id, content) in &resources[start..end] {
                let json: Json = serde_json::from_str(content)
                    .map_err(|_| StoreError::InvalidValue("resource content is not JSON"))?;
                entries.push((id, extract(ty, &json)));
            }
            let rows: Vec<(&str, &IndexEntry)> =
                entries.iter().flat_map(|(id, es)| es.iter().map(move |e| (*id, e))).collect();
            self.tx.write_index_rows(ty, &rows).await?;
            start = end;
        }
        Ok(())
    }

    /// Inserts history rows.
    pub async fn insert_history(&self, rows: &[HistoryRow]) -> Result<(), StoreError> {
        for chunk in rows.chunks(ROWS_PER_STATEMENT) {
            let mut sql = Sql::new(self.tenant());
            let values: Vec<String> = chunk
                .iter()
                .map(|h| {
                    format!(
                        "($1, {}, {}, {}, {}, {}, {}, {})",
                        sql.bind(h.resource_type.as_str()),
                        sql.bind(h.id.as_str()),
                        sql.bind(h.version),
                        sql.bind(h.last_updated),
                        sql.bind(h.method.as_str()),
                        sql.bind(i32::from(h.deleted)),
                        sql.bind(h.content.as_str()),
                    )
                })
                .collect();
            sql.push(&format!(
                "INSERT INTO resource_history (tenant_id, resource_type, id, version_id, last_updated, method, \
                 deleted, content) VALUES {}",
                values.join(", ")
            ));
            self.tx.exec(&sql.text, sql.values).await?;
        }
        Ok(())
    }

    /// Inserts links of the audit chain and their AuditEvents (with index rows). An event two
    /// links name is stored once.
    pub async fn insert_audit_links(&self, rows: &[AuditLinkRow]) -> Result<(), StoreError> {
        for chunk in rows.chunks(ROWS_PER_STATEMENT) {
            let mut sql = Sql::new(self.tenant());
            let mut events = Vec::with_capacity(chunk.len());
            let mut seen = std::collections::HashSet::new();
            for link in chunk {
                let Some(e) = &link.event else { continue };
                if !seen.insert(link.resource_id.as_str()) {
                    continue;
                }
                events.push(format!(
                    "($1, 'AuditEvent', {}, {}, {}, {}, {})",
                    sql.bind(link.resource_id.as_str()),
                    sql.bind(e.version),
                    sql.bind(e.last_updated),
                    sql.bind(i32::from(e.deleted)),
                    sql.bind(e.content.as_str()),
                ));
            }
            if !events.is_empty() {
                // ON CONFLICT: an event named by a link of an earlier statement is there already;
                // RETURNING says which rows are new, and only those get index rows.
                sql.push(&format!(
                    "INSERT INTO resources (tenant_id, resource_type, id, version_id, last_updated, deleted, content) \
                     VALUES {} ON CONFLICT DO NOTHING RETURNING id",
                    events.join(", ")
                ));
                let inserted: std::collections::HashSet<String> = self
                    .tx
                    .query(&sql.text, sql.values)
                    .await?
                    .iter()
                    .map(|r| r.try_get::<String>("", "id"))
                    .collect::<Result<_, _>>()?;
                let mut live = Vec::new();
                let mut indexed = std::collections::HashSet::new();
                for link in chunk {
                    if let Some(e) = &link.event
                        && !e.deleted
                        && inserted.contains(&link.resource_id)
                        && indexed.insert(link.resource_id.as_str())
                    {
                        live.push(("AuditEvent", link.resource_id.as_str(), e.content.as_str()));
                    }
                }
                self.index(&live).await?;
            }
            let mut sql = Sql::new(self.tenant());
            let values: Vec<String> = chunk
                .iter()
                .map(|l| {
                    format!(
                        "($1, {}, {}, {})",
                        sql.bind(l.seq),
                        sql.bind(l.resource_id.as_str()),
                        sql.bind(l.hash.as_str())
                    )
                })
                .collect();
            sql.push(&format!(
                "INSERT INTO audit_chain (tenant_id, seq, resource_id, hash) VALUES {}",
                values.join(", ")
            ));
            self.tx.exec(&sql.text, sql.values).await?;
        }
        Ok(())
    }

    /// Sets the head of the audit chain.
    pub async fn insert_audit_head(&self, row: &AuditHeadRow) -> Result<(), StoreError> {
        self.tx
            .exec(
                "INSERT INTO audit_head (tenant_id, seq, hash) VALUES ($1, $2, $3)",
                vec![self.tenant().into(), row.seq.into(), row.hash.as_str().into()],
            )
            .await?;
        Ok(())
    }

    /// Verifies the tenant's audit chain as written so far, inside the restore's transaction
    /// (the same check as `ehr audit verify`).
    pub async fn verify_audit_chain(&self) -> Result<AuditVerification, StoreError> {
        self.tx.verify_audit_chain().await
    }

    /// Appends AuditEvents to the tenant's chain in the restore's transaction (the restore's own
    /// record, after the restored chain was verified).
    pub async fn append_audit(&self, events: Vec<Json>, now: chrono::DateTime<chrono::Utc>) -> Result<(), StoreError> {
        self.tx.append_audit(events, now).await?;
        Ok(())
    }

    /// Commits the restore.
    pub async fn commit(self) -> Result<(), StoreError> {
        self.tx.commit().await
    }
}

/// Checks an audit chain read link by link, in sequence order, with the rules of
/// [`Tx::verify_audit_chain`]: the same findings for the same rows, without a database.
#[derive(Debug)]
pub struct ChainCheck {
    expected: i64,
    prev: String,
    last_seq: Option<i64>,
    unchained: Vec<String>,
    report: AuditVerification,
}

impl Default for ChainCheck {
    fn default() -> Self {
        Self::new()
    }
}

impl ChainCheck {
    /// A check of an empty chain.
    pub fn new() -> Self {
        Self {
            expected: 1,
            prev: GENESIS.to_owned(),
            last_seq: None,
            unchained: Vec::new(),
            report: AuditVerification::default(),
        }
    }

    /// The next link (links must come in sequence order, as a dump reads them).
    pub fn link(&mut self, link: &AuditLinkRow) {
        let seq = link.seq;
        self.report.checked += 1;
        let linked = seq == self.expected;
        if !linked {
            self.report.problems.push(AuditProblem::SeqGap { expected: self.expected, found: seq });
        }
        match &link.event {
            Some(e) if e.version != 1 || e.deleted => {
                self.report
                    .problems
                    .push(AuditProblem::ModifiedResource { seq, resource_id: link.resource_id.clone() });
            }
            Some(e) => {
                if linked && link_hash(&self.prev, seq, &link.resource_id, &e.content) != link.hash {
                    self.report
                        .problems
                        .push(AuditProblem::HashMismatch { seq, resource_id: link.resource_id.clone() });
                }
            }
            None => {
                self.report.problems.push(AuditProblem::MissingResource { seq, resource_id: link.resource_id.clone() });
            }
        }
        // As in the database check: the recorded hash carries on.
        self.prev.clone_from(&link.hash);
        self.expected = seq + 1;
        self.last_seq = Some(self.last_seq.map_or(seq, |last| last.max(seq)));
    }

    /// An AuditEvent resource no link covers.
    pub fn unchained(&mut self, resource_id: &str) {
        self.unchained.push(resource_id.to_owned());
    }

    /// The findings, given the chain's head.
    pub fn finish(mut self, head: Option<&AuditHeadRow>) -> AuditVerification {
        let head_seq = head.map_or(0, |h| h.seq);
        let head_hash = head.map_or(GENESIS, |h| h.hash.as_str());
        if self.last_seq.unwrap_or(0) != head_seq || self.prev != head_hash {
            self.report.problems.push(AuditProblem::HeadMismatch);
        }
        self.report
            .problems
            .extend(self.unchained.into_iter().map(|resource_id| AuditProblem::Unchained { resource_id }));
        self.report
    }
}
