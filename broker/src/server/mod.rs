//! The async shell: a QUIC endpoint that accepts mutually authenticated connections and moves frames
//! between streams, the [`Log`] and the [`Store`](crate::store::Store). It decides nothing: every decision
//! about a peer is the [`session`](crate::session)'s, and what is stored and when it is durable is the
//! log's. It owns the tasks (one per connection, one per stream, plus a writer of answers per publish
//! stream and a reader of acks per subscription), the frame deadlines and budget waits of reading, the
//! blocking store reads (run off the async workers) and shutdown.
//!
//! # Files
//!
//! - `mod.rs`: [`Broker`]: the endpoint, the accept loop, shutdown; `options.rs`: [`BrokerOptions`].
//! - `connection.rs`: one connection: handshake, admission, its streams, their first frame.
//! - `publish.rs`, `policies.rs`, `subscription.rs`, `admin.rs`: one kind of stream each.
//! - `wire.rs`: frames in and out of QUIC streams.
//! - `reload.rs`: the configuration watcher: SIGHUP and changed files, applied ([`Broker::reload_on_change`]).
//! - `retention.rs`: the task that runs the store's retention passes.
//!
//! # Reloads
//!
//! [`Broker::reload_on_change`] watches the configuration file; each reload is read and checked whole
//! off the async workers ([`crate::reload`]) and, if accepted, applied: the session's ACL is replaced,
//! the endpoint takes the new TLS configuration for new handshakes, the new configuration is published on
//! [`Broker::config`], and the connection and subscription tasks are told. Each connection checks its
//! certificate chain again if the CA bundle or the CRLs changed, and closes itself with
//! `CERTIFICATE_REVOKED` if the session says so; each subscription asks the session whether the ACL
//! still allows it, and ends with `NOT_AUTHORIZED` if not (once its current read chunk is written: a
//! frame half written is never cut). A refused reload changes nothing and is logged, told to the
//! observers (metrics, audit) as [`Event::ConfigReloadRefused`](crate::event::Event::ConfigReloadRefused).
//! The metrics endpoint's own TLS configuration is not reloaded.
//!
//! # Streams
//!
//! Every exchange runs on a bidirectional stream opened by the client; its first frame decides its kind.
//! - **Publish stream** (`Head` or `Publish` first): publishes are pipelined. The reader has the session
//!   check each batch and hands it to the log **in arrival order**; a writer task sends each answer
//!   (`Published` or `Error`) in the same order once the log has made the batch durable.
//! - **Policy stream** (`GetPolicies`, `GetPolicyHistory` or `PutPolicy` first): topic policies (the
//!   newest two, or a page of the history), read by any principal the ACL lets publish, subscribe or
//!   administer the topic, and stored (durably, through the log) only from an
//!   administrator, signed by the configured topic authority, with the next epoch.
//! - **Admin stream** (`Admin` first): an operator's queries (stats, topics, durable subscriptions,
//!   connections), answered from the store off the async workers, from principals that administer the
//!   whole broker only.
//! - **Subscription stream** (`Subscribe` first, one per stream): `Subscribed`, then `Deliver` frames read
//!   from the store in offset order up to the durable end, then new batches as syncs make them durable
//!   (read from the log's in-memory tail while it still holds them, see [`Log::read_tail`]).
//!   A subscriber holds at most one read chunk (`subscriber_read_bytes`) in broker memory and its pace is
//!   set by the QUIC stream's flow control, so a slow subscriber never blocks publishers or other
//!   subscribers. Acks come back on the same stream.
//!
//! # Metrics
//!
//! With [`BrokerOptions::metrics`] set, [`Broker::start`] makes a [`Metrics`], hands it to the session as
//! its observer and to the log for its hooks, and serves it ([`MetricsServer`], stopped by shutdown); the
//! publish stream reports each publish's latency to it.
//!
//! # Shutdown
//!
//! [`Broker::shutdown`] stops accepting connections and new requests, lets answers to publishes already
//! handed to the log go out, closes connections, then closes the log (a final sync).
//!
//! The same path runs by itself when the storage fails for good (fail-stop: the log decides, see
//! [`crate::writer`], and [`Log::failed`] tells the accept loop): the broker stops accepting, the answers
//! in flight go out (every one an error: the log acknowledges nothing after the failure), connections are
//! closed, and there is no final sync. [`Broker::storage_failed`] resolves then, and [`Broker::shutdown`]
//! returns [`Error::StorageFailed`]; the binary exits with [`STORAGE_FAILED_EXIT`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::{info, warn};

