//! Events: what happened in the broker that an operator counts or audits, and the [`Observer`]s that
//! listen.
//!
//! The [`session`](crate::session) emits an [`Event`] at each of its decisions about a peer (a connection
//! accepted or refused, a publish, a subscription, a policy, a stream refused) and the shell emits the few
//! that happen before a session exists (a handshake refused, `max_connections` reached) or around it
//! (shutdown, a configuration reload). Each event says who (principal, certificate fingerprint, remote address), what (the action
//! and its topic), and the decision with its reason as a stable error-code name ([`code_name`]): what a
//! metrics sink counts and what an audit entry records.
//!
//! # Guarantees
//!
//! - **No payloads, no keys.** An event carries names, numbers and codes only: never a payload, a batch, a
//!   key or a whole certificate.
//! - **No clock, no I/O.** Building and emitting an event reads no clock and performs no I/O; a sink that
//!   needs the time reads its own clock. Events borrow what they name, so emitting one allocates nothing.
//! - **Observers are cheap.** [`Observer::event`] is called on the publish path, inside the session's
//!   decisions: an implementation must not block (atomics, or a non-blocking channel send) and must not
//!   call back into the session.
//!
//! # What it does not do
//!
//! It does not order events across threads (two connections' events reach an observer in whatever order
//! their tasks run), deliver them reliably (a sink that drops events under load may), or time anything.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use sealpost_protocol::{ErrorCode, Principal, Topic};

use crate::tls::{Fingerprint, Peer};

/// Who an event is about: what a verified certificate says, and where the connection comes from.
#[derive(Clone, Copy, Debug)]
pub struct Who<'a> {
    /// The principal, from the certificate.
    pub principal: &'a Principal,
    /// The SHA-256 fingerprint of the leaf certificate.
    pub fingerprint: &'a Fingerprint,
    /// The remote address, if the driver gave it.
    pub remote: Option<SocketAddr>,
}

impl<'a> Who<'a> {
    /// `peer`, connected from `remote`.
    pub fn of(peer: &'a Peer, remote: Option<SocketAddr>) -> Who<'a> {
        Who { principal: &peer.principal, fingerprint: &peer.fingerprint, remote }
    }
}

/// Why a connection was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Refused {
    /// The TLS handshake failed for another reason than the client certificate (wrong ALPN, a protocol
    /// error, a timeout).
    Handshake,
    /// The client presented no certificate.
    NoCertificate,
    /// The client certificate did not verify: unknown issuer, expired, revoked, wrong usage.
    BadCertificate,
    /// The certificate verified but breaks the principal rule ([`crate::tls`]).
    CertificateRefused,
    /// `max_connections` connections were open.
    MaxConnections,
    /// The principal had `max_connections_per_principal` connections.
    PrincipalLimit,
}

impl Refused {
    /// Every reason, in a fixed order.
    pub const ALL: [Refused; 6] = [
        Refused::Handshake,
        Refused::NoCertificate,
        Refused::BadCertificate,
        Refused::CertificateRefused,
        Refused::MaxConnections,
        Refused::PrincipalLimit,
    ];

    /// A stable name, for labels and audit entries.
    pub fn name(self) -> &'static str {
        match self {
            Refused::Handshake => "handshake",
            Refused::NoCertificate => "no_client_certificate",
            Refused::BadCertificate => "bad_client_certificate",
            Refused::CertificateRefused => "certificate_refused",
            Refused::MaxConnections => "max_connections",
            Refused::PrincipalLimit => "max_connections_per_principal",
        }
    }

    /// The reason a failed handshake's error `text` gives (rustls' alert and error names, as quinn reports
    /// them). Only the client certificate cases are told apart; anything else is [`Refused::Handshake`].
    pub fn of_handshake_error(text: &str) -> Refused {
        if text.contains("NoCertificatesPresented") || text.contains("no certificates") {
            Refused::NoCertificate
        } else if text.contains("certificate") || text.contains("Certificate") {
            Refused::BadCertificate
        } else {
            Refused::Handshake
        }
    }
}

