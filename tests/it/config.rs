//! Bad configuration exits 64 and names the key; the shipped config is valid.

use crate::common::*;
use std::process::Command;

fn run(args: &[&str]) -> (i32, String) {
    let out = Command::new(BIN).args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn unknown_key_exits_64_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("bad.toml");
    std::fs::write(&p, "[server]\nbakclog = 10\n").unwrap();
    let (code, err) = run(&["config", "validate", "-c", p.to_str().unwrap()]);
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("server.bakclog"), "{err}");
    assert!(err.contains("unknown key"), "{err}");
    assert!(err.contains("fix:"), "{err}");
}

#[test]
fn impossible_value_stops_serve_with_64_before_binding() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("bad.toml");
    std::fs::write(
        &p,
        "[http]\nidle_timeout_seconds = 50\nlb_idle_timeout_seconds = 60\n",
    )
    .unwrap();
    let (code, err) = run(&["serve", "-c", p.to_str().unwrap()]);
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("http.idle_timeout_seconds"), "{err}");
    assert!(err.contains("502"), "{err}");
}

#[test]
fn wrong_type_exits_64_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("bad.toml");
    std::fs::write(&p, "[queue]\ncapacity = \"big\"\n").unwrap();
    let (code, err) = run(&["config", "validate", "-c", p.to_str().unwrap()]);
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("queue.capacity"), "{err}");
}

#[test]
fn shipped_config_validates_and_print_default_matches_it() {
    let shipped = concat!(env!("CARGO_MANIFEST_DIR"), "/config/collector.toml");
    let (code, err) = run(&["config", "validate", "-c", shipped]);
    assert_eq!(code, 0, "{err}");
    let out = Command::new(BIN)
        .args(["config", "print-default"])
        .output()
        .unwrap();
    assert_eq!(out.stdout, std::fs::read(shipped).unwrap());
}

/// A file written for an older release (keys before `[client_ip]`, `[processor.files]`,
/// `spool.max_pending_records`) still validates; `config validate` lists each old key with its
/// new name.
#[test]
fn old_key_names_validate_and_say_how_to_migrate() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("old.toml");
    std::fs::write(
        &p,
        "[server]\nproxy_protocol = \"v2\"\n[queue]\ncapacity = 1000\n\
         [processor]\ndata_dir = \"/srv/beacons\"\nadmin_enabled = false\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["config", "validate", "-c", p.to_str().unwrap()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    for (old, new) in [
        ("server.proxy_protocol", "client_ip.proxy_protocol"),
        ("queue.capacity", "spool.max_pending_records"),
        ("processor.data_dir", "processor.files.data_dir"),
        ("processor.admin_enabled", "processor.admin.enabled"),
    ] {
        assert!(
            text.contains(&format!("`{old}` is deprecated: write it as `{new}`")),
            "{old}: {text}"
        );
    }
}
