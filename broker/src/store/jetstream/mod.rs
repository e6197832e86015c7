//! The JetStream engine: a [`Store`] whose state lives in a NATS JetStream cluster, shared by every broker
//! that points at it (`storage.engine = "jetstream"`).
//!
//! Several brokers write one log here, so the single-writer assumptions of the disk engine turn into
//! checks JetStream makes for us. What is where ([`names`] has the names):
//!
//! - **A topic's log is a stream** (`num_replicas` = `storage.jetstream.replicas`, file storage), one
//!   message per sealed batch, in offset order. Offsets are not stream sequences (offsets count messages,
//!   sequences count batches): every message carries its batch's first offset and message count in
//!   headers, with the rest of its [`PublisherRecord`]. The batch at stream sequence `s` starts where the
//!   batch at `s - 1` ends, so any broker maps an offset to a sequence the same way (a search over the
//!   stream, remembered per topic), and every broker serves the same offsets.
//! - **Appends are conditional.** Each batch is published with `Nats-Expected-Last-Sequence`: the stream
//!   sequence this broker believes is last. JetStream stores it only if nothing else was appended since,
//!   so a batch never lands out of chain order, and a later batch in flight behind a failed one fails too
//!   (that would otherwise look like a reorder attack to subscribers). The stream-wide condition is
//!   stronger than a per-subject one: it also keeps offsets gap-free when two brokers append to one
//!   topic. Each publisher chain has its own subject, so the last batch of a chain is one
//!   last-by-subject lookup ([`Store::publisher_head`]). `Nats-Msg-Id` is derived from the batch
//!   (publisher, chain, first sequence number, digest), so a retry through any broker within JetStream's
//!   duplicate window is recognised by JetStream as well as by the sequencer.
//! - **`sync` waits for JetStream's acknowledgements.** An append only sends; [`Store::sync`] returns once
//!   every append since the last sync was acknowledged by the stream's leader, that is stored by a quorum
//!   of replicas (each fsyncing before it answers when the servers run with `sync_interval: always`,
//!   which the deployment must set: docs/operations.md).
//! - **On any error, stop, read what is stored, resume from there** ([`append`]). A failed or unanswered
//!   acknowledgement is followed by a look at the stream: batches whose `Nats-Msg-Id` is at their
//!   sequence are stored; the rest are sent again with the same conditions, with backoff, until
//!   `storage.jetstream.publish_timeout_ms` has passed (a leader election takes 4.5-8.3 s on a small
//!   machine; each publish meanwhile is answered at once with "no responders"). Then the sync fails with
//!   [`Error::Unavailable`] and nothing is acknowledged. If another batch holds one of the sequences, the
//!   sync fails with [`Error::Contended`] and the [`writer`](crate::writer) sequences the group again.
//! - **Topic policies** are in one stream, a subject per (topic, epoch), each stored with
//!   `Nats-Expected-Last-Subject-Sequence: 0`: an epoch's policy is written once (compare-and-set), by
//!   whichever broker comes first.
//! - **Durable subscription offsets** are in a key-value bucket with `replicas` replicas.
//!
//! # What other brokers write
//!
//! A broker learns of batches other brokers append by following each topic it serves ([`follow`]): an
//! ordered consumer from the last sequence it saw, whose batches go to the [`Sink`] the
//! [`Log`](crate::writer::Log) installed ([`Store::share`]): they move the topic's durable end and fill
//! the in-memory tail, so subscribers of every broker are served live. It follows the policy stream the
//! same way: a policy stored through any broker makes every broker read its policies again, so a
//! revocation is enforced by all of them. The engine watches its own consumers: one that delivers
//! nothing for [`STALL`] while the stream holds more is re-created from the last sequence it delivered.
//!
//! # Threads
//!
//! The [`Store`] interface is synchronous; the engine runs its own small tokio runtime for the NATS
//! connection and blocks the calling thread on each request ([`JetStreamStore::block`]), which is safe
//! from any thread, async workers included (the shell calls the store off the async workers anyway).

use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::{Duration, SystemTime};

use async_nats::jetstream::{self, kv, stream};
use bytes::Bytes;
use sealpost_protocol::{ChainId, DurableKey, Offset, Principal, PublicKey, Topic};
use tokio::runtime::{Handle, Runtime};
use tokio::sync::mpsc;

