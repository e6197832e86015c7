//! The index: the sled database that says where each record of the segments is, its key layout, the
//! codecs of its keys and values, and the queries the engine runs on it.
//!
//! Sled holds the index, in one tree (sled's default tree). It is a cache of the segments: everything in
//! it can be rebuilt from them alone (see [`recovery`](super::recovery)). Every key starts with a one-byte
//! kind and the length-prefixed topic, and every integer is big-endian, so a range scan visits a topic's
//! keys in numeric order and two topics never share a prefix (`a` and `a.b` differ in their length byte):
//!
//! ```text
//! b | topic_len u8 | topic | offset u64                          -> count u32 | location [24] | publisher [32] | first_seq u64
//!                                                                   | chain [16] (84 bytes: a batch; layout 3: 68, no chain)
//!                                                                or lost [114] (a lost range, see record; layout 3: [98])
//! p | topic_len u8 | topic | publisher [32] | first_seq u64      -> first_seq u64 | count u32 | offset u64 | digest [32]
//!                                                                   (the legacy chain: batches of format version 1)
//! c | topic_len u8 | topic | publisher [32] | chain [16] | first_seq u64
//!                                                                -> the same, for any other chain (format version 2)
//! d | topic_len u8 | topic | len u32 | principal | len u32 | name -> next_offset u64 | segment u64 | position u64
//!                                                                   (where its record is; layout 2: next_offset only)
//! y | topic_len u8 | topic | epoch u64                           -> signed topic policy bytes
//! t | topic_len u8 | topic                                       -> (empty: the topic has batches)
//! r | topic_len u8 | topic                                       -> retired u64: every offset below it was removed
//!                                                                   by retention (layout 5)
//! m | "layout"                                                   -> layout version u32 (4)
//! m | "layout3_from"                                             -> the first segment written in layout 3, u64
//! m | "checkpoint"                                               -> segment u64 | position u64
//! ```
//!
//! Layout 4 is layout 3 plus the chain of each batch: the `c` keys, and the chain in `b` values of batches
//! and lost ranges. The legacy chain ([`ChainId::LEGACY`], every batch a layout-3 folder holds) keeps
//! layout 3's `p` key, and a `b` value of layout 3's length reads as the legacy chain, so a layout-3 index
//! is a layout-4 index as it stands: opening one only rewrites its layout key (which keeps a layout-3
//! build from opening the folder afterwards). A chain's keys are one contiguous range either way.
//!
//! Layout 5 is layout 4 plus retention: the `r` keys, and the `retired` and `head` records of the segments
//! (see [`record`](super::record)). A layout-4 index is a layout-5 index as it stands.
//!
//! Every offset of a topic from its `r` value (0 without one) on is covered by exactly one `b` key, a
//! batch or a lost range: the last one gives the topic's next offset (the `r` value if there is none), the last `p` (or `c`) key of a (topic, publisher, chain) its chain head (a lost batch keeps its
//! `p` key, so its publisher's chain continues). A write appends its record to the active segment, then
//! updates the index (for a batch: its `t` key if new, its `b` key, its `p` key, in that order). The
//! checkpoint says up to where every record is indexed **and** the index durable.
//!
//! Decoding never trusts a value: a key or value that does not decode is a "corrupt store" error, and
//! [`scan`] checks every entry when the store opens.

use sealpost_protocol::{ChainId, DurableKey, Offset, Principal, PublicKey, Topic};

use super::codec::{corrupt, principal_and_name, split_topic, take_str, topic_prefix, u32_at, u64_at};
use super::record::{Lost, Record};
use super::segment::Location;
use crate::store::{io_error, PublisherRecord};
use crate::{Error, Result};

/// Version of the key layout above, stored under `m | "layout"`.
pub(super) const LAYOUT_VERSION: u32 = 5;
/// The layout before retention: the same keys without `r` keys, read as it stands.
pub(super) const LAYOUT_4: u32 = 4;
/// The previous layout: the same keys without `c` keys and chains, read as it stands.
pub(super) const LAYOUT_3: u32 = 3;
pub(super) const LAYOUT_KEY: &[u8] = b"mlayout";
pub(super) const LAYOUT3_FROM_KEY: &[u8] = b"mlayout3_from";
pub(super) const CHECKPOINT_KEY: &[u8] = b"mcheckpoint";

pub(super) const BATCH: u8 = b'b';
pub(super) const PUBLISHER: u8 = b'p';
pub(super) const CHAIN: u8 = b'c';
pub(super) const DURABLE: u8 = b'd';
pub(super) const POLICY: u8 = b'y';
pub(super) const TOPIC: u8 = b't';
pub(super) const RETIRED: u8 = b'r';

