//! The one error type of `sealpost-client`.
//!
//! Variants are grouped by who has to act: the person who wrote the identity file ([`Error::Identity`]),
//! the topic authority ([`Error::NoPolicy`], [`Error::NoContentKey`], [`Error::NotAPublisher`],
//! [`Error::NotASubscriber`], and the
//! policy changes it asks for: [`Error::NoAuthorityKey`], [`Error::PolicyExists`], [`Error::RoleHeld`],
//! [`Error::UnknownMember`], [`Error::NotAMember`], [`Error::StalePolicy`], [`Error::AuthorityRejected`]),
//! the network or the broker's operator ([`Error::Unreachable`], [`Error::ConnectionLost`],
//! [`Error::BrokerNotTrusted`], [`Error::CertificateRejected`], [`Error::CertificateRevoked`]), the broker's access policy
//! ([`Error::Refused`]), the broker's storage ([`Error::DataLost`]), and whoever tampered with the stored
//! log or the stored topic policies ([`Error::Integrity`], [`Error::UntrustedPublisher`],
//! [`Error::Policy`], [`Error::RolledBack`]), and whoever keeps the client's host (its state folder: [`Error::State`]). Every message is one line that says what failed and, where there is one, what to do
//! about it. No message ever contains a payload or key material; text that the broker sends is shown only
//! after control characters are removed.

use std::fmt;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::Arc;

use sealpost_protocol::{ChainId, ErrorCode, KeyId, Offset, Principal, PublicKey, Topic};

use crate::role::Role;
use crate::ProtocolError;

