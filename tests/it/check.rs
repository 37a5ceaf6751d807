//! `beacon-collector check` against recorded /proc trees (a healthy host and one per failure
//! story in the field notes), against the live /proc, the generated deploy files, and
//! `check.strict` at start.

use crate::common::*;
use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/proc");

fn check(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(BIN).arg("check").args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

/// Runs `check --json` on a fixture; returns the exit code and the non-ok findings.
fn findings(
    fixture: &str,
    config: Option<&str>,
) -> (i32, BTreeMap<String, String>, serde_json::Value) {
    let root = format!("{FIXTURES}/{fixture}");
    let dir = tempfile::tempdir().unwrap();
    let mut args = vec!["--json", "--proc-root", &root];
    let cfg = dir.path().join("c.toml");
    let cfg_s = cfg.to_str().unwrap().to_string();
    if let Some(text) = config {
        std::fs::write(&cfg, text).unwrap();
        args.extend(["-c", &cfg_s]);
    }
    let (code, out, err) = check(&args);
    let v: serde_json::Value =
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out} {err}"));
    let bad = v["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["severity"] != "ok")
        .map(|f| {
            (
                f["key"].as_str().unwrap().to_string(),
                f["severity"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    (code, bad, v)
}

fn expect(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, s)| (k.to_string(), s.to_string()))
        .collect()
}

#[test]
fn healthy_host_is_all_ok() {
    let (code, bad, v) = findings("healthy", None);
    assert_eq!(bad, expect(&[]));
    assert_eq!(code, 0);
    assert_eq!(v["exit_code"], 0);
    assert_eq!(v["summary"]["fail"], 0);
    // Every finding carries the documented fields.
    for f in v["findings"].as_array().unwrap() {
        for field in ["key", "current", "recommended", "severity", "why", "fix"] {
            assert!(f.get(field).is_some(), "{f} lacks {field}");
        }
        assert!(!f["why"].as_str().unwrap().is_empty());
    }
}

#[test]
fn somaxconn_128_with_backlog_511_fails() {
    let (code, bad, v) = findings("somaxconn-128", Some("[server]\nbacklog = 511\n"));
    assert_eq!(
        bad,
        expect(&[
            ("net.core.somaxconn", "fail"),
            ("TcpExt.ListenOverflows", "warn"),
            ("TcpExt.ListenDrops", "warn"),
        ])
    );
    assert_eq!(code, 1);
    let f = finding(&v, "net.core.somaxconn");
    assert_eq!(f["current"], "128");
    assert!(f["fix"]
        .as_str()
        .unwrap()
        .contains("sysctl -w net.core.somaxconn=511"));
}

#[test]
fn tcp_tw_recycle_on_fails() {
    let (code, bad, _) = findings("tw-recycle", None);
    assert_eq!(
        bad,
        expect(&[
            ("net.ipv4.tcp_tw_recycle", "fail"),
            ("TcpExt.ListenDrops", "warn"),
            ("TcpExt.SyncookiesFailed", "warn"),
            ("TcpExt.TCPRcvCollapsed", "warn"),
        ])
    );
    assert_eq!(code, 1);
}

#[test]
fn conntrack_99_percent_full_with_5_day_timeout() {
    let (code, bad, v) = findings("conntrack-full", None);
    assert_eq!(
        bad,
        expect(&[
            ("net.netfilter.nf_conntrack_count", "fail"),
            ("net.netfilter.nf_conntrack_tcp_timeout_established", "warn"),
        ])
    );
    assert_eq!(code, 1);
    let f = finding(&v, "net.netfilter.nf_conntrack_count");
    assert!(f["current"].as_str().unwrap().contains("99% full"), "{f}");
}

#[test]
fn nofile_1024_fails() {
    let (code, bad, v) = findings("nofile-1024", None);
    assert_eq!(bad, expect(&[("RLIMIT_NOFILE", "fail")]));
    assert_eq!(code, 1);
    let f = finding(&v, "RLIMIT_NOFILE");
    assert!(f["fix"].as_str().unwrap().contains("LimitNOFILE=131072"));
}

#[test]
fn narrow_port_range_full_of_time_wait_fails() {
    let (code, bad, v) = findings("ports-timewait", None);
    assert_eq!(bad, expect(&[("net.ipv4.ip_local_port_range", "fail")]));
    assert_eq!(code, 1);
    let f = v["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["key"] == "net.ipv4.ip_local_port_range")
        .unwrap();
    // 28233 ports / 60 s of TIME_WAIT.
    assert!(
        f["recommended"]
            .as_str()
            .unwrap()
            .contains("470 new outbound connections/s"),
        "{f}"
    );
}

#[test]
fn table_output_without_a_tty_has_no_colour_and_shows_fixes() {
    let root = format!("{FIXTURES}/nofile-1024");
    let (code, out, _) = check(&["--proc-root", &root]);
    assert_eq!(code, 1);
    assert!(!out.contains('\x1b'), "no escape codes off a TTY");
    assert!(out.contains("fail  RLIMIT_NOFILE"), "{out}");
    assert!(out.contains("      fix: LimitNOFILE=131072"), "{out}");
    assert!(out.contains(" ok, 0 warn, 1 fail"), "{out}");
}

#[test]
fn live_proc_is_checked() {
    let (code, out, err) = check(&["--json"]);
    assert!(code == 0 || code == 1, "exit {code}: {err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(v["findings"].as_array().unwrap().len() > 20);
    assert_eq!(v["exit_code"], code);
}

#[test]
fn unreadable_proc_root_exits_2() {
    let (code, _, err) = check(&["--proc-root", "/nonexistent"]);
    assert_eq!(code, 2);
    assert!(err.contains("/nonexistent"), "{err}");
}

#[test]
fn deploy_files_are_what_check_emits_for_the_default_config() {
    let root = env!("CARGO_MANIFEST_DIR");
    for (emit, file) in [
        ("sysctl", "deploy/sysctl.d/60-beacon-collector.conf"),
        ("limits", "deploy/limits.d/60-beacon-collector.conf"),
        ("systemd", "deploy/beacon-collector.service"),
    ] {
        let (code, out, _) = check(&["--emit", emit]);
        assert_eq!(code, 0);
        let shipped = std::fs::read_to_string(format!("{root}/{file}")).unwrap();
        assert_eq!(
            out, shipped,
            "{file} is stale: regenerate with `beacon-collector check --emit {emit} > {file}`"
        );
    }
}

#[test]
fn strict_check_refuses_to_start_on_a_fail_and_lenient_logs_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = test_config(dir.path());
    // More connections than any test machine's nofile allows: a guaranteed fail.
    c.server.max_connections = 50_000_000;
    c.check.strict = true;
    let cfg = write_config(dir.path(), &c);
    let out = Command::new(BIN)
        .args(["serve", "--log-format", "json", "-c", cfg.to_str().unwrap()])
        .current_dir(dir.path())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("check.strict"), "{err}");
    assert!(err.contains("RLIMIT_NOFILE"), "{err}");

    c.check.strict = false;
    let mut bin = Binary::serve(dir.path(), &c);
    bin.listening();
    let logged = bin
        .log
        .lock()
        .unwrap()
        .iter()
        .any(|l| l.contains("\"key\":\"RLIMIT_NOFILE\"") && l.contains("\"level\":\"ERROR\""));
    assert!(logged, "the fail is logged with its key");
    bin.signal(libc::SIGINT);
    assert!(bin.wait(Duration::from_secs(15)).success());
}
