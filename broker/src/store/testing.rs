//! For tests of the store, of the writer and of the broker: real sealed batches to append.
//!
//! A [`Store`](super::Store) takes only verified batches ([`Append`](super::Append)), so tests append
//! real ones. What this module makes is deterministic (fixed content key, timestamp and nonces drawn from
//! a seed), so a test's stored bytes are the same on every run. Nothing here is used by the broker itself.

use rand::SeedableRng;
use sealpost_protocol::{
    seal, ChainHead, ContentKey, Epoch, Limits, SealParams, SigningKey, Timestamp, Topic, VerifiedBatch,
};

use crate::Result;

/// A batch of `count` messages of `len` bytes each, signed by `signer` on `topic`, continuing `head`.
/// Deterministic: the same arguments give the same bytes.
pub fn sealed_batch(
    signer: &SigningKey,
    topic: &Topic,
    head: ChainHead,
    count: usize,
    len: usize,
) -> Result<VerifiedBatch> {
    let params = SealParams {
        topic: topic.clone(),
        epoch: Epoch(1),
        first_seq: head.next_seq,
        prev_digest: head.prev_digest,
        created_at: Timestamp(1_763_856_000_000),
    };
    let messages: Vec<Vec<u8>> = (0..count).map(|i| vec![(head.next_seq as usize + i) as u8; len]).collect();
    let mut rng = rand::rngs::StdRng::seed_from_u64(head.next_seq);
    Ok(seal(signer, &ContentKey::from_bytes(&[0xC0; 32]), params, &messages, &Limits::default(), &mut rng)?)
}
