//! Progress lines for long phases: every five seconds a line on stderr with how far a phase is and its
//! current rate, so that a full run (millions of messages) is visibly alive. Silent for short phases.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A counter a phase advances; a background task reports it until the `Progress` is dropped.
pub struct Progress {
    count: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

const EVERY: Duration = Duration::from_secs(5);

impl Progress {
    pub fn start(label: String, total: u64) -> Progress {
        let count = Arc::new(AtomicU64::new(0));
        let counter = count.clone();
        let task = tokio::spawn(async move {
            let start = Instant::now();
            let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + EVERY, EVERY);
            let mut last = 0;
            loop {
                ticks.tick().await;
                let n = counter.load(Ordering::Relaxed);
                let rate = (n - last) as f64 / EVERY.as_secs_f64();
                last = n;
                eprintln!(
                    "    ... {label}: {n}/{total} ({:.0}%) after {:.0} s, {rate:.0}/s",
                    100.0 * n as f64 / total.max(1) as f64,
                    start.elapsed().as_secs_f64()
                );
            }
        });
        Progress { count, task }
    }

    pub fn add(&self, n: u64) {
        self.count.fetch_add(n, Ordering::Relaxed);
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.task.abort();
    }
}
