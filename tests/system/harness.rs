//! The system-test harness: a real broker on 127.0.0.1:0 (in-process or as a subprocess), a PKI and
//! identity files made in the test, and the real client.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::process::{Ready, ServerProcess, LISTENING};
use sealpost_broker::acl::Acl;
use sealpost_broker::pki::{DevCa, Issued, LeafSpec};
use sealpost_broker::server::{Broker, BrokerOptions, ServerLimits};
use sealpost_broker::store::{DiskStore, MemoryStore, Store};
use sealpost_broker::tls::TlsMaterial;
use sealpost_protocol::identity::IdentityFile;
use sealpost_protocol::{
    issue_policy, ContentKey, Epoch, HpkeSecretKey, Limits, Member, PolicyParams, SigningKey, Timestamp,
    Topic, VerifiedPolicy,
};

/// The storage engines scenario tests run against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Engine {
    Sled,
    Memory,
}

pub const ACL: &str = sealpost_broker::dev::ACL;

/// The topics every `Env` gives a first policy: alice publishes and subscribes, bob subscribes.
pub const TOPICS: [&str; 2] = ["demo.chat", "demo.events"];

/// A deployment made in the test: CA, server certificate, principals with keys, and a data folder.
pub struct Env {
    pub dir: tempfile::TempDir,
    pub ca: DevCa,
    pub server: Issued,
    /// The content key of epoch 1 of every topic in [`TOPICS`].
    pub content_key: ContentKey,
    pub keys: Vec<(String, SigningKey)>,
    /// The topic authority, pinned in every identity file and configured on the broker.
    pub authority: SigningKey,
    /// CRLs (PEM) the broker is started with.
    pub crls: Vec<String>,
    memory: Option<Arc<dyn Store>>,
    seeded: bool,
}

impl Env {
    pub fn new() -> Env {
        let dir = tempfile::tempdir().unwrap();
        let ca = DevCa::generate("test CA").unwrap();
        let server = ca.issue(&LeafSpec::local_server()).unwrap();
        let keys = ["alice", "bob", "mallory", "admin"]
            .iter()
            .enumerate()
            .map(|(i, n)| (n.to_string(), SigningKey::from_bytes(&[i as u8 + 1; 32])))
            .collect();
        std::fs::write(dir.path().join("ca.pem"), ca.cert_pem()).unwrap();
        Env {
            dir,
            ca,
            server,
            content_key: ContentKey::from_bytes(&[0xC0; 32]),
            keys,
            authority: SigningKey::from_bytes(&[0xAA; 32]),
            crls: Vec::new(),
            memory: None,
            seeded: false,
        }
    }

    /// `who`'s HPKE secret: distinct per principal, fixed for the test.
    pub fn hpke(&self, who: &str) -> HpkeSecretKey {
        HpkeSecretKey::from_bytes(&[who.as_bytes()[0] ^ 0x5A; 32])
    }

    /// `who` as a policy member.
    pub fn member(&self, who: &str, publish: bool, subscribe: bool) -> Member {
        Member {
            principal: who.parse().unwrap(),
            publish,
            subscribe,
            signing_key: self.key(who).public_key(),
            hpke_key: self.hpke(who).public_key(),
        }
    }

    /// A policy of `topic` signed by the authority.
    pub fn policy(
        &self,
        topic: &str,
        epoch: u64,
        prev: Option<&VerifiedPolicy>,
        members: Vec<Member>,
        key: &ContentKey,
    ) -> VerifiedPolicy {
        let params = PolicyParams {
            topic: Topic::new(topic).unwrap(),
            epoch: Epoch(epoch),
            prev,
            members,
            created_at: Timestamp(1_763_856_000_000 + epoch),
        };
        let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(epoch);
        issue_policy(&self.authority, params, key, &Limits::default(), &mut rng).unwrap()
    }

    /// The epoch-1 policy of a topic in [`TOPICS`].
    pub fn first_policy(&self, topic: &str) -> VerifiedPolicy {
        let members = vec![self.member("alice", true, true), self.member("bob", false, true)];
        self.policy(topic, 1, None, members, &self.content_key)
    }

