//! One connection's task: the handshake, the session's admission, a task per stream, and each stream's
//! first frame, which the session turns into the stream's kind.

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

use super::wire::{refuse, FrameReader};
use super::{admin, policies, publish, subscription, Revision};
use crate::event::Refused;
use crate::session::{Close, Connection, Endpoint, FlowControl, Refusal, StreamKind};
use crate::tls::{Named, Peer};
use crate::writer::Log;
use crate::Result;
use rustls::pki_types::UnixTime;

/// The session sets a connection's windows to its share of its principal's.
impl FlowControl for quinn::Connection {
    fn set_windows(&self, receive: u64, send: u64) {
        self.set_receive_window(quinn::VarInt::from_u64(receive).unwrap_or(quinn::VarInt::MAX));
        self.set_send_window(send);
    }

    fn remote(&self) -> Option<std::net::SocketAddr> {
        Some(self.remote_address())
    }
}

fn close(conn: &quinn::Connection, close: Close) {
    conn.close(close.code.into(), close.reason.as_bytes());
}

/// Serves one incoming connection until it closes or the broker shuts down.
pub(super) async fn serve(
    incoming: quinn::Incoming,
    endpoint: Arc<Endpoint>,
    log: Arc<Log>,
    mut shutdown: watch::Receiver<bool>,
    mut revision: watch::Receiver<Arc<Revision>>,
) {
    let remote = incoming.remote_address();
    // Taken before the handshake: a reload that lands during it is seen as a change below, and the
    // certificate is checked against it.
    let mut generation = revision.borrow_and_update().generation;
    let conn = match incoming.accept() {
        Ok(connecting) => match connecting.await {
            Ok(conn) => conn,
            Err(e) => {
                info!(%remote, error = %e, "TLS handshake refused");
                endpoint.refused(remote, None, Refused::of_handshake_error(&e.to_string()));
                return;
            }
        },
        Err(e) => {
            info!(%remote, error = %e, "connection refused");
            endpoint.refused(remote, None, Refused::Handshake);
            return;
        }
    };
    let peer = Peer::from_connection(&conn);
    let chain = Peer::chain_of(&conn).unwrap_or_default();
    let claimed = peer.as_ref().map(|p| p.principal.to_string()).unwrap_or_default();
    let flow = Arc::new(conn.clone());
    let session = match Connection::open_from(&endpoint, Some(remote), peer, flow, Instant::now()) {
        Ok(session) => Arc::new(session),
        Err(refused) => {
            let error = &refused.error;
            match refused.close {
                Close::CERTIFICATE_REFUSED => {
                    let fingerprint = Peer::fingerprint_of(&conn).map(|f| f.to_string()).unwrap_or_default();
                    let named = chain.first().map(|leaf| Named::of(leaf));
                    let (subject, serial) = named.map(|n| (n.subject, n.serial)).unwrap_or_default();
                    info!(%remote, %error, %subject, %serial, %fingerprint, "connection refused")
                }
                _ => warn!(%remote, principal = %claimed, %error, "connection refused"),
            }
            close(&conn, refused.close);
            return;
        }
    };
    let principal = session.peer().principal.clone();
    info!(%remote, %principal, "connected");
    // Every line its streams log (the session's included) names the connection's principal and address.
    let span = tracing::info_span!("connection", %principal, %remote);
    let mut streams = JoinSet::new();
    loop {
        tokio::select! {
            stream = conn.accept_bi() => match stream {
                Ok((mut send, mut recv)) => {
                    let held = match session.admit_stream() {
                        Ok(held) => held,
                        Err(e) => {
                            let code = quinn::VarInt::from(e.code().0);
                            let _ = send.reset(code);
                            let _ = recv.stop(code);
                            debug!(%principal, error = %e, "stream refused");
                            continue;
                        }
                    };
                    let (session, log, shutdown) = (session.clone(), log.clone(), shutdown.clone());
                    let revision = revision.clone();
                    let stream = async move {
                        if let Err(e) = serve_stream(send, recv, &session, &log, shutdown, revision).await {
                            debug!(principal = %session.peer().principal, error = %e, "stream ended with an error");
                        }
                        drop(held);
                    };
                    streams.spawn(tracing::Instrument::instrument(stream, span.clone()));
                }
                Err(e) => {
                    debug!(%principal, reason = %e, "connection closed");
                    break;
                }
            },
            Some(_) = streams.join_next(), if !streams.is_empty() => {}
            Ok(()) = revision.changed() => {
                let revision = revision.borrow_and_update().clone();
                if revision.generation == generation {
                    continue;
                }
                generation = revision.generation;
                if let Err((code, error)) = session.recheck(&revision.verifier, &chain, UnixTime::now()) {
                    warn!(%remote, %principal, %error, "connection closed: its certificate no longer verifies after a reload");
                    close(&conn, code);
                    break;
                }
            }
            _ = shutdown.changed() => break,
        }
    }
    while streams.join_next().await.is_some() {}
    close(&conn, Close::BYE);
    // The session's place among its principal's connections is given back as it drops.
    drop(session);
    info!(%remote, %principal, "disconnected");
}

/// Reads a stream's first frame and serves the stream as the kind the session says.
async fn serve_stream(
    mut send: quinn::SendStream,
    recv: quinn::RecvStream,
    session: &Arc<Connection>,
    log: &Arc<Log>,
    shutdown: watch::Receiver<bool>,
    revision: watch::Receiver<Arc<Revision>>,
) -> Result<()> {
    let limits = session.endpoint().limits();
    let mut reader =
        FrameReader::new(recv, limits.max_frame_len, session.budget().clone(), limits.memory.frame_timeout());
    let first = match reader.next().await {
        Ok(Some(received)) => received,
        Ok(None) => return Ok(()),
        Err(e) => return refuse(&mut send, &mut reader, Refusal::new(None, e)).await,
    };
    match session.stream_kind(&first.frame) {
        Ok(StreamKind::Publish) => {
            publish::serve(first, send, reader, session, log, (shutdown, revision)).await
        }
        Ok(StreamKind::Policies) => policies::serve(first.frame, send, reader, session, log, shutdown).await,
        Ok(StreamKind::Admin) => admin::serve(first.frame, send, reader, session, log, shutdown).await,
        Ok(StreamKind::Subscription) => {
            drop(first.reservation);
            match session.subscribe(first.frame) {
                Ok(subscribing) => {
                    subscription::serve(subscribing, send, reader, session, log, (shutdown, revision)).await
                }
                Err(refusal) => refuse(&mut send, &mut reader, refusal).await,
            }
        }
        Err(refusal) => refuse(&mut send, &mut reader, refusal).await,
    }
}
