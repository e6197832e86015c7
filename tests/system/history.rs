//! The whole policy history is readable: a subscriber that meets a batch of an epoch older than the policies
//! it holds walks the topic's policy chain back to it (`GetPolicyHistory`, page by page, every link
//! checked) and opens the batch with that epoch's content key. A real broker on 127.0.0.1:0, the real
//! client; the policies are stored through the broker by `admin`, signed by the env's topic authority.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::harness::*;
use bytes::Bytes;
use futures_util::StreamExt;
use sealpost_broker::server::{Broker, ServerLimits};
use sealpost_client::{Client, Identity, PublisherOptions, SubscribeOptions};
use sealpost_protocol::{
    issue_policy, ContentKey, Epoch, Frame, Limits, PolicyParams, SignedPolicy, StartAt, Timestamp, Topic,
    VerifiedPolicy,
};

fn chat() -> Topic {
    Topic::new("demo.chat").unwrap()
}

async fn client(env: &Env, who: &str, broker: &Broker) -> Client {
    let identity = Identity::load(env.identity(who, broker.local_addr())).unwrap();
    within("connect", Client::connect(&identity)).await.unwrap()
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64
}

/// The next policy of demo.chat after `prev` (alice publishes, bob subscribes), with a fresh content key,
/// created now, stored through the broker by admin.
async fn rotate(env: &Env, admin: &Client, prev: &VerifiedPolicy) -> VerifiedPolicy {
    let epoch = prev.epoch().0 + 1;
    let params = PolicyParams {
        topic: chat(),
        epoch: Epoch(epoch),
        prev: Some(prev),
        members: vec![env.member("alice", true, true), env.member("bob", false, true)],
        created_at: Timestamp(now_ms()),
    };
    let key = ContentKey::from_bytes(&[0x40 + epoch as u8; 32]);
    let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(epoch);
    let next = issue_policy(&env.authority, params, &key, &Limits::default(), &mut rng).unwrap();
    within("store policy", admin.put_policy(&next)).await.unwrap();
    next
}

/// alice publishes `payload` from a new client (so it seals under the topic's current epoch).
async fn publish_as_new_alice(env: &Env, broker: &Broker, payload: &str) {
    let alice = client(env, "alice", broker).await;
    let one_each = PublisherOptions { max_batch: 1, ..PublisherOptions::default() };
    let publisher = within("publisher", alice.publisher(chat(), one_each)).await.unwrap();
    within("publish", publisher.publish(Bytes::from(payload.to_owned()))).await.unwrap();
    within("publisher close", publisher.close()).await.unwrap();
    alice.close().await;
}

/// Publishes one message in each epoch 1..=`epochs` (rotating after each), then has a new bob read the topic
/// from the earliest message: every message once, in order, from the epoch it was sealed in.
async fn read_every_epoch(env: &Env, broker: &Broker, epochs: u64) {
    let admin = client(env, "admin", broker).await;
    let mut current = env.first_policy("demo.chat");
    for epoch in 1..=epochs {
        publish_as_new_alice(env, broker, &format!("sealed in epoch {epoch}")).await;
        if epoch < epochs {
            current = rotate(env, &admin, &current).await;
        }
    }
    let bob = client(env, "bob", broker).await;
    let options = SubscribeOptions { from: StartAt::Earliest, durable: None, shared: false };
    let mut sub = within("subscribe", bob.subscribe(chat(), options)).await.unwrap();
    for epoch in 1..=epochs {
        let m = within("next message", sub.next()).await.expect("the stream ended").unwrap();
        assert_eq!(m.payload, Bytes::from(format!("sealed in epoch {epoch}")));
        // Each alice process continues the chain of the one before: her state folder holds its head.
        assert_eq!((m.offset.0, m.seq, m.publisher.as_str()), (epoch - 1, epoch, "alice"));
    }
    // Nothing else was queued: the next item is a message published now.
    publish_as_new_alice(env, broker, "live").await;
    let m = within("live message", sub.next()).await.expect("the stream ended").unwrap();
    assert_eq!((m.payload, m.offset.0), (Bytes::from("live"), epochs));
    // With the older epochs in bob's book, fetching the current policies again is no rollback.
    let held = within("policies", bob.policies(&chat())).await.unwrap();
    assert_eq!(held.last().map(VerifiedPolicy::epoch), Some(Epoch(epochs)));
    bob.close().await;
    admin.close().await;
}

async fn subscriber_reads_epoch_one_after_rotations_to_epoch_five(engine: Engine) {
    let mut env = Env::new();
    let broker = env.start(engine).await;
    read_every_epoch(&env, &broker, 5).await;
    within("broker shutdown", broker.shutdown()).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriber_reads_epoch_one_after_rotations_to_epoch_five_sled() {
    subscriber_reads_epoch_one_after_rotations_to_epoch_five(Engine::Sled).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriber_reads_epoch_one_after_rotations_to_epoch_five_memory() {
    subscriber_reads_epoch_one_after_rotations_to_epoch_five(Engine::Memory).await;
}

/// A frame limit so small that a page of history holds three policies of demo.chat at most: the eight
/// epochs are served in several pages (checked with a bare `GetPolicyHistory`), and bob still reads the
/// message of every epoch, so the walk fetched them all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_history_longer_than_one_page_is_fetched_whole() {
    const EPOCHS: u64 = 8;
    let mut env = Env::new();
    let limits = ServerLimits { max_frame_len: 1500, ..ServerLimits::default() };
    let broker = env.start_with(Engine::Sled, "127.0.0.1:0".parse().unwrap(), limits).await;
    read_every_epoch(&env, &broker, EPOCHS).await;

    let raw_bob =
        env.ca.issue(&sealpost_broker::pki::LeafSpec::client("bob", &[env.key("bob").public_key()]));
    let raw =
        RawClient::connect(broker.local_addr(), &env.ca.cert_pem(), ClientAuth::Cert(&raw_bob.unwrap()))
            .await
            .unwrap();
    let mut before = None;
    let mut pages = Vec::new();
    for _ in 0..EPOCHS {
        let ask = Frame::GetPolicyHistory { request_id: 1, topic: chat(), before, max: 100 };
        let answer = raw.exchange(&[ask], 1).await.unwrap().pop().unwrap();
        let Frame::Policies { policies, .. } = answer else { panic!("{answer:?}") };
        if policies.is_empty() {
            break;
        }
        let epochs: Vec<u64> = policies
            .into_iter()
            .map(|p| SignedPolicy::decode(p, &Limits::default()).unwrap().epoch().0)
            .collect();
        before = epochs.last().map(|e| Epoch(*e));
        pages.push(epochs);
    }
    assert!(pages.len() > 1, "one page held the whole history: {pages:?}");
    assert!(pages.iter().all(|p| p.len() <= 3), "{pages:?}");
    assert_eq!(pages.concat(), (1..=EPOCHS).rev().collect::<Vec<_>>(), "newest first, each epoch once");
    within("broker shutdown", broker.shutdown()).await.unwrap();
}
