//! Recovery: what opening a [`SledStore`] does to put its index right after any stop, clean or not, and
//! how it tells a torn tail (never acknowledged, cut silently) from corruption (acknowledged, lost, said
//! so).
//!
//! # The acknowledged extent
//!
//! An acknowledgement follows a sync of the segments that covers the batch. Recovery takes the
//! **acknowledged extent** `A` (a [`Checkpoint`]: every byte before it was covered by a successful
//! fdatasync) as the furthest of what these say, each true whenever it is there at all:
//!
//! - the index's checkpoint (durable at index syncs, at least every 64 MiB of records);
//! - the sync markers found in the segments (a record appended first in the group after a sync, durable
//!   with that group: it covers every acknowledged group but the last one of a run);
//! - the `segments/synced` side file (rewritten after every sync without an fsync of its own: it survives
//!   the death of the process, not necessarily a power cut; it covers the last acknowledged group);
//! - when the index is rebuilt, the start of the newest segment (every older one was closed by a later run
//!   that judged and synced it).
//!
//! Bytes past `A` were never acknowledged. **Residual risk:** after a power cut that also loses the side
//! file's last write, the last acknowledged group of the run is covered by nothing; if one of its records
//! is also damaged, it is taken for a torn tail and cut without an error.
//!
//! # What opening does
//!
//! From the index's checkpoint `C` (the start of the log when the index is rebuilt):
//!
//! 1. **The segments are walked** from `C` ([`segment::walk`]) with `A` and the positions of the index
//!    entries past `C` (each topic's newest `b` keys, read back until one lies before `C`). Inside `A` a bad record costs only itself: the walk skips it by its length, or resumes where
//!    the index says a record starts, or at the first place from which intact records run to the next such
//!    place or to the end of the file. Records found by that scan could be bytes a publisher crafted inside
//!    its batch (only if the flip hit that very batch's length: else the earliest such place is the true
//!    one): a batch found so must verify its publisher's signature and agree with its record, a policy its
//!    authority's signature, and a sync marker is not believed. Every intact record is applied:
//!    a batch the index lacks is indexed if it continues its topic, policies and durable offsets are
//!    written again (the last one wins), lost records re-applied. A batch that leaves a **hole** in its
//!    topic's offsets inside `A` marks the hole lost, with the batch's details when the damaged record's
//!    own header (cross-checked with the sealed batch inside it) names exactly that hole.
//! 2. **Index entries past `C`** whose records the walk did not find intact are checked against their
//!    records. A record inside `A` that is damaged, missing, or replaced by another intact record is a
//!    **loss**: its `b` key becomes a lost range (its `p` key stays, so its publisher's chain goes on), a
//!    `lost` record is appended to the segments, and an error names the segment file, the byte position,
//!    the topic, the offsets and the publisher ("possible tampering" for a replaced record).
//! 3. The first bad record **at or past `A`** ends the log: it and everything after it (the rest of its
//!    segment, and later segments) was never acknowledged and is **cut**: truncated and fsynced, so that
//!    no later checkpoint can claim it. Index entries past the cut, or whose records are not intact past
//!    `A`, are dropped with every later batch of their topic (offsets stay gap-free). Info logs only.
//! 4. Damage the index and the offsets do not explain is logged as an error too, naming what the damaged
//!    record looked like (a batch with no later batch of its topic is marked lost if its header is
//!    consistent; a policy whose signature still verifies is kept; a durable offset is reported).
//!
//! Recovery never says "not acknowledged" of anything inside `A`. Everything runs inside `catch_unwind`:
//! sled panics on some damage, and a panic or an index entry that does not decode means the index is
//! broken, and the caller rebuilds it from the segments.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::panic::{catch_unwind, AssertUnwindSafe};

use bytes::Bytes;
use sealpost_protocol::{Limits, LostBatch, Offset, PublicKey, SealedBatch, SignedPolicy, Topic};

use super::record::{self, BatchRecord, Lost, Record};
use super::{
    batch_key, decode_durable, durable_key, durable_value, log_loss, panic_message, policy_key, reason_of,
    split_topic, topic_prefix, Entry, SledStore, Slot, CHECKPOINT_KEY, TOPIC,
};
use crate::store::segment::{self, Check, Checkpoint, Location, Walked};
use crate::store::{LossReason, LostRange, PublisherRecord, Store};
use crate::{Error, Result};

