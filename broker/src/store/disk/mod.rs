//! The on-disk engine, [`DiskStore`]: batches and everything else in append-only segment files that are
//! the log, and a sled 0.34 index of them that can always be rebuilt from the log.
//!
//! # Layout (version 3)
//!
//! The [segment files](segment) hold every record the store writes; [`record`] defines their bodies:
//! batches (with everything the index says of them), topic policies, durable subscriptions' committed
//! offsets, lost ranges, sync markers and a layout mark. The [`index`] (sled) maps each topic's offsets to
//! where their records are, and publishers' sequence numbers to their batches; it can be rebuilt from the
//! segments alone. [`layout`] says how a layout-2 folder is migrated.
//!
//! # Durability: [`DiskStore::sync`]
//!
//! A sync, under one lock ([`sync::IndexFiles::lock`]), and counted only if every step succeeds:
//!
//! 1. marks lost the batches that readers or the scrub found damaged since the last sync (best effort);
//! 2. syncs the segments ([`Segments::sync`](segment::Segments::sync): fdatasync of every segment written
//!    since the last sync, and of their folder if a segment was created; then the `synced` side file).
//!    Every record appended so far is now durable: batches, policies and durable offsets alike. **This is
//!    what an acknowledgement waits for**, one fdatasync per group of the [`writer`](crate::writer). A
//!    durable-offset commit or a policy costs no more than a batch;
//! 3. remembers the checkpoint, so that the next record appended is preceded by a sync marker naming it
//!    ([`journal`]);
//! 4. makes the index durable only once [`INDEX_SYNC_BYTES`] of records were appended since it last was
//!    (which bounds what opening replays), or when opening asks for it. Then it stores the checkpoint of
//!    step 2 and makes sled's files durable, which sled does not do by itself ([`sync`]). Every record
//!    before that checkpoint was indexed before the sync began (one writer).
//!
//! # Opening, recovery and damage
//!
//! [`DiskStore::open`] opens and checks the index ([`open`]): sled panics, fails or comes back older on
//! some damage to its files, so a broken index is moved aside and rebuilt from every segment.
//! [`recovery`] then puts the index right after any stop: it knows the **acknowledged extent** of the
//! segments, treats a bad record inside it as corruption that costs only that record (logged as an error,
//! served as lost), cuts a torn tail past it silently, and indexes what the index lacks.
//!
//! A batch whose record fails its checksum when read at run time is served as a [`Stored::Lost`], logged
//! as an error once per record and run, and marked lost by the next sync ([`loss`]). The [`scrub`] checks
//! every stored batch in the background at a configured pace, with the same outcome; [`verify`]
//! (`verify-store`) checks a stopped store completely.
//!
//! Costs and limits: an acknowledgement costs one fdatasync, whatever the group holds; the index's own sync
//! (sled's `flush`, which waits for its writes with `sync_file_range`, a listing of `blobs/` and an
//! fdatasync of `db`) runs at most every 64 MiB of records.
//!
//! # Retention
//!
//! [`retention`] retires a topic's oldest offsets and deletes segment files that hold nothing kept, a
//! whole segment at a time, carrying forward the few records still needed; it explains why the log is
//! one shared set of segments rather than one per topic.
//!
//! # Locks
//!
//! In the order they may be taken: the sync lock ([`sync::IndexFiles::lock`], for a whole sync), the
//! damaged-batch queue ([`loss::Damaged`], briefly), the topic set (`topics`, while a batch or a loss is
//! indexed), then the journal's marker lock, the segments' writer lock (taken inside the marker lock only to
//! write a sync marker, see [`journal`]) and the segments' reader cache. Sled's own locks are taken inside any of them.

use std::collections::HashSet;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

use bytes::Bytes;
use sealpost_protocol::{ChainId, DurableKey, Offset, Principal, PublicKey, Topic};

use self::index::{
    batch_key, decode_durable, durable_key, durable_value, policy_key, publisher_key, sled_error, topic_key,
    Entry, Slot, POLICY,
};
use self::journal::{Journal, Reserve};
use self::loss::{lost_range, Damaged};
use self::open::{
    drop_quietly, has_index_files, has_segment_data, move_index_aside, open_index, open_sled, panic_message,
    IndexState,
};
use self::record::{BatchRecord, Lost};
use self::segment::{Check, Segments};
use self::sync::IndexFiles;
use super::{io_error, lock, offset_mismatch, Append, PublisherRecord, Store, Stored, StoredBatch};
use crate::{Error, Result};

