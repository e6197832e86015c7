//! The limits the broker enforces on peers, defined once.
//!
//! [`ServerLimits`] is both the `[limits]` table of the configuration file and what
//! [`Broker::start`](crate::server::Broker::start) is given: a configuration file and a program that embeds
//! the broker get the same defaults, each written once, in [`ServerLimits::default`]. Its `memory` field is
//! the `[memory]` table ([`MemoryLimits`], whose own defaults live in [`crate::budget`]); the configuration
//! loader puts it there. [`ServerLimits::validate`] is what a loaded configuration must pass; a program that
//! builds its limits in code is trusted with them, as before.
//!
//! This module only holds numbers: the session ([`crate::session`]) and the shell ([`crate::server`])
//! enforce them.

use std::time::Duration;

use serde::Deserialize;

use crate::budget::MemoryLimits;
use crate::{Error, Result};

const MIB: usize = 1024 * 1024;

/// Limits the broker enforces on peers: the `[limits]` table of the configuration file, and the `[memory]`
/// table in [`memory`](Self::memory). Every field has a default.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerLimits {
    /// Largest frame a peer may send, in bytes (version byte and body, not the 4-byte length prefix).
    /// Default: 4 MiB (4194304). At least 1 KiB.
    pub max_frame_len: u32,
    /// Most messages in one sealed batch. Default: 65536. At least 1.
    pub max_batch_messages: u32,
    /// Most simultaneous connections. Default: 10000. At least 1.
    pub max_connections: u32,
    /// Most simultaneous streams a connection may open. Default: 256. At least 1.
    pub max_streams_per_connection: u32,
    /// Most simultaneous streams of one principal, over its connections; a stream beyond is refused with
    /// `LIMIT_EXCEEDED`. Default: 1024. At least 1.
    pub max_streams_per_principal: u32,
    /// Most simultaneous streams over all connections; a stream beyond is refused with `LIMIT_EXCEEDED`.
    /// Default: 65536. At least 1.
    pub max_streams: u32,
    /// A connection without traffic for this long is closed; `idle_timeout_ms` in the file, in
    /// milliseconds. Default: 30 s (30000). At least 1 ms.
    #[serde(rename = "idle_timeout_ms", deserialize_with = "millis")]
    pub idle_timeout: Duration,
    /// How long a member of a shared durable subscription may leave the oldest batch it was given
    /// unacknowledged: past it, its stream is ended (`UNAVAILABLE`; the client joins again) and its chains
    /// and unacknowledged batches go to the other members, as when it leaves. `shared_ack_wait_ms` in the
    /// file. Default: 60 s (60000). 0: no limit (a member that stops acknowledging keeps its chains).
    #[serde(rename = "shared_ack_wait_ms", deserialize_with = "millis")]
    pub shared_ack_wait: Duration,
    /// How many bytes of stored batches a subscriber reads from the store at a time (at least one batch is
    /// always read): its memory bound in the broker. Default: 1 MiB (1048576). At least 1.
    pub subscriber_read_bytes: usize,
    /// Bytes of recently appended batches the broker keeps in memory, over all topics, so that subscribers
    /// that keep up are served without reading the store. Default: 8 MiB (8388608). 0 keeps none.
    ///
    /// The tail hands subscribers the bytes that were appended, not what the store reads back: a program
    /// that passes a [`Store`](crate::store::Store) whose reads may differ from what was appended (a test
    /// store that lies on purpose) sets 0 so that every delivery is read from the store.
    pub tail_cache_bytes: usize,
    /// Most simultaneous connections of one principal. Default: 64. At least 1.
    pub max_connections_per_principal: u32,
    /// Most simultaneous subscriptions on one connection. Default: 128. At least 1.
    pub max_subscriptions_per_connection: u32,
    /// Messages per second one principal may publish, across its connections (token bucket, burst of one
    /// second). Default: 0, unlimited.
    pub publish_msgs_per_sec: u64,
    /// Bytes of sealed batches per second one principal may publish (token bucket, burst of one second).
    /// Default: 0, unlimited.
    pub publish_bytes_per_sec: u64,
    /// Publishes on one stream waiting for durability at once (not in the configuration file). Default:
    /// 1024.
    #[serde(skip)]
    pub max_in_flight_per_stream: usize,
    /// What peers can make the broker hold: in-flight budgets, the frame deadline, QUIC windows. The
    /// configuration file's `[memory]` table, not part of `[limits]`.
    #[serde(skip)]
    pub memory: MemoryLimits,
}

impl Default for ServerLimits {
    fn default() -> Self {
        Self {
            max_frame_len: sealpost_protocol::Limits::DEFAULT_MAX_FRAME_LEN,
            max_batch_messages: 65_536,
            max_connections: 10_000,
            max_streams_per_connection: 256,
            max_streams_per_principal: 1024,
            max_streams: 65_536,
            idle_timeout: Duration::from_secs(30),
            shared_ack_wait: Duration::from_secs(60),
            subscriber_read_bytes: MIB,
            tail_cache_bytes: crate::writer::DEFAULT_TAIL_BYTES,
            max_connections_per_principal: 64,
            max_subscriptions_per_connection: 128,
            publish_msgs_per_sec: 0,
            publish_bytes_per_sec: 0,
            max_in_flight_per_stream: 1024,
            memory: MemoryLimits::default(),
        }
    }
}

/// Reads a duration written in milliseconds.
fn millis<'de, D: serde::Deserializer<'de>>(deserializer: D) -> core::result::Result<Duration, D::Error> {
    u64::deserialize(deserializer).map(Duration::from_millis)
}

