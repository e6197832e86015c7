//! Sealpost as the system under test: a broker in its own process, so that its memory can be measured
//! honestly and it can be restarted, with a data folder, configuration and client identity made here.
//!
//! The process is this bench executable started again with [`BROKER_MODE`]: it runs exactly what
//! `sealpost-broker serve --config FILE` runs (`Config::load`, `BrokerOptions::from_config`,
//! `Broker::start`) on a multi-threaded tokio runtime, without log output. Re-executing ourselves avoids
//! depending on a separately built, possibly stale `sealpost-broker` binary. The broker stops gracefully
//! (`Broker::shutdown`) when its standard input closes, so no signal is needed.
//!
//! Its store is the disk engine (the data folder), or with [`Storage::JetStream`] the JetStream engine on
//! a NATS cluster under a prefix of the caller's; either way the topics' policies are stored in it before
//! the broker starts.

use std::io::Read;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use sealpost_broker::config::Config;
use sealpost_broker::server::{Broker, BrokerOptions};
use sealpost_broker::store::{DiskStore, JetStreamOptions, JetStreamStore, Store};
use sealpost_client::Identity;
use sealpost_protocol::identity::IdentityFile;
use sealpost_protocol::{issue_policy, ContentKey, Epoch, Limits, Member, PolicyParams, Timestamp, Topic};

use crate::pki::Pki;
use crate::process::{Ready, ServerProcess, LISTENING};

/// The first argument that turns this executable into a broker process.
pub const BROKER_MODE: &str = "--sealpost-broker-process";

/// Connections one principal may hold: raised from the default 64 because W4 opens 1,000 connections as
/// the one `load` principal. Printed with the settings.
pub const MAX_CONNECTIONS_PER_PRINCIPAL: u32 = 4096;

/// How long a broker asked to stop may take before it is killed.
const STOP_WITHIN: Duration = Duration::from_secs(60);

const ACL: &str = "[[rule]]\nprincipals = [\"load\"]\ntopics = [\"bench.>\"]\nactions = [\"publish\", \"subscribe\"]\neffect = \"allow\"\n";

/// Runs the broker of `config` until standard input closes (the child side of [`SealpostServer`]).
pub fn run_broker_process(config: &Path) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async {
        let config = Config::load(config)?;
        let broker = Broker::start(BrokerOptions::from_config(&config)?).await?;
        eprintln!("sealpost-broker listening on {}", broker.local_addr());
        tokio::task::spawn_blocking(|| std::io::stdin().read_to_end(&mut Vec::new())).await??;
        broker.shutdown().await?;
        Ok(())
    })
}

/// Where the broker keeps its log.
pub enum Storage<'a> {
    /// The disk engine in the broker's data folder (`storage.engine = "disk"`, the default).
    Disk,
    /// The JetStream engine (`storage.engine = "jetstream"`) on the NATS servers `servers` (no TLS), every
    /// object named under `prefix`, with `replicas` replicas.
    JetStream { servers: &'a [String], prefix: &'a str, replicas: usize },
}

/// How long the JetStream engine retries an append (through leader elections) before it fails: the
/// engine's default.
pub const PUBLISH_TIMEOUT_MS: u64 = 20_000;

/// A broker process and everything it was made from.
pub struct SealpostServer {
    dir: tempfile::TempDir,
    process: Option<ServerProcess>,
    pub addr: SocketAddr,
    pub identity: Identity,
    /// When the current process was spawned and when it said it listens.
    pub spawned: Instant,
    pub listening: Instant,
}

