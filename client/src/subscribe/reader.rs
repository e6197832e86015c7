//! The reader: a subscription's decision, for each delivered batch, of what the application sees.
//!
//! For every `Deliver { offset, batch }` the reader, in order:
//!
//! 1. drops the batch if all of its messages lie below the next expected offset (a batch delivered again
//!    after a reconnect, or a durable subscription resuming from an older committed offset). This looks at
//!    the broker's offset and the batch's unverified message count only, so a broker can make the reader
//!    drop a batch it has not seen: that is no more than withholding it, which the chain verifier reports
//!    as a gap when the publisher's next batch arrives (unless it is the newest tail, see the non-claims);
//! 2. opens it (the checks of [`sealpost_protocol::open`], on the batch decoded in step 1: size and
//!    structure, signature, topic, the content key of its epoch, every record) with the content keys
//!    unwrapped from the topic's policies, and on failure yields
//!    one [`Error::Integrity`] item and nothing else. A batch of an epoch newer than every policy the reader
//!    knows is not judged yet: the reader asks for the topic's policies to be fetched again (a rotation
//!    happened, see [`Delivery::Refetch`]), once per epoch, and is handed the batch again. A batch that
//!    needs an older policy the reader does not hold is not judged yet either: the reader asks for the
//!    topic's policy history to be walked back to it ([`Delivery::History`]: every link checked back from
//!    the newest policy held), once per epoch;
//!    a batch whose signature verifies but whose epoch's content key the reader still does not hold is
//!    one [`Error::Integrity`] item ([`UnknownEpoch`](sealpost_protocol::Error::UnknownEpoch)) and is fed
//!    to the [`ChainVerifier`] all the same (it is authentic, only unreadable here), so the publisher's
//!    next batch is no gap;
//! 3. checks it against the policies ([`PolicyBook::authorize`](sealpost_protocol::PolicyBook::authorize)):
//!    its signer must be a publisher in the policy of the batch's epoch and, for an older epoch, still a
//!    publisher of the current policy or the batch dated before the policy that revoked it, else one
//!    [`Error::UntrustedPublisher`] item and nothing else; a batch of an older epoch must be dated before
//!    the next epoch's policy plus `rotation_grace`, else one [`Error::Integrity`] item
//!    ([`StaleEpoch`](sealpost_protocol::Error::StaleEpoch)) and nothing else;
//! 4. feeds its header and digest to the [`ChainVerifier`]: a gap yields an [`Error::Integrity`] item
//!    followed by the batch's messages (they are authentic); a replay, reorder or fork yields one
//!    [`Error::Integrity`] item and nothing else;
//! 5. yields its messages, and moves the next expected offset past the batch.
//!
//! For every `Lost { offset, count, reason: RETIRED }` (the broker's retention removed those offsets: the
//! subscription asked for, or fell behind to, offsets below the topic's first offset) the reader yields
//! one [`Error::Retired`] item for the offsets it has not yielded yet, lets every chain skip ahead once
//! ([`ChainVerifier::retired`](sealpost_protocol::ChainVerifier::retired)) and moves the next expected
//! offset past them.
//!
//! For every other `Lost { offset, count, batch }` (the broker's storage failed a checksum there) the reader
//! yields one [`Error::DataLost`] item for the offsets it has not yielded yet (nothing if it has yielded
//! them all: a durable subscription resuming from an older offset), and moves the next expected offset
//! past them. When the broker names the lost batch, the [`ChainVerifier`] moves past it
//! ([`ChainVerifier::skip_lost`]), so the publisher's next batch is no gap; if the batch named is not where
//! the chain stands, the chain does not move and the next batch reports the gap.
//!
//! # Offsets
//!
//! Offsets are chosen by the broker and are not signed. Only the **first** batch the reader judges may
//! start below the next expected offset for a legitimate reason (a subscription that starts, or a durable
//! one that resumes, inside a batch): of that batch the messages below the offset are not yielded. Any
//! later batch that reaches step 5 has all of its messages yielded: if the broker serves it at offsets
//! that overlap messages already yielded (an honest broker never does), its messages are yielded at the
//! offsets that follow the last one yielded, so offsets still only grow, and a warning is logged.
//!
//! An integrity failure is never a message, and every message is yielded once, in offset order. Sans-IO:
//! the subscription task feeds it frames, the time and the policies.

use std::collections::BTreeSet;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use sealpost_protocol::{
    ChainStart, ChainVerifier, Epoch, ErrorCode, KeyLookup, Limits, LostBatch, Offset, OpenedBatch,
    SealedBatch, StartAt, Topic, VerifiedBatch,
};

use crate::error::{Error, Result};
use crate::keyring::TopicKeys;
use crate::message::Message;

use super::durable_state::Heads;

/// What became of a delivered batch.
#[derive(Debug)]
pub(crate) enum Delivery {
    /// What the application sees of it, in order (nothing for a batch delivered before).
    Items(Vec<Result<Message>>),
    /// The batch is sealed under this epoch, newer than every policy the reader knows. Fetch the topic's
    /// policies, hand them over with [`Reader::fetched`], and deliver the batch again. Nothing changed.
    Refetch(Epoch),
    /// The batch needs the policy of this epoch, older than the newest the reader knows and not held:
    /// walk the topic's policy history back to it, hand the result over with [`Reader::walked`], and
    /// deliver the batch again. Nothing changed.
    History(Epoch),
}

/// Where a subscription's reader starts: how it checks chains, and the first offset it yields.
///
/// - A plain subscription from [`StartAt::Earliest`] (or offset 0) reads the topic from its beginning,
///   whatever `start_offset` the broker claims: every publisher's chain must start at its genesis batch
///   ([`ChainStart::Genesis`]), so a deleted prefix is reported as a gap, and nothing is skipped.
/// - A durable subscription from `Earliest` that the broker starts at offset 0 does the same.
/// - Otherwise (from an offset, from the latest, or a durable subscription resuming from the committed
///   offset the broker holds) the first batch seen of each publisher starts its chain
///   ([`ChainStart::FirstSeen`]), from `start_offset` (or the offset asked, if later).
pub(crate) fn start_point(from: StartAt, durable: bool, start_offset: Offset) -> (ChainStart, Offset) {
    match (durable, from) {
        (false, StartAt::Earliest | StartAt::Offset(Offset::ZERO)) => (ChainStart::Genesis, Offset::ZERO),
        (false, StartAt::Offset(n)) => (ChainStart::FirstSeen, n.max(start_offset)),
        (true, StartAt::Earliest) if start_offset == Offset::ZERO => (ChainStart::Genesis, Offset::ZERO),
        _ => (ChainStart::FirstSeen, start_offset),
    }
}

