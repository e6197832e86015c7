//! A delivered [`Message`]: what a [`Subscription`](crate::Subscription) yields once every check of its
//! batch passed (see `subscribe/reader.rs`). Plain data; its `Debug` output never shows the payload, only
//! its length, nor header values, only their names.

use std::fmt;

use bytes::Bytes;
use sealpost_protocol::{Headers, Offset, Principal, PublicKey, Timestamp, Topic};

/// One message, delivered by a [`Subscription`](crate::Subscription) only after its batch's signature,
/// topic, records, publisher (against the topic policy of its epoch) and place in its publisher's chain
/// were checked.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Message {
    /// The plaintext.
    pub payload: Bytes,
    /// The user headers the publisher sealed with the payload ([`Publisher::publish_with`]), as
    /// confidential and as authentic as the payload; empty if it set none.
    ///
    /// [`Publisher::publish_with`]: crate::Publisher::publish_with
    pub headers: Headers,
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

/// Shows everything but the payload, of which only the length is shown, and the header values, of which
/// only the names are shown (values may be as secret as the payload).
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
            .field("headers", &self.headers)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use sealpost_protocol::SigningKey;

    use super::*;

    #[test]
    fn debug_shows_neither_the_payload_nor_header_values() {
        let message = Message {
            payload: Bytes::from_static(b"payload-secret"),
            headers: Headers::new().with("authorization", "header-secret").unwrap(),
            publisher: "alice".parse().unwrap(),
            publisher_key: SigningKey::from_bytes(&[1; 32]).public_key(),
            topic: "demo.chat".parse().unwrap(),
            offset: Offset(3),
            seq: 4,
            timestamp: Timestamp(5),
            generation: 0,
        };
        let shown = format!("{message:?}");
        assert!(shown.contains("payload_len: 14") && shown.contains("authorization"), "{shown}");
        assert!(!shown.contains("payload-secret") && !shown.contains("header-secret"), "{shown}");
    }
}
