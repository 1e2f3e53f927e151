//! The behavioural suite. Every case takes a fresh, empty state and controls time itself.
//!
//! `T0` is deliberately far from the real clock: an adapter that let Redis TTLs or Redis' own
//! clock decide an answer fails these cases.

use std::collections::HashSet;
use std::sync::Arc;

use ehr_kv::{Admission, Admitted, Bucket, Family, KvError, Limit, Rotation, SecurityState, session_revocation_key};

/// The test clock's start, in unix seconds (2001).
const T0: i64 = 1_000_000_000;

fn family(id: &str, tenant: &str, subject: &str, created_at: i64, expires_at: i64) -> Family {
    Family {
        id: id.to_owned(),
        tenant: tenant.to_owned(),
        subject: subject.to_owned(),
        client_id: "portal".to_owned(),
        scope: "openid patient/*.read".to_owned(),
        roles: vec!["physician".to_owned(), "auditor".to_owned()],
        created_at,
        expires_at,
    }
}

fn ids(families: &[Family]) -> Vec<&str> {
    families.iter().map(|f| f.id.as_str()).collect()
}

pub async fn put_get_take_delete(s: Arc<dyn SecurityState>) {
    assert_eq!(s.get("code-1", T0).await.unwrap(), None);
    s.put("code-1", "payload", T0 + 60, T0).await.unwrap();
    assert_eq!(s.get("code-1", T0 + 59).await.unwrap().as_deref(), Some("payload"));
    // get does not consume
    assert_eq!(s.get("code-1", T0 + 1).await.unwrap().as_deref(), Some("payload"));

    s.put("code-1", "replaced", T0 + 60, T0).await.unwrap();
    assert_eq!(s.take("code-1", T0 + 1).await.unwrap().as_deref(), Some("replaced"));
    assert_eq!(s.take("code-1", T0 + 1).await.unwrap(), None);
    assert_eq!(s.get("code-1", T0 + 1).await.unwrap(), None);

    s.put("code-2", "x", T0 + 60, T0).await.unwrap();
    s.delete("code-2").await.unwrap();
    assert_eq!(s.get("code-2", T0).await.unwrap(), None);
    s.delete("never-stored").await.unwrap();

    // Values are opaque text: JSON, colons and non-ASCII survive.
    let json = r#"{"redirect_uri":"https://app.example/cb?a=1:2","名前":"テスト"}"#;
    s.put("req:π", json, T0 + 60, T0).await.unwrap();
    assert_eq!(s.get("req:π", T0).await.unwrap().as_deref(), Some(json));
}

pub async fn expiry_follows_the_passed_in_clock_not_ttls(s: Arc<dyn SecurityState>) {
    // Lifetimes of an hour by the test clock: no TTL can fire during the test, so every "expired"
    // below comes from comparing with `now`.
    s.put("pending", "v", T0 + 3600, T0).await.unwrap();
    assert_eq!(s.get("pending", T0 + 3599).await.unwrap().as_deref(), Some("v"));
    assert_eq!(s.get("pending", T0 + 3600).await.unwrap(), None, "live while now < expires_at");
    assert_eq!(s.take("pending", T0 + 3600).await.unwrap(), None, "an expired value is not taken");

    assert!(s.insert_unique("jti-a", T0 + 3600, T0).await.unwrap());
    assert!(!s.insert_unique("jti-a", T0 + 3600, T0 + 3599).await.unwrap());
    assert!(s.insert_unique("jti-a", T0 + 7200, T0 + 3600).await.unwrap(), "expired guard is free again");

    // Absolute ends far in the past of the real clock must still hold by the test clock.
    s.set_lock("user-1", T0 + 300).await.unwrap();
    assert_eq!(s.lock_until("user-1", T0 + 299).await.unwrap(), Some(T0 + 300));
    assert_eq!(s.lock_until("user-1", T0 + 300).await.unwrap(), None);

    s.revoke_jti("jti-b", T0 + 300).await.unwrap();
    assert!(s.is_jti_revoked("jti-b", T0 + 299).await.unwrap());
    assert!(!s.is_jti_revoked("jti-b", T0 + 300).await.unwrap());

    s.revoke_tokens_before("t1", "u1", T0, T0 + 300).await.unwrap();
    assert_eq!(s.tokens_revoked_before("t1", "u1", T0 + 299).await.unwrap(), Some(T0));
    assert_eq!(s.tokens_revoked_before("t1", "u1", T0 + 300).await.unwrap(), None);

    s.create_family(&family("f1", "t1", "u1", T0, T0 + 3600), "h0", T0).await.unwrap();
    assert_eq!(s.families_of("t1", "u1", T0 + 3599).await.unwrap().len(), 1);
    assert!(s.families_of("t1", "u1", T0 + 3600).await.unwrap().is_empty());
}

pub async fn take_is_single_use_under_concurrency(s: Arc<dyn SecurityState>) {
    for round in 0..3 {
        let key = format!("code-{round}");
        s.put(&key, "the-code", T0 + 60, T0).await.unwrap();
        let tasks: Vec<_> = (0..20)
            .map(|_| {
                let s = Arc::clone(&s);
                let key = key.clone();
                tokio::spawn(async move { s.take(&key, T0 + 1).await.unwrap() })
            })
            .collect();
        let mut winners = 0;
        for task in tasks {
            if let Some(v) = task.await.unwrap() {
                assert_eq!(v, "the-code");
                winners += 1;
            }
        }
        assert_eq!(winners, 1, "an authorization code is redeemable exactly once");
    }
}

