//! The on-disk engine: one sled 0.34 database per data directory, and a `sync` that really reaches the disk.
//!
//! # Key layout
//!
//! One tree (sled's default tree); every key starts with a one-byte kind and the length-prefixed topic, and
//! every integer is big-endian, so a range scan visits a topic's keys in numeric order and two topics never
//! share a prefix (`a` and `a.b` differ in their length byte):
//!
//! ```text
//! b | topic_len u8 | topic | offset u64                          -> count u32 | sealed batch bytes
//! p | topic_len u8 | topic | publisher [32] | first_seq u64      -> first_seq u64 | count u32 | offset u64 | digest [32]
//! d | topic_len u8 | topic | len u32 | principal | len u32 | name -> next_offset u64
//! y | topic_len u8 | topic | epoch u64                           -> signed topic policy bytes
//! m | "layout"                                                   -> layout version u32 (1)
//! ```
//!
//! An append writes its `b` and `p` keys with one `apply_batch`, which sled applies atomically, also across
//! a crash. The last `b` key of a topic gives its next offset, the last `p` key of a (topic, publisher) its
//! chain head.
//!
//! # What sled writes, and how [`SledStore::sync`] makes it durable
//!
//! From the sled 0.34.7 source (`src/config.rs`, `src/pagecache/{iobuf,blob_io,logger,snapshot}.rs`), a sled
//! folder holds:
//!
//! - `db`: the log-structured page store, written with `pwrite` in segments (512 KiB by default);
//! - `conf`: the storage parameters, written once at open, **never fsynced** by sled;
//! - `blobs/<lsn>`: one file per page whose serialized size exceeds about a quarter of a segment (~128 KiB
//!   with the default segment size). A page is a whole tree node (up to ~17 key/value pairs), so a node
//!   holding a few large batches, or one batch over ~128 KiB, goes to a blob. Blob files are created with
//!   `create_new` and written with `write_all`, and sled **never fsyncs them** nor the `blobs` directory;
//! - `snap.<lsn>`: recovery snapshots, fsynced then renamed into place (the folder is not fsynced).
//!
//! `Db::flush` writes sled's dirty log buffers to `db` but only calls `sync_file_range` on Linux (sled issue
//! #1452): that flushes the data pages of that range, not the file's metadata nor the disk's write cache,
//! so it is not a durability guarantee. On recovery, sled replays the `db` log; a log entry whose blob file
//! is missing is skipped, but one whose blob is torn (bad CRC or short) **ends the replay**, losing
//! everything logged after it. So blobs must be durable no later than the log entries that point to them.
//!
//! [`SledStore::sync`] therefore, under one lock, and counting a sync only if every step succeeds:
//!
//! 1. calls `Db::flush`, which waits until every log entry reserved before the call has been written. Blob
//!    files are written inside their reservation, so every blob of an append that returned before `sync`
//!    is now complete;
//! 2. lists `blobs/` and `sync_all`s each file it has not synced before; it records the file's length
//!    *before* that fsync. A blob first seen in the previous sync is checked once more (sled may have been
//!    writing it then: sled restructures nodes during reads too, from any thread) and fsynced again if its
//!    length changed; after that check it is complete and never looked at again. If any file was new,
//!    `blobs/` itself is fsynced (its entries are what makes the files reachable);
//! 3. `sync_data`s `db` through a handle the store keeps open (the same file sled writes);
//! 4. on the first sync, `sync_all`s `conf`; and whenever the set of entries in the folder changed since
//!    the last sync (on the first sync: `db`, `conf`, `blobs`; later: snapshot renames), fsyncs the folder.
//!
//! The store also turns off sled's background flusher (`flush_every_ms(None)`): durability comes only from
//! this `sync`, at the moments the [`log`](crate::log) chooses, and no unrequested fsync competes with it.
//!
//! Costs and limits: step 2 lists `blobs/` on every sync (a `getdents` over all live blobs) and fsyncs every
//! blob once when the store is opened. Blob removals by sled's GC are not fsynced: after a crash a removed
//! blob may reappear as an unreferenced file, which wastes space but loses nothing. Sled rewrites a whole
//! node on consolidation, so large batches cost write amplification; an engine that keeps batch bytes out
//! of the tree would avoid it.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use bytes::Bytes;
use sealpost_protocol::{PublicKey, Topic};

