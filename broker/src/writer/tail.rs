//! The tail: the batches the writer appended most recently, kept in memory for subscribers. Sans-IO.
//!
//! Subscribers that keep up read what was just made durable. So that they need not go to the store (a
//! blocking read, off the async workers) for it, the writer also keeps the batches it appends in memory,
//! per topic, in offset order, up to a byte budget shared by all topics; the oldest are dropped first.
//! [`Log::read_tail`](super::Log::read_tail) serves a read from here when the tail covers the offset asked,
//! and says so when it does not (the caller then reads the store).
//!
//! It guarantees that a read it answers is what [`Store::read`](crate::store::Store::read) would answer:
//! it holds the very `Bytes` that went to the store (shared, not copied), per topic contiguous and in
//! offset order, and it answers only from the first batch it holds on, and never with nothing (the store
//! is then read). It holds **durable batches only**: the writer adds a group's batches once their sync
//! succeeded, so a failed group leaves nothing here whose offsets could be reused. With a shared log
//! ([`Store::share`](crate::store::Store::share)) the batches other brokers commit join it too; a batch
//! it holds already is not added twice.

use std::collections::{HashMap, VecDeque};

use sealpost_protocol::{Offset, Topic};

use crate::store::StoredBatch;

/// The batches most recently appended, per topic, within a byte budget over all topics.
#[derive(Debug)]
pub(super) struct Tail {
    budget: usize,
    bytes: usize,
    /// Per topic, contiguous batches in offset order.
    topics: HashMap<Topic, VecDeque<StoredBatch>>,
    /// Every cached batch's topic and size, oldest first: what to drop to stay within the budget.
    order: VecDeque<(Topic, usize)>,
}

impl Tail {
    /// An empty tail that keeps at most `budget` bytes of batches (0: none).
    pub(super) fn new(budget: usize) -> Self {
        Self { budget, bytes: 0, topics: HashMap::new(), order: VecDeque::new() }
    }

    /// Adds the batch just appended to `topic`. A batch that does not continue the topic's cached batches
    /// (it cannot happen while the writer clears the tail on failure) replaces them.
    pub(super) fn push(&mut self, topic: &Topic, batch: StoredBatch) {
        let size = batch.bytes.len();
        if size > self.budget {
            self.remove(topic);
            return;
        }
        let contiguous = match self.topics.get(topic).and_then(|b| b.back()) {
            // Held already: a shared log's batch comes from this broker's sync and from the follower.
            Some(last) if batch.end() <= last.end() => return,
            Some(last) => last.end() == batch.offset,
            None => true,
        };
        if !contiguous {
            self.remove(topic);
        }
        self.topics.entry(topic.clone()).or_default().push_back(batch);
        self.order.push_back((topic.clone(), size));
        self.bytes += size;
        while self.bytes > self.budget {
            let Some((oldest, size)) = self.order.pop_front() else { break };
            self.bytes -= size;
            if let Some(batches) = self.topics.get_mut(&oldest) {
                batches.pop_front();
                if batches.is_empty() {
                    self.topics.remove(&oldest);
                }
            }
        }
    }

    /// Forgets `topic`'s batches and their entries in `order`.
    fn remove(&mut self, topic: &Topic) {
        if let Some(batches) = self.topics.remove(topic) {
            let gone: usize = batches.iter().map(|b| b.bytes.len()).sum();
            self.bytes -= gone;
            self.order.retain(|(t, _)| t != topic);
        }
    }

