//! For tests of the store, of the writer and of the broker: [`TestStore`], the one store that forwards to
//! another with faults injected, and real sealed batches to append ([`sealed_batch`]).
//!
//! [`TestStore`] forwards every [`Store`] method to an inner store, once, and lets a test step in where
//! the broker meets its storage: hold syncs at a gate ([`TestStore::gate_syncs`]), fail a sync as a full
//! device fails it ([`TestStore::fail_sync`]) or for good, as a failed fsync does
//! ([`TestStore::fail_sync_for_good`]), watch or fail appends ([`TestStore::before_append`]), count
//! what completed ([`TestStore::after_sync`]), and lie to readers as a compromised broker host would
//! ([`TestStore::serve_reads`], [`TestStore::serve_policies`], [`TestStore::claim_first_offset`]). Without
//! hooks it behaves exactly as its inner store.
//!
//! A [`Store`] takes only verified batches ([`Append`]), so tests append real ones: what
//! [`sealed_batch`] makes is deterministic (fixed content key, timestamp and nonces drawn from a seed), so a
//! test's stored bytes are the same on every run. Nothing here is used by the broker itself.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc as std_mpsc, Arc, Mutex, MutexGuard, PoisonError};

use bytes::Bytes;
use rand::SeedableRng;
use sealpost_protocol::{
    seal, ChainHead, ChainId, ContentKey, DurableKey, Epoch, Limits, Offset, Principal, PublicKey,
    SealParams, SignedPolicy, SigningKey, Timestamp, Topic, VerifiedBatch,
};
use tokio::sync::mpsc;

use super::{Append, MemoryStore, PublisherRecord, Store, Stored, StoredBatch};
use crate::{Error, Result};

/// The chain of the batches [`sealed_batch`] makes (of format version 2).
pub const TEST_CHAIN: ChainId = ChainId([0x5C; 16]);

/// A batch of `count` messages of `len` bytes each, signed by `signer` on `topic`, continuing `head` of
/// chain [`TEST_CHAIN`]. Deterministic: the same arguments give the same bytes.
pub fn sealed_batch(
    signer: &SigningKey,
    topic: &Topic,
    head: ChainHead,
    count: usize,
    len: usize,
) -> Result<VerifiedBatch> {
    sealed_batch_on(signer, topic, TEST_CHAIN, head, count, len)
}

/// Like [`sealed_batch`], on chain `chain` ([`ChainId::LEGACY`]: a batch of format version 1, as a
/// layout-3 store holds).
pub fn sealed_batch_on(
    signer: &SigningKey,
    topic: &Topic,
    chain: ChainId,
    head: ChainHead,
    count: usize,
    len: usize,
) -> Result<VerifiedBatch> {
    let params = SealParams {
        topic: topic.clone(),
        epoch: Epoch(1),
        chain,
        first_seq: head.next_seq,
        prev_digest: head.prev_digest,
        created_at: Timestamp(1_763_856_000_000),
    };
    let messages: Vec<Vec<u8>> = (0..count).map(|i| vec![(head.next_seq as usize + i) as u8; len]).collect();
    let mut rng = rand::rngs::StdRng::seed_from_u64(head.next_seq);
    Ok(seal(signer, &ContentKey::from_bytes(&[0xC0; 32]), params, &messages, &Limits::default(), &mut rng)?)
}

