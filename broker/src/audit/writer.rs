//! The background writer: the one thread that owns the audit files.
//!
//! It drains the bounded queue [`AuditLog::record`](super::AuditLog::record) sends to, gives each entry its
//! place in the [`Chain`], and appends its line to the current file through a buffer. At each checkpoint
//! it writes the signed checkpoint, flushes the buffer and `fdatasync`s the file: **an entry is durable once
//! a checkpoint after it is**, and not before (a kill loses what was queued or buffered since; the file then
//! ends without a final checkpoint, perhaps with a torn last line, which the verifier reports).
//!
//! Files are `audit-000001.jsonl`, `audit-000002.jsonl`, ... A file is rotated when it has reached
//! `max_file_bytes` and another line comes: a checkpoint ends it, and the next file continues the chain
//! (its first line is the next entry, or the next checkpoint). A file can therefore exceed
//! `max_file_bytes` by at most one line and the checkpoint that ends it. Every run begins a new file: existing files are never edited, appended to or truncated.
//!
//! On opening, the writer reads the newest files back through the verifier (from the newest file that
//! holds a checkpoint) and continues from the last intact entry and the last checkpoint. If that tail is
//! closed (a final checkpoint) the run begins with a `start` entry; if not (the broker was killed or
//! crashed) with a `restart` entry whose `count` is the length of the torn line the last run left, if
//! any; the torn bytes stay where they are and the verifier accepts them only because that signed-for
//! `restart` entry accounts for them. A tail that does not verify (an edited line, a bad signature) stops
//! the writer from opening: the log must be looked at (`sealpost-broker audit verify`) and the damaged
//! files moved away first.

use std::fs::File;
use std::io::{BufWriter, Write as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::Duration;

use super::chain::{Chain, CheckpointPolicy, Resume};
use super::entry::{Action, Entry};
use super::key::AuditKey;
use super::verify::{read_tail, Tail};
use super::{file_name, list_files, Clock, Shared};
use crate::config::AuditConfig;
use crate::{Error, Result};

/// Bytes buffered between flushes (a checkpoint flushes whatever is buffered).
const BUFFER_BYTES: usize = 64 * 1024;
/// The longest the thread sleeps without looking at the clock (the clock may be a test's).
const MAX_WAIT: Duration = Duration::from_secs(1);

/// What the queue carries.
pub(crate) enum Msg {
    /// An entry to write.
    Entry(Entry),
    /// Write a checkpoint now and say when it is durable.
    Checkpoint(std::sync::mpsc::Sender<Result<()>>),
    /// Write the final checkpoint and stop.
    Close,
    /// Stop at once, dropping whatever is buffered: what a kill does (tests only).
    #[cfg(test)]
    Abort,
}

/// The writer's state: the chain and the open file.
pub(crate) struct Writer {
    dir: PathBuf,
    key: AuditKey,
    clock: Box<dyn Clock>,
    chain: Chain,
    max_file_bytes: u64,
    file_number: u64,
    out: BufWriter<File>,
    file_bytes: u64,
    line: String,
}

impl Writer {
    /// Opens the log in `config.dir` (created, mode 0700, if missing), continues its chain in a new file,
    /// and writes and syncs the run's first entry.
    pub(crate) fn open(config: &AuditConfig, key: AuditKey, clock: Box<dyn Clock>) -> Result<Writer> {
        use std::os::unix::fs::DirBuilderExt as _;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&config.dir)
            .map_err(|e| Error::Audit(format!("cannot create {}: {e}", config.dir.display())))?;
        let files = list_files(&config.dir)?;
        let (resume, first) = recover(&key, &files)?;
        let now = clock.now_millis();
        let policy = CheckpointPolicy {
            every_entries: config.checkpoint_entries,
            every_millis: config.checkpoint_seconds.saturating_mul(1000),
        };
        let file_number = files.last().map_or(1, |(n, _)| n + 1);
        let out = create(&config.dir, file_number)?;
        let mut w = Writer {
            dir: config.dir.clone(),
            key,
            clock,
            chain: Chain::new(policy, resume, now),
            max_file_bytes: config.max_file_bytes,
            file_number,
            out,
            file_bytes: 0,
            line: String::with_capacity(1024),
        };
        w.write_entry(first)?;
        w.sync()?;
        Ok(w)
    }

    /// The thread's loop, until [`Msg::Close`] or every sender is gone (both write the final checkpoint).
    pub(crate) fn run(mut self, rx: Receiver<Msg>, shared: &Shared) -> Result<()> {
        loop {
            let wait = self.chain.heartbeat_at().saturating_sub(self.clock.now_millis());
            let msg = rx.recv_timeout(Duration::from_millis(wait).min(MAX_WAIT));
            self.write_dropped(shared)?;
            match msg {
                Ok(Msg::Entry(entry)) => self.write_entry(entry)?,
                Ok(Msg::Checkpoint(done)) => {
                    let result = self.checkpoint_or_rotate();
                    let failed = result.is_err();
                    let _ = done.send(result);
                    if failed {
                        return Err(Error::Audit("a checkpoint failed; the audit writer stopped".into()));
                    }
                }
                Ok(Msg::Close) | Err(RecvTimeoutError::Disconnected) => {
                    self.write_dropped(shared)?;
                    return self.checkpoint(true);
                }
                #[cfg(test)]
                Ok(Msg::Abort) => {
                    let (_file, _lost) = self.out.into_parts();
                    return Ok(());
                }
                Err(RecvTimeoutError::Timeout) => {}
            }
            if self.chain.checkpoint_due(self.clock.now_millis()) {
                self.checkpoint_or_rotate()?;
            }
        }
    }

    /// Writes a `dropped` entry if entries were dropped since the last one.
    fn write_dropped(&mut self, shared: &Shared) -> Result<()> {
        let n = shared.pending_dropped.swap(0, Ordering::Relaxed);
        if n > 0 {
            self.write_entry(Entry::new(Action::Dropped).reason("queue_full").count(n))?;
        }
        Ok(())
    }

    fn write_entry(&mut self, entry: Entry) -> Result<()> {
        if self.file_bytes >= self.max_file_bytes {
            self.rotate()?;
        }
        let record = self.chain.seal(entry, self.clock.now_millis());
        self.line.clear();
        record.render(&mut self.line);
        self.out.write_all(self.line.as_bytes())?;
        self.file_bytes += self.line.len() as u64;
        Ok(())
    }

    /// A checkpoint that is not the final one: in a full file, the one that ends it (the next line goes to
    /// the next file).
    fn checkpoint_or_rotate(&mut self) -> Result<()> {
        if self.file_bytes >= self.max_file_bytes {
            self.rotate()
        } else {
            self.checkpoint(false)
        }
    }

    /// Writes a checkpoint, flushes and syncs.
    fn checkpoint(&mut self, last: bool) -> Result<()> {
        let c = self.chain.checkpoint(&self.key, self.clock.now_millis(), last);
        self.line.clear();
        c.render(&mut self.line);
        self.out.write_all(self.line.as_bytes())?;
        self.file_bytes += self.line.len() as u64;
        self.sync()
    }

    fn sync(&mut self) -> Result<()> {
        self.out.flush()?;
        self.out.get_ref().sync_data()?;
        Ok(())
    }

    /// Ends the current file with a checkpoint and opens the next.
    fn rotate(&mut self) -> Result<()> {
        self.checkpoint(false)?;
        self.file_number += 1;
        self.out = create(&self.dir, self.file_number)?;
        self.file_bytes = 0;
        Ok(())
    }
}

