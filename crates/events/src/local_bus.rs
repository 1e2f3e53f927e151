//! [`Bus`] in process, for `ehr serve` on SQLite without Redis.
//!
//! The outbox table is the log. A consumer group reads the committed events of each topic after
//! its cursor (`event_cursors`, one row per group and topic) and moves the cursor over events
//! once every earlier one is acknowledged or dead-lettered. An event committed before a crash
//! is therefore delivered after the restart; one handled but not yet passed by the cursor is
//! delivered again and skipped by its receipt. Publishing only wakes the subscribers: the rows
//! are already there.
//!
//! Why SQLite only: the cursor relies on outbox positions being assigned in commit order, which
//! SQLite's single writer guarantees. On PostgreSQL a transaction can take position 5, commit
//! after position 6 was consumed, and be passed over; [`LocalBus::new`] refuses it.
//!
//! Failed events are retried after a back-off (in memory: delivery counts restart with the
//! process); after [`BusConfig::max_deliveries`] they are recorded in `event_dead_letters` and
//! passed. Dead letters keep the outbox position; the event itself stays in the outbox until
//! the purge.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use ehr_core::Clock;
use ehr_store::Store;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::{Bus, BusConfig, Delivery, Disposition, Event, EventsError, Handle, Subscription, check_subscription};

/// The in-process event bus. Cheap to clone.
#[derive(Clone)]
pub struct LocalBus {
    inner: Arc<Local>,
}

impl std::fmt::Debug for LocalBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalBus").finish_non_exhaustive()
    }
}

struct Local {
    store: Store,
    clock: Arc<dyn Clock>,
    config: BusConfig,
    /// Bumped on every publish; subscribers wait for a change.
    wake: watch::Sender<u64>,
    /// The state of each (group, topic), shared by the group's subscriptions in this process.
    groups: Mutex<HashMap<(String, String), SharedState>>,
    next_subscriber: AtomicU64,
}

type SharedState = Arc<Mutex<TopicState>>;

/// One group's progress on one topic.
struct TopicState {
    /// Every event at or before this position is done (persisted as the cursor).
    cursor: i64,
    /// The highest position loaded into `entries`.
    fetched: i64,
    /// Loaded events after the cursor, by position.
    entries: BTreeMap<i64, Entry>,
}

struct Entry {
    event: Event,
    deliveries: u32,
    state: State,
}

enum State {
    /// Deliverable from then on.
    Ready { not_before: Instant },
    /// Delivered to subscription `owner`; another may take it over after `min_idle`.
    InFlight { owner: u64, since: Instant },
    /// Acknowledged or dead-lettered, waiting for the earlier ones.
    Done,
}

/// Locks a state, recovering it from a panicked holder (the state stays consistent between
/// statements: no invariant spans an await or a panic point).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl TopicState {
    /// Drops done events from the front; the new cursor if it moved.
    fn advance(&mut self) -> Option<i64> {
        let mut moved = None;
        while let Some(first) = self.entries.first_entry() {
            if !matches!(first.get().state, State::Done) {
                break;
            }
            let (seq, _) = first.remove_entry();
            self.cursor = seq;
            moved = Some(seq);
        }
        moved
    }
}

impl LocalBus {
    /// A bus over `store`'s outbox. [`EventsError::Unsupported`] on PostgreSQL (module docs).
    pub fn new(store: Store, clock: Arc<dyn Clock>, config: BusConfig) -> Result<Self, EventsError> {
        if store.backend_name() != "sqlite" {
            return Err(EventsError::Unsupported("the in-process event bus needs SQLite; use Redis with PostgreSQL"));
        }
        if config.batch == 0 || config.max_deliveries == 0 {
            return Err(EventsError::InvalidArgument("batch and max_deliveries must be positive"));
        }
        let (wake, _) = watch::channel(0);
        Ok(Self {
            inner: Arc::new(Local {
                store,
                clock,
                config,
                wake,
                groups: Mutex::new(HashMap::new()),
                next_subscriber: AtomicU64::new(1),
            }),
        })
    }

