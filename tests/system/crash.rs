//! Crash and disk-full tests of the broker as a subprocess on a sled store: acknowledged messages survive
//! SIGKILL at random moments, and a full device fails publishes cleanly and lets service resume.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::harness::*;
use bytes::Bytes;
use futures_util::StreamExt;
use rand::{Rng, SeedableRng};
use sealpost_client::{
    Client, ClientOptions, Error, ErrorCode, Identity, PublisherOptions, Reconnect, RetryBudget,
    SubscribeOptions,
};
use sealpost_protocol::{StartAt, Topic};

fn chat() -> Topic {
    Topic::new("demo.chat").unwrap()
}

/// Client options for a broker that gets killed: a dead connection is noticed within a second (the killed
/// process sends no close), and one reconnection attempt, so that in-flight publishes fail fast.
fn fast_failing() -> ClientOptions {
    ClientOptions {
        connect_timeout: Duration::from_millis(500),
        idle_timeout: Duration::from_secs(1),
        reconnect: Reconnect {
            budget: RetryBudget::Retries(1),
            initial_delay: Duration::from_millis(50),
            ..Reconnect::default()
        },
        ..ClientOptions::default()
    }
}

/// Reads the log of `demo.chat` as bob from the earliest offset up to `last` included, and checks that the
/// offsets are consecutive from 0 and that no integrity error is delivered. Returns the payloads by offset.
async fn read_log(env: &Env, addr: SocketAddr, last: u64) -> Vec<Bytes> {
    let bob = Identity::load(env.identity("bob", addr)).unwrap();
    let bob = within("bob connects", Client::connect(&bob)).await.unwrap();
    let mut sub = within(
        "bob subscribes",
        bob.subscribe(chat(), SubscribeOptions { from: StartAt::Earliest, durable: None, shared: false }),
    )
    .await
    .unwrap();
    let mut stored = Vec::with_capacity(last as usize + 1);
    while stored.len() as u64 <= last {
        let m = within("stored message", sub.next())
            .await
            .expect("subscription ended")
            .unwrap_or_else(|e| panic!("error item at offset {}: {e}", stored.len()));
        assert_eq!(m.offset.0, stored.len() as u64, "offsets are consecutive from 0, each once");
        stored.push(m.payload);
    }
    stored
}

