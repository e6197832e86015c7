//! The bodies of segment records: everything the on-disk engine writes to its log, one kind per first byte.
//! The segments are the whole log: the index can be rebuilt from them alone.
//!
//! ```text
//! 1 batch    kind | topic_len u8 | topic | offset u64 | count u32 | publisher [32] | first_seq u64
//!                 | digest [32] | sealed batch
//! 2 synced   kind | segment u64 | position u64            the segments were durable up to there
//! 3 policy   kind | topic_len u8 | topic | epoch u64 | signed topic policy
//! 4 durable  kind | topic_len u8 | topic | len u32 | principal | len u32 | name | next_offset u64
//! 5 lost     kind | topic_len u8 | topic | offset u64 | lost [114] (layout 3: lost [98])
//! 6 layout   kind | version u32                            the first record of the first layout-3 segment
//! 7 batch    kind | topic_len u8 | topic | offset u64 | count u32 | publisher [32] | chain [16]
//!   of a chain    | first_seq u64 | digest [32] | sealed batch          (layout 4: a batch of any chain
//!                                                                      but the legacy one)
//! 8 retired  kind | topic_len u8 | topic | before u64            (layout 5) retention removed every offset
//!                                                                 of the topic below `before`
//! 9 head     kind | topic_len u8 | topic | publisher [32] | chain [16] | first_seq u64 | count u32
//!                 | offset u64 | digest [32]                     (layout 5) the last batch of a chain, whose
//!                                                                 own record retention removed
//!
//! lost [114] = count u64 | reason u8 | flags u8 | publisher [32] | first_seq u64 | digest [32]
//!             | segment u64 | position u64 | chain [16]
//!             flags: bit 0, the batch (publisher, first_seq, digest, chain) is known; bit 1, the place of
//!             the damaged bytes (segment, position) is known. Unknown fields are zeros. Layout 3 wrote
//!             the first 98 bytes only: its batches were all of the legacy chain.
//!
//! A batch of the legacy chain (format version 1, all that layout 3 held) keeps the `batch` record of
//! layout 3; any other is a `batch of a chain` record, whose fields name the chain as the index does, so
//! that a flipped bit in the sealed batch leaves every field the index is rebuilt from intact.
//! ```
//!
//! Integers are big-endian. A `synced` record is written as the first record of the first group after a
//! sync whose checkpoint no record names yet, so it becomes durable with that group's fdatasync, at no
//! fsync of its own; what it says is true whenever it is there at all (it is written after the sync it
//! names). Decoding checks every length against the bytes present and never panics.

use sealpost_protocol::{ChainId, Digest, LostBatch, Offset, Principal, PublicKey, Topic};

use super::codec::{principal_and_name, split_topic, take_offset, take_str, take_u64, topic_prefix};
use super::segment::Checkpoint;
use crate::store::{LossReason, LostRange, PublisherRecord};
use crate::Result;

/// Kind of a record holding a batch.
pub(super) const BATCH: u8 = 1;
/// Kind of a record naming a synced checkpoint.
pub(super) const SYNCED: u8 = 2;
/// Kind of a record holding a topic policy.
pub(super) const POLICY: u8 = 3;
/// Kind of a record holding a durable subscription's committed offset.
pub(super) const DURABLE: u8 = 4;
/// Kind of a record marking offsets lost.
pub(super) const LOST: u8 = 5;
/// Kind of a record naming the layout of the segments from it on.
pub(super) const LAYOUT: u8 = 6;
/// Kind of a record holding a batch of a chain other than the legacy one.
pub(super) const BATCH_OF_CHAIN: u8 = 7;

/// Kind of a record saying what retention removed of a topic.
pub(super) const RETIRED: u8 = 8;
/// Kind of a record keeping a chain's head once retention removed its last batch's record.
pub(super) const HEAD: u8 = 9;

/// What a batch record says of its batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct BatchRecord {
    pub topic: Topic,
    pub publisher: [u8; 32],
    /// [`ChainId::LEGACY`] for a record of kind `batch`.
    pub chain: ChainId,
    pub record: PublisherRecord,
}

impl BatchRecord {
    /// Bytes before the sealed batch in a record of `topic` and `chain`.
    pub fn prefix_len(topic: &Topic, chain: ChainId) -> usize {
        let chain_len = if chain.is_legacy() { 0 } else { 16 };
        2 + topic.as_str().len() + 8 + 4 + 32 + chain_len + 8 + 32
    }
}

