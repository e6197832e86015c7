//! Appends and syncs: batches sent in order with conditions, acknowledgements awaited by `sync`, and
//! what happens when one fails.
//!
//! [`JetStreamStore::send`] publishes a batch at once (through one task, [`send_in_order`], so that the
//! server receives them in the order the writer appended them) with `Nats-Expected-Last-Sequence` set to
//! the sequence before its own, and keeps it as [`Pending`]. [`JetStreamStore::sync_pending`] awaits
//! every pending acknowledgement; for a topic whose acknowledgements did not all come back as expected
//! it [recovers](JetStreamStore::recover):
//!
//! 1. asks the stream's leader for its last sequence (during an election nobody answers: back off, ask
//!    again);
//! 2. each pending batch whose sequence the stream has is looked at: its `Nats-Msg-Id` there is this
//!    batch's (stored, by the first attempt or a retry), or it is not (another broker's batch holds the
//!    sequence: [`Error::Contended`], the writer sequences the group again);
//! 3. the batches after the stream's last sequence are sent again, with the same conditions, and awaited;
//!    any failure goes back to 1;
//!
//! until `publish_timeout` has passed since the sync began: then the sync fails with
//! [`Error::Unavailable`]. A batch is reported durable only once the stream was seen to hold it; what a
//! failed sync leaves is found by the next look (the writer then answers a retry as a duplicate).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::context::{PublishAckFuture, PublishError};
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::publish::PublishAck;
use async_nats::HeaderMap;
use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

use super::log::{unavailable, TopicLog};
use super::{names, JetStreamStore};
use crate::store::{PublisherRecord, StoredBatch};
use crate::{Error, Result};

/// First pause between looks at a stream after a failed append; it doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(50);
/// Longest pause between looks.
const MAX_BACKOFF: Duration = Duration::from_millis(500);

/// The outcome of one publish: its acknowledgement, or why there is none.
type Acked = std::result::Result<PublishAck, PublishError>;

/// An append of this broker not yet covered by a sync, as readers see it: the [`Store`] contract lets
/// reads see every append before it is durable.
///
/// [`Store`]: crate::store::Store
pub(super) struct Unsynced {
    pub(super) subject: String,
    pub(super) record: PublisherRecord,
    pub(super) batch: StoredBatch,
}

/// One publish for [`send_in_order`].
pub(super) struct Outgoing {
    subject: String,
    message: PublishMessage,
    ack: oneshot::Sender<Acked>,
}

/// An append sent and not yet covered by a sync.
pub(super) struct Pending {
    log: Arc<TopicLog>,
    /// The stream sequence it must get.
    seq: u64,
    msg_id: String,
    subject: String,
    headers: HeaderMap,
    payload: Bytes,
    ack: oneshot::Receiver<Acked>,
}

/// Sends the queued publishes one after the other, so that they reach the server in append order, and
/// hands each acknowledgement (awaited in a task of its own) to its receiver. Ends when the store is
/// dropped.
pub(super) async fn send_in_order(
    js: async_nats::jetstream::Context,
    mut queue: mpsc::UnboundedReceiver<Outgoing>,
) {
    while let Some(Outgoing { subject, message, ack }) = queue.recv().await {
        match js.send_publish(subject, message).await {
            Ok(future) => {
                tokio::spawn(await_ack(future, ack));
            }
            Err(e) => drop(ack.send(Err(e))),
        }
    }
}

async fn await_ack(future: PublishAckFuture, ack: oneshot::Sender<Acked>) {
    let _ = ack.send(future.await);
}

impl JetStreamStore {
    /// Publishes `payload` at stream sequence `seq` of `log` (expecting `seq - 1` last) and keeps it
    /// pending.
    pub(super) fn send(
        &self,
        log: Arc<TopicLog>,
        seq: u64,
        (subject, msg_id, headers): (String, String, HeaderMap),
        payload: Bytes,
    ) -> Result<()> {
        let ack = self.publish(&subject, &headers, &payload, seq)?;
        let pending = Pending { log, seq, msg_id, subject, headers, payload, ack };
        self.pending.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(pending);
        Ok(())
    }

