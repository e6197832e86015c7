//! One flipped bit costs at most the record that holds it (docs/reliability.md): the claim, tested in
//! process at many random positions, against a store written the way the broker writes it.
//!
//! A store is written in two runs (so that part of the log lies before the index's checkpoint, where only
//! reads and the scrub look, and part after it, where opening looks), with real sealed batches of two
//! publishers on two topics, signed topic policies and durable offsets, synced in groups. Every byte of its
//! segments is then acknowledged. For each trial a copy gets one bit flipped, at a position drawn from a
//! seeded RNG (the seed is printed; `SEALPOST_FLIP_SEED` replays one), in a segment or in sled's files, and
//! the store is opened with its log captured. Every batch but the one holding the flip must read back
//! intact and in order, the damaged one as a lost range naming its offsets and (when the index knew it)
//! its publisher; next offsets, chain heads, policies and durable offsets must be unchanged; the log must
//! name the loss as an error and never call acknowledged data unacknowledged; and `verify` must report the
//! damage. A flip in the index must lose nothing.
//!
//! Each layout runs twice: with the index complete (a clean stop), and with the index lacking everything
//! after its checkpoint (a crash before its lazy sync, so that opening has only the segments to go by).
//!
//! Below them: damage found after opening (by a read, by the scrub), bytes replaced behind the broker's
//! back, and a torn tail past the last sync.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use rand::{Rng, SeedableRng};
use sealpost_protocol::{
    issue_policy, seal, ChainHead, ContentKey, Epoch, HpkeSecretKey, Limits, LostBatch, Member, PolicyParams,
    PublicKey, SealParams, SigningKey, Timestamp, Topic, VerifiedPolicy,
};

use super::index::{batch_key, durable_key, durable_value, policy_key, publisher_key, CHECKPOINT_KEY};
use super::record::Record;
use super::scrub::scrub_pass;
use super::segment::{self, Checkpoint, Location, Walked};
use super::sync::entries;
use super::*;
use crate::store::testing::{sealed_batch, TEST_CHAIN};
use crate::store::LossReason;

/// Trials per layout: flips in the segments and flips in sled's files.
const SEGMENT_TRIALS: usize = 60;
const INDEX_TRIALS: usize = 15;

/// A batch as written.
#[derive(Clone, Debug)]
struct Written {
    topic: Topic,
    record: PublisherRecord,
    publisher: PublicKey,
    bytes: Bytes,
}

/// Where a record is, and the batch it holds: segment, start, end, (topic, offset).
type Place = (u64, u64, u64, Option<(Topic, Offset)>);

/// A store written in two runs, and what it holds.
struct Fixture {
    dir: tempfile::TempDir,
    lagging: bool,
    written: Vec<Written>,
    policies: HashMap<Topic, Vec<Bytes>>,
    durables: HashMap<Topic, Offset>,
    /// Durable offsets committed before, per topic (a damaged commit record may leave an older one).
    older_durables: HashMap<Topic, Vec<Offset>>,
}

fn bob() -> Principal {
    "bob".parse().unwrap()
}

fn topics() -> [Topic; 2] {
    [Topic::new("flip.a").unwrap(), Topic::new("flip.b").unwrap()]
}

fn signers() -> [SigningKey; 2] {
    [SigningKey::from_bytes(&[1; 32]), SigningKey::from_bytes(&[2; 32])]
}

fn policy(
    topic: &Topic,
    epoch: u64,
    prev: Option<&VerifiedPolicy>,
    rng: &mut rand::rngs::StdRng,
) -> VerifiedPolicy {
    let members = signers()
        .iter()
        .enumerate()
        .map(|(i, s)| Member {
            principal: format!("p{i}").parse().unwrap(),
            publish: true,
            subscribe: true,
            signing_key: s.public_key(),
            hpke_key: HpkeSecretKey::from_bytes(&[i as u8 + 7; 32]).public_key(),
        })
        .collect();
    let params =
        PolicyParams { topic: topic.clone(), epoch: Epoch(epoch), prev, members, created_at: Timestamp(1) };
    issue_policy(
        &SigningKey::from_bytes(&[9; 32]),
        params,
        &ContentKey::from_bytes(&[3; 32]),
        &Limits::default(),
        rng,
    )
    .unwrap()
}