/// Everything that can go wrong in the client library.
///
/// `Error` is `Clone`: one failure (say, the broker staying unreachable) is handed to every message that
/// was waiting on it.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The identity file, or a certificate or key file it names, is missing or invalid. Fix the file.
    #[error("identity file {}: {message}", path.display())]
    Identity {
        /// The identity file.
        path: PathBuf,
        /// What is wrong, naming the field (and line) concerned; never contains a secret.
        message: String,
    },
    /// The topic has no policy yet: nobody can publish on it or read it until the topic authority
    /// creates one.
    #[error(
        "topic {topic} has no policy yet: the topic authority must create one first (sealpost topic create \
         {topic} ...)"
    )]
    NoPolicy {
        /// The topic.
        topic: Topic,
    },
    /// None of the topic's policies wraps a content key that this identity can unwrap: it is not a member
    /// (or not of the epoch concerned), or the policy lists another HPKE key for it. It cannot seal or open
    /// the topic's messages.
    #[error(
        "no content key for topic {topic}: this identity is not a member of the topic's policy, or the \
         policy lists another hpke key for it; ask the topic authority to grant it"
    )]
    NoContentKey {
        /// The topic.
        topic: Topic,
    },
    /// The topic's current policy does not list this identity as a publisher with its signing key: the
    /// broker would refuse its batches and subscribers would not trust them.
    #[error(
        "{principal} is not a publisher in the current policy of {topic} (epoch {epoch}) with this \
         identity's signing key: ask the topic authority to grant it (sealpost topic grant {topic} \
         --publisher {principal})"
    )]
    NotAPublisher {
        /// The topic.
        topic: Topic,
        /// This identity's principal.
        principal: Principal,
        /// The epoch of the topic's current policy.
        epoch: u64,
    },
    /// The topic's current policy does not list this identity as a subscriber: the broker serves the topic
    /// only to its policy's subscribers (a member removed by `topic revoke` is refused at once, even where
    /// the ACL still allows it).
    #[error(
        "{principal} is not a subscriber in the current policy of {topic} (epoch {epoch}): ask the topic \
         authority to grant it (sealpost topic grant {topic} --subscriber {principal})"
    )]
    NotASubscriber {
        /// The topic.
        topic: Topic,
        /// This identity's principal.
        principal: Principal,
        /// The epoch of the topic's current policy.
        epoch: u64,
    },
    /// This identity holds no `authority_key`, so it cannot sign topic policies
    /// ([`Authority::of`](crate::authority::Authority::of)).
    #[error("this identity holds no authority_key: only the topic authority can change policies")]
    NoAuthorityKey,
    /// The topic has a policy already: it is changed, not created
    /// ([`Authority::create`](crate::authority::Authority::create)).
    #[error(
        "{topic} already has a policy (epoch {epoch}): change it with sealpost topic grant, revoke or rotate"
    )]
    PolicyExists {
        /// The topic.
        topic: Topic,
        /// The epoch of its current policy.
        epoch: u64,
    },
    /// The member holds the role already: the policy would not change
    /// ([`Authority::grant`](crate::authority::Authority::grant)).
    #[error("{principal} already has the {role} role on {topic} (epoch {epoch})")]
    RoleHeld {
        /// The topic.
        topic: Topic,
        /// The member.
        principal: Principal,
        /// The role it holds.
        role: Role,
        /// The epoch of the topic's current policy.
        epoch: u64,
    },
    /// A principal that is not a member was granted a role without its public keys: the authority must
    /// name the keys to add it ([`Authority::grant`](crate::authority::Authority::grant)).
    #[error(
        "{principal} is not a member of the policy of {topic}: its public keys (signing and hpke) are \
         needed to add it"
    )]
    UnknownMember {
        /// The topic.
        topic: Topic,
        /// The principal.
        principal: Principal,
    },
    /// The principal to revoke is not a member of the topic's current policy
    /// ([`Authority::revoke`](crate::authority::Authority::revoke)).
    #[error("{principal} is not a member of the policy of {topic} (epoch {epoch})")]
    NotAMember {
        /// The topic.
        topic: Topic,
        /// The principal.
        principal: Principal,
        /// The epoch of the topic's current policy.
        epoch: u64,
    },
    /// The broker refused a new policy because the topic's policy changed since the one it was made from
    /// (another administrator was faster): fetch the policies again and redo the change
    /// ([`Client::store_policy`](crate::Client::store_policy)).
    #[error(
        "the policy of {topic} changed meanwhile (stale epoch {epoch}): fetch it again and redo the change"
    )]
    StalePolicy {
        /// The topic.
        topic: Topic,
        /// The epoch of the refused policy.
        epoch: u64,
    },
    /// The broker refused a new policy although it follows the topic's current one: the broker is
    /// configured with another topic authority ([`Client::store_policy`](crate::Client::store_policy)).
    #[error("the broker rejected the policy of {topic}: it is not configured with this topic authority ({authority})")]
    AuthorityRejected {
        /// The topic.
        topic: Topic,
        /// The authority that signed the refused policy.
        authority: Box<PublicKey>,
    },
    /// No connection to the broker could be made: wrong address, broker down, or the network drops its
    /// packets.
    #[error("broker unreachable at {addr}: {reason}")]
    Unreachable {
        /// The broker address, as written in the identity file.
        addr: String,
        /// What happened.
        reason: String,
    },
    /// An established connection or stream to the broker failed. Publishers and subscriptions reconnect
    /// on their own; this reaches the application only once the retry budget of the outage is spent.
    #[error("connection to the broker lost: {reason}")]
    ConnectionLost {
        /// What happened.
        reason: String,
    },
    /// The broker's TLS certificate did not verify against the CA file named by the identity, or is not
    /// valid for its `server_name`. Nothing was sent to the broker.
    #[error("broker certificate not trusted: {reason}")]
    BrokerNotTrusted {
        /// Why it did not verify.
        reason: String,
    },
    /// The broker refused this identity's client certificate during the TLS handshake (for another
    /// reason than revocation: [`Error::CertificateRevoked`]), or closed the connection because, after a
    /// reload of its CA bundle or CRLs, the certificate no longer verifies (close code 3, which does not
    /// say whether it was revoked or is no longer valid otherwise).
    #[error(
        "the broker rejected this identity's certificate ({reason}): check that `cert` and `key` in the \
         identity file are issued by the CA the broker trusts, have not expired and have not been revoked"
    )]
    CertificateRejected {
        /// The TLS alert the broker sent, or what its close said.
        reason: String,
    },
    /// The broker refused this identity's client certificate because a CRL it loaded revokes it (TLS
    /// alert `certificate_revoked`). Reconnecting cannot cure it: the identity needs a new certificate.
    #[error(
        "the broker refused this identity's certificate: it has been revoked (a CRL the broker loaded lists \
         it): ask the CA's operator for a new certificate and put it in `cert` and `key` of the identity file"
    )]
    CertificateRevoked,
    /// The broker answered a request with an error code.
    #[error("{}", refusal(*action, topic, *code, message))]
    Refused {
        /// What was refused.
        action: Action,
        /// The topic it was refused on.
        topic: Topic,
        /// The broker's stable error code: the only detail to act on programmatically.
        code: ErrorCode,
        /// The broker's explanation, with control characters removed.
        message: String,
    },
    /// The broker refused an administrative query ([`Client::admin`](crate::Client::admin)): with
    /// `NOT_AUTHORIZED` if its ACL does not grant this principal `admin` on every topic (`topics = [">"]`).
    #[error("{}", admin_refusal(*code, message))]
    AdminRefused {
        /// The broker's stable error code.
        code: ErrorCode,
        /// The broker's explanation, with control characters removed.
        message: String,
    },
    /// A delivered batch failed a cryptographic or sequence check: it was altered, forged with a wrong key,
    /// replayed, reordered, forked, or batches before it were withheld. Nothing from a failed batch is
    /// delivered, except after a [`Gap`](ProtocolError::Gap): the batch itself is authentic and its
    /// messages follow this error.
    ///
    /// `check` says which check failed, as a [`ProtocolError`] (the protocol crate's error type): for
    /// example [`BadSignature`](ProtocolError::BadSignature) or
    /// [`TamperedRecord`](ProtocolError::TamperedRecord) (altered or forged),
    /// [`MalformedHeaders`](ProtocolError::MalformedHeaders) (a publisher sealed headers that break the
    /// format's rules),
    /// [`Gap`](ProtocolError::Gap) (batches withheld or deleted), [`Replay`](ProtocolError::Replay),
    /// [`Reorder`](ProtocolError::Reorder), [`Fork`](ProtocolError::Fork),
    /// [`UnknownEpoch`](ProtocolError::UnknownEpoch) (no content key for the batch's epoch) or
    /// [`StaleEpoch`](ProtocolError::StaleEpoch) (sealed under an epoch no longer accepted).
    #[error("integrity check failed on {topic} at offset {offset}{}: {check}", publisher_suffix(publisher))]
    Integrity {
        /// The topic subscribed to.
        topic: Topic,
        /// The offset the broker delivered the batch at.
        offset: Offset,
        /// The publisher whose chain is affected, when the batch's signature verified.
        publisher: Option<KeyId>,
        /// The failed check.
        check: ProtocolError,
    },
    /// A delivered batch is correctly signed, but by a key that the topic policy of the batch's epoch does
    /// not list as a publisher. Nothing from it is delivered.
    #[error(
        "batch at offset {offset} on {topic} is signed by key {publisher}, which is not a publisher in the \
         topic policy of its epoch"
    )]
    UntrustedPublisher {
        /// The topic subscribed to.
        topic: Topic,
        /// The offset the broker delivered the batch at.
        offset: Offset,
        /// The key that signed it.
        publisher: Box<PublicKey>,
    },
    /// The broker reports stored messages of the topic as lost: its storage failed a checksum where they were
    /// (a flipped bit, a damaged disk), after it had acknowledged them. Nothing of them can be delivered; the
    /// subscription goes on with the offsets after them. When the broker names the batch that held them,
    /// the publisher's chain continues after it without a second, gap error.
    ///
    /// The broker's word, unsigned: a broker could pass a withheld batch off as lost, but it cannot do so
    /// without this error reaching the application.
    #[error("data lost at offsets {}..{}: {}", offsets.start, offsets.end, loss_reason(*reason))]
    DataLost {
        /// The topic subscribed to.
        topic: Topic,
        /// The lost offsets (those this subscription had not yielded yet).
        offsets: Range<Offset>,
        /// The key that signed the lost batch, when the broker named it.
        publisher: Option<KeyId>,
        /// Why, as the broker says: [`ErrorCode::DATA_LOST`] (storage corruption).
        reason: ErrorCode,
    },
    /// The subscription asked for (or fell behind to) offsets the broker's retention rules removed: they are
    /// below the topic's first offset. Nothing of them can be delivered; the subscription goes on from the
    /// first offset, and each publisher's chain continues from its first batch after the cut without a
    /// gap error (a chain may skip ahead once, never back).
    ///
    /// The broker's word, unsigned: a broker could pass deleting the topic's oldest messages off as
    /// retention, but not without this error reaching the application, and only a prefix of the topic.
    #[error("offsets {}..{} of {topic} were removed by the broker's retention; reading goes on from offset {}", offsets.start, offsets.end, offsets.end)]
    Retired {
        /// The topic subscribed to.
        topic: Topic,
        /// The removed offsets this subscription had not yielded yet; `offsets.end` is the topic's first
        /// offset.
        offsets: Range<Offset>,
    },
    /// A topic policy failed a check: the broker served one that is not signed by the pinned topic
    /// authority, is malformed, is for another topic, or rolls the topic back to an older epoch than one
    /// this client has already seen (or forks its history); or a policy handed to
    /// [`Client::put_policy`](crate::Client::put_policy) is not signed by the pinned authority. Nothing
    /// from it is trusted: the client keeps the policies it had.
    #[error("topic policy of {topic} rejected: {check}")]
    Policy {
        /// The topic.
        topic: Topic,
        /// The failed check (a [`ProtocolError`]).
        check: ProtocolError,
    },
    /// A message is too large to fit in a sealed batch on its own.
    #[error("message of {len} bytes is too large: the limit is {max} bytes")]
    MessageTooLarge {
        /// The payload size, with its encoded headers if it has any.
        len: usize,
        /// The largest payload that fits.
        max: usize,
    },
    /// Options that contradict each other (for example a shared subscription without a durable name).
    #[error("invalid options: {detail}")]
    InvalidOptions {
        /// What is wrong.
        detail: &'static str,
    },
    /// The broker sent something the protocol does not allow here; reconnecting would not help.
    #[error("the broker broke the protocol: {detail}")]
    ProtocolViolation {
        /// What was wrong.
        detail: String,
    },
    /// A local protocol operation failed (for example sealing a batch, or parsing a [`Topic`] name); the
    /// [`ProtocolError`] says which.
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    /// A local I/O operation failed (for example binding the UDP socket).
    #[error("{what}: {cause}")]
    Io {
        /// What was being done.
        what: String,
        /// The operating system's error.
        cause: Arc<std::io::Error>,
    },
    /// The broker's head of a chain is behind where this client had it: acknowledged to this identity's
    /// previous publisher (its state folder says so), or verified by a subscription (before a reconnect,
    /// or by a durable subscription's previous process). The broker dropped (or replaced) batches it had
    /// acknowledged or delivered. A publisher does not start, so nothing is published on top of the loss;
    /// a subscription yields it as an item and goes on.
    #[error(
        "the broker rolled back the chain {chain} on {topic}: it was acknowledged or delivered up to \
         sequence {acknowledged}, the broker now holds it up to {broker}"
    )]
    RolledBack {
        /// The topic.
        topic: Topic,
        /// The chain.
        chain: ChainId,
        /// The last sequence number acknowledged to the previous publisher, or verified by the subscription.
        acknowledged: u64,
        /// The last sequence number the broker says it holds (0: none), or the same as `acknowledged`
        /// with another digest.
        broker: u64,
    },
    /// A file of the client's state folder is torn, corrupt or locked (docs/operations.md says what is in
    /// it). A damaged file is never ignored: restore the folder from the backup made with the identity, or,
    /// knowing what is then not detected (docs/threat-model.md), remove the file.
    #[error("state file {}: {fault}", path.display())]
    State {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        fault: crate::state::StateFault,
    },
    /// The client, publisher or subscription was closed, or its background task has ended.
    #[error("closed")]
    Closed,
}

