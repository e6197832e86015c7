//! The publish pipeline, sans-IO: every decision of a publisher that carries state, from a published
//! message to its receipt, with no socket, task or clock inside.
//!
//! It owns the [`Batcher`] (which messages go into which batch, and when), the chain head the next sealed
//! batch continues, the window of batches sent and not yet answered (each kept as the exact bytes of its
//! `Publish` frame), and the flush callers. The async task (`task.rs`) feeds it what happens (a message, a
//! flush, a stream opened with the broker's chain head, an answer) with the time as an argument, seals the
//! batches it hands out, and moves the bytes it says to move.
//!
//! # What it guarantees
//!
//! - **Receipts in order.** The broker answers a stream's requests in order; an answer for any other request
//!   than the oldest in flight, or for another number of messages, is a protocol violation. Each answer
//!   resolves its batch's messages with consecutive offsets and sequence numbers.
//! - **Resend unchanged.** A batch stays in flight, byte for byte, until it is answered; after a loss
//!   [`to_resend`](Pipeline::to_resend) hands back every such frame, oldest first, to send again on the
//!   new stream, and the chain goes on after the newest of them (the broker's head is taken only when nothing
//!   is in flight). The broker stores a batch it sees again once.
//! - **A refusal fails the rest of the stream.** Each batch names its predecessor's digest, so once the
//!   broker refuses the oldest batch in flight nothing sent after it can be stored either: all of them fail
//!   with the refusal, and the next batch starts from the chain head of a new stream.
//! - **Flushes and closing see everything before them.** A flush completes once every message published
//!   before it is resolved; while one waits, or while closing, batches go without lingering.
//!
//! Every waiter is resolved exactly once: with its receipt, a refusal, a too-large error, or the error that
//! killed the publisher (the waiters [`take_all`](Pipeline::take_all) returns).

use std::collections::VecDeque;

use bytes::Bytes;
use sealpost_protocol::{ChainHead, Headers, Offset, VerifiedBatch};
use tokio::time::Instant;

use crate::error::{Error, Result};

use super::batcher::{Batch, Batcher, TooLarge};

/// Where a published message was stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Receipt {
    /// Its offset in the topic's log.
    pub offset: Offset,
    /// Its sequence number in this identity's chain on the topic.
    pub seq: u64,
}

/// What waits for one message's fate.
pub(crate) trait Waiter {
    /// Tells the message's fate; called once.
    fn resolve(self, outcome: Result<Receipt>);
}

/// A sealed batch sent and not yet answered.
#[derive(Debug)]
struct InFlight<W> {
    request_id: u64,
    /// The encoded `Publish` frame: resent unchanged after a reconnect.
    frame: Bytes,
    /// The sealed batch it carries: handed back if the publisher gives up ([`Pipeline::give_up`]).
    sealed: Bytes,
    first_seq: u64,
    count: u32,
    /// The chain head right after this batch.
    after: ChainHead,
    waiters: Vec<W>,
}

/// The state of one publisher's messages, from published to resolved. See the module documentation.
#[derive(Debug)]
pub(crate) struct Pipeline<W, F> {
    batcher: Batcher<W>,
    max_in_flight: usize,
    /// Where the next sealed batch continues the chain.
    head: ChainHead,
    /// The chain head after the last batch the broker stored: where a new stream with nothing in flight
    /// continues (a refused batch was not stored, nor anything sent after it).
    acked: ChainHead,
    /// Sent batches, oldest first; the broker answers in this order.
    in_flight: VecDeque<InFlight<W>>,
    /// Every handle is gone: send what is queued, then stop.
    closing: bool,
    /// Messages accepted, handed out for sealing, and resolved (stored or failed), counted in order.
    enqueued: u64,
    sealed: u64,
    resolved: u64,
    /// Hand out batches without lingering until `sealed` reaches this.
    flush_to: u64,
    /// Flush callers, each waiting for `resolved` to reach its count.
    flushes: Vec<(u64, F)>,
}

impl<W: Waiter, F> Pipeline<W, F> {
    /// A pipeline that batches with `batcher` and keeps at most `max_in_flight` batches (at least 1)
    /// unanswered, starting from the genesis of the chain.
    pub(crate) fn new(batcher: Batcher<W>, max_in_flight: usize) -> Self {
        Self {
            batcher,
            max_in_flight: max_in_flight.max(1),
            head: ChainHead::GENESIS,
            acked: ChainHead::GENESIS,
            in_flight: VecDeque::new(),
            closing: false,
            enqueued: 0,
            sealed: 0,
            resolved: 0,
            flush_to: 0,
            flushes: Vec::new(),
        }
    }

