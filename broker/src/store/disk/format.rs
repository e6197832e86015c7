//! The data folder's on-disk format, stated in a small plain file so that a person, a backup tool and a
//! broker of any version can tell it without opening sled.
//!
//! ```text
//! <data_dir>/FORMAT    one line of ASCII: "sealpost-store <version>\n"
//! ```
//!
//! The version is the store's layout ([`LAYOUT_VERSION`]: 5 today, the key layout of the index and the
//! record kinds of the segments, see docs/architecture.md). Opening a data folder refuses a version newer
//! than this broker reads with [`Error::UnsupportedFormat`] before anything is written; a folder written
//! before the file existed has none, and opening writes it (the index's layout key still decides how the
//! folder is read). The file is written to a temporary name, fsynced and renamed, so it is whole or
//! absent. Restoring a backup checks its manifest's version the same way and writes the file.
//!
//! What it does not do: the index keeps its own layout key, checked as before; a broker older than this
//! file does not read it (it refuses a newer folder by the index's layout key, with a less helpful
//! message).

use std::io::Write as _;
use std::path::Path;

use super::index::LAYOUT_VERSION;
use super::segment::sync_dir;
use crate::store::io_error;
use crate::{Error, Result};

/// The name of the file, in the data folder.
pub const FORMAT_FILE: &str = "FORMAT";
const PREFIX: &str = "sealpost-store ";
/// Longest file read: a version line and room for a comment.
const MAX_LEN: u64 = 4096;

/// The newest on-disk format this broker reads (and writes).
pub const fn supported() -> u32 {
    LAYOUT_VERSION
}

/// `Ok` if this broker reads `version`, else [`Error::UnsupportedFormat`].
pub fn check(version: u32) -> Result<()> {
    if version > supported() {
        return Err(Error::UnsupportedFormat { found: version, supported: supported() });
    }
    Ok(())
}

/// What the `FORMAT` file of `dir` says: `None` if there is none; an error if it does not read as one.
pub fn read(dir: &Path) -> Result<Option<u32>> {
    let path = dir.join(FORMAT_FILE);
    let text = match std::fs::metadata(&path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_error(&format!("reading {}", path.display()), &e)),
        Ok(m) if m.len() > MAX_LEN => {
            return Err(Error::Storage(format!("{} is not a Sealpost format file", path.display())))
        }
        Ok(_) => std::fs::read(&path).map_err(|e| io_error(&format!("reading {}", path.display()), &e))?,
    };
    parse(&text).map(Some).ok_or_else(|| {
        Error::Storage(format!(
            "{} does not read as \"{PREFIX}<version>\": not a Sealpost data folder, or a damaged file",
            path.display()
        ))
    })
}

/// The version a `FORMAT` file's bytes state.
pub(super) fn parse(text: &[u8]) -> Option<u32> {
    let text = std::str::from_utf8(text).ok()?;
    let line = text.lines().next()?;
    let digits = line.strip_prefix(PREFIX)?.trim_end();
    (!digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())).then(|| digits.parse().ok())?
}

/// Refuses `dir` if its `FORMAT` file states a format this broker does not read.
pub fn check_dir(dir: &Path) -> Result<()> {
    match read(dir)? {
        Some(version) => check(version),
        None => Ok(()),
    }
}

/// Writes `FORMAT` in `dir` stating `version` (to a temporary name, fsynced, renamed, and the folder
/// fsynced), unless it already says so.
pub fn write(dir: &Path, version: u32) -> Result<()> {
    if read(dir).ok().flatten() == Some(version) {
        return Ok(());
    }
    let path = dir.join(FORMAT_FILE);
    let temporary = dir.join(format!("{FORMAT_FILE}.tmp"));
    let written = (|| {
        let mut file = std::fs::File::create(&temporary)?;
        file.write_all(format!("{PREFIX}{version}\n").as_bytes())?;
        file.sync_all()?;
        std::fs::rename(&temporary, &path)
    })();
    written.map_err(|e| io_error(&format!("writing {}", path.display()), &e))?;
    sync_dir(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn format_file_round_trips_and_refuses_a_newer_version_with_a_typed_error() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read(dir.path()).unwrap(), None);
        check_dir(dir.path()).unwrap();
        write(dir.path(), supported()).unwrap();
        let text = std::fs::read_to_string(dir.path().join(FORMAT_FILE)).unwrap();
        assert_eq!(text, format!("sealpost-store {}\n", supported()));
        assert_eq!(read(dir.path()).unwrap(), Some(supported()));
        check_dir(dir.path()).unwrap();
        let (newer, known) = (supported() + 1, supported());
        write(dir.path(), newer).unwrap();
        let refused = check_dir(dir.path()).unwrap_err();
        assert!(
            matches!(refused, Error::UnsupportedFormat { found, supported } if (found, supported) == (newer, known))
        );
        assert_eq!(
            refused.to_string(),
            format!("this data folder is in on-disk format {newer}; this broker reads up to {known}; upgrade the broker")
        );
    }

    #[test]
    fn format_file_that_does_not_parse_is_an_error_not_a_version() {
        assert_eq!(parse(b"sealpost-store 3\n# a note\n"), Some(3));
        for bad in [
            &b""[..],
            b"sealpost-store \n",
            b"sealpost-store x\n",
            b"store 3\n",
            b"\xff\xfe",
            b"sealpost-store -1",
        ] {
            assert_eq!(parse(bad), None, "{bad:?}");
        }
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(FORMAT_FILE), "garbage").unwrap();
        assert!(matches!(read(dir.path()), Err(Error::Storage(_))));
    }
}
