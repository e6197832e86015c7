//! The 3-node NATS JetStream cluster of `--compare cluster`: the repository's own, started once per bench
//! run through [`SCRIPT`] (`cluster start --port 0 --owner PID --rm`: JetStream on file storage with
//! `sync_interval: always`, `max_payload: 8MB`, no TLS, on 127.0.0.1) in a temp folder, and stopped at the
//! end. The script's watchdog kills the nodes and deletes the folder should the bench die without
//! stopping them.
//!
//! Each run of a workload uses objects of its own on the cluster ([`Footprint`]): a stream of its own
//! (`nats-r3`) or a prefix of its own (`sealpost-jetstream`), so no run sees another's data; they are
//! deleted when the run stops, so the cluster's disk does not fill up over a full run. The disk a run
//! takes is what its streams take on the three nodes together (every replica counts).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_nats::jetstream;
use futures_util::TryStreamExt;

use crate::nats::SCRIPT;

/// The cluster, running until [`stop`](NatsCluster::stop) or drop.
pub struct NatsCluster {
    dir: PathBuf,
    pub urls: Vec<String>,
    stopped: bool,
}

impl NatsCluster {
    /// Starts the cluster through the script and waits (the script's bound: 30 s) until it is healthy.
    pub fn start() -> anyhow::Result<NatsCluster> {
        let dir = tempfile::Builder::new().prefix("sealpost-load-cluster-").tempdir()?.keep();
        let owner = std::process::id().to_string();
        let out =
            script(&["cluster", "start", "--dir", path_str(&dir), "--port", "0", "--owner", &owner, "--rm"]);
        let out = match out {
            Ok(out) => out,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(e);
            }
        };
        let last = out.lines().last().unwrap_or_default();
        let urls: Vec<String> = last.split(',').map(str::to_string).collect();
        anyhow::ensure!(
            urls.len() == 3 && urls.iter().all(|u| u.starts_with("nats://")),
            "`{SCRIPT} cluster start` printed {last:?} as its last line, not three client URLs"
        );
        Ok(NatsCluster { dir, urls, stopped: false })
    }

    /// The folder that holds the nodes' configurations, logs and stores.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Stops the nodes (and the watchdog) and deletes the folder.
    pub fn stop(&mut self) -> anyhow::Result<()> {
        if std::mem::replace(&mut self.stopped, true) {
            return Ok(());
        }
        let stopped = script(&["cluster", "stop", "--dir", path_str(&self.dir)]);
        let _ = std::fs::remove_dir_all(&self.dir);
        stopped.map(drop)
    }

    /// A JetStream context on the cluster (any of its nodes), without TLS: the cluster has none.
    pub async fn connect(&self, window: usize) -> anyhow::Result<jetstream::Context> {
        connect(&self.urls, window).await
    }

    /// A footprint whose objects are the streams named `names` or starting with one of `prefixes`.
    pub fn footprint(&self, names: Vec<String>, prefixes: Vec<String>) -> Footprint {
        Footprint { dir: self.dir.clone(), urls: self.urls.clone(), names, prefixes }
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            eprintln!("stopping the NATS cluster: {e:#}");
        }
    }
}

/// A JetStream context on `urls`, without TLS, allowing `window` unacknowledged publishes.
pub async fn connect(urls: &[String], window: usize) -> anyhow::Result<jetstream::Context> {
    let servers = urls.iter().map(|u| u.parse()).collect::<Result<Vec<async_nats::ServerAddr>, _>>()?;
    let client = async_nats::ConnectOptions::new().connect(servers.as_slice()).await?;
    Ok(jetstream::context::ContextBuilder::new()
        .max_ack_inflight(window)
        .timeout(Duration::from_secs(120))
        .build(client))
}

/// A name no other run of this bench process uses: `{what}{pid}x{n}`.
pub fn fresh_name(what: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!("{what}{}x{}", std::process::id(), NEXT.fetch_add(1, Ordering::SeqCst))
}

/// The streams one run made on the cluster.
pub struct Footprint {
    dir: PathBuf,
    urls: Vec<String>,
    names: Vec<String>,
    prefixes: Vec<String>,
}

impl Footprint {
    fn holds(&self, stream: &str) -> bool {
        self.names.iter().any(|n| n == stream) || self.prefixes.iter().any(|p| stream.starts_with(p.as_str()))
    }

    /// Bytes allocated on disk by the run's streams, on all three nodes together (account `$G`).
    pub fn disk_bytes(&self) -> u64 {
        let mut total = 0;
        for k in 1..=3 {
            let streams = self.dir.join(format!("n{k}/jetstream/$G/streams"));
            let Ok(entries) = std::fs::read_dir(&streams) else { continue };
            for entry in entries.flatten() {
                if self.holds(&entry.file_name().to_string_lossy()) {
                    total += crate::system::allocated_bytes(&entry.path());
                }
            }
        }
        total
    }

    /// Deletes the run's streams.
    pub async fn remove(&self) -> anyhow::Result<()> {
        let js = connect(&self.urls, 1).await?;
        let names: Vec<String> = js.stream_names().try_collect().await?;
        for name in names.iter().filter(|n| self.holds(n)) {
            js.delete_stream(name).await?;
        }
        Ok(())
    }
}

/// Runs the script from the repository root with `args`; its standard output, or an error with its
/// standard error.
fn script(args: &[&str]) -> anyhow::Result<String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = Command::new("bash").arg(root.join(SCRIPT)).args(args).current_dir(root).output()?;
    anyhow::ensure!(
        out.status.success(),
        "`{SCRIPT} {}` failed ({}):\n{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr).trim_end()
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("temp folder path is UTF-8")
}
