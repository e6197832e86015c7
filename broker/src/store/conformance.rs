//! The behavioural scenarios every [`Store`] engine passes, written once against `&dyn Store`: the unit
//! tests run them against the disk and memory engines, and the system tests against the JetStream engine
//! on a real cluster (`tests/system/jetstream.rs`). Each scenario panics (fails its test) when the engine
//! does not behave; each wants a fresh, empty store. Nothing here is used by the broker itself.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use bytes::Bytes;
use sealpost_protocol::{Offset, Principal, PublicKey, Topic};

use super::testing::{self, TEST_CHAIN};
use super::{chain_head, Append, PublisherRecord, Store, Stored, StoredBatch};

/// A scenario: run against a fresh, empty store; panics if the engine misbehaves.
pub type Scenario = fn(&dyn Store);

/// Every scenario, with its name.
pub const SCENARIOS: &[(&str, Scenario)] = &[
    ("empty_topic_starts_at_zero", empty_topic_starts_at_zero),
    ("appends_read_back_in_offset_order", appends_read_back_in_offset_order),
    ("topics_are_independent", topics_are_independent),
    ("read_from_inside_a_batch_starts_with_that_batch", read_from_inside_a_batch_starts_with_that_batch),
    (
        "read_stops_at_max_bytes_but_returns_at_least_one_batch",
        read_stops_at_max_bytes_but_returns_at_least_one_batch,
    ),
    ("publisher_records_and_heads_are_indexed", publisher_records_and_heads_are_indexed),
    ("append_at_a_wrong_offset_stores_nothing", append_at_a_wrong_offset_stores_nothing),
    ("durable_offsets_are_per_topic_principal_and_name", durable_offsets_are_per_topic_principal_and_name),
    (
        "topics_and_durable_subscriptions_are_listed_in_pages",
        topics_and_durable_subscriptions_are_listed_in_pages,
    ),
    ("sync_counts_successful_syncs", sync_counts_successful_syncs),
    ("policies_keep_the_newest_epochs_oldest_first", policies_keep_the_newest_epochs_oldest_first),
    (
        "policy_history_pages_back_newest_first_within_count_and_bytes",
        policy_history_pages_back_newest_first_within_count_and_bytes,
    ),
];

pub(crate) fn topic(s: &str) -> Topic {
    Topic::new(s).unwrap()
}

pub(crate) fn principal(s: &str) -> Principal {
    Principal::new(s).unwrap()
}

pub(crate) fn signer(n: u8) -> sealpost_protocol::SigningKey {
    sealpost_protocol::SigningKey::from_bytes(&[n; 32])
}

pub(crate) fn publisher(n: u8) -> PublicKey {
    signer(n).public_key()
}

/// Appends a real batch of `count` messages of `len` bytes each by `publisher(p)` at the topic's next
/// offset, continuing the publisher's stored chain; returns its record and its bytes.
pub(crate) fn append_batch(
    store: &dyn Store,
    t: &Topic,
    p: u8,
    count: u32,
    len: usize,
) -> (PublisherRecord, Bytes) {
    let head = chain_head(store.publisher_head(t, &publisher(p), TEST_CHAIN).unwrap().as_ref());
    let batch = testing::sealed_batch(&signer(p), t, head, count as usize, len).unwrap();
    let append = Append::new(&batch, store.next_offset(t).unwrap());
    store.append(append).unwrap();
    (append.record(), batch.as_bytes().clone())
}

/// [`append_batch`], returning the record only.
pub(crate) fn append(store: &dyn Store, t: &Topic, p: u8, count: u32, len: usize) -> PublisherRecord {
    append_batch(store, t, p, count, len).0
}

pub(crate) fn offsets(items: &[Stored]) -> Vec<(u64, u32)> {
    items.iter().map(|i| (i.offset().0, i.end().saturating_count_from(i.offset()) as u32)).collect()
}

pub(crate) fn batches(items: Vec<Stored>) -> Vec<StoredBatch> {
    items.into_iter().map(|i| i.batch().expect("a batch, not a loss")).collect()
}

