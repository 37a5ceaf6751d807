//! Fault points: places where a test makes a real component fail the way a bug would, to
//! prove the supervision around it (a dead forwarder fails `/healthz`, is restarted, and
//! nothing is lost).
//!
//! A point is armed for one spool directory, so tests running side by side in one process do
//! not hit each other's collectors, and fires once. Disarmed (always, outside such tests) a
//! point costs one relaxed atomic load; the forwarder checks it once per batch, never per
//! request.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

/// A place that can be made to fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Point {
    /// The forwarder panics before reading its next batch.
    ForwarderPanic,
    /// The next `fdatasync` of a group fails (`ack_after = "fsync"`), as on a failing disk.
    SpoolSyncFails,
}

static ANY: AtomicBool = AtomicBool::new(false);
static ARMED: Mutex<Vec<(Point, PathBuf)>> = Mutex::new(Vec::new());

/// Arms `point` once for the collector whose spool is in `spool_dir`.
#[doc(hidden)]
pub fn arm(point: Point, spool_dir: &Path) {
    ARMED
        .lock()
        .expect("not poisoned")
        .push((point, spool_dir.to_path_buf()));
    ANY.store(true, Ordering::Release);
}

/// True (once) when `point` is armed for `spool_dir`.
pub(crate) fn fires(point: Point, spool_dir: &Path) -> bool {
    if !ANY.load(Ordering::Relaxed) {
        return false;
    }
    let mut armed = ARMED.lock().expect("not poisoned");
    let Some(i) = armed
        .iter()
        .position(|(p, d)| *p == point && d == spool_dir)
    else {
        return false;
    };
    armed.swap_remove(i);
    ANY.store(!armed.is_empty(), Ordering::Release);
    true
}
