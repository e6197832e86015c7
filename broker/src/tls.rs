//! Mutual TLS: the broker's rustls configuration and the rule that turns a client certificate into a
//! principal.
//!
//! - TLS 1.3 only, on QUIC, ALPN `sealpost/1`, no 0-RTT (early data could be replayed).
//! - A client certificate is **required** and must chain to the configured CA bundle, be valid now, carry
//!   the client-authentication extended key usage **explicitly**, and not be revoked by a configured CRL.
//!   (WebPKI treats a certificate without any extended key usage as good for every purpose; the broker
//!   does not: least privilege.) There is no plaintext listener and no way to switch verification off.
//! - A refused client certificate is logged where it is in hand, in the verifier: its subject, serial and
//!   the reason ([`refusal_reason`]), never the certificate. The handshake's error, which the connection
//!   task logs with the remote address, carries neither.
//!
//! # The principal rule
//!
//! A client certificate names its principal in exactly one URI subject-alternative name of the form
//! `sealpost://<principal>`, where `<principal>` is 1 to 64 characters from `[A-Za-z0-9._-]` (the rule of
//! [`Principal`], written once in the protocol crate). A certificate with no such URI, with more than one,
//! or with an invalid name, is refused. The common name is ignored.
//!
//! The certificate may also bind ed25519 signing keys to that principal, one URI SAN
//! `urn:sealpost:ed25519:<64 hex digits>` each: the broker accepts a published batch only if its signer is
//! one of them. This check is a first line of defence only; subscribers verify publishers themselves.

use std::sync::Arc;

use quinn::crypto::rustls::QuicServerConfig;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::UnixTime;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme};
use sealpost_protocol::{Principal, PublicKey};
use x509_parser::extensions::GeneralName;

use crate::crl::CrlExpired;
use crate::{Error, Result};

/// The ALPN protocol id of this version of the Sealpost protocol.
pub const ALPN: &[u8] = b"sealpost/1";

pub use sealpost_protocol::identity::{key_binding_uri, principal_uri};
use sealpost_protocol::identity::{KEY_BINDING_PREFIX, PRINCIPAL_SCHEME};

/// The SHA-256 digest of a certificate's DER encoding: names the exact certificate a peer presented (in
/// events and the audit log), shown as 64 lowercase hex digits. It is not secret and proves nothing by
/// itself: TLS verified the certificate.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Fingerprint(pub [u8; 32]);

impl Fingerprint {
    /// The fingerprint of the DER certificate `der`.
    pub fn of(der: &[u8]) -> Fingerprint {
        use sha2::Digest as _;
        Fingerprint(sha2::Sha256::digest(der).into())
    }
}

impl core::fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl core::fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "Fingerprint({self})")
    }
}

/// Who is on the other end of a connection, as its verified certificate says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peer {
    /// The principal.
    pub principal: Principal,
    /// The signing keys its certificate binds to it.
    pub signing_keys: Vec<PublicKey>,
    /// The SHA-256 fingerprint of its leaf certificate.
    pub fingerprint: Fingerprint,
}

