//! Options: how a [`Client`](crate::Client) connects and reconnects, how its publishers batch and
//! pipeline, and where its subscriptions start.
//!
//! Plain data with documented defaults; nothing here does I/O. Every knob but one is safe to turn: none of
//! them weakens a check (verification cannot be switched off, see `tls.rs`). The one is
//! [`ClientOptions::state`] set to [`StateLocation::Off`]: checks stay on, but what they remember ends
//! with the process.

use std::time::Duration;

use sealpost_protocol::StartAt;

use crate::state::StateLocation;

/// How a [`Client`](crate::Client) connects and reconnects, how often it checks topic policies, and where
/// it keeps its state.
///
/// [`Client::connect`](crate::Client::connect) uses the defaults (with the identity file's
/// `rotation_grace_secs`, if it sets one); [`Client::connect_with`](crate::Client::connect_with) takes
/// options as given. Start from the defaults and change what you need:
///
/// ```
/// use std::time::Duration;
/// use sealpost_client::{ClientOptions, Reconnect};
///
/// let options = ClientOptions {
///     reconnect: Reconnect {
///         initial_delay: Duration::from_millis(250),
///         max_delay: Duration::from_secs(30),
///         ..Reconnect::default()
///     },
///     ..ClientOptions::default()
/// };
/// assert_eq!(options.connect_timeout, Duration::from_secs(5));
/// ```
///
/// # Connecting and reconnecting
///
/// [`Client::connect_with`](crate::Client::connect_with) dials within `connect_timeout` per attempt, and
/// retries an unreachable broker as `reconnect` says. Once connected, a connection that hears nothing from the broker for `idle_timeout` counts as lost
/// ([`Error::ConnectionLost`](crate::Error::ConnectionLost)), like one the broker closed or reset. Each
/// publisher and subscription then reconnects on its own, waiting before each attempt as `reconnect` says
/// (`initial_delay` before the first, twice as long before each next one, at most `max_delay`, each
/// randomised by ±25 %), and gives up once the outage's budget is spent (`reconnect.budget`): a publisher then fails every message
/// it holds and is dead, a subscription yields the last error and ends. Only a lost connection, an
/// unreachable broker and a broker answering `UNAVAILABLE` are retried; [`Client`](crate::Client) says
/// which errors are final.
#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// How long one connection attempt may take before the broker counts as unreachable. Default 5 s.
    pub connect_timeout: Duration,
    /// How long an established connection may go without hearing from the broker before it counts as
    /// lost. Keep-alives are sent at a third of it, so an idle but healthy connection stays up. Default
    /// 10 s.
    pub idle_timeout: Duration,
    /// How publishers and subscriptions reconnect after losing the broker.
    pub reconnect: Reconnect,
    /// How long after a topic policy's `created_at` subscribers still accept batches **sealed** (by the
    /// batch's `created_at`) under the epoch before it, so that batches of a publisher that has not fetched
    /// the new policy yet are still delivered; batches sealed before the rotation are accepted however late
    /// they are read. A batch sealed later is an
    /// [`Error::Integrity`](crate::Error::Integrity) item
    /// ([`StaleEpoch`](sealpost_protocol::Error::StaleEpoch)). Default 10 min.
    pub rotation_grace: Duration,
    /// How often a publisher (before sealing a batch) and a subscription (before opening one) fetch the
    /// topic's policies again, to move to a new epoch after a rotation or a revocation. Default 30 s.
    pub policy_refresh: Duration,
    /// Where the client keeps what it must remember across processes (the newest verified policy of each
    /// topic it used), so that a broker cannot roll it back after a restart. Default
    /// [`StateLocation::Identity`]: the identity file's `state`, else `<identity file stem>.state/` beside
    /// it. [`StateLocation::Off`] keeps it in memory only (docs/threat-model.md says what is then not
    /// detected).
    pub state: StateLocation,
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(10),
            reconnect: Reconnect::default(),
            rotation_grace: Duration::from_secs(600),
            policy_refresh: Duration::from_secs(30),
            state: StateLocation::Identity,
        }
    }
}

impl ClientOptions {
    /// The defaults, with what `identity`'s file sets (`rotation_grace_secs`): what
    /// [`Client::connect`](crate::Client::connect) uses. Start from it to change other options.
    pub fn from_identity(identity: &crate::Identity) -> Self {
        let mut options = Self::default();
        if let Some(grace) = identity.rotation_grace() {
            options.rotation_grace = grace;
        }
        options
    }
}

