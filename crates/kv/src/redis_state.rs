//! [`SecurityState`] on Redis, shared by every gateway replica.
//!
//! Every multi-step operation is one Lua script (sent as EVALSHA, loaded on a NOSCRIPT miss), so
//! it is atomic across replicas. Key layout, with `P` the deployment's prefix:
//!
//! | key | type | holds |
//! |---|---|---|
//! | `P:val:<key>` | hash `{v, exp}` | put / get / take / delete |
//! | `P:once:<key>` | string: expires_at | insert_unique |
//! | `P:fail:<key>` | sorted set, score = failure time | begin_attempt / clear_failures |
//! | `P:lock:<key>` | string: until | set_lock / lock_until / clear_lock |
//! | `P:fam:<family id>` | hash `{data: Family JSON, cur, exp, idx, u:<hash>: 1 …}` | refresh-token families |
//! | `P:subj:<tenant>:<subject>` | set of family ids | revoke_subject / families_of |
//! | `P:rtb:<tenant>:<subject>` | hash `{ts, keep}` | revoke_tokens_before |
//! | `P:jti:<jti>` | string: until | revoke_jti / is_jti_revoked / admit (also `P:jti:sid:<session>`, see [`session_revocation_key`](crate::session_revocation_key)) |
//! | `P:rl:<key>` | hash `{tokens, ts}` (ms) | take_token / admit |
//!
//! `<tenant>` and `<subject>` have `%` and `:` percent-encoded so the pair is unambiguous. Scripts
//! on families touch keys they read from other keys (`idx`, the index members), which standalone
//! and replicated Redis allow but Redis Cluster does not: this adapter targets the former.
//!
//! Every key carries a TTL for garbage collection only. Where the caller passes `now`, the TTL is
//! the remaining lifetime by the caller's clock (at least 1 s). Where it passes only an absolute
//! end (`set_lock`, `revoke_jti`, `revoke_tokens_before`) the script measures it against Redis'
//! clock and adds [`GC_GRACE_SECS`] for skew. Answers always compare stored times with `now`.

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use redis::Script;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use crate::{
    Admission, Admitted, Attempt, AttemptPolicy, Bucket, Family, KvError, Rotation, SecurityState, check_bucket,
    check_buckets, session_revocation_key,
};

/// Extra lifetime of keys whose end is an absolute time, covering clock skew between the gateway
/// and Redis.
const GC_GRACE_SECS: i64 = 3600;

/// Connection attempts give up after this long, so a dead Redis fails readiness promptly.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// A command without an answer after this long fails as unavailable instead of hanging a request.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(3);

/// Security state in Redis under a key prefix.
#[derive(Clone)]
pub struct RedisState {
    conn: ConnectionManager,
    prefix: Arc<str>,
}

impl std::fmt::Debug for RedisState {
    // The URL, which may carry a password, is not kept; the prefix is all there is to show.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisState").field("prefix", &self.prefix).finish_non_exhaustive()
    }
}

/// The Lua scripts, hashed once per process.
struct Scripts {
    take: Script,
    insert_unique: Script,
    set_lock: Script,
    revoke_jti: Script,
    revoke_tokens_before: Script,
    create_family: Script,
    rotate: Script,
    revoke_family: Script,
    revoke_subject: Script,
    families_of: Script,
    take_token: Script,
    begin_attempt: Script,
    admit: Script,
}

/// Scripts that need `gc_ttl` get the shared prelude prepended.
macro_rules! with_gc {
    ($file:literal) => {
        concat!(include_str!("lua/gc.lua"), include_str!($file))
    };
}

/// Scripts that take from token buckets get `take_bucket` prepended: one copy of the arithmetic
/// for `take_token` and `admit`.
macro_rules! with_bucket {
    ($file:literal) => {
        concat!(include_str!("lua/bucket.lua"), include_str!($file))
    };
}

/// The error code `admit.lua` raises on a stored time that is no number.
const CORRUPT_CODE: &str = "EHRCORRUPT";