impl Peer {
    /// Applies the principal rule to a DER certificate that TLS already verified.
    pub fn from_certificate(der: &[u8]) -> Result<Peer> {
        let refuse = |why: &str| Error::Config(format!("client certificate refused: {why}"));
        let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|_| refuse("unparseable"))?;
        let san = cert.subject_alternative_name().map_err(|_| refuse("invalid subjectAltName"))?;
        let mut principals = Vec::new();
        let mut signing_keys = Vec::new();
        for name in san.iter().flat_map(|s| s.value.general_names.iter()) {
            let GeneralName::URI(uri) = name else { continue };
            if let Some(p) = uri.strip_prefix(PRINCIPAL_SCHEME) {
                principals.push(p);
            } else if let Some(hex) = uri.strip_prefix(KEY_BINDING_PREFIX) {
                signing_keys.push(hex.parse().map_err(|_| refuse("invalid bound ed25519 key"))?);
            }
        }
        match principals.as_slice() {
            [p] => match Principal::new(*p) {
                Ok(principal) => Ok(Peer { principal, signing_keys, fingerprint: Fingerprint::of(der) }),
                Err(_) => Err(refuse("invalid principal name")),
            },
            [] => Err(refuse("no sealpost:// URI")),
            _ => Err(refuse("more than one sealpost:// URI")),
        }
    }

    /// The peer of an established QUIC connection.
    pub fn from_connection(conn: &quinn::Connection) -> Result<Peer> {
        let certs = conn
            .peer_identity()
            .and_then(|id| id.downcast::<Vec<CertificateDer<'static>>>().ok())
            .ok_or_else(|| Error::Config("client presented no certificate".into()))?;
        let leaf = certs.first().ok_or_else(|| Error::Config("client presented no certificate".into()))?;
        Peer::from_certificate(leaf)
    }

    /// The certificate chain an established QUIC connection presented (leaf first), if any: what a reload
    /// checks again ([`ClientVerifier::admits`]).
    pub fn chain_of(conn: &quinn::Connection) -> Option<Vec<CertificateDer<'static>>> {
        conn.peer_identity()?.downcast::<Vec<CertificateDer<'static>>>().ok().map(|certs| *certs)
    }

    /// The fingerprint of the leaf certificate an established QUIC connection presented, if any: what a
    /// refused certificate is logged and counted with.
    pub fn fingerprint_of(conn: &quinn::Connection) -> Option<Fingerprint> {
        let certs = conn.peer_identity()?.downcast::<Vec<CertificateDer<'static>>>().ok()?;
        certs.first().map(|leaf| Fingerprint::of(leaf))
    }
}

/// PEM inputs of the broker's TLS configuration.
#[derive(Clone)]
pub struct TlsMaterial {
    /// CA certificates that client certificates must chain to.
    pub client_ca_pem: String,
    /// The broker's certificate chain, leaf first.
    pub cert_chain_pem: String,
    /// The broker's private key.
    pub key_pem: String,
    /// Certificate revocation lists, PEM (may be empty).
    pub crls_pem: Vec<String>,
    /// Whether a handshake fails once a CRL is past its next-update (`Refuse`: webpki's
    /// `ExpirationPolicy::Enforce`) or not (`Warn`, webpki's default). See [`crate::crl`].
    pub crl_expired: CrlExpired,
}

impl core::fmt::Debug for TlsMaterial {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("TlsMaterial { key: <redacted>, .. }")
    }
}

fn certs(pem: &str, what: &str) -> Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Error::Config(format!("{what}: {e}")))?;
    if certs.is_empty() {
        return Err(Error::Config(format!("{what}: no certificate found")));
    }
    Ok(certs)
}

/// Builds the QUIC server crypto configuration: TLS 1.3 only, client certificates required.
pub fn server_crypto(material: &TlsMaterial) -> Result<QuicServerConfig> {
    let config = server_config(material, ALPN)?;
    QuicServerConfig::try_from(config).map_err(|e| Error::Config(format!("QUIC TLS: {e}")))
}

/// The TLS configuration of the metrics endpoint when it requires TLS ([`crate::metrics::http`]): the same
/// server identity and the same client verification as QUIC (TLS 1.3, a client certificate from the
/// configured CA, not revoked, with the client-authentication usage), over TCP with ALPN `http/1.1`.
pub fn metrics_server_config(material: &TlsMaterial) -> Result<rustls::ServerConfig> {
    server_config(material, b"http/1.1")
}

/// How the broker verifies client certificates: the material's CA bundle and CRLs, plus the
/// client-authentication usage. The TLS handshake uses it; so does a configuration reload, to ask whether
/// the certificate a connected peer presented would still be admitted ([`ClientVerifier::admits`]).
#[derive(Clone, Debug)]
pub struct ClientVerifier(Arc<dyn ClientCertVerifier>);

