//! The gateway's ephemeral security state: login sessions, OAuth authorization requests and codes,
//! refresh-token families, revocations, lockout counters, replay guards and rate-limit buckets.
//!
//! [`SecurityState`] is the port; [`RedisState`] is the production adapter (shared by every gateway
//! replica) and [`MemoryState`] the in-process one for the embedded single-process mode. Both pass
//! the same behavioural test suite.
//!
//! Two rules hold for every method:
//!
//! - **Time is a parameter.** Callers pass `now` (unix seconds, or milliseconds for rate limits);
//!   nothing here reads the clock, so tests control time.
//! - **Expiry is decided by comparing stored timestamps with the passed-in `now`.** A value is live
//!   while `now < expires_at`. Redis TTLs exist only to collect garbage and never decide an answer:
//!   an expired key that Redis has not collected yet answers exactly like an absent one.

mod error;
mod memory;
mod redis_state;

pub use error::KvError;
pub use memory::MemoryState;
pub use redis_state::RedisState;

use serde::{Deserialize, Serialize};

/// A refresh-token family: every refresh token descending from one authorization grant.
///
/// OAuth 2.0 Security BCP (RFC 9700) §4.14.2: rotating refresh tokens lets the server notice when
/// an old token of the family is presented again, and revoke the whole family in response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Family {
    /// Random, unguessable family id; carried inside the refresh token.
    pub id: String,
    /// Tenant of the user.
    pub tenant: String,
    /// The user (`sub`).
    pub subject: String,
    /// The OAuth client the grant was issued to (RFC 6749 §6: refresh tokens are bound to it).
    pub client_id: String,
    /// Granted scope, space-separated.
    pub scope: String,
    /// Roles at the time of the grant.
    pub roles: Vec<String>,
    /// Unix seconds.
    pub created_at: i64,
    /// Unix seconds; the family's absolute lifetime, not extended by rotation.
    pub expires_at: i64,
}

/// Outcome of presenting a refresh token to [`SecurityState::rotate`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rotation {
    /// The presented token was the family's current one; the new hash is current now.
    Rotated(Family),
    /// The presented token was already rotated away: the family is now revoked (RFC 9700 §4.14.2).
    Reused(Family),
    /// Unknown family, expired, already revoked, or a hash never issued in this family.
    Invalid,
}

/// Outcome of [`SecurityState::take_token`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bucket {
    /// The request may proceed; `remaining` whole tokens are left.
    Allowed { remaining: u32 },
    /// The bucket is empty; one token will be there after `retry_after_ms`.
    Throttled { retry_after_ms: i64 },
}

/// The key under which [`SecurityState::revoke_jti`] stores the revocation of a whole session
/// (refresh-token family): `sid:<session>`.
///
/// Sessions share the `jti` revocation store so that voiding every access token of a session is
/// one write (logout, refresh-token reuse) and one read per request. The gateway writes these keys
/// and [`SecurityState::admit`] reads them; both must spell them this way.
pub fn session_revocation_key(session: &str) -> String {
    format!("sid:{session}")
}

/// The lockout parameters of [`SecurityState::begin_attempt`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttemptPolicy {
    /// Failures counted inside this many seconds.
    pub window_secs: i64,
    /// Attempts before the lock; 0 disables locking.
    pub threshold: u32,
    /// Lock of the first attempt beyond the threshold, doubled per further attempt.
    pub base_secs: i64,
    pub max_secs: i64,
}

/// The answer of [`SecurityState::begin_attempt`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attempt {
    /// Counted (this attempt included); go on and check it.
    Counted { count: u32 },
    /// Locked until this time; the attempt was not counted and must not be checked.
    Locked { until: i64 },
}

