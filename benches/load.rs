//! End-to-end load through the public API: a broker on loopback (in-process, sled store, fsync before
//! every ack), real QUIC with mutual TLS, the real client sealing and opening every message.
//!
//! `cargo bench --bench load -- [--quick] [--messages N] [--size BYTES] [--runs R]`
//!
//! Workload W1 (closed loop): one publisher pipelines N messages as fast as acks allow while one subscriber
//! reads them; reported: publish->ack throughput and delivered throughput, medians of R runs. Everything
//! secured: mutual TLS, sealed (signed and encrypted) batches, fsync before ack.
//!
//! Status: W1 only. The open-loop latency workload, the other workloads, JSON output and the side-by-side
//! comparison with NATS JetStream are the benchmark issue's work.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use sealpost_broker::acl::Acl;
use sealpost_broker::pki::{DevCa, LeafSpec};
use sealpost_broker::server::{Broker, BrokerOptions, ServerLimits};
use sealpost_broker::store::SledStore;
use sealpost_broker::store::Store;
use sealpost_broker::tls::TlsMaterial;
use sealpost_client::{Client, Identity, PublisherOptions, SubscribeOptions};
use sealpost_protocol::identity::IdentityFile;
use sealpost_protocol::{
    issue_policy, ContentKey, Epoch, HpkeSecretKey, Limits, Member, PolicyParams, SigningKey, StartAt,
    Timestamp, Topic,
};

struct Settings {
    messages: u64,
    size: usize,
    runs: usize,
}

fn settings() -> Settings {
    let args: Vec<String> = std::env::args().collect();
    let value = |name: &str| args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned();
    let quick = args.iter().any(|a| a == "--quick");
    Settings {
        messages: value("--messages").map(|v| v.parse().unwrap()).unwrap_or(if quick {
            50_000
        } else {
            200_000
        }),
        size: value("--size").map(|v| v.parse().unwrap()).unwrap_or(1024),
        runs: value("--runs").map(|v| v.parse().unwrap()).unwrap_or(if quick { 3 } else { 5 }),
    }
}

const ACL: &str = "[[rule]]\nprincipals = [\"load\"]\ntopics = [\"bench.>\"]\nactions = [\"publish\", \"subscribe\"]\neffect = \"allow\"\n";

async fn w1(s: &Settings) -> (f64, f64) {
    let dir = tempfile::tempdir().unwrap();
    let ca = DevCa::generate("bench CA").unwrap();
    let server = ca.issue(&LeafSpec::local_server()).unwrap();
    let key = SigningKey::from_bytes(&[5; 32]);
    let client_cert = ca.issue(&LeafSpec::client("load", &[key.public_key()])).unwrap();
    let authority = SigningKey::from_bytes(&[6; 32]);
    let hpke = HpkeSecretKey::from_bytes(&[3; 32]);
    let topic = Topic::new("bench.w1").unwrap();
    let store = SledStore::open(&dir.path().join("data")).unwrap();
    let params = PolicyParams {
        topic: topic.clone(),
        epoch: Epoch(1),
        prev: None,
        members: vec![Member {
            principal: "load".into(),
            publish: true,
            subscribe: true,
            signing_key: key.public_key(),
            hpke_key: hpke.public_key(),
        }],
        created_at: Timestamp(1),
    };
    let mut rng = rand::rngs::OsRng;
    let policy =
        issue_policy(&authority, params, &ContentKey::generate(&mut rng), &Limits::default(), &mut rng)
            .unwrap();
    store.put_policy(&topic, 1, policy.as_bytes()).unwrap();
    let options = BrokerOptions {
        listen: "127.0.0.1:0".parse().unwrap(),
        tls: TlsMaterial {
            client_ca_pem: ca.cert_pem(),
            cert_chain_pem: server.cert_pem,
            key_pem: server.key_pem,
            crls_pem: Vec::new(),
        },
        acl: Acl::from_toml(ACL).unwrap(),
        store: Arc::new(store),
        authority: Some(authority.public_key()),
        limits: ServerLimits::default(),
    };
    let broker = Broker::start(options).await.unwrap();
    let d = dir.path();
    std::fs::write(d.join("ca.pem"), ca.cert_pem()).unwrap();
    std::fs::write(d.join("load.pem"), &client_cert.cert_pem).unwrap();
    std::fs::write(d.join("load.key"), &client_cert.key_pem).unwrap();
    let identity = IdentityFile {
        principal: "load".into(),
        broker: broker.local_addr().to_string(),
        server_name: "localhost".into(),
        ca: "ca.pem".into(),
        cert: "load.pem".into(),
        key: "load.key".into(),
        signing_key: hex::encode(*key.to_bytes()),
        hpke_key: hex::encode(hpke.as_bytes()),
        authority: authority.public_key(),
        authority_key: None,
    };
    std::fs::write(d.join("load.toml"), toml::to_string(&identity).unwrap()).unwrap();
    let identity = Identity::load(d.join("load.toml")).unwrap();

    let sub_client = Client::connect(&identity).await.unwrap();
    let mut sub = sub_client
        .subscribe(topic.clone(), SubscribeOptions { from: StartAt::Earliest, durable: None })
        .await
        .unwrap();
    let n = s.messages;
    let reader = tokio::spawn(async move {
        let mut seen = 0u64;
        while seen < n {
            let m = sub.next().await.unwrap().unwrap();
            assert_eq!(m.offset, seen);
            seen += 1;
        }
        Instant::now()
    });
    let pub_client = Client::connect(&identity).await.unwrap();
    let publisher = pub_client.publisher(topic, PublisherOptions::default()).await.unwrap();
    let payload = Bytes::from(vec![0x5a; s.size]);
    let start = Instant::now();
    // Closed loop with a bounded window of unacknowledged messages.
    let mut window = std::collections::VecDeque::new();
    for _ in 0..n {
        window.push_back(publisher.publish(payload.clone()));
        if window.len() >= 8192 {
            window.pop_front().unwrap().await.unwrap();
        }
    }
    for ack in window {
        ack.await.unwrap();
    }
    let acked = start.elapsed();
    let delivered = tokio::time::timeout(Duration::from_secs(300), reader).await.unwrap().unwrap() - start;
    broker.shutdown().await.unwrap();
    (n as f64 / acked.as_secs_f64(), n as f64 / delivered.as_secs_f64())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    // `cargo bench` passes `--bench`; ignore it like criterion does.
    let s = settings();
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    println!(
        "machine: {cpu}, {} logical cores",
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0)
    );
    println!(
        "settings: W1 closed loop, 1 publisher -> 1 subscriber, {} messages of {} B, publisher max_batch 256 / linger 1 ms, \
         window 8192, sled with fsync before ack, mTLS QUIC, sealed (signed + encrypted), broker and clients in one process",
        s.messages, s.size
    );
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let (mut acks, mut deliveries) = (Vec::new(), Vec::new());
    for run in 1..=s.runs {
        let (a, d) = rt.block_on(w1(&s));
        println!("run {run}: publish->ack {a:>10.0} msgs/s   delivered {d:>10.0} msgs/s");
        acks.push(a);
        deliveries.push(d);
    }
    let (a, d) = (median(acks), median(deliveries));
    println!(
        "W1 median of {} runs: publish->ack {a:.0} msgs/s ({:.1} MB/s), delivered {d:.0} msgs/s ({:.1} MB/s)",
        s.runs,
        a * s.size as f64 / 1e6,
        d * s.size as f64 / 1e6
    );
}