/// A sled error as the store reports it: I/O errors as I/O (a full device is [`Error::StorageFull`]).
pub(super) fn sled_error(e: sled::Error) -> Error {
    match e {
        sled::Error::Io(io) => io_error("sled", &io),
        other => Error::Storage(format!("sled: {other}")),
    }
}

/// The `t` key of `topic`.
pub(super) fn topic_key(topic: &Topic) -> Vec<u8> {
    topic_prefix(TOPIC, topic, 0)
}

/// The `r` key of `topic`.
pub(super) fn retired_key(topic: &Topic) -> Vec<u8> {
    topic_prefix(RETIRED, topic, 0)
}

/// The offset below which `topic`'s batches were removed by retention (0 if none were).
pub(super) fn retired(db: &sled::Db, topic: &Topic) -> Result<Offset> {
    match db.get(retired_key(topic)).map_err(sled_error)? {
        Some(v) => u64_at(&v, 0).map(Offset),
        None => Ok(Offset::ZERO),
    }
}

/// The `b` key of `topic` at `offset`.
pub(super) fn batch_key(topic: &Topic, offset: Offset) -> Vec<u8> {
    let mut key = topic_prefix(BATCH, topic, 8);
    key.extend_from_slice(&offset.0.to_be_bytes());
    key
}

fn publisher_key_bytes(topic: &Topic, publisher: &[u8; 32], chain: ChainId, first_seq: u64) -> Vec<u8> {
    let mut key = if chain.is_legacy() {
        topic_prefix(PUBLISHER, topic, 40)
    } else {
        let mut key = topic_prefix(CHAIN, topic, 56);
        key.extend_from_slice(publisher);
        key.extend_from_slice(chain.as_bytes());
        key.extend_from_slice(&first_seq.to_be_bytes());
        return key;
    };
    key.extend_from_slice(publisher);
    key.extend_from_slice(&first_seq.to_be_bytes());
    key
}

/// The `p` key (legacy chain) or `c` key (any other) of the batch of `publisher`'s chain `chain` on
/// `topic` from `first_seq`.
pub(super) fn publisher_key(topic: &Topic, publisher: &PublicKey, chain: ChainId, first_seq: u64) -> Vec<u8> {
    publisher_key_bytes(topic, publisher.as_bytes(), chain, first_seq)
}

/// [`publisher_key`] from the key's bytes, as a record holds them.
pub(super) fn publisher_key_of(
    topic: &Topic,
    publisher: &[u8; 32],
    chain: ChainId,
    first_seq: u64,
) -> Vec<u8> {
    publisher_key_bytes(topic, publisher, chain, first_seq)
}

/// The `d` key of a durable subscription.
pub(super) fn durable_key(topic: &Topic, principal: &Principal, name: &str) -> Result<Vec<u8>> {
    let mut key = topic_prefix(DURABLE, topic, 8 + principal.as_str().len() + name.len());
    principal_and_name(&mut key, principal, name)?;
    Ok(key)
}

/// The key just after `key` in sled's order: where a scan resumes after it.
fn after_key(mut key: Vec<u8>) -> Vec<u8> {
    key.push(0);
    key
}

/// Up to `max` topics with a `t` key, in key order (by name length, then name), after `after`.
pub(super) fn topics(db: &sled::Db, after: Option<&Topic>, max: usize) -> Result<Vec<Topic>> {
    let start = after.map_or_else(|| vec![TOPIC], |t| after_key(topic_key(t)));
    let mut out = Vec::new();
    for entry in db.range(start..).take(max) {
        let (key, _) = entry.map_err(sled_error)?;
        let Some((&TOPIC, rest)) = key.split_first() else { break };
        let (topic, rest) = split_topic(rest).ok_or_else(|| corrupt("topic key"))?;
        if !rest.is_empty() {
            return Err(corrupt("topic key"));
        }
        out.push(topic);
    }
    Ok(out)
}

