//! Zero-downtime restart with a listening socket held by the service manager (systemd socket
//! activation, played here by the test): a new collector starts on the same socket, the old
//! one gets SIGTERM, and a client sending continuously sees no refused or reset connection.

use crate::common::*;
use crate::haproxy::{continuous, every_204_in_one_of, stop_clients};
use beacon_collector::config::{Config, ForwardMode};
use std::io::{BufRead, BufReader};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

/// `serve` with `fd` as its descriptor 3 and `LISTEN_FDS=1`, `LISTEN_PID` its own pid, as
/// systemd starts a socket-activated service; with `notify`, `NOTIFY_SOCKET` too (`Type=notify`).
fn start_activated(
    dir: &std::path::Path,
    c: &Config,
    fd: i32,
    notify: Option<&std::path::Path>,
) -> Binary {
    let cfg = write_config(dir, c);
    let mut cmd = Command::new("sh");
    cmd.args([
        "-c",
        "export LISTEN_PID=$$ LISTEN_FDS=1; exec \"$0\" \"$@\"",
    ])
    .arg(env!("CARGO_BIN_EXE_beacon-collector"))
    .args(["serve", "--log-format", "json", "-c", cfg.to_str().unwrap()])
    .current_dir(dir)
    .stdout(Stdio::null())
    .stderr(Stdio::piped());
    if let Some(p) = notify {
        cmd.env("NOTIFY_SOCKET", p);
    }
    // SAFETY: dup2 is async-signal-safe; the descriptor stays open in the parent until spawn
    // returns.
    unsafe {
        cmd.pre_exec(move || {
            // dup2 onto itself would keep FD_CLOEXEC (std sets it): clear it instead.
            let r = if fd == 3 {
                libc::fcntl(3, libc::F_SETFD, 0)
            } else {
                libc::dup2(fd, 3)
            };
            if r < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().unwrap();
    let stderr = child.stderr.take().unwrap();
    let log = Arc::new(std::sync::Mutex::new(Vec::new()));
    let log2 = log.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            log2.lock().unwrap().push(line);
        }
    });
    let bin = Binary { child, log };
    bin.wait_for(
        "using the listening sockets passed by the service manager",
        Duration::from_secs(10),
    );
    bin.wait_for("listening", Duration::from_secs(10));
    bin
}

fn config(dir: &std::path::Path) -> Config {
    let mut c = test_config(dir);
    c.forward.mode = ForwardMode::Embedded;
    // A restart keeps the socket: nothing needs to move away first, but keep-alive clients
    // are told to reconnect (Connection: close) before the old process stops serving.
    c.shutdown.deregistration_delay_seconds = 1;
    c
}

#[test]
fn restart_on_a_held_socket_refuses_nothing_and_loses_nothing() {
    // The service manager's socket: it stays open across the restart.
    let socket = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = socket.local_addr().unwrap();
    let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (c1, c2) = (config(d1.path()), config(d2.path()));
    let mut old = start_activated(d1.path(), &c1, socket.as_raw_fd(), None);

    let stop = Arc::new(AtomicBool::new(false));
    let clients = continuous(addr, 4, stop.clone());
    std::thread::sleep(Duration::from_secs(1));
    // The new process first, then the old one leaves.
    let mut new = start_activated(d2.path(), &c2, socket.as_raw_fd(), None);
    old.signal(libc::SIGTERM);
    assert!(old.wait(Duration::from_secs(30)).success());
    std::thread::sleep(Duration::from_secs(1));
    let seen = stop_clients(&stop, clients);
    new.signal(libc::SIGTERM);
    assert!(new.wait(Duration::from_secs(30)).success());

    eprintln!(
        "restart: {} beacons answered 204, {} other statuses, {} refused/reset/closed",
        seen.ok.len(),
        seen.bad_status.len(),
        seen.transport_errors
    );
    assert_eq!((seen.bad_status.len(), seen.transport_errors), (0, 0));
    every_204_in_one_of(
        &seen,
        &c1.processor.files.data_dir,
        &c2.processor.files.data_dir,
    );
}

/// Under `Type=notify` the service manager hears READY once the collector listens and
/// STOPPING when SIGTERM starts the drain; the embedded stage (a child) says nothing.
#[test]
fn service_manager_hears_ready_then_stopping() {
    let socket = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let d = tempfile::tempdir().unwrap();
    let path = d.path().join("notify.sock");
    let manager = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
    manager
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let recv = || {
        let mut buf = [0u8; 4096];
        let n = manager.recv(&mut buf).expect("a notification within 10 s");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    let c = config(d.path());
    let mut bin = start_activated(d.path(), &c, socket.as_raw_fd(), Some(&path));
    let ready = recv();
    assert!(ready.lines().any(|l| l == "READY=1"), "{ready:?}");
    // A beacon is served once READY was said.
    assert_eq!(
        get(socket.local_addr().unwrap(), "/beacon?k=ready").status,
        204
    );
    bin.signal(libc::SIGTERM);
    let stopping = recv();
    assert!(stopping.lines().any(|l| l == "STOPPING=1"), "{stopping:?}");
    assert!(bin.wait(Duration::from_secs(30)).success());
    manager.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 4096];
    assert!(
        manager.recv(&mut buf).is_err(),
        "nothing else (the stage must not notify)"
    );
}
