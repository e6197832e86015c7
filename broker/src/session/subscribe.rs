//! A subscription stream: one `Subscribe`, then deliveries out and acks in.
//!
//! A subscription goes through three types:
//!
//! 1. [`Subscribing`]: a `Subscribe` request that took one of its connection's subscription slots
//!    (`max_subscriptions_per_connection`) and passed [`authorize_subscribe`]
//!    ([`Connection::subscribe`](super::Connection::subscribe) makes it, or refuses the stream). The driver
//!    looks up the topic's durable end and calls [`Subscribing::start`], which decides where the
//!    subscription starts ([`start_offset`]: a durable subscription's committed offset, else `from` resolved
//!    against the store) and gives the `Subscribed` frame to send;
//! 2. [`Subscription`]: the acks, moved into the task that reads them. An `Ack` of a durable subscription
//!    becomes the newest offset to commit, `Unsubscribe` ends the stream, anything else refuses it
//!    ([`Subscription::on_frame`]); [`Subscription::next_commit`] hands the newest to the writer when no
//!    commit of this subscription is with it. Acks that arrive while one is replace each other, so a
//!    subscriber that acks every message costs a commit per group commit of the writer, not one per ack,
//!    and the committed offset trails the newest ack received by at most one group commit;
//! 3. [`Cursor`] (`cursor.rs`): where delivery stands. Given the durable end, it says what to read next
//!    ([`Cursor::next_read`]) and turns each stored item read into its `Deliver` or `Lost` frame
//!    ([`Cursor::deliver`]), never one at or past the durable end: subscribers only see durable data. A
//!    member of a shared subscription is given only its chains' batches, and a `Rewind` when it must
//!    read back (`group.rs`).
//!
//! The cursor holds the subscription's slot until it is dropped, when the stream ends.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use sealpost_protocol::{Frame, Offset, Principal, RequestId, StartAt, SubscriptionId, Topic};
use tracing::{debug, info};

use super::authorize::{authorize_subscribe, start_offset};
use super::cursor::Cursor;
use super::durable::{DurableKey, DurableLease};
use super::endpoint::Endpoint;
use super::group::{Group, MemberId};
use super::reply::Refusal;
use crate::event::{Event, Who};
use crate::store::Store;
use crate::tls::Peer;
use crate::{Error, Result};

/// One of a connection's subscription slots, given back when dropped.
#[derive(Debug)]
pub struct SubscriptionSlot(Arc<AtomicUsize>);

impl SubscriptionSlot {
    /// Takes a slot from `open` (the connection's count of open subscriptions) unless `max` are taken.
    pub fn take(open: &Arc<AtomicUsize>, max: usize) -> Option<SubscriptionSlot> {
        let slot = SubscriptionSlot(open.clone());
        // Counted first, so that two racing requests cannot both take the last slot.
        (open.fetch_add(1, Ordering::Relaxed) < max).then_some(slot)
    }
}

impl Drop for SubscriptionSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// An authorized `Subscribe` request, waiting for the topic's durable end to start.
#[derive(Debug)]
pub struct Subscribing {
    request_id: RequestId,
    id: SubscriptionId,
    topic: Topic,
    from: StartAt,
    durable: Option<String>,
    /// Whether the durable subscription is shared: a member of its group ([`super::group`]).
    shared: bool,
    principal: Principal,
    read_bytes: usize,
    slot: SubscriptionSlot,
    /// The durable subscription's lease, once the driver took it ([`Subscribing::hold`]).
    lease: Option<DurableLease>,
    /// Its membership of the group, once it joined ([`Subscribing::join`]).
    member: Option<Membership>,
    /// Who asked, for the events.
    endpoint: Arc<Endpoint>,
    peer: Arc<Peer>,
    remote: Option<SocketAddr>,
}

/// What a started subscription needs: the frame that starts it, its acks' session, its delivery cursor.
#[derive(Debug)]
pub struct Started {
    /// `Subscribed`: send it first.
    pub subscribed: Frame,
    /// The acks' session.
    pub subscription: Subscription,
    /// Where delivery starts.
    pub cursor: Cursor,
}

