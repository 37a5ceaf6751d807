//! The Kafka sink against real Apache Kafka brokers (KRaft, from Maven Central by
//! tests/kafka/fetch.sh) started here on loopback ports with a small heap: the shared broker
//! scenarios (`brokers.rs`: a broker stopped under load, a broker down from the start), steady
//! load into files and Kafka, a broker away longer than every timeout, a collector and stage
//! killed and replayed, a 3-node cluster losing a partition leader, and a topic whose settings
//! differ. Every beacon answered 204 must be in the topic; copies are counted and must carry
//! the same `beacon-id`.

use crate::brokers::{self, Broker, Held};
use crate::common::*;
use beacon_collector::config::{Config, SinkKind};
use beacon_collector::Shutdown;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{ClientConfig, TopicPartitionList};
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The broker's jars: fetched once per test run by tests/kafka/fetch.sh (a no-op when
/// `.ci/run` already did).
fn libs() -> PathBuf {
    static FETCH: std::sync::Once = std::sync::Once::new();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = root.join("target/kafka-libs");
    FETCH.call_once(|| {
        let ok = Command::new("bash")
            .arg(root.join("tests/kafka/fetch.sh"))
            .arg(&dir)
            .status()
            .expect("bash");
        assert!(
            ok.success(),
            "tests/kafka/fetch.sh failed: it needs Java 17 and Maven (.ci/run installs them)"
        );
    });
    dir
}

/// One Kafka node (broker and controller in one process, KRaft), restartable on the same
/// ports and log directory. Kafka's defaults otherwise, `auto.create.topics.enable` among
/// them: the sink must create its topics with its own settings, not the broker's.
struct Kafka {
    id: u32,
    port: u16,
    props: PathBuf,
    process: Daemon,
}

impl Kafka {
    fn single(dir: &Path) -> Kafka {
        Self::cluster_on(dir, &[free_port()]).pop().unwrap()
    }

    /// `n` nodes voting in one KRaft quorum, formatted with one cluster id.
    fn cluster(dir: &Path, n: usize) -> Vec<Kafka> {
        let ports: Vec<u16> = (0..n).map(|_| free_port()).collect();
        Self::cluster_on(dir, &ports)
    }

    fn cluster_on(dir: &Path, ports: &[u16]) -> Vec<Kafka> {
        let controllers: Vec<u16> = ports.iter().map(|_| free_port()).collect();
        let voters: Vec<String> = controllers
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{}@127.0.0.1:{c}", i + 1))
            .collect();
        let n = ports.len();
        let cluster_id = "YmVhY29uLWNvbGxlY3Rvcg"; // 22 base64 characters, any will do
        let nodes: Vec<Kafka> = ports
            .iter()
            .enumerate()
            .map(|(i, &port)| {
                let id = i as u32 + 1;
                let data = dir.join(format!("kafka-{id}"));
                let props = dir.join(format!("kafka-{id}.properties"));
                std::fs::write(
                    &props,
                    format!(
                        "process.roles=broker,controller\nnode.id={id}\n\
                         controller.quorum.voters={}\n\
                         listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{}\n\
                         advertised.listeners=PLAINTEXT://127.0.0.1:{port}\n\
                         controller.listener.names=CONTROLLER\n\
                         listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT\n\
                         inter.broker.listener.name=PLAINTEXT\nlog.dirs={}\n\
                         num.partitions=1\noffsets.topic.replication.factor={n}\n\
                         transaction.state.log.replication.factor={n}\n\
                         transaction.state.log.min.isr=1\ngroup.initial.rebalance.delay.ms=0\n",
                        voters.join(","),
                        controllers[i],
                        data.display()
                    ),
                )
                .unwrap();
                Kafka {
                    id,
                    port,
                    props,
                    process: Daemon::new(dir.join(format!("kafka-{id}.log"))),
                }
            })
            .collect();
        // Formatting is a JVM start each: in parallel.
        let formats: Vec<Child> = nodes
            .iter()
            .map(|k| {
                Command::new("java")
                    .arg("-cp")
                    .arg(format!("{}/*", libs().display()))
                    .args(["kafka.tools.StorageTool", "format", "-t", cluster_id, "-c"])
                    .arg(&k.props)
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("java not found: .ci/run installs a JDK")
            })
            .collect();
        for mut f in formats {
            assert!(f.wait().unwrap().success(), "kafka storage format failed");
        }
        nodes
    }

    fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn start(&mut self) {
        self.spawn();
        self.wait_ready();
    }

    /// Starts the JVM without waiting: a cluster's nodes open their broker port only once a
    /// quorum of controllers is up, so they are all spawned first.
    fn spawn(&mut self) {
        self.process.spawn(
            Command::new("java")
                .args(["-Xms128m", "-Xmx384m", "-XX:+UseSerialGC"])
                .arg("-cp")
                .arg(format!("{}/*", libs().display()))
                .arg("kafka.Kafka")
                .arg(&self.props),
            "java not found: .ci/run installs a JDK",
        );
    }

    fn wait_ready(&self) {
        wait_listening(self.port, Duration::from_secs(60));
    }

    fn signal(&mut self, sig: i32) {
        self.process.signal(sig);
    }
}

impl Broker for Kafka {
    const NAME: &'static str = "kafka";
    const EXACTLY_ONCE: bool = false;
    const BACK_WITHIN: Duration = Duration::from_secs(60);

    fn on(dir: &Path, port: u16) -> Self {
        Kafka::cluster_on(dir, &[port]).pop().unwrap()
    }

    fn endpoint(port: u16) -> String {
        format!("127.0.0.1:{port}")
    }

    fn config(dir: &Path, endpoint: String, files: bool) -> Config {
        kafka_config(dir, vec![endpoint], files)
    }

    fn start(&mut self) {
        Kafka::start(self);
    }

    fn stop(&mut self) {
        self.signal(libc::SIGTERM);
    }

    fn read(&self) -> Held {
        Held::from(&read_topic(&[self.addr()], "beacons"))
    }

    /// The message key is the site; a beacon without one is keyed by its record id.
    fn route_of(site: Option<&str>) -> Option<String> {
        site.map(str::to_string)
    }
}

/// A config whose stage produces to `brokers` (and writes files too when `files`).
fn kafka_config(dir: &Path, brokers: Vec<String>, files: bool) -> Config {
    let mut c = test_config(dir);
    c.processor.sinks = if files {
        vec![SinkKind::Files, SinkKind::Kafka]
    } else {
        vec![SinkKind::Kafka]
    };
    c.processor.kafka.bootstrap_servers = brokers;
    c.processor.kafka.partitions = 3;
    // A broker needs seconds to start and elect; the collector's flush waits for it.
    c.shutdown.flush_timeout_seconds = 60;
    c
}

/// What the topic holds.
struct Contents {
    /// Messages read.
    messages: usize,
    /// `k` parameter of each message.
    keys: Vec<String>,
    /// Record ids (the `id` field).
    ids: HashSet<String>,
    /// Every `beacon-id` header equals the record's id.
    header_matches: bool,
    /// Message key by beacon key.
    message_keys: HashMap<String, String>,
    /// The `event-id` header of every message that has one.
    event_ids: Vec<String>,
}

