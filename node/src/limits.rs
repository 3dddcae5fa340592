//! Rate limits: a token bucket per key (user name), refilled continuously.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Default friend requests one user may send in a burst, refilled at this many a minute.
pub const DEFAULT_FRIEND_REQUESTS_PER_MINUTE: u32 = 60;

/// Failed logins a connection may make before it is closed.
pub const MAX_FAILED_LOGINS: u32 = 3;

/// A token bucket per key.
pub(crate) struct RateLimit {
    capacity: f64,
    per_second: f64,
    buckets: Mutex<HashMap<String, (f64, Instant)>>,
}

impl RateLimit {
    /// `capacity` at once, refilled at `capacity` per `period`.
    pub fn new(capacity: u32, period: Duration) -> Self {
        Self {
            capacity: f64::from(capacity),
            per_second: f64::from(capacity) / period.as_secs_f64(),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes a token for `key` if one is left.
    pub fn allow(&self, key: &str) -> bool {
        let now = Instant::now();
        let mut buckets = self.buckets.lock().expect("rate limit lock");
        // Forget full buckets now and then so the map stays small.
        if buckets.len() > 10_000 {
            let (cap, rate) = (self.capacity, self.per_second);
            buckets.retain(|_, (t, at)| *t + now.duration_since(*at).as_secs_f64() * rate < cap);
        }
        let (tokens, at) = buckets
            .entry(key.to_string())
            .or_insert((self.capacity, now));
        *tokens =
            (*tokens + now.duration_since(*at).as_secs_f64() * self.per_second).min(self.capacity);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bursts_are_capped_per_key() {
        let limit = RateLimit::new(3, Duration::from_secs(3600));
        assert!((0..3).all(|_| limit.allow("a")));
        assert!(!limit.allow("a"));
        assert!(limit.allow("b"));
    }
}
