//! Backup and restore of a data folder: [`backup`] takes a consistent copy of a data folder while a broker
//! runs on it (`sealpost-broker backup`), [`restore`] puts one into an empty folder (`sealpost-broker
//! restore`), where the next start builds the index from it.
//!
//! # What a backup is
//!
//! In layout 3 and later every record the store keeps (batches, topic policies, durable subscriptions'
//! offsets, losses) is in the segment files, and the index can be rebuilt from them alone. So a backup is:
//!
//! ```text
//! <backup>/segments/<number>.seg   the segment files up to the checkpoint (the last one cut there)
//! <backup>/MANIFEST                 written last, fsynced: what is in the backup (below)
//! ```
//!
//! The **consistency point** is the checkpoint the `segments/synced` side file names when the backup
//! starts (or a later one, below) ([`segment`](super::segment)): every byte before it was covered by a
//! successful fdatasync, and every acknowledgement follows the sync that covers its batch and the side
//! file's rewrite, so the backup holds every batch, policy and durable offset acknowledged before it
//! started, and some acknowledged while it ran (a broker that cannot write the side file logs a warning at
//! every sync; a backup is then only as recent as the file). The side file is rewritten in place while the
//! broker runs: it is read with its CRC, and again (up to [`SYNCED_TRIES`] times) while it reads torn.
//! Every segment numbered below the checkpoint's is closed (a broker only appends to the newest, and a
//! sync covered it whole before the side file named a later one), so it is copied whole; the checkpoint's
//! own segment up to the checkpoint.
//!
//! Segment numbers need not be contiguous, and a segment file that is gone when the copy comes to it is
//! skipped. Retention deletes a segment only after it appended what the segment still held that is needed
//! (policies, durable offsets, chain heads, its marks) to the active segment and synced; those records may
//! lie past the checkpoint the backup started from. So after a round in which a segment went missing the
//! backup reads the side file again and copies on, from where it stopped to the new checkpoint, in at most
//! [`BACKUP_ROUNDS`] rounds. Segments are listed before and after the side file is read, so one removed
//! before the first listing was removed after a sync the checkpoint covers. A file already opened is read
//! to its end whatever happens to its name.
//!
//! ```text
//! MANIFEST (ASCII lines)
//! sealpost-backup 1                      the version of this manifest
//! store-format <n>                       the data folder's on-disk format (format.rs)
//! broker <version>                       the broker that took the backup
//! created-unix <seconds>                 when it was taken
//! checkpoint <segment> <position>        the consistency point
//! segment <number> <bytes> <sha256 hex>  one line per segment file copied, in order
//! sha256 <hex>                           SHA-256 of every byte of the manifest before this line
//! ```
//!
//! A backup without a `MANIFEST`, or whose manifest does not end with its own checksum, never completed
//! and is refused by [`restore`]; so is one whose files do not have the sizes and SHA-256 the manifest
//! states, and one of an unknown manifest version or a newer store format
//! ([`Error::UnsupportedFormat`]).
//!
//! # What a backup does not contain
//!
//! The index (sled: rebuilt from the segments at the first start after a restore, which takes a walk of
//! every segment), the audit log, and the keys, certificates, ACL and configuration: back those up on
//! their own. A layout-2 folder (policies and durable offsets in the index only) is refused: a start of
//! this broker migrates it to layout 3 first.
//!
//! # Restore
//!
//! [`restore`] reads and checks the manifest, refuses a target folder that is not empty (nothing is
//! overwritten), checks every file against the manifest, then copies them into `segments.restoring/`,
//! checking them again as it copies, writes the side file naming the backup's checkpoint (so recovery
//! treats every copied byte as acknowledged, none as a torn tail), fsyncs the files and the folder, renames
//! it to `segments/` and writes the `FORMAT` file. A restore that fails leaves a folder that is not empty:
//! remove it and restore again.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use sha2::{Digest as _, Sha256};

