//! The disk engine's own scenarios: recovery after crashes that left the index and the segments apart,
//! lazy index syncs, sled's blob files, layout 2 folders, a broken index. (The scenarios every engine
//! shares are in `store/mod.rs`; one flipped bit at a time is `bit_flips.rs`.)

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};

use super::index::{
    batch_key, durable_key, policy_key, publisher_key, topic_key, CHECKPOINT_KEY, LAYOUT_KEY, LAYOUT_VERSION,
};
use super::open::open_sled;
use super::segment::{self, Checkpoint, Location};
use super::sync::entries;
use super::*;
use crate::store::testing::{sealed_batch_on, TEST_CHAIN};
use sealpost_protocol::{ChainHead, ChainId};

fn topic(s: &str) -> Topic {
    Topic::new(s).unwrap()
}

fn bob() -> Principal {
    "bob".parse().unwrap()
}

#[test]
fn sync_makes_blob_files_durable_and_remembers_them() {
    let dir = tempfile::tempdir().unwrap();
    let store = DiskStore::open(dir.path()).unwrap();
    // Batch bytes live in segments; a 512 KiB policy is a value large enough for sled to put in a blob.
    store.put_policy(&topic("demo.blob"), 1, &Bytes::from(vec![7u8; 512 * 1024])).unwrap();
    // A policy is durable in the segments; make this sync make the index durable too.
    store.meta_dirty.store(true, Ordering::SeqCst);
    store.sync().unwrap();
    let blobs = entries(&dir.path().join("blobs")).unwrap();
    assert!(!blobs.is_empty(), "a 512 KiB value should be stored in a blob file");
    {
        let state = store.index_files.lock().unwrap();
        assert!(blobs.iter().all(|b| state.young_blobs.contains_key(b)));
        assert!(state.root_entries.is_some());
    }
    // The next sync that makes the index durable checks them again.
    store.put_policy(&topic("demo.blob"), 2, &Bytes::from_static(b"small")).unwrap();
    store.meta_dirty.store(true, Ordering::SeqCst);
    store.sync().unwrap();
    let state = store.index_files.lock().unwrap();
    assert!(blobs.iter().all(|b| state.final_blobs.contains(b)));
    assert!(state.young_blobs.is_empty());
}

fn publisher(n: u8) -> PublicKey {
    sealpost_protocol::SigningKey::from_bytes(&[n; 32]).public_key()
}

/// Appends `n` batches of one 1000-byte message by `publisher(1)` on `t`, continuing its stored chain;
/// returns their bytes.
fn append_n(store: &DiskStore, t: &Topic, n: usize) -> Vec<Bytes> {
    let signer = sealpost_protocol::SigningKey::from_bytes(&[1; 32]);
    (0..n)
        .map(|_| {
            let head = crate::store::chain_head(
                store.publisher_head(t, &signer.public_key(), TEST_CHAIN).unwrap().as_ref(),
            );
            let batch = crate::store::testing::sealed_batch(&signer, t, head, 1, 1000).unwrap();
            store.append(Append::new(&batch, store.next_offset(t).unwrap())).unwrap();
            batch.into_bytes()
        })
        .collect()
}

/// The segment files of a store, newest last.
fn segment_files(dir: &Path) -> Vec<PathBuf> {
    let segments = dir.join("segments");
    segment::list(&segments).unwrap().into_iter().map(|n| segments.join(segment::segment_name(n))).collect()
}

