//! What a peer can make the broker hold in memory, and the budgets that bound it.
//!
//! A connected peer can make the broker hold bytes in three places, and each has a bound here:
//!
//! 1. **Frames in flight**: a frame being received (the bytes that arrived of it), and a whole frame until
//!    its request is answered (a publish until its batch is durable), plus what a subscription has read
//!    from the store and not yet handed to QUIC. Each takes a [`Reservation`] of its size from three
//!    budgets first, in this order: its connection's, its principal's and the broker's
//!    (`inflight_bytes_per_connection`, `_per_principal`, `_total`). A frame reserves its claimed length as
//!    soon as its 4-byte prefix is in, **before** its body is read, while its buffer grows only with the
//!    bytes that arrive (see [`sealpost_protocol::FrameBuffer`]). A frame that cannot get its reservation
//!    waits, unread: QUIC flow control then stops the peer. From its first byte on, a frame must be
//!    complete (reservation wait included) within `frame_timeout_ms`, or its stream is stopped with
//!    `FRAME_TIMEOUT`, so a peer that sends half a frame and then only pings holds its bytes and its
//!    reservation for that long at most.
//! 2. **QUIC receive buffers**: bytes quinn received and the broker has not read yet, at most the
//!    connection's receive window. The principal's `receive_window_per_principal` is shared equally among
//!    its open connections ([`window_share`]), never more than `receive_window_per_connection` each and never
//!    less than [`MIN_WINDOW`].
//! 3. **QUIC send buffers**: bytes written to a connection and not yet acknowledged by the peer, at most its
//!    send window, shared the same way (`send_window_per_principal`, `send_window_per_connection`).
//! 4. **Open streams**: the broker's task and quinn's state of each open stream, about 6.5 KB (measured
//!    with 1,000 streams open, tests/system/memory.rs) whatever the stream carries. Besides QUIC's credit per
//!    connection (`limits.max_streams_per_connection`), a stream takes a slot of its principal's
//!    (`limits.max_streams_per_principal`) and of the broker's (`limits.max_streams`) when it is accepted;
//!    a stream without one is refused at once (reset with `LIMIT_EXCEEDED`).
//!
//! So one principal holds at most `inflight_bytes_per_principal + receive_window_per_principal +
//! send_window_per_principal + max_streams_per_principal x 6.5 KB` (when its connections times
//! [`MIN_WINDOW`] stay below the window budgets), and all peers together at most `inflight_bytes_total +
//! max_streams x 6.5 KB` plus, for each open connection, its two windows. docs/reliability.md gives the
//! figures for the defaults.
//!
//! Reservations are deadlock-free: a reservation is taken whole before the bytes it covers are read, and a
//! frame once reserved completes (or times out) without needing any other reservation.

use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::{Error, Result};

/// The smallest QUIC window a connection is given, however many connections its principal has.
pub const MIN_WINDOW: u64 = 64 * 1024;

const MIB: u64 = 1024 * 1024;

/// The `[memory]` table: budgets of what peers can make the broker hold. Every field has a default.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MemoryLimits {
    /// Once the length prefix of a frame has arrived and its reservation is granted, the whole frame must
    /// arrive within this many milliseconds, or the stream is stopped with `FRAME_TIMEOUT`. Default: 5000.
    /// At least 1. It must exceed `max_frame_len` divided by the slowest client's bandwidth.
    pub frame_timeout_ms: u64,
    /// Bytes of frames in flight (being received, or waiting for their answer) and of subscription reads
    /// one connection may hold. Default: 8 MiB (8388608). At least `max_frame_len + 4` and
    /// `subscriber_read_bytes`.
    pub inflight_bytes_per_connection: u64,
    /// The same over all connections of one principal. Default: 32 MiB (33554432). At least
    /// `inflight_bytes_per_connection`.
    pub inflight_bytes_per_principal: u64,
    /// The same over all peers. Default: 512 MiB (536870912). At least `inflight_bytes_per_principal`.
    pub inflight_bytes_total: u64,
    /// QUIC receive window of one stream: bytes of it quinn buffers before the broker reads them.
    /// Default: 1 MiB (1048576). At least 64 KiB.
    pub stream_receive_window: u64,
    /// Most a connection's QUIC receive window can be. Default: 2 MiB (2097152). At least 64 KiB.
    pub receive_window_per_connection: u64,
    /// QUIC receive window shared equally by the open connections of one principal. Default: 16 MiB
    /// (16777216).
    pub receive_window_per_principal: u64,
    /// Most a connection's QUIC send window (bytes written and not yet acknowledged) can be. Default:
    /// 2 MiB (2097152). At least 64 KiB.
    pub send_window_per_connection: u64,
    /// QUIC send window shared equally by the open connections of one principal. Default: 16 MiB
    /// (16777216).
    pub send_window_per_principal: u64,
}