use super::format;
use super::record::Record;
use super::segment::{self, read_synced, segment_name, sync_dir, Checkpoint, Walked, SYNCED_FILE};
use crate::store::io_error;
use crate::{Error, Result};

/// The manifest's file name in a backup.
pub const MANIFEST_FILE: &str = "MANIFEST";
/// The version of the manifest this broker writes and reads.
pub const MANIFEST_VERSION: u32 = 1;
/// How many times the side file is read while it reads torn (the broker rewrites it in place).
pub const SYNCED_TRIES: u32 = 100;
const SYNCED_RETRY: Duration = Duration::from_millis(10);
/// Most rounds a backup copies in while the store removes segments under it (see the module documentation).
pub const BACKUP_ROUNDS: u32 = 8;
/// A manifest larger than this is refused unread (16 MiB: about 150,000 segment files).
const MAX_MANIFEST_BYTES: u64 = 16 * 1024 * 1024;
const COPY_BUFFER: usize = 1024 * 1024;
const SEGMENTS: &str = "segments";
const STAGING: &str = "segments.restoring";

/// One segment file of a backup.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SegmentCopy {
    /// The segment's number.
    pub number: u64,
    /// Its length in the backup.
    pub len: u64,
    /// SHA-256 of its bytes.
    pub sha256: [u8; 32],
}

/// What a backup holds: its `MANIFEST`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Manifest {
    /// The on-disk format of the data folder the segments come from.
    pub store_format: u32,
    /// The version of the broker that took it.
    pub broker: String,
    /// When it was taken, in seconds since the Unix epoch.
    pub created_unix: u64,
    /// The consistency point: the side file's checkpoint when the backup started.
    pub checkpoint: Checkpoint,
    /// The segment files, in order.
    pub segments: Vec<SegmentCopy>,
}

/// What [`backup`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackupReport {
    /// The manifest it wrote.
    pub manifest: Manifest,
    /// Segments listed when the backup started that were gone when it came to them.
    pub skipped: Vec<u64>,
}

impl Manifest {
    /// The manifest's bytes, its own checksum last.
    pub fn encode(&self) -> Vec<u8> {
        let mut text = format!(
            "sealpost-backup {MANIFEST_VERSION}\nstore-format {}\nbroker {}\ncreated-unix {}\ncheckpoint {} {}\n",
            self.store_format,
            self.broker.split_whitespace().collect::<Vec<_>>().join("-"),
            self.created_unix,
            self.checkpoint.segment,
            self.checkpoint.position,
        );
        for s in &self.segments {
            text.push_str(&format!("segment {} {} {}\n", s.number, s.len, hex::encode(s.sha256)));
        }
        let sum = hex::encode(Sha256::digest(text.as_bytes()));
        text.push_str(&format!("sha256 {sum}\n"));
        text.into_bytes()
    }

