//! The batcher: the publisher's decision of which messages go into which sealed batch, and when.
//!
//! Messages are gathered in arrival order into an open batch, which closes when it holds `max_batch`
//! messages, when the next message would push the sealed batch over the size limit (counting the header
//! sections of a batch with headers, format version 3: once one message of the batch has headers, every
//! message of it costs its header section, one byte for none), or when the publisher
//! asks for it while fewer than [`PARTIAL_IN_FLIGHT`] batches await an answer and the batch's first
//! message has waited `linger`. Closed batches wait (in order) for room in the in-flight window.
//!
//! The in-flight rule is Nagle's algorithm without its timer, allowing a short pipeline: a message
//! published while fewer than [`PARTIAL_IN_FLIGHT`] batches are in flight goes at once, and messages
//! published while that many are in flight gather into the next batch, which goes when an answer comes (or
//! as soon as it is full). At low rates every message travels alone with no added wait; at high rates
//! batches grow to what arrives during a fraction of a round trip (the broker's fsync included), so the
//! per-batch costs (a signature, its verification, a store write) are paid once for many messages.
//!
//! Why a pipeline of two and not one: with one, a message published just after a batch left waits for
//! that batch's whole round trip (its trip to the broker, its verification, its fsync and the answer's
//! trip back) before it is even sealed, and the broker's disk sits idle for the parts of that round trip
//! that are not the fsync. With two, the next batch reaches the broker while the previous one is being
//! synced and joins the next group commit. More than two buys little latency (the broker syncs one group
//! at a time) and costs a signature, a verification and an open per extra batch. Sans-IO: time and the
//! in-flight state come in as arguments.

use std::collections::VecDeque;
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;

use sealpost_protocol::batch::{RECORD_OVERHEAD, SIGNATURE_LEN};
use sealpost_protocol::{Headers, Limits, Topic};

/// A batch that is not full is sealed only while fewer than this many batches await an answer (see the
/// module documentation).
pub(crate) const PARTIAL_IN_FLIGHT: usize = 2;

/// Messages bound for one sealed batch, each with what waits for its fate.
#[derive(Debug)]
pub(crate) struct Batch<W> {
    pub(crate) payloads: Vec<Bytes>,
    /// `headers[i]` go with `payloads[i]`.
    pub(crate) headers: Vec<Headers>,
    pub(crate) waiters: Vec<W>,
    /// Whether a message has headers: the batch is sealed in format version 3.
    with_headers: bool,
}

impl<W> Batch<W> {
    fn new() -> Self {
        Self { payloads: Vec::new(), headers: Vec::new(), waiters: Vec::new(), with_headers: false }
    }

    pub(crate) fn len(&self) -> usize {
        self.payloads.len()
    }
}

/// Why [`Batcher::push`] turned a message away.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct TooLarge {
    pub(crate) len: usize,
    pub(crate) max: usize,
}

/// Gathers messages into batches.
#[derive(Debug)]
pub(crate) struct Batcher<W> {
    max_batch: usize,
    linger: Duration,
    /// Largest sum of `RECORD_OVERHEAD + payload` (and, in a batch with headers, + header section) over a
    /// batch's records.
    max_records: usize,
    open: Batch<W>,
    open_records: usize,
    open_since: Option<Instant>,
    closed: VecDeque<Batch<W>>,
}

impl<W> Batcher<W> {
    /// A batcher for sealed batches on `topic` of at most `max_batch` messages (clamped to the limits)
    /// that hold a batch open for at most `linger` after its first message.
    pub(crate) fn new(topic: &Topic, max_batch: usize, linger: Duration, limits: &Limits) -> Self {
        // The fixed part of a sealed batch: header of format version 2, with its 16-byte chain id (see
        // sealpost_protocol::batch), and signature.
        let fixed = 2 + topic.as_str().len() + 8 + 32 + 16 + 8 + 4 + 32 + 8 + SIGNATURE_LEN;
        let max_records = (limits.max_batch_len as usize).saturating_sub(fixed);
        let max_batch = max_batch.clamp(1, limits.max_batch_messages as usize);
        Self {
            max_batch,
            linger,
            max_records,
            open: Batch::new(),
            open_records: 0,
            open_since: None,
            closed: VecDeque::new(),
        }
    }