impl Default for MemoryLimits {
    fn default() -> Self {
        Self {
            frame_timeout_ms: 5_000,
            inflight_bytes_per_connection: 8 * MIB,
            inflight_bytes_per_principal: 32 * MIB,
            inflight_bytes_total: 512 * MIB,
            stream_receive_window: MIB,
            receive_window_per_connection: 2 * MIB,
            receive_window_per_principal: 16 * MIB,
            send_window_per_connection: 2 * MIB,
            send_window_per_principal: 16 * MIB,
        }
    }
}

impl MemoryLimits {
    /// How long a reserved frame may take to arrive.
    pub fn frame_timeout(&self) -> Duration {
        Duration::from_millis(self.frame_timeout_ms)
    }

    /// Checks that the budgets are usable with frames of at most `max_frame_len` bytes and subscription
    /// reads of `subscriber_read_bytes`: every reservation the broker takes must fit in every budget, or it
    /// would wait forever.
    pub fn validate(&self, max_frame_len: u32, subscriber_read_bytes: usize) -> Result<()> {
        let fail = |msg: String| Err(Error::Config(format!("[memory] {msg}")));
        if self.frame_timeout_ms == 0 {
            return fail("frame_timeout_ms must be at least 1".into());
        }
        let largest = (u64::from(max_frame_len) + 4).max(subscriber_read_bytes as u64);
        if self.inflight_bytes_per_connection < largest {
            return fail(format!(
                "inflight_bytes_per_connection must be at least {largest} (max_frame_len + 4, and \
                 subscriber_read_bytes)"
            ));
        }
        if self.inflight_bytes_per_principal < self.inflight_bytes_per_connection {
            return fail(
                "inflight_bytes_per_principal must be at least inflight_bytes_per_connection".into(),
            );
        }
        if self.inflight_bytes_total < self.inflight_bytes_per_principal {
            return fail("inflight_bytes_total must be at least inflight_bytes_per_principal".into());
        }
        for (name, value) in [
            ("stream_receive_window", self.stream_receive_window),
            ("receive_window_per_connection", self.receive_window_per_connection),
            ("send_window_per_connection", self.send_window_per_connection),
        ] {
            if value < MIN_WINDOW {
                return fail(format!("{name} must be at least {MIN_WINDOW}"));
            }
        }
        // Semaphores count permits in a usize and acquire at most u32::MAX at a time.
        if self.inflight_bytes_total > u64::from(u32::MAX) * 16 {
            return fail("inflight_bytes_total is too large".into());
        }
        Ok(())
    }

    /// The QUIC receive and send windows each connection of a principal with `connections` open connections
    /// gets.
    pub fn windows(&self, connections: usize) -> (u64, u64) {
        (
            window_share(self.receive_window_per_connection, self.receive_window_per_principal, connections),
            window_share(self.send_window_per_connection, self.send_window_per_principal, connections),
        )
    }
}

/// The window each of a principal's `connections` gets: an equal share of `per_principal`, at most
/// `per_connection`, at least [`MIN_WINDOW`] (or `per_connection` if that is smaller).
pub fn window_share(per_connection: u64, per_principal: u64, connections: usize) -> u64 {
    let share = per_principal / (connections.max(1) as u64);
    share.max(MIN_WINDOW).min(per_connection)
}

fn semaphore(bytes: u64) -> Arc<Semaphore> {
    Arc::new(Semaphore::new(usize::try_from(bytes).unwrap_or(Semaphore::MAX_PERMITS)))
}

/// An amount (bytes, or streams) shared by holders that reserve from it: a connection's, a principal's or
/// the broker's.
#[derive(Clone, Debug)]
pub struct Pool(Arc<Semaphore>);

impl Pool {
    /// A pool of `amount`.
    pub fn new(amount: u64) -> Pool {
        Pool(semaphore(amount))
    }

    /// What is not reserved now.
    pub fn available(&self) -> usize {
        self.0.available_permits()
    }
}

/// The pools a reservation is taken from, all of them, always in the same order (a connection's, then its
/// principal's, then the broker's), so two reservations never wait on each other in a cycle.
#[derive(Clone, Debug)]
pub struct Budget {
    pools: Vec<Pool>,
}

impl Budget {
    /// A budget over `pools`, innermost first.
    pub fn new(pools: Vec<Pool>) -> Budget {
        Budget { pools }
    }

    /// Reserves `amount` from every pool if they all have room now, without waiting.
    pub fn try_reserve(&self, amount: usize) -> Option<Reservation> {
        let n = u32::try_from(amount).ok()?;
        let permits = self
            .pools
            .iter()
            .map(|pool| pool.0.clone().try_acquire_many_owned(n).ok())
            .collect::<Option<_>>()?;
        Some(Reservation { permits, amount: n as usize })
    }