/// Runs before an append is forwarded; an error is the append's, and nothing is stored.
type AppendHook = Arc<dyn Fn(&Append<'_>) -> Result<()> + Send + Sync>;
/// Runs before a sync is forwarded, with the number of syncs called before it; an error is the sync's.
type SyncHook = Arc<dyn Fn(u64) -> Result<()> + Send + Sync>;
/// Runs after a forwarded sync succeeded.
type SyncedHook = Arc<dyn Fn() + Send + Sync>;
/// What readers of a topic are served, given every batch honestly stored on it, in offset order.
type ReadView = Arc<dyn Fn(Vec<StoredBatch>) -> Vec<StoredBatch> + Send + Sync>;
/// What readers of any topic's policies are served, given the stored ones, oldest first.
type PolicyView = Arc<dyn Fn(Vec<Bytes>) -> Vec<Bytes> + Send + Sync>;
/// What a chain's head is said to be, given the topic, the publisher, the chain and the stored head.
type HeadView = Arc<
    dyn Fn(&Topic, &PublicKey, ChainId, Option<PublisherRecord>) -> Option<PublisherRecord> + Send + Sync,
>;

#[derive(Default)]
struct Hooks {
    before_append: Vec<AppendHook>,
    before_sync: Vec<SyncHook>,
    after_sync: Vec<SyncedHook>,
    reads: HashMap<Topic, ReadView>,
    policies: Option<PolicyView>,
    heads: Option<HeadView>,
    first_offset: Option<Offset>,
}

/// A [`Store`] that forwards every call to `S`, with the faults a test installs. See the module
/// documentation.
pub struct TestStore<S = MemoryStore> {
    inner: S,
    hooks: Mutex<Hooks>,
    /// Calls to `sync`, forwarded or not.
    sync_calls: AtomicU64,
    /// Set by [`TestStore::fail_sync_for_good`]'s failed sync: what [`Store::failed`] reports.
    failed: Arc<Mutex<Option<String>>>,
}

impl Default for TestStore<MemoryStore> {
    fn default() -> Self {
        Self::new(MemoryStore::new())
    }
}

impl<S> std::fmt::Debug for TestStore<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestStore").field("sync_calls", &self.sync_calls).finish_non_exhaustive()
    }
}

