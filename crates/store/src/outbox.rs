//! The transactional outbox and the consumers' receipts.
//!
//! A service that changes data and announces it writes the event into `outbox` in the same
//! transaction as the change ([`Tx::emit`]): the event exists iff the change committed. A relay
//! (`ehr-events`) reads unpublished events in `seq` order, hands them to the bus and marks them
//! published. Between the hand-over and the mark a crash publishes an event twice, so delivery is
//! at-least-once; a consumer makes it exactly-once in effect by recording a receipt
//! ([`Tx::record_receipt`]) in the same transaction as its own writes.
//!
//! Times are epoch milliseconds chosen by the caller; nothing here reads the clock.
//!
//! # The relay on PostgreSQL: a role of its own
//!
//! The relay works across tenants, and `outbox` is a tenant table under forced row-level
//! security. The relay's transactions switch to the role [`RELAY_ROLE`], for which m0003 adds
//! permissive policies on `outbox` (read, mark, purge) and `event_receipts` (read, purge) —
//! and grants nothing else: no INSERT (the relay cannot forge an event), UPDATE of
//! `published_at` only (it cannot alter one), no access to any other table. The alternatives
//! were weaker:
//!
//! - a policy letting the empty tenant (`current_setting('ehr.tenant') = ''`) read the outbox
//!   would open every tenant's events to every system transaction ([`crate::SysTx`]), which
//!   today sees no tenant row at all;
//! - a `SECURITY DEFINER` function runs as the table owner, and `FORCE ROW LEVEL SECURITY`
//!   confines the owner too: it would see nothing unless the owner is a superuser or has
//!   BYPASSRLS, which a production migrator should not be.
//!
//! The login role must be a member of [`RELAY_ROLE`] (m0003 grants it to the migrating role);
//! otherwise relay transactions fail loudly instead of silently seeing no events.
//!
//! # Order and concurrency
//!
//! [`Store::outbox_claim`] takes a transaction-level advisory lock, so one relay replica at a time
//! publishes (the others find an empty batch and poll again) and the stream keeps `seq` order;
//! the rows are locked `FOR UPDATE SKIP LOCKED` until the batch is marked. `seq` is assigned at
//! insert, so on PostgreSQL a transaction that emitted earlier but commits later is published
//! later: the order per aggregate holds when writers of one aggregate lock it (they do:
//! `read_for_update`), not across aggregates. SQLite has one writer, so there `seq` order is
//! commit order.

use crate::error::StoreError;
use crate::identity::parse_tenant;
use crate::migration::RELAY_ROLE;
use crate::repo::{Store, Tx};
use chrono::{DateTime, Utc};
use ehr_core::TenantId;
use sea_orm::{ConnectionTrait, DatabaseTransaction, DbBackend, QueryResult, Statement, Value};
use serde_json::Value as Json;
use std::fmt;

/// Advisory-lock key that makes one relay replica at a time publish (`Store::migrate` uses 7395001).
const RELAY_LOCK: i64 = 7_395_003;

/// Longest topic, key or trace accepted.
const MAX_TOPIC: usize = 64;
const MAX_KEY: usize = 256;
const MAX_TRACE: usize = 256;

/// Rows bound per `IN (…)` list.
const CHUNK: usize = 500;

const OUTBOX_COLUMNS: &str = "seq, id, tenant_id, topic, key, payload, trace, created_at, published_at";

/// The id of an event (a UUID v4), the key consumers deduplicate on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EventId(uuid::Uuid);

impl EventId {
    /// A fresh random id.
    pub fn generate() -> Self {
        Self(uuid::Uuid::new_v4())
    }

    /// Parses the hyphenated text form; `None` when it is not a UUID.
    pub fn parse(text: &str) -> Option<Self> {
        uuid::Uuid::parse_str(text).ok().map(Self)
    }

    /// The id as a UUID.
    pub fn as_uuid(&self) -> uuid::Uuid {
        self.0
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0.hyphenated(), f)
    }
}

/// Whether `topic` is a valid event topic: 1–64 characters of `a-z 0-9 . _ -`, starting with a
/// letter or digit (`order.placed`, `lab.result.received`). No `:`, so a topic cannot reach
/// into another key of the bus's namespace.
pub fn is_valid_topic(topic: &str) -> bool {
    !topic.is_empty()
        && topic.len() <= MAX_TOPIC
        && topic.bytes().next().is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        && topic.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-'))
}

