//! The per-(topic, publisher, chain) sequence chain.
//!
//! Each batch names its chain, the sequence number of its first message and the digest of the previous
//! batch of the same chain on the same topic. A chain belongs to one **publisher instance**: every
//! `Publisher` a client makes picks a fresh random [`ChainId`], so several processes (or several publishers
//! in one process) signing with one key each keep a chain of their own, and none of them has to know where
//! the others stand. Batches of format version 1 carry no chain id and belong to [`ChainId::LEGACY`]. A publisher keeps a [`ChainHead`] to produce them; a subscriber feeds every
//! verified batch to a [`ChainVerifier`], which tells a batch that continues the chain from one that skips
//! ahead ([`Error::Gap`]), one that was already admitted ([`Error::Replay`]), one that comes after later
//! batches ([`Error::Reorder`]), and one that claims the right place but another history ([`Error::Fork`]).
//!
//! Since batches are signed, a broker cannot forge a batch to fill a gap: the worst it can do is withhold,
//! and withholding anything but the newest tail shows up here.

use std::collections::{HashMap, VecDeque};

use serde::{Deserialize, Serialize};

use crate::batch::{BatchHeader, VerifiedBatch};
use crate::keys::PublicKey;
use crate::topic::Topic;
use crate::{Digest, Error, Result};

/// The 16-byte id of one publisher instance's chain on a topic, chosen at random by the publisher
/// ([`ChainId::random`]). Order, gaps and replays are judged per (topic, publisher key, chain id).
///
/// It is not a secret and proves nothing by itself: it is signed with the batch, so a broker cannot move a
/// batch to another chain, and two instances that picked the same id (a 2^-64 chance among 2^32
/// instances of one key) would only conflict with each other, as two processes did before chain ids.
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ChainId(pub [u8; 16]);

impl ChainId {
    /// The chain of every batch of format version 1 (which names none): all zeros. A batch of version 2
    /// never names it, so each chain has one batch format.
    pub const LEGACY: ChainId = ChainId([0; 16]);

    /// A fresh random chain id from `rng` (never [`LEGACY`](Self::LEGACY)).
    pub fn random(rng: &mut impl rand_core::CryptoRngCore) -> ChainId {
        let mut id = [0u8; 16];
        rng.fill_bytes(&mut id);
        if id == [0; 16] {
            // 2^-128: not worth a loop, but a version-2 batch must not name the legacy chain.
            id[15] = 1;
        }
        ChainId(id)
    }

    /// Whether this is [`LEGACY`](Self::LEGACY).
    pub fn is_legacy(&self) -> bool {
        *self == Self::LEGACY
    }

    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }
}

impl core::fmt::Display for ChainId {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(&hex::encode(&self.0[..8]))
    }
}

impl core::fmt::Debug for ChainId {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "ChainId({})", hex::encode(self.0))
    }
}

/// Where a publisher's next batch on a topic continues its chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainHead {
    /// Sequence number of the next message.
    pub next_seq: u64,
    /// Digest of the last batch, or [`Digest::ZERO`] before the first.
    pub prev_digest: Digest,
}

impl ChainHead {
    /// The head of a chain with no batch yet: sequence numbers start at 1.
    pub const GENESIS: ChainHead = ChainHead { next_seq: 1, prev_digest: Digest::ZERO };

    /// The head right after `batch`.
    pub fn after(batch: &VerifiedBatch) -> ChainHead {
        ChainHead { next_seq: batch.header().next_seq(), prev_digest: batch.digest() }
    }
}

impl Default for ChainHead {
    fn default() -> Self {
        Self::GENESIS
    }
}

/// What a [`ChainVerifier`] assumes about a publisher it has not seen yet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChainStart {
    /// Every publisher's first batch must be its genesis batch (sequence 1, zero previous digest). Use it
    /// when reading a topic from its beginning: a missing prefix is then reported as a gap.
    Genesis,
    /// The first batch seen from each publisher starts its chain. Use it when reading from the middle of a
    /// topic, where earlier batches are out of sight by choice.
    FirstSeen,
}

/// How many recently admitted batches per publisher are remembered to tell a replay from a reorder.
const RECENT: usize = 64;

#[derive(Debug)]
struct PublisherState {
    head: ChainHead,
    /// The broker reported a retention cut since this chain's last batch: its next batch may skip ahead
    /// once without a gap (see [`ChainVerifier::retired`]).
    may_skip: bool,
    /// First sequence number and digest of the most recently admitted batches, oldest first.
    recent: VecDeque<(u64, Digest)>,
}

impl PublisherState {
    fn advance(&mut self, header: &BatchHeader, digest: Digest) {
        self.may_skip = false;
        self.head = ChainHead { next_seq: header.next_seq(), prev_digest: digest };
        if self.recent.len() == RECENT {
            self.recent.pop_front();
        }
        self.recent.push_back((header.first_seq, digest));
    }
}

/// Checks the sequence chain of every (topic, publisher, chain) that a subscriber receives: two instances
/// of one publisher key are two chains, each checked on its own.
#[derive(Debug)]
pub struct ChainVerifier {
    start: ChainStart,
    publishers: HashMap<(Topic, PublicKey, ChainId), PublisherState>,
}

impl ChainVerifier {
    /// A verifier that treats publishers it has not seen as `start` says.
    pub fn new(start: ChainStart) -> Self {
        Self { start, publishers: HashMap::new() }
    }

