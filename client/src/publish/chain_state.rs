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
//!   [`judge`](crate::head::judge) says so as [`Error::RolledBack`](crate::Error::RolledBack).
//!
//! # What it does not do
//!
//! Writes happen off the publisher's task, at most once per [`WRITE_INTERVAL`], so that acknowledgements
//! are not held up by an fsync: a crash can leave the record up to that interval of acknowledgements
//! behind (never ahead), and what the broker dropped of those last ones is not detected. A publisher that ends normally ([`ChainState::flush`]) leaves it
//! complete.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

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

/// How often, at most, a publisher writes its acknowledged head while acknowledgements keep coming.
///
/// Each write is a crash-safe replace (two fsyncs, `state.rs`) on the disk a local broker may be
/// group-committing to: written after every acknowledgement it cost W2's publish->delivery p50 a quarter.
/// Written at most this often, the record trails the broker by at most this much after a crash.
const WRITE_INTERVAL: Duration = Duration::from_millis(200);

/// What the background writer has to do.
#[derive(Default)]
struct Pending {
    /// The newest acknowledged head not written yet.
    head: Option<ChainHead>,
    /// Whether a writer runs.
    writing: bool,
    /// Whether a [`ChainState::flush`] waits: write at once, without waiting out the interval.
    flushing: bool,
}

/// The state a publisher and its background writer share.
#[derive(Default)]
struct Shared {
    pending: Mutex<Pending>,
    /// The writer has finished (`writing` became false).
    idle: Notify,
    /// A flush began.
    hurry: Notify,
}

impl Shared {
    fn pending(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A publisher chain's record, locked for the publisher's life.
pub(crate) struct ChainState {
    folder: StateFolder,
    name: String,
    chain: ChainId,
    shared: Arc<Shared>,
    lock: Arc<RecordLock>,
}

impl ChainState {
    fn new(folder: StateFolder, name: String, chain: ChainId, lock: RecordLock) -> Self {
        Self { folder, name, chain, shared: Arc::default(), lock: Arc::new(lock) }
    }

    /// The broker acknowledged the chain up to `head`: write it off this task, at most once per
    /// [`WRITE_INTERVAL`] (later heads replace earlier ones not yet written).
    pub(crate) fn acknowledged(&self, head: ChainHead) {
        let mut p = self.shared.pending();
        p.head = Some(head);
        if std::mem::replace(&mut p.writing, true) {
            return;
        }
        drop(p);
        let (folder, name, chain) = (self.folder.clone(), self.name.clone(), self.chain);
        let shared = self.shared.clone();
        // The lock stays held while the writer runs, even if the publisher is dropped meanwhile.
        let lock = self.lock.clone();
        tokio::spawn(async move {
            loop {
                let head = {
                    let mut p = shared.pending();
                    match p.head.take() {
                        Some(head) => head,
                        // Ended under the same lock that saw nothing left, so no head is left behind.
                        None => {
                            (p.writing, p.flushing) = (false, false);
                            break;
                        }
                    }
                };
                let (folder, name) = (folder.clone(), name.clone());
                let written =
                    tokio::task::spawn_blocking(move || folder.write(&name, &encode(chain, head))).await;
                match written {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => {
                        tracing::warn!(error = %e, "could not persist the publisher's acknowledged chain head")
                    }
                    Err(e) => tracing::warn!(error = %e, "the publisher's chain head writer failed"),
                }
                let hurry = shared.hurry.notified();
                if !shared.pending().flushing {
                    let _ = tokio::time::timeout(WRITE_INTERVAL, hurry).await;
                }
            }
            shared.idle.notify_waiters();
            drop(lock);
        });
    }

    /// Waits until every acknowledged head handed to [`acknowledged`](Self::acknowledged) is written.
    pub(crate) async fn flush(&self) {
        loop {
            let idle = self.shared.idle.notified();
            {
                let mut p = self.shared.pending();
                if !p.writing {
                    return;
                }
                p.flushing = true;
            }
            self.shared.hurry.notify_one();
            idle.await;
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
