//! The single writer of the store, with group commit.
//!
//! [`Log`] owns every write to the [`Store`]: one dedicated OS thread (`sealpost-log`) receives append and
//! offset-commit requests from any number of async tasks and executes them in arrival order. It guarantees:
//!
//! - **An acknowledgement follows an fsync that covers it.** The writer takes the first waiting request,
//!   drains every request already queued behind it (at most [`MAX_GROUP_REQUESTS`] requests or
//!   [`MAX_GROUP_BYTES`] bytes of batches), runs the [`sequencer`] on each in order, appends, then calls
//!   [`Store::sync`] **once** for the whole group and only then answers every request of the group,
//!   duplicates included. Requests that arrive during that sync form the next group, so the number of
//!   fsyncs grows with time, not with the number of publishers.
//! - **Offsets are assigned in one place.** Per-topic next offsets and per-publisher chain heads are cached
//!   in the writer (loaded from the store on first use), so batches of one publisher in one group chain
//!   onto each other, and offsets stay gap-free.
//! - **Failure is all or nothing for a group.** If an append or the sync fails, every request of the group
//!   gets the error ([`Error::StorageFull`] stays `StorageFull`, so the peer learns the device is full) and
//!   the caches are dropped, to be reloaded from the store. A batch of a failed group may still be in the
//!   store; a publisher's retry then finds it and is answered as a duplicate with its original offsets.
//! - **Subscribers only see durable data.** [`Log::durable_end`] gives, per topic, a watch of the offset up
//!   to which the topic is durable; the writer advances it after each successful sync, never before.
//!
//! The log does not check signatures, ACLs or the signer binding: callers pass batches they have verified
//! and authorised. Readers use [`Log::store`], or first [`Log::read_tail`].
//!
//! # The tail
//!
//! Subscribers that keep up read what was just made durable. So that they need not go to the store (a
//! blocking read, off the async workers) for it, the writer also keeps the batches it appends in memory,
//! per topic, in offset order, up to a byte budget shared by all topics; the oldest are dropped first.
//! [`Log::read_tail`] serves a read from there when the tail covers the offset asked, and says so when it
//! does not (the caller then reads the store). The tail holds the very bytes that went to the store, so a
//! read from either gives the same batches; like the store, it may hold batches that are not durable yet,
//! and callers bound what they deliver by [`Log::durable_end`]. When a group fails the tail is emptied,
//! since the offsets it names may be reused.
//!
//! # Ordering and backpressure
//!
//! [`Log::submit`] enqueues its request before it returns, so requests reach the sequencer in the order
//! the calls were made, even if their answers are awaited later (a connection can pipeline a publisher's
//! batches and still have them chained in order). The queue itself is unbounded: every queued request is
//! owned by a caller waiting for its answer, so the callers' own limits (connections, streams, requests in
//! flight per stream) bound it. [`Log::queued`] reports its length.
//!
//! # Locks
//!
//! One mutex guards the map of durable-end watches. [`Log::durable_end`] holds it while it reads the store
//! (store locks are taken inside it, never the other way round); the writer thread takes it only briefly
//! and never while calling the store.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;

use bytes::Bytes;

use sealpost_protocol::{Offset, Principal, PublicKey, Topic, VerifiedBatch};
use tokio::sync::{mpsc, oneshot, watch};

use crate::sequencer::{self, Decision};
use crate::store::{Append, PublisherRecord, Store, StoredBatch};
use crate::{Error, Result};

/// Most requests the writer takes into one group (one sync).
pub const MAX_GROUP_REQUESTS: usize = 1024;
/// Most bytes of batches the writer takes into one group; a single larger batch still forms a group.
pub const MAX_GROUP_BYTES: usize = 16 * 1024 * 1024;
/// Most entries in each of the writer's caches (chain heads, topic ends) before it starts them afresh
/// from the store, which always holds the truth.
const MAX_CACHED: usize = 1 << 16;

/// Bytes of recently appended batches [`Log::open`] keeps in memory for subscribers: 8 MiB, a few
/// thousand batches of small messages, or a few seconds of a fast publisher.
pub const DEFAULT_TAIL_BYTES: usize = 8 * 1024 * 1024;

/// Where an appended batch was stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Appended {
    /// Offset of the batch's first message.
    pub first_offset: Offset,
    /// Number of messages: the batch covers `first_offset..first_offset + count`.
    pub count: u32,
    /// The batch was already stored (a retry): these are its original offsets and nothing new was stored.
    pub duplicate: bool,
}

/// The single writer of a [`Store`]. See the module documentation.
///
/// Dropping it (or [`close`](Log::close)) finishes the queued requests, syncs and joins the writer thread;
/// `Drop` blocks while it does, so async code should prefer `close`.
pub struct Log {
    tx: Option<mpsc::UnboundedSender<Request>>,
    shared: Arc<Shared>,
    writer: Option<JoinHandle<()>>,
    /// Signalled by the writer thread as it ends, with the outcome of its final sync.
    stopped: Option<oneshot::Receiver<Result<()>>>,
}

/// State shared by the handle and the writer thread.
struct Shared {
    store: Arc<dyn Store>,
    /// Per topic, the durable end. An entry exists for every topic the writer has appended to since the
    /// last successful sync, so a missing entry means the store holds nothing undurable for that topic.
    watches: Mutex<HashMap<Topic, watch::Sender<Offset>>>,
    /// Requests sent and not yet taken by the writer.
    queued: AtomicUsize,
    /// Recently appended batches, for readers.
    tail: Mutex<Tail>,
}

