//! One topic's log in its stream: what this broker knows of it ([`TopicState`]), loading that from the
//! cluster ([`load`]), mapping offsets to stream sequences ([`locate`]) and reading batches ([`read`]).
//!
//! # Offsets and sequences
//!
//! Message `s` of a log stream holds the batch whose first offset and count are in its headers, and
//! starts where message `s - 1` ends. So offsets grow with sequences, and the batch that holds offset `o`
//! is found by a binary search over sequences (about 20 requests for a million batches), which every
//! broker answers alike. Each answer is remembered ([`TopicState::remember`]), and a subscriber that
//! reads on from where it stopped finds the next sequence there without a search.

use std::collections::BTreeMap;
use std::sync::atomic::AtomicBool;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use async_nats::jetstream::message::StreamMessage;
use async_nats::jetstream::stream::{self, LastRawMessageErrorKind};
use async_nats::jetstream::{self as js};
use sealpost_protocol::{Offset, Topic};

use super::names;
use crate::store::{retired_range, LossReason, LostRange, Stored, StoredBatch};
use crate::{Error, Result};

/// Most offsets remembered per topic before the oldest half is forgotten.
const MAX_REMEMBERED: usize = 65_536;
/// Most messages fetched at once by one read.
const READ_WINDOW: usize = 16;

/// A topic's log as this broker knows it.
#[derive(Debug)]
pub(super) struct TopicLog {
    pub(super) topic: Topic,
    /// Its stream's name.
    pub(super) stream: String,
    /// The wildcard of its stream's subjects (every chain of the topic).
    pub(super) subjects: String,
    state: Mutex<TopicState>,
    /// Whether a follower runs for it ([`super::follow`]).
    pub(super) following: AtomicBool,
}

impl TopicLog {
    pub(super) fn new(topic: Topic, stream: String, subjects: String) -> TopicLog {
        TopicLog {
            topic,
            stream,
            subjects,
            state: Mutex::new(TopicState::default()),
            following: AtomicBool::new(false),
        }
    }

    pub(super) fn state(&self) -> MutexGuard<'_, TopicState> {
        // Every update leaves the state consistent before it could panic.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// What this broker knows of a topic's stream.
#[derive(Debug, Default)]
pub(super) struct TopicState {
    /// Read from the cluster since the last failure; until then nothing else here counts.
    pub(super) loaded: bool,
    /// The stream exists.
    pub(super) exists: bool,
    /// The last sequence of the stream as this broker knows it, its own unsynced appends included.
    pub(super) last_seq: u64,
    /// The first offset retention (of any kind) left.
    pub(super) first: Offset,
    /// The offset after the last batch this broker knows of.
    pub(super) next: Offset,
    /// This broker's appends to it not yet covered by a sync.
    pub(super) pending: usize,
    /// Batches seen: first offset -> (sequence, count).
    index: BTreeMap<u64, (u64, u32)>,
}

impl TopicState {
    /// Remembers that the batch at `offset` of `count` messages is at `seq`.
    pub(super) fn remember(&mut self, offset: Offset, seq: u64, count: u32) {
        if self.index.len() >= MAX_REMEMBERED {
            let keep = self.index.split_off(&self.index.keys().nth(MAX_REMEMBERED / 2).copied().unwrap_or(0));
            self.index = keep;
        }
        self.index.insert(offset.0, (seq, count));
    }

    /// The sequence to read from for offset `from`, if remembered: the batch that holds it, or the one
    /// after the batch that ends there.
    pub(super) fn seq_of(&self, from: Offset) -> Option<u64> {
        let (&start, &(seq, count)) = self.index.range(..=from.0).next_back()?;
        let end = start.saturating_add(count.into());
        if from.0 < end {
            Some(seq)
        } else if from.0 == end {
            Some(seq + 1)
        } else {
            None
        }
    }

    /// A follower saw `batch` at `seq`: the log moved on, unless this broker's own appends are in flight
    /// (their sync sorts out what is where).
    pub(super) fn observe(&mut self, seq: u64, batch: &StoredBatch) {
        self.remember(batch.offset, seq, batch.count);
        if self.loaded && self.pending == 0 && seq > self.last_seq {
            self.exists = true;
            self.last_seq = seq;
            self.next = self.next.max(batch.end());
        }
    }

