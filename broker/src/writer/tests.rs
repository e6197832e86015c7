//! The [`Log`]'s contract, tested through its public API on a memory store (a gated one where a test
//! must hold the writer in its sync) and on the disk engine.

use rand::SeedableRng;
use sealpost_protocol::{
    seal, ChainHead, ChainId, ContentKey, Epoch, Limits, SealParams, SigningKey, Timestamp,
};

use super::*;
use crate::store::testing::{SyncGate, TestStore};
use crate::store::MemoryStore;

fn topic(s: &str) -> Topic {
    Topic::new(s).unwrap()
}

fn signer(n: u8) -> SigningKey {
    SigningKey::from_bytes(&[n; 32])
}

/// Seals `count` messages by `signer` on `topic`, continuing `head`; advances `head`.
fn sealed(signer: &SigningKey, topic: &Topic, head: &mut ChainHead, count: usize) -> VerifiedBatch {
    let params = SealParams {
        topic: topic.clone(),
        epoch: Epoch(1),
        chain: ChainId([0x5C; 16]),
        first_seq: head.next_seq,
        prev_digest: head.prev_digest,
        created_at: Timestamp(1_763_856_000_000),
    };
    let msgs: Vec<Vec<u8>> = (0..count).map(|i| format!("message {i}").into_bytes()).collect();
    let mut rng = rand::rngs::StdRng::seed_from_u64(head.next_seq);
    let batch =
        seal(signer, &ContentKey::from_bytes(&[0xC0; 32]), params, &msgs, &Limits::default(), &mut rng)
            .unwrap();
    *head = ChainHead::after(&batch);
    batch
}

/// Opens a log over a memory store whose syncs wait at a gate, letting its opening sync through.
async fn gated_log() -> (Arc<Log>, Arc<TestStore>, SyncGate) {
    let store = Arc::new(TestStore::default());
    let mut gate = store.gate_syncs();
    gate.release_one();
    let log = Arc::new(Log::open(store.clone()).unwrap());
    gate.entered().await;
    (log, store, gate)
}

async fn wait_queued(log: &Log, n: usize) {
    while log.queued() < n {
        tokio::task::yield_now().await;
    }
}

/// The first batch of `signer` on `topic`.
fn genesis_batch(signer: &SigningKey, topic: &Topic, count: usize) -> VerifiedBatch {
    sealed(signer, topic, &mut ChainHead::default(), count)
}

fn spawn_append(
    log: &Arc<Log>,
    t: &Topic,
    batch: VerifiedBatch,
) -> tokio::task::JoinHandle<Result<Appended>> {
    let (log, t) = (log.clone(), t.clone());
    tokio::spawn(async move { log.append(t, batch).await })
}

fn appended(first_offset: u64, count: u32) -> Appended {
    Appended { first_offset: Offset(first_offset), count, duplicate: false }
}

#[tokio::test]
async fn offsets_follow_arrival_order_within_a_group_and_chain_per_publisher() {
    let (log, store, mut gate) = gated_log().await;
    let t = topic("demo.chat");
    let (a, b, c) = (signer(1), signer(2), signer(3));
    let (mut ha, mut hb, mut hc) = (ChainHead::GENESIS, ChainHead::GENESIS, ChainHead::GENESIS);
    // Group 1: a1 alone; the writer waits in its sync while group 2 queues up.
    let a1 = spawn_append(&log, &t, sealed(&a, &t, &mut ha, 2));
    gate.entered().await;
    let mut group = Vec::new();
    for (i, batch) in [
        sealed(&b, &t, &mut hb, 3),
        sealed(&a, &t, &mut ha, 1),
        sealed(&a, &t, &mut ha, 2),
        sealed(&c, &t, &mut hc, 4),
    ]
    .into_iter()
    .enumerate()
    {
        group.push(spawn_append(&log, &t, batch));
        wait_queued(&log, i + 1).await;
    }
    gate.open();
    assert_eq!(a1.await.unwrap().unwrap(), appended(0, 2));
    let mut answers = Vec::new();
    for task in group {
        answers.push(task.await.unwrap().unwrap());
    }
    assert_eq!(answers, vec![appended(2, 3), appended(5, 1), appended(6, 2), appended(8, 4)]);
    // Opening, group 1, group 2.
    assert_eq!(store.syncs(), 3);
    let stored: Vec<_> = store
        .read(&t, Offset(0), usize::MAX)
        .unwrap()
        .into_iter()
        .map(|s| s.batch().unwrap())
        .map(|s| (s.offset.0, s.count))
        .collect();
    assert_eq!(stored, vec![(0, 2), (2, 3), (5, 1), (6, 2), (8, 4)]);
}

