//! Reloading the configuration: the running configuration, read and checked whole, and what a reload may
//! change.
//!
//! A [`Running`] is a configuration file loaded **whole** and checked the way a start checks it: the
//! [`Config`] itself, every file it names read once (CA bundle, CRLs, the broker's certificate and key,
//! the ACL, the audit key), the TLS configuration built from them (so a key that does not match its
//! certificate, or a PEM file that does not parse, is found here), and the digest of each of those files
//! ([`Sources`]), which is how the shell notices that one changed. `sealpost-broker check-config` runs the
//! same checks ([`crate::server::check_config`]).
//!
//! [`Running::changes_to`] decides whether the broker may switch from one `Running` to the next: a change
//! to a setting that is only read at start (`listen`, `data_dir`, `[storage]`, `[metrics]`, `[log]`,
//! `[audit]`, `authority`, and, for now, `[limits]` and `[memory]`) **refuses the reload** with an error
//! that names the setting; the broker then keeps its running configuration, and the operator restarts it.
//! What a reload applies (the ACL, the CA bundle, the CRLs, the broker's certificate and key) is listed
//! in [`Changes`].
//!
//! Each CRL is summarised ([`crate::crl::CrlSummary`], what [`Running::log_crls`] logs) and judged
//! against the time [`Running::load_at`] is given: one past its next-update is refused when
//! `tls.crl_expired = "refuse"`, with an error naming the file and its next-update.
//!
//! It performs no I/O beyond reading the files and holds no lock; [`Running::load`] reads the clock once,
//! for the CRLs' expiry, and [`Running::load_at`] none. The shell
//! (`server/reload.rs`) watches for SIGHUP and for changed [`Sources`], runs [`Running::load`] off the
//! async workers, asks [`Running::changes_to`], and applies.
//!
//! # What it does not do
//!
//! It does not apply anything (the shell swaps the ACL and the TLS configuration, and the session decides
//! which live connections and streams the new ones end), and it does not watch files. A file that is
//! being written when it is read may be refused as invalid; the next change (or SIGHUP) reads it again.
//! Write configuration files by renaming a complete file into place.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use quinn::crypto::rustls::QuicServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};

use crate::acl::Acl;
use crate::config::Config;
use crate::crl::{CrlSummary, Expiry};
use crate::tls::{self, ClientVerifier, TlsMaterial};
use crate::{Error, Result};

/// A configuration loaded whole and checked. See the [module documentation](self).
#[derive(Clone)]
pub struct Running {
    config: Config,
    tls: TlsMaterial,
    acl: Arc<Acl>,
    acl_text: String,
    verifier: ClientVerifier,
    crypto: Arc<QuicServerConfig>,
    sources: Sources,
    crls: Vec<LoadedCrl>,
}

/// One CRL file as loaded: its path, its summary, and whether it was past its next-update.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoadedCrl {
    /// The file.
    pub path: PathBuf,
    /// What it says.
    pub summary: CrlSummary,
    /// Past its next-update when loaded (and accepted, as `crl_expired = "warn"` does).
    pub expired: bool,
}

impl std::fmt::Debug for Running {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Running").field("config", &self.config).finish_non_exhaustive()
    }
}

impl Running {
    /// Reads the configuration file `file` and everything it names, and checks it all. The error names the
    /// file at fault.
    pub fn load(file: &Path) -> Result<Running> {
        Self::load_at(file, now())
    }

    /// [`load`](Self::load), judging the CRLs' expiry at `now` (seconds since the Unix epoch).
    pub fn load_at(file: &Path, now: i64) -> Result<Running> {
        let config = Config::load(file)?;
        Self::with_file(config, Some(file), now)
    }

    /// [`load`](Self::load) of a configuration already parsed (its paths resolved); its own file is not
    /// among the [`Sources`].
    pub fn from_config(config: Config) -> Result<Running> {
        Self::with_file(config, None, now())
    }

