//! The on-disk engine: batches and everything else in append-only segment files that are the log, and a
//! sled 0.34 index of them that can always be rebuilt from the log.
//!
//! # Layout (version 3)
//!
//! The [segment files](super::segment) hold every record the store writes; [`record`] defines their bodies:
//! batches (with everything the index says of them), topic policies, durable subscriptions' committed
//! offsets, lost ranges, sync markers and a layout mark. The index can be rebuilt from them alone.
//!
//! Sled holds the index, in one tree (sled's default tree); every key starts with a one-byte kind and the
//! length-prefixed topic, and every integer is big-endian, so a range scan visits a topic's keys in numeric
//! order and two topics never share a prefix (`a` and `a.b` differ in their length byte):
//!
//! ```text
//! b | topic_len u8 | topic | offset u64                          -> count u32 | location [24] | publisher [32] | first_seq u64
//!                                                                   (68 bytes: a batch)
//!                                                                or lost [98] (98 bytes: a lost range, see record)
//! p | topic_len u8 | topic | publisher [32] | first_seq u64      -> first_seq u64 | count u32 | offset u64 | digest [32]
//! d | topic_len u8 | topic | len u32 | principal | len u32 | name -> next_offset u64 | segment u64 | position u64
//!                                                                   (where its record is; layout 2: next_offset only)
//! y | topic_len u8 | topic | epoch u64                           -> signed topic policy bytes
//! t | topic_len u8 | topic                                       -> (empty: the topic has batches)
//! m | "layout"                                                   -> layout version u32 (3)
//! m | "layout3_from"                                             -> the first segment written in layout 3, u64
//! m | "checkpoint"                                               -> segment u64 | position u64
//! ```
//!
//! Every offset of a topic is covered by exactly one `b` key, a batch or a lost range: the last one gives
//! the topic's next offset, the last `p` key of a (topic, publisher) its chain head (a lost batch keeps its
//! `p` key, so its publisher's chain continues). A write appends its record to the active segment, then
//! updates the index (for a batch: its `t` key if new, its `b` key, its `p` key, in that order). The
//! checkpoint says up to where every record is indexed **and** the index durable.
//!
//! Layout 2 (policies and durable offsets in sled only) is read, and migrated on its first open: every
//! policy and durable offset is appended to the segments after a layout mark, once, and the layout key
//! becomes 3. Layout 1 (batch bytes inside sled) was never released and is refused.
//!
//! # Durability: [`SledStore::sync`]
//!
//! A sync, under one lock, and counted only if every step succeeds:
//!
//! 1. marks lost the batches that readers or the scrub found damaged since the last sync (best effort);
//! 2. syncs the segments ([`Segments::sync`]: fdatasync of every segment written since the last sync, and of
//!    their folder if a segment was created; then the `synced` side file). Every record appended so far is
//!    now durable: batches, policies and durable offsets alike. **This is what an acknowledgement waits
//!    for**, one fdatasync per group of the [`writer`](crate::writer). A durable-offset commit or a policy costs
//!    no more than a batch;
//! 3. remembers the checkpoint, so that the next record appended is preceded by a sync marker naming it;
//! 4. makes the index durable only once [`INDEX_SYNC_BYTES`] of records were appended since it last was
//!    (which bounds what opening replays), or when opening asks for it. Then it stores the checkpoint of
//!    step 2 and makes sled's files durable (below). Every record before that checkpoint was indexed before
//!    the sync began (one writer).
//!
//! Sled's files need care. From the sled 0.34.7 source (`src/config.rs`,
//! `src/pagecache/{iobuf,blob_io,logger,snapshot}.rs`), a sled folder holds:
//!
//! - `db`: the log-structured page store, written with `pwrite` in segments (512 KiB by default);
//! - `conf`: the storage parameters, written once at open, **never fsynced** by sled;
//! - `blobs/<lsn>`: one file per page whose serialized size exceeds about a quarter of a segment (~128 KiB
//!   with the default segment size). With batch bytes in segment files the index's nodes stay far below
//!   that, but sled decides (a large policy can do it), so blobs are still handled. Blob files are created
//!   with `create_new` and written with `write_all`, and sled **never fsyncs them** nor the `blobs` directory;
//! - `snap.<lsn>`: recovery snapshots, fsynced then renamed into place (the folder is not fsynced).
//!
//! `Db::flush` writes sled's dirty log buffers to `db` but only calls `sync_file_range` on Linux (sled issue
//! #1452): that flushes the data pages of that range, not the file's metadata nor the disk's write cache,
//! so it is not a durability guarantee. On recovery, sled replays the `db` log; a log entry whose blob file
//! is missing is skipped, but one whose blob is torn (bad CRC or short) **ends the replay**, losing
//! everything logged after it. So blobs must be durable no later than the log entries that point to them.
//! Making the index durable therefore:
//!
//! 1. calls `Db::flush`, which waits until every log entry reserved before the call has been written. Blob
//!    files are written inside their reservation, so every blob of an insert that returned before is now
//!    complete;
//! 2. lists `blobs/` and `sync_all`s each file it has not synced before; it records the file's length
//!    *before* that fsync. A blob first seen in the previous index sync is checked once more (sled may have
//!    been writing it then: sled restructures nodes during reads too, from any thread) and fsynced again if
//!    its length changed; after that check it is complete and never looked at again. If any file was new,
//!    `blobs/` itself is fsynced (its entries are what makes the files reachable);
//! 3. `sync_data`s `db` through a handle the store keeps open (the same file sled writes);
//! 4. on the first time, `sync_all`s `conf`; and whenever the set of entries in the folder changed since the
//!    last time (at first: `db`, `conf`, `blobs`, `segments`; later: snapshot renames), fsyncs the folder.
//!
//! The store turns off sled's background flusher (`flush_every_ms(None)`): no unrequested fsync competes
//! with the log's.
//!
//! # Opening, recovery and damage
//!
//! [`SledStore::open`] opens sled inside `catch_unwind` and checks the index: its layout key, its
//! checkpoint, and a scan of every key and value (each must decode). What one flipped bit in sled's files
//! does to sled 0.34.7 (docs/reliability.md has the figures): in a `db` file that was never reopened, sled
//! **panics** while opening, or silently comes back as an **older, consistent state** (a prefix of its log),
//! or nothing happens; once it was reopened (sled then keeps a `snap.*` file and reads the `db` log lazily),
//! most flips hit stale data, and the rest make sled **return an error** while opening or, later, when the
//! damaged page is first read; a flip in `snap.*` makes opening fail. It never returned a wrong value. So a
//! panic, an error other than I/O, or a failed check, at opening or in the scan, moves sled's files aside
//! into `index.corrupt-<n>/` (never deleted) and rebuilds the index from every segment; without the scan,
//! a damaged page would fail reads at run time and at every start. An older state is what the index looks
//! like after any crash: [`recovery`] replays the segments from its (older) checkpoint, policies and
//! durable offsets included. The scan costs about 1 µs per key, two keys per batch (docs/benchmarks.md).
//!
//! [`recovery`] then puts the index right after any stop: it knows the **acknowledged extent** of the
//! segments, treats a bad record inside it as corruption that costs only that record (logged as an error,
//! served as lost), cuts a torn tail past it silently, and indexes what the index lacks.
//!
//! A batch whose record fails its checksum when read at run time is served as a [`Stored::Lost`], logged
//! as an error once per record and run, and marked lost by the next sync. The [`scrub`] checks every stored
//! batch in the background at a configured pace, with the same outcome; `verify-store` checks a stopped
//! store completely.
//!
//! Costs and limits: an acknowledgement costs one fdatasync, whatever the group holds; the index's own sync
//! (sled's `flush`, which waits for its writes with `sync_file_range`, a listing of `blobs/` and an
//! fdatasync of `db`) runs at most every 64 MiB of records. Blob removals by sled's GC are not fsynced:
//! after a crash a removed blob may reappear as an unreferenced file, which wastes space but loses nothing.
//! Nothing is ever deleted: there is no retention yet.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::io;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use bytes::Bytes;
use sealpost_protocol::{LostBatch, Offset, Principal, PublicKey, Topic};

use self::record::{BatchRecord, Lost, Record};
use super::segment::{self, sync_dir, Check, Checkpoint, Location, Segments};
use super::{
    io_error, offset_mismatch, Append, LossReason, LostRange, PublisherRecord, Store, Stored, StoredBatch,
};
use crate::{Error, Result};

#[cfg(test)]
mod bit_flips;
mod record;
mod recovery;
pub mod scrub;

/// Version of the key layout above, stored under `m | "layout"`.
const LAYOUT_VERSION: u32 = 3;
const LAYOUT_KEY: &[u8] = b"mlayout";
const LAYOUT3_FROM_KEY: &[u8] = b"mlayout3_from";
const CHECKPOINT_KEY: &[u8] = b"mcheckpoint";

const BATCH: u8 = b'b';
const PUBLISHER: u8 = b'p';
const DURABLE: u8 = b'd';
const POLICY: u8 = b'y';
const TOPIC: u8 = b't';

/// The index is made durable (and the checkpoint advanced) at least every this many bytes appended to the
/// segments, so that opening replays at most that much (64 MiB).
pub const INDEX_SYNC_BYTES: u64 = 64 * 1024 * 1024;