/// The verification state of one subscription; it outlives reconnections.
pub(crate) struct Reader {
    topic: Topic,
    keys: Arc<TopicKeys>,
    chain: ChainVerifier,
    next_offset: Offset,
    /// Whether a batch was judged already: only the first may start below `next_offset`.
    started: bool,
    /// The newest epoch the policies were fetched again for: batches of it or older never cause a fetch
    /// (so a broker serving batches of ever newer epochs costs one fetch per newer epoch, and no memory).
    refetched: Option<Epoch>,
    /// The older epochs the history was walked back to: never walked again (a broker that cannot serve one
    /// costs one walk per epoch named by a batch, each bounded by the epochs between).
    walked: BTreeSet<Epoch>,
    grace_ms: u64,
    limits: Limits,
    /// A durable subscription's chain heads after each batch judged, by the offset the batch ends at,
    /// oldest first (at most [`SNAPSHOTS`]): what an acknowledgement of an offset records. `None`: not kept.
    snapshots: Option<VecDeque<(Offset, Heads)>>,
}

/// Most snapshots a durable reader keeps while the application does not acknowledge: past it, the oldest
/// go, and acknowledging an offset that old records nothing.
const SNAPSHOTS: usize = 4096;

impl Reader {
    /// A reader of `topic` that yields messages from `next_offset` on, checking chains as `start` says,
    /// and batches against `keys`, accepting the previous epoch for `grace` after a rotation.
    pub(crate) fn new(
        topic: Topic,
        keys: Arc<TopicKeys>,
        start: ChainStart,
        next_offset: Offset,
        grace: Duration,
        limits: Limits,
    ) -> Self {
        Self {
            topic,
            keys,
            chain: ChainVerifier::new(start),
            next_offset,
            started: false,
            refetched: None,
            walked: BTreeSet::new(),
            grace_ms: u64::try_from(grace.as_millis()).unwrap_or(u64::MAX),
            limits,
            snapshots: None,
        }
    }

    /// Keeps the chain heads after each batch from now on (a durable subscription with a state folder),
    /// starting the chains at `heads` (recorded by an earlier process at the offset the subscription
    /// resumes from, or later; empty if none).
    pub(crate) fn keep_heads(&mut self, heads: &Heads) {
        for (publisher, chain, head) in heads {
            self.chain.seed(&self.topic, publisher, *chain, *head);
        }
        let mut snapshots = VecDeque::new();
        snapshots.push_back((self.next_offset, self.held_heads()));
        self.snapshots = Some(snapshots);
    }

    /// The chain heads after the last batch that ends at or before `offset` (what acknowledging `offset`
    /// records), if still kept; the snapshots before it are dropped.
    pub(crate) fn heads_at(&mut self, offset: Offset) -> Option<Heads> {
        let snapshots = self.snapshots.as_mut()?;
        while snapshots.get(1).is_some_and(|(end, _)| *end <= offset) {
            snapshots.pop_front();
        }
        snapshots.front().filter(|(end, _)| *end <= offset).map(|(_, heads)| heads.clone())
    }

    /// The head of every chain the reader holds.
    pub(crate) fn held_heads(&self) -> Heads {
        self.chain.heads().map(|(_, publisher, chain, head)| (*publisher, chain, head)).collect()
    }

    fn snapshot(&mut self) {
        if self.snapshots.is_none() {
            return;
        }
        let heads = self.held_heads();
        if let Some(snapshots) = self.snapshots.as_mut() {
            if snapshots.len() == SNAPSHOTS {
                snapshots.pop_front();
            }
            snapshots.push_back((self.next_offset, heads));
        }
    }

    /// A shared subscription's stream starts again at `offset` (a `Rewind`, or a new membership after a
    /// reconnection): the chains it is given from now on start at the first batch seen of each, as on a
    /// new subscription, since a chain may come back to it after other members read on; the policies
    /// stay.
    pub(crate) fn rewind(&mut self, offset: Offset) {
        self.chain = ChainVerifier::new(ChainStart::FirstSeen);
        self.next_offset = offset;
        self.started = false;
        self.snapshots = None;
    }

    /// The offset of the next message to yield: where to resubscribe after a reconnect.
    pub(crate) fn next_offset(&self) -> Offset {
        self.next_offset
    }

    /// Moves to newer policies (fetched on a schedule, or by another subscription of the client).
    pub(crate) fn set_keys(&mut self, keys: Arc<TopicKeys>) {
        self.keys = keys;
    }

    /// The policies were fetched again after a [`Delivery::Refetch`] for `epoch`, with `keys` as the
    /// result (`None` if what the broker served failed a check): a batch of that epoch is judged on the
    /// reader's policies from now on, without fetching again.
    pub(crate) fn fetched(&mut self, epoch: Epoch, keys: Option<Arc<TopicKeys>>) {
        self.refetched = self.refetched.max(Some(epoch));
        if let Some(keys) = keys {
            self.keys = keys;
        }
    }

    /// The history was walked back to `epoch` after a [`Delivery::History`], with `keys` as the result
    /// (`None` if the walk failed a check): a batch needing that epoch is judged on the reader's policies
    /// from now on, without walking again.
    pub(crate) fn walked(&mut self, epoch: Epoch, keys: Option<Arc<TopicKeys>>) {
        self.walked.insert(epoch);
        if let Some(keys) = keys {
            self.keys = keys;
        }
    }

    /// What to ask for before judging a batch that failed `check`: for a policy (or key) of an epoch not
    /// held, the newer policies or the history back to it, once each; else nothing (judge it as it is).
    fn fetch_for(&self, check: &sealpost_protocol::Error) -> Option<Delivery> {
        let sealpost_protocol::Error::UnknownEpoch(epoch) = *check else { return None };
        if self.must_refetch(epoch) {
            return Some(Delivery::Refetch(epoch));
        }
        let walk = !self.walked.contains(&epoch) && self.keys.book().history_start(epoch).is_some();
        walk.then_some(Delivery::History(epoch))
    }

    /// Whether a batch of `epoch` calls for fetching the policies again before it is judged.
    fn must_refetch(&self, epoch: Epoch) -> bool {
        let known = self.keys.current_epoch().max(self.refetched);
        known.is_none_or(|known| epoch > known)
    }

