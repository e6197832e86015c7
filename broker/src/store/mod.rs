//! Durable storage of sealed batches: the [`Store`] interface and its engines.
//!
//! The store owns three kinds of state, all keyed by topic:
//!
//! - the **log** of sealed batches. Offsets are per topic, start at 0 and count *messages*: a batch of `n`
//!   messages stored at offset `o` covers `o..o + n`, and the next batch starts at `o + n`. Offsets are
//!   monotonic and gap-free ([`Store::append`] refuses any other offset). An engine that finds stored
//!   bytes damaged (a checksum fails where acknowledged data was) keeps the offsets and serves them as a
//!   [`LostRange`] instead of a batch, forever after: [`Store::read`] yields [`Stored`] items, never a
//!   silent gap;
//! - the **publisher index**: for each (topic, publisher key, chain id, first sequence number) the batch's
//!   [`PublisherRecord`] (where it was stored and its digest), which answers "is this a retry?" and "where
//!   does this publisher instance's chain stand?" (a chain per [`ChainId`]: instances of one key never
//!   meet here);
//! - **durable subscription offsets**: the next offset each (topic, principal, subscription name) committed;
//! - **topic policies**: the signed policy bytes of each (topic, epoch). The broker cannot read the content
//!   keys in them and cannot change them undetected (clients verify them against the topic authority).
//!
//! # Durability
//!
//! Nothing written through the store is durable until [`Store::sync`] returns `Ok`: then everything appended
//! or committed before the call survives a crash of the process or of the machine. An append is atomic: after
//! a crash, a batch is either present together with its publisher record, or neither is. The store does not
//! decide what to store (the [`sequencer`](crate::writer::sequencer) does) nor at which offset (the
//! [`writer`](crate::writer) assigns offsets; an engine only checks them), and is written by that single
//! writer; it may be read concurrently.
//!
//! # Engines
//!
//! - [`DiskStore`]: on disk: every record (batches, policies, durable offsets) in append-only
//!   [segment](disk::segment) files that are the log, and an index of them (batches, publisher records,
//!   durable offsets, policies) in one sled database that can be rebuilt from the log. Its module,
//!   [`disk`], documents the layout, how `sync` makes them durable, how opening recovers, and how damage
//!   costs only what it hits.
//! - [`JetStreamStore`]: in a NATS JetStream cluster that several brokers share: a stream per topic, a
//!   policy stream, a key-value bucket of durable offsets. Its module, [`jetstream`], documents how
//!   offsets map to stream sequences, how appends stay in chain order through retries and leader
//!   elections, and how a broker learns what the others append ([`Store::share`]).
//! - [`MemoryStore`]: in memory, for tests and ephemeral brokers; `sync` only counts.
//!
//! [`open`] opens the one a configuration names. [`testing::TestStore`] wraps either, for tests that inject
//! faults. Nothing of an engine leaks through [`Store`]. The behavioural tests at the bottom of this file
//! are written once and run against every engine.
//!
//! # Copies
//!
//! A batch is stored from the very `Bytes` the writer was handed: engines take it by reference
//! ([`Append::bytes`]). The memory engine and the writer's tail share it; the disk engine writes the
//! record's header (8 bytes), the record's fields (about 90 bytes) and the batch's bytes with one vectored
//! write, computing the CRC over them in place: no copy of the batch in user space. A read from disk reads
//! the whole record into one buffer and hands out a `Bytes` slice of it: no copy after the read. (Topic
//! policies read from the index are copied out of sled's buffer, which cannot be shared.)

use std::time::SystemTime;

use bytes::Bytes;
use sealpost_protocol::{
    ChainHead, ChainId, Digest, DurableKey, ErrorCode, Frame, LostBatch, Offset, Principal, PublicKey,
    SubscriptionId, Topic, VerifiedBatch,
};

use crate::retention::Retention;
use crate::{Error, Result};

