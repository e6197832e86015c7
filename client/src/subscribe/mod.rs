//! The subscription: a stream of verified messages from one topic.
//!
//! # How it works
//!
//! A background task per subscription (`task.rs`) owns one subscription stream: it sends `Subscribe`, gets
//! `Subscribed`, then receives `Deliver` frames and hands each batch to the reader (`reader.rs`), which
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
//! A plain subscription from [`StartAt::Earliest`](sealpost_protocol::StartAt::Earliest) checks every publisher's chain from its genesis batch,
//! whatever offset the broker claims the log starts at (the broker keeps every batch; an honest one starts
//! at offset 0): a deleted prefix of the log is reported as a gap. A subscription from an offset or from the
//! latest message start each publisher's chain at the first batch they see of it.
//!
//! A durable subscription resumes from the committed offset the broker holds, which is not signed: a broker
//! that moves it forward skips what lies between. With the client's state folder, the chain heads the
//! subscription verified up to each offset it acknowledges are written before the acknowledgement is sent,
//! and seed its chains when it resumes at that offset or later (`durable_state.rs`): what the broker skipped
//! is a gap. Without one (or when the broker resumes it before its last acknowledgement), its chains start
//! at the first batch seen, and such a range goes unreported.
//!
//! # Reconnection
//!
//! The reader remembers the next offset it expects. After a loss the task reconnects with backoff (see
//! `reconnect.rs`) and subscribes again from that offset (a durable subscription resumes from its committed
//! offset, which may be older: what was already yielded is dropped), so every message is yielded once and
//! in order, and the chain verifier carries on across the gap in connections. It then sends the latest acknowledgement
//! again. Once the retry budget of one outage is spent, the stream yields the last error and ends.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::Stream;
use sealpost_protocol::{Offset, Topic};
use tokio::sync::{mpsc, oneshot, watch};

use crate::error::{Error, Result};
use crate::message::Message;
use crate::options::SubscribeOptions;
use crate::shared::Shared;

mod durable_state;
mod reader;
mod task;

use task::{Ack, Channels, Done, Items};

