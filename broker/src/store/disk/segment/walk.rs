//! The walker: reads the records of a segment's bytes in order and says, for the **acknowledged extent**
//! (what some sync is known to have covered), where records are damaged and where intact ones resume, and
//! past it, where a torn tail begins.
//!
//! It is how the engine rebuilds what its index lacks after a crash, how it tells corruption (inside the
//! acknowledged extent: it costs only the damaged record) from a torn tail (past it: never acknowledged),
//! and how `verify-store` checks a stopped store. It reads bytes it is given and never panics; the work
//! that crafted bytes can cause is bounded ([`SCAN_BUDGET`]).

use std::collections::BTreeSet;

use super::place::{split_header, Location, RECORD_HEADER};
use crate::Result;

/// Most bytes one [`walk`] checksums while it looks for intact records after damage it cannot skip by
/// the damaged record's length: bounds the work crafted bytes can cause (256 MiB).
const SCAN_BUDGET: u64 = 256 * 1024 * 1024;

/// The intact record at `position` of `segment`, whose bytes from `base` on are `bytes`, if there is one.
fn record_at(bytes: &[u8], segment: u64, base: u64, position: u64) -> Option<(Location, &[u8])> {
    let (len, crc, body) = claimed_at(bytes, base, position)?;
    (crc32fast::hash(body) == crc).then_some((Location { segment, position, len, crc }, body))
}

/// The length, CRC and bytes that the header at `position` claims, if the bytes are all there and there
/// is at least one (no record is empty).
fn claimed_at(bytes: &[u8], base: u64, position: u64) -> Option<(u32, u32, &[u8])> {
    let start = usize::try_from(position.checked_sub(base)?).ok()?;
    let header: &[u8; RECORD_HEADER as usize] =
        bytes.get(start..start.checked_add(RECORD_HEADER as usize)?)?.try_into().ok()?;
    let (len, crc) = split_header(header);
    if len == 0 {
        return None;
    }
    let body_start = start + RECORD_HEADER as usize;
    let body = bytes.get(body_start..body_start.checked_add(usize::try_from(len).ok()?)?)?;
    Some((len, crc, body))
}

/// What [`walk`] found at one place of a segment.
#[derive(Debug, PartialEq, Eq)]
pub enum Walked<'a> {
    /// An intact record. `unconfirmed`: the walk resumed by scanning for a header whose CRC verifies
    /// since the last place it could trust (the start of the segment, a record it skipped to by a damaged
    /// record's length, or a place the index names), so the record might be bytes inside a damaged
    /// record that only look like one: judge it on its own merits.
    Record {
        /// Where it is.
        at: Location,
        /// Its bytes.
        body: &'a [u8],
        /// See above.
        unconfirmed: bool,
    },
    /// `len` bytes from `position`, inside the acknowledged extent, hold no intact record. `claimed`: the
    /// damaged record's bytes, when the walk knows them: it skipped the record by its length (the damage is
    /// in its bytes or its CRC), or the bytes up to where it resumed match the record's CRC (the damage is
    /// in its length).
    Damaged {
        /// Where the damage starts.
        position: u64,
        /// How many bytes the walk skipped.
        len: u64,
        /// The damaged record's bytes, if its length could be trusted.
        claimed: Option<&'a [u8]>,
    },
    /// From `position` on (`len` bytes to the end of the file), past the acknowledged extent, from the
    /// first record that is not intact: a torn tail, never acknowledged.
    Tail {
        /// Where the first bad record starts.
        position: u64,
        /// Bytes from there to the end of the file.
        len: u64,
    },
}

