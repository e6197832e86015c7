//! `sealpost identity new` and `sealpost identity check`: an identity made outside dev mode, with the
//! operator's own CA, and a check of one that says what is wrong, one line each.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};
use sealpost_client::protocol::identity::{key_binding_uri, principal_uri, IdentityFile, PRINCIPAL_SCHEME};
use sealpost_client::protocol::principal::valid_principal;
use sealpost_client::protocol::{HpkeSecretKey, PublicKey, SigningKey};
use sealpost_client::{Client, Identity, Topic};
use x509_parser::extensions::{GeneralName, ParsedExtension};
use zeroize::Zeroizing;

use crate::keys::write_new;
use crate::topic;

/// What `identity new` is told.
pub(crate) struct New<'a> {
    pub principal: &'a str,
    pub broker: &'a str,
    pub server_name: &'a str,
    pub ca: &'a Path,
    /// The topic authority's public key, hex.
    pub authority: &'a str,
    pub dir: &'a Path,
}

/// Writes, in `dir`, for `principal`: its TLS key (`NAME.key`), a certificate signing request with exactly
/// the subject-alternative names the broker requires (`NAME.csr`), the identity file (`NAME.toml`, naming
/// the certificate the CA will return as `NAME.pem`) and its public keys for the topic authority
/// (`NAME.pub.toml`). Nothing is overwritten.
pub(crate) fn new(args: New<'_>) -> anyhow::Result<()> {
    let New { principal, broker, server_name, ca, authority, dir } = args;
    if !valid_principal(principal) {
        bail!("{principal:?} is not a principal name (1 to 64 of A-Z a-z 0-9 . _ -)");
    }
    let authority: PublicKey = authority
        .parse()
        .map_err(|_| anyhow::anyhow!("--authority: expected the 64 hex digits of a public key"))?;
    if rustls::pki_types::ServerName::try_from(server_name).is_err() {
        bail!("--server-name {server_name:?} is not a DNS name or IP address");
    }
    let ca = std::fs::canonicalize(ca).with_context(|| format!("--ca {}", ca.display()))?;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let files = ["key", "csr", "toml", "pub.toml"].map(|ext| dir.join(format!("{principal}.{ext}")));
    if let Some(there) = files.iter().find(|f| f.exists()) {
        bail!("{} exists already: nothing is overwritten", there.display());
    }
    let [key_path, csr_path, identity_path, public_path] = files;

    let signing = SigningKey::generate(&mut rand::rngs::OsRng);
    let hpke = HpkeSecretKey::generate(&mut rand::rngs::OsRng);
    let tls_key = rcgen::KeyPair::generate().context("cannot make the TLS key")?;
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).context("the request")?;
    params.distinguished_name.push(rcgen::DnType::CommonName, principal);
    for uri in [principal_uri(principal), key_binding_uri(&signing.public_key())] {
        params.subject_alt_names.push(rcgen::SanType::URI(uri.try_into().context("a URI SAN")?));
    }
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let csr = params.serialize_request(&tls_key).context("cannot make the signing request")?;

    // The CA file as the identity file will name it: relative to `dir` when it lies inside it.
    let dir_abs = std::fs::canonicalize(dir).with_context(|| format!("{}", dir.display()))?;
    let ca_named = ca.strip_prefix(&dir_abs).map(Path::to_path_buf).unwrap_or_else(|_| ca.clone());
    let file = IdentityFile {
        principal: principal.parse().context("the principal")?,
        broker: broker.to_owned(),
        server_name: server_name.to_owned(),
        ca: ca_named,
        cert: PathBuf::from(format!("{principal}.pem")),
        key: PathBuf::from(format!("{principal}.key")),
        signing_key: hex::encode(*signing.to_bytes()),
        hpke_key: hex::encode(hpke.as_bytes()),
        authority,
        authority_key: None,
        state: None,
        rotation_grace_secs: None,
    };
    let identity = Zeroizing::new(toml::to_string(&file).context("the identity file")?);
    let header = format!(
        "# identity of {principal}: keep this file private (it holds the signing and HPKE secret keys); \
         {principal}.pem is the certificate your CA signs from {principal}.csr\n"
    );
    let tls_secret = Zeroizing::new(tls_key.serialize_pem());
    write_new(&key_path, 0o600, &[tls_secret.as_bytes()])?;
    write_new(&csr_path, 0o644, &[csr.pem().context("the signing request")?.as_bytes()])?;
    write_new(&identity_path, 0o600, &[header.as_bytes(), identity.as_bytes()])?;
    let public = topic::public_file(principal, &signing.public_key(), &hpke.public_key());
    write_new(&public_path, 0o644, &[public.as_bytes()])?;
    println!(
        "wrote {} (TLS key), {} (signing request), {} (identity) and {} (public keys, for the topic \
         authority). Have your CA sign the request as a client certificate, keeping its subjectAltName and \
         with extendedKeyUsage=clientAuth, for example: openssl x509 -req -in {} -CA ca.pem -CAkey ca.key \
         -days 365 -copy_extensions copy -extfile <(echo extendedKeyUsage=clientAuth) -out {}; then run \
         sealpost --identity {} identity check",
        key_path.display(),
        csr_path.display(),
        identity_path.display(),
        public_path.display(),
        csr_path.display(),
        dir.join(format!("{principal}.pem")).display(),
        identity_path.display(),
    );
    Ok(())
}

