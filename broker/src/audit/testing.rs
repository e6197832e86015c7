//! Helpers for the audit log's tests: an injected clock, a log made in a temporary folder, and line edits.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use super::{AuditKey, AuditLog, Clock};
use crate::audit::entry::{Action, Entry};
use crate::config::AuditConfig;

/// A clock the test sets. While closed, `now_millis` waits until the test opens it: the writer stands
/// still, at a known point, and the queue fills.
#[derive(Clone, Default)]
pub(crate) struct TestClock {
    now: Arc<AtomicU64>,
    gate: Arc<(Mutex<bool>, Condvar)>,
}

impl TestClock {
    pub(crate) fn at(millis: u64) -> TestClock {
        let c = TestClock::default();
        c.set(millis);
        c
    }
    pub(crate) fn set(&self, millis: u64) {
        self.now.store(millis, Ordering::SeqCst);
    }
    pub(crate) fn close_gate(&self) {
        *self.gate.0.lock().unwrap() = true;
    }
    pub(crate) fn open_gate(&self) {
        *self.gate.0.lock().unwrap() = false;
        self.gate.1.notify_all();
    }
}

impl Clock for TestClock {
    fn now_millis(&self) -> u64 {
        let mut closed = self.gate.0.lock().unwrap();
        while *closed {
            closed = self.gate.1.wait(closed).unwrap();
        }
        self.now.load(Ordering::SeqCst)
    }
}

pub(crate) const T0: u64 = 1_796_431_397_000;

pub(crate) fn key() -> AuditKey {
    AuditKey::from_seed(&[42; 32])
}

pub(crate) fn config(dir: &std::path::Path, max_file_bytes: u64) -> AuditConfig {
    AuditConfig {
        max_file_bytes,
        checkpoint_entries: 4,
        checkpoint_seconds: 3600,
        ..AuditConfig::new(dir.join("audit"), dir.join("audit.key"))
    }
}

/// A decision with every field set, different for each `i`.
pub(crate) fn decision(i: u64) -> Entry {
    let e = Entry::new(if i.is_multiple_of(3) { Action::Subscribe } else { Action::Publish })
        .principal(format!("alice{i}"))
        .fingerprint(format!("{i:064x}"))
        .remote(format!("127.0.0.1:{}", 4000 + i).parse().unwrap())
        .topic(format!("demo.t{i}"))
        .count(i);
    if i.is_multiple_of(2) {
        e.allow()
    } else {
        e.refuse("NOT_AUTHORIZED")
    }
}

/// A closed log of `n` decisions (plus its start entry) in `dir/audit`; its files, in order.
pub(crate) fn closed_log(dir: &std::path::Path, n: u64, max_file_bytes: u64) -> Vec<PathBuf> {
    let clock = TestClock::at(T0);
    let log = AuditLog::open_with(&config(dir, max_file_bytes), key(), clock.clone()).unwrap();
    for i in 0..n {
        clock.set(T0 + i);
        log.record(decision(i));
    }
    log.close().unwrap();
    files(dir)
}

pub(crate) fn files(dir: &std::path::Path) -> Vec<PathBuf> {
    super::list_files(&dir.join("audit")).unwrap().into_iter().map(|(_, p)| p).collect()
}

pub(crate) fn lines(path: &std::path::Path) -> Vec<String> {
    std::fs::read_to_string(path).unwrap().lines().map(str::to_owned).collect()
}

pub(crate) fn write_lines(path: &std::path::Path, lines: &[String]) {
    let mut text = lines.join("\n");
    if !lines.is_empty() {
        text.push('\n');
    }
    std::fs::write(path, text).unwrap();
}