/// An event to emit in the transaction's tenant.
#[derive(Clone, PartialEq)]
pub struct NewEvent {
    /// What happened (`order.placed`); see [`is_valid_topic`].
    pub topic: String,
    /// The aggregate it happened to (`ServiceRequest/123`).
    pub key: String,
    /// The event body. May carry PHI: never logged.
    pub payload: Json,
    /// W3C `traceparent` of the request that caused it.
    pub trace: Option<String>,
}

/// An event as stored in the outbox.
#[derive(Clone, PartialEq)]
pub struct OutboxEvent {
    /// Position in the outbox, increasing in insertion order.
    pub seq: i64,
    pub id: EventId,
    pub tenant: TenantId,
    pub topic: String,
    pub key: String,
    /// The JSON text of the payload. May carry PHI: never logged.
    pub payload: String,
    pub trace: Option<String>,
    /// Epoch milliseconds.
    pub created_at: i64,
    /// Epoch milliseconds; `None` until the relay handed the event to the bus.
    pub published_at: Option<i64>,
}

// Payloads may carry PHI; `{:?}` must not print them.
impl fmt::Debug for NewEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NewEvent")
            .field("topic", &self.topic)
            .field("key", &self.key)
            .field("payload", &"<redacted>")
            .field("trace", &self.trace)
            .finish()
    }
}

impl fmt::Debug for OutboxEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OutboxEvent")
            .field("seq", &self.seq)
            .field("id", &self.id)
            .field("tenant", &self.tenant)
            .field("topic", &self.topic)
            .field("key", &self.key)
            .field("payload", &"<redacted>")
            .field("trace", &self.trace)
            .field("created_at", &self.created_at)
            .field("published_at", &self.published_at)
            .finish()
    }
}

/// An event a consumer group gave up on (the in-process bus; Redis keeps its own stream).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    pub consumer: String,
    /// The event's outbox position (the row itself is purged with the others).
    pub seq: i64,
    pub event_id: EventId,
    pub topic: String,
    /// How often it was delivered before the group gave up.
    pub deliveries: i32,
    /// Epoch milliseconds.
    pub dead_at: i64,
}

impl Tx {
    /// Records `event` in the transaction's tenant; it is published iff the transaction commits.
    pub async fn emit(&self, event: &NewEvent, now: DateTime<Utc>) -> Result<EventId, StoreError> {
        if !is_valid_topic(&event.topic) {
            return Err(StoreError::InvalidValue("an event topic is 1-64 characters of a-z, 0-9, '.', '_', '-'"));
        }
        if event.key.is_empty() || event.key.len() > MAX_KEY {
            return Err(StoreError::InvalidValue("an event key is 1-256 bytes"));
        }
        if event.trace.as_ref().is_some_and(|t| t.len() > MAX_TRACE) {
            return Err(StoreError::InvalidValue("an event trace is at most 256 bytes"));
        }
        let payload = serde_json::to_string(&event.payload)
            .map_err(|_| StoreError::InvalidValue("event payload is not serialisable as JSON"))?;
        let id = EventId::generate();
        self.exec(
            "INSERT INTO outbox (id, tenant_id, topic, key, payload, trace, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
            vec![
                id.to_string().into(),
                self.tenant.as_str().into(),
                event.topic.as_str().into(),
                event.key.as_str().into(),
                payload.into(),
                event.trace.clone().into(),
                now.timestamp_millis().into(),
            ],
        )
        .await?;
        tracing::debug!(event.id = %id, event.topic = %event.topic, "event emitted");
        Ok(id)
    }

    /// Records that `consumer` processed `event_id` in this tenant: true the first time, false
    /// when a receipt exists already (the event took effect before; skip it).
    ///
    /// Written in the same transaction as the consumer's own changes, the receipt commits iff
    /// they do. Two deliveries of one event racing on PostgreSQL: the second insert waits for
    /// the first transaction and then finds the receipt (or, if that rolled back, takes over).
    pub async fn record_receipt(
        &self,
        consumer: &str,
        event_id: &EventId,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let inserted = self
            .exec(
                "INSERT INTO event_receipts (tenant_id, consumer, event_id, processed_at) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT DO NOTHING",
                vec![
                    self.tenant.as_str().into(),
                    consumer.into(),
                    event_id.to_string().into(),
                    now.timestamp_millis().into(),
                ],
            )
            .await?;
        Ok(inserted == 1)
    }
}

