//! The background task of one publisher: the async shell around its [`Pipeline`].
//!
//! It owns the publish stream and what the pipeline cannot do without I/O: it takes the application's
//! commands, opens a stream (`Head` or, for a chain continued from the state folder, `HeadOfChain` →
//! `HeadIs`) and resends what the pipeline says, seals the batches the pipeline hands out (with the
//! identity's signing key, the content key of the topic's current epoch, the wall clock and the
//! publisher's nonce generator, after bringing the topic's policies up to date), sends them, feeds the
//! broker's answers back, and hands each acknowledged chain head to the state folder (`chain_state.rs`). Every decision about which message goes where, and what an
//! answer means, is the pipeline's.
//!
//! It guarantees that messages are resolved in the order they were published, and that once it dies (a
//! refusal of no request, a protocol violation, a policy that no longer lets this identity publish, or an
//! outage that outlasted its retries) every message it holds or that is still queued fails with that error,
//! and later calls fail at once.

use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use bytes::Bytes;
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use sealpost_protocol::{
    seal_with_headers, ChainHead, ChainId, ErrorCode, Frame, Headers, SealParams, Topic, VerifiedBatch,
};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::clock::wall_clock;
use crate::error::{Action, Error, Result};
use crate::head;
use crate::keyring::{Freshness, TopicKeys};
use crate::link::{unexpected, Link};
use crate::options::PublisherOptions;
use crate::policies;
use crate::reconnect::Reconnector;
use crate::shared::Shared;

use super::batcher::{Batch, Batcher};
use super::chain_state::{self, ChainState};
use super::pipeline::{Pipeline, Receipt, Waiter};
use super::Unacknowledged;

/// Where a caller of [`Publisher::publish`](crate::Publisher::publish) learns its message's fate.
pub(crate) type ReceiptSender = oneshot::Sender<Result<Receipt>>;

impl Waiter for ReceiptSender {
    fn resolve(self, outcome: Result<Receipt>) {
        // The caller may have dropped its future: the message is published anyway.
        let _ = self.send(outcome);
    }
}

/// Most commands the task takes from its queue before it looks at the batcher and the broker's answers
/// again: a bound on how long a flood of publishes can keep it from either.
const MAX_COMMANDS_AT_ONCE: usize = 1024;

/// What the handle asks of the task.
pub(crate) enum Command {
    /// A message: its headers (empty for none) and payload.
    Publish(Headers, Bytes, ReceiptSender),
    Flush(oneshot::Sender<()>),
}

/// The publisher's fate, shared by the handle and the task.
#[derive(Default)]
pub(crate) struct State {
    failure: OnceLock<Error>,
    /// What it had not had acknowledged when it gave up after an outage, until taken.
    unacknowledged: Mutex<Option<Unacknowledged>>,
}

impl State {
    /// The error that killed the publisher, or [`Error::Closed`] if it ended without one.
    pub(crate) fn failure(&self) -> Error {
        self.failure.get().cloned().unwrap_or(Error::Closed)
    }

    /// The error that killed the publisher, if it died.
    pub(crate) fn failed(&self) -> Option<&Error> {
        self.failure.get()
    }

    /// What the publisher had not had acknowledged when it gave up after an outage, once.
    pub(crate) fn take_unacknowledged(&self) -> Option<Unacknowledged> {
        self.unacknowledged.lock().unwrap_or_else(PoisonError::into_inner).take()
    }
}

/// Starts a publisher's task on `topic`: fetches the topic's policies, opens the publish stream (retrying
/// transient losses like any outage; a refusal or an untrusted broker fails at once), and checks that the
/// current policy lets this identity publish.
pub(crate) async fn start(
    shared: Arc<Shared>,
    topic: &Topic,
    options: PublisherOptions,
) -> Result<(mpsc::UnboundedSender<Command>, Arc<State>, tokio::task::JoinHandle<()>)> {
    let keys = policies::topic_keys_retrying(&shared, topic, Action::Publish, Freshness::Now).await?;
    // The nonces of every record this publisher seals: a CSPRNG seeded once from the OS rather than a
    // system call per record. XChaCha20 nonces are 192 random bits, so collisions stay negligible.
    let mut rng = ChaCha20Rng::from_rng(rand::rngs::OsRng)
        .map_err(|e| Error::io("cannot seed the nonce generator from the OS", e.into()))?;
    // This publisher instance's own chain: other publishers with the same key, in this process or in
    // others, keep theirs, and the broker and subscribers judge order, gaps and replays per chain. With a
    // state folder, a chain a previous process acknowledged and no live publisher holds is continued.
    let claimed = chain_state::claim(shared.keys.state(), topic, ChainId::random(&mut rng))?;
    let chain = claimed.chain;
    let (commands, rx) = mpsc::unbounded_channel();
    let state = Arc::new(State::default());
    let batcher = Batcher::new(topic, options.max_batch, options.linger, &shared.limits);
    let mut task = Task {
        pipeline: Pipeline::new(batcher, options.max_in_flight),
        reconnect: Reconnector::new(shared.options.reconnect.clone()),
        shared,
        topic: topic.clone(),
        keys,
        keys_checked: Some(Instant::now()),
        link: None,
        commands: rx,
        state: state.clone(),
        rng,
        chain,
        resume: claimed.acknowledged,
        chain_state: claimed.state,
    };
    task.reopen().await?;
    // Checked after the broker accepted `Head`, so that a principal the ACL refuses hears that.
    let identity = &task.shared.identity;
    task.keys.sealing_key(identity.principal(), &identity.public_key())?;
    Ok((commands, state, tokio::spawn(task.run())))
}

