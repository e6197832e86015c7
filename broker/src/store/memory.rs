//! The in-memory engine: the [`Store`] contract without a disk, for tests and ephemeral brokers.
//!
//! All state lives behind one mutex, so each call is atomic. [`Store::sync`] only counts: nothing survives
//! the process, and "durable" means "stored in this process". Retention weighs each batch as a unit of its
//! own (the units of [`crate::retention`]) with no age: `max_age_secs` does not apply to this engine.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use bytes::Bytes;
use sealpost_protocol::{ChainId, DurableKey, Offset, Principal, PublicKey, Topic};

use std::time::SystemTime;

use super::{offset_mismatch, retired_range, Append, PublisherRecord, Retained, Store, Stored, StoredBatch};
use crate::retention::{self, Part, Retention, Totals, Unit};
use crate::{Error, Result};

/// A [`Store`] held in memory.
#[derive(Debug, Default)]
pub struct MemoryStore {
    state: Mutex<State>,
    syncs: AtomicU64,
}

#[derive(Debug, Default)]
struct State {
    /// Per topic: first offset -> (count, bytes).
    batches: HashMap<Topic, BTreeMap<Offset, (u32, Bytes)>>,
    /// Per (topic, publisher, chain): first_seq -> record.
    publishers: HashMap<(Topic, PublicKey, ChainId), BTreeMap<u64, PublisherRecord>>,
    /// (topic, principal, name) -> committed next offset.
    durables: HashMap<(Topic, Principal, String), Offset>,
    /// Per topic: epoch -> signed policy.
    policies: HashMap<Topic, BTreeMap<u64, Bytes>>,
    /// Per topic: the offset below which retention removed its batches.
    retired: HashMap<Topic, Offset>,
    /// Every batch stored, in the order of arrival: arrival number -> (topic, first offset).
    arrivals: BTreeMap<u64, (Topic, Offset)>,
    next_arrival: u64,
    /// Batches that arrived before this number were covered by a sync.
    synced_arrival: u64,
}

impl State {
    fn next_offset(&self, topic: &Topic) -> Offset {
        self.batches
            .get(topic)
            .and_then(|log| log.last_key_value())
            .map(|(offset, (count, _))| offset.saturating_add((*count).into()))
            .unwrap_or_else(|| self.first_offset(topic))
    }

    fn first_offset(&self, topic: &Topic) -> Offset {
        self.retired.get(topic).copied().unwrap_or(Offset::ZERO)
    }
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn state(&self) -> Result<MutexGuard<'_, State>> {
        // A poisoned lock means a panic mid-call, which no call here can cause; refuse rather than guess.
        self.state.lock().map_err(|_| Error::Storage("memory store lock poisoned".into()))
    }
}

impl Store for MemoryStore {
    fn append(&self, batch: Append<'_>) -> Result<()> {
        let (topic, record) = (batch.topic(), batch.record());
        let mut state = self.state()?;
        let next = state.next_offset(topic);
        if record.offset != next {
            return Err(offset_mismatch(topic, next, record.offset));
        }
        state
            .batches
            .entry(topic.clone())
            .or_default()
            .insert(record.offset, (record.count, batch.bytes().clone()));
        let arrival = state.next_arrival;
        state.next_arrival += 1;
        state.arrivals.insert(arrival, (topic.clone(), record.offset));
        state
            .publishers
            .entry((topic.clone(), *batch.publisher(), batch.chain()))
            .or_default()
            .insert(record.first_seq, record);
        Ok(())
    }