pub async fn insert_unique_guards_replays(s: Arc<dyn SecurityState>) {
    assert!(s.insert_unique("assertion:abc", T0 + 120, T0).await.unwrap());
    assert!(!s.insert_unique("assertion:abc", T0 + 120, T0 + 1).await.unwrap());
    assert!(!s.insert_unique("assertion:abc", T0 + 999, T0 + 119).await.unwrap(), "a replay does not extend");
    assert!(s.insert_unique("assertion:abd", T0 + 120, T0 + 1).await.unwrap(), "keys are independent");
    assert!(s.insert_unique("assertion:abc", T0 + 240, T0 + 120).await.unwrap());

    let tasks: Vec<_> = (0..10)
        .map(|_| {
            let s = Arc::clone(&s);
            tokio::spawn(async move { s.insert_unique("race", T0 + 60, T0).await.unwrap() })
        })
        .collect();
    let mut inserted = 0;
    for task in tasks {
        inserted += usize::from(task.await.unwrap());
    }
    assert_eq!(inserted, 1);
}

pub async fn failures_count_in_a_sliding_window(s: Arc<dyn SecurityState>) {
    let w = 60;
    // Counting only (threshold 0: no lock), so every attempt is counted and nothing is refused.
    let p = ehr_kv::AttemptPolicy { window_secs: w, threshold: 0, base_secs: 60, max_secs: 60 };
    let count = |a: ehr_kv::Attempt| match a {
        ehr_kv::Attempt::Counted { count } => count,
        ehr_kv::Attempt::Locked { .. } => panic!("no lock without a threshold"),
    };
    assert_eq!(count(s.begin_attempt("login:alice", &p, T0).await.unwrap()), 1);
    assert_eq!(count(s.begin_attempt("login:alice", &p, T0 + 10).await.unwrap()), 2);
    assert_eq!(count(s.begin_attempt("login:alice", &p, T0 + 20).await.unwrap()), 3);
    // Same second: each failure counts.
    assert_eq!(count(s.begin_attempt("login:alice", &p, T0 + 20).await.unwrap()), 4);
    // At T0+60 the failure at T0 is exactly window_secs old and no longer counts.
    assert_eq!(count(s.begin_attempt("login:alice", &p, T0 + 60).await.unwrap()), 4);
    // At T0+75 the one at T0+10 has left too; T0+20 (twice), T0+60, T0+75 remain.
    assert_eq!(count(s.begin_attempt("login:alice", &p, T0 + 75).await.unwrap()), 4);
    // Long after: only this one.
    assert_eq!(count(s.begin_attempt("login:alice", &p, T0 + 1000).await.unwrap()), 1);

    assert_eq!(count(s.begin_attempt("login:bob", &p, T0 + 1000).await.unwrap()), 1, "keys are independent");
    s.clear_failures("login:alice").await.unwrap();
    assert_eq!(count(s.begin_attempt("login:alice", &p, T0 + 1001).await.unwrap()), 1);
    assert_eq!(count(s.begin_attempt("login:bob", &p, T0 + 1001).await.unwrap()), 2);
    s.clear_failures("never-failed").await.unwrap();

    let tasks: Vec<_> = (0..10)
        .map(|_| {
            let s = Arc::clone(&s);
            tokio::spawn(async move { count(s.begin_attempt("login:carol", &p, T0).await.unwrap()) })
        })
        .collect();
    let mut counts = Vec::new();
    for task in tasks {
        counts.push(task.await.unwrap());
    }
    counts.sort_unstable();
    assert_eq!(counts, (1..=10).collect::<Vec<u32>>(), "concurrent failures are each counted once");
}

pub async fn locks_hold_until_their_end(s: Arc<dyn SecurityState>) {
    assert_eq!(s.lock_until("alice", T0).await.unwrap(), None);
    s.set_lock("alice", T0 + 900).await.unwrap();
    assert_eq!(s.lock_until("alice", T0).await.unwrap(), Some(T0 + 900));
    assert_eq!(s.lock_until("bob", T0).await.unwrap(), None);
    // A new lock replaces the old one, also when it ends sooner (an administrator's shorter lock).
    s.set_lock("alice", T0 + 60).await.unwrap();
    assert_eq!(s.lock_until("alice", T0).await.unwrap(), Some(T0 + 60));
    s.clear_lock("alice").await.unwrap();
    assert_eq!(s.lock_until("alice", T0).await.unwrap(), None);
    s.clear_lock("never-locked").await.unwrap();
}

pub async fn rotation_moves_the_current_token(s: Arc<dyn SecurityState>) {
    let f = family("fam-1", "t1", "alice", T0, T0 + 86_400);
    s.create_family(&f, "h0", T0).await.unwrap();
    assert_eq!(s.rotate("fam-1", "h0", "h1", T0 + 10).await.unwrap(), Rotation::Rotated(f.clone()));
    assert_eq!(s.rotate("fam-1", "h1", "h2", T0 + 20).await.unwrap(), Rotation::Rotated(f.clone()));
    assert_eq!(s.rotate("fam-1", "h2", "h3", T0 + 30).await.unwrap(), Rotation::Rotated(f.clone()));
    assert_eq!(s.families_of("t1", "alice", T0 + 30).await.unwrap(), vec![f]);
}

