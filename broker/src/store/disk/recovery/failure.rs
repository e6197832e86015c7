//! How recovery ends when it cannot finish, and where it starts.
//!
//! Recovery tells two failures apart, because opening answers them differently: a **broken index** (sled
//! panicked or failed, or an entry does not decode) is moved aside and rebuilt from the segments; a
//! **storage** failure (the segments cannot be read or written) refuses to start.

use crate::{Error, Result};

/// Where recovery starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(in crate::store::disk) enum Mode {
    /// From the index's checkpoint.
    FromCheckpoint,
    /// From the start of the log, into an empty index.
    Rebuild,
}

/// Why recovery failed.
#[derive(Debug)]
pub(in crate::store::disk) enum Failure {
    /// The index is broken (sled panicked or failed, or an entry does not decode): rebuild it.
    Index(String),
    /// The segments could not be read or written: refuse to start.
    Storage(Error),
}

/// What a step of recovery returns.
pub(super) type Outcome<T> = std::result::Result<T, Failure>;

/// An error reading the index: it is broken.
pub(super) fn in_index<T>(r: Result<T>) -> Outcome<T> {
    r.map_err(|e| Failure::Index(e.to_string()))
}

/// A sled error: the index is broken.
pub(super) fn sled<T>(r: std::result::Result<T, sled::Error>) -> Outcome<T> {
    r.map_err(|e| Failure::Index(format!("sled: {e}")))
}

/// An error of the segments: refuse to start.
pub(super) fn storage<T>(r: Result<T>) -> Outcome<T> {
    r.map_err(Failure::Storage)
}
