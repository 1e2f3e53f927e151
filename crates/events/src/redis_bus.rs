//! [`Bus`] on Redis Streams.
//!
//! Keys, with `P` the deployment's prefix (taken verbatim, e.g. `ehr:`):
//!
//! | key | type | holds |
//! |---|---|---|
//! | `Pevents:<topic>` | stream | the events of one topic; one consumer group per consuming service |
//! | `Pevents:dead:<topic>` | stream | events a group gave up on, with `group`, `source_id`, `deliveries`, `reason` |
//!
//! Topics cannot contain `:` (see [`is_valid_topic`]), so no topic's stream is another's dead
//! letters. Entry fields: `id`, `tenant`, `topic`, `key`, `payload`, `created_at`, and `trace`
//! when there is one. Both kinds of stream are trimmed to about [`BusConfig::max_len`] entries.
//!
//! Delivery: a group is created from the start of its stream (`XGROUP CREATE … 0 MKSTREAM`), so a
//! consumer deployed after the first events were published still gets them. New entries come
//! with `XREADGROUP … BLOCK`; a failed entry stays pending and is claimed again by its consumer
//! after a back-off (`XCLAIM`, which counts the delivery); entries of dead consumers are taken
//! over with `XAUTOCLAIM` once idle for [`BusConfig::min_idle`]. The delivery count of `XPENDING`
//! decides when an entry goes to the dead letters (moved and acknowledged in one transaction).

use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::streams::{
    StreamAutoClaimReply, StreamClaimReply, StreamId, StreamPendingCountReply, StreamRangeReply, StreamReadReply,
};
use tokio::time::Instant;

use crate::{
    Bus, BusConfig, Delivery, Disposition, Event, EventsError, Handle, Subscription, check_subscription, is_valid_topic,
};
use ehr_core::TenantId;
use ehr_store::EventId;

/// Connection attempts give up after this long, so a dead Redis fails readiness promptly.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// A command without an answer after this long fails as unavailable (blocking reads get their
/// block time on top).
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(3);

/// The event bus on Redis Streams. Cheap to clone.
#[derive(Clone)]
pub struct RedisBus {
    client: redis::Client,
    conn: ConnectionManager,
    prefix: Arc<str>,
    config: BusConfig,
}

impl std::fmt::Debug for RedisBus {
    // The URL, which may carry a password, is not kept; the prefix is all there is to show.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBus").field("prefix", &self.prefix).finish_non_exhaustive()
    }
}

async fn connect(client: &redis::Client, response_timeout: Duration) -> Result<ConnectionManager, EventsError> {
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(CONNECT_TIMEOUT)
        .set_response_timeout(response_timeout)
        .set_number_of_retries(2)
        .set_max_delay(1000);
    Ok(ConnectionManager::new_with_config(client.clone(), config).await?)
}

impl RedisBus {
    /// Connects to `url` (`redis://[user:password@]host:port[/db]`, `rediss://…`); every key
    /// starts with `prefix`, so deployments and tests can share one Redis.
    pub async fn connect(url: &str, prefix: &str, config: BusConfig) -> Result<Self, EventsError> {
        if config.batch == 0 || config.max_deliveries == 0 || config.max_len == 0 {
            return Err(EventsError::InvalidArgument("batch, max_deliveries and max_len must be positive"));
        }
        // The parse error is dropped unread: it must not be able to echo the URL's password.
        let client = redis::Client::open(url).map_err(|_| EventsError::InvalidUrl)?;
        let conn = connect(&client, RESPONSE_TIMEOUT).await?;
        Ok(Self { client, conn, prefix: Arc::from(prefix), config })
    }

    /// The stream of `topic`: `<prefix>events:<topic>`.
    pub fn stream_key(&self, topic: &str) -> String {
        format!("{}events:{topic}", self.prefix)
    }

    /// The dead letters of `topic`: `<prefix>events:dead:<topic>`.
    pub fn dead_letter_key(&self, topic: &str) -> String {
        format!("{}events:dead:{topic}", self.prefix)
    }
}

/// `XADD key MAXLEN ~ n * field value …` of `fields`.
fn xadd(pipe: &mut redis::Pipeline, key: &str, max_len: usize, fields: &[(&str, String)]) {
    let cmd = pipe.cmd("XADD").arg(key).arg("MAXLEN").arg("~").arg(max_len).arg("*");
    for (field, value) in fields {
        cmd.arg(*field).arg(value);
    }
    cmd.ignore();
}

fn fields_of(event: &Event) -> Vec<(&'static str, String)> {
    let mut fields = vec![
        ("id", event.id.to_string()),
        ("tenant", event.tenant.as_str().to_owned()),
        ("topic", event.topic.clone()),
        ("key", event.key.clone()),
        ("payload", event.payload.to_string()),
        ("created_at", event.created_at.to_string()),
    ];
    if let Some(trace) = &event.trace {
        fields.push(("trace", trace.clone()));
    }
    fields
}