/// The default limit of sled's page cache: 128 MiB.
pub const DEFAULT_CACHE_BYTES: u64 = 128 * 1024 * 1024;
/// The default free space appends leave on the file system: 64 MiB.
pub const DEFAULT_RESERVE_BYTES: u64 = 64 * 1024 * 1024;

/// How a [`SledStore`] is opened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SledOptions {
    /// Approximate limit of sled's page cache (sled's own default is 1 GiB).
    pub cache_bytes: u64,
    /// Appends fail with [`Error::StorageFull`] rather than leave less than this free on the file system.
    pub reserve_bytes: u64,
}

impl Default for SledOptions {
    fn default() -> Self {
        Self { cache_bytes: DEFAULT_CACHE_BYTES, reserve_bytes: DEFAULT_RESERVE_BYTES }
    }
}

/// A [`Store`] in a sled index and segment files on disk. See the module documentation for its layout, its
/// `sync` and its recovery.
#[derive(Debug)]
pub struct SledStore {
    db: sled::Db,
    dir: PathBuf,
    /// Our own handle on sled's `db` file, to fdatasync it.
    db_file: File,
    segments: Segments,
    /// Topics that have a `t` key.
    topics: Mutex<HashSet<Topic>>,
    /// Record bytes appended since the index was last made durable.
    unindexed_bytes: AtomicU64,
    /// The next sync must make the index durable (opening wrote to it).
    meta_dirty: AtomicBool,
    sync_state: Mutex<SyncState>,
    syncs: AtomicU64,
    markers: Mutex<Markers>,
    damaged: Mutex<Damaged>,
    /// The first segment written in layout 3: bad bytes at the end of an earlier one may be a torn tail
    /// that a layout-2 recovery left in place.
    layout3_from: AtomicU64,
}

/// What earlier syncs already made durable.
#[derive(Debug, Default)]
struct SyncState {
    /// Blob files synced and known complete.
    final_blobs: HashSet<OsString>,
    /// Blob files first synced by the previous sync, with their length at that time.
    young_blobs: HashMap<OsString, u64>,
    /// The folder's entries at the last folder fsync (`None` before the first sync).
    root_entries: Option<BTreeSet<OsString>>,
}

/// Whether an append keeps the configured free-space reserve ([`Segments::append`]) or only needs room
/// for itself ([`Segments::append_unreserved`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Reserve {
    Keep,
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

/// Batches found damaged after opening.
#[derive(Debug, Default)]
struct Damaged {
    /// Records already reported (segment, position): reported once per run.
    reported: HashSet<(u64, u64)>,
    /// To be marked lost by the next sync: topic, offset, where its record was, why.
    pending: Vec<(Topic, Offset, Location, LossReason)>,
}

fn sled_error(e: sled::Error) -> Error {
    match e {
        sled::Error::Io(io) => io_error("sled", &io),
        other => Error::Storage(format!("sled: {other}")),
    }
}

fn corrupt(what: &str) -> Error {
    Error::Storage(format!("corrupt store: {what}"))
}

fn lock<'m, T>(mutex: &'m Mutex<T>, what: &str) -> Result<MutexGuard<'m, T>> {
    mutex.lock().map_err(|_| Error::Storage(format!("{what} lock poisoned")))
}

fn u64_at(bytes: &[u8], at: usize) -> Result<u64> {
    bytes
        .get(at..at + 8)
        .and_then(|b| b.try_into().ok())
        .map(u64::from_be_bytes)
        .ok_or_else(|| corrupt("short integer"))
}

fn u32_at(bytes: &[u8], at: usize) -> Result<u32> {
    bytes
        .get(at..at + 4)
        .and_then(|b| b.try_into().ok())
        .map(u32::from_be_bytes)
        .ok_or_else(|| corrupt("short integer"))
}

/// `kind | topic_len | topic`, with room for `extra` more bytes.
fn topic_prefix(kind: u8, topic: &Topic, extra: usize) -> Vec<u8> {
    let name = topic.as_str().as_bytes();
    let mut key = Vec::with_capacity(2 + name.len() + extra);
    key.push(kind);
    // Topic guarantees 1..=255 bytes.
    key.push(name.len() as u8);
    key.extend_from_slice(name);
    key
}

fn batch_key(topic: &Topic, offset: Offset) -> Vec<u8> {
    let mut key = topic_prefix(BATCH, topic, 8);
    key.extend_from_slice(&offset.0.to_be_bytes());
    key
}

fn publisher_key_bytes(topic: &Topic, publisher: &[u8; 32], first_seq: u64) -> Vec<u8> {
    let mut key = topic_prefix(PUBLISHER, topic, 40);
    key.extend_from_slice(publisher);
    key.extend_from_slice(&first_seq.to_be_bytes());
    key
}

fn publisher_key(topic: &Topic, publisher: &PublicKey, first_seq: u64) -> Vec<u8> {
    publisher_key_bytes(topic, publisher.as_bytes(), first_seq)
}

fn durable_key(topic: &Topic, principal: &Principal, name: &str) -> Result<Vec<u8>> {
    let mut key = topic_prefix(DURABLE, topic, 8 + principal.as_str().len() + name.len());
    record::principal_and_name(&mut key, principal, name)?;
    Ok(key)
}

/// A `d` value: the committed offset and where the record that committed it is (so that recovery, which
/// replays the segments from an older checkpoint, never puts an older commit over it). Layout 2 values
/// hold the offset only.
fn durable_value(next_offset: Offset, at: Option<Location>) -> Vec<u8> {
    let mut value = next_offset.0.to_be_bytes().to_vec();
    if let Some(at) = at {
        value.extend_from_slice(&at.segment.to_be_bytes());
        value.extend_from_slice(&at.position.to_be_bytes());
    }
    value
}

/// Inverse of [`durable_value`]: the offset, and where its record is if the value says.
fn decode_durable(value: &[u8]) -> Option<(Offset, Option<(u64, u64)>)> {
    let offset = Offset(u64_at(value, 0).ok()?);
    match value.len() {
        8 => Some((offset, None)),
        24 => Some((offset, Some((u64_at(value, 8).ok()?, u64_at(value, 16).ok()?)))),
        _ => None,
    }
}

fn policy_key(topic: &Topic, epoch: u64) -> Vec<u8> {
    let mut key = topic_prefix(POLICY, topic, 8);
    key.extend_from_slice(&epoch.to_be_bytes());
    key
}

/// A `b` entry that names a batch: where it is and whose it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Entry {
    offset: Offset,
    count: u32,
    location: Location,
    publisher: [u8; 32],
    first_seq: u64,
}

impl Entry {
    const ENCODED_LEN: usize = 4 + Location::ENCODED_LEN + 32 + 8;

    fn end(&self) -> Offset {
        self.offset.saturating_add(self.count.into())
    }

    fn encode(&self) -> [u8; Self::ENCODED_LEN] {
        let mut out = [0u8; Self::ENCODED_LEN];
        let (count, rest) = out.split_at_mut(4);
        let (location, rest) = rest.split_at_mut(Location::ENCODED_LEN);
        let (publisher, first_seq) = rest.split_at_mut(32);
        count.copy_from_slice(&self.count.to_be_bytes());
        location.copy_from_slice(&self.location.encode());
        publisher.copy_from_slice(&self.publisher);
        first_seq.copy_from_slice(&self.first_seq.to_be_bytes());
        out
    }

    fn decode(offset: Offset, value: &[u8]) -> Result<Entry> {
        if value.len() != Self::ENCODED_LEN {
            return Err(corrupt("batch index entry"));
        }
        let location = Location::decode(&value[4..4 + Location::ENCODED_LEN])
            .ok_or_else(|| corrupt("batch location"))?;
        let publisher_at = 4 + Location::ENCODED_LEN;
        Ok(Entry {
            offset,
            count: u32_at(value, 0)?,
            location,
            publisher: value[publisher_at..publisher_at + 32].try_into().map_err(|_| corrupt("publisher"))?,
            first_seq: u64_at(value, publisher_at + 32)?,
        })
    }

    fn publisher_key(&self, topic: &Topic) -> Vec<u8> {
        publisher_key_bytes(topic, &self.publisher, self.first_seq)
    }

    /// Whether `body` is this entry's record: a batch record of `topic` at its offset and count.
    fn matches(&self, topic: &Topic, body: &[u8]) -> bool {
        matches!(Record::decode(body), Some(Record::Batch(r, _))
            if r.topic == *topic && r.record.offset == self.offset && r.record.count == self.count
                && r.publisher == self.publisher && r.record.first_seq == self.first_seq)
    }
}

/// What a `b` key holds.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Slot {
    Batch(Entry),
    /// Boxed: rare, and large next to a batch.
    Lost(Box<Lost>),
}

impl Slot {
    /// From a `b` key and its value.
    fn decode(key: &[u8], value: &[u8]) -> Result<Slot> {
        let offset = Offset(u64_at(key, key.len().saturating_sub(8))?);
        match value.len() {
            Entry::ENCODED_LEN => Entry::decode(offset, value).map(Slot::Batch),
            Lost::ENCODED_LEN => Lost::decode(offset, value)
                .map(|l| Slot::Lost(Box::new(l)))
                .ok_or_else(|| corrupt("lost range index entry")),
            _ => Err(corrupt("batch index entry")),
        }
    }