use crate::audit::{AuditLog, AuditObserver};
use crate::event::Observers;
use crate::metrics::http::{check_listen, MetricsServer};
use crate::metrics::Metrics;
use crate::reload::Running;
use crate::session::{Close, Endpoint};
use crate::tls;
use crate::writer::Log;
use crate::{Error, Result};

mod admin;
mod connection;
mod options;
mod policies;
mod publish;
mod reload;
mod retention;
mod subscription;
mod wire;

pub use self::options::{check_config, BrokerOptions, MetricsOptions};
pub use crate::limits::ServerLimits;

/// The exit status of `sealpost-broker serve` after the broker stopped because its storage failed for good
/// (fail-stop): 74, `EX_IOERR` of sysexits(3), "an error occurred while doing I/O on some file". Distinct
/// from 1 (every other error: a bad configuration, a port in use), so that an operator and a supervisor
/// can tell the two apart: this one is worth a restart (the opening recovers the store; systemd's
/// `Restart=on-failure` does it), a bad configuration is not.
pub const STORAGE_FAILED_EXIT: i32 = 74;

/// How long shutdown waits for connections to finish their in-flight publishes.
const DRAIN: Duration = Duration::from_secs(10);

/// A running broker.
pub struct Broker {
    local_addr: SocketAddr,
    metrics: Option<MetricsServer>,
    audit: Option<Arc<AuditObserver>>,
    shutdown: watch::Sender<bool>,
    /// The log's [`Log::failed`].
    failed: watch::Receiver<Option<String>>,
    task: tokio::task::JoinHandle<Result<()>>,
    live: Arc<Live>,
    config: Option<watch::Receiver<Arc<Running>>>,
}

/// What a reload replaces in a running broker, and how live connections and streams learn of it.
struct Live {
    endpoint: quinn::Endpoint,
    session: Arc<Endpoint>,
    transport: Arc<quinn::TransportConfig>,
    revision: watch::Sender<Arc<Revision>>,
    /// The retention rules the retention task enforces.
    retention: watch::Sender<crate::retention::Retention>,
}

/// What connections and subscriptions check themselves against again when it changes: the verifier of
/// client certificates, and a generation that moves when the CA bundle or the CRLs changed (an ACL-only
/// reload does not make connections check their certificates again). The ACL itself is the session's.
struct Revision {
    verifier: tls::ClientVerifier,
    generation: u64,
}

/// The QUIC server configuration: `crypto`, the transport settings, no migration.
fn quic_config(
    crypto: Arc<quinn::crypto::rustls::QuicServerConfig>,
    transport: &Arc<quinn::TransportConfig>,
) -> quinn::ServerConfig {
    let mut config = quinn::ServerConfig::with_crypto(crypto);
    config.transport_config(transport.clone());
    config.migration(false);
    config
}

fn unix_seconds() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

