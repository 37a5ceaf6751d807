//! The durable local spool: every accepted beacon is appended here (group commit) before the
//! request is answered, and stays until the processing stage has acknowledged it.
//!
//! Layout: `seg-<first seq, 20 digits>.log` files of records framed as
//! `len: u32 | crc32c(seq, payload): u32 | seq: u64 | payload`, plus `checkpoint` holding the
//! instance id and the highest acknowledged sequence number. A segment is deleted once every
//! record in it is acknowledged.
//!
//! Ownership: no thread of its own. Each ingest worker gathers the records of one event-loop
//! turn into a group and writes it with [`Spool::write_group`] on its own thread (the writer
//! `Mutex` is held for that one `write(2)`), then answers them; with `ack_after = "fsync"` it
//! runs [`Spool::sync`] off its event loop first. The forwarder reads segments through a
//! [`SpoolReader`] and reports ACKs with [`Spool::ack`]. Shared bookkeeping sits behind std
//! `Mutex`es: sections are short and never span an await.
//!
//! Here: opening and recovery, acknowledgements, the checkpoint and the handle; `frame` the
//! record frame (the one encoder and decoder), `writer` the append side, `reader` the
//! forwarder's reader.

use crate::config::{AckAfter, SpoolConfig};
use crate::metrics as m;
use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;

mod frame;
mod reader;
mod writer;

pub(crate) use frame::{frame_abort, frame_end, frame_start};
use frame::{scan_bytes, Scan};
pub(crate) use reader::SpoolReader;
use writer::Writer;
pub(crate) use writer::Written;
const CHECKPOINT: &str = "checkpoint";

/// Why an append was refused. Each maps to a 503: the beacon was not taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum AppendError {
    /// More appends waiting than `spool.max_pending_records`.
    #[error("spool queue full")]
    Busy,
    /// The spool is above its high-water mark (the processing stage is behind).
    #[error("spool above high-water mark")]
    Full,
    /// The write or fsync failed (disk full, I/O error); nothing was acknowledged.
    #[error("spool write failed")]
    Failed,
    /// The spool writer has stopped.
    #[error("spool closed")]
    Closed,
}

/// Failure to open or recover the spool.
#[derive(Debug, thiserror::Error)]
#[error("spool {path}: {what}")]
pub struct SpoolError {
    /// What was being done.
    pub(crate) what: &'static str,
    /// The file or directory.
    pub(crate) path: PathBuf,
    /// The OS error.
    #[source]
    pub(crate) source: io::Error,
}

fn err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> SpoolError + 'a {
    move |source| SpoolError {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// What recovery found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Recovery {
    /// Complete, checksummed records kept (acknowledged ones included until their segment goes).
    pub(crate) records: u64,
    /// Records waiting to be sent (above the checkpoint).
    pub(crate) unacked: u64,
    /// Records with a bad checksum or impossible length, skipped.
    pub(crate) corrupt: u64,
    /// Bytes cut from a torn tail.
    pub(crate) truncated_bytes: u64,
}

struct Segment {
    first_seq: u64,
    /// Last sequence number written to it (first_seq - 1 while empty).
    last_seq: u64,
    path: PathBuf,
    bytes: u64,
}

struct State {
    segments: VecDeque<Segment>,
    acked: u64,
    total_bytes: u64,
    /// Coarse (seq, received time) marks, one per second of writing, for the oldest-unacked
    /// age gauge without keeping a timestamp per record.
    marks: VecDeque<(u64, Instant)>,
    checkpointed: u64,
}

