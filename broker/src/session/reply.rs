//! What a peer is told when the session refuses or fails something: the error frame of a request, the
//! refusal of a stream, the code a connection is closed with.
//!
//! It guarantees that a peer learns only the stable [`ErrorCode`] of an error and a message with no internal
//! detail: storage, I/O and configuration failures all read "internal error" (see [`error_frame`]).

use sealpost_protocol::{ErrorCode, Frame, RequestId};

use crate::Error;

/// The error frame a peer is sent for `err`, answering `request_id` if it answers a request: the stable code
/// and a message with no internal detail.
pub fn error_frame(request_id: Option<RequestId>, err: &Error) -> Frame {
    let message = match err {
        Error::Storage(_) | Error::Io(_) | Error::Config(_) => "internal error".to_string(),
        Error::StorageFailed(_) => "internal error: storage failed, the broker is stopping".to_string(),
        other => other.to_string(),
    };
    Frame::Error { request_id, code: err.code(), message }
}

/// A stream the session refuses: the driver sends [`frame`](Self::frame), finishes the stream's send half
/// and stops its receive half with [`code`](Self::code); the stream is over.
#[derive(Debug)]
pub struct Refusal {
    /// The request refused, if the refusal answers one.
    pub request_id: Option<RequestId>,
    /// Why.
    pub error: Error,
}

impl Refusal {
    /// Refuses with `error`, answering `request_id` if given.
    pub fn new(request_id: Option<RequestId>, error: Error) -> Refusal {
        Refusal { request_id, error }
    }

    /// The error frame to send.
    pub fn frame(&self) -> Frame {
        error_frame(self.request_id, &self.error)
    }

    /// The code to stop the stream with.
    pub fn code(&self) -> ErrorCode {
        self.error.code()
    }
}

/// How a connection is closed: a QUIC application close code and a reason the peer sees.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Close {
    /// The application close code.
    pub code: u32,
    /// The reason, sent to the peer.
    pub reason: &'static str,
}

impl Close {
    /// The broker is done with the connection: the peer closed it, or the broker is shutting down.
    pub const BYE: Close = Close { code: 0, reason: "bye" };
    /// Every connection, as the endpoint closes after a shutdown.
    pub const SHUTTING_DOWN: Close = Close { code: 0, reason: "shutting down" };
    /// The client certificate passed TLS but breaks the principal rule ([`crate::tls`]).
    pub const CERTIFICATE_REFUSED: Close = Close { code: 1, reason: "client certificate refused" };
    /// The principal already has `max_connections_per_principal` connections.
    pub const TOO_MANY_CONNECTIONS: Close =
        Close { code: 2, reason: "too many connections for this principal" };
    /// After a configuration reload, the client certificate no longer verifies: revoked by a CRL, no longer
    /// chaining to the CA bundle, or expired since the connection opened.
    pub const CERTIFICATE_REVOKED: Close =
        Close { code: 3, reason: "client certificate revoked or no longer valid" };
}

/// A connection the session refuses: close it with `close`; `error` says why, for the log.
#[derive(Debug)]
pub struct ConnectionRefused {
    /// What to close the connection with.
    pub close: Close,
    /// Why, for the broker's log (the peer only sees `close`).
    pub error: Error,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_failures_reach_the_peer_as_a_code_without_detail() {
        let frame = error_frame(Some(3), &Error::Storage("/var/lib/sealpost/segments/7: EIO".into()));
        assert_eq!(
            frame,
            Frame::Error { request_id: Some(3), code: ErrorCode::INTERNAL, message: "internal error".into() }
        );
        let frame = error_frame(None, &Error::NotAuthorized);
        assert_eq!(
            frame,
            Frame::Error {
                request_id: None,
                code: ErrorCode::NOT_AUTHORIZED,
                message: "not authorized".into()
            }
        );
    }

    #[test]
    fn a_refusal_answers_its_request_with_its_code() {
        let refusal = Refusal::new(Some(9), Error::LimitExceeded("max_subscriptions_per_connection"));
        assert_eq!(refusal.code(), ErrorCode::LIMIT_EXCEEDED);
        assert!(matches!(
            refusal.frame(),
            Frame::Error { request_id: Some(9), code: ErrorCode::LIMIT_EXCEEDED, .. }
        ));
    }
}
