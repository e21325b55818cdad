//! `bridge: log-file:` — the daemon's log in a file instead of stderr, reopened at the
//! next line after SIGUSR1 (logrotate moves the file, then signals).
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use super::reopen::Reopen;

struct Inner {
    file: File,
    generation: u64,
}

/// A log file shared by every writer tracing hands out.
#[derive(Clone)]
pub(crate) struct LogFile {
    path: Arc<PathBuf>,
    reopen: Reopen,
    inner: Arc<Mutex<Inner>>,
}

impl LogFile {
    /// Open (append, create) the file; it is opened again after each `reopen` request.
    pub(crate) fn open(path: PathBuf, reopen: Reopen) -> std::io::Result<Self> {
        let file = open_append(&path)?;
        Ok(Self {
            path: Arc::new(path),
            inner: Arc::new(Mutex::new(Inner { file, generation: reopen.generation() })),
            reopen,
        })
    }
}

impl Write for LogFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let (written, reopen_failed) = {
            let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
            let now = self.reopen.generation();
            let mut failed = None;
            if inner.generation != now {
                inner.generation = now;
                // Keep writing to the old file when the new one cannot be opened: losing the
                // log would be worse than writing to a rotated name.
                match open_append(&self.path) {
                    Ok(f) => inner.file = f,
                    Err(e) => failed = Some(e),
                }
            }
            // One write per event: lines of concurrent events never interleave (O_APPEND).
            (inner.file.write_all(buf), failed)
        };
        if let Some(e) = reopen_failed {
            self.tell_reopen_failed(&e);
        }
        written.map(|()| buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl LogFile {
    /// An event of its own, in the log's format (this writer is free again: the event
    /// comes back through it, to the file still open), and on stderr for whoever watches
    /// the daemon's start (a terminal, the journal).
    fn tell_reopen_failed(&self, e: &std::io::Error) {
        let why = format!(
            "cannot reopen log file {}: {e}; still writing to the file open before the rotation",
            self.path.display()
        );
        eprintln!("fcgibridge: {why}");
        tracing::error!("{why}");
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogFile {
    type Writer = Self;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

/// A log file opened to append, created 0640: it holds every pool's URIs and the apps'
/// tracebacks, for the operator (and the log's group), not for the tenants whose workers
/// run on the box.
pub(crate) fn open_append(path: &std::path::Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    OpenOptions::new().create(true).append(true).mode(0o640).open(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reopens_after_its_own_generation_moves() {
        let dir = crate::scratch::scratch_dir("logfile");
        let path = dir.join("bridge.log");
        let (reopen, other) = (Reopen::default(), Reopen::default());
        let mut f = LogFile::open(path.clone(), reopen.clone()).expect("open");
        f.write_all(b"one\n").expect("write");
        std::fs::rename(&path, dir.join("bridge.log.1")).expect("rotate");
        // Another daemon's (or test's) generation is not this file's.
        other.request();
        f.write_all(b"two\n").expect("write");
        reopen.request();
        f.write_all(b"three\n").expect("write");
        assert_eq!(std::fs::read_to_string(dir.join("bridge.log.1")).expect("old"), "one\ntwo\n");
        assert_eq!(std::fs::read_to_string(&path).expect("new"), "three\n");
    }

    #[test]
    fn a_new_log_file_is_not_for_every_user_to_read() {
        use std::os::unix::fs::PermissionsExt;
        let dir = crate::scratch::scratch_dir("log-file-mode");
        let path = dir.join("bridge.log");
        open_append(&path).expect("open");
        let mode = std::fs::metadata(&path).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode & 0o007, 0, "mode {mode:o}");
    }
}
