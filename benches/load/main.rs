//! End-to-end load through the public API: a broker on loopback (in-process, sled store, fsync before
//! every ack), real QUIC with mutual TLS, the real client sealing and opening every message.
//!
//! `cargo bench --bench load -- [--quick] [--workload w1|w2|all] [--messages N] [--size BYTES] [--runs R]
//!  [--rate MSGS_PER_S] [--seconds S] [--json FILE]`
//!
//! - **W1**, closed loop: one publisher pipelines N messages as fast as acks allow while one subscriber
//!   reads them; reported: publish->ack and delivered throughput, median of R runs.
//! - **W2**, open loop: one publisher sends at a fixed rate (default 5,000 msgs/s) for S seconds after a
//!   one-second warm-up; each latency is measured from the message's *intended* send time (no coordinated
//!   omission) into an HdrHistogram: publish->ack and publish->delivery, p50/p90/p99/p99.9/max.
//!
//! Everything secured: mutual TLS, sealed (signed and encrypted) batches, fsync before ack. The machine and
//! every setting are printed; `--json FILE` writes one object per workload and system.
//!
//! Status: W1 and W2 against Sealpost. The other workloads (fan-out to ten subscribers, 1,000 idle
//! connections, restart time) and the side-by-side comparison with NATS JetStream are still to come.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use hdrhistogram::Histogram;
use sealpost_broker::acl::Acl;
use sealpost_broker::pki::{DevCa, LeafSpec};
use sealpost_broker::server::{Broker, BrokerOptions, ServerLimits};
use sealpost_broker::store::{SledStore, Store};
use sealpost_client::{Client, Identity, PublisherOptions, SubscribeOptions};
use sealpost_protocol::identity::IdentityFile;
use sealpost_protocol::{
    issue_policy, ContentKey, Epoch, HpkeSecretKey, Limits, Member, PolicyParams, SigningKey, StartAt,
    Timestamp, Topic,
};

struct Settings {
    workloads: Vec<&'static str>,
    messages: u64,
    size: usize,
    runs: usize,
    rate: u64,
    seconds: u64,
    json: Option<String>,
}

fn settings() -> Settings {
    let args: Vec<String> = std::env::args().collect();
    let value = |name: &str| args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned();
    let quick = args.iter().any(|a| a == "--quick");
    let workloads = match value("--workload").as_deref() {
        Some("w1") => vec!["W1"],
        Some("w2") => vec!["W2"],
        _ => vec!["W1", "W2"],
    };
    Settings {
        workloads,
        messages: value("--messages").map(|v| v.parse().unwrap()).unwrap_or(if quick {
            50_000
        } else {
            200_000
        }),
        size: value("--size").map(|v| v.parse().unwrap()).unwrap_or(1024),
        runs: value("--runs").map(|v| v.parse().unwrap()).unwrap_or(if quick { 3 } else { 5 }),
        rate: value("--rate").map(|v| v.parse().unwrap()).unwrap_or(5_000),
        seconds: value("--seconds").map(|v| v.parse().unwrap()).unwrap_or(if quick { 5 } else { 20 }),
        json: value("--json"),
    }
}

const ACL: &str = "[[rule]]\nprincipals = [\"load\"]\ntopics = [\"bench.>\"]\nactions = [\"publish\", \"subscribe\"]\neffect = \"allow\"\n";

/// A broker with one principal, `load`, allowed to publish and read `topic`.
struct Setup {
    _dir: tempfile::TempDir,
    broker: Broker,
    identity: Identity,
    topic: Topic,
}

async fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let ca = DevCa::generate("bench CA").unwrap();
    let server = ca.issue(&LeafSpec::local_server()).unwrap();
    let key = SigningKey::from_bytes(&[5; 32]);
    let client_cert = ca.issue(&LeafSpec::client("load", &[key.public_key()])).unwrap();
    let authority = SigningKey::from_bytes(&[6; 32]);
    let hpke = HpkeSecretKey::from_bytes(&[3; 32]);
    let topic = Topic::new("bench.load").unwrap();
    let store = SledStore::open(&dir.path().join("data")).unwrap();
    let member = Member {
        principal: "load".into(),
        publish: true,
        subscribe: true,
        signing_key: key.public_key(),
        hpke_key: hpke.public_key(),
    };
    let params = PolicyParams {
        topic: topic.clone(),
        epoch: Epoch(1),
        prev: None,
        members: vec![member],
        created_at: Timestamp(1),
    };
    let mut rng = rand::rngs::OsRng;
    let policy =
        issue_policy(&authority, params, &ContentKey::generate(&mut rng), &Limits::default(), &mut rng)
            .unwrap();
    store.put_policy(&topic, 1, policy.as_bytes()).unwrap();
    let options = BrokerOptions {
        listen: "127.0.0.1:0".parse().unwrap(),
        tls: sealpost_broker::tls::TlsMaterial {
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
    Setup { _dir: dir, broker, identity, topic }
}

/// W1: closed-loop throughput. Returns (publish->ack msgs/s, delivered msgs/s).
async fn w1(s: &Settings) -> (f64, f64) {
    let setup = setup().await;
    let sub_client = Client::connect(&setup.identity).await.unwrap();
    let options = SubscribeOptions { from: StartAt::Earliest, durable: None };
    let mut sub = sub_client.subscribe(setup.topic.clone(), options).await.unwrap();
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
    let pub_client = Client::connect(&setup.identity).await.unwrap();
    let publisher = pub_client.publisher(setup.topic.clone(), PublisherOptions::default()).await.unwrap();
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
    setup.broker.shutdown().await.unwrap();
    (n as f64 / acked.as_secs_f64(), n as f64 / delivered.as_secs_f64())
}

fn histogram() -> Arc<Mutex<Histogram<u64>>> {
    Arc::new(Mutex::new(Histogram::new_with_bounds(1, 60_000_000, 3).unwrap()))
}

/// W2: open-loop latency at `s.rate`. Returns (ack histogram, delivery histogram, achieved rate), in µs.
async fn w2(s: &Settings) -> (Histogram<u64>, Histogram<u64>, f64) {
    let setup = setup().await;
    let period = Duration::from_nanos(1_000_000_000 / s.rate.max(1));
    let warmup = s.rate; // one second
    let total = warmup + s.rate * s.seconds;
    let (acks, deliveries) = (histogram(), histogram());
    let sub_client = Client::connect(&setup.identity).await.unwrap();
    let options = SubscribeOptions { from: StartAt::Latest, durable: None };
    let mut sub = sub_client.subscribe(setup.topic.clone(), options).await.unwrap();
    let start = Instant::now() + Duration::from_millis(100);
    let reader = {
        let deliveries = deliveries.clone();
        tokio::spawn(async move {
            for _ in 0..total {
                let m = sub.next().await.unwrap().unwrap();
                let i = u64::from_be_bytes(m.payload[..8].try_into().unwrap());
                let intended = start + period * i as u32;
                if i >= warmup {
                    let us = Instant::now().saturating_duration_since(intended).as_micros() as u64;
                    deliveries.lock().unwrap().record(us.max(1)).unwrap();
                }
            }
        })
    };
    let pub_client = Client::connect(&setup.identity).await.unwrap();
    let options = PublisherOptions { linger: Duration::ZERO, ..PublisherOptions::default() };
    let publisher = pub_client.publisher(setup.topic.clone(), options).await.unwrap();
    let mut pending = futures_util::stream::FuturesUnordered::new();
    let mut i = 0u64;
    while i < total {
        let intended = start + period * i as u32;
        // Send everything due now; wait for the next due time otherwise, while collecting acks.
        if Instant::now() >= intended {
            let mut payload = vec![0u8; s.size.max(8)];
            payload[..8].copy_from_slice(&i.to_be_bytes());
            let ack = publisher.publish(Bytes::from(payload));
            let record = i >= warmup;
            pending.push(async move { (ack.await, intended, record) });
            i += 1;
            continue;
        }
        tokio::select! {
            _ = tokio::time::sleep_until(intended.into()) => {}
            Some((ack, intended, record)) = pending.next(), if !pending.is_empty() => {
                ack.unwrap();
                if record {
                    let us = Instant::now().saturating_duration_since(intended).as_micros() as u64;
                    acks.lock().unwrap().record(us.max(1)).unwrap();
                }
            }
        }
    }
    while let Some((ack, intended, record)) = pending.next().await {
        ack.unwrap();
        if record {
            let us = Instant::now().saturating_duration_since(intended).as_micros() as u64;
            acks.lock().unwrap().record(us.max(1)).unwrap();
        }
    }
    let achieved = (total - warmup) as f64 / (Instant::now() - start - period * warmup as u32).as_secs_f64();
    tokio::time::timeout(Duration::from_secs(120), reader).await.unwrap().unwrap();
    setup.broker.shutdown().await.unwrap();
    let take = |h: Arc<Mutex<Histogram<u64>>>| h.lock().unwrap().clone();
    (take(acks), take(deliveries), achieved)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    format!("{cpu}, {} logical cores", std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0))
}

