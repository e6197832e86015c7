//! Frames: the messages clients and brokers exchange on QUIC streams.
//!
//! # Encoding
//!
//! ```text
//! length   u32 big-endian   bytes that follow (version + body), 1..=max_frame_len
//! version  u8               = 1
//! body     postcard(Frame)  exactly `length - 1` bytes
//! ```
//!
//! postcard 1.x is a frozen, documented format (<https://postcard.jamesmunns.com/wire-format>): enum variants
//! are encoded by their index, so **variants and fields are only ever appended**, never reordered or removed;
//! the golden vectors in `protocol/tests/vectors/` make any change visible.
//!
//! Reading is two steps, as in mini-redis: [`Frame::check`] looks at the length prefix of a buffer and says
//! whether a whole frame is there, rejecting an oversized length before anything is allocated for it; then
//! [`Frame::decode`] parses exactly that many bytes. A sealed batch or a topic policy travels inside a frame
//! as opaque bytes, and is decoded separately with its own limits.
//!
//! # Without copying the batch
//!
//! A sealed batch is most of the bytes of a `Publish` or `Deliver` frame, and nothing in the frame layer
//! needs to copy it:
//! - [`Frame::decode_bytes`] decodes a frame held in a [`Bytes`] so that its byte fields (`Publish::batch`,
//!   `Deliver::batch`, `PutPolicy::policy`, `Policies::policies`) are slices of that buffer
//!   ([`Bytes::slice_ref`]), where [`Frame::decode`] copies them out of a `&[u8]`. Both accept and refuse
//!   exactly the same bytes, with the same errors.
//! - [`Frame::encode_split`] encodes a frame as a small head and, for a frame that ends with a byte field,
//!   that field's own [`Bytes`]: written one after the other they are the bytes [`Frame::encode`] gives, so
//!   a writer that takes chunks (QUIC's `write_all_chunks`) sends a batch without concatenating it.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::admin::{AdminAnswer, AdminQuery};
use crate::chain::{ChainHead, ChainId};
use crate::code::ErrorCode;
use crate::epoch::Epoch;
use crate::keys::PublicKey;
use crate::offset::Offset;
use crate::topic::Topic;
use crate::{Digest, Error, Result};

/// The frame format version this build writes and reads.
pub const FRAME_VERSION: u8 = 1;
/// Bytes before the body: the length prefix and the version.
pub const FRAME_HEADER_LEN: usize = 5;

/// Chosen by the client to match a response to its request; unique among its requests in flight.
pub type RequestId = u64;

/// Chosen by the broker, unique on its connection, to name a subscription.
pub type SubscriptionId = u64;

/// Where a subscription starts reading.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum StartAt {
    /// The oldest message still stored.
    Earliest,
    /// Only messages published after the subscription starts.
    Latest,
    /// The message with this offset (or the batch that contains it).
    Offset(Offset),
}

/// What the broker's index knew of a lost batch, in [`Frame::Lost`]: the publisher's chain continues after
/// it, so a subscriber's chain verifier can move past it instead of reporting a second, false gap.
///
/// Unsigned: a broker that lies here can hide a withheld batch behind a loss, but the loss itself is a
/// typed event the application sees.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LostBatch {
    /// The key that signed the lost batch.
    pub publisher: PublicKey,
    /// The chain (publisher instance) it belonged to.
    pub chain: ChainId,
    /// The sequence number of its first message; it held as many messages as the lost range has offsets.
    pub first_seq: u64,
    /// Its digest: what the publisher's next batch names as `prev_digest`.
    pub digest: Digest,
}