/// Reads every message of `topic` from the start to the high watermarks.
fn read_topic(brokers: &[String], topic: &str) -> Contents {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers.join(","))
        .set("group.id", "test-reader")
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(90);
    // A cluster that just lost a node answers metadata once it elected new leaders.
    let (partitions, ends) = loop {
        let got = (|| {
            let md = c.fetch_metadata(Some(topic), Duration::from_secs(5)).ok()?;
            let t = md.topics().iter().find(|t| t.name() == topic)?;
            let n = t.partitions().len() as i32;
            let ends: Option<Vec<i64>> = (0..n)
                .map(|p| {
                    c.fetch_watermarks(topic, p, Duration::from_secs(5))
                        .ok()
                        .map(|w| w.1)
                })
                .collect();
            Some((n, ends?))
        })();
        match got {
            Some(x) if x.0 > 0 => break x,
            _ if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(500)),
            _ => panic!("topic {topic} unreadable for 90 s"),
        }
    };
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, rdkafka::Offset::Beginning)
            .unwrap();
    }
    c.assign(&tpl).unwrap();
    let total: i64 = ends.iter().sum();
    let mut out = Contents {
        messages: 0,
        keys: Vec::new(),
        ids: HashSet::new(),
        header_matches: true,
        message_keys: HashMap::new(),
        event_ids: Vec::new(),
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while (out.messages as i64) < total {
        assert!(
            Instant::now() < deadline,
            "read {} of {total} messages",
            out.messages
        );
        let Some(m) = c.poll(Duration::from_millis(500)) else {
            continue;
        };
        let m = m.unwrap();
        let v: serde_json::Value = serde_json::from_slice(m.payload().unwrap()).unwrap();
        let id = v["id"].as_str().unwrap().to_string();
        let header = m.headers().and_then(|h| {
            h.iter()
                .find(|h| h.key == "beacon-id")
                .and_then(|h| h.value)
                .map(|v| String::from_utf8_lossy(v).to_string())
        });
        if let Some(ev) = m.headers().and_then(|h| {
            h.iter()
                .find(|h| h.key == "event-id")
                .and_then(|h| h.value)
                .map(|v| String::from_utf8_lossy(v).to_string())
        }) {
            out.event_ids.push(ev);
        }
        if header.as_deref() != Some(id.as_str()) {
            eprintln!("beacon-id {header:?} for record {id}");
            out.header_matches = false;
        }
        let key = param(&v, "k")
            .and_then(|k| k.as_str())
            .unwrap_or_default()
            .to_string();
        out.message_keys.insert(
            key.clone(),
            String::from_utf8_lossy(m.key().unwrap_or_default()).to_string(),
        );
        out.keys.push(key);
        out.ids.insert(id);
        out.messages += 1;
    }
    out
}

impl From<&Contents> for Held {
    fn from(s: &Contents) -> Held {
        assert_eq!(s.messages, s.keys.len());
        Held {
            keys: s.keys.clone(),
            ids: s.ids.len(),
            id_headers_match: s.header_matches,
            routes: s.message_keys.clone(),
        }
    }
}

/// Every key answered 204 is in the topic; returns the copies (messages beyond one per id).
fn assert_none_lost(name: &str, keys: &[String], other: u64, s: &Contents) -> usize {
    eprintln!("{name}: answers other than 204: {other}");
    brokers::assert_arrived::<Kafka>(name, keys, 100, &Held::from(s))
}

/// Steady load into files and Kafka: every 204'd beacon is in the topic once, with its record
/// id in `beacon-id` and its site as the message key, and in the files.
#[test]
fn steady_load_into_files_and_kafka_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut kafka = Kafka::single(dir.path());
    kafka.start();
    let mut c = kafka_config(dir.path(), vec![kafka.addr()], true);
    c.processor.admin.enabled = true;
    c.processor.admin.listen = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let stage = Stage::start(dir.path(), &c);
    let srv = Server::start(c.clone());
    let load = Load::paced(srv.addr, 4, Duration::from_millis(1));
    std::thread::sleep(Duration::from_secs(3));
    // The stage exports every Kafka metric the alerts and dashboard read; one broker is up.
    let scrape =
        String::from_utf8_lossy(&get(c.processor.admin.listen, "/metrics").body).to_string();
    for name in crate::alerts::metrics_read_by_rules_and_dashboard()
        .iter()
        .filter(|n| n.starts_with("beacon_sink_kafka_"))
    {
        assert!(
            scrape.contains(name.as_str()),
            "the Kafka stage exports {name}:\n{scrape}"
        );
    }
    assert!(
        scrape.contains("beacon_sink_kafka_brokers_up 1"),
        "{scrape}"
    );
    let (keys, other, report) = crate::brokers::finish_with_a_site_beacon(load, srv, stage);
    assert_eq!(report.remaining, 0, "the collector flushed everything");
    assert_eq!(other, 0);
    let s = read_topic(&[kafka.addr()], "beacons");
    let dups = assert_none_lost("steady load", &keys, other, &s);
    assert_eq!(dups, 0, "no copies without a fault");
    assert_eq!(s.message_keys["site"], "www.example.com");
    assert_no_loss(&c.processor.files.data_dir, &keys);
}

/// After a broker outage under load: stops the load, the collector (which must flush
/// everything) and the stage; no 503s (the spool absorbed the outage), every 204 in the topic.
/// Returns the copies.
fn outage_accounting(
    name: &str,
    load: Load,
    srv: Server,
    stage: Stage,
    dir: &Path,
    kafka: &Kafka,
) -> usize {
    let (keys, other) = load.stop();
    let report = srv.shutdown(Shutdown::Graceful).unwrap();
    stage.stop();
    assert_eq!(
        report.remaining,
        0,
        "{name}: the collector flushed everything; stage log:\n{}",
        Stage::log(dir, 40)
    );
    assert_eq!(other, 0, "{name}: the spool absorbed the outage: no 503s");
    let s = read_topic(&[kafka.addr()], "beacons");
    assert_none_lost(name, &keys, other, &s)
}

