//! The command line of the load bench and the settings it implies. Every setting is printed before a run
//! (see [`Settings::describe`]); `--quick` only changes sizes and durations, never what is measured.

use std::path::PathBuf;

/// A workload the bench can run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Workload {
    /// One publisher -> one subscriber, closed loop; also produce-only and disk use.
    W1,
    /// Open-loop latency at a fixed rate.
    W2,
    /// One publisher -> ten subscribers.
    W3,
    /// W2 with and without many idle subscribed connections; broker memory.
    W4,
    /// Restart time of a broker holding many messages.
    W5,
}

impl Workload {
    pub const ALL: [Workload; 5] = [Workload::W1, Workload::W2, Workload::W3, Workload::W4, Workload::W5];

    fn parse(s: &str) -> Option<Workload> {
        Self::ALL.into_iter().find(|w| format!("{w:?}").eq_ignore_ascii_case(s))
    }
}

/// What `--compare` asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compare {
    /// Sealpost alone.
    None,
    /// Sealpost, and single-node JetStream with both fsync policies (`nats-default`, `nats-always`).
    Nats,
    /// Sealpost single node, Sealpost on its JetStream engine and raw JetStream (`sealpost-jetstream`,
    /// `nats-r3`), both on the repository's 3-node cluster: W1 and W2 only.
    Cluster,
}

impl Compare {
    /// The workloads `--compare cluster` runs.
    pub const CLUSTER_WORKLOADS: [Workload; 2] = [Workload::W1, Workload::W2];
}

pub struct Settings {
    pub quick: bool,
    /// The Sealpost broker runs with its observers on: the metrics endpoint and the audit log.
    pub observe: bool,
    pub workloads: Vec<Workload>,
    /// Workloads asked for (or implied by `all`) that this mode does not run (`--compare cluster`).
    pub skipped: Vec<Workload>,
    pub compare: Compare,
    /// Payload bytes of every message.
    pub size: usize,
    /// W1: messages per run, runs per system, unacknowledged messages a publisher keeps in flight.
    pub messages: u64,
    pub runs: usize,
    pub window: usize,
    /// W1 and W3 stop sending new messages after this long (for systems far slower than the rest).
    pub cap: std::time::Duration,
    /// W2 (and W4's two W2 runs): rate, measured seconds (after one second of warm-up).
    pub rate: u64,
    pub seconds: u64,
    pub w4_seconds: u64,
    /// W3: subscribers, messages.
    pub subscribers: usize,
    pub w3_messages: u64,
    /// W4: idle connections, each with one subscription to another topic.
    pub idle: usize,
    /// W5: messages the broker holds when it is restarted.
    pub restart_messages: u64,
    pub json: Option<PathBuf>,
    pub charts: PathBuf,
}

