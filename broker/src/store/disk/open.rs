//! Opening the index: sled, opened so that damage in its files never takes the broker down, checked
//! before anything is served, and moved aside to be rebuilt when it is broken.
//!
//! [`open_index`] opens sled inside `catch_unwind` and checks the index: its layout key, its checkpoint,
//! and a scan of every key and value ([`index::scan`]: each must decode). What one flipped bit in sled's
//! files does to sled 0.34.7 (docs/reliability.md has the figures): in a `db` file that was never
//! reopened, sled **panics** while opening, or silently comes back as an **older, consistent state** (a
//! prefix of its log), or nothing happens; once it was reopened (sled then keeps a `snap.*` file and reads
//! the `db` log lazily), most flips hit stale data, and the rest make sled **return an error** while
//! opening or, later, when the damaged page is first read; a flip in `snap.*` makes opening fail. It never
//! returned a wrong value. So a panic, an error other than I/O, or a failed check, at opening or in the
//! scan, is answered with "broken": the engine moves sled's files aside into `index.corrupt-<n>/`
//! ([`move_index_aside`]; never deleted) and rebuilds the index from every segment. Without the scan, a
//! damaged page would fail reads at run time and at every start. The scan costs about 1 µs per key, two
//! keys per batch (docs/benchmarks.md). An older state is what the index looks like after any crash:
//! [`recovery`](super::recovery) replays the segments from its (older) checkpoint.
//!
//! A folder that is not a Sealpost store, holds another layout, or is in use by another process is
//! refused, never moved.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use super::index::{self, CHECKPOINT_KEY, LAYOUT_3, LAYOUT_4, LAYOUT_KEY, LAYOUT_VERSION};
use super::segment::{self, sync_dir, Checkpoint};
use super::sync::entries;
use crate::store::io_error;
use crate::{Error, Result};

/// How long opening waits for sled's lock on its files: sled's own threads may still hold the files of a
/// store this process closed a moment ago (sled's tests block on the lock for the same reason). Another
/// process holding them (a running broker) is reported after that.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

pub(super) fn open_sled(dir: &Path, cache_bytes: u64) -> std::result::Result<sled::Db, sled::Error> {
    let deadline = std::time::Instant::now() + LOCK_WAIT;
    loop {
        match sled::Config::new().path(dir).flush_every_ms(None).cache_capacity(cache_bytes).open() {
            Err(sled::Error::Io(e))
                if e.to_string().contains("could not acquire lock")
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            opened => return opened,
        }
    }
}

/// The message of a caught panic.
pub(super) fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}

/// Drops a sled handle that may hold damaged state without letting a panic out of it.
pub(super) fn drop_quietly(db: sled::Db) {
    if catch_unwind(AssertUnwindSafe(move || drop(db))).is_err() {
        tracing::warn!("closing the damaged index panicked");
    }
}

/// What opening found of the index.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum IndexState {
    /// Nothing at all yet: a new store.
    Fresh,
    /// Layout 2, to be migrated.
    Layout2,
    /// Layout 3 or 4 (a layout-3 index is a layout-4 one as it stands: [`index`]); its layout key is
    /// rewritten to 4.
    Layout3,
    /// Rebuilt from the segments (the old index, if any, was moved to this folder).
    Rebuilt(Option<PathBuf>),
}

