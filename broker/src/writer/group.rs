//! The writer thread and its group commit: the only code that writes to the [`Store`].
//!
//! The thread takes the first waiting request, drains every request already queued behind it (at most
//! [`MAX_GROUP_REQUESTS`] requests or [`MAX_GROUP_BYTES`] bytes of batches), runs the
//! [`sequencer`](super::sequencer) on each in order, appends, then calls [`Store::sync`] **once** for the
//! whole group and only then answers every request of the group, duplicates included. Requests that arrive
//! during that sync form the next group, so the number of fsyncs grows with time, not with the number of
//! publishers.
//!
//! # Offsets and chain heads
//!
//! The writer is **the authority on offsets**: it assigns each batch its offset from its own cache of
//! per-topic next offsets ([`Writer::next_offset`]: loaded from [`Store::next_offset`] on first use,
//! advanced by each append, dropped when a group fails). Each engine's [`Store::append`] only **checks**
//! the offset against its own end and refuses any other, so a bug here cannot leave a gap or an overlap.
//! Chain heads (the last [`PublisherRecord`] per topic and publisher) are cached the same way, so batches
//! of one publisher in one group chain onto each other.
//!
//! # Failure
//!
//! If an append or the sync fails, every request of the group gets the error ([`Error::StorageFull`] stays
//! `StorageFull`, so the peer learns the device is full), the caches are dropped, to be reloaded from the
//! store, which always holds the truth (the tail only ever holds what a sync covered). A batch of a failed
//! group may still be in the store; a publisher's retry then finds it and is answered as a duplicate with
//! its original offsets.
//!
//! # A shared log
//!
//! With an engine other brokers append to as well (JetStream), the writer's caches can be behind the
//! store: the engine then fails the group with [`Error::Contended`] (nothing of it was acknowledged) and
//! the writer drops its caches and executes the group again, from what the store holds, up to
//! [`MAX_CONTENDED`] times; batches stored by an earlier attempt are answered as duplicates.
//!
//! # Fail-stop
//!
//! After a failed group the writer asks the store whether it [`failed`](Store::failed) for good (a failed
//! fsync: the kernel may have dropped the dirty pages, and a later fsync would report success without
//! them). If so, this is decided here, once: the group's requests are answered with
//! [`Error::StorageFailed`], the failure is logged (one error line) and published to
//! [`Shared::failed`] (the shell then shuts the broker down and the binary exits with
//! [`STORAGE_FAILED_EXIT`](crate::server::STORAGE_FAILED_EXIT)), and from then on the writer no longer
//! touches the store: every request still queued, or handed to it later, is answered with the same error,
//! the final sync is skipped, and the store is never dropped (sled's drop fsyncs, and panics when that
//! fails). Nothing is acknowledged after the failed fsync.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use sealpost_protocol::{ChainId, Offset, PublicKey, Topic, VerifiedBatch};
use tokio::sync::{mpsc, watch};

use super::durable::DurableEnds;
use super::request::{Appended, Request};
use super::sequencer::{self, Decision};
use super::tail::Tail;
use crate::metrics::Metrics;
use crate::store::{Append, PublisherRecord, Store, StoredBatch};
use crate::{Error, Result};

/// Most requests the writer takes into one group (one sync).
pub const MAX_GROUP_REQUESTS: usize = 1024;
/// Most bytes of batches the writer takes into one group; a single larger batch still forms a group.
pub const MAX_GROUP_BYTES: usize = 16 * 1024 * 1024;
/// Most entries in each of the writer's caches (chain heads, topic ends) before it starts them afresh
/// from the store, which always holds the truth.
const MAX_CACHED: usize = 1 << 16;
/// Most times a group is executed again because another broker appended to a shared log first.
const MAX_CONTENDED: usize = 8;

/// State shared by the [`Log`](super::Log) handle and the writer thread.
pub(super) struct Shared {
    pub(super) store: Arc<dyn Store>,
    pub(super) durable: DurableEnds,
    /// Requests sent and not yet taken by the writer.
    pub(super) queued: AtomicUsize,
    /// Recently appended batches, for readers.
    tail: Mutex<Tail>,
    /// Where syncs, stored batches and committed offsets are reported (atomics: never waits).
    pub(super) metrics: Option<Arc<Metrics>>,
    /// Why the store failed for good, once it has (see the module documentation): set once, by the
    /// writer thread; the handle refuses new requests and the shell stops the broker when it changes.
    pub(super) failed: watch::Sender<Option<String>>,
    /// Counts the policies stored through other brokers ([`Store::share`]).
    pub(super) policies_changed: Arc<watch::Sender<u64>>,
}

