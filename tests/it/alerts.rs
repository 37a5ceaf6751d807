//! The Prometheus alert rules in deploy/prometheus: promtool accepts them, every rule fires on a
//! series made for it and stays quiet on one that is not (promtool test rules), and every
//! metric a rule reads is one the collector or the stage defines (src/metrics.rs, the one
//! place metric names live).

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
    let mut used = std::collections::BTreeSet::new();
    for line in rules
        .lines()
        .filter(|l| l.trim_start().starts_with("expr:"))
    {
        let mut rest = line;
        while let Some(i) = rest.find("beacon_") {
            let name: String = rest[i..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            rest = &rest[i + name.len()..];
            used.insert(name);
        }
    }
    assert!(
        used.len() >= 10,
        "the rules read the collector's metrics: {used:?}"
    );
    let unknown: Vec<_> = used
        .iter()
        .filter(|n| !defined.contains(&format!("\"{n}\"")))
        .collect();
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