    /// The head of chain `chain` of `publisher` on `topic`, if a batch of it was admitted.
    pub fn head(&self, topic: &Topic, publisher: &PublicKey, chain: ChainId) -> Option<ChainHead> {
        self.publishers.get(&(topic.clone(), *publisher, chain)).map(|s| s.head)
    }

    /// Starts chain `chain` of `publisher` on `topic` at `head`, as verified before (by an earlier process
    /// of the subscriber, up to an offset it committed): its next batch must continue `head`, whatever the
    /// verifier's [`ChainStart`]. A chain already seen here is left as it is.
    pub fn seed(&mut self, topic: &Topic, publisher: &PublicKey, chain: ChainId, head: ChainHead) {
        self.publishers.entry((topic.clone(), *publisher, chain)).or_insert(PublisherState {
            head,
            may_skip: false,
            recent: VecDeque::new(),
        });
    }

    /// The head of every chain seen (admitted, skipped past or seeded), in no particular order: what to
    /// [`seed`](Self::seed) a later verifier with.
    pub fn heads(&self) -> impl Iterator<Item = (&Topic, &PublicKey, ChainId, ChainHead)> {
        self.publishers
            .iter()
            .map(|((topic, publisher, chain), state)| (topic, publisher, *chain, state.head))
    }

    /// The broker reports the batch of chain `chain` of `publisher` on `topic` that starts at `first_seq`, with `count`
    /// messages and digest `digest`, as lost (its storage failed a checksum). If that batch is the next one
    /// the chain expects (or the first one seen of a publisher read from the middle, or a genesis batch),
    /// the chain moves past it: the publisher's next batch then continues it without a [`Error::Gap`].
    /// Returns whether it did; otherwise nothing changes, and what is missing before the lost batch is
    /// reported as a gap when the publisher's next batch arrives.
    ///
    /// The claim is the broker's, unsigned: a lying broker can make a withheld batch look lost, but the
    /// caller reports every loss to the application, so nothing is hidden. The digest is the broker's too:
    /// if it is wrong, the publisher's next batch is reported as a [`Error::Fork`].
    pub fn skip_lost(
        &mut self,
        topic: &Topic,
        publisher: &PublicKey,
        chain: ChainId,
        first_seq: u64,
        count: u64,
        digest: Digest,
    ) -> bool {
        let Some(next_seq) = first_seq.checked_add(count).filter(|_| count > 0) else {
            return false;
        };
        let head = ChainHead { next_seq, prev_digest: digest };
        match self.publishers.get_mut(&(topic.clone(), *publisher, chain)) {
            Some(state) if state.head.next_seq == first_seq => {
                state.head = head;
                true
            }
            Some(_) => false,
            None if self.start == ChainStart::FirstSeen || first_seq == ChainHead::GENESIS.next_seq => {
                self.publishers.insert(
                    (topic.clone(), *publisher, chain),
                    PublisherState { head, may_skip: false, recent: VecDeque::new() },
                );
                true
            }
            None => false,
        }
    }

    /// The broker reports that the offsets before some point were removed by its retention rules, and the
    /// subscription goes on after them. Every chain already seen may then skip ahead once, with its next
    /// batch, without an [`Error::Gap`] (its batches in the removed range are gone); it may never go back
    /// (a replay or reorder is reported as before). A chain not seen yet starts at its first batch seen,
    /// as with [`ChainStart::FirstSeen`].
    ///
    /// The claim is the broker's, unsigned: a lying broker can make removing a topic's oldest batches look
    /// like retention, but the caller reports every such claim to the application, so nothing is hidden;
    /// and only a prefix of the topic can be removed so (batches after the claimed cut are checked as
    /// usual).
    pub fn retired(&mut self) {
        self.start = ChainStart::FirstSeen;
        for state in self.publishers.values_mut() {
            state.may_skip = true;
        }
    }

    /// Checks that the verified batch with `header` and `digest` continues its chain (of its publisher, on
    /// its topic, with its chain id).
    ///
    /// - `Ok(())`: it does; the chain moves past it.
    /// - [`Error::Gap`]: sequence numbers are missing before it. The batch itself is authentic, so the chain
    ///   **moves past it** and later batches are checked against it: the caller reports the gap and may
    ///   still deliver the batch. This is how delivery goes on after a broker drops batches.
    /// - [`Error::Replay`], [`Error::Reorder`], [`Error::Fork`]: the batch must not be delivered; the chain
    ///   does not move.
    pub fn admit(&mut self, header: &BatchHeader, digest: Digest) -> Result<()> {
        let key = (header.topic.clone(), header.publisher, header.chain);
        let state = match self.publishers.get_mut(&key) {
            Some(state) => state,
            None => {
                let head = match self.start {
                    ChainStart::Genesis => ChainHead::GENESIS,
                    ChainStart::FirstSeen => {
                        ChainHead { next_seq: header.first_seq, prev_digest: header.prev_digest }
                    }
                };
                self.publishers.entry(key).or_insert(PublisherState {
                    head,
                    may_skip: false,
                    recent: VecDeque::new(),
                })
            }
        };
        let expected = state.head.next_seq;
        let got = header.first_seq;
        if got == expected {
            if header.prev_digest != state.head.prev_digest {
                return Err(Error::Fork { seq: got });
            }
            state.advance(header, digest);
            Ok(())
        } else if got > expected {
            let skip = state.may_skip;
            state.advance(header, digest);
            if skip {
                Ok(())
            } else {
                Err(Error::Gap { expected, got })
            }
        } else if state.recent.contains(&(got, digest)) {
            Err(Error::Replay { seq: got })
        } else {
            Err(Error::Reorder { expected, got })
        }
    }
}