/// What a [`Refused`](Error::Refused) request was trying to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Action {
    /// Publishing on a topic.
    Publish,
    /// Subscribing to a topic.
    Subscribe,
    /// Reading a topic's policies ([`Client::policies`](crate::Client::policies)).
    ReadPolicies,
    /// Changing a topic's policy ([`Client::put_policy`](crate::Client::put_policy)): the broker's ACL
    /// `admin` action.
    Administer,
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Action::Publish => "publish on",
            Action::Subscribe => "subscribe to",
            Action::ReadPolicies => "read the policies of",
            Action::Administer => "administer",
        })
    }
}

impl Error {
    /// Whether this error is an integrity failure of one delivered batch ([`Error::Integrity`] or
    /// [`Error::UntrustedPublisher`]), of a topic policy the broker served ([`Error::Policy`]), or a range
    /// of stored messages the broker reports lost ([`Error::DataLost`]) or removed by retention
    /// ([`Error::Retired`]). A subscription goes on after such an item, with the policies it trusted
    /// before, and after an [`Error::RolledBack`] item (which this does not count); after any other error
    /// item it ends.
    pub fn is_integrity(&self) -> bool {
        matches!(
            self,
            Error::Integrity { .. }
                | Error::UntrustedPublisher { .. }
                | Error::Policy { .. }
                | Error::DataLost { .. }
                | Error::Retired { .. }
        )
    }