pub mod backup;
#[cfg(test)]
mod bit_flips;
mod codec;
pub mod format;
mod index;
mod journal;
mod layout;
mod loss;
mod open;
mod record;
mod recovery;
mod retention;
pub mod scrub;
pub mod segment;
mod sync;
#[cfg(test)]
mod tests;
pub mod verify;

/// The index is made durable (and the checkpoint advanced) at least every this many bytes appended to the
/// segments, so that opening replays at most that much (64 MiB).
pub const INDEX_SYNC_BYTES: u64 = 64 * 1024 * 1024;

/// The default limit of sled's page cache: 128 MiB.
pub const DEFAULT_CACHE_BYTES: u64 = 128 * 1024 * 1024;
/// The default free space appends leave on the file system: 64 MiB.
pub const DEFAULT_RESERVE_BYTES: u64 = 64 * 1024 * 1024;

/// How a [`DiskStore`] is opened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DiskOptions {
    /// Approximate limit of sled's page cache (sled's own default is 1 GiB).
    pub cache_bytes: u64,
    /// Appends fail with [`Error::StorageFull`] rather than leave less than this free on the file system.
    pub reserve_bytes: u64,
    /// A segment is rolled once it holds this many bytes ([`segment::SEGMENT_BYTES`] by default): the
    /// unit in which retention gives space back.
    pub segment_bytes: u64,
}

impl Default for DiskOptions {
    fn default() -> Self {
        Self {
            cache_bytes: DEFAULT_CACHE_BYTES,
            reserve_bytes: DEFAULT_RESERVE_BYTES,
            segment_bytes: segment::SEGMENT_BYTES,
        }
    }
}

/// A [`Store`] in segment files and a sled index of them, on disk. See the module documentation for its
/// layout, its `sync` and its recovery.
#[derive(Debug)]
pub struct DiskStore {
    db: sled::Db,
    journal: Journal,
    /// Sled's files, as `sync` makes them durable; its lock is the sync lock.
    index_files: IndexFiles,
    /// Topics that have a `t` key.
    topics: Mutex<HashSet<Topic>>,
    /// The next sync must make the index durable (opening wrote to it).
    meta_dirty: AtomicBool,
    syncs: AtomicU64,
    damaged: Damaged,
    /// The first segment written in layout 3: bad bytes at the end of an earlier one may be a torn tail
    /// that a layout-2 recovery left in place.
    layout3_from: AtomicU64,
    /// What each segment holds of each topic, for retention.
    spans: Mutex<retention::Spans>,
    /// Held for a whole retention pass: one at a time.
    retention_pass: Mutex<()>,
    /// Held while a durable offset is committed, or carried forward by retention: the two never cross.
    durable_commits: Mutex<()>,
}

impl DiskStore {
    /// Opens (creating it if needed) the store in `dir` with the default [`DiskOptions`]. The folder
    /// belongs to the store: put nothing else in it.
    pub fn open(dir: &Path) -> Result<DiskStore> {
        Self::open_with(dir, DiskOptions::default())
    }