    fn offset(&self) -> Offset {
        match self {
            Slot::Batch(e) => e.offset,
            Slot::Lost(l) => l.range.offset,
        }
    }

    fn end(&self) -> Offset {
        match self {
            Slot::Batch(e) => e.end(),
            Slot::Lost(l) => l.range.end(),
        }
    }
}

/// The loss reason a check of a batch's record gives (`Intact` only reaches here when the record there
/// is intact but is not the batch's).
fn reason_of(check: &Check) -> LossReason {
    match check {
        Check::Missing | Check::Torn => LossReason::Missing,
        Check::Corrupt => LossReason::Corrupt,
        Check::Replaced { .. } | Check::Intact(_) => LossReason::Replaced,
    }
}

/// Logs a loss of acknowledged messages as an error naming where, what and why. Never says "not
/// acknowledged": only bytes past the acknowledged extent are cut silently, elsewhere (see [`recovery`]).
fn log_loss(segments: &Path, topic: &Topic, lost: &Lost, when: &str) {
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

/// The folder's entry names.
fn entries(dir: &Path) -> Result<BTreeSet<OsString>> {
    std::fs::read_dir(dir)
        .and_then(|rd| rd.map(|e| e.map(|e| e.file_name())).collect())
        .map_err(|e| io_error(&format!("listing {}", dir.display()), &e))
}

/// Opens `path` and fsyncs it; returns the length it had before the fsync, or `None` if the file is gone
/// (sled removed it meanwhile).
fn sync_file(path: &Path) -> Result<Option<u64>> {
    let file = match OpenOptions::new().read(true).write(true).open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_error(&format!("opening {}", path.display()), &e)),
    };
    let fsync_error = |e: io::Error| io_error(&format!("fsync of {}", path.display()), &e);
    let len = file.metadata().map_err(fsync_error)?.len();
    file.sync_all().map_err(fsync_error)?;
    Ok(Some(len))
}

/// How long opening waits for sled's lock on its files: sled's own threads may still hold the files of a
/// store this process closed a moment ago (sled's tests block on the lock for the same reason). Another
/// process holding them (a running broker) is reported after that.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

fn open_sled(dir: &Path, cache_bytes: u64) -> std::result::Result<sled::Db, sled::Error> {
    let deadline = std::time::Instant::now() + LOCK_WAIT;
    loop {
        match sled::Config::new().path(dir).flush_every_ms(None).cache_capacity(cache_bytes).open() {
            Err(sled::Error::Io(e))
                if e.to_string().contains("could not acquire lock")
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            opened => return opened,
        }
    }
}

/// The message of a caught panic.
fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}

/// Drops a sled handle that may hold damaged state without letting a panic out of it.
fn drop_quietly(db: sled::Db) {
    if catch_unwind(AssertUnwindSafe(move || drop(db))).is_err() {
        tracing::warn!("closing the damaged index panicked");
    }
}

/// What opening found of the index.
#[derive(Clone, Debug, PartialEq, Eq)]
enum IndexState {
    /// Nothing at all yet: a new store.
    Fresh,
    /// Layout 2, to be migrated.
    Layout2,
    /// Layout 3.
    Layout3,
    /// Rebuilt from the segments (the old index, if any, was moved to this folder).
    Rebuilt(Option<PathBuf>),
}

/// Opens and checks the index of `dir`: `Ok(Ok(..))` usable, `Ok(Err(why))` broken (to be rebuilt), `Err`
/// a refusal (not a Sealpost store, another layout, an I/O error, or the store in use).
fn open_index(
    dir: &Path,
    cache_bytes: u64,
    has_segments: bool,
) -> Result<std::result::Result<(sled::Db, IndexState), String>> {
    let db = match catch_unwind(AssertUnwindSafe(|| open_sled(dir, cache_bytes))) {
        Err(panic) => return Ok(Err(format!("sled panicked while opening it: {}", panic_message(&*panic)))),
        Ok(Err(sled::Error::Io(e))) => {
            return Err(io_error(&format!("opening the index in {}", dir.display()), &e))
        }
        Ok(Err(e)) => return Ok(Err(format!("sled could not open it: {e}"))),
        Ok(Ok(db)) => db,
    };
    let checked = catch_unwind(AssertUnwindSafe(|| -> Result<std::result::Result<IndexState, String>> {
        let layout = match db.get(LAYOUT_KEY) {
            Ok(layout) => layout,
            Err(e) => return Ok(Err(format!("reading its layout: {e}"))),
        };
        let state = match layout.as_deref().map(<[u8; 4]>::try_from) {
            Some(Ok(v)) if u32::from_be_bytes(v) == LAYOUT_VERSION => IndexState::Layout3,
            Some(Ok(v)) if u32::from_be_bytes(v) == 2 => IndexState::Layout2,
            Some(Ok(v)) => {
                return Err(Error::Storage(format!(
                "{} holds store layout {}, this build reads layouts 2 and {LAYOUT_VERSION} (layout 1, batch \
                     bytes inside sled, was never released: move the folder away and start afresh)",
                dir.display(),
                u32::from_be_bytes(v)
            )))
            }
            Some(Err(_)) => return Ok(Err("its layout key does not decode".into())),
            None if db.is_empty() && !has_segments => IndexState::Fresh,
            None if db.is_empty() => return Ok(Err("it is empty, but the segments hold data".into())),
            None if has_segments => return Ok(Err("its layout key is missing".into())),
            None => return Err(Error::Storage(format!("{} is not a Sealpost store", dir.display()))),
        };
        match db.get(CHECKPOINT_KEY) {
            Ok(Some(v)) if Checkpoint::decode(&v).is_none() => {
                return Ok(Err("its checkpoint does not decode".into()))
            }
            Ok(_) => {}
            Err(e) => return Ok(Err(format!("reading its checkpoint: {e}"))),
        }
        Ok(scan_index(&db).map(|()| state))
    }));
    match checked {
        Ok(Ok(Ok(state))) => Ok(Ok((db, state))),
        Ok(Ok(Err(why))) => {
            drop_quietly(db);
            Ok(Err(why))
        }
        Ok(Err(refusal)) => {
            drop_quietly(db);
            Err(refusal)
        }
        Err(panic) => {
            drop_quietly(db);
            Ok(Err(format!("sled panicked while reading it: {}", panic_message(&*panic))))
        }
    }
}

/// Reads every key and value of the index and checks that it decodes: sled reads a page from its files
/// only when it is needed, and a damaged one fails then (see the module documentation), so this is where
/// damage that opening did not notice comes out, before anything is served.
fn scan_index(db: &sled::Db) -> std::result::Result<(), String> {
    // Each topic's `b` keys come in offset order, and cover its offsets without a hole.
    let mut last: Option<(Vec<u8>, Offset)> = None;
    for kv in db.iter() {
        let (key, value) = kv.map_err(|e| format!("reading it: {e}"))?;
        let decodes = match key.split_first() {
            Some((&BATCH, _)) => match Slot::decode(&key, &value) {
                Ok(slot) => {
                    let prefix = key[..key.len().saturating_sub(8)].to_vec();
                    let expected = match &last {
                        Some((p, end)) if *p == prefix => *end,
                        _ => Offset::ZERO,
                    };
                    if slot.offset() != expected {
                        return Err(format!(
                            "a topic's offsets have a hole at {expected}..{}",
                            slot.offset()
                        ));
                    }
                    last = Some((prefix, slot.end()));
                    true
                }
                Err(_) => false,
            },
            Some((&PUBLISHER, rest)) => {
                split_topic(rest).is_some_and(|(_, r)| r.len() == 40)
                    && PublisherRecord::decode(&value).is_ok()
            }
            Some((&DURABLE, rest)) => split_topic(rest).is_some() && decode_durable(&value).is_some(),
            Some((&POLICY, rest)) => split_topic(rest).is_some_and(|(_, r)| r.len() == 8),
            Some((&TOPIC, rest)) => split_topic(rest).is_some_and(|(_, r)| r.is_empty()),
            Some((b'm', _)) => true,
            _ => false,
        };
        if !decodes {
            return Err(format!("an entry does not decode (key {:?})", String::from_utf8_lossy(&key)));
        }
    }
    Ok(())
}

/// Whether `dir` has a segment file with bytes in it.
fn has_segment_data(dir: &Path) -> Result<bool> {
    let segments = dir.join("segments");
    if !segments.is_dir() {
        return Ok(false);
    }
    Ok(segment::list(&segments)?
        .iter()
        .any(|&n| std::fs::metadata(segments.join(segment::segment_name(n))).is_ok_and(|m| m.len() > 0)))
}

/// Moves sled's files in `dir` (`db`, `conf`, `blobs/`, `snap.*`) into a new `index.corrupt-<n>/` folder
/// and returns it. Nothing is deleted.
fn move_index_aside(dir: &Path) -> Result<PathBuf> {
    let aside = (0u32..)
        .map(|n| dir.join(format!("index.corrupt-{n}")))
        .find(|p| !p.exists())
        .ok_or_else(|| Error::Storage("no free name to move the index aside".into()))?;
    std::fs::create_dir(&aside).map_err(|e| io_error(&format!("creating {}", aside.display()), &e))?;
    for name in entries(dir)? {
        let Some(text) = name.to_str() else { continue };
        if matches!(text, "db" | "conf" | "blobs") || text.starts_with("snap.") {
            std::fs::rename(dir.join(&name), aside.join(&name))
                .map_err(|e| io_error(&format!("moving {text} to {}", aside.display()), &e))?;
        }
    }
    sync_dir(&aside)?;
    sync_dir(dir)?;
    Ok(aside)
}

