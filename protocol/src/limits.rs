//! Size limits that every decoder enforces before it allocates.

/// Configurable bounds on what a peer may make us parse.
///
/// Every length field read from the wire is compared with these before any buffer is sized from it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest frame, counting its version byte and body but not its 4-byte length prefix.
    pub max_frame_len: u32,
    /// Largest encoded sealed batch. Must leave room for the frame that carries it.
    pub max_batch_len: u32,
    /// Most messages in one batch.
    pub max_batch_messages: u32,
}

impl Limits {
    /// Default largest frame: 4 MiB.
    pub const DEFAULT_MAX_FRAME_LEN: u32 = 4 * 1024 * 1024;
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_frame_len: Self::DEFAULT_MAX_FRAME_LEN,
            // A publish frame adds a request id, a variant tag and a length varint: 64 bytes is ample.
            max_batch_len: Self::DEFAULT_MAX_FRAME_LEN - 64,
            max_batch_messages: 65_536,
        }
    }
}
