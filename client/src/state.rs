//! The client's **persisted state**: what a client must remember across processes so that a broker cannot
//! undo what this identity has already seen. Today: the newest verified policy of each topic it used, which
//! seeds the topic's `PolicyBook` in the next process, so that a broker serving an older policy after a
//! restart is a [`PolicyRollback`](sealpost_protocol::Error::PolicyRollback) as it is within one process;
//! and the last acknowledged head of each publisher chain, which a publisher of the next process continues
//! (`publish/chain_state.rs`), so that a broker that dropped an acknowledged tail is an
//! [`Error::RolledBack`]; and the chain heads each durable subscription had verified up to the offset it
//! acknowledged, which seed its verifier when it resumes (`subscribe/durable_state.rs`), so that batches
//! the broker skipped or deleted before the offset it resumes from are reported.
//!
//! # Where it lives
//!
//! A **state folder** ([`StateFolder`]): by default `<identity file stem>.state/` beside the identity file
//! (`alice.toml` -> `alice.state/`), or the folder named by `state = "path"` in the identity file
//! (relative to the identity file's folder), or the one given in
//! [`ClientOptions::state`](crate::ClientOptions::state), which can also turn it off
//! ([`StateLocation::Off`]: what is then not detected is in docs/threat-model.md). It holds one file per
//! record, named by what it is about (`policy-<hex of the topic>`, `chain-<hex of the topic>-<hex of the
//! chain id>`, `durable-<hex of the topic>-<hex of the name>`), each with a `.lock` file beside it.
//!
//! # What it guarantees
//!
//! - **Crash-safe writes.** A record is replaced whole or not at all: written to `<name>.tmp`, fsynced,
//!   renamed over `<name>`, then the folder fsynced. A crash leaves the old record or the new one (and maybe
//!   a stale `.tmp`, overwritten by the next write).
//! - **Checked reads.** Each file is `"SPST" | version u8 | len u32 | body | checksum [32]` (BLAKE3 of all
//!   that precedes it, under its own context). A file cut short is [`StateFault::Torn`], one whose checksum,
//!   magic, version or length does not match is [`StateFault::Corrupt`]: both are an [`Error::State`]
//!   naming the file, never silently ignored (a broker could otherwise profit from a damaged file).
//! - **One writer at a time.** Read-modify-write of a record holds an exclusive lock on its `.lock` file
//!   (`flock(2)`: it holds between processes too, and ends with the process that held it), so two clients of one identity merging what
//!   they saw never lose the newer of the two.
//!
//! # What it does not do
//!
//! It does not protect the state against someone who can write the folder: that person can also read the
//! identity's secret keys beside it, so the checksum detects damage, not forgery. It is not shared between
//! machines: two hosts with copies of one identity each keep their own.

use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Read, Write};
use std::path::{Path, PathBuf};

use rustix::fs::{flock, FlockOperation};

use crate::error::{Error, Result};

/// Where a client keeps its persisted state ([`ClientOptions::state`](crate::ClientOptions::state)).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum StateLocation {
    /// The identity's: the folder named by `state = "path"` in the identity file, else
    /// `<identity file stem>.state/` beside it. The default.
    #[default]
    Identity,
    /// This folder (created if missing).
    Folder(PathBuf),
    /// None: the client keeps what it has seen in memory only, as clients before state folders did. A
    /// broker's rollback across processes is then not detected (docs/threat-model.md).
    Off,
}

/// What is wrong with a state file ([`Error::State`]).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum StateFault {
    /// The file ends before the length its header states (or before its header): a write that never
    /// completed, or a file cut short.
    Torn,
    /// The file's magic, version, length or checksum does not match, or its body does not decode.
    Corrupt,
    /// Another live process (or client) holds this record's lock.
    Locked,
}

impl std::fmt::Display for StateFault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            StateFault::Torn => "torn (cut short)",
            StateFault::Corrupt => "corrupt (checksum, magic, version or content does not match)",
            StateFault::Locked => "locked by another live process",
        })
    }
}

