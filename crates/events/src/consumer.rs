//! The consumer runner: each delivered event handled once in effect, in a transaction of its
//! tenant that also records the receipt.

use std::sync::Arc;
use std::time::Duration;

use ehr_core::{Clock, TenantContext};
use ehr_store::{Store, StoreError, Tx};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::{Bus, Delivery, Disposition, Event, Subscription};

/// What a consumer does with an event.
#[async_trait::async_trait]
pub trait Handler: Send + Sync {
    /// Applies `event`. Every write goes through `tx` — a transaction of the event's tenant that
    /// commits only if this returns `Ok`, together with the receipt that keeps the event from
    /// taking effect twice. (On SQLite the writer connection is `tx`'s: opening another write
    /// transaction here would wait for ever.)
    async fn handle(&self, event: &Event, tx: &Tx) -> Result<(), HandlerError>;
}

/// Why a handler failed. The reasons are static text so that no PHI can reach the logs through
/// them.
#[derive(Debug, thiserror::Error)]
pub enum HandlerError {
    /// Worth retrying (a peer is down, a conflict): redelivered after a back-off, dead-lettered
    /// after the last allowed delivery.
    #[error("transient failure: {0}")]
    Transient(&'static str),
    /// Will fail again however often it is tried (an event this consumer cannot apply):
    /// dead-lettered at once.
    #[error("permanent failure: {0}")]
    Permanent(&'static str),
    /// A store error; see [`HandlerError::is_permanent`].
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl HandlerError {
    /// Whether retrying is pointless. Store errors are transient except for invalid values and
    /// duplicates, which a retry would meet again.
    pub fn is_permanent(&self) -> bool {
        match self {
            Self::Permanent(_) => true,
            Self::Transient(_) => false,
            Self::Store(e) => matches!(e, StoreError::InvalidValue(_) | StoreError::AlreadyExists),
        }
    }
}

/// What became of one delivery in the store.
enum Outcome {
    Applied,
    /// The receipt existed: applied before (a redelivery).
    Duplicate,
}

/// Runs `handler` for the events of `topics` as one consumer of group `group` until `shutdown`.
///
/// Each event: a write transaction of the event's tenant records the receipt
/// `(tenant, group, event id)`; if it existed, the event is acknowledged and skipped; otherwise
/// the handler runs in the same transaction, which then commits, and the event is
/// acknowledged. A failed handler rolls everything back and the bus redelivers the event after a
/// back-off, or dead-letters it ([`HandlerError::is_permanent`], or too many deliveries). A
/// crash anywhere leaves the event pending or its receipt committed — never half applied.
///
/// The consumer's name in the group is `<group>-<random>`: a restarted process is a new
/// consumer, and the events its predecessor held are claimed after `BusConfig::min_idle`.
/// On shutdown the event in hand is finished; the rest stay with the bus.
pub fn spawn_consumer(
    bus: Arc<dyn Bus>,
    store: Store,
    clock: Arc<dyn Clock>,
    group: &'static str,
    topics: Vec<String>,
    handler: Arc<dyn Handler>,
    shutdown: CancellationToken,
) -> JoinHandle<()> {
    let consumer = format!("{group}-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    let span = tracing::info_span!("event_consumer", group, consumer = %consumer);
    let runner = Runner { store, clock, group, handler };
    tokio::spawn(
        async move {
            let Some(mut sub) = subscribe(bus.as_ref(), group, &consumer, &topics, &shutdown).await else {
                return;
            };
            let mut backoff = Duration::ZERO;
            loop {
                let batch = tokio::select! {
                    biased;
                    () = shutdown.cancelled() => break,
                    batch = sub.next() => batch,
                };
                match batch {
                    Ok(deliveries) => {
                        backoff = Duration::ZERO;
                        for delivery in deliveries {
                            if shutdown.is_cancelled() {
                                break;
                            }
                            runner.process(sub.as_mut(), &delivery).instrument(consume_span(group, &delivery)).await;
                        }
                    }
                    Err(e) => {
                        backoff = next_backoff(backoff);
                        tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "reading events failed");
                        tokio::select! {
                            () = shutdown.cancelled() => break,
                            () = tokio::time::sleep(backoff) => {}
                        }
                    }
                }
            }
            tracing::info!("consumer stopped");
        }
        .instrument(span),
    )
}

/// The span of one delivery's handling (ids only: the payload is PHI), parented by the
/// `traceparent` the event carries: the handler's work and what it emits or queues (an OML^O33)
/// join the trace of the request that caused the event. In the logs it stays inside the
/// consumer's span; in traces that one is not exported (`ehr_telemetry::trace`), so an event
/// without a trace starts one of its own.
fn consume_span(group: &str, delivery: &Delivery) -> tracing::Span {
    let event = &delivery.event;
    let span = tracing::info_span!(
        "event.consume",
        otel.kind = "consumer",
        otel.status_code = tracing::field::Empty,
        group,
        event.id = %event.id,
        event.topic = %event.topic,
        tenant = event.tenant.as_str(),
        deliveries = delivery.deliveries,
    );
    ehr_telemetry::trace::set_parent(&span, event.trace.as_deref());
    span
}

fn next_backoff(current: Duration) -> Duration {
    (current * 2).clamp(Duration::from_millis(100), Duration::from_secs(10))
}

/// Joins the group, retrying while the bus is unavailable; `None` on shutdown.
async fn subscribe(
    bus: &dyn Bus,
    group: &str,
    consumer: &str,
    topics: &[String],
    shutdown: &CancellationToken,
) -> Option<Box<dyn Subscription>> {
    let mut backoff = Duration::ZERO;
    loop {
        match bus.subscribe(group, consumer, topics).await {
            Ok(sub) => return Some(sub),
            Err(e) => {
                backoff = next_backoff(backoff);
                tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "subscribing failed");
                tokio::select! {
                    () = shutdown.cancelled() => return None,
                    () = tokio::time::sleep(backoff) => {}
                }
            }
        }
    }
}

struct Runner {
    store: Store,
    clock: Arc<dyn Clock>,
    group: &'static str,
    handler: Arc<dyn Handler>,
}

impl Runner {
    async fn process(&self, sub: &mut dyn Subscription, delivery: &Delivery) {
        let event = &delivery.event;
        match self.apply(event).await {
            Ok(outcome) => {
                let duplicate = matches!(outcome, Outcome::Duplicate);
                ehr_telemetry::metrics::event_consumed(
                    self.group,
                    &event.topic,
                    ehr_telemetry::metrics::EventOutcome::handled(duplicate),
                );
                tracing::debug!(event.id = %event.id, event.topic = %event.topic, duplicate, "event handled");
                // A failed ack only means a redelivery, which the receipt turns into a skip.
                if let Err(e) = sub.ack(delivery).await {
                    tracing::warn!(error = %e, event.id = %event.id, "acknowledging an event failed");
                }
            }
            Err(e) => {
                let permanent = e.is_permanent();
                // The span's status says it failed; the error text stays in the log line.
                ehr_telemetry::trace::mark_error(&tracing::Span::current());
                ehr_telemetry::metrics::event_consumed(
                    self.group,
                    &event.topic,
                    ehr_telemetry::metrics::EventOutcome::Failed,
                );
                tracing::warn!(
                    event.id = %event.id,
                    event.topic = %event.topic,
                    deliveries = delivery.deliveries,
                    permanent,
                    error = %e,
                    "event handler failed"
                );
                match sub.fail(delivery, permanent).await {
                    Ok(Disposition::Retry | Disposition::DeadLettered) => {}
                    // The event stays pending and comes back after min_idle.
                    Err(e) => tracing::warn!(error = %e, event.id = %event.id, "reporting a failed event failed"),
                }
            }
        }
    }

    async fn apply(&self, event: &Event) -> Result<Outcome, HandlerError> {
        let ctx = TenantContext::new(event.tenant.clone(), format!("event-consumer:{}", self.group));
        let tx = self.store.write(&ctx).await?;
        if !tx.record_receipt(self.group, &event.id, self.clock.now()).await? {
            tx.commit().await?;
            return Ok(Outcome::Duplicate);
        }
        self.handler.handle(event, &tx).await?;
        tx.commit().await?;
        Ok(Outcome::Applied)
    }
}
