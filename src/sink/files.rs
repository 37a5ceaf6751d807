//! The NDJSON file sink: one line per record into size/time-rotated files in
//! `processor.files.data_dir`; a batch is confirmed once written (and fdatasync'd with
//! `processor.files.fsync`).

use super::Job;
use super::{setup, SinkError};
use crate::config::FilesConfig;
use crate::metrics as m;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// Writes jobs until every sender is gone, rotating old files once a second. The first write
/// error ends it: then the stage exits non-zero, the supervisor restarts it, and the collector
/// resends everything unacknowledged. Never confirm what is not written.
pub(crate) async fn run(
    mut sink: FileSink,
    mut jobs: mpsc::Receiver<Job>,
) -> Result<(), SinkError> {
    for name in [m::SINK_RECORDS_TOTAL, m::SINK_FILES_ROTATED_TOTAL] {
        metrics::counter!(name).increment(0);
    }
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            job = jobs.recv() => {
                let Some(job) = job else { break };
                let n = job.batch.records.len() as u64;
                // An append to a file, into the page cache: done in place. (block_in_place
                // handed the runtime to another thread on every batch, a thread switch per
                // batch for a write of a few microseconds.)
                if let Err(e) = sink.write(&job.batch.lines, n) {
                    let _ = job.done.send(false);
                    return Err(e);
                }
                let _ = job.done.send(true);
            }
            _ = tick.tick() => sink.rotate_if_old()?,
        }
    }
    sink.close()
}

/// The NDJSON file sink. The file being written is `<name>.ndjson.open`; it is renamed to
/// `<name>.ndjson` when rotated or closed, so a shipper can take every `*.ndjson` file whole.
pub(crate) struct FileSink {
    cfg: FilesConfig,
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
    pub(crate) fn open(cfg: &FilesConfig) -> Result<Self, SinkError> {
        // Records hold client IPs and page URLs: the owner, and the group if configured.
        std::os::unix::fs::DirBuilderExt::mode(
            std::fs::DirBuilder::new().recursive(true),
            crate::config::dir_mode(cfg.mode),
        )
        .create(&cfg.data_dir)
        .map_err(setup("create data_dir", &cfg.data_dir))?;
        let entries =
            std::fs::read_dir(&cfg.data_dir).map_err(setup("read data_dir", &cfg.data_dir))?;
        for e in entries.flatten() {
            let p = e.path();
            if p.extension().is_some_and(|x| x == "open") {
                recover_open_file(&p).map_err(|source| SinkError::Write {
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

    /// Appends whole lines (`records` of them) to the current file.
    pub(crate) fn write(&mut self, lines: &[u8], records: u64) -> Result<(), SinkError> {
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
        res.map_err(|source| SinkError::Write {
            path: cur.path.clone(),
            source,
        })?;
        cur.bytes += lines.len() as u64;
        metrics::counter!(m::SINK_RECORDS_TOTAL).increment(records);
        Ok(())
    }

    fn new_file(&mut self) -> Result<Current, SinkError> {
        self.counter += 1;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let name = format!(
            "{}-{}-{}-{}.ndjson.open",
            self.cfg.prefix,
            crate::time::compact_seconds(now),
            std::process::id(),
            self.counter
        );
        let path = self.cfg.data_dir.join(name);
        let file = std::os::unix::fs::OpenOptionsExt::mode(
            std::fs::OpenOptions::new().create_new(true).append(true),
            self.cfg.mode,
        )
        .open(&path)
        .map_err(|source| SinkError::Write {
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

    fn rotate_if_old(&mut self) -> Result<(), SinkError> {
        if self
            .current
            .as_ref()
            .is_some_and(|c| c.opened.elapsed() >= Duration::from_secs(self.cfg.rotate_seconds))
        {
            self.rotate()?;
        }
        Ok(())
    }

    fn rotate(&mut self) -> Result<(), SinkError> {
        if let Some(cur) = self.current.take() {
            let done = cur.path.with_extension("");
            let res = cur
                .file
                .sync_all()
                .and_then(|()| std::fs::rename(&cur.path, &done));
            res.map_err(|source| SinkError::Write {
                path: cur.path.clone(),
                source,
            })?;
            metrics::counter!(m::SINK_FILES_ROTATED_TOTAL).increment(1);
            tracing::debug!(file = %done.display(), bytes = cur.bytes, "rotated");
        }
        Ok(())
    }

    /// Closes (and renames) the current file.
    pub(crate) fn close(&mut self) -> Result<(), SinkError> {
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

    fn cfg(dir: &Path) -> FilesConfig {
        FilesConfig {
            data_dir: dir.to_path_buf(),
            rotate_bytes: 4096,
            ..FilesConfig::default()
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
}
