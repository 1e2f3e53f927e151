//! The versioned, tenant-scoped resource repository.

use crate::error::StoreError;
use crate::migration::{APP_ROLE, Migrator};
use crate::sql::{self, Sql, table_of};
use chrono::{DateTime, Utc};
use ehr_core::{ResourceId, TenantContext};
use ehr_fhir::search::{
    IncludeSpec, IndexEntry, IndexValue, ParamKind, SearchQuery, TotalMode, extract, format_instant,
};
use sea_orm::{
    AccessMode, ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DatabaseTransaction, DbBackend,
    IsolationLevel, QueryResult, Statement, TransactionTrait, Value,
};
use sea_orm_migration::MigratorTrait;
use serde_json::{Value as Json, json};
use std::sync::Arc;
use std::time::Duration;

/// How to reach the database.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// `sqlite://path/to/file.db` or `postgres://user@host/db`.
    pub url: String,
    /// Pool size (readers, on SQLite; all connections on PostgreSQL).
    pub max_connections: u32,
    /// PostgreSQL role switched to in every transaction so that row-level security applies even
    /// when the pool logs in as the table owner. `None` keeps the login role.
    pub app_role: Option<String>,
    /// PostgreSQL: a statement running longer is cancelled (503 `timeout`), so a request the
    /// client gave up on cannot keep the database busy. 0 disables.
    pub statement_timeout_ms: u64,
}

impl StoreConfig {
    /// A config for `url` with defaults for the rest.
    pub fn new(url: impl Into<String>) -> Self {
        Self { url: url.into(), max_connections: 16, app_role: Some(APP_ROLE.to_owned()), statement_timeout_ms: 30_000 }
    }
}

/// The resource repository. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    backend: DbBackend,
    /// On SQLite a single connection: writers queue here instead of failing with SQLITE_BUSY,
    /// and a transaction that reads then writes cannot deadlock with another.
    writer: DatabaseConnection,
    reader: DatabaseConnection,
    app_role: Option<String>,
    statement_timeout: String,
}

/// The current (or a historical) version of a resource, with its JSON as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct Stored {
    pub resource_type: String,
    pub id: String,
    pub version: i64,
    /// Epoch milliseconds.
    pub last_updated: i64,
    pub deleted: bool,
    /// The resource JSON including `id` and `meta.versionId`/`meta.lastUpdated`; empty when deleted.
    pub content: String,
    /// For history entries: `POST`, `PUT`, `PATCH` or `DELETE`.
    pub method: Option<String>,
}

impl Stored {
    /// `meta.lastUpdated` as a FHIR instant.
    pub fn last_updated_instant(&self) -> String {
        format_instant(self.last_updated)
    }
}

/// A page of search results.
#[derive(Debug, Default)]
pub struct SearchPage {
    pub matches: Vec<Stored>,
    pub included: Vec<Stored>,
    pub total: Option<u64>,
    /// Whether there are more matches after this page.
    pub has_more: bool,
}

/// Which history to list.
#[derive(Debug, Clone, Copy)]
pub enum HistoryScope<'a> {
    Instance(&'a str, &'a str),
    Type(&'a str),
    /// Every resource of these types (the ones the calling service owns).
    System(&'a [&'a str]),
}

/// The maximum number of resources `_include`/`_revinclude` add to one page.
const MAX_INCLUDED: usize = 1000;

impl Store {
    /// Connects to the database named by the config.
    pub async fn connect(config: &StoreConfig) -> Result<Self, StoreError> {
        let backend = if config.url.starts_with("sqlite:") {
            DbBackend::Sqlite
        } else if config.url.starts_with("postgres:") || config.url.starts_with("postgresql:") {
            DbBackend::Postgres
        } else {
            return Err(StoreError::UnsupportedUrl);
        };
        let options = |max: u32| {
            let mut o = ConnectOptions::new(config.url.clone());
            o.max_connections(max)
                .min_connections(1)
                .connect_timeout(Duration::from_secs(10))
                .acquire_timeout(Duration::from_secs(30))
                .sqlx_logging(false);
            o
        };
        let (writer, reader) = match backend {
            DbBackend::Sqlite => {
                let writer = Database::connect(options(1)).await?;
                // WAL lets readers proceed while the writer commits; it is a property of the file.
                writer.execute_unprepared("PRAGMA journal_mode=WAL").await?;
                writer.execute_unprepared("PRAGMA synchronous=NORMAL").await?;
                let reader = Database::connect(options(config.max_connections.max(1))).await?;
                (writer, reader)
            }
            _ => {
                let pool = Database::connect(options(config.max_connections.max(2))).await?;
                (pool.clone(), pool)
            }
        };
        let app_role = match backend {
            DbBackend::Postgres => config.app_role.clone().filter(|r| !r.is_empty()),
            _ => None,
        };
        let statement_timeout = config.statement_timeout_ms.to_string();
        Ok(Self { inner: Arc::new(Inner { backend, writer, reader, app_role, statement_timeout }) })
    }

