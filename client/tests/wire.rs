//! The client's async shell against the real broker, run in process over real QUIC and TLS on 127.0.0.1,
//! on a [`TestStore`] that injects faults: the broker crashed after a batch was made durable but before it
//! was answered, restarted, gone for good; policies served that the authority did not sign, or an older
//! history. Everything else (dedup of resent batches, the chain check, policy acceptance, durable
//! subscriptions, the ACL) is the broker's own.
//!
//! The broker's system tests live in the workspace's `tests/`; these pin the client's side of
//! reconnection, resending and error reporting.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use sealpost_broker::acl::Acl;
use sealpost_broker::pki::{DevCa, Issued, LeafSpec};
use sealpost_broker::server::{Broker, BrokerOptions, ServerLimits};
use sealpost_broker::store::testing::TestStore;
use sealpost_broker::store::Store;
use sealpost_broker::tls::TlsMaterial;
use sealpost_client::protocol::{
    issue_policy, ContentKey, Epoch, HpkeSecretKey, Limits, Member, PolicyParams, SealedBatch, SignedPolicy,
    SigningKey, VerifiedPolicy,
};
use sealpost_client::{
    Client, ClientOptions, Error, ErrorCode, Identity, Offset, PublisherOptions, Reconnect, RetryBudget,
    StartAt, StateLocation, SubscribeOptions, Timestamp, Topic,
};

// ---------------------------------------------------------------------------------------------------------
// PKI and identity files

/// The test's CA and the broker's certificate; principals get theirs in [`identity_of`].
struct Pki {
    ca: DevCa,
    server: Issued,
}

fn pki() -> Pki {
    let ca = DevCa::generate("wire test CA").unwrap();
    let server = ca.issue(&LeafSpec::local_server()).unwrap();
    Pki { ca, server }
}

impl Pki {
    fn ca_pem(&self) -> String {
        self.ca.cert_pem()
    }

    fn tls(&self) -> TlsMaterial {
        TlsMaterial {
            client_ca_pem: self.ca.cert_pem(),
            cert_chain_pem: self.server.cert_pem.clone(),
            key_pem: self.server.key_pem.clone(),
            crls_pem: Vec::new(),
            crl_expired: sealpost_broker::crl::CrlExpired::Warn,
        }
    }
}

/// The broker's ACL: alice publishes, subscribes and administers `demo.>`, bob publishes and subscribes
/// there, admin administers everything, mallory may do nothing (default deny).
const ACL: &str = r#"
[[rule]]
principals = ["alice"]
topics = ["demo.>"]
actions = ["publish", "subscribe", "admin"]
effect = "allow"

[[rule]]
principals = ["bob"]
topics = ["demo.>"]
actions = ["publish", "subscribe"]
effect = "allow"

[[rule]]
principals = ["admin"]
topics = [">"]
actions = ["admin"]
effect = "allow"
"#;

fn alice() -> SigningKey {
    SigningKey::from_bytes(&[0xA1; 32])
}

fn alice_hpke() -> HpkeSecretKey {
    HpkeSecretKey::from_bytes(&[9; 32])
}

/// The topic authority the identities pin and the broker is configured with.
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

/// Writes `who`'s identity file into `dir`, with a client certificate from the test's CA that binds
/// `who`'s signing key, trusting `ca_pem` for the broker at `addr`; `extra` is appended.
fn identity_of(dir: &Path, who: &str, pki: &Pki, ca_pem: &str, addr: SocketAddr, extra: &str) -> PathBuf {
    let (signing, hpke) = keys_of(who);
    let cert = pki.ca.issue(&LeafSpec::client(who, &[signing.public_key()])).unwrap();
    std::fs::write(dir.join("ca.pem"), ca_pem).unwrap();
    std::fs::write(dir.join(format!("{who}.pem")), &cert.cert_pem).unwrap();
    std::fs::write(dir.join(format!("{who}.key")), &cert.key_pem).unwrap();
    let path = dir.join(format!("{who}.toml"));
    std::fs::write(
        &path,
        format!(
            r#"principal = "{who}"
broker = "{addr}"
server_name = "localhost"
ca = "ca.pem"
cert = "{who}.pem"
key = "{who}.key"
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
            budget: RetryBudget::Retries(5),
        },
        ..ClientOptions::default()
    }
}

fn topic() -> Topic {
    "demo.x".parse().unwrap()
}

/// Bounds a wait of the test: a hang fails it instead of stalling the run.
async fn within<T>(what: &str, fut: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(20), fut).await.unwrap_or_else(|_| panic!("timed out: {what}"))
}

// ---------------------------------------------------------------------------------------------------------
// The real broker, in process

/// What the broker's readers of topic policies are served: counted, and replaced by the queued lies
/// (one per read, whatever its topic) while there are any.
#[derive(Default)]
struct ServedPolicies {
    reads: AtomicUsize,
    lies: Mutex<VecDeque<Vec<Bytes>>>,
}

/// The real broker on 127.0.0.1, on a runtime of its own so that a test can crash it (stop every task of
/// it at once, answering nothing) as well as shut it down; restarted on the same address and the same
/// [`TestStore`], which outlives it.
struct Host {
    addr: SocketAddr,
    tls: TlsMaterial,
    store: Arc<TestStore>,
    served: Arc<ServedPolicies>,
    running: Option<Running>,
}

