//! Events between services: the bus, the outbox relay and the consumer runner.
//!
//! A write and the events it causes commit together (`ehr_store::Tx::emit` puts them in the
//! outbox table). The [`Relay`] hands committed events to a [`Bus`] in outbox order and marks them
//! published; [`spawn_consumer`] runs a [`Handler`] for each delivered event in a tenant
//! transaction that also records a receipt, so an event takes effect exactly once even though
//! the bus delivers at least once (a crash between publishing and marking publishes twice; a
//! consumer that dies before acknowledging has its events redelivered).
//!
//! Two buses:
//!
//! - [`RedisBus`]: Redis Streams with consumer groups, for services on several processes.
//! - [`LocalBus`]: in process, for `ehr serve` on SQLite without Redis; the outbox table is the
//!   log and a per-group cursor table the position.
//!
//! Payloads carry PHI: they are never logged, and `{:?}` of an [`Event`] leaves them out. Logs
//! and spans name event ids, topics and consumer groups only.

mod consumer;
mod error;
mod local_bus;
mod redis_bus;
mod relay;

pub use consumer::{Handler, HandlerError, spawn_consumer};
pub use ehr_store::{EventId, is_valid_topic};
pub use error::EventsError;
pub use local_bus::LocalBus;
pub use redis_bus::RedisBus;
pub use relay::{Relay, RelayConfig, relay_once};
pub use tokio_util::sync::CancellationToken;

use ehr_core::TenantId;
use ehr_store::OutboxEvent;
use serde_json::Value as Json;
use std::fmt;
use std::time::Duration;

/// An event as consumers see it.
#[derive(Clone, PartialEq)]
pub struct Event {
    pub id: EventId,
    /// The tenant whose data changed; the consumer's transaction is confined to it.
    pub tenant: TenantId,
    /// What happened (`order.placed`).
    pub topic: String,
    /// The aggregate it happened to (`ServiceRequest/123`).
    pub key: String,
    /// The event body. May carry PHI: never logged.
    pub payload: Json,
    /// W3C `traceparent` of the request that caused it.
    pub trace: Option<String>,
    /// Epoch milliseconds.
    pub created_at: i64,
}

impl fmt::Debug for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Event")
            .field("id", &self.id)
            .field("tenant", &self.tenant)
            .field("topic", &self.topic)
            .field("key", &self.key)
            .field("payload", &"<redacted>")
            .field("trace", &self.trace)
            .field("created_at", &self.created_at)
            .finish()
    }
}

impl Event {
    /// The event of an outbox row; [`EventsError::Corrupt`] when its payload is not JSON.
    pub fn from_outbox(row: &OutboxEvent) -> Result<Self, EventsError> {
        let payload = serde_json::from_str(&row.payload).map_err(|_| EventsError::corrupt("outbox payload"))?;
        Ok(Self {
            id: row.id,
            tenant: row.tenant.clone(),
            topic: row.topic.clone(),
            key: row.key.clone(),
            payload,
            trace: row.trace.clone(),
            created_at: row.created_at,
        })
    }
}

/// Knobs shared by both buses. The defaults suit production; tests shorten the times.
#[derive(Debug, Clone)]
pub struct BusConfig {
    /// Most events one [`Subscription::next`] returns (per stream, on Redis).
    pub batch: usize,
    /// How long [`Subscription::next`] waits for an event before returning none.
    pub block: Duration,
    /// An event delivered this long ago and neither acknowledged nor failed belongs to a dead or
    /// stuck consumer: another consumer of the group claims it. Keep it well above the time a
    /// batch takes to handle (an event claimed while still in progress is deduplicated by its
    /// receipt, but the work is done twice).
    pub min_idle: Duration,
    /// How often a subscription looks for such events (and once when it starts).
    pub claim_interval: Duration,
    /// After this many deliveries that failed, an event goes to the dead letters.
    pub max_deliveries: u32,
    /// Delay before the first retry of a failed event; doubled for each further delivery, and
    /// at most `min_idle`.
    pub retry_delay: Duration,
    /// Redis: streams are trimmed to about this many entries (`XADD … MAXLEN ~`). An entry
    /// trimmed while still pending is lost to its group (logged), so it must exceed any backlog.
    pub max_len: usize,
}

