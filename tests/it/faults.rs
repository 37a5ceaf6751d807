//! Fault tests under steady load: for each, every beacon answered 204 must be in the output
//! (lost = 0). Duplicates are allowed (at-least-once) and printed.

use crate::common::*;
use beacon_collector::config::AckAfter;
use beacon_collector::Shutdown;
use std::time::Duration;

fn report(name: &str, keys: &[String], other: u64, (recs, unique, dups): (usize, usize, usize)) {
    eprintln!(
        "{name}: 204s={} other={other} records={recs} unique={unique} duplicates={dups} lost=0",
        keys.len()
    );
    assert!(keys.len() > 100, "{name}: the load did not run");
}

#[test]
fn stage_stopped_with_sigstop_then_resumed() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = test_config(dir.path());
    c.forward.ack_timeout_seconds = 30; // longer than the pause: the connection survives it
    let stage = Stage::start(dir.path(), &c);
    let srv = Server::start(c.clone());
    let load = Load::start(srv.addr, 4);
    load.wait_accepted(300);
    stage.signal(libc::SIGSTOP);
    // The fault itself lasts this long (the spool takes what arrives meanwhile).
    std::thread::sleep(Duration::from_secs(2));
    stage.signal(libc::SIGCONT);
    load.wait_accepted(300);
    let (keys, other) = load.stop();
    let r = srv.shutdown(Shutdown::Graceful).unwrap();
    stage.stop();
    assert_eq!(r.remaining, 0);
    assert_eq!(other, 0, "the spool absorbed the pause: no 503s");
    report(
        "sigstop",
        &keys,
        other,
        assert_no_loss(&c.processor.files.data_dir, &keys),
    );
}

#[test]
fn stage_killed_and_restarted_repeatedly() {
    let dir = tempfile::tempdir().unwrap();
    let c = test_config(dir.path());
    let mut stage = Stage::start(dir.path(), &c);
    let srv = Server::start(c.clone());
    let load = Load::start(srv.addr, 4);
    for _ in 0..3 {
        load.wait_accepted(200);
        stage.kill9();
        // Down this long: the collector's reconnects fail meanwhile.
        std::thread::sleep(Duration::from_millis(300));
        stage = Stage::start(dir.path(), &c);
    }
    load.wait_accepted(200);
    let (keys, other) = load.stop();
    let r = srv.shutdown(Shutdown::Graceful).unwrap();
    stage.stop();
    assert_eq!(r.remaining, 0);
    report(
        "stage kill -9 x3",
        &keys,
        other,
        assert_no_loss(&c.processor.files.data_dir, &keys),
    );
}

#[test]
fn collector_killed_with_sigkill_then_restarted() {
    killed_with_sigkill_then_restarted("collector kill -9", AckAfter::Write);
}

/// The same with `ack_after = "fsync"`: the path where each group waits for its `fdatasync`
/// before its requests are answered.
#[test]
fn collector_with_fsync_killed_with_sigkill_then_restarted() {
    killed_with_sigkill_then_restarted("collector kill -9, ack_after = fsync", AckAfter::Fsync);
}

fn killed_with_sigkill_then_restarted(name: &str, ack_after: AckAfter) {
    let dir = tempfile::tempdir().unwrap();
    let mut c = test_config(dir.path());
    c.spool.ack_after = ack_after;
    let stage = Stage::start(dir.path(), &c);
    let bin = Binary::serve(dir.path(), &c);
    let addr = bin.listening();
    let load = Load::start(addr, 4);
    load.wait_accepted(300);
    drop(bin); // SIGKILL, no drain, no flush
    let mut bin = Binary::serve(dir.path(), &c);
    let rec = bin.wait_for("spool recovered", Duration::from_secs(10));
    eprintln!("recovery after kill -9: {rec}");
    let addr2 = bin.listening();
    *load.addr.lock().unwrap() = addr2;
    load.wait_accepted(300);
    let (keys, other) = load.stop();
    bin.signal(libc::SIGINT);
    assert!(bin.wait(Duration::from_secs(30)).success());
    stage.stop();
    report(
        name,
        &keys,
        other,
        assert_no_loss(&c.processor.files.data_dir, &keys),
    );
}

