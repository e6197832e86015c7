//! The publisher: seals messages into batches, pipelines them to the broker, and tells each caller when
//! its message is durable. The design is documented on [`Publisher`].

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

use bytes::Bytes;
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use sealpost_protocol::{seal, ChainHead, ErrorCode, Frame, Offset, SealParams, Topic, VerifiedBatch};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::clock::wall_clock;
use crate::error::{Action, Error, Result};
use crate::keyring::{Freshness, TopicKeys};
use crate::link::{unexpected, Link};
use crate::options::PublisherOptions;
use crate::policies;
use crate::reconnect::Reconnector;
use crate::shared::Shared;

mod batcher;

use batcher::{Batch, Batcher, TooLarge};

/// Where a published message was stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Receipt {
    /// Its offset in the topic's log.
    pub offset: Offset,
    /// Its sequence number in this identity's chain on the topic.
    pub seq: u64,
}

type Waiter = oneshot::Sender<Result<Receipt>>;

/// Most commands the task takes from its queue before it looks at the batcher and the broker's answers
/// again: a bound on how long a flood of publishes can keep it from either.
const MAX_COMMANDS_AT_ONCE: usize = 1024;

enum Command {
    Publish(Bytes, Waiter),
    Flush(oneshot::Sender<()>),
}

/// The publisher's fate, shared by the handle and the task.
#[derive(Default)]
struct State {
    failure: OnceLock<Error>,
}

impl State {
    fn failure(&self) -> Error {
        self.failure.get().cloned().unwrap_or(Error::Closed)
    }
}

/// Publishes messages on one topic, and tells each caller when its message is durable.
///
/// # How it works
///
/// A background task per publisher owns one publish stream. When it opens the stream it asks the broker
/// where this identity's chain on the topic stands (`Head` → `HeadIs`), so the chain continues across
/// restarts. It gathers messages into batches (up to `max_batch` messages, never more than fits in a
/// sealed batch; a batch that is not full goes only while fewer than two batches are in flight, see
/// [`PublisherOptions::linger`]), seals each batch with the identity's signing key and the content key of
/// the topic's current epoch, and sends it as a `Publish` frame without waiting for the previous one to be
/// answered, up to `max_in_flight` batches. The broker answers in order; each `Published` resolves the
/// receipts of its batch's messages.
///
/// # Policies
///
/// The publisher starts only if the topic's current policy lists this identity (principal and signing key)
/// as a publisher and wraps a content key for it. Before sealing a batch it fetches the topic's policies
/// again if it last did `ClientOptions::policy_refresh` ago, or if a batch was refused since: after a
/// rotation it seals under the new epoch, and after a revocation that removes it, its messages fail with
/// [`Error::NotAPublisher`] and the publisher is dead. A policy from the broker that fails a check
/// ([`Error::Policy`]) kills it too; a transient failure to fetch keeps the policies it has. Batches sealed
/// before a rotation are resent unchanged (the broker does not check epochs; subscribers accept the
/// previous epoch for `ClientOptions::rotation_grace`).
///
/// # Reconnection and exactly-once
///
/// Every sealed batch is kept, byte for byte, until the broker acknowledges it. When the stream or the
/// connection is lost, the task reconnects with backoff, opens a new stream, asks `Head` again and resends
/// every unacknowledged batch in order, unchanged. The broker recognises a batch it already stored (the
/// same sealed bytes) and answers with its original offsets, so a message is stored once even if its
/// acknowledgement was lost. Once the retries of one outage are used up, every outstanding message fails
/// with the last error and the publisher is dead: later `publish` calls fail at once.
///
/// # Refusals
///
/// If the broker refuses a batch (say `NOT_AUTHORIZED` or `RATE_LIMITED`), nothing after it on the stream
/// can be stored either (each batch names its predecessor's digest), so that batch's messages and those of
/// every batch sent after it fail with the refusal. The publisher itself lives on: the next message starts
/// a new stream from the broker's chain head (if the broker refuses that too, the publisher is dead).
/// `UNAVAILABLE` is treated as a lost connection.
///
/// Dropping a publisher without [`close`](Self::close) lets its background task finish sending what was
/// published, as long as the runtime runs.
pub struct Publisher {
    topic: Topic,
    commands: mpsc::UnboundedSender<Command>,
    state: Arc<State>,
    task: tokio::task::JoinHandle<()>,
}