struct Shared {
    dir: PathBuf,
    /// Holds an exclusive `flock` on `<dir>/lock` for the spool's lifetime: two collectors on
    /// one spool would overwrite each other's segments.
    _lock: File,
    instance: u64,
    state: Mutex<State>,
    written: watch::Sender<u64>,
    /// False above the high-water mark until the spool drains below the low-water mark.
    accepting: AtomicBool,
    /// Unix seconds of the last write-error log line, and errors not logged since.
    /// Write errors logged at most every few seconds.
    error_log: crate::logging::Throttle,
    /// Unix seconds until which the spool reports unhealthy after a write failure.
    failed_until: AtomicU64,
    failure_cooldown: u64,
    high_bytes: u64,
    low_bytes: u64,
    max_bytes: u64,
    fsync: bool,
    /// `spool.file_mode`.
    file_mode: u32,
    /// Taken for one group write at a time; never held across an await. Lock order: `writer`,
    /// then `state`.
    writer: Mutex<Writer>,
    /// Serialises checkpoint writes, which run without `state` held: with `ack_after =
    /// "fsync"` a checkpoint's `fsync` is a journal commit (tens of ms behind other files'
    /// dirty data), and every worker's group write needs `state`.
    checkpointing: Mutex<()>,
}

/// A handle to the spool for the ingest workers and the forwarder. Cloning is cheap.
#[derive(Clone)]
pub(crate) struct Spool {
    shared: Arc<Shared>,
}

/// Creates the spool directory and takes its lock: one collector per spool.
fn lock_dir(cfg: &SpoolConfig) -> Result<File, SpoolError> {
    // The spool holds client IPs and page URLs: the owner, and the group if configured.
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(crate::config::dir_mode(cfg.file_mode))
        .create(&cfg.dir)
        .map_err(err("create directory", &cfg.dir))?;
    let lock_path = cfg.dir.join("lock");
    let lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(cfg.file_mode)
        .open(&lock_path)
        .map_err(err("open lock file", &lock_path))?;
    // SAFETY: flock(2) on a descriptor we own; no memory is involved.
    if unsafe {
        libc::flock(
            std::os::fd::AsRawFd::as_raw_fd(&lock),
            libc::LOCK_EX | libc::LOCK_NB,
        )
    } != 0
    {
        return Err(SpoolError {
            what: "in use by another running collector (each collector needs its own spool.dir)",
            path: cfg.dir.clone(),
            source: io::Error::last_os_error(),
        });
    }
    Ok(lock)
}

/// Scans every segment (the last one may end torn): what they hold, and what recovery found.
fn recover_segments(dir: &Path, acked: u64) -> Result<(VecDeque<Segment>, Recovery), SpoolError> {
    let mut rec = Recovery::default();
    let mut segments = VecDeque::new();
    let mut paths = list_segments(dir).map_err(err("list", dir))?;
    paths.sort();
    let n = paths.len();
    for (i, (first_seq, path)) in paths.into_iter().enumerate() {
        let last = i + 1 == n;
        let scan = scan_segment(&path, last).map_err(err("recover", &path))?;
        rec.corrupt += scan.corrupt;
        rec.truncated_bytes += scan.truncated;
        rec.records += scan.records;
        rec.unacked += scan.seqs_above(acked);
        segments.push_back(Segment {
            first_seq,
            last_seq: scan.last_seq.unwrap_or(first_seq - 1).max(first_seq - 1),
            path,
            bytes: scan.valid_bytes,
        });
    }
    Ok((segments, rec))
}

