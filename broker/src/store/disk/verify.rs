//! Checking a stopped store against its checksums: [`verify`] (`sealpost-broker verify-store DIR`).
//!
//! It checks a stopped store completely: it opens the index (sled's own recovery may rewrite its files, as
//! a start of the broker would), reads every key and checks that it decodes, that each topic's offsets are
//! covered without a hole, and that every batch has its publisher record; then it walks every segment
//! ([`segment::walk`]) with the acknowledged extent as recovery computes it, and reports every record
//! inside it that fails its checksum (with the topic and offsets the index or the damaged header names),
//! every index entry whose record is not intact, every intact batch the index should name and does not,
//! and every range recorded as lost. A torn tail past the last sync, records a start will index, and bad
//! bytes at the end of a segment written before layout 3 are notes, not findings. It changes nothing of
//! Sealpost's own data. It holds the whole index's locations in memory (about 100 bytes per batch). A
//! running broker checks itself with its [`scrub`](super::scrub).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fmt;
use std::ops::Range;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use sealpost_protocol::{Offset, Topic};

use super::codec::split_topic;
use super::index::{
    self, decode_durable, Entry, Slot, BATCH, CHAIN, CHECKPOINT_KEY, DURABLE, LAYOUT3_FROM_KEY, LAYOUT_KEY,
    POLICY, PUBLISHER, RETIRED, TOPIC,
};
use super::open::{drop_quietly, open_sled, panic_message};
use super::record::{Lost, Record};
use super::recovery::damage::Hint;
use super::segment::{self, Checkpoint, Walked};
use crate::store::PublisherRecord;
use crate::{Error, Result};

/// What kind of problem a [`Finding`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum FindingKind {
    /// Bytes inside the acknowledged part of the log fail their checksum, or a record the index names is
    /// missing: storage corruption.
    Corrupt,
    /// Offsets recorded as lost: an earlier run found their record damaged.
    Lost,
    /// The index and the segments disagree.
    Mismatch,
    /// The index cannot be opened or read: the broker moves it aside and rebuilds it at its next start.
    Index,
}

impl fmt::Display for FindingKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FindingKind::Corrupt => "corrupt",
            FindingKind::Lost => "lost",
            FindingKind::Mismatch => "mismatch",
            FindingKind::Index => "index",
        })
    }
}

/// One problem [`verify`] found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    /// What kind of problem.
    pub kind: FindingKind,
    /// The segment file and byte position, when the problem is in the segments.
    pub place: Option<(PathBuf, u64)>,
    /// The topic concerned, when known.
    pub topic: Option<Topic>,
    /// The offsets concerned, when known.
    pub offsets: Option<Range<Offset>>,
    /// What is wrong, in a sentence.
    pub detail: String,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:", self.kind)?;
        if let Some((file, position)) = &self.place {
            write!(f, " {} byte {position}:", file.display())?;
        }
        if let Some(topic) = &self.topic {
            write!(f, " {topic}")?;
        }
        if let Some(offsets) = &self.offsets {
            write!(f, " offsets {}..{}", offsets.start, offsets.end)?;
        }
        if self.topic.is_some() || self.offsets.is_some() {
            f.write_str(":")?;
        }
        write!(f, " {}", self.detail)
    }
}

/// What [`verify`] found.
#[derive(Clone, Debug, Default)]
pub struct Report {
    /// Problems: a store is clean when there are none.
    pub findings: Vec<Finding>,
    /// Things worth knowing that are not problems (a torn tail the next start cuts, records it indexes).
    pub notes: Vec<String>,
    /// Segment files read.
    pub segments: u64,
    /// Intact records read.
    pub records: u64,
    /// Bytes of segment files read.
    pub bytes: u64,
    /// Index keys read.
    pub index_keys: u64,
}

/// An index entry of a batch, by where its record is.
#[derive(Clone, Debug)]
struct Indexed {
    topic: Topic,
    entry: Entry,
    /// Seen intact, or inside damage already reported.
    accounted: bool,
}

