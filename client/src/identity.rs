//! Loading an identity: the TOML file that says who this principal is, how to reach the broker, which
//! keys it holds and which topic authority it trusts (its shape is [`IdentityFile`]), plus the PEM files
//! it names.
//!
//! Loading checks everything it can before any connection is attempted: the TOML shape, every key's hex
//! (and that an `authority_key` matches the pinned `authority`), that the CA file holds at least one
//! certificate, that the certificate file holds a chain and the key file a private key. An error names the
//! file and the field at fault and never prints a secret (TOML parse errors are reduced to their line and
//! message, without the offending line's text).
//!
//! Relative paths in the file are resolved from the folder that holds the identity file, so an identity
//! and its PEM files can be moved together.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use sealpost_protocol::identity::IdentityFile;
use sealpost_protocol::{HpkePublicKey, HpkeSecretKey, Member, Principal, PublicKey, SigningKey};

use crate::error::{Error, Result};

/// A loaded identity: the principal's TLS credentials, its signing and HPKE keys, and the topic authority it
/// trusts (with the authority's signing key, in the administrator's identity only).
///
/// Cheap to clone (the contents are shared). Its `Debug` output shows the principal, the broker and the
/// signing key's id, never secret material.
#[derive(Clone)]
pub struct Identity {
    inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) path: PathBuf,
    pub(crate) file: IdentityFile,
    pub(crate) signer: SigningKey,
    pub(crate) hpke: HpkeSecretKey,
    pub(crate) authority_key: Option<SigningKey>,
    pub(crate) roots: Vec<CertificateDer<'static>>,
    pub(crate) chain: Vec<CertificateDer<'static>>,
    pub(crate) key: PrivateKeyDer<'static>,
}

impl Identity {
    /// Reads and checks the identity file at `path` and the PEM files it names.
    pub fn load(path: impl AsRef<Path>) -> Result<Identity> {
        let path = path.as_ref().to_path_buf();
        let fail = |message: String| Error::Identity { path: path.clone(), message };
        let text = std::fs::read_to_string(&path).map_err(|e| fail(format!("cannot read it: {e}")))?;
        let file: IdentityFile = toml::from_str(&text).map_err(|e| fail(toml_error(&text, &e)))?;
        let signer =
            file.signing_key().map_err(|_| fail("field `signing_key`: expected 64 hex digits".into()))?;
        let hpke = file.hpke_key().map_err(|_| fail("field `hpke_key`: expected 64 hex digits".into()))?;
        let authority_key = file.authority_key().map_err(|e| match e {
            sealpost_protocol::Error::InvalidKey(m) if m.starts_with("authority_key: ") => {
                fail("field `authority_key`: expected 64 hex digits".into())
            }
            _ => fail("field `authority_key`: it is not the secret key of the pinned `authority`".into()),
        })?;
        if file.broker.split(',').any(|b| b.trim().is_empty()) {
            return Err(fail("field `broker`: expected host:port, or several separated by commas".into()));
        }
        if rustls::pki_types::ServerName::try_from(file.server_name.as_str()).is_err() {
            return Err(fail(format!(
                "field `server_name`: {:?} is not a DNS name or IP address",
                file.server_name
            )));
        }
        let resolve = |p: &Path| resolve(&path, p);

        let ca = resolve(&file.ca);
        let roots = read_certs(&ca).map_err(|m| fail(format!("field `ca`: {}: {m}", ca.display())))?;
        let cert = resolve(&file.cert);
        let chain = read_certs(&cert).map_err(|m| fail(format!("field `cert`: {}: {m}", cert.display())))?;
        let key_path = resolve(&file.key);
        let key =
            read_key(&key_path).map_err(|m| fail(format!("field `key`: {}: {m}", key_path.display())))?;

        Ok(Identity { inner: Arc::new(Inner { path, file, signer, hpke, authority_key, roots, chain, key }) })
    }

    /// The principal this identity claims to be (the broker believes its certificate, not this field).
    pub fn principal(&self) -> &Principal {
        &self.inner.file.principal
    }