    /// What becomes of the batch delivered at `offset`.
    pub(crate) fn deliver(&mut self, offset: Offset, batch: Bytes) -> Delivery {
        // Decoded once, for both uses. The header's count is read before verification only to recognise a
        // batch seen before; a broker that lies about it can make us skip what it could as well withhold,
        // which the chain reports.
        let decoded = SealedBatch::decode(batch, &self.limits);
        let count = decoded.as_ref().map_or(1, |b| u64::from(b.header().count));
        if offset.saturating_add(count) <= self.next_offset {
            tracing::debug!(topic = %self.topic, %offset, "dropping a batch delivered before");
            return Delivery::Items(Vec::new());
        }
        let keys = self.keys.clone();
        let verified = decoded.and_then(SealedBatch::verify);
        let authentic = verified.as_ref().ok().map(|b| (b.header().clone(), b.digest()));
        let opened = match verified.and_then(|batch| open_verified(batch, &self.topic, keys.keys())) {
            Ok(opened) => opened,
            Err(check) => {
                if let Some(fetch) = self.fetch_for(&check) {
                    return fetch;
                }
                let mut items = Vec::with_capacity(2);
                if let (sealpost_protocol::Error::UnknownEpoch(_), Some((header, digest))) =
                    (&check, &authentic)
                {
                    // Signed by its publisher, for this topic, only not readable here (no key for its
                    // epoch): its chain moves past it, so the publisher's next batch is no gap. A gap, replay
                    // or reorder before it is reported as such.
                    let publisher = Some(header.publisher.key_id());
                    match self.chain.admit(header, *digest) {
                        Ok(()) => {}
                        Err(gap @ sealpost_protocol::Error::Gap { .. }) => {
                            items.push(Err(self.integrity(offset, publisher, gap)))
                        }
                        Err(other) => {
                            let item = self.integrity(offset, publisher, other);
                            return self.judged(offset, count, vec![Err(item)]);
                        }
                    }
                }
                items.push(Err(self.integrity(offset, None, check)));
                return self.judged(offset, count, items);
            }
        };
        let header = &opened.header;
        let count = u64::from(header.count);
        let publisher = Some(header.publisher.key_id());
        let principal = match keys.book().authorize(header, self.grace_ms) {
            Ok(member) => member.principal.clone(),
            Err(sealpost_protocol::Error::UntrustedPublisher) => {
                tracing::warn!(topic = %self.topic, %offset, "batch signed by a key that is no publisher");
                let item = Error::UntrustedPublisher {
                    topic: self.topic.clone(),
                    offset,
                    publisher: Box::new(header.publisher),
                };
                return self.judged(offset, count, vec![Err(item)]);
            }
            Err(check) => {
                if let Some(fetch) = self.fetch_for(&check) {
                    return fetch;
                }
                let item = self.integrity(offset, publisher, check);
                return self.judged(offset, count, vec![Err(item)]);
            }
        };
        let mut items = Vec::with_capacity(opened.messages.len() + 1);
        match self.chain.admit(header, opened.digest) {
            Ok(()) => {}
            Err(gap @ sealpost_protocol::Error::Gap { .. }) => {
                items.push(Err(self.integrity(offset, publisher, gap)))
            }
            Err(check) => {
                let item = self.integrity(offset, publisher, check);
                return self.judged(offset, count, vec![Err(item)]);
            }
        }
        // Where the batch's first message is yielded, and how many of its messages are skipped.
        let (first, skip) = if self.started {
            if offset < self.next_offset {
                tracing::warn!(
                    topic = %self.topic,
                    %offset,
                    next_offset = %self.next_offset,
                    "the broker served a new batch over offsets already yielded: yielding all of its \
                     messages after them"
                );
            }
            (offset.max(self.next_offset), 0)
        } else {
            (offset, self.next_offset.saturating_count_from(offset))
        };
        let messages = opened.messages.into_iter().zip(opened.headers);
        for ((i, (payload, headers)), seq) in messages.enumerate().zip(header.first_seq..) {
            if (i as u64) < skip {
                continue;
            }
            items.push(Ok(Message {
                payload,
                headers,
                publisher: principal.clone(),
                publisher_key: header.publisher,
                topic: self.topic.clone(),
                offset: first.saturating_add(i as u64),
                seq,
                timestamp: header.created_at,
                generation: 0,
            }));
        }
        self.judged(first, count, items)
    }

    /// What the application sees of the broker's report that offsets `offset..offset + count` are lost, held
    /// by `batch` if the broker names it, for `reason`.
    pub(crate) fn lost(
        &mut self,
        offset: Offset,
        count: u64,
        batch: Option<LostBatch>,
        reason: ErrorCode,
    ) -> Vec<Result<Message>> {
        let end = offset.saturating_add(count);
        if end <= self.next_offset {
            tracing::debug!(topic = %self.topic, %offset, count, "dropping a loss of offsets already yielded");
            return Vec::new();
        }
        if reason == ErrorCode::RETIRED {
            // Retention removed a prefix of the topic: every chain may skip what it held, once.
            let start = offset.max(self.next_offset);
            tracing::info!(topic = %self.topic, %start, first_offset = %end, "the broker's retention removed offsets not read yet");
            self.chain.retired();
            self.started = true;
            self.next_offset = end;
            self.snapshot();
            return vec![Err(Error::Retired { topic: self.topic.clone(), offsets: start..end })];
        }
        if let Some(b) = &batch {
            if !self.chain.skip_lost(&self.topic, &b.publisher, b.chain, b.first_seq, count, b.digest) {
                tracing::debug!(topic = %self.topic, %offset, "the lost batch is not where its chain stands");
            }
        }
        let start = offset.max(self.next_offset);
        tracing::warn!(topic = %self.topic, %start, %end, %reason, "the broker reports stored messages lost");
        self.started = true;
        self.next_offset = end;
        self.snapshot();
        vec![Err(Error::DataLost {
            topic: self.topic.clone(),
            offsets: start..end,
            publisher: batch.map(|b| b.publisher.key_id()),
            reason,
        })]
    }

    /// The batch at `offset` with `count` messages was judged, with `items` as the outcome.
    fn judged(&mut self, offset: Offset, count: u64, items: Vec<Result<Message>>) -> Delivery {
        self.started = true;
        self.next_offset = self.next_offset.max(offset.saturating_add(count));
        self.snapshot();
        Delivery::Items(items)
    }

    fn integrity(
        &self,
        offset: Offset,
        publisher: Option<sealpost_protocol::KeyId>,
        check: sealpost_protocol::Error,
    ) -> Error {
        tracing::warn!(topic = %self.topic, %offset, %check, "integrity check failed");
        Error::Integrity { topic: self.topic.clone(), offset, publisher, check }
    }
}

/// The checks of [`sealpost_protocol::open`] after the signature, in its order, on a batch already
/// verified: that it was sealed for `topic`, the content key of its epoch in `keys`, and every record.
fn open_verified(
    batch: VerifiedBatch,
    topic: &Topic,
    keys: &impl KeyLookup,
) -> sealpost_protocol::Result<OpenedBatch> {
    let header = batch.header();
    if &header.topic != topic {
        return Err(sealpost_protocol::Error::WrongTopic {
            expected: topic.clone(),
            got: header.topic.clone(),
        });
    }
    let key = keys.content_key(header.epoch).ok_or(sealpost_protocol::Error::UnknownEpoch(header.epoch))?;
    let (messages, headers) = batch.decrypt(key)?;
    Ok(OpenedBatch { header: header.clone(), digest: batch.digest(), messages, headers })
}