use super::{io_error, offset_mismatch, PublisherRecord, Store, StoredBatch};
use crate::{Error, Result};

/// Version of the key layout above, stored under `m | "layout"`.
const LAYOUT_VERSION: u32 = 1;
const LAYOUT_KEY: &[u8] = b"mlayout";

const BATCH: u8 = b'b';
const PUBLISHER: u8 = b'p';
const DURABLE: u8 = b'd';
const POLICY: u8 = b'y';

/// A [`Store`] in a sled database on disk. See the module documentation for its layout and its `sync`.
#[derive(Debug)]
pub struct SledStore {
    db: sled::Db,
    dir: PathBuf,
    /// Our own handle on sled's `db` file, to fdatasync it.
    db_file: File,
    sync_state: Mutex<SyncState>,
    syncs: AtomicU64,
}

/// What earlier syncs already made durable.
#[derive(Debug, Default)]
struct SyncState {
    /// Blob files synced and known complete.
    final_blobs: HashSet<OsString>,
    /// Blob files first synced by the previous sync, with their length at that time.
    young_blobs: HashMap<OsString, u64>,
    /// The folder's entries at the last folder fsync (`None` before the first sync).
    root_entries: Option<BTreeSet<OsString>>,
}

fn sled_error(e: sled::Error) -> Error {
    match e {
        sled::Error::Io(io) => io_error("sled", &io),
        other => Error::Storage(format!("sled: {other}")),
    }
}

fn corrupt(what: &str) -> Error {
    Error::Storage(format!("corrupt store: {what}"))
}

fn u64_at(bytes: &[u8], at: usize) -> Result<u64> {
    bytes
        .get(at..at + 8)
        .and_then(|b| b.try_into().ok())
        .map(u64::from_be_bytes)
        .ok_or_else(|| corrupt("short integer"))
}

fn u32_at(bytes: &[u8], at: usize) -> Result<u32> {
    bytes
        .get(at..at + 4)
        .and_then(|b| b.try_into().ok())
        .map(u32::from_be_bytes)
        .ok_or_else(|| corrupt("short integer"))
}

/// `kind | topic_len | topic`, with room for `extra` more bytes.
fn topic_prefix(kind: u8, topic: &Topic, extra: usize) -> Vec<u8> {
    let name = topic.as_str().as_bytes();
    let mut key = Vec::with_capacity(2 + name.len() + extra);
    key.push(kind);
    // Topic guarantees 1..=255 bytes.
    key.push(name.len() as u8);
    key.extend_from_slice(name);
    key
}

fn batch_key(topic: &Topic, offset: u64) -> Vec<u8> {
    let mut key = topic_prefix(BATCH, topic, 8);
    key.extend_from_slice(&offset.to_be_bytes());
    key
}

fn publisher_key(topic: &Topic, publisher: &PublicKey, first_seq: u64) -> Vec<u8> {
    let mut key = topic_prefix(PUBLISHER, topic, 40);
    key.extend_from_slice(publisher.as_bytes());
    key.extend_from_slice(&first_seq.to_be_bytes());
    key
}

fn durable_key(topic: &Topic, principal: &str, name: &str) -> Result<Vec<u8>> {
    let mut key = topic_prefix(DURABLE, topic, 8 + principal.len() + name.len());
    for part in [principal, name] {
        let len = u32::try_from(part.len()).map_err(|_| Error::LimitExceeded("durable subscription name"))?;
        key.extend_from_slice(&len.to_be_bytes());
        key.extend_from_slice(part.as_bytes());
    }
    Ok(key)
}

/// A stored batch from its `b` key and value.
fn decode_batch(key: &[u8], value: &[u8]) -> Result<StoredBatch> {
    let offset = u64_at(key, key.len().saturating_sub(8))?;
    let count = u32_at(value, 0)?;
    Ok(StoredBatch { offset, count, bytes: Bytes::copy_from_slice(&value[4..]) })
}

