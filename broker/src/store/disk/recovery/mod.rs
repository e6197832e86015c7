//! Recovery: what opening a [`DiskStore`](super::DiskStore) does to put its index right after any stop, clean or not, and
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

use sealpost_protocol::{Offset, Topic};

use self::damage::{batch_verifies, explain_hole, policy_verifies, Damage};
use self::extent::Extent;
use self::failure::{in_index, sled, storage, Outcome};
pub(super) use self::failure::{Failure, Mode};
use super::codec::split_topic;
use super::index::{
    self, batch_key, decode_durable, durable_key, durable_value, policy_key, topic_key, Entry, Slot,
    CHECKPOINT_KEY, TOPIC,
};
use super::journal::{Journal, Reserve};
use super::loss::{log_loss, lost_range, reason_of};
use super::open::panic_message;
use super::record::{self, BatchRecord, Lost, Record};
use super::segment::{self, Check, Checkpoint, Location, Walked};
use crate::store::{LossReason, LostRange};

pub(super) mod damage;
mod extent;
mod failure;

/// What recovery found that opening needs.
#[derive(Debug, Default)]
pub(super) struct Recovered {
    /// The first segment holding a layout mark of layout 3 or later, if recovery walked over one.
    pub layout3_from: Option<u64>,
    /// The topics that have a `t` key now.
    pub topics: HashSet<Topic>,
}

/// Runs recovery on the index `db` and the `journal` (see the module documentation); a panic is reported
/// as a broken index. `layout3_from` is the first segment written in layout 3, as the index says.
pub(super) fn run(db: &sled::Db, journal: &Journal, layout3_from: u64, mode: Mode) -> Outcome<Recovered> {
    match catch_unwind(AssertUnwindSafe(|| Recovery::new(db, journal, layout3_from, mode)?.run())) {
        Ok(outcome) => outcome,
        Err(panic) => Err(Failure::Index(format!("sled panicked: {}", panic_message(&*panic)))),
    }
}