impl Publisher {
    pub(crate) async fn start(
        shared: Arc<Shared>,
        topic: Topic,
        options: PublisherOptions,
    ) -> Result<Publisher> {
        let keys = policies::topic_keys_retrying(&shared, &topic, Action::Publish, Freshness::Now).await?;
        // The nonces of every record this publisher seals: a CSPRNG seeded once from the OS rather than a
        // system call per record. XChaCha20 nonces are 192 random bits, so collisions stay negligible.
        let rng = ChaCha20Rng::from_rng(rand::rngs::OsRng)
            .map_err(|e| Error::io("cannot seed the nonce generator from the OS", e.into()))?;
        let (commands, rx) = mpsc::unbounded_channel();
        let state = Arc::new(State::default());
        let mut task = Task {
            batcher: Batcher::new(&topic, options.max_batch, options.linger, &shared.limits),
            max_in_flight: options.max_in_flight.max(1),
            reconnect: Reconnector::new(shared.options.reconnect.clone()),
            shared,
            topic: topic.clone(),
            keys,
            keys_checked: Some(Instant::now()),
            head: ChainHead::GENESIS,
            in_flight: VecDeque::new(),
            link: None,
            commands: rx,
            closing: false,
            enqueued: 0,
            sealed: 0,
            resolved: 0,
            flush_to: 0,
            flushes: Vec::new(),
            state: state.clone(),
            rng,
        };
        // Transient losses are retried like any outage; a refusal or untrusted broker fails at once.
        task.reopen().await?;
        // Checked after the broker accepted `Head`, so that a principal the ACL refuses hears that.
        let identity = &task.shared.identity;
        task.keys.sealing_key(identity.principal(), &identity.public_key())?;
        let task = tokio::spawn(task.run());
        Ok(Publisher { topic, commands, state, task })
    }

    /// The topic this publisher publishes on.
    pub fn topic(&self) -> &Topic {
        &self.topic
    }

    /// Queues `payload` for publishing and returns a future that resolves once the broker has stored it
    /// durably, with where it was stored.
    ///
    /// The message is queued when `publish` is called, not when the future is polled: messages are
    /// published in the order of the calls, and the future may be awaited later, or dropped (the message
    /// is still published). Queued messages are buffered without bound; `max_in_flight` bounds only what
    /// is on the wire, so a producer that must not outrun the broker awaits its receipts.
    pub fn publish(&self, payload: impl Into<Bytes>) -> PublishFuture {
        let (tx, rx) = oneshot::channel();
        let sent = self.commands.send(Command::Publish(payload.into(), tx)).is_ok();
        PublishFuture { receipt: sent.then_some(rx), state: self.state.clone() }
    }

    /// Sends what is waiting for its batch at once, and waits until every message published before this
    /// call is stored or has failed. Fails only if the publisher is dead.
    pub async fn flush(&self) -> Result<()> {
        let (tx, rx) = oneshot::channel();
        self.commands.send(Command::Flush(tx)).map_err(|_| self.state.failure())?;
        rx.await.map_err(|_| self.state.failure())?;
        match self.state.failure.get() {
            Some(e) => Err(e.clone()),
            None => Ok(()),
        }
    }

    /// Sends everything published and waits until all of it is stored or has failed, then closes the
    /// publish stream. Fails only if the publisher died (its last error).
    pub async fn close(self) -> Result<()> {
        let Publisher { commands, state, task, .. } = self;
        drop(commands);
        if task.await.is_err() {
            return Err(Error::Closed);
        }
        match state.failure.get() {
            Some(e) => Err(e.clone()),
            None => Ok(()),
        }
    }
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher").field("topic", &self.topic).finish_non_exhaustive()
    }
}

/// The future [`Publisher::publish`] returns: resolves once the message is stored, or has failed.
#[must_use = "the message is published anyway; await the future to learn whether it was stored"]
pub struct PublishFuture {
    receipt: Option<oneshot::Receiver<Result<Receipt>>>,
    state: Arc<State>,
}

impl Future for PublishFuture {
    type Output = Result<Receipt>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let Some(receipt) = this.receipt.as_mut() else {
            return Poll::Ready(Err(this.state.failure()));
        };
        Pin::new(receipt).poll(cx).map(|r| r.unwrap_or_else(|_| Err(this.state.failure())))
    }
}

impl std::fmt::Debug for PublishFuture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PublishFuture").finish_non_exhaustive()
    }
}