/// A scenario of [`SCENARIOS`].
pub fn empty_topic_starts_at_zero(store: &dyn Store) {
    let t = topic("empty.topic");
    assert_eq!(store.next_offset(&t).unwrap(), Offset(0));
    assert_eq!(store.first_offset(&t).unwrap(), Offset(0));
    assert!(store.read(&t, Offset(0), usize::MAX).unwrap().is_empty());
    assert_eq!(store.publisher_head(&t, &publisher(1), TEST_CHAIN).unwrap(), None);
    assert_eq!(store.publisher_record(&t, &publisher(1), TEST_CHAIN, 1).unwrap(), None);
    assert_eq!(store.durable_offset(&t, &principal("alice"), "d").unwrap(), None);
}

/// A scenario of [`SCENARIOS`].
pub fn appends_read_back_in_offset_order(store: &dyn Store) {
    let t = topic("demo.chat");
    let a = append(store, &t, 1, 3, 10);
    let (b, b_bytes) = append_batch(store, &t, 2, 1, 10);
    let c = append(store, &t, 1, 5, 10);
    assert_eq!((a.offset, b.offset, c.offset), (Offset(0), Offset(3), Offset(4)));
    assert_eq!(store.next_offset(&t).unwrap(), Offset(9));
    assert_eq!(store.first_offset(&t).unwrap(), Offset(0));
    let all = store.read(&t, Offset(0), usize::MAX).unwrap();
    assert_eq!(offsets(&all), vec![(0, 3), (3, 1), (4, 5)]);
    let all = batches(all);
    assert_eq!(all[1].bytes, b_bytes);
    assert_eq!(all[2].end(), Offset(9));
}

/// A scenario of [`SCENARIOS`].
pub fn topics_are_independent(store: &dyn Store) {
    // "a" is a prefix of "a.b" as a string: the engines must still keep them apart.
    let (a, ab) = (topic("a"), topic("a.b"));
    append(store, &a, 1, 2, 4);
    append(store, &ab, 1, 7, 4);
    assert_eq!(store.next_offset(&a).unwrap(), Offset(2));
    assert_eq!(store.next_offset(&ab).unwrap(), Offset(7));
    assert_eq!(offsets(&store.read(&a, Offset(0), usize::MAX).unwrap()), vec![(0, 2)]);
    assert_eq!(store.publisher_head(&a, &publisher(1), TEST_CHAIN).unwrap().map(|h| h.count), Some(2));
}

/// A scenario of [`SCENARIOS`].
pub fn read_from_inside_a_batch_starts_with_that_batch(store: &dyn Store) {
    let t = topic("demo.inside");
    for _ in 0..3 {
        append(store, &t, 1, 4, 8);
    }
    // Batches cover 0..4, 4..8, 8..12.
    assert_eq!(offsets(&store.read(&t, Offset(5), usize::MAX).unwrap()), vec![(4, 4), (8, 4)]);
    assert_eq!(offsets(&store.read(&t, Offset(4), usize::MAX).unwrap()), vec![(4, 4), (8, 4)]);
    assert_eq!(offsets(&store.read(&t, Offset(11), usize::MAX).unwrap()), vec![(8, 4)]);
    assert!(store.read(&t, Offset(12), usize::MAX).unwrap().is_empty());
    assert!(store.read(&t, Offset(u64::MAX), usize::MAX).unwrap().is_empty());
}

/// A scenario of [`SCENARIOS`].
pub fn read_stops_at_max_bytes_but_returns_at_least_one_batch(store: &dyn Store) {
    let t = topic("demo.bytes");
    // Four batches of one size (one message of 100 bytes each, on one topic).
    let size = append_batch(store, &t, 1, 1, 100).1.len();
    for _ in 0..3 {
        assert_eq!(append_batch(store, &t, 1, 1, 100).1.len(), size);
    }
    assert_eq!(store.read(&t, Offset(0), 2 * size + size / 2).unwrap().len(), 2);
    assert_eq!(store.read(&t, Offset(0), 2 * size).unwrap().len(), 2);
    assert_eq!(store.read(&t, Offset(0), 2 * size - 1).unwrap().len(), 1);
    assert_eq!(offsets(&store.read(&t, Offset(1), 1).unwrap()), vec![(1, 1)]);
    assert_eq!(store.read(&t, Offset(0), 0).unwrap().len(), 1);
    assert_eq!(store.read(&t, Offset(0), 100 * size).unwrap().len(), 4);
}