#[test]
fn recovery_drops_indexed_batches_whose_bytes_never_reached_the_disk() {
    let dir = tempfile::tempdir().unwrap();
    let (t, other) = (topic("demo.crash"), topic("demo.calm"));
    let (synced_len, mut written) = {
        let store = DiskStore::open(dir.path()).unwrap();
        let written = append_n(&store, &t, 5);
        append_n(&store, &other, 2);
        store.sync().unwrap();
        let synced_len = std::fs::metadata(segment_files(dir.path()).pop().unwrap()).unwrap().len();
        // Five more batches: their index entries reach the disk (sled flushed), their bytes do not (the
        // segment loses everything after the checkpoint, as a crash before the fdatasync can leave it).
        append_n(&store, &t, 5);
        store.db.flush().unwrap();
        (synced_len, written)
    };
    let active = segment_files(dir.path()).pop().unwrap();
    let synced = synced_len;
    assert!(std::fs::metadata(&active).unwrap().len() > synced);
    OpenOptions::new().write(true).open(&active).unwrap().set_len(synced + 500).unwrap();

    let store = DiskStore::open(dir.path()).unwrap();
    assert_eq!(store.next_offset(&t).unwrap(), Offset(5), "the five batches that were never synced are gone");
    assert_eq!(store.read(&t, Offset(0), usize::MAX).unwrap().len(), 5);
    assert_eq!(store.publisher_head(&t, &publisher(1), TEST_CHAIN).unwrap().map(|h| h.next_seq()), Some(6));
    assert_eq!(store.publisher_record(&t, &publisher(1), TEST_CHAIN, 6).unwrap(), None);
    assert_eq!(store.next_offset(&other).unwrap(), Offset(2));
    // The log continues at offset 5, in a new segment, and that survives another reopen.
    written.extend(append_n(&store, &t, 2));
    store.sync().unwrap();
    drop(store);
    let store = DiskStore::open(dir.path()).unwrap();
    let batches: Vec<_> =
        store.read(&t, Offset(0), usize::MAX).unwrap().into_iter().map(|b| b.batch().unwrap()).collect();
    assert_eq!(batches.iter().map(|b| b.offset.0).collect::<Vec<_>>(), (0..7).collect::<Vec<_>>());
    assert_eq!(batches.into_iter().map(|b| b.bytes).collect::<Vec<_>>(), written);
}

#[test]
fn recovery_rebuilds_index_entries_that_never_reached_the_disk_from_the_segments() {
    let dir = tempfile::tempdir().unwrap();
    let t = topic("demo.replay");
    let (records, written) = {
        let store = DiskStore::open(dir.path()).unwrap();
        append_n(&store, &t, 3);
        // An acknowledged sync makes the segments durable; the index is made durable lazily.
        store.sync().unwrap();
        let records: Vec<_> = (1..=3)
            .map(|seq| store.publisher_record(&t, &publisher(1), TEST_CHAIN, seq).unwrap().unwrap())
            .collect();
        let written = store.read(&t, Offset(0), usize::MAX).unwrap();
        // A crash before the index reached the disk loses its entries: remove them, as a crash would.
        for r in &records {
            store.db.remove(batch_key(&t, r.offset)).unwrap();
            store.db.remove(publisher_key(&t, &publisher(1), TEST_CHAIN, r.first_seq)).unwrap();
        }
        store.db.remove(topic_key(&t)).unwrap();
        store.db.flush().unwrap();
        (records, written)
    };
    let store = DiskStore::open(dir.path()).unwrap();
    assert_eq!(store.read(&t, Offset(0), usize::MAX).unwrap(), written);
    assert_eq!(store.publisher_head(&t, &publisher(1), TEST_CHAIN).unwrap(), records.last().copied());
    assert_eq!(store.publisher_record(&t, &publisher(1), TEST_CHAIN, 2).unwrap(), Some(records[1]));
    append_n(&store, &t, 1);
    assert_eq!(store.next_offset(&t).unwrap(), Offset(4));
}

#[test]
fn a_sync_makes_the_index_durable_only_every_64_mib() {
    let dir = tempfile::tempdir().unwrap();
    let store = DiskStore::open(dir.path()).unwrap();
    let t = topic("demo.lazy");
    let checkpoint = || Checkpoint::decode(&store.db.get(CHECKPOINT_KEY).unwrap().unwrap()).unwrap();
    let at_open = checkpoint();
    assert_eq!(
        at_open.position,
        std::fs::metadata(segment_files(dir.path()).pop().unwrap()).unwrap().len(),
        "opening makes the index durable"
    );
    append_n(&store, &t, 2);
    store.sync().unwrap();
    // A durable offset and a policy are records in the segments: they need no index sync either.
    store.set_durable_offset(&t, &bob(), "main", Offset(2)).unwrap();
    store.put_policy(&t, 1, &Bytes::from_static(b"policy")).unwrap();
    store.sync().unwrap();
    assert_eq!(checkpoint(), at_open, "nothing makes the index durable before 64 MiB");
}

