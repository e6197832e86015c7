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

pub fn params(first_seq: u64, prev: Digest) -> SealParams {
    SealParams {
        topic: topic("demo.chat"),
        epoch: Epoch(7),
        first_seq,
        prev_digest: prev,
        created_at: Timestamp(1_763_856_000_000),
    }
}

/// Seals `msgs` as alice on demo.chat, epoch 7, with a deterministic RNG.
pub fn sealed(first_seq: u64, prev: Digest, msgs: &[&[u8]], seed: u64) -> VerifiedBatch {
    seal(&alice(), &content_key(), params(first_seq, prev), msgs, &Limits::default(), &mut rng(seed)).unwrap()
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