impl Shared {
    /// Shared state over `store`, with a tail of `tail_bytes`.
    pub(super) fn new(store: Arc<dyn Store>, tail_bytes: usize, metrics: Option<Arc<Metrics>>) -> Self {
        Self {
            store,
            durable: DurableEnds::default(),
            queued: AtomicUsize::new(0),
            tail: Mutex::new(Tail::new(tail_bytes)),
            metrics,
            failed: watch::channel(None).0,
            policies_changed: Arc::new(watch::channel(0).0),
        }
    }

    /// The error every request gets once the store failed for good, if it has.
    pub(super) fn failure(&self) -> Option<Error> {
        self.failed.borrow().as_ref().map(|why| Error::StorageFailed(why.clone()))
    }

    /// Another broker committed `batch` to `topic` of a shared log ([`Store::share`]): it is durable, so
    /// it moves the topic's durable end and joins the tail.
    pub(super) fn committed(&self, topic: &Topic, batch: StoredBatch) {
        let end = batch.end();
        self.tail().push(topic, batch);
        self.durable.raise(topic, end);
    }

    pub(super) fn tail(&self) -> MutexGuard<'_, Tail> {
        // Every method of `Tail` leaves it consistent before it could panic.
        self.tail.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Answers every request of `group` with `e`, executing none: what the writer does once the store failed
/// for good.
fn refuse(group: Vec<Request>, e: &Error) {
    for request in group {
        match request {
            Request::Append { reply, .. } => drop(reply.send(Err(copy_error(e)))),
            Request::Commit { reply, .. } | Request::Policy { reply, .. } => {
                drop(reply.send(Err(copy_error(e))))
            }
        }
    }
}

/// A copy of a group's failure for each of its requests. Storage errors are not `Clone`; their kind is
/// what matters to peers (`STORAGE_FULL`, `UNAVAILABLE` or `INTERNAL`), so that is what is kept.
fn copy_error(e: &Error) -> Error {
    match e {
        Error::StorageFull => Error::StorageFull,
        Error::StorageFailed(why) => Error::StorageFailed(why.clone()),
        Error::ShuttingDown => Error::ShuttingDown,
        Error::Unavailable(why) => Error::Unavailable(why.clone()),
        Error::Contended(why) => Error::Contended(why.clone()),
        Error::SequenceConflict { expected, got } => {
            Error::SequenceConflict { expected: *expected, got: *got }
        }
        other => Error::Storage(other.to_string()),
    }
}

/// The writer thread's state.
pub(super) struct Writer {
    shared: Arc<Shared>,
    /// Next offset per topic, as the writer has made it (durable or in the current group).
    next_offsets: HashMap<Topic, Offset>,
    /// Last stored batch per (topic, publisher); `None` for a publisher with no batch on the topic.
    heads: HashMap<(Topic, PublicKey, ChainId), Option<PublisherRecord>>,
    /// Topics appended to since the last successful sync.
    unsynced: HashSet<Topic>,
    /// The batches appended since the last successful sync: they go to the tail once it is durable.
    fresh: Vec<(Topic, StoredBatch)>,
}

impl Writer {
    pub(super) fn new(shared: Arc<Shared>) -> Self {
        Self {
            shared,
            next_offsets: HashMap::new(),
            heads: HashMap::new(),
            unsynced: HashSet::new(),
            fresh: Vec::new(),
        }
    }

    /// Runs until every handle is gone and the queue is drained; returns the outcome of the final sync.
    pub(super) fn run(mut self, mut rx: mpsc::UnboundedReceiver<Request>) -> Result<()> {
        while let Some(first) = rx.blocking_recv() {
            let mut bytes = first.bytes();
            let mut group = vec![first];
            while group.len() < MAX_GROUP_REQUESTS && bytes < MAX_GROUP_BYTES {
                match rx.try_recv() {
                    Ok(next) => {
                        bytes = bytes.saturating_add(next.bytes());
                        group.push(next);
                    }
                    Err(_) => break,
                }
            }
            self.shared.queued.fetch_sub(group.len(), Ordering::SeqCst);
            match self.shared.failure() {
                Some(e) => refuse(group, &e),
                None => self.commit_group(group),
            }
        }
        if let Some(e) = self.shared.failure() {
            // A sync now could report success without the data the failed one lost. Nor is the store ever
            // dropped: an engine's drop may write, and sled's (0.34.7, `Drop for Log` in
            // pagecache/logger.rs) flushes, fsyncs its file and panics when that fails. The process is
            // about to exit; the next open recovers.
            std::mem::forget(Arc::clone(&self.shared.store));
            return Err(e);
        }
        // Groups sync as they go; only a failed one leaves something to make durable.
        if self.unsynced.is_empty() {
            return Ok(());
        }
        self.sync().inspect_err(|e| tracing::error!("final sync of the log failed: {e}"))
    }

