//! The client's async shell against a mock broker that speaks the wire contract over real QUIC and TLS:
//! an in-memory log with the broker's dedup of resent batches and its chain check, topic policies (stored
//! only if signed by the authority the mock is configured with and of the next epoch; batches accepted only
//! from a publisher of the current policy), plus fault injection (connections killed after a batch is
//! stored but before it is acknowledged, or mid-subscription; policies served that the authority did not
//! sign, or an older history).
//!
//! The real broker's system tests live in the workspace's `tests/`; these pin the client's side of
//! reconnection, resending and error reporting.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use sealpost_client::protocol::{
    issue_policy, ChainHead, ContentKey, Epoch, Frame, FrameBuffer, HpkeSecretKey, Limits, Member,
    PolicyParams, SealedBatch, SignedPolicy, SigningKey, VerifiedPolicy,
};
use sealpost_client::{
    Client, ClientOptions, Error, ErrorCode, Identity, Offset, PublisherOptions, Reconnect, StartAt,
    SubscribeOptions, Timestamp, Topic,
};
use tokio::sync::Notify;

// ---------------------------------------------------------------------------------------------------------
// PKI and identity files

struct Pki {
    ca_pem: String,
    server_chain: Vec<CertificateDer<'static>>,
    server_key: Vec<u8>,
    client_cert_pem: String,
    client_key_pem: String,
}

fn ca() -> (rcgen::Certificate, rcgen::KeyPair) {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    (params.self_signed(&key).unwrap(), key)
}

fn pki() -> Pki {
    let (ca, ca_key) = ca();
    let server_key = rcgen::KeyPair::generate().unwrap();
    let server = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
        .unwrap()
        .signed_by(&server_key, &ca, &ca_key)
        .unwrap();
    let client_key = rcgen::KeyPair::generate().unwrap();
    let client = rcgen::CertificateParams::new(vec!["alice".to_owned()])
        .unwrap()
        .signed_by(&client_key, &ca, &ca_key)
        .unwrap();
    Pki {
        ca_pem: ca.pem(),
        server_chain: vec![server.der().clone()],
        server_key: server_key.serialize_der(),
        client_cert_pem: client.pem(),
        client_key_pem: client_key.serialize_pem(),
    }
}

fn alice() -> SigningKey {
    SigningKey::from_bytes(&[0xA1; 32])
}

fn alice_hpke() -> HpkeSecretKey {
    HpkeSecretKey::from_bytes(&[9; 32])
}

/// The topic authority the identities pin and the mock broker is configured with.
fn authority() -> SigningKey {
    SigningKey::from_bytes(&[0xAA; 32])
}

/// A principal's signing key and HPKE key, derived from its name.
fn keys_of(name: &str) -> (SigningKey, HpkeSecretKey) {
    match name {
        "alice" => (alice(), alice_hpke()),
        _ => (
            SigningKey::from_bytes(&[name.as_bytes()[0]; 32]),
            HpkeSecretKey::from_bytes(&[name.as_bytes()[0] ^ 0x55; 32]),
        ),
    }
}

fn member(name: &str, publish: bool, subscribe: bool) -> Member {
    let (signing, hpke) = keys_of(name);
    Member {
        principal: name.parse().unwrap(),
        publish,
        subscribe,
        signing_key: signing.public_key(),
        hpke_key: hpke.public_key(),
    }
}

/// A policy of `topic` signed by `signer`, with a fresh content key.
fn policy_by(
    signer: &SigningKey,
    topic: &Topic,
    prev: Option<&VerifiedPolicy>,
    members: Vec<Member>,
) -> VerifiedPolicy {
    let epoch = Epoch(prev.map_or(1, |p| p.epoch().0 + 1));
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
    let created_at = Timestamp(prev.map_or(now, |p| now.max(p.created_at().0)));
    let params = PolicyParams { topic: topic.clone(), epoch, prev, members, created_at };
    let key = ContentKey::generate(&mut rand::rngs::OsRng);
    issue_policy(signer, params, &key, &Limits::default(), &mut rand::rngs::OsRng).unwrap()
}

fn policy(topic: &Topic, prev: Option<&VerifiedPolicy>, members: Vec<Member>) -> VerifiedPolicy {
    policy_by(&authority(), topic, prev, members)
}

/// Writes `who`'s identity file into `dir` (with alice's TLS certificate: the mock does not check
/// principals), trusting `ca_pem` for the broker at `addr`; `extra` is appended.
fn identity_of(dir: &Path, who: &str, pki: &Pki, ca_pem: &str, addr: SocketAddr, extra: &str) -> PathBuf {
    std::fs::write(dir.join("ca.pem"), ca_pem).unwrap();
    std::fs::write(dir.join("alice.pem"), &pki.client_cert_pem).unwrap();
    std::fs::write(dir.join("alice.key"), &pki.client_key_pem).unwrap();
    let (signing, hpke) = keys_of(who);
    let path = dir.join(format!("{who}.toml"));
    std::fs::write(
        &path,
        format!(
            r#"principal = "{who}"
broker = "{addr}"
server_name = "localhost"
ca = "ca.pem"
cert = "alice.pem"
key = "alice.key"
signing_key = "{}"
hpke_key = "{}"
authority = "{}"
{extra}"#,
            hex::encode(*signing.to_bytes()),
            hex::encode(hpke.as_bytes()),
            authority().public_key()
        ),
    )
    .unwrap();
    path
}

/// Writes alice's identity file into `dir`, trusting `ca_pem` for the broker at `addr`.
fn identity(dir: &Path, pki: &Pki, ca_pem: &str, addr: SocketAddr) -> PathBuf {
    identity_of(dir, "alice", pki, ca_pem, addr, "")
}

fn quick() -> ClientOptions {
    ClientOptions {
        connect_timeout: Duration::from_secs(2),
        reconnect: Reconnect {
            initial_delay: Duration::from_millis(20),
            max_delay: Duration::from_millis(200),
            max_retries: 5,
        },
        ..ClientOptions::default()
    }
}

fn topic() -> Topic {
    "demo.x".parse().unwrap()
}

// ---------------------------------------------------------------------------------------------------------
// The mock broker

