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
//! A segment is **rolled** (the next number is created) once it holds [`SEGMENT_BYTES`] or more, and at every
//! open: appends never go to a file that existed before the process started, so a torn tail left by a crash
//! is never appended to, and the recovery below only has to judge records, never repair files.
//!
//! # Durability
//!
//! [`Segments::sync`] fdatasyncs every segment written since the last sync (the rolled ones and the active
//! one) and, if a segment was created, the folder; it returns the [`Checkpoint`] up to which every segment is
//! now durable. [`Segments::replay`] reads the intact records from a checkpoint on, which is how the engine
//! rebuilds what its index lacks after a crash: the segments are the log, the index a cache of it.
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
//! Every later append and sync fails with [`Error::Storage`]; the broker must be restarted, and the open
//! recovery drops whatever was not durable (nothing that was acknowledged).

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, Write};
#[cfg(unix)]
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use super::io_error;
use crate::{Error, Result};

/// A segment is rolled once it holds this many bytes (64 MiB).
pub const SEGMENT_BYTES: u64 = 64 * 1024 * 1024;
/// Size of a record's header: `len u32 | crc32 u32`.
pub const RECORD_HEADER: u64 = 8;
/// Most open read handles kept; beyond it the cache starts afresh.
const MAX_READERS: usize = 256;

/// Where a record is: its segment, the position of its header, the length of its bytes and their CRC.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Location {
    /// Number of the segment file.
    pub segment: u64,
    /// Position of the record's header in the segment.
    pub position: u64,
    /// Length of the record's bytes (without the header).
    pub len: u32,
    /// CRC-32 of the record's bytes.
    pub crc: u32,
}

impl Location {
    /// Encoded size: segment, position, len, crc.
    pub const ENCODED_LEN: usize = 8 + 8 + 4 + 4;

    /// The position right after the record.
    pub fn end(&self) -> u64 {
        self.position.saturating_add(RECORD_HEADER).saturating_add(self.len.into())
    }

    /// Whether the record lies entirely within what `checkpoint` says is durable.
    pub fn durable_by(&self, checkpoint: Checkpoint) -> bool {
        self.segment < checkpoint.segment
            || (self.segment == checkpoint.segment && self.end() <= checkpoint.position)
    }

    /// Fixed-size big-endian encoding.
    pub fn encode(&self) -> [u8; Self::ENCODED_LEN] {
        let mut out = [0u8; Self::ENCODED_LEN];
        out[..8].copy_from_slice(&self.segment.to_be_bytes());
        out[8..16].copy_from_slice(&self.position.to_be_bytes());
        out[16..20].copy_from_slice(&self.len.to_be_bytes());
        out[20..].copy_from_slice(&self.crc.to_be_bytes());
        out
    }

    /// Inverse of [`encode`](Self::encode); `None` unless `bytes` is exactly one encoded location.
    pub fn decode(bytes: &[u8]) -> Option<Location> {
        let bytes: &[u8; Self::ENCODED_LEN] = bytes.try_into().ok()?;
        let (segment, rest) = bytes.split_first_chunk::<8>()?;
        let (position, rest) = rest.split_first_chunk::<8>()?;
        let (len, rest) = rest.split_first_chunk::<4>()?;
        let crc: &[u8; 4] = rest.try_into().ok()?;
        Some(Location {
            segment: u64::from_be_bytes(*segment),
            position: u64::from_be_bytes(*position),
            len: u32::from_be_bytes(*len),
            crc: u32::from_be_bytes(*crc),
        })
    }
}

/// Everything before `position` in `segment`, and every earlier segment, is durable.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Checkpoint {
    /// Number of the segment.
    pub segment: u64,
    /// Durable length of that segment.
    pub position: u64,
}

impl Checkpoint {
    /// Encoded size: segment, position.
    pub const ENCODED_LEN: usize = 16;

    /// Fixed-size big-endian encoding.
    pub fn encode(&self) -> [u8; Self::ENCODED_LEN] {
        let mut out = [0u8; Self::ENCODED_LEN];
        out[..8].copy_from_slice(&self.segment.to_be_bytes());
        out[8..].copy_from_slice(&self.position.to_be_bytes());
        out
    }