impl Shared {
    fn watches(&self) -> MutexGuard<'_, HashMap<Topic, watch::Sender<Offset>>> {
        // The map only holds senders; a panic elsewhere cannot leave it inconsistent.
        self.watches.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn tail(&self) -> MutexGuard<'_, Tail> {
        // Every method of `Tail` leaves it consistent before it could panic.
        self.tail.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The batches most recently appended, per topic, within a byte budget over all topics. See the module
/// documentation. Sans-IO.
#[derive(Debug)]
struct Tail {
    budget: usize,
    bytes: usize,
    /// Per topic, contiguous batches in offset order.
    topics: HashMap<Topic, VecDeque<StoredBatch>>,
    /// Every cached batch's topic and size, oldest first: what to drop to stay within the budget.
    order: VecDeque<(Topic, usize)>,
}

impl Tail {
    fn new(budget: usize) -> Self {
        Self { budget, bytes: 0, topics: HashMap::new(), order: VecDeque::new() }
    }

    /// Adds the batch just appended to `topic`. A batch that does not continue the topic's cached batches
    /// (it cannot happen while the writer clears the tail on failure) replaces them.
    fn push(&mut self, topic: &Topic, batch: StoredBatch) {
        let size = batch.bytes.len();
        if size > self.budget {
            self.remove(topic);
            return;
        }
        let contiguous = match self.topics.get(topic).and_then(|b| b.back()) {
            Some(last) => last.end() == batch.offset,
            None => true,
        };
        if !contiguous {
            self.remove(topic);
        }
        self.topics.entry(topic.clone()).or_default().push_back(batch);
        self.order.push_back((topic.clone(), size));
        self.bytes += size;
        while self.bytes > self.budget {
            let Some((oldest, size)) = self.order.pop_front() else { break };
            self.bytes -= size;
            if let Some(batches) = self.topics.get_mut(&oldest) {
                batches.pop_front();
                if batches.is_empty() {
                    self.topics.remove(&oldest);
                }
            }
        }
    }

    /// Forgets `topic`'s batches and their entries in `order`.
    fn remove(&mut self, topic: &Topic) {
        if let Some(batches) = self.topics.remove(topic) {
            let gone: usize = batches.iter().map(|b| b.bytes.len()).sum();
            self.bytes -= gone;
            self.order.retain(|(t, _)| t != topic);
        }
    }

    fn clear(&mut self) {
        self.topics.clear();
        self.order.clear();
        self.bytes = 0;
    }

    /// What [`Store::read`] would return for `topic` from `from` within `max_bytes`, if the tail covers
    /// `from`; `None` if it does not.
    fn read(&self, topic: &Topic, from: Offset, max_bytes: usize) -> Option<Vec<StoredBatch>> {
        let batches = self.topics.get(topic)?;
        let first = batches.front()?;
        if from < first.offset {
            return None;
        }
        // Batches are contiguous and ordered: the first one that ends after `from` contains it or follows it.
        let start = batches.partition_point(|b| b.end() <= from);
        let mut out = Vec::new();
        let mut total = 0usize;
        for batch in batches.range(start..) {
            total = total.saturating_add(batch.bytes.len());
            if !out.is_empty() && total > max_bytes {
                break;
            }
            out.push(batch.clone());
        }
        Some(out)
    }
}

enum Request {
    Append {
        topic: Topic,
        /// Boxed: a verified batch is large next to the other requests.
        batch: Box<VerifiedBatch>,
        reply: oneshot::Sender<Result<Appended>>,
    },
    Commit {
        topic: Topic,
        principal: Principal,
        name: String,
        next_offset: Offset,
        reply: oneshot::Sender<Result<()>>,
    },
    Policy {
        topic: Topic,
        epoch: u64,
        policy: Bytes,
        reply: oneshot::Sender<Result<()>>,
    },
}

impl Request {
    fn bytes(&self) -> usize {
        match self {
            Request::Append { batch, .. } => batch.as_bytes().len(),
            Request::Commit { .. } => 0,
            Request::Policy { policy, .. } => policy.len(),
        }
    }
}

impl Log {
    /// Starts the writer thread over `store`, keeping [`DEFAULT_TAIL_BYTES`] of recent batches in memory.
    /// Syncs the store first, so that whatever it already holds counts as durable.
    pub fn open(store: Arc<dyn Store>) -> Result<Log> {
        Self::with_tail(store, DEFAULT_TAIL_BYTES)
    }

    /// [`open`](Self::open), keeping `tail_bytes` of recent batches in memory for readers (0: none).
    pub fn with_tail(store: Arc<dyn Store>, tail_bytes: usize) -> Result<Log> {
        store.sync()?;
        let shared = Arc::new(Shared {
            store,
            watches: Mutex::new(HashMap::new()),
            queued: AtomicUsize::new(0),
            tail: Mutex::new(Tail::new(tail_bytes)),
        });
        let (tx, rx) = mpsc::unbounded_channel();
        let (stopped_tx, stopped) = oneshot::channel();
        let writer = Writer::new(shared.clone());
        let handle = std::thread::Builder::new().name("sealpost-log".into()).spawn(move || {
            let _ = stopped_tx.send(writer.run(rx));
        })?;
        Ok(Log { tx: Some(tx), shared, writer: Some(handle), stopped: Some(stopped) })
    }

    /// The store, for readers.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.shared.store
    }

