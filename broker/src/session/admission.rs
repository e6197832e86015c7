//! Admission: who may connect and open streams, and how much each principal may hold and publish.
//!
//! [`Admission`] owns the broker's counts and budgets that outlive one connection:
//!
//! - **connections**: at most `max_connections` in total (counted from the moment one is accepted, before
//!   its handshake) and `max_connections_per_principal` per principal;
//! - **stream slots**: a stream takes one of its principal's (`max_streams_per_principal`) and one of the
//!   broker's (`max_streams`), or is refused;
//! - **in-flight budgets**: each connection's budget is its own pool, its principal's and the broker's
//!   ([`crate::budget`] says what they bound);
//! - **publish rate limits**: one token bucket pair per principal ([`crate::ratelimit`]), over all its
//!   connections;
//! - **QUIC window shares**: each connection of a principal gets an equal share of the principal's windows
//!   ([`MemoryLimits::windows`](crate::budget::MemoryLimits::windows)). The session computes the share each
//!   time a connection of the principal opens or closes and has the driver apply it through
//!   [`FlowControl`], *while it holds its lock*, so shares computed one after the other are applied in that
//!   order and every connection ends with the share of the latest count.
//!
//! Time comes in as an argument (`now`) and is measured from the `now` given to [`Admission::new`]; nothing
//! here reads a clock or performs I/O. Budgets are handed out as [`Budget`]s and slots as [`Reservation`]s
//! that give back what they hold when dropped, so a driver that ends early (an error, a panic, a cancelled
//! task) cannot leak them. Per-principal state is kept for every principal seen (one entry each: the
//! principals are those the CA issued certificates to).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use sealpost_protocol::{ConnectionStats, Principal};

use crate::budget::{Budget, MemoryLimits, Pool, Reservation};
use crate::limits::ServerLimits;
use crate::ratelimit::PublishLimiter;
use crate::{Error, Result};

/// A connection's QUIC flow-control windows, as the driver lets the session set them. The async shell
/// implements it for `quinn::Connection`; tests record the calls.
pub trait FlowControl: Send + Sync {
    /// Sets the connection's receive window (bytes it may be sent that the broker has not read) and send
    /// window (bytes written to it and not yet acknowledged), in bytes.
    fn set_windows(&self, receive: u64, send: u64);

    /// Where the peer is, as the transport sees it: shown to operators (`sealpost admin connections`).
    fn remote(&self) -> Option<std::net::SocketAddr> {
        None
    }
}

/// Names a connection among those [`Admission`] counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ConnectionId(u64);

/// What an admitted connection holds: its place among its principal's connections and its budgets.
#[derive(Debug)]
pub struct Admitted {
    /// Its name, to give back with [`Admission::close`].
    pub id: ConnectionId,
    /// What its frames and subscription reads are reserved from: its own pool, then its principal's, then
    /// the broker's.
    pub inflight: Budget,
    /// Where its streams take their slot: its principal's, then the broker's.
    pub streams: Budget,
}

/// See the [module documentation](self).
pub struct Admission {
    limits: ServerLimits,
    origin: Instant,
    connections: Budget,
    inflight_total: Pool,
    streams_total: Pool,
    next_id: AtomicU64,
    principals: Mutex<HashMap<Principal, PrincipalState>>,
}

/// What one principal holds, over its connections.
struct PrincipalState {
    /// Its open connections, each with the handle its window share is applied through and when it opened
    /// (since the origin).
    connections: BTreeMap<ConnectionId, (Arc<dyn FlowControl>, Duration)>,
    limiter: PublishLimiter,
    inflight: Pool,
    streams: Pool,
}

impl Admission {
    /// No connection yet, as of `now`.
    pub fn new(limits: &ServerLimits, now: Instant) -> Admission {
        Admission {
            limits: *limits,
            origin: now,
            connections: Budget::new(vec![Pool::new(limits.max_connections.into())]),
            inflight_total: Pool::new(limits.memory.inflight_bytes_total),
            streams_total: Pool::new(limits.max_streams.into()),
            next_id: AtomicU64::new(1),
            principals: Mutex::new(HashMap::new()),
        }
    }