    /// What [`Store::read`](crate::store::Store::read) would return for `topic` from `from` within
    /// `max_bytes`, if the tail covers `from`; `None` if it does not.
    pub(super) fn read(&self, topic: &Topic, from: Offset, max_bytes: usize) -> Option<Vec<StoredBatch>> {
        let batches = self.topics.get(topic)?;
        let first = batches.front()?;
        if from < first.offset {
            return None;
        }
        // Batches are contiguous and ordered: the first one that ends after `from` contains it or follows it.
        let start = batches.partition_point(|b| b.end() <= from);
        let mut out = Vec::new();
        let mut total = 0usize;
        for batch in batches.range(start..) {
            total = total.saturating_add(batch.bytes.len());
            if !out.is_empty() && total > max_bytes {
                break;
            }
            out.push(batch.clone());
        }
        // Nothing from `from` on: the store may hold more (another broker's batches, with a shared log).
        (!out.is_empty()).then_some(out)
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    fn topic(s: &str) -> Topic {
        Topic::new(s).unwrap()
    }

    fn stored(offset: u64, count: u32, len: usize) -> StoredBatch {
        StoredBatch { offset: Offset(offset), count, bytes: Bytes::from(vec![0; len]) }
    }

    fn offsets(batches: &[StoredBatch]) -> Vec<(u64, u32)> {
        batches.iter().map(|b| (b.offset.0, b.count)).collect()
    }

    #[test]
    fn the_tail_drops_the_oldest_batches_of_any_topic_to_stay_within_its_budget() {
        let (a, b) = (topic("demo.a"), topic("demo.b"));
        let mut tail = Tail::new(300);
        tail.push(&a, stored(0, 1, 100));
        tail.push(&b, stored(0, 1, 100));
        tail.push(&a, stored(1, 1, 100));
        assert_eq!(offsets(&tail.read(&a, Offset(0), usize::MAX).unwrap()), [(0, 1), (1, 1)]);
        // Over budget: a's first batch, the oldest of all, goes; a read from it now misses.
        tail.push(&b, stored(1, 1, 100));
        assert!(tail.read(&a, Offset(0), usize::MAX).is_none());
        assert_eq!(offsets(&tail.read(&a, Offset(1), usize::MAX).unwrap()), [(1, 1)]);
        assert_eq!(offsets(&tail.read(&b, Offset(0), usize::MAX).unwrap()), [(0, 1), (1, 1)]);
        assert_eq!(tail.bytes, 300);
        // A batch larger than the whole budget is not kept, nor is anything before it on its topic.
        tail.push(&b, stored(2, 1, 301));
        assert!(tail.read(&b, Offset(2), usize::MAX).is_none());
        assert_eq!(tail.bytes, 100);
        tail.push(&a, stored(2, 1, 100));
        assert_eq!(offsets(&tail.read(&a, Offset(1), usize::MAX).unwrap()), [(1, 1), (2, 1)]);
    }

    #[test]
    fn the_tail_restarts_a_topic_at_a_batch_that_does_not_continue_it() {
        let a = topic("demo.a");
        let mut tail = Tail::new(1000);
        tail.push(&a, stored(0, 2, 10));
        tail.push(&a, stored(5, 1, 10));
        assert!(tail.read(&a, Offset(0), usize::MAX).is_none());
        assert_eq!(offsets(&tail.read(&a, Offset(5), usize::MAX).unwrap()), [(5, 1)]);
        assert_eq!(tail.bytes, 10);
        // Past the end: nothing here, so the store is read (another broker may have appended there).
        assert!(tail.read(&a, Offset(6), usize::MAX).is_none());
    }

    #[test]
    fn a_batch_the_tail_holds_already_is_not_added_twice() {
        // A shared log's batch comes from this broker's sync and from what the others commit.
        let a = topic("demo.a");
        let mut tail = Tail::new(1000);
        tail.push(&a, stored(0, 2, 10));
        tail.push(&a, stored(2, 1, 10));
        tail.push(&a, stored(0, 2, 10));
        tail.push(&a, stored(2, 1, 10));
        assert_eq!(offsets(&tail.read(&a, Offset(0), usize::MAX).unwrap()), [(0, 2), (2, 1)]);
        assert_eq!(tail.bytes, 20);
        tail.push(&a, stored(3, 1, 10));
        assert_eq!(offsets(&tail.read(&a, Offset(1), usize::MAX).unwrap()), [(0, 2), (2, 1), (3, 1)]);
    }

    #[test]
    fn a_tail_without_budget_keeps_nothing() {
        let a = topic("demo.a");
        let mut tail = Tail::new(0);
        tail.push(&a, stored(0, 1, 1));
        assert!(tail.read(&a, Offset(0), usize::MAX).is_none());
        assert_eq!(tail.bytes, 0);
    }
}
