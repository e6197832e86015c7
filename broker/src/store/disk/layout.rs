//! Which layout a data folder is in, and the one-time migration that brings a layout-2 folder to 3.
//!
//! Layout 3 (this one) keeps every record in the segments: batches, topic policies, durable offsets,
//! losses, sync markers and a layout mark ([`record`]); the index can be rebuilt from them alone. Layout 2
//! kept policies and durable offsets in sled only. It is read, and migrated on its first open: every
//! policy and durable offset is appended to the segments after a layout mark, once, and the layout key
//! becomes 3. Layout 1 (batch bytes inside sled) was never released and is refused by
//! [`open_index`](super::open::open_index).
//!
//! The index remembers the first segment written in layout 3 (`m | "layout3_from"`): bad bytes at the end
//! of an earlier segment may be a torn tail that a layout-2 recovery left in place, a note rather than
//! corruption.

use super::codec::{corrupt, split_topic, topic_prefix, u64_at};
use super::index::{
    decode_durable, durable_value, sled_error, DURABLE, LAYOUT3_FROM_KEY, LAYOUT_KEY, LAYOUT_VERSION, POLICY,
};
use super::journal::{Journal, Reserve};
use super::open::IndexState;
use super::record::{self, Record};
use crate::Result;

/// The first segment written in layout 3, as the index of `state` says (`u64::MAX` when it says nothing).
pub(super) fn layout3_from(db: &sled::Db, state: &IndexState) -> Result<u64> {
    Ok(match state {
        IndexState::Layout3 => match db.get(LAYOUT3_FROM_KEY).map_err(sled_error)? {
            Some(v) => u64_at(&v, 0)?,
            None => 0,
        },
        _ => u64::MAX,
    })
}

/// After recovery: writes the layout of a new store, migrates a layout-2 one (its policies and durable
/// offsets, which lived in the index only, are appended to the segments), and completes a rebuilt one.
/// `known` is what [`layout3_from`] said, `found` the first layout-3 segment recovery walked over. Returns
/// the first segment written in layout 3.
pub(super) fn finish(
    db: &sled::Db,
    journal: &Journal,
    state: &IndexState,
    known: u64,
    found: Option<u64>,
) -> Result<u64> {
    let active = journal.segments().active()?;
    let from = match (state, found) {
        (IndexState::Layout3, _) => known,
        (IndexState::Rebuilt(_), Some(from)) => from,
        (IndexState::Fresh | IndexState::Layout2 | IndexState::Rebuilt(_), _) => {
            journal.append(&[&record::layout(LAYOUT_VERSION)], Reserve::Ignore)?;
            if *state == IndexState::Layout2 {
                let (policies, durables) = copy_metadata_to_segments(db, journal)?;
                tracing::info!(
                    policies,
                    durables,
                    "store layout 2 migrated to 3: policies and durable \
                    offsets appended to the segments"
                );
            } else if let IndexState::Rebuilt(aside) = state {
                tracing::error!(
                    old_index = aside.as_ref().map(|p| p.display().to_string()),
                    "the segments were written in layout 2, where topic policies and durable offsets \
                     lived in the index only: the rebuilt index has none of them (store the policies \
                     again; durable subscriptions start afresh)"
                );
            }
            active
        }
    };
    db.insert(LAYOUT3_FROM_KEY, &from.to_be_bytes()[..]).map_err(sled_error)?;
    db.insert(LAYOUT_KEY, &LAYOUT_VERSION.to_be_bytes()[..]).map_err(sled_error)?;
    Ok(from)
}

/// Appends a record for every policy and durable offset of the index; returns how many of each.
fn copy_metadata_to_segments(db: &sled::Db, journal: &Journal) -> Result<(u64, u64)> {
    let (mut policies, mut durables) = (0, 0);
    for kv in db.scan_prefix([POLICY]) {
        let (key, value) = kv.map_err(sled_error)?;
        let (topic, rest) = split_topic(&key[1..]).ok_or_else(|| corrupt("policy key"))?;
        let epoch = u64_at(rest, 0)?;
        journal.append(&[&record::policy_prefix(&topic, epoch), &value], Reserve::Ignore)?;
        policies += 1;
    }
    for kv in db.scan_prefix([DURABLE]) {
        let (key, value) = kv.map_err(sled_error)?;
        let (topic, rest) = split_topic(&key[1..]).ok_or_else(|| corrupt("durable key"))?;
        let (next_offset, _) = decode_durable(&value).ok_or_else(|| corrupt("durable offset"))?;
        let mut body = topic_prefix(record::DURABLE, &topic, rest.len() + 8);
        body.extend_from_slice(rest);
        body.extend_from_slice(&next_offset.0.to_be_bytes());
        if Record::decode(&body).is_none() {
            return Err(corrupt("durable key"));
        }
        let at = journal.append(&[&body], Reserve::Ignore)?;
        db.insert(&key, durable_value(next_offset, Some(at))).map_err(sled_error)?;
        durables += 1;
    }
    Ok((policies, durables))
}