/// The background task of one publisher.
struct Task {
    shared: Arc<Shared>,
    topic: Topic,
    pipeline: Pipeline<ReceiptSender, oneshot::Sender<()>>,
    /// The topic's policies and keys; the current policy's key seals.
    keys: Arc<TopicKeys>,
    /// When `keys` were last brought up to date; `None` to do it before the next batch.
    keys_checked: Option<Instant>,
    /// The publish stream; `None` after a loss (reconnect and resend) or a refusal (new stream, new head).
    link: Option<Link>,
    reconnect: Reconnector,
    commands: mpsc::UnboundedReceiver<Command>,
    state: Arc<State>,
    /// Draws the records' nonces.
    rng: ChaCha20Rng,
    /// The chain every batch of this publisher continues, resends included.
    chain: ChainId,
    /// The chain's head as acknowledged to a previous process, until the first stream checked the broker's
    /// head against it.
    resume: Option<ChainHead>,
    /// Where the chain's acknowledged head is persisted (`None`: no state folder).
    chain_state: Option<ChainState>,
}

impl Task {
    async fn run(mut self) {
        let failed = self.pump().await.err();
        if let Some(link) = &mut self.link {
            link.finish();
        }
        if let Some(state) = &self.chain_state {
            state.flush().await;
        }
        if let Some(e) = failed {
            tracing::warn!(topic = %self.topic, error = %e, "publisher stopped");
            self.fail_everything(e);
        }
    }