#[tokio::test]
async fn retried_batch_returns_original_offsets_and_is_stored_once() {
    let store = Arc::new(MemoryStore::new());
    let log = Log::open(store.clone()).unwrap();
    let t = topic("demo.retry");
    let mut head = ChainHead::GENESIS;
    let first = sealed(&signer(1), &t, &mut head, 3);
    let second = sealed(&signer(1), &t, &mut head, 2);
    assert_eq!(log.append(t.clone(), first.clone()).await.unwrap(), appended(0, 3));
    assert_eq!(log.append(t.clone(), second.clone()).await.unwrap(), appended(3, 2));
    for (batch, offset, count) in [(first, 0, 3), (second, 3, 2)] {
        let answer = log.append(t.clone(), batch).await.unwrap();
        assert_eq!(answer, Appended { first_offset: Offset(offset), count, duplicate: true });
    }
    assert_eq!(store.read(&t, Offset(0), usize::MAX).unwrap().len(), 2);
    assert_eq!(store.next_offset(&t).unwrap(), Offset(5));
    // Opening and the two appends synced; the retries of durable batches needed no sync.
    assert_eq!(store.syncs(), 3);
}

#[tokio::test]
async fn batch_that_does_not_continue_the_chain_is_a_conflict() {
    let store = Arc::new(MemoryStore::new());
    let log = Log::open(store.clone()).unwrap();
    let t = topic("demo.conflict");
    let a = signer(1);
    // Sequence 3 first: a gap.
    let mut skipped = ChainHead { next_seq: 3, prev_digest: sealpost_protocol::Digest([1; 32]) };
    let gap = sealed(&a, &t, &mut skipped, 1);
    assert!(matches!(log.append(t.clone(), gap).await, Err(Error::SequenceConflict { expected: 1, got: 3 })));
    // Two different batches at sequence 1: the second is a fork.
    let mut head = ChainHead::GENESIS;
    log.append(t.clone(), sealed(&a, &t, &mut head, 1)).await.unwrap();
    let mut other = ChainHead::GENESIS;
    let fork = sealed(&a, &t, &mut other, 2);
    assert!(matches!(
        log.append(t.clone(), fork).await,
        Err(Error::SequenceConflict { expected: 2, got: 1 })
    ));
    assert_eq!(store.next_offset(&t).unwrap(), Offset(1));
}

#[tokio::test]
async fn append_refuses_a_batch_sealed_for_another_topic() {
    let log = Log::open(Arc::new(MemoryStore::new())).unwrap();
    let batch = genesis_batch(&signer(1), &topic("demo.a"), 1);
    let result = log.append(topic("demo.b"), batch).await;
    assert!(matches!(result, Err(Error::Protocol(sealpost_protocol::Error::WrongTopic { .. }))));
}

#[tokio::test]
async fn concurrent_appends_share_syncs() {
    const TASKS: usize = 32;
    let (log, store, mut gate) = gated_log().await;
    let t = topic("demo.group");
    let first = spawn_append(&log, &t, genesis_batch(&signer(0), &t, 1));
    gate.entered().await;
    let tasks: Vec<_> =
        (1..TASKS).map(|i| spawn_append(&log, &t, genesis_batch(&signer(i as u8), &t, 1))).collect();
    wait_queued(&log, TASKS - 1).await;
    gate.open();
    let mut offsets = vec![first.await.unwrap().unwrap().first_offset.0];
    for task in tasks {
        offsets.push(task.await.unwrap().unwrap().first_offset.0);
    }
    offsets.sort_unstable();
    assert_eq!(offsets, (0..TASKS as u64).collect::<Vec<_>>());
    let group_syncs = store.syncs() - 1;
    assert!(group_syncs < TASKS as u64, "{group_syncs} syncs for {TASKS} appends");
    assert_eq!(group_syncs, 2);
}

