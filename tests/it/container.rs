//! The runtime image (deploy/container) with a real container runtime: podman + runc (.ci/run
//! installs both). Rootful podman and a state volume owned by the image's user need root, so
//! these are ignored in a plain `cargo test`; `.ci/run` (root) runs them with `--ignored`. The image is built by deploy/container/build.sh as it ships, from this
//! test's binary, on a base made here from scratch and the libraries the binary links (no
//! registry is reachable to pull distroless).

use crate::common::*;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// podman with the runtime that works on these hosts (crun refuses hybrid cgroups) and no
/// dependence on systemd.
fn podman(args: &[&str]) -> Output {
    Command::new("podman")
        .args([
            "--runtime",
            "runc",
            "--cgroup-manager",
            "cgroupfs",
            "--events-backend",
            "file",
        ])
        .args(args)
        .output()
        .expect("podman is installed (.ci/run installs the Debian packages podman and runc)")
}

fn podman_ok(args: &[&str]) -> String {
    let out = podman(args);
    assert!(
        out.status.success(),
        "podman {args:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The image, built once per test run: tag `localhost/beacon-collector:it`.
fn image() -> &'static str {
    static IMAGE: OnceLock<()> = OnceLock::new();
    IMAGE.get_or_init(|| {
        let base = build_base();
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let out = Command::new(root.join("deploy/container/build.sh"))
            .arg("localhost/beacon-collector:it")
            .env("BIN", BIN)
            .env("BASE", &base)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "deploy/container/build.sh: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    });
    "localhost/beacon-collector:it"
}

/// A base image from scratch: the dynamic loader and libraries `ldd` lists for the binary, and
/// distroless's `nonroot` user (65532).
fn build_base() -> String {
    let dir = tempfile::tempdir().unwrap();
    let rootfs = dir.path().join("rootfs");
    let ldd = Command::new("ldd").arg(BIN).output().unwrap();
    let ldd = String::from_utf8_lossy(&ldd.stdout);
    let mut libs: Vec<PathBuf> = Vec::new();
    for line in ldd.lines() {
        // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or "/lib64/ld-linux-x86-64.so.2 (0x...)"
        let path = line
            .split("=>")
            .last()
            .and_then(|s| s.split_whitespace().next())
            .filter(|p| p.starts_with('/'));
        if let Some(p) = path {
            libs.push(PathBuf::from(p));
        }
    }
    assert!(libs.len() >= 2, "ldd found no libraries: {ldd}");
    for lib in &libs {
        let to = rootfs.join(lib.strip_prefix("/").unwrap());
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(lib, &to).unwrap(); // follows symlinks: the real file
    }
    std::fs::create_dir_all(rootfs.join("etc")).unwrap();
    std::fs::create_dir_all(rootfs.join("tmp")).unwrap();
    std::fs::write(
        rootfs.join("etc/passwd"),
        "root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n",
    )
    .unwrap();
    std::fs::write(rootfs.join("etc/group"), "root:x:0:\nnonroot:x:65532:\n").unwrap();
    std::fs::write(
        dir.path().join("Containerfile"),
        "FROM scratch\nCOPY rootfs/ /\n",
    )
    .unwrap();
    let tag = "localhost/beacon-test-base:it";
    podman_ok(&["build", "-t", tag, &dir.path().display().to_string()]);
    tag.to_string()
}

/// A running container, removed (with its anonymous volumes) when dropped.
struct Container(String);

impl Container {
    /// Starts `name` (suffixed with this test process's id: two suites on one host do not
    /// touch each other's containers).
    fn run(name: &str, opts: &[&str], args: &[&str]) -> Container {
        let name = &format!("{name}-{}", std::process::id());
        let _ = podman(&["rm", "-f", "-v", name]);
        let limits = ulimits();
        let mut all = vec!["run", "-d", "--name", name];
        all.extend(limits.iter().map(String::as_str));
        all.extend_from_slice(opts);
        all.push(image());
        all.extend_from_slice(args);
        podman_ok(&all);
        Container(name.to_string())
    }

    fn logs(&self) -> String {
        let out = podman(&["logs", &self.0]);
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }

    fn inspect(&self, format: &str) -> String {
        podman_ok(&["inspect", "--format", format, &self.0])
            .trim()
            .to_string()
    }

    /// Waits until the image's own HEALTHCHECK passes.
    fn wait_healthy(&self) {
        let start = Instant::now();
        while !podman(&["healthcheck", "run", &self.0]).status.success() {
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "the container never turned healthy:\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = podman(&["rm", "-f", "-v", "-t", "0", &self.0]);
    }
}

/// `--ulimit` flags within this host's hard limits: podman's defaults exceed them on some
/// hosts, and runc then refuses to start the container.
fn ulimits() -> Vec<String> {
    let hard = |res| {
        let mut r = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes the struct we pass.
        unsafe { libc::getrlimit(res, &mut r) };
        r.rlim_max
    };
    let nofile = hard(libc::RLIMIT_NOFILE).min(65536);
    let nproc = hard(libc::RLIMIT_NPROC).min(4096);
    vec![
        "--ulimit".into(),
        format!("nofile={nofile}:{nofile}"),
        "--ulimit".into(),
        format!("nproc={nproc}:{nproc}"),
    ]
}

/// A host directory the image's user (65532) can write, mounted as the state volume.
fn state_dir(dir: &Path) -> PathBuf {
    let state = dir.join("state");
    std::fs::create_dir_all(&state).unwrap();
    std::os::unix::fs::chown(&state, Some(65532), Some(65532)).expect("chown (run as root)");
    state
}

/// The container's config: the defaults with the beacon port on the host's loopback (the
/// container shares the host network), state under the volume as in the image.
fn mounted_config(dir: &Path, port: u16) -> PathBuf {
    let p = dir.join("collector.toml");
    std::fs::write(
        &p,
        format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\nworkers = 2\n[admin]\nenabled = false\n\
             [processor.admin]\nenabled = false\n\
             [shutdown]\nderegistration_delay_seconds = 2\nclient_interval_seconds = 1\n\
             drain_timeout_seconds = 5\nflush_timeout_seconds = 20\n"
        ),
    )
    .unwrap();
    p
}

/// A collector container on the host's network with a read-only root, a host directory as
/// its state volume and a mounted config listening on a free loopback port.
struct OnHost {
    _dir: tempfile::TempDir,
    state: PathBuf,
    opts: Vec<String>,
    addr: std::net::SocketAddr,
}

impl OnHost {
    fn new() -> OnHost {
        let dir = tempfile::tempdir().unwrap();
        let state = state_dir(dir.path());
        let port = free_port();
        let cfg = mounted_config(dir.path(), port);
        let opts = vec![
            "--network".into(),
            "host".into(),
            "--read-only".into(),
            "-v".into(),
            format!("{}:/var/lib/beacon-collector", state.display()),
            "-v".into(),
            format!("{}:/etc/beacon-collector/collector.toml:ro", cfg.display()),
        ];
        let addr = format!("127.0.0.1:{port}").parse().unwrap();
        OnHost {
            _dir: dir,
            state,
            opts,
            addr,
        }
    }

    /// Starts the container (again, on the same volume) and waits until it is healthy.
    fn run(&self, name: &str) -> Container {
        let opts: Vec<&str> = self.opts.iter().map(String::as_str).collect();
        let c = Container::run(name, &opts, &[]);
        c.wait_healthy();
        c
    }
}

fn uid_of(pid: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

/// The image as it ships: default config (no mount), read-only root, its own network
/// namespace; healthy by its own HEALTHCHECK, running as 65532, the processing stage too.
#[test]
#[ignore = "needs root (rootful podman); .ci/run runs it with --ignored"]
fn image_starts_with_its_default_config_as_non_root_on_a_read_only_root() {
    let c = Container::run(
        "beacon-it-default",
        &["--network", "none", "--read-only"],
        &[],
    );
    c.wait_healthy();
    assert_eq!(c.inspect("{{.Config.User}}"), "65532:65532");
    let pid = c.inspect("{{.State.Pid}}");
    assert_eq!(uid_of(&pid), "65532", "the collector runs as non-root");
    // The processing stage is the collector's child, same user.
    let stage = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .find(|p| {
            std::fs::read_to_string(format!("/proc/{p}/status")).is_ok_and(|s| {
                s.lines()
                    .any(|l| l.split_whitespace().eq(["PPid:", pid.as_str()]))
            })
        })
        .expect("a processing stage child");
    assert_eq!(uid_of(&stage), "65532");
    // The root filesystem is read-only: only the state volume is written.
    let out = podman(&[
        "exec",
        &c.0,
        "/usr/local/bin/beacon-collector",
        "health",
        "--ready",
    ]);
    assert!(
        out.status.success(),
        "ready: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(c.inspect("{{.HostConfig.ReadonlyRootfs}}"), "true");
    let logs = c.logs();
    assert!(logs.contains("spool recovered"), "{logs}");
}

/// Beacons sent from the host land in the mounted state volume; `podman stop -t 60` is the
/// drain: /readyz answers 503 first, the collector then exits 0 with its spool empty.
#[test]
#[ignore = "needs root (rootful podman); .ci/run runs it with --ignored"]
fn beacons_land_in_the_mounted_volume_and_stop_drains() {
    let host = OnHost::new();
    let c = host.run("beacon-it-drain");
    let addr = host.addr;
    let load = Load::start(addr, 2);
    load.wait_accepted(300);

    let name = c.0.clone();
    let stopper = std::thread::spawn(move || podman(&["stop", "-t", "60", &name]));
    // Readiness fails while the collector still serves (the deregistration delay).
    wait_until(Duration::from_secs(30), || {
        get(addr, "/readyz").status == 503
    });
    let stopped = stopper.join().unwrap();
    assert!(
        stopped.status.success(),
        "{}",
        String::from_utf8_lossy(&stopped.stderr)
    );
    let (keys, _) = load.stop();
    assert_eq!(c.inspect("{{.State.ExitCode}}"), "0", "{}", c.logs());
    let logs = c.logs();
    assert!(
        logs.contains("shutdown complete: spool empty"),
        "drained and flushed: {logs}"
    );
    let (recs, _, _) = assert_no_loss(&host.state.join("data"), &keys);
    eprintln!(
        "container drain: {} 204s, {recs} records in the volume",
        keys.len()
    );
}

/// `podman kill -s KILL` under load, then a new container on the same volume: every beacon
/// answered 204 before or after arrives.
#[test]
#[ignore = "needs root (rootful podman); .ci/run runs it with --ignored"]
fn killed_container_restarted_on_its_volume_loses_nothing() {
    let host = OnHost::new();
    let c = host.run("beacon-it-kill");
    let load = Load::start(host.addr, 4);
    load.wait_accepted(300);
    podman_ok(&["kill", "-s", "KILL", &c.0]);
    drop(c);
    let c = host.run("beacon-it-kill");
    load.wait_accepted(300);
    let (keys, other) = load.stop();
    podman_ok(&["stop", "-t", "60", &c.0]);
    assert!(
        c.logs().contains("shutdown complete: spool empty"),
        "{}",
        c.logs()
    );
    let (recs, unique, dups) = assert_no_loss(&host.state.join("data"), &keys);
    eprintln!(
        "container kill -9: 204s={} other={other} records={recs} unique={unique} duplicates={dups} lost=0",
        keys.len()
    );
}

/// `beacon-collector check` in the container reads the container's own network namespace (a
/// `--sysctl` set there shows, not the host's value) and names each setting's scope.
#[test]
#[ignore = "needs root (rootful podman); .ci/run runs it with --ignored"]
fn check_in_the_container_reads_its_own_namespace_and_says_what_only_the_node_sets() {
    let host = std::fs::read_to_string("/proc/sys/net/core/somaxconn").unwrap();
    let mine = if host.trim() == "1024" { "512" } else { "1024" };
    let limits = ulimits();
    let limits: Vec<&str> = limits.iter().map(String::as_str).collect();
    let run = |extra: &[&str]| {
        let mut args = vec!["run", "--rm"];
        args.extend_from_slice(&limits);
        args.extend_from_slice(extra);
        podman(&args)
    };
    let out = run(&[
        "--network",
        "none",
        "--read-only",
        "--sysctl",
        &format!("net.core.somaxconn={mine}"),
        "--sysctl",
        "net.ipv4.ip_local_port_range=20000 30000",
        image(),
        "check",
        "--json",
    ]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "findings: exit 1 ({})",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let find = |key: &str| finding(&report, key).clone();
    let somaxconn = find("net.core.somaxconn");
    assert_eq!(
        somaxconn["current"], mine,
        "the container's value, not the host's {host}"
    );
    assert_eq!(somaxconn["severity"], "fail", "below server.backlog 4096");
    assert_eq!(somaxconn["scope"], "netns");
    let range = find("net.ipv4.ip_local_port_range");
    assert!(
        range["current"].as_str().unwrap().contains("20000"),
        "{range}"
    );
    assert_eq!(range["scope"], "netns_safe");
    assert_eq!(find("fs.file-max")["scope"], "node");
    assert_eq!(find("RLIMIT_NOFILE")["scope"], "process");
    // Conntrack: the table (or its absence) as this namespace sees it; only the node sizes it.
    let ct = report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| {
            f["key"]
                .as_str()
                .unwrap()
                .starts_with("net.netfilter.nf_conntrack_")
        })
        .expect("a conntrack finding")
        .clone();
    assert_eq!(ct["scope"], "node", "{ct}");

    // The table says it in words.
    let out = run(&["--network", "none", image(), "check"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("SCOPE"), "{text}");
    assert!(
        text.contains("node = kernel-wide, only the host sets it"),
        "{text}"
    );
}
