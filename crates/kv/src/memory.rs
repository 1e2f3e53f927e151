//! In-process [`SecurityState`] for the embedded single-process mode (`ehr serve`).
//!
//! One mutex guards everything, which makes every method trivially atomic — the property the Redis
//! adapter gets from Lua scripts. Expired entries are swept every [`SWEEP_EVERY`] calls that carry
//! a clock reading, so memory stays bounded by the live state.

use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, MutexGuard, PoisonError};

use crate::{
    Admission, Admitted, Attempt, AttemptPolicy, Bucket, Family, KvError, Rotation, SecurityState,
    bucket_full_after_ms, check_bucket, check_buckets, session_revocation_key,
};

/// Calls with a `now` between two sweeps of expired entries.
const SWEEP_EVERY: u64 = 256;

/// In-process security state with the same semantics as [`RedisState`](crate::RedisState).
#[derive(Debug, Default)]
pub struct MemoryState {
    inner: Mutex<Inner>,
}

/// (tenant, subject)
type SubjectKey = (String, String);

#[derive(Debug, Default)]
struct Inner {
    /// put/get/take: (value, expires_at).
    values: HashMap<String, (String, i64)>,
    /// insert_unique: expires_at.
    unique: HashMap<String, i64>,
    failures: HashMap<String, Failures>,
    /// set_lock: until.
    locks: HashMap<String, i64>,
    families: HashMap<String, StoredFamily>,
    /// Family ids per user, for revoke_subject and families_of.
    subjects: HashMap<SubjectKey, HashSet<String>>,
    /// revoke_tokens_before: (ts, keep_until).
    token_revocations: HashMap<SubjectKey, (i64, i64)>,
    /// revoke_jti: until.
    jtis: HashMap<String, i64>,
    buckets: HashMap<String, TokenBucket>,
    calls: u64,
}

#[derive(Debug)]
struct Failures {
    /// Failure times inside the window, unsorted only if callers' clocks disagree.
    times: Vec<i64>,
    /// The window of the latest call, for sweeping.
    window_secs: i64,
}

#[derive(Debug)]
struct StoredFamily {
    family: Family,
    current: String,
    /// Hashes rotated away: presenting one of them again is reuse.
    used: HashSet<String>,
}

#[derive(Debug)]
struct TokenBucket {
    tokens: f64,
    ts_ms: i64,
    /// From then on the bucket is full, which is the same as absent.
    full_at_ms: i64,
}

impl MemoryState {
    /// An empty state.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Every method leaves the maps consistent before it can panic, so a poisoned lock still
        // guards valid state.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Locks and, every so often, sweeps entries that are expired at `now`.
    fn lock_at(&self, now: i64) -> MutexGuard<'_, Inner> {
        let mut inner = self.lock();
        inner.calls = inner.calls.wrapping_add(1);
        if inner.calls.is_multiple_of(SWEEP_EVERY) {
            inner.sweep(now);
        }
        inner
    }
}

impl Inner {
    /// Adds a failure at `now` to `key`'s sliding window and returns how many it holds.
    fn count_failure(&mut self, key: &str, now: i64, window_secs: i64) -> u32 {
        let failures =
            self.failures.entry(key.to_owned()).or_insert_with(|| Failures { times: Vec::new(), window_secs });
        failures.window_secs = window_secs;
        let cutoff = now.saturating_sub(window_secs);
        failures.times.retain(|t| *t > cutoff);
        failures.times.push(now);
        u32::try_from(failures.times.len()).unwrap_or(u32::MAX)
    }

    fn sweep(&mut self, now: i64) {
        self.values.retain(|_, (_, exp)| now < *exp);
        self.unique.retain(|_, exp| now < *exp);
        self.failures.retain(|_, f| f.times.iter().any(|t| *t > now.saturating_sub(f.window_secs)));
        self.locks.retain(|_, until| now < *until);
        self.families.retain(|_, f| now < f.family.expires_at);
        let families = &self.families;
        self.subjects.retain(|_, ids| {
            ids.retain(|id| families.contains_key(id));
            !ids.is_empty()
        });
        self.token_revocations.retain(|_, (_, keep_until)| now < *keep_until);
        self.jtis.retain(|_, until| now < *until);
        let now_ms = now.saturating_mul(1000);
        self.buckets.retain(|_, b| now_ms < b.full_at_ms);
    }