impl Fixture {
    fn build(seed: u64, lagging: bool) -> Fixture {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let dir = tempfile::tempdir().unwrap();
        let (topics, signers) = (topics(), signers());
        let mut heads: HashMap<(usize, usize), ChainHead> = HashMap::new();
        let mut fixture = Fixture {
            dir,
            lagging,
            written: Vec::new(),
            policies: HashMap::new(),
            durables: HashMap::new(),
            older_durables: HashMap::new(),
        };
        let mut first_policies = Vec::new();
        for run in 0..2 {
            let store = DiskStore::open(fixture.dir.path()).unwrap();
            let checkpoint = Checkpoint::decode(&store.db.get(CHECKPOINT_KEY).unwrap().unwrap()).unwrap();
            let before = (fixture.written.len(), fixture.policies.clone(), fixture.durables.clone());
            for (i, t) in topics.iter().enumerate() {
                let p = if run == 0 {
                    first_policies.push(policy(t, 1, None, &mut rng));
                    first_policies[i].clone()
                } else {
                    policy(t, 2, Some(&first_policies[i]), &mut rng)
                };
                store.put_policy(t, p.epoch().0, p.as_bytes()).unwrap();
                fixture.policies.entry(t.clone()).or_default().push(p.as_bytes().clone());
            }
            for n in 0..30 {
                let (ti, si) =
                    if n < 4 { (n % 2, n / 2) } else { (rng.gen_range(0..2), rng.gen_range(0..2)) };
                let t = &topics[ti];
                let head = heads.entry((ti, si)).or_insert(ChainHead::GENESIS);
                let count = rng.gen_range(1..=4);
                let messages: Vec<Vec<u8>> = (0..count).map(|_| vec![b'm'; rng.gen_range(10..300)]).collect();
                let params = SealParams {
                    topic: t.clone(),
                    epoch: Epoch(1),
                    chain: TEST_CHAIN,
                    first_seq: head.next_seq,
                    prev_digest: head.prev_digest,
                    created_at: Timestamp(1),
                };
                let batch = seal(
                    &signers[si],
                    &ContentKey::from_bytes(&[3; 32]),
                    params,
                    &messages,
                    &Limits::default(),
                    &mut rng,
                )
                .unwrap();
                let append = Append::new(&batch, store.next_offset(t).unwrap());
                let record = append.record();
                *head = ChainHead::after(&batch);
                store.append(append).unwrap();
                fixture.written.push(Written {
                    topic: t.clone(),
                    record,
                    publisher: signers[si].public_key(),
                    bytes: batch.as_bytes().clone(),
                });
                if rng.gen_bool(0.3) {
                    let next = record.end();
                    store.set_durable_offset(t, &bob(), "main", next).unwrap();
                    if let Some(old) = fixture.durables.insert(t.clone(), next) {
                        fixture.older_durables.entry(t.clone()).or_default().push(old);
                    }
                }
                if rng.gen_bool(0.3) {
                    store.sync().unwrap();
                }
            }
            store.sync().unwrap();
            if run == 1 && lagging {
                // The index lost everything written after its checkpoint, as a crash before its lazy sync
                // leaves it: only the segments have the second run.
                let (written, policies, durables) = before;
                let mut removals = sled::Batch::default();
                for w in &fixture.written[written..] {
                    let key = batch_key(&w.topic, w.record.offset);
                    if let Ok(Slot::Batch(e)) = Slot::decode(&key, &store.db.get(&key).unwrap().unwrap()) {
                        assert!(!e.location.durable_by(checkpoint));
                    }
                    removals.remove(key);
                    removals.remove(publisher_key(&w.topic, &w.publisher, TEST_CHAIN, w.record.first_seq));
                }
                for t in &topics {
                    removals.remove(policy_key(t, 2));
                    assert_eq!(policies[t].len(), 1);
                    let key = durable_key(t, &bob(), "main").unwrap();
                    match durables.get(t) {
                        // Its record was before the checkpoint: where exactly does not matter here.
                        Some(v) => removals.insert(
                            key,
                            durable_value(*v, Some(Location { segment: 0, position: 0, len: 1, crc: 0 })),
                        ),
                        None => removals.remove(key),
                    };
                }
                // At once, as sled recovers a prefix of its log and the store never leaves holes.
                store.db.apply_batch(removals).unwrap();
                store.db.flush().unwrap();
            }
        }
        fixture
    }

