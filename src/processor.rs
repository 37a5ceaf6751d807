//! The bundled processing stage (`beacon-collector process`): listens on the unix socket,
//! decodes BATCH frames, writes one NDJSON line per record to size/time-rotated files, and
//! ACKs each batch once its lines are written (or fsync'd, with `processor.fsync`).
//!
//! Ownership: one writer task owns the current file; connection tasks decode and render lines
//! in parallel and hand them to the writer with a oneshot for the result. Each connection has
//! an ACK task that waits for those results in order, so ACKs are cumulative and never run
//! ahead of the file.

use crate::config::{Config, ProcessorConfig};
use crate::metrics as m;
use crate::protocol::{self, Frame};
use crate::record::RecordRef;
use bytes::BytesMut;
use std::collections::HashMap;
use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot, watch};

/// A failure that stops the processing stage.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    /// Another processing stage answers on the socket.
    #[error("another processing stage is already listening on {0}")]
    InUse(PathBuf),
    /// Setting up the socket or data directory failed.
    #[error("{what} {path}: {source}")]
    Setup {
        /// The step.
        what: &'static str,
        /// The path involved.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The sink could not write (disk full, permissions): nothing more can be acknowledged.
    #[error("writing {path}: {source}")]
    Sink {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

fn setup<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> ProcessError + 'a {
    move |source| ProcessError::Setup {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// Binds the unix socket, replacing a stale socket file left by a crashed stage but refusing
/// to steal the socket of a live one. Sets the configured mode.
pub fn bind(path: &Path, mode: u32) -> Result<UnixListener, ProcessError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(setup("create directory", dir))?;
    }
    if path.exists() {
        match std::os::unix::net::UnixStream::connect(path) {
            Ok(_) => return Err(ProcessError::InUse(path.to_path_buf())),
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                tracing::info!(socket = %path.display(), "removing stale socket file");
                std::fs::remove_file(path).map_err(setup("remove stale socket", path))?;
            }
            Err(e) => return Err(setup("probe existing socket", path)(e)),
        }
    }
    let l = UnixListener::bind(path).map_err(setup("bind", path))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(setup("chmod", path))?;
    Ok(l)
}