    fn with_file(config: Config, file: Option<&Path>, now: i64) -> Result<Running> {
        let read = |path: &Path, what: &str| {
            std::fs::read_to_string(path)
                .map_err(|e| Error::Config(format!("{what} {}: cannot read: {e}", path.display())))
        };
        let t = &config.tls;
        let tls = TlsMaterial {
            client_ca_pem: read(&t.ca, "tls.ca")?,
            cert_chain_pem: read(&t.cert, "tls.cert")?,
            key_pem: read(&t.key, "tls.key")?,
            crls_pem: t.crls.iter().map(|p| read(p, "tls.crls")).collect::<Result<_>>()?,
            crl_expired: t.crl_expired,
        };
        check_pem_files(&config, &tls)?;
        let crls = check_crls(&config, &tls, now)?;
        let verifier = tls::client_verifier(&tls)
            .map_err(|e| Error::Config(format!("tls.ca {} or tls.crls: {e}", t.ca.display())))?;
        let crypto = tls::server_crypto(&tls).map_err(|e| {
            Error::Config(format!("tls.cert {} and tls.key {}: {e}", t.cert.display(), t.key.display()))
        })?;
        let acl_text = read(&config.acl, "acl")?;
        let acl = Acl::from_toml(&acl_text).map_err(|e| match e {
            Error::Config(msg) => Error::Config(format!("acl {}: {msg}", config.acl.display())),
            other => other,
        })?;
        let acl = Arc::new(acl);
        if let Some(listen) = config.metrics.listen {
            crate::metrics::http::check_listen(listen, config.metrics.tls)?;
        }
        if let Some(audit) = &config.audit {
            crate::audit::AuditKey::load(&audit.key)?;
        }
        let sources = Sources::of(file, &config);
        Ok(Running { config, tls, acl, acl_text, verifier, crypto: Arc::new(crypto), sources, crls })
    }

    /// The CRL files, as loaded.
    pub fn crls(&self) -> &[LoadedCrl] {
        &self.crls
    }

