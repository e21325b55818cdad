//! The daemon's log (tracing, text or JSON, on stderr) and the optional access log.
pub(crate) mod access_format;
pub(crate) mod app_lines;
pub(crate) mod app_records;
pub(crate) mod escape;
pub(crate) mod file;
pub(crate) mod ratelimit;
pub(crate) mod reopen;

use crate::config::access_format::{AccessFormat, Needs};
use crate::config::{Global, LogFormat};
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use tracing_subscriber::EnvFilter;

/// Set when the main log is JSON (`log-format: json`), which escapes newlines.
static JSON: AtomicBool = AtomicBool::new(false);

/// Set when the main log goes to `log-file` rather than stderr.
static TO_FILE: AtomicBool = AtomicBool::new(false);

/// Whether a message of several lines (a traceback) may be one log event: in JSON its
/// newlines are escaped, so no line of the app's text can pass for a log line of its own.
/// In text, every line is an event with the fields (logging/app_records.rs).
pub(crate) fn keeps_lines_together() -> bool {
    JSON.load(Ordering::Relaxed)
}

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
            Ok(f) => {
                TO_FILE.store(true, Ordering::Relaxed);
                (BoxMakeWriter::new(f), false, None)
            }
            Err(e) => (
                BoxMakeWriter::new(std::io::stderr),
                false,
                Some(format!("cannot open log-file {}: {e}; logging to stderr", path.display())),
            ),
        },
        None => (BoxMakeWriter::new(std::io::stderr), std::io::stderr().is_terminal(), None),
    };
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_ansi(ansi);
    let result = match global.log_format {
        LogFormat::Json => builder
            .with_writer(escape::JsonSafe(writer))
            .json()
            .try_init()
            .inspect(|()| JSON.store(true, Ordering::Relaxed)),
        LogFormat::Text => builder.with_writer(writer).fmt_fields(escape::OneLineFields).try_init(),
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

/// An error that ends the daemon (a failed start): logged under `target`, the module the
/// error happened in (a log filter or reader by target finds it there, not here), and when
/// the log is a file also on stderr, where whoever started it (a terminal, systemd's
/// journal) looks. A macro because a tracing target is fixed where the event is written.
macro_rules! fatal {
    (target: $target:expr, $error:expr) => {{
        let message = $error.to_string();
        tracing::error!(target: $target, "{message}");
        $crate::logging::copy_fatal_to_stderr(&message);
    }};
}
pub(crate) use fatal;

/// [`fatal!`]'s copy on stderr, when the log is a file.
pub(crate) fn copy_fatal_to_stderr(message: &str) {
    if let Some(line) = stderr_copy(message, TO_FILE.load(Ordering::Relaxed)) {
        eprintln!("{line}");
    }
}

/// The line a fatal error adds on stderr: none when the log is there already (no line
/// twice), else one line (`fcgibridge: …`, escaped as the log's own lines are).
fn stderr_copy(message: &str, log_is_a_file: bool) -> Option<String> {
    log_is_a_file.then(|| format!("fcgibridge: {}", escape::clean(message)))
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
    /// The web server's id for the request, when it sent a plain one (see [`web_request_id`]).
    pub web_request_id: Option<&'a str>,
    /// Time spent waiting for a worker (None: the request never asked for one).
    pub queue: Option<std::time::Duration>,
    /// Time on a worker: from taking it to the end of the worker's response.
    pub app: Option<std::time::Duration>,
    /// The worker process that served the request (the last, after an internal redirect).
    pub pid: Option<u32>,
}

/// The web server's id of a request: the `REQUEST_ID` param (nginx: `fastcgi_param
/// REQUEST_ID $request_id;`), Apache's `UNIQUE_ID` (mod_unique_id), else an `X-Request-Id`
/// header; the first that is 1 to 64 bytes of letters, digits and `-_.:+/=@` (anything
/// else is not logged: the access log stays one line per request).
pub(crate) fn web_request_id(params: &fastcgi_server::Params) -> Option<&str> {
    let plain = |v: &&[u8]| {
        (1..=64).contains(&v.len()) && v.iter().all(|b| b.is_ascii_alphanumeric() || b"-_.:+/=@".contains(b))
    };
    [&b"REQUEST_ID"[..], b"UNIQUE_ID", b"HTTP_X_REQUEST_ID"]
        .into_iter()
        .filter_map(|name| params.get(name))
        .find(plain)
        .and_then(|v| std::str::from_utf8(v).ok())
}

/// Milliseconds, rounded to the microsecond (no float noise in JSON).
pub(crate) fn millis(d: std::time::Duration) -> f64 {
    d.as_micros() as f64 / 1000.0
}

/// Where access lines go.
pub(crate) enum AccessLog {
    /// `access-log: "-"`: into the main log, target `access`.
    MainLog,
    /// A file, written by its own thread so a slow disk never stalls a request; its lines
    /// follow `access-log-format` when one is set.
    File {
        tx: std::sync::mpsc::SyncSender<String>,
        format: Option<AccessFormat>,
        /// Lines dropped because the queue was full (the status page shows the count).
        dropped: Arc<AtomicU64>,
    },
}

/// The access log file's writer thread.
struct AccessWriter {
    path: std::path::PathBuf,
    reopen: reopen::Reopen,
    dropped: Arc<AtomicU64>,
}

impl AccessWriter {
    fn run(self, rx: std::sync::mpsc::Receiver<String>, file: std::fs::File) {
        use std::sync::mpsc::RecvTimeoutError;
        let mut out = std::io::BufWriter::new(file);
        let mut generation = self.reopen.generation();
        let mut report = DropReport::default();
        loop {
            // Idle, it still wakes once a second to report drops it has not told of yet.
            let line = match rx.recv_timeout(std::time::Duration::from_secs(1)) {
                Ok(line) => line,
                Err(RecvTimeoutError::Timeout) => {
                    report.tell(&self.dropped);
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => break,
            };
            // SIGUSR1 (log rotation): the next line goes to a freshly opened file.
            if self.reopen.generation() != generation {
                generation = self.reopen.generation();
                let _ = out.flush();
                match file::open_append(&self.path) {
                    Ok(f) => out = std::io::BufWriter::new(f),
                    Err(e) => tracing::error!("cannot reopen access log {}: {e}", self.path.display()),
                }
            }
            let _ = out.write_all(line.as_bytes());
            // Batch what is already queued, then flush so the file is current when idle.
            while let Ok(more) = rx.try_recv() {
                let _ = out.write_all(more.as_bytes());
                report.tell(&self.dropped);
            }
            let _ = out.flush();
            report.tell(&self.dropped);
        }
        let _ = out.flush();
        report.tell(&self.dropped);
    }
}

/// The main log's line about dropped access lines: at most once a second, with the lines
/// dropped since the last one.
#[derive(Default)]
struct DropReport {
    told: u64,
    at: Option<std::time::Instant>,
}

impl DropReport {
    /// Log the drops not told of yet, unless the last line was less than a second ago.
    fn tell(&mut self, dropped: &AtomicU64) {
        if let Some(n) = self.due(dropped.load(Ordering::Relaxed), std::time::Instant::now()) {
            tracing::warn!("{n} access-log lines dropped: the access log could not keep up");
        }
    }

    fn due(&mut self, total: u64, now: std::time::Instant) -> Option<u64> {
        let recent = self.at.is_some_and(|at| now.duration_since(at) < std::time::Duration::from_secs(1));
        if total == self.told || recent {
            return None;
        }
        let n = total - self.told;
        (self.told, self.at) = (total, Some(now));
        Some(n)
    }
}

impl AccessLog {
    /// Open the configured destination (`format` applies to a file; `reopen` opens it again).
    pub(crate) fn open(path: &Path, format: Option<AccessFormat>, reopen: reopen::Reopen) -> std::io::Result<Self> {
        if path.as_os_str() == "-" {
            return Ok(Self::MainLog);
        }
        let file = file::open_append(path)?;
        let (tx, rx) = std::sync::mpsc::sync_channel::<String>(4096);
        let dropped = Arc::new(AtomicU64::new(0));
        let writer = AccessWriter { path: path.to_path_buf(), reopen, dropped: dropped.clone() };
        std::thread::Builder::new().name("access-log".to_owned()).spawn(move || writer.run(rx, file))?;
        Ok(Self::File { tx, format, dropped })
    }

    /// Lines dropped since start because the writer could not keep up (0 for the main log).
    pub(crate) fn dropped_lines(&self) -> u64 {
        match self {
            Self::MainLog => 0,
            Self::File { dropped, .. } => dropped.load(Ordering::Relaxed),
        }
    }

    /// What its lines need of each request: every field for the main log, none beyond
    /// the basics for the built-in file format, what a template names.
    pub(crate) fn needs(&self) -> Needs {
        match self {
            Self::MainLog => Needs::ALL,
            Self::File { format: None, .. } => Needs::default(),
            Self::File { format: Some(f), .. } => f.needs(),
        }
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
                duration_ms = millis(r.duration),
                pool = r.pool,
                request_id = r.request_id,
                web_request_id = r.web_request_id,
                queue_ms = r.queue.map(millis),
                app_ms = r.app.map(millis),
                pid = r.pid,
            ),
            Self::File { tx, format, dropped } => {
                // A full queue means the disk cannot keep up: drop the line, not the request.
                let send = |line| {
                    if tx.try_send(line).is_err() {
                        dropped.fetch_add(1, Ordering::Relaxed);
                    }
                };
                // The client's text, escaped: an access line is one line.
                let (remote, method, uri) = (escape::clean(r.remote), escape::clean(r.method), escape::clean(r.uri));
                let r = &AccessRecord { remote: &remote, method: &method, uri: &uri, ..*r };
                if let Some(f) = format {
                    send(f.render(r));
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
                send(line);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> fastcgi_server::Params {
        let mut p = fastcgi_server::Params::with_capacity(pairs.len());
        for (k, v) in pairs {
            p.insert(k.as_bytes().to_vec(), v.as_bytes().to_vec());
        }
        p
    }

    #[test]
    fn a_fatal_error_is_on_stderr_once() {
        // Logged to stderr already: not again.
        assert_eq!(stderr_copy("status listener 127.0.0.1:1: bind: Address already in use", false), None);
        assert_eq!(
            stderr_copy("status listener 127.0.0.1:1: bind: Address already in use", true).as_deref(),
            Some("fcgibridge: status listener 127.0.0.1:1: bind: Address already in use")
        );
        // One line, whatever the error's text.
        let line = stderr_copy("first\nsecond", true).unwrap_or_default();
        assert_eq!(line.lines().count(), 1, "{line}");
    }

    #[test]
    fn the_web_servers_id_is_taken_when_plain() {
        let id = |pairs: &[(&str, &str)]| web_request_id(&params(pairs)).map(str::to_owned);
        assert_eq!(id(&[("REQUEST_ID", "0af3c9d2"), ("HTTP_X_REQUEST_ID", "client")]), Some("0af3c9d2".into()));
        assert_eq!(id(&[("UNIQUE_ID", "ZdP4wKwQAAEAAB@x-7")]), Some("ZdP4wKwQAAEAAB@x-7".into()));
        // Not plain: the next source, or none.
        assert_eq!(id(&[("REQUEST_ID", "a b"), ("HTTP_X_REQUEST_ID", "c-1")]), Some("c-1".into()));
        assert_eq!(id(&[("HTTP_X_REQUEST_ID", "x\n2001-01-01 forged")]), None);
        assert_eq!(id(&[("HTTP_X_REQUEST_ID", &"x".repeat(65))]), None);
        assert_eq!(id(&[("REQUEST_ID", "")]), None);
        // The review saw `1001.3329090000001`.
        assert_eq!(millis(std::time::Duration::from_nanos(1_001_332_909)).to_string(), "1001.332");
    }

    fn a_record(uri: &str) -> AccessRecord<'_> {
        AccessRecord {
            remote: "10.0.0.1",
            method: "GET",
            uri,
            status: 200,
            bytes: 0,
            duration: std::time::Duration::ZERO,
            pool: "app",
            request_id: "7",
            web_request_id: None,
            queue: None,
            app: None,
            pid: None,
        }
    }

    #[test]
    fn access_lines_the_writer_cannot_take_are_counted() {
        let (tx, rx) = std::sync::mpsc::sync_channel(2);
        let log = AccessLog::File { tx, format: None, dropped: Arc::default() };
        for uri in ["/1", "/2", "/3", "/4", "/5"] {
            log.record(&a_record(uri));
        }
        assert_eq!(log.dropped_lines(), 3);
        assert!(rx.recv().expect("a line").contains("/1"));
        assert_eq!(AccessLog::MainLog.dropped_lines(), 0);
    }

    #[test]
    fn dropped_lines_are_told_at_most_once_a_second() {
        let start = std::time::Instant::now();
        let later = |ms| start + std::time::Duration::from_millis(ms);
        let mut report = DropReport::default();
        assert_eq!(report.due(0, start), None, "nothing dropped, nothing said");
        assert_eq!(report.due(5, start), Some(5));
        assert_eq!(report.due(9, later(500)), None, "within the second");
        assert_eq!(report.due(12, later(1000)), Some(7), "the lines since the last report");
        assert_eq!(report.due(12, later(5000)), None, "nothing new");
        assert_eq!(report.due(13, later(5001)), Some(1));
    }

    #[test]
    fn an_access_line_is_one_line_whatever_the_client_sent() {
        let record = AccessRecord {
            remote: "10.0.0.1\r",
            method: "GET\x1b[2J",
            status: 400,
            ..a_record("/a\n2026-12-05T03:06:00Z ERROR forged")
        };
        let format = Some(AccessFormat::parse("$remote_addr \"$method $uri\" $status").expect("format"));
        for format in [None, format] {
            let (tx, rx) = std::sync::mpsc::sync_channel(1);
            AccessLog::File { tx, format, dropped: Arc::default() }.record(&record);
            let line = rx.recv().expect("a line");
            assert!(line.starts_with(r#"10.0.0.1\r "#), "{line}");
            assert!(line.contains(r#""GET\x1b[2J /a\n2026-12-05T03:06:00Z ERROR forged" 400"#), "{line}");
            assert_eq!(line.lines().count(), 1, "{line}");
        }
    }
}