/// Up to `max` durable subscriptions (`d` keys) with their committed offsets, in key order, after `after`.
pub(super) fn durables(
    db: &sled::Db,
    after: Option<&DurableKey>,
    max: usize,
) -> Result<Vec<(DurableKey, Offset)>> {
    let start = match after {
        Some(k) => after_key(durable_key(&k.topic, &k.principal, &k.name)?),
        None => vec![DURABLE],
    };
    let mut out = Vec::new();
    for entry in db.range(start..).take(max) {
        let (key, value) = entry.map_err(sled_error)?;
        let Some((&DURABLE, rest)) = key.split_first() else { break };
        let decoded = split_topic(rest).and_then(|(topic, rest)| {
            let (principal, rest) = take_str(rest)?;
            let (name, rest) = take_str(rest)?;
            let principal = Principal::new(&principal).ok()?;
            rest.is_empty().then_some(DurableKey { topic, principal, name })
        });
        let key = decoded.ok_or_else(|| corrupt("durable subscription key"))?;
        let (offset, _) = decode_durable(&value).ok_or_else(|| corrupt("durable offset"))?;
        out.push((key, offset));
    }
    Ok(out)
}

/// A `d` value: the committed offset and where the record that committed it is (so that recovery, which
/// replays the segments from an older checkpoint, never puts an older commit over it). Layout 2 values
/// hold the offset only.
pub(super) fn durable_value(next_offset: Offset, at: Option<Location>) -> Vec<u8> {
    let mut value = next_offset.0.to_be_bytes().to_vec();
    if let Some(at) = at {
        value.extend_from_slice(&at.segment.to_be_bytes());
        value.extend_from_slice(&at.position.to_be_bytes());
    }
    value
}

/// Inverse of [`durable_value`]: the offset, and where its record is if the value says.
pub(super) fn decode_durable(value: &[u8]) -> Option<(Offset, Option<(u64, u64)>)> {
    let offset = Offset(u64_at(value, 0).ok()?);
    match value.len() {
        8 => Some((offset, None)),
        24 => Some((offset, Some((u64_at(value, 8).ok()?, u64_at(value, 16).ok()?)))),
        _ => None,
    }
}

/// The `y` key of `topic`'s policy of `epoch`.
pub(super) fn policy_key(topic: &Topic, epoch: u64) -> Vec<u8> {
    let mut key = topic_prefix(POLICY, topic, 8);
    key.extend_from_slice(&epoch.to_be_bytes());
    key
}

/// A `b` entry that names a batch: where it is and whose it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Entry {
    pub offset: Offset,
    pub count: u32,
    pub location: Location,
    pub publisher: [u8; 32],
    pub first_seq: u64,
    pub chain: ChainId,
}

impl Entry {
    /// Layout 3's entries: no chain (the legacy one).
    const LAYOUT_3_LEN: usize = 4 + Location::ENCODED_LEN + 32 + 8;
    const ENCODED_LEN: usize = Self::LAYOUT_3_LEN + 16;

    pub fn end(&self) -> Offset {
        self.offset.saturating_add(self.count.into())
    }

    pub fn encode(&self) -> [u8; Self::ENCODED_LEN] {
        let mut out = [0u8; Self::ENCODED_LEN];
        let (count, rest) = out.split_at_mut(4);
        let (location, rest) = rest.split_at_mut(Location::ENCODED_LEN);
        let (publisher, rest) = rest.split_at_mut(32);
        let (first_seq, chain) = rest.split_at_mut(8);
        count.copy_from_slice(&self.count.to_be_bytes());
        location.copy_from_slice(&self.location.encode());
        publisher.copy_from_slice(&self.publisher);
        first_seq.copy_from_slice(&self.first_seq.to_be_bytes());
        chain.copy_from_slice(self.chain.as_bytes());
        out
    }

    fn decode(offset: Offset, value: &[u8]) -> Result<Entry> {
        let chain = match value.len() {
            Self::LAYOUT_3_LEN => ChainId::LEGACY,
            Self::ENCODED_LEN => {
                ChainId(value[Self::LAYOUT_3_LEN..].try_into().map_err(|_| corrupt("batch index entry"))?)
            }
            _ => return Err(corrupt("batch index entry")),
        };
        let location = Location::decode(&value[4..4 + Location::ENCODED_LEN])
            .ok_or_else(|| corrupt("batch location"))?;
        let publisher_at = 4 + Location::ENCODED_LEN;
        Ok(Entry {
            offset,
            count: u32_at(value, 0)?,
            location,
            publisher: value[publisher_at..publisher_at + 32].try_into().map_err(|_| corrupt("publisher"))?,
            first_seq: u64_at(value, publisher_at + 32)?,
            chain,
        })
    }

    /// Its `p` or `c` key.
    pub fn publisher_key(&self, topic: &Topic) -> Vec<u8> {
        publisher_key_bytes(topic, &self.publisher, self.chain, self.first_seq)
    }

