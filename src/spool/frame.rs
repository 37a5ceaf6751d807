//! The record frame, the one encoding and decoding of it: `len: u32 | crc32c(seq, payload):
//! u32 | seq: u64 | payload`, big-endian. The writer seals frames in place, recovery scans
//! them from a whole segment, the reader checks them one by one from a stream: all three go
//! through [`seal`], [`Header`] and [`parse_record`] here.

use bytes::{BufMut, BytesMut};

/// Bytes before each payload: len, crc, seq.
pub(crate) const HEADER_BYTES: usize = 16;
/// Largest payload accepted (a record is at most a few hundred KiB; anything bigger is corrupt).
pub(crate) const MAX_RECORD_BYTES: usize = 8 * 1024 * 1024;

/// A frame header as read from a segment.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Header {
    /// Payload length.
    pub(crate) len: usize,
    crc: u32,
    /// Sequence number.
    pub(crate) seq: u64,
}

impl Header {
    /// Reads a header; `None` for an impossible length (nothing after it can be framed).
    pub(crate) fn parse(b: &[u8; HEADER_BYTES]) -> Option<Header> {
        let len = u32::from_be_bytes(b[0..4].try_into().expect("4")) as usize;
        (len <= MAX_RECORD_BYTES).then(|| Header {
            len,
            crc: u32::from_be_bytes(b[4..8].try_into().expect("4")),
            seq: u64::from_be_bytes(b[8..16].try_into().expect("8")),
        })
    }

    /// Whether `payload` is what this header's checksum covers.
    pub(crate) fn checks(&self, payload: &[u8]) -> bool {
        crc32c(crc32c(0, &self.seq.to_be_bytes()), payload) == self.crc
    }
}

/// Numbers and checksums, in place, the frames of a group built with [`frame_start`] and
/// [`frame_end`], from `first_seq` on. Returns the next sequence number.
pub(crate) fn seal(frames: &mut [u8], first_seq: u64) -> u64 {
    let mut pos = 0;
    let mut seq = first_seq;
    while pos < frames.len() {
        let len = u32::from_be_bytes(frames[pos..pos + 4].try_into().expect("4")) as usize;
        let seq_bytes = seq.to_be_bytes();
        frames[pos + 8..pos + 16].copy_from_slice(&seq_bytes);
        let payload = &frames[pos + HEADER_BYTES..pos + HEADER_BYTES + len];
        let crc = crc32c(crc32c(0, &seq_bytes), payload);
        frames[pos + 4..pos + 8].copy_from_slice(&crc.to_be_bytes());
        pos += HEADER_BYTES + len;
        seq += 1;
    }
    seq
}

/// Starts a frame for a record in a group buffer: the header with the length left to
/// [`frame_end`] and the sequence number and checksum to [`Spool::write_group`](super::Spool::write_group). Returns the
/// frame's offset.
pub(crate) fn frame_start(buf: &mut BytesMut) -> usize {
    let at = buf.len();
    buf.put_bytes(0, HEADER_BYTES);
    at
}

/// Finishes the frame started at `at`: the payload is everything appended since.
pub(crate) fn frame_end(buf: &mut BytesMut, at: usize) {
    let len = (buf.len() - at - HEADER_BYTES) as u32;
    buf[at..at + 4].copy_from_slice(&len.to_be_bytes());
}

/// Drops a frame started at `at` (its record was refused after all).
pub(crate) fn frame_abort(buf: &mut BytesMut, at: usize) {
    buf.truncate(at);
}

/// What a segment scan found.
#[derive(Debug, Default)]
pub(crate) struct Scan {
    pub(crate) records: u64,
    pub(crate) corrupt: u64,
    pub(crate) truncated: u64,
    pub(crate) valid_bytes: u64,
    pub(crate) last_seq: Option<u64>,
    pub(crate) seqs: Vec<u64>,
}

impl Scan {
    /// Records above `acked`.
    pub(crate) fn seqs_above(&self, acked: u64) -> u64 {
        self.seqs.iter().filter(|&&s| s > acked).count() as u64
    }
}

/// A record found by [`parse_record`]: sequence number, payload, bytes it spans.
pub(crate) type Parsed<'a> = (u64, &'a [u8], usize);

/// Parses one framed record at the start of `buf`: `Ok(Some((seq, payload, size)))`,
/// `Ok(None)` if `buf` ends before the record does, `Err(skip)` for a bad checksum with a
/// plausible length (skip that many bytes) or `Err(0)` for an impossible length.
pub(crate) fn parse_record(buf: &[u8]) -> Result<Option<Parsed<'_>>, usize> {
    let Some(head) = buf.first_chunk::<HEADER_BYTES>() else {
        return Ok(None);
    };
    let Some(h) = Header::parse(head) else {
        return Err(0);
    };
    let size = HEADER_BYTES + h.len;
    if buf.len() < size {
        return Ok(None);
    }
    let payload = &buf[HEADER_BYTES..size];
    if !h.checks(payload) {
        return Err(size);
    }
    Ok(Some((h.seq, payload, size)))
}

/// Scans framed records: complete checksummed ones are kept, a record with a bad checksum
/// but a plausible length is skipped and counted, and scanning stops at the first impossible
/// length or incomplete record (`valid_bytes` says where).
pub(crate) fn scan_bytes(data: &[u8]) -> Scan {
    let mut scan = Scan::default();
    let mut pos = 0usize;
    while pos < data.len() {
        match parse_record(&data[pos..]) {
            Ok(Some((seq, _, size))) => {
                scan.records += 1;
                scan.last_seq = Some(seq);
                scan.seqs.push(seq);
                pos += size;
            }
            Ok(None) | Err(0) => break,
            Err(skip) => {
                scan.corrupt += 1;
                pos += skip;
            }
        }
    }
    scan.valid_bytes = pos as u64;
    scan
}

/// Appends `seq`/`payload` framed to `out`.
#[cfg(test)]
pub(crate) fn encode_record(seq: u64, payload: &[u8], out: &mut BytesMut) {
    let seq_bytes = seq.to_be_bytes();
    out.put_u32(payload.len() as u32);
    out.put_u32(crc32c(crc32c(0, &seq_bytes), payload));
    out.put_slice(&seq_bytes);
    out.put_slice(payload);
}

/// CRC-32C (Castagnoli), the checksum of iSCSI, ext4 and most logs, continuing `crc`
/// (hardware instructions where the CPU has them).
pub(crate) fn crc32c(crc: u32, data: &[u8]) -> u32 {
    crc32c::crc32c_append(crc, data)
}
