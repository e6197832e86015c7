//! The session of one client connection: its peer, budgets, stream slots and subscriptions, and what
//! kind each of its streams is.
//!
//! A [`Connection`] exists from the moment the endpoint admits an authenticated connection
//! ([`Connection::open`]) until it is dropped, which gives back the connection's place among its
//! principal's and re-shares the principal's windows. It is shared (`Arc`) by the connection's stream
//! tasks; its own state is a counter and an id sequence.
//!
//! Every stream is opened by the client and its first frame decides its kind ([`Connection::stream_kind`]):
//! `Head` or `Publish` a publish stream, `GetPolicies`, `GetPolicyHistory` or `PutPolicy` a policy stream, `Subscribe` a
//! subscription; any other first frame refuses the stream.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use sealpost_protocol::Frame;

use super::admin::AdminStream;
use super::admission::{ConnectionId, FlowControl};
use super::endpoint::Endpoint;
use super::policy_stream::PolicyStream;
use super::publish::PublishStream;
use super::reply::{Close, ConnectionRefused, Refusal};
use super::subscribe::{Subscribing, SubscriptionSlot};
use crate::budget::{Budget, Reservation};
use crate::event::{Event, Refused, Who};
use crate::tls::{ClientVerifier, Peer};
use crate::{Error, Result};
use rustls::pki_types::{CertificateDer, UnixTime};

/// The kinds of stream, decided by a stream's first frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StreamKind {
    /// `Publish` and `Head` requests: [`PublishStream`].
    Publish,
    /// `GetPolicies` and `PutPolicy` requests: [`PolicyStream`].
    Policies,
    /// One `Subscribe`, then acks: [`Connection::subscribe`].
    Subscription,
    /// `Admin` queries: [`AdminStream`].
    Admin,
}

/// See the [module documentation](self).
pub struct Connection {
    endpoint: Arc<Endpoint>,
    peer: Arc<Peer>,
    remote: Option<SocketAddr>,
    id: ConnectionId,
    inflight: Budget,
    streams: Budget,
    /// Subscriptions open now.
    subscriptions: Arc<AtomicUsize>,
    /// The next subscription id.
    next_subscription: AtomicU64,
}

impl Connection {
    /// Admits an authenticated connection at `now`: `peer` is what its certificate says (an error if it
    /// breaks the principal rule), and `flow` sets its windows. Refused with the code to close it with if the
    /// certificate was refused or its principal has `max_connections_per_principal` connections.
    pub fn open(
        endpoint: &Arc<Endpoint>,
        peer: Result<Peer>,
        flow: Arc<dyn FlowControl>,
        now: Instant,
    ) -> Result<Connection, ConnectionRefused> {
        Self::open_from(endpoint, None, peer, flow, now)
    }

    /// [`open`](Self::open) for a connection from `remote`, which its events name.
    pub fn open_from(
        endpoint: &Arc<Endpoint>,
        remote: Option<SocketAddr>,
        peer: Result<Peer>,
        flow: Arc<dyn FlowControl>,
        now: Instant,
    ) -> Result<Connection, ConnectionRefused> {
        let peer = peer.map_err(|error| {
            let reason = Refused::CertificateRefused;
            endpoint.emit(&Event::ConnectionRefused { remote, principal: None, fingerprint: None, reason });
            ConnectionRefused { close: Close::CERTIFICATE_REFUSED, error }
        })?;
        let admitted = endpoint.admission().open(&peer.principal, flow, now).map_err(|error| {
            endpoint.emit(&Event::ConnectionRefused {
                remote,
                principal: Some(&peer.principal),
                fingerprint: Some(&peer.fingerprint),
                reason: Refused::PrincipalLimit,
            });
            ConnectionRefused { close: Close::TOO_MANY_CONNECTIONS, error }
        })?;
        endpoint.emit(&Event::ConnectionAccepted { who: Who::of(&peer, remote) });
        Ok(Connection {
            endpoint: endpoint.clone(),
            peer: Arc::new(peer),
            remote,
            id: admitted.id,
            inflight: admitted.inflight,
            streams: admitted.streams,
            subscriptions: Arc::new(AtomicUsize::new(0)),
            next_subscription: AtomicU64::new(1),
        })
    }