/// The broker is stopped (SIGTERM) for a few seconds under load: the stage keeps running,
/// production resumes by itself, nothing is lost.
#[test]
fn broker_stopped_and_restarted_under_load_loses_nothing() {
    let copies = brokers::stopped_and_restarted_under_load::<Kafka>(Duration::from_secs(4));
    eprintln!("broker restart: {copies} copies (a batch sent again after the outage)");
}

/// The broker is away (SIGTERM) for longer than both the producer's delivery timeout (2 s) and
/// the collector's ack timeout (10 s), under load: the stage holds the batches Kafka did not
/// take and retries their records, its heartbeats keep the collector's connection, and when
/// the broker is back everything arrives with at most one copy of what was in flight (the
/// sink's max_inflight). Giving the batches back instead cost 45,750 copies for 180,001
/// beacons in a 53 s outage. The stage says when Kafka takes records again.
#[test]
fn broker_away_longer_than_every_timeout_costs_at_most_one_copy_of_what_was_in_flight() {
    let dir = tempfile::tempdir().unwrap();
    let mut kafka = Kafka::single(dir.path());
    kafka.start();
    let mut c = kafka_config(dir.path(), vec![kafka.addr()], false);
    c.processor.kafka.delivery_timeout_ms = 2000;
    c.processor.kafka.max_inflight = 2000;
    c.forward.ack_timeout_seconds = 10;
    let stage = Stage::start(dir.path(), &c);
    let srv = Server::start(c.clone());
    let load = Load::paced(srv.addr, 4, Duration::from_millis(1));
    std::thread::sleep(Duration::from_secs(2));
    kafka.signal(libc::SIGTERM);
    std::thread::sleep(Duration::from_secs(15));
    kafka.start();
    // Wait until production resumed (by the stage's own word), then a little more load.
    wait_until(Duration::from_secs(120), || {
        Stage::log(dir.path(), 400).contains("Kafka is taking records again")
    });
    std::thread::sleep(Duration::from_secs(1));
    let dups = outage_accounting(
        "broker away past every timeout",
        load,
        srv,
        stage,
        dir.path(),
        &kafka,
    );
    assert!(
        dups <= c.processor.kafka.max_inflight,
        "{dups} copies: more than one of what was in flight"
    );
    let log = Stage::log(dir.path(), 100_000);
    let warnings = log
        .lines()
        .filter(|l| l.contains("Kafka did not take every record"))
        .count();
    assert!(
        warnings <= 10,
        "{warnings} warnings in a 15 s outage: not throttled"
    );
}

/// The stage starts while no broker runs: the collector answers 204 until the spool reaches
/// its high-water mark, then 503 `spool_full`; when the broker comes, everything arrives.
#[test]
fn broker_down_from_the_start_fills_the_spool_then_everything_arrives() {
    brokers::down_from_the_start::<Kafka>();
}

