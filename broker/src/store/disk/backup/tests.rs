//! Backup and restore: a round trip through a store, and every way a backup or a target is refused.

use bytes::Bytes;
use sealpost_protocol::{Offset, Principal, Topic};

use super::*;
use crate::store::disk::segment::Segments;
use crate::store::disk::DiskStore;
use crate::store::testing::{sealed_batch, TEST_CHAIN};
use crate::store::{Append, Store};

fn topic() -> Topic {
    Topic::new("demo.backup").unwrap()
}

fn bob() -> Principal {
    "bob".parse().unwrap()
}

/// Appends `n` batches by one publisher on `t`, continuing its chain; returns their bytes.
fn append_n(store: &DiskStore, t: &Topic, n: usize) -> Vec<Bytes> {
    let signer = sealpost_protocol::SigningKey::from_bytes(&[1; 32]);
    (0..n)
        .map(|_| {
            let last = store.publisher_head(t, &signer.public_key(), TEST_CHAIN).unwrap();
            let head = crate::store::chain_head(last.as_ref());
            let batch = sealed_batch(&signer, t, head, 1, 1000).unwrap();
            store.append(Append::new(&batch, store.next_offset(t).unwrap())).unwrap();
            batch.into_bytes()
        })
        .collect()
}

fn payloads(store: &DiskStore, t: &Topic) -> Vec<Bytes> {
    store.read(t, Offset(0), usize::MAX).unwrap().into_iter().map(|i| i.batch().unwrap().bytes).collect()
}

/// A store with 3 batches, 2 policies and a durable offset, synced, backed up while it is open; then 2 more
/// batches that the backup does not hold. Returns the folder, the backup's folder and the backed-up batches.
fn backed_up() -> (tempfile::TempDir, std::path::PathBuf, Vec<Bytes>) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let store = DiskStore::open(&data).unwrap();
    store.put_policy(&topic(), 1, &Bytes::from_static(b"policy one")).unwrap();
    store.put_policy(&topic(), 2, &Bytes::from_static(b"policy two")).unwrap();
    let batches = append_n(&store, &topic(), 3);
    store.set_durable_offset(&topic(), &bob(), "main", Offset(2)).unwrap();
    store.sync().unwrap();
    let to = dir.path().join("backup");
    let report = backup(&data, &to).unwrap();
    assert_eq!(report.skipped, Vec::<u64>::new());
    assert_eq!(report.manifest.store_format, format::supported());
    // Appended after the backup started: not in it (the second batch is synced, the first not yet).
    append_n(&store, &topic(), 1);
    store.sync().unwrap();
    append_n(&store, &topic(), 1);
    (dir, to, batches)
}

#[test]
fn a_restored_backup_serves_every_batch_policy_and_durable_offset_it_was_taken_with() {
    let (dir, backup_dir, batches) = backed_up();
    let restored = dir.path().join("restored");
    let manifest = restore(&backup_dir, &restored).unwrap();
    assert_eq!(manifest, read_manifest(&backup_dir).unwrap());
    assert_eq!(format::read(&restored).unwrap(), Some(format::supported()));
    let store = DiskStore::open(&restored).unwrap();
    assert_eq!(payloads(&store, &topic()), batches);
    assert_eq!(
        store.policies(&topic(), 10).unwrap(),
        [Bytes::from_static(b"policy one"), Bytes::from_static(b"policy two")]
    );
    assert_eq!(store.durable_offset(&topic(), &bob(), "main").unwrap(), Some(Offset(2)));
    // The index was built, not rebuilt after damage: nothing was moved aside.
    let names: Vec<String> = std::fs::read_dir(&restored)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(!names.iter().any(|n| n.starts_with("index.corrupt") || n == STAGING), "{names:?}");
    // And it takes appends that continue the chain.
    append_n(&store, &topic(), 1);
    store.sync().unwrap();
    assert_eq!(store.next_offset(&topic()).unwrap(), Offset(4));
}

#[test]
fn restore_refuses_a_backup_without_its_manifest() {
    let (dir, backup_dir, _) = backed_up();
    std::fs::remove_file(backup_dir.join(MANIFEST_FILE)).unwrap();
    let refused = restore(&backup_dir, &dir.path().join("restored")).unwrap_err();
    assert!(matches!(&refused, Error::Backup(m) if m.contains("never completed")), "{refused}");
    assert!(!dir.path().join("restored").exists(), "a refused restore creates nothing");
}