    // What the application does.

    /// Queues `payload` with `headers`, published at `now`. A message too large for any batch is resolved
    /// at once with [`Error::MessageTooLarge`].
    pub(crate) fn publish(&mut self, headers: Headers, payload: Bytes, waiter: W, now: Instant) {
        match self.batcher.push(headers, payload, waiter, now) {
            Ok(()) => self.enqueued += 1,
            Err((TooLarge { len, max }, waiter)) => waiter.resolve(Err(Error::MessageTooLarge { len, max })),
        }
    }

    /// `done` waits until every message published so far is resolved; until then batches go without
    /// lingering. Collect it from [`flushed`](Self::flushed).
    pub(crate) fn flush(&mut self, done: F) {
        self.flush_to = self.enqueued;
        self.flushes.push((self.enqueued, done));
    }

    /// Every handle is gone: nothing more will be published, and what is queued goes without lingering.
    pub(crate) fn close(&mut self) {
        self.closing = true;
    }

    /// Whether [`close`](Self::close) was called.
    pub(crate) fn is_closing(&self) -> bool {
        self.closing
    }

    /// Whether messages wait for their fate: queued, or in flight.
    pub(crate) fn has_work(&self) -> bool {
        !(self.in_flight.is_empty() && self.batcher.is_empty())
    }

    /// Whether the publisher has nothing left to do: closing, and every message resolved.
    pub(crate) fn is_done(&self) -> bool {
        self.closing && !self.has_work()
    }

    // What the stream does.

    /// What a new stream must carry first, after `Head`: the frame of every batch still in flight, oldest
    /// first, byte for byte.
    pub(crate) fn to_resend(&self) -> impl ExactSizeIterator<Item = &Bytes> {
        self.in_flight.iter().map(|batch| &batch.frame)
    }

    /// A new stream is open, the broker holds `head` as this publisher's chain head, and
    /// [`to_resend`](Self::to_resend) was sent on it. With nothing in flight the next batch continues the
    /// broker's head; otherwise it continues the newest batch in flight.
    pub(crate) fn opened(&mut self, head: ChainHead) {
        if self.in_flight.is_empty() {
            self.head = head;
        }
    }

    /// The first stream is open and the broker holds `head` as the head of the chain this publisher
    /// continues from a previous process (checked against what that process had acknowledged): the
    /// chain goes on after it. Only before anything was sent.
    pub(crate) fn resume(&mut self, head: ChainHead) {
        if self.in_flight.is_empty() {
            self.head = head;
            self.acked = head;
        }
    }

    /// Whether batches await an answer on the stream.
    pub(crate) fn awaits_answers(&self) -> bool {
        !self.in_flight.is_empty()
    }

    /// The next batch to seal, if one is due at `now` and the window has room. Seal it after
    /// [`head`](Self::head), then hand it back with [`sent`](Self::sent) (or fail its waiters).
    pub(crate) fn next_batch(&mut self, now: Instant) -> Option<Batch<W>> {
        if self.in_flight.len() >= self.max_in_flight {
            return None;
        }
        let force = self.closing || self.sealed < self.flush_to;
        let batch = self.batcher.next(now, force, self.in_flight.len())?;
        self.sealed += batch.len() as u64;
        Some(batch)
    }

    /// When the next batch is due, if the window has room and nothing is due now (`None`: only an answer
    /// or a message can make one due).
    pub(crate) fn deadline(&self) -> Option<Instant> {
        if self.in_flight.len() >= self.max_in_flight {
            return None;
        }
        self.batcher.deadline(self.in_flight.len())
    }

    /// Where the next sealed batch continues the chain.
    pub(crate) fn head(&self) -> ChainHead {
        self.head
    }

    /// The chain head after the last batch the broker stored ([`ChainHead::GENESIS`] before one): what
    /// the publisher's own chain continues on a new stream once nothing is in flight. The broker's `Head`
    /// answers for the legacy chain only; a publisher instance's chain is its own to know.
    pub(crate) fn acked_head(&self) -> ChainHead {
        self.acked
    }

