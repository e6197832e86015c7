//! The reader: a subscription's decision, for each delivered batch, of what the application sees.
//!
//! For every `Deliver { offset, batch }` the reader, in order:
//!
//! 1. drops the batch if all of its messages lie below the next expected offset (a batch delivered again
//!    after a reconnect, or a durable subscription resuming from an older committed offset);
//! 2. opens it ([`sealpost_protocol::open`]: size and structure, signature, topic, epoch key, every
//!    record), and on failure yields one [`Error::Integrity`] item and nothing else;
//! 3. checks that its signer is trusted to publish on the topic, else yields one
//!    [`Error::UntrustedPublisher`] item and nothing else;
//! 4. feeds its header and digest to the [`ChainVerifier`]: a gap yields an [`Error::Integrity`] item
//!    followed by the batch's messages (they are authentic); a replay, reorder or fork yields one
//!    [`Error::Integrity`] item and nothing else;
//! 5. yields its messages at or above the next expected offset, and moves that offset past the batch.
//!
//! An integrity failure is never a message, and every message is yielded once, in offset order. Sans-IO:
//! the subscription task feeds it frames.

use bytes::Bytes;
use sealpost_protocol::{open, ChainStart, ChainVerifier, Limits, SealedBatch, Topic};

use crate::error::{Error, Result};
use crate::keyring::TopicKeys;
use crate::message::Message;

/// The verification state of one subscription; it outlives reconnections.
pub(crate) struct Reader {
    topic: Topic,
    keys: TopicKeys,
    chain: ChainVerifier,
    next_offset: u64,
    limits: Limits,
}

impl Reader {
    /// A reader of `topic` that yields messages from `next_offset` on, checking chains as `start` says.
    pub(crate) fn new(
        topic: Topic,
        keys: TopicKeys,
        start: ChainStart,
        next_offset: u64,
        limits: Limits,
    ) -> Self {
        Self { topic, keys, chain: ChainVerifier::new(start), next_offset, limits }
    }

    /// The offset of the next message to yield: where to resubscribe after a reconnect.
    pub(crate) fn next_offset(&self) -> u64 {
        self.next_offset
    }

    /// What the application sees of the batch delivered at `offset`, in order.
    pub(crate) fn deliver(&mut self, offset: u64, batch: Bytes) -> Vec<Result<Message>> {
        // The header's count is read before verification only to recognise a batch seen before; a broker
        // that lies about it can make us skip what it could as well withhold, which the chain reports.
        let count = SealedBatch::decode(batch.clone(), &self.limits).map(|b| u64::from(b.header().count));
        let end = offset.saturating_add(*count.as_ref().unwrap_or(&1));
        if end <= self.next_offset {
            tracing::debug!(topic = %self.topic, offset, "dropping a batch delivered before");
            return Vec::new();
        }
        let items = self.check(offset, batch);
        self.next_offset = end;
        items
    }

    fn check(&mut self, offset: u64, batch: Bytes) -> Vec<Result<Message>> {
        let opened = match open(batch, &self.topic, &self.keys, &self.limits) {
            Ok(opened) => opened,
            Err(check) => return vec![Err(self.integrity(offset, None, check))],
        };
        let header = &opened.header;
        let Some(principal) = self.keys.trusted_publisher(&header.publisher) else {
            return vec![Err(Error::UntrustedPublisher {
                topic: self.topic.clone(),
                offset,
                publisher: Box::new(header.publisher),
            })];
        };
        let principal = principal.to_owned();
        let mut items = Vec::with_capacity(opened.messages.len() + 1);
        match self.chain.admit(header, opened.digest) {
            Ok(()) => {}
            Err(gap @ sealpost_protocol::Error::Gap { .. }) => {
                items.push(Err(self.integrity(offset, Some(header.publisher.key_id()), gap)));
            }
            Err(check) => return vec![Err(self.integrity(offset, Some(header.publisher.key_id()), check))],
        }
        for ((i, payload), seq) in opened.messages.into_iter().enumerate().zip(header.first_seq..) {
            let at = offset.saturating_add(i as u64);
            if at < self.next_offset {
                continue;
            }
            items.push(Ok(Message {
                payload,
                publisher: principal.clone(),
                publisher_key: header.publisher,
                topic: self.topic.clone(),
                offset: at,
                seq,
                timestamp: header.created_at,
            }));
        }
        items
    }