/// A lost range and, when known, where its damaged bytes were: the `b` value of a lost range in the index
/// and the body of a `lost` record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Lost {
    pub range: LostRange,
    /// Segment and position of the damaged bytes.
    pub at: Option<(u64, u64)>,
}

impl Lost {
    /// Layout 3's lost ranges: no chain (the legacy one).
    pub const LAYOUT_3_LEN: usize = 8 + 1 + 1 + 32 + 8 + 32 + 8 + 8;
    pub const ENCODED_LEN: usize = Self::LAYOUT_3_LEN + 16;

    pub fn encode(&self) -> [u8; Self::ENCODED_LEN] {
        let mut out = [0u8; Self::ENCODED_LEN];
        out[..8].copy_from_slice(&self.range.count.to_be_bytes());
        out[8] = self.range.reason.encode();
        let mut flags = 0u8;
        if let Some(b) = &self.range.batch {
            flags |= 1;
            out[10..42].copy_from_slice(b.publisher.as_bytes());
            out[42..50].copy_from_slice(&b.first_seq.to_be_bytes());
            out[50..82].copy_from_slice(b.digest.as_bytes());
            out[98..].copy_from_slice(b.chain.as_bytes());
        }
        if let Some((segment, position)) = self.at {
            flags |= 2;
            out[82..90].copy_from_slice(&segment.to_be_bytes());
            out[90..98].copy_from_slice(&position.to_be_bytes());
        }
        out[9] = flags;
        out
    }

    /// The lost range starting at `offset` that `bytes` (exactly one encoding, of layout 4 or 3)
    /// describes.
    pub fn decode(offset: Offset, bytes: &[u8]) -> Option<Lost> {
        let (bytes, chain) = match bytes.len() {
            Self::LAYOUT_3_LEN => (bytes, ChainId::LEGACY),
            Self::ENCODED_LEN => {
                let (bytes, chain) = bytes.split_at(Self::LAYOUT_3_LEN);
                (bytes, ChainId(chain.try_into().ok()?))
            }
            _ => return None,
        };
        let bytes: &[u8; Self::LAYOUT_3_LEN] = bytes.try_into().ok()?;
        let (count, rest) = bytes.split_first_chunk::<8>()?;
        let (&[reason, flags], rest) = rest.split_first_chunk::<2>()?;
        let (publisher, rest) = rest.split_first_chunk::<32>()?;
        let (first_seq, rest) = rest.split_first_chunk::<8>()?;
        let (digest, rest) = rest.split_first_chunk::<32>()?;
        let (segment, position) = rest.split_first_chunk::<8>()?;
        let position: &[u8; 8] = position.try_into().ok()?;
        let count = u64::from_be_bytes(*count);
        if count == 0 || flags > 3 {
            return None;
        }
        let batch = if flags & 1 != 0 {
            Some(LostBatch {
                publisher: PublicKey::from_bytes(publisher).ok()?,
                chain,
                first_seq: u64::from_be_bytes(*first_seq),
                digest: Digest(*digest),
            })
        } else {
            None
        };
        let at = (flags & 2 != 0).then(|| (u64::from_be_bytes(*segment), u64::from_be_bytes(*position)));
        Some(Lost { range: LostRange { offset, count, batch, reason: LossReason::decode(reason)? }, at })
    }
}

/// A decoded record body.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Record<'a> {
    Batch(BatchRecord, &'a [u8]),
    Synced(Checkpoint),
    Policy {
        topic: Topic,
        epoch: u64,
        policy: &'a [u8],
    },
    Durable {
        topic: Topic,
        principal: Principal,
        name: String,
        next_offset: Offset,
    },
    Lost {
        topic: Topic,
        lost: Lost,
    },
    Layout(u32),
    Retired {
        topic: Topic,
        before: Offset,
    },
    /// A chain's head, as the `head` record keeps it: the batch record's fields without the batch.
    Head(BatchRecord),
}