    /// The answer of `is_jti_revoked`.
    fn jti_revoked(&self, jti: &str, now: i64) -> bool {
        self.jtis.get(jti).is_some_and(|until| now < *until)
    }

    /// The answer of `tokens_revoked_before`.
    fn tokens_revoked_before(&self, tenant: &str, subject: &str, now: i64) -> Option<i64> {
        let found = self.token_revocations.get(&subject_key(tenant, subject));
        found.filter(|(_, keep_until)| now < *keep_until).map(|(ts, _)| *ts)
    }

    /// `take_token` on parameters already checked.
    fn take_token(&mut self, key: &str, per_sec: f64, burst: u32, now_ms: i64) -> Bucket {
        let capacity = f64::from(burst);
        let (tokens, ts_ms) = self.buckets.get(key).map_or((capacity, now_ms), |b| (b.tokens, b.ts_ms));
        // Same arithmetic, in the same order, as the Lua script, so both adapters agree to the bit.
        let elapsed = now_ms.saturating_sub(ts_ms).max(0);
        let mut tokens = capacity.min(tokens + elapsed as f64 * per_sec / 1000.0);
        let ts_ms = ts_ms.max(now_ms);
        let outcome = if tokens >= 1.0 {
            tokens -= 1.0;
            Bucket::Allowed { remaining: tokens.floor() as u32 }
        } else {
            Bucket::Throttled { retry_after_ms: ((1.0 - tokens) * 1000.0 / per_sec).ceil() as i64 }
        };
        let full_at_ms = ts_ms.saturating_add(bucket_full_after_ms(tokens, per_sec, burst));
        self.buckets.insert(key.to_owned(), TokenBucket { tokens, ts_ms, full_at_ms });
        outcome
    }

    fn remove_family(&mut self, family_id: &str) -> Option<StoredFamily> {
        let stored = self.families.remove(family_id)?;
        let key = (stored.family.tenant.clone(), stored.family.subject.clone());
        if let Some(ids) = self.subjects.get_mut(&key) {
            ids.remove(family_id);
            if ids.is_empty() {
                self.subjects.remove(&key);
            }
        }
        Some(stored)
    }
}

fn subject_key(tenant: &str, subject: &str) -> SubjectKey {
    (tenant.to_owned(), subject.to_owned())
}

#[async_trait::async_trait]
impl SecurityState for MemoryState {
    async fn put(&self, key: &str, value: &str, expires_at: i64, now: i64) -> Result<(), KvError> {
        self.lock_at(now).values.insert(key.to_owned(), (value.to_owned(), expires_at));
        Ok(())
    }

    async fn get(&self, key: &str, now: i64) -> Result<Option<String>, KvError> {
        let inner = self.lock_at(now);
        Ok(inner.values.get(key).filter(|(_, exp)| now < *exp).map(|(v, _)| v.clone()))
    }

    async fn take(&self, key: &str, now: i64) -> Result<Option<String>, KvError> {
        let mut inner = self.lock_at(now);
        Ok(inner.values.remove(key).filter(|(_, exp)| now < *exp).map(|(v, _)| v))
    }

    async fn delete(&self, key: &str) -> Result<(), KvError> {
        self.lock().values.remove(key);
        Ok(())
    }

    async fn insert_unique(&self, key: &str, expires_at: i64, now: i64) -> Result<bool, KvError> {
        let mut inner = self.lock_at(now);
        if inner.unique.get(key).is_some_and(|exp| now < *exp) {
            return Ok(false);
        }
        inner.unique.insert(key.to_owned(), expires_at);
        Ok(true)
    }