#[test]
fn durable_offsets_and_policies_survive_in_the_segments_alone() {
    let dir = tempfile::tempdir().unwrap();
    let t = topic("demo.meta");
    {
        let store = DiskStore::open(dir.path()).unwrap();
        append_n(&store, &t, 2);
        store.set_durable_offset(&t, &bob(), "main", Offset(1)).unwrap();
        store.set_durable_offset(&t, &bob(), "main", Offset(2)).unwrap();
        store.put_policy(&t, 1, &Bytes::from_static(b"policy one")).unwrap();
        store.sync().unwrap();
        // The index never got them (a crash before its lazy sync): only the segments have them.
        store.db.remove(durable_key(&t, &bob(), "main").unwrap()).unwrap();
        store.db.remove(policy_key(&t, 1)).unwrap();
        store.db.flush().unwrap();
    }
    let store = DiskStore::open(dir.path()).unwrap();
    assert_eq!(store.durable_offset(&t, &bob(), "main").unwrap(), Some(Offset(2)), "the last commit wins");
    assert_eq!(store.policies(&t, 2).unwrap(), [Bytes::from_static(b"policy one")]);
    assert_eq!(store.next_offset(&t).unwrap(), Offset(2));
}

#[test]
fn recovery_keeps_batches_that_reached_the_disk_without_a_sync() {
    let dir = tempfile::tempdir().unwrap();
    let t = topic("demo.lucky");
    {
        let store = DiskStore::open(dir.path()).unwrap();
        append_n(&store, &t, 3);
        store.sync().unwrap();
        append_n(&store, &t, 3);
        store.db.flush().unwrap();
    }
    let store = DiskStore::open(dir.path()).unwrap();
    assert_eq!(store.next_offset(&t).unwrap(), Offset(6));
    assert_eq!(store.read(&t, Offset(0), usize::MAX).unwrap().len(), 6);
}

#[test]
fn a_torn_batch_in_the_middle_of_the_unsynced_tail_drops_it_and_everything_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let t = topic("demo.torn");
    {
        let store = DiskStore::open(dir.path()).unwrap();
        append_n(&store, &t, 2);
        store.sync().unwrap();
        append_n(&store, &t, 4);
        store.db.flush().unwrap();
    }
    // Flip a byte of the fourth batch (offset 3): the kernel wrote the pages around it, not it.
    let file = segment_files(dir.path()).pop().unwrap();
    let at = {
        let db = open_sled(dir.path(), 1 << 20).unwrap();
        let key = batch_key(&t, Offset(3));
        let Ok(Slot::Batch(entry)) = Slot::decode(&key, &db.get(&key).unwrap().unwrap()) else { panic!() };
        entry.location
    };
    let mut bytes = std::fs::read(&file).unwrap();
    bytes[at.position as usize + 100] ^= 1;
    std::fs::write(&file, bytes).unwrap();
    let store = DiskStore::open(dir.path()).unwrap();
    assert_eq!(store.next_offset(&t).unwrap(), Offset(3), "offsets stay gap-free: 3, 4 and 5 are dropped");
}

