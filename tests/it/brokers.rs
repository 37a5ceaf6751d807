//! The loss scenarios every broker sink must pass, written once over [`Broker`] and run by
//! `nats.rs` and `kafka.rs` against their real servers: a broker stopped and restarted under
//! load, and a broker down from the start (the spool fills to its high-water mark, then
//! everything arrives). Every beacon answered 204 must be in the broker; NATS drops copies by
//! message id within its duplicate window (exactly once), Kafka keeps them (counted, each with
//! its record's `beacon-id`).

use crate::common::*;
use beacon_collector::config::Config;
use beacon_collector::Shutdown;
use std::collections::HashSet;
use std::path::Path;
use std::time::Duration;

/// What a broker holds after a scenario.
pub struct Held {
    /// The `k` parameter of every message, copies included.
    pub keys: Vec<String>,
    /// Distinct record ids.
    pub ids: usize,
    /// Every message's id header (`Nats-Msg-Id`, `beacon-id`) equals its record id.
    pub id_headers_match: bool,
    /// Where each key went (its NATS subject, its Kafka message key).
    pub routes: std::collections::HashMap<String, String>,
}

/// One broker the scenarios can stop, start and read.
pub trait Broker: Sized {
    /// For messages.
    const NAME: &'static str;
    /// Copies are dropped by the broker (NATS's duplicate window) rather than kept.
    const EXACTLY_ONCE: bool;
    /// How long the spool may take to drain once the broker is back (a Kafka node needs
    /// seconds to start and elect).
    const BACK_WITHIN: Duration;
    /// One broker listening on `port`, not started.
    fn on(dir: &Path, port: u16) -> Self;
    /// What the sink's config names for the broker on `port`.
    fn endpoint(port: u16) -> String;
    /// A config whose stage feeds the broker at `endpoint` (and the files sink when `files`).
    fn config(dir: &Path, endpoint: String, files: bool) -> Config;
    fn start(&mut self);
    /// SIGTERM.
    fn stop(&mut self);
    /// Everything the stage put in the broker.
    fn read(&self) -> Held;
    /// Where a beacon from page host `site` goes, when the sink decides it from the site.
    fn route_of(site: Option<&str>) -> Option<String>;
}

/// Stops `load`, sends one beacon with a page host (key `site`, `u` = www.example.com: a
/// routed beacon), then stops the collector (gracefully) and the stage. Returns the keys
/// answered 204 (`site` among them), the other answers, and the collector's report.
pub fn finish_with_a_site_beacon(
    load: Load,
    srv: Server,
    stage: Stage,
) -> (Vec<String>, u64, beacon_collector::RunReport) {
    let (mut keys, other) = load.stop();
    let r = get(
        srv.addr,
        "/beacon?k=site&u=https%3A%2F%2Fwww.example.com%2Fcart",
    );
    assert_eq!(r.status, 204);
    keys.push("site".into());
    let report = srv.shutdown(Shutdown::Graceful).unwrap();
    stage.stop();
    (keys, other, report)
}

/// The broker is stopped for `outage` under load, longer than the sink's publish or delivery
/// timeout: the stage holds and retries, the collector's spool absorbs it (no 503), and
/// everything answered 204 arrives (in the files sink too). Returns the copies.
pub fn stopped_and_restarted_under_load<B: Broker>(outage: Duration) -> usize {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut broker = B::on(dir.path(), port);
    broker.start();
    let c = B::config(dir.path(), B::endpoint(port), true);
    let stage = Stage::start(dir.path(), &c);
    let srv = Server::start(c.clone());
    // Paced: the stage writes one message per beacon and the collector takes beacons faster
    // than one broker on this box stores them; the scenario is about losing none.
    let load = Load::paced(srv.addr, 4, Duration::from_millis(1));
    load.wait_accepted(300);
    broker.stop();
    // The fault: down this long.
    std::thread::sleep(outage);
    broker.start();
    load.wait_accepted(300);
    let (keys, other, report) = finish_with_a_site_beacon(load, srv, stage);
    let name = format!("{} restart", B::NAME);
    assert_eq!(
        report.remaining,
        0,
        "{name}: the collector flushed everything; stage log:\n{}",
        Stage::log(dir.path(), 40)
    );
    assert_eq!(other, 0, "{name}: the spool absorbed the outage: no 503s");
    let held = broker.read();
    let copies = assert_arrived::<B>(&name, &keys, 50, &held);
    for (key, site) in [("site", Some("www.example.com")), (keys[0].as_str(), None)] {
        if let Some(want) = B::route_of(site) {
            assert_eq!(held.routes[key], want, "{name}: route of {key}");
        }
    }
    assert_no_loss(&c.processor.files.data_dir, &keys);
    copies
}

/// The broker is down when the stage starts: beacons are answered 204 until the spool reaches
/// its high-water mark (then 503 `spool_full`), and once the broker is up the spool drains and
/// every one of them arrives.
pub fn down_from_the_start<B: Broker>() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut c = B::config(dir.path(), B::endpoint(port), false);
    c.spool.segment_bytes = 8192;
    c.spool.max_bytes = 4 * 8192;
    c.http.retry_after_seconds = 1;
    let stage = Stage::start(dir.path(), &c);
    let srv = Server::start(c.clone());
    let (mut keys, refused) = send_until_refused(srv.addr, 1000);
    assert_eq!(refused.body, b"spool_full");
    let name = format!("{} down from the start", B::NAME);
    eprintln!(
        "{name}: {} beacons answered 204 before the spool was full",
        keys.len()
    );
    assert!(keys.len() > 50);
    let mut broker = B::on(dir.path(), port);
    broker.start();
    keys.extend(accepted_again(srv.addr, B::BACK_WITHIN));
    let report = srv.shutdown(Shutdown::Graceful).unwrap();
    stage.stop();
    assert_eq!(
        report.remaining, 0,
        "{name}: the collector flushed everything"
    );
    assert_arrived::<B>(&name, &keys, 50, &broker.read());
}

/// Every key answered 204 is in the broker (and at least `min_keys` were: the load ran), each
/// message's id header is its record id, and (for a broker that drops copies) nothing is in it
/// twice. Returns the copies.
pub fn assert_arrived<B: Broker>(
    name: &str,
    keys: &[String],
    min_keys: usize,
    held: &Held,
) -> usize {
    let got: HashSet<&str> = held.keys.iter().map(String::as_str).collect();
    let lost: Vec<&String> = keys.iter().filter(|k| !got.contains(k.as_str())).collect();
    let copies = held.keys.len() - held.ids;
    eprintln!(
        "{name}: 204s={} messages={} unique ids={} copies={copies} lost={}",
        keys.len(),
        held.keys.len(),
        held.ids,
        lost.len()
    );
    assert!(keys.len() > min_keys, "{name}: the load did not run");
    assert!(
        lost.is_empty(),
        "{name}: lost {} of {} beacons answered 204, e.g. {:?}",
        lost.len(),
        keys.len(),
        &lost[..lost.len().min(5)]
    );
    assert!(
        held.id_headers_match,
        "{name}: an id header is not the record id"
    );
    if B::EXACTLY_ONCE {
        assert_eq!(copies, 0, "{name}: copies in the broker");
        assert_eq!(got.len(), held.keys.len(), "{name}: a key is in it twice");
    }
    copies
}