pub async fn reuse_after_rotation_revokes_the_family(s: Arc<dyn SecurityState>) {
    let f = family("fam-1", "t1", "alice", T0, T0 + 86_400);
    s.create_family(&f, "h0", T0).await.unwrap();
    assert!(matches!(s.rotate("fam-1", "h0", "h1", T0 + 10).await.unwrap(), Rotation::Rotated(_)));
    assert!(matches!(s.rotate("fam-1", "h1", "h2", T0 + 20).await.unwrap(), Rotation::Rotated(_)));
    // An old token comes back (stolen copy or confused client): the whole family goes.
    assert_eq!(s.rotate("fam-1", "h0", "hx", T0 + 30).await.unwrap(), Rotation::Reused(f));
    assert_eq!(s.rotate("fam-1", "h2", "h3", T0 + 31).await.unwrap(), Rotation::Invalid, "current token is dead");
    assert_eq!(s.rotate("fam-1", "h1", "h3", T0 + 32).await.unwrap(), Rotation::Invalid, "revoked: no second report");
    assert!(s.families_of("t1", "alice", T0 + 33).await.unwrap().is_empty());
    assert!(!s.revoke_family("fam-1").await.unwrap());
}

pub async fn unknown_hash_is_invalid_and_harmless(s: Arc<dyn SecurityState>) {
    let f = family("fam-1", "t1", "alice", T0, T0 + 86_400);
    s.create_family(&f, "h0", T0).await.unwrap();
    assert_eq!(s.rotate("fam-1", "guess", "h1", T0 + 1).await.unwrap(), Rotation::Invalid);
    assert_eq!(s.rotate("fam-1", "", "h1", T0 + 1).await.unwrap(), Rotation::Invalid);
    // The new hash of a failed attempt was not recorded either.
    assert_eq!(s.rotate("fam-1", "h1", "h2", T0 + 1).await.unwrap(), Rotation::Invalid);
    assert_eq!(s.rotate("no-such-family", "h0", "h1", T0 + 1).await.unwrap(), Rotation::Invalid);
    // The owner is unaffected.
    assert_eq!(s.rotate("fam-1", "h0", "h1", T0 + 2).await.unwrap(), Rotation::Rotated(f));
    // A hash of another family is unknown here, not reuse.
    let g = family("fam-2", "t1", "bob", T0, T0 + 86_400);
    s.create_family(&g, "g0", T0).await.unwrap();
    assert!(matches!(s.rotate("fam-2", "g0", "g1", T0 + 3).await.unwrap(), Rotation::Rotated(_)));
    assert_eq!(s.rotate("fam-1", "g0", "x", T0 + 4).await.unwrap(), Rotation::Invalid);
    assert!(matches!(s.rotate("fam-1", "h1", "h2", T0 + 5).await.unwrap(), Rotation::Rotated(_)));
}

pub async fn expired_family_is_invalid(s: Arc<dyn SecurityState>) {
    let f = family("fam-1", "t1", "alice", T0, T0 + 3600);
    s.create_family(&f, "h0", T0).await.unwrap();
    assert!(matches!(s.rotate("fam-1", "h0", "h1", T0 + 3599).await.unwrap(), Rotation::Rotated(_)));
    // At the family's absolute end, neither the current nor an old token does anything.
    assert_eq!(s.rotate("fam-1", "h1", "h2", T0 + 3600).await.unwrap(), Rotation::Invalid);
    assert_eq!(s.rotate("fam-1", "h0", "h2", T0 + 3600).await.unwrap(), Rotation::Invalid);
    assert!(s.families_of("t1", "alice", T0 + 3600).await.unwrap().is_empty());
}

pub async fn concurrent_rotation_has_one_winner_and_revokes(s: Arc<dyn SecurityState>) {
    for round in 0..10 {
        let id = format!("fam-{round}");
        s.create_family(&family(&id, "t1", "alice", T0, T0 + 86_400), "h0", T0).await.unwrap();
        let tasks: Vec<_> = ["a", "b"]
            .into_iter()
            .map(|replica| {
                let s = Arc::clone(&s);
                let id = id.clone();
                tokio::spawn(async move {
                    let new_hash = format!("h1-{replica}");
                    (s.rotate(&id, "h0", &new_hash, T0 + 1).await.unwrap(), new_hash)
                })
            })
            .collect();
        let mut rotated = 0;
        let mut reused = 0;
        let mut new_hashes = Vec::new();
        for task in tasks {
            let (outcome, new_hash) = task.await.unwrap();
            match outcome {
                Rotation::Rotated(_) => rotated += 1,
                Rotation::Reused(_) => reused += 1,
                Rotation::Invalid => panic!("a concurrent rotation must not be invalid"),
            }
            new_hashes.push(new_hash);
        }
        assert_eq!((rotated, reused), (1, 1));
        // The loser's reuse revoked the family, so even the winner's new token is dead.
        for new_hash in new_hashes {
            assert_eq!(s.rotate(&id, &new_hash, "h2", T0 + 2).await.unwrap(), Rotation::Invalid);
        }
    }
    assert!(s.families_of("t1", "alice", T0 + 3).await.unwrap().is_empty());
}

pub async fn revoke_family_voids_its_tokens(s: Arc<dyn SecurityState>) {
    s.create_family(&family("fam-1", "t1", "alice", T0, T0 + 86_400), "h0", T0).await.unwrap();
    s.create_family(&family("fam-2", "t1", "alice", T0 + 1, T0 + 86_400), "g0", T0).await.unwrap();
    assert!(matches!(s.rotate("fam-1", "h0", "h1", T0 + 1).await.unwrap(), Rotation::Rotated(_)));
    assert!(s.revoke_family("fam-1").await.unwrap());
    assert!(!s.revoke_family("fam-1").await.unwrap());
    assert!(!s.revoke_family("no-such-family").await.unwrap());
    assert_eq!(s.rotate("fam-1", "h1", "h2", T0 + 2).await.unwrap(), Rotation::Invalid);
    assert_eq!(s.rotate("fam-1", "h0", "h2", T0 + 2).await.unwrap(), Rotation::Invalid);
    assert_eq!(ids(&s.families_of("t1", "alice", T0 + 2).await.unwrap()), ["fam-2"]);
}

