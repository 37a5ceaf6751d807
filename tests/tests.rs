//! Integration tests: real sockets, the real processing stage binary, port 0, temp dirs.

mod common;

#[path = "it/alerts.rs"]
mod alerts;
#[path = "it/beacons.rs"]
mod beacons;
#[path = "it/brokers.rs"]
mod brokers;
#[path = "it/browser.rs"]
mod browser;
#[path = "it/check.rs"]
mod check;
#[path = "it/config.rs"]
mod config;
#[path = "it/container.rs"]
mod container;
#[path = "it/differential.rs"]
mod differential;
#[path = "it/faults.rs"]
mod faults;
#[path = "it/forwarding.rs"]
mod forwarding;
#[path = "it/haproxy.rs"]
mod haproxy;
#[path = "it/house.rs"]
mod house;
#[path = "it/kafka.rs"]
mod kafka;
#[path = "it/kubernetes.rs"]
mod kubernetes;
#[path = "it/lifecycle.rs"]
mod lifecycle;
#[path = "it/limits.rs"]
mod limits;
#[path = "it/nats.rs"]
mod nats;
#[path = "it/proxy.rs"]
mod proxy;
#[path = "it/python.rs"]
mod python;
#[path = "it/readable.rs"]
mod readable;
#[path = "it/restart.rs"]
mod restart;
#[path = "it/timeouts.rs"]
mod timeouts;
#[path = "it/tls.rs"]
mod tls;
#[path = "it/trackers.rs"]
mod trackers;
#[path = "it/trackers_browser.rs"]
mod trackers_browser;