/// The action a refusal of a request refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Action {
    /// Publishing a batch.
    Publish,
    /// Subscribing.
    Subscribe,
    /// Reading a topic's policies.
    GetPolicies,
    /// Storing a topic policy.
    PutPolicy,
    /// Opening a stream.
    Stream,
    /// An administrative query (`sealpost admin`).
    Admin,
}

impl Action {
    /// A stable name, for labels and audit entries.
    pub fn name(self) -> &'static str {
        match self {
            Action::Publish => "publish",
            Action::Subscribe => "subscribe",
            Action::GetPolicies => "get_policies",
            Action::PutPolicy => "put_policy",
            Action::Stream => "stream",
            Action::Admin => "admin",
        }
    }
}

/// What happened. See the [module documentation](self).
#[derive(Clone, Copy, Debug)]
#[non_exhaustive]
pub enum Event<'a> {
    /// A connection passed TLS and admission.
    ConnectionAccepted {
        /// Who.
        who: Who<'a>,
    },
    /// A connection was refused. What is known of the peer depends on how far it got: nothing but the
    /// address before the handshake, a fingerprint if it presented a certificate.
    ConnectionRefused {
        /// The remote address, if known.
        remote: Option<SocketAddr>,
        /// The principal, if the certificate named one.
        principal: Option<&'a Principal>,
        /// The leaf certificate's fingerprint, if it presented one.
        fingerprint: Option<&'a Fingerprint>,
        /// Why.
        reason: Refused,
    },
    /// An accepted connection ended.
    ConnectionClosed {
        /// Who.
        who: Who<'a>,
    },
    /// A stream was refused before its first frame, or because of it: a limit, or a malformed first frame.
    StreamRefused {
        /// Who.
        who: Who<'a>,
        /// The code the stream was reset or answered with.
        code: ErrorCode,
    },
    /// A batch was authorized and handed to the writer (the writer may still find it a sequence conflict
    /// or fail to store it: [`Event::PublishFailed`]).
    PublishAccepted {
        /// Who.
        who: Who<'a>,
        /// The batch's topic.
        topic: &'a Topic,
        /// Messages in the batch.
        messages: u32,
        /// Bytes of the sealed batch.
        bytes: usize,
    },
    /// A publish was refused by the session (decoding, ACL, signer binding, policy, rate limit: a
    /// rate-limited publish is this event with `RATE_LIMITED`); `topic` is `None` when the batch did not
    /// decode far enough to name one.
    PublishRefused {
        /// Who.
        who: Who<'a>,
        /// The batch's topic, if it decoded.
        topic: Option<&'a Topic>,
        /// Why.
        code: ErrorCode,
    },
    /// An accepted publish the writer answered with an error (sequence conflict, storage full, storage
    /// failure, shutting down).
    PublishFailed {
        /// Who.
        who: Who<'a>,
        /// Why.
        code: ErrorCode,
    },
    /// Stored batches were delivered to a subscriber (one event per batch).
    Delivered {
        /// Who.
        who: Who<'a>,
        /// The topic.
        topic: &'a Topic,
        /// Messages in the batch.
        messages: u32,
        /// Bytes of the sealed batch.
        bytes: usize,
    },
    /// A durable subscription's subscriber acknowledged messages (one event per `Ack` frame; acks of a
    /// subscription that is not durable are not counted: they commit nothing).
    AckReceived {
        /// Who.
        who: Who<'a>,
        /// The topic.
        topic: &'a Topic,
    },
    /// A durable subscription's offset was committed durably: the newest of the acks received since the
    /// last commit (the others were replaced by it, [`crate::session::Subscription`]).
    OffsetCommitted {
        /// Who.
        who: Who<'a>,
        /// The topic.
        topic: &'a Topic,
    },
    /// A subscriber joined a shared durable subscription's group (before its `SubscribeAccepted`; a
    /// subscription then refused is followed by a `SharedLeft`).
    SharedJoined {
        /// Who.
        who: Who<'a>,
        /// The topic.
        topic: &'a Topic,
    },
    /// A member left a shared durable subscription's group (its stream ended); its chains went to the
    /// others.
    SharedLeft {
        /// The topic.
        topic: &'a Topic,
    },
    /// A member of a shared durable subscription was sent a `Rewind`: it was given chains whose
    /// unacknowledged batches lie behind it, and reads them again.
    SharedRewind {
        /// Who.
        who: Who<'a>,
        /// The topic.
        topic: &'a Topic,
    },
    /// A member of a shared durable subscription left a batch unacknowledged longer than
    /// `limits.shared_ack_wait_ms`: its stream is ended and its work goes to the other members.
    SharedAckOverdue {
        /// Who.
        who: Who<'a>,
        /// The topic.
        topic: &'a Topic,
    },
    /// A subscription started.
    SubscribeAccepted {
        /// Who.
        who: Who<'a>,
        /// Its topic.
        topic: &'a Topic,
        /// The durable subscription's name, if durable (chosen by the peer: bound it before using it as a
        /// label).
        durable: Option<&'a str>,
        /// Whether this created the durable subscription (no committed offset was stored).
        created: bool,
    },
    /// A subscription was refused.
    SubscribeRefused {
        /// Who.
        who: Who<'a>,
        /// Its topic.
        topic: &'a Topic,
        /// The durable name asked for, if any.
        durable: Option<&'a str>,
        /// Why.
        code: ErrorCode,
    },
    /// Reading a topic's policies (`GetPolicies`, `GetPolicyHistory`) was refused: what a client that may
    /// neither publish nor subscribe is told first.
    PolicyReadRefused {
        /// Who.
        who: Who<'a>,
        /// The topic.
        topic: &'a Topic,
        /// Why.
        code: ErrorCode,
    },
    /// A topic policy was stored durably and made current.
    PolicyStored {
        /// Who.
        who: Who<'a>,
        /// Its topic.
        topic: &'a Topic,
        /// Its epoch.
        epoch: u64,
    },
    /// A topic policy was refused, or failed to be stored; `topic` and `epoch` are `None` if it did not
    /// decode.
    PolicyRefused {
        /// Who.
        who: Who<'a>,
        /// Its topic, if it decoded.
        topic: Option<&'a Topic>,
        /// The epoch it claimed, if it decoded.
        epoch: Option<u64>,
        /// Why.
        code: ErrorCode,
    },
    /// An administrative query was answered (`sealpost admin`).
    AdminAnswered {
        /// Who.
        who: Who<'a>,
        /// What was asked: `stats`, `topics`, `subscriptions` or `connections`.
        query: &'static str,
    },
    /// An administrative query was refused (a principal that does not administer the whole broker).
    AdminRefused {
        /// Who.
        who: Who<'a>,
        /// Why.
        code: ErrorCode,
    },
    /// The broker started shutting down.
    Shutdown,
    /// The configuration was reloaded ([`crate::reload`]): what `changes` names now applies.
    ConfigReloaded {
        /// The configuration file.
        file: &'a Path,
        /// What changed, as [`Changes`](crate::reload::Changes) shows it (`acl, tls.crls`, or `nothing`).
        changes: &'a str,
    },
    /// A reload was refused: the broker keeps its running configuration.
    ConfigReloadRefused {
        /// The configuration file.
        file: &'a Path,
        /// Why, naming the file or setting at fault (never a key's bytes).
        reason: &'a str,
    },
    /// An accepted connection is closed because, after a reload, its certificate no longer verifies
    /// (revoked by a CRL, or no longer chaining to the CA bundle, or expired since it connected).
    ConnectionRevoked {
        /// Who.
        who: Who<'a>,
    },
    /// An open stream is ended with `NOT_AUTHORIZED` because, after a reload, the ACL no longer allows its
    /// `action` on its topic.
    StreamRevoked {
        /// Who.
        who: Who<'a>,
        /// The stream's topic.
        topic: &'a Topic,
        /// What the ACL no longer allows: [`Action::Subscribe`] or [`Action::Publish`].
        action: Action,
    },
}