/// One check's outcome: what was checked, and what is wrong if anything.
struct Verdict {
    what: String,
    wrong: Option<String>,
}

impl Verdict {
    fn ok(what: impl Into<String>) -> Verdict {
        Verdict { what: what.into(), wrong: None }
    }
    fn wrong(what: impl Into<String>, why: impl Into<String>) -> Verdict {
        Verdict { what: what.into(), wrong: Some(why.into()) }
    }
}

/// Checks `identity` (loaded, so its file and PEM files are readable and well formed): its certificate
/// against its keys and principal, the connection to the broker (CA and name), and for each of `topics`
/// the broker's ACL and the topic's policy. Prints one line per check; fails if any check does.
pub(crate) async fn check(identity: &Identity, topics: &[Topic]) -> anyhow::Result<()> {
    let mut verdicts = certificate(identity);
    // The handshake completes before the broker judges the certificate's names: a query answered (or
    // refused for want of `admin`) shows that it accepted the connection.
    let what = format!("broker {}", identity.broker());
    let client = match crate::connect(identity).await {
        Ok(client) => match client.admin(sealpost_client::protocol::AdminQuery::Stats).await {
            Ok(_) | Err(sealpost_client::Error::AdminRefused { .. }) => {
                verdicts.push(Verdict::ok(format!(
                    "{what}: it accepts this certificate, and its own is valid for {} under the identity's ca",
                    identity.server_name()
                )));
                Some(client)
            }
            Err(e) => {
                verdicts.push(Verdict::wrong(what, e.to_string()));
                client.close().await;
                None
            }
        },
        Err(e) => {
            verdicts.push(Verdict::wrong(what, e.to_string()));
            None
        }
    };
    if let Some(client) = &client {
        for topic in topics {
            verdicts.push(membership(client, identity, topic).await);
        }
    }
    if let Some(client) = client {
        client.close().await;
    }
    let failed = verdicts.iter().filter(|v| v.wrong.is_some()).count();
    for v in &verdicts {
        match &v.wrong {
            None => println!("ok    {}", v.what),
            Some(why) => println!("FAIL  {}: {why}", v.what),
        }
    }
    if failed > 0 {
        bail!("{failed} of {} checks failed", verdicts.len());
    }
    Ok(())
}

