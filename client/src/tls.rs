//! TLS for the broker connection: the rustls and QUIC client configuration built from an identity.
//!
//! What it guarantees: TLS 1.3 only (rustls's `ring` provider), ALPN `sealpost/1`, no 0-RTT (nothing is
//! ever sent before the broker has proved its identity), the broker's certificate verified against the CA
//! file the identity names and only that (not the system roots), for the identity's `server_name`, and the
//! identity's certificate presented as the client certificate. There is no way to switch verification off.

use std::sync::Arc;
use std::time::Duration;

use rustls::crypto::ring;
use rustls::RootCertStore;

use crate::error::{Error, Result};
use crate::identity::Inner;
use crate::options::ClientOptions;

/// The ALPN protocol name of this protocol version.
pub(crate) const ALPN: &[u8] = b"sealpost/1";

/// The QUIC client configuration for `identity`.
pub(crate) fn client_config(identity: &Inner, options: &ClientOptions) -> Result<quinn::ClientConfig> {
    let fail = |message: String| Error::Identity { path: identity.path.clone(), message };
    let mut roots = RootCertStore::empty();
    for cert in &identity.roots {
        roots
            .add(cert.clone())
            .map_err(|e| fail(format!("field `ca`: a certificate in it is not usable as a root: {e}")))?;
    }
    let mut tls = rustls::ClientConfig::builder_with_provider(Arc::new(ring::default_provider()))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| fail(format!("TLS 1.3 unavailable: {e}")))?
        .with_root_certificates(roots)
        .with_client_auth_cert(identity.chain.clone(), identity.key.clone_key())
        .map_err(|e| fail(format!("fields `cert` and `key` do not form a usable client certificate: {e}")))?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    tls.enable_early_data = false;
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(Arc::new(tls))
        .map_err(|e| fail(format!("no QUIC-capable cipher suite: {e}")))?;
    let mut config = quinn::ClientConfig::new(Arc::new(quic));
    let mut transport = quinn::TransportConfig::default();
    let idle = quinn::IdleTimeout::try_from(options.idle_timeout)
        .map_err(|_| fail("idle timeout out of range".into()))?;
    transport.max_idle_timeout(Some(idle));
    transport.keep_alive_interval(Some((options.idle_timeout / 3).max(Duration::from_millis(100))));
    config.transport_config(Arc::new(transport));
    Ok(config)
}

/// Turns rustls's reason for rejecting the broker's certificate into advice.
pub(crate) fn untrusted_reason(reason: &str, identity: &Inner) -> String {
    let reason = reason.strip_prefix("invalid peer certificate: ").unwrap_or(reason);
    // BadSignature: a CA of the same name, but another key.
    if reason.contains("UnknownIssuer") || reason.contains("BadSignature") {
        format!("it is not issued by a CA in {} (field `ca`)", identity.path_of(&identity.file.ca).display())
    } else if reason.contains("not valid for name") || reason.contains("NotValidForName") {
        format!("{reason} (field `server_name`)")
    } else {
        reason.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_a_config_from_a_generated_identity() {
        let dir = tempfile::tempdir().unwrap();
        let path = crate::identity::tests::write_identity(dir.path(), "alice", "");
        let id = crate::Identity::load(path).unwrap();
        client_config(id.inner(), &ClientOptions::default()).unwrap();
    }

    #[test]
    fn unknown_issuer_points_at_the_ca_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = crate::identity::tests::write_identity(dir.path(), "alice", "");
        let id = crate::Identity::load(path).unwrap();
        let r = untrusted_reason("invalid peer certificate: UnknownIssuer", id.inner());
        assert!(r.starts_with("it is not issued by a CA in "), "{r}");
        assert!(r.ends_with("pki/ca.pem (field `ca`)"), "{r}");
    }
}