    /// Waits until `amount` can be reserved from every pool, and reserves it. Cancel-safe: a cancelled wait
    /// reserves nothing.
    pub async fn reserve(&self, amount: usize) -> Reservation {
        let n = u32::try_from(amount).unwrap_or(u32::MAX);
        let mut permits = Vec::with_capacity(self.pools.len());
        for pool in &self.pools {
            // The pools are never closed, so acquiring fails only if they were: hold nothing then.
            if let Ok(permit) = pool.0.clone().acquire_many_owned(n).await {
                permits.push(permit);
            }
        }
        Reservation { permits, amount: n as usize }
    }
}

/// An amount reserved from a [`Budget`], given back when dropped.
#[derive(Debug)]
pub struct Reservation {
    permits: Vec<OwnedSemaphorePermit>,
    amount: usize,
}

impl Reservation {
    /// The amount reserved.
    pub fn bytes(&self) -> usize {
        self.amount
    }

    /// Adds `other` (taken from the same budget) to this reservation.
    pub fn merge(&mut self, other: Reservation) {
        let mut others = other.permits.into_iter();
        for (mine, theirs) in self.permits.iter_mut().zip(others.by_ref()) {
            mine.merge(theirs);
        }
        self.permits.extend(others);
        self.amount += other.amount;
    }

    /// Gives back all but `bytes` of the reservation (nothing if it holds `bytes` or less).
    pub fn shrink_to(&mut self, bytes: usize) {
        if bytes >= self.amount {
            return;
        }
        let excess = self.amount - bytes;
        for permit in &mut self.permits {
            drop(permit.split(excess));
        }
        self.amount = bytes;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_principals_window_is_shared_within_bounds() {
        let (per_connection, per_principal) = (4 * MIB, 32 * MIB);
        assert_eq!(window_share(per_connection, per_principal, 0), 4 * MIB);
        assert_eq!(window_share(per_connection, per_principal, 1), 4 * MIB);
        assert_eq!(window_share(per_connection, per_principal, 8), 4 * MIB);
        assert_eq!(window_share(per_connection, per_principal, 16), 2 * MIB);
        assert_eq!(window_share(per_connection, per_principal, 64), 512 * 1024);
        assert_eq!(window_share(per_connection, per_principal, 10_000), MIN_WINDOW);
        assert_eq!(window_share(32 * 1024, per_principal, 1), 32 * 1024);
    }

    #[test]
    fn the_defaults_are_valid_and_bad_budgets_are_named() {
        let limits = MemoryLimits::default();
        limits.validate(sealpost_protocol::Limits::DEFAULT_MAX_FRAME_LEN, 1024 * 1024).unwrap();
        let small = MemoryLimits { inflight_bytes_per_connection: 4 * MIB, ..limits };
        let err = small.validate(4 * 1024 * 1024, 1024).unwrap_err().to_string();
        assert!(err.contains("inflight_bytes_per_connection"), "{err}");
        let inverted = MemoryLimits { inflight_bytes_total: 16 * MIB, ..limits };
        assert!(inverted.validate(1024, 1024).unwrap_err().to_string().contains("inflight_bytes_total"));
        let tiny = MemoryLimits { send_window_per_connection: 1024, ..limits };
        assert!(tiny.validate(1024, 1024).unwrap_err().to_string().contains("send_window_per_connection"));
        let instant = MemoryLimits { frame_timeout_ms: 0, ..limits };
        assert!(instant.validate(1024, 1024).unwrap_err().to_string().contains("frame_timeout_ms"));
    }

    #[tokio::test]
    async fn a_reservation_waits_for_every_pool_and_gives_back_what_it_shrinks() {
        let (principal, total) = (Pool::new(100), Pool::new(1000));
        let a = Budget::new(vec![Pool::new(80), principal.clone(), total.clone()]);
        let b = Budget::new(vec![Pool::new(80), principal.clone(), total.clone()]);
        let mut first = a.reserve(70).await;
        assert_eq!((principal.available(), total.available()), (30, 930));
        // b's own pool has room, its principal's has not: b waits.
        let mut waiting = Box::pin(b.reserve(50));
        assert!(futures_poll_once(&mut waiting).await.is_none());
        // Giving 30 back makes room: the waiting reservation takes it at once.
        first.shrink_to(40);
        let second = waiting.await;
        assert_eq!((second.bytes(), principal.available(), total.available()), (50, 10, 910));
        // Without room, a reservation that may not wait gets nothing, and takes nothing.
        assert!(a.try_reserve(20).is_none());
        assert_eq!((principal.available(), total.available()), (10, 910));
        let third = a.try_reserve(10).unwrap();
        assert_eq!((principal.available(), total.available()), (0, 900));
        drop((first, second, third));
        assert_eq!((principal.available(), total.available()), (100, 1000));
    }

    /// Polls a future once: `Some` if it completed.
    async fn futures_poll_once<F: std::future::Future + Unpin>(f: &mut F) -> Option<F::Output> {
        std::future::poll_fn(|cx| match std::pin::Pin::new(&mut *f).poll(cx) {
            std::task::Poll::Ready(v) => std::task::Poll::Ready(Some(v)),
            std::task::Poll::Pending => std::task::Poll::Ready(None),
        })
        .await
    }
}
