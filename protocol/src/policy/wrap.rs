//! An epoch's content key wrapped to one member of a topic policy.
//!
//! HPKE (RFC 9180) in base mode, suite DHKEM(X25519, HKDF-SHA256) / HKDF-SHA256 / ChaCha20-Poly1305 (KEM
//! 0x0020, KDF 0x0001, AEAD 0x0003), one fresh encapsulation per member, with
//! `info = "sealpost/v1 content key\0" || topic_len || topic || epoch` and `aad = principal`. A wrapped key
//! therefore opens only for its own member, topic and epoch. Every member gets one, publishers too: they need
//! the key to seal.
//!
//! The key material is zeroized when it leaves scope; a failure to open says only that it failed.

use hpke::{Deserializable, Serializable};
use rand_core::CryptoRngCore;
use zeroize::Zeroizing;

use crate::epoch::Epoch;
use crate::keys::{ContentKey, HpkePublicKey, HpkeSecretKey};
use crate::topic::Topic;
use crate::{Error, Result};

/// Length of an HPKE encapsulated key (DHKEM(X25519, HKDF-SHA256)).
pub const ENC_LEN: usize = 32;
/// Length of a wrapped content key: 32 key bytes and a 16-byte tag.
pub const WRAPPED_LEN: usize = 48;

/// Prefix of the HPKE `info` under which content keys are wrapped.
const CONTENT_KEY_INFO: &[u8] = b"sealpost/v1 content key\0";

type Kem = hpke::kem::X25519HkdfSha256;
type Kdf = hpke::kdf::HkdfSha256;
type Aead = hpke::aead::ChaCha20Poly1305;

/// A content key wrapped to one member: the HPKE encapsulated key and the ciphertext with its tag.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct WrappedKey {
    /// The encapsulated key.
    pub(super) enc: [u8; ENC_LEN],
    /// The 32 ciphertext bytes of the key, then the 16-byte tag.
    pub(super) ct: [u8; WRAPPED_LEN],
}

/// `"sealpost/v1 content key\0" || topic_len || topic || epoch`: computed once per policy, shared by all of
/// its members.
pub(super) fn content_key_info(topic: &Topic, epoch: Epoch) -> Vec<u8> {
    let topic = topic.as_str().as_bytes();
    let mut info = Vec::with_capacity(CONTENT_KEY_INFO.len() + 1 + topic.len() + 8);
    info.extend_from_slice(CONTENT_KEY_INFO);
    // Topic::new guarantees 1..=255 bytes.
    info.push(topic.len() as u8);
    info.extend_from_slice(topic);
    info.extend_from_slice(&epoch.0.to_be_bytes());
    info
}

impl WrappedKey {
    /// Wraps `key` to `recipient`, the HPKE key of the member `principal`, under `info` (see
    /// [`content_key_info`]). Fails with [`Error::InvalidKey`] if `recipient` is of small order.
    pub(super) fn seal(
        key: &ContentKey,
        recipient: &HpkePublicKey,
        principal: &str,
        info: &[u8],
        rng: &mut impl CryptoRngCore,
    ) -> Result<Self> {
        let pk = <Kem as hpke::Kem>::PublicKey::from_bytes(&recipient.0)
            .map_err(|_| Error::InvalidKey("X25519 key"))?;
        let mut ct = Zeroizing::new([0u8; 32]);
        ct.copy_from_slice(key.as_bytes());
        let (enc, tag) = hpke::single_shot_seal_in_place_detached::<Aead, Kdf, Kem, _>(
            &hpke::OpModeS::Base,
            &pk,
            info,
            &mut ct[..],
            principal.as_bytes(),
            rng,
        )
        // The only failure for this suite: the Diffie-Hellman result is all zeros.
        .map_err(|_| Error::InvalidKey("X25519 key of small order"))?;
        let mut wrapped = Self { enc: [0; ENC_LEN], ct: [0; WRAPPED_LEN] };
        wrapped.enc.copy_from_slice(&enc.to_bytes());
        wrapped.ct[..32].copy_from_slice(&ct[..]);
        wrapped.ct[32..].copy_from_slice(&tag.to_bytes());
        Ok(wrapped)
    }

    /// Opens the key wrapped to the member `principal` with its HPKE secret key, under `info`. Fails with
    /// [`Error::KeyUnwrap`], and nothing more, if it does not open.
    pub(super) fn open(&self, secret: &HpkeSecretKey, principal: &str, info: &[u8]) -> Result<ContentKey> {
        let sk =
            <Kem as hpke::Kem>::PrivateKey::from_bytes(secret.as_bytes()).map_err(|_| Error::KeyUnwrap)?;
        let enc = <Kem as hpke::Kem>::EncappedKey::from_bytes(&self.enc).map_err(|_| Error::KeyUnwrap)?;
        let tag = hpke::aead::AeadTag::<Aead>::from_bytes(&self.ct[32..]).map_err(|_| Error::KeyUnwrap)?;
        let mut key = Zeroizing::new([0u8; 32]);
        key.copy_from_slice(&self.ct[..32]);
        hpke::single_shot_open_in_place_detached::<Aead, Kdf, Kem>(
            &hpke::OpModeR::Base,
            &sk,
            &enc,
            info,
            &mut key[..],
            principal.as_bytes(),
            &tag,
        )
        .map_err(|_| Error::KeyUnwrap)?;
        Ok(ContentKey::from_bytes(&key))
    }
}
