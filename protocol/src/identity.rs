//! The identity file: one TOML file per principal that says who it is, how to reach the broker and which
//! keys it holds. This module only defines its shape; reading and writing files is the caller's business.
//!
//! ```toml
//! principal = "alice"
//! broker = "127.0.0.1:7443"          # host:port of the broker
//! server_name = "localhost"          # the name the broker's certificate must carry
//! ca = "../pki/ca.pem"               # roots trusted for the broker's certificate (relative paths are
//! cert = "../pki/alice.pem"          # resolved from the identity file's folder); the TLS client
//! key = "../pki/alice.key"           # certificate chain and its private key, PEM
//! signing_key = "<64 hex digits>"    # ed25519 seed: signs this principal's batches
//! hpke_key = "<64 hex digits>"       # X25519 secret: unwraps topic content keys
//!
//! [[content_key]]                    # until topic policies exist: content keys held directly
//! topics = "demo.>"
//! epoch = 1
//! key = "<64 hex digits>"
//!
//! [[publisher]]                      # until topic policies exist: publisher keys trusted by subscribers
//! principal = "alice"
//! key = "<64 hex digits>"            # ed25519 public key
//! topics = "demo.>"
//! ```
//!
//! The file holds secrets: it must be readable by its owner only.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::keys::{ContentKey, Epoch, HpkeSecretKey, PublicKey, SigningKey};
use crate::topic::{Topic, TopicPattern};
use crate::{Error, Result};

/// The contents of an identity file.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentityFile {
    /// The principal named by this identity's certificate.
    pub principal: String,
    /// `host:port` of the broker.
    pub broker: String,
    /// The DNS name or IP address the broker's certificate must be valid for.
    pub server_name: String,
    /// PEM file of the CA certificates trusted for the broker.
    pub ca: PathBuf,
    /// PEM file of this principal's TLS certificate chain.
    pub cert: PathBuf,
    /// PEM file of the TLS certificate's private key.
    pub key: PathBuf,
    /// Hex of the ed25519 signing seed.
    pub signing_key: String,
    /// Hex of the X25519 secret key.
    pub hpke_key: String,
    /// Content keys held directly, by topic pattern (until topic policies exist).
    #[serde(default, rename = "content_key")]
    pub content_keys: Vec<ContentKeyEntry>,
    /// Publisher keys this principal trusts, with their principals (until topic policies exist). A
    /// subscriber accepts a batch only from a key listed here for a pattern matching the batch's topic.
    #[serde(default, rename = "publisher")]
    pub publishers: Vec<PublisherEntry>,
}

/// A publisher key trusted on the topics matching a pattern.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublisherEntry {
    /// The publisher's principal, as shown to applications.
    pub principal: String,
    /// Its ed25519 public key.
    pub key: PublicKey,
    /// The topics it is trusted to publish on.
    pub topics: TopicPattern,
}

/// A content key for the topics matching a pattern, in one epoch.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContentKeyEntry {
    /// The topics this key is for.
    pub topics: TopicPattern,
    /// Its epoch.
    pub epoch: u64,
    /// Hex of the 32 key bytes.
    pub key: String,
}

fn secret32(hex_str: &str, what: &'static str) -> Result<Zeroizing<[u8; 32]>> {
    let mut out = Zeroizing::new([0u8; 32]);
    hex::decode_to_slice(hex_str.trim(), &mut *out).map_err(|_| Error::InvalidKey(what))?;
    Ok(out)
}

impl IdentityFile {
    /// The ed25519 signing key.
    pub fn signing_key(&self) -> Result<SigningKey> {
        Ok(SigningKey::from_bytes(&*secret32(&self.signing_key, "signing_key: expected 64 hex digits")?))
    }

    /// The X25519 secret key.
    pub fn hpke_key(&self) -> Result<HpkeSecretKey> {
        Ok(HpkeSecretKey::from_bytes(&*secret32(&self.hpke_key, "hpke_key: expected 64 hex digits")?))
    }

    /// The principal of a publisher key trusted on `topic`, if any.
    pub fn trusted_publisher(&self, topic: &Topic, key: &PublicKey) -> Option<&str> {
        self.publishers
            .iter()
            .find(|p| &p.key == key && p.topics.matches(topic))
            .map(|p| p.principal.as_str())
    }

    /// The content keys held for `topic`, by epoch.
    pub fn content_keys(&self, topic: &Topic) -> Result<std::collections::BTreeMap<Epoch, ContentKey>> {
        let mut keys = std::collections::BTreeMap::new();
        for entry in self.content_keys.iter().filter(|e| e.topics.matches(topic)) {
            let key = secret32(&entry.key, "content_key.key: expected 64 hex digits")?;
            keys.insert(Epoch(entry.epoch), ContentKey::from_bytes(&key));
        }
        Ok(keys)
    }
}

impl core::fmt::Debug for IdentityFile {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("IdentityFile")
            .field("principal", &self.principal)
            .field("broker", &self.broker)
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}