impl Spool {
    /// Opens (creating if needed) and recovers the spool.
    pub(crate) fn open(
        cfg: &SpoolConfig,
        unhealthy_after_failure: Duration,
    ) -> Result<(Spool, Recovery), SpoolError> {
        let lock = lock_dir(cfg)?;
        let (instance, acked, boot) = read_checkpoint(&cfg.dir);
        let fsync = cfg.ack_after == AckAfter::Fsync;
        // With ack_after = "write", a reboot (power loss, kernel crash) may have dropped the
        // spool's unsynced tail, and its sequence numbers would be reused. A stage that
        // survived on another host would then drop the new records as replays. A new instance
        // makes them unambiguous. A process crash keeps the page cache: same instance.
        let instance = match (instance, boot_id()) {
            (Some(i), Some(now)) if !fsync && boot.as_deref().is_some_and(|b| b != now) => {
                tracing::warn!(old = format_args!("{i:016x}"), "first start since a reboot with ack_after = \"write\": starting a new spool instance");
                None
            }
            (i, _) => i,
        };
        let (segments, rec) = recover_segments(&cfg.dir, acked)?;
        // Also exports both at 0 from the start (see crate::metrics).
        metrics::counter!(m::SPOOL_CORRUPT_RECORDS_TOTAL).increment(rec.corrupt);
        metrics::counter!(m::SPOOL_WRITE_ERRORS_TOTAL).increment(0);
        // Sequence numbers never repeat within an instance: continue after everything seen.
        let last_written = segments
            .iter()
            .map(|s| s.last_seq)
            .max()
            .unwrap_or(0)
            .max(acked);
        // No usable checkpoint (then `acked` is 0 and the whole spool is sent again), or a
        // reboot in write mode: a new instance. Sequence numbers continue either way.
        let instance = instance.unwrap_or_else(|| fastrand::u64(..));
        let total_bytes = segments.iter().map(|s| s.bytes).sum();
        let high_bytes = cfg.max_bytes * u64::from(cfg.high_water_percent) / 100;
        let shared = Arc::new(Shared {
            dir: cfg.dir.clone(),
            _lock: lock,
            instance,
            state: Mutex::new(State {
                segments,
                acked,
                total_bytes,
                marks: VecDeque::new(),
                checkpointed: u64::MAX,
            }),
            written: watch::channel(last_written).0,
            accepting: AtomicBool::new(true),
            failed_until: AtomicU64::new(0),
            error_log: crate::logging::Throttle::default(),
            failure_cooldown: unhealthy_after_failure.as_secs().max(1),
            high_bytes,
            low_bytes: cfg.max_bytes * u64::from(cfg.low_water_percent) / 100,
            max_bytes: cfg.max_bytes,
            fsync,
            file_mode: cfg.file_mode,
            checkpointing: Mutex::new(()),
            writer: Mutex::new(Writer {
                segment_bytes: cfg.segment_bytes,
                active: None,
                next_seq: last_written + 1,
                // So the first group sets a mark (checked: the clock may be younger than 10 s).
                last_mark: Instant::now()
                    .checked_sub(Duration::from_secs(10))
                    .unwrap_or_else(Instant::now),
            }),
        });
        {
            let mut st = shared.state.lock().expect("not poisoned");
            remove_segments(shared.delete_acked(&mut st));
            // Records left by an earlier run: their receive times are not kept, but the
            // segment holding the oldest was last written no later than it was received,
            // so its age is at least that (a lower bound, right to the second for a spool
            // whose stage was down).
            let acked = st.acked;
            if last_written > acked {
                let oldest = st.segments.iter().find(|s| s.last_seq > acked);
                let age = oldest
                    .and_then(|s| std::fs::metadata(&s.path).ok())
                    .and_then(|m| m.modified().ok())
                    .and_then(|t| t.elapsed().ok())
                    .unwrap_or_default();
                let at = Instant::now().checked_sub(age).unwrap_or_else(Instant::now);
                st.marks.push_back((acked + 1, at));
            }
            shared.update_gauges(&st);
        }
        shared.write_checkpoint();
        // The spool's gauges are computed at every scrape: the oldest record's age grows and
        // the bytes may have changed while nothing was written or acknowledged.
        let weak = Arc::downgrade(&shared);
        crate::metrics::before_scrape(move || match weak.upgrade() {
            Some(sh) => {
                sh.update_gauges(&sh.state.lock().expect("not poisoned"));
                true
            }
            None => false,
        });
        Ok((Spool { shared }, rec))
    }

    /// Whether the spool takes appends now (false above the high-water mark).
    pub(crate) fn accepting(&self) -> bool {
        self.shared.accepting.load(Ordering::Relaxed)
    }

    /// False while above the high-water mark or shortly after a write failure: the load
    /// balancer should send traffic elsewhere.
    pub(crate) fn healthy(&self) -> bool {
        self.shared.accepting.load(Ordering::Relaxed)
            && self.shared.failed_until.load(Ordering::Relaxed) <= unix_secs()
    }

    /// The spool's directory.
    pub(crate) fn dir(&self) -> &std::path::Path {
        &self.shared.dir
    }

    /// The instance id sent in HELLO (persisted, so the stage can drop replays after a
    /// collector restart).
    pub(crate) fn instance(&self) -> u64 {
        self.shared.instance
    }

    /// Highest acknowledged sequence number.
    pub(crate) fn acked(&self) -> u64 {
        self.shared.state.lock().expect("not poisoned").acked
    }

