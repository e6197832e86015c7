//! The JetStream engine on the repository's three-node cluster ([`crate::cluster`]): the store's
//! behavioural scenarios, two brokers serving one log, a failover through a stream leader's and a broker's
//! SIGKILL, and the compromised-broker attacks of `attacks.rs` (compiled again here as
//! `jetstream::attacks`, storing honestly in JetStream).
//!
//! Every test uses streams of its own (a prefix of its own), so they share the cluster; the failover test
//! kills nodes and so holds it alone ([`Cluster::exclusive`](crate::cluster::Cluster::exclusive)).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use sealpost_broker::server::ServerLimits;
use sealpost_broker::store::conformance::SCENARIOS;
use sealpost_broker::store::{JetStreamOptions, JetStreamStore, Store};
use sealpost_client::{Client, ClientOptions, Identity, PublisherOptions, StartAt, SubscribeOptions};
use sealpost_protocol::Topic;

use crate::cluster::{cluster, Shared};
use crate::harness::*;

// The same attacks, compiled a second time against this module's `honest_store` (JetStream): deliberate.
#[allow(clippy::duplicate_mod)]
#[path = "attacks.rs"]
mod attacks;

/// A prefix no other test (of this run or an earlier one on the same cluster) uses.
fn fresh_prefix(what: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::SeqCst);
    format!("t{}{what}{n}", std::process::id())
}

/// The engine's options for the test cluster under `prefix`.
fn options(prefix: &str) -> JetStreamOptions {
    JetStreamOptions {
        servers: cluster().urls(),
        prefix: prefix.to_owned(),
        replicas: 3,
        publish_timeout: Duration::from_secs(30),
        ..JetStreamOptions::default()
    }
}

/// A JetStream store of its own on the test cluster (connecting blocks: off the async workers).
async fn store(prefix: &str) -> JetStreamStore {
    let options = options(prefix);
    tokio::task::spawn_blocking(move || JetStreamStore::connect(options)).await.unwrap().unwrap()
}