impl Broker {
    /// Binds the endpoint and starts serving.
    pub async fn start(options: BrokerOptions) -> Result<Broker> {
        let BrokerOptions { listen, tls, acl, store, authority, limits, metrics, audit, retention } = options;
        // Opened first: a log that cannot be continued (a damaged tail, an unreadable key) stops the start.
        let audit = match &audit {
            Some(config) => Some(Arc::new(AuditObserver::new(AuditLog::open(config)?))),
            None => None,
        };
        if let Some(options) = &metrics {
            check_listen(options.listen, options.tls)?;
        }
        limits.fit_engine(store.max_batch_len())?;
        let crypto = tls::server_crypto(&tls)?;
        let verifier = tls::client_verifier(&tls)?;
        let memory = limits.memory;
        let window = |bytes: u64| {
            quinn::VarInt::from_u64(bytes).map_err(|_| Error::Config("QUIC window too large".into()))
        };
        let idle_timeout =
            limits.idle_timeout.try_into().map_err(|_| Error::Config("idle timeout too large".into()))?;
        let mut transport = quinn::TransportConfig::default();
        transport
            .max_concurrent_bidi_streams(limits.max_streams_per_connection.into())
            .max_concurrent_uni_streams(0u8.into())
            .max_idle_timeout(Some(idle_timeout))
            .stream_receive_window(window(memory.stream_receive_window)?)
            .receive_window(window(memory.receive_window_per_connection)?)
            .send_window(memory.send_window_per_connection);
        let transport = Arc::new(transport);
        let endpoint = quinn::Endpoint::server(quic_config(Arc::new(crypto), &transport), listen)?;
        let local_addr = endpoint.local_addr()?;
        let (shutdown, shutdown_rx) = watch::channel(false);
        let (observer, metrics) = match metrics {
            Some(options) => {
                let observer = Arc::new(Metrics::new(options.settings).with_zero_series());
                observer.config_loaded_at(unix_seconds());
                let material = options.tls.then_some(&tls);
                let server =
                    MetricsServer::start(options.listen, material, observer.clone(), shutdown_rx.clone())
                        .await?;
                (Some(observer), Some(server))
            }
            None => (None, None),
        };
        // Always running: a reload may set rules where there were none.
        let (retention, retention_rx) = watch::channel(retention);
        tokio::spawn(retention::run(store.clone(), retention_rx, observer.clone(), shutdown_rx.clone()));
        let log = Arc::new(Log::with_metrics(store, limits.tail_cache_bytes, observer.clone())?);
        let mut observers = Observers::new();
        if let Some(observer) = observer {
            observers = observers.with(observer);
        }
        if let Some(audit) = &audit {
            observers = observers.with(audit.clone());
        }
        let session =
            Endpoint::new(acl, authority, limits, Instant::now()).with_observer(Arc::new(observers));
        let session = Arc::new(session);
        // A policy stored through another broker (a shared log): read policies again.
        let (mut changed, forget, mut stop) = (log.policies_changed(), session.clone(), shutdown_rx.clone());
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    Ok(()) = changed.changed() => forget.policies().clear(),
                    _ = stop.changed() => return,
                    else => return,
                }
            }
        });
        let (revision, revision_rx) = watch::channel(Arc::new(Revision { verifier, generation: 0 }));
        let live = Arc::new(Live {
            endpoint: endpoint.clone(),
            session: session.clone(),
            transport,
            revision,
            retention,
        });
        let failed = log.failed();
        let task =
            tokio::spawn(accept_loop(endpoint, session, log, shutdown.clone(), shutdown_rx, revision_rx));
        info!(%local_addr, "sealpost broker listening (QUIC, mutual TLS 1.3, ALPN sealpost/1)");
        Ok(Broker { local_addr, metrics, audit, shutdown, failed, task, live, config: None })
    }

    /// Reloads the configuration file `file` (whose contents `running` holds: what the broker was started
    /// with) on SIGHUP, and whenever it or a file it names changes (its contents and theirs
    /// are read every 250 ms); see [`crate::reload`] for what a reload applies and what refuses it. The
    /// SIGHUP handler is installed before this returns. The configuration in force is published on
    /// [`config`](Self::config).
    pub fn reload_on_change(&mut self, file: std::path::PathBuf, running: Running) -> Result<()> {
        let hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
        let (config, config_rx) = watch::channel(Arc::new(running));
        let watcher = reload::Watcher { file, live: self.live.clone(), config };
        tokio::spawn(watcher.run(hangup, self.shutdown.subscribe()));
        self.config = Some(config_rx);
        Ok(())
    }

    /// The configuration in force, and each one a reload applies after it: subscribe with
    /// [`watch::Receiver::changed`]. `None` unless [`reload_on_change`](Self::reload_on_change) was called
    /// (a broker started from [`BrokerOptions`] alone has no configuration file).
    pub fn config(&self) -> Option<watch::Receiver<Arc<Running>>> {
        self.config.clone()
    }

    /// The metrics endpoint, if one was configured.
    pub fn metrics(&self) -> Option<&MetricsServer> {
        self.metrics.as_ref()
    }

    /// The address the broker listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Resolves, with the reason, once the storage has failed for good: the broker is then already
    /// stopping (see the module documentation); [`shutdown`](Self::shutdown) waits for it to finish. Never
    /// resolves while the storage works.
    pub async fn storage_failed(&self) -> String {
        let mut failed = self.failed.clone();
        let why = match failed.wait_for(Option::is_some).await {
            Ok(why) => why.clone(),
            Err(_) => None,
        };
        match why {
            Some(why) => why,
            // The log is gone without failing: the broker stopped otherwise.
            None => std::future::pending().await,
        }
    }

    /// Stops accepting, finishes in-flight publishes, syncs storage and returns. Fails with
    /// [`Error::StorageFailed`] if the broker stopped because its storage failed for good.
    pub async fn shutdown(self) -> Result<()> {
        let _ = self.shutdown.send(true);
        let served = self.task.await.map_err(|e| Error::Storage(format!("broker task failed: {e}")))?;
        if let Some(metrics) = self.metrics {
            metrics.stopped().await;
        }
        if let Some(audit) = self.audit {
            // After the shutdown entry and every connection's last: the final checkpoint.
            tokio::task::spawn_blocking(move || audit.close())
                .await
                .map_err(|e| Error::Audit(format!("the audit log's close failed: {e}")))??;
        }
        served
    }
}