pub mod conformance;
pub mod disk;
pub mod jetstream;
pub mod memory;
mod open;
pub mod testing;

pub use self::disk::{DiskOptions, DiskStore};
pub use self::jetstream::{JetStreamOptions, JetStreamStore};
pub use self::memory::MemoryStore;
pub use self::open::{open, Engine};

/// The former name of [`DiskStore`], whose index is in sled (its batches are in segment files).
pub type SledStore = DiskStore;
/// The former name of [`DiskOptions`].
pub type SledOptions = DiskOptions;

/// A batch as stored: its first offset, its number of messages and its canonical sealed bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredBatch {
    /// Offset of its first message.
    pub offset: Offset,
    /// Number of messages; the batch covers `offset..offset + count`.
    pub count: u32,
    /// The canonical sealed batch, exactly as the publisher signed it.
    pub bytes: Bytes,
}

impl StoredBatch {
    /// The offset right after the batch's last message.
    pub fn end(&self) -> Offset {
        self.offset.saturating_add(self.count.into())
    }
}

/// What one retention pass ([`Store::retain`]) did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Retained {
    /// The topics whose first offset moved, and where to.
    pub topics: Vec<(Topic, Offset)>,
    /// Units of storage given back (segment files on disk).
    pub segments_removed: u64,
    /// Bytes given back to the file system.
    pub bytes_freed: u64,
}

/// The item a read from `from` yields first when `from` is below the topic's first offset `first`.
pub(crate) fn retired_range(from: Offset, first: Offset) -> Option<Stored> {
    (from < first).then(|| {
        Stored::Lost(Box::new(LostRange {
            offset: from,
            count: first.0 - from.0,
            batch: None,
            reason: LossReason::Retired,
        }))
    })
}

/// Why stored offsets are lost.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum LossReason {
    /// The record that held them fails its checksum, or is cut short, inside the part of the log a sync
    /// had covered: storage corruption (a flipped bit, a damaged sector).
    Corrupt,
    /// The record that held them is missing: its segment file is gone, or ends before it.
    Missing,
    /// Another record, intact, is where theirs was: bytes the broker did not put there (the data folder was
    /// changed behind its back, or two folders were mixed).
    Replaced,
    /// They were removed by the broker's retention rules: they are below the topic's first offset. Never
    /// stored: a read from below the first offset yields it.
    Retired,
}

impl LossReason {
    /// The code peers are told.
    pub fn code(self) -> ErrorCode {
        match self {
            LossReason::Retired => ErrorCode::RETIRED,
            _ => ErrorCode::DATA_LOST,
        }
    }

    /// Stable one-byte encoding, for the on-disk engines.
    pub(crate) fn encode(self) -> u8 {
        match self {
            LossReason::Corrupt => 1,
            LossReason::Missing => 2,
            LossReason::Replaced => 3,
            LossReason::Retired => 4,
        }
    }

    /// Inverse of [`encode`](Self::encode).
    pub(crate) fn decode(byte: u8) -> Option<Self> {
        match byte {
            1 => Some(LossReason::Corrupt),
            2 => Some(LossReason::Missing),
            3 => Some(LossReason::Replaced),
            _ => None,
        }
    }
}

impl std::fmt::Display for LossReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            LossReason::Corrupt => "its record fails its checksum",
            LossReason::Missing => "its record is missing",
            LossReason::Replaced => "another record is where its record was",
            LossReason::Retired => "retention removed them",
        })
    }
}

/// Offsets of a topic whose messages are lost: `offset..offset + count`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LostRange {
    /// The first lost offset.
    pub offset: Offset,
    /// How many offsets, at least 1.
    pub count: u64,
    /// The one batch that held them, when the store knows it.
    pub batch: Option<LostBatch>,
    /// Why they are lost.
    pub reason: LossReason,
}

impl LostRange {
    /// The offset right after the range.
    pub fn end(&self) -> Offset {
        self.offset.saturating_add(self.count)
    }
}

