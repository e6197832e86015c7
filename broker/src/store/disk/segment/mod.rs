//! Segment files: the bytes of every stored batch, appended in arrival order.
//!
//! The on-disk engine keeps sealed batches out of its sled index: sled stores small keys and values well,
//! but a tree node holding a few 64 KiB batches is rewritten whole on every change and goes to a blob file
//! of its own, which cost a file creation and an fsync per batch, about 2x the payload on disk, and memory
//! that grew with the data. Here the bytes go to plain append-only files and sled only maps offsets to
//! [`Location`]s.
//!
//! # Files
//!
//! `segments/<number>.seg`, numbered from 0 with 20 decimal digits so that names sort as numbers. Records
//! are appended one after the other:
//!
//! ```text
//! len u32 | crc32 u32 | bytes [len]        (big-endian; crc32 is CRC-32/ISO-HDLC of the bytes)
//! ```
//!
//! Every record has at least one byte (an 8-byte run of zeros, which a file system may leave where a crash
//! cut a write short, is no record). A segment is **rolled** (the next number is created) once it holds
//! [`SEGMENT_BYTES`] or more, and at every open: appends never go to a file that existed before the process
//! started, so a torn tail left by a crash is never appended to. Opening the store judges the segments of
//! earlier runs and cuts a torn tail off ([`Segments::truncate`]) before anything new claims them durable.
//!
//! `segments/synced` is a side file of 24 bytes: `"SPSY" | segment u64 | position u64 | crc32` (CRC of the
//! 20 bytes before it), rewritten in place after every successful sync, **without** an fsync of its own. It
//! survives the death of the process (it is in the page cache), not necessarily a power cut; whatever it
//! says is true, since it is written only after the sync it names. A copy that fails its CRC is ignored.
//!
//! # Durability
//!
//! [`Segments::sync`] fdatasyncs every segment written since the last sync (the rolled ones and the active
//! one) and, if a segment was created, the folder; it returns the [`Checkpoint`] up to which every segment is
//! now durable, and writes it to the side file. [`walk`] reads the records of a segment's bytes and says,
//! for the **acknowledged extent** (what some sync is known to have covered), where records are damaged and
//! where intact ones resume, and past it, where a torn tail begins. The segments are the log, the index a
//! cache of it.
//!
//! # Running out of space
//!
//! Before each append the free space of the file system is read (`statvfs`); an append that would leave less
//! than the configured reserve fails with [`Error::StorageFull`] before anything is written. The reserve
//! keeps the index (sled, which cannot recover from a failed write without being reopened) clear of
//! `ENOSPC`. Should a write still fail, the segment is truncated back to where the record started, so a
//! failed append leaves nothing behind and a later append (once there is space) continues cleanly.
//!
//! A failed **fsync**, however, poisons the segments: after it, Linux may have dropped the dirty pages and
//! marked them clean, so a later fsync would succeed without the data (the "fsyncgate" of PostgreSQL, 2018).
//! Every later append and sync fails with [`Error::Storage`], and [`Segments::poisoned`] says why: the
//! store reports it ([`Store::failed`](crate::store::Store::failed)) and the broker stops itself
//! (fail-stop, see [`crate::writer`]). Its restart's open recovery drops whatever was not durable (nothing
//! that was acknowledged).

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::IoSlice;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;

use crate::store::io_error;
use crate::{Error, Result};

mod file;
mod place;
mod walk;

use self::file::{available_bytes, create_segment, segment_number, write_all_at, write_all_vectored};
pub use self::file::{check_in, list, read_from, segment_name, sync_dir};
pub use self::place::{Checkpoint, Location, RECORD_HEADER};
pub use self::walk::{walk, Walked};

