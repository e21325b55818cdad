//! The daemon's log (tracing, text or JSON, on stderr) and the optional access log.
pub(crate) mod access_format;
pub(crate) mod app_lines;
pub(crate) mod app_records;
pub(crate) mod file;
pub(crate) mod ratelimit;
pub(crate) mod reopen;

use crate::config::access_format::AccessFormat;
use crate::config::{Global, LogFormat};
use std::io::Write;
use std::path::Path;
use tracing_subscriber::EnvFilter;

/// Install the global subscriber. An invalid filter falls back to "info" with a warning.
/// Returns the reopen generation of the daemon's log files (SIGUSR1).
pub(crate) fn init(global: &Global) -> reopen::Reopen {
    let reopen = reopen::Reopen::default();
    let (filter, bad) = match EnvFilter::try_new(&global.log_level) {
        Ok(f) => (f, None),
        Err(e) => (EnvFilter::new("info"), Some(e)),
    };
    use std::io::IsTerminal;
    use tracing_subscriber::fmt::writer::BoxMakeWriter;
    // `log-file:` instead of stderr; if it cannot be opened, stderr and an error line.
    let (writer, ansi, file_error) = match &global.log_file {
        Some(path) => match file::LogFile::open(path.clone(), reopen.clone()) {
            Ok(f) => (BoxMakeWriter::new(f), false, None),
            Err(e) => (
                BoxMakeWriter::new(std::io::stderr),
                false,
                Some(format!("cannot open log-file {}: {e}; logging to stderr", path.display())),
            ),
        },
        None => (BoxMakeWriter::new(std::io::stderr), std::io::stderr().is_terminal(), None),
    };
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_ansi(ansi).with_writer(writer);
    let result = match global.log_format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
    if let Err(e) = result {
        eprintln!("fcgibridge: logging already initialised: {e}");
    }
    if let Some(e) = file_error {
        tracing::error!("{e}");
    }
    if let Some(e) = bad {
        tracing::warn!("log-level {:?} is not a valid filter ({e}); using \"info\"", global.log_level);
    }
    reopen
}

/// One finished request, as the access log records it.
pub struct AccessRecord<'a> {
    pub remote: &'a str,
    pub method: &'a str,
    pub uri: &'a str,
    pub status: u16,
    pub bytes: u64,
    pub duration: std::time::Duration,
    pub pool: &'a str,
    pub request_id: &'a str,
}

/// Where access lines go.
pub(crate) enum AccessLog {
    /// `access-log: "-"`: into the main log, target `access`.
    MainLog,
    /// A file, written by its own thread so a slow disk never stalls a request; its lines
    /// follow `access-log-format` when one is set.
    File { tx: std::sync::mpsc::SyncSender<String>, format: Option<AccessFormat> },
}

impl AccessLog {
    /// Open the configured destination (`format` applies to a file; `reopen` opens it again).
    pub(crate) fn open(path: &Path, format: Option<AccessFormat>, reopen: reopen::Reopen) -> std::io::Result<Self> {
        if path.as_os_str() == "-" {
            return Ok(Self::MainLog);
        }
        let file = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
        let (tx, rx) = std::sync::mpsc::sync_channel::<String>(4096);
        let path = path.to_path_buf();
        std::thread::Builder::new().name("access-log".to_owned()).spawn(move || {
            let mut out = std::io::BufWriter::new(file);
            let mut generation = reopen.generation();
            while let Ok(line) = rx.recv() {
                // SIGUSR1 (log rotation): the next line goes to a freshly opened file.
                if reopen.generation() != generation {
                    generation = reopen.generation();
                    let _ = out.flush();
                    match std::fs::OpenOptions::new().create(true).append(true).open(&path) {
                        Ok(f) => out = std::io::BufWriter::new(f),
                        Err(e) => tracing::error!("cannot reopen access log {}: {e}", path.display()),
                    }
                }
                let _ = out.write_all(line.as_bytes());
                // Batch what is already queued, then flush so the file is current when idle.
                while let Ok(more) = rx.try_recv() {
                    let _ = out.write_all(more.as_bytes());
                }
                let _ = out.flush();
            }
        })?;
        Ok(Self::File { tx, format })
    }

    pub(crate) fn record(&self, r: &AccessRecord<'_>) {
        match self {
            Self::MainLog => tracing::info!(
                target: "access",
                remote = r.remote,
                method = r.method,
                uri = r.uri,
                status = r.status,
                bytes = r.bytes,
                duration_ms = r.duration.as_secs_f64() * 1000.0,
                pool = r.pool,
                request_id = r.request_id,
            ),
            Self::File { tx, format } => {
                if let Some(f) = format {
                    let _ = tx.try_send(f.render(r));
                    return;
                }
                let line = format!(
                    "{} [{}] \"{} {}\" {} {} {:.3}ms pool={} id={}\n",
                    or_dash(r.remote),
                    access_format::rfc3339_now(),
                    r.method,
                    r.uri,
                    r.status,
                    r.bytes,
                    r.duration.as_secs_f64() * 1000.0,
                    or_dash(r.pool),
                    r.request_id
                );
                // A full queue means the disk cannot keep up: drop the line, not the request.
                let _ = tx.try_send(line);
            }
        }
    }
}

fn or_dash(s: &str) -> &str {
    if s.is_empty() {
        "-"
    } else {
        s
    }
}