    /// Forgets what this broker knew: reloaded from the cluster on next use.
    pub(super) fn forget(&mut self) {
        self.loaded = false;
    }
}

/// An error of the cluster, for the store's callers.
pub(super) fn unavailable(what: impl std::fmt::Display, e: impl std::fmt::Display) -> Error {
    Error::Unavailable(format!("{what}: {e}"))
}

/// The configuration of `topic`'s log stream.
fn config(topic: &Topic, name: &str, subjects: String, replicas: usize) -> stream::Config {
    stream::Config {
        name: name.to_owned(),
        subjects: vec![subjects],
        num_replicas: replicas,
        storage: stream::StorageType::File,
        allow_direct: true,
        description: Some(topic.as_str().to_owned()),
        duplicate_window: Duration::from_secs(120),
        // Batches are removed only by what removes them for every broker: nothing, today.
        deny_delete: true,
        deny_purge: true,
        ..Default::default()
    }
}

/// Whether `e` says the stream does not exist.
fn is_not_found(e: &js::context::GetStreamError) -> bool {
    matches!(e.kind(), js::context::GetStreamErrorKind::JetStream(e)
        if e.error_code() == js::ErrorCode::STREAM_NOT_FOUND)
}

/// Reads `log`'s state from the cluster, creating its stream first if `create` and it is missing.
pub(super) async fn load(
    js: js::Context,
    log: std::sync::Arc<TopicLog>,
    create: bool,
    replicas: usize,
) -> Result<TopicState> {
    let subjects = log.subjects.clone();
    let stream = match js.get_stream(&log.stream).await {
        Ok(stream) => stream,
        Err(e) if is_not_found(&e) && !create => {
            return Ok(TopicState { loaded: true, ..TopicState::default() });
        }
        Err(e) if is_not_found(&e) => js
            .get_or_create_stream(config(&log.topic, &log.stream, subjects.clone(), replicas))
            .await
            .map_err(|e| unavailable(format_args!("creating the log stream of {}", log.topic), e))?,
        Err(e) => return Err(unavailable(format_args!("the log stream of {}", log.topic), e)),
    };
    let info = stream.cached_info().state.clone();
    let mut state =
        TopicState { loaded: true, exists: true, last_seq: info.last_sequence, ..Default::default() };
    if info.messages == 0 {
        if info.last_sequence > 0 {
            return Err(Error::Storage(format!(
                "the log stream of {} is empty but held {} batches: its offsets cannot be recovered",
                log.topic, info.last_sequence
            )));
        }
        return Ok(state);
    }
    let stream = js
        .get_stream_no_info(&log.stream)
        .await
        .map_err(|e| unavailable(format_args!("the log stream of {}", log.topic), e))?;
    let Some(last) = get(&stream, At::Last(subjects.clone())).await? else {
        return Err(Error::Storage(format!(
            "the log stream of {} holds messages but none on its subjects",
            log.topic
        )));
    };
    let last_batch = names::stored_of(&last.headers, last.payload)?;
    state.next = last_batch.end();
    state.remember(last_batch.offset, last.sequence, last_batch.count);
    if let Some((seq, first)) = next_at(&stream, &subjects, info.first_sequence).await? {
        state.first = first.offset;
        state.remember(first.offset, seq, first.count);
    }
    Ok(state)
}

/// Which message of a stream [`get`] asks for.
pub(super) enum At {
    /// The one at this sequence.
    Seq(u64),
    /// The first on `subject` (a wildcard may match) at sequence `seq` or after.
    Next { seq: u64, subject: String },
    /// The last on this subject.
    Last(String),
}

/// One message of `stream`, as its leader has it (not a replica that may lag): `None` if there is none
/// there.
pub(super) async fn get(stream: &stream::Stream<()>, at: At) -> Result<Option<StreamMessage>> {
    let request = stream.raw_message_builder();
    let request = match at {
        At::Seq(seq) => request.sequence(seq),
        At::Next { seq, subject } => request.sequence(seq).next_by_subject(subject),
        At::Last(subject) => request.last_by_subject(subject),
    };
    match request.send().await {
        Ok(m) => Ok(Some(m)),
        Err(e) if matches!(e.kind(), LastRawMessageErrorKind::NoMessageFound) => Ok(None),
        Err(e) => Err(unavailable("reading a stream", e)),
    }
}

/// The first message of the log at sequence `seq` or after, with its sequence; `None` past the end.
pub(super) async fn next_at(
    stream: &stream::Stream<()>,
    subjects: &str,
    seq: u64,
) -> Result<Option<(u64, StoredBatch)>> {
    let at = At::Next { seq, subject: subjects.to_owned() };
    get(stream, at).await?.map(|m| Ok((m.sequence, names::stored_of(&m.headers, m.payload)?))).transpose()
}

/// The smallest sequence in `lo..=hi` whose batch ends after `from`, by binary search; `None` if none.
async fn locate(
    stream: &stream::Stream<()>,
    subjects: &str,
    from: Offset,
    lo: u64,
    hi: u64,
    learned: &mut Vec<(u64, StoredBatch)>,
) -> Result<Option<u64>> {
    let (mut lo, mut hi) = (lo, hi.saturating_add(1));
    let mut answer = None;
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        match next_at(stream, subjects, mid).await? {
            Some((seq, batch)) if seq < hi => {
                let end = batch.end();
                learned.push((seq, batch));
                if end > from {
                    answer = Some(seq);
                    hi = mid;
                } else {
                    lo = seq + 1;
                }
            }
            _ => hi = mid,
        }
    }
    Ok(answer)
}