impl SledStore {
    /// Opens (creating it if needed) the store in `dir` with the default [`SledOptions`]. The folder
    /// belongs to the store: put nothing else in it.
    pub fn open(dir: &Path) -> Result<SledStore> {
        Self::open_with(dir, SledOptions::default())
    }

    /// Like [`open`](Self::open), with `options`. Opening recovers from a crash and from damage (see the
    /// module documentation), rebuilds a broken index from the segments, and syncs before it returns.
    pub fn open_with(dir: &Path, options: SledOptions) -> Result<SledStore> {
        std::fs::create_dir_all(dir).map_err(|e| io_error(&format!("creating {}", dir.display()), &e))?;
        let has_segments = has_segment_data(dir)?;
        let opened = open_index(dir, options.cache_bytes, has_segments)?;
        let segments = Segments::open(&dir.join("segments"), options.reserve_bytes)?;
        let (store, mut state) = match opened {
            Ok((db, state)) => (Self::assemble(db, dir, segments)?, state),
            Err(why) => Self::rebuilt(dir, options, segments, &why)?,
        };
        let layout3_from = match state {
            IndexState::Layout3 => match store.db.get(LAYOUT3_FROM_KEY).map_err(sled_error)? {
                Some(v) => u64_at(&v, 0)?,
                None => 0,
            },
            _ => u64::MAX,
        };
        store.layout3_from.store(layout3_from, Ordering::SeqCst);
        let mode = match state {
            IndexState::Rebuilt(_) => recovery::Mode::Rebuild,
            _ => recovery::Mode::FromCheckpoint,
        };
        let (store, recovered) = match recovery::run(&store, mode) {
            Ok(recovered) => (store, recovered),
            Err(recovery::Failure::Storage(e)) => return Err(e),
            Err(recovery::Failure::Index(why)) if mode == recovery::Mode::FromCheckpoint => {
                let segments = store.into_segments();
                let (store, rebuilt) = Self::rebuilt(dir, options, segments, &why)?;
                state = rebuilt;
                match recovery::run(&store, recovery::Mode::Rebuild) {
                    Ok(recovered) => (store, recovered),
                    Err(recovery::Failure::Storage(e)) => return Err(e),
                    Err(recovery::Failure::Index(why)) => {
                        return Err(Error::Storage(format!(
                            "rebuilding the index from the segments failed: {why}"
                        )))
                    }
                }
            }
            Err(recovery::Failure::Index(why)) => {
                return Err(Error::Storage(format!("rebuilding the index from the segments failed: {why}")))
            }
        };
        store.finish_layout(&state, recovered.layout3_from)?;
        // Everything recovery kept or rebuilt becomes durable, and the checkpoint moves past it.
        store.meta_dirty.store(true, Ordering::SeqCst);
        store.sync()?;
        Ok(store)
    }

