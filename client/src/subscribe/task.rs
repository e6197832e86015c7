//! The background task of one subscription: it owns the subscription stream, feeds each delivered batch to
//! the [`Reader`] with the time and the topic's policies, queues what the reader yields for the
//! application, sends acknowledgements, and subscribes again after a loss.
//!
//! Each time the stream opens it first asks the broker where every chain it holds a head of stands (heads
//! recorded by the subscription's previous process, or verified before a reconnect): a broker that dropped
//! batches it had delivered is an [`Error::RolledBack`] item, even if it never serves that chain again.
//!
//! It guarantees that the reader sees every frame of the stream in order and nothing else touches it, that
//! a batch whose policies must be fetched first is judged only after the fetch (or, if the fetch is lost,
//! delivered again after resubscribing, the reader not having moved), and that closing commits the last
//! acknowledgement of a durable subscription or reports that it could not.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use sealpost_protocol::{
    ChainHead, ChainId, ChainStart, ErrorCode, Frame, Offset, PublicKey, StartAt, SubscriptionId, Topic,
};
use tokio::sync::{mpsc, oneshot, watch};

use crate::error::{Action, Error, Result};
use crate::head;
use crate::keyring::Freshness;
use crate::link::{unexpected, Link};
use crate::message::Message;
use crate::options::SubscribeOptions;
use crate::policies;
use crate::reconnect::Reconnector;
use crate::shared::Shared;

use super::durable_state::{self, Heads};
use super::reader::{start_point, Delivery, Reader};

/// How long closing waits for the broker to end its side of the stream.
const CLOSE_WAIT: Duration = Duration::from_secs(2);

/// Delivered batches (as item lists) queued between the task and the application.
const QUEUE: usize = 4;

/// Chain heads asked at once when a stream opens (each on its own stream).
const HEAD_CHECKS: usize = 8;

/// What the application sees of one frame, in order.
pub(crate) type Items = Vec<Result<Message>>;

/// An acknowledgement: every message yielded before the one at `next_offset` of stream `generation` (the
/// newest is the greatest: a later generation, or a later offset in one).
pub(crate) type Ack = (u64, Offset);

/// Answers a [`Subscription::close`](crate::Subscription::close) with the outcome of closing.
pub(crate) type Done = oneshot::Sender<Result<()>>;
/// Where the task learns that the application closed (a `Done` to answer) or dropped the subscription.
type Closer = oneshot::Receiver<Done>;

/// The application's ends of a running task's channels.
pub(crate) struct Channels {
    /// What the task yields.
    pub(crate) items: mpsc::Receiver<Items>,
    /// The latest acknowledgement, for the task to send.
    pub(crate) acks: watch::Sender<Ack>,
    /// Asks the task to close.
    pub(crate) close: oneshot::Sender<Done>,
}