    /// Hands a request to the writer now; the receiver yields its answer.
    fn enqueue<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T>>) -> Request,
    ) -> Result<oneshot::Receiver<Result<T>>> {
        let tx = self.tx.as_ref().ok_or(Error::ShuttingDown)?;
        let (reply, answer) = oneshot::channel();
        // Counted before sending, so the writer's decrement never comes first.
        self.shared.queued.fetch_add(1, Ordering::SeqCst);
        if tx.send(make(reply)).is_err() {
            self.shared.queued.fetch_sub(1, Ordering::SeqCst);
            return Err(Error::ShuttingDown);
        }
        Ok(answer)
    }

    /// Waits for an answer. A dropped reply means the writer is gone; the caller may retry later (retries
    /// are deduplicated).
    async fn answer<T>(answer: Result<oneshot::Receiver<Result<T>>>) -> Result<T> {
        answer?.await.map_err(|_| Error::ShuttingDown)?
    }

    /// Queues `batch` for sequencing and storage on `topic` **now**, and returns a future that resolves
    /// once it is durable (or was already stored). Batches submitted one after the other are sequenced in
    /// that order, whenever their futures are polled; dropping the future does not withdraw the batch.
    ///
    /// The answer is an error [`Error::SequenceConflict`] if the batch neither continues its publisher's
    /// chain nor repeats a stored batch; [`Error::StorageFull`] or [`Error::Storage`] if the store failed
    /// (the batch may then be stored or not: retry it); [`Error::ShuttingDown`] once the log is closing;
    /// and [`Error::Protocol`] if `topic` is not the topic the batch was sealed for.
    pub fn submit(
        &self,
        topic: Topic,
        batch: VerifiedBatch,
    ) -> impl Future<Output = Result<Appended>> + Send + 'static {
        let answer = if batch.header().topic != topic {
            Err(Error::Protocol(sealpost_protocol::Error::WrongTopic {
                expected: topic,
                got: batch.header().topic.clone(),
            }))
        } else {
            self.enqueue(|reply| Request::Append { topic, batch: Box::new(batch), reply })
        };
        Self::answer(answer)
    }

    /// [`submit`](Self::submit), awaited.
    pub async fn append(&self, topic: Topic, batch: VerifiedBatch) -> Result<Appended> {
        self.submit(topic, batch).await
    }

    /// Records `next_offset` as the position of the durable subscription `name` of `principal` on
    /// `topic`; returns once that is durable.
    pub async fn commit_offset(
        &self,
        topic: Topic,
        principal: Principal,
        name: String,
        next_offset: Offset,
    ) -> Result<()> {
        Self::answer(self.enqueue(|reply| Request::Commit { topic, principal, name, next_offset, reply }))
            .await
    }

    /// Stores the signed topic policy `policy` of `topic` under `epoch`; returns once it is durable. The
    /// caller has verified the policy and that its epoch follows the stored one.
    pub async fn put_policy(&self, topic: Topic, epoch: u64, policy: Bytes) -> Result<()> {
        Self::answer(self.enqueue(|reply| Request::Policy { topic, epoch, policy, reply })).await
    }

    /// The stored batches of `topic` from the one that contains offset `from`, as [`Store::read`] gives
    /// them, if the in-memory tail covers `from`; `None` if it does not, and the store must be read. Like
    /// the store, the tail may hold batches that are not durable yet: bound what you deliver by
    /// [`durable_end`](Self::durable_end).
    pub fn read_tail(&self, topic: &Topic, from: Offset, max_bytes: usize) -> Option<Vec<StoredBatch>> {
        self.shared.tail().read(topic, from, max_bytes)
    }

    /// Requests handed to the log and not yet taken by the writer.
    pub fn queued(&self) -> usize {
        self.shared.queued.load(Ordering::SeqCst)
    }

    /// A watch of the offset up to which `topic` is durable: every stored message below it survives a
    /// crash. Subscribers deliver only below it and wait for it to change. Created on first use from the
    /// store.
    pub fn durable_end(&self, topic: &Topic) -> Result<watch::Receiver<Offset>> {
        let mut watches = self.shared.watches();
        if let Some(sender) = watches.get(topic) {
            return Ok(sender.subscribe());
        }
        // No entry: the writer has not appended to the topic since its last successful sync, and cannot
        // start before we release the lock, so the store's end is durable.
        let end = self.shared.store.next_offset(topic)?;
        let (sender, receiver) = watch::channel(end);
        watches.insert(topic.clone(), sender);
        Ok(receiver)
    }

    /// Finishes the queued requests, syncs, and stops the writer thread. Fails if that final sync failed
    /// (what the failed requests wrote may then not be durable) or if the writer thread panicked.
    pub async fn close(mut self) -> Result<()> {
        self.tx = None;
        let outcome = match self.stopped.take() {
            Some(stopped) => {
                stopped.await.unwrap_or(Err(Error::Storage("the log writer thread panicked".into())))
            }
            None => Ok(()),
        };
        self.join();
        outcome
    }

    fn join(&mut self) {
        self.tx = None;
        if let Some(handle) = self.writer.take() {
            if handle.join().is_err() {
                tracing::error!("the log writer thread panicked");
            }
        }
    }
}

impl Drop for Log {
    fn drop(&mut self) {
        self.join();
    }
}

impl fmt::Debug for Log {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Log").field("running", &self.writer.is_some()).finish_non_exhaustive()
    }
}

/// A copy of a group's failure for each of its requests. Storage errors are not `Clone`; their kind is
/// what matters to peers (`STORAGE_FULL`, `UNAVAILABLE` or `INTERNAL`), so that is what is kept.
fn copy_error(e: &Error) -> Error {
    match e {
        Error::StorageFull => Error::StorageFull,
        Error::ShuttingDown => Error::ShuttingDown,
        Error::SequenceConflict { expected, got } => {
            Error::SequenceConflict { expected: *expected, got: *got }
        }
        other => Error::Storage(other.to_string()),
    }
}

/// How one request of a group will be answered.
enum Reply {
    Append(oneshot::Sender<Result<Appended>>, Result<Appended>),
    Commit(oneshot::Sender<Result<()>>),
}