/// Opens and checks the index of `dir`: `Ok(Ok(..))` usable, `Ok(Err(why))` broken (to be rebuilt), `Err`
/// a refusal (not a Sealpost store, another layout, an I/O error, or the store in use).
pub(super) fn open_index(
    dir: &Path,
    cache_bytes: u64,
    has_segments: bool,
) -> Result<std::result::Result<(sled::Db, IndexState), String>> {
    let db = match catch_unwind(AssertUnwindSafe(|| open_sled(dir, cache_bytes))) {
        Err(panic) => return Ok(Err(format!("sled panicked while opening it: {}", panic_message(&*panic)))),
        Ok(Err(sled::Error::Io(e))) => {
            return Err(io_error(&format!("opening the index in {}", dir.display()), &e))
        }
        Ok(Err(e)) => return Ok(Err(format!("sled could not open it: {e}"))),
        Ok(Ok(db)) => db,
    };
    let checked = catch_unwind(AssertUnwindSafe(|| -> Result<std::result::Result<IndexState, String>> {
        let layout = match db.get(LAYOUT_KEY) {
            Ok(layout) => layout,
            Err(e) => return Ok(Err(format!("reading its layout: {e}"))),
        };
        let state = match layout.as_deref().map(<[u8; 4]>::try_from) {
            Some(Ok(v)) if [LAYOUT_VERSION, LAYOUT_4, LAYOUT_3].contains(&u32::from_be_bytes(v)) => {
                IndexState::Layout3
            }
            Some(Ok(v)) if u32::from_be_bytes(v) == 2 => IndexState::Layout2,
            Some(Ok(v)) if u32::from_be_bytes(v) > LAYOUT_VERSION => {
                return Err(Error::UnsupportedFormat {
                    found: u32::from_be_bytes(v),
                    supported: LAYOUT_VERSION,
                })
            }
            Some(Ok(v)) => {
                return Err(Error::Storage(format!(
                "{} holds store layout {}, this build reads layouts 2 to {LAYOUT_VERSION} (layout 1, batch \
                     bytes inside sled, was never released: move the folder away and start afresh)",
                dir.display(),
                u32::from_be_bytes(v)
            )))
            }
            Some(Err(_)) => return Ok(Err("its layout key does not decode".into())),
            None if db.is_empty() && !has_segments => IndexState::Fresh,
            None if db.is_empty() => return Ok(Err("it is empty, but the segments hold data".into())),
            None if has_segments => return Ok(Err("its layout key is missing".into())),
            None => return Err(Error::Storage(format!("{} is not a Sealpost store", dir.display()))),
        };
        match db.get(CHECKPOINT_KEY) {
            Ok(Some(v)) if Checkpoint::decode(&v).is_none() => {
                return Ok(Err("its checkpoint does not decode".into()))
            }
            Ok(_) => {}
            Err(e) => return Ok(Err(format!("reading its checkpoint: {e}"))),
        }
        Ok(index::scan(&db).map(|()| state))
    }));
    match checked {
        Ok(Ok(Ok(state))) => Ok(Ok((db, state))),
        Ok(Ok(Err(why))) => {
            drop_quietly(db);
            Ok(Err(why))
        }
        Ok(Err(refusal)) => {
            drop_quietly(db);
            Err(refusal)
        }
        Err(panic) => {
            drop_quietly(db);
            Ok(Err(format!("sled panicked while reading it: {}", panic_message(&*panic))))
        }
    }
}

/// Whether `dir` has a segment file with bytes in it.
pub(super) fn has_segment_data(dir: &Path) -> Result<bool> {
    let segments = dir.join("segments");
    if !segments.is_dir() {
        return Ok(false);
    }
    Ok(segment::list(&segments)?
        .iter()
        .any(|&n| std::fs::metadata(segments.join(segment::segment_name(n))).is_ok_and(|m| m.len() > 0)))
}

/// Whether `dir` holds any of sled's files (`db`, `conf`, `blobs/`, `snap.*`).
pub(super) fn has_index_files(dir: &Path) -> Result<bool> {
    Ok(entries(dir)?.iter().filter_map(|name| name.to_str()).any(is_index_file))
}

fn is_index_file(name: &str) -> bool {
    matches!(name, "db" | "conf" | "blobs") || name.starts_with("snap.")
}

/// Moves sled's files in `dir` (`db`, `conf`, `blobs/`, `snap.*`) into a new `index.corrupt-<n>/` folder
/// and returns it. Nothing is deleted.
pub(super) fn move_index_aside(dir: &Path) -> Result<PathBuf> {
    let aside = (0u32..)
        .map(|n| dir.join(format!("index.corrupt-{n}")))
        .find(|p| !p.exists())
        .ok_or_else(|| Error::Storage("no free name to move the index aside".into()))?;
    std::fs::create_dir(&aside).map_err(|e| io_error(&format!("creating {}", aside.display()), &e))?;
    for name in entries(dir)? {
        let Some(text) = name.to_str() else { continue };
        if is_index_file(text) {
            std::fs::rename(dir.join(&name), aside.join(&name))
                .map_err(|e| io_error(&format!("moving {text} to {}", aside.display()), &e))?;
        }
    }
    sync_dir(&aside)?;
    sync_dir(dir)?;
    Ok(aside)
}