    /// Checks the manifest's bytes (its own checksum, then its version, then every line) and parses them.
    /// A newer store format is [`Error::UnsupportedFormat`]; anything else wrong is [`Error::Backup`].
    pub fn decode(bytes: &[u8]) -> Result<Manifest> {
        let bad = |what: &str| Error::Backup(format!("the manifest {what}"));
        let text = std::str::from_utf8(bytes).map_err(|_| bad("is not text"))?;
        let body_len = text
            .trim_end_matches('\n')
            .rfind('\n')
            .map(|i| i + 1)
            .ok_or_else(|| bad("is cut short (the backup never completed)"))?;
        let (body, last) = text.split_at(body_len);
        let sum = last
            .strip_prefix("sha256 ")
            .map(str::trim_end)
            .ok_or_else(|| bad("does not end with its checksum (the backup never completed)"))?;
        if hex::encode(Sha256::digest(body.as_bytes())) != sum {
            return Err(bad("does not match its checksum (damaged)"));
        }
        let mut lines = body.lines();
        let mut field = |name: &str| -> Result<Vec<&str>> {
            let line = lines.next().ok_or_else(|| bad(&format!("lacks its {name} line")))?;
            let mut words = line.split(' ');
            match words.next() {
                Some(word) if word == name => Ok(words.collect()),
                _ => Err(bad(&format!("has {line:?} where its {name} line should be"))),
            }
        };
        let number = |word: Option<&&str>, what: &str| -> Result<u64> {
            word.and_then(|w| w.parse().ok()).ok_or_else(|| bad(&format!("has a bad {what}")))
        };
        let version = number(field("sealpost-backup")?.first(), "version")?;
        if version != u64::from(MANIFEST_VERSION) {
            return Err(Error::Backup(format!(
                "the backup's manifest is version {version}; this broker reads version {MANIFEST_VERSION} \
                 (upgrade the broker)"
            )));
        }
        let store_format = number(field("store-format")?.first(), "store format")?;
        let store_format = u32::try_from(store_format).map_err(|_| bad("has a bad store format"))?;
        format::check(store_format)?;
        let broker = field("broker")?.join(" ");
        let created_unix = number(field("created-unix")?.first(), "time")?;
        let checkpoint = field("checkpoint")?;
        let checkpoint = Checkpoint {
            segment: number(checkpoint.first(), "checkpoint")?,
            position: number(checkpoint.get(1), "checkpoint")?,
        };
        let mut segments: Vec<SegmentCopy> = Vec::new();
        for line in lines {
            let words: Vec<&str> = line.split(' ').collect();
            let (Some(&"segment"), Some(hash), 4) = (words.first(), words.get(3), words.len()) else {
                return Err(bad(&format!("has a line it should not: {line:?}")));
            };
            let mut sha256 = [0u8; 32];
            hex::decode_to_slice(hash, &mut sha256).map_err(|_| bad("has a bad SHA-256"))?;
            let copy = SegmentCopy {
                number: number(words.get(1), "segment number")?,
                len: number(words.get(2), "segment length")?,
                sha256,
            };
            if segments.last().is_some_and(|before| before.number >= copy.number)
                || copy.number > checkpoint.segment
            {
                return Err(bad("lists its segments out of order, or past its checkpoint"));
            }
            segments.push(copy);
        }
        if store_format < 3 {
            return Err(bad("names a store format older than 3, which no backup can hold"));
        }
        Ok(Manifest { store_format, broker, created_unix, checkpoint, segments })
    }
}

/// Backs up the data folder `data_dir` (a broker may be running on it) into `to`, which must be missing
/// or empty. See the module documentation.
pub fn backup(data_dir: &Path, to: &Path) -> Result<BackupReport> {
    let source = data_dir.join(SEGMENTS);
    if !source.is_dir() {
        return Err(Error::Backup(format!(
            "{} has no segments: not a Sealpost data folder",
            data_dir.display()
        )));
    }
    let store_format = source_format(data_dir)?;
    prepare_empty(to)?;
    let target = to.join(SEGMENTS);
    std::fs::create_dir(&target).map_err(|e| io_error(&format!("creating {}", target.display()), &e))?;
    let mut copies: BTreeMap<u64, Copied> = BTreeMap::new();
    let mut skipped = Vec::new();
    let mut from = Checkpoint::default();
    let mut round = 0;
    let checkpoint = loop {
        round += 1;
        // Listed before and after the checkpoint is read: a segment removed before the first listing
        // was removed after a sync that the checkpoint covers (its records carried forward before it).
        let before = segment::list(&source)?;
        let checkpoint = read_checkpoint(&source)?;
        if checkpoint < from {
            return Err(Error::Backup(format!(
                "{} went back while the backup ran (did the broker restart on another copy?); take it again",
                source.join(SYNCED_FILE).display()
            )));
        }
        let numbers: BTreeSet<u64> = before
            .into_iter()
            .chain(segment::list(&source)?)
            .filter(|&n| n >= from.segment && n <= checkpoint.segment)
            .collect();
        let mut vanished = false;
        for number in numbers {
            let start = if number == from.segment { from.position } else { 0 };
            let end = (number == checkpoint.segment).then_some(checkpoint.position);
            if !copy_segment(&source, &target, number, start, end, &mut copies)? {
                vanished = true;
                skipped.push(number);
            }
        }
        if !vanished {
            break checkpoint;
        }
        // The store removed a segment while it was copied, after carrying forward what it still needed
        // and syncing: the next checkpoint covers those records. Copy on to it.
        if round >= BACKUP_ROUNDS {
            return Err(Error::Backup(format!(
                "segment files kept being removed while the backup ran ({round} rounds); take it again"
            )));
        }
        from = checkpoint;
    };
    sync_dir(&target)?;
    let manifest = Manifest {
        store_format,
        broker: env!("CARGO_PKG_VERSION").to_owned(),
        created_unix: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        checkpoint,
        segments: copies
            .into_iter()
            .map(|(number, c)| SegmentCopy { number, len: c.len, sha256: c.hasher.finalize().into() })
            .collect(),
    };
    write_durably(to, MANIFEST_FILE, &manifest.encode())?;
    Ok(BackupReport { manifest, skipped })
}