#[cfg(test)]
mod tests {
    use sealpost_protocol::{
        seal, ChainHead, ContentKey, Digest, EpochKeys, PolicyBook, SealParams, SigningKey, Timestamp,
        VerifiedBatch, VerifiedPolicy,
    };

    use super::*;
    use crate::keyring::tests::{authority, content_key, hpke, member, policy, signer, topic};

    /// When the policy of epoch 1 was created.
    const T1: u64 = 1_763_856_000_000;
    /// When the policy of epoch 2 was created, in the tests that rotate.
    const T2: u64 = T1 + 3_600_000;
    /// The grace window of the tests: 10 minutes.
    const GRACE: Duration = Duration::from_secs(600);

    fn alice() -> SigningKey {
        signer("alice")
    }

    fn mallory() -> SigningKey {
        signer("mallory")
    }

    /// Epoch 1: alice publishes and subscribes, bob subscribes.
    fn first_policy() -> VerifiedPolicy {
        policy(1, None, vec![member("alice", true, true), member("bob", false, true)], T1)
    }

    /// What `who` knows after admitting `policies`.
    fn keys_of(who: &str, policies: &[&VerifiedPolicy]) -> Arc<TopicKeys> {
        let mut book = PolicyBook::new(topic(), authority().public_key());
        let mut keys = EpochKeys::new(topic());
        for p in policies {
            book.admit(VerifiedPolicy::clone(p)).unwrap();
            let _ = keys.unlock(p, who, &hpke(who));
        }
        Arc::new(TopicKeys::new(book, keys))
    }

    fn keys() -> Arc<TopicKeys> {
        keys_of("bob", &[&first_policy()])
    }

    fn sealed_by(
        signer: &SigningKey,
        topic: Topic,
        epoch: u64,
        head: ChainHead,
        msgs: &[&str],
    ) -> VerifiedBatch {
        sealed_at(signer, topic, epoch, head, msgs, T1)
    }

    /// [`sealed_by`], claiming to be created at `created_at`.
    fn sealed_at(
        signer: &SigningKey,
        topic: Topic,
        epoch: u64,
        head: ChainHead,
        msgs: &[&str],
        created_at: u64,
    ) -> VerifiedBatch {
        let params = SealParams {
            topic,
            epoch: Epoch(epoch),
            chain: sealpost_protocol::ChainId([0x5C; 16]),
            first_seq: head.next_seq,
            prev_digest: head.prev_digest,
            created_at: Timestamp(created_at),
        };
        let key: ContentKey = content_key(epoch);
        seal(signer, &key, params, msgs, &Limits::default(), &mut rand::rngs::OsRng).unwrap()
    }

    impl Reader {
        /// Delivers and expects items, not a fetch.
        fn feed(&mut self, offset: u64, batch: Bytes) -> Vec<Result<Message>> {
            match self.deliver(Offset(offset), batch) {
                Delivery::Items(items) => items,
                Delivery::Refetch(epoch) => panic!("unexpected refetch for epoch {epoch}"),
                Delivery::History(epoch) => panic!("unexpected history walk to epoch {epoch}"),
            }
        }
    }

    /// A chain of alice's batches of the given sizes, with their offsets when stored back to back from 0.
    fn chain(sizes: &[usize]) -> Vec<(u64, Bytes)> {
        let mut head = ChainHead::GENESIS;
        let mut offset = 0;
        let mut out = Vec::new();
        for (b, &n) in sizes.iter().enumerate() {
            let msgs: Vec<String> = (0..n).map(|i| format!("b{b}m{i}")).collect();
            let refs: Vec<&str> = msgs.iter().map(String::as_str).collect();
            let batch = sealed_by(&alice(), topic(), 1, head, &refs);
            head = ChainHead::after(&batch);
            out.push((offset, batch.as_bytes().clone()));
            offset += n as u64;
        }
        out
    }

    fn reader(start: ChainStart, next: u64) -> Reader {
        Reader::new(topic(), keys(), start, Offset(next), GRACE, Limits::default())
    }

    /// Payloads and offsets of the messages, and the integrity checks, in order.
    fn summary(items: Vec<Result<Message>>) -> Vec<String> {
        items
            .into_iter()
            .map(|i| match i {
                Ok(m) => format!("{}@{}", String::from_utf8_lossy(&m.payload), m.offset),
                Err(Error::Integrity { check, .. }) => format!("integrity: {check:?}"),
                Err(Error::UntrustedPublisher { offset, .. }) => format!("untrusted publisher@{offset}"),
                Err(Error::DataLost { offsets, .. }) => format!("lost {}..{}", offsets.start, offsets.end),
                Err(Error::Retired { offsets, .. }) => format!("retired {}..{}", offsets.start, offsets.end),
                Err(e) => format!("error: {e}"),
            })
            .collect()
    }

    #[test]
    fn in_order_delivery_yields_every_message_with_its_metadata() {
        let batches = chain(&[2, 1]);
        let mut r = reader(ChainStart::Genesis, 0);
        let items = r.feed(batches[0].0, batches[0].1.clone());
        let first = items[0].as_ref().unwrap();
        assert_eq!(first.publisher, "alice");
        assert_eq!(first.publisher_key, alice().public_key());
        assert_eq!((first.offset, first.seq), (Offset(0), 1));
        assert_eq!(first.timestamp, Timestamp(1_763_856_000_000));
        assert_eq!(first.topic, topic());
        assert_eq!(summary(items), ["b0m0@0", "b0m1@1"]);
        assert_eq!(summary(r.feed(batches[1].0, batches[1].1.clone())), ["b1m0@2"]);
        assert_eq!(r.next_offset(), Offset(3));
    }