/// What the index holds, as far as `verify` needs it.
#[derive(Default)]
struct IndexView {
    /// (segment, position) -> the batch entry there.
    batches: HashMap<(u64, u64), Indexed>,
    /// (topic, offset) -> where the entry says the record is, or `None` for a lost range.
    slots: HashMap<(Topic, Offset), Option<(u64, u64)>>,
    checkpoint: Checkpoint,
    layout3_from: Option<u64>,
    /// Per topic, the offset below which retention removed its batches.
    retired: HashMap<Topic, Offset>,
}

/// Checks the stopped store in `dir` (see the module documentation). An error only if it cannot check at
/// all: not a Sealpost store, or in use by a running broker.
pub fn verify(dir: &Path) -> Result<Report> {
    let segments_dir = dir.join("segments");
    if !segments_dir.is_dir() || !dir.join("db").is_file() {
        return Err(Error::Storage(format!(
            "{} is not a Sealpost data folder (no segments/ or db)",
            dir.display()
        )));
    }
    let mut report = Report::default();
    let index = read_index(dir, &mut report)?;
    walk_segments(&segments_dir, index, &mut report)?;
    Ok(report)
}

fn finding(kind: FindingKind, detail: impl Into<String>) -> Finding {
    Finding { kind, place: None, topic: None, offsets: None, detail: detail.into() }
}

/// Opens and reads the whole index; problems become findings.
fn read_index(dir: &Path, report: &mut Report) -> Result<IndexView> {
    let db = match catch_unwind(AssertUnwindSafe(|| open_sled(dir, 64 * 1024 * 1024))) {
        Ok(Ok(db)) => db,
        Ok(Err(sled::Error::Io(e))) => {
            return Err(Error::Storage(format!(
                "cannot open the index in {} ({e}): if a broker is running on it, stop it first, or let its \
                 background scrub check it (storage.scrub_bytes_per_sec)",
                dir.display()
            )))
        }
        Ok(Err(e)) => {
            report.findings.push(finding(FindingKind::Index, format!("sled cannot open the index: {e}")));
            return Ok(IndexView::default());
        }
        Err(panic) => {
            report.findings.push(finding(
                FindingKind::Index,
                format!(
                    "sled panics opening the index ({}); the next start rebuilds it",
                    panic_message(&*panic)
                ),
            ));
            return Ok(IndexView::default());
        }
    };
    let scanned = catch_unwind(AssertUnwindSafe(|| scan_index(&db, report)));
    let view = match scanned {
        Ok(Ok(view)) => view,
        Ok(Err(e)) => {
            report.findings.push(finding(FindingKind::Index, format!("reading the index failed: {e}")));
            IndexView::default()
        }
        Err(panic) => {
            report.findings.push(finding(
                FindingKind::Index,
                format!(
                    "sled panics reading the index ({}); the next start rebuilds it",
                    panic_message(&*panic)
                ),
            ));
            IndexView::default()
        }
    };
    drop_quietly(db);
    Ok(view)
}