/// A batch of unpublished events claimed by a relay: on PostgreSQL the rows stay locked (and the
/// relay lock held) until [`OutboxBatch::mark_published`] commits or the batch is dropped.
pub struct OutboxBatch {
    events: Vec<OutboxEvent>,
    /// PostgreSQL: the relay transaction holding the locks. SQLite: none (one process, one relay).
    txn: Option<DatabaseTransaction>,
    store: Store,
}

impl OutboxBatch {
    /// The claimed events, in `seq` order.
    pub fn events(&self) -> &[OutboxEvent] {
        &self.events
    }

    /// Marks every claimed event published at `now` and releases the batch.
    pub async fn mark_published(self, now: DateTime<Utc>) -> Result<(), StoreError> {
        let seqs: Vec<i64> = self.events.iter().map(|e| e.seq).collect();
        match self.txn {
            Some(txn) => {
                mark(&txn, self.store.backend(), &seqs, now).await?;
                txn.commit().await?;
            }
            None => {
                self.store.outbox_mark_published(&seqs, now).await?;
            }
        }
        Ok(())
    }
}

impl Store {
    /// A transaction of the relay: no tenant, and on PostgreSQL the relay role (module docs).
    async fn relay_txn(&self, write: bool) -> Result<DatabaseTransaction, StoreError> {
        let txn = self.begin_raw(write, "").await?;
        if self.backend() == DbBackend::Postgres {
            txn.execute_unprepared(&format!("SELECT set_config('role', '{RELAY_ROLE}', true)")).await?;
        }
        Ok(txn)
    }

    async fn relay_query(&self, sql: &str, values: Vec<Value>) -> Result<Vec<QueryResult>, StoreError> {
        let txn = self.relay_txn(false).await?;
        let rows = txn.query_all_raw(Statement::from_sql_and_values(self.backend(), sql, values)).await?;
        txn.commit().await?;
        Ok(rows)
    }

    async fn relay_exec(&self, sql: &str, values: Vec<Value>) -> Result<u64, StoreError> {
        let txn = self.relay_txn(true).await?;
        let n = txn.execute_raw(Statement::from_sql_and_values(self.backend(), sql, values)).await?.rows_affected();
        txn.commit().await?;
        Ok(n)
    }

    /// Up to `limit` unpublished events of every tenant, in `seq` order (a look, no locks).
    pub async fn outbox_pending(&self, limit: u64) -> Result<Vec<OutboxEvent>, StoreError> {
        let rows = self
            .relay_query(
                &format!("SELECT {OUTBOX_COLUMNS} FROM outbox WHERE published_at IS NULL ORDER BY seq LIMIT $1"),
                vec![to_i64(limit).into()],
            )
            .await?;
        rows.iter().map(row_to_event).collect()
    }

    /// Claims up to `limit` unpublished events, in `seq` order, for publishing. Empty when
    /// another relay replica holds the relay lock (PostgreSQL) or nothing is pending.
    pub async fn outbox_claim(&self, limit: u64) -> Result<OutboxBatch, StoreError> {
        if self.backend() != DbBackend::Postgres {
            // One process owns an SQLite database: no other relay to exclude, and the single
            // writer connection stays free while the batch is being published.
            let events = self.outbox_pending(limit).await?;
            return Ok(OutboxBatch { events, txn: None, store: self.clone() });
        }
        let txn = self.relay_txn(true).await?;
        let locked = txn
            .query_all_raw(Statement::from_sql_and_values(
                DbBackend::Postgres,
                "SELECT pg_try_advisory_xact_lock($1) AS locked",
                vec![RELAY_LOCK.into()],
            ))
            .await?;
        let locked = locked.first().map(|r| r.try_get::<bool>("", "locked")).transpose()?.unwrap_or(false);
        if !locked {
            return Ok(OutboxBatch { events: Vec::new(), txn: None, store: self.clone() });
        }
        let rows = txn
            .query_all_raw(Statement::from_sql_and_values(
                DbBackend::Postgres,
                format!(
                    "SELECT {OUTBOX_COLUMNS} FROM outbox WHERE published_at IS NULL ORDER BY seq LIMIT $1 \
                     FOR UPDATE SKIP LOCKED"
                ),
                vec![to_i64(limit).into()],
            ))
            .await?;
        let events = rows.iter().map(row_to_event).collect::<Result<Vec<_>, _>>()?;
        Ok(OutboxBatch { events, txn: Some(txn), store: self.clone() })
    }