/// One item of a topic's log as [`Store::read`] yields it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Stored {
    /// A stored batch.
    Batch(StoredBatch),
    /// Offsets whose messages are lost (boxed: rare, and large next to a batch).
    Lost(Box<LostRange>),
}

impl Stored {
    /// Its first offset.
    pub fn offset(&self) -> Offset {
        match self {
            Stored::Batch(b) => b.offset,
            Stored::Lost(l) => l.offset,
        }
    }

    /// The offset right after it.
    pub fn end(&self) -> Offset {
        match self {
            Stored::Batch(b) => b.end(),
            Stored::Lost(l) => l.end(),
        }
    }

    /// Bytes of batch it holds in memory (none for a lost range).
    pub fn bytes_len(&self) -> usize {
        match self {
            Stored::Batch(b) => b.bytes.len(),
            Stored::Lost(_) => 0,
        }
    }

    /// The batch, if it is one.
    pub fn batch(self) -> Option<StoredBatch> {
        match self {
            Stored::Batch(b) => Some(b),
            Stored::Lost(_) => None,
        }
    }

    /// The frame that tells `subscription` of it: `Deliver` or `Lost`.
    pub fn into_frame(self, subscription: SubscriptionId) -> Frame {
        match self {
            Stored::Batch(b) => Frame::Deliver { subscription, offset: b.offset, batch: b.bytes },
            Stored::Lost(l) => Frame::Lost {
                subscription,
                offset: l.offset,
                count: l.count,
                batch: l.batch,
                reason: l.reason.code(),
            },
        }
    }
}

/// Where one batch of a publisher was stored, and what it was.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PublisherRecord {
    /// The batch's first sequence number.
    pub first_seq: u64,
    /// Its number of messages.
    pub count: u32,
    /// The topic offset of its first message.
    pub offset: Offset,
    /// Its digest (what its signature covers, and what the publisher's next batch names as `prev_digest`).
    pub digest: Digest,
}

impl PublisherRecord {
    /// The record of `batch` stored at `offset`.
    pub fn of(batch: &VerifiedBatch, offset: Offset) -> Self {
        let header = batch.header();
        Self { first_seq: header.first_seq, count: header.count, offset, digest: batch.digest() }
    }

    /// The sequence number the publisher's next batch must start at.
    pub fn next_seq(&self) -> u64 {
        self.first_seq.saturating_add(self.count.into())
    }

    /// The publisher's chain head after this batch: what its next batch must continue.
    pub fn head(&self) -> ChainHead {
        ChainHead { next_seq: self.next_seq(), prev_digest: self.digest }
    }

    /// The offset right after the batch's last message.
    pub fn end(&self) -> Offset {
        self.offset.saturating_add(self.count.into())
    }

    /// Encoded size: first_seq, count, offset, digest.
    pub(crate) const ENCODED_LEN: usize = 8 + 4 + 8 + 32;

    /// Fixed-size big-endian encoding, shared by the on-disk engines.
    pub(crate) fn encode(&self) -> [u8; Self::ENCODED_LEN] {
        let mut out = [0u8; Self::ENCODED_LEN];
        out[..8].copy_from_slice(&self.first_seq.to_be_bytes());
        out[8..12].copy_from_slice(&self.count.to_be_bytes());
        out[12..20].copy_from_slice(&self.offset.0.to_be_bytes());
        out[20..].copy_from_slice(self.digest.as_bytes());
        out
    }

    /// Inverse of [`encode`](Self::encode).
    pub(crate) fn decode(bytes: &[u8]) -> Result<Self> {
        let corrupt = || Error::Storage("corrupt publisher record".into());
        if bytes.len() != Self::ENCODED_LEN {
            return Err(corrupt());
        }
        let first_seq = u64::from_be_bytes(bytes[..8].try_into().map_err(|_| corrupt())?);
        let count = u32::from_be_bytes(bytes[8..12].try_into().map_err(|_| corrupt())?);
        let offset = Offset(u64::from_be_bytes(bytes[12..20].try_into().map_err(|_| corrupt())?));
        let digest = Digest(bytes[20..].try_into().map_err(|_| corrupt())?);
        Ok(Self { first_seq, count, offset, digest })
    }
}