    async fn state(&self, group: &str, topic: &str) -> Result<SharedState, EventsError> {
        let key = (group.to_owned(), topic.to_owned());
        if let Some(state) = lock(&self.inner.groups).get(&key) {
            return Ok(state.clone());
        }
        let cursor = self.inner.store.event_cursor(group, topic).await?;
        let fresh = Arc::new(Mutex::new(TopicState { cursor, fetched: cursor, entries: BTreeMap::new() }));
        // Another subscription of the group may have created it meanwhile: keep the first.
        Ok(lock(&self.inner.groups).entry(key).or_insert(fresh).clone())
    }
}

#[async_trait::async_trait]
impl Bus for LocalBus {
    async fn publish(&self, _events: &[Event]) -> Result<(), EventsError> {
        // The events are committed outbox rows already; subscribers only need waking.
        self.inner.wake.send_modify(|n| *n = n.wrapping_add(1));
        Ok(())
    }

    async fn subscribe(
        &self,
        group: &str,
        consumer: &str,
        topics: &[String],
    ) -> Result<Box<dyn Subscription>, EventsError> {
        // The consumer name only matters to Redis; here each subscription is told apart by id.
        check_subscription(group, consumer, topics)?;
        let mut states = Vec::with_capacity(topics.len());
        for topic in topics {
            states.push((topic.clone(), self.state(group, topic).await?));
        }
        Ok(Box::new(LocalSubscription {
            bus: self.inner.clone(),
            id: self.inner.next_subscriber.fetch_add(1, Ordering::Relaxed),
            group: group.to_owned(),
            topics: states,
            wake: self.inner.wake.subscribe(),
        }))
    }
}

struct LocalSubscription {
    bus: Arc<Local>,
    /// Distinguishes this subscription's in-flight events from those of the group's others.
    id: u64,
    group: String,
    topics: Vec<(String, SharedState)>,
    wake: watch::Receiver<u64>,
}

impl LocalSubscription {
    /// Most events kept in memory per topic; beyond them the outbox waits.
    fn window(&self) -> usize {
        self.bus.config.batch.saturating_mul(4)
    }

    /// Loads committed events after what each topic has loaded.
    async fn refill(&self) -> Result<(), EventsError> {
        for (topic, state) in &self.topics {
            let (after, room) = {
                let st = lock(state);
                (st.fetched, self.window().saturating_sub(st.entries.len()))
            };
            if room == 0 {
                continue;
            }
            let rows = self.bus.store.outbox_after(topic, after, room as u64).await?;
            let mut undecodable = Vec::new();
            {
                let mut st = lock(state);
                for row in &rows {
                    st.fetched = st.fetched.max(row.seq);
                    // Done and passed already (a concurrent refill of the group loaded it).
                    if row.seq <= st.cursor || st.entries.contains_key(&row.seq) {
                        continue;
                    }
                    match Event::from_outbox(row) {
                        Ok(event) => {
                            let ready = State::Ready { not_before: Instant::now() };
                            st.entries.insert(row.seq, Entry { event, deliveries: 0, state: ready });
                        }
                        Err(_) => undecodable.push((row.seq, row.id)),
                    }
                }
            }
            for (seq, id) in undecodable {
                // Not loaded, so the cursor passes it; the record keeps it findable.
                self.bus.store.record_dead_letter(&self.group, seq, &id, topic, 0, self.bus.clock.now()).await?;
                tracing::error!(topic = %topic, group = %self.group, event.id = %id, "undecodable event dead-lettered");
            }
        }
        Ok(())
    }

    /// Takes the deliverable events (up to a batch) for this subscription; otherwise the
    /// earliest instant one becomes deliverable.
    fn take(&self) -> (Vec<Delivery>, Option<Instant>) {
        let now = Instant::now();
        let min_idle = self.bus.config.min_idle;
        let mut out = Vec::new();
        let mut next_due: Option<Instant> = None;
        for (index, (_, state)) in self.topics.iter().enumerate() {
            let mut st = lock(state);
            for (seq, entry) in st.entries.iter_mut() {
                if out.len() >= self.bus.config.batch {
                    break;
                }
                let due = match entry.state {
                    State::Ready { not_before } => not_before,
                    State::InFlight { since, .. } => since + min_idle,
                    State::Done => continue,
                };
                if due > now {
                    next_due = Some(next_due.map_or(due, |d| d.min(due)));
                    continue;
                }
                entry.state = State::InFlight { owner: self.id, since: now };
                entry.deliveries = entry.deliveries.saturating_add(1);
                out.push(Delivery {
                    event: entry.event.clone(),
                    deliveries: entry.deliveries,
                    handle: Handle::Local { topic: index, seq: *seq },
                });
            }
        }
        (out, next_due)
    }