    /// The batch whose messages wait in `waiters` was sealed as `sealed` and is sent as request
    /// `request_id` in `frame`: it is in flight from now on, and the chain goes on after it.
    pub(crate) fn sent(&mut self, waiters: Vec<W>, sealed: &VerifiedBatch, request_id: u64, frame: Bytes) {
        self.head = ChainHead::after(sealed);
        let header = sealed.header();
        let (first_seq, count) = (header.first_seq, header.count);
        let sealed_bytes = sealed.as_bytes().clone();
        self.in_flight.push_back(InFlight {
            request_id,
            frame,
            sealed: sealed_bytes,
            first_seq,
            count,
            after: self.head,
            waiters,
        });
    }

    /// The broker stored the batch of `request_id`, `count` messages from `first_offset` on: its messages
    /// get their receipts. Anything but an answer for the oldest batch in flight is a protocol violation.
    pub(crate) fn on_published(&mut self, request_id: u64, first_offset: Offset, count: u32) -> Result<()> {
        match self.in_flight.front() {
            Some(batch) if batch.request_id == request_id && batch.count == count => {}
            Some(batch) => {
                return Err(Error::violation(format!(
                    "answer for request {request_id} ({count} messages) while request {} ({} messages) \
                     was expected",
                    batch.request_id, batch.count
                )))
            }
            None => return Err(Error::violation("an answer to no request")),
        }
        let Some(batch) = self.in_flight.pop_front() else { return Ok(()) };
        self.acked = batch.after;
        for ((i, waiter), seq) in batch.waiters.into_iter().enumerate().zip(batch.first_seq..) {
            let offset = first_offset.saturating_add(i as u64);
            waiter.resolve(Ok(Receipt { offset, seq }));
        }
        self.resolved += u64::from(count);
        Ok(())
    }

    /// The broker refused `request_id` with `refusal`. If it is the oldest batch in flight, it and every
    /// batch after it fail with the refusal, and `Ok`: the stream is done for, and the next batch continues
    /// the head of a new one. A refusal of another request is a protocol violation, and one of no request
    /// (`None`) ends the publisher (`Err(refusal)`).
    pub(crate) fn on_refused(&mut self, request_id: Option<u64>, refusal: Error) -> Result<()> {
        match request_id {
            Some(id) if self.in_flight.front().is_some_and(|b| b.request_id == id) => {
                for batch in self.in_flight.drain(..) {
                    self.resolved += u64::from(batch.count);
                    for waiter in batch.waiters {
                        waiter.resolve(Err(refusal.clone()));
                    }
                }
                Ok(())
            }
            Some(id) => Err(Error::violation(format!("an error for request {id}, which is not next"))),
            None => Err(refusal),
        }
    }

    /// The flush callers whose messages are all resolved now.
    pub(crate) fn flushed(&mut self) -> Vec<F> {
        let resolved = self.resolved;
        let (done, waiting): (Vec<_>, Vec<_>) =
            std::mem::take(&mut self.flushes).into_iter().partition(|(upto, _)| *upto <= resolved);
        self.flushes = waiting;
        done.into_iter().map(|(_, done)| done).collect()
    }

    /// The publisher is dead: takes every message in flight and queued, oldest first: what they were (the
    /// sealed batches in flight, byte for byte, then the messages queued and never sealed) and their
    /// waiters, to fail once that was handed back. The flush callers are dropped (they see the failure).
    pub(crate) fn take_all(&mut self) -> (Unanswered, Vec<W>) {
        let mut unanswered = Unanswered::default();
        let mut waiters = Vec::new();
        for batch in self.in_flight.drain(..) {
            unanswered.sealed.push(batch.sealed);
            unanswered.sealed_messages += batch.waiters.len();
            waiters.extend(batch.waiters);
        }
        for (headers, payload, waiter) in self.batcher.drain() {
            unanswered.unsent.push((headers, payload));
            waiters.push(waiter);
        }
        self.flushes.clear();
        (unanswered, waiters)
    }
}

/// What a dead publisher's failed messages were ([`Pipeline::take_all`]), oldest first.
#[derive(Debug, Default)]
pub(crate) struct Unanswered {
    /// The sealed batches sent and not answered, byte for byte.
    pub(crate) sealed: Vec<Bytes>,
    /// How many messages they hold.
    pub(crate) sealed_messages: usize,
    /// The messages queued and never sealed: headers and payload.
    pub(crate) unsent: Vec<(Headers, Bytes)>,
}