#[tokio::test]
async fn durable_end_advances_only_after_sync() {
    let (log, store, mut gate) = gated_log().await;
    let (watched, fresh, other) = (topic("demo.watched"), topic("demo.fresh"), topic("demo.other"));
    let mut end = log.durable_end(&watched).unwrap();
    assert_eq!(*end.borrow(), Offset(0));
    // Group 1 holds the writer in its sync while group 2 queues up.
    let blocker = spawn_append(&log, &other, genesis_batch(&signer(9), &other, 1));
    gate.entered().await;
    let a = spawn_append(&log, &watched, genesis_batch(&signer(1), &watched, 2));
    wait_queued(&log, 1).await;
    let b = spawn_append(&log, &fresh, genesis_batch(&signer(1), &fresh, 3));
    wait_queued(&log, 2).await;
    gate.release_one();
    assert_eq!(blocker.await.unwrap().unwrap(), appended(0, 1));
    // Group 2 is stored and its sync waits at the gate.
    gate.entered().await;
    assert_eq!(store.next_offset(&watched).unwrap(), Offset(2));
    assert_eq!(store.next_offset(&fresh).unwrap(), Offset(3));
    assert!(!end.has_changed().unwrap());
    assert_eq!(*end.borrow(), Offset(0));
    // A topic first asked about now reports its durable end, not what the store holds.
    let mut fresh_end = log.durable_end(&fresh).unwrap();
    assert_eq!(*fresh_end.borrow(), Offset(0));
    gate.open();
    assert_eq!(a.await.unwrap().unwrap(), appended(0, 2));
    assert_eq!(b.await.unwrap().unwrap(), appended(0, 3));
    assert_eq!(*end.wait_for(|&e| e == Offset(2)).await.unwrap(), Offset(2));
    assert_eq!(*fresh_end.wait_for(|&e| e == Offset(3)).await.unwrap(), Offset(3));
    assert_eq!(*log.durable_end(&watched).unwrap().borrow(), Offset(2));
}

#[tokio::test]
async fn failed_sync_fails_the_whole_group_and_retries_find_the_stored_batches() {
    let (log, store, mut gate) = gated_log().await;
    let t = topic("demo.full");
    let mut end = log.durable_end(&t).unwrap();
    let (a, b) = (signer(1), signer(2));
    let (mut ha, mut hb) = (ChainHead::GENESIS, ChainHead::GENESIS);
    let a1 = sealed(&a, &t, &mut ha, 1);
    let a2 = sealed(&a, &t, &mut ha, 2);
    let b1 = sealed(&b, &t, &mut hb, 3);
    let ok = spawn_append(&log, &t, a1);
    gate.entered().await;
    // Group 2: two appends and a commit, whose sync (the store's third) fails.
    store.fail_sync(2);
    let failing = [spawn_append(&log, &t, a2.clone()), spawn_append(&log, &t, b1.clone())];
    wait_queued(&log, 2).await;
    let commit = {
        let log = log.clone();
        let t = t.clone();
        tokio::spawn(
            async move { log.commit_offset(t, "alice".parse().unwrap(), "main".into(), Offset(1)).await },
        )
    };
    wait_queued(&log, 3).await;
    gate.open();
    assert_eq!(ok.await.unwrap().unwrap(), appended(0, 1));
    for task in failing {
        assert!(matches!(task.await.unwrap(), Err(Error::StorageFull)));
    }
    assert!(matches!(commit.await.unwrap(), Err(Error::StorageFull)));
    assert_eq!(*end.borrow_and_update(), Offset(1));
    // The tail holds durable batches only: the first group's, not the failed group's, whose offsets may
    // be reused; readers of those go to the store.
    let tail = log.read_tail(&t, Offset(0), usize::MAX).unwrap();
    assert_eq!(tail.iter().map(|b| (b.offset.0, b.count)).collect::<Vec<_>>(), [(0, 1)]);
    assert!(log.read_tail(&t, Offset(1), usize::MAX).is_none());
    // The store kept the failed group's batches: retries are duplicates with their original offsets,
    // and the chain continues from the store, not from a stale cache.
    let dup = |first_offset, count| Appended { first_offset: Offset(first_offset), count, duplicate: true };
    assert_eq!(log.append(t.clone(), a2).await.unwrap(), dup(1, 2));
    assert_eq!(log.append(t.clone(), b1).await.unwrap(), dup(3, 3));
    assert_eq!(log.append(t.clone(), sealed(&a, &t, &mut ha, 1)).await.unwrap(), appended(6, 1));
    assert_eq!(*end.wait_for(|&e| e == Offset(7)).await.unwrap(), Offset(7));
    // Appends after the failure fill the tail again, from where they start.
    let tail = log.read_tail(&t, Offset(6), usize::MAX).unwrap();
    assert_eq!(tail.iter().map(|b| (b.offset.0, b.count)).collect::<Vec<_>>(), [(6, 1)]);
    assert!(log.read_tail(&t, Offset(5), usize::MAX).is_none());
}

