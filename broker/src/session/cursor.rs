//! A subscription's delivery cursor: where delivery stands, what to read next, and what each stored item
//! read becomes: a `Deliver` or `Lost` frame, nothing (a batch of a chain another member of a shared
//! subscription owns), or a stop (past the durable end, a rewind to send, a full window). Made by
//! [`Subscribing::start`](super::Subscribing::start); see the `subscribe` module for the whole
//! subscription.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use sealpost_protocol::{Frame, Limits, Offset, SealedBatch, SubscriptionId, Topic};
use tracing::info;

use super::endpoint::Endpoint;
use super::group::{ChainKey, Group, MemberId, Step};
use super::reply::Refusal;
use super::subscribe::{is_subscriber, SubscriptionSlot};
use crate::event::{Event, Who};
use crate::store::{Store, Stored};
use crate::tls::Peer;
use crate::Error;

/// What to read next for a subscription: the store's items from the one that holds `from`, within
/// `max_bytes` (`subscriber_read_bytes`: reserve it from the connection's budget first).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Read {
    /// The first offset wanted.
    pub from: Offset,
    /// Most bytes of batches to read at a time.
    pub max_bytes: usize,
}

/// Where a subscription's delivery stands. Holds its slot: drop it when the stream ends.
#[derive(Debug)]
pub struct Cursor {
    pub(super) subscription: SubscriptionId,
    pub(super) next: Offset,
    pub(super) read_bytes: usize,
    /// Its group and its id there, if it is a member of a shared durable subscription.
    pub(super) group: Option<(Arc<Group>, MemberId)>,
    /// How long a member may leave a batch unacknowledged (`limits.shared_ack_wait`; zero: no limit).
    pub(super) ack_wait: std::time::Duration,
    pub(super) _slot: SubscriptionSlot,
    /// Its topic and who reads it, for the events.
    pub(super) topic: Topic,
    pub(super) endpoint: Arc<Endpoint>,
    pub(super) peer: Arc<Peer>,
    pub(super) remote: Option<SocketAddr>,
}

impl Cursor {
    /// The next offset to deliver.
    pub fn position(&self) -> Offset {
        self.next
    }

    /// What to read next when the topic is durable up to `durable_end`; `None` when all of it was
    /// delivered (wait for the durable end to move).
    pub fn next_read(&self, durable_end: Offset) -> Option<Read> {
        (self.next < durable_end).then_some(Read { from: self.next, max_bytes: self.read_bytes })
    }

    /// Whether the subscription may go on, asked before each read: the ACL as it is now (after a reload)
    /// must still let its principal subscribe to its topic, and the topic's current policy (after a new
    /// epoch was stored) must still list it as a subscriber. If not, the refusal to end the stream with
    /// (`NOT_AUTHORIZED`: send its frame, finish the stream), and the event says so; a store error ends it
    /// too.
    pub fn still_authorized(&self, store: &dyn Store) -> Result<(), Refusal> {
        let acl = self.endpoint.acl();
        let allowed = acl.allows(&self.peer.principal, &self.topic, crate::acl::Action::Subscribe);
        let member = allowed
            .then(|| is_subscriber(&self.endpoint, store, &self.topic, &self.peer.principal))
            .transpose()
            .map_err(|e| Refusal::new(None, e))?;
        if member == Some(true) {
            return Ok(());
        }
        let why =
            if allowed { "the topic's policy no longer lists it" } else { "the ACL no longer allows it" };
        info!(principal = %self.peer.principal, topic = %self.topic, "subscription ended: {why}");
        self.endpoint.emit(&Event::StreamRevoked {
            who: Who::of(&self.peer, self.remote),
            topic: &self.topic,
            action: crate::event::Action::Subscribe,
        });
        Err(Refusal::new(None, Error::NotAuthorized))
    }