/// A data folder as layout 2 left it: batch records in segment 0 (with a torn tail before the index's
/// checkpoint), more in segment 1; policies and a durable offset in sled only.
fn layout2_folder(dir: &Path, t: &Topic) -> Vec<Vec<u8>> {
    let segments = dir.join("segments");
    std::fs::create_dir_all(&segments).unwrap();
    let db = sled::Config::new().path(dir).flush_every_ms(None).open().unwrap();
    let p = publisher(1);
    let signer = sealpost_protocol::SigningKey::from_bytes(&[1; 32]);
    let mut head = ChainHead::GENESIS;
    let mut batches = Vec::new();
    for (segment, range) in [(0u64, 0u64..3), (1, 3..5)] {
        let mut file = Vec::new();
        for n in range {
            let (offset, first_seq) = (Offset(n), n + 1);
            // Layouts 2 and 3 only ever held batches of format version 1: the legacy chain.
            let sealed = sealed_batch_on(&signer, t, ChainId::LEGACY, head, 1, 100).unwrap();
            head = ChainHead::after(&sealed);
            let record = PublisherRecord { first_seq, count: 1, offset, digest: sealed.digest() };
            let batch = sealed.as_bytes().to_vec();
            let body = record::batch(t, &p, ChainId::LEGACY, &record, &batch);
            let location = Location {
                segment,
                position: file.len() as u64,
                len: body.len() as u32,
                crc: crc32fast::hash(&body),
            };
            file.extend_from_slice(&location.len.to_be_bytes());
            file.extend_from_slice(&location.crc.to_be_bytes());
            file.extend_from_slice(&body);
            let entry = Entry {
                offset,
                count: 1,
                location,
                publisher: *p.as_bytes(),
                first_seq,
                chain: ChainId::LEGACY,
            };
            // Layout 2 wrote `b` values without the chain (68 bytes).
            db.insert(batch_key(t, offset), &entry.encode()[..68]).unwrap();
            db.insert(publisher_key(t, &p, ChainId::LEGACY, first_seq), &record.encode()[..]).unwrap();
            batches.push(batch);
        }
        if segment == 0 {
            // A crash tore an append that was never indexed: layout-2 recovery left it there.
            file.extend_from_slice(&[0, 0, 0, 90, 1, 2, 3, 4, 1, 6]);
        }
        if segment == 1 {
            db.insert(CHECKPOINT_KEY, &Checkpoint { segment: 1, position: file.len() as u64 }.encode()[..])
                .unwrap();
        }
        std::fs::write(segments.join(segment::segment_name(segment)), file).unwrap();
    }
    db.insert(topic_key(t), &[][..]).unwrap();
    db.insert(policy_key(t, 1), &b"policy one"[..]).unwrap();
    db.insert(policy_key(t, 2), &b"policy two"[..]).unwrap();
    db.insert(durable_key(t, &bob(), "main").unwrap(), &3u64.to_be_bytes()[..]).unwrap();
    db.insert(LAYOUT_KEY, &2u32.to_be_bytes()[..]).unwrap();
    db.flush().unwrap();
    batches
}

fn payloads(store: &DiskStore, t: &Topic) -> Vec<Vec<u8>> {
    store
        .read(t, Offset(0), usize::MAX)
        .unwrap()
        .into_iter()
        .map(|i| i.batch().unwrap().bytes.to_vec())
        .collect()
}

#[test]
fn a_layout_2_store_is_migrated_once_and_then_survives_losing_its_index() {
    let dir = tempfile::tempdir().unwrap();
    let t = topic("demo.old");
    let batches = layout2_folder(dir.path(), &t);
    let check = |store: &DiskStore| {
        assert_eq!(payloads(store, &t), batches);
        assert_eq!(store.next_offset(&t).unwrap(), Offset(5));
        assert_eq!(
            store.publisher_head(&t, &publisher(1), ChainId::LEGACY).unwrap().map(|h| h.next_seq()),
            Some(6)
        );
        assert_eq!(store.policies(&t, 5).unwrap(), [Bytes::from("policy one"), Bytes::from("policy two")]);
        assert_eq!(store.durable_offset(&t, &bob(), "main").unwrap(), Some(Offset(3)));
    };
    {
        let store = DiskStore::open(dir.path()).unwrap();
        check(&store);
        let layout = store.db.get(LAYOUT_KEY).unwrap().unwrap();
        assert_eq!(layout.as_ref(), LAYOUT_VERSION.to_be_bytes());
        assert_eq!(store.layout3_from(), 2, "the first segment written in layout 3");
        // Layout 3 from now on: a commit is a record, and only the record moves it on.
        store.set_durable_offset(&t, &bob(), "main", Offset(4)).unwrap();
        store.sync().unwrap();
    }
    // verify: the torn tail that layout 2 left in segment 0 is a note, not a finding.
    let report = verify::verify(dir.path()).unwrap();
    assert!(report.findings.is_empty(), "{:?}", report.findings);
    assert!(report.notes.iter().any(|n| n.contains("written before layout 3")), "{:?}", report.notes);
    // The index is lost: everything comes back from the segments, policies and durable offsets included.
    for name in ["db", "conf"] {
        std::fs::remove_file(dir.path().join(name)).unwrap();
    }
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        let name = entry.unwrap().file_name();
        if name.to_string_lossy().starts_with("snap.") {
            std::fs::remove_file(dir.path().join(name)).unwrap();
        }
    }
    let store = DiskStore::open(dir.path()).unwrap();
    assert_eq!(store.durable_offset(&t, &bob(), "main").unwrap(), Some(Offset(4)));
    assert_eq!(store.policies(&t, 5).unwrap().len(), 2);
    assert_eq!(payloads(&store, &t), batches);
    assert_eq!(store.layout3_from(), 2);
}

