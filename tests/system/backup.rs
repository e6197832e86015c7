//! `sealpost-broker backup` against a running broker and `restore` into a new folder: a publisher publishes
//! continuously (each message acknowledged) while the backup runs; every message acknowledged before the
//! backup began comes back from a broker started on the restored folder, in order, through the client's
//! chain verification, with the topic policies and a durable subscription's committed offset.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use crate::harness::*;
use bytes::Bytes;
use futures_util::StreamExt;
use sealpost_broker::store::{DiskStore, Store};
use sealpost_client::{Client, Identity, PublisherOptions, SubscribeOptions};
use sealpost_protocol::{Offset, StartAt, Topic};

fn chat() -> Topic {
    Topic::new("demo.chat").unwrap()
}

/// Runs `sealpost-broker ARGS` to its end.
fn broker_cli(args: &[&std::ffi::OsStr]) -> std::process::Output {
    Command::new(cargo_bin("sealpost-broker")).args(args).output().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_taken_while_publishing_restores_every_message_acknowledged_before_it_began() {
    let mut env = Env::new();
    let config = env.write_config();
    let broker = BrokerProcess::start(&config);
    let addr = broker.addr;

    // Ten messages, and bob's durable subscription "audit" commits offset 4 (its next read is 5).
    let alice = Identity::load(env.identity("alice", addr)).unwrap();
    let alice = within("connect", Client::connect(&alice)).await.unwrap();
    let publisher = Arc::new(alice.publisher(chat(), PublisherOptions::default()).await.unwrap());
    let acked = Arc::new(Mutex::new(Vec::<(u64, Bytes)>::new()));
    for i in 0..10 {
        let payload = Bytes::from(format!("first-{i}"));
        let receipt = within("publish", publisher.publish(payload.clone())).await.unwrap();
        acked.lock().unwrap().push((receipt.offset.0, payload));
    }
    let bob = Identity::load(env.identity("bob", addr)).unwrap();
    let bob = within("connect", Client::connect(&bob)).await.unwrap();
    let durable =
        || SubscribeOptions { from: StartAt::Earliest, durable: Some("audit".into()), shared: false };
    let mut audit = within("subscribe", bob.subscribe(chat(), durable())).await.unwrap();
    let mut last = None;
    for _ in 0..5 {
        last = Some(within("a message", audit.next()).await.unwrap().unwrap());
    }
    let last = last.unwrap();
    assert_eq!(last.offset, Offset(4));
    audit.ack(&last).unwrap();
    within("close audit", audit.close()).await.unwrap();
    within("close", bob.close()).await;

    // Alice publishes continuously, recording each acknowledgement as it arrives.
    let stop = Arc::new(AtomicBool::new(false));
    let (enough_tx, enough_rx) = tokio::sync::oneshot::channel();
    let task = {
        let (publisher, acked, stop) = (publisher.clone(), acked.clone(), stop.clone());
        tokio::spawn(async move {
            let mut enough = Some(enough_tx);
            for round in 0u64.. {
                if stop.load(Ordering::SeqCst) {
                    return round;
                }
                let pending: Vec<_> = (0..100)
                    .map(|i| {
                        let payload = Bytes::from(format!("r{round}-m{i}"));
                        (payload.clone(), publisher.publish(payload))
                    })
                    .collect();
                for (payload, ack) in pending {
                    let receipt = ack.await.expect("the broker acknowledges while a backup runs");
                    acked.lock().unwrap().push((receipt.offset.0, payload));
                }
                if round == 2 {
                    if let Some(tx) = enough.take() {
                        let _ = tx.send(());
                    }
                }
            }
            unreachable!()
        })
    };
    within("300 acknowledged messages", enough_rx).await.unwrap();

    // What was acknowledged before the backup began; the publisher goes on while it runs.
    let before = acked.lock().unwrap().clone();
    let backup_dir = env.dir.path().join("backup");
    let (config_path, to) = (config.clone(), backup_dir.clone());
    let run_backup = move || {
        broker_cli(&[
            "backup".as_ref(),
            "--config".as_ref(),
            config_path.as_os_str(),
            "--to".as_ref(),
            to.as_os_str(),
        ])
    };
    let out = within("backup", tokio::task::spawn_blocking(run_backup)).await.unwrap();
    let during = acked.lock().unwrap().len() - before.len();
    assert!(out.status.success(), "backup failed: {}", String::from_utf8_lossy(&out.stderr));
    eprintln!("{}({during} more acknowledged while it ran)", String::from_utf8_lossy(&out.stdout));
    stop.store(true, Ordering::SeqCst);
    let rounds = within("publisher stops", task).await.unwrap();
    assert!(rounds >= 3);
    broker.terminate();

    // Restore into a new folder, and start a broker on it.
    let restored = env.dir.path().join("restored");
    let args = [
        "restore".as_ref(),
        "--from".as_ref(),
        backup_dir.as_os_str(),
        "--data-dir".as_ref(),
        restored.as_os_str(),
    ];
    let out = broker_cli(&args);
    assert!(out.status.success(), "restore failed: {}", String::from_utf8_lossy(&out.stderr));
    // A second restore into the (now not empty) folder is refused, and changes nothing.
    let again = broker_cli(&args);
    assert_eq!(again.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&again.stderr).contains("not empty"));
    let text =
        std::fs::read_to_string(&config).unwrap().replace("data_dir = \"data\"", "data_dir = \"restored\"");
    let restored_config = env.dir.path().join("restored.toml");
    std::fs::write(&restored_config, text).unwrap();
    let broker = BrokerProcess::start_logging(&restored_config, "info");
    let addr = broker.addr;

    // Every message acknowledged before the backup began, in order, each once, verified by bob's client.
    let bob = Identity::load(env.identity("bob", addr)).unwrap();
    let bob = within("connect", Client::connect(&bob)).await.unwrap();
    let mut sub = bob
        .subscribe(chat(), SubscribeOptions { from: StartAt::Earliest, durable: None, shared: false })
        .await
        .unwrap();
    let last = before.iter().map(|(o, _)| *o).max().unwrap();
    let mut stored = Vec::new();
    while stored.len() as u64 <= last {
        let m =
            within("stored message", sub.next()).await.unwrap().expect("no integrity event after restore");
        assert_eq!(m.offset.0, stored.len() as u64, "offsets are consecutive, each once");
        stored.push(m.payload);
    }
    for (offset, payload) in &before {
        assert_eq!(&stored[*offset as usize], payload, "acknowledged message at {offset} lost or changed");
    }
    // The durable subscription resumes after its committed offset.
    let mut audit = within("subscribe", bob.subscribe(chat(), durable())).await.unwrap();
    let next = within("a message", audit.next()).await.unwrap().unwrap();
    assert_eq!((next.offset, &next.payload[..]), (Offset(5), &b"first-5"[..]));
    within("close audit", audit.close()).await.unwrap();
    within("close", bob.close()).await;
    let log = broker.log_text();
    assert!(log.contains("no index: it is built from the segments"), "{log}");
    assert!(!log.contains("ERROR"), "the restored store opened with errors: {log}");
    broker.terminate();

    // The policies are back as they were stored; the committed offset too.
    let store = DiskStore::open(&restored).unwrap();
    assert_eq!(store.policies(&chat(), 10).unwrap(), [env.first_policy("demo.chat").as_bytes().clone()]);
    let events = Topic::new("demo.events").unwrap();
    assert_eq!(store.policies(&events, 10).unwrap(), [env.first_policy("demo.events").as_bytes().clone()]);
    assert_eq!(store.durable_offset(&chat(), &"bob".parse().unwrap(), "audit").unwrap(), Some(Offset(5)));
}

#[test]
fn serve_refuses_a_data_folder_of_a_newer_on_disk_format_and_says_to_upgrade() {
    let mut env = Env::new();
    let config = env.write_config();
    let known = sealpost_broker::store::disk::format::supported();
    std::fs::write(env.data_dir().join("FORMAT"), format!("sealpost-store {}\n", known + 1)).unwrap();
    let mut child = Command::new(cargo_bin("sealpost-broker"))
        .args(["serve".as_ref(), "--config".as_ref(), config.as_os_str()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            child.kill().unwrap();
            panic!("the broker served a data folder of a newer format");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "this data folder is in on-disk format {}; this broker reads up to {known}; upgrade the broker",
            known + 1
        )),
        "{stderr}"
    );
}
