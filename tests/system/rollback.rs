//! A broker host that rolls back its data folder, as users see it: the real `sealpost-broker` binary on a
//! disk store, the real client with its state folders (docs/threat-model.md, "rolled-back tail").
//!
//! The attack is the simplest one a host's owner has: keep a copy of the data folder, let the broker
//! acknowledge and deliver more, stop it and put the copy back. Every stored record is then intact and
//! consistent; only what was acknowledged after the copy is gone.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use crate::harness::*;
use bytes::Bytes;
use futures_util::StreamExt;
use sealpost_client::{
    Client, ClientOptions, Error, Identity, PublisherOptions, Reconnect, RetryBudget, SubscribeOptions,
};
use sealpost_protocol::{StartAt, Topic};

fn chat() -> Topic {
    Topic::new("demo.chat").unwrap()
}

/// Connects as `who`, with its state folder beside its identity file.
async fn connect(env: &Env, who: &str, addr: SocketAddr) -> Client {
    let identity = Identity::load(env.identity(who, addr)).unwrap();
    within("connect", Client::connect(&identity)).await.unwrap()
}

/// alice's process publishes `payloads`, one batch each, and ends (her state folder keeps her chain's
/// acknowledged head).
async fn alice_publishes(env: &Env, addr: SocketAddr, payloads: &[&str]) {
    let alice = connect(env, "alice", addr).await;
    let options = PublisherOptions { max_batch: 1, ..PublisherOptions::default() };
    let publisher = within("publisher", alice.publisher(chat(), options)).await.unwrap();
    for payload in payloads {
        within("publish", publisher.publish(Bytes::from(payload.to_string()))).await.unwrap();
    }
    within("close publisher", publisher.close()).await.unwrap();
    within("close", alice.close()).await;
}

/// The next `n` payloads of `sub`, failing on any error item.
async fn payloads(sub: &mut sealpost_client::Subscription, n: usize) -> Vec<Bytes> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(within("a message", sub.next()).await.expect("the subscription ended").unwrap().payload);
    }
    out
}

fn texts(items: &[&str]) -> Vec<Bytes> {
    items.iter().map(|s| Bytes::from(s.to_string())).collect()
}

/// The broker's config, listening on `listen` from now on (so a restarted broker is where its clients
/// reconnect to).
fn listen_at(config: &Path, listen: SocketAddr) {
    let text = std::fs::read_to_string(config).unwrap();
    let text = text.replace("listen = \"127.0.0.1:0\"", &format!("listen = \"{listen}\""));
    std::fs::write(config, text).unwrap();
}

/// alice publishes m0 and m1; the host keeps a copy of the data folder; alice's next process publishes m2
/// and m3 on the same chain; bob reads all four twice, live and through the durable subscription "audit"
/// (acknowledged). The host then stops the broker, puts the copy back and starts it again: m2 and m3 are
/// gone, and everything stored is consistent. The live subscription, reconnecting, reports the rollback
/// of alice's chain; so do alice's next publisher (which does not start) and bob's next process resuming
/// "audit" (before m0 and m1 again, which it still reads).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tail_removed_from_the_data_folder_is_reported_to_the_publishers_next_process_and_to_subscribers_that_had_seen_it(
) {
    let mut env = Env::new();
    let config = env.write_config();
    let broker = BrokerProcess::start(&config);
    let addr = broker.addr;
    listen_at(&config, addr);
    alice_publishes(&env, addr, &["m0", "m1"]).await;
    broker.terminate();
    let copy = env.dir.path().join("data-copy");
    copy_dir(&env.data_dir(), &copy);

    let broker = BrokerProcess::start(&config);
    assert_eq!(broker.addr, addr);
    alice_publishes(&env, addr, &["m2", "m3"]).await;
    let bob = connect(&env, "bob", addr).await;
    let durable =
        || SubscribeOptions { from: StartAt::Earliest, durable: Some("audit".into()), shared: false };
    let mut audit = within("subscribe", bob.subscribe(chat(), durable())).await.unwrap();
    let mut last = None;
    for _ in 0..4 {
        let m = within("a message", audit.next()).await.unwrap().unwrap();
        last = Some(m);
    }
    let last = last.unwrap();
    assert_eq!((&last.payload[..], last.offset.0, last.seq), (&b"m3"[..], 3, 4));
    audit.ack(&last).unwrap();
    within("close audit", audit.close()).await.unwrap();
    within("close", bob.close()).await;
    // bob's live reader has its own process (and state folder), and reconnects patiently.
    let watcher = Identity::load(env.identity("bob", addr)).unwrap();
    let patient = ClientOptions {
        state: sealpost_client::StateLocation::Folder(env.dir.path().join("bob-live.state")),
        reconnect: Reconnect {
            initial_delay: Duration::from_millis(50),
            max_delay: Duration::from_millis(500),
            budget: RetryBudget::Retries(400),
        },
        ..ClientOptions::default()
    };
    let watcher = within("connect", Client::connect_with(&watcher, patient)).await.unwrap();
    let options = SubscribeOptions { from: StartAt::Earliest, durable: None, shared: false };
    let mut live = within("subscribe", watcher.subscribe(chat(), options)).await.unwrap();
    assert_eq!(payloads(&mut live, 4).await, texts(&["m0", "m1", "m2", "m3"]));

    // The host puts the copy back.
    broker.terminate();
    copy_dir(&copy, &env.data_dir());
    let _broker = BrokerProcess::start(&config);

    let rolled_back = |what: &str, item: Option<Result<sealpost_client::Message, Error>>| match item {
        Some(Err(Error::RolledBack { topic, acknowledged, broker, .. })) => {
            assert_eq!((topic, acknowledged, broker), (chat(), 4, 2), "{what}");
        }
        other => panic!("{what}: expected RolledBack, got {other:?}"),
    };
    rolled_back("the live subscription", within("an item", live.next()).await);

    let alice = connect(&env, "alice", addr).await;
    let options = PublisherOptions { max_batch: 1, ..PublisherOptions::default() };
    match within("publisher", alice.publisher(chat(), options)).await {
        Err(Error::RolledBack { topic, acknowledged, broker, .. }) => {
            assert_eq!((topic, acknowledged, broker), (chat(), 4, 2));
        }
        Err(other) => panic!("expected RolledBack, got {other}"),
        Ok(_) => panic!("alice's publisher started on a rolled-back chain"),
    }

    let bob = connect(&env, "bob", addr).await;
    let mut audit = within("subscribe", bob.subscribe(chat(), durable())).await.unwrap();
    rolled_back("the durable subscription's next process", within("an item", audit.next()).await);
    assert_eq!(payloads(&mut audit, 2).await, texts(&["m0", "m1"]));
    within("close audit", audit.close()).await.unwrap();
}