/// The collector and the stage are both killed (-9) under load and restarted: the collector
/// replays what its checkpoint did not cover, the new stage produces it again. Nothing is
/// lost; the copies in the topic carry the same `beacon-id` as their first (a consumer drops
/// them by it).
#[test]
fn replay_after_a_crash_loses_nothing_and_copies_share_their_beacon_id() {
    let dir = tempfile::tempdir().unwrap();
    let mut kafka = Kafka::single(dir.path());
    kafka.start();
    let c = kafka_config(dir.path(), vec![kafka.addr()], false);
    let mut stage = Stage::start(dir.path(), &c);
    let bin = Binary::serve(dir.path(), &c);
    let addr = bin.listening();
    let load = Load::paced(addr, 4, Duration::from_millis(1));
    std::thread::sleep(Duration::from_millis(2500));
    drop(bin); // SIGKILL: the spool's checkpoint is up to a second old
    stage.kill9();
    let stage = Stage::start(dir.path(), &c);
    let mut bin = Binary::serve(dir.path(), &c);
    *load.addr.lock().unwrap() = bin.listening();
    std::thread::sleep(Duration::from_millis(1500));
    let (keys, other) = load.stop();
    bin.signal(libc::SIGINT);
    assert!(bin.wait(Duration::from_secs(60)).success());
    stage.stop();
    let s = read_topic(&[kafka.addr()], "beacons");
    let dups = assert_none_lost("collector + stage kill -9", &keys, other, &s);
    eprintln!("replay: {dups} copies in the topic, every one with its record's beacon-id");
    assert!(dups > 0, "no replay reached Kafka: the test proved nothing");

    // examples/kafka-consumer prints each beacon once and says how many copies it dropped.
    let out = Command::new(example("kafka-consumer"))
        .args([
            "--brokers",
            &kafka.addr(),
            "--group",
            "test",
            "--exit-when-idle",
            "3",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<serde_json::Value> = out
        .stdout
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_slice(l).unwrap())
        .collect();
    let ids: HashSet<&str> = lines.iter().map(|v| v["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), lines.len(), "the consumer printed a copy");
    assert_eq!(ids.len(), s.ids.len(), "the consumer printed every beacon");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!(
            "printed {} beacons, dropped {dups} copies",
            s.ids.len()
        )),
        "{err}"
    );
}

/// A 3-node cluster, replication 3 (min.insync 2): the leader of a partition is killed (-9)
/// under load. Nothing is lost; copies are counted and reported.
#[test]
fn cluster_loses_a_partition_leader_under_load_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut nodes = Kafka::cluster(dir.path(), 3);
    for n in &mut nodes {
        n.spawn();
    }
    for n in &nodes {
        n.wait_ready();
    }
    let addrs: Vec<String> = nodes.iter().map(Kafka::addr).collect();
    let mut c = kafka_config(dir.path(), addrs.clone(), false);
    c.processor.kafka.replication_factor = 3;
    c.processor.kafka.min_insync_replicas = 2;
    let stage = Stage::start(dir.path(), &c);
    let srv = Server::start(c.clone());
    // The topic exists once a beacon went through (the cluster elects a controller first).
    assert_eq!(get(srv.addr, "/beacon?k=first").status, 204);
    let leader = wait_for_leader(&addrs, "beacons", 0);
    let load = Load::paced(srv.addr, 4, Duration::from_millis(1));
    std::thread::sleep(Duration::from_secs(2));
    eprintln!("killing node {leader}, leader of beacons/0 (kill -9)");
    let victim = nodes.iter_mut().find(|n| n.id == leader as u32).unwrap();
    victim.signal(libc::SIGKILL);
    std::thread::sleep(Duration::from_secs(4));
    let (mut keys, other) = load.stop();
    keys.push("first".into());
    let report = srv.shutdown(Shutdown::Graceful).unwrap();
    stage.stop();
    assert_eq!(
        report.remaining,
        0,
        "the collector flushed everything; stage log:\n{}",
        Stage::log(dir.path(), 40)
    );
    let alive: Vec<String> = nodes
        .iter()
        .filter(|n| n.process.running())
        .map(Kafka::addr)
        .collect();
    assert_ne!(
        wait_for_leader(&alive, "beacons", 0),
        leader,
        "a new leader"
    );
    let s = read_topic(&alive, "beacons");
    let dups = assert_none_lost("partition leader killed", &keys, other, &s);
    eprintln!("partition leader killed: {dups} copies in the topic");
}

