//! The broker's decision for a verified publish: does the batch continue its chain as stored, is it a
//! retry of a batch already stored, or does it conflict?
//!
//! A chain is a (topic, publisher key, [`ChainId`](sealpost_protocol::ChainId)): each publisher instance
//! has its own, so instances of one key (replicas of one service) never conflict with each other. The
//! caller looks `head` and `same_seq` up under the batch's own chain id, so "publisher" below means
//! "that chain of the publisher".
//!
//! A pure function of what the store says about the publisher on the topic and of the signed header, so it
//! is tested without a store. The [`writer`](super::group) calls it for every batch, in order, with the
//! chain as it stands after every earlier batch of the same group.
//!
//! # Rules
//!
//! - A publisher's **first** batch on a topic must start at sequence 1 and name [`Digest::ZERO`] as its
//!   previous digest.
//! - A **later** batch must start at `head.first_seq + head.count` and name `head.digest`, where `head` is
//!   the publisher's last stored batch.
//! - A batch with the same first sequence number **and** the same digest as a stored batch is a **retry**
//!   (a publisher that lost the acknowledgement): it is answered with the stored batch's offsets and is not
//!   stored again. The digest covers the whole header and every ciphertext, so equal digests mean the very
//!   same batch.
//! - Anything else (a gap, an old sequence number with other contents, the right sequence number with
//!   another previous digest) is a [`Error::SequenceConflict`]: the broker never stores a fork or a hole in
//!   a publisher's chain, so a subscriber reading from the beginning sees each chain whole.
//!
//! The sequencer does not check the signature (the batch is already verified), nor whether the signer may
//! publish (the ACL and the certificate binding do that).

use sealpost_protocol::{BatchHeader, Digest};

use crate::store::{chain_head, PublisherRecord};
use crate::{Error, Result};

/// What to do with a verified batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Store it: it continues the publisher's chain.
    Append,
    /// Do not store it: it is a retry of this stored batch, whose offsets are the answer.
    Duplicate(PublisherRecord),
}

/// Whether the caller must look up a stored record with the batch's first sequence number before calling
/// [`decide`]: only a batch that starts before the chain's next sequence number can be a retry.
pub fn may_be_retry(head: Option<&PublisherRecord>, header: &BatchHeader) -> bool {
    header.first_seq < chain_head(head).next_seq
}

/// Decides what to do with a verified batch with `header` and `digest`.
///
/// `head` is the publisher's last stored batch on the topic, if any; `same_seq` is the publisher's stored
/// batch on the topic that starts at `header.first_seq`, if any (it only matters when [`may_be_retry`]).
pub fn decide(
    head: Option<&PublisherRecord>,
    same_seq: Option<&PublisherRecord>,
    header: &BatchHeader,
    digest: Digest,
) -> Result<Decision> {
    if let Some(stored) = same_seq {
        if stored.first_seq == header.first_seq && stored.digest == digest {
            return Ok(Decision::Duplicate(*stored));
        }
    }
    let expected = chain_head(head);
    if header.first_seq == expected.next_seq && header.prev_digest == expected.prev_digest {
        Ok(Decision::Append)
    } else {
        Err(Error::SequenceConflict { expected: expected.next_seq, got: header.first_seq })
    }
}

#[cfg(test)]
mod tests {
    use sealpost_protocol::{ChainId, Epoch, Offset, SigningKey, Timestamp, Topic};

    use super::*;

    fn header(first_seq: u64, count: u32, prev_digest: Digest) -> BatchHeader {
        header_on(ChainId([1; 16]), first_seq, count, prev_digest)
    }

    fn header_on(chain: ChainId, first_seq: u64, count: u32, prev_digest: Digest) -> BatchHeader {
        BatchHeader {
            topic: Topic::new("demo.chat").unwrap(),
            epoch: Epoch(1),
            publisher: SigningKey::from_bytes(&[1; 32]).public_key(),
            chain,
            first_seq,
            count,
            prev_digest,
            created_at: Timestamp(0),
            with_headers: false,
        }
    }

    fn record(first_seq: u64, count: u32, offset: u64, digest: u8) -> PublisherRecord {
        PublisherRecord { first_seq, count, offset: Offset(offset), digest: Digest([digest; 32]) }
    }

    fn assert_conflict(result: Result<Decision>, expected: u64, got: u64) {
        match result {
            Err(Error::SequenceConflict { expected: e, got: g }) => assert_eq!((e, g), (expected, got)),
            other => panic!("expected a sequence conflict ({expected}, {got}), got {other:?}"),
        }
    }

    #[test]
    fn first_batch_at_seq_one_with_zero_prev_digest_is_appended() {
        let d = decide(None, None, &header(1, 3, Digest::ZERO), Digest([9; 32])).unwrap();
        assert_eq!(d, Decision::Append);
    }

    #[test]
    fn first_batch_must_start_at_one() {
        assert_conflict(decide(None, None, &header(2, 1, Digest::ZERO), Digest([9; 32])), 1, 2);
    }

    #[test]
    fn first_batch_must_name_the_zero_digest() {
        assert_conflict(decide(None, None, &header(1, 1, Digest([5; 32])), Digest([9; 32])), 1, 1);
    }