impl Unanswered {
    /// Whether there is nothing.
    pub(crate) fn is_empty(&self) -> bool {
        self.sealed.is_empty() && self.unsent.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;
    use std::rc::Rc;
    use std::time::Duration;

    use sealpost_protocol::{seal, ErrorCode, Limits, SealParams, Timestamp};

    use super::*;
    use crate::error::Action;
    use crate::keyring::tests::{content_key, signer, topic};

    /// Each message's fate, by the message's number, in the order they were resolved.
    type Log = Rc<RefCell<Vec<(u32, Result<Receipt, String>)>>>;

    struct Probe(u32, Log);

    impl Waiter for Probe {
        fn resolve(self, outcome: Result<Receipt>) {
            self.1.borrow_mut().push((self.0, outcome.map_err(|e| e.to_string())));
        }
    }

    /// A publisher's pipeline on `topic()` sealing with alice's keys, as the task drives it.
    struct Harness {
        pipeline: Pipeline<Probe, &'static str>,
        log: Log,
        next_message: u32,
        next_request: u64,
        now: Instant,
    }

    impl Harness {
        fn new(max_batch: usize, max_in_flight: usize) -> Self {
            let limits = Limits::default();
            let batcher = Batcher::new(&topic(), max_batch, Duration::ZERO, &limits);
            Self {
                pipeline: Pipeline::new(batcher, max_in_flight),
                log: Log::default(),
                next_message: 0,
                next_request: 1,
                now: Instant::now(),
            }
        }

        fn publish(&mut self, n: usize) {
            for _ in 0..n {
                let m = self.next_message;
                self.next_message += 1;
                let payload = Bytes::from(format!("m{m}"));
                self.pipeline.publish(Headers::new(), payload, Probe(m, self.log.clone()), self.now);
            }
        }

        /// Seals and "sends" every batch that is due: (request id, frame), in order.
        fn pump(&mut self) -> Vec<(u64, Bytes)> {
            let mut sent = Vec::new();
            while let Some(batch) = self.pipeline.next_batch(self.now) {
                let head = self.pipeline.head();
                let params = SealParams {
                    topic: topic(),
                    epoch: sealpost_protocol::Epoch(1),
                    chain: sealpost_protocol::ChainId([0x5C; 16]),
                    first_seq: head.next_seq,
                    prev_digest: head.prev_digest,
                    created_at: Timestamp(1),
                };
                let limits = Limits::default();
                let sealed = seal(
                    &signer("alice"),
                    &content_key(1),
                    params,
                    &batch.payloads,
                    &limits,
                    &mut rand::rngs::OsRng,
                )
                .unwrap();
                let request_id = self.next_request;
                self.next_request += 1;
                // The frame's exact bytes do not matter here, only that they travel unchanged.
                let frame = sealed.as_bytes().clone();
                self.pipeline.sent(batch.waiters, &sealed, request_id, frame.clone());
                sent.push((request_id, frame));
            }
            sent
        }

        /// The fates resolved so far, as `m@offset/seq` or `m: error`, and forgets them.
        fn take(&self) -> Vec<String> {
            self.log
                .borrow_mut()
                .drain(..)
                .map(|(m, outcome)| match outcome {
                    Ok(r) => format!("{m}@{}/{}", r.offset, r.seq),
                    Err(e) => format!("{m}: {e}"),
                })
                .collect()
        }
    }

    fn refusal(code: ErrorCode) -> Error {
        Error::refused(Action::Publish, &topic(), code, "")
    }

    #[test]
    fn receipts_resolve_in_order_with_consecutive_offsets_and_sequence_numbers() {
        let mut h = Harness::new(2, 8);
        h.pipeline.opened(ChainHead::GENESIS);
        h.publish(5);
        let sent = h.pump();
        // Two full batches go at once; the fifth message waits while two batches are in flight.
        assert_eq!(sent.len(), 2);
        h.pipeline.on_published(sent[0].0, Offset(10), 2).unwrap();
        assert_eq!(h.take(), ["0@10/1", "1@11/2"]);
        let more = h.pump();
        assert_eq!(more.len(), 1, "an answer makes room for the partial batch");
        h.pipeline.on_published(sent[1].0, Offset(12), 2).unwrap();
        h.pipeline.on_published(more[0].0, Offset(14), 1).unwrap();
        assert_eq!(h.take(), ["2@12/3", "3@13/4", "4@14/5"]);
        assert!(!h.pipeline.has_work());
    }

    #[test]
    fn an_answer_out_of_order_or_for_another_count_is_a_protocol_violation() {
        let mut h = Harness::new(2, 8);
        h.pipeline.opened(ChainHead::GENESIS);
        h.publish(4);
        let sent = h.pump();
        let e = h.pipeline.on_published(sent[1].0, Offset(0), 2).unwrap_err();
        assert!(matches!(e, Error::ProtocolViolation { .. }), "{e}");
        let e = h.pipeline.on_published(sent[0].0, Offset(0), 3).unwrap_err();
        assert!(matches!(e, Error::ProtocolViolation { .. }), "{e}");
        assert!(h.take().is_empty(), "nothing was resolved");
        h.pipeline.on_published(sent[0].0, Offset(0), 2).unwrap();
        h.pipeline.on_published(sent[1].0, Offset(2), 2).unwrap();
        let e = h.pipeline.on_published(99, Offset(4), 1).unwrap_err();
        assert_eq!(e.to_string(), "the broker broke the protocol: an answer to no request");
    }

    #[test]
    fn after_a_loss_every_unanswered_batch_is_resent_unchanged_and_the_chain_goes_on_after_them() {
        let mut h = Harness::new(1, 2);
        h.pipeline.opened(ChainHead::GENESIS);
        h.publish(3);
        let sent = h.pump();
        assert_eq!(sent.len(), 2, "a window of two");
        h.pipeline.on_published(sent[0].0, Offset(0), 1).unwrap();
        // The stream is lost with the second batch unanswered (perhaps stored). The broker's head may be
        // before or after it: what is in flight decides.
        let resent: Vec<Bytes> = h.pipeline.to_resend().cloned().collect();
        assert_eq!(resent, [sent[1].1.clone()]);
        h.pipeline.opened(ChainHead::GENESIS);
        let third = h.pump();
        assert_eq!(third.len(), 1);
        // The broker answers the resent batch with its original offset, then the third.
        h.pipeline.on_published(sent[1].0, Offset(1), 1).unwrap();
        h.pipeline.on_published(third[0].0, Offset(2), 1).unwrap();
        assert_eq!(h.take(), ["0@0/1", "1@1/2", "2@2/3"]);
        // With nothing in flight a new stream takes the broker's head.
        let head = ChainHead { next_seq: 42, prev_digest: sealpost_protocol::Digest([7; 32]) };
        assert_eq!(h.pipeline.to_resend().len(), 0);
        h.pipeline.opened(head);
        assert_eq!(h.pipeline.head(), head);
    }

    #[test]
    fn a_refused_batch_fails_with_every_batch_after_it_and_the_next_continues_a_new_head() {
        let mut h = Harness::new(1, 8);
        h.pipeline.opened(ChainHead::GENESIS);
        h.publish(1);
        let first = h.pump();
        h.publish(1);
        let second = h.pump();
        assert_eq!((first.len(), second.len()), (1, 1));
        h.publish(1); // waits: two in flight
                      // A refusal of another request than the oldest is a violation; one of no request ends the publisher.
        let e = h.pipeline.on_refused(Some(second[0].0), refusal(ErrorCode::RATE_LIMITED)).unwrap_err();
        assert!(matches!(e, Error::ProtocolViolation { .. }), "{e}");
        let e = h.pipeline.on_refused(None, refusal(ErrorCode::INTERNAL)).unwrap_err();
        assert!(matches!(e, Error::Refused { code: ErrorCode::INTERNAL, .. }), "{e}");
        h.pipeline.on_refused(Some(first[0].0), refusal(ErrorCode::RATE_LIMITED)).unwrap();
        let rate_limited = "cannot publish on demo.x: rate limited by the broker; retry later";
        assert_eq!(h.take(), [format!("0: {rate_limited}"), format!("1: {rate_limited}")]);
        // The third message was not sent: it goes on the new stream, after the broker's head.
        let head = ChainHead { next_seq: 1, prev_digest: sealpost_protocol::Digest::ZERO };
        assert_eq!(h.pipeline.to_resend().len(), 0);
        h.pipeline.opened(head);
        let third = h.pump();
        h.pipeline.on_published(third[0].0, Offset(0), 1).unwrap();
        assert_eq!(h.take(), ["2@0/1"]);
    }

    #[test]
    fn after_a_refusal_the_chain_continues_the_last_stored_batch() {
        let mut h = Harness::new(1, 8);
        h.pipeline.opened(ChainHead::GENESIS);
        assert_eq!(h.pipeline.acked_head(), ChainHead::GENESIS);
        h.publish(1);
        let first = h.pump();
        h.pipeline.on_published(first[0].0, Offset(0), 1).unwrap();
        let stored = h.pipeline.head();
        assert_eq!(h.pipeline.acked_head(), stored);
        assert_eq!(stored.next_seq, 2);
        h.publish(1);
        let second = h.pump();
        assert_ne!(h.pipeline.head(), stored);
        h.pipeline.on_refused(Some(second[0].0), refusal(ErrorCode::RATE_LIMITED)).unwrap();
        // The refused batch was not stored: a new stream continues after the first one.
        assert_eq!(h.pipeline.acked_head(), stored);
        h.pipeline.opened(h.pipeline.acked_head());
        assert_eq!(h.pipeline.head(), stored);
    }

    #[test]
    fn the_window_holds_at_most_max_in_flight_batches() {
        let mut h = Harness::new(1, 3);
        h.pipeline.opened(ChainHead::GENESIS);
        h.publish(10);
        let sent = h.pump();
        assert_eq!(sent.len(), 3);
        assert_eq!(h.pipeline.deadline(), None, "no timer while the window is full");
        h.pipeline.on_published(sent[0].0, Offset(0), 1).unwrap();
        assert_eq!(h.pump().len(), 1);
    }

    #[test]
    fn a_flush_completes_once_everything_before_it_is_resolved() {
        let mut h = Harness::new(10, 8);
        h.pipeline.opened(ChainHead::GENESIS);
        h.publish(1);
        let first = h.pump();
        h.publish(1);
        let second = h.pump();
        h.publish(1);
        assert!(h.pump().is_empty(), "two batches in flight: the third message lingers");
        h.pipeline.flush("flush");
        let third = h.pump();
        assert_eq!(third.len(), 1, "a flush sends what lingers");
        h.publish(1); // after the flush: not waited for
        assert!(h.pipeline.flushed().is_empty());
        h.pipeline.on_published(first[0].0, Offset(0), 1).unwrap();
        h.pipeline.on_published(second[0].0, Offset(1), 1).unwrap();
        assert!(h.pipeline.flushed().is_empty());
        h.pipeline.on_published(third[0].0, Offset(2), 1).unwrap();
        assert_eq!(h.pipeline.flushed(), ["flush"]);
        assert!(h.pipeline.flushed().is_empty());
    }

    #[test]
    fn closing_sends_what_lingers_and_is_done_once_everything_is_resolved() {
        let mut h = Harness::new(10, 8);
        h.pipeline.opened(ChainHead::GENESIS);
        h.publish(3);
        let sent = h.pump();
        assert_eq!(sent.len(), 1);
        h.pipeline.close();
        assert!(h.pipeline.is_closing() && !h.pipeline.is_done());
        h.pipeline.on_published(sent[0].0, Offset(0), 3).unwrap();
        assert!(h.pipeline.is_done());
    }

    #[test]
    fn a_message_too_large_for_any_batch_fails_at_once() {
        let mut h = Harness::new(10, 8);
        let max = Limits::default().max_batch_len as usize;
        h.pipeline.publish(Headers::new(), Bytes::from(vec![0; max]), Probe(9, h.log.clone()), h.now);
        let fate = h.take();
        assert_eq!(fate.len(), 1);
        assert!(fate[0].starts_with("9: message of "), "{fate:?}");
        assert!(!h.pipeline.has_work());
    }

    #[test]
    fn a_dead_publisher_hands_back_everything_it_holds_in_order_and_fails_it() {
        let mut h = Harness::new(1, 1);
        h.pipeline.opened(ChainHead::GENESIS);
        h.publish(3);
        let sent = h.pump();
        assert_eq!(sent.len(), 1);
        h.pipeline.flush("flush");
        let (unanswered, waiters) = h.pipeline.take_all();
        assert_eq!(unanswered.sealed_messages, 1);
        assert_eq!(unanswered.sealed.len(), 1, "the batch in flight");
        let unsent: Vec<&Bytes> = unanswered.unsent.iter().map(|(_, payload)| payload).collect();
        assert_eq!(unsent, [&Bytes::from("m1"), &Bytes::from("m2")], "the queued messages");
        assert!(h.take().is_empty(), "not failed before the caller says");
        for waiter in waiters {
            waiter.resolve(Err(Error::Closed));
        }
        assert_eq!(h.take(), ["0: closed", "1: closed", "2: closed"]);
        assert!(h.pipeline.flushed().is_empty(), "flush callers are dropped");
        assert!(!h.pipeline.has_work());
    }
}