    /// Who is on the other end.
    pub fn peer(&self) -> &Arc<Peer> {
        &self.peer
    }

    /// The broker's session state.
    pub fn endpoint(&self) -> &Arc<Endpoint> {
        &self.endpoint
    }

    /// Who the connection's events are about.
    pub fn who(&self) -> Who<'_> {
        Who::of(&self.peer, self.remote)
    }

    /// What the connection's frames and subscription reads are reserved from.
    pub fn budget(&self) -> &Budget {
        &self.inflight
    }

    /// A slot for a stream the client opened, held until the stream ends; refused (reset the stream with
    /// the error's code) if the principal or the broker has all its streams open.
    pub fn admit_stream(&self) -> Result<Reservation> {
        self.streams.try_reserve(1).ok_or_else(|| {
            let error = Error::LimitExceeded("max_streams_per_principal or max_streams");
            self.endpoint.emit(&Event::StreamRefused { who: self.who(), code: error.code() });
            error
        })
    }

    /// The kind of a stream whose first frame is `first`, or its refusal.
    pub fn stream_kind(&self, first: &Frame) -> Result<StreamKind, Refusal> {
        match first {
            Frame::Head { .. } | Frame::HeadOfChain { .. } | Frame::Publish { .. } => Ok(StreamKind::Publish),
            Frame::GetPolicies { .. } | Frame::GetPolicyHistory { .. } | Frame::PutPolicy { .. } => {
                Ok(StreamKind::Policies)
            }
            Frame::Subscribe { .. } | Frame::SubscribeShared { .. } => Ok(StreamKind::Subscription),
            Frame::Admin { .. } => Ok(StreamKind::Admin),
            _ => {
                let refusal = Refusal::new(None, unexpected_first_frame());
                self.endpoint.emit(&Event::StreamRefused { who: self.who(), code: refusal.code() });
                Err(refusal)
            }
        }
    }

    /// The session of a publish stream.
    pub fn publish_stream(&self) -> PublishStream {
        PublishStream::new(self.endpoint.clone(), self.peer.clone()).from_remote(self.remote)
    }

    /// The session of a policy stream.
    pub fn policy_stream(&self) -> PolicyStream {
        PolicyStream::new(self.endpoint.clone(), self.peer.clone()).from_remote(self.remote)
    }

    /// The session of an admin stream.
    pub fn admin_stream(&self) -> AdminStream {
        AdminStream::new(self.endpoint.clone(), self.peer.clone(), self.remote)
    }

    /// Whether the connection is still admitted after a reload changed how client certificates are
    /// verified: `chain` is the certificate chain the connection presented in its handshake (leaf first),
    /// checked by `verifier` at `now`. If it no longer verifies, the connection must be closed with the
    /// [`Close`] returned (the event says so); its streams end with it.
    pub fn recheck(
        &self,
        verifier: &ClientVerifier,
        chain: &[CertificateDer<'static>],
        now: UnixTime,
    ) -> Result<(), (Close, Error)> {
        verifier.admits(chain, now).map_err(|error| {
            self.endpoint.emit(&Event::ConnectionRevoked { who: self.who() });
            (Close::CERTIFICATE_REVOKED, error)
        })
    }

    /// A subscription stream's first frame: a `Subscribe` (or a `SubscribeShared`, whose group name is a
    /// durable subscription name) takes a subscription slot of the connection and must pass the ACL; the
    /// refusal answers its request.
    pub fn subscribe(&self, first: Frame) -> Result<Subscribing, Refusal> {
        let (request_id, topic, from, durable, shared) = match first {
            Frame::Subscribe { request_id, topic, from, durable } => {
                (request_id, topic, from, durable, false)
            }
            Frame::SubscribeShared { request_id, topic, from, group } => {
                (request_id, topic, from, Some(group), true)
            }
            _ => return Err(Refusal::new(None, unexpected_first_frame())),
        };
        let max = self.endpoint.limits().max_subscriptions_per_connection as usize;
        let Some(slot) = SubscriptionSlot::take(&self.subscriptions, max) else {
            let err = Error::LimitExceeded("max_subscriptions_per_connection");
            self.endpoint.emit(&Event::SubscribeRefused {
                who: self.who(),
                topic: &topic,
                durable: durable.as_deref(),
                code: err.code(),
            });
            return Err(Refusal::new(Some(request_id), err));
        };
        let id = self.next_subscription.fetch_add(1, Ordering::Relaxed);
        let request = (request_id, topic, from, durable, shared);
        Subscribing::new(&self.endpoint, (&self.peer, self.remote), id, slot, request)
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.endpoint.admission().close(&self.peer.principal, self.id);
        self.endpoint.emit(&Event::ConnectionClosed { who: self.who() });
    }
}

