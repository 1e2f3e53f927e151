//! The outbox relay: committed events from the outbox to the bus, in outbox order.

use std::sync::Arc;
use std::time::Duration;

use ehr_core::Clock;
use ehr_store::Store;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::{Bus, Event, EventsError};

/// How the relay polls and drains.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// The outbox is read at least this often; a poke through [`Relay::notifier`] reads it at once.
    pub poll_interval: Duration,
    /// Most events per batch (claimed, published and marked together).
    pub batch: u64,
    /// On shutdown, pending events are relayed for at most this long.
    pub drain_timeout: Duration,
    /// Longest wait between attempts while the bus or the database fails.
    pub max_backoff: Duration,
}

impl Default for RelayConfig {
    fn default() -> Self {
        Self {
            poll_interval: Duration::from_millis(500),
            batch: 256,
            drain_timeout: Duration::from_secs(5),
            max_backoff: Duration::from_secs(10),
        }
    }
}

/// The background task moving events from the outbox to the bus.
pub struct Relay {
    config: RelayConfig,
    notify: Arc<Notify>,
}

impl Relay {
    /// A relay, not yet running; take its [`Relay::notifier`] before spawning it.
    pub fn new(config: RelayConfig) -> Self {
        Self { config, notify: Arc::new(Notify::new()) }
    }

    /// A writer that emitted events calls `notify_one()` on this after committing, so the relay
    /// publishes them at once instead of at the next poll. A poke while the relay is busy is
    /// kept for its next wait.
    pub fn notifier(&self) -> Arc<Notify> {
        self.notify.clone()
    }

    /// Runs the relay until `shutdown`, then relays what is pending (for at most
    /// [`RelayConfig::drain_timeout`]) and ends.
    pub fn spawn(
        self,
        store: Store,
        bus: Arc<dyn Bus>,
        clock: Arc<dyn Clock>,
        shutdown: CancellationToken,
    ) -> JoinHandle<()> {
        let Self { config, notify } = self;
        let span = tracing::info_span!("outbox_relay");
        tokio::spawn(
            async move {
                let mut backoff = Duration::ZERO;
                while !shutdown.is_cancelled() {
                    match relay_once(&store, bus.as_ref(), clock.as_ref(), config.batch).await {
                        // A full batch: more may be waiting.
                        Ok(n) if n as u64 >= config.batch => backoff = Duration::ZERO,
                        Ok(_) => {
                            backoff = Duration::ZERO;
                            tokio::select! {
                                () = notify.notified() => {}
                                () = tokio::time::sleep(config.poll_interval) => {}
                                () = shutdown.cancelled() => {}
                            }
                        }
                        Err(e) => {
                            backoff = (backoff * 2).clamp(Duration::from_millis(100), config.max_backoff);
                            tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "relaying events failed");
                            tokio::select! {
                                () = tokio::time::sleep(backoff) => {}
                                () = shutdown.cancelled() => {}
                            }
                        }
                    }
                }
                drain(&store, bus.as_ref(), clock.as_ref(), &config).await;
            }
            .instrument(span),
        )
    }
}

/// How often a draining relay looks again while another replica holds the relay lock.
const DRAIN_RECHECK: Duration = Duration::from_millis(50);

/// Relays until every event committed before the drain began is published — by this relay, or
/// by another replica holding the relay lock — the bus fails, or the drain time is up.
///
/// An empty claim alone does not say the outbox is empty: on PostgreSQL it is also what a relay
/// gets while another replica holds the lock. When replicas stop together, the one holding the
/// lock may have read the outbox before this process's last events committed and then end, so
/// the drain waits until no event older than its start is pending.
async fn drain(store: &Store, bus: &dyn Bus, clock: &dyn Clock, config: &RelayConfig) {
    let started = clock.now().timestamp_millis();
    let relay_all = async {
        let mut total = 0;
        loop {
            match relay_once(store, bus, clock, config.batch).await? {
                0 => match store.outbox_pending(1).await?.first() {
                    Some(oldest) if oldest.created_at <= started => tokio::time::sleep(DRAIN_RECHECK).await,
                    // Empty, or only events written since (another replica's to publish).
                    _ => return Ok::<usize, EventsError>(total),
                },
                n => total += n,
            }
        }
    };
    match tokio::time::timeout(config.drain_timeout, relay_all).await {
        Ok(Ok(count)) => tracing::info!(count, "outbox drained; relay stopped"),
        Ok(Err(e)) => tracing::warn!(error = %e, "outbox drain failed; the events stay pending for the next start"),
        Err(_) => tracing::warn!("outbox drain timed out; the events stay pending for the next start"),
    }
}

/// Relays one batch: claims up to `limit` pending events, publishes them in order, marks them
/// published. Returns how many were relayed (0 when none were pending, or another relay replica
/// is at work). When publishing fails nothing is marked, and the batch is retried later.
pub async fn relay_once(store: &Store, bus: &dyn Bus, clock: &dyn Clock, limit: u64) -> Result<usize, EventsError> {
    let batch = store.outbox_claim(limit).await?;
    let rows = batch.events();
    if rows.is_empty() {
        return Ok(0);
    }
    let mut events = Vec::with_capacity(rows.len());
    for row in rows {
        match Event::from_outbox(row) {
            Ok(event) => events.push(event),
            // Edited behind the store's back: holding the whole outbox up for it would be worse.
            Err(_) => tracing::error!(event.id = %row.id, seq = row.seq, "undecodable outbox event skipped"),
        }
    }
    // One span per event, a child of the span that emitted it: the hop from the outbox to the
    // bus in the trace of the request (or message) that caused it. The event goes on the bus
    // with the publish span's context, so that the consumers' spans are its children (the
    // in-process bus reads the outbox row instead: there they are the emitter's children).
    let spans: Vec<tracing::Span> = events.iter().map(publish_span).collect();
    for (event, span) in events.iter_mut().zip(&spans) {
        if let Some(traceparent) = ehr_telemetry::trace::traceparent_of(span) {
            event.trace = Some(traceparent);
        }
    }
    let published = bus.publish(&events).await;
    for span in spans {
        if published.is_err() {
            span.record("otel.status_code", "error");
        }
    }
    published?;
    let count = rows.len();
    let (first, last) = (rows[0].seq, rows[count - 1].seq);
    batch.mark_published(clock.now()).await?;
    tracing::debug!(count, first_seq = first, last_seq = last, "events relayed");
    Ok(count)
}

/// The span of one event's hand-over to the bus (ids only: the payload is PHI), parented by the
/// `traceparent` the emitter stored with it.
fn publish_span(event: &Event) -> tracing::Span {
    let span = tracing::info_span!(
        parent: None,
        "event.publish",
        otel.kind = "producer",
        otel.status_code = tracing::field::Empty,
        event.id = %event.id,
        event.topic = %event.topic,
        tenant = event.tenant.as_str(),
    );
    ehr_telemetry::trace::set_parent(&span, event.trace.as_deref());
    span
}