/// A sealed batch sent and not yet acknowledged.
struct InFlight {
    request_id: u64,
    /// The encoded `Publish` frame: resent unchanged after a reconnect.
    frame: Bytes,
    first_seq: u64,
    count: u32,
    waiters: Vec<Waiter>,
}

/// The background task of one publisher.
struct Task {
    shared: Arc<Shared>,
    topic: Topic,
    /// The topic's policies and keys; the current policy's key seals.
    keys: Arc<TopicKeys>,
    /// When `keys` were last brought up to date; `None` to do it before the next batch.
    keys_checked: Option<Instant>,
    /// Where the next sealed batch continues the chain.
    head: ChainHead,
    batcher: Batcher<Waiter>,
    max_in_flight: usize,
    /// Sent batches, oldest first; the broker answers in this order.
    in_flight: VecDeque<InFlight>,
    /// The publish stream; `None` after a loss (reconnect and resend) or a refusal (new stream, new head).
    link: Option<Link>,
    reconnect: Reconnector,
    commands: mpsc::UnboundedReceiver<Command>,
    /// Every handle is gone: send what is queued, then stop.
    closing: bool,
    /// Messages accepted into the batcher, sealed, and resolved (stored or failed), counted in order.
    enqueued: u64,
    sealed: u64,
    resolved: u64,
    /// Send batches without lingering until `sealed` reaches this.
    flush_to: u64,
    /// Flush callers, each waiting for `resolved` to reach its count.
    flushes: Vec<(u64, oneshot::Sender<()>)>,
    state: Arc<State>,
    /// Draws the records' nonces.
    rng: ChaCha20Rng,
}

impl Task {
    async fn run(mut self) {
        if let Err(e) = self.pump().await {
            tracing::warn!(topic = %self.topic, error = %e, "publisher stopped");
            self.fail_everything(e);
        }
        if let Some(link) = &mut self.link {
            link.finish();
        }
    }

    async fn pump(&mut self) -> Result<()> {
        loop {
            if self.closing && self.in_flight.is_empty() && self.batcher.is_empty() {
                return Ok(());
            }
            if self.link.is_none() && !(self.in_flight.is_empty() && self.batcher.is_empty()) {
                self.reopen().await?;
            }
            while self.link.is_some() && self.in_flight.len() < self.max_in_flight {
                let force = self.closing || self.sealed < self.flush_to;
                let in_flight = self.in_flight.len();
                let Some(batch) = self.batcher.next(Instant::now(), force, in_flight) else { break };
                self.send_batch(batch).await?;
            }
            self.resolve_flushes();
            let pending = !(self.in_flight.is_empty() && self.batcher.is_empty());
            if self.link.is_none() && pending {
                // A send just failed: reconnect and resend before anything else.
                continue;
            }
            let connected = self.link.is_some();
            let reading = connected && !self.in_flight.is_empty();
            let deadline = if connected && self.in_flight.len() < self.max_in_flight {
                self.batcher.deadline(self.in_flight.len())
            } else {
                None
            };
            tokio::select! {
                biased;
                reply = read_reply(self.link.as_mut()), if reading => self.on_reply(reply)?,
                command = self.commands.recv(), if !self.closing => {
                    self.on_command(command);
                    // Take what else is queued before deciding what to seal, so that a burst becomes one
                    // batch rather than a batch per message while the pipeline has room.
                    for _ in 1..MAX_COMMANDS_AT_ONCE {
                        match self.commands.try_recv() {
                            Ok(command) => self.on_command(Some(command)),
                            Err(_) => break,
                        }
                    }
                }
                () = tokio::time::sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() => {}
                // Nothing to wait for (cannot happen: closing implies pending work or a return above).
                else => {}
            }
        }
    }

    /// Opens a new stream: at once the first time (the publisher's start, or after a refusal), then with
    /// backoff while the attempts fail for reasons that reconnecting may cure.
    async fn reopen(&mut self) -> Result<()> {
        let (shared, topic, in_flight) = (&self.shared, &self.topic, &self.in_flight);
        let (link, head) = self.reconnect.run(|| open_once(shared, topic, in_flight)).await?;
        if self.in_flight.is_empty() {
            self.head = head;
        } else {
            tracing::debug!(topic = %self.topic, broker_next_seq = head.next_seq, "resuming");
        }
        self.link = Some(link);
        Ok(())
    }

    fn lose(&mut self, cause: Error) {
        tracing::info!(topic = %self.topic, error = %cause, "publish stream lost");
        let age = self.link.take().map(|link| link.age());
        self.reconnect.lost(cause, age);
    }

