//! The metrics endpoint: `GET /metrics` over HTTP/1.1 on a TCP listener of its own: OpenMetrics text to a
//! scraper whose `Accept` names it (Prometheus), Prometheus' classic text format to any other
//! ([`classic_text`](super::classic_text)).
//!
//! # Who may read it
//!
//! The metrics name principals and topics, so the endpoint is not for everyone:
//!
//! - on a **loopback** address (`127.0.0.0/8`, `::1`) it may serve plain HTTP: only processes on the host
//!   reach it;
//! - on **any other** address it must require TLS ([`check_listen`] refuses to start otherwise): TLS 1.3
//!   with the broker's own certificate and key, and a client certificate from the broker's client CA (not
//!   revoked, with the client-authentication usage), exactly as QUIC clients are verified
//!   ([`tls::metrics_server_config`]). Give the Prometheus server a client certificate from that CA. Any
//!   principal with a certificate may scrape; the ACL does not apply here.
//!
//! TLS can be required on loopback too (`metrics.tls = true`).
//!
//! # Bounds
//!
//! At most [`MAX_CONNECTIONS`] scrape connections at once (more are closed at once), each closed after
//! [`CONNECTION_DEADLINE`] whatever it does; request headers must arrive within [`HEADER_DEADLINE`]. A
//! scrape encodes the metrics off the async workers (it reads the data folder's size).
//!
//! It does not serve anything but `GET /metrics` (other paths are 404, other methods 405), compress, or
//! authenticate beyond the client certificate.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderValue, ACCEPT, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tracing::{debug, info, warn};

use super::Metrics;
use crate::tls::{self, TlsMaterial};
use crate::{Error, Result};

/// Most scrape connections served at once.
pub const MAX_CONNECTIONS: usize = 16;
/// How long a scrape connection may stay open.
pub const CONNECTION_DEADLINE: Duration = Duration::from_secs(30);
/// How long a request's headers (and a TLS handshake) may take.
pub const HEADER_DEADLINE: Duration = Duration::from_secs(10);

/// The content type of OpenMetrics, served to a scraper that accepts it (Prometheus does).
pub const CONTENT_TYPE_OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// The content type of Prometheus' classic text format, served to every other client.
pub const CONTENT_TYPE_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Refuses a plain-HTTP endpoint on an address other than loopback: such an endpoint must require TLS
/// with client certificates (`tls`).
pub fn check_listen(listen: SocketAddr, tls: bool) -> Result<()> {
    if tls || listen.ip().is_loopback() {
        return Ok(());
    }
    Err(Error::Config(format!(
        "metrics.listen = \"{listen}\" is not a loopback address: set metrics.tls = true, so that the \
         endpoint requires TLS with a client certificate from tls.ca, or listen on 127.0.0.1"
    )))
}

/// A running metrics endpoint. It stops when the broker's shutdown signal fires.
#[derive(Debug)]
pub struct MetricsServer {
    local_addr: SocketAddr,
    tls: bool,
    task: tokio::task::JoinHandle<()>,
}

impl MetricsServer {
    /// Binds `listen` and serves `metrics` until `shutdown` turns true; with `tls`, requires TLS with a
    /// client certificate from its CA (see the [module documentation](self)). Refuses a plain endpoint
    /// beyond loopback ([`check_listen`]).
    pub async fn start(
        listen: SocketAddr,
        tls: Option<&TlsMaterial>,
        metrics: Arc<Metrics>,
        shutdown: watch::Receiver<bool>,
    ) -> Result<MetricsServer> {
        check_listen(listen, tls.is_some())?;
        let acceptor = match tls {
            Some(material) => Some(TlsAcceptor::from(Arc::new(tls::metrics_server_config(material)?))),
            None => None,
        };
        let listener = TcpListener::bind(listen)
            .await
            .map_err(|e| Error::Config(format!("metrics.listen = \"{listen}\": {e}")))?;
        let local_addr = listener.local_addr()?;
        let tls = acceptor.is_some();
        let task = tokio::spawn(accept_loop(listener, acceptor, metrics, shutdown));
        info!(%local_addr, tls, "metrics endpoint listening (GET /metrics)");
        Ok(MetricsServer { local_addr, tls, task })
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Its URL: `http://ADDR/metrics`, or `https://` when it requires TLS.
    pub fn url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}/metrics", self.local_addr)
    }

    /// Waits for it to stop (after the shutdown signal).
    pub async fn stopped(self) {
        let _ = self.task.await;
    }
}

