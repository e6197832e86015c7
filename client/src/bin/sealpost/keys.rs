//! `sealpost keygen` and `sealpost authority new`: fresh keys, written to files that are never
//! overwritten and readable by their owner only, or printed; `sealpost authority public`: the public half
//! of an authority key file.

use std::io::Write as _;
use std::path::Path;

use anyhow::{bail, Context as _};
use sealpost_client::protocol::principal::valid_principal;
use sealpost_client::protocol::{HpkeSecretKey, SigningKey};
use zeroize::Zeroizing;

use crate::topic;

pub(crate) fn keygen(out: Option<&Path>, principal: Option<&str>) -> anyhow::Result<()> {
    if let Some(name) = principal.filter(|p| !valid_principal(p)) {
        bail!("{name:?} is not a principal name (1 to 64 of A-Z a-z 0-9 . _ -)");
    }
    let signing = SigningKey::generate(&mut rand::rngs::OsRng);
    let hpke = HpkeSecretKey::generate(&mut rand::rngs::OsRng);
    let signing_hex = Zeroizing::new(hex::encode(*signing.to_bytes()));
    let hpke_hex = Zeroizing::new(hex::encode(hpke.as_bytes()));
    let secret =
        Zeroizing::new(format!("signing_key = \"{}\"\nhpke_key = \"{}\"\n", *signing_hex, *hpke_hex));
    let Some(path) = out else {
        let name = principal.unwrap_or("NAME");
        let public = topic::public_file(name, &signing.public_key(), &hpke.public_key());
        let mut stdout = std::io::stdout().lock();
        // The public keys as comments, so that the whole output stays one valid TOML file of secrets.
        writeln!(
            stdout,
            "# public keys: the topic authority needs the next 3 lines, without \"# \", as {name}.pub.toml"
        )?;
        for line in public.lines().filter(|l| !l.starts_with('#')) {
            writeln!(stdout, "# {line}")?;
        }
        stdout.write_all(secret.as_bytes())?;
        stdout.flush()?;
        return Ok(());
    };
    let file_name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
    let stem = file_name.strip_suffix(".toml").unwrap_or(file_name);
    let principal = match principal {
        Some(p) => p,
        None if valid_principal(stem) => stem,
        None => bail!("cannot tell the principal from the name of {}: pass --principal NAME", path.display()),
    };
    let public_path = path.with_file_name(format!("{stem}.pub.toml"));
    if public_path.exists() {
        bail!("{} exists already: it is never overwritten", public_path.display());
    }
    let header = format!("# secret keys of {principal}: lines for its identity file; keep them private\n");
    write_new(path, 0o600, &[header.as_bytes(), secret.as_bytes()])?;
    let public = topic::public_file(principal, &signing.public_key(), &hpke.public_key());
    write_new(&public_path, 0o644, &[public.as_bytes()])?;
    println!(
        "wrote the secret keys of {principal} to {} and its public keys to {} (for the topic authority)",
        path.display(),
        public_path.display()
    );
    Ok(())
}

/// `sealpost authority public FILE`: the public key of the `authority_key` line in FILE.
pub(crate) fn authority_public(file: &Path) -> anyhow::Result<()> {
    let text = Zeroizing::new(
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?,
    );
    let table: toml::Table = toml::from_str(&text)
        .map_err(|e| anyhow::anyhow!("{}: not a TOML file: {}", file.display(), e.message()))?;
    let Some(value) = table.get("authority_key") else {
        bail!("{} holds no authority_key line", file.display());
    };
    let mut seed = Zeroizing::new([0u8; 32]);
    match value.as_str().map(|hex| hex::decode_to_slice(hex, seed.as_mut_slice())) {
        Some(Ok(())) => {}
        _ => bail!("{}: field `authority_key`: expected 64 hex digits", file.display()),
    }
    let public = SigningKey::from_bytes(&seed).public_key();
    println!("{public}");
    eprintln!("key id {}", public.key_id());
    Ok(())
}

/// Creates `path` (never overwriting it) with `mode` on Unix, and writes `parts` to it durably.
pub(crate) fn write_new(path: &Path, mode: u32, parts: &[&[u8]]) -> anyhow::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, mode);
    #[cfg(not(unix))]
    let _ = mode;
    let mut file = options.open(path).with_context(|| format!("cannot create {}", path.display()))?;
    parts
        .iter()
        .try_for_each(|part| file.write_all(part))
        .and_then(|()| file.sync_all())
        .with_context(|| format!("cannot write {}", path.display()))
}

/// `sealpost authority new`: a fresh topic authority key.
pub(crate) fn authority_new(out: Option<&Path>) -> anyhow::Result<()> {
    let authority = SigningKey::generate(&mut rand::rngs::OsRng);
    let public = authority.public_key();
    let secret_hex = Zeroizing::new(hex::encode(*authority.to_bytes()));
    let secret = Zeroizing::new(format!("authority_key = \"{}\"\n", *secret_hex));
    let header = format!(
        "# the topic authority's secret key (public key {public}): the administrator's identity file needs \
         this line; keep it private and backed up\n"
    );
    let steps = format!(
        "set `authority = \"{public}\"` (key id {}) in broker.toml and in every identity file, and put the \
         authority_key line in the administrator's identity file only",
        public.key_id()
    );
    let Some(path) = out else {
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "# {steps}")?;
        stdout.write_all(header.as_bytes())?;
        stdout.write_all(secret.as_bytes())?;
        stdout.flush()?;
        return Ok(());
    };
    write_new(path, 0o600, &[header.as_bytes(), secret.as_bytes()])?;
    println!("wrote the topic authority's secret key to {}; {steps}", path.display());
    Ok(())
}