    #[test]
    fn an_acknowledged_offset_records_the_heads_after_the_last_batch_it_covers_and_they_seed_a_resume() {
        let batches = chain(&[2, 2, 2, 1]);
        let mut r = reader(ChainStart::Genesis, 0);
        r.keep_heads(&Vec::new());
        // Before any batch: no chain.
        assert_eq!(r.heads_at(Offset(0)), Some(Vec::new()));
        for (offset, batch) in &batches[..3] {
            r.feed(*offset, batch.clone());
        }
        let after = |n: usize| {
            let mut v = ChainVerifier::new(ChainStart::Genesis);
            for (_, b) in &batches[..n] {
                let sealed = SealedBatch::decode(b.clone(), &Limits::default()).unwrap().verify().unwrap();
                v.admit(sealed.header(), sealed.digest()).unwrap();
            }
            v.heads().map(|(_, p, c, h)| (*p, c, h)).collect::<Vec<_>>()
        };
        // Offset 3 is inside the second batch: the heads after the first (the resume redelivers the second).
        assert_eq!(r.heads_at(Offset(3)), Some(after(1)));
        assert_eq!(r.heads_at(Offset(4)), Some(after(2)));
        // Older snapshots are gone once a later offset was asked.
        assert_eq!(r.heads_at(Offset(1)), None);
        // A resume at offset 4 seeded with them: a batch skipped there is a gap.
        let mut resumed = reader(ChainStart::FirstSeen, 6);
        resumed.keep_heads(&after(2));
        let items = summary(resumed.feed(batches[3].0, batches[3].1.clone()));
        assert_eq!(items, ["integrity: Gap { expected: 5, got: 7 }", "b3m0@6"]);
        // Unseeded, it would not know.
        let mut blind = reader(ChainStart::FirstSeen, 6);
        assert_eq!(summary(blind.feed(batches[3].0, batches[3].1.clone())), ["b3m0@6"]);
    }

    #[test]
    fn subscribing_inside_a_batch_skips_the_messages_below_the_requested_offset() {
        let batches = chain(&[3, 2]);
        let mut r = reader(ChainStart::FirstSeen, 2);
        assert_eq!(summary(r.feed(batches[0].0, batches[0].1.clone())), ["b0m2@2"]);
        assert_eq!(summary(r.feed(batches[1].0, batches[1].1.clone())), ["b1m0@3", "b1m1@4"]);
    }

    #[test]
    fn a_batch_delivered_again_after_a_reconnect_is_dropped_silently() {
        let batches = chain(&[2, 2, 2]);
        let mut r = reader(ChainStart::Genesis, 0);
        r.feed(batches[0].0, batches[0].1.clone());
        r.feed(batches[1].0, batches[1].1.clone());
        // A durable subscription resumes from an older committed offset: both batches come again.
        assert!(r.feed(batches[0].0, batches[0].1.clone()).is_empty());
        assert!(r.feed(batches[1].0, batches[1].1.clone()).is_empty());
        assert_eq!(summary(r.feed(batches[2].0, batches[2].1.clone())), ["b2m0@4", "b2m1@5"]);
    }

    #[test]
    fn a_gap_is_reported_then_the_authentic_batch_is_delivered() {
        let batches = chain(&[1, 1, 1]);
        let mut r = reader(ChainStart::Genesis, 0);
        r.feed(batches[0].0, batches[0].1.clone());
        // The broker withholds the second batch.
        let items = r.feed(batches[2].0, batches[2].1.clone());
        assert!(items[0].as_ref().unwrap_err().is_integrity());
        assert_eq!(summary(items), ["integrity: Gap { expected: 2, got: 3 }", "b2m0@2"]);
    }

    #[test]
    fn reading_from_the_beginning_reports_a_deleted_prefix() {
        let batches = chain(&[1, 1]);
        let mut r = reader(ChainStart::Genesis, 0);
        let items = r.feed(0, batches[1].1.clone());
        assert_eq!(summary(items), ["integrity: Gap { expected: 1, got: 2 }", "b1m0@0"]);
        // From the middle, the first batch seen starts the chain.
        let mut r = reader(ChainStart::FirstSeen, 1);
        assert_eq!(summary(r.feed(batches[1].0, batches[1].1.clone())), ["b1m0@1"]);
    }

    #[test]
    fn a_replay_at_a_new_offset_is_one_error_and_no_message() {
        let batches = chain(&[2, 1]);
        let mut r = reader(ChainStart::Genesis, 0);
        r.feed(batches[0].0, batches[0].1.clone());
        r.feed(batches[1].0, batches[1].1.clone());
        let items = r.feed(3, batches[1].1.clone());
        assert_eq!(summary(items), ["integrity: Replay { seq: 3 }"]);
        assert_eq!(r.next_offset(), Offset(4));
    }

    #[test]
    fn a_reorder_is_one_error_and_no_message() {
        let batches = chain(&[1, 1, 1]);
        let mut r = reader(ChainStart::Genesis, 0);
        r.feed(0, batches[0].1.clone());
        r.feed(1, batches[2].1.clone()); // gap
        let items = r.feed(2, batches[1].1.clone());
        assert_eq!(summary(items), ["integrity: Reorder { expected: 4, got: 2 }"]);
    }

    #[test]
    fn a_fork_is_one_error_and_no_message() {
        let batches = chain(&[1]);
        let mut r = reader(ChainStart::Genesis, 0);
        r.feed(0, batches[0].1.clone());
        // Sequence 2, but not after the batch delivered: another history.
        let other =
            sealed_by(&alice(), topic(), 1, ChainHead { next_seq: 2, prev_digest: Digest([9; 32]) }, &["x"]);
        let items = r.feed(1, other.as_bytes().clone());
        assert_eq!(summary(items), ["integrity: Fork { seq: 2 }"]);
    }

    #[test]
    fn a_tampered_batch_is_one_error_and_no_message() {
        let batches = chain(&[3]);
        let mut bytes = batches[0].1.to_vec();
        let at = bytes.len() - 80; // inside the last record's ciphertext
        bytes[at] ^= 1;
        let mut r = reader(ChainStart::Genesis, 0);
        let items = r.feed(0, bytes.into());
        assert_eq!(summary(items), ["integrity: BadSignature"]);
        // The offsets are consumed: the honest batch delivered again later counts as seen.
        assert_eq!(r.next_offset(), Offset(3));
    }

    #[test]
    fn garbage_is_one_error_and_no_message() {
        let mut r = reader(ChainStart::Genesis, 0);
        let items = r.feed(0, Bytes::from_static(b"\x01\x00"));
        assert_eq!(items.len(), 1);
        assert!(items[0].as_ref().unwrap_err().is_integrity());
        assert_eq!(r.next_offset(), Offset(1));
    }

    #[test]
    fn a_batch_from_an_untrusted_publisher_is_one_error_and_no_message() {
        let batch = sealed_by(&mallory(), topic(), 1, ChainHead::GENESIS, &["evil"]);
        let mut r = reader(ChainStart::Genesis, 0);
        let items = r.feed(0, batch.as_bytes().clone());
        assert_eq!(items.len(), 1);
        assert!(matches!(
            &items[0],
            Err(Error::UntrustedPublisher { publisher, offset: Offset(0), .. }) if **publisher == mallory().public_key()
        ));
        // Mallory's batch did not start alice's chain: alice's genesis batch is still fine.
        let ok = chain(&[1]);
        assert_eq!(summary(r.feed(1, ok[0].1.clone())), ["b0m0@1"]);
    }