    /// Marks the events at `seqs` published at `now` (those not published yet); returns how many.
    pub async fn outbox_mark_published(&self, seqs: &[i64], now: DateTime<Utc>) -> Result<u64, StoreError> {
        if seqs.is_empty() {
            return Ok(0);
        }
        let txn = self.relay_txn(true).await?;
        let n = mark(&txn, self.backend(), seqs, now).await?;
        txn.commit().await?;
        Ok(n)
    }

    /// Deletes events published before `older_than`; returns how many. Unpublished events are
    /// kept whatever their age. The retention must exceed what consumers may still need: the
    /// in-process bus reads its events from here.
    pub async fn outbox_purge_published(&self, older_than: DateTime<Utc>) -> Result<u64, StoreError> {
        self.relay_exec(
            "DELETE FROM outbox WHERE published_at IS NOT NULL AND published_at < $1",
            vec![older_than.timestamp_millis().into()],
        )
        .await
    }

    /// The relay's backlog, for metrics: the number of unpublished events and the creation time
    /// (epoch milliseconds) of the oldest.
    pub async fn outbox_lag(&self) -> Result<(u64, Option<i64>), StoreError> {
        let rows = self
            .relay_query(
                "SELECT COUNT(*) AS n, MIN(created_at) AS oldest FROM outbox WHERE published_at IS NULL",
                Vec::new(),
            )
            .await?;
        let Some(row) = rows.first() else { return Ok((0, None)) };
        let n: i64 = row.try_get("", "n")?;
        Ok((u64::try_from(n).unwrap_or(0), row.try_get("", "oldest")?))
    }

    /// Up to `limit` events of `topic` after position `after`, in `seq` order, published or not
    /// (the in-process bus reads committed events directly; on SQLite `seq` order is commit order).
    pub async fn outbox_after(&self, topic: &str, after: i64, limit: u64) -> Result<Vec<OutboxEvent>, StoreError> {
        let rows = self
            .relay_query(
                &format!("SELECT {OUTBOX_COLUMNS} FROM outbox WHERE topic = $1 AND seq > $2 ORDER BY seq LIMIT $3"),
                vec![topic.into(), after.into(), to_i64(limit).into()],
            )
            .await?;
        rows.iter().map(row_to_event).collect()
    }

    /// Deletes receipts recorded before `older_than`; returns how many. Keep them longer than an
    /// event can be redelivered (stream retention, dead-consumer claim time), or a late duplicate
    /// takes effect twice.
    pub async fn event_receipts_purge(&self, older_than: DateTime<Utc>) -> Result<u64, StoreError> {
        self.relay_exec(
            "DELETE FROM event_receipts WHERE processed_at < $1",
            vec![older_than.timestamp_millis().into()],
        )
        .await
    }

    /// The position up to which consumer group `consumer` is done with `topic` (0: nothing yet).
    pub async fn event_cursor(&self, consumer: &str, topic: &str) -> Result<i64, StoreError> {
        let txn = self.begin_raw(false, "").await?;
        let rows = txn
            .query_all_raw(Statement::from_sql_and_values(
                self.backend(),
                "SELECT seq FROM event_cursors WHERE consumer = $1 AND topic = $2",
                vec![consumer.into(), topic.into()],
            ))
            .await?;
        txn.commit().await?;
        Ok(rows.first().map(|r| r.try_get::<i64>("", "seq")).transpose()?.unwrap_or(0))
    }