pub async fn revoke_subject_kills_only_that_users_families(s: Arc<dyn SecurityState>) {
    for (id, tenant, subject) in [
        ("a1", "t1", "alice"),
        ("a2", "t1", "alice"),
        ("a3", "t1", "alice"),
        ("b1", "t1", "bob"),
        ("a9", "t2", "alice"),
    ] {
        s.create_family(&family(id, tenant, subject, T0, T0 + 86_400), &format!("{id}-h0"), T0).await.unwrap();
    }
    assert_eq!(s.revoke_subject("t1", "alice").await.unwrap(), 3);
    assert_eq!(s.revoke_subject("t1", "alice").await.unwrap(), 0);
    assert_eq!(s.revoke_subject("t1", "nobody").await.unwrap(), 0);
    for id in ["a1", "a2", "a3"] {
        assert_eq!(s.rotate(id, &format!("{id}-h0"), "x", T0 + 1).await.unwrap(), Rotation::Invalid);
    }
    assert!(s.families_of("t1", "alice", T0 + 1).await.unwrap().is_empty());
    assert_eq!(ids(&s.families_of("t1", "bob", T0 + 1).await.unwrap()), ["b1"]);
    assert_eq!(ids(&s.families_of("t2", "alice", T0 + 1).await.unwrap()), ["a9"]);
    assert!(matches!(s.rotate("b1", "b1-h0", "b1-h1", T0 + 1).await.unwrap(), Rotation::Rotated(_)));
    assert!(matches!(s.rotate("a9", "a9-h0", "a9-h1", T0 + 1).await.unwrap(), Rotation::Rotated(_)));
    // New logins after the revocation are unaffected by it.
    s.create_family(&family("a4", "t1", "alice", T0 + 2, T0 + 86_400), "a4-h0", T0 + 2).await.unwrap();
    assert_eq!(ids(&s.families_of("t1", "alice", T0 + 2).await.unwrap()), ["a4"]);
}

pub async fn tenants_are_separate(s: Arc<dyn SecurityState>) {
    // The same user name in two tenants, and pairs that would collide if joined naively by ':'.
    let pairs = [("t1", "alice"), ("t2", "alice"), ("a:b", "c"), ("a", "b:c"), ("a%3Ab", "c")];
    for (n, (tenant, subject)) in pairs.iter().enumerate() {
        let id = format!("fam-{n}");
        s.create_family(&family(&id, tenant, subject, T0, T0 + 86_400), "h0", T0).await.unwrap();
        s.revoke_tokens_before(tenant, subject, T0 + i64::try_from(n).unwrap(), T0 + 600).await.unwrap();
    }
    for (n, (tenant, subject)) in pairs.iter().enumerate() {
        let families = s.families_of(tenant, subject, T0).await.unwrap();
        assert_eq!(ids(&families), [format!("fam-{n}").as_str()], "{tenant}/{subject}");
        assert_eq!(families[0].tenant, *tenant);
        let ts = s.tokens_revoked_before(tenant, subject, T0).await.unwrap();
        assert_eq!(ts, Some(T0 + i64::try_from(n).unwrap()), "{tenant}/{subject}");
    }
    assert_eq!(s.revoke_subject("t1", "alice").await.unwrap(), 1);
    assert_eq!(s.families_of("t2", "alice", T0).await.unwrap().len(), 1);
    assert_eq!(s.revoke_subject("a:b", "c").await.unwrap(), 1);
    assert_eq!(s.families_of("a", "b:c", T0).await.unwrap().len(), 1);
    assert_eq!(s.families_of("a%3Ab", "c", T0).await.unwrap().len(), 1);
}

pub async fn families_of_lists_live_families_oldest_first(s: Arc<dyn SecurityState>) {
    assert!(s.families_of("t1", "alice", T0).await.unwrap().is_empty());
    let long = family("long", "t1", "alice", T0 + 5, T0 + 86_400);
    let short = family("short", "t1", "alice", T0 + 1, T0 + 100);
    let middle = family("middle", "t1", "alice", T0 + 3, T0 + 86_400);
    let also_middle = family("also-middle", "t1", "alice", T0 + 3, T0 + 86_400);
    for f in [&long, &short, &middle, &also_middle] {
        s.create_family(f, &format!("{}-h0", f.id), T0 + 10).await.unwrap();
    }
    let all = s.families_of("t1", "alice", T0 + 10).await.unwrap();
    assert_eq!(all, vec![short.clone(), also_middle.clone(), middle.clone(), long.clone()]);
    assert_eq!(all[0].roles, ["physician", "auditor"], "every field round-trips");
    assert_eq!(s.families_of("t1", "alice", T0 + 100).await.unwrap(), vec![also_middle, middle, long]);
}