    #[test]
    fn a_batch_decoded_once_is_judged_as_protocol_open_judges_it() {
        let good = chain(&[2])[0].1.clone();
        let mut flipped = good.to_vec();
        let at = flipped.len() - 80;
        flipped[at] ^= 1;
        let other_topic = sealed_by(&alice(), Topic::new("demo.y").unwrap(), 1, ChainHead::GENESIS, &["x"]);
        let unknown_epoch = sealed_by(&alice(), topic(), 7, ChainHead::GENESIS, &["x"]);
        // Signed, but sealed with another key than the policy's for epoch 1: a record does not decrypt.
        let params = SealParams {
            topic: topic(),
            epoch: Epoch(1),
            chain: sealpost_protocol::ChainId([0x5C; 16]),
            first_seq: 1,
            prev_digest: Digest::ZERO,
            created_at: Timestamp(T1),
        };
        let wrong_key = ContentKey::from_bytes(&[0x42; 32]);
        let tampered_record =
            seal(&alice(), &wrong_key, params, &["x"], &Limits::default(), &mut rand::rngs::OsRng).unwrap();
        let keys = keys();
        for batch in [
            good,
            flipped.into(),
            other_topic.as_bytes().clone(),
            unknown_epoch.as_bytes().clone(),
            tampered_record.as_bytes().clone(),
            Bytes::from_static(b"\x01\x00"),
        ] {
            let once = SealedBatch::decode(batch.clone(), &Limits::default())
                .and_then(SealedBatch::verify)
                .and_then(|batch| open_verified(batch, &topic(), keys.keys()));
            let twice = sealpost_protocol::open(batch, &topic(), keys.keys(), &Limits::default());
            match (once, twice) {
                (Ok(a), Ok(b)) => {
                    assert_eq!((a.header, a.digest, a.messages), (b.header, b.digest, b.messages));
                }
                (Err(a), Err(b)) => assert_eq!(a, b),
                (a, b) => panic!("{a:?} != {b:?}"),
            }
        }
    }

    #[test]
    fn a_batch_for_another_topic_is_one_error() {
        let mut r = reader(ChainStart::Genesis, 0);
        let other = sealed_by(&alice(), Topic::new("demo.y").unwrap(), 1, ChainHead::GENESIS, &["x"]);
        assert_eq!(
            summary(r.feed(0, other.as_bytes().clone())),
            ["integrity: WrongTopic { expected: Topic(\"demo.x\"), got: Topic(\"demo.y\") }"]
        );
    }

    // Losses the broker reports.

    fn lost_batch(batch: &Bytes) -> LostBatch {
        let sealed = SealedBatch::decode(batch.clone(), &Limits::default()).unwrap().verify().unwrap();
        LostBatch {
            publisher: sealed.header().publisher,
            chain: sealed.header().chain,
            first_seq: sealed.header().first_seq,
            digest: sealed.digest(),
        }
    }

    #[test]
    fn a_named_lost_batch_is_one_item_and_the_chain_continues_after_it() {
        let batches = chain(&[2, 3, 1]);
        let mut r = reader(ChainStart::Genesis, 0);
        assert_eq!(summary(r.feed(0, batches[0].1.clone())), ["b0m0@0", "b0m1@1"]);
        let items = r.lost(Offset(2), 3, Some(lost_batch(&batches[1].1)), ErrorCode::DATA_LOST);
        assert!(items[0].as_ref().unwrap_err().is_integrity());
        assert_eq!(summary(items), ["lost 2..5"]);
        assert_eq!(r.next_offset(), Offset(5));
        // No gap: the broker named the batch, and the chain moved past it.
        assert_eq!(summary(r.feed(5, batches[2].1.clone())), ["b2m0@5"]);
    }

    #[test]
    fn a_retention_cut_is_one_item_and_every_chain_continues_after_it_without_a_gap() {
        let batches = chain(&[2, 1, 1, 1]);
        // From the beginning: the cut removed the genesis batch, which is no gap once the broker says so.
        let mut r = reader(ChainStart::Genesis, 0);
        let items = r.lost(Offset(0), 3, None, ErrorCode::RETIRED);
        assert!(items[0].as_ref().unwrap_err().is_integrity(), "the subscription goes on");
        assert_eq!(summary(items), ["retired 0..3"]);
        assert_eq!(r.next_offset(), Offset(3));
        assert_eq!(summary(r.feed(3, batches[2].1.clone())), ["b2m0@3"]);
        assert_eq!(summary(r.feed(4, batches[3].1.clone())), ["b3m0@4"]);
        // A reader that fell behind: its chain skips the retired batch once.
        let mut r = reader(ChainStart::Genesis, 0);
        r.feed(0, batches[0].1.clone());
        assert_eq!(summary(r.lost(Offset(2), 2, None, ErrorCode::RETIRED)), ["retired 2..4"]);
        assert_eq!(summary(r.feed(4, batches[3].1.clone())), ["b3m0@4"]);
        // Without the broker saying so, the same skip is a gap.
        let mut r = reader(ChainStart::Genesis, 0);
        r.feed(0, batches[0].1.clone());
        assert_eq!(
            summary(r.feed(4, batches[3].1.clone())),
            ["integrity: Gap { expected: 3, got: 5 }", "b3m0@4"]
        );
    }

    #[test]
    fn an_anonymous_loss_is_one_item_and_the_next_batch_reports_the_gap() {
        let batches = chain(&[1, 1, 1]);
        let mut r = reader(ChainStart::Genesis, 0);
        r.feed(0, batches[0].1.clone());
        assert_eq!(summary(r.lost(Offset(1), 1, None, ErrorCode::DATA_LOST)), ["lost 1..2"]);
        assert_eq!(
            summary(r.feed(2, batches[2].1.clone())),
            ["integrity: Gap { expected: 2, got: 3 }", "b2m0@2"]
        );
    }

    #[test]
    fn a_loss_of_offsets_already_yielded_is_dropped_and_a_partial_one_reports_the_rest() {
        let batches = chain(&[2, 2]);
        let mut r = reader(ChainStart::Genesis, 0);
        r.feed(0, batches[0].1.clone());
        assert!(r.lost(Offset(0), 2, None, ErrorCode::DATA_LOST).is_empty());
        assert_eq!(summary(r.lost(Offset(1), 3, None, ErrorCode::DATA_LOST)), ["lost 2..4"]);
        // From the middle: the loss before the requested offset is cut to it.
        let mut r = reader(ChainStart::FirstSeen, 3);
        assert_eq!(
            summary(r.lost(Offset(2), 2, Some(lost_batch(&batches[1].1)), ErrorCode::DATA_LOST)),
            ["lost 3..4"]
        );
        assert_eq!(r.next_offset(), Offset(4));
    }

