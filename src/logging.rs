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
pub(crate) fn set_level(level: &str) -> Result<(), String> {
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

/// At most one log line per interval for an error that can repeat per request, per record or
/// per accept (disk full, EMFILE, a broker down); the line that is logged says how many were
/// left out since the one before. Shared freely: two atomics, no lock.
#[derive(Debug)]
pub(crate) struct Throttle {
    every_ms: u64,
    /// Milliseconds since [`epoch`] before which nothing more is logged.
    next_ms: std::sync::atomic::AtomicU64,
    suppressed: std::sync::atomic::AtomicU64,
}

/// The default interval: one line per 5 s per kind of error.
pub(crate) const THROTTLE_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

fn epoch() -> std::time::Instant {
    static EPOCH: OnceLock<std::time::Instant> = OnceLock::new();
    *EPOCH.get_or_init(std::time::Instant::now)
}

impl Throttle {
    /// One line per `every`.
    pub(crate) const fn new(every: std::time::Duration) -> Self {
        Self {
            every_ms: every.as_millis() as u64,
            next_ms: std::sync::atomic::AtomicU64::new(0),
            suppressed: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// `Some(left out since the last line)` when this occurrence may be logged, else `None`
    /// (and it is counted).
    pub(crate) fn allow(&self) -> Option<u64> {
        use std::sync::atomic::Ordering::Relaxed;
        let now = epoch().elapsed().as_millis() as u64;
        let next = self.next_ms.load(Relaxed);
        if now >= next
            && self
                .next_ms
                .compare_exchange(next, now + self.every_ms, Relaxed, Relaxed)
                .is_ok()
        {
            Some(self.suppressed.swap(0, Relaxed))
        } else {
            self.suppressed.fetch_add(1, Relaxed);
            None
        }
    }
}

impl Default for Throttle {
    fn default() -> Self {
        Self::new(THROTTLE_EVERY)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throttle_lets_one_through_per_interval_and_counts_the_rest() {
        let t = Throttle::new(std::time::Duration::from_millis(200));
        assert_eq!(t.allow(), Some(0));
        for _ in 0..9 {
            assert_eq!(t.allow(), None);
        }
        std::thread::sleep(std::time::Duration::from_millis(250));
        assert_eq!(t.allow(), Some(9), "the next line says what was left out");
        assert_eq!(t.allow(), None);
    }
}