use self::names::Names;
use super::{Append, PublisherRecord, Retained, Sink, Store, Stored};
use crate::retention::Retention;
use crate::{Error, Result};

mod append;
mod chains;
mod durables;
mod follow;
mod log;
mod names;
mod policies;

use self::append::{Outgoing, Pending};
use self::log::{TopicLog, TopicState};

/// How long a consumer that follows a topic may deliver nothing while its stream holds more before it is
/// re-created from the last sequence it delivered.
pub const STALL: Duration = Duration::from_secs(1);

/// Bytes a stored batch's headers take at most (the NATS protocol counts them in `max_payload`).
pub const HEADER_ROOM: usize = 512;

/// Timeout of one JetStream API request or publish acknowledgement.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// The name of the stream that holds `topic`'s log in the deployment of `prefix` (for operators and
/// tests: `nats stream info NAME`).
pub fn log_stream(prefix: &str, topic: &Topic) -> Result<String> {
    Ok(Names::new(prefix)?.log_stream(topic))
}

/// How to reach the JetStream cluster and what to create there: the `[storage.jetstream]` table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JetStreamOptions {
    /// The NATS servers to connect to (`nats://host:port` or `tls://host:port`): any of the cluster's.
    pub servers: Vec<String>,
    /// A NATS credentials file (JWT and seed), if the servers require one.
    pub credentials: Option<PathBuf>,
    /// CA certificates (PEM) to verify the servers with; setting it requires TLS.
    pub ca: Option<PathBuf>,
    /// A client certificate and its key (PEM), for servers that verify clients.
    pub cert: Option<PathBuf>,
    /// The key of `cert`.
    pub key: Option<PathBuf>,
    /// The first part of every stream, subject and bucket name: lets several deployments share an account.
    pub prefix: String,
    /// Replicas of every stream and bucket the engine creates (3 for a three-node cluster).
    pub replicas: usize,
    /// How long an append may be retried (through leader elections) before the sync fails.
    pub publish_timeout: Duration,
}

impl Default for JetStreamOptions {
    fn default() -> Self {
        JetStreamOptions {
            servers: vec!["nats://127.0.0.1:4222".into()],
            credentials: None,
            ca: None,
            cert: None,
            key: None,
            prefix: "SEALPOST".into(),
            replicas: 3,
            publish_timeout: Duration::from_secs(20),
        }
    }
}

/// The JetStream engine. See the [module documentation](self).
pub struct JetStreamStore {
    /// Taken (and shut down in the background) when the store is dropped: dropping a runtime in place
    /// panics on an async worker.
    runtime: Option<Runtime>,
    handle: Handle,
    js: jetstream::Context,
    names: Names,
    options: JetStreamOptions,
    /// The servers' `max_payload`.
    max_payload: usize,
    topics: Mutex<HashMap<Topic, Arc<TopicLog>>>,
    /// Appends sent and not yet covered by a sync, in order (only the writer thread appends and syncs).
    pending: Mutex<Vec<Pending>>,
    /// The task that sends publishes, in the order appends made them.
    outgoing: mpsc::UnboundedSender<Outgoing>,
    policies: stream::Stream<()>,
    durables: kv::Store,
    syncs: AtomicU64,
    sink: OnceLock<Sink>,
    /// Set when the store is dropped: followers stop.
    closed: Arc<AtomicBool>,
}

impl std::fmt::Debug for JetStreamStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JetStreamStore").field("options", &self.options).finish_non_exhaustive()
    }
}

impl JetStreamStore {
    /// Connects to the cluster and creates the policy stream and the durables bucket if they are missing.
    /// Fails with [`Error::Config`] on bad settings and [`Error::Unavailable`] if the cluster cannot be
    /// reached.
    pub fn connect(options: JetStreamOptions) -> Result<JetStreamStore> {
        let names = Names::new(&options.prefix)?;
        if options.servers.is_empty() {
            return Err(Error::Config("storage.jetstream.servers is empty".into()));
        }
        if !(1..=5).contains(&options.replicas) {
            return Err(Error::Config(format!(
                "storage.jetstream.replicas = {} is not between 1 and 5",
                options.replicas
            )));
        }
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("sealpost-nats")
            .enable_all()
            .build()?;
        let handle = runtime.handle().clone();
        let connect = Self::open_connection(options.clone(), names.clone());
        let (js, policies, durables) = run_on(&handle, connect)??;
        let max_payload = js.client().server_info().max_payload;
        let (outgoing, queue) = mpsc::unbounded_channel();
        handle.spawn(append::send_in_order(js.clone(), queue));
        Ok(JetStreamStore {
            runtime: Some(runtime),
            handle,
            js,
            names,
            options,
            max_payload,
            topics: Mutex::new(HashMap::new()),
            pending: Mutex::new(Vec::new()),
            outgoing,
            policies,
            durables,
            syncs: AtomicU64::new(0),
            sink: OnceLock::new(),
            closed: Arc::new(AtomicBool::new(false)),
        })
    }

