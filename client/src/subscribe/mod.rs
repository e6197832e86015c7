//! The subscription: a stream of verified messages from one topic.
//!
//! # How it works
//!
//! A background task per subscription owns one subscription stream: it sends `Subscribe`, gets
//! `Subscribed`, then receives `Deliver` frames and hands each batch to the reader (see `reader.rs`), which
//! opens it, checks its publisher against the topic policy of its epoch and its place in the publisher's
//! chain, and returns the messages and integrity errors the application sees, in order. Items wait in a
//! small queue; when the application stops reading, the task stops reading too and QUIC flow control holds
//! the broker back.
//!
//! # Policies
//!
//! Before the first batch the subscription fetches the topic's policies (see `keyring.rs`); it fails to
//! start if none of them wraps a content key for this identity. It fetches them again every
//! `ClientOptions::policy_refresh` (before judging a batch), and at once when a batch of a newer epoch
//! than it knows arrives (a rotation), once per epoch, before judging that batch. A policy the broker
//! serves that fails a check (not signed by the pinned authority, a rollback, a fork) is yielded as an
//! [`Error::Policy`] item, and the subscription goes on with the policies it trusted before.
//!
//! # Where chains start
//!
//! A plain subscription from [`StartAt::Earliest`] checks every publisher's chain from its genesis batch,
//! whatever offset the broker claims the log starts at (the broker keeps every batch; an honest one starts
//! at offset 0): a deleted prefix of the log is reported as a gap. A subscription from an offset or from the
//! latest message, and a durable subscription that resumes from the committed offset the broker holds,
//! start each publisher's chain at the first batch they see of it.
//!
//! **Non-claim:** the committed offset of a durable subscription is held by the broker and is not signed. A
//! broker that moves it forward skips what lies between, and the subscription cannot tell that from an
//! acknowledgement it sent: durable subscriptions do not detect a deleted or withheld range before the
//! offset they resume from (a durable subscription starting from `Earliest` at offset 0 does).
//!
//! # Reconnection
//!
//! The reader remembers the next offset it expects. After a loss the task reconnects with backoff and
//! subscribes again from that offset (a durable subscription resumes from its committed offset, which may
//! be older: what was already yielded is dropped), so every message is yielded once and in order, and the
//! chain verifier carries on across the gap in connections. It then sends the latest acknowledgement
//! again. Once the retries of one outage are used up, the stream yields the last error and ends.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures_util::Stream;
use sealpost_protocol::{ErrorCode, Frame, Offset, StartAt, SubscriptionId, Topic};
use tokio::sync::{mpsc, oneshot, watch};

use crate::backoff::{Backoff, STABLE_AFTER};
use crate::clock::wall_clock;
use crate::error::{Action, Error, Result};
use crate::keyring::Freshness;
use crate::link::{unexpected, Link};
use crate::message::Message;
use crate::options::SubscribeOptions;
use crate::policies;
use crate::shared::Shared;

mod reader;

use reader::{start_point, Delivery, Reader};

/// How long closing waits for the broker to end its side of the stream.
const CLOSE_WAIT: Duration = Duration::from_secs(2);

/// Delivered batches (as item lists) queued between the task and the application.
const QUEUE: usize = 4;

type Items = Vec<Result<Message>>;

/// A stream of messages from one topic: `Ok` for each verified message, in offset order and once each,
/// `Err` for each batch that failed a check, and [`Error::DataLost`] for each range of stored messages the
/// broker reports lost (in offset order, where the messages would have been).
///
/// After an item whose error [`is_integrity`](Error::is_integrity), the subscription goes on; after any
/// other error (the broker refused, or stayed unreachable through every retry) it ends.
///
/// # Reconnection
///
/// The subscription remembers the next offset it expects. After a loss it reconnects with backoff and
/// subscribes again from that offset (a durable subscription resumes from its committed offset, which may
/// be older: what was already yielded is dropped), so every message is yielded once and in order, and
/// publisher chains are checked across the reconnection. It then sends the latest acknowledgement again.
///
/// Dropping it ends the subscription in the background; [`close`](Self::close) does the same and waits.
pub struct Subscription {
    topic: Topic,
    items: mpsc::Receiver<Items>,
    buffered: VecDeque<Result<Message>>,
    acks: watch::Sender<Offset>,
    close: oneshot::Sender<Done>,
    durable: bool,
}

