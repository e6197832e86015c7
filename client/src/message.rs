//! A delivered [`Message`]: what a [`Subscription`](crate::Subscription) yields once every check of its
//! batch passed (see `subscribe/reader.rs`). Plain data; its `Debug` output never shows the payload, only
//! its length.

use std::fmt;

use bytes::Bytes;
use sealpost_protocol::{Offset, Principal, PublicKey, Timestamp, Topic};

/// One message, delivered by a [`Subscription`](crate::Subscription) only after its batch's signature,
/// topic, records, publisher (against the topic policy of its epoch) and place in its publisher's chain
/// were checked.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Message {
    /// The plaintext.
    pub payload: Bytes,
    /// The publisher's principal, as named by the topic policy that lists its key as a publisher.
    pub publisher: Principal,
    /// The key that signed the message's batch.
    pub publisher_key: PublicKey,
    /// The topic.
    pub topic: Topic,
    /// Its offset in the topic's log, assigned by the broker.
    pub offset: Offset,
    /// Its sequence number in the publisher's chain on the topic, signed by the publisher.
    pub seq: u64,
    /// When the publisher sealed it, as the publisher claims (signed).
    pub timestamp: Timestamp,
    /// The subscription's stream generation it was delivered in (a shared subscription's `Rewind`s and
    /// reconnections start new ones): what [`Subscription::ack`](crate::Subscription::ack) acknowledges
    /// it in.
    pub(crate) generation: u64,
}

/// Shows everything but the payload, of which only the length is shown.
impl fmt::Debug for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Message")
            .field("topic", &self.topic)
            .field("offset", &self.offset)
            .field("publisher", &self.publisher)
            .field("publisher_key", &self.publisher_key)
            .field("seq", &self.seq)
            .field("timestamp", &self.timestamp)
            .field("payload_len", &self.payload.len())
            .finish()
    }
}