/// Walks the records of segment `segment`, whose bytes from position `base` on are `bytes`, and calls `f`
/// with each thing found, in order.
///
/// Positions below `acked_end` are acknowledged. A record there that is not intact is damage. If one bit
/// of its length is wrong, the bytes up to its true end match its CRC: the walk resumes there. Otherwise it
/// skips the record by its length if that lands on the end of the file, on a position in `hints` (where
/// the index says a record starts) or on an intact record, without jumping over a hint; otherwise it
/// resumes at the first position before the next hint from which intact records run exactly to that hint
/// (or to the end of the file), scanning at most [`SCAN_BUDGET`] bytes of checksums; failing that, at the
/// next hint; failing that, the rest of the file is damage. The first record at or past `acked_end` that is not intact ends the walk with a
/// [`Walked::Tail`].
pub fn walk<'a>(
    bytes: &'a [u8],
    segment: u64,
    base: u64,
    acked_end: u64,
    hints: &BTreeSet<u64>,
    mut f: impl FnMut(Walked<'a>) -> Result<()>,
) -> Result<()> {
    let end = base.saturating_add(bytes.len() as u64);
    let mut position = base;
    let mut unconfirmed = false;
    let mut budget = SCAN_BUDGET;
    while position < end {
        if let Some((at, body)) = record_at(bytes, segment, base, position) {
            if hints.contains(&position) {
                unconfirmed = false;
            }
            f(Walked::Record { at, body, unconfirmed })?;
            position = at.end();
            continue;
        }
        if position >= acked_end {
            return f(Walked::Tail { position, len: end - position });
        }
        let next_hint = hints.range(position.saturating_add(1)..end).next().copied();
        let boundary =
            |q: u64| q == end || hints.contains(&q) || record_at(bytes, segment, base, q).is_some();
        // Only the length is damaged (one bit of it): a shorter or longer run of the bytes after the header
        // matches the CRC, up to a place where a record starts.
        if let Some(q) = length_only(bytes, base, position, next_hint.unwrap_or(end), boundary) {
            let body = &bytes[(position - base + RECORD_HEADER) as usize..(q - base) as usize];
            f(Walked::Damaged { position, len: q - position, claimed: Some(body) })?;
            position = q;
            continue;
        }
        // The bytes are damaged, not the length: skip by it, if it lands where a record starts and does not
        // jump over a place the index names.
        if let Some((len, _, body)) = claimed_at(bytes, base, position) {
            let next = position + RECORD_HEADER + u64::from(len);
            if boundary(next) && next_hint.is_none_or(|h| h >= next) {
                f(Walked::Damaged { position, len: next - position, claimed: Some(body) })?;
                position = next;
                continue;
            }
        }
        let limit = next_hint.unwrap_or(end);
        let resumed = (position + 1..limit).find(|&q| runs_to(bytes, segment, base, q, limit, &mut budget));
        let (resume, scanned) = match (resumed, next_hint) {
            (Some(q), _) => (q, true),
            (None, Some(h)) => (h, false),
            (None, None) => (end, false),
        };
        f(Walked::Damaged { position, len: resume - position, claimed: None })?;
        position = resume;
        unconfirmed = scanned;
    }
    Ok(())
}

/// Where the record at `position` ends if one bit of its length is damaged: the nearest length one bit
/// away from the claimed one whose bytes, ending at most at `limit`, match the record's CRC and end where
/// `boundary` says a record starts.
fn length_only(
    bytes: &[u8],
    base: u64,
    position: u64,
    limit: u64,
    boundary: impl Fn(u64) -> bool,
) -> Option<u64> {
    let start = usize::try_from(position.checked_sub(base)?).ok()?;
    let header: &[u8; RECORD_HEADER as usize] =
        bytes.get(start..start.checked_add(RECORD_HEADER as usize)?)?.try_into().ok()?;
    let (claimed, crc) = split_header(header);
    let body_start = start + RECORD_HEADER as usize;
    let mut ends: Vec<u64> = (0..32)
        .map(|bit| claimed ^ (1 << bit))
        .filter(|&len| len > 0)
        .map(|len| position + RECORD_HEADER + u64::from(len))
        .filter(|&end| end <= limit)
        .collect();
    ends.sort_unstable();
    ends.into_iter().find(|&end| {
        let body_end = usize::try_from(end - base).unwrap_or(usize::MAX);
        bytes.get(body_start..body_end).is_some_and(|body| crc32fast::hash(body) == crc) && boundary(end)
    })
}

