//! A durable subscription's **persisted chain heads**: the head of every chain it had verified up to the
//! offset it acknowledged, kept in the client's state folder (`state.rs`), so that the subscription's next
//! process checks the batches it resumes with against them instead of trusting the first batch of each
//! chain it sees.
//!
//! # What it guarantees
//!
//! - **Never ahead of an acknowledgement.** The heads written are those after the last batch that ends at
//!   or before the offset being acknowledged (the reader's snapshots), and they are written, fsynced,
//!   **before** the `Ack` is sent: a broker that resumes the subscription at that offset or later must
//!   serve each chain's next batch after them. One that skipped batches (a committed offset moved forward,
//!   batches deleted after it) shows a [`Gap`](sealpost_protocol::Error::Gap), one that replaced them a
//!   [`Fork`](sealpost_protocol::Error::Fork).
//! - **A damaged record is an error**, [`Error::State`] at subscribe, never ignored.
//!
//! # What it does not do
//!
//! A broker that resumes the subscription **before** the recorded offset (an acknowledgement the broker
//! never received, or one it forgot) redelivers what was verified already; those batches cannot be checked
//! against heads that lie after them, so the record is not used then (logged), and the chains start at the
//! first batch seen, as without a state folder. Chains whose batches arrive only after the offset are not in
//! the record and start at their first batch seen.

use sealpost_protocol::{ChainHead, ChainId, Digest, Offset, PublicKey, Topic};

use crate::error::{Error, Result};
use crate::state::{durable_record, StateFault, StateFolder};

/// The heads of chains (publisher key, chain id, head).
pub(crate) type Heads = Vec<(PublicKey, ChainId, ChainHead)>;

/// One entry: `publisher [32] | chain [16] | next_seq u64 | prev_digest [32]`.
const ENTRY: usize = 32 + 16 + 8 + 32;

/// The record's body: `offset u64 | count u32 | count entries`.
fn encode(offset: Offset, heads: &Heads) -> Vec<u8> {
    let mut out = Vec::with_capacity(12 + heads.len() * ENTRY);
    out.extend_from_slice(&offset.0.to_be_bytes());
    out.extend_from_slice(&u32::try_from(heads.len()).unwrap_or(u32::MAX).to_be_bytes());
    for (publisher, chain, head) in heads.iter().take(u32::MAX as usize) {
        out.extend_from_slice(publisher.as_bytes());
        out.extend_from_slice(chain.as_bytes());
        out.extend_from_slice(&head.next_seq.to_be_bytes());
        out.extend_from_slice(head.prev_digest.as_bytes());
    }
    out
}

fn decode(body: &[u8]) -> Option<(Offset, Heads)> {
    let (offset, rest) = body.split_at_checked(8)?;
    let (count, mut rest) = rest.split_at_checked(4)?;
    let offset = Offset(u64::from_be_bytes(offset.try_into().ok()?));
    let count = u32::from_be_bytes(count.try_into().ok()?) as usize;
    if rest.len() != count.checked_mul(ENTRY)? {
        return None;
    }
    let mut heads = Vec::with_capacity(count);
    while !rest.is_empty() {
        let (entry, next) = rest.split_at(ENTRY);
        rest = next;
        let publisher: [u8; 32] = entry[..32].try_into().ok()?;
        let publisher = PublicKey::from_bytes(&publisher).ok()?;
        let chain = ChainId(entry[32..48].try_into().ok()?);
        let next_seq = u64::from_be_bytes(entry[48..56].try_into().ok()?);
        let prev_digest = Digest(entry[56..88].try_into().ok()?);
        if next_seq == 0 {
            return None;
        }
        heads.push((publisher, chain, ChainHead { next_seq, prev_digest }));
    }
    Some((offset, heads))
}

/// The recorded heads of durable subscription `name` on `topic` and the offset they were acknowledged at;
/// `None` if there is no record.
pub(crate) fn load(folder: &StateFolder, topic: &Topic, name: &str) -> Result<Option<(Offset, Heads)>> {
    let record = durable_record(topic, name);
    let Some(body) = folder.read(&record)? else { return Ok(None) };
    match decode(&body) {
        Some(found) => Ok(Some(found)),
        None => Err(Error::State { path: folder.path().join(record), fault: StateFault::Corrupt }),
    }
}

/// Records `heads` as verified up to `offset` for durable subscription `name` on `topic` (crash-safely, off
/// the async workers); returns once they are durable.
pub(crate) async fn store(
    folder: &StateFolder,
    topic: &Topic,
    name: &str,
    offset: Offset,
    heads: &Heads,
) -> Result<()> {
    let (folder, record, body) = (folder.clone(), durable_record(topic, name), encode(offset, heads));
    tokio::task::spawn_blocking(move || folder.write(&record, &body))
        .await
        .map_err(|e| Error::io("the state writer ended", std::io::Error::other(e.to_string())))?
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use sealpost_protocol::SigningKey;

    use super::*;

    #[tokio::test]
    async fn heads_read_back_as_written_and_a_damaged_record_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let folder = StateFolder::open(dir.path()).unwrap();
        let topic = Topic::new("demo.chat").unwrap();
        assert!(load(&folder, &topic, "audit").unwrap().is_none());
        let key = SigningKey::from_bytes(&[1; 32]).public_key();
        let heads = vec![
            (key, ChainId([2; 16]), ChainHead { next_seq: 7, prev_digest: Digest([3; 32]) }),
            (key, ChainId([4; 16]), ChainHead::GENESIS),
        ];
        store(&folder, &topic, "audit", Offset(40), &heads).await.unwrap();
        assert_eq!(load(&folder, &topic, "audit").unwrap(), Some((Offset(40), heads.clone())));
        // Another name is another record.
        assert!(load(&folder, &topic, "other").unwrap().is_none());
        // A body that does not decode (intact as a file) is corrupt.
        folder.write(&durable_record(&topic, "audit"), &encode(Offset(1), &heads)[..20]).unwrap();
        assert!(matches!(
            load(&folder, &topic, "audit"),
            Err(Error::State { fault: StateFault::Corrupt, .. })
        ));
    }
}