impl Default for BusConfig {
    fn default() -> Self {
        Self {
            batch: 64,
            block: Duration::from_secs(2),
            min_idle: Duration::from_secs(60),
            claim_interval: Duration::from_secs(10),
            max_deliveries: 5,
            retry_delay: Duration::from_secs(1),
            max_len: 100_000,
        }
    }
}

impl BusConfig {
    /// The wait before redelivering an event that failed on its `deliveries`-th delivery.
    pub(crate) fn backoff(&self, deliveries: u32) -> Duration {
        let factor = 1u32.checked_shl(deliveries.saturating_sub(1).min(16)).unwrap_or(u32::MAX);
        self.retry_delay.saturating_mul(factor).min(self.min_idle)
    }
}

/// An event bus: topics, consumer groups, at-least-once delivery.
#[async_trait::async_trait]
pub trait Bus: Send + Sync {
    /// Hands `events` over in order; they are durable on the bus when this returns.
    async fn publish(&self, events: &[Event]) -> Result<(), EventsError>;

    /// Joins consumer group `group` as `consumer` for `topics`. Every event of a topic is
    /// delivered to one consumer of each group; a group that is new starts with the oldest
    /// event the bus still holds.
    async fn subscribe(
        &self,
        group: &str,
        consumer: &str,
        topics: &[String],
    ) -> Result<Box<dyn Subscription>, EventsError>;
}

/// One consumer's view of its group.
#[async_trait::async_trait]
pub trait Subscription: Send {
    /// The next events for this consumer: new ones, ones due for a retry, and ones claimed from
    /// dead consumers. Waits up to [`BusConfig::block`]; empty when nothing came.
    async fn next(&mut self) -> Result<Vec<Delivery>, EventsError>;

    /// The event took effect (or had before): it is not delivered again.
    async fn ack(&mut self, delivery: &Delivery) -> Result<(), EventsError>;

    /// The handler failed. A permanent failure, or a transient one on the last allowed delivery,
    /// moves the event to the dead letters; otherwise it is delivered again after a back-off.
    async fn fail(&mut self, delivery: &Delivery, permanent: bool) -> Result<Disposition, EventsError>;
}

/// An event handed to a consumer.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub event: Event,
    /// How often the event has been delivered to the group, this delivery included.
    pub deliveries: u32,
    pub(crate) handle: Handle,
}

/// Where a delivery came from, for acknowledging it.
#[derive(Debug, Clone)]
pub(crate) enum Handle {
    /// A Redis stream entry: index into the subscription's streams, entry id.
    Stream { stream: usize, entry: String },
    /// An outbox row: index into the subscription's topics, outbox position.
    Local { topic: usize, seq: i64 },
}

/// What became of a failed delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    /// It will be delivered again.
    Retry,
    /// It went to the dead letters and will not be delivered again.
    DeadLettered,
}

/// Checks the names of a subscription.
pub(crate) fn check_subscription(group: &str, consumer: &str, topics: &[String]) -> Result<(), EventsError> {
    let name_ok = |n: &str| !n.is_empty() && n.len() <= 128 && !n.chars().any(|c| c.is_whitespace() || c.is_control());
    if !name_ok(group) || !name_ok(consumer) {
        return Err(EventsError::InvalidArgument("group and consumer names are 1-128 characters without spaces"));
    }
    if topics.is_empty() || !topics.iter().all(|t| is_valid_topic(t)) {
        return Err(EventsError::InvalidArgument("a subscription needs one or more valid topics"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_min_idle() {
        let config = BusConfig {
            retry_delay: Duration::from_millis(100),
            min_idle: Duration::from_secs(1),
            ..BusConfig::default()
        };
        let waits: Vec<u128> = (1..=6).map(|n| config.backoff(n).as_millis()).collect();
        assert_eq!(waits, vec![100, 200, 400, 800, 1000, 1000]);
        assert_eq!(config.backoff(0).as_millis(), 100);
        assert_eq!(config.backoff(u32::MAX), Duration::from_secs(1));
    }
}