    /// Logs one line per CRL file (info: file, issuer, this-update, next-update, revoked count; a warning
    /// if it was past its next-update when loaded). The broker calls it at start and after each reload.
    pub fn log_crls(&self) {
        for crl in &self.crls {
            let s = &crl.summary;
            let (file, issuer) = (crl.path.display(), &s.issuer);
            let this_update = crate::crl::time_text(s.this_update);
            let next_update = s.next_update.map_or_else(|| "none".to_owned(), crate::crl::time_text);
            if crl.expired {
                tracing::warn!(
                    %file, %issuer, %this_update, %next_update, revoked = s.revoked,
                    "CRL loaded past its next-update: it is expired (the revocations it lists still hold; \
                     set tls.crl_expired = \"refuse\" to refuse such a CRL)"
                );
            } else {
                tracing::info!(%file, %issuer, %this_update, %next_update, revoked = s.revoked, "CRL loaded");
            }
        }
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The TLS files' contents.
    pub fn tls(&self) -> &TlsMaterial {
        &self.tls
    }

    /// The ACL.
    pub fn acl(&self) -> &Arc<Acl> {
        &self.acl
    }

    /// How client certificates are verified: by the handshake, and again for live connections after a
    /// reload.
    pub fn verifier(&self) -> &ClientVerifier {
        &self.verifier
    }

    /// The QUIC endpoint's TLS configuration.
    pub fn crypto(&self) -> Arc<QuicServerConfig> {
        self.crypto.clone()
    }

    /// The digests of the files this configuration was read from, as they were read.
    pub fn sources(&self) -> &Sources {
        &self.sources
    }

    /// What switching from this configuration to `next` changes, or why it may not: a setting that is
    /// only read at start differs (the error names it: restart the broker to change it).
    pub fn changes_to(&self, next: &Running) -> Result<Changes> {
        let (old, new) = (&self.config, &next.config);
        let restart_only = [
            ("listen", old.listen != new.listen),
            ("data_dir", old.data_dir != new.data_dir),
            ("authority", old.authority != new.authority),
            ("[storage]", old.storage != new.storage),
            ("[limits] or [memory]", old.limits != new.limits),
            ("[log]", old.log != new.log),
            ("[metrics]", old.metrics != new.metrics),
            ("[audit]", old.audit != new.audit),
        ];
        let changed: Vec<&str> = restart_only.iter().filter(|(_, c)| *c).map(|(name, _)| *name).collect();
        if !changed.is_empty() {
            return Err(Error::Config(format!(
                "{} changed: only read at start, restart the broker to change it (nothing was reloaded)",
                changed.join(", ")
            )));
        }
        let (a, b) = (&self.tls, &next.tls);
        Ok(Changes {
            acl: self.acl_text != next.acl_text,
            client_ca: a.client_ca_pem != b.client_ca_pem,
            crls: a.crls_pem != b.crls_pem,
            server_identity: a.cert_chain_pem != b.cert_chain_pem || a.key_pem != b.key_pem,
            retention: old.retention != new.retention,
        })
    }
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// Summarises each CRL and judges its expiry at `now`; the error names the file.
fn check_crls(config: &Config, tls: &TlsMaterial, now: i64) -> Result<Vec<LoadedCrl>> {
    let policy = config.tls.crl_expired;
    tls.crls_pem
        .iter()
        .zip(&config.tls.crls)
        .map(|(pem, path)| {
            let summary = CrlSummary::of_pem(pem)
                .map_err(|e| Error::Config(format!("tls.crls {}: {e}", path.display())))?;
            let expired = match crate::crl::expiry(summary.next_update, now, policy) {
                Expiry::Current => false,
                Expiry::Warn => true,
                Expiry::Refuse => {
                    let next = summary.next_update.map(crate::crl::time_text).unwrap_or_default();
                    return Err(Error::Config(format!(
                        "tls.crls {}: expired: its next-update {next} is past (tls.crl_expired = \"refuse\")",
                        path.display()
                    )));
                }
            };
            Ok(LoadedCrl { path: path.clone(), summary, expired })
        })
        .collect()
}

/// Checks each PEM file on its own, so that an error names the file that holds it.
fn check_pem_files(config: &Config, tls: &TlsMaterial) -> Result<()> {
    let bad = |what: &str, path: &Path, e: &dyn std::fmt::Display| {
        Error::Config(format!("{what} {}: {e}", path.display()))
    };
    let certs = |pem: &str, what: &str, path: &Path| -> Result<()> {
        let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| bad(what, path, &e))?;
        if certs.is_empty() {
            return Err(bad(what, path, &"no certificate found"));
        }
        Ok(())
    };
    certs(&tls.client_ca_pem, "tls.ca", &config.tls.ca)?;
    certs(&tls.cert_chain_pem, "tls.cert", &config.tls.cert)?;
    // The key's parse error says nothing of the key's bytes.
    PrivateKeyDer::from_pem_slice(tls.key_pem.as_bytes()).map_err(|e| bad("tls.key", &config.tls.key, &e))?;
    for (pem, path) in tls.crls_pem.iter().zip(&config.tls.crls) {
        CertificateRevocationListDer::from_pem_slice(pem.as_bytes())
            .map_err(|e| bad("tls.crls", path, &e))?;
    }
    Ok(())
}

/// What a reload applies. The ACL takes effect for every later decision and for the streams already open
/// (those it no longer allows are ended); the CA bundle and CRLs for every later handshake and for the
/// connections already open (those whose certificate no longer verifies are closed); the broker's
/// certificate and key for later handshakes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Changes {
    /// The ACL's rules changed.
    pub acl: bool,
    /// The CA bundle changed.
    pub client_ca: bool,
    /// The CRLs changed.
    pub crls: bool,
    /// The broker's certificate chain or key changed.
    pub server_identity: bool,
    /// The `[retention]` rules changed.
    pub retention: bool,
}

impl Changes {
    /// Whether anything changed.
    pub fn any(&self) -> bool {
        self.acl || self.client_ca || self.crls || self.server_identity || self.retention
    }

    /// Whether live connections must be checked again: the client CA bundle or the CRLs changed.
    pub fn recheck_connections(&self) -> bool {
        self.client_ca || self.crls
    }
}

impl std::fmt::Display for Changes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names = [
            (self.acl, "acl"),
            (self.client_ca, "tls.ca"),
            (self.crls, "tls.crls"),
            (self.server_identity, "tls.cert/tls.key"),
            (self.retention, "[retention]"),
        ];
        let changed: Vec<&str> = names.iter().filter(|(c, _)| *c).map(|(_, n)| *n).collect();
        if changed.is_empty() {
            f.write_str("nothing")
        } else {
            f.write_str(&changed.join(", "))
        }
    }
}