/// The leader of `topic`/`partition`, once the cluster names one.
fn wait_for_leader(brokers: &[String], topic: &str, partition: i32) -> i32 {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers.join(","))
        .create()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(md) = c.fetch_metadata(Some(topic), Duration::from_secs(5)) {
            let leader = md
                .topics()
                .iter()
                .find(|t| t.name() == topic)
                .and_then(|t| t.partitions().iter().find(|p| p.id() == partition))
                .map(|p| p.leader())
                .filter(|&l| l >= 0);
            if let Some(l) = leader {
                return l;
            }
        }
        assert!(
            Instant::now() < deadline,
            "no leader for {topic}/{partition}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// An existing topic with other settings: reported key by key with the fix; `fail` exits
/// without producing, `warn` produces anyway.
#[test]
fn topic_with_other_settings_is_reported_key_by_key() {
    let dir = tempfile::tempdir().unwrap();
    let mut kafka = Kafka::single(dir.path());
    kafka.start();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
        let admin: AdminClient<rdkafka::client::DefaultClientContext> = ClientConfig::new()
            .set("bootstrap.servers", kafka.addr())
            .create()
            .unwrap();
        let t =
            NewTopic::new("beacons", 2, TopicReplication::Fixed(1)).set("retention.ms", "3600000");
        let r = admin
            .create_topics([&t], &AdminOptions::new())
            .await
            .unwrap();
        assert!(r[0].is_ok(), "{r:?}");
    });
    let mut c = kafka_config(dir.path(), vec![kafka.addr()], false);
    let (ok, text) = process_once(dir.path(), &c);
    assert!(!ok, "{text}");
    for s in [
        "topic beacons exists with settings that differ",
        "partitions: topic has 2, config says 3",
        "retention_seconds: topic has retention.ms = 3600000, config says 604800",
        "set processor.kafka.topic_mismatch",
    ] {
        assert!(text.contains(s), "{s:?} missing from: {text}");
    }

    // "warn": the same report, and the beacons go in anyway.
    c.processor.kafka.topic_mismatch = beacon_collector::config::OnMismatch::Warn;
    let stage = Stage::start(dir.path(), &c);
    let srv = Server::start(c.clone());
    let mut keys = Vec::new();
    let mut conn = Conn::open(srv.addr);
    for i in 0..150 {
        let k = format!("w-{i}");
        let raw = format!("GET /beacon?k={k} HTTP/1.1\r\nHost: t\r\n\r\n");
        assert_eq!(conn.request(raw.as_bytes()).unwrap().status, 204);
        keys.push(k);
    }
    let report = srv.shutdown(Shutdown::Graceful).unwrap();
    stage.stop();
    assert_eq!(report.remaining, 0);
    assert!(Stage::log(dir.path(), 200).contains("partitions: topic has 2, config says 3"));
    let s = read_topic(&[kafka.addr()], "beacons");
    assert_none_lost("topic mismatch, warn", &keys, 0, &s);
}

/// With `create_topic = false` a missing topic stops the stage with the fix, and asking for
/// its metadata does not make the broker create it (Kafka's default `auto.create.topics.enable`
/// would, with one partition): the topic is still missing afterwards.
#[test]
fn a_missing_topic_is_not_created_by_the_broker_behind_the_sinks_back() {
    let dir = tempfile::tempdir().unwrap();
    let mut kafka = Kafka::single(dir.path());
    kafka.start();
    let mut c = kafka_config(dir.path(), vec![kafka.addr()], false);
    c.processor.kafka.create_topic = false;
    let (ok, text) = process_once(dir.path(), &c);
    assert!(!ok, "{text}");
    assert!(
        text.contains("topic beacons does not exist and processor.kafka.create_topic = false"),
        "{text}"
    );
    let probe: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", kafka.addr())
        .create()
        .unwrap();
    let md = probe.fetch_metadata(None, Duration::from_secs(10)).unwrap();
    assert!(
        md.topics().iter().all(|t| t.name() != "beacons"),
        "the broker created the topic"
    );
}

/// A topic template with a client-chosen value (`{param.t}`) creates at most `max_topics`
/// topics: records whose topic would be one more go to the overflow topic, counted. A beacon
/// without a site is keyed by its record id, not by an empty key (one partition for all).
#[test]
fn client_chosen_topics_are_capped_and_siteless_beacons_keyed_by_id() {
    let dir = tempfile::tempdir().unwrap();
    let mut kafka = Kafka::single(dir.path());
    kafka.start();
    let mut c = kafka_config(dir.path(), vec![kafka.addr()], false);
    c.processor.kafka.topic = "beacons.{param.t}".into();
    c.processor.kafka.max_topics = 2;
    c.processor.kafka.overflow_topic = "beacons.overflow".into();
    let stage = Stage::start(dir.path(), &c);
    let srv = Server::start(c.clone());
    let mut keys = Vec::new();
    for t in ["a", "b", "a", "c", "d", "b"] {
        let k = format!("cap-{t}-{}", keys.len());
        assert_eq!(get(srv.addr, &format!("/beacon?k={k}&t={t}")).status, 204);
        keys.push(k);
    }
    let report = srv.shutdown(Shutdown::Graceful).unwrap();
    stage.stop();
    assert_eq!(report.remaining, 0);
    let brokers = [kafka.addr()];
    let sorted = |c: &Contents| {
        let mut k = c.keys.clone();
        k.sort();
        k
    };
    let a = read_topic(&brokers, "beacons.a");
    let b = read_topic(&brokers, "beacons.b");
    let over = read_topic(&brokers, "beacons.overflow");
    assert_eq!(sorted(&a), ["cap-a-0", "cap-a-2"]);
    assert_eq!(sorted(&b), ["cap-b-1", "cap-b-5"]);
    assert_eq!(sorted(&over), ["cap-c-3", "cap-d-4"]);
    // No `u`, no Referer: no site. Keyed by the record id (a text UUID), one per beacon.
    for c in [&a, &b, &over] {
        for (k, key) in &c.message_keys {
            assert!(c.ids.contains(key), "{k}: key {key:?} is not its record id");
        }
    }
}

