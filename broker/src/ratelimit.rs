//! Per-principal publish rate limits: token buckets for messages per second and bytes per second.
//!
//! Pure and synchronous: the caller passes the current time, so the decision is unit-tested without a
//! clock. A bucket holds at most one second's worth of tokens (the burst) and refills continuously. A
//! publish takes its message count from one bucket and its byte count from the other, or nothing at all.

use std::time::Duration;

/// A token bucket refilled at `rate` tokens per second, holding at most `rate` tokens.
#[derive(Clone, Debug)]
pub struct TokenBucket {
    rate: f64,
    tokens: f64,
    last: Duration,
}

impl TokenBucket {
    /// A full bucket, as of `now` (time since any fixed origin).
    pub fn new(rate: u64, now: Duration) -> Self {
        Self { rate: rate as f64, tokens: rate as f64, last: now }
    }

    fn refill(&mut self, now: Duration) {
        let elapsed = now.saturating_sub(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.rate);
        self.last = self.last.max(now);
    }

    fn available(&mut self, n: u64, now: Duration) -> bool {
        self.refill(now);
        self.tokens >= n as f64
    }
}

/// The publish limits of one principal. A rate of 0 means unlimited.
#[derive(Clone, Debug)]
pub struct PublishLimiter {
    messages: Option<TokenBucket>,
    bytes: Option<TokenBucket>,
}

impl PublishLimiter {
    /// Limits of `msgs_per_sec` and `bytes_per_sec` (0: unlimited), full as of `now`.
    pub fn new(msgs_per_sec: u64, bytes_per_sec: u64, now: Duration) -> Self {
        let bucket = |rate| (rate > 0).then(|| TokenBucket::new(rate, now));
        Self { messages: bucket(msgs_per_sec), bytes: bucket(bytes_per_sec) }
    }

    /// Takes `messages` and `bytes` if both buckets hold enough; otherwise takes nothing and returns false.
    /// A batch larger than a whole second's allowance can never pass: it is refused, not queued forever.
    pub fn try_take(&mut self, messages: u64, bytes: u64, now: Duration) -> bool {
        let fits = |b: &mut Option<TokenBucket>, n| b.as_mut().is_none_or(|b| b.available(n, now));
        if !fits(&mut self.messages, messages) || !fits(&mut self.bytes, bytes) {
            return false;
        }
        for (bucket, n) in [(&mut self.messages, messages), (&mut self.bytes, bytes)] {
            if let Some(b) = bucket {
                b.tokens -= n as f64;
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn unlimited_limiter_always_allows() {
        let mut l = PublishLimiter::new(0, 0, Duration::ZERO);
        assert!(l.try_take(u64::MAX / 2, u64::MAX / 2, Duration::ZERO));
    }

    #[test]
    fn message_rate_allows_a_burst_then_refills_over_time() {
        let mut l = PublishLimiter::new(100, 0, Duration::ZERO);
        assert!(l.try_take(60, 1, Duration::ZERO));
        assert!(l.try_take(40, 1, Duration::ZERO));
        assert!(!l.try_take(1, 1, Duration::ZERO));
        // Half a second refills 50.
        assert!(l.try_take(50, 1, S / 2));
        assert!(!l.try_take(1, 1, S / 2));
        // Never more than one second's worth, however long it waited.
        assert!(!l.try_take(101, 1, 100 * S));
        assert!(l.try_take(100, 1, 100 * S));
    }

    #[test]
    fn a_refused_publish_takes_nothing_from_either_bucket() {
        let mut l = PublishLimiter::new(10, 1000, Duration::ZERO);
        assert!(!l.try_take(5, 2000, Duration::ZERO));
        assert!(l.try_take(10, 1000, Duration::ZERO));
    }

    #[test]
    fn byte_rate_is_separate_from_message_rate() {
        let mut l = PublishLimiter::new(0, 1024, Duration::ZERO);
        assert!(l.try_take(1000, 1024, Duration::ZERO));
        assert!(!l.try_take(1, 1, Duration::ZERO));
        assert!(l.try_take(1, 512, S / 2));
    }

    #[test]
    fn time_going_backwards_does_not_mint_tokens() {
        let mut l = PublishLimiter::new(10, 0, S);
        assert!(l.try_take(10, 0, S));
        assert!(!l.try_take(1, 0, Duration::ZERO));
        assert!(!l.try_take(1, 0, S));
    }
}