fn scan_index(db: &sled::Db, report: &mut Report) -> std::result::Result<IndexView, sled::Error> {
    let mut view = IndexView::default();
    let mut topics_with_key = HashSet::new();
    let mut ends: HashMap<Topic, Offset> = HashMap::new();
    let bad = |report: &mut Report, what: String| report.findings.push(finding(FindingKind::Index, what));
    for kv in db.iter() {
        let (key, value) = kv?;
        report.index_keys += 1;
        let Some((&kind, rest)) = key.split_first() else {
            bad(report, "an empty key".into());
            continue;
        };
        if kind == b'm' {
            match &key[..] {
                LAYOUT_KEY => match <[u8; 4]>::try_from(&value[..]).map(u32::from_be_bytes) {
                    Ok(2..=5) => {}
                    _ => bad(report, "the layout key does not name layout 2, 3, 4 or 5".into()),
                },
                CHECKPOINT_KEY => match Checkpoint::decode(&value) {
                    Some(c) => view.checkpoint = c,
                    None => bad(report, "the checkpoint does not decode".into()),
                },
                LAYOUT3_FROM_KEY => match <[u8; 8]>::try_from(&value[..]) {
                    Ok(v) => view.layout3_from = Some(u64::from_be_bytes(v)),
                    Err(_) => bad(report, "the first layout-3 segment does not decode".into()),
                },
                _ => bad(report, format!("an unknown meta key {:?}", String::from_utf8_lossy(rest))),
            }
            continue;
        }
        let Some((topic, rest)) = split_topic(rest) else {
            bad(report, format!("a key of kind {:?} whose topic does not decode", kind as char));
            continue;
        };
        match kind {
            BATCH => {
                let slot = match Slot::decode(&key, &value) {
                    Ok(slot) => slot,
                    Err(e) => {
                        bad(report, format!("a batch entry of {topic}: {e}"));
                        continue;
                    }
                };
                let expected = match ends.get(&topic) {
                    Some(end) => *end,
                    None => match db.get(index::retired_key(&topic))? {
                        Some(v) => <[u8; 8]>::try_from(&v[..])
                            .map_or(Offset::ZERO, |v| Offset(u64::from_be_bytes(v))),
                        None => Offset::ZERO,
                    },
                };
                if slot.offset() != expected {
                    report.findings.push(Finding {
                        kind: FindingKind::Mismatch,
                        place: None,
                        topic: Some(topic.clone()),
                        offsets: Some(expected.min(slot.offset())..expected.max(slot.offset())),
                        detail: "the index has a hole (or an overlap) in the topic's offsets".into(),
                    });
                }
                ends.insert(topic.clone(), slot.end());
                match slot {
                    Slot::Batch(entry) => {
                        if db.get(entry.publisher_key(&topic))?.is_none() {
                            report.findings.push(Finding {
                                kind: FindingKind::Mismatch,
                                place: None,
                                topic: Some(topic.clone()),
                                offsets: Some(entry.offset..entry.end()),
                                detail: "the batch has no publisher record in the index".into(),
                            });
                        }
                        let at = (entry.location.segment, entry.location.position);
                        view.slots.insert((topic.clone(), entry.offset), Some(at));
                        view.batches.insert(at, Indexed { topic, entry, accounted: false });
                    }
                    Slot::Lost(lost) => {
                        view.slots.insert((topic.clone(), lost.range.offset), None);
                        report.findings.push(lost_finding(&topic, &lost));
                    }
                }
            }
            PUBLISHER => {
                if rest.len() != 40 || PublisherRecord::decode(&value).is_err() {
                    bad(report, format!("a publisher record of {topic} does not decode"));
                }
            }
            CHAIN => {
                if rest.len() != 56 || PublisherRecord::decode(&value).is_err() {
                    bad(report, format!("a chain record of {topic} does not decode"));
                }
            }
            DURABLE => {
                if decode_durable(&value).is_none() {
                    bad(report, format!("a durable offset of {topic} does not decode"));
                }
            }
            POLICY => {
                if rest.len() != 8 || value.is_empty() {
                    bad(report, format!("a policy of {topic} does not decode"));
                }
            }
            TOPIC => {
                topics_with_key.insert(topic);
            }
            RETIRED => match <[u8; 8]>::try_from(&value[..]) {
                Ok(v) if rest.is_empty() => {
                    view.retired.insert(topic, Offset(u64::from_be_bytes(v)));
                }
                _ => bad(report, format!("the retention mark of {topic} does not decode")),
            },
            other => bad(report, format!("a key of unknown kind {:?}", other as char)),
        }
    }
    for topic in ends.keys().filter(|t| !topics_with_key.contains(*t)) {
        report.findings.push(Finding {
            kind: FindingKind::Mismatch,
            place: None,
            topic: Some(topic.clone()),
            offsets: None,
            detail: "the topic has batches but no topic key".into(),
        });
    }
    Ok(view)
}

