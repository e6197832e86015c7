//! The one error type of `sealpost-protocol`.

use crate::keys::Epoch;
use crate::topic::Topic;

/// Everything that can go wrong in the protocol layer.
///
/// Variants are grouped by who is at fault: malformed or oversized input (any peer), cryptographic
/// failures (a forger, a tamperer, or a wrong key), and chain violations (a broker or network that drops,
/// replays or reorders batches). Cryptographic failures are deliberately terse: they say *that* a check
/// failed and where, never anything about keys or plaintext.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The input ended before the structure it describes did.
    #[error("truncated {0}")]
    Truncated(&'static str),
    /// The input is structurally invalid (bad length field, trailing bytes, impossible value).
    #[error("malformed {0}")]
    Malformed(&'static str),
    /// The input carries a format version this build does not speak.
    #[error("unsupported {what} version {version}")]
    UnsupportedVersion {
        /// Which format: "batch" or "frame".
        what: &'static str,
        /// The version found in the input.
        version: u8,
    },
    /// A length exceeds its configured limit; nothing was allocated for it.
    #[error("{what} too large: {len} exceeds the limit of {max}")]
    TooLarge {
        /// What was too large.
        what: &'static str,
        /// The size found.
        len: u64,
        /// The configured maximum.
        max: u64,
    },
    /// A topic name broke the naming rules.
    #[error("invalid topic name: {0}")]
    InvalidTopic(&'static str),
    /// A topic pattern broke the pattern rules.
    #[error("invalid topic pattern: {0}")]
    InvalidPattern(&'static str),
    /// Key bytes do not form a valid key.
    #[error("invalid key: {0}")]
    InvalidKey(&'static str),
    /// The batch signature does not verify (strictly) under the publisher key in its header.
    #[error("bad signature")]
    BadSignature,
    /// A record failed AEAD authentication: its ciphertext was altered after signing, or it was sealed
    /// under a different content key than the one given for its epoch.
    #[error("record {index} failed authentication")]
    TamperedRecord {
        /// Zero-based index of the first failing record.
        index: u32,
    },
    /// A correctly signed batch was delivered under a topic other than the one it was sealed for.
    #[error("batch sealed for topic {got} delivered on {expected}")]
    WrongTopic {
        /// The topic the subscriber asked for.
        expected: Topic,
        /// The topic named in the signed header.
        got: Topic,
    },
    /// No content key is known for the batch's epoch.
    #[error("no content key for epoch {0}")]
    UnknownEpoch(Epoch),
    /// Sequence numbers are missing between the last verified batch and this one. The batch itself is
    /// authentic; see [`ChainVerifier::admit`](crate::ChainVerifier::admit).
    #[error("gap in publisher sequence: expected {expected}, got {got}")]
    Gap {
        /// The sequence number that should have come next.
        expected: u64,
        /// The first sequence number of the batch that came instead.
        got: u64,
    },
    /// A batch that was already admitted arrived again.
    #[error("replayed batch at sequence {seq}")]
    Replay {
        /// First sequence number of the replayed batch.
        seq: u64,
    },
    /// A batch arrived after later batches of the same publisher had been admitted.
    #[error("batch out of order: expected sequence {expected}, got {got}")]
    Reorder {
        /// The sequence number that should have come next.
        expected: u64,
        /// The first sequence number of the batch that came instead.
        got: u64,
    },
    /// A batch has the expected sequence number but does not extend the verified chain (its previous
    /// digest differs): the publisher signed two histories, or history before it was replaced.
    #[error("batch at sequence {seq} does not extend the verified chain")]
    Fork {
        /// First sequence number of the conflicting batch.
        seq: u64,
    },
    /// A frame could not be serialized.
    #[error("frame encoding failed")]
    Encode,
}
