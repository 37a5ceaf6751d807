//! TLS under the native engine, on rustls's unbuffered API: ciphertext is read into the
//! worker's scratch buffer and run through the connection's state machine there (the
//! handshake answered from the same buffers), the plaintext handed to [`super::native`] to
//! frame as on a plain connection, and answers encrypted into scratch and written. A
//! connection owns only its rustls state, plus the bytes of a TLS record that arrived in
//! part (freed once it is complete): idle, it holds no buffer.

use super::sock::{send, End};
use super::worker_state::Worker;
use crate::tls::{self, Handshake};
use rustls::server::UnbufferedServerConnection;
use rustls::unbuffered::{
    ConnectionState, EncodeError, EncryptError, InsufficientSizeError, UnbufferedStatus,
};
use std::io;
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;

/// nginx's answer to plain HTTP on its TLS port (then the connection closes).
pub(super) const PLAIN_HTTP_ANSWER: &[u8] = b"HTTP/1.1 400 Bad Request\r\n\
Content-Type: text/plain\r\n\
Content-Length: 48\r\n\
Connection: close\r\n\
\r\n\
The plain HTTP request was sent to the TLS port\n";

/// Ciphertext of an unfinished record (or a ClientHello in pieces) past this is refused: a
/// record is at most ~18 KB, and a ClientHello of every browser fits in one.
const MAX_PARTIAL: usize = 32 * 1024;

/// A TLS connection's start: the config its handshake runs under, and the worker's handshake
/// slot it holds until the handshake is done.
pub(crate) struct Tls {
    pub(crate) config: std::sync::Arc<rustls::ServerConfig>,
    pub(crate) gate: Option<tokio::sync::OwnedSemaphorePermit>,
}

/// One connection's TLS state.
pub(crate) struct TlsIo {
    conn: UnbufferedServerConnection,
    /// Ciphertext of a record not complete yet (empty, unallocated, between records).
    partial: Vec<u8>,
    /// The worker's handshake slot (`tls.max_handshakes_per_worker`), given back once the
    /// server's first flight is sent.
    gate: Option<OwnedSemaphorePermit>,
    /// The handshake completed.
    established: bool,
    /// Bytes arrived (the plain-HTTP test is made on the first ones).
    seen: bool,
}

/// Where the state machine stopped.
enum Stop {
    /// It needs more bytes from the peer.
    Blocked,
    /// Everything received is processed; data can be sent.
    Ready,
    /// The peer sent close_notify.
    PeerClosed,
}

impl TlsIo {
    /// A connection starting its handshake under `config`.
    pub(super) fn new(
        config: std::sync::Arc<rustls::ServerConfig>,
        gate: Option<OwnedSemaphorePermit>,
    ) -> Option<Self> {
        Some(Self {
            conn: UnbufferedServerConnection::new(config).ok()?,
            partial: Vec::new(),
            gate,
            established: false,
            seen: false,
        })
    }

    /// The handshake is complete.
    pub(super) fn established(&self) -> bool {
        self.established
    }