fn unexpected_first_frame() -> Error {
    Error::Protocol(sealpost_protocol::Error::Malformed("unexpected first frame on a stream"))
}

#[cfg(test)]
mod tests {
    use sealpost_protocol::{ErrorCode, Offset, StartAt};

    use super::*;
    use crate::limits::ServerLimits;
    use crate::session::testing::{endpoint, peer, topic, Windows};

    fn open(endpoint: &Arc<Endpoint>, who: &str) -> Result<Connection, ConnectionRefused> {
        Connection::open(endpoint, Ok(peer(who)), Arc::new(Windows::default()), Instant::now())
    }

    fn subscribe(request_id: u64) -> Frame {
        Frame::Subscribe { request_id, topic: topic("demo.chat"), from: StartAt::Earliest, durable: None }
    }

    #[test]
    fn a_refused_certificate_or_one_connection_too_many_is_closed_with_its_code() {
        let limits = ServerLimits { max_connections_per_principal: 1, ..ServerLimits::default() };
        let (endpoint, _) = endpoint(limits, Instant::now());
        let refused = Connection::open(
            &endpoint,
            Err(Error::Config("no sealpost:// URI".into())),
            Arc::new(Windows::default()),
            Instant::now(),
        );
        assert_eq!(refused.err().map(|r| r.close), Some(Close::CERTIFICATE_REFUSED));
        let first = open(&endpoint, "alice").unwrap();
        assert_eq!(open(&endpoint, "alice").err().map(|r| r.close), Some(Close::TOO_MANY_CONNECTIONS));
        // Dropping a connection gives its place back.
        drop(first);
        assert!(open(&endpoint, "alice").is_ok());
    }

    #[test]
    fn the_first_frame_decides_the_kind_of_stream() {
        let (endpoint, _) = endpoint(ServerLimits::default(), Instant::now());
        let alice = open(&endpoint, "alice").unwrap();
        let publisher = crate::session::testing::key("alice").public_key();
        let kinds = [
            (Frame::Head { request_id: 1, topic: topic("demo.chat"), publisher }, StreamKind::Publish),
            (
                Frame::HeadOfChain {
                    request_id: 1,
                    topic: topic("demo.chat"),
                    publisher,
                    chain: sealpost_protocol::ChainId([3; 16]),
                },
                StreamKind::Publish,
            ),
            (Frame::Publish { request_id: 1, batch: bytes::Bytes::new() }, StreamKind::Publish),
            (Frame::GetPolicies { request_id: 1, topic: topic("demo.chat") }, StreamKind::Policies),
            (Frame::PutPolicy { request_id: 1, policy: bytes::Bytes::new() }, StreamKind::Policies),
            (
                Frame::GetPolicyHistory { request_id: 1, topic: topic("demo.chat"), before: None, max: 1 },
                StreamKind::Policies,
            ),
            (subscribe(1), StreamKind::Subscription),
        ];
        for (frame, kind) in kinds {
            assert_eq!(alice.stream_kind(&frame).unwrap(), kind, "{}", frame.name());
        }
        for frame in
            [Frame::Ack { subscription: 1, next_offset: Offset(0) }, Frame::PolicyStored { request_id: 1 }]
        {
            let refusal = alice.stream_kind(&frame).unwrap_err();
            assert_eq!((refusal.request_id, refusal.code()), (None, ErrorCode::MALFORMED));
        }
    }