    /// What to do with `item` (read in offset order): [`Next::Send`] the frame that delivers it (the cursor
    /// moved past it); [`Next::Skip`] it, a batch of a chain another member of the group owns (the cursor
    /// moved past it too); or [`Next::Stop`] delivering this read: the item is at or past `durable_end` (not
    /// durable), or the group says to wait (a rewind to send first, or a full window), and the cursor did
    /// not move.
    /// `now` dates what a member of a group is given, for [`ack_deadline`](Self::ack_deadline).
    pub fn deliver(&mut self, item: Stored, durable_end: Offset, now: Instant) -> Next {
        if item.offset() >= durable_end {
            return Next::Stop;
        }
        if let Some((group, member)) = &self.group {
            match group.next(*member, (item.offset(), item.end()), chain_of(&item), now) {
                Step::Deliver => {}
                Step::Skip => {
                    self.next = item.end();
                    return Next::Skip;
                }
                Step::Stop => return Next::Stop,
            }
        }
        self.next = item.end();
        if let Stored::Batch(batch) = &item {
            self.endpoint.emit(&Event::Delivered {
                who: Who::of(&self.peer, self.remote),
                topic: &self.topic,
                messages: batch.count,
                bytes: batch.bytes.len(),
            });
        }
        Next::Send(item.into_frame(self.subscription))
    }

    /// The `Rewind` to send before anything else, if the subscription's group gave it chains to read back
    /// (the cursor moved there).
    pub fn take_rewind(&mut self) -> Option<Frame> {
        let (group, member) = self.group.as_ref()?;
        let offset = group.take_rewind(*member)?;
        self.next = offset;
        let who = Who::of(&self.peer, self.remote);
        self.endpoint.emit(&Event::SharedRewind { who, topic: &self.topic });
        Some(Frame::Rewind { subscription: self.subscription, offset })
    }

    /// When a member of a shared durable subscription has left the oldest batch it was given
    /// unacknowledged for `limits.shared_ack_wait`: check [`overdue`](Self::overdue) then. `None`: not a
    /// member, nothing unacknowledged, or no limit.
    pub fn ack_deadline(&self) -> Option<Instant> {
        let (group, member) = self.group.as_ref().filter(|_| !self.ack_wait.is_zero())?;
        group.oldest_unacknowledged(*member)?.checked_add(self.ack_wait)
    }

    /// Whether the member's oldest unacknowledged batch is overdue at `now`: the refusal to end its stream
    /// with (`UNAVAILABLE`: the client joins again), after which the subscription's end gives its chains
    /// and what it had not acknowledged to the other members.
    pub fn overdue(&self, now: Instant) -> Option<Refusal> {
        if self.ack_deadline()? > now {
            return None;
        }
        Some(self.stalled())
    }

    /// The refusal to end a member's stream with when it stopped reading it for `limits.shared_ack_wait`
    /// (a delivery could not be written since its oldest unacknowledged batch was due), as
    /// [`overdue`](Self::overdue) gives.
    pub fn stalled(&self) -> Refusal {
        info!(principal = %self.peer.principal, topic = %self.topic, wait = ?self.ack_wait,
            "a member of a shared subscription left a batch unacknowledged too long: its work goes to the others");
        let who = Who::of(&self.peer, self.remote);
        self.endpoint.emit(&Event::SharedAckOverdue { who, topic: &self.topic });
        Refusal::new(None, Error::AckOverdue(self.ack_wait))
    }

    /// Changes when the group may have a rewind for it or room in its window again: wait on it with the
    /// topic's durable end, if it is a member of a shared durable subscription.
    pub fn group_changed(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        self.group.as_ref().map(|(group, _)| group.changed())
    }
}

/// What a cursor does with an item read ([`Cursor::deliver`]).
// Returned by value and consumed at once, as `Option<Frame>` was: boxing would allocate per delivery.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, PartialEq)]
pub enum Next {
    /// Send this frame.
    Send(Frame),
    /// Go on with the next item.
    Skip,
    /// Deliver nothing more of this read.
    Stop,
}

impl Next {
    /// The frame to send, if any.
    pub fn into_frame(self) -> Option<Frame> {
        match self {
            Next::Send(frame) => Some(frame),
            Next::Skip | Next::Stop => None,
        }
    }
}

/// Limits for reading stored batches' headers: the broker accepted them under its own limits once.
const STORED: Limits = Limits {
    max_frame_len: u32::MAX,
    max_batch_len: u32::MAX,
    max_batch_messages: u32::MAX,
    max_policy_members: u32::MAX,
};

/// The publisher chain of a stored batch, read from its (signed, not verified here) header: what a group
/// shares out. `None` for a lost range, and for a batch whose header does not parse (every member is given
/// it, and judges it).
fn chain_of(item: &Stored) -> Option<ChainKey> {
    let Stored::Batch(batch) = item else { return None };
    let sealed = SealedBatch::decode(batch.bytes.clone(), &STORED).ok()?;
    let header = sealed.header();
    Some((header.publisher, header.chain))
}
