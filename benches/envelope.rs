//! Seal and open of sealed batches through the public API of `sealpost-protocol`.
//!
//! Batches of 1, 16, 64 and 256 messages of 64 B, 1 KiB and 16 KiB, one core, reported by criterion as
//! messages/s (elements/s). After the runs, a table of median cost per message is printed with the machine
//! and settings. Target: opening (and sealing) a 64-message batch of 1 KiB payloads costs at most 3 µs per
//! message on this machine.
//!
//! `cargo bench --bench envelope` (add `-- --quick` for a short run).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput};
use rand_chacha::rand_core::SeedableRng;
use sealpost_protocol::*;

const BATCHES: [usize; 4] = [1, 16, 64, 256];
const SIZES: [usize; 3] = [64, 1024, 16 * 1024];

fn fixture(count: usize, size: usize) -> (SigningKey, ContentKey, Vec<Vec<u8>>, SealParams) {
    let signer = SigningKey::from_bytes(&[1; 32]);
    let key = ContentKey::from_bytes(&[2; 32]);
    let msgs = (0..count).map(|i| vec![i as u8; size]).collect();
    let params = SealParams {
        topic: Topic::new("bench.topic").unwrap(),
        epoch: Epoch(1),
        chain: ChainId([3; 16]),
        first_seq: 1,
        prev_digest: Digest::ZERO,
        created_at: Timestamp(1_763_856_000_000),
    };
    (signer, key, msgs, params)
}

fn bench(c: &mut Criterion) {
    let limits = Limits { max_batch_len: 8 * 1024 * 1024, ..Limits::default() };
    let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(1);
    for op in ["seal", "open"] {
        let mut group = c.benchmark_group(op);
        for &size in &SIZES {
            for &count in &BATCHES {
                let (signer, key, msgs, params) = fixture(count, size);
                group.throughput(Throughput::Elements(count as u64));
                let id = BenchmarkId::new(format!("{size}B"), count);
                if op == "seal" {
                    group.bench_function(id, |b| {
                        b.iter(|| seal(&signer, &key, params.clone(), &msgs, &limits, &mut rng).unwrap())
                    });
                } else {
                    let sealed: Bytes =
                        seal(&signer, &key, params.clone(), &msgs, &limits, &mut rng).unwrap().into_bytes();
                    let keys = (Epoch(1), key);
                    group.bench_function(id, |b| {
                        b.iter(|| open(sealed.clone(), &params.topic, &keys, &limits).unwrap())
                    });
                }
            }
        }
        group.finish();
    }
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    format!("{cpu}, {cores} logical cores, {} {}", std::env::consts::OS, std::env::consts::ARCH)
}

/// Reads criterion's median estimate (ns per iteration) for one benchmark, if it was measured by this run:
/// an estimate left by an earlier run (say, one a filter skipped this time) is not reported as current.
fn median_ns(op: &str, size: usize, count: usize, since: SystemTime) -> Option<f64> {
    let dir = std::env::var("CARGO_TARGET_DIR")
        .unwrap_or_else(|_| format!("{}/target", env!("CARGO_MANIFEST_DIR")));
    let path = format!("{dir}/criterion/{op}/{size}B/{count}/new/estimates.json");
    if std::fs::metadata(&path).and_then(|m| m.modified()).ok()? < since {
        return None;
    }
    let json = std::fs::read_to_string(path).ok()?;
    // {"mean":{...},"median":{"confidence_interval":{...},"point_estimate":123.4,...
    let median = &json[json.find("\"median\"")?..];
    let pe = &median[median.find("\"point_estimate\":")? + "\"point_estimate\":".len()..];
    pe[..pe.find([',', '}'])?].trim().parse().ok()
}

fn main() {
    let started = SystemTime::now();
    let quick = std::env::args().any(|a| a == "--quick");
    let mut c = Criterion::default()
        .configure_from_args()
        .sample_size(if quick { 10 } else { 30 })
        .warm_up_time(Duration::from_millis(if quick { 200 } else { 1000 }))
        .measurement_time(Duration::from_millis(if quick { 500 } else { 3000 }));
    bench(&mut c);
    c.final_summary();

    println!("\nmachine: {}", machine());
    println!("settings: one thread, XChaCha20-Poly1305 + BLAKE3 + one ed25519 (verify_strict) per batch, criterion medians");
    println!("{:<6} {:>8} {:>6} {:>12} {:>14}", "op", "size", "batch", "µs/msg", "msgs/s");
    for op in ["seal", "open"] {
        for &size in &SIZES {
            for &count in &BATCHES {
                if let Some(ns) = median_ns(op, size, count, started) {
                    let per = ns / count as f64;
                    println!("{op:<6} {:>7}B {count:>6} {:>12.3} {:>14.0}", size, per / 1000.0, 1e9 / per);
                }
            }
        }
    }
    let verdict = |x: f64| if x <= 3.0 { "meets" } else { "MISSES" };
    let target: Vec<String> = ["seal", "open"]
        .into_iter()
        .filter_map(|op| {
            let us = median_ns(op, 1024, 64, started)? / 64_000.0;
            Some(format!("{op} {us:.3} µs {}", verdict(us)))
        })
        .collect();
    if !target.is_empty() {
        println!("target (64 x 1 KiB, <= 3 µs/msg): {}", target.join(", "));
    }
}