/// A sink that can never work does not look healthy: `replication_factor = 3` against one
/// broker is retried (a cluster may be starting) but the stage says at once what to change, in
/// its log and its `/readyz` (503), and `beacon_sink_stalled{sink="kafka"}` is 1 for the
/// alert rule. The collector keeps answering 204 into its spool meanwhile.
#[test]
fn a_topic_that_cannot_be_created_stalls_the_sink_visibly() {
    let dir = tempfile::tempdir().unwrap();
    let mut kafka = Kafka::single(dir.path());
    kafka.start();
    let mut c = kafka_config(dir.path(), vec![kafka.addr()], false);
    c.processor.kafka.replication_factor = 3;
    // Nothing can be delivered: the shutdown does not wait for it (the beacon stays spooled).
    c.shutdown.flush_timeout_seconds = 1;
    c.processor.admin.enabled = true;
    c.processor.admin.listen = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let stage = Stage::start(dir.path(), &c);
    let srv = Server::start(c.clone());
    assert_eq!(get(srv.addr, "/beacon?k=waits").status, 204);
    let admin = c.processor.admin.listen;
    let mut ready = None;
    wait_until(Duration::from_secs(60), || {
        let Ok(s) = std::net::TcpStream::connect(admin) else {
            return false;
        };
        drop(s);
        let r = get(admin, "/readyz");
        let done = r.status == 503;
        ready = Some(r);
        done
    });
    let body = String::from_utf8_lossy(&ready.unwrap().body).to_string();
    assert!(body.contains("replication_factor 3"), "{body}");
    assert!(body.contains("fix:"), "{body}");
    let metrics = String::from_utf8_lossy(&get(admin, "/metrics").body).to_string();
    assert!(
        metrics.contains("beacon_sink_stalled{sink=\"kafka\"} 1"),
        "{metrics}"
    );
    assert!(Stage::log(dir.path(), 200).contains("sink stalled"));
    srv.shutdown(Shutdown::Fast).unwrap();
    stage.stop();
}

/// A tracker's retry (the same PostHog event sent twice) is two messages (Kafka keeps copies)
/// with the tracker's id in an `event-id` header beside each one's own `beacon-id`: a consumer
/// drops the retry by it.
#[test]
fn a_trackers_event_id_travels_as_a_header() {
    let dir = tempfile::tempdir().unwrap();
    let mut kafka = Kafka::single(dir.path());
    kafka.start();
    let c = kafka_config(dir.path(), vec![kafka.addr()], false);
    let stage = Stage::start(dir.path(), &c);
    let srv = Server::start(c.clone());
    let ev = br#"[{"event":"$pageview","uuid":"0193a0c4-4444-7000-8000-000000000001"}]"#;
    for _ in 0..2 {
        assert_eq!(
            post(srv.addr, "/e/?k=retry", "application/json", ev).status,
            200
        );
    }
    let report = srv.shutdown(Shutdown::Graceful).unwrap();
    stage.stop();
    assert_eq!(report.remaining, 0);
    let s = read_topic(&[kafka.addr()], "beacons");
    assert_eq!(s.messages, 2);
    assert_eq!(s.ids.len(), 2, "each its own beacon-id");
    assert_eq!(
        s.event_ids, ["0193a0c4-4444-7000-8000-000000000001"; 2],
        "the tracker's id on both"
    );
}