#[tokio::test]
async fn the_tail_serves_what_the_store_would() {
    let store = Arc::new(MemoryStore::new());
    let log = Log::open(store.clone()).unwrap();
    let t = topic("demo.tail");
    let a = signer(1);
    let mut head = ChainHead::GENESIS;
    for count in [2, 3, 1, 4] {
        log.append(t.clone(), sealed(&a, &t, &mut head, count)).await.unwrap();
    }
    // Batches cover 0..2, 2..5, 5..6, 6..10; reads start with the batch that contains `from`.
    for (from, max) in [(0, usize::MAX), (3, usize::MAX), (5, 1), (9, usize::MAX)] {
        let from = Offset(from);
        let tail = log.read_tail(&t, from, max).unwrap();
        let stored: Vec<_> =
            store.read(&t, from, max).unwrap().into_iter().map(|s| s.batch().unwrap()).collect();
        assert_eq!(tail, stored, "from {from}, max {max}");
    }
    // Past the end the tail has nothing and says so: the store is read.
    assert!(log.read_tail(&t, Offset(10), usize::MAX).is_none());
    assert!(log.read_tail(&topic("demo.other"), Offset(0), usize::MAX).is_none());
}

#[tokio::test]
async fn committed_offsets_are_stored_and_synced() {
    let store = Arc::new(MemoryStore::new());
    let log = Log::open(store.clone()).unwrap();
    let t = topic("demo.commit");
    let before = store.syncs();
    log.commit_offset(t.clone(), "alice".parse().unwrap(), "main".into(), Offset(42)).await.unwrap();
    assert_eq!(store.durable_offset(&t, &"alice".parse().unwrap(), "main").unwrap(), Some(Offset(42)));
    assert_eq!(store.syncs(), before + 1);
}

#[tokio::test]
async fn close_stops_the_writer_and_releases_the_store() {
    let store = Arc::new(MemoryStore::new());
    let log = Log::open(store.clone()).unwrap();
    let t = topic("demo.close");
    log.append(t.clone(), genesis_batch(&signer(1), &t, 1)).await.unwrap();
    log.close().await.unwrap();
    // The writer thread and the log held the other references.
    assert_eq!(Arc::strong_count(&store), 1);
    assert_eq!(store.next_offset(&t).unwrap(), Offset(1));
}

#[tokio::test]
async fn acknowledged_batches_survive_a_restart_on_disk_and_retries_stay_duplicates() {
    let dir = tempfile::tempdir().unwrap();
    let t = topic("demo.restart");
    let a = signer(1);
    let mut head = ChainHead::GENESIS;
    let first = sealed(&a, &t, &mut head, 2);
    {
        let log = Log::open(Arc::new(crate::store::DiskStore::open(dir.path()).unwrap())).unwrap();
        assert_eq!(log.append(t.clone(), first.clone()).await.unwrap(), appended(0, 2));
        log.close().await.unwrap();
    }
    let store = Arc::new(crate::store::DiskStore::open(dir.path()).unwrap());
    let log = Log::open(store.clone()).unwrap();
    assert_eq!(*log.durable_end(&t).unwrap().borrow(), Offset(2));
    let retry = log.append(t.clone(), first).await.unwrap();
    assert_eq!(retry, Appended { first_offset: Offset(0), count: 2, duplicate: true });
    assert_eq!(log.append(t.clone(), sealed(&a, &t, &mut head, 1)).await.unwrap(), appended(2, 1));
    assert_eq!(store.read(&t, Offset(0), usize::MAX).unwrap().len(), 2);
}

