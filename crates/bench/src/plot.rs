//! `--plot FILE.svg`: throughput and ack latency per mode (and peer), side by side.

use std::path::Path;

use anyhow::anyhow;
use plotters::coord::ranged1d::SegmentValue;
use plotters::prelude::*;

use super::ModeResult;

/// The ack-latency bars of one mode, with their colours.
const QUANTILES: [(&str, RGBColor); 3] = [
    ("ack p50", RGBColor(90, 150, 210)),
    ("ack p99", RGBColor(230, 150, 60)),
    ("ack p99.9", RGBColor(200, 70, 70)),
];

pub(super) fn draw(path: &Path, workload: &str, results: &[ModeResult]) -> anyhow::Result<()> {
    let root = SVGBackend::new(path, (1200, 520)).into_drawing_area();
    root.fill(&WHITE).map_err(e)?;
    let root = root
        .titled(&format!("sidelog-bench: {workload}"), ("sans-serif", 18))
        .map_err(e)?;
    let (left, right) = root.split_horizontally(520);
    throughput(&left, results)?;
    latency(&right, results)?;
    root.present().map_err(e)?;
    Ok(())
}

type Area<'a> = DrawingArea<SVGBackend<'a>, plotters::coord::Shift>;

fn e(e: DrawingAreaErrorKind<std::io::Error>) -> anyhow::Error {
    anyhow!("{e}")
}

fn name(results: &[ModeResult], i: usize) -> String {
    results.get(i).map(|r| r.mode.clone()).unwrap_or_default()
}

/// Throughput, one bar per mode.
fn throughput(area: &Area<'_>, results: &[ModeResult]) -> anyhow::Result<()> {
    let n = results.len();
    let top = results.iter().map(|r| r.msgs_per_s).fold(1.0, f64::max) * 1.15;
    let mut chart = ChartBuilder::on(area)
        .caption("throughput", ("sans-serif", 16))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(70)
        .build_cartesian_2d((0..n).into_segmented(), 0.0..top)
        .map_err(e)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .y_desc("messages/s")
        .y_label_formatter(&|v| format!("{v:.0}"))
        .x_label_formatter(&|v| match v {
            SegmentValue::CenterOf(i) => name(results, *i),
            _ => String::new(),
        })
        .draw()
        .map_err(e)?;
    chart
        .draw_series(results.iter().enumerate().map(|(i, r)| {
            let mut bar = Rectangle::new(
                [
                    (SegmentValue::Exact(i), 0.0),
                    (SegmentValue::Exact(i + 1), r.msgs_per_s),
                ],
                RGBColor(90, 150, 210).filled(),
            );
            bar.set_margin(0, 0, 10, 10);
            bar
        }))
        .map_err(e)?;
    Ok(())
}

/// Ack latency, three bars per mode (log scale: p99.9 can be 100x p50), then a gap.
fn latency(area: &Area<'_>, results: &[ModeResult]) -> anyhow::Result<()> {
    let n = results.len();
    let slots = 4;
    let top = results
        .iter()
        .map(|r| r.ack_p999_us as f64)
        .fold(10.0, f64::max)
        * 20.0; // room above the bars for the legend
    let mut chart = ChartBuilder::on(area)
        .caption("ack latency", ("sans-serif", 16))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(70)
        .build_cartesian_2d((0..n * slots).into_segmented(), (1.0..top).log_scale())
        .map_err(e)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(n * slots)
        .y_desc("µs")
        .y_label_formatter(&|v| format!("{v:.0}"))
        .x_label_formatter(&|v| match v {
            SegmentValue::CenterOf(j) if j % slots == 1 => name(results, j / slots),
            _ => String::new(),
        })
        .draw()
        .map_err(e)?;
    for (q, (label, colour)) in QUANTILES.iter().enumerate() {
        chart
            .draw_series(results.iter().enumerate().map(|(i, r)| {
                let v = [r.ack_p50_us, r.ack_p99_us, r.ack_p999_us][q].max(1) as f64;
                let x = i * slots + q;
                let mut bar = Rectangle::new(
                    [
                        (SegmentValue::Exact(x), 1.0),
                        (SegmentValue::Exact(x + 1), v),
                    ],
                    colour.filled(),
                );
                bar.set_margin(0, 0, 1, 1);
                bar
            }))
            .map_err(e)?
            .label(*label)
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], colour.filled()));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(e)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::ModeResult;

    fn result(mode: &str, msgs_per_s: f64) -> ModeResult {
        ModeResult {
            mode: mode.into(),
            messages: 1000,
            msgs_per_s,
            sink_per_s: None,
            mib_per_s: 1.0,
            ack_p50_us: 100,
            ack_p99_us: 1000,
            ack_p999_us: 5000,
            e2e_p50_us: None,
            e2e_p99_us: None,
            records_per_commit: Some(20.0),
            fsyncs_per_1k: Some(50.0),
            bytes_per_msg: 1000.0,
            cpu_us_per_msg: None,
            peak_rss_bytes: None,
            journal_peak_bytes: None,
            journal_end_bytes: None,
            ratio_to_none: None,
            errors: 0,
        }
    }

    #[test]
    fn draws_every_mode() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bench.svg");
        let results = [
            result("none", 20000.0),
            result("hml", 10000.0),
            result("nats-always", 1200.0),
        ];
        super::draw(&path, "a workload", &results).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        assert!(svg.starts_with("<svg"));
        for label in ["none", "hml", "nats-always", "ack p99.9", "a workload"] {
            assert!(svg.contains(label), "{label} missing from the plot");
        }
        // One throughput bar and three latency bars per mode (plus the legend's three).
        assert!(svg.matches("<rect").count() >= 12 + 3);
    }
}
