//! Where records are: a record's header, its [`Location`] in the segments, and a [`Checkpoint`] (a place up
//! to which the segments are durable). Fixed-size big-endian encodings, as the index stores them.
//!
//! ```text
//! record = len u32 | crc32 u32 | bytes [len]     (crc32 is CRC-32/ISO-HDLC of the bytes)
//! ```

/// Size of a record's header: `len u32 | crc32 u32`.
pub const RECORD_HEADER: u64 = 8;

/// A record's header: its length and CRC.
pub fn header(len: u32, crc: u32) -> [u8; RECORD_HEADER as usize] {
    let mut header = [0u8; RECORD_HEADER as usize];
    header[..4].copy_from_slice(&len.to_be_bytes());
    header[4..].copy_from_slice(&crc.to_be_bytes());
    header
}

/// The length and CRC a record's header says.
pub fn split_header(header: &[u8; RECORD_HEADER as usize]) -> (u32, u32) {
    let (len, crc) = header.split_at(4);
    let word = |b: &[u8]| b.try_into().map(u32::from_be_bytes).unwrap_or(0);
    (word(len), word(crc))
}

/// Where a record is: its segment, the position of its header, the length of its bytes and their CRC.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Location {
    /// Number of the segment file.
    pub segment: u64,
    /// Position of the record's header in the segment.
    pub position: u64,
    /// Length of the record's bytes (without the header).
    pub len: u32,
    /// CRC-32 of the record's bytes.
    pub crc: u32,
}

impl Location {
    /// Encoded size: segment, position, len, crc.
    pub const ENCODED_LEN: usize = 8 + 8 + 4 + 4;

    /// The position right after the record.
    pub fn end(&self) -> u64 {
        self.position.saturating_add(RECORD_HEADER).saturating_add(self.len.into())
    }

    /// Whether the record lies entirely within what `checkpoint` says is durable.
    pub fn durable_by(&self, checkpoint: Checkpoint) -> bool {
        self.segment < checkpoint.segment
            || (self.segment == checkpoint.segment && self.end() <= checkpoint.position)
    }

    /// Fixed-size big-endian encoding.
    pub fn encode(&self) -> [u8; Self::ENCODED_LEN] {
        let mut out = [0u8; Self::ENCODED_LEN];
        out[..8].copy_from_slice(&self.segment.to_be_bytes());
        out[8..16].copy_from_slice(&self.position.to_be_bytes());
        out[16..20].copy_from_slice(&self.len.to_be_bytes());
        out[20..].copy_from_slice(&self.crc.to_be_bytes());
        out
    }

    /// Inverse of [`encode`](Self::encode); `None` unless `bytes` is exactly one encoded location.
    pub fn decode(bytes: &[u8]) -> Option<Location> {
        let bytes: &[u8; Self::ENCODED_LEN] = bytes.try_into().ok()?;
        let (segment, rest) = bytes.split_first_chunk::<8>()?;
        let (position, rest) = rest.split_first_chunk::<8>()?;
        let (len, rest) = rest.split_first_chunk::<4>()?;
        let crc: &[u8; 4] = rest.try_into().ok()?;
        Some(Location {
            segment: u64::from_be_bytes(*segment),
            position: u64::from_be_bytes(*position),
            len: u32::from_be_bytes(*len),
            crc: u32::from_be_bytes(*crc),
        })
    }
}

/// Everything before `position` in `segment`, and every earlier segment, is durable. Checkpoints order as
/// the places they name.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Checkpoint {
    /// Number of the segment.
    pub segment: u64,
    /// Durable length of that segment.
    pub position: u64,
}

impl Checkpoint {
    /// Encoded size: segment, position.
    pub const ENCODED_LEN: usize = 16;

    /// Fixed-size big-endian encoding.
    pub fn encode(&self) -> [u8; Self::ENCODED_LEN] {
        let mut out = [0u8; Self::ENCODED_LEN];
        out[..8].copy_from_slice(&self.segment.to_be_bytes());
        out[8..].copy_from_slice(&self.position.to_be_bytes());
        out
    }

    /// Where, in `segment`, the acknowledged extent this checkpoint names ends: everything of an earlier
    /// segment is inside it (`u64::MAX`), nothing of a later one (0).
    pub fn end_in(&self, segment: u64) -> u64 {
        match segment.cmp(&self.segment) {
            std::cmp::Ordering::Less => u64::MAX,
            std::cmp::Ordering::Equal => self.position,
            std::cmp::Ordering::Greater => 0,
        }
    }

    /// Whether the byte at `position` of `segment` lies before this checkpoint.
    pub fn covers(&self, segment: u64, position: u64) -> bool {
        position < self.end_in(segment)
    }

    /// Inverse of [`encode`](Self::encode).
    pub fn decode(bytes: &[u8]) -> Option<Checkpoint> {
        let bytes: &[u8; Self::ENCODED_LEN] = bytes.try_into().ok()?;
        let (segment, position) = bytes.split_first_chunk::<8>()?;
        let position: &[u8; 8] = position.try_into().ok()?;
        Some(Checkpoint { segment: u64::from_be_bytes(*segment), position: u64::from_be_bytes(*position) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_and_checkpoints_round_trip() {
        let at = Location { segment: 3, position: 1 << 33, len: 70_000, crc: 0xDEAD_BEEF };
        assert_eq!(Location::decode(&at.encode()), Some(at));
        assert_eq!(Location::decode(&at.encode()[1..]), None);
        let c = Checkpoint { segment: 9, position: 12 };
        assert_eq!(Checkpoint::decode(&c.encode()), Some(c));
        assert_eq!(Checkpoint::decode(&[0; 15]), None);
        assert_eq!((c.end_in(8), c.end_in(9), c.end_in(10)), (u64::MAX, 12, 0));
        assert!(c.covers(9, 11) && !c.covers(9, 12) && c.covers(3, 1 << 40) && !c.covers(10, 0));
    }
}