fn percentiles(h: &Histogram<u64>) -> String {
    format!(
        "p50 {} µs, p90 {} µs, p99 {} µs, p99.9 {} µs, max {} µs ({} samples)",
        h.value_at_quantile(0.5),
        h.value_at_quantile(0.9),
        h.value_at_quantile(0.99),
        h.value_at_quantile(0.999),
        h.max(),
        h.len()
    )
}

fn main() {
    let s = settings();
    println!("machine: {}", machine());
    println!(
        "settings: {} B messages; sled with fsync before ack; mutual-TLS QUIC; sealed (signed + encrypted); broker \
         and clients in one process on loopback",
        s.size
    );
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let mut json = Vec::new();
    if s.workloads.contains(&"W1") {
        println!(
            "W1 closed loop: 1 publisher -> 1 subscriber, {} messages, max_batch 256, linger 1 ms, window 8192, {} runs",
            s.messages, s.runs
        );
        let (mut acks, mut deliveries) = (Vec::new(), Vec::new());
        for run in 1..=s.runs {
            let (a, d) = rt.block_on(w1(&s));
            println!("  run {run}/{}: publish->ack {a:>10.0} msgs/s   delivered {d:>10.0} msgs/s", s.runs);
            acks.push(a);
            deliveries.push(d);
        }
        let (a, d) = (median(acks), median(deliveries));
        println!(
            "W1 median: publish->ack {a:.0} msgs/s ({:.1} MB/s), delivered {d:.0} msgs/s ({:.1} MB/s)",
            a * s.size as f64 / 1e6,
            d * s.size as f64 / 1e6
        );
        json.push(format!(
            r#"{{"workload":"W1","system":"sealpost","msgs_per_s":{d:.0},"ack_msgs_per_s":{a:.0},"size":{},"messages":{},"runs":{}}}"#,
            s.size, s.messages, s.runs
        ));
    }
    if s.workloads.contains(&"W2") {
        println!(
            "W2 open loop: {} msgs/s for {} s after 1 s of warm-up, linger 0, latency from each message's intended send time",
            s.rate, s.seconds
        );
        let (acks, deliveries, achieved) = rt.block_on(w2(&s));
        println!("  achieved {achieved:.0} msgs/s");
        println!("  publish->ack      {}", percentiles(&acks));
        println!("  publish->delivery {}", percentiles(&deliveries));
        json.push(format!(
            r#"{{"workload":"W2","system":"sealpost","msgs_per_s":{achieved:.0},"p50_us":{},"p90_us":{},"p99_us":{},"p999_us":{},"max_us":{},"ack_p50_us":{},"ack_p99_us":{},"ack_p999_us":{},"rate":{},"seconds":{},"size":{}}}"#,
            deliveries.value_at_quantile(0.5),
            deliveries.value_at_quantile(0.9),
            deliveries.value_at_quantile(0.99),
            deliveries.value_at_quantile(0.999),
            deliveries.max(),
            acks.value_at_quantile(0.5),
            acks.value_at_quantile(0.99),
            acks.value_at_quantile(0.999),
            s.rate,
            s.seconds,
            s.size
        ));
    }
    if let Some(path) = &s.json {
        std::fs::write(path, format!("[\n  {}\n]\n", json.join(",\n  "))).unwrap();
        println!("wrote {path}");
    }
}