    /// The records of every segment file: (segment, start, end, the batch it holds).
    fn records(&self) -> Vec<Place> {
        let dir = self.dir.path().join("segments");
        let mut out = Vec::new();
        for n in segment::list(&dir).unwrap() {
            let bytes = segment::read_from(&dir, n, 0).unwrap();
            segment::walk(&bytes, n, 0, u64::MAX, &Default::default(), |w| {
                let Walked::Record { at, body, .. } = w else { panic!("the fixture is damaged: {w:?}") };
                let batch = match Record::decode(body) {
                    Some(Record::Batch(r, _)) => Some((r.topic, r.record.offset)),
                    _ => None,
                };
                out.push((n, at.position, at.end(), batch));
                Ok(())
            })
            .unwrap();
        }
        out
    }
}

/// Copies the folder `from` to `to`.
fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

fn flip(path: &Path, position: u64, bit: u8) {
    let mut bytes = std::fs::read(path).unwrap();
    bytes[position as usize] ^= 1 << bit;
    std::fs::write(path, bytes).unwrap();
}

/// A buffer the store's log lines go to.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn lines(&self) -> Vec<String> {
        String::from_utf8_lossy(&self.0.lock().unwrap()).lines().map(str::to_owned).collect()
    }
}

/// What a trial found.
#[derive(Debug, Default)]
struct Outcome {
    lost: u64,
    lost_named: u64,
    /// A topic's last batch lost with its header, after a crash that also lost the index's entry: logged,
    /// but its offsets are unknown (the documented residual).
    unknown_tail: u64,
    rebuilt: u64,
}