    /// Executes a group: sequence and store each request, sync once, then answer them all. A group that
    /// fails because another broker appended to a shared log first ([`Error::Contended`]) is executed
    /// again from what the store holds, up to [`MAX_CONTENDED`] times.
    fn commit_group(&mut self, group: Vec<Request>) {
        let mut attempts = 0;
        let (answers, mut failure) = loop {
            let (answers, failure) = self.execute(&group);
            match &failure {
                Some(Error::Contended(why)) if attempts < MAX_CONTENDED => {
                    attempts += 1;
                    tracing::debug!("{why}: sequencing the group of {} requests again", group.len());
                    self.forget();
                }
                _ => break (answers, failure),
            }
        };
        let mut fatal = None;
        if let Some(why) = failure.as_ref().and_then(|_| self.shared.store.failed()) {
            tracing::error!(
                "storage failed, stopping the broker (fail-stop: nothing more is written or acknowledged; \
                 a restart recovers what was acknowledged): {why}"
            );
            failure = Some(Error::StorageFailed(why.clone()));
            fatal = Some(why);
        }
        if let Some(e) = &failure {
            tracing::warn!("log group of {} requests failed: {e}", group.len());
            // Forget what this group did; the store is the truth. `unsynced` is kept, so the durable
            // ends of its topics are advanced by the next successful sync.
            self.forget();
        }
        // A receiver that went away (a cancelled request) needs no answer.
        for (request, answer) in group.into_iter().zip(answers) {
            match (request, &failure) {
                (Request::Append { reply, .. }, Some(e)) => drop(reply.send(Err(copy_error(e)))),
                (Request::Commit { reply, .. } | Request::Policy { reply, .. }, Some(e)) => {
                    drop(reply.send(Err(copy_error(e))))
                }
                (Request::Append { reply, .. }, None) => {
                    drop(reply.send(answer.unwrap_or(Err(Error::ShuttingDown))))
                }
                (Request::Commit { reply, .. } | Request::Policy { reply, .. }, None) => {
                    drop(reply.send(Ok(())))
                }
            }
        }
        if fatal.is_some() {
            // After the group's answers: the shell starts shutting down once it sees this.
            self.shared.failed.send_replace(fatal);
        }
    }

    /// Drops the caches (and the batches not yet durable): reloaded from the store, which is the truth.
    fn forget(&mut self) {
        self.next_offsets.clear();
        self.heads.clear();
        self.fresh.clear();
    }

    /// Sequences and stores each request of `group` in order, then syncs once. Returns each append's
    /// answer (`None` for other requests, and for appends not executed once the group failed) and the
    /// group's failure, if any.
    fn execute(&mut self, group: &[Request]) -> (Vec<Option<Result<Appended>>>, Option<Error>) {
        let mut answers = Vec::with_capacity(group.len());
        let mut failure = None;
        let mut committed = false;
        for request in group {
            if failure.is_some() {
                // The group has failed: the rest is not executed, and is answered with the failure.
                answers.push(None);
                continue;
            }
            match request {
                Request::Append { batch, .. } => match self.append(batch) {
                    Ok(answer) => answers.push(Some(answer)),
                    Err(e) => {
                        failure = Some(e);
                        answers.push(None);
                    }
                },
                Request::Commit { topic, principal, name, next_offset, .. } => {
                    match self.shared.store.set_durable_offset(topic, principal, name, *next_offset) {
                        Ok(()) => {
                            committed = true;
                            if let Some(metrics) = &self.shared.metrics {
                                metrics.committed(topic, principal, name, *next_offset);
                            }
                        }
                        Err(e) => failure = Some(e),
                    }
                    answers.push(None);
                }
                Request::Policy { topic, epoch, policy, .. } => {
                    match self.shared.store.put_policy(topic, *epoch, policy) {
                        Ok(()) => committed = true,
                        Err(e) => failure = Some(e),
                    }
                    answers.push(None);
                }
            }
        }
        // Appends (and failed groups before) leave topics unsynced. A duplicate's original is either in
        // this group, in a failed group, or already durable: it needs no sync of its own.
        if failure.is_none() && (committed || !self.unsynced.is_empty()) {
            let started = std::time::Instant::now();
            if let Err(e) = self.sync() {
                failure = Some(e);
            }
            if let Some(metrics) = &self.shared.metrics {
                metrics.synced(group.len(), started.elapsed());
            }
        }
        (answers, failure)
    }