const MAGIC: &[u8; 4] = b"SPST";
const VERSION: u8 = 1;
const HEADER: usize = 4 + 1 + 4;
const CHECKSUM: usize = 32;
const CONTEXT: &str = "sealpost 2026-12-04 client state file v1";
/// The longest body a state file may hold: a policy is at most 2 MiB (half the default frame limit).
const MAX_BODY: usize = 4 << 20;

/// The bytes of a state file holding `body`.
fn encode(body: &[u8]) -> Result<Vec<u8>> {
    let len = u32::try_from(body.len())
        .ok()
        .filter(|&len| len as usize <= MAX_BODY)
        .ok_or_else(|| Error::io("a state record is too large", ErrorKind::InvalidInput.into()))?;
    let mut out = Vec::with_capacity(HEADER + body.len() + CHECKSUM);
    out.extend_from_slice(MAGIC);
    out.push(VERSION);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(body);
    let sum = blake3::derive_key(CONTEXT, &out);
    out.extend_from_slice(&sum);
    Ok(out)
}

/// The body of a state file's `bytes`, checked.
fn decode(bytes: &[u8]) -> std::result::Result<&[u8], StateFault> {
    if bytes.len() < HEADER {
        return Err(if MAGIC.starts_with(&bytes[..bytes.len().min(4)]) {
            StateFault::Torn
        } else {
            StateFault::Corrupt
        });
    }
    let (header, rest) = bytes.split_at(HEADER);
    if &header[..4] != MAGIC || header[4] != VERSION {
        return Err(StateFault::Corrupt);
    }
    let mut len = [0u8; 4];
    len.copy_from_slice(&header[5..9]);
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_BODY {
        return Err(StateFault::Corrupt);
    }
    let Some(expected) = len.checked_add(CHECKSUM) else {
        return Err(StateFault::Corrupt);
    };
    if rest.len() < expected {
        return Err(StateFault::Torn);
    }
    if rest.len() > expected {
        return Err(StateFault::Corrupt);
    }
    let (body, sum) = rest.split_at(len);
    let signed = &bytes[..HEADER + len];
    if blake3::derive_key(CONTEXT, signed) != sum {
        return Err(StateFault::Corrupt);
    }
    Ok(body)
}

/// A state folder: records written crash-safely and read checked (see the module docs).
#[derive(Clone, Debug)]
pub struct StateFolder {
    dir: PathBuf,
}

/// An exclusive hold on one record of a [`StateFolder`], released when dropped (or when the process ends).
#[derive(Debug)]
pub struct RecordLock {
    _file: File,
}

