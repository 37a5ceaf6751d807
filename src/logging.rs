//! Logging setup: `tracing` to stderr, JSON when not on a terminal (or as configured), colour
//! only where a human reads it.

use crate::config::LogFormat;
use std::io::IsTerminal;
use std::sync::OnceLock;
use tracing_subscriber::EnvFilter;

type Reload = Box<dyn Fn(EnvFilter) -> Result<(), String> + Send + Sync>;

/// Replaces the installed filter (set by [`init`]).
static RELOAD: OnceLock<Reload> = OnceLock::new();

/// Installs the global subscriber. `RUST_LOG` wins over `level`; an unparsable level falls
/// back to `info`.
pub fn init(format: LogFormat, level: &str) {
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
        let b = b.json().flatten_event(true).with_filter_reloading();
        let h = b.reload_handle();
        let _ = RELOAD.set(Box::new(move |f| h.reload(f).map_err(|e| e.to_string())));
        b.init();
    } else {
        let b = b
            .with_ansi(use_color(&std::io::stderr()))
            .with_filter_reloading();
        let h = b.reload_handle();
        let _ = RELOAD.set(Box::new(move |f| h.reload(f).map_err(|e| e.to_string())));
        b.init();
    }
}

/// Applies a new `log.level` (SIGHUP). `RUST_LOG`, when set, keeps winning.
pub fn set_level(level: &str) -> Result<(), String> {
    if std::env::var_os("RUST_LOG").is_some() {
        return Err("RUST_LOG is set and overrides log.level".into());
    }
    let f = EnvFilter::try_new(level).map_err(|e| e.to_string())?;
    match RELOAD.get() {
        Some(reload) => reload(f),
        None => Err("logging was not set up by this process".into()),
    }
}

/// Colour only on a terminal, and not with NO_COLOR or TERM=dumb.
pub fn use_color(stream: &impl IsTerminal) -> bool {
    stream.is_terminal()
        && std::env::var_os("NO_COLOR").is_none()
        && std::env::var("TERM").map_or(true, |t| t != "dumb")
}
