//! The sans-IO core of Sealpost.
//!
//! This crate owns every byte that Sealpost puts on the wire or on disk, and every decision about whether
//! such bytes can be trusted:
//!
//! - [`batch`]: the **sealed batch**, the unit that a publisher signs, the broker stores and a subscriber
//!   opens. Its signed bytes are a canonical encoding defined here, byte by byte (see `docs/architecture.md`),
//!   not whatever a serializer happens to emit.
//! - [`headers`]: the optional user headers of a message, sealed inside its record with the payload.
//! - [`chain`]: the per-(topic, publisher) sequence chain that lets a subscriber detect a broker that drops,
//!   replays or reorders batches.
//! - [`policy`]: the **topic policy**, signed by the topic authority that clients pin: who may publish on
//!   and read a topic in an epoch, and that epoch's content key wrapped to each member with HPKE; and the
//!   [`PolicyBook`] that admits a topic's policies in order and refuses rollbacks and forks.
//! - [`frame`]: the length-prefixed frames exchanged by clients and brokers, with a check step that bounds
//!   every length before anything is allocated, and [`code`], their stable numeric error codes;
//!   [`frame_buffer`] cuts a stream's bytes into frames, holding only what arrived.
//! - [`topic`]: validated topic names and the wildcard patterns used by access-control lists; [`offset`],
//!   the place of a message in a topic's log, a type apart from publisher sequence numbers.
//! - [`keys`]: signing keys, HPKE key-agreement keys, content keys and key ids; [`principal`], validated
//!   principal names; [`identity`], the shape of a principal's identity file.
//!
//! # What this crate does not do
//!
//! It performs no I/O, reads no clock and draws no randomness of its own: time arrives as a [`Timestamp`]
//! and randomness as an RNG argument, so that every function here is deterministic and testable without
//! sockets. It does not decide who may connect, publish or subscribe at the broker (the broker's ACL does
//! that); what a subscriber trusts (publisher keys, content keys) comes from topic policies signed by the
//! topic authority, never from the broker.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod admin;
pub mod batch;
pub mod chain;
pub mod code;
mod digest;
mod epoch;
mod error;
pub mod frame;
pub mod frame_buffer;
pub mod headers;
pub mod identity;
pub mod keys;
mod limits;
pub mod offset;
pub mod policy;
pub mod principal;
mod reader;
mod time;
pub mod topic;

pub use admin::{
    AdminAnswer, AdminQuery, BrokerStats, ConnectionStats, DurableKey, DurableStats, TopicStats, ADMIN_PAGE,
};
pub use batch::{
    open, seal, seal_with_headers, BatchHeader, OpenedBatch, SealParams, SealedBatch, VerifiedBatch,
};
pub use chain::{ChainHead, ChainId, ChainStart, ChainVerifier};
pub use code::ErrorCode;
pub use digest::Digest;
pub use epoch::Epoch;
pub use error::{Error, PolicyLinkFault};
pub use frame::{Frame, LostBatch, RequestId, StartAt, SubscriptionId};
pub use frame_buffer::FrameBuffer;
pub use headers::{HeaderName, Headers};
pub use keys::{ContentKey, HpkePublicKey, HpkeSecretKey, KeyId, KeyLookup, PublicKey, SigningKey};
pub use limits::Limits;
pub use offset::Offset;
pub use policy::{issue_policy, EpochKeys, Member, PolicyBook, PolicyParams, SignedPolicy, VerifiedPolicy};
pub use principal::Principal;
pub use time::Timestamp;
pub use topic::{Topic, TopicPattern};

/// The result type of this crate.
pub type Result<T, E = Error> = core::result::Result<T, E>;
