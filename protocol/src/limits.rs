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
    /// Most members in one topic policy (the encoding stores the count in a `u16`, so at most 65,535 are
    /// ever accepted).
    pub max_policy_members: u32,
}

impl Limits {
    /// Default largest frame: 4 MiB.
    pub const DEFAULT_MAX_FRAME_LEN: u32 = 4 * 1024 * 1024;
    /// Default most members in one topic policy.
    pub const DEFAULT_MAX_POLICY_MEMBERS: u32 = 4096;

    /// Largest encoded topic policy: half of `max_frame_len` less 64 bytes, so that a
    /// [`Frame::Policies`](crate::Frame::Policies) carrying the current and the previous policy of a topic
    /// always fits in one frame. At the defaults (4 MiB frames, 4096 members of at most 210 bytes each, under
    /// 1 MiB) the member count is the binding limit.
    pub fn max_policy_len(&self) -> u32 {
        self.max_frame_len.saturating_sub(64) / 2
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_frame_len: Self::DEFAULT_MAX_FRAME_LEN,
            // A publish frame adds a request id, a variant tag and a length varint: 64 bytes is ample.
            max_batch_len: Self::DEFAULT_MAX_FRAME_LEN - 64,
            max_batch_messages: 65_536,
            max_policy_members: Self::DEFAULT_MAX_POLICY_MEMBERS,
        }
    }
}
