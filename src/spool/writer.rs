//! The append side: the active segment, sealing and writing a group with one `write(2)`,
//! `fdatasync` for `ack_after = "fsync"`, new segments and write failures.

use super::frame;
use super::{unix_secs, AppendError, Segment, Shared, Spool};
use crate::metrics as m;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub(super) struct Active {
    file: Arc<File>,
    bytes: u64,
}

/// The append side: owns the active segment and the next sequence number. Shared by the
/// ingest workers behind [`Shared::writer`]; each worker writes a whole group (one event-loop
/// turn of its requests) with one `write(2)` while holding it, so the lock is taken once per
/// group, not per record, and no other thread is woken to write.
pub(super) struct Writer {
    pub(super) segment_bytes: u64,
    pub(super) active: Option<Active>,
    pub(super) next_seq: u64,
    /// Seconds-resolution marks for the oldest-unacked gauge.
    pub(super) last_mark: Instant,
}

/// What a written group still needs before it may be answered.
pub(crate) enum Written {
    /// In the page cache: `ack_after = "write"`, answer now.
    Done,
    /// `ack_after = "fsync"`: answer after `fdatasync` of this file succeeded (done by the
    /// caller off its event loop, see [`Spool::sync`]).
    NeedsSync(Arc<File>),
}

impl Spool {
    /// Writes a group of records pre-framed by [`frame_start`](super::frame_start)/[`frame_end`](super::frame_end) in `frames`
    /// (`count` of them): numbers them, checksums them and appends them to the active segment
    /// with one `write(2)`. Called on the worker's own thread; blocks only for the write
    /// (page cache). `Ok` is not yet an acknowledgement with `NeedsSync`.
    pub(crate) fn write_group(
        &self,
        frames: &mut [u8],
        count: usize,
    ) -> Result<Written, AppendError> {
        if count == 0 {
            return Ok(Written::Done);
        }
        let sh = &*self.shared;
        if !sh.accepting.load(Ordering::Relaxed) {
            return Err(AppendError::Full);
        }
        let bytes = frames.len() as u64;
        let mut w = sh.writer.lock().expect("not poisoned");
        {
            let st = sh.state.lock().expect("not poisoned");
            if st.total_bytes + bytes > sh.max_bytes {
                sh.accepting.store(false, Ordering::Relaxed);
                return Err(AppendError::Full);
            }
        }
        if w.active
            .as_ref()
            .is_some_and(|a| a.bytes > 0 && a.bytes + bytes > w.segment_bytes)
        {
            w.active = None;
        }
        if w.active.is_none() {
            match sh.new_segment(w.next_seq) {
                Ok(a) => w.active = Some(a),
                Err(e) => return Err(sh.failed("creating segment", &e)),
            }
        }
        // Number and checksum the frames in place.
        let first = w.next_seq;
        let seq = frame::seal(frames, first);
        debug_assert_eq!(seq - first, count as u64);
        let active = w.active.as_mut().expect("opened above");
        let started = Instant::now();
        let written = (&*active.file).write_all(frames);
        metrics::histogram!(m::SPOOL_WRITE_SECONDS).record(started.elapsed().as_secs_f64());
        if let Err(e) = written {
            // Undo a partial write so the segment stays a sequence of whole records, then
            // never append to this file again; the next group starts a new segment.
            let _ = active.file.set_len(active.bytes);
            w.active = None;
            return Err(sh.failed("writing", &e));
        }
        active.bytes += bytes;
        let file = active.file.clone();
        let last = seq - 1;
        w.next_seq = seq;
        let mark = (w.last_mark.elapsed() >= Duration::from_secs(1)).then(|| {
            w.last_mark = Instant::now();
            (first, w.last_mark)
        });
        {
            let mut st = sh.state.lock().expect("not poisoned");
            let seg = st.segments.back_mut().expect("active segment is listed");
            seg.last_seq = last;
            seg.bytes += bytes;
            st.total_bytes += bytes;
            if let Some(m) = mark {
                st.marks.push_back(m);
            }
            if st.total_bytes >= sh.high_bytes && sh.accepting.swap(false, Ordering::Relaxed) {
                tracing::warn!(bytes = st.total_bytes, "spool above high-water mark: answering 503 and failing health checks until the processing stage catches up");
            }
            if mark.is_some() {
                sh.update_gauges(&st);
            }
        }
        // Published while still holding the writer, so `written` only ever grows.
        sh.written.send_if_modified(|v| {
            let grew = last > *v;
            *v = (*v).max(last);
            grew
        });
        drop(w);
        Ok(if sh.fsync {
            Written::NeedsSync(file)
        } else {
            Written::Done
        })
    }

    /// `fdatasync` of a segment a group was written to (blocking: call off the event loop).
    /// A failure marks the spool failing and retires that segment for appends.
    pub(crate) fn sync(&self, file: &File) -> Result<(), AppendError> {
        let started = Instant::now();
        let res = if crate::fault::fires(crate::fault::Point::SpoolSyncFails, &self.shared.dir) {
            Err(io::Error::other("injected fdatasync failure"))
        } else {
            file.sync_data()
        };
        metrics::histogram!(m::SPOOL_SYNC_SECONDS).record(started.elapsed().as_secs_f64());
        match res {
            Ok(()) => Ok(()),
            Err(e) => {
                let sh = &*self.shared;
                let mut w = sh.writer.lock().expect("not poisoned");
                // After a failed fsync the page-cache state of this file is unknown.
                if w.active.as_ref().is_some_and(|a| same_file(&a.file, file)) {
                    w.active = None;
                }
                Err(sh.failed("syncing", &e))
            }
        }
    }

    /// Syncs the active segment (at shutdown).
    pub(crate) fn sync_active(&self) {
        let w = self.shared.writer.lock().expect("not poisoned");
        if let Some(a) = &w.active {
            let _ = a.file.sync_data();
        }
    }
}

fn same_file(a: &File, b: &File) -> bool {
    use std::os::fd::AsRawFd;
    a.as_raw_fd() == b.as_raw_fd()
}

impl Shared {
    pub(super) fn failed(&self, what: &str, e: &io::Error) -> AppendError {
        metrics::counter!(m::SPOOL_WRITE_ERRORS_TOTAL).increment(1);
        // A full disk fails every group: one line per few seconds, with how many were not
        // logged (the counter has them all).
        if let Some(suppressed) = self.error_log.allow() {
            tracing::error!(error = %e, suppressed, "{what} spool segment failed; answering 503");
        }
        self.failed_until
            .store(unix_secs() + self.failure_cooldown, Ordering::Relaxed);
        AppendError::Failed
    }

    pub(super) fn new_segment(&self, next_seq: u64) -> io::Result<Active> {
        let path = self.dir.join(format!("seg-{next_seq:020}.log"));
        let file = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .mode(self.file_mode)
            .open(&path)?;
        if self.fsync {
            File::open(&self.dir)?.sync_all()?;
        }
        let mut st = self.state.lock().expect("not poisoned");
        // An empty last segment left by recovery or a failed write is replaced.
        if st
            .segments
            .back()
            .is_some_and(|s| s.bytes == 0 && s.path != path)
        {
            let s = st.segments.pop_back().expect("checked");
            let _ = std::fs::remove_file(s.path);
        }
        if st.segments.back().is_none_or(|s| s.path != path) {
            st.segments.push_back(Segment {
                first_seq: next_seq,
                last_seq: next_seq - 1,
                path,
                bytes: 0,
            });
        } else if let Some(s) = st.segments.back_mut() {
            s.bytes = 0;
        }
        Ok(Active {
            file: Arc::new(file),
            bytes: 0,
        })
    }
}
