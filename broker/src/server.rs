//! The async shell: a QUIC endpoint that accepts mutually authenticated connections and moves frames
//! between streams, the [`Log`] and the [`Store`]. Every decision is delegated to [`session`](crate::session),
//! the ACL and the log's sequencer.
//!
//! # Streams
//!
//! Every exchange runs on a bidirectional stream opened by the client; its first frame decides its kind.
//! - **Publish stream** (`Head` or `Publish` first): publishes are pipelined. The reader verifies each batch
//!   and hands it to the log **in arrival order**; a writer task sends each answer (`Published` or `Error`)
//!   in the same order once the log has made the batch durable.
//! - **Policy stream** (`GetPolicies` or `PutPolicy` first): topic policies, read by any principal the ACL
//!   lets publish, subscribe or administer the topic, and stored (durably, through the log) only from an
//!   administrator, signed by the configured topic authority, with the next epoch.
//! - **Subscription stream** (`Subscribe` first, one per stream): `Subscribed`, then `Deliver` frames read
//!   from the store in offset order up to the durable end, then new batches as syncs make them durable
//!   (read from the log's in-memory tail while it still holds them, see [`Log::read_tail`]).
//!   A subscriber holds at most one read chunk (`subscriber_read_bytes`) in broker memory and its pace is
//!   set by the QUIC stream's flow control, so a slow subscriber never blocks publishers or other
//!   subscribers. Acks come back on the same stream.
//!
//! # Shutdown
//!
//! [`Broker::shutdown`] stops accepting connections and new requests, lets answers to publishes already
//! handed to the log go out, closes connections, then closes the log (a final sync).

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use std::collections::HashMap;
use std::sync::Mutex;

use sealpost_protocol::{
    ErrorCode, Frame, Limits, Principal, PublicKey, SealedBatch, SignedPolicy, StartAt, Topic, VerifiedPolicy,
};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

use crate::acl::Acl;
use crate::budget::{Budget, MemoryLimits, Pool};
use crate::config::Config;
use crate::ratelimit::PublishLimiter;
use crate::session;
use crate::store::{Store, Stored};
use crate::tls::{self, Peer, TlsMaterial};
use crate::wire::{error_frame, write_frame, FrameReader, Received};
use crate::writer::{Appended, Log};
use crate::{Error, Result};

/// Limits the server enforces on peers.
#[derive(Clone, Debug)]
pub struct ServerLimits {
    /// Frame and batch limits.
    pub protocol: Limits,
    /// Connections open at once, in total.
    pub max_connections: usize,
    /// Bidirectional streams a connection may have open at once.
    pub max_streams_per_connection: u32,
    /// Streams one principal may have open at once, over its connections.
    pub max_streams_per_principal: u32,
    /// Streams open at once, over all connections.
    pub max_streams: u32,
    /// A connection with no traffic for this long is closed.
    pub idle_timeout: Duration,
    /// Bytes a subscriber reads from storage at a time: its memory bound in the broker.
    pub subscriber_read_bytes: usize,
    /// Bytes of recently appended batches kept in memory, over all topics, so that subscribers that keep
    /// up need not read the store (0: none). Default 0 here: the tail assumes that the store reads back
    /// exactly what was appended, which holds for the built-in engines that a configuration file names
    /// (where `limits.tail_cache_bytes` defaults to 8 MiB), but not necessarily for any [`Store`] an
    /// embedder passes in.
    pub tail_cache_bytes: usize,
    /// Publishes on one stream waiting for durability at once.
    pub max_in_flight_per_stream: usize,
    /// Connections one principal may have open at once.
    pub max_connections_per_principal: usize,
    /// Subscriptions one connection may have open at once.
    pub max_subscriptions_per_connection: usize,
    /// Messages per second one principal may publish (0: unlimited).
    pub publish_msgs_per_sec: u64,
    /// Bytes of sealed batches per second one principal may publish (0: unlimited).
    pub publish_bytes_per_sec: u64,
    /// What peers can make the broker hold: in-flight budgets, the frame deadline, QUIC windows.
    pub memory: MemoryLimits,
}