    /// Whether `body` is this entry's record: a batch record of `topic` at its offset and count.
    pub fn matches(&self, topic: &Topic, body: &[u8]) -> bool {
        matches!(Record::decode(body), Some(Record::Batch(r, _))
            if r.topic == *topic && r.record.offset == self.offset && r.record.count == self.count
                && r.publisher == self.publisher && r.record.first_seq == self.first_seq
                && r.chain == self.chain)
    }
}

/// What a `b` key holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Slot {
    Batch(Entry),
    /// Boxed: rare, and large next to a batch.
    Lost(Box<Lost>),
}

impl Slot {
    /// From a `b` key and its value.
    pub fn decode(key: &[u8], value: &[u8]) -> Result<Slot> {
        let offset = Offset(u64_at(key, key.len().saturating_sub(8))?);
        match value.len() {
            Entry::LAYOUT_3_LEN | Entry::ENCODED_LEN => Entry::decode(offset, value).map(Slot::Batch),
            Lost::LAYOUT_3_LEN | Lost::ENCODED_LEN => Lost::decode(offset, value)
                .map(|l| Slot::Lost(Box::new(l)))
                .ok_or_else(|| corrupt("lost range index entry")),
            _ => Err(corrupt("batch index entry")),
        }
    }

    pub fn offset(&self) -> Offset {
        match self {
            Slot::Batch(e) => e.offset,
            Slot::Lost(l) => l.range.offset,
        }
    }

    pub fn end(&self) -> Offset {
        match self {
            Slot::Batch(e) => e.end(),
            Slot::Lost(l) => l.range.end(),
        }
    }
}

/// The slot of `topic` with the highest offset.
pub(super) fn last_slot(db: &sled::Db, topic: &Topic) -> Result<Option<Slot>> {
    match db.range(batch_key(topic, Offset::ZERO)..=batch_key(topic, Offset::MAX)).next_back() {
        Some(kv) => {
            let (k, v) = kv.map_err(sled_error)?;
            Slot::decode(&k, &v).map(Some)
        }
        None => Ok(None),
    }
}

/// The offset after the last slot of `topic`: its next offset (where retention left it, if it removed
/// every batch).
pub(super) fn end_of(db: &sled::Db, topic: &Topic) -> Result<Offset> {
    match last_slot(db, topic)? {
        Some(slot) => Ok(slot.end()),
        None => retired(db, topic),
    }
}

/// The first offset of `topic` that retention did not remove (0 for a topic it never touched).
pub(super) fn first_offset(db: &sled::Db, topic: &Topic) -> Result<Offset> {
    retired(db, topic)
}

/// The slot that contains `from`, if there is one, else `from`: where a read from `from` starts.
pub(super) fn read_start(db: &sled::Db, topic: &Topic, from: Offset) -> Result<Offset> {
    match db.range(batch_key(topic, Offset::ZERO)..=batch_key(topic, from)).next_back() {
        Some(kv) => {
            let (k, v) = kv.map_err(sled_error)?;
            let slot = Slot::decode(&k, &v)?;
            Ok(if slot.end() > from { slot.offset() } else { from })
        }
        None => Ok(from),
    }
}

/// The slots of `topic` from `start` on, in offset order.
pub(super) fn slots_from(db: &sled::Db, topic: &Topic, start: Offset) -> impl Iterator<Item = Result<Slot>> {
    db.range(batch_key(topic, start)..=batch_key(topic, Offset::MAX)).map(|kv| {
        let (k, v) = kv.map_err(sled_error)?;
        Slot::decode(&k, &v)
    })
}

/// Up to `max` batch entries of `topic` from offset `from` on, and the offset to continue from (`None`
/// at the end).
pub(super) fn batch_entries(
    db: &sled::Db,
    topic: &Topic,
    from: Offset,
    max: usize,
) -> Result<(Vec<Entry>, Option<Offset>)> {
    let mut entries = Vec::new();
    let mut next = None;
    for (i, slot) in slots_from(db, topic, from).enumerate() {
        let slot = slot?;
        if i == max {
            next = Some(slot.offset());
            break;
        }
        if let Slot::Batch(entry) = slot {
            entries.push(entry);
        }
    }
    Ok((entries, next))
}

/// The publisher record under `key`, if there is one.
pub(super) fn publisher_record(db: &sled::Db, key: &[u8]) -> Result<Option<PublisherRecord>> {
    match db.get(key).map_err(sled_error)? {
        Some(v) => PublisherRecord::decode(&v).map(Some),
        None => Ok(None),
    }
}

