//! Fixed keys and helpers shared by the protocol tests.
#![allow(dead_code)]

use bytes::Bytes;
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha20Rng;
use sealpost_protocol::*;

pub fn rng(seed: u64) -> ChaCha20Rng {
    ChaCha20Rng::seed_from_u64(seed)
}

pub fn topic(s: &str) -> Topic {
    Topic::new(s).unwrap()
}

pub fn alice() -> SigningKey {
    SigningKey::from_bytes(&[0xA1; 32])
}

pub fn content_key() -> ContentKey {
    ContentKey::from_bytes(&[0xC0; 32])
}

pub fn keys() -> (Epoch, ContentKey) {
    (Epoch(7), content_key())
}

/// The chain of alice's publisher instance in these tests.
pub const CHAIN: ChainId = ChainId([0x5C; 16]);

/// A second instance of alice.
pub const OTHER_CHAIN: ChainId = ChainId([0x7E; 16]);

pub fn params(first_seq: u64, prev: Digest) -> SealParams {
    SealParams {
        topic: topic("demo.chat"),
        epoch: Epoch(7),
        chain: CHAIN,
        first_seq,
        prev_digest: prev,
        created_at: Timestamp(1_763_856_000_000),
    }
}

/// Seals `msgs` as alice on demo.chat, epoch 7, with a deterministic RNG.
pub fn sealed(first_seq: u64, prev: Digest, msgs: &[&[u8]], seed: u64) -> VerifiedBatch {
    seal(&alice(), &content_key(), params(first_seq, prev), msgs, &Limits::default(), &mut rng(seed)).unwrap()
}

/// Seals `msgs` as [`sealed`] does, in batch format version 1 (the legacy chain).
pub fn sealed_v1(first_seq: u64, prev: Digest, msgs: &[&[u8]], seed: u64) -> VerifiedBatch {
    let params = SealParams { chain: ChainId::LEGACY, ..params(first_seq, prev) };
    seal(&alice(), &content_key(), params, msgs, &Limits::default(), &mut rng(seed)).unwrap()
}

/// Seals `msgs` as [`sealed`] does, on chain `chain`.
pub fn sealed_on(chain: ChainId, first_seq: u64, prev: Digest, msgs: &[&[u8]], seed: u64) -> VerifiedBatch {
    let params = SealParams { chain, ..params(first_seq, prev) };
    seal(&alice(), &content_key(), params, msgs, &Limits::default(), &mut rng(seed)).unwrap()
}

pub fn bytes_of(b: &VerifiedBatch) -> Bytes {
    b.as_bytes().clone()
}

/// A chain of `n` batches of `per` messages each.
pub fn chain(n: usize, per: usize) -> Vec<VerifiedBatch> {
    let mut head = ChainHead::GENESIS;
    (0..n)
        .map(|i| {
            let msgs: Vec<Vec<u8>> = (0..per).map(|j| format!("m{i}.{j}").into_bytes()).collect();
            let refs: Vec<&[u8]> = msgs.iter().map(|m| m.as_slice()).collect();
            let b = sealed(head.next_seq, head.prev_digest, &refs, i as u64);
            head = ChainHead::after(&b);
            b
        })
        .collect()
}

/// The topic authority of the policy tests.
pub fn authority() -> SigningKey {
    SigningKey::from_bytes(&[0xAA; 32])
}

pub fn bob() -> SigningKey {
    SigningKey::from_bytes(&[0xB0; 32])
}

pub fn carol() -> SigningKey {
    SigningKey::from_bytes(&[0xCA; 32])
}

/// The HPKE secret key of a test principal.
pub fn hpke_secret(principal: &str) -> HpkeSecretKey {
    let mut bytes = [0x5E; 32];
    bytes[..principal.len().min(32)].copy_from_slice(&principal.as_bytes()[..principal.len().min(32)]);
    HpkeSecretKey::from_bytes(&bytes)
}

pub fn member(principal: &str, key: &SigningKey, publish: bool, subscribe: bool) -> Member {
    Member {
        principal: principal.parse().unwrap(),
        publish,
        subscribe,
        signing_key: key.public_key(),
        hpke_key: hpke_secret(principal).public_key(),
    }
}

/// alice publishes and reads, bob reads.
pub fn alice_and_bob() -> Vec<Member> {
    vec![member("alice", &alice(), true, true), member("bob", &bob(), false, true)]
}

pub const POLICY_TIME: u64 = 1_763_856_000_000;

/// The content key of policy epoch `epoch` in these tests.
pub fn epoch_key(epoch: u64) -> ContentKey {
    ContentKey::from_bytes(&[0xE0 ^ epoch as u8; 32])
}

/// A policy on demo.chat signed by [`authority`], continuing `prev`, created `POLICY_TIME + offset_ms`.
pub fn policy(prev: Option<&VerifiedPolicy>, members: Vec<Member>, offset_ms: u64) -> VerifiedPolicy {
    let epoch = Epoch(prev.map_or(1, |p| p.epoch().0 + 1));
    let params = PolicyParams {
        topic: topic("demo.chat"),
        epoch,
        prev,
        members,
        created_at: Timestamp(POLICY_TIME + offset_ms),
    };
    issue_policy(&authority(), params, &epoch_key(epoch.0), &Limits::default(), &mut rng(epoch.0 + 100))
        .unwrap()
}

/// Epoch 1 (alice and bob), then epoch 2 (alice and carol: bob removed), one hour later.
pub fn policy_chain() -> (VerifiedPolicy, VerifiedPolicy) {
    let first = policy(None, alice_and_bob(), 0);
    let second = policy(
        Some(&first),
        vec![member("alice", &alice(), true, true), member("carol", &carol(), true, false)],
        3_600_000,
    );
    (first, second)
}