impl<S: Store> TestStore<S> {
    /// `inner`, without faults.
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            hooks: Mutex::new(Hooks::default()),
            sync_calls: AtomicU64::new(0),
            failed: Arc::new(Mutex::new(None)),
        }
    }

    /// The inner store: what is honestly stored.
    pub fn inner(&self) -> &S {
        &self.inner
    }

    fn hooks(&self) -> MutexGuard<'_, Hooks> {
        // Hooks are only added or read whole: a panic cannot leave them half changed.
        self.hooks.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs `hook` before every append (hooks run in the order they were added): to watch appends, or to
    /// fail them (an error it returns is the append's, and nothing is stored).
    pub fn before_append(&self, hook: impl Fn(&Append<'_>) -> Result<()> + Send + Sync + 'static) {
        self.hooks().before_append.push(Arc::new(hook));
    }

    /// Runs `hook` before every sync, with the number of syncs called before it (hooks run in the order
    /// they were added; an error it returns is the sync's, and nothing is synced). It runs on the caller's
    /// thread (the writer's) and may block it.
    pub fn before_sync(&self, hook: impl Fn(u64) -> Result<()> + Send + Sync + 'static) {
        self.hooks().before_sync.push(Arc::new(hook));
    }

    /// Runs `hook` after every sync that succeeded.
    pub fn after_sync(&self, hook: impl Fn() + Send + Sync + 'static) {
        self.hooks().after_sync.push(Arc::new(hook));
    }

    /// From now on every sync waits at a gate until the returned [`SyncGate`] lets it through.
    pub fn gate_syncs(&self) -> SyncGate {
        let (entered_tx, entered) = mpsc::unbounded_channel();
        let (release, release_rx) = std_mpsc::channel::<()>();
        let release_rx = Mutex::new(release_rx);
        self.before_sync(move |_| {
            let _ = entered_tx.send(());
            // An error means the gate was opened for good.
            let _ = release_rx.lock().unwrap_or_else(PoisonError::into_inner).recv();
            Ok(())
        });
        SyncGate { entered, release: Some(release) }
    }

    /// The sync call number `call` (0 for the first call to this store) fails with
    /// [`Error::StorageFull`], as on a full device, and syncs nothing.
    pub fn fail_sync(&self, call: u64) {
        self.before_sync(move |n| if n == call { Err(Error::StorageFull) } else { Ok(()) });
    }

    /// The sync call number `call` fails as a failed fsync does ([`Error::Storage`]), and from then on the
    /// store reports that it [`failed`](Store::failed) and fails every append and sync, as the disk engine
    /// does once its segments are poisoned.
    pub fn fail_sync_for_good(&self, call: u64) {
        let failed = self.failed.clone();
        let why = "fdatasync of segment 0: Input/output error (os error 5) (injected)";
        self.before_sync(move |n| {
            let mut failed = failed.lock().unwrap_or_else(PoisonError::into_inner);
            if n == call {
                failed.get_or_insert_with(|| why.to_owned());
            }
            match &*failed {
                Some(why) => Err(Error::Storage(why.clone())),
                None => Ok(()),
            }
        });
        let failed = self.failed.clone();
        self.before_append(move |_| match &*failed.lock().unwrap_or_else(PoisonError::into_inner) {
            Some(why) => Err(Error::Storage(format!("segments poisoned: {why}"))),
            None => Ok(()),
        });
    }

    /// Readers of `topic` are served `view(every batch honestly stored on it)`, with the offsets the view
    /// gives them, under the [`Store::read`] contract (from the batch that contains the offset asked, up
    /// to the byte limit). Views are functions of the honest log, so they apply to later batches too.
    pub fn serve_reads(
        &self,
        topic: &Topic,
        view: impl Fn(Vec<StoredBatch>) -> Vec<StoredBatch> + Send + Sync + 'static,
    ) {
        self.hooks().reads.insert(topic.clone(), Arc::new(view));
    }

    /// Readers of every topic's policies are served `view(the stored policies, oldest first)`.
    pub fn serve_policies(&self, view: impl Fn(Vec<Bytes>) -> Vec<Bytes> + Send + Sync + 'static) {
        self.hooks().policies = Some(Arc::new(view));
    }

    /// `Store::publisher_head` answers `view(topic, publisher, chain, the stored head)`: a broker that
    /// forgot the tail of a chain says its head is before it. Only the answer changes, not the log.
    pub fn serve_heads(
        &self,
        view: impl Fn(&Topic, &PublicKey, ChainId, Option<PublisherRecord>) -> Option<PublisherRecord>
            + Send
            + Sync
            + 'static,
    ) {
        self.hooks().heads = Some(Arc::new(view));
    }

    /// Every topic's log is said to start at `offset`, as a broker that deleted a prefix and called it
    /// retention would say: its first offset, and reads from below it begin with a retired range.
    pub fn claim_first_offset(&self, offset: Offset) {
        self.hooks().first_offset = Some(offset);
    }

    /// The batches honestly stored on `topic`, in offset order.
    pub fn honest(&self, topic: &Topic) -> Result<Vec<StoredBatch>> {
        Ok(self.inner.read(topic, Offset::ZERO, usize::MAX)?.into_iter().filter_map(Stored::batch).collect())
    }

    /// The log as served: the honest one, or the `serve_reads` view of it.
    fn read_view(&self, topic: &Topic, from: Offset, max_bytes: usize) -> Result<Vec<Stored>> {
        let view = self.hooks().reads.get(topic).cloned();
        let Some(view) = view else { return self.inner.read(topic, from, max_bytes) };
        let served = view(self.honest(topic)?);
        // The `read` contract, applied to the served log: from the batch containing `from`, up to max_bytes.
        let mut total = 0usize;
        let mut out = Vec::new();
        for batch in served.into_iter().filter(|b| b.end() > from) {
            total = total.saturating_add(batch.bytes.len());
            if !out.is_empty() && total > max_bytes {
                break;
            }
            out.push(Stored::Batch(batch));
        }
        Ok(out)
    }
}

impl<S: Store> Store for TestStore<S> {
    fn append(&self, batch: Append<'_>) -> Result<()> {
        let hooks = self.hooks().before_append.clone();
        for hook in hooks {
            hook(&batch)?;
        }
        self.inner.append(batch)
    }

    fn sync(&self) -> Result<()> {
        let call = self.sync_calls.fetch_add(1, Ordering::SeqCst);
        let hooks = self.hooks().before_sync.clone();
        for hook in hooks {
            hook(call)?;
        }
        self.inner.sync()?;
        let hooks = self.hooks().after_sync.clone();
        for hook in hooks {
            hook();
        }
        Ok(())
    }

