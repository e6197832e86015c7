//! Content-key epochs: the number of a topic's key generation. A topic's policy of epoch `n` carries that
//! epoch's content key; each rotation or revocation starts the next epoch.
//!
//! A plain number with no rule of its own (a policy says which epochs are valid), kept apart from the keys
//! so that the types which only name an epoch (errors, batch headers) need nothing else.

use core::fmt;

use serde::{Deserialize, Serialize};

/// The epoch of a topic's content key. Each rotation or revocation starts a new epoch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Epoch(pub u64);

impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}