/// Rewrites the index of the (closed) store in `dir` as layout 3 wrote it: `b` values without the chain,
/// layout key 3. Its batches must all be of the legacy chain, as layout 3's were.
fn downgrade_index_to_layout_3(dir: &Path) {
    let db = open_sled(dir, 1 << 20).unwrap();
    let batches: Vec<_> = db.scan_prefix([b'b']).map(|kv| kv.unwrap()).collect();
    assert!(!batches.is_empty());
    for (key, value) in batches {
        assert_eq!(value.len(), 84);
        assert_eq!(&value[68..], &[0; 16], "layout 3 held batches of the legacy chain only");
        db.insert(key, &value[..68]).unwrap();
    }
    assert_eq!(db.scan_prefix([b'c']).count(), 0);
    db.insert(LAYOUT_KEY, &3u32.to_be_bytes()[..]).unwrap();
    db.flush().unwrap();
}

#[test]
fn a_layout_3_store_opens_as_layout_5_with_its_acknowledged_data() {
    let dir = tempfile::tempdir().unwrap();
    let t = topic("demo.layout3");
    let signer = sealpost_protocol::SigningKey::from_bytes(&[1; 32]);
    let mut legacy = Vec::new();
    {
        let store = DiskStore::open(dir.path()).unwrap();
        let mut head = ChainHead::GENESIS;
        for _ in 0..3 {
            let b = sealed_batch_on(&signer, &t, ChainId::LEGACY, head, 2, 100).unwrap();
            head = ChainHead::after(&b);
            store.append(Append::new(&b, store.next_offset(&t).unwrap())).unwrap();
            legacy.push(b.into_bytes().to_vec());
        }
        store.put_policy(&t, 1, &Bytes::from_static(b"policy one")).unwrap();
        store.set_durable_offset(&t, &bob(), "main", Offset(2)).unwrap();
        store.meta_dirty.store(true, Ordering::SeqCst);
        store.sync().unwrap();
    }
    downgrade_index_to_layout_3(dir.path());
    let legacy_head = |store: &DiskStore| store.publisher_head(&t, &publisher(1), ChainId::LEGACY).unwrap();
    {
        let store = DiskStore::open(dir.path()).unwrap();
        // Every acknowledged batch, policy and durable offset is there; the legacy chain goes on.
        assert_eq!(payloads(&store, &t), legacy);
        assert_eq!(store.next_offset(&t).unwrap(), Offset(6));
        assert_eq!(legacy_head(&store).map(|h| h.next_seq()), Some(7));
        assert_eq!(
            store.publisher_record(&t, &publisher(1), ChainId::LEGACY, 3).unwrap().map(|r| r.offset),
            Some(Offset(2))
        );
        assert_eq!(store.policies(&t, 5).unwrap(), [Bytes::from("policy one")]);
        assert_eq!(store.durable_offset(&t, &bob(), "main").unwrap(), Some(Offset(2)));
        assert_eq!(store.db.get(LAYOUT_KEY).unwrap().unwrap().as_ref(), LAYOUT_VERSION.to_be_bytes());
        assert_eq!(LAYOUT_VERSION, 5);
        // A new instance of the same key starts its own chain beside the legacy one.
        assert_eq!(store.publisher_head(&t, &publisher(1), TEST_CHAIN).unwrap(), None);
        append_n(&store, &t, 2);
        assert_eq!(
            store.publisher_head(&t, &publisher(1), TEST_CHAIN).unwrap().map(|h| h.next_seq()),
            Some(3)
        );
        assert_eq!(legacy_head(&store).map(|h| h.next_seq()), Some(7));
        store.sync().unwrap();
    }
    // Losing the index: recovery rebuilds both chains from the segment records.
    for name in ["db", "conf"] {
        std::fs::remove_file(dir.path().join(name)).unwrap();
    }
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        let name = entry.unwrap().file_name();
        if name.to_string_lossy().starts_with("snap.") {
            std::fs::remove_file(dir.path().join(name)).unwrap();
        }
    }
    let store = DiskStore::open(dir.path()).unwrap();
    assert_eq!(&payloads(&store, &t)[..3], &legacy[..]);
    assert_eq!(store.next_offset(&t).unwrap(), Offset(8));
    assert_eq!(legacy_head(&store).map(|h| h.next_seq()), Some(7));
    assert_eq!(store.publisher_head(&t, &publisher(1), TEST_CHAIN).unwrap().map(|h| h.next_seq()), Some(3));
}