/// What [`Store::read`](crate::store::Store::read) answers, read from the cluster, then from `unsynced`
/// (this broker's appends not yet acknowledged, in order): `hint` is where the state says `from` is,
/// `first` the topic's first offset; `last_seq` bounds the search. Every batch seen in the cluster is
/// also returned, with its sequence, to be remembered.
pub(super) async fn read(
    js: js::Context,
    log: std::sync::Arc<TopicLog>,
    (from, max_bytes): (Offset, usize),
    (hint, first, last_seq): (Option<u64>, Offset, u64),
    unsynced: Vec<StoredBatch>,
) -> Result<(Vec<Stored>, Vec<(u64, StoredBatch)>)> {
    let subjects = log.subjects.clone();
    let stream = js
        .get_stream_no_info(&log.stream)
        .await
        .map_err(|e| unavailable(format_args!("the log stream of {}", log.topic), e))?;
    let out: Vec<Stored> = retired_range(from, first).into_iter().collect();
    let mut learned = Vec::new();
    let start = match hint {
        Some(seq) => Some(seq),
        None => locate(&stream, &subjects, from.max(first), 1, last_seq.max(1), &mut learned).await?,
    };
    let mut page = Page { out, expected: from.max(first), bytes: 0, max_bytes };
    let Some(mut seq) = start else {
        page.take_all(unsynced);
        return Ok((page.out, learned));
    };
    let mut window = 1usize;
    let full = 'read: loop {
        let fetched =
            futures_util::future::join_all((seq..seq + window as u64).map(|s| stream.direct_get(s))).await;
        for (want, got) in (seq..).zip(fetched) {
            // Not found: deleted, past the end, or a replica behind the leader: ask the leader what is next.
            let (at, batch) = match got {
                Ok(m) => (want, names::stored_of(&m.headers, m.payload)?),
                Err(_) => match next_at(&stream, &subjects, want).await? {
                    Some(found) => found,
                    None => break 'read false,
                },
            };
            learned.push((at, batch.clone()));
            if !page.take(batch) {
                break 'read true;
            }
            seq = at + 1;
            if at != want {
                // Skipped past deleted messages: the rest of this window is behind.
                continue 'read;
            }
        }
        window = page.window();
    };
    if !full {
        page.take_all(unsynced);
    }
    Ok((page.out, learned))
}