/// A stream of verified messages from one topic, and of the integrity events met on the way.
///
/// Made by [`Client::subscribe`](crate::Client::subscribe); read it with
/// [`StreamExt::next`](futures_util::StreamExt::next). Its items:
///
/// - `Ok(`[`Message`]`)` for each verified message, once each, in offset order.
/// - An error item for each integrity or loss event, after which the subscription goes on: a batch that
///   failed a check ([`Error::Integrity`]: nothing of the batch is yielded, except after a
///   [`Gap`](crate::ProtocolError::Gap), which its messages follow; [`Error::UntrustedPublisher`]), a
///   topic policy the broker served that failed a check ([`Error::Policy`]: the subscription goes on with
///   the policies it trusted before), stored messages the broker reports lost ([`Error::DataLost`]) or
///   removed by retention ([`Error::Retired`]), and a chain the broker rolled back behind what this
///   subscription had verified ([`Error::RolledBack`], found when it subscribes again after a loss, or
///   when a durable subscription resumes in a new process with the state folder). All but
///   `RolledBack` are those whose [`is_integrity`](Error::is_integrity) is true.
/// - Any other error is the last item: the subscription has ended, and the stream ends after it. It is
///   final: a refusal ([`Error::Refused`], for example `NOT_AUTHORIZED` once the ACL or a revocation no
///   longer lets this identity read the topic), an outage that outlasted its retry budget (its last
///   [`Error::ConnectionLost`] or [`Error::Unreachable`]), a certificate the broker no longer accepts, a
///   broken protocol ([`Error::ProtocolViolation`]), a durable subscription's state folder file that
///   cannot be written ([`Error::Io`]), or [`Error::Closed`] after
///   [`Client::close`](crate::Client::close). To carry on, subscribe again.
///
/// ```no_run
/// use futures_util::StreamExt;
/// use sealpost_client::{Client, Error, Identity, ProtocolError, StartAt, SubscribeOptions};
///
/// # async fn example() -> sealpost_client::Result<()> {
/// let client = Client::connect(&Identity::load("bob.toml")?).await?;
/// // `shared: true` would make this a consumer group's member.
/// let options = SubscribeOptions { from: StartAt::Earliest, durable: Some("billing".into()), shared: false };
/// let mut subscription = client.subscribe("demo.events".parse()?, options).await?;
/// while let Some(item) = subscription.next().await {
///     match item {
///         Ok(message) => {
///             let (len, from) = (message.payload.len(), &message.publisher);
///             println!("{len} bytes from {from} at offset {}", message.offset);
///             subscription.ack(&message)?; // once it is processed
///         }
///         Err(Error::Integrity { offset, check: ProtocolError::Gap { expected, got }, .. }) => {
///             // Batches before this one were withheld or deleted; this batch's messages follow.
///             eprintln!("gap before offset {offset}: sequence {expected} expected, {got} came");
///         }
///         // A batch or a policy that failed a check, messages lost or retired: the stream goes on.
///         Err(e) if e.is_integrity() => eprintln!("{e}"),
///         Err(e @ Error::RolledBack { .. }) => eprintln!("{e}"),
///         // The subscription has ended.
///         Err(e) => return Err(e),
///     }
/// }
/// subscription.close().await?;
/// client.close().await;
/// # Ok(())
/// # }
/// ```
///
/// # Acknowledgements
///
/// [`ack`](Self::ack) each message once it is processed. For a durable subscription
/// ([`SubscribeOptions::durable`]) the broker commits the acknowledged offset and resumes there, in this
/// process after a reconnection or in the next one; delivery is at least once (see [`ack`](Self::ack)).
/// [`close`](Self::close) sends the last acknowledgement before it returns.
///
/// # Shared subscriptions (consumer groups)
///
/// With [`SubscribeOptions::shared`], the subscribers of a durable name share its messages: the broker
/// gives each member whole publisher chains, so each member still verifies what it is yielded end to end.
/// When the group's membership changes (a member joins, leaves or dies), a member may be given chains
/// another held: it is then given their unacknowledged messages (at offsets below those it yielded:
/// offsets only grow between such changes), and may be given again messages it was given before and
/// had not acknowledged. Its chains' checks start over there, as on a new subscription. Acknowledge with
/// [`ack`](Self::ack), which knows which of these streams a message came from; the broker commits the
/// group's position (below it, every message was acknowledged by the member it went to) and a group
/// formed again resumes there. Closing a member gives its chains to the others at once; a member that
/// dies is noticed when its connection times out, and one that stops acknowledging (or reading) is ended
/// by the broker after its ack wait (`limits.shared_ack_wait_ms`, 60 s by default) and joins again.
///
/// # Backpressure
///
/// Verified items wait in a small queue (a few delivered batches). While the application does not read
/// them, the subscription's background task stops reading from the broker, and QUIC flow control holds the
/// broker back: what waits is bounded by that queue and QUIC's receive window.
///
/// # Reconnection
///
/// The subscription remembers the next offset it expects. After a loss ([`Error::ConnectionLost`],
/// [`Error::Unreachable`], or the broker answering `UNAVAILABLE`) it reconnects, waiting before each
/// attempt as [`ClientOptions::reconnect`](crate::ClientOptions::reconnect) says, and subscribes again
/// from that offset (a durable subscription resumes from its committed offset, which may be older: what
/// was already yielded is dropped), so every message is yielded once and in order, and publisher chains
/// are checked across the reconnection. It asks the broker where each chain it verified stands (a chain
/// behind is an [`Error::RolledBack`] item), and sends the latest acknowledgement again. Nothing is
/// yielded while it reconnects; once the retry budget of one outage is spent, the last error is its last
/// item.
///
/// Dropping it ends the subscription in the background; [`close`](Self::close) does the same and waits.
pub struct Subscription {
    topic: Topic,
    items: mpsc::Receiver<Items>,
    buffered: VecDeque<Result<Message>>,
    acks: watch::Sender<Ack>,
    close: oneshot::Sender<Done>,
    /// Whether closing must commit the last acknowledgement (a durable subscription, not shared).
    durable: bool,
    /// The stream generation of the last message yielded: what [`ack_offset`](Self::ack_offset) counts in.
    generation: u64,
}

