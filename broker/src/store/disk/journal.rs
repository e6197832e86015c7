//! The journal: how the engine appends its records to the segments, so that each sync is named in the log.
//!
//! It owns the [`Segments`] and guarantees two things on top of them:
//!
//! - **Every sync is named.** After a sync, the next record appended is preceded by a `synced` record
//!   ([`record::synced`]) naming that sync's checkpoint. It becomes durable with that next group's
//!   fdatasync, at no fsync of its own, and what it says is true whenever it is there at all (it is written
//!   after the sync it names): [`recovery`](super::recovery) takes it as evidence of how far the log was
//!   acknowledged.
//! - **It counts what the index lacks.** It adds up the bytes appended since the index was last made
//!   durable, so that the engine makes the index durable at least every
//!   [`INDEX_SYNC_BYTES`](super::INDEX_SYNC_BYTES), which bounds what opening replays.
//!
//! # Locks
//!
//! The marker mutex is taken first. While it is held, a pending sync marker is written, which takes the
//! segments' writer lock inside it; the marker mutex is released before the writer lock is taken for the
//! record itself. Nothing takes the two the other way round.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use super::record;
use super::segment::{Checkpoint, Location, Segments};
use crate::store::lock;
use crate::Result;

/// Whether an append keeps the configured free-space reserve ([`Segments::append`]) or only needs room
/// for itself ([`Segments::append_unreserved`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Reserve {
    /// Batches, policies, durable offsets: what peers ask to store.
    Keep,
    /// The store's own small records and its one-time migration.
    Ignore,
}

/// Sync markers still to write.
#[derive(Debug, Default)]
struct Markers {
    /// A synced checkpoint no record names yet: the next record appended is preceded by a marker for it.
    pending: Option<Checkpoint>,
    /// The last checkpoint a marker was written or queued for.
    named: Option<Checkpoint>,
}

/// The segments, with sync markers and a count of what the index lacks. See the module documentation.
#[derive(Debug)]
pub(super) struct Journal {
    segments: Segments,
    markers: Mutex<Markers>,
    /// Record bytes appended since the index was last made durable.
    unindexed_bytes: AtomicU64,
}

impl Journal {
    pub(super) fn new(segments: Segments) -> Self {
        Self { segments, markers: Mutex::new(Markers::default()), unindexed_bytes: AtomicU64::new(0) }
    }

    /// The segments, to read.
    pub(super) fn segments(&self) -> &Segments {
        &self.segments
    }

    /// Gives the segments back.
    pub(super) fn into_segments(self) -> Segments {
        self.segments
    }

    /// Appends one record whose body is `parts`, one after the other (written as they are, not copied
    /// together), preceded by a sync marker if a sync since the last one is not named yet.
    pub(super) fn append(&self, parts: &[&[u8]], reserve: Reserve) -> Result<Location> {
        let mut markers = lock(&self.markers, "sync marker")?;
        if let Some(checkpoint) = markers.pending {
            let at = self.segments.append_unreserved(&[&record::synced(checkpoint)])?;
            self.unindexed_bytes.fetch_add(at.end() - at.position, Ordering::Relaxed);
            markers.pending = None;
        }
        drop(markers);
        let at = match reserve {
            Reserve::Keep => self.segments.append(parts)?,
            Reserve::Ignore => self.segments.append_unreserved(parts)?,
        };
        self.unindexed_bytes.fetch_add(at.end() - at.position, Ordering::Relaxed);
        Ok(at)
    }

    /// Syncs the segments ([`Segments::sync`]) and remembers the checkpoint, so that the next record
    /// appended is preceded by a marker naming it.
    pub(super) fn sync(&self) -> Result<Checkpoint> {
        let checkpoint = self.segments.sync()?;
        let mut markers = lock(&self.markers, "sync marker")?;
        if markers.named != Some(checkpoint) {
            markers.pending = Some(checkpoint);
            markers.named = Some(checkpoint);
        }
        Ok(checkpoint)
    }

    /// Bytes appended since the index was last made durable.
    pub(super) fn unindexed(&self) -> u64 {
        self.unindexed_bytes.load(Ordering::Relaxed)
    }

    /// The index was made durable after `bytes` of records (an earlier [`unindexed`](Self::unindexed)).
    pub(super) fn indexed(&self, bytes: u64) {
        self.unindexed_bytes.fetch_sub(bytes, Ordering::Relaxed);
    }
}