impl Subscribing {
    /// Checks a `Subscribe` request of `peer` that took `slot`, under the id `id`.
    /// `remote` is where the connection comes from, for the events.
    pub(crate) fn new(
        endpoint: &Arc<Endpoint>,
        (peer, remote): (&Arc<Peer>, Option<SocketAddr>),
        id: SubscriptionId,
        slot: SubscriptionSlot,
        request: (RequestId, Topic, StartAt, Option<String>, bool),
    ) -> Result<Subscribing, Refusal> {
        let (request_id, topic, from, durable, shared) = request;
        if let Err(e) = authorize_subscribe(peer, &endpoint.acl(), &topic, durable.as_deref()) {
            debug!(principal = %peer.principal, %topic, error = %e, "subscribe refused");
            endpoint.emit(&Event::SubscribeRefused {
                who: Who::of(peer, remote),
                topic: &topic,
                durable: durable.as_deref(),
                code: e.code(),
            });
            return Err(Refusal::new(Some(request_id), e));
        }
        let (principal, read_bytes) = (peer.principal.clone(), endpoint.limits().subscriber_read_bytes);
        let (endpoint, peer) = (endpoint.clone(), peer.clone());
        Ok(Subscribing {
            request_id,
            id,
            topic,
            from,
            durable,
            shared,
            principal,
            read_bytes,
            slot,
            lease: None,
            member: None,
            endpoint,
            peer,
            remote,
        })
    }

    /// The topic: look up its durable end.
    pub fn topic(&self) -> &Topic {
        &self.topic
    }

    /// Whether it is a member of a shared durable subscription: [`join`](Self::join) its group before
    /// [`start`](Self::start).
    pub fn is_shared(&self) -> bool {
        self.shared
    }

    /// Joins the group of the shared durable subscription, given the topic's durable end now; a group new
    /// in memory starts at the committed offset in `store` (else where `from` says). `Ok(false)`: an
    /// exclusive subscriber of the name holds its lease; stand by and try again when a lease is released.
    pub fn join(&mut self, store: &dyn Store, durable_end: Offset) -> Result<bool, Refusal> {
        let Some(name) = self.durable.as_ref().filter(|_| self.shared) else { return Ok(true) };
        let committed = store
            .durable_offset(&self.topic, &self.principal, name)
            .map_err(|e| Refusal::new(Some(self.request_id), e))?;
        let key = (self.topic.clone(), self.principal.clone(), name.clone());
        let group = self.endpoint.groups().group(&key);
        let mut created = false;
        let joined = group.join(self.endpoint.durables(), || {
            created = committed.is_none();
            start_offset(self.from, committed, durable_end)
        });
        let Some((id, lease, start)) = joined else { return Ok(false) };
        let (endpoint, topic) = (self.endpoint.clone(), self.topic.clone());
        endpoint.emit(&Event::SharedJoined { who: Who::of(&self.peer, self.remote), topic: &topic });
        self.member = Some(Membership { group, id, _lease: lease, start, created, endpoint, topic });
        Ok(true)
    }

    /// What names it, if it is durable: take its lease from [`Endpoint::durables`] (waiting while another
    /// subscription holds it) and [`hold`](Self::hold) it before [`start`](Self::start). A shared one
    /// [`join`](Self::join)s its group instead.
    pub fn durable_key(&self) -> Option<DurableKey> {
        let name = self.durable.as_ref()?;
        Some((self.topic.clone(), self.principal.clone(), name.clone()))
    }

    /// Keeps the durable subscription's `lease` for as long as its acks are read (it is given back once
    /// the last ack is committed).
    pub fn hold(&mut self, lease: DurableLease) {
        self.lease = Some(lease);
    }