/// The chain head of a publisher whose last stored batch on a topic is `last`: [`ChainHead::GENESIS`]
/// without one. The one place it is built: the broker answers a publisher's `Head` request with it, and
/// the [`sequencer`](crate::writer::sequencer) checks every batch against it.
pub fn chain_head(last: Option<&PublisherRecord>) -> ChainHead {
    last.map_or(ChainHead::GENESIS, PublisherRecord::head)
}

/// One batch to append, as [`Store::append`] takes it: a verified batch and the offset the writer gave it.
///
/// Everything an engine stores of the batch (its topic, its publisher, its [`PublisherRecord`] and its
/// canonical bytes) is read from these two, so they cannot disagree; the bytes are shared, never copied.
#[derive(Clone, Copy, Debug)]
pub struct Append<'a> {
    batch: &'a VerifiedBatch,
    offset: Offset,
}

impl<'a> Append<'a> {
    /// `batch`, to be stored at `offset`.
    pub fn new(batch: &'a VerifiedBatch, offset: Offset) -> Self {
        Self { batch, offset }
    }

    /// The topic the batch was sealed for, and is stored on.
    pub fn topic(&self) -> &'a Topic {
        &self.batch.header().topic
    }

    /// The key that signed the batch.
    pub fn publisher(&self) -> &'a PublicKey {
        &self.batch.header().publisher
    }

    /// The chain (publisher instance) the batch continues.
    pub fn chain(&self) -> ChainId {
        self.batch.header().chain
    }

    /// Offset of the batch's first message.
    pub fn offset(&self) -> Offset {
        self.offset
    }

    /// What the publisher index keeps of the batch.
    pub fn record(&self) -> PublisherRecord {
        PublisherRecord::of(self.batch, self.offset)
    }

    /// The canonical sealed batch, exactly as the publisher signed it.
    pub fn bytes(&self) -> &'a Bytes {
        self.batch.as_bytes()
    }
}

/// What a [`Sink`] is told of each batch committed: its topic and the batch.
pub type OnCommitted = dyn Fn(&Topic, StoredBatch) + Send + Sync;

/// Where an engine that several brokers write tells this broker what any of them did ([`Store::share`]).
#[derive(Clone)]
pub struct Sink {
    /// A batch was committed to a topic's log: each topic's batches in offset order, a batch perhaps
    /// more than once.
    pub committed: std::sync::Arc<OnCommitted>,
    /// A topic policy was stored (by any broker): policies read before may be stale.
    pub policies_changed: std::sync::Arc<dyn Fn() + Send + Sync>,
}

impl std::fmt::Debug for Sink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sink").finish_non_exhaustive()
    }
}

