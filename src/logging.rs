//! Logging setup: `tracing` to stderr, JSON when not on a terminal (or as configured), colour
//! only where a human reads it.

use crate::config::LogFormat;
use std::io::IsTerminal;

/// Installs the global subscriber. `RUST_LOG` wins over `level`; an unparsable level falls
/// back to `info`.
pub fn init(format: LogFormat, level: &str) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let json = match format {
        LogFormat::Json => true,
        LogFormat::Pretty => false,
        LogFormat::Auto => !std::io::stderr().is_terminal(),
    };
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        b.json().flatten_event(true).init();
    } else {
        b.with_ansi(use_color(&std::io::stderr())).init();
    }
}

/// Colour only on a terminal, and not with NO_COLOR or TERM=dumb.
pub fn use_color(stream: &impl IsTerminal) -> bool {
    stream.is_terminal()
        && std::env::var_os("NO_COLOR").is_none()
        && std::env::var("TERM").map_or(true, |t| t != "dumb")
}
