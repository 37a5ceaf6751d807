//! Writing to a nonblocking socket from a connection task: what the socket takes now, the
//! rest kept for later ([`send`]), or awaited ([`flush`], [`write_all`]); and [`End`], why
//! reading ended a connection. Shared by the native engine and its TLS layer.

use std::io;
use tokio::net::TcpStream;

/// Why reading ended the connection.
pub(super) enum End {
    /// The peer closed its side.
    Eof,
    /// A socket error.
    Error,
}

/// Writes `buf`; what the socket does not take now is kept in `unsent`.
pub(super) fn send(stream: &TcpStream, buf: &[u8], unsent: &mut Vec<u8>) -> io::Result<()> {
    if !unsent.is_empty() {
        unsent.extend_from_slice(buf);
        return Ok(());
    }
    let mut off = 0;
    while off < buf.len() {
        match stream.try_write(&buf[off..]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => off += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) => return Err(e),
        }
    }
    if off < buf.len() {
        unsent.extend_from_slice(&buf[off..]);
    }
    Ok(())
}

/// Waits until `unsent` is written, then frees it.
pub(super) async fn flush(stream: &TcpStream, unsent: &mut Vec<u8>) -> io::Result<()> {
    write_all(stream, unsent).await?;
    *unsent = Vec::new();
    Ok(())
}

pub(super) async fn write_all(stream: &TcpStream, buf: &[u8]) -> io::Result<()> {
    let mut off = 0;
    while off < buf.len() {
        stream.writable().await?;
        match stream.try_write(&buf[off..]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => off += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