    // Offsets chosen by the broker (finding: batch served over delivered offsets).

    #[test]
    fn a_later_batch_served_over_yielded_offsets_has_all_its_messages_yielded() {
        let batches = chain(&[3, 3]);
        let mut r = reader(ChainStart::Genesis, 0);
        assert_eq!(summary(r.feed(0, batches[0].1.clone())), ["b0m0@0", "b0m1@1", "b0m2@2"]);
        // The second batch (offsets 3..6) is served at offset 1, claiming 1..4: it is new to the chain, so
        // every message of it is yielded, after those already yielded.
        let items = r.feed(1, batches[1].1.clone());
        let seqs: Vec<u64> = items.iter().map(|i| i.as_ref().unwrap().seq).collect();
        assert_eq!(summary(items), ["b1m0@3", "b1m1@4", "b1m2@5"]);
        assert_eq!(seqs, [4, 5, 6]);
        assert_eq!(r.next_offset(), Offset(6));
    }

    #[test]
    fn only_the_first_batch_may_start_below_the_requested_offset() {
        let batches = chain(&[3, 3, 1]);
        let mut r = reader(ChainStart::FirstSeen, 2);
        assert_eq!(summary(r.feed(0, batches[0].1.clone())), ["b0m2@2"]);
        // Served at offset 2 instead of 3: not the first batch any more, nothing of it is skipped.
        assert_eq!(summary(r.feed(2, batches[1].1.clone())), ["b1m0@3", "b1m1@4", "b1m2@5"]);
        assert_eq!(summary(r.feed(6, batches[2].1.clone())), ["b2m0@6"]);
    }

    #[test]
    fn a_failed_first_batch_counts_as_the_first() {
        let batches = chain(&[2, 2]);
        let mut r = reader(ChainStart::FirstSeen, 1);
        assert_eq!(summary(r.feed(1, Bytes::from_static(b"\x01\x00\x00"))).len(), 1);
        assert_eq!(r.next_offset(), Offset(2));
        // Served over the offsets of the failed batch: not the first batch, nothing of it is skipped.
        assert_eq!(summary(r.feed(1, batches[1].1.clone())), ["b1m0@2", "b1m1@3"]);
    }

    #[test]
    fn a_new_batch_dropped_as_delivered_before_shows_as_a_gap_at_the_next_batch() {
        let batches = chain(&[2, 2, 2]);
        let mut r = reader(ChainStart::Genesis, 0);
        r.feed(batches[0].0, batches[0].1.clone());
        // The broker serves the second batch at offset 0 (end 2 <= next offset 2): dropped unopened.
        assert!(r.feed(0, batches[1].1.clone()).is_empty());
        assert_eq!(r.next_offset(), Offset(2));
        assert_eq!(
            summary(r.feed(batches[2].0, batches[2].1.clone())),
            ["integrity: Gap { expected: 3, got: 5 }", "b2m0@4", "b2m1@5"]
        );
    }

    // Where chains start (finding: a deleted prefix hidden by a claimed start offset).

    #[test]
    fn a_plain_subscription_from_earliest_checks_chains_from_genesis_whatever_the_broker_claims() {
        assert_eq!(start_point(StartAt::Earliest, false, Offset(0)), (ChainStart::Genesis, Offset(0)));
        assert_eq!(start_point(StartAt::Earliest, false, Offset(2)), (ChainStart::Genesis, Offset(0)));
        assert_eq!(
            start_point(StartAt::Offset(Offset(0)), false, Offset(5)),
            (ChainStart::Genesis, Offset(0))
        );
        // The broker deleted alice's first two batches and claims the log starts at offset 2.
        let batches = chain(&[1, 1, 1, 1]);
        let (start, next) = start_point(StartAt::Earliest, false, Offset(2));
        let mut r = Reader::new(topic(), keys(), start, next, GRACE, Limits::default());
        assert_eq!(
            summary(r.feed(2, batches[2].1.clone())),
            ["integrity: Gap { expected: 1, got: 3 }", "b2m0@2"]
        );
        assert_eq!(summary(r.feed(3, batches[3].1.clone())), ["b3m0@3"]);
    }

    #[test]
    fn other_subscriptions_start_chains_at_the_first_batch_seen() {
        assert_eq!(
            start_point(StartAt::Offset(Offset(7)), false, Offset(0)),
            (ChainStart::FirstSeen, Offset(7))
        );
        assert_eq!(
            start_point(StartAt::Offset(Offset(7)), false, Offset(9)),
            (ChainStart::FirstSeen, Offset(9))
        );
        assert_eq!(start_point(StartAt::Latest, false, Offset(12)), (ChainStart::FirstSeen, Offset(12)));
        // A durable subscription resumes from the offset the broker holds (a non-claim).
        assert_eq!(start_point(StartAt::Earliest, true, Offset(5)), (ChainStart::FirstSeen, Offset(5)));
        assert_eq!(start_point(StartAt::Earliest, true, Offset(0)), (ChainStart::Genesis, Offset(0)));
        assert_eq!(start_point(StartAt::Latest, true, Offset(0)), (ChainStart::FirstSeen, Offset(0)));
    }

    // Topic policies.

    /// Epoch 2, an hour after epoch 1: carol joins as a publisher.
    fn second_policy(first: &VerifiedPolicy) -> VerifiedPolicy {
        let members =
            vec![member("alice", true, true), member("bob", false, true), member("carol", true, false)];
        policy(2, Some(first), members, T2)
    }

    #[test]
    fn a_member_without_the_publish_role_is_no_publisher() {
        let mut r = reader(ChainStart::Genesis, 0);
        let batch = sealed_by(&signer("bob"), topic(), 1, ChainHead::GENESIS, &["not mine to say"]);
        assert_eq!(summary(r.feed(0, batch.as_bytes().clone())), ["untrusted publisher@0"]);
    }

    #[test]
    fn the_previous_epoch_is_accepted_within_the_grace_window_only() {
        let p1 = first_policy();
        let p2 = second_policy(&p1);
        let keys = keys_of("bob", &[&p1, &p2]);
        let mut r = Reader::new(topic(), keys, ChainStart::Genesis, Offset(0), GRACE, Limits::default());
        // Sealed under epoch 1 just before the grace window of epoch 2 ends, then at its end.
        let within = T2 + GRACE.as_millis() as u64 - 1;
        let first = sealed_at(&alice(), topic(), 1, ChainHead::GENESIS, &["b0m0"], within);
        assert_eq!(summary(r.feed(0, first.as_bytes().clone())), ["b0m0@0"]);
        let after = T2 + GRACE.as_millis() as u64;
        let second = sealed_at(&alice(), topic(), 1, ChainHead::after(&first), &["b1m0"], after);
        assert_eq!(
            summary(r.feed(1, second.as_bytes().clone())),
            ["integrity: StaleEpoch { epoch: Epoch(1), current: Epoch(2) }"]
        );
        // Epoch 2's publisher carol is trusted in epoch 2.
        let carol = sealed_by(&signer("carol"), topic(), 2, ChainHead::GENESIS, &["hi"]);
        let items = r.feed(2, carol.as_bytes().clone());
        assert_eq!(items[0].as_ref().unwrap().publisher, "carol");
        assert_eq!(summary(items), ["hi@2"]);
    }

