//! Store tests, run on SQLite and, when it is reachable, on PostgreSQL.
//!
//! PostgreSQL is reached through `TEST_POSTGRES_URL` (default
//! `postgres://postgres@127.0.0.1:5432/postgres`); every test gets a database of its own,
//! `ehr_test_<uuid>`, dropped when the test passes. SQLite gets a file in a fresh temporary
//! directory: the store's writer and reader pools must share the database, which an in-memory
//! one would not.

use crate::{Store, StoreConfig};
use chrono::{DateTime, Utc};
use ehr_core::{TenantContext, TenantId};
use sea_orm::{ConnectOptions, ConnectionTrait, Database, DatabaseConnection, TransactionTrait};
use std::path::PathBuf;
use std::time::Duration;

mod audit;
mod backup;
mod export;
mod identity;
mod national;
mod outbox;
mod stats;

/// One database with the migrated store on it.
pub(crate) struct TestDb {
    pub store: Store,
    /// A connection of the login role (PostgreSQL: the superuser), for tampering behind the
    /// store's back.
    raw: DatabaseConnection,
    cleanup: Cleanup,
}

enum Cleanup {
    Dir(PathBuf),
    Postgres { admin: String, name: String },
}

fn unique() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

fn admin_url() -> String {
    std::env::var("TEST_POSTGRES_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// A database backend to run a test on.
pub(crate) enum Backend {
    Sqlite,
    Postgres,
}

/// SQLite, and PostgreSQL when it answers at `TEST_POSTGRES_URL`.
pub(crate) async fn backends() -> Vec<Backend> {
    let mut options = ConnectOptions::new(admin_url());
    options.connect_timeout(Duration::from_secs(3)).sqlx_logging(false);
    match Database::connect(options).await {
        Ok(conn) => {
            let _ = conn.close().await;
            vec![Backend::Sqlite, Backend::Postgres]
        }
        // Under CI a missing PostgreSQL is a failure, not a skip (README, "Test").
        Err(e) if std::env::var("CI").as_deref() == Ok("true") => {
            panic!("PostgreSQL is required under CI=true but unreachable at TEST_POSTGRES_URL: {e}")
        }
        Err(e) => {
            eprintln!("PostgreSQL unreachable at TEST_POSTGRES_URL ({e}): testing SQLite only");
            vec![Backend::Sqlite]
        }
    }
}

impl Backend {
    /// A fresh, migrated database (created only when the test reaches this backend, so that a
    /// failure on the first leaves nothing behind on the second).
    pub async fn open(&self) -> TestDb {
        match self {
            Self::Sqlite => sqlite().await,
            Self::Postgres => postgres().await,
        }
    }
}

async fn sqlite() -> TestDb {
    let dir = std::env::temp_dir().join(format!("ehr-store-test-{}", unique()));
    std::fs::create_dir_all(&dir).unwrap();
    let url = format!("sqlite://{}?mode=rwc", dir.join("ehr.db").display());
    let store = open(&url).await;
    let raw = Database::connect(url.as_str()).await.unwrap();
    TestDb { store, raw, cleanup: Cleanup::Dir(dir) }
}

async fn postgres() -> TestDb {
    let admin = admin_url();
    let conn = Database::connect(admin.as_str()).await.unwrap();
    let name = format!("ehr_test_{}", unique());
    conn.execute_unprepared(&format!("CREATE DATABASE {name}")).await.unwrap();
    let _ = conn.close().await;
    let (base, _) = admin.rsplit_once('/').unwrap();
    let url = format!("{base}/{name}");
    let store = open(&url).await;
    let raw = Database::connect(url.as_str()).await.unwrap();
    TestDb { store, raw, cleanup: Cleanup::Postgres { admin, name } }
}

async fn open(url: &str) -> Store {
    let mut config = StoreConfig::new(url);
    config.max_connections = 4;
    let store = Store::connect(&config).await.unwrap();
    store.migrate().await.unwrap();
    store
}

impl TestDb {
    pub fn is_postgres(&self) -> bool {
        self.store.backend_name() == "postgres"
    }

    /// Runs `sql` as the login role with `tenant` set (row-level security is forced on the
    /// tenant tables; the superuser bypasses it anyway) and returns the number of rows changed.
    pub async fn tamper(&self, tenant: &str, sql: &str) -> u64 {
        let txn = self.raw.begin().await.unwrap();
        if self.is_postgres() {
            txn.execute_unprepared(&format!("SELECT set_config('ehr.tenant', '{tenant}', true)")).await.unwrap();
        }
        let changed = txn.execute_unprepared(sql).await.unwrap().rows_affected();
        txn.commit().await.unwrap();
        changed
    }

    /// Drops the database (called when the test passed; a failed test leaves it to inspect).
    pub async fn finish(self) {
        let TestDb { store, raw, cleanup } = self;
        store.close().await;
        let _ = raw.close().await;
        match cleanup {
            Cleanup::Dir(dir) => {
                let _ = std::fs::remove_dir_all(dir);
            }
            Cleanup::Postgres { admin, name } => {
                let conn = Database::connect(admin.as_str()).await.unwrap();
                // FORCE: the store's pools may still hold connections.
                conn.execute_unprepared(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).await.unwrap();
                let _ = conn.close().await;
            }
        }
    }
}

/// A context for tenant `tenant`.
pub(crate) fn ctx(tenant: &str) -> TenantContext {
    TenantContext::new(TenantId::parse(tenant).unwrap(), "test")
}

/// A fixed instant (tests never read the clock).
pub(crate) fn at(secs: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(secs, 0).unwrap()
}
