//! The in-process bus with the consumer runner, on SQLite.

use std::sync::Arc;
use std::time::Duration;

use ehr_events::{
    Bus, BusConfig, CancellationToken, EventsError, Handler, LocalBus, Relay, RelayConfig, spawn_consumer,
};

use crate::{Mode, Recorder, TestStore, clock, eventually, fast, topics};

const TOPIC: &str = "lab.result.received";

fn bus(db: &TestStore, config: BusConfig) -> Arc<LocalBus> {
    Arc::new(LocalBus::new(db.store.clone(), clock(), config).unwrap())
}

fn consumer(
    bus: &Arc<LocalBus>,
    db: &TestStore,
    group: &'static str,
    handler: Arc<Recorder>,
    shutdown: &CancellationToken,
) -> tokio::task::JoinHandle<()> {
    let handler: Arc<dyn Handler> = handler;
    let bus: Arc<dyn Bus> = bus.clone();
    spawn_consumer(bus, db.store.clone(), clock(), group, topics(&[TOPIC]), handler, shutdown.clone())
}

/// The outbox position of the last event emitted.
async fn last_seq(db: &TestStore) -> i64 {
    db.store.outbox_after(TOPIC, 0, 10_000).await.unwrap().last().unwrap().seq
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_event_is_redelivered_and_applied_once() {
    let db = TestStore::sqlite().await;
    let bus = bus(&db, fast());
    let ids = db.emit("a", TOPIC, &["DiagnosticReport/1", "DiagnosticReport/2"]).await;
    let shutdown = CancellationToken::new();
    let recorder = Recorder::new(Mode::FailFirst);
    let task = consumer(&bus, &db, "patient-record", recorder.clone(), &shutdown);
    eventually(10, "every event applied", || async { db.effects("a").await == 2 }).await;
    let seq = last_seq(&db).await;
    eventually(5, "the cursor passed every event", || async {
        db.store.event_cursor("patient-record", TOPIC).await.unwrap() == seq
    })
    .await;
    let calls = recorder.calls();
    assert_eq!(calls.len(), 4);
    for id in &ids {
        assert_eq!(calls.iter().filter(|c| *c == id).count(), 2);
    }
    assert!(db.store.dead_letters("patient-record").await.unwrap().is_empty());
    shutdown.cancel();
    task.await.unwrap();
    db.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_consumers_of_a_group_apply_each_event_once() {
    let db = TestStore::sqlite().await;
    let bus = bus(&db, fast());
    let keys: Vec<String> = (0..30).map(|i| format!("DiagnosticReport/{i}")).collect();
    let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
    db.emit("a", TOPIC, &keys[..15]).await;
    db.emit("b", TOPIC, &keys[15..]).await;
    let shutdown = CancellationToken::new();
    let (first, second, other) = (Recorder::new(Mode::Apply), Recorder::new(Mode::Apply), Recorder::new(Mode::Apply));
    let tasks = vec![
        consumer(&bus, &db, "patient-record", first.clone(), &shutdown),
        consumer(&bus, &db, "patient-record", second.clone(), &shutdown),
        consumer(&bus, &db, "clins-adapter", other.clone(), &shutdown),
    ];
    let seq = last_seq(&db).await;
    eventually(10, "both groups are through", || async {
        db.store.event_cursor("patient-record", TOPIC).await.unwrap() == seq
            && db.store.event_cursor("clins-adapter", TOPIC).await.unwrap() == seq
    })
    .await;
    // 30 events, applied once per group.
    assert_eq!(db.effects("a").await + db.effects("b").await, 60);
    assert_eq!(first.calls().len() + second.calls().len(), 30);
    assert_eq!(other.calls().len(), 30);
    shutdown.cancel();
    for task in tasks {
        task.await.unwrap();
    }
    db.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_events_of_a_consumer_killed_mid_way_go_to_another() {
    let db = TestStore::sqlite().await;
    // min_idle far away: the hand-over comes from the dropped subscription, not the clock.
    let bus = bus(&db, BusConfig { min_idle: Duration::from_secs(600), ..fast() });
    db.emit("a", TOPIC, &["DiagnosticReport/1", "DiagnosticReport/2", "DiagnosticReport/3"]).await;
    let shutdown = CancellationToken::new();
    let stuck = Recorder::new(Mode::HangFirst);
    let doomed = consumer(&bus, &db, "patient-record", stuck.clone(), &shutdown);
    tokio::time::timeout(Duration::from_secs(10), stuck.called.notified()).await.unwrap();
    doomed.abort();
    let _ = doomed.await;

    let healthy = Recorder::new(Mode::Apply);
    let task = consumer(&bus, &db, "patient-record", healthy.clone(), &shutdown);
    eventually(10, "the second consumer applied everything", || async { db.effects("a").await == 3 }).await;
    assert_eq!(healthy.calls().len(), 3);
    shutdown.cancel();
    task.await.unwrap();
    db.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_consumers_events_are_taken_over_after_min_idle() {
    let db = TestStore::sqlite().await;
    let bus = bus(&db, fast());
    db.emit("a", TOPIC, &["DiagnosticReport/1"]).await;
    // A subscription that takes the event and never answers (alive, not dropped).
    let mut stuck = bus.subscribe("patient-record", "stuck", &topics(&[TOPIC])).await.unwrap();
    assert_eq!(stuck.next().await.unwrap().len(), 1);
    let shutdown = CancellationToken::new();
    let healthy = Recorder::new(Mode::Apply);
    let task = consumer(&bus, &db, "patient-record", healthy.clone(), &shutdown);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(db.effects("a").await, 0, "not before min_idle");
    eventually(10, "taken over", || async { db.effects("a").await == 1 }).await;
    shutdown.cancel();
    task.await.unwrap();
    drop(stuck);
    db.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_failing_every_delivery_is_dead_lettered_and_passed() {
    let db = TestStore::sqlite().await;
    let bus = bus(&db, fast());
    let ids = db.emit("a", TOPIC, &["DiagnosticReport/1"]).await;
    let shutdown = CancellationToken::new();
    let failing = Recorder::new(Mode::Transient);
    let task = consumer(&bus, &db, "patient-record", failing.clone(), &shutdown);
    eventually(10, "dead-lettered", || async { !db.store.dead_letters("patient-record").await.unwrap().is_empty() })
        .await;
    let dead = db.store.dead_letters("patient-record").await.unwrap();
    assert_eq!((dead[0].event_id, dead[0].deliveries, dead[0].topic.as_str()), (ids[0], 3, TOPIC));
    assert_eq!(failing.calls().len(), 3);
    let seq = last_seq(&db).await;
    eventually(5, "the cursor passed it", || async {
        db.store.event_cursor("patient-record", TOPIC).await.unwrap() == seq
    })
    .await;
    shutdown.cancel();
    task.await.unwrap();

    // A permanent failure goes at once.
    let permanent = Recorder::new(Mode::Permanent);
    let shutdown = CancellationToken::new();
    let task = consumer(&bus, &db, "clins-adapter", permanent.clone(), &shutdown);
    eventually(10, "dead-lettered at once", || async {
        db.store.dead_letters("clins-adapter").await.unwrap().first().is_some_and(|d| d.deliveries == 1)
    })
    .await;
    assert_eq!(permanent.calls().len(), 1);
    shutdown.cancel();
    task.await.unwrap();
    db.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_committed_before_a_restart_are_delivered_after_it() {
    let db = TestStore::sqlite().await;
    // Committed while nothing consumes (the process is about to crash).
    db.emit("a", TOPIC, &["DiagnosticReport/1", "DiagnosticReport/2"]).await;

    let first_run = bus(&db, fast());
    let shutdown = CancellationToken::new();
    let recorder = Recorder::new(Mode::Apply);
    let task = consumer(&first_run, &db, "patient-record", recorder.clone(), &shutdown);
    eventually(10, "applied in the first run", || async { db.effects("a").await == 2 }).await;
    let seq = last_seq(&db).await;
    eventually(5, "the cursor is saved", || async {
        db.store.event_cursor("patient-record", TOPIC).await.unwrap() == seq
    })
    .await;
    shutdown.cancel();
    task.await.unwrap();
    drop(first_run);

    // Committed while the process is down.
    let later = db.emit("a", TOPIC, &["DiagnosticReport/3"]).await;
    let second_run = bus(&db, fast());
    let shutdown = CancellationToken::new();
    let recorder = Recorder::new(Mode::Apply);
    let task = consumer(&second_run, &db, "patient-record", recorder.clone(), &shutdown);
    eventually(10, "the later event applied", || async { db.effects("a").await == 3 }).await;
    // The cursor kept the first run's events from coming back.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(recorder.calls(), later);
    shutdown.cancel();
    task.await.unwrap();
    db.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_applied_just_before_a_crash_is_skipped_after_it() {
    let db = TestStore::sqlite().await;
    let ids = db.emit("a", TOPIC, &["DiagnosticReport/1", "DiagnosticReport/2"]).await;
    // The previous run committed the first event's effect and receipt, then died before its
    // cursor moved.
    let tx = db.store.write(&crate::ctx("a")).await.unwrap();
    assert!(tx.record_receipt("patient-record", &ids[0], clock().now()).await.unwrap());
    tx.commit().await.unwrap();

    let bus = bus(&db, fast());
    let shutdown = CancellationToken::new();
    let recorder = Recorder::new(Mode::Apply);
    let task = consumer(&bus, &db, "patient-record", recorder.clone(), &shutdown);
    let seq = last_seq(&db).await;
    eventually(10, "the cursor passed both events", || async {
        db.store.event_cursor("patient-record", TOPIC).await.unwrap() == seq
    })
    .await;
    assert_eq!(recorder.calls(), ids[1..]);
    assert_eq!(db.effects("a").await, 1);
    shutdown.cancel();
    task.await.unwrap();
    db.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_poke_wakes_the_consumer() {
    let db = TestStore::sqlite().await;
    // Blocking long: only a wake-up explains prompt delivery.
    let bus = bus(&db, BusConfig { block: Duration::from_secs(600), ..fast() });
    let relay = Relay::new(RelayConfig { poll_interval: Duration::from_secs(600), ..RelayConfig::default() });
    let poke = relay.notifier();
    let shutdown = CancellationToken::new();
    let relay_task = relay.spawn(db.store.clone(), bus.clone(), clock(), shutdown.clone());
    let recorder = Recorder::new(Mode::Apply);
    let task = consumer(&bus, &db, "patient-record", recorder.clone(), &shutdown);
    tokio::time::sleep(Duration::from_millis(300)).await;

    db.emit("a", TOPIC, &["DiagnosticReport/1"]).await;
    poke.notify_one();
    eventually(3, "applied promptly", || async { db.effects("a").await == 1 }).await;
    eventually(3, "marked published", || async { db.store.outbox_lag().await.unwrap().0 == 0 }).await;
    shutdown.cancel();
    task.await.unwrap();
    relay_task.await.unwrap();
    db.finish().await;
}

#[tokio::test]
async fn the_local_bus_refuses_postgres() {
    let Some(db) = TestStore::postgres().await else { return };
    let refused = LocalBus::new(db.store.clone(), clock(), fast());
    assert!(matches!(refused, Err(EventsError::Unsupported(_))), "{refused:?}");
    db.finish().await;
}