impl ClientVerifier {
    /// Whether `chain` (the leaf first, then the intermediates a peer presented) verifies now (`now`, given by
    /// the caller): chains to the CA bundle, is within its validity, is not revoked by a CRL, names the
    /// client-authentication usage. The error says why not, for the log.
    pub fn admits(&self, chain: &[CertificateDer<'static>], now: UnixTime) -> Result<()> {
        let (leaf, intermediates) =
            chain.split_first().ok_or_else(|| Error::Config("no client certificate".into()))?;
        self.0
            .verify_client_cert(leaf, intermediates, now)
            .map(|_| ())
            .map_err(|e| Error::Config(format!("client certificate refused: {e}")))
    }
}

/// The verifier of client certificates that `material` configures (its CA bundle and CRLs).
pub fn client_verifier(material: &TlsMaterial) -> Result<ClientVerifier> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    for ca in certs(&material.client_ca_pem, "client CA bundle")? {
        roots.add(ca).map_err(|e| Error::Config(format!("client CA bundle: {e}")))?;
    }
    let crls = material
        .crls_pem
        .iter()
        .enumerate()
        .map(|(i, pem)| {
            CertificateRevocationListDer::from_pem_slice(pem.as_bytes())
                .map_err(|e| Error::Config(format!("CRL number {} of tls.crls: {e}", i + 1)))
        })
        .collect::<Result<Vec<_>>>()?;
    let mut builder =
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone()).with_crls(crls);
    if material.crl_expired == CrlExpired::Refuse {
        builder = builder.enforce_revocation_expiration();
    }
    let webpki = builder.build().map_err(|e| Error::Config(format!("client verifier: {e}")))?;
    Ok(ClientVerifier(Arc::new(RequireClientAuthUsage(webpki))))
}

/// TLS 1.3 only, client certificates required and verified against the material's CA and CRLs.
fn server_config(material: &TlsMaterial, alpn: &[u8]) -> Result<rustls::ServerConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = client_verifier(material)?.0;
    let key = PrivateKeyDer::from_pem_slice(material.key_pem.as_bytes())
        .map_err(|e| Error::Config(format!("server key: {e}")))?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| Error::Config(format!("TLS: {e}")))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs(&material.cert_chain_pem, "server certificate")?, key)
        .map_err(|e| Error::Config(format!("server certificate: {e}")))?;
    config.alpn_protocols = vec![alpn.to_vec()];
    config.max_early_data_size = 0;
    Ok(config)
}

/// WebPKI's client verification, plus: the leaf must name the client-authentication extended key usage
/// (WebPKI accepts a certificate with no extended key usage extension for any purpose).
#[derive(Debug)]
struct RequireClientAuthUsage(Arc<dyn ClientCertVerifier>);

/// A certificate's subject and serial number, for the log: never the certificate itself. A certificate
/// that does not parse is named `<unparseable>`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Named {
    /// The subject's distinguished name, as text (`CN=alice`).
    pub subject: String,
    /// The serial number, upper-case hexadecimal, two digits a byte, without separators (as
    /// `openssl x509 -serial` and an `openssl ca` database show it).
    pub serial: String,
}

impl Named {
    /// The subject and serial of a DER certificate (peer-controlled: any bytes).
    pub fn of(der: &[u8]) -> Named {
        match x509_parser::parse_x509_certificate(der) {
            Ok((_, cert)) => {
                let serial = cert.serial.to_bytes_be().iter().map(|b| format!("{b:02X}")).collect();
                Named { subject: cert.subject().to_string(), serial }
            }
            Err(_) => Named { subject: "<unparseable>".into(), serial: "<unparseable>".into() },
        }
    }
}