fn lost_finding(topic: &Topic, lost: &Lost) -> Finding {
    let publisher = lost
        .range
        .batch
        .map(|b| format!(" (publisher {}, from sequence {})", b.publisher.key_id(), b.first_seq));
    Finding {
        kind: FindingKind::Lost,
        place: lost.at.map(|(s, p)| (PathBuf::from("segments").join(segment::segment_name(s)), p)),
        topic: Some(topic.clone()),
        offsets: Some(lost.range.offset..lost.range.end()),
        detail: format!("recorded as lost: {}{}", lost.range.reason, publisher.unwrap_or_default()),
    }
}

/// Walks every segment and compares it with the index.
fn walk_segments(dir: &Path, mut index: IndexView, report: &mut Report) -> Result<()> {
    let numbers = segment::list(dir)?;
    let mut acked = index.checkpoint;
    if let Some(synced) = segment::read_synced(dir) {
        acked = acked.max(synced);
    }
    if let Some(&newest) = numbers.last() {
        acked = acked.max(Checkpoint { segment: newest, position: 0 });
    }
    let mut hints: HashMap<u64, BTreeSet<u64>> = HashMap::new();
    for &(s, p) in index.batches.keys() {
        hints.entry(s).or_default().insert(p);
    }
    let no_hints = BTreeSet::new();
    // Sync markers of the newest segments can move the acknowledged extent.
    let from = acked.segment;
    for &n in numbers.iter().filter(|&&n| n >= from) {
        let bytes = segment::read_from(dir, n, 0)?;
        segment::walk(&bytes, n, 0, u64::MAX, hints.get(&n).unwrap_or(&no_hints), |w| {
            if let Walked::Record { at, body, unconfirmed: false } = w {
                if let Some(Record::Synced(c)) = Record::decode(body) {
                    if c <= (Checkpoint { segment: at.segment, position: at.position }) {
                        acked = acked.max(c);
                    }
                }
            }
            Ok(())
        })?;
    }
    let mut layout3_from = index.layout3_from;
    for &n in &numbers {
        let file = dir.join(segment::segment_name(n));
        let shown = PathBuf::from("segments").join(segment::segment_name(n));
        let bytes = segment::read_from(dir, n, 0)?;
        report.segments += 1;
        report.bytes += bytes.len() as u64;
        let end = bytes.len() as u64;
        let mut found = Vec::new();
        segment::walk(&bytes, n, 0, acked.end_in(n), hints.get(&n).unwrap_or(&no_hints), |w| {
            found.push(match w {
                Walked::Record { at, body, unconfirmed } => {
                    (at.position, 0, Some((at, body, unconfirmed)), None, false)
                }
                Walked::Damaged { position, len, claimed } => (position, len, None, claimed, false),
                Walked::Tail { position, len } => (position, len, None, None, true),
            });
            Ok(())
        })?;
        for (position, len, record, claimed, tail) in found {
            if let Some((at, body, unconfirmed)) = record {
                report.records += 1;
                match Record::decode(body) {
                    Some(Record::Batch(r, _)) if !unconfirmed => {
                        let slot = index.slots.get(&(r.topic.clone(), r.record.offset)).copied();
                        match slot {
                            Some(Some(place)) if place == (n, at.position) => {
                                if let Some(indexed) = index.batches.get_mut(&place) {
                                    indexed.accounted = true;
                                }
                            }
                            Some(Some(_)) => report.notes.push(format!(
                                "{} byte {}: an unindexed copy of {} (an append that failed before it was indexed)",
                                shown.display(),
                                at.position,
                                Record::decode(body).map(|r| r.describe()).unwrap_or_default()
                            )),
                            Some(None) => report.notes.push(format!(
                                "{} byte {}: an intact batch at offsets recorded as lost",
                                shown.display(),
                                at.position
                            )),
                            // Retired by retention; its segment is kept for other records.
                            None if index.retired.get(&r.topic).is_some_and(|&first| r.record.offset < first) => {}
                            None if !at.durable_by(index.checkpoint) => report.notes.push(format!(
                                "{} byte {}: a batch the index does not name yet (the next start indexes it)",
                                shown.display(),
                                at.position
                            )),
                            None => report.findings.push(Finding {
                                kind: FindingKind::Mismatch,
                                place: Some((shown.clone(), at.position)),
                                topic: Some(r.topic.clone()),
                                offsets: Some(r.record.offset..r.record.end()),
                                detail: "an intact batch inside the indexed part of the log that the index does not name".into(),
                            }),
                        }
                    }
                    Some(Record::Layout(v)) if v >= 3 && !unconfirmed => {
                        layout3_from = Some(layout3_from.map_or(n, |f| f.min(n)));
                    }
                    _ => {}
                }
                continue;
            }
            if tail {
                report.notes.push(format!(
                    "{} byte {position}: {len} bytes past the last sync (a torn tail, never acknowledged; the next \
                     start cuts it)",
                    shown.display()
                ));
                continue;
            }
            // Damage inside the acknowledged extent: which index entries lie in it?
            let mut named: Vec<&mut Indexed> = index
                .batches
                .iter_mut()
                .filter(|((s, p), _)| *s == n && *p >= position && *p < position + len)
                .map(|(_, i)| i)
                .collect();
            named.sort_by_key(|i| i.entry.location.position);
            if named.is_empty() {
                let before_layout3 = layout3_from.is_none_or(|from| n < from);
                if before_layout3 && position + len == end {
                    report.notes.push(format!(
                        "{} byte {position}: {len} bad bytes at the end of a segment written before layout 3 (a \
                         torn tail an earlier version left in place)",
                        shown.display()
                    ));
                    continue;
                }
                let hint = claimed.and_then(Hint::of);
                let looked_like = claimed.and_then(Record::decode).map(|r| r.describe());
                report.findings.push(Finding {
                    kind: FindingKind::Corrupt,
                    place: Some((shown.clone(), position)),
                    topic: hint.as_ref().map(|h| h.topic.clone()),
                    offsets: hint.as_ref().map(|h| h.record.offset..h.record.end()),
                    detail: format!(
                        "{len} bytes fail their checksum; they held {}",
                        looked_like.unwrap_or_else(|| "nothing the index names".into())
                    ),
                });
            }
            for indexed in named {
                indexed.accounted = true;
                report.findings.push(Finding {
                    kind: FindingKind::Corrupt,
                    place: Some((shown.clone(), indexed.entry.location.position)),
                    topic: Some(indexed.topic.clone()),
                    offsets: Some(indexed.entry.offset..indexed.entry.end()),
                    detail: format!(
                        "the batch's record fails its checksum ({len} damaged bytes from byte {position})"
                    ),
                });
            }
        }
        let _ = file;
    }
    // Index entries whose records the walk never found intact: missing segments, or past a file's end.
    let mut missing: Vec<&Indexed> = index.batches.values().filter(|i| !i.accounted).collect();
    missing.sort_by_key(|i| (i.entry.location.segment, i.entry.location.position));
    for indexed in missing {
        let at = indexed.entry.location;
        let past = !at.durable_by(acked);
        report.findings.push(Finding {
            kind: if past { FindingKind::Mismatch } else { FindingKind::Corrupt },
            place: Some((PathBuf::from("segments").join(segment::segment_name(at.segment)), at.position)),
            topic: Some(indexed.topic.clone()),
            offsets: Some(indexed.entry.offset..indexed.entry.end()),
            detail: if past {
                "the index names a record past the last sync that is not there (the next start drops it)"
                    .into()
            } else {
                "the index names a record that is missing".into()
            },
        });
    }
    Ok(())
}