/// The record of the last batch of `publisher`'s chain `chain` on `topic`.
pub(super) fn publisher_head(
    db: &sled::Db,
    topic: &Topic,
    publisher: &PublicKey,
    chain: ChainId,
) -> Result<Option<PublisherRecord>> {
    let range = publisher_key(topic, publisher, chain, 0)..=publisher_key(topic, publisher, chain, u64::MAX);
    match db.range(range).values().next_back() {
        Some(v) => PublisherRecord::decode(&v.map_err(sled_error)?).map(Some),
        None => Ok(None),
    }
}

/// The index writes that record `lost` of `topic`: its `b` value, its `p` key if the index lacks it,
/// and the topic's `t` key if `new_topic`.
pub(super) fn lost_writes(
    db: &sled::Db,
    topic: &Topic,
    lost: &Lost,
    new_topic: bool,
) -> std::result::Result<sled::Batch, sled::Error> {
    let mut writes = sled::Batch::default();
    writes.insert(batch_key(topic, lost.range.offset), &lost.encode()[..]);
    if let Some(b) = lost.range.batch {
        let key = publisher_key(topic, &b.publisher, b.chain, b.first_seq);
        if let (None, Ok(count)) = (db.get(&key)?, u32::try_from(lost.range.count)) {
            let r = PublisherRecord {
                first_seq: b.first_seq,
                count,
                offset: lost.range.offset,
                digest: b.digest,
            };
            writes.insert(key, &r.encode()[..]);
        }
    }
    if new_topic {
        writes.insert(topic_key(topic), &[][..]);
    }
    Ok(writes)
}

/// Reads every key and value of the index and checks that it decodes: sled reads a page from its files
/// only when it is needed, and a damaged one fails then (see [`open`](super::open)), so this is where
/// damage that opening did not notice comes out, before anything is served.
pub(super) fn scan(db: &sled::Db) -> std::result::Result<(), String> {
    // Each topic's `b` keys come in offset order, and cover its offsets without a hole.
    let mut last: Option<(Vec<u8>, Offset)> = None;
    for kv in db.iter() {
        let (key, value) = kv.map_err(|e| format!("reading it: {e}"))?;
        let decodes = match key.split_first() {
            Some((&BATCH, _)) => match Slot::decode(&key, &value) {
                Ok(slot) => {
                    let prefix = key[..key.len().saturating_sub(8)].to_vec();
                    let expected = match &last {
                        Some((p, end)) if *p == prefix => *end,
                        _ => match db.get([&[RETIRED][..], &prefix[1..]].concat()) {
                            Ok(Some(v)) => Offset(u64_at(&v, 0).map_err(|e| e.to_string())?),
                            Ok(None) => Offset::ZERO,
                            Err(e) => return Err(format!("reading it: {e}")),
                        },
                    };
                    if slot.offset() != expected {
                        return Err(format!(
                            "a topic's offsets have a hole at {expected}..{}",
                            slot.offset()
                        ));
                    }
                    last = Some((prefix, slot.end()));
                    true
                }
                Err(_) => false,
            },
            Some((&PUBLISHER, rest)) => {
                split_topic(rest).is_some_and(|(_, r)| r.len() == 40)
                    && PublisherRecord::decode(&value).is_ok()
            }
            Some((&CHAIN, rest)) => {
                split_topic(rest).is_some_and(|(_, r)| r.len() == 56)
                    && PublisherRecord::decode(&value).is_ok()
            }
            Some((&DURABLE, rest)) => split_topic(rest).is_some() && decode_durable(&value).is_some(),
            Some((&POLICY, rest)) => split_topic(rest).is_some_and(|(_, r)| r.len() == 8),
            Some((&TOPIC, rest)) => split_topic(rest).is_some_and(|(_, r)| r.is_empty()),
            Some((&RETIRED, rest)) => {
                split_topic(rest).is_some_and(|(_, r)| r.is_empty()) && value.len() == 8
            }
            Some((b'm', _)) => true,
            _ => false,
        };
        if !decodes {
            return Err(format!("an entry does not decode (key {:?})", String::from_utf8_lossy(&key)));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topic(s: &str) -> Topic {
        Topic::new(s).unwrap()
    }

    #[test]
    fn batch_keys_sort_by_offset_within_a_topic() {
        let t = topic("demo.chat");
        let keys: Vec<_> =
            [0u64, 1, 255, 256, 1 << 40, u64::MAX].iter().map(|&o| batch_key(&t, Offset(o))).collect();
        assert!(keys.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn topic_prefixes_do_not_overlap() {
        let (a, ab) = (batch_key(&topic("a"), Offset(0)), batch_key(&topic("a.b"), Offset(0)));
        assert!(!ab.starts_with(&a[..a.len() - 8]));
    }
}
