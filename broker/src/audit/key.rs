//! The audit key: an ed25519 key of its own (not the TLS key, not the topic authority's), that signs
//! checkpoints and nothing else.
//!
//! The secret key file holds the 32-byte seed as 64 hex digits and a newline. It is created readable by its
//! owner only, and [`AuditKey::load`] refuses a file that its group or others can read. The seed is
//! zeroized when the key is dropped, and no `Debug` or `Display` shows it. The public key is 64 hex digits;
//! the verifier takes it in the command line or in a file.

use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::Path;

use ed25519_dalek::Signer as _;
use zeroize::Zeroizing;

use crate::{Error, Result};

/// The audit log's signing key. Zeroized on drop.
pub struct AuditKey(ed25519_dalek::SigningKey);

impl AuditKey {
    /// A fresh key from the operating system's random number generator.
    pub fn generate() -> AuditKey {
        AuditKey(ed25519_dalek::SigningKey::generate(&mut rand::rngs::OsRng))
    }

    /// The key of a 32-byte seed.
    pub fn from_seed(seed: &[u8; 32]) -> AuditKey {
        AuditKey(ed25519_dalek::SigningKey::from_bytes(seed))
    }

    /// The matching public key.
    pub fn public_key(&self) -> AuditPublicKey {
        AuditPublicKey(self.0.verifying_key())
    }

    /// Signs `msg`.
    pub(crate) fn sign(&self, msg: &[u8]) -> [u8; 64] {
        self.0.sign(msg).to_bytes()
    }

    /// Writes the key to a new file at `path`, mode 0600, synced; fails if the file exists.
    pub fn write_new(&self, path: &Path) -> Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(|e| Error::Audit(format!("cannot create {}: {e}", path.display())))?;
        let text = Zeroizing::new(format!("{}\n", hex::encode(self.0.to_bytes())));
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        Ok(())
    }

    /// Reads a key file written by [`write_new`](Self::write_new). Refuses a file readable by its group or
    /// by others.
    pub fn load(path: &Path) -> Result<AuditKey> {
        let fail = |what: String| Error::Audit(format!("audit key {}: {what}", path.display()));
        let meta = std::fs::metadata(path).map_err(|e| fail(e.to_string()))?;
        if meta.permissions().mode() & 0o077 != 0 {
            return Err(fail("readable by its group or others: chmod 600 it".into()));
        }
        let text = Zeroizing::new(std::fs::read_to_string(path).map_err(|e| fail(e.to_string()))?);
        let mut seed = Zeroizing::new([0u8; 32]);
        hex::decode_to_slice(text.trim(), &mut *seed).map_err(|_| fail("expected 64 hex digits".into()))?;
        Ok(AuditKey::from_seed(&seed))
    }
}

impl core::fmt::Debug for AuditKey {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "AuditKey(public {})", self.public_key())
    }
}

/// The public half of an [`AuditKey`]: what the verifier needs.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct AuditPublicKey(ed25519_dalek::VerifyingKey);

impl AuditPublicKey {
    /// Parses 64 hex digits. Rejects points off the curve and keys of small order.
    pub fn from_hex(s: &str) -> Result<AuditPublicKey> {
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(s.trim(), &mut bytes)
            .map_err(|_| Error::Audit("a public key is 64 hex digits".into()))?;
        let key = ed25519_dalek::VerifyingKey::from_bytes(&bytes)
            .map_err(|_| Error::Audit("not an ed25519 public key".into()))?;
        if key.is_weak() {
            return Err(Error::Audit("ed25519 public key of small order".into()));
        }
        Ok(AuditPublicKey(key))
    }

    /// `arg` as 64 hex digits, or else as the path of a file that holds them.
    pub fn from_arg(arg: &str) -> Result<AuditPublicKey> {
        if arg.len() == 64 && arg.bytes().all(|b| b.is_ascii_hexdigit()) {
            return AuditPublicKey::from_hex(arg);
        }
        let text =
            std::fs::read_to_string(arg).map_err(|e| Error::Audit(format!("public key file {arg}: {e}")))?;
        AuditPublicKey::from_hex(&text).map_err(|e| Error::Audit(format!("public key file {arg}: {e}")))
    }

    /// Whether `sig` is this key's signature of `msg` (ed25519's strict rules).
    pub(crate) fn verifies(&self, msg: &[u8], sig: &[u8; 64]) -> bool {
        self.0.verify_strict(msg, &ed25519_dalek::Signature::from_bytes(sig)).is_ok()
    }
}

impl core::fmt::Display for AuditPublicKey {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(&hex::encode(self.0.as_bytes()))
    }
}

impl core::fmt::Debug for AuditPublicKey {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "AuditPublicKey({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_file_is_owner_only_and_loads_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.key");
        let key = AuditKey::generate();
        key.write_new(&path).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(AuditKey::load(&path).unwrap().public_key(), key.public_key());
        assert!(key.write_new(&path).is_err(), "an existing key file is never overwritten");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(AuditKey::load(&path), Err(Error::Audit(m)) if m.contains("chmod")));
    }

    #[test]
    fn public_key_from_hex_or_file() {
        let dir = tempfile::tempdir().unwrap();
        let public = AuditKey::from_seed(&[7; 32]).public_key();
        assert_eq!(AuditPublicKey::from_arg(&public.to_string()).unwrap(), public);
        let path = dir.path().join("audit.pub");
        std::fs::write(&path, format!("{public}\n")).unwrap();
        assert_eq!(AuditPublicKey::from_arg(path.to_str().unwrap()).unwrap(), public);
        assert!(AuditPublicKey::from_arg("00").is_err());
        assert!(!format!("{:?}", AuditKey::from_seed(&[7; 32])).contains(&hex::encode([7u8; 32])));
    }
}