/// The event of a stream entry; `None` when a field is missing or malformed.
fn decode(entry: &StreamId) -> Option<Event> {
    let text = |field: &str| entry.get::<String>(field);
    Some(Event {
        id: EventId::parse(&text("id")?)?,
        tenant: TenantId::parse(&text("tenant")?).ok()?,
        topic: text("topic")?,
        key: text("key")?,
        payload: serde_json::from_str(&text("payload")?).ok()?,
        trace: text("trace"),
        created_at: text("created_at")?.parse().ok()?,
    })
}

#[async_trait::async_trait]
impl Bus for RedisBus {
    async fn publish(&self, events: &[Event]) -> Result<(), EventsError> {
        if events.is_empty() {
            return Ok(());
        }
        if !events.iter().all(|e| is_valid_topic(&e.topic)) {
            return Err(EventsError::InvalidArgument("an event topic is not valid"));
        }
        // One round trip; a pipeline on one connection keeps the order.
        let mut pipe = redis::pipe();
        for event in events {
            xadd(&mut pipe, &self.stream_key(&event.topic), self.config.max_len, &fields_of(event));
        }
        pipe.query_async::<()>(&mut self.conn.clone()).await?;
        Ok(())
    }

    async fn subscribe(
        &self,
        group: &str,
        consumer: &str,
        topics: &[String],
    ) -> Result<Box<dyn Subscription>, EventsError> {
        check_subscription(group, consumer, topics)?;
        // A connection of its own: a blocking read holds its connection for the block time.
        let conn = connect(&self.client, RESPONSE_TIMEOUT + self.config.block).await?;
        let sub = RedisSubscription {
            conn,
            group: group.to_owned(),
            consumer: consumer.to_owned(),
            topics: topics.to_vec(),
            streams: topics.iter().map(|t| self.stream_key(t)).collect(),
            dead: topics.iter().map(|t| self.dead_letter_key(t)).collect(),
            config: self.config.clone(),
            last_claim: None,
            retries: Vec::new(),
        };
        sub.ensure_groups().await?;
        Ok(Box::new(sub))
    }
}

/// A failed entry waiting for its next delivery.
struct Retry {
    due: Instant,
    /// Only an entry idle at least this long is reclaimed: if another consumer claimed it
    /// meanwhile, it is theirs.
    idle: Duration,
    stream: usize,
    entry: String,
}