impl ServerLimits {
    /// Room a publish frame needs around its batch: request id, variant tag and length varint.
    const FRAME_OVERHEAD: u32 = 64;
    /// Smallest accepted `max_frame_len`.
    const MIN_FRAME_LEN: u32 = 1024;

    /// The decoding limits these settings imply: a batch must fit in a frame with room for its envelope.
    pub fn protocol_limits(&self) -> sealpost_protocol::Limits {
        sealpost_protocol::Limits {
            max_frame_len: self.max_frame_len,
            max_batch_len: self.max_frame_len.saturating_sub(Self::FRAME_OVERHEAD),
            max_batch_messages: self.max_batch_messages,
            ..sealpost_protocol::Limits::default()
        }
    }

    /// Checks that the limits are usable, the memory budgets included (see [`MemoryLimits::validate`]).
    pub fn validate(&self) -> Result<()> {
        let fail = |msg: &str| Err(Error::Config(format!("[limits] {msg}")));
        if self.max_frame_len < Self::MIN_FRAME_LEN {
            return fail("max_frame_len must be at least 1024");
        }
        for (name, value) in [
            ("max_batch_messages", u64::from(self.max_batch_messages)),
            ("max_connections", u64::from(self.max_connections)),
            ("max_streams_per_connection", u64::from(self.max_streams_per_connection)),
            ("max_streams_per_principal", u64::from(self.max_streams_per_principal)),
            ("max_streams", u64::from(self.max_streams)),
            ("idle_timeout_ms", u64::try_from(self.idle_timeout.as_millis()).unwrap_or(u64::MAX)),
            ("subscriber_read_bytes", self.subscriber_read_bytes as u64),
            ("max_connections_per_principal", u64::from(self.max_connections_per_principal)),
            ("max_subscriptions_per_connection", u64::from(self.max_subscriptions_per_connection)),
        ] {
            if value == 0 {
                return fail(&format!("{name} must be at least 1"));
            }
        }
        self.memory.validate(self.max_frame_len, self.subscriber_read_bytes)
    }

    /// Checks that a storage engine whose own limit is `engine_max` bytes per sealed batch
    /// ([`Store::max_batch_len`](crate::store::Store::max_batch_len): JetStream's `max_payload`) can store
    /// every batch these limits let publishers send: the broker refuses to start otherwise, rather than
    /// refuse large batches only when they come.
    pub fn fit_engine(&self, engine_max: Option<usize>) -> Result<()> {
        let max_batch_len = usize::try_from(self.protocol_limits().max_batch_len).unwrap_or(usize::MAX);
        match engine_max {
            Some(engine_max) if engine_max < max_batch_len => Err(Error::Config(format!(
                "the storage engine stores sealed batches of at most {engine_max} bytes, but \
                 limits.max_frame_len lets publishers send {max_batch_len}: raise the JetStream servers' \
                 max_payload (8 MB covers the default) or lower limits.max_frame_len"
            ))),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_are_valid_and_imply_the_protocol_defaults() {
        let limits = ServerLimits::default();
        limits.validate().unwrap();
        assert_eq!(limits.protocol_limits(), sealpost_protocol::Limits::default());
    }

    #[test]
    fn an_engine_that_cannot_store_the_largest_batch_is_refused_with_what_to_change() {
        let limits = ServerLimits::default();
        let largest = limits.protocol_limits().max_batch_len as usize;
        // NATS's default max_payload (1 MiB) less the engine's header room, against 4 MiB frames.
        let e = limits.fit_engine(Some(1024 * 1024 - 512)).unwrap_err().to_string();
        assert!(e.contains("max_payload") && e.contains("limits.max_frame_len"), "{e}");
        limits.fit_engine(Some(largest)).unwrap();
        limits.fit_engine(None).unwrap();
        let small = ServerLimits { max_frame_len: 1024 * 1024 - 512, ..limits };
        small.fit_engine(Some(1024 * 1024 - 512)).unwrap();
    }

    #[test]
    fn a_table_reads_milliseconds_and_keeps_the_fields_the_file_cannot_set() {
        let limits: ServerLimits = toml::from_str("idle_timeout_ms = 1500\nmax_streams = 7\n").unwrap();
        assert_eq!(limits.idle_timeout, Duration::from_millis(1500));
        assert_eq!(limits.max_streams, 7);
        let defaults = ServerLimits::default();
        assert_eq!(limits.max_in_flight_per_stream, defaults.max_in_flight_per_stream);
        assert_eq!(limits.memory, defaults.memory);
        let empty: ServerLimits = toml::from_str("").unwrap();
        assert_eq!(empty, defaults);
        assert!(toml::from_str::<ServerLimits>("max_in_flight_per_stream = 1\n").is_err());
        assert!(toml::from_str::<ServerLimits>("memory = 1\n").is_err());
    }

    #[test]
    fn unusable_limits_are_named() {
        let zero = ServerLimits { idle_timeout: Duration::ZERO, ..ServerLimits::default() };
        assert!(zero.validate().unwrap_err().to_string().contains("idle_timeout_ms"));
        let small = ServerLimits { max_frame_len: 100, ..ServerLimits::default() };
        assert!(small.validate().unwrap_err().to_string().contains("max_frame_len"));
        let memory = MemoryLimits { frame_timeout_ms: 0, ..MemoryLimits::default() };
        let bad_memory = ServerLimits { memory, ..ServerLimits::default() };
        assert!(bad_memory.validate().unwrap_err().to_string().contains("[memory] frame_timeout_ms"));
    }
}
