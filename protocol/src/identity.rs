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
//! authority = "<64 hex digits>"      # ed25519 public key of the topic authority, pinned: topic policies
//!                                    # are trusted only if signed by it
//! authority_key = "<64 hex digits>"  # ed25519 seed of the topic authority: only in the admin's identity
//! state = "alice.state"              # optional: the client's state folder (default: beside this file)
//! rotation_grace_secs = 600          # optional: how long after a rotation a batch of the previous epoch
//!                                    # is still accepted (default 600)
//! ```
//!
//! Content keys and the publishers a subscriber trusts are not in the file: they come from the topic
//! policies the authority signs (see [`policy`](crate::policy)), which clients fetch from the broker and
//! verify against `authority`.
//!
//! The file holds secrets: it must be readable by its owner only.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::keys::{HpkeSecretKey, PublicKey, SigningKey};
use crate::principal::Principal;
use crate::{Error, Result};

/// The contents of an identity file.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentityFile {
    /// The principal named by this identity's certificate (a file with an invalid name does not load).
    pub principal: Principal,
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
    /// The pinned topic-authority public key (hex in TOML): the only key whose topic policies this
    /// principal trusts.
    pub authority: PublicKey,
    /// Hex of the topic authority's ed25519 seed. Only the administrator's identity holds it; it signs
    /// topic policies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authority_key: Option<String>,
    /// The client's state folder (relative to the identity file's folder): where it keeps what it must
    /// remember across processes (the newest policy of each topic it used). None: `<file stem>.state`
    /// beside the identity file. Back it up with the identity (docs/operations.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<PathBuf>,
    /// How long, in seconds, after a topic's key rotation a batch sealed under the previous epoch's key is
    /// still accepted by this principal's subscriptions. None: the client's default (600 s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotation_grace_secs: Option<u64>,
}

/// The scheme of the URI subject-alternative name that names a certificate's principal:
/// `sealpost://<principal>`.
pub const PRINCIPAL_SCHEME: &str = "sealpost://";
/// The prefix of a URI subject-alternative name that binds an ed25519 signing key to the certificate's
/// principal: `urn:sealpost:ed25519:<64 hex>`.
pub const KEY_BINDING_PREFIX: &str = "urn:sealpost:ed25519:";

/// The URI SAN that names `principal` (exactly one in a client certificate).
pub fn principal_uri(principal: &str) -> String {
    format!("{PRINCIPAL_SCHEME}{principal}")
}

/// The URI SAN that binds `key` to the certificate's principal: a batch signed by a key no such SAN binds
/// is refused by the broker (`SIGNER_NOT_BOUND`).
pub fn key_binding_uri(key: &PublicKey) -> String {
    format!("{KEY_BINDING_PREFIX}{key}")
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

    /// The pinned topic-authority public key.
    pub fn authority(&self) -> PublicKey {
        self.authority
    }

    /// The topic-authority signing key, if the file holds it. Fails if it is not 64 hex digits, or if the
    /// file also pins an `authority` that is not its public key.
    pub fn authority_key(&self) -> Result<Option<SigningKey>> {
        let Some(hex_str) = &self.authority_key else {
            return Ok(None);
        };
        let key = SigningKey::from_bytes(&*secret32(hex_str, "authority_key: expected 64 hex digits")?);
        if self.authority != key.public_key() {
            return Err(Error::InvalidKey("authority_key does not match the pinned authority"));
        }
        Ok(Some(key))
    }
}

impl core::fmt::Debug for IdentityFile {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("IdentityFile")
            .field("principal", &self.principal)
            .field("broker", &self.broker)
            .field("server_name", &self.server_name)
            .field("authority", &self.authority)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity(extra: &str) -> Result<IdentityFile, toml::de::Error> {
        toml::from_str(&format!(
            "principal = \"admin\"\nbroker = \"127.0.0.1:7443\"\nserver_name = \"localhost\"\n\
             ca = \"ca.pem\"\ncert = \"admin.pem\"\nkey = \"admin.key\"\n\
             signing_key = \"{}\"\nhpke_key = \"{}\"\n{extra}",
            hex::encode([1u8; 32]),
            hex::encode([2u8; 32]),
        ))
    }