    #[test]
    fn batch_continuing_the_head_is_appended() {
        let head = record(1, 3, 10, 7);
        let d = decide(Some(&head), None, &header(4, 2, Digest([7; 32])), Digest([8; 32])).unwrap();
        assert_eq!(d, Decision::Append);
    }

    #[test]
    fn batch_after_a_gap_conflicts() {
        let head = record(1, 3, 10, 7);
        assert_conflict(decide(Some(&head), None, &header(5, 1, Digest([7; 32])), Digest([8; 32])), 4, 5);
    }

    #[test]
    fn batch_naming_another_prev_digest_conflicts() {
        let head = record(1, 3, 10, 7);
        assert_conflict(decide(Some(&head), None, &header(4, 1, Digest([6; 32])), Digest([8; 32])), 4, 4);
    }

    #[test]
    fn retry_of_the_head_is_a_duplicate_with_its_offsets() {
        let head = record(4, 2, 10, 7);
        let h = header(4, 2, Digest([3; 32]));
        assert!(may_be_retry(Some(&head), &h));
        assert_eq!(decide(Some(&head), Some(&head), &h, Digest([7; 32])).unwrap(), Decision::Duplicate(head));
    }

    #[test]
    fn retry_of_an_older_batch_is_a_duplicate() {
        let head = record(10, 2, 50, 7);
        let old = record(1, 3, 0, 4);
        let d = decide(Some(&head), Some(&old), &header(1, 3, Digest::ZERO), Digest([4; 32])).unwrap();
        assert_eq!(d, Decision::Duplicate(old));
    }

    #[test]
    fn old_sequence_number_with_other_contents_conflicts() {
        let head = record(4, 2, 10, 7);
        let old = record(1, 3, 0, 4);
        assert_conflict(decide(Some(&head), Some(&old), &header(1, 3, Digest::ZERO), Digest([5; 32])), 6, 1);
    }

    #[test]
    fn old_sequence_number_without_a_stored_batch_conflicts() {
        // E.g. a batch that starts inside a stored batch's range.
        let head = record(1, 5, 0, 7);
        let h = header(3, 1, Digest::ZERO);
        assert!(may_be_retry(Some(&head), &h));
        assert_conflict(decide(Some(&head), None, &h, Digest([5; 32])), 6, 3);
    }

    #[test]
    fn only_batches_before_the_chain_end_may_be_retries() {
        assert!(!may_be_retry(None, &header(1, 1, Digest::ZERO)));
        let head = record(1, 3, 0, 7);
        assert!(!may_be_retry(Some(&head), &header(4, 1, Digest([7; 32]))));
        assert!(may_be_retry(Some(&head), &header(3, 1, Digest([7; 32]))));
        assert_eq!(chain_head(Some(&head)).next_seq, 4);
        assert_eq!(chain_head(None).next_seq, 1);
    }

    #[test]
    fn two_chains_of_one_key_do_not_conflict() {
        // The writer keeps a head per (topic, publisher, chain); two instances of one key both start at
        // genesis and go on from their own heads.
        let (a, b) = (ChainId([1; 16]), ChainId([2; 16]));
        assert_eq!(
            decide(None, None, &header_on(a, 1, 2, Digest::ZERO), Digest([7; 32])).unwrap(),
            Decision::Append
        );
        let head_a = record(1, 2, 0, 7);
        // b's genesis batch, with a's head stored: b has no head of its own.
        assert_eq!(
            decide(None, None, &header_on(b, 1, 1, Digest::ZERO), Digest([8; 32])).unwrap(),
            Decision::Append
        );
        let head_b = record(1, 1, 2, 8);
        assert_eq!(
            decide(Some(&head_a), None, &header_on(a, 3, 1, Digest([7; 32])), Digest([9; 32])).unwrap(),
            Decision::Append
        );
        assert_eq!(
            decide(Some(&head_b), None, &header_on(b, 2, 1, Digest([8; 32])), Digest([6; 32])).unwrap(),
            Decision::Append
        );
    }

    #[test]
    fn a_retry_is_a_duplicate_within_its_chain_only() {
        let (a, b) = (ChainId([1; 16]), ChainId([2; 16]));
        let stored_a = record(1, 2, 0, 7);
        // Chain a retries its stored batch: a duplicate with its offsets.
        let retry = header_on(a, 1, 2, Digest::ZERO);
        assert!(may_be_retry(Some(&stored_a), &retry));
        assert_eq!(
            decide(Some(&stored_a), Some(&stored_a), &retry, Digest([7; 32])).unwrap(),
            Decision::Duplicate(stored_a)
        );
        // Chain b's batch at the same sequence number is looked up under chain b, where nothing is stored:
        // it is b's genesis batch, not a retry of a's, even with the same digest.
        let same_seq_on_b = header_on(b, 1, 2, Digest::ZERO);
        assert!(!may_be_retry(None, &same_seq_on_b));
        assert_eq!(decide(None, None, &same_seq_on_b, Digest([7; 32])).unwrap(), Decision::Append);
        // And once b has a head, a's stored batch is not b's.
        let head_b = record(1, 2, 2, 5);
        assert_conflict(
            decide(Some(&head_b), None, &header_on(b, 1, 2, Digest::ZERO), Digest([7; 32])),
            3,
            1,
        );
    }
}
