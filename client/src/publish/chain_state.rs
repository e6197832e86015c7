//! A publisher's **persisted chain**: which chain a publisher continues, and the head of it the broker last
//! acknowledged, kept in the client's state folder (`state.rs`) so that the identity's next process
//! continues its own chain and can tell a broker that dropped what it had acknowledged.
//!
//! # What it guarantees
//!
//! - **One live publisher per chain.** A publisher that continues a chain holds the lock of its record for
//!   its whole life (`flock(2)`: across processes, and released when the process ends however it ends); a
//!   publisher that finds every chain record of the topic locked starts a fresh chain.
//! - **The record never runs ahead of the broker's acknowledgement.** It is written after `Published`
//!   arrived, so a broker head behind it is a broker that dropped (or replaced) acknowledged batches:
//!   [`judge`] says so as [`Error::RolledBack`].
//!
//! # What it does not do
//!
//! Writes are coalesced off the publisher's task, so that acknowledgements are not held up by an fsync: a
//! crash can leave the record a few acknowledgements behind (never ahead), and what the broker dropped of
//! those last ones is not detected. A publisher that ends normally ([`ChainState::flush`]) leaves it
//! complete.

use std::sync::{Arc, Mutex, PoisonError};

use sealpost_protocol::{ChainHead, ChainId, Digest, Topic};
use tokio::sync::Notify;

use crate::error::{Error, Result};
use crate::state::{chain_prefix, chain_record, RecordLock, StateFault, StateFolder};

/// A chain record's body: `chain [16] | next_seq u64 | prev_digest [32]`.
const BODY: usize = 16 + 8 + 32;

fn encode(chain: ChainId, head: ChainHead) -> Vec<u8> {
    let mut out = Vec::with_capacity(BODY);
    out.extend_from_slice(chain.as_bytes());
    out.extend_from_slice(&head.next_seq.to_be_bytes());
    out.extend_from_slice(head.prev_digest.as_bytes());
    out
}

fn decode(body: &[u8]) -> Option<(ChainId, ChainHead)> {
    if body.len() != BODY {
        return None;
    }
    let (chain, rest) = body.split_at(16);
    let (seq, digest) = rest.split_at(8);
    let chain = ChainId(chain.try_into().ok()?);
    let next_seq = u64::from_be_bytes(seq.try_into().ok()?);
    let prev_digest = Digest(digest.try_into().ok()?);
    (next_seq >= 1).then_some((chain, ChainHead { next_seq, prev_digest }))
}

/// The chain a publisher publishes on.
pub(crate) struct Claimed {
    /// The chain.
    pub(crate) chain: ChainId,
    /// Its head as last acknowledged to a previous process (`None`: a fresh chain).
    pub(crate) acknowledged: Option<ChainHead>,
    /// Where its acknowledged head is kept (`None`: no state folder).
    pub(crate) state: Option<ChainState>,
}

/// Picks the chain of a new publisher on `topic`: the first chain record of the topic in `folder` that no
/// live publisher holds, continued from its acknowledged head; else a fresh chain from `fresh`. A record
/// that does not decode is an [`Error::State`] (corrupt).
pub(crate) fn claim(folder: Option<&StateFolder>, topic: &Topic, fresh: ChainId) -> Result<Claimed> {
    let Some(folder) = folder else {
        return Ok(Claimed { chain: fresh, acknowledged: None, state: None });
    };
    for name in folder.records(&chain_prefix(topic))? {
        let Some(lock) = folder.try_lock(&name)? else { continue };
        let Some(body) = folder.read(&name)? else { continue };
        let corrupt = || Error::State { path: folder.path().join(&name), fault: StateFault::Corrupt };
        let (chain, head) = decode(&body).ok_or_else(corrupt)?;
        if name != chain_record(topic, chain) {
            return Err(corrupt());
        }
        let state = ChainState::new(folder.clone(), name, chain, lock);
        return Ok(Claimed { chain, acknowledged: Some(head), state: Some(state) });
    }
    let name = chain_record(topic, fresh);
    let lock = folder
        .try_lock(&name)?
        .ok_or(Error::State { path: folder.path().join(&name), fault: StateFault::Locked })?;
    Ok(Claimed {
        chain: fresh,
        acknowledged: None,
        state: Some(ChainState::new(folder.clone(), name, fresh, lock)),
    })
}

/// Whether the broker's `broker` head of `chain` keeps what was `acknowledged`: the head to continue from
/// (the broker's: it may hold batches sent but not acknowledged before), or [`Error::RolledBack`] if it is
/// behind, or at the same place with another digest.
pub(crate) fn judge(
    topic: &Topic,
    chain: ChainId,
    acknowledged: ChainHead,
    broker: ChainHead,
) -> Result<ChainHead> {
    let behind = broker.next_seq < acknowledged.next_seq;
    let replaced = broker.next_seq == acknowledged.next_seq && broker.prev_digest != acknowledged.prev_digest;
    if behind || replaced {
        return Err(Error::RolledBack {
            topic: topic.clone(),
            chain,
            acknowledged: acknowledged.next_seq.saturating_sub(1),
            broker: broker.next_seq.saturating_sub(1),
        });
    }
    Ok(broker)
}

/// What the background writer has to do.
#[derive(Default)]
struct Pending {
    /// The newest acknowledged head not written yet.
    head: Option<ChainHead>,
    /// Whether a writer runs.
    writing: bool,
}

