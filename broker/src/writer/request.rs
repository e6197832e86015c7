//! What the [`Log`](super::Log) handle hands the writer thread, and what the writer answers an append.
//!
//! A request owns a one-shot reply channel: the writer answers every request it takes exactly once (a
//! caller that went away is simply not told). Nothing here does anything; the handle builds requests and
//! [`group`](super::group) executes them.

use bytes::Bytes;
use sealpost_protocol::{Offset, Principal, Topic, VerifiedBatch};
use tokio::sync::oneshot;

use crate::Result;

/// Where an appended batch was stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Appended {
    /// Offset of the batch's first message.
    pub first_offset: Offset,
    /// Number of messages: the batch covers `first_offset..first_offset + count`.
    pub count: u32,
    /// The batch was already stored (a retry): these are its original offsets and nothing new was stored.
    pub duplicate: bool,
}

/// One request to the writer thread.
pub(super) enum Request {
    /// Sequence and store a verified batch (sealed for the topic it is stored on: the handle checked).
    Append {
        /// Boxed: a verified batch is large next to the other requests.
        batch: Box<VerifiedBatch>,
        reply: oneshot::Sender<Result<Appended>>,
    },
    /// Record a durable subscription's position.
    Commit {
        topic: Topic,
        principal: Principal,
        name: String,
        next_offset: Offset,
        reply: oneshot::Sender<Result<()>>,
    },
    /// Store a verified topic policy.
    Policy { topic: Topic, epoch: u64, policy: Bytes, reply: oneshot::Sender<Result<()>> },
}

impl Request {
    /// Bytes it asks the writer to store: what bounds a group.
    pub(super) fn bytes(&self) -> usize {
        match self {
            Request::Append { batch, .. } => batch.as_bytes().len(),
            Request::Commit { .. } => 0,
            Request::Policy { policy, .. } => policy.len(),
        }
    }
}
