//! What recovery knows of damaged bytes: the batch a damaged record held ([`Hint`]), what it claimed, and
//! whether records found by scanning past damage prove themselves ([`batch_verifies`], [`policy_verifies`]).
//!
//! Sealed batches and topic policies carry their authors' signatures, so bytes that still verify say who
//! wrote them even when the record around them is damaged; bytes that do not verify are only believed as
//! far as the offsets around them confirm them. Used by [`recovery`](super) at start and by
//! [`verify`](super::super::verify).

use bytes::Bytes;
use sealpost_protocol::{ChainId, Limits, LostBatch, Offset, PublicKey, SealedBatch, SignedPolicy, Topic};

use super::super::record::{BatchRecord, Lost, Record};
use crate::store::{LossReason, LostRange, PublisherRecord};

/// Limits for judging stored batches and policies: the broker accepted them under its own limits once.
const STORED: Limits = Limits {
    max_frame_len: u32::MAX,
    max_batch_len: u32::MAX,
    max_batch_messages: u32::MAX,
    max_policy_members: u32::MAX,
};

/// A batch's details as a damaged record gives them: from the sealed batch in it when that still verifies
/// its signature (then only the offset comes from the record's damaged header), else from the record's
/// header (which the damage then spared, if it is one flipped bit).
#[derive(Clone, Debug)]
pub(in crate::store::disk) struct Hint {
    pub topic: Topic,
    pub publisher: PublicKey,
    pub chain: ChainId,
    pub record: PublisherRecord,
    /// The sealed batch verified: everything but the offset is its publisher's word.
    pub verified: bool,
}

impl Hint {
    /// The hint a damaged record's bytes give, if any. A flip in the record's kind or topic length makes
    /// it undecodable as a batch record: then every topic length is tried for a sealed batch that verifies.
    pub fn of(claimed: &[u8]) -> Option<Hint> {
        if let Some(Record::Batch(r, sealed)) = Record::decode(claimed) {
            if let Some(hint) = Self::from_record(r, sealed) {
                return Some(hint);
            }
        }
        // A flipped kind can make a batch look like another record, or like nothing.
        // (A batch of a chain has 16 bytes more of fields: its chain id.)
        (1..=255usize).flat_map(|topic_len| [(topic_len, 84), (topic_len, 100)]).find_map(
            |(topic_len, fields)| {
                let offset = claimed.get(2 + topic_len..2 + topic_len + 8)?;
                let sealed = claimed.get(2 + topic_len + fields..)?;
                let batch =
                    SealedBatch::decode(Bytes::copy_from_slice(sealed), &STORED).ok()?.verify().ok()?;
                let header = batch.header();
                let record = PublisherRecord {
                    first_seq: header.first_seq,
                    count: header.count,
                    offset: Offset(u64::from_be_bytes(offset.try_into().ok()?)),
                    digest: batch.digest(),
                };
                Some(Hint {
                    topic: header.topic.clone(),
                    publisher: header.publisher,
                    chain: header.chain,
                    record,
                    verified: true,
                })
            },
        )
    }

    fn from_record(r: BatchRecord, sealed: &[u8]) -> Option<Hint> {
        let verified =
            SealedBatch::decode(Bytes::copy_from_slice(sealed), &STORED).and_then(SealedBatch::verify);
        if let Ok(batch) = verified {
            let header = batch.header();
            let record = PublisherRecord {
                first_seq: header.first_seq,
                count: header.count,
                offset: r.record.offset,
                digest: batch.digest(),
            };
            return Some(Hint {
                topic: header.topic.clone(),
                publisher: header.publisher,
                chain: header.chain,
                record,
                verified: true,
            });
        }
        // The sealed batch is damaged, so one flipped bit left the record's header intact; more damage than
        // that could make it say anything, so it must at least name a count a batch can have. Everything
        // it is used for is cross-checked with the offsets around it.
        let publisher = PublicKey::from_bytes(&r.publisher).ok()?;
        let plausible = (1..=Limits::default().max_batch_messages).contains(&r.record.count);
        plausible.then_some(Hint {
            topic: r.topic,
            publisher,
            chain: r.chain,
            record: r.record,
            verified: false,
        })
    }

    pub(super) fn lost(&self, at: (u64, u64)) -> Lost {
        Lost {
            range: LostRange {
                offset: self.record.offset,
                count: self.record.count.into(),
                batch: Some(LostBatch {
                    publisher: self.publisher,
                    chain: self.chain,
                    first_seq: self.record.first_seq,
                    digest: self.record.digest,
                }),
                reason: LossReason::Corrupt,
            },
            at: Some(at),
        }
    }
}