struct RedisSubscription {
    conn: ConnectionManager,
    group: String,
    consumer: String,
    topics: Vec<String>,
    streams: Vec<String>,
    dead: Vec<String>,
    config: BusConfig,
    last_claim: Option<Instant>,
    retries: Vec<Retry>,
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl RedisSubscription {
    /// Creates the group on every stream (and the stream), from its first entry.
    async fn ensure_groups(&self) -> Result<(), EventsError> {
        for stream in &self.streams {
            let created: redis::RedisResult<()> = redis::cmd("XGROUP")
                .arg("CREATE")
                .arg(stream)
                .arg(&self.group)
                .arg("0")
                .arg("MKSTREAM")
                .query_async(&mut self.conn.clone())
                .await;
            match created {
                Err(e) if e.code() == Some("BUSYGROUP") => {}
                other => other?,
            }
        }
        Ok(())
    }

    /// The delivery counts of entries pending for this consumer, by entry id (one round trip).
    async fn delivery_counts(&self, stream: usize, ids: &[&str]) -> Result<Vec<Option<u32>>, EventsError> {
        let mut pipe = redis::pipe();
        for id in ids {
            pipe.cmd("XPENDING").arg(&self.streams[stream]).arg(&self.group).arg(*id).arg(*id).arg(1);
        }
        let replies: Vec<StreamPendingCountReply> = pipe.query_async(&mut self.conn.clone()).await?;
        Ok(replies
            .iter()
            .map(|r| {
                r.ids
                    .first()
                    .filter(|p| p.consumer == self.consumer)
                    .map(|p| u32::try_from(p.times_delivered).unwrap_or(u32::MAX))
            })
            .collect())
    }

    /// Turns entries claimed by this consumer into deliveries: entries delivered more often
    /// than allowed (their consumers died while handling them) and undecodable ones go to the
    /// dead letters instead.
    async fn claimed(&mut self, stream: usize, entries: Vec<StreamId>) -> Result<Vec<Delivery>, EventsError> {
        if entries.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<&str> = entries.iter().map(|e| e.id.as_str()).collect();
        let counts = self.delivery_counts(stream, &ids).await?;
        let mut out = Vec::new();
        for (entry, count) in entries.iter().zip(counts) {
            // Not pending for us any more: another consumer took it over in between.
            let Some(deliveries) = count else { continue };
            match decode(entry) {
                Some(event) if deliveries <= self.config.max_deliveries => {
                    out.push(Delivery { event, deliveries, handle: Handle::Stream { stream, entry: entry.id.clone() } })
                }
                Some(_) => self.dead_letter(stream, entry, deliveries, "max_deliveries").await?,
                None => self.dead_letter(stream, entry, deliveries, "undecodable").await?,
            }
        }
        Ok(out)
    }

    /// Takes over entries idle for `min_idle` (a dead consumer's, or this one's from before a
    /// restart), up to one batch per stream.
    async fn autoclaim(&mut self) -> Result<Vec<Delivery>, EventsError> {
        let mut out = Vec::new();
        for stream in 0..self.streams.len() {
            let mut start = "0-0".to_owned();
            let mut entries = Vec::new();
            loop {
                let reply: StreamAutoClaimReply = redis::cmd("XAUTOCLAIM")
                    .arg(&self.streams[stream])
                    .arg(&self.group)
                    .arg(&self.consumer)
                    .arg(millis(self.config.min_idle))
                    .arg(&start)
                    .arg("COUNT")
                    .arg(self.config.batch)
                    .query_async(&mut self.conn.clone())
                    .await?;
                if !reply.deleted_ids.is_empty() {
                    // Trimmed by MAXLEN while pending: the group never saw them (see max_len).
                    tracing::error!(
                        stream = %self.streams[stream],
                        group = %self.group,
                        entries = ?reply.deleted_ids,
                        "pending stream entries were trimmed before they were processed"
                    );
                }
                entries.extend(reply.claimed);
                start = reply.next_stream_id;
                if start == "0-0" || entries.len() >= self.config.batch {
                    break;
                }
            }
            if !entries.is_empty() {
                tracing::info!(stream = %self.streams[stream], group = %self.group, count = entries.len(), "claimed idle entries");
            }
            out.extend(self.claimed(stream, entries).await?);
        }
        Ok(out)
    }

    /// Reclaims this consumer's failed entries whose back-off is over.
    async fn due_retries(&mut self) -> Result<Vec<Delivery>, EventsError> {
        let now = Instant::now();
        let (due, waiting): (Vec<Retry>, Vec<Retry>) =
            std::mem::take(&mut self.retries).into_iter().partition(|r| r.due <= now);
        self.retries = waiting;
        let mut out = Vec::new();
        for retry in due {
            // XCLAIM counts a delivery, which is what the dead-letter decision reads.
            let reply: StreamClaimReply = redis::cmd("XCLAIM")
                .arg(&self.streams[retry.stream])
                .arg(&self.group)
                .arg(&self.consumer)
                .arg(millis(retry.idle))
                .arg(&retry.entry)
                .query_async(&mut self.conn.clone())
                .await?;
            out.extend(self.claimed(retry.stream, reply.ids).await?);
        }
        Ok(out)
    }

    /// New entries, waiting up to `block`.
    async fn read_new(&mut self, block: Duration) -> Result<Vec<Delivery>, EventsError> {
        let mut cmd = redis::cmd("XREADGROUP");
        cmd.arg("GROUP")
            .arg(&self.group)
            .arg(&self.consumer)
            .arg("COUNT")
            .arg(self.config.batch)
            .arg("BLOCK")
            // 0 would block for ever.
            .arg(millis(block).max(1))
            .arg("STREAMS")
            .arg(&self.streams);
        for _ in &self.streams {
            cmd.arg(">");
        }
        let reply: Option<StreamReadReply> = match cmd.query_async(&mut self.conn.clone()).await {
            Ok(reply) => reply,
            // The stream or group was deleted behind our back (FLUSHDB, an operator): recreate.
            Err(e) if e.code() == Some("NOGROUP") => {
                tracing::warn!(group = %self.group, "consumer group missing; recreating it");
                self.ensure_groups().await?;
                return Ok(Vec::new());
            }
            Err(e) => return Err(e.into()),
        };
        let mut out = Vec::new();
        for key in reply.map(|r| r.keys).unwrap_or_default() {
            let Some(stream) = self.streams.iter().position(|s| *s == key.key) else { continue };
            for entry in key.ids {
                match decode(&entry) {
                    Some(event) => out.push(Delivery {
                        event,
                        deliveries: 1,
                        handle: Handle::Stream { stream, entry: entry.id.clone() },
                    }),
                    None => self.dead_letter(stream, &entry, 1, "undecodable").await?,
                }
            }
        }
        Ok(out)
    }

    /// Moves an entry to the dead letters and acknowledges it, in one transaction.
    async fn dead_letter(
        &mut self,
        stream: usize,
        entry: &StreamId,
        deliveries: u32,
        reason: &str,
    ) -> Result<(), EventsError> {
        let mut fields: Vec<(&str, String)> = Vec::new();
        let mut names: Vec<&String> = entry.map.keys().collect();
        names.sort();
        for name in names {
            if let Some(value) = entry.get::<String>(name) {
                fields.push((name.as_str(), value));
            }
        }
        fields.push(("group", self.group.clone()));
        fields.push(("source_id", entry.id.clone()));
        fields.push(("deliveries", deliveries.to_string()));
        fields.push(("reason", reason.to_owned()));
        let mut pipe = redis::pipe();
        pipe.atomic();
        xadd(&mut pipe, &self.dead[stream], self.config.max_len, &fields);
        pipe.cmd("XACK").arg(&self.streams[stream]).arg(&self.group).arg(&entry.id).ignore();
        pipe.query_async::<()>(&mut self.conn.clone()).await?;
        // Only a well-formed id is logged: a malformed field could hold anything.
        let event_id = entry.get::<String>("id").and_then(|t| EventId::parse(&t)).map(|id| id.to_string());
        let event_id = event_id.unwrap_or_default();
        tracing::warn!(
            stream = %self.streams[stream],
            group = %self.group,
            entry = %entry.id,
            event.id = %event_id,
            deliveries,
            reason,
            "event moved to the dead letters"
        );
        Ok(())
    }

    fn entry_of<'a>(&self, delivery: &'a Delivery) -> Result<(usize, &'a str), EventsError> {
        match &delivery.handle {
            Handle::Stream { stream, entry } if *stream < self.streams.len() => Ok((*stream, entry)),
            _ => Err(EventsError::InvalidArgument("the delivery is not of this subscription")),
        }
    }
}

