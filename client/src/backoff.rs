//! Backoff: the retry schedule of one outage.
//!
//! Each retry in an outage first waits: `initial_delay` for the first, twice as long as the one before for
//! each next, at most `max_delay`, randomised by ±25 %; once [`Reconnect::max_retries`] retries are used
//! up the outage is given up and its last cause is returned. An outage ends (the schedule starts over) when the broker
//! shows progress (accepts or delivers a batch) or a stream that was lost had stayed up for
//! [`STABLE_AFTER`].

use std::time::Duration;

use crate::error::{Error, Result};
use crate::options::Reconnect;

/// How long a stream must have stayed up for its loss to start a new outage (resetting the backoff).
pub(crate) const STABLE_AFTER: Duration = Duration::from_secs(10);

/// The retry schedule of one outage.
#[derive(Debug)]
pub(crate) struct Backoff {
    policy: Reconnect,
    retries: u32,
}

impl Backoff {
    pub(crate) fn new(policy: Reconnect) -> Self {
        Self { policy, retries: 0 }
    }

    /// The wait before the next retry (without jitter), or `None` once the retries are used up.
    pub(crate) fn next_delay(&mut self) -> Option<Duration> {
        if self.retries >= self.policy.max_retries {
            return None;
        }
        let factor = 1u32.checked_shl(self.retries.min(31)).unwrap_or(u32::MAX);
        self.retries += 1;
        Some(self.policy.initial_delay.saturating_mul(factor).min(self.policy.max_delay))
    }

    /// Ends the outage: the next loss starts from an immediate attempt again.
    pub(crate) fn reset(&mut self) {
        self.retries = 0;
    }

    /// Waits for the next retry; `Err(cause)` once the retries are used up.
    pub(crate) async fn wait(&mut self, cause: Error) -> Result<()> {
        let Some(delay) = self.next_delay() else {
            return Err(cause);
        };
        let jitter = 0.75 + rand::random::<f64>() * 0.5;
        tracing::info!(error = %cause, retry_in = ?delay.mul_f64(jitter), "reconnecting");
        tokio::time::sleep(delay.mul_f64(jitter)).await;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap_and_stops_after_max_retries() {
        let mut b = Backoff::new(Reconnect {
            initial_delay: Duration::from_millis(100),
            max_delay: Duration::from_millis(500),
            max_retries: 5,
        });
        let delays: Vec<_> = std::iter::from_fn(|| b.next_delay()).map(|d| d.as_millis()).collect();
        assert_eq!(delays, [100, 200, 400, 500, 500]);
        assert_eq!(b.next_delay(), None);
        b.reset();
        assert_eq!(b.next_delay(), Some(Duration::from_millis(100)));
    }

    #[test]
    fn backoff_with_zero_retries_never_retries() {
        let mut b = Backoff::new(Reconnect { max_retries: 0, ..Reconnect::default() });
        assert_eq!(b.next_delay(), None);
    }

    #[test]
    fn backoff_survives_many_retries_without_overflow() {
        let mut b = Backoff::new(Reconnect { max_retries: 100, ..Reconnect::default() });
        let last = std::iter::from_fn(|| b.next_delay()).last();
        assert_eq!(last, Some(Duration::from_secs(5)));
    }
}