/// A client <-> broker message. Variants are appended, never reordered: their index is on the wire.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Frame {
    /// Client -> broker: store this sealed batch.
    Publish {
        /// Echoed in the answer.
        request_id: RequestId,
        /// The canonical bytes of a [`SealedBatch`](crate::SealedBatch).
        batch: Bytes,
    },
    /// Broker -> client: the batch of `request_id` is on stable storage.
    Published {
        /// The request answered.
        request_id: RequestId,
        /// Offset of the batch's first message; its messages have consecutive offsets.
        first_offset: Offset,
        /// Number of messages in the batch.
        count: u32,
    },
    /// Client -> broker: start a subscription.
    Subscribe {
        /// Echoed in the answer.
        request_id: RequestId,
        /// The topic to read.
        topic: Topic,
        /// Where to start, for a new durable subscription or a plain one.
        from: StartAt,
        /// A durable subscription name: the broker keeps its committed offset across reconnects and
        /// restarts, and a durable subscription that exists resumes from there, ignoring `from`.
        durable: Option<String>,
    },
    /// Broker -> client: the subscription of `request_id` is open.
    Subscribed {
        /// The request answered.
        request_id: RequestId,
        /// The name of the subscription in later frames.
        subscription: SubscriptionId,
        /// The offset the subscription starts at.
        start_offset: Offset,
    },
    /// Broker -> client: one stored batch.
    Deliver {
        /// The subscription it is for.
        subscription: SubscriptionId,
        /// Offset of the batch's first message.
        offset: Offset,
        /// The canonical bytes of the stored batch.
        batch: Bytes,
    },
    /// Client -> broker: every message below `next_offset` has been processed; for a durable subscription
    /// the broker stores it as the point to resume from.
    Ack {
        /// The subscription acknowledged.
        subscription: SubscriptionId,
        /// The first offset not yet processed.
        next_offset: Offset,
    },
    /// Client -> broker: end a subscription.
    Unsubscribe {
        /// The subscription to end.
        subscription: SubscriptionId,
    },
    /// Broker -> client: a request failed.
    Error {
        /// The request that failed, if the error answers one.
        request_id: Option<RequestId>,
        /// The stable code: the only detail a client should act on.
        code: ErrorCode,
        /// A short human-readable explanation; never contains secrets or payloads.
        message: String,
    },
    /// Client -> broker: where does the chain of `publisher` (a key bound to this connection's principal)
    /// stand on `topic`? A publisher asks before its first batch, so that it continues its chain across
    /// restarts.
    Head {
        /// Echoed in the answer.
        request_id: RequestId,
        /// The topic.
        topic: Topic,
        /// The publisher key.
        publisher: PublicKey,
    },
    /// Broker -> client: the stored chain head ([`ChainHead::GENESIS`] if the publisher has no batch there).
    HeadIs {
        /// The request answered.
        request_id: RequestId,
        /// Where the publisher's next batch continues.
        head: ChainHead,
    },
    /// Admin -> broker: store this topic policy. The topic is the one named inside the policy.
    PutPolicy {
        /// Echoed in the answer.
        request_id: RequestId,
        /// The canonical bytes of a [`SignedPolicy`](crate::SignedPolicy).
        policy: Bytes,
    },
    /// Broker -> admin: the policy of `request_id` is on stable storage.
    PolicyStored {
        /// The request answered.
        request_id: RequestId,
    },
    /// Client -> broker: send me the current policies of `topic`.
    GetPolicies {
        /// Echoed in the answer.
        request_id: RequestId,
        /// The topic.
        topic: Topic,
    },
    /// Broker -> client: the stored policies of a topic, oldest epoch first: at most the current and the
    /// previous epoch's, none if the topic has no policy. The client verifies each against its pinned
    /// authority; the broker's word is worth nothing here.
    Policies {
        /// The request answered.
        request_id: RequestId,
        /// The canonical bytes of each [`SignedPolicy`](crate::SignedPolicy).
        policies: Vec<Bytes>,
    },
    /// Broker -> client: the stored messages at offsets `offset..offset + count` are lost (the broker's
    /// storage failed a checksum there) or were removed by retention (the subscription asked for offsets
    /// below the topic's first offset, or fell behind it); the subscription goes on with the offsets after
    /// them. Sent in offset order, where their `Deliver` would have been.
    Lost {
        /// The subscription it is for.
        subscription: SubscriptionId,
        /// The first lost offset.
        offset: Offset,
        /// How many offsets are lost, at least 1.
        count: u64,
        /// The one batch that held them, when the broker's index knew it.
        batch: Option<LostBatch>,
        /// Why: [`ErrorCode::DATA_LOST`] (storage corruption), or [`ErrorCode::RETIRED`] (removed by the
        /// broker's retention rules: `offset` was below the topic's first offset, which is `offset + count`).
        reason: ErrorCode,
    },
    /// Client -> broker: send me a page of the whole policy history of `topic`, **newest first**: the
    /// stored policies of the (at most `max`) highest epochs below `before` (below none: from the newest).
    /// Answered with [`Frame::Policies`], whose list is then newest first (unlike the answer to
    /// `GetPolicies`), as many as fit in one frame (at least one if any is stored below `before`); an empty
    /// list means there is none. The next page asks `before` = the oldest epoch received. The client walks
    /// the pages back from the newest policy it holds and checks every link; the broker's word is worth
    /// nothing here either.
    GetPolicyHistory {
        /// Echoed in the answer.
        request_id: RequestId,
        /// The topic.
        topic: Topic,
        /// Only epochs below this one; `None`: from the newest stored epoch.
        before: Option<Epoch>,
        /// At most this many policies (the broker may send fewer: its own page limit, the frame limit).
        max: u32,
    },
    /// Client -> broker: where does `chain` of `publisher` (a key bound to this connection's principal)
    /// stand on `topic`? Answered with [`Frame::HeadIs`] ([`ChainHead::GENESIS`] if the chain has no stored
    /// batch), authorized as [`Frame::Head`] (which asks for the legacy chain). A publisher's new process
    /// asks it for the chain its previous process acknowledged, to continue that chain and to tell a broker
    /// that dropped the acknowledged tail.
    HeadOfChain {
        /// Echoed in the answer.
        request_id: RequestId,
        /// The topic.
        topic: Topic,
        /// The publisher key.
        publisher: PublicKey,
        /// The publisher instance's chain.
        chain: ChainId,
    },
    /// Client -> broker: an administrative query ([`crate::admin`]), from a principal the ACL grants
    /// `admin` on every topic. Answered with [`Frame::AdminAnswer`] or an `Error`.
    Admin {
        /// Echoed in the answer.
        request_id: RequestId,
        /// What is asked.
        query: AdminQuery,
    },
    /// Broker -> client: the answer to [`Frame::Admin`].
    AdminAnswer {
        /// The query's.
        request_id: RequestId,
        /// The answer, of the query's kind.
        answer: AdminAnswer,
    },
    /// Client -> broker: join the **shared** durable subscription `group` of `topic`: its members share the
    /// topic's messages, each batch to one member, every batch of a publisher chain to the same member
    /// while the group's membership is unchanged (so each member verifies the chains it is given end to
    /// end). Answered with [`Frame::Subscribed`]; `from` applies when the group is new, a group that
    /// exists resumes from its committed offset. Acks are those of a durable subscription, with the
    /// [`Frame::Rewind`] rule.
    SubscribeShared {
        /// Echoed in the answer.
        request_id: RequestId,
        /// The topic to read.
        topic: Topic,
        /// Where a new group starts.
        from: StartAt,
        /// The group's name, in the same namespace as durable subscription names.
        group: String,
    },
    /// Broker -> client, on a shared subscription: the member was given chains whose unacknowledged
    /// batches lie before what it was delivered (another member left), so what follows on this stream
    /// starts again at `offset`, skipping what this member was delivered already. An `Ack` after the
    /// client's [`Frame::Rewound`] covers everything delivered before the `Rewind` and what followed it
    /// below its `next_offset`; one before it, only what was delivered before the `Rewind`.
    Rewind {
        /// The subscription it is for.
        subscription: SubscriptionId,
        /// Where delivery starts again.
        offset: Offset,
    },
    /// Client -> broker: the client read the `Rewind` of `subscription`; its acks from now on count in
    /// the rewound stream.
    Rewound {
        /// The subscription.
        subscription: SubscriptionId,
    },
}