#[test]
fn a_layout_this_build_does_not_know_is_refused() {
    // A layout this build does not know is refused, never guessed at.
    let dir = tempfile::tempdir().unwrap();
    {
        let store = DiskStore::open(dir.path()).unwrap();
        append_n(&store, &topic("demo.future"), 1);
        store.sync().unwrap();
    }
    {
        let db = open_sled(dir.path(), 1 << 20).unwrap();
        db.insert(LAYOUT_KEY, &6u32.to_be_bytes()[..]).unwrap();
        db.flush().unwrap();
    }
    let refused = DiskStore::open(dir.path()).err().map(|e| e.to_string()).unwrap_or_default();
    assert!(
        refused.contains(&format!("on-disk format 6; this broker reads up to {LAYOUT_VERSION}")),
        "{refused}"
    );
}

#[test]
fn a_broken_index_is_moved_aside_and_rebuilt_from_the_segments() {
    let dir = tempfile::tempdir().unwrap();
    let t = topic("demo.rebuild");
    {
        let store = DiskStore::open(dir.path()).unwrap();
        append_n(&store, &t, 4);
        store.set_durable_offset(&t, &bob(), "main", Offset(2)).unwrap();
        store.put_policy(&t, 1, &Bytes::from_static(b"policy")).unwrap();
        store.sync().unwrap();
    }
    // The layout key says nothing sensible.
    {
        let db = open_sled(dir.path(), 1 << 20).unwrap();
        db.insert(LAYOUT_KEY, &b"??"[..]).unwrap();
        db.flush().unwrap();
    }
    let store = DiskStore::open(dir.path()).unwrap();
    assert!(dir.path().join("index.corrupt-0").join("db").is_file(), "the old index is kept");
    assert_eq!(store.next_offset(&t).unwrap(), Offset(4));
    assert_eq!(payloads(&store, &t).len(), 4);
    assert_eq!(store.durable_offset(&t, &bob(), "main").unwrap(), Some(Offset(2)));
    assert_eq!(store.policies(&t, 1).unwrap(), [Bytes::from_static(b"policy")]);
    assert_eq!(store.publisher_head(&t, &publisher(1), TEST_CHAIN).unwrap().map(|h| h.next_seq()), Some(5));
    append_n(&store, &t, 1);
    assert_eq!(store.next_offset(&t).unwrap(), Offset(5));
}