    async fn open_connection(
        options: JetStreamOptions,
        names: Names,
    ) -> Result<(jetstream::Context, stream::Stream<()>, kv::Store)> {
        let mut connect = async_nats::ConnectOptions::new()
            .name("sealpost-broker")
            .connection_timeout(REQUEST_TIMEOUT)
            .retry_on_initial_connect()
            .max_reconnects(None);
        if let Some(path) = &options.credentials {
            connect = connect.credentials_file(path).await.map_err(|e| {
                Error::Config(format!("storage.jetstream.credentials {}: {e}", path.display()))
            })?;
        }
        if let Some(ca) = &options.ca {
            connect = connect.add_root_certificates(ca.clone()).require_tls(true);
        }
        match (&options.cert, &options.key) {
            (Some(cert), Some(key)) => connect = connect.add_client_certificate(cert.clone(), key.clone()),
            (None, None) => {}
            _ => {
                return Err(Error::Config(
                    "storage.jetstream.cert and storage.jetstream.key go together".into(),
                ))
            }
        }
        let servers: Vec<async_nats::ServerAddr> = options
            .servers
            .iter()
            .map(|s| s.parse().map_err(|e| Error::Config(format!("storage.jetstream.servers: {s}: {e}"))))
            .collect::<Result<_>>()?;
        let client = tokio::time::timeout(options.publish_timeout, connect.connect(servers.as_slice()))
            .await
            .map_err(|_| Error::Unavailable("no NATS server of storage.jetstream.servers answered".into()))?
            .map_err(|e| Error::Unavailable(format!("connecting to NATS: {e}")))?;
        let js = jetstream::context::ContextBuilder::new()
            .timeout(REQUEST_TIMEOUT)
            .max_ack_inflight(65_536)
            .backpressure_on_inflight(true)
            .build(client);
        let unavailable = |what: &str, e: &dyn std::fmt::Display| Error::Unavailable(format!("{what}: {e}"));
        js.get_or_create_stream(stream::Config {
            name: names.policy_stream(),
            subjects: vec![names.policy_subjects()],
            num_replicas: options.replicas,
            storage: stream::StorageType::File,
            allow_direct: true,
            description: Some("Sealpost: signed topic policies".into()),
            ..Default::default()
        })
        .await
        .map_err(|e| unavailable("creating the policy stream", &e))?;
        let policies = js
            .get_stream_no_info(names.policy_stream())
            .await
            .map_err(|e| unavailable("the policy stream", &e))?;
        let durables = js
            .create_or_update_key_value(kv::Config {
                bucket: names.durables_bucket(),
                description: "Sealpost: committed offsets of durable subscriptions".into(),
                history: 1,
                num_replicas: options.replicas,
                storage: stream::StorageType::File,
                ..Default::default()
            })
            .await
            .map_err(|e| unavailable("creating the durables bucket", &e))?;
        Ok((js, policies, durables))
    }

