//! Behavioural tests of `ehr-kv`: one suite, written once against `dyn SecurityState`, run against
//! every adapter. Redis tests use `TEST_REDIS_URL` (default `redis://127.0.0.1:6379`) and a fresh
//! key prefix per test; without a reachable Redis they fail under `CI=true` and are skipped
//! (with a notice) elsewhere.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

mod redis_only;
mod suite;

use std::sync::Arc;

use ehr_kv::{MemoryState, RedisState, SecurityState};

/// A Redis-backed state under a prefix of its own, removed again by [`TestRedis::cleanup`].
pub struct TestRedis {
    pub state: RedisState,
    pub url: String,
}

impl TestRedis {
    /// Connects, or returns `None` (outside CI) when Redis is unreachable.
    pub async fn start() -> Option<Self> {
        let url = redis_url();
        let prefix = format!("ehr-kv-test:{}", uuid::Uuid::new_v4().simple());
        match RedisState::connect(&url, &prefix).await {
            Ok(state) => Some(Self { state, url }),
            Err(err) if std::env::var("CI").is_ok_and(|v| v == "true") => {
                panic!("redis at TEST_REDIS_URL is required in CI: {err}")
            }
            Err(err) => {
                eprintln!("notice: skipping a redis test, redis is unreachable ({err}); set TEST_REDIS_URL");
                None
            }
        }
    }

    pub fn shared(&self) -> Arc<dyn SecurityState> {
        Arc::new(self.state.clone())
    }

    /// Every key under this test's prefix, with its TTL in seconds.
    pub async fn keys_with_ttl(&self) -> Vec<(String, i64)> {
        let client = redis::Client::open(self.url.as_str()).unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        let pattern = format!("{}:*", self.state.prefix());
        let mut cursor = 0u64;
        let mut out = Vec::new();
        loop {
            let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut conn)
                .await
                .unwrap();
            for key in keys {
                let ttl: i64 = redis::cmd("TTL").arg(&key).query_async(&mut conn).await.unwrap();
                out.push((key, ttl));
            }
            if next == 0 {
                return out;
            }
            cursor = next;
        }
    }

    /// Deletes every key under this test's prefix (the TTLs would, later).
    pub async fn cleanup(&self) {
        let keys = self.keys_with_ttl().await;
        if keys.is_empty() {
            return;
        }
        let client = redis::Client::open(self.url.as_str()).unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        let mut del = redis::cmd("DEL");
        for (key, _) in &keys {
            del.arg(key);
        }
        del.query_async::<()>(&mut conn).await.unwrap();
    }
}

pub fn redis_url() -> String {
    std::env::var("TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

/// Declares each suite case once per adapter.
macro_rules! run_suite {
    ($($case:ident),* $(,)?) => {
        mod in_memory {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let state: std::sync::Arc<dyn ehr_kv::SecurityState> = std::sync::Arc::new(ehr_kv::MemoryState::new());
                    crate::suite::$case(state).await;
                }
            )*
        }

        mod on_redis {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let Some(redis) = crate::TestRedis::start().await else { return };
                    crate::suite::$case(redis.shared()).await;
                    redis.cleanup().await;
                }
            )*
        }
    };
}

run_suite!(
    put_get_take_delete,
    expiry_follows_the_passed_in_clock_not_ttls,
    take_is_single_use_under_concurrency,
    insert_unique_guards_replays,
    failures_count_in_a_sliding_window,
    attempts_are_counted_before_they_are_checked,
    locks_hold_until_their_end,
    rotation_moves_the_current_token,
    reuse_after_rotation_revokes_the_family,
    unknown_hash_is_invalid_and_harmless,
    expired_family_is_invalid,
    concurrent_rotation_has_one_winner_and_revokes,
    revoke_family_voids_its_tokens,
    revoke_subject_kills_only_that_users_families,
    tenants_are_separate,
    families_of_lists_live_families_oldest_first,
    recreating_a_family_replaces_it,
    access_token_revocation_by_time,
    jti_revocation,
    token_bucket_refills_and_reports_retry_after,
    token_bucket_rejects_unusable_parameters,
    admit_revoked_by_jti_agrees_with_is_jti_revoked,
    admit_revoked_by_session_reads_the_sid_key,
    admit_revoked_by_cutoff_agrees_with_tokens_revoked_before,
    admit_takes_no_token_when_revoked,
    admit_buckets_agree_with_take_token,
    admit_and_take_token_draw_from_the_same_bucket,
    admit_stops_at_the_first_empty_bucket,
    admit_is_atomic_under_concurrency,
    admit_rejects_unusable_parameters_before_taking,
    ping_answers,
);

#[test]
fn memory_state_is_usable_as_a_trait_object() {
    let _state: Arc<dyn SecurityState> = Arc::new(MemoryState::default());
}