impl<'a> Record<'a> {
    /// What `body` says; `None` if it is no record this layout knows.
    pub fn decode(body: &'a [u8]) -> Option<Record<'a>> {
        let (&kind, rest) = body.split_first()?;
        match kind {
            BATCH | BATCH_OF_CHAIN => {
                let (topic, rest) = split_topic(rest)?;
                let (offset, rest) = take_offset(rest)?;
                let (count, rest) = rest.split_first_chunk::<4>()?;
                let (publisher, rest) = rest.split_first_chunk::<32>()?;
                let (chain, rest) = if kind == BATCH_OF_CHAIN {
                    let (chain, rest) = rest.split_first_chunk::<16>()?;
                    // The legacy chain is written as a `batch` record only: one encoding per record.
                    (Some(ChainId(*chain)).filter(|c| !c.is_legacy())?, rest)
                } else {
                    (ChainId::LEGACY, rest)
                };
                let (first_seq, rest) = take_u64(rest)?;
                let (digest, batch) = rest.split_first_chunk::<32>()?;
                let record = PublisherRecord {
                    first_seq,
                    count: u32::from_be_bytes(*count),
                    offset,
                    digest: Digest(*digest),
                };
                Some(Record::Batch(BatchRecord { topic, publisher: *publisher, chain, record }, batch))
            }
            SYNCED => Checkpoint::decode(rest).map(Record::Synced),
            POLICY => {
                let (topic, rest) = split_topic(rest)?;
                let (epoch, policy) = take_u64(rest)?;
                Some(Record::Policy { topic, epoch, policy })
            }
            DURABLE => {
                let (topic, rest) = split_topic(rest)?;
                let (principal, rest) = take_str(rest)?;
                let principal = Principal::new(principal).ok()?;
                let (name, rest) = take_str(rest)?;
                let (next_offset, rest) = take_offset(rest)?;
                rest.is_empty().then_some(Record::Durable { topic, principal, name, next_offset })
            }
            LOST => {
                let (topic, rest) = split_topic(rest)?;
                let (offset, rest) = take_offset(rest)?;
                Some(Record::Lost { topic, lost: Lost::decode(offset, rest)? })
            }
            LAYOUT => {
                let version: &[u8; 4] = rest.try_into().ok()?;
                Some(Record::Layout(u32::from_be_bytes(*version)))
            }
            RETIRED => {
                let (topic, rest) = split_topic(rest)?;
                let (before, rest) = take_offset(rest)?;
                rest.is_empty().then_some(Record::Retired { topic, before })
            }
            HEAD => {
                let (topic, rest) = split_topic(rest)?;
                let (publisher, rest) = rest.split_first_chunk::<32>()?;
                let (chain, rest) = rest.split_first_chunk::<16>()?;
                let record = PublisherRecord::decode(rest).ok()?;
                Some(Record::Head(BatchRecord {
                    topic,
                    publisher: *publisher,
                    chain: ChainId(*chain),
                    record,
                }))
            }
            _ => None,
        }
    }

    /// A few words on what the record is, for logs: never its payload.
    pub fn describe(&self) -> String {
        match self {
            Record::Batch(b, _) => {
                format!("a batch of {} at offsets {}..{}", b.topic, b.record.offset, b.record.end())
            }
            Record::Synced(c) => format!("a sync marker (segment {}, position {})", c.segment, c.position),
            Record::Policy { topic, epoch, .. } => format!("the topic policy of {topic}, epoch {epoch}"),
            Record::Durable { topic, .. } => format!("a durable subscription's offset on {topic}"),
            Record::Lost { topic, lost } => {
                format!("a loss of offsets {}..{} of {topic}", lost.range.offset, lost.range.end())
            }
            Record::Layout(v) => format!("the layout mark (version {v})"),
            Record::Retired { topic, before } => format!("retention of {topic} below offset {before}"),
            Record::Head(b) => {
                format!("the chain head of a publisher of {} at offset {}", b.topic, b.record.offset)
            }
        }
    }
}

/// The body of a batch record up to its sealed batch: the record is this, then the batch's bytes, written
/// without copying them together ([`Segments::append`](super::segment::Segments::append) takes parts).
pub(super) fn batch_prefix(
    topic: &Topic,
    publisher: &PublicKey,
    chain: ChainId,
    record: &PublisherRecord,
) -> Vec<u8> {
    let kind = if chain.is_legacy() { BATCH } else { BATCH_OF_CHAIN };
    let mut out = topic_prefix(kind, topic, BatchRecord::prefix_len(topic, chain));
    out.extend_from_slice(&record.offset.0.to_be_bytes());
    out.extend_from_slice(&record.count.to_be_bytes());
    out.extend_from_slice(publisher.as_bytes());
    if !chain.is_legacy() {
        out.extend_from_slice(chain.as_bytes());
    }
    out.extend_from_slice(&record.first_seq.to_be_bytes());
    out.extend_from_slice(record.digest.as_bytes());
    out
}

/// The whole body of a batch record, in one buffer (tests build folders with it).
#[cfg(test)]
pub(super) fn batch(
    topic: &Topic,
    publisher: &PublicKey,
    chain: ChainId,
    record: &PublisherRecord,
    batch: &[u8],
) -> Vec<u8> {
    let mut out = batch_prefix(topic, publisher, chain, record);
    out.extend_from_slice(batch);
    out
}

/// The body of a sync marker.
pub(super) fn synced(checkpoint: Checkpoint) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + Checkpoint::ENCODED_LEN);
    out.push(SYNCED);
    out.extend_from_slice(&checkpoint.encode());
    out
}