    /// Runs `future` on the engine's runtime and waits for it on this thread.
    fn block<F>(&self, future: F) -> Result<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        run_on(&self.handle, future)
    }

    /// The largest sealed batch this engine stores: the servers' `max_payload` less room for headers.
    pub fn max_batch_len(&self) -> usize {
        self.max_payload.saturating_sub(HEADER_ROOM)
    }

    /// The topic's log handle (its state loaded on first use).
    fn log(&self, topic: &Topic) -> Arc<TopicLog> {
        let mut topics = self.topics.lock().unwrap_or_else(PoisonError::into_inner);
        topics
            .entry(topic.clone())
            .or_insert_with(|| {
                let (stream, subjects) = (self.names.log_stream(topic), self.names.log_subjects(topic));
                Arc::new(TopicLog::new(topic.clone(), stream, subjects))
            })
            .clone()
    }

    /// `log`'s state, loaded from the cluster if it is not (or no longer) known; with `create`, for an
    /// append, the topic's stream is created first if it is missing. Starts following the topic.
    fn state<'a>(&self, log: &'a Arc<TopicLog>, create: bool) -> Result<MutexGuard<'a, TopicState>> {
        // A stream not there at the last look is looked for again: another broker may have created it.
        let known = {
            let state = log.state();
            state.loaded && state.exists
        };
        if !known {
            let load = log::load(self.js.clone(), log.clone(), create, self.options.replicas);
            let loaded = self.block(load)??;
            let mut state = log.state();
            if state.pending == 0 && state.last_seq <= loaded.last_seq {
                *state = loaded;
            }
        }
        self.follow(log);
        Ok(log.state())
    }

    /// Starts following `log` once, if a sink is installed (from its first batch if its stream does not
    /// exist yet: the follower waits for it).
    fn follow(&self, log: &Arc<TopicLog>) {
        let Some(sink) = self.sink.get() else { return };
        let from = log.state().last_seq + 1;
        if log.following.swap(true, Ordering::SeqCst) {
            return;
        }
        self.handle.spawn(follow::topic(
            self.js.clone(),
            Arc::downgrade(log),
            from,
            sink.clone(),
            self.closed.clone(),
        ));
    }
}

/// Runs `future` on `handle` and waits for it on this thread (never inside the runtime's own context).
fn run_on<F>(handle: &Handle, future: F) -> Result<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    let (tx, rx) = std::sync::mpsc::channel();
    handle.spawn(async move {
        let _ = tx.send(future.await);
    });
    rx.recv().map_err(|_| Error::ShuttingDown)
}