    fn since_origin(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.origin)
    }

    /// How long the broker has run at `now` (since the `now` it was made with).
    pub fn uptime(&self, now: Instant) -> Duration {
        self.since_origin(now)
    }

    fn principals(&self) -> MutexGuard<'_, HashMap<Principal, PrincipalState>> {
        // Counters and handles only, each left consistent before anything could panic: recover them.
        self.principals.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A place for a connection being accepted, before its handshake: held until the connection ends, or
    /// `None` if `max_connections` are open (refuse it).
    pub fn admit_incoming(&self) -> Option<Reservation> {
        self.connections.try_reserve(1)
    }

    /// Admits a connection of `principal` whose windows `flow` sets, and shares the principal's windows
    /// anew among its connections (this one included). Refused, with nothing counted, if the principal
    /// already has `max_connections_per_principal` connections. Give it back with [`close`](Self::close).
    pub fn open(&self, principal: &Principal, flow: Arc<dyn FlowControl>, now: Instant) -> Result<Admitted> {
        let since = self.since_origin(now);
        let (limits, memory) = (&self.limits, &self.limits.memory);
        let mut principals = self.principals();
        let state = principals.entry(principal.clone()).or_insert_with(|| PrincipalState {
            connections: BTreeMap::new(),
            limiter: PublishLimiter::new(limits.publish_msgs_per_sec, limits.publish_bytes_per_sec, since),
            inflight: Pool::new(memory.inflight_bytes_per_principal),
            streams: Pool::new(limits.max_streams_per_principal.into()),
        });
        if state.connections.len() >= limits.max_connections_per_principal as usize {
            return Err(Error::LimitExceeded("max_connections_per_principal"));
        }
        let id = ConnectionId(self.next_id.fetch_add(1, Ordering::Relaxed));
        state.connections.insert(id, (flow, since));
        share_windows(memory, state);
        let own = Pool::new(memory.inflight_bytes_per_connection);
        let inflight = Budget::new(vec![own, state.inflight.clone(), self.inflight_total.clone()]);
        let streams = Budget::new(vec![state.streams.clone(), self.streams_total.clone()]);
        Ok(Admitted { id, inflight, streams })
    }

    /// Forgets the connection `id` of `principal` and shares the principal's windows among the others.
    pub fn close(&self, principal: &Principal, id: ConnectionId) {
        if let Some(state) = self.principals().get_mut(principal) {
            if state.connections.remove(&id).is_some() {
                share_windows(&self.limits.memory, state);
            }
        }
    }

    /// Up to `max` open connections with an id above `after` (all if `None`), by id, with their age at
    /// `now`: a page of `sealpost admin connections`.
    pub fn connections(&self, after: Option<u64>, max: usize, now: Instant) -> Vec<ConnectionStats> {
        let at = self.since_origin(now);
        let mut rows: Vec<ConnectionStats> = self
            .principals()
            .iter()
            .flat_map(|(principal, state)| {
                state.connections.iter().map(move |(id, (flow, since))| ConnectionStats {
                    id: id.0,
                    principal: principal.clone(),
                    remote: flow.remote().map_or_else(|| "-".to_owned(), |a| a.to_string()),
                    age_ms: u64::try_from(at.saturating_sub(*since).as_millis()).unwrap_or(u64::MAX),
                })
            })
            .filter(|row| after.is_none_or(|a| row.id > a))
            .collect();
        rows.sort_by_key(|row| row.id);
        rows.truncate(max);
        rows
    }

    /// Open connections, and the principals they belong to.
    pub fn totals(&self) -> (u64, u64) {
        let principals = self.principals();
        let open = principals.values().map(|s| s.connections.len() as u64).sum();
        let with_any = principals.values().filter(|s| !s.connections.is_empty()).count() as u64;
        (open, with_any)
    }

    /// Open connections of `principal`.
    pub fn connections_of(&self, principal: &Principal) -> usize {
        self.principals().get(principal).map_or(0, |s| s.connections.len())
    }

    /// Takes a batch of `messages` and `bytes` from `principal`'s publish allowance at `now`, or refuses it
    /// with [`Error::RateLimited`] and takes nothing.
    pub fn allow_publish(
        &self,
        principal: &Principal,
        messages: u64,
        bytes: u64,
        now: Instant,
    ) -> Result<()> {
        let since = self.since_origin(now);
        let mut principals = self.principals();
        let allowed =
            principals.get_mut(principal).is_none_or(|s| s.limiter.try_take(messages, bytes, since));
        if allowed {
            Ok(())
        } else {
            Err(Error::RateLimited)
        }
    }
}

