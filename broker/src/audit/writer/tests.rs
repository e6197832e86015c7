//! The writer: rotation, restart, a kill, a full queue.

use super::*;
use crate::audit::testing::{closed_log, config, decision, files, key, lines, TestClock, T0};
use crate::audit::{verify_files, AuditLog, Record};

fn verify(files: &[PathBuf]) -> crate::audit::Report {
    verify_files(&key().public_key(), files).unwrap()
}

fn records(files: &[PathBuf]) -> Vec<Record> {
    files.iter().flat_map(|f| lines(f)).filter_map(|l| Record::parse(&l).ok()).collect()
}

#[test]
fn rotation_keeps_the_chain_across_files() {
    let dir = tempfile::tempdir().unwrap();
    let files = closed_log(dir.path(), 80, 4096);
    assert!(files.len() >= 4, "{files:?}");
    for pair in files.windows(2) {
        let (before, after) = (lines(&pair[0]), lines(&pair[1]));
        assert!(
            before.last().unwrap().starts_with("{\"checkpoint\""),
            "a rotated file ends with a checkpoint"
        );
        let last = before.iter().rev().find_map(|l| Record::parse(l).ok()).unwrap();
        let first = Record::parse(&after[0]).unwrap();
        assert_eq!((first.seq, first.prev), (last.seq + 1, last.hash));
        assert!(std::fs::metadata(&pair[0]).unwrap().len() < 4096 + 2 * 1024, "{:?}", pair[0]);
    }
    let report = verify(&files);
    assert_eq!(report.finding, None);
    assert_eq!(report.entries, 81);
}

#[test]
fn a_restart_after_a_clean_close_continues_the_chain_in_a_new_file() {
    let dir = tempfile::tempdir().unwrap();
    closed_log(dir.path(), 5, 1 << 20);
    let files = closed_log(dir.path(), 5, 1 << 20);
    assert_eq!(files.len(), 2);
    let second = Record::parse(&lines(&files[1])[0]).unwrap();
    assert_eq!((second.seq, second.entry.action()), (7, Action::Start));
    let report = verify(&files);
    assert_eq!(report.finding, None, "{report:?}");
    assert_eq!(report.entries, 12);
}

#[test]
fn time_comes_from_the_entry_or_the_injected_clock() {
    let dir = tempfile::tempdir().unwrap();
    let clock = TestClock::at(T0);
    let log = AuditLog::open_with(&config(dir.path(), 1 << 20), key(), clock.clone()).unwrap();
    clock.set(T0 + 5);
    log.record(Entry::new(Action::Connect));
    log.record(Entry::new(Action::Connect).at(T0 - 1000));
    log.close().unwrap();
    let times: Vec<u64> = records(&files(dir.path())).iter().map(|r| r.time).collect();
    assert_eq!(times, [T0, T0 + 5, T0 - 1000]);
}

#[test]
fn a_killed_writer_leaves_flushed_entries_intact_and_the_log_not_closed() {
    let dir = tempfile::tempdir().unwrap();
    let clock = TestClock::at(T0);
    let cfg = config(dir.path(), 1 << 20);
    let cfg = AuditConfig { checkpoint_entries: 1000, ..cfg };
    let log = AuditLog::open_with(&cfg, key(), clock.clone()).unwrap();
    for i in 0..10 {
        log.record(decision(i));
    }
    log.checkpoint().unwrap();
    for i in 10..15 {
        log.record(decision(i));
    }
    log.abort();
    let files = files(dir.path());
    let report = verify(&files);
    let f = report.finding.clone().unwrap();
    assert!(f.what.contains("not closed") && f.what.contains("checkpoint 1, covering entry 11"), "{f}");
    assert_eq!(
        report.entries, 11,
        "every entry flushed by the checkpoint is intact; the 5 after it are lost"
    );

    // The next run says so, and continues the chain from the last intact entry.
    closed_log(dir.path(), 2, 1 << 20);
    let files = super::super::testing::files(dir.path());
    let report = verify(&files);
    assert_eq!(report.finding, None, "{report:?}");
    assert!(report.notes.iter().any(|n| n.contains("restart")), "{:?}", report.notes);
    let restart = Record::parse(&lines(&files[1])[0]).unwrap();
    assert_eq!(
        (restart.seq, restart.entry.action(), restart.entry.count_value()),
        (12, Action::Restart, Some(0))
    );
}

