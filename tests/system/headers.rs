//! User headers end to end: a real broker on 127.0.0.1:0 (each storage engine), alice publishing messages
//! with and without headers through the real client, bob receiving exactly those headers; and what the
//! broker holds of them (ciphertext only). The broker altering them is in `attacks.rs`
//! (`altered_header_bytes_of_a_batch_with_headers_are_reported`); the CLI's `--header` in `cli.rs`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::harness::*;
use bytes::Bytes;
use futures_util::StreamExt;
use sealpost_client::{Client, Headers, Identity, PublisherOptions, SubscribeOptions};
use sealpost_protocol::{StartAt, Topic};

fn chat() -> Topic {
    Topic::new("demo.chat").unwrap()
}

/// A header value that must never appear in the broker's data folder in clear.
const SECRET: &str = "header-value-7d1e0c-SECRET";

/// What alice publishes: (headers, payload), with and without headers, interleaved.
fn outgoing() -> Vec<(Headers, String)> {
    let traced = |i: usize| {
        Headers::new().with("content-type", "text/plain").unwrap().with("trace-id", format!("t{i}")).unwrap()
    };
    let mut out = Vec::new();
    for i in 0..40 {
        let headers = match i % 4 {
            0 | 2 => Headers::new(),
            1 => traced(i),
            _ => Headers::new().with("Secret", SECRET).unwrap().with("empty", "").unwrap(),
        };
        out.push((headers, format!("m{i}")));
    }
    out
}

async fn client(env: &Env, who: &str, addr: std::net::SocketAddr) -> Client {
    let identity = Identity::load(env.identity(who, addr)).unwrap();
    within("connect", Client::connect(&identity)).await.unwrap()
}

async fn headers_arrive_exactly_as_published(engine: Engine) {
    let mut env = Env::new();
    let broker = env.start(engine).await;
    let alice = client(&env, "alice", broker.local_addr()).await;
    let bob = client(&env, "bob", broker.local_addr()).await;
    let messages = outgoing();

    // Pipelined, in batches of up to 8 however the publisher cuts them: messages with and without headers
    // alternate, so every batch of two or more mixes them (format version 3), and a batch of one is of
    // version 2 or 3.
    let options = PublisherOptions { max_batch: 8, ..PublisherOptions::default() };
    let publisher = within("publisher", alice.publisher(chat(), options)).await.unwrap();
    let pending: Vec<_> = messages
        .iter()
        .map(|(headers, payload)| publisher.publish_with(headers.clone(), payload.clone()))
        .collect();
    // `publish` as it always was, after them.
    let plain = publisher.publish("plain");
    for p in pending {
        within("publish ack", p).await.unwrap();
    }
    within("publish ack", plain).await.unwrap();
    within("publisher close", publisher.close()).await.unwrap();

    let options = SubscribeOptions { from: StartAt::Earliest, durable: None, shared: false };
    let mut sub = within("subscribe", bob.subscribe(chat(), options)).await.unwrap();
    for (i, (headers, payload)) in messages.iter().enumerate() {
        let m = within("next message", sub.next()).await.expect("stream ended").expect("integrity error");
        assert_eq!((m.offset.0, &m.payload), (i as u64, &Bytes::from(payload.clone())));
        assert_eq!(&m.headers, headers, "message {i}");
        // Debug names the headers but shows no value.
        let shown = format!("{m:?}");
        assert!(!shown.contains(SECRET) && !shown.contains("text/plain"), "{shown}");
    }
    let m = within("next message", sub.next()).await.expect("stream ended").expect("integrity error");
    assert_eq!((m.payload, m.headers), (Bytes::from("plain"), Headers::new()));

    // The broker holds ciphertext: the header value is nowhere in its data folder (the disk engine).
    if matches!(engine, Engine::Sled) {
        let files = files_under(&env.data_dir());
        assert!(!files.is_empty());
        for file in files {
            let bytes = std::fs::read(&file).unwrap();
            assert!(
                !bytes.windows(SECRET.len()).any(|w| w == SECRET.as_bytes()),
                "{} holds it",
                file.display()
            );
        }
    }
    within("subscription close", sub.close()).await.unwrap();
    alice.close().await;
    bob.close().await;
    broker.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_arrive_exactly_as_published_on_disk() {
    headers_arrive_exactly_as_published(Engine::Sled).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_arrive_exactly_as_published_in_memory() {
    headers_arrive_exactly_as_published(Engine::Memory).await
}
