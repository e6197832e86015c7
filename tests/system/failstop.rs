//! Fail-stop: a failed fsync stops the broker with its own exit status, nothing is acknowledged after it,
//! and a restart on the same folder serves every acknowledged message and takes publishes again. The data
//! folder is on [`FaultFs`], which fails fsync on demand.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use crate::faultfs::FaultFs;
use crate::harness::*;
use bytes::Bytes;
use futures_util::StreamExt;
use sealpost_broker::server::STORAGE_FAILED_EXIT;
use sealpost_client::{
    Client, ClientOptions, Error, ErrorCode, Identity, PublisherOptions, Reconnect, RetryBudget,
    SubscribeOptions,
};
use sealpost_protocol::{StartAt, Topic};

fn chat() -> Topic {
    Topic::new("demo.chat").unwrap()
}

/// A broker that stops is noticed at once (it closes its connections as it exits), with one reconnection
/// attempt: publishes in flight fail fast instead of waiting for a broker that is gone. The idle timeout
/// only matters to a broker that vanishes. It was 1 s, and once, on a loaded 2-core machine (a CI run with
/// the JetStream cluster's tests beside it), the first refused publish came back as a lost connection
/// instead of the storage error; a silent second on a starved machine is the likely cause, so: 5 s.
fn fast_failing() -> ClientOptions {
    ClientOptions {
        connect_timeout: Duration::from_millis(500),
        idle_timeout: Duration::from_secs(5),
        reconnect: Reconnect {
            budget: RetryBudget::Retries(1),
            initial_delay: Duration::from_millis(50),
            ..Reconnect::default()
        },
        ..ClientOptions::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_fsync_stops_the_broker_with_its_exit_status_and_a_restart_serves_every_acked_message() {
    let started = Instant::now();
    let mut env = Env::new();
    // Dropped last: after every broker (locals drop in reverse order).
    let fs = FaultFs::mount(&env.dir.path().join("backing"), &env.data_dir());
    let config = env.write_config();
    let mut broker = BrokerProcess::start(&config);
    let alice = Identity::load(env.identity("alice", broker.addr)).unwrap();
    let alice = within("alice connects", Client::connect_with(&alice, fast_failing())).await.unwrap();
    let publisher = within("publisher", alice.publisher(chat(), PublisherOptions::default())).await.unwrap();

    // Acknowledged while the disk works: one at a time, then pipelined.
    let mut acked: Vec<(u64, Bytes)> = Vec::new();
    for i in 0..20 {
        let p = Bytes::from(format!("before-{i}"));
        let receipt = within("publish", publisher.publish(p.clone())).await.unwrap();
        acked.push((receipt.offset.0, p));
    }
    let pending: Vec<_> = (0..100)
        .map(|i| {
            let p = Bytes::from(format!("pipelined-{i}"));
            (p.clone(), publisher.publish(p))
        })
        .collect();
    for (p, ack) in pending {
        acked.push((within("pipelined publish", ack).await.unwrap().offset.0, p));
    }
    assert_eq!(fs.failed_fsyncs(), 0);

    // The disk starts failing fsync: the next publishes are refused, none acknowledged, and the broker
    // exits with its own status.
    fs.fail_fsync(true);
    let failing_from = Instant::now();
    let failing: Vec<_> = (0..20).map(|i| publisher.publish(Bytes::from(format!("failing-{i}")))).collect();
    let mut refused = Vec::new();
    for ack in failing {
        match within("publish while fsync fails", ack).await {
            Ok(receipt) => panic!("a publish was acknowledged after the failed fsync: {receipt:?}"),
            Err(e) => refused.push(e),
        }
    }
    let first = &refused[0];
    assert!(
        matches!(first, Error::Refused { code, .. } if *code == ErrorCode::INTERNAL),
        "the first publish after the failed fsync got {first:?}, not the storage error (INTERNAL)"
    );
    let status = broker.wait_within(Duration::from_secs(30)).unwrap_or_else(|| {
        panic!("the broker did not exit within 30 s of a failed fsync; its log:\n{}", broker.log_text())
    });
    let log = broker.log_text();
    assert_eq!(status.code(), Some(STORAGE_FAILED_EXIT), "exit status {status}; its log:\n{log}");
    assert!(log.contains("storage failed, stopping the broker"), "no reason logged:\n{log}");
    assert!(fs.failed_fsyncs() >= 1);
    let stopped_after = failing_from.elapsed();
    drop(broker);

    // The disk works again: a restart on the same folder serves every acknowledged message, in order,
    // verified by the subscriber.
    fs.fail_fsync(false);
    let broker = BrokerProcess::start(&config);
    let bob = Identity::load(env.identity("bob", broker.addr)).unwrap();
    let bob = within("bob connects", Client::connect(&bob)).await.unwrap();
    let from_start = SubscribeOptions { from: StartAt::Earliest, durable: None, shared: false };
    let mut sub = within("bob subscribes", bob.subscribe(chat(), from_start)).await.unwrap();
    let last = acked.iter().map(|(o, _)| *o).max().unwrap();
    let mut stored = Vec::new();
    while stored.len() as u64 <= last {
        let m = within("stored message", sub.next())
            .await
            .expect("subscription ended")
            .unwrap_or_else(|e| panic!("error item at offset {}: {e}", stored.len()));
        assert_eq!(m.offset.0, stored.len() as u64, "offsets are consecutive from 0, each once");
        stored.push(m.payload);
    }
    for (offset, payload) in &acked {
        assert_eq!(&stored[*offset as usize], payload, "acknowledged message at {offset} lost or changed");
    }

    // And it takes publishes again (alice's chain continues where the broker says it is).
    broker_still_serves(&env, broker.addr).await;
    broker.terminate();
    eprintln!(
        "{} acknowledged messages; {} publishes refused after the failed fsync ({} fsyncs failed), the \
         broker exited with {STORAGE_FAILED_EXIT} {:.1} s after the failures began; all served after the \
         restart; {:.1} s",
        acked.len(),
        refused.len(),
        fs.failed_fsyncs(),
        stopped_after.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
}
