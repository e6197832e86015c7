//! The retention task: a [`Store::retain`] pass every interval, off the async workers, until shutdown,
//! with the rules a reload last set. What a pass removes is the store's and the
//! [planner](crate::retention)'s decision; this only runs it and logs what it did.

use std::sync::Arc;
use std::time::SystemTime;

use tokio::sync::watch;
use tracing::{info, warn};

use crate::metrics::Metrics;
use crate::retention::Retention;
use crate::store::Store;

/// Runs retention passes on `store` by the rules `rules` holds (none: no pass) until `shutdown` says so,
/// counting them in `metrics`.
pub(super) async fn run(
    store: Arc<dyn Store>,
    mut rules: watch::Receiver<Retention>,
    metrics: Option<Arc<Metrics>>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let current = Arc::new(rules.borrow_and_update().clone());
        let mut every = tokio::time::interval(current.interval());
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = every.tick() => {}
                changed = rules.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    info!("retention rules reloaded");
                    break;
                }
                _ = shutdown.changed() => return,
            }
            if current.is_empty() {
                continue;
            }
            let (store, pass) = (store.clone(), current.clone());
            match tokio::task::spawn_blocking(move || store.retain(&pass, SystemTime::now())).await {
                Ok(Ok(done)) => {
                    if let Some(metrics) = &metrics {
                        metrics.retained(&done);
                    }
                    if done.segments_removed > 0 {
                        info!(
                            topics = done.topics.len(),
                            segments = done.segments_removed,
                            bytes = done.bytes_freed,
                            "retention gave space back"
                        );
                    }
                }
                Ok(Err(e)) => warn!(error = %e, "a retention pass failed; the next one tries again"),
                Err(e) => warn!(error = %e, "a retention pass panicked"),
            }
        }
    }
}