    /// Watches the highest sequence number in the spool.
    pub(crate) fn written(&self) -> watch::Receiver<u64> {
        self.shared.written.subscribe()
    }

    /// Records everything up to `seq` as acknowledged; deletes segments that are fully
    /// acknowledged and reopens the spool for appends below the low-water mark.
    pub(crate) fn ack(&self, seq: u64) {
        let mut st = self.shared.state.lock().expect("not poisoned");
        if seq <= st.acked {
            return;
        }
        st.acked = seq;
        let done = self.shared.delete_acked(&mut st);
        prune_marks(&mut st.marks, seq + 1);
        if !self.shared.accepting.load(Ordering::Relaxed) && st.total_bytes < self.shared.low_bytes
        {
            self.shared.accepting.store(true, Ordering::Relaxed);
            tracing::info!(
                bytes = st.total_bytes,
                "spool below low-water mark; accepting again"
            );
        }
        self.shared.update_gauges(&st);
        drop(st);
        // Unlinking a large file frees its extents (milliseconds): not under `state`.
        remove_segments(done);
    }

    /// Persists the acknowledged position (cheap; call every second or so and at exit).
    pub(crate) fn checkpoint(&self) {
        self.shared.write_checkpoint();
    }

    /// Records not yet acknowledged.
    pub(crate) fn unacked(&self) -> u64 {
        let written = *self.shared.written.borrow();
        written.saturating_sub(self.acked())
    }

    /// A reader positioned at `from`.
    pub(crate) fn reader(&self, from: u64) -> SpoolReader {
        SpoolReader::new(self.shared.clone(), from)
    }
}

impl Shared {
    /// Drops the fully acknowledged segments from the list; the caller deletes their files
    /// (with [`remove_segments`], after letting go of `state`).
    #[must_use]
    fn delete_acked(&self, st: &mut State) -> Vec<PathBuf> {
        let mut done = Vec::new();
        // Keep the last segment: the writer may still be appending to it.
        while st.segments.len() > 1 && st.segments[0].last_seq <= st.acked {
            let s = st.segments.pop_front().expect("len > 1");
            st.total_bytes -= s.bytes;
            done.push(s.path);
        }
        done
    }

    fn update_gauges(&self, st: &State) {
        metrics::gauge!(m::SPOOL_BYTES).set(st.total_bytes as f64);
        metrics::gauge!(m::SPOOL_SEGMENTS).set(st.segments.len() as f64);
        let age = oldest_unacked_age(st, Instant::now());
        metrics::gauge!(m::SPOOL_OLDEST_UNACKED_SECONDS).set(age.as_secs_f64());
    }

    fn write_checkpoint(&self) {
        let _one = self.checkpointing.lock().expect("not poisoned");
        let acked = {
            let st = self.state.lock().expect("not poisoned");
            if st.checkpointed == st.acked {
                return;
            }
            st.acked
        };
        let tmp = self.dir.join("checkpoint.tmp");
        let body = format!(
            "{:016x} {} {}\n",
            self.instance,
            acked,
            boot_id().unwrap_or_else(|| "-".into())
        );
        let res = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .mode(self.file_mode)
            .open(&tmp)
            .and_then(|mut f| std::io::Write::write_all(&mut f, body.as_bytes()))
            .and_then(|()| {
                if self.fsync {
                    File::open(&tmp)?.sync_all()?;
                }
                std::fs::rename(&tmp, self.dir.join(CHECKPOINT))
            });
        match res {
            Ok(()) => self.state.lock().expect("not poisoned").checkpointed = acked,
            // Not fatal: a stale checkpoint only means more replays (duplicates) after a crash.
            Err(e) => tracing::warn!(error = %e, "writing spool checkpoint"),
        }
    }
}

/// Deletes acknowledged segment files (a reader still holding one open reads on; one that
/// opens it next finds it gone and moves on).
fn remove_segments(paths: Vec<PathBuf>) {
    for p in paths {
        if let Err(e) = std::fs::remove_file(&p) {
            tracing::warn!(path = %p.display(), error = %e, "deleting acknowledged segment");
        }
    }
}

