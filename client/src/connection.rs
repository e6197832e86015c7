//! The connection to the broker: [`Client`], its options, and reconnection.
//!
//! A [`Client`] holds one QUIC connection, shared by all its publishers and subscriptions; each of those
//! opens its own bidirectional stream on it. When a publisher or subscription finds the connection lost,
//! it asks the client for a connection again: the first to ask dials a new one (one attempt, bounded by
//! [`ClientOptions::connect_timeout`]), the others reuse it. Each retries with exponential backoff
//! ([`Reconnect`]) and gives up after [`Reconnect::max_retries`] failed attempts in one outage.
//!
//! [`Client::connect`] itself does not retry: a wrong address or certificate fails at once. Starting a
//! publisher or a subscription on a connected client retries transient losses like any outage.
//!
//! A client also keeps, for its whole life, the topic policies it has fetched and verified, and the content
//! keys it unwrapped from them (see `keyring.rs`): all its publishers and subscriptions share them, so the
//! broker cannot roll one of them back to a policy older than one another has seen.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use quinn::ConnectionError;
use sealpost_protocol::{Limits, Timestamp, Topic, VerifiedPolicy};

use crate::error::{sanitize, Action, Error, Result};
use crate::identity::Identity;
use crate::keyring::{Freshness, KeySource, TopicKeys};
use crate::policies;
use crate::publisher::{Publisher, PublisherOptions};
use crate::subscription::{SubscribeOptions, Subscription};
use crate::tls;

/// How a [`Client`] connects and reconnects.
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
    /// How long after a topic policy's `created_at` subscribers still accept batches sealed under the
    /// epoch before it, so that batches sealed just before a rotation (or by a publisher that has not
    /// fetched the new policy yet) are still delivered. After it, such a batch is an
    /// [`Error::Integrity`] item ([`StaleEpoch`](sealpost_protocol::Error::StaleEpoch)). Default 10 min.
    pub rotation_grace: Duration,
    /// How often a publisher (before sealing a batch) and a subscription (before opening one) fetch the
    /// topic's policies again, to move to a new epoch after a rotation or a revocation. Default 30 s.
    pub policy_refresh: Duration,
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(10),
            reconnect: Reconnect::default(),
            rotation_grace: Duration::from_secs(600),
            policy_refresh: Duration::from_secs(30),
        }
    }
}

/// Exponential backoff between reconnection attempts.
///
/// After a loss, the first attempt is immediate; the n-th retry waits `initial_delay * 2^(n-1)`, at most
/// `max_delay`, randomised by ±25 % so that many clients of a restarted broker do not return in step.
#[derive(Clone, Debug)]
pub struct Reconnect {
    /// Wait before the first retry. Default 100 ms.
    pub initial_delay: Duration,
    /// Longest wait between retries. Default 5 s.
    pub max_delay: Duration,
    /// Retries in one outage before giving up; 0 never reconnects. Default 10. An outage ends when the
    /// broker accepts a batch or delivers one, or a stream has stayed up for 10 s.
    pub max_retries: u32,
}

impl Default for Reconnect {
    fn default() -> Self {
        Self { initial_delay: Duration::from_millis(100), max_delay: Duration::from_secs(5), max_retries: 10 }
    }
}

/// How long a stream must have stayed up for its loss to start a new outage (resetting the backoff).
pub(crate) const STABLE_AFTER: Duration = Duration::from_secs(10);

/// The retry schedule of one outage.
#[derive(Debug)]
pub(crate) struct Backoff {
    policy: Reconnect,
    retries: u32,
}

impl Backoff {
    pub(crate) fn new(policy: Reconnect) -> Self {
        Self { policy, retries: 0 }
    }

    /// The wait before the next retry (without jitter), or `None` once the retries are used up.
    pub(crate) fn next_delay(&mut self) -> Option<Duration> {
        if self.retries >= self.policy.max_retries {
            return None;
        }
        let factor = 1u32.checked_shl(self.retries.min(31)).unwrap_or(u32::MAX);
        self.retries += 1;
        Some(self.policy.initial_delay.saturating_mul(factor).min(self.policy.max_delay))
    }