/// Restores the backup in `from` into `data_dir`, which must be missing or empty, and returns its
/// manifest. See the module documentation.
pub fn restore(from: &Path, data_dir: &Path) -> Result<Manifest> {
    let manifest = read_manifest(from)?;
    prepare_empty(data_dir)?;
    let source = from.join(SEGMENTS);
    for copy in &manifest.segments {
        let path = source.join(segment_name(copy.number));
        let mut file = open_backup_file(&path, copy)?;
        check_sum(&path, copy, hash_copy(&mut file, copy.len, None, &path)?)?;
    }
    let staging = data_dir.join(STAGING);
    std::fs::create_dir(&staging).map_err(|e| io_error(&format!("creating {}", staging.display()), &e))?;
    for copy in &manifest.segments {
        let path = source.join(segment_name(copy.number));
        let mut file = open_backup_file(&path, copy)?;
        let out_path = staging.join(segment_name(copy.number));
        let mut out = create_new(&out_path)?;
        check_sum(&path, copy, hash_copy(&mut file, copy.len, Some(&mut out), &path)?)?;
        out.sync_all().map_err(|e| io_error(&format!("fsync of {}", out_path.display()), &e))?;
    }
    // The side file names the backup's checkpoint, or the end of its last file if the checkpoint's own
    // segment was empty and not copied: every copied byte is then inside the acknowledged extent.
    let checkpoint = match manifest.segments.last() {
        Some(last) if last.number < manifest.checkpoint.segment => {
            Checkpoint { segment: last.number, position: last.len }
        }
        _ => manifest.checkpoint,
    };
    if !manifest.segments.is_empty() {
        write_durably(&staging, SYNCED_FILE, &segment::synced_bytes(checkpoint))?;
    }
    sync_dir(&staging)?;
    let segments = data_dir.join(SEGMENTS);
    std::fs::rename(&staging, &segments)
        .map_err(|e| io_error(&format!("renaming {} to {}", staging.display(), segments.display()), &e))?;
    sync_dir(data_dir)?;
    format::write(data_dir, manifest.store_format)?;
    Ok(manifest)
}

/// Reads and checks the manifest of the backup in `from`.
pub fn read_manifest(from: &Path) -> Result<Manifest> {
    let path = from.join(MANIFEST_FILE);
    let len = match std::fs::metadata(&path) {
        Ok(m) => m.len(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(Error::Backup(format!(
                "{} has no {MANIFEST_FILE}: not a backup, or one that never completed",
                from.display()
            )))
        }
        Err(e) => return Err(io_error(&format!("reading {}", path.display()), &e)),
    };
    if len > MAX_MANIFEST_BYTES {
        return Err(Error::Backup(format!("{} is too large to be a manifest", path.display())));
    }
    let bytes = std::fs::read(&path).map_err(|e| io_error(&format!("reading {}", path.display()), &e))?;
    Manifest::decode(&bytes)
}