impl Event<'_> {
    /// A stable name of the kind of event, for labels and audit entries.
    pub fn name(&self) -> &'static str {
        match self {
            Event::ConnectionAccepted { .. } => "connection_accepted",
            Event::ConnectionRefused { .. } => "connection_refused",
            Event::ConnectionClosed { .. } => "connection_closed",
            Event::StreamRefused { .. } => "stream_refused",
            Event::PublishAccepted { .. } => "publish_accepted",
            Event::PublishRefused { .. } => "publish_refused",
            Event::PublishFailed { .. } => "publish_failed",
            Event::Delivered { .. } => "delivered",
            Event::AckReceived { .. } => "ack_received",
            Event::OffsetCommitted { .. } => "offset_committed",
            Event::SharedJoined { .. } => "shared_joined",
            Event::SharedLeft { .. } => "shared_left",
            Event::SharedRewind { .. } => "shared_rewind",
            Event::SharedAckOverdue { .. } => "shared_ack_overdue",
            Event::SubscribeAccepted { .. } => "subscribe_accepted",
            Event::SubscribeRefused { .. } => "subscribe_refused",
            Event::PolicyReadRefused { .. } => "policy_read_refused",
            Event::PolicyStored { .. } => "policy_stored",
            Event::PolicyRefused { .. } => "policy_refused",
            Event::AdminAnswered { .. } => "admin_answered",
            Event::AdminRefused { .. } => "admin_refused",
            Event::Shutdown => "shutdown",
            Event::ConfigReloaded { .. } => "config_reloaded",
            Event::ConfigReloadRefused { .. } => "config_reload_refused",
            Event::ConnectionRevoked { .. } => "connection_revoked",
            Event::StreamRevoked { .. } => "stream_revoked",
        }
    }
}