/// Where recovery starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Mode {
    /// From the index's checkpoint.
    FromCheckpoint,
    /// From the start of the log, into an empty index.
    Rebuild,
}

/// Why recovery failed.
#[derive(Debug)]
pub(super) enum Failure {
    /// The index is broken (sled panicked or failed, or an entry does not decode): rebuild it.
    Index(String),
    /// The segments could not be read or written: refuse to start.
    Storage(Error),
}

/// What recovery found that opening needs.
#[derive(Debug, Default)]
pub(super) struct Recovered {
    /// The first segment holding a layout mark of layout 3 or later, if recovery walked over one.
    pub layout3_from: Option<u64>,
}

type Outcome<T> = std::result::Result<T, Failure>;

fn index<T>(r: Result<T>) -> Outcome<T> {
    r.map_err(|e| Failure::Index(e.to_string()))
}

fn sled<T>(r: std::result::Result<T, sled::Error>) -> Outcome<T> {
    r.map_err(|e| Failure::Index(format!("sled: {e}")))
}

fn storage<T>(r: Result<T>) -> Outcome<T> {
    r.map_err(Failure::Storage)
}

/// Limits for judging stored batches and policies: the broker accepted them under its own limits once.
const STORED: Limits = Limits {
    max_frame_len: u32::MAX,
    max_batch_len: u32::MAX,
    max_batch_messages: u32::MAX,
    max_policy_members: u32::MAX,
};

/// Runs recovery on `store` (see the module documentation); a panic is reported as a broken index.
pub(super) fn run(store: &SledStore, mode: Mode) -> Outcome<Recovered> {
    match catch_unwind(AssertUnwindSafe(|| Recovery::new(store, mode)?.run())) {
        Ok(outcome) => outcome,
        Err(panic) => Err(Failure::Index(format!("sled panicked: {}", panic_message(&*panic)))),
    }
}

/// A batch's details as a damaged record gives them: from the sealed batch in it when that still verifies
/// its signature (then only the offset comes from the record's damaged header), else from the record's
/// header (which the damage then spared, if it is one flipped bit).
#[derive(Clone, Debug)]
pub(super) struct Hint {
    pub topic: Topic,
    pub publisher: PublicKey,
    pub record: PublisherRecord,
    /// The sealed batch verified: everything but the offset is its publisher's word.
    pub verified: bool,
}

impl Hint {
    /// The hint a damaged record's bytes give, if any. A flip in the record's kind or topic length makes
    /// it undecodable as a batch record: then every topic length is tried for a sealed batch that verifies.
    pub fn of(claimed: &[u8]) -> Option<Hint> {
        if let Some(Record::Batch(r, sealed)) = Record::decode(claimed) {
            if let Some(hint) = Self::from_record(r, sealed) {
                return Some(hint);
            }
        }
        // A flipped kind can make a batch look like another record, or like nothing.
        (1..=255usize).find_map(|topic_len| {
            let offset = claimed.get(2 + topic_len..2 + topic_len + 8)?;
            let sealed = claimed.get(2 + topic_len + 84..)?;
            let batch = SealedBatch::decode(Bytes::copy_from_slice(sealed), &STORED).ok()?.verify().ok()?;
            let header = batch.header();
            let record = PublisherRecord {
                first_seq: header.first_seq,
                count: header.count,
                offset: Offset(u64::from_be_bytes(offset.try_into().ok()?)),
                digest: batch.digest(),
            };
            Some(Hint { topic: header.topic.clone(), publisher: header.publisher, record, verified: true })
        })
    }

    fn from_record(r: BatchRecord, sealed: &[u8]) -> Option<Hint> {
        let verified =
            SealedBatch::decode(Bytes::copy_from_slice(sealed), &STORED).and_then(SealedBatch::verify);
        if let Ok(batch) = verified {
            let header = batch.header();
            let record = PublisherRecord {
                first_seq: header.first_seq,
                count: header.count,
                offset: r.record.offset,
                digest: batch.digest(),
            };
            return Some(Hint {
                topic: header.topic.clone(),
                publisher: header.publisher,
                record,
                verified: true,
            });
        }
        // The sealed batch is damaged, so one flipped bit left the record's header intact; more damage than
        // that could make it say anything, so it must at least name a count a batch can have. Everything
        // it is used for is cross-checked with the offsets around it.
        let publisher = PublicKey::from_bytes(&r.publisher).ok()?;
        let plausible = (1..=Limits::default().max_batch_messages).contains(&r.record.count);
        plausible.then_some(Hint { topic: r.topic, publisher, record: r.record, verified: false })
    }