#[test]
fn dropping_the_log_joins_the_writer() {
    let store = Arc::new(MemoryStore::new());
    drop(Log::open(store.clone()).unwrap());
    assert_eq!(Arc::strong_count(&store), 1);
}

#[tokio::test]
async fn a_sync_failed_for_good_refuses_its_group_and_every_later_request_and_reports_why() {
    let (log, store, mut gate) = gated_log().await;
    let t = topic("demo.fsync");
    let mut end = log.durable_end(&t).unwrap();
    let mut failed = log.failed();
    let (a, b) = (signer(1), signer(2));
    let (mut ha, mut hb) = (ChainHead::GENESIS, ChainHead::GENESIS);
    let ok = spawn_append(&log, &t, sealed(&a, &t, &mut ha, 1));
    gate.entered().await;
    // The store's third sync (group 2's) fails as a failed fdatasync does.
    store.fail_sync_for_good(2);
    let failing = spawn_append(&log, &t, sealed(&a, &t, &mut ha, 2));
    wait_queued(&log, 1).await;
    gate.release_one();
    assert_eq!(ok.await.unwrap().unwrap(), appended(0, 1));
    gate.entered().await;
    // Queued behind the failing group: never executed.
    let queued = spawn_append(&log, &t, sealed(&b, &t, &mut hb, 3));
    let commit = {
        let (log, t) = (log.clone(), t.clone());
        tokio::spawn(
            async move { log.commit_offset(t, "alice".parse().unwrap(), "main".into(), Offset(1)).await },
        )
    };
    wait_queued(&log, 2).await;
    gate.open();
    assert!(matches!(failing.await.unwrap(), Err(Error::StorageFailed(_))));
    assert!(matches!(queued.await.unwrap(), Err(Error::StorageFailed(_))));
    assert!(matches!(commit.await.unwrap(), Err(Error::StorageFailed(_))));
    let why = failed.wait_for(Option::is_some).await.unwrap().clone().unwrap();
    assert!(why.contains("Input/output error"), "{why}");
    // Requests after the failure are refused at once, and nothing reached the store after it.
    let later = log.append(t.clone(), genesis_batch(&signer(4), &t, 1)).await;
    assert!(matches!(later, Err(Error::StorageFailed(_))));
    assert_eq!(store.next_offset(&t).unwrap(), Offset(3), "only the failed group's append was stored");
    assert_eq!(store.durable_offset(&t, &"alice".parse().unwrap(), "main").unwrap(), None);
    // Nothing after the failure counts as durable, and closing does not sync.
    assert_eq!(*end.borrow_and_update(), Offset(1));
    let log = Arc::into_inner(log).unwrap();
    assert!(matches!(log.close().await, Err(Error::StorageFailed(_))));
}

#[tokio::test]
async fn a_group_another_broker_got_ahead_of_is_sequenced_again_and_answered_once() {
    // A shared log: the engine refuses the append at offset 2 once as contended (another broker took its
    // offset); the writer drops its caches and executes the group again, and the publisher is answered
    // once, with the offset the second attempt stored it at.
    let store = Arc::new(TestStore::new(MemoryStore::new()));
    let contended = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let once = contended.clone();
    store.before_append(move |append| {
        if append.offset() == Offset(2) && !once.swap(true, std::sync::atomic::Ordering::SeqCst) {
            return Err(Error::Contended("another broker appended at 2".into()));
        }
        Ok(())
    });
    let log = Arc::new(Log::open(store.clone()).unwrap());
    let t = topic("demo.shared");
    let a = signer(1);
    let mut head = ChainHead::GENESIS;
    let (first, second) = (sealed(&a, &t, &mut head, 2), sealed(&a, &t, &mut head, 1));
    let answers = [spawn_append(&log, &t, first), spawn_append(&log, &t, second)];
    let [first, second] = answers;
    let first = first.await.unwrap().unwrap();
    assert_eq!((first.first_offset, first.count), (Offset(0), 2));
    assert_eq!(second.await.unwrap().unwrap(), appended(2, 1));
    assert!(contended.load(std::sync::atomic::Ordering::SeqCst));
    let stored = store.read(&t, Offset(0), usize::MAX).unwrap();
    assert_eq!(stored.iter().map(|s| (s.offset().0, s.end().0)).collect::<Vec<_>>(), [(0, 2), (2, 3)]);
}
