//! The chain verifier: each way a broker can drop, replay or reorder batches is reported.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use sealpost_protocol::*;

fn admit(v: &mut ChainVerifier, b: &VerifiedBatch) -> Result<()> {
    v.admit(b.header(), b.digest())
}

#[test]
fn chain_admits_batches_in_order() {
    let mut v = ChainVerifier::new(ChainStart::Genesis);
    for b in chain(5, 3) {
        admit(&mut v, &b).unwrap();
    }
    let head = v.head(&topic("demo.chat"), &alice().public_key(), CHAIN).unwrap();
    assert_eq!(head.next_seq, 16);
}

#[test]
fn chain_reports_gap_then_continues_after_it() {
    let c = chain(4, 2);
    let mut v = ChainVerifier::new(ChainStart::Genesis);
    admit(&mut v, &c[0]).unwrap();
    assert_eq!(admit(&mut v, &c[2]), Err(Error::Gap { expected: 3, got: 5 }));
    // The chain moved past the authentic batch after the gap; the next one continues it.
    admit(&mut v, &c[3]).unwrap();
}

#[test]
fn chain_reports_missing_prefix_as_gap_from_genesis() {
    let c = chain(3, 1);
    let mut v = ChainVerifier::new(ChainStart::Genesis);
    assert_eq!(admit(&mut v, &c[1]), Err(Error::Gap { expected: 1, got: 2 }));
}

#[test]
fn chain_from_first_seen_accepts_a_mid_stream_start() {
    let c = chain(3, 1);
    let mut v = ChainVerifier::new(ChainStart::FirstSeen);
    admit(&mut v, &c[1]).unwrap();
    admit(&mut v, &c[2]).unwrap();
}

#[test]
fn chain_reports_replay() {
    let c = chain(3, 1);
    let mut v = ChainVerifier::new(ChainStart::Genesis);
    admit(&mut v, &c[0]).unwrap();
    admit(&mut v, &c[1]).unwrap();
    assert_eq!(admit(&mut v, &c[0]), Err(Error::Replay { seq: 1 }));
    assert_eq!(admit(&mut v, &c[1]), Err(Error::Replay { seq: 2 }));
    admit(&mut v, &c[2]).unwrap();
}

#[test]
fn chain_reports_reorder() {
    // The broker swaps batches 2 and 3: the first shows as a gap, the late one as a reorder.
    let c = chain(3, 1);
    let mut v = ChainVerifier::new(ChainStart::Genesis);
    admit(&mut v, &c[0]).unwrap();
    assert_eq!(admit(&mut v, &c[2]), Err(Error::Gap { expected: 2, got: 3 }));
    assert_eq!(admit(&mut v, &c[1]), Err(Error::Reorder { expected: 4, got: 2 }));
}

#[test]
fn chain_reports_fork() {
    // A second, different batch signed for the same place in the chain.
    let c = chain(2, 1);
    let other = sealed(2, c[0].digest(), &[b"other"], 99);
    let forged_prev = sealed(3, c[0].digest(), &[b"skips"], 98);
    let mut v = ChainVerifier::new(ChainStart::Genesis);
    admit(&mut v, &c[0]).unwrap();
    admit(&mut v, &other).unwrap();
    // The honest batch 2 now comes after the chain moved past sequence 2.
    assert_eq!(admit(&mut v, &c[1]), Err(Error::Reorder { expected: 3, got: 2 }));
    assert_eq!(admit(&mut v, &forged_prev), Err(Error::Fork { seq: 3 }));
}

#[test]
fn chain_keeps_publishers_and_topics_apart() {
    let bob = SigningKey::from_bytes(&[0xB0; 32]);
    let mut v = ChainVerifier::new(ChainStart::Genesis);
    let a = sealed(1, Digest::ZERO, &[b"a"], 1);
    let b = seal(&bob, &content_key(), params(1, Digest::ZERO), &[b"b"], &Limits::default(), &mut rng(2))
        .unwrap();
    let other_topic = SealParams { topic: topic("demo.events"), ..params(1, Digest::ZERO) };
    let c = seal(&bob, &content_key(), other_topic, &[b"c"], &Limits::default(), &mut rng(3)).unwrap();
    admit(&mut v, &a).unwrap();
    admit(&mut v, &b).unwrap();
    admit(&mut v, &c).unwrap();
}

