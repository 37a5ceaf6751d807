//! HTTPS test helpers: a test PKI made with the openssl command line (a CA and leaves it
//! signs, ECDSA P-256), a rustls client trusting that CA, and raw HTTP over it.

use super::{read_resp, Resp};
use std::io::{BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

/// A CA in a directory, and what it signs.
pub struct Pki {
    pub dir: PathBuf,
    /// The CA certificate (PEM), for clients to trust.
    pub ca: PathBuf,
    ca_key: PathBuf,
}

/// A certificate and its key, as PEM files.
pub struct Leaf {
    pub cert: PathBuf,
    pub key: PathBuf,
}

fn openssl(args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .expect("the openssl command (Debian package openssl)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `openssl req` with a new ECDSA P-256 key into `key`: a request (or with `-x509` in
/// `extra`, a self-signed certificate) for `subject` into `out`.
fn new_key(key: &Path, out: &Path, subject: &str, extra: &[&str]) {
    let mut args = vec![
        "req",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        key.to_str().unwrap(),
        "-out",
        out.to_str().unwrap(),
        "-subj",
        subject,
    ];
    args.extend_from_slice(extra);
    openssl(&args);
}

impl Pki {
    /// A new CA in `dir`.
    pub fn new(dir: &Path) -> Pki {
        let (ca, ca_key) = (dir.join("ca.pem"), dir.join("ca.key"));
        new_key(
            &ca_key,
            &ca,
            "/CN=beacon-collector test CA",
            &[
                "-x509",
                "-days",
                "30",
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ],
        );
        Pki {
            dir: dir.to_path_buf(),
            ca,
            ca_key,
        }
    }

    /// A leaf named `file` for `names` (DNS names; `127.0.0.1` is added as an IP), valid
    /// for `days`, signed by the CA.
    pub fn leaf(&self, file: &str, names: &[&str], days: u32) -> Leaf {
        let d = &self.dir;
        let (cert, key, csr, ext) = (
            d.join(format!("{file}.pem")),
            d.join(format!("{file}.key")),
            d.join(format!("{file}.csr")),
            d.join(format!("{file}.ext")),
        );
        let san: Vec<String> = names.iter().map(|n| format!("DNS:{n}")).collect();
        std::fs::write(
            &ext,
            format!(
                "subjectAltName={},IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
                san.join(",")
            ),
        )
        .unwrap();
        new_key(&key, &csr, &format!("/CN={}", names[0]), &[]);
        openssl(&[
            "x509",
            "-req",
            "-in",
            csr.to_str().unwrap(),
            "-CA",
            self.ca.to_str().unwrap(),
            "-CAkey",
            self.ca_key.to_str().unwrap(),
            "-CAcreateserial",
            "-out",
            cert.to_str().unwrap(),
            "-days",
            &days.to_string(),
            "-extfile",
            ext.to_str().unwrap(),
        ]);
        Leaf { cert, key }
    }
}

/// A rustls client trusting `ca` (offering what browsers offer: X25519 first).
pub fn client(ca: &Path) -> Arc<rustls::ClientConfig> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(cfg)
}

/// A TLS connection to `addr` for `name`, handshake done.
pub struct TlsConn {
    pub rd: BufReader<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>,
}

impl TlsConn {
    pub fn open(addr: SocketAddr, name: &str, cfg: &Arc<rustls::ClientConfig>) -> TlsConn {
        Self::connect(addr, name, cfg).expect("TLS connect and handshake")
    }

    fn connect(addr: SocketAddr, name: &str, cfg: &Arc<rustls::ClientConfig>) -> Option<TlsConn> {
        let tcp = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
        tcp.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
        let conn =
            rustls::ClientConnection::new(cfg.clone(), name.to_string().try_into().ok()?).ok()?;
        let mut s = rustls::StreamOwned::new(conn, tcp);
        while s.conn.is_handshaking() {
            s.conn.complete_io(&mut s.sock).ok()?;
        }
        Some(TlsConn {
            rd: BufReader::new(s),
        })
    }

    /// The end-entity certificate the server presented (DER).
    pub fn peer_cert(&self) -> Vec<u8> {
        self.rd.get_ref().conn.peer_certificates().unwrap()[0].to_vec()
    }

    /// Whether the handshake resumed a session.
    pub fn resumed(&self) -> bool {
        self.rd.get_ref().conn.handshake_kind() == Some(rustls::HandshakeKind::Resumed)
    }

    pub fn request(&mut self, raw: &[u8]) -> Option<Resp> {
        self.rd.get_mut().write_all(raw).ok()?;
        self.rd.get_mut().flush().ok()?;
        read_resp(&mut self.rd, raw.starts_with(b"HEAD "))
    }
}

impl super::Requester for TlsConn {
    fn send(&mut self, raw: &[u8]) -> bool {
        let s = self.rd.get_mut();
        s.write_all(raw).is_ok() && s.flush().is_ok()
    }
    fn read_resp(&mut self) -> Option<Resp> {
        read_resp(&mut self.rd, false)
    }
}

/// TLS connections for `name` under `cfg` (handshake done; `None` when the connect or the
/// handshake failed).
pub fn dial(name: &str, cfg: Arc<rustls::ClientConfig>) -> super::Dial {
    let name = name.to_string();
    Arc::new(move |a| {
        TlsConn::connect(a, &name, &cfg).map(|c| Box::new(c) as Box<dyn super::Requester>)
    })
}

/// Sends `raw` on a fresh TLS connection, then close_notify and a half-close, and returns
/// every byte the server answered (as `differential::exchange` does in the clear).
pub fn exchange(addr: SocketAddr, cfg: &Arc<rustls::ClientConfig>, raw: &[u8]) -> Vec<u8> {
    let c = TlsConn::open(addr, "localhost", cfg);
    let mut s = c.rd.into_inner();
    let _ = s.write_all(raw);
    s.conn.send_close_notify();
    let _ = s.flush();
    let _ = s.sock.shutdown(std::net::Shutdown::Write);
    let mut got = Vec::new();
    // The server closes without close_notify after its last answer (HTTP/1.1 framing marks
    // the end), which rustls reports as an unexpected EOF after the bytes it read.
    let mut buf = [0u8; 16 * 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
    got
}

/// A rustls server config serving `leaf` (for a test's own HTTPS page server).
pub fn server(leaf: &Leaf) -> Arc<rustls::ServerConfig> {
    use rustls::pki_types::pem::PemObject;
    let certs = rustls::pki_types::CertificateDer::pem_file_iter(&leaf.cert)
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = rustls::pki_types::PrivateKeyDer::from_pem_file(&leaf.key).unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    Arc::new(
        rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .unwrap(),
    )
}

/// An NSS database under `home` (`$HOME/.pki/nssdb`, where Chromium on Linux reads it) that
/// trusts the test CA for TLS servers (certutil, Debian package libnss3-tools).
pub fn trust_in_nss(home: &Path, ca: &Path) {
    let db = home.join(".pki/nssdb");
    std::fs::create_dir_all(&db).unwrap();
    let db = format!("sql:{}", db.display());
    for args in [
        vec!["-N", "-d", &db, "--empty-password"],
        vec![
            "-A",
            "-d",
            &db,
            "-t",
            "C,,",
            "-n",
            "beacon-test-ca",
            "-i",
            ca.to_str().unwrap(),
        ],
    ] {
        let out = Command::new("certutil")
            .args(&args)
            .output()
            .expect("certutil (Debian package libnss3-tools; .ci/run installs it)");
        assert!(
            out.status.success(),
            "certutil {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
