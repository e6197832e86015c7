//! Losses: what the engine does when acknowledged bytes turn out damaged. It keeps their offsets and
//! serves them as a [`LostRange`], forever after, and says so.
//!
//! It guarantees that a loss is **recorded** (a `lost` record in the segments, then the topic's `b` key
//! becomes the lost range, and the `p` and `t` keys the index lacks are written:
//! [`index::lost_writes`](super::index::lost_writes)), that it is
//! **reported** as an error naming the segment file, the byte position, the topic, the offsets and the
//! publisher ([`log_loss`]; "possible tampering" when an intact record that is not the batch is where the
//! batch was), and that a damaged batch found after opening (by a read, by the scrub) is reported once per
//! record and run and marked lost by the next sync ([`Damaged`]). It never says "not acknowledged": only
//! bytes past the acknowledged extent are cut silently, by [`recovery`](super::recovery).
//!
//! # Locks
//!
//! [`Damaged`] holds one mutex, taken briefly and never while the index or the segments are written.

use std::collections::HashSet;
use std::path::Path;
use std::sync::Mutex;

use sealpost_protocol::{LostBatch, Offset, PublicKey, Topic};

use super::index::Entry;
use super::record::Lost;
use super::segment::{self, Check, Location};
use crate::store::{LossReason, LostRange, PublisherRecord};

/// The loss reason a check of a batch's record gives (`Intact` only reaches here when the record there
/// is intact but is not the batch's).
pub(super) fn reason_of(check: &Check) -> LossReason {
    match check {
        Check::Missing | Check::Torn => LossReason::Missing,
        Check::Corrupt => LossReason::Corrupt,
        Check::Replaced { .. } | Check::Intact(_) => LossReason::Replaced,
    }
}

/// Logs a loss of acknowledged messages as an error naming where, what and why.
pub(super) fn log_loss(segments: &Path, topic: &Topic, lost: &Lost, when: &str) {
    let range = &lost.range;
    let offsets = format!("{}..{}", range.offset, range.end());
    let file = lost.at.map(|(s, _)| segments.join(segment::segment_name(s)).display().to_string());
    let position = lost.at.map(|(_, p)| p);
    let publisher = range.batch.map(|b| b.publisher.key_id().to_string());
    let first_seq = range.batch.map(|b| b.first_seq);
    match range.reason {
        LossReason::Replaced => tracing::error!(
            segment_file = file.as_deref().unwrap_or("unknown"), position, %topic, %offsets, publisher,
            first_seq, "possible tampering with the data folder ({when}): an intact record that is not the \
            batch the index names is where that batch was; offsets {offsets} of {topic} are lost"
        ),
        reason => tracing::error!(
            segment_file = file.as_deref().unwrap_or("unknown"), position, %topic, %offsets, publisher,
            first_seq, "storage corruption ({when}): acknowledged messages at offsets {offsets} of {topic} \
            are lost: {reason}"
        ),
    }
}

/// What the index knows of the batch `entry` of `topic`, lost for `reason`.
pub(super) fn lost_range(db: &sled::Db, topic: &Topic, entry: &Entry, reason: LossReason) -> LostRange {
    let batch = PublicKey::from_bytes(&entry.publisher).ok().and_then(|publisher| {
        match db.get(entry.publisher_key(topic)) {
            Ok(Some(v)) => PublisherRecord::decode(&v).ok().map(|r| LostBatch {
                publisher,
                chain: entry.chain,
                first_seq: entry.first_seq,
                digest: r.digest,
            }),
            _ => None,
        }
    });
    LostRange { offset: entry.offset, count: entry.count.into(), batch, reason }
}

/// A batch found damaged after opening, to be marked lost: its topic, offset, where its record was, why.
pub(super) type Pending = (Topic, Offset, Location, LossReason);

/// Batches found damaged after opening: reported once per record and run, marked lost by the next sync.
#[derive(Debug, Default)]
pub(super) struct Damaged {
    inner: Mutex<DamagedInner>,
}

#[derive(Debug, Default)]
struct DamagedInner {
    /// Records already reported (segment, position).
    reported: HashSet<(u64, u64)>,
    /// To be marked lost by the next sync.
    pending: Vec<Pending>,
}

impl Damaged {
    /// A batch whose record `check` found not intact (a read, or the scrub): reports it once per record
    /// and run, queues it to be marked lost, and returns the range to serve.
    pub(super) fn found(
        &self,
        db: &sled::Db,
        segments: &Path,
        topic: &Topic,
        entry: &Entry,
        check: &Check,
        when: &str,
    ) -> LostRange {
        let reason = reason_of(check);
        let range = lost_range(db, topic, entry, reason);
        let at = entry.location;
        if let Ok(mut damaged) = self.inner.lock() {
            if damaged.reported.insert((at.segment, at.position)) {
                let lost = Lost { range, at: Some((at.segment, at.position)) };
                log_loss(segments, topic, &lost, when);
                damaged.pending.push((topic.clone(), entry.offset, at, reason));
            }
        }
        range
    }

    /// Reports, once per run, that a range recorded as lost is served as such.
    pub(super) fn serving(&self, topic: &Topic, lost: &Lost) {
        // Ranges without a place are told apart by an impossible segment number and their offset.
        let (segment, position) = lost.at.unwrap_or((u64::MAX, lost.range.offset.0));
        if let Ok(mut damaged) = self.inner.lock() {
            if damaged.reported.insert((segment, position)) {
                tracing::warn!(
                    %topic, offsets = %format!("{}..{}", lost.range.offset, lost.range.end()), segment, position,
                    "serving offsets {}..{} of {topic} as lost: {} (recorded when it was found)",
                    lost.range.offset, lost.range.end(), lost.range.reason
                );
            }
        }
    }

    /// The batches to mark lost now; what cannot be marked goes back with [`again`](Self::again).
    pub(super) fn take(&self) -> Vec<Pending> {
        match self.inner.lock() {
            Ok(mut damaged) => std::mem::take(&mut damaged.pending),
            Err(_) => Vec::new(),
        }
    }

    /// Batches that could not be marked lost yet: the next sync tries again.
    pub(super) fn again(&self, pending: Vec<Pending>) {
        if let Ok(mut damaged) = self.inner.lock() {
            damaged.pending.extend(pending);
        }
    }
}