/// A broker and the runtime it runs on.
struct Running {
    runtime: tokio::runtime::Runtime,
    /// `None` only while it starts.
    broker: Option<Broker>,
    /// How many threads of `runtime` are alive.
    threads: tokio::sync::watch::Receiver<usize>,
}

impl Host {
    /// A broker over a fresh store that holds the first policy of demo.x (alice publishes and reads).
    async fn start(pki: &Pki) -> Host {
        let store = Arc::new(TestStore::default());
        let first = policy(&topic(), None, vec![member("alice", true, true)]);
        store.put_policy(&topic(), 1, first.as_bytes()).unwrap();
        store.sync().unwrap();
        let served = Arc::new(ServedPolicies::default());
        let view = served.clone();
        store.serve_policies(move |stored| {
            view.reads.fetch_add(1, Ordering::SeqCst);
            view.lies.lock().unwrap().pop_front().unwrap_or(stored)
        });
        let mut host =
            Host { addr: "127.0.0.1:0".parse().unwrap(), tls: pki.tls(), store, served, running: None };
        host.launch().await;
        host
    }

    /// Starts a broker at `self.addr` (any port the first time).
    async fn launch(&mut self) {
        assert!(self.running.is_none(), "a broker is running");
        // Counts the runtime's live threads, so that a test can wait until it is gone with all it held.
        let (threads_tx, threads) = tokio::sync::watch::channel(0usize);
        let threads_tx = Arc::new(threads_tx);
        let (started, stopped) = (threads_tx.clone(), threads_tx);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("wire-broker")
            .on_thread_start(move || started.send_modify(|n| *n += 1))
            .on_thread_stop(move || stopped.send_modify(|n| *n -= 1))
            .enable_all()
            .build()
            .unwrap();
        let options = BrokerOptions {
            listen: self.addr,
            tls: self.tls.clone(),
            acl: Acl::from_toml(ACL).unwrap(),
            store: self.store.clone(),
            authority: Some(authority().public_key()),
            limits: ServerLimits::default(),
            metrics: None,
            audit: None,
            retention: Default::default(),
        };
        let starting = runtime.spawn(Broker::start(options));
        let running = self.running.insert(Running { runtime, broker: None, threads });
        let broker = within("broker start", starting).await.unwrap().unwrap();
        self.addr = broker.local_addr();
        running.broker = Some(broker);
    }

    /// Shuts the broker down as an operator does (it finishes what it took, syncs, closes connections),
    /// and waits until its runtime and socket are gone.
    async fn stop(&mut self) {
        let Running { runtime, broker, threads } = self.running.take().unwrap();
        within("broker shutdown", runtime.spawn(broker.unwrap().shutdown())).await.unwrap().unwrap();
        runtime.shutdown_background();
        Self::gone(threads).await;
    }