/// A segment is rolled once it holds this many bytes (64 MiB).
pub const SEGMENT_BYTES: u64 = 64 * 1024 * 1024;
const MAX_READERS: usize = 256;
/// The side file naming the last synced checkpoint (see the module documentation).
pub const SYNCED_FILE: &str = "synced";
const SYNCED_MAGIC: &[u8; 4] = b"SPSY";
/// Length of the side file.
pub const SYNCED_LEN: usize = 24;

/// A segment file that is neither the active one nor waiting for a sync, as [`Segments::closed`] lists it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClosedSegment {
    /// Its number.
    pub number: u64,
    /// Its size in bytes.
    pub len: u64,
    /// When it was last written, if the file system says.
    pub modified: Option<std::time::SystemTime>,
}

/// What is at the place a [`Location`] names, as [`Segments::check`] found it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Check {
    /// The record, intact: its bytes (a slice of the buffer they were read into, not a copy).
    Intact(Bytes),
    /// The segment file is gone, or ends before the record's header.
    Missing,
    /// The segment file ends inside the record.
    Torn,
    /// The record's header or bytes do not match its length and CRC: damaged.
    Corrupt,
    /// Another record, intact, is there (its length and CRC differ from the location's): not a torn or
    /// damaged write, but bytes the store did not put there.
    Replaced {
        /// The length the record there has.
        len: u32,
        /// Its CRC.
        crc: u32,
    },
}

/// The segment files of one store. Appends and syncs come from the store's single writer; reads may run
/// concurrently with them from any thread.
#[derive(Debug)]
pub struct Segments {
    dir: PathBuf,
    reserve_bytes: u64,
    /// A segment is rolled once it holds this many bytes.
    segment_bytes: u64,
    writer: Mutex<Writer>,
    readers: Mutex<HashMap<u64, Arc<File>>>,
    /// What the side file said when the segments were opened.
    synced_at_open: Option<Checkpoint>,
    /// The checkpoint of the last successful sync (of this run).
    last_synced: Mutex<Checkpoint>,
}

#[derive(Debug)]
struct Writer {
    /// Number and handle of the segment appends go to, and its length.
    active: u64,
    file: File,
    len: u64,
    /// Segments rolled since the last sync: still to be fdatasynced.
    rolled: Vec<File>,
    /// A segment was created since the last sync: the folder must be fsynced.
    created: bool,
    /// Set by a failed fsync or a failed truncate: the files' state is unknown, nothing more is written.
    poisoned: Option<String>,
    /// The side file, rewritten after every sync.
    synced: Option<File>,
}

/// What the side file in `dir` says, if it is there and intact.
pub fn read_synced(dir: &Path) -> Option<Checkpoint> {
    let bytes = std::fs::read(dir.join(SYNCED_FILE)).ok()?;
    let bytes: &[u8; SYNCED_LEN] = bytes.as_slice().try_into().ok()?;
    let (signed, crc) = bytes.split_last_chunk::<4>()?;
    let (magic, checkpoint) = signed.split_first_chunk::<4>()?;
    (magic == SYNCED_MAGIC && crc32fast::hash(signed) == u32::from_be_bytes(*crc))
        .then(|| Checkpoint::decode(checkpoint))?
}

/// The side file's bytes naming `checkpoint` (what a restored backup writes).
pub fn synced_bytes(checkpoint: Checkpoint) -> [u8; SYNCED_LEN] {
    let mut out = [0u8; SYNCED_LEN];
    out[..4].copy_from_slice(SYNCED_MAGIC);
    out[4..20].copy_from_slice(&checkpoint.encode());
    let crc = crc32fast::hash(&out[..20]);
    out[20..].copy_from_slice(&crc.to_be_bytes());
    out
}