/// Drops the marks no longer needed to date record `oldest` (the oldest unacknowledged): all
/// but the last one at or before it.
fn prune_marks(marks: &mut VecDeque<(u64, Instant)>, oldest: u64) {
    while marks.len() > 1 && marks[1].0 <= oldest {
        marks.pop_front();
    }
}

/// How long the oldest unacknowledged record has waited: since the last mark at or before it
/// (a mark is set by the first group written a second or more after the previous mark, so this
/// is early by under a second). Zero when everything written is acknowledged. The segments say
/// what is written, not the `written` watch, which a group publishes after its mark.
fn oldest_unacked_age(st: &State, now: Instant) -> Duration {
    let oldest = st.acked + 1;
    let written = st.segments.back().map_or(0, |s| s.last_seq);
    if written < oldest {
        return Duration::ZERO;
    }
    let at = st.marks.iter().take_while(|(seq, _)| *seq <= oldest).last();
    at.map_or(Duration::ZERO, |(_, t)| now.saturating_duration_since(*t))
}

fn unix_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The kernel's boot id: changes at every boot.
fn boot_id() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .ok()
        .map(|s| s.trim().to_string())
}

/// `instance acked boot_id` (hex, decimal, text).
fn read_checkpoint(dir: &Path) -> (Option<u64>, u64, Option<String>) {
    let Ok(text) = std::fs::read_to_string(dir.join(CHECKPOINT)) else {
        return (None, 0, None);
    };
    let mut it = text.split_whitespace();
    let instance = it.next().and_then(|s| u64::from_str_radix(s, 16).ok());
    let acked = it.next().and_then(|s| s.parse().ok());
    let boot = it.next().filter(|b| *b != "-").map(str::to_string);
    match (instance, acked) {
        (Some(i), Some(a)) => (Some(i), a, boot),
        _ => {
            tracing::warn!("unreadable spool checkpoint; starting a new instance");
            (None, 0, None)
        }
    }
}

fn list_segments(dir: &Path) -> io::Result<Vec<(u64, PathBuf)>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir)? {
        let p = e?.path();
        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if let Some(num) = name
            .strip_prefix("seg-")
            .and_then(|n| n.strip_suffix(".log"))
        {
            if let Ok(first) = num.parse::<u64>() {
                if first > 0 {
                    out.push((first, p));
                }
            }
        }
    }
    Ok(out)
}

/// Scans a segment; in the last segment a torn tail is cut off the file.
fn scan_segment(path: &Path, last: bool) -> io::Result<Scan> {
    let data = std::fs::read(path)?;
    let mut scan = scan_bytes(&data);
    if scan.valid_bytes < data.len() as u64 {
        let tail = data.len() as u64 - scan.valid_bytes;
        if last {
            tracing::warn!(path = %path.display(), bytes = tail, "cutting a torn or corrupt tail off the spool");
            let f = OpenOptions::new().write(true).open(path)?;
            f.set_len(scan.valid_bytes)?;
            f.sync_all()?;
            scan.truncated = tail;
        } else {
            tracing::error!(path = %path.display(), bytes = tail, "unreadable bytes at the end of a spool segment; skipped");
            scan.corrupt += 1;
        }
    }
    Ok(scan)
}

#[cfg(test)]
mod tests {
    use super::frame::{crc32c, encode_record, parse_record, HEADER_BYTES};
    use super::*;
    use bytes::{BufMut, Bytes, BytesMut};

    impl Spool {
        /// Appends one record on its own and waits until it is in the spool (written, or
        /// fsync'd with `ack_after = "fsync"`). The ingest workers batch instead (see
        /// `ingest::commit`); this is for tests.
        async fn append(&self, record: Bytes) -> Result<(), AppendError> {
            let mut buf = BytesMut::with_capacity(HEADER_BYTES + record.len());
            let at = frame_start(&mut buf);
            buf.put_slice(&record);
            frame_end(&mut buf, at);
            match self.write_group(&mut buf, 1)? {
                Written::Done => Ok(()),
                Written::NeedsSync(f) => {
                    let me = self.clone();
                    tokio::task::spawn_blocking(move || me.sync(&f))
                        .await
                        .unwrap_or(Err(AppendError::Closed))
                }
            }
        }
    }

