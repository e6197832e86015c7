//! Loading an identity: the TOML file that says who this principal is, how to reach the broker and which
//! keys it holds (its shape is [`IdentityFile`]), plus the PEM files it names.
//!
//! Loading checks everything it can before any connection is attempted: the TOML shape, every key's hex,
//! that the CA file holds at least one certificate, that the certificate file holds a chain and the key
//! file a private key. An error names the file and the field at fault and never prints a secret (TOML
//! parse errors are reduced to their line and message, without the offending line's text).
//!
//! Relative paths in the file are resolved from the folder that holds the identity file, so an identity
//! and its PEM files can be moved together.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use sealpost_protocol::identity::IdentityFile;
use sealpost_protocol::{PublicKey, SigningKey};

use crate::error::{Error, Result};

/// A loaded identity: the principal's TLS credentials, its signing key and the keys it holds.
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
        file.hpke_key().map_err(|_| fail("field `hpke_key`: expected 64 hex digits".into()))?;
        for (i, entry) in file.content_keys.iter().enumerate() {
            let mut bytes = [0u8; 32];
            let ok = hex::decode_to_slice(entry.key.trim(), &mut bytes).is_ok();
            bytes.fill(0);
            if !ok {
                return Err(fail(format!(
                    "[[content_key]] entry {} (topics {}): field `key`: expected 64 hex digits",
                    i + 1,
                    entry.topics
                )));
            }
        }
        if file.broker.trim().is_empty() {
            return Err(fail("field `broker`: expected host:port".into()));
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

        Ok(Identity { inner: Arc::new(Inner { path, file, signer, roots, chain, key }) })
    }

    /// The principal this identity claims to be (the broker believes its certificate, not this field).
    pub fn principal(&self) -> &str {
        &self.inner.file.principal
    }

    /// The broker's address, `host:port`.
    pub fn broker(&self) -> &str {
        &self.inner.file.broker
    }

    /// The name the broker's certificate must be valid for.
    pub fn server_name(&self) -> &str {
        &self.inner.file.server_name
    }

    /// The public half of the signing key: what subscribers list in their `[[publisher]]` entries.
    pub fn public_key(&self) -> PublicKey {
        self.inner.signer.public_key()
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
                 signing_key = \"{}\"\nhpke_key = \"{}\"\n{extra}",
                "11".repeat(32),
                "22".repeat(32)
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
        let path = write_identity(dir.path(), "alice", "[[publisher]]\nprincipal = \"bob\"\nkey = \"zz\"\n");
        let e = Identity::load(&path).unwrap_err().to_string();
        assert!(e.contains("line 11"), "{e}");
        assert!(!e.contains('\n'), "{e}");
        let text = std::fs::read_to_string(&path).unwrap().replace("ca = ", "cx = ");
        std::fs::write(&path, text).unwrap();
        let e = Identity::load(&path).unwrap_err().to_string();
        assert!(e.contains("cx"), "{e}");
    }

    #[test]
    fn bad_content_key_names_the_entry() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_identity(
            dir.path(),
            "alice",
            "[[content_key]]\ntopics = \"demo.>\"\nepoch = 1\nkey = \"00\"\n",
        );
        let e = Identity::load(&path).unwrap_err().to_string();
        assert!(
            e.ends_with("[[content_key]] entry 1 (topics demo.>): field `key`: expected 64 hex digits"),
            "{e}"
        );
    }
}
