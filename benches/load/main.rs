//! End-to-end load through the public API: Sealpost's broker in its own process (segment log, fsync before every
//! ack), real QUIC with mutual TLS, the real client sealing and opening every message; optionally NATS
//! JetStream side by side, through the same workload code.
//!
//! `cargo bench --bench load -- [--quick] [--compare nats|cluster] [--json FILE] [--charts DIR] [--workload LIST]`
//! (`--help` lists the size and duration options).
//!
//! - **W1**, closed loop: one publisher -> one subscriber, max throughput (publish->ack and delivered), then
//!   produce-only (no subscriber), and the disk the data takes against its payload bytes.
//! - **W2**, open loop at 5,000 msgs/s: publish->ack and publish->delivery latency from each message's
//!   *intended* send time (no coordinated omission), HdrHistogram, p50/p90/p99/p99.9/max.
//! - **W3**: one publisher -> ten subscribers, deliveries per second.
//! - **W4**: W2 without and with 1,000 idle connections (each subscribed to another topic): the server
//!   process's resident memory and W2's p99 both ways.
//! - **W5**: restart of a server holding 10 million messages (200,000 with `--quick`): time from process
//!   start until it has served a subscription and an acknowledged publish.
//!
//! With `--compare nats` every workload also runs against NATS JetStream 2.10+ (file store, mutual TLS)
//! with its default fsync policy and with `sync_interval: always`, interleaved with Sealpost's runs, and
//! the summary prints Sealpost's ratio to each. `nats-server` comes from `benches/nats/nats-server.sh`.
//!
//! With `--compare cluster` the bench starts the repository's 3-node JetStream cluster once
//! (`benches/nats/nats-server.sh cluster start --port 0 --owner PID`, in a temp folder; `sync_interval:
//! always`, no TLS), runs **W1 and W2 only** (other workloads are skipped, and the settings say so) on
//! `sealpost` (single node, disk engine: the baseline of the same run), `sealpost-jetstream` (the same
//! broker process with `storage.engine = "jetstream"` on the cluster, replicas 3, a fresh prefix per run)
//! and `nats-r3` (raw JetStream on the cluster: a stream of its own per run with `num_replicas` 3, the same
//! async-nats workload code, connecting without TLS, where the single-node NATS systems use mutual TLS),
//! interleaved, and stops the cluster at the end. The summary prints sealpost-jetstream's ratio to nats-r3
//! and to sealpost. On the cluster, W1's disk figure counts every replica (all three nodes).
//! The machine and every setting are printed; `--json FILE` writes one object per workload and system;
//! charts (SVG) go to `--charts DIR` (default `target/load-charts`).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod chart;
mod cluster;
mod nats;
mod pki;
#[path = "../../tests/system/process.rs"]
mod process;
mod progress;
mod report;
mod sealpost;
mod settings;
mod system;
mod workloads;

use std::path::PathBuf;
use std::time::Instant;