    /// Applies pending migrations.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        if self.inner.backend == DbBackend::Postgres {
            // Serialise concurrent migrators (several pods, or parallel tests) on one database.
            let conn = &self.inner.writer;
            let txn = conn.begin().await?;
            txn.execute_unprepared("SELECT pg_advisory_xact_lock(7395001)").await?;
            Migrator::up(&txn, None).await?;
            txn.commit().await?;
            return Ok(());
        }
        Migrator::up(&self.inner.writer, None).await?;
        Ok(())
    }

    /// Closes the connection pools, so that a test can remove the database file (a pool merely
    /// dropped may reconnect in the background and recreate it).
    #[cfg(test)]
    pub(crate) async fn close(&self) {
        let _ = self.inner.writer.close_by_ref().await;
        let _ = self.inner.reader.close_by_ref().await;
    }

    /// Checks that the database answers.
    pub async fn ping(&self) -> Result<(), StoreError> {
        self.inner.reader.ping().await?;
        Ok(())
    }

    /// `"sqlite"` or `"postgres"`.
    pub fn backend_name(&self) -> &'static str {
        match self.inner.backend {
            DbBackend::Postgres => "postgres",
            _ => "sqlite",
        }
    }

    /// Starts a read-write transaction confined to the context's tenant.
    pub async fn write(&self, ctx: &TenantContext) -> Result<Tx, StoreError> {
        self.begin(&self.inner.writer, ctx).await
    }

    /// Starts a read-only unit of work confined to the context's tenant.
    pub async fn read(&self, ctx: &TenantContext) -> Result<Tx, StoreError> {
        self.begin(&self.inner.reader, ctx).await
    }

    /// The current version of one resource (deleted ones included, flagged), read on its own.
    ///
    /// The hot path of `GET [type]/[id]`: on PostgreSQL one statement (`ehr_read_current`, see
    /// the migration) instead of a four-statement transaction; on SQLite a plain read unit.
    pub async fn read_one(
        &self,
        ctx: &TenantContext,
        resource_type: &str,
        id: &str,
    ) -> Result<Option<Stored>, StoreError> {
        if self.inner.backend != DbBackend::Postgres {
            let tx = self.read(ctx).await?;
            let stored = tx.read(resource_type, id).await?;
            tx.commit().await?;
            return Ok(stored);
        }
        let role = self.inner.app_role.clone().unwrap_or_default();
        let stmt = Statement::from_sql_and_values(
            DbBackend::Postgres,
            "SELECT id, version_id, last_updated, deleted, content FROM ehr_read_current($1, $2, $3, $4, $5)",
            vec![
                ctx.tenant().as_str().into(),
                role.into(),
                self.inner.statement_timeout.as_str().into(),
                resource_type.into(),
                id.into(),
            ],
        );
        let rows = self.inner.reader.query_all_raw(stmt).await?;
        rows.first().map(|r| row_to_stored(r, Some(resource_type))).transpose()
    }

    async fn begin(&self, conn: &DatabaseConnection, ctx: &TenantContext) -> Result<Tx, StoreError> {
        let tenant = ctx.tenant().as_str().to_owned();
        let txn = self.open(conn, &tenant).await?;
        Ok(Tx { txn, backend: self.inner.backend, tenant })
    }

    /// Starts a transaction on the writer (`write`) or the reader pool whose PostgreSQL settings
    /// confine it to `tenant`; the empty tenant matches no tenant row (system transactions).
    pub(crate) async fn begin_raw(&self, write: bool, tenant: &str) -> Result<DatabaseTransaction, StoreError> {
        let conn = if write { &self.inner.writer } else { &self.inner.reader };
        self.open(conn, tenant).await
    }

    /// The connection pools, writer and reader (the same pool twice on PostgreSQL): for
    /// `Store::pool_stats` (stats.rs).
    pub(crate) fn connections(&self) -> (&DatabaseConnection, &DatabaseConnection) {
        (&self.inner.writer, &self.inner.reader)
    }

    /// The database backend.
    pub(crate) fn backend(&self) -> DbBackend {
        self.inner.backend
    }

    /// A read-only unit of work confined to `tenant` whose statements all read one snapshot
    /// (backups): REPEATABLE READ on PostgreSQL; on SQLite (WAL) a deferred transaction already
    /// keeps the snapshot of its first read until it ends.
    pub(crate) async fn begin_snapshot(&self, tenant: &str) -> Result<Tx, StoreError> {
        let conn = &self.inner.reader;
        let txn = if self.inner.backend == DbBackend::Postgres {
            // SET TRANSACTION must precede every query, so it comes before the settings below.
            conn.begin_with_config(Some(IsolationLevel::RepeatableRead), Some(AccessMode::ReadOnly)).await?
        } else {
            conn.begin().await?
        };
        let txn = self.confine(txn, tenant).await?;
        Ok(Tx { txn, backend: self.inner.backend, tenant: tenant.to_owned() })
    }

    async fn open(&self, conn: &DatabaseConnection, tenant: &str) -> Result<DatabaseTransaction, StoreError> {
        let txn = conn.begin().await?;
        self.confine(txn, tenant).await
    }

    async fn confine(&self, txn: DatabaseTransaction, tenant: &str) -> Result<DatabaseTransaction, StoreError> {
        if self.inner.backend == DbBackend::Postgres {
            // Transaction-local settings: they end with the transaction, so a pooled connection
            // never carries one tenant's setting into another tenant's request.
            //
            // plan_cache_mode: search statements are prepared once and run with very different
            // values (a patient with 4 observations, a code with 10,000); a cached generic plan
            // chosen for one is pathological for the other (seen in the benchmark: a p95 of
            // 1.3 s for a 2 ms query). Custom plans cost a little planning per execution.
            //
            // statement_timeout: a statement of an abandoned request would otherwise run on.
            let mut sql = "SELECT set_config('ehr.tenant', $1, true), set_config('statement_timeout', $2, true), \
                           set_config('plan_cache_mode', 'force_custom_plan', true)"
                .to_owned();
            let mut values: Vec<Value> = vec![tenant.into(), self.inner.statement_timeout.as_str().into()];
            if let Some(role) = &self.inner.app_role {
                sql.push_str(", set_config('role', $3, true)");
                values.push(role.as_str().into());
            }
            txn.execute_raw(Statement::from_sql_and_values(DbBackend::Postgres, sql, values)).await?;
        }
        Ok(txn)
    }
}