impl Subscription {
    pub(crate) async fn start(
        shared: Arc<Shared>,
        topic: Topic,
        options: SubscribeOptions,
    ) -> Result<Subscription> {
        // Transient losses are retried like any outage; a refusal or untrusted broker fails at once.
        let mut backoff = Backoff::new(shared.options.reconnect.clone());
        let (link, subscription, start_offset) = loop {
            match subscribe_once(&shared, &topic, options.from, options.durable.clone()).await {
                Ok(subscribed) => break subscribed,
                Err(e) if e.is_retryable() => backoff.wait(e).await?,
                Err(e) => return Err(e),
            }
        };
        // Fetched after the broker accepted the subscription, so that a principal the ACL refuses hears
        // that, rather than about keys it should not have anyway.
        let keys = policies::topic_keys_retrying(&shared, &topic, Action::Subscribe, Freshness::Now).await?;
        keys.check_readable()?;
        let (start, next_offset) = start_point(options.from, options.durable.is_some(), start_offset);
        tracing::debug!(%topic, subscription, %start_offset, ?start, "subscribed");
        let durable = options.durable.is_some();
        let (items_tx, items) = mpsc::channel(QUEUE);
        let (acks, acks_rx) = watch::channel(Offset::ZERO);
        let (close, close_rx) = oneshot::channel();
        let task = Task {
            reader: Reader::new(
                topic.clone(),
                keys,
                start,
                next_offset,
                shared.options.rotation_grace,
                shared.limits,
            ),
            keys_checked: Instant::now(),
            backoff,
            shared,
            topic: topic.clone(),
            durable: options.durable,
            link: Some(link),
            subscription,
            last_loss: None,
            items: items_tx,
            acks: acks_rx,
            acked: Offset::ZERO,
        };
        tokio::spawn(task.run(close_rx));
        Ok(Subscription { topic, items, buffered: VecDeque::new(), acks, close, durable })
    }

    /// The topic subscribed to.
    pub fn topic(&self) -> &Topic {
        &self.topic
    }

    /// Acknowledges `message` and every message before it: for a durable subscription, the broker resumes
    /// after it next time. Acknowledgements are sent in the background, latest first (an older one than
    /// already sent is ignored); [`close`](Self::close) sends the last one before it returns.
    pub fn ack(&self, message: &Message) -> Result<()> {
        self.ack_offset(message.offset.saturating_add(1))
    }

    /// Acknowledges every message below `next_offset`.
    pub fn ack_offset(&self, next_offset: Offset) -> Result<()> {
        if self.acks.is_closed() {
            return Err(Error::Closed);
        }
        self.acks.send_if_modified(|acked| {
            let newer = next_offset > *acked;
            if newer {
                *acked = next_offset;
            }
            newer
        });
        Ok(())
    }

    /// Ends the subscription: sends the latest acknowledgement and `Unsubscribe`, then waits (up to 2 s) for
    /// the broker to end the stream, which it does after it has read them.
    ///
    /// For a durable subscription whose stream turns out to be lost, it reconnects (with backoff) to commit
    /// the last acknowledgement, and fails if it cannot: the broker would then resume from an older offset.
    pub async fn close(self) -> Result<()> {
        let Subscription { mut items, buffered, acks, close, durable, .. } = self;
        let must_commit = durable && *acks.borrow() > Offset::ZERO;
        // If the task failed before it was asked, its error is among the items; it matters only if there
        // was something to commit.
        let mut failure = fatal(buffered);
        let (done, mut closed) = oneshot::channel();
        let _ = close.send(done);
        let mut unanswered = false;
        // Keep reading what the task sends, so that it never waits for room in the queue, until it answers
        // or ends.
        loop {
            tokio::select! {
                biased;
                answer = &mut closed, if !unanswered => match answer {
                    Ok(result) => return result,
                    Err(_) => unanswered = true,
                },
                queued = items.recv() => match queued {
                    Some(queued) => failure = failure.or_else(|| fatal(queued)),
                    None => break,
                },
            }
        }
        if let Ok(result) = closed.try_recv() {
            return result;
        }
        match failure {
            Some(e) if must_commit => Err(e),
            _ => Ok(()),
        }
    }
}