    /// Kills the broker: its runtime stops, so its tasks are never polled again and nothing it has not
    /// answered yet is ever answered. Then `held`, what a blocked store hook waits on, is dropped (the
    /// hook's thread may go on: whatever it wakes is not run). Waits until the runtime and its socket are
    /// gone.
    async fn crash(&mut self, held: impl Send + 'static) {
        let Running { runtime, broker, threads } = self.running.take().unwrap();
        let handle = runtime.handle().clone();
        // Returns at once; the runtime's worker stops polling, then drops every task in the background.
        runtime.shutdown_background();
        // A task spawned once the worker has stopped polling is cancelled as it is spawned. (Not awaited:
        // the worker may block on dropping the broker's log, which waits for `held`.)
        let stopped = async {
            while !handle.spawn(async {}).is_finished() {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        };
        within("the broker's runtime to stop polling", stopped).await;
        drop(held);
        Self::gone(threads).await;
        // Dropped only now: dropping it earlier would have asked the broker to shut down gracefully.
        drop(broker);
    }

    /// Waits until every thread of a runtime that was shut down has ended: its tasks, and the sockets
    /// they held, are dropped.
    async fn gone(mut threads: tokio::sync::watch::Receiver<usize>) {
        within("the broker's runtime to end", threads.wait_for(|n| *n == 0)).await.unwrap();
    }

    /// The next reads of topic policies are served `lies`, one each, instead of what is stored.
    fn lie(&self, lies: impl IntoIterator<Item = Vec<Bytes>>) {
        self.served.lies.lock().unwrap().extend(lies);
    }

    fn lies_left(&self) -> usize {
        self.served.lies.lock().unwrap().len()
    }

    /// Reads of topic policies so far (the broker's own, once per topic, and every GetPolicies).
    fn policy_reads(&self) -> usize {
        self.served.reads.load(Ordering::SeqCst)
    }

    /// The policies honestly stored on `topic`, oldest first, verified.
    fn policies(&self, topic: &Topic) -> Vec<VerifiedPolicy> {
        let stored = self.store.inner().policies(topic, usize::MAX).unwrap();
        stored
            .into_iter()
            .map(|b| {
                SignedPolicy::decode(b, &Limits::default())
                    .unwrap()
                    .verify(&authority().public_key())
                    .unwrap()
            })
            .collect()
    }

    /// The batches honestly stored on demo.x: (offset, count, epoch).
    fn batches(&self) -> Vec<(u64, u32, u64)> {
        let batches = self.store.honest(&topic()).unwrap();
        batches
            .into_iter()
            .map(|b| {
                let epoch = SealedBatch::decode(b.bytes, &Limits::default()).unwrap().header().epoch.0;
                (b.offset.0, b.count, epoch)
            })
            .collect()
    }

    /// The offset after the last message stored on demo.x.
    fn next_offset(&self) -> u64 {
        self.store.inner().next_offset(&topic()).unwrap().0
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        if let Some(running) = self.running.take() {
            running.runtime.shutdown_background();
        }
    }
}

fn current(broker: &Host, topic: &Topic) -> VerifiedPolicy {
    broker.policies(topic).pop().unwrap()
}

/// Stores `policy` through the broker as another administrator.
async fn put_as_admin(dir: &Path, pki: &Pki, broker: &Host, policy: &VerifiedPolicy) {
    let dir = dir.join("other-admin");
    std::fs::create_dir_all(&dir).unwrap();
    let admin = Identity::load(identity_of(&dir, "admin", pki, &pki.ca_pem(), broker.addr, "")).unwrap();
    let admin = Client::connect_with(&admin, quick()).await.unwrap();
    admin.put_policy(policy).await.unwrap();
    admin.close().await;
}

async fn setup() -> (tempfile::TempDir, Pki, Host, Identity) {
    let dir = tempfile::tempdir().unwrap();
    let pki = pki();
    let broker = Host::start(&pki).await;
    let path = identity(dir.path(), &pki, &pki.ca_pem(), broker.addr);
    let id = Identity::load(path).unwrap();
    (dir, pki, broker, id)
}

// ---------------------------------------------------------------------------------------------------------
// Tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receipts_name_consecutive_offsets_and_sequence_numbers_in_publishing_order() {
    let (_dir, _pki, broker, id) = setup().await;
    let client = Client::connect_with(&id, quick()).await.unwrap();
    let options = PublisherOptions { max_batch: 50, max_in_flight: 4, ..PublisherOptions::default() };
    let publisher = client.publisher(topic(), options).await.unwrap();
    let receipts: Vec<_> = (0..500).map(|i| publisher.publish(format!("m{i}"))).collect();
    let receipts = futures_util::future::try_join_all(receipts).await.unwrap();
    for (i, r) in receipts.iter().enumerate() {
        assert_eq!((r.offset, r.seq), (Offset(i as u64), i as u64 + 1));
    }
    publisher.close().await.unwrap();
    let entries = broker.batches().len();
    assert!(entries >= 10, "batches of at most 50: {entries}");
    client.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_stored_but_not_acknowledged_is_resent_and_stored_once() {
    use std::thread::ThreadId;
    let (_dir, _pki, mut broker, id) = setup().await;
    // The broker makes the third batch durable, then dies before answering it: the sync that covers it
    // blocks (on the writer thread) until the test has killed the broker. Whatever that dead broker's
    // writer does afterwards fails without touching the store.
    let dead_writer: Arc<Mutex<Option<ThreadId>>> = Arc::default();
    let on_dead_writer = {
        let dead = dead_writer.clone();
        move || *dead.lock().unwrap() == Some(std::thread::current().id())
    };
    let appended = Arc::new(AtomicUsize::new(0));
    let (count, dead) = (appended.clone(), on_dead_writer.clone());
    broker.store.before_append(move |_| {
        if dead() {
            return Err(sealpost_broker::Error::Storage("the broker crashed".into()));
        }
        count.fetch_add(1, Ordering::SeqCst);
        Ok(())
    });
    let dead = on_dead_writer.clone();
    broker.store.before_sync(move |_| {
        if dead() {
            return Err(sealpost_broker::Error::Storage("the broker crashed".into()));
        }
        Ok(())
    });
    let (stored_tx, mut stored) = tokio::sync::mpsc::unbounded_channel();
    let (release, released) = std::sync::mpsc::channel::<()>();
    let released = Mutex::new(released);
    let (count, dead) = (appended.clone(), dead_writer.clone());
    broker.store.after_sync(move || {
        let n = count.load(Ordering::SeqCst);
        let mut dead = dead.lock().unwrap();
        if n >= 3 && dead.is_none() {
            *dead = Some(std::thread::current().id());
            drop(dead);
            let _ = stored_tx.send(n);
            // Returns once `release` is dropped: the broker is dead by then.
            let _ = released.lock().unwrap().recv();
        }
    });

    // A short idle timeout: a dead broker sends nothing, not even a close.
    let options = ClientOptions { idle_timeout: Duration::from_millis(500), ..quick() };
    let client = Client::connect_with(&id, options).await.unwrap();
    let options = PublisherOptions { max_batch: 1, max_in_flight: 8, linger: Duration::ZERO };
    let publisher = client.publisher(topic(), options).await.unwrap();
    let (answered_tx, mut answered) = tokio::sync::mpsc::unbounded_channel();
    let receipts: Vec<_> = (0..20)
        .map(|i| {
            let receipt = publisher.publish(format!("m{i}"));
            let answered = answered_tx.clone();
            async move {
                let r = receipt.await;
                let _ = answered.send(());
                r
            }
        })
        .collect();
    let receipts = tokio::spawn(futures_util::future::try_join_all(receipts));
    let stored_at_crash = within("the third batch stored", stored.recv()).await.unwrap();
    broker.crash(release).await;
    let mut answered_at_crash = 0;
    while answered.try_recv().is_ok() {
        answered_at_crash += 1;
    }
    assert!(answered_at_crash < stored_at_crash, "{answered_at_crash} answered, {stored_at_crash} stored");
    broker.launch().await;

    let receipts = within("every receipt", receipts).await.unwrap().unwrap();
    let offsets: Vec<u64> = receipts.iter().map(|r| r.offset.0).collect();
    assert_eq!(offsets, (0..20).collect::<Vec<_>>());
    assert_eq!(broker.next_offset(), 20, "every message stored exactly once");
    let batches = broker.batches();
    assert_eq!(batches.len(), 20);
    assert!(batches.iter().enumerate().all(|(i, b)| (b.0, b.1) == (i as u64, 1)), "{batches:?}");
    // The batches stored but not answered before the crash were answered by the restarted broker, which
    // did not store them again: they were sent twice.
    assert_eq!(appended.load(Ordering::SeqCst), 20, "stored once each, by either broker");

    // The chain continued after the resend: its next batch is stored after the twenty.
    let r = publisher.publish("after").await.unwrap();
    assert_eq!((r.offset, r.seq), (Offset(20), 21));
    publisher.close().await.unwrap();
    client.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_yields_each_message_once_in_order_across_a_reconnect() {
    let (_dir, _pki, mut broker, id) = setup().await;
    let client = Client::connect_with(&id, quick()).await.unwrap();
    let options = PublisherOptions { max_batch: 3, linger: Duration::ZERO, ..PublisherOptions::default() };
    let publisher = client.publisher(topic(), options).await.unwrap();
    for i in 0..30 {
        drop(publisher.publish(format!("m{i}")));
    }
    publisher.flush().await.unwrap();
    let options = SubscribeOptions { from: StartAt::Earliest, durable: Some("d".into()), shared: false };
    let mut sub = client.subscribe(topic(), options).await.unwrap();
    let mut got = Vec::new();
    while got.len() < 45 {
        if got.len() == 5 {
            // The broker restarts, and its durable subscription resumes from offset 0 whatever the client
            // asks (the committed offset is older than what was yielded). What is published next can only
            // arrive on a new connection.
            broker.stop().await;
            let alice = "alice".parse().unwrap();
            broker.store.set_durable_offset(&topic(), &alice, "d", Offset(0)).unwrap();
            broker.store.sync().unwrap();
            broker.launch().await;
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
    // Committed through the restarted broker, from the 0 it started with: the subscription reconnected.
    let alice = "alice".parse().unwrap();
    assert_eq!(broker.store.durable_offset(&topic(), &alice, "d").unwrap(), Some(Offset(45)));
    publisher.close().await.unwrap();
    client.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribing_from_an_offset_inside_a_batch_starts_there() {
    let (_dir, _pki, _broker, id) = setup().await;
    let client = Client::connect_with(&id, quick()).await.unwrap();
    let options =
        PublisherOptions { max_batch: 10, linger: Duration::from_millis(50), ..PublisherOptions::default() };
    let publisher = client.publisher(topic(), options).await.unwrap();
    for i in 0..10 {
        drop(publisher.publish(format!("m{i}")));
    }
    publisher.close().await.unwrap();
    let options = SubscribeOptions { from: StartAt::Offset(Offset(7)), durable: None, shared: false };
    let mut sub = client.subscribe(topic(), options).await.unwrap();
    let first = sub.next().await.unwrap().unwrap();
    assert_eq!((first.offset, first.seq, &first.payload[..]), (Offset(7), 8, &b"m7"[..]));
    assert_eq!(first.publisher, "alice");
    client.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_batch_fails_its_messages_and_the_publisher_resumes_after_its_last_stored_batch() {
    let (_dir, _pki, broker, id) = setup().await;
    let client = Client::connect_with(&id, quick()).await.unwrap();
    // Two publishers with the same key are two chains: each starts at its own genesis.
    let first = client.publisher(topic(), PublisherOptions::default()).await.unwrap();
    let second = client.publisher(topic(), PublisherOptions::default()).await.unwrap();
    assert_eq!(first.publish("a").await.unwrap().seq, 1);
    assert_eq!(second.publish("b").await.unwrap().seq, 1);
    // The broker refuses the next batch (its device is full), once.
    let refuse = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let once = refuse.clone();
    broker.store.before_append(move |_| match once.swap(false, Ordering::SeqCst) {
        true => Err(sealpost_broker::Error::StorageFull),
        false => Ok(()),
    });
    let e = second.publish("c").await.unwrap_err();
    assert!(matches!(e, Error::Refused { code: ErrorCode::STORAGE_FULL, .. }), "{e}");
    assert!(!refuse.load(Ordering::SeqCst), "the refusal was the broker's");
    // The next message goes on a new stream, after the last batch the broker stored.
    let r = second.publish("d").await.unwrap();
    assert_eq!((r.offset, r.seq), (Offset(2), 2));
    second.flush().await.unwrap();
    assert_eq!(broker.next_offset(), 3);
    client.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_the_broker_stays_away_outstanding_work_fails_after_bounded_retries() {
    let (_dir, _pki, mut broker, id) = setup().await;
    // Nothing answers at the broker's address once it is gone: each attempt lasts the connect timeout.
    let options = ClientOptions { connect_timeout: Duration::from_millis(300), ..quick() };
    let client = Client::connect_with(&id, options).await.unwrap();
    let publisher = client.publisher(topic(), PublisherOptions::default()).await.unwrap();
    publisher.publish("before").await.unwrap();
    let options = SubscribeOptions { from: StartAt::Earliest, durable: Some("d".into()), shared: false };
    let mut sub = client.subscribe(topic(), options).await.unwrap();
    let m = sub.next().await.unwrap().unwrap();
    sub.ack(&m).unwrap();

    // The broker shuts down and stays away.
    broker.stop().await;
    let start = Instant::now();
    let e = publisher.publish("during").await.unwrap_err();
    assert!(start.elapsed() < Duration::from_secs(10));
    assert!(e.to_string().starts_with(&format!("broker unreachable at {}", broker.addr)), "{e}");
    // The publisher is dead: later messages fail at once with the same error.
    assert_eq!(publisher.publish("after").await.unwrap_err().to_string(), e.to_string());
    // The durable subscription cannot commit its acknowledgement: closing says so.
    let e = sub.close().await.unwrap_err();
    assert!(e.to_string().starts_with("broker unreachable at "), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_read_as_sentences() {
    let (dir, pki, broker, _id) = setup().await;
    // mallory's certificate is valid, but the ACL grants her nothing.
    let id =
        Identity::load(identity_of(dir.path(), "mallory", &pki, &pki.ca_pem(), broker.addr, "")).unwrap();
    let client = Client::connect_with(&id, quick()).await.unwrap();
    let e = client.publisher(topic(), PublisherOptions::default()).await.unwrap_err();
    assert_eq!(e.to_string(), "not authorized to publish on demo.x");
    assert!(matches!(e, Error::Refused { code: ErrorCode::NOT_AUTHORIZED, .. }));
    let e = client.subscribe(topic(), SubscribeOptions::default()).await.unwrap_err();
    assert_eq!(e.to_string(), "not authorized to subscribe to demo.x");
    let e = client.policies(&topic()).await.unwrap_err();
    assert_eq!(e.to_string(), "not authorized to read the policies of demo.x");
    let next = policy(&topic(), Some(&current(&broker, &topic())), vec![]);
    let e = client.put_policy(&next).await.unwrap_err();
    assert_eq!(e.to_string(), "not authorized to administer demo.x");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_certificate_from_another_ca_is_not_trusted() {
    let dir = tempfile::tempdir().unwrap();
    let pki = pki();
    let broker = Host::start(&pki).await;
    let other_ca = DevCa::generate("another CA").unwrap();
    let id = Identity::load(identity(dir.path(), &pki, &other_ca.cert_pem(), broker.addr)).unwrap();
    let e = Client::connect_with(&id, quick()).await.unwrap_err();
    assert!(matches!(e, Error::BrokerNotTrusted { .. }), "{e:?}");
    let text = e.to_string();
    assert!(text.starts_with("broker certificate not trusted: it is not issued by a CA in "), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_address_fails_within_the_connect_timeout_when_no_retry_is_allowed() {
    let dir = tempfile::tempdir().unwrap();
    let pki = pki();
    // A bound UDP socket that never answers.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = silent.local_addr().unwrap();
    let id = Identity::load(identity(dir.path(), &pki, &pki.ca_pem(), addr)).unwrap();
    let no_retry = Reconnect { budget: RetryBudget::Retries(0), ..quick().reconnect };
    let options =
        ClientOptions { connect_timeout: Duration::from_millis(500), reconnect: no_retry, ..quick() };
    let start = Instant::now();
    let e = Client::connect_with(&id, options).await.unwrap_err();
    assert!(start.elapsed() < Duration::from_secs(3));
    assert_eq!(e.to_string(), format!("broker unreachable at {addr}: no answer within 0.5 s"));
}

/// Options of a client that fetches the topic's policies again before every batch it seals or opens.
fn eager() -> ClientOptions {
    ClientOptions { policy_refresh: Duration::ZERO, ..quick() }
}

/// `options` with a state folder of their own in `dir`: the identity's client on another host, which has
/// not seen what the clients beside the identity file have.
fn elsewhere(options: ClientOptions, dir: &tempfile::TempDir) -> ClientOptions {
    ClientOptions { state: StateLocation::Folder(dir.path().join("elsewhere.state")), ..options }
}

async fn next_item(sub: &mut sealpost_client::Subscription) -> Result<sealpost_client::Message, Error> {
    tokio::time::timeout(Duration::from_secs(10), sub.next()).await.unwrap().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_an_identity_may_do_on_a_topic_comes_from_its_policy() {
    let (dir, pki, broker, id) = setup().await;
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
    put_as_admin(dir.path(), &pki, &broker, &p).await;
    let e = client.publisher(other.clone(), PublisherOptions::default()).await.unwrap_err();
    assert!(matches!(e, Error::NotAPublisher { epoch: 1, .. }), "{e}");
    assert!(
        e.to_string().starts_with("alice is not a publisher in the current policy of demo.other (epoch 1)"),
        "{e}"
    );
    client.subscribe(other.clone(), SubscribeOptions::default()).await.unwrap();

    // Not a member at all: the broker does not serve it the topic, and the client says why.
    let closed: Topic = "demo.closed".parse().unwrap();
    put_as_admin(dir.path(), &pki, &broker, &policy(&closed, None, vec![member("bob", true, true)])).await;
    let e = client.subscribe(closed, SubscribeOptions::default()).await.unwrap_err();
    assert!(matches!(e, Error::NotASubscriber { epoch: 1, .. }), "{e}");

    let policies = client.policies(&topic()).await.unwrap();
    assert_eq!(policies.len(), 1);
    assert_eq!(policies[0].epoch(), Epoch(1));
    assert_eq!(policies[0].members()[0].signing_key, alice().public_key());
    client.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_rotation_publishers_seal_under_the_new_epoch_and_subscribers_follow() {
    let (_dir, _pki, broker, id) = setup().await;
    let publishing = Client::connect_with(&id, eager()).await.unwrap();
    // The reader fetches policies on its own schedule: it learns of the rotation from the batch's epoch.
    let reading = Client::connect_with(&id, quick()).await.unwrap();
    let options = SubscribeOptions { from: StartAt::Earliest, durable: None, shared: false };
    let mut sub = reading.subscribe(topic(), options).await.unwrap();
    let publisher = publishing.publisher(topic(), PublisherOptions::default()).await.unwrap();
    publisher.publish("before").await.unwrap();
    assert_eq!(&next_item(&mut sub).await.unwrap().payload[..], b"before");

    let rotated = policy(&topic(), Some(&current(&broker, &topic())), vec![member("alice", true, true)]);
    publishing.put_policy(&rotated).await.unwrap();
    let fetched = broker.policy_reads();
    publisher.publish("after").await.unwrap();
    let epochs: Vec<u64> = broker.batches().iter().map(|b| b.2).collect();
    assert_eq!(epochs, [1, 2]);
    let m = next_item(&mut sub).await.unwrap();
    assert_eq!((&m.payload[..], m.offset, m.seq), (&b"after"[..], Offset(1), 2));
    assert!(broker.policy_reads() >= fetched + 2, "both clients fetched the new policy");
    publisher.close().await.unwrap();
    publishing.close().await;
    reading.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_member_can_neither_seal_nor_open_the_new_epoch() {
    let (dir, pki, broker, id) = setup().await;
    let alice_client = Client::connect_with(&id, eager()).await.unwrap();
    let publisher = alice_client.publisher(topic(), PublisherOptions::default()).await.unwrap();
    publisher.publish("while a member").await.unwrap();
    let options = SubscribeOptions { from: StartAt::Earliest, durable: None, shared: false };
    let mut sub = alice_client.subscribe(topic(), options).await.unwrap();
    assert_eq!(&next_item(&mut sub).await.unwrap().payload[..], b"while a member");

    // Epoch 2 without alice: bob publishes.
    let revoked = policy(&topic(), Some(&current(&broker, &topic())), vec![member("bob", true, true)]);
    alice_client.put_policy(&revoked).await.unwrap();
    let e = publisher.publish("after the revocation").await.unwrap_err();
    assert!(matches!(e, Error::NotAPublisher { epoch: 2, .. }), "{e}");
    assert_eq!(broker.next_offset(), 1);

    let bob_id =
        Identity::load(identity_of(dir.path(), "bob", &pki, &pki.ca_pem(), broker.addr, "")).unwrap();
    let bob = Client::connect_with(&bob_id, quick()).await.unwrap();
    let bob_pub = bob.publisher(topic(), PublisherOptions::default()).await.unwrap();
    bob_pub.publish("secret from alice").await.unwrap();
    // The broker no longer serves alice the topic: her subscription ends before the new epoch's batch,
    // and a new one is refused.
    match next_item(&mut sub).await {
        Err(Error::Refused { code: sealpost_client::ErrorCode::NOT_AUTHORIZED, .. }) => {}
        other => panic!("{other:?}"),
    }
    let options = SubscribeOptions { from: StartAt::Earliest, durable: None, shared: false };
    let e = alice_client.subscribe(topic(), options).await.unwrap_err();
    assert!(matches!(e, Error::NotASubscriber { epoch: 2, .. }), "{e}");
    bob_pub.close().await.unwrap();
    bob.close().await;
    alice_client.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policies_the_broker_serves_must_be_signed_by_the_authority_and_never_go_back() {
    use sealpost_client::protocol::Error as Check;
    let (_dir, _pki, broker, id) = setup().await;
    let client = Client::connect_with(&id, quick()).await.unwrap();
    let p1 = current(&broker, &topic());
    let p2 = policy(&topic(), Some(&p1), vec![member("alice", true, true)]);
    client.put_policy(&p2).await.unwrap();
    assert_eq!(client.policies(&topic()).await.unwrap().len(), 2);

    // The broker goes back to epoch 1: refused, whichever subscription or call asks.
    broker.lie([vec![p1.as_bytes().clone()], vec![]]);
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
    broker.lie([vec![forged.as_bytes().clone()]]);
    let fresh = Client::connect_with(&id, quick()).await.unwrap();
    let e = fresh.subscribe(topic(), SubscribeOptions::default()).await.unwrap_err();
    assert!(matches!(e, Error::Policy { check: Check::PolicyNotFromAuthority, .. }), "{e}");
    assert_eq!(
        e.to_string(),
        "topic policy of demo.x rejected: topic policy not signed by the pinned topic authority"
    );
    // Nor does the client hand one to the broker.
    let sent = broker.policies(&topic()).len();
    let e = fresh.put_policy(&policy_by(&mallory, &topic(), None, vec![])).await.unwrap_err();
    assert!(matches!(e, Error::Policy { check: Check::PolicyNotFromAuthority, .. }), "{e}");
    assert_eq!(broker.policies(&topic()).len(), sent);
    client.close().await;
    fresh.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_reports_a_bad_policy_served_at_a_rotation_and_goes_on() {
    use sealpost_client::protocol::Error as Check;
    let (dir, _pki, broker, id) = setup().await;
    let publishing = Client::connect_with(&id, eager()).await.unwrap();
    let publisher = publishing.publisher(topic(), PublisherOptions::default()).await.unwrap();
    publisher.publish("epoch 1").await.unwrap();
    let p1 = current(&broker, &topic());
    publishing.put_policy(&policy(&topic(), Some(&p1), vec![member("alice", true, true)])).await.unwrap();
    publisher.publish("epoch 2").await.unwrap();

    // The reader starts on epoch 1; when the epoch-2 batch arrives, a forged policy is served.
    let mallory = SigningKey::from_bytes(&[0x66; 32]);
    let forged = policy_by(&mallory, &topic(), None, vec![member("alice", true, true)]);
    broker.lie([vec![p1.as_bytes().clone()], vec![forged.as_bytes().clone()]]);
    // A reader that has not seen epoch 2: alice on another host, with a state folder of its own (the
    // publishing client's would make epoch 1 a rollback at once).
    let reading = Client::connect_with(&id, elsewhere(quick(), &dir)).await.unwrap();
    let mut sub = reading
        .subscribe(topic(), SubscribeOptions { from: StartAt::Earliest, durable: None, shared: false })
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
    let (dir, _pki, broker, id) = setup().await;
    let publishing = Client::connect_with(&id, eager()).await.unwrap();
    let publisher = publishing.publisher(topic(), PublisherOptions::default()).await.unwrap();
    publisher.publish("epoch 1").await.unwrap();
    let p1 = current(&broker, &topic());
    publishing.put_policy(&policy(&topic(), Some(&p1), vec![member("alice", true, true)])).await.unwrap();
    publisher.publish("epoch 2").await.unwrap();
    // The reader's start and its first scheduled fetch see epoch 1 only; the next one sees epoch 2 before
    // the batch of epoch 2 is opened, so no refetch is needed.
    broker.lie([vec![p1.as_bytes().clone()], vec![p1.as_bytes().clone()]]);
    // A reader that has not seen epoch 2: alice on another host, with a state folder of its own.
    let reading = Client::connect_with(&id, elsewhere(eager(), &dir)).await.unwrap();
    let mut sub = reading
        .subscribe(topic(), SubscribeOptions { from: StartAt::Earliest, durable: None, shared: false })
        .await
        .unwrap();
    assert_eq!(&next_item(&mut sub).await.unwrap().payload[..], b"epoch 1");
    assert_eq!(&next_item(&mut sub).await.unwrap().payload[..], b"epoch 2");
    assert_eq!(broker.lies_left(), 0);
    publisher.close().await.unwrap();
    publishing.close().await;
    reading.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_of_a_stale_epoch_is_rejected_by_the_broker() {
    let (dir, pki, broker, id) = setup().await;
    let client = Client::connect_with(&id, quick()).await.unwrap();
    let p1 = current(&broker, &topic());
    let theirs = policy(&topic(), Some(&p1), vec![member("alice", true, true)]);
    let mine = policy(&topic(), Some(&p1), vec![member("alice", true, false)]);
    // Another administrator stores the next epoch first.
    put_as_admin(dir.path(), &pki, &broker, &theirs).await;
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
    let (dir, pki, broker, _id) = setup().await;
    let seed = hex::encode(*authority().to_bytes());
    let admin = identity_of(
        dir.path(),
        "admin",
        &pki,
        &pki.ca_pem(),
        broker.addr,
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
    let p1 = current(&broker, &t);
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
    assert_eq!(current(&broker, &t).member("bob").map(|m| (m.publish, m.subscribe)), Some((true, true)));
    let e = failure(&cli(&admin, &["topic", "grant", "demo.new", "--subscriber", "dave"]).await);
    assert!(e.starts_with("sealpost: unknown member dave: neither "), "{e}");
    let e = failure(&cli(&admin, &["topic", "revoke", "demo.new", "carol"]).await);
    assert_eq!(e, "sealpost: carol is not a member of the policy of demo.new (epoch 2)");
    stdout(&cli(&admin, &["topic", "revoke", "demo.new", "bob"]).await);
    stdout(&cli(&admin, &["topic", "rotate", "demo.new"]).await);
    let p4 = current(&broker, &t);
    assert_eq!(p4.epoch(), Epoch(4));
    assert_eq!(p4.members().iter().map(|m| m.principal.as_str()).collect::<Vec<_>>(), ["alice"]);

    let e = failure(&cli(&alice_id, &["topic", "rotate", "demo.new"]).await);
    assert_eq!(
        e,
        "sealpost: this identity holds no authority_key: only the topic authority can change policies"
    );
    // Another administrator was faster: the CLI read the policies as they were before.
    let before: Vec<Bytes> = broker.policies(&t).iter().map(|p| p.as_bytes().clone()).collect();
    put_as_admin(dir.path(), &pki, &broker, &policy(&t, Some(&p4), vec![member("alice", true, true)])).await;
    broker.lie([before]);
    let e = failure(&cli(&admin, &["topic", "rotate", "demo.new"]).await);
    assert_eq!(e, "sealpost: the policy of demo.new changed meanwhile (stale epoch): run the command again");
    assert_eq!(current(&broker, &t).epoch(), Epoch(5));
    assert_eq!(broker.lies_left(), 0, "the CLI read the policies as they were before");

    // alice publishes and reads under the policy the CLI made.
    stdout(&cli(&alice_id, &["pub", "demo.new", "made by the cli"]).await);
    let text = stdout(&cli(&alice_id, &["sub", "demo.new", "--from", "earliest", "--count", "1"]).await);
    assert_eq!(text, "made by the cli\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_publishes_stdin_lines_and_prints_them_back() {
    let (dir, pki, broker, _id) = setup().await;
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
    assert_eq!(broker.next_offset(), 4);

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

    // mallory's certificate is valid, but the ACL grants her nothing.
    let identity = identity_of(dir.path(), "mallory", &pki, &pki.ca_pem(), broker.addr, "");
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

/// alice's processes continue one chain through the state folder beside her identity file: the next process
/// goes on after the batches the previous one had acknowledged. Then the broker forgets the newest batch of
/// the chain (its store says the chain's head is the batch before): alice's next process is told, with
/// what it had acknowledged and what the broker holds, and does not start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tail_the_broker_dropped_after_acknowledging_it_is_reported_to_the_publishers_next_process() {
    let (_dir, _pki, broker, id) = setup().await;
    let one_each = || PublisherOptions { max_batch: 1, ..PublisherOptions::default() };
    let client = Client::connect_with(&id, quick()).await.unwrap();
    let publisher = client.publisher(topic(), one_each()).await.unwrap();
    for i in 0..3 {
        assert_eq!(publisher.publish(format!("m{i}")).await.unwrap().seq, i + 1);
    }
    publisher.close().await.unwrap();
    client.close().await;

    // The next process continues the chain.
    let client = Client::connect_with(&id, quick()).await.unwrap();
    let publisher = client.publisher(topic(), one_each()).await.unwrap();
    let receipt = publisher.publish("m3").await.unwrap();
    assert_eq!((receipt.offset, receipt.seq), (Offset(3), 4));
    publisher.close().await.unwrap();
    client.close().await;

    // The broker forgets the newest batch of every chain.
    broker.store.serve_heads(|_, _, _, stored| {
        stored.map(|last| sealpost_broker::store::PublisherRecord {
            first_seq: last.first_seq - 1,
            count: 1,
            offset: Offset(last.offset.0 - 1),
            digest: sealpost_client::protocol::Digest([0; 32]),
        })
    });
    let client = Client::connect_with(&id, quick()).await.unwrap();
    match client.publisher(topic(), one_each()).await {
        Err(Error::RolledBack { topic: t, acknowledged, broker: held, .. }) => {
            assert_eq!((t, acknowledged, held), (topic(), 4, 3));
        }
        other => panic!("expected RolledBack, got {other:?}"),
    }
    // Without a state folder, a process of alice starts a chain of its own and cannot tell.
    let stateless = ClientOptions { state: StateLocation::Off, ..quick() };
    let forgetful = Client::connect_with(&id, stateless).await.unwrap();
    let publisher = forgetful.publisher(topic(), one_each()).await.unwrap();
    assert_eq!(publisher.publish("fresh").await.unwrap().seq, 1);
    publisher.close().await.unwrap();
    forgetful.close().await;
    client.close().await;
}

/// A batch the broker refused with `STORAGE_FULL` after appending it (its group's sync failed: the batch
/// stays in the store, docs/reliability.md) is part of the chain on the broker. The publisher's next batch
/// continues the broker's head of its own chain (`HeadOfChain`), not the head it had acknowledged, so it is
/// stored instead of being refused as a sequence conflict (it was, when the reopened stream asked the
/// legacy chain's head and continued from its own acknowledged one).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_refused_batch_that_the_broker_kept_the_next_batch_continues_the_brokers_chain() {
    let (_dir, _pki, broker, id) = setup().await;
    let fail_next = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let fail = fail_next.clone();
    broker.store.before_sync(move |_| {
        if fail.swap(false, Ordering::SeqCst) {
            Err(sealpost_broker::Error::StorageFull)
        } else {
            Ok(())
        }
    });
    let client = Client::connect_with(&id, quick()).await.unwrap();
    let one_each = PublisherOptions { max_batch: 1, ..PublisherOptions::default() };
    let publisher = client.publisher(topic(), one_each).await.unwrap();
    assert_eq!(publisher.publish("m0").await.unwrap().seq, 1);
    fail_next.store(true, Ordering::SeqCst);
    match publisher.publish("m1").await {
        Err(Error::Refused { code, .. }) => assert_eq!(code, ErrorCode::STORAGE_FULL),
        other => panic!("expected STORAGE_FULL, got {other:?}"),
    }
    let receipt = publisher.publish("m2").await.unwrap();
    assert_eq!((receipt.offset, receipt.seq), (Offset(2), 3), "m2 follows the kept m1");
    publisher.close().await.unwrap();
    client.close().await;
}