    /// The stream failed with `e`: a loss if reconnecting may cure it, else the end of the publisher.
    fn absorb(&mut self, e: Error) -> Result<()> {
        if !Reconnector::cures(&e) {
            return Err(e);
        }
        self.lose(e);
        Ok(())
    }

    async fn send_batch(&mut self, batch: Batch<Waiter>) -> Result<()> {
        self.sealed += batch.len() as u64;
        // Sealing fails only if the topic's policies changed so that this identity may no longer publish (or
        // the broker served policies that fail a check); sizes were checked by the batcher. Then the
        // publisher stops, so that messages are always resolved in order.
        let sealed = match self.refresh_keys().await {
            Ok(()) => self.seal(&batch.payloads),
            Err(e) => Err(e),
        };
        let (sealed, request_id, frame) = match sealed {
            Ok(sealed) => sealed,
            Err(e) => {
                let _ = self.state.failure.set(e.clone());
                for w in batch.waiters {
                    let _ = w.send(Err(e.clone()));
                }
                return Err(e);
            }
        };
        self.head = ChainHead::after(&sealed);
        let header = sealed.header();
        self.in_flight.push_back(InFlight {
            request_id,
            frame: frame.clone(),
            first_seq: header.first_seq,
            count: header.count,
            waiters: batch.waiters,
        });
        if let Some(link) = self.link.as_mut() {
            if let Err(e) = link.send_encoded(&frame).await {
                self.absorb(e)?;
            }
        }
        Ok(())
    }

