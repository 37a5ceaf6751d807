//! The Prometheus alert rules in deploy/prometheus and the Grafana dashboard in deploy/grafana:
//! promtool accepts the rules, every rule fires on a series made for it and stays quiet on one
//! that is not (promtool test rules), the dashboard parses, and every metric either reads is
//! one the collector or the stage defines (src/metrics.rs, the one place metric names live) —
//! the ones a collector always exports checked in a live scrape.

use std::path::Path;
use std::process::Command;

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
fn dashboard_parses_and_reads_only_metrics_the_collector_exports() {
    use crate::common::*;
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

    // A live collector exports the ones it always has (the others appear once their event does).
    let dir = tempfile::tempdir().unwrap();
    let c = test_config(dir.path());
    let stage = Stage::start(dir.path(), &c);
    let srv = Server::start(c);
    assert_eq!(get(srv.addr, "/beacon?k=scrape").status, 204);
    std::thread::sleep(std::time::Duration::from_millis(1500)); // workers add counters each second
    let scrape = beacon_collector::metrics::install().render();
    srv.shutdown(beacon_collector::Shutdown::Graceful).unwrap();
    stage.stop();
    for name in [
        "beacon_http_requests_total",
        "beacon_http_request_duration_seconds_bucket",
        "beacon_connections_open",
        "beacon_accepted_total",
        "beacon_spool_bytes",
    ] {
        assert!(used.contains(name), "the dashboard shows {name}");
        assert!(scrape.contains(name), "a live collector exports {name}");
    }
}
