//! The tamper-evident audit log: one JSON line per decision the broker makes about a peer, hash-chained,
//! with checkpoints signed by a key of its own.
//!
//! # What it guarantees
//!
//! - **Recording never blocks the caller.** [`AuditLog::record`] is a `try_send` of the entry (built by
//!   the caller, see [`Entry`]) into a bounded queue: no other allocation, no lock held while the writer
//!   does I/O. A dedicated thread ([`writer`]) writes the files.
//! - **Nothing is dropped silently.** When the queue is full the entry is counted, and as soon as the
//!   writer gets to it, a `dropped` entry with that count is written in the chain.
//! - **Every entry is chained.** Each entry's `hash` covers its fields and the `hash` of the entry before
//!   it (`prev`), across files and across runs, so editing, deleting, inserting or reordering an entry
//!   breaks the chain at that entry (see [`entry`] and [`digest`] for the exact bytes hashed).
//! - **Checkpoints are signed.** Every `checkpoint_entries` entries, every `checkpoint_seconds` even when
//!   idle (a heartbeat), when a file is rotated and at a clean close (the `final` one), the writer signs a
//!   [`Checkpoint`] with the audit key ([`AuditKey`]; not the TLS key, not the topic authority's) covering
//!   the last entry, the checkpoint before it and the time. A chain alone cannot show that its newest
//!   entries were cut off; a signed checkpoint can: the verifier requires the log to end with a final
//!   checkpoint, and says when it does not ("not closed: truncated, or the broker was killed or is still
//!   running, after <time of the last checkpoint>").
//! - **Durability at checkpoints.** Each checkpoint flushes the buffer and `fdatasync`s the file.
//!
//! # What it does not guarantee
//!
//! - **Entries since the last checkpoint are lost on a kill.** Those still queued or buffered when the
//!   process dies are gone, and the last file ends without a final checkpoint (maybe with a torn line).
//!   The verifier reports that; the next run writes a `restart` entry that says so and continues the
//!   chain from the last intact entry.
//! - **Nothing against a holder of the audit key.** Whoever can read the key (on the broker's host: root,
//!   the broker's user) can rewrite the log and re-sign every checkpoint. The log is evidence against
//!   tampering by someone without the key: ship the files (or at least each checkpoint line) off the host
//!   as they are written, or keep the key in an HSM, and the copy elsewhere bounds what a later intruder
//!   can change.
//! - **Deleting whole runs at the end.** Cutting the log back to an earlier clean close (deleting every
//!   file after it) leaves a valid, shorter log; only a copy of a later checkpoint kept elsewhere shows it.
//! - **Confidentiality.** Entries are plain text: principals, addresses, topics (never payloads or keys).
//!
//! # Files
//!
//! `dir/audit-000001.jsonl`, `audit-000002.jsonl`, ...: see [`writer`] for rotation and restart, and
//! docs/operations.md ("Audit log") for the formats and the `sealpost-broker audit` commands.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use crate::config::AuditConfig;
use crate::{Error, Result};

pub mod chain;
pub mod checkpoint;
pub mod digest;
pub mod entry;
pub mod key;
pub mod observer;
pub mod rfc3339;
#[cfg(test)]
mod testing;
pub mod verify;
pub mod writer;

pub use checkpoint::Checkpoint;
pub use digest::Digest;
pub use entry::{Action, Decision, Entry, Record};
pub use key::{AuditKey, AuditPublicKey};
pub use observer::AuditObserver;
pub use verify::{verify_dir, verify_files, Finding, Report};

use writer::{Msg, Writer};

/// Where the writer gets the time, in milliseconds since the Unix epoch. Tests pass their own.
pub trait Clock: Send + 'static {
    /// Now.
    fn now_millis(&self) -> u64;
}

/// The system's wall clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_millis(&self) -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }
}

/// The name of file `number`: `audit-000001.jsonl`.
pub fn file_name(number: u64) -> String {
    format!("audit-{number:06}.jsonl")
}

/// The audit files in `dir`, by number. Other files are ignored.
pub fn list_files(dir: &Path) -> Result<Vec<(u64, PathBuf)>> {
    let read =
        std::fs::read_dir(dir).map_err(|e| Error::Audit(format!("cannot read {}: {e}", dir.display())))?;
    let mut files = Vec::new();
    for item in read {
        let item = item?;
        let name = item.file_name();
        let Some(name) = name.to_str() else { continue };
        let number = name.strip_prefix("audit-").and_then(|s| s.strip_suffix(".jsonl"));
        if let Some(n) = number.filter(|n| n.len() >= 6 && n.bytes().all(|b| b.is_ascii_digit())) {
            if let Ok(n) = n.parse::<u64>() {
                files.push((n, item.path()));
            }
        }
    }
    files.sort();
    Ok(files)
}