/// postcard's index of the variants with byte fields that [`Frame::decode_bytes`] slices out of the frame
/// instead of copying (variants are only appended, so these never change; a test checks them).
const PUBLISH: u32 = 0;
const DELIVER: u32 = 4;
const PUT_POLICY: u32 = 10;
const POLICIES: u32 = 13;

/// The fields of `Frame::Publish`, with the batch borrowed from the frame's bytes.
#[derive(Deserialize)]
struct PublishRef<'a> {
    request_id: RequestId,
    batch: &'a [u8],
}

/// The fields of `Frame::Deliver`, with the batch borrowed from the frame's bytes.
#[derive(Deserialize)]
struct DeliverRef<'a> {
    subscription: SubscriptionId,
    offset: Offset,
    batch: &'a [u8],
}

/// The fields of `Frame::PutPolicy`, with the policy borrowed from the frame's bytes.
#[derive(Deserialize)]
struct PutPolicyRef<'a> {
    request_id: RequestId,
    policy: &'a [u8],
}

/// The fields of `Frame::Policies`, with the policies borrowed from the frame's bytes.
#[derive(Deserialize)]
struct PoliciesRef<'a> {
    request_id: RequestId,
    #[serde(borrow)]
    policies: Vec<&'a [u8]>,
}

/// Decodes `fields` as a `T` that must take all of them, with [`Frame::decode_body`]'s errors.
fn take_all<'a, T: Deserialize<'a>>(fields: &'a [u8]) -> Result<T> {
    let (value, rest) = postcard::take_from_bytes(fields).map_err(|_| Error::Malformed("frame body"))?;
    if !rest.is_empty() {
        return Err(Error::Malformed("trailing bytes in frame"));
    }
    Ok(value)
}

/// Appends `n` as postcard writes a length: LEB128, seven bits a byte, least significant first.
fn push_varint(out: &mut Vec<u8>, mut n: u64) {
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

/// Lets postcard append to a caller's buffer without an intermediate allocation.
struct Append<'a>(&'a mut Vec<u8>);

