//! Durable ends: per topic, a watch of the offset up to which the topic is durable.
//!
//! Subscribers deliver only below a topic's durable end and wait for it to change. It guarantees that a
//! durable end never runs ahead of the disk: the writer thread advances it only after a successful sync
//! ([`publish`](DurableEnds::publish)), and before it first writes to a topic after a sync it makes sure a
//! watch exists ([`before_write`](DurableEnds::before_write)), so that [`subscribe`](DurableEnds::subscribe)
//! never initialises one from a store that already holds undurable batches.
//!
//! # Locks
//!
//! One mutex guards the map of watches. [`subscribe`](DurableEnds::subscribe) holds it while it reads the
//! store (the store's locks are taken inside it, never the other way round); the writer thread takes it
//! only briefly and never while calling the store.

use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, MutexGuard, PoisonError};

use sealpost_protocol::{Offset, Topic};
use tokio::sync::watch;

use crate::store::Store;
use crate::Result;

/// The durable-end watches of every topic someone watches or the writer has written since its last sync.
#[derive(Debug, Default)]
pub(super) struct DurableEnds {
    /// An entry exists for every topic the writer has appended to since the last successful sync, so a
    /// missing entry means the store holds nothing undurable for that topic.
    watches: Mutex<HashMap<Topic, watch::Sender<Offset>>>,
}

impl DurableEnds {
    fn watches(&self) -> MutexGuard<'_, HashMap<Topic, watch::Sender<Offset>>> {
        // The map only holds senders; a panic elsewhere cannot leave it inconsistent.
        self.watches.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A watch of `topic`'s durable end, created from `store` if nobody watches it and the writer has not
    /// written it since its last sync.
    pub(super) fn subscribe(&self, topic: &Topic, store: &dyn Store) -> Result<watch::Receiver<Offset>> {
        let mut watches = self.watches();
        if let Some(sender) = watches.get(topic) {
            return Ok(sender.subscribe());
        }
        // No entry: the writer has not appended to the topic since its last successful sync, and cannot
        // start before we release the lock, so the store's end is durable.
        let end = store.next_offset(topic)?;
        let (sender, receiver) = watch::channel(end);
        watches.insert(topic.clone(), sender);
        Ok(receiver)
    }

    /// Called by the writer before its first write to `topic` since its last successful sync, while
    /// `durable` is what the store holds of it: makes sure a watch exists.
    pub(super) fn before_write(&self, topic: &Topic, durable: Offset) {
        self.watches().entry(topic.clone()).or_insert_with(|| watch::channel(durable).0);
    }

    /// Another broker made `topic` durable up to `end` (a shared log, [`Store::share`]): moves its watch
    /// there if one exists and is behind. Without a watch there is nothing to do: one made later reads
    /// the store.
    pub(super) fn raise(&self, topic: &Topic, end: Offset) {
        if let Some(sender) = self.watches().get(topic) {
            raise(sender, end);
        }
    }

    /// Called by the writer after a successful sync: each topic of `ends` is durable up to its offset.
    /// Watches nobody holds are dropped unless their topic is still `pending` (written, not yet synced).
    pub(super) fn publish(&self, ends: Vec<(Topic, Offset)>, pending: &HashSet<Topic>) {
        let mut watches = self.watches();
        for (topic, end) in ends {
            if let Some(sender) = watches.get(&topic) {
                raise(sender, end);
                if sender.receiver_count() == 0 && !pending.contains(&topic) {
                    // Nobody waits and nothing is pending: `subscribe` can recreate it from the store.
                    watches.remove(&topic);
                }
            }
        }
    }
}

/// Moves `sender`'s end up to `end`; never back (two sources move it: this broker's syncs and, with a
/// shared log, what the others commit).
fn raise(sender: &watch::Sender<Offset>, end: Offset) {
    sender.send_if_modified(|v| {
        let changed = *v < end;
        if changed {
            *v = end;
        }
        changed
    });
}
