//! The one error type of `sealpost-protocol`.
//!
//! It names two value types in its variants, [`Epoch`] and [`Topic`], so that a caller can match on the
//! very topic or epoch at fault. `epoch.rs` needs nothing from here; `topic.rs` does (a bad name is an
//! [`Error::InvalidTopic`]): that pair is the crate's one mutual import, kept on purpose rather than
//! carrying topic names as strings in errors.

use crate::epoch::Epoch;
use crate::topic::Topic;

/// What is wrong with one link of a topic's policy history ([`Error::PolicyLinkBroken`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyLinkFault {
    /// No policy of the epoch was served: the history ended early, or skipped it (`got` is the epoch
    /// served in its place, if any).
    #[error("no policy of this epoch was served (got {got:?})")]
    Missing {
        /// The epoch served instead, if any.
        got: Option<Epoch>,
    },
    /// The bytes served do not decode as a policy.
    #[error("the policy served does not decode")]
    Malformed,
    /// The policy served is not signed by the pinned topic authority.
    #[error("the policy served is not signed by the pinned topic authority")]
    NotFromAuthority,
    /// The policy served is for another topic.
    #[error("the policy served is for another topic")]
    WrongTopic,
    /// The policy served is signed, but its digest is not the `prev_digest` of the next epoch's policy:
    /// it belongs to another history.
    #[error("the policy served is not the one the next epoch's policy names")]
    NotNamedByNext,
}

/// Everything that can go wrong in the protocol layer.
///
/// Variants are grouped by who is at fault: malformed or oversized input (any peer), cryptographic
/// failures (a forger, a tamperer, or a wrong key), chain violations (a broker or network that drops,
/// replays or reorders batches), topic-policy failures (a policy not from the pinned authority, an authority
/// or broker serving an old or a second history of policies, a caller who is not a member, a publisher or
/// an epoch the policies do not allow), and the caller's own mistakes when issuing a policy. Cryptographic
/// failures are deliberately terse: they say *that* a check failed and where, never anything about keys or
/// plaintext.
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
        /// Which format: "batch", "frame" or "policy".
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
    /// A principal name (of a certificate, a policy member, an identity file) broke the naming rule: 1 to
    /// 64 bytes of ASCII letters, digits, `.`, `_` and `-`.
    #[error("invalid principal name: {0}")]
    InvalidPrincipal(&'static str),
    /// A message header breaks a rule of [`headers`](crate::headers): an empty name or one with a byte
    /// other than A-Z a-z 0-9 `.` `_` `-`, a value that is not UTF-8, names not in strictly ascending order
    /// (unsorted or repeated) in an encoded header section, or headers on a batch of the legacy chain
    /// (format version 1 has no room for them). Limits are [`Error::TooLarge`].
    #[error("invalid header: {0}")]
    InvalidHeader(&'static str),
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
    /// A record authenticated, but its header section (batch format version 3) does not decode: `error`
    /// says which rule it breaks ([`Error::InvalidHeader`], [`Error::TooLarge`] or [`Error::Truncated`]).
    /// Only whoever holds the publisher's signing key and the epoch's content key can seal such a record: a
    /// broker cannot cause this. No plaintext of the batch is returned.
    #[error("record {index} has malformed headers: {error}")]
    MalformedHeaders {
        /// Zero-based index of the first failing record.
        index: u32,
        /// The rule it breaks.
        error: Box<Error>,
    },
    /// A correctly signed batch was delivered under a topic other than the one it was sealed for, or a
    /// topic policy was given to a [`PolicyBook`](crate::PolicyBook) or an [`EpochKeys`](crate::EpochKeys)
    /// of another topic.
    #[error("signed for topic {got}, received for {expected}")]
    WrongTopic {
        /// The topic the receiver asked for.
        expected: Topic,
        /// The topic named in the signed bytes.
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

    // Topic policies: structure and issuance.
    /// A topic policy breaks a rule of its content: an epoch of 0, a previous digest that does not match its
    /// epoch, an invalid principal name, members not sorted by principal or listed twice, a signing key
    /// listed for two members, a member without a role; or, when issuing, an epoch or topic that does not
    /// follow the previous policy.
    #[error("invalid topic policy: {0}")]
    InvalidPolicy(&'static str),

    // Topic policies: authenticity.
    /// The policy names a signer other than the pinned topic authority, or its signature does not verify
    /// (strictly) under the authority's key. Either way, nothing in it can be trusted.
    #[error("topic policy not signed by the pinned topic authority")]
    PolicyNotFromAuthority,

    // Topic policies: history (the authority, or a broker serving policies, is at fault).
    /// A policy of an epoch older than the newest admitted one, and not admitted before, was offered: an
    /// attempt to roll the topic back to an older member list or key.
    #[error("topic policy rollback: epoch {got} offered after epoch {current}")]
    PolicyRollback {
        /// The newest admitted epoch.
        current: Epoch,
        /// The epoch offered.
        got: Epoch,
    },
    /// Two different policies signed for the same epoch of a topic: the authority equivocated (or its key
    /// is compromised).
    #[error("two different topic policies for epoch {epoch}")]
    PolicyFork {
        /// The epoch with two policies.
        epoch: Epoch,
    },
    /// The policy of the epoch after the newest admitted one does not name that policy's digest as its
    /// previous digest: it continues another history.
    #[error("topic policy of epoch {epoch} does not continue the admitted history")]
    PolicyChainBroken {
        /// The epoch of the policy that does not continue the history.
        epoch: Epoch,
    },
    /// Walking a topic's policy history back from a policy held, the policy served for `epoch` is not the
    /// one the policy of `epoch + 1` names (see [`PolicyLinkFault`]): a broker serving a forged, a missing
    /// or another history. Nothing of it was admitted from that epoch down.
    #[error("topic policy history of {topic} broken at epoch {epoch}: {fault}")]
    PolicyLinkBroken {
        /// The topic.
        topic: Topic,
        /// The epoch whose policy is missing or does not link.
        epoch: Epoch,
        /// What is wrong with it.
        fault: PolicyLinkFault,
    },

    // Topic policies: what a member may do.
    /// The principal is not a member of the policy, so no content key is wrapped for it.
    #[error("not a member of the topic policy")]
    NotAMember,
    /// The content key wrapped for the member did not open (HPKE): the secret key given does not match the
    /// member's `hpke_key`.
    #[error("could not unwrap the content key")]
    KeyUnwrap,
    /// A batch is signed by a key that the policy of its epoch does not list as a publisher.
    #[error("batch signer is not a publisher of the topic policy")]
    UntrustedPublisher,
    /// A batch is sealed under an epoch that the topic's policies no longer accept: older than the previous
    /// epoch, or the previous epoch after its grace window.
    #[error("epoch {epoch} is no longer accepted (current epoch {current})")]
    StaleEpoch {
        /// The batch's epoch.
        epoch: Epoch,
        /// The newest admitted epoch.
        current: Epoch,
    },
}
