//! The relay: committed events reach the bus once each, in outbox order.

use std::sync::Arc;
use std::time::Duration;

use ehr_events::{Bus, CancellationToken, Event, EventsError, Relay, RelayConfig, Subscription, relay_once};

use crate::{TestRedis, TestStore, clock, ctx, fast};

/// The event ids of a stream, oldest first.
async fn stream_ids(redis: &TestRedis, topic: &str) -> Vec<String> {
    redis.entries(&redis.bus.stream_key(topic)).await.into_iter().map(|e| e["id"].clone()).collect()
}

fn strings(ids: &[ehr_events::EventId]) -> Vec<String> {
    ids.iter().map(ToString::to_string).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_publishes_committed_events_in_order_once() {
    let Some(redis) = TestRedis::start(fast()).await else { return };
    for db in TestStore::all().await {
        let mut ids = db.emit("a", "order.placed", &["ServiceRequest/1", "ServiceRequest/2"]).await;
        ids.extend(db.emit("b", "order.placed", &["ServiceRequest/3"]).await);
        let lab = db.emit("a", "lab.result.received", &["DiagnosticReport/1"]).await;
        ids.extend(db.emit("a", "order.placed", &["ServiceRequest/4"]).await);
        // Rolled back: never published.
        let tx = db.store.write(&ctx("a")).await.unwrap();
        let event = ehr_store::NewEvent {
            topic: "order.placed".into(),
            key: "ServiceRequest/5".into(),
            payload: serde_json::json!({}),
            trace: None,
        };
        tx.emit(&event, clock().now()).await.unwrap();
        drop(tx);

        // Small batches, to cross batch boundaries.
        let mut relayed = 0;
        loop {
            let n = relay_once(&db.store, &redis.bus, clock().as_ref(), 2).await.unwrap();
            if n == 0 {
                break;
            }
            relayed += n;
        }
        assert_eq!(relayed, 5);
        assert_eq!(stream_ids(&redis, "order.placed").await, strings(&ids));
        assert_eq!(stream_ids(&redis, "lab.result.received").await, strings(&lab));
        assert_eq!(db.store.outbox_lag().await.unwrap(), (0, None));
        // Marked: a second pass publishes nothing again.
        assert_eq!(relay_once(&db.store, &redis.bus, clock().as_ref(), 10).await.unwrap(), 0);
        assert_eq!(stream_ids(&redis, "order.placed").await.len(), 4);

        // The entry carries the event; no trace field when there is none.
        let entry = &redis.entries(&redis.bus.stream_key("order.placed")).await[2];
        assert_eq!(entry["tenant"], "b");
        assert_eq!(entry["topic"], "order.placed");
        assert_eq!(entry["key"], "ServiceRequest/3");
        assert_eq!(entry["payload"], r#"{"reference":"ServiceRequest/3"}"#);
        assert!(entry["created_at"].parse::<i64>().unwrap() > 0);
        assert!(!entry.contains_key("trace"));
        db.finish().await;
        // The next backend starts from empty streams.
        redis::cmd("DEL")
            .arg(redis.bus.stream_key("order.placed"))
            .arg(redis.bus.stream_key("lab.result.received"))
            .query_async::<()>(&mut redis.conn())
            .await
            .unwrap();
    }
    redis.cleanup().await;
}

/// A bus that refuses every publish.
struct DownBus;

#[async_trait::async_trait]
impl Bus for DownBus {
    async fn publish(&self, _events: &[Event]) -> Result<(), EventsError> {
        Err(EventsError::Unavailable("test".into()))
    }

    async fn subscribe(&self, _: &str, _: &str, _: &[String]) -> Result<Box<dyn Subscription>, EventsError> {
        Err(EventsError::Unavailable("test".into()))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_publish_marks_nothing() {
    let Some(redis) = TestRedis::start(fast()).await else { return };
    for db in TestStore::all().await {
        let ids = db.emit("a", "order.placed", &["ServiceRequest/1", "ServiceRequest/2"]).await;
        assert!(relay_once(&db.store, &DownBus, clock().as_ref(), 10).await.is_err());
        assert_eq!(db.store.outbox_lag().await.unwrap().0, 2);
        assert_eq!(relay_once(&db.store, &redis.bus, clock().as_ref(), 10).await.unwrap(), 2);
        assert_eq!(stream_ids(&redis, "order.placed").await, strings(&ids));
        db.finish().await;
        redis::cmd("DEL").arg(redis.bus.stream_key("order.placed")).query_async::<()>(&mut redis.conn()).await.unwrap();
    }
    redis.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_task_wakes_on_a_poke_and_drains_on_shutdown() {
    let Some(redis) = TestRedis::start(fast()).await else { return };
    let db = TestStore::sqlite().await;
    // Polling so rarely that only the poke explains a prompt publish.
    let relay = Relay::new(RelayConfig { poll_interval: Duration::from_secs(600), ..RelayConfig::default() });
    let poke = relay.notifier();
    let shutdown = CancellationToken::new();
    let bus: Arc<dyn Bus> = Arc::new(redis.bus.clone());
    let task = relay.spawn(db.store.clone(), bus, clock(), shutdown.clone());

    let first = db.emit("a", "order.placed", &["ServiceRequest/1"]).await;
    poke.notify_one();
    crate::eventually(5, "the poked relay published", || async {
        stream_ids(&redis, "order.placed").await == strings(&first)
    })
    .await;

    // Not poked: published only by the drain at shutdown.
    let second = db.emit("a", "order.placed", &["ServiceRequest/2", "ServiceRequest/3"]).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(stream_ids(&redis, "order.placed").await.len(), 1);
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(10), task).await.unwrap().unwrap();
    let mut all = first.clone();
    all.extend(second);
    assert_eq!(stream_ids(&redis, "order.placed").await, strings(&all));
    assert_eq!(db.store.outbox_lag().await.unwrap(), (0, None));
    db.finish().await;
    redis.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_relays_on_postgres_publish_each_event_once_in_order() {
    let Some(redis) = TestRedis::start(fast()).await else { return };
    let Some(db) = TestStore::postgres().await else {
        redis.cleanup().await;
        return;
    };
    let mut ids = Vec::new();
    for i in 0..60 {
        let key = format!("ServiceRequest/{i}");
        ids.extend(db.emit(if i % 2 == 0 { "a" } else { "b" }, "order.placed", &[key.as_str()]).await);
    }
    let replicas: Vec<_> = (0..3)
        .map(|_| {
            let store = db.store.clone();
            let bus = redis.bus.clone();
            tokio::spawn(async move {
                // Each replica relays until it finds the outbox empty twice in a row.
                let mut empty = 0;
                while empty < 2 {
                    match relay_once(&store, &bus, clock().as_ref(), 7).await.unwrap() {
                        0 => {
                            empty += 1;
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                        _ => empty = 0,
                    }
                }
            })
        })
        .collect();
    for replica in replicas {
        replica.await.unwrap();
    }
    assert_eq!(db.store.outbox_lag().await.unwrap(), (0, None));
    assert_eq!(stream_ids(&redis, "order.placed").await, strings(&ids));
    db.finish().await;
    redis.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopping_relay_waits_for_the_replica_holding_the_lock_to_publish_what_was_there() {
    let Some(redis) = TestRedis::start(fast()).await else { return };
    let Some(db) = TestStore::postgres().await else {
        redis.cleanup().await;
        return;
    };
    let ids = db.emit("a", "order.placed", &["ServiceRequest/1", "ServiceRequest/2"]).await;
    // Another replica holds the relay lock (and has read one event) when this one stops: an
    // empty claim must not pass for an empty outbox.
    let held = db.store.outbox_claim(1).await.unwrap();
    assert_eq!(held.events().len(), 1);
    let shutdown = CancellationToken::new();
    shutdown.cancel();
    let bus: Arc<dyn Bus> = Arc::new(redis.bus.clone());
    let task = Relay::new(RelayConfig::default()).spawn(db.store.clone(), bus, clock(), shutdown);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!task.is_finished(), "the drain ended while events older than it were pending");
    // The other replica goes away without publishing (its transaction rolls back).
    drop(held);
    tokio::time::timeout(Duration::from_secs(10), task).await.unwrap().unwrap();
    assert_eq!(stream_ids(&redis, "order.placed").await, strings(&ids));
    assert_eq!(db.store.outbox_lag().await.unwrap(), (0, None));
    db.finish().await;
    redis.cleanup().await;
}
