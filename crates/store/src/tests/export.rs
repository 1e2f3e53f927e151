//! Export jobs: claims across tenants, leases that run out and are taken over, checkpoints that
//! survive the takeover, cancellation, retention.

use super::{TestDb, backends, ctx};
use crate::{ExportEnd, ExportKind, ExportState, NewExportJob};

fn new_job(id: &str, created_at: i64) -> NewExportJob {
    NewExportJob {
        id: id.into(),
        requester: "client-1".into(),
        request_url: "http://h/fhir/$export?_type=Patient,Observation".into(),
        kind: ExportKind::System,
        group_id: None,
        types: vec!["Patient".into(), "Observation".into()],
        since: Some(1_000),
        type_filters: vec!["Observation?category=laboratory".into()],
        output_format: "application/fhir+ndjson".into(),
        params: "{}".into(),
        transaction_time: created_at,
        created_at,
    }
}

async fn create(db: &TestDb, tenant: &str, id: &str, created_at: i64) {
    let tx = db.store.write(&ctx(tenant)).await.unwrap();
    let job = tx.create_export_job(&new_job(id, created_at)).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(job.state, ExportState::Queued);
    assert_eq!(job.types, ["Patient", "Observation"]);
    assert_eq!(job.type_filters, ["Observation?category=laboratory"]);
    assert_eq!(job.since, Some(1_000));
}

/// Claims a job of `tenant` at `now` for `owner` with a lease of 10 s.
async fn claim(db: &TestDb, tenant: &str, owner: &str, now: i64) -> Option<crate::ExportJob> {
    let tx = db.store.write(&ctx(tenant)).await.unwrap();
    let job = tx.claim_export_job(owner, &format!("token-{owner}-{now}"), now, now + 10_000).await.unwrap();
    tx.commit().await.unwrap();
    job
}

async fn checkpoint(db: &TestDb, tenant: &str, id: &str, token: &str, text: &str, now: i64) -> bool {
    let tx = db.store.write(&ctx(tenant)).await.unwrap();
    let ok = tx.checkpoint_export_job(id, token, text, "Patient 5/9", now + 10_000, now).await.unwrap();
    tx.commit().await.unwrap();
    ok
}

/// The tenants a worker looks at, at `now`.
async fn tenants_at(db: &TestDb, now: i64) -> Vec<String> {
    let sys = db.store.system_read().await.unwrap();
    let list = sys.export_tenants(now).await.unwrap();
    sys.commit().await.unwrap();
    list.iter().map(|t| t.as_str().to_owned()).collect()
}