#[test]
fn a_batch_reported_lost_lets_the_chain_continue_after_it_without_a_gap() {
    let c = chain(4, 2);
    let (t, a) = (topic("demo.chat"), alice().public_key());
    let mut v = ChainVerifier::new(ChainStart::Genesis);
    admit(&mut v, &c[0]).unwrap();
    // The broker lost the second batch (sequences 3..5) and says so.
    assert!(v.skip_lost(&t, &a, CHAIN, 3, 2, c[1].digest()));
    admit(&mut v, &c[2]).unwrap();
    // A loss claimed where the chain does not stand changes nothing: the next batch reports the gap.
    assert!(!v.skip_lost(&t, &a, CHAIN, 9, 1, c[3].digest()));
    admit(&mut v, &c[3]).unwrap();
}

#[test]
fn a_lost_batch_with_a_wrong_digest_shows_as_a_fork() {
    let c = chain(3, 1);
    let (t, a) = (topic("demo.chat"), alice().public_key());
    let mut v = ChainVerifier::new(ChainStart::Genesis);
    admit(&mut v, &c[0]).unwrap();
    assert!(v.skip_lost(&t, &a, CHAIN, 2, 1, Digest([9; 32])));
    assert_eq!(admit(&mut v, &c[2]), Err(Error::Fork { seq: 3 }));
}

#[test]
fn a_lost_first_batch_starts_the_chain_only_where_it_may() {
    let c = chain(3, 1);
    let (t, a) = (topic("demo.chat"), alice().public_key());
    // From genesis: a lost genesis batch starts the chain, a lost later one does not.
    let mut v = ChainVerifier::new(ChainStart::Genesis);
    assert!(!v.skip_lost(&t, &a, CHAIN, 2, 1, c[1].digest()));
    assert_eq!(admit(&mut v, &c[2]), Err(Error::Gap { expected: 1, got: 3 }));
    let mut v = ChainVerifier::new(ChainStart::Genesis);
    assert!(v.skip_lost(&t, &a, CHAIN, 1, 1, c[0].digest()));
    admit(&mut v, &c[1]).unwrap();
    // From the middle, the first batch seen may be a lost one.
    let mut v = ChainVerifier::new(ChainStart::FirstSeen);
    assert!(v.skip_lost(&t, &a, CHAIN, 2, 1, c[1].digest()));
    admit(&mut v, &c[2]).unwrap();
    // Nothing can be lost with no messages, nor past the last sequence number.
    assert!(!v.skip_lost(&t, &a, CHAIN, 4, 0, c[2].digest()));
    assert!(!v.skip_lost(&t, &a, CHAIN, u64::MAX, 2, c[2].digest()));
}

#[test]
fn two_chains_of_one_key_are_checked_apart() {
    // Two instances of alice interleave on one topic, each from genesis.
    let mut v = ChainVerifier::new(ChainStart::Genesis);
    let a1 = sealed_on(CHAIN, 1, Digest::ZERO, &[b"a1"], 1);
    let b1 = sealed_on(OTHER_CHAIN, 1, Digest::ZERO, &[b"b1"], 2);
    let a2 = sealed_on(CHAIN, 2, a1.digest(), &[b"a2"], 3);
    let b2 = sealed_on(OTHER_CHAIN, 2, b1.digest(), &[b"b2"], 4);
    let b3 = sealed_on(OTHER_CHAIN, 3, b2.digest(), &[b"b3"], 5);
    admit(&mut v, &a1).unwrap();
    admit(&mut v, &b1).unwrap();
    admit(&mut v, &a2).unwrap();
    // A replay within a chain, while the other chain is at the same sequence number.
    assert_eq!(admit(&mut v, &a2), Err(Error::Replay { seq: 2 }));
    // A reorder within the other chain.
    assert_eq!(admit(&mut v, &b3), Err(Error::Gap { expected: 2, got: 3 }));
    assert_eq!(admit(&mut v, &b2), Err(Error::Reorder { expected: 4, got: 2 }));
    let (t, a) = (topic("demo.chat"), alice().public_key());
    assert_eq!(v.head(&t, &a, CHAIN).map(|h| h.next_seq), Some(3));
    assert_eq!(v.head(&t, &a, OTHER_CHAIN).map(|h| h.next_seq), Some(4));
    assert_eq!(v.head(&t, &a, ChainId::LEGACY), None);
}