/// A scenario of [`SCENARIOS`].
pub fn publisher_records_and_heads_are_indexed(store: &dyn Store) {
    let t = topic("demo.pub");
    let (p1, p2) = (publisher(1), publisher(2));
    let r1 = append(store, &t, 1, 2, 8);
    let r2 = append(store, &t, 2, 3, 8);
    let r3 = append(store, &t, 1, 4, 8);
    assert_eq!(r3.first_seq, 3);
    assert_eq!(store.publisher_record(&t, &p1, TEST_CHAIN, 1).unwrap(), Some(r1));
    assert_eq!(store.publisher_record(&t, &p1, TEST_CHAIN, 3).unwrap(), Some(r3));
    assert_eq!(store.publisher_record(&t, &p1, TEST_CHAIN, 2).unwrap(), None);
    assert_eq!(store.publisher_record(&t, &p2, TEST_CHAIN, 1).unwrap(), Some(r2));
    assert_eq!(store.publisher_head(&t, &p1, TEST_CHAIN).unwrap(), Some(r3));
    assert_eq!(store.publisher_head(&t, &p2, TEST_CHAIN).unwrap(), Some(r2));
    assert_eq!(store.publisher_head(&t, &publisher(3), TEST_CHAIN).unwrap(), None);
}

/// A scenario of [`SCENARIOS`].
pub fn append_at_a_wrong_offset_stores_nothing(store: &dyn Store) {
    let t = topic("demo.wrong");
    let p = publisher(1);
    let first = append(store, &t, 1, 2, 8);
    let next = testing::sealed_batch(&signer(1), &t, first.head(), 1, 8).unwrap();
    for offset in [0, 1, 3].map(Offset) {
        assert!(store.append(Append::new(&next, offset)).is_err(), "offset {offset}");
    }
    assert_eq!(store.next_offset(&t).unwrap(), Offset(2));
    assert_eq!(store.publisher_record(&t, &p, TEST_CHAIN, 3).unwrap(), None);
    assert_eq!(store.read(&t, Offset(0), usize::MAX).unwrap().len(), 1);
}

/// A scenario of [`SCENARIOS`].
pub fn topics_and_durable_subscriptions_are_listed_in_pages(store: &dyn Store) {
    for name in ["demo.b", "demo.a", "x", "demo.c"] {
        append(store, &topic(name), 1, 1, 10);
    }
    // Page by page, each after the last one's key, every topic once.
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let page = store.topics(after.as_ref(), 2).unwrap();
        assert!(page.len() <= 2);
        if page.is_empty() {
            break;
        }
        after = page.last().cloned();
        seen.extend(page);
    }
    let mut names: Vec<String> = seen.iter().map(|t| t.to_string()).collect();
    names.sort();
    assert_eq!(names, ["demo.a", "demo.b", "demo.c", "x"]);
    assert_eq!(seen.len(), 4, "a topic listed twice: {seen:?}");

    let t = topic("demo.a");
    for (who, name, at) in [("bob", "main", 3), ("alice", "main", 1), ("ab", "c", 2), ("a", "bc", 4)] {
        store.set_durable_offset(&t, &principal(who), name, Offset(at)).unwrap();
    }
    let first = store.durables(None, 3).unwrap();
    let rest = store.durables(first.last().map(|(k, _)| k), 3).unwrap();
    let mut all: Vec<(String, String, u64)> =
        first.iter().chain(&rest).map(|(k, o)| (k.principal.to_string(), k.name.clone(), o.0)).collect();
    assert_eq!((first.len(), rest.len()), (3, 1));
    all.sort();
    assert_eq!(
        all,
        [
            ("a".into(), "bc".into(), 4),
            ("ab".into(), "c".into(), 2),
            ("alice".into(), "main".into(), 1),
            ("bob".into(), "main".into(), 3)
        ]
    );
}

