//! What the bench reports: one [`Record`] per workload and system, printed as it is measured, compared
//! side by side (with ratios) and against the project's targets at the end, and written as JSON (an array
//! of flat objects with at least `workload`, `system`, `msgs_per_s`, `p50_us`, `p99_us`, `p999_us`; a
//! figure a workload does not measure is `null`). Latency percentiles are publish->delivery; the `ack_`
//! ones are publish->ack.

use hdrhistogram::Histogram;

/// Percentiles of one latency histogram, in microseconds.
#[derive(Clone, Copy)]
pub struct Summary {
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
    pub count: u64,
}

impl Summary {
    pub fn of(h: &Histogram<u64>) -> Summary {
        Summary {
            p50: h.value_at_quantile(0.5),
            p90: h.value_at_quantile(0.9),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
            count: h.len(),
        }
    }

    pub fn line(&self) -> String {
        format!(
            "p50 {} µs, p90 {} µs, p99 {} µs, p99.9 {} µs, max {} µs ({} samples)",
            self.p50, self.p90, self.p99, self.p999, self.max, self.count
        )
    }
}

/// One workload on one system.
pub struct Record {
    pub workload: &'static str,
    pub system: &'static str,
    pub msgs_per_s: Option<f64>,
    /// Payload bytes per message, for MB/s.
    pub size: usize,
    pub delivery: Option<Summary>,
    pub ack: Option<Summary>,
    /// Further figures, by JSON key.
    pub extra: Vec<(&'static str, f64)>,
}

impl Record {
    pub fn get(&self, key: &str) -> Option<f64> {
        match key {
            "msgs_per_s" => self.msgs_per_s,
            "p50_us" => self.delivery.map(|d| d.p50 as f64),
            "p90_us" => self.delivery.map(|d| d.p90 as f64),
            "p99_us" => self.delivery.map(|d| d.p99 as f64),
            "p999_us" => self.delivery.map(|d| d.p999 as f64),
            "ack_p50_us" => self.ack.map(|d| d.p50 as f64),
            "ack_p90_us" => self.ack.map(|d| d.p90 as f64),
            "ack_p99_us" => self.ack.map(|d| d.p99 as f64),
            "ack_p999_us" => self.ack.map(|d| d.p999 as f64),
            _ => self.extra.iter().find(|(k, _)| *k == key).map(|(_, v)| *v),
        }
    }

