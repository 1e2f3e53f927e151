//! Forward-only schema migrations, portable between SQLite and PostgreSQL.
//!
//! The same SQL runs on both; the few PostgreSQL-only statements (row-level security, the
//! application role, pattern-ops indexes) are added when the backend is PostgreSQL.

use sea_orm::{ConnectionTrait, DbBackend};
use sea_orm_migration::prelude::*;

/// The migrations, in order.
pub struct Migrator;

impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(M0001ResourceStore),
            Box::new(M0002Identity),
            Box::new(M0003Outbox),
            Box::new(M0004Lab),
            Box::new(M0005Export),
            Box::new(M0006National),
            Box::new(M0007Hl7Trace),
            Box::new(M0008Metrics),
        ]
    }
}

/// Tables of tenant-scoped data; each gets a row-level-security policy on PostgreSQL.
pub(crate) const TENANT_TABLES: &[&str] = &[
    "resources",
    "resource_history",
    "sp_token",
    "sp_string",
    "sp_date",
    "sp_reference",
    "sp_quantity",
    "sp_number",
    "sp_uri",
];

const SCHEMA: &str = r#"
CREATE TABLE resources (
    tenant_id     TEXT    NOT NULL,
    resource_type TEXT    NOT NULL,
    id            TEXT    NOT NULL,
    version_id    BIGINT  NOT NULL,
    last_updated  BIGINT  NOT NULL,
    deleted       INTEGER NOT NULL DEFAULT 0,
    content       TEXT    NOT NULL,
    PRIMARY KEY (tenant_id, resource_type, id)
);
CREATE INDEX resources_updated ON resources (tenant_id, resource_type, last_updated, id);

CREATE TABLE resource_history (
    tenant_id     TEXT    NOT NULL,
    resource_type TEXT    NOT NULL,
    id            TEXT    NOT NULL,
    version_id    BIGINT  NOT NULL,
    last_updated  BIGINT  NOT NULL,
    method        TEXT    NOT NULL,
    deleted       INTEGER NOT NULL DEFAULT 0,
    content       TEXT    NOT NULL,
    PRIMARY KEY (tenant_id, resource_type, id, version_id)
);
CREATE INDEX resource_history_updated ON resource_history (tenant_id, last_updated);

CREATE TABLE sp_token (
    tenant_id TEXT NOT NULL, resource_type TEXT NOT NULL, resource_id TEXT NOT NULL, param TEXT NOT NULL,
    system TEXT, code TEXT
);
CREATE INDEX sp_token_value ON sp_token (tenant_id, resource_type, param, code, system);
CREATE INDEX sp_token_owner ON sp_token (tenant_id, resource_type, resource_id);

CREATE TABLE sp_string (
    tenant_id TEXT NOT NULL, resource_type TEXT NOT NULL, resource_id TEXT NOT NULL, param TEXT NOT NULL,
    normalized TEXT NOT NULL, exact TEXT NOT NULL
);
CREATE INDEX sp_string_exact ON sp_string (tenant_id, resource_type, param, exact);
CREATE INDEX sp_string_prefix ON sp_string (tenant_id, resource_type, param, normalized);
CREATE INDEX sp_string_owner ON sp_string (tenant_id, resource_type, resource_id);

CREATE TABLE sp_date (
    tenant_id TEXT NOT NULL, resource_type TEXT NOT NULL, resource_id TEXT NOT NULL, param TEXT NOT NULL,
    low BIGINT NOT NULL, high BIGINT NOT NULL
);
CREATE INDEX sp_date_value ON sp_date (tenant_id, resource_type, param, low, high);
CREATE INDEX sp_date_owner ON sp_date (tenant_id, resource_type, resource_id);

CREATE TABLE sp_reference (
    tenant_id TEXT NOT NULL, resource_type TEXT NOT NULL, resource_id TEXT NOT NULL, param TEXT NOT NULL,
    target_type TEXT, target_id TEXT, url TEXT NOT NULL
);
CREATE INDEX sp_reference_value ON sp_reference (tenant_id, resource_type, param, target_id, target_type);
CREATE INDEX sp_reference_target ON sp_reference (tenant_id, target_type, target_id);
CREATE INDEX sp_reference_owner ON sp_reference (tenant_id, resource_type, resource_id);