    fn failed(&self) -> Option<String> {
        let injected = self.failed.lock().unwrap_or_else(PoisonError::into_inner).clone();
        injected.or_else(|| self.inner.failed())
    }

    fn read(&self, topic: &Topic, from: Offset, max_bytes: usize) -> Result<Vec<Stored>> {
        let items = self.read_view(topic, from, max_bytes)?;
        // A claimed first offset is served as a retention cut: what is below it is said to be retired.
        let Some(first) = self.hooks().first_offset else { return Ok(items) };
        let retired = crate::store::retired_range(from, first);
        Ok(retired.into_iter().chain(items.into_iter().filter(|i| i.offset() >= first)).collect())
    }

    fn next_offset(&self, topic: &Topic) -> Result<Offset> {
        self.inner.next_offset(topic)
    }

    fn first_offset(&self, topic: &Topic) -> Result<Offset> {
        let lie = self.hooks().first_offset;
        match lie {
            Some(offset) => Ok(offset),
            None => self.inner.first_offset(topic),
        }
    }

    fn retain(
        &self,
        rules: &crate::retention::Retention,
        now: std::time::SystemTime,
    ) -> Result<crate::store::Retained> {
        self.inner.retain(rules, now)
    }

    fn publisher_record(
        &self,
        topic: &Topic,
        publisher: &PublicKey,
        chain: ChainId,
        first_seq: u64,
    ) -> Result<Option<PublisherRecord>> {
        self.inner.publisher_record(topic, publisher, chain, first_seq)
    }

    fn publisher_head(
        &self,
        topic: &Topic,
        publisher: &PublicKey,
        chain: ChainId,
    ) -> Result<Option<PublisherRecord>> {
        let stored = self.inner.publisher_head(topic, publisher, chain)?;
        let view = self.hooks().heads.clone();
        Ok(match view {
            Some(view) => view(topic, publisher, chain, stored),
            None => stored,
        })
    }

    fn durable_offset(&self, topic: &Topic, principal: &Principal, name: &str) -> Result<Option<Offset>> {
        self.inner.durable_offset(topic, principal, name)
    }

    fn set_durable_offset(
        &self,
        topic: &Topic,
        principal: &Principal,
        name: &str,
        next_offset: Offset,
    ) -> Result<()> {
        self.inner.set_durable_offset(topic, principal, name, next_offset)
    }

    fn put_policy(&self, topic: &Topic, epoch: u64, policy: &Bytes) -> Result<()> {
        self.inner.put_policy(topic, epoch, policy)
    }

    fn policies(&self, topic: &Topic, max: usize) -> Result<Vec<Bytes>> {
        let view = self.hooks().policies.clone();
        let Some(view) = view else { return self.inner.policies(topic, max) };
        let mut served = view(self.inner.policies(topic, usize::MAX)?);
        let skip = served.len().saturating_sub(max);
        Ok(served.split_off(skip))
    }

    /// Under a policy view, the page is cut from `view(every stored policy)` by the epoch each served
    /// policy claims (one that does not decode counts as below every epoch).
    fn policy_history(
        &self,
        topic: &Topic,
        before: Option<u64>,
        max: usize,
        max_bytes: usize,
    ) -> Result<Vec<Bytes>> {
        let view = self.hooks().policies.clone();
        let Some(view) = view else { return self.inner.policy_history(topic, before, max, max_bytes) };
        let served = view(self.inner.policies(topic, usize::MAX)?);
        let epoch =
            |p: &Bytes| SignedPolicy::decode(p.clone(), &Limits::default()).map_or(0, |p| p.epoch().0);
        let below = served.into_iter().rev().filter(|p| before.is_none_or(|b| epoch(p) < b));
        super::history_page(below.map(Ok::<_, Error>), max, max_bytes)
    }

    fn syncs(&self) -> u64 {
        self.inner.syncs()
    }

    fn topics(&self, after: Option<&Topic>, max: usize) -> Result<Vec<Topic>> {
        self.inner.topics(after, max)
    }

    fn durables(&self, after: Option<&DurableKey>, max: usize) -> Result<Vec<(DurableKey, Offset)>> {
        self.inner.durables(after, max)
    }