/// The storage interface of the broker. Object-safe: the broker holds an `Arc<dyn Store>`.
///
/// Writes come from a single writer; reads may run concurrently with them and see every completed write,
/// durable or not (callers that must only expose durable data track it themselves, as the
/// [`writer`](crate::writer) does with its durable end).
pub trait Store: Send + Sync + 'static {
    /// Atomically stores the batch at its offset on its topic, **and** indexes its record under (topic,
    /// publisher, chain, first sequence number). Not durable until [`sync`](Self::sync).
    ///
    /// The [`writer`](crate::writer) assigns offsets; the engine only checks: an offset other than
    /// [`next_offset`](Self::next_offset) stores nothing and is an error.
    fn append(&self, batch: Append<'_>) -> Result<()>;

    /// Makes everything appended or committed so far durable: returns `Ok` only after an fsync (or
    /// fdatasync) that covers it.
    fn sync(&self) -> Result<()>;

    /// Why the store can take no more writes until it is reopened, or `None` while it can go on. A failed
    /// fsync is such a failure: afterwards the kernel may report later fsyncs as successful without the
    /// data ("fsyncgate"), so the engine refuses every later append and sync, and only the recovery of a
    /// reopen knows what is durable. The [`writer`](crate::writer) asks after every failed group and then
    /// stops the broker (fail-stop). Engines that cannot fail so keep the default, `None`.
    fn failed(&self) -> Option<String> {
        None
    }

    /// Stored batches of `topic` in offset order, and lost ranges where batches were lost, starting with the
    /// item that contains offset `from` (or the first one after it), and stopping before the batch that
    /// would take the total of their bytes over `max_bytes` (a lost range counts no bytes). The first item
    /// is always returned if there is one, even if it alone is larger. Empty if nothing is stored at or
    /// after `from`. A batch whose bytes turn out damaged when read comes back as a [`Stored::Lost`] (and
    /// the engine reports it), not as an error.
    fn read(&self, topic: &Topic, from: Offset, max_bytes: usize) -> Result<Vec<Stored>>;

    /// The offset the next message on `topic` gets: 0 for an empty topic.
    fn next_offset(&self, topic: &Topic) -> Result<Offset>;

    /// The first offset of `topic` that retention did not remove: 0 for a topic it never touched. A read
    /// from below it starts with a [`LossReason::Retired`] range up to it.
    fn first_offset(&self, topic: &Topic) -> Result<Offset>;

    /// One retention pass: retires what `rules` say may go, as of `now`, and gives back the space of what
    /// holds nothing kept (see [`crate::retention`]). Never retires a batch a sync has not covered.
    fn retain(&self, rules: &Retention, now: SystemTime) -> Result<Retained>;

    /// The record of the batch of chain `chain` of `publisher` on `topic` that starts at sequence number
    /// `first_seq`.
    fn publisher_record(
        &self,
        topic: &Topic,
        publisher: &PublicKey,
        chain: ChainId,
        first_seq: u64,
    ) -> Result<Option<PublisherRecord>>;

    /// The record of the last batch of chain `chain` of `publisher` on `topic` (the one with the highest
    /// `first_seq`).
    fn publisher_head(
        &self,
        topic: &Topic,
        publisher: &PublicKey,
        chain: ChainId,
    ) -> Result<Option<PublisherRecord>>;

    /// The next offset committed by the durable subscription `name` of `principal` on `topic`.
    fn durable_offset(&self, topic: &Topic, principal: &Principal, name: &str) -> Result<Option<Offset>>;

    /// Records `next_offset` as the committed position of the durable subscription `name` of `principal`
    /// on `topic`, replacing any previous value. Not durable until [`sync`](Self::sync).
    fn set_durable_offset(
        &self,
        topic: &Topic,
        principal: &Principal,
        name: &str,
        next_offset: Offset,
    ) -> Result<()>;

    /// Stores the signed topic policy `policy` of `topic` under `epoch` (the caller has verified it and
    /// checked that epochs only grow). Not durable until [`sync`](Self::sync).
    fn put_policy(&self, topic: &Topic, epoch: u64, policy: &Bytes) -> Result<()>;

    /// The stored policies of `topic` with the `max` highest epochs, oldest first.
    fn policies(&self, topic: &Topic, max: usize) -> Result<Vec<Bytes>>;

    /// A page of `topic`'s policy history, **newest first**: the stored policies of the highest epochs
    /// below `before` (of all epochs if `None`), at most `max` of them and, past the first, at most
    /// `max_bytes` of policy bytes in all (the first is returned whatever its size).
    fn policy_history(
        &self,
        topic: &Topic,
        before: Option<u64>,
        max: usize,
        max_bytes: usize,
    ) -> Result<Vec<Bytes>>;

    /// How many calls to [`sync`](Self::sync) have succeeded since the store was opened (lets tests prove
    /// that acknowledgements follow an fsync, and that syncs are shared).
    fn syncs(&self) -> u64;

    /// Up to `max` topics that hold batches, in the store's own order, after `after` (from the first if
    /// `None`): the pages of an operator's `sealpost admin topics`.
    fn topics(&self, after: Option<&Topic>, max: usize) -> Result<Vec<Topic>>;

    /// Up to `max` durable subscriptions with their committed offsets, in the store's own order, after
    /// `after` (from the first if `None`): the pages of `sealpost admin subscriptions`.
    fn durables(&self, after: Option<&DurableKey>, max: usize) -> Result<Vec<(DurableKey, Offset)>>;

    /// For an engine that other brokers write too (JetStream): from now on, hand `sink` every batch that
    /// any broker commits to a topic this broker has read or written, so that the
    /// [`Log`](crate::writer::Log) moves the topic's durable end and its tail, and tell it of every
    /// policy stored, so that cached policies are read again. The log calls it once, when it opens.
    /// Engines only this broker writes keep the default, which does nothing.
    fn share(&self, sink: Sink) {
        let _ = sink;
    }

    /// The largest sealed batch the engine can store, if it has a limit of its own (JetStream: the
    /// servers' `max_payload`); the broker refuses to start with a larger `limits.max_batch_len`.
    fn max_batch_len(&self) -> Option<usize> {
        None
    }
}

