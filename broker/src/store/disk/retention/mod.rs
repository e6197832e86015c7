//! Retention on disk: what the segments hold per topic, retiring a topic's oldest offsets, and giving
//! whole segment files back to the file system.
//!
//! # Why whole segments, in one shared log
//!
//! Every topic's records go to one append-only log of segment files, so that a group commit costs one
//! fdatasync whatever the topics it holds (per-topic files would cost one per topic written in a group).
//! Retention therefore works as Kafka's does, a segment at a time: the [planner](crate::retention) sees each
//! closed segment as a unit, and a segment file is deleted once every batch in it is retired. The price:
//! a topic with a short retention that shares segments with a long-lived one gives its space back only
//! when the long-lived topic's batches in those segments go too (or the `max_total_bytes` budget takes
//! them). Copying the live batches of such segments forward (compaction) would lift that; it is not built.
//! `storage.segment_bytes` sets the unit: smaller segments give space back sooner, at one more file each.
//!
//! # Retiring a topic's offsets
//!
//! [`DiskStore::retire`](super::DiskStore) appends a `retired` record (the topic, and the offset below which
//! every batch is gone), then sets the topic's `r` key, then removes its `b` keys below that offset. The
//! first offset of a topic is its `r` value; readers asking for less are told ([`LossReason::Retired`]).
//! Publisher records (`p`, `c` keys) stay until the segment holding their batch is deleted, and the last
//! one of each chain stays for good: it is the chain head a publisher's next process asks for.
//!
//! # Deleting a segment
//!
//! Before a segment file goes, whatever in it is still needed is appended again (**carried forward**) to
//! the active segment: the topic policies (all of them, which the index keeps for good), durable offsets
//! whose newest commit it holds, lost ranges not retired, each topic's `retired` mark, the layout mark,
//! and a `head` record for each chain whose last batch it holds. Then the store syncs, making the index
//! durable too, and only then is the file deleted (and its folder fsynced): after a crash at any point,
//! the index and the segments left still agree, and an index rebuilt from the segments alone finds every
//! policy, offset and chain head again. A segment is deleted only if no index entry names a record in it.
//!
//! [`LossReason::Retired`]: crate::store::LossReason::Retired

use std::collections::BTreeMap;
use std::time::SystemTime;

use sealpost_protocol::{Offset, Topic};

use super::index::{
    self, batch_key, decode_durable, durable_key, durable_value, policy_key, publisher_key, retired_key,
    sled_error, Slot,
};
use super::journal::Reserve;
use super::record::{self, Record};
use super::segment::{self, ClosedSegment, Location, Walked};
use super::DiskStore;
use crate::retention::{self, Part, Retention, Totals, Unit};
use crate::store::{lock, Retained};
use crate::Result;

/// What each segment holds of each topic's batches: the parts the planner weighs. Kept in memory, built
/// from the index when the store opens and updated by every append.
#[derive(Debug, Default)]
pub(super) struct Spans {
    by_segment: BTreeMap<u64, BTreeMap<Topic, Part>>,
}

impl Spans {
    /// Counts a batch of `topic` ending at `end`, with `count` messages, stored at `at`.
    pub fn add(&mut self, topic: &Topic, end: Offset, count: u32, at: &Location) {
        let parts = self.by_segment.entry(at.segment).or_default();
        let part = match parts.get_mut(topic) {
            Some(part) => part,
            None => parts.entry(topic.clone()).or_default(),
        };
        part.end = part.end.max(end);
        part.bytes = part.bytes.saturating_add(u64::from(at.len).saturating_add(segment::RECORD_HEADER));
        part.messages = part.messages.saturating_add(count.into());
    }

    /// Builds the spans of every batch the index of `db` names.
    pub fn of_index(db: &sled::Db) -> Result<Spans> {
        let mut spans = Spans::default();
        for kv in db.scan_prefix([index::BATCH]) {
            let (k, v) = kv.map_err(sled_error)?;
            if let Slot::Batch(entry) = Slot::decode(&k, &v)? {
                let topic = super::codec::split_topic(&k[1..])
                    .map(|(t, _)| t)
                    .ok_or_else(|| super::codec::corrupt("batch key"))?;
                spans.add(&topic, entry.end(), entry.count, &entry.location);
            }
        }
        Ok(spans)
    }
}