#[test]
fn a_batch_of_one_chain_never_continues_another() {
    // The second instance's genesis batch is not a fork of the first's; its second batch naming the first
    // instance's digest is a fork of its own chain.
    let mut v = ChainVerifier::new(ChainStart::Genesis);
    let a1 = sealed_on(CHAIN, 1, Digest::ZERO, &[b"a1"], 1);
    let b1 = sealed_on(OTHER_CHAIN, 1, Digest::ZERO, &[b"b1"], 2);
    let b2_on_a = sealed_on(OTHER_CHAIN, 2, a1.digest(), &[b"x"], 3);
    admit(&mut v, &a1).unwrap();
    admit(&mut v, &b1).unwrap();
    assert_eq!(admit(&mut v, &b2_on_a), Err(Error::Fork { seq: 2 }));
}

#[test]
fn a_lost_batch_moves_only_its_own_chain() {
    let (t, a) = (topic("demo.chat"), alice().public_key());
    let mut v = ChainVerifier::new(ChainStart::Genesis);
    let a1 = sealed_on(CHAIN, 1, Digest::ZERO, &[b"a1"], 1);
    let b1 = sealed_on(OTHER_CHAIN, 1, Digest::ZERO, &[b"b1"], 2);
    let a2 = sealed_on(CHAIN, 2, a1.digest(), &[b"a2"], 3);
    assert!(v.skip_lost(&t, &a, CHAIN, 1, 1, a1.digest()));
    admit(&mut v, &b1).unwrap();
    admit(&mut v, &a2).unwrap();
}

#[test]
fn a_verifier_seeded_with_the_heads_of_another_reports_what_was_deleted_or_replaced_after_them() {
    let c = chain(5, 1);
    let mut first = ChainVerifier::new(ChainStart::Genesis);
    admit(&mut first, &c[0]).unwrap();
    admit(&mut first, &c[1]).unwrap();
    let heads: Vec<_> = first.heads().map(|(t, p, chain, head)| (t.clone(), *p, chain, head)).collect();
    assert_eq!(heads.len(), 1);
    let seeded = || {
        let mut v = ChainVerifier::new(ChainStart::FirstSeen);
        for (t, p, chain, head) in &heads {
            v.seed(t, p, *chain, *head);
        }
        v
    };
    // The next batch continues; a deleted one before it is a gap even from the middle of the topic.
    admit(&mut seeded(), &c[2]).unwrap();
    assert_eq!(admit(&mut seeded(), &c[3]), Err(Error::Gap { expected: 3, got: 4 }));
    // A batch verified before, served again after the seeded head, is no longer new.
    assert!(matches!(admit(&mut seeded(), &c[1]), Err(Error::Reorder { .. })));
    // Seeding does not move a chain already seen.
    let mut v = seeded();
    admit(&mut v, &c[2]).unwrap();
    let (t, p, chain, head) = &heads[0];
    v.seed(t, p, *chain, *head);
    admit(&mut v, &c[3]).unwrap();
}

#[test]
fn after_a_retention_cut_each_chain_may_skip_ahead_once_but_never_go_back() {
    let c = chain(6, 1);
    let mut v = ChainVerifier::new(ChainStart::Genesis);
    admit(&mut v, &c[0]).unwrap();
    admit(&mut v, &c[1]).unwrap();
    // The broker retired the offsets that held sequences 3 and 4: the next batch skips them, no gap.
    v.retired();
    admit(&mut v, &c[4]).unwrap();
    // The chain goes on from the batch after the cut.
    admit(&mut v, &c[5]).unwrap();
    // The skip is allowed once: a later one is a gap again.
    let mut v = ChainVerifier::new(ChainStart::Genesis);
    admit(&mut v, &c[0]).unwrap();
    v.retired();
    admit(&mut v, &c[2]).unwrap();
    assert_eq!(admit(&mut v, &c[4]), Err(Error::Gap { expected: 4, got: 5 }));
    // A cut never lets a chain go back: a replay or a reorder is reported as before.
    let mut v = ChainVerifier::new(ChainStart::Genesis);
    admit(&mut v, &c[0]).unwrap();
    admit(&mut v, &c[1]).unwrap();
    v.retired();
    assert_eq!(admit(&mut v, &c[0]), Err(Error::Replay { seq: 1 }));
    assert_eq!(admit(&mut v, &c[3]), Ok(()));
}

#[test]
fn after_a_retention_cut_an_unseen_chain_starts_at_its_first_batch() {
    let c = chain(3, 1);
    let mut v = ChainVerifier::new(ChainStart::Genesis);
    // From genesis, a missing prefix is a gap; once the broker reports a retention cut, it is not.
    v.retired();
    admit(&mut v, &c[1]).unwrap();
    admit(&mut v, &c[2]).unwrap();
}