    /// Starts the subscription, given the topic's durable end now: checks that the topic's current policy
    /// lists the subscriber as a subscriber ([`is_subscriber`]), and reads the durable subscription's
    /// committed offset from `store`. Refused (with the request's id) with `NOT_AUTHORIZED` if the policy
    /// does not, or with the store's error.
    pub fn start(self, store: &dyn Store, durable_end: Offset) -> Result<Started, Refusal> {
        let Subscribing {
            request_id,
            id,
            topic,
            from,
            durable,
            shared: _,
            principal,
            read_bytes,
            slot,
            lease,
            member,
            endpoint,
            peer,
            remote,
        } = self;
        let refuse = |e: Error| {
            debug!(%principal, %topic, error = %e, "subscribe refused");
            endpoint.emit(&Event::SubscribeRefused {
                who: Who::of(&peer, remote),
                topic: &topic,
                durable: durable.as_deref(),
                code: e.code(),
            });
            Refusal::new(Some(request_id), e)
        };
        match is_subscriber(&endpoint, store, &topic, &principal) {
            Ok(true) => {}
            Ok(false) => return Err(refuse(Error::NotAuthorized)),
            Err(e) => return Err(refuse(e)),
        }
        let (start, created) = match (&member, &durable) {
            (Some(member), _) => (member.start, member.created),
            (None, Some(name)) => {
                let committed = store
                    .durable_offset(&topic, &principal, name)
                    .map_err(|e| Refusal::new(Some(request_id), e))?;
                (start_offset(from, committed, durable_end), committed.is_none())
            }
            (None, None) => (start_offset(from, None, durable_end), false),
        };
        let shared = member.as_ref().map(|m| m.id);
        info!(%principal, %topic, %start, durable = durable.as_deref().unwrap_or(""), ?shared, "subscribed");
        endpoint.emit(&Event::SubscribeAccepted {
            who: Who::of(&peer, remote),
            topic: &topic,
            durable: durable.as_deref(),
            created: durable.is_some() && created,
        });
        let (cursor_endpoint, cursor_peer) = (endpoint.clone(), peer.clone());
        Ok(Started {
            subscribed: Frame::Subscribed { request_id, subscription: id, start_offset: start },
            cursor: Cursor {
                subscription: id,
                next: start,
                read_bytes,
                group: member.as_ref().map(|m| (m.group.clone(), m.id)),
                ack_wait: endpoint.limits().shared_ack_wait,
                _slot: slot,
                topic: topic.clone(),
                endpoint,
                peer,
                remote,
            },
            subscription: Subscription {
                id,
                shared: member.map(|member| Shared { member, committing: None }),
                durable: durable.filter(|_| shared.is_none()).map(|name| Durable {
                    name,
                    newest: None,
                    committing: false,
                }),
                topic,
                principal,
                endpoint: cursor_endpoint,
                peer: cursor_peer,
                remote,
                _lease: lease,
            },
        })
    }
}

/// Whether `topic`'s current policy (verified against the broker's topic authority) lists `principal`
/// with the subscribe role: the broker serves a topic's ciphertext only to its policy's subscribers, as
/// it stores batches only from its publishers, so a member removed from the policy cannot fetch what is
/// published afterwards even where the ACL still allows it. A topic without a policy has no subscribers.
pub fn is_subscriber(
    endpoint: &Endpoint,
    store: &dyn Store,
    topic: &Topic,
    principal: &Principal,
) -> Result<bool> {
    Ok(endpoint
        .policies()
        .current(topic, store)?
        .is_some_and(|policy| policy.member(principal.as_str()).is_some_and(|m| m.subscribe)))
}

/// The acks' session of a started subscription (see the [module documentation](self)).
#[derive(Debug)]
pub struct Subscription {
    id: SubscriptionId,
    topic: Topic,
    principal: Principal,
    /// Its acks, if it is durable: the acks of any other subscription are read and dropped.
    durable: Option<Durable>,
    /// Its group, if it is a member of a shared one: its acks go there, and the group's floor is what
    /// is committed.
    shared: Option<Shared>,
    /// Who reads it, for the events.
    endpoint: Arc<Endpoint>,
    peer: Arc<Peer>,
    remote: Option<SocketAddr>,
    /// Its lease, if durable: given back when the acks are done.
    _lease: Option<DurableLease>,
}

/// Where a durable subscription's acks stand.
#[derive(Debug)]
struct Durable {
    name: String,
    /// The newest ack received and not yet handed to the writer.
    newest: Option<Offset>,
    /// Whether a commit of this subscription is with the writer.
    committing: bool,
}

/// A member's place in its group, left when dropped (after the member's last commit), and the name's
/// lease, given back after the group's last member left.
#[derive(Debug)]
struct Membership {
    group: Arc<Group>,
    id: MemberId,
    _lease: Arc<DurableLease>,
    /// Where its cursor starts: the group's floor when it joined.
    start: Offset,
    /// Whether joining created the durable subscription.
    created: bool,
    /// For the events.
    endpoint: Arc<Endpoint>,
    topic: Topic,
}