    #[test]
    fn subscriptions_beyond_the_connections_limit_are_refused_until_one_ends() {
        let limits = ServerLimits { max_subscriptions_per_connection: 2, ..ServerLimits::default() };
        let (endpoint, _) = endpoint(limits, Instant::now());
        let bob = open(&endpoint, "bob").unwrap();
        let first = bob.subscribe(subscribe(1)).unwrap();
        let _second = bob.subscribe(subscribe(2)).unwrap();
        let refusal = bob.subscribe(subscribe(3)).unwrap_err();
        assert_eq!((refusal.request_id, refusal.code()), (Some(3), ErrorCode::LIMIT_EXCEEDED));
        drop(first);
        assert!(bob.subscribe(subscribe(4)).is_ok());
        // A refused subscription holds no slot.
        let mallory = open(&endpoint, "mallory").unwrap();
        for n in 0..3 {
            assert_eq!(mallory.subscribe(subscribe(n)).unwrap_err().code(), ErrorCode::NOT_AUTHORIZED);
        }
    }

    #[test]
    fn a_connection_whose_certificate_a_reloaded_crl_revokes_is_closed_and_others_are_not() {
        use crate::pki::{DevCa, LeafSpec};
        use rustls::pki_types::pem::PemObject;
        let ca = DevCa::generate("test CA").unwrap();
        let server = ca.issue(&LeafSpec::local_server()).unwrap();
        let (alice_cert, bob_cert) = (
            ca.issue(&LeafSpec::client("alice", &[])).unwrap(),
            ca.issue(&LeafSpec::client("bob", &[])).unwrap(),
        );
        let chain = |pem: &str| vec![CertificateDer::from_pem_slice(pem.as_bytes()).unwrap()];
        let verifier = |crls: Vec<String>| {
            crate::tls::client_verifier(&crate::tls::TlsMaterial {
                client_ca_pem: ca.cert_pem(),
                cert_chain_pem: server.cert_pem.clone(),
                key_pem: server.key_pem.clone(),
                crls_pem: crls,
                crl_expired: crate::crl::CrlExpired::Warn,
            })
            .unwrap()
        };
        let (endpoint, _) = endpoint(ServerLimits::default(), Instant::now());
        let (alice, bob) = (open(&endpoint, "alice").unwrap(), open(&endpoint, "bob").unwrap());
        let now = UnixTime::now();
        let before = verifier(Vec::new());
        assert!(alice.recheck(&before, &chain(&alice_cert.cert_pem), now).is_ok());
        let after = verifier(vec![ca.crl(&[&alice_cert]).unwrap()]);
        let (close, _) = alice.recheck(&after, &chain(&alice_cert.cert_pem), now).unwrap_err();
        assert_eq!(close, Close::CERTIFICATE_REVOKED);
        assert!(bob.recheck(&after, &chain(&bob_cert.cert_pem), now).is_ok());
    }

    #[test]
    fn streams_beyond_the_principals_slots_are_refused() {
        let limits = ServerLimits { max_streams_per_principal: 2, ..ServerLimits::default() };
        let (endpoint, _) = endpoint(limits, Instant::now());
        let (a, b) = (open(&endpoint, "alice").unwrap(), open(&endpoint, "alice").unwrap());
        let _held = (a.admit_stream().unwrap(), b.admit_stream().unwrap());
        assert_eq!(a.admit_stream().unwrap_err().code(), ErrorCode::LIMIT_EXCEEDED);
        assert!(open(&endpoint, "bob").unwrap().admit_stream().is_ok());
    }
}
