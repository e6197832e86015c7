//! One segment file and the folder that holds them: file names, listing, creating, fsync of the folder,
//! free space, positional and vectored IO, and checking one record in a file against its [`Location`].

use std::fs::{File, OpenOptions};
use std::io::{self, IoSlice, Read, Write};
#[cfg(unix)]
use std::os::unix::fs::FileExt;
use std::path::Path;

use bytes::Bytes;

use super::place::split_header;
use super::{Check, Location, RECORD_HEADER};
use crate::store::io_error;
use crate::Result;

/// Records up to this size are checked with a single read (64 MiB); a larger length (a damaged index
/// entry) is checked against the file's length first.
const MAX_FAST_READ: usize = 64 * 1024 * 1024;
/// Most open read handles kept; beyond it the cache starts afresh.
/// The file name of segment `number`.
pub fn segment_name(number: u64) -> String {
    format!("{number:020}.seg")
}

pub(super) fn segment_number(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".seg")?;
    (digits.len() == 20 && digits.bytes().all(|b| b.is_ascii_digit())).then(|| digits.parse().ok())?
}

pub(super) fn create_segment(dir: &Path, number: u64) -> Result<File> {
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

/// The numbers of the segment files in `dir`, in order.
pub fn list(dir: &Path) -> Result<Vec<u64>> {
    let listing = std::fs::read_dir(dir).map_err(|e| io_error(&format!("listing {}", dir.display()), &e))?;
    let mut numbers = Vec::new();
    for entry in listing {
        let entry = entry.map_err(|e| io_error(&format!("listing {}", dir.display()), &e))?;
        if let Some(n) = entry.file_name().to_str().and_then(segment_number) {
            numbers.push(n);
        }
    }
    numbers.sort_unstable();
    Ok(numbers)
}

/// The bytes of segment `number` in `dir` from `from` on (empty if the file is shorter).
pub fn read_from(dir: &Path, number: u64, from: u64) -> Result<Vec<u8>> {
    let path = dir.join(segment_name(number));
    let read_error = |e: io::Error| io_error(&format!("reading {}", path.display()), &e);
    let mut file = File::open(&path).map_err(read_error)?;
    let len = file.metadata().map_err(read_error)?.len();
    let mut bytes = Vec::with_capacity(usize::try_from(len.saturating_sub(from)).unwrap_or(0));
    if from < len {
        io::Seek::seek(&mut file, io::SeekFrom::Start(from)).map_err(read_error)?;
        file.read_to_end(&mut bytes).map_err(read_error)?;
    }
    Ok(bytes)
}

/// Bytes available to unprivileged writers on the file system holding `dir`.
pub(super) fn available_bytes(dir: &Path) -> Result<u64> {
    let stat = rustix::fs::statvfs(dir)
        .map_err(|e| io_error(&format!("statvfs of {}", dir.display()), &io::Error::from(e)))?;
    Ok(stat.f_bavail.saturating_mul(stat.f_frsize))
}

/// [`Segments::check`] on an open segment file.
pub fn check_in(file: &File, at: &Location) -> io::Result<Check> {
    // The common case in one read: the whole record, as the location describes it.
    let whole = usize::try_from(RECORD_HEADER + u64::from(at.len)).unwrap_or(usize::MAX);
    if whole <= MAX_FAST_READ {
        let mut record = vec![0u8; whole];
        match read_exact_at(file, &mut record, at.position) {
            Ok(()) => {
                let (header, body) = record.split_at(RECORD_HEADER as usize);
                let header: &[u8; RECORD_HEADER as usize] = header.try_into().unwrap_or(&[0; 8]);
                if split_header(header) == (at.len, at.crc) && crc32fast::hash(body) == at.crc {
                    return Ok(Check::Intact(Bytes::from(record).slice(RECORD_HEADER as usize..)));
                }
            }
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {}
            Err(e) => return Err(e),
        }
    }
    let mut header = [0u8; RECORD_HEADER as usize];
    match read_exact_at(file, &mut header, at.position) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(Check::Missing),
        Err(e) => return Err(e),
    }
    let (len, crc) = split_header(&header);
    let file_len = file.metadata()?.len();
    if (len, crc) != (at.len, at.crc) {
        // Another record, if the header there describes one that is intact; else damage.
        let end = at.position.saturating_add(RECORD_HEADER).saturating_add(len.into());
        if len > 0 && end <= file_len {
            let mut body = vec![0u8; len as usize];
            read_exact_at(file, &mut body, at.position.saturating_add(RECORD_HEADER))?;
            if crc32fast::hash(&body) == crc {
                return Ok(Check::Replaced { len, crc });
            }
        }
        return Ok(if at.end() > file_len { Check::Torn } else { Check::Corrupt });
    }
    if at.end() > file_len {
        return Ok(Check::Torn);
    }
    let mut body = vec![0u8; at.len as usize];
    read_exact_at(file, &mut body, at.position.saturating_add(RECORD_HEADER))?;
    Ok(if crc32fast::hash(&body) == at.crc { Check::Intact(Bytes::from(body)) } else { Check::Corrupt })
}

/// Writes every byte of `slices` to `file`, in order, with as few `writev` calls as the kernel allows.
pub(super) fn write_all_vectored(file: &mut File, mut slices: &mut [IoSlice<'_>]) -> io::Result<()> {
    IoSlice::advance_slices(&mut slices, 0);
    while !slices.is_empty() {
        match file.write_vectored(slices) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => IoSlice::advance_slices(&mut slices, n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(unix)]
pub(super) fn read_exact_at(file: &File, buf: &mut [u8], position: u64) -> io::Result<()> {
    file.read_exact_at(buf, position)
}

#[cfg(unix)]
pub(super) fn write_all_at(file: &File, buf: &[u8], position: u64) -> io::Result<()> {
    file.write_all_at(buf, position)
}
