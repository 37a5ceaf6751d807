//! Server-side cost of TLS handshakes with one rustls crypto provider (chosen by cargo
//! feature): full TLS 1.3 handshakes with a browser's key shares (X25519; and Chrome's
//! X25519MLKEM768 first, `full-pq`, where the provider has it) and resumed ones, plus one
//! request and its 204, for an
//! ECDSA P-256 and an RSA 2048 certificate, in memory (no sockets): only the server's calls are
//! timed. Prints one line per case: handshakes per server CPU-second and microseconds each.
//!
//! Usage: tls-provider ECDSA_CERT ECDSA_KEY RSA_CERT RSA_KEY [N]
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, ServerConfig, ServerConnection};
use std::io::{Read, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[cfg(feature = "ring")]
const PROVIDER: &str = "ring";
#[cfg(all(feature = "aws-lc-rs", not(feature = "ring")))]
const PROVIDER: &str = "aws-lc-rs";

// rustls marks ring's provider deprecated: it has no post-quantum key exchange
// (X25519MLKEM768, which Chrome offers first). That is one of the things measured here.
#[allow(deprecated)]
fn provider() -> CryptoProvider {
    #[cfg(feature = "ring")]
    return rustls::crypto::ring::default_provider();
    #[cfg(all(feature = "aws-lc-rs", not(feature = "ring")))]
    return rustls::crypto::aws_lc_rs::default_provider();
}

/// Accepts any server certificate: the measurement is the server's, not the client's checks.
#[derive(Debug)]
struct AnyCert(Arc<CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCert {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }
    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

fn server(cert: &str, key: &str) -> Arc<ServerConfig> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .expect("certificate file")
        .collect::<Result<_, _>>()
        .expect("PEM certificates");
    let key = PrivateKeyDer::from_pem_file(key).expect("PEM private key");
    let mut s = ServerConfig::builder_with_provider(Arc::new(provider()))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .expect("certificate and key match");
    s.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(s)
}

/// The key exchange groups a browser offers, in its order: Chrome sends X25519MLKEM768 and
/// X25519 key shares (`pq`); without post-quantum, X25519 alone. (rustls's own client default
/// puts secp384r1 first, which no browser does.)
fn client_groups(pq: bool) -> Vec<&'static dyn rustls::crypto::SupportedKxGroup> {
    #[cfg(feature = "ring")]
    let (x25519, mlkem): (_, Option<&'static dyn rustls::crypto::SupportedKxGroup>) =
        (rustls::crypto::ring::kx_group::X25519, None);
    #[cfg(all(feature = "aws-lc-rs", not(feature = "ring")))]
    let (x25519, mlkem) = (
        rustls::crypto::aws_lc_rs::kx_group::X25519,
        Some(rustls::crypto::aws_lc_rs::kx_group::X25519MLKEM768),
    );
    match (pq, mlkem) {
        (true, Some(m)) => vec![m, x25519],
        _ => vec![x25519],
    }
}

fn client(pq: bool) -> Arc<ClientConfig> {
    let mut p = provider();
    p.kx_groups = client_groups(pq);
    let p = Arc::new(p);
    let mut c = ClientConfig::builder_with_provider(p.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCert(p)))
        .with_no_client_auth();
    c.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(c)
}

const REQ: &[u8] =
    b"GET /beacon?u=https%3A%2F%2Fexample.com&t_done=123 HTTP/1.1\r\nHost: x\r\n\r\n";
const ANS: &[u8] = b"HTTP/1.1 204 No Content\r\n\r\n";

/// One handshake and one request/answer; returns the time spent in the server's calls, whether
/// the session was resumed, and the key exchange group.
fn exchange(sc: &Arc<ServerConfig>, cc: &Arc<ClientConfig>) -> (Duration, bool, String) {
    let t = Instant::now();
    let mut s = ServerConnection::new(sc.clone()).unwrap();
    let mut spent = t.elapsed();
    let mut c = ClientConnection::new(cc.clone(), "localhost".try_into().unwrap()).unwrap();
    c.writer().write_all(REQ).unwrap();
    let mut buf = Vec::new();
    let mut answered = false;
    for _ in 0..10 {
        buf.clear();
        while c.wants_write() {
            c.write_tls(&mut buf).unwrap();
        }
        let t = Instant::now();
        if !buf.is_empty() {
            s.read_tls(&mut &buf[..]).unwrap();
            s.process_new_packets().unwrap();
        }
        let mut p = [0u8; 512];
        if let Ok(k) = s.reader().read(&mut p) {
            if k > 0 {
                s.writer().write_all(ANS).unwrap();
                answered = true;
            }
        }
        buf.clear();
        while s.wants_write() {
            s.write_tls(&mut buf).unwrap();
        }
        spent += t.elapsed();
        if !buf.is_empty() {
            c.read_tls(&mut &buf[..]).unwrap();
            c.process_new_packets().unwrap();
        }
        if answered && !c.wants_write() && !s.wants_write() {
            break;
        }
    }
    assert!(answered, "no answer");
    let mut p = [0u8; 64];
    let _ = c.reader().read(&mut p);
    let resumed = s.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
    let group = s
        .negotiated_key_exchange_group()
        .map_or("none".into(), |g| format!("{:?}", g.name()));
    (spent, resumed, group)
}

fn main() {
    let a: Vec<String> = std::env::args().collect();
    assert!(
        a.len() >= 5,
        "usage: tls-provider ECDSA_CERT ECDSA_KEY RSA_CERT RSA_KEY [N]"
    );
    let n: usize = a.get(5).map_or(2000, |v| v.parse().unwrap());
    for (name, cert, key) in [("ecdsa-p256", &a[1], &a[2]), ("rsa-2048", &a[3], &a[4])] {
        let sc = server(cert, key);
        for (kind, pq) in [("full", false), ("full-pq", true), ("resumed", false)] {
            let mut spent = Duration::ZERO;
            let mut resumed = 0;
            let mut group = String::new();
            // A fresh client config per handshake has no ticket: a full handshake. One shared
            // config keeps the server's tickets: resumed after the first.
            let shared = client(pq);
            let _ = exchange(&sc, &shared);
            for _ in 0..n {
                let cc = if kind == "resumed" {
                    shared.clone()
                } else {
                    client(pq)
                };
                let (d, r, g) = exchange(&sc, &cc);
                spent += d;
                resumed += usize::from(r);
                group = g;
            }
            println!(
                "{PROVIDER} {name} {kind}: {:.0} handshakes per server CPU-second ({:.1} us each, {resumed}/{n} resumed, {group})",
                n as f64 / spent.as_secs_f64(),
                spent.as_micros() as f64 / n as f64
            );
        }
    }
}