/// Why a client certificate was refused, in a few words for the log.
pub fn refusal_reason(e: &rustls::Error) -> &'static str {
    use rustls::CertificateError as C;
    match e {
        rustls::Error::InvalidCertificate(c) => match c {
            C::Revoked => "revoked",
            C::UnknownIssuer => "unknown issuer",
            C::Expired | C::ExpiredContext { .. } => "expired",
            C::NotValidYet | C::NotValidYetContext { .. } => "not yet valid",
            C::InvalidPurpose | C::InvalidPurposeContext { .. } => "no client-authentication usage",
            C::ExpiredRevocationList | C::ExpiredRevocationListContext { .. } => "CRL expired",
            C::UnknownRevocationStatus => "revocation status unknown",
            C::BadSignature => "bad signature",
            C::BadEncoding => "bad encoding",
            _ => "invalid certificate",
        },
        _ => "handshake error",
    }
}

/// Whether a DER certificate names the client-authentication extended key usage.
pub fn has_client_auth_usage(der: &[u8]) -> bool {
    x509_parser::parse_x509_certificate(der)
        .ok()
        .and_then(|(_, cert)| cert.extended_key_usage().ok().flatten().map(|eku| eku.value.client_auth))
        .unwrap_or(false)
}

impl ClientCertVerifier for RequireClientAuthUsage {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.0.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self.0.verify_client_cert(end_entity, intermediates, now).and_then(|verified| {
            if has_client_auth_usage(end_entity) {
                Ok(verified)
            } else {
                Err(rustls::Error::InvalidCertificate(rustls::CertificateError::InvalidPurpose))
            }
        });
        if let Err(e) = &verified {
            // The one place the refused certificate is in hand: the handshake's own error does not carry it.
            let named = Named::of(end_entity);
            tracing::info!(
                subject = %named.subject, serial = %named.serial, reason = refusal_reason(e),
                "client certificate refused"
            );
        }
        verified
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::{DevCa, LeafSpec};

    fn der(pem: &str) -> Vec<u8> {
        CertificateDer::from_pem_slice(pem.as_bytes()).unwrap().to_vec()
    }

