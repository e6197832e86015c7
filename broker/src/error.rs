//! The one error type of `sealpost-broker`, and its mapping to the wire's stable error codes.

use sealpost_protocol::ErrorCode;

/// Everything that can go wrong in the broker library.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A peer sent bytes that do not decode, or a batch that fails verification.
    #[error(transparent)]
    Protocol(#[from] sealpost_protocol::Error),
    /// The ACL denies the request, or the topic does not exist: indistinguishable on purpose.
    #[error("not authorized")]
    NotAuthorized,
    /// The batch is signed by a key that the connection's certificate does not bind to its principal.
    #[error("signing key {0} is not bound to this principal")]
    SignerNotBound(sealpost_protocol::KeyId),
    /// The batch does not continue the publisher's stored chain.
    #[error("sequence conflict: the publisher's next batch must start at {expected}, got {got}")]
    SequenceConflict {
        /// The sequence number the stored chain expects.
        expected: u64,
        /// The batch's first sequence number.
        got: u64,
    },
    /// A topic policy was refused: not from the configured topic authority, no authority configured, or
    /// its epoch does not follow the stored one.
    #[error("policy rejected: {0}")]
    PolicyRejected(String),
    /// A configured limit was reached.
    #[error("limit exceeded: {0}")]
    LimitExceeded(&'static str),
    /// A frame whose first bytes arrived was not completed within the frame deadline.
    #[error("frame not completed within {0:?}")]
    FrameTimeout(std::time::Duration),
    /// The principal's publish rate limit was exceeded; nothing was stored.
    #[error("publish rate limit exceeded")]
    RateLimited,
    /// The storage device is full; nothing was stored.
    #[error("storage full")]
    StorageFull,
    /// The storage engine failed.
    #[error("storage: {0}")]
    Storage(String),
    /// The storage failed in a way the broker cannot go on from: an fsync failed (or the index could not
    /// be made durable), so the files hold what the store can no longer vouch for. The broker refuses
    /// every write and stops (fail-stop, see [`crate::writer`]); a restart recovers the store.
    #[error("storage failed: {0}")]
    StorageFailed(String),
    /// A store shared with other brokers (the JetStream engine) could not take or confirm a write within
    /// its bound (`storage.jetstream.publish_timeout_ms`): a leader election that lasted longer, or the
    /// cluster is unreachable. Nothing was acknowledged; the publisher may retry.
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    /// Another broker appended to a topic of a shared log (the JetStream engine) between this broker's
    /// last look and its append, so the offsets it assigned were taken: nothing of it was acknowledged.
    /// The writer reloads and sequences the group again ([`crate::writer`]); peers see it only if that
    /// keeps happening, as `UNAVAILABLE`.
    #[error("the shared log moved on under this broker: {0}")]
    Contended(String),
    /// The broker is shutting down.
    #[error("shutting down")]
    ShuttingDown,
    /// A member of a shared durable subscription left the oldest batch it was given unacknowledged
    /// longer than `limits.shared_ack_wait_ms`: its stream ends, and its work goes to the other members.
    #[error("acknowledgement overdue for {0:?}: the member's chains go to the other members")]
    AckOverdue(std::time::Duration),
    /// A configuration, certificate or key file is invalid.
    #[error("configuration: {0}")]
    Config(String),
    /// The audit log cannot be opened or written: its folder, its key, or a last file whose tail does not
    /// verify (see [`crate::audit`]).
    #[error("audit log: {0}")]
    Audit(String),
    /// The data folder (or a backup of one) is in an on-disk format this broker does not read: a newer
    /// one (see docs/architecture.md, "On-disk format"). Nothing was changed.
    #[error(
        "this data folder is in on-disk format {found}; this broker reads up to {supported}; upgrade the broker"
    )]
    UnsupportedFormat {
        /// The format the folder (or the backup's manifest) states.
        found: u32,
        /// The newest format this broker reads.
        supported: u32,
    },
    /// A backup cannot be taken or restored: the source is no layout-3 data folder, the backup is
    /// incomplete or damaged, or the target is not empty (see [`crate::store::disk::backup`]).
    #[error("backup: {0}")]
    Backup(String),
    /// An I/O error outside the storage engine.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

impl Error {
    /// The stable code a peer is told.
    pub fn code(&self) -> ErrorCode {
        use sealpost_protocol::Error as P;
        match self {
            Error::Protocol(P::TooLarge { .. }) => ErrorCode::TOO_LARGE,
            Error::Protocol(P::UnsupportedVersion { .. }) => ErrorCode::UNSUPPORTED_VERSION,
            Error::Protocol(P::BadSignature) => ErrorCode::BAD_SIGNATURE,
            Error::Protocol(_) => ErrorCode::MALFORMED,
            Error::NotAuthorized => ErrorCode::NOT_AUTHORIZED,
            Error::SignerNotBound(_) => ErrorCode::SIGNER_NOT_BOUND,
            Error::SequenceConflict { .. } => ErrorCode::SEQUENCE_CONFLICT,
            Error::PolicyRejected(_) => ErrorCode::POLICY_REJECTED,
            Error::LimitExceeded(_) => ErrorCode::LIMIT_EXCEEDED,
            Error::FrameTimeout(_) => ErrorCode::FRAME_TIMEOUT,
            Error::RateLimited => ErrorCode::RATE_LIMITED,
            Error::StorageFull => ErrorCode::STORAGE_FULL,
            Error::ShuttingDown | Error::AckOverdue(_) | Error::Unavailable(_) | Error::Contended(_) => {
                ErrorCode::UNAVAILABLE
            }
            Error::Storage(_)
            | Error::StorageFailed(_)
            | Error::Config(_)
            | Error::Audit(_)
            | Error::Io(_)
            | Error::UnsupportedFormat { .. }
            | Error::Backup(_) => ErrorCode::INTERNAL,
        }
    }
}

/// The result type of this crate.
pub type Result<T, E = Error> = core::result::Result<T, E>;