    async fn begin_attempt(&self, key: &str, policy: &AttemptPolicy, now: i64) -> Result<Attempt, KvError> {
        let mut inner = self.lock_at(now);
        if let Some(until) = inner.locks.get(key).copied().filter(|until| now < *until) {
            return Ok(Attempt::Locked { until });
        }
        let count = inner.count_failure(key, now, policy.window_secs);
        if policy.threshold > 0 && count > policy.threshold {
            let doublings = (count - policy.threshold).min(62);
            let secs = policy.base_secs.saturating_mul(1_i64 << doublings).min(policy.max_secs);
            inner.locks.insert(key.to_owned(), now.saturating_add(secs));
        }
        Ok(Attempt::Counted { count })
    }

    async fn clear_failures(&self, key: &str) -> Result<(), KvError> {
        self.lock().failures.remove(key);
        Ok(())
    }

    async fn set_lock(&self, key: &str, until: i64) -> Result<(), KvError> {
        self.lock().locks.insert(key.to_owned(), until);
        Ok(())
    }

    async fn lock_until(&self, key: &str, now: i64) -> Result<Option<i64>, KvError> {
        Ok(self.lock_at(now).locks.get(key).copied().filter(|until| now < *until))
    }

    async fn clear_lock(&self, key: &str) -> Result<(), KvError> {
        self.lock().locks.remove(key);
        Ok(())
    }

    async fn create_family(&self, family: &Family, token_hash: &str, now: i64) -> Result<(), KvError> {
        let mut inner = self.lock_at(now);
        // Re-creating an id replaces the family wholesale, as in Redis.
        inner.remove_family(&family.id);
        inner.subjects.entry(subject_key(&family.tenant, &family.subject)).or_default().insert(family.id.clone());
        let stored = StoredFamily { family: family.clone(), current: token_hash.to_owned(), used: HashSet::new() };
        inner.families.insert(family.id.clone(), stored);
        Ok(())
    }

    async fn rotate(
        &self,
        family_id: &str,
        presented_hash: &str,
        new_hash: &str,
        now: i64,
    ) -> Result<Rotation, KvError> {
        let mut inner = self.lock_at(now);
        let Some(stored) = inner.families.get_mut(family_id) else {
            return Ok(Rotation::Invalid);
        };
        if now >= stored.family.expires_at {
            return Ok(Rotation::Invalid);
        }
        if stored.current == presented_hash {
            let old = std::mem::replace(&mut stored.current, new_hash.to_owned());
            stored.used.insert(old);
            return Ok(Rotation::Rotated(stored.family.clone()));
        }
        if stored.used.contains(presented_hash) {
            // RFC 9700 §4.14.2: a rotated-away token came back, so either the legitimate client or
            // an attacker holds a copy; the server cannot tell which, so the whole family goes.
            let family = stored.family.clone();
            inner.remove_family(family_id);
            return Ok(Rotation::Reused(family));
        }
        Ok(Rotation::Invalid)
    }

    async fn revoke_family(&self, family_id: &str) -> Result<bool, KvError> {
        Ok(self.lock().remove_family(family_id).is_some())
    }

    async fn revoke_subject(&self, tenant: &str, subject: &str) -> Result<u32, KvError> {
        let mut inner = self.lock();
        let ids = inner.subjects.remove(&subject_key(tenant, subject)).unwrap_or_default();
        let removed = ids.iter().filter(|id| inner.families.remove(*id).is_some()).count();
        Ok(u32::try_from(removed).unwrap_or(u32::MAX))
    }

    async fn families_of(&self, tenant: &str, subject: &str, now: i64) -> Result<Vec<Family>, KvError> {
        let inner = self.lock_at(now);
        let Some(ids) = inner.subjects.get(&subject_key(tenant, subject)) else {
            return Ok(Vec::new());
        };
        let mut live: Vec<Family> = ids
            .iter()
            .filter_map(|id| inner.families.get(id))
            .filter(|f| now < f.family.expires_at)
            .map(|f| f.family.clone())
            .collect();
        live.sort_by(|a, b| a.created_at.cmp(&b.created_at).then_with(|| a.id.cmp(&b.id)));
        Ok(live)
    }