/// Exponential backoff between reconnection attempts, within a budget.
///
/// After a loss, each attempt waits first: the n-th `initial_delay * 2^(n-1)`, at most `max_delay`,
/// randomised by ±25 % so that many clients of a restarted broker do not return in step (only a first
/// start, such as `Client::connect`'s first dial, is immediate). The
/// same schedule serves [`Client::connect`](crate::Client::connect), every publisher and subscription,
/// and policy fetches; each keeps its own.
#[derive(Clone, Debug)]
pub struct Reconnect {
    /// Wait before the first retry. Default 100 ms.
    pub initial_delay: Duration,
    /// Longest wait between retries. Default 5 s.
    pub max_delay: Duration,
    /// When one outage is given up. Default [`RetryBudget::Duration`] of 2 minutes (as Kafka's
    /// `delivery.timeout.ms`). An outage ends when the broker accepts a batch or delivers one, or a
    /// stream has stayed up for 10 s; the next loss starts a new one with the whole budget.
    pub budget: RetryBudget,
}

impl Default for Reconnect {
    fn default() -> Self {
        Self {
            initial_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(5),
            budget: RetryBudget::Duration(Duration::from_secs(120)),
        }
    }
}

/// When retrying in one outage stops, and the operation fails with the outage's last error (for a
/// publisher: every publish not yet acknowledged; for a subscription: its next item).
///
/// Only failures that reconnecting may cure are retried ([`Error::is_retryable`](crate::Error::is_retryable));
/// anything else fails at once, whatever the budget.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum RetryBudget {
    /// After this many retries; `Retries(0)` never retries.
    Retries(u32),
    /// Once this long has passed since the outage's first retry was scheduled: no retry starts later (the
    /// last wait is cut short to end then; an attempt under way ends within
    /// [`ClientOptions::connect_timeout`]).
    Duration(Duration),
    /// Never: retry until the broker is back, a failure reconnecting cannot cure, or
    /// [`Client::close`](crate::Client::close).
    Unlimited,
}

/// How a publisher batches and pipelines.
#[derive(Clone, Debug)]
pub struct PublisherOptions {
    /// Most messages in one sealed batch (clamped to 1..=65,536). Default 256.
    pub max_batch: usize,
    /// How long the first message of a batch that is not full waits for others before the batch may be
    /// sealed. Default 0: batching needs no timer (see below).
    ///
    /// Whatever `linger` says, a batch that is not full is sealed only while fewer than two earlier
    /// batches await their answers (or on [`Publisher::flush`](crate::Publisher::flush) and
    /// [`Publisher::close`](crate::Publisher::close)): what is published while two batches are in flight
    /// gathers into the next one, which goes when an answer comes, or as soon as it is full. So a message
    /// published to a quiet publisher goes at once, and under load batches grow to what arrives during
    /// part of a round trip (the broker's fsync included).
    pub linger: Duration,
    /// Most batches sent but not yet acknowledged (at least 1). Default 64.
    pub max_in_flight: usize,
}

impl Default for PublisherOptions {
    fn default() -> Self {
        Self { max_batch: 256, linger: Duration::ZERO, max_in_flight: 64 }
    }
}

/// Where and how a subscription starts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubscribeOptions {
    /// Where a new subscription starts reading. Default [`StartAt::Latest`]: only what is published from
    /// now on.
    pub from: StartAt,
    /// The name of a durable subscription: the broker stores what it acknowledges, and a durable
    /// subscription that already exists resumes from there, ignoring `from`. Default `None`.
    ///
    /// The broker serves a durable subscription to one subscriber at a time: while another subscription of
    /// the same name (this principal's, from any process) is being read,
    /// [`Client::subscribe`](crate::Client::subscribe) waits, standing by, and returns when it takes over,
    /// from the offset the one before committed. Run one per replica of a service for failover.
    pub durable: Option<String>,
    /// Whether the durable subscription is **shared** (a consumer group): its subscribers, from any
    /// process of this principal, share its messages, each batch to one of them, rather than one reading
    /// while the others stand by. Requires `durable` (else [`Error::InvalidOptions`](crate::Error::InvalidOptions)).
    /// Default `false`.
    ///
    /// The broker gives each member whole publisher chains (every message of one `Publisher` goes to
    /// the same member while the members do not change), so each member still verifies what it receives
    /// end to end. When a member leaves or dies, the chains it held and the messages it had not
    /// acknowledged go to the others; a member that joins takes a share of the chains. At such a change a
    /// member may be given again messages it was given before and did not acknowledge, and its chains
    /// start at the first batch it sees (as for a new subscription): see the
    /// [`Subscription`](crate::Subscription) documentation. A shared and an exclusive subscription of one
    /// name exclude each other (one stands by while the other is read).
    pub shared: bool,
}

impl Default for SubscribeOptions {
    fn default() -> Self {
        Self { from: StartAt::Latest, durable: None, shared: false }
    }
}
