//! Making the index durable: sled's own files, which sled does not make durable by itself.
//!
//! The segments are made durable by every sync (that is what an acknowledgement waits for); the index only
//! lazily, by [`IndexFiles::make_durable`], which the engine calls at most every
//! [`INDEX_SYNC_BYTES`](super::INDEX_SYNC_BYTES) of records or when opening asks for it. It guarantees that
//! when it returns `Ok`, everything the index held when it began (and the checkpoint it stored first)
//! survives a crash of the process or of the machine.
//!
//! Sled's files need care. From the sled 0.34.7 source (`src/config.rs`,
//! `src/pagecache/{iobuf,blob_io,logger,snapshot}.rs`), a sled folder holds:
//!
//! - `db`: the log-structured page store, written with `pwrite` in segments (512 KiB by default);
//! - `conf`: the storage parameters, written once at open, **never fsynced** by sled;
//! - `blobs/<lsn>`: one file per page whose serialized size exceeds about a quarter of a segment (~128 KiB
//!   with the default segment size). With batch bytes in segment files the index's nodes stay far below
//!   that, but sled decides (a large policy can do it), so blobs are still handled. Blob files are created
//!   with `create_new` and written with `write_all`, and sled **never fsyncs them** nor the `blobs` directory;
//! - `snap.<lsn>`: recovery snapshots, fsynced then renamed into place (the folder is not fsynced).
//!
//! `Db::flush` writes sled's dirty log buffers to `db` but only calls `sync_file_range` on Linux (sled issue
//! #1452): that flushes the data pages of that range, not the file's metadata nor the disk's write cache,
//! so it is not a durability guarantee. On recovery, sled replays the `db` log; a log entry whose blob file
//! is missing is skipped, but one whose blob is torn (bad CRC or short) **ends the replay**, losing
//! everything logged after it. So blobs must be durable no later than the log entries that point to them.
//! Making the index durable therefore:
//!
//! 1. stores the checkpoint, then calls `Db::flush`, which waits until every log entry reserved before the
//!    call has been written. Blob files are written inside their reservation, so every blob of an insert
//!    that returned before is now complete;
//! 2. lists `blobs/` and `sync_all`s each file it has not synced before; it records the file's length
//!    *before* that fsync. A blob first seen in the previous index sync is checked once more (sled may have
//!    been writing it then: sled restructures nodes during reads too, from any thread) and fsynced again if
//!    its length changed; after that check it is complete and never looked at again. If any file was new,
//!    `blobs/` itself is fsynced (its entries are what makes the files reachable);
//! 3. `sync_data`s `db` through a handle the store keeps open (the same file sled writes);
//! 4. on the first time, `sync_all`s `conf`; and whenever the set of entries in the folder changed since the
//!    last time (at first: `db`, `conf`, `blobs`, `segments`; later: snapshot renames), fsyncs the folder.
//!
//! The store turns off sled's background flusher (`flush_every_ms(None)`): no unrequested fsync competes
//! with the log's. Blob removals by sled's GC are not fsynced: after a crash a removed blob may reappear as
//! an unreferenced file, which wastes space but loses nothing.
//!
//! # Locks
//!
//! [`IndexFiles::lock`] is the engine's sync lock: held for a whole sync, taken before any other lock of
//! the engine.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use super::index::{sled_error, CHECKPOINT_KEY};
use super::segment::{sync_dir, Checkpoint};
use crate::store::{io_error, lock};
use crate::Result;

/// What earlier index syncs already made durable.
#[derive(Debug, Default)]
pub(super) struct SyncState {
    /// Blob files synced and known complete.
    pub final_blobs: HashSet<OsString>,
    /// Blob files first synced by the previous sync, with their length at that time.
    pub young_blobs: HashMap<OsString, u64>,
    /// The folder's entries at the last folder fsync (`None` before the first sync).
    pub root_entries: Option<BTreeSet<OsString>>,
}

/// Sled's files in the data folder, as the engine makes them durable. See the module documentation.
#[derive(Debug)]
pub(super) struct IndexFiles {
    dir: PathBuf,
    /// Our own handle on sled's `db` file, to fdatasync it.
    db_file: File,
    state: Mutex<SyncState>,
}

/// The folder's entry names.
pub(super) fn entries(dir: &Path) -> Result<BTreeSet<OsString>> {
    std::fs::read_dir(dir)
        .and_then(|rd| rd.map(|e| e.map(|e| e.file_name())).collect())
        .map_err(|e| io_error(&format!("listing {}", dir.display()), &e))
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

impl IndexFiles {
    /// Sled's files in `dir`, where sled has opened its database.
    pub(super) fn open(dir: &Path) -> Result<Self> {
        let db_path = dir.join("db");
        let db_file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&db_path)
            .map_err(|e| io_error(&format!("opening {}", db_path.display()), &e))?;
        Ok(Self { dir: dir.to_path_buf(), db_file, state: Mutex::new(SyncState::default()) })
    }

    /// The engine's sync lock, with what earlier index syncs made durable.
    pub(super) fn lock(&self) -> Result<MutexGuard<'_, SyncState>> {
        lock(&self.state, "sled sync")
    }

    /// Makes the index `db` durable with `checkpoint` stored in it (steps 1 to 4 of the module
    /// documentation); `state` is the guard of [`lock`](Self::lock).
    pub(super) fn make_durable(
        &self,
        state: &mut SyncState,
        db: &sled::Db,
        checkpoint: Checkpoint,
    ) -> Result<()> {
        db.insert(CHECKPOINT_KEY, &checkpoint.encode()[..]).map_err(sled_error)?;
        db.flush().map_err(sled_error)?;
        self.sync_blobs(state)?;
        self.db_file.sync_data().map_err(|e| io_error("fsync of the sled db file", &e))?;
        let root = entries(&self.dir)?;
        if state.root_entries.as_ref() != Some(&root) {
            if state.root_entries.is_none() {
                sync_file(&self.dir.join("conf"))?;
            }
            sync_dir(&self.dir)?;
            state.root_entries = Some(root);
        }
        Ok(())
    }

    /// Step 2: makes every complete blob durable.
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