/// Subscribes to `topic` (retrying transient losses like any outage; a refusal or an untrusted broker
/// fails at once), fetches the topic's policies, and starts the task.
pub(crate) async fn start(shared: Arc<Shared>, topic: &Topic, options: SubscribeOptions) -> Result<Channels> {
    let mut reconnect = Reconnector::new(shared.options.reconnect.clone());
    let (from, durable, group) = (options.from, options.durable, options.shared);
    if group && durable.is_none() {
        return Err(Error::InvalidOptions { detail: "a shared subscription needs a durable name" });
    }
    let subscribed = reconnect.run(|| subscribe_once(&shared, topic, from, durable.clone(), group)).await;
    let (link, subscription, start_offset) = match subscribed {
        Ok(subscribed) => subscribed,
        Err(refused @ Error::Refused { code: ErrorCode::NOT_AUTHORIZED, .. }) => {
            // The broker serves a topic only to subscribers its ACL allows **and** its current policy
            // lists: if the policies can be read, say what the policy lacks (none yet, not this principal
            // as a subscriber, no key for it) rather than only "not authorized".
            if let Ok(keys) =
                policies::topic_keys_retrying(&shared, topic, Action::Subscribe, Freshness::Now).await
            {
                keys.check_subscriber(shared.identity.principal())?;
            }
            return Err(refused);
        }
        Err(e) => return Err(e),
    };
    // Fetched after the broker accepted the subscription, so that a principal the ACL refuses hears that,
    // rather than about keys it should not have anyway.
    let keys = policies::topic_keys_retrying(&shared, topic, Action::Subscribe, Freshness::Now).await?;
    keys.check_readable()?;
    let (start, next_offset) = if group {
        // A member is given chains from wherever they stand: each starts at its first batch seen.
        (ChainStart::FirstSeen, start_offset)
    } else {
        start_point(from, durable.is_some(), start_offset)
    };
    tracing::debug!(%topic, subscription, %start_offset, ?start, "subscribed");
    let (items_tx, items) = mpsc::channel(QUEUE);
    let (acks, acks_rx) = watch::channel((0, Offset::ZERO));
    let (close, close_rx) = oneshot::channel();
    let mut reader =
        Reader::new(topic.clone(), keys, start, next_offset, shared.options.rotation_grace, shared.limits);
    let mut unchecked = Heads::new();
    if let (Some(name), Some(folder), false) = (&durable, shared.keys.state(), group) {
        let seeds = match durable_state::load(folder, topic, name)? {
            Some((recorded, heads)) if start_offset >= recorded => {
                unchecked.clone_from(&heads);
                heads
            }
            Some((recorded, heads)) => {
                // The broker resumes before what was acknowledged: an acknowledgement it never got (or
                // forgot). What it redelivers cannot be checked against heads that lie after it; that the
                // broker still holds them is checked all the same.
                tracing::warn!(%topic, durable = %name, %start_offset, %recorded,
                    "the broker resumes the durable subscription before its last acknowledgement: its chains \
                     start at the first batch seen");
                unchecked = heads;
                Vec::new()
            }
            None => Vec::new(),
        };
        reader.keep_heads(&seeds);
    }
    let task = Task {
        reader,
        keys_checked: Instant::now(),
        reconnect,
        shared,
        topic: topic.clone(),
        durable,
        group,
        generation: 0,
        acks_in: 0,
        link: Some(link),
        subscription,
        items: items_tx,
        acks: acks_rx,
        acked: Offset::ZERO,
        unchecked,
    };
    tokio::spawn(task.run(close_rx));
    Ok(Channels { items, acks, close })
}