    fn assemble(db: sled::Db, dir: &Path, segments: Segments) -> Result<SledStore> {
        let db_path = dir.join("db");
        let db_file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&db_path)
            .map_err(|e| io_error(&format!("opening {}", db_path.display()), &e))?;
        Ok(SledStore {
            db,
            dir: dir.to_path_buf(),
            db_file,
            segments,
            topics: Mutex::new(HashSet::new()),
            unindexed_bytes: AtomicU64::new(0),
            meta_dirty: AtomicBool::new(false),
            sync_state: Mutex::new(SyncState::default()),
            syncs: AtomicU64::new(0),
            markers: Mutex::new(Markers::default()),
            damaged: Mutex::new(Damaged::default()),
            layout3_from: AtomicU64::new(0),
        })
    }

    /// Closes the index (quietly: it may be damaged) and gives the segments back.
    fn into_segments(self) -> Segments {
        let SledStore { db, segments, .. } = self;
        drop_quietly(db);
        segments
    }

    /// Moves the broken index of `dir` aside and opens an empty one in its place, to be rebuilt.
    fn rebuilt(
        dir: &Path,
        options: SledOptions,
        segments: Segments,
        why: &str,
    ) -> Result<(SledStore, IndexState)> {
        let aside = move_index_aside(dir)?;
        tracing::error!(
            index = %dir.display(), moved_to = %aside.display(),
            "the index failed its checks ({why}): it was moved aside and is rebuilt from the segments"
        );
        let db = match catch_unwind(AssertUnwindSafe(|| open_sled(dir, options.cache_bytes))) {
            Ok(Ok(db)) => db,
            Ok(Err(e)) => return Err(sled_error(e)),
            Err(panic) => {
                return Err(Error::Storage(format!("a fresh index panicked: {}", panic_message(&*panic))))
            }
        };
        Ok((Self::assemble(db, dir, segments)?, IndexState::Rebuilt(Some(aside))))
    }

    /// After recovery: writes the layout of a new store, migrates a layout-2 one (its policies and durable
    /// offsets, which lived in the index only, are appended to the segments), and completes a rebuilt one.
    fn finish_layout(&self, state: &IndexState, found_from: Option<u64>) -> Result<()> {
        let active = self.segments.active()?;
        let from = match (state, found_from) {
            (IndexState::Layout3, _) => self.layout3_from(),
            (IndexState::Rebuilt(_), Some(from)) => from,
            (IndexState::Fresh | IndexState::Layout2 | IndexState::Rebuilt(_), _) => {
                self.append_record(&record::layout(LAYOUT_VERSION), Reserve::Ignore)?;
                if *state == IndexState::Layout2 {
                    let (policies, durables) = self.copy_metadata_to_segments()?;
                    tracing::info!(
                        policies,
                        durables,
                        "store layout 2 migrated to 3: policies and durable \
                        offsets appended to the segments"
                    );
                } else if let IndexState::Rebuilt(aside) = state {
                    tracing::error!(
                        old_index = aside.as_ref().map(|p| p.display().to_string()),
                        "the segments were written in layout 2, where topic policies and durable offsets \
                         lived in the index only: the rebuilt index has none of them (store the policies \
                         again; durable subscriptions start afresh)"
                    );
                }
                active
            }
        };
        self.db.insert(LAYOUT3_FROM_KEY, &from.to_be_bytes()[..]).map_err(sled_error)?;
        self.db.insert(LAYOUT_KEY, &LAYOUT_VERSION.to_be_bytes()[..]).map_err(sled_error)?;
        self.layout3_from.store(from, Ordering::SeqCst);
        Ok(())
    }

    /// Appends a record for every policy and durable offset of the index; returns how many of each.
    fn copy_metadata_to_segments(&self) -> Result<(u64, u64)> {
        let (mut policies, mut durables) = (0, 0);
        for kv in self.db.scan_prefix([POLICY]) {
            let (key, value) = kv.map_err(sled_error)?;
            let (topic, rest) = split_topic(&key[1..]).ok_or_else(|| corrupt("policy key"))?;
            let epoch = u64_at(rest, 0)?;
            self.append_record(&record::policy(&topic, epoch, &value), Reserve::Ignore)?;
            policies += 1;
        }
        for kv in self.db.scan_prefix([DURABLE]) {
            let (key, value) = kv.map_err(sled_error)?;
            let (topic, rest) = split_topic(&key[1..]).ok_or_else(|| corrupt("durable key"))?;
            let (next_offset, _) = decode_durable(&value).ok_or_else(|| corrupt("durable offset"))?;
            let mut body = topic_prefix(record::DURABLE, &topic, rest.len() + 8);
            body.extend_from_slice(rest);
            body.extend_from_slice(&next_offset.0.to_be_bytes());
            if Record::decode(&body).is_none() {
                return Err(corrupt("durable key"));
            }
            let at = self.append_record(&body, Reserve::Ignore)?;
            self.db.insert(&key, durable_value(next_offset, Some(at))).map_err(sled_error)?;
            durables += 1;
        }
        Ok((policies, durables))
    }

    /// The slot of `topic` with the highest offset.
    fn last_slot(&self, topic: &Topic) -> Result<Option<Slot>> {
        match self.db.range(batch_key(topic, Offset::ZERO)..=batch_key(topic, Offset::MAX)).next_back() {
            Some(kv) => {
                let (k, v) = kv.map_err(sled_error)?;
                Slot::decode(&k, &v).map(Some)
            }
            None => Ok(None),
        }
    }

    /// The offset after the last slot of `topic`.
    fn end_of(&self, topic: &Topic) -> Result<Offset> {
        Ok(self.last_slot(topic)?.map_or(Offset::ZERO, |s| s.end()))
    }

    /// Appends one record, preceded by a sync marker if a sync since the last one is not named yet.
    fn append_record(&self, body: &[u8], reserve: Reserve) -> Result<Location> {
        let mut markers = lock(&self.markers, "sync marker")?;
        if let Some(checkpoint) = markers.pending {
            let at = self.segments.append_unreserved(&record::synced(checkpoint))?;
            self.unindexed_bytes.fetch_add(at.end() - at.position, Ordering::Relaxed);
            markers.pending = None;
        }
        drop(markers);
        let at = match reserve {
            Reserve::Keep => self.segments.append(body)?,
            Reserve::Ignore => self.segments.append_unreserved(body)?,
        };
        self.unindexed_bytes.fetch_add(at.end() - at.position, Ordering::Relaxed);
        Ok(at)
    }

    /// What the store knows of the batch `entry` of `topic`, lost for `reason`.
    fn lost_range(&self, topic: &Topic, entry: &Entry, reason: LossReason) -> LostRange {
        let batch = PublicKey::from_bytes(&entry.publisher).ok().and_then(|publisher| {
            match self.db.get(entry.publisher_key(topic)) {
                Ok(Some(v)) => PublisherRecord::decode(&v).ok().map(|r| LostBatch {
                    publisher,
                    first_seq: entry.first_seq,
                    digest: r.digest,
                }),
                _ => None,
            }
        });
        LostRange { offset: entry.offset, count: entry.count.into(), batch, reason }
    }

    /// Records `lost` of `topic`: a `lost` record in the segments, then its `b` value, and the `p` and `t`
    /// keys the index lacks. Durable at the next sync.
    fn mark_lost(&self, topic: &Topic, lost: &Lost) -> Result<()> {
        self.append_record(&record::lost(topic, lost), Reserve::Ignore)?;
        let mut topics = lock(&self.topics, "topic set")?;
        let writes = self.lost_writes(topic, lost, !topics.contains(topic)).map_err(sled_error)?;
        self.db.apply_batch(writes).map_err(sled_error)?;
        topics.insert(topic.clone());
        Ok(())
    }

    /// The index writes that record `lost` of `topic`: its `b` value, its `p` key if the index lacks it,
    /// and the topic's `t` key if `new_topic`.
    fn lost_writes(
        &self,
        topic: &Topic,
        lost: &Lost,
        new_topic: bool,
    ) -> std::result::Result<sled::Batch, sled::Error> {
        let mut writes = sled::Batch::default();
        writes.insert(batch_key(topic, lost.range.offset), &lost.encode()[..]);
        if let Some(b) = lost.range.batch {
            let key = publisher_key(topic, &b.publisher, b.first_seq);
            if let (None, Ok(count)) = (self.db.get(&key)?, u32::try_from(lost.range.count)) {
                let r = PublisherRecord {
                    first_seq: b.first_seq,
                    count,
                    offset: lost.range.offset,
                    digest: b.digest,
                };
                writes.insert(key, &r.encode()[..]);
            }
        }
        if new_topic {
            writes.insert(topic_prefix(TOPIC, topic, 0), &[][..]);
        }
        Ok(writes)
    }

    /// A batch whose record `check` found not intact after opening (a read or the scrub): reports it once
    /// per record and run, queues it to be marked lost by the next sync, and returns the range to serve.
    fn damaged(&self, topic: &Topic, entry: &Entry, check: &Check, when: &str) -> LostRange {
        let reason = reason_of(check);
        let range = self.lost_range(topic, entry, reason);
        let at = entry.location;
        if let Ok(mut damaged) = self.damaged.lock() {
            if damaged.reported.insert((at.segment, at.position)) {
                let lost = Lost { range, at: Some((at.segment, at.position)) };
                log_loss(self.segments.dir(), topic, &lost, when);
                damaged.pending.push((topic.clone(), entry.offset, at, reason));
            }
        }
        range
    }

    /// Reports, once per run, that a range recorded as lost is served as such.
    fn serving_lost(&self, topic: &Topic, lost: &Lost) {
        // Ranges without a place are told apart by an impossible segment number and their offset.
        let (segment, position) = lost.at.unwrap_or((u64::MAX, lost.range.offset.0));
        if let Ok(mut damaged) = self.damaged.lock() {
            if damaged.reported.insert((segment, position)) {
                tracing::warn!(
                    %topic, offsets = %format!("{}..{}", lost.range.offset, lost.range.end()), segment, position,
                    "serving offsets {}..{} of {topic} as lost: {} (recorded when it was found)",
                    lost.range.offset, lost.range.end(), lost.range.reason
                );
            }
        }
    }

    /// Step 1 of `sync`: marks lost the batches found damaged since the last sync. Best effort: what fails
    /// (a full disk) is tried again at the next sync, and readers serve the loss meanwhile.
    fn mark_damaged(&self) {
        let pending = match self.damaged.lock() {
            Ok(mut damaged) => std::mem::take(&mut damaged.pending),
            Err(_) => return,
        };
        let mut again = Vec::new();
        for (topic, offset, at, reason) in pending {
            let marked = (|| {
                let key = batch_key(&topic, offset);
                let Some(v) = self.db.get(&key).map_err(sled_error)? else { return Ok(()) };
                match Slot::decode(&key, &v)? {
                    Slot::Batch(entry) if entry.location == at => {
                        let lost = Lost {
                            range: self.lost_range(&topic, &entry, reason),
                            at: Some((at.segment, at.position)),
                        };
                        self.mark_lost(&topic, &lost)
                    }
                    _ => Ok(()),
                }
            })();
            if let Err(e) = marked {
                tracing::warn!(%topic, %offset, error = %e, "could not mark a damaged batch lost yet");
                again.push((topic, offset, at, reason));
            }
        }
        if let Ok(mut damaged) = self.damaged.lock() {
            damaged.pending.extend(again);
        }
    }

    /// The first segment written in layout 3.
    fn layout3_from(&self) -> u64 {
        self.layout3_from.load(Ordering::SeqCst)
    }

    /// Makes the index durable up to `checkpoint` (steps 2 to 6 of `sync`, see the module docs): every
    /// record before it was indexed before this call, by the single writer.
    fn sync_index(&self, state: &mut SyncState, checkpoint: Checkpoint) -> Result<()> {
        self.db.insert(CHECKPOINT_KEY, &checkpoint.encode()[..]).map_err(sled_error)?;
        self.db.flush().map_err(sled_error)?;
        self.sync_blobs(state)?;
        self.db_file.sync_data().map_err(|e| io_error("fsync of the sled db file", &e))?;
        let root = entries(&self.dir)?;
        if state.root_entries.as_ref() != Some(&root) {
            if state.root_entries.is_none() {
                sync_file(&self.dir.join("conf"))?;
            }
            sync_dir(&self.dir)?;
            state.root_entries = Some(root);
        }
        Ok(())
    }

    /// Step 4 of `sync` (see the module docs): makes every complete blob durable.
    fn sync_blobs(&self, state: &mut SyncState) -> Result<()> {
        let blobs = self.dir.join("blobs");
        let listing = std::fs::read_dir(&blobs).map_err(|e| io_error("listing sled blobs", &e))?;
        let mut final_blobs = HashSet::with_capacity(state.final_blobs.len() + state.young_blobs.len());
        let mut young_blobs = HashMap::new();
        for entry in listing {
            let entry = entry.map_err(|e| io_error("listing sled blobs", &e))?;
            let name = entry.file_name();
            if state.final_blobs.contains(&name) {
                final_blobs.insert(name);
            } else if let Some(&synced_len) = state.young_blobs.get(&name) {
                let len = match entry.metadata() {
                    Ok(m) => m.len(),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(io_error("reading sled blob metadata", &e)),
                };
                if len != synced_len && sync_file(&entry.path())?.is_none() {
                    continue;
                }
                final_blobs.insert(name);
            } else if let Some(len) = sync_file(&entry.path())? {
                young_blobs.insert(name, len);
            }
        }
        if !young_blobs.is_empty() {
            sync_dir(&blobs)?;
        }
        state.final_blobs = final_blobs;
        state.young_blobs = young_blobs;
        Ok(())
    }
}

/// `topic_len | topic | rest` split.
fn split_topic(bytes: &[u8]) -> Option<(Topic, &[u8])> {
    let (&len, rest) = bytes.split_first()?;
    let (name, rest) = rest.split_at_checked(len.into())?;
    Some((Topic::new(std::str::from_utf8(name).ok()?).ok()?, rest))
}

impl Store for SledStore {
    fn append(&self, batch: Append<'_>) -> Result<()> {
        let (topic, publisher, record) = (batch.topic(), batch.publisher(), batch.record());
        let next = self.end_of(topic)?;
        if record.offset != next {
            return Err(offset_mismatch(topic, next, record.offset));
        }
        let body = record::batch(topic, publisher, &record, batch.bytes());
        let location = self.append_record(&body, Reserve::Keep)?;
        let entry = Entry {
            offset: record.offset,
            count: record.count,
            location,
            publisher: *publisher.as_bytes(),
            first_seq: record.first_seq,
        };
        let mut topics = lock(&self.topics, "topic set")?;
        let new_topic = !topics.contains(topic);
        // Separate inserts, in this order, cost a third of one `apply_batch` (measured: ~40 against
        // ~140 µs): sled recovers a prefix of its log, and recovery completes a `b` key without its `p` key
        // from the segment record.
        let indexed = (|| {
            if new_topic {
                self.db.insert(topic_prefix(TOPIC, topic, 0), &[][..])?;
            }
            self.db.insert(batch_key(topic, record.offset), &entry.encode()[..])?;
            self.db.insert(publisher_key(topic, publisher, record.first_seq), &record.encode()[..])
        })();
        if let Err(e) = indexed {
            // The record is in the segment but not in the index: recovery would index it at this offset,
            // which a later append would then also take. Only a restart (recovery) can sort that out.
            self.segments.poison(format!("indexing the batch at {topic}:{} failed: {e}", record.offset));
            return Err(sled_error(e));
        }
        if new_topic {
            topics.insert(topic.clone());
        }
        Ok(())
    }

