//! What a QUIC or TLS failure means to the application: the one place transport errors become
//! [`Error`]s.
//!
//! It guarantees that a failure reaches the application as the variant that says who must act: a broker
//! certificate that does not verify is [`Error::BrokerNotTrusted`] (with advice naming the identity field
//! at fault), a TLS alert about this identity's certificate is [`Error::CertificateRejected`] (or
//! [`Error::CertificateRevoked`] for `certificate_revoked`), a broker
//! without our ALPN is a [`Error::ProtocolViolation`], and everything that reconnecting may cure is
//! [`Error::Unreachable`] or [`Error::ConnectionLost`]. Text from the broker is sanitized before it is
//! shown.

use std::time::Duration;

use quinn::{ConnectError, ConnectionError, ReadError, WriteError};

use crate::error::{sanitize, Error};
use crate::identity::Identity;
use crate::tls;

/// Maps transport failures of one client's connections to [`Error`]s.
#[derive(Debug)]
pub(crate) struct ErrorMap {
    identity: Identity,
    idle_timeout: Duration,
}

impl ErrorMap {
    pub(crate) fn new(identity: Identity, idle_timeout: Duration) -> Self {
        Self { identity, idle_timeout }
    }

    /// The broker could not be reached for `reason`.
    pub(crate) fn unreachable(&self, reason: String) -> Error {
        Error::Unreachable { addr: self.identity.broker().to_owned(), reason }
    }

    /// A connection attempt could not even start.
    pub(crate) fn connect(&self, e: ConnectError) -> Error {
        match e {
            ConnectError::InvalidServerName(name) => Error::Identity {
                path: self.identity.path().to_path_buf(),
                message: format!("field `server_name`: {name:?} is not a valid server name"),
            },
            e => self.unreachable(e.to_string()),
        }
    }

    /// A connection attempt failed: like a lost connection, but a transient failure means unreachable.
    pub(crate) fn handshake(&self, e: &ConnectionError) -> Error {
        match self.connection(e) {
            Error::ConnectionLost { reason } => self.unreachable(reason),
            e => e,
        }
    }

    /// What a lost connection means to the application.
    pub(crate) fn connection(&self, e: &ConnectionError) -> Error {
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
                    44 => Error::CertificateRevoked,
                    // bad_certificate, unsupported_certificate, certificate_expired,
                    // certificate_unknown, unknown_ca, access_denied, certificate_required
                    42 | 43 | 45 | 46 | 48 | 49 | 116 => Error::CertificateRejected { reason: alert_name(alert) },
                    120 => Error::ProtocolViolation {
                        detail: "the broker does not speak sealpost/1 (no common ALPN protocol)".into(),
                    },
                    _ => Error::ConnectionLost {
                        reason: format!("TLS handshake failed: {}", alert_name(alert)),
                    },
                }
            }
            ConnectionError::TimedOut => Error::ConnectionLost {
                reason: format!("no answer from the broker for {}", seconds(self.idle_timeout)),
            },
            // The broker's close after a reload of its CA bundle or CRLs (`CERTIFICATE_REVOKED`): revoked, or
            // no longer valid otherwise; the code does not say which.
            ConnectionError::ApplicationClosed(a) if u64::from(a.error_code) == CERTIFICATE_NO_LONGER_VALID => {
                Error::CertificateRejected {
                    reason: "closed by the broker: revoked or no longer valid after it reloaded its CA bundle or CRLs"
                        .into(),
                }
            }
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

    /// What a failed read on a stream means.
    pub(crate) fn read(&self, e: ReadError) -> Error {
        match e {
            ReadError::ConnectionLost(e) => self.connection(&e),
            ReadError::Reset(code) => {
                Error::ConnectionLost { reason: format!("the broker reset the stream (code {code})") }
            }
            e => Error::ConnectionLost { reason: format!("stream failed: {e}") },
        }
    }

    /// What a failed write on a stream means.
    pub(crate) fn write(&self, e: WriteError) -> Error {
        match e {
            WriteError::ConnectionLost(e) => self.connection(&e),
            WriteError::Stopped(code) => {
                Error::ConnectionLost { reason: format!("the broker stopped the stream (code {code})") }
            }
            e => Error::ConnectionLost { reason: format!("stream failed: {e}") },
        }
    }
}

/// The broker's application close code for a connection whose certificate no longer verifies after a
/// reload (its `Close::CERTIFICATE_REVOKED`).
const CERTIFICATE_NO_LONGER_VALID: u64 = 3;

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

/// `d` in seconds, for messages.
pub(crate) fn seconds(d: Duration) -> String {
    format!("{} s", d.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_alert_codes_are_recognised() {
        assert!(is_tls(0x100 | 48));
        assert!(!is_tls(0x0a));
        assert_eq!(alert_name(48), "unknown CA");
        assert_eq!(alert_name(7), "TLS alert 7");
    }

    #[test]
    fn a_revoked_certificate_is_told_as_revoked_not_expired() {
        let revoked = Error::CertificateRevoked.to_string();
        assert!(revoked.contains("revoked") && !revoked.contains("expired"), "{revoked}");
        let other = Error::CertificateRejected { reason: alert_name(45) }.to_string();
        assert!(other.contains("certificate expired") && other.contains("revoked"), "{other}");
    }
}