/// Gives each open connection of a principal its share of the principal's QUIC windows.
fn share_windows(memory: &MemoryLimits, state: &PrincipalState) {
    let (receive, send) = memory.windows(state.connections.len());
    for (flow, _) in state.connections.values() {
        flow.set_windows(receive, send);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::testing::Windows;

    const MIB: u64 = 1024 * 1024;

    fn principal(name: &str) -> Principal {
        name.parse().unwrap()
    }

    #[test]
    fn connections_are_counted_in_total_from_before_the_handshake() {
        let limits = ServerLimits { max_connections: 2, ..ServerLimits::default() };
        let admission = Admission::new(&limits, Instant::now());
        let first = admission.admit_incoming().unwrap();
        let _second = admission.admit_incoming().unwrap();
        assert!(admission.admit_incoming().is_none());
        drop(first);
        assert!(admission.admit_incoming().is_some());
    }

    #[test]
    fn a_principal_beyond_its_connections_is_refused_and_counts_nothing() {
        let limits = ServerLimits { max_connections_per_principal: 2, ..ServerLimits::default() };
        let now = Instant::now();
        let admission = Admission::new(&limits, now);
        let alice = principal("alice");
        let a = admission.open(&alice, Arc::new(Windows::default()), now).unwrap();
        let _b = admission.open(&alice, Arc::new(Windows::default()), now).unwrap();
        let refused = admission.open(&alice, Arc::new(Windows::default()), now);
        assert!(matches!(refused, Err(Error::LimitExceeded("max_connections_per_principal"))));
        assert_eq!(admission.connections_of(&alice), 2);
        // Another principal is not affected; a closed connection makes room.
        assert!(admission.open(&principal("bob"), Arc::new(Windows::default()), now).is_ok());
        admission.close(&alice, a.id);
        assert!(admission.open(&alice, Arc::new(Windows::default()), now).is_ok());
    }

    #[test]
    fn a_principals_windows_are_shared_anew_as_its_connections_open_and_close() {
        let memory = MemoryLimits {
            receive_window_per_connection: 2 * MIB,
            receive_window_per_principal: 2 * MIB,
            send_window_per_connection: 4 * MIB,
            send_window_per_principal: 4 * MIB,
            ..MemoryLimits::default()
        };
        let now = Instant::now();
        let admission = Admission::new(&ServerLimits { memory, ..ServerLimits::default() }, now);
        let alice = principal("alice");
        let (one, two) = (Arc::new(Windows::default()), Arc::new(Windows::default()));
        let first = admission.open(&alice, one.clone(), now).unwrap();
        assert_eq!(one.last(), Some((2 * MIB, 4 * MIB)));
        admission.open(&alice, two.clone(), now).unwrap();
        assert_eq!(one.last(), Some((MIB, 2 * MIB)));
        assert_eq!(two.last(), Some((MIB, 2 * MIB)));
        // Another principal's connection changes nothing of alice's.
        admission.open(&principal("bob"), Arc::new(Windows::default()), now).unwrap();
        assert_eq!(two.last(), Some((MIB, 2 * MIB)));
        admission.close(&alice, first.id);
        assert_eq!(two.last(), Some((2 * MIB, 4 * MIB)));
    }

    #[test]
    fn stream_slots_are_per_principal_and_in_total() {
        let limits = ServerLimits { max_streams_per_principal: 2, max_streams: 3, ..ServerLimits::default() };
        let now = Instant::now();
        let admission = Admission::new(&limits, now);
        let alice = admission.open(&principal("alice"), Arc::new(Windows::default()), now).unwrap();
        let alice_too = admission.open(&principal("alice"), Arc::new(Windows::default()), now).unwrap();
        let bob = admission.open(&principal("bob"), Arc::new(Windows::default()), now).unwrap();
        let held = [alice.streams.try_reserve(1).unwrap(), alice_too.streams.try_reserve(1).unwrap()];
        // alice's two slots are taken, over both her connections.
        assert!(alice.streams.try_reserve(1).is_none());
        let bobs = bob.streams.try_reserve(1).unwrap();
        // The broker's three are taken.
        assert!(bob.streams.try_reserve(1).is_none());
        drop(held);
        assert!(bob.streams.try_reserve(1).is_some());
        drop(bobs);
    }

    #[test]
    fn the_publish_rate_is_per_principal_over_its_connections_and_refills_with_time() {
        let limits = ServerLimits { publish_msgs_per_sec: 10, ..ServerLimits::default() };
        let t0 = Instant::now();
        let admission = Admission::new(&limits, t0);
        let (alice, bob) = (principal("alice"), principal("bob"));
        for who in [&alice, &alice, &bob] {
            admission.open(who, Arc::new(Windows::default()), t0).unwrap();
        }
        admission.allow_publish(&alice, 6, 100, t0).unwrap();
        admission.allow_publish(&alice, 4, 100, t0).unwrap();
        assert!(matches!(admission.allow_publish(&alice, 1, 1, t0), Err(Error::RateLimited)));
        admission.allow_publish(&bob, 10, 1, t0).unwrap();
        let later = t0 + Duration::from_millis(500);
        admission.allow_publish(&alice, 5, 1, later).unwrap();
        assert!(matches!(admission.allow_publish(&alice, 1, 1, later), Err(Error::RateLimited)));
    }
}
