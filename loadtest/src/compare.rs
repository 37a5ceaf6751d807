//! `beacon-loadgen compare A.json B.json [--plot out.svg]`: two (or more) saved `--json` reports
//! side by side — a before/after, or nginx against the collector — as a table with ratios to the
//! first, and the same picture `--plot` draws for one run.

use crate::plot::{self, Run};
use crate::report::Report;
use std::fmt::Write as _;
use std::path::PathBuf;

/// Options of `beacon-loadgen compare`.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "beacon-loadgen compare",
    about = "Compare saved `beacon-loadgen --json` reports: a table, and a picture with --plot"
)]
pub struct CompareOpts {
    /// Reports written by `beacon-loadgen --json` (the first is the baseline of the ratios).
    #[arg(required = true, num_args = 2..)]
    pub reports: Vec<PathBuf>,
    /// A name per report for the table and legends, in order (default: the file names).
    #[arg(long = "label")]
    pub labels: Vec<String>,
    /// Draw them into this SVG file.
    #[arg(long)]
    pub plot: Option<PathBuf>,
    /// The picture's title.
    #[arg(long, default_value = "beacon-loadgen: comparison")]
    pub title: String,
}

/// A report that could not be read.
#[derive(Debug, thiserror::Error)]
pub enum CompareError {
    /// The file could not be read.
    #[error("reading {0}: {1}")]
    Read(String, std::io::Error),
    /// Not a report of this version.
    #[error("{0} is not a beacon-loadgen --json report of schema version 2 (rerun the test with this version): {1}")]
    Parse(String, serde_json::Error),
    /// Labels do not match the reports.
    #[error("{0} labels for {1} reports: give one per report, or none")]
    Labels(usize, usize),
    /// Drawing failed.
    #[error(transparent)]
    Plot(#[from] plot::PlotError),
}

/// Reads the reports, draws the picture when asked, and returns the table.
pub fn run(opts: &CompareOpts) -> Result<String, CompareError> {
    if !opts.labels.is_empty() && opts.labels.len() != opts.reports.len() {
        return Err(CompareError::Labels(opts.labels.len(), opts.reports.len()));
    }
    let mut reports = Vec::new();
    for p in &opts.reports {
        let name = p.display().to_string();
        let text = std::fs::read_to_string(p).map_err(|e| CompareError::Read(name.clone(), e))?;
        let r: Report = serde_json::from_str(&text).map_err(|e| CompareError::Parse(name, e))?;
        reports.push(r);
    }
    let labels: Vec<String> = if opts.labels.is_empty() {
        opts.reports
            .iter()
            .map(|p| {
                p.file_stem()
                    .map_or_else(|| p.display().to_string(), |s| s.to_string_lossy().into())
            })
            .collect()
    } else {
        opts.labels.clone()
    };
    if let Some(path) = &opts.plot {
        let runs: Vec<Run> = labels
            .iter()
            .zip(&reports)
            .map(|(l, r)| Run {
                label: l.clone(),
                report: r,
            })
            .collect();
        plot::draw(&runs, &opts.title, path)?;
    }
    Ok(table(&labels, &reports))
}

/// A figure of a report, when it has one.
type Figure = fn(&Report) -> Option<f64>;

/// One row per figure, one column per report, and the ratio of each to the first.
fn table(labels: &[String], reports: &[Report]) -> String {
    let figures: [(&str, Figure); 7] = [
        ("requests/s", |r| Some(r.requests_per_second)),
        ("p50 ms", |r| {
            r.latency_us.as_ref().map(|l| l.p50 as f64 / 1e3)
        }),
        ("p99 ms", |r| {
            r.latency_us.as_ref().map(|l| l.p99 as f64 / 1e3)
        }),
        ("p99.9 ms", |r| {
            r.latency_us.as_ref().map(|l| l.p999 as f64 / 1e3)
        }),
        ("max ms", |r| {
            r.latency_us.as_ref().map(|l| l.max as f64 / 1e3)
        }),
        ("errors", |r| Some(r.errors_total as f64)),
        ("knee req/s", |r| {
            r.ramp
                .as_ref()
                .and_then(|k| k.knee.as_ref())
                .map(|k| k.rate)
        }),
    ];
    let w = labels.iter().map(String::len).max().unwrap_or(0).max(12);
    let mut o = String::new();
    let _ = write!(o, "{:<12}", "");
    for (i, l) in labels.iter().enumerate() {
        let _ = write!(o, " {l:>w$}");
        if i > 0 {
            let _ = write!(o, " {:>8}", "ratio");
        }
    }
    o.push('\n');
    for (name, f) in figures {
        let values: Vec<Option<f64>> = reports.iter().map(f).collect();
        if values.iter().all(Option::is_none) {
            continue;
        }
        let _ = write!(o, "{name:<12}");
        for (i, v) in values.iter().enumerate() {
            let cell = v.map_or("-".to_string(), |v| {
                if v >= 100.0 || v.fract() == 0.0 {
                    format!("{v:.0}")
                } else {
                    format!("{v:.3}")
                }
            });
            let _ = write!(o, " {cell:>w$}");
            if i > 0 {
                let ratio = match (values[0], v) {
                    (Some(a), Some(b)) if a > 0.0 && b / a < 0.1 => format!("{:.4}x", b / a),
                    (Some(a), Some(b)) if a > 0.0 => format!("{:.2}x", b / a),
                    _ => "-".into(),
                };
                let _ = write!(o, " {ratio:>8}");
            }
        }
        o.push('\n');
    }
    o
}