    /// Ends the outage: the next loss starts from an immediate attempt again.
    pub(crate) fn reset(&mut self) {
        self.retries = 0;
    }

    /// Waits for the next retry; `Err(cause)` once the retries are used up.
    pub(crate) async fn wait(&mut self, cause: Error) -> Result<()> {
        let Some(delay) = self.next_delay() else {
            return Err(cause);
        };
        let jitter = 0.75 + rand::random::<f64>() * 0.5;
        tracing::info!(error = %cause, retry_in = ?delay.mul_f64(jitter), "reconnecting");
        tokio::time::sleep(delay.mul_f64(jitter)).await;
        Ok(())
    }
}

/// What a client's publishers and subscriptions share.
pub(crate) struct Shared {
    pub(crate) identity: Identity,
    pub(crate) options: ClientOptions,
    pub(crate) limits: Limits,
    keys: KeySource,
    endpoint: quinn::Endpoint,
    config: quinn::ClientConfig,
    addr: SocketAddr,
    conn: tokio::sync::Mutex<Option<quinn::Connection>>,
    next_request: AtomicU64,
    closed: AtomicBool,
}

impl Shared {
    /// A fresh request id, unique on this client's connections.
    pub(crate) fn request_id(&self) -> u64 {
        self.next_request.fetch_add(1, Ordering::Relaxed)
    }

    /// The policies and keys of `topic`, fetched from the broker unless the client's snapshot is as
    /// `fresh` as asked. A refusal to fetch them is reported as a refusal of `action`. One attempt.
    pub(crate) async fn topic_keys(
        self: &Arc<Self>,
        topic: &Topic,
        action: Action,
        fresh: Freshness,
    ) -> Result<Arc<TopicKeys>> {
        let slot = self.keys.slot(topic);
        let asked = std::time::Instant::now();
        if let Some(keys) = slot.fresh(fresh, asked) {
            return Ok(keys);
        }
        let _fetching = slot.fetching.lock().await;
        // Another task may have fetched while this one waited.
        let after_wait = match fresh {
            Freshness::Now => Freshness::Within(asked.elapsed()),
            fresh => fresh,
        };
        if let Some(keys) = slot.fresh(after_wait, std::time::Instant::now()) {
            return Ok(keys);
        }
        let served = policies::get(self, topic, action).await?;
        let (keys, _) = self.keys.admit(&slot, topic, served, std::time::Instant::now())?;
        Ok(keys)
    }

    /// [`topic_keys`](Self::topic_keys), retrying transient losses with backoff like any outage.
    pub(crate) async fn topic_keys_retrying(
        self: &Arc<Self>,
        topic: &Topic,
        action: Action,
        fresh: Freshness,
    ) -> Result<Arc<TopicKeys>> {
        let mut backoff = Backoff::new(self.options.reconnect.clone());
        loop {
            match self.topic_keys(topic, action, fresh).await {
                Err(e) if e.is_retryable() => backoff.wait(e).await?,
                result => return result,
            }
        }
    }

    /// The current connection if it is up, else the result of one attempt to dial a new one.
    pub(crate) async fn connection(&self) -> Result<quinn::Connection> {
        if self.closed.load(Ordering::Acquire) {
            return Err(Error::Closed);
        }
        let mut current = self.conn.lock().await;
        if let Some(conn) = current.as_ref() {
            if conn.close_reason().is_none() {
                return Ok(conn.clone());
            }
        }
        let conn = self.dial().await?;
        *current = Some(conn.clone());
        Ok(conn)
    }

    async fn dial(&self) -> Result<quinn::Connection> {
        let file = &self.identity.inner().file;
        let connecting = self
            .endpoint
            .connect_with(self.config.clone(), self.addr, &file.server_name)
            .map_err(|e| match e {
                quinn::ConnectError::InvalidServerName(name) => Error::Identity {
                    path: self.identity.path().to_path_buf(),
                    message: format!("field `server_name`: {name:?} is not a valid server name"),
                },
                e => self.unreachable(e.to_string()),
            })?;
        let timeout = self.options.connect_timeout;
        match tokio::time::timeout(timeout, connecting).await {
            Err(_) => Err(self.unreachable(format!("no answer within {}", seconds(timeout)))),
            Ok(Err(e)) => Err(match self.connection_error(&e) {
                Error::ConnectionLost { reason } => self.unreachable(reason),
                e => e,
            }),
            Ok(Ok(conn)) => {
                tracing::debug!(broker = %self.addr, "connected");
                Ok(conn)
            }
        }
    }

