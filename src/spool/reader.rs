//! The read side, for the forwarder: records in sequence order from the segments, never past
//! what the writer has committed.

use super::frame::{Header, HEADER_BYTES};
use super::Shared;
use crate::metrics as m;
use bytes::Bytes;
use std::fs::File;
use std::io::{self, BufReader, Read};
use std::sync::Arc;

/// Corrupt records are logged at most every few seconds (a bad disk block holds many).
static CORRUPT_LOG: crate::logging::Throttle =
    crate::logging::Throttle::new(crate::logging::THROTTLE_EVERY);

/// Reads records in sequence order from the segments, for the forwarder.
///
/// It never reads past a segment's *committed* length (what the writer has finished writing,
/// as recorded under the state lock), so bytes of a group being written, or of a failed write
/// that was cut off again, are never seen.
pub(crate) struct SpoolReader {
    shared: Arc<Shared>,
    file: Option<OpenSegment>,
    next: u64,
}

struct OpenSegment {
    first_seq: u64,
    rd: BufReader<File>,
    offset: u64,
    /// Committed length last seen; refreshed when the reader reaches it.
    limit: u64,
}

impl SpoolReader {
    pub(super) fn new(shared: Arc<Shared>, from: u64) -> Self {
        Self {
            shared,
            file: None,
            next: from,
        }
    }

    /// The sequence number the next read starts at.
    pub(crate) fn position(&self) -> u64 {
        self.next
    }

    /// Reads up to `max` records with sequence numbers in `position()..=upto`. Records that
    /// fail their checksum are skipped and counted. Blocking file I/O (page cache in the
    /// normal case): call from a blocking context.
    pub(crate) fn read(
        &mut self,
        upto: u64,
        max: usize,
        out: &mut Vec<(u64, Bytes)>,
    ) -> io::Result<()> {
        while out.len() < max && self.next <= upto {
            if self.file.is_none() && !self.open_at(self.next)? {
                return Ok(());
            }
            let seg = self.file.as_mut().expect("opened");
            if seg.offset + HEADER_BYTES as u64 > seg.limit {
                // At the committed end: refresh it, or move on to the next segment.
                let (limit, later) = {
                    let st = self.shared.state.lock().expect("not poisoned");
                    (
                        st.segments
                            .iter()
                            .find(|s| s.first_seq == seg.first_seq)
                            .map(|s| s.bytes),
                        st.segments
                            .iter()
                            .map(|s| s.first_seq)
                            .find(|&f| f > seg.first_seq),
                    )
                };
                match limit {
                    Some(l) if seg.offset + (HEADER_BYTES as u64) <= l => seg.limit = l,
                    _ => {
                        self.file = None;
                        match later {
                            Some(f) => self.next = self.next.max(f),
                            None => return Ok(()),
                        }
                    }
                }
                continue;
            }
            let mut header = [0u8; HEADER_BYTES];
            seg.rd.read_exact(&mut header)?;
            let parsed = Header::parse(&header);
            let len = parsed.map_or(u64::MAX / 4, |h| h.len as u64);
            if parsed.is_none() || seg.offset + HEADER_BYTES as u64 + len > seg.limit {
                // Committed bytes hold whole records only: this length is corrupt, and nothing
                // after it in this segment can be framed. Skip to the next segment.
                metrics::counter!(m::SPOOL_CORRUPT_RECORDS_TOTAL).increment(1);
                tracing::error!(
                    segment = seg.first_seq,
                    "corrupt record length in spool; skipping the rest of the segment"
                );
                seg.offset = u64::MAX / 2;
                seg.limit = 0;
                continue;
            }
            let mut payload = vec![0u8; len as usize];
            seg.rd.read_exact(&mut payload)?;
            seg.offset += HEADER_BYTES as u64 + len;
            let h = parsed.expect("checked above");
            let seq = h.seq;
            if !h.checks(&payload) {
                metrics::counter!(m::SPOOL_CORRUPT_RECORDS_TOTAL).increment(1);
                if let Some(suppressed) = CORRUPT_LOG.allow() {
                    tracing::error!(
                        segment = seg.first_seq,
                        suppressed,
                        "spool record failed its checksum; skipped"
                    );
                }
                continue;
            }
            if seq < self.next {
                continue; // before the requested position (scanning into a segment)
            }
            self.next = seq + 1;
            out.push((seq, Bytes::from(payload)));
        }
        Ok(())
    }

    /// Opens the segment holding `seq`, positioned at its start. False if there is none yet.
    fn open_at(&mut self, seq: u64) -> io::Result<bool> {
        let seg = {
            let st = self.shared.state.lock().expect("not poisoned");
            st.segments
                .iter()
                .rev()
                .find(|s| s.first_seq <= seq)
                .or_else(|| st.segments.front())
                .map(|s| (s.first_seq, s.path.clone(), s.bytes))
        };
        let Some((first_seq, path, limit)) = seg else {
            return Ok(false);
        };
        if first_seq > seq {
            self.next = first_seq;
        }
        let f = match File::open(&path) {
            Ok(f) => f,
            // Deleted after being acknowledged: nothing to read there any more.
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(e),
        };
        self.file = Some(OpenSegment {
            first_seq,
            rd: BufReader::with_capacity(128 * 1024, f),
            offset: 0,
            limit,
        });
        Ok(true)
    }
}
