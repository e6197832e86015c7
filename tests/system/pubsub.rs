//! Publish/subscribe end to end: a real broker on 127.0.0.1:0, real QUIC with mutual TLS, certificates made
//! in the test, and the real client. Each scenario runs against both storage engines.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::harness::*;
use bytes::Bytes;
use futures_util::StreamExt;
use sealpost_client::{Client, Identity, Message, PublisherOptions, SubscribeOptions, Subscription};
use sealpost_protocol::{Offset, StartAt, Topic};

fn chat() -> Topic {
    Topic::new("demo.chat").unwrap()
}

async fn client(env: &Env, who: &str, broker: &sealpost_broker::server::Broker) -> Client {
    let identity = Identity::load(env.identity(who, broker.local_addr())).unwrap();
    within("connect", Client::connect(&identity)).await.unwrap()
}

async fn publish_all(client: &Client, topic: Topic, payloads: impl IntoIterator<Item = String>) -> Vec<u64> {
    let publisher = client.publisher(topic, PublisherOptions::default()).await.unwrap();
    // Pipelined: every publish is in flight before the first answer is awaited.
    let pending: Vec<_> = payloads.into_iter().map(|p| publisher.publish(Bytes::from(p))).collect();
    let mut offsets = Vec::new();
    for p in pending {
        offsets.push(within("publish ack", p).await.unwrap().offset.0);
    }
    publisher.close().await.unwrap();
    offsets
}

async fn next(sub: &mut Subscription) -> Message {
    within("next message", sub.next()).await.expect("stream ended").expect("integrity error")
}

async fn subscribe(client: &Client, from: StartAt, durable: Option<&str>) -> Subscription {
    let options = SubscribeOptions { from, durable: durable.map(String::from), shared: false };
    within("subscribe", client.subscribe(chat(), options)).await.unwrap()
}

async fn round_trip(engine: Engine) {
    let mut env = Env::new();
    let broker = env.start(engine).await;
    let alice = client(&env, "alice", &broker).await;
    let bob = client(&env, "bob", &broker).await;
    let offsets = publish_all(&alice, chat(), ["hello bob".to_string()]).await;
    assert_eq!(offsets, vec![0]);
    let mut sub = subscribe(&bob, StartAt::Earliest, None).await;
    let m = next(&mut sub).await;
    assert_eq!(m.payload, Bytes::from("hello bob"));
    assert_eq!(m.publisher, "alice");
    assert_eq!(m.publisher_key, env.key("alice").public_key());
    assert_eq!(m.topic, chat());
    assert_eq!((m.offset.0, m.seq), (0, 1));
    broker.shutdown().await.unwrap();
}

async fn subscribe_from_earliest_latest_and_offset(engine: Engine) {
    let mut env = Env::new();
    let broker = env.start(engine).await;
    let alice = client(&env, "alice", &broker).await;
    let bob = client(&env, "bob", &broker).await;
    publish_all(&alice, chat(), (0..5).map(|i| format!("m{i}"))).await;

    let mut earliest = subscribe(&bob, StartAt::Earliest, None).await;
    for i in 0..5 {
        assert_eq!(next(&mut earliest).await.payload, Bytes::from(format!("m{i}")));
    }
    let mut from_3 = subscribe(&bob, StartAt::Offset(Offset(3)), None).await;
    assert_eq!(next(&mut from_3).await.payload, Bytes::from("m3"));
    assert_eq!(next(&mut from_3).await.payload, Bytes::from("m4"));
    let mut latest = subscribe(&bob, StartAt::Latest, None).await;
    publish_all(&alice, chat(), ["m5".to_string()]).await;
    let m = next(&mut latest).await;
    assert_eq!((m.payload, m.offset.0), (Bytes::from("m5"), 5));
    // And the live message reaches the older subscriptions too, after what they already had.
    assert_eq!(next(&mut earliest).await.payload, Bytes::from("m5"));
    broker.shutdown().await.unwrap();
}

async fn ten_thousand_messages_arrive_in_order_each_once(engine: Engine) {
    const N: u64 = 10_000;
    let mut env = Env::new();
    let broker = env.start(engine).await;
    let alice = client(&env, "alice", &broker).await;
    let bob = client(&env, "bob", &broker).await;
    let mut sub = subscribe(&bob, StartAt::Earliest, None).await;
    let offsets = publish_all(&alice, chat(), (0..N).map(|i| format!("message {i}"))).await;
    assert_eq!(offsets, (0..N).collect::<Vec<_>>(), "acks carry consecutive offsets");
    for i in 0..N {
        let m = next(&mut sub).await;
        assert_eq!((m.offset.0, m.seq), (i, i + 1));
        assert_eq!(m.payload, Bytes::from(format!("message {i}")));
    }
    broker.shutdown().await.unwrap();
}