    async fn pump(&mut self) -> Result<()> {
        loop {
            if self.pipeline.is_done() {
                return Ok(());
            }
            if self.link.is_none() && self.pipeline.has_work() {
                self.reopen().await?;
            }
            while self.link.is_some() {
                let Some(batch) = self.pipeline.next_batch(Instant::now()) else { break };
                self.send_batch(batch).await?;
            }
            for done in self.pipeline.flushed() {
                let _ = done.send(());
            }
            if self.link.is_none() && self.pipeline.has_work() {
                // A send just failed: reconnect and resend before anything else.
                continue;
            }
            let connected = self.link.is_some();
            let reading = connected && self.pipeline.awaits_answers();
            let deadline = if connected { self.pipeline.deadline() } else { None };
            tokio::select! {
                biased;
                reply = read_reply(self.link.as_mut()), if reading => self.on_reply(reply)?,
                command = self.commands.recv(), if !self.pipeline.is_closing() => {
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

    /// Opens a new stream and resends what is in flight: at once the first time (the publisher's start, or
    /// after a refusal), then with backoff while the attempts fail for reasons that reconnecting may cure.
    async fn reopen(&mut self) -> Result<()> {
        let (shared, topic) = (&self.shared, &self.topic);
        let resend: Vec<Bytes> = self.pipeline.to_resend().cloned().collect();
        // Every stream asks the broker where this instance's chain stands (`HeadOfChain`; `Head` for the
        // legacy chain) and checks it against what was acknowledged: the chain continues the last batch the
        // broker stored, which may be one it refused (a failed group's batch stays in the store), or what
        // is in flight, resent as it was. A chain continued from a previous process checks the head
        // against what that process had acknowledged.
        let chain = (self.chain != ChainId::LEGACY).then_some(self.chain);
        let (link, broker_head) = self.reconnect.run(|| open_once(shared, topic, chain, &resend)).await?;
        if !resend.is_empty() {
            tracing::info!(topic = %self.topic, batches = resend.len(), "resent unacknowledged batches");
        }
        match self.resume.take() {
            Some(acknowledged) => {
                let head = head::judge(&self.topic, self.chain, acknowledged, broker_head)?;
                tracing::info!(topic = %self.topic, chain = %self.chain, next_seq = head.next_seq,
                    "continuing this identity's chain");
                self.pipeline.resume(head);
            }
            None => {
                let head = head::judge(&self.topic, self.chain, self.pipeline.acked_head(), broker_head)?;
                self.pipeline.opened(head);
            }
        }
        self.link = Some(link);
        Ok(())
    }

    /// The stream is lost for `cause`: reconnect (after backoff) and resend before anything else.
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

    async fn send_batch(&mut self, batch: Batch<ReceiptSender>) -> Result<()> {
        // Sealing fails only if the topic's policies changed so that this identity may no longer publish (or
        // the broker served policies that fail a check); sizes were checked by the batcher. Then the
        // publisher stops, so that messages are always resolved in order.
        let sealed = match self.refresh_keys().await {
            Ok(()) => self.seal(&batch.payloads, &batch.headers),
            Err(e) => Err(e),
        };
        let (sealed, request_id, frame) = match sealed {
            Ok(sealed) => sealed,
            Err(e) => {
                let _ = self.state.failure.set(e.clone());
                for waiter in batch.waiters {
                    waiter.resolve(Err(e.clone()));
                }
                return Err(e);
            }
        };
        self.pipeline.sent(batch.waiters, &sealed, request_id, frame.clone());
        if let Some(link) = self.link.as_mut() {
            if let Err(e) = link.send_encoded(frame).await {
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

    /// Seals `payloads` with their `headers` as the next batch of the chain: the batch, its request id and
    /// its `Publish` frame.
    fn seal(&mut self, payloads: &[Bytes], headers: &[Headers]) -> Result<(VerifiedBatch, u64, Bytes)> {
        let identity = &self.shared.identity;
        let (epoch, key) = self.keys.sealing_key(identity.principal(), &identity.public_key())?;
        let head = self.pipeline.head();
        let params = SealParams {
            topic: self.topic.clone(),
            epoch,
            chain: self.chain,
            first_seq: head.next_seq,
            prev_digest: head.prev_digest,
            created_at: wall_clock(),
        };
        let signer = &identity.inner().signer;
        let limits = &self.shared.limits;
        let sealed = seal_with_headers(signer, key, params, payloads, headers, limits, &mut self.rng)?;
        let request_id = self.shared.request_id();
        let frame = Frame::Publish { request_id, batch: sealed.as_bytes().clone() }.to_vec()?;
        Ok((sealed, request_id, Bytes::from(frame)))
    }

    fn on_command(&mut self, command: Option<Command>) {
        match command {
            None => self.pipeline.close(),
            Some(Command::Publish(headers, payload, waiter)) => {
                self.pipeline.publish(headers, payload, waiter, Instant::now())
            }
            Some(Command::Flush(done)) => self.pipeline.flush(done),
        }
    }

    fn on_reply(&mut self, reply: Result<Option<Frame>>) -> Result<()> {
        match reply {
            Ok(Some(Frame::Published { request_id, first_offset, count })) => {
                self.pipeline.on_published(request_id, first_offset, count)?;
                if let Some(state) = &self.chain_state {
                    state.acknowledged(self.pipeline.acked_head());
                }
                self.reconnect.progress();
                Ok(())
            }
            Ok(Some(Frame::Error { request_id, code, message })) => {
                let refusal = Error::refused(Action::Publish, &self.topic, code, &message);
                if code == ErrorCode::UNAVAILABLE {
                    self.lose(refusal);
                    return Ok(());
                }
                tracing::warn!(topic = %self.topic, error = %refusal, "batch refused");
                self.pipeline.on_refused(request_id, refusal)?;
                // The policy may have changed (a rotation or a revocation): check before the next batch.
                self.keys_checked = None;
                // A new stream, and the broker's chain head for the next batch.
                self.link = None;
                Ok(())
            }
            Ok(Some(other)) => Err(unexpected(&other, "Publish requests")),
            Ok(None) => {
                self.lose(Error::ConnectionLost { reason: "the broker ended the publish stream".into() });
                Ok(())
            }
            Err(e) => self.absorb(e),
        }
    }

    /// The publisher is dead: fail every message it holds and every one still queued. Flush callers are
    /// released (dropped) and see the failure. After an outage (`e` is retryable) what those messages
    /// were is handed back first ([`Unacknowledged`], with the chain's record in the state folder, so that
    /// no new publisher continues the chain before the sealed batches are resent).
    fn fail_everything(&mut self, e: Error) {
        let _ = self.state.failure.set(e.clone());
        self.commands.close();
        let (mut unanswered, mut waiters) = self.pipeline.take_all();
        while let Ok(command) = self.commands.try_recv() {
            if let Command::Publish(headers, payload, waiter) = command {
                unanswered.unsent.push((headers, payload));
                waiters.push(waiter);
            }
        }
        if e.is_retryable() && !unanswered.is_empty() {
            let handed = Unacknowledged::new(self.topic.clone(), unanswered, self.chain_state.take());
            *self.state.unacknowledged.lock().unwrap_or_else(PoisonError::into_inner) = Some(handed);
        }
        for waiter in waiters {
            waiter.resolve(Err(e.clone()));
        }
    }
}

/// Opens a publish stream: `HeadOfChain` for `chain` (or `Head` for the legacy chain if `None`), then
/// `HeadIs`, then the frames of `resend`, unchanged. Returns the stream and the chain head the broker holds.
/// One attempt.
async fn open_once(
    shared: &Shared,
    topic: &Topic,
    chain: Option<ChainId>,
    resend: &[Bytes],
) -> Result<(Link, ChainHead)> {
    let mut link = shared.open_link().await?;
    let publisher = shared.identity.public_key();
    let head = head::ask(&mut link, shared.request_id(), topic, publisher, chain, Action::Publish).await?;
    for frame in resend {
        link.send_encoded(frame.clone()).await?;
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