/// The folder's entry names.
fn entries(dir: &Path) -> Result<BTreeSet<OsString>> {
    std::fs::read_dir(dir)
        .and_then(|rd| rd.map(|e| e.map(|e| e.file_name())).collect())
        .map_err(|e| io_error(&format!("listing {}", dir.display()), &e))
}

/// fsyncs a directory, so that the entries created or renamed in it survive a crash.
fn sync_dir(dir: &Path) -> Result<()> {
    #[cfg(unix)]
    {
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| io_error(&format!("fsync of {}", dir.display()), &e))?;
    }
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

/// Opens `path` and fsyncs it; returns the length it had before the fsync, or `None` if the file is gone
/// (sled removed it meanwhile).
fn sync_file(path: &Path) -> Result<Option<u64>> {
    let file = match OpenOptions::new().read(true).write(true).open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_error(&format!("opening {}", path.display()), &e)),
    };
    let fsync_error = |e: io::Error| io_error(&format!("fsync of {}", path.display()), &e);
    let len = file.metadata().map_err(fsync_error)?.len();
    file.sync_all().map_err(fsync_error)?;
    Ok(Some(len))
}

/// The default limit of sled's page cache: 128 MiB.
pub const DEFAULT_CACHE_BYTES: u64 = 128 * 1024 * 1024;

impl SledStore {
    /// Opens (creating it if needed) the sled database in `dir`, with sled's page cache limited to
    /// [`DEFAULT_CACHE_BYTES`]. The folder belongs to the store: put nothing else in it.
    pub fn open(dir: &Path) -> Result<SledStore> {
        Self::open_with_cache(dir, DEFAULT_CACHE_BYTES)
    }

    /// Like [`open`](Self::open), with sled's page cache limited to about `cache_bytes` (sled's own default
    /// is 1 GiB). The cache is most of the store's memory: it does not grow with the data stored.
    pub fn open_with_cache(dir: &Path, cache_bytes: u64) -> Result<SledStore> {
        std::fs::create_dir_all(dir).map_err(|e| io_error(&format!("creating {}", dir.display()), &e))?;
        let db = sled::Config::new()
            .path(dir)
            .flush_every_ms(None)
            .cache_capacity(cache_bytes)
            .open()
            .map_err(sled_error)?;
        match db.get(LAYOUT_KEY).map_err(sled_error)? {
            Some(v) if v.as_ref() == LAYOUT_VERSION.to_be_bytes() => {}
            Some(v) => {
                return Err(Error::Storage(format!(
                    "{} holds an unsupported store layout ({:?})",
                    dir.display(),
                    v.as_ref()
                )))
            }
            None if db.is_empty() => {
                db.insert(LAYOUT_KEY, &LAYOUT_VERSION.to_be_bytes()[..]).map_err(sled_error)?;
            }
            None => return Err(Error::Storage(format!("{} is not a Sealpost store", dir.display()))),
        }
        let db_path = dir.join("db");
        let db_file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&db_path)
            .map_err(|e| io_error(&format!("opening {}", db_path.display()), &e))?;
        Ok(SledStore {
            db,
            dir: dir.to_path_buf(),
            db_file,
            sync_state: Mutex::new(SyncState::default()),
            syncs: AtomicU64::new(0),
        })
    }

    /// The last stored batch of `topic`.
    fn last_batch(&self, topic: &Topic) -> Result<Option<StoredBatch>> {
        match self.db.range(batch_key(topic, 0)..=batch_key(topic, u64::MAX)).next_back() {
            Some(kv) => {
                let (k, v) = kv.map_err(sled_error)?;
                decode_batch(&k, &v).map(Some)
            }
            None => Ok(None),
        }
    }

    /// Step 2 of `sync` (see the module docs): makes every complete blob durable.
    fn sync_blobs(&self, state: &mut SyncState) -> Result<()> {
        let blobs = self.dir.join("blobs");
        let listing = std::fs::read_dir(&blobs).map_err(|e| io_error("listing sled blobs", &e))?;
        let mut final_blobs = HashSet::with_capacity(state.final_blobs.len() + state.young_blobs.len());
        let mut young_blobs = HashMap::new();
        for entry in listing {
            let entry = entry.map_err(|e| io_error("listing sled blobs", &e))?;
            let name = entry.file_name();
            if state.final_blobs.contains(&name) {
                final_blobs.insert(name);
            } else if let Some(&synced_len) = state.young_blobs.get(&name) {
                let len = match entry.metadata() {
                    Ok(m) => m.len(),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(io_error("reading sled blob metadata", &e)),
                };
                if len != synced_len && sync_file(&entry.path())?.is_none() {
                    continue;
                }
                final_blobs.insert(name);
            } else if let Some(len) = sync_file(&entry.path())? {
                young_blobs.insert(name, len);
            }
        }
        if !young_blobs.is_empty() {
            sync_dir(&blobs)?;
        }
        state.final_blobs = final_blobs;
        state.young_blobs = young_blobs;
        Ok(())
    }
}

