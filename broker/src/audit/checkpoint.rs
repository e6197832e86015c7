//! A checkpoint: a line signed with the audit key that vouches for the chain up to an entry.
//!
//! A checkpoint covers the `seq` and `hash` of the last entry written before it, its own number (1, 2, ...
//! across files and runs), the hash of the checkpoint before it ([`Digest::ZERO`] for the first), its time
//! and whether it is the `final` one written at a clean close. The signed bytes are
//! [`SIGNED_PREFIX`] followed by those fields canonically encoded ([`super::digest`]); the checkpoint's
//! `hash` is BLAKE3 (derive-key, [`CHECKPOINT_CONTEXT`]) of the same bytes. Since an entry's hash covers
//! the entry before it, a valid signature on a checkpoint vouches for every entry up to the one it covers:
//! someone without the key can change none of them, and cannot add a checkpoint after them.
//!
//! What a checkpoint does not vouch for: entries written after it (until the next one), and the existence
//! of later checkpoints (deleting everything after a checkpoint leaves a valid prefix; see the verifier
//! for how an unclosed log is reported).

use std::fmt::Write as _;

use serde::Deserialize;

use super::digest::{Canonical, Digest, CHECKPOINT_CONTEXT};
use super::key::{AuditKey, AuditPublicKey};
use super::rfc3339;

/// The first bytes of every signed checkpoint message: a signature over them is never one over anything
/// else the audit key could sign.
pub const SIGNED_PREFIX: &[u8] = b"sealpost-audit-checkpoint-v1\0";

/// A checkpoint line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checkpoint {
    /// Its number: 1 for the first checkpoint of the log, then consecutive.
    pub number: u64,
    /// When it was written, in milliseconds since the Unix epoch.
    pub time: u64,
    /// The `seq` of the last entry before it.
    pub seq: u64,
    /// The `hash` of that entry.
    pub entry_hash: Digest,
    /// The hash of the checkpoint before it.
    pub prev: Digest,
    /// Written at a clean close: nothing follows it in this run.
    pub last: bool,
    /// Its own hash.
    pub hash: Digest,
    /// The audit key's ed25519 signature of [`signed_bytes`](Self::signed_bytes).
    pub sig: [u8; 64],
}

impl Checkpoint {
    /// Makes and signs a checkpoint.
    pub fn sign(
        key: &AuditKey,
        number: u64,
        time: u64,
        (seq, entry_hash): (u64, Digest),
        prev: Digest,
        last: bool,
    ) -> Checkpoint {
        let mut c =
            Checkpoint { number, time, seq, entry_hash, prev, last, hash: Digest::ZERO, sig: [0; 64] };
        let bytes = c.signed_bytes();
        c.hash = Digest(blake3::derive_key(CHECKPOINT_CONTEXT, &bytes));
        c.sig = key.sign(&bytes);
        c
    }

    /// [`SIGNED_PREFIX`], then `number`, `time`, `seq`, `entry_hash`, `prev` and `final` (one byte).
    pub fn signed_bytes(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(SIGNED_PREFIX.len() + 3 * 8 + 2 * 32 + 1);
        v.raw(SIGNED_PREFIX);
        v.u64(self.number);
        v.u64(self.time);
        v.u64(self.seq);
        v.digest(&self.entry_hash);
        v.digest(&self.prev);
        v.raw(&[u8::from(self.last)]);
        v
    }

    /// The hash its fields give (compare with [`hash`](Self::hash)).
    pub fn canonical_hash(&self) -> Digest {
        Digest(blake3::derive_key(CHECKPOINT_CONTEXT, &self.signed_bytes()))
    }

    /// Whether `key` signed it.
    pub fn signed_by(&self, key: &AuditPublicKey) -> bool {
        key.verifies(&self.signed_bytes(), &self.sig)
    }

    /// Appends the JSON line, newline included.
    pub fn render(&self, out: &mut String) {
        let _ = write!(out, "{{\"checkpoint\":{},\"time\":\"", self.number);
        rfc3339::format(self.time, out);
        let _ = writeln!(
            out,
            "\",\"seq\":{},\"entry_hash\":\"{}\",\"prev\":\"{}\",\"final\":{},\"hash\":\"{}\",\"sig\":\"{}\"}}",
            self.seq,
            self.entry_hash,
            self.prev,
            self.last,
            self.hash,
            hex::encode(self.sig)
        );
    }

