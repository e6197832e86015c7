//! A publish stream: `Publish`, `Head` and `HeadOfChain` requests, pipelined.
//!
//! [`PublishStream::on_frame`] decides what to do with each frame, in arrival order, and returns a
//! [`PublishAction`]:
//!
//! - a `Publish` whose batch decodes within the limits, passes [`authorize_publish`] against the topic's
//!   current policy, and fits the principal's publish rate becomes [`PublishAction::Submit`]: the driver
//!   hands the verified batch to the writer **at once** (so batches are sequenced in the order they
//!   arrived) and, when the writer answers, sends [`PublishStream::published`];
//! - a `Head` (the legacy chain) or a `HeadOfChain` (the chain it names) the peer may ask
//!   ([`authorize_head`]) becomes [`PublishAction::ReadHead`]: the driver reads that chain's head from the
//!   store where a blocking read may run and sends [`PublishStream::head_is`];
//! - anything else is answered at once with an error frame ([`PublishAction::Send`]), and the stream goes
//!   on.
//!
//! Answers go out in request order: the driver queues each action's answer behind the previous ones. The
//! sequence chain is not checked here: the writer's sequencer sees every batch of a publisher in order.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use bytes::Bytes;
use sealpost_protocol::{ChainId, Frame, PublicKey, RequestId, SealedBatch, Topic, VerifiedBatch};
use tracing::{debug, info};

use super::authorize::{authorize_head, authorize_publisher};
use super::endpoint::Endpoint;
use super::reply::{error_frame, Refusal};
use crate::acl::Action;
use crate::event::{Event, Who};
use crate::store::{PublisherRecord, Store};
use crate::tls::Peer;
use crate::writer::Appended;
use crate::{Error, Result};

/// What to do with one frame of a publish stream.
#[derive(Debug)]
pub enum PublishAction {
    /// Send this frame, in its turn.
    Send(Frame),
    /// Hand `batch` to the writer now (`Log::submit(topic, batch)`); send
    /// [`published`](PublishStream::published) with its answer, in its turn.
    Submit {
        /// The request.
        request_id: RequestId,
        /// The batch's topic.
        topic: Topic,
        /// The batch, verified and authorized (boxed: it is large next to the other actions).
        batch: Box<VerifiedBatch>,
    },
    /// Read `Store::publisher_head(topic, publisher, chain)` off the async workers; send
    /// [`head_is`](PublishStream::head_is) with what was read, in its turn.
    ReadHead {
        /// The request.
        request_id: RequestId,
        /// The topic.
        topic: Topic,
        /// The publisher key, bound to the peer.
        publisher: PublicKey,
        /// The chain asked for: [`ChainId::LEGACY`] for `Head`, the one named by `HeadOfChain`.
        chain: ChainId,
    },
}

/// The session of one publish stream. See the [module documentation](self).
#[derive(Clone)]
pub struct PublishStream {
    endpoint: Arc<Endpoint>,
    peer: Arc<Peer>,
    remote: Option<SocketAddr>,
    /// The topics this stream had a batch accepted on (the first [`MAX_TOPICS_CHECKED`]): what a reload
    /// of the ACL checks the stream against ([`PublishStream::still_authorized`]).
    topics: Arc<Mutex<Vec<Topic>>>,
}

/// Most topics of one publish stream that an ACL reload checks it against (a client publishes one topic
/// per stream; later topics of a stream that published more are checked per batch only).
pub const MAX_TOPICS_CHECKED: usize = 16;

impl PublishStream {
    /// A publish stream of `peer`.
    pub fn new(endpoint: Arc<Endpoint>, peer: Arc<Peer>) -> PublishStream {
        PublishStream { endpoint, peer, remote: None, topics: Arc::default() }
    }

    /// This stream, of a connection from `remote` (which its events name).
    pub fn from_remote(self, remote: Option<SocketAddr>) -> PublishStream {
        PublishStream { remote, ..self }
    }

