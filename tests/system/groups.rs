//! Replicas of a service on one durable subscription (docs/operations.md, "Durable subscriptions"): the
//! broker serves it to one subscriber at a time, the others stand by, and when the one reading stops a
//! standby takes over from what it committed. Before, two subscribers of one durable name each received
//! every message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use bytes::Bytes;
use futures_util::StreamExt;
use sealpost_client::{Client, Identity, PublisherOptions, SubscribeOptions, Subscription};
use sealpost_protocol::{Offset, StartAt, Topic};

use crate::harness::*;

fn chat() -> Topic {
    Topic::new("demo.chat").unwrap()
}

fn workers() -> SubscribeOptions {
    SubscribeOptions { from: StartAt::Earliest, durable: Some("workers".into()) }
}

/// alice's client and publisher on demo.chat, after publishing `m0` to `m{n-1}`.
async fn alice_published(
    env: &Env,
    addr: std::net::SocketAddr,
    n: usize,
) -> (Client, sealpost_client::Publisher) {
    let alice = within("connect", Client::connect(&Identity::load(env.identity("alice", addr)).unwrap()))
        .await
        .unwrap();
    let publisher = within("publisher", alice.publisher(chat(), PublisherOptions::default())).await.unwrap();
    for i in 0..n {
        within("publish", publisher.publish(format!("m{i}"))).await.unwrap();
    }
    (alice, publisher)
}

/// Two replicas of bob's service, each a client with an identity file (and so a state folder) of its own.
async fn bob_replicas(env: &Env, addr: std::net::SocketAddr) -> (Client, Client) {
    let identity = env.identity("bob", addr);
    let copy = identity.with_file_name("bob-2.toml");
    std::fs::copy(&identity, &copy).unwrap();
    let first = within("connect", Client::connect(&Identity::load(identity).unwrap())).await.unwrap();
    let second = within("connect", Client::connect(&Identity::load(copy).unwrap())).await.unwrap();
    (first, second)
}

/// The payloads of the next `n` messages, acking each.
async fn read(subscription: &mut Subscription, n: usize) -> Vec<(Offset, Bytes)> {
    let mut got = Vec::new();
    for _ in 0..n {
        let message = within("a message", subscription.next()).await.unwrap().unwrap();
        subscription.ack(&message).unwrap();
        got.push((message.offset, message.payload));
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_subscriber_of_a_durable_name_stands_by_and_takes_over_where_the_first_stopped() {
    let mut env = Env::new();
    let broker = env.start(Engine::Sled).await;
    let addr = broker.local_addr();
    let (alice, publisher) = alice_published(&env, addr, 10).await;
    let (first, second) = bob_replicas(&env, addr).await;

    let mut reading = within("subscribe", first.subscribe(chat(), workers())).await.unwrap();
    let standby = tokio::spawn(async move {
        let subscription = second.subscribe(chat(), workers()).await;
        (second, subscription)
    });
    let seen = read(&mut reading, 5).await;
    assert_eq!(seen.last().unwrap().1, Bytes::from("m4"));
    // A message published now reaches the first subscriber; the second is still standing by.
    within("publish", publisher.publish("m10")).await.unwrap();
    let more = read(&mut reading, 5).await;
    assert_eq!(more.first().unwrap().1, Bytes::from("m5"));
    assert!(!standby.is_finished(), "the second subscriber was served while the first reads");

    // The first stops after m9 (closing commits its last ack): the second takes over at m10.
    within("close", reading.close()).await.unwrap();
    let (second, subscription) = within("the standby takes over", standby).await.unwrap();
    let mut taken_over = subscription.unwrap();
    let next = read(&mut taken_over, 1).await;
    assert_eq!(next, vec![(Offset(10), Bytes::from("m10"))]);
    within("close", taken_over.close()).await.unwrap();
    second.close().await;
    first.close().await;
    alice.close().await;
    broker.shutdown().await.unwrap();
}

/// The subscriber reading goes away without closing (its connection ends): the standby takes over from
/// the last ack the broker committed, and reads on to the end. At least once: it may see again what the
/// first one read after its last committed ack, never less.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_the_reading_subscriber_dies_a_standby_takes_over_and_nothing_is_skipped() {
    let mut env = Env::new();
    let broker = env.start(Engine::Memory).await;
    let addr = broker.local_addr();
    let (alice, _publisher) = alice_published(&env, addr, 20).await;
    let (first, second) = bob_replicas(&env, addr).await;

    let mut reading = within("subscribe", first.subscribe(chat(), workers())).await.unwrap();
    let standby = tokio::spawn(async move {
        let subscription = second.subscribe(chat(), workers()).await;
        (second, subscription)
    });
    let seen = read(&mut reading, 8).await;
    assert_eq!(seen.last().unwrap().0, Offset(7));
    // Gone: its connection closes without an Unsubscribe.
    drop(reading);
    first.close().await;

    let (second, subscription) = within("the standby takes over", standby).await.unwrap();
    let mut taken_over = subscription.unwrap();
    let first_offset = within("a message", taken_over.next()).await.unwrap().unwrap().offset;
    assert!(first_offset <= Offset(8), "skipped past the first subscriber's last ack: {first_offset}");
    let rest = read(&mut taken_over, 19 - first_offset.0 as usize).await;
    assert_eq!(rest.last().unwrap(), &(Offset(19), Bytes::from("m19")));
    second.close().await;
    alice.close().await;
    broker.shutdown().await.unwrap();
}