CREATE TABLE sp_quantity (
    tenant_id TEXT NOT NULL, resource_type TEXT NOT NULL, resource_id TEXT NOT NULL, param TEXT NOT NULL,
    value DOUBLE PRECISION NOT NULL, system TEXT, code TEXT
);
CREATE INDEX sp_quantity_value ON sp_quantity (tenant_id, resource_type, param, value);
CREATE INDEX sp_quantity_owner ON sp_quantity (tenant_id, resource_type, resource_id);

CREATE TABLE sp_number (
    tenant_id TEXT NOT NULL, resource_type TEXT NOT NULL, resource_id TEXT NOT NULL, param TEXT NOT NULL,
    value DOUBLE PRECISION NOT NULL
);
CREATE INDEX sp_number_value ON sp_number (tenant_id, resource_type, param, value);
CREATE INDEX sp_number_owner ON sp_number (tenant_id, resource_type, resource_id);

CREATE TABLE sp_uri (
    tenant_id TEXT NOT NULL, resource_type TEXT NOT NULL, resource_id TEXT NOT NULL, param TEXT NOT NULL,
    uri TEXT NOT NULL
);
CREATE INDEX sp_uri_value ON sp_uri (tenant_id, resource_type, param, uri);
CREATE INDEX sp_uri_owner ON sp_uri (tenant_id, resource_type, resource_id);
"#;

/// Row-level security on a tenant-scoped table (PostgreSQL): the policy confining every
/// transaction to the tenant it set, forced on the owner too, and the application role's grant
/// (tolerating a missing role, which the first migration reports).
fn tenant_isolation(table: &str) -> String {
    format!(
        "ALTER TABLE {table} ENABLE ROW LEVEL SECURITY;
         ALTER TABLE {table} FORCE ROW LEVEL SECURITY;
         CREATE POLICY tenant_isolation ON {table}
           USING (tenant_id = current_setting('ehr.tenant', true))
           WITH CHECK (tenant_id = current_setting('ehr.tenant', true));
         DO $$ BEGIN
           GRANT SELECT, INSERT, UPDATE, DELETE ON {table} TO {APP_ROLE};
         EXCEPTION WHEN undefined_object THEN NULL;
         END $$"
    )
}

/// The application role's grant on a table (tolerating a missing role, which the first
/// migration reports).
fn app_grant(table: &str) -> String {
    format!(
        "DO $$ BEGIN
           GRANT SELECT, INSERT, UPDATE, DELETE ON {table} TO {APP_ROLE};
         EXCEPTION WHEN undefined_object THEN NULL;
         END $$"
    )
}

/// The role the application switches to in every PostgreSQL transaction (see `Store`). It is
/// not a superuser and does not bypass row-level security, whatever role the pool logs in as.
pub const APP_ROLE: &str = "ehr_app";

struct M0001ResourceStore;

