//! The **acknowledged extent** of the segments, as recovery finds it before anything else (with the index
//! entries it must judge: those past the index's checkpoint), and what recovery does last with it: cut the
//! torn tail past it ([`cut_tails`]), truncated and fsynced so that no later checkpoint can claim it.
//!
//! The extent is the furthest of what these say, each true whenever it is there at all (see the
//! [recovery](super) write-up): the index's checkpoint, the `segments/synced` side file, the sync markers
//! found in the segments, and, when the index is rebuilt, the start of the newest segment.

use std::collections::{BTreeSet, HashMap, HashSet};

use sealpost_protocol::{Offset, Topic};

use super::failure::{in_index, sled, storage, Outcome};
use crate::store::disk::index::{batch_key, Entry, Slot};
use crate::store::disk::journal::Journal;
use crate::store::disk::record::Record;
use crate::store::disk::segment::{self, Checkpoint, Walked};

/// What recovery judges against.
#[derive(Debug, Default)]
pub(super) struct Extent {
    /// The acknowledged extent.
    pub acked: Checkpoint,
    /// Per topic, the index entries past the checkpoint, oldest first.
    pub suspects: HashMap<Topic, Vec<Entry>>,
    /// Per segment, where index entries past the checkpoint say records start.
    pub hints: HashMap<u64, BTreeSet<u64>>,
}

impl Extent {
    /// The extent of the segments `earlier` (every segment from the checkpoint's on, written before this
    /// run) of `journal`, for the index `db` of `topics` whose checkpoint is `checkpoint`; `rebuild` when
    /// the index is rebuilt from nothing.
    pub(super) fn find(
        db: &sled::Db,
        journal: &Journal,
        topics: &HashSet<Topic>,
        checkpoint: Checkpoint,
        rebuild: bool,
        earlier: &[u64],
    ) -> Outcome<Extent> {
        let mut extent = Extent { acked: checkpoint, ..Extent::default() };
        extent.collect_suspects(db, topics, checkpoint)?;
        extent.find_acked(journal, rebuild, earlier)?;
        Ok(extent)
    }

    /// Each topic's index entries past the checkpoint, and where they say records start.
    fn collect_suspects(
        &mut self,
        db: &sled::Db,
        topics: &HashSet<Topic>,
        checkpoint: Checkpoint,
    ) -> Outcome<()> {
        for topic in topics {
            let mut suspects = Vec::new();
            for kv in db.range(batch_key(topic, Offset::ZERO)..=batch_key(topic, Offset::MAX)).rev() {
                let (k, v) = sled(kv)?;
                match in_index(Slot::decode(&k, &v))? {
                    Slot::Batch(entry) if entry.location.durable_by(checkpoint) => break,
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
    fn find_acked(&mut self, journal: &Journal, rebuild: bool, earlier: &[u64]) -> Outcome<()> {
        let mut acked = self.acked;
        if let Some(synced) = journal.segments().synced_at_open() {
            acked = acked.max(synced);
        }
        if let (true, Some(&newest)) = (rebuild, earlier.last()) {
            acked = acked.max(Checkpoint { segment: newest, position: 0 });
        }
        // A marker names a sync that completed before it was written, and that sync rewrote the side file:
        // only a marker past what the side file (or the checkpoint) says can move the extent (when the
        // side file's last write was lost). Every checkpoint is a record boundary.
        let dir = journal.segments().dir().to_path_buf();
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
}

/// Cuts the log at the first bad record at or past the acknowledged extent: that segment from there,
/// and every later one whole.
pub(super) fn cut_tails(journal: &Journal, cut: Option<(u64, u64)>, earlier: &[u64]) -> Outcome<()> {
    let Some((segment, position)) = cut else { return Ok(()) };
    let dir = journal.segments().dir();
    for &n in earlier.iter().filter(|&&n| n >= segment) {
        let from = if n == segment { position } else { 0 };
        let len = std::fs::metadata(dir.join(segment::segment_name(n))).map(|m| m.len()).unwrap_or(0);
        if len <= from {
            continue;
        }
        storage(journal.segments().truncate(n, from))?;
        tracing::info!(
            segment_file = %dir.join(segment::segment_name(n)).display(),
            position = from,
            bytes = len - from,
            "recovery cut bytes written past the last sync; they were never acknowledged"
        );
    }
    Ok(())
}
