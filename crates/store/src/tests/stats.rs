//! The figures of the metrics: one statement across every tenant, and on PostgreSQL the metrics
//! role reads the counted columns only.

use super::{TestDb, backends};
use crate::ExportState;

async fn hl7(db: &TestDb, tenant: &str, id: &str, direction: &str, status: &str, created: i64) {
    let sql = format!(
        "INSERT INTO hl7_messages (tenant_id, id, endpoint_id, direction, message_type, control_id, status, \
         attempts, payload, created_at, updated_at) \
         VALUES ('{tenant}', '{id}', 'ep', '{direction}', 'OML^O33', '{id}', '{status}', 0, 'MSH|secret', {created}, {created})"
    );
    assert_eq!(db.tamper(tenant, &sql).await, 1);
}

async fn job(db: &TestDb, tenant: &str, id: &str, state: &str) {
    let sql = format!(
        "INSERT INTO export_jobs (tenant_id, id, requester, request_url, kind, types, type_filters, output_format, \
         params, state, transaction_time, attempts, created_at, updated_at) \
         VALUES ('{tenant}', '{id}', 'u', 'http://x/$export', 'system', '[]', '[]', 'ndjson', '{{}}', '{state}', 1, 0, 1, 1)"
    );
    assert_eq!(db.tamper(tenant, &sql).await, 1);
}

#[tokio::test]
async fn stats_count_every_tenant_in_one_statement() {
    for backend in backends().await {
        let db = backend.open().await;
        let depth = db.store.hl7_queue_depth().await.unwrap();
        assert_eq!(
            depth.iter().map(|d| (d.state, d.messages, d.oldest_created_at)).collect::<Vec<_>>(),
            [("pending", 0, None), ("dead", 0, None), ("rejected", 0, None)]
        );
        // No tenant has a lab endpoint: their messages count all the same.
        hl7(&db, "a", "m1", "out", "pending", 5_000).await;
        hl7(&db, "b", "m2", "out", "pending", 3_000).await;
        hl7(&db, "b", "m3", "out", "dead", 9_000).await;
        hl7(&db, "c", "m4", "in", "pending", 1_000).await;
        hl7(&db, "c", "m5", "out", "acknowledged", 1_000).await;
        let depth = db.store.hl7_queue_depth().await.unwrap();
        assert_eq!(
            depth.iter().map(|d| (d.state, d.messages, d.oldest_created_at)).collect::<Vec<_>>(),
            [("pending", 2, Some(3_000)), ("dead", 1, Some(9_000)), ("rejected", 0, None)]
        );

        job(&db, "a", "j1", "queued").await;
        job(&db, "b", "j2", "queued").await;
        job(&db, "c", "j3", "completed").await;
        let counts = db.store.export_job_counts().await.unwrap();
        assert_eq!(
            counts,
            [
                (ExportState::Queued, 2),
                (ExportState::Running, 0),
                (ExportState::Completed, 1),
                (ExportState::Failed, 0),
                (ExportState::Cancelled, 0)
            ]
        );

        if db.is_postgres() {
            // The metrics role counts; it reads no other column and writes nothing.
            let txn = db.store.begin_raw(false, "").await.unwrap();
            use sea_orm::ConnectionTrait;
            txn.execute_unprepared(&format!("SELECT set_config('role', '{}', true)", crate::METRICS_ROLE))
                .await
                .unwrap();
            for denied in [
                "SELECT payload FROM hl7_messages",
                "SELECT tenant_id FROM hl7_messages",
                "SELECT request_url FROM export_jobs",
                "SELECT COUNT(*) FROM resources",
            ] {
                let sp = txn.execute_unprepared("SAVEPOINT probe").await;
                sp.unwrap();
                assert!(txn.execute_unprepared(denied).await.is_err(), "{denied}");
                txn.execute_unprepared("ROLLBACK TO SAVEPOINT probe").await.unwrap();
            }
            assert!(txn.execute_unprepared("UPDATE hl7_messages SET status = 'dead'").await.is_err());
            txn.rollback().await.unwrap();
        }
        db.finish().await;
    }
}