impl Default for ServerLimits {
    fn default() -> Self {
        Self {
            protocol: Limits::default(),
            max_connections: 10_000,
            max_streams_per_connection: 256,
            max_streams_per_principal: 1024,
            max_streams: 65_536,
            idle_timeout: Duration::from_secs(30),
            subscriber_read_bytes: 1024 * 1024,
            tail_cache_bytes: 0,
            max_in_flight_per_stream: 1024,
            max_connections_per_principal: 64,
            max_subscriptions_per_connection: 128,
            publish_msgs_per_sec: 0,
            publish_bytes_per_sec: 0,
            memory: MemoryLimits::default(),
        }
    }
}

/// Everything a broker needs to run.
pub struct BrokerOptions {
    /// Address to listen on (UDP).
    pub listen: SocketAddr,
    /// Certificates and keys.
    pub tls: TlsMaterial,
    /// The operator's ACL.
    pub acl: Acl,
    /// The storage engine.
    pub store: Arc<dyn Store>,
    /// The topic authority's public key: only policies it signed are stored (none without it).
    pub authority: Option<PublicKey>,
    /// Limits.
    pub limits: ServerLimits,
}

impl BrokerOptions {
    /// Reads the files a configuration names (certificates, keys, ACL) and opens its store.
    pub fn from_config(config: &Config) -> Result<BrokerOptions> {
        let read = |path: &std::path::Path, what: &str| {
            std::fs::read_to_string(path)
                .map_err(|e| Error::Config(format!("{what} {}: {e}", path.display())))
        };
        let tls = TlsMaterial {
            client_ca_pem: read(&config.tls.ca, "tls.ca")?,
            cert_chain_pem: read(&config.tls.cert, "tls.cert")?,
            key_pem: read(&config.tls.key, "tls.key")?,
            crls_pem: config.tls.crls.iter().map(|p| read(p, "tls.crls")).collect::<Result<_>>()?,
        };
        let acl = Acl::load(&config.acl)?;
        let store = crate::store::open(config.storage.engine(), &config.data_dir)?;
        let l = &config.limits;
        let limits = ServerLimits {
            protocol: l.protocol_limits(),
            max_connections: l.max_connections as usize,
            max_streams_per_connection: l.max_streams_per_connection,
            max_streams_per_principal: l.max_streams_per_principal,
            max_streams: l.max_streams,
            idle_timeout: Duration::from_millis(l.idle_timeout_ms),
            subscriber_read_bytes: l.subscriber_read_bytes,
            tail_cache_bytes: l.tail_cache_bytes,
            max_connections_per_principal: l.max_connections_per_principal as usize,
            max_subscriptions_per_connection: l.max_subscriptions_per_connection as usize,
            publish_msgs_per_sec: l.publish_msgs_per_sec,
            publish_bytes_per_sec: l.publish_bytes_per_sec,
            memory: config.memory,
            ..ServerLimits::default()
        };
        Ok(BrokerOptions { listen: config.listen, tls, acl, store, authority: config.authority, limits })
    }
}

struct Ctx {
    acl: Acl,
    log: Arc<Log>,
    authority: Option<PublicKey>,
    /// The current policy of each topic asked about (`None`: it has none), verified against `authority`.
    policies: Mutex<HashMap<Topic, Option<Arc<VerifiedPolicy>>>>,
    limits: ServerLimits,
    connections: AtomicUsize,
    /// Open connections, publish limiter and in-flight budget of each principal seen.
    principals: Mutex<HashMap<Principal, PrincipalState>>,
    /// The in-flight budget of all peers together.
    inflight_total: Pool,
    /// Streams open over all connections.
    streams_total: Pool,
    /// The time origin of the rate limiters.
    started: std::time::Instant,
}

struct PrincipalState {
    /// Open connections, by quinn's stable id: their QUIC windows are shares of the principal's.
    connections: HashMap<usize, quinn::Connection>,
    limiter: PublishLimiter,
    inflight: Pool,
    streams: Pool,
}