/// Opens the trial's store with its log captured and checks everything against the fixture, given the
/// batch that holds the flip (if one does).
fn check(fixture: &Fixture, dir: &Path, hit: Option<&Written>, what: &str, outcome: &mut Outcome) {
    let captured = Captured::default();
    let writer = captured.clone();
    let unknown_before = outcome.unknown_tail;
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::INFO)
        .finish();
    tracing::subscriber::with_default(subscriber, || {
        let store = DiskStore::open(dir).unwrap_or_else(|e| panic!("{what}: opening failed: {e}"));
        let mut unknown_tail = false;
        for t in topics() {
            let expected: Vec<&Written> = fixture.written.iter().filter(|w| w.topic == t).collect();
            let items = store.read(&t, Offset(0), usize::MAX).unwrap();
            let mut items = items.into_iter();
            for w in &expected {
                let end = w.record.end();
                let is_hit = hit.is_some_and(|h| h.topic == w.topic && h.record.offset == w.record.offset);
                let item = items.next();
                if is_hit
                    && item.is_none()
                    && fixture.lagging
                    && w.record.end() == expected.last().map_or(Offset::ZERO, |l| l.record.end())
                {
                    unknown_tail = true;
                    continue;
                }
                let item = item.unwrap_or_else(|| panic!("{what}: {t} offset {} missing", w.record.offset));
                match item {
                    Stored::Batch(b) => {
                        assert!(!is_hit, "{what}: the damaged batch at {t}:{} was served", w.record.offset);
                        assert_eq!((b.offset, b.count), (w.record.offset, w.record.count), "{what}");
                        assert_eq!(b.bytes, w.bytes, "{what}: {t}:{} changed", w.record.offset);
                    }
                    Stored::Lost(l) => {
                        assert!(is_hit, "{what}: {t}:{} lost although intact: {l:?}", w.record.offset);
                        assert_eq!((l.offset, l.end()), (w.record.offset, end), "{what}");
                        let named = LostBatch {
                            publisher: w.publisher,
                            chain: TEST_CHAIN,
                            first_seq: w.record.first_seq,
                            digest: w.record.digest,
                        };
                        match l.batch {
                            Some(b) => {
                                assert_eq!(b, named, "{what}");
                                outcome.lost_named += 1;
                            }
                            None => assert!(
                                fixture.lagging,
                                "{what}: the index knew the batch, the loss does not name it"
                            ),
                        }
                        outcome.lost += 1;
                    }
                }
            }
            assert!(items.next().is_none(), "{what}: more items than batches on {t}");
            let end = expected.last().map_or(Offset::ZERO, |w| w.record.end());
            let next = store.next_offset(&t).unwrap();
            if unknown_tail && hit.is_some_and(|h| h.topic == t) {
                assert_eq!(next, hit.map_or(Offset::ZERO, |h| h.record.offset), "{what}");
            } else {
                assert_eq!(next, end, "{what}: next offset of {t}");
            }
            // Chain heads: the last batch of each publisher, lost or not.
            for s in signers() {
                let last = expected.iter().rfind(|w| w.publisher == s.public_key());
                let head = store.publisher_head(&t, &s.public_key(), TEST_CHAIN).unwrap();
                let lost_last =
                    hit.is_some_and(|h| last.is_some_and(|l| l.record == h.record && l.topic == h.topic));
                if lost_last && fixture.lagging && head != last.map(|l| l.record) {
                    continue; // the index lacked it, and its damaged header could not be trusted
                }
                assert_eq!(head, last.map(|l| l.record), "{what}: chain head of {t}");
            }
            // Policies and durable offsets: a damaged record of one may, after a crash that lost the index's
            // copy, leave the one before it.
            let policies = store.policies(&t, 10).unwrap();
            let want = &fixture.policies[&t];
            assert!(
                policies == *want || (fixture.lagging && hit.is_none() && policies[..] == want[..1]),
                "{what}: policies of {t}"
            );
            let durable = store.durable_offset(&t, &bob(), "main").unwrap();
            let want = fixture.durables.get(&t).copied();
            let older = fixture.older_durables.get(&t).cloned().unwrap_or_default();
            assert!(
                durable == want
                    || (fixture.lagging && hit.is_none() && durable.is_some_and(|d| older.contains(&d))),
                "{what}: durable offset of {t}: {durable:?}, want {want:?}"
            );
        }
        if unknown_tail {
            outcome.unknown_tail += 1;
        }
        drop(store);
    });
    let lines = captured.lines();
    if std::env::var_os("SEALPOST_FLIP_DEBUG").is_some()
        || (outcome.unknown_tail > unknown_before && std::env::var_os("SEALPOST_FLIP_TAILS").is_some())
    {
        eprintln!("--- {what}\n{}", lines.join("\n"));
    }
    for line in &lines {
        for lie in ["never acknowledged", "not acknowledged", "never became durable"] {
            assert!(!line.contains(lie), "{what}: a log line calls acknowledged data unacknowledged: {line}");
        }
    }
    if lines.iter().any(|l| l.contains("moved aside")) {
        outcome.rebuilt += 1;
    }
    if let Some(h) = hit {
        let offsets = format!("{}..{}", h.record.offset, h.record.end());
        let named = lines.iter().any(|l| {
            (l.contains("ERROR") || l.contains("WARN"))
                && l.contains(&offsets)
                && l.contains(h.topic.as_str())
        });
        let unknown = lines.iter().any(|l| l.contains("ERROR") && l.contains("hold no batch"));
        assert!(
            named || unknown,
            "{what}: no error names the loss of {}:{offsets}:\n{}",
            h.topic,
            lines.join("\n")
        );
    }
}

