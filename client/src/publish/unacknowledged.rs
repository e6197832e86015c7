//! What a publisher that gave up hands back, and resending it: a retry that never duplicates.
//!
//! A publisher whose outage outlasts its retry budget fails every message it holds with the last error,
//! whether or not the broker stored its batch (the acknowledgement may be what was lost). Publishing those
//! messages again through a new publisher would seal them again, into a new chain, and store twice what the
//! broker had stored. Instead the publisher hands back ([`Publisher::take_unacknowledged`]) the **sealed
//! batches** it had sent, byte for byte as signed, and the messages it had not sealed yet.
//! [`Client::resend`](crate::Client::resend) sends the sealed batches unchanged, in order, on a stream of
//! their own: the broker answers a batch it stored already with its original offsets (it recognises the
//! same sealed bytes on the same chain) and stores one it had not, after the one before it. Resending is
//! idempotent, so it retries a loss from the start within the retry budget, and a process may keep the
//! batches (an outbox) and resend them later. The unsealed messages were never sent: publish them again
//! with any publisher, after the resend.
//!
//! While an [`Unacknowledged`] lives it holds its chain's record in the client's state folder, so that no
//! new publisher continues that chain (from the head acknowledged before the outage) while its sealed
//! batches wait to be resent: that would fork the chain.

use std::sync::Arc;

use bytes::Bytes;
use sealpost_protocol::{Frame, Headers, Limits, SealedBatch, Topic};

use crate::error::{Action, Error, Result};
use crate::link::unexpected;
use crate::reconnect::Reconnector;
use crate::shared::Shared;

use super::chain_state::ChainState;
use super::pipeline::{Receipt, Unanswered};
#[cfg(doc)]
use super::Publisher;

/// What a publisher that gave up after an outage had not had acknowledged, oldest first: see
/// [`Publisher::take_unacknowledged`].
///
/// Its messages are the publisher's failed messages, in the order they were published: the first
/// [`sealed_messages`](Self::sealed_messages) are in the [`sealed`](Self::sealed) batches, the rest are
/// [`unsent`](Self::unsent).
pub struct Unacknowledged {
    topic: Topic,
    sealed: Vec<Bytes>,
    sealed_messages: usize,
    unsent: Vec<(Headers, Bytes)>,
    /// The chain's record in the state folder, held until this is dropped.
    _chain: Option<ChainState>,
}

impl Unacknowledged {
    pub(crate) fn new(topic: Topic, unanswered: Unanswered, chain: Option<ChainState>) -> Self {
        let Unanswered { sealed, sealed_messages, unsent } = unanswered;
        Unacknowledged { topic, sealed, sealed_messages, unsent, _chain: chain }
    }

    /// The topic.
    pub fn topic(&self) -> &Topic {
        &self.topic
    }

    /// The sealed batches the broker did not acknowledge, oldest first, byte for byte as signed: some may
    /// be stored (their acknowledgement was lost), the others not. Send them again with
    /// [`Client::resend`](crate::Client::resend).
    pub fn sealed(&self) -> &[Bytes] {
        &self.sealed
    }

    /// How many messages the [`sealed`](Self::sealed) batches hold.
    pub fn sealed_messages(&self) -> usize {
        self.sealed_messages
    }

    /// The messages that were queued and never sealed (so never sent), oldest first: headers and payload.
    /// Publish them again, after the sealed batches were resent.
    pub fn unsent(&self) -> &[(Headers, Bytes)] {
        &self.unsent
    }
}

/// Shows counts, never payloads.
impl std::fmt::Debug for Unacknowledged {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Unacknowledged")
            .field("topic", &self.topic)
            .field("sealed_batches", &self.sealed.len())
            .field("sealed_messages", &self.sealed_messages)
            .field("unsent", &self.unsent.len())
            .finish()
    }
}

/// Sends the sealed `batches` of `topic` unchanged, in order, on a publish stream of their own, and returns
/// a receipt per message: those of a batch the broker stored already are its original ones. A loss is
/// retried from the start within the retry budget (resending is idempotent); a refusal fails it.
pub(crate) async fn resend(shared: &Arc<Shared>, topic: &Topic, batches: &[Bytes]) -> Result<Vec<Receipt>> {
    // Each must be a sealed batch of the topic: its first sequence number and count give the receipts.
    let unbounded = Limits { max_batch_len: u32::MAX, max_batch_messages: u32::MAX, ..shared.limits };
    let mut headers = Vec::with_capacity(batches.len());
    for batch in batches {
        let sealed = SealedBatch::decode(batch.clone(), &unbounded)?;
        if &sealed.header().topic != topic {
            return Err(Error::InvalidOptions { detail: "a sealed batch of another topic" });
        }
        headers.push((sealed.header().first_seq, sealed.header().count));
    }
    let mut reconnect = Reconnector::new(shared.options.reconnect.clone());
    reconnect.run(|| resend_once(shared, topic, batches, &headers)).await
}

/// One attempt: every batch sent, then every answer read, in order.
async fn resend_once(
    shared: &Shared,
    topic: &Topic,
    batches: &[Bytes],
    headers: &[(u64, u32)],
) -> Result<Vec<Receipt>> {
    let mut link = shared.open_link().await?;
    let mut requests = Vec::with_capacity(batches.len());
    for batch in batches {
        let request_id = shared.request_id();
        link.send(&Frame::Publish { request_id, batch: batch.clone() }).await?;
        requests.push(request_id);
    }
    let mut receipts = Vec::new();
    for (&request_id, &(first_seq, count)) in requests.iter().zip(headers) {
        match link.read().await? {
            Some(Frame::Published { request_id: answered, first_offset, count: stored })
                if answered == request_id && stored == count =>
            {
                receipts.extend((0..count).map(|i| Receipt {
                    offset: first_offset.saturating_add(u64::from(i)),
                    seq: first_seq + u64::from(i),
                }));
            }
            Some(Frame::Error { code, message, .. }) => {
                return Err(Error::refused(Action::Publish, topic, code, &message))
            }
            Some(other) => return Err(unexpected(&other, "Publish requests")),
            None => {
                return Err(Error::ConnectionLost {
                    reason: "the broker ended the publish stream before answering".into(),
                })
            }
        }
    }
    link.finish();
    Ok(receipts)
}