/// What the handles share with the writer thread.
pub(crate) struct Shared {
    /// Entries dropped since the writer last wrote a `dropped` entry.
    pending_dropped: AtomicU64,
    /// Entries dropped since the log was opened.
    total_dropped: AtomicU64,
    thread: Mutex<Option<JoinHandle<Result<()>>>>,
}

/// A handle on the audit log: cheap to clone, shared by every connection.
///
/// Dropping every handle without [`close`](Self::close) makes the writer write the final checkpoint and
/// stop, but nothing waits for it: call `close` at shutdown.
#[derive(Clone)]
pub struct AuditLog {
    tx: SyncSender<Msg>,
    shared: Arc<Shared>,
}

impl core::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("AuditLog").field("dropped", &self.dropped()).finish_non_exhaustive()
    }
}

impl AuditLog {
    /// Opens the log that `config` describes, with the key in `config.key` and the system clock.
    pub fn open(config: &AuditConfig) -> Result<AuditLog> {
        AuditLog::open_with(config, AuditKey::load(&config.key)?, SystemClock)
    }

    /// Opens the log in `config.dir` (`config.key` is not read) with `key` and `clock`: reads back the
    /// newest files, starts a new one that continues the chain, and starts the writer thread.
    pub fn open_with(config: &AuditConfig, key: AuditKey, clock: impl Clock) -> Result<AuditLog> {
        config.validate()?;
        let writer = Writer::open(config, key, Box::new(clock))?;
        let (tx, rx) = std::sync::mpsc::sync_channel(config.queue);
        let shared = Arc::new(Shared {
            pending_dropped: AtomicU64::new(0),
            total_dropped: AtomicU64::new(0),
            thread: Mutex::new(None),
        });
        let for_thread = Arc::clone(&shared);
        let thread = std::thread::Builder::new().name("sealpost-audit".into()).spawn(move || {
            let result = writer.run(rx, &for_thread);
            if let Err(e) = &result {
                tracing::error!("audit log writer stopped: {e}");
            }
            result
        })?;
        if let Ok(mut slot) = shared.thread.lock() {
            *slot = Some(thread);
        }
        Ok(AuditLog { tx, shared })
    }

    /// Queues `entry` without waiting. If the queue is full (or the writer has stopped) the entry is
    /// counted instead, and the writer records how many were dropped as soon as it can.
    pub fn record(&self, entry: Entry) {
        match self.tx.try_send(Msg::Entry(entry)) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.shared.pending_dropped.fetch_add(1, Ordering::Relaxed);
                self.shared.total_dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Entries dropped since the log was opened because the queue was full or the writer had stopped.
    pub fn dropped(&self) -> u64 {
        self.shared.total_dropped.load(Ordering::Relaxed)
    }

    /// Writes a checkpoint after every entry queued so far and waits until it is synced to disk.
    pub fn checkpoint(&self) -> Result<()> {
        let (done, wait) = std::sync::mpsc::channel();
        self.tx
            .send(Msg::Checkpoint(done))
            .map_err(|_| Error::Audit("the audit writer has stopped".into()))?;
        wait.recv().map_err(|_| Error::Audit("the audit writer has stopped".into()))?
    }

    /// Writes every entry queued so far, then the final checkpoint; waits for the writer to stop. Entries
    /// recorded after this are counted as dropped. Closing twice is harmless.
    pub fn close(&self) -> Result<()> {
        let _ = self.tx.send(Msg::Close);
        self.join()
    }

    fn join(&self) -> Result<()> {
        let thread = self.shared.thread.lock().ok().and_then(|mut slot| slot.take());
        match thread {
            None => Ok(()),
            Some(t) => t.join().map_err(|_| Error::Audit("the audit writer panicked".into()))?,
        }
    }

    /// Stops the writer as a kill would: what is queued or buffered is lost, no final checkpoint.
    #[cfg(test)]
    pub(crate) fn abort(&self) {
        let _ = self.tx.send(Msg::Abort);
        let _ = self.join();
    }
}