static SCRIPTS: LazyLock<Scripts> = LazyLock::new(|| Scripts {
    take: Script::new(include_str!("lua/take.lua")),
    insert_unique: Script::new(include_str!("lua/insert_unique.lua")),
    set_lock: Script::new(with_gc!("lua/set_lock.lua")),
    revoke_jti: Script::new(with_gc!("lua/revoke_jti.lua")),
    revoke_tokens_before: Script::new(with_gc!("lua/revoke_tokens_before.lua")),
    create_family: Script::new(include_str!("lua/create_family.lua")),
    rotate: Script::new(include_str!("lua/rotate.lua")),
    revoke_family: Script::new(include_str!("lua/revoke_family.lua")),
    revoke_subject: Script::new(include_str!("lua/revoke_subject.lua")),
    families_of: Script::new(include_str!("lua/families_of.lua")),
    take_token: Script::new(with_bucket!("lua/take_token.lua")),
    begin_attempt: Script::new(with_gc!("lua/begin_attempt.lua")),
    admit: Script::new(with_bucket!("lua/admit.lua")),
});

impl RedisState {
    /// Connects to `url` (`redis://[user:password@]host:port[/db]`, `rediss://…`); every key
    /// starts with `prefix:`, so deployments and tests can share one Redis.
    pub async fn connect(url: &str, prefix: &str) -> Result<Self, KvError> {
        if prefix.is_empty() {
            return Err(KvError::InvalidArgument("the redis key prefix must not be empty"));
        }
        // The parse error is dropped unread: it must not be able to echo the URL's password.
        let client = redis::Client::open(url).map_err(|_| KvError::InvalidUrl)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(CONNECT_TIMEOUT)
            .set_response_timeout(RESPONSE_TIMEOUT)
            .set_number_of_retries(2)
            .set_max_delay(1000);
        let conn = ConnectionManager::new_with_config(client, config).await?;
        Ok(Self { conn, prefix: Arc::from(prefix) })
    }

    /// The key prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    fn key(&self, kind: &str, rest: &str) -> String {
        format!("{}:{kind}:{rest}", self.prefix)
    }

    fn subject_key(&self, kind: &str, tenant: &str, subject: &str) -> String {
        format!("{}:{kind}:{}:{}", self.prefix, escape(tenant), escape(subject))
    }

    fn family_key_prefix(&self) -> String {
        format!("{}:fam:", self.prefix)
    }

    /// A connection handle; the manager multiplexes and reconnects, and clones are cheap.
    fn conn(&self) -> ConnectionManager {
        self.conn.clone()
    }
}

/// Percent-encodes the separator (and the escape character itself) in a key component.
fn escape(component: &str) -> std::borrow::Cow<'_, str> {
    if component.contains([':', '%']) {
        component.replace('%', "%25").replace(':', "%3A").into()
    } else {
        component.into()
    }
}

/// GC lifetime of a key that expires at `expires_at` by the caller's clock: at least one second.
fn ttl_secs(expires_at: i64, now: i64) -> i64 {
    expires_at.saturating_sub(now).max(1)
}

fn decode_family(json: &str) -> Result<Family, KvError> {
    serde_json::from_str(json).map_err(|e| KvError::corrupt("refresh-token family", &e))
}

#[async_trait::async_trait]
impl SecurityState for RedisState {
    async fn put(&self, key: &str, value: &str, expires_at: i64, now: i64) -> Result<(), KvError> {
        let key = self.key("val", key);
        redis::pipe()
            .atomic()
            .cmd("DEL")
            .arg(&key)
            .ignore()
            .cmd("HSET")
            .arg(&key)
            .arg("v")
            .arg(value)
            .arg("exp")
            .arg(expires_at)
            .ignore()
            .cmd("EXPIRE")
            .arg(&key)
            .arg(ttl_secs(expires_at, now))
            .ignore()
            .query_async::<()>(&mut self.conn())
            .await?;
        Ok(())
    }

    async fn get(&self, key: &str, now: i64) -> Result<Option<String>, KvError> {
        let (value, exp): (Option<String>, Option<i64>) =
            redis::cmd("HMGET").arg(self.key("val", key)).arg("v").arg("exp").query_async(&mut self.conn()).await?;
        Ok(value.filter(|_| exp.is_some_and(|exp| now < exp)))
    }

    async fn take(&self, key: &str, now: i64) -> Result<Option<String>, KvError> {
        let value = SCRIPTS.take.key(self.key("val", key)).arg(now).invoke_async(&mut self.conn()).await?;
        Ok(value)
    }

    async fn delete(&self, key: &str) -> Result<(), KvError> {
        redis::cmd("DEL").arg(self.key("val", key)).query_async::<()>(&mut self.conn()).await?;
        Ok(())
    }