    /// Stores the first policies of [`TOPICS`] in `store`, once per env (a restart keeps them).
    pub fn seed(&mut self, store: &dyn Store) {
        if std::mem::replace(&mut self.seeded, true) {
            return;
        }
        for topic in TOPICS {
            let policy = self.first_policy(topic);
            store.put_policy(policy.topic(), 1, policy.as_bytes()).unwrap();
        }
        store.sync().unwrap();
    }

    pub fn key(&self, who: &str) -> &SigningKey {
        &self.keys.iter().find(|(n, _)| n == who).unwrap().1
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn store(&mut self, engine: Engine) -> Arc<dyn Store> {
        let store: Arc<dyn Store> = match engine {
            Engine::Sled => Arc::new(DiskStore::open(&self.data_dir()).unwrap()),
            // The memory engine survives a broker restart within the test (not a process restart).
            Engine::Memory => self.memory.get_or_insert_with(|| Arc::new(MemoryStore::default())).clone(),
        };
        self.seed(store.as_ref());
        store
    }

    pub fn tls(&self) -> TlsMaterial {
        TlsMaterial {
            client_ca_pem: self.ca.cert_pem(),
            cert_chain_pem: self.server.cert_pem.clone(),
            key_pem: self.server.key_pem.clone(),
            crls_pem: self.crls.clone(),
            crl_expired: sealpost_broker::crl::CrlExpired::Warn,
        }
    }

    /// Starts an in-process broker on 127.0.0.1:0.
    pub async fn start(&mut self, engine: Engine) -> Broker {
        self.start_at(engine, "127.0.0.1:0".parse().unwrap()).await
    }

    pub async fn start_at(&mut self, engine: Engine, listen: SocketAddr) -> Broker {
        self.start_with(engine, listen, ServerLimits::default()).await
    }

    /// Starts an in-process broker with the given limits.
    pub async fn start_with(&mut self, engine: Engine, listen: SocketAddr, limits: ServerLimits) -> Broker {
        Broker::start(self.options(engine, listen, limits)).await.unwrap()
    }

    /// What [`start_with`](Self::start_with) starts a broker with (no metrics endpoint).
    pub fn options(&mut self, engine: Engine, listen: SocketAddr, limits: ServerLimits) -> BrokerOptions {
        BrokerOptions {
            listen,
            tls: self.tls(),
            acl: Acl::from_toml(ACL).unwrap(),
            store: self.store(engine),
            authority: Some(self.authority.public_key()),
            limits,
            metrics: None,
            audit: None,
            retention: Default::default(),
        }
    }

    /// Writes an identity file for `who` (with a client certificate from this env's CA) pointing at `addr`.
    pub fn identity(&self, who: &str, addr: SocketAddr) -> PathBuf {
        let key = self.key(who);
        let cert = self.ca.issue(&LeafSpec::client(who, &[key.public_key()])).unwrap();
        self.identity_with_cert(who, addr, &cert, "ca.pem")
    }

    /// Writes an identity file for `who` with the given certificate and trusted CA file.
    pub fn identity_with_cert(&self, who: &str, addr: SocketAddr, cert: &Issued, ca_file: &str) -> PathBuf {
        let d = self.dir.path();
        std::fs::write(d.join(format!("{who}.pem")), &cert.cert_pem).unwrap();
        std::fs::write(d.join(format!("{who}.key")), &cert.key_pem).unwrap();
        let identity = IdentityFile {
            principal: who.parse().unwrap(),
            broker: addr.to_string(),
            server_name: "localhost".into(),
            ca: ca_file.into(),
            cert: format!("{who}.pem").into(),
            key: format!("{who}.key").into(),
            signing_key: hex::encode(*self.key(who).to_bytes()),
            hpke_key: hex::encode(self.hpke(who).as_bytes()),
            authority: self.authority.public_key(),
            authority_key: (who == "admin").then(|| hex::encode(*self.authority.to_bytes())),
            state: None,
            rotation_grace_secs: None,
        };
        let path = d.join(format!("{who}.toml"));
        std::fs::write(&path, toml::to_string(&identity).unwrap()).unwrap();
        path
    }
}

/// Copies the folder `from` to `to` (replacing it): a backup of a data or state folder, or its restore.
pub fn copy_dir(from: &Path, to: &Path) {
    let _ = std::fs::remove_dir_all(to);
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// Every file under `dir`, recursively.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.push(path);
            }
        }
    }
    out
}