    fn lost(&self, at: (u64, u64)) -> Lost {
        Lost {
            range: LostRange {
                offset: self.record.offset,
                count: self.record.count.into(),
                batch: Some(LostBatch {
                    publisher: self.publisher,
                    first_seq: self.record.first_seq,
                    digest: self.record.digest,
                }),
                reason: LossReason::Corrupt,
            },
            at: Some(at),
        }
    }
}

/// Damaged bytes inside the acknowledged extent, found by the walk.
#[derive(Debug)]
struct Damage {
    segment: u64,
    position: u64,
    len: u64,
    /// The damage runs to the end of its segment.
    to_end: bool,
    /// What the damaged record looked like, when its length could be trusted.
    looked_like: Option<String>,
    hint: Option<Hint>,
    /// What a damaged batch record's header claims (topic, offset, count) when no full hint could be had:
    /// the count from the sealed header inside it if that is of the same topic, else the record's own if
    /// it is a count a batch can have.
    claim: Option<(Topic, Offset, u64)>,
    /// A policy record whose signed policy still verifies, with its topic and epoch.
    policy: Option<(Topic, u64, Vec<u8>)>,
    /// A loss (or an index entry) accounts for it.
    explained: bool,
}

struct Recovery<'s> {
    store: &'s SledStore,
    mode: Mode,
    /// The index's checkpoint: where the walk starts.
    checkpoint: Checkpoint,
    /// The acknowledged extent.
    acked: Checkpoint,
    topics: HashSet<Topic>,
    /// Per topic, the index entries past the checkpoint, oldest first.
    suspects: HashMap<Topic, Vec<Entry>>,
    /// Per segment, where index entries say records start.
    hints: HashMap<u64, BTreeSet<u64>>,
    /// The records the walk found intact where index entries past the checkpoint say records are.
    seen: HashSet<Location>,
    damage: Vec<Damage>,
    /// The first bad record at or past the acknowledged extent: segment, position.
    cut: Option<(u64, u64)>,
    layout3_from: Option<u64>,
    indexed: u64,
    losses: u64,
}

impl<'s> Recovery<'s> {
    fn new(store: &'s SledStore, mode: Mode) -> Outcome<Self> {
        let checkpoint = match mode {
            Mode::Rebuild => Checkpoint::default(),
            Mode::FromCheckpoint => match sled(store.db.get(CHECKPOINT_KEY))? {
                Some(v) => Checkpoint::decode(&v).ok_or_else(|| Failure::Index("checkpoint".into()))?,
                None => Checkpoint::default(),
            },
        };
        let mut topics = HashSet::new();
        for key in store.db.scan_prefix([TOPIC]).keys() {
            let key = sled(key)?;
            let (topic, rest) =
                key.get(1..).and_then(split_topic).ok_or_else(|| Failure::Index("topic key".into()))?;
            if !rest.is_empty() {
                return Err(Failure::Index("topic key".into()));
            }
            topics.insert(topic);
        }
        Ok(Recovery {
            store,
            mode,
            checkpoint,
            acked: checkpoint,
            topics,
            suspects: HashMap::new(),
            hints: HashMap::new(),
            seen: HashSet::new(),
            damage: Vec::new(),
            cut: None,
            layout3_from: None,
            indexed: 0,
            losses: 0,
        })
    }