/// The certificate's checks: its principal, its binding of the signing key, its usage, its validity and
/// that the key file is its key.
fn certificate(identity: &Identity) -> Vec<Verdict> {
    let leaf = match identity.certificate_der() {
        Some(der) => der,
        None => return vec![Verdict::wrong("certificate", "no certificate in the chain")],
    };
    let cert = match x509_parser::parse_x509_certificate(leaf) {
        Ok((_, cert)) => cert,
        Err(e) => return vec![Verdict::wrong("certificate", format!("does not parse: {e}"))],
    };
    let mut uris = Vec::new();
    let mut client_auth = false;
    for ext in cert.extensions() {
        match ext.parsed_extension() {
            ParsedExtension::SubjectAlternativeName(san) => {
                for name in &san.general_names {
                    if let GeneralName::URI(uri) = name {
                        uris.push((*uri).to_owned());
                    }
                }
            }
            ParsedExtension::ExtendedKeyUsage(eku) => client_auth = eku.client_auth,
            _ => {}
        }
    }
    let principal = identity.principal().as_str();
    let named: Vec<&String> = uris.iter().filter(|u| u.starts_with(PRINCIPAL_SCHEME)).collect();
    let mut out = Vec::new();
    let what = format!("certificate names principal {principal}");
    out.push(match named.as_slice() {
        [one] if **one == principal_uri(principal) => Verdict::ok(what),
        [] => Verdict::wrong(what, format!("it has no {PRINCIPAL_SCHEME} URI SAN")),
        [one] => Verdict::wrong(what, format!("it names {one}")),
        _ => Verdict::wrong(
            what,
            format!("it has {} {PRINCIPAL_SCHEME} URI SANs, the broker needs one", named.len()),
        ),
    });
    let binding = key_binding_uri(&identity.public_key());
    let what = format!("certificate binds the signing key {}", identity.public_key().key_id());
    out.push(if uris.contains(&binding) {
        Verdict::ok(what)
    } else {
        Verdict::wrong(
            what,
            format!("no {binding} URI SAN: the broker would refuse its batches (SIGNER_NOT_BOUND)"),
        )
    });
    out.push(if client_auth {
        Verdict::ok("certificate is for client authentication")
    } else {
        Verdict::wrong(
            "certificate is for client authentication",
            "no extendedKeyUsage=clientAuth: the broker refuses it",
        )
    });
    let validity = cert.validity();
    out.push(if validity.is_valid() {
        Verdict::ok(format!("certificate valid until {}", validity.not_after))
    } else {
        Verdict::wrong(
            "certificate valid now",
            format!("valid from {} to {}", validity.not_before, validity.not_after),
        )
    });
    let spki = cert.tbs_certificate.subject_pki.raw;
    let key =
        std::fs::read_to_string(identity.key_file()).ok().and_then(|pem| rcgen::KeyPair::from_pem(&pem).ok());
    out.push(match key {
        Some(key) if key.public_key_der() == spki => Verdict::ok("key file holds the certificate's key"),
        Some(_) => Verdict::wrong("key file holds the certificate's key", "it holds another key"),
        None => Verdict::wrong("key file holds the certificate's key", "its key type cannot be checked here"),
    });
    out
}

/// The broker lets this principal read `topic`'s policies (its ACL grants publish, subscribe or admin),
/// the topic has one, and its current policy lists this principal with this identity's keys.
async fn membership(client: &Client, identity: &Identity, topic: &Topic) -> Verdict {
    let what = format!("topic {topic}");
    let policies = match client.policies(topic).await {
        Ok(policies) => policies,
        Err(e) => return Verdict::wrong(what, e.to_string()),
    };
    let Some(current) = policies.last() else {
        return Verdict::wrong(what, "it has no policy yet (sealpost topic create)");
    };
    let principal = identity.principal();
    let epoch = current.epoch();
    match current.member(principal.as_str()) {
        None => Verdict::wrong(what, format!("the policy of epoch {epoch} does not list {principal}")),
        Some(m) if m.signing_key != identity.public_key() => Verdict::wrong(
            what,
            format!(
                "the policy lists {principal} with signing key {}, this identity holds {}",
                m.signing_key.key_id(),
                identity.public_key().key_id()
            ),
        ),
        Some(m) if m.hpke_key != identity.hpke_public_key() => Verdict::wrong(
            what,
            format!(
                "the policy wraps its key to another HPKE key than this identity's: it cannot read {topic}"
            ),
        ),
        Some(m) => {
            let roles = match (m.publish, m.subscribe) {
                (true, true) => "publisher and subscriber",
                (true, false) => "publisher",
                (false, true) => "subscriber",
                (false, false) => "member without a role",
            };
            Verdict::ok(format!(
                "topic {topic}: the broker serves its policy; epoch {epoch} lists {principal} as {roles}"
            ))
        }
    }
}