    #[test]
    fn principal_comes_from_the_sealpost_uri_and_keys_from_bindings() {
        let ca = DevCa::generate("test CA").unwrap();
        let key = sealpost_protocol::SigningKey::from_bytes(&[7; 32]).public_key();
        let cert = ca.issue(&LeafSpec::client("alice", &[key])).unwrap();
        let peer = Peer::from_certificate(&der(&cert.cert_pem)).unwrap();
        let fingerprint = Fingerprint::of(&der(&cert.cert_pem));
        assert_eq!(peer, Peer { principal: "alice".parse().unwrap(), signing_keys: vec![key], fingerprint });
        assert_eq!(fingerprint.to_string().len(), 64);
        assert!(fingerprint.to_string().bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
    }

    #[test]
    fn only_certificates_that_name_client_auth_have_the_client_usage() {
        let ca = DevCa::generate("test CA").unwrap();
        let client = ca.issue(&LeafSpec::client("alice", &[])).unwrap();
        assert!(has_client_auth_usage(&der(&client.cert_pem)));
        let server = ca.issue(&LeafSpec::local_server()).unwrap();
        assert!(!has_client_auth_usage(&der(&server.cert_pem)));
        let no_usage = ca.issue(&LeafSpec { usages: Vec::new(), ..LeafSpec::client("alice", &[]) }).unwrap();
        assert!(!has_client_auth_usage(&der(&no_usage.cert_pem)));
        assert!(!has_client_auth_usage(b"not a certificate"));
    }

    fn material(ca: &DevCa, crls: Vec<String>) -> TlsMaterial {
        let server = ca.issue(&LeafSpec::local_server()).unwrap();
        TlsMaterial {
            client_ca_pem: ca.cert_pem(),
            cert_chain_pem: server.cert_pem,
            key_pem: server.key_pem,
            crls_pem: crls,
            crl_expired: CrlExpired::Warn,
        }
    }

    #[test]
    fn a_verifier_with_a_crl_no_longer_admits_the_certificate_it_revokes() {
        let ca = DevCa::generate("test CA").unwrap();
        let (alice, bob) = (
            ca.issue(&LeafSpec::client("alice", &[])).unwrap(),
            ca.issue(&LeafSpec::client("bob", &[])).unwrap(),
        );
        let chain = |pem: &str| vec![CertificateDer::from(der(pem))];
        let now = UnixTime::now();
        let before = client_verifier(&material(&ca, Vec::new())).unwrap();
        assert!(before.admits(&chain(&alice.cert_pem), now).is_ok());
        let after = client_verifier(&material(&ca, vec![ca.crl(&[&alice]).unwrap()])).unwrap();
        let refused = after.admits(&chain(&alice.cert_pem), now).unwrap_err().to_string();
        assert!(refused.contains("Revoked"), "{refused}");
        assert!(after.admits(&chain(&bob.cert_pem), now).is_ok());
        // Another CA's certificate, or none, is not admitted either.
        let other = DevCa::generate("other CA").unwrap().issue(&LeafSpec::client("alice", &[])).unwrap();
        assert!(after.admits(&chain(&other.cert_pem), now).is_err());
        assert!(after.admits(&[], now).is_err());
    }

    #[test]
    fn an_expired_crl_fails_handshakes_only_when_crl_expired_is_refuse() {
        let ca = DevCa::generate("test CA").unwrap();
        let bob = ca.issue(&LeafSpec::client("bob", &[])).unwrap();
        let chain = vec![CertificateDer::from(der(&bob.cert_pem))];
        let expired = vec![ca.crl_due_in(&[], -3_600).unwrap()];
        let warn = client_verifier(&material(&ca, expired.clone())).unwrap();
        assert!(warn.admits(&chain, UnixTime::now()).is_ok());
        let refuse = TlsMaterial { crl_expired: CrlExpired::Refuse, ..material(&ca, expired) };
        let refused = client_verifier(&refuse).unwrap().admits(&chain, UnixTime::now()).unwrap_err();
        assert!(refused.to_string().contains("revocation list expired"), "{refused}");
    }

    #[test]
    fn a_refused_certificate_is_named_by_subject_and_serial_and_its_reason() {
        let ca = DevCa::generate("test CA").unwrap();
        let alice = ca.issue(&LeafSpec::client("alice", &[])).unwrap();
        let named = Named::of(&der(&alice.cert_pem));
        let bytes = alice.serial.to_be_bytes();
        let hex: String = bytes.iter().skip_while(|b| **b == 0).map(|b| format!("{b:02X}")).collect();
        assert_eq!(named.serial, hex);
        assert!(named.subject.contains("alice"), "{named:?}");
        assert_eq!(Named::of(b"junk").subject, "<unparseable>");
        let revoked = rustls::Error::InvalidCertificate(rustls::CertificateError::Revoked);
        assert_eq!(refusal_reason(&revoked), "revoked");
        let unknown = rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer);
        assert_eq!(refusal_reason(&unknown), "unknown issuer");
    }

    #[test]
    fn a_key_that_does_not_match_the_certificate_is_refused() {
        let ca = DevCa::generate("test CA").unwrap();
        let good = material(&ca, Vec::new());
        assert!(server_crypto(&good).is_ok());
        let other = ca.issue(&LeafSpec::local_server()).unwrap();
        let mismatched = TlsMaterial { key_pem: other.key_pem, ..good };
        assert!(server_crypto(&mismatched).is_err());
    }

    #[test]
    fn certificate_without_principal_uri_is_refused() {
        let ca = DevCa::generate("test CA").unwrap();
        let cert = ca.issue(&LeafSpec::local_server()).unwrap();
        assert!(Peer::from_certificate(&der(&cert.cert_pem)).is_err());
    }

    #[test]
    fn invalid_principal_names_are_refused() {
        let ca = DevCa::generate("test CA").unwrap();
        for bad in ["", "a b", "alice/admin", &"x".repeat(65)] {
            assert!(Principal::new(bad).is_err(), "{bad:?}");
        }
        let cert = ca.issue(&LeafSpec::client("alice%2f", &[])).unwrap();
        assert!(Peer::from_certificate(&der(&cert.cert_pem)).is_err());
    }
}
