//! Sealpost as the system under test: a broker in its own process, so that its memory can be measured
//! honestly and it can be restarted, with a data folder, configuration and client identity made here.
//!
//! The process is this bench executable started again with [`BROKER_MODE`]: it runs exactly what
//! `sealpost-broker serve --config FILE` runs (`Config::load`, `BrokerOptions::from_config`,
//! `Broker::start`) on a multi-threaded tokio runtime, without log output. Re-executing ourselves avoids
//! depending on a separately built, possibly stale `sealpost-broker` binary. The broker stops gracefully
//! (`Broker::shutdown`) when its standard input closes, so no signal is needed.

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sealpost_broker::config::Config;
use sealpost_broker::server::{Broker, BrokerOptions};
use sealpost_broker::store::{SledStore, Store};
use sealpost_client::Identity;
use sealpost_protocol::identity::IdentityFile;
use sealpost_protocol::{issue_policy, ContentKey, Epoch, Limits, Member, PolicyParams, Timestamp, Topic};

use crate::pki::Pki;

/// The first argument that turns this executable into a broker process.
pub const BROKER_MODE: &str = "--sealpost-broker-process";

/// The topics the bench uses; both get a policy naming the `load` principal.
pub const TOPICS: [&str; 2] = [crate::system::TOPIC, crate::system::IDLE_TOPIC];

/// Connections one principal may hold: raised from the default 64 because W4 opens 1,000 connections as
/// the one `load` principal. Printed with the settings.
pub const MAX_CONNECTIONS_PER_PRINCIPAL: u32 = 4096;

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

/// A broker process and everything it was made from.
pub struct SealpostServer {
    dir: tempfile::TempDir,
    child: Option<Child>,
    pub addr: SocketAddr,
    pub identity: Identity,
    /// When the current process was spawned and when it said it listens.
    pub spawned: Instant,
    pub listening: Instant,
}

impl SealpostServer {
    /// A new data folder with the bench's topic policies, and a broker process serving it.
    pub fn start(pki: &Pki) -> SealpostServer {
        let dir = tempfile::Builder::new().prefix("sealpost-load-").tempdir().unwrap();
        let d = dir.path();
        pki.write(d);
        std::fs::write(d.join("acl.toml"), ACL).unwrap();
        let config = format!(
            "listen = \"127.0.0.1:0\"\ndata_dir = \"data\"\nacl = \"acl.toml\"\nauthority = \"{}\"\n\n\
             [tls]\nca = \"ca.pem\"\ncert = \"server.pem\"\nkey = \"server.key\"\n\n\
             [limits]\nmax_connections_per_principal = {MAX_CONNECTIONS_PER_PRINCIPAL}\n",
            pki.authority.public_key()
        );
        std::fs::write(d.join("broker.toml"), config).unwrap();
        seed_policies(pki, &d.join("data"));
        let (child, addr, spawned, listening) = spawn(&d.join("broker.toml"));
        let identity = write_identity(pki, d, addr);
        SealpostServer { dir, child: Some(child), addr, identity, spawned, listening }
    }

    /// Stops the process gracefully (its standard input closes) and waits for it, at most a minute.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            drop(child.stdin.take());
            crate::system::wait_or_kill(child, "sealpost broker");
        }
    }

    /// Starts a new process on the same data folder (after [`stop`](Self::stop)).
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "restart after stop");
        let (child, addr, spawned, listening) = spawn(&self.dir.path().join("broker.toml"));
        self.identity = write_identity_reload(self.dir.path(), addr);
        self.child = Some(child);
        self.addr = addr;
        self.spawned = spawned;
        self.listening = listening;
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }
}

impl Drop for SealpostServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn seed_policies(pki: &Pki, data: &Path) {
    let store = SledStore::open(data).unwrap();
    let member = Member {
        principal: "load".parse().unwrap(),
        publish: true,
        subscribe: true,
        signing_key: pki.signing.public_key(),
        hpke_key: pki.hpke.public_key(),
    };
    let mut rng = rand::rngs::OsRng;
    for topic in TOPICS {
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

/// Spawns the broker process and waits (bounded) for the line that gives its address.
fn spawn(config: &Path) -> (Child, SocketAddr, Instant, Instant) {
    let spawned = Instant::now();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .arg(BROKER_MODE)
        .arg(config)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            match line.split("listening on ").nth(1) {
                Some(addr) => {
                    let _ = tx.send((addr.trim().to_string(), Instant::now()));
                }
                None => eprintln!("  [sealpost broker] {line}"),
            }
        }
    });
    match rx.recv_timeout(Duration::from_secs(600)) {
        Ok((addr, at)) => (child, addr.parse().unwrap(), spawned, at),
        Err(_) => {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the sealpost broker process did not report its address within 600 s");
        }
    }
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