impl Drop for JetStreamStore {
    fn drop(&mut self) {
        self.closed.store(true, Ordering::SeqCst);
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl JetStreamStore {
    /// The message of `log`'s stream `at` says, as its leader has it.
    fn get(
        &self,
        log: &TopicLog,
        at: log::At,
    ) -> Result<Option<async_nats::jetstream::message::StreamMessage>> {
        let (js, name) = (self.js.clone(), log.stream.clone());
        self.block(async move {
            let stream = js.get_stream_no_info(&name).await.map_err(|e| log::unavailable("stream", e))?;
            log::get(&stream, at).await
        })?
    }
}

impl Store for JetStreamStore {
    fn append(&self, batch: Append<'_>) -> Result<()> {
        if batch.bytes().len() > self.max_batch_len() {
            return Err(Error::LimitExceeded(
                "a sealed batch larger than the JetStream servers' max_payload allows",
            ));
        }
        let log = self.log(batch.topic());
        let mut state = self.state(&log, true)?;
        if batch.offset() != state.next {
            return Err(if batch.offset() < state.next {
                Error::Contended(format!("{} is at offset {} already", batch.topic(), state.next))
            } else {
                super::offset_mismatch(batch.topic(), state.next, batch.offset())
            });
        }
        let record = batch.record();
        let seq = state.last_seq + 1;
        state.last_seq = seq;
        state.next = record.end();
        state.pending += 1;
        state.remember(record.offset, seq, record.count);
        drop(state);
        let msg_id = names::msg_id(batch.publisher(), batch.chain(), &record);
        let headers = names::batch_headers(&record, &msg_id);
        let subject = self.names.chain_subject(batch.topic(), batch.publisher(), batch.chain());
        self.send(log.clone(), seq, (subject, msg_id, headers), batch.bytes().clone()).inspect_err(|_| {
            let mut state = log.state();
            state.pending = state.pending.saturating_sub(1);
            state.forget();
        })
    }

    fn sync(&self) -> Result<()> {
        self.sync_pending()?;
        self.syncs.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    fn read(&self, topic: &Topic, from: Offset, max_bytes: usize) -> Result<Vec<Stored>> {
        let log = self.log(topic);
        let (hint, first, last_seq) = {
            let state = self.state(&log, false)?;
            if !state.exists {
                return Ok(Vec::new());
            }
            (state.seq_of(from.max(state.first)), state.first, state.last_seq)
        };
        // Other brokers may have appended past what this one knows: search beyond it too.
        let bound = last_seq.saturating_mul(2).max(1024);
        let unsynced = self.unsynced(&log).into_iter().map(|u| u.batch).collect();
        let read = log::read(self.js.clone(), log.clone(), (from, max_bytes), (hint, first, bound), unsynced);
        let (items, learned) = self.block(read)??;
        let mut state = log.state();
        for (seq, batch) in &learned {
            state.remember(batch.offset, *seq, batch.count);
        }
        Ok(items)
    }

    fn next_offset(&self, topic: &Topic) -> Result<Offset> {
        let log = self.log(topic);
        let state = self.state(&log, false)?;
        Ok(state.next)
    }

    fn first_offset(&self, topic: &Topic) -> Result<Offset> {
        let log = self.log(topic);
        let state = self.state(&log, false)?;
        Ok(state.first)
    }

    /// Keeps everything: the configuration refuses retention rules with this engine (a stream's own
    /// limits would remove batches under every broker at once; not built yet).
    fn retain(&self, _rules: &Retention, _now: SystemTime) -> Result<Retained> {
        Ok(Retained::default())
    }

    fn publisher_record(
        &self,
        topic: &Topic,
        publisher: &PublicKey,
        chain: ChainId,
        first_seq: u64,
    ) -> Result<Option<PublisherRecord>> {
        self.chain_record(topic, publisher, chain, first_seq)
    }

    fn publisher_head(
        &self,
        topic: &Topic,
        publisher: &PublicKey,
        chain: ChainId,
    ) -> Result<Option<PublisherRecord>> {
        self.chain_head(topic, publisher, chain)
    }

    fn durable_offset(&self, topic: &Topic, principal: &Principal, name: &str) -> Result<Option<Offset>> {
        self.durable(topic, principal, name)
    }

    /// Durable at once (the bucket acknowledges a put once a quorum stored it).
    fn set_durable_offset(
        &self,
        topic: &Topic,
        principal: &Principal,
        name: &str,
        next_offset: Offset,
    ) -> Result<()> {
        self.commit_durable(topic, principal, name, next_offset)
    }

    /// Durable at once; an epoch's policy is stored once ([`policies`]).
    fn put_policy(&self, topic: &Topic, epoch: u64, policy: &Bytes) -> Result<()> {
        self.store_policy(topic, epoch, policy)
    }

    fn policies(&self, topic: &Topic, max: usize) -> Result<Vec<Bytes>> {
        self.newest_policies(topic, max)
    }

    fn policy_history(
        &self,
        topic: &Topic,
        before: Option<u64>,
        max: usize,
        max_bytes: usize,
    ) -> Result<Vec<Bytes>> {
        self.policy_page(topic, before, max, max_bytes)
    }

    fn durables(&self, after: Option<&DurableKey>, max: usize) -> Result<Vec<(DurableKey, Offset)>> {
        self.durable_page(after, max)
    }

    fn syncs(&self) -> u64 {
        self.syncs.load(Ordering::SeqCst)
    }

    fn topics(&self, after: Option<&Topic>, max: usize) -> Result<Vec<Topic>> {
        use futures_util::TryStreamExt;
        let (js, prefix) = (self.js.clone(), self.names.log_stream_prefix());
        let infos: Vec<stream::Info> = self
            .block(async move { js.streams().try_collect().await })?
            .map_err(|e| log::unavailable("listing streams", e))?;
        let mut topics: Vec<Topic> = infos
            .into_iter()
            .filter(|i| i.config.name.starts_with(&prefix) && i.state.messages > 0)
            .filter_map(|i| Topic::new(i.config.description?).ok())
            .filter(|t| after.is_none_or(|a| t > a))
            .collect();
        topics.sort();
        topics.truncate(max);
        Ok(topics)
    }

    fn share(&self, sink: Sink) {
        let sink = follow::relay(sink);
        if self.sink.set(sink.clone()).is_err() {
            return;
        }
        // Policies: from what the stream holds now on (what is stored already is read when needed).
        let (js, stream, closed) = (self.js.clone(), self.names.policy_stream(), self.closed.clone());
        self.handle.spawn(async move {
            let next = match js.get_stream(&stream).await {
                Ok(s) => s.cached_info().state.last_sequence + 1,
                Err(_) => 1,
            };
            follow::policies(js, stream, next, sink, closed).await
        });
        let logs: Vec<Arc<TopicLog>> =
            self.topics.lock().unwrap_or_else(PoisonError::into_inner).values().cloned().collect();
        for log in logs {
            self.follow(&log);
        }
    }

    fn max_batch_len(&self) -> Option<usize> {
        Some(JetStreamStore::max_batch_len(self))
    }
}