fn seed() -> u64 {
    let seed =
        std::env::var("SEALPOST_FLIP_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(rand::random);
    println!("bit flips: seed {seed} (set SEALPOST_FLIP_SEED={seed} to replay)");
    seed
}

fn flips_cost_at_most_the_record_that_holds_them(lagging: bool) {
    let seed = seed();
    let fixture = Fixture::build(seed, lagging);
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ 0xF11B);
    let records = fixture.records();
    let total: u64 = records.iter().map(|(_, s, e, _)| e - s).sum();
    let mut outcome = Outcome::default();
    // SEALPOST_FLIP_TRIALS=N runs N flips in the segments and N/4 in the index instead.
    let (segment_trials, index_trials) =
        match std::env::var("SEALPOST_FLIP_TRIALS").ok().and_then(|n| n.parse::<usize>().ok()) {
            Some(n) => (n, n / 4),
            None => (SEGMENT_TRIALS, INDEX_TRIALS),
        };
    for trial in 0..segment_trials {
        // A third of the flips anywhere (most bytes are batches), a third in any record, and a third in
        // a record's header and the fields before its batch: every kind of record and field gets its share.
        let (segment, position, batch) = match trial % 3 {
            0 => {
                let mut at = rng.gen_range(0..total);
                let &(segment, start, _, ref batch) = records
                    .iter()
                    .find(|(_, s, e, _)| {
                        let len = e - s;
                        if at < len {
                            true
                        } else {
                            at -= len;
                            false
                        }
                    })
                    .unwrap();
                (segment, start + at, batch.clone())
            }
            kind => {
                let (segment, start, end, batch) = records[rng.gen_range(0..records.len())].clone();
                let span = if kind == 1 { end - start } else { (end - start).min(8 + 120) };
                (segment, start + rng.gen_range(0..span), batch)
            }
        };
        let bit = rng.gen_range(0..8);
        let copy = tempfile::tempdir().unwrap();
        copy_dir(fixture.dir.path(), copy.path());
        let file = copy.path().join("segments").join(segment::segment_name(segment));
        flip(&file, position, bit);
        let hit = batch
            .as_ref()
            .and_then(|(t, o)| fixture.written.iter().find(|w| w.topic == *t && w.record.offset == *o));
        let held = hit.map_or("no batch".into(), |h| format!("the batch at {}:{}", h.topic, h.record.offset));
        let what = format!(
            "trial {trial} (seed {seed}): bit {bit} of byte {position} of segment {segment}, in {held}"
        );
        check(&fixture, copy.path(), hit, &what, &mut outcome);
        // The damage stays in the log: verify reports it. (On a copy: sled may release the files of a
        // closed store only when its epoch-based garbage is collected, which other threads can delay.)
        let again = tempfile::tempdir().unwrap();
        copy_dir(copy.path(), again.path());
        let report = verify::verify(again.path()).unwrap();
        assert!(
            report.findings.iter().any(|f| f.kind == verify::FindingKind::Corrupt
                && f.place
                    .as_ref()
                    .is_some_and(|(p, at)| p.ends_with(segment::segment_name(segment)) && *at <= position)),
            "{what}: verify does not report it: {:?}",
            report.findings
        );
        // A second start serves the same.
        if trial % 10 == 0 {
            check(&fixture, again.path(), hit, &format!("{what}, opened again"), &mut Outcome::default());
        }
    }
    if std::env::var_os("SEALPOST_FLIP_DEBUG").is_some() {
        let names: Vec<_> =
            std::fs::read_dir(fixture.dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        eprintln!("fixture files: {names:?}");
    }
    let db = std::fs::read(fixture.dir.path().join("db")).unwrap();
    let db_len = db.iter().rposition(|&b| b != 0).map_or(0, |p| p + 1);
    for trial in 0..index_trials {
        let copy = tempfile::tempdir().unwrap();
        copy_dir(fixture.dir.path(), copy.path());
        let snap = entries(copy.path())
            .unwrap()
            .into_iter()
            .find(|n| n.to_str().is_some_and(|n| n.starts_with("snap.")))
            .and_then(|n| n.into_string().ok());
        let name = match (trial % 5, snap) {
            (4, _) => "conf".to_owned(),
            (3, Some(snap)) => snap,
            _ => "db".to_owned(),
        };
        let file = copy.path().join(&name);
        // Sled writes its log from the start of a preallocated file: flip where it wrote.
        let bytes = std::fs::read(&file).unwrap();
        let used = bytes.iter().rposition(|&b| b != 0).map_or(1, |p| p + 1) as u64;
        let (position, bit) = (rng.gen_range(0..used), rng.gen_range(0..8));
        flip(&file, position, bit);
        let what = format!("index trial {trial} (seed {seed}): bit {bit} of byte {position} of {name}");
        check(&fixture, copy.path(), None, &what, &mut outcome);
    }
    println!(
        "bit flips ({}): {segment_trials} in the segments ({total} bytes), {index_trials} in the index ({db_len} \
         bytes of db used): {outcome:?}",
        if lagging { "index lagging" } else { "index complete" }
    );
}

#[test]
fn one_flipped_bit_costs_at_most_the_batch_that_holds_it() {
    flips_cost_at_most_the_record_that_holds_them(false);
}

#[test]
fn one_flipped_bit_costs_at_most_the_batch_that_holds_it_when_the_index_lags() {
    flips_cost_at_most_the_record_that_holds_them(true);
}

#[test]
fn a_torn_tail_past_the_last_sync_is_cut_without_noise() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt().with_writer(move || writer.clone()).with_ansi(false).finish();
    let fixture = Fixture::build(7, false);
    let t = &topics()[0];
    let dir = fixture.dir.path();
    let (unsynced, file, len) = {
        let store = DiskStore::open(dir).unwrap();
        let before = store.next_offset(t).unwrap();
        // Three batches of a publisher of its own, past the last sync.
        let signer = SigningKey::from_bytes(&[7; 32]);
        let mut head = ChainHead::GENESIS;
        for i in 0..3 {
            let batch = sealed_batch(&signer, t, head, 1, 200).unwrap();
            head = ChainHead::after(&batch);
            store.append(Append::new(&batch, before.saturating_add(i))).unwrap();
        }
        let file = segment_files(dir).pop().unwrap();
        (before, file.clone(), std::fs::metadata(&file).unwrap().len())
    };
    // The crash tore the last record.
    std::fs::OpenOptions::new().write(true).open(&file).unwrap().set_len(len - 20).unwrap();
    tracing::subscriber::with_default(subscriber, || {
        let store = DiskStore::open(dir).unwrap();
        assert_eq!(
            store.next_offset(t).unwrap(),
            unsynced.saturating_add(2),
            "the two intact unsynced batches are kept"
        );
        assert!(store.read(t, Offset(0), usize::MAX).unwrap().iter().all(|i| matches!(i, Stored::Batch(_))));
    });
    let lines = captured.lines();
    assert!(lines.iter().all(|l| !l.contains("ERROR") && !l.contains("WARN")), "{lines:#?}");
    assert!(lines.iter().any(|l| l.contains("cut") && l.contains("never acknowledged")), "{lines:#?}");
    assert!(verify::verify(dir).unwrap().findings.is_empty());
}

