//! Replays every file of the kept fuzz corpora (`fuzz/corpus/<target>/`) through the decoders its fuzz
//! target drives, with the same invariants, so that CI catches a regression on any input the fuzzers found
//! interesting without needing a nightly toolchain. A missing or empty corpus folder fails the test.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use bytes::Bytes;
use sealpost_protocol::*;

/// Every file of `fuzz/corpus/<target>/`, sorted by name. Panics if the folder is missing or empty.
fn corpus(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus").join(target);
    let entries = std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("corpus {}: {e}", dir.display()));
    let mut files: Vec<PathBuf> = entries.map(|e| e.unwrap().path()).filter(|p| p.is_file()).collect();
    files.sort();
    assert!(!files.is_empty(), "corpus {} is empty", dir.display());
    files
        .into_iter()
        .map(|p| {
            let data = std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            (p, data)
        })
        .collect()
}

/// Runs `check` on every corpus file of `target`, naming the file whose check panics.
fn replay(target: &str, check: impl Fn(&[u8])) -> usize {
    let files = corpus(target);
    for (path, data) in &files {
        if catch_unwind(AssertUnwindSafe(|| check(data))).is_err() {
            panic!("{target}: corpus file {} fails its check (see the panic above)", path.display());
        }
    }
    files.len()
}

/// As `fuzz_targets/frame_decode.rs`: what decodes re-encodes to a frame that decodes to the same.
#[test]
fn frame_decode_corpus() {
    replay("frame_decode", |data| {
        if let Ok(Some(n)) = Frame::check(data, 1 << 16) {
            if let Ok(frame) = Frame::decode(&data[..n]) {
                let again = frame.to_vec().expect("a decoded frame encodes");
                assert_eq!(Frame::decode(&again).expect("re-decodes"), frame);
            }
        }
    });
}

/// As `fuzz_targets/batch_open.rs`: nothing opens under a content key nobody sealed with.
#[test]
fn batch_open_corpus() {
    let topic = Topic::new("demo.chat").unwrap();
    let keys = (Epoch(7), ContentKey::from_bytes(&[0xC1; 32]));
    replay("batch_open", |data| {
        assert!(open(Bytes::copy_from_slice(data), &topic, &keys, &Limits::default()).is_err());
    });
}

/// As `fuzz_targets/policy_decode.rs`: decode and verify never panic, and nothing verifies under a pinned
/// authority that never signed.
#[test]
fn policy_decode_corpus() {
    let authority = SigningKey::from_bytes(&[0x5A; 32]).public_key();
    replay("policy_decode", |data| {
        let Ok(policy) = SignedPolicy::decode(Bytes::copy_from_slice(data), &Limits::default()) else {
            return;
        };
        let claimed = *policy.authority();
        if let Ok(verified) = policy.clone().verify(&claimed) {
            let _ = (verified.members().len(), verified.digest(), verified.member("alice"));
        }
        assert!(policy.verify(&authority).is_err());
    });
}

/// As `fuzz_targets/topic_pattern.rs`: a valid topic is a pattern that matches it, and `>` matches it.
#[test]
fn topic_pattern_corpus() {
    let all = TopicPattern::new(">").unwrap();
    replay("topic_pattern", |data| {
        let Ok(s) = std::str::from_utf8(data) else { return };
        let _ = TopicPattern::new(s);
        if let Ok(topic) = Topic::new(s) {
            assert!(TopicPattern::new(s).expect("a topic is a pattern").matches(&topic));
            assert!(all.matches(&topic));
        }
    });
}

/// The golden vectors are in the corpora as seeds, so the replay covers the valid paths too.
#[test]
fn corpora_hold_the_golden_seeds() {
    for (target, seed) in [
        ("frame_decode", "seed-frame-publish"),
        ("batch_open", "seed-batch"),
        ("batch_open", "seed-batch-v3"),
        ("policy_decode", "seed-policy"),
        ("topic_pattern", "seed-topic"),
    ] {
        assert!(
            corpus(target).iter().any(|(p, _)| p.file_name().is_some_and(|n| n == seed)),
            "fuzz/corpus/{target}/{seed} is missing"
        );
    }
}