impl DiskStore {
    /// One retention pass (see the module documentation and [`crate::retention`]).
    pub(super) fn enforce(&self, rules: &Retention, now: SystemTime) -> Result<Retained> {
        let _pass = lock(&self.retention_pass, "retention pass")?;
        let closed = self.segments().closed()?;
        let (units, rest) = self.units(&closed, now)?;
        let plan = retention::plan(rules, &units, &rest);
        let mut done = Retained::default();
        for (topic, before) in &plan.retire {
            if self.retire(topic, *before)? {
                done.topics.push((topic.clone(), *before));
            }
        }
        let mut carried = Vec::new();
        for &i in &plan.remove {
            let Some(segment) = closed.get(i) else { continue };
            if self.carry_forward(segment.number)? {
                carried.push(*segment);
            }
        }
        if carried.is_empty() {
            return Ok(done);
        }
        // The carried records and the index without the segments' entries must be durable before the
        // files go.
        self.meta_dirty.store(true, std::sync::atomic::Ordering::SeqCst);
        super::Store::sync(self)?;
        for segment in carried {
            self.segments().remove(segment.number)?;
            lock(&self.spans, "segment spans")?.by_segment.remove(&segment.number);
            done.segments_removed += 1;
            done.bytes_freed = done.bytes_freed.saturating_add(segment.len);
        }
        Ok(done)
    }

    /// The closed segments as units for the planner, and the parts beyond them, without what retention
    /// already retired.
    fn units(&self, closed: &[ClosedSegment], now: SystemTime) -> Result<(Vec<Unit>, Totals)> {
        let spans = lock(&self.spans, "segment spans")?;
        let mut firsts: BTreeMap<Topic, Offset> = BTreeMap::new();
        let mut live = |topic: &Topic, part: &Part| -> Result<bool> {
            let first = match firsts.get(topic) {
                Some(first) => *first,
                None => *firsts.entry(topic.clone()).or_insert(index::retired(&self.db, topic)?),
            };
            Ok(part.end > first)
        };
        let mut units = Vec::with_capacity(closed.len());
        for segment in closed {
            let mut parts = BTreeMap::new();
            for (topic, part) in spans.by_segment.get(&segment.number).into_iter().flatten() {
                if live(topic, part)? {
                    parts.insert(topic.clone(), *part);
                }
            }
            let age = segment.modified.and_then(|m| now.duration_since(m).ok());
            units.push(Unit { age, bytes: segment.len, parts });
        }
        let after = closed.last().map_or(0, |s| s.number.saturating_add(1));
        let mut rest = Totals::new();
        for (_, parts) in spans.by_segment.range(after..) {
            for (topic, part) in parts {
                if live(topic, part)? {
                    let sum = rest.entry(topic.clone()).or_default();
                    sum.end = sum.end.max(part.end);
                    sum.bytes = sum.bytes.saturating_add(part.bytes);
                    sum.messages = sum.messages.saturating_add(part.messages);
                }
            }
        }
        Ok((units, rest))
    }

    /// Retires every batch of `topic` below `before` (a batch boundary). Returns whether anything moved.
    pub(super) fn retire(&self, topic: &Topic, before: Offset) -> Result<bool> {
        if before <= index::retired(&self.db, topic)? || before > index::end_of(&self.db, topic)? {
            return Ok(false);
        }
        self.journal.append(&[&record::retired(topic, before)], Reserve::Ignore)?;
        retire_in_index(&self.db, topic, before)?;
        tracing::info!(%topic, first_offset = %before, "retention removed the topic's oldest batches");
        Ok(true)
    }