    /// Fetches the topic's policies again if they were last checked `policy_refresh` ago (or a batch was
    /// refused since), so that the publisher moves to a new epoch after a rotation. A transient failure
    /// keeps the policies it has.
    async fn refresh_keys(&mut self) -> Result<()> {
        let every = self.shared.options.policy_refresh;
        if self.keys_checked.is_some_and(|at| at.elapsed() < every) {
            return Ok(());
        }
        let fresh = if self.keys_checked.is_some() { Freshness::Within(every) } else { Freshness::Now };
        self.keys_checked = Some(Instant::now());
        match policies::topic_keys(&self.shared, &self.topic, Action::Publish, fresh).await {
            Ok(keys) => {
                if keys.current_epoch() != self.keys.current_epoch() {
                    let epoch = keys.current_epoch();
                    tracing::info!(topic = %self.topic, ?epoch, "sealing under a new epoch");
                }
                self.keys = keys;
                Ok(())
            }
            Err(e) if Reconnector::cures(&e) => {
                tracing::debug!(topic = %self.topic, error = %e, "could not fetch the topic's policies");
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Seals `payloads` as the next batch of the chain: the batch, its request id and its `Publish` frame.
    fn seal(&mut self, payloads: &[Bytes]) -> Result<(VerifiedBatch, u64, Bytes)> {
        let identity = &self.shared.identity;
        let (epoch, key) = self.keys.sealing_key(identity.principal(), &identity.public_key())?;
        let params = SealParams {
            topic: self.topic.clone(),
            epoch,
            first_seq: self.head.next_seq,
            prev_digest: self.head.prev_digest,
            created_at: wall_clock(),
        };
        let signer = &identity.inner().signer;
        let sealed = seal(signer, key, params, payloads, &self.shared.limits, &mut self.rng)?;
        let request_id = self.shared.request_id();
        let frame = Frame::Publish { request_id, batch: sealed.as_bytes().clone() }.to_vec()?;
        Ok((sealed, request_id, Bytes::from(frame)))
    }

    fn on_command(&mut self, command: Option<Command>) {
        match command {
            None => self.closing = true,
            Some(Command::Publish(payload, waiter)) => {
                match self.batcher.push(payload, waiter, Instant::now()) {
                    Ok(()) => self.enqueued += 1,
                    Err((TooLarge { len, max }, waiter)) => {
                        let _ = waiter.send(Err(Error::MessageTooLarge { len, max }));
                    }
                }
            }
            Some(Command::Flush(done)) => {
                self.flush_to = self.enqueued;
                self.flushes.push((self.enqueued, done));
            }
        }
    }

    fn on_reply(&mut self, reply: Result<Option<Frame>>) -> Result<()> {
        match reply {
            Ok(Some(Frame::Published { request_id, first_offset, count })) => {
                let Some(batch) = self.in_flight.pop_front() else {
                    return Err(Error::violation("an answer to no request"));
                };
                if batch.request_id != request_id || batch.count != count {
                    return Err(Error::violation(format!(
                        "answer for request {request_id} ({count} messages) while request {} ({} messages) \
                         was expected",
                        batch.request_id, batch.count
                    )));
                }
                for ((i, waiter), seq) in batch.waiters.into_iter().enumerate().zip(batch.first_seq..) {
                    let offset = first_offset.saturating_add(i as u64);
                    let _ = waiter.send(Ok(Receipt { offset, seq }));
                }
                self.resolved += u64::from(count);
                self.reconnect.progress();
                Ok(())
            }
            Ok(Some(Frame::Error { request_id, code, message })) => {
                let refusal = Error::refused(Action::Publish, &self.topic, code, &message);
                if code == ErrorCode::UNAVAILABLE {
                    self.lose(refusal);
                    return Ok(());
                }
                match request_id {
                    Some(id) if self.in_flight.front().is_some_and(|b| b.request_id == id) => {
                        tracing::warn!(topic = %self.topic, error = %refusal, "batch refused");
                        // The policy may have changed (a rotation or a revocation): check before the next.
                        self.keys_checked = None;
                        for batch in self.in_flight.drain(..) {
                            self.resolved += u64::from(batch.count);
                            for waiter in batch.waiters {
                                let _ = waiter.send(Err(refusal.clone()));
                            }
                        }
                        // A new stream, and the broker's chain head for the next batch.
                        self.link = None;
                        Ok(())
                    }
                    Some(id) => {
                        Err(Error::violation(format!("an error for request {id}, which is not next")))
                    }
                    None => Err(refusal),
                }
            }
            Ok(Some(other)) => Err(unexpected(&other, "Publish requests")),
            Ok(None) => {
                self.lose(Error::ConnectionLost { reason: "the broker ended the publish stream".into() });
                Ok(())
            }
            Err(e) => self.absorb(e),
        }
    }

    fn resolve_flushes(&mut self) {
        let resolved = self.resolved;
        let (done, waiting) =
            std::mem::take(&mut self.flushes).into_iter().partition(|(upto, _)| *upto <= resolved);
        self.flushes = waiting;
        for (_, done) in done {
            let _ = done.send(());
        }
    }

    /// The publisher is dead: fail every message it holds and every one still queued. Flush callers are
    /// released (dropped) and see the failure.
    fn fail_everything(&mut self, e: Error) {
        let _ = self.state.failure.set(e.clone());
        self.commands.close();
        let mut waiters: Vec<Waiter> = self.in_flight.drain(..).flat_map(|b| b.waiters).collect();
        waiters.extend(self.batcher.drain());
        while let Ok(command) = self.commands.try_recv() {
            if let Command::Publish(_, w) = command {
                waiters.push(w);
            }
        }
        for w in waiters {
            let _ = w.send(Err(e.clone()));
        }
        self.flushes.clear();
    }
}

/// Opens a publish stream: `Head`, then every unacknowledged batch again; the stream and the chain head
/// the broker holds. One attempt.
async fn open_once(
    shared: &Shared,
    topic: &Topic,
    in_flight: &VecDeque<InFlight>,
) -> Result<(Link, ChainHead)> {
    let mut link = shared.open_link().await?;
    let request_id = shared.request_id();
    let publisher = shared.identity.public_key();
    link.send(&Frame::Head { request_id, topic: topic.clone(), publisher }).await?;
    let head = match link.read().await? {
        Some(Frame::HeadIs { request_id: answered, head }) if answered == request_id => head,
        Some(Frame::Error { code, message, .. }) => {
            return Err(Error::refused(Action::Publish, topic, code, &message))
        }
        Some(other) => return Err(unexpected(&other, "a Head request")),
        None => {
            return Err(Error::ConnectionLost {
                reason: "the broker ended the stream before answering".into(),
            })
        }
    };
    for batch in in_flight {
        link.send_encoded(&batch.frame).await?;
    }
    if !in_flight.is_empty() {
        tracing::info!(%topic, batches = in_flight.len(), "resent unacknowledged batches");
    }
    Ok((link, head))
}

/// The next reply on the publish stream; never resolves without one.
async fn read_reply(link: Option<&mut Link>) -> Result<Option<Frame>> {
    match link {
        Some(link) => link.read().await,
        None => std::future::pending().await,
    }
}