/// The stable name of an error code (`NOT_AUTHORIZED`), or `"UNKNOWN"` for a code this build does not
/// know: what labels and audit entries carry.
pub fn code_name(code: ErrorCode) -> &'static str {
    code.name().unwrap_or("UNKNOWN")
}

/// Something that listens to events. See the [module documentation](self) for what an implementation
/// must not do.
pub trait Observer: Send + Sync {
    /// `event` happened.
    fn event(&self, event: &Event<'_>);
}

/// The observer that ignores everything: the default of an [`Endpoint`](crate::session::Endpoint).
#[derive(Clone, Copy, Debug, Default)]
pub struct Ignore;

impl Observer for Ignore {
    fn event(&self, _event: &Event<'_>) {}
}

/// Several observers, each told every event in turn: metrics and an audit log both listen.
#[derive(Clone, Default)]
pub struct Observers(Vec<Arc<dyn Observer>>);

impl Observers {
    /// No observer yet.
    pub fn new() -> Observers {
        Observers(Vec::new())
    }

    /// These, and `observer`.
    pub fn with(mut self, observer: Arc<dyn Observer>) -> Observers {
        self.0.push(observer);
        self
    }
}

impl Observer for Observers {
    fn event(&self, event: &Event<'_>) {
        for observer in &self.0 {
            observer.event(event);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[derive(Default)]
    struct Count(AtomicUsize);

    impl Observer for Count {
        fn event(&self, _: &Event<'_>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    #[test]
    fn observers_tell_every_sink_every_event() {
        let (a, b) = (Arc::new(Count::default()), Arc::new(Count::default()));
        let all = Observers::new().with(a.clone()).with(b.clone());
        all.event(&Event::Shutdown);
        all.event(&Event::ConnectionRefused {
            remote: None,
            principal: None,
            fingerprint: None,
            reason: Refused::MaxConnections,
        });
        assert_eq!((a.0.load(Ordering::Relaxed), b.0.load(Ordering::Relaxed)), (2, 2));
    }

    #[test]
    fn handshake_errors_are_told_apart_by_what_the_certificate_did() {
        let no_cert = "the cryptographic handshake failed: error 116: peer sent no certificates";
        assert_eq!(Refused::of_handshake_error(no_cert), Refused::NoCertificate);
        let unknown = "the cryptographic handshake failed: error 48: invalid peer certificate: UnknownIssuer";
        assert_eq!(Refused::of_handshake_error(unknown), Refused::BadCertificate);
        assert_eq!(Refused::of_handshake_error("timed out"), Refused::Handshake);
    }

    #[test]
    fn code_names_are_the_tables_names() {
        assert_eq!(code_name(ErrorCode::NOT_AUTHORIZED), "NOT_AUTHORIZED");
        assert_eq!(code_name(ErrorCode(9999)), "UNKNOWN");
    }
}
