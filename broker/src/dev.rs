//! `sealpost-broker dev`: a broker on a throwaway PKI, set up on first run and reused after.
//!
//! On first run in `DIR` it writes:
//! - `pki/`: a CA, a server certificate for `localhost`/`127.0.0.1`/`::1`, and a client certificate for
//!   each of alice, bob, mallory and admin (each binding that principal's ed25519 key);
//! - `identities/{alice,bob,mallory,admin}.toml`: identity files for the `sealpost` CLI;
//! - `acl.toml`: alice may publish and subscribe on `demo.>`, bob may only subscribe on `demo.>`, admin has
//!   `admin` on everything, mallory has a valid certificate and no grants;
//! - `audit.key` (mode 0600) and `audit.pub`: the audit log's own signing key and its public key, named
//!   with `audit/` in the `[audit]` table of the configuration;
//! - `broker.toml`: the broker configuration, storing data in `data/`, with the metrics endpoint on
//!   `127.0.0.1:9464` ([`DEV_METRICS_PORT`]).
//!
//! It also makes a topic authority: its public key is pinned in every identity file and in the broker's
//! configuration, its private key is only in `identities/admin.toml`. With it, first run signs the epoch-1
//! policies of `demo.chat` and `demo.events` (alice publishes and subscribes, bob subscribes; each with a
//! fresh content key wrapped to its members) and stores them, so the tour runs on real keys. Later runs on
//! the same `DIR` reuse all of it. Keys are written readable by the owner only. None of this is for
//! production: the dev setup holds every key in one folder.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use sealpost_protocol::identity::IdentityFile;
use sealpost_protocol::{
    issue_policy, ContentKey, Epoch, HpkeSecretKey, Limits, Member, PolicyParams, SigningKey, Timestamp,
    Topic,
};

use crate::pki::{DevCa, LeafSpec};
use crate::store::{SledStore, Store};
use crate::{Error, Result};

/// The port of the dev broker's metrics endpoint (`http://127.0.0.1:9464/metrics`), unless the broker
/// listens on port 0, when the metrics endpoint does too.
pub const DEV_METRICS_PORT: u16 = 9464;

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
    for sub in ["pki", "identities"] {
        std::fs::create_dir(dir.join(sub))?;
    }
    let ca = DevCa::generate("Sealpost dev CA (throwaway)")?;
    let ca_pem = ca.to_pem();
    write(&dir.join("pki/ca.pem"), &ca_pem.cert_pem, false)?;
    write(&dir.join("pki/ca.key"), &ca_pem.key_pem, true)?;
    let server = ca.issue(&LeafSpec::local_server())?;
    write(&dir.join("pki/server.pem"), &server.cert_pem, false)?;
    write(&dir.join("pki/server.key"), &server.key_pem, true)?;

    let authority = SigningKey::generate(&mut rng);
    let signing: Vec<SigningKey> = PRINCIPALS.iter().map(|_| SigningKey::generate(&mut rng)).collect();
    let hpke: Vec<HpkeSecretKey> = PRINCIPALS.iter().map(|_| HpkeSecretKey::generate(&mut rng)).collect();
    for ((name, key), hpke) in PRINCIPALS.iter().zip(&signing).zip(&hpke) {
        let cert = ca.issue(&LeafSpec::client(name, &[key.public_key()]))?;
        write(&dir.join(format!("pki/{name}.pem")), &cert.cert_pem, false)?;
        write(&dir.join(format!("pki/{name}.key")), &cert.key_pem, true)?;
        let identity = IdentityFile {
            principal: name.parse()?,
            broker: listen.to_string(),
            server_name: "localhost".into(),
            ca: "../pki/ca.pem".into(),
            cert: format!("../pki/{name}.pem").into(),
            key: format!("../pki/{name}.key").into(),
            signing_key: hex_of(&*key.to_bytes()),
            hpke_key: hex_of(hpke.as_bytes()),
            authority: authority.public_key(),
            authority_key: (*name == "admin").then(|| hex_of(&*authority.to_bytes())),
            state: None,
            rotation_grace_secs: None,
        };
        let toml = toml::to_string(&identity).map_err(|e| Error::Config(e.to_string()))?;
        let header = format!("# Sealpost dev identity of {name}. Throwaway keys: not for production.\n");
        write(&dir.join(format!("identities/{name}.toml")), &(header + &toml), true)?;
    }

    // The demo topics' first policies: alice publishes and subscribes, bob subscribes.
    let member = |i: usize, publish: bool| -> Result<Member> {
        Ok(Member {
            principal: PRINCIPALS[i].parse()?,
            publish,
            subscribe: true,
            signing_key: signing[i].public_key(),
            hpke_key: hpke[i].public_key(),
        })
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    let store = SledStore::open(&dir.join("data"))?;
    for topic in ["demo.chat", "demo.events"] {
        let params = PolicyParams {
            topic: Topic::new(topic)?,
            epoch: Epoch(1),
            prev: None,
            members: vec![member(0, true)?, member(1, false)?],
            created_at: Timestamp(now),
        };
        let policy =
            issue_policy(&authority, params, &ContentKey::generate(&mut rng), &Limits::default(), &mut rng)?;
        store.put_policy(policy.topic(), 1, policy.as_bytes())?;
    }
    store.sync()?;
    drop(store);

    let audit_key = crate::audit::AuditKey::generate();
    audit_key.write_new(&dir.join("audit.key"))?;
    write(&dir.join("audit.pub"), &format!("{}\n", audit_key.public_key()), false)?;
    write(&dir.join("acl.toml"), ACL, false)?;
    let mut config = String::new();
    let _ = writeln!(config, "# Sealpost dev broker. See docs/operations.md for every setting.");
    let _ = writeln!(config, "listen = \"{listen}\"");
    let _ = writeln!(config, "authority = \"{}\"", authority.public_key());
    config.push_str(CONFIG_REST);
    // Prometheus' text on loopback; on an OS-chosen port when the broker's is too (tests, benches).
    let metrics_port = if listen.port() == 0 { 0 } else { DEV_METRICS_PORT };
    let _ = writeln!(config, "\n[metrics]\nlisten = \"127.0.0.1:{metrics_port}\"");
    write(&dir.join("broker.toml"), &config, false)?;
    Ok(())
}

fn hex_of(bytes: &[u8]) -> String {
    bytes.iter().fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// The dev ACL: alice publishes and subscribes on `demo.>`, bob subscribes there, admin administers
/// everything, mallory has nothing. Default deny, deny wins.
pub const ACL: &str = r#"# Sealpost dev ACL: default deny, deny wins.
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

# The tamper-evident audit log (docs/operations.md, "Audit log"): every decision about a peer. Check it,
# with the broker stopped (a running broker's log is not closed yet), with
#   sealpost-broker audit verify --key audit.pub audit/audit-*.jsonl
[audit]
dir = "audit"
key = "audit.key"
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