/// The error that ended a subscription, if it is among `items`.
fn fatal(items: impl IntoIterator<Item = Result<Message>>) -> Option<Error> {
    items.into_iter().filter_map(Result::err).find(|e| !e.is_integrity())
}

impl Stream for Subscription {
    type Item = Result<Message>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            if let Some(item) = this.buffered.pop_front() {
                return Poll::Ready(Some(item));
            }
            match this.items.poll_recv(cx) {
                Poll::Ready(Some(items)) => this.buffered.extend(items),
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription").field("topic", &self.topic).finish_non_exhaustive()
    }
}

/// Opens a subscription stream: `Subscribe`, then `Subscribed`. One attempt.
async fn subscribe_once(
    shared: &Arc<Shared>,
    topic: &Topic,
    from: StartAt,
    durable: Option<String>,
) -> Result<(Link, SubscriptionId, Offset)> {
    let mut link = shared.open_link().await?;
    let request_id = shared.request_id();
    link.send(&Frame::Subscribe { request_id, topic: topic.clone(), from, durable }).await?;
    match link.read().await? {
        Some(Frame::Subscribed { request_id: answered, subscription, start_offset })
            if answered == request_id =>
        {
            Ok((link, subscription, start_offset))
        }
        Some(Frame::Error { code, message, .. }) => {
            Err(Error::refused(Action::Subscribe, topic, code, &message))
        }
        Some(other) => Err(unexpected(&other, "a Subscribe request")),
        None => Err(Error::ConnectionLost { reason: "the broker ended the stream before answering".into() }),
    }
}

/// What the task does after a frame.
enum Flow {
    Continue,
    /// The application dropped or closed the subscription.
    Stop,
}

/// The background task of one subscription.
struct Task {
    shared: Arc<Shared>,
    topic: Topic,
    durable: Option<String>,
    reader: Reader,
    /// When the reader's policies were last brought up to date.
    keys_checked: Instant,
    /// The subscription stream; `None` after a loss.
    link: Option<Link>,
    subscription: SubscriptionId,
    last_loss: Option<Error>,
    backoff: Backoff,
    items: mpsc::Sender<Items>,
    acks: watch::Receiver<Offset>,
    /// The acknowledgement last sent on the current stream.
    acked: Offset,
}

/// Answers a [`Subscription::close`] with the outcome of closing.
type Done = oneshot::Sender<Result<()>>;
/// Where the task learns that the application closed (a `Done` to answer) or dropped the subscription.
type Closer = oneshot::Receiver<Done>;

impl Task {
    async fn run(mut self, mut close: Closer) {
        match self.pump(&mut close).await {
            Ok(done) => {
                let result = self.shutdown().await;
                if let Err(e) = &result {
                    tracing::warn!(topic = %self.topic, error = %e, "could not commit the last acknowledgement");
                }
                if let Some(done) = done {
                    let _ = done.send(result);
                }
            }
            Err(e) => {
                tracing::warn!(topic = %self.topic, error = %e, "subscription ended");
                // The application hears of it from close() if it is closing, else as the last item (which
                // close() also reads).
                match close.try_recv() {
                    Ok(done) => {
                        let _ = done.send(if self.must_commit() { Err(e) } else { Ok(()) });
                    }
                    Err(_) => {
                        let _ = self.items.send(vec![Err(e)]).await;
                    }
                }
            }
        }
    }