/// The costs docs/benchmarks.md records, in one place and under the same conditions: a durable-offset
/// commit now (a segment record, one fdatasync) against what it cost while it lived in the index only
/// (an index sync on top: `meta_dirty`), and the scan of the whole index at opening. Ignored (it
/// measures the disk); `cargo test -p sealpost-broker --lib measure_ -- --ignored --nocapture`.
#[test]
#[ignore = "measures the disk; run by hand"]
fn measure_commit_paths_and_the_index_scan() {
    const ROUNDS: usize = 300;
    let dir = tempfile::tempdir().unwrap();
    let store = DiskStore::open(dir.path()).unwrap();
    let t = topic("bench.costs");
    // Every round runs each path once, so that the disk's moods (it is shared) fall on all alike.
    let paths: [(&str, &dyn Fn()); 4] = [
        ("append + sync", &|| {
            append_n(&store, &t, 1);
            store.sync().unwrap();
        }),
        ("append + durable-offset commit + sync (layout 3)", &|| {
            append_n(&store, &t, 1);
            store.set_durable_offset(&t, &bob(), "main", Offset(store.syncs())).unwrap();
            store.sync().unwrap();
        }),
        ("append + durable-offset commit + sync + index sync (as layout 2 did)", &|| {
            append_n(&store, &t, 1);
            store.set_durable_offset(&t, &bob(), "main", Offset(store.syncs())).unwrap();
            store.meta_dirty.store(true, Ordering::SeqCst);
            store.sync().unwrap();
        }),
        ("durable-offset commit + sync (layout 3)", &|| {
            store.set_durable_offset(&t, &bob(), "main", Offset(store.syncs())).unwrap();
            store.sync().unwrap();
        }),
    ];
    let mut samples = vec![Vec::new(); paths.len()];
    for _ in 0..ROUNDS {
        for (i, (_, f)) in paths.iter().enumerate() {
            let started = std::time::Instant::now();
            f();
            samples[i].push(started.elapsed().as_secs_f64() * 1e6);
        }
    }
    println!("settings: {ROUNDS} interleaved rounds, 1 KiB batches, {}", dir.path().display());
    for ((name, _), mut samples) in paths.iter().zip(samples) {
        samples.sort_by(f64::total_cmp);
        let at = |q: f64| samples[((samples.len() - 1) as f64 * q) as usize];
        println!(
            "{{\"path\": \"{name}\", \"p50_us\": {:.0}, \"p90_us\": {:.0}, \"p99_us\": {:.0}}}",
            at(0.5),
            at(0.9),
            at(0.99)
        );
    }
    drop(store);
    for batches in [10_000u64, 100_000] {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = DiskStore::open(dir.path()).unwrap();
            append_n(&store, &t, batches as usize);
            store.sync().unwrap();
        }
        let db = open_sled(dir.path(), DEFAULT_CACHE_BYTES).unwrap();
        let keys = db.len();
        let started = std::time::Instant::now();
        index::scan(&db).unwrap();
        let scan = started.elapsed().as_secs_f64() * 1e6;
        println!(
            "{{\"path\": \"index scan at open\", \"batches\": {batches}, \"keys\": {keys}, \"us\": {scan:.0}, \"us_per_key\": {:.2}}}",
            scan / keys as f64
        );
    }
}

#[test]
fn opening_a_foreign_sled_database_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    {
        let db = sled::Config::new().path(dir.path()).open().unwrap();
        db.insert(b"other", b"data").unwrap();
        db.flush().unwrap();
    }
    assert!(matches!(DiskStore::open(dir.path()), Err(Error::Storage(_))));
}

#[test]
fn a_batch_record_on_disk_is_its_header_its_fields_and_the_sealed_batch() {
    // The on-disk format of layout 4 (a batch of a chain), byte for byte: written in parts, it must read as one record.
    let dir = tempfile::tempdir().unwrap();
    let t = topic("demo.format");
    let store = DiskStore::open(dir.path()).unwrap();
    let bytes = append_n(&store, &t, 1).remove(0);
    store.sync().unwrap();
    let record = store.publisher_head(&t, &publisher(1), TEST_CHAIN).unwrap().unwrap();
    let body = record::batch(&t, &publisher(1), TEST_CHAIN, &record, &bytes);
    let mut expected = (body.len() as u32).to_be_bytes().to_vec();
    expected.extend_from_slice(&crc32fast::hash(&body).to_be_bytes());
    expected.extend_from_slice(&body);
    let file = std::fs::read(segment_files(dir.path()).pop().unwrap()).unwrap();
    assert!(
        file.windows(expected.len()).any(|w| w == expected.as_slice()),
        "len u32 | crc32 u32 | batch fields | sealed batch"
    );
    assert_eq!(store.read(&t, Offset(0), usize::MAX).unwrap()[0].clone().batch().unwrap().bytes, bytes);
}

#[test]
fn poisoned_segments_make_the_store_report_that_it_failed_and_refuse_syncs() {
    let dir = tempfile::tempdir().unwrap();
    let store = DiskStore::open(dir.path()).unwrap();
    assert_eq!(store.failed(), None);
    // What a failed fdatasync leaves (`Segments::sync` poisons them itself; no fsync fails on demand here:
    // tests/system/failstop.rs does it on a FUSE file system).
    store.segments().poison("fdatasync of segment 0: Input/output error (os error 5)".into());
    assert!(store.failed().unwrap().contains("Input/output error"));
    assert!(matches!(store.sync(), Err(Error::Storage(_))));
}
