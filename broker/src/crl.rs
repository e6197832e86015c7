//! Certificate revocation lists as the operator sees them: what a CRL file says (its [`CrlSummary`], one
//! log line per file at start and at each reload) and whether a CRL past its next-update is accepted
//! ([`expiry`], by the `tls.crl_expired` setting, [`CrlExpired`]).
//!
//! The decision is synchronous and reads no clock: the time comes in as an argument.
//!
//! # What it does not do
//!
//! It does not check a CRL's signature or that its issuer is the client CA: rustls/webpki does that when
//! it verifies a client certificate against the CRLs. It does not fetch CRLs (no distribution points); the
//! operator replaces the files and the broker reloads them. Where `crl_expired = "refuse"`, the handshake
//! also enforces it: the client verifier is built with webpki's `ExpirationPolicy::Enforce`
//! (`enforce_revocation_expiration`), so a CRL that expires while the broker runs makes every handshake it
//! covers fail (`ExpiredRevocationList`) until a fresh CRL is loaded. With `"warn"` (the default) webpki
//! ignores the next-update, as it does by default.

use serde::Deserialize;

use crate::{Error, Result};

/// What the broker does with a CRL whose next-update is in the past (`tls.crl_expired`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CrlExpired {
    /// Load it and log a warning (default): the revocations it lists still hold.
    #[default]
    Warn,
    /// Refuse the configuration (start, reload and `check-config` fail, naming the file), and refuse
    /// handshakes once a loaded CRL expires.
    Refuse,
}

/// What a CRL file says, for the log: never its signature or raw bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CrlSummary {
    /// The issuer's distinguished name, as text.
    pub issuer: String,
    /// When it was issued, in seconds since the Unix epoch.
    pub this_update: i64,
    /// When the next one is due, in seconds since the Unix epoch (`None`: the CRL does not say).
    pub next_update: Option<i64>,
    /// How many certificates it revokes.
    pub revoked: usize,
}

impl CrlSummary {
    /// The summary of a PEM CRL. The error says what is wrong, not which file (the caller names it).
    pub fn of_pem(pem: &str) -> Result<CrlSummary> {
        use rustls::pki_types::pem::PemObject as _;
        let der = rustls::pki_types::CertificateRevocationListDer::from_pem_slice(pem.as_bytes())
            .map_err(|e| Error::Config(format!("not a PEM CRL: {e}")))?;
        Self::of_der(&der)
    }

    /// The summary of a DER CRL.
    pub fn of_der(der: &[u8]) -> Result<CrlSummary> {
        let (_, crl) = x509_parser::parse_x509_crl(der)
            .map_err(|e| Error::Config(format!("CRL does not parse: {e}")))?;
        Ok(CrlSummary {
            issuer: crl.issuer().to_string(),
            this_update: crl.last_update().timestamp(),
            next_update: crl.next_update().map(|t| t.timestamp()),
            revoked: crl.iter_revoked_certificates().count(),
        })
    }
}

/// Whether a CRL is current at a given time, and what to do about it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expiry {
    /// Its next-update is still ahead (or it names none).
    Current,
    /// Past its next-update, and `crl_expired = "warn"`: loaded, with a warning.
    Warn,
    /// Past its next-update, and `crl_expired = "refuse"`: the configuration is refused.
    Refuse,
}

/// What to do with a CRL whose next-update is `next_update`, at `now` (both in seconds since the Unix
/// epoch), under `policy`. A CRL is expired once `now` is past its next-update; one with no next-update
/// never is.
pub fn expiry(next_update: Option<i64>, now: i64, policy: CrlExpired) -> Expiry {
    match next_update {
        Some(next) if now > next => match policy {
            CrlExpired::Warn => Expiry::Warn,
            CrlExpired::Refuse => Expiry::Refuse,
        },
        _ => Expiry::Current,
    }
}

/// Seconds since the Unix epoch as RFC 3339 UTC (`2026-12-05T04:12:58.000Z`), for messages.
pub fn time_text(secs: i64) -> String {
    crate::audit::rfc3339::to_string(u64::try_from(secs).unwrap_or(0).saturating_mul(1000))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::{DevCa, LeafSpec};

    #[test]
    fn a_crl_past_its_next_update_warns_or_refuses_as_configured() {
        let next = Some(1_000);
        assert_eq!(expiry(next, 999, CrlExpired::Refuse), Expiry::Current);
        assert_eq!(expiry(next, 1_000, CrlExpired::Refuse), Expiry::Current);
        assert_eq!(expiry(next, 1_001, CrlExpired::Warn), Expiry::Warn);
        assert_eq!(expiry(next, 1_001, CrlExpired::Refuse), Expiry::Refuse);
        assert_eq!(expiry(None, i64::MAX, CrlExpired::Refuse), Expiry::Current);
        assert_eq!(CrlExpired::default(), CrlExpired::Warn);
    }

    #[test]
    fn the_summary_names_the_issuer_dates_and_revoked_count() {
        let ca = DevCa::generate("summary CA").unwrap();
        let (a, b) = (
            ca.issue(&LeafSpec::client("alice", &[])).unwrap(),
            ca.issue(&LeafSpec::client("bob", &[])).unwrap(),
        );
        let summary = CrlSummary::of_pem(&ca.crl(&[&a, &b]).unwrap()).unwrap();
        assert!(summary.issuer.contains("summary CA"), "{}", summary.issuer);
        assert_eq!(summary.revoked, 2);
        let next = summary.next_update.unwrap();
        assert!(next > summary.this_update, "{summary:?}");
        assert_eq!(CrlSummary::of_pem(&ca.crl(&[]).unwrap()).unwrap().revoked, 0);
        assert!(CrlSummary::of_pem("not a CRL").is_err());
        assert_eq!(time_text(0), "1970-01-01T00:00:00.000Z");
    }
}
