//! Retention on disk: retiring offsets, deleting whole segments, and what survives a reopen and a rebuild.

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use sealpost_protocol::{Offset, Principal, PublicKey, Topic, TopicPattern};

use crate::retention::{Retention, Rule};
use crate::store::disk::index::LAYOUT_KEY;
use crate::store::disk::segment;
use crate::store::disk::{DiskOptions, DiskStore};
use crate::store::testing::{sealed_batch, TEST_CHAIN};
use crate::store::{Append, LossReason, Store, Stored};

fn topic(s: &str) -> Topic {
    Topic::new(s).unwrap()
}

fn bob() -> Principal {
    "bob".parse().unwrap()
}

fn publisher() -> PublicKey {
    sealpost_protocol::SigningKey::from_bytes(&[1; 32]).public_key()
}

/// 8 KiB segments: about seven 1000-byte batches each.
fn open(dir: &std::path::Path) -> DiskStore {
    DiskStore::open_with(dir, DiskOptions { segment_bytes: 8 * 1024, reserve_bytes: 0, ..Default::default() })
        .unwrap()
}

/// Appends `n` batches of one 1000-byte message on `t`, continuing the chain, and syncs.
fn append_n(store: &DiskStore, t: &Topic, n: usize) {
    let signer = sealpost_protocol::SigningKey::from_bytes(&[1; 32]);
    for _ in 0..n {
        let head = crate::store::chain_head(
            store.publisher_head(t, &signer.public_key(), TEST_CHAIN).unwrap().as_ref(),
        );
        let batch = sealed_batch(&signer, t, head, 1, 1000).unwrap();
        store.append(Append::new(&batch, store.next_offset(t).unwrap())).unwrap();
    }
    store.sync().unwrap();
}

fn keep_bytes(pattern: &str, max_bytes: u64) -> Retention {
    Retention {
        topics: vec![Rule {
            pattern: TopicPattern::new(pattern).unwrap(),
            max_age_secs: None,
            max_bytes: Some(max_bytes),
            max_messages: None,
        }],
        ..Retention::default()
    }
}

fn segment_bytes(dir: &std::path::Path) -> u64 {
    let segments = dir.join("segments");
    segment::list(&segments)
        .unwrap()
        .into_iter()
        .map(|n| std::fs::metadata(segments.join(segment::segment_name(n))).unwrap().len())
        .sum()
}

/// What a subscriber from offset 0 reads first, and the offsets of the batches after it.
fn read_all(store: &DiskStore, t: &Topic) -> (Option<(u64, u64)>, Vec<u64>) {
    let mut items = store.read(t, Offset::ZERO, usize::MAX).unwrap();
    let retired = match items.first() {
        Some(Stored::Lost(l)) if l.reason == LossReason::Retired => Some((l.offset.0, l.end().0)),
        _ => None,
    };
    if retired.is_some() {
        items.remove(0);
    }
    assert!(items.iter().all(|i| matches!(i, Stored::Batch(_))));
    (retired, items.iter().map(|i| i.offset().0).collect())
}

/// Everything a reopened or rebuilt store must still say: the first offset, the batches from it, the
/// policy, the durable offset, the chain head.
fn check_kept(store: &DiskStore, t: &Topic, first: Offset) {
    assert_eq!(store.first_offset(t).unwrap(), first);
    assert_eq!(store.next_offset(t).unwrap(), Offset(200));
    let (retired, offsets) = read_all(store, t);
    assert_eq!(retired, Some((0, first.0)));
    assert_eq!(offsets, (first.0..200).collect::<Vec<_>>());
    assert_eq!(store.policies(t, 2).unwrap(), [Bytes::from_static(b"policy one")]);
    assert_eq!(store.durable_offset(t, &bob(), "main").unwrap(), Some(Offset(3)));
    let head = store.publisher_head(t, &publisher(), TEST_CHAIN).unwrap().unwrap();
    assert_eq!((head.next_seq(), head.offset), (201, Offset(199)));
}

