//! Wall-clock time as the protocol sees it: a value handed in by the caller, never read from a clock here.

use serde::{Deserialize, Serialize};

/// Milliseconds since the Unix epoch, as stated by a publisher. It is signed, so the broker cannot change
/// it, but it is the publisher's claim and nothing more.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Timestamp(pub u64);

impl Timestamp {
    /// Milliseconds since the Unix epoch.
    pub fn as_millis(self) -> u64 {
        self.0
    }
}
