//! The national-service submission log: idempotent by request id, claimed once per lease across
//! tenants, answers recorded only by the claim that holds the row, state changes guarded.

use super::{TestDb, backends, ctx};
use crate::{Submission, SubmissionFilter};
use serde_json::json;

fn submission(id: &str, request_id: &str, state: &str, due: Option<i64>) -> Submission {
    Submission {
        id: id.into(),
        service: "clins".into(),
        kind: "condition".into(),
        operation: "register".into(),
        request_id: request_id.into(),
        business_key: format!("1318814790^2026^{id}"),
        patient: Some("Patient/p1".into()),
        state: state.into(),
        attempts: 0,
        next_attempt_at: due,
        last_error: None,
        payload: "{\"resourceType\":\"Bundle\"}".into(),
        response: None,
        result: json!({}),
        created_by: Some("user-1".into()),
        created_at: 1_000,
        updated_at: 1_000,
    }
}

async fn insert(db: &TestDb, tenant: &str, s: &Submission) -> bool {
    let tx = db.store.write(&ctx(tenant)).await.unwrap();
    let inserted = tx.insert_submission(s).await.unwrap();
    tx.commit().await.unwrap();
    inserted
}

async fn due_tenants(db: &TestDb, now: i64) -> Vec<String> {
    let sys = db.store.system_read().await.unwrap();
    let list = sys.national_tenants("clins", now).await.unwrap();
    sys.commit().await.unwrap();
    list.iter().map(|t| t.as_str().to_owned()).collect()
}

async fn claim(db: &TestDb, tenant: &str, now: i64) -> Vec<Submission> {
    let tx = db.store.write(&ctx(tenant)).await.unwrap();
    let claimed = tx.claim_due_submissions("clins", now, now + 10_000, 10).await.unwrap();
    tx.commit().await.unwrap();
    claimed
}