    fn unreachable(&self, reason: String) -> Error {
        Error::Unreachable { addr: self.identity.broker().to_owned(), reason }
    }

    /// What a lost connection means to the application.
    pub(crate) fn connection_error(&self, e: &ConnectionError) -> Error {
        match e {
            ConnectionError::TransportError(t) if is_tls(t.code.into()) => {
                if t.reason.contains("invalid peer certificate") {
                    Error::BrokerNotTrusted {
                        reason: tls::untrusted_reason(&t.reason, self.identity.inner()),
                    }
                } else {
                    Error::ConnectionLost { reason: format!("TLS handshake failed: {}", sanitize(&t.reason)) }
                }
            }
            ConnectionError::ConnectionClosed(c) if is_tls(c.error_code.into()) => {
                let alert = u64::from(c.error_code) & 0xff;
                match alert {
                    // bad_certificate, unsupported_certificate, certificate_revoked, certificate_expired,
                    // certificate_unknown, unknown_ca, access_denied, certificate_required
                    42..=46 | 48 | 49 | 116 => Error::CertificateRejected { reason: alert_name(alert) },
                    120 => Error::ProtocolViolation {
                        detail: "the broker does not speak sealpost/1 (no common ALPN protocol)".into(),
                    },
                    _ => Error::ConnectionLost {
                        reason: format!("TLS handshake failed: {}", alert_name(alert)),
                    },
                }
            }
            ConnectionError::TimedOut => Error::ConnectionLost {
                reason: format!("no answer from the broker for {}", seconds(self.options.idle_timeout)),
            },
            ConnectionError::ApplicationClosed(a) => {
                let why = sanitize(&String::from_utf8_lossy(&a.reason));
                Error::ConnectionLost {
                    reason: if why.is_empty() {
                        format!("closed by the broker (code {})", a.error_code)
                    } else {
                        format!("closed by the broker (code {}): {why}", a.error_code)
                    },
                }
            }
            ConnectionError::Reset => {
                Error::ConnectionLost { reason: "reset by the broker (did it restart?)".into() }
            }
            ConnectionError::LocallyClosed => Error::Closed,
            e => Error::ConnectionLost { reason: sanitize(&e.to_string()) },
        }
    }
}

