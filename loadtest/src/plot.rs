//! Pictures of runs (`--plot`, `compare --plot`): one SVG with three panels that read without
//! the table — throughput over time (with the offered rate when there is one), p50 and p99
//! latency over time, and the latency distribution on the usual "nines" axis. Several runs
//! share the panels, one colour each, named in the legends.

use crate::report::{Report, TimeBin};
use plotters::coord::types::RangedCoordf64;
use plotters::coord::Shift;
use plotters::element::DashedPathElement;
use plotters::prelude::*;
use std::path::Path;

/// Drawing failed (usually: the file could not be written).
#[derive(Debug, thiserror::Error)]
#[error("drawing {path}: {message}")]
pub struct PlotError {
    path: String,
    message: String,
}

/// One run in a picture.
pub struct Run<'a> {
    /// Its name in the legends.
    pub label: String,
    /// What it measured.
    pub report: &'a Report,
}

/// Colour-blind-safe pair first (blue, orange), then more for more runs.
const COLOURS: [RGBColor; 4] = [
    RGBColor(0, 114, 178),
    RGBColor(230, 159, 0),
    RGBColor(0, 158, 115),
    RGBColor(204, 121, 167),
];

/// Latency axes start here: nothing on loopback is faster than 10 µs.
const MIN_MS: f64 = 0.01;

/// Draws `runs` into the SVG file `path` under `title`.
pub fn draw(runs: &[Run], title: &str, path: &Path) -> Result<(), PlotError> {
    let err = |e: &dyn std::fmt::Display| PlotError {
        path: path.display().to_string(),
        message: e.to_string(),
    };
    let root = SVGBackend::new(path, (1100, 1250)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let root = root
        .titled(title, ("sans-serif", 22))
        .map_err(|e| err(&e))?;
    let panels = root.split_evenly((3, 1));
    throughput(&panels[0], runs).map_err(|e| err(&e))?;
    latency_over_time(&panels[1], runs).map_err(|e| err(&e))?;
    distribution(&panels[2], runs).map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))?;
    Ok(())
}

type Area<'a> = DrawingArea<SVGBackend<'a>, Shift>;
type DrawResult = Result<(), DrawingAreaErrorKind<std::io::Error>>;

fn colour(i: usize) -> RGBColor {
    COLOURS[i % COLOURS.len()]
}

fn longest(runs: &[Run]) -> f64 {
    runs.iter()
        .map(|r| r.report.duration_seconds)
        .fold(1.0, f64::max)
}

/// A point per bin, at the bin's middle.
fn mid(b: &TimeBin) -> f64 {
    b.t + b.seconds / 2.0
}

/// Requests/s answered (solid) and offered (dashed), per second.
fn throughput(area: &Area, runs: &[Run]) -> DrawResult {
    let top = runs
        .iter()
        .flat_map(|r| r.report.timeline.iter())
        .map(|b| {
            b.responses_per_second
                .max(b.offered_per_second.unwrap_or(0.0))
        })
        .fold(1.0, f64::max)
        * 1.1;
    let mut chart = ChartBuilder::on(area)
        .caption("Throughput", ("sans-serif", 18))
        .margin(12)
        .margin_right(40)
        .x_label_area_size(40)
        .y_label_area_size(80)
        .build_cartesian_2d(0.0..longest(runs), 0.0..top)?;
    chart
        .configure_mesh()
        .x_desc("time since start (s)")
        .x_label_formatter(&|v| format!("{v:.0}"))
        .y_desc("requests/s")
        .y_label_formatter(&|v| thousands(*v))
        .draw()?;
    for (i, r) in runs.iter().enumerate() {
        let c = colour(i);
        let tl = &r.report.timeline;
        chart
            .draw_series(LineSeries::new(
                tl.iter().map(|b| (mid(b), b.responses_per_second)),
                c.stroke_width(2),
            ))?
            .label(format!("{}: answered", r.label))
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], c.stroke_width(2)));
        if tl.iter().any(|b| b.offered_per_second.is_some()) {
            chart
                .draw_series(DashedLineSeries::new(
                    tl.iter()
                        .filter_map(|b| b.offered_per_second.map(|o| (mid(b), o))),
                    6,
                    4,
                    c.stroke_width(1),
                ))?
                .label(format!("{}: offered", r.label))
                .legend(move |(x, y)| {
                    DashedPathElement::new([(x, y), (x + 20, y)], 4, 3, c.stroke_width(1))
                });
        }
        knee_marker(&mut chart, r, i, top)?;
    }
    legend(&mut chart, SeriesLabelPosition::UpperLeft)
}

/// p50 (thin) and p99 (thick) of the requests due in each second, log scale.
fn latency_over_time(area: &Area, runs: &[Run]) -> DrawResult {
    let values = runs
        .iter()
        .flat_map(|r| r.report.timeline.iter())
        .flat_map(|b| [b.p50_us, b.p99_us])
        .flatten()
        .map(|us| us as f64 / 1000.0);
    let (lo, hi) = bounds(values);
    let mut chart = ChartBuilder::on(area)
        .caption(
            "Latency over time (by intended send time)",
            ("sans-serif", 18),
        )
        .margin(12)
        .margin_right(40)
        .x_label_area_size(40)
        .y_label_area_size(80)
        .build_cartesian_2d(0.0..longest(runs), (lo..hi).log_scale())?;
    chart
        .configure_mesh()
        .x_desc("time since start (s)")
        .x_label_formatter(&|v| format!("{v:.0}"))
        .y_desc("latency (ms, log scale)")
        .y_label_formatter(&|v| ms(*v))
        .draw()?;
    for (i, r) in runs.iter().enumerate() {
        let c = colour(i);
        for (name, width, pick) in [
            (
                "p99",
                3,
                (|b: &TimeBin| b.p99_us) as fn(&TimeBin) -> Option<u64>,
            ),
            ("p50", 1, |b: &TimeBin| b.p50_us),
        ] {
            chart
                .draw_series(LineSeries::new(
                    r.report
                        .timeline
                        .iter()
                        .filter_map(|b| pick(b).map(|us| (mid(b), (us as f64 / 1000.0).max(lo)))),
                    c.stroke_width(width),
                ))?
                .label(format!("{}: {name}", r.label))
                .legend(move |(x, y)| {
                    PathElement::new([(x, y), (x + 20, y)], c.stroke_width(width))
                });
        }
        knee_marker(&mut chart, r, i, hi)?;
    }
    legend(&mut chart, SeriesLabelPosition::UpperLeft)
}