#[derive(Default)]
struct Log {
    /// (offset, count, sealed bytes)
    entries: Vec<(u64, u32, Bytes)>,
    next_offset: u64,
    by_bytes: HashMap<Bytes, u64>,
    /// Chain heads by (publisher key, chain id): one chain per publisher instance.
    heads: HashMap<([u8; 32], [u8; 16]), ChainHead>,
    /// Refuse the next batch not stored yet with this code.
    refuse_next: Option<ErrorCode>,
    /// Refuse Head and Subscribe with NOT_AUTHORIZED.
    deny: bool,
    /// Kill the connection right after storing the publish that brings this to zero, without answering.
    kill_after_stores: Option<usize>,
    /// Start every subscription at offset 0, whatever it asks (like a durable subscription resuming from
    /// an old committed offset).
    ignore_from: bool,
    acks: Vec<u64>,
    publishes_received: usize,
    subscribes: usize,
    /// Refuse new connections (the broker is down).
    down: bool,
    /// Stored policies by topic, oldest first.
    policies: HashMap<Topic, Vec<VerifiedPolicy>>,
    /// Answers to serve to the next GetPolicies requests, whatever their topic, instead of the stored
    /// policies (a lying broker).
    lies: std::collections::VecDeque<Vec<Bytes>>,
    /// Store this policy just before handling the next PutPolicy (another administrator was faster).
    sneak_in: Option<VerifiedPolicy>,
    get_policies: usize,
}

impl Log {
    fn current(&self, topic: &Topic) -> Option<&VerifiedPolicy> {
        self.policies.get(topic).and_then(|p| p.last())
    }

    /// The broker's PutPolicy check: signed by its authority, the epoch after its current one.
    fn put_policy(&mut self, bytes: Bytes) -> Result<(), ErrorCode> {
        let policy = SignedPolicy::decode(bytes, &Limits::default())
            .and_then(|p| p.verify(&authority().public_key()))
            .map_err(|_| ErrorCode::POLICY_REJECTED)?;
        let next = self.current(policy.topic()).map_or(1, |p| p.epoch().0 + 1);
        if policy.epoch().0 != next {
            return Err(ErrorCode::POLICY_REJECTED);
        }
        self.policies.entry(policy.topic().clone()).or_default().push(policy);
        Ok(())
    }
}

#[derive(Clone)]
struct Mock {
    addr: SocketAddr,
    log: Arc<Mutex<Log>>,
    stored: Arc<Notify>,
    conns: Arc<Mutex<Vec<quinn::Connection>>>,
}