/// What the gateway checks on every request, in one round trip: see [`SecurityState::admit`].
#[derive(Debug, Clone, Copy)]
pub struct Admission<'a> {
    /// The token's `jti`, checked like [`is_jti_revoked(jti)`](SecurityState::is_jti_revoked).
    pub jti: Option<&'a str>,
    /// The token's session (`sid`), checked like `is_jti_revoked(&session_revocation_key(sid))`
    /// (see [`session_revocation_key`]).
    pub session: Option<&'a str>,
    /// The token's tenant, for [`tokens_revoked_before`](SecurityState::tokens_revoked_before).
    pub tenant: &'a str,
    /// The token's subject (`sub`), likewise.
    pub subject: &'a str,
    /// The token's `iat` (unix seconds): revoked if `tokens_revoked_before` is `Some(ts)` with
    /// `issued_at < ts`.
    pub issued_at: i64,
    /// Token buckets to take from, in order, once the token is known not to be revoked.
    pub buckets: &'a [Limit<'a>],
}

/// One token bucket of an [`Admission`], with the parameters of [`SecurityState::take_token`].
#[derive(Debug, Clone, Copy)]
pub struct Limit<'a> {
    /// The bucket's key, as passed to `take_token`.
    pub key: &'a str,
    /// Refill rate, tokens per second.
    pub per_sec: f64,
    /// Capacity.
    pub burst: u32,
}

/// Outcome of [`SecurityState::admit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admitted {
    /// Not revoked, and every bucket gave a token.
    Allowed,
    /// Revoked by `jti`, by session or by the user's cut-off; no bucket was touched.
    Revoked,
    /// A bucket was empty; `retry_after_ms` is what `take_token` on it would have answered.
    Throttled { retry_after_ms: i64 },
}

/// Ephemeral security state, shared by every gateway replica. Usable as `Arc<dyn SecurityState>`.
#[async_trait::async_trait]
pub trait SecurityState: Send + Sync {
    /// Stores a short-lived value (authorization request, pending login, authorization code).
    async fn put(&self, key: &str, value: &str, expires_at: i64, now: i64) -> Result<(), KvError>;

    /// The value under `key`; `None` when absent or expired.
    async fn get(&self, key: &str, now: i64) -> Result<Option<String>, KvError>;

    /// Atomically reads and deletes a value: of any number of concurrent takes, one gets it.
    ///
    /// RFC 6749 §4.1.2: an authorization code must not be used more than once.
    async fn take(&self, key: &str, now: i64) -> Result<Option<String>, KvError>;

    /// Deletes a value stored with [`put`](Self::put).
    async fn delete(&self, key: &str) -> Result<(), KvError>;

    /// Replay guard (client-assertion `jti`, etc.): true if newly inserted, false if already
    /// present and unexpired.
    async fn insert_unique(&self, key: &str, expires_at: i64, now: i64) -> Result<bool, KvError>;

    /// Forgets the failures of `key` (after a successful login).
    /// Counts one login attempt under `key` BEFORE it is checked (atomically with the lock
    /// check): while `key` is locked nothing is counted and the answer is `Locked`; an attempt
    /// beyond `policy.threshold` locks `key` at once for its back-off, so that concurrent guesses
    /// find the lock instead of racing past the threshold. A successful attempt clears both
    /// (`clear_failures`, `clear_lock`); a failed one at the threshold is locked by the caller.
    async fn begin_attempt(&self, key: &str, policy: &AttemptPolicy, now: i64) -> Result<Attempt, KvError>;
    async fn clear_failures(&self, key: &str) -> Result<(), KvError>;

    /// Locks `key` until `until` (unix seconds). A later lock that ends sooner shortens it.
    async fn set_lock(&self, key: &str, until: i64) -> Result<(), KvError>;

    /// `Some(until)` while `key` is locked.
    async fn lock_until(&self, key: &str, now: i64) -> Result<Option<i64>, KvError>;

    /// Lifts the lock on `key`.
    async fn clear_lock(&self, key: &str) -> Result<(), KvError>;

    /// Starts a refresh-token family whose current token hashes to `token_hash`.
    async fn create_family(&self, family: &Family, token_hash: &str, now: i64) -> Result<(), KvError>;

    /// Rotates a refresh token, detecting reuse; see [`Rotation`].
    async fn rotate(
        &self,
        family_id: &str,
        presented_hash: &str,
        new_hash: &str,
        now: i64,
    ) -> Result<Rotation, KvError>;