/// A unit of work within one tenant. Dropping it without [`Tx::commit`] rolls back.
pub struct Tx {
    txn: DatabaseTransaction,
    pub(crate) backend: DbBackend,
    pub(crate) tenant: String,
}

fn row_to_stored(row: &QueryResult, resource_type: Option<&str>) -> Result<Stored, StoreError> {
    let resource_type = match resource_type {
        Some(t) => t.to_owned(),
        None => row.try_get::<String>("", "resource_type")?,
    };
    Ok(Stored {
        resource_type,
        id: row.try_get("", "id")?,
        version: row.try_get("", "version_id")?,
        last_updated: row.try_get("", "last_updated")?,
        deleted: row.try_get::<i32>("", "deleted")? != 0,
        content: row.try_get("", "content")?,
        method: row.try_get::<Option<String>>("", "method").ok().flatten(),
    })
}

impl Tx {
    /// Commits the unit of work.
    pub async fn commit(self) -> Result<(), StoreError> {
        self.txn.commit().await?;
        Ok(())
    }

    fn stmt(&self, sql: &str, values: Vec<Value>) -> Statement {
        Statement::from_sql_and_values(self.backend, sql, values)
    }

    pub(crate) async fn query(&self, sql: &str, values: Vec<Value>) -> Result<Vec<QueryResult>, StoreError> {
        Ok(self.txn.query_all_raw(self.stmt(sql, values)).await?)
    }

    pub(crate) async fn exec(&self, sql: &str, values: Vec<Value>) -> Result<u64, StoreError> {
        Ok(self.txn.execute_raw(self.stmt(sql, values)).await?.rows_affected())
    }

    /// Serialises conditional operations on one resource type within the tenant, so that two
    /// concurrent conditional creates cannot both find "no match" and both create.
    pub async fn lock_type(&self, resource_type: &str) -> Result<(), StoreError> {
        if self.backend == DbBackend::Postgres {
            let key = format!("{}/{}", self.tenant, resource_type);
            self.exec("SELECT pg_advisory_xact_lock(hashtext($1))", vec![key.into()]).await?;
        }
        // SQLite: writes already run one at a time on the single writer connection.
        Ok(())
    }

    /// The current version of a resource (deleted ones included, flagged).
    pub async fn read(&self, resource_type: &str, id: &str) -> Result<Option<Stored>, StoreError> {
        self.read_current(resource_type, id, false).await
    }

    /// The current version of a resource as JSON, or `None` when it does not exist or was
    /// deleted — what services read to check a reference (an order's patient, a result's order).
    pub async fn read_json(&self, resource_type: &str, id: &str) -> Result<Option<serde_json::Value>, StoreError> {
        let Some(stored) = self.read(resource_type, id).await?.filter(|s| !s.deleted) else { return Ok(None) };
        serde_json::from_str(&stored.content).map(Some).map_err(|_| StoreError::corrupt("resources.content"))
    }

    /// As [`Tx::read`], and locks the row until the transaction ends (PostgreSQL; SQLite's
    /// single writer connection already excludes concurrent writers).
    pub async fn read_for_update(&self, resource_type: &str, id: &str) -> Result<Option<Stored>, StoreError> {
        self.read_current(resource_type, id, true).await
    }

    async fn read_current(
        &self,
        resource_type: &str,
        id: &str,
        for_update: bool,
    ) -> Result<Option<Stored>, StoreError> {
        let lock = if for_update && self.backend == DbBackend::Postgres { " FOR UPDATE" } else { "" };
        let sql = format!(
            "SELECT id, version_id, last_updated, deleted, content FROM resources \
             WHERE tenant_id = $1 AND resource_type = $2 AND id = $3{lock}"
        );
        let rows = self.query(&sql, vec![self.tenant.as_str().into(), resource_type.into(), id.into()]).await?;
        rows.first().map(|r| row_to_stored(r, Some(resource_type))).transpose()
    }

    /// One version of a resource, from history.
    pub async fn vread(&self, resource_type: &str, id: &str, version: i64) -> Result<Option<Stored>, StoreError> {
        let rows = self
            .query(
                "SELECT id, version_id, last_updated, deleted, content, method FROM resource_history \
                 WHERE tenant_id = $1 AND resource_type = $2 AND id = $3 AND version_id = $4",
                vec![self.tenant.as_str().into(), resource_type.into(), id.into(), version.into()],
            )
            .await?;
        rows.first().map(|r| row_to_stored(r, Some(resource_type))).transpose()
    }