    fn run(mut self) -> Outcome<Recovered> {
        let earlier: Vec<u64> = storage(self.store.segments.earlier())?
            .into_iter()
            .filter(|&n| n >= self.checkpoint.segment)
            .collect();
        self.collect_suspects()?;
        self.find_acked(&earlier)?;
        self.walk(&earlier)?;
        self.judge_suspects_inside()?;
        self.drop_suspects_past()?;
        self.explain_damage()?;
        self.cut_tails(&earlier)?;
        if self.indexed > 0 {
            tracing::info!(batches = self.indexed, "recovery indexed batches from the segments");
        }
        if self.losses > 0 {
            tracing::error!(
                ranges = self.losses,
                "recovery found acknowledged messages lost to storage corruption"
            );
        }
        *storage(super::lock(&self.store.topics, "topic set"))? = std::mem::take(&mut self.topics);
        Ok(Recovered { layout3_from: self.layout3_from })
    }

    /// Each topic's index entries past the checkpoint, and where they say records start.
    fn collect_suspects(&mut self) -> Outcome<()> {
        for topic in &self.topics {
            let mut suspects = Vec::new();
            for kv in
                self.store.db.range(batch_key(topic, Offset::ZERO)..=batch_key(topic, Offset::MAX)).rev()
            {
                let (k, v) = sled(kv)?;
                match index(Slot::decode(&k, &v))? {
                    Slot::Batch(entry) if entry.location.durable_by(self.checkpoint) => break,
                    Slot::Batch(entry) => {
                        self.hints.entry(entry.location.segment).or_default().insert(entry.location.position);
                        suspects.push(entry);
                    }
                    Slot::Lost(_) => {}
                }
            }
            suspects.reverse();
            if !suspects.is_empty() {
                self.suspects.insert(topic.clone(), suspects);
            }
        }
        Ok(())
    }

    /// The acknowledged extent: the furthest of the checkpoint, the side file, the sync markers (and, for a
    /// rebuild, the newest segment's start).
    fn find_acked(&mut self, earlier: &[u64]) -> Outcome<()> {
        let mut acked = self.checkpoint;
        if let Some(synced) = self.store.segments.synced_at_open() {
            acked = acked.max(synced);
        }
        if let (Mode::Rebuild, Some(&newest)) = (self.mode, earlier.last()) {
            acked = acked.max(Checkpoint { segment: newest, position: 0 });
        }
        // A marker names a sync that completed before it was written, and that sync rewrote the side file:
        // only a marker past what the side file (or the checkpoint) says can move the extent (when the
        // side file's last write was lost). Every checkpoint is a record boundary.
        let dir = self.store.segments.dir().to_path_buf();
        let from = acked;
        for &n in earlier.iter().filter(|&&n| n >= from.segment) {
            let start = if n == from.segment { from.position } else { 0 };
            let bytes = storage(segment::read_from(&dir, n, start))?;
            let hints = self.hints.get(&n).cloned().unwrap_or_default();
            storage(segment::walk(&bytes, n, start, u64::MAX, &hints, |w| {
                if let Walked::Record { at, body, unconfirmed: false } = w {
                    if let Some(Record::Synced(c)) = Record::decode(body) {
                        if c <= (Checkpoint { segment: at.segment, position: at.position }) {
                            acked = acked.max(c);
                        }
                    }
                }
                Ok(())
            }))?;
        }
        self.acked = acked;
        Ok(())
    }

    /// Checks an index entry's record: intact (and the batch the entry names) or not, and how. A record the
    /// walk found intact at the entry's place, with the entry's length and CRC, is the one it names.
    fn check(&self, topic: &Topic, entry: &Entry) -> Outcome<Option<Check>> {
        if self.seen.contains(&entry.location) {
            return Ok(None);
        }
        Ok(match storage(self.store.segments.check(&entry.location))? {
            Check::Intact(body) if entry.matches(topic, &body) => None,
            check => Some(check),
        })
    }

    /// Step 2: index entries past the checkpoint whose records lie inside the acknowledged extent and are
    /// not intact are losses.
    fn judge_suspects_inside(&mut self) -> Outcome<()> {
        let inside: Vec<(Topic, Entry)> = self
            .suspects
            .iter()
            .flat_map(|(t, entries)| entries.iter().map(move |e| (t.clone(), *e)))
            .filter(|(_, e)| e.location.durable_by(self.acked))
            .collect();
        for (topic, entry) in inside {
            let Some(check) = self.check(&topic, &entry)? else { continue };
            let lost = Lost {
                range: self.store.lost_range(&topic, &entry, reason_of(&check)),
                at: Some((entry.location.segment, entry.location.position)),
            };
            self.lose(&topic, &lost)?;
        }
        Ok(())
    }