impl StateFolder {
    /// Opens the state folder at `dir`, creating it (owner-only on Unix) if it is missing.
    pub fn open(dir: impl Into<PathBuf>) -> Result<StateFolder> {
        let dir = dir.into();
        if !dir.is_dir() {
            let mut builder = std::fs::DirBuilder::new();
            builder.recursive(true);
            #[cfg(unix)]
            std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
            builder
                .create(&dir)
                .map_err(|e| Error::io(format!("cannot create the state folder {}", dir.display()), e))?;
            if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
                sync_dir(parent)?;
            }
        }
        Ok(StateFolder { dir })
    }

    /// The folder.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    fn file(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// The body of record `name`, checked; `None` if there is none. A torn or corrupt file is an
    /// [`Error::State`] naming it.
    pub fn read(&self, name: &str) -> Result<Option<Vec<u8>>> {
        let path = self.file(name);
        let mut file = match File::open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io(format!("cannot read the state file {}", path.display()), e)),
        };
        let mut bytes = Vec::new();
        // One more byte than the largest file, so that a longer one shows as corrupt, not as cut.
        let max = (HEADER + MAX_BODY + CHECKSUM + 1) as u64;
        (&mut file)
            .take(max)
            .read_to_end(&mut bytes)
            .map_err(|e| Error::io(format!("cannot read the state file {}", path.display()), e))?;
        match decode(&bytes) {
            Ok(body) => Ok(Some(body.to_vec())),
            Err(fault) => Err(Error::State { path, fault }),
        }
    }

    /// Replaces record `name` with `body`, crash-safely: `<name>.tmp` written and fsynced, renamed over
    /// `<name>`, the folder fsynced. Callers that read first hold the record's [`lock`](Self::lock).
    pub fn write(&self, name: &str, body: &[u8]) -> Result<()> {
        let bytes = encode(body)?;
        let path = self.file(name);
        let tmp = self.file(&format!("{name}.tmp"));
        let fail = |what: &str, e| Error::io(format!("cannot {what} the state file {}", path.display()), e);
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .map_err(|e| fail("write", e))?;
        file.write_all(&bytes).map_err(|e| fail("write", e))?;
        file.sync_all().map_err(|e| fail("sync", e))?;
        drop(file);
        std::fs::rename(&tmp, &path).map_err(|e| fail("replace", e))?;
        sync_dir(&self.dir)
    }

    /// Waits for the exclusive lock of record `name` (held by a read-modify-write elsewhere: brief).
    pub fn lock(&self, name: &str) -> Result<RecordLock> {
        let (file, path) = self.lock_file(name)?;
        flock(&file, FlockOperation::LockExclusive)
            .map_err(|e| Error::io(format!("cannot lock {}", path.display()), e.into()))?;
        Ok(RecordLock { _file: file })
    }

    /// Takes the exclusive lock of record `name` if no one holds it: `Ok(None)` if another process or
    /// client does.
    pub fn try_lock(&self, name: &str) -> Result<Option<RecordLock>> {
        let (file, path) = self.lock_file(name)?;
        match flock(&file, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => Ok(Some(RecordLock { _file: file })),
            Err(e) if e == rustix::io::Errno::WOULDBLOCK => Ok(None),
            Err(e) => Err(Error::io(format!("cannot lock {}", path.display()), e.into())),
        }
    }

    fn lock_file(&self, name: &str) -> Result<(File, PathBuf)> {
        let path = self.file(&format!("{name}.lock"));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| Error::io(format!("cannot open {}", path.display()), e))?;
        Ok((file, path))
    }
}

impl StateFolder {
    /// The names of the records that start with `prefix` (not their `.lock` or `.tmp` files), sorted.
    pub fn records(&self, prefix: &str) -> Result<Vec<String>> {
        let fail = |e| Error::io(format!("cannot list the state folder {}", self.dir.display()), e);
        let mut names = Vec::new();
        for entry in std::fs::read_dir(&self.dir).map_err(fail)? {
            let entry = entry.map_err(fail)?;
            let Ok(name) = entry.file_name().into_string() else { continue };
            if name.starts_with(prefix) && !name.ends_with(".lock") && !name.ends_with(".tmp") {
                names.push(name);
            }
        }
        names.sort();
        Ok(names)
    }
}

/// Makes a folder's entries (a rename, a new file) durable.
fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io(format!("cannot sync the folder {}", dir.display()), e))
}

/// The prefix of the names of the records of `topic`'s publisher chains.
pub(crate) fn chain_prefix(topic: &sealpost_protocol::Topic) -> String {
    format!("chain-{}-", hex::encode(topic.as_str()))
}

/// The name of the record of publisher chain `chain` on `topic`: its last acknowledged head.
pub(crate) fn chain_record(topic: &sealpost_protocol::Topic, chain: sealpost_protocol::ChainId) -> String {
    format!("{}{}", chain_prefix(topic), hex::encode(chain.as_bytes()))
}

/// The name of the record of durable subscription `name` on `topic`: the chain heads it had verified up to
/// the offset it last acknowledged.
pub(crate) fn durable_record(topic: &sealpost_protocol::Topic, name: &str) -> String {
    format!("durable-{}-{}", hex::encode(topic.as_str()), hex::encode(name))
}