/// The on-disk format of `data_dir`: its `FORMAT` file's, or, in a folder written before that file
/// existed, 4 if a layout mark is in its segments. A layout-2 folder (no mark) is refused.
fn source_format(data_dir: &Path) -> Result<u32> {
    let layout2 = || {
        Error::Backup(format!(
            "{} is in store layout 2 (topic policies and durable offsets in the index only), which cannot \
             be backed up while a broker runs: start this broker on it once (it migrates the folder to \
             layout 3), then take the backup",
            data_dir.display()
        ))
    };
    match format::read(data_dir)? {
        Some(version) => {
            format::check(version)?;
            if version < 3 {
                return Err(layout2());
            }
            Ok(version)
        }
        None => {
            let source = data_dir.join(SEGMENTS);
            for number in segment::list(&source)? {
                let bytes = match segment::read_from(&source, number, 0) {
                    Ok(bytes) => bytes,
                    Err(_) if !source.join(segment_name(number)).exists() => continue,
                    Err(e) => return Err(e),
                };
                let mut mark = None;
                segment::walk(&bytes, number, 0, u64::MAX, &Default::default(), |w| {
                    if let Walked::Record { body, unconfirmed: false, .. } = w {
                        if let (None, Some(Record::Layout(v))) = (mark, Record::decode(body)) {
                            mark = Some(v);
                        }
                    }
                    Ok(())
                })?;
                if let Some(v) = mark.filter(|&v| v >= 3) {
                    format::check(v)?;
                    // Written by a broker from before `FORMAT` files: format 3, 4 or 5, which this build reads.
                    return Ok(v.max(format::supported()));
                }
            }
            Err(layout2())
        }
    }
}

/// The checkpoint the side file in `segments` names, read again while it reads torn.
fn read_checkpoint(segments: &Path) -> Result<Checkpoint> {
    let path = segments.join(SYNCED_FILE);
    for _ in 0..SYNCED_TRIES {
        if !path.exists() {
            return Err(Error::Backup(format!(
                "{} is missing: no broker of layout 3 or later has synced this folder",
                path.display()
            )));
        }
        if let Some(checkpoint) = read_synced(segments) {
            return Ok(checkpoint);
        }
        std::thread::sleep(SYNCED_RETRY);
    }
    Err(Error::Backup(format!("{} did not read intact in {SYNCED_TRIES} tries", path.display())))
}

/// Creates `dir` if it is missing; refuses it if it holds anything.
fn prepare_empty(dir: &Path) -> Result<()> {
    match std::fs::read_dir(dir) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                return Err(Error::Backup(format!(
                    "{} is not empty: give a new or empty folder (nothing is overwritten)",
                    dir.display()
                )));
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(dir).map_err(|e| io_error(&format!("creating {}", dir.display()), &e))?;
            match dir.parent() {
                Some(parent) if !parent.as_os_str().is_empty() => sync_dir(parent),
                _ => Ok(()),
            }
        }
        Err(e) => Err(io_error(&format!("listing {}", dir.display()), &e)),
    }
}

/// What a backup has copied of one segment so far.
#[derive(Default)]
struct Copied {
    len: u64,
    hasher: Sha256,
}

