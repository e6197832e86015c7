//! Keys and identities.
//!
//! - [`SigningKey`] / [`PublicKey`]: ed25519, one per principal; a publisher signs each batch with it.
//! - [`HpkeSecretKey`] / [`HpkePublicKey`]: X25519, one per principal; topic content keys are wrapped to it
//!   with HPKE (RFC 9180) by the topic authority.
//! - [`ContentKey`]: the 32-byte XChaCha20-Poly1305 key of one topic epoch.
//! - [`KeyId`]: a short, printable name for a public key.
//!
//! Secret keys are zeroized when dropped and their `Debug` output never contains key material.

use core::fmt;

use ed25519_dalek::Signer as _;
use rand_core::CryptoRngCore;
use serde::{Deserialize, Serialize};
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::digest::context;
/// The epoch a content key belongs to (defined in `epoch.rs`; also at the crate root).
pub use crate::epoch::Epoch;
use crate::{Error, Result};

/// An ed25519 signing key. Zeroized on drop.
pub struct SigningKey(ed25519_dalek::SigningKey);

impl SigningKey {
    /// Draws a fresh key from `rng`.
    pub fn generate(rng: &mut impl CryptoRngCore) -> Self {
        Self(ed25519_dalek::SigningKey::generate(rng))
    }

    /// Rebuilds a key from its 32-byte seed.
    pub fn from_bytes(seed: &[u8; 32]) -> Self {
        Self(ed25519_dalek::SigningKey::from_bytes(seed))
    }

    /// The 32-byte seed, in a buffer that is zeroized when dropped.
    pub fn to_bytes(&self) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(self.0.to_bytes())
    }

    /// The matching public key.
    pub fn public_key(&self) -> PublicKey {
        PublicKey(self.0.verifying_key())
    }

    pub(crate) fn sign(&self, msg: &[u8]) -> [u8; 64] {
        self.0.sign(msg).to_bytes()
    }
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SigningKey(public {})", self.public_key().key_id())
    }
}

/// An ed25519 public key that identifies a publisher.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct PublicKey(ed25519_dalek::VerifyingKey);

impl PublicKey {
    /// Parses 32 bytes. Rejects encodings that are not points on the curve and keys of small order, which
    /// `verify_strict` would reject anyway.
    pub fn from_bytes(bytes: &[u8; 32]) -> Result<Self> {
        let key = ed25519_dalek::VerifyingKey::from_bytes(bytes)
            .map_err(|_| Error::InvalidKey("not an ed25519 point"))?;
        if key.is_weak() {
            return Err(Error::InvalidKey("ed25519 key of small order"));
        }
        Ok(Self(key))
    }

    /// The 32 raw bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        self.0.as_bytes()
    }

    /// A short, stable name for this key.
    pub fn key_id(&self) -> KeyId {
        let h = blake3::derive_key(context::KEY_ID, self.as_bytes());
        let mut id = [0u8; 8];
        id.copy_from_slice(&h[..8]);
        KeyId(id)
    }

    /// Verifies `sig` over `msg` with ed25519's strict rules (no malleable or small-order signatures).
    pub(crate) fn verify_strict(&self, msg: &[u8], sig: &[u8; 64]) -> Result<()> {
        let sig = ed25519_dalek::Signature::from_bytes(sig);
        self.0.verify_strict(msg, &sig).map_err(|_| Error::BadSignature)
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.key_id())
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.as_bytes()))
    }
}

impl core::str::FromStr for PublicKey {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(s, &mut bytes).map_err(|_| Error::InvalidKey("expected 64 hex digits"))?;
        Self::from_bytes(&bytes)
    }
}

/// Hex in human-readable formats (TOML, JSON), 32 raw bytes in binary ones (postcard).
impl Serialize for PublicKey {
    fn serialize<S: serde::Serializer>(&self, s: S) -> core::result::Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.serialize_str(&self.to_string())
        } else {
            s.serialize_bytes(self.as_bytes())
        }
    }
}

impl<'de> Deserialize<'de> for PublicKey {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> core::result::Result<Self, D::Error> {
        if d.is_human_readable() {
            let s: std::borrow::Cow<'de, str> = Deserialize::deserialize(d)?;
            s.parse().map_err(serde::de::Error::custom)
        } else {
            let bytes: serde_bytes::ByteArray<32> = Deserialize::deserialize(d)?;
            PublicKey::from_bytes(&bytes).map_err(serde::de::Error::custom)
        }
    }
}