    /// The broker's address, `host:port`, or the addresses of several brokers of one deployment (that
    /// share a log: `storage.engine = "jetstream"`), separated by commas, as the file gives it.
    pub fn broker(&self) -> &str {
        &self.inner.file.broker
    }

    /// Each broker address of [`broker`](Self::broker), in order.
    pub fn brokers(&self) -> impl Iterator<Item = &str> {
        self.inner.file.broker.split(',').map(str::trim)
    }

    /// The name the broker's certificate must be valid for.
    pub fn server_name(&self) -> &str {
        &self.inner.file.server_name
    }

    /// The public half of the signing key: what a topic policy lists for this principal.
    pub fn public_key(&self) -> PublicKey {
        self.inner.signer.public_key()
    }

    /// The public half of the HPKE key: what a topic policy wraps content keys to for this principal.
    pub fn hpke_public_key(&self) -> HpkePublicKey {
        self.inner.hpke.public_key()
    }

    /// This principal as a member of a topic policy, with the given roles and its public keys.
    pub fn member(&self, publish: bool, subscribe: bool) -> Member {
        Member {
            principal: self.principal().clone(),
            publish,
            subscribe,
            signing_key: self.public_key(),
            hpke_key: self.hpke_public_key(),
        }
    }

    /// The pinned topic-authority key: the only key whose topic policies this identity trusts.
    pub fn authority(&self) -> PublicKey {
        self.inner.file.authority
    }

    /// The topic authority's signing key, if this identity holds it (`authority_key`: the administrator's
    /// identity only). It signs topic policies; loading checked that it matches
    /// [`authority`](Self::authority).
    pub fn authority_key(&self) -> Option<&SigningKey> {
        self.inner.authority_key.as_ref()
    }

    /// The state folder the identity names: its file's `state` (relative to the identity file's folder),
    /// else `<file stem>.state` beside the identity file (`alice.toml` -> `alice.state`).
    pub fn state_folder(&self) -> PathBuf {
        let path = &self.inner.path;
        match &self.inner.file.state {
            Some(state) => resolve(path, state),
            None => {
                let stem = path.file_stem().map_or_else(|| "identity".into(), |s| s.to_os_string());
                let mut name = stem;
                name.push(".state");
                path.with_file_name(name)
            }
        }
    }

    /// The identity file's `rotation_grace_secs`, if it sets one: what
    /// [`ClientOptions::from_identity`](crate::ClientOptions::from_identity), and so
    /// [`Client::connect`](crate::Client::connect), uses as
    /// [`ClientOptions::rotation_grace`](crate::ClientOptions::rotation_grace).
    pub fn rotation_grace(&self) -> Option<std::time::Duration> {
        self.inner.file.rotation_grace_secs.map(std::time::Duration::from_secs)
    }

    /// The DER of this principal's certificate (the leaf of the chain the file names).
    pub fn certificate_der(&self) -> Option<&[u8]> {
        self.inner.chain.first().map(|c| c.as_ref())
    }

    /// The TLS key file the identity names, resolved from its folder.
    pub fn key_file(&self) -> PathBuf {
        self.inner.path_of(&self.inner.file.key)
    }

    /// The identity file this was loaded from.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    pub(crate) fn inner(&self) -> &Arc<Inner> {
        &self.inner
    }
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("path", &self.inner.path)
            .field("principal", &self.inner.file.principal)
            .field("broker", &self.inner.file.broker)
            .field("signing_key", &self.public_key().key_id())
            .field("authority", &self.authority().key_id())
            .field("holds_authority_key", &self.inner.authority_key.is_some())
            .finish_non_exhaustive()
    }
}

impl Inner {
    /// A path from the identity file, resolved from its folder.
    pub(crate) fn path_of(&self, p: &Path) -> PathBuf {
        resolve(&self.path, p)
    }
}

/// `p` as written in the identity file at `identity_path`: relative paths start from its folder.
fn resolve(identity_path: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        identity_path.parent().unwrap_or(Path::new("")).join(p)
    }
}