    /// Reads what the socket has and runs it through TLS: decrypted bytes are appended to
    /// `plain` (how many: `Ok(Some(n))`); handshake messages to send go out at once (the rest
    /// into `unsent`). `Ok(None)`: nothing for HTTP yet (a handshake step, or no bytes).
    pub(super) fn read(
        &mut self,
        stream: &TcpStream,
        w: &Worker,
        plain: &mut Vec<u8>,
        unsent: &mut Vec<u8>,
    ) -> Result<Option<usize>, End> {
        let mut inbuf = w.tls_in.borrow_mut();
        if inbuf.is_empty() {
            inbuf.resize(super::worker_state::SCRATCH_BYTES, 0);
        }
        let have = self.partial.len();
        if have > MAX_PARTIAL {
            // An oversized ClientHello (or record) that never completes.
            if !self.established {
                Handshake::ProtocolError.count();
            }
            return Err(End::Error);
        }
        inbuf[..have].copy_from_slice(&self.partial);
        let room = inbuf.len() - have;
        let n = match stream.try_read(&mut inbuf[have..]) {
            Ok(0) => return Err(End::Eof),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
            Err(_) => return Err(End::Error),
        };
        if n < room {
            // Took everything: forget the readiness (see `native::read_and_process`).
            let _ = stream.try_io(tokio::io::Interest::READABLE, || {
                Err::<(), io::Error>(io::ErrorKind::WouldBlock.into())
            });
        }
        let total = have + n;
        if !self.seen {
            self.seen = true;
            if tls::looks_like_plain_http(&inbuf[..total]) {
                Handshake::PlainHttp.count();
                let _ = stream.try_write(PLAIN_HTTP_ANSWER);
                return Err(End::Error);
            }
        }
        let before = plain.len();
        let mut enc = w.tls_out.borrow_mut();
        enc.clear();
        let driven = self.drive(&mut inbuf[..total], Some(plain), &mut enc);
        let (used, stop) = match driven {
            Ok(x) => x,
            Err(e) => {
                self.fail(&e, stream, &mut enc);
                return Err(End::Error);
            }
        };
        if used < total {
            self.partial.clear();
            self.partial.extend_from_slice(&inbuf[used..total]);
        } else {
            self.partial = Vec::new();
        }
        if !enc.is_empty() {
            // The first flight is out: the costly part of the handshake (key exchange,
            // signature) is done, and the slot serves the next connection while this one
            // waits a round trip for the client's Finished.
            self.gate = None;
            send(stream, &enc, unsent).map_err(|_| End::Error)?;
        }
        if !self.established && !self.conn.is_handshaking() {
            self.established = true;
            self.gate = None;
            tls::count_established(&self.conn);
        }
        let got = plain.len() - before;
        match stop {
            Stop::PeerClosed if got == 0 => Err(End::Eof),
            _ if got == 0 => Ok(None),
            _ => Ok(Some(got)),
        }
    }

    /// Encrypts `out` and writes it (what the socket does not take into `unsent`).
    pub(super) fn send(
        &mut self,
        stream: &TcpStream,
        w: &Worker,
        out: &[u8],
        unsent: &mut Vec<u8>,
    ) -> io::Result<()> {
        if out.is_empty() {
            return Ok(());
        }
        let mut enc = w.tls_out.borrow_mut();
        enc.clear();
        self.encrypt(out, &mut enc).map_err(io::Error::other)?;
        send(stream, &enc, unsent)
    }

    /// `out`, encrypted, for a caller that writes it itself (the rare answers written while
    /// waiting: 408, 400).
    pub(super) fn encrypted(&mut self, out: &[u8]) -> Vec<u8> {
        let mut enc = Vec::new();
        let _ = self.encrypt(out, &mut enc);
        enc
    }

    /// Appends `out` as application data records to `enc` (and anything rustls has queued
    /// before it, e.g. a key update).
    fn encrypt(&mut self, out: &[u8], enc: &mut Vec<u8>) -> Result<(), rustls::Error> {
        loop {
            let UnbufferedStatus { state, .. } = self.conn.process_tls_records(&mut []);
            match state? {
                ConnectionState::WriteTraffic(mut wt) => {
                    let start = enc.len();
                    // Record overhead: header, AEAD tag, content type, per 16 KB record.
                    let mut need = out.len() + 32 * (out.len() / 16_384 + 1);
                    loop {
                        enc.resize(start + need, 0);
                        match wt.encrypt(out, &mut enc[start..]) {
                            Ok(n) => {
                                enc.truncate(start + n);
                                return Ok(());
                            }
                            Err(EncryptError::InsufficientSize(InsufficientSizeError {
                                required_size,
                            })) if required_size > need => need = required_size,
                            Err(e) => {
                                enc.truncate(start);
                                return Err(rustls::Error::General(e.to_string()));
                            }
                        }
                    }
                }
                ConnectionState::EncodeTlsData(mut e) => encode(enc, |b| e.encode(b))?,
                ConnectionState::TransmitTlsData(t) => t.done(),
                other => {
                    return Err(rustls::Error::General(format!(
                        "cannot send in state {other:?}"
                    )))
                }
            }
        }
    }