    /// The byte-at-a-time CRC-32C earlier versions framed records with.
    fn crc32c_by_table(crc: u32, data: &[u8]) -> u32 {
        let mut c = !crc;
        for &b in data {
            c ^= u32::from(b);
            for _ in 0..8 {
                c = if c & 1 != 0 {
                    0x82F6_3B78 ^ (c >> 1)
                } else {
                    c >> 1
                };
            }
        }
        !c
    }

    /// The age is that of the oldest unacknowledged record's mark, never of an older mark left
    /// from records acknowledged long ago (the reported 151 s for a 40 s old beacon), and zero
    /// only when everything written is acknowledged.
    #[test]
    fn oldest_unacked_age_dates_the_oldest_record() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let seg = |last_seq| Segment {
            first_seq: 1,
            last_seq,
            path: PathBuf::new(),
            bytes: 0,
        };
        let mut st = State {
            segments: VecDeque::from([seg(100)]),
            acked: 100,
            total_bytes: 0,
            marks: VecDeque::from([(1, at(0))]),
            checkpointed: 0,
        };
        assert_eq!(oldest_unacked_age(&st, at(150)), Duration::ZERO);
        // 150 s later three beacons arrive (a new mark) and are not acknowledged.
        st.segments[0].last_seq = 103;
        st.marks.push_back((101, at(150)));
        assert_eq!(oldest_unacked_age(&st, at(190)), Duration::from_secs(40));
        // Two acknowledged: the third still dates from its group's mark.
        st.acked = 102;
        prune_marks(&mut st.marks, 103);
        assert_eq!(st.marks.len(), 1);
        assert_eq!(oldest_unacked_age(&st, at(200)), Duration::from_secs(50));
        st.acked = 103;
        assert_eq!(oldest_unacked_age(&st, at(200)), Duration::ZERO);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_spool_written_by_the_single_writer_version_is_replayed() {
        let dir = tempfile::tempdir().unwrap();
        // Exactly what the writer thread wrote: one segment, checkpoint at 1.
        let mut seg = Vec::new();
        for seq in 1..=3u64 {
            let payload = format!("record {seq}").into_bytes();
            let seq_bytes = seq.to_be_bytes();
            seg.extend_from_slice(&(payload.len() as u32).to_be_bytes());
            seg.extend_from_slice(
                &crc32c_by_table(crc32c_by_table(0, &seq_bytes), &payload).to_be_bytes(),
            );
            seg.extend_from_slice(&seq_bytes);
            seg.extend_from_slice(&payload);
        }
        std::fs::write(dir.path().join("seg-00000000000000000001.log"), &seg).unwrap();
        std::fs::write(dir.path().join("checkpoint"), "00000000000000ab 1 -\n").unwrap();
        let (spool, rec) = Spool::open(&cfg(dir.path()), Duration::from_secs(1)).unwrap();
        assert_eq!((rec.records, rec.unacked, rec.corrupt), (3, 2, 0));
        assert_eq!(spool.instance(), 0xab);
        let mut out = Vec::new();
        spool.reader(2).read(u64::MAX, 10, &mut out).unwrap();
        let got: Vec<_> = out.iter().map(|(s, b)| (*s, b.to_vec())).collect();
        assert_eq!(
            got,
            vec![(2, b"record 2".to_vec()), (3, b"record 3".to_vec())]
        );
        // New records continue the sequence.
        spool.append(Bytes::from_static(b"new")).await.unwrap();
        assert_eq!(*spool.written().borrow(), 4);
    }

    #[test]
    fn crc32c_known_vector() {
        assert_eq!(crc32c_by_table(0, b"123456789"), 0xE306_9283);
        for n in [0, 1, 7, 64, 1000] {
            let data: Vec<u8> = (0..n).map(|i| (i * 31 % 251) as u8).collect();
            assert_eq!(crc32c(17, &data), crc32c_by_table(17, &data));
        }
        assert_eq!(crc32c(0, b"123456789"), 0xE306_9283);
        assert_eq!(crc32c(crc32c(0, b"1234"), b"56789"), 0xE306_9283);
    }