#[tokio::test]
async fn submissions_are_idempotent_by_request_id_and_claimed_once_per_lease() {
    for backend in backends().await {
        let db = backend.open().await;
        assert!(insert(&db, "t1", &submission("s1", "req-1", "queued", Some(2_000))).await);
        // The same request id again (a retried API call): nothing new.
        assert!(!insert(&db, "t1", &submission("s1-again", "req-1", "queued", Some(2_000))).await);
        // A draft is not in the queue; another tenant's queued one is.
        assert!(insert(&db, "t1", &submission("s2", "req-2", "draft", None)).await);
        assert!(insert(&db, "t2", &submission("s3", "req-1", "queued", Some(3_000))).await);

        assert_eq!(due_tenants(&db, 1_500).await, Vec::<String>::new());
        assert_eq!(due_tenants(&db, 2_500).await, ["t1"]);
        assert_eq!(due_tenants(&db, 3_500).await, ["t1", "t2"]);

        let claimed = claim(&db, "t1", 2_500).await;
        assert_eq!(claimed.iter().map(|s| s.id.as_str()).collect::<Vec<_>>(), ["s1"]);
        assert_eq!(claimed[0].next_attempt_at, Some(12_500));
        // Held by the lease: neither claimable nor listed as due.
        assert!(claim(&db, "t1", 3_000).await.is_empty());
        assert_eq!(due_tenants(&db, 3_000).await, ["t2"]);

        // The lease ran out: another worker takes it; the first one's answer is then refused.
        let again = claim(&db, "t1", 13_000).await;
        assert_eq!(again.len(), 1);
        let tx = db.store.write(&ctx("t1")).await.unwrap();
        let stale = tx
            .record_submission_attempt("s1", 12_500, "accepted", None, None, Some("late"), None, 13_100)
            .await
            .unwrap();
        assert!(!stale, "a claim that lost its lease records nothing");
        // A retryable failure from the current holder: queued again, due later.
        assert!(
            tx.record_submission_attempt("s1", 23_000, "queued", Some(30_000), Some("unreachable"), None, None, 13_200)
                .await
                .unwrap()
        );
        tx.commit().await.unwrap();
        assert_eq!(due_tenants(&db, 20_000).await, ["t2"]);
        assert_eq!(due_tenants(&db, 30_000).await, ["t2", "t1"], "the longest-waiting first");

        let claimed = claim(&db, "t1", 30_000).await;
        let tx = db.store.write(&ctx("t1")).await.unwrap();
        let result = json!({"resultCode": "0000", "message": "accepted"});
        assert!(
            tx.record_submission_attempt("s1", 40_000, "accepted", None, None, Some("{}"), Some(&result), 30_100)
                .await
                .unwrap()
        );
        let s = tx.submission(&claimed[0].id).await.unwrap().unwrap();
        assert_eq!((s.state.as_str(), s.attempts, s.last_error.as_deref()), ("accepted", 2, None));
        assert_eq!(s.result, result);
        // Out of the queue for good.
        assert!(tx.claim_due_submissions("clins", 99_000, 100_000, 10).await.unwrap().is_empty());
        // A guarded state change: only from the states named.
        assert!(
            !tx.change_submission("s1", &["draft", "failed"], "cancelled", None, None, None, 31_000).await.unwrap()
        );
        assert!(tx.change_submission("s2", &["draft"], "queued", None, None, Some(31_000), 31_000).await.unwrap());
        // Withdrawn before it was sent: only while no worker claimed it since (its due time is
        // still the one read), and without counting an attempt.
        assert!(!tx.withdraw_submission("s2", 30_999, "withdrawn", None, 31_050).await.unwrap());
        assert!(tx.withdraw_submission("s2", 31_000, "withdrawn", None, 31_050).await.unwrap());
        let s2 = tx.submission("s2").await.unwrap().unwrap();
        assert_eq!((s2.state.as_str(), s2.attempts, s2.next_attempt_at), ("withdrawn", 0, None));
        assert!(tx.change_submission("s2", &["withdrawn"], "queued", None, None, Some(31_000), 31_100).await.unwrap());
        let by_request = tx.submission_by_request_id("clins", "req-2").await.unwrap().unwrap();
        assert_eq!(by_request.id, "s2");
        let listed = tx
            .submissions(&SubmissionFilter {
                service: Some("clins"),
                patient: Some("Patient/p1"),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(listed.len(), 2, "the tenant's own only");
        tx.commit().await.unwrap();
        assert_eq!(due_tenants(&db, 31_000).await, ["t2", "t1"]);
        db.finish().await;
    }
}

#[tokio::test]
async fn submissions_are_behind_row_level_security_on_postgres() {
    for backend in backends().await {
        let db = backend.open().await;
        assert!(insert(&db, "a", &submission("s1", "req-1", "queued", Some(2_000))).await);
        if db.is_postgres() {
            // A statement without the tenant predicate in tenant b's transaction: the policy still
            // hides tenant a's submission (its payload is patient data).
            let tx = db.store.write(&ctx("b")).await.unwrap();
            assert!(tx.query("SELECT id FROM national_submissions", Vec::new()).await.unwrap().is_empty());
            let changed = tx.exec("UPDATE national_submissions SET state = 'cancelled'", Vec::new()).await.unwrap();
            assert_eq!(changed, 0);
            tx.commit().await.unwrap();
            // A system transaction sees the queue entry (ids and due times only), not the submission.
            let sys = db.store.system_read().await.unwrap();
            assert_eq!(sys.query("SELECT submission_id FROM national_queue", Vec::new()).await.unwrap().len(), 1);
            assert!(sys.query("SELECT id FROM national_submissions", Vec::new()).await.unwrap().is_empty());
            sys.commit().await.unwrap();
        }
        db.finish().await;
    }
}

/// The queue entries of tenant `t1`, as a system transaction sees them: (submission, service, due).
async fn queue_of(db: &TestDb, tenant: &str) -> Vec<(String, String, i64)> {
    let sys = db.store.system_read().await.unwrap();
    let rows = sys
        .query(
            "SELECT submission_id, service, due_at FROM national_queue WHERE tenant_id = $1 ORDER BY submission_id",
            vec![tenant.into()],
        )
        .await
        .unwrap();
    sys.commit().await.unwrap();
    rows.iter()
        .map(|r| {
            (
                r.try_get("", "submission_id").unwrap(),
                r.try_get("", "service").unwrap(),
                r.try_get("", "due_at").unwrap(),
            )
        })
        .collect()
}

#[tokio::test]
async fn the_queue_mirrors_the_submissions_and_queued_rows_are_guarded() {
    for backend in backends().await {
        let db = backend.open().await;
        let mut eps = submission("e1", "req-e1", "queued", Some(5_000));
        eps.service = "eprescription".into();
        assert!(insert(&db, "t1", &eps).await);
        assert!(insert(&db, "t1", &submission("s1", "req-1", "draft", None)).await);
        assert_eq!(queue_of(&db, "t1").await, [("e1".to_owned(), "eprescription".to_owned(), 5_000)]);

        let tx = db.store.write(&ctx("t1")).await.unwrap();
        // A queued submission without a due time would be listed as due and never claimed.
        let mut no_due = submission("s2", "req-2", "queued", None);
        assert!(tx.insert_submission(&no_due).await.is_err());
        no_due.state = "draft".into();
        assert!(tx.insert_submission(&no_due).await.unwrap());
        assert!(tx.change_submission("s2", &["draft"], "queued", None, None, None, 1_100).await.is_err());
        // Out of `queued` only through a claim's answer or a conditional withdrawal: a worker may
        // hold the row.
        assert!(tx.change_submission("e1", &["queued"], "cancelled", None, None, None, 1_100).await.is_err());
        assert!(tx.withdraw_submission("e1", 5_000, "queued", None, 1_100).await.is_err());
        // Another id under a request id already used: a duplicate request, nothing changes; the
        // same id under a new request id is an error, not a duplicate.
        assert!(!tx.insert_submission(&submission("s3", "req-1", "queued", Some(1))).await.unwrap());
        tx.commit().await.unwrap();
        let tx = db.store.write(&ctx("t1")).await.unwrap();
        assert!(tx.insert_submission(&submission("s1", "req-new", "draft", None)).await.is_err());
        drop(tx);

        // Every path keeps the entry equal to the row: queued with its due time, else absent.
        let tx = db.store.write(&ctx("t1")).await.unwrap();
        assert!(tx.change_submission("s1", &["draft"], "queued", None, None, Some(2_000), 1_200).await.unwrap());
        tx.commit().await.unwrap();
        assert_eq!(
            queue_of(&db, "t1").await,
            [("e1".to_owned(), "eprescription".to_owned(), 5_000), ("s1".to_owned(), "clins".to_owned(), 2_000)]
        );
        let claimed = claim(&db, "t1", 2_500).await;
        assert_eq!(claimed.len(), 1);
        assert_eq!(queue_of(&db, "t1").await[1], ("s1".to_owned(), "clins".to_owned(), 12_500));
        let tx = db.store.write(&ctx("t1")).await.unwrap();
        assert!(tx.record_submission_attempt("s1", 12_500, "queued", None, None, None, None, 2_600).await.is_err());
        assert!(
            tx.record_submission_attempt("s1", 12_500, "queued", Some(7_000), Some("down"), None, None, 2_600)
                .await
                .unwrap()
        );
        tx.commit().await.unwrap();
        assert_eq!(queue_of(&db, "t1").await[1], ("s1".to_owned(), "clins".to_owned(), 7_000));
        let tx = db.store.write(&ctx("t1")).await.unwrap();
        assert!(tx.withdraw_submission("s1", 7_000, "withdrawn", None, 2_700).await.unwrap());
        assert!(
            tx.record_submission_attempt("e1", 5_000, "failed", None, Some("refused"), None, None, 2_800)
                .await
                .unwrap()
        );
        tx.commit().await.unwrap();
        assert_eq!(queue_of(&db, "t1").await, Vec::<(String, String, i64)>::new());
        db.finish().await;
    }
}