    fn who(&self) -> Who<'_> {
        Who::of(&self.peer, self.remote)
    }

    /// What to do with `frame`, received at `now`; `store` answers a policy lookup the cache cannot.
    pub fn on_frame(&self, frame: Frame, store: &dyn Store, now: Instant) -> PublishAction {
        match frame {
            Frame::Publish { request_id, batch } => match self.check(batch, store, now) {
                Ok((topic, batch)) => {
                    self.remember(&topic);
                    let (messages, bytes) = (batch.header().count, batch.as_bytes().len());
                    self.endpoint.emit(&Event::PublishAccepted {
                        who: self.who(),
                        topic: &topic,
                        messages,
                        bytes,
                    });
                    PublishAction::Submit { request_id, topic, batch: Box::new(batch) }
                }
                Err((topic, e)) => {
                    debug!(principal = %self.peer.principal, error = %e, "publish refused");
                    let code = e.code();
                    self.endpoint.emit(&Event::PublishRefused {
                        who: self.who(),
                        topic: topic.as_ref(),
                        code,
                    });
                    PublishAction::Send(error_frame(Some(request_id), &e))
                }
            },
            Frame::Head { request_id, topic, publisher } => {
                self.head(request_id, topic, publisher, ChainId::LEGACY)
            }
            Frame::HeadOfChain { request_id, topic, publisher, chain } => {
                self.head(request_id, topic, publisher, chain)
            }
            _ => PublishAction::Send(error_frame(
                None,
                &Error::Protocol(sealpost_protocol::Error::Malformed("unexpected frame on a publish stream")),
            )),
        }
    }

    fn topics(&self) -> MutexGuard<'_, Vec<Topic>> {
        // A list only pushed to: nothing can leave it inconsistent, so a poisoned lock is taken.
        self.topics.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn remember(&self, topic: &Topic) {
        let mut topics = self.topics();
        if topics.len() < MAX_TOPICS_CHECKED && !topics.contains(topic) {
            topics.push(topic.clone());
        }
    }

    /// Whether the stream may go on under the ACL as it is now (after a reload): if the ACL no longer lets
    /// its principal publish on a topic the stream published on, the refusal to end the stream with
    /// (`NOT_AUTHORIZED`, after the answers already due), and the event says so. Each later batch is
    /// checked against the ACL of its time anyway; this ends the stream of a publisher that lost the
    /// right, instead of refusing its batches one by one.
    pub fn still_authorized(&self) -> Result<(), Refusal> {
        let acl = self.endpoint.acl();
        let lost =
            self.topics().iter().find(|t| !acl.allows(&self.peer.principal, t, Action::Publish)).cloned();
        let Some(topic) = lost else { return Ok(()) };
        info!(principal = %self.peer.principal, %topic, "publish stream ended: the ACL no longer allows it");
        self.endpoint.emit(&Event::StreamRevoked {
            who: self.who(),
            topic: &topic,
            action: crate::event::Action::Publish,
        });
        Err(Refusal::new(None, Error::NotAuthorized))
    }

    /// A `Head` or `HeadOfChain` request: read from the store if the peer may ask it ([`authorize_head`]).
    fn head(
        &self,
        request_id: RequestId,
        topic: Topic,
        publisher: PublicKey,
        chain: ChainId,
    ) -> PublishAction {
        match authorize_head(&self.peer, &self.endpoint.acl(), &topic, &publisher) {
            Ok(()) => PublishAction::ReadHead { request_id, topic, publisher, chain },
            Err(e) => PublishAction::Send(error_frame(Some(request_id), &e)),
        }
    }

    /// Decodes, authorizes and rate-limits a published batch. A refusal names the batch's topic if it
    /// decoded far enough to say (only for the events: a refusal must not tell the peer more).
    fn check(
        &self,
        batch: Bytes,
        store: &dyn Store,
        now: Instant,
    ) -> Result<(Topic, VerifiedBatch), (Option<Topic>, Error)> {
        let sealed =
            SealedBatch::decode(batch, self.endpoint.protocol_limits()).map_err(|e| (None, e.into()))?;
        let with_topic = |e: Error, topic: &Topic| (Some(topic.clone()), e);
        let policy = (self.endpoint.policies().current(&sealed.header().topic, store))
            .map_err(|e| with_topic(e, &sealed.header().topic))?;
        authorize_publisher(&self.peer, &self.endpoint.acl(), policy.as_deref(), sealed.header())
            .map_err(|e| with_topic(e, &sealed.header().topic))?;
        let topic = sealed.header().topic.clone();
        let verified = sealed.verify().map_err(|e| with_topic(e.into(), &topic))?;
        let (count, bytes) = (u64::from(verified.header().count), verified.as_bytes().len() as u64);
        self.endpoint
            .admission()
            .allow_publish(&self.peer.principal, count, bytes, now)
            .map_err(|e| with_topic(e, &topic))?;
        Ok((topic, verified))
    }

    /// The answer to the `Publish` request `request_id`, given the writer's answer; an error is told to
    /// the observer as [`Event::PublishFailed`].
    pub fn published(&self, request_id: RequestId, appended: Result<Appended>) -> Frame {
        match appended {
            Ok(Appended { first_offset, count, .. }) => Frame::Published { request_id, first_offset, count },
            Err(e) => {
                self.endpoint.emit(&Event::PublishFailed { who: self.who(), code: e.code() });
                error_frame(Some(request_id), &e)
            }
        }
    }

    /// The answer to the `Head` request `request_id`, given the publisher's last stored batch: where its
    /// chain continues, [`ChainHead::GENESIS`] if it has none.
    pub fn head_is(request_id: RequestId, head: Result<Option<PublisherRecord>>) -> Frame {
        match head {
            Ok(last) => Frame::HeadIs { request_id, head: crate::store::chain_head(last.as_ref()) },
            Err(e) => error_frame(Some(request_id), &e),
        }
    }

    /// The answer to a stream whose framing broke (`err`): sent once, then the stream is stopped.
    pub fn broken(err: &Error) -> Frame {
        error_frame(None, err)
    }
}