#[test]
fn restore_refuses_a_torn_or_altered_manifest() {
    let (dir, backup_dir, _) = backed_up();
    let path = backup_dir.join(MANIFEST_FILE);
    let whole = std::fs::read(&path).unwrap();
    for cut in [0, 10, whole.len() / 2, whole.len() - 3] {
        std::fs::write(&path, &whole[..cut]).unwrap();
        let refused = restore(&backup_dir, &dir.path().join("restored")).unwrap_err();
        assert!(matches!(refused, Error::Backup(_)), "cut at {cut}: {refused}");
    }
    let altered = String::from_utf8(whole).unwrap().replace("checkpoint ", "checkpoint 1");
    std::fs::write(&path, altered).unwrap();
    let refused = restore(&backup_dir, &dir.path().join("restored")).unwrap_err();
    assert!(matches!(&refused, Error::Backup(m) if m.contains("checksum")), "{refused}");
}

#[test]
fn restore_refuses_a_segment_whose_size_or_checksum_does_not_match_and_leaves_no_segments() {
    let (dir, backup_dir, _) = backed_up();
    let manifest = read_manifest(&backup_dir).unwrap();
    let first = backup_dir.join(SEGMENTS).join(segment_name(manifest.segments[0].number));
    let mut bytes = std::fs::read(&first).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    std::fs::write(&first, &bytes).unwrap();
    let restored = dir.path().join("restored");
    let refused = restore(&backup_dir, &restored).unwrap_err();
    assert!(matches!(&refused, Error::Backup(m) if m.contains("SHA-256")), "{refused}");
    assert!(!restored.join(SEGMENTS).exists());
    bytes.truncate(middle);
    std::fs::write(&first, &bytes).unwrap();
    let refused = restore(&backup_dir, &restored).unwrap_err();
    assert!(matches!(&refused, Error::Backup(m) if m.contains("bytes")), "{refused}");
}

#[test]
fn restore_refuses_a_folder_that_is_not_empty() {
    let (dir, backup_dir, _) = backed_up();
    let target = dir.path().join("occupied");
    std::fs::create_dir(&target).unwrap();
    std::fs::write(target.join("something"), b"keep me").unwrap();
    let refused = restore(&backup_dir, &target).unwrap_err();
    assert!(matches!(&refused, Error::Backup(m) if m.contains("not empty")), "{refused}");
    assert_eq!(std::fs::read(target.join("something")).unwrap(), b"keep me");
    // Nor is a backup taken into one.
    let refused = backup(&dir.path().join("data"), &target).unwrap_err();
    assert!(matches!(&refused, Error::Backup(m) if m.contains("not empty")), "{refused}");
}

#[test]
fn restore_refuses_a_newer_store_format_or_manifest_version() {
    let (dir, backup_dir, _) = backed_up();
    let mut manifest = read_manifest(&backup_dir).unwrap();
    let (newer, known) = (format::supported() + 1, format::supported());
    manifest.store_format = newer;
    std::fs::write(backup_dir.join(MANIFEST_FILE), manifest.encode()).unwrap();
    let refused = restore(&backup_dir, &dir.path().join("restored")).unwrap_err();
    assert!(
        matches!(refused, Error::UnsupportedFormat { found, supported } if (found, supported) == (newer, known)),
        "{refused}"
    );
    // A manifest version this broker does not know (its checksum made right).
    manifest.store_format = known;
    let text = String::from_utf8(manifest.encode()).unwrap();
    let body: String =
        text.lines().take_while(|l| !l.starts_with("sha256 ")).map(|l| format!("{l}\n")).collect();
    let body = body.replacen("sealpost-backup 1", "sealpost-backup 2", 1);
    let sum = hex::encode(Sha256::digest(body.as_bytes()));
    std::fs::write(backup_dir.join(MANIFEST_FILE), format!("{body}sha256 {sum}\n")).unwrap();
    let refused = restore(&backup_dir, &dir.path().join("restored")).unwrap_err();
    assert!(matches!(&refused, Error::Backup(m) if m.contains("version 2")), "{refused}");
}

#[test]
fn opening_a_data_folder_of_a_newer_format_is_refused_with_a_typed_error_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (newer, known) = (format::supported() + 1, format::supported());
    std::fs::write(dir.path().join(format::FORMAT_FILE), format!("sealpost-store {newer}\n")).unwrap();
    let refused = DiskStore::open(dir.path()).unwrap_err();
    assert!(
        matches!(refused, Error::UnsupportedFormat { found, supported } if (found, supported) == (newer, known)),
        "{refused}"
    );
    let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names, [format::FORMAT_FILE]);
    // A new store states its format.
    let fresh = tempfile::tempdir().unwrap();
    drop(DiskStore::open(fresh.path()).unwrap());
    assert_eq!(format::read(fresh.path()).unwrap(), Some(known));
}

