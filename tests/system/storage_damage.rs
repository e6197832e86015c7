//! One flipped bit in the broker's acknowledged log costs at most the batch that holds it, as users see it:
//! the real broker binary on a sled store, the real client and the `sealpost` CLI (docs/reliability.md).
//!
//! Alice publishes batches, all acknowledged; the broker stops gracefully; one bit of one stored batch is
//! flipped (positions drawn from a seeded RNG, printed; `SEALPOST_FLIP_SEED` replays them), either in the
//! part of the log the restart judges (found at start) or in the part before the index's checkpoint (found
//! when read). After the restart bob's subscription from the start yields every other message, in order,
//! and one typed `DataLost` event for the damaged batch's offsets, and nothing else; the broker's log names
//! the loss in an error and never calls acknowledged data unacknowledged; publishing goes on; `sealpost
//! sub` prints the loss as one line on stderr; and `sealpost-broker verify-store` finds it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::harness::*;
use bytes::Bytes;
use futures_util::StreamExt;
use rand::{Rng, SeedableRng};
use sealpost_client::{Client, Error, ErrorCode, Identity, PublisherOptions, SubscribeOptions};
use sealpost_protocol::{StartAt, Topic};

const MESSAGES: u64 = 24;

fn chat() -> Topic {
    Topic::new("demo.chat").unwrap()
}

/// A batch record of `demo.chat` in a segment file: where it is and what offsets it holds.
#[derive(Clone, Debug)]
struct BatchRecord {
    file: PathBuf,
    position: u64,
    end: u64,
    offsets: std::ops::Range<u64>,
}

