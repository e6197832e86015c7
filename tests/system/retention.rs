//! Retention as users see it: the real `sealpost-broker` binary with a `[retention]` rule on a topic, the
//! real client publishing far more than the rule keeps, and subscribers that ask for what is gone.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::harness::*;
use bytes::Bytes;
use futures_util::StreamExt;
use sealpost_client::{Client, Error, Identity, PublisherOptions, SubscribeOptions, Subscription};
use sealpost_protocol::{Offset, StartAt, Topic};

const MESSAGE: usize = 64 * 1024;
/// 200 MiB of payload.
const MESSAGES: u64 = 3200;
const KEEP: u64 = 10 * 1024 * 1024;
/// "Under ~12 MB": the rule, one 1 MiB segment being filled, and the index.
const FOLDER_BOUND: u64 = 12 * 1024 * 1024;

fn chat() -> Topic {
    Topic::new("demo.chat").unwrap()
}

async fn connect(env: &Env, who: &str, addr: SocketAddr) -> Client {
    let identity = Identity::load(env.identity(who, addr)).unwrap();
    within("connect", Client::connect(&identity)).await.unwrap()
}

/// The bytes of every file under `dir` (files removed while it looks are skipped).
fn folder_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => folder_bytes(&e.path()),
            Ok(_) => e.metadata().map(|m| m.len()).unwrap_or(0),
            Err(_) => 0,
        })
        .sum()
}

/// The payload of message `i`: its number, then filler.
fn payload(i: u64) -> Bytes {
    let mut p = format!("m{i:05}.").into_bytes();
    p.resize(MESSAGE, b'.');
    Bytes::from(p)
}

fn number(payload: &[u8]) -> u64 {
    std::str::from_utf8(&payload[1..6]).unwrap().parse().unwrap()
}

/// Reads `sub` to message `MESSAGES - 1`: expects one `Retired` item first (from `from`), then every
/// message from the topic's first offset on, in order, with no other error. Returns the first offset.
async fn read_after_the_cut(sub: &mut Subscription, from: u64) -> u64 {
    let first = match within("the retention notice", sub.next()).await.expect("the subscription ended") {
        Err(Error::Retired { topic, offsets }) => {
            assert_eq!(topic, chat());
            assert_eq!(offsets.start, Offset(from));
            offsets.end.0
        }
        other => panic!("expected the retention notice first, got {other:?}"),
    };
    for expected in first..MESSAGES {
        let m = within("a message", sub.next()).await.expect("the subscription ended").unwrap();
        assert_eq!((m.offset.0, number(&m.payload)), (expected, expected), "in order, none missing");
    }
    first
}

/// A topic whose rule keeps 10 MiB: 200 MiB published through the real broker leave a data folder under
/// ~12 MiB the whole time; a subscriber from the earliest offset, one from an offset the rule removed and
/// a durable subscription whose committed offset it removed are each told which offsets are gone
/// (`Error::Retired`), then read everything from the first offset on with every chain verifying across
/// the cut (no gap reported).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topic_kept_to_10_mib_stays_under_12_mib_and_readers_below_its_first_offset_are_told() {
    let mut env = Env::new();
    let config = env.write_config();
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str(&format!(
        "\n[storage]\nsegment_bytes = 1048576\n\n[retention]\ninterval_ms = 20\n\n[[retention.topic]]\npattern = \"demo.chat\"\nmax_bytes = {KEEP}\n"
    ));
    std::fs::write(&config, text).unwrap();
    let broker = BrokerProcess::start(&config);
    let addr = broker.addr;

    // bob's durable subscription reads and acknowledges the first two messages.
    let alice = connect(&env, "alice", addr).await;
    let publisher = within("publisher", alice.publisher(chat(), PublisherOptions::default())).await.unwrap();
    for i in 0..2 {
        within("publish", publisher.publish(payload(i))).await.unwrap();
    }
    let bob = connect(&env, "bob", addr).await;
    let durable =
        || SubscribeOptions { from: StartAt::Earliest, durable: Some("audit".into()), shared: false };
    let mut audit = within("subscribe", bob.subscribe(chat(), durable())).await.unwrap();
    let mut last = None;
    for _ in 0..2 {
        last = Some(within("a message", audit.next()).await.unwrap().unwrap());
    }
    audit.ack(&last.unwrap()).unwrap();
    within("close audit", audit.close()).await.unwrap();

    // The data folder is measured all along.
    let data = env.data_dir();
    let (stop, largest) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicU64::new(0)));
    let sampler = {
        let (stop, largest, data) = (stop.clone(), largest.clone(), data.clone());
        std::thread::spawn(move || {
            // Bounded: the test stops it, and it gives up after ten minutes whatever happens.
            for _ in 0..60_000 {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                largest.fetch_max(folder_bytes(&data), Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(10));
            }
        })
    };
    for chunk in (2..MESSAGES).collect::<Vec<_>>().chunks(16) {
        let receipts: Vec<_> = chunk.iter().map(|&i| publisher.publish(payload(i))).collect();
        for receipt in receipts {
            within("publish", receipt).await.unwrap();
        }
    }
    within("close publisher", publisher.close()).await.unwrap();
    // One more pass after the last segment closes: the folder is within the bound at rest too.
    let settled = within("the folder to settle", async {
        loop {
            let now = folder_bytes(&data);
            if now <= FOLDER_BOUND {
                return now;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    stop.store(true, Ordering::SeqCst);
    sampler.join().unwrap();
    let largest = largest.load(Ordering::SeqCst);
    eprintln!("data folder: at most {largest} bytes while 200 MiB were published, {settled} at rest");
    assert!(largest <= FOLDER_BOUND, "the data folder reached {largest} bytes");

    // From the earliest offset: told, then the rest in order, every chain verifying across the cut.
    let reader = connect(&env, "bob", addr).await;
    let options = SubscribeOptions { from: StartAt::Earliest, durable: None, shared: false };
    let mut earliest = within("subscribe", reader.subscribe(chat(), options)).await.unwrap();
    let first = read_after_the_cut(&mut earliest, 0).await;
    let kept = (MESSAGES - first) * MESSAGE as u64;
    assert!(kept <= KEEP && kept + 2 * 1024 * 1024 > KEEP, "{kept} bytes of payload kept");
    // From an offset the rule removed.
    let options = SubscribeOptions { from: StartAt::Offset(Offset(5)), durable: None, shared: false };
    let mut from_five = within("subscribe", reader.subscribe(chat(), options)).await.unwrap();
    assert_eq!(read_after_the_cut(&mut from_five, 5).await, first);
    // The durable subscription had committed offset 2.
    let mut audit = within("subscribe", bob.subscribe(chat(), durable())).await.unwrap();
    assert_eq!(read_after_the_cut(&mut audit, 2).await, first);
    within("close", reader.close()).await;
    within("close", bob.close()).await;
    within("close", alice.close()).await;
    broker.terminate();
}