    /// Whether reconnecting may cure this error: the broker could not be reached
    /// ([`Error::Unreachable`]), the connection was lost ([`Error::ConnectionLost`]), or the broker
    /// answered `UNAVAILABLE` (it is shutting down). The client retries these itself, with backoff, within
    /// [`Reconnect::budget`](crate::Reconnect::budget); when one reaches the application, that budget was
    /// spent, and trying again later may succeed. Anything else (a refusal, an untrusted broker or
    /// certificate, an integrity failure, a closed client) does not go away by retrying.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Unreachable { .. } | Error::ConnectionLost { .. } => true,
            Error::Refused { code, .. } => *code == ErrorCode::UNAVAILABLE,
            _ => false,
        }
    }

    pub(crate) fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io { what: what.into(), cause: Arc::new(source) }
    }

    pub(crate) fn refused(action: Action, topic: &Topic, code: ErrorCode, message: &str) -> Self {
        Error::Refused { action, topic: topic.clone(), code, message: sanitize(message) }
    }

    pub(crate) fn violation(detail: impl Into<String>) -> Self {
        Error::ProtocolViolation { detail: detail.into() }
    }
}

/// Peer-supplied text, made safe to print on one terminal line: control characters become spaces and
/// the length is capped.
pub(crate) fn sanitize(text: &str) -> String {
    const MAX: usize = 200;
    let mut out: String =
        text.chars().take(MAX).map(|c| if c.is_control() { ' ' } else { c }).collect::<String>();
    if text.chars().count() > MAX {
        out.push('…');
    }
    out.trim().to_owned()
}