/// Appends the bytes of segment `number` in `source` from `start` (where its copy in `target` ends) to
/// `end` (or to the end of the file) to that copy, fsynced, and updates `copies`; `false` if the segment
/// is gone.
fn copy_segment(
    source: &Path,
    target: &Path,
    number: u64,
    start: u64,
    end: Option<u64>,
    copies: &mut BTreeMap<u64, Copied>,
) -> Result<bool> {
    let path = source.join(segment_name(number));
    let mut file = match File::open(&path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(io_error(&format!("opening {}", path.display()), &e)),
    };
    let now = file.metadata().map_err(|e| io_error(&format!("reading {}", path.display()), &e))?.len();
    let end = end.unwrap_or(now);
    if now < end || end < start {
        return Err(Error::Backup(format!(
            "{} holds {now} bytes, fewer than the {} the backup needs: it was cut while the backup ran; \
             take it again",
            path.display(),
            end.max(start)
        )));
    }
    let copied = copies.entry(number).or_default();
    if copied.len != start {
        return Err(Error::Backup(format!(
            "the copy of {} holds {} bytes, not {start}",
            path.display(),
            copied.len
        )));
    }
    std::io::Seek::seek(&mut file, std::io::SeekFrom::Start(start))
        .map_err(|e| io_error(&format!("reading {}", path.display()), &e))?;
    let out_path = target.join(segment_name(number));
    let mut out = File::options()
        .create(true)
        .append(true)
        .open(&out_path)
        .map_err(|e| io_error(&format!("opening {}", out_path.display()), &e))?;
    copy_bytes(&mut file, end - start, Some(&mut out), &mut copied.hasher, &path)?;
    out.sync_all().map_err(|e| io_error(&format!("fsync of {}", out_path.display()), &e))?;
    copied.len = end;
    Ok(true)
}

/// Reads exactly `len` bytes of `from` (named `path`), writes them to `to` if given, and hashes them.
fn copy_bytes(
    from: &mut File,
    len: u64,
    mut to: Option<&mut File>,
    hasher: &mut Sha256,
    path: &Path,
) -> Result<()> {
    let mut buffer = vec![0u8; COPY_BUFFER];
    let mut left = len;
    while left > 0 {
        let want = usize::try_from(left).unwrap_or(usize::MAX).min(buffer.len());
        let chunk = &mut buffer[..want];
        from.read_exact(chunk).map_err(|e| {
            Error::Backup(format!("reading {} ({} of {len} bytes read): {e}", path.display(), len - left))
        })?;
        hasher.update(&*chunk);
        if let Some(out) = to.as_deref_mut() {
            out.write_all(chunk).map_err(|e| io_error("writing a copied segment", &e))?;
        }
        left -= want as u64;
    }
    Ok(())
}

/// [`copy_bytes`] with a hasher of its own: the SHA-256 of the bytes.
fn hash_copy(from: &mut File, len: u64, to: Option<&mut File>, path: &Path) -> Result<[u8; 32]> {
    let mut hasher = Sha256::new();
    copy_bytes(from, len, to, &mut hasher, path)?;
    Ok(hasher.finalize().into())
}

fn open_backup_file(path: &Path, copy: &SegmentCopy) -> Result<File> {
    let file = File::open(path)
        .map_err(|e| Error::Backup(format!("{} (named in the manifest): {e}", path.display())))?;
    let len = file.metadata().map_err(|e| io_error(&format!("reading {}", path.display()), &e))?.len();
    if len != copy.len {
        return Err(Error::Backup(format!(
            "{} holds {len} bytes, the manifest says {}: the backup is damaged or incomplete",
            path.display(),
            copy.len
        )));
    }
    Ok(file)
}

fn check_sum(path: &Path, copy: &SegmentCopy, sha256: [u8; 32]) -> Result<()> {
    if sha256 != copy.sha256 {
        return Err(Error::Backup(format!(
            "{} does not match its SHA-256 in the manifest: the backup is damaged",
            path.display()
        )));
    }
    Ok(())
}

fn create_new(path: &PathBuf) -> Result<File> {
    File::options()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(|e| io_error(&format!("creating {}", path.display()), &e))
}

/// Writes `bytes` to `name` in `dir`: to a temporary name, fsynced, renamed, and the folder fsynced.
fn write_durably(dir: &Path, name: &str, bytes: &[u8]) -> Result<()> {
    let path = dir.join(name);
    let temporary = dir.join(format!("{name}.tmp"));
    let written = (|| {
        let mut file = File::create(&temporary)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&temporary, &path)
    })();
    written.map_err(|e| io_error(&format!("writing {}", path.display()), &e))?;
    sync_dir(dir)
}

#[cfg(test)]
mod tests;