    #[test]
    fn a_publisher_of_a_later_epoch_is_not_trusted_in_an_earlier_one() {
        let p1 = first_policy();
        let p2 = second_policy(&p1);
        let mut r = Reader::new(
            topic(),
            keys_of("bob", &[&p1, &p2]),
            ChainStart::Genesis,
            Offset(0),
            GRACE,
            Limits::default(),
        );
        // carol holds no key of epoch 1, but the broker could serve a batch she sealed with one she stole.
        let carol = sealed_by(&signer("carol"), topic(), 1, ChainHead::GENESIS, &["backdated"]);
        assert_eq!(summary(r.feed(0, carol.as_bytes().clone())), ["untrusted publisher@0"]);
    }

    #[test]
    fn a_batch_of_an_unknown_newer_epoch_asks_for_the_policies_once() {
        let p1 = first_policy();
        let p2 = second_policy(&p1);
        let mut r = reader(ChainStart::Genesis, 0);
        let batch = sealed_by(&alice(), topic(), 2, ChainHead::GENESIS, &["after the rotation"]);
        assert!(matches!(r.deliver(Offset(0), batch.as_bytes().clone()), Delivery::Refetch(Epoch(2))));
        // Nothing moved while it waits.
        assert_eq!(r.next_offset(), Offset(0));
        r.fetched(Epoch(2), Some(keys_of("bob", &[&p1, &p2])));
        assert_eq!(summary(r.feed(0, batch.as_bytes().clone())), ["after the rotation@0"]);
        // Epoch 3 is not served: one refetch, then the integrity item.
        let third = sealed_by(&alice(), topic(), 3, ChainHead::after(&batch), &["x"]);
        assert!(matches!(r.deliver(Offset(1), third.as_bytes().clone()), Delivery::Refetch(Epoch(3))));
        r.fetched(Epoch(3), None);
        assert_eq!(summary(r.feed(1, third.as_bytes().clone())), ["integrity: UnknownEpoch(Epoch(3))"]);
        assert_eq!(r.next_offset(), Offset(2));
    }

    #[test]
    fn a_batch_of_an_older_epoch_not_held_asks_for_the_history_once() {
        let p1 = first_policy();
        let p2 = second_policy(&p1);
        // The reader knows epoch 2 only; alice's batch of epoch 1 was sealed before the rotation.
        let mut r = Reader::new(
            topic(),
            keys_of("bob", &[&p2]),
            ChainStart::Genesis,
            Offset(0),
            GRACE,
            Limits::default(),
        );
        let old = chain(&[1, 1]);
        assert!(matches!(r.deliver(Offset(0), old[0].1.clone()), Delivery::History(Epoch(1))));
        assert_eq!(r.next_offset(), Offset(0));
        r.walked(Epoch(1), Some(keys_of("bob", &[&p1, &p2])));
        assert_eq!(summary(r.feed(0, old[0].1.clone())), ["b0m0@0"]);
        // A walk that failed is not tried again: the batch is judged on what the reader holds.
        let mut r = Reader::new(
            topic(),
            keys_of("bob", &[&p2]),
            ChainStart::Genesis,
            Offset(0),
            GRACE,
            Limits::default(),
        );
        assert!(matches!(r.deliver(Offset(0), old[0].1.clone()), Delivery::History(Epoch(1))));
        r.walked(Epoch(1), None);
        assert_eq!(summary(r.feed(0, old[0].1.clone())), ["integrity: UnknownEpoch(Epoch(1))"]);
        assert_eq!(summary(r.feed(1, old[1].1.clone())), ["integrity: UnknownEpoch(Epoch(1))"]);
    }

    #[test]
    fn batches_of_an_epoch_without_a_key_are_one_error_each_and_the_chain_goes_on_without_a_gap() {
        // bob holds the keys of epoch 2 only (the walk back to epoch 1 failed); alice's chain runs through
        // two batches of epoch 1, then continues in epoch 2.
        let p1 = first_policy();
        let p2 = policy(2, Some(&p1), p1.members().to_vec(), T2);
        let mut r = Reader::new(
            topic(),
            keys_of("bob", &[&p2]),
            ChainStart::Genesis,
            Offset(0),
            GRACE,
            Limits::default(),
        );
        r.walked(Epoch(1), None);
        let old = chain(&[1, 1]);
        let last = SealedBatch::decode(old[1].1.clone(), &Limits::default()).unwrap().verify().unwrap();
        let next = sealed_by(&alice(), topic(), 2, ChainHead::after(&last), &["after"]);
        assert_eq!(summary(r.feed(0, old[0].1.clone())), ["integrity: UnknownEpoch(Epoch(1))"]);
        assert_eq!(summary(r.feed(1, old[1].1.clone())), ["integrity: UnknownEpoch(Epoch(1))"]);
        // No gap: the two unreadable batches were authentic, and the chain moved past them.
        assert_eq!(summary(r.feed(2, next.as_bytes().clone())), ["after@2"]);
        // A replayed unreadable batch is still a replay.
        assert_eq!(summary(r.feed(3, old[0].1.clone())), ["integrity: Replay { seq: 1 }"]);
    }

    #[test]
    fn an_epoch_without_a_key_for_this_member_is_one_error_without_refetch() {
        // dave joins in epoch 2: batches of epoch 1 are not for him.
        let p1 = first_policy();
        let mut members = p1.members().to_vec();
        members.push(member("dave", false, true));
        let p2 = policy(2, Some(&p1), members, T2);
        let mut r = Reader::new(
            topic(),
            keys_of("dave", &[&p1, &p2]),
            ChainStart::Genesis,
            Offset(0),
            GRACE,
            Limits::default(),
        );
        let old = chain(&[1]);
        assert_eq!(summary(r.feed(0, old[0].1.clone())), ["integrity: UnknownEpoch(Epoch(1))"]);
        let first = SealedBatch::decode(old[0].1.clone(), &Limits::default()).unwrap().verify().unwrap();
        let new = sealed_by(&alice(), topic(), 2, ChainHead::after(&first), &["welcome"]);
        assert_eq!(summary(r.feed(1, new.as_bytes().clone())), ["welcome@1"]);
    }
}