impl Extend<u8> for Append<'_> {
    fn extend<I: IntoIterator<Item = u8>>(&mut self, iter: I) {
        self.0.extend(iter)
    }
}

impl Frame {
    /// The variant's name, for logs and error messages.
    pub fn name(&self) -> &'static str {
        match self {
            Frame::Publish { .. } => "Publish",
            Frame::Published { .. } => "Published",
            Frame::Subscribe { .. } => "Subscribe",
            Frame::Subscribed { .. } => "Subscribed",
            Frame::Deliver { .. } => "Deliver",
            Frame::Ack { .. } => "Ack",
            Frame::Unsubscribe { .. } => "Unsubscribe",
            Frame::Error { .. } => "Error",
            Frame::Head { .. } => "Head",
            Frame::HeadIs { .. } => "HeadIs",
            Frame::PutPolicy { .. } => "PutPolicy",
            Frame::PolicyStored { .. } => "PolicyStored",
            Frame::GetPolicies { .. } => "GetPolicies",
            Frame::Policies { .. } => "Policies",
            Frame::Lost { .. } => "Lost",
            Frame::GetPolicyHistory { .. } => "GetPolicyHistory",
            Frame::HeadOfChain { .. } => "HeadOfChain",
            Frame::Admin { .. } => "Admin",
            Frame::AdminAnswer { .. } => "AdminAnswer",
            Frame::SubscribeShared { .. } => "SubscribeShared",
            Frame::Rewind { .. } => "Rewind",
            Frame::Rewound { .. } => "Rewound",
        }
    }

    /// Appends the encoded frame (length prefix, version, body) to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<()> {
        let start = out.len();
        out.extend_from_slice(&[0, 0, 0, 0, FRAME_VERSION]);
        if postcard::to_extend(self, Append(out)).is_err() {
            out.truncate(start);
            return Err(Error::Encode);
        }
        let Ok(len) = u32::try_from(out.len() - start - 4) else {
            out.truncate(start);
            return Err(Error::Encode);
        };
        out[start..start + 4].copy_from_slice(&len.to_be_bytes());
        Ok(())
    }

    /// The encoded frame as a new buffer.
    pub fn to_vec(&self) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        self.encode(&mut out)?;
        Ok(out)
    }

    /// The encoded frame in two parts that, written one after the other, are the bytes of
    /// [`encode`](Self::encode): a head (length prefix, version, and every field but the last) and, for a
    /// frame that ends with a byte field (`Publish`, `Deliver`, `PutPolicy`), that field's bytes themselves
    /// (a clone of the frame's [`Bytes`], not a copy). Other frames come whole in the head, with an empty
    /// second part.
    pub fn encode_split(&self) -> Result<(Bytes, Bytes)> {
        let (head, tail) = match self {
            Frame::Publish { request_id, batch } if !batch.is_empty() => {
                (Frame::Publish { request_id: *request_id, batch: Bytes::new() }, batch)
            }
            Frame::Deliver { subscription, offset, batch } if !batch.is_empty() => {
                (Frame::Deliver { subscription: *subscription, offset: *offset, batch: Bytes::new() }, batch)
            }
            Frame::PutPolicy { request_id, policy } if !policy.is_empty() => {
                (Frame::PutPolicy { request_id: *request_id, policy: Bytes::new() }, policy)
            }
            _ => return Ok((Bytes::from(self.to_vec()?), Bytes::new())),
        };
        let mut out = head.to_vec()?;
        // The empty last field is encoded last, as its length: one zero byte. Its real length replaces it.
        if out.pop() != Some(0) {
            return Err(Error::Encode);
        }
        push_varint(&mut out, tail.len() as u64);
        let len = (out.len() - 4).checked_add(tail.len()).and_then(|n| u32::try_from(n).ok());
        let Some(len) = len else {
            return Err(Error::Encode);
        };
        out[..4].copy_from_slice(&len.to_be_bytes());
        Ok((Bytes::from(out), tail.clone()))
    }

    /// Validates a length prefix: the number of bytes that follow it, at least 1 and at most
    /// `max_frame_len`. Call it before allocating a buffer for the frame.
    pub fn length(prefix: [u8; 4], max_frame_len: u32) -> Result<usize> {
        let len = u32::from_be_bytes(prefix);
        if len == 0 {
            return Err(Error::Malformed("empty frame"));
        }
        if len > max_frame_len {
            return Err(Error::TooLarge { what: "frame", len: len.into(), max: max_frame_len.into() });
        }
        Ok(len as usize)
    }

    /// Whether `buf` starts with a whole frame: `Ok(Some(n))` if its first `n` bytes are one, `Ok(None)` if
    /// more bytes are needed, and an error if the length prefix is invalid or over `max_frame_len`.
    pub fn check(buf: &[u8], max_frame_len: u32) -> Result<Option<usize>> {
        let Some(prefix) = buf.first_chunk::<4>() else {
            return Ok(None);
        };
        let total = 4 + Self::length(*prefix, max_frame_len)?;
        Ok((buf.len() >= total).then_some(total))
    }

    /// Decodes one whole frame, length prefix included, as delimited by [`check`](Self::check).
    pub fn decode(frame: &[u8]) -> Result<Frame> {
        let Some((prefix, rest)) = frame.split_first_chunk::<4>() else {
            return Err(Error::Truncated("frame length"));
        };
        if u32::from_be_bytes(*prefix) as usize != rest.len() {
            return Err(Error::Malformed("frame length does not match its bytes"));
        }
        Self::decode_body(rest)
    }

    /// [`decode`](Self::decode) a whole frame held in `frame`, with its byte fields sliced out of `frame`
    /// rather than copied: a `Publish` frame's batch keeps the frame's buffer alive, and costs no second
    /// buffer. Accepts and refuses exactly what [`decode`](Self::decode) does.
    pub fn decode_bytes(frame: Bytes) -> Result<Frame> {
        let Some((prefix, rest)) = frame.split_first_chunk::<4>() else {
            return Err(Error::Truncated("frame length"));
        };
        if u32::from_be_bytes(*prefix) as usize != rest.len() {
            return Err(Error::Malformed("frame length does not match its bytes"));
        }
        Self::decode_body_bytes(frame.slice(4..))
    }

    /// [`decode_body`](Self::decode_body) for a body held in `body`, with byte fields sliced out of it.
    pub fn decode_body_bytes(body: Bytes) -> Result<Frame> {
        let Some((&version, rest)) = body.split_first() else {
            return Err(Error::Truncated("frame version"));
        };
        if version != FRAME_VERSION {
            return Err(Error::UnsupportedVersion { what: "frame", version });
        }
        let Ok((variant, fields)) = postcard::take_from_bytes::<u32>(rest) else {
            return Self::decode_body(&body);
        };
        Ok(match variant {
            PUBLISH => {
                let f: PublishRef<'_> = take_all(fields)?;
                Frame::Publish { request_id: f.request_id, batch: body.slice_ref(f.batch) }
            }
            DELIVER => {
                let f: DeliverRef<'_> = take_all(fields)?;
                Frame::Deliver {
                    subscription: f.subscription,
                    offset: f.offset,
                    batch: body.slice_ref(f.batch),
                }
            }
            PUT_POLICY => {
                let f: PutPolicyRef<'_> = take_all(fields)?;
                Frame::PutPolicy { request_id: f.request_id, policy: body.slice_ref(f.policy) }
            }
            POLICIES => {
                let f: PoliciesRef<'_> = take_all(fields)?;
                let policies = f.policies.into_iter().map(|p| body.slice_ref(p)).collect();
                Frame::Policies { request_id: f.request_id, policies }
            }
            // No byte field to slice: the plain decoder copies nothing large.
            _ => return Self::decode_body(&body),
        })
    }

    /// Decodes what follows a length prefix: the version byte and the body.
    pub fn decode_body(body: &[u8]) -> Result<Frame> {
        let Some((&version, body)) = body.split_first() else {
            return Err(Error::Truncated("frame version"));
        };
        if version != FRAME_VERSION {
            return Err(Error::UnsupportedVersion { what: "frame", version });
        }
        let (frame, rest) = postcard::take_from_bytes(body).map_err(|_| Error::Malformed("frame body"))?;
        if !rest.is_empty() {
            return Err(Error::Malformed("trailing bytes in frame"));
        }
        Ok(frame)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_waits_for_a_whole_frame() {
        let f = Frame::Ack { subscription: 3, next_offset: Offset(9) }.to_vec().unwrap();
        for cut in 0..f.len() {
            assert_eq!(Frame::check(&f[..cut], 1024), Ok(None), "cut at {cut}");
        }
        assert_eq!(Frame::check(&f, 1024), Ok(Some(f.len())));
        let mut two = f.clone();
        two.extend_from_slice(&f);
        assert_eq!(Frame::check(&two, 1024), Ok(Some(f.len())));
    }

    #[test]
    fn check_rejects_oversized_length_before_the_bytes_arrive() {
        let prefix = (4 * 1024 * 1024 + 1u32).to_be_bytes();
        assert_eq!(
            Frame::check(&prefix, 4 * 1024 * 1024),
            Err(Error::TooLarge { what: "frame", len: 4 * 1024 * 1024 + 1, max: 4 * 1024 * 1024 })
        );
        assert_eq!(
            Frame::check(&u32::MAX.to_be_bytes(), 4 * 1024 * 1024).unwrap_err().to_string(),
            "frame too large: 4294967295 exceeds the limit of 4194304"
        );
    }

    #[test]
    fn check_rejects_empty_frame() {
        assert_eq!(Frame::check(&[0, 0, 0, 0], 1024), Err(Error::Malformed("empty frame")));
    }

    #[test]
    fn decode_rejects_unknown_version() {
        let mut f = Frame::Unsubscribe { subscription: 1 }.to_vec().unwrap();
        f[4] = 2;
        assert_eq!(Frame::decode(&f), Err(Error::UnsupportedVersion { what: "frame", version: 2 }));
    }

    #[test]
    fn decode_rejects_trailing_bytes_and_bad_variants() {
        let mut f = Frame::Unsubscribe { subscription: 1 }.to_vec().unwrap();
        f.push(0);
        let len = (f.len() - 4) as u32;
        f[..4].copy_from_slice(&len.to_be_bytes());
        assert_eq!(Frame::decode(&f), Err(Error::Malformed("trailing bytes in frame")));
        assert_eq!(Frame::decode(&[0, 0, 0, 2, 1, 200]), Err(Error::Malformed("frame body")));
    }

    #[test]
    fn decode_rejects_a_length_that_disagrees_with_the_bytes() {
        let mut f = Frame::Unsubscribe { subscription: 1 }.to_vec().unwrap();
        f.push(0);
        assert_eq!(Frame::decode(&f), Err(Error::Malformed("frame length does not match its bytes")));
    }

    #[test]
    fn policies_frame_with_two_largest_policies_fits_a_frame() {
        for max_frame_len in [1024, 65_536, crate::Limits::DEFAULT_MAX_FRAME_LEN] {
            let limits = crate::Limits { max_frame_len, ..crate::Limits::default() };
            let largest = Bytes::from(vec![0xA5; limits.max_policy_len() as usize]);
            let frame =
                Frame::Policies { request_id: u64::MAX, policies: vec![largest.clone(), largest.clone()] };
            let len = frame.to_vec().unwrap().len() - 4;
            assert!(len <= max_frame_len as usize, "{len} > {max_frame_len}");
            let put = Frame::PutPolicy { request_id: u64::MAX, policy: largest };
            assert!(put.to_vec().unwrap().len() - 4 <= max_frame_len as usize);
        }
    }

    #[test]
    fn names_are_distinct() {
        let frames = [
            Frame::PutPolicy { request_id: 1, policy: Bytes::new() },
            Frame::PolicyStored { request_id: 1 },
            Frame::GetPolicies { request_id: 1, topic: Topic::new("a").unwrap() },
            Frame::Policies { request_id: 1, policies: Vec::new() },
            Frame::GetPolicyHistory { request_id: 1, topic: Topic::new("a").unwrap(), before: None, max: 1 },
            Frame::HeadOfChain {
                request_id: 1,
                topic: Topic::new("a").unwrap(),
                publisher: crate::SigningKey::from_bytes(&[1; 32]).public_key(),
                chain: ChainId([1; 16]),
            },
            Frame::Ack { subscription: 1, next_offset: Offset(1) },
            Frame::Lost {
                subscription: 1,
                offset: Offset(0),
                count: 1,
                batch: None,
                reason: ErrorCode::DATA_LOST,
            },
        ];
        let names: std::collections::HashSet<_> = frames.iter().map(Frame::name).collect();
        assert_eq!(names.len(), frames.len());
    }

    #[test]
    fn the_sliced_variants_have_the_indexes_the_decoder_expects() {
        let index = |f: Frame| f.to_vec().unwrap()[FRAME_HEADER_LEN];
        assert_eq!(u32::from(index(Frame::Publish { request_id: 1, batch: Bytes::new() })), PUBLISH);
        let deliver = Frame::Deliver { subscription: 1, offset: Offset(1), batch: Bytes::new() };
        assert_eq!(u32::from(index(deliver)), DELIVER);
        assert_eq!(u32::from(index(Frame::PutPolicy { request_id: 1, policy: Bytes::new() })), PUT_POLICY);
        assert_eq!(u32::from(index(Frame::Policies { request_id: 1, policies: Vec::new() })), POLICIES);
    }

    #[test]
    fn decode_bytes_slices_the_batch_out_of_the_frame() {
        let batch = Bytes::from(vec![0xA5; 3000]);
        let raw = Bytes::from(
            Frame::Deliver { subscription: 7, offset: Offset(9), batch: batch.clone() }.to_vec().unwrap(),
        );
        let Frame::Deliver { subscription, offset, batch: got } = Frame::decode_bytes(raw.clone()).unwrap()
        else {
            panic!("not a Deliver");
        };
        assert_eq!((subscription, offset, &got), (7, Offset(9), &batch));
        let within = raw.as_ptr_range();
        assert!(
            within.contains(&got.as_ptr()) && got.as_ptr_range().end == within.end,
            "the batch was copied"
        );
    }

    #[test]
    fn decode_bytes_refuses_what_decode_refuses() {
        let mut f = Frame::Publish { request_id: 1, batch: Bytes::from_static(b"abc") }.to_vec().unwrap();
        f.push(0);
        let len = (f.len() - 4) as u32;
        f[..4].copy_from_slice(&len.to_be_bytes());
        assert_eq!(
            Frame::decode_bytes(Bytes::from(f.clone())),
            Err(Error::Malformed("trailing bytes in frame"))
        );
        assert_eq!(Frame::decode(&f), Err(Error::Malformed("trailing bytes in frame")));
        // A batch length past the end of the frame.
        let cut = Bytes::from_static(&[0, 0, 0, 5, 1, 0, 1, 9, 1]);
        assert_eq!(Frame::decode_bytes(cut.clone()), Frame::decode(&cut));
        assert_eq!(Frame::decode_bytes(cut), Err(Error::Malformed("frame body")));
        assert_eq!(
            Frame::decode_bytes(Bytes::from_static(&[0, 0, 0])),
            Err(Error::Truncated("frame length"))
        );
    }

    #[test]
    fn encode_split_is_encode_in_two_parts_at_every_length_boundary() {
        for len in [1usize, 127, 128, 16_383, 16_384, 2_097_151, 2_097_152] {
            let batch = Bytes::from(vec![3u8; len]);
            for frame in [
                Frame::Publish { request_id: u64::MAX, batch: batch.clone() },
                Frame::Deliver { subscription: 300, offset: Offset(1 << 40), batch: batch.clone() },
                Frame::PutPolicy { request_id: 0, policy: batch.clone() },
            ] {
                let (head, tail) = frame.encode_split().unwrap();
                assert_eq!(tail.as_ptr(), batch.as_ptr(), "the batch was copied");
                assert!(head.len() < 32, "{} head bytes", head.len());
                assert_eq!(
                    [&head[..], &tail[..]].concat(),
                    frame.to_vec().unwrap(),
                    "{} of {len}",
                    frame.name()
                );
            }
        }
        let ack = Frame::Ack { subscription: 3, next_offset: Offset(9) };
        let (head, tail) = ack.encode_split().unwrap();
        assert_eq!((head.to_vec(), tail.len()), (ack.to_vec().unwrap(), 0));
    }

    #[test]
    fn decode_validates_topic_names() {
        // A Subscribe whose topic string breaks the naming rules is a malformed frame.
        let mut body = vec![FRAME_VERSION];
        body.extend(postcard::to_allocvec(&(2u8, 7u64, "a..b", 0u8, None::<String>)).unwrap());
        assert_eq!(Frame::decode_body(&body), Err(Error::Malformed("frame body")));
    }
}