    /// Marks `lost` of `topic` and logs it.
    fn lose(&mut self, topic: &Topic, lost: &Lost) -> Outcome<()> {
        storage(self.store.append_record(&record::lost(topic, lost), super::Reserve::Ignore))?;
        let writes = sled(self.store.lost_writes(topic, lost, !self.topics.contains(topic)))?;
        sled(self.store.db.apply_batch(writes))?;
        self.topics.insert(topic.clone());
        log_loss(self.store.segments.dir(), topic, lost, "found at start");
        self.losses += 1;
        Ok(())
    }

    /// Step 1: walks the segments from the checkpoint and applies every intact record.
    fn walk(&mut self, earlier: &[u64]) -> Outcome<()> {
        let dir = self.store.segments.dir().to_path_buf();
        for &n in earlier {
            let start = if n == self.checkpoint.segment { self.checkpoint.position } else { 0 };
            let bytes = storage(segment::read_from(&dir, n, start))?;
            let end = start + bytes.len() as u64;
            let hints = self.hints.get(&n).cloned().unwrap_or_default();
            let acked_end = self.acked.end_in(n);
            let mut found = Vec::new();
            storage(segment::walk(&bytes, n, start, acked_end, &hints, |w| {
                found.push(match w {
                    Walked::Record { at, body, unconfirmed } => Found::Record(at, body, unconfirmed),
                    Walked::Damaged { position, len, claimed } => Found::Damaged(position, len, claimed),
                    Walked::Tail { position, .. } => Found::Tail(position),
                });
                Ok(())
            }))?;
            for item in found {
                match item {
                    Found::Record(at, body, unconfirmed) => {
                        if hints.contains(&at.position) {
                            self.seen.insert(at);
                        }
                        self.apply(at, body, unconfirmed)?
                    }
                    Found::Damaged(position, len, claimed) => {
                        // Damage where an index entry says a record starts is that entry's: it is judged
                        // (and reported) with the entries.
                        let explained = hints.range(position..position.saturating_add(len)).next().is_some();
                        let decoded = claimed.and_then(Record::decode);
                        self.damage.push(Damage {
                            segment: n,
                            position,
                            len,
                            to_end: position + len == end,
                            looked_like: decoded.as_ref().map(Record::describe),
                            hint: claimed.and_then(Hint::of),
                            claim: claimed.and_then(claim_of),
                            policy: match decoded {
                                Some(Record::Policy { topic, epoch, policy })
                                    if policy_verifies(&topic, epoch, policy) =>
                                {
                                    Some((topic, epoch, policy.to_vec()))
                                }
                                _ => None,
                            },
                            explained,
                        });
                    }
                    Found::Tail(position) => self.cut = Some((n, position)),
                }
            }
            if self.cut.is_some() {
                break;
            }
        }
        Ok(())
    }

    /// Applies one intact record found by the walk.
    fn apply(&mut self, at: Location, body: &[u8], unconfirmed: bool) -> Outcome<()> {
        let db = &self.store.db;
        match Record::decode(body) {
            None if !unconfirmed => {
                tracing::warn!(
                    segment = at.segment,
                    position = at.position,
                    "recovery skipped a record it cannot parse"
                );
            }
            None => {}
            Some(Record::Batch(r, sealed)) => {
                if unconfirmed && !batch_verifies(&r, sealed) {
                    return Ok(());
                }
                self.apply_batch(at, r)?;
            }
            Some(Record::Synced(_)) => {}
            Some(Record::Policy { topic, epoch, policy })
                if !unconfirmed || policy_verifies(&topic, epoch, policy) =>
            {
                sled(db.insert(policy_key(&topic, epoch), policy))?;
            }
            Some(Record::Policy { .. }) => {}
            // A durable offset or a loss found by scanning past damage cannot prove itself as a batch or
            // a policy can; it is kept: the scan only resumes where intact records run to the next place
            // the index names or to the end of the file, and the earliest such place is the true one
            // unless the damaged record is itself a batch crafted to hold records (see the module docs).
            Some(Record::Durable { topic, principal, name, next_offset }) => {
                // Replayed in log order from an older checkpoint: never over a later commit the index has
                // (whose record may be the damaged one).
                let key = index(durable_key(&topic, &principal, &name))?;
                let later = match sled(db.get(&key))? {
                    Some(v) => decode_durable(&v)
                        .and_then(|(_, known)| known)
                        .is_some_and(|known| known >= (at.segment, at.position)),
                    None => false,
                };
                if !later {
                    sled(db.insert(key, durable_value(next_offset, Some(at))))?;
                }
            }
            Some(Record::Lost { topic, lost }) => self.apply_lost(&topic, &lost)?,
            Some(Record::Layout(version)) if version >= 3 && !unconfirmed => {
                self.layout3_from = Some(self.layout3_from.map_or(at.segment, |s| s.min(at.segment)));
            }
            Some(Record::Layout(_)) => {}
        }
        Ok(())
    }