#[tokio::test]
async fn jobs_are_claimed_once_per_lease_and_resumed_from_their_checkpoint_after_it_runs_out() {
    for backend in backends().await {
        let db = backend.open().await;
        create(&db, "b", "job-b", 50).await;
        create(&db, "a", "job-a1", 100).await;
        create(&db, "a", "job-a2", 200).await;
        assert_eq!(tenants_at(&db, 500).await, ["b", "a"], "the tenant of the oldest job first");

        // The oldest job of the tenant first; a job under a live lease is not claimed again.
        let first = claim(&db, "a", "w1", 1_000).await.unwrap();
        assert_eq!((first.id.as_str(), first.state, first.attempts), ("job-a1", ExportState::Running, 1));
        let token = first.lease_token.clone().unwrap();
        assert_eq!(first.lease_owner.as_deref(), Some("w1"));
        let second = claim(&db, "a", "w2", 1_001).await.unwrap();
        assert_eq!(second.id, "job-a2");
        assert!(claim(&db, "a", "w3", 1_002).await.is_none(), "both held");

        // Checkpoints extend the lease.
        assert!(checkpoint(&db, "a", "job-a1", &token, r#"{"after":"p5"}"#, 5_000).await);
        assert!(claim(&db, "a", "w3", 12_000).await.map(|j| j.id) == Some("job-a2".into()), "a2's lease ran out");
        assert!(claim(&db, "a", "w3", 14_000).await.is_none(), "a1's lease runs until 15 000");

        // w1 dies: after its lease, w4 takes the job over with the checkpoint w1 wrote.
        let taken = claim(&db, "a", "w4", 15_000).await.unwrap();
        assert_eq!(taken.id, "job-a1");
        assert_eq!(taken.attempts, 2);
        assert_eq!(taken.checkpoint.as_deref(), Some(r#"{"after":"p5"}"#));
        assert_eq!(taken.progress.as_deref(), Some("Patient 5/9"));
        let new_token = taken.lease_token.clone().unwrap();
        assert_ne!(new_token, token);
        // The old worker, only slow, can neither checkpoint nor finish any more.
        assert!(!checkpoint(&db, "a", "job-a1", &token, r#"{"after":"p9"}"#, 15_001).await);
        let tx = db.store.write(&ctx("a")).await.unwrap();
        assert!(!tx.finish_export_job("job-a1", &token, ExportEnd::Completed, 15_002).await.unwrap());
        assert!(!tx.release_export_job("job-a1", &token, 15_002).await.unwrap());
        // The new one can.
        assert!(tx.finish_export_job("job-a1", &new_token, ExportEnd::Completed, 16_000).await.unwrap());
        tx.commit().await.unwrap();

        let tx = db.store.read(&ctx("a")).await.unwrap();
        let done = tx.export_job("job-a1").await.unwrap().unwrap();
        tx.commit().await.unwrap();
        assert_eq!(done.state, ExportState::Completed);
        assert_eq!(done.checkpoint.as_deref(), Some(r#"{"after":"p5"}"#));
        assert_eq!((done.lease_token, done.finished_at), (None, Some(16_000)));

        // Another tenant's transaction sees none of this.
        let tx = db.store.read(&ctx("b")).await.unwrap();
        assert!(tx.export_job("job-a1").await.unwrap().is_none());
        tx.commit().await.unwrap();
        assert!(claim(&db, "b", "w5", 16_000).await.is_some_and(|j| j.id == "job-b"));
        db.finish().await;
    }
}

#[tokio::test]
async fn a_released_job_is_claimed_again_at_once_and_a_failed_one_never() {
    for backend in backends().await {
        let db = backend.open().await;
        create(&db, "a", "job-1", 100).await;
        let job = claim(&db, "a", "w1", 1_000).await.unwrap();
        let tx = db.store.write(&ctx("a")).await.unwrap();
        assert!(tx.release_export_job("job-1", job.lease_token.as_deref().unwrap(), 1_100).await.unwrap());
        tx.commit().await.unwrap();
        let again = claim(&db, "a", "w2", 1_200).await.unwrap();
        assert_eq!(again.attempts, 2);
        let tx = db.store.write(&ctx("a")).await.unwrap();
        let end = ExportEnd::Failed { error: "export file lost" };
        assert!(tx.finish_export_job("job-1", again.lease_token.as_deref().unwrap(), end, 1_300).await.unwrap());
        tx.commit().await.unwrap();
        assert!(claim(&db, "a", "w3", 100_000).await.is_none());
        assert!(tenants_at(&db, 100_000).await.is_empty());
        let tx = db.store.read(&ctx("a")).await.unwrap();
        let failed = tx.export_job("job-1").await.unwrap().unwrap();
        tx.commit().await.unwrap();
        assert_eq!((failed.state, failed.error.as_deref()), (ExportState::Failed, Some("export file lost")));
        db.finish().await;
    }
}

#[tokio::test]
async fn cancelling_stops_the_worker_and_retention_deletes_finished_jobs() {
    for backend in backends().await {
        let db = backend.open().await;
        create(&db, "a", "job-1", 100).await;
        create(&db, "a", "job-2", 200).await;
        let job = claim(&db, "a", "w1", 1_000).await.unwrap();
        let token = job.lease_token.unwrap();

        let tx = db.store.write(&ctx("a")).await.unwrap();
        assert!(tx.cancel_export_job("job-1", 2_000).await.unwrap());
        assert!(!tx.cancel_export_job("job-1", 2_001).await.unwrap(), "once");
        assert!(!tx.cancel_export_job("no-such-job", 2_001).await.unwrap());
        tx.commit().await.unwrap();
        // The worker learns at its next checkpoint; nobody claims the job again.
        assert!(!checkpoint(&db, "a", "job-1", &token, "{}", 2_100).await);
        let next = claim(&db, "a", "w2", 2_200).await.unwrap();
        assert_eq!(next.id, "job-2");
        assert_eq!(tenants_at(&db, 100_000).await, ["a"], "job-2 still needs its worker once its lease runs out");
        assert!(tenants_at(&db, 2_300).await.is_empty(), "job-2 is held");

        // Retention: finished at or before the cutoff, in that tenant.
        let sys = db.store.system_read().await.unwrap();
        assert!(sys.export_tenants_with_expired(1_999).await.unwrap().is_empty());
        let expired = sys.export_tenants_with_expired(2_000).await.unwrap();
        sys.commit().await.unwrap();
        assert_eq!(expired.iter().map(|t| t.as_str()).collect::<Vec<_>>(), ["a"]);
        let tx = db.store.write(&ctx("a")).await.unwrap();
        assert_eq!(tx.export_jobs_finished_before(2_000, 100).await.unwrap(), ["job-1"]);
        assert!(tx.delete_export_job("job-1").await.unwrap());
        assert!(!tx.delete_export_job("job-1").await.unwrap());
        assert!(tx.export_job("job-1").await.unwrap().is_none());
        tx.commit().await.unwrap();
        let sys = db.store.system_read().await.unwrap();
        assert!(sys.export_tenants_with_expired(10_000).await.unwrap().is_empty());
        sys.commit().await.unwrap();
        db.finish().await;
    }
}

#[tokio::test]
async fn export_jobs_are_behind_row_level_security_on_postgres() {
    for backend in backends().await {
        let db = backend.open().await;
        create(&db, "a", "job-1", 100).await;
        if db.is_postgres() {
            // A statement without the tenant predicate, in tenant b's transaction: the policy
            // still hides tenant a's job (the store's own statements all carry the predicate).
            let tx = db.store.write(&ctx("b")).await.unwrap();
            let rows = tx.query("SELECT id FROM export_jobs", Vec::new()).await.unwrap();
            assert!(rows.is_empty());
            let changed = tx.exec("UPDATE export_jobs SET state = 'cancelled'", Vec::new()).await.unwrap();
            assert_eq!(changed, 0);
            tx.commit().await.unwrap();
            // A system transaction sees the queue entry (ids only) but not the job.
            let sys = db.store.system_read().await.unwrap();
            assert_eq!(sys.query("SELECT job_id FROM export_queue", Vec::new()).await.unwrap().len(), 1);
            assert!(sys.query("SELECT id FROM export_jobs", Vec::new()).await.unwrap().is_empty());
            sys.commit().await.unwrap();
        }
        db.finish().await;
    }
}

#[tokio::test]
async fn a_tenant_with_a_backlog_does_not_keep_the_workers_from_another_tenants_job() {
    for backend in backends().await {
        let db = backend.open().await;
        // Tenant a queued many jobs first; tenant b one, later.
        for i in 0..5 {
            create(&db, "a", &format!("job-a{i}"), 100 + i).await;
        }
        create(&db, "b", "job-b", 1_000).await;
        assert_eq!(tenants_at(&db, 2_000).await, ["a", "b"], "nobody busy: the oldest job first");
        // One worker runs a job of a: the next worker is sent to b, not to a's second job.
        let held = claim(&db, "a", "w1", 2_000).await.unwrap();
        assert_eq!(tenants_at(&db, 2_001).await, ["b", "a"], "the tenant running fewer jobs first");
        assert!(claim(&db, "b", "w2", 2_001).await.is_some_and(|j| j.id == "job-b"));
        // b has nothing left to claim while its job is held, so it is not listed at all.
        assert_eq!(tenants_at(&db, 2_002).await, ["a"]);
        // Checkpoints keep the queue's copy of the lease: a's job stays busy past its first lease.
        assert!(checkpoint(&db, "a", &held.id, held.lease_token.as_deref().unwrap(), "{}", 11_000).await);
        let busy = claim(&db, "a", "w3", 12_500).await.unwrap();
        assert_ne!(busy.id, held.id, "a held job is not claimed twice");
        // A released job is claimable at once again.
        let tx = db.store.write(&ctx("b")).await.unwrap();
        let job_b = tx.export_job("job-b").await.unwrap().unwrap();
        assert!(tx.release_export_job("job-b", job_b.lease_token.as_deref().unwrap(), 12_600).await.unwrap());
        tx.commit().await.unwrap();
        assert_eq!(tenants_at(&db, 12_700).await, ["b", "a"], "b runs nothing now, a runs two");
        db.finish().await;
    }
}

#[tokio::test]
async fn outputs_are_added_with_the_checkpoint_that_covers_them_and_go_with_the_job() {
    for backend in backends().await {
        let db = backend.open().await;
        create(&db, "a", "job-1", 100).await;
        create(&db, "b", "job-b", 100).await;
        let job = claim(&db, "a", "w1", 1_000).await.unwrap();
        let token = job.lease_token.unwrap();
        let outputs = |names: &[&str]| -> Vec<(String, String)> {
            names.iter().map(|n| ((*n).to_owned(), format!(r#"{{"file":"{n}"}}"#))).collect()
        };
        let tx = db.store.write(&ctx("a")).await.unwrap();
        assert!(tx.checkpoint_export_job("job-1", &token, "{}", "", 5_000, 1_100).await.unwrap());
        tx.add_export_outputs("job-1", 0, &outputs(&["Bundle-1.json", "Bundle-2.json"])).await.unwrap();
        tx.commit().await.unwrap();
        let tx = db.store.write(&ctx("a")).await.unwrap();
        assert!(tx.finish_export_job("job-1", &token, ExportEnd::Completed, 1_200).await.unwrap());
        tx.add_export_outputs("job-1", 2, &outputs(&["Bundle-3.json"])).await.unwrap();
        tx.commit().await.unwrap();

        let tx = db.store.read(&ctx("a")).await.unwrap();
        let all = tx.export_outputs("job-1").await.unwrap();
        assert_eq!(all, ["Bundle-1.json", "Bundle-2.json", "Bundle-3.json"].map(|n| format!(r#"{{"file":"{n}"}}"#)));
        assert_eq!(
            tx.export_output("job-1", "Bundle-2.json").await.unwrap().as_deref(),
            Some(r#"{"file":"Bundle-2.json"}"#)
        );
        assert!(tx.export_output("job-1", "Bundle-9.json").await.unwrap().is_none());
        // The checkpoint itself stays as small as the worker wrote it, however many files.
        assert_eq!(tx.export_job("job-1").await.unwrap().unwrap().checkpoint.as_deref(), Some("{}"));
        tx.commit().await.unwrap();
        // Another tenant sees none of them, even naming the job.
        let tx = db.store.read(&ctx("b")).await.unwrap();
        assert!(tx.export_outputs("job-1").await.unwrap().is_empty());
        assert!(tx.export_output("job-1", "Bundle-1.json").await.unwrap().is_none());
        tx.commit().await.unwrap();
        if db.is_postgres() {
            let tx = db.store.read(&ctx("b")).await.unwrap();
            assert!(tx.query("SELECT file FROM export_outputs", Vec::new()).await.unwrap().is_empty(), "RLS");
            tx.commit().await.unwrap();
        }
        // Deleting the job deletes its outputs.
        let tx = db.store.write(&ctx("a")).await.unwrap();
        assert!(tx.delete_export_job("job-1").await.unwrap());
        assert!(tx.export_outputs("job-1").await.unwrap().is_empty());
        tx.commit().await.unwrap();
        db.finish().await;
    }
}

#[tokio::test]
async fn active_jobs_are_counted_per_requester() {
    for backend in backends().await {
        let db = backend.open().await;
        create(&db, "a", "job-1", 100).await;
        create(&db, "a", "job-2", 200).await;
        let mut other = new_job("job-3", 300);
        other.requester = "client-2".into();
        let tx = db.store.write(&ctx("a")).await.unwrap();
        tx.create_export_job(&other).await.unwrap();
        assert_eq!(tx.active_export_jobs("client-1").await.unwrap(), 2);
        assert!(tx.cancel_export_job("job-1", 400).await.unwrap());
        assert_eq!(tx.active_export_jobs("client-1").await.unwrap(), 1, "a cancelled job no longer counts");
        assert_eq!(tx.active_export_jobs("client-2").await.unwrap(), 1);
        tx.commit().await.unwrap();
        let tx = db.store.read(&ctx("b")).await.unwrap();
        assert_eq!(tx.active_export_jobs("client-1").await.unwrap(), 0, "per tenant");
        tx.commit().await.unwrap();
        db.finish().await;
    }
}
