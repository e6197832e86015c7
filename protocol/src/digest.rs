//! 32-byte BLAKE3 digests and the domain-separation contexts that produce them.

use core::fmt;

use serde::{Deserialize, Serialize};

/// Key-derivation contexts for BLAKE3's `derive_key` mode. Each use of the hash has its own context, so
/// that a digest computed for one purpose can never be presented as a digest for another. Changing any of
/// these strings is a format change (see the golden vectors).
pub(crate) mod context {
    pub(crate) const BATCH_HEADER_V1: &str = "sealpost 2026-11-23 batch header v1";
    pub(crate) const BATCH_V1: &str = "sealpost 2026-11-23 batch v1";
    pub(crate) const BATCH_HEADER_V2: &str = "sealpost 2026-12-20 batch header v2";
    pub(crate) const BATCH_V2: &str = "sealpost 2026-12-20 batch v2";
    pub(crate) const BATCH_HEADER_V3: &str = "sealpost 2026-12-06 batch header v3";
    pub(crate) const BATCH_V3: &str = "sealpost 2026-12-06 batch v3";
    pub(crate) const KEY_ID: &str = "sealpost 2026-11-23 key id v1";
    pub(crate) const POLICY: &str = "sealpost 2026-11-23 policy v1";

    /// The header-digest context of batch format `version` (1, 2 or 3; the decoder admits no other).
    pub(crate) fn batch_header(version: u8) -> &'static str {
        match version {
            1 => BATCH_HEADER_V1,
            2 => BATCH_HEADER_V2,
            _ => BATCH_HEADER_V3,
        }
    }

    /// The batch-digest context of batch format `version` (1, 2 or 3; the decoder admits no other).
    pub(crate) fn batch(version: u8) -> &'static str {
        match version {
            1 => BATCH_V1,
            2 => BATCH_V2,
            _ => BATCH_V3,
        }
    }
}

/// A 32-byte BLAKE3 digest. A batch's digest is what its publisher signs and what the next batch of the
/// same publisher names as `prev_digest`; a topic policy's digest is what the topic authority signs and what
/// the policy of the next epoch names as its `prev_digest`.
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Digest(pub [u8; 32]);

impl Digest {
    /// The digest that the first batch of a chain names as its predecessor.
    pub const ZERO: Digest = Digest([0; 32]);

    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl From<blake3::Hash> for Digest {
    fn from(h: blake3::Hash) -> Self {
        Digest(*h.as_bytes())
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({})", hex::encode(&self.0[..8]))
    }
}