fn segment_files(dir: &Path) -> Vec<std::path::PathBuf> {
    let segments = dir.join("segments");
    segment::list(&segments).unwrap().into_iter().map(|n| segments.join(segment::segment_name(n))).collect()
}

/// Runs `f` with the store's log captured; returns the lines.
fn logged(f: impl FnOnce()) -> Vec<String> {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt().with_writer(move || writer.clone()).with_ansi(false).finish();
    tracing::subscriber::with_default(subscriber, f);
    captured.lines()
}

/// A store of `n` batches of `t`, closed, and opened once more so that all of it lies before the index's
/// checkpoint (where opening does not look); returns the locations of the batches.
fn settled_store(dir: &Path, t: &Topic, n: u64) -> Vec<Location> {
    let signer = SigningKey::from_bytes(&[1; 32]);
    {
        let store = DiskStore::open(dir).unwrap();
        let mut head = ChainHead::GENESIS;
        for offset in 0..n {
            // One message of one length: every record of the store has the same length.
            let batch = sealed_batch(&signer, t, head, 1, 400).unwrap();
            head = ChainHead::after(&batch);
            store.append(Append::new(&batch, Offset(offset))).unwrap();
        }
        store.sync().unwrap();
    }
    let store = DiskStore::open(dir).unwrap();
    (0..n)
        .map(|offset| {
            let key = batch_key(t, Offset(offset));
            match Slot::decode(&key, &store.db.get(&key).unwrap().unwrap()).unwrap() {
                Slot::Batch(e) => e.location,
                Slot::Lost(_) => panic!("lost"),
            }
        })
        .collect()
}