async fn durable_subscription_resumes_after_client_reconnect(engine: Engine) {
    let mut env = Env::new();
    let broker = env.start(engine).await;
    let alice = client(&env, "alice", &broker).await;
    publish_all(&alice, chat(), (0..10).map(|i| format!("m{i}"))).await;
    {
        let bob = client(&env, "bob", &broker).await;
        let mut sub = subscribe(&bob, StartAt::Earliest, Some("inbox")).await;
        for _ in 0..4 {
            let m = next(&mut sub).await;
            sub.ack(&m).unwrap();
        }
        within("close subscription", sub.close()).await.unwrap();
        bob.close().await;
    }
    let bob = client(&env, "bob", &broker).await;
    // `from` is ignored for a durable subscription that exists.
    let mut sub = subscribe(&bob, StartAt::Latest, Some("inbox")).await;
    let m = next(&mut sub).await;
    assert_eq!((m.payload, m.offset.0), (Bytes::from("m4"), 4));
    broker.shutdown().await.unwrap();
}

async fn durable_subscription_resumes_after_broker_restart(engine: Engine) {
    let mut env = Env::new();
    let broker = env.start(engine).await;
    let alice = client(&env, "alice", &broker).await;
    publish_all(&alice, chat(), (0..10).map(|i| format!("m{i}"))).await;
    let bob = client(&env, "bob", &broker).await;
    let mut sub = subscribe(&bob, StartAt::Earliest, Some("inbox")).await;
    for _ in 0..7 {
        let m = next(&mut sub).await;
        sub.ack(&m).unwrap();
    }
    within("close subscription", sub.close()).await.unwrap();
    bob.close().await;
    alice.close().await;
    broker.shutdown().await.unwrap();

    let broker = env.start(engine).await;
    let bob = client(&env, "bob", &broker).await;
    let mut sub = subscribe(&bob, StartAt::Earliest, Some("inbox")).await;
    let m = next(&mut sub).await;
    assert_eq!((m.payload, m.offset.0), (Bytes::from("m7"), 7));
    broker.shutdown().await.unwrap();
}

async fn retried_batch_is_stored_once(engine: Engine) {
    use rand::SeedableRng;
    use sealpost_broker::pki::LeafSpec;
    use sealpost_protocol::{seal, ChainHead, Epoch, Frame, Limits, SealParams, Timestamp};

    let mut env = Env::new();
    let broker = env.start(engine).await;
    let cert = env.ca.issue(&LeafSpec::client("alice", &[env.key("alice").public_key()])).unwrap();
    let raw =
        RawClient::connect(broker.local_addr(), &env.ca.cert_pem(), ClientAuth::Cert(&cert)).await.unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let seal_at = |head: ChainHead, msg: &[u8], rng: &mut rand::rngs::StdRng| {
        let params = SealParams {
            topic: chat(),
            epoch: Epoch(1),
            // The chain `Head` answers for.
            chain: sealpost_protocol::ChainId::LEGACY,
            first_seq: head.next_seq,
            prev_digest: head.prev_digest,
            created_at: Timestamp(1),
        };
        seal(env.key("alice"), &env.content_key, params, &[msg], &Limits::default(), rng).unwrap()
    };
    let first = seal_at(ChainHead::GENESIS, b"once", &mut rng);
    let second = seal_at(ChainHead::after(&first), b"twice?", &mut rng);
    let publish = |id, b: &sealpost_protocol::VerifiedBatch| Frame::Publish {
        request_id: id,
        batch: b.as_bytes().clone(),
    };
    // The same batch three times (a publisher retrying after a lost ack), then the next one.
    let answers = raw
        .exchange(&[publish(1, &first), publish(2, &first), publish(3, &first), publish(4, &second)], 4)
        .await
        .unwrap();
    assert_eq!(
        answers,
        vec![
            Frame::Published { request_id: 1, first_offset: Offset(0), count: 1 },
            Frame::Published { request_id: 2, first_offset: Offset(0), count: 1 },
            Frame::Published { request_id: 3, first_offset: Offset(0), count: 1 },
            Frame::Published { request_id: 4, first_offset: Offset(1), count: 1 },
        ]
    );
    let bob = client(&env, "bob", &broker).await;
    let mut sub = subscribe(&bob, StartAt::Earliest, None).await;
    assert_eq!(next(&mut sub).await.payload, Bytes::from("once"));
    let m = next(&mut sub).await;
    assert_eq!((m.payload, m.offset.0), (Bytes::from("twice?"), 1));
    broker.shutdown().await.unwrap();
}

macro_rules! for_each_engine {
    ($($scenario:ident),* $(,)?) => {
        mod sled {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $scenario() {
                    super::$scenario(super::Engine::Sled).await
                }
            )*
        }
        mod memory {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $scenario() {
                    super::$scenario(super::Engine::Memory).await
                }
            )*
        }
    };
}

for_each_engine!(
    round_trip,
    subscribe_from_earliest_latest_and_offset,
    ten_thousand_messages_arrive_in_order_each_once,
    durable_subscription_resumes_after_client_reconnect,
    durable_subscription_resumes_after_broker_restart,
    retried_batch_is_stored_once,
);
