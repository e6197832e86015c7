//! **Administrative queries**: what an operator's client asks a running broker about itself
//! ([`Frame::Admin`](crate::Frame::Admin)), and the answers ([`Frame::AdminAnswer`](crate::Frame::AdminAnswer)).
//!
//! Only principals the broker's ACL grants `admin` on every topic (`topics = [">"]`) may ask. The answers
//! are the broker's word, read-only and unsigned: they are for operating the broker, not evidence of what
//! it stores (the sealed batches and signed policies are that).
//!
//! Lists come in pages: a query names the key of the last row it has (`after`), the answer says whether
//! more follow (`more`); the next page asks `after` the key of its last row. A page holds at most
//! [`ADMIN_PAGE`] rows, so an answer always fits in a frame of the default size.

use serde::{Deserialize, Serialize};

use crate::epoch::Epoch;
use crate::offset::Offset;
use crate::principal::Principal;
use crate::topic::Topic;

/// Most rows an answer's page holds.
pub const ADMIN_PAGE: usize = 256;

/// What an administrator asks. Variants are appended, never reordered: their index is on the wire.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AdminQuery {
    /// The broker's totals ([`BrokerStats`]).
    Stats,
    /// The topics that hold messages, after `after` (in the broker's order).
    Topics {
        /// The last topic of the previous page; `None`: from the first.
        after: Option<Topic>,
    },
    /// The durable subscriptions, by topic, principal and name, after `after`.
    Subscriptions {
        /// The key of the last row of the previous page; `None`: from the first.
        after: Option<DurableKey>,
    },
    /// The open connections, by id, after `after`.
    Connections {
        /// The id of the last connection of the previous page; `None`: from the first.
        after: Option<u64>,
    },
}

/// The answer to an [`AdminQuery`] of the same kind.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AdminAnswer {
    /// The broker's totals.
    Stats(BrokerStats),
    /// A page of topics.
    Topics {
        /// The rows, by name.
        rows: Vec<TopicStats>,
        /// Whether more rows follow the last one.
        more: bool,
    },
    /// A page of durable subscriptions.
    Subscriptions {
        /// The rows, by key.
        rows: Vec<DurableStats>,
        /// Whether more rows follow the last one.
        more: bool,
    },
    /// A page of connections.
    Connections {
        /// The rows, by id.
        rows: Vec<ConnectionStats>,
        /// Whether more rows follow the last one.
        more: bool,
    },
}

/// The broker's totals.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BrokerStats {
    /// The broker's version (its crate version).
    pub version: String,
    /// Milliseconds since it started.
    pub uptime_ms: u64,
    /// Open connections.
    pub connections: u64,
    /// Distinct principals among them.
    pub principals: u64,
    /// Topics that hold messages.
    pub topics: u64,
    /// Messages stored, all topics (next offset minus first offset, summed).
    pub stored_messages: u64,
    /// Successful syncs of the store since it opened.
    pub syncs: u64,
}

/// One topic.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicStats {
    /// The topic.
    pub topic: Topic,
    /// Its oldest stored offset.
    pub first_offset: Offset,
    /// The offset its next message gets.
    pub next_offset: Offset,
    /// Its current policy epoch, if it has a policy.
    pub epoch: Option<Epoch>,
}

/// Which durable subscription: the key of [`AdminQuery::Subscriptions`]'s pages.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct DurableKey {
    /// Its topic.
    pub topic: Topic,
    /// The principal it belongs to.
    pub principal: Principal,
    /// Its name.
    pub name: String,
}

/// One durable subscription.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DurableStats {
    /// Which.
    pub key: DurableKey,
    /// The offset it resumes from (its committed acknowledgement).
    pub committed: Offset,
    /// Messages stored after it: the topic's next offset minus `committed`.
    pub lag: u64,
}

/// One open connection.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectionStats {
    /// The broker's id of the connection.
    pub id: u64,
    /// Its principal, from its certificate.
    pub principal: Principal,
    /// The peer's address, as the broker sees it.
    pub remote: String,
    /// Milliseconds since it was admitted.
    pub age_ms: u64,
}