    /// Creates a resource with a server-assigned id (or the given one, for update-as-create).
    pub async fn create(
        &self,
        resource_type: &str,
        id: Option<&ResourceId>,
        mut resource: Json,
        now: DateTime<Utc>,
    ) -> Result<Stored, StoreError> {
        let id = id.cloned().unwrap_or_else(ResourceId::generate);
        let stored = stamp(&mut resource, resource_type, id.as_str(), 1, now)?;
        // A concurrent create of the same client-assigned id must not abort the whole
        // transaction on PostgreSQL (ON CONFLICT DO NOTHING): it shows in the row count instead.
        let insert = "INSERT INTO resources (tenant_id, resource_type, id, version_id, last_updated, deleted, content) \
                      VALUES ($1, $2, $3, 1, $4, 0, $5) ON CONFLICT DO NOTHING";
        let values = vec![
            self.tenant.as_str().into(),
            resource_type.into(),
            id.as_str().into(),
            stored.last_updated.into(),
            stored.content.as_str().into(),
        ];
        if self.backend == DbBackend::Postgres {
            // Resource and its first history row in one round trip; the history row is written
            // only if the resource row was.
            let sql = format!(
                "WITH r AS ({insert} RETURNING id) INSERT INTO resource_history \
                 (tenant_id, resource_type, id, version_id, last_updated, method, deleted, content) \
                 SELECT $1, $2, id, 1, $4, 'POST', 0, $5 FROM r"
            );
            if self.exec(&sql, values).await? == 0 {
                return Err(StoreError::AlreadyExists);
            }
        } else {
            if self.exec(insert, values).await? == 0 {
                return Err(StoreError::AlreadyExists);
            }
            self.append_history(&stored, "POST").await?;
        }
        self.write_indexes(resource_type, id.as_str(), &resource).await?;
        Ok(stored)
    }

    /// Replaces a resource with a new version. With `if_match`, the current version must equal
    /// it. A resource that does not exist is created with the given id (FHIR update-as-create),
    /// unless `if_match` is set. Returns the new version and whether it was (re)created: true
    /// when there was no resource or only a deleted one.
    pub async fn update(
        &self,
        resource_type: &str,
        id: &ResourceId,
        mut resource: Json,
        if_match: Option<i64>,
        method: &str,
        now: DateTime<Utc>,
    ) -> Result<(Stored, bool), StoreError> {
        let current = match self.read_current(resource_type, id.as_str(), true).await? {
            Some(current) => current,
            None if if_match.is_some() => return Err(StoreError::NotFound),
            None => match self.create(resource_type, Some(id), resource.clone(), now).await {
                // A concurrent update-as-create of the same id committed first (PostgreSQL's
                // INSERT … ON CONFLICT waited for it): this write becomes its next version.
                Err(StoreError::AlreadyExists) => {
                    self.read_current(resource_type, id.as_str(), true).await?.ok_or(StoreError::NotFound)?
                }
                created => return created.map(|s| (s, true)),
            },
        };
        if let Some(expected) = if_match
            && expected != current.version
        {
            return Err(StoreError::VersionConflict { current: current.version, expected });
        }
        let version = current.version + 1;
        let stored = stamp(&mut resource, resource_type, id.as_str(), version, now)?;
        let changed = self
            .exec(
                "UPDATE resources SET version_id = $4, last_updated = $5, deleted = 0, content = $6 \
                 WHERE tenant_id = $1 AND resource_type = $2 AND id = $3 AND version_id = $7",
                vec![
                    self.tenant.as_str().into(),
                    resource_type.into(),
                    id.as_str().into(),
                    version.into(),
                    stored.last_updated.into(),
                    stored.content.as_str().into(),
                    current.version.into(),
                ],
            )
            .await?;
        if changed != 1 {
            // Only reachable if the row lock above was not taken (it always is); never write
            // a version on top of one we did not read.
            return Err(StoreError::VersionConflict { current: current.version + 1, expected: current.version });
        }
        self.append_history(&stored, method).await?;
        self.delete_indexes(resource_type, id.as_str()).await?;
        self.write_indexes(resource_type, id.as_str(), &resource).await?;
        Ok((stored, current.deleted))
    }

    /// Soft-deletes a resource: a new version marked deleted, kept in history, removed from
    /// search. Returns `None` when there was nothing to delete.
    pub async fn delete(
        &self,
        resource_type: &str,
        id: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<Stored>, StoreError> {
        let Some(current) = self.read_current(resource_type, id, true).await? else {
            return Ok(None);
        };
        if current.deleted {
            return Ok(None);
        }
        let stored = Stored {
            resource_type: resource_type.to_owned(),
            id: id.to_owned(),
            version: current.version + 1,
            last_updated: now.timestamp_millis(),
            deleted: true,
            content: String::new(),
            method: Some("DELETE".to_owned()),
        };
        self.exec(
            "UPDATE resources SET version_id = $4, last_updated = $5, deleted = 1, content = '' \
             WHERE tenant_id = $1 AND resource_type = $2 AND id = $3",
            vec![
                self.tenant.as_str().into(),
                resource_type.into(),
                id.into(),
                stored.version.into(),
                stored.last_updated.into(),
            ],
        )
        .await?;
        self.append_history(&stored, "DELETE").await?;
        self.delete_indexes(resource_type, id).await?;
        Ok(Some(stored))
    }

    async fn append_history(&self, s: &Stored, method: &str) -> Result<(), StoreError> {
        self.exec(
            "INSERT INTO resource_history (tenant_id, resource_type, id, version_id, last_updated, method, deleted, content) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            vec![
                self.tenant.as_str().into(),
                s.resource_type.as_str().into(),
                s.id.as_str().into(),
                s.version.into(),
                s.last_updated.into(),
                method.into(),
                i32::from(s.deleted).into(),
                s.content.as_str().into(),
            ],
        )
        .await?;
        Ok(())
    }