#[cfg(test)]
mod tests {
    use sealpost_protocol::{ChainHead, Digest, ErrorCode, Offset};

    use super::*;
    use crate::limits::ServerLimits;
    use crate::session::testing::{batch_bytes, endpoint, key, peer, topic};

    fn stream(
        who: &str,
        limits: ServerLimits,
        now: Instant,
    ) -> (PublishStream, Arc<crate::store::MemoryStore>) {
        let (endpoint, store) = endpoint(limits, now);
        (PublishStream::new(endpoint, Arc::new(peer(who))), store)
    }

    fn publish(request_id: u64, who: &str, on: &str) -> Frame {
        Frame::Publish { request_id, batch: batch_bytes(&key(who), on) }
    }

    fn refused(action: PublishAction) -> (Option<u64>, ErrorCode) {
        match action {
            PublishAction::Send(Frame::Error { request_id, code, .. }) => (request_id, code),
            other => panic!("expected an error frame, got {other:?}"),
        }
    }

    #[test]
    fn an_authorized_batch_goes_to_the_writer() {
        let now = Instant::now();
        let (alice, store) = stream("alice", ServerLimits::default(), now);
        match alice.on_frame(publish(7, "alice", "demo.chat"), store.as_ref(), now) {
            PublishAction::Submit { request_id: 7, topic: t, batch } => {
                assert_eq!(t, topic("demo.chat"));
                assert_eq!(batch.header().first_seq, 1);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_publish_stream_the_reloaded_acl_no_longer_allows_is_ended() {
        use crate::session::testing::{acl_from, ACL};
        let now = Instant::now();
        let (alice, store) = stream("alice", ServerLimits::default(), now);
        let idle = PublishStream::new(alice.endpoint.clone(), alice.peer.clone());
        let action = alice.on_frame(publish(1, "alice", "demo.chat"), store.as_ref(), now);
        assert!(matches!(action, PublishAction::Submit { .. }), "{action:?}");
        assert!(alice.still_authorized().is_ok());
        let deny = "[[rule]]\nprincipals = [\"alice\"]\ntopics = [\"demo.chat\"]\nactions = [\"publish\"]\neffect = \"deny\"\n";
        alice.endpoint.set_acl(Arc::new(acl_from(&format!("{ACL}\n{deny}"))));
        // A clone (as the shell's answer tasks hold) knows the stream's topics.
        let refusal = alice.clone().still_authorized().unwrap_err();
        assert_eq!((refusal.request_id, refusal.code()), (None, ErrorCode::NOT_AUTHORIZED));
        // A stream that published nothing on demo.chat goes on; its next batch there is refused.
        assert!(idle.still_authorized().is_ok());
        let (_, code) = refused(idle.on_frame(publish(2, "alice", "demo.chat"), store.as_ref(), now));
        assert_eq!(code, ErrorCode::NOT_AUTHORIZED);
    }

    #[test]
    fn each_refusal_answers_its_request() {
        let now = Instant::now();
        let (endpoint, store) = endpoint(ServerLimits::default(), now);
        let store = store.as_ref();
        let (alice, bob) = (
            PublishStream::new(endpoint.clone(), Arc::new(peer("alice"))),
            PublishStream::new(endpoint, Arc::new(peer("bob"))),
        );
        // The ACL lets bob only subscribe.
        assert_eq!(
            refused(bob.on_frame(publish(1, "bob", "demo.chat"), store, now)),
            (Some(1), ErrorCode::NOT_AUTHORIZED)
        );
        // No policy on demo.events: nobody publishes there.
        assert_eq!(
            refused(alice.on_frame(publish(2, "alice", "demo.events"), store, now)),
            (Some(2), ErrorCode::NOT_AUTHORIZED)
        );
        // Signed by a key alice's certificate does not bind.
        assert_eq!(
            refused(alice.on_frame(publish(3, "mallory", "demo.chat"), store, now)),
            (Some(3), ErrorCode::SIGNER_NOT_BOUND)
        );
        // Not a whole batch.
        let junk =
            Frame::Publish { request_id: 4, batch: batch_bytes(&key("alice"), "demo.chat").slice(..20) };
        assert_eq!(refused(alice.on_frame(junk, store, now)), (Some(4), ErrorCode::MALFORMED));
    }

    #[test]
    fn the_rate_limit_refuses_what_exceeds_it_until_time_refills_it() {
        let t0 = Instant::now();
        let limits = ServerLimits { publish_msgs_per_sec: 2, ..ServerLimits::default() };
        let (endpoint, store) = endpoint(limits, t0);
        let peer = Arc::new(peer("alice"));
        let _admitted = endpoint
            .admission()
            .open(&peer.principal, Arc::new(crate::session::testing::Windows::default()), t0)
            .unwrap();
        let alice = PublishStream::new(endpoint, peer);
        for n in 0..2 {
            assert!(matches!(
                alice.on_frame(publish(n, "alice", "demo.chat"), store.as_ref(), t0),
                PublishAction::Submit { .. }
            ));
        }
        assert_eq!(
            refused(alice.on_frame(publish(9, "alice", "demo.chat"), store.as_ref(), t0)),
            (Some(9), ErrorCode::RATE_LIMITED)
        );
        let later = t0 + std::time::Duration::from_millis(500);
        assert!(matches!(
            alice.on_frame(publish(10, "alice", "demo.chat"), store.as_ref(), later),
            PublishAction::Submit { .. }
        ));
    }

    #[test]
    fn a_head_request_is_read_from_the_store_for_a_publishers_own_key_or_a_subscriber() {
        let now = Instant::now();
        let (alice, store) = stream("alice", ServerLimits::default(), now);
        let mine =
            Frame::Head { request_id: 5, topic: topic("demo.chat"), publisher: key("alice").public_key() };
        assert!(matches!(
            alice.on_frame(mine, store.as_ref(), now),
            PublishAction::ReadHead { request_id: 5, .. }
        ));
        // Bob subscribes: he may read the head of a chain he verified, but not ask as a publisher of his
        // own (authorize.rs has the other cases).
        let (bob, _) = stream("bob", ServerLimits::default(), now);
        let theirs =
            Frame::Head { request_id: 6, topic: topic("demo.chat"), publisher: key("alice").public_key() };
        assert!(matches!(
            bob.on_frame(theirs, store.as_ref(), now),
            PublishAction::ReadHead { request_id: 6, .. }
        ));
        let denied =
            Frame::Head { request_id: 7, topic: topic("demo.chat"), publisher: key("bob").public_key() };
        assert_eq!(refused(bob.on_frame(denied, store.as_ref(), now)), (Some(7), ErrorCode::NOT_AUTHORIZED));
    }

    #[test]
    fn a_head_of_chain_request_reads_that_chain_under_the_same_authorization_as_head() {
        let now = Instant::now();
        let (alice, store) = stream("alice", ServerLimits::default(), now);
        let chain = ChainId([4; 16]);
        let of_chain = |request_id, who: &str| Frame::HeadOfChain {
            request_id,
            topic: topic("demo.chat"),
            publisher: key(who).public_key(),
            chain,
        };
        assert!(matches!(
            alice.on_frame(of_chain(5, "alice"), store.as_ref(), now),
            PublishAction::ReadHead { request_id: 5, chain: c, .. } if c == chain
        ));
        let legacy =
            Frame::Head { request_id: 6, topic: topic("demo.chat"), publisher: key("alice").public_key() };
        assert!(matches!(
            alice.on_frame(legacy, store.as_ref(), now),
            PublishAction::ReadHead { request_id: 6, chain: ChainId::LEGACY, .. }
        ));
        let (bob, _) = stream("bob", ServerLimits::default(), now);
        assert!(matches!(
            bob.on_frame(of_chain(7, "alice"), store.as_ref(), now),
            PublishAction::ReadHead { request_id: 7, chain: c, .. } if c == chain
        ));
        assert_eq!(
            refused(bob.on_frame(of_chain(8, "bob"), store.as_ref(), now)),
            (Some(8), ErrorCode::NOT_AUTHORIZED)
        );
    }

    #[test]
    fn the_chain_head_answer_continues_the_stored_chain_or_starts_one() {
        let record = PublisherRecord { first_seq: 5, count: 3, offset: Offset(40), digest: Digest([7; 32]) };
        assert_eq!(
            PublishStream::head_is(1, Ok(Some(record))),
            Frame::HeadIs { request_id: 1, head: ChainHead { next_seq: 8, prev_digest: Digest([7; 32]) } }
        );
        assert_eq!(
            PublishStream::head_is(2, Ok(None)),
            Frame::HeadIs { request_id: 2, head: ChainHead::GENESIS }
        );
        let failed = PublishStream::head_is(3, Err(Error::Storage("disk".into())));
        assert!(matches!(failed, Frame::Error { request_id: Some(3), code: ErrorCode::INTERNAL, .. }));
    }

    #[test]
    fn the_writers_answer_becomes_published_or_an_error() {
        let (stream, _) = stream("alice", ServerLimits::default(), Instant::now());
        let appended = Appended { first_offset: Offset(10), count: 2, duplicate: true };
        assert_eq!(
            stream.published(4, Ok(appended)),
            Frame::Published { request_id: 4, first_offset: Offset(10), count: 2 }
        );
        let conflict = stream.published(5, Err(Error::SequenceConflict { expected: 3, got: 1 }));
        assert!(matches!(
            conflict,
            Frame::Error { request_id: Some(5), code: ErrorCode::SEQUENCE_CONFLICT, .. }
        ));
    }

    #[test]
    fn an_unexpected_frame_is_answered_and_the_stream_goes_on() {
        let now = Instant::now();
        let (alice, store) = stream("alice", ServerLimits::default(), now);
        let ack = Frame::Ack { subscription: 1, next_offset: Offset(0) };
        assert_eq!(refused(alice.on_frame(ack, store.as_ref(), now)), (None, ErrorCode::MALFORMED));
        assert!(matches!(
            alice.on_frame(publish(1, "alice", "demo.chat"), store.as_ref(), now),
            PublishAction::Submit { .. }
        ));
    }
}
