//! deploy/kubernetes validated offline (no cluster here): every manifest against the
//! Kubernetes OpenAPI schemas `kubernetes-validate` ships (strict: unknown fields refused), for
//! the oldest release whose safe sysctls the pod uses and the newest; the ConfigMap's
//! collector.toml with the collector's own validation; and the numbers that must agree across
//! files (grace period vs `[shutdown]`, ports, names).

use beacon_collector::config::Config;
use std::path::{Path, PathBuf};
use std::process::Command;

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/kubernetes")
}

fn read(name: &str) -> String {
    std::fs::read_to_string(dir().join(name)).unwrap()
}

/// The manifests (every YAML file but kustomization.yaml).
fn manifests() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .filter(|p| !p.ends_with("kustomization.yaml"))
        .collect();
    v.sort();
    assert!(v.len() >= 6, "{v:?}");
    v
}

fn validate(k8s: &str, files: &[PathBuf]) -> (bool, String) {
    let out = Command::new("kubernetes-validate")
        .args(["--strict", "-k", k8s])
        .args(files)
        .output()
        .expect("kubernetes-validate is installed (.ci/run: pip install kubernetes-validate)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// The value after `key:` on the first line that has it (the manifests keep these on one line).
fn value_of(text: &str, key: &str) -> String {
    text.lines()
        .find_map(|l| l.trim().strip_prefix(&format!("{key}:")))
        .unwrap_or_else(|| panic!("no {key}"))
        .trim()
        .trim_matches('"')
        .to_string()
}

#[test]
fn manifests_validate_against_the_kubernetes_schemas() {
    // 1.29: the first release with tcp_keepalive_time/tcp_fin_timeout in the safe set.
    for k8s in ["1.29.0", "1.37.0"] {
        let (ok, text) = validate(k8s, &manifests());
        assert!(ok, "kubernetes {k8s}:\n{text}");
        // Each built-in resource was checked; only the Operator's CRD has no schema here.
        for kind in [
            "statefulset/beacon-collector",
            "service/beacon-collector-nlb",
            "service/beacon-collector-alb",
            "ingress/beacon-collector",
            "service/beacon-collector ",
            "poddisruptionbudget/beacon-collector",
        ] {
            assert!(
                text.contains(&format!("passed for resource {kind}")),
                "{kind} not validated on {k8s}:\n{text}"
            );
        }
        for line in text.lines().filter(|l| l.starts_with("WARN")) {
            assert!(line.contains("ServiceMonitor"), "unexpected: {line}");
        }
    }
}

/// The validator refuses what it should (a test of the test): a wrong type and an unknown
/// field in the StatefulSet.
#[test]
fn the_schema_check_refuses_a_broken_statefulset() {
    let tmp = tempfile::tempdir().unwrap();
    let good = read("statefulset.yaml");
    for (what, bad) in [
        ("type", good.replace("replicas: 3", "replicas: three")),
        (
            "unknown field",
            good.replace(
                "podManagementPolicy: Parallel",
                "podManagementPolicy: Parallel\n  replica: 3",
            ),
        ),
    ] {
        assert_ne!(bad, good);
        let p = tmp.path().join("statefulset.yaml");
        std::fs::write(&p, bad).unwrap();
        let (ok, text) = validate("1.37.0", &[p]);
        assert!(!ok, "{what} accepted:\n{text}");
    }
}

#[test]
fn config_map_is_a_valid_collector_config_and_the_numbers_agree() {
    let cfg_path = dir().join("collector.toml");
    let out = Command::new(crate::common::BIN)
        .args(["config", "validate", "-c"])
        .arg(&cfg_path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let c = Config::load(&cfg_path).unwrap();

    let sts = read("statefulset.yaml");
    // SIGKILL must not cut the collector's own stop: deregistration + drain + flush.
    let grace: u64 = value_of(&sts, "terminationGracePeriodSeconds")
        .parse()
        .unwrap();
    let stop = c.shutdown.deregistration_delay_seconds
        + c.shutdown.drain_timeout_seconds
        + c.shutdown.flush_timeout_seconds;
    assert!(
        grace > stop,
        "grace {grace} s <= the collector's stop {stop} s"
    );

    // Ports: the beacon and admin listeners are the container's named ports and the scrape
    // annotation.
    let admin = c.admin.listen.port().to_string();
    assert!(
        c.admin.listen.ip().is_unspecified(),
        "/metrics reachable from outside the pod"
    );
    assert_eq!(value_of(&sts, "prometheus.io/port"), admin);
    assert!(sts.contains(&format!(
        "name: admin\n              containerPort: {admin}"
    )));
    let http = c.server.listen.port();
    assert!(sts.contains(&format!("name: http\n              containerPort: {http}")));
    assert!(sts.contains(&format!(
        "name: https\n              containerPort: {}",
        c.tls.listen.port()
    )));

    // The NLB sends PROXY v2: the collector must require it (else the header is the request).
    assert!(read("service-nlb.yaml").contains("aws-load-balancer-proxy-protocol: \"*\""));
    assert_eq!(
        format!("{:?}", c.client_ip.proxy_protocol),
        "V2",
        "service-nlb.yaml's PROXY v2"
    );

    // Names: the mounted ConfigMap is the generated one; every resource listed exists; the
    // only manifest not listed is the documented alternative to the NLB Service.
    let kust = read("kustomization.yaml");
    assert!(kust.contains("- name: beacon-collector-config"));
    assert!(sts.contains("name: beacon-collector-config"));
    let listed: Vec<&str> = kust
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- "))
        .map(|l| l.split_whitespace().next().unwrap())
        .filter(|l| l.ends_with(".yaml") || l.ends_with(".toml"))
        .collect();
    for f in &listed {
        assert!(dir().join(f).exists(), "kustomization lists {f}");
    }
    for m in manifests() {
        let name = m.file_name().unwrap().to_str().unwrap();
        assert!(
            listed.contains(&name) || name == "service-alb.yaml",
            "{name} is neither applied nor the documented alternative"
        );
    }
    // The ServiceMonitor (no schema here) scrapes a port the headless Service has.
    let sm = read("servicemonitor.yaml");
    assert_eq!(value_of(&sm, "- port"), "admin");
    assert!(read("service-headless.yaml").contains("- name: admin"));
}
