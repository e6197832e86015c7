//! The connector: the one QUIC connection a client holds to its broker, dialed again when it is lost (to
//! the next broker of the identity, when it names several).
//!
//! All publishers and subscriptions of a client share the connection; each opens its own bidirectional
//! stream on it ([`Link`](super::Link)). When one of them finds the connection lost it asks for a
//! connection again: the first to ask dials a new one (one attempt, bounded by
//! [`ClientOptions::connect_timeout`]), the others reuse it. Retrying with backoff is the caller's business
//! (see `backoff.rs` and `reconnect.rs`).
//!
//! It guarantees that once [`close`](Connector::close) was called no connection is dialed again, and that
//! request ids are unique across the client's connections. It tells what happens to the connection as a
//! [`ConnectionState`] (a `watch`): connected when a dial succeeds, disconnected (with the cause) as soon as
//! the connection ends, closed at [`close`](Connector::close).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::error::{Error, Result};
use crate::identity::Identity;
use crate::options::ClientOptions;
use crate::reconnect::Reconnector;
use crate::tls;

use super::error_map::{seconds, ErrorMap};

/// What the client's connection to its broker is doing ([`Client::connection_state`](crate::Client::connection_state)).
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum ConnectionState {
    /// Connected: the last dial succeeded and the connection is up.
    Connected,
    /// The connection ended, for `cause` (a lost connection, an idle timeout, the broker closing it, or
    /// a dial that failed). Publishers and subscriptions that need the broker dial again, with backoff,
    /// within [`Reconnect::budget`](crate::Reconnect::budget); a client with nothing to do stays here
    /// until something needs the broker.
    Disconnected {
        /// Why.
        cause: Error,
    },
    /// [`Client::close`](crate::Client::close) was called: no connection is dialed again.
    Closed,
}

/// The connection to the broker, and how to get a new one.
pub(crate) struct Connector {
    identity: Identity,
    connect_timeout: Duration,
    pub(super) max_frame_len: u32,
    pub(super) errors: Arc<ErrorMap>,
    endpoint: quinn::Endpoint,
    config: quinn::ClientConfig,
    /// The brokers of the identity, resolved; each dial after a failed one or a lost connection tries the
    /// next (round robin), so a client of several brokers sharing a log fails over to a live one.
    addrs: Vec<SocketAddr>,
    /// Which of `addrs` the next dial tries.
    next_addr: AtomicUsize,
    conn: tokio::sync::Mutex<Option<quinn::Connection>>,
    next_request: AtomicU64,
    closed: AtomicBool,
    state: Arc<watch::Sender<ConnectionState>>,
    /// The `stable_id` of the connection dialed last, so that the end of an older one is not told.
    current: Arc<AtomicUsize>,
}