use report::{Record, Summary};
use settings::{Compare, Settings, Workload};
use system::{Env, System};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some(sealpost::BROKER_MODE) {
        let config = PathBuf::from(args.get(2).expect("broker mode needs a configuration file"));
        if let Err(e) = sealpost::run_broker_process(&config) {
            eprintln!("broker process failed: {e:#}");
            std::process::exit(1);
        }
        return;
    }
    let s = match Settings::from_args() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("load bench: {e:#}");
            std::process::exit(2);
        }
    };
    let found = match s.compare {
        Compare::None => Ok(None),
        Compare::Nats => nats::find_or_install().map(Some),
        // The script's cluster runs the binary the script installed, and no other.
        Compare::Cluster => nats::script_binary().map(Some),
    };
    let nats_bin = found.unwrap_or_else(|e| {
        eprintln!("load bench: {e:#}");
        std::process::exit(2);
    });
    let mut systems = vec![System::Sealpost];
    match s.compare {
        Compare::None => {}
        Compare::Nats => {
            systems.push(System::Nats(nats::Fsync::Default));
            systems.push(System::Nats(nats::Fsync::Always));
        }
        Compare::Cluster => {
            systems.push(System::SealpostJetStream);
            systems.push(System::NatsR3);
        }
    }
    // The figure the summary's ratios are of: Sealpost's, or on the cluster, Sealpost's on JetStream.
    let reference = match s.compare {
        Compare::Cluster => System::SealpostJetStream,
        Compare::None | Compare::Nats => System::Sealpost,
    };

    println!("machine: {}", machine());
    for line in s.describe() {
        println!("settings: {line}");
    }
    for sys in &systems {
        println!("system: {}", sys.describe());
    }
    if let Some((bin, version)) = &nats_bin {
        println!("system: nats-server {version} at {}", bin.display());
    }
    println!(
        "settings: everything on loopback; clients in this process, each server in its own process, all on \
         the same {} cores; sealpost broker log output off; sealpost max_connections_per_principal = {} (W4)",
        cores(),
        sealpost::MAX_CONNECTIONS_PER_PRINCIPAL
    );

    let began = Instant::now();
    let mut nats_cluster = match s.compare {
        Compare::Cluster => match cluster::NatsCluster::start() {
            Ok(c) => {
                println!(
                    "system: 3-node cluster (benches/nats/nats-server.sh cluster) in {}: {}",
                    c.dir().display(),
                    c.urls.join(",")
                );
                Some(c)
            }
            Err(e) => {
                eprintln!("load bench: no NATS cluster: {e:#}");
                std::process::exit(2);
            }
        },
        Compare::None | Compare::Nats => None,
    };
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let pki = pki::Pki::generate();
    let env = Env {
        pki: &pki,
        nats_bin: nats_bin.as_ref().map(|(b, _)| b.as_path()),
        window: s.window,
        observe: s.observe,
        cluster: nats_cluster.as_ref(),
    };
    let records = rt.block_on(run(&s, &env, &systems));
    println!("\nall workloads took {:.1} s", began.elapsed().as_secs_f64());
    if let Some(c) = nats_cluster.as_mut() {
        if let Err(e) = c.stop() {
            eprintln!("stopping the NATS cluster: {e:#}");
        }
    }

    let names: Vec<&'static str> = systems.iter().map(|s| s.name()).collect();
    report::print_summary(&records, &names, reference.name());
    match chart::draw(&s.charts, &records, &names) {
        Ok(paths) => {
            for p in paths {
                println!("chart: {}", p.display());
            }
        }
        Err(e) => eprintln!("charts not drawn: {e:#}"),
    }
    if let Some(path) = &s.json {
        report::write_json(path, &records).unwrap();
        println!("wrote {}", path.display());
    }
}

/// The median; of an even number of values, the mean of the middle two (with two runs, not the better one).
fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n.is_multiple_of(2) && n > 0 {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    } else {
        v[n / 2]
    }
}

fn mb(bytes: u64) -> f64 {
    bytes as f64 / 1e6
}

