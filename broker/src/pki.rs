//! A throwaway certificate authority for development and tests.
//!
//! `sealpost-broker dev` uses it to make a CA, a server certificate for `localhost`/`127.0.0.1`/`::1`, and
//! one client certificate per principal; system tests use it to make certificates on the fly. Nothing here
//! weakens verification: it only produces certificates that the normal TLS path then checks. For
//! production, issue certificates from your own CA following the principal rule in [`crate::tls`].

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose,
    SanType,
};
use sealpost_protocol::PublicKey;

use crate::tls::{key_binding_uri, principal_uri};
use crate::{Error, Result};

fn pki_err(e: rcgen::Error) -> Error {
    Error::Config(format!("certificate generation: {e}"))
}

/// A certificate and its private key, PEM-encoded.
#[derive(Clone)]
pub struct Issued {
    /// The certificate, PEM.
    pub cert_pem: String,
    /// The private key, PKCS#8 PEM.
    pub key_pem: String,
    /// The certificate's serial number (what a CRL names).
    pub serial: u64,
}

impl core::fmt::Debug for Issued {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("Issued { key: <redacted>, .. }")
    }
}

/// What kind of certificate to issue, and for how long it is valid.
#[derive(Clone, Debug)]
pub struct LeafSpec {
    /// The principal, written as a `sealpost://<principal>` URI SAN (client certificates).
    pub principal: Option<String>,
    /// ed25519 keys bound to the principal, as `urn:sealpost:ed25519:<hex>` URI SANs.
    pub bound_keys: Vec<PublicKey>,
    /// DNS names and IP addresses (server certificates).
    pub names: Vec<String>,
    /// The extended key usages: client or server authentication (none: no extended key usage extension,
    /// which the broker refuses for clients).
    pub usages: Vec<ExtendedKeyUsagePurpose>,
    /// Validity start, seconds relative to now (negative is in the past).
    pub not_before_secs: i64,
    /// Validity end, seconds relative to now.
    pub not_after_secs: i64,
}

impl LeafSpec {
    /// A client certificate for `principal`, binding `keys`, valid from a day ago for ten years.
    pub fn client(principal: &str, keys: &[PublicKey]) -> Self {
        Self {
            principal: Some(principal.to_string()),
            bound_keys: keys.to_vec(),
            names: Vec::new(),
            usages: vec![ExtendedKeyUsagePurpose::ClientAuth],
            not_before_secs: -86_400,
            not_after_secs: 10 * 365 * 86_400,
        }
    }

    /// A server certificate for `localhost`, `127.0.0.1` and `::1`.
    pub fn local_server() -> Self {
        Self {
            principal: None,
            bound_keys: Vec::new(),
            names: vec!["localhost".into(), "127.0.0.1".into(), "::1".into()],
            usages: vec![ExtendedKeyUsagePurpose::ServerAuth],
            not_before_secs: -86_400,
            not_after_secs: 10 * 365 * 86_400,
        }
    }
}

/// A certificate authority that can issue certificates.
pub struct DevCa {
    cert: rcgen::Certificate,
    key: KeyPair,
}

impl DevCa {
    /// Makes a new CA named `name`.
    pub fn generate(name: &str) -> Result<Self> {
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(pki_err)?;
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().map_err(pki_err)?;
        let cert = params.self_signed(&key).map_err(pki_err)?;
        Ok(Self { cert, key })
    }

    /// Loads a CA saved with [`to_pem`](Self::to_pem).
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self> {
        let key = KeyPair::from_pem(key_pem).map_err(pki_err)?;
        let params = CertificateParams::from_ca_cert_pem(cert_pem).map_err(pki_err)?;
        // Re-signing the same parameters with the same key yields an issuer equivalent to the original.
        let cert = params.self_signed(&key).map_err(pki_err)?;
        Ok(Self { cert, key })
    }

    /// The CA certificate and key.
    pub fn to_pem(&self) -> Issued {
        Issued { cert_pem: self.cert.pem(), key_pem: self.key.serialize_pem(), serial: 0 }
    }

    /// The CA certificate, PEM.
    pub fn cert_pem(&self) -> String {
        self.cert.pem()
    }

    /// Issues a certificate as `spec` says.
    pub fn issue(&self, spec: &LeafSpec) -> Result<Issued> {
        let mut params = CertificateParams::new(spec.names.clone()).map_err(pki_err)?;
        if let Some(p) = &spec.principal {
            params.distinguished_name.push(DnType::CommonName, p.as_str());
            let uri = principal_uri(p);
            params.subject_alt_names.push(SanType::URI(uri.try_into().map_err(pki_err)?));
        }
        for k in &spec.bound_keys {
            params.subject_alt_names.push(SanType::URI(key_binding_uri(k).try_into().map_err(pki_err)?));
        }
        params.extended_key_usages = spec.usages.clone();
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now + time::Duration::seconds(spec.not_before_secs);
        params.not_after = now + time::Duration::seconds(spec.not_after_secs);
        // Positive and below 2^63, so that its DER encoding needs no sign byte.
        let serial = rand::Rng::gen_range(&mut rand::thread_rng(), 1..i64::MAX as u64);
        params.serial_number = Some(serial.into());
        let key = KeyPair::generate().map_err(pki_err)?;
        let cert = params.signed_by(&key, &self.cert, &self.key).map_err(pki_err)?;
        Ok(Issued { cert_pem: cert.pem(), key_pem: key.serialize_pem(), serial })
    }

    /// A certificate revocation list, valid for a day from now, that revokes `revoked`.
    pub fn crl(&self, revoked: &[&Issued]) -> Result<String> {
        self.crl_due_in(revoked, 86_400)
    }

    /// [`crl`](Self::crl) with its next-update `next_update_secs` from now (negative: an expired CRL,
    /// issued a day before its next-update).
    pub fn crl_due_in(&self, revoked: &[&Issued], next_update_secs: i64) -> Result<String> {
        let now = time::OffsetDateTime::now_utc();
        let next_update = now + time::Duration::seconds(next_update_secs);
        let params = rcgen::CertificateRevocationListParams {
            this_update: (now - time::Duration::minutes(1)).min(next_update - time::Duration::days(1)),
            next_update,
            crl_number: 1u64.into(),
            issuing_distribution_point: None,
            revoked_certs: revoked
                .iter()
                .map(|cert| rcgen::RevokedCertParams {
                    serial_number: cert.serial.into(),
                    revocation_time: now - time::Duration::minutes(1),
                    reason_code: Some(rcgen::RevocationReason::KeyCompromise),
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: rcgen::KeyIdMethod::Sha256,
        };
        params.signed_by(&self.cert, &self.key).and_then(|crl| crl.pem()).map_err(pki_err)
    }
}