    async fn revoke_tokens_before(&self, tenant: &str, subject: &str, ts: i64, keep_until: i64) -> Result<(), KvError> {
        let mut inner = self.lock();
        let entry = inner.token_revocations.entry(subject_key(tenant, subject)).or_insert((ts, keep_until));
        *entry = (entry.0.max(ts), entry.1.max(keep_until));
        Ok(())
    }

    async fn tokens_revoked_before(&self, tenant: &str, subject: &str, now: i64) -> Result<Option<i64>, KvError> {
        Ok(self.lock_at(now).tokens_revoked_before(tenant, subject, now))
    }

    async fn revoke_jti(&self, jti: &str, until: i64) -> Result<(), KvError> {
        let mut inner = self.lock();
        let entry = inner.jtis.entry(jti.to_owned()).or_insert(until);
        *entry = (*entry).max(until);
        Ok(())
    }

    async fn is_jti_revoked(&self, jti: &str, now: i64) -> Result<bool, KvError> {
        Ok(self.lock_at(now).jti_revoked(jti, now))
    }

    async fn take_token(&self, key: &str, per_sec: f64, burst: u32, now_ms: i64) -> Result<Bucket, KvError> {
        check_bucket(per_sec, burst)?;
        Ok(self.lock_at(now_ms.div_euclid(1000)).take_token(key, per_sec, burst, now_ms))
    }

    async fn admit(&self, a: &Admission<'_>, now_ms: i64) -> Result<Admitted, KvError> {
        check_buckets(a.buckets)?;
        let now = now_ms.div_euclid(1000);
        // One lock for the whole admission: atomic like the Redis script, so a revocation lands
        // either before the check (and no token is taken) or after the request was admitted.
        let mut inner = self.lock_at(now);
        let revoked = a.jti.is_some_and(|jti| inner.jti_revoked(jti, now))
            || a.session.is_some_and(|sid| inner.jti_revoked(&session_revocation_key(sid), now))
            || inner.tokens_revoked_before(a.tenant, a.subject, now).is_some_and(|ts| a.issued_at < ts);
        if revoked {
            return Ok(Admitted::Revoked);
        }
        for b in a.buckets {
            if let Bucket::Throttled { retry_after_ms } = inner.take_token(b.key, b.per_sec, b.burst, now_ms) {
                return Ok(Admitted::Throttled { retry_after_ms });
            }
        }
        Ok(Admitted::Allowed)
    }

    async fn ping(&self) -> Result<(), KvError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn expired_entries_are_swept_so_memory_stays_bounded() {
        let s = MemoryState::new();
        for i in 0..500 {
            let key = format!("k{i}");
            s.put(&key, "v", 100, 0).await.unwrap();
            s.insert_unique(&key, 100, 0).await.unwrap();
            let policy = AttemptPolicy { window_secs: 60, threshold: 0, base_secs: 60, max_secs: 60 };
            s.begin_attempt(&key, &policy, 0).await.unwrap();
            s.set_lock(&key, 100).await.unwrap();
            s.revoke_jti(&key, 100).await.unwrap();
            s.revoke_tokens_before("t", &key, 0, 100).await.unwrap();
            s.take_token(&key, 1.0, 5, 0).await.unwrap();
            let family = Family {
                id: key.clone(),
                tenant: "t".into(),
                subject: key.clone(),
                client_id: "c".into(),
                scope: String::new(),
                roles: Vec::new(),
                created_at: 0,
                expires_at: 100,
            };
            s.create_family(&family, "h", 0).await.unwrap();
        }
        s.put("live", "v", 10_000, 0).await.unwrap();
        for _ in 0..SWEEP_EVERY {
            s.get("live", 1000).await.unwrap();
        }
        let inner = s.lock();
        assert_eq!(inner.values.len(), 1, "only the live value is left");
        assert!(inner.unique.is_empty());
        assert!(inner.failures.is_empty());
        assert!(inner.locks.is_empty());
        assert!(inner.jtis.is_empty());
        assert!(inner.token_revocations.is_empty());
        assert!(inner.buckets.is_empty());
        assert!(inner.families.is_empty());
        assert!(inner.subjects.is_empty());
    }
}