    /// Moves the cursor of `consumer` on `topic` forward to `seq`; never backwards, so acks
    /// persisted out of order cannot undo progress.
    pub async fn advance_event_cursor(
        &self,
        consumer: &str,
        topic: &str,
        seq: i64,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        self.system_exec(
            "INSERT INTO event_cursors (consumer, topic, seq, updated_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (consumer, topic) DO UPDATE SET seq = excluded.seq, updated_at = excluded.updated_at \
             WHERE event_cursors.seq < excluded.seq",
            vec![consumer.into(), topic.into(), seq.into(), now.timestamp_millis().into()],
        )
        .await?;
        Ok(())
    }

    /// Records that consumer group `consumer` gave up on the event at outbox position `seq`
    /// after `deliveries` deliveries (a second record of the same event is ignored).
    pub async fn record_dead_letter(
        &self,
        consumer: &str,
        seq: i64,
        event_id: &EventId,
        topic: &str,
        deliveries: u32,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        self.system_exec(
            "INSERT INTO event_dead_letters (consumer, seq, event_id, topic, deliveries, dead_at) \
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
            vec![
                consumer.into(),
                seq.into(),
                event_id.to_string().into(),
                topic.into(),
                i32::try_from(deliveries).unwrap_or(i32::MAX).into(),
                now.timestamp_millis().into(),
            ],
        )
        .await?;
        Ok(())
    }

    /// The events consumer group `consumer` gave up on, by position.
    pub async fn dead_letters(&self, consumer: &str) -> Result<Vec<DeadLetter>, StoreError> {
        let txn = self.begin_raw(false, "").await?;
        let rows = txn
            .query_all_raw(Statement::from_sql_and_values(
                self.backend(),
                "SELECT consumer, seq, event_id, topic, deliveries, dead_at FROM event_dead_letters \
                 WHERE consumer = $1 ORDER BY seq",
                vec![consumer.into()],
            ))
            .await?;
        txn.commit().await?;
        rows.iter()
            .map(|r| {
                let event_id: String = r.try_get("", "event_id")?;
                Ok(DeadLetter {
                    consumer: r.try_get("", "consumer")?,
                    seq: r.try_get("", "seq")?,
                    event_id: EventId::parse(&event_id)
                        .ok_or_else(|| StoreError::corrupt("event_dead_letters.event_id"))?,
                    topic: r.try_get("", "topic")?,
                    deliveries: r.try_get("", "deliveries")?,
                    dead_at: r.try_get("", "dead_at")?,
                })
            })
            .collect()
    }

    /// One statement in a system transaction (no tenant) on the writer.
    async fn system_exec(&self, sql: &str, values: Vec<Value>) -> Result<u64, StoreError> {
        let txn = self.begin_raw(true, "").await?;
        let n = txn.execute_raw(Statement::from_sql_and_values(self.backend(), sql, values)).await?.rows_affected();
        txn.commit().await?;
        Ok(n)
    }
}

/// `UPDATE … SET published_at` for `seqs` in `txn`, in chunks; returns the rows changed.
async fn mark(
    txn: &DatabaseTransaction,
    backend: DbBackend,
    seqs: &[i64],
    now: DateTime<Utc>,
) -> Result<u64, StoreError> {
    let mut changed = 0;
    for chunk in seqs.chunks(CHUNK) {
        let mut values: Vec<Value> = vec![now.timestamp_millis().into()];
        let mut list = Vec::with_capacity(chunk.len());
        for seq in chunk {
            values.push((*seq).into());
            list.push(format!("${}", values.len()));
        }
        let sql =
            format!("UPDATE outbox SET published_at = $1 WHERE published_at IS NULL AND seq IN ({})", list.join(", "));
        changed += txn.execute_raw(Statement::from_sql_and_values(backend, sql, values)).await?.rows_affected();
    }
    Ok(changed)
}

fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn row_to_event(row: &QueryResult) -> Result<OutboxEvent, StoreError> {
    let id: String = row.try_get("", "id")?;
    Ok(OutboxEvent {
        seq: row.try_get("", "seq")?,
        id: EventId::parse(&id).ok_or_else(|| StoreError::corrupt("outbox.id"))?,
        tenant: parse_tenant(&row.try_get::<String>("", "tenant_id")?)?,
        topic: row.try_get("", "topic")?,
        key: row.try_get("", "key")?,
        payload: row.try_get("", "payload")?,
        trace: row.try_get("", "trace")?,
        created_at: row.try_get("", "created_at")?,
        published_at: row.try_get("", "published_at")?,
    })
}