#[test]
fn backup_refuses_a_layout_2_folder_and_a_folder_without_segments() {
    let dir = tempfile::tempdir().unwrap();
    let segments = Segments::open(&dir.path().join(SEGMENTS), 0).unwrap();
    segments.append(&[b"a layout-2 batch record".as_slice()]).unwrap();
    segments.sync().unwrap();
    let refused = backup(dir.path(), &dir.path().join("backup")).unwrap_err();
    assert!(matches!(&refused, Error::Backup(m) if m.contains("layout 2")), "{refused}");
    let refused = backup(&dir.path().join("nothing"), &dir.path().join("backup")).unwrap_err();
    assert!(matches!(&refused, Error::Backup(m) if m.contains("not a Sealpost data folder")), "{refused}");
}

#[test]
fn backup_copies_whatever_segments_are_there_up_to_the_checkpoint_and_no_further() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(SEGMENTS);
    for record in [b"zero".as_slice(), b"one", b"two"] {
        let segments = Segments::open(&path, 0).unwrap();
        segments.append(&[record]).unwrap();
        segments.sync().unwrap();
    }
    let segments = Segments::open(&path, 0).unwrap();
    segments.append(&[b"three".as_slice()]).unwrap();
    let checkpoint = segments.sync().unwrap();
    // Written after the sync: past the checkpoint.
    segments.append(&[b"four, never synced".as_slice()]).unwrap();
    // A store deleted segment 1 (retention); the numbers are no longer contiguous.
    std::fs::remove_file(path.join(segment_name(1))).unwrap();
    format::write(dir.path(), format::supported()).unwrap();
    let to = dir.path().join("backup");
    let report = backup(dir.path(), &to).unwrap();
    let numbers: Vec<u64> = report.manifest.segments.iter().map(|s| s.number).collect();
    assert_eq!(numbers, [0, 2, 3]);
    assert_eq!(report.manifest.checkpoint, checkpoint);
    let last = report.manifest.segments.last().unwrap();
    assert_eq!(last.len, checkpoint.position);
    assert_eq!(std::fs::read(to.join(SEGMENTS).join(segment_name(3))).unwrap().len() as u64, last.len);
    // No index, no side file, nothing but the segments and the manifest.
    let mut names: Vec<_> = std::fs::read_dir(&to).unwrap().map(|e| e.unwrap().file_name()).collect();
    names.sort();
    assert_eq!(names, [MANIFEST_FILE, SEGMENTS]);
    // Restored, the side file names the checkpoint.
    let restored = dir.path().join("restored");
    restore(&to, &restored).unwrap();
    assert_eq!(read_synced(&restored.join(SEGMENTS)), Some(checkpoint));
}

#[test]
fn a_segment_gone_when_the_copy_comes_to_it_is_skipped_and_a_cut_copy_is_continued_later() {
    let dir = tempfile::tempdir().unwrap();
    let (source, target) = (dir.path().join("from"), dir.path().join("to"));
    std::fs::create_dir_all(&source).unwrap();
    std::fs::create_dir_all(&target).unwrap();
    let mut copies = BTreeMap::new();
    // Removed (by retention) between the listing and the copy: nothing to copy, no error.
    assert!(!copy_segment(&source, &target, 7, 0, None, &mut copies).unwrap());
    assert!(!target.join(segment_name(7)).exists() && copies.is_empty());
    std::fs::write(source.join(segment_name(8)), b"12345").unwrap();
    let refused = copy_segment(&source, &target, 8, 0, Some(6), &mut copies).unwrap_err();
    assert!(matches!(&refused, Error::Backup(m) if m.contains("fewer than")), "{refused}");
    // Cut at a first checkpoint, continued to a later one (the next round of a backup).
    assert!(copy_segment(&source, &target, 8, 0, Some(3), &mut copies).unwrap());
    assert_eq!(std::fs::read(target.join(segment_name(8))).unwrap(), b"123");
    assert!(copy_segment(&source, &target, 8, 3, None, &mut copies).unwrap());
    assert_eq!(std::fs::read(target.join(segment_name(8))).unwrap(), b"12345");
    let copied = copies.remove(&8).unwrap();
    assert_eq!(copied.len, 5);
    assert_eq!(<[u8; 32]>::from(copied.hasher.finalize()), <[u8; 32]>::from(Sha256::digest(b"12345")));
}
