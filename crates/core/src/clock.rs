//! Time is a parameter: code that needs "now" takes a [`Clock`], so tests control it.

use chrono::{DateTime, Utc};

/// A source of the current time.
pub trait Clock: Send + Sync + std::fmt::Debug {
    /// The current instant, in UTC.
    fn now(&self) -> DateTime<Utc>;
}

/// The real wall clock; the only place that reads the system time.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    #[allow(clippy::disallowed_methods)] // the one sanctioned read of the system clock
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// The due time (epoch ms) of the next attempt after failed attempt number `attempt` (1 for the
/// first): `base_ms` doubled per attempt, at most `max_ms` — the back-off of every outbound queue
/// (HL7 to labs, the national services).
pub fn retry_due(now_ms: i64, attempt: i32, base_ms: u64, max_ms: u64) -> i64 {
    let doublings = u32::try_from(attempt.saturating_sub(1).clamp(0, 20)).unwrap_or(20);
    let delay = base_ms.saturating_mul(1u64 << doublings).min(max_ms);
    now_ms.saturating_add(i64::try_from(delay).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod retry_tests {
    use super::retry_due;

    #[test]
    fn doubles_per_attempt_up_to_the_maximum() {
        assert_eq!(retry_due(1_000, 1, 200, 10_000), 1_200);
        assert_eq!(retry_due(1_000, 3, 200, 10_000), 1_800);
        assert_eq!(retry_due(1_000, 40, 200, 10_000), 11_000);
        assert_eq!(retry_due(i64::MAX - 5, 2, u64::MAX, u64::MAX), i64::MAX);
    }
}