    fn share(&self, sink: super::Sink) {
        self.inner.share(sink)
    }

    fn max_batch_len(&self) -> Option<usize> {
        self.inner.max_batch_len()
    }
}

/// A boxed engine is an engine: lets a [`TestStore`] wrap whichever one a test opened.
impl<S: Store + ?Sized> Store for Box<S> {
    fn append(&self, batch: Append<'_>) -> Result<()> {
        (**self).append(batch)
    }
    fn sync(&self) -> Result<()> {
        (**self).sync()
    }
    fn failed(&self) -> Option<String> {
        (**self).failed()
    }
    fn read(&self, topic: &Topic, from: Offset, max_bytes: usize) -> Result<Vec<Stored>> {
        (**self).read(topic, from, max_bytes)
    }
    fn next_offset(&self, topic: &Topic) -> Result<Offset> {
        (**self).next_offset(topic)
    }
    fn first_offset(&self, topic: &Topic) -> Result<Offset> {
        (**self).first_offset(topic)
    }
    fn retain(
        &self,
        rules: &crate::retention::Retention,
        now: std::time::SystemTime,
    ) -> Result<super::Retained> {
        (**self).retain(rules, now)
    }
    fn publisher_record(
        &self,
        topic: &Topic,
        publisher: &PublicKey,
        chain: ChainId,
        first_seq: u64,
    ) -> Result<Option<PublisherRecord>> {
        (**self).publisher_record(topic, publisher, chain, first_seq)
    }
    fn publisher_head(
        &self,
        topic: &Topic,
        publisher: &PublicKey,
        chain: ChainId,
    ) -> Result<Option<PublisherRecord>> {
        (**self).publisher_head(topic, publisher, chain)
    }
    fn durable_offset(&self, topic: &Topic, principal: &Principal, name: &str) -> Result<Option<Offset>> {
        (**self).durable_offset(topic, principal, name)
    }
    fn set_durable_offset(
        &self,
        topic: &Topic,
        principal: &Principal,
        name: &str,
        next_offset: Offset,
    ) -> Result<()> {
        (**self).set_durable_offset(topic, principal, name, next_offset)
    }
    fn put_policy(&self, topic: &Topic, epoch: u64, policy: &Bytes) -> Result<()> {
        (**self).put_policy(topic, epoch, policy)
    }
    fn policies(&self, topic: &Topic, max: usize) -> Result<Vec<Bytes>> {
        (**self).policies(topic, max)
    }
    fn policy_history(
        &self,
        topic: &Topic,
        before: Option<u64>,
        max: usize,
        max_bytes: usize,
    ) -> Result<Vec<Bytes>> {
        (**self).policy_history(topic, before, max, max_bytes)
    }
    fn syncs(&self) -> u64 {
        (**self).syncs()
    }
    fn topics(&self, after: Option<&Topic>, max: usize) -> Result<Vec<Topic>> {
        (**self).topics(after, max)
    }
    fn durables(&self, after: Option<&DurableKey>, max: usize) -> Result<Vec<(DurableKey, Offset)>> {
        (**self).durables(after, max)
    }
    fn share(&self, sink: super::Sink) {
        (**self).share(sink)
    }
    fn max_batch_len(&self) -> Option<usize> {
        (**self).max_batch_len()
    }
}

/// The test's side of [`TestStore::gate_syncs`].
#[derive(Debug)]
pub struct SyncGate {
    entered: mpsc::UnboundedReceiver<()>,
    release: Option<std_mpsc::Sender<()>>,
}

impl SyncGate {
    /// Waits until a sync is waiting at the gate (or has passed it, if it was let through in advance).
    /// Returns at once if the store is gone.
    pub async fn entered(&mut self) {
        self.entered.recv().await;
    }

    /// Lets one sync through (now, or the next to come).
    pub fn release_one(&self) {
        if let Some(release) = &self.release {
            let _ = release.send(());
        }
    }

    /// Lets every sync through from now on.
    pub fn open(&mut self) {
        self.release = None;
    }
}