    /// Runs until the application goes away (`Ok`, with the closer to answer if it asked) or a fatal error.
    async fn pump(&mut self, close: &mut Closer) -> Result<Option<Done>> {
        let mut acks_open = true;
        loop {
            if self.link.is_none() {
                tokio::select! {
                    biased;
                    asked = &mut *close => return Ok(asked.ok()),
                    subscribed = self.resubscribe() => subscribed?,
                }
            }
            let Some(link) = self.link.as_mut() else { continue };
            let flow = tokio::select! {
                biased;
                asked = &mut *close => return Ok(asked.ok()),
                changed = self.acks.changed(), if acks_open => {
                    acks_open = changed.is_ok();
                    self.send_ack().await?;
                    Flow::Continue
                }
                frame = link.read() => self.on_frame(frame).await?,
            };
            if let Flow::Stop = flow {
                return Ok(close.try_recv().ok());
            }
        }
    }

    /// Whether closing must commit an acknowledgement (a durable subscription that acknowledged something).
    fn must_commit(&self) -> bool {
        self.durable.is_some() && *self.acks.borrow() > Offset::ZERO
    }

    async fn on_frame(&mut self, frame: Result<Option<Frame>>) -> Result<Flow> {
        match frame {
            Ok(Some(Frame::Deliver { subscription, offset, batch })) if subscription == self.subscription => {
                self.backoff.reset();
                let mut items = self.refresh_keys().await?;
                loop {
                    match self.reader.deliver(offset, batch.clone(), wall_clock()) {
                        Delivery::Items(judged) => {
                            items.extend(judged);
                            break;
                        }
                        Delivery::Refetch(epoch) => {
                            let fresh = Freshness::Epoch(epoch);
                            match policies::topic_keys(&self.shared, &self.topic, Action::Subscribe, fresh)
                                .await
                            {
                                Ok(keys) => self.reader.fetched(epoch, Some(keys)),
                                // The batch comes again after resubscribing: the reader did not move.
                                Err(e) if e.is_retryable() => {
                                    self.lose(e);
                                    break;
                                }
                                Err(e @ Error::Policy { .. }) => {
                                    items.push(Err(e));
                                    self.reader.fetched(epoch, None);
                                }
                                Err(e) => return Err(e),
                            }
                            self.keys_checked = Instant::now();
                        }
                    }
                }
                if !items.is_empty() && self.items.send(items).await.is_err() {
                    return Ok(Flow::Stop);
                }
            }
            Ok(Some(Frame::Deliver { subscription, .. })) => {
                tracing::debug!(subscription, "ignoring a delivery for another subscription");
            }
            Ok(Some(Frame::Lost { subscription, offset, count, batch, reason }))
                if subscription == self.subscription =>
            {
                self.backoff.reset();
                let items = self.reader.lost(offset, count, batch, reason);
                if !items.is_empty() && self.items.send(items).await.is_err() {
                    return Ok(Flow::Stop);
                }
            }
            Ok(Some(Frame::Lost { subscription, .. })) => {
                tracing::debug!(subscription, "ignoring a loss for another subscription");
            }
            Ok(Some(Frame::Error { code, message, .. })) => {
                let refusal = Error::refused(Action::Subscribe, &self.topic, code, &message);
                if code != ErrorCode::UNAVAILABLE {
                    return Err(refusal);
                }
                self.lose(refusal);
            }
            Ok(Some(other)) => return Err(unexpected(&other, "a subscription")),
            Ok(None) => {
                self.lose(Error::ConnectionLost { reason: "the broker ended the subscription stream".into() })
            }
            Err(e) if e.is_retryable() => self.lose(e),
            Err(e) => return Err(e),
        }
        Ok(Flow::Continue)
    }