impl SealpostServer {
    /// A new data folder where each of `topics` has a policy naming the `load` principal, and a broker
    /// process serving it; with `observe`, its metrics endpoint (scraped by nobody: what it costs is
    /// counting) and its audit log are on. Blocks (with the JetStream engine, on the cluster too): on an
    /// async worker, call it inside `block_in_place`.
    pub fn start(pki: &Pki, topics: &[&str], observe: bool, storage: &Storage<'_>) -> SealpostServer {
        let dir = tempfile::Builder::new().prefix("sealpost-load-").tempdir().unwrap();
        let d = dir.path();
        pki.write(d);
        std::fs::write(d.join("acl.toml"), ACL).unwrap();
        let mut config = format!(
            "listen = \"127.0.0.1:0\"\ndata_dir = \"data\"\nacl = \"acl.toml\"\nauthority = \"{}\"\n\n\
             [tls]\nca = \"ca.pem\"\ncert = \"server.pem\"\nkey = \"server.key\"\n\n\
             [limits]\nmax_connections_per_principal = {MAX_CONNECTIONS_PER_PRINCIPAL}\n",
            pki.authority.public_key()
        );
        if observe {
            sealpost_broker::audit::AuditKey::generate().write_new(&d.join("audit.key")).unwrap();
            config.push_str(
                "\n[metrics]\nlisten = \"127.0.0.1:0\"\n\n[audit]\ndir = \"audit\"\nkey = \"audit.key\"\n",
            );
        }
        match storage {
            Storage::Disk => {
                let store = DiskStore::open(&d.join("data")).unwrap();
                seed_policies(pki, &store, topics);
            }
            Storage::JetStream { servers, prefix, replicas } => {
                let list = servers.iter().map(|s| format!("{s:?}")).collect::<Vec<_>>().join(", ");
                config.push_str(&format!(
                    "\n[storage]\nengine = \"jetstream\"\n\n[storage.jetstream]\nservers = [{list}]\n\
                     prefix = \"{prefix}\"\nreplicas = {replicas}\npublish_timeout_ms = {PUBLISH_TIMEOUT_MS}\n"
                ));
                let options = JetStreamOptions {
                    servers: servers.to_vec(),
                    prefix: prefix.to_string(),
                    replicas: *replicas,
                    publish_timeout: Duration::from_millis(PUBLISH_TIMEOUT_MS),
                    ..JetStreamOptions::default()
                };
                let store = JetStreamStore::connect(options).unwrap();
                seed_policies(pki, &store, topics);
            }
        }
        std::fs::write(d.join("broker.toml"), config).unwrap();
        let process = spawn(&d.join("broker.toml"));
        let (addr, spawned, listening) = (process.addr, process.spawned, process.ready_at);
        let identity = write_identity(pki, d, addr);
        SealpostServer { dir, process: Some(process), addr, identity, spawned, listening }
    }

    /// Stops the process gracefully (its standard input closes) and waits for it, at most a minute.
    pub fn stop(&mut self) {
        if let Some(mut process) = self.process.take() {
            drop(process.child.stdin.take());
            if process.wait_or_kill(STOP_WITHIN).is_none() {
                eprintln!("sealpost broker did not stop within {} s: killed it", STOP_WITHIN.as_secs());
            }
        }
    }

    /// Starts a new process on the same data folder (after [`stop`](Self::stop)).
    pub fn restart(&mut self) {
        assert!(self.process.is_none(), "restart after stop");
        let process = spawn(&self.dir.path().join("broker.toml"));
        self.identity = write_identity_reload(self.dir.path(), process.addr);
        self.addr = process.addr;
        self.spawned = process.spawned;
        self.listening = process.ready_at;
        self.process = Some(process);
    }

    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().map(ServerProcess::pid)
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }
}

fn seed_policies(pki: &Pki, store: &dyn Store, topics: &[&str]) {
    let member = Member {
        principal: "load".parse().unwrap(),
        publish: true,
        subscribe: true,
        signing_key: pki.signing.public_key(),
        hpke_key: pki.hpke.public_key(),
    };
    let mut rng = rand::rngs::OsRng;
    for &topic in topics {
        let topic = Topic::new(topic).unwrap();
        let params = PolicyParams {
            topic: topic.clone(),
            epoch: Epoch(1),
            prev: None,
            members: vec![member.clone()],
            created_at: Timestamp(1),
        };
        let key = ContentKey::generate(&mut rng);
        let policy = issue_policy(&pki.authority, params, &key, &Limits::default(), &mut rng).unwrap();
        store.put_policy(&topic, 1, policy.as_bytes()).unwrap();
    }
    store.sync().unwrap();
}

/// Spawns the broker process and waits (bounded) for the line that gives its address; its other lines are
/// copied to the bench's standard error. Killed when dropped.
fn spawn(config: &Path) -> ServerProcess {
    let mut command = Command::new(std::env::current_exe().unwrap());
    command.arg(BROKER_MODE).arg(config).stdin(Stdio::piped()).stdout(Stdio::null());
    let ready = Ready::new(LISTENING, Duration::from_secs(600)).echo("  [sealpost broker] ", |_| true);
    ServerProcess::start(&mut command, ready)
}

fn write_identity(pki: &Pki, dir: &Path, addr: SocketAddr) -> Identity {
    let identity = IdentityFile {
        principal: "load".parse().unwrap(),
        broker: addr.to_string(),
        server_name: "localhost".into(),
        ca: "ca.pem".into(),
        cert: "load.pem".into(),
        key: "load.key".into(),
        signing_key: hex::encode(*pki.signing.to_bytes()),
        hpke_key: hex::encode(pki.hpke.as_bytes()),
        authority: pki.authority.public_key(),
        authority_key: None,
        state: None,
        rotation_grace_secs: None,
    };
    std::fs::write(dir.join("load.toml"), toml::to_string(&identity).unwrap()).unwrap();
    Identity::load(dir.join("load.toml")).unwrap()
}

/// The identity file again, pointing at the restarted broker's address.
fn write_identity_reload(dir: &Path, addr: SocketAddr) -> Identity {
    let path = dir.join("load.toml");
    let mut file: IdentityFile = toml::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    file.broker = addr.to_string();
    std::fs::write(&path, toml::to_string(&file).unwrap()).unwrap();
    Identity::load(path).unwrap()
}
