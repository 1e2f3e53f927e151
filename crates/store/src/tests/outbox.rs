//! The transactional outbox: emitting in the writer's transaction, claiming and marking by the
//! relay, receipts, and the walls between tenants.

use super::{TestDb, at, backends, ctx};
use crate::{EventId, NewEvent, StoreError};
use serde_json::json;

fn event(topic: &str, key: &str) -> NewEvent {
    NewEvent {
        topic: topic.into(),
        key: key.into(),
        payload: json!({"resourceType": "ServiceRequest", "id": key}),
        trace: Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into()),
    }
}

/// Emits one event per key in one committed transaction of `tenant`.
async fn emit(db: &TestDb, tenant: &str, topic: &str, keys: &[&str], secs: i64) -> Vec<EventId> {
    let tx = db.store.write(&ctx(tenant)).await.unwrap();
    let mut ids = Vec::new();
    for key in keys {
        ids.push(tx.emit(&event(topic, key), at(secs)).await.unwrap());
    }
    tx.commit().await.unwrap();
    ids
}

#[tokio::test]
async fn emitted_events_are_pending_in_order_until_marked() {
    for backend in backends().await {
        let db = backend.open().await;
        assert_eq!(db.store.outbox_lag().await.unwrap(), (0, None));
        let mut ids = emit(&db, "a", "order.placed", &["ServiceRequest/1", "ServiceRequest/2"], 100).await;
        ids.extend(emit(&db, "b", "lab.result.received", &["DiagnosticReport/9"], 160).await);

        let pending = db.store.outbox_pending(10).await.unwrap();
        assert_eq!(pending.iter().map(|e| e.id).collect::<Vec<_>>(), ids);
        assert!(pending.windows(2).all(|w| w[0].seq < w[1].seq), "{pending:?}");
        let first = &pending[0];
        assert_eq!(first.tenant.as_str(), "a");
        assert_eq!(first.topic, "order.placed");
        assert_eq!(first.key, "ServiceRequest/1");
        let payload: serde_json::Value = serde_json::from_str(&first.payload).unwrap();
        assert_eq!(payload, json!({"resourceType": "ServiceRequest", "id": "ServiceRequest/1"}));
        assert!(first.trace.as_deref().is_some_and(|t| t.starts_with("00-")));
        assert_eq!(first.created_at, 100_000);
        assert_eq!(first.published_at, None);
        assert_eq!(pending[2].tenant.as_str(), "b");
        assert_eq!(db.store.outbox_lag().await.unwrap(), (3, Some(100_000)));
        // Debug output never shows a payload.
        assert!(!format!("{first:?}").contains("resourceType"));

        // The limit cuts in seq order.
        let batch = db.store.outbox_claim(2).await.unwrap();
        assert_eq!(batch.events().iter().map(|e| e.id).collect::<Vec<_>>(), ids[..2]);
        batch.mark_published(at(200)).await.unwrap();
        let pending = db.store.outbox_pending(10).await.unwrap();
        assert_eq!(pending.iter().map(|e| e.id).collect::<Vec<_>>(), ids[2..]);
        assert_eq!(db.store.outbox_lag().await.unwrap(), (1, Some(160_000)));

        // Marking is idempotent: a seq already published keeps its first time.
        assert_eq!(db.store.outbox_mark_published(&[pending[0].seq, 1_000_000], at(300)).await.unwrap(), 1);
        assert_eq!(db.store.outbox_mark_published(&[pending[0].seq], at(400)).await.unwrap(), 0);
        assert_eq!(db.store.outbox_lag().await.unwrap(), (0, None));
        let all = db.store.outbox_after("order.placed", 0, 10).await.unwrap();
        assert_eq!(all.iter().map(|e| e.published_at).collect::<Vec<_>>(), vec![Some(200_000), Some(200_000)]);
        let lab = db.store.outbox_after("lab.result.received", 0, 10).await.unwrap();
        assert_eq!(lab.iter().map(|e| (e.id, e.published_at)).collect::<Vec<_>>(), vec![(ids[2], Some(300_000))]);
        assert!(db.store.outbox_after("order.placed", all[1].seq, 10).await.unwrap().is_empty());

        // Purge takes published events older than the cut only.
        let tx = db.store.write(&ctx("a")).await.unwrap();
        tx.emit(&event("order.placed", "ServiceRequest/3"), at(50)).await.unwrap();
        tx.commit().await.unwrap();
        assert_eq!(db.store.outbox_purge_published(at(250)).await.unwrap(), 2);
        assert_eq!(db.store.outbox_purge_published(at(10_000)).await.unwrap(), 1);
        assert_eq!(db.store.outbox_lag().await.unwrap(), (1, Some(50_000)), "unpublished events are kept");
        db.finish().await;
    }
}

