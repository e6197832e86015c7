//! The policy cache: the current verified policy of each topic, for publish checks and policy updates.
//!
//! [`PolicyCache`] answers "what is the current policy of this topic?" from memory once it has read the
//! store for the topic, and guarantees:
//!
//! - **Only verified policies count.** A policy read from the store is decoded within the frame limits and
//!   verified against the configured topic authority; one that does not verify (the configuration changed)
//!   counts as none, and is logged. Without an authority no topic has a policy.
//! - **A stored policy is current at once.** When the writer has made a new policy durable, the driver
//!   hands it to [`PolicyCache::stored`], and publish checks use it from then on. With a store only this
//!   broker writes, its writer is the only path by which policies reach the store, so the cache never
//!   goes stale; with a shared one (JetStream), a policy stored through another broker makes the shell
//!   [`clear`](PolicyCache::clear) the cache as soon as this broker learns of it.
//!
//! The lock is never held while the store is read (two readers of an uncached topic may both read it; they
//! read the same policy). The cache keeps an entry per topic asked about.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use sealpost_protocol::{Limits, PublicKey, SignedPolicy, Topic, VerifiedPolicy};
use tracing::warn;

use crate::store::Store;
use crate::Result;

/// See the [module documentation](self).
#[derive(Debug)]
pub struct PolicyCache {
    authority: Option<PublicKey>,
    limits: Limits,
    /// The current policy of each topic asked about (`None`: it has none), verified against `authority`.
    entries: Mutex<HashMap<Topic, Option<Arc<VerifiedPolicy>>>>,
}

impl PolicyCache {
    /// An empty cache of policies signed by `authority` (none if `None`), decoded within `limits`.
    pub fn new(authority: Option<PublicKey>, limits: Limits) -> PolicyCache {
        PolicyCache { authority, limits, entries: Mutex::new(HashMap::new()) }
    }

    /// The configured topic authority.
    pub fn authority(&self) -> Option<&PublicKey> {
        self.authority.as_ref()
    }

    fn entries(&self) -> MutexGuard<'_, HashMap<Topic, Option<Arc<VerifiedPolicy>>>> {
        // The map holds no invariant a panicking holder could break: recover it.
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The current policy of `topic`, from the cache or else from `store` (its newest stored policy).
    pub fn current(&self, topic: &Topic, store: &dyn Store) -> Result<Option<Arc<VerifiedPolicy>>> {
        if let Some(cached) = self.entries().get(topic) {
            return Ok(cached.clone());
        }
        let newest = store.policies(topic, 1)?.pop();
        let policy = match (newest, &self.authority) {
            (Some(bytes), Some(authority)) => SignedPolicy::decode(bytes, &self.limits)
                .and_then(|p| p.verify(authority))
                .map(Arc::new)
                .map_err(|e| warn!(%topic, error = %e, "stored policy does not verify; ignoring it"))
                .ok(),
            _ => None,
        };
        self.entries().insert(topic.clone(), policy.clone());
        Ok(policy)
    }

    /// Forgets every cached policy: each is read from the store again when next asked for.
    pub fn clear(&self) {
        self.entries().clear();
    }

    /// Makes `policy`, which the writer has just made durable, its topic's current policy.
    pub fn stored(&self, policy: VerifiedPolicy) {
        self.entries().insert(policy.topic().clone(), Some(Arc::new(policy)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::testing::{authority, policy, topic};
    use crate::store::MemoryStore;

    fn epoch(p: Option<Arc<VerifiedPolicy>>) -> Option<u64> {
        p.map(|p| p.epoch().0)
    }

    #[test]
    fn the_current_policy_is_read_once_then_cached() {
        let store = MemoryStore::new();
        let cache = PolicyCache::new(Some(authority().public_key()), Limits::default());
        let chat = topic("demo.chat");
        assert_eq!(epoch(cache.current(&chat, &store).unwrap()), None);
        // Written behind the cache's back: not seen (only the writer stores policies, and it tells the cache).
        let first = policy("demo.chat", 1, None);
        store.put_policy(&chat, 1, first.as_bytes()).unwrap();
        assert_eq!(epoch(cache.current(&chat, &store).unwrap()), None);
        let fresh = PolicyCache::new(Some(authority().public_key()), Limits::default());
        assert_eq!(epoch(fresh.current(&chat, &store).unwrap()), Some(1));
    }

    #[test]
    fn a_stored_policy_is_current_at_once() {
        let store = MemoryStore::new();
        let cache = PolicyCache::new(Some(authority().public_key()), Limits::default());
        let chat = topic("demo.chat");
        let first = policy("demo.chat", 1, None);
        store.put_policy(&chat, 1, first.as_bytes()).unwrap();
        assert_eq!(epoch(cache.current(&chat, &store).unwrap()), Some(1));
        let second = policy("demo.chat", 2, Some(&first));
        store.put_policy(&chat, 2, second.as_bytes()).unwrap();
        cache.stored(second);
        assert_eq!(epoch(cache.current(&chat, &store).unwrap()), Some(2));
    }

    #[test]
    fn a_stored_policy_that_does_not_verify_counts_as_none() {
        let store = MemoryStore::new();
        let chat = topic("demo.chat");
        store.put_policy(&chat, 1, policy("demo.chat", 1, None).as_bytes()).unwrap();
        let other = sealpost_protocol::SigningKey::from_bytes(&[0xBB; 32]).public_key();
        let cache = PolicyCache::new(Some(other), Limits::default());
        assert_eq!(epoch(cache.current(&chat, &store).unwrap()), None);
        let without_authority = PolicyCache::new(None, Limits::default());
        assert_eq!(epoch(without_authority.current(&chat, &store).unwrap()), None);
    }
}