/// The batch records of `demo.chat` in the segment files of `data`, from the format in
/// docs/architecture.md: `len u32 | crc32 u32 | body`, a batch body being `1 | topic_len | topic |
/// offset u64 | count u32 | ...`.
fn batch_records(data: &Path) -> Vec<BatchRecord> {
    let mut files: Vec<_> = std::fs::read_dir(data.join("segments"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    files.sort();
    let mut out = Vec::new();
    for file in files {
        let bytes = std::fs::read(&file).unwrap();
        let mut at = 0usize;
        while at + 8 <= bytes.len() {
            let len = u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
            let body = &bytes[at + 8..at + 8 + len];
            let topic = b"demo.chat";
            // Kind 1: a batch of the legacy chain; kind 7: of any other (what publishers write).
            if matches!(body[0], 1 | 7)
                && body[1] as usize == topic.len()
                && &body[2..2 + topic.len()] == topic
            {
                let rest = &body[2 + topic.len()..];
                let offset = u64::from_be_bytes(rest[..8].try_into().unwrap());
                let count = u32::from_be_bytes(rest[8..12].try_into().unwrap());
                out.push(BatchRecord {
                    file: file.clone(),
                    position: at as u64,
                    end: (at + 8 + len) as u64,
                    offsets: offset..offset + u64::from(count),
                });
            }
            at += 8 + len;
        }
    }
    out
}

/// `sealpost-broker verify-store DIR`: exit code and output.
fn verify_store(data: &Path) -> (i32, String) {
    let out = Command::new(cargo_bin("sealpost-broker")).arg("verify-store").arg(data).output().unwrap();
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Reads demo.chat as bob from the start up to offset `end`: the messages, and the offsets reported lost.
async fn read_all(
    env: &Env,
    addr: std::net::SocketAddr,
    end: u64,
) -> (Vec<(u64, Bytes)>, Vec<std::ops::Range<u64>>) {
    let bob = Identity::load(env.identity("bob", addr)).unwrap();
    let bob = within("bob connects", Client::connect(&bob)).await.unwrap();
    let options = SubscribeOptions { from: StartAt::Earliest, durable: None, shared: false };
    let mut sub = within("bob subscribes", bob.subscribe(chat(), options)).await.unwrap();
    let (mut messages, mut lost) = (Vec::new(), Vec::new());
    let mut next = 0;
    while next < end {
        match within("an item", sub.next()).await.expect("the subscription ended") {
            Ok(m) => {
                next = m.offset.0 + 1;
                messages.push((m.offset.0, m.payload));
            }
            Err(Error::DataLost { offsets, reason, .. }) => {
                assert_eq!(reason, ErrorCode::DATA_LOST);
                next = offsets.end.0;
                lost.push(offsets.start.0..offsets.end.0);
            }
            Err(e) => panic!("unexpected error item at offset {next}: {e}"),
        }
    }
    (messages, lost)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flipped_bit_costs_the_batch_that_holds_it_and_subscribers_get_a_typed_event() {
    let seed =
        std::env::var("SEALPOST_FLIP_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(rand::random);
    println!("storage damage: seed {seed} (set SEALPOST_FLIP_SEED={seed} to replay)");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut env = Env::new();
    let config = env.write_config();
    let data = env.data_dir();

    // Alice publishes, one batch at a time, every one acknowledged; then a graceful stop.
    let broker = BrokerProcess::start(&config);
    let published = {
        let alice = Identity::load(env.identity("alice", broker.addr)).unwrap();
        let alice = within("alice connects", Client::connect(&alice)).await.unwrap();
        let publisher =
            within("publisher", alice.publisher(chat(), PublisherOptions::default())).await.unwrap();
        let mut published = Vec::new();
        for i in 0..MESSAGES {
            let payload = Bytes::from(format!("message {i}: {}", "x".repeat(rng.gen_range(10..200))));
            let receipt = within("publish", publisher.publish(payload.clone())).await.unwrap();
            published.push((receipt.offset.0, payload));
        }
        publisher.close().await.unwrap();
        published
    };
    assert_eq!(published.last().unwrap().0, MESSAGES - 1);
    broker.terminate();
    // alice's state folder as the first run left it (her chain's acknowledged head): each trial restores
    // it with the broker's data, as a restore of both from one backup would. Restoring only the data would
    // be a broker that rolled alice's acknowledged batches back, which her next publisher reports.
    let alice_state = env.dir.path().join("alice.state");
    let alice_pristine = env.dir.path().join("alice-pristine.state");
    copy_dir(&alice_state, &alice_pristine);
    // The log as the first run left it: the restart judges its batches (past the index's checkpoint).
    let fresh = env.dir.path().join("fresh");
    copy_dir(&data, &fresh);
    // Opened and stopped once more: the index's checkpoint moved past every batch, which only reads check.
    BrokerProcess::start(&config).terminate();
    let settled = env.dir.path().join("settled");
    copy_dir(&data, &settled);
    let (status, out) = verify_store(&settled);
    assert_eq!(status, 0, "a clean store verifies clean:\n{out}");

    let mut last_hit = 0..0;
    for (trial, pristine) in [&fresh, &settled, &fresh, &settled].into_iter().enumerate() {
        copy_dir(pristine, &data);
        copy_dir(&alice_pristine, &alice_state);
        let records = batch_records(&data);
        let hit = records[rng.gen_range(0..records.len())].clone();
        let position = rng.gen_range(hit.position..hit.end);
        let bit = rng.gen_range(0..8);
        let mut bytes = std::fs::read(&hit.file).unwrap();
        bytes[position as usize] ^= 1 << bit;
        std::fs::write(&hit.file, bytes).unwrap();
        let what = format!(
            "trial {trial} (seed {seed}): bit {bit} of byte {position} of {}, in offsets {:?}",
            hit.file.display(),
            hit.offsets
        );
        println!("{what}");

        let broker = BrokerProcess::start_logging(&config, "info");
        let (messages, lost) = read_all(&env, broker.addr, MESSAGES).await;
        assert_eq!(
            lost,
            std::slice::from_ref(&hit.offsets),
            "{what}: one typed event, for the damaged batch"
        );
        let expected: Vec<_> = published.iter().filter(|(o, _)| !hit.offsets.contains(o)).cloned().collect();
        assert_eq!(messages, expected, "{what}: every other message, in order");
        // Publishing goes on after the loss, continuing alice's chain.
        let alice = Identity::load(env.identity("alice", broker.addr)).unwrap();
        let alice = within("alice connects", Client::connect(&alice)).await.unwrap();
        let publisher =
            within("publisher", alice.publisher(chat(), PublisherOptions::default())).await.unwrap();
        let after = within("publish after", publisher.publish(Bytes::from("after"))).await.unwrap();
        assert_eq!(after.offset.0, MESSAGES, "{what}");
        publisher.close().await.unwrap();
        let log = broker.log.lock().unwrap().clone();
        broker.terminate();

        let offsets = format!("{}..{}", hit.offsets.start, hit.offsets.end);
        let segment = hit.file.file_name().unwrap().to_string_lossy().into_owned();
        assert!(
            log.iter().any(|l| l.contains("ERROR")
                && l.contains(&offsets)
                && l.contains("demo.chat")
                && l.contains(&segment)),
            "{what}: no error names the loss:\n{}",
            log.join("\n")
        );
        for line in &log {
            for lie in ["not acknowledged", "never acknowledged", "never became durable"] {
                assert!(
                    !line.contains(lie),
                    "{what}: the log calls acknowledged data unacknowledged: {line}"
                );
            }
        }
        let (status, out) = verify_store(&data);
        assert_eq!(status, 1, "{what}: verify-store finds the damage:\n{out}");
        assert!(out.lines().any(|l| l.starts_with("corrupt:") && l.contains(&segment)), "{what}:\n{out}");
        last_hit = hit.offsets;
    }

    // The CLI: the loss is one line on stderr, and printing goes on to the last message (the one published
    // after the loss).
    let printed = MESSAGES + 1 - (last_hit.end - last_hit.start);
    let broker = BrokerProcess::start(&config);
    let bob = env.identity("bob", broker.addr);
    let mut cli = Command::new(cargo_bin("sealpost"));
    cli.arg("--identity")
        .arg(&bob)
        .args(["sub", "demo.chat", "--from", "earliest", "--count"])
        .arg(printed.to_string())
        .env("RUST_LOG", "error")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = cli.spawn().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let out = rx.recv_timeout(Duration::from_secs(60)).expect("sealpost sub did not finish").unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{stderr}");
    let lost_lines: Vec<_> = stderr.lines().filter(|l| l.contains("data lost at offsets")).collect();
    assert_eq!(lost_lines.len(), 1, "{stderr}");
    assert!(lost_lines[0].ends_with(": storage corruption"), "{stderr}");
    assert_eq!(stdout.lines().count() as u64, printed, "{stdout}");
    assert_eq!(stdout.lines().last(), Some("after"));
    broker.terminate();
}