impl Segments {
    /// Opens the segment folder `dir` (creating it if needed, and fsyncing its parent then) and starts a new
    /// segment after the last existing one. Appends leave at least `reserve_bytes` free on the file system.
    pub fn open(dir: &Path, reserve_bytes: u64) -> Result<Segments> {
        if !dir.is_dir() {
            std::fs::create_dir_all(dir).map_err(|e| io_error(&format!("creating {}", dir.display()), &e))?;
            if let Some(parent) = dir.parent() {
                sync_dir(parent)?;
            }
        }
        let mut last = None;
        let listing =
            std::fs::read_dir(dir).map_err(|e| io_error(&format!("listing {}", dir.display()), &e))?;
        for entry in listing {
            let entry = entry.map_err(|e| io_error(&format!("listing {}", dir.display()), &e))?;
            if let Some(n) = entry.file_name().to_str().and_then(segment_number) {
                last = last.max(Some(n));
                // Every open starts a segment; one that never got a record is only clutter.
                if entry.metadata().is_ok_and(|m| m.len() == 0) {
                    std::fs::remove_file(entry.path())
                        .map_err(|e| io_error(&format!("removing {}", entry.path().display()), &e))?;
                }
            }
        }
        let active = last.map_or(0, |n| n.saturating_add(1));
        let file = create_segment(dir, active)?;
        let synced_at_open = read_synced(dir);
        let synced_path = dir.join(SYNCED_FILE);
        let synced = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(&synced_path)
            .map_err(
                |e| tracing::warn!(file = %synced_path.display(), error = %e, "cannot open the synced file"),
            )
            .ok();
        Ok(Segments {
            dir: dir.to_path_buf(),
            reserve_bytes,
            segment_bytes: SEGMENT_BYTES,
            writer: Mutex::new(Writer {
                active,
                file,
                len: 0,
                rolled: Vec::new(),
                created: true,
                poisoned: None,
                synced,
            }),
            readers: Mutex::new(HashMap::new()),
            synced_at_open,
            last_synced: Mutex::new(Checkpoint::default()),
        })
    }

    /// These segments, rolled once one holds `bytes` (at least one record each) rather than
    /// [`SEGMENT_BYTES`].
    pub fn with_segment_bytes(mut self, bytes: u64) -> Segments {
        self.segment_bytes = bytes.max(1);
        self
    }

