//! `sealpost-broker dev`: a broker on a throwaway PKI, set up on first run and reused after.
//!
//! On first run in `DIR` it writes:
//! - `pki/`: a CA, a server certificate for `localhost`/`127.0.0.1`/`::1`, and a client certificate for
//!   each of alice, bob, mallory and admin (each binding that principal's ed25519 key);
//! - `identities/{alice,bob,mallory,admin}.toml`: identity files for the `sealpost` CLI;
//! - `acl.toml`: alice may publish and subscribe on `demo.>`, bob may only subscribe on `demo.>`, admin has
//!   `admin` on everything, mallory has a valid certificate and no grants;
//! - `broker.toml`: the broker configuration, storing data in `data/`.
//!
//! Alice and bob share a content key for `demo.>` and trust alice as a publisher there (until topic
//! policies exist). Later runs on the same `DIR` reuse all of it. Keys are written readable by the owner
//! only. None of this is for production.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use sealpost_protocol::identity::{ContentKeyEntry, IdentityFile, PublisherEntry};
use sealpost_protocol::{ContentKey, HpkeSecretKey, SigningKey, TopicPattern};

use crate::pki::{DevCa, LeafSpec};
use crate::{Error, Result};

/// The principals a dev setup creates.
pub const PRINCIPALS: [&str; 4] = ["alice", "bob", "mallory", "admin"];

/// What [`prepare`] found or made.
#[derive(Debug)]
pub struct DevSetup {
    /// The broker configuration file.
    pub config: PathBuf,
    /// Whether this run created the setup (false: reused).
    pub created: bool,
}

fn write(path: &Path, contents: &str, secret: bool) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true).mode(if secret { 0o600 } else { 0o644 });
    let mut f = opts.open(path).map_err(|e| Error::Config(format!("{}: {e}", path.display())))?;
    f.write_all(contents.as_bytes())?;
    f.sync_all()?;
    Ok(())
}

/// Sets up `dir` on first use (see the module docs); on later runs only checks that it is there.
pub fn prepare(dir: &Path, listen: SocketAddr) -> Result<DevSetup> {
    let config = dir.join("broker.toml");
    if config.exists() {
        return Ok(DevSetup { config, created: false });
    }
    // Build everything in a scratch folder, then rename it into place, so that an interrupted first run
    // leaves nothing half-made behind.
    let parent = dir.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent)?;
    let scratch = tempdir_in(parent)?;
    build(&scratch, listen)?;
    std::fs::rename(&scratch, dir).map_err(|e| {
        let _ = std::fs::remove_dir_all(&scratch);
        Error::Config(format!("{}: {e} (is it a non-empty folder without broker.toml?)", dir.display()))
    })?;
    Ok(DevSetup { config, created: true })
}

fn tempdir_in(parent: &Path) -> Result<PathBuf> {
    let mut rng = rand::thread_rng();
    let name = format!(".sealpost-dev-{:016x}", rand::Rng::gen::<u64>(&mut rng));
    let path = parent.join(name);
    std::fs::create_dir(&path)?;
    Ok(path)
}

fn build(dir: &Path, listen: SocketAddr) -> Result<()> {
    let mut rng = rand::rngs::OsRng;
    for sub in ["pki", "identities", "data"] {
        std::fs::create_dir(dir.join(sub))?;
    }
    let ca = DevCa::generate("Sealpost dev CA (throwaway)")?;
    let ca_pem = ca.to_pem();
    write(&dir.join("pki/ca.pem"), &ca_pem.cert_pem, false)?;
    write(&dir.join("pki/ca.key"), &ca_pem.key_pem, true)?;
    let server = ca.issue(&LeafSpec::local_server())?;
    write(&dir.join("pki/server.pem"), &server.cert_pem, false)?;
    write(&dir.join("pki/server.key"), &server.key_pem, true)?;

    let demo = TopicPattern::new("demo.>")?;
    let content_key = ContentKey::generate(&mut rng);
    let signing: Vec<SigningKey> = PRINCIPALS.iter().map(|_| SigningKey::generate(&mut rng)).collect();
    let alice_key = signing[0].public_key();
    for (name, key) in PRINCIPALS.iter().zip(&signing) {
        let cert = ca.issue(&LeafSpec::client(name, &[key.public_key()]))?;
        write(&dir.join(format!("pki/{name}.pem")), &cert.cert_pem, false)?;
        write(&dir.join(format!("pki/{name}.key")), &cert.key_pem, true)?;
        let member = matches!(*name, "alice" | "bob");
        let identity = IdentityFile {
            principal: name.to_string(),
            broker: listen.to_string(),
            server_name: "localhost".into(),
            ca: "../pki/ca.pem".into(),
            cert: format!("../pki/{name}.pem").into(),
            key: format!("../pki/{name}.key").into(),
            signing_key: hex_of(&*key.to_bytes()),
            hpke_key: hex_of(HpkeSecretKey::generate(&mut rng).as_bytes()),
            content_keys: if member {
                vec![ContentKeyEntry { topics: demo.clone(), epoch: 1, key: hex_of(content_key.as_bytes()) }]
            } else {
                Vec::new()
            },
            publishers: if member {
                vec![PublisherEntry { principal: "alice".into(), key: alice_key, topics: demo.clone() }]
            } else {
                Vec::new()
            },
        };
        let toml = toml::to_string(&identity).map_err(|e| Error::Config(e.to_string()))?;
        let header = format!("# Sealpost dev identity of {name}. Throwaway keys: not for production.\n");
        write(&dir.join(format!("identities/{name}.toml")), &(header + &toml), true)?;
    }
    write(&dir.join("acl.toml"), ACL, false)?;
    let mut config = String::new();
    let _ = writeln!(config, "# Sealpost dev broker. See docs/operations.md for every setting.");
    let _ = writeln!(config, "listen = \"{listen}\"");
    config.push_str(CONFIG_REST);
    write(&dir.join("broker.toml"), &config, false)?;
    Ok(())
}

fn hex_of(bytes: &[u8]) -> String {
    bytes.iter().fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

const ACL: &str = r#"# Sealpost dev ACL: default deny, deny wins.
[[rule]]
principals = ["alice"]
topics = ["demo.>"]
actions = ["publish", "subscribe"]
effect = "allow"

[[rule]]
principals = ["bob"]
topics = ["demo.>"]
actions = ["subscribe"]
effect = "allow"

[[rule]]
principals = ["admin"]
topics = [">"]
actions = ["admin"]
effect = "allow"
"#;

const CONFIG_REST: &str = r#"data_dir = "data"
acl = "acl.toml"

[tls]
ca = "pki/ca.pem"
cert = "pki/server.pem"
key = "pki/server.key"

[storage]
engine = "sled"
"#;

/// The commands to try next, printed by `sealpost-broker dev`.
pub fn next_steps(dir: &Path) -> String {
    let id = |who: &str| dir.join("identities").join(format!("{who}.toml")).display().to_string();
    format!(
        "Try, in another terminal:\n\
         \x20 cargo run --release -p sealpost-client --bin sealpost -- --identity {bob} sub demo.chat --from earliest\n\
         \x20 cargo run --release -p sealpost-client --bin sealpost -- --identity {alice} pub demo.chat 'hello bob'\n\
         \x20 cargo run --release -p sealpost-client --bin sealpost -- --identity {bob} pub demo.chat 'bob may not publish'\n\
         \x20 cargo run --release -p sealpost-client --bin sealpost -- --identity {mallory} sub demo.chat\n",
        alice = id("alice"),
        bob = id("bob"),
        mallory = id("mallory"),
    )
}
