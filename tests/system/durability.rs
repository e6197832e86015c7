//! What is on disk: payloads never are in plaintext, and every acknowledged message survives SIGKILL.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::harness::*;
use bytes::Bytes;
use futures_util::StreamExt;
use sealpost_broker::store::testing::TestStore;
use sealpost_client::{
    Client, ClientOptions, Identity, PublisherOptions, Reconnect, RetryBudget, SubscribeOptions,
};
use sealpost_protocol::{StartAt, Topic};

fn chat() -> Topic {
    Topic::new("demo.chat").unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payload_marker_never_appears_in_any_file_under_the_data_folder() {
    const MARKER: &str = "MARKER-7d1e4f9a-sealpost-plaintext";
    let mut env = Env::new();
    let broker = env.start(Engine::Sled).await;
    let alice = Identity::load(env.identity("alice", broker.local_addr())).unwrap();
    let alice = within("connect", Client::connect(&alice)).await.unwrap();
    let publisher = alice.publisher(chat(), PublisherOptions::default()).await.unwrap();
    for i in 0..50 {
        within("publish", publisher.publish(Bytes::from(format!("{MARKER} #{i}")))).await.unwrap();
    }
    // The subscriber does read it back in plaintext.
    let bob = Identity::load(env.identity("bob", broker.local_addr())).unwrap();
    let bob = within("connect", Client::connect(&bob)).await.unwrap();
    let mut sub = bob
        .subscribe(chat(), SubscribeOptions { from: StartAt::Earliest, durable: None, shared: false })
        .await
        .unwrap();
    let m = within("message", sub.next()).await.unwrap().unwrap();
    assert_eq!(m.payload, Bytes::from(format!("{MARKER} #0")));
    broker.shutdown().await.unwrap();

    let files = files_under(&env.data_dir());
    let all: Vec<u8> = files.iter().flat_map(|f| std::fs::read(f).unwrap()).collect();
    assert!(!all.windows(MARKER.len()).any(|w| w == MARKER.as_bytes()), "plaintext payload found on disk");
    // Positive control: the batches are in those files (their headers carry alice's key in the clear).
    let alice_key = env.key("alice").public_key();
    assert!(
        all.windows(32).any(|w| w == alice_key.as_bytes()),
        "the stored batches were not found in {files:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_message_survives_sigkill() {
    let mut env = Env::new();
    let config = env.write_config();
    let broker = BrokerProcess::start(&config);
    let options = ClientOptions {
        reconnect: Reconnect {
            budget: RetryBudget::Retries(1),
            initial_delay: Duration::from_millis(50),
            ..Reconnect::default()
        },
        ..ClientOptions::default()
    };
    let alice = Identity::load(env.identity("alice", broker.addr)).unwrap();
    let alice = within("connect", Client::connect_with(&alice, options)).await.unwrap();
    let publisher = Arc::new(alice.publisher(chat(), PublisherOptions::default()).await.unwrap());
    let acked = Arc::new(Mutex::new(Vec::<(u64, Bytes)>::new()));

    // Publish continuously, recording each acknowledgement as it arrives.
    let (enough_tx, enough_rx) = tokio::sync::oneshot::channel();
    let task = {
        let (publisher, acked) = (publisher.clone(), acked.clone());
        tokio::spawn(async move {
            let mut enough = Some(enough_tx);
            for round in 0u64.. {
                let pending: Vec<_> = (0..200)
                    .map(|i| {
                        let payload = Bytes::from(format!("r{round}-m{i}"));
                        (payload.clone(), publisher.publish(payload))
                    })
                    .collect();
                for (payload, ack) in pending {
                    match ack.await {
                        Ok(receipt) => acked.lock().unwrap().push((receipt.offset.0, payload)),
                        Err(_) => return,
                    }
                }
                if round == 4 {
                    if let Some(tx) = enough.take() {
                        let _ = tx.send(());
                    }
                }
            }
        })
    };
    within("1000 acknowledged messages", enough_rx).await.unwrap();
    broker.kill();
    // Publishes in flight at the kill fail (after one reconnect attempt); what was acknowledged is recorded.
    if tokio::time::timeout(Duration::from_secs(20), task).await.is_err() {
        panic!("publisher did not give up after the broker died");
    }
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() >= 1000);

    let broker = BrokerProcess::start(&config);
    let bob = Identity::load(env.identity("bob", broker.addr)).unwrap();
    let bob = within("connect", Client::connect(&bob)).await.unwrap();
    let mut sub = bob
        .subscribe(chat(), SubscribeOptions { from: StartAt::Earliest, durable: None, shared: false })
        .await
        .unwrap();
    let last = acked.iter().map(|(o, _)| *o).max().unwrap();
    let mut stored = Vec::new();
    while stored.len() as u64 <= last {
        let m = within("stored message", sub.next()).await.unwrap().expect("integrity error after restart");
        assert_eq!(m.offset.0, stored.len() as u64, "offsets are consecutive, each once");
        stored.push(m.payload);
    }
    for (offset, payload) in &acked {
        assert_eq!(&stored[*offset as usize], payload, "acknowledged message at {offset} lost or changed");
    }

    // The store opened cleanly and takes new publishes that continue alice's chain.
    let alice = Identity::load(env.identity("alice", broker.addr)).unwrap();
    let alice = within("connect", Client::connect(&alice)).await.unwrap();
    let publisher = alice.publisher(chat(), PublisherOptions::default()).await.unwrap();
    let receipt = within("publish after restart", publisher.publish(Bytes::from("after"))).await.unwrap();
    assert!(receipt.offset.0 > last);
    broker.kill();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_ack_follows_a_sync_that_covers_its_batch() {
    use sealpost_broker::server::{Broker, BrokerOptions, ServerLimits};
    use std::sync::atomic::{AtomicU64, Ordering};
    let mut env = Env::new();
    // A sled store that records, for every append, how many syncs had completed, and counts completed
    // syncs: each acknowledged batch must then be covered by a sync that finished after it was appended.
    let audit = Arc::new(TestStore::new(sealpost_broker::store::DiskStore::open(&env.data_dir()).unwrap()));
    let completed = Arc::new(AtomicU64::new(0));
    let appended_at = Arc::new(Mutex::new(std::collections::BTreeMap::<u64, u64>::new()));
    {
        let (completed, appended_at) = (completed.clone(), appended_at.clone());
        audit.before_append(move |batch| {
            appended_at.lock().unwrap().insert(batch.offset().0, completed.load(Ordering::SeqCst));
            Ok(())
        });
    }
    {
        let completed = completed.clone();
        audit.after_sync(move || {
            completed.fetch_add(1, Ordering::SeqCst);
        });
    }
    env.seed(audit.as_ref());
    let options = BrokerOptions {
        listen: "127.0.0.1:0".parse().unwrap(),
        tls: env.tls(),
        acl: sealpost_broker::acl::Acl::from_toml(ACL).unwrap(),
        store: audit.clone(),
        authority: Some(env.authority.public_key()),
        limits: ServerLimits::default(),
        metrics: None,
        audit: None,
        retention: Default::default(),
    };
    let broker = Broker::start(options).await.unwrap();
    let alice = Identity::load(env.identity("alice", broker.local_addr())).unwrap();
    let alice = within("connect", Client::connect(&alice)).await.unwrap();
    let publisher = alice.publisher(chat(), PublisherOptions::default()).await.unwrap();
    // Pipelined, so that groups form and several batches share a sync.
    let pending: Vec<_> = (0..2_000).map(|i| publisher.publish(Bytes::from(format!("m{i}")))).collect();
    for ack in pending {
        let offset = within("ack", ack).await.unwrap().offset.0;
        // Read after the ack arrived: a sync completed after the append of every batch acknowledged so far.
        let completed_now = completed.load(Ordering::SeqCst);
        let appended_at = appended_at.lock().unwrap();
        let (&first, &syncs_before) = appended_at.range(..=offset).next_back().unwrap();
        assert!(first <= offset);
        assert!(
            completed_now > syncs_before,
            "offset {offset} acknowledged before any sync after its append"
        );
    }
    let syncs = completed.load(Ordering::SeqCst);
    let batches = appended_at.lock().unwrap().len() as u64;
    assert!(syncs >= 1 && syncs <= batches + 2, "syncs {syncs}, batches {batches}");
    eprintln!("2000 messages in {batches} batches, acknowledged after {syncs} syncs (group commit)");
    broker.shutdown().await.unwrap();
}