/// A binary built by cargo for this workspace (next to the test executable's `deps/` folder).
pub fn cargo_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().and_then(Path::parent).unwrap();
    let path = dir.join(name);
    assert!(path.exists(), "{} not built: run the tests with `cargo test --workspace`", path.display());
    path
}

/// Bounds every await in a test: a hang fails the test instead of stalling CI.
pub async fn within<T>(what: &str, fut: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(30), fut).await.unwrap_or_else(|_| panic!("timed out: {what}"))
}

/// A bare QUIC client that speaks frames directly: for tests that need to do what the real client never
/// does (send the same batch twice, present no certificate, trust another CA).
pub struct RawClient {
    pub conn: quinn::Connection,
    _endpoint: quinn::Endpoint,
}

/// How a [`RawClient`] authenticates.
pub enum ClientAuth<'a> {
    Cert(&'a Issued),
    None,
}

impl RawClient {
    pub async fn connect(
        addr: SocketAddr,
        trusted_ca_pem: &str,
        auth: ClientAuth<'_>,
    ) -> Result<RawClient, String> {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(trusted_ca_pem.as_bytes()) {
            roots.add(c.unwrap()).unwrap();
        }
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(roots);
        let mut config = match auth {
            ClientAuth::Cert(issued) => builder
                .with_client_auth_cert(
                    CertificateDer::pem_slice_iter(issued.cert_pem.as_bytes()).map(Result::unwrap).collect(),
                    PrivateKeyDer::from_pem_slice(issued.key_pem.as_bytes()).unwrap(),
                )
                .unwrap(),
            ClientAuth::None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = vec![b"sealpost/1".to_vec()];
        let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(config).unwrap();
        let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(crypto)));
        let conn = within("handshake", endpoint.connect(addr, "localhost").unwrap())
            .await
            .map_err(|e| e.to_string())?;
        Ok(RawClient { conn, _endpoint: endpoint })
    }

    /// Opens a stream, sends `frames`, and reads `answers` frames back. A refused connection shows as an
    /// error here (TLS 1.3 client certificates are checked after the client's handshake completes).
    pub async fn exchange(
        &self,
        frames: &[sealpost_protocol::Frame],
        answers: usize,
    ) -> Result<Vec<sealpost_protocol::Frame>, String> {
        let (mut send, mut recv) = self.conn.open_bi().await.map_err(|e| e.to_string())?;
        for f in frames {
            send.write_all(&f.to_vec().unwrap()).await.map_err(|e| e.to_string())?;
        }
        let mut out = Vec::new();
        for _ in 0..answers {
            out.push(try_read_frame(&mut recv).await?);
        }
        Ok(out)
    }
}

/// Reads one frame from `recv` (see [`try_read_frame`]); a read error panics.
pub async fn read_frame(recv: &mut quinn::RecvStream) -> sealpost_protocol::Frame {
    try_read_frame(recv).await.unwrap()
}

/// Reads one frame from `recv` through the protocol's [`FrameBuffer`](sealpost_protocol::FrameBuffer), the
/// reader the broker and the client use, asking the stream for no more than the frame lacks (so a stream's
/// next frame stays in the stream). A read error, or the end of the stream before a whole frame, is `Err`;
/// a frame the protocol refuses panics; bounded by [`within`].
pub async fn try_read_frame(recv: &mut quinn::RecvStream) -> Result<sealpost_protocol::Frame, String> {
    let mut frames = sealpost_protocol::FrameBuffer::new(1 << 24);
    within("frame", async {
        loop {
            if let Some(frame) = frames.next_frame().unwrap() {
                return Ok(frame);
            }
            let wanted = frames.wanted().unwrap();
            let Some(chunk) = recv.read_chunk(wanted, true).await.map_err(|e| e.to_string())? else {
                return Err(format!("the stream ended {} bytes into a frame", frames.buffered()));
            };
            frames.extend(&chunk.bytes);
        }
    })
    .await
}

/// A broker running as a child process (`sealpost-broker serve`), for crash tests: a [`ServerProcess`]
/// (read its `child`, `addr` and `log` through it), killed when dropped.
pub struct BrokerProcess(ServerProcess);

