//! What the on-disk store's commit paths and opening cost, measured through the public [`Store`] API.
//!
//! Ignored by default (it measures fsyncs, which says more about the disk than about the code); run it with
//! `cargo test -p sealpost-broker --test store_costs -- --ignored --nocapture`. It prints its settings and
//! one JSON object of figures (microseconds) per measurement. docs/benchmarks.md records the results.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::cell::RefCell;
use std::time::{Duration, Instant};

use sealpost_broker::store::testing::sealed_batch;
use sealpost_broker::store::{Append, DiskStore, Store};
use sealpost_protocol::{ChainHead, Offset, SigningKey, Topic, VerifiedBatch};

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

/// `n` batches of one `len`-byte message each by publisher 1 on `topic`, chained: sealed before any
/// timing starts, so that the figures are the store's alone.
fn batches(topic: &Topic, n: usize, len: usize) -> RefCell<std::vec::IntoIter<VerifiedBatch>> {
    let signer = SigningKey::from_bytes(&[1; 32]);
    let mut head = ChainHead::GENESIS;
    let sealed: Vec<_> = (0..n)
        .map(|_| {
            let batch = sealed_batch(&signer, topic, head, 1, len).unwrap();
            head = ChainHead::after(&batch);
            batch
        })
        .collect();
    RefCell::new(sealed.into_iter())
}

/// Appends the next of `batches` at the topic's next offset.
fn append(store: &DiskStore, topic: &Topic, batches: &RefCell<std::vec::IntoIter<VerifiedBatch>>) {
    let batch = batches.borrow_mut().next().unwrap();
    store.append(Append::new(&batch, store.next_offset(topic).unwrap())).unwrap();
}

#[test]
#[ignore = "measures the disk; run by hand, see the module documentation"]
fn commit_paths_and_opening() {
    let dir = tempfile::tempdir().unwrap();
    let topic = Topic::new("bench.costs").unwrap();
    println!(
        "settings: {ROUNDS} rounds per path, batches of one 1 KiB message, data folder {}",
        dir.path().display()
    );
    let store = DiskStore::open(dir.path()).unwrap();
    let kib = batches(&topic, 2 * ROUNDS, 1024);
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
        append(&store, &topic, &kib);
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
        append(&store, &topic, &kib);
        store.set_durable_offset(&topic, &bob, "main", Offset(store.syncs())).unwrap();
        store.sync().unwrap();
    });
    println!("{{\"path\": \"append 1 KiB + durable-offset commit + sync\", {}}}", percentiles(both));
    drop(store);

    // Opening a store of many batches: what recovery and any check at open cost.
    for batches in [10_000usize, 100_000] {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = DiskStore::open(dir.path()).unwrap();
            let small = self::batches(&topic, batches, 256);
            for i in 0..batches {
                append(&store, &topic, &small);
                if i % 10_000 == 9_999 {
                    store.sync().unwrap();
                }
            }
            store.sync().unwrap();
        }
        let t = Instant::now();
        let store = DiskStore::open(dir.path()).unwrap();
        let open = t.elapsed();
        let t = Instant::now();
        let read = store.read(&topic, Offset(0), usize::MAX).unwrap().len();
        let scan = t.elapsed();
        assert_eq!(read, batches);
        drop(store);
        // Opened again: nothing to recover (the first open made the index durable), only the checks.
        let t = Instant::now();
        let store = DiskStore::open(dir.path()).unwrap();
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