/// The writer thread's state.
struct Writer {
    shared: Arc<Shared>,
    /// Next offset per topic, as the writer has made it (durable or in the current group).
    next_offsets: HashMap<Topic, Offset>,
    /// Last stored batch per (topic, publisher); `None` for a publisher with no batch on the topic.
    heads: HashMap<(Topic, PublicKey), Option<PublisherRecord>>,
    /// Topics appended to since the last successful sync.
    unsynced: HashSet<Topic>,
}

impl Writer {
    fn new(shared: Arc<Shared>) -> Self {
        Self { shared, next_offsets: HashMap::new(), heads: HashMap::new(), unsynced: HashSet::new() }
    }

    /// Runs until every handle is gone and the queue is drained; returns the outcome of the final sync.
    fn run(mut self, mut rx: mpsc::UnboundedReceiver<Request>) -> Result<()> {
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
            self.commit_group(group);
        }
        // Groups sync as they go; only a failed one leaves something to make durable.
        if self.unsynced.is_empty() {
            return Ok(());
        }
        self.sync().inspect_err(|e| tracing::error!("final sync of the log failed: {e}"))
    }

    /// Executes a group: sequence and store each request, sync once, then answer them all.
    fn commit_group(&mut self, group: Vec<Request>) {
        let mut replies = Vec::with_capacity(group.len());
        let mut failure = None;
        let mut committed = false;
        for request in group {
            if failure.is_some() {
                // The group has failed: the rest is not executed, and is answered with the failure.
                replies.push(match request {
                    Request::Append { reply, .. } => Reply::Append(reply, Err(Error::ShuttingDown)),
                    Request::Commit { reply, .. } | Request::Policy { reply, .. } => Reply::Commit(reply),
                });
                continue;
            }
            match request {
                Request::Append { topic, batch, reply } => match self.append(&topic, &batch) {
                    Ok(answer) => replies.push(Reply::Append(reply, answer)),
                    Err(e) => {
                        failure = Some(e);
                        replies.push(Reply::Append(reply, Err(Error::ShuttingDown)));
                    }
                },
                Request::Commit { topic, principal, name, next_offset, reply } => {
                    match self.shared.store.set_durable_offset(&topic, &principal, &name, next_offset) {
                        Ok(()) => committed = true,
                        Err(e) => failure = Some(e),
                    }
                    replies.push(Reply::Commit(reply));
                }
                Request::Policy { topic, epoch, policy, reply } => {
                    match self.shared.store.put_policy(&topic, epoch, &policy) {
                        Ok(()) => committed = true,
                        Err(e) => failure = Some(e),
                    }
                    replies.push(Reply::Commit(reply));
                }
            }
        }
        // Appends (and failed groups before) leave topics unsynced. A duplicate's original is either in
        // this group, in a failed group, or already durable: it needs no sync of its own.
        if failure.is_none() && (committed || !self.unsynced.is_empty()) {
            if let Err(e) = self.sync() {
                failure = Some(e);
            }
        }
        if let Some(e) = &failure {
            tracing::warn!("log group of {} requests failed: {e}", replies.len());
            // Forget what this group did; the store is the truth. `unsynced` is kept, so the durable
            // ends of its topics are advanced by the next successful sync.
            self.next_offsets.clear();
            self.heads.clear();
            self.shared.tail().clear();
        }
        // A receiver that went away (a cancelled request) needs no answer.
        for reply in replies {
            match (reply, &failure) {
                (Reply::Append(tx, _), Some(e)) => drop(tx.send(Err(copy_error(e)))),
                (Reply::Commit(tx), Some(e)) => drop(tx.send(Err(copy_error(e)))),
                (Reply::Append(tx, answer), None) => drop(tx.send(answer)),
                (Reply::Commit(tx), None) => drop(tx.send(Ok(()))),
            }
        }
    }

    /// Sequences and stores one batch. The outer error is a storage failure (fails the group), the inner
    /// one the sequencer's answer to this batch alone.
    fn append(&mut self, topic: &Topic, batch: &VerifiedBatch) -> Result<Result<Appended>> {
        let header = batch.header();
        let key = (topic.clone(), header.publisher);
        let head = match self.heads.get(&key) {
            Some(head) => *head,
            None => {
                let head = self.shared.store.publisher_head(topic, &header.publisher)?;
                if self.heads.len() >= MAX_CACHED {
                    self.heads.clear();
                }
                self.heads.insert(key.clone(), head);
                head
            }
        };
        let same_seq = if sequencer::may_be_retry(head.as_ref(), header) {
            self.shared.store.publisher_record(topic, &header.publisher, header.first_seq)?
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
                self.shared.tail().push(topic, stored);
                self.next_offsets.insert(topic.clone(), end);
                self.heads.insert(key, Some(append.record()));
                Ok(Ok(Appended { first_offset: offset, count: header.count, duplicate: false }))
            }
        }
    }

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
    /// `durable` end is what the store holds: makes sure a watch exists so that [`Log::durable_end`] never
    /// initialises one from a store that is ahead of the disk.
    fn before_write(&mut self, topic: &Topic, durable: Offset) {
        if !self.unsynced.contains(topic) {
            self.unsynced.insert(topic.clone());
            self.shared.watches().entry(topic.clone()).or_insert_with(|| watch::channel(durable).0);
        }
    }

    /// Syncs the store, then publishes the new durable ends.
    fn sync(&mut self) -> Result<()> {
        self.shared.store.sync()?;
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
        let mut watches = self.shared.watches();
        for (topic, end) in ends {
            if let Some(sender) = watches.get(&topic) {
                sender.send_if_modified(|v| {
                    let changed = *v != end;
                    *v = end;
                    changed
                });
                if sender.receiver_count() == 0 && !self.unsynced.contains(&topic) {
                    // Nobody waits and nothing is pending: `durable_end` can recreate it from the store.
                    watches.remove(&topic);
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicU64;

    use bytes::Bytes;
    use rand::SeedableRng;
    use sealpost_protocol::{seal, ChainHead, ContentKey, Epoch, Limits, SealParams, SigningKey, Timestamp};

    use super::*;
    use crate::store::{MemoryStore, StoredBatch};

    fn topic(s: &str) -> Topic {
        Topic::new(s).unwrap()
    }

    fn signer(n: u8) -> SigningKey {
        SigningKey::from_bytes(&[n; 32])
    }

    /// Seals `count` messages by `signer` on `topic`, continuing `head`; advances `head`.
    fn sealed(signer: &SigningKey, topic: &Topic, head: &mut ChainHead, count: usize) -> VerifiedBatch {
        let params = SealParams {
            topic: topic.clone(),
            epoch: Epoch(1),
            first_seq: head.next_seq,
            prev_digest: head.prev_digest,
            created_at: Timestamp(1_763_856_000_000),
        };
        let msgs: Vec<Vec<u8>> = (0..count).map(|i| format!("message {i}").into_bytes()).collect();
        let mut rng = rand::rngs::StdRng::seed_from_u64(head.next_seq);
        let batch =
            seal(signer, &ContentKey::from_bytes(&[0xC0; 32]), params, &msgs, &Limits::default(), &mut rng)
                .unwrap();
        *head = ChainHead::after(&batch);
        batch
    }

    /// A memory store whose syncs stop at a gate until the test releases them, and that can fail one.
    struct GatedStore {
        inner: MemoryStore,
        entered: mpsc::UnboundedSender<()>,
        release: Mutex<std::sync::mpsc::Receiver<()>>,
        calls: AtomicU64,
        fail_call: AtomicU64,
    }

    /// The test's side of a [`GatedStore`].
    struct Gate {
        entered: mpsc::UnboundedReceiver<()>,
        release: Option<std::sync::mpsc::Sender<()>>,
    }

    impl Gate {
        /// Waits until a sync is waiting at the gate (or has passed it, if released in advance).
        async fn entered(&mut self) {
            self.entered.recv().await.unwrap();
        }
        /// Lets one sync through.
        fn release_one(&self) {
            self.release.as_ref().unwrap().send(()).unwrap();
        }
        /// Lets every sync through from now on.
        fn open(&mut self) {
            self.release = None;
        }
    }

    fn gated() -> (Arc<GatedStore>, Gate) {
        let (entered_tx, entered) = mpsc::unbounded_channel();
        let (release, release_rx) = std::sync::mpsc::channel();
        let store = GatedStore {
            inner: MemoryStore::new(),
            entered: entered_tx,
            release: Mutex::new(release_rx),
            calls: AtomicU64::new(0),
            fail_call: AtomicU64::new(u64::MAX),
        };
        (Arc::new(store), Gate { entered, release: Some(release) })
    }

    impl Store for GatedStore {
        fn append(&self, batch: Append<'_>) -> Result<()> {
            self.inner.append(batch)
        }
        fn sync(&self) -> Result<()> {
            let call = self.calls.fetch_add(1, Ordering::SeqCst);
            let _ = self.entered.send(());
            // An error means the gate was opened for good.
            let _ = self.release.lock().unwrap().recv();
            if call == self.fail_call.load(Ordering::SeqCst) {
                return Err(Error::StorageFull);
            }
            self.inner.sync()
        }
        fn read(&self, t: &Topic, from: Offset, max: usize) -> Result<Vec<crate::store::Stored>> {
            self.inner.read(t, from, max)
        }
        fn next_offset(&self, t: &Topic) -> Result<Offset> {
            self.inner.next_offset(t)
        }
        fn first_offset(&self, t: &Topic) -> Result<Offset> {
            self.inner.first_offset(t)
        }
        fn publisher_record(&self, t: &Topic, p: &PublicKey, s: u64) -> Result<Option<PublisherRecord>> {
            self.inner.publisher_record(t, p, s)
        }
        fn publisher_head(&self, t: &Topic, p: &PublicKey) -> Result<Option<PublisherRecord>> {
            self.inner.publisher_head(t, p)
        }
        fn durable_offset(&self, t: &Topic, who: &Principal, name: &str) -> Result<Option<Offset>> {
            self.inner.durable_offset(t, who, name)
        }
        fn set_durable_offset(&self, t: &Topic, who: &Principal, name: &str, next: Offset) -> Result<()> {
            self.inner.set_durable_offset(t, who, name, next)
        }
        fn put_policy(&self, t: &Topic, epoch: u64, policy: &Bytes) -> Result<()> {
            self.inner.put_policy(t, epoch, policy)
        }
        fn policies(&self, t: &Topic, max: usize) -> Result<Vec<Bytes>> {
            self.inner.policies(t, max)
        }
        fn syncs(&self) -> u64 {
            self.inner.syncs()
        }
    }

    /// Opens a log over a gated store, letting its opening sync through.
    async fn gated_log() -> (Arc<Log>, Arc<GatedStore>, Gate) {
        let (store, mut gate) = gated();
        gate.release_one();
        let log = Arc::new(Log::open(store.clone()).unwrap());
        gate.entered().await;
        (log, store, gate)
    }

    async fn wait_queued(log: &Log, n: usize) {
        while log.queued() < n {
            tokio::task::yield_now().await;
        }
    }

    /// The first batch of `signer` on `topic`.
    fn genesis_batch(signer: &SigningKey, topic: &Topic, count: usize) -> VerifiedBatch {
        sealed(signer, topic, &mut ChainHead::default(), count)
    }

    fn spawn_append(
        log: &Arc<Log>,
        t: &Topic,
        batch: VerifiedBatch,
    ) -> tokio::task::JoinHandle<Result<Appended>> {
        let (log, t) = (log.clone(), t.clone());
        tokio::spawn(async move { log.append(t, batch).await })
    }

    fn appended(first_offset: u64, count: u32) -> Appended {
        Appended { first_offset: Offset(first_offset), count, duplicate: false }
    }

    #[tokio::test]
    async fn offsets_follow_arrival_order_within_a_group_and_chain_per_publisher() {
        let (log, store, mut gate) = gated_log().await;
        let t = topic("demo.chat");
        let (a, b, c) = (signer(1), signer(2), signer(3));
        let (mut ha, mut hb, mut hc) = (ChainHead::GENESIS, ChainHead::GENESIS, ChainHead::GENESIS);
        // Group 1: a1 alone; the writer waits in its sync while group 2 queues up.
        let a1 = spawn_append(&log, &t, sealed(&a, &t, &mut ha, 2));
        gate.entered().await;
        let mut group = Vec::new();
        for (i, batch) in [
            sealed(&b, &t, &mut hb, 3),
            sealed(&a, &t, &mut ha, 1),
            sealed(&a, &t, &mut ha, 2),
            sealed(&c, &t, &mut hc, 4),
        ]
        .into_iter()
        .enumerate()
        {
            group.push(spawn_append(&log, &t, batch));
            wait_queued(&log, i + 1).await;
        }
        gate.open();
        assert_eq!(a1.await.unwrap().unwrap(), appended(0, 2));
        let mut answers = Vec::new();
        for task in group {
            answers.push(task.await.unwrap().unwrap());
        }
        assert_eq!(answers, vec![appended(2, 3), appended(5, 1), appended(6, 2), appended(8, 4)]);
        // Opening, group 1, group 2.
        assert_eq!(store.syncs(), 3);
        let stored: Vec<_> = store
            .read(&t, Offset(0), usize::MAX)
            .unwrap()
            .into_iter()
            .map(|s| s.batch().unwrap())
            .map(|s| (s.offset.0, s.count))
            .collect();
        assert_eq!(stored, vec![(0, 2), (2, 3), (5, 1), (6, 2), (8, 4)]);
    }

    #[tokio::test]
    async fn retried_batch_returns_original_offsets_and_is_stored_once() {
        let store = Arc::new(MemoryStore::new());
        let log = Log::open(store.clone()).unwrap();
        let t = topic("demo.retry");
        let mut head = ChainHead::GENESIS;
        let first = sealed(&signer(1), &t, &mut head, 3);
        let second = sealed(&signer(1), &t, &mut head, 2);
        assert_eq!(log.append(t.clone(), first.clone()).await.unwrap(), appended(0, 3));
        assert_eq!(log.append(t.clone(), second.clone()).await.unwrap(), appended(3, 2));
        for (batch, offset, count) in [(first, 0, 3), (second, 3, 2)] {
            let answer = log.append(t.clone(), batch).await.unwrap();
            assert_eq!(answer, Appended { first_offset: Offset(offset), count, duplicate: true });
        }
        assert_eq!(store.read(&t, Offset(0), usize::MAX).unwrap().len(), 2);
        assert_eq!(store.next_offset(&t).unwrap(), Offset(5));
        // Opening and the two appends synced; the retries of durable batches needed no sync.
        assert_eq!(store.syncs(), 3);
    }

    #[tokio::test]
    async fn batch_that_does_not_continue_the_chain_is_a_conflict() {
        let store = Arc::new(MemoryStore::new());
        let log = Log::open(store.clone()).unwrap();
        let t = topic("demo.conflict");
        let a = signer(1);
        // Sequence 3 first: a gap.
        let mut skipped = ChainHead { next_seq: 3, prev_digest: sealpost_protocol::Digest([1; 32]) };
        let gap = sealed(&a, &t, &mut skipped, 1);
        assert!(matches!(
            log.append(t.clone(), gap).await,
            Err(Error::SequenceConflict { expected: 1, got: 3 })
        ));
        // Two different batches at sequence 1: the second is a fork.
        let mut head = ChainHead::GENESIS;
        log.append(t.clone(), sealed(&a, &t, &mut head, 1)).await.unwrap();
        let mut other = ChainHead::GENESIS;
        let fork = sealed(&a, &t, &mut other, 2);
        assert!(matches!(
            log.append(t.clone(), fork).await,
            Err(Error::SequenceConflict { expected: 2, got: 1 })
        ));
        assert_eq!(store.next_offset(&t).unwrap(), Offset(1));
    }

    #[tokio::test]
    async fn append_refuses_a_batch_sealed_for_another_topic() {
        let log = Log::open(Arc::new(MemoryStore::new())).unwrap();
        let batch = genesis_batch(&signer(1), &topic("demo.a"), 1);
        let result = log.append(topic("demo.b"), batch).await;
        assert!(matches!(result, Err(Error::Protocol(sealpost_protocol::Error::WrongTopic { .. }))));
    }

    #[tokio::test]
    async fn concurrent_appends_share_syncs() {
        const TASKS: usize = 32;
        let (log, store, mut gate) = gated_log().await;
        let t = topic("demo.group");
        let first = spawn_append(&log, &t, genesis_batch(&signer(0), &t, 1));
        gate.entered().await;
        let tasks: Vec<_> =
            (1..TASKS).map(|i| spawn_append(&log, &t, genesis_batch(&signer(i as u8), &t, 1))).collect();
        wait_queued(&log, TASKS - 1).await;
        gate.open();
        let mut offsets = vec![first.await.unwrap().unwrap().first_offset.0];
        for task in tasks {
            offsets.push(task.await.unwrap().unwrap().first_offset.0);
        }
        offsets.sort_unstable();
        assert_eq!(offsets, (0..TASKS as u64).collect::<Vec<_>>());
        let group_syncs = store.syncs() - 1;
        assert!(group_syncs < TASKS as u64, "{group_syncs} syncs for {TASKS} appends");
        assert_eq!(group_syncs, 2);
    }

    #[tokio::test]
    async fn durable_end_advances_only_after_sync() {
        let (log, store, mut gate) = gated_log().await;
        let (watched, fresh, other) = (topic("demo.watched"), topic("demo.fresh"), topic("demo.other"));
        let mut end = log.durable_end(&watched).unwrap();
        assert_eq!(*end.borrow(), Offset(0));
        // Group 1 holds the writer in its sync while group 2 queues up.
        let blocker = spawn_append(&log, &other, genesis_batch(&signer(9), &other, 1));
        gate.entered().await;
        let a = spawn_append(&log, &watched, genesis_batch(&signer(1), &watched, 2));
        wait_queued(&log, 1).await;
        let b = spawn_append(&log, &fresh, genesis_batch(&signer(1), &fresh, 3));
        wait_queued(&log, 2).await;
        gate.release_one();
        assert_eq!(blocker.await.unwrap().unwrap(), appended(0, 1));
        // Group 2 is stored and its sync waits at the gate.
        gate.entered().await;
        assert_eq!(store.next_offset(&watched).unwrap(), Offset(2));
        assert_eq!(store.next_offset(&fresh).unwrap(), Offset(3));
        assert!(!end.has_changed().unwrap());
        assert_eq!(*end.borrow(), Offset(0));
        // A topic first asked about now reports its durable end, not what the store holds.
        let mut fresh_end = log.durable_end(&fresh).unwrap();
        assert_eq!(*fresh_end.borrow(), Offset(0));
        gate.open();
        assert_eq!(a.await.unwrap().unwrap(), appended(0, 2));
        assert_eq!(b.await.unwrap().unwrap(), appended(0, 3));
        assert_eq!(*end.wait_for(|&e| e == Offset(2)).await.unwrap(), Offset(2));
        assert_eq!(*fresh_end.wait_for(|&e| e == Offset(3)).await.unwrap(), Offset(3));
        assert_eq!(*log.durable_end(&watched).unwrap().borrow(), Offset(2));
    }

    #[tokio::test]
    async fn failed_sync_fails_the_whole_group_and_retries_find_the_stored_batches() {
        let (log, store, mut gate) = gated_log().await;
        let t = topic("demo.full");
        let mut end = log.durable_end(&t).unwrap();
        let (a, b) = (signer(1), signer(2));
        let (mut ha, mut hb) = (ChainHead::GENESIS, ChainHead::GENESIS);
        let a1 = sealed(&a, &t, &mut ha, 1);
        let a2 = sealed(&a, &t, &mut ha, 2);
        let b1 = sealed(&b, &t, &mut hb, 3);
        let ok = spawn_append(&log, &t, a1);
        gate.entered().await;
        // Group 2: two appends and a commit, whose sync (the store's third) fails.
        store.fail_call.store(2, Ordering::SeqCst);
        let failing = [spawn_append(&log, &t, a2.clone()), spawn_append(&log, &t, b1.clone())];
        wait_queued(&log, 2).await;
        let commit = {
            let log = log.clone();
            let t = t.clone();
            tokio::spawn(async move {
                log.commit_offset(t, "alice".parse().unwrap(), "main".into(), Offset(1)).await
            })
        };
        wait_queued(&log, 3).await;
        gate.open();
        assert_eq!(ok.await.unwrap().unwrap(), appended(0, 1));
        for task in failing {
            assert!(matches!(task.await.unwrap(), Err(Error::StorageFull)));
        }
        assert!(matches!(commit.await.unwrap(), Err(Error::StorageFull)));
        assert_eq!(*end.borrow_and_update(), Offset(1));
        // The failed group's offsets may be reused: the tail forgets everything, readers go to the store.
        assert!(log.read_tail(&t, Offset(0), usize::MAX).is_none());
        // The store kept the failed group's batches: retries are duplicates with their original offsets,
        // and the chain continues from the store, not from a stale cache.
        let dup =
            |first_offset, count| Appended { first_offset: Offset(first_offset), count, duplicate: true };
        assert_eq!(log.append(t.clone(), a2).await.unwrap(), dup(1, 2));
        assert_eq!(log.append(t.clone(), b1).await.unwrap(), dup(3, 3));
        assert_eq!(log.append(t.clone(), sealed(&a, &t, &mut ha, 1)).await.unwrap(), appended(6, 1));
        assert_eq!(*end.wait_for(|&e| e == Offset(7)).await.unwrap(), Offset(7));
        // Appends after the failure fill the tail again, from where they start.
        let tail = log.read_tail(&t, Offset(6), usize::MAX).unwrap();
        assert_eq!(tail.iter().map(|b| (b.offset.0, b.count)).collect::<Vec<_>>(), [(6, 1)]);
        assert!(log.read_tail(&t, Offset(5), usize::MAX).is_none());
    }

    #[tokio::test]
    async fn the_tail_serves_what_the_store_would() {
        let store = Arc::new(MemoryStore::new());
        let log = Log::open(store.clone()).unwrap();
        let t = topic("demo.tail");
        let a = signer(1);
        let mut head = ChainHead::GENESIS;
        for count in [2, 3, 1, 4] {
            log.append(t.clone(), sealed(&a, &t, &mut head, count)).await.unwrap();
        }
        // Batches cover 0..2, 2..5, 5..6, 6..10; reads start with the batch that contains `from`.
        for (from, max) in [(0, usize::MAX), (3, usize::MAX), (5, 1), (9, usize::MAX), (10, usize::MAX)] {
            let from = Offset(from);
            let tail = log.read_tail(&t, from, max).unwrap();
            let stored: Vec<_> =
                store.read(&t, from, max).unwrap().into_iter().map(|s| s.batch().unwrap()).collect();
            assert_eq!(tail, stored, "from {from}, max {max}");
        }
        assert!(log.read_tail(&topic("demo.other"), Offset(0), usize::MAX).is_none());
    }

    fn stored(offset: u64, count: u32, len: usize) -> StoredBatch {
        StoredBatch { offset: Offset(offset), count, bytes: Bytes::from(vec![0; len]) }
    }

    fn offsets(batches: &[StoredBatch]) -> Vec<(u64, u32)> {
        batches.iter().map(|b| (b.offset.0, b.count)).collect()
    }

    #[test]
    fn the_tail_drops_the_oldest_batches_of_any_topic_to_stay_within_its_budget() {
        let (a, b) = (topic("demo.a"), topic("demo.b"));
        let mut tail = Tail::new(300);
        tail.push(&a, stored(0, 1, 100));
        tail.push(&b, stored(0, 1, 100));
        tail.push(&a, stored(1, 1, 100));
        assert_eq!(offsets(&tail.read(&a, Offset(0), usize::MAX).unwrap()), [(0, 1), (1, 1)]);
        // Over budget: a's first batch, the oldest of all, goes; a read from it now misses.
        tail.push(&b, stored(1, 1, 100));
        assert!(tail.read(&a, Offset(0), usize::MAX).is_none());
        assert_eq!(offsets(&tail.read(&a, Offset(1), usize::MAX).unwrap()), [(1, 1)]);
        assert_eq!(offsets(&tail.read(&b, Offset(0), usize::MAX).unwrap()), [(0, 1), (1, 1)]);
        assert_eq!(tail.bytes, 300);
        // A batch larger than the whole budget is not kept, nor is anything before it on its topic.
        tail.push(&b, stored(2, 1, 301));
        assert!(tail.read(&b, Offset(2), usize::MAX).is_none());
        assert_eq!(tail.bytes, 100);
        tail.push(&a, stored(2, 1, 100));
        assert_eq!(offsets(&tail.read(&a, Offset(1), usize::MAX).unwrap()), [(1, 1), (2, 1)]);
    }

    #[test]
    fn the_tail_restarts_a_topic_at_a_batch_that_does_not_continue_it() {
        let a = topic("demo.a");
        let mut tail = Tail::new(1000);
        tail.push(&a, stored(0, 2, 10));
        tail.push(&a, stored(5, 1, 10));
        assert!(tail.read(&a, Offset(0), usize::MAX).is_none());
        assert_eq!(offsets(&tail.read(&a, Offset(5), usize::MAX).unwrap()), [(5, 1)]);
        assert_eq!(tail.bytes, 10);
        // Past the end: covered, and nothing there yet.
        assert_eq!(tail.read(&a, Offset(6), usize::MAX).unwrap(), []);
    }

    #[test]
    fn a_tail_without_budget_keeps_nothing() {
        let a = topic("demo.a");
        let mut tail = Tail::new(0);
        tail.push(&a, stored(0, 1, 1));
        assert!(tail.read(&a, Offset(0), usize::MAX).is_none());
        assert_eq!(tail.bytes, 0);
    }

    #[tokio::test]
    async fn committed_offsets_are_stored_and_synced() {
        let store = Arc::new(MemoryStore::new());
        let log = Log::open(store.clone()).unwrap();
        let t = topic("demo.commit");
        let before = store.syncs();
        log.commit_offset(t.clone(), "alice".parse().unwrap(), "main".into(), Offset(42)).await.unwrap();
        assert_eq!(store.durable_offset(&t, &"alice".parse().unwrap(), "main").unwrap(), Some(Offset(42)));
        assert_eq!(store.syncs(), before + 1);
    }

    #[tokio::test]
    async fn close_stops_the_writer_and_releases_the_store() {
        let store = Arc::new(MemoryStore::new());
        let log = Log::open(store.clone()).unwrap();
        let t = topic("demo.close");
        log.append(t.clone(), genesis_batch(&signer(1), &t, 1)).await.unwrap();
        log.close().await.unwrap();
        // The writer thread and the log held the other references.
        assert_eq!(Arc::strong_count(&store), 1);
        assert_eq!(store.next_offset(&t).unwrap(), Offset(1));
    }

    #[tokio::test]
    async fn acknowledged_batches_survive_a_restart_on_sled_and_retries_stay_duplicates() {
        let dir = tempfile::tempdir().unwrap();
        let t = topic("demo.restart");
        let a = signer(1);
        let mut head = ChainHead::GENESIS;
        let first = sealed(&a, &t, &mut head, 2);
        {
            let log = Log::open(Arc::new(crate::store::SledStore::open(dir.path()).unwrap())).unwrap();
            assert_eq!(log.append(t.clone(), first.clone()).await.unwrap(), appended(0, 2));
            log.close().await.unwrap();
        }
        let store = Arc::new(crate::store::SledStore::open(dir.path()).unwrap());
        let log = Log::open(store.clone()).unwrap();
        assert_eq!(*log.durable_end(&t).unwrap().borrow(), Offset(2));
        let retry = log.append(t.clone(), first).await.unwrap();
        assert_eq!(retry, Appended { first_offset: Offset(0), count: 2, duplicate: true });
        assert_eq!(log.append(t.clone(), sealed(&a, &t, &mut head, 1)).await.unwrap(), appended(2, 1));
        assert_eq!(store.read(&t, Offset(0), usize::MAX).unwrap().len(), 2);
    }

    #[test]
    fn dropping_the_log_joins_the_writer() {
        let store = Arc::new(MemoryStore::new());
        drop(Log::open(store.clone()).unwrap());
        assert_eq!(Arc::strong_count(&store), 1);
    }
}
