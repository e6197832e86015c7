//! The publisher: seals messages into batches, pipelines them to the broker, and tells each caller when
//! its message is durable. The design is documented on [`Publisher`].
//!
//! Three parts, each below the one before: the handle here ([`Publisher`], [`PublishFuture`]), the async
//! task that owns the publish stream (`task.rs`), and the sans-IO pipeline that makes every decision
//! carrying state (`pipeline.rs`: batching through `batcher.rs`, the window of batches in flight, resending
//! after a reconnect, receipts, refusals, flushes).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use sealpost_protocol::{Headers, Topic};
use tokio::sync::{mpsc, oneshot};

use crate::error::{Error, Result};
use crate::options::PublisherOptions;
use crate::shared::Shared;

mod batcher;
mod chain_state;
mod pipeline;
mod task;
mod unacknowledged;

pub use pipeline::Receipt;
use task::{Command, State};
pub(crate) use unacknowledged::resend;
pub use unacknowledged::Unacknowledged;

/// Publishes messages on one topic, and tells each caller when its message is durable.
///
/// Made by [`Client::publisher`](crate::Client::publisher). [`publish`](Self::publish) queues a message and
/// returns a [`PublishFuture`] that resolves with its [`Receipt`] once the broker has stored it durably;
/// receipts resolve in the order of the `publish` calls.
///
/// ```no_run
/// use futures_util::stream::{FuturesOrdered, StreamExt};
/// use sealpost_client::{Client, Identity, PublisherOptions};
///
/// # async fn example() -> sealpost_client::Result<()> {
/// let client = Client::connect(&Identity::load("alice.toml")?).await?;
/// let options = PublisherOptions { max_in_flight: 16, ..PublisherOptions::default() };
/// let publisher = client.publisher("demo.events".parse()?, options).await?;
///
/// // At most 256 messages awaiting their receipts: beyond that, wait for the oldest one first.
/// let mut pending = FuturesOrdered::new();
/// for i in 0..10_000 {
///     if pending.len() == 256 {
///         if let Some(receipt) = pending.next().await {
///             receipt?;
///         }
///     }
///     pending.push_back(publisher.publish(format!("event {i}")));
/// }
/// while let Some(receipt) = pending.next().await {
///     println!("stored at offset {}", receipt?.offset);
/// }
/// publisher.close().await?;
/// client.close().await;
/// # Ok(())
/// # }
/// ```
///
/// # How it works
///
/// A background task per publisher owns one publish stream, on a chain of its own (a random
/// [`ChainId`](sealpost_protocol::ChainId), or, with the client's state folder, the chain a previous
/// process of the identity acknowledged and no live publisher holds). When it first opens the stream for a
/// continued chain it asks the broker where that chain stands (`HeadOfChain` → `HeadIs`) and fails with
/// [`Error::RolledBack`] if the broker holds less than was acknowledged. It gathers messages into batches
/// (up to [`max_batch`](PublisherOptions::max_batch) messages, never more than fits in a sealed batch; a
/// batch that is not full goes only while fewer than two batches are in flight, see
/// [`PublisherOptions::linger`]), seals each batch with the identity's signing key and the content key of
/// the topic's current epoch, and sends it as a `Publish` frame without waiting for the previous one to be
/// answered, up to [`max_in_flight`](PublisherOptions::max_in_flight) batches. The broker answers in order;
/// each `Published` resolves the receipts of its batch's messages.
///
/// # Backpressure: the window
///
/// `publish` never waits: the message is queued at once, and the queue has no bound.
/// [`PublisherOptions::max_in_flight`] (default 64) is the window: how many batches may be on the wire
/// without an answer. While it is full, queued messages wait, gathering into the next batches, until an
/// answer frees a place. The window bounds what is on the wire, not what is held in memory, so a producer
/// that must not outrun the broker bounds its own unanswered messages, as the example above does: it keeps
/// a number of [`PublishFuture`]s in flight and awaits the oldest before publishing more. Awaiting a
/// `PublishFuture` means waiting for the broker's answer to the message's batch; it may take as long as a
/// reconnection (see below).
///
/// # Policies
///
/// The publisher starts only if the topic's current policy lists this identity (principal and signing key)
/// as a publisher and wraps a content key for it. Before sealing a batch it fetches the topic's policies
/// again if it last did [`ClientOptions::policy_refresh`](crate::ClientOptions::policy_refresh) ago, or if
/// a batch was refused since: after a rotation it seals under the new epoch, and after a revocation that
/// removes it, its messages fail with [`Error::NotAPublisher`] and the publisher is dead. A policy from the
/// broker that fails a check ([`Error::Policy`]) kills it too; a transient failure to fetch keeps the
/// policies it has. Batches sealed before a rotation are resent unchanged (the broker does not check
/// epochs; subscribers accept a batch of an older epoch sealed before the rotation, or within
/// [`ClientOptions::rotation_grace`](crate::ClientOptions::rotation_grace) after it).
///
/// # Reconnection and exactly-once
///
/// Every sealed batch is kept, byte for byte, until the broker acknowledges it. When the stream or the
/// connection is lost ([`Error::ConnectionLost`], [`Error::Unreachable`], or the broker answering
/// `UNAVAILABLE`), the task reconnects, waiting before each attempt as
/// [`ClientOptions::reconnect`](crate::ClientOptions::reconnect) says, opens a new stream, asks the broker
/// where its chain stands again and resends every unacknowledged batch in order, unchanged. The broker
/// recognises a batch it already stored (the same sealed bytes) and answers with its original offsets, so
/// a message is stored once even if its acknowledgement was lost. Meanwhile `publish` goes on queueing,
/// and the futures of unanswered messages stay pending. If the broker's head of the chain is now behind
/// what it had acknowledged, the publisher dies with [`Error::RolledBack`] rather than publish on top of
/// the loss.
///
/// # Refusals
///
/// If the broker refuses a batch (say `NOT_AUTHORIZED` or `RATE_LIMITED`), nothing after it on the stream
/// can be stored either (each batch names its predecessor's digest), so that batch's messages and those of
/// every batch sent after it fail with the refusal ([`Error::Refused`]). The publisher itself lives on: the
/// next message starts a new stream from the broker's chain head (if the broker refuses that too, the
/// publisher is dead).
///
/// # When it dies
///
/// A publisher dies when the retry budget of one outage is spent (with the last error), when the broker
/// refuses its stream, breaks the protocol or rolls its chain back, when the topic's policies no longer let
/// it publish or fail a check, or when [`Client::close`](crate::Client::close) closes the connection
/// ([`Error::Closed`]). Then every message it holds or still has queued fails with that error, later
/// `publish` calls resolve with it at once, and [`flush`](Self::flush) and [`close`](Self::close) return
/// it. To carry on, make a new publisher.
///
/// # Giving up without duplicating
///
/// When it died of an outage ([`Error::is_retryable`]), some of its failed messages may be stored: their
/// batch reached the broker and its answer did not. Publishing them again would store them twice.
/// [`take_unacknowledged`](Self::take_unacknowledged) hands back its sealed batches, byte for byte, and
/// the messages it never sealed; [`Client::resend`](crate::Client::resend) sends the batches again
/// unchanged (the broker answers one it stored already with its original offsets, and stores it once),
/// and the unsealed messages are published again:
///
/// ```no_run
/// # async fn example(client: &sealpost_client::Client, publisher: sealpost_client::Publisher)
/// # -> sealpost_client::Result<()> {
/// use sealpost_client::PublisherOptions;
///
/// if let Some(unacknowledged) = publisher.take_unacknowledged() {
///     // Once the broker is back (`resend` retries within the retry budget):
///     let receipts = client.resend(unacknowledged.topic(), unacknowledged.sealed()).await?;
///     let retry = client.publisher(unacknowledged.topic().clone(), PublisherOptions::default()).await?;
///     for (headers, payload) in unacknowledged.unsent() {
///         retry.publish_with(headers.clone(), payload.clone()).await?;
///     }
///     # let _ = receipts;
/// }
/// # Ok(())
/// # }
/// ```
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
        let (commands, state, task) = task::start(shared, &topic, options).await?;
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
    /// published in the order of the calls, their futures resolve in that order, and a future may be
    /// awaited later, or dropped (the message is still published). `publish` itself never waits: queued
    /// messages are buffered without bound, and [`max_in_flight`](PublisherOptions::max_in_flight) bounds
    /// only what is on the wire, so a producer that must not outrun the broker awaits its receipts,
    /// keeping a bounded number unanswered (see [the window](Self#backpressure-the-window)).
    ///
    /// Awaiting the future waits through reconnections. It resolves with an error if the message is too
    /// large for a sealed batch ([`Error::MessageTooLarge`]: it is not sent; the publisher goes on), if the
    /// broker refused its batch or one sent before it on the same stream ([`Error::Refused`]; the
    /// publisher goes on), or if the publisher died before the message was stored (with the error that
    /// killed it, see [when it dies](Self#when-it-dies)).
    pub fn publish(&self, payload: impl Into<Bytes>) -> PublishFuture {
        self.publish_with(Headers::new(), payload)
    }

    /// Queues `payload` with user `headers`, as [`publish`](Self::publish) does: the headers are sealed
    /// inside the message's record with the payload, so the broker can neither read nor alter them, and a
    /// subscriber finds them in [`Message::headers`](crate::Message::headers).
    ///
    /// ```no_run
    /// # async fn example(publisher: &sealpost_client::Publisher) -> sealpost_client::Result<()> {
    /// use sealpost_client::Headers;
    ///
    /// let headers = Headers::new().with("content-type", "application/json")?.with("trace-id", "4bf92f35")?;
    /// let receipt = publisher.publish_with(headers, r#"{"temp": 21}"#).await?;
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// [`Headers`] checks its rules as it is built (see [`sealpost_protocol::headers`]), so only the size
    /// can fail here: the encoded headers count towards the message's size ([`Error::MessageTooLarge`]).
    /// A batch in which some message has headers is sealed in format version 3, where every message costs
    /// its header section (one byte for a message without headers); a batch without headers costs nothing
    /// more than before.
    pub fn publish_with(&self, headers: Headers, payload: impl Into<Bytes>) -> PublishFuture {
        let (tx, rx) = oneshot::channel();
        let sent = self.commands.send(Command::Publish(headers, payload.into(), tx)).is_ok();
        PublishFuture { receipt: sent.then_some(rx), state: self.state.clone() }
    }

    /// After the publisher died of an outage (its retry budget spent: [`Error::is_retryable`]), what it had
    /// not had acknowledged: its sealed batches in flight, byte for byte, for
    /// [`Client::resend`](crate::Client::resend), and the messages it had not sealed (see
    /// [giving up](Self#giving-up-without-duplicating)). `None` while it lives, after it died of anything
    /// else, when it held nothing, and once taken. Messages published after it died are not in it (their
    /// futures failed at once).
    pub fn take_unacknowledged(&self) -> Option<Unacknowledged> {
        self.state.take_unacknowledged()
    }

    /// Sends what is waiting for its batch at once, and waits until every message published before this
    /// call is stored or has failed. Fails only if the publisher is dead.
    pub async fn flush(&self) -> Result<()> {
        let (tx, rx) = oneshot::channel();
        self.commands.send(Command::Flush(tx)).map_err(|_| self.state.failure())?;
        rx.await.map_err(|_| self.state.failure())?;
        match self.state.failed() {
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
        match state.failed() {
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