/// Checks that every acknowledged message is at its offset in `stored`, and that no payload is stored twice.
fn check_acknowledged(stored: &[Bytes], acked: &[(u64, Bytes)]) {
    let mut seen = HashSet::with_capacity(stored.len());
    for (offset, payload) in stored.iter().enumerate() {
        assert!(seen.insert(payload), "payload stored twice (second time at offset {offset})");
    }
    for (offset, payload) in acked {
        assert_eq!(&stored[*offset as usize], payload, "acknowledged message at {offset} lost or changed");
    }
    assert!(acked.windows(2).all(|w| w[0].0 < w[1].0), "acknowledged offsets grow in publish order");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_messages_survive_20_random_sigkills() {
    const ROUNDS: u64 = 20;
    let started = Instant::now();
    let mut env = Env::new();
    let config = env.write_config();
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x5EA1_C0DE);
    let mut acked: Vec<(u64, Bytes)> = Vec::new();
    let mut broker = BrokerProcess::start(&config);
    let mut checked = 0u64;
    for round in 0..ROUNDS {
        let round_started = Instant::now();
        let alice = Identity::load(env.identity("alice", broker.addr)).unwrap();
        let alice = within("alice connects", Client::connect_with(&alice, fast_failing())).await.unwrap();
        // The publisher asks the broker for alice's chain head: it continues the chain of earlier rounds.
        let publisher = Arc::new(
            within("publisher starts", alice.publisher(chat(), PublisherOptions::default())).await.unwrap(),
        );
        let round_acked = Arc::new(Mutex::new(Vec::<(u64, Bytes)>::new()));
        let (count_tx, mut count_rx) = tokio::sync::watch::channel(0usize);
        let task = {
            let (publisher, round_acked) = (publisher.clone(), round_acked.clone());
            tokio::spawn(async move {
                for chunk in 0u64.. {
                    let pending: Vec<_> = (0..100)
                        .map(|i| {
                            let payload = Bytes::from(format!("round{round}-chunk{chunk}-m{i}"));
                            (payload.clone(), publisher.publish(payload))
                        })
                        .collect();
                    for (payload, ack) in pending {
                        match ack.await {
                            Ok(receipt) => {
                                round_acked.lock().unwrap().push((receipt.offset.0, payload));
                                count_tx.send_modify(|n| *n += 1);
                            }
                            Err(e) => return e,
                        }
                    }
                }
                unreachable!()
            })
        };
        // The moment of the kill: after a random number of acks, or a random delay after the first one.
        let moment = if rng.gen_bool(0.5) {
            let target = rng.gen_range(1..=300usize);
            within("acks before the kill", count_rx.wait_for(|n| *n >= target)).await.unwrap();
            format!("after {target} acks")
        } else {
            let delay = Duration::from_millis(rng.gen_range(0..=200));
            within("first ack", count_rx.wait_for(|n| *n >= 1)).await.unwrap();
            tokio::time::sleep(delay).await;
            format!("{} ms after the first ack", delay.as_millis())
        };
        assert!(!task.is_finished(), "round {round}: the publisher failed before the kill");
        broker.kill();
        // Restart at once (the new broker gets a new port); meanwhile the publisher gives up.
        let next = tokio::task::spawn_blocking({
            let config = config.clone();
            move || BrokerProcess::start(&config)
        });
        let error = match tokio::time::timeout(Duration::from_secs(20), task).await {
            Ok(e) => e.unwrap(),
            Err(_) => panic!("round {round}: the publisher did not give up after the broker died"),
        };
        assert!(
            matches!(error, Error::ConnectionLost { .. } | Error::Unreachable { .. }),
            "round {round}: in-flight publishes failed with {error}"
        );
        // Dropped, not closed: `close` would wait for the dead connection to drain.
        drop((publisher, alice));
        broker = within("broker restarts", next).await.unwrap();

        let round_acked = std::mem::take(&mut *round_acked.lock().unwrap());
        assert!(!round_acked.is_empty());
        if let (Some(prev), Some(first)) = (acked.last(), round_acked.first()) {
            assert!(first.0 > prev.0, "round {round} continues the chain after the acknowledged messages");
        }
        let n = round_acked.len();
        acked.extend(round_acked);
        let last = acked.last().unwrap().0;
        let stored = read_log(&env, broker.addr, last).await;
        check_acknowledged(&stored, &acked);
        checked += acked.len() as u64;
        eprintln!(
            "round {round}: killed {moment}: {n} acknowledged, {} in total, all present ({:.1} s)",
            acked.len(),
            round_started.elapsed().as_secs_f64()
        );
    }
    // The store reopened cleanly after the last kill and takes new publishes continuing alice's chain.
    let alice = Identity::load(env.identity("alice", broker.addr)).unwrap();
    let alice = within("alice connects", Client::connect(&alice)).await.unwrap();
    let publisher = alice.publisher(chat(), PublisherOptions::default()).await.unwrap();
    let receipt = within("publish after the last restart", publisher.publish("after")).await.unwrap();
    assert!(receipt.offset.0 > acked.last().unwrap().0);
    broker.kill();
    eprintln!(
        "{ROUNDS} SIGKILL rounds: {} acknowledged messages, {checked} acknowledged-message checks after restarts, \
         {:.1} s",
        acked.len(),
        started.elapsed().as_secs_f64()
    );
}