    async fn delete_indexes(&self, resource_type: &str, id: &str) -> Result<(), StoreError> {
        let statements: Vec<String> = ALL_KINDS
            .iter()
            .map(|kind| {
                format!(
                    "DELETE FROM {} WHERE tenant_id = $1 AND resource_type = $2 AND resource_id = $3",
                    table_of(*kind)
                )
            })
            .collect();
        let values = || vec![self.tenant.as_str().into(), resource_type.into(), id.into()];
        if self.backend == DbBackend::Postgres {
            // One round trip instead of seven: data-modifying CTEs run in one statement.
            self.exec(&combine(statements), values()).await?;
        } else {
            for statement in &statements {
                self.exec(statement, values()).await?;
            }
        }
        Ok(())
    }

    /// Writes the search-index rows of a resource: one multi-row INSERT per index table; on
    /// PostgreSQL all of them in one statement (data-modifying CTEs), on SQLite one by one.
    async fn write_indexes(&self, resource_type: &str, id: &str, resource: &Json) -> Result<(), StoreError> {
        let entries = extract(resource_type, resource);
        let rows: Vec<(&str, &IndexEntry)> = entries.iter().map(|e| (id, e)).collect();
        self.write_index_rows(resource_type, &rows).await
    }

    /// Writes index rows of (resource id, entry), a multi-row INSERT per kind and chunk.
    pub(crate) async fn write_index_rows(
        &self,
        resource_type: &str,
        rows: &[(&str, &IndexEntry)],
    ) -> Result<(), StoreError> {
        let combine_statements = self.backend == DbBackend::Postgres;
        let mut batch = IndexBatch::new(&self.tenant, resource_type);
        for kind in ALL_KINDS {
            let of_kind: Vec<(&str, &IndexEntry)> = rows.iter().filter(|(_, e)| e.kind == kind).copied().collect();
            // Chunks keep the bound-parameter count far below SQLite's and PostgreSQL's limits.
            for chunk in of_kind.chunks(200) {
                batch.add(kind, chunk);
                if !combine_statements || batch.sql.values.len() > 20_000 {
                    self.flush(std::mem::replace(&mut batch, IndexBatch::new(&self.tenant, resource_type))).await?;
                }
            }
        }
        self.flush(batch).await
    }

    /// Creates resources of one type with server-assigned ids in a few multi-row statements
    /// instead of a few per resource: the same rows as [`Tx::create`] for each (current version,
    /// index rows, and a history row unless `history` is false — for records that are never
    /// updated, such as AuditEvents, whose only version is the current one). For bulk writers.
    pub async fn create_many(
        &self,
        resource_type: &str,
        resources: Vec<Json>,
        now: DateTime<Utc>,
        history: bool,
    ) -> Result<Vec<Stored>, StoreError> {
        let mut stored = Vec::with_capacity(resources.len());
        let mut entries = Vec::with_capacity(resources.len());
        for mut resource in resources {
            let id = ResourceId::generate();
            let s = stamp(&mut resource, resource_type, id.as_str(), 1, now)?;
            entries.push(extract(resource_type, &resource));
            stored.push(s);
        }
        for chunk in stored.chunks(200) {
            let mut sql = Sql::new(&self.tenant);
            let ty = sql.bind(resource_type);
            let mut rows = Vec::with_capacity(chunk.len());
            let mut history_rows = Vec::with_capacity(chunk.len());
            for s in chunk {
                let (id, at, content) =
                    (sql.bind(s.id.as_str()), sql.bind(s.last_updated), sql.bind(s.content.as_str()));
                rows.push(format!("($1, {ty}, {id}, 1, {at}, 0, {content})"));
                history_rows.push(format!("($1, {ty}, {id}, 1, {at}, 'POST', 0, {content})"));
            }
            let insert = format!(
                "INSERT INTO resources (tenant_id, resource_type, id, version_id, last_updated, deleted, content) VALUES {}",
                rows.join(", ")
            );
            let insert_history = format!(
                "INSERT INTO resource_history (tenant_id, resource_type, id, version_id, last_updated, method, deleted, content) VALUES {}",
                history_rows.join(", ")
            );
            if !history {
                self.exec(&insert, sql.values).await?;
            } else if self.backend == DbBackend::Postgres {
                self.exec(&combine(vec![insert, insert_history]), sql.values).await?;
            } else {
                self.exec(&insert, sql.values.clone()).await?;
                self.exec(&insert_history, sql.values).await?;
            }
        }
        let rows: Vec<(&str, &IndexEntry)> =
            stored.iter().zip(&entries).flat_map(|(s, es)| es.iter().map(move |e| (s.id.as_str(), e))).collect();
        self.write_index_rows(resource_type, &rows).await?;
        Ok(stored)
    }

    async fn flush(&self, batch: IndexBatch) -> Result<(), StoreError> {
        if batch.statements.is_empty() {
            return Ok(());
        }
        self.exec(&combine(batch.statements), batch.sql.values).await?;
        Ok(())
    }