/// With `ack_after = "fsync"`, a failed `fdatasync` (made by a fault point: a failing disk
/// cannot be had here) answers that group 503 `spool_write_failed`, never 204; health fails for
/// the cool-down, accepting resumes on a new segment, and every 204'd beacon arrives.
#[test]
fn failed_fdatasync_answers_503_never_204_then_recovers() {
    use beacon_collector::fault::{self, Point};
    let dir = tempfile::tempdir().unwrap();
    let mut c = test_config(dir.path());
    c.spool.ack_after = AckAfter::Fsync;
    c.http.retry_after_seconds = 1;
    let stage = Stage::start(dir.path(), &c);
    let srv = Server::start(c.clone());
    let synced = |scrape: &str| {
        scrape
            .lines()
            .find_map(|l| l.strip_prefix("beacon_spool_sync_seconds_count "))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let before = synced(&beacon_collector::metrics::install().render());
    let mut keys: Vec<String> = (0..20).map(|i| format!("s-{i}")).collect();
    for k in &keys {
        assert_eq!(get(srv.addr, &format!("/beacon?k={k}")).status, 204);
    }
    assert!(
        synced(&beacon_collector::metrics::install().render()) >= before + 1.0,
        "each 204 waited for an fdatasync, and it was measured"
    );

    fault::arm(Point::SpoolSyncFails, &c.spool.dir);
    let r = get(srv.addr, "/beacon?k=failed");
    assert_eq!(
        r.status, 503,
        "a beacon whose fdatasync failed is not acknowledged"
    );
    assert_eq!(r.body, b"spool_write_failed");
    assert_eq!(get(srv.addr, "/healthz").status, 503);

    wait_until(Duration::from_secs(15), || {
        let r = get(srv.addr, "/beacon?k=again");
        assert!(matches!(r.status, 204 | 503), "unexpected {}", r.status);
        r.status == 204
    });
    keys.push("again".into());
    wait_until(Duration::from_secs(15), || {
        get(srv.addr, "/healthz").status == 200
    });
    let report = srv.shutdown(Shutdown::Graceful).unwrap();
    stage.stop();
    assert_eq!(report.remaining, 0);
    assert_no_loss(&c.processor.files.data_dir, &keys);
}

/// `beacon_task_restarts_total{task="forwarder"}` in a scrape.
fn forwarder_restarts(scrape: &str) -> f64 {
    scrape
        .lines()
        .find_map(|l| l.strip_prefix("beacon_task_restarts_total{task=\"forwarder\"} "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

/// A real ENOSPC: the spool on a 96 KiB tmpfs. Mounting one needs root, so it is ignored in
/// a plain `cargo test`; `.ci/run` (root) runs it with `--ignored`, where a failed mount fails.
#[test]
#[ignore = "needs root to mount a tmpfs; run as root with --ignored (.ci/run does)"]
fn disk_full_answers_503_never_204_then_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("tiny");
    std::fs::create_dir(&mnt).unwrap();
    let ok = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=96k", "tmpfs"])
        .arg(&mnt)
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "cannot mount a tmpfs here: run this test as root");
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(&self.0)
                .status();
        }
    }
    let _guard = Unmount(mnt.clone());

    let mut c = test_config(dir.path());
    c.spool.dir = mnt.join("spool");
    c.spool.segment_bytes = 8192;
    c.http.retry_after_seconds = 1;
    let srv = Server::start(c.clone());
    let (mut keys, refused) = send_until_refused(srv.addr, 2000);
    assert_eq!(refused.body, b"spool_write_failed");
    assert_eq!(get(srv.addr, "/healthz").status, 503);

    let stage = Stage::start(dir.path(), &c);
    // The stage drains the spool, segments are deleted, space comes back. (/healthz turns
    // 200 one Retry-After period after the failed write, which may be before the stage has
    // freed space: a beacon accepted again is the recovery.)
    wait_until(Duration::from_secs(15), || {
        let r = get(srv.addr, "/beacon?k=after");
        assert!(matches!(r.status, 204 | 503), "unexpected {}", r.status);
        r.status == 204
    });
    wait_until(Duration::from_secs(15), || {
        get(srv.addr, "/healthz").status == 200
    });
    keys.push("after".into());
    let report = srv.shutdown(Shutdown::Graceful).unwrap();
    stage.stop();
    assert_eq!(report.remaining, 0);
    assert_no_loss(&c.processor.files.data_dir, &keys);
}

/// A forwarder that dies (a panic, made by a fault point) fails `/healthz` so the load balancer
/// moves traffic, is restarted, health comes back, and every 204'd beacon still arrives.
#[test]
fn dead_forwarder_fails_health_is_restarted_and_loses_nothing() {
    use beacon_collector::fault::{self, Point};
    let dir = tempfile::tempdir().unwrap();
    let c = test_config(dir.path());
    let stage = Stage::start(dir.path(), &c);
    let srv = Server::start(c.clone());
    let load = Load::start(srv.addr, 2);
    load.wait_accepted(200);
    assert_eq!(get(srv.addr, "/healthz").status, 200);
    let restarts = || forwarder_restarts(&beacon_collector::metrics::install().render());
    let before = restarts();
    fault::arm(Point::ForwarderPanic, &c.spool.dir);

    let wait_for = |status: u16, within: Duration| {
        let deadline = std::time::Instant::now() + within;
        loop {
            let r = get(srv.addr, "/healthz");
            if r.status == status {
                return r;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "/healthz never answered {status} (last {})",
                r.status
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    let down = wait_for(503, Duration::from_secs(5));
    assert_eq!(
        String::from_utf8_lossy(&down.body),
        "forwarder restarting\n"
    );
    wait_for(200, Duration::from_secs(10));
    load.wait_accepted(200);

    let (keys, other) = load.stop();
    let r = srv.shutdown(Shutdown::Graceful).unwrap();
    stage.stop();
    assert_eq!(
        r.remaining, 0,
        "the restarted forwarder delivered everything"
    );
    // The counter is exported at 0 from the start: that it exists says nothing.
    assert!(
        restarts() > before,
        "restart counted: {before} -> {}",
        restarts()
    );
    report(
        "forwarder panic",
        &keys,
        other,
        assert_no_loss(&c.processor.files.data_dir, &keys),
    );
}