/// Issue 17: a publisher that gives up hands back what the broker did not acknowledge, and resending it
/// never duplicates. The broker is SIGKILLed while alice's publisher has batches in flight (some stored,
/// their acknowledgement lost, or not stored); the publisher gives up; after the restart its sealed batches
/// are resent unchanged (`Client::resend`) and its unsealed messages published again: every message
/// published is in the log exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publisher_that_gave_up_hands_back_its_batches_and_resending_them_duplicates_nothing() {
    let mut env = Env::new();
    let config = env.write_config();
    let mut broker = BrokerProcess::start(&config);
    let alice = Identity::load(env.identity("alice", broker.addr)).unwrap();
    let alice = within("alice connects", Client::connect_with(&alice, fast_failing())).await.unwrap();
    // A small window, so that when the broker dies some messages are in sealed batches in flight and
    // others still queued.
    let options = PublisherOptions { max_in_flight: 4, max_batch: 32, ..PublisherOptions::default() };
    let publisher = Arc::new(within("publisher starts", alice.publisher(chat(), options)).await.unwrap());
    let published = Arc::new(Mutex::new(Vec::<Bytes>::new()));
    let (count_tx, mut count_rx) = tokio::sync::watch::channel(0usize);
    let task = {
        let (publisher, published) = (publisher.clone(), published.clone());
        tokio::spawn(async move {
            let mut failed = 0;
            for chunk in 0u64.. {
                let pending: Vec<_> = (0..1_000)
                    .map(|i| {
                        let payload = Bytes::from(format!("chunk{chunk}-m{i}"));
                        published.lock().unwrap().push(payload.clone());
                        publisher.publish(payload)
                    })
                    .collect();
                let mut error = None;
                for ack in pending {
                    match ack.await {
                        Ok(_) => count_tx.send_modify(|n| *n += 1),
                        Err(e) => {
                            failed += 1;
                            error = Some(e);
                        }
                    }
                }
                if let Some(e) = error {
                    return (e, failed);
                }
            }
            unreachable!()
        })
    };
    within("acks before the kill", count_rx.wait_for(|n| *n >= 500)).await.unwrap();
    broker.kill();
    let (error, failed) = within("the publisher gives up", task).await.unwrap();
    assert!(error.is_retryable(), "{error}");
    let unacknowledged = publisher.take_unacknowledged().expect("handed back");
    assert!(publisher.take_unacknowledged().is_none(), "once");
    assert_eq!(unacknowledged.sealed_messages() + unacknowledged.unsent().len(), failed);
    let unsent_count = unacknowledged.unsent().len();
    drop((publisher, alice));

    broker = BrokerProcess::start(&config);
    let alice = Identity::load(env.identity("alice", broker.addr)).unwrap();
    let alice = within("alice connects again", Client::connect(&alice)).await.unwrap();
    let receipts =
        within("resend", alice.resend(unacknowledged.topic(), unacknowledged.sealed())).await.unwrap();
    assert_eq!(receipts.len(), unacknowledged.sealed_messages());
    // Resending again stores nothing more: the broker answers with the same offsets.
    let again = within("resend again", alice.resend(unacknowledged.topic(), unacknowledged.sealed())).await;
    assert_eq!(again.unwrap(), receipts);
    let retry = within("publisher", alice.publisher(chat(), PublisherOptions::default())).await.unwrap();
    let unsent = unacknowledged.unsent().to_vec();
    drop(unacknowledged);
    for (headers, payload) in unsent {
        within("publish again", retry.publish_with(headers, payload)).await.unwrap();
    }
    let end = within("publish the end", retry.publish("end")).await.unwrap();
    let published = published.lock().unwrap().clone();
    let stored = read_log(&env, broker.addr, end.offset.0).await;
    check_acknowledged(&stored, &[]);
    assert_eq!(stored.len(), published.len() + 1, "every message once, and the end");
    let stored: HashSet<&Bytes> = stored.iter().collect();
    let missing: Vec<_> = published.iter().filter(|p| !stored.contains(p)).collect();
    assert!(
        missing.is_empty(),
        "{} of {} published messages are not stored: {missing:?}",
        missing.len(),
        published.len()
    );
    eprintln!(
        "{} published, {failed} failed when the broker died: {} in sealed batches resent, {unsent_count} never \
         sealed published again; each stored once",
        published.len(),
        receipts.len(),
    );
    broker.kill();
}

/// A tmpfs mounted for the test; unmounted (lazily) when dropped, also when the test fails.
struct TmpfsMount {
    path: PathBuf,
}