    fn sync(&self) -> Result<()> {
        let mut state = lock(&self.sync_state, "sled sync")?;
        self.mark_damaged();
        let checkpoint = self.segments.sync()?;
        {
            let mut markers = lock(&self.markers, "sync marker")?;
            if markers.named != Some(checkpoint) {
                markers.pending = Some(checkpoint);
                markers.named = Some(checkpoint);
            }
        }
        let unindexed = self.unindexed_bytes.load(Ordering::Relaxed);
        if self.meta_dirty.swap(false, Ordering::SeqCst) || unindexed >= INDEX_SYNC_BYTES {
            if let Err(e) = self.sync_index(&mut state, checkpoint) {
                self.meta_dirty.store(true, Ordering::SeqCst);
                return Err(e);
            }
            self.unindexed_bytes.fetch_sub(unindexed, Ordering::Relaxed);
        }
        self.syncs.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    fn read(&self, topic: &Topic, from: Offset, max_bytes: usize) -> Result<Vec<Stored>> {
        // Start at the slot containing `from` if there is one, else at the first one after it.
        let start = match self.db.range(batch_key(topic, Offset::ZERO)..=batch_key(topic, from)).next_back() {
            Some(kv) => {
                let (k, v) = kv.map_err(sled_error)?;
                let slot = Slot::decode(&k, &v)?;
                if slot.end() > from {
                    slot.offset()
                } else {
                    from
                }
            }
            None => from,
        };
        let prefix = BatchRecord::prefix_len(topic);
        let mut out = Vec::new();
        let mut total = 0usize;
        for kv in self.db.range(batch_key(topic, start)..=batch_key(topic, Offset::MAX)) {
            let (k, v) = kv.map_err(sled_error)?;
            let entry = match Slot::decode(&k, &v)? {
                Slot::Lost(lost) => {
                    self.serving_lost(topic, &lost);
                    out.push(Stored::Lost(Box::new(lost.range)));
                    continue;
                }
                Slot::Batch(entry) => entry,
            };
            let len = usize::try_from(entry.location.len).unwrap_or(usize::MAX).saturating_sub(prefix);
            if !out.is_empty() && total.saturating_add(len) > max_bytes {
                break;
            }
            total = total.saturating_add(len);
            let item = match self.segments.check(&entry.location)? {
                Check::Intact(body) if body.len() >= prefix && entry.matches(topic, &body) => {
                    let bytes = Bytes::from(body).slice(prefix..);
                    Stored::Batch(StoredBatch { offset: entry.offset, count: entry.count, bytes })
                }
                check => Stored::Lost(Box::new(self.damaged(topic, &entry, &check, "reading it"))),
            };
            out.push(item);
        }
        Ok(out)
    }

    fn next_offset(&self, topic: &Topic) -> Result<Offset> {
        self.end_of(topic)
    }

    fn first_offset(&self, topic: &Topic) -> Result<Offset> {
        match self.db.range(batch_key(topic, Offset::ZERO)..=batch_key(topic, Offset::MAX)).keys().next() {
            Some(k) => {
                let k = k.map_err(sled_error)?;
                u64_at(&k, k.len().saturating_sub(8)).map(Offset)
            }
            None => Ok(Offset::ZERO),
        }
    }

    fn publisher_record(
        &self,
        topic: &Topic,
        publisher: &PublicKey,
        first_seq: u64,
    ) -> Result<Option<PublisherRecord>> {
        match self.db.get(publisher_key(topic, publisher, first_seq)).map_err(sled_error)? {
            Some(v) => PublisherRecord::decode(&v).map(Some),
            None => Ok(None),
        }
    }

    fn publisher_head(&self, topic: &Topic, publisher: &PublicKey) -> Result<Option<PublisherRecord>> {
        let range = publisher_key(topic, publisher, 0)..=publisher_key(topic, publisher, u64::MAX);
        match self.db.range(range).values().next_back() {
            Some(v) => PublisherRecord::decode(&v.map_err(sled_error)?).map(Some),
            None => Ok(None),
        }
    }

    fn durable_offset(&self, topic: &Topic, principal: &Principal, name: &str) -> Result<Option<Offset>> {
        match self.db.get(durable_key(topic, principal, name)?).map_err(sled_error)? {
            Some(v) => {
                decode_durable(&v).map(|(offset, _)| Some(offset)).ok_or_else(|| corrupt("durable offset"))
            }
            None => Ok(None),
        }
    }

    fn set_durable_offset(
        &self,
        topic: &Topic,
        principal: &Principal,
        name: &str,
        next_offset: Offset,
    ) -> Result<()> {
        let key = durable_key(topic, principal, name)?;
        let at = self.append_record(&record::durable(topic, principal, name, next_offset)?, Reserve::Keep)?;
        if let Err(e) = self.db.insert(key, durable_value(next_offset, Some(at))) {
            // Recovery replays the record; until then the index would answer an older offset.
            self.segments.poison(format!("indexing a durable offset on {topic} failed: {e}"));
            return Err(sled_error(e));
        }
        Ok(())
    }

    fn put_policy(&self, topic: &Topic, epoch: u64, policy: &Bytes) -> Result<()> {
        self.append_record(&record::policy(topic, epoch, policy), Reserve::Keep)?;
        if let Err(e) = self.db.insert(policy_key(topic, epoch), &policy[..]) {
            self.segments.poison(format!("indexing a policy of {topic} failed: {e}"));
            return Err(sled_error(e));
        }
        Ok(())
    }

    fn policies(&self, topic: &Topic, max: usize) -> Result<Vec<Bytes>> {
        let mut newest = Vec::new();
        for entry in self.db.scan_prefix(topic_prefix(POLICY, topic, 0)).rev().take(max) {
            let (_, value) = entry.map_err(sled_error)?;
            newest.push(Bytes::copy_from_slice(&value));
        }
        newest.reverse();
        Ok(newest)
    }

    fn syncs(&self) -> u64 {
        self.syncs.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topic(s: &str) -> Topic {
        Topic::new(s).unwrap()
    }

    fn bob() -> Principal {
        "bob".parse().unwrap()
    }

    #[test]
    fn batch_keys_sort_by_offset_within_a_topic() {
        let t = topic("demo.chat");
        let keys: Vec<_> =
            [0u64, 1, 255, 256, 1 << 40, u64::MAX].iter().map(|&o| batch_key(&t, Offset(o))).collect();
        assert!(keys.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn topic_prefixes_do_not_overlap() {
        let (a, ab) = (batch_key(&topic("a"), Offset(0)), batch_key(&topic("a.b"), Offset(0)));
        assert!(!ab.starts_with(&a[..a.len() - 8]));
    }

    #[test]
    fn sync_makes_blob_files_durable_and_remembers_them() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        // Batch bytes live in segments; a 512 KiB policy is a value large enough for sled to put in a blob.
        store.put_policy(&topic("demo.blob"), 1, &Bytes::from(vec![7u8; 512 * 1024])).unwrap();
        // A policy is durable in the segments; make this sync make the index durable too.
        store.meta_dirty.store(true, Ordering::SeqCst);
        store.sync().unwrap();
        let blobs = entries(&dir.path().join("blobs")).unwrap();
        assert!(!blobs.is_empty(), "a 512 KiB value should be stored in a blob file");
        {
            let state = store.sync_state.lock().unwrap();
            assert!(blobs.iter().all(|b| state.young_blobs.contains_key(b)));
            assert!(state.root_entries.is_some());
        }
        // The next sync that makes the index durable checks them again.
        store.put_policy(&topic("demo.blob"), 2, &Bytes::from_static(b"small")).unwrap();
        store.meta_dirty.store(true, Ordering::SeqCst);
        store.sync().unwrap();
        let state = store.sync_state.lock().unwrap();
        assert!(blobs.iter().all(|b| state.final_blobs.contains(b)));
        assert!(state.young_blobs.is_empty());
    }

    fn publisher(n: u8) -> PublicKey {
        sealpost_protocol::SigningKey::from_bytes(&[n; 32]).public_key()
    }

    /// Appends `n` batches of one 1000-byte message by `publisher(1)` on `t`, continuing its stored chain;
    /// returns their bytes.
    fn append_n(store: &SledStore, t: &Topic, n: usize) -> Vec<Bytes> {
        let signer = sealpost_protocol::SigningKey::from_bytes(&[1; 32]);
        (0..n)
            .map(|_| {
                let head =
                    super::super::chain_head(store.publisher_head(t, &signer.public_key()).unwrap().as_ref());
                let batch = super::super::testing::sealed_batch(&signer, t, head, 1, 1000).unwrap();
                store.append(Append::new(&batch, store.next_offset(t).unwrap())).unwrap();
                batch.into_bytes()
            })
            .collect()
    }

    /// The segment files of a store, newest last.
    fn segment_files(dir: &Path) -> Vec<PathBuf> {
        let segments = dir.join("segments");
        segment::list(&segments)
            .unwrap()
            .into_iter()
            .map(|n| segments.join(segment::segment_name(n)))
            .collect()
    }

    #[test]
    fn recovery_drops_indexed_batches_whose_bytes_never_reached_the_disk() {
        let dir = tempfile::tempdir().unwrap();
        let (t, other) = (topic("demo.crash"), topic("demo.calm"));
        let (synced_len, mut written) = {
            let store = SledStore::open(dir.path()).unwrap();
            let written = append_n(&store, &t, 5);
            append_n(&store, &other, 2);
            store.sync().unwrap();
            let synced_len = std::fs::metadata(segment_files(dir.path()).pop().unwrap()).unwrap().len();
            // Five more batches: their index entries reach the disk (sled flushed), their bytes do not (the
            // segment loses everything after the checkpoint, as a crash before the fdatasync can leave it).
            append_n(&store, &t, 5);
            store.db.flush().unwrap();
            (synced_len, written)
        };
        let active = segment_files(dir.path()).pop().unwrap();
        let synced = synced_len;
        assert!(std::fs::metadata(&active).unwrap().len() > synced);
        OpenOptions::new().write(true).open(&active).unwrap().set_len(synced + 500).unwrap();

        let store = SledStore::open(dir.path()).unwrap();
        assert_eq!(
            store.next_offset(&t).unwrap(),
            Offset(5),
            "the five batches that were never synced are gone"
        );
        assert_eq!(store.read(&t, Offset(0), usize::MAX).unwrap().len(), 5);
        assert_eq!(store.publisher_head(&t, &publisher(1)).unwrap().map(|h| h.next_seq()), Some(6));
        assert_eq!(store.publisher_record(&t, &publisher(1), 6).unwrap(), None);
        assert_eq!(store.next_offset(&other).unwrap(), Offset(2));
        // The log continues at offset 5, in a new segment, and that survives another reopen.
        written.extend(append_n(&store, &t, 2));
        store.sync().unwrap();
        drop(store);
        let store = SledStore::open(dir.path()).unwrap();
        let batches: Vec<_> =
            store.read(&t, Offset(0), usize::MAX).unwrap().into_iter().map(|b| b.batch().unwrap()).collect();
        assert_eq!(batches.iter().map(|b| b.offset.0).collect::<Vec<_>>(), (0..7).collect::<Vec<_>>());
        assert_eq!(batches.into_iter().map(|b| b.bytes).collect::<Vec<_>>(), written);
    }

    #[test]
    fn recovery_rebuilds_index_entries_that_never_reached_the_disk_from_the_segments() {
        let dir = tempfile::tempdir().unwrap();
        let t = topic("demo.replay");
        let (records, written) = {
            let store = SledStore::open(dir.path()).unwrap();
            append_n(&store, &t, 3);
            // An acknowledged sync makes the segments durable; the index is made durable lazily.
            store.sync().unwrap();
            let records: Vec<_> =
                (1..=3).map(|seq| store.publisher_record(&t, &publisher(1), seq).unwrap().unwrap()).collect();
            let written = store.read(&t, Offset(0), usize::MAX).unwrap();
            // A crash before the index reached the disk loses its entries: remove them, as a crash would.
            for r in &records {
                store.db.remove(batch_key(&t, r.offset)).unwrap();
                store.db.remove(publisher_key(&t, &publisher(1), r.first_seq)).unwrap();
            }
            store.db.remove(topic_prefix(TOPIC, &t, 0)).unwrap();
            store.db.flush().unwrap();
            (records, written)
        };
        let store = SledStore::open(dir.path()).unwrap();
        assert_eq!(store.read(&t, Offset(0), usize::MAX).unwrap(), written);
        assert_eq!(store.publisher_head(&t, &publisher(1)).unwrap(), records.last().copied());
        assert_eq!(store.publisher_record(&t, &publisher(1), 2).unwrap(), Some(records[1]));
        append_n(&store, &t, 1);
        assert_eq!(store.next_offset(&t).unwrap(), Offset(4));
    }

    #[test]
    fn a_sync_makes_the_index_durable_only_every_64_mib() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        let t = topic("demo.lazy");
        let checkpoint = || Checkpoint::decode(&store.db.get(CHECKPOINT_KEY).unwrap().unwrap()).unwrap();
        let at_open = checkpoint();
        assert_eq!(
            at_open.position,
            std::fs::metadata(segment_files(dir.path()).pop().unwrap()).unwrap().len(),
            "opening makes the index durable"
        );
        append_n(&store, &t, 2);
        store.sync().unwrap();
        // A durable offset and a policy are records in the segments: they need no index sync either.
        store.set_durable_offset(&t, &bob(), "main", Offset(2)).unwrap();
        store.put_policy(&t, 1, &Bytes::from_static(b"policy")).unwrap();
        store.sync().unwrap();
        assert_eq!(checkpoint(), at_open, "nothing makes the index durable before 64 MiB");
    }

    #[test]
    fn durable_offsets_and_policies_survive_in_the_segments_alone() {
        let dir = tempfile::tempdir().unwrap();
        let t = topic("demo.meta");
        {
            let store = SledStore::open(dir.path()).unwrap();
            append_n(&store, &t, 2);
            store.set_durable_offset(&t, &bob(), "main", Offset(1)).unwrap();
            store.set_durable_offset(&t, &bob(), "main", Offset(2)).unwrap();
            store.put_policy(&t, 1, &Bytes::from_static(b"policy one")).unwrap();
            store.sync().unwrap();
            // The index never got them (a crash before its lazy sync): only the segments have them.
            store.db.remove(durable_key(&t, &bob(), "main").unwrap()).unwrap();
            store.db.remove(policy_key(&t, 1)).unwrap();
            store.db.flush().unwrap();
        }
        let store = SledStore::open(dir.path()).unwrap();
        assert_eq!(
            store.durable_offset(&t, &bob(), "main").unwrap(),
            Some(Offset(2)),
            "the last commit wins"
        );
        assert_eq!(store.policies(&t, 2).unwrap(), [Bytes::from_static(b"policy one")]);
        assert_eq!(store.next_offset(&t).unwrap(), Offset(2));
    }

    #[test]
    fn recovery_keeps_batches_that_reached_the_disk_without_a_sync() {
        let dir = tempfile::tempdir().unwrap();
        let t = topic("demo.lucky");
        {
            let store = SledStore::open(dir.path()).unwrap();
            append_n(&store, &t, 3);
            store.sync().unwrap();
            append_n(&store, &t, 3);
            store.db.flush().unwrap();
        }
        let store = SledStore::open(dir.path()).unwrap();
        assert_eq!(store.next_offset(&t).unwrap(), Offset(6));
        assert_eq!(store.read(&t, Offset(0), usize::MAX).unwrap().len(), 6);
    }

    #[test]
    fn a_torn_batch_in_the_middle_of_the_unsynced_tail_drops_it_and_everything_after_it() {
        let dir = tempfile::tempdir().unwrap();
        let t = topic("demo.torn");
        {
            let store = SledStore::open(dir.path()).unwrap();
            append_n(&store, &t, 2);
            store.sync().unwrap();
            append_n(&store, &t, 4);
            store.db.flush().unwrap();
        }
        // Flip a byte of the fourth batch (offset 3): the kernel wrote the pages around it, not it.
        let file = segment_files(dir.path()).pop().unwrap();
        let at = {
            let db = sled::open(dir.path()).unwrap();
            let key = batch_key(&t, Offset(3));
            let Ok(Slot::Batch(entry)) = Slot::decode(&key, &db.get(&key).unwrap().unwrap()) else {
                panic!()
            };
            entry.location
        };
        let mut bytes = std::fs::read(&file).unwrap();
        bytes[at.position as usize + 100] ^= 1;
        std::fs::write(&file, bytes).unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        assert_eq!(
            store.next_offset(&t).unwrap(),
            Offset(3),
            "offsets stay gap-free: 3, 4 and 5 are dropped"
        );
    }

    /// A data folder as layout 2 left it: batch records in segment 0 (with a torn tail before the index's
    /// checkpoint), more in segment 1; policies and a durable offset in sled only.
    fn layout2_folder(dir: &Path, t: &Topic) -> Vec<Vec<u8>> {
        let segments = dir.join("segments");
        std::fs::create_dir_all(&segments).unwrap();
        let db = sled::Config::new().path(dir).flush_every_ms(None).open().unwrap();
        let p = publisher(1);
        let mut batches = Vec::new();
        for (segment, range) in [(0u64, 0u64..3), (1, 3..5)] {
            let mut file = Vec::new();
            for n in range {
                let (offset, first_seq) = (Offset(n), n + 1);
                let record = PublisherRecord { first_seq, count: 1, offset, digest: Default::default() };
                let batch = vec![n as u8; 100];
                let body = record::batch(t, &p, &record, &batch);
                let location = Location {
                    segment,
                    position: file.len() as u64,
                    len: body.len() as u32,
                    crc: crc32fast::hash(&body),
                };
                file.extend_from_slice(&location.len.to_be_bytes());
                file.extend_from_slice(&location.crc.to_be_bytes());
                file.extend_from_slice(&body);
                let entry = Entry { offset, count: 1, location, publisher: *p.as_bytes(), first_seq };
                db.insert(batch_key(t, offset), &entry.encode()[..]).unwrap();
                db.insert(publisher_key(t, &p, first_seq), &record.encode()[..]).unwrap();
                batches.push(batch);
            }
            if segment == 0 {
                // A crash tore an append that was never indexed: layout-2 recovery left it there.
                file.extend_from_slice(&[0, 0, 0, 90, 1, 2, 3, 4, 1, 6]);
            }
            if segment == 1 {
                db.insert(
                    CHECKPOINT_KEY,
                    &Checkpoint { segment: 1, position: file.len() as u64 }.encode()[..],
                )
                .unwrap();
            }
            std::fs::write(segments.join(segment::segment_name(segment)), file).unwrap();
        }
        db.insert(topic_prefix(TOPIC, t, 0), &[][..]).unwrap();
        db.insert(policy_key(t, 1), &b"policy one"[..]).unwrap();
        db.insert(policy_key(t, 2), &b"policy two"[..]).unwrap();
        db.insert(durable_key(t, &bob(), "main").unwrap(), &3u64.to_be_bytes()[..]).unwrap();
        db.insert(LAYOUT_KEY, &2u32.to_be_bytes()[..]).unwrap();
        db.flush().unwrap();
        batches
    }

    fn payloads(store: &SledStore, t: &Topic) -> Vec<Vec<u8>> {
        store
            .read(t, Offset(0), usize::MAX)
            .unwrap()
            .into_iter()
            .map(|i| i.batch().unwrap().bytes.to_vec())
            .collect()
    }

    #[test]
    fn a_layout_2_store_is_migrated_once_and_then_survives_losing_its_index() {
        let dir = tempfile::tempdir().unwrap();
        let t = topic("demo.old");
        let batches = layout2_folder(dir.path(), &t);
        let check = |store: &SledStore| {
            assert_eq!(payloads(store, &t), batches);
            assert_eq!(store.next_offset(&t).unwrap(), Offset(5));
            assert_eq!(store.publisher_head(&t, &publisher(1)).unwrap().map(|h| h.next_seq()), Some(6));
            assert_eq!(
                store.policies(&t, 5).unwrap(),
                [Bytes::from("policy one"), Bytes::from("policy two")]
            );
            assert_eq!(store.durable_offset(&t, &bob(), "main").unwrap(), Some(Offset(3)));
        };
        {
            let store = SledStore::open(dir.path()).unwrap();
            check(&store);
            let layout = store.db.get(LAYOUT_KEY).unwrap().unwrap();
            assert_eq!(layout.as_ref(), LAYOUT_VERSION.to_be_bytes());
            assert_eq!(store.layout3_from(), 2, "the first segment written in layout 3");
            // Layout 3 from now on: a commit is a record, and only the record moves it on.
            store.set_durable_offset(&t, &bob(), "main", Offset(4)).unwrap();
            store.sync().unwrap();
        }
        // verify: the torn tail that layout 2 left in segment 0 is a note, not a finding.
        let report = scrub::verify(dir.path()).unwrap();
        assert!(report.findings.is_empty(), "{:?}", report.findings);
        assert!(report.notes.iter().any(|n| n.contains("written before layout 3")), "{:?}", report.notes);
        // The index is lost: everything comes back from the segments, policies and durable offsets included.
        for name in ["db", "conf"] {
            std::fs::remove_file(dir.path().join(name)).unwrap();
        }
        for entry in std::fs::read_dir(dir.path()).unwrap() {
            let name = entry.unwrap().file_name();
            if name.to_string_lossy().starts_with("snap.") {
                std::fs::remove_file(dir.path().join(name)).unwrap();
            }
        }
        let store = SledStore::open(dir.path()).unwrap();
        assert_eq!(store.durable_offset(&t, &bob(), "main").unwrap(), Some(Offset(4)));
        assert_eq!(store.policies(&t, 5).unwrap().len(), 2);
        assert_eq!(payloads(&store, &t), batches);
        assert_eq!(store.layout3_from(), 2);
    }

    #[test]
    fn a_broken_index_is_moved_aside_and_rebuilt_from_the_segments() {
        let dir = tempfile::tempdir().unwrap();
        let t = topic("demo.rebuild");
        {
            let store = SledStore::open(dir.path()).unwrap();
            append_n(&store, &t, 4);
            store.set_durable_offset(&t, &bob(), "main", Offset(2)).unwrap();
            store.put_policy(&t, 1, &Bytes::from_static(b"policy")).unwrap();
            store.sync().unwrap();
        }
        // The layout key says nothing sensible.
        {
            let db = sled::open(dir.path()).unwrap();
            db.insert(LAYOUT_KEY, &b"??"[..]).unwrap();
            db.flush().unwrap();
        }
        let store = SledStore::open(dir.path()).unwrap();
        assert!(dir.path().join("index.corrupt-0").join("db").is_file(), "the old index is kept");
        assert_eq!(store.next_offset(&t).unwrap(), Offset(4));
        assert_eq!(payloads(&store, &t).len(), 4);
        assert_eq!(store.durable_offset(&t, &bob(), "main").unwrap(), Some(Offset(2)));
        assert_eq!(store.policies(&t, 1).unwrap(), [Bytes::from_static(b"policy")]);
        assert_eq!(store.publisher_head(&t, &publisher(1)).unwrap().map(|h| h.next_seq()), Some(5));
        append_n(&store, &t, 1);
        assert_eq!(store.next_offset(&t).unwrap(), Offset(5));
    }

    /// The costs docs/benchmarks.md records, in one place and under the same conditions: a durable-offset
    /// commit now (a segment record, one fdatasync) against what it cost while it lived in the index only
    /// (an index sync on top: `meta_dirty`), and the scan of the whole index at opening. Ignored (it
    /// measures the disk); `cargo test -p sealpost-broker --lib measure_ -- --ignored --nocapture`.
    #[test]
    #[ignore = "measures the disk; run by hand"]
    fn measure_commit_paths_and_the_index_scan() {
        const ROUNDS: usize = 300;
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        let t = topic("bench.costs");
        // Every round runs each path once, so that the disk's moods (it is shared) fall on all alike.
        let paths: [(&str, &dyn Fn()); 4] = [
            ("append + sync", &|| {
                append_n(&store, &t, 1);
                store.sync().unwrap();
            }),
            ("append + durable-offset commit + sync (layout 3)", &|| {
                append_n(&store, &t, 1);
                store.set_durable_offset(&t, &bob(), "main", Offset(store.syncs())).unwrap();
                store.sync().unwrap();
            }),
            ("append + durable-offset commit + sync + index sync (as layout 2 did)", &|| {
                append_n(&store, &t, 1);
                store.set_durable_offset(&t, &bob(), "main", Offset(store.syncs())).unwrap();
                store.meta_dirty.store(true, Ordering::SeqCst);
                store.sync().unwrap();
            }),
            ("durable-offset commit + sync (layout 3)", &|| {
                store.set_durable_offset(&t, &bob(), "main", Offset(store.syncs())).unwrap();
                store.sync().unwrap();
            }),
        ];
        let mut samples = vec![Vec::new(); paths.len()];
        for _ in 0..ROUNDS {
            for (i, (_, f)) in paths.iter().enumerate() {
                let started = std::time::Instant::now();
                f();
                samples[i].push(started.elapsed().as_secs_f64() * 1e6);
            }
        }
        println!("settings: {ROUNDS} interleaved rounds, 1 KiB batches, {}", dir.path().display());
        for ((name, _), mut samples) in paths.iter().zip(samples) {
            samples.sort_by(f64::total_cmp);
            let at = |q: f64| samples[((samples.len() - 1) as f64 * q) as usize];
            println!(
                "{{\"path\": \"{name}\", \"p50_us\": {:.0}, \"p90_us\": {:.0}, \"p99_us\": {:.0}}}",
                at(0.5),
                at(0.9),
                at(0.99)
            );
        }
        drop(store);
        for batches in [10_000u64, 100_000] {
            let dir = tempfile::tempdir().unwrap();
            {
                let store = SledStore::open(dir.path()).unwrap();
                append_n(&store, &t, batches as usize);
                store.sync().unwrap();
            }
            let db = open_sled(dir.path(), DEFAULT_CACHE_BYTES).unwrap();
            let keys = db.len();
            let started = std::time::Instant::now();
            scan_index(&db).unwrap();
            let scan = started.elapsed().as_secs_f64() * 1e6;
            println!(
                "{{\"path\": \"index scan at open\", \"batches\": {batches}, \"keys\": {keys}, \"us\": {scan:.0}, \"us_per_key\": {:.2}}}",
                scan / keys as f64
            );
        }
    }

    #[test]
    fn opening_a_foreign_sled_database_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = sled::Config::new().path(dir.path()).open().unwrap();
            db.insert(b"other", b"data").unwrap();
            db.flush().unwrap();
        }
        assert!(matches!(SledStore::open(dir.path()), Err(Error::Storage(_))));
    }
}