/// A scenario of [`SCENARIOS`].
pub fn durable_offsets_are_per_topic_principal_and_name(store: &dyn Store) {
    let (t, u) = (topic("demo.d"), topic("demo.e"));
    store.set_durable_offset(&t, &principal("alice"), "main", Offset(5)).unwrap();
    store.set_durable_offset(&t, &principal("bob"), "main", Offset(7)).unwrap();
    store.set_durable_offset(&t, &principal("alice"), "other", Offset(9)).unwrap();
    store.set_durable_offset(&u, &principal("alice"), "main", Offset(11)).unwrap();
    // Length-prefixed keys: ("ab", "c") and ("a", "bc") are different subscriptions.
    store.set_durable_offset(&t, &principal("ab"), "c", Offset(1)).unwrap();
    store.set_durable_offset(&t, &principal("a"), "bc", Offset(2)).unwrap();
    assert_eq!(store.durable_offset(&t, &principal("alice"), "main").unwrap(), Some(Offset(5)));
    assert_eq!(store.durable_offset(&t, &principal("bob"), "main").unwrap(), Some(Offset(7)));
    assert_eq!(store.durable_offset(&t, &principal("alice"), "other").unwrap(), Some(Offset(9)));
    assert_eq!(store.durable_offset(&u, &principal("alice"), "main").unwrap(), Some(Offset(11)));
    assert_eq!(store.durable_offset(&t, &principal("ab"), "c").unwrap(), Some(Offset(1)));
    assert_eq!(store.durable_offset(&t, &principal("a"), "bc").unwrap(), Some(Offset(2)));
    store.set_durable_offset(&t, &principal("alice"), "main", Offset(6)).unwrap();
    assert_eq!(store.durable_offset(&t, &principal("alice"), "main").unwrap(), Some(Offset(6)));
}

/// A scenario of [`SCENARIOS`].
pub fn sync_counts_successful_syncs(store: &dyn Store) {
    let before = store.syncs();
    append(store, &topic("demo.sync"), 1, 1, 8);
    store.sync().unwrap();
    store.sync().unwrap();
    assert_eq!(store.syncs(), before + 2);
}

/// A scenario of [`SCENARIOS`].
pub fn policies_keep_the_newest_epochs_oldest_first(store: &dyn Store) {
    let t = topic("demo.policy");
    assert!(store.policies(&t, 2).unwrap().is_empty());
    for epoch in [1u64, 2, 3] {
        store.put_policy(&t, epoch, &Bytes::from(format!("policy {epoch}"))).unwrap();
    }
    store.put_policy(&topic("demo.other"), 9, &Bytes::from("other")).unwrap();
    assert_eq!(store.policies(&t, 2).unwrap(), vec![Bytes::from("policy 2"), Bytes::from("policy 3")]);
    assert_eq!(store.policies(&t, 1).unwrap(), vec![Bytes::from("policy 3")]);
    assert_eq!(store.policies(&t, 10).unwrap().len(), 3);
}

/// A scenario of [`SCENARIOS`].
pub fn policy_history_pages_back_newest_first_within_count_and_bytes(store: &dyn Store) {
    let t = topic("demo.history");
    assert!(store.policy_history(&t, None, 10, usize::MAX).unwrap().is_empty());
    for epoch in 1u64..=5 {
        store.put_policy(&t, epoch, &Bytes::from(format!("policy {epoch}"))).unwrap();
    }
    store.put_policy(&topic("demo.other"), 9, &Bytes::from("other")).unwrap();
    let page = |before, max, max_bytes| {
        let got = store.policy_history(&t, before, max, max_bytes).unwrap();
        got.iter().map(|p| String::from_utf8_lossy(p).into_owned()).collect::<Vec<_>>()
    };
    assert_eq!(page(None, 2, usize::MAX), ["policy 5", "policy 4"]);
    assert_eq!(page(Some(4), 10, usize::MAX), ["policy 3", "policy 2", "policy 1"]);
    assert_eq!(page(Some(1), 10, usize::MAX), Vec::<String>::new());
    // "policy n" is 8 bytes: two fit in 16, and the first always comes.
    assert_eq!(page(None, 10, 16), ["policy 5", "policy 4"]);
    assert_eq!(page(Some(3), 10, 1), ["policy 2"]);
    assert_eq!(page(None, 0, usize::MAX), Vec::<String>::new());
}
