//! What the on-disk store's commit paths and opening cost, measured through the public [`Store`] API.
//!
//! Ignored by default (it measures fsyncs, which says more about the disk than about the code); run it with
//! `cargo test -p sealpost-broker --test store_costs -- --ignored --nocapture`. It prints its settings and
//! one JSON object of figures (microseconds) per measurement. docs/benchmarks.md records the results.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use bytes::Bytes;
use sealpost_broker::store::{PublisherRecord, SledStore, Store};
use sealpost_protocol::{Digest, Offset, SigningKey, Topic};

const ROUNDS: usize = 300;

fn percentiles(mut samples: Vec<Duration>) -> String {
    samples.sort_unstable();
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize].as_secs_f64() * 1e6;
    format!(
        "\"p50_us\": {:.0}, \"p90_us\": {:.0}, \"p99_us\": {:.0}, \"max_us\": {:.0}",
        at(0.5),
        at(0.9),
        at(0.99),
        at(1.0)
    )
}

/// Appends one 1 KiB batch at the topic's next offset, continuing publisher 1's chain.
fn append(store: &SledStore, topic: &Topic, len: usize) {
    let publisher = SigningKey::from_bytes(&[1; 32]).public_key();
    let offset = store.next_offset(topic).unwrap();
    let first_seq = store.publisher_head(topic, &publisher).unwrap().map_or(1, |h| h.next_seq());
    let record = PublisherRecord { first_seq, count: 1, offset, digest: Digest([3; 32]) };
    store.append(topic, &publisher, &record, &Bytes::from(vec![7u8; len])).unwrap();
}

#[test]
#[ignore = "measures the disk; run by hand, see the module documentation"]
fn commit_paths_and_opening() {
    let dir = tempfile::tempdir().unwrap();
    let topic = Topic::new("bench.costs").unwrap();
    println!("settings: {ROUNDS} rounds per path, 1 KiB batches, data folder {}", dir.path().display());
    let store = SledStore::open(dir.path()).unwrap();
    let timed = |f: &dyn Fn()| {
        (0..ROUNDS)
            .map(|_| {
                let t = Instant::now();
                f();
                t.elapsed()
            })
            .collect::<Vec<_>>()
    };
    let batch = timed(&|| {
        append(&store, &topic, 1024);
        store.sync().unwrap();
    });
    println!("{{\"path\": \"append 1 KiB + sync\", {}}}", percentiles(batch));
    let bob = "bob".parse().unwrap();
    let commit = timed(&|| {
        store.set_durable_offset(&topic, &bob, "main", Offset(store.syncs())).unwrap();
        store.sync().unwrap();
    });
    println!("{{\"path\": \"durable-offset commit + sync\", {}}}", percentiles(commit));
    let both = timed(&|| {
        append(&store, &topic, 1024);
        store.set_durable_offset(&topic, &bob, "main", Offset(store.syncs())).unwrap();
        store.sync().unwrap();
    });
    println!("{{\"path\": \"append 1 KiB + durable-offset commit + sync\", {}}}", percentiles(both));
    drop(store);

    // Opening a store of many batches: what recovery and any check at open cost.
    for batches in [10_000usize, 100_000] {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = SledStore::open(dir.path()).unwrap();
            for i in 0..batches {
                append(&store, &topic, 256);
                if i % 10_000 == 9_999 {
                    store.sync().unwrap();
                }
            }
            store.sync().unwrap();
        }
        let t = Instant::now();
        let store = SledStore::open(dir.path()).unwrap();
        let open = t.elapsed();
        let t = Instant::now();
        let read = store.read(&topic, Offset(0), usize::MAX).unwrap().len();
        let scan = t.elapsed();
        assert_eq!(read, batches);
        drop(store);
        // Opened again: nothing to recover (the first open made the index durable), only the checks.
        let t = Instant::now();
        let store = SledStore::open(dir.path()).unwrap();
        let reopen = t.elapsed();
        drop(store);
        println!(
            "{{\"path\": \"open\", \"batches\": {batches}, \"open_us\": {:.0}, \"read_all_us\": {:.0}, \"reopen_us\": {:.0}}}",
            open.as_secs_f64() * 1e6,
            scan.as_secs_f64() * 1e6,
            reopen.as_secs_f64() * 1e6
        );
    }
}
