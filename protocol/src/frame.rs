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

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::chain::ChainHead;
use crate::code::ErrorCode;
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
    /// storage failed a checksum there); the subscription goes on with the offsets after them. Sent in
    /// offset order, where their `Deliver` would have been.
    Lost {
        /// The subscription it is for.
        subscription: SubscriptionId,
        /// The first lost offset.
        offset: Offset,
        /// How many offsets are lost, at least 1.
        count: u64,
        /// The one batch that held them, when the broker's index knew it.
        batch: Option<LostBatch>,
        /// Why: [`ErrorCode::DATA_LOST`] (storage corruption).
        reason: ErrorCode,
    },
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
    fn decode_validates_topic_names() {
        // A Subscribe whose topic string breaks the naming rules is a malformed frame.
        let mut body = vec![FRAME_VERSION];
        body.extend(postcard::to_allocvec(&(2u8, 7u64, "a..b", 0u8, None::<String>)).unwrap());
        assert_eq!(Frame::decode_body(&body), Err(Error::Malformed("frame body")));
    }
}

impl Frame {
    /// Decodes one whole frame, length prefix included, like [`decode`](Self::decode), but takes its bytes
    /// by value: the byte fields (the batch of `Publish` and `Deliver`, the policy of `PutPolicy`, the
    /// policies of `Policies`) come out as slices of `frame`, sharing its buffer, instead of copies. A reader
    /// that holds a whole frame as [`Bytes`] (as [`FrameBuffer`](crate::FrameBuffer) hands it out) decodes
    /// a 4 MiB batch without copying it again. Same checks, same errors, same result as `decode`.
    pub fn decode_bytes(frame: Bytes) -> Result<Frame> {
        let Some((prefix, rest)) = frame.split_first_chunk::<4>() else {
            return Err(Error::Truncated("frame length"));
        };
        if u32::from_be_bytes(*prefix) as usize != rest.len() {
            return Err(Error::Malformed("frame length does not match its bytes"));
        }
        let Some((&version, body)) = rest.split_first() else {
            return Err(Error::Truncated("frame version"));
        };
        if version != FRAME_VERSION {
            return Err(Error::UnsupportedVersion { what: "frame", version });
        }
        let (borrowed, rest): (BorrowedFrame<'_>, _) =
            postcard::take_from_bytes(body).map_err(|_| Error::Malformed("frame body"))?;
        if !rest.is_empty() {
            return Err(Error::Malformed("trailing bytes in frame"));
        }
        Ok(borrowed.into_frame(&frame))
    }
}

/// [`Frame`] with its byte fields borrowed from the buffer it is decoded from, for
/// [`Frame::decode_bytes`]. The same variants in the same order with the same fields (postcard encodes
/// variants by index and fields in order, so the two decode the same bytes alike; the tests check every
/// variant both ways).
#[derive(Deserialize)]
enum BorrowedFrame<'a> {
    Publish {
        request_id: RequestId,
        batch: &'a [u8],
    },
    Published {
        request_id: RequestId,
        first_offset: Offset,
        count: u32,
    },
    Subscribe {
        request_id: RequestId,
        topic: Topic,
        from: StartAt,
        durable: Option<String>,
    },
    Subscribed {
        request_id: RequestId,
        subscription: SubscriptionId,
        start_offset: Offset,
    },
    Deliver {
        subscription: SubscriptionId,
        offset: Offset,
        batch: &'a [u8],
    },
    Ack {
        subscription: SubscriptionId,
        next_offset: Offset,
    },
    Unsubscribe {
        subscription: SubscriptionId,
    },
    Error {
        request_id: Option<RequestId>,
        code: ErrorCode,
        message: String,
    },
    Head {
        request_id: RequestId,
        topic: Topic,
        publisher: PublicKey,
    },
    HeadIs {
        request_id: RequestId,
        head: ChainHead,
    },
    PutPolicy {
        request_id: RequestId,
        policy: &'a [u8],
    },
    PolicyStored {
        request_id: RequestId,
    },
    GetPolicies {
        request_id: RequestId,
        topic: Topic,
    },
    Policies {
        request_id: RequestId,
        #[serde(borrow)]
        policies: Vec<&'a [u8]>,
    },
    Lost {
        subscription: SubscriptionId,
        offset: Offset,
        count: u64,
        batch: Option<LostBatch>,
        reason: ErrorCode,
    },
}

impl BorrowedFrame<'_> {
    /// The frame, with each borrowed field as a slice of `whole`, the buffer it was borrowed from.
    fn into_frame(self, whole: &Bytes) -> Frame {
        let share = |part: &[u8]| share(whole, part);
        match self {
            Self::Publish { request_id, batch } => Frame::Publish { request_id, batch: share(batch) },
            Self::Published { request_id, first_offset, count } => {
                Frame::Published { request_id, first_offset, count }
            }
            Self::Subscribe { request_id, topic, from, durable } => {
                Frame::Subscribe { request_id, topic, from, durable }
            }
            Self::Subscribed { request_id, subscription, start_offset } => {
                Frame::Subscribed { request_id, subscription, start_offset }
            }
            Self::Deliver { subscription, offset, batch } => {
                Frame::Deliver { subscription, offset, batch: share(batch) }
            }
            Self::Ack { subscription, next_offset } => Frame::Ack { subscription, next_offset },
            Self::Unsubscribe { subscription } => Frame::Unsubscribe { subscription },
            Self::Error { request_id, code, message } => Frame::Error { request_id, code, message },
            Self::Head { request_id, topic, publisher } => Frame::Head { request_id, topic, publisher },
            Self::HeadIs { request_id, head } => Frame::HeadIs { request_id, head },
            Self::PutPolicy { request_id, policy } => Frame::PutPolicy { request_id, policy: share(policy) },
            Self::PolicyStored { request_id } => Frame::PolicyStored { request_id },
            Self::GetPolicies { request_id, topic } => Frame::GetPolicies { request_id, topic },
            Self::Policies { request_id, policies } => {
                Frame::Policies { request_id, policies: policies.into_iter().map(share).collect() }
            }
            Self::Lost { subscription, offset, count, batch, reason } => {
                Frame::Lost { subscription, offset, count, batch, reason }
            }
        }
    }
}

/// `part` as a slice of `whole`, sharing its buffer; a copy if `part` does not lie inside `whole` (which a
/// borrow from `whole` always does).
fn share(whole: &Bytes, part: &[u8]) -> Bytes {
    let start = (part.as_ptr() as usize).wrapping_sub(whole.as_ptr() as usize);
    match start.checked_add(part.len()) {
        Some(end) if start <= whole.len() && end <= whole.len() => whole.slice(start..end),
        _ => Bytes::copy_from_slice(part),
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
                batch: Some(LostBatch { publisher: key, first_seq: 4, digest: Digest([1; 32]) }),
                reason: ErrorCode::DATA_LOST,
            },
        ]
    }

    #[test]
    fn every_variant_decodes_as_decode_does() {
        let frames = every_variant();
        // Every variant is listed: a variant appended to `Frame` fails to compile here until it is added to
        // `BorrowedFrame` and to the list.
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
        };
        assert_eq!(frames.iter().map(listed).collect::<Vec<_>>(), (0..15).collect::<Vec<_>>());
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

    #[test]
    fn a_part_outside_the_whole_is_copied() {
        let whole = Bytes::from_static(b"0123456789");
        let inside = share(&whole, &whole[2..5]);
        assert_eq!(inside.as_ptr(), whole[2..].as_ptr());
        let other = [1u8, 2, 3];
        assert_eq!(share(&whole, &other), Bytes::from_static(&[1, 2, 3]));
    }
}