#[tokio::test]
async fn an_event_of_a_rolled_back_transaction_is_never_published() {
    for backend in backends().await {
        let db = backend.open().await;
        let tx = db.store.write(&ctx("a")).await.unwrap();
        tx.emit(&event("order.placed", "ServiceRequest/1"), at(1)).await.unwrap();
        drop(tx);
        // A transaction that failed after emitting: the event goes with the failed write.
        let tx = db.store.write(&ctx("a")).await.unwrap();
        tx.emit(&event("order.placed", "ServiceRequest/2"), at(2)).await.unwrap();
        assert!(matches!(
            tx.emit(&event("Order Placed", "ServiceRequest/2"), at(2)).await,
            Err(StoreError::InvalidValue(_))
        ));
        drop(tx);
        assert!(db.store.outbox_pending(10).await.unwrap().is_empty());
        assert_eq!(db.store.outbox_lag().await.unwrap(), (0, None));
        assert!(db.store.outbox_claim(10).await.unwrap().events().is_empty());
        // The numbering goes on; a later event is published normally.
        let ids = emit(&db, "a", "order.placed", &["ServiceRequest/3"], 3).await;
        assert_eq!(db.store.outbox_pending(10).await.unwrap().iter().map(|e| e.id).collect::<Vec<_>>(), ids);
        db.finish().await;
    }
}

#[tokio::test]
async fn events_are_validated() {
    for backend in backends().await {
        let db = backend.open().await;
        let tx = db.store.write(&ctx("a")).await.unwrap();
        for bad in ["", "Order.placed", ".order", "order:placed", "order placed", &"x".repeat(65)] {
            let result = tx.emit(&event(bad, "k"), at(1)).await;
            assert!(matches!(result, Err(StoreError::InvalidValue(_))), "{bad:?}: {result:?}");
        }
        assert!(matches!(tx.emit(&event("a.b", ""), at(1)).await, Err(StoreError::InvalidValue(_))));
        let mut long_trace = event("a.b", "k");
        long_trace.trace = Some("t".repeat(257));
        assert!(matches!(tx.emit(&long_trace, at(1)).await, Err(StoreError::InvalidValue(_))));
        tx.emit(&event("lab.result-received_2", "k"), at(1)).await.unwrap();
        tx.commit().await.unwrap();
        db.finish().await;
    }
}

#[tokio::test]
async fn a_tenant_sees_and_touches_only_its_own_events() {
    for backend in backends().await {
        let db = backend.open().await;
        emit(&db, "a", "order.placed", &["ServiceRequest/1"], 1).await;
        emit(&db, "b", "order.placed", &["ServiceRequest/2"], 2).await;
        if db.is_postgres() {
            // Statements without a tenant predicate: only row-level security stands in the way.
            let tx = db.store.write(&ctx("a")).await.unwrap();
            let rows = tx.query("SELECT tenant_id, key FROM outbox", Vec::new()).await.unwrap();
            let seen: Vec<String> = rows.iter().map(|r| r.try_get::<String>("", "tenant_id").unwrap()).collect();
            assert_eq!(seen, vec!["a".to_owned()]);
            assert_eq!(tx.exec("UPDATE outbox SET published_at = 1", Vec::new()).await.unwrap(), 1);
            assert_eq!(tx.exec("DELETE FROM outbox WHERE tenant_id = 'b'", Vec::new()).await.unwrap(), 0);
            drop(tx);
            // Nor can it write an event into another tenant.
            let tx = db.store.write(&ctx("a")).await.unwrap();
            let forged = tx
                .exec(
                    "INSERT INTO outbox (id, tenant_id, topic, key, payload, created_at) \
                     VALUES ('00000000-0000-4000-8000-000000000000', 'b', 't', 'k', '{}', 0)",
                    Vec::new(),
                )
                .await;
            assert!(forged.is_err(), "{forged:?}");
            drop(tx);
            // A system transaction sees no tenant's events either: only the relay role does.
            let sys = db.store.system_read().await.unwrap();
            let rows = sys.query("SELECT COUNT(*) AS n FROM outbox", Vec::new()).await.unwrap();
            assert_eq!(rows[0].try_get::<i64>("", "n").unwrap(), 0);
            let rows = sys.query("SELECT COUNT(*) AS n FROM event_receipts", Vec::new()).await.unwrap();
            assert_eq!(rows[0].try_get::<i64>("", "n").unwrap(), 0);
            drop(sys);
        }
        // Every statement binds the tenant too: the same on both backends.
        let receipts_a = db.store.write(&ctx("a")).await.unwrap();
        let id = EventId::generate();
        assert!(receipts_a.record_receipt("lab", &id, at(3)).await.unwrap());
        receipts_a.commit().await.unwrap();
        let receipts_b = db.store.write(&ctx("b")).await.unwrap();
        assert!(receipts_b.record_receipt("lab", &id, at(3)).await.unwrap(), "receipts are per tenant");
        receipts_b.commit().await.unwrap();
        // The relay sees every tenant.
        assert_eq!(db.store.outbox_pending(10).await.unwrap().len(), 2);
        db.finish().await;
    }
}

