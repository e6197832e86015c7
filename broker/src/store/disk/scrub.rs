//! The background scrub of a running broker ([`spawn`]): it reads, in a thread of its own, every stored
//! batch that a sync covers, topic by topic, at `storage.scrub_bytes_per_sec`, and starts over at least a
//! minute after it finished.
//!
//! A batch whose record is not intact is reported as an error (once per run) and marked lost at the next
//! sync, exactly as a subscriber's read would find it; readers serve the loss from then on. It checks
//! batches only: policies and durable offsets are also in the index, and [`verify`](super::verify) checks
//! their records. The thread holds the store only while it checks one batch, and ends with the store.

use std::sync::Weak;
use std::time::{Duration, Instant};

use sealpost_protocol::{Offset, Topic};

use super::index;
use super::segment;
use super::DiskStore;
use crate::Result;

/// Starts the background scrub of `store`, reading at most `bytes_per_sec` (see the module
/// documentation). The thread ends when the store is dropped.
pub(crate) fn spawn(store: Weak<DiskStore>, bytes_per_sec: u64) -> Result<()> {
    std::thread::Builder::new().name("sealpost-scrub".into()).spawn(move || {
        tracing::info!(bytes_per_sec, "background scrub started");
        let mut passes = 0u64;
        loop {
            let started = Instant::now();
            let Some(pass) = scrub_pass(&store, bytes_per_sec) else { return };
            passes += 1;
            tracing::info!(
                pass = passes,
                batches = pass.batches,
                bytes = pass.bytes,
                damaged = pass.damaged,
                seconds = started.elapsed().as_secs(),
                "scrub pass done"
            );
            if !pause(&store, Duration::from_secs(60).saturating_sub(started.elapsed())) {
                return;
            }
        }
    })?;
    Ok(())
}

/// What one pass checked.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Pass {
    pub batches: u64,
    pub bytes: u64,
    pub damaged: u64,
}

/// Sleeps `total`, in short steps, while the store lives; false once it is gone.
fn pause(store: &Weak<DiskStore>, total: Duration) -> bool {
    let until = Instant::now() + total;
    loop {
        if store.strong_count() == 0 {
            return false;
        }
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return true;
        }
        std::thread::sleep(left.min(Duration::from_millis(200)));
    }
}

/// One pass over every synced batch; `None` once the store is gone.
pub(super) fn scrub_pass(weak: &Weak<DiskStore>, bytes_per_sec: u64) -> Option<Pass> {
    let mut pass = Pass::default();
    let started = Instant::now();
    let topics: Vec<Topic> = weak.upgrade()?.topics().ok()?;
    for topic in topics {
        let mut from = Offset::ZERO;
        loop {
            let (entries, next) = {
                let store = weak.upgrade()?;
                match index::batch_entries(store.db(), &topic, from, 256) {
                    Ok(found) => found,
                    Err(e) => {
                        tracing::warn!(%topic, error = %e, "the scrub could not read the index");
                        break;
                    }
                }
            };
            let mut unsynced = false;
            for entry in &entries {
                let store = weak.upgrade()?;
                if !entry.location.durable_by(store.segments().last_synced()) {
                    // This one and every later one of the topic are not synced yet: next pass.
                    unsynced = true;
                    break;
                }
                match store.segments().check(&entry.location) {
                    Ok(segment::Check::Intact(body)) if entry.matches(&topic, &body) => {}
                    // Retired meanwhile, and its segment deleted: not damage.
                    Ok(_) if store.is_retired(&topic, entry.offset).unwrap_or(false) => {}
                    Ok(check) => {
                        store.damaged(&topic, entry, &check, "found by the scrub");
                        pass.damaged += 1;
                    }
                    Err(e) => {
                        tracing::warn!(%topic, offset = %entry.offset, error = %e, "the scrub could not read a record")
                    }
                }
                drop(store);
                pass.batches += 1;
                pass.bytes += u64::from(entry.location.len);
                // Pace: the bytes read so far may take this long.
                let due = Duration::from_secs_f64(pass.bytes as f64 / bytes_per_sec.max(1) as f64);
                if !pause(weak, due.saturating_sub(started.elapsed())) {
                    return None;
                }
            }
            match next {
                Some(next) if !unsynced => from = next,
                _ => break,
            }
        }
    }
    Some(pass)
}