    fn end_of(&self, topic: &Topic) -> Outcome<Offset> {
        index(self.store.end_of(topic))
    }

    fn apply_batch(&mut self, at: Location, r: BatchRecord) -> Outcome<()> {
        let db = &self.store.db;
        let key = batch_key(&r.topic, r.record.offset);
        if let Some(v) = sled(db.get(&key))? {
            match index(Slot::decode(&key, &v))? {
                Slot::Batch(entry) if entry.location == at => {
                    // Indexed; its `p` key may not be (the crash came between the two inserts).
                    sled(db.insert(entry.publisher_key(&r.topic), &r.record.encode()[..]))?;
                }
                Slot::Batch(_) => {
                    tracing::warn!(topic = %r.topic, offset = %r.record.offset, "recovery skipped a \
                    record whose offset another record holds (an append that failed before it was indexed)")
                }
                Slot::Lost(_) => {
                    tracing::warn!(topic = %r.topic, offset = %r.record.offset, "recovery skipped \
                    an intact record at offsets already marked lost")
                }
            }
            return Ok(());
        }
        let next = self.end_of(&r.topic)?;
        let offset = r.record.offset;
        // A hole: the records of offsets next..offset were damaged (damage is only ever found inside the
        // acknowledged extent), or the record belongs to no history this index knows.
        let hole = if offset > next { self.explain_hole(&r.topic, next, offset) } else { None };
        if let Some(lost) = &hole {
            self.lose(&r.topic, lost)?;
        } else if offset != next {
            tracing::warn!(topic = %r.topic, %offset, %next, "recovery skipped a record that does not continue its topic");
            return Ok(());
        }
        let entry = Entry {
            offset,
            count: r.record.count,
            location: at,
            publisher: r.publisher,
            first_seq: r.record.first_seq,
        };
        let mut writes = sled::Batch::default();
        writes.insert(key, &entry.encode()[..]);
        writes.insert(entry.publisher_key(&r.topic), &r.record.encode()[..]);
        if self.topics.insert(r.topic.clone()) {
            writes.insert(topic_prefix(TOPIC, &r.topic, 0), &[][..]);
        }
        sled(db.apply_batch(writes))?;
        self.indexed += 1;
        Ok(())
    }

    /// The loss that explains the hole `from..to` of `topic`: the damage whose header names exactly that
    /// batch, else the latest damage no loss explains yet. `None` if no damage can explain it.
    fn explain_hole(&mut self, topic: &Topic, from: Offset, to: Offset) -> Option<Lost> {
        let exact = self.damage.iter().position(|d| {
            !d.explained
                && d.hint
                    .as_ref()
                    .is_some_and(|h| h.topic == *topic && h.record.offset == from && h.record.end() == to)
        });
        let chosen = exact.or_else(|| self.damage.iter().rposition(|d| !d.explained))?;
        let damage = self.damage.get_mut(chosen)?;
        damage.explained = true;
        let at = (damage.segment, damage.position);
        Some(match (exact, &damage.hint) {
            (Some(_), Some(hint)) => hint.lost(at),
            _ => Lost {
                range: LostRange {
                    offset: from,
                    count: to.saturating_count_from(from),
                    batch: None,
                    reason: LossReason::Corrupt,
                },
                at: Some(at),
            },
        })
    }