impl Ctx {
    /// The current policy of `topic`, from the cache or the store. A stored policy that does not verify
    /// against the configured authority (the configuration changed) counts as none.
    fn current_policy(&self, topic: &Topic) -> Result<Option<Arc<VerifiedPolicy>>> {
        if let Some(cached) = self.policies_lock().get(topic) {
            return Ok(cached.clone());
        }
        let newest = self.log.store().policies(topic, 1)?.pop();
        let policy = match (newest, &self.authority) {
            (Some(bytes), Some(authority)) => SignedPolicy::decode(bytes, &self.limits.protocol)
                .and_then(|p| p.verify(authority))
                .map(Arc::new)
                .map_err(|e| warn!(%topic, error = %e, "stored policy does not verify; ignoring it"))
                .ok(),
            _ => None,
        };
        self.policies_lock().insert(topic.clone(), policy.clone());
        Ok(policy)
    }

    fn principals_lock(&self) -> std::sync::MutexGuard<'_, HashMap<Principal, PrincipalState>> {
        // Counters only: recover them from a poisoned lock.
        self.principals.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Counts a new connection of `principal` and shares the principal's QUIC windows anew among its
    /// connections; returns the connection's in-flight budget and stream slots, or `None` (and nothing
    /// counted) if the principal already has the most connections.
    fn open_connection(&self, principal: &Principal, conn: &quinn::Connection) -> Option<(Budget, Budget)> {
        let now = self.started.elapsed();
        let memory = &self.limits.memory;
        let mut principals = self.principals_lock();
        let state = principals.entry(principal.clone()).or_insert_with(|| PrincipalState {
            connections: HashMap::new(),
            limiter: PublishLimiter::new(
                self.limits.publish_msgs_per_sec,
                self.limits.publish_bytes_per_sec,
                now,
            ),
            inflight: Pool::new(memory.inflight_bytes_per_principal),
            streams: Pool::new(self.limits.max_streams_per_principal.into()),
        });
        if state.connections.len() >= self.limits.max_connections_per_principal {
            return None;
        }
        state.connections.insert(conn.stable_id(), conn.clone());
        share_windows(memory, state);
        let own = Pool::new(memory.inflight_bytes_per_connection);
        let inflight = Budget::new(vec![own, state.inflight.clone(), self.inflight_total.clone()]);
        let streams = Budget::new(vec![state.streams.clone(), self.streams_total.clone()]);
        Some((inflight, streams))
    }

    fn close_connection(&self, principal: &Principal, conn: &quinn::Connection) {
        if let Some(state) = self.principals_lock().get_mut(principal) {
            state.connections.remove(&conn.stable_id());
            share_windows(&self.limits.memory, state);
        }
    }

    /// Takes a batch of `messages` and `bytes` from `principal`'s publish allowance.
    fn allow_publish(&self, principal: &Principal, messages: u64, bytes: u64) -> Result<()> {
        let now = self.started.elapsed();
        let mut principals = self.principals_lock();
        let allowed = principals.get_mut(principal).is_none_or(|s| s.limiter.try_take(messages, bytes, now));
        if allowed {
            Ok(())
        } else {
            Err(Error::RateLimited)
        }
    }