/// The current time as the protocol carries it: milliseconds since the Unix epoch.
pub(crate) fn wall_clock() -> Timestamp {
    let millis = std::time::SystemTime::now()
        .duration_since(std::time::SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    Timestamp(u64::try_from(millis).unwrap_or(u64::MAX))
}

/// Whether a QUIC error code carries a TLS alert.
fn is_tls(code: u64) -> bool {
    (0x100..0x200).contains(&code)
}

fn alert_name(alert: u64) -> String {
    let name = match alert {
        42 => "bad certificate",
        43 => "unsupported certificate",
        44 => "certificate revoked",
        45 => "certificate expired",
        46 => "certificate unknown",
        48 => "unknown CA",
        49 => "access denied",
        116 => "certificate required",
        _ => return format!("TLS alert {alert}"),
    };
    name.to_owned()
}

fn seconds(d: Duration) -> String {
    format!("{} s", d.as_secs_f64())
}

/// A connection to the broker, shared by the publishers and subscriptions made from it.
///
/// Cheap to clone. Publishers and subscriptions keep the connection alive while they exist, and
/// reconnect on their own after it is lost.
#[derive(Clone)]
pub struct Client {
    shared: Arc<Shared>,
}

impl Client {
    /// Connects to the broker named by `identity` with the default [`ClientOptions`].
    pub async fn connect(identity: &Identity) -> Result<Client> {
        Self::connect_with(identity, ClientOptions::default()).await
    }

    /// Connects to the broker named by `identity`: resolves its address, binds a UDP socket of the same
    /// address family, and completes the QUIC and TLS handshakes within `options.connect_timeout`. One
    /// attempt only.
    pub async fn connect_with(identity: &Identity, options: ClientOptions) -> Result<Client> {
        let broker = identity.broker();
        let unreachable = |reason: String| Error::Unreachable { addr: broker.to_owned(), reason };
        let addr = tokio::net::lookup_host(broker)
            .await
            .map_err(|e| unreachable(format!("cannot resolve the address: {e}")))?
            .next()
            .ok_or_else(|| unreachable("the name resolves to no address".into()))?;
        let bind = match addr.ip() {
            IpAddr::V4(ip) if ip.is_loopback() => SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            IpAddr::V4(_) => SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)),
            IpAddr::V6(ip) if ip.is_loopback() => SocketAddr::from((Ipv6Addr::LOCALHOST, 0)),
            IpAddr::V6(_) => SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0)),
        };
        let config = tls::client_config(identity.inner(), &options)?;
        let endpoint = quinn::Endpoint::client(bind)
            .map_err(|e| Error::io(format!("cannot bind a UDP socket on {bind}"), e))?;
        let shared = Shared {
            identity: identity.clone(),
            options,
            limits: Limits::default(),
            keys: KeySource::new(
                identity.principal().clone(),
                identity.inner().hpke.clone(),
                identity.authority(),
                Limits::default(),
            ),
            endpoint,
            config,
            addr,
            conn: tokio::sync::Mutex::new(None),
            next_request: AtomicU64::new(1),
            closed: AtomicBool::new(false),
        };
        shared.connection().await?;
        Ok(Client { shared: Arc::new(shared) })
    }

    /// Starts a publisher on `topic`: fetches the topic's policies, asks the broker where this identity's
    /// chain on the topic stands, and checks that the current policy lists this identity as a publisher and
    /// wraps a content key for it.
    ///
    /// Fails with [`Error::Refused`] if the broker does not let this identity publish there, with
    /// [`Error::NoPolicy`], [`Error::NotAPublisher`] or [`Error::NoContentKey`] if the topic's current
    /// policy does not let it, and with [`Error::Policy`] if the broker serves policies that fail a check.
    pub async fn publisher(&self, topic: Topic, options: PublisherOptions) -> Result<Publisher> {
        Publisher::start(self.shared.clone(), topic, options).await
    }

    /// Subscribes to `topic`. Fails with [`Error::Refused`] if the broker does not let this identity
    /// subscribe there, with [`Error::NoPolicy`] or [`Error::NoContentKey`] if no policy of the topic wraps
    /// a content key for this identity (it could not open any message), and with [`Error::Policy`] if the
    /// broker serves policies that fail a check.
    pub async fn subscribe(&self, topic: Topic, options: SubscribeOptions) -> Result<Subscription> {
        Subscription::start(self.shared.clone(), topic, options).await
    }

    /// The policies of `topic` as the broker stores them, oldest epoch first (at most the previous and the
    /// current epoch's; none if the topic has no policy), each verified against the identity's pinned
    /// topic authority and admitted into this client's book of the topic (so that the broker cannot roll it
    /// back later).
    ///
    /// Any principal that may publish, subscribe or administer the topic may read them; others get
    /// [`Error::Refused`] with [`ErrorCode::NOT_AUTHORIZED`](crate::ErrorCode::NOT_AUTHORIZED). A policy
    /// that fails verification, or rolls back or forks what this client has seen, is an [`Error::Policy`].
    /// Transient losses are retried like any outage.
    pub async fn policies(&self, topic: &Topic) -> Result<Vec<VerifiedPolicy>> {
        let shared = &self.shared;
        let slot = shared.keys.slot(topic);
        let _fetching = slot.fetching.lock().await;
        let mut backoff = Backoff::new(shared.options.reconnect.clone());
        let served = loop {
            match policies::get(shared, topic, Action::ReadPolicies).await {
                Err(e) if e.is_retryable() => backoff.wait(e).await?,
                result => break result?,
            }
        };
        let (_, verified) = shared.keys.admit(&slot, topic, served, std::time::Instant::now())?;
        Ok(verified)
    }

    /// Stores `policy` on the broker as the new policy of its topic; resolves once the broker holds it
    /// durably. Publishers and subscriptions of every client move to it when they next fetch the topic's
    /// policies (see [`ClientOptions::policy_refresh`]).
    ///
    /// Make `policy` with [`issue_policy`](sealpost_protocol::issue_policy), signed with the authority's
    /// key ([`Identity::authority_key`]), of epoch 1 for a topic without policy, else chained to the current
    /// policy (from [`policies`](Self::policies)) with the next epoch and a fresh content key.
    ///
    /// Fails with [`Error::Policy`] if `policy` is not signed by this identity's pinned authority (nothing
    /// is sent), and with [`Error::Refused`] if the broker refuses it: with
    /// [`ErrorCode::NOT_AUTHORIZED`](crate::ErrorCode::NOT_AUTHORIZED) if the ACL does not give this
    /// identity the `admin` action on the topic, with
    /// [`ErrorCode::POLICY_REJECTED`](crate::ErrorCode::POLICY_REJECTED) if the broker is configured with
    /// another authority or its epoch is not the one after the broker's current policy (someone else changed
    /// the policy meanwhile: fetch it again and redo the change). One attempt: it is not retried.
    pub async fn put_policy(&self, policy: &VerifiedPolicy) -> Result<()> {
        let topic = policy.topic();
        if policy.authority() != self.shared.keys.authority() {
            return Err(Error::Policy {
                topic: topic.clone(),
                check: sealpost_protocol::Error::PolicyNotFromAuthority,
            });
        }
        policies::put(&self.shared, topic, policy.as_bytes().clone()).await?;
        self.shared.keys.slot(topic).expire();
        Ok(())
    }

    /// The identity this client connects as.
    pub fn identity(&self) -> &Identity {
        &self.shared.identity
    }

    /// Closes the connection: publishers and subscriptions still open fail with [`Error::Closed`] and do not
    /// reconnect. Close them first (`Publisher::close`, `Subscription::close`) to wait for what they have
    /// outstanding. Waits up to 2 s for the broker to acknowledge the close.
    pub async fn close(&self) {
        self.shared.closed.store(true, Ordering::Release);
        if let Some(conn) = self.shared.conn.lock().await.take() {
            conn.close(0u32.into(), b"client closed");
        }
        let _ = tokio::time::timeout(Duration::from_secs(2), self.shared.endpoint.wait_idle()).await;
    }
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("principal", &self.shared.identity.principal())
            .field("broker", &self.shared.addr)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap_and_stops_after_max_retries() {
        let mut b = Backoff::new(Reconnect {
            initial_delay: Duration::from_millis(100),
            max_delay: Duration::from_millis(500),
            max_retries: 5,
        });
        let delays: Vec<_> = std::iter::from_fn(|| b.next_delay()).map(|d| d.as_millis()).collect();
        assert_eq!(delays, [100, 200, 400, 500, 500]);
        assert_eq!(b.next_delay(), None);
        b.reset();
        assert_eq!(b.next_delay(), Some(Duration::from_millis(100)));
    }

    #[test]
    fn backoff_with_zero_retries_never_retries() {
        let mut b = Backoff::new(Reconnect { max_retries: 0, ..Reconnect::default() });
        assert_eq!(b.next_delay(), None);
    }

    #[test]
    fn backoff_survives_many_retries_without_overflow() {
        let mut b = Backoff::new(Reconnect { max_retries: 100, ..Reconnect::default() });
        let last = std::iter::from_fn(|| b.next_delay()).last();
        assert_eq!(last, Some(Duration::from_secs(5)));
    }

    #[test]
    fn tls_alert_codes_are_recognised() {
        assert!(is_tls(0x100 | 48));
        assert!(!is_tls(0x0a));
        assert_eq!(alert_name(48), "unknown CA");
        assert_eq!(alert_name(7), "TLS alert 7");
    }
}