    fn integrity(
        &self,
        offset: u64,
        publisher: Option<sealpost_protocol::KeyId>,
        check: sealpost_protocol::Error,
    ) -> Error {
        tracing::warn!(topic = %self.topic, offset, %check, "integrity check failed");
        Error::Integrity { topic: self.topic.clone(), offset, publisher, check }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use sealpost_protocol::{
        seal, ChainHead, ContentKey, Digest, Epoch, SealParams, SigningKey, Timestamp, VerifiedBatch,
    };

    use super::*;

    fn topic() -> Topic {
        Topic::new("demo.x").unwrap()
    }

    fn alice() -> SigningKey {
        SigningKey::from_bytes(&[0xA1; 32])
    }

    fn mallory() -> SigningKey {
        SigningKey::from_bytes(&[0x66; 32])
    }

    fn keys() -> TopicKeys {
        let mut content = BTreeMap::new();
        content.insert(Epoch(1), ContentKey::from_bytes(&[0xC0; 32]));
        TopicKeys::new(content, vec![(alice().public_key(), "alice".into())])
    }

    fn sealed_by(
        signer: &SigningKey,
        topic: Topic,
        epoch: u64,
        head: ChainHead,
        msgs: &[&str],
    ) -> VerifiedBatch {
        let params = SealParams {
            topic,
            epoch: Epoch(epoch),
            first_seq: head.next_seq,
            prev_digest: head.prev_digest,
            created_at: Timestamp(1_763_856_000_000),
        };
        let key = ContentKey::from_bytes(&[0xC0; 32]);
        seal(signer, &key, params, msgs, &Limits::default(), &mut rand::rngs::OsRng).unwrap()
    }

    /// A chain of alice's batches of the given sizes, with their offsets when stored back to back from 0.
    fn chain(sizes: &[usize]) -> Vec<(u64, Bytes)> {
        let mut head = ChainHead::GENESIS;
        let mut offset = 0;
        let mut out = Vec::new();
        for (b, &n) in sizes.iter().enumerate() {
            let msgs: Vec<String> = (0..n).map(|i| format!("b{b}m{i}")).collect();
            let refs: Vec<&str> = msgs.iter().map(String::as_str).collect();
            let batch = sealed_by(&alice(), topic(), 1, head, &refs);
            head = ChainHead::after(&batch);
            out.push((offset, batch.as_bytes().clone()));
            offset += n as u64;
        }
        out
    }

    fn reader(start: ChainStart, next: u64) -> Reader {
        Reader::new(topic(), keys(), start, next, Limits::default())
    }

    /// Payloads and offsets of the messages, and the integrity checks, in order.
    fn summary(items: Vec<Result<Message>>) -> Vec<String> {
        items
            .into_iter()
            .map(|i| match i {
                Ok(m) => format!("{}@{}", String::from_utf8_lossy(&m.payload), m.offset),
                Err(Error::Integrity { check, .. }) => format!("integrity: {check:?}"),
                Err(e) => format!("error: {e}"),
            })
            .collect()
    }

    #[test]
    fn in_order_delivery_yields_every_message_with_its_metadata() {
        let batches = chain(&[2, 1]);
        let mut r = reader(ChainStart::Genesis, 0);
        let items = r.deliver(batches[0].0, batches[0].1.clone());
        let first = items[0].as_ref().unwrap();
        assert_eq!(first.publisher, "alice");
        assert_eq!(first.publisher_key, alice().public_key());
        assert_eq!((first.offset, first.seq), (0, 1));
        assert_eq!(first.timestamp, Timestamp(1_763_856_000_000));
        assert_eq!(first.topic, topic());
        assert_eq!(summary(items), ["b0m0@0", "b0m1@1"]);
        assert_eq!(summary(r.deliver(batches[1].0, batches[1].1.clone())), ["b1m0@2"]);
        assert_eq!(r.next_offset(), 3);
    }

    #[test]
    fn subscribing_inside_a_batch_skips_the_messages_below_the_requested_offset() {
        let batches = chain(&[3, 2]);
        let mut r = reader(ChainStart::FirstSeen, 2);
        assert_eq!(summary(r.deliver(batches[0].0, batches[0].1.clone())), ["b0m2@2"]);
        assert_eq!(summary(r.deliver(batches[1].0, batches[1].1.clone())), ["b1m0@3", "b1m1@4"]);
    }

    #[test]
    fn a_batch_delivered_again_after_a_reconnect_is_dropped_silently() {
        let batches = chain(&[2, 2, 2]);
        let mut r = reader(ChainStart::Genesis, 0);
        r.deliver(batches[0].0, batches[0].1.clone());
        r.deliver(batches[1].0, batches[1].1.clone());
        // A durable subscription resumes from an older committed offset: both batches come again.
        assert!(r.deliver(batches[0].0, batches[0].1.clone()).is_empty());
        assert!(r.deliver(batches[1].0, batches[1].1.clone()).is_empty());
        assert_eq!(summary(r.deliver(batches[2].0, batches[2].1.clone())), ["b2m0@4", "b2m1@5"]);
    }

    #[test]
    fn a_gap_is_reported_then_the_authentic_batch_is_delivered() {
        let batches = chain(&[1, 1, 1]);
        let mut r = reader(ChainStart::Genesis, 0);
        r.deliver(batches[0].0, batches[0].1.clone());
        // The broker withholds the second batch.
        let items = r.deliver(batches[2].0, batches[2].1.clone());
        assert!(items[0].as_ref().unwrap_err().is_integrity());
        assert_eq!(summary(items), ["integrity: Gap { expected: 2, got: 3 }", "b2m0@2"]);
    }

    #[test]
    fn reading_from_the_beginning_reports_a_deleted_prefix() {
        let batches = chain(&[1, 1]);
        let mut r = reader(ChainStart::Genesis, 0);
        let items = r.deliver(0, batches[1].1.clone());
        assert_eq!(summary(items), ["integrity: Gap { expected: 1, got: 2 }", "b1m0@0"]);
        // From the middle, the first batch seen starts the chain.
        let mut r = reader(ChainStart::FirstSeen, 1);
        assert_eq!(summary(r.deliver(batches[1].0, batches[1].1.clone())), ["b1m0@1"]);
    }

    #[test]
    fn a_replay_at_a_new_offset_is_one_error_and_no_message() {
        let batches = chain(&[2, 1]);
        let mut r = reader(ChainStart::Genesis, 0);
        r.deliver(batches[0].0, batches[0].1.clone());
        r.deliver(batches[1].0, batches[1].1.clone());
        let items = r.deliver(3, batches[1].1.clone());
        assert_eq!(summary(items), ["integrity: Replay { seq: 3 }"]);
        assert_eq!(r.next_offset(), 4);
    }

    #[test]
    fn a_reorder_is_one_error_and_no_message() {
        let batches = chain(&[1, 1, 1]);
        let mut r = reader(ChainStart::Genesis, 0);
        r.deliver(0, batches[0].1.clone());
        r.deliver(1, batches[2].1.clone()); // gap
        let items = r.deliver(2, batches[1].1.clone());
        assert_eq!(summary(items), ["integrity: Reorder { expected: 4, got: 2 }"]);
    }

    #[test]
    fn a_fork_is_one_error_and_no_message() {
        let batches = chain(&[1]);
        let mut r = reader(ChainStart::Genesis, 0);
        r.deliver(0, batches[0].1.clone());
        // Sequence 2, but not after the batch delivered: another history.
        let other =
            sealed_by(&alice(), topic(), 1, ChainHead { next_seq: 2, prev_digest: Digest([9; 32]) }, &["x"]);
        let items = r.deliver(1, other.as_bytes().clone());
        assert_eq!(summary(items), ["integrity: Fork { seq: 2 }"]);
    }

    #[test]
    fn a_tampered_batch_is_one_error_and_no_message() {
        let batches = chain(&[3]);
        let mut bytes = batches[0].1.to_vec();
        let at = bytes.len() - 80; // inside the last record's ciphertext
        bytes[at] ^= 1;
        let mut r = reader(ChainStart::Genesis, 0);
        let items = r.deliver(0, bytes.into());
        assert_eq!(summary(items), ["integrity: BadSignature"]);
        // The offsets are consumed: the honest batch delivered again later counts as seen.
        assert_eq!(r.next_offset(), 3);
    }

    #[test]
    fn garbage_is_one_error_and_no_message() {
        let mut r = reader(ChainStart::Genesis, 0);
        let items = r.deliver(0, Bytes::from_static(b"\x01\x00"));
        assert_eq!(items.len(), 1);
        assert!(items[0].as_ref().unwrap_err().is_integrity());
        assert_eq!(r.next_offset(), 1);
    }

    #[test]
    fn a_batch_from_an_untrusted_publisher_is_one_error_and_no_message() {
        let batch = sealed_by(&mallory(), topic(), 1, ChainHead::GENESIS, &["evil"]);
        let mut r = reader(ChainStart::Genesis, 0);
        let items = r.deliver(0, batch.as_bytes().clone());
        assert_eq!(items.len(), 1);
        assert!(matches!(
            &items[0],
            Err(Error::UntrustedPublisher { publisher, offset: 0, .. }) if **publisher == mallory().public_key()
        ));
        // Mallory's batch did not start alice's chain: alice's genesis batch is still fine.
        let ok = chain(&[1]);
        assert_eq!(summary(r.deliver(1, ok[0].1.clone())), ["b0m0@1"]);
    }

    #[test]
    fn a_batch_for_another_topic_or_epoch_is_one_error() {
        let mut r = reader(ChainStart::Genesis, 0);
        let other = sealed_by(&alice(), Topic::new("demo.y").unwrap(), 1, ChainHead::GENESIS, &["x"]);
        assert_eq!(
            summary(r.deliver(0, other.as_bytes().clone())),
            ["integrity: WrongTopic { expected: Topic(\"demo.x\"), got: Topic(\"demo.y\") }"]
        );
        let later = sealed_by(&alice(), topic(), 2, ChainHead::GENESIS, &["x"]);
        assert_eq!(summary(r.deliver(1, later.as_bytes().clone())), ["integrity: UnknownEpoch(Epoch(2))"]);
    }
}