    fn policies_lock(&self) -> std::sync::MutexGuard<'_, HashMap<Topic, Option<Arc<VerifiedPolicy>>>> {
        // The map holds no invariant a panicking holder could break: recover it.
        self.policies.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Gives each open connection of a principal its share of the principal's QUIC windows.
fn share_windows(memory: &MemoryLimits, state: &PrincipalState) {
    let (receive, send) = memory.windows(state.connections.len());
    let receive = quinn::VarInt::from_u64(receive).unwrap_or(quinn::VarInt::MAX);
    for conn in state.connections.values() {
        conn.set_receive_window(receive);
        conn.set_send_window(send);
    }
}

/// A running broker.
pub struct Broker {
    local_addr: SocketAddr,
    shutdown: watch::Sender<bool>,
    task: tokio::task::JoinHandle<Result<()>>,
}

impl Broker {
    /// Binds the endpoint and starts serving.
    pub async fn start(options: BrokerOptions) -> Result<Broker> {
        let crypto = tls::server_crypto(&options.tls)?;
        let mut server_config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
        let (memory, max_streams) = (options.limits.memory, options.limits.max_streams);
        let window = |bytes: u64| {
            quinn::VarInt::from_u64(bytes).map_err(|_| Error::Config("QUIC window too large".into()))
        };
        let mut transport = quinn::TransportConfig::default();
        transport
            .max_concurrent_bidi_streams(options.limits.max_streams_per_connection.into())
            .max_concurrent_uni_streams(0u8.into())
            .max_idle_timeout(Some(
                options
                    .limits
                    .idle_timeout
                    .try_into()
                    .map_err(|_| Error::Config("idle timeout too large".into()))?,
            ))
            .stream_receive_window(window(memory.stream_receive_window)?)
            .receive_window(window(memory.receive_window_per_connection)?)
            .send_window(memory.send_window_per_connection);
        server_config.transport_config(Arc::new(transport));
        server_config.migration(false);
        let endpoint = quinn::Endpoint::server(server_config, options.listen)?;
        let local_addr = endpoint.local_addr()?;
        let log = Arc::new(Log::with_tail(options.store, options.limits.tail_cache_bytes)?);
        let ctx = Arc::new(Ctx {
            acl: options.acl,
            log,
            authority: options.authority,
            policies: Mutex::new(HashMap::new()),
            limits: options.limits,
            connections: AtomicUsize::new(0),
            principals: Mutex::new(HashMap::new()),
            inflight_total: Pool::new(memory.inflight_bytes_total),
            streams_total: Pool::new(max_streams.into()),
            started: std::time::Instant::now(),
        });
        let (shutdown, shutdown_rx) = watch::channel(false);
        let task = tokio::spawn(accept_loop(endpoint, ctx, shutdown_rx));
        info!(%local_addr, "sealpost broker listening (QUIC, mutual TLS 1.3, ALPN sealpost/1)");
        Ok(Broker { local_addr, shutdown, task })
    }