    /// Inverse of [`encode`](Self::encode).
    pub fn decode(bytes: &[u8]) -> Option<Checkpoint> {
        let bytes: &[u8; Self::ENCODED_LEN] = bytes.try_into().ok()?;
        let (segment, position) = bytes.split_first_chunk::<8>()?;
        let position: &[u8; 8] = position.try_into().ok()?;
        Some(Checkpoint { segment: u64::from_be_bytes(*segment), position: u64::from_be_bytes(*position) })
    }
}

/// The segment files of one store. Appends and syncs come from the store's single writer; reads may run
/// concurrently with them from any thread.
#[derive(Debug)]
pub struct Segments {
    dir: PathBuf,
    reserve_bytes: u64,
    writer: Mutex<Writer>,
    readers: Mutex<HashMap<u64, Arc<File>>>,
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
}

fn segment_name(number: u64) -> String {
    format!("{number:020}.seg")
}

fn segment_number(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".seg")?;
    (digits.len() == 20 && digits.bytes().all(|b| b.is_ascii_digit())).then(|| digits.parse().ok())?
}

fn create_segment(dir: &Path, number: u64) -> Result<File> {
    let path = dir.join(segment_name(number));
    OpenOptions::new()
        .read(true)
        .append(true)
        .create_new(true)
        .open(&path)
        .map_err(|e| io_error(&format!("creating {}", path.display()), &e))
}