    /// Runs a search: one page of matches, the total if asked for, and included resources.
    pub async fn search(&self, query: &SearchQuery) -> Result<SearchPage, StoreError> {
        let mut page = SearchPage::default();
        let want_total = query.total != TotalMode::None;
        if query.count == 0 {
            page.total = Some(self.count(query).await?);
            return Ok(page);
        }
        // Page ids first, content second: sorting and paging touch only the narrow columns, and
        // only the page's rows are read whole (otherwise every match's content is carried through
        // the sort before LIMIT applies). The total comes from the same statement, as a window
        // count evaluated before LIMIT: the criteria run once, and total and page agree.
        let mut sql = Sql::new(&self.tenant);
        sql.push(if want_total {
            "SELECT r.id, COUNT(*) OVER () AS total FROM resources r WHERE "
        } else {
            "SELECT r.id FROM resources r WHERE "
        });
        sql::where_clause(&mut sql, query);
        let order = sql::order_by(&mut sql, query);
        // One extra row tells whether a next page exists without a second query.
        let limit = sql.bind((query.count + 1) as i64);
        let offset = sql.bind(query.offset as i64);
        sql.push(&format!(" ORDER BY {order} LIMIT {limit} OFFSET {offset}"));
        let rows = self.query(&sql.text, sql.values).await?;
        let ids: Vec<String> = rows.iter().map(|r| r.try_get::<String>("", "id")).collect::<Result<_, _>>()?;
        if want_total {
            page.total = match rows.first() {
                Some(row) => Some(u64::try_from(row.try_get::<i64>("", "total")?).unwrap_or(0)),
                // No row: either nothing matches, or the offset is past the end.
                None if query.offset == 0 => Some(0),
                None => Some(self.count(query).await?),
            };
        }
        page.has_more = ids.len() > query.count;
        let ids = &ids[..ids.len().min(query.count)];
        page.matches = self.fetch(query.resource_type, ids).await?;
        page.included = self.includes(query, &page.matches).await?;
        Ok(page)
    }

    /// The number of resources matching `query`.
    async fn count(&self, query: &SearchQuery) -> Result<u64, StoreError> {
        let mut sql = Sql::new(&self.tenant);
        sql.push("SELECT COUNT(*) AS n FROM resources r WHERE ");
        sql::where_clause(&mut sql, query);
        let rows = self.query(&sql.text, sql.values).await?;
        let n: i64 = rows.first().map(|r| r.try_get("", "n")).transpose()?.unwrap_or(0);
        Ok(u64::try_from(n).unwrap_or(0))
    }

