//! The broker's session, sans-IO: every decision about a peer that carries state.
//!
//! Who may connect and how much each principal may hold and publish, who may do what, what each topic's
//! current policy is, what to answer to each frame on each kind of stream, where a chain continues and
//! where a subscription starts: all of it lives here, in synchronous types that take frames, the time and
//! what the store says as arguments, and return what to send, what to hand to the writer and what to close
//! with which code. They read no clock, open no socket and spawn no task, in the manner of quinn-proto: the
//! async shell ([`crate::server`]) only moves bytes between QUIC and these types, and a test drives them
//! with plain calls.
//!
//! # The pieces
//!
//! - [`Endpoint`]: what every connection of a broker shares: the ACL, the [`ServerLimits`](crate::limits::ServerLimits),
//!   [`Admission`] (connection counts, stream slots, in-flight budgets, publish rate limits and QUIC window
//!   shares, per principal and in total) and the [`PolicyCache`] (each topic's current verified policy).
//! - [`Connection`]: one authenticated connection: its peer, budgets and subscriptions; the kind of each
//!   stream ([`StreamKind`]).
//! - One type per kind of stream: [`PublishStream`] (`Publish`, `Head`), [`PolicyStream`] (`GetPolicies`,
//!   `PutPolicy`), [`AdminStream`] (`Admin`: an operator's queries), and for a subscription [`Subscribing`] -> [`Started`] ([`Subscription`] for its acks,
//!   [`Cursor`] for its deliveries).
//! - [`authorize`]: the stateless checks (ACL, signer binding, policy membership, policy epochs,
//!   subscription start); [`reply`]: the error frames, stream refusals and close codes peers see.
//!
//! # The contract
//!
//! A driver (the shell, or a test) owns the I/O and the clock, and calls the session as follows.
//!
//! 1. **Once per broker**: [`Endpoint::new`]`(acl, authority, limits, now)`, shared in an `Arc`.
//! 2. **Per connection**: before the handshake, [`Endpoint::admit_incoming`]: hold the [`Reservation`](crate::budget::Reservation)
//!    until the connection ends, or refuse the connection if there is none. After it,
//!    [`Connection::open`]`(&endpoint, peer, flow, now)`, where `peer` is what the certificate says and
//!    `flow` (a [`FlowControl`]) lets the session set the connection's QUIC windows to its share of its
//!    principal's, now and whenever another connection of the principal opens or closes. A refusal says
//!    which [`Close`] code to close with. Dropping the `Connection` gives its place back.
//! 3. **Per stream**: [`Connection::admit_stream`] (hold the slot until the stream ends, or reset the
//!    stream with the error's code), then read the first frame and ask [`Connection::stream_kind`]. A
//!    [`Refusal`] (here or later) means: send its frame, finish the stream, stop reading it with its code.
//! 4. **Per frame**, in the order frames arrive, execute the action the stream's session returns, in that
//!    order:
//!    - [`PublishStream::on_frame`]`(frame, store, now)` -> [`PublishAction`]: `Send` a frame, `Submit` a
//!      verified batch to the writer **before** taking the next frame (so batches are sequenced in arrival
//!      order) and send [`PublishStream::published`] of its answer, or `ReadHead` from the store where a
//!      blocking read may run and send [`PublishStream::head_is`] of what was read. Answers go out in request
//!      order.
//!    - [`PolicyStream::on_frame`]`(frame, store)` -> [`PolicyAction`]: `Send`, `Store` a verified policy
//!      through the writer and send [`PolicyStream::stored`] of its answer (which makes the policy current),
//!      or `Refuse`.
//!    - [`Connection::subscribe`]`(first)` -> [`Subscribing`]; look up the topic's durable end and call
//!      [`Subscribing::start`]`(store, end)` -> [`Started`]: send `subscribed`, then deliver with the
//!      [`Cursor`] ([`Cursor::next_read`] says what to read, [`Cursor::deliver`] turns each item read into
//!      its frame) while the acks go to [`Subscription::on_frame`] -> [`AckAction`] (go on, end, or
//!      refuse), and [`Subscription::next_commit`] gives the newest ack to commit through the writer when
//!      none of this subscription is with it ([`Subscription::commit_done`] takes the answer).
//!
//! **Time** arrives as `now: Instant` where a decision depends on it (rate limits); durations are measured
//! from the `now` given to [`Endpoint::new`]. **Store reads** the session needs in order to decide (a
//! topic's policy on a cache miss, the stored policies, a durable subscription's committed offset, a
//! topic's first offset) are made through the `&dyn Store` passed in, synchronously; reads that may be
//! slow (a chain head, batches) are actions, made by the driver where it likes, and their results handed
//! back. **Writes** are actions: the session never calls the writer, and learns its answers through
//! `published`, `stored` and the driver's error handling.
//!
//! **Events**: each decision about a peer (a connection accepted, refused or closed, a stream refused, a
//! publish accepted or refused, a writer's failure answered through [`PublishStream::published`], a
//! subscription accepted or refused, a batch delivered, a policy read refused, stored or refused) is told
//! to the endpoint's [`Observer`](crate::event::Observer) ([`Endpoint::with_observer`]; none by default) as
//! an [`Event`](crate::event::Event), synchronously, outside the session's locks. The driver tells it what
//! happens before a session exists ([`Endpoint::admit_incoming_from`], [`Endpoint::refused`]) and of
//! shutdown ([`Endpoint::shutting_down`]); it passes the remote address to [`Connection::open_from`].
//!
//! # Guarantees
//!
//! - A frame the session returns is ready to send; an error frame carries a stable code and no internal
//!   detail ([`reply::error_frame`]).
//! - Counts, slots and budgets are held by values that give them back when dropped ([`Reservation`](crate::budget::Reservation),
//!   [`Connection`], the subscription's [`Cursor`]): a driver that stops early leaks nothing.
//! - Everything here is `Send + Sync` and guarded by short mutexes that are never held across a store read
//!   or a call into the driver, except [`Admission`]'s, held while [`FlowControl::set_windows`] is called
//!   (docs/locks.md lists every lock and its order).
//!
//! # What it does not do
//!
//! It does not read or write streams, wait for a budget (it hands out [`Budget`](crate::budget::Budget)s; the driver reserves
//! frame bytes from them as they arrive), check the publishers' sequence chains (the writer's
//! [`sequencer`](crate::writer::sequencer) does, in order), decide what is durable (the writer does), or parse
//! certificates ([`crate::tls`] does).
//!
//! # Driving it without sockets
//!
//! ```
//! use std::sync::Arc;
//! use std::time::Instant;
//!
//! use sealpost_broker::acl::Acl;
//! use sealpost_broker::limits::ServerLimits;
//! use sealpost_broker::session::{Connection, Endpoint, FlowControl, PublishAction, StreamKind};
//! use sealpost_broker::store::MemoryStore;
//! use sealpost_broker::tls::Peer;
//! use sealpost_protocol::{Frame, SigningKey, Topic};
//!
//! struct NoWindows;
//! impl FlowControl for NoWindows {
//!     fn set_windows(&self, _receive: u64, _send: u64) {}
//! }
//!
//! let acl = Acl::from_toml(
//!     "[[rule]]\nprincipals = [\"alice\"]\ntopics = [\"demo.>\"]\nactions = [\"publish\"]\neffect = \"allow\"\n",
//! )?;
//! let now = Instant::now();
//! let endpoint = Arc::new(Endpoint::new(acl, None, ServerLimits::default(), now));
//! let store = MemoryStore::new();
//! let alice = SigningKey::from_bytes(&[1; 32]);
//! let peer = Peer {
//!     principal: "alice".parse()?,
//!     signing_keys: vec![alice.public_key()],
//!     fingerprint: Default::default(),
//! };
//! let connection = Connection::open(&endpoint, Ok(peer), Arc::new(NoWindows), now).expect("admitted");
//! let _slot = connection.admit_stream()?;
//!
//! let head = Frame::Head { request_id: 1, topic: Topic::new("demo.chat")?, publisher: alice.public_key() };
//! assert_eq!(connection.stream_kind(&head).expect("a stream kind"), StreamKind::Publish);
//! let stream = connection.publish_stream();
//! match stream.on_frame(head, &store, now) {
//!     PublishAction::ReadHead { request_id, topic, publisher, chain } => {
//!         // The shell reads this off the async workers; a test just reads it.
//!         let read = sealpost_broker::store::Store::publisher_head(&store, &topic, &publisher, chain);
//!         let answer = sealpost_broker::session::PublishStream::head_is(request_id, read);
//!         assert!(matches!(answer, Frame::HeadIs { request_id: 1, .. }));
//!     }
//!     other => panic!("{other:?}"),
//! }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod admin;
mod admission;
pub mod authorize;
mod connection;
mod cursor;
mod durable;
mod endpoint;
pub mod group;
mod policies;
mod policy_stream;
mod publish;
pub mod reply;
mod subscribe;
#[cfg(test)]
pub(crate) mod testing;