impl Connector {
    /// Resolves the broker's address, binds a UDP socket of the same address family, and completes the
    /// QUIC and TLS handshakes, each attempt within `options.connect_timeout`, retrying what reconnecting
    /// may cure within `options.reconnect` (as publishers and subscriptions do).
    pub(crate) async fn connect(
        identity: &Identity,
        options: &ClientOptions,
        max_frame_len: u32,
    ) -> Result<Connector> {
        let errors = ErrorMap::new(identity.clone(), options.idle_timeout);
        let mut addrs = Vec::new();
        for broker in identity.brokers() {
            let addr = tokio::net::lookup_host(broker)
                .await
                .map_err(|e| errors.unreachable(format!("cannot resolve {broker}: {e}")))?
                .next()
                .ok_or_else(|| errors.unreachable(format!("{broker} resolves to no address")))?;
            addrs.push(addr);
        }
        let Some(&first) = addrs.first() else {
            return Err(errors.unreachable("the identity names no broker".into()));
        };
        if addrs.iter().any(|a| a.is_ipv4() != first.is_ipv4()) {
            return Err(errors.unreachable("the brokers' addresses mix IPv4 and IPv6".into()));
        }
        let bind = match first.ip() {
            IpAddr::V4(_) if addrs.iter().all(|a| a.ip().is_loopback()) => {
                SocketAddr::from((Ipv4Addr::LOCALHOST, 0))
            }
            IpAddr::V4(_) => SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)),
            IpAddr::V6(_) if addrs.iter().all(|a| a.ip().is_loopback()) => {
                SocketAddr::from((Ipv6Addr::LOCALHOST, 0))
            }
            IpAddr::V6(_) => SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0)),
        };
        let config = tls::client_config(identity.inner(), options)?;
        let endpoint = quinn::Endpoint::client(bind)
            .map_err(|e| Error::io(format!("cannot bind a UDP socket on {bind}"), e))?;
        let connector = Connector {
            identity: identity.clone(),
            connect_timeout: options.connect_timeout,
            max_frame_len,
            errors: Arc::new(errors),
            endpoint,
            config,
            addrs,
            next_addr: AtomicUsize::new(0),
            conn: tokio::sync::Mutex::new(None),
            next_request: AtomicU64::new(1),
            closed: AtomicBool::new(false),
            state: Arc::new(watch::Sender::new(ConnectionState::Disconnected {
                cause: Error::Unreachable {
                    addr: identity.broker().to_owned(),
                    reason: "not connected yet".into(),
                },
            })),
            current: Arc::new(AtomicUsize::new(usize::MAX)),
        };
        Reconnector::new(options.reconnect.clone()).run(|| connector.connection()).await?;
        Ok(connector)
    }

    /// The address of the broker dialed last (or to be dialed first).
    pub(crate) fn addr(&self) -> SocketAddr {
        self.addrs[self.next_addr.load(Ordering::Relaxed) % self.addrs.len()]
    }

    /// The next dial goes to the next broker of the identity.
    fn move_on(&self) {
        self.next_addr.fetch_add(1, Ordering::Relaxed);
    }

    /// A fresh request id, unique on this client's connections.
    pub(crate) fn request_id(&self) -> u64 {
        self.next_request.fetch_add(1, Ordering::Relaxed)
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
            // Lost: the next dial tries another broker first, if there are several (once per loss: the
            // lost connection is forgotten, so a failed dial after it moves on once more, not twice).
            *current = None;
            self.move_on();
        }
        let conn = match self.dial().await {
            Ok(conn) => conn,
            Err(cause) => {
                self.move_on();
                self.set_state(ConnectionState::Disconnected { cause: cause.clone() });
                return Err(cause);
            }
        };
        *current = Some(conn.clone());
        self.current.store(conn.stable_id(), Ordering::Release);
        self.set_state(ConnectionState::Connected);
        // Told as soon as the connection ends, not when a stream next finds out.
        let (watched, state, errors) = (conn.clone(), self.state.clone(), self.errors.clone());
        let latest = self.current.clone();
        tokio::spawn(async move {
            let cause = errors.connection(&watched.closed().await);
            state.send_if_modified(|now| match now {
                ConnectionState::Connected if latest.load(Ordering::Acquire) == watched.stable_id() => {
                    *now = ConnectionState::Disconnected { cause };
                    true
                }
                _ => false,
            });
        });
        Ok(conn)
    }

    /// What the connection is doing now, and each change from now on.
    pub(crate) fn state(&self) -> watch::Receiver<ConnectionState> {
        self.state.subscribe()
    }

    /// Tells `state`, unless the connector was closed for good.
    fn set_state(&self, state: ConnectionState) {
        self.state.send_if_modified(|now| {
            if matches!(now, ConnectionState::Closed) {
                return false;
            }
            *now = state;
            true
        });
    }

    async fn dial(&self) -> Result<quinn::Connection> {
        let server_name = self.identity.server_name();
        let addr = self.addr();
        let connecting = self
            .endpoint
            .connect_with(self.config.clone(), addr, server_name)
            .map_err(|e| self.errors.connect(e))?;
        let timeout = self.connect_timeout;
        match tokio::time::timeout(timeout, connecting).await {
            Err(_) => Err(self.errors.unreachable(format!("no answer within {}", seconds(timeout)))),
            Ok(Err(e)) => Err(self.errors.handshake(&e)),
            Ok(Ok(conn)) => {
                tracing::debug!(broker = %addr, "connected");
                Ok(conn)
            }
        }
    }

    /// Closes the connection for good and waits up to 2 s for the broker to acknowledge it.
    pub(crate) async fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.state.send_replace(ConnectionState::Closed);
        if let Some(conn) = self.conn.lock().await.take() {
            conn.close(0u32.into(), b"client closed");
        }
        let _ = tokio::time::timeout(Duration::from_secs(2), self.endpoint.wait_idle()).await;
    }
}