    /// The current versions of `ids` (of one type), in the order of `ids`; missing ones skipped.
    async fn fetch(&self, resource_type: &str, ids: &[String]) -> Result<Vec<Stored>, StoreError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut sql = Sql::new(&self.tenant);
        let ty = sql.bind(resource_type);
        let list: Vec<String> = ids.iter().map(|id| sql.bind(id.as_str())).collect();
        sql.push(&format!(
            "SELECT id, version_id, last_updated, deleted, content FROM resources \
             WHERE tenant_id = $1 AND resource_type = {ty} AND deleted = 0 AND id IN ({})",
            list.join(", ")
        ));
        let rows = self.query(&sql.text, sql.values).await?;
        let mut by_id: std::collections::HashMap<String, Stored> = rows
            .iter()
            .map(|r| row_to_stored(r, Some(resource_type)).map(|s| (s.id.clone(), s)))
            .collect::<Result<_, _>>()?;
        Ok(ids.iter().filter_map(|id| by_id.remove(id)).collect())
    }

    /// Current resources matching `query`'s filters (its paging, sorting and includes are
    /// ignored), in id order after `after` (exclusive), at most `limit` of them: keyset paging
    /// for exports, which walk a whole type in constant memory and can resume from the last id
    /// they wrote.
    pub async fn scan(
        &self,
        query: &SearchQuery,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Stored>, StoreError> {
        let mut sql = Sql::new(&self.tenant);
        sql.push("SELECT r.id, r.version_id, r.last_updated, r.deleted, r.content FROM resources r WHERE ");
        sql::where_clause(&mut sql, query);
        if let Some(after) = after {
            let after = sql.bind(after);
            sql.push(&format!(" AND r.id > {after}"));
        }
        let limit = sql.bind(limit as i64);
        sql.push(&format!(" ORDER BY r.id LIMIT {limit}"));
        let rows = self.query(&sql.text, sql.values).await?;
        rows.iter().map(|r| row_to_stored(r, Some(query.resource_type))).collect()
    }

    /// Ids of the resources matching `query`, at most `limit` of them (for conditional
    /// create/update/delete, which only need to know whether there are 0, 1 or more).
    pub async fn matching_ids(&self, query: &SearchQuery, limit: usize) -> Result<Vec<String>, StoreError> {
        let mut sql = Sql::new(&self.tenant);
        sql.push("SELECT r.id FROM resources r WHERE ");
        sql::where_clause(&mut sql, query);
        let limit = sql.bind(limit as i64);
        sql.push(&format!(" ORDER BY r.id LIMIT {limit}"));
        let rows = self.query(&sql.text, sql.values).await?;
        rows.iter().map(|r| r.try_get::<String>("", "id").map_err(StoreError::from)).collect()
    }

    async fn includes(&self, query: &SearchQuery, matches: &[Stored]) -> Result<Vec<Stored>, StoreError> {
        let mut seen: std::collections::HashSet<(String, String)> =
            matches.iter().map(|m| (m.resource_type.clone(), m.id.clone())).collect();
        let mut included: Vec<Stored> = Vec::new();
        if matches.is_empty() || (query.include.is_empty() && query.revinclude.is_empty()) {
            return Ok(included);
        }
        let mut frontier: Vec<Stored> = matches.to_vec();
        // Round 0 applies every spec to the matches; round 1 applies `:iterate` specs to what
        // round 0 added. Deeper iteration is cut off (and bounded by MAX_INCLUDED anyway).
        for round in 0..2 {
            let mut added = Vec::new();
            for spec in &query.include {
                if round > 0 && !spec.iterate {
                    continue;
                }
                let sources: Vec<&Stored> = frontier.iter().filter(|s| s.resource_type == spec.source_type).collect();
                for target in self.forward_targets(spec, &sources).await? {
                    if seen.insert((target.0.clone(), target.1.clone()))
                        && let Some(s) = self.read(&target.0, &target.1).await?.filter(|s| !s.deleted)
                    {
                        added.push(s);
                    }
                }
            }
            for spec in &query.revinclude {
                if round > 0 && !spec.iterate {
                    continue;
                }
                for s in self.reverse_sources(spec, &frontier).await? {
                    if seen.insert((s.resource_type.clone(), s.id.clone())) {
                        added.push(s);
                    }
                }
            }
            if added.is_empty() {
                break;
            }
            included.extend(added.iter().cloned());
            if included.len() >= MAX_INCLUDED {
                included.truncate(MAX_INCLUDED);
                break;
            }
            frontier = added;
        }
        Ok(included)
    }

    /// `(type, id)` of the resources that `sources` reference through `spec.param`.
    async fn forward_targets(
        &self,
        spec: &IncludeSpec,
        sources: &[&Stored],
    ) -> Result<Vec<(String, String)>, StoreError> {
        if sources.is_empty() {
            return Ok(Vec::new());
        }
        let mut sql = Sql::new(&self.tenant);
        let ty = sql.bind(spec.source_type);
        let param = sql.bind(spec.param.name);
        let ids: Vec<String> = sources.iter().map(|s| sql.bind(s.id.as_str())).collect();
        sql.push(&format!(
            "SELECT DISTINCT target_type, target_id FROM sp_reference WHERE tenant_id = $1 AND resource_type = {ty} \
             AND param = {param} AND resource_id IN ({}) AND target_id IS NOT NULL",
            ids.join(", ")
        ));
        if let Some(t) = spec.target_type {
            let t = sql.bind(t);
            sql.push(&format!(" AND target_type = {t}"));
        }
        let rows = self.query(&sql.text, sql.values).await?;
        let mut out = Vec::new();
        for r in rows {
            let t: Option<String> = r.try_get("", "target_type")?;
            let i: Option<String> = r.try_get("", "target_id")?;
            if let (Some(t), Some(i)) = (t, i) {
                out.push((t, i));
            }
        }
        out.sort();
        Ok(out)
    }

    /// Resources of `spec.source_type` whose `spec.param` references one of `targets`.
    async fn reverse_sources(&self, spec: &IncludeSpec, targets: &[Stored]) -> Result<Vec<Stored>, StoreError> {
        let mut out = Vec::new();
        let types: std::collections::BTreeSet<&str> = targets.iter().map(|t| t.resource_type.as_str()).collect();
        for target_type in types {
            if spec.target_type.is_some_and(|t| t != target_type) {
                continue;
            }
            let mut sql = Sql::new(&self.tenant);
            let src = sql.bind(spec.source_type);
            let param = sql.bind(spec.param.name);
            let tt = sql.bind(target_type);
            let ids: Vec<String> =
                targets.iter().filter(|t| t.resource_type == target_type).map(|t| sql.bind(t.id.as_str())).collect();
            let limit = sql.bind(MAX_INCLUDED as i64);
            sql.push(&format!(
                "SELECT r.id, r.version_id, r.last_updated, r.deleted, r.content FROM resources r \
                 WHERE r.tenant_id = $1 AND r.resource_type = {src} AND r.deleted = 0 AND r.id IN (\
                 SELECT resource_id FROM sp_reference WHERE tenant_id = $1 AND resource_type = {src} \
                 AND param = {param} AND target_type = {tt} AND target_id IN ({})) ORDER BY r.id LIMIT {limit}",
                ids.join(", ")
            ));
            for row in self.query(&sql.text, sql.values).await? {
                out.push(row_to_stored(&row, Some(spec.source_type))?);
            }
        }
        Ok(out)
    }

    /// History entries, newest first, with the number of entries in the whole history.
    pub async fn history(
        &self,
        scope: HistoryScope<'_>,
        since: Option<i64>,
        count: usize,
        offset: usize,
    ) -> Result<(Vec<Stored>, u64), StoreError> {
        let mut sql = Sql::new(&self.tenant);
        let mut cond = "tenant_id = $1".to_owned();
        match scope {
            HistoryScope::Instance(t, id) => {
                cond.push_str(&format!(" AND resource_type = {} AND id = {}", sql.bind(t), sql.bind(id)));
            }
            HistoryScope::Type(t) => cond.push_str(&format!(" AND resource_type = {}", sql.bind(t))),
            HistoryScope::System(types) => {
                let list: Vec<String> = types.iter().map(|t| sql.bind(*t)).collect();
                cond.push_str(&format!(" AND resource_type IN ({})", list.join(", ")));
            }
        }
        if let Some(since) = since {
            cond.push_str(&format!(" AND last_updated >= {}", sql.bind(since)));
        }
        let count_sql = format!("SELECT COUNT(*) AS n FROM resource_history WHERE {cond}");
        let rows = self.query(&count_sql, sql.values.clone()).await?;
        let total: i64 = rows.first().map(|r| r.try_get("", "n")).transpose()?.unwrap_or(0);
        let limit = sql.bind(count as i64);
        let off = sql.bind(offset as i64);
        let list_sql = format!(
            "SELECT resource_type, id, version_id, last_updated, deleted, content, method FROM resource_history \
             WHERE {cond} ORDER BY last_updated DESC, version_id DESC, resource_type, id LIMIT {limit} OFFSET {off}"
        );
        let rows = self.query(&list_sql, sql.values).await?;
        let entries = rows.iter().map(|r| row_to_stored(r, None)).collect::<Result<Vec<_>, _>>()?;
        Ok((entries, u64::try_from(total).unwrap_or(0)))
    }
}