impl std::ops::Deref for BrokerProcess {
    type Target = ServerProcess;
    fn deref(&self) -> &ServerProcess {
        &self.0
    }
}

impl std::ops::DerefMut for BrokerProcess {
    fn deref_mut(&mut self) -> &mut ServerProcess {
        &mut self.0
    }
}

impl Env {
    /// Writes `broker.toml`, the ACL and the TLS files for a subprocess broker on 127.0.0.1:0.
    pub fn write_config(&mut self) -> PathBuf {
        let d = self.dir.path();
        std::fs::write(d.join("server.pem"), &self.server.cert_pem).unwrap();
        std::fs::write(d.join("server.key"), &self.server.key_pem).unwrap();
        std::fs::write(d.join("acl.toml"), ACL).unwrap();
        let config = format!(
            "listen = \"127.0.0.1:0\"\ndata_dir = \"data\"\nacl = \"acl.toml\"\nauthority = \"{}\"\n\n[tls]\nca = \"ca.pem\"\ncert = \"server.pem\"\nkey = \"server.key\"\n",
            self.authority.public_key()
        );
        let path = d.join("broker.toml");
        std::fs::write(&path, config).unwrap();
        // The subprocess opens the same sled folder: seed its policies now and close it. (Without a reserve:
        // some tests give the data folder a small file system of its own.)
        let options = sealpost_broker::store::DiskOptions { reserve_bytes: 0, ..Default::default() };
        let store = DiskStore::open_with(&self.data_dir(), options).unwrap();
        self.seed(&store);
        drop(store);
        path
    }
}

impl BrokerProcess {
    /// Starts `sealpost-broker serve --config CONFIG` and waits (bounded) for it to report its address.
    pub fn start(config: &Path) -> BrokerProcess {
        Self::start_logging(config, "warn")
    }

    /// [`start`](Self::start), logging at `level` (`RUST_LOG`).
    pub fn start_logging(config: &Path, level: &str) -> BrokerProcess {
        let mut command = std::process::Command::new(cargo_bin("sealpost-broker"));
        command.arg("serve").arg("--config").arg(config).env("RUST_LOG", level);
        BrokerProcess(ServerProcess::start(&mut command, Ready::new(LISTENING, Duration::from_secs(60))))
    }

    /// SIGTERM, and waits (bounded) for a clean exit: the final sync runs.
    pub fn terminate(self) {
        let status = self.0.terminate(Duration::from_secs(30));
        assert!(status.success(), "broker exited with {status}");
    }

    /// SIGKILL: no shutdown path runs.
    pub fn kill(self) {
        self.0.kill();
    }
}

/// Alice publishes and bob reads it back: the broker at `addr` still serves well-behaved clients after
/// whatever a test did to it.
pub async fn broker_still_serves(env: &Env, addr: SocketAddr) {
    broker_still_serves_as(env, addr, "bob").await
}

/// Alice publishes and `reader` (a subscriber of demo.chat) reads it back.
pub async fn broker_still_serves_as(env: &Env, addr: SocketAddr, reader: &str) {
    use futures_util::StreamExt;
    use sealpost_client::{Client, Identity, PublisherOptions, SubscribeOptions};
    let chat = Topic::new("demo.chat").unwrap();
    let alice = Identity::load(env.identity("alice", addr)).unwrap();
    let alice = within("connect", Client::connect(&alice)).await.unwrap();
    let publisher =
        within("publisher", alice.publisher(chat.clone(), PublisherOptions::default())).await.unwrap();
    let receipt = within("publish", publisher.publish(bytes::Bytes::from("still here"))).await.unwrap();
    let reader = Identity::load(env.identity(reader, addr)).unwrap();
    let reader = within("connect", Client::connect(&reader)).await.unwrap();
    let options = SubscribeOptions {
        from: sealpost_protocol::StartAt::Offset(receipt.offset),
        durable: None,
        shared: false,
    };
    let mut sub = within("subscribe", reader.subscribe(chat, options)).await.unwrap();
    let m = within("message", sub.next()).await.unwrap().unwrap();
    assert_eq!(m.payload, bytes::Bytes::from("still here"));
}