const USAGE: &str = "cargo bench --bench load -- [--quick] [--observe] [--compare nats|cluster] [--json FILE] [--charts DIR]
    [--workload w1,w2,w3,w4,w5|all] [--size BYTES] [--messages N] [--runs R] [--window N] [--cap-seconds S] [--rate MSGS_PER_S]
    [--seconds S] [--w4-seconds S] [--subscribers N] [--w3-messages N] [--idle N] [--restart-messages N]

  --compare nats     also NATS JetStream single-node servers (mutual TLS), default fsync and sync_interval: always
  --compare cluster  W1 and W2 only (other workloads are skipped): sealpost (single node, disk engine) against
                     sealpost-jetstream (the broker with storage.engine = \"jetstream\", replicas 3) and nats-r3
                     (raw JetStream, a stream with 3 replicas), both on the repository's 3-node cluster
                     (benches/nats/nats-server.sh cluster, started once in a temp folder; sync_interval: always,
                     no TLS between the clients and NATS)";

impl Settings {
    pub fn from_args() -> anyhow::Result<Settings> {
        // cargo passes `--bench` to harness-less benches; everything else must be ours.
        let args: Vec<String> = std::env::args().skip(1).filter(|a| a != "--bench").collect();
        let mut quick = false;
        let mut observe = false;
        let mut values = std::collections::HashMap::new();
        let mut i = 0;
        while i < args.len() {
            match args[i].as_str() {
                "--quick" => quick = true,
                "--observe" => observe = true,
                "--help" | "-h" => {
                    println!("{USAGE}");
                    std::process::exit(0);
                }
                flag if flag.starts_with("--") && i + 1 < args.len() => {
                    values.insert(flag.to_string(), args[i + 1].clone());
                    i += 1;
                }
                other => anyhow::bail!("unexpected argument {other:?}\nusage: {USAGE}"),
            }
            i += 1;
        }
        let mut take = |name: &str| values.remove(name);
        let num = |v: Option<String>, name: &str, default: u64| -> anyhow::Result<u64> {
            v.map_or(Ok(default), |v| {
                v.parse().map_err(|_| anyhow::anyhow!("{name} wants a number, not {v:?}"))
            })
        };
        let q = |quick_value: u64, full: u64| if quick { quick_value } else { full };
        let workloads = match take("--workload").as_deref() {
            None | Some("all") => Workload::ALL.to_vec(),
            Some(list) => list
                .split(',')
                .map(|w| Workload::parse(w.trim()).ok_or_else(|| anyhow::anyhow!("unknown workload {w:?}")))
                .collect::<anyhow::Result<Vec<_>>>()?,
        };
        let compare = match take("--compare").as_deref() {
            None => Compare::None,
            Some("nats") => Compare::Nats,
            Some("cluster") => Compare::Cluster,
            Some(other) => anyhow::bail!("--compare knows `nats` and `cluster`, not {other:?}"),
        };
        let (workloads, skipped) = if compare == Compare::Cluster {
            let (run, skip) = workloads.into_iter().partition(|w| Compare::CLUSTER_WORKLOADS.contains(w));
            (run, skip)
        } else {
            (workloads, Vec::new())
        };
        anyhow::ensure!(
            !workloads.is_empty(),
            "--compare cluster runs only W1 and W2; --workload asked for neither"
        );
        let settings = Settings {
            quick,
            observe,
            workloads,
            skipped,
            compare,
            size: num(take("--size"), "--size", 1024)? as usize,
            messages: num(take("--messages"), "--messages", q(50_000, 500_000))?,
            runs: num(take("--runs"), "--runs", q(2, 3))?.max(1) as usize,
            window: num(take("--window"), "--window", 8192)?.max(1) as usize,
            cap: std::time::Duration::from_secs(
                num(take("--cap-seconds"), "--cap-seconds", q(3, 60))?.max(1),
            ),
            rate: num(take("--rate"), "--rate", 5_000)?.max(1),
            seconds: num(take("--seconds"), "--seconds", q(3, 20))?.max(1),
            w4_seconds: num(take("--w4-seconds"), "--w4-seconds", q(2, 10))?.max(1),
            subscribers: num(take("--subscribers"), "--subscribers", 10)?.max(1) as usize,
            w3_messages: num(take("--w3-messages"), "--w3-messages", q(20_000, 200_000))?,
            idle: num(take("--idle"), "--idle", 1_000)? as usize,
            restart_messages: num(take("--restart-messages"), "--restart-messages", q(200_000, 10_000_000))?,
            json: take("--json").map(PathBuf::from),
            charts: take("--charts").map(PathBuf::from).unwrap_or_else(default_charts_dir),
        };
        if let Some(unknown) = values.keys().next() {
            anyhow::bail!("unknown option {unknown}\nusage: {USAGE}");
        }
        Ok(settings)
    }

    pub fn runs(&self, w: Workload) -> bool {
        self.workloads.contains(&w)
    }

    /// One line per setting, for the top of the output.
    pub fn describe(&self) -> Vec<String> {
        let mut out = vec![
            format!(
                "mode: {}; workloads: {:?}; compare: {:?}; payload {} B; sealpost observers: {}",
                if self.quick { "--quick (smaller counts, shorter runs)" } else { "full" },
                self.workloads,
                self.compare,
                self.size,
                if self.observe { "on (--observe: metrics endpoint, audit log)" } else { "off" }
            ),
            format!(
                "W1: {} messages per run (a run stops sending after {} s), {} runs per system (interleaved), \
                 window {} unacknowledged",
                self.messages,
                self.cap.as_secs(),
                self.runs,
                self.window
            ),
            format!("W2: {} msgs/s open loop, 1 s warm-up then {} s measured", self.rate, self.seconds),
            format!(
                "W3: 1 publisher -> {} subscribers, {} messages (sending stops after {} s)",
                self.subscribers,
                self.w3_messages,
                self.cap.as_secs()
            ),
            format!(
                "W4: W2 for {} s without, then with {} idle connections (each subscribed to another topic)",
                self.w4_seconds, self.idle
            ),
            format!("W5: restart of a broker holding {} messages", self.restart_messages),
            format!("charts: {}", self.charts.display()),
        ];
        if !self.skipped.is_empty() {
            out.push(format!("skipped: {:?} (--compare cluster runs W1 and W2 only)", self.skipped));
        }
        if let Some(j) = &self.json {
            out.push(format!("json: {}", j.display()));
        }
        out
    }
}

/// `<target dir>/load-charts`: the bench executable lives in `<target>/<profile>/deps/`.
fn default_charts_dir() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.ancestors().nth(3).map(|t| t.join("load-charts")))
        .unwrap_or_else(|| PathBuf::from("target/load-charts"))
}