async fn run(s: &Settings, env: &Env<'_>, systems: &[System]) -> Vec<Record> {
    let mut records = Vec::new();
    let mut max_rate: Vec<(System, f64)> = Vec::new();
    let record = |workload, system: System| Record {
        workload,
        system: system.name(),
        msgs_per_s: None,
        size: s.size,
        delivery: None,
        ack: None,
        extra: Vec::new(),
    };

    if s.runs(Workload::W1) {
        println!(
            "\n== W1 closed loop: 1 publisher -> 1 subscriber, {} messages, runs interleaved ==",
            s.messages
        );
        #[derive(Clone, Default)]
        struct Runs {
            acked: Vec<f64>,
            delivered: Vec<f64>,
            produce: Vec<f64>,
            disk_ratio: Vec<f64>,
            disk: u64,
            messages: u64,
        }
        let mut per_system = vec![Runs::default(); systems.len()];
        let payload_of = |messages: u64| messages * s.size as u64;
        for run in 1..=s.runs {
            for (i, &sys) in systems.iter().enumerate() {
                let r = workloads::w1(sys, env, s, true).await;
                let d = r.delivered_per_s.unwrap();
                let capped = if r.messages < s.messages { " (time cap)" } else { "" };
                println!(
                    "  run {run}/{} {:<18} {} msgs{capped}: publish->ack {:>9.0} msgs/s   delivered {d:>9.0} msgs/s ({:.1} MB/s)   disk {:.1} MB",
                    s.runs,
                    sys.name(),
                    r.messages,
                    r.acked_per_s,
                    d * s.size as f64 / 1e6,
                    mb(r.disk_bytes)
                );
                let p = &mut per_system[i];
                p.acked.push(r.acked_per_s);
                p.delivered.push(d);
                p.disk_ratio.push(r.disk_bytes as f64 / payload_of(r.messages) as f64);
                if r.messages >= p.messages {
                    (p.disk, p.messages) = (r.disk_bytes, r.messages);
                }
            }
        }
        println!("  produce-only (no subscriber):");
        for run in 1..=s.runs {
            for (i, &sys) in systems.iter().enumerate() {
                let r = workloads::w1(sys, env, s, false).await;
                let capped = if r.messages < s.messages { " (time cap)" } else { "" };
                println!(
                    "  run {run}/{} {:<18} {} msgs{capped}: publish->ack {:>9.0} msgs/s ({:.1} MB/s)",
                    s.runs,
                    sys.name(),
                    r.messages,
                    r.acked_per_s,
                    r.acked_per_s * s.size as f64 / 1e6
                );
                per_system[i].produce.push(r.acked_per_s);
            }
        }
        for (i, &sys) in systems.iter().enumerate() {
            let p = per_system[i].clone();
            let (a, d, prod) = (median(p.acked), median(p.delivered), median(p.produce));
            let ratio = median(p.disk_ratio);
            max_rate.push((sys, prod));
            println!(
                "W1 {:<18} median: delivered {d:.0} msgs/s ({:.1} MB/s), publish->ack {a:.0} msgs/s, produce-only {prod:.0} msgs/s; disk {ratio:.2}x payload ({:.1} MB for {:.1} MB)",
                sys.name(),
                d * s.size as f64 / 1e6,
                mb(p.disk),
                mb(payload_of(p.messages))
            );
            let mut r = record("W1", sys);
            r.msgs_per_s = Some(d);
            r.extra = vec![
                ("ack_msgs_per_s", a),
                ("produce_msgs_per_s", prod),
                ("disk_bytes", p.disk as f64),
                ("payload_bytes", payload_of(p.messages) as f64),
                ("disk_ratio", ratio),
                ("messages", p.messages as f64),
                ("runs", s.runs as f64),
                ("window", s.window as f64),
            ];
            records.push(r);
        }
    }

    // An open-loop rate above what a system can sustain only measures its queue growing: W2 and W4 skip
    // such a system (known from W1's produce-only throughput) and say so.
    let sustains = |sys: System| match max_rate.iter().find(|(m, _)| *m == sys) {
        Some((_, rate)) if *rate < 1.2 * s.rate as f64 => {
            println!(
                "  {:<18} not run: {} msgs/s is above its W1 produce-only max of {rate:.0} msgs/s",
                sys.name(),
                s.rate
            );
            false
        }
        _ => true,
    };

    if s.runs(Workload::W2) {
        println!("\n== W2 open loop: {} msgs/s, 1 s warm-up + {} s measured ==", s.rate, s.seconds);
        for &sys in systems.iter().filter(|sys| sustains(**sys)) {
            let l = workloads::w2(sys, env, s).await;
            let (ack, delivery) = (Summary::of(&l.ack), Summary::of(&l.delivery));
            println!("  {:<18} achieved {:.0} msgs/s", sys.name(), l.achieved);
            println!("  {:<18} publish->ack      {}", "", ack.line());
            println!("  {:<18} publish->delivery {}", "", delivery.line());
            println!(
                "  {:<18} (of which pacing lag, intended -> send call: {})",
                "",
                Summary::of(&l.lag).line()
            );
            let mut r = record("W2", sys);
            r.msgs_per_s = Some(l.achieved);
            r.ack = Some(ack);
            r.delivery = Some(delivery);
            r.extra = vec![("rate", s.rate as f64), ("seconds", s.seconds as f64)];
            records.push(r);
        }
    }

    if s.runs(Workload::W3) {
        println!(
            "\n== W3: 1 publisher -> {} subscribers (own connections), {} messages ==",
            s.subscribers, s.w3_messages
        );
        for &sys in systems {
            let w = workloads::w3(sys, env, s).await;
            println!(
                "  {:<18} {} msgs{}: deliveries {:>10.0} /s ({:.1} MB/s)   publish->ack {:>9.0} msgs/s",
                sys.name(),
                w.messages,
                if w.messages < s.w3_messages { " (time cap)" } else { "" },
                w.deliveries_per_s,
                w.deliveries_per_s * s.size as f64 / 1e6,
                w.published_per_s
            );
            let mut r = record("W3", sys);
            r.msgs_per_s = Some(w.deliveries_per_s);
            r.extra = vec![
                ("publish_msgs_per_s", w.published_per_s),
                ("subscribers", s.subscribers as f64),
                ("messages", w.messages as f64),
            ];
            records.push(r);
        }
    }

    if s.runs(Workload::W4) {
        println!(
            "\n== W4: W2 ({} msgs/s, {} s) without, then with {} idle subscribed connections; server RSS ==",
            s.rate, s.w4_seconds, s.idle
        );
        for &sys in systems.iter().filter(|sys| sustains(**sys)) {
            let w = workloads::w4(sys, env, s).await;
            let (base, idle) = (Summary::of(&w.baseline.delivery), Summary::of(&w.with_idle.delivery));
            let rss = |m: system::Memory| mb(m.rss_bytes);
            println!(
                "  {:<18} RSS: after start {:.1} MB, after W2 {:.1} MB, with {} idle conns {:.1} MB (opened in {:.1} s), after W2 with them {:.1} MB, peak {:.1} MB",
                sys.name(),
                rss(w.after_start),
                rss(w.after_baseline),
                w.idle,
                rss(w.with_idle_connected),
                w.connect_time.as_secs_f64(),
                rss(w.after_with_idle),
                mb(w.after_with_idle.peak_rss_bytes)
            );
            println!("  {:<18} without idle: publish->delivery {}", "", base.line());
            println!("  {:<18} with idle:    publish->delivery {}", "", idle.line());
            println!(
                "  {:<18} p99 with/without idle: {:.2}x; publish->ack p99 {} -> {} µs",
                "",
                idle.p99 as f64 / base.p99.max(1) as f64,
                Summary::of(&w.baseline.ack).p99,
                Summary::of(&w.with_idle.ack).p99
            );
            let mut r = record("W4", sys);
            r.msgs_per_s = Some(w.with_idle.achieved);
            r.delivery = Some(idle);
            r.ack = Some(Summary::of(&w.with_idle.ack));
            r.extra = vec![
                ("idle_connections", w.idle as f64),
                ("baseline_p50_us", base.p50 as f64),
                ("baseline_p99_us", base.p99 as f64),
                ("baseline_p999_us", base.p999 as f64),
                ("p99_ratio", idle.p99 as f64 / base.p99.max(1) as f64),
                ("rss_after_start_mb", rss(w.after_start)),
                ("rss_without_idle_mb", rss(w.after_baseline)),
                ("rss_with_idle_mb", rss(w.with_idle_connected).max(rss(w.after_with_idle))),
                ("peak_rss_mb", mb(w.after_with_idle.peak_rss_bytes)),
                ("connect_seconds", w.connect_time.as_secs_f64()),
            ];
            records.push(r);
        }
    }

    if s.runs(Workload::W5) {
        println!(
            "\n== W5: restart of a server holding {} messages{} ==",
            s.restart_messages,
            if s.quick { " (--quick: fewer than the 10 million of a full run)" } else { "" }
        );
        // JetStream's fsync policy does not change what is on disk, only when: W5 runs it once, with its
        // default (filling with `sync_interval: always` would take minutes for the same restart).
        for &sys in systems.iter().filter(|sys| **sys != System::Nats(nats::Fsync::Always)) {
            let w = workloads::w5(sys, env, s).await;
            println!(
                "  {:<18} filled at {:.0} msgs/s, {:.1} MB on disk; restart: listening after {:.0} ms, served a subscribe + publish after {:.0} ms",
                sys.name(),
                w.fill_per_s,
                mb(w.disk_bytes),
                w.restart.listening.as_secs_f64() * 1e3,
                w.restart.served.as_secs_f64() * 1e3
            );
            let mut r = record("W5", sys);
            r.extra = vec![
                ("messages", w.messages as f64),
                ("restart_listening_ms", w.restart.listening.as_secs_f64() * 1e3),
                ("restart_served_ms", w.restart.served.as_secs_f64() * 1e3),
                ("fill_msgs_per_s", w.fill_per_s),
                ("disk_bytes", w.disk_bytes as f64),
            ];
            records.push(r);
        }
    }
    records
}

fn cores() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0)
}

fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .unwrap_or("unknown CPU")
        .trim()
        .to_string();
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_gib = meminfo
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kib| kib.parse::<f64>().ok())
        .map(|kib| kib / 1024.0 / 1024.0)
        .unwrap_or(0.0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!(
        "{cpu}, {} logical cores, {mem_gib:.0} GiB, Linux {}, temp dir {}",
        cores(),
        kernel.trim(),
        std::env::temp_dir().display()
    )
}