async fn accept_loop(
    endpoint: quinn::Endpoint,
    session: Arc<Endpoint>,
    log: Arc<Log>,
    stop: watch::Sender<bool>,
    mut shutdown: watch::Receiver<bool>,
    revision: watch::Receiver<Arc<Revision>>,
) -> Result<()> {
    let mut connections = JoinSet::new();
    let mut failed = log.failed();
    loop {
        tokio::select! {
            incoming = endpoint.accept() => {
                let Some(incoming) = incoming else { break };
                let Some(place) = session.admit_incoming_from(incoming.remote_address()) else {
                    warn!(remote = %incoming.remote_address(), "connection refused: max_connections reached");
                    incoming.refuse();
                    continue;
                };
                let (session, log, shutdown) = (session.clone(), log.clone(), shutdown.clone());
                let revision = revision.clone();
                connections.spawn(async move {
                    connection::serve(incoming, session, log, shutdown, revision).await;
                    drop(place);
                });
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            _ = shutdown.changed() => break,
            // Set once, by the log's writer, which has logged why: shut down as on a signal (connections,
            // their streams and the metrics endpoint watch `shutdown` too).
            Ok(()) = failed.changed() => {
                stop.send_replace(true);
                break;
            }
        }
    }
    info!("shutting down: no new connections; finishing in-flight publishes");
    session.shutting_down();
    // Connection tasks see the shutdown signal, stop taking requests and drain their answers.
    let drain = async { while connections.join_next().await.is_some() {} };
    if tokio::time::timeout(DRAIN, drain).await.is_err() {
        warn!("connections did not drain within {DRAIN:?}; closing them");
    }
    let close = Close::SHUTTING_DOWN;
    endpoint.close(close.code.into(), close.reason.as_bytes());
    drop(session);
    let closed = match Arc::into_inner(log) {
        Some(log) => log.close().await,
        None => Ok(()),
    };
    endpoint.wait_idle().await;
    // Also when a connection still holds the log and it could not be closed here.
    if let Some(why) = failed.borrow().clone() {
        return Err(Error::StorageFailed(why));
    }
    closed?;
    info!("storage synced; bye");
    Ok(())
}