/// Runs the processing stage until `stop` resolves, then finishes pending writes, closes the
/// current file and returns.
pub async fn run(
    config: Config,
    listener: UnixListener,
    admin: Option<std::net::TcpListener>,
    stop: impl std::future::Future<Output = ()>,
) -> Result<(), ProcessError> {
    let pc = config.processor.clone();
    let mut sink = FileSink::open(&pc)?;
    let (job_tx, mut job_rx) = mpsc::channel::<Job>(64);
    let (stop_tx, stop_rx) = watch::channel(false);
    let seen = Arc::new(Mutex::new(HashMap::<u64, u64>::new()));

    // The writer owns the file. It ends when every job sender is gone (all connections done),
    // or at the first write error: then the stage exits non-zero, the supervisor restarts it,
    // and the collector resends everything unacknowledged. Never ACK what is not written.
    let mut writer = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                job = job_rx.recv() => {
                    let Some(job) = job else { break };
                    if let Err(e) = tokio::task::block_in_place(|| sink.write(&job.lines, job.records)) {
                        let _ = job.done.send(false);
                        return Err(e);
                    }
                    let _ = job.done.send(true);
                }
                _ = tick.tick() => sink.rotate_if_old()?,
            }
        }
        sink.close()
    });

    let (stop_admin_tx, stop_admin_rx) = watch::channel(false);
    if let Some(l) = admin {
        match tokio::net::TcpListener::from_std(l) {
            Ok(l) => {
                tokio::spawn(m::serve_admin(l, m::install(), stop_admin_rx));
            }
            Err(e) => tracing::warn!(error = %e, "processing stage metrics listener unusable"),
        }
    }

    let mut conns = tokio::task::JoinSet::new();
    tokio::pin!(stop);
    let early = loop {
        tokio::select! {
            _ = &mut stop => break None,
            res = &mut writer => break Some(res),
            r = listener.accept() => match r {
                Ok((stream, _)) => {
                    conns.spawn(connection(stream, job_tx.clone(), stop_rx.clone(), seen.clone()));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accept on processing socket");
                    tokio::time::sleep(crate::listener::ACCEPT_PAUSE).await;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    };
    let _ = stop_admin_tx.send(true);
    let _ = stop_tx.send(true);
    drop(job_tx);
    drop(listener);
    if let Some(res) = early {
        conns.shutdown().await;
        return res.expect("writer task does not panic");
    }
    tracing::info!("processing stage stopping: finishing pending writes");
    while conns.join_next().await.is_some() {}
    writer.await.expect("writer task does not panic")
}

struct Job {
    lines: Vec<u8>,
    records: u64,
    done: oneshot::Sender<bool>,
}

async fn connection(
    stream: UnixStream,
    jobs: mpsc::Sender<Job>,
    mut stop: watch::Receiver<bool>,
    seen: Arc<Mutex<HashMap<u64, u64>>>,
) {
    let (mut rd, mut wr) = stream.into_split();
    let instance = match protocol::read_frame(&mut rd).await {
        Ok(Some(Frame::Hello { version, instance })) if version == protocol::VERSION => instance,
        Ok(Some(Frame::Hello { version, .. })) => {
            tracing::error!(
                version,
                supported = protocol::VERSION,
                "collector speaks an unsupported protocol version"
            );
            return;
        }
        other => {
            tracing::error!(frame = ?other.map(|f| f.map(|_| ())), "expected HELLO");
            return;
        }
    };
    tracing::info!(
        instance = format_args!("{instance:016x}"),
        "collector connected"
    );
    // ACKs go out in order: the ACK task awaits each batch's write result before the next.
    let (ack_tx, mut ack_rx) = mpsc::unbounded_channel::<(u64, oneshot::Receiver<bool>)>();
    let ack_seen = seen.clone();
    let acker = tokio::spawn(async move {
        let mut buf = BytesMut::new();
        while let Some((seq, done)) = ack_rx.recv().await {
            if done.await != Ok(true) {
                return;
            }
            {
                let mut s = ack_seen.lock().expect("not poisoned");
                let hw = s.entry(instance).or_insert(0);
                *hw = (*hw).max(seq);
            }
            Frame::Ack { seq }.encode(&mut buf);
            if wr.write_all(&buf).await.is_err() {
                return;
            }
            buf.clear();
        }
        let _ = wr.shutdown().await;
    });

    loop {
        let frame = tokio::select! {
            // Stop reading at shutdown; what was read is still written and acknowledged.
            _ = crate::wait_true(&mut stop) => break,
            f = protocol::read_frame(&mut rd) => f,
        };
        let (first_seq, records) = match frame {
            Ok(Some(Frame::Batch { first_seq, records })) => (first_seq, records),
            Ok(None) => break,
            Ok(Some(other)) => {
                tracing::error!(frame = ?other, "unexpected frame from collector");
                break;
            }
            Err(e) => {
                tracing::warn!(error = %e, "reading from collector");
                break;
            }
        };
        let n = records.len() as u64;
        if n == 0 {
            continue;
        }
        let last = first_seq + n - 1;
        // Resends after a reconnect: skip what this stage already wrote for this instance.
        let written_up_to = seen
            .lock()
            .expect("not poisoned")
            .get(&instance)
            .copied()
            .unwrap_or(0);
        let mut lines = Vec::with_capacity(records.iter().map(|r| r.len() * 2).sum());
        let mut count = 0u64;
        let mut dups = 0u64;
        for (i, rec) in records.iter().enumerate() {
            if first_seq + i as u64 <= written_up_to {
                dups += 1;
                continue;
            }
            match RecordRef::decode(rec) {
                Ok(r) => {
                    r.write_ndjson(&mut lines);
                    count += 1;
                }
                Err(e) => {
                    // Acknowledged anyway: resending the same bytes cannot fix them.
                    metrics::counter!(m::SINK_CORRUPT_RECORDS_TOTAL).increment(1);
                    tracing::error!(seq = first_seq + i as u64, error = %e, "skipping undecodable record");
                }
            }
        }
        if dups > 0 {
            metrics::counter!(m::SINK_DUPLICATES_TOTAL).increment(dups);
        }
        let (done_tx, done_rx) = oneshot::channel();
        if count == 0 {
            let _ = done_tx.send(true);
        } else if jobs
            .send(Job {
                lines,
                records: count,
                done: done_tx,
            })
            .await
            .is_err()
        {
            break;
        }
        if ack_tx.send((last, done_rx)).is_err() {
            break;
        }
    }
    drop(ack_tx);
    let _ = acker.await;
}

/// The NDJSON file sink. The file being written is `<name>.ndjson.open`; it is renamed to
/// `<name>.ndjson` when rotated or closed, so a shipper can take every `*.ndjson` file whole.
pub struct FileSink {
    cfg: ProcessorConfig,
    current: Option<Current>,
    counter: u64,
}

struct Current {
    file: std::fs::File,
    path: PathBuf,
    bytes: u64,
    opened: Instant,
}

impl FileSink {
    /// Creates the data directory and finishes files a crashed stage left open: a torn last
    /// line is cut off (its batch was never acknowledged, so the collector resends it) and the
    /// file is renamed to `.ndjson`.
    pub fn open(cfg: &ProcessorConfig) -> Result<Self, ProcessError> {
        std::fs::create_dir_all(&cfg.data_dir).map_err(setup("create data_dir", &cfg.data_dir))?;
        let entries =
            std::fs::read_dir(&cfg.data_dir).map_err(setup("read data_dir", &cfg.data_dir))?;
        for e in entries.flatten() {
            let p = e.path();
            if p.extension().is_some_and(|x| x == "open") {
                recover_open_file(&p).map_err(|source| ProcessError::Sink {
                    path: p.clone(),
                    source,
                })?;
            }
        }
        Ok(Self {
            cfg: cfg.clone(),
            current: None,
            counter: 0,
        })
    }

    fn write(&mut self, lines: &[u8], records: u64) -> Result<(), ProcessError> {
        if self
            .current
            .as_ref()
            .is_some_and(|c| c.bytes > 0 && c.bytes + lines.len() as u64 > self.cfg.rotate_bytes)
        {
            self.rotate()?;
        }
        if self.current.is_none() {
            self.current = Some(self.new_file()?);
        }
        let cur = self.current.as_mut().expect("just opened");
        let res = cur.file.write_all(lines).and_then(|()| {
            if self.cfg.fsync {
                cur.file.sync_data()
            } else {
                Ok(())
            }
        });
        res.map_err(|source| ProcessError::Sink {
            path: cur.path.clone(),
            source,
        })?;
        cur.bytes += lines.len() as u64;
        metrics::counter!(m::SINK_RECORDS_TOTAL).increment(records);
        Ok(())
    }

    fn new_file(&mut self) -> Result<Current, ProcessError> {
        self.counter += 1;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let name = format!(
            "{}-{}-{}-{}.ndjson.open",
            self.cfg.file_prefix,
            crate::time::compact_seconds(now),
            std::process::id(),
            self.counter
        );
        let path = self.cfg.data_dir.join(name);
        let file = std::fs::OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(&path)
            .map_err(|source| ProcessError::Sink {
                path: path.clone(),
                source,
            })?;
        Ok(Current {
            file,
            path,
            bytes: 0,
            opened: Instant::now(),
        })
    }

    fn rotate_if_old(&mut self) -> Result<(), ProcessError> {
        if self
            .current
            .as_ref()
            .is_some_and(|c| c.opened.elapsed() >= Duration::from_secs(self.cfg.rotate_seconds))
        {
            self.rotate()?;
        }
        Ok(())
    }

    fn rotate(&mut self) -> Result<(), ProcessError> {
        if let Some(cur) = self.current.take() {
            let done = cur.path.with_extension("");
            let res = cur
                .file
                .sync_all()
                .and_then(|()| std::fs::rename(&cur.path, &done));
            res.map_err(|source| ProcessError::Sink {
                path: cur.path.clone(),
                source,
            })?;
            metrics::counter!(m::SINK_FILES_ROTATED_TOTAL).increment(1);
            tracing::debug!(file = %done.display(), bytes = cur.bytes, "rotated");
        }
        Ok(())
    }

    /// Closes (and renames) the current file.
    pub fn close(&mut self) -> Result<(), ProcessError> {
        self.rotate()
    }
}

fn recover_open_file(p: &Path) -> io::Result<()> {
    let data = std::fs::read(p)?;
    let keep = data.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    if keep < data.len() {
        tracing::warn!(file = %p.display(), cut_bytes = data.len() - keep, "cutting a torn last line");
        let f = std::fs::OpenOptions::new().write(true).open(p)?;
        f.set_len(keep as u64)?;
        f.sync_all()?;
    }
    std::fs::rename(p, p.with_extension(""))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(dir: &Path) -> ProcessorConfig {
        ProcessorConfig {
            data_dir: dir.to_path_buf(),
            rotate_bytes: 4096,
            ..ProcessorConfig::default()
        }
    }

    #[test]
    fn sink_rotates_by_size_and_renames_on_close() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = FileSink::open(&cfg(dir.path())).unwrap();
        let line = vec![b'x'; 1000];
        for _ in 0..10 {
            let mut l = line.clone();
            l.push(b'\n');
            s.write(&l, 1).unwrap();
        }
        s.close().unwrap();
        let mut names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names.len(), 3, "{names:?}");
        assert!(names.iter().all(|n| n.ends_with(".ndjson")), "{names:?}");
        let total: usize = names
            .iter()
            .map(|n| std::fs::read(dir.path().join(n)).unwrap().len())
            .sum();
        assert_eq!(total, 10 * 1001);
    }

    #[test]
    fn torn_open_file_is_cut_and_renamed() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("beacons-x-1-1.ndjson.open");
        std::fs::write(&p, b"{\"a\":1}\n{\"b\":").unwrap();
        FileSink::open(&cfg(dir.path())).unwrap();
        assert!(!p.exists());
        let done = dir.path().join("beacons-x-1-1.ndjson");
        assert_eq!(std::fs::read(done).unwrap(), b"{\"a\":1}\n");
    }

    #[tokio::test]
    async fn stale_socket_replaced_live_socket_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s.sock");
        let l = bind(&p, 0o660).unwrap();
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o660);
        assert!(matches!(bind(&p, 0o660), Err(ProcessError::InUse(_))));
        drop(l); // leaves the file behind, like a crash
        assert!(p.exists());
        bind(&p, 0o660).unwrap();
    }
}