    /// Appends again what segment `number` holds that is still needed (see the module documentation).
    /// Returns false, and changes nothing, if an index entry still names a record in it.
    fn carry_forward(&self, number: u64) -> Result<bool> {
        let bytes = segment::read_from(self.segments().dir(), number, 0)?;
        let mut records = Vec::new();
        segment::walk(&bytes, number, 0, u64::MAX, &Default::default(), |w| {
            if let Walked::Record { at, body, unconfirmed: false } = w {
                records.push((at, body));
            }
            Ok(())
        })?;
        // First check that nothing the index names is here.
        for (at, body) in &records {
            if let Some(Record::Batch(r, _)) = Record::decode(body) {
                let key = batch_key(&r.topic, r.record.offset);
                if let Some(v) = self.db.get(&key).map_err(sled_error)? {
                    if matches!(Slot::decode(&key, &v)?, Slot::Batch(e) if e.location == *at) {
                        tracing::warn!(segment = number, topic = %r.topic, offset = %r.record.offset,
                            "retention keeps a segment that holds a batch it did not retire");
                        return Ok(false);
                    }
                }
            }
        }
        let mut retired_marks: BTreeMap<Topic, ()> = BTreeMap::new();
        for (at, body) in records {
            match Record::decode(body) {
                Some(Record::Batch(r, _) | Record::Head(r)) => {
                    // A chain's last batch leaves its head behind; any other's publisher record goes.
                    let Ok(publisher) = sealpost_protocol::PublicKey::from_bytes(&r.publisher) else {
                        continue;
                    };
                    if index::publisher_head(&self.db, &r.topic, &publisher, r.chain)? == Some(r.record) {
                        self.journal.append(&[&record::head(&r)], Reserve::Ignore)?;
                    } else {
                        let key = publisher_key(&r.topic, &publisher, r.chain, r.record.first_seq);
                        self.db.remove(key).map_err(sled_error)?;
                    }
                }
                Some(Record::Policy { topic, epoch, policy }) => {
                    if self
                        .db
                        .get(policy_key(&topic, epoch))
                        .map_err(sled_error)?
                        .is_some_and(|v| *v == *policy)
                    {
                        self.journal
                            .append(&[&record::policy_prefix(&topic, epoch), policy], Reserve::Ignore)?;
                    }
                }
                Some(Record::Durable { topic, principal, name, next_offset }) => {
                    let _commits = lock(&self.durable_commits, "durable commits")?;
                    let key = durable_key(&topic, &principal, &name)?;
                    let newest = self.db.get(&key).map_err(sled_error)?.and_then(|v| decode_durable(&v));
                    if newest == Some((next_offset, Some((at.segment, at.position)))) {
                        let moved = self.journal.append(&[body], Reserve::Ignore)?;
                        self.db.insert(key, durable_value(next_offset, Some(moved))).map_err(sled_error)?;
                    }
                }
                Some(Record::Lost { topic, lost }) => {
                    if lost.range.end() > index::retired(&self.db, &topic)? {
                        self.journal.append(&[body], Reserve::Ignore)?;
                    }
                }
                Some(Record::Retired { topic, .. }) => {
                    retired_marks.insert(topic, ());
                }
                Some(Record::Layout(_)) => {
                    self.journal.append(&[body], Reserve::Ignore)?;
                }
                Some(Record::Synced(_)) | None => {}
            }
        }
        for topic in retired_marks.into_keys() {
            let before = index::retired(&self.db, &topic)?;
            self.journal.append(&[&record::retired(&topic, before)], Reserve::Ignore)?;
        }
        Ok(true)
    }
}

/// Sets `topic`'s `r` key to `before` (never lower) and removes its `b` keys below it: what a `retired`
/// record says, applied to the index (by retention, and by recovery replaying one).
pub(super) fn retire_in_index(db: &sled::Db, topic: &Topic, before: Offset) -> Result<()> {
    if before <= index::retired(db, topic)? {
        return Ok(());
    }
    // The `r` key first: a reader that sees a `b` key gone sees the topic's new first offset too.
    db.insert(retired_key(topic), &before.0.to_be_bytes()[..]).map_err(sled_error)?;
    let mut removals = sled::Batch::default();
    for k in db.range(batch_key(topic, Offset::ZERO)..batch_key(topic, before)).keys() {
        removals.remove(k.map_err(sled_error)?);
    }
    db.apply_batch(removals).map_err(sled_error)
}

#[cfg(test)]
mod tests;