pub async fn recreating_a_family_replaces_it(s: Arc<dyn SecurityState>) {
    s.create_family(&family("fam-1", "t1", "alice", T0, T0 + 86_400), "h0", T0).await.unwrap();
    assert!(matches!(s.rotate("fam-1", "h0", "h1", T0 + 1).await.unwrap(), Rotation::Rotated(_)));
    let moved = family("fam-1", "t1", "bob", T0 + 2, T0 + 86_400);
    s.create_family(&moved, "k0", T0 + 2).await.unwrap();
    assert!(s.families_of("t1", "alice", T0 + 2).await.unwrap().is_empty(), "old owner's index no longer lists it");
    assert_eq!(s.families_of("t1", "bob", T0 + 2).await.unwrap(), vec![moved.clone()]);
    // The old family's history is gone with it: its hashes are unknown, not reuse.
    assert_eq!(s.rotate("fam-1", "h0", "x", T0 + 3).await.unwrap(), Rotation::Invalid);
    assert_eq!(s.rotate("fam-1", "k0", "k1", T0 + 3).await.unwrap(), Rotation::Rotated(moved));
}

pub async fn access_token_revocation_by_time(s: Arc<dyn SecurityState>) {
    assert_eq!(s.tokens_revoked_before("t1", "alice", T0).await.unwrap(), None);
    s.revoke_tokens_before("t1", "alice", T0 + 100, T0 + 400).await.unwrap();
    assert_eq!(s.tokens_revoked_before("t1", "alice", T0 + 100).await.unwrap(), Some(T0 + 100));
    assert_eq!(s.tokens_revoked_before("t1", "bob", T0 + 100).await.unwrap(), None);
    // An older cut-off or a shorter memory never weakens a revocation already in force.
    s.revoke_tokens_before("t1", "alice", T0 + 50, T0 + 200).await.unwrap();
    assert_eq!(s.tokens_revoked_before("t1", "alice", T0 + 399).await.unwrap(), Some(T0 + 100));
    // A later one moves the cut-off forward and extends the memory.
    s.revoke_tokens_before("t1", "alice", T0 + 300, T0 + 900).await.unwrap();
    assert_eq!(s.tokens_revoked_before("t1", "alice", T0 + 899).await.unwrap(), Some(T0 + 300));
    assert_eq!(s.tokens_revoked_before("t1", "alice", T0 + 900).await.unwrap(), None);
}

pub async fn jti_revocation(s: Arc<dyn SecurityState>) {
    assert!(!s.is_jti_revoked("jti-1", T0).await.unwrap());
    s.revoke_jti("jti-1", T0 + 300).await.unwrap();
    assert!(s.is_jti_revoked("jti-1", T0).await.unwrap());
    assert!(!s.is_jti_revoked("jti-2", T0).await.unwrap());
    s.revoke_jti("jti-1", T0 + 10).await.unwrap();
    assert!(s.is_jti_revoked("jti-1", T0 + 299).await.unwrap(), "a shorter revocation does not shorten");
    assert!(!s.is_jti_revoked("jti-1", T0 + 300).await.unwrap());
}

pub async fn token_bucket_refills_and_reports_retry_after(s: Arc<dyn SecurityState>) {
    let t = T0 * 1000;
    let (per_sec, burst) = (2.0, 3); // one token every 500 ms
    let take = async |key: &str, now_ms: i64| s.take_token(key, per_sec, burst, now_ms).await.unwrap();
    assert_eq!(take("ip:1", t).await, Bucket::Allowed { remaining: 2 });
    assert_eq!(take("ip:1", t).await, Bucket::Allowed { remaining: 1 });
    assert_eq!(take("ip:1", t).await, Bucket::Allowed { remaining: 0 });
    assert_eq!(take("ip:1", t).await, Bucket::Throttled { retry_after_ms: 500 });
    assert_eq!(take("ip:2", t).await, Bucket::Allowed { remaining: 2 }, "buckets are independent");
    // Half a token after 250 ms: 250 ms to go.
    assert_eq!(take("ip:1", t + 250).await, Bucket::Throttled { retry_after_ms: 250 });
    assert_eq!(take("ip:1", t + 500).await, Bucket::Allowed { remaining: 0 });
    assert_eq!(take("ip:1", t + 501).await, Bucket::Throttled { retry_after_ms: 499 });
    // A clock reading from the past (another replica's skew) neither refills nor rewinds.
    assert_eq!(take("ip:1", t + 400).await, Bucket::Throttled { retry_after_ms: 499 });
    // Refill is capped at burst.
    assert_eq!(take("ip:1", t + 3_600_000).await, Bucket::Allowed { remaining: 2 });

    // Fractional rates: 0.1/s is one token per 10 s.
    let slow = async |now_ms: i64| s.take_token("slow", 0.1, 1, now_ms).await.unwrap();
    assert_eq!(slow(t).await, Bucket::Allowed { remaining: 0 });
    assert_eq!(slow(t + 2_500).await, Bucket::Throttled { retry_after_ms: 7_500 });
    assert_eq!(slow(t + 10_000).await, Bucket::Allowed { remaining: 0 });

    // Under concurrency exactly `burst` requests get through.
    let tasks: Vec<_> = (0..10)
        .map(|_| {
            let s = Arc::clone(&s);
            tokio::spawn(async move { s.take_token("burst", 1.0, 4, t).await.unwrap() })
        })
        .collect();
    let mut allowed = HashSet::new();
    let mut throttled = 0;
    for task in tasks {
        match task.await.unwrap() {
            Bucket::Allowed { remaining } => assert!(allowed.insert(remaining)),
            Bucket::Throttled { retry_after_ms } => {
                assert_eq!(retry_after_ms, 1000);
                throttled += 1;
            }
        }
    }
    assert_eq!(allowed, HashSet::from([0, 1, 2, 3]));
    assert_eq!(throttled, 6);
}