impl TmpfsMount {
    fn new(path: &Path, size: &str) -> TmpfsMount {
        std::fs::create_dir_all(path).unwrap();
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(path)
            .output()
            .unwrap_or_else(|e| panic!("cannot run mount: {e} (this test needs root and mount(8))"));
        assert!(
            out.status.success(),
            "mount -t tmpfs -o size={size} tmpfs {} failed ({}): {} -- this test needs root (CAP_SYS_ADMIN) \
             to make a small filesystem; it is not skipped",
            path.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
        TmpfsMount { path: path.to_path_buf() }
    }

    fn resize(&self, size: &str) {
        let out = std::process::Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.path)
            .output()
            .unwrap();
        assert!(out.status.success(), "remount failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
}

impl Drop for TmpfsMount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

/// Bytes in the files under `dir`.
fn bytes_under(dir: &Path) -> u64 {
    files_under(dir).iter().filter_map(|f| std::fs::metadata(f).ok()).map(|m| m.len()).sum()
}

/// Fills a small tmpfs holding the data folder, checks that publishes then fail with `STORAGE_FULL` while
/// the broker keeps answering, makes space (`mount -o remount,size=64m`), and checks that the same
/// publisher, on the same connection, publishes again without a restart, and that every acknowledged
/// message is stored once, in order, also after a restart.
///
/// The broker is configured with a 2 MiB reserve: appends that would leave less free fail before anything
/// is written, so sled (which, in 0.34.7, blocks in `Db::flush` or fails every later write until reopened
/// after a failed write) never sees `ENOSPC`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_full_fails_publishes_cleanly_and_service_resumes() {
    const PAYLOAD: usize = 1000;
    let started = Instant::now();
    let mut env = Env::new();
    // The data folder is the whole small filesystem; `write_config` seeds the policies into it.
    let mount = TmpfsMount::new(&env.data_dir(), "8m");
    let config = env.write_config();
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str("\n[storage]\nreserve_bytes = 2097152\n");
    std::fs::write(&config, text).unwrap();
    let mut broker = BrokerProcess::start(&config);
    let alice = Identity::load(env.identity("alice", broker.addr)).unwrap();
    let alice = within("alice connects", Client::connect(&alice)).await.unwrap();
    let publisher = within("publisher", alice.publisher(chat(), PublisherOptions::default())).await.unwrap();
    let payload = |phase: &str, i: usize| {
        let mut p = format!("{phase}-{i}-").into_bytes();
        p.resize(PAYLOAD, b'x');
        Bytes::from(p)
    };

    // Fill the device: publish (pipelined) until publishes fail.
    let mut acked: Vec<(u64, Bytes)> = Vec::new();
    let mut failures: Vec<Error> = Vec::new();
    let mut i = 0;
    while failures.is_empty() {
        assert!(i < 100_000, "100 MB published on an 8 MB filesystem without an error");
        let pending: Vec<_> = (0..64)
            .map(|_| {
                i += 1;
                let p = payload("fill", i);
                (p.clone(), publisher.publish(p))
            })
            .collect();
        for (p, ack) in pending {
            match within("publish while filling", ack).await {
                Ok(receipt) => acked.push((receipt.offset.0, p)),
                Err(e) => failures.push(e),
            }
        }
    }
    let filled = acked.len();
    let on_disk = bytes_under(&env.data_dir());
    let first = failures[0].clone();
    eprintln!(
        "device full after {filled} acknowledged messages ({} payload bytes; {on_disk} bytes in the data \
         folder); {} publishes failed, the first with: {first}",
        filled * PAYLOAD,
        failures.len()
    );
    for e in &failures {
        assert!(
            matches!(e, Error::Refused { code, .. } if *code == ErrorCode::STORAGE_FULL),
            "a publish on a full device failed with {e:?}, not STORAGE_FULL"
        );
    }
    assert!(first.to_string().contains("storage is full"), "{first}");

    // While the device is full: the broker is alive and keeps answering. A batch of one message still fits
    // where a batch of 64 did not, so publish one at a time until five in a row are refused.
    let mut refused_in_a_row = 0;
    let mut acked_while_full = 0;
    let mut j = 0;
    while refused_in_a_row < 5 {
        assert!(j < 10_000, "10 MB more published on a full 8 MB filesystem");
        j += 1;
        match within("publish on a full device", publisher.publish(payload("full", j))).await {
            Ok(receipt) => {
                acked.push((receipt.offset.0, payload("full", j)));
                acked_while_full += 1;
                refused_in_a_row = 0;
            }
            Err(e) => {
                assert!(
                    matches!(&e, Error::Refused { code, .. } if *code == ErrorCode::STORAGE_FULL),
                    "publish on a full device: {e:?}"
                );
                refused_in_a_row += 1;
            }
        }
    }
    assert!(broker.child.try_wait().unwrap().is_none(), "the broker exited on a full device");

    // Make space: service resumes without a restart, for the same publisher on the same connection.
    mount.resize("64m");
    let resumed = Instant::now();
    for j in 0..200 {
        let p = payload("after", j);
        let receipt = within("publish after space was made", publisher.publish(p.clone()))
            .await
            .unwrap_or_else(|e| panic!("publish {j} after space was made failed: {e}"));
        acked.push((receipt.offset.0, p));
    }
    let resumed_in = resumed.elapsed();
    let stored = read_log(&env, broker.addr, acked.last().unwrap().0).await;
    check_acknowledged(&stored, &acked);
    assert!(broker.child.try_wait().unwrap().is_none(), "the broker exited");

    // And all of it is still there after a restart (the store opens cleanly on the full-then-resized disk).
    broker.kill();
    let broker = BrokerProcess::start(&config);
    let after_restart = read_log(&env, broker.addr, acked.last().unwrap().0).await;
    assert_eq!(after_restart, stored);
    eprintln!(
        "while full: {} more one-message publishes acknowledged, then 5 in a row refused; after the remount 200 publishes succeeded in \
         {:.0} ms; {} acknowledged messages present once and in order, also after a restart \
         ({} messages reported failed were stored); {:.1} s",
        acked_while_full,
        resumed_in.as_millis(),
        acked.len(),
        stored.len() - acked.len(),
        started.elapsed().as_secs_f64()
    );
    drop(broker);
    drop(mount);
}