    /// Sequences and stores one batch. The outer error is a storage failure (fails the group), the inner
    /// one the sequencer's answer to this batch alone.
    fn append(&mut self, batch: &VerifiedBatch) -> Result<Result<Appended>> {
        let header = batch.header();
        let topic = &header.topic;
        let key = (topic.clone(), header.publisher, header.chain);
        let head = match self.heads.get(&key) {
            Some(head) => *head,
            None => {
                let head = self.shared.store.publisher_head(topic, &header.publisher, header.chain)?;
                if self.heads.len() >= MAX_CACHED {
                    self.heads.clear();
                }
                self.heads.insert(key.clone(), head);
                head
            }
        };
        let same_seq = if sequencer::may_be_retry(head.as_ref(), header) {
            self.shared.store.publisher_record(topic, &header.publisher, header.chain, header.first_seq)?
        } else {
            None
        };
        match sequencer::decide(head.as_ref(), same_seq.as_ref(), header, batch.digest()) {
            Err(e) => Ok(Err(e)),
            Ok(Decision::Duplicate(stored)) => {
                Ok(Ok(Appended { first_offset: stored.offset, count: stored.count, duplicate: true }))
            }
            Ok(Decision::Append) => {
                let offset = self.next_offset(topic)?;
                let end = offset
                    .checked_add(header.count.into())
                    .ok_or_else(|| Error::Storage(format!("offsets of {topic} exhausted")))?;
                let append = Append::new(batch, offset);
                self.before_write(topic, offset);
                self.shared.store.append(append)?;
                let stored = StoredBatch { offset, count: header.count, bytes: batch.as_bytes().clone() };
                self.fresh.push((topic.clone(), stored));
                self.next_offsets.insert(topic.clone(), end);
                self.heads.insert(key, Some(append.record()));
                if let Some(metrics) = &self.shared.metrics {
                    metrics.stored(topic, header.count, batch.as_bytes().len(), end);
                }
                Ok(Ok(Appended { first_offset: offset, count: header.count, duplicate: false }))
            }
        }
    }

    /// The offset the next batch of `topic` gets: the writer's own count, loaded from the store on first
    /// use (see the module documentation).
    fn next_offset(&mut self, topic: &Topic) -> Result<Offset> {
        if let Some(&next) = self.next_offsets.get(topic) {
            return Ok(next);
        }
        let next = self.shared.store.next_offset(topic)?;
        if self.next_offsets.len() >= MAX_CACHED {
            self.next_offsets.clear();
        }
        self.next_offsets.insert(topic.clone(), next);
        Ok(next)
    }

    /// Called before the first write to `topic` since the last successful sync, while the topic's
    /// `durable` end is what the store holds.
    fn before_write(&mut self, topic: &Topic, durable: Offset) {
        if !self.unsynced.contains(topic) {
            self.unsynced.insert(topic.clone());
            self.shared.durable.before_write(topic, durable);
        }
    }

    /// Syncs the store, then publishes the new durable ends.
    fn sync(&mut self) -> Result<()> {
        self.shared.store.sync()?;
        // Durable now: readers may have them from memory, before they learn the new ends.
        let mut tail = self.shared.tail();
        for (topic, batch) in self.fresh.drain(..) {
            tail.push(&topic, batch);
        }
        drop(tail);
        let mut ends = Vec::with_capacity(self.unsynced.len());
        for topic in std::mem::take(&mut self.unsynced) {
            // After a failed group the cache was dropped; the store is durable now, so read it.
            match self.next_offset(&topic) {
                Ok(end) => ends.push((topic, end)),
                Err(e) => {
                    // Keep the watch where it was; the next sync retries.
                    tracing::warn!("cannot read the end of {topic} after a sync: {e}");
                    self.unsynced.insert(topic);
                }
            }
        }
        self.shared.durable.publish(ends, &self.unsynced);
        Ok(())
    }
}