    /// Brings the reader's policies up to date if they were last checked `policy_refresh` ago (from the
    /// client's shared book if another task fetched them meanwhile). A transient failure leaves the reader
    /// with the policies it has; a policy that fails a check is returned as an item to yield.
    async fn refresh_keys(&mut self) -> Result<Vec<Result<Message>>> {
        let every = self.shared.options.policy_refresh;
        if self.keys_checked.elapsed() < every {
            return Ok(Vec::new());
        }
        self.keys_checked = Instant::now();
        match policies::topic_keys(&self.shared, &self.topic, Action::Subscribe, Freshness::Within(every))
            .await
        {
            Ok(keys) => {
                self.reader.set_keys(keys);
                Ok(Vec::new())
            }
            Err(e) if e.is_retryable() => {
                tracing::debug!(topic = %self.topic, error = %e, "could not fetch the topic's policies");
                Ok(Vec::new())
            }
            Err(e @ Error::Policy { .. }) => Ok(vec![Err(e)]),
            Err(e) => Err(e),
        }
    }

    /// Sends the latest acknowledgement if it is newer than the last one sent on this stream.
    async fn send_ack(&mut self) -> Result<()> {
        let next_offset = *self.acks.borrow_and_update();
        let Some(link) = self.link.as_mut() else { return Ok(()) };
        if next_offset <= self.acked {
            return Ok(());
        }
        match link.send(&Frame::Ack { subscription: self.subscription, next_offset }).await {
            Ok(()) => {
                self.acked = next_offset;
                Ok(())
            }
            Err(e) if e.is_retryable() => {
                self.lose(e);
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    fn lose(&mut self, cause: Error) {
        tracing::info!(topic = %self.topic, error = %cause, "subscription stream lost");
        if self.link.as_ref().is_some_and(|l| l.age() >= STABLE_AFTER) {
            self.backoff.reset();
        }
        self.link = None;
        self.last_loss = Some(cause);
    }

    /// Subscribes again from the next expected offset, with backoff.
    async fn resubscribe(&mut self) -> Result<()> {
        loop {
            // Kept until a subscription succeeds: a close may interrupt this loop and need the cause.
            let cause = self
                .last_loss
                .clone()
                .unwrap_or_else(|| Error::ConnectionLost { reason: "subscription stream closed".into() });
            self.backoff.wait(cause).await?;
            let from = StartAt::Offset(self.reader.next_offset());
            match subscribe_once(&self.shared, &self.topic, from, self.durable.clone()).await {
                Ok((link, subscription, start_offset)) => {
                    tracing::info!(topic = %self.topic, subscription, %start_offset, "subscribed again");
                    self.last_loss = None;
                    self.link = Some(link);
                    self.subscription = subscription;
                    self.acked = Offset::ZERO;
                    return self.send_ack().await;
                }
                Err(e) if e.is_retryable() => self.last_loss = Some(e),
                Err(e) => return Err(e),
            }
        }
    }

    /// Sends the last acknowledgement and `Unsubscribe`, ends our side, and waits (bounded) for the broker
    /// to end its side, which tells that it has read them. If the stream turns out to be lost and the
    /// subscription is durable with an acknowledgement to commit, subscribes again (with backoff) to send
    /// it, once; fails if that is impossible.
    async fn shutdown(&mut self) -> Result<()> {
        let must_commit = self.must_commit();
        for _ in 0..2 {
            if self.link.is_none() {
                if !must_commit {
                    return Ok(());
                }
                self.resubscribe().await?;
            }
            self.send_ack().await?;
            let subscription = self.subscription;
            let Some(link) = self.link.as_mut() else { continue };
            if let Err(e) = link.send(&Frame::Unsubscribe { subscription }).await {
                self.lose(e);
                continue;
            }
            link.finish();
            let drain = async {
                loop {
                    match link.read().await {
                        Ok(Some(_)) => {}
                        Ok(None) => return Ok(()),
                        Err(e) => return Err(e),
                    }
                }
            };
            match tokio::time::timeout(CLOSE_WAIT, drain).await {
                Ok(Ok(())) => return Ok(()),
                Ok(Err(e)) => self.lose(e),
                Err(_) => {
                    tracing::debug!(topic = %self.topic, "the broker did not end the subscription stream in time");
                    return Ok(());
                }
            }
        }
        match self.last_loss.take() {
            Some(e) if must_commit => Err(e),
            _ => Ok(()),
        }
    }
}