#[cfg(test)]
mod decode_bytes_tests {
    use super::*;

    /// One frame of every variant, with byte fields where the variant has them.
    fn every_variant() -> Vec<Frame> {
        let topic = Topic::new("demo.chat").unwrap();
        let key = crate::SigningKey::from_bytes(&[7; 32]).public_key();
        let blob = |n: u8| Bytes::from(vec![n; 40 + usize::from(n)]);
        vec![
            Frame::Publish { request_id: 1, batch: blob(1) },
            Frame::Published { request_id: 1, first_offset: Offset(1000), count: 3 },
            Frame::Subscribe {
                request_id: 2,
                topic: topic.clone(),
                from: StartAt::Latest,
                durable: Some("d".into()),
            },
            Frame::Subscribed { request_id: 2, subscription: 5, start_offset: Offset(7) },
            Frame::Deliver { subscription: 5, offset: Offset(1000), batch: blob(2) },
            Frame::Ack { subscription: 5, next_offset: Offset(1001) },
            Frame::Unsubscribe { subscription: 5 },
            Frame::Error { request_id: None, code: ErrorCode::NOT_AUTHORIZED, message: "no".into() },
            Frame::Head { request_id: 3, topic: topic.clone(), publisher: key },
            Frame::HeadIs { request_id: 3, head: ChainHead::GENESIS },
            Frame::PutPolicy { request_id: 4, policy: blob(3) },
            Frame::PolicyStored { request_id: 4 },
            Frame::GetPolicies { request_id: 5, topic },
            Frame::Policies { request_id: 5, policies: vec![blob(4), Bytes::new(), blob(5)] },
            Frame::Lost {
                subscription: 5,
                offset: Offset(9),
                count: 2,
                batch: Some(LostBatch {
                    publisher: key,
                    chain: ChainId([7; 16]),
                    first_seq: 4,
                    digest: Digest([1; 32]),
                }),
                reason: ErrorCode::DATA_LOST,
            },
            Frame::GetPolicyHistory {
                request_id: 6,
                topic: Topic::new("demo.chat").unwrap(),
                before: Some(crate::Epoch(9)),
                max: 64,
            },
            Frame::HeadOfChain {
                request_id: 7,
                topic: Topic::new("demo.chat").unwrap(),
                publisher: key,
                chain: ChainId([9; 16]),
            },
            Frame::Admin { request_id: 8, query: AdminQuery::Stats },
            Frame::AdminAnswer {
                request_id: 8,
                answer: AdminAnswer::Stats(crate::admin::BrokerStats {
                    version: "0.1.0".into(),
                    uptime_ms: 5,
                    ..Default::default()
                }),
            },
            Frame::SubscribeShared {
                request_id: 6,
                topic: Topic::new("demo.chat").unwrap(),
                from: StartAt::Earliest,
                group: "workers".into(),
            },
            Frame::Rewind { subscription: 5, offset: Offset(900) },
            Frame::Rewound { subscription: 5 },
        ]
    }

