//! `beacon-loadgen`: parses options, runs the test with a progress line on a terminal, prints
//! the report (also after Ctrl-C) and writes the files asked for. `beacon-loadgen compare ...`
//! compares saved reports. Exit codes: 0 ok, 1 the run had errors, 2 bad usage/setup.

use beacon_loadgen::compare::{self, CompareOpts};
use beacon_loadgen::plot::{self, Run};
use beacon_loadgen::{run, Live, Opts};
use clap::Parser;
use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn main() -> std::process::ExitCode {
    // A URL never is the word `compare`: the subcommand needs no change to the run's options.
    if std::env::args().nth(1).as_deref() == Some("compare") {
        let opts = CompareOpts::parse_from(std::env::args().skip(1));
        return match compare::run(&opts) {
            Ok(table) => {
                print!("{table}");
                std::process::ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("beacon-loadgen compare: {e}");
                std::process::ExitCode::from(2)
            }
        };
    }
    let opts = Opts::parse();
    let stop = Arc::new(AtomicBool::new(false));
    let live = Arc::new(Live::default());

    // Ctrl-C stops the test; the report of what ran is still printed.
    let s = stop.clone();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("signal runtime");
        rt.block_on(async {
            let _ = tokio::signal::ctrl_c().await;
            s.store(true, Ordering::Relaxed);
        });
    });

    // A progress line on a terminal only.
    if std::io::stderr().is_terminal() && !opts.json {
        let (s, l, total) = (stop.clone(), live.clone(), opts.run_length());
        std::thread::spawn(move || {
            let start = Instant::now();
            let mut last = 0;
            while !s.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_secs(1));
                let n = l.requests.load(Ordering::Relaxed);
                eprint!(
                    "\r  [{:>4.0}s/{:.0}s] {:>9} req/s  {} errors  {} connected   ",
                    start.elapsed().as_secs_f64(),
                    total.as_secs_f64(),
                    n - last,
                    l.errors.load(Ordering::Relaxed),
                    l.connected.load(Ordering::Relaxed)
                );
                last = n;
            }
            eprint!("\r{:80}\r", "");
        });
    }

    match run(&opts, stop, live) {
        Ok(report) => {
            if let Some(p) = &opts.hgrm {
                if let Err(e) = std::fs::write(p, report.hgrm()) {
                    eprintln!("beacon-loadgen: writing {}: {e}", p.display());
                    return std::process::ExitCode::from(2);
                }
            }
            if let Some(p) = &opts.plot {
                let run = Run {
                    label: opts.url.trim_start_matches("http://").to_string(),
                    report: &report,
                };
                let title = format!("beacon-loadgen: {}", report.describe());
                if let Err(e) = plot::draw(&[run], &title, p) {
                    eprintln!("beacon-loadgen: {e}");
                    return std::process::ExitCode::from(2);
                }
            }
            if opts.json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&report).expect("report serializes")
                );
            } else {
                print!("{}", report.render(opts.latency));
            }
            std::process::ExitCode::from(u8::from(report.errors_total > 0))
        }
        Err(e) => {
            eprintln!("beacon-loadgen: {e}");
            std::process::ExitCode::from(2)
        }
    }
}