#[tokio::test]
async fn a_receipt_is_recorded_once_per_consumer_and_only_with_its_transaction() {
    for backend in backends().await {
        let db = backend.open().await;
        let id = EventId::generate();
        // Rolled back: as if never processed.
        let tx = db.store.write(&ctx("a")).await.unwrap();
        assert!(tx.record_receipt("orders", &id, at(1)).await.unwrap());
        drop(tx);
        let tx = db.store.write(&ctx("a")).await.unwrap();
        assert!(tx.record_receipt("orders", &id, at(2)).await.unwrap());
        assert!(!tx.record_receipt("orders", &id, at(2)).await.unwrap(), "twice in one transaction");
        tx.commit().await.unwrap();
        let tx = db.store.write(&ctx("a")).await.unwrap();
        assert!(!tx.record_receipt("orders", &id, at(3)).await.unwrap());
        assert!(tx.record_receipt("lab-interface", &id, at(3)).await.unwrap(), "receipts are per consumer");
        tx.commit().await.unwrap();

        assert_eq!(db.store.event_receipts_purge(at(2)).await.unwrap(), 0);
        assert_eq!(db.store.event_receipts_purge(at(4)).await.unwrap(), 2);
        let tx = db.store.write(&ctx("a")).await.unwrap();
        assert!(tx.record_receipt("orders", &id, at(5)).await.unwrap(), "a purged receipt is gone");
        tx.commit().await.unwrap();
        db.finish().await;
    }
}

#[tokio::test]
async fn concurrent_duplicate_receipts_have_one_winner() {
    for backend in backends().await {
        let db = backend.open().await;
        if !db.is_postgres() {
            // SQLite runs writers one at a time; the interleaving below needs two at once.
            db.finish().await;
            continue;
        }
        let id = EventId::generate();
        let first = db.store.write(&ctx("a")).await.unwrap();
        assert!(first.record_receipt("orders", &id, at(1)).await.unwrap());
        let store = db.store.clone();
        let second = tokio::spawn(async move {
            let tx = store.write(&ctx("a")).await.unwrap();
            let fresh = tx.record_receipt("orders", &id, at(1)).await.unwrap();
            tx.commit().await.unwrap();
            fresh
        });
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        assert!(!second.is_finished(), "the second insert waits for the first transaction");
        first.commit().await.unwrap();
        assert!(!second.await.unwrap(), "the second delivery finds the receipt");
        db.finish().await;
    }
}

#[tokio::test]
async fn one_relay_claims_at_a_time() {
    for backend in backends().await {
        let db = backend.open().await;
        emit(&db, "a", "order.placed", &["ServiceRequest/1", "ServiceRequest/2"], 1).await;
        let first = db.store.outbox_claim(10).await.unwrap();
        assert_eq!(first.events().len(), 2);
        if db.is_postgres() {
            // A second replica finds the relay lock taken: nothing to publish twice.
            assert!(db.store.outbox_claim(10).await.unwrap().events().is_empty());
            // Writers are not blocked by the claim.
            emit(&db, "b", "order.placed", &["ServiceRequest/3"], 2).await;
        }
        first.mark_published(at(5)).await.unwrap();
        let next = db.store.outbox_claim(10).await.unwrap();
        assert_eq!(next.events().len(), usize::from(db.is_postgres()));
        // A batch dropped unmarked (a failed publish) leaves its events pending.
        drop(next);
        assert_eq!(db.store.outbox_lag().await.unwrap().0, u64::from(db.is_postgres()));
        db.finish().await;
    }
}

#[tokio::test]
async fn cursors_only_move_forward_and_dead_letters_are_kept_once() {
    for backend in backends().await {
        let db = backend.open().await;
        let ids = emit(&db, "a", "order.placed", &["ServiceRequest/1"], 1).await;
        assert_eq!(db.store.event_cursor("lab", "order.placed").await.unwrap(), 0);
        db.store.advance_event_cursor("lab", "order.placed", 5, at(1)).await.unwrap();
        db.store.advance_event_cursor("lab", "order.placed", 3, at(2)).await.unwrap();
        assert_eq!(db.store.event_cursor("lab", "order.placed").await.unwrap(), 5);
        assert_eq!(db.store.event_cursor("lab", "lab.result.received").await.unwrap(), 0);
        assert_eq!(db.store.event_cursor("orders", "order.placed").await.unwrap(), 0);

        let event = db.store.outbox_pending(1).await.unwrap().remove(0);
        db.store.record_dead_letter("lab", event.seq, &event.id, &event.topic, 5, at(9)).await.unwrap();
        db.store.record_dead_letter("lab", event.seq, &event.id, &event.topic, 6, at(10)).await.unwrap();
        let dead = db.store.dead_letters("lab").await.unwrap();
        assert_eq!(dead.len(), 1);
        assert_eq!((dead[0].event_id, dead[0].seq, dead[0].deliveries, dead[0].dead_at), (ids[0], event.seq, 5, 9_000));
        assert!(db.store.dead_letters("orders").await.unwrap().is_empty());
        db.finish().await;
    }
}