    #[test]
    fn every_variant_decodes_as_decode_does() {
        let frames = every_variant();
        // Every variant is listed: a variant appended to `Frame` fails to compile here until it is added to
        // the list (and, if it has a byte field, to `decode_body_bytes`).
        let listed = |f: &Frame| match f {
            Frame::Publish { .. } => 0,
            Frame::Published { .. } => 1,
            Frame::Subscribe { .. } => 2,
            Frame::Subscribed { .. } => 3,
            Frame::Deliver { .. } => 4,
            Frame::Ack { .. } => 5,
            Frame::Unsubscribe { .. } => 6,
            Frame::Error { .. } => 7,
            Frame::Head { .. } => 8,
            Frame::HeadIs { .. } => 9,
            Frame::PutPolicy { .. } => 10,
            Frame::PolicyStored { .. } => 11,
            Frame::GetPolicies { .. } => 12,
            Frame::Policies { .. } => 13,
            Frame::Lost { .. } => 14,
            Frame::GetPolicyHistory { .. } => 15,
            Frame::HeadOfChain { .. } => 16,
            Frame::Admin { .. } => 17,
            Frame::AdminAnswer { .. } => 18,
            Frame::SubscribeShared { .. } => 19,
            Frame::Rewind { .. } => 20,
            Frame::Rewound { .. } => 21,
        };
        assert_eq!(frames.iter().map(listed).collect::<Vec<_>>(), (0..22).collect::<Vec<_>>());
        for frame in frames {
            let bytes = Bytes::from(frame.to_vec().unwrap());
            assert_eq!(Frame::decode_bytes(bytes.clone()).unwrap(), Frame::decode(&bytes).unwrap());
            assert_eq!(Frame::decode_bytes(bytes).unwrap(), frame);
        }
    }