/// Joins statements into one: the last is the main statement, the others become CTEs
/// (`WITH s0 AS (…), s1 AS (…) <last>`). Only PostgreSQL runs data-modifying CTEs; callers pass a
/// single statement on SQLite.
fn combine(mut statements: Vec<String>) -> String {
    let Some(last) = statements.pop() else {
        return String::new();
    };
    if statements.is_empty() {
        return last;
    }
    let ctes: Vec<String> = statements.iter().enumerate().map(|(i, s)| format!("s{i} AS ({s})")).collect();
    format!("WITH {} {last}", ctes.join(", "))
}

/// INSERT statements of index rows sharing one set of bound values (`$1` tenant, `$2` resource
/// type; each row binds its resource id).
struct IndexBatch {
    sql: Sql,
    ty: String,
    statements: Vec<String>,
}

impl IndexBatch {
    fn new(tenant: &str, resource_type: &str) -> Self {
        let mut sql = Sql::new(tenant);
        let ty = sql.bind(resource_type);
        Self { sql, ty, statements: Vec::new() }
    }

    /// Adds one multi-row INSERT of `entries` (resource id, entry), all of `kind`.
    fn add(&mut self, kind: ParamKind, entries: &[(&str, &IndexEntry)]) {
        if entries.is_empty() {
            return;
        }
        let columns = match kind {
            ParamKind::Token => "system, code",
            ParamKind::String => "normalized, exact",
            ParamKind::Date => "low, high",
            ParamKind::Reference => "target_type, target_id, url",
            ParamKind::Quantity => "value, system, code",
            ParamKind::Number => "value",
            ParamKind::Uri => "uri",
        };
        let sql = &mut self.sql;
        let mut rows = Vec::with_capacity(entries.len());
        let mut last_id: Option<(&str, String)> = None;
        for (id, e) in entries {
            // Consecutive rows of one resource share its bound id.
            let rid = match &last_id {
                Some((prev, placeholder)) if prev == id => placeholder.clone(),
                _ => {
                    let placeholder = sql.bind(*id);
                    last_id = Some((id, placeholder.clone()));
                    placeholder
                }
            };
            let param = sql.bind(e.param);
            let opt = |v: &Option<String>| v.as_deref().map(|s| clip(s).to_owned());
            let vals: Vec<String> = match &e.value {
                IndexValue::Token { system, code } => vec![sql.bind(opt(system)), sql.bind(opt(code))],
                IndexValue::String { normalized, exact } => {
                    vec![sql.bind(clip(normalized)), sql.bind(clip(exact))]
                }
                IndexValue::Date(r) => vec![sql.bind(r.low), sql.bind(r.high)],
                IndexValue::Reference { target_type, target_id, url } => {
                    vec![sql.bind(opt(target_type)), sql.bind(opt(target_id)), sql.bind(clip(url))]
                }
                IndexValue::Quantity { value, system, code } => {
                    vec![sql.bind(*value), sql.bind(opt(system)), sql.bind(opt(code))]
                }
                IndexValue::Number(n) => vec![sql.bind(*n)],
                IndexValue::Uri(u) => vec![sql.bind(clip(u))],
            };
            rows.push(format!("($1, {}, {rid}, {param}, {})", self.ty, vals.join(", ")));
        }
        self.statements.push(format!(
            "INSERT INTO {} (tenant_id, resource_type, resource_id, param, {columns}) VALUES {}",
            table_of(kind),
            rows.join(", ")
        ));
    }
}

/// Longest text stored in an index row. PostgreSQL refuses a B-tree entry above about 2.7 kB
/// (a whole write would fail, an audit batch included); no search value is that long, so longer
/// ones are indexed by their first 512 bytes (the resource itself keeps them whole).
const MAX_INDEXED_BYTES: usize = 512;

fn clip(s: &str) -> &str {
    if s.len() <= MAX_INDEXED_BYTES {
        return s;
    }
    let mut end = MAX_INDEXED_BYTES;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

const ALL_KINDS: [ParamKind; 7] = [
    ParamKind::Token,
    ParamKind::String,
    ParamKind::Date,
    ParamKind::Reference,
    ParamKind::Quantity,
    ParamKind::Number,
    ParamKind::Uri,
];

/// Sets `id`, `meta.versionId` and `meta.lastUpdated` and serialises the resource.
fn stamp(
    resource: &mut Json,
    resource_type: &str,
    id: &str,
    version: i64,
    now: DateTime<Utc>,
) -> Result<Stored, StoreError> {
    let last_updated = now.timestamp_millis();
    let Json::Object(map) = resource else {
        return Err(StoreError::Internal("resource is not a JSON object".into()));
    };
    map.insert("resourceType".into(), json!(resource_type));
    map.insert("id".into(), json!(id));
    let meta = map.entry("meta").or_insert_with(|| json!({}));
    if let Json::Object(meta) = meta {
        meta.insert("versionId".into(), json!(version.to_string()));
        meta.insert("lastUpdated".into(), json!(format_instant(last_updated)));
    }
    let content = serde_json::to_string(resource).map_err(|e| StoreError::Internal(e.to_string()))?;
    Ok(Stored {
        resource_type: resource_type.to_owned(),
        id: id.to_owned(),
        version,
        last_updated,
        deleted: false,
        content,
        method: None,
    })
}