/// The body of a policy record up to the signed policy, which follows it.
pub(super) fn policy_prefix(topic: &Topic, epoch: u64) -> Vec<u8> {
    let mut out = topic_prefix(POLICY, topic, 8);
    out.extend_from_slice(&epoch.to_be_bytes());
    out
}

/// The whole body of a policy record, in one buffer (tests check the codec with it).
#[cfg(test)]
pub(super) fn policy(topic: &Topic, epoch: u64, policy: &[u8]) -> Vec<u8> {
    let mut out = policy_prefix(topic, epoch);
    out.extend_from_slice(policy);
    out
}

/// The body of a durable-offset record.
pub(super) fn durable(
    topic: &Topic,
    principal: &Principal,
    name: &str,
    next_offset: Offset,
) -> Result<Vec<u8>> {
    let mut out = topic_prefix(DURABLE, topic, 16 + principal.as_str().len() + name.len());
    principal_and_name(&mut out, principal, name)?;
    out.extend_from_slice(&next_offset.0.to_be_bytes());
    Ok(out)
}

/// The body of a lost record.
pub(super) fn lost(topic: &Topic, lost: &Lost) -> Vec<u8> {
    let mut out = topic_prefix(LOST, topic, 8 + Lost::ENCODED_LEN);
    out.extend_from_slice(&lost.range.offset.0.to_be_bytes());
    out.extend_from_slice(&lost.encode());
    out
}

/// The body of a retired record.
pub(super) fn retired(topic: &Topic, before: Offset) -> Vec<u8> {
    let mut out = topic_prefix(RETIRED, topic, 8);
    out.extend_from_slice(&before.0.to_be_bytes());
    out
}

/// The body of a head record: what the batch record `r` said, without the batch.
pub(super) fn head(r: &BatchRecord) -> Vec<u8> {
    let mut out = topic_prefix(HEAD, &r.topic, 48 + PublisherRecord::ENCODED_LEN);
    out.extend_from_slice(&r.publisher);
    out.extend_from_slice(r.chain.as_bytes());
    out.extend_from_slice(&r.record.encode());
    out
}