impl Drop for Membership {
    fn drop(&mut self) {
        self.group.leave(self.id);
        self.endpoint.emit(&Event::SharedLeft { topic: &self.topic });
    }
}

/// A member's acks.
#[derive(Debug)]
struct Shared {
    member: Membership,
    /// The group's floor with the writer, if this member handed it.
    committing: Option<Offset>,
}

/// What to do after a frame the subscriber sent on the subscription stream.
#[derive(Debug)]
pub enum AckAction {
    /// Read the next frame (and hand [`Subscription::next_commit`] to the writer, if there is one).
    Continue,
    /// The subscriber unsubscribed: commit what [`Subscription::next_commit`] still gives, then end.
    End,
    /// Stop the stream with this error (after committing what was acked before).
    Refuse(Error),
}

/// A durable subscription's offset to commit through the writer.
#[derive(Debug, PartialEq, Eq)]
pub struct Commit {
    /// The topic.
    pub topic: Topic,
    /// The subscriber.
    pub principal: Principal,
    /// The durable subscription's name.
    pub name: String,
    /// Where the subscription resumes: the offset after the last message acknowledged.
    pub next_offset: Offset,
}

impl Subscription {
    /// Its id on its connection.
    pub fn id(&self) -> SubscriptionId {
        self.id
    }

    /// Its topic.
    pub fn topic(&self) -> &Topic {
        &self.topic
    }

    /// What to do with `frame`, sent by the subscriber on the subscription's stream. An `Ack` of a durable
    /// subscription replaces any older ack not yet handed to the writer: the newest wins.
    pub fn on_frame(&mut self, frame: Frame) -> AckAction {
        match frame {
            Frame::Ack { subscription, next_offset } if subscription == self.id => {
                if let Some(Shared { member, .. }) = &self.shared {
                    member.group.ack(member.id, next_offset);
                    let who = Who::of(&self.peer, self.remote);
                    self.endpoint.emit(&Event::AckReceived { who, topic: &self.topic });
                } else if let Some(durable) = &mut self.durable {
                    durable.newest = Some(next_offset);
                    let who = Who::of(&self.peer, self.remote);
                    self.endpoint.emit(&Event::AckReceived { who, topic: &self.topic });
                }
                AckAction::Continue
            }
            Frame::Rewound { subscription } if subscription == self.id => match &self.shared {
                Some(Shared { member, .. }) if member.group.rewound(member.id) => AckAction::Continue,
                _ => AckAction::Refuse(Error::Protocol(sealpost_protocol::Error::Malformed(
                    "Rewound without a Rewind",
                ))),
            },
            Frame::Unsubscribe { .. } => AckAction::End,
            _ => AckAction::Refuse(Error::Protocol(sealpost_protocol::Error::Malformed(
                "unexpected frame on a subscription stream",
            ))),
        }
    }

    /// The commit to hand to the writer now: the newest ack received, unless none is waiting or a commit
    /// of this subscription is with the writer already. Tell [`commit_done`](Self::commit_done) its answer.
    pub fn next_commit(&mut self) -> Option<Commit> {
        if let Some(shared) = self.shared.as_mut() {
            if shared.committing.is_some() {
                return None;
            }
            let floor = shared.member.group.next_commit()?;
            shared.committing = Some(floor);
            let (topic, principal, name) = shared.member.group.key().clone();
            return Some(Commit { topic, principal, name, next_offset: floor });
        }
        let durable = self.durable.as_mut().filter(|d| !d.committing)?;
        let next_offset = durable.newest.take()?;
        durable.committing = true;
        Some(Commit {
            topic: self.topic.clone(),
            principal: self.principal.clone(),
            name: durable.name.clone(),
            next_offset,
        })
    }