    /// The largest payload that fits in a batch on its own, with its encoded headers if it has any.
    pub(crate) fn max_payload(&self) -> usize {
        self.max_records.saturating_sub(RECORD_OVERHEAD)
    }

    /// Adds a message. A message too large for any batch is turned away with its waiter.
    pub(crate) fn push(
        &mut self,
        headers: Headers,
        payload: Bytes,
        waiter: W,
        now: Instant,
    ) -> Result<(), (TooLarge, W)> {
        let has_headers = !headers.is_empty();
        let section = if has_headers { headers.encoded_len() } else { 0 };
        let len = payload.len() + section;
        if len > self.max_payload() {
            return Err((TooLarge { len, max: self.max_payload() }, waiter));
        }
        // What the open batch's records would take with this message: if it is the batch's first message
        // with headers, each message already in it gains a one-byte header section.
        let with_headers = self.open.with_headers || has_headers;
        let grown = if with_headers && !self.open.with_headers { self.open.len() } else { 0 };
        let record = RECORD_OVERHEAD + payload.len() + if with_headers { headers.encoded_len() } else { 0 };
        if self.open.len() > 0 && self.open_records + grown + record > self.max_records {
            self.close();
        }
        if self.open.len() == 0 {
            self.open_since = Some(now);
        }
        if has_headers && !self.open.with_headers {
            self.open.with_headers = true;
            self.open_records += self.open.len();
        }
        let record =
            RECORD_OVERHEAD + payload.len() + if self.open.with_headers { headers.encoded_len() } else { 0 };
        self.open.payloads.push(payload);
        self.open.headers.push(headers);
        self.open.waiters.push(waiter);
        self.open_records += record;
        if self.open.len() >= self.max_batch {
            self.close();
        }
        Ok(())
    }

    fn close(&mut self) {
        if self.open.len() > 0 {
            self.closed.push_back(std::mem::replace(&mut self.open, Batch::new()));
            self.open_records = 0;
            self.open_since = None;
        }
    }

    /// The next batch to seal, if one is due at `now` with `in_flight` batches awaiting an answer: a closed
    /// batch, or the open one if `force` (a flush, or the publisher closing), or if fewer than
    /// [`PARTIAL_IN_FLIGHT`] batches are in flight and the batch has lingered long enough.
    pub(crate) fn next(&mut self, now: Instant, force: bool, in_flight: usize) -> Option<Batch<W>> {
        if self.closed.is_empty() {
            match self.open_since {
                Some(since) if force || (room(in_flight) && now >= since + self.linger) => self.close(),
                _ => return None,
            }
        }
        self.closed.pop_front()
    }

    /// When the next batch is due if `in_flight` batches stay in flight: at once for a closed batch,
    /// `linger` after its first message for the open one while fewer than [`PARTIAL_IN_FLIGHT`] are in
    /// flight, and never (until an answer makes room) otherwise.
    pub(crate) fn deadline(&self, in_flight: usize) -> Option<Instant> {
        if !self.closed.is_empty() {
            return Some(Instant::now());
        }
        if !room(in_flight) {
            return None;
        }
        self.open_since.map(|since| since + self.linger)
    }

    /// Whether no message waits.
    pub(crate) fn is_empty(&self) -> bool {
        self.closed.is_empty() && self.open.len() == 0
    }

    /// Every waiting message (headers, payload, waiter), in order; leaves the batcher empty.
    pub(crate) fn drain(&mut self) -> impl Iterator<Item = (Headers, Bytes, W)> + '_ {
        self.close();
        self.closed.drain(..).flat_map(|b| {
            b.headers
                .into_iter()
                .zip(b.payloads)
                .zip(b.waiters)
                .map(|((headers, payload), w)| (headers, payload, w))
        })
    }
}

