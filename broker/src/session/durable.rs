//! Durable subscriptions are served one subscriber at a time: exclusive consumption with failover.
//!
//! A durable subscription is one cursor (the offset its acks commit), so two subscribers reading it at
//! once would each get every message while their acks overwrote each other. The broker serves each
//! (topic, principal, name) to one subscription at a time: the first holds its [`DurableLease`], and a
//! second subscription of the same name **stands by** (it is not answered) until the lease is given back,
//! when the subscription holding it ends (unsubscribed, its stream or connection gone, or refused), after
//! its last acks are committed. The standby then starts from the committed offset: the replicas of a
//! service can all subscribe, one reads, and another takes over when it stops. A subscriber whose process
//! is killed is noticed when its connection times out (`limits.idle_timeout_ms`), so failover takes up to
//! that long.
//!
//! The lease table is synchronous; [`DurableLeases::released`] wakes the standbys (a `tokio::sync::Notify`,
//! no I/O) to try again.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, PoisonError};

use sealpost_protocol::{Principal, Topic};
use tokio::sync::Notify;

/// What names a durable subscription: its topic, its subscriber and its name.
pub type DurableKey = (Topic, Principal, String);

/// Which durable subscriptions are being served, broker-wide.
#[derive(Debug, Default)]
pub struct DurableLeases {
    held: Mutex<HashSet<DurableKey>>,
    released: Notify,
}

impl DurableLeases {
    /// The lease of `key`, if no subscription holds it.
    pub fn try_take(self: &Arc<Self>, key: DurableKey) -> Option<DurableLease> {
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        held.insert(key.clone()).then(|| DurableLease { leases: self.clone(), key })
    }

    /// Notified each time a lease is given back. Register the wait (`enable` the `notified()` future)
    /// before [`try_take`](Self::try_take), so that a release between the two is not missed.
    pub fn released(&self) -> &Notify {
        &self.released
    }

    /// How many durable subscriptions are served now.
    pub fn held(&self) -> usize {
        self.held.lock().unwrap_or_else(PoisonError::into_inner).len()
    }
}

/// The right to serve one durable subscription; given back when dropped.
#[derive(Debug)]
pub struct DurableLease {
    leases: Arc<DurableLeases>,
    key: DurableKey,
}

impl Drop for DurableLease {
    fn drop(&mut self) {
        self.leases.held.lock().unwrap_or_else(PoisonError::into_inner).remove(&self.key);
        self.leases.released.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str) -> DurableKey {
        ("demo.chat".parse().unwrap(), "bob".parse().unwrap(), name.to_owned())
    }

    #[test]
    fn one_holder_per_durable_subscription_and_the_next_takes_over_when_it_is_dropped() {
        let leases = Arc::new(DurableLeases::default());
        let first = leases.try_take(key("workers")).expect("free");
        assert!(leases.try_take(key("workers")).is_none(), "held");
        let other = leases.try_take(key("audit")).expect("another name is another subscription");
        assert_eq!(leases.held(), 2);
        drop(first);
        assert!(leases.try_take(key("workers")).is_some(), "given back");
        drop(other);
    }

    #[tokio::test]
    async fn a_standby_registered_before_the_release_is_woken() {
        let leases = Arc::new(DurableLeases::default());
        let first = leases.try_take(key("workers")).unwrap();
        let released = leases.released().notified();
        tokio::pin!(released);
        released.as_mut().enable();
        assert!(leases.try_take(key("workers")).is_none());
        drop(first);
        released.await;
        assert!(leases.try_take(key("workers")).is_some());
    }
}
