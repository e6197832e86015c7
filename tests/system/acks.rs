//! Acknowledgements of a durable subscription against a real broker: the broker keeps reading acks while
//! a commit waits for its group commit, and commits the newest alone next, so a subscriber that acks every
//! message costs a commit per group commit, not one per ack (`sealpost_acks_received_total` against
//! `sealpost_offset_commits_total`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use sealpost_broker::server::{Broker, ServerLimits};
use sealpost_broker::store::testing::TestStore;
use sealpost_broker::store::{MemoryStore, Store};
use sealpost_protocol::{Frame, Offset, StartAt, Topic};

use crate::harness::*;
use crate::metrics::{metrics_options, scrape, scrape_until};

const ACKS: u64 = 1000;

/// bob acks 1, and while that commit waits at a held sync, acks 2 to 1,000; then his connection dies. The
/// broker read all 1,000 acks during the wait (the metric counts them), and once the sync goes through it
/// commits twice: 1, then 1,000 (what was received before the connection died is not lost).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acks_received_while_a_commit_waits_are_committed_as_the_newest_alone_even_if_the_subscriber_dies() {
    let mut env = Env::new();
    let store = Arc::new(TestStore::new(MemoryStore::new()));
    env.seed(store.as_ref());
    let mut options = env.options(Engine::Memory, "127.0.0.1:0".parse().unwrap(), ServerLimits::default());
    options.store = store.clone();
    options.metrics = Some(metrics_options("127.0.0.1:0", false, &env));
    let broker = within("broker start", Broker::start(options)).await.unwrap();
    let metrics = broker.metrics().unwrap().local_addr();
    let chat = Topic::new("demo.chat").unwrap();
    let mut gate = store.gate_syncs();

    let bob_cert = env.ca.issue(&sealpost_broker::pki::LeafSpec::client("bob", &[])).unwrap();
    let bob = RawClient::connect(broker.local_addr(), &env.ca.cert_pem(), ClientAuth::Cert(&bob_cert))
        .await
        .unwrap();
    let (mut send, mut recv) = bob.conn.open_bi().await.unwrap();
    let subscribe = Frame::Subscribe {
        request_id: 1,
        topic: chat.clone(),
        from: StartAt::Earliest,
        durable: Some("audit".into()),
    };
    send.write_all(&subscribe.to_vec().unwrap()).await.unwrap();
    let Frame::Subscribed { subscription, .. } = read_frame(&mut recv).await else {
        panic!("not subscribed")
    };
    let ack = |n: u64| Frame::Ack { subscription, next_offset: Offset(n) }.to_vec().unwrap();

    send.write_all(&ack(1)).await.unwrap();
    within("the first commit's sync", gate.entered()).await;
    let rest: Vec<u8> = (2..=ACKS).flat_map(ack).collect();
    send.write_all(&rest).await.unwrap();
    let received = "sealpost_acks_received_total{topic=\"demo.chat\"}";
    scrape_until(metrics, |s| s.get(received) == ACKS as f64).await;
    bob.conn.close(0u32.into(), b"gone");

    gate.open();
    let commits = "sealpost_offset_commits_total{topic=\"demo.chat\"}";
    scrape_until(metrics, |s| s.get(commits) >= 2.0).await;
    let bob_name = "bob".parse().unwrap();
    assert_eq!(store.durable_offset(&chat, &bob_name, "audit").unwrap(), Some(Offset(ACKS)));
    let scraped = scrape(metrics).await;
    assert_eq!(scraped.get(commits), 2.0, "{}", scraped.text);
    assert_eq!(scraped.get(received), ACKS as f64);
    broker.shutdown().await.unwrap();
}