    /// Applies a `lost` record: a loss marked earlier that the index does not show (it came back older).
    fn apply_lost(&mut self, topic: &Topic, lost: &Lost) -> Outcome<()> {
        let db = &self.store.db;
        let key = batch_key(topic, lost.range.offset);
        match sled(db.get(&key))? {
            Some(v) => match index(Slot::decode(&key, &v))? {
                Slot::Lost(known) if known.range.batch.is_none() && known.range.count == lost.range.count => {
                    sled(db.insert(key, &lost.encode()[..]))?;
                }
                Slot::Lost(_) => {}
                Slot::Batch(entry) => {
                    if entry.end() == lost.range.end() && self.check(topic, &entry)?.is_some() {
                        sled(db.insert(key, &lost.encode()[..]))?;
                    }
                }
            },
            None if lost.range.offset == self.end_of(topic)? => {
                let mut writes = sled::Batch::default();
                writes.insert(key, &lost.encode()[..]);
                if self.topics.insert(topic.clone()) {
                    writes.insert(topic_prefix(TOPIC, topic, 0), &[][..]);
                }
                sled(db.apply_batch(writes))?;
            }
            None => {}
        }
        Ok(())
    }

    /// Step 3: index entries past the acknowledged extent whose records are not intact, or lie past the
    /// cut, are dropped with every later batch of their topic: none of them was acknowledged.
    fn drop_suspects_past(&mut self) -> Outcome<()> {
        let suspects = std::mem::take(&mut self.suspects);
        let cut = self.cut;
        for (topic, entries) in suspects {
            let mut first_bad = None;
            for (i, entry) in entries.iter().enumerate() {
                if entry.location.durable_by(self.acked) {
                    continue;
                }
                let past_cut =
                    cut.is_some_and(|(s, p)| (entry.location.segment, entry.location.position) >= (s, p));
                let check = if past_cut { None } else { self.check(&topic, entry)? };
                if let Some(Check::Replaced { .. }) = check {
                    tracing::error!(%topic, offset = %entry.offset, segment = entry.location.segment,
                        position = entry.location.position, "possible tampering with the data folder: an intact \
                        record that is not the batch the index names is where that batch was written, past the \
                        last sync");
                }
                if past_cut || check.is_some() {
                    first_bad = Some(i);
                    break;
                }
            }
            let Some(bad) = first_bad else { continue };
            let mut removals = sled::Batch::default();
            for entry in &entries[bad..] {
                removals.remove(batch_key(&topic, entry.offset));
                removals.remove(entry.publisher_key(&topic));
            }
            sled(self.store.db.apply_batch(removals))?;
            tracing::info!(
                %topic,
                from_offset = %entries[bad].offset,
                batches = entries.len() - bad,
                "recovery dropped batches written past the last sync; they were never acknowledged"
            );
        }
        Ok(())
    }

    /// Step 4: damage no loss explains.
    fn explain_damage(&mut self) -> Outcome<()> {
        let dir = self.store.segments.dir().to_path_buf();
        let layout3_from = match self.mode {
            Mode::FromCheckpoint => Some(self.store.layout3_from()),
            Mode::Rebuild => self.layout3_from,
        };
        for i in 0..self.damage.len() {
            if self.damage[i].explained {
                continue;
            }
            // A batch with no later batch of its topic: its header, consistent with the sealed batch in it,
            // names offsets that continue the topic (or, failing that, its topic, offset and a count do).
            let d = &self.damage[i];
            let at = (d.segment, d.position);
            let trailing = match (&d.hint, &d.claim) {
                (Some(h), _) => {
                    let end = self.end_of(&h.topic)?;
                    // A verified batch that continues its publisher's chain, with no later batch of its
                    // topic, held the topic's last offsets, whatever its damaged header says.
                    let continues = h.verified
                        && self.topics.contains(&h.topic)
                        && index(self.store.publisher_head(&h.topic, &h.publisher))?
                            .map_or(h.record.first_seq == 1, |head| head.next_seq() == h.record.first_seq);
                    (h.record.offset == end || continues).then(|| {
                        let mut lost = h.lost(at);
                        lost.range.offset = end;
                        (h.topic.clone(), lost)
                    })
                }
                (None, Some((topic, offset, count)))
                    if self.topics.contains(topic) && *offset == self.end_of(topic)? =>
                {
                    let range = LostRange {
                        offset: *offset,
                        count: *count,
                        batch: None,
                        reason: LossReason::Corrupt,
                    };
                    Some((topic.clone(), Lost { range, at: Some(at) }))
                }
                _ => None,
            };
            if let Some((topic, lost)) = trailing {
                self.damage[i].explained = true;
                self.lose(&topic, &lost)?;
                continue;
            }
            let d = &self.damage[i];
            let file = dir.join(segment::segment_name(d.segment)).display().to_string();
            if let Some((topic, epoch, policy)) = &d.policy {
                sled(self.store.db.insert(policy_key(topic, *epoch), &policy[..]))?;
                tracing::error!(segment_file = %file, position = d.position, %topic, epoch, "storage corruption: \
                    a record inside the acknowledged log fails its checksum; it held a topic policy whose \
                    signature still verifies, which was kept");
                continue;
            }
            let before_layout3 = layout3_from.is_none_or(|from| d.segment < from);
            if before_layout3 && d.to_end {
                tracing::info!(segment_file = %file, position = d.position, bytes = d.len, "bad bytes at the \
                    end of a segment written before layout 3: a torn tail an earlier version left in place");
                continue;
            }
            tracing::error!(
                segment_file = %file, position = d.position, bytes = d.len,
                looked_like = d.looked_like.as_deref().unwrap_or("unknown"),
                "storage corruption: bytes inside the acknowledged log fail their checksum and hold no batch \
                 that the index or the offsets of later batches name"
            );
        }
        Ok(())
    }

