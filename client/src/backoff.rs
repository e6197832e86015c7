//! Backoff: the retry schedule of one outage.
//!
//! Each retry in an outage first waits: `initial_delay` for the first, twice as long as the one before for
//! each next, at most `max_delay`, randomised by ±25 %; once the outage's [`RetryBudget`] is spent (a
//! number of retries, or a time since its first retry was scheduled, the last wait cut to end with it) the
//! outage is given up and its last cause is returned. An outage ends (the schedule starts over) when the broker
//! shows progress (accepts or delivers a batch) or a stream that was lost had stayed up for
//! [`STABLE_AFTER`].

use std::time::Duration;

use tokio::time::Instant;

use crate::error::{Error, Result};
use crate::options::{Reconnect, RetryBudget};

/// How long a stream must have stayed up for its loss to start a new outage (resetting the backoff).
pub(crate) const STABLE_AFTER: Duration = Duration::from_secs(10);

/// The retry schedule of one outage.
#[derive(Debug)]
pub(crate) struct Backoff {
    policy: Reconnect,
    retries: u32,
    /// When the outage's first retry was scheduled.
    since: Option<Instant>,
}

impl Backoff {
    pub(crate) fn new(policy: Reconnect) -> Self {
        Self { policy, retries: 0, since: None }
    }

    /// The wait before the next retry (without jitter), or `None` once the budget is spent.
    pub(crate) fn next_delay(&mut self) -> Option<Duration> {
        let since = *self.since.get_or_insert_with(Instant::now);
        let factor = 1u32.checked_shl(self.retries.min(31)).unwrap_or(u32::MAX);
        let delay = self.policy.initial_delay.saturating_mul(factor).min(self.policy.max_delay);
        let delay = match self.policy.budget {
            RetryBudget::Retries(max) if self.retries >= max => return None,
            RetryBudget::Retries(_) | RetryBudget::Unlimited => delay,
            RetryBudget::Duration(budget) => {
                delay.min(budget.checked_sub(since.elapsed()).filter(|left| !left.is_zero())?)
            }
        };
        self.retries = self.retries.saturating_add(1);
        Some(delay)
    }

    /// What is left of a time budget, if the outage has one.
    fn left(&self) -> Option<Duration> {
        match (self.policy.budget, self.since) {
            (RetryBudget::Duration(budget), Some(since)) => Some(budget.saturating_sub(since.elapsed())),
            _ => None,
        }
    }

    /// Ends the outage: the next loss starts from `initial_delay` and the whole budget again.
    pub(crate) fn reset(&mut self) {
        self.retries = 0;
        self.since = None;
    }

    /// Waits for the next retry; `Err(cause)` once the retries are used up.
    pub(crate) async fn wait(&mut self, cause: Error) -> Result<()> {
        let Some(delay) = self.next_delay() else {
            return Err(cause);
        };
        let jitter = 0.75 + rand::random::<f64>() * 0.5;
        let wait = self.left().map_or(delay.mul_f64(jitter), |left| delay.mul_f64(jitter).min(left));
        tracing::info!(error = %cause, retry_in = ?wait, "reconnecting");
        tokio::time::sleep(wait).await;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn retries(max: u32) -> Reconnect {
        Reconnect {
            initial_delay: Duration::from_millis(100),
            max_delay: Duration::from_millis(500),
            budget: RetryBudget::Retries(max),
        }
    }

    #[test]
    fn backoff_doubles_up_to_the_cap_and_stops_after_its_retries() {
        let mut b = Backoff::new(retries(5));
        let delays: Vec<_> = std::iter::from_fn(|| b.next_delay()).map(|d| d.as_millis()).collect();
        assert_eq!(delays, [100, 200, 400, 500, 500]);
        assert_eq!(b.next_delay(), None);
        b.reset();
        assert_eq!(b.next_delay(), Some(Duration::from_millis(100)));
    }

    #[test]
    fn backoff_with_zero_retries_never_retries() {
        let mut b = Backoff::new(retries(0));
        assert_eq!(b.next_delay(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_time_budget_ends_the_outage_when_it_is_spent_and_cuts_the_last_wait_to_it() {
        let mut b =
            Backoff::new(Reconnect { budget: RetryBudget::Duration(Duration::from_secs(1)), ..retries(0) });
        let mut waited = Vec::new();
        while let Some(delay) = b.next_delay() {
            waited.push(delay.as_millis());
            tokio::time::advance(delay).await;
        }
        // 100 + 200 + 400 = 700 ms; then 300 ms are left of the second, not the 500 the schedule says.
        assert_eq!(waited, [100, 200, 400, 300]);
        // A new outage has the whole budget again.
        b.reset();
        assert_eq!(b.next_delay(), Some(Duration::from_millis(100)));
    }

    #[tokio::test(start_paused = true)]
    async fn the_wait_never_outlasts_a_time_budget_whatever_the_jitter() {
        let mut b = Backoff::new(Reconnect {
            initial_delay: Duration::from_millis(400),
            max_delay: Duration::from_millis(400),
            budget: RetryBudget::Duration(Duration::from_millis(500)),
        });
        let start = Instant::now();
        while b.wait(Error::Closed).await.is_ok() {}
        assert!(start.elapsed() <= Duration::from_millis(500), "{:?}", start.elapsed());
    }

    #[test]
    fn an_unlimited_budget_never_gives_up_and_survives_many_retries_without_overflow() {
        let mut b = Backoff::new(Reconnect { budget: RetryBudget::Unlimited, ..Reconnect::default() });
        let last = (0..10_000).map(|_| b.next_delay()).last().flatten();
        assert_eq!(last, Some(Duration::from_secs(5)));
    }
}