/// Whether intact records run from `from` exactly to `limit`, checksumming at most `budget` bytes.
fn runs_to(bytes: &[u8], segment: u64, base: u64, from: u64, limit: u64, budget: &mut u64) -> bool {
    let mut position = from;
    while position < limit {
        let Some((len, _, _)) = claimed_at(bytes, base, position) else { return false };
        let Some(left) = budget.checked_sub(len.into()) else {
            *budget = 0;
            return false;
        };
        *budget = left;
        match record_at(bytes, segment, base, position) {
            Some((at, _)) => position = at.end(),
            None => return false,
        }
    }
    position == limit
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The records `bodies`, one after the other, as a segment holds them, and where each starts.
    fn segment_of(bodies: &[&[u8]]) -> (Vec<u8>, Vec<u64>) {
        let mut bytes = Vec::new();
        let mut starts = Vec::new();
        for body in bodies {
            starts.push(bytes.len() as u64);
            bytes.extend_from_slice(&(body.len() as u32).to_be_bytes());
            bytes.extend_from_slice(&crc32fast::hash(body).to_be_bytes());
            bytes.extend_from_slice(body);
        }
        (bytes, starts)
    }

    /// What `walk` finds, in a compact form: `r<position>`, `r?<position>` (unconfirmed), `d<position>+<len>`
    /// (`d*` when it knew the damaged record's bytes), `t<position>+<len>`.
    fn walked(bytes: &[u8], base: u64, acked_end: u64, hints: &[u64]) -> Vec<String> {
        let hints: BTreeSet<u64> = hints.iter().copied().collect();
        let mut out = Vec::new();
        walk(&bytes[base as usize..], 7, base, acked_end, &hints, |w| {
            out.push(match w {
                Walked::Record { at, unconfirmed: false, .. } => format!("r{}", at.position),
                Walked::Record { at, unconfirmed: true, .. } => format!("r?{}", at.position),
                Walked::Damaged { position, len, claimed: Some(_) } => format!("d*{position}+{len}"),
                Walked::Damaged { position, len, claimed: None } => format!("d{position}+{len}"),
                Walked::Tail { position, len } => format!("t{position}+{len}"),
            });
            Ok(())
        })
        .unwrap();
        out
    }

    #[test]
    fn walk_skips_a_damaged_record_by_its_length_inside_the_acknowledged_extent() {
        let (mut bytes, s) = segment_of(&[b"aaaa", &[b'b'; 100], b"cccc", b"dddd"]);
        assert_eq!(walked(&bytes, 0, u64::MAX, &[]), ["r0", "r12", "r120", "r132"]);
        bytes[s[1] as usize + 50] ^= 0x10;
        assert_eq!(walked(&bytes, 0, u64::MAX, &[]), ["r0", "d*12+108", "r120", "r132"]);
        // A walk from the middle of the segment.
        assert_eq!(walked(&bytes, s[2], u64::MAX, &[]), ["r120", "r132"]);
        // The same damage past the acknowledged extent is a torn tail: nothing after it is kept.
        assert_eq!(walked(&bytes, 0, s[1], &[]), ["r0", "t12+132"]);
        assert_eq!(walked(&bytes, 0, 0, &[]), ["r0", "t12+132"]);
    }

    #[test]
    fn walk_resumes_after_a_damaged_length_where_the_crc_matches_or_at_the_index_or_where_records_run_to_the_end(
    ) {
        let (mut bytes, s) = segment_of(&[b"aaaa", &[b'b'; 100], b"cccc", b"dddd"]);
        // One bit of the second record's length: the bytes up to the third record match its CRC.
        bytes[s[1] as usize + 2] ^= 0x40;
        assert_eq!(walked(&bytes, 0, u64::MAX, &[]), ["r0", "d*12+108", "r120", "r132"]);
        // Its length and its bytes damaged: the walk scans for records that run to the end of the file.
        bytes[s[1] as usize + 50] ^= 1;
        assert_eq!(walked(&bytes, 0, u64::MAX, &[]), ["r0", "d12+108", "r?120", "r?132"]);
        // With the index naming the third record, the walk trusts what follows it.
        assert_eq!(walked(&bytes, 0, u64::MAX, &[s[2]]), ["r0", "d12+108", "r120", "r132"]);
        assert_eq!(walked(&bytes, 0, u64::MAX, &[s[3]]), ["r0", "d12+108", "r?120", "r132"]);
        // Garbage to the end of the file.
        let (mut bytes, s) = segment_of(&[b"aaaa", &[b'b'; 100]]);
        bytes[s[1] as usize + 1] ^= 0x40;
        bytes[s[1] as usize + 9] ^= 0x40;
        assert_eq!(walked(&bytes, 0, u64::MAX, &[]), ["r0", "d12+108"]);
    }

    #[test]
    fn walk_does_not_resume_inside_a_damaged_record_at_bytes_that_only_look_like_records() {
        // The second record's bytes hold a record of their own, as a publisher could craft them.
        let (inner, _) = segment_of(&[b"fake"]);
        let mut second = vec![b'x'; 20];
        second.extend_from_slice(&inner);
        second.extend_from_slice(&[b'y'; 20]);
        let (mut bytes, s) = segment_of(&[b"aaaa", &second, b"cccc"]);
        bytes[s[1] as usize + 1] ^= 0x40;
        bytes[s[1] as usize + 10] ^= 1;
        // The fake record does not run to a record boundary: the walk finds the real third record.
        assert_eq!(walked(&bytes, 0, u64::MAX, &[]), ["r0", "d12+60", "r?72"]);
    }

    #[test]
    fn zeros_are_no_record() {
        let mut bytes = segment_of(&[b"aaaa"]).0;
        bytes.extend_from_slice(&[0u8; 64]);
        assert_eq!(walked(&bytes, 0, u64::MAX, &[]), ["r0", "d12+64"]);
        assert_eq!(walked(&bytes, 0, 12, &[]), ["r0", "t12+64"]);
    }
}