/// A TOML error as one line: where, and what. The full `Display` of a TOML error quotes the offending
/// line, which may hold a secret key, so it is not used.
fn toml_error(text: &str, e: &toml::de::Error) -> String {
    let message = e.message().trim().replace('\n', " ");
    match e.span() {
        Some(span) => {
            let line = text.get(..span.start).map(|t| t.matches('\n').count() + 1).unwrap_or(1);
            format!("line {line}: {message}")
        }
        None => message,
    }
}

fn read_pem(path: &Path) -> core::result::Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("cannot read it: {e}"))
}

fn read_certs(path: &Path) -> core::result::Result<Vec<CertificateDer<'static>>, String> {
    let pem = read_pem(path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<core::result::Result<Vec<_>, _>>()
        .map_err(|e| format!("invalid PEM: {e}"))?;
    if certs.is_empty() {
        return Err("no CERTIFICATE section found".into());
    }
    Ok(certs)
}

fn read_key(path: &Path) -> core::result::Result<PrivateKeyDer<'static>, String> {
    let pem = read_pem(path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => "no PRIVATE KEY section found".to_owned(),
        e => format!("invalid PEM: {e}"),
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The topic authority that identities written by [`write_identity`] pin.
    pub(crate) fn authority() -> SigningKey {
        SigningKey::from_bytes(&[0xAA; 32])
    }

    /// Writes a CA, a certificate for `principal` signed by it, and an identity file that names them into
    /// `dir`; returns the identity file's path.
    pub(crate) fn write_identity(dir: &Path, principal: &str, extra: &str) -> PathBuf {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec![principal.to_owned()])
            .unwrap()
            .signed_by(&key, &ca, &ca_key)
            .unwrap();
        std::fs::create_dir_all(dir.join("pki")).unwrap();
        std::fs::write(dir.join("pki/ca.pem"), ca.pem()).unwrap();
        std::fs::write(dir.join("pki/me.pem"), cert.pem()).unwrap();
        std::fs::write(dir.join("pki/me.key"), key.serialize_pem()).unwrap();
        let path = dir.join("me.toml");
        std::fs::write(
            &path,
            format!(
                "principal = \"{principal}\"\nbroker = \"127.0.0.1:7443\"\nserver_name = \"localhost\"\n\
                 ca = \"pki/ca.pem\"\ncert = \"pki/me.pem\"\nkey = \"pki/me.key\"\n\
                 signing_key = \"{}\"\nhpke_key = \"{}\"\nauthority = \"{}\"\n{extra}",
                "11".repeat(32),
                "22".repeat(32),
                authority().public_key()
            ),
        )
        .unwrap();
        path
    }

    #[test]
    fn load_resolves_paths_from_the_identity_folder() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_identity(dir.path(), "alice", "");
        let id = Identity::load(&path).unwrap();
        assert_eq!(id.principal(), "alice");
        assert_eq!(id.broker(), "127.0.0.1:7443");
        assert_eq!(id.inner().roots.len(), 1);
        assert_eq!(id.inner().chain.len(), 1);
        assert_eq!(id.public_key(), SigningKey::from_bytes(&[0x11; 32]).public_key());
    }

    #[test]
    fn rotation_grace_is_read_from_the_file_when_it_sets_one() {
        let dir = tempfile::tempdir().unwrap();
        let id = Identity::load(write_identity(dir.path(), "alice", "")).unwrap();
        assert_eq!(id.rotation_grace(), None);
        let other = tempfile::tempdir().unwrap();
        let id = Identity::load(write_identity(other.path(), "alice", "rotation_grace_secs = 30\n")).unwrap();
        assert_eq!(id.rotation_grace(), Some(std::time::Duration::from_secs(30)));
    }

    #[test]
    fn debug_shows_no_secret() {
        let dir = tempfile::tempdir().unwrap();
        let id = Identity::load(write_identity(dir.path(), "alice", "")).unwrap();
        let debug = format!("{id:?}");
        assert!(debug.contains("alice"));
        assert!(!debug.contains("1111"), "{debug}");
    }

    #[test]
    fn missing_pem_file_names_the_field_and_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_identity(dir.path(), "alice", "");
        std::fs::remove_file(dir.path().join("pki/ca.pem")).unwrap();
        let e = Identity::load(&path).unwrap_err().to_string();
        assert!(e.starts_with(&format!("identity file {}: field `ca`: ", path.display())), "{e}");
        assert!(e.contains("ca.pem: cannot read it"), "{e}");
    }

    #[test]
    fn bad_signing_key_is_named_without_printing_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_identity(dir.path(), "alice", "");
        let text = std::fs::read_to_string(&path).unwrap().replace(&"11".repeat(32), "secretzz");
        std::fs::write(&path, text).unwrap();
        let e = Identity::load(&path).unwrap_err().to_string();
        assert!(e.ends_with("field `signing_key`: expected 64 hex digits"), "{e}");
        assert!(!e.contains("secretzz"));
    }

    #[test]
    fn toml_errors_give_line_and_message_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_identity(dir.path(), "alice", "\nauthority_key = 12\n");
        let e = Identity::load(&path).unwrap_err().to_string();
        assert!(e.contains("line 11"), "{e}");
        assert!(!e.contains('\n'), "{e}");
        let text = std::fs::read_to_string(&path).unwrap().replace("ca = ", "cx = ");
        std::fs::write(&path, text).unwrap();
        let e = Identity::load(&path).unwrap_err().to_string();
        assert!(e.contains("cx"), "{e}");
    }

    #[test]
    fn the_authority_key_is_checked_and_never_shown() {
        let dir = tempfile::tempdir().unwrap();
        let seed = hex::encode(*authority().to_bytes());
        let id =
            Identity::load(write_identity(dir.path(), "admin", &format!("authority_key = \"{seed}\"\n")))
                .unwrap();
        assert_eq!(id.authority_key().map(SigningKey::public_key), Some(authority().public_key()));
        assert_eq!(id.authority(), authority().public_key());
        assert!(!format!("{id:?}").contains(&seed[..16]));

        let dir = tempfile::tempdir().unwrap();
        let other = hex::encode([0xBB; 32]);
        let path = write_identity(dir.path(), "admin", &format!("authority_key = \"{other}\"\n"));
        let e = Identity::load(&path).unwrap_err().to_string();
        assert!(
            e.ends_with("field `authority_key`: it is not the secret key of the pinned `authority`"),
            "{e}"
        );
        assert!(!e.contains(&other[..16]));

        let dir = tempfile::tempdir().unwrap();
        let path = write_identity(dir.path(), "admin", "authority_key = \"zz\"\n");
        let e = Identity::load(&path).unwrap_err().to_string();
        assert!(e.ends_with("field `authority_key`: expected 64 hex digits"), "{e}");
    }

    #[test]
    fn a_member_carries_the_public_keys() {
        let dir = tempfile::tempdir().unwrap();
        let id = Identity::load(write_identity(dir.path(), "alice", "")).unwrap();
        let m = id.member(true, false);
        assert_eq!((m.principal.as_str(), m.publish, m.subscribe), ("alice", true, false));
        assert_eq!(m.signing_key, SigningKey::from_bytes(&[0x11; 32]).public_key());
        assert_eq!(m.hpke_key, HpkeSecretKey::from_bytes(&[0x22; 32]).public_key());
        assert!(id.authority_key().is_none());
    }

    #[test]
    fn identity_files_without_a_pinned_authority_or_with_content_keys_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_identity(
            dir.path(),
            "alice",
            "[[content_key]]\ntopics = \"demo.>\"\nepoch = 1\nkey = \"00\"\n",
        );
        let e = Identity::load(&path).unwrap_err().to_string();
        assert!(e.contains("content_key"), "{e}");
        let text = std::fs::read_to_string(&path).unwrap();
        let without: String = text
            .lines()
            .filter(|l| {
                !l.starts_with("authority")
                    && !l.starts_with("[[")
                    && !l.starts_with("topics")
                    && !l.starts_with("epoch")
                    && !l.starts_with("key = \"00")
            })
            .map(|l| format!("{l}\n"))
            .collect();
        std::fs::write(&path, without).unwrap();
        let e = Identity::load(&path).unwrap_err().to_string();
        assert!(e.contains("authority"), "{e}");
    }
}
