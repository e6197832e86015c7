//! The audit log's hashes, and the canonical field encoding they are computed over.
//!
//! A [`Digest`] is 32 bytes of BLAKE3 in derive-key mode under a context string of its own (entries and
//! checkpoints use different contexts, and neither is shared with the protocol's hashes), so a hash of one
//! kind can never be passed off as another. The bytes hashed are not the JSON of the line: every field is
//! encoded in a fixed order as a big-endian `u64`, a fixed 32-byte value, or an optional string (a `0x00`
//! byte when absent, else `0x01`, its length as a big-endian `u32` and its UTF-8 bytes). Two different
//! entries therefore never encode to the same bytes, whatever their strings contain.

use core::fmt;

/// The context of an entry's hash (BLAKE3 `derive_key`).
pub const ENTRY_CONTEXT: &str = "sealpost 2026-12 audit log entry v1";
/// The context of a checkpoint's hash (BLAKE3 `derive_key`).
pub const CHECKPOINT_CONTEXT: &str = "sealpost 2026-12 audit log checkpoint v1";

/// A 32-byte BLAKE3 hash, written as 64 lowercase hex digits.
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Digest(pub [u8; 32]);

impl Digest {
    /// The `prev` of the first entry and of the first checkpoint of a log.
    pub const ZERO: Digest = Digest([0; 32]);

    /// Parses 64 lowercase hex digits (the only form the writer emits).
    pub fn from_hex(s: &str) -> Option<Digest> {
        if s.len() != 64 || s.bytes().any(|b| b.is_ascii_uppercase()) {
            return None;
        }
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).ok()?;
        Some(Digest(out))
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({self})")
    }
}

/// Feeds fields, canonically encoded, to a hasher or a buffer.
pub(crate) trait Canonical {
    /// Appends raw bytes.
    fn raw(&mut self, bytes: &[u8]);

    /// A big-endian `u64`.
    fn u64(&mut self, v: u64) {
        self.raw(&v.to_be_bytes());
    }

    /// A fixed 32-byte value.
    fn digest(&mut self, d: &Digest) {
        self.raw(&d.0);
    }

    /// An optional string: `0x00`, or `0x01`, a big-endian `u32` length and the bytes.
    fn opt_str(&mut self, s: Option<&str>) {
        match s {
            None => self.raw(&[0]),
            Some(s) => {
                self.raw(&[1]);
                // Fields are bounded far below 4 GiB (entry::MAX_FIELD_BYTES); saturate rather than panic.
                self.raw(&u32::try_from(s.len()).unwrap_or(u32::MAX).to_be_bytes());
                self.raw(s.as_bytes());
            }
        }
    }

    /// An optional `u64`: `0x00`, or `0x01` and the big-endian value.
    fn opt_u64(&mut self, v: Option<u64>) {
        match v {
            None => self.raw(&[0]),
            Some(v) => {
                self.raw(&[1]);
                self.u64(v);
            }
        }
    }
}

impl Canonical for blake3::Hasher {
    fn raw(&mut self, bytes: &[u8]) {
        self.update(bytes);
    }
}

impl Canonical for Vec<u8> {
    fn raw(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_hex_round_trips_and_rejects_other_forms() {
        let d = Digest([0xab; 32]);
        assert_eq!(Digest::from_hex(&d.to_string()), Some(d));
        assert_eq!(Digest::from_hex(&d.to_string().to_uppercase()), None);
        assert_eq!(Digest::from_hex("ab"), None);
        assert_eq!(Digest::from_hex(&"zz".repeat(32)), None);
    }

    #[test]
    fn optional_strings_cannot_run_into_each_other() {
        let encode = |a: Option<&str>, b: Option<&str>| {
            let mut v = Vec::new();
            v.opt_str(a);
            v.opt_str(b);
            v
        };
        assert_ne!(encode(Some("ab"), Some("c")), encode(Some("a"), Some("bc")));
        assert_ne!(encode(None, Some("")), encode(Some(""), None));
    }
}
