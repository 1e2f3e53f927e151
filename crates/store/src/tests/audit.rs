//! The AuditEvent hash chain: appending, verifying, and detecting tampering.

use super::{TestDb, at, backends, ctx};
use crate::{AuditProblem, AuditVerification, Stored};
use serde_json::{Value, json};

fn event(action: &str) -> Value {
    json!({
        "resourceType": "AuditEvent",
        "type": {"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "110110"},
        "action": action,
        "recorded": "2025-01-01T00:00:00Z",
        "outcome": "0",
        "agent": [{"who": {"reference": "Practitioner/p1"}, "requestor": true}],
        "source": {"observer": {"display": "gateway"}}
    })
}

/// Three events in two transactions.
async fn chain_of_three(db: &TestDb, tenant: &str) -> Vec<Stored> {
    let tx = db.store.write(&ctx(tenant)).await.unwrap();
    let mut events = tx.append_audit(vec![event("R"), event("C")], at(1_700_000_000)).await.unwrap();
    tx.commit().await.unwrap();
    let tx = db.store.write(&ctx(tenant)).await.unwrap();
    events.extend(tx.append_audit(vec![event("U")], at(1_700_000_060)).await.unwrap());
    tx.commit().await.unwrap();
    events
}

async fn verify(db: &TestDb, tenant: &str) -> AuditVerification {
    let tx = db.store.read(&ctx(tenant)).await.unwrap();
    let report = tx.verify_audit_chain().await.unwrap();
    tx.commit().await.unwrap();
    report
}

fn unchained(resource_id: &str) -> AuditProblem {
    AuditProblem::Unchained { resource_id: resource_id.into() }
}

#[tokio::test]
async fn an_untouched_chain_verifies() {
    for backend in backends().await {
        let db = backend.open().await;
        assert_eq!(verify(&db, "a").await, AuditVerification { checked: 0, problems: Vec::new() });
        let events = chain_of_three(&db, "a").await;
        assert_eq!(events.len(), 3);
        let report = verify(&db, "a").await;
        assert!(report.is_ok(), "{report:?}");
        assert_eq!(report.checked, 3);

        // The events are ordinary resources of the tenant, at version 1.
        let tx = db.store.read(&ctx("a")).await.unwrap();
        let stored = tx.read("AuditEvent", &events[2].id).await.unwrap().unwrap();
        assert_eq!(stored, Stored { method: None, ..events[2].clone() });
        tx.commit().await.unwrap();
        // Another tenant's chain is separate (and empty).
        assert_eq!(verify(&db, "b").await.checked, 0);
        assert!(tx_empty_append_is_noop(&db).await);
        db.finish().await;
    }
}

async fn tx_empty_append_is_noop(db: &TestDb) -> bool {
    let tx = db.store.write(&ctx("c")).await.unwrap();
    let none = tx.append_audit(Vec::new(), at(0)).await.unwrap();
    tx.commit().await.unwrap();
    none.is_empty() && verify(db, "c").await.checked == 0
}

#[tokio::test]
async fn concurrent_appends_are_serialised_per_tenant() {
    for backend in backends().await {
        let db = backend.open().await;
        // The first appender holds the head until it commits; the second waits for it and
        // then links to its last event.
        let first = db.store.write(&ctx("a")).await.unwrap();
        first.append_audit(vec![event("R")], at(1)).await.unwrap();
        let store = db.store.clone();
        let second = tokio::spawn(async move {
            let tx = store.write(&ctx("a")).await.unwrap();
            tx.append_audit(vec![event("C"), event("U")], at(2)).await.unwrap();
            tx.commit().await.unwrap();
        });
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        first.commit().await.unwrap();
        second.await.unwrap();
        let report = verify(&db, "a").await;
        assert!(report.is_ok(), "{report:?}");
        assert_eq!(report.checked, 3);
        db.finish().await;
    }
}

#[tokio::test]
async fn tampering_is_reported() {
    for backend in backends().await {
        let db = backend.open().await;
        // Each tampering on a tenant of its own, so that each report holds exactly its findings.

        // An event's content edited in place.
        let ev = chain_of_three(&db, "edited").await;
        let sql = format!(
            "UPDATE resources SET content = '{{\"resourceType\":\"AuditEvent\",\"id\":\"{}\"}}' \
             WHERE tenant_id = 'edited' AND resource_type = 'AuditEvent' AND id = '{}'",
            ev[1].id, ev[1].id
        );
        assert_eq!(db.tamper("edited", &sql).await, 1);
        let report = verify(&db, "edited").await;
        assert_eq!(report.problems, [AuditProblem::HashMismatch { seq: 2, resource_id: ev[1].id.clone() }]);
        assert_eq!(report.checked, 3);

        // A chain row removed from the middle: a gap, and its event is no longer covered.
        let ev = chain_of_three(&db, "gap").await;
        assert_eq!(db.tamper("gap", "DELETE FROM audit_chain WHERE tenant_id = 'gap' AND seq = 2").await, 1);
        let report = verify(&db, "gap").await;
        assert_eq!(report.problems, [AuditProblem::SeqGap { expected: 2, found: 3 }, unchained(&ev[1].id)]);
        assert_eq!(report.checked, 2);

        // The last chain row removed: the head points past the end.
        let ev = chain_of_three(&db, "cut").await;
        assert_eq!(db.tamper("cut", "DELETE FROM audit_chain WHERE tenant_id = 'cut' AND seq = 3").await, 1);
        let report = verify(&db, "cut").await;
        assert_eq!(report.problems, [AuditProblem::HeadMismatch, unchained(&ev[2].id)]);

        // An event deleted from the resource table.
        let ev = chain_of_three(&db, "gone").await;
        let sql = format!("DELETE FROM resources WHERE tenant_id = 'gone' AND id = '{}'", ev[0].id);
        assert_eq!(db.tamper("gone", &sql).await, 1);
        let report = verify(&db, "gone").await;
        assert_eq!(report.problems, [AuditProblem::MissingResource { seq: 1, resource_id: ev[0].id.clone() }]);

        // An event slipped into the resource table behind the chain's back.
        chain_of_three(&db, "forged").await;
        let sql = "INSERT INTO resources (tenant_id, resource_type, id, version_id, last_updated, deleted, content) \
                   VALUES ('forged', 'AuditEvent', 'forged-1', 1, 0, 0, '{\"resourceType\":\"AuditEvent\"}')";
        assert_eq!(db.tamper("forged", sql).await, 1);
        let report = verify(&db, "forged").await;
        assert_eq!(report.problems, [unchained("forged-1")]);

        // An event deleted through the resource store (a new version, marked deleted).
        let ev = chain_of_three(&db, "deleted").await;
        let tx = db.store.write(&ctx("deleted")).await.unwrap();
        tx.delete("AuditEvent", &ev[2].id, at(1_700_000_100)).await.unwrap().unwrap();
        tx.commit().await.unwrap();
        let report = verify(&db, "deleted").await;
        assert_eq!(report.problems, [AuditProblem::ModifiedResource { seq: 3, resource_id: ev[2].id.clone() }]);

        // A recorded hash rewritten: its link and the head both disagree.
        let ev = chain_of_three(&db, "rehashed").await;
        let sql =
            format!("UPDATE audit_chain SET hash = '{}' WHERE tenant_id = 'rehashed' AND seq = 3", "f".repeat(64));
        assert_eq!(db.tamper("rehashed", &sql).await, 1);
        let report = verify(&db, "rehashed").await;
        assert_eq!(
            report.problems,
            [AuditProblem::HashMismatch { seq: 3, resource_id: ev[2].id.clone() }, AuditProblem::HeadMismatch]
        );

        // A chain row appended without moving the head.
        let ev = chain_of_three(&db, "extended").await;
        let sql = format!(
            "INSERT INTO audit_chain (tenant_id, seq, resource_id, hash) VALUES ('extended', 4, '{}', '{}')",
            ev[0].id,
            "0".repeat(64)
        );
        assert_eq!(db.tamper("extended", &sql).await, 1);
        let report = verify(&db, "extended").await;
        assert_eq!(
            report.problems,
            [AuditProblem::HashMismatch { seq: 4, resource_id: ev[0].id.clone() }, AuditProblem::HeadMismatch]
        );

        // The head removed: the chain is still walked and its links still hold.
        chain_of_three(&db, "headless").await;
        assert_eq!(db.tamper("headless", "DELETE FROM audit_head WHERE tenant_id = 'headless'").await, 1);
        let report = verify(&db, "headless").await;
        assert_eq!((report.checked, report.problems), (3, vec![AuditProblem::HeadMismatch]));

        // The untouched tenant is unaffected by all of the above.
        chain_of_three(&db, "intact").await;
        assert!(verify(&db, "intact").await.is_ok());

        // A fresh append after tampering still links to the recorded head.
        let tx = db.store.write(&ctx("edited")).await.unwrap();
        tx.append_audit(vec![event("D")], at(1_700_000_200)).await.unwrap();
        tx.commit().await.unwrap();
        let report = verify(&db, "edited").await;
        assert_eq!(report.checked, 4);
        assert_eq!(
            report.problems,
            [AuditProblem::HashMismatch { seq: 2, resource_id: ev_id(&db, "edited", 2).await }]
        );
        db.finish().await;
    }
}

/// The resource id of chain row `seq`.
async fn ev_id(db: &TestDb, tenant: &str, seq: i64) -> String {
    let tx = db.store.read(&ctx(tenant)).await.unwrap();
    let rows = tx
        .query("SELECT resource_id FROM audit_chain WHERE tenant_id = $1 AND seq = $2", vec![tenant.into(), seq.into()])
        .await
        .unwrap();
    let id = rows[0].try_get::<String>("", "resource_id").unwrap();
    tx.commit().await.unwrap();
    id
}