#[test]
fn a_byte_limit_retires_the_oldest_batches_and_deletes_whole_segments() {
    let dir = tempfile::tempdir().unwrap();
    let t = topic("demo.logs");
    let store = open(dir.path());
    store.put_policy(&t, 1, &Bytes::from_static(b"policy one")).unwrap();
    store.set_durable_offset(&t, &bob(), "main", Offset(3)).unwrap();
    append_n(&store, &t, 200);
    let before = segment_bytes(dir.path());
    assert!(before > 200_000, "{before}");

    let done = store.retain(&keep_bytes("demo.>", 20_000), SystemTime::now()).unwrap();
    let first = store.first_offset(&t).unwrap();
    assert_eq!(done.topics, [(t.clone(), first)]);
    assert!(done.segments_removed > 20, "{done:?}");
    // Kept: at most the limit plus one segment and the active one.
    let kept = segment_bytes(dir.path());
    assert!(kept <= 20_000 + 2 * 8 * 1024 + 4096, "{kept} bytes kept");
    assert!(first.0 > 150 && first.0 < 190, "{first}");
    check_kept(&store, &t, first);
    // A second pass has nothing left to do.
    assert_eq!(store.retain(&keep_bytes("demo.>", 20_000), SystemTime::now()).unwrap().segments_removed, 0);
    // The publisher's chain goes on.
    append_n(&store, &t, 0);
    drop(store);

    // Reopened, and then with its index rebuilt from the segments that are left.
    let store = open(dir.path());
    check_kept(&store, &t, first);
    drop(store);
    // verify-store finds nothing wrong with a folder retention worked on.
    let report = crate::store::disk::verify::verify(dir.path()).unwrap();
    assert!(report.findings.is_empty(), "{:?}", report.findings);
    {
        let db = crate::store::disk::open::open_sled(dir.path(), 1 << 20).unwrap();
        db.insert(LAYOUT_KEY, &b"??"[..]).unwrap();
        db.flush().unwrap();
    }
    let store = open(dir.path());
    check_kept(&store, &t, first);
    append_n(&store, &t, 1);
    assert_eq!(store.next_offset(&t).unwrap(), Offset(201));
}

#[test]
fn a_topic_no_rule_names_keeps_the_segments_it_shares() {
    let dir = tempfile::tempdir().unwrap();
    let (short, kept) = (topic("demo.short"), topic("audit.all"));
    let store = open(dir.path());
    for _ in 0..20 {
        append_n(&store, &short, 5);
        append_n(&store, &kept, 1);
    }
    let files = segment::list(&dir.path().join("segments")).unwrap().len();
    let done = store.retain(&keep_bytes("demo.>", 10_000), SystemTime::now()).unwrap();
    // The short topic's first offset moved, but every segment also holds `audit.all`: none is deleted.
    assert!(store.first_offset(&short).unwrap() > Offset(50));
    assert_eq!(store.first_offset(&kept).unwrap(), Offset(0));
    assert_eq!(done.segments_removed, 0);
    assert_eq!(segment::list(&dir.path().join("segments")).unwrap().len(), files);
    assert_eq!(read_all(&store, &kept).1.len(), 20);
    // The budget takes them whatever they hold, oldest first.
    let budget = Retention { max_total_bytes: Some(40_000), ..keep_bytes("demo.>", 10_000) };
    let done = store.retain(&budget, SystemTime::now()).unwrap();
    assert!(done.segments_removed > 0);
    assert!(store.first_offset(&kept).unwrap() > Offset(0));
    assert!(segment_bytes(dir.path()) <= 40_000 + 2 * 8 * 1024);
}

#[test]
fn an_age_limit_goes_by_each_segments_last_write() {
    let dir = tempfile::tempdir().unwrap();
    let t = topic("demo.old");
    let store = open(dir.path());
    append_n(&store, &t, 50);
    let rules = Retention {
        topics: vec![Rule {
            pattern: TopicPattern::new("demo.old").unwrap(),
            max_age_secs: Some(3600),
            max_bytes: None,
            max_messages: None,
        }],
        ..Retention::default()
    };
    // An hour from now nothing is older than an hour; two hours from now every closed segment is.
    assert_eq!(store.retain(&rules, SystemTime::now()).unwrap().segments_removed, 0);
    let later = SystemTime::now() + Duration::from_secs(7200);
    let done = store.retain(&rules, later).unwrap();
    assert!(done.segments_removed > 0);
    // The active segment (and its batches) are never retired.
    let first = store.first_offset(&t).unwrap();
    assert!(first > Offset(30) && first < Offset(50), "{first}");
}
