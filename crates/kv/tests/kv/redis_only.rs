//! What only the Redis adapter has: connection errors, the key prefix, garbage-collection TTLs.

use ehr_core::{Classify, IssueType};
use ehr_kv::{Admission, Admitted, Family, KvError, Limit, RedisState, SecurityState};

use crate::TestRedis;

#[tokio::test]
async fn a_bad_url_is_rejected_without_echoing_it() {
    let err = RedisState::connect("http://user:s3cret@127.0.0.1:6379", "p").await.unwrap_err();
    assert!(matches!(err, KvError::InvalidUrl), "{err}");
    assert!(!format!("{err} {err:?}").contains("s3cret"));
    assert_eq!(err.code(), "EHR-KV-004");
}

#[tokio::test]
async fn an_unreachable_redis_is_transient_and_keeps_the_password_out() {
    // Port 1 on loopback: nothing listens, the connection is refused at once.
    let err = RedisState::connect("redis://user:s3cret@127.0.0.1:1/0", "p").await.unwrap_err();
    assert!(matches!(err, KvError::Unavailable(_)), "{err}");
    assert!(!format!("{err} {err:?}").contains("s3cret"));
    assert_eq!(err.issue_type(), IssueType::Transient);
    assert_eq!(err.http_status(), 503);
    assert_eq!(err.code(), "EHR-KV-001");
}

#[tokio::test]
async fn an_empty_prefix_is_rejected() {
    let err = RedisState::connect(&crate::redis_url(), "").await.unwrap_err();
    assert!(matches!(err, KvError::InvalidArgument(_)), "{err}");
}

#[tokio::test]
async fn every_key_is_under_the_prefix_and_expires() {
    let Some(redis) = TestRedis::start().await else { return };
    let s = &redis.state;
    let t0 = 1_000_000_000;
    let family = Family {
        id: "fam-1".into(),
        tenant: "t1".into(),
        subject: "alice".into(),
        client_id: "portal".into(),
        scope: "openid".into(),
        roles: vec![],
        created_at: t0,
        expires_at: t0 + 600,
    };
    s.put("code", "v", t0 + 60, t0).await.unwrap();
    s.insert_unique("jti", t0 + 60, t0).await.unwrap();
    let counting = ehr_kv::AttemptPolicy { window_secs: 300, threshold: 0, base_secs: 60, max_secs: 60 };
    s.begin_attempt("login", &counting, t0).await.unwrap();
    s.set_lock("login", t0 + 900).await.unwrap();
    s.create_family(&family, "h0", t0).await.unwrap();
    s.rotate("fam-1", "h0", "h1", t0 + 1).await.unwrap();
    s.revoke_tokens_before("t1", "alice", t0, t0 + 900).await.unwrap();
    s.revoke_jti("jti", t0 + 900).await.unwrap();
    s.take_token("ip", 1.0, 5, t0 * 1000).await.unwrap();

    let keys = redis.keys_with_ttl().await;
    let prefix = s.prefix();
    let mut names: Vec<String> = keys.iter().map(|(k, _)| k.strip_prefix(prefix).unwrap().to_owned()).collect();
    names.sort();
    assert_eq!(
        names,
        [
            ":fail:login",
            ":fam:fam-1",
            ":jti:jti",
            ":lock:login",
            ":once:jti",
            ":rl:ip",
            ":rtb:t1:alice",
            ":subj:t1:alice",
            ":val:code"
        ]
    );
    for (key, ttl) in &keys {
        assert!(*ttl > 0, "{key} has no TTL ({ttl})");
    }
    // TTLs follow the passed-in lifetimes where there is a `now`…
    let ttl_of = |suffix: &str| keys.iter().find(|(k, _)| k.ends_with(suffix)).unwrap().1;
    assert!(ttl_of(":val:code") <= 60);
    assert!(ttl_of(":fam:fam-1") <= 600 && ttl_of(":subj:t1:alice") <= 600);
    // …and an absolute end long past by Redis' clock keeps the key for the skew grace, not zero.
    assert!(ttl_of(":lock:login") > 600);
    redis.cleanup().await;
}

#[tokio::test]
async fn two_prefixes_do_not_see_each_other() {
    let (Some(a), Some(b)) = (TestRedis::start().await, TestRedis::start().await) else { return };
    a.state.put("code", "from-a", 2_000_000_000, 1_000_000_000).await.unwrap();
    assert_eq!(b.state.get("code", 1_000_000_000).await.unwrap(), None);
    assert_eq!(a.state.get("code", 1_000_000_000).await.unwrap().as_deref(), Some("from-a"));
    a.cleanup().await;
    b.cleanup().await;
}