#[test]
fn a_torn_last_line_is_left_in_place_and_accounted_for_by_the_restart_entry() {
    let dir = tempfile::tempdir().unwrap();
    let clock = TestClock::at(T0);
    let log = AuditLog::open_with(&config(dir.path(), 1 << 20), key(), clock).unwrap();
    log.record(decision(1));
    log.checkpoint().unwrap();
    log.abort();
    let first = files(dir.path()).remove(0);
    let torn = "{\"seq\":3,\"time\":\"2026-12";
    std::fs::write(&first, std::fs::read_to_string(&first).unwrap() + torn).unwrap();
    let f = verify(&files(dir.path())).finding.unwrap();
    assert!(f.what.contains("not closed") && f.what.contains(&format!("torn ({} bytes)", torn.len())), "{f}");

    closed_log(dir.path(), 1, 1 << 20);
    let all = files(dir.path());
    assert_eq!(verify(&all).finding, None);
    assert!(std::fs::read_to_string(&first).unwrap().ends_with(torn), "the torn line is not edited");
    let restart = Record::parse(&lines(&all[1])[0]).unwrap();
    assert_eq!(restart.entry.count_value(), Some(torn.len() as u64));

    // More bytes after the torn line than the restart entry accounts for: reported.
    std::fs::write(&first, std::fs::read_to_string(&first).unwrap() + "xx").unwrap();
    let f = verify(&all).finding.unwrap();
    assert!(f.file == all[1] && f.line == 1 && f.what.contains("torn bytes"), "{f}");
}

#[test]
fn a_full_queue_drops_nothing_silently() {
    let dir = tempfile::tempdir().unwrap();
    let clock = TestClock::at(T0);
    let cfg = AuditConfig { queue: 2, ..config(dir.path(), 1 << 20) };
    let log = AuditLog::open_with(&cfg, key(), clock.clone()).unwrap();
    // The writer stops at its next look at the clock; record() must not wait for it.
    clock.close_gate();
    for i in 0..50 {
        log.record(decision(i));
    }
    let dropped = log.dropped();
    assert!(dropped >= 47, "{dropped}");
    clock.open_gate();
    log.close().unwrap();
    let files = files(dir.path());
    assert_eq!(verify(&files).finding, None);
    let all = records(&files);
    let decisions = all.iter().filter(|r| r.entry.principal_name().is_some()).count() as u64;
    let counted: u64 = all
        .iter()
        .filter(|r| r.entry.action() == Action::Dropped)
        .map(|r| r.entry.count_value().unwrap())
        .sum();
    assert_eq!(counted, dropped);
    assert_eq!(decisions + counted, 50);
}

#[test]
fn a_damaged_tail_stops_the_writer_from_opening() {
    let dir = tempfile::tempdir().unwrap();
    let files = closed_log(dir.path(), 3, 1 << 20);
    let text = std::fs::read_to_string(&files[0]).unwrap().replace("alice1", "alice9");
    std::fs::write(&files[0], text).unwrap();
    let err = AuditLog::open_with(&config(dir.path(), 1 << 20), key(), TestClock::at(T0)).unwrap_err();
    assert!(matches!(&err, Error::Audit(m) if m.contains("line 3")), "{err}");
}

#[test]
fn records_after_close_are_counted_as_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let log = AuditLog::open_with(&config(dir.path(), 1 << 20), key(), TestClock::at(T0)).unwrap();
    log.close().unwrap();
    log.close().unwrap();
    log.record(decision(1));
    assert_eq!(log.dropped(), 1);
}

#[test]
fn checkpoints_in_a_full_file_rotate_it_rather_than_grow_it() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = AuditConfig { checkpoint_entries: 1000, ..config(dir.path(), 4096) };
    let log = AuditLog::open_with(&cfg, key(), TestClock::at(T0)).unwrap();
    for i in 0..14 {
        log.record(decision(i));
    }
    // Twelve checkpoints (about 430 bytes each) would take a file well past 4096 + 1024 bytes.
    for _ in 0..12 {
        log.checkpoint().unwrap();
    }
    log.record(decision(99));
    log.close().unwrap();
    let files = files(dir.path());
    assert!(files.len() >= 3, "{files:?}");
    for f in &files {
        assert!(std::fs::metadata(f).unwrap().len() < 4096 + 1024, "{f:?}");
    }
    let report = verify(&files);
    assert_eq!(report.finding, None, "{report:?}");
    assert_eq!(report.entries, 16);
}
