//! The endpoint: what every connection of one broker shares.
//!
//! An [`Endpoint`] holds the operator's ACL, the limits, the [`Admission`] counts and budgets and the
//! [`PolicyCache`]. It is built once per broker and shared (`Arc`) by the session of every connection
//! ([`Connection`](super::Connection)) and of every stream; all its state is behind its parts' own short
//! locks, so it can be used from any thread. It performs no I/O.
//!
//! It also holds the [`Observer`] that the session tells its decisions to ([`crate::event`]); by default
//! one that ignores them ([`Endpoint::with_observer`] sets another).

use std::net::SocketAddr;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Instant;

use sealpost_protocol::{Limits, PublicKey};

use super::admission::Admission;
use super::durable::DurableLeases;
use super::group::Groups;
use super::policies::PolicyCache;
use crate::acl::Acl;
use crate::budget::Reservation;
use crate::event::{Event, Ignore, Observer, Refused};
use crate::limits::ServerLimits;
use crate::tls::Fingerprint;

/// See the [module documentation](self).
pub struct Endpoint {
    /// Replaced whole by a reload ([`Endpoint::set_acl`]); each decision reads the one current then.
    acl: RwLock<Arc<Acl>>,
    limits: ServerLimits,
    protocol: Limits,
    admission: Admission,
    policies: PolicyCache,
    durables: Arc<DurableLeases>,
    groups: Groups,
    observer: Arc<dyn Observer>,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint").field("limits", &self.limits).finish_non_exhaustive()
    }
}

impl Endpoint {
    /// A broker's session state, as of `now`: `acl` decides who may do what, `authority` signs the topic
    /// policies it accepts (none accepted without it), `limits` bound what peers may do.
    pub fn new(acl: Acl, authority: Option<PublicKey>, limits: ServerLimits, now: Instant) -> Endpoint {
        let protocol = limits.protocol_limits();
        Endpoint {
            acl: RwLock::new(Arc::new(acl)),
            limits,
            protocol,
            admission: Admission::new(&limits, now),
            policies: PolicyCache::new(authority, protocol),
            durables: Arc::default(),
            groups: Groups::default(),
            observer: Arc::new(Ignore),
        }
    }

    /// This endpoint, telling its events to `observer` (several: [`Observers`](crate::event::Observers)).
    pub fn with_observer(self, observer: Arc<dyn Observer>) -> Endpoint {
        Endpoint { observer, ..self }
    }

    /// Tells the observer about `event`.
    pub fn emit(&self, event: &Event<'_>) {
        self.observer.event(event);
    }

    /// A connection from `remote` refused before the session admitted it: its handshake failed (`reason`
    /// says how far it got, `fingerprint` names the certificate it presented, if any). Only told to the
    /// observer.
    pub fn refused(&self, remote: SocketAddr, fingerprint: Option<&Fingerprint>, reason: Refused) {
        self.emit(&Event::ConnectionRefused { remote: Some(remote), principal: None, fingerprint, reason });
    }

    /// The broker started shutting down. Only told to the observer.
    pub fn shutting_down(&self) {
        self.emit(&Event::Shutdown);
    }

    /// The operator's ACL, as of now: a decision takes it once and decides with it, so a reload in between
    /// does not mix two ACLs in one decision.
    pub fn acl(&self) -> Arc<Acl> {
        // A pointer swap guarded by the lock: nothing can leave it inconsistent, so a poisoned lock is taken.
        self.acl.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Makes `acl` the operator's ACL from now on (a reload): every later decision uses it. What it takes
    /// away from streams already open is decided by their sessions ([`Cursor::still_authorized`](super::Cursor::still_authorized),
    /// [`PublishStream::still_authorized`](super::PublishStream::still_authorized)) when the driver asks.
    pub fn set_acl(&self, acl: Arc<Acl>) {
        *self.acl.write().unwrap_or_else(PoisonError::into_inner) = acl;
    }

    /// The limits.
    pub fn limits(&self) -> &ServerLimits {
        &self.limits
    }

    /// The decoding limits the limits imply: frames, batches, policies.
    pub fn protocol_limits(&self) -> &Limits {
        &self.protocol
    }

    /// Connection counts, budgets, rate limits, window shares.
    pub fn admission(&self) -> &Admission {
        &self.admission
    }

    /// The current policy of each topic.
    pub fn policies(&self) -> &PolicyCache {
        &self.policies
    }

    /// Which durable subscriptions are being served ([`DurableLeases`]: one subscriber at a time).
    pub fn durables(&self) -> &Arc<DurableLeases> {
        &self.durables
    }

    /// The shared durable subscriptions being served ([`Groups`]: members share the messages).
    pub fn groups(&self) -> &Groups {
        &self.groups
    }

    /// A place for a connection being accepted, before its handshake: hold it until the connection ends.
    /// `None` if `max_connections` are open: refuse the connection.
    pub fn admit_incoming(&self) -> Option<Reservation> {
        self.admission.admit_incoming()
    }

    /// [`admit_incoming`](Self::admit_incoming) for a connection from `remote`; a refusal is told to the
    /// observer.
    pub fn admit_incoming_from(&self, remote: SocketAddr) -> Option<Reservation> {
        let place = self.admission.admit_incoming();
        if place.is_none() {
            self.refused(remote, None, Refused::MaxConnections);
        }
        place
    }
}