    fn framed(n: u64) -> (Vec<u8>, Vec<usize>) {
        let mut buf = BytesMut::new();
        let mut ends = Vec::new();
        for seq in 1..=n {
            let payload: Vec<u8> = (0..(seq * 7 % 50)).map(|i| (i * seq) as u8).collect();
            encode_record(seq, &payload, &mut buf);
            ends.push(buf.len());
        }
        (buf.to_vec(), ends)
    }

    #[test]
    fn truncation_at_any_offset_keeps_exactly_the_complete_records() {
        let (data, ends) = framed(40);
        for cut in 0..=data.len() {
            let scan = scan_bytes(&data[..cut]);
            let complete = ends.iter().filter(|&&e| e <= cut).count() as u64;
            assert_eq!(scan.records, complete, "cut at {cut}");
            assert_eq!(scan.corrupt, 0, "cut at {cut}");
            assert_eq!(scan.last_seq, (complete > 0).then_some(complete));
            let valid = if complete == 0 {
                0
            } else {
                ends[complete as usize - 1]
            };
            assert_eq!(scan.valid_bytes, valid as u64, "cut at {cut}");
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic_and_never_yield_a_bad_record() {
        let mut rng = fastrand::Rng::with_seed(7);
        for _ in 0..2000 {
            let len = rng.usize(0..300);
            let data: Vec<u8> = (0..len).map(|_| rng.u8(..)).collect();
            let scan = scan_bytes(&data);
            assert!(scan.valid_bytes <= data.len() as u64);
            // Anything it accepted re-verifies.
            let mut pos = 0;
            for _ in 0..scan.records + scan.corrupt {
                match parse_record(&data[pos..]) {
                    Ok(Some((_, _, size))) | Err(size) if size > 0 => pos += size,
                    other => panic!("scan and parse disagree: {other:?}"),
                }
            }
        }
    }

    #[test]
    fn flipped_bytes_are_skipped_or_cut_never_returned() {
        let (data, ends) = framed(20);
        let mut rng = fastrand::Rng::with_seed(11);
        for _ in 0..2000 {
            let mut d = data.clone();
            let at = rng.usize(0..d.len());
            d[at] ^= 1 << rng.u8(0..8);
            let scan = scan_bytes(&d);
            // The damaged record is the one whose byte range holds `at`.
            let damaged = ends.iter().position(|&e| at < e).unwrap() as u64 + 1;
            assert!(
                !scan.seqs.contains(&damaged)
                    || scan.seqs.iter().filter(|&&s| s == damaged).count() <= 1
            );
            assert!(scan.records <= 20);
            // Every record before the damaged one survives.
            for s in 1..damaged {
                assert!(
                    scan.seqs.contains(&s),
                    "lost intact record {s} (flip at {at})"
                );
            }
            // A flip in the payload or crc is caught by the checksum.
            let start = if damaged == 1 {
                0
            } else {
                ends[damaged as usize - 2]
            };
            if at >= start + 4 {
                assert!(
                    !scan.seqs.contains(&damaged),
                    "corrupt record {damaged} returned (flip at {at})"
                );
            }
        }
    }

    fn cfg(dir: &Path) -> SpoolConfig {
        SpoolConfig {
            dir: dir.to_path_buf(),
            segment_bytes: 4096,
            ..SpoolConfig::default()
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn append_read_ack_delete_and_recover() {
        // (and, below, a checkpoint from another boot in write mode gets a new instance)
        let dir = tempfile::tempdir().unwrap();
        let (spool, rec) = Spool::open(&cfg(dir.path()), Duration::from_secs(1)).unwrap();
        assert_eq!(rec, Recovery::default());
        for i in 0..100u32 {
            spool.append(Bytes::from(vec![i as u8; 100])).await.unwrap();
        }
        assert_eq!(*spool.written().borrow(), 100);
        let segs = list_segments(dir.path()).unwrap().len();
        assert!(segs > 1, "rolled into several segments");
        let mut r = spool.reader(1);
        let mut out = Vec::new();
        r.read(100, 1000, &mut out).unwrap();
        assert_eq!(out.len(), 100);
        assert!(out
            .iter()
            .enumerate()
            .all(|(i, (s, p))| *s == i as u64 + 1 && p[0] == i as u8));
        spool.ack(60);
        spool.checkpoint();
        assert!(
            list_segments(dir.path()).unwrap().len() < segs,
            "acknowledged segments deleted"
        );
        let instance = spool.instance();
        drop((spool, r)); // the reader keeps the spool (and its lock) alive too
        std::thread::sleep(Duration::from_millis(50));

        // Reopen: the checkpoint keeps the instance, replay starts after the ack.
        let (spool, rec) = Spool::open(&cfg(dir.path()), Duration::from_secs(1)).unwrap();
        assert_eq!(spool.instance(), instance);
        assert_eq!(rec.unacked, 40);
        assert_eq!(spool.acked(), 60);
        let mut r = spool.reader(61);
        let mut out = Vec::new();
        r.read(100, 1000, &mut out).unwrap();
        assert_eq!(out.first().unwrap().0, 61);
        assert_eq!(out.len(), 40);
        spool.append(Bytes::from_static(b"next")).await.unwrap();
        assert_eq!(
            *spool.written().borrow(),
            101,
            "sequence continues after restart"
        );
    }

    #[test]
    fn a_spool_in_use_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (_spool, _) = Spool::open(&cfg(dir.path()), Duration::from_secs(1)).unwrap();
        let Err(e) = Spool::open(&cfg(dir.path()), Duration::from_secs(1)) else {
            panic!("a second spool on the same directory was allowed");
        };
        assert!(e.what.contains("in use"), "{e}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reopen_cuts_a_torn_tail_and_skips_a_corrupt_record() {
        let dir = tempfile::tempdir().unwrap();
        let c = SpoolConfig {
            segment_bytes: 1 << 20,
            ..cfg(dir.path())
        };
        let (spool, _) = Spool::open(&c, Duration::from_secs(1)).unwrap();
        for i in 0..10u8 {
            spool.append(Bytes::from(vec![i; 50])).await.unwrap();
        }
        drop(spool);
        std::thread::sleep(Duration::from_millis(50));
        let (_, path) = list_segments(dir.path()).unwrap().remove(0);
        let mut data = std::fs::read(&path).unwrap();
        let rec = HEADER_BYTES + 50;
        data[3 * rec + HEADER_BYTES + 7] ^= 0xff; // corrupt record 4's payload
        data.truncate(data.len() - 20); // tear record 10
        std::fs::write(&path, &data).unwrap();

        let (spool, r) = Spool::open(&c, Duration::from_secs(1)).unwrap();
        assert_eq!(r.records, 8);
        assert_eq!(r.corrupt, 1);
        assert_eq!(r.truncated_bytes, (rec - 20) as u64);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), (9 * rec) as u64);
        let mut out = Vec::new();
        spool.reader(1).read(100, 100, &mut out).unwrap();
        let seqs: Vec<u64> = out.iter().map(|(s, _)| *s).collect();
        assert_eq!(seqs, vec![1, 2, 3, 5, 6, 7, 8, 9]);
        // The torn record never completed, so no client got a 2xx for it: its number is reused.
        spool.append(Bytes::from_static(b"new")).await.unwrap();
        assert_eq!(*spool.written().borrow(), 10);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn high_water_refuses_then_recovers_below_low_water() {
        let dir = tempfile::tempdir().unwrap();
        let c = SpoolConfig {
            max_bytes: 20_000,
            high_water_percent: 50,
            low_water_percent: 25,
            ..cfg(dir.path())
        };
        let (spool, _) = Spool::open(&c, Duration::from_secs(1)).unwrap();
        let mut ok = 0u64;
        loop {
            match spool.append(Bytes::from(vec![0u8; 500])).await {
                Ok(()) => ok += 1,
                Err(e) => {
                    assert_eq!(e, AppendError::Full);
                    break;
                }
            }
        }
        assert!((18..=21).contains(&ok), "{ok}");
        assert!(!spool.healthy());
        spool.ack(ok);
        assert!(spool.healthy());
        spool.append(Bytes::from_static(b"again")).await.unwrap();
    }
}