/// fsyncs a directory, so that the entries created or renamed in it survive a crash.
pub fn sync_dir(dir: &Path) -> Result<()> {
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

/// Bytes available to unprivileged writers on the file system holding `dir`.
fn available_bytes(dir: &Path) -> Result<u64> {
    let stat = rustix::fs::statvfs(dir)
        .map_err(|e| io_error(&format!("statvfs of {}", dir.display()), &io::Error::from(e)))?;
    Ok(stat.f_bavail.saturating_mul(stat.f_frsize))
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
        Ok(Segments {
            dir: dir.to_path_buf(),
            reserve_bytes,
            writer: Mutex::new(Writer {
                active,
                file,
                len: 0,
                rolled: Vec::new(),
                created: true,
                poisoned: None,
            }),
            readers: Mutex::new(HashMap::new()),
        })
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

    /// Appends `bytes` as one record and returns where it is. Not durable until [`sync`](Self::sync).
    /// On an error nothing of the record remains in the segment.
    pub fn append(&self, bytes: &[u8]) -> Result<Location> {
        let len = u32::try_from(bytes.len()).map_err(|_| Error::LimitExceeded("stored batch size"))?;
        let mut w = self.writer()?;
        let needed = RECORD_HEADER.saturating_add(len.into()).saturating_add(self.reserve_bytes);
        if available_bytes(&self.dir)? < needed {
            return Err(Error::StorageFull);
        }
        if w.len >= SEGMENT_BYTES {
            let next = w.active.saturating_add(1);
            let file = create_segment(&self.dir, next)?;
            let old = std::mem::replace(&mut w.file, file);
            w.rolled.push(old);
            w.active = next;
            w.len = 0;
            w.created = true;
        }
        let crc = crc32fast::hash(bytes);
        let mut header = [0u8; RECORD_HEADER as usize];
        header[..4].copy_from_slice(&len.to_be_bytes());
        header[4..].copy_from_slice(&crc.to_be_bytes());
        let position = w.len;
        let written = w.file.write_all(&header).and_then(|()| w.file.write_all(bytes));
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
                Ok(Checkpoint { segment: w.active, position: w.len })
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

    /// Calls `f` with every intact record from `from` on, in the order they were appended: in each segment
    /// numbered `from.segment` or later (from `from.position` in that one), up to the end of the segment or
    /// its first record that is torn or fails its CRC (nothing after it in that segment was ever
    /// acknowledged). The active segment is skipped: it was created by this process.
    pub fn replay(&self, from: Checkpoint, mut f: impl FnMut(Location, &[u8]) -> Result<()>) -> Result<()> {
        let active =
            self.writer.lock().map_err(|_| Error::Storage("segment writer lock poisoned".into()))?.active;
        let mut numbers = Vec::new();
        let listing = std::fs::read_dir(&self.dir)
            .map_err(|e| io_error(&format!("listing {}", self.dir.display()), &e))?;
        for entry in listing {
            let entry = entry.map_err(|e| io_error(&format!("listing {}", self.dir.display()), &e))?;
            if let Some(n) = entry.file_name().to_str().and_then(segment_number) {
                if n >= from.segment && n != active {
                    numbers.push(n);
                }
            }
        }
        numbers.sort_unstable();
        for segment in numbers {
            let start = if segment == from.segment { from.position } else { 0 };
            let path = self.dir.join(segment_name(segment));
            let read_error = |e: io::Error| io_error(&format!("reading {}", path.display()), &e);
            let mut file = File::open(&path).map_err(read_error)?;
            file.seek(io::SeekFrom::Start(start)).map_err(read_error)?;
            let mut bytes = Vec::new();
            file.read_to_end(&mut bytes).map_err(read_error)?;
            let mut position = start;
            while let Some((location, body)) = record_at(&bytes, segment, start, position) {
                f(location, body)?;
                position = location.end();
            }
        }
        Ok(())
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

    /// The bytes of the record at `at`, checked against its length and CRC.
    pub fn read(&self, at: &Location) -> Result<Vec<u8>> {
        self.read_checked(at)?.ok_or_else(|| {
            Error::Storage(format!(
                "corrupt store: the record at {}:{} does not match its index entry",
                segment_name(at.segment),
                at.position
            ))
        })
    }

    /// The bytes of the record at `at`, or `None` if the segment does not hold that record intact (missing,
    /// short, or a header or CRC that does not match): what recovery asks of records it cannot vouch for.
    pub fn read_checked(&self, at: &Location) -> Result<Option<Vec<u8>>> {
        let file = match self.reader(at.segment) {
            Ok(file) => file,
            Err(_) if !self.dir.join(segment_name(at.segment)).exists() => return Ok(None),
            Err(e) => return Err(e),
        };
        let mut record =
            vec![0u8; usize::try_from(at.end().saturating_sub(at.position)).unwrap_or(usize::MAX)];
        match read_exact_at(&file, &mut record, at.position) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(e) => return Err(io_error(&format!("reading segment {}", at.segment), &e)),
        }
        let bytes = record.split_off(RECORD_HEADER as usize);
        let mut expected = [0u8; RECORD_HEADER as usize];
        expected[..4].copy_from_slice(&at.len.to_be_bytes());
        expected[4..].copy_from_slice(&at.crc.to_be_bytes());
        Ok((record == expected && crc32fast::hash(&bytes) == at.crc).then_some(bytes))
    }
}

/// The intact record at `position` of `segment`, whose bytes from `base` on are `bytes`, if there is one.
fn record_at(bytes: &[u8], segment: u64, base: u64, position: u64) -> Option<(Location, &[u8])> {
    let start = usize::try_from(position.checked_sub(base)?).ok()?;
    let header = bytes.get(start..start.checked_add(RECORD_HEADER as usize)?)?;
    let len = u32::from_be_bytes(header.get(..4)?.try_into().ok()?);
    let crc = u32::from_be_bytes(header.get(4..)?.try_into().ok()?);
    let body_start = start + RECORD_HEADER as usize;
    let body = bytes.get(body_start..body_start.checked_add(usize::try_from(len).ok()?)?)?;
    (crc32fast::hash(body) == crc).then_some((Location { segment, position, len, crc }, body))
}

#[cfg(unix)]
fn read_exact_at(file: &File, buf: &mut [u8], position: u64) -> io::Result<()> {
    file.read_exact_at(buf, position)
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
            let a = segments.append(b"first record").unwrap();
            let b = segments.append(&[7u8; 1000]).unwrap();
            assert_eq!((a.segment, a.position, b.position), (0, 0, a.end()));
            assert_eq!(segments.read(&a).unwrap(), b"first record");
            let checkpoint = segments.sync().unwrap();
            assert_eq!(checkpoint, Checkpoint { segment: 0, position: b.end() });
            assert!(a.durable_by(checkpoint) && b.durable_by(checkpoint));
            (a, b)
        };
        let segments = Segments::open(&path, 0).unwrap();
        assert_eq!(segments.read(&b).unwrap(), vec![7u8; 1000]);
        // Appends after a reopen go to a new segment, never to the tail of an old one.
        let c = segments.append(b"after").unwrap();
        assert_eq!((c.segment, c.position), (1, 0));
        // A run that appended nothing leaves no empty segment behind once the store is opened again.
        drop(Segments::open(&path, 0).unwrap());
        drop(Segments::open(&path, 0).unwrap());
        let names: Vec<_> = std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names.len(), 3, "segments 0 and 1 and the newest, empty one: {names:?}");
        assert!(!c.durable_by(Checkpoint { segment: 0, position: u64::MAX }));
        assert_eq!(segments.read(&a).unwrap(), b"first record");
    }

    #[test]
    fn a_record_that_does_not_match_its_location_is_not_returned() {
        let dir = tempfile::tempdir().unwrap();
        let segments = Segments::open(dir.path(), 0).unwrap();
        let at = segments.append(b"0123456789").unwrap();
        segments.sync().unwrap();
        assert!(segments.read_checked(&Location { crc: at.crc ^ 1, ..at }).unwrap().is_none());
        assert!(segments.read_checked(&Location { len: 9, ..at }).unwrap().is_none());
        assert!(segments.read_checked(&Location { position: 1, ..at }).unwrap().is_none());
        assert!(segments.read_checked(&Location { segment: 9, ..at }).unwrap().is_none());
        // Torn: the file ends inside the record.
        let file = OpenOptions::new().write(true).open(dir.path().join(segment_name(0))).unwrap();
        file.set_len(at.end() - 1).unwrap();
        assert!(segments.read_checked(&at).unwrap().is_none());
        assert!(matches!(segments.read(&at), Err(Error::Storage(_))));
    }

    #[test]
    fn segments_roll_at_the_size_limit() {
        let dir = tempfile::tempdir().unwrap();
        let segments = Segments::open(dir.path(), 0).unwrap();
        let big = vec![1u8; 1024 * 1024];
        let mut locations = Vec::new();
        for _ in 0..70 {
            locations.push(segments.append(&big).unwrap());
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
        assert!(matches!(segments.append(b"x"), Err(Error::StorageFull)));
        let file = dir.path().join(segment_name(0));
        assert_eq!(std::fs::metadata(file).unwrap().len(), 0);
        // Without a reserve the same append goes through.
        assert!(Segments::open(&dir.path().join("other"), 0).unwrap().append(b"x").is_ok());
    }

    #[test]
    fn replay_yields_intact_records_and_stops_each_segment_at_its_first_bad_one() {
        let dir = tempfile::tempdir().unwrap();
        let mut written = Vec::new();
        {
            let segments = Segments::open(dir.path(), 0).unwrap();
            for i in 0..4u8 {
                written.push((segments.append(&[i; 100]).unwrap(), vec![i; 100]));
            }
        }
        {
            // A second run: segment 1, two records.
            let segments = Segments::open(dir.path(), 0).unwrap();
            for i in 4..6u8 {
                written.push((segments.append(&[i; 100]).unwrap(), vec![i; 100]));
            }
        }
        // Tear segment 0 inside its third record: records 2 and 3 are gone, segment 1 is replayed whole.
        let file = OpenOptions::new().write(true).open(dir.path().join(segment_name(0))).unwrap();
        file.set_len(written[2].0.position + 50).unwrap();
        let segments = Segments::open(dir.path(), 0).unwrap();
        let replay = |from| {
            let mut seen = Vec::new();
            segments
                .replay(from, |at, body| {
                    seen.push((at, body.to_vec()));
                    Ok(())
                })
                .unwrap();
            seen
        };
        let expected: Vec<_> = [0, 1, 4, 5].iter().map(|&i| written[i].clone()).collect();
        assert_eq!(replay(Checkpoint::default()), expected);
        let from_second = Checkpoint { segment: 0, position: written[1].0.position };
        assert_eq!(replay(from_second), expected[1..]);
        assert_eq!(replay(Checkpoint { segment: 1, position: written[5].0.position }), expected[3..]);
        // A poisoned store takes no more appends.
        segments.poison("test".into());
        assert!(matches!(segments.append(b"x"), Err(Error::Storage(_))));
    }

    #[test]
    fn locations_and_checkpoints_round_trip() {
        let at = Location { segment: 3, position: 1 << 33, len: 70_000, crc: 0xDEAD_BEEF };
        assert_eq!(Location::decode(&at.encode()), Some(at));
        assert_eq!(Location::decode(&at.encode()[1..]), None);
        let c = Checkpoint { segment: 9, position: 12 };
        assert_eq!(Checkpoint::decode(&c.encode()), Some(c));
        assert_eq!(Checkpoint::decode(&[0; 15]), None);
        assert_eq!(segment_number(&segment_name(42)), Some(42));
        assert_eq!(segment_number("42.seg"), None);
    }
}