/// The files a configuration was read from (its own file, and every file it names), each with the
/// SHA-256 of its contents when read (`None`: unreadable). Two `Sources` differ when a file changed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sources(Vec<(PathBuf, Option<[u8; 32]>)>);

impl Sources {
    /// The files of `config` (and `file`, the configuration file itself, if given), read now.
    pub fn of(file: Option<&Path>, config: &Config) -> Sources {
        let t = &config.tls;
        let audit_key = config.audit.as_ref().map(|a| &a.key);
        let paths = file
            .into_iter()
            .chain([config.acl.as_path(), &t.ca, &t.cert, &t.key])
            .chain(t.crls.iter().map(PathBuf::as_path))
            .chain(audit_key.map(PathBuf::as_path));
        Sources(paths.map(|p| (p.to_path_buf(), digest(p))).collect())
    }

    /// The same files, read again now.
    pub fn reread(&self) -> Sources {
        Sources(self.0.iter().map(|(p, _)| (p.clone(), digest(p))).collect())
    }
}

fn digest(path: &Path) -> Option<[u8; 32]> {
    use sha2::Digest as _;
    std::fs::read(path).ok().map(|bytes| sha2::Sha256::digest(&bytes).into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::{DevCa, LeafSpec};

    /// A configuration folder: CA, server certificate and key, ACL, `broker.toml`.
    struct Folder {
        dir: tempfile::TempDir,
        ca: DevCa,
    }

    const ACL: &str = "[[rule]]\nprincipals = [\"alice\"]\ntopics = [\"demo.>\"]\nactions = [\"publish\", \"subscribe\"]\neffect = \"allow\"\n";

    impl Folder {
        fn new() -> Folder {
            let dir = tempfile::tempdir().unwrap();
            let ca = DevCa::generate("test CA").unwrap();
            let server = ca.issue(&LeafSpec::local_server()).unwrap();
            let d = dir.path();
            std::fs::write(d.join("ca.pem"), ca.cert_pem()).unwrap();
            std::fs::write(d.join("server.pem"), &server.cert_pem).unwrap();
            std::fs::write(d.join("server.key"), &server.key_pem).unwrap();
            std::fs::write(d.join("acl.toml"), ACL).unwrap();
            std::fs::write(d.join("crl.pem"), ca.crl(&[]).unwrap()).unwrap();
            let folder = Folder { dir, ca };
            folder.config("");
            folder
        }

        fn config(&self, extra: &str) {
            let text = format!(
                "listen = \"127.0.0.1:0\"\nacl = \"acl.toml\"\n{extra}\n[tls]\nca = \"ca.pem\"\ncert = \"server.pem\"\nkey = \"server.key\"\ncrls = [\"crl.pem\"]\n"
            );
            self.write("broker.toml", &text);
        }

        fn write(&self, name: &str, text: &str) {
            std::fs::write(self.dir.path().join(name), text).unwrap();
        }

        fn file(&self) -> PathBuf {
            self.dir.path().join("broker.toml")
        }

        fn load(&self) -> Result<Running> {
            Running::load(&self.file())
        }
    }

    fn message(result: Result<impl std::fmt::Debug>) -> String {
        result.unwrap_err().to_string()
    }

    #[test]
    fn a_new_crl_or_acl_is_a_change_a_reload_applies() {
        let folder = Folder::new();
        let running = folder.load().unwrap();
        assert_eq!(running.changes_to(&folder.load().unwrap()).unwrap(), Changes::default());
        let alice = folder.ca.issue(&LeafSpec::client("alice", &[])).unwrap();
        folder.write("crl.pem", &folder.ca.crl(&[&alice]).unwrap());
        folder.write("acl.toml", &ACL.replace("\"publish\", ", ""));
        let changes = running.changes_to(&folder.load().unwrap()).unwrap();
        assert_eq!(changes, Changes { acl: true, crls: true, ..Changes::default() });
        assert!(changes.recheck_connections());
        assert_eq!(changes.to_string(), "acl, tls.crls");
    }

    #[test]
    fn new_retention_rules_are_a_change_a_reload_applies() {
        let folder = Folder::new();
        let running = folder.load().unwrap();
        folder.config(
            "[retention]\ninterval_ms = 100\n[[retention.topic]]\npattern = \"demo.>\"\nmax_bytes = 1000",
        );
        let changes = running.changes_to(&folder.load().unwrap()).unwrap();
        assert_eq!(changes, Changes { retention: true, ..Changes::default() });
        assert!(changes.any() && !changes.recheck_connections());
        assert_eq!(changes.to_string(), "[retention]");
    }

    #[test]
    fn a_setting_read_only_at_start_refuses_the_reload_and_names_it() {
        let folder = Folder::new();
        let running = folder.load().unwrap();
        for (extra, name) in [
            ("data_dir = \"elsewhere\"", "data_dir"),
            ("[storage]\nengine = \"memory\"", "[storage]"),
            ("[metrics]\nlisten = \"127.0.0.1:9464\"", "[metrics]"),
            ("[limits]\nmax_connections = 5", "[limits]"),
        ] {
            folder.config(extra);
            let msg = message(running.changes_to(&folder.load().unwrap()));
            assert!(msg.contains(name) && msg.contains("restart"), "{msg}");
        }
        folder.write("broker.toml", &std::fs::read_to_string(folder.file()).unwrap().replace(":0", ":7"));
        assert!(message(running.changes_to(&folder.load().unwrap())).contains("listen"));
    }

    #[test]
    fn a_broken_file_is_refused_with_its_name() {
        let folder = Folder::new();
        folder.write("acl.toml", "[[rule]]\nprincipals = [\"alice\"]\n");
        assert!(message(folder.load()).contains("acl.toml"));
        folder.write("acl.toml", ACL);
        folder.write("crl.pem", "not a CRL");
        assert!(message(folder.load()).contains("crl.pem"));
        folder.write("crl.pem", &folder.ca.crl(&[]).unwrap());
        folder.write("ca.pem", "");
        assert!(message(folder.load()).contains("ca.pem"));
        folder.write("ca.pem", &folder.ca.cert_pem());
        folder.write("broker.toml", "listen = [");
        assert!(message(folder.load()).contains("broker.toml"));
    }

    #[test]
    fn an_expired_crl_is_loaded_with_a_warning_or_refused_naming_the_file() {
        let folder = Folder::new();
        let alice = folder.ca.issue(&LeafSpec::client("alice", &[])).unwrap();
        folder.write("crl.pem", &folder.ca.crl_due_in(&[&alice], -3_600).unwrap());
        let running = folder.load().unwrap();
        let [crl] = running.crls() else { panic!("one CRL: {:?}", running.crls()) };
        assert!(crl.expired && crl.path.ends_with("crl.pem") && crl.summary.revoked == 1, "{crl:?}");
        let next = crate::crl::time_text(crl.summary.next_update.unwrap());
        folder.config("");
        let text = std::fs::read_to_string(folder.file()).unwrap();
        folder.write("broker.toml", &format!("{text}crl_expired = \"refuse\"\n"));
        let msg = message(folder.load());
        assert!(msg.contains("crl.pem") && msg.contains("expired") && msg.contains(&next), "{msg}");
        // The same CRL an hour before its next-update is current.
        let earlier = crl.summary.next_update.unwrap() - 3_600;
        assert!(!Running::load_at(&folder.file(), earlier).unwrap().crls()[0].expired);
    }

    #[test]
    fn a_key_that_does_not_match_the_certificate_is_refused_naming_both() {
        let folder = Folder::new();
        let other = folder.ca.issue(&LeafSpec::local_server()).unwrap();
        folder.write("server.key", &other.key_pem);
        let msg = message(folder.load());
        assert!(msg.contains("server.pem") && msg.contains("server.key"), "{msg}");
        assert!(!msg.contains("PRIVATE KEY"), "{msg}");
    }

    #[test]
    fn sources_change_when_a_named_file_changes() {
        let folder = Folder::new();
        let running = folder.load().unwrap();
        assert_eq!(running.sources().reread(), *running.sources());
        folder.write("crl.pem", &folder.ca.crl(&[]).unwrap().replace('\n', "\r\n"));
        assert_ne!(running.sources().reread(), *running.sources());
        let fresh = folder.load().unwrap();
        folder.write("broker.toml", &format!("{}\n", std::fs::read_to_string(folder.file()).unwrap()));
        assert_ne!(fresh.sources().reread(), *fresh.sources());
    }
}