/// Whether a batch that is not full may be sealed while `in_flight` batches await an answer.
fn room(in_flight: usize) -> bool {
    in_flight < PARTIAL_IN_FLIGHT
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topic() -> Topic {
        Topic::new("demo.x").unwrap()
    }

    fn batcher(max_batch: usize, linger_ms: u64) -> Batcher<u32> {
        Batcher::new(&topic(), max_batch, Duration::from_millis(linger_ms), &Limits::default())
    }

    fn ms(t0: Instant, n: u64) -> Instant {
        t0 + Duration::from_millis(n)
    }

    #[test]
    fn a_full_batch_is_due_at_once() {
        let t0 = Instant::now();
        let mut b = batcher(3, 1000);
        for i in 0..7 {
            b.push(Headers::new(), Bytes::from(vec![1; 10]), i, t0).unwrap();
        }
        let first = b.next(t0, false, 0).unwrap();
        assert_eq!(first.waiters, [0, 1, 2]);
        assert_eq!(b.next(t0, false, 0).unwrap().waiters, [3, 4, 5]);
        // The seventh message lingers.
        assert!(b.next(t0, false, 0).is_none());
        assert!(!b.is_empty());
    }

    #[test]
    fn a_partial_batch_waits_for_linger() {
        let t0 = Instant::now();
        let mut b = batcher(256, 5);
        b.push(Headers::new(), Bytes::from_static(b"a"), 0, t0).unwrap();
        b.push(Headers::new(), Bytes::from_static(b"b"), 1, ms(t0, 3)).unwrap();
        assert_eq!(b.deadline(0), Some(ms(t0, 5)));
        assert!(b.next(ms(t0, 4), false, 0).is_none());
        let batch = b.next(ms(t0, 5), false, 0).unwrap();
        assert_eq!(batch.payloads, [Bytes::from_static(b"a"), Bytes::from_static(b"b")]);
        assert!(b.is_empty());
        assert_eq!(b.deadline(0), None);
    }

    #[test]
    fn a_lone_message_goes_at_once_when_idle() {
        let t0 = Instant::now();
        let mut b = batcher(256, 0);
        b.push(Headers::new(), Bytes::from_static(b"a"), 0, t0).unwrap();
        assert_eq!(b.deadline(0), Some(t0));
        assert_eq!(b.next(t0, false, 0).unwrap().waiters, [0]);
    }

    #[test]
    fn a_partial_batch_goes_at_once_while_the_pipeline_has_room() {
        let t0 = Instant::now();
        let mut b = batcher(256, 0);
        b.push(Headers::new(), Bytes::from_static(b"a"), 0, t0).unwrap();
        assert_eq!(b.deadline(PARTIAL_IN_FLIGHT - 1), Some(t0));
        assert_eq!(b.next(t0, false, PARTIAL_IN_FLIGHT - 1).unwrap().waiters, [0]);
    }

    #[test]
    fn a_partial_batch_waits_while_the_pipeline_is_full() {
        let t0 = Instant::now();
        let mut b = batcher(3, 0);
        for i in 0..2 {
            b.push(Headers::new(), Bytes::from_static(b"a"), i, ms(t0, i.into())).unwrap();
        }
        // Busy: no timer, nothing due however long it waits.
        assert_eq!(b.deadline(PARTIAL_IN_FLIGHT), None);
        assert!(b.next(ms(t0, 1000), false, PARTIAL_IN_FLIGHT).is_none());
        // Once an answer came, everything gathered goes as one batch.
        assert_eq!(b.next(ms(t0, 1000), false, 0).unwrap().waiters, [0, 1]);
        // A full batch goes while busy.
        for i in 2..6 {
            b.push(Headers::new(), Bytes::from_static(b"a"), i, t0).unwrap();
        }
        assert!(b.deadline(PARTIAL_IN_FLIGHT).is_some(), "a closed batch is due at once");
        assert_eq!(b.next(t0, false, PARTIAL_IN_FLIGHT).unwrap().waiters, [2, 3, 4]);
        assert!(b.next(t0, false, PARTIAL_IN_FLIGHT).is_none());
        // A flush takes the partial batch even while busy.
        assert_eq!(b.next(t0, true, PARTIAL_IN_FLIGHT).unwrap().waiters, [5]);
    }

    #[test]
    fn force_takes_the_open_batch_before_linger() {
        let t0 = Instant::now();
        let mut b = batcher(256, 1000);
        b.push(Headers::new(), Bytes::from_static(b"a"), 0, t0).unwrap();
        assert_eq!(b.next(t0, true, 0).unwrap().waiters, [0]);
        assert!(b.next(t0, true, 0).is_none());
    }

    #[test]
    fn batches_are_cut_before_they_exceed_the_size_limit() {
        let limits = Limits { max_batch_len: 1000, ..Limits::default() };
        let t0 = Instant::now();
        let mut b: Batcher<u32> = Batcher::new(&topic(), 256, Duration::ZERO, &limits);
        // Version, topic length, topic, the header's fields (92 bytes and the 16-byte chain id), signature.
        let fixed = 2 + 6 + 92 + 16 + 64;
        assert_eq!(b.max_payload(), 1000 - fixed - RECORD_OVERHEAD);
        // Two records of 300 bytes fit (2 * 344 = 688 <= 818), a third does not.
        for i in 0..3 {
            b.push(Headers::new(), Bytes::from(vec![0; 300]), i, t0).unwrap();
        }
        assert_eq!(b.next(t0, false, 0).unwrap().waiters, [0, 1]);
        assert_eq!(b.next(t0, false, 0).unwrap().waiters, [2]);
        // The largest payload is accepted alone; one byte more is turned away.
        b.push(Headers::new(), Bytes::from(vec![0; b.max_payload()]), 9, t0).unwrap();
        let (err, w) = b.push(Headers::new(), Bytes::from(vec![0; b.max_payload() + 1]), 10, t0).unwrap_err();
        assert_eq!(err, TooLarge { len: b.max_payload() + 1, max: b.max_payload() });
        assert_eq!(w, 10);
    }

    #[test]
    fn a_sealed_batch_at_the_limit_really_fits() {
        use sealpost_protocol::{seal, ContentKey, Epoch, SealParams, SigningKey, Timestamp};
        let limits = Limits { max_batch_len: 2000, ..Limits::default() };
        let b: Batcher<u32> = Batcher::new(&topic(), 256, Duration::ZERO, &limits);
        let payload = vec![7u8; b.max_payload()];
        let params = SealParams {
            topic: topic(),
            epoch: Epoch(1),
            chain: sealpost_protocol::ChainId([0x5C; 16]),
            first_seq: 1,
            prev_digest: sealpost_protocol::Digest::ZERO,
            created_at: Timestamp(0),
        };
        let sealed = seal(
            &SigningKey::from_bytes(&[1; 32]),
            &ContentKey::from_bytes(&[2; 32]),
            params,
            &[payload],
            &limits,
            &mut rand::rngs::OsRng,
        )
        .unwrap();
        assert_eq!(sealed.as_bytes().len(), 2000);
    }

    fn kv() -> Headers {
        Headers::new().with("k", "v").unwrap()
    }

    #[test]
    fn headers_count_towards_the_message_size() {
        let limits = Limits { max_batch_len: 1000, ..Limits::default() };
        let t0 = Instant::now();
        let mut b: Batcher<u32> = Batcher::new(&topic(), 256, Duration::ZERO, &limits);
        let max = b.max_payload();
        // `k=v` encodes in 6 bytes: the payload beside it may be 6 bytes shorter.
        b.push(kv(), Bytes::from(vec![0; max - 6]), 0, t0).unwrap();
        let (err, w) = b.push(kv(), Bytes::from(vec![0; max - 5]), 1, t0).unwrap_err();
        assert_eq!((err, w), (TooLarge { len: max + 1, max }, 1));
        let batch = b.next(t0, true, 0).unwrap();
        assert_eq!((batch.waiters, batch.headers), (vec![0], vec![kv()]));
    }

    #[test]
    fn the_first_message_with_headers_costs_a_byte_for_each_message_before_it() {
        let limits = Limits { max_batch_len: 1000, ..Limits::default() };
        let t0 = Instant::now();
        let mut b: Batcher<u32> = Batcher::new(&topic(), 256, Duration::ZERO, &limits);
        let room = b.max_records;
        // Two messages without headers fill all but 7 bytes of the records.
        let first = room - 2 * RECORD_OVERHEAD - RECORD_OVERHEAD - 7 - 100;
        b.push(Headers::new(), Bytes::from(vec![0; first]), 0, t0).unwrap();
        b.push(Headers::new(), Bytes::from(vec![0; 100]), 1, t0).unwrap();
        // A third record with `k=v` and an empty payload needs RECORD_OVERHEAD + 6, which is left, but it
        // turns the batch to version 3: the two before it gain a byte each, and that no longer fits.
        b.push(kv(), Bytes::new(), 2, t0).unwrap();
        assert_eq!(b.next(t0, false, 0).unwrap().waiters, [0, 1]);
        assert_eq!(b.next(t0, true, 0).unwrap().waiters, [2]);
        // With one byte more of room (a first message one byte shorter), all three fit in one batch.
        b.push(Headers::new(), Bytes::from(vec![0; first - 1]), 3, t0).unwrap();
        b.push(Headers::new(), Bytes::from(vec![0; 100]), 4, t0).unwrap();
        b.push(kv(), Bytes::new(), 5, t0).unwrap();
        assert_eq!(b.next(t0, true, 0).unwrap().waiters, [3, 4, 5]);
    }

    #[test]
    fn a_sealed_batch_with_headers_at_the_limit_really_fits() {
        use sealpost_protocol::{seal_with_headers, ContentKey, Epoch, SealParams, SigningKey, Timestamp};
        let limits = Limits { max_batch_len: 2000, ..Limits::default() };
        let t0 = Instant::now();
        let mut b: Batcher<u32> = Batcher::new(&topic(), 256, Duration::ZERO, &limits);
        // A message without headers, then one with headers that fills the batch exactly (its own record,
        // and the first message's header count byte).
        b.push(Headers::new(), Bytes::from(vec![1; 300]), 0, t0).unwrap();
        let last = b.max_records - (RECORD_OVERHEAD + 300 + 1) - RECORD_OVERHEAD - kv().encoded_len();
        b.push(kv(), Bytes::from(vec![2; last]), 1, t0).unwrap();
        let batch = b.next(t0, true, 0).unwrap();
        assert_eq!(batch.waiters, [0, 1], "both fit");
        let params = SealParams {
            topic: topic(),
            epoch: Epoch(1),
            chain: sealpost_protocol::ChainId([0x5C; 16]),
            first_seq: 1,
            prev_digest: sealpost_protocol::Digest::ZERO,
            created_at: Timestamp(0),
        };
        let sealed = seal_with_headers(
            &SigningKey::from_bytes(&[1; 32]),
            &ContentKey::from_bytes(&[2; 32]),
            params,
            &batch.payloads,
            &batch.headers,
            &limits,
            &mut rand::rngs::OsRng,
        )
        .unwrap();
        assert_eq!((sealed.as_bytes()[0], sealed.as_bytes().len()), (3, 2000));
    }

    #[test]
    fn max_batch_is_clamped_to_at_least_one() {
        let t0 = Instant::now();
        let mut b = batcher(0, 1000);
        b.push(Headers::new(), Bytes::new(), 0, t0).unwrap();
        assert_eq!(b.next(t0, false, 0).unwrap().waiters, [0]);
    }

    #[test]
    fn drain_returns_every_waiter_in_order() {
        let t0 = Instant::now();
        let mut b = batcher(2, 1000);
        for i in 0..5 {
            b.push(Headers::new(), Bytes::new(), i, t0).unwrap();
        }
        assert_eq!(b.drain().map(|(_, _, waiter)| waiter).collect::<Vec<_>>(), [0, 1, 2, 3, 4]);
        assert!(b.is_empty());
    }
}