    /// The address the broker listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops accepting, finishes in-flight publishes, syncs storage and returns.
    pub async fn shutdown(self) -> Result<()> {
        let _ = self.shutdown.send(true);
        self.task.await.map_err(|e| Error::Storage(format!("broker task failed: {e}")))?
    }
}

async fn accept_loop(
    endpoint: quinn::Endpoint,
    ctx: Arc<Ctx>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<()> {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            incoming = endpoint.accept() => {
                let Some(incoming) = incoming else { break };
                if ctx.connections.load(Ordering::Relaxed) >= ctx.limits.max_connections {
                    warn!(remote = %incoming.remote_address(), "connection refused: max_connections reached");
                    incoming.refuse();
                    continue;
                }
                ctx.connections.fetch_add(1, Ordering::Relaxed);
                let (ctx, shutdown) = (ctx.clone(), shutdown.clone());
                connections.spawn(async move {
                    serve_connection(incoming, &ctx, shutdown).await;
                    ctx.connections.fetch_sub(1, Ordering::Relaxed);
                });
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            _ = shutdown.changed() => break,
        }
    }
    info!("shutting down: no new connections; finishing in-flight publishes");
    // Connection tasks see the shutdown signal, stop taking requests and drain their answers.
    let drain = async { while connections.join_next().await.is_some() {} };
    if tokio::time::timeout(Duration::from_secs(10), drain).await.is_err() {
        warn!("connections did not drain within 10 s; closing them");
    }
    endpoint.close(0u8.into(), b"shutting down");
    let log = Arc::into_inner(ctx).map(|ctx| ctx.log);
    if let Some(log) = log.and_then(Arc::into_inner) {
        log.close().await?;
    }
    endpoint.wait_idle().await;
    info!("storage synced; bye");
    Ok(())
}

async fn serve_connection(incoming: quinn::Incoming, ctx: &Arc<Ctx>, mut shutdown: watch::Receiver<bool>) {
    let remote = incoming.remote_address();
    let conn = match incoming.accept() {
        Ok(connecting) => match connecting.await {
            Ok(conn) => conn,
            Err(e) => {
                info!(%remote, error = %e, "TLS handshake refused");
                return;
            }
        },
        Err(e) => {
            info!(%remote, error = %e, "connection refused");
            return;
        }
    };
    let peer = match Peer::from_connection(&conn) {
        Ok(peer) => Arc::new(peer),
        Err(e) => {
            info!(%remote, error = %e, "connection refused");
            conn.close(1u8.into(), b"client certificate refused");
            return;
        }
    };
    let Some((budget, stream_slots)) = ctx.open_connection(&peer.principal, &conn) else {
        warn!(%remote, principal = %peer.principal, "connection refused: max_connections_per_principal reached");
        conn.close(2u8.into(), b"too many connections for this principal");
        return;
    };
    info!(%remote, principal = %peer.principal, "connected");
    let state =
        Arc::new(ConnectionState { ids: AtomicU64::new(1), subscriptions: AtomicUsize::new(0), budget });
    let mut streams = JoinSet::new();
    loop {
        tokio::select! {
            stream = conn.accept_bi() => match stream {
                Ok((mut send, mut recv)) => {
                    // Every open stream holds state in the broker: beyond the principal's or the broker's
                    // stream limit it is refused at once.
                    let Some(held) = stream_slots.try_reserve(1) else {
                        let code = quinn::VarInt::from(ErrorCode::LIMIT_EXCEEDED.0);
                        let _ = send.reset(code);
                        let _ = recv.stop(code);
                        debug!(principal = %peer.principal, "stream refused: max_streams_per_principal or max_streams reached");
                        continue;
                    };
                    let (ctx, peer, state, shutdown) = (ctx.clone(), peer.clone(), state.clone(), shutdown.clone());
                    streams.spawn(async move {
                        if let Err(e) = serve_stream(send, recv, &ctx, &peer, &state, shutdown).await {
                            debug!(principal = %peer.principal, error = %e, "stream ended with an error");
                        }
                        drop(held);
                    });
                }
                Err(e) => {
                    debug!(principal = %peer.principal, reason = %e, "connection closed");
                    break;
                }
            },
            Some(_) = streams.join_next(), if !streams.is_empty() => {}
            _ = shutdown.changed() => break,
        }
    }
    while streams.join_next().await.is_some() {}
    conn.close(0u8.into(), b"bye");
    ctx.close_connection(&peer.principal, &conn);
    info!(%remote, principal = %peer.principal, "disconnected");
}

/// What the streams of one connection share.
struct ConnectionState {
    /// The next subscription id.
    ids: AtomicU64,
    /// Subscriptions open now.
    subscriptions: AtomicUsize,
    /// What the connection's frames and subscription reads are reserved from.
    budget: Budget,
}

async fn serve_stream(
    mut send: quinn::SendStream,
    recv: quinn::RecvStream,
    ctx: &Arc<Ctx>,
    peer: &Arc<Peer>,
    conn: &ConnectionState,
    shutdown: watch::Receiver<bool>,
) -> Result<()> {
    let memory = &ctx.limits.memory;
    let mut reader = FrameReader::new(
        recv,
        ctx.limits.protocol.max_frame_len,
        conn.budget.clone(),
        memory.frame_timeout(),
    );
    let first = match reader.next().await {
        Ok(Some(received)) => received,
        Ok(None) => return Ok(()),
        Err(e) => return refuse(&mut send, &mut reader, None, e).await,
    };
    match first.frame {
        Frame::Head { .. } | Frame::Publish { .. } => {
            serve_publish(first, send, reader, ctx, peer, shutdown).await
        }
        Frame::GetPolicies { .. } | Frame::PutPolicy { .. } => {
            serve_policies(first.frame, send, reader, ctx, peer, shutdown).await
        }
        Frame::Subscribe { request_id, topic, from, durable } => {
            drop(first.reservation);
            let open = conn.subscriptions.fetch_add(1, Ordering::Relaxed);
            let result = if open >= ctx.limits.max_subscriptions_per_connection {
                let err = Error::LimitExceeded("max_subscriptions_per_connection");
                refuse(&mut send, &mut reader, Some(request_id), err).await
            } else {
                let id = conn.ids.fetch_add(1, Ordering::Relaxed);
                let subscription = Subscription { request_id, id, topic, from, durable };
                serve_subscription(subscription, send, reader, ctx, peer, &conn.budget, shutdown).await
            };
            conn.subscriptions.fetch_sub(1, Ordering::Relaxed);
            result
        }
        _ => {
            let err =
                Error::Protocol(sealpost_protocol::Error::Malformed("unexpected first frame on a stream"));
            refuse(&mut send, &mut reader, None, err).await
        }
    }
}

/// Sends one error frame, finishes the stream and stops reading it, with the error's code.
async fn refuse(
    send: &mut quinn::SendStream,
    reader: &mut FrameReader,
    request_id: Option<u64>,
    err: Error,
) -> Result<()> {
    reader.stop(&err);
    write_frame(send, &error_frame(request_id, &err)).await?;
    let _ = send.finish();
    Err(err)
}

type Answer = Pin<Box<dyn Future<Output = Frame> + Send>>;

async fn serve_publish(
    first: Received,
    mut send: quinn::SendStream,
    mut reader: FrameReader,
    ctx: &Arc<Ctx>,
    peer: &Arc<Peer>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<()> {
    let (answers, mut pending) = mpsc::channel::<Answer>(ctx.limits.max_in_flight_per_stream);
    // Answers go out in request order; each waits for its batch to be durable.
    let writer = tokio::spawn(async move {
        while let Some(answer) = pending.recv().await {
            let frame = answer.await;
            if write_frame(&mut send, &frame).await.is_err() {
                return;
            }
        }
        let _ = send.finish();
    });
    let mut next = Some(first);
    let result = loop {
        let received = match next.take() {
            Some(received) => received,
            None => tokio::select! {
                received = reader.next() => match received {
                    Ok(Some(received)) => received,
                    Ok(None) => break Ok(()),
                    Err(e) => {
                        // The stream's framing is broken or too slow: answer once, then stop reading it.
                        reader.stop(&e);
                        let frame = error_frame(None, &e);
                        let _ = answers.send(Box::pin(async move { frame })).await;
                        break Err(e);
                    }
                },
                _ = shutdown.changed() => break Ok(()),
            },
        };
        let answer = answer_publish_frame(received, ctx, peer);
        if answers.send(answer).await.is_err() {
            break Ok(());
        }
    };
    drop(answers);
    let _ = writer.await;
    result
}

/// Decides what to do with one frame on a publish stream. A batch that passes the checks is handed to
/// the log *now*, so batches reach the sequencer in the order they arrived; the returned future resolves
/// to the answer once the log has made it durable, and holds the frame's reservation until then.
fn answer_publish_frame(received: Received, ctx: &Arc<Ctx>, peer: &Peer) -> Answer {
    let now = |frame: Frame| -> Answer { Box::pin(async move { frame }) };
    let Received { frame, reservation } = received;
    match frame {
        Frame::Publish { request_id, batch } => {
            let checked =
                SealedBatch::decode(batch, &ctx.limits.protocol).map_err(Error::from).and_then(|sealed| {
                    let policy = ctx.current_policy(&sealed.header().topic)?;
                    session::authorize_publish(peer, &ctx.acl, policy.as_deref(), sealed)
                });
            let checked = checked.and_then(|(topic, verified)| {
                let (count, bytes) = (u64::from(verified.header().count), verified.as_bytes().len() as u64);
                ctx.allow_publish(&peer.principal, count, bytes).map(|()| (topic, verified))
            });
            match checked {
                Ok((topic, verified)) => {
                    let appended = ctx.log.submit(topic, verified);
                    Box::pin(async move {
                        let answer = match appended.await {
                            Ok(Appended { first_offset, count, .. }) => {
                                Frame::Published { request_id, first_offset, count }
                            }
                            Err(e) => error_frame(Some(request_id), &e),
                        };
                        drop(reservation);
                        answer
                    })
                }
                Err(e) => {
                    debug!(principal = %peer.principal, error = %e, "publish refused");
                    now(error_frame(Some(request_id), &e))
                }
            }
        }
        Frame::Head { request_id, topic, publisher } => {
            match session::authorize_head(peer, &ctx.acl, &topic, &publisher) {
                Ok(()) => {
                    let store = ctx.log.store().clone();
                    Box::pin(async move {
                        let head =
                            tokio::task::spawn_blocking(move || store.publisher_head(&topic, &publisher))
                                .await
                                .map_err(|e| Error::Storage(e.to_string()))
                                .and_then(|r| r);
                        match head {
                            Ok(last) => {
                                Frame::HeadIs { request_id, head: crate::store::chain_head(last.as_ref()) }
                            }
                            Err(e) => error_frame(Some(request_id), &e),
                        }
                    })
                }
                Err(e) => now(error_frame(Some(request_id), &e)),
            }
        }
        _ => now(error_frame(
            None,
            &Error::Protocol(sealpost_protocol::Error::Malformed("unexpected frame on a publish stream")),
        )),
    }
}

/// A policy stream: `GetPolicies` and `PutPolicy` requests, answered one at a time.
async fn serve_policies(
    first: Frame,
    mut send: quinn::SendStream,
    mut reader: FrameReader,
    ctx: &Arc<Ctx>,
    peer: &Arc<Peer>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<()> {
    let mut next = Some(first);
    loop {
        let frame = match next.take() {
            Some(frame) => frame,
            None => tokio::select! {
                received = reader.next() => match received {
                    Ok(Some(received)) => received.frame,
                    Ok(None) => break,
                    Err(e) => return refuse(&mut send, &mut reader, None, e).await,
                },
                _ = shutdown.changed() => break,
            },
        };
        let answer = match frame {
            Frame::GetPolicies { request_id, topic } => {
                let found = session::authorize_get_policies(peer, &ctx.acl, &topic)
                    .and_then(|()| ctx.log.store().policies(&topic, 2));
                match found {
                    Ok(policies) => Frame::Policies { request_id, policies },
                    Err(e) => error_frame(Some(request_id), &e),
                }
            }
            Frame::PutPolicy { request_id, policy } => match put_policy(ctx, peer, policy).await {
                Ok(()) => Frame::PolicyStored { request_id },
                Err(e) => {
                    info!(principal = %peer.principal, error = %e, "policy refused");
                    error_frame(Some(request_id), &e)
                }
            },
            _ => {
                let err = Error::Protocol(sealpost_protocol::Error::Malformed(
                    "unexpected frame on a policy stream",
                ));
                return refuse(&mut send, &mut reader, None, err).await;
            }
        };
        write_frame(&mut send, &answer).await?;
    }
    let _ = send.finish();
    Ok(())
}

/// Verifies and durably stores a policy, then makes it the topic's current one for publish checks.
async fn put_policy(ctx: &Arc<Ctx>, peer: &Peer, policy: bytes::Bytes) -> Result<()> {
    let signed = SignedPolicy::decode(policy, &ctx.limits.protocol)?;
    let topic = signed.topic().clone();
    let current = ctx.current_policy(&topic)?;
    let verified =
        session::authorize_put_policy(peer, &ctx.acl, ctx.authority.as_ref(), current.as_deref(), signed)?;
    let epoch = verified.epoch();
    ctx.log.put_policy(topic.clone(), epoch.0, verified.as_bytes().clone()).await?;
    info!(principal = %peer.principal, %topic, %epoch, "policy stored");
    ctx.policies_lock().insert(topic, Some(Arc::new(verified)));
    Ok(())
}

/// A subscribe request, as the broker received it.
struct Subscription {
    request_id: u64,
    /// The id the broker gave it on this connection.
    id: u64,
    topic: Topic,
    from: StartAt,
    durable: Option<String>,
}

async fn serve_subscription(
    request: Subscription,
    mut send: quinn::SendStream,
    mut reader: FrameReader,
    ctx: &Arc<Ctx>,
    peer: &Arc<Peer>,
    budget: &Budget,
    mut shutdown: watch::Receiver<bool>,
) -> Result<()> {
    let Subscription { request_id, id: subscription, topic, from, durable } = request;
    if let Err(e) = session::authorize_subscribe(peer, &ctx.acl, &topic, durable.as_deref()) {
        debug!(principal = %peer.principal, %topic, error = %e, "subscribe refused");
        return refuse(&mut send, &mut reader, Some(request_id), e).await;
    }
    let store = ctx.log.store().clone();
    let mut end = ctx.log.durable_end(&topic)?;
    let committed = match &durable {
        Some(name) => store.durable_offset(&topic, &peer.principal, name)?,
        None => None,
    };
    let first = store.first_offset(&topic)?;
    let start = session::start_offset(from, committed, first, *end.borrow_and_update());
    write_frame(&mut send, &Frame::Subscribed { request_id, subscription, start_offset: start }).await?;
    info!(principal = %peer.principal, %topic, %start, durable = durable.as_deref().unwrap_or(""), "subscribed");

    // Acks and unsubscribe arrive on the receive half; this task ends when the client is done.
    let acks = {
        let (ctx, topic, principal) = (ctx.clone(), topic.clone(), peer.principal.clone());
        tokio::spawn(async move {
            loop {
                let frame = match reader.next().await {
                    Ok(Some(received)) => received.frame,
                    Ok(None) => return Ok(()),
                    Err(e) => {
                        reader.stop(&e);
                        return Err(e);
                    }
                };
                match frame {
                    Frame::Ack { subscription: s, next_offset } if s == subscription => {
                        if let Some(name) = &durable {
                            ctx.log
                                .commit_offset(topic.clone(), principal.clone(), name.clone(), next_offset)
                                .await?;
                        }
                    }
                    Frame::Unsubscribe { .. } => return Ok(()),
                    _ => {
                        let err = Error::Protocol(sealpost_protocol::Error::Malformed(
                            "unexpected frame on a subscription stream",
                        ));
                        reader.stop(&err);
                        return Err(err);
                    }
                }
            }
        })
    };
    tokio::pin!(acks);

    let mut cursor = start;
    let read_bytes = ctx.limits.subscriber_read_bytes;
    loop {
        let durable_end = *end.borrow_and_update();
        if cursor < durable_end {
            // What is read is held until QUIC takes it: it counts against the connection's budget.
            let mut held = tokio::select! {
                held = budget.reserve(read_bytes) => held,
                _ = &mut acks => return Ok(()),
                _ = shutdown.changed() => return Ok(()),
            };
            // A subscriber that keeps up finds what it needs in the log's in-memory tail. The store may
            // also yield lost ranges (damaged storage): they go out as `Lost` frames, in offset order.
            let items: Vec<Stored> = match ctx.log.read_tail(&topic, cursor, read_bytes) {
                Some(batches) => batches.into_iter().map(Stored::Batch).collect(),
                None => {
                    let (store, t) = (store.clone(), topic.clone());
                    tokio::task::spawn_blocking(move || store.read(&t, cursor, read_bytes))
                        .await
                        .map_err(|e| Error::Storage(e.to_string()))??
                }
            };
            let size = items.iter().map(Stored::bytes_len).sum::<usize>();
            if size > held.bytes() {
                // A single batch larger than a read: reserve the rest before sending it.
                let extra = tokio::select! {
                    extra = budget.reserve(size - held.bytes()) => extra,
                    _ = &mut acks => return Ok(()),
                    _ = shutdown.changed() => return Ok(()),
                };
                held.merge(extra);
            }
            held.shrink_to(size);
            let before = cursor;
            for item in items {
                if item.offset() >= durable_end {
                    break;
                }
                let (end, len) = (item.end(), item.bytes_len());
                let frame = item.into_frame(subscription);
                tokio::select! {
                    written = write_frame(&mut send, &frame) => written?,
                    _ = &mut acks => return Ok(()),
                    _ = shutdown.changed() => return Ok(()),
                }
                held.shrink_to(held.bytes().saturating_sub(len));
                cursor = end;
            }
            drop(held);
            if cursor != before {
                continue;
            }
        }
        {
            tokio::select! {
                changed = end.changed() => if changed.is_err() { return Ok(()) },
                _ = &mut acks => return Ok(()),
                _ = shutdown.changed() => return Ok(()),
            }
        }
    }
}