/// Takes policies, newest first, into a page of [`Store::policy_history`]: at most `max` of them and, past
/// the first, at most `max_bytes` of policy bytes in all.
pub(crate) fn history_page<E>(
    newest_first: impl Iterator<Item = std::result::Result<Bytes, E>>,
    max: usize,
    max_bytes: usize,
) -> std::result::Result<Vec<Bytes>, E> {
    let mut page = Vec::new();
    let mut bytes = 0usize;
    for policy in newest_first.take(max) {
        let policy = policy?;
        bytes = bytes.saturating_add(policy.len());
        if !page.is_empty() && bytes > max_bytes {
            break;
        }
        page.push(policy);
    }
    Ok(page)
}

/// Maps an I/O error of a storage engine: a full device becomes [`Error::StorageFull`] (so the peer is told
/// `STORAGE_FULL`), anything else [`Error::Storage`].
pub(crate) fn io_error(context: &str, e: &std::io::Error) -> Error {
    /// ENOSPC on Linux and the BSDs.
    const ENOSPC: i32 = 28;
    if e.kind() == std::io::ErrorKind::StorageFull || e.raw_os_error() == Some(ENOSPC) {
        Error::StorageFull
    } else {
        Error::Storage(format!("{context}: {e}"))
    }
}

/// Locks `mutex` of an engine; a poisoned one (a panic while it was held) is refused, not guessed at.
pub(crate) fn lock<'m, T>(
    mutex: &'m std::sync::Mutex<T>,
    what: &str,
) -> Result<std::sync::MutexGuard<'m, T>> {
    mutex.lock().map_err(|_| Error::Storage(format!("{what} lock poisoned")))
}

/// The error an append at the wrong offset gets.
pub(crate) fn offset_mismatch(topic: &Topic, expected: Offset, got: Offset) -> Error {
    Error::Storage(format!("append on {topic} at offset {got}, but the next offset is {expected}"))
}

#[cfg(test)]
mod tests {
    //! Behavioural scenarios, written once against `&dyn Store` and run against every engine.

    use super::conformance::*;
    use super::*;
    use crate::store::testing::TEST_CHAIN;

    fn digest(n: u8) -> Digest {
        Digest([n; 32])
    }