impl MigrationName for M0001ResourceStore {
    fn name(&self) -> &str {
        "m0001_resource_store"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for M0001ResourceStore {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        for statement in SCHEMA.split(';').map(str::trim).filter(|s| !s.is_empty()) {
            db.execute_unprepared(statement).await?;
        }
        if db.get_database_backend() == DbBackend::Postgres {
            // String prefix search is a range on `normalized` ([prefix, successor)), which is only
            // a prefix match under code-point order: SQLite's BINARY collation is that; on
            // PostgreSQL the column gets the "C" collation (the index is rebuilt with it).
            db.execute_unprepared("ALTER TABLE sp_string ALTER COLUMN normalized TYPE TEXT COLLATE \"C\"").await?;
            // The application role: created when the migrating user may create roles, and
            // granted to the migrating user so that it can switch to it per transaction.
            db.execute_unprepared(&format!(
                "DO $$ BEGIN
                   IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{APP_ROLE}') THEN
                     CREATE ROLE {APP_ROLE} NOLOGIN NOBYPASSRLS;
                   END IF;
                   EXECUTE format('GRANT {APP_ROLE} TO %I', current_user);
                 EXCEPTION
                   WHEN insufficient_privilege THEN
                     RAISE NOTICE 'cannot create or grant role {APP_ROLE}; configure database.app_role';
                   -- Another database of the cluster migrating at the same moment created it.
                   WHEN duplicate_object OR unique_violation THEN NULL;
                 END $$"
            ))
            .await?;
            // Read of one current resource in one round trip: the function sets the tenant (and
            // role, statement timeout) transaction-locally and then reads, inside the implicit
            // transaction of the single statement — the same walls as a `Tx`, without BEGIN,
            // set_config and COMMIT as separate round trips. Runs with the caller's rights.
            db.execute_unprepared(
                "CREATE OR REPLACE FUNCTION ehr_read_current(p_tenant text, p_role text, p_timeout text, p_type text, p_id text)
                 RETURNS TABLE (id text, version_id bigint, last_updated bigint, deleted integer, content text)
                 LANGUAGE plpgsql AS $fn$
                 BEGIN
                   PERFORM set_config('ehr.tenant', p_tenant, true);
                   PERFORM set_config('statement_timeout', p_timeout, true);
                   IF p_role <> '' THEN
                     PERFORM set_config('role', p_role, true);
                   END IF;
                   RETURN QUERY SELECT r.id, r.version_id, r.last_updated, r.deleted, r.content
                     FROM resources r
                     WHERE r.tenant_id = p_tenant AND r.resource_type = p_type AND r.id = p_id;
                 END
                 $fn$",
            )
            .await?;
            for table in TENANT_TABLES {
                // Second wall behind the tenant predicate every query carries: a query that
                // forgot it still sees only the rows of the tenant set for the transaction.
                db.execute_unprepared(&tenant_isolation(table)).await?;
            }
        }
        Ok(())
    }
}

/// Tenant-scoped tables added by m0002; row-level security as for [`TENANT_TABLES`].
const IDENTITY_TENANT_TABLES: &[&str] = &["users", "recovery_codes", "audit_chain", "audit_head"];

/// Tables read before a tenant is known (a client id, a signing key) or across tenants; no
/// row-level security, only the grant to the application role.
const SYSTEM_TABLES: &[&str] = &["tenants", "oauth_clients", "signing_keys"];

const IDENTITY_SCHEMA: &str = r#"
CREATE TABLE tenants (
    id         TEXT    NOT NULL PRIMARY KEY,
    name       TEXT    NOT NULL,
    active     INTEGER NOT NULL,
    created_at BIGINT  NOT NULL
);

CREATE TABLE users (
    tenant_id     TEXT    NOT NULL,
    id            TEXT    NOT NULL,
    username      TEXT    NOT NULL,
    display_name  TEXT    NOT NULL,
    password_hash TEXT    NOT NULL,
    roles         TEXT    NOT NULL,
    active        INTEGER NOT NULL,
    created_at    BIGINT  NOT NULL,
    updated_at    BIGINT  NOT NULL,
    last_login_at BIGINT,
    mfa_secret    TEXT,
    mfa_confirmed INTEGER NOT NULL DEFAULT 0,
    mfa_last_step BIGINT,
    fhir_user     TEXT,
    PRIMARY KEY (tenant_id, id),
    UNIQUE (tenant_id, username)
);

CREATE TABLE recovery_codes (
    tenant_id TEXT   NOT NULL,
    user_id   TEXT   NOT NULL,
    code_hash TEXT   NOT NULL,
    used_at   BIGINT,
    PRIMARY KEY (tenant_id, user_id, code_hash)
);

CREATE TABLE oauth_clients (
    client_id     TEXT    NOT NULL PRIMARY KEY,
    tenant_id     TEXT    NOT NULL,
    name          TEXT    NOT NULL,
    kind          TEXT    NOT NULL,
    redirect_uris TEXT    NOT NULL,
    jwks          TEXT,
    scope         TEXT    NOT NULL,
    active        INTEGER NOT NULL,
    created_at    BIGINT  NOT NULL
);
CREATE INDEX oauth_clients_tenant ON oauth_clients (tenant_id);

CREATE TABLE signing_keys (
    kid         TEXT   NOT NULL PRIMARY KEY,
    private_pem TEXT   NOT NULL,
    public_jwk  TEXT   NOT NULL,
    created_at  BIGINT NOT NULL,
    retire_at   BIGINT NOT NULL,
    expires_at  BIGINT NOT NULL
);

CREATE TABLE audit_chain (
    tenant_id   TEXT   NOT NULL,
    seq         BIGINT NOT NULL,
    resource_id TEXT   NOT NULL,
    hash        TEXT   NOT NULL,
    PRIMARY KEY (tenant_id, seq)
);
CREATE INDEX audit_chain_resource ON audit_chain (tenant_id, resource_id);

CREATE TABLE audit_head (
    tenant_id TEXT   NOT NULL PRIMARY KEY,
    seq       BIGINT NOT NULL,
    hash      TEXT   NOT NULL
);
"#;

struct M0002Identity;

impl MigrationName for M0002Identity {
    fn name(&self) -> &str {
        "m0002_identity"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for M0002Identity {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        for statement in IDENTITY_SCHEMA.split(';').map(str::trim).filter(|s| !s.is_empty()) {
            db.execute_unprepared(statement).await?;
        }
        if db.get_database_backend() == DbBackend::Postgres {
            // The application role exists (or was reported missing) since m0001; a missing role
            // is tolerated here for the same reason.
            for table in IDENTITY_TENANT_TABLES {
                // The same two walls as the resource tables (see m0001): every statement binds
                // the tenant, and the policy confines a transaction to the tenant it set.
                db.execute_unprepared(&tenant_isolation(table)).await?;
            }
            for table in SYSTEM_TABLES {
                db.execute_unprepared(&app_grant(table)).await?;
            }
        }
        Ok(())
    }
}

/// The role a relay transaction switches to on PostgreSQL (see m0003 and `crate::outbox`): it
/// reads, marks and purges the outbox of every tenant, purges receipts, and nothing else.
pub const RELAY_ROLE: &str = "ehr_relay";

/// The outbox column that orders events: an identity column on PostgreSQL; on SQLite an
/// AUTOINCREMENT rowid, which (unlike a plain rowid) is never reused after the newest rows are
/// purged, so a consumer's cursor never sees a number twice.
fn outbox_schema(backend: DbBackend) -> String {
    let seq = match backend {
        DbBackend::Postgres => "seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY",
        _ => "seq INTEGER PRIMARY KEY AUTOINCREMENT",
    };
    format!(
        r#"
CREATE TABLE outbox (
    {seq},
    id           TEXT   NOT NULL UNIQUE,
    tenant_id    TEXT   NOT NULL,
    topic        TEXT   NOT NULL,
    key          TEXT   NOT NULL,
    payload      TEXT   NOT NULL,
    trace        TEXT,
    created_at   BIGINT NOT NULL,
    published_at BIGINT
);
CREATE INDEX outbox_unpublished ON outbox (seq) WHERE published_at IS NULL;
CREATE INDEX outbox_published ON outbox (published_at);

CREATE TABLE event_receipts (
    tenant_id    TEXT   NOT NULL,
    consumer     TEXT   NOT NULL,
    event_id     TEXT   NOT NULL,
    processed_at BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, consumer, event_id)
);
CREATE INDEX event_receipts_processed ON event_receipts (processed_at);

CREATE TABLE event_cursors (
    consumer   TEXT   NOT NULL,
    topic      TEXT   NOT NULL,
    seq        BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (consumer, topic)
);

CREATE TABLE event_dead_letters (
    consumer   TEXT    NOT NULL,
    seq        BIGINT  NOT NULL,
    event_id   TEXT    NOT NULL,
    topic      TEXT    NOT NULL,
    deliveries INTEGER NOT NULL,
    dead_at    BIGINT  NOT NULL,
    PRIMARY KEY (consumer, seq)
)
"#
    )
}

struct M0003Outbox;

impl MigrationName for M0003Outbox {
    fn name(&self) -> &str {
        "m0003_outbox"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for M0003Outbox {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        let backend = db.get_database_backend();
        for statement in outbox_schema(backend).split(';').map(str::trim).filter(|s| !s.is_empty()) {
            db.execute_unprepared(statement).await?;
        }
        if backend == DbBackend::Postgres {
            // Events and receipts are tenant data: the same two walls as every tenant table.
            for table in ["outbox", "event_receipts"] {
                db.execute_unprepared(&tenant_isolation(table)).await?;
            }
            // The LocalBus's cursors and dead-letter marks hold consumer names, topics, sequence
            // numbers and event ids, no tenant data: system tables.
            for table in ["event_cursors", "event_dead_letters"] {
                db.execute_unprepared(&app_grant(table)).await?;
            }
            // The relay's role (why a role and not a policy on the empty tenant: see
            // `crate::outbox`). Created when the migrating user may create roles, and granted to
            // it so that its pool can switch to it per transaction, like the application role.
            db.execute_unprepared(&format!(
                "DO $$ BEGIN
                   IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{RELAY_ROLE}') THEN
                     CREATE ROLE {RELAY_ROLE} NOLOGIN NOBYPASSRLS;
                   END IF;
                 EXCEPTION
                   WHEN insufficient_privilege THEN
                     RAISE NOTICE 'cannot create role {RELAY_ROLE}; the outbox relay will fail';
                   -- Another database of the cluster migrating at the same moment created it.
                   WHEN duplicate_object OR unique_violation THEN NULL;
                 END $$"
            ))
            .await?;
            db.execute_unprepared(&format!(
                "DO $$ BEGIN
                   EXECUTE format('GRANT {RELAY_ROLE} TO %I', current_user);
                 EXCEPTION WHEN insufficient_privilege OR undefined_object THEN
                   RAISE NOTICE 'cannot grant role {RELAY_ROLE}; the outbox relay will fail';
                 END $$"
            ))
            .await?;
            // Permissive policies for that role only, OR-ed with `tenant_isolation`: every
            // tenant's events may be read, marked published and purged. The column grant keeps
            // an event's content immutable even for the relay; there is no INSERT grant, so the
            // relay cannot forge an event.
            db.execute_unprepared(&format!(
                "DO $$ BEGIN
                   CREATE POLICY relay_read ON outbox FOR SELECT TO {RELAY_ROLE} USING (true);
                   CREATE POLICY relay_mark ON outbox FOR UPDATE TO {RELAY_ROLE} USING (true) WITH CHECK (true);
                   CREATE POLICY relay_purge ON outbox FOR DELETE TO {RELAY_ROLE} USING (true);
                   GRANT SELECT, DELETE ON outbox TO {RELAY_ROLE};
                   GRANT UPDATE (published_at) ON outbox TO {RELAY_ROLE};
                   CREATE POLICY relay_read ON event_receipts FOR SELECT TO {RELAY_ROLE} USING (true);
                   CREATE POLICY relay_purge ON event_receipts FOR DELETE TO {RELAY_ROLE} USING (true);
                   GRANT SELECT, DELETE ON event_receipts TO {RELAY_ROLE};
                 EXCEPTION WHEN undefined_object THEN NULL;
                 END $$"
            ))
            .await?;
        }
        Ok(())
    }
}

/// m0004: the lab-interface service's endpoints and HL7 v2 message log (see `lab.rs`).
struct M0004Lab;

impl MigrationName for M0004Lab {
    fn name(&self) -> &str {
        "m0004_lab"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for M0004Lab {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        for statement in crate::lab::LAB_SCHEMA.split(';').map(str::trim).filter(|s| !s.is_empty()) {
            db.execute_unprepared(statement).await?;
        }
        if db.get_database_backend() == DbBackend::Postgres {
            for table in crate::lab::LAB_TENANT_TABLES {
                db.execute_unprepared(&tenant_isolation(table)).await?;
            }
            for table in crate::lab::LAB_SYSTEM_TABLES {
                db.execute_unprepared(&app_grant(table)).await?;
            }
        }
        Ok(())
    }
}

/// m0005: the data-export service's jobs, their finished files and the queue its workers poll (see
/// `export.rs`).
struct M0005Export;

impl MigrationName for M0005Export {
    fn name(&self) -> &str {
        "m0005_export"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for M0005Export {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        for statement in crate::export::EXPORT_SCHEMA.split(';').map(str::trim).filter(|s| !s.is_empty()) {
            db.execute_unprepared(statement).await?;
        }
        if db.get_database_backend() == DbBackend::Postgres {
            for table in crate::export::EXPORT_TENANT_TABLES {
                db.execute_unprepared(&tenant_isolation(table)).await?;
            }
            for table in crate::export::EXPORT_SYSTEM_TABLES {
                db.execute_unprepared(&app_grant(table)).await?;
            }
        }
        Ok(())
    }
}

/// m0006: the national-service adapters' submission log and the queue their workers poll (see
/// `national.rs`).
struct M0006National;

impl MigrationName for M0006National {
    fn name(&self) -> &str {
        "m0006_national"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for M0006National {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        for statement in crate::national::NATIONAL_SCHEMA.split(';').map(str::trim).filter(|s| !s.is_empty()) {
            db.execute_unprepared(statement).await?;
        }
        if db.get_database_backend() == DbBackend::Postgres {
            for table in crate::national::NATIONAL_TENANT_TABLES {
                db.execute_unprepared(&tenant_isolation(table)).await?;
            }
            for table in crate::national::NATIONAL_SYSTEM_TABLES {
                db.execute_unprepared(&app_grant(table)).await?;
            }
        }
        Ok(())
    }
}

/// m0007: the W3C trace context of each HL7 v2 message (`hl7_messages.trace`, see `lab.rs`), so
/// that sending an order continues the trace of the request that placed it.
struct M0007Hl7Trace;

impl MigrationName for M0007Hl7Trace {
    fn name(&self) -> &str {
        "m0007_hl7_trace"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for M0007Hl7Trace {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // A new nullable column: the table's row-level security and grants cover it as they are.
        manager.get_connection().execute_unprepared(crate::lab::HL7_TRACE_SCHEMA).await?;
        Ok(())
    }
}

/// The role a metrics transaction switches to on PostgreSQL (see m0008 and `crate::stats`): it
/// reads, across tenants, the columns the queue gauges count by — and nothing else.
pub const METRICS_ROLE: &str = "ehr_metrics";

/// m0008: the metrics role ([`METRICS_ROLE`]), so that the gauges of the HL7 v2 queue and the
/// export jobs are one statement across tenants instead of a transaction per tenant. Like the
/// relay's role (m0003; a `SECURITY DEFINER` function would not do: forced row-level security
/// confines the table owner too), but narrower: a permissive policy for reading only, and a
/// column grant of the status and time columns — no ids, subjects, payloads or errors.
struct M0008Metrics;

impl MigrationName for M0008Metrics {
    fn name(&self) -> &str {
        "m0008_metrics"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for M0008Metrics {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        if db.get_database_backend() != DbBackend::Postgres {
            // SQLite has no row-level security: the store reads across tenants as it is.
            return Ok(());
        }
        db.execute_unprepared(&format!(
            "DO $$ BEGIN
               IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{METRICS_ROLE}') THEN
                 CREATE ROLE {METRICS_ROLE} NOLOGIN NOBYPASSRLS;
               END IF;
             EXCEPTION
               WHEN insufficient_privilege THEN
                 RAISE NOTICE 'cannot create role {METRICS_ROLE}; the queue gauges will be absent';
               WHEN duplicate_object OR unique_violation THEN NULL;
             END $$"
        ))
        .await?;
        db.execute_unprepared(&format!(
            "DO $$ BEGIN
               EXECUTE format('GRANT {METRICS_ROLE} TO %I', current_user);
             EXCEPTION WHEN insufficient_privilege OR undefined_object THEN
               RAISE NOTICE 'cannot grant role {METRICS_ROLE}; the queue gauges will be absent';
             END $$"
        ))
        .await?;
        // Permissive read policies for that role only (OR-ed with `tenant_isolation`), and
        // SELECT on the counted columns only: no INSERT, UPDATE or DELETE, no other column.
        db.execute_unprepared(&format!(
            "DO $$ BEGIN
               CREATE POLICY metrics_read ON hl7_messages FOR SELECT TO {METRICS_ROLE} USING (true);
               GRANT SELECT (direction, status, created_at) ON hl7_messages TO {METRICS_ROLE};
               CREATE POLICY metrics_read ON export_jobs FOR SELECT TO {METRICS_ROLE} USING (true);
               GRANT SELECT (state) ON export_jobs TO {METRICS_ROLE};
             EXCEPTION WHEN undefined_object THEN NULL;
             END $$"
        ))
        .await?;
        Ok(())
    }
}