/// Latency at each percentile, the x axis stretched towards 100 % (log of 1 / (1 - q)), as
/// HdrHistogram's plots draw it.
fn distribution(area: &Area, runs: &[Run]) -> DrawResult {
    let nines = |q: f64| (1.0 / (1.0 - q)).log10();
    let points: Vec<Vec<(f64, f64)>> = runs
        .iter()
        .map(|r| {
            r.report
                .spectrum
                .iter()
                .filter(|p| p.quantile < 1.0)
                .map(|p| (nines(p.quantile), (p.value_us as f64 / 1000.0).max(MIN_MS)))
                .collect()
        })
        .collect();
    let right = points
        .iter()
        .flatten()
        .map(|p| p.0)
        .fold(2.0, f64::max)
        .ceil();
    let (lo, hi) = bounds(points.iter().flatten().map(|p| p.1));
    let mut chart = ChartBuilder::on(area)
        .caption("Latency distribution (whole run)", ("sans-serif", 18))
        .margin(12)
        .margin_right(40)
        .x_label_area_size(40)
        .y_label_area_size(80)
        .build_cartesian_2d(0.0..right, (lo..hi).log_scale())?;
    chart
        .configure_mesh()
        .x_desc("percentile")
        .y_desc("latency (ms, log scale)")
        .x_labels(right as usize + 1)
        .x_label_formatter(&|v| percentile(*v))
        .y_label_formatter(&|v| ms(*v))
        .draw()?;
    for (i, (r, pts)) in runs.iter().zip(points).enumerate() {
        let c = colour(i);
        let max = r.report.latency_us.as_ref().map_or(0, |l| l.max);
        chart
            .draw_series(LineSeries::new(pts, c.stroke_width(2)))?
            .label(format!("{} (max {})", r.label, ms(max as f64 / 1000.0)))
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], c.stroke_width(2)));
    }
    legend(&mut chart, SeriesLabelPosition::UpperLeft)
}

/// A vertical dashed line where a ramp's knee is, labelled with the offered rate there.
fn knee_marker<Y: Ranged<ValueType = f64>>(
    chart: &mut ChartContext<SVGBackend, Cartesian2d<RangedCoordf64, Y>>,
    r: &Run,
    i: usize,
    top: f64,
) -> DrawResult {
    let Some(k) = r.report.ramp.as_ref().and_then(|r| r.knee.as_ref()) else {
        return Ok(());
    };
    let c = colour(i);
    let bottom = chart.y_range().start;
    chart
        .draw_series(DashedLineSeries::new(
            [(k.at_seconds, bottom), (k.at_seconds, top)],
            3,
            3,
            c.stroke_width(2),
        ))?
        .label(format!(
            "{}: knee at {} req/s ({})",
            r.label,
            thousands(k.rate),
            k.reason
        ))
        .legend(move |(x, y)| {
            DashedPathElement::new([(x + 10, y - 6), (x + 10, y + 6)], 3, 3, c.stroke_width(2))
        });
    Ok(())
}

fn legend<'a, Y: Ranged>(
    chart: &mut ChartContext<'a, SVGBackend<'a>, Cartesian2d<RangedCoordf64, Y>>,
    at: SeriesLabelPosition,
) -> DrawResult {
    chart
        .configure_series_labels()
        .position(at)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.4))
        .label_font(("sans-serif", 13))
        .draw()
}

/// A log axis from a bit under the smallest value to a bit over the largest.
fn bounds(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = values.fold((f64::MAX, 0.0f64), |(lo, hi), v| (lo.min(v), hi.max(v)));
    if hi <= 0.0 {
        return (MIN_MS, 1.0);
    }
    ((lo / 1.5).max(MIN_MS), (hi * 1.5).max(lo * 10.0))
}

fn ms(v: f64) -> String {
    if v >= 1000.0 {
        format!("{:.1} s", v / 1000.0)
    } else if v >= 1.0 {
        format!("{v:.0} ms")
    } else {
        format!("{v:.2} ms")
    }
}

/// `3` (nines) → `99.9%`.
fn percentile(nines: f64) -> String {
    let q = 100.0 * (1.0 - 10f64.powf(-nines));
    let digits = (nines.round() as usize).saturating_sub(2);
    format!("{q:.digits$}%")
}

fn thousands(v: f64) -> String {
    let n = v.round() as u64;
    let s = n.to_string();
    let mut out = String::new();
    for (i, ch) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn axis_labels() {
        assert_eq!(percentile(0.0), "0%");
        assert_eq!(percentile(1.0), "90%");
        assert_eq!(percentile(2.0), "99%");
        assert_eq!(percentile(3.0), "99.9%");
        assert_eq!(percentile(5.0), "99.999%");
        assert_eq!(thousands(1234567.0), "1,234,567");
        assert_eq!(thousands(999.0), "999");
        assert_eq!(ms(0.25), "0.25 ms");
        assert_eq!(ms(12.0), "12 ms");
        assert_eq!(ms(2500.0), "2.5 s");
    }
}