    /// Runs the state machine over `incoming` until it needs more bytes or has nothing left
    /// to do. Returns the bytes it used (the rest start an unfinished record).
    fn drive(
        &mut self,
        incoming: &mut [u8],
        mut plain: Option<&mut Vec<u8>>,
        enc: &mut Vec<u8>,
    ) -> Result<(usize, Stop), rustls::Error> {
        let mut off = 0;
        loop {
            let UnbufferedStatus { discard, state } =
                self.conn.process_tls_records(&mut incoming[off..]);
            let stop = match state {
                Err(e) => return Err(e),
                Ok(ConnectionState::ReadTraffic(mut r)) => {
                    while let Some(rec) = r.next_record() {
                        let rec = rec?;
                        match plain.as_deref_mut() {
                            Some(p) => p.extend_from_slice(rec.payload),
                            None => return Err(rustls::Error::General("unexpected data".into())),
                        }
                    }
                    None
                }
                Ok(ConnectionState::EncodeTlsData(mut e)) => {
                    encode(enc, |b| e.encode(b))?;
                    None
                }
                // Everything encoded is sent by the caller, in order, before anything else.
                Ok(ConnectionState::TransmitTlsData(t)) => {
                    t.done();
                    None
                }
                Ok(ConnectionState::BlockedHandshake) => Some(Stop::Blocked),
                Ok(ConnectionState::WriteTraffic(_)) => Some(Stop::Ready),
                Ok(ConnectionState::PeerClosed | ConnectionState::Closed) => Some(Stop::PeerClosed),
                // Early data is never enabled (max_early_data_size is 0).
                Ok(other) => {
                    return Err(rustls::Error::General(format!("unexpected {other:?}")));
                }
            };
            off += discard;
            if let Some(stop) = stop {
                return Ok((off, stop));
            }
        }
    }

    /// A TLS error: counted when it ended a handshake, and the alert rustls queued for it sent
    /// on a best-effort basis before the connection closes.
    fn fail(&mut self, e: &rustls::Error, stream: &TcpStream, enc: &mut Vec<u8>) {
        if !self.established {
            Handshake::of_error(e).count();
        }
        tracing::debug!(error = %e, "TLS error; closing the connection");
        enc.clear();
        for _ in 0..4 {
            let UnbufferedStatus { state, .. } = self.conn.process_tls_records(&mut []);
            match state {
                Ok(ConnectionState::EncodeTlsData(mut x)) => {
                    if encode(enc, |b| x.encode(b)).is_err() {
                        break;
                    }
                }
                Ok(ConnectionState::TransmitTlsData(t)) => t.done(),
                _ => break,
            }
        }
        if !enc.is_empty() {
            let _ = stream.try_write(enc);
        }
    }
}

/// Appends what `f` encodes to `enc`, growing it to the size rustls asks for.
fn encode(
    enc: &mut Vec<u8>,
    mut f: impl FnMut(&mut [u8]) -> Result<usize, EncodeError>,
) -> Result<(), rustls::Error> {
    let start = enc.len();
    let mut need = 4096;
    loop {
        enc.resize(start + need, 0);
        match f(&mut enc[start..]) {
            Ok(n) => {
                enc.truncate(start + n);
                return Ok(());
            }
            Err(EncodeError::InsufficientSize(InsufficientSizeError { required_size }))
                if required_size > need =>
            {
                need = required_size
            }
            Err(e) => {
                enc.truncate(start);
                return Err(rustls::Error::General(e.to_string()));
            }
        }
    }
}
