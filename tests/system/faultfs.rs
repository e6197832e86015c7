//! A file system that fails fsync on demand: a FUSE passthrough to a backing folder, served by a thread of
//! the test process, for tests of what the broker does when its storage fails.
//!
//! [`FaultFs::mount`] mounts it (with the `fuser` crate, which mounts with mount(2) itself when run as root:
//! no libfuse, no fusermount) and returns once the kernel has it. Every operation the broker and sled use
//! (lookup, attributes, truncation, create, open, read, write, rename, unlink, directories, statfs) is
//! done on the backing folder as asked. [`FaultFs::fail_fsync`] switches the faults: while on, every
//! fsync and fdatasync of a file or folder fails with `EIO` and syncs nothing, as a disk that lost a write
//! reports it; [`FaultFs::failed_fsyncs`] counts them.
//!
//! It guarantees:
//! - **It fails, never skips.** A machine without FUSE (no `/dev/fuse`, not root) fails the test with the
//!   reason; CI runs as root with `/dev/fuse`.
//! - **Unmounted when dropped**, also when the test panics: a clean unmount, then `umount -l` if something
//!   still holds it, so nothing waits on a process that did not let go.
//!
//! It does not model what a real disk does after a failed fsync (the kernel may drop the dirty pages): the
//! data stays in the backing folder's page cache. The broker must not rely on either.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::{File, Metadata, OpenOptions};
use std::os::unix::fs::{DirBuilderExt, FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use fuser::{
    FileAttr, FileType, Filesystem, MountOption, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory,
    ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, Request, TimeOrNow, FUSE_ROOT_ID,
};
use rustix::fs::OFlags;
use rustix::io::Errno;

/// Attributes and entries are not cached by the kernel: every change goes through this file system, but
/// a zero TTL keeps it obviously right.
const TTL: Duration = Duration::ZERO;

/// The switches a test flips while the file system is mounted.
#[derive(Clone, Debug, Default)]
struct Faults {
    fail_fsync: Arc<AtomicBool>,
    failed_fsyncs: Arc<AtomicU64>,
}

/// A mounted fault-injecting passthrough. See the module documentation.
pub struct FaultFs {
    mountpoint: PathBuf,
    session: Option<fuser::BackgroundSession>,
    faults: Faults,
}

impl FaultFs {
    /// Mounts a passthrough to `backing` (created if needed) at `mountpoint` (created if needed). Panics if
    /// FUSE cannot be mounted: the test needs root and `/dev/fuse`, and is not skipped without them.
    pub fn mount(backing: &Path, mountpoint: &Path) -> FaultFs {
        std::fs::create_dir_all(backing).unwrap();
        std::fs::create_dir_all(mountpoint).unwrap();
        let faults = Faults::default();
        let fs = Passthrough::new(backing, faults.clone());
        let options = [MountOption::FSName("sealpost-faultfs".into()), MountOption::NoAtime];
        let session = fuser::spawn_mount2(fs, mountpoint, &options).unwrap_or_else(|e| {
            panic!(
                "cannot mount the fault-injecting FUSE file system at {}: {e} -- this test needs root and \
                 /dev/fuse (CI has both); it is not skipped",
                mountpoint.display()
            )
        });
        let mounted = FaultFs { mountpoint: mountpoint.to_path_buf(), session: Some(session), faults };
        assert!(
            mounted.is_mounted(),
            "{} is not in /proc/self/mountinfo after mounting",
            mountpoint.display()
        );
        mounted
    }

    /// While `on`, every fsync and fdatasync (of files and folders) fails with `EIO`.
    pub fn fail_fsync(&self, on: bool) {
        self.faults.fail_fsync.store(on, Ordering::SeqCst);
    }

    /// How many fsyncs failed so far.
    pub fn failed_fsyncs(&self) -> u64 {
        self.faults.failed_fsyncs.load(Ordering::SeqCst)
    }

    fn is_mounted(&self) -> bool {
        let mountpoint = self.mountpoint.canonicalize().unwrap_or_else(|_| self.mountpoint.clone());
        let mountpoint = mountpoint.to_string_lossy().into_owned();
        std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap_or_default()
            .lines()
            .any(|l| l.split(' ').nth(4) == Some(mountpoint.as_str()))
    }
}

impl Drop for FaultFs {
    fn drop(&mut self) {
        // umount(2); the serving thread ends once the kernel lets go of the connection.
        drop(self.session.take());
        if self.is_mounted() {
            // Still held (a process has a file open): detach it now rather than wait.
            let _ = std::process::Command::new("umount").arg("-l").arg(&self.mountpoint).status();
        }
    }
}

/// The file system the session thread serves: paths relative to `backing`, known by inode numbers of
/// its own.
struct Passthrough {
    backing: PathBuf,
    faults: Faults,
    /// Inode number to path (relative to `backing`; the root is the empty path).
    paths: HashMap<u64, PathBuf>,
    /// Path to inode number, for paths that exist.
    inodes: HashMap<PathBuf, u64>,
    next_inode: u64,
    files: HashMap<u64, File>,
    next_fh: u64,
}

/// The errno of an I/O error (`EIO` if it has none).
fn errno(e: &std::io::Error) -> i32 {
    e.raw_os_error().unwrap_or(Errno::IO.raw_os_error())
}

fn attr(ino: u64, m: &Metadata) -> FileAttr {
    let kind = if m.is_dir() {
        FileType::Directory
    } else if m.file_type().is_symlink() {
        FileType::Symlink
    } else {
        FileType::RegularFile
    };
    let mtime = m.modified().unwrap_or(UNIX_EPOCH);
    FileAttr {
        ino,
        size: m.len(),
        blocks: m.blocks(),
        atime: m.accessed().unwrap_or(UNIX_EPOCH),
        mtime,
        ctime: mtime,
        crtime: UNIX_EPOCH,
        kind,
        perm: (m.mode() & 0o7777) as u16,
        nlink: m.nlink() as u32,
        uid: m.uid(),
        gid: m.gid(),
        rdev: m.rdev() as u32,
        blksize: m.blksize() as u32,
        flags: 0,
    }
}

/// Read and write access as `flags` (of open(2)) ask.
fn access(flags: i32) -> OpenOptions {
    let flags = OFlags::from_bits_retain(flags as u32);
    let mut options = OpenOptions::new();
    if flags.contains(OFlags::RDWR) {
        options.read(true).write(true);
    } else if flags.contains(OFlags::WRONLY) {
        options.write(true);
    } else {
        options.read(true);
    }
    options
}

impl Passthrough {
    fn new(backing: &Path, faults: Faults) -> Self {
        let paths = HashMap::from([(FUSE_ROOT_ID, PathBuf::new())]);
        let inodes = HashMap::from([(PathBuf::new(), FUSE_ROOT_ID)]);
        Self {
            backing: backing.to_path_buf(),
            faults,
            paths,
            inodes,
            next_inode: FUSE_ROOT_ID + 1,
            files: HashMap::new(),
            next_fh: 1,
        }
    }

    /// The relative path of `ino`, joined with `name` if given.
    fn rel(&self, ino: u64, name: Option<&OsStr>) -> Option<PathBuf> {
        let path = self.paths.get(&ino)?;
        Some(match name {
            Some(name) => path.join(name),
            None => path.clone(),
        })
    }

    fn full(&self, rel: &Path) -> PathBuf {
        self.backing.join(rel)
    }

    /// The inode number of `rel`, given one if it has none yet.
    fn inode(&mut self, rel: &Path) -> u64 {
        if let Some(&ino) = self.inodes.get(rel) {
            return ino;
        }
        let ino = self.next_inode;
        self.next_inode += 1;
        self.inodes.insert(rel.to_path_buf(), ino);
        self.paths.insert(ino, rel.to_path_buf());
        ino
    }

    /// Replies with the entry of `rel`, which exists now.
    fn entry(&mut self, rel: &Path, reply: ReplyEntry) {
        match std::fs::symlink_metadata(self.full(rel)) {
            Ok(m) => {
                let ino = self.inode(rel);
                reply.entry(&TTL, &attr(ino, &m), 0);
            }
            Err(e) => reply.error(errno(&e)),
        }
    }

    /// `rel` is gone: a new file by its name gets a new inode number.
    fn forget_path(&mut self, rel: &Path) {
        self.inodes.remove(rel);
    }

    /// Whether an fsync fails now (and counts it if so).
    fn fsync_fails(&self) -> bool {
        let fails = self.faults.fail_fsync.load(Ordering::SeqCst);
        if fails {
            self.faults.failed_fsyncs.fetch_add(1, Ordering::SeqCst);
        }
        fails
    }

    fn add_file(&mut self, file: File) -> u64 {
        let fh = self.next_fh;
        self.next_fh += 1;
        self.files.insert(fh, file);
        fh
    }
}

/// Replies `ENOENT` and returns from the operation if the inode is unknown.
macro_rules! known {
    ($e:expr, $reply:expr) => {
        match $e {
            Some(v) => v,
            None => return $reply.error(Errno::NOENT.raw_os_error()),
        }
    };
}

impl Filesystem for Passthrough {
    fn lookup(&mut self, _req: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEntry) {
        let rel = known!(self.rel(parent, Some(name)), reply);
        self.entry(&rel, reply);
    }

    fn getattr(&mut self, _req: &Request<'_>, ino: u64, fh: Option<u64>, reply: ReplyAttr) {
        let metadata = match fh.and_then(|fh| self.files.get(&fh)) {
            Some(file) => file.metadata(),
            None => std::fs::symlink_metadata(self.full(&known!(self.rel(ino, None), reply))),
        };
        match metadata {
            Ok(m) => reply.attr(&TTL, &attr(ino, &m)),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn setattr(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<std::time::SystemTime>,
        fh: Option<u64>,
        _crtime: Option<std::time::SystemTime>,
        _chgtime: Option<std::time::SystemTime>,
        _bkuptime: Option<std::time::SystemTime>,
        _flags: Option<u32>,
        reply: ReplyAttr,
    ) {
        let full = self.full(&known!(self.rel(ino, None), reply));
        let result = (|| {
            if let Some(size) = size {
                match fh.and_then(|fh| self.files.get(&fh)) {
                    Some(file) => file.set_len(size)?,
                    None => OpenOptions::new().write(true).open(&full)?.set_len(size)?,
                }
            }
            if let Some(mode) = mode {
                std::fs::set_permissions(&full, std::fs::Permissions::from_mode(mode & 0o7777))?;
            }
            std::fs::symlink_metadata(&full)
        })();
        match result {
            Ok(m) => reply.attr(&TTL, &attr(ino, &m)),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn mkdir(
        &mut self,
        _req: &Request<'_>,
        parent: u64,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let rel = known!(self.rel(parent, Some(name)), reply);
        match std::fs::DirBuilder::new().mode(mode & !umask).create(self.full(&rel)) {
            Ok(()) => self.entry(&rel, reply),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn unlink(&mut self, _req: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEmpty) {
        let rel = known!(self.rel(parent, Some(name)), reply);
        match std::fs::remove_file(self.full(&rel)) {
            Ok(()) => {
                self.forget_path(&rel);
                reply.ok();
            }
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn rmdir(&mut self, _req: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEmpty) {
        let rel = known!(self.rel(parent, Some(name)), reply);
        match std::fs::remove_dir(self.full(&rel)) {
            Ok(()) => {
                self.forget_path(&rel);
                reply.ok();
            }
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn rename(
        &mut self,
        _req: &Request<'_>,
        parent: u64,
        name: &OsStr,
        newparent: u64,
        newname: &OsStr,
        flags: u32,
        reply: ReplyEmpty,
    ) {
        if flags != 0 {
            // RENAME_NOREPLACE, RENAME_EXCHANGE: nothing here asks for them.
            return reply.error(Errno::INVAL.raw_os_error());
        }
        let from = known!(self.rel(parent, Some(name)), reply);
        let to = known!(self.rel(newparent, Some(newname)), reply);
        if let Err(e) = std::fs::rename(self.full(&from), self.full(&to)) {
            return reply.error(errno(&e));
        }
        // The target's old inode is gone; the renamed one (and, for a folder, everything under it) moves.
        self.forget_path(&to);
        let moved: Vec<(u64, PathBuf)> = self
            .paths
            .iter()
            .filter_map(|(&ino, p)| {
                // `join("")` would add a trailing slash, which open(2) takes for a folder.
                let rest = p.strip_prefix(&from).ok()?;
                Some((ino, if rest.as_os_str().is_empty() { to.clone() } else { to.join(rest) }))
            })
            .filter(|(ino, _)| self.inodes.get(&self.paths[ino]) == Some(ino))
            .collect();
        for (ino, new) in moved {
            if let Some(old) = self.paths.insert(ino, new.clone()) {
                self.inodes.remove(&old);
            }
            self.inodes.insert(new, ino);
        }
        reply.ok();
    }

    fn open(&mut self, _req: &Request<'_>, ino: u64, flags: i32, reply: ReplyOpen) {
        let full = self.full(&known!(self.rel(ino, None), reply));
        match access(flags).open(full) {
            Ok(file) => {
                let fh = self.add_file(file);
                reply.opened(fh, 0);
            }
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn create(
        &mut self,
        _req: &Request<'_>,
        parent: u64,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let rel = known!(self.rel(parent, Some(name)), reply);
        let mut options = access(flags);
        if !options_write(flags) {
            // create(2) with O_RDONLY still creates the file; std needs write access to create.
            options.write(true);
        }
        if OFlags::from_bits_retain(flags as u32).contains(OFlags::EXCL) {
            options.create_new(true);
        } else {
            options.create(true);
        }
        let created = options.mode(mode & !umask).open(self.full(&rel)).and_then(|f| Ok((f.metadata()?, f)));
        match created {
            Ok((m, file)) => {
                let ino = self.inode(&rel);
                let fh = self.add_file(file);
                reply.created(&TTL, &attr(ino, &m), 0, fh, 0);
            }
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn read(
        &mut self,
        _req: &Request<'_>,
        _ino: u64,
        fh: u64,
        offset: i64,
        size: u32,
        _flags: i32,
        _lock_owner: Option<u64>,
        reply: ReplyData,
    ) {
        let file = known!(self.files.get(&fh), reply);
        let mut buf = vec![0u8; size as usize];
        let mut filled = 0;
        while filled < buf.len() {
            match file.read_at(&mut buf[filled..], offset as u64 + filled as u64) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return reply.error(errno(&e)),
            }
        }
        reply.data(&buf[..filled]);
    }

    fn write(
        &mut self,
        _req: &Request<'_>,
        _ino: u64,
        fh: u64,
        offset: i64,
        data: &[u8],
        _write_flags: u32,
        _flags: i32,
        _lock_owner: Option<u64>,
        reply: ReplyWrite,
    ) {
        let file = known!(self.files.get(&fh), reply);
        match file.write_all_at(data, offset as u64) {
            Ok(()) => reply.written(data.len() as u32),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn flush(&mut self, _req: &Request<'_>, _ino: u64, _fh: u64, _lock_owner: u64, reply: ReplyEmpty) {
        reply.ok();
    }

    fn release(
        &mut self,
        _req: &Request<'_>,
        _ino: u64,
        fh: u64,
        _flags: i32,
        _lock_owner: Option<u64>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.files.remove(&fh);
        reply.ok();
    }

    fn fsync(&mut self, _req: &Request<'_>, _ino: u64, fh: u64, datasync: bool, reply: ReplyEmpty) {
        if self.fsync_fails() {
            return reply.error(Errno::IO.raw_os_error());
        }
        let file = known!(self.files.get(&fh), reply);
        match if datasync { file.sync_data() } else { file.sync_all() } {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn readdir(&mut self, _req: &Request<'_>, ino: u64, _fh: u64, offset: i64, mut reply: ReplyDirectory) {
        let rel = known!(self.rel(ino, None), reply);
        let listing = match std::fs::read_dir(self.full(&rel)) {
            Ok(listing) => listing,
            Err(e) => return reply.error(errno(&e)),
        };
        let mut entries =
            vec![(ino, FileType::Directory, ".".into()), (ino, FileType::Directory, "..".into())];
        for entry in listing {
            let entry = match entry {
                Ok(entry) => entry,
                Err(e) => return reply.error(errno(&e)),
            };
            let kind = match entry.file_type() {
                Ok(t) if t.is_dir() => FileType::Directory,
                Ok(t) if t.is_symlink() => FileType::Symlink,
                _ => FileType::RegularFile,
            };
            let name = entry.file_name();
            entries.push((self.inode(&rel.join(&name)), kind, name));
        }
        for (i, (ino, kind, name)) in entries.into_iter().enumerate().skip(offset as usize) {
            if reply.add(ino, i as i64 + 1, kind, name) {
                break;
            }
        }
        reply.ok();
    }

    fn fsyncdir(&mut self, _req: &Request<'_>, ino: u64, _fh: u64, _datasync: bool, reply: ReplyEmpty) {
        if self.fsync_fails() {
            return reply.error(Errno::IO.raw_os_error());
        }
        let full = self.full(&known!(self.rel(ino, None), reply));
        match File::open(full).and_then(|d| d.sync_all()) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn statfs(&mut self, _req: &Request<'_>, _ino: u64, reply: ReplyStatfs) {
        match rustix::fs::statvfs(&self.backing) {
            Ok(s) => reply.statfs(
                s.f_blocks,
                s.f_bfree,
                s.f_bavail,
                s.f_files,
                s.f_ffree,
                s.f_bsize as u32,
                s.f_namemax as u32,
                s.f_frsize as u32,
            ),
            Err(e) => reply.error(e.raw_os_error()),
        }
    }
}

/// Whether `flags` (of open(2)) ask for write access.
fn options_write(flags: i32) -> bool {
    let flags = OFlags::from_bits_retain(flags as u32);
    flags.intersects(OFlags::WRONLY | OFlags::RDWR)
}
