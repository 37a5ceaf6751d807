//! The Prometheus alert rules in deploy/prometheus and the Grafana dashboard in deploy/grafana:
//! promtool accepts the rules, every rule fires on a series made for it and stays quiet on one
//! that is not (promtool test rules), the dashboard parses, and every metric either reads is
//! one the collector or the stage defines (src/metrics.rs, the one place metric names live) and
//! that a running collector and stage really export (a live scrape of both).

use std::path::Path;
use std::process::Command;
use std::time::Duration;

fn promtool(args: &[&str]) -> std::process::Output {
    Command::new("promtool")
        .args(args)
        .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/prometheus"))
        .output()
        .expect("promtool is installed (.ci/run installs the Debian package prometheus)")
}

#[test]
fn alert_rules_check_and_fire_as_their_tests_say() {
    for args in [
        &["check", "rules", "beacon-collector.rules.yml"][..],
        &["test", "rules", "beacon-collector.tests.yml"][..],
    ] {
        let out = promtool(args);
        assert!(
            out.status.success(),
            "promtool {args:?}:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn alert_rules_read_only_metrics_the_collector_defines() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let rules =
        std::fs::read_to_string(root.join("deploy/prometheus/beacon-collector.rules.yml")).unwrap();
    let defined = std::fs::read_to_string(root.join("src/metrics.rs")).unwrap();
    let exprs: Vec<&str> = rules
        .lines()
        .filter(|l| l.trim_start().starts_with("expr:"))
        .collect();
    let used = metric_names(&exprs);
    assert!(
        used.len() >= 10,
        "the rules read the collector's metrics: {used:?}"
    );
    let unknown: Vec<_> = used.iter().filter(|n| !is_defined(&defined, n)).collect();
    assert!(
        unknown.is_empty(),
        "rules read metrics nobody exports: {unknown:?}"
    );
    // Every alert has a test that fires it and one that does not.
    let tests =
        std::fs::read_to_string(root.join("deploy/prometheus/beacon-collector.tests.yml")).unwrap();
    for alert in rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
    {
        let n = tests.matches(&format!("alertname: {alert}\n")).count();
        assert_eq!(n, 2, "{alert}: a firing and a quiet case");
    }
}

/// The `beacon_*` metric names in `exprs`.
fn metric_names(exprs: &[&str]) -> std::collections::BTreeSet<String> {
    let mut used = std::collections::BTreeSet::new();
    for e in exprs {
        let mut rest = *e;
        while let Some(i) = rest.find("beacon_") {
            let name: String = rest[i..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            rest = &rest[i + name.len()..];
            used.insert(name);
        }
    }
    used
}

/// Whether src/metrics.rs defines `name` (a histogram's series carry a suffix).
fn is_defined(metrics_rs: &str, name: &str) -> bool {
    let base = ["_bucket", "_sum", "_count"]
        .iter()
        .find_map(|s| name.strip_suffix(s))
        .unwrap_or(name);
    metrics_rs.contains(&format!("\"{name}\"")) || metrics_rs.contains(&format!("\"{base}\""))
}

#[test]
fn dashboard_parses_and_reads_only_metrics_the_collector_defines() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(root.join("deploy/grafana/beacon-collector.json")).unwrap();
    let d: serde_json::Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    assert!(
        d["schemaVersion"].as_u64().unwrap() >= 36,
        "a current Grafana schema"
    );
    let vars = d["templating"]["list"].as_array().unwrap();
    assert!(
        vars.iter().any(|v| v["type"] == "datasource"),
        "the datasource is a variable"
    );
    let mut exprs = Vec::new();
    for p in d["panels"].as_array().unwrap() {
        if p["type"] == "row" {
            continue;
        }
        assert_eq!(p["datasource"]["uid"], "${datasource}", "{}", p["title"]);
        let targets = p["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "{} has queries", p["title"]);
        for t in targets {
            exprs.push(t["expr"].as_str().unwrap().to_string());
        }
    }
    let refs: Vec<&str> = exprs.iter().map(String::as_str).collect();
    let used = metric_names(&refs);
    let defined = std::fs::read_to_string(root.join("src/metrics.rs")).unwrap();
    let unknown: Vec<_> = used.iter().filter(|n| !is_defined(&defined, n)).collect();
    assert!(
        unknown.is_empty(),
        "the dashboard reads metrics nobody exports: {unknown:?}"
    );

    assert!(
        used.len() >= 10,
        "the dashboard reads the collector's metrics: {used:?}"
    );
}

/// Every `beacon_*` metric the alert rules or the dashboard read (histograms by their base name).
pub fn metrics_read_by_rules_and_dashboard() -> std::collections::BTreeSet<String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let rules =
        std::fs::read_to_string(root.join("deploy/prometheus/beacon-collector.rules.yml")).unwrap();
    let mut exprs: Vec<String> = rules
        .lines()
        .filter_map(|l| l.trim_start().strip_prefix("expr:"))
        .map(str::to_string)
        .collect();
    let text = std::fs::read_to_string(root.join("deploy/grafana/beacon-collector.json")).unwrap();
    let d: serde_json::Value = serde_json::from_str(&text).unwrap();
    for p in d["panels"].as_array().unwrap() {
        for t in p["targets"].as_array().into_iter().flatten() {
            exprs.push(t["expr"].as_str().unwrap().to_string());
        }
    }
    let refs: Vec<&str> = exprs.iter().map(String::as_str).collect();
    metric_names(&refs)
        .into_iter()
        .map(|n| {
            ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| n.strip_suffix(s))
                .map_or(n.clone(), str::to_string)
        })
        .collect()
}

/// The real `serve` binary with its embedded stage, both with their admin port: every metric
/// the alert rules and the dashboard read is in one of the two scrapes from the start (after
/// one beacon, for the latency histogram) — except the broker sinks', which a stage exports
/// when it runs that sink (checked in `nats::replay_after_a_crash_is_stored_once` and
/// `kafka::steady_load_into_files_and_kafka_loses_nothing`), and conntrack's fill on a host
/// without conntrack.
#[test]
fn a_live_collector_and_stage_export_every_metric_the_rules_and_dashboard_read() {
    use crate::common::*;
    use beacon_collector::config::ForwardMode;
    let dir = tempfile::tempdir().unwrap();
    let mut c = test_config(dir.path());
    c.forward.mode = ForwardMode::Embedded;
    c.admin.enabled = true;
    c.admin.listen = "127.0.0.1:0".parse().unwrap();
    c.processor.admin.enabled = true;
    c.processor.admin.listen = "127.0.0.1:0".parse().unwrap();
    c.check.sample_interval_seconds = 1;
    // HTTPS on, so the TLS series (handshakes, certificate expiry) are exported too.
    let pki = crate::common::tls::Pki::new(dir.path());
    let leaf = pki.leaf("localhost", &["localhost"], 30);
    c.tls.enabled = true;
    c.tls.listen = "127.0.0.1:0".parse().unwrap();
    c.tls.cert_file = leaf.cert;
    c.tls.key_file = leaf.key;
    let mut bin = Binary::serve(dir.path(), &c);
    let addr = bin.listening();
    let admin = bin.admin();
    let stage_admin: std::net::SocketAddr = bin
        .wait_for("processing stage listening", Duration::from_secs(10))["admin"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(get(addr, "/beacon?k=scrape").status, 204);

    let conntrack = Path::new("/proc/sys/net/netfilter/nf_conntrack_max").exists();
    let wanted: Vec<String> = metrics_read_by_rules_and_dashboard()
        .into_iter()
        .filter(|n| !n.starts_with("beacon_sink_nats_") && !n.starts_with("beacon_sink_kafka_"))
        .filter(|n| conntrack || n != "beacon_kernel_conntrack_fill_ratio")
        .collect();
    assert!(wanted.len() >= 20, "{wanted:?}");
    let scrape = |a| String::from_utf8_lossy(&get(a, "/metrics").body).to_string();
    let exported = |text: &str, name: &str| {
        text.lines().any(|l| {
            l.strip_prefix(name)
                .is_some_and(|r| r.starts_with([' ', '{', '_']))
        })
    };
    // The sampler's first reading and the workers' first counter flush come within a second.
    let mut missing = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::time::Instant::now() < deadline {
        let (a, b) = (scrape(admin), scrape(stage_admin));
        missing = wanted
            .iter()
            .filter(|n| !exported(&a, n) && !exported(&b, n))
            .cloned()
            .collect();
        if missing.is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    bin.signal(libc::SIGTERM);
    assert!(bin.wait(Duration::from_secs(30)).success());
    assert!(
        missing.is_empty(),
        "read by the rules or the dashboard, exported by neither process: {missing:?}"
    );
}

/// The gauge the backlog alert reads is right at every scrape with traffic stopped: three
/// beacons that no stage takes grow older scrape after scrape (it read 0 for 35 s, then
/// dated them from a mark of long acknowledged records), `beacon_spool_bytes` holds their
/// bytes, and the age falls to 0 once a stage acknowledges them, with no new traffic.
#[test]
fn the_backlog_age_is_right_at_every_scrape_with_traffic_stopped() {
    use crate::common::*;
    let dir = tempfile::tempdir().unwrap();
    let mut c = test_config(dir.path());
    c.admin.enabled = true;
    c.admin.listen = "127.0.0.1:0".parse().unwrap();
    let bin = Binary::serve(dir.path(), &c);
    let addr = bin.listening();
    let admin = bin.admin();
    let gauge = |name: &str| -> f64 {
        let text = String::from_utf8_lossy(&get(admin, "/metrics").body).to_string();
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("{name} not exported"))
    };
    for i in 0..3 {
        assert_eq!(get(addr, &format!("/beacon?k=stuck{i}")).status, 204);
    }
    let sent = std::time::Instant::now();
    // No stage: nothing is acknowledged, nothing else is written. The age follows the clock.
    let mut last = 0.0;
    wait_until(Duration::from_secs(60), || {
        let age = gauge("beacon_spool_oldest_unacked_seconds");
        assert!(age >= last, "the age went back: {last} then {age}");
        assert!(
            age <= sent.elapsed().as_secs_f64() + 1.0,
            "{age} s for beacons sent {:?} ago",
            sent.elapsed()
        );
        last = age;
        age >= 2.0
    });
    assert!(gauge("beacon_spool_bytes") > 0.0);
    let _stage = Stage::start(dir.path(), &c);
    wait_until(Duration::from_secs(60), || {
        gauge("beacon_spool_oldest_unacked_seconds") == 0.0
    });
    assert_eq!(records(&c.processor.files.data_dir).len(), 3);
}
