//! `[tls]`: the HTTPS listener beside the plain one, its certificates (one default, more by
//! SNI name), versions, ALPN and session resumption. The files are read and checked by
//! [`crate::tls`] at validation, so a missing or mismatched pair exits 64 before binding.

use super::error::{positive, ConfigError};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::PathBuf;

/// Lowest TLS version a client may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum MinVersion {
    /// TLS 1.2 and 1.3 (every browser of the last ten years).
    #[default]
    #[serde(rename = "1.2")]
    Tls12,
    /// TLS 1.3 only.
    #[serde(rename = "1.3")]
    Tls13,
}

/// One more certificate, chosen by the name the client asks for (SNI).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SniCertificate {
    /// Host names this certificate answers (exact, or `*.example.com` for one label).
    pub server_names: Vec<String>,
    /// PEM file: the certificate, then its intermediates (full chain).
    pub cert_file: PathBuf,
    /// PEM file: the private key (PKCS#8, SEC1 or PKCS#1; ECDSA, RSA or Ed25519).
    pub key_file: PathBuf,
}

/// The HTTPS listener.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// Serve HTTPS on `listen` (the plain `server.listen` keeps serving beside it).
    pub enabled: bool,
    /// Address of the HTTPS listener, `IP:PORT`: its own `SO_REUSEPORT` socket per worker,
    /// with `server.*`'s backlog, keepalive and connection cap, and `client_ip.proxy_protocol`.
    pub listen: SocketAddr,
    /// PEM file: the default certificate, then its intermediates (full chain).
    pub cert_file: PathBuf,
    /// PEM file: its private key.
    pub key_file: PathBuf,
    /// Lowest version accepted: `"1.2"` or `"1.3"`. Older offers are refused and counted.
    pub min_version: MinVersion,
    /// ALPN protocols offered, in order of preference. Only `http/1.1` is served.
    pub alpn: Vec<String>,
    /// Resumption without a full handshake (TLS 1.3 tickets, TLS 1.2 tickets and ids).
    pub session_tickets: bool,
    /// A key file shared by every collector behind one balancer, so a browser resumes on
    /// any of them (48 or 80 random bytes, as nginx's `ssl_session_ticket_key`:
    /// `openssl rand 80 > ticket.key`). Empty: a random key per process, rotated every 6 h.
    pub ticket_key_file: PathBuf,
    /// TLS connections per worker accepted and not yet answered (ClientHello awaited or being
    /// computed). Past it, the worker stops accepting TLS connections until one is answered
    /// (the kernel's backlog holds the rest), so a flood of new connections cannot starve the
    /// keep-alive connections already served.
    pub max_handshakes_per_worker: usize,
    /// More certificates, chosen by SNI; the default one answers every other name.
    pub certificates: Vec<SniCertificate>,
}

impl Default for TlsConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            listen: "0.0.0.0:8443".parse().expect("static address"),
            cert_file: PathBuf::new(),
            key_file: PathBuf::new(),
            min_version: MinVersion::Tls12,
            alpn: vec!["http/1.1".to_string()],
            session_tickets: true,
            ticket_key_file: PathBuf::new(),
            max_handshakes_per_worker: 64,
            certificates: Vec::new(),
        }
    }
}

impl TlsConfig {
    /// Checks the keys, then reads the files (only when enabled): a pair that does not load
    /// or whose key does not match its certificate is refused here, before anything binds.
    pub(crate) fn validate(&self, plain: SocketAddr) -> Result<(), ConfigError> {
        positive(
            "tls.max_handshakes_per_worker",
            self.max_handshakes_per_worker as u64,
        )?;
        for p in &self.alpn {
            if p != "http/1.1" {
                return Err(ConfigError::new(
                    "tls.alpn",
                    format!("`{p}` is not served (the collector speaks HTTP/1.1)"),
                    "use [\"http/1.1\"], or [] to negotiate no ALPN",
                ));
            }
        }
        for (i, c) in self.certificates.iter().enumerate() {
            if c.server_names.is_empty() {
                return Err(ConfigError::new(
                    &format!("tls.certificates[{i}].server_names"),
                    "empty",
                    "list the host names this certificate answers, e.g. [\"beacon.example.com\"]",
                ));
            }
        }
        if !self.enabled {
            return Ok(());
        }
        if self.listen == plain && plain.port() != 0 {
            return Err(ConfigError::new(
                "tls.listen",
                "same address as server.listen",
                "give HTTPS its own port (8443 by default; 443 when it faces browsers)",
            ));
        }
        for (key, v) in [
            ("tls.cert_file", &self.cert_file),
            ("tls.key_file", &self.key_file),
        ] {
            if v.as_os_str().is_empty() {
                return Err(ConfigError::new(
                    key,
                    "empty while tls.enabled = true",
                    "give the path of a PEM file (certificate with its chain; its private key)",
                ));
            }
        }
        crate::tls::Certificates::load(self).map(|_| ())?;
        if !self.ticket_key_file.as_os_str().is_empty() {
            crate::tls::ticket::FileTicketer::load(&self.ticket_key_file)?;
        }
        Ok(())
    }
}