    fn position(&self, delivery: &Delivery) -> Result<(usize, i64), EventsError> {
        match delivery.handle {
            Handle::Local { topic, seq } if topic < self.topics.len() => Ok((topic, seq)),
            _ => Err(EventsError::InvalidArgument("the delivery is not of this subscription")),
        }
    }

    /// Marks an event done and persists the cursor if it moved.
    async fn finish(&self, topic: usize, seq: i64) -> Result<(), EventsError> {
        let (name, state) = &self.topics[topic];
        let moved = {
            let mut st = lock(state);
            if let Some(entry) = st.entries.get_mut(&seq) {
                entry.state = State::Done;
            }
            st.advance()
        };
        if let Some(cursor) = moved {
            self.bus.store.advance_event_cursor(&self.group, name, cursor, self.bus.clock.now()).await?;
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl Subscription for LocalSubscription {
    async fn next(&mut self) -> Result<Vec<Delivery>, EventsError> {
        let deadline = Instant::now() + self.bus.config.block;
        loop {
            // Seen before reading, so a publish during the read is not missed.
            self.wake.borrow_and_update();
            self.refill().await?;
            let (out, next_due) = self.take();
            if !out.is_empty() {
                return Ok(out);
            }
            if Instant::now() >= deadline {
                return Ok(out);
            }
            let until = next_due.map_or(deadline, |due| due.min(deadline));
            tokio::select! {
                changed = self.wake.changed() => {
                    if changed.is_err() {
                        // The bus is gone; no more wake-ups, only the clock.
                        tokio::time::sleep_until(until).await;
                    }
                }
                () = tokio::time::sleep_until(until) => {}
            }
        }
    }

    async fn ack(&mut self, delivery: &Delivery) -> Result<(), EventsError> {
        let (topic, seq) = self.position(delivery)?;
        self.finish(topic, seq).await
    }

    async fn fail(&mut self, delivery: &Delivery, permanent: bool) -> Result<Disposition, EventsError> {
        let (topic, seq) = self.position(delivery)?;
        let deliveries = {
            let mut st = lock(&self.topics[topic].1);
            let Some(entry) = st.entries.get_mut(&seq) else { return Ok(Disposition::Retry) };
            match entry.state {
                State::InFlight { owner, .. } if owner == self.id => {}
                // Taken over by another subscription of the group, or finished: not ours to decide.
                _ => return Ok(Disposition::Retry),
            }
            if !permanent && entry.deliveries < self.bus.config.max_deliveries {
                let wait = self.bus.config.backoff(entry.deliveries);
                entry.state = State::Ready { not_before: Instant::now() + wait };
                return Ok(Disposition::Retry);
            }
            entry.deliveries
        };
        let topic_name = &self.topics[topic].0;
        // Recorded before the cursor passes it: a crash in between redelivers, never loses.
        let event = &delivery.event;
        self.bus
            .store
            .record_dead_letter(&self.group, seq, &event.id, topic_name, deliveries, self.bus.clock.now())
            .await?;
        tracing::warn!(
            topic = %topic_name,
            group = %self.group,
            event.id = %event.id,
            deliveries,
            permanent,
            "event moved to the dead letters"
        );
        self.finish(topic, seq).await?;
        Ok(Disposition::DeadLettered)
    }
}

impl Drop for LocalSubscription {
    /// A consumer that goes away (shut down, or its task aborted) hands its in-flight events
    /// back to the group at once instead of after `min_idle`.
    fn drop(&mut self) {
        let now = Instant::now();
        for (_, state) in &self.topics {
            let mut st = lock(state);
            for entry in st.entries.values_mut() {
                if matches!(entry.state, State::InFlight { owner, .. } if owner == self.id) {
                    entry.state = State::Ready { not_before: now };
                }
            }
        }
    }
}