    /// The writer answered the commit [`next_commit`](Self::next_commit) gave: `stored` if it is durable.
    pub fn commit_done(&mut self, stored: bool) {
        if let Some(shared) = &mut self.shared {
            let Some(floor) = shared.committing.take() else { return };
            shared.member.group.commit_done(floor, stored);
        } else if let Some(durable) = &mut self.durable {
            durable.committing = false;
        } else {
            return;
        }
        if stored {
            let who = Who::of(&self.peer, self.remote);
            self.endpoint.emit(&Event::OffsetCommitted { who, topic: &self.topic });
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use bytes::Bytes;
    use sealpost_protocol::{ErrorCode, LostBatch};

    use super::*;
    use crate::limits::ServerLimits;
    use crate::session::cursor::{Next, Read};
    use crate::session::testing::{endpoint, peer, topic};
    use crate::store::Stored;
    use crate::store::{LossReason, LostRange, MemoryStore, StoredBatch};

    /// A store holding the epoch-1 policies of demo.chat and demo.events (alice and bob subscribe).
    fn with_policies() -> MemoryStore {
        let store = MemoryStore::new();
        for name in ["demo.chat", "demo.events"] {
            let p = crate::session::testing::policy(name, 1, None);
            store.put_policy(p.topic(), 1, p.as_bytes()).unwrap();
        }
        store
    }

    fn subscribing(who: &str, from: StartAt, durable: Option<&str>) -> Result<Subscribing, Refusal> {
        let (endpoint, _) = endpoint(ServerLimits::default(), Instant::now());
        let slot = SubscriptionSlot::take(&Arc::new(AtomicUsize::new(0)), 1).unwrap();
        let request = (1, topic("demo.chat"), from, durable.map(str::to_owned), false);
        Subscribing::new(&endpoint, (&Arc::new(peer(who)), None), 7, slot, request)
    }

    fn started(from: StartAt, durable: Option<&str>, store: &MemoryStore, end: u64) -> Started {
        subscribing("bob", from, durable).unwrap().start(store, Offset(end)).unwrap()
    }

    fn start_of(s: &Started) -> Offset {
        match s.subscribed {
            Frame::Subscribed { request_id: 1, subscription: 7, start_offset } => start_offset,
            ref other => panic!("{other:?}"),
        }
    }

    #[test]
    fn slots_are_counted_and_given_back() {
        let open = Arc::new(AtomicUsize::new(0));
        let a = SubscriptionSlot::take(&open, 2).unwrap();
        let _b = SubscriptionSlot::take(&open, 2).unwrap();
        assert!(SubscriptionSlot::take(&open, 2).is_none());
        drop(a);
        assert!(SubscriptionSlot::take(&open, 2).is_some());
        assert_eq!(open.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn subscribe_is_refused_by_the_acl_or_a_bad_durable_name_with_its_request_id() {
        let denied = subscribing("mallory", StartAt::Earliest, None).unwrap_err();
        assert_eq!((denied.request_id, denied.code()), (Some(1), ErrorCode::NOT_AUTHORIZED));
        let bad_name = subscribing("bob", StartAt::Earliest, Some("a/b")).unwrap_err();
        assert_eq!((bad_name.request_id, bad_name.code()), (Some(1), ErrorCode::MALFORMED));
    }

    #[test]
    fn a_subscription_starts_where_its_request_and_the_store_say() {
        let store = with_policies();
        let chat = topic("demo.chat");
        assert_eq!(start_of(&started(StartAt::Earliest, None, &store, 10)), Offset(0));
        assert_eq!(start_of(&started(StartAt::Latest, None, &store, 10)), Offset(10));
        assert_eq!(start_of(&started(StartAt::Offset(Offset(4)), None, &store, 10)), Offset(4));
        // A durable subscription resumes from its committed offset, whatever `from` says.
        store.set_durable_offset(&chat, &"bob".parse().unwrap(), "audit", Offset(6)).unwrap();
        assert_eq!(start_of(&started(StartAt::Latest, Some("audit"), &store, 10)), Offset(6));
        assert_eq!(start_of(&started(StartAt::Latest, Some("other"), &store, 10)), Offset(10));
    }

    fn ack(next: u64) -> Frame {
        Frame::Ack { subscription: 7, next_offset: Offset(next) }
    }

    #[test]
    fn acks_of_a_durable_subscription_are_committed_and_others_are_not() {
        let store = with_policies();
        let mut durable = started(StartAt::Earliest, Some("audit"), &store, 0).subscription;
        assert!(durable.next_commit().is_none(), "nothing acked yet");
        assert!(matches!(durable.on_frame(ack(3)), AckAction::Continue));
        let commit = durable.next_commit().expect("a commit");
        assert_eq!(
            commit,
            Commit {
                topic: topic("demo.chat"),
                principal: "bob".parse().unwrap(),
                name: "audit".into(),
                next_offset: Offset(3)
            }
        );
        let mut plain = started(StartAt::Earliest, None, &store, 0).subscription;
        assert!(matches!(plain.on_frame(ack(3)), AckAction::Continue));
        assert!(plain.next_commit().is_none(), "a subscription that is not durable commits nothing");
        assert!(matches!(plain.on_frame(Frame::Unsubscribe { subscription: 7 }), AckAction::End));
    }

    /// While a commit is with the writer, the acks that arrive replace each other: the next commit is the
    /// newest alone, so a thousand acks cost two commits. Every ack is counted as received.
    #[test]
    fn acks_that_arrive_during_a_commit_go_with_the_next_one_and_the_newest_wins() {
        let recorder = Arc::new(crate::session::testing::Recorder::default());
        let (endpoint, _) = crate::session::testing::observed_endpoint(
            ServerLimits::default(),
            Instant::now(),
            recorder.clone(),
        );
        let store = with_policies();
        let slot = SubscriptionSlot::take(&Arc::new(AtomicUsize::new(0)), 1).unwrap();
        let request = (1, topic("demo.chat"), StartAt::Earliest, Some("audit".to_owned()), false);
        let subscribing = Subscribing::new(&endpoint, (&Arc::new(peer("bob")), None), 7, slot, request);
        let mut s = subscribing.unwrap().start(&store, Offset(0)).unwrap().subscription;

        s.on_frame(ack(1));
        assert_eq!(s.next_commit().map(|c| c.next_offset), Some(Offset(1)));
        for next in 2..=1000 {
            s.on_frame(ack(next));
            assert!(s.next_commit().is_none(), "one commit at a time");
        }
        s.commit_done(true);
        assert_eq!(s.next_commit().map(|c| c.next_offset), Some(Offset(1000)));
        // The newest wins even when it is lower (a subscriber that went back): as if each were committed.
        s.on_frame(ack(999));
        s.commit_done(false);
        assert_eq!(s.next_commit().map(|c| c.next_offset), Some(Offset(999)));
        s.commit_done(true);
        assert!(s.next_commit().is_none(), "nothing newer to commit");

        let events = recorder.0.lock().unwrap();
        let count = |name: &str| events.iter().filter(|e| e.starts_with(name)).count();
        assert_eq!(count("ack_received"), 1001);
        assert_eq!(count("offset_committed"), 2, "the failed commit is not counted");
    }

    #[test]
    fn unexpected_frames_on_a_subscription_stream_refuse_it() {
        let store = with_policies();
        let mut s = started(StartAt::Earliest, Some("audit"), &store, 0).subscription;
        // An ack of another subscription is as unexpected as a publish.
        for frame in [
            Frame::Ack { subscription: 8, next_offset: Offset(3) },
            Frame::Publish { request_id: 1, batch: Bytes::new() },
            Frame::Subscribe {
                request_id: 2,
                topic: topic("demo.chat"),
                from: StartAt::Earliest,
                durable: None,
            },
        ] {
            let AckAction::Refuse(e) = s.on_frame(frame) else { panic!("not refused") };
            assert_eq!(e.code(), ErrorCode::MALFORMED);
        }
    }

    #[test]
    fn a_subscription_the_reloaded_acl_no_longer_allows_is_ended_and_others_go_on() {
        use crate::session::testing::{acl_from, ACL};
        let (endpoint, _) = endpoint(ServerLimits::default(), Instant::now());
        let store = with_policies();
        let start = |who: &str, name: &str| {
            let slot = SubscriptionSlot::take(&Arc::new(AtomicUsize::new(0)), 1).unwrap();
            let request = (1, topic(name), StartAt::Earliest, None, false);
            let subscribing = Subscribing::new(&endpoint, (&Arc::new(peer(who)), None), 7, slot, request);
            subscribing.unwrap().start(&store, Offset(0)).unwrap().cursor
        };
        let (bob_chat, bob_events, alice_chat) =
            (start("bob", "demo.chat"), start("bob", "demo.events"), start("alice", "demo.chat"));
        assert!(bob_chat.still_authorized(&store).is_ok());
        // Bob may no longer read demo.chat; demo.events and alice are not affected.
        let deny = "[[rule]]\nprincipals = [\"bob\"]\ntopics = [\"demo.chat\"]\nactions = [\"subscribe\"]\neffect = \"deny\"\n";
        endpoint.set_acl(Arc::new(acl_from(&format!("{ACL}\n{deny}"))));
        let refusal = bob_chat.still_authorized(&store).unwrap_err();
        assert_eq!((refusal.request_id, refusal.code()), (None, ErrorCode::NOT_AUTHORIZED));
        assert!(bob_events.still_authorized(&store).is_ok());
        assert!(alice_chat.still_authorized(&store).is_ok());
    }

    #[test]
    fn only_the_policys_subscribers_may_subscribe_and_one_removed_is_ended_at_its_next_read() {
        use sealpost_protocol::{issue_policy, ContentKey, Epoch, Limits, PolicyParams, Timestamp};
        let (endpoint, _) = endpoint(ServerLimits::default(), Instant::now());
        let store = with_policies();
        let start = |who: &str, name: &str| {
            let slot = SubscriptionSlot::take(&Arc::new(AtomicUsize::new(0)), 1).unwrap();
            let request = (1, topic(name), StartAt::Earliest, None, false);
            let subscribing = Subscribing::new(&endpoint, (&Arc::new(peer(who)), None), 7, slot, request);
            subscribing.unwrap().start(&store, Offset(0))
        };
        // The ACL lets bob subscribe to demo.other, but it has no policy: no subscribers.
        let refused = start("bob", "demo.other").err().unwrap();
        assert_eq!((refused.request_id, refused.code()), (Some(1), ErrorCode::NOT_AUTHORIZED));
        let bob = start("bob", "demo.chat").unwrap().cursor;
        assert!(bob.still_authorized(&store).is_ok());
        // Epoch 2 of demo.chat no longer lists bob: his subscription ends at its next read, a new one is
        // refused; alice goes on.
        let first = crate::session::testing::policy("demo.chat", 1, None);
        let alice = first.member("alice").unwrap().clone();
        let params = PolicyParams {
            topic: topic("demo.chat"),
            epoch: Epoch(2),
            prev: Some(&first),
            members: vec![alice],
            created_at: Timestamp(2),
        };
        let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(2);
        let key = ContentKey::from_bytes(&[2; 32]);
        let second =
            issue_policy(&crate::session::testing::authority(), params, &key, &Limits::default(), &mut rng)
                .unwrap();
        endpoint.policies().stored(second);
        let refusal = bob.still_authorized(&store).unwrap_err();
        assert_eq!((refusal.request_id, refusal.code()), (None, ErrorCode::NOT_AUTHORIZED));
        assert_eq!(start("bob", "demo.chat").err().unwrap().code(), ErrorCode::NOT_AUTHORIZED);
        assert!(start("alice", "demo.chat").unwrap().cursor.still_authorized(&store).is_ok());
    }

    #[test]
    fn the_cursor_delivers_in_order_up_to_the_durable_end_only() {
        let store = with_policies();
        let mut cursor = started(StartAt::Offset(Offset(2)), None, &store, 0).cursor;
        assert_eq!(cursor.next_read(Offset(2)), None);
        let read = cursor.next_read(Offset(9)).unwrap();
        assert_eq!(read, Read { from: Offset(2), max_bytes: ServerLimits::default().subscriber_read_bytes });
        let batch = |offset, count| {
            Stored::Batch(StoredBatch { offset: Offset(offset), count, bytes: Bytes::from_static(b"b") })
        };
        let lost = Stored::Lost(Box::new(LostRange {
            offset: Offset(4),
            count: 2,
            batch: None::<LostBatch>,
            reason: LossReason::Corrupt,
        }));
        assert!(matches!(
            cursor.deliver(batch(1, 3), Offset(9), Instant::now()).into_frame(),
            Some(Frame::Deliver { subscription: 7, offset: Offset(1), .. })
        ));
        assert!(matches!(
            cursor.deliver(lost, Offset(9), Instant::now()).into_frame(),
            Some(Frame::Lost { offset: Offset(4), count: 2, reason: ErrorCode::DATA_LOST, .. })
        ));
        assert_eq!(cursor.position(), Offset(6));
        // Stored, but not durable yet.
        assert_eq!(cursor.deliver(batch(9, 1), Offset(9), Instant::now()), Next::Stop);
        assert_eq!(cursor.position(), Offset(6));
        assert_eq!(cursor.next_read(Offset(9)).map(|r| r.from), Some(Offset(6)));
    }
}