    #[test]
    fn an_invalid_principal_name_does_not_load() {
        let pinned = SigningKey::from_bytes(&[0xAA; 32]).public_key();
        let id = identity(&format!("authority = \"{pinned}\"\n")).unwrap();
        assert_eq!(id.principal, "admin");
        let text = toml::to_string(&id).unwrap();
        assert!(text.contains("principal = \"admin\""), "{text}");
        for bad in ["", "ad min", "admin/x"] {
            let err =
                toml::from_str::<IdentityFile>(&text.replace("\"admin\"", &format!("{bad:?}"))).unwrap_err();
            assert!(err.to_string().contains("invalid principal name"), "{bad:?}: {err}");
        }
    }

    #[test]
    fn authority_is_required_and_its_key_optional() {
        assert!(identity("").is_err(), "an identity without a pinned authority trusts no policy");
        let pinned = SigningKey::from_bytes(&[0xAA; 32]).public_key();
        let id = identity(&format!("authority = \"{pinned}\"\n")).unwrap();
        assert_eq!(id.authority(), pinned);
        assert!(id.authority_key().unwrap().is_none());
    }

    #[test]
    fn the_state_folder_is_optional_and_round_trips() {
        let pinned = SigningKey::from_bytes(&[0xAA; 32]).public_key();
        let id = identity(&format!("authority = \"{pinned}\"\n")).unwrap();
        assert_eq!(id.state, None);
        assert!(!toml::to_string(&id).unwrap().contains("state"));
        let id = identity(&format!("authority = \"{pinned}\"\nstate = \"keep/alice\"\n")).unwrap();
        assert_eq!(id.state.as_deref(), Some(std::path::Path::new("keep/alice")));
        let again: IdentityFile = toml::from_str(&toml::to_string(&id).unwrap()).unwrap();
        assert_eq!(again.state, id.state);
    }

    #[test]
    fn content_keys_are_no_longer_accepted_in_identity_files() {
        let pinned = SigningKey::from_bytes(&[0xAA; 32]).public_key();
        let old = format!(
            "authority = \"{pinned}\"\n[[content_key]]\ntopics = \"demo.>\"\nepoch = 1\nkey = \"00\"\n"
        );
        assert!(identity(&old).is_err());
    }

    #[test]
    fn authority_and_its_key_round_trip_through_toml() {
        let key = SigningKey::from_bytes(&[0xAA; 32]);
        let id = identity(&format!(
            "authority = \"{}\"\nauthority_key = \"{}\"\n",
            key.public_key(),
            hex::encode(*key.to_bytes())
        ))
        .unwrap();
        assert_eq!(id.authority(), key.public_key());
        assert_eq!(id.authority_key().unwrap().map(|k| k.public_key()), Some(key.public_key()));
        let again: IdentityFile = toml::from_str(&toml::to_string(&id).unwrap()).unwrap();
        assert_eq!(again.authority(), key.public_key());
        // The secret never shows in Debug.
        assert!(!format!("{id:?}").contains(&hex::encode(*key.to_bytes())));
    }

    #[test]
    fn authority_key_must_match_the_pinned_authority() {
        let other = SigningKey::from_bytes(&[0xBB; 32]).public_key();
        let id =
            identity(&format!("authority = \"{other}\"\nauthority_key = \"{}\"\n", hex::encode([0xAA; 32])))
                .unwrap();
        assert_eq!(
            id.authority_key().unwrap_err(),
            Error::InvalidKey("authority_key does not match the pinned authority")
        );
        assert!(identity("authority = \"zz\"\n").is_err());
    }
}
