//! The bench's throwaway PKI and keys, made fresh for every run and written only into temporary folders:
//! one CA, a server certificate for `localhost`/`127.0.0.1` (used by Sealpost and by NATS), the `load`
//! principal's client certificate (mutual TLS with both), its signing and HPKE keys, and the topic
//! authority. Nothing here weakens verification: both servers check the client certificate against the CA
//! and the clients check the server's.

use std::path::{Path, PathBuf};

use sealpost_broker::pki::{DevCa, Issued, LeafSpec};
use sealpost_protocol::{HpkeSecretKey, SigningKey};

pub struct Pki {
    pub ca: DevCa,
    pub server: Issued,
    pub client: Issued,
    pub signing: SigningKey,
    pub hpke: HpkeSecretKey,
    pub authority: SigningKey,
}

/// PEM files of a [`Pki`] written into a folder.
pub struct TlsFiles {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

impl Pki {
    pub fn generate() -> Pki {
        use rand_core::OsRng;
        let ca = DevCa::generate("load bench CA").unwrap();
        let server = ca.issue(&LeafSpec::local_server()).unwrap();
        let signing = SigningKey::generate(&mut OsRng);
        let client = ca.issue(&LeafSpec::client("load", &[signing.public_key()])).unwrap();
        let hpke = HpkeSecretKey::generate(&mut OsRng);
        let authority = SigningKey::generate(&mut OsRng);
        Pki { ca, server, client, signing, hpke, authority }
    }

    pub fn write(&self, dir: &Path) -> TlsFiles {
        let files = TlsFiles {
            ca: dir.join("ca.pem"),
            server_cert: dir.join("server.pem"),
            server_key: dir.join("server.key"),
            client_cert: dir.join("load.pem"),
            client_key: dir.join("load.key"),
        };
        std::fs::write(&files.ca, self.ca.cert_pem()).unwrap();
        std::fs::write(&files.server_cert, &self.server.cert_pem).unwrap();
        std::fs::write(&files.server_key, &self.server.key_pem).unwrap();
        std::fs::write(&files.client_cert, &self.client.cert_pem).unwrap();
        std::fs::write(&files.client_key, &self.client.key_pem).unwrap();
        files
    }
}
