//! Account lock-out after repeated failed logins, with exponential back-off.
//!
//! The MHLW guideline (v6.0) asks for measures against password guessing; a lock that doubles with
//! each further failure stops online guessing without letting anyone lock a user out for a day
//! with a handful of requests. The policy is pure: the caller keeps the failure count (in Redis)
//! and asks how long the account stays locked.

use serde::{Deserialize, Serialize};

/// When and for how long repeated login failures lock an account.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LockoutPolicy {
    /// Failures that trigger the first lock (0 disables locking).
    pub threshold: u32,
    /// Length of the first lock, in seconds.
    pub base_secs: i64,
    /// Longest lock, in seconds.
    pub max_secs: i64,
    /// Failures older than this many seconds are forgotten. Longer than the longest lock, so
    /// that the back-off can reach it (a success clears the count anyway).
    pub window_secs: i64,
}

impl Default for LockoutPolicy {
    fn default() -> Self {
        Self { threshold: 5, base_secs: 60, max_secs: 3600, window_secs: 86_400 }
    }
}

impl LockoutPolicy {
    /// How long `failures` consecutive failures lock the account: none below the threshold,
    /// `base_secs` at it, doubling with each further failure, at most `max_secs`.
    pub fn lock_secs(&self, failures: u32) -> Option<i64> {
        if self.threshold == 0 || failures < self.threshold {
            return None;
        }
        let doublings = failures - self.threshold;
        // 2^62 already exceeds any sensible cap; saturate instead of overflowing.
        let factor = 1_i64.checked_shl(doublings.min(62)).unwrap_or(i64::MAX);
        Some(self.base_secs.saturating_mul(factor).min(self.max_secs))
    }

    /// Whether a failure count last bumped at `last_failure_unix` has expired at `now_unix`.
    pub fn window_expired(&self, last_failure_unix: i64, now_unix: i64) -> bool {
        now_unix.saturating_sub(last_failure_unix) >= self.window_secs
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exponential_back_off_capped() {
        let p = LockoutPolicy::default();
        assert_eq!((0..5).map(|f| p.lock_secs(f)).collect::<Vec<_>>(), [None; 5]);
        assert_eq!(p.lock_secs(5), Some(60));
        assert_eq!(p.lock_secs(6), Some(120));
        assert_eq!(p.lock_secs(7), Some(240));
        assert_eq!(p.lock_secs(10), Some(1920));
        assert_eq!(p.lock_secs(11), Some(3600));
        assert_eq!(p.lock_secs(u32::MAX), Some(3600));
    }

    #[test]
    fn zero_threshold_disables_and_window_expires() {
        let off = LockoutPolicy { threshold: 0, ..LockoutPolicy::default() };
        assert_eq!(off.lock_secs(1000), None);
        let p = LockoutPolicy::default();
        assert!(!p.window_expired(1000, 1000 + 86_399));
        assert!(p.window_expired(1000, 1000 + 86_400));
        let parsed: LockoutPolicy = serde_json::from_str(r#"{"threshold": 3}"#).expect("partial policy");
        assert_eq!(parsed, LockoutPolicy { threshold: 3, ..LockoutPolicy::default() });
    }
}