struct Recovery<'s> {
    db: &'s sled::Db,
    journal: &'s Journal,
    /// The first segment written in layout 3, as the index says.
    known_layout3_from: u64,
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
    fn new(db: &'s sled::Db, journal: &'s Journal, known_layout3_from: u64, mode: Mode) -> Outcome<Self> {
        let checkpoint = match mode {
            Mode::Rebuild => Checkpoint::default(),
            Mode::FromCheckpoint => match sled(db.get(CHECKPOINT_KEY))? {
                Some(v) => Checkpoint::decode(&v).ok_or_else(|| Failure::Index("checkpoint".into()))?,
                None => Checkpoint::default(),
            },
        };
        let mut topics = HashSet::new();
        for key in db.scan_prefix([TOPIC]).keys() {
            let key = sled(key)?;
            let (topic, rest) =
                key.get(1..).and_then(split_topic).ok_or_else(|| Failure::Index("topic key".into()))?;
            if !rest.is_empty() {
                return Err(Failure::Index("topic key".into()));
            }
            topics.insert(topic);
        }
        Ok(Recovery {
            db,
            journal,
            known_layout3_from,
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
        let earlier: Vec<u64> = storage(self.journal.segments().earlier())?
            .into_iter()
            .filter(|&n| n >= self.checkpoint.segment)
            .collect();
        let rebuild = self.mode == Mode::Rebuild;
        let extent = Extent::find(self.db, self.journal, &self.topics, self.checkpoint, rebuild, &earlier)?;
        (self.acked, self.suspects, self.hints) = (extent.acked, extent.suspects, extent.hints);
        if rebuild {
            self.apply_retirements(&earlier)?;
        }
        self.walk(&earlier)?;
        self.judge_suspects_inside()?;
        self.drop_suspects_past()?;
        self.explain_damage()?;
        extent::cut_tails(self.journal, self.cut, &earlier)?;
        if self.indexed > 0 {
            tracing::info!(batches = self.indexed, "recovery indexed batches from the segments");
        }
        if self.losses > 0 {
            tracing::error!(
                ranges = self.losses,
                "recovery found acknowledged messages lost to storage corruption"
            );
        }
        Ok(Recovered { layout3_from: self.layout3_from, topics: self.topics })
    }

    /// Checks an index entry's record: intact (and the batch the entry names) or not, and how. A record the
    /// walk found intact at the entry's place, with the entry's length and CRC, is the one it names.
    fn check(&self, topic: &Topic, entry: &Entry) -> Outcome<Option<Check>> {
        if self.seen.contains(&entry.location) {
            return Ok(None);
        }
        Ok(match storage(self.journal.segments().check(&entry.location))? {
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
                range: lost_range(self.db, &topic, &entry, reason_of(&check)),
                at: Some((entry.location.segment, entry.location.position)),
            };
            self.lose(&topic, &lost)?;
        }
        Ok(())
    }

    /// Marks `lost` of `topic` and logs it.
    fn lose(&mut self, topic: &Topic, lost: &Lost) -> Outcome<()> {
        storage(self.journal.append(&[&record::lost(topic, lost)], Reserve::Ignore))?;
        let writes = sled(index::lost_writes(self.db, topic, lost, !self.topics.contains(topic)))?;
        sled(self.db.apply_batch(writes))?;
        self.topics.insert(topic.clone());
        log_loss(self.journal.segments().dir(), topic, lost, "found at start");
        self.losses += 1;
        Ok(())
    }

    /// Step 1: walks the segments from the checkpoint and applies every intact record.
    fn walk(&mut self, earlier: &[u64]) -> Outcome<()> {
        let dir = self.journal.segments().dir().to_path_buf();
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
                        self.damage.push(Damage::new(
                            n,
                            position,
                            len,
                            position + len == end,
                            claimed,
                            explained,
                        ));
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
        let db = self.db;
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
                let key = in_index(durable_key(&topic, &principal, &name))?;
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
            Some(Record::Retired { topic, before }) if !unconfirmed => self.apply_retired(&topic, before)?,
            Some(Record::Retired { .. }) => {}
            Some(Record::Head(r)) if !unconfirmed => {
                // A chain head whose batch record retention removed: kept unless the index has it already.
                let key = index::publisher_key_of(&r.topic, &r.publisher, r.chain, r.record.first_seq);
                if sled(db.get(&key))?.is_none() {
                    sled(db.insert(key, &r.record.encode()[..]))?;
                }
            }
            Some(Record::Head(_)) => {}
        }
        Ok(())
    }

    /// Applies a `retired` record: the topic's offsets below `before` are gone.
    fn apply_retired(&mut self, topic: &Topic, before: Offset) -> Outcome<()> {
        in_index(super::retention::retire_in_index(self.db, topic, before))?;
        if self.topics.insert(topic.clone()) {
            sled(self.db.insert(topic_key(topic), &[][..]))?;
        }
        Ok(())
    }

    /// Before a rebuild walks the segments: applies every `retired` record in them, so that a topic's
    /// batches in the segments retention left continue its retired offsets (the records that say so come
    /// later in the log than the batches).
    fn apply_retirements(&mut self, earlier: &[u64]) -> Outcome<()> {
        let dir = self.journal.segments().dir().to_path_buf();
        for &n in earlier {
            let bytes = storage(segment::read_from(&dir, n, 0))?;
            let mut found = Vec::new();
            storage(segment::walk(&bytes, n, 0, u64::MAX, &BTreeSet::new(), |w| {
                if let Walked::Record { body, unconfirmed: false, .. } = w {
                    if let Some(Record::Retired { topic, before }) = Record::decode(body) {
                        found.push((topic, before));
                    }
                }
                Ok(())
            }))?;
            for (topic, before) in found {
                self.apply_retired(&topic, before)?;
            }
        }
        Ok(())
    }

    fn end_of(&self, topic: &Topic) -> Outcome<Offset> {
        in_index(index::end_of(self.db, topic))
    }

    fn apply_batch(&mut self, at: Location, r: BatchRecord) -> Outcome<()> {
        let db = self.db;
        if r.record.offset < in_index(index::retired(db, &r.topic))? {
            // Retired: not indexed, but its publisher record is, as retention keeps it until the segment
            // goes (the last one of a chain is that chain's head).
            let key = index::publisher_key_of(&r.topic, &r.publisher, r.chain, r.record.first_seq);
            if sled(db.get(&key))?.is_none() {
                sled(db.insert(key, &r.record.encode()[..]))?;
            }
            return Ok(());
        }
        let key = batch_key(&r.topic, r.record.offset);
        if let Some(v) = sled(db.get(&key))? {
            match in_index(Slot::decode(&key, &v))? {
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
        let hole = if offset > next { explain_hole(&mut self.damage, &r.topic, next, offset) } else { None };
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
            chain: r.chain,
        };
        let mut writes = sled::Batch::default();
        writes.insert(key, &entry.encode()[..]);
        writes.insert(entry.publisher_key(&r.topic), &r.record.encode()[..]);
        if self.topics.insert(r.topic.clone()) {
            writes.insert(topic_key(&r.topic), &[][..]);
        }
        sled(db.apply_batch(writes))?;
        self.indexed += 1;
        Ok(())
    }

    /// Applies a `lost` record: a loss marked earlier that the index does not show (it came back older).
    fn apply_lost(&mut self, topic: &Topic, lost: &Lost) -> Outcome<()> {
        let db = self.db;
        if lost.range.end() <= in_index(index::retired(db, topic))? {
            return Ok(());
        }
        let key = batch_key(topic, lost.range.offset);
        match sled(db.get(&key))? {
            Some(v) => match in_index(Slot::decode(&key, &v))? {
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
                    writes.insert(topic_key(topic), &[][..]);
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
            sled(self.db.apply_batch(removals))?;
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
        let dir = self.journal.segments().dir().to_path_buf();
        let layout3_from = match self.mode {
            Mode::FromCheckpoint => Some(self.known_layout3_from),
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
                        && in_index(index::publisher_head(self.db, &h.topic, &h.publisher, h.chain))?
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
                sled(self.db.insert(policy_key(topic, *epoch), &policy[..]))?;
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
}

/// What the walk of one segment found, collected before it is applied.
enum Found<'a> {
    Record(Location, &'a [u8], bool),
    Damaged(u64, u64, Option<&'a [u8]>),
    Tail(u64),
}
