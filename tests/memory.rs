//! A stalled subscriber costs the broker bounded memory: bob reads one message a second while alice
//! floods, and the broker's resident memory grows no more than it does when bob is idle elsewhere; and in
//! neither case does it grow with what is published.
//!
//! Until the store kept batch bytes in segment files, the broker's memory grew about 1:1 with what was
//! published (sled rewrote and cached whole nodes of large values); the absolute bound below guards that.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use futures_util::StreamExt;
use sealpost_client::{Client, Identity, PublisherOptions, SubscribeOptions};
use sealpost_protocol::{StartAt, Topic};

/// Resident memory of process `pid`, in bytes.
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    kb * 1024
}

const MIB: u64 = 1024 * 1024;
const MESSAGES: u64 = 100_000;
const SIZE: usize = 1024;

/// Floods demo.chat with `MESSAGES` messages while bob reads one message a second from `bob_topic`, from
/// its beginning. Returns the broker's peak RSS growth and how many messages bob read.
async fn flood(bob_topic: &str) -> (u64, u64) {
    let mut env = Env::new();
    let config = env.write_config();
    // A small page cache, so that the store's share of memory is small and known.
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str("\n[storage]\ncache_bytes = 16777216\n");
    std::fs::write(&config, text).unwrap();
    let broker = BrokerProcess::start(&config);
    let pid = broker.child.id();
    let chat = Topic::new("demo.chat").unwrap();

    let alice = Identity::load(env.identity("alice", broker.addr)).unwrap();
    let alice = within("connect", Client::connect(&alice)).await.unwrap();
    let publisher = alice.publisher(chat, PublisherOptions::default()).await.unwrap();
    within("first", publisher.publish(Bytes::from(vec![1u8; SIZE]))).await.unwrap();

    let bob = Identity::load(env.identity("bob", broker.addr)).unwrap();
    let bob = within("connect", Client::connect(&bob)).await.unwrap();
    let options = SubscribeOptions { from: StartAt::Earliest, durable: None };
    let mut sub = within("subscribe", bob.subscribe(Topic::new(bob_topic).unwrap(), options)).await.unwrap();
    let read = Arc::new(AtomicU64::new(0));
    let reader = {
        let read = read.clone();
        tokio::spawn(async move {
            // One message a second: on demo.chat bob falls behind at once; on an idle topic he waits.
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                match sub.next().await {
                    Some(Ok(_)) => read.fetch_add(1, Ordering::SeqCst),
                    other => panic!("bob's subscription failed: {other:?}"),
                };
            }
        })
    };
    let baseline = rss(pid);
    let (done, peak) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicU64::new(baseline)));
    let sampler = {
        let (done, peak) = (done.clone(), peak.clone());
        tokio::spawn(async move {
            // Sampling the broker's memory is the measurement itself, not a wait for an event.
            while !done.load(Ordering::SeqCst) {
                peak.fetch_max(rss(pid), Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    let payload = Bytes::from(vec![0x5a; SIZE]);
    let mut window = std::collections::VecDeque::new();
    for _ in 0..MESSAGES {
        window.push_back(publisher.publish(payload.clone()));
        if window.len() >= 4096 {
            within("ack", window.pop_front().unwrap()).await.unwrap();
        }
    }
    for ack in window {
        within("ack", ack).await.unwrap();
    }
    done.store(true, Ordering::SeqCst);
    sampler.await.unwrap();
    reader.abort();
    broker.kill();
    (peak.load(Ordering::SeqCst).saturating_sub(baseline), read.load(Ordering::SeqCst))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_subscriber_holds_bounded_broker_memory_while_a_publisher_floods() {
    let (idle_growth, _) = flood("demo.events").await;
    let (stalled_growth, read) = flood("demo.chat").await;
    let published = MESSAGES * SIZE as u64;
    let held = stalled_growth.saturating_sub(idle_growth);
    eprintln!(
        "published {} MiB; broker RSS growth {} MiB with bob stalled on the flooded topic (he read {read}), {} MiB \
         with bob idle elsewhere: the stalled subscriber held about {} MiB",
        published / MIB,
        stalled_growth / MIB,
        idle_growth / MIB,
        held / MIB
    );
    // bob reads one message a second, so on any machine he falls far behind the flood.
    assert!(read < MESSAGES / 100, "bob was not slow: he read {read} of {MESSAGES} messages");
    // What a stalled subscriber may hold: one storage read chunk (1 MiB) and its QUIC stream's send buffer,
    // with slack for allocator noise between two runs; not the ~98 MiB published.
    assert!(held < 32 * MIB, "a stalled subscriber held {} MiB of broker memory", held / MIB);
    // Nor does the broker keep what passes through it: its growth stays far below the ~98 MiB published.
    for growth in [idle_growth, stalled_growth] {
        assert!(
            growth < published / 3,
            "broker RSS grew {} MiB for {} MiB published",
            growth / MIB,
            published / MIB
        );
    }
}
