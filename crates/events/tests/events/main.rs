//! Behavioural tests of `ehr-events`: the relay, the Redis bus and the in-process bus, with the
//! real store underneath (SQLite in a temporary directory; PostgreSQL too where a test says so)
//! and the real consumer runner on top.
//!
//! Redis is reached at `TEST_REDIS_URL` (default `redis://127.0.0.1:6379`) with a fresh key prefix
//! per test; PostgreSQL at `TEST_POSTGRES_URL` (default
//! `postgres://postgres@127.0.0.1:5432/postgres`) with a fresh database per test. Without them the
//! tests that need them are skipped with a notice — and fail under `CI=true`.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

mod local_bus;
mod redis_bus;
mod relay;

use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::DateTime;
use ehr_core::{Clock, SystemClock, TenantContext, TenantId};
use ehr_events::{BusConfig, Event, EventId, Handler, HandlerError, RedisBus};
use ehr_store::{HistoryScope, NewEvent, Store, StoreConfig, Tx};
use sea_orm::{ConnectionTrait, Database};
use serde_json::json;
use tokio::sync::Notify;

fn ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

pub fn clock() -> Arc<dyn Clock> {
    Arc::new(SystemClock)
}

pub fn ctx(tenant: &str) -> TenantContext {
    TenantContext::new(TenantId::parse(tenant).unwrap(), "test")
}

/// Short times, so that retries, claims and dead letters happen within a test.
pub fn fast() -> BusConfig {
    BusConfig {
        batch: 16,
        block: Duration::from_millis(200),
        min_idle: Duration::from_millis(600),
        claim_interval: Duration::from_millis(100),
        max_deliveries: 3,
        retry_delay: Duration::from_millis(50),
        max_len: 10_000,
    }
}

/// A migrated store on a database of its own.
pub struct TestStore {
    pub store: Store,
    cleanup: Cleanup,
}

enum Cleanup {
    Dir(PathBuf),
    Postgres { admin: String, name: String },
}

fn unique() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

impl TestStore {
    pub async fn sqlite() -> Self {
        let dir = std::env::temp_dir().join(format!("ehr-events-test-{}", unique()));
        std::fs::create_dir_all(&dir).unwrap();
        let url = format!("sqlite://{}?mode=rwc", dir.join("ehr.db").display());
        Self { store: open(&url).await, cleanup: Cleanup::Dir(dir) }
    }