/// Creates file `number` (it must not exist) and syncs the folder so that its name is durable.
fn create(dir: &Path, number: u64) -> Result<BufWriter<File>> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let path = dir.join(file_name(number));
    let file = std::fs::OpenOptions::new()
        .append(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .map_err(|e| Error::Audit(format!("cannot create {}: {e}", path.display())))?;
    File::open(dir)?.sync_all()?;
    Ok(BufWriter::with_capacity(BUFFER_BYTES, file))
}

/// Where the log left off, and the run's first entry.
fn recover(key: &AuditKey, files: &[(u64, PathBuf)]) -> Result<(Resume, Entry)> {
    let public = key.public_key();
    let mut newest: Vec<(PathBuf, Vec<u8>)> = Vec::new();
    let mut tail = Tail::default();
    for (_, path) in files.iter().rev() {
        let bytes =
            std::fs::read(path).map_err(|e| Error::Audit(format!("cannot read {}: {e}", path.display())))?;
        let has_checkpoint = bytes.windows(14).any(|w| w == b"{\"checkpoint\":");
        newest.insert(0, (path.clone(), bytes));
        if has_checkpoint || newest.len() == files.len() {
            tail = read_tail(&public, &newest).map_err(|f| {
                Error::Audit(format!(
                    "the newest audit files do not verify: {f}; check them with `sealpost-broker audit verify` \
                     and move the damaged files away"
                ))
            })?;
            if tail.last_checkpoint.is_some() || newest.len() == files.len() {
                break;
            }
        }
    }
    let resume = Resume {
        last_entry: tail.last_entry,
        last_checkpoint: tail.last_checkpoint.as_ref().map(|c| (c.number, c.hash)),
    };
    let first = if tail.closed || tail.last_entry.is_none() {
        Entry::new(Action::Start)
    } else {
        Entry::new(Action::Restart).reason("not_closed").count(tail.torn.unwrap_or(0))
    };
    Ok((resume, first))
}

#[cfg(test)]
mod tests;