impl Store for SledStore {
    fn append(
        &self,
        topic: &Topic,
        publisher: &PublicKey,
        record: &PublisherRecord,
        batch: &Bytes,
    ) -> Result<()> {
        let next = self.last_batch(topic)?.map_or(0, |b| b.end());
        if record.offset != next {
            return Err(offset_mismatch(topic, next, record.offset));
        }
        let mut value = Vec::with_capacity(4 + batch.len());
        value.extend_from_slice(&record.count.to_be_bytes());
        value.extend_from_slice(batch);
        let mut writes = sled::Batch::default();
        writes.insert(batch_key(topic, record.offset), value);
        writes.insert(publisher_key(topic, publisher, record.first_seq), &record.encode()[..]);
        self.db.apply_batch(writes).map_err(sled_error)
    }

    fn sync(&self) -> Result<()> {
        let mut state =
            self.sync_state.lock().map_err(|_| Error::Storage("sled sync lock poisoned".into()))?;
        self.db.flush().map_err(sled_error)?;
        self.sync_blobs(&mut state)?;
        self.db_file.sync_data().map_err(|e| io_error("fsync of the sled db file", &e))?;
        let root = entries(&self.dir)?;
        if state.root_entries.as_ref() != Some(&root) {
            if state.root_entries.is_none() {
                sync_file(&self.dir.join("conf"))?;
            }
            sync_dir(&self.dir)?;
            state.root_entries = Some(root);
        }
        self.syncs.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    fn read(&self, topic: &Topic, from: u64, max_bytes: usize) -> Result<Vec<StoredBatch>> {
        // Start at the batch containing `from` if there is one, else at the first one after it.
        let start = match self.db.range(batch_key(topic, 0)..=batch_key(topic, from)).next_back() {
            Some(kv) => {
                let (k, v) = kv.map_err(sled_error)?;
                let b = decode_batch(&k, &v)?;
                if b.end() > from {
                    b.offset
                } else {
                    from
                }
            }
            None => from,
        };
        let mut out = Vec::new();
        let mut total = 0usize;
        for kv in self.db.range(batch_key(topic, start)..=batch_key(topic, u64::MAX)) {
            let (k, v) = kv.map_err(sled_error)?;
            let len = v.len().saturating_sub(4);
            if !out.is_empty() && total.saturating_add(len) > max_bytes {
                break;
            }
            total = total.saturating_add(len);
            out.push(decode_batch(&k, &v)?);
        }
        Ok(out)
    }

    fn next_offset(&self, topic: &Topic) -> Result<u64> {
        Ok(self.last_batch(topic)?.map_or(0, |b| b.end()))
    }

    fn first_offset(&self, topic: &Topic) -> Result<u64> {
        match self.db.range(batch_key(topic, 0)..=batch_key(topic, u64::MAX)).keys().next() {
            Some(k) => {
                let k = k.map_err(sled_error)?;
                u64_at(&k, k.len().saturating_sub(8))
            }
            None => Ok(0),
        }
    }

    fn publisher_record(
        &self,
        topic: &Topic,
        publisher: &PublicKey,
        first_seq: u64,
    ) -> Result<Option<PublisherRecord>> {
        match self.db.get(publisher_key(topic, publisher, first_seq)).map_err(sled_error)? {
            Some(v) => PublisherRecord::decode(&v).map(Some),
            None => Ok(None),
        }
    }

    fn publisher_head(&self, topic: &Topic, publisher: &PublicKey) -> Result<Option<PublisherRecord>> {
        let range = publisher_key(topic, publisher, 0)..=publisher_key(topic, publisher, u64::MAX);
        match self.db.range(range).values().next_back() {
            Some(v) => PublisherRecord::decode(&v.map_err(sled_error)?).map(Some),
            None => Ok(None),
        }
    }

    fn durable_offset(&self, topic: &Topic, principal: &str, name: &str) -> Result<Option<u64>> {
        match self.db.get(durable_key(topic, principal, name)?).map_err(sled_error)? {
            Some(v) if v.len() == 8 => u64_at(&v, 0).map(Some),
            Some(_) => Err(corrupt("durable offset")),
            None => Ok(None),
        }
    }

    fn set_durable_offset(&self, topic: &Topic, principal: &str, name: &str, next_offset: u64) -> Result<()> {
        self.db
            .insert(durable_key(topic, principal, name)?, &next_offset.to_be_bytes()[..])
            .map(drop)
            .map_err(sled_error)
    }

    fn put_policy(&self, topic: &Topic, epoch: u64, policy: &Bytes) -> Result<()> {
        let mut key = topic_prefix(POLICY, topic, 8);
        key.extend_from_slice(&epoch.to_be_bytes());
        self.db.insert(key, &policy[..]).map(drop).map_err(sled_error)
    }

    fn policies(&self, topic: &Topic, max: usize) -> Result<Vec<Bytes>> {
        let mut newest = Vec::new();
        for entry in self.db.scan_prefix(topic_prefix(POLICY, topic, 0)).rev().take(max) {
            let (_, value) = entry.map_err(sled_error)?;
            newest.push(Bytes::copy_from_slice(&value));
        }
        newest.reverse();
        Ok(newest)
    }

    fn syncs(&self) -> u64 {
        self.syncs.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topic(s: &str) -> Topic {
        Topic::new(s).unwrap()
    }

    #[test]
    fn batch_keys_sort_by_offset_within_a_topic() {
        let t = topic("demo.chat");
        let keys: Vec<_> = [0u64, 1, 255, 256, 1 << 40, u64::MAX].iter().map(|&o| batch_key(&t, o)).collect();
        assert!(keys.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn topic_prefixes_do_not_overlap() {
        let (a, ab) = (batch_key(&topic("a"), 0), batch_key(&topic("a.b"), 0));
        assert!(!ab.starts_with(&a[..a.len() - 8]));
    }

    #[test]
    fn sync_makes_blob_files_durable_and_remembers_them() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        let t = topic("demo.blob");
        let publisher = sealpost_protocol::SigningKey::from_bytes(&[1; 32]).public_key();
        let record = PublisherRecord { first_seq: 1, count: 1, offset: 0, digest: Default::default() };
        store.append(&t, &publisher, &record, &Bytes::from(vec![7u8; 512 * 1024])).unwrap();
        store.sync().unwrap();
        let blobs = entries(&dir.path().join("blobs")).unwrap();
        assert!(!blobs.is_empty(), "a 512 KiB value should be stored in a blob file");
        {
            let state = store.sync_state.lock().unwrap();
            assert!(blobs.iter().all(|b| state.young_blobs.contains_key(b)));
            assert!(state.root_entries.is_some());
        }
        store.sync().unwrap();
        let state = store.sync_state.lock().unwrap();
        assert!(blobs.iter().all(|b| state.final_blobs.contains(b)));
        assert!(state.young_blobs.is_empty());
    }

    #[test]
    fn opening_a_foreign_sled_database_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = sled::Config::new().path(dir.path()).open().unwrap();
            db.insert(b"other", b"data").unwrap();
            db.flush().unwrap();
        }
        assert!(matches!(SledStore::open(dir.path()), Err(Error::Storage(_))));
    }
}