    /// Like [`open`](Self::open), with `options`. Opening recovers from a crash and from damage (see the
    /// module documentation), rebuilds a broken index from the segments, and syncs before it returns.
    pub fn open_with(dir: &Path, options: DiskOptions) -> Result<DiskStore> {
        std::fs::create_dir_all(dir).map_err(|e| io_error(&format!("creating {}", dir.display()), &e))?;
        format::check_dir(dir)?;
        let has_segments = has_segment_data(dir)?;
        // Segments and no index at all: a restored backup (see `backup`), built from the segments.
        let restored = has_segments && !has_index_files(dir)?;
        let opened = open_index(dir, options.cache_bytes, has_segments)?;
        let segments = Segments::open(&dir.join("segments"), options.reserve_bytes)?
            .with_segment_bytes(options.segment_bytes);
        let (store, mut state) = match opened {
            Ok((db, state)) => (Self::assemble(db, dir, segments)?, state),
            Err(_) if restored => Self::built_from_segments(dir, options, segments)?,
            Err(why) => Self::rebuilt(dir, options, segments, &why)?,
        };
        let known = layout::layout3_from(&store.db, &state)?;
        store.layout3_from.store(known, Ordering::SeqCst);
        let mode = match state {
            IndexState::Rebuilt(_) => recovery::Mode::Rebuild,
            _ => recovery::Mode::FromCheckpoint,
        };
        let (store, recovered) = match recovery::run(&store.db, &store.journal, known, mode) {
            Ok(recovered) => (store, recovered),
            Err(recovery::Failure::Storage(e)) => return Err(e),
            Err(recovery::Failure::Index(why)) if mode == recovery::Mode::FromCheckpoint => {
                let segments = store.into_segments();
                let (store, rebuilt) = Self::rebuilt(dir, options, segments, &why)?;
                state = rebuilt;
                match recovery::run(&store.db, &store.journal, 0, recovery::Mode::Rebuild) {
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
        *lock(&store.topics, "topic set")? = recovered.topics;
        *lock(&store.spans, "segment spans")? = retention::Spans::of_index(&store.db)?;
        let known = store.layout3_from();
        let from = layout::finish(&store.db, &store.journal, &state, known, recovered.layout3_from)?;
        store.layout3_from.store(from, Ordering::SeqCst);
        // Everything recovery kept or rebuilt becomes durable, and the checkpoint moves past it.
        store.meta_dirty.store(true, Ordering::SeqCst);
        store.sync()?;
        format::write(dir, format::supported())?;
        Ok(store)
    }

    fn assemble(db: sled::Db, dir: &Path, segments: Segments) -> Result<DiskStore> {
        Ok(DiskStore {
            index_files: IndexFiles::open(dir)?,
            db,
            journal: Journal::new(segments),
            topics: Mutex::new(HashSet::new()),
            meta_dirty: AtomicBool::new(false),
            syncs: AtomicU64::new(0),
            damaged: Damaged::default(),
            layout3_from: AtomicU64::new(0),
            spans: Mutex::new(retention::Spans::default()),
            retention_pass: Mutex::new(()),
            durable_commits: Mutex::new(()),
        })
    }

    /// Closes the index (quietly: it may be damaged) and gives the segments back.
    fn into_segments(self) -> Segments {
        let DiskStore { db, journal, .. } = self;
        drop_quietly(db);
        journal.into_segments()
    }

    /// Moves the broken index of `dir` aside and opens an empty one in its place, to be rebuilt.
    fn rebuilt(
        dir: &Path,
        options: DiskOptions,
        segments: Segments,
        why: &str,
    ) -> Result<(DiskStore, IndexState)> {
        let aside: PathBuf = move_index_aside(dir)?;
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

    /// Opens a new index for the segments of `dir`, which had none (a restored backup): built from the
    /// segments, as a broken one is, but nothing to move aside and no error to report.
    fn built_from_segments(
        dir: &Path,
        options: DiskOptions,
        segments: Segments,
    ) -> Result<(DiskStore, IndexState)> {
        tracing::info!(data_dir = %dir.display(), "no index: it is built from the segments");
        let db = match catch_unwind(AssertUnwindSafe(|| open_sled(dir, options.cache_bytes))) {
            Ok(Ok(db)) => db,
            Ok(Err(e)) => return Err(sled_error(e)),
            Err(panic) => {
                return Err(Error::Storage(format!("a fresh index panicked: {}", panic_message(&*panic))))
            }
        };
        Ok((Self::assemble(db, dir, segments)?, IndexState::Rebuilt(None)))
    }

    /// The first segment written in layout 3.
    fn layout3_from(&self) -> u64 {
        self.layout3_from.load(Ordering::SeqCst)
    }

    /// Whether retention removed `offset` of `topic`.
    fn is_retired(&self, topic: &Topic, offset: Offset) -> Result<bool> {
        Ok(offset < index::retired(&self.db, topic)?)
    }

    /// The index, for the scrub.
    fn db(&self) -> &sled::Db {
        &self.db
    }

    /// The segments, for the scrub.
    fn segments(&self) -> &Segments {
        self.journal.segments()
    }

    /// The topics that have batches, for the scrub.
    fn topics(&self) -> Result<Vec<Topic>> {
        Ok(lock(&self.topics, "topic set")?.iter().cloned().collect())
    }

    /// A batch whose record `check` found not intact after opening (a read or the scrub): reports it once
    /// per record and run, queues it to be marked lost by the next sync, and returns the range to serve.
    fn damaged(&self, topic: &Topic, entry: &Entry, check: &Check, when: &str) -> super::LostRange {
        self.damaged.found(&self.db, self.segments().dir(), topic, entry, check, when)
    }

    /// Records `lost` of `topic`: a `lost` record in the segments, then its `b` value, and the `p` and `t`
    /// keys the index lacks. Durable at the next sync.
    fn mark_lost(&self, topic: &Topic, lost: &Lost) -> Result<()> {
        self.journal.append(&[&record::lost(topic, lost)], Reserve::Ignore)?;
        let mut topics = lock(&self.topics, "topic set")?;
        let writes =
            index::lost_writes(&self.db, topic, lost, !topics.contains(topic)).map_err(sled_error)?;
        self.db.apply_batch(writes).map_err(sled_error)?;
        topics.insert(topic.clone());
        Ok(())
    }

    /// Step 1 of `sync`: marks lost the batches found damaged since the last sync. Best effort: what fails
    /// (a full disk) is tried again at the next sync, and readers serve the loss meanwhile.
    fn mark_damaged(&self) {
        let mut again = Vec::new();
        for (topic, offset, at, reason) in self.damaged.take() {
            let marked = (|| {
                let key = batch_key(&topic, offset);
                let Some(v) = self.db.get(&key).map_err(sled_error)? else { return Ok(()) };
                match Slot::decode(&key, &v)? {
                    Slot::Batch(entry) if entry.location == at => {
                        let lost = Lost {
                            range: lost_range(&self.db, &topic, &entry, reason),
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
        self.damaged.again(again);
    }
}

impl Store for DiskStore {
    fn append(&self, batch: Append<'_>) -> Result<()> {
        let (topic, publisher, record) = (batch.topic(), batch.publisher(), batch.record());
        let next = index::end_of(&self.db, topic)?;
        if record.offset != next {
            return Err(offset_mismatch(topic, next, record.offset));
        }
        // The record's fields, then the sealed batch itself: written as they are, not copied together.
        let prefix = record::batch_prefix(topic, publisher, batch.chain(), &record);
        let location = self.journal.append(&[&prefix, batch.bytes()], Reserve::Keep)?;
        let entry = Entry {
            offset: record.offset,
            count: record.count,
            location,
            publisher: *publisher.as_bytes(),
            first_seq: record.first_seq,
            chain: batch.chain(),
        };
        let mut topics = lock(&self.topics, "topic set")?;
        let new_topic = !topics.contains(topic);
        // Separate inserts, in this order, cost a third of one `apply_batch` (measured: ~40 against
        // ~140 µs): sled recovers a prefix of its log, and recovery completes a `b` key without its `p` key
        // from the segment record.
        let indexed = (|| {
            if new_topic {
                self.db.insert(topic_key(topic), &[][..])?;
            }
            self.db.insert(batch_key(topic, record.offset), &entry.encode()[..])?;
            self.db.insert(
                publisher_key(topic, publisher, batch.chain(), record.first_seq),
                &record.encode()[..],
            )
        })();
        if let Err(e) = indexed {
            // The record is in the segment but not in the index: recovery would index it at this offset,
            // which a later append would then also take. Only a restart (recovery) can sort that out.
            self.segments().poison(format!("indexing the batch at {topic}:{} failed: {e}", record.offset));
            return Err(sled_error(e));
        }
        if new_topic {
            topics.insert(topic.clone());
        }
        drop(topics);
        lock(&self.spans, "segment spans")?.add(topic, record.end(), record.count, &location);
        Ok(())
    }

    fn sync(&self) -> Result<()> {
        let mut state = self.index_files.lock()?;
        self.mark_damaged();
        let checkpoint = self.journal.sync()?;
        let unindexed = self.journal.unindexed();
        if self.meta_dirty.swap(false, Ordering::SeqCst) || unindexed >= INDEX_SYNC_BYTES {
            if let Err(e) = self.index_files.make_durable(&mut state, &self.db, checkpoint) {
                // Sled cannot go on after a failed write without being reopened, and a failed fsync of its
                // files is as final as one of a segment's: only a reopen (recovery) can tell what is
                // durable. The segments refuse everything from now on, and the broker stops.
                self.meta_dirty.store(true, Ordering::SeqCst);
                self.segments().poison(format!("making the index durable failed: {e}"));
                return Err(e);
            }
            self.journal.indexed(unindexed);
        }
        self.syncs.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    fn failed(&self) -> Option<String> {
        self.segments().poisoned()
    }

    fn read(&self, topic: &Topic, from: Offset, max_bytes: usize) -> Result<Vec<Stored>> {
        let first = index::retired(&self.db, topic)?;
        let mut out: Vec<Stored> = super::retired_range(from, first).into_iter().collect();
        let start = index::read_start(&self.db, topic, from.max(first))?;
        let mut total = 0usize;
        for slot in index::slots_from(&self.db, topic, start) {
            let entry = match slot? {
                Slot::Lost(lost) => {
                    self.damaged.serving(topic, &lost);
                    out.push(Stored::Lost(Box::new(lost.range)));
                    continue;
                }
                Slot::Batch(entry) => entry,
            };
            let prefix = BatchRecord::prefix_len(topic, entry.chain);
            let len = usize::try_from(entry.location.len).unwrap_or(usize::MAX).saturating_sub(prefix);
            if !out.is_empty() && total.saturating_add(len) > max_bytes {
                break;
            }
            total = total.saturating_add(len);
            let item = match self.segments().check(&entry.location)? {
                Check::Intact(body) if body.len() >= prefix && entry.matches(topic, &body) => {
                    // A slice of the buffer the record was read into: no copy.
                    let bytes = body.slice(prefix..);
                    Stored::Batch(StoredBatch { offset: entry.offset, count: entry.count, bytes })
                }
                // Retired (and its segment deleted) since the index said where it was: the next read
                // from here reports the retirement.
                _ if self.is_retired(topic, entry.offset)? => break,
                check => Stored::Lost(Box::new(self.damaged(topic, &entry, &check, "reading it"))),
            };
            out.push(item);
        }
        Ok(out)
    }

    fn next_offset(&self, topic: &Topic) -> Result<Offset> {
        index::end_of(&self.db, topic)
    }

    fn first_offset(&self, topic: &Topic) -> Result<Offset> {
        index::first_offset(&self.db, topic)
    }

    fn retain(
        &self,
        rules: &crate::retention::Retention,
        now: std::time::SystemTime,
    ) -> Result<super::Retained> {
        if rules.is_empty() {
            return Ok(super::Retained::default());
        }
        self.enforce(rules, now)
    }

    fn publisher_record(
        &self,
        topic: &Topic,
        publisher: &PublicKey,
        chain: ChainId,
        first_seq: u64,
    ) -> Result<Option<PublisherRecord>> {
        index::publisher_record(&self.db, &publisher_key(topic, publisher, chain, first_seq))
    }

    fn publisher_head(
        &self,
        topic: &Topic,
        publisher: &PublicKey,
        chain: ChainId,
    ) -> Result<Option<PublisherRecord>> {
        index::publisher_head(&self.db, topic, publisher, chain)
    }

    fn durable_offset(&self, topic: &Topic, principal: &Principal, name: &str) -> Result<Option<Offset>> {
        match self.db.get(durable_key(topic, principal, name)?).map_err(sled_error)? {
            Some(v) => decode_durable(&v)
                .map(|(offset, _)| Some(offset))
                .ok_or_else(|| codec::corrupt("durable offset")),
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
        let body = record::durable(topic, principal, name, next_offset)?;
        let _commit = lock(&self.durable_commits, "durable commits")?;
        let at = self.journal.append(&[&body], Reserve::Keep)?;
        if let Err(e) = self.db.insert(key, durable_value(next_offset, Some(at))) {
            // Recovery replays the record; until then the index would answer an older offset.
            self.segments().poison(format!("indexing a durable offset on {topic} failed: {e}"));
            return Err(sled_error(e));
        }
        Ok(())
    }

    fn put_policy(&self, topic: &Topic, epoch: u64, policy: &Bytes) -> Result<()> {
        self.journal.append(&[&record::policy_prefix(topic, epoch), policy], Reserve::Keep)?;
        if let Err(e) = self.db.insert(policy_key(topic, epoch), &policy[..]) {
            self.segments().poison(format!("indexing a policy of {topic} failed: {e}"));
            return Err(sled_error(e));
        }
        Ok(())
    }

    fn policies(&self, topic: &Topic, max: usize) -> Result<Vec<Bytes>> {
        let mut newest = Vec::new();
        for entry in self.db.scan_prefix(codec::topic_prefix(POLICY, topic, 0)).rev().take(max) {
            let (_, value) = entry.map_err(sled_error)?;
            newest.push(Bytes::copy_from_slice(&value));
        }
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
        let below = policy_key(topic, before.unwrap_or(u64::MAX));
        let entries = self.db.range(codec::topic_prefix(POLICY, topic, 0)..below).rev();
        let newest_first = entries.map(|entry| entry.map(|(_, value)| Bytes::copy_from_slice(&value)));
        super::history_page(newest_first, max, max_bytes).map_err(sled_error)
    }

    fn syncs(&self) -> u64 {
        self.syncs.load(Ordering::SeqCst)
    }

    fn topics(&self, after: Option<&Topic>, max: usize) -> Result<Vec<Topic>> {
        index::topics(&self.db, after, max)
    }

    fn durables(&self, after: Option<&DurableKey>, max: usize) -> Result<Vec<(DurableKey, Offset)>> {
        index::durables(&self.db, after, max)
    }
}