    #[test]
    fn byte_fields_share_the_frame_buffer() {
        let batch = Bytes::from(vec![9u8; 1000]);
        let bytes =
            Bytes::from(Frame::Deliver { subscription: 1, offset: Offset(0), batch }.to_vec().unwrap());
        let range = bytes.as_ptr_range();
        match Frame::decode_bytes(bytes.clone()).unwrap() {
            Frame::Deliver { batch, .. } => {
                assert_eq!(batch.len(), 1000);
                assert!(range.contains(&batch.as_ptr()), "the batch is a slice of the frame, not a copy");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn bad_frames_fail_as_decode_fails() {
        let good = Frame::Publish { request_id: 1, batch: Bytes::from_static(b"abc") }.to_vec().unwrap();
        let mut wrong_version = good.clone();
        wrong_version[4] = 2;
        let mut trailing = good.clone();
        trailing.push(0);
        trailing[..4]
            .copy_from_slice(&(u32::from_be_bytes([good[0], good[1], good[2], good[3]]) + 1).to_be_bytes());
        let mut bad_variant = good.clone();
        bad_variant[5] = 99;
        for bad in
            [&good[..3], &good[..good.len() - 1], &[0, 0, 0, 0][..], &wrong_version, &trailing, &bad_variant]
        {
            let bytes = Bytes::copy_from_slice(bad);
            assert_eq!(Frame::decode_bytes(bytes.clone()), Frame::decode(&bytes), "{bad:?}");
            assert!(Frame::decode_bytes(bytes).is_err());
        }
    }
}