/// Why messages were lost, from the reason code of a `Lost` frame.
fn loss_reason(reason: ErrorCode) -> String {
    match reason {
        ErrorCode::DATA_LOST => "storage corruption".to_owned(),
        other => format!("the broker answered {other}"),
    }
}

fn publisher_suffix(publisher: &Option<KeyId>) -> String {
    publisher.map(|k| format!(" (publisher {k})")).unwrap_or_default()
}

/// The friendly text of a refusal.
fn admin_refusal(code: ErrorCode, message: &str) -> String {
    match code {
        ErrorCode::NOT_AUTHORIZED => {
            "the broker refused the administrative query: not authorized (its ACL must \
                                      grant this principal `admin` on every topic, `topics = [\">\"]`)"
                .to_owned()
        }
        code if message.is_empty() => format!("the broker refused the administrative query: {code}"),
        code => format!("the broker refused the administrative query: {code} ({message})"),
    }
}

fn refusal(action: Action, topic: &Topic, code: ErrorCode, message: &str) -> String {
    let detail = if message.is_empty() { String::new() } else { format!(" ({message})") };
    let why = match code {
        ErrorCode::NOT_AUTHORIZED => return format!("not authorized to {action} {topic}"),
        ErrorCode::SIGNER_NOT_BOUND => {
            "the topic's current policy does not list this identity's signing key as \
                                        a publisher for its certificate's principal"
                .to_owned()
        }
        ErrorCode::POLICY_REJECTED => "the broker rejected the policy: it is not signed by the topic \
                                       authority the broker is configured with, or its epoch does not follow \
                                       the broker's current policy of the topic"
            .to_owned(),
        ErrorCode::SEQUENCE_CONFLICT => "the batch does not continue this signing key's chain on the broker \
                                         (is another process publishing with the same key?)"
            .to_owned(),
        ErrorCode::TOO_LARGE => "over the broker's size limit".to_owned(),
        ErrorCode::RATE_LIMITED => "rate limited by the broker; retry later".to_owned(),
        ErrorCode::STORAGE_FULL => "the broker's storage is full; nothing was stored".to_owned(),
        ErrorCode::UNAVAILABLE => "the broker is shutting down or unable to serve; retry later".to_owned(),
        ErrorCode::LIMIT_EXCEEDED => "a broker limit on connections or requests was reached".to_owned(),
        ErrorCode::INTERNAL => "internal error in the broker; nothing was stored".to_owned(),
        ErrorCode::FRAME_TIMEOUT => "a frame did not reach the broker within its frame deadline (a very \
                                     slow link, or a stalled sender)"
            .to_owned(),
        code => format!("the broker answered {code}"),
    };
    format!("cannot {action} {topic}: {why}{detail}")
}

