//! SVG charts of a run, drawn with plotters' SVG backend: `throughput.svg` (W1 delivered, W1 produce-only,
//! W3 deliveries per second) and `latency.svg` (W2 percentiles, publish->delivery and publish->ack, on a
//! log scale), one bar per system in each group. Text is written as SVG `<text>` and sized by plotters'
//! built-in estimate (no `ttf` feature), so drawing needs no system fonts or fontconfig.

use std::path::{Path, PathBuf};

use plotters::coord::ranged1d::{AsRangedCoord, ValueFormatter};
use plotters::prelude::*;

use crate::report::Record;

const COLORS: [RGBColor; 4] = [
    RGBColor(0x1f, 0x77, 0xb4),
    RGBColor(0xff, 0x7f, 0x0e),
    RGBColor(0x2c, 0xa0, 0x2c),
    RGBColor(0x94, 0x67, 0xbd),
];

/// One bar per system in each group; a missing figure leaves a gap.
struct Bars<'a> {
    title: &'a str,
    y_desc: &'a str,
    groups: Vec<&'a str>,
    /// (system, one value per group)
    series: Vec<(&'a str, Vec<Option<f64>>)>,
}

impl Bars<'_> {
    fn max(&self) -> f64 {
        self.series.iter().flat_map(|(_, v)| v.iter().flatten()).copied().fold(0.0, f64::max)
    }
}

/// Writes the charts into `dir` and returns their paths.
pub fn draw(dir: &Path, records: &[Record], systems: &[&'static str]) -> anyhow::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir)?;
    let get = |w: &str, sys: &str, key: &str| {
        records.iter().find(|r| r.workload == w && r.system == sys).and_then(|r| r.get(key))
    };
    let mut written = Vec::new();

    let throughput = Bars {
        title: "Throughput, 1 KiB messages (higher is better)",
        y_desc: "messages per second",
        groups: vec!["W1 delivered", "W1 produce-only", "W3 deliveries (10 subs)"],
        series: systems
            .iter()
            .map(|s| {
                let v = vec![
                    get("W1", s, "msgs_per_s"),
                    get("W1", s, "produce_msgs_per_s"),
                    get("W3", s, "msgs_per_s"),
                ];
                (*s, v)
            })
            .collect(),
    };
    if throughput.max() > 0.0 {
        let path = dir.join("throughput.svg");
        // Headroom above the tallest bar for its value and the legend.
        let top = throughput.max() * 1.35;
        plot(&path, &throughput, 0f64..top)?;
        written.push(path);
    }

    let keys = [
        ("delivery p50", "p50_us"),
        ("delivery p90", "p90_us"),
        ("delivery p99", "p99_us"),
        ("delivery p99.9", "p999_us"),
        ("ack p50", "ack_p50_us"),
        ("ack p90", "ack_p90_us"),
        ("ack p99", "ack_p99_us"),
        ("ack p99.9", "ack_p999_us"),
    ];
    let latency = Bars {
        title: "W2 latency at 5,000 msgs/s from intended send time (lower is better)",
        y_desc: "microseconds (log scale)",
        groups: keys.iter().map(|(g, _)| *g).collect(),
        series: systems.iter().map(|s| (*s, keys.iter().map(|(_, k)| get("W2", s, k)).collect())).collect(),
    };
    if latency.max() > 0.0 {
        let path = dir.join("latency.svg");
        let top = latency.max() * 20.0;
        plot(&path, &latency, (10f64..top).log_scale())?;
        written.push(path);
    }
    Ok(written)
}

fn plot<Y>(path: &Path, bars: &Bars<'_>, y: Y) -> anyhow::Result<()>
where
    Y: AsRangedCoord<Value = f64>,
    Y::CoordDescType: ValueFormatter<f64>,
{
    let root = SVGBackend::new(path, (1000, 520)).into_drawing_area();
    root.fill(&WHITE)?;
    let n = bars.groups.len() as f64;
    let mut chart = ChartBuilder::on(&root)
        .caption(bars.title, ("sans-serif", 20))
        .margin(20)
        .x_label_area_size(50)
        .y_label_area_size(90)
        .build_cartesian_2d(0f64..n, y)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(0)
        .y_desc(bars.y_desc)
        .y_label_formatter(&|v| short(*v))
        .draw()?;
    let bottom = chart.y_range().start;
    let label = ("sans-serif", 14).into_font();
    for (i, group) in bars.groups.iter().enumerate() {
        let style = label.clone().color(&BLACK).pos(plotters::style::text_anchor::Pos::new(
            plotters::style::text_anchor::HPos::Center,
            plotters::style::text_anchor::VPos::Top,
        ));
        chart.draw_series(std::iter::once(
            EmptyElement::at((i as f64 + 0.5, bottom)) + Text::new(group.to_string(), (0, 8), style),
        ))?;
    }
    let width = 0.8 / bars.series.len() as f64;
    for (k, (system, values)) in bars.series.iter().enumerate() {
        let color = COLORS[k % COLORS.len()];
        let rects = values.iter().enumerate().filter_map(|(i, v)| {
            let x0 = i as f64 + 0.1 + k as f64 * width;
            v.map(|v| Rectangle::new([(x0, bottom), (x0 + width * 0.9, v.max(bottom))], color.filled()))
        });
        chart
            .draw_series(rects)?
            .label(if values.iter().all(Option::is_none) {
                format!("{system} (not run)")
            } else {
                system.to_string()
            })
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], color.filled()));
        let value_style =
            ("sans-serif", 11).into_font().color(&BLACK).pos(plotters::style::text_anchor::Pos::new(
                plotters::style::text_anchor::HPos::Center,
                plotters::style::text_anchor::VPos::Bottom,
            ));
        let texts = values.iter().enumerate().filter_map(|(i, v)| {
            let x = i as f64 + 0.1 + (k as f64 + 0.45) * width;
            v.map(|v| {
                EmptyElement::at((x, v.max(bottom))) + Text::new(short(v), (0, -3), value_style.clone())
            })
        });
        chart.draw_series(texts)?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}

/// 1234567 -> "1.23M", 45678 -> "45.7k", 12 -> "12".
fn short(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.2}M", v / 1e6)
    } else if v >= 1e4 {
        format!("{:.0}k", v / 1e3)
    } else if v >= 1e3 {
        format!("{:.1}k", v / 1e3)
    } else {
        format!("{v:.0}")
    }
}