pub use self::admin::{AdminAction, AdminStream};
pub use self::admission::{Admission, Admitted, ConnectionId, FlowControl};
pub use self::connection::{Connection, StreamKind};
pub use self::cursor::{Cursor, Next, Read};
pub use self::durable::{DurableKey, DurableLease, DurableLeases};
pub use self::endpoint::Endpoint;
pub use self::group::{Group, Groups};
pub use self::policies::PolicyCache;
pub use self::policy_stream::{PolicyAction, PolicyStream, POLICIES_SERVED};
pub use self::publish::{PublishAction, PublishStream};
pub use self::reply::{Close, ConnectionRefused, Refusal};
pub use self::subscribe::{AckAction, Commit, Started, Subscribing, Subscription, SubscriptionSlot};

#[cfg(test)]
mod tests {
    //! The pieces driven together as a driver would, over a memory store and the real writer, without a
    //! socket: the shape of an in-memory client/broker pair.

    use std::sync::Arc;
    use std::time::Instant;

    use sealpost_protocol::{Frame, Offset, StartAt};

    use super::testing::{batch_bytes, endpoint, key, peer, topic, Windows};
    use super::*;
    use crate::limits::ServerLimits;
    use crate::writer::Log;

    #[tokio::test]
    async fn a_batch_published_through_the_session_is_delivered_to_a_subscriber() {
        let now = Instant::now();
        let (endpoint, store) = endpoint(ServerLimits::default(), now);
        let log = Log::with_tail(store.clone(), 0).unwrap();
        let open =
            |who| Connection::open(&endpoint, Ok(peer(who)), Arc::new(Windows::default()), now).unwrap();
        let (alice, bob) = (open("alice"), open("bob"));

        let publish = Frame::Publish { request_id: 1, batch: batch_bytes(&key("alice"), "demo.chat") };
        assert_eq!(alice.stream_kind(&publish).unwrap(), StreamKind::Publish);
        let PublishAction::Submit { request_id, topic: t, batch } =
            alice.publish_stream().on_frame(publish, store.as_ref(), now)
        else {
            panic!("not submitted");
        };
        let published = alice.publish_stream().published(request_id, log.submit(t, *batch).await);
        assert_eq!(published, Frame::Published { request_id: 1, first_offset: Offset(0), count: 1 });

        let subscribe = Frame::Subscribe {
            request_id: 2,
            topic: topic("demo.chat"),
            from: StartAt::Earliest,
            durable: None,
        };
        let subscribing = bob.subscribe(subscribe).unwrap();
        let end = *log.durable_end(subscribing.topic()).unwrap().borrow();
        let Started { subscribed, mut cursor, .. } = subscribing.start(store.as_ref(), end).unwrap();
        assert!(matches!(subscribed, Frame::Subscribed { request_id: 2, start_offset: Offset(0), .. }));
        let read = cursor.next_read(end).unwrap();
        let items = crate::store::Store::read(store.as_ref(), &topic("demo.chat"), read.from, read.max_bytes)
            .unwrap();
        let frames: Vec<Frame> = items
            .into_iter()
            .filter_map(|item| cursor.deliver(item, end, std::time::Instant::now()).into_frame())
            .collect();
        assert!(matches!(frames.as_slice(), [Frame::Deliver { offset: Offset(0), .. }]));
        assert_eq!(cursor.next_read(end), None);
        log.close().await.unwrap();
    }
}
