//! Stable numeric error codes, the only error detail a broker sends to a peer.
//!
//! This table is the single source of truth. A code, once published, keeps its meaning forever; a retired
//! code is never reused. Add new codes at the end of their range.
//!
//! "Not authorized" deliberately covers both a denied topic and a topic that does not exist, so that a
//! client cannot probe which topics exist.

use core::fmt;

use serde::{Deserialize, Serialize};

/// A stable numeric error code carried in [`Frame::Error`](crate::Frame::Error).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ErrorCode(pub u16);

macro_rules! codes {
    ($($(#[$doc:meta])* $name:ident = $num:literal, $text:literal;)*) => {
        impl ErrorCode {
            $($(#[$doc])* pub const $name: ErrorCode = ErrorCode($num);)*

            /// Every code this build knows, with its description.
            pub const ALL: &'static [(ErrorCode, &'static str)] = &[$((ErrorCode($num), $text),)*];

            /// The constant's name of a code this build knows (`"NOT_AUTHORIZED"`): stable, as the code is,
            /// for metrics labels and audit entries. `None` for a code this build does not know.
            pub fn name(self) -> Option<&'static str> {
                match self.0 {
                    $($num => Some(stringify!($name)),)*
                    _ => None,
                }
            }
        }
    };
}

codes! {
    /// The frame or batch could not be decoded.
    MALFORMED = 1, "malformed frame or batch";
    /// The frame or batch version is not supported.
    UNSUPPORTED_VERSION = 2, "unsupported version";
    /// A frame or batch exceeds a configured size limit.
    TOO_LARGE = 3, "too large";
    /// The request is not valid in the current state of the connection.
    PROTOCOL_VIOLATION = 4, "protocol violation";
    /// Denied by the access-control list, or no such topic. The two are indistinguishable on purpose.
    NOT_AUTHORIZED = 100, "not authorized";
    /// The batch signature does not verify.
    BAD_SIGNATURE = 101, "bad signature";
    /// The batch is signed by a key not bound to the connection's principal.
    SIGNER_NOT_BOUND = 102, "signing key not bound to this principal";
    /// The batch does not continue the publisher's stored sequence chain.
    SEQUENCE_CONFLICT = 103, "sequence conflict";
    /// The subscription id is not known on this connection.
    UNKNOWN_SUBSCRIPTION = 104, "unknown subscription";
    /// A topic policy was refused: not signed by the broker's configured topic authority, or not newer
    /// than the stored one.
    POLICY_REJECTED = 105, "policy rejected";
    /// A per-connection or per-principal limit was reached.
    LIMIT_EXCEEDED = 200, "limit exceeded";
    /// The per-principal publish rate was exceeded; retry later.
    RATE_LIMITED = 201, "rate limited";
    /// The broker's storage is full; nothing was stored.
    STORAGE_FULL = 202, "storage full";
    /// The broker is shutting down or temporarily unable to serve.
    UNAVAILABLE = 203, "unavailable";
    /// A frame whose first bytes arrived was not completed within the broker's frame deadline; the stream
    /// is stopped.
    FRAME_TIMEOUT = 204, "frame not completed in time";
    /// The offsets were removed by the broker's retention rules: they are below the topic's first offset.
    /// Carried as the reason of [`Frame::Lost`](crate::Frame::Lost) (with no batch named); the subscription
    /// goes on from the first offset.
    RETIRED = 205, "removed by retention";
    /// An internal error in the broker; nothing was stored.
    INTERNAL = 500, "internal error";
    /// Stored messages were lost: the broker's storage failed a checksum where acknowledged data was (a
    /// flipped bit, a damaged sector). Carried as the reason of [`Frame::Lost`](crate::Frame::Lost); the
    /// subscription goes on after the lost range.
    DATA_LOST = 501, "data lost: storage corruption";
}

impl ErrorCode {
    /// A short description, or `None` for a code this build does not know (a newer peer may send one).
    pub fn describe(self) -> Option<&'static str> {
        Self::ALL.iter().find(|(c, _)| *c == self).map(|(_, d)| *d)
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.describe() {
            Some(d) => write!(f, "{d} (code {})", self.0),
            None => write!(f, "unknown error (code {})", self.0),
        }
    }
}

impl fmt::Debug for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ErrorCode({}", self.0)?;
        if let Some(d) = self.describe() {
            write!(f, ": {d}")?;
        }
        f.write_str(")")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_unique() {
        let mut seen = std::collections::HashSet::new();
        for (c, _) in ErrorCode::ALL {
            assert!(seen.insert(c.0), "code {} defined twice", c.0);
        }
    }

    /// Published codes never change number. Extend this list when adding a code; never edit it.
    #[test]
    fn published_codes_keep_their_numbers() {
        let published = [
            (ErrorCode::MALFORMED, 1),
            (ErrorCode::UNSUPPORTED_VERSION, 2),
            (ErrorCode::TOO_LARGE, 3),
            (ErrorCode::PROTOCOL_VIOLATION, 4),
            (ErrorCode::NOT_AUTHORIZED, 100),
            (ErrorCode::BAD_SIGNATURE, 101),
            (ErrorCode::SIGNER_NOT_BOUND, 102),
            (ErrorCode::SEQUENCE_CONFLICT, 103),
            (ErrorCode::UNKNOWN_SUBSCRIPTION, 104),
            (ErrorCode::POLICY_REJECTED, 105),
            (ErrorCode::LIMIT_EXCEEDED, 200),
            (ErrorCode::RATE_LIMITED, 201),
            (ErrorCode::STORAGE_FULL, 202),
            (ErrorCode::UNAVAILABLE, 203),
            (ErrorCode::FRAME_TIMEOUT, 204),
            (ErrorCode::RETIRED, 205),
            (ErrorCode::INTERNAL, 500),
            (ErrorCode::DATA_LOST, 501),
        ];
        for (code, num) in published {
            assert_eq!(code.0, num);
        }
        assert_eq!(published.len(), ErrorCode::ALL.len());
    }

    #[test]
    fn unknown_codes_display_without_panicking() {
        assert_eq!(ErrorCode(9999).describe(), None);
        assert_eq!(ErrorCode(9999).to_string(), "unknown error (code 9999)");
    }
}
