//! The configuration watcher: reloads on SIGHUP and when a file changes, and applies what
//! [`crate::reload`] accepts. It decides nothing itself: whether a reload may apply is
//! [`Running::changes_to`]'s, and which live connections and streams it ends is the session's.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::signal::unix::Signal;
use tokio::sync::watch;
use tracing::{error, info};

use super::{quic_config, Live, Revision};
use crate::event::Event;
use crate::reload::{Changes, Running, Sources};
use crate::Error;

/// How often the configuration file and the files it names are read again for a change.
pub const POLL: Duration = Duration::from_millis(250);

/// The watcher of one configuration file.
pub(super) struct Watcher {
    pub(super) file: PathBuf,
    pub(super) live: Arc<Live>,
    pub(super) config: watch::Sender<Arc<Running>>,
}

impl Watcher {
    /// Reloads on each SIGHUP and each change of the files until the broker shuts down.
    pub(super) async fn run(self, mut hangup: Signal, mut shutdown: watch::Receiver<bool>) {
        let mut seen = self.config.borrow().sources().clone();
        let mut poll = tokio::time::interval(POLL);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let trigger = tokio::select! {
                _ = hangup.recv() => "SIGHUP",
                _ = poll.tick() => {
                    let before = seen.clone();
                    let now = match tokio::task::spawn_blocking(move || before.reread()).await {
                        Ok(now) => now,
                        Err(_) => continue,
                    };
                    if now == seen {
                        continue;
                    }
                    // Tried once per change: a refused file is read again when it changes again.
                    seen = now;
                    "a file changed"
                }
                _ = shutdown.changed() => return,
            };
            if let Some(sources) = self.reload(trigger).await {
                seen = sources;
            }
        }
    }

    /// Loads the file and applies it if [`Running::changes_to`] allows; the new sources if applied.
    async fn reload(&self, trigger: &str) -> Option<Sources> {
        let file = self.file.clone();
        let loaded = tokio::task::spawn_blocking(move || Running::load(&file))
            .await
            .map_err(|e| Error::Config(format!("the reload task failed: {e}")))
            .and_then(|loaded| loaded);
        let current = self.config.borrow().clone();
        let checked = loaded.and_then(|next| Ok((current.changes_to(&next)?, next)));
        let session = &self.live.session;
        match checked {
            Ok((changes, next)) => {
                let sources = next.sources().clone();
                next.log_crls();
                self.apply(&changes, next);
                let changed = changes.to_string();
                info!(file = %self.file.display(), %trigger, changes = %changed, "configuration reloaded");
                session.emit(&Event::ConfigReloaded { file: &self.file, changes: &changed });
                Some(sources)
            }
            Err(e) => {
                // One line: a TOML error spans several.
                let reason = e.to_string().split_whitespace().collect::<Vec<_>>().join(" ");
                error!(
                    file = %self.file.display(), %trigger, error = %reason,
                    "configuration reload refused: keeping the running configuration"
                );
                session.emit(&Event::ConfigReloadRefused { file: &self.file, reason: &reason });
                None
            }
        }
    }

    /// Makes `next` the running configuration: the ACL, then the TLS configuration of new handshakes, then
    /// tells the live connections and streams (which check themselves against both), then publishes it.
    fn apply(&self, changes: &Changes, next: Running) {
        let live = &self.live;
        if changes.acl {
            live.session.set_acl(next.acl().clone());
        }
        if changes.retention {
            live.retention.send_replace(next.config().retention.clone());
        }
        if changes.any() {
            live.endpoint.set_server_config(Some(quic_config(next.crypto(), &live.transport)));
            live.revision.send_modify(|revision| {
                let generation = revision.generation + u64::from(changes.recheck_connections());
                *revision = Arc::new(Revision { verifier: next.verifier().clone(), generation });
            });
        }
        self.config.send_replace(Arc::new(next));
    }
}