    /// `log`'s appends not yet taken by a sync, in append order. (While a sync waits for them they are
    /// not here; the writer, the only caller of `sync`, reads its own caches meanwhile, and other readers
    /// read only what is durable.)
    pub(super) fn unsynced(&self, log: &TopicLog) -> Vec<Unsynced> {
        let pending = self.pending.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        pending
            .iter()
            .filter(|p| p.log.stream == log.stream)
            .filter_map(|p| {
                let record = names::record_of(&p.headers).ok()?;
                let batch = names::stored_of(&p.headers, p.payload.clone()).ok()?;
                Some(Unsynced { subject: p.subject.clone(), record, batch })
            })
            .collect()
    }

    /// Queues one conditional publish; the receiver yields its acknowledgement.
    fn publish(
        &self,
        subject: &str,
        headers: &HeaderMap,
        payload: &Bytes,
        seq: u64,
    ) -> Result<oneshot::Receiver<Acked>> {
        let message = PublishMessage::build()
            .headers(headers.clone())
            .payload(payload.clone())
            .expected_last_sequence(seq - 1);
        let (tx, rx) = oneshot::channel();
        self.outgoing
            .send(Outgoing { subject: subject.to_owned(), message, ack: tx })
            .map_err(|_| Error::ShuttingDown)?;
        Ok(rx)
    }

    /// Awaits every pending append: `Ok` once the stream was seen to hold each of them.
    pub(super) fn sync_pending(&self) -> Result<()> {
        let pending =
            std::mem::take(&mut *self.pending.lock().unwrap_or_else(std::sync::PoisonError::into_inner));
        if pending.is_empty() {
            return Ok(());
        }
        let deadline = Instant::now() + self.options.publish_timeout;
        // Per topic, in append order.
        let mut topics: Vec<(Arc<TopicLog>, Vec<Pending>)> = Vec::new();
        let mut at: HashMap<String, usize> = HashMap::new();
        for p in pending {
            let i = *at.entry(p.log.stream.clone()).or_insert_with(|| {
                topics.push((p.log.clone(), Vec::new()));
                topics.len() - 1
            });
            topics[i].1.push(p);
        }
        let mut outcome = Ok(());
        for (log, pending) in topics {
            let count = pending.len();
            let synced = self.await_acks(&log, pending, deadline);
            let mut state = log.state();
            state.pending = state.pending.saturating_sub(count);
            if synced.is_err() {
                state.forget();
            }
            drop(state);
            if outcome.is_ok() {
                outcome = synced;
            }
        }
        outcome
    }

    /// Awaits the acknowledgements of one topic's pending appends, recovering from the first that is not
    /// as expected.
    fn await_acks(&self, log: &Arc<TopicLog>, pending: Vec<Pending>, deadline: Instant) -> Result<()> {
        let mut rest = pending.into_iter();
        let mut unsure = Vec::new();
        let mut why = String::new();
        for mut p in rest.by_ref() {
            match self.wait(&mut p.ack, deadline) {
                Ok(ack) if ack.sequence == p.seq && !ack.duplicate => continue,
                Ok(ack) => {
                    why = format!("acknowledged at sequence {} (duplicate: {})", ack.sequence, ack.duplicate)
                }
                Err(e) => why = e.to_string(),
            }
            unsure.push(p);
            break;
        }
        if unsure.is_empty() {
            return Ok(());
        }
        unsure.extend(rest);
        let (batches, started) = (unsure.len(), Instant::now());
        tracing::warn!(topic = %log.topic, batches, "JetStream did not acknowledge an append as sent ({why}): looking at the stream, resending what it lacks");
        let recovered = self.recover(log, unsure, deadline, why);
        match &recovered {
            Ok(()) => {
                tracing::warn!(topic = %log.topic, batches, elapsed_ms = started.elapsed().as_millis() as u64, "JetStream holds the appends again")
            }
            // Another broker appended first: the writer sequences the group again.
            Err(e @ Error::Contended(_)) => tracing::debug!(topic = %log.topic, "{e}"),
            Err(e) => tracing::error!(topic = %log.topic, batches, "appends not stored: {e}"),
        }
        recovered
    }