    async fn insert_unique(&self, key: &str, expires_at: i64, now: i64) -> Result<bool, KvError> {
        let inserted: i64 = SCRIPTS
            .insert_unique
            .key(self.key("once", key))
            .arg(expires_at)
            .arg(now)
            .arg(ttl_secs(expires_at, now))
            .invoke_async(&mut self.conn())
            .await?;
        Ok(inserted == 1)
    }

    async fn begin_attempt(&self, key: &str, policy: &AttemptPolicy, now: i64) -> Result<Attempt, KvError> {
        let (state, value): (i64, i64) = SCRIPTS
            .begin_attempt
            .key(self.key("lock", key))
            .key(self.key("fail", key))
            .arg(now)
            .arg(now.saturating_sub(policy.window_secs))
            .arg(policy.window_secs.max(1))
            .arg(policy.threshold)
            .arg(policy.base_secs)
            .arg(policy.max_secs)
            .arg(GC_GRACE_SECS)
            .invoke_async(&mut self.conn())
            .await?;
        Ok(if state == 1 {
            Attempt::Locked { until: value }
        } else {
            Attempt::Counted { count: u32::try_from(value).unwrap_or(u32::MAX) }
        })
    }

    async fn clear_failures(&self, key: &str) -> Result<(), KvError> {
        redis::cmd("DEL").arg(self.key("fail", key)).query_async::<()>(&mut self.conn()).await?;
        Ok(())
    }

    async fn set_lock(&self, key: &str, until: i64) -> Result<(), KvError> {
        SCRIPTS
            .set_lock
            .key(self.key("lock", key))
            .arg(until)
            .arg(GC_GRACE_SECS)
            .invoke_async::<()>(&mut self.conn())
            .await?;
        Ok(())
    }

    async fn lock_until(&self, key: &str, now: i64) -> Result<Option<i64>, KvError> {
        let until: Option<i64> = redis::cmd("GET").arg(self.key("lock", key)).query_async(&mut self.conn()).await?;
        Ok(until.filter(|until| now < *until))
    }

    async fn clear_lock(&self, key: &str) -> Result<(), KvError> {
        redis::cmd("DEL").arg(self.key("lock", key)).query_async::<()>(&mut self.conn()).await?;
        Ok(())
    }

    async fn create_family(&self, family: &Family, token_hash: &str, now: i64) -> Result<(), KvError> {
        let json = serde_json::to_string(family).map_err(|e| KvError::corrupt("refresh-token family", &e))?;
        SCRIPTS
            .create_family
            .key(self.key("fam", &family.id))
            .key(self.subject_key("subj", &family.tenant, &family.subject))
            .arg(json)
            .arg(token_hash)
            .arg(family.expires_at)
            .arg(ttl_secs(family.expires_at, now))
            .arg(&family.id)
            .invoke_async::<()>(&mut self.conn())
            .await?;
        Ok(())
    }

    async fn rotate(
        &self,
        family_id: &str,
        presented_hash: &str,
        new_hash: &str,
        now: i64,
    ) -> Result<Rotation, KvError> {
        let (outcome, json): (i64, Option<String>) = SCRIPTS
            .rotate
            .key(self.key("fam", family_id))
            .arg(presented_hash)
            .arg(new_hash)
            .arg(now)
            .arg(family_id)
            .invoke_async(&mut self.conn())
            .await?;
        match (outcome, json) {
            (1, Some(json)) => Ok(Rotation::Rotated(decode_family(&json)?)),
            (2, Some(json)) => Ok(Rotation::Reused(decode_family(&json)?)),
            _ => Ok(Rotation::Invalid),
        }
    }

    async fn revoke_family(&self, family_id: &str) -> Result<bool, KvError> {
        let removed: i64 =
            SCRIPTS.revoke_family.key(self.key("fam", family_id)).arg(family_id).invoke_async(&mut self.conn()).await?;
        Ok(removed == 1)
    }

    async fn revoke_subject(&self, tenant: &str, subject: &str) -> Result<u32, KvError> {
        let removed: u32 = SCRIPTS
            .revoke_subject
            .key(self.subject_key("subj", tenant, subject))
            .arg(self.family_key_prefix())
            .invoke_async(&mut self.conn())
            .await?;
        Ok(removed)
    }