impl Mock {
    async fn start(pki: &Pki) -> Mock {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut tls = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                pki.server_chain.clone(),
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(pki.server_key.clone())),
            )
            .unwrap();
        tls.alpn_protocols = vec![b"sealpost/1".to_vec()];
        let quic = quinn::crypto::rustls::QuicServerConfig::try_from(Arc::new(tls)).unwrap();
        let endpoint = quinn::Endpoint::server(
            quinn::ServerConfig::with_crypto(Arc::new(quic)),
            "127.0.0.1:0".parse().unwrap(),
        )
        .unwrap();
        let mock = Mock {
            addr: endpoint.local_addr().unwrap(),
            log: Arc::default(),
            stored: Arc::new(Notify::new()),
            conns: Arc::default(),
        };
        let m = mock.clone();
        tokio::spawn(async move {
            while let Some(incoming) = endpoint.accept().await {
                let m = m.clone();
                if m.with(|l| l.down) {
                    incoming.refuse();
                    continue;
                }
                tokio::spawn(async move {
                    let Ok(conn) = incoming.await else { return };
                    m.conns.lock().unwrap().push(conn.clone());
                    while let Ok((send, recv)) = conn.accept_bi().await {
                        tokio::spawn(m.clone().serve(conn.clone(), send, recv));
                    }
                });
            }
        });
        mock
    }

    /// Closes every connection: the client sees the broker go away.
    fn kill_all(&self) {
        for conn in self.conns.lock().unwrap().drain(..) {
            conn.close(0u32.into(), b"fault injected");
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut Log) -> T) -> T {
        f(&mut self.log.lock().unwrap())
    }

    async fn serve(self, conn: quinn::Connection, mut send: quinn::SendStream, recv: quinn::RecvStream) {
        let mut recv = FrameReader::new(recv);
        while let Some(frame) = recv.next().await {
            let reply = match frame {
                Frame::Head { request_id, publisher, .. } => {
                    if self.with(|l| l.deny) {
                        denied(request_id)
                    } else {
                        // `Head` answers for the legacy chain (batches of format version 1).
                        let key = (*publisher.as_bytes(), [0; 16]);
                        let head = self.with(|l| l.heads.get(&key).copied()).unwrap_or_default();
                        Frame::HeadIs { request_id, head }
                    }
                }
                Frame::GetPolicies { request_id, topic } => {
                    if self.with(|l| l.deny) {
                        denied(request_id)
                    } else {
                        let policies = self.with(|l| {
                            l.get_policies += 1;
                            l.lies.pop_front().unwrap_or_else(|| {
                                let stored = l.policies.get(&topic).cloned().unwrap_or_default();
                                let from = stored.len().saturating_sub(2);
                                stored[from..].iter().map(|p| p.as_bytes().clone()).collect()
                            })
                        });
                        Frame::Policies { request_id, policies }
                    }
                }
                Frame::PutPolicy { request_id, policy } => {
                    let result = self.with(|l| {
                        if l.deny {
                            return Err(ErrorCode::NOT_AUTHORIZED);
                        }
                        if let Some(first) = l.sneak_in.take() {
                            l.put_policy(first.as_bytes().clone()).unwrap();
                        }
                        l.put_policy(policy)
                    });
                    match result {
                        Ok(()) => Frame::PolicyStored { request_id },
                        Err(code) => {
                            Frame::Error { request_id: Some(request_id), code, message: "no".into() }
                        }
                    }
                }
                Frame::Publish { request_id, batch } => match self.store(batch) {
                    Ok((first_offset, count, kill)) => {
                        if kill {
                            conn.close(0u32.into(), b"fault injected");
                            return;
                        }
                        Frame::Published { request_id, first_offset: Offset(first_offset), count }
                    }
                    Err(code) => Frame::Error { request_id: Some(request_id), code, message: "no".into() },
                },
                Frame::Subscribe { request_id, from, .. } => {
                    if self.with(|l| l.deny) {
                        write(&mut send, &denied(request_id)).await;
                        return;
                    }
                    let start = self.with(|l| {
                        l.subscribes += 1;
                        match from {
                            _ if l.ignore_from => 0,
                            StartAt::Earliest => 0,
                            StartAt::Latest => l.next_offset,
                            StartAt::Offset(n) => n.0,
                        }
                    });
                    write(
                        &mut send,
                        &Frame::Subscribed { request_id, subscription: 7, start_offset: Offset(start) },
                    )
                    .await;
                    // The client's side: acknowledgements, then Unsubscribe or the end of its stream, after
                    // which the broker ends its side too.
                    let log = self.log.clone();
                    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
                    tokio::spawn(async move {
                        while let Some(frame) = recv.next().await {
                            match frame {
                                Frame::Ack { next_offset, .. } => {
                                    log.lock().unwrap().acks.push(next_offset.0)
                                }
                                Frame::Unsubscribe { .. } => break,
                                other => panic!("mock broker got {other:?} on a subscription"),
                            }
                        }
                        let _ = stop.send(());
                    });
                    self.deliver(send, start, stopped).await;
                    return;
                }
                other => panic!("mock broker got {other:?}"),
            };
            write(&mut send, &reply).await;
        }
    }

    /// Stores a batch (or finds it stored): (first offset, count, whether to kill the connection now).
    fn store(&self, batch: Bytes) -> Result<(u64, u32, bool), ErrorCode> {
        let verified = SealedBatch::decode(batch.clone(), &Limits::default()).unwrap().verify().unwrap();
        let header = verified.header().clone();
        let mut l = self.log.lock().unwrap();
        l.publishes_received += 1;
        let first_offset = match l.by_bytes.get(&batch) {
            Some(offset) => *offset,
            None => {
                let Some(current) = l.current(&header.topic) else {
                    return Err(ErrorCode::NOT_AUTHORIZED);
                };
                if current.publisher(&header.publisher).is_none() {
                    return Err(ErrorCode::SIGNER_NOT_BOUND);
                }
                if let Some(code) = l.refuse_next.take() {
                    return Err(code);
                }
                let key = (*header.publisher.as_bytes(), header.chain.0);
                let head = l.heads.get(&key).copied().unwrap_or_default();
                if header.first_seq != head.next_seq || header.prev_digest != head.prev_digest {
                    return Err(ErrorCode::SEQUENCE_CONFLICT);
                }
                let offset = l.next_offset;
                l.next_offset += u64::from(header.count);
                l.entries.push((offset, header.count, batch.clone()));
                l.by_bytes.insert(batch, offset);
                l.heads.insert(key, ChainHead::after(&verified));
                self.stored.notify_waiters();
                offset
            }
        };
        let kill = match l.kill_after_stores.as_mut() {
            Some(n) => {
                *n -= 1;
                *n == 0
            }
            None => false,
        };
        if kill {
            l.kill_after_stores = None;
        }
        Ok((first_offset, header.count, kill))
    }

    async fn deliver(
        self,
        mut send: quinn::SendStream,
        start: u64,
        mut stopped: tokio::sync::oneshot::Receiver<()>,
    ) {
        let mut next = start;
        loop {
            let notified = self.stored.notified();
            let due: Vec<_> =
                self.with(|l| l.entries.iter().filter(|e| e.0 + u64::from(e.1) > next).cloned().collect());
            for (offset, count, batch) in due {
                let frame = Frame::Deliver { subscription: 7, offset: Offset(offset), batch };
                if send.write_all(&frame.to_vec().unwrap()).await.is_err() {
                    return;
                }
                next = offset + u64::from(count);
            }
            tokio::select! {
                () = notified => {}
                _ = &mut stopped => {
                    let _ = send.finish();
                    return;
                }
            }
        }
    }
}

fn denied(request_id: u64) -> Frame {
    Frame::Error { request_id: Some(request_id), code: ErrorCode::NOT_AUTHORIZED, message: "denied".into() }
}

/// The frames of one stream, cut by the protocol's `FrameBuffer` like every other reader of frames.
struct FrameReader {
    recv: quinn::RecvStream,
    buf: FrameBuffer,
}

impl FrameReader {
    fn new(recv: quinn::RecvStream) -> Self {
        Self { recv, buf: FrameBuffer::new(Limits::DEFAULT_MAX_FRAME_LEN) }
    }

    /// The next frame; `None` once the stream ends or fails.
    async fn next(&mut self) -> Option<Frame> {
        loop {
            if let Some(frame) = self.buf.next_frame().unwrap() {
                return Some(frame);
            }
            let want = self.buf.wanted().unwrap();
            match self.recv.read_chunk(want, true).await {
                Ok(Some(chunk)) => self.buf.extend(&chunk.bytes),
                Ok(None) | Err(_) => return None,
            }
        }
    }
}

async fn write(send: &mut quinn::SendStream, frame: &Frame) {
    let _ = send.write_all(&frame.to_vec().unwrap()).await;
}

async fn setup() -> (tempfile::TempDir, Pki, Mock, Identity) {
    let dir = tempfile::tempdir().unwrap();
    let pki = pki();
    let mock = Mock::start(&pki).await;
    // demo.x: alice publishes and reads.
    let first = policy(&topic(), None, vec![member("alice", true, true)]);
    mock.with(|l| l.policies.insert(topic(), vec![first]));
    let path = identity(dir.path(), &pki, &pki.ca_pem.clone(), mock.addr);
    let id = Identity::load(path).unwrap();
    (dir, pki, mock, id)
}