    /// Reads a line written by [`render`](Self::render) (without its newline). It checks neither the hash
    /// nor the signature.
    pub fn parse(line: &str) -> Result<Checkpoint, String> {
        let raw: RawCheckpoint =
            serde_json::from_str(line).map_err(|e| format!("not an audit checkpoint: {e}"))?;
        let mut sig = [0u8; 64];
        hex::decode_to_slice(&raw.sig, &mut sig).map_err(|_| "sig is not 128 hex digits")?;
        let c = Checkpoint {
            number: raw.checkpoint,
            time: rfc3339::parse(&raw.time)
                .ok_or_else(|| format!("time {:?} is not RFC 3339 UTC", raw.time))?,
            seq: raw.seq,
            entry_hash: Digest::from_hex(&raw.entry_hash).ok_or("entry_hash is not a 64-digit hex hash")?,
            prev: Digest::from_hex(&raw.prev).ok_or("prev is not a 64-digit hex hash")?,
            last: raw.r#final,
            hash: Digest::from_hex(&raw.hash).ok_or("hash is not a 64-digit hex hash")?,
            sig,
        };
        let mut again = String::with_capacity(line.len() + 1);
        c.render(&mut again);
        if again.trim_end_matches('\n') != line {
            return Err("not in the form the writer writes (fields reordered, added or reformatted)".into());
        }
        Ok(c)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCheckpoint {
    checkpoint: u64,
    time: String,
    seq: u64,
    entry_hash: String,
    prev: String,
    r#final: bool,
    hash: String,
    sig: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_checkpoint_renders_parses_and_verifies() {
        let key = AuditKey::from_seed(&[1; 32]);
        let c = Checkpoint::sign(&key, 3, 1_000, (41, Digest([9; 32])), Digest([8; 32]), true);
        let mut line = String::new();
        c.render(&mut line);
        let back = Checkpoint::parse(line.trim_end()).unwrap();
        assert_eq!(back, c);
        assert_eq!(back.canonical_hash(), c.hash);
        assert!(back.signed_by(&key.public_key()));
        assert!(!back.signed_by(&AuditKey::from_seed(&[2; 32]).public_key()));
    }

    /// The format's golden vector (ed25519 signatures are deterministic).
    #[test]
    fn golden_checkpoint_line() {
        let key = AuditKey::from_seed(&[1; 32]);
        let c = Checkpoint::sign(&key, 3, 1_796_431_397_123, (41, Digest([9; 32])), Digest([8; 32]), true);
        let mut line = String::new();
        c.render(&mut line);
        assert_eq!(line, GOLDEN_CHECKPOINT);
    }

    const GOLDEN_CHECKPOINT: &str = concat!(
        r#"{"checkpoint":3,"time":"2026-12-05T00:43:17.123Z","seq":41,"#,
        r#""entry_hash":"0909090909090909090909090909090909090909090909090909090909090909","#,
        r#""prev":"0808080808080808080808080808080808080808080808080808080808080808","final":true,"#,
        r#""hash":"ed18d16e7db5d6123ac4690608c826d172d101003c398335f6aab9b2cac4a788","#,
        r#""sig":"46d8ca3a6b6c789d43073522b766fcf831bffd6280a42626ecb8408a0c1a1a22"#,
        r#"ab13119194782810ed916866058cc9f0214e9354ec82c9dab1e68b4f18ab6501"}"#,
        "\n"
    );

    #[test]
    fn every_covered_field_is_signed() {
        let key = AuditKey::from_seed(&[1; 32]);
        let c = Checkpoint::sign(&key, 3, 1_000, (41, Digest([9; 32])), Digest([8; 32]), false);
        let public = key.public_key();
        let changed = [
            Checkpoint { number: 4, ..c.clone() },
            Checkpoint { time: 1_001, ..c.clone() },
            Checkpoint { seq: 40, ..c.clone() },
            Checkpoint { entry_hash: Digest([7; 32]), ..c.clone() },
            Checkpoint { prev: Digest::ZERO, ..c.clone() },
            Checkpoint { last: true, ..c.clone() },
        ];
        for x in changed {
            assert!(!x.signed_by(&public), "{x:?}");
            assert_ne!(x.canonical_hash(), c.hash);
        }
    }
}
