//! The endpoint: what every connection of one broker shares.
//!
//! An [`Endpoint`] holds the operator's ACL, the limits, the [`Admission`] counts and budgets and the
//! [`PolicyCache`]. It is built once per broker and shared (`Arc`) by the session of every connection
//! ([`Connection`](super::Connection)) and of every stream; all its state is behind its parts' own short
//! locks, so it can be used from any thread. It performs no I/O.

use std::time::Instant;

use sealpost_protocol::{Limits, PublicKey};

use super::admission::Admission;
use super::policies::PolicyCache;
use crate::acl::Acl;
use crate::budget::Reservation;
use crate::limits::ServerLimits;

/// See the [module documentation](self).
pub struct Endpoint {
    acl: Acl,
    limits: ServerLimits,
    protocol: Limits,
    admission: Admission,
    policies: PolicyCache,
}

impl Endpoint {
    /// A broker's session state, as of `now`: `acl` decides who may do what, `authority` signs the topic
    /// policies it accepts (none accepted without it), `limits` bound what peers may do.
    pub fn new(acl: Acl, authority: Option<PublicKey>, limits: ServerLimits, now: Instant) -> Endpoint {
        let protocol = limits.protocol_limits();
        Endpoint {
            acl,
            limits,
            protocol,
            admission: Admission::new(&limits, now),
            policies: PolicyCache::new(authority, protocol),
        }
    }

    /// The operator's ACL.
    pub fn acl(&self) -> &Acl {
        &self.acl
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

    /// A place for a connection being accepted, before its handshake: hold it until the connection ends.
    /// `None` if `max_connections` are open: refuse the connection.
    pub fn admit_incoming(&self) -> Option<Reservation> {
        self.admission.admit_incoming()
    }
}