/// The honest store of `jetstream::attacks`: JetStream, the cluster held shared while it is used.
async fn honest_store() -> (Box<dyn Store>, Box<dyn std::any::Any + Send + Sync>) {
    let hold: Shared<'static> = cluster().shared().await;
    (Box::new(store(&fresh_prefix("atk")).await), Box::new(hold))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_store_scenario_passes_on_a_three_node_cluster() {
    let _shared = cluster().shared().await;
    for (name, scenario) in SCENARIOS {
        let store = store(&fresh_prefix("conf")).await;
        let ran = tokio::task::spawn_blocking(move || scenario(&store)).await;
        assert!(ran.is_ok(), "scenario {name} failed on the JetStream engine");
    }
}

/// A broker in this process on the test cluster under `prefix`, the env's policies stored there.
async fn broker(env: &mut Env, prefix: &str) -> sealpost_broker::server::Broker {
    let store: Arc<dyn Store> = Arc::new(store(prefix).await);
    env.seed(store.as_ref());
    let options = env.options(Engine::Memory, "127.0.0.1:0".parse().unwrap(), ServerLimits::default());
    let options = sealpost_broker::server::BrokerOptions { store, ..options };
    within("broker start", sealpost_broker::server::Broker::start(options)).await.unwrap()
}

async fn client(env: &Env, who: &str, brokers: &[SocketAddr]) -> Client {
    let path = env.identity(who, brokers[0]);
    let list = brokers.iter().map(SocketAddr::to_string).collect::<Vec<_>>().join(",");
    let text = std::fs::read_to_string(&path).unwrap();
    let text = text.replace(&format!("broker = \"{}\"", brokers[0]), &format!("broker = \"{list}\""));
    std::fs::write(&path, text).unwrap();
    let identity = Identity::load(&path).unwrap();
    let options = ClientOptions { state: sealpost_client::StateLocation::Off, ..ClientOptions::default() };
    within("connect", Client::connect_with(&identity, options)).await.unwrap()
}

fn chat() -> Topic {
    Topic::new("demo.chat").unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_brokers_serve_one_log_with_the_same_offsets_live_and_in_order() {
    let _shared = cluster().shared().await;
    let prefix = fresh_prefix("two");
    let mut env = Env::new();
    let a = broker(&mut env, &prefix).await;
    let b = broker(&mut env, &prefix).await;
    let alice_a = client(&env, "alice", &[a.local_addr()]).await;
    let alice_b = client(&env, "alice", &[b.local_addr()]).await;
    let bob_b = client(&env, "bob", &[b.local_addr()]).await;
    let earliest = SubscribeOptions { from: StartAt::Earliest, durable: None, shared: false };
    let mut live = within("subscribe", bob_b.subscribe(chat(), earliest.clone())).await.unwrap();

    // Two publishers, one through each broker, interleaving on one topic.
    let options = PublisherOptions { max_batch: 1, ..PublisherOptions::default() };
    let pa = within("publisher", alice_a.publisher(chat(), options.clone())).await.unwrap();
    let pb = within("publisher", alice_b.publisher(chat(), options)).await.unwrap();
    let mut receipts = HashMap::new();
    for i in 0..50 {
        let (p, who) = if i % 2 == 0 { (&pa, "a") } else { (&pb, "b") };
        let payload = format!("{who}{i}");
        let receipt = within("publish", p.publish(Bytes::from(payload.clone()))).await.unwrap();
        receipts.insert(payload, receipt.offset);
    }
    // bob, on broker B, sees all 50 live, in offset order, each at the offset its publisher was told.
    let mut seen = Vec::new();
    while seen.len() < 50 {
        let message = within("delivery", live.next()).await.unwrap().unwrap();
        seen.push((String::from_utf8(message.payload.to_vec()).unwrap(), message.offset));
    }
    let offsets: Vec<u64> = seen.iter().map(|(_, o)| o.0).collect();
    assert_eq!(offsets, (0..50).collect::<Vec<_>>());
    for (payload, offset) in &seen {
        assert_eq!(receipts[payload], *offset, "{payload}");
    }
    // The same log through broker A, read from the start.
    let bob_a = client(&env, "bob", &[a.local_addr()]).await;
    let mut replay = within("subscribe", bob_a.subscribe(chat(), earliest)).await.unwrap();
    for (payload, offset) in &seen {
        let message = within("replay", replay.next()).await.unwrap().unwrap();
        assert_eq!((message.payload.as_ref(), message.offset), (payload.as_bytes(), *offset));
    }
    // admin revokes alice's right to publish through broker A: broker B refuses her from then on (it
    // reads its policies again as soon as it learns of one stored through another broker).
    let admin_a = client(&env, "admin", &[a.local_addr()]).await;
    let first = env.first_policy("demo.chat");
    let members = vec![env.member("alice", false, true), env.member("bob", false, true)];
    let second = env.policy(
        "demo.chat",
        2,
        Some(&first),
        members,
        &sealpost_protocol::ContentKey::from_bytes(&[2; 32]),
    );
    within("store policy", admin_a.put_policy(&second)).await.unwrap();
    let refused = within("refused through B", async {
        // Bounded: B learns of the policy within milliseconds; a publish before that is still accepted.
        for attempt in 0..500 {
            match pb.publish(Bytes::from(format!("after{attempt}"))).await {
                Ok(_) => tokio::time::sleep(Duration::from_millis(10)).await,
                Err(e) => return e,
            }
        }
        panic!("broker B went on accepting alice's batches after her revocation through broker A");
    })
    .await;
    assert!(matches!(refused, sealpost_client::Error::Refused { .. }), "{refused:?}");
    for c in [alice_a, alice_b, bob_a, bob_b, admin_a] {
        c.close().await;
    }
    within("shutdown", a.shutdown()).await.unwrap();
    within("shutdown", b.shutdown()).await.unwrap();
}

/// Writes a configuration for a subprocess broker named `name` on the test cluster under `prefix`.
fn broker_config(env: &mut Env, prefix: &str, name: &str) -> PathBuf {
    let base = std::fs::read_to_string(env.write_config()).unwrap();
    let servers = cluster().urls().iter().map(|u| format!("\"{u}\"")).collect::<Vec<_>>().join(", ");
    let config = format!(
        "{}\n[storage]\nengine = \"jetstream\"\n\n[storage.jetstream]\nservers = [{servers}]\nprefix = \"{prefix}\"\n\
         replicas = 3\npublish_timeout_ms = 30000\n",
        base.replace("data_dir = \"data\"", &format!("data_dir = \"data-{name}\""))
    );
    let path = env.dir.path().join(format!("{name}.toml"));
    std::fs::write(&path, config).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_stream_leader_then_broker_a_loses_nothing_acknowledged_and_duplicates_nothing() {
    const MESSAGES: usize = 3000;
    let cluster = cluster();
    let _alone = cluster.exclusive().await;
    let prefix = fresh_prefix("fail");
    let mut env = Env::new();
    // The policies, stored once for both brokers.
    env.seed(&store(&prefix).await);
    let config_a = broker_config(&mut env, &prefix, "a");
    let config_b = broker_config(&mut env, &prefix, "b");
    let broker_a = BrokerProcess::start(&config_a);
    let broker_b = BrokerProcess::start(&config_b);
    let (addr_a, addr_b) = (broker_a.addr, broker_b.addr);

    // alice publishes through A (B when A is gone); bob reads through B.
    let alice = client(&env, "alice", &[addr_a, addr_b]).await;
    let bob = client(&env, "bob", &[addr_b]).await;
    let from_start = SubscribeOptions { from: StartAt::Earliest, durable: None, shared: false };
    let mut subscription = within("subscribe", bob.subscribe(chat(), from_start)).await.unwrap();
    let publisher = within("publisher", alice.publisher(chat(), PublisherOptions::default())).await.unwrap();

    let (acked_tx, mut acked) = tokio::sync::mpsc::unbounded_channel();
    let publishing = tokio::spawn(async move {
        let mut pending = futures_util::stream::FuturesOrdered::new();
        for i in 0..MESSAGES {
            pending.push_back(publisher.publish(Bytes::from(format!("m{i}"))));
            while pending.len() >= 64 {
                let receipt = pending.next().await.unwrap().unwrap();
                acked_tx.send(receipt.offset).unwrap();
            }
        }
        while let Some(receipt) = pending.next().await {
            acked_tx.send(receipt.unwrap().offset).unwrap();
        }
        publisher.close().await.unwrap();
    });

    // A third in: SIGKILL the stream's leader. Two thirds in: SIGKILL broker A.
    let stream = sealpost_broker::store::jetstream::log_stream(&prefix, &chat()).unwrap();
    let mut receipts = Vec::with_capacity(MESSAGES);
    let mut killed_node = None;
    let mut broker_a = Some(broker_a);
    let deadline = Instant::now() + Duration::from_secs(240);
    while receipts.len() < MESSAGES {
        let left = deadline.saturating_duration_since(Instant::now());
        let offset = tokio::time::timeout(left, acked.recv()).await.expect("all acknowledged in time");
        receipts.push(offset.expect("the publisher ended before every message was acknowledged"));
        if receipts.len() == MESSAGES / 3 && killed_node.is_none() {
            let leader = cluster.leader_of(&stream).await;
            cluster.kill(leader);
            killed_node = Some(leader);
        }
        if receipts.len() == 2 * MESSAGES / 3 {
            if let Some(a) = broker_a.take() {
                a.kill();
            }
        }
    }
    within("publisher done", publishing).await.unwrap();

    // bob: every message exactly once, in order, each at the offset its receipt gave.
    for (i, offset) in receipts.iter().enumerate() {
        let message = tokio::time::timeout(Duration::from_secs(60), subscription.next())
            .await
            .expect("delivery in time")
            .unwrap()
            .unwrap();
        assert_eq!(message.payload.as_ref(), format!("m{i}").as_bytes());
        assert_eq!(message.offset, *offset, "m{i}");
    }
    assert!(receipts.windows(2).all(|w| w[1].0 == w[0].0 + 1), "offsets are consecutive");
    if let Some(node) = killed_node {
        cluster.restart(node).await;
    }
    alice.close().await;
    bob.close().await;
    broker_b.terminate();
}

/// The streams the engine creates deny deletes and purges, and JetStream refuses to lift that. A hostile
/// NATS operator therefore creates the topic's stream before the broker does, without it, and deletes
/// alice's second batch from it. A subscriber reading from the start gets m0, then an error for offset 1
/// (the broker reports the offsets missing, or the chain reports the gap), never m1, then m2: deleting
/// from the shared log is detected, never silent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_deleted_from_the_jetstream_stream_is_reported_never_silently_skipped() {
    let _shared = cluster().shared().await;
    let prefix = fresh_prefix("del");
    let js = async_nats::jetstream::new(cluster().connect().await);
    let name = sealpost_broker::store::jetstream::log_stream(&prefix, &chat()).unwrap();
    let subjects = format!("{}.log.{}.>", prefix.to_ascii_lowercase(), name.rsplit('_').next().unwrap());
    let hostile = async_nats::jetstream::stream::Config {
        name: name.clone(),
        subjects: vec![subjects],
        num_replicas: 3,
        allow_direct: true,
        description: Some("demo.chat".into()),
        ..Default::default()
    };
    js.create_stream(hostile).await.unwrap();
    let mut env = Env::new();
    let broker = broker(&mut env, &prefix).await;
    let alice = client(&env, "alice", &[broker.local_addr()]).await;
    let options = PublisherOptions { max_batch: 1, ..PublisherOptions::default() };
    let publisher = within("publisher", alice.publisher(chat(), options)).await.unwrap();
    for m in ["m0", "m1", "m2"] {
        within("publish", publisher.publish(Bytes::from(m))).await.unwrap();
    }
    // The operator's move: delete sequence 2 (m1's batch).
    let stream = js.get_stream(&name).await.unwrap();
    assert!(stream.delete_message(2).await.unwrap());

    // bob reads through a broker started after the delete (the first still holds m1 in memory, honestly).
    let reader = self::broker(&mut env, &prefix).await;
    let bob = client(&env, "bob", &[reader.local_addr()]).await;
    let earliest = SubscribeOptions { from: StartAt::Earliest, durable: None, shared: false };
    let mut sub = within("subscribe", bob.subscribe(chat(), earliest)).await.unwrap();
    let first = within("m0", sub.next()).await.unwrap().unwrap();
    assert_eq!((first.payload.as_ref(), first.offset.0), (b"m0".as_ref(), 0));
    let mut reported = false;
    loop {
        match within("next item", sub.next()).await.unwrap() {
            Ok(m) => {
                assert_eq!((m.payload.as_ref(), m.offset.0), (b"m2".as_ref(), 2), "m1 must never come");
                break;
            }
            // The broker reports offset 1 missing (it cannot name the deleted batch), and alice's chain
            // then reports the gap before m2.
            Err(sealpost_client::Error::DataLost { offsets, .. }) => {
                assert_eq!((offsets.start.0, offsets.end.0), (1, 2));
                reported = true;
            }
            Err(e @ sealpost_client::Error::Integrity { .. }) => {
                assert!(reported, "the loss is reported before the chain's gap: {e}");
            }
            Err(e) => panic!("unexpected: {e}"),
        }
    }
    assert!(reported, "the deleted batch was skipped without an error");
    within("publisher close", publisher.close()).await.unwrap();
    alice.close().await;
    bob.close().await;
    within("shutdown", broker.shutdown()).await.unwrap();
    within("shutdown", reader.shutdown()).await.unwrap();
}

/// The streams the engine creates refuse deletes and purges, and JetStream refuses to lift that.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_engines_streams_refuse_deletes_and_purges_and_keep_refusing() {
    let _shared = cluster().shared().await;
    let prefix = fresh_prefix("deny");
    let mut env = Env::new();
    let broker = broker(&mut env, &prefix).await;
    let alice = client(&env, "alice", &[broker.local_addr()]).await;
    let publisher = within("publisher", alice.publisher(chat(), PublisherOptions::default())).await.unwrap();
    within("publish", publisher.publish(Bytes::from("m0"))).await.unwrap();
    let js = async_nats::jetstream::new(cluster().connect().await);
    let name = sealpost_broker::store::jetstream::log_stream(&prefix, &chat()).unwrap();
    let stream = js.get_stream(&name).await.unwrap();
    assert!(stream.delete_message(1).await.is_err(), "a delete was accepted");
    assert!(stream.purge().await.is_err(), "a purge was accepted");
    let mut config = stream.cached_info().config.clone();
    config.deny_delete = false;
    config.deny_purge = false;
    assert!(js.update_stream(config).await.is_err(), "the guard was lifted");
    within("publisher close", publisher.close()).await.unwrap();
    alice.close().await;
    within("shutdown", broker.shutdown()).await.unwrap();
}

/// A client's identity lists a live broker and an address where nothing answers. It connects whichever
/// comes first, and when the live broker restarts, its publisher goes on through it again: each failed
/// dial moves on to the next address once, so the dead one never traps it (no cluster needed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_listing_several_brokers_goes_past_one_that_is_down() {
    let mut env = Env::new();
    let broker = env.start(Engine::Memory).await;
    let live = broker.local_addr();
    // A port nothing listens on: bound, then released.
    let dead = std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let options = ClientOptions {
        connect_timeout: Duration::from_millis(300),
        reconnect: sealpost_client::Reconnect {
            budget: sealpost_client::RetryBudget::Duration(Duration::from_secs(20)),
            initial_delay: Duration::from_millis(20),
            max_delay: Duration::from_millis(200),
        },
        state: sealpost_client::StateLocation::Off,
        ..ClientOptions::default()
    };
    for (order, who) in [([dead, live], "alice"), ([live, dead], "bob")] {
        let path = env.identity(who, order[0]);
        let text = std::fs::read_to_string(&path).unwrap();
        let text = text.replace(
            &format!("broker = \"{}\"", order[0]),
            &format!("broker = \"{},{}\"", order[0], order[1]),
        );
        std::fs::write(&path, text).unwrap();
        let identity = Identity::load(&path).unwrap();
        let client =
            within("connect past the dead address", Client::connect_with(&identity, options.clone()))
                .await
                .unwrap();
        client.close().await;
    }
    // alice lists the live broker first: after it restarts, the dial to it fails once, the one to the dead
    // address fails, and the next is the live broker again.
    let path = env.identity("alice", live);
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(
        &path,
        text.replace(&format!("broker = \"{live}\""), &format!("broker = \"{live},{dead}\"")),
    )
    .unwrap();
    let alice =
        within("connect", Client::connect_with(&Identity::load(&path).unwrap(), options)).await.unwrap();
    let publisher = within("publisher", alice.publisher(chat(), PublisherOptions::default())).await.unwrap();
    within("m0", publisher.publish(Bytes::from("m0"))).await.unwrap();
    let mut state = alice.connection_state();
    within("shutdown", broker.shutdown()).await.unwrap();
    within("disconnected", state.wait_for(|s| !matches!(s, sealpost_client::ConnectionState::Connected)))
        .await
        .unwrap();
    // The old endpoint lets go of its UDP port once its connections have drained: bounded retries.
    let mut again = None;
    for _ in 0..100 {
        let options = env.options(Engine::Memory, live, ServerLimits::default());
        match sealpost_broker::server::Broker::start(options).await {
            Ok(broker) => {
                again = Some(broker);
                break;
            }
            Err(e) => {
                assert!(e.to_string().contains("in use"), "{e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    let again = again.expect("the broker's port was free again within 5 s");
    let receipt = within("m1 after the restart", publisher.publish(Bytes::from("m1"))).await.unwrap();
    assert_eq!(receipt.offset.0, 1);
    within("publisher close", publisher.close()).await.unwrap();
    alice.close().await;
    within("shutdown", again.shutdown()).await.unwrap();
}