    /// Defines `disk_engine::<scenario>` and `memory_engine::<scenario>` tests for each scenario.
    macro_rules! every_engine {
        ($($scenario:ident),* $(,)?) => {
            mod disk_engine {
                $(
                    #[test]
                    fn $scenario() {
                        let dir = tempfile::tempdir().unwrap();
                        let store = super::DiskStore::open(dir.path()).unwrap();
                        super::conformance::$scenario(&store);
                    }
                )*
            }
            mod memory_engine {
                $(
                    #[test]
                    fn $scenario() {
                        super::conformance::$scenario(&super::MemoryStore::new());
                    }
                )*
            }
        };
    }

    every_engine!(
        empty_topic_starts_at_zero,
        appends_read_back_in_offset_order,
        topics_are_independent,
        read_from_inside_a_batch_starts_with_that_batch,
        read_stops_at_max_bytes_but_returns_at_least_one_batch,
        publisher_records_and_heads_are_indexed,
        append_at_a_wrong_offset_stores_nothing,
        durable_offsets_are_per_topic_principal_and_name,
        topics_and_durable_subscriptions_are_listed_in_pages,
        sync_counts_successful_syncs,
        policies_keep_the_newest_epochs_oldest_first,
        policy_history_pages_back_newest_first_within_count_and_bytes,
    );

    #[test]
    fn disk_data_and_durable_offsets_survive_reopen_after_sync() {
        let dir = tempfile::tempdir().unwrap();
        let t = topic("demo.reopen");
        let p = publisher(1);
        let (records, written) = {
            let store = DiskStore::open(dir.path()).unwrap();
            // A small batch and a large one (300 KiB).
            let records = [append(&store, &t, 1, 2, 16), append(&store, &t, 1, 3, 100 * 1024)];
            store.set_durable_offset(&t, &principal("alice"), "main", Offset(2)).unwrap();
            store.sync().unwrap();
            (records, batches(store.read(&t, Offset(0), usize::MAX).unwrap()))
        };
        let store = DiskStore::open(dir.path()).unwrap();
        assert_eq!(batches(store.read(&t, Offset(0), usize::MAX).unwrap()), written);
        assert_eq!(store.next_offset(&t).unwrap(), Offset(5));
        assert_eq!(store.publisher_head(&t, &p, TEST_CHAIN).unwrap(), Some(records[1]));
        assert_eq!(store.publisher_record(&t, &p, TEST_CHAIN, 1).unwrap(), Some(records[0]));
        assert_eq!(store.durable_offset(&t, &principal("alice"), "main").unwrap(), Some(Offset(2)));
        // Appends continue where the reopened log ends.
        assert_eq!(append(&store, &t, 1, 1, 8).offset, Offset(5));
    }

    #[test]
    fn storage_full_io_errors_map_to_storage_full() {
        let enospc = std::io::Error::from_raw_os_error(28);
        assert!(matches!(io_error("x", &enospc), Error::StorageFull));
        let kind = std::io::Error::new(std::io::ErrorKind::StorageFull, "full");
        assert!(matches!(io_error("x", &kind), Error::StorageFull));
        let other = std::io::Error::new(std::io::ErrorKind::PermissionDenied, "no");
        assert!(matches!(io_error("x", &other), Error::Storage(_)));
    }

    #[test]
    fn publisher_record_encoding_round_trips() {
        let r = PublisherRecord { first_seq: 7, count: 3, offset: Offset(1 << 40), digest: digest(0xAB) };
        assert_eq!(PublisherRecord::decode(&r.encode()).unwrap(), r);
        assert!(PublisherRecord::decode(&r.encode()[1..]).is_err());
    }

    #[test]
    fn the_chain_head_continues_the_last_record_or_starts_at_genesis() {
        let r = PublisherRecord { first_seq: 7, count: 3, offset: Offset(40), digest: digest(0xAB) };
        assert_eq!(chain_head(Some(&r)), ChainHead { next_seq: 10, prev_digest: digest(0xAB) });
        assert_eq!(chain_head(None), ChainHead::GENESIS);
    }
}