async fn accept_loop(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    metrics: Arc<Metrics>,
    mut shutdown: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, remote) = match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        // Out of file descriptors, most likely: back off instead of spinning.
                        warn!(error = %e, "metrics endpoint: accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let Ok(slot) = slots.clone().try_acquire_owned() else {
                    debug!(%remote, "metrics endpoint: too many connections; closed");
                    continue;
                };
                let (tls, metrics) = (tls.clone(), metrics.clone());
                connections.spawn(async move {
                    let served = tokio::time::timeout(CONNECTION_DEADLINE, serve(stream, tls, metrics)).await;
                    if served.is_err() {
                        debug!(%remote, "metrics endpoint: connection deadline reached; closed");
                    }
                    drop(slot);
                });
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            _ = shutdown.changed() => break,
        }
    }
    connections.abort_all();
    while connections.join_next().await.is_some() {}
}

/// Serves one connection: a TLS handshake first if required, then HTTP/1.1.
async fn serve(stream: TcpStream, tls: Option<TlsAcceptor>, metrics: Arc<Metrics>) {
    match tls {
        None => http(stream, metrics).await,
        Some(acceptor) => match tokio::time::timeout(HEADER_DEADLINE, acceptor.accept(stream)).await {
            Ok(Ok(stream)) => http(stream, metrics).await,
            Ok(Err(e)) => debug!(error = %e, "metrics endpoint: TLS handshake refused"),
            Err(_) => debug!("metrics endpoint: TLS handshake timed out"),
        },
    }
}

async fn http<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(stream: S, metrics: Arc<Metrics>) {
    let service = hyper::service::service_fn(move |request| respond(request, metrics.clone()));
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.timer(TokioTimer::new()).header_read_timeout(HEADER_DEADLINE);
    if let Err(e) = builder.serve_connection(TokioIo::new(stream), service).await {
        debug!(error = %e, "metrics endpoint: connection ended with an error");
    }
}

async fn respond(
    request: Request<Incoming>,
    metrics: Arc<Metrics>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let status = match (request.method(), request.uri().path()) {
        (&Method::GET, "/metrics") => {
            let openmetrics = request
                .headers()
                .get_all(ACCEPT)
                .iter()
                .any(|value| value.to_str().is_ok_and(|v| v.contains("application/openmetrics-text")));
            let encoded = tokio::task::spawn_blocking(move || {
                if openmetrics {
                    (metrics.encode(), CONTENT_TYPE_OPENMETRICS)
                } else {
                    (metrics.encode_classic(), CONTENT_TYPE_TEXT)
                }
            });
            return Ok(match encoded.await {
                Ok((text, content_type)) => {
                    let mut response = Response::new(Full::new(Bytes::from(text)));
                    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
                    response
                }
                Err(_) => plain(StatusCode::INTERNAL_SERVER_ERROR),
            });
        }

        (_, "/metrics") => StatusCode::METHOD_NOT_ALLOWED,
        _ => StatusCode::NOT_FOUND,
    };
    Ok(plain(status))
}

fn plain(status: StatusCode) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(status.canonical_reason().unwrap_or(""))));
    *response.status_mut() = status;
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plain_endpoint_is_refused_beyond_loopback() {
        for loopback in ["127.0.0.1:9464", "127.3.2.1:0", "[::1]:9464"] {
            assert!(check_listen(loopback.parse().unwrap(), false).is_ok(), "{loopback}");
        }
        for open in ["0.0.0.0:9464", "10.0.0.5:9464", "[::]:9464"] {
            let err = check_listen(open.parse().unwrap(), false).unwrap_err();
            assert!(err.to_string().contains("metrics.tls = true"), "{err}");
            assert!(check_listen(open.parse().unwrap(), true).is_ok(), "{open}");
        }
    }
}