// ---------------------------------------------------------------------------------------------------------
// Tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receipts_name_consecutive_offsets_and_sequence_numbers_in_publishing_order() {
    let (_dir, _pki, mock, id) = setup().await;
    let client = Client::connect_with(&id, quick()).await.unwrap();
    let options = PublisherOptions { max_batch: 50, max_in_flight: 4, ..PublisherOptions::default() };
    let publisher = client.publisher(topic(), options).await.unwrap();
    let receipts: Vec<_> = (0..500).map(|i| publisher.publish(format!("m{i}"))).collect();
    let receipts = futures_util::future::try_join_all(receipts).await.unwrap();
    for (i, r) in receipts.iter().enumerate() {
        assert_eq!((r.offset, r.seq), (Offset(i as u64), i as u64 + 1));
    }
    publisher.close().await.unwrap();
    let entries = mock.with(|l| l.entries.len());
    assert!(entries >= 10, "batches of at most 50: {entries}");
    client.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_stored_but_not_acknowledged_is_resent_and_stored_once() {
    let (_dir, _pki, mock, id) = setup().await;
    // The third batch is stored, then the connection dies before its answer.
    mock.with(|l| l.kill_after_stores = Some(3));
    let client = Client::connect_with(&id, quick()).await.unwrap();
    let options = PublisherOptions { max_batch: 1, max_in_flight: 8, linger: Duration::ZERO };
    let publisher = client.publisher(topic(), options).await.unwrap();
    let receipts: Vec<_> = (0..20).map(|i| publisher.publish(format!("m{i}"))).collect();
    let receipts = futures_util::future::try_join_all(receipts).await.unwrap();
    let offsets: Vec<u64> = receipts.iter().map(|r| r.offset.0).collect();
    assert_eq!(offsets, (0..20).collect::<Vec<_>>());
    let (stored, received) = mock.with(|l| (l.next_offset, l.publishes_received));
    assert_eq!(stored, 20, "every message stored exactly once");
    assert!(received > 20, "some batches were sent twice ({received})");

    // The chain continued after the resend: its next batch is stored after the twenty.
    let r = publisher.publish("after").await.unwrap();
    assert_eq!((r.offset, r.seq), (Offset(20), 21));
    publisher.close().await.unwrap();
    client.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_yields_each_message_once_in_order_across_a_reconnect() {
    let (_dir, _pki, mock, id) = setup().await;
    let client = Client::connect_with(&id, quick()).await.unwrap();
    let options = PublisherOptions { max_batch: 3, linger: Duration::ZERO, ..PublisherOptions::default() };
    let publisher = client.publisher(topic(), options).await.unwrap();
    for i in 0..30 {
        drop(publisher.publish(format!("m{i}")));
    }
    publisher.flush().await.unwrap();
    // After a reconnect the broker replays from 0 whatever is asked (as for a durable subscription whose
    // committed offset is older than what was yielded).
    mock.with(|l| l.ignore_from = true);
    let options = SubscribeOptions { from: StartAt::Earliest, durable: Some("d".into()) };
    let mut sub = client.subscribe(topic(), options).await.unwrap();
    let mut got = Vec::new();
    while got.len() < 45 {
        if got.len() == 5 {
            // The broker goes away; what is published next can only arrive on a new connection.
            mock.kill_all();
            for i in 30..45 {
                drop(publisher.publish(format!("m{i}")));
            }
        }
        let m = tokio::time::timeout(Duration::from_secs(10), sub.next()).await.unwrap().unwrap().unwrap();
        got.push((m.offset.0, String::from_utf8(m.payload.to_vec()).unwrap()));
        sub.ack(&m).unwrap();
    }
    let expected: Vec<_> = (0..45).map(|i| (i as u64, format!("m{i}"))).collect();
    assert_eq!(got, expected);
    sub.close().await.unwrap();
    let last_ack = mock.with(|l| l.acks.last().copied());
    assert_eq!(last_ack, Some(45));
    assert!(mock.with(|l| l.subscribes) >= 2, "the subscription reconnected");
    publisher.close().await.unwrap();
    client.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribing_from_an_offset_inside_a_batch_starts_there() {
    let (_dir, _pki, _mock, id) = setup().await;
    let client = Client::connect_with(&id, quick()).await.unwrap();
    let options =
        PublisherOptions { max_batch: 10, linger: Duration::from_millis(50), ..PublisherOptions::default() };
    let publisher = client.publisher(topic(), options).await.unwrap();
    for i in 0..10 {
        drop(publisher.publish(format!("m{i}")));
    }
    publisher.close().await.unwrap();
    let options = SubscribeOptions { from: StartAt::Offset(Offset(7)), durable: None };
    let mut sub = client.subscribe(topic(), options).await.unwrap();
    let first = sub.next().await.unwrap().unwrap();
    assert_eq!((first.offset, first.seq, &first.payload[..]), (Offset(7), 8, &b"m7"[..]));
    assert_eq!(first.publisher, "alice");
    client.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_batch_fails_its_messages_and_the_publisher_resumes_after_its_last_stored_batch() {
    let (_dir, _pki, mock, id) = setup().await;
    let client = Client::connect_with(&id, quick()).await.unwrap();
    // Two publishers with the same key are two chains: each starts at its own genesis.
    let first = client.publisher(topic(), PublisherOptions::default()).await.unwrap();
    let second = client.publisher(topic(), PublisherOptions::default()).await.unwrap();
    assert_eq!(first.publish("a").await.unwrap().seq, 1);
    assert_eq!(second.publish("b").await.unwrap().seq, 1);
    mock.with(|l| l.refuse_next = Some(ErrorCode::SEQUENCE_CONFLICT));
    let e = second.publish("c").await.unwrap_err();
    assert!(matches!(e, Error::Refused { code: ErrorCode::SEQUENCE_CONFLICT, .. }), "{e}");
    assert!(e.to_string().starts_with("cannot publish on demo.x: the batch does not continue"), "{e}");
    // The next message goes on a new stream, after the last batch the broker stored.
    let r = second.publish("d").await.unwrap();
    assert_eq!((r.offset, r.seq), (Offset(2), 2));
    second.flush().await.unwrap();
    assert_eq!(mock.with(|l| l.next_offset), 3);
    client.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_the_broker_stays_away_outstanding_work_fails_after_bounded_retries() {
    let (_dir, _pki, mock, id) = setup().await;
    let client = Client::connect_with(&id, quick()).await.unwrap();
    let publisher = client.publisher(topic(), PublisherOptions::default()).await.unwrap();
    publisher.publish("before").await.unwrap();
    let options = SubscribeOptions { from: StartAt::Earliest, durable: Some("d".into()) };
    let mut sub = client.subscribe(topic(), options).await.unwrap();
    let m = sub.next().await.unwrap().unwrap();
    sub.ack(&m).unwrap();

    mock.with(|l| l.down = true);
    mock.kill_all();
    let start = Instant::now();
    let e = publisher.publish("during").await.unwrap_err();
    assert!(start.elapsed() < Duration::from_secs(10));
    assert!(e.to_string().starts_with(&format!("broker unreachable at {}", mock.addr)), "{e}");
    // The publisher is dead: later messages fail at once with the same error.
    assert_eq!(publisher.publish("after").await.unwrap_err().to_string(), e.to_string());
    // The durable subscription cannot commit its acknowledgement: closing says so.
    let e = sub.close().await.unwrap_err();
    assert!(e.to_string().starts_with("broker unreachable at "), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_read_as_sentences() {
    let (_dir, _pki, mock, id) = setup().await;
    mock.with(|l| l.deny = true);
    let client = Client::connect_with(&id, quick()).await.unwrap();
    let e = client.publisher(topic(), PublisherOptions::default()).await.unwrap_err();
    assert_eq!(e.to_string(), "not authorized to publish on demo.x");
    assert!(matches!(e, Error::Refused { code: ErrorCode::NOT_AUTHORIZED, .. }));
    let e = client.subscribe(topic(), SubscribeOptions::default()).await.unwrap_err();
    assert_eq!(e.to_string(), "not authorized to subscribe to demo.x");
    let e = client.policies(&topic()).await.unwrap_err();
    assert_eq!(e.to_string(), "not authorized to read the policies of demo.x");
    let next = policy(&topic(), mock.with(|l| l.current(&topic()).cloned()).as_ref(), vec![]);
    let e = client.put_policy(&next).await.unwrap_err();
    assert_eq!(e.to_string(), "not authorized to administer demo.x");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_certificate_from_another_ca_is_not_trusted() {
    let dir = tempfile::tempdir().unwrap();
    let pki = pki();
    let mock = Mock::start(&pki).await;
    let (other_ca, _) = ca();
    let id = Identity::load(identity(dir.path(), &pki, &other_ca.pem(), mock.addr)).unwrap();
    let e = Client::connect_with(&id, quick()).await.unwrap_err();
    assert!(matches!(e, Error::BrokerNotTrusted { .. }), "{e:?}");
    let text = e.to_string();
    assert!(text.starts_with("broker certificate not trusted: it is not issued by a CA in "), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_address_fails_within_the_connect_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let pki = pki();
    // A bound UDP socket that never answers.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = silent.local_addr().unwrap();
    let id = Identity::load(identity(dir.path(), &pki, &pki.ca_pem.clone(), addr)).unwrap();
    let options = ClientOptions { connect_timeout: Duration::from_millis(500), ..quick() };
    let start = Instant::now();
    let e = Client::connect_with(&id, options).await.unwrap_err();
    assert!(start.elapsed() < Duration::from_secs(3));
    assert_eq!(e.to_string(), format!("broker unreachable at {addr}: no answer within 0.5 s"));
}

fn current(mock: &Mock, topic: &Topic) -> VerifiedPolicy {
    mock.with(|l| l.current(topic).cloned()).unwrap()
}

/// Options of a client that fetches the topic's policies again before every batch it seals or opens.
fn eager() -> ClientOptions {
    ClientOptions { policy_refresh: Duration::ZERO, ..quick() }
}

async fn next_item(sub: &mut sealpost_client::Subscription) -> Result<sealpost_client::Message, Error> {
    tokio::time::timeout(Duration::from_secs(10), sub.next()).await.unwrap().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_an_identity_may_do_on_a_topic_comes_from_its_policy() {
    let (_dir, _pki, mock, id) = setup().await;
    let client = Client::connect_with(&id, quick()).await.unwrap();
    let other: Topic = "demo.other".parse().unwrap();
    let e = client.publisher(other.clone(), PublisherOptions::default()).await.unwrap_err();
    assert!(matches!(e, Error::NoPolicy { .. }), "{e}");
    assert_eq!(
        e.to_string(),
        "topic demo.other has no policy yet: the topic authority must create one first (sealpost topic \
         create demo.other ...)"
    );
    let e = client.subscribe(other.clone(), SubscribeOptions::default()).await.unwrap_err();
    assert!(matches!(e, Error::NoPolicy { .. }), "{e}");

    // Created meanwhile: alice may read, not publish.
    let p = policy(&other, None, vec![member("alice", false, true), member("bob", true, false)]);
    mock.with(|l| l.policies.insert(other.clone(), vec![p]));
    let e = client.publisher(other.clone(), PublisherOptions::default()).await.unwrap_err();
    assert!(matches!(e, Error::NotAPublisher { epoch: 1, .. }), "{e}");
    assert!(
        e.to_string().starts_with("alice is not a publisher in the current policy of demo.other (epoch 1)"),
        "{e}"
    );
    client.subscribe(other.clone(), SubscribeOptions::default()).await.unwrap();

    // Not a member at all: no key to read with.
    let closed: Topic = "demo.closed".parse().unwrap();
    mock.with(|l| {
        l.policies.insert(closed.clone(), vec![policy(&closed, None, vec![member("bob", true, true)])])
    });
    let e = client.subscribe(closed, SubscribeOptions::default()).await.unwrap_err();
    assert!(matches!(e, Error::NoContentKey { .. }), "{e}");

    let policies = client.policies(&topic()).await.unwrap();
    assert_eq!(policies.len(), 1);
    assert_eq!(policies[0].epoch(), Epoch(1));
    assert_eq!(policies[0].members()[0].signing_key, alice().public_key());
    client.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_rotation_publishers_seal_under_the_new_epoch_and_subscribers_follow() {
    let (_dir, _pki, mock, id) = setup().await;
    let publishing = Client::connect_with(&id, eager()).await.unwrap();
    // The reader fetches policies on its own schedule: it learns of the rotation from the batch's epoch.
    let reading = Client::connect_with(&id, quick()).await.unwrap();
    let options = SubscribeOptions { from: StartAt::Earliest, durable: None };
    let mut sub = reading.subscribe(topic(), options).await.unwrap();
    let publisher = publishing.publisher(topic(), PublisherOptions::default()).await.unwrap();
    publisher.publish("before").await.unwrap();
    assert_eq!(&next_item(&mut sub).await.unwrap().payload[..], b"before");

    let rotated = policy(&topic(), Some(&current(&mock, &topic())), vec![member("alice", true, true)]);
    publishing.put_policy(&rotated).await.unwrap();
    let fetched = mock.with(|l| l.get_policies);
    publisher.publish("after").await.unwrap();
    let epochs: Vec<u64> = mock.with(|l| {
        l.entries
            .iter()
            .map(|e| SealedBatch::decode(e.2.clone(), &Limits::default()).unwrap().header().epoch.0)
            .collect()
    });
    assert_eq!(epochs, [1, 2]);
    let m = next_item(&mut sub).await.unwrap();
    assert_eq!((&m.payload[..], m.offset, m.seq), (&b"after"[..], Offset(1), 2));
    assert!(mock.with(|l| l.get_policies) >= fetched + 2, "both clients fetched the new policy");
    publisher.close().await.unwrap();
    publishing.close().await;
    reading.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_member_can_neither_seal_nor_open_the_new_epoch() {
    let (dir, pki, mock, id) = setup().await;
    let alice_client = Client::connect_with(&id, eager()).await.unwrap();
    let publisher = alice_client.publisher(topic(), PublisherOptions::default()).await.unwrap();
    publisher.publish("while a member").await.unwrap();
    let options = SubscribeOptions { from: StartAt::Earliest, durable: None };
    let mut sub = alice_client.subscribe(topic(), options).await.unwrap();
    assert_eq!(&next_item(&mut sub).await.unwrap().payload[..], b"while a member");

    // Epoch 2 without alice: bob publishes.
    let revoked = policy(&topic(), Some(&current(&mock, &topic())), vec![member("bob", true, true)]);
    alice_client.put_policy(&revoked).await.unwrap();
    let e = publisher.publish("after the revocation").await.unwrap_err();
    assert!(matches!(e, Error::NotAPublisher { epoch: 2, .. }), "{e}");
    assert_eq!(mock.with(|l| l.next_offset), 1);

    let bob_id = Identity::load(identity_of(dir.path(), "bob", &pki, &pki.ca_pem, mock.addr, "")).unwrap();
    let bob = Client::connect_with(&bob_id, quick()).await.unwrap();
    let bob_pub = bob.publisher(topic(), PublisherOptions::default()).await.unwrap();
    bob_pub.publish("secret from alice").await.unwrap();
    match next_item(&mut sub).await {
        Err(Error::Integrity {
            check: sealpost_client::protocol::Error::UnknownEpoch(Epoch(2)),
            offset: Offset(1),
            ..
        }) => {}
        other => panic!("{other:?}"),
    }
    bob_pub.close().await.unwrap();
    bob.close().await;
    alice_client.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policies_the_broker_serves_must_be_signed_by_the_authority_and_never_go_back() {
    use sealpost_client::protocol::Error as Check;
    let (_dir, _pki, mock, id) = setup().await;
    let client = Client::connect_with(&id, quick()).await.unwrap();
    let p1 = current(&mock, &topic());
    let p2 = policy(&topic(), Some(&p1), vec![member("alice", true, true)]);
    client.put_policy(&p2).await.unwrap();
    assert_eq!(client.policies(&topic()).await.unwrap().len(), 2);

    // The broker goes back to epoch 1: refused, whichever subscription or call asks.
    mock.with(|l| l.lies.extend([vec![p1.as_bytes().clone()], vec![]]));
    let e = client.subscribe(topic(), SubscribeOptions::default()).await.unwrap_err();
    assert!(
        matches!(e, Error::Policy { check: Check::PolicyRollback { current: Epoch(2), got: Epoch(1) }, .. }),
        "{e}"
    );
    assert!(e.is_integrity());
    let e = client.policies(&topic()).await.unwrap_err();
    assert!(matches!(e, Error::Policy { check: Check::PolicyRollback { got: Epoch(0), .. }, .. }), "{e}");

    // A policy signed by mallory, to a fresh client.
    let mallory = SigningKey::from_bytes(&[0x66; 32]);
    let forged = policy_by(&mallory, &topic(), None, vec![member("alice", true, true)]);
    mock.with(|l| l.lies.push_back(vec![forged.as_bytes().clone()]));
    let fresh = Client::connect_with(&id, quick()).await.unwrap();
    let e = fresh.subscribe(topic(), SubscribeOptions::default()).await.unwrap_err();
    assert!(matches!(e, Error::Policy { check: Check::PolicyNotFromAuthority, .. }), "{e}");
    assert_eq!(
        e.to_string(),
        "topic policy of demo.x rejected: topic policy not signed by the pinned topic authority"
    );
    // Nor does the client hand one to the broker.
    let sent = mock.with(|l| l.policies[&topic()].len());
    let e = fresh.put_policy(&policy_by(&mallory, &topic(), None, vec![])).await.unwrap_err();
    assert!(matches!(e, Error::Policy { check: Check::PolicyNotFromAuthority, .. }), "{e}");
    assert_eq!(mock.with(|l| l.policies[&topic()].len()), sent);
    client.close().await;
    fresh.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_reports_a_bad_policy_served_at_a_rotation_and_goes_on() {
    use sealpost_client::protocol::Error as Check;
    let (_dir, _pki, mock, id) = setup().await;
    let publishing = Client::connect_with(&id, eager()).await.unwrap();
    let publisher = publishing.publisher(topic(), PublisherOptions::default()).await.unwrap();
    publisher.publish("epoch 1").await.unwrap();
    let p1 = current(&mock, &topic());
    publishing.put_policy(&policy(&topic(), Some(&p1), vec![member("alice", true, true)])).await.unwrap();
    publisher.publish("epoch 2").await.unwrap();

    // The reader starts on epoch 1; when the epoch-2 batch arrives, a forged policy is served.
    let mallory = SigningKey::from_bytes(&[0x66; 32]);
    let forged = policy_by(&mallory, &topic(), None, vec![member("alice", true, true)]);
    mock.with(|l| l.lies.extend([vec![p1.as_bytes().clone()], vec![forged.as_bytes().clone()]]));
    let reading = Client::connect_with(&id, quick()).await.unwrap();
    let mut sub = reading
        .subscribe(topic(), SubscribeOptions { from: StartAt::Earliest, durable: None })
        .await
        .unwrap();
    assert_eq!(&next_item(&mut sub).await.unwrap().payload[..], b"epoch 1");
    match next_item(&mut sub).await {
        Err(Error::Policy { check: Check::PolicyNotFromAuthority, .. }) => {}
        other => panic!("{other:?}"),
    }
    match next_item(&mut sub).await {
        Err(Error::Integrity { check: Check::UnknownEpoch(Epoch(2)), offset: Offset(1), .. }) => {}
        other => panic!("{other:?}"),
    }
    // The subscription goes on. Epoch 2 was asked for once already: its batches stay unreadable until the
    // scheduled refresh of the policies (`policy_refresh`).
    publisher.publish("epoch 2 again").await.unwrap();
    let m = next_item(&mut sub).await;
    assert!(
        matches!(m, Err(Error::Integrity { check: Check::UnknownEpoch(Epoch(2)), offset: Offset(2), .. })),
        "{m:?}"
    );
    publisher.close().await.unwrap();
    publishing.close().await;
    reading.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_fetches_the_policies_again_on_schedule() {
    let (_dir, _pki, mock, id) = setup().await;
    let publishing = Client::connect_with(&id, eager()).await.unwrap();
    let publisher = publishing.publisher(topic(), PublisherOptions::default()).await.unwrap();
    publisher.publish("epoch 1").await.unwrap();
    let p1 = current(&mock, &topic());
    publishing.put_policy(&policy(&topic(), Some(&p1), vec![member("alice", true, true)])).await.unwrap();
    publisher.publish("epoch 2").await.unwrap();
    // The reader's start and its first scheduled fetch see epoch 1 only; the next one sees epoch 2 before
    // the batch of epoch 2 is opened, so no refetch is needed.
    mock.with(|l| l.lies.extend([vec![p1.as_bytes().clone()], vec![p1.as_bytes().clone()]]));
    let reading = Client::connect_with(&id, eager()).await.unwrap();
    let mut sub = reading
        .subscribe(topic(), SubscribeOptions { from: StartAt::Earliest, durable: None })
        .await
        .unwrap();
    assert_eq!(&next_item(&mut sub).await.unwrap().payload[..], b"epoch 1");
    assert_eq!(&next_item(&mut sub).await.unwrap().payload[..], b"epoch 2");
    assert!(mock.with(|l| l.lies.is_empty()));
    publisher.close().await.unwrap();
    publishing.close().await;
    reading.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_of_a_stale_epoch_is_rejected_by_the_broker() {
    let (_dir, _pki, mock, id) = setup().await;
    let client = Client::connect_with(&id, quick()).await.unwrap();
    let p1 = current(&mock, &topic());
    let theirs = policy(&topic(), Some(&p1), vec![member("alice", true, true)]);
    let mine = policy(&topic(), Some(&p1), vec![member("alice", true, false)]);
    mock.with(|l| l.sneak_in = Some(theirs));
    let e = client.put_policy(&mine).await.unwrap_err();
    assert!(matches!(e, Error::Refused { code: ErrorCode::POLICY_REJECTED, .. }), "{e}");
    assert!(e.to_string().starts_with("cannot administer demo.x: the broker rejected the policy"), "{e}");
    client.close().await;
}

/// Runs the CLI with `args` as the identity at `identity`.
async fn cli(identity: &Path, args: &[&str]) -> std::process::Output {
    let exe = env!("CARGO_BIN_EXE_sealpost");
    let identity = identity.to_path_buf();
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        std::process::Command::new(exe).arg("--identity").arg(identity).args(args).output().unwrap()
    })
    .await
    .unwrap()
}

fn stdout(out: &std::process::Output) -> String {
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn failure(out: &std::process::Output) -> String {
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stdout));
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(err.lines().count(), 1, "{err}");
    err.trim_end().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_manages_topic_policies_as_the_authority() {
    let (dir, pki, mock, _id) = setup().await;
    let seed = hex::encode(*authority().to_bytes());
    let admin = identity_of(
        dir.path(),
        "admin",
        &pki,
        &pki.ca_pem,
        mock.addr,
        &format!("authority_key = \"{seed}\"\n"),
    );
    let alice_id = dir.path().join("alice.toml");
    // bob made his keys with keygen: the authority gets bob.pub.toml.
    let exe = env!("CARGO_BIN_EXE_sealpost");
    let bob_keys = dir.path().join("bob.toml");
    let out = std::process::Command::new(exe)
        .args(["keygen", "--out", bob_keys.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(stdout(&out).contains("bob.pub.toml"));
    let t: Topic = "demo.new".parse().unwrap();

    let out =
        cli(&admin, &["topic", "create", "demo.new", "--publisher", "alice", "--subscriber", "alice", "bob"])
            .await;
    let text = stdout(&out);
    assert!(text.starts_with("demo.new: epoch 1 stored\n"), "{text}");
    let p1 = current(&mock, &t);
    assert_eq!(p1.members().len(), 2);
    assert_eq!(p1.member("alice").map(|m| (m.publish, m.subscribe)), Some((true, true)));
    assert_eq!(p1.member("bob").map(|m| (m.publish, m.subscribe)), Some((false, true)));
    assert_eq!(p1.member("alice").unwrap().hpke_key, alice_hpke().public_key());

    // Anyone who may read the policies sees them.
    let text = stdout(&cli(&alice_id, &["topic", "show", "demo.new"]).await);
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines[0].starts_with("demo.new: epoch 1, created 20"), "{text}");
    assert!(lines[1].starts_with("  alice  publish,subscribe  signing key "), "{text}");
    assert!(lines[1].contains(&alice().public_key().key_id().to_string()), "{text}");
    assert!(lines[2].starts_with("  bob    subscribe          signing key "), "{text}");

    let e = failure(&cli(&admin, &["topic", "create", "demo.new", "--publisher", "alice"]).await);
    let expected = "sealpost: demo.new already has a policy (epoch 1): change it with sealpost topic grant, \
                    revoke or rotate";
    assert_eq!(e, expected);
    stdout(&cli(&admin, &["topic", "grant", "demo.new", "--publisher", "bob"]).await);
    assert_eq!(current(&mock, &t).member("bob").map(|m| (m.publish, m.subscribe)), Some((true, true)));
    let e = failure(&cli(&admin, &["topic", "grant", "demo.new", "--subscriber", "dave"]).await);
    assert!(e.starts_with("sealpost: unknown member dave: neither "), "{e}");
    let e = failure(&cli(&admin, &["topic", "revoke", "demo.new", "carol"]).await);
    assert_eq!(e, "sealpost: carol is not a member of the policy of demo.new (epoch 2)");
    stdout(&cli(&admin, &["topic", "revoke", "demo.new", "bob"]).await);
    stdout(&cli(&admin, &["topic", "rotate", "demo.new"]).await);
    let p4 = current(&mock, &t);
    assert_eq!(p4.epoch(), Epoch(4));
    assert_eq!(p4.members().iter().map(|m| m.principal.as_str()).collect::<Vec<_>>(), ["alice"]);

    let e = failure(&cli(&alice_id, &["topic", "rotate", "demo.new"]).await);
    assert_eq!(
        e,
        "sealpost: this identity holds no authority_key: only the topic authority can change policies"
    );
    // Another administrator was faster.
    mock.with(|l| l.sneak_in = Some(policy(&t, Some(&p4), vec![member("alice", true, true)])));
    let e = failure(&cli(&admin, &["topic", "rotate", "demo.new"]).await);
    assert_eq!(e, "sealpost: the policy of demo.new changed meanwhile (stale epoch): run the command again");
    assert_eq!(current(&mock, &t).epoch(), Epoch(5));

    // alice publishes and reads under the policy the CLI made.
    stdout(&cli(&alice_id, &["pub", "demo.new", "made by the cli"]).await);
    let text = stdout(&cli(&alice_id, &["sub", "demo.new", "--from", "earliest", "--count", "1"]).await);
    assert_eq!(text, "made by the cli\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_publishes_stdin_lines_and_prints_them_back() {
    let (dir, _pki, mock, _id) = setup().await;
    let identity = dir.path().join("alice.toml");
    let exe = env!("CARGO_BIN_EXE_sealpost");
    let id = identity.clone();
    let out = tokio::task::spawn_blocking(move || {
        use std::io::Write;
        let mut child = std::process::Command::new(exe)
            .args(["pub", "demo.x"])
            .env("SEALPOST_IDENTITY", &id)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(b"one\ntwo\r\n\nthree").unwrap();
        child.wait_with_output().unwrap()
    })
    .await
    .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(mock.with(|l| l.next_offset), 4);

    let id = identity.clone();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(exe)
            .args(["--identity", id.to_str().unwrap(), "sub", "demo.x", "--from", "earliest", "--count", "4"])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "one\ntwo\n\nthree\n");

    mock.with(|l| l.deny = true);
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(exe)
            .args(["pub", "demo.x", "hi"])
            .env("SEALPOST_IDENTITY", &identity)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "sealpost: published 0 of 1 message before the failure: not authorized to publish on demo.x\n"
    );
}

#[test]
fn the_cli_makes_keys_and_reports_a_missing_identity_in_one_line() {
    let exe = env!("CARGO_BIN_EXE_sealpost");
    let out = std::process::Command::new(exe).arg("keygen").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let table: toml::Table = toml::from_str(&text).unwrap();
    assert_eq!(table.len(), 2, "only the secret keys are TOML: {text}");
    let seed = table["signing_key"].as_str().unwrap();
    assert_eq!(seed.len(), 64);
    assert_eq!(table["hpke_key"].as_str().unwrap().len(), 64);
    // The public keys, commented, as a NAME.pub.toml.
    let public: String =
        text.lines().filter_map(|l| l.strip_prefix("# ")).skip(1).map(|l| format!("{l}\n")).collect();
    let public: toml::Table = toml::from_str(&public).unwrap();
    let mut bytes = [0u8; 32];
    hex::decode_to_slice(seed, &mut bytes).unwrap();
    assert_eq!(
        public["signing_key"].as_str().unwrap(),
        SigningKey::from_bytes(&bytes).public_key().to_string()
    );

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("carol.toml");
    let out =
        std::process::Command::new(exe).args(["keygen", "--out", file.to_str().unwrap()]).output().unwrap();
    assert!(out.status.success());
    assert!(!String::from_utf8(out.stdout).unwrap().contains("signing_key ="));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o600);
    }
    let public: toml::Table =
        toml::from_str(&std::fs::read_to_string(dir.path().join("carol.pub.toml")).unwrap()).unwrap();
    assert_eq!(public["principal"].as_str(), Some("carol"));
    let secret: toml::Table = toml::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    hex::decode_to_slice(secret["hpke_key"].as_str().unwrap(), &mut bytes).unwrap();
    assert_eq!(
        public["hpke_key"].as_str(),
        Some(HpkeSecretKey::from_bytes(&bytes).public_key().to_string().as_str())
    );
    let again =
        std::process::Command::new(exe).args(["keygen", "--out", file.to_str().unwrap()]).output().unwrap();
    assert_eq!(again.status.code(), Some(1));
    let odd = dir.path().join("not a principal.toml");
    let out =
        std::process::Command::new(exe).args(["keygen", "--out", odd.to_str().unwrap()]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).ends_with(": pass --principal NAME\n"));
    assert!(!odd.exists());

    let out = std::process::Command::new(exe)
        .args(["pub", "demo.x", "hi"])
        .env_remove("SEALPOST_IDENTITY")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "sealpost: no identity file: pass --identity FILE or set SEALPOST_IDENTITY\n"
    );
    let out = std::process::Command::new(exe).args(["pub", "demo..x", "hi"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "sealpost: invalid value 'demo..x' for '<TOPIC>': invalid topic name: empty segment (see sealpost --help)\n"
    );
    let out = std::process::Command::new(exe)
        .args(["--identity", "/nonexistent/x.toml", "sub", "demo.x"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.starts_with("sealpost: identity file /nonexistent/x.toml: cannot read it: "), "{err}");
    assert_eq!(err.lines().count(), 1);
}