/// The name of the record that holds the newest verified policy of `topic`.
pub(crate) fn policy_record(topic: &sealpost_protocol::Topic) -> String {
    format!("policy-{}", hex::encode(topic.as_str()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    fn folder() -> (tempfile::TempDir, StateFolder) {
        let dir = tempfile::tempdir().unwrap();
        let state = StateFolder::open(dir.path().join("alice.state")).unwrap();
        (dir, state)
    }

    fn fault(result: Result<Option<Vec<u8>>>) -> StateFault {
        match result {
            Err(Error::State { fault, .. }) => fault,
            other => panic!("expected a state error, got {other:?}"),
        }
    }

    #[test]
    fn a_record_reads_back_what_was_written_and_none_before() {
        let (_dir, state) = folder();
        assert_eq!(state.read("r").unwrap(), None);
        state.write("r", b"first").unwrap();
        state.write("r", b"second, longer").unwrap();
        assert_eq!(state.read("r").unwrap().as_deref(), Some(&b"second, longer"[..]));
        state.write("empty", b"").unwrap();
        assert_eq!(state.read("empty").unwrap().as_deref(), Some(&b""[..]));
    }

    #[test]
    fn a_torn_write_is_reported_as_torn() {
        let (_dir, state) = folder();
        state.write("r", b"a policy, say").unwrap();
        let path = state.path().join("r");
        let whole = std::fs::read(&path).unwrap();
        // Cut at every length short of the whole file: each is torn (or, before the magic is whole and
        // matches, corrupt), never read as a record.
        for cut in 0..whole.len() {
            std::fs::write(&path, &whole[..cut]).unwrap();
            let f = fault(state.read("r"));
            assert_eq!(f, StateFault::Torn, "cut at {cut}");
        }
    }

    #[test]
    fn corrupt_content_is_reported_as_corrupt() {
        let (_dir, state) = folder();
        state.write("r", b"a policy, say").unwrap();
        let path = state.path().join("r");
        let whole = std::fs::read(&path).unwrap();
        // Every single flipped bit, anywhere (magic, version, length, body, checksum), is caught. A
        // flipped length bit may make the file look cut short, which is reported as torn.
        for i in 0..whole.len() {
            for bit in 0..8 {
                let mut bad = whole.clone();
                bad[i] ^= 1 << bit;
                std::fs::write(&path, &bad).unwrap();
                let f = fault(state.read("r"));
                if (5..9).contains(&i) {
                    assert!(matches!(f, StateFault::Torn | StateFault::Corrupt), "byte {i} bit {bit}");
                } else {
                    assert_eq!(f, StateFault::Corrupt, "byte {i} bit {bit}");
                }
            }
        }
        // Bytes after the checksum, and something that is no state file at all.
        let mut longer = whole.clone();
        longer.push(0);
        std::fs::write(&path, &longer).unwrap();
        assert_eq!(fault(state.read("r")), StateFault::Corrupt);
        std::fs::write(&path, b"principal = \"alice\"\n").unwrap();
        assert_eq!(fault(state.read("r")), StateFault::Corrupt);
    }

    #[test]
    fn a_stale_temporary_file_does_not_change_what_is_read() {
        let (_dir, state) = folder();
        state.write("r", b"acknowledged").unwrap();
        // A crash after writing the temporary file, before the rename.
        std::fs::write(state.path().join("r.tmp"), b"SPST half a reco").unwrap();
        assert_eq!(state.read("r").unwrap().as_deref(), Some(&b"acknowledged"[..]));
        state.write("r", b"next").unwrap();
        assert_eq!(state.read("r").unwrap().as_deref(), Some(&b"next"[..]));
    }

    #[test]
    fn a_record_lock_is_held_against_other_holders_until_dropped() {
        let (_dir, state) = folder();
        let other = StateFolder::open(state.path()).unwrap();
        let held = state.try_lock("chain").unwrap().expect("the first lock is free");
        // Another holder (an OS file lock: another open file, as another process would have) is refused.
        assert!(other.try_lock("chain").unwrap().is_none());
        // Other records are not locked by it.
        assert!(other.try_lock("another").unwrap().is_some());
        drop(held);
        assert!(other.try_lock("chain").unwrap().is_some());
    }

    #[test]
    fn a_waiting_lock_is_granted_once_the_holder_lets_go() {
        let (_dir, state) = folder();
        let held = state.lock("r").unwrap();
        let other = state.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        let waiter = std::thread::spawn(move || {
            let lock = other.lock("r").unwrap();
            tx.send(()).unwrap();
            drop(lock);
        });
        // Not granted while held: the waiter has not sent yet.
        assert!(rx.try_recv().is_err());
        drop(held);
        rx.recv_timeout(std::time::Duration::from_secs(10)).unwrap();
        waiter.join().unwrap();
    }
}