/// Damaged bytes inside the acknowledged extent, found by the walk.
#[derive(Debug)]
pub(super) struct Damage {
    pub segment: u64,
    pub position: u64,
    pub len: u64,
    /// The damage runs to the end of its segment.
    pub to_end: bool,
    /// What the damaged record looked like, when its length could be trusted.
    pub looked_like: Option<String>,
    pub hint: Option<Hint>,
    /// What a damaged batch record's header claims (topic, offset, count) when no full hint could be had:
    /// the count from the sealed header inside it if that is of the same topic, else the record's own if
    /// it is a count a batch can have.
    pub claim: Option<(Topic, Offset, u64)>,
    /// A policy record whose signed policy still verifies, with its topic and epoch.
    pub policy: Option<(Topic, u64, Vec<u8>)>,
    /// A loss (or an index entry) accounts for it.
    pub explained: bool,
}

impl Damage {
    /// Damage found by the walk in segment `segment`: `len` bytes from `position` (`to_end`: to the end
    /// of the segment), with the damaged record's bytes when the walk knows them (`claimed`); `explained`
    /// when an index entry says a record starts inside it (it is judged with the entries).
    pub fn new(
        segment: u64,
        position: u64,
        len: u64,
        to_end: bool,
        claimed: Option<&[u8]>,
        explained: bool,
    ) -> Self {
        let decoded = claimed.and_then(Record::decode);
        Damage {
            segment,
            position,
            len,
            to_end,
            looked_like: decoded.as_ref().map(Record::describe),
            hint: claimed.and_then(Hint::of),
            claim: claimed.and_then(claim_of),
            policy: match decoded {
                Some(Record::Policy { topic, epoch, policy }) if policy_verifies(&topic, epoch, policy) => {
                    Some((topic, epoch, policy.to_vec()))
                }
                _ => None,
            },
            explained,
        }
    }
}

/// The loss that explains the hole `from..to` of `topic`: the damage whose header names exactly that
/// batch, else the latest damage no loss explains yet. `None` if no damage can explain it.
pub(super) fn explain_hole(damage: &mut [Damage], topic: &Topic, from: Offset, to: Offset) -> Option<Lost> {
    let exact = damage.iter().position(|d| {
        !d.explained
            && d.hint
                .as_ref()
                .is_some_and(|h| h.topic == *topic && h.record.offset == from && h.record.end() == to)
    });
    let chosen = exact.or_else(|| damage.iter().rposition(|d| !d.explained))?;
    let damage = damage.get_mut(chosen)?;
    damage.explained = true;
    let at = (damage.segment, damage.position);
    Some(match (exact, &damage.hint) {
        (Some(_), Some(hint)) => hint.lost(at),
        _ => Lost {
            range: LostRange {
                offset: from,
                count: to.saturating_count_from(from),
                batch: None,
                reason: LossReason::Corrupt,
            },
            at: Some(at),
        },
    })
}

/// The topic, offset and count a damaged batch record claims (see [`Damage::claim`]).
pub(super) fn claim_of(claimed: &[u8]) -> Option<(Topic, Offset, u64)> {
    let Some(Record::Batch(r, sealed)) = Record::decode(claimed) else { return None };
    let count = match SealedBatch::decode(Bytes::copy_from_slice(sealed), &STORED) {
        Ok(batch) if batch.header().topic == r.topic => batch.header().count,
        _ if (1..=Limits::default().max_batch_messages).contains(&r.record.count) => r.record.count,
        _ => return None,
    };
    Some((r.topic, r.record.offset, count.into()))
}

/// Whether the sealed batch in a record found by scanning past damage is one its publisher signed, and
/// agrees with the record around it.
pub(super) fn batch_verifies(r: &BatchRecord, sealed: &[u8]) -> bool {
    let Ok(batch) =
        SealedBatch::decode(Bytes::copy_from_slice(sealed), &STORED).and_then(SealedBatch::verify)
    else {
        return false;
    };
    let h = batch.header();
    h.topic == r.topic
        && h.publisher.as_bytes() == &r.publisher
        && h.chain == r.chain
        && h.first_seq == r.record.first_seq
        && h.count == r.record.count
        && batch.digest() == r.record.digest
}

/// Whether `policy` is a topic policy of `topic` and `epoch` that its own authority signed.
pub(super) fn policy_verifies(topic: &Topic, epoch: u64, policy: &[u8]) -> bool {
    let Ok(signed) = SignedPolicy::decode(Bytes::copy_from_slice(policy), &STORED) else { return false };
    if signed.topic() != topic || signed.epoch().0 != epoch {
        return false;
    }
    let authority = *signed.authority();
    signed.verify(&authority).is_ok()
}