/// The body of a layout record.
pub(super) fn layout(version: u32) -> Vec<u8> {
    let mut out = vec![LAYOUT];
    out.extend_from_slice(&version.to_be_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topic() -> Topic {
        Topic::new("demo.record").unwrap()
    }

    fn publisher() -> PublicKey {
        sealpost_protocol::SigningKey::from_bytes(&[2; 32]).public_key()
    }

    #[test]
    fn every_kind_round_trips() {
        let r = PublisherRecord { first_seq: 9, count: 3, offset: Offset(77), digest: Digest([5; 32]) };
        let body = batch(&topic(), &publisher(), ChainId::LEGACY, &r, b"sealed");
        assert_eq!(body.len(), BatchRecord::prefix_len(&topic(), ChainId::LEGACY) + 6);
        assert_eq!(body[0], BATCH);
        let expected = BatchRecord {
            topic: topic(),
            publisher: *publisher().as_bytes(),
            chain: ChainId::LEGACY,
            record: r,
        };
        assert_eq!(Record::decode(&body), Some(Record::Batch(expected, &b"sealed"[..])));
        // Any other chain: a record of its own kind that names the chain.
        let body = batch(&topic(), &publisher(), ChainId([9; 16]), &r, b"sealed");
        assert_eq!(body.len(), BatchRecord::prefix_len(&topic(), ChainId::LEGACY) + 16 + 6);
        assert_eq!(body[0], BATCH_OF_CHAIN);
        let expected = BatchRecord {
            topic: topic(),
            publisher: *publisher().as_bytes(),
            chain: ChainId([9; 16]),
            record: r,
        };
        assert_eq!(Record::decode(&body), Some(Record::Batch(expected, &b"sealed"[..])));
        // The legacy chain has one record kind only.
        let mut twin = batch(&topic(), &publisher(), ChainId([9; 16]), &r, b"sealed");
        let at = 2 + topic().as_str().len() + 8 + 4 + 32;
        twin[at..at + 16].fill(0);
        assert_eq!(Record::decode(&twin), None);
        let c = Checkpoint { segment: 3, position: 99 };
        assert_eq!(Record::decode(&synced(c)), Some(Record::Synced(c)));
        assert_eq!(
            Record::decode(&policy(&topic(), 4, b"signed")),
            Some(Record::Policy { topic: topic(), epoch: 4, policy: b"signed" })
        );
        assert_eq!(
            Record::decode(&durable(&topic(), &"bob".parse().unwrap(), "main", Offset(12)).unwrap()),
            Some(Record::Durable {
                topic: topic(),
                principal: "bob".parse().unwrap(),
                name: "main".into(),
                next_offset: Offset(12)
            })
        );
        let batch_lost = LostBatch {
            publisher: publisher(),
            chain: ChainId([3; 16]),
            first_seq: 9,
            digest: Digest([5; 32]),
        };
        for l in [
            Lost {
                range: LostRange {
                    offset: Offset(77),
                    count: 3,
                    batch: Some(batch_lost),
                    reason: LossReason::Corrupt,
                },
                at: Some((4, 1 << 33)),
            },
            Lost {
                range: LostRange { offset: Offset(7), count: 1, batch: None, reason: LossReason::Replaced },
                at: None,
            },
        ] {
            assert_eq!(Record::decode(&lost(&topic(), &l)), Some(Record::Lost { topic: topic(), lost: l }));
            assert_eq!(Lost::decode(l.range.offset, &l.encode()), Some(l));
        }
        assert_eq!(Record::decode(&layout(3)), Some(Record::Layout(3)));
        assert_eq!(
            Record::decode(&retired(&topic(), Offset(40))),
            Some(Record::Retired { topic: topic(), before: Offset(40) })
        );
        for chain in [ChainId::LEGACY, ChainId([9; 16])] {
            let b = BatchRecord { topic: topic(), publisher: *publisher().as_bytes(), chain, record: r };
            assert_eq!(Record::decode(&head(&b)), Some(Record::Head(b)));
        }
    }

    #[test]
    fn a_layout_3_lost_range_reads_as_the_legacy_chain() {
        let batch = LostBatch {
            publisher: publisher(),
            chain: ChainId::LEGACY,
            first_seq: 9,
            digest: Digest([5; 32]),
        };
        let l = Lost {
            range: LostRange {
                offset: Offset(77),
                count: 3,
                batch: Some(batch),
                reason: LossReason::Corrupt,
            },
            at: Some((4, 8)),
        };
        // Layout 3 wrote the same bytes without the chain at the end.
        let old = &l.encode()[..Lost::LAYOUT_3_LEN];
        assert_eq!(Lost::decode(Offset(77), old), Some(l));
        assert_eq!(Lost::decode(Offset(77), &l.encode()[..Lost::LAYOUT_3_LEN + 3]), None);
    }

    #[test]
    fn garbage_decodes_to_nothing() {
        let r = PublisherRecord { first_seq: 1, count: 1, offset: Offset(0), digest: Digest::ZERO };
        let body = batch(&topic(), &publisher(), ChainId::LEGACY, &r, b"x");
        assert!(Record::decode(&body[..20]).is_none());
        assert!(Record::decode(&[BATCH, 1, b'a']).is_none());
        assert!(Record::decode(&[]).is_none());
        assert!(Record::decode(&[0]).is_none());
        assert!(Record::decode(&[77, 1, 2, 3]).is_none());
        let mut d = durable(&topic(), &"bob".parse().unwrap(), "main", Offset(1)).unwrap();
        d.push(0);
        assert!(Record::decode(&d).is_none());
        assert!(Lost::decode(Offset(0), &[0; Lost::ENCODED_LEN]).is_none(), "no empty range");
        assert!(Record::decode(&layout(3)[..4]).is_none());
    }
}
