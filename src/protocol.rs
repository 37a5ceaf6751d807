//! The frame format on the unix socket between the collector and the processing stage
//! (specified in `docs/PROTOCOL.md`; this module is the reference implementation).
//!
//! Every frame is `u32 length (big-endian) | u8 type | body`, where `length` counts the type
//! byte and the body. Collector → stage: HELLO once, then BATCHes. Stage → collector: ACKs.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};

/// Protocol version sent in HELLO.
pub const VERSION: u16 = 1;
/// Largest frame either side accepts (type byte + body).
pub(crate) const MAX_FRAME_BYTES: usize = 16 * 1024 * 1024;

const HELLO: u8 = 0x01;
const BATCH: u8 = 0x02;
const ACK: u8 = 0x03;

/// How often a stage repeats its last ACK while a sink holds a batch (see `PROTOCOL.md`): a
/// collector's `forward.ack_timeout_seconds` must be longer.
pub(crate) const HEARTBEAT: std::time::Duration = std::time::Duration::from_secs(5);

/// A decoded frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// First frame on a connection: protocol version and the collector's instance id (random
    /// per collector process; sequence numbers are unique within it).
    Hello {
        /// Protocol version.
        version: u16,
        /// Collector instance.
        instance: u64,
    },
    /// Records with consecutive sequence numbers starting at `first_seq`.
    Batch {
        /// Sequence number of the first record.
        first_seq: u64,
        /// Encoded records (see `record.rs`).
        records: Vec<Bytes>,
    },
    /// Every record with a sequence number up to and including `seq` is in the stage's sink.
    Ack {
        /// Highest acknowledged sequence number.
        seq: u64,
    },
}

/// A protocol violation or I/O failure.
#[derive(Debug, thiserror::Error)]
pub(crate) enum FrameError {
    /// The socket failed or closed mid-frame.
    #[error("socket: {0}")]
    Io(#[from] std::io::Error),
    /// Frame length 0 or above [`MAX_FRAME_BYTES`].
    #[error("frame length {0} out of range")]
    Length(usize),
    /// Unknown frame type.
    #[error("unknown frame type {0:#04x}")]
    Type(u8),
    /// The body does not match its type's layout.
    #[error("malformed {0} frame")]
    Malformed(&'static str),
}

impl Frame {
    /// Appends the encoded frame to `out`.
    pub fn encode(&self, out: &mut BytesMut) {
        match self {
            Frame::Hello { version, instance } => {
                out.put_u32(1 + 2 + 8);
                out.put_u8(HELLO);
                out.put_u16(*version);
                out.put_u64(*instance);
            }
            Frame::Batch { first_seq, records } => encode_batch(*first_seq, records.iter(), out),
            Frame::Ack { seq } => {
                out.put_u32(1 + 8);
                out.put_u8(ACK);
                out.put_u64(*seq);
            }
        }
    }

    /// Decodes a frame from its type byte and body (the length prefix already removed).
    pub(crate) fn decode(mut body: Bytes) -> Result<Frame, FrameError> {
        if body.is_empty() {
            return Err(FrameError::Length(0));
        }
        let ty = body.get_u8();
        match ty {
            HELLO => {
                if body.len() != 10 {
                    return Err(FrameError::Malformed("HELLO"));
                }
                Ok(Frame::Hello {
                    version: body.get_u16(),
                    instance: body.get_u64(),
                })
            }
            ACK => {
                if body.len() != 8 {
                    return Err(FrameError::Malformed("ACK"));
                }
                Ok(Frame::Ack {
                    seq: body.get_u64(),
                })
            }
            BATCH => {
                if body.len() < 12 {
                    return Err(FrameError::Malformed("BATCH"));
                }
                let first_seq = body.get_u64();
                let count = body.get_u32() as usize;
                let mut records = Vec::with_capacity(count.min(body.len() / 4));
                for _ in 0..count {
                    if body.len() < 4 {
                        return Err(FrameError::Malformed("BATCH"));
                    }
                    let n = body.get_u32() as usize;
                    if body.len() < n {
                        return Err(FrameError::Malformed("BATCH"));
                    }
                    records.push(body.split_to(n));
                }
                if !body.is_empty() {
                    return Err(FrameError::Malformed("BATCH"));
                }
                Ok(Frame::Batch { first_seq, records })
            }
            other => Err(FrameError::Type(other)),
        }
    }
}

/// Encodes a BATCH frame from borrowed records, without collecting them first.
pub fn encode_batch<'a>(
    first_seq: u64,
    records: impl ExactSizeIterator<Item = &'a Bytes> + Clone,
    out: &mut BytesMut,
) {
    let count = records.len();
    let body: usize = records.clone().map(|r| 4 + r.len()).sum();
    out.reserve(4 + 1 + 8 + 4 + body);
    out.put_u32((1 + 8 + 4 + body) as u32);
    out.put_u8(BATCH);
    out.put_u64(first_seq);
    out.put_u32(count as u32);
    for r in records {
        out.put_u32(r.len() as u32);
        out.put_slice(r);
    }
}

/// Reads one frame. `Ok(None)` on a clean end of stream between frames.
pub(crate) async fn read_frame<R: AsyncRead + Unpin>(
    r: &mut R,
) -> Result<Option<Frame>, FrameError> {
    let mut len = [0u8; 4];
    // A clean EOF is only clean before the first byte of a length.
    match r.read(&mut len[..1]).await? {
        0 => return Ok(None),
        _ => r.read_exact(&mut len[1..]).await?,
    };
    let n = u32::from_be_bytes(len) as usize;
    if n == 0 || n > MAX_FRAME_BYTES {
        return Err(FrameError::Length(n));
    }
    let mut body = BytesMut::zeroed(n);
    r.read_exact(&mut body).await?;
    Frame::decode(body.freeze()).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_roundtrip_through_a_stream() {
        let frames = vec![
            Frame::Hello {
                version: VERSION,
                instance: 42,
            },
            Frame::Batch {
                first_seq: 7,
                records: vec![Bytes::from_static(b"abc"), Bytes::new()],
            },
            Frame::Ack { seq: 8 },
        ];
        let mut buf = BytesMut::new();
        for f in &frames {
            f.encode(&mut buf);
        }
        let mut rd = &buf[..];
        for f in &frames {
            assert_eq!(read_frame(&mut rd).await.unwrap().as_ref(), Some(f));
        }
        assert!(read_frame(&mut rd).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn malformed_frames_are_errors() {
        let mut rd: &[u8] = &[0, 0, 0, 0];
        assert!(matches!(
            read_frame(&mut rd).await,
            Err(FrameError::Length(0))
        ));
        let mut rd: &[u8] = &[0, 0, 0, 2, 0x09, 0];
        assert!(matches!(
            read_frame(&mut rd).await,
            Err(FrameError::Type(9))
        ));
        // BATCH claiming 2 records but carrying 1.
        let mut buf = BytesMut::new();
        encode_batch(1, [Bytes::from_static(b"x")].iter(), &mut buf);
        let mut v = buf.to_vec();
        v[4 + 1 + 8 + 3] = 2;
        let mut rd = &v[..];
        assert!(matches!(
            read_frame(&mut rd).await,
            Err(FrameError::Malformed("BATCH"))
        ));
        // Truncated mid-frame is an I/O error, not a clean end.
        let mut rd: &[u8] = &[0, 0, 0, 9, ACK, 0, 0];
        assert!(matches!(read_frame(&mut rd).await, Err(FrameError::Io(_))));
    }
}