pub async fn token_bucket_rejects_unusable_parameters(s: Arc<dyn SecurityState>) {
    for (per_sec, burst) in [(0.0, 5), (-1.0, 5), (f64::NAN, 5), (f64::INFINITY, 5), (0.0001, 5), (1.0, 0)] {
        let err = s.take_token("k", per_sec, burst, T0 * 1000).await.unwrap_err();
        assert!(matches!(err, KvError::InvalidArgument(_)), "{per_sec}/{burst}: {err}");
    }
}

pub async fn ping_answers(s: Arc<dyn SecurityState>) {
    s.ping().await.unwrap();
}

/// An admission of `alice` in `t1` with no token id, no session, an old `iat` and no buckets;
/// cases set what they test.
fn admission<'a>(buckets: &'a [Limit<'a>]) -> Admission<'a> {
    Admission { jti: None, session: None, tenant: "t1", subject: "alice", issued_at: T0, buckets }
}

/// `take_token`'s answer in `admit`'s terms, to compare the two.
fn as_admitted(bucket: Bucket) -> Admitted {
    match bucket {
        Bucket::Allowed { .. } => Admitted::Allowed,
        Bucket::Throttled { retry_after_ms } => Admitted::Throttled { retry_after_ms },
    }
}

/// Milliseconds of the test clock at `secs` seconds after `T0`, plus `ms`.
fn ms(secs: i64, ms: i64) -> i64 {
    (T0 + secs) * 1000 + ms
}

pub async fn admit_revoked_by_jti_agrees_with_is_jti_revoked(s: Arc<dyn SecurityState>) {
    s.revoke_jti("jti-1", T0 + 300).await.unwrap();
    let revoked = Admission { jti: Some("jti-1"), ..admission(&[]) };
    let other = Admission { jti: Some("jti-2"), ..admission(&[]) };
    // Around the end of the revocation, by the passed-in clock: `now` is the floor of `now_ms`.
    for now_ms in [ms(0, 0), ms(299, 999), ms(300, 0), ms(301, 0)] {
        let expected = s.is_jti_revoked("jti-1", now_ms.div_euclid(1000)).await.unwrap();
        let admitted = s.admit(&revoked, now_ms).await.unwrap();
        assert_eq!(admitted == Admitted::Revoked, expected, "at {now_ms} ms");
        assert_eq!(s.admit(&other, now_ms).await.unwrap(), Admitted::Allowed);
    }
    assert_eq!(s.admit(&revoked, ms(299, 999)).await.unwrap(), Admitted::Revoked);
    assert_eq!(s.admit(&revoked, ms(300, 0)).await.unwrap(), Admitted::Allowed, "live while now < until");
    // A later, longer revocation of the same jti is seen by both.
    s.revoke_jti("jti-1", T0 + 900).await.unwrap();
    assert!(s.is_jti_revoked("jti-1", T0 + 600).await.unwrap());
    assert_eq!(s.admit(&revoked, ms(600, 0)).await.unwrap(), Admitted::Revoked);
}

pub async fn admit_revoked_by_session_reads_the_sid_key(s: Arc<dyn SecurityState>) {
    // The gateway revokes a session by its `sid:` key in the jti store (logout, refresh reuse).
    assert_eq!(session_revocation_key("fam-1"), "sid:fam-1");
    s.revoke_jti(&session_revocation_key("fam-1"), T0 + 300).await.unwrap();
    let revoked = Admission { session: Some("fam-1"), ..admission(&[]) };
    for now_ms in [ms(0, 0), ms(299, 999), ms(300, 0)] {
        let expected = s.is_jti_revoked("sid:fam-1", now_ms.div_euclid(1000)).await.unwrap();
        assert_eq!(s.admit(&revoked, now_ms).await.unwrap() == Admitted::Revoked, expected, "at {now_ms} ms");
    }
    assert_eq!(s.admit(&revoked, ms(1, 0)).await.unwrap(), Admitted::Revoked);
    assert_eq!(s.admit(&revoked, ms(300, 0)).await.unwrap(), Admitted::Allowed);
    // The session id is not a jti, nor the other way round: the prefix keeps them apart.
    let as_jti = Admission { jti: Some("fam-1"), ..admission(&[]) };
    assert_eq!(s.admit(&as_jti, ms(1, 0)).await.unwrap(), Admitted::Allowed);
    s.revoke_jti("fam-2", T0 + 300).await.unwrap();
    let as_session = Admission { session: Some("fam-2"), ..admission(&[]) };
    assert_eq!(s.admit(&as_session, ms(1, 0)).await.unwrap(), Admitted::Allowed);
    // Either match is enough when the token carries both.
    let both = Admission { jti: Some("jti-x"), session: Some("fam-1"), ..admission(&[]) };
    assert_eq!(s.admit(&both, ms(1, 0)).await.unwrap(), Admitted::Revoked);
}

pub async fn admit_revoked_by_cutoff_agrees_with_tokens_revoked_before(s: Arc<dyn SecurityState>) {
    s.revoke_tokens_before("t1", "alice", T0 + 100, T0 + 400).await.unwrap();
    let issued = |issued_at: i64| Admission { issued_at, ..admission(&[]) };
    assert_eq!(s.tokens_revoked_before("t1", "alice", T0 + 200).await.unwrap(), Some(T0 + 100));
    assert_eq!(s.admit(&issued(T0 + 99), ms(200, 0)).await.unwrap(), Admitted::Revoked, "issued before ts");
    assert_eq!(s.admit(&issued(T0 + 100), ms(200, 0)).await.unwrap(), Admitted::Allowed, "issued at ts");
    assert_eq!(s.admit(&issued(T0 + 101), ms(200, 0)).await.unwrap(), Admitted::Allowed, "issued after ts");
    // Remembered while now < keep_until, by the passed-in clock.
    assert_eq!(s.tokens_revoked_before("t1", "alice", T0 + 399).await.unwrap(), Some(T0 + 100));
    assert_eq!(s.admit(&issued(T0), ms(399, 999)).await.unwrap(), Admitted::Revoked);
    assert_eq!(s.tokens_revoked_before("t1", "alice", T0 + 400).await.unwrap(), None);
    assert_eq!(s.admit(&issued(T0), ms(400, 0)).await.unwrap(), Admitted::Allowed);
    // Only that user of that tenant, with the same escaping of ':' as tokens_revoked_before.
    let bob = Admission { subject: "bob", ..issued(T0) };
    let elsewhere = Admission { tenant: "t2", ..issued(T0) };
    assert_eq!(s.admit(&bob, ms(200, 0)).await.unwrap(), Admitted::Allowed);
    assert_eq!(s.admit(&elsewhere, ms(200, 0)).await.unwrap(), Admitted::Allowed);
    s.revoke_tokens_before("a:b", "c", T0 + 100, T0 + 400).await.unwrap();
    let colliding = Admission { tenant: "a", subject: "b:c", ..issued(T0) };
    let exact = Admission { tenant: "a:b", subject: "c", ..issued(T0) };
    assert_eq!(s.admit(&colliding, ms(200, 0)).await.unwrap(), Admitted::Allowed);
    assert_eq!(s.admit(&exact, ms(200, 0)).await.unwrap(), Admitted::Revoked);
}

pub async fn admit_takes_no_token_when_revoked(s: Arc<dyn SecurityState>) {
    let buckets = [Limit { key: "u", per_sec: 1.0, burst: 2 }, Limit { key: "t", per_sec: 1.0, burst: 2 }];
    s.revoke_jti("jti-1", T0 + 300).await.unwrap();
    s.revoke_jti("sid:fam-1", T0 + 300).await.unwrap();
    s.revoke_tokens_before("t1", "alice", T0 + 100, T0 + 400).await.unwrap();
    let by_jti = Admission { jti: Some("jti-1"), issued_at: T0 + 200, ..admission(&buckets) };
    let by_session = Admission { session: Some("fam-1"), issued_at: T0 + 200, ..admission(&buckets) };
    let by_cutoff = Admission { issued_at: T0 + 99, ..admission(&buckets) };
    for _ in 0..5 {
        for a in [&by_jti, &by_session, &by_cutoff] {
            assert_eq!(s.admit(a, ms(10, 0)).await.unwrap(), Admitted::Revoked);
        }
    }
    // Both buckets are still full.
    for key in ["u", "t"] {
        assert_eq!(s.take_token(key, 1.0, 2, ms(10, 0)).await.unwrap(), Bucket::Allowed { remaining: 1 }, "{key}");
    }
}

pub async fn admit_buckets_agree_with_take_token(s: Arc<dyn SecurityState>) {
    // Two identical buckets on one schedule, one drained by take_token, the other by admit; the
    // schedule has refills, fractions, a clock reading from the past and a refill past burst.
    let (per_sec, burst) = (2.0, 3);
    let limit = [Limit { key: "by-admit", per_sec, burst }];
    let a = admission(&limit);
    let schedule = [0, 0, 0, 0, 250, 500, 501, 400, 777, 1_234, 1_235, 1_236, 3_600_000, 3_600_001];
    let mut seen = Vec::new();
    for offset in schedule {
        let now_ms = ms(0, offset);
        let expected = as_admitted(s.take_token("by-take", per_sec, burst, now_ms).await.unwrap());
        assert_eq!(s.admit(&a, now_ms).await.unwrap(), expected, "at +{offset} ms");
        seen.push(expected);
    }
    // The schedule reaches the interesting answers (the same as in the take_token case).
    let throttled = |retry_after_ms| Admitted::Throttled { retry_after_ms };
    assert_eq!(
        seen[..8],
        [
            Admitted::Allowed,
            Admitted::Allowed,
            Admitted::Allowed,
            throttled(500),
            throttled(250),
            Admitted::Allowed,
            throttled(499),
            throttled(499),
        ]
    );

    // A fractional, slow rate: one token per 10 s.
    let slow = [Limit { key: "slow-admit", per_sec: 0.1, burst: 1 }];
    let a = admission(&slow);
    for (offset, answer) in [(0, Admitted::Allowed), (2_500, throttled(7_500)), (10_000, Admitted::Allowed)] {
        let expected = as_admitted(s.take_token("slow-take", 0.1, 1, ms(0, offset)).await.unwrap());
        assert_eq!(expected, answer);
        assert_eq!(s.admit(&a, ms(0, offset)).await.unwrap(), answer, "at +{offset} ms");
    }
}

pub async fn admit_and_take_token_draw_from_the_same_bucket(s: Arc<dyn SecurityState>) {
    let limit = [Limit { key: "user", per_sec: 2.0, burst: 3 }];
    let a = admission(&limit);
    let t = ms(0, 0);
    assert_eq!(s.take_token("user", 2.0, 3, t).await.unwrap(), Bucket::Allowed { remaining: 2 });
    assert_eq!(s.admit(&a, t).await.unwrap(), Admitted::Allowed);
    assert_eq!(s.take_token("user", 2.0, 3, t).await.unwrap(), Bucket::Allowed { remaining: 0 });
    assert_eq!(s.admit(&a, t).await.unwrap(), Admitted::Throttled { retry_after_ms: 500 });
    assert_eq!(s.take_token("user", 2.0, 3, t + 250).await.unwrap(), Bucket::Throttled { retry_after_ms: 250 });
    assert_eq!(s.admit(&a, t + 500).await.unwrap(), Admitted::Allowed);
    assert_eq!(s.take_token("user", 2.0, 3, t + 500).await.unwrap(), Bucket::Throttled { retry_after_ms: 500 });
}

pub async fn admit_stops_at_the_first_empty_bucket(s: Arc<dyn SecurityState>) {
    let user = Limit { key: "u", per_sec: 1.0, burst: 3 };
    let tenant = Limit { key: "t", per_sec: 0.5, burst: 1 };
    let t = ms(0, 0);
    // User bucket first: it gives its token even when the tenant bucket then throttles.
    let user_first = [user, tenant];
    let a = admission(&user_first);
    assert_eq!(s.admit(&a, t).await.unwrap(), Admitted::Allowed);
    assert_eq!(s.admit(&a, t).await.unwrap(), Admitted::Throttled { retry_after_ms: 2_000 }, "the tenant's");
    assert_eq!(s.take_token("u", 1.0, 3, t).await.unwrap(), Bucket::Allowed { remaining: 0 }, "two taken by admit");
    // Tenant bucket first: the empty one stops the walk, the user bucket after it is untouched.
    let tenant_first = [tenant, user];
    let b = admission(&tenant_first);
    assert_eq!(s.admit(&b, ms(1, 0)).await.unwrap(), Admitted::Throttled { retry_after_ms: 1_000 });
    assert_eq!(s.take_token("u", 1.0, 3, ms(1, 0)).await.unwrap(), Bucket::Allowed { remaining: 0 });
    // No buckets: only the revocations are checked.
    assert_eq!(s.admit(&admission(&[]), t).await.unwrap(), Admitted::Allowed);
}

pub async fn admit_is_atomic_under_concurrency(s: Arc<dyn SecurityState>) {
    let t = ms(0, 0);
    let tasks: Vec<_> = (0..10)
        .map(|_| {
            let s = Arc::clone(&s);
            tokio::spawn(async move {
                let limit = [Limit { key: "burst", per_sec: 1.0, burst: 4 }];
                s.admit(&admission(&limit), t).await.unwrap()
            })
        })
        .collect();
    let mut allowed = 0;
    for task in tasks {
        match task.await.unwrap() {
            Admitted::Allowed => allowed += 1,
            Admitted::Throttled { retry_after_ms } => assert_eq!(retry_after_ms, 1000),
            Admitted::Revoked => panic!("nothing is revoked"),
        }
    }
    assert_eq!(allowed, 4, "exactly burst requests get through");
}

pub async fn admit_rejects_unusable_parameters_before_taking(s: Arc<dyn SecurityState>) {
    for (per_sec, burst) in [(0.0, 5), (-1.0, 5), (f64::NAN, 5), (f64::INFINITY, 5), (0.0001, 5), (1.0, 0)] {
        let limits = [Limit { key: "good", per_sec: 1.0, burst: 1 }, Limit { key: "bad", per_sec, burst }];
        let err = s.admit(&admission(&limits), ms(0, 0)).await.unwrap_err();
        assert!(matches!(err, KvError::InvalidArgument(_)), "{per_sec}/{burst}: {err}");
    }
    // The valid bucket before the bad one was not taken from.
    assert_eq!(s.take_token("good", 1.0, 1, ms(0, 0)).await.unwrap(), Bucket::Allowed { remaining: 0 });
}

pub async fn attempts_are_counted_before_they_are_checked(s: Arc<dyn SecurityState>) {
    use ehr_kv::{Attempt, AttemptPolicy};
    let p = AttemptPolicy { window_secs: 86_400, threshold: 5, base_secs: 60, max_secs: 3600 };
    let now = T0;
    // 60 concurrent guesses: only the threshold's worth, plus the one that locks, are counted.
    let mut handles = Vec::new();
    for _ in 0..60 {
        let s = s.clone();
        handles.push(tokio::spawn(async move { s.begin_attempt("h1:user", &p, now).await.unwrap() }));
    }
    let mut counted = 0;
    for h in handles {
        if let Attempt::Counted { .. } = h.await.unwrap() {
            counted += 1;
        }
    }
    assert_eq!(counted, 6, "five within the threshold and the one that set the lock");
    assert_eq!(s.lock_until("h1:user", now).await.unwrap(), Some(now + 120));
    // After the lock, one attempt is let through and locks again, for twice as long.
    assert!(
        matches!(s.begin_attempt("h1:user", &p, now + 119).await.unwrap(), Attempt::Locked { until } if until == now + 120)
    );
    assert_eq!(s.begin_attempt("h1:user", &p, now + 120).await.unwrap(), Attempt::Counted { count: 7 });
    assert_eq!(s.lock_until("h1:user", now + 120).await.unwrap(), Some(now + 120 + 240));
    // The back-off is capped; a success clears everything.
    s.clear_lock("h1:user").await.unwrap();
    s.clear_failures("h1:user").await.unwrap();
    assert_eq!(s.begin_attempt("h1:user", &p, now + 500).await.unwrap(), Attempt::Counted { count: 1 });
    // Another account of the tenant is untouched.
    assert_eq!(s.begin_attempt("h1:other", &p, now).await.unwrap(), Attempt::Counted { count: 1 });
}
