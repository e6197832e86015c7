//! The single writer of the store: [`Log`], the handle through which everything is written, and its
//! contract.
//!
//! [`Log`] owns every write to the [`Store`]: one dedicated OS thread (`sealpost-log`, [`group`]) receives
//! append, offset-commit and policy requests from any number of async tasks and executes them in arrival
//! order. It guarantees:
//!
//! - **An acknowledgement follows an fsync that covers it.** Requests are executed in groups (at most
//!   [`MAX_GROUP_REQUESTS`] requests or [`MAX_GROUP_BYTES`] bytes of batches) and a group is answered only
//!   after one [`Store::sync`] that covers all of it, duplicates included ([`group`]).
//! - **Offsets are assigned in one place.** The writer thread assigns every offset, from its own cache of
//!   per-topic next offsets; the store only checks them. Per-publisher chain heads are cached beside them,
//!   so batches of one publisher in one group chain onto each other, and offsets stay gap-free.
//! - **Batches continue their publisher's chain, or are retries.** The [`sequencer`] decides, for each
//!   batch in order, with the chain as it stands after every earlier batch of the group.
//! - **Failure is all or nothing for a group.** If an append or the sync fails, every request of the group
//!   gets the error ([`Error::StorageFull`] stays `StorageFull`, so the peer learns the device is full) and
//!   the caches are dropped, to be reloaded from the store. A batch of a failed group may still be in the
//!   store; a publisher's retry then finds it and is answered as a duplicate with its original offsets.
//! - **A failed fsync stops everything (fail-stop).** If the store says it [failed](Store::failed) for
//!   good, the group, every queued request and every later one get [`Error::StorageFailed`], the store is
//!   not touched again (no final sync either), and [`Log::failed`] reports why, so that the shell stops
//!   the broker and a restart recovers the store ([`group`], "Fail-stop").
//! - **Subscribers only see durable data.** [`Log::durable_end`] gives, per topic, a watch of the offset up
//!   to which the topic is durable; the writer advances it after each successful sync, never before
//!   ([`durable`]). With a shared log ([`Store::share`]) what other brokers commit advances it too.
//!
//! The log does not check signatures, ACLs or the signer binding: callers pass batches they have verified
//! and authorised. Readers use [`Log::store`], or first [`Log::read_tail`], which serves recent batches
//! from memory ([`tail`]) exactly as the store would.
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
//! Two mutexes, never held together: the map of durable-end watches ([`durable`]; held while
//! [`Log::durable_end`] reads the store, so store locks nest inside it, never the other way round) and the
//! tail (held only to push, clear or copy out a read; never while calling the store). The writer thread
//! takes each only briefly and never while calling the store.

use std::fmt;
use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;

use bytes::Bytes;
use sealpost_protocol::{Offset, Principal, Topic, VerifiedBatch};
use tokio::sync::{mpsc, oneshot, watch};

use self::group::{Shared, Writer};
use self::request::Request;
use crate::metrics::Metrics;
use crate::store::{Sink, Store, StoredBatch};
use crate::{Error, Result};

mod durable;
pub mod group;
mod request;
pub mod sequencer;
mod tail;
#[cfg(test)]
mod tests;

pub use self::group::{MAX_GROUP_BYTES, MAX_GROUP_REQUESTS};
pub use self::request::Appended;

/// Bytes of recently appended batches [`Log::open`] keeps in memory for subscribers: 8 MiB, a few
/// thousand batches of small messages, or a few seconds of a fast publisher.
pub const DEFAULT_TAIL_BYTES: usize = 8 * 1024 * 1024;

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

impl Log {
    /// Starts the writer thread over `store`, keeping [`DEFAULT_TAIL_BYTES`] of recent batches in memory.
    /// Syncs the store first, so that whatever it already holds counts as durable.
    pub fn open(store: Arc<dyn Store>) -> Result<Log> {
        Self::with_tail(store, DEFAULT_TAIL_BYTES)
    }

    /// [`open`](Self::open), keeping `tail_bytes` of recent batches in memory for readers (0: none).
    pub fn with_tail(store: Arc<dyn Store>, tail_bytes: usize) -> Result<Log> {
        Self::with_metrics(store, tail_bytes, None)
    }

    /// [`with_tail`](Self::with_tail), telling `metrics` of each sync (its duration and group size), each
    /// batch stored and each durable subscription's committed offset.
    pub fn with_metrics(
        store: Arc<dyn Store>,
        tail_bytes: usize,
        metrics: Option<Arc<Metrics>>,
    ) -> Result<Log> {
        store.sync()?;
        let shared = Arc::new(Shared::new(store.clone(), tail_bytes, metrics));
        let (weak, changed) = (Arc::downgrade(&shared), shared.policies_changed.clone());
        store.share(Sink {
            committed: Arc::new(move |topic: &Topic, batch: StoredBatch| {
                if let Some(shared) = weak.upgrade() {
                    shared.committed(topic, batch);
                }
            }),
            policies_changed: Arc::new(move || {
                changed.send_modify(|n| *n += 1);
            }),
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

    /// The metrics the log reports to, if any: the shell reports publish latencies there too.
    pub fn metrics(&self) -> Option<&Arc<Metrics>> {
        self.shared.metrics.as_ref()
    }

    /// Hands a request to the writer now; the receiver yields its answer.
    fn enqueue<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T>>) -> Request,
    ) -> Result<oneshot::Receiver<Result<T>>> {
        if let Some(e) = self.shared.failure() {
            return Err(e);
        }
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
    /// (the batch may then be stored or not: retry it); [`Error::StorageFailed`] once the store failed for
    /// good (the same: retry it once the broker has restarted); [`Error::ShuttingDown`] once the log is
    /// closing; and [`Error::Protocol`] if `topic` is not the topic the batch was sealed for.
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
            self.enqueue(|reply| Request::Append { batch: Box::new(batch), reply })
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
    /// them, if the in-memory tail holds `from` or what follows it; `None` if not, and the store must be
    /// read. The tail holds durable batches only.
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
        self.shared.durable.subscribe(topic, self.shared.store.as_ref())
    }

    /// A count of the policies other brokers stored (a shared log, [`Store::share`]): when it changes,
    /// policies read before may be stale. Never changes with an engine only this broker writes.
    pub fn policies_changed(&self) -> watch::Receiver<u64> {
        self.shared.policies_changed.subscribe()
    }

    /// A watch of why the store failed for good: `None` until it has, then the reason, for ever (see the
    /// module documentation). The shell stops the broker when it changes.
    pub fn failed(&self) -> watch::Receiver<Option<String>> {
        self.shared.failed.subscribe()
    }

    /// Finishes the queued requests, syncs, and stops the writer thread. Fails if that final sync failed
    /// (what the failed requests wrote may then not be durable), with [`Error::StorageFailed`] if the
    /// store failed for good (then there is no final sync), or if the writer thread panicked.
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