/// A publisher chain's record, locked for the publisher's life.
pub(crate) struct ChainState {
    folder: StateFolder,
    name: String,
    chain: ChainId,
    pending: Arc<(Mutex<Pending>, Notify)>,
    lock: Arc<RecordLock>,
}

impl ChainState {
    fn new(folder: StateFolder, name: String, chain: ChainId, lock: RecordLock) -> Self {
        Self { folder, name, chain, pending: Arc::default(), lock: Arc::new(lock) }
    }

    /// The broker acknowledged the chain up to `head`: write it (off this task, coalesced with later ones).
    pub(crate) fn acknowledged(&self, head: ChainHead) {
        let (pending, _) = &*self.pending;
        let mut p = pending.lock().unwrap_or_else(PoisonError::into_inner);
        p.head = Some(head);
        if std::mem::replace(&mut p.writing, true) {
            return;
        }
        drop(p);
        let (folder, name, chain) = (self.folder.clone(), self.name.clone(), self.chain);
        let shared = self.pending.clone();
        // The lock stays held while a write runs, even if the publisher is dropped meanwhile.
        let lock = self.lock.clone();
        tokio::task::spawn_blocking(move || {
            let (pending, done) = &*shared;
            loop {
                let head = {
                    let mut p = pending.lock().unwrap_or_else(PoisonError::into_inner);
                    match p.head.take() {
                        Some(head) => head,
                        None => {
                            p.writing = false;
                            done.notify_waiters();
                            break;
                        }
                    }
                };
                if let Err(e) = folder.write(&name, &encode(chain, head)) {
                    tracing::warn!(error = %e, "could not persist the publisher's acknowledged chain head");
                }
            }
            drop(lock);
        });
    }

    /// Waits until every acknowledged head handed to [`acknowledged`](Self::acknowledged) is written.
    pub(crate) async fn flush(&self) {
        let (pending, done) = &*self.pending;
        loop {
            let notified = done.notified();
            if !pending.lock().unwrap_or_else(PoisonError::into_inner).writing {
                return;
            }
            notified.await;
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    fn topic() -> Topic {
        Topic::new("demo.chat").unwrap()
    }

    fn head(next_seq: u64, d: u8) -> ChainHead {
        ChainHead { next_seq, prev_digest: Digest([d; 32]) }
    }

    #[test]
    fn a_broker_head_behind_or_beside_the_acknowledged_one_is_a_rollback() {
        let chain = ChainId([5; 16]);
        let acked = head(4, 3);
        // The same head, or further (batches stored but not acknowledged before): continue the broker's.
        assert_eq!(judge(&topic(), chain, acked, acked).unwrap(), acked);
        assert_eq!(judge(&topic(), chain, acked, head(6, 9)).unwrap(), head(6, 9));
        for broker in [head(3, 2), ChainHead::GENESIS, head(4, 7)] {
            match judge(&topic(), chain, acked, broker) {
                Err(Error::RolledBack { chain: c, acknowledged: 3, broker: b, .. }) => {
                    assert_eq!((c, b), (chain, broker.next_seq - 1));
                }
                other => panic!("{other:?}"),
            }
        }
    }

    #[tokio::test]
    async fn a_chain_is_continued_by_one_publisher_at_a_time_from_its_acknowledged_head() {
        let dir = tempfile::tempdir().unwrap();
        let folder = StateFolder::open(dir.path()).unwrap();
        let first = claim(Some(&folder), &topic(), ChainId([1; 16])).unwrap();
        assert_eq!((first.chain, first.acknowledged), (ChainId([1; 16]), None));
        let state = first.state.unwrap();
        state.acknowledged(head(2, 1));
        state.acknowledged(head(5, 4));
        state.flush().await;
        // While the first lives, a second publisher gets a fresh chain.
        let second = claim(Some(&folder), &topic(), ChainId([2; 16])).unwrap();
        assert_eq!((second.chain, second.acknowledged), (ChainId([2; 16]), None));
        drop(second);
        drop(state);
        // Once it is gone, the next one continues its chain where it was acknowledged.
        let third = claim(Some(&folder), &topic(), ChainId([3; 16])).unwrap();
        assert_eq!((third.chain, third.acknowledged), (ChainId([1; 16]), Some(head(5, 4))));
        // Another topic's records are not its.
        let other = claim(Some(&folder), &Topic::new("demo.other").unwrap(), ChainId([4; 16])).unwrap();
        assert_eq!(other.chain, ChainId([4; 16]));
    }

    #[test]
    fn a_damaged_chain_record_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let folder = StateFolder::open(dir.path()).unwrap();
        let name = chain_record(&topic(), ChainId([1; 16]));
        // Intact as a file, but naming another chain than its name says.
        folder.write(&name, &encode(ChainId([9; 16]), head(2, 1))).unwrap();
        assert!(matches!(
            claim(Some(&folder), &topic(), ChainId([2; 16])),
            Err(Error::State { fault: StateFault::Corrupt, .. })
        ));
        folder.write(&name, b"short").unwrap();
        assert!(matches!(
            claim(Some(&folder), &topic(), ChainId([2; 16])),
            Err(Error::State { fault: StateFault::Corrupt, .. })
        ));
    }
}