/// The result type of this crate.
pub type Result<T, E = Error> = core::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    fn topic() -> Topic {
        Topic::new("demo.x").unwrap()
    }

    #[test]
    fn not_authorized_reads_as_a_sentence() {
        let e = Error::refused(Action::Publish, &topic(), ErrorCode::NOT_AUTHORIZED, "denied");
        assert_eq!(e.to_string(), "not authorized to publish on demo.x");
        let e = Error::refused(Action::Subscribe, &topic(), ErrorCode::NOT_AUTHORIZED, "");
        assert_eq!(e.to_string(), "not authorized to subscribe to demo.x");
        let e = Error::refused(Action::Administer, &topic(), ErrorCode::NOT_AUTHORIZED, "");
        assert_eq!(e.to_string(), "not authorized to administer demo.x");
        let e = Error::refused(Action::ReadPolicies, &topic(), ErrorCode::NOT_AUTHORIZED, "");
        assert_eq!(e.to_string(), "not authorized to read the policies of demo.x");
    }

    #[test]
    fn a_rejected_policy_names_both_possible_causes() {
        let e = Error::refused(Action::Administer, &topic(), ErrorCode::POLICY_REJECTED, "");
        assert_eq!(
            e.to_string(),
            "cannot administer demo.x: the broker rejected the policy: it is not signed by the topic \
             authority the broker is configured with, or its epoch does not follow the broker's current \
             policy of the topic"
        );
    }

    #[test]
    fn policy_errors_count_as_integrity_items() {
        let e = Error::Policy {
            topic: topic(),
            check: sealpost_protocol::Error::PolicyRollback {
                current: sealpost_protocol::Epoch(3),
                got: sealpost_protocol::Epoch(2),
            },
        };
        assert!(e.is_integrity());
        assert_eq!(
            e.to_string(),
            "topic policy of demo.x rejected: topic policy rollback: epoch 2 offered after epoch 3"
        );
    }

    #[test]
    fn other_refusals_name_the_cause_and_the_broker_text() {
        let e = Error::refused(Action::Publish, &topic(), ErrorCode::RATE_LIMITED, "slow down\n\x1b[31m");
        assert_eq!(
            e.to_string(),
            "cannot publish on demo.x: rate limited by the broker; retry later (slow down  [31m)"
        );
        let e = Error::refused(Action::Subscribe, &topic(), ErrorCode(777), "");
        assert_eq!(e.to_string(), "cannot subscribe to demo.x: the broker answered unknown error (code 777)");
    }

    #[test]
    fn sanitize_caps_length_and_strips_control_characters() {
        let long = "a".repeat(500);
        assert_eq!(sanitize(&long).chars().count(), 201);
        assert_eq!(sanitize("a\tb\r\n"), "a b");
    }

    #[test]
    fn integrity_errors_are_flagged_and_name_the_publisher() {
        let e = Error::Integrity {
            topic: topic(),
            offset: Offset(12),
            publisher: Some(KeyId([0xab; 8])),
            check: sealpost_protocol::Error::Gap { expected: 5, got: 9 },
        };
        assert!(e.is_integrity());
        assert_eq!(
            e.to_string(),
            "integrity check failed on demo.x at offset 12 (publisher abababababababab): gap in publisher \
             sequence: expected 5, got 9"
        );
        assert!(!Error::Closed.is_integrity());
    }

    #[test]
    fn a_loss_reads_as_one_line_and_lets_the_subscription_go_on() {
        let e = Error::DataLost {
            topic: topic(),
            offsets: Offset(500)..Offset(525),
            publisher: None,
            reason: ErrorCode::DATA_LOST,
        };
        assert!(e.is_integrity());
        assert!(!e.is_retryable());
        assert_eq!(e.to_string(), "data lost at offsets 500..525: storage corruption");
        let e = Error::DataLost {
            topic: topic(),
            offsets: Offset(1)..Offset(2),
            publisher: None,
            reason: ErrorCode(777),
        };
        assert_eq!(e.to_string(), "data lost at offsets 1..2: the broker answered unknown error (code 777)");
    }

    #[test]
    fn only_network_failures_and_unavailable_are_retried() {
        assert!(Error::ConnectionLost { reason: "x".into() }.is_retryable());
        assert!(Error::Unreachable { addr: "a".into(), reason: "x".into() }.is_retryable());
        assert!(Error::refused(Action::Publish, &topic(), ErrorCode::UNAVAILABLE, "").is_retryable());
        assert!(!Error::refused(Action::Publish, &topic(), ErrorCode::NOT_AUTHORIZED, "").is_retryable());
        assert!(!Error::BrokerNotTrusted { reason: "x".into() }.is_retryable());
    }
}
