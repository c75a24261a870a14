//! What an answer means for delivery, and when to try again: 2xx delivered; 408, 429, 5xx,
//! timeouts and connection errors retried with capped exponential backoff and full jitter,
//! honouring `Retry-After`; any other status final. Retrying ends once an event has had at
//! least `min_attempts` AND is older than `max_age` (both, as RudderStack's router).

use std::time::Duration;

use chrono::{DateTime, Utc};

/// How long a `Retry-After` may make us wait, at most (PostHog's CDP caps it the same way).
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(300);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Delivered,
    /// Worth trying again (after the server's `Retry-After` when it sent one).
    Retry,
    /// Refused for good: split the batch to find the events that cause it.
    Final,
}

/// The verdict on an HTTP status.
pub fn classify(status: u16) -> Verdict {
    match status {
        200..=299 => Verdict::Delivered,
        408 | 429 => Verdict::Retry,
        500..=599 => Verdict::Retry,
        _ => Verdict::Final,
    }
}

/// A `Retry-After` value: delay seconds or an HTTP date, capped at [`MAX_RETRY_AFTER`].
pub fn parse_retry_after(value: &str, now: DateTime<Utc>) -> Option<Duration> {
    let value = value.trim();
    let wait = if let Ok(seconds) = value.parse::<u64>() {
        Duration::from_secs(seconds)
    } else {
        let at = DateTime::parse_from_rfc2822(value).ok()?.with_timezone(&Utc);
        (at - now).to_std().unwrap_or(Duration::ZERO)
    };
    Some(wait.min(MAX_RETRY_AFTER))
}

/// The retry rules of a destination.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    /// First backoff; doubles each attempt up to `max_backoff`, then full jitter.
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    /// An event is dead-lettered only once it had at least this many attempts…
    pub min_attempts: u32,
    /// …and its first attempt is at least this old.
    pub max_age: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            initial_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(300),
            min_attempts: 3,
            max_age: Duration::from_secs(3 * 3600),
        }
    }
}

impl RetryPolicy {
    /// How long to wait after failed attempt number `attempt` (1-based): uniform in
    /// [0, min(max_backoff, initial·2^(attempt−1))] (full jitter), or the server's
    /// `Retry-After` when it asked for longer.
    pub fn backoff(&self, attempt: u32, retry_after: Option<Duration>) -> Duration {
        let exp = self.initial_backoff.saturating_mul(1u32.checked_shl(attempt.saturating_sub(1).min(31)).unwrap_or(u32::MAX));
        let cap = exp.min(self.max_backoff);
        let jittered = cap.mul_f64(rand::random::<f64>());
        match retry_after {
            Some(asked) if asked > jittered => asked,
            _ => jittered,
        }
    }

    /// Whether an event that had `attempts` attempts, the first at `first_attempt`, is given up.
    pub fn exhausted(&self, attempts: u32, first_attempt: DateTime<Utc>, now: DateTime<Utc>) -> bool {
        let age = (now - first_attempt).to_std().unwrap_or(Duration::ZERO);
        attempts >= self.min_attempts && age >= self.max_age
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_are_classified_as_routers_do() {
        for s in [200, 201, 204] {
            assert_eq!(classify(s), Verdict::Delivered);
        }
        for s in [408, 429, 500, 502, 503, 504] {
            assert_eq!(classify(s), Verdict::Retry, "{s}");
        }
        for s in [301, 400, 401, 403, 404, 413, 422] {
            assert_eq!(classify(s), Verdict::Final, "{s}");
        }
    }

    #[test]
    fn retry_after_in_seconds_or_as_a_date_is_capped() {
        let now = DateTime::parse_from_rfc3339("2026-12-05T10:00:00Z").unwrap().with_timezone(&Utc);
        assert_eq!(parse_retry_after("7", now), Some(Duration::from_secs(7)));
        assert_eq!(parse_retry_after("Sat, 05 Dec 2026 10:00:30 GMT", now), Some(Duration::from_secs(30)));
        assert_eq!(parse_retry_after("86400", now), Some(MAX_RETRY_AFTER));
        assert_eq!(parse_retry_after("soon", now), None);
    }

    #[test]
    fn backoff_is_jittered_under_a_doubling_cap_and_retry_after_wins() {
        let p = RetryPolicy { initial_backoff: Duration::from_millis(100), max_backoff: Duration::from_millis(1000), ..RetryPolicy::default() };
        for attempt in 1..40 {
            let cap = Duration::from_millis(100 * 2u64.pow((attempt - 1).min(20))).min(Duration::from_millis(1000));
            assert!(p.backoff(attempt, None) <= cap, "attempt {attempt}");
        }
        let draws: std::collections::HashSet<_> = (0..20).map(|_| p.backoff(5, None)).collect();
        assert!(draws.len() > 10, "full jitter spreads the waits");
        assert_eq!(p.backoff(1, Some(Duration::from_secs(9))), Duration::from_secs(9));
    }

    #[test]
    fn giving_up_needs_both_attempts_and_age() {
        let p = RetryPolicy { min_attempts: 3, max_age: Duration::from_secs(60), ..RetryPolicy::default() };
        let t0 = Utc::now();
        let later = t0 + chrono::Duration::seconds(61);
        assert!(!p.exhausted(2, t0, later), "too few attempts");
        assert!(!p.exhausted(5, t0, t0 + chrono::Duration::seconds(10)), "too young");
        assert!(p.exhausted(3, t0, later));
    }
}