    /// A fresh PostgreSQL database, or `None` (outside CI) when PostgreSQL is unreachable.
    pub async fn postgres() -> Option<Self> {
        let admin =
            std::env::var("TEST_POSTGRES_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
        let mut options = sea_orm::ConnectOptions::new(admin.clone());
        options.connect_timeout(Duration::from_secs(3)).sqlx_logging(false);
        let conn = match Database::connect(options).await {
            Ok(conn) => conn,
            Err(e) if ci() => panic!("PostgreSQL is required under CI=true but unreachable at TEST_POSTGRES_URL: {e}"),
            Err(e) => {
                eprintln!("notice: skipping a PostgreSQL test, unreachable at TEST_POSTGRES_URL ({e})");
                return None;
            }
        };
        let name = format!("ehr_test_{}", unique());
        conn.execute_unprepared(&format!("CREATE DATABASE {name}")).await.unwrap();
        let _ = conn.close().await;
        let (base, _) = admin.rsplit_once('/').unwrap();
        let store = open(&format!("{base}/{name}")).await;
        Some(Self { store, cleanup: Cleanup::Postgres { admin, name } })
    }

    /// SQLite, and PostgreSQL when it answers.
    pub async fn all() -> Vec<Self> {
        let mut stores = vec![Self::sqlite().await];
        stores.extend(Self::postgres().await);
        stores
    }

    /// Emits one event per key in one committed transaction of `tenant`.
    pub async fn emit(&self, tenant: &str, topic: &str, keys: &[&str]) -> Vec<EventId> {
        let tx = self.store.write(&ctx(tenant)).await.unwrap();
        let mut ids = Vec::new();
        for key in keys {
            let event =
                NewEvent { topic: topic.into(), key: (*key).into(), payload: json!({"reference": key}), trace: None };
            ids.push(tx.emit(&event, clock().now()).await.unwrap());
        }
        tx.commit().await.unwrap();
        ids
    }

    /// The number of effects (Basic resources the [`Recorder`] created) in `tenant`.
    pub async fn effects(&self, tenant: &str) -> u64 {
        let tx = self.store.read(&ctx(tenant)).await.unwrap();
        let (_, total) = tx.history(HistoryScope::Type("Basic"), None, 1, 0).await.unwrap();
        tx.commit().await.unwrap();
        total
    }

    pub async fn finish(self) {
        let Self { store, cleanup } = self;
        drop(store);
        match cleanup {
            Cleanup::Dir(dir) => {
                let _ = std::fs::remove_dir_all(dir);
            }
            Cleanup::Postgres { admin, name } => {
                let conn = Database::connect(admin.as_str()).await.unwrap();
                conn.execute_unprepared(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).await.unwrap();
                let _ = conn.close().await;
            }
        }
    }
}

async fn open(url: &str) -> Store {
    let mut config = StoreConfig::new(url);
    config.max_connections = 4;
    let store = Store::connect(&config).await.unwrap();
    store.migrate().await.unwrap();
    store
}

pub fn redis_url() -> String {
    std::env::var("TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

/// A Redis bus under a prefix of its own, removed again by [`TestRedis::cleanup`].
pub struct TestRedis {
    pub bus: RedisBus,
    pub prefix: String,
    conn: redis::aio::MultiplexedConnection,
}

impl TestRedis {
    /// Connects, or returns `None` (outside CI) when Redis is unreachable.
    pub async fn start(config: BusConfig) -> Option<Self> {
        let prefix = format!("ehr-events-test:{}:", unique());
        match RedisBus::connect(&redis_url(), &prefix, config).await {
            Ok(bus) => {
                let client = redis::Client::open(redis_url()).unwrap();
                let conn = client.get_multiplexed_async_connection().await.unwrap();
                Some(Self { bus, prefix, conn })
            }
            Err(err) if ci() => panic!("redis at TEST_REDIS_URL is required in CI: {err}"),
            Err(err) => {
                eprintln!("notice: skipping a redis test, redis is unreachable ({err}); set TEST_REDIS_URL");
                None
            }
        }
    }

    /// A connection for looking behind the bus.
    pub fn conn(&self) -> redis::aio::MultiplexedConnection {
        self.conn.clone()
    }

    /// The entries of a stream, oldest first, as field maps (with `_entry` the entry id).
    pub async fn entries(&self, key: &str) -> Vec<HashMap<String, String>> {
        let reply: redis::streams::StreamRangeReply =
            redis::cmd("XRANGE").arg(key).arg("-").arg("+").query_async(&mut self.conn()).await.unwrap();
        reply
            .ids
            .iter()
            .map(|e| {
                let mut map: HashMap<String, String> =
                    e.map.keys().map(|k| (k.clone(), e.get::<String>(k).unwrap())).collect();
                map.insert("_entry".into(), e.id.clone());
                map
            })
            .collect()
    }

    /// The number of entries of `group` on `key` delivered and not acknowledged.
    pub async fn pending(&self, key: &str, group: &str) -> usize {
        let reply: redis::streams::StreamPendingReply =
            redis::cmd("XPENDING").arg(key).arg(group).query_async(&mut self.conn()).await.unwrap();
        reply.count()
    }

    /// Whether `group` has read every entry of `key` and acknowledged all it read.
    pub async fn done(&self, key: &str, group: &str) -> bool {
        let reply: redis::streams::StreamInfoGroupsReply =
            redis::cmd("XINFO").arg("GROUPS").arg(key).query_async(&mut self.conn()).await.unwrap();
        reply.groups.iter().any(|g| g.name == group && g.pending == 0 && g.lag == Some(0))
    }

    /// Deletes every key under this test's prefix.
    pub async fn cleanup(self) {
        let mut conn = self.conn();
        let keys: Vec<String> =
            redis::cmd("KEYS").arg(format!("{}*", self.prefix)).query_async(&mut conn).await.unwrap();
        if !keys.is_empty() {
            redis::cmd("DEL").arg(&keys).query_async::<()>(&mut conn).await.unwrap();
        }
    }
}

/// What the [`Recorder`] does with an event.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Applies every event (creates one Basic resource).
    Apply,
    /// Fails each event's first delivery (transiently), applies it the next time.
    FailFirst,
    /// Fails every delivery transiently.
    Transient,
    /// Fails every delivery permanently.
    Permanent,
    /// Hangs on the first event it gets, as a consumer stuck or dying mid-way.
    HangFirst,
}

/// A handler recording its calls; its effect is a new Basic resource per applied event, so an
/// event applied twice shows as two.
pub struct Recorder {
    mode: Mode,
    calls: Mutex<Vec<EventId>>,
    pub called: Notify,
}

impl Recorder {
    pub fn new(mode: Mode) -> Arc<Self> {
        Arc::new(Self { mode, calls: Mutex::new(Vec::new()), called: Notify::new() })
    }

    pub fn calls(&self) -> Vec<EventId> {
        self.calls.lock().unwrap().clone()
    }
}

#[async_trait::async_trait]
impl Handler for Recorder {
    async fn handle(&self, event: &Event, tx: &Tx) -> Result<(), HandlerError> {
        let attempt = {
            let mut calls = self.calls.lock().unwrap();
            let first_call = calls.is_empty();
            calls.push(event.id);
            if self.mode == Mode::HangFirst && first_call {
                0
            } else {
                calls.iter().filter(|id| **id == event.id).count()
            }
        };
        self.called.notify_one();
        match self.mode {
            Mode::FailFirst if attempt == 1 => return Err(HandlerError::Transient("first delivery fails")),
            Mode::Transient => return Err(HandlerError::Transient("always fails")),
            Mode::Permanent => return Err(HandlerError::Permanent("cannot apply")),
            Mode::HangFirst if attempt == 0 => std::future::pending::<()>().await,
            _ => {}
        }
        let now = DateTime::from_timestamp_millis(event.created_at).unwrap();
        let effect = json!({"resourceType": "Basic", "code": {"text": "effect"}, "subject": {"reference": event.key}});
        tx.create("Basic", None, effect, now).await?;
        Ok(())
    }
}

/// Waits until `check` holds, failing the test after `secs` seconds.
pub async fn eventually<F, Fut>(secs: u64, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

pub fn topics(names: &[&str]) -> Vec<String> {
    names.iter().map(|s| (*s).to_owned()).collect()
}