/// Opens a subscription stream: `Subscribe`, then `Subscribed`. One attempt.
async fn subscribe_once(
    shared: &Shared,
    topic: &Topic,
    from: StartAt,
    durable: Option<String>,
    group: bool,
) -> Result<(Link, SubscriptionId, Offset)> {
    let mut link = shared.open_link().await?;
    let request_id = shared.request_id();
    let topic_ = topic.clone();
    let request = match durable {
        Some(group_name) if group => {
            Frame::SubscribeShared { request_id, topic: topic_, from, group: group_name }
        }
        durable => Frame::Subscribe { request_id, topic: topic_, from, durable },
    };
    link.send(&request).await?;
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

/// Asks the broker for the head of `publisher`'s `chain` on a stream of its own, and judges it against the
/// `held` one ([`head::judge`]).
async fn check_head(
    shared: Arc<Shared>,
    topic: Topic,
    publisher: PublicKey,
    chain: ChainId,
    held: ChainHead,
) -> (ChainId, Result<ChainHead>) {
    let asked = async {
        let mut link = shared.open_link().await?;
        let named = (chain != ChainId::LEGACY).then_some(chain);
        let broker =
            head::ask(&mut link, shared.request_id(), &topic, publisher, named, Action::Subscribe).await;
        link.finish();
        head::judge(&topic, chain, held, broker?)
    };
    (chain, asked.await)
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
    /// Whether it is a member of a shared durable subscription.
    group: bool,
    /// The stream generation of what is yielded now: bumped by each `Rewind` and each new stream of a
    /// shared subscription ([`Message::generation`]).
    generation: u64,
    /// The generation the broker counts this stream's acks in: one `Rewound` is sent for each generation
    /// it moves up, before the first ack of a later generation.
    acks_in: u64,
    reader: Reader,
    /// When the reader's policies were last brought up to date.
    keys_checked: Instant,
    /// The subscription stream; `None` after a loss.
    link: Option<Link>,
    subscription: SubscriptionId,
    reconnect: Reconnector,
    items: mpsc::Sender<Items>,
    acks: watch::Receiver<Ack>,
    /// The acknowledgement last sent on the current stream, in generation `acks_in`.
    acked: Offset,
    /// Chain heads to check against the broker's before reading the stream ([`Task::check_heads`]).
    unchecked: Heads,
}

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
            if !self.unchecked.is_empty() {
                let items = tokio::select! {
                    biased;
                    asked = &mut *close => return Ok(asked.ok()),
                    items = self.check_heads() => items,
                };
                if !items.is_empty() && self.items.send(items).await.is_err() {
                    return Ok(close.try_recv().ok());
                }
                continue;
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
        // A member's acks count only on its own stream: once that is lost, what it was given goes to the
        // other members anyway.
        self.durable.is_some() && !self.group && self.acks.borrow().1 > Offset::ZERO
    }

    async fn on_frame(&mut self, frame: Result<Option<Frame>>) -> Result<Flow> {
        let items = match frame {
            Ok(Some(Frame::Deliver { subscription, offset, batch })) if subscription == self.subscription => {
                self.reconnect.progress();
                self.on_deliver(offset, batch).await?
            }
            Ok(Some(Frame::Deliver { subscription, .. })) => {
                tracing::debug!(subscription, "ignoring a delivery for another subscription");
                Vec::new()
            }
            Ok(Some(Frame::Lost { subscription, offset, count, batch, reason }))
                if subscription == self.subscription =>
            {
                self.reconnect.progress();
                self.reader.lost(offset, count, batch, reason)
            }
            Ok(Some(Frame::Lost { subscription, .. })) => {
                tracing::debug!(subscription, "ignoring a loss for another subscription");
                Vec::new()
            }
            Ok(Some(Frame::Rewind { subscription, offset }))
                if subscription == self.subscription && self.group =>
            {
                // The group gave this member chains to read back: what follows starts again at `offset`.
                tracing::debug!(topic = %self.topic, %offset, "the group rewound this member");
                self.generation += 1;
                self.reader.rewind(offset);
                Vec::new()
            }
            Ok(Some(Frame::Error { code, message, .. })) => {
                // UNAVAILABLE is a loss like any other; other refusals end the subscription.
                self.absorb(Error::refused(Action::Subscribe, &self.topic, code, &message))?;
                Vec::new()
            }
            Ok(Some(other)) => return Err(unexpected(&other, "a subscription")),
            Ok(None) => {
                self.lose(Error::ConnectionLost {
                    reason: "the broker ended the subscription stream".into(),
                });
                Vec::new()
            }
            Err(e) => {
                self.absorb(e)?;
                Vec::new()
            }
        };
        if !items.is_empty() && self.send_items(items).await.is_err() {
            return Ok(Flow::Stop);
        }
        Ok(Flow::Continue)
    }

    /// What the application sees of the batch delivered at `offset`: the reader's judgement, after the
    /// policies were brought up to date (on schedule, or because the batch is of an epoch newer than the
    /// reader knows).
    async fn on_deliver(&mut self, offset: Offset, batch: Bytes) -> Result<Items> {
        let mut items = self.refresh_keys().await?;
        loop {
            match self.reader.deliver(offset, batch.clone()) {
                Delivery::Items(judged) => {
                    items.extend(judged);
                    return Ok(items);
                }
                Delivery::Refetch(epoch) => {
                    let fresh = Freshness::Epoch(epoch);
                    match policies::topic_keys(&self.shared, &self.topic, Action::Subscribe, fresh).await {
                        Ok(keys) => self.reader.fetched(epoch, Some(keys)),
                        Err(e @ Error::Policy { .. }) => {
                            items.push(Err(e));
                            self.reader.fetched(epoch, None);
                        }
                        // The batch comes again after resubscribing: the reader did not move.
                        Err(e) => {
                            self.absorb(e)?;
                            return Ok(items);
                        }
                    }
                    self.keys_checked = Instant::now();
                }
                Delivery::History(epoch) => {
                    match policies::history_keys(&self.shared, &self.topic, epoch).await {
                        Ok(keys) => self.reader.walked(epoch, Some(keys)),
                        Err(e @ Error::Policy { .. }) => {
                            items.push(Err(e));
                            self.reader.walked(epoch, None);
                        }
                        // The batch comes again after resubscribing: the reader did not move.
                        Err(e) if Reconnector::cures(&e) => {
                            self.lose(e);
                            return Ok(items);
                        }
                        // A broker that refuses the history (one older than `GetPolicyHistory` refuses
                        // the frame): the batch is judged without it, as an integrity item, and the
                        // subscription goes on as it did before older epochs were readable.
                        Err(e) => {
                            tracing::warn!(topic = %self.topic, %epoch, error = %e, "could not read the policy history");
                            self.reader.walked(epoch, None);
                        }
                    }
                }
            }
        }
    }

    /// Brings the reader's policies up to date if they were last checked `policy_refresh` ago (from the
    /// client's shared book if another task fetched them meanwhile). A transient failure leaves the reader
    /// with the policies it has; a policy that fails a check is returned as an item to yield.
    async fn refresh_keys(&mut self) -> Result<Items> {
        let every = self.shared.options.policy_refresh;
        if self.keys_checked.elapsed() < every {
            return Ok(Vec::new());
        }
        self.keys_checked = Instant::now();
        let fresh = Freshness::Within(every);
        match policies::topic_keys(&self.shared, &self.topic, Action::Subscribe, fresh).await {
            Ok(keys) => {
                self.reader.set_keys(keys);
                Ok(Vec::new())
            }
            Err(e) if Reconnector::cures(&e) => {
                tracing::debug!(topic = %self.topic, error = %e, "could not fetch the topic's policies");
                Ok(Vec::new())
            }
            Err(e @ Error::Policy { .. }) => Ok(vec![Err(e)]),
            Err(e) => Err(e),
        }
    }

    /// Asks the broker where each chain in `unchecked` stands, a few at a time: a head behind (or beside)
    /// the one this subscription holds means the broker dropped (or replaced) batches it had delivered, an
    /// [`Error::RolledBack`] item each. A loss keeps them all to ask again on the next stream (and loses
    /// the stream); a refusal (a broker older than `HeadOfChain`, an ACL that lets this principal publish
    /// only) leaves that chain unchecked, logged.
    async fn check_heads(&mut self) -> Items {
        let mut held = std::collections::HashMap::<(PublicKey, ChainId), ChainHead>::new();
        for (publisher, chain, head) in std::mem::take(&mut self.unchecked) {
            let kept = held.entry((publisher, chain)).or_insert(head);
            if head.next_seq > kept.next_seq {
                *kept = head;
            }
        }
        let asks: Vec<_> = held
            .iter()
            .map(|(&(publisher, chain), &head)| {
                check_head(self.shared.clone(), self.topic.clone(), publisher, chain, head)
            })
            .collect();
        let topic = &self.topic;
        let mut answers = futures_util::stream::iter(asks).buffer_unordered(HEAD_CHECKS);
        let mut items = Vec::new();
        let mut lost = None;
        while let Some(answer) = answers.next().await {
            match answer {
                (_, Ok(_)) => {}
                (_, Err(e @ Error::RolledBack { .. })) => items.push(Err(e)),
                (_, Err(e)) if Reconnector::cures(&e) => {
                    lost = Some(e);
                    break;
                }
                (chain, Err(e)) => {
                    tracing::warn!(%topic, %chain, error = %e, "could not check the broker's head of a chain");
                }
            }
        }
        drop(answers);
        if let Some(e) = lost {
            self.unchecked =
                held.into_iter().map(|((publisher, chain), head)| (publisher, chain, head)).collect();
            self.lose(e);
            return Vec::new();
        }
        items
    }

    /// Queues `items` for the application, each message marked with the generation it was delivered in.
    async fn send_items(&mut self, mut items: Items) -> std::result::Result<(), ()> {
        for message in items.iter_mut().flatten() {
            message.generation = self.generation;
        }
        self.items.send(items).await.map_err(|_| ())
    }

    /// Sends the latest acknowledgement if it is newer than the last one sent on this stream. One of a
    /// later generation than the broker counts acks in is preceded by a `Rewound` for each generation
    /// between; one of an earlier generation (delivered on a stream that is gone, or before a `Rewind`
    /// whose `Rewound` went out) can no longer be expressed and is dropped: the next one covers it.
    async fn send_ack(&mut self) -> Result<()> {
        let (generation, next_offset) = *self.acks.borrow_and_update();
        let Some(link) = self.link.as_mut() else { return Ok(()) };
        if generation < self.acks_in || (generation == self.acks_in && next_offset <= self.acked) {
            return Ok(());
        }
        while self.acks_in < generation {
            if let Err(e) = link.send(&Frame::Rewound { subscription: self.subscription }).await {
                return self.absorb(e);
            }
            self.acks_in += 1;
            self.acked = Offset::ZERO;
        }
        // A durable subscription records the chain heads it verified up to the offset before the broker
        // may commit it (`durable_state.rs`); heads no longer kept are recorded as none.
        if let (Some(name), Some(folder), false) = (&self.durable, self.shared.keys.state(), self.group) {
            let heads = self.reader.heads_at(next_offset).unwrap_or_default();
            durable_state::store(folder, &self.topic, name, next_offset, &heads).await?;
        }
        match link.send(&Frame::Ack { subscription: self.subscription, next_offset }).await {
            Ok(()) => {
                self.acked = next_offset;
                Ok(())
            }
            Err(e) => self.absorb(e),
        }
    }

    /// The stream is lost for `cause`: subscribe again (after backoff) before anything else.
    fn lose(&mut self, cause: Error) {
        tracing::info!(topic = %self.topic, error = %cause, "subscription stream lost");
        let age = self.link.take().map(|link| link.age());
        self.reconnect.lost(cause, age);
    }

    /// The stream failed with `e`: a loss if reconnecting may cure it, else the end of the subscription.
    fn absorb(&mut self, e: Error) -> Result<()> {
        if !Reconnector::cures(&e) {
            return Err(e);
        }
        self.lose(e);
        Ok(())
    }

    /// Subscribes again from the next expected offset, with backoff.
    async fn resubscribe(&mut self) -> Result<()> {
        let from = StartAt::Offset(self.reader.next_offset());
        // What was verified before the loss must still be there after it (a restarted broker, for one).
        self.unchecked.extend(self.reader.held_heads());
        let (shared, topic, durable, group) = (&self.shared, &self.topic, &self.durable, self.group);
        let (link, subscription, start_offset) =
            self.reconnect.run(|| subscribe_once(shared, topic, from, durable.clone(), group)).await?;
        tracing::info!(topic = %self.topic, subscription, %start_offset, "subscribed again");
        self.link = Some(link);
        self.subscription = subscription;
        self.acked = Offset::ZERO;
        if self.group {
            // A new member of the group: it starts at the group's floor with the chains it is given now,
            // and its acks count from this stream on.
            self.generation += 1;
            self.acks_in = self.generation;
            self.reader.rewind(start_offset);
        }
        self.send_ack().await
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
        match self.reconnect.take_loss() {
            Some(e) if must_commit => Err(e),
            _ => Ok(()),
        }
    }
}