#[test]
fn the_scrub_finds_damage_after_opening_and_the_next_sync_marks_it_lost() {
    let dir = tempfile::tempdir().unwrap();
    let t = Topic::new("flip.scrub").unwrap();
    let at = settled_store(dir.path(), &t, 5);
    let store = Arc::new(DiskStore::open(dir.path()).unwrap());
    // Bit rot while the broker runs.
    flip(&dir.path().join("segments").join(segment::segment_name(at[2].segment)), at[2].position + 30, 0);
    let weak = Arc::downgrade(&store);
    let mut pass = None;
    let lines = logged(|| pass = scrub_pass(&weak, u64::MAX));
    assert_eq!(pass.map(|p| (p.batches, p.damaged)), Some((5, 1)));
    assert!(
        lines.iter().any(|l| l.contains("ERROR") && l.contains("2..3") && l.contains("found by the scrub")),
        "{lines:#?}"
    );
    // Readers serve the loss at once; the next sync records it, and a restart serves it too.
    assert!(
        matches!(&store.read(&t, Offset(2), 1).unwrap()[0], Stored::Lost(l) if l.offset == Offset(2) && l.count == 1)
    );
    store.sync().unwrap();
    let key = batch_key(&t, Offset(2));
    assert!(matches!(Slot::decode(&key, &store.db.get(&key).unwrap().unwrap()).unwrap(), Slot::Lost(_)));
    let lines =
        logged(|| assert_eq!(scrub_pass(&weak, u64::MAX).map(|p| (p.batches, p.damaged)), Some((4, 0))));
    assert!(lines.iter().all(|l| !l.contains("ERROR")), "reported once: {lines:#?}");
    drop(store);
    assert_eq!(scrub_pass(&weak, u64::MAX), None, "the scrub ends with its store");
}

#[test]
fn a_record_replaced_behind_the_brokers_back_is_reported_as_possible_tampering() {
    let dir = tempfile::tempdir().unwrap();
    let t = Topic::new("flip.swap").unwrap();
    let at = settled_store(dir.path(), &t, 4);
    // Swap the records of offsets 1 and 2 (of equal length): each is intact, neither where the index
    // says its batch is.
    let file = dir.path().join("segments").join(segment::segment_name(at[1].segment));
    let mut bytes = std::fs::read(&file).unwrap();
    let (a, b, len) =
        (at[1].position as usize, at[2].position as usize, (at[1].end() - at[1].position) as usize);
    assert_eq!(b, a + len);
    let first = bytes[a..b].to_vec();
    bytes.copy_within(b..b + len, a);
    bytes[b..b + len].copy_from_slice(&first);
    std::fs::write(&file, bytes).unwrap();
    let lines = logged(|| {
        let store = DiskStore::open(dir.path()).unwrap();
        let items = store.read(&t, Offset(0), usize::MAX).unwrap();
        let lost: Vec<_> = items
            .iter()
            .filter_map(|i| match i {
                Stored::Lost(l) => Some((l.offset, l.reason)),
                Stored::Batch(_) => None,
            })
            .collect();
        assert_eq!(lost, [(Offset(1), LossReason::Replaced), (Offset(2), LossReason::Replaced)]);
    });
    assert_eq!(lines.iter().filter(|l| l.contains("possible tampering")).count(), 2, "{lines:#?}");
    // verify says so too.
    let report = verify::verify(dir.path()).unwrap();
    assert!(!report.findings.is_empty());
}
