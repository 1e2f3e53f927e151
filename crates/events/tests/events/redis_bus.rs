//! The Redis bus with the consumer runner: at-least-once delivery, exactly-once effect.

use std::sync::Arc;
use std::time::Duration;

use ehr_events::{Bus, BusConfig, CancellationToken, Handler, relay_once, spawn_consumer};

use crate::{Mode, Recorder, TestRedis, TestStore, clock, eventually, fast, topics};

const TOPIC: &str = "order.placed";

fn consumer(
    redis: &TestRedis,
    db: &TestStore,
    group: &'static str,
    handler: Arc<Recorder>,
    shutdown: &CancellationToken,
) -> tokio::task::JoinHandle<()> {
    let handler: Arc<dyn Handler> = handler;
    spawn_consumer(
        Arc::new(redis.bus.clone()),
        db.store.clone(),
        clock(),
        group,
        topics(&[TOPIC]),
        handler,
        shutdown.clone(),
    )
}

async fn relay_all(db: &TestStore, redis: &TestRedis) {
    while relay_once(&db.store, &redis.bus, clock().as_ref(), 100).await.unwrap() > 0 {}
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_event_is_redelivered_and_applied_once() {
    let Some(redis) = TestRedis::start(fast()).await else { return };
    let db = TestStore::sqlite().await;
    let ids = db.emit("a", TOPIC, &["ServiceRequest/1", "ServiceRequest/2", "ServiceRequest/3"]).await;
    relay_all(&db, &redis).await;

    let shutdown = CancellationToken::new();
    let recorder = Recorder::new(Mode::FailFirst);
    let task = consumer(&redis, &db, "orders", recorder.clone(), &shutdown);
    eventually(10, "every event applied", || async { db.effects("a").await == 3 }).await;
    eventually(5, "every entry acknowledged", || async {
        redis.pending(&redis.bus.stream_key(TOPIC), "orders").await == 0
    })
    .await;
    // Two deliveries each: the failed one and the one that took effect.
    let calls = recorder.calls();
    assert_eq!(calls.len(), 6);
    for id in &ids {
        assert_eq!(calls.iter().filter(|c| *c == id).count(), 2);
    }
    assert!(redis.entries(&redis.bus.dead_letter_key(TOPIC)).await.is_empty());
    shutdown.cancel();
    task.await.unwrap();
    db.finish().await;
    redis.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_consumers_of_a_group_apply_each_event_once_even_when_published_twice() {
    let Some(redis) = TestRedis::start(fast()).await else { return };
    let db = TestStore::sqlite().await;
    let keys: Vec<String> = (0..20).map(|i| format!("ServiceRequest/{i}")).collect();
    let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
    db.emit("a", TOPIC, &keys[..10]).await;
    db.emit("b", TOPIC, &keys[10..]).await;
    // A relay that crashed between publishing and marking publishes the batch again.
    let pending: Vec<_> = db
        .store
        .outbox_pending(100)
        .await
        .unwrap()
        .iter()
        .map(|e| ehr_events::Event::from_outbox(e).unwrap())
        .collect();
    redis.bus.publish(&pending).await.unwrap();
    relay_all(&db, &redis).await;
    assert_eq!(redis.entries(&redis.bus.stream_key(TOPIC)).await.len(), 40);

    let shutdown = CancellationToken::new();
    let (first, second, billing) = (Recorder::new(Mode::Apply), Recorder::new(Mode::Apply), Recorder::new(Mode::Apply));
    let tasks = vec![
        consumer(&redis, &db, "orders", first.clone(), &shutdown),
        consumer(&redis, &db, "orders", second.clone(), &shutdown),
        // Another group gets every event too, and records its own receipts.
        consumer(&redis, &db, "billing", billing.clone(), &shutdown),
    ];
    eventually(10, "both groups read and acknowledged every entry", || async {
        redis.done(&redis.bus.stream_key(TOPIC), "orders").await
            && redis.done(&redis.bus.stream_key(TOPIC), "billing").await
    })
    .await;
    // 20 events, each applied once per group: 40 effects; 40 deliveries per group.
    assert_eq!(db.effects("a").await, 20);
    assert_eq!(db.effects("b").await, 20);
    // Handlers run only for first deliveries; duplicates stop at the receipt.
    assert_eq!(first.calls().len() + second.calls().len(), 20);
    assert_eq!(billing.calls().len(), 20);
    shutdown.cancel();
    for task in tasks {
        task.await.unwrap();
    }
    db.finish().await;
    redis.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_events_of_a_consumer_killed_mid_way_are_claimed_by_another() {
    let Some(redis) = TestRedis::start(fast()).await else { return };
    let db = TestStore::sqlite().await;
    db.emit("a", TOPIC, &["ServiceRequest/1", "ServiceRequest/2", "ServiceRequest/3"]).await;
    relay_all(&db, &redis).await;

    // The first consumer takes the batch and hangs on its first event.
    let shutdown = CancellationToken::new();
    let stuck = Recorder::new(Mode::HangFirst);
    let doomed = consumer(&redis, &db, "orders", stuck.clone(), &shutdown);
    tokio::time::timeout(Duration::from_secs(10), stuck.called.notified()).await.unwrap();
    assert_eq!(redis.pending(&redis.bus.stream_key(TOPIC), "orders").await, 3);
    doomed.abort();
    let _ = doomed.await;

    // Its entries stay pending under its name until another consumer claims them (min_idle).
    let healthy = Recorder::new(Mode::Apply);
    let task = consumer(&redis, &db, "orders", healthy.clone(), &shutdown);
    eventually(10, "the second consumer applied everything", || async { db.effects("a").await == 3 }).await;
    eventually(5, "every entry acknowledged", || async {
        redis.pending(&redis.bus.stream_key(TOPIC), "orders").await == 0
    })
    .await;
    assert_eq!(healthy.calls().len(), 3);
    assert_eq!(stuck.calls().len(), 1);
    shutdown.cancel();
    task.await.unwrap();
    db.finish().await;
    redis.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_failing_every_delivery_is_dead_lettered() {
    let Some(redis) = TestRedis::start(fast()).await else { return };
    let db = TestStore::sqlite().await;
    let ids = db.emit("a", TOPIC, &["ServiceRequest/1"]).await;
    relay_all(&db, &redis).await;

    let shutdown = CancellationToken::new();
    let recorder = Recorder::new(Mode::Transient);
    let task = consumer(&redis, &db, "orders", recorder.clone(), &shutdown);
    let dead_key = redis.bus.dead_letter_key(TOPIC);
    eventually(10, "the event is dead-lettered", || async { !redis.entries(&dead_key).await.is_empty() }).await;
    let dead = redis.entries(&dead_key).await;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0]["id"], ids[0].to_string());
    assert_eq!(dead[0]["group"], "orders");
    assert_eq!(dead[0]["reason"], "max_deliveries");
    assert_eq!(dead[0]["deliveries"], "3");
    assert_eq!(dead[0]["payload"], r#"{"reference":"ServiceRequest/1"}"#);
    assert_eq!(recorder.calls().len(), 3, "max_deliveries = 3");
    assert_eq!(redis.pending(&redis.bus.stream_key(TOPIC), "orders").await, 0);
    assert_eq!(db.effects("a").await, 0);

    // A permanent failure goes at once.
    let permanent = Recorder::new(Mode::Permanent);
    let other = consumer(&redis, &db, "billing", permanent.clone(), &shutdown);
    eventually(10, "dead-lettered for billing", || async {
        redis.entries(&dead_key).await.iter().any(|e| e["group"] == "billing")
    })
    .await;
    let dead = redis.entries(&dead_key).await;
    assert_eq!((dead[1]["reason"].as_str(), dead[1]["deliveries"].as_str()), ("permanent", "1"));
    assert_eq!(permanent.calls().len(), 1);
    shutdown.cancel();
    task.await.unwrap();
    other.await.unwrap();
    db.finish().await;
    redis.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undecodable_entry_is_dead_lettered_without_a_delivery() {
    let Some(redis) = TestRedis::start(fast()).await else { return };
    let key = redis.bus.stream_key(TOPIC);
    let mut sub = redis.bus.subscribe("orders", "c1", &topics(&[TOPIC])).await.unwrap();
    redis::cmd("XADD")
        .arg(&key)
        .arg("*")
        .arg("id")
        .arg("not-a-uuid")
        .query_async::<String>(&mut redis.conn())
        .await
        .unwrap();
    let mut got = Vec::new();
    for _ in 0..3 {
        got.extend(sub.next().await.unwrap());
    }
    assert!(got.is_empty());
    let dead = redis.entries(&redis.bus.dead_letter_key(TOPIC)).await;
    assert_eq!(dead.len(), 1);
    assert_eq!((dead[0]["reason"].as_str(), dead[0]["id"].as_str()), ("undecodable", "not-a-uuid"));
    assert_eq!(redis.pending(&key, "orders").await, 0);
    redis.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_created_late_reads_from_the_start_and_streams_are_bounded() {
    let config = BusConfig { max_len: 200, ..fast() };
    let Some(redis) = TestRedis::start(config).await else { return };
    let db = TestStore::sqlite().await;
    let keys: Vec<String> = (0..1000).map(|i| format!("ServiceRequest/{i}")).collect();
    let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
    db.emit("a", TOPIC, &keys).await;
    relay_all(&db, &redis).await;
    let len: usize = redis::cmd("XLEN").arg(redis.bus.stream_key(TOPIC)).query_async(&mut redis.conn()).await.unwrap();
    // MAXLEN ~ trims whole nodes: about the bound, never everything.
    assert!((200..1000).contains(&len), "{len}");

    // A group subscribing after the events were published still gets what the stream holds.
    let mut sub = redis.bus.subscribe("late", "c1", &topics(&[TOPIC])).await.unwrap();
    let first = sub.next().await.unwrap();
    assert_eq!(first.len(), fast().batch);
    assert!(first.iter().all(|d| d.deliveries == 1 && d.event.tenant.as_str() == "a"));
    db.finish().await;
    redis.cleanup().await;
}