    /// Cuts the log at the first bad record at or past the acknowledged extent: that segment from there,
    /// and every later one whole.
    fn cut_tails(&self, earlier: &[u64]) -> Outcome<()> {
        let Some((segment, position)) = self.cut else { return Ok(()) };
        let dir = self.store.segments.dir();
        for &n in earlier.iter().filter(|&&n| n >= segment) {
            let from = if n == segment { position } else { 0 };
            let len = std::fs::metadata(dir.join(segment::segment_name(n))).map(|m| m.len()).unwrap_or(0);
            if len <= from {
                continue;
            }
            storage(self.store.segments.truncate(n, from))?;
            tracing::info!(
                segment_file = %dir.join(segment::segment_name(n)).display(),
                position = from,
                bytes = len - from,
                "recovery cut bytes written past the last sync; they were never acknowledged"
            );
        }
        Ok(())
    }
}

/// What the walk of one segment found, collected before it is applied.
enum Found<'a> {
    Record(Location, &'a [u8], bool),
    Damaged(u64, u64, Option<&'a [u8]>),
    Tail(u64),
}

/// The topic, offset and count a damaged batch record claims (see [`Damage::claim`]).
fn claim_of(claimed: &[u8]) -> Option<(Topic, Offset, u64)> {
    let Some(Record::Batch(r, sealed)) = Record::decode(claimed) else { return None };
    let count = match SealedBatch::decode(Bytes::copy_from_slice(sealed), &STORED) {
        Ok(batch) if batch.header().topic == r.topic => batch.header().count,
        _ if (1..=Limits::default().max_batch_messages).contains(&r.record.count) => r.record.count,
        _ => return None,
    };
    Some((r.topic, r.record.offset, count.into()))
}

/// Whether the sealed batch in a record found by scanning past damage is one its publisher signed, and
/// agrees with the record around it.
fn batch_verifies(r: &BatchRecord, sealed: &[u8]) -> bool {
    let Ok(batch) =
        SealedBatch::decode(Bytes::copy_from_slice(sealed), &STORED).and_then(SealedBatch::verify)
    else {
        return false;
    };
    let h = batch.header();
    h.topic == r.topic
        && h.publisher.as_bytes() == &r.publisher
        && h.first_seq == r.record.first_seq
        && h.count == r.record.count
        && batch.digest() == r.record.digest
}

/// Whether `policy` is a topic policy of `topic` and `epoch` that its own authority signed.
fn policy_verifies(topic: &Topic, epoch: u64, policy: &[u8]) -> bool {
    let Ok(signed) = SignedPolicy::decode(Bytes::copy_from_slice(policy), &STORED) else { return false };
    if signed.topic() != topic || signed.epoch().0 != epoch {
        return false;
    }
    let authority = *signed.authority();
    signed.verify(&authority).is_ok()
}