/// A read's answer as it is collected: batches in offset order from `expected` on, a lost range where
/// offsets are missing, within `max_bytes` (but at least one batch). Sans-IO.
#[derive(Debug)]
struct Page {
    out: Vec<Stored>,
    /// The offset the next batch should start at.
    expected: Offset,
    bytes: usize,
    max_bytes: usize,
}

impl Page {
    /// Takes the next batch of the stream; `false` once the page is full (the batch was not taken).
    fn take(&mut self, batch: StoredBatch) -> bool {
        if batch.end() <= self.expected {
            // Before the offset asked for.
            return true;
        }
        let has_batch = self.out.iter().any(|s| matches!(s, Stored::Batch(_)));
        if has_batch && self.bytes.saturating_add(batch.bytes.len()) > self.max_bytes {
            return false;
        }
        if batch.offset > self.expected {
            self.out.push(Stored::Lost(Box::new(LostRange {
                offset: self.expected,
                count: batch.offset.0 - self.expected.0,
                batch: None,
                reason: LossReason::Missing,
            })));
        }
        self.bytes = self.bytes.saturating_add(batch.bytes.len());
        self.expected = batch.end();
        self.out.push(Stored::Batch(batch));
        true
    }

    /// Takes `batches` in order while the page has room.
    fn take_all(&mut self, batches: Vec<StoredBatch>) {
        for batch in batches {
            if !self.take(batch) {
                return;
            }
        }
    }

    /// How many messages to fetch next: what the budget left holds at the average size so far, 1 to
    /// [`READ_WINDOW`].
    fn window(&self) -> usize {
        let taken = self.out.len().max(1);
        let average = (self.bytes / taken).max(1);
        (self.max_bytes.saturating_sub(self.bytes) / average).clamp(1, READ_WINDOW)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembered_offsets_give_the_batch_or_the_next_one() {
        let mut state = TopicState::default();
        state.remember(Offset(10), 4, 5);
        assert_eq!(state.seq_of(Offset(10)), Some(4));
        assert_eq!(state.seq_of(Offset(14)), Some(4));
        assert_eq!(state.seq_of(Offset(15)), Some(5));
        assert_eq!(state.seq_of(Offset(16)), None);
        assert_eq!(state.seq_of(Offset(9)), None);
    }

    #[test]
    fn a_follower_moves_the_state_only_when_no_append_of_ours_is_in_flight() {
        let batch = |offset, count| StoredBatch { offset: Offset(offset), count, bytes: Default::default() };
        let mut state =
            TopicState { loaded: true, exists: true, last_seq: 3, next: Offset(9), ..Default::default() };
        state.observe(4, &batch(9, 2));
        assert_eq!((state.last_seq, state.next), (4, Offset(11)));
        state.pending = 1;
        state.observe(5, &batch(11, 2));
        assert_eq!((state.last_seq, state.next), (4, Offset(11)));
        assert_eq!(state.seq_of(Offset(12)), Some(5));
    }

    #[test]
    fn a_page_starts_at_the_batch_holding_the_offset_reports_holes_and_keeps_its_budget() {
        let batch = |offset, count, len| StoredBatch {
            offset: Offset(offset),
            count,
            bytes: bytes::Bytes::from(vec![0u8; len]),
        };
        let mut page = Page { out: Vec::new(), expected: Offset(5), bytes: 0, max_bytes: 25 };
        assert!(page.take(batch(0, 2, 10)));
        assert!(page.take(batch(2, 4, 10)));
        assert!(page.take(batch(9, 1, 10)));
        assert!(!page.take(batch(10, 1, 10)));
        let items: Vec<_> = page.out.iter().map(|s| (s.offset().0, s.end().0, s.bytes_len())).collect();
        assert_eq!(items, [(2, 6, 10), (6, 9, 0), (9, 10, 10)]);
        assert!(matches!(&page.out[1], Stored::Lost(l) if l.reason == LossReason::Missing));
        let mut big = Page { out: Vec::new(), expected: Offset(0), bytes: 0, max_bytes: 1 };
        assert!(big.take(batch(0, 1, 100)));
        assert_eq!(big.out.len(), 1);
        assert_eq!(big.window(), 1);
    }
}