    fn sync(&self) -> Result<()> {
        let mut state = self.state()?;
        state.synced_arrival = state.next_arrival;
        self.syncs.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    fn read(&self, topic: &Topic, from: Offset, max_bytes: usize) -> Result<Vec<Stored>> {
        let state = self.state()?;
        let retired = retired_range(from, state.first_offset(topic));
        let from = from.max(state.first_offset(topic));
        let Some(log) = state.batches.get(topic) else { return Ok(retired.into_iter().collect()) };
        // Start at the batch containing `from` if there is one, else at the first one after it.
        let start = match log.range(..=from).next_back() {
            Some((&offset, &(count, _))) if offset.saturating_add(count.into()) > from => offset,
            _ => from.saturating_add(1),
        };
        let mut out: Vec<Stored> = retired.into_iter().collect();
        let mut total = 0usize;
        for (&offset, (count, bytes)) in log.range(start..) {
            if !out.is_empty() && total.saturating_add(bytes.len()) > max_bytes {
                break;
            }
            total = total.saturating_add(bytes.len());
            out.push(Stored::Batch(StoredBatch { offset, count: *count, bytes: bytes.clone() }));
        }
        Ok(out)
    }

    fn next_offset(&self, topic: &Topic) -> Result<Offset> {
        Ok(self.state()?.next_offset(topic))
    }

    fn first_offset(&self, topic: &Topic) -> Result<Offset> {
        Ok(self.state()?.first_offset(topic))
    }

    fn retain(&self, rules: &Retention, _now: SystemTime) -> Result<Retained> {
        if rules.is_empty() {
            return Ok(Retained::default());
        }
        let mut state = self.state()?;
        let mut units = Vec::new();
        let mut rest = Totals::new();
        for (&arrival, (topic, offset)) in &state.arrivals {
            let Some(&(count, ref bytes)) = state.batches.get(topic).and_then(|log| log.get(offset)) else {
                continue;
            };
            let part = Part {
                end: offset.saturating_add(count.into()),
                bytes: bytes.len() as u64,
                messages: count.into(),
            };
            if arrival < state.synced_arrival {
                let parts = BTreeMap::from([(topic.clone(), part)]);
                units.push(Unit { age: None, bytes: part.bytes, parts });
            } else {
                let sum = rest.entry(topic.clone()).or_default();
                sum.end = sum.end.max(part.end);
                sum.bytes += part.bytes;
                sum.messages += part.messages;
            }
        }
        let plan = retention::plan(rules, &units, &rest);
        let mut done = Retained::default();
        for (topic, before) in plan.retire {
            if before <= state.first_offset(&topic) {
                continue;
            }
            let State { batches, arrivals, retired, .. } = &mut *state;
            if let Some(log) = batches.get_mut(&topic) {
                let kept = log.split_off(&before);
                for (_, (_, bytes)) in std::mem::replace(log, kept) {
                    done.segments_removed += 1;
                    done.bytes_freed += bytes.len() as u64;
                }
            }
            arrivals.retain(|_, (t, offset)| *t != topic || *offset >= before);
            retired.insert(topic.clone(), before);
            done.topics.push((topic, before));
        }
        Ok(done)
    }

    fn publisher_record(
        &self,
        topic: &Topic,
        publisher: &PublicKey,
        chain: ChainId,
        first_seq: u64,
    ) -> Result<Option<PublisherRecord>> {
        let state = self.state()?;
        Ok(state
            .publishers
            .get(&(topic.clone(), *publisher, chain))
            .and_then(|records| records.get(&first_seq))
            .copied())
    }

    fn publisher_head(
        &self,
        topic: &Topic,
        publisher: &PublicKey,
        chain: ChainId,
    ) -> Result<Option<PublisherRecord>> {
        let state = self.state()?;
        Ok(state
            .publishers
            .get(&(topic.clone(), *publisher, chain))
            .and_then(|records| records.last_key_value())
            .map(|(_, r)| *r))
    }

    fn durable_offset(&self, topic: &Topic, principal: &Principal, name: &str) -> Result<Option<Offset>> {
        let state = self.state()?;
        Ok(state.durables.get(&(topic.clone(), principal.clone(), name.to_owned())).copied())
    }

    fn set_durable_offset(
        &self,
        topic: &Topic,
        principal: &Principal,
        name: &str,
        next_offset: Offset,
    ) -> Result<()> {
        let mut state = self.state()?;
        state.durables.insert((topic.clone(), principal.clone(), name.to_owned()), next_offset);
        Ok(())
    }

    fn put_policy(&self, topic: &Topic, epoch: u64, policy: &Bytes) -> Result<()> {
        self.state()?.policies.entry(topic.clone()).or_default().insert(epoch, policy.clone());
        Ok(())
    }

    fn policies(&self, topic: &Topic, max: usize) -> Result<Vec<Bytes>> {
        let state = self.state()?;
        let Some(all) = state.policies.get(topic) else { return Ok(Vec::new()) };
        let mut newest: Vec<Bytes> = all.values().rev().take(max).cloned().collect();
        newest.reverse();
        Ok(newest)
    }

    fn policy_history(
        &self,
        topic: &Topic,
        before: Option<u64>,
        max: usize,
        max_bytes: usize,
    ) -> Result<Vec<Bytes>> {
        let state = self.state()?;
        let Some(all) = state.policies.get(topic) else { return Ok(Vec::new()) };
        let below = all.range(..before.unwrap_or(u64::MAX)).rev().map(|(_, p)| Ok(p.clone()));
        super::history_page(below, max, max_bytes)
    }

    fn syncs(&self) -> u64 {
        self.syncs.load(Ordering::SeqCst)
    }

    fn topics(&self, after: Option<&Topic>, max: usize) -> Result<Vec<Topic>> {
        let state = self.state()?;
        let mut topics: Vec<&Topic> = state.batches.keys().filter(|t| after.is_none_or(|a| *t > a)).collect();
        topics.sort();
        Ok(topics.into_iter().take(max).cloned().collect())
    }

    fn durables(&self, after: Option<&DurableKey>, max: usize) -> Result<Vec<(DurableKey, Offset)>> {
        let state = self.state()?;
        let mut rows: Vec<(DurableKey, Offset)> = state
            .durables
            .iter()
            .map(|((topic, principal, name), offset)| {
                (
                    DurableKey { topic: topic.clone(), principal: principal.clone(), name: name.clone() },
                    *offset,
                )
            })
            .filter(|(key, _)| after.is_none_or(|a| key > a))
            .collect();
        rows.sort();
        rows.truncate(max);
        Ok(rows)
    }
}
