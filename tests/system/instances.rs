//! Several publisher instances of one identity on one topic: each `Publisher` (in this process, or a
//! `sealpost pub` process) is a chain of its own, so replicas of a service may publish under one key at the
//! same time, and a subscriber still gets every acknowledged message once, each instance's in its order.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::process::{Command, Stdio};

use crate::harness::*;
use bytes::Bytes;
use futures_util::StreamExt;
use sealpost_client::{Client, Identity, Publisher, PublisherOptions, SubscribeOptions};
use sealpost_protocol::{StartAt, Topic};

/// Messages each instance publishes.
const N: usize = 60;

fn chat() -> Topic {
    Topic::new("demo.chat").unwrap()
}

async fn client(identity: &Identity) -> Client {
    within("connect", Client::connect(identity)).await.unwrap()
}

/// Publishes `INSTANCE/0` .. `INSTANCE/N-1`, one batch each, each acknowledged before the next is sent, so
/// that an instance's batches spread over many of the broker's syncs and interleave with the others';
/// returns how many were acknowledged.
async fn publish_instance(publisher: Publisher, instance: String) -> usize {
    let mut acked = 0;
    for i in 0..N {
        within("publish ack", publisher.publish(Bytes::from(format!("{instance}/{i}")))).await.unwrap();
        acked += 1;
    }
    within("publisher close", publisher.close()).await.unwrap();
    acked
}

fn one_per_batch() -> PublisherOptions {
    PublisherOptions { max_batch: 1, ..PublisherOptions::default() }
}

/// Six publisher instances of alice publish on demo.chat at the same time: two `Publisher`s on one
/// `Client`, one on a second `Client` (tasks of this process), and three `sealpost pub` processes with
/// alice's identity file. Every one of them has all its messages acknowledged (none is refused as a
/// sequence conflict with another instance), and bob, reading from the earliest offset, receives each
/// acknowledged message exactly once and each instance's messages in the order it published them; a message
/// published afterwards is the next thing bob receives, so nothing else (no duplicate) was delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn six_publisher_instances_of_one_identity_on_one_topic_are_each_delivered_once_in_order() {
    let mut env = Env::new();
    let broker = env.start(Engine::Sled).await;
    let addr = broker.local_addr();
    // Written once, before the processes read it.
    let alice_file = env.identity("alice", addr);
    let alice = Identity::load(&alice_file).unwrap();

    // The processes first (they take longest to start), each publishing its N messages as arguments.
    let processes: Vec<(String, std::process::Child)> = (0..3)
        .map(|p| {
            let instance = format!("process{p}");
            let mut cmd = Command::new(cargo_bin("sealpost"));
            cmd.arg("--identity")
                .arg(&alice_file)
                .env("RUST_LOG", "error")
                .args(["pub", "demo.chat"])
                .args((0..N).map(|i| format!("{instance}/{i}")))
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
            (instance, cmd.spawn().unwrap())
        })
        .collect();

    let one = client(&alice).await;
    let two = client(&alice).await;
    let mut publishers = Vec::new();
    for (instance, client) in [("task0", &one), ("task1", &one), ("task2", &two)] {
        let publisher = within("publisher", client.publisher(chat(), one_per_batch())).await.unwrap();
        publishers.push((instance, publisher));
    }
    // All three start once all three exist.
    let tasks: Vec<_> = publishers
        .into_iter()
        .map(|(instance, publisher)| {
            (instance, tokio::spawn(publish_instance(publisher, instance.to_owned())))
        })
        .collect();
    for (instance, task) in tasks {
        assert_eq!(within("publishing task", task).await.unwrap(), N, "{instance}");
    }
    for (instance, child) in processes {
        let out = tokio::task::spawn_blocking(move || crate::cli::wait(child)).await.unwrap();
        // `sealpost pub` exits 0 only once every message is acknowledged.
        assert!(out.status.success(), "{instance}: {}", String::from_utf8_lossy(&out.stderr));
    }

    let bob = client(&Identity::load(env.identity("bob", addr)).unwrap()).await;
    let options = SubscribeOptions { from: StartAt::Earliest, durable: None, shared: false };
    let mut sub = within("subscribe", bob.subscribe(chat(), options)).await.unwrap();
    let mut received: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    let mut offsets = Vec::new();
    let mut order: Vec<String> = Vec::new();
    for _ in 0..6 * N {
        let m = within("next message", sub.next()).await.expect("stream ended").expect("integrity error");
        assert_eq!(m.publisher, "alice");
        let payload = String::from_utf8(m.payload.to_vec()).unwrap();
        let (instance, index) = payload.split_once('/').expect("INSTANCE/INDEX");
        received.entry(instance.to_owned()).or_default().push(index.parse().unwrap());
        if order.last().map(String::as_str) != Some(instance) {
            order.push(instance.to_owned());
        }
        offsets.push(m.offset.0);
    }
    // How far the instances interleaved on the broker (at least 6 runs: one per instance).
    eprintln!("{} runs of one instance in the log of {} messages", order.len(), 6 * N);
    let expected: Vec<usize> = (0..N).collect();
    let instances: Vec<&str> = received.keys().map(String::as_str).collect();
    assert_eq!(instances, ["process0", "process1", "process2", "task0", "task1", "task2"]);
    for (instance, indexes) in &received {
        // In publishing order, each once, none missing.
        assert_eq!(indexes, &expected, "{instance}");
    }
    assert_eq!(offsets, (0..(6 * N) as u64).collect::<Vec<_>>(), "consecutive offsets");

    // Nothing else was delivered before a message published now.
    let last = within("publisher", one.publisher(chat(), PublisherOptions::default())).await.unwrap();
    within("publish ack", last.publish(Bytes::from_static(b"the end"))).await.unwrap();
    let m = within("next message", sub.next()).await.expect("stream ended").expect("integrity error");
    assert_eq!(m.payload, Bytes::from_static(b"the end"));
    within("publisher close", last.close()).await.unwrap();
    one.close().await;
    two.close().await;
    bob.close().await;
    broker.shutdown().await.unwrap();
}