    /// The segments this run closed or found, with their sizes and last-modified times, oldest first:
    /// every one but the active segment and those rolled since the last sync (which may hold records no
    /// sync covered yet).
    pub fn closed(&self) -> Result<Vec<ClosedSegment>> {
        let synced = self.last_synced().segment;
        let mut out = Vec::new();
        for number in list(&self.dir)?.into_iter().filter(|&n| n < synced) {
            let path = self.dir.join(segment_name(number));
            match std::fs::metadata(&path) {
                Ok(meta) => {
                    out.push(ClosedSegment { number, len: meta.len(), modified: meta.modified().ok() })
                }
                // Removed meanwhile (by retention, which runs on one thread: only by hand).
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_error(&format!("reading {}", path.display()), &e)),
            }
        }
        Ok(out)
    }

    /// Deletes the closed segment `number` (never the active one, nor one a sync has not covered yet) and
    /// makes that durable: what retention does once nothing in it is kept. Its bytes go back to the file
    /// system once no read of them is under way.
    pub fn remove(&self, number: u64) -> Result<()> {
        if number >= self.last_synced().segment {
            return Err(Error::Storage(format!("segment {number} is not closed and synced: it is kept")));
        }
        if let Ok(mut readers) = self.readers.lock() {
            readers.remove(&number);
        }
        let path = self.dir.join(segment_name(number));
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io_error(&format!("removing {}", path.display()), &e)),
        }
        sync_dir(&self.dir)
    }

    /// The folder of the segment files.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The number of the segment appends go to (created by this run).
    pub fn active(&self) -> Result<u64> {
        Ok(self.writer.lock().map_err(|_| Error::Storage("segment writer lock poisoned".into()))?.active)
    }

    /// The numbers of the segments written before this run (every one but the active), in order.
    pub fn earlier(&self) -> Result<Vec<u64>> {
        let active = self.active()?;
        Ok(list(&self.dir)?.into_iter().filter(|&n| n != active).collect())
    }

    /// What the side file said when the segments were opened: the last checkpoint an earlier run synced,
    /// if it survived.
    pub fn synced_at_open(&self) -> Option<Checkpoint> {
        self.synced_at_open
    }

    /// The checkpoint of this run's last successful sync.
    pub fn last_synced(&self) -> Checkpoint {
        self.last_synced.lock().map(|c| *c).unwrap_or_default()
    }

    /// Cuts segment `number` (not the active one) to `len` bytes and makes that durable: what recovery does
    /// to a torn tail, so that no later checkpoint claims its bytes.
    pub fn truncate(&self, number: u64, len: u64) -> Result<()> {
        if number == self.active()? {
            return Err(Error::Storage("the active segment is never truncated".into()));
        }
        let path = self.dir.join(segment_name(number));
        let file = OpenOptions::new()
            .write(true)
            .open(&path)
            .map_err(|e| io_error(&format!("opening {}", path.display()), &e))?;
        file.set_len(len)
            .and_then(|()| file.sync_data())
            .map_err(|e| io_error(&format!("truncating {}", path.display()), &e))
    }

    fn writer(&self) -> Result<MutexGuard<'_, Writer>> {
        let writer = self.writer.lock().map_err(|_| Error::Storage("segment writer lock poisoned".into()))?;
        match &writer.poisoned {
            Some(why) => Err(Error::Storage(format!(
                "the store failed earlier ({why}); restart the broker to recover from disk"
            ))),
            None => Ok(writer),
        }
    }

    /// Appends one record whose bytes are `parts`, one after the other, and returns where it is. The
    /// header and the parts go to the file in one vectored write: nothing is copied into a buffer first.
    /// Not durable until [`sync`](Self::sync). On an error nothing of the record remains in the segment.
    pub fn append(&self, parts: &[&[u8]]) -> Result<Location> {
        self.append_with(parts, self.reserve_bytes)
    }

    /// [`append`](Self::append), leaving only the record's own bytes free: for the store's own small
    /// records (sync markers, lost ranges, the layout mark) and its one-time migration, which must not
    /// stop a broker from starting, or from reporting damage, on a device that is nearly full.
    pub fn append_unreserved(&self, parts: &[&[u8]]) -> Result<Location> {
        self.append_with(parts, 0)
    }

    fn append_with(&self, parts: &[&[u8]], reserve: u64) -> Result<Location> {
        let total: usize = parts.iter().map(|p| p.len()).sum();
        if total == 0 {
            return Err(Error::Storage("an empty record".into()));
        }
        let len = u32::try_from(total).map_err(|_| Error::LimitExceeded("stored batch size"))?;
        let mut w = self.writer()?;
        let needed = RECORD_HEADER.saturating_add(len.into()).saturating_add(reserve);
        if available_bytes(&self.dir)? < needed {
            return Err(Error::StorageFull);
        }
        if w.len >= self.segment_bytes {
            let next = w.active.saturating_add(1);
            let file = create_segment(&self.dir, next)?;
            let old = std::mem::replace(&mut w.file, file);
            w.rolled.push(old);
            w.active = next;
            w.len = 0;
            w.created = true;
        }
        let mut hasher = crc32fast::Hasher::new();
        for part in parts {
            hasher.update(part);
        }
        let crc = hasher.finalize();
        let header = place::header(len, crc);
        let position = w.len;
        let mut slices: Vec<IoSlice<'_>> =
            std::iter::once(&header[..]).chain(parts.iter().copied()).map(IoSlice::new).collect();
        let written = write_all_vectored(&mut w.file, &mut slices);
        if let Err(e) = written {
            // Take back whatever part of the record reached the file, so the next append starts clean.
            if let Err(t) = w.file.set_len(position) {
                w.poisoned = Some(format!("truncating segment {} after a failed write: {t}", w.active));
            }
            return Err(io_error(&format!("writing segment {}", w.active), &e));
        }
        w.len = position.saturating_add(RECORD_HEADER).saturating_add(len.into());
        Ok(Location { segment: w.active, position, len, crc })
    }

    /// Makes every record appended so far durable and returns the checkpoint that says so. A failure
    /// poisons the segments (see the module documentation).
    pub fn sync(&self) -> Result<Checkpoint> {
        let mut w = self.writer()?;
        let result = (|| {
            for file in &w.rolled {
                file.sync_data().map_err(|e| io_error("fdatasync of a rolled segment", &e))?;
            }
            w.file.sync_data().map_err(|e| io_error(&format!("fdatasync of segment {}", w.active), &e))?;
            if w.created {
                sync_dir(&self.dir)?;
            }
            Ok(())
        })();
        match result {
            Ok(()) => {
                w.rolled.clear();
                w.created = false;
                let checkpoint = Checkpoint { segment: w.active, position: w.len };
                if let Some(synced) = &w.synced {
                    // Best effort, and no fsync: see the module documentation.
                    if let Err(e) = write_all_at(synced, &synced_bytes(checkpoint), 0) {
                        tracing::warn!(error = %e, "cannot write the synced file");
                    }
                }
                if let Ok(mut last) = self.last_synced.lock() {
                    *last = checkpoint;
                }
                Ok(checkpoint)
            }
            Err(e) => {
                w.poisoned = Some(format!("{e}"));
                Err(e)
            }
        }
    }

    /// Stops all further appends and syncs: the caller found the store in a state it cannot vouch for
    /// (a record was appended but could not be indexed).
    pub fn poison(&self, why: String) {
        if let Ok(mut w) = self.writer.lock() {
            w.poisoned.get_or_insert(why);
        }
    }

    /// Why the segments were poisoned ([`sync`](Self::sync) failed, or [`poison`](Self::poison)), if they
    /// were: nothing more is appended or synced until they are reopened.
    pub fn poisoned(&self) -> Option<String> {
        match self.writer.lock() {
            Ok(w) => w.poisoned.clone(),
            Err(_) => Some("segment writer lock poisoned".into()),
        }
    }

    fn reader(&self, segment: u64) -> Result<Arc<File>> {
        let poisoned = || Error::Storage("segment reader lock poisoned".into());
        if let Some(file) = self.readers.lock().map_err(|_| poisoned())?.get(&segment) {
            return Ok(Arc::clone(file));
        }
        let path = self.dir.join(segment_name(segment));
        let file =
            Arc::new(File::open(&path).map_err(|e| io_error(&format!("opening {}", path.display()), &e))?);
        let mut readers = self.readers.lock().map_err(|_| poisoned())?;
        if readers.len() >= MAX_READERS {
            readers.clear();
        }
        readers.insert(segment, Arc::clone(&file));
        Ok(file)
    }

    /// The record at `at`, checked against its length and CRC (see [`Check`]). An error only for an I/O
    /// failure other than a missing file or a short read.
    pub fn check(&self, at: &Location) -> Result<Check> {
        let file = match self.reader(at.segment) {
            Ok(file) => file,
            Err(_) if !self.dir.join(segment_name(at.segment)).exists() => return Ok(Check::Missing),
            Err(e) => return Err(e),
        };
        check_in(&file, at).map_err(|e| io_error(&format!("reading segment {}", at.segment), &e))
    }

    /// The bytes of the record at `at`, or an error if it is not intact.
    pub fn read(&self, at: &Location) -> Result<Bytes> {
        match self.check(at)? {
            Check::Intact(bytes) => Ok(bytes),
            other => Err(Error::Storage(format!(
                "corrupt store: the record at {}:{} is not intact ({other:?})",
                segment_name(at.segment),
                at.position
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_read_back_and_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("segments");
        let (a, b) = {
            let segments = Segments::open(&path, 0).unwrap();
            let a = segments.append(&[b"first record".as_slice()]).unwrap();
            let b = segments.append(&[&[7u8; 1000][..]]).unwrap();
            assert_eq!((a.segment, a.position, b.position), (0, 0, a.end()));
            assert_eq!(segments.read(&a).unwrap(), b"first record".as_slice());
            let checkpoint = segments.sync().unwrap();
            assert_eq!(checkpoint, Checkpoint { segment: 0, position: b.end() });
            assert!(a.durable_by(checkpoint) && b.durable_by(checkpoint));
            (a, b)
        };
        let segments = Segments::open(&path, 0).unwrap();
        assert_eq!(segments.read(&b).unwrap(), vec![7u8; 1000]);
        // Appends after a reopen go to a new segment, never to the tail of an old one.
        let c = segments.append(&[b"after".as_slice()]).unwrap();
        assert_eq!((c.segment, c.position), (1, 0));
        // A run that appended nothing leaves no empty segment behind once the store is opened again.
        drop(Segments::open(&path, 0).unwrap());
        drop(Segments::open(&path, 0).unwrap());
        assert_eq!(list(&path).unwrap(), [0, 1, 3], "segments 0 and 1 and the newest, empty one");
        assert!(!c.durable_by(Checkpoint { segment: 0, position: u64::MAX }));
        assert_eq!(segments.read(&a).unwrap(), b"first record".as_slice());
    }

    #[test]
    fn a_record_appended_in_parts_is_the_record_of_their_concatenation() {
        let dir = tempfile::tempdir().unwrap();
        let segments = Segments::open(dir.path(), 0).unwrap();
        let parts =
            segments.append(&[b"head|".as_slice(), b"".as_slice(), b"sealed batch".as_slice()]).unwrap();
        let whole = segments.append(&[b"head|sealed batch".as_slice()]).unwrap();
        assert_eq!((parts.len, parts.crc), (whole.len, whole.crc));
        assert_eq!(segments.read(&parts).unwrap(), Bytes::from_static(b"head|sealed batch"));
        let file = std::fs::read(dir.path().join(segment_name(0))).unwrap();
        let (first, second) = file.split_at(whole.position as usize);
        assert_eq!(first, second, "the same bytes on disk");
        assert!(matches!(segments.append(&[b"".as_slice()]), Err(Error::Storage(_))), "no empty record");
    }

    #[test]
    fn check_tells_intact_damaged_torn_missing_and_replaced_records_apart() {
        let dir = tempfile::tempdir().unwrap();
        let segments = Segments::open(dir.path(), 0).unwrap();
        let at = segments.append(&[b"0123456789".as_slice()]).unwrap();
        segments.sync().unwrap();
        assert_eq!(segments.check(&at).unwrap(), Check::Intact(Bytes::from_static(b"0123456789")));
        // The record there is intact but is not the one named: bytes the store did not put there.
        let replaced = Check::Replaced { len: at.len, crc: at.crc };
        assert_eq!(segments.check(&Location { crc: at.crc ^ 1, ..at }).unwrap(), replaced);
        assert_eq!(segments.check(&Location { len: 9, ..at }).unwrap(), replaced);
        assert_eq!(segments.check(&Location { position: 1, ..at }).unwrap(), Check::Torn);
        assert_eq!(segments.check(&Location { segment: 9, ..at }).unwrap(), Check::Missing);
        assert_eq!(segments.check(&Location { position: 100, ..at }).unwrap(), Check::Missing);
        // A flipped bit in the bytes.
        let path = dir.path().join(segment_name(0));
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[12] ^= 4;
        std::fs::write(&path, &bytes).unwrap();
        assert_eq!(segments.check(&at).unwrap(), Check::Corrupt);
        assert!(matches!(segments.read(&at), Err(Error::Storage(_))));
        // Torn: the file ends inside the record.
        let file = OpenOptions::new().write(true).open(&path).unwrap();
        file.set_len(at.end() - 1).unwrap();
        assert_eq!(segments.check(&at).unwrap(), Check::Torn);
    }

    #[test]
    fn every_sync_names_its_checkpoint_in_the_synced_file() {
        let dir = tempfile::tempdir().unwrap();
        {
            let segments = Segments::open(dir.path(), 0).unwrap();
            assert_eq!(segments.synced_at_open(), None);
            segments.append(&[b"one".as_slice()]).unwrap();
            let checkpoint = segments.sync().unwrap();
            assert_eq!(read_synced(dir.path()), Some(checkpoint));
            assert_eq!(segments.last_synced(), checkpoint);
        }
        let segments = Segments::open(dir.path(), 0).unwrap();
        assert_eq!(segments.synced_at_open(), Some(Checkpoint { segment: 0, position: 11 }));
        // A copy that fails its CRC says nothing.
        let path = dir.path().join(SYNCED_FILE);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[10] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        assert_eq!(read_synced(dir.path()), None);
        assert_eq!(read_synced(&dir.path().join("nowhere")), None);
    }

    #[test]
    fn segments_roll_at_the_size_limit() {
        let dir = tempfile::tempdir().unwrap();
        let segments = Segments::open(dir.path(), 0).unwrap();
        let big = vec![1u8; 1024 * 1024];
        let mut locations = Vec::new();
        for _ in 0..70 {
            locations.push(segments.append(&[&big[..]]).unwrap());
        }
        let last = locations.last().unwrap();
        assert_eq!(last.segment, 1, "64 records of 1 MiB fill segment 0");
        assert_eq!(segments.sync().unwrap().segment, 1);
        assert!(locations.iter().all(|l| segments.read(l).unwrap() == big));
    }

    #[test]
    fn an_append_that_would_eat_into_the_reserve_fails_with_storage_full_and_writes_nothing() {
        // A reserve larger than any file system: the free space (which other processes change while the
        // test runs) can never cover it.
        let dir = tempfile::tempdir().unwrap();
        assert!(available_bytes(dir.path()).unwrap() < u64::MAX / 2);
        let segments = Segments::open(dir.path(), u64::MAX / 2).unwrap();
        assert!(matches!(segments.append(&[b"x".as_slice()]), Err(Error::StorageFull)));
        let file = dir.path().join(segment_name(0));
        assert_eq!(std::fs::metadata(file).unwrap().len(), 0);
        // Without a reserve the same append goes through.
        assert!(Segments::open(&dir.path().join("other"), 0).unwrap().append(&[b"x".as_slice()]).is_ok());
    }

    #[test]
    fn truncate_cuts_an_earlier_segment_never_the_active_one() {
        let dir = tempfile::tempdir().unwrap();
        let at = Segments::open(dir.path(), 0).unwrap().append(&[&[5u8; 100][..]]).unwrap();
        let segments = Segments::open(dir.path(), 0).unwrap();
        assert_eq!(segments.earlier().unwrap(), [0]);
        segments.truncate(0, 50).unwrap();
        assert_eq!(segments.check(&at).unwrap(), Check::Torn);
        assert!(segments.truncate(segments.active().unwrap(), 0).is_err());
        // A poisoned store takes no more appends.
        assert_eq!(segments.poisoned(), None);
        segments.poison("test".into());
        assert!(matches!(segments.append(&[b"x".as_slice()]), Err(Error::Storage(_))));
        assert_eq!(segments.poisoned().as_deref(), Some("test"));
    }

    #[test]
    fn segment_names_sort_as_numbers_and_parse_back() {
        assert_eq!(segment_number(&segment_name(42)), Some(42));
        assert_eq!(segment_number("42.seg"), None);
        assert!(segment_name(9) < segment_name(10));
    }
}