/// The first 8 bytes of a domain-separated BLAKE3 hash of a public key; shown in logs and CLIs.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId(pub [u8; 8]);

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({self})")
    }
}

/// An X25519 secret key, used to unwrap HPKE-sealed content keys. Zeroized on drop.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct HpkeSecretKey([u8; 32]);

impl HpkeSecretKey {
    /// Draws a fresh key from `rng`.
    pub fn generate(rng: &mut impl CryptoRngCore) -> Self {
        let mut bytes = [0u8; 32];
        rng.fill_bytes(&mut bytes);
        Self(bytes)
    }

    /// Rebuilds a key from its 32 bytes.
    pub fn from_bytes(bytes: &[u8; 32]) -> Self {
        Self(*bytes)
    }

    /// The 32 secret bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The matching public key.
    pub fn public_key(&self) -> HpkePublicKey {
        let secret = x25519_dalek::StaticSecret::from(self.0);
        HpkePublicKey(x25519_dalek::PublicKey::from(&secret).to_bytes())
    }
}

impl fmt::Debug for HpkeSecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "HpkeSecretKey(public {})", hex::encode(&self.public_key().0[..8]))
    }
}

/// An X25519 public key to which content keys are wrapped.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct HpkePublicKey(pub [u8; 32]);

impl fmt::Debug for HpkePublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "HpkePublicKey({})", hex::encode(&self.0[..8]))
    }
}

impl fmt::Display for HpkePublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

/// The XChaCha20-Poly1305 key that encrypts the records of one topic epoch. Zeroized on drop.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct ContentKey([u8; 32]);

impl ContentKey {
    /// Draws a fresh key from `rng`.
    pub fn generate(rng: &mut impl CryptoRngCore) -> Self {
        let mut bytes = [0u8; 32];
        rng.fill_bytes(&mut bytes);
        Self(bytes)
    }

    /// Wraps 32 key bytes.
    pub fn from_bytes(bytes: &[u8; 32]) -> Self {
        Self(*bytes)
    }

    /// The 32 key bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Debug for ContentKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ContentKey(<redacted>)")
    }
}

/// Where [`open`](crate::open) finds the content key of an epoch.
pub trait KeyLookup {
    /// The content key of `epoch`, if this holder has it.
    fn content_key(&self, epoch: Epoch) -> Option<&ContentKey>;
}

impl KeyLookup for std::collections::BTreeMap<Epoch, ContentKey> {
    fn content_key(&self, epoch: Epoch) -> Option<&ContentKey> {
        self.get(&epoch)
    }
}

impl KeyLookup for (Epoch, ContentKey) {
    fn content_key(&self, epoch: Epoch) -> Option<&ContentKey> {
        (self.0 == epoch).then_some(&self.1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_chacha::rand_core::SeedableRng;

    #[test]
    fn debug_never_prints_secret_bytes() {
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(1);
        let sk = SigningKey::generate(&mut rng);
        let hk = HpkeSecretKey::generate(&mut rng);
        let ck = ContentKey::generate(&mut rng);
        for (secret, debug) in [
            (hex::encode(*sk.to_bytes()), format!("{sk:?}")),
            (hex::encode(hk.as_bytes()), format!("{hk:?}")),
            (hex::encode(ck.as_bytes()), format!("{ck:?}")),
        ] {
            // No 4-byte window of the secret appears in the output.
            for i in 0..secret.len() - 8 {
                assert!(!debug.contains(&secret[i..i + 8]), "{debug} leaks {secret}");
            }
        }
    }

    #[test]
    fn public_key_round_trips_through_hex_and_rejects_weak_keys() {
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(2);
        let pk = SigningKey::generate(&mut rng).public_key();
        assert_eq!(pk.to_string().parse::<PublicKey>().unwrap(), pk);
        // The identity point is of small order.
        let mut identity = [0u8; 32];
        identity[0] = 1;
        assert_eq!(PublicKey::from_bytes(&identity), Err(Error::InvalidKey("ed25519 key of small order")));
        assert!("zz".parse::<PublicKey>().is_err());
    }

    #[test]
    fn signing_key_round_trips_through_its_seed() {
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(3);
        let sk = SigningKey::generate(&mut rng);
        assert_eq!(SigningKey::from_bytes(&sk.to_bytes()).public_key(), sk.public_key());
    }
}