    /// Waits for one acknowledgement until `deadline`.
    fn wait(&self, ack: &mut oneshot::Receiver<Acked>, deadline: Instant) -> Result<PublishAck> {
        let left = deadline.saturating_duration_since(Instant::now());
        let ack = std::mem::replace(ack, oneshot::channel().1);
        match self.block(async move { tokio::time::timeout(left, ack).await })? {
            Ok(Ok(Ok(ack))) => Ok(ack),
            Ok(Ok(Err(e))) => Err(unavailable("append", e)),
            Ok(Err(_)) => Err(Error::ShuttingDown),
            Err(_) => Err(Error::Unavailable("no acknowledgement before the deadline".into())),
        }
    }

    /// Step 1-3 of the module documentation, until the stream holds every one of `pending` or `deadline`.
    fn recover(
        &self,
        log: &Arc<TopicLog>,
        mut pending: Vec<Pending>,
        deadline: Instant,
        mut why: String,
    ) -> Result<()> {
        let mut backoff = FIRST_BACKOFF;
        loop {
            if Instant::now() >= deadline {
                return Err(Error::Unavailable(format!(
                    "JetStream did not store the batches of {} within {} s: {why}",
                    log.topic,
                    self.options.publish_timeout.as_secs()
                )));
            }
            match self.look(log, &pending) {
                Ok(stored) => {
                    pending.drain(..stored);
                    if pending.is_empty() {
                        return Ok(());
                    }
                    // Send the rest again, in order, and await them.
                    let mut resent = Ok(());
                    for p in &mut pending {
                        match self.publish(&p.subject, &p.headers, &p.payload, p.seq) {
                            Ok(ack) => p.ack = ack,
                            Err(e) => resent = Err(e),
                        }
                    }
                    resent?;
                    let mut all = true;
                    for p in &mut pending {
                        match self.wait(&mut p.ack, deadline) {
                            Ok(ack) if ack.sequence == p.seq && !ack.duplicate => {}
                            Ok(ack) => {
                                why = format!("acknowledged at sequence {}", ack.sequence);
                                all = false;
                                break;
                            }
                            Err(e) => {
                                why = e.to_string();
                                all = false;
                                break;
                            }
                        }
                    }
                    if all {
                        return Ok(());
                    }
                }
                Err(Error::Contended(e)) => return Err(Error::Contended(e)),
                Err(e) => why = e.to_string(),
            }
            std::thread::sleep(backoff.min(deadline.saturating_duration_since(Instant::now())));
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// How many of `pending` (a run of consecutive sequences) the stream holds: each one up to its last
    /// sequence must be there under its own `Nats-Msg-Id`, else another broker's batch took its place.
    fn look(&self, log: &Arc<TopicLog>, pending: &[Pending]) -> Result<usize> {
        let js = self.js.clone();
        let name = log.stream.clone();
        let last = self.block(async move {
            let mut stream = js.get_stream(&name).await.map_err(|e| unavailable("stream info", e))?;
            let info = stream.info().await.map_err(|e| unavailable("stream info", e))?;
            Ok::<_, Error>(info.state.last_sequence)
        })??;
        let mut stored = 0;
        for p in pending.iter().take_while(|p| p.seq <= last) {
            let seq = p.seq;
            let found = self.get(log, super::log::At::Seq(seq))?;
            let found = found.as_ref().and_then(|m| names::stored_msg_id(&m.headers));
            if found != Some(p.msg_id.as_str()) {
                return Err(Error::Contended(format!(
                    "sequence {seq} of {} holds another batch than this broker's",
                    log.topic
                )));
            }
            stored += 1;
        }
        if stored < pending.len() && pending[stored].seq != last + 1 {
            return Err(Error::Contended(format!(
                "{} ends at sequence {last}, before this broker's next batch at {}",
                log.topic, pending[stored].seq
            )));
        }
        Ok(stored)
    }
}
