//! `beacon-collector health`: one GET of the collector's own liveness (or readiness) path on
//! its configured listener, for a container's `HEALTHCHECK` or a Kubernetes `exec` probe where
//! the image has no shell and no curl. When the listener requires a PROXY header (behind an
//! NLB with PROXY v2), the probe sends the header a load balancer's own health check sends:
//! v2 `LOCAL`, or v1 `UNKNOWN`.

use crate::config::Config;
use crate::ingest::proxy::Mode;
use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::time::Duration;

/// Which of the collector's health paths to ask.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probe {
    /// `http.live_path` (`/livez`): the event loops answer.
    Live,
    /// `http.ready_path` (`/readyz`): send it traffic.
    Ready,
}

/// The address a probe on this host reaches `listen` at: a wildcard becomes loopback.
pub fn local_addr(listen: SocketAddr) -> SocketAddr {
    let ip = match listen.ip() {
        IpAddr::V4(v) if v.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(v) if v.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, listen.port())
}

/// GETs the probe's path on `config`'s plain listener; the HTTP status.
pub fn run(config: &Config, probe: Probe, timeout: Duration) -> io::Result<u16> {
    let path = match probe {
        Probe::Live => &config.http.live_path,
        Probe::Ready => &config.http.ready_path,
    };
    let addr = local_addr(config.server.listen);
    get(
        addr,
        proxy_header(config.client_ip.proxy_protocol),
        path,
        timeout,
    )
}

/// What a load balancer's health check puts before its request on a PROXY listener: the
/// connection is its own, not a client's.
fn proxy_header(mode: Mode) -> &'static [u8] {
    match mode {
        Mode::Off => b"",
        Mode::V1 => b"PROXY UNKNOWN\r\n",
        // Signature, version 2 + LOCAL, family UNSPEC, no address bytes.
        Mode::V2 | Mode::Any => b"\r\n\r\n\x00\r\nQUIT\n\x20\x00\x00\x00",
    }
}

fn get(addr: SocketAddr, proxy: &[u8], path: &str, timeout: Duration) -> io::Result<u16> {
    let mut s = TcpStream::connect_timeout(&addr, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    s.write_all(proxy)?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: beacon-collector-health\r\nConnection: close\r\n\r\n"
    )?;
    // The status line is all that is needed: "HTTP/1.1 200 OK".
    let mut head = [0u8; 64];
    let mut n = 0;
    while n < 12 {
        match s.read(&mut head[n..])? {
            0 => break,
            m => n += m,
        }
    }
    std::str::from_utf8(&head[..n])
        .ok()
        .and_then(|l| l.strip_prefix("HTTP/1.1 ").or(l.strip_prefix("HTTP/1.0 ")))
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no HTTP status line"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_are_probed_on_loopback() {
        let a = local_addr("0.0.0.0:8080".parse().unwrap());
        assert_eq!(a, "127.0.0.1:8080".parse().unwrap());
        let a = local_addr("[::]:8080".parse().unwrap());
        assert_eq!(a, "[::1]:8080".parse().unwrap());
        let a = local_addr("10.1.2.3:80".parse().unwrap());
        assert_eq!(a, "10.1.2.3:80".parse().unwrap());
    }

    #[test]
    fn the_probe_header_is_what_the_listener_parses_as_a_health_check() {
        for mode in [Mode::V1, Mode::V2, Mode::Any] {
            let h = proxy_header(mode);
            let header = crate::ingest::proxy::parse(h, mode).expect("a valid header");
            assert_eq!(header.len, h.len(), "{mode:?}");
            assert_eq!(header.source, None, "{mode:?}: not a client");
        }
        assert!(proxy_header(Mode::Off).is_empty());
    }
}