    async fn families_of(&self, tenant: &str, subject: &str, now: i64) -> Result<Vec<Family>, KvError> {
        let found: Vec<String> = SCRIPTS
            .families_of
            .key(self.subject_key("subj", tenant, subject))
            .arg(self.family_key_prefix())
            .arg(now)
            .invoke_async(&mut self.conn())
            .await?;
        let mut families = found.iter().map(|json| decode_family(json)).collect::<Result<Vec<_>, _>>()?;
        families.sort_by(|a, b| a.created_at.cmp(&b.created_at).then_with(|| a.id.cmp(&b.id)));
        Ok(families)
    }

    async fn revoke_tokens_before(&self, tenant: &str, subject: &str, ts: i64, keep_until: i64) -> Result<(), KvError> {
        SCRIPTS
            .revoke_tokens_before
            .key(self.subject_key("rtb", tenant, subject))
            .arg(ts)
            .arg(keep_until)
            .arg(GC_GRACE_SECS)
            .invoke_async::<()>(&mut self.conn())
            .await?;
        Ok(())
    }

    async fn tokens_revoked_before(&self, tenant: &str, subject: &str, now: i64) -> Result<Option<i64>, KvError> {
        let (ts, keep): (Option<i64>, Option<i64>) = redis::cmd("HMGET")
            .arg(self.subject_key("rtb", tenant, subject))
            .arg("ts")
            .arg("keep")
            .query_async(&mut self.conn())
            .await?;
        Ok(ts.filter(|_| keep.is_some_and(|keep| now < keep)))
    }

    async fn revoke_jti(&self, jti: &str, until: i64) -> Result<(), KvError> {
        SCRIPTS
            .revoke_jti
            .key(self.key("jti", jti))
            .arg(until)
            .arg(GC_GRACE_SECS)
            .invoke_async::<()>(&mut self.conn())
            .await?;
        Ok(())
    }

    async fn is_jti_revoked(&self, jti: &str, now: i64) -> Result<bool, KvError> {
        let until: Option<i64> = redis::cmd("GET").arg(self.key("jti", jti)).query_async(&mut self.conn()).await?;
        Ok(until.is_some_and(|until| now < until))
    }

    async fn take_token(&self, key: &str, per_sec: f64, burst: u32, now_ms: i64) -> Result<Bucket, KvError> {
        check_bucket(per_sec, burst)?;
        let (allowed, n): (i64, i64) = SCRIPTS
            .take_token
            .key(self.key("rl", key))
            .arg(per_sec)
            .arg(burst)
            .arg(now_ms)
            .invoke_async(&mut self.conn())
            .await?;
        Ok(if allowed == 1 {
            Bucket::Allowed { remaining: u32::try_from(n).unwrap_or(0) }
        } else {
            Bucket::Throttled { retry_after_ms: n }
        })
    }

    async fn admit(&self, a: &Admission<'_>, now_ms: i64) -> Result<Admitted, KvError> {
        check_buckets(a.buckets)?;
        // The same keys the separate methods read and write; see admit.lua for the layout of
        // KEYS and ARGV. Absent jti and session contribute no key, so `r` counts those present.
        let revocations: Vec<String> = a
            .jti
            .map(|jti| self.key("jti", jti))
            .into_iter()
            .chain(a.session.map(|sid| self.key("jti", &session_revocation_key(sid))))
            .collect();
        let mut invocation = SCRIPTS.admit.prepare_invoke();
        for key in &revocations {
            invocation.key(key);
        }
        invocation.key(self.subject_key("rtb", a.tenant, a.subject));
        invocation.arg(revocations.len()).arg(now_ms.div_euclid(1000)).arg(a.issued_at).arg(now_ms);
        for b in a.buckets {
            // Same argument encoding as take_token, so the script sees the same numbers.
            invocation.key(self.key("rl", b.key)).arg(b.per_sec).arg(b.burst);
        }
        let (outcome, n): (i64, i64) = invocation.invoke_async(&mut self.conn()).await.map_err(|e| {
            if e.code() == Some(CORRUPT_CODE) { KvError::corrupt("revocation time", &e) } else { KvError::from(e) }
        })?;
        match outcome {
            0 => Ok(Admitted::Allowed),
            1 => Ok(Admitted::Revoked),
            2 => Ok(Admitted::Throttled { retry_after_ms: n }),
            other => Err(KvError::corrupt("admission outcome", &other)),
        }
    }

    async fn ping(&self) -> Result<(), KvError> {
        redis::cmd("PING").query_async::<()>(&mut self.conn()).await?;
        Ok(())
    }
}