#[tokio::test]
async fn an_undecodable_family_is_corrupt() {
    let Some(redis) = TestRedis::start().await else { return };
    let client = redis::Client::open(redis.url.as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let prefix = redis.state.prefix();
    redis::cmd("HSET")
        .arg(format!("{prefix}:fam:bad"))
        .arg("data")
        .arg("{not json")
        .arg("cur")
        .arg("h0")
        .arg("exp")
        .arg(2_000_000_000i64)
        .query_async::<()>(&mut conn)
        .await
        .unwrap();
    redis::cmd("EXPIRE").arg(format!("{prefix}:fam:bad")).arg(60).query_async::<()>(&mut conn).await.unwrap();
    let err = redis.state.rotate("bad", "h0", "h1", 1_000_000_000).await.unwrap_err();
    assert!(matches!(err, KvError::Corrupt(_)), "{err}");
    assert_eq!(err.code(), "EHR-KV-002");
    redis.cleanup().await;
}

/// A plain connection to the test's Redis, for writing keys by hand.
async fn raw(redis: &TestRedis) -> redis::aio::MultiplexedConnection {
    redis::Client::open(redis.url.as_str()).unwrap().get_multiplexed_async_connection().await.unwrap()
}

#[tokio::test]
async fn admit_reads_and_writes_the_keys_of_the_separate_methods() {
    let Some(redis) = TestRedis::start().await else { return };
    let (s, prefix, t0) = (&redis.state, redis.state.prefix().to_owned(), 1_000_000_000i64);
    let mut conn = raw(&redis).await;
    // Revocations written by hand in the documented layout, as an older gateway would have.
    for key in ["jti:jti-1", "jti:sid:fam-1"] {
        redis::cmd("SET")
            .arg(format!("{prefix}:{key}"))
            .arg(t0 + 300)
            .arg("EX")
            .arg(60)
            .query_async::<()>(&mut conn)
            .await
            .unwrap();
    }
    redis::cmd("HSET")
        .arg(format!("{prefix}:rtb:a%3Ab:c"))
        .arg("ts")
        .arg(t0 + 100)
        .arg("keep")
        .arg(t0 + 400)
        .query_async::<()>(&mut conn)
        .await
        .unwrap();
    let base = Admission { jti: None, session: None, tenant: "t1", subject: "alice", issued_at: t0, buckets: &[] };
    let now_ms = (t0 + 10) * 1000;
    assert_eq!(s.admit(&Admission { jti: Some("jti-1"), ..base }, now_ms).await.unwrap(), Admitted::Revoked);
    assert_eq!(s.admit(&Admission { session: Some("fam-1"), ..base }, now_ms).await.unwrap(), Admitted::Revoked);
    let cut = Admission { tenant: "a:b", subject: "c", ..base };
    assert_eq!(s.admit(&cut, now_ms).await.unwrap(), Admitted::Revoked);

    // Reads create nothing; a bucket is the take_token key, with a TTL.
    let limit = [Limit { key: "ip", per_sec: 1.0, burst: 5 }];
    assert_eq!(
        s.admit(&Admission { jti: Some("jti-2"), buckets: &limit, ..base }, now_ms).await.unwrap(),
        Admitted::Allowed
    );
    let keys = redis.keys_with_ttl().await;
    let mut names: Vec<&str> = keys.iter().map(|(k, _)| k.strip_prefix(prefix.as_str()).unwrap()).collect();
    names.sort_unstable();
    assert_eq!(names, [":jti:jti-1", ":jti:sid:fam-1", ":rl:ip", ":rtb:a%3Ab:c"]);
    let ttl = keys.iter().find(|(k, _)| k.ends_with(":rl:ip")).unwrap().1;
    assert!(ttl > 0, "the bucket expires ({ttl})");
    redis.cleanup().await;
}

#[tokio::test]
async fn admit_fails_on_an_undecodable_revocation_like_the_separate_reads() {
    let Some(redis) = TestRedis::start().await else { return };
    let (s, prefix, t0) = (&redis.state, redis.state.prefix().to_owned(), 1_000_000_000i64);
    let mut conn = raw(&redis).await;
    redis::cmd("SET")
        .arg(format!("{prefix}:jti:bad"))
        .arg("not a time")
        .arg("EX")
        .arg(60)
        .query_async::<()>(&mut conn)
        .await
        .unwrap();
    redis::cmd("HSET")
        .arg(format!("{prefix}:rtb:t1:bad"))
        .arg("ts")
        .arg("x")
        .arg("keep")
        .arg("y")
        .query_async::<()>(&mut conn)
        .await
        .unwrap();
    let err = s.is_jti_revoked("bad", t0).await.unwrap_err();
    assert!(matches!(err, KvError::Corrupt(_)), "{err}");
    let err = s.tokens_revoked_before("t1", "bad", t0).await.unwrap_err();
    assert!(matches!(err, KvError::Corrupt(_)), "{err}");

    // Fails closed, never admits past a record it cannot read.
    let base = Admission { jti: None, session: None, tenant: "t1", subject: "alice", issued_at: t0, buckets: &[] };
    let err = s.admit(&Admission { jti: Some("bad"), ..base }, t0 * 1000).await.unwrap_err();
    assert!(matches!(err, KvError::Corrupt(_)), "{err}");
    assert_eq!(err.code(), "EHR-KV-002");
    let err = s.admit(&Admission { subject: "bad", ..base }, t0 * 1000).await.unwrap_err();
    assert!(matches!(err, KvError::Corrupt(_)), "{err}");
    redis.cleanup().await;
}