impl Subscription {
    pub(crate) async fn start(
        shared: Arc<Shared>,
        topic: Topic,
        options: SubscribeOptions,
    ) -> Result<Subscription> {
        let durable = options.durable.is_some() && !options.shared;
        let Channels { items, acks, close } = task::start(shared, &topic, options).await?;
        Ok(Subscription { topic, items, buffered: VecDeque::new(), acks, close, durable, generation: 0 })
    }

    /// The topic subscribed to.
    pub fn topic(&self) -> &Topic {
        &self.topic
    }

    /// Acknowledges `message` and every message yielded before it: for a durable subscription, the broker
    /// resumes after it next time. Acknowledgements are sent in the background, latest first (an older one than
    /// already sent is ignored); [`close`](Self::close) sends the last one before it returns.
    ///
    /// Acking every message is cheap: acks are coalesced, the newest winning, here (only the latest not
    /// yet sent is kept) and in the broker (which commits the newest it received with its next group
    /// commit, one commit of this subscription at a time). Delivery is **at least once**: after a crash the
    /// subscription resumes after the last ack the broker committed, so messages acked in about the last
    /// group commit, and any received but not acked, are delivered again. Ack a message once it is
    /// processed.
    pub fn ack(&self, message: &Message) -> Result<()> {
        self.ack_at((message.generation, message.offset.saturating_add(1)))
    }

    /// Acknowledges every message below `next_offset`. On a shared subscription, offsets go back when
    /// the group gives this member messages to read again: this acknowledges the messages yielded so far
    /// below `next_offset` since the last such change; prefer [`ack`](Self::ack), which knows where each
    /// message was delivered.
    pub fn ack_offset(&self, next_offset: Offset) -> Result<()> {
        self.ack_at((self.generation, next_offset))
    }

    fn ack_at(&self, ack: Ack) -> Result<()> {
        if self.acks.is_closed() {
            return Err(Error::Closed);
        }
        self.acks.send_if_modified(|acked| {
            let newer = ack > *acked;
            if newer {
                *acked = ack;
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
        let must_commit = durable && acks.borrow().1 > Offset::ZERO;
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
    // A `RolledBack` item is reported and the subscription goes on: it ends nothing.
    items
        .into_iter()
        .filter_map(Result::err)
        .find(|e| !e.is_integrity() && !matches!(e, Error::RolledBack { .. }))
}

impl Stream for Subscription {
    type Item = Result<Message>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            if let Some(item) = this.buffered.pop_front() {
                if let Ok(message) = &item {
                    this.generation = message.generation;
                }
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

#[cfg(test)]
mod tests {
    use sealpost_protocol::ChainId;

    use super::*;

    #[test]
    fn integrity_events_and_rolled_back_chains_end_nothing_other_errors_do() {
        let topic: Topic = "demo.chat".parse().unwrap();
        let rolled_back = Error::RolledBack { topic, chain: ChainId([1; 16]), acknowledged: 4, broker: 2 };
        let lost = Error::ConnectionLost { reason: "gone".into() };
        assert!(fatal([Err(rolled_back.clone())]).is_none(), "reported, and the subscription goes on");
        let found = fatal([Err(rolled_back), Err(lost)]);
        assert!(matches!(found, Some(Error::ConnectionLost { .. })), "{found:?}");
    }
}