#[async_trait::async_trait]
impl Subscription for RedisSubscription {
    async fn next(&mut self) -> Result<Vec<Delivery>, EventsError> {
        if self.last_claim.is_none_or(|t| t.elapsed() >= self.config.claim_interval) {
            self.last_claim = Some(Instant::now());
            let claimed = self.autoclaim().await?;
            if !claimed.is_empty() {
                return Ok(claimed);
            }
        }
        let retried = self.due_retries().await?;
        if !retried.is_empty() {
            return Ok(retried);
        }
        // Wake up in time for the next retry and the next claim round.
        let now = Instant::now();
        let mut until = now + self.config.block;
        if let Some(next_retry) = self.retries.iter().map(|r| r.due).min() {
            until = until.min(next_retry);
        }
        if let Some(last) = self.last_claim {
            until = until.min(last + self.config.claim_interval);
        }
        self.read_new(until.saturating_duration_since(now)).await
    }

    async fn ack(&mut self, delivery: &Delivery) -> Result<(), EventsError> {
        let (stream, entry) = self.entry_of(delivery)?;
        redis::cmd("XACK")
            .arg(&self.streams[stream])
            .arg(&self.group)
            .arg(entry)
            .query_async::<()>(&mut self.conn.clone())
            .await?;
        Ok(())
    }

    async fn fail(&mut self, delivery: &Delivery, permanent: bool) -> Result<Disposition, EventsError> {
        let (stream, entry) = self.entry_of(delivery)?;
        let entry = entry.to_owned();
        // The count Redis keeps, not ours: it includes deliveries to consumers that died.
        let Some(deliveries) = self.delivery_counts(stream, &[entry.as_str()]).await?.into_iter().next().flatten()
        else {
            // No longer ours (claimed by another consumer after min_idle): theirs to finish.
            return Ok(Disposition::Retry);
        };
        if permanent || deliveries >= self.config.max_deliveries {
            let range: StreamRangeReply = redis::cmd("XRANGE")
                .arg(&self.streams[stream])
                .arg(&entry)
                .arg(&entry)
                .query_async(&mut self.conn.clone())
                .await?;
            let reason = if permanent { "permanent" } else { "max_deliveries" };
            match range.ids.first() {
                Some(found) => self.dead_letter(stream, found, deliveries, reason).await?,
                // Trimmed away: nothing left to keep; just stop its redelivery.
                None => {
                    redis::cmd("XACK")
                        .arg(&self.streams[stream])
                        .arg(&self.group)
                        .arg(&entry)
                        .query_async::<()>(&mut self.conn.clone())
                        .await?
                }
            }
            return Ok(Disposition::DeadLettered);
        }
        let wait = self.config.backoff(deliveries);
        self.retries.push(Retry { due: Instant::now() + wait, idle: wait, stream, entry });
        tracing::debug!(
            topic = %self.topics[stream],
            group = %self.group,
            event.id = %delivery.event.id,
            deliveries,
            retry_in_ms = millis(wait),
            "event will be redelivered"
        );
        Ok(Disposition::Retry)
    }
}