    fn json(&self) -> String {
        let num = |v: Option<f64>| match v {
            Some(v) if v.is_finite() => {
                if v.fract() == 0.0 || v.abs() >= 100.0 {
                    format!("{v:.0}")
                } else {
                    format!("{v:.3}")
                }
            }
            _ => "null".to_string(),
        };
        let lat = |s: Option<Summary>, f: fn(&Summary) -> u64| num(s.map(|s| f(&s) as f64));
        let mut fields = vec![
            format!("\"workload\":\"{}\"", self.workload),
            format!("\"system\":\"{}\"", self.system),
            format!("\"msgs_per_s\":{}", num(self.msgs_per_s)),
            format!("\"mb_per_s\":{}", num(self.msgs_per_s.map(|m| m * self.size as f64 / 1e6))),
            format!("\"size\":{}", self.size),
            format!("\"p50_us\":{}", lat(self.delivery, |s| s.p50)),
            format!("\"p90_us\":{}", lat(self.delivery, |s| s.p90)),
            format!("\"p99_us\":{}", lat(self.delivery, |s| s.p99)),
            format!("\"p999_us\":{}", lat(self.delivery, |s| s.p999)),
            format!("\"max_us\":{}", lat(self.delivery, |s| s.max)),
            format!("\"ack_p50_us\":{}", lat(self.ack, |s| s.p50)),
            format!("\"ack_p90_us\":{}", lat(self.ack, |s| s.p90)),
            format!("\"ack_p99_us\":{}", lat(self.ack, |s| s.p99)),
            format!("\"ack_p999_us\":{}", lat(self.ack, |s| s.p999)),
            format!("\"ack_max_us\":{}", lat(self.ack, |s| s.max)),
        ];
        fields.extend(self.extra.iter().map(|(k, v)| format!("\"{k}\":{}", num(Some(*v)))));
        format!("{{{}}}", fields.join(","))
    }
}

pub fn write_json(path: &std::path::Path, records: &[Record]) -> std::io::Result<()> {
    let body: Vec<String> = records.iter().map(Record::json).collect();
    std::fs::write(path, format!("[\n  {}\n]\n", body.join(",\n  ")))
}

/// A figure compared across systems and, for Sealpost, against its target.
struct Figure {
    workload: &'static str,
    key: &'static str,
    label: &'static str,
    /// The target, as (comparison, value) on Sealpost's figure.
    target: Option<(&'static str, f64)>,
}

const FIGURES: &[Figure] = &[
    Figure {
        workload: "W1",
        key: "msgs_per_s",
        label: "W1 delivered msgs/s",
        target: Some((">=", 250_000.0)),
    },
    Figure {
        workload: "W1",
        key: "ack_msgs_per_s",
        label: "W1 publish->ack msgs/s (with subscriber)",
        target: None,
    },
    Figure {
        workload: "W1",
        key: "produce_msgs_per_s",
        label: "W1 produce-only msgs/s",
        target: Some((">=", 300_000.0)),
    },
    Figure { workload: "W1", key: "disk_ratio", label: "W1 disk / payload bytes", target: Some(("<=", 1.3)) },
    Figure {
        workload: "W2",
        key: "p50_us",
        label: "W2 publish->delivery p50 µs",
        target: Some(("<=", 300.0)),
    },
    Figure {
        workload: "W2",
        key: "p99_us",
        label: "W2 publish->delivery p99 µs",
        target: Some(("<=", 1_000.0)),
    },
    Figure { workload: "W2", key: "p999_us", label: "W2 publish->delivery p99.9 µs", target: None },
    Figure { workload: "W2", key: "ack_p50_us", label: "W2 publish->ack p50 µs", target: None },
    Figure { workload: "W2", key: "ack_p99_us", label: "W2 publish->ack p99 µs", target: None },
    Figure {
        workload: "W3",
        key: "msgs_per_s",
        label: "W3 deliveries/s (10 subscribers)",
        target: Some((">=", 1_000_000.0)),
    },
    Figure {
        workload: "W4",
        key: "peak_rss_mb",
        label: "W4 server peak RSS MB",
        target: Some(("<=", 200.0)),
    },
    Figure {
        workload: "W4",
        key: "rss_with_idle_mb",
        label: "W4 server RSS MB with idle conns",
        target: None,
    },
    Figure { workload: "W4", key: "baseline_p99_us", label: "W4 p99 µs without idle conns", target: None },
    Figure { workload: "W4", key: "p99_us", label: "W4 p99 µs with idle conns", target: None },
    Figure {
        workload: "W4",
        key: "p99_ratio",
        label: "W4 p99 with / without idle",
        target: Some(("<=", 2.0)),
    },
    Figure {
        workload: "W5",
        key: "restart_served_ms",
        label: "W5 restart until served, ms",
        target: Some(("<=", 2_000.0)),
    },
    Figure {
        workload: "W5",
        key: "restart_listening_ms",
        label: "W5 restart until listening, ms",
        target: None,
    },
];

fn fmt(v: f64) -> String {
    if v >= 100.0 {
        let s = format!("{v:.0}");
        let mut out = String::new();
        for (i, c) in s.chars().enumerate() {
            if i > 0 && (s.len() - i) % 3 == 0 {
                out.push(',');
            }
            out.push(c);
        }
        out
    } else {
        format!("{v:.2}")
    }
}

/// The side-by-side table (one column per system, then `reference`'s ratio to each other system) and
/// Sealpost's targets, met or missed.
pub fn print_summary(records: &[Record], systems: &[&'static str], reference: &str) {
    let find = |w: &str, sys: &str| records.iter().find(|r| r.workload == w && r.system == sys);
    let others: Vec<&str> = systems.iter().copied().filter(|s| *s != reference).collect();
    // The single-node comparison keeps its short column names (`sealpost/default`).
    let ratio_label = |other: &str| match reference {
        "sealpost" => format!("sealpost/{}", other.trim_start_matches("nats-")),
        _ => format!("{reference}/{other}"),
    };
    let widths: Vec<usize> = others.iter().map(|o| (ratio_label(o).len() + 2).max(18)).collect();
    let column = systems.iter().map(|s| s.len() + 2).max().unwrap_or(0).max(14);
    println!();
    println!("== summary ({} systems, measured in this run) ==", systems.len());
    let mut header = format!("{:<44}", "figure");
    for s in systems {
        header.push_str(&format!("{s:>column$}"));
    }
    for (o, w) in others.iter().zip(&widths) {
        header.push_str(&format!("{:>w$}", ratio_label(o)));
    }
    println!("{header}");
    for f in FIGURES {
        let value = |sys: &str| find(f.workload, sys).and_then(|r| r.get(f.key));
        let values: Vec<Option<f64>> = systems.iter().map(|s| value(s)).collect();
        if values.iter().all(Option::is_none) {
            continue;
        }
        let mut line = format!("{:<44}", f.label);
        for v in &values {
            line.push_str(&format!("{:>column$}", v.map(fmt).unwrap_or_else(|| "-".into())));
        }
        for (o, w) in others.iter().zip(&widths) {
            let ratio = match (value(reference), value(o)) {
                (Some(a), Some(b)) if b.abs() > 0.0 => format!("{:.2}x", a / b),
                _ => "-".into(),
            };
            line.push_str(&format!("{ratio:>w$}"));
        }
        println!("{line}");
    }
    println!(
        "(ratios are {reference} / other; for msgs/s higher is better, for µs, MB, ms and disk lower is better)"
    );
    if systems.iter().any(|s| matches!(*s, "sealpost-jetstream" | "nats-r3")) {
        println!("(on the 3-node cluster, disk counts the run's streams on all three nodes: every replica)");
    }
    println!();
    println!("== Sealpost against its targets ==");
    for f in FIGURES {
        let Some((op, target)) = f.target else { continue };
        let Some(v) = find(f.workload, "sealpost").and_then(|r| r.get(f.key)) else { continue };
        let met = if op == ">=" { v >= target } else { v <= target };
        println!(
            "  {:<44} {:>14}  target {op} {:<10} {}",
            f.label,
            fmt(v),
            fmt(target),
            if met { "met" } else { "MISSED" }
        );
    }
    if let (Some(ours), Some(theirs)) = (
        find("W1", "sealpost").and_then(|r| r.msgs_per_s),
        find("W1", "nats-default").and_then(|r| r.msgs_per_s),
    ) {
        let ratio = ours / theirs;
        println!(
            "  {:<44} {:>14}  target >= 2.00x      {}",
            "W1 delivered vs JetStream default fsync",
            format!("{ratio:.2}x"),
            if ratio >= 2.0 { "met" } else { "MISSED" }
        );
    }
}