    /// Revokes a family; true if it was still stored (an expired one awaiting collection counts).
    async fn revoke_family(&self, family_id: &str) -> Result<bool, KvError>;

    /// Revokes every family of a user; returns how many were still stored.
    async fn revoke_subject(&self, tenant: &str, subject: &str) -> Result<u32, KvError>;

    /// The live families of a user (the "active sessions" listing), oldest first.
    async fn families_of(&self, tenant: &str, subject: &str, now: i64) -> Result<Vec<Family>, KvError>;

    /// Voids the user's access tokens issued before `ts`, remembered until `keep_until` (the
    /// longest access-token lifetime after `ts`). An earlier `ts` never un-revokes tokens.
    async fn revoke_tokens_before(&self, tenant: &str, subject: &str, ts: i64, keep_until: i64) -> Result<(), KvError>;

    /// `Some(ts)`: the user's access tokens issued before `ts` are void.
    async fn tokens_revoked_before(&self, tenant: &str, subject: &str, now: i64) -> Result<Option<i64>, KvError>;

    /// Voids one access token by its `jti` until `until` (its own expiry).
    async fn revoke_jti(&self, jti: &str, until: i64) -> Result<(), KvError>;

    /// True if the `jti` was revoked and the revocation is still in force.
    async fn is_jti_revoked(&self, jti: &str, now: i64) -> Result<bool, KvError>;

    /// Takes one token from the bucket `key` (capacity `burst`, refilled at `per_sec` tokens per
    /// second); a bucket never seen is full.
    async fn take_token(&self, key: &str, per_sec: f64, burst: u32, now_ms: i64) -> Result<Bucket, KvError>;

    /// The gateway's per-request checks in one round trip and one atomic step: exactly what
    /// these calls in sequence answer, with `now = now_ms.div_euclid(1000)`:
    ///
    /// 1. [`Revoked`](Admitted::Revoked) if `is_jti_revoked(jti, now)`, or
    ///    `is_jti_revoked(&session_revocation_key(session), now)`, or
    ///    `tokens_revoked_before(tenant, subject, now)` is `Some(ts)` with `issued_at < ts`.
    ///    A revoked request takes no token: it never reaches the rate limits.
    /// 2. Otherwise `take_token(key, per_sec, burst, now_ms)` for each bucket in order. The first
    ///    empty one answers [`Throttled`](Admitted::Throttled) with its `retry_after_ms`, and the
    ///    buckets after it are not touched; the buckets before it keep the token they gave, as
    ///    the separate calls did, so a throttled attempt still counts against them.
    ///
    /// Every bucket's parameters are checked first: an unusable one fails with
    /// [`KvError::InvalidArgument`] before anything is read or taken.
    async fn admit(&self, admission: &Admission<'_>, now_ms: i64) -> Result<Admitted, KvError>;

    /// Checks that the store answers (readiness probe).
    async fn ping(&self) -> Result<(), KvError>;
}

/// The slowest refill accepted: one token per 1000 s. Bounds every computed duration far below
/// the range where Lua's doubles and Redis' 64-bit integers part ways.
const MIN_PER_SEC: f64 = 0.001;

/// Rejects rate-limit parameters the bucket arithmetic cannot work with.
fn check_bucket(per_sec: f64, burst: u32) -> Result<(), KvError> {
    if !(per_sec.is_finite() && per_sec >= MIN_PER_SEC) {
        return Err(KvError::InvalidArgument("rate limit per_sec must be a number of at least 0.001"));
    }
    if burst == 0 {
        return Err(KvError::InvalidArgument("rate limit burst must be at least 1"));
    }
    Ok(())
}

/// [`check_bucket`] for every bucket of an admission.
fn check_buckets(buckets: &[Limit<'_>]) -> Result<(), KvError> {
    buckets.iter().try_for_each(|b| check_bucket(b.per_sec, b.burst))
}

/// Milliseconds until the bucket is full again, after which an absent bucket is equivalent.
fn bucket_full_after_ms(tokens: f64, per_sec: f64, burst: u32) -> i64 {
    ((f64::from(burst) - tokens) * 1000.0 / per_sec).ceil() as i64
}
