//! Reconnecting: the one loop that gets a stream back after a loss, used by publishers, subscriptions and
//! policy fetches alike.
//!
//! A [`Reconnector`] runs an attempt (open a stream and send its first request, or fetch policies) until it
//! succeeds, waiting with backoff (see `backoff.rs`) before each attempt while a loss is pending. It owns
//! the classification of failures ([`Reconnector::cures`]): what reconnecting may cure (an unreachable
//! broker, a lost connection, `UNAVAILABLE`) is retried; anything else (a refusal, an untrusted broker, a
//! protocol violation, a closed client) is returned at once. Once the outage's budget is spent
//! ([`RetryBudget`](crate::RetryBudget)), the last cause is returned.
//!
//! An outage ends when the broker shows progress ([`Reconnector::progress`]: it accepted or delivered a
//! batch) or when a stream that had stayed up for [`STABLE_AFTER`] is lost: the next loss starts from the
//! first delay again.

use std::future::Future;
use std::time::Duration;

use crate::backoff::{Backoff, STABLE_AFTER};
use crate::error::{Error, Result};
use crate::options::Reconnect;

/// The reconnection state of one publisher, subscription or request: the backoff of the current outage
/// and the loss that started it.
#[derive(Debug)]
pub(crate) struct Reconnector {
    backoff: Backoff,
    /// Why the last stream was lost, until an attempt succeeds.
    loss: Option<Error>,
}

impl Reconnector {
    pub(crate) fn new(policy: Reconnect) -> Self {
        Self { backoff: Backoff::new(policy), loss: None }
    }

    /// Runs `attempt` until it succeeds, fails for a reason reconnecting cannot cure (returned at once),
    /// or the outage's budget is spent (the last cause is returned). While a loss is pending each
    /// attempt waits its turn first; without one (a first start) the first attempt is immediate.
    ///
    /// Cancel-safe: a cancelled run leaves the loss pending and the retries it used counted.
    pub(crate) async fn run<T, F>(&mut self, mut attempt: impl FnMut() -> F) -> Result<T>
    where
        F: Future<Output = Result<T>>,
    {
        loop {
            if let Some(cause) = &self.loss {
                self.backoff.wait(cause.clone()).await?;
            }
            match attempt().await {
                Ok(done) => {
                    self.loss = None;
                    return Ok(done);
                }
                Err(e) if Self::cures(&e) => self.loss = Some(e),
                Err(e) => return Err(e),
            }
        }
    }

    /// A stream that had been up for `age` was lost for `cause`: the next [`run`](Self::run) waits first.
    /// A stream that had stayed up for [`STABLE_AFTER`] starts a new outage.
    pub(crate) fn lost(&mut self, cause: Error, age: Option<Duration>) {
        if age.is_some_and(|age| age >= STABLE_AFTER) {
            self.backoff.reset();
        }
        self.loss = Some(cause);
    }

    /// Whether reconnecting may cure `e`: the one classification of failures (see the module docs).
    pub(crate) fn cures(e: &Error) -> bool {
        e.is_retryable()
    }

    /// The broker showed progress (accepted or delivered a batch): the outage is over.
    pub(crate) fn progress(&mut self) {
        self.backoff.reset();
    }

    /// The pending loss, if any; none is pending afterwards.
    pub(crate) fn take_loss(&mut self) -> Option<Error> {
        self.loss.take()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Action;
    use crate::options::RetryBudget;
    use sealpost_protocol::{ErrorCode, Topic};

    fn quick(max_retries: u32) -> Reconnector {
        Reconnector::new(Reconnect {
            initial_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(2),
            budget: RetryBudget::Retries(max_retries),
        })
    }

    fn lost() -> Error {
        Error::ConnectionLost { reason: "test".into() }
    }

    #[tokio::test]
    async fn transient_failures_are_retried_until_an_attempt_succeeds() {
        let mut r = quick(5);
        let mut attempts = 0;
        let got = r
            .run(|| {
                attempts += 1;
                let n = attempts;
                async move {
                    if n < 3 {
                        Err(lost())
                    } else {
                        Ok(n)
                    }
                }
            })
            .await;
        assert_eq!(got.unwrap(), 3);
        assert!(r.take_loss().is_none());
    }

    #[tokio::test]
    async fn a_refusal_is_returned_at_once_and_unavailable_is_retried() {
        let topic = Topic::new("demo.x").unwrap();
        let mut r = quick(5);
        let mut attempts = 0;
        let got: Result<()> = r
            .run(|| {
                attempts += 1;
                let code = if attempts == 1 { ErrorCode::UNAVAILABLE } else { ErrorCode::NOT_AUTHORIZED };
                let refusal = Error::refused(Action::Publish, &topic, code, "");
                async move { Err(refusal) }
            })
            .await;
        assert!(matches!(got, Err(Error::Refused { code: ErrorCode::NOT_AUTHORIZED, .. })));
        assert_eq!(attempts, 2);
    }

    #[tokio::test]
    async fn the_last_cause_is_returned_once_the_retries_are_used_up() {
        let mut r = quick(2);
        let mut attempts = 0;
        let got: Result<()> = r
            .run(|| {
                attempts += 1;
                let lost = Error::ConnectionLost { reason: format!("attempt {attempts}") };
                async move { Err(lost) }
            })
            .await;
        assert_eq!(got.unwrap_err().to_string(), "connection to the broker lost: attempt 3");
        // A loss keeps the outage going: no retry is left.
        r.lost(lost(), Some(Duration::ZERO));
        assert!(r.run(|| async { Ok(()) }).await.is_err());
        // A stream that had stayed up long starts a new outage.
        r.lost(lost(), Some(STABLE_AFTER));
        r.run(|| async { Ok(()) }).await.unwrap();
    }

    #[test]
    fn lost_connections_and_unavailable_are_cured_by_reconnecting_and_nothing_else() {
        let topic = Topic::new("demo.x").unwrap();
        let refused = |code| Error::refused(Action::Subscribe, &topic, code, "");
        assert!(Reconnector::cures(&lost()));
        assert!(Reconnector::cures(&Error::Unreachable { addr: "x".into(), reason: "y".into() }));
        assert!(Reconnector::cures(&refused(ErrorCode::UNAVAILABLE)));
        assert!(!Reconnector::cures(&refused(ErrorCode::NOT_AUTHORIZED)));
        assert!(!Reconnector::cures(&Error::Closed));
        assert!(!Reconnector::cures(&Error::BrokerNotTrusted { reason: "z".into() }));
    }
}
