//! Direct mode (`FCGIBRIDGE_DIRECT=1`): the worker accepts the web server's connections
//! itself on fd 0, with no bridge between them (docs/worker-contract.md, "Direct mode").
//! What the bridge would have done to a request is done here: the web server's
//! `FCGIBRIDGE_*` params are dropped, SCRIPT_NAME / PATH_INFO are set by the bridge's own
//! function ([`fastcgi_server::path::mount`]), each request gets an id, and what a request
//! writes to its error stream goes to the process's stderr (the bridge's log), not to the
//! web server's error log.
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use fastcgi_server::Params;

use crate::scoreboard::LINE_BYTES;

/// `FCGIBRIDGE_MAX_REDIRECTS` when the bridge gives none (the listener's default).
const DEFAULT_MAX_REDIRECTS: u32 = 10;
/// `FCGIBRIDGE_HEADER_TIMEOUT` when the bridge gives none (the listener's default).
const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(60);
/// A lingering close waits at most this long for the web server's end of input (nginx
/// writes the rest of a large upload the app did not read: closed before it has, its write
/// fails and the client gets a 502 instead of the app's answer)...
pub(crate) const LINGER_TIME: Duration = Duration::from_secs(10);
/// ...and discards at most this many bytes of it.
const LINGER_BYTES: usize = 1 << 30;

/// A direct worker's settings, from its environment.
pub(crate) struct Direct {
    /// `FCGIBRIDGE_MOUNT`: the listener's `mount` ("" for `/`).
    mount: Option<Box<str>>,
    /// `FCGIBRIDGE_KEEP_PATH_INFO=1`: SCRIPT_NAME and PATH_INFO as the web server sent them.
    keep_path_info: bool,
    /// `FCGIBRIDGE_HEADER_TIMEOUT`: how long a connection may take to send a request's
    /// PARAMS, from its accept or the end of its previous request.
    pub(crate) header_timeout: Duration,
    /// `FCGIBRIDGE_REQUEST_TIMEOUT`: the pool's `request-timeout`, which an ASGI worker
    /// applies itself (a WSGI worker's is the bridge's: it replaces the worker).
    pub(crate) request_timeout: Option<Duration>,
    /// `FCGIBRIDGE_MAX_REDIRECTS`: the listener's `max-redirects`, the local redirects one
    /// request may take before it ends with 500.
    pub(crate) max_redirects: u32,
}

static DIRECT: OnceLock<Option<Direct>> = OnceLock::new();
/// The last request id's number in this process.
static REQUESTS: AtomicU64 = AtomicU64::new(0);
/// This process's pid, for request ids.
static PID: AtomicU32 = AtomicU32::new(0);

/// Read the environment once (before the app is imported, which may change it).
pub(crate) fn init() {
    DIRECT.get_or_init(|| {
        if std::env::var_os("FCGIBRIDGE_DIRECT").is_none_or(|v| v != "1") {
            return None;
        }
        let mount = std::env::var("FCGIBRIDGE_MOUNT").ok().map(|m| m.trim_end_matches('/').into());
        let keep_path_info = std::env::var_os("FCGIBRIDGE_KEEP_PATH_INFO").is_some_and(|v| v == "1");
        let header_timeout = header_timeout(std::env::var("FCGIBRIDGE_HEADER_TIMEOUT").ok().as_deref());
        let request_timeout = request_timeout(std::env::var("FCGIBRIDGE_REQUEST_TIMEOUT").ok().as_deref());
        let max_redirects = max_redirects(std::env::var("FCGIBRIDGE_MAX_REDIRECTS").ok().as_deref());
        read_relay();
        PID.store(std::process::id(), Ordering::Relaxed);
        Some(Direct { mount, keep_path_info, header_timeout, request_timeout, max_redirects })
    });
}

/// A preloaded pool's fork, which inherits the template's settings: its request ids carry
/// its own pid (several forks of one template would otherwise give the same ids).
pub(crate) fn forked() {
    PID.store(std::process::id(), Ordering::Relaxed);
    // Its relay came with its SPAWN (the template has none).
    read_relay();
}

/// `FCGIBRIDGE_RELAY_FDS`: the pool's relay, sending and receiving end, and the page its
/// workers even out their connections on ([`crate::park`], [`crate::balance`]).
static RELAY: std::sync::Mutex<Option<RelayFds>> = std::sync::Mutex::new(None);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct RelayFds {
    pub(crate) send: RawFd,
    pub(crate) recv: RawFd,
    /// None from a bridge that made no balance page.
    pub(crate) balance: Option<RawFd>,
}

fn read_relay() {
    let found = relay(std::env::var("FCGIBRIDGE_RELAY_FDS").ok().as_deref());
    *RELAY.lock().unwrap_or_else(|e| e.into_inner()) = found;
}

/// The pool's relay, if the bridge gave one.
pub(crate) fn relay_fds() -> Option<RelayFds> {
    *RELAY.lock().unwrap_or_else(|e| e.into_inner())
}

/// `FCGIBRIDGE_HEADER_TIMEOUT`; absent or not valid: the default.
fn header_timeout(value: Option<&str>) -> Duration {
    let default = DEFAULT_HEADER_TIMEOUT;
    value
        .and_then(|v| seconds("FCGIBRIDGE_HEADER_TIMEOUT", v, &format!("using {}s", default.as_secs())))
        .unwrap_or(default)
}

/// `FCGIBRIDGE_RELAY_FDS` ("send,recv,page"; "send,recv" from an older bridge), made
/// close-on-exec before the app is imported (not for the app's subprocesses); absent or
/// not valid: no relay.
fn relay(value: Option<&str>) -> Option<RelayFds> {
    let value = value?;
    let fds: Option<Vec<RawFd>> = value.split(',').map(|f| f.trim().parse().ok()).collect();
    let Some(fds) = fds.filter(|f| matches!(f.len(), 2 | 3)) else {
        eprintln!("fcgibridge worker: FCGIBRIDGE_RELAY_FDS={value:?} is not two or three descriptors; no relay");
        return None;
    };
    for &fd in &fds {
        // SAFETY: F_SETFD on a descriptor number; a wrong one fails harmlessly.
        unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    }
    Some(RelayFds { send: fds[0], recv: fds[1], balance: fds.get(2).copied() })
}

/// `FCGIBRIDGE_MAX_REDIRECTS`; absent or not valid: the default.
fn max_redirects(value: Option<&str>) -> u32 {
    let Some(value) = value else { return DEFAULT_MAX_REDIRECTS };
    value.trim().parse().unwrap_or_else(|_| {
        eprintln!(
            "fcgibridge worker: FCGIBRIDGE_MAX_REDIRECTS={value:?} is not a whole number; using {DEFAULT_MAX_REDIRECTS}"
        );
        DEFAULT_MAX_REDIRECTS
    })
}

/// `FCGIBRIDGE_REQUEST_TIMEOUT`; absent or not valid: none.
fn request_timeout(value: Option<&str>) -> Option<Duration> {
    value.and_then(|v| seconds("FCGIBRIDGE_REQUEST_TIMEOUT", v, "no request-timeout applies"))
}

/// A duration the bridge gives in seconds (decimal, may have a fraction); a value that is
/// not a positive number is said on stderr, with `instead`, and gives `None`.
fn seconds(name: &str, value: &str, instead: &str) -> Option<Duration> {
    match value.trim().parse::<f64>().ok().and_then(|s| Duration::try_from_secs_f64(s).ok()) {
        Some(d) if !d.is_zero() => Some(d),
        _ => {
            eprintln!("fcgibridge worker: {name}={value:?} is not a positive number of seconds; {instead}");
            None
        }
    }
}

/// When the last header-timeout line was logged (seconds of the process's uptime, plus 1;
/// 0: never): one line per [`TIMEOUT_LOG_EVERY`] at most, however many connections time out.
static TIMEOUT_LOGGED: AtomicU64 = AtomicU64::new(0);
const TIMEOUT_LOG_EVERY: u64 = 10;

/// A connection was closed for sending no complete request within `timeout`: say so
/// (rate-limited), since a web server or local client holding connections open pins threads.
pub(crate) fn log_header_timeout(timeout: Duration) {
    static START: OnceLock<Instant> = OnceLock::new();
    let now = START.get_or_init(Instant::now).elapsed().as_secs() + 1;
    let last = TIMEOUT_LOGGED.load(Ordering::Relaxed);
    if last != 0 && now < last + TIMEOUT_LOG_EVERY {
        return;
    }
    if TIMEOUT_LOGGED.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_ok() {
        crate::sys::write_stderr(
            format!(
                "fcgibridge worker: closed a connection that sent no complete request within header-timeout ({}s)\n",
                timeout.as_secs_f64()
            )
            .as_bytes(),
        );
    }
}

/// Close a connection gently when the web server may still be sending the input of request
/// `id` (its empty STDIN: Apache's mod_proxy_fcgi writes it separately after the PARAMS, and
/// a write to a closed socket fails it with a 503): shut down the sending side (the response
/// is complete), then read and discard until EOF, the end of that input, `max_bytes`
/// or `max_time`. `buffered`: input received but not yet decoded, from a record's start.
/// The caller closes the descriptor.
pub(crate) fn linger(fd: RawFd, id: u16, buffered: &[u8]) {
    linger_for(fd, id, buffered, LINGER_TIME, LINGER_BYTES);
}

fn linger_for(fd: RawFd, id: u16, buffered: &[u8], max_time: Duration, max_bytes: usize) {
    use nix::sys::socket::{recv, shutdown, MsgFlags, Shutdown};
    let _ = shutdown(fd, Shutdown::Write);
    let mut lingering = Lingering { scan: StdinEndScan::new(id), left: max_bytes };
    if lingering.done_after(buffered) {
        return;
    }
    let deadline = Instant::now() + max_time;
    let mut buf = [0u8; 16 * 1024];
    loop {
        let now = Instant::now();
        if now >= deadline {
            return;
        }
        match crate::sys::wait_readable_for(fd, deadline - now) {
            Ok(true) => {}
            Ok(false) => continue,
            Err(_) => return,
        }
        match recv(fd, &mut buf, MsgFlags::MSG_DONTWAIT) {
            Ok(0) => return,
            Ok(n) => {
                if lingering.done_after(&buf[..n]) {
                    return;
                }
            }
            Err(nix::errno::Errno::EAGAIN | nix::errno::Errno::EINTR) => {}
            Err(_) => return,
        }
    }
}

/// The input a lingering close reads after the response to request `id`, looked through for
/// the end of that request's input and discarded (the ASGI worker's loop feeds it what
/// each read brings).
pub(crate) struct Lingering {
    scan: StdinEndScan,
    /// Bytes still to discard before giving up.
    left: usize,
}

impl Lingering {
    pub(crate) fn new(id: u16) -> Self {
        Self { scan: StdinEndScan::new(id), left: LINGER_BYTES }
    }

    /// Whether, with `data` (the next bytes of input, from a record's first byte on), the
    /// connection may close: the end of the request's input came, or too much other input.
    pub(crate) fn done_after(&mut self, data: &[u8]) -> bool {
        self.left = self.left.saturating_sub(data.len());
        self.scan.feed(data) || self.left == 0
    }
}

/// Finds the empty STDIN record of one request in FastCGI input that starts at a record's
/// first byte, skipping every other record without keeping it.
struct StdinEndScan {
    id: u16,
    /// Bytes of the current record's content and padding still to skip.
    skip: usize,
    header: [u8; 8],
    header_len: usize,
}

impl StdinEndScan {
    const STDIN: u8 = 5;

    fn new(id: u16) -> Self {
        Self { id, skip: 0, header: [0; 8], header_len: 0 }
    }

    /// Whether `data` (the next bytes of the input) holds the end of the request's STDIN.
    fn feed(&mut self, mut data: &[u8]) -> bool {
        loop {
            let skipped = self.skip.min(data.len());
            self.skip -= skipped;
            data = &data[skipped..];
            let take = (8 - self.header_len).min(data.len());
            self.header[self.header_len..self.header_len + take].copy_from_slice(&data[..take]);
            self.header_len += take;
            data = &data[take..];
            if self.header_len < 8 {
                return false;
            }
            self.header_len = 0;
            let h = self.header;
            let (id, content) = (u16::from_be_bytes([h[2], h[3]]), usize::from(u16::from_be_bytes([h[4], h[5]])));
            if h[1] == Self::STDIN && id == self.id && content == 0 {
                return true;
            }
            self.skip = content + usize::from(h[6]);
        }
    }
}

/// The settings when this worker serves a direct listener.
pub(crate) fn config() -> Option<&'static Direct> {
    DIRECT.get().and_then(Option::as_ref)
}

/// Whether a param is an instruction meant to come from the bridge.
fn is_bridge_param(name: &[u8]) -> bool {
    name.starts_with(b"FCGIBRIDGE_")
}

impl Direct {
    /// A request's params as the app should see them: without the web server's
    /// `FCGIBRIDGE_*` (it cannot give the worker the bridge's instructions), with the
    /// bridge's SCRIPT_NAME / PATH_INFO.
    pub(crate) fn prepare(&self, params: &mut Params) {
        if params.iter().any(|(name, _)| is_bridge_param(name)) {
            let pairs = std::mem::take(params).into_pairs();
            *params = Params::from_pairs(pairs.into_iter().filter(|(name, _)| !is_bridge_param(name)).collect());
        }
        if !self.keep_path_info {
            fastcgi_server::path::mount(params, self.mount.as_deref());
        }
    }

    /// Rewrite a request's params for the local redirect to `target` its app answered, as
    /// the bridge does (its rules, [`fastcgi_server::redirect::apply`]), mounted as the
    /// listener says; `depth`: the redirects the request took so far.
    pub(crate) fn redirect(
        &self,
        params: &mut Params,
        target: &[u8],
        depth: &mut u32,
    ) -> Result<(), fastcgi_server::redirect::RedirectError> {
        fastcgi_server::redirect::apply(params, target, depth, self.max_redirects, 200)?;
        if !self.keep_path_info {
            fastcgi_server::path::mount(params, self.mount.as_deref());
        }
        Ok(())
    }

    /// The request's id (`<pid>-<n>`) and its `METHOD URI` for the log and the scoreboard.
    pub(crate) fn tag(&self, params: &Params) -> Tag {
        let n = REQUESTS.fetch_add(1, Ordering::Relaxed) + 1;
        Tag::new(
            PID.load(Ordering::Relaxed),
            n,
            params.get(b"REQUEST_METHOD").unwrap_or(b"-"),
            params.get(b"REQUEST_URI").unwrap_or(b""),
        )
    }
}

/// One line for the bridge's log at `level` (`INFO`, `ERROR`), with pool, pid and
/// `request_id` as fields: a structured record on stderr, as the package's logging
/// handler writes them (logging_bridge.py), rather than a plain stderr line (a warning).
pub(crate) fn log_record(level: &str, msg: &str, request_id: &str) {
    let line = format!(
        "\u{1f}fcgibridge-log {{\"level\":\"{level}\",\"logger\":\"fcgibridge.worker\",\"msg\":{},\"request_id\":{}}}\n",
        json_string(msg),
        json_string(request_id)
    );
    crate::sys::write_stderr(line.as_bytes());
}

/// `s` as a JSON string.
fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if u32::from(c) < 0x20 || c == '\u{7f}' => out.push_str(&format!("\\u{:04x}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Why a direct worker answers 400 a request whose body ended after `received` of its
/// `declared` bytes, as the bridge would. A body absent altogether is no short body: nginx
/// keeps the client's CONTENT_LENGTH on requests it sends without their body (an
/// error_page redirect, auth_request, fastcgi_pass_request_body off); the app answers
/// those, and a read raises.
pub(crate) fn short_body(received: u64, declared: Option<u64>) -> Option<String> {
    let declared = declared?;
    (received > 0 && received < declared)
        .then(|| format!("the request body ended before its CONTENT_LENGTH ({received} of {declared} bytes)"))
}

/// `<pid>-<n> METHOD URI`, the line cut to the scoreboard's length.
pub(crate) struct Tag {
    /// Sized once for the longest tag: no reallocation.
    text: Vec<u8>,
    id_len: usize,
    /// The last stderr write of the request ended mid-line.
    open_line: bool,
}

impl Tag {
    fn new(pid: u32, n: u64, method: &[u8], uri: &[u8]) -> Self {
        use std::io::Write;
        let mut text = Vec::with_capacity(32 + LINE_BYTES);
        let _ = write!(text, "{pid}-{n}");
        let id_len = text.len();
        text.push(b' ');
        let line_start = text.len();
        text.extend_from_slice(method);
        text.push(b' ');
        text.extend_from_slice(uri);
        text.truncate(line_start + LINE_BYTES);
        Self { text, id_len, open_line: false }
    }

    /// `<pid>-<n>`: ASCII digits and `-`.
    pub(crate) fn request_id(&self) -> &str {
        std::str::from_utf8(&self.text[..self.id_len]).unwrap_or("")
    }

    /// `METHOD URI` (cut to [`LINE_BYTES`]): what the log lines show.
    pub(crate) fn line(&self) -> &[u8] {
        &self.text[self.id_len + 1..]
    }

    /// `<pid>-<n> METHOD URI`, what the scoreboard slot holds (cut there to its length): the
    /// bridge's lines about the request (its crash, its request-timeout, a slow request)
    /// then name the id the worker's own lines carry.
    pub(crate) fn board_line(&self) -> &[u8] {
        &self.text
    }

    /// `data` as lines of the process's stderr, each starting with the request's id and
    /// `METHOD URI` (a write that ends mid-line is continued by the next, unprefixed).
    pub(crate) fn stderr(&mut self, data: &[u8]) {
        crate::sys::write_stderr(&self.prefixed(data));
    }

    fn prefixed(&mut self, data: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(data.len() + 64);
        for piece in data.split_inclusive(|&b| b == b'\n') {
            if !self.open_line {
                out.extend_from_slice(b"[request_id=");
                out.extend_from_slice(&self.text[..self.id_len]);
                out.push(b' ');
                out.extend_from_slice(self.line());
                out.extend_from_slice(b"] ");
            }
            out.extend_from_slice(piece);
            self.open_line = !piece.ends_with(b"\n");
        }
        out
    }

    /// The request is over: a line it left open is ended.
    pub(crate) fn close(&mut self) {
        if std::mem::take(&mut self.open_line) {
            crate::sys::write_stderr(b"\n");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> Params {
        Params::from_pairs(
            pairs.iter().map(|(n, v)| (n.as_bytes().to_vec().into(), v.as_bytes().to_vec().into())).collect(),
        )
    }

    fn get(p: &Params, n: &str) -> Option<String> {
        p.get(n.as_bytes()).map(|v| String::from_utf8_lossy(v).into_owned())
    }

    #[test]
    fn the_web_servers_bridge_params_are_dropped_and_the_path_split() {
        let d = Direct {
            mount: Some("/app".into()),
            keep_path_info: false,
            header_timeout: Duration::ZERO,
            request_timeout: None,
            max_redirects: 10,
        };
        let mut p = params(&[
            ("REQUEST_URI", "/app/x?q=1"),
            ("FCGIBRIDGE_FILE_ROOTS", "/"),
            ("SCRIPT_NAME", "/app/x"),
            ("FCGIBRIDGE_CLAIM", "0.1"),
            ("DOCUMENT_URI", "/app/x"),
        ]);
        d.prepare(&mut p);
        assert_eq!(get(&p, "FCGIBRIDGE_FILE_ROOTS"), None);
        assert_eq!(get(&p, "FCGIBRIDGE_CLAIM"), None);
        assert_eq!((get(&p, "SCRIPT_NAME"), get(&p, "PATH_INFO")), (Some("/app".into()), Some("/x".into())));
        // nginx's stock params without a mount: the whole path is PATH_INFO.
        let d = Direct {
            mount: None,
            keep_path_info: false,
            header_timeout: Duration::ZERO,
            request_timeout: None,
            max_redirects: 10,
        };
        let mut p = params(&[("REQUEST_URI", "/a%20b"), ("SCRIPT_NAME", "/a b")]);
        d.prepare(&mut p);
        assert_eq!((get(&p, "SCRIPT_NAME"), get(&p, "PATH_INFO")), (Some("".into()), Some("/a b".into())));
        // keep-path-info: as the web server sent it.
        let d = Direct {
            mount: Some("/app".into()),
            keep_path_info: true,
            header_timeout: Duration::ZERO,
            request_timeout: None,
            max_redirects: 10,
        };
        let mut p = params(&[("REQUEST_URI", "/app/x"), ("SCRIPT_NAME", "/app/x")]);
        d.prepare(&mut p);
        assert_eq!((get(&p, "SCRIPT_NAME"), get(&p, "PATH_INFO")), (Some("/app/x".into()), None));
    }

    #[test]
    fn a_redirect_is_the_bridges_mounted_as_the_listener_says() {
        let d = Direct {
            mount: Some("/app".into()),
            keep_path_info: false,
            header_timeout: Duration::ZERO,
            request_timeout: None,
            max_redirects: 2,
        };
        let mut p = params(&[("REQUEST_METHOD", "POST"), ("REQUEST_URI", "/app/a?q=1"), ("CONTENT_LENGTH", "3")]);
        d.prepare(&mut p);
        let mut depth = 0;
        d.redirect(&mut p, b"/app/b%20c?x=1", &mut depth).expect("within max-redirects");
        assert_eq!((get(&p, "SCRIPT_NAME"), get(&p, "PATH_INFO")), (Some("/app".into()), Some("/b c".into())));
        assert_eq!(
            (get(&p, "REQUEST_URI"), get(&p, "QUERY_STRING")),
            (Some("/app/b%20c?x=1".into()), Some("x=1".into()))
        );
        assert_eq!((get(&p, "REQUEST_METHOD"), get(&p, "CONTENT_LENGTH")), (Some("GET".into()), Some("".into())));
        assert_eq!(
            (get(&p, "REDIRECT_URL"), get(&p, "REDIRECT_REQUEST_METHOD")),
            (Some("/app/a".into()), Some("POST".into()))
        );
        // Outside the mount: the whole path, under an empty SCRIPT_NAME.
        d.redirect(&mut p, b"/other", &mut depth).expect("the second");
        assert_eq!((get(&p, "SCRIPT_NAME"), get(&p, "PATH_INFO")), (Some("".into()), Some("/other".into())));
        assert!(d.redirect(&mut p, b"/third", &mut depth).is_err(), "past max-redirects");
        // path-info: keep: as the bridge, the target's path is PATH_INFO, not mounted again.
        let keep = Direct { keep_path_info: true, ..d };
        let mut p = params(&[("REQUEST_URI", "/app/a"), ("SCRIPT_NAME", "/app/a")]);
        keep.redirect(&mut p, b"/app/b", &mut 0).expect("redirect");
        assert_eq!((get(&p, "SCRIPT_NAME"), get(&p, "PATH_INFO")), (Some("".into()), Some("/app/b".into())));
    }

    #[test]
    fn max_redirects_and_log_records_read_as_the_bridge_writes_them() {
        assert_eq!((max_redirects(None), max_redirects(Some("3")), max_redirects(Some("0"))), (10, 3, 0));
        for bad in ["-1", "x", "", "2.5"] {
            assert_eq!(max_redirects(Some(bad)), DEFAULT_MAX_REDIRECTS, "{bad:?}");
        }
        assert_eq!(json_string("a\"b\\c\td\u{7f}é"), "\"a\\\"b\\\\c\\u0009d\\u007fé\"");
    }

    #[test]
    fn a_tag_names_the_request_and_prefixes_each_line() {
        let mut t = Tag::new(42, 7, b"GET", b"/x?y");
        assert_eq!((t.request_id(), t.line(), t.board_line()), ("42-7", &b"GET /x?y"[..], &b"42-7 GET /x?y"[..]));
        assert_eq!(t.prefixed(b"a\nb"), b"[request_id=42-7 GET /x?y] a\n[request_id=42-7 GET /x?y] b");
        assert_eq!(t.prefixed(b"c\n\n"), b"c\n[request_id=42-7 GET /x?y] \n", "a write continues the open line");
        let long = Tag::new(1, 1, b"GET", &[b'u'; 500]);
        assert_eq!(long.line().len(), LINE_BYTES);
    }

    #[test]
    fn the_timeouts_are_seconds_with_a_fraction() {
        assert_eq!(header_timeout(None), DEFAULT_HEADER_TIMEOUT);
        assert_eq!(header_timeout(Some("2.5")), Duration::from_millis(2500));
        assert_eq!(header_timeout(Some("30")), Duration::from_secs(30));
        for bad in ["0", "-1", "5s", "", "nan", "inf"] {
            assert_eq!(header_timeout(Some(bad)), DEFAULT_HEADER_TIMEOUT, "{bad:?}");
            assert_eq!(request_timeout(Some(bad)), None, "{bad:?}");
        }
        assert_eq!(request_timeout(None), None);
        assert_eq!(request_timeout(Some("0.5")), Some(Duration::from_millis(500)));
    }

    fn input(records: &[(u8, u16, &[u8], u8)]) -> Vec<u8> {
        let mut out = Vec::new();
        for &(ty, id, content, padding) in records {
            out.extend_from_slice(&[1, ty]);
            out.extend_from_slice(&id.to_be_bytes());
            out.extend_from_slice(&(content.len() as u16).to_be_bytes());
            out.extend_from_slice(&[padding, 0]);
            out.extend_from_slice(content);
            out.extend(std::iter::repeat_n(0, usize::from(padding)));
        }
        out
    }

    #[test]
    fn the_scan_finds_only_its_requests_stdin_end_in_any_pieces() {
        // Body, another id's end, an empty record of another type, then the end: each byte
        // fed alone finds it at the very last byte, and only there.
        let bytes = input(&[(5, 1, b"body", 3), (5, 2, b"", 0), (4, 1, b"", 0), (5, 1, &[5; 16], 0), (5, 1, b"", 0)]);
        let mut scan = StdinEndScan::new(1);
        let hits: Vec<usize> = (0..bytes.len()).filter(|&i| scan.feed(&bytes[i..=i])).collect();
        assert_eq!(hits, [bytes.len() - 1]);
        assert!(StdinEndScan::new(1).feed(&bytes));
        assert!(!StdinEndScan::new(3).feed(&bytes));
    }

    #[test]
    fn lingering_is_done_at_the_input_end_or_after_its_bytes() {
        let mut l = Lingering::new(1);
        assert!(!l.done_after(&input(&[(5, 1, b"body", 0), (5, 2, b"", 0)])));
        assert!(l.done_after(&input(&[(5, 1, b"", 0)])));
        let mut l = Lingering { scan: StdinEndScan::new(1), left: 100 };
        assert!(!l.done_after(&[0; 64]) && l.done_after(&[0; 64]), "at most its bytes");
    }

    mod lingering {
        use super::*;
        use std::io::{Read, Write};
        use std::os::fd::AsRawFd;
        use std::os::unix::net::UnixStream;

        /// Linger on one end of a pair (for up to a minute) in a thread: (the peer, the
        /// thread, which returns how long the linger took).
        fn lingering(buffered: Vec<u8>, max_bytes: usize) -> (UnixStream, std::thread::JoinHandle<Duration>) {
            let (ours, peer) = UnixStream::pair().expect("socketpair");
            let t = std::thread::spawn(move || {
                let start = Instant::now();
                linger_for(ours.as_raw_fd(), 1, &buffered, Duration::from_secs(60), max_bytes);
                start.elapsed()
            });
            (peer, t)
        }

        #[test]
        fn it_ends_when_the_stdin_end_arrives_and_the_peer_sees_the_response_end() {
            let (mut peer, t) = lingering(input(&[(5, 1, b"a", 0)]), LINGER_BYTES);
            let mut end = [0u8; 1];
            assert_eq!(peer.read(&mut end).expect("read"), 0, "the sending side is shut down first");
            peer.write_all(&input(&[(5, 1, b"rest of the body", 0), (5, 1, b"", 0)])).expect("the input end is taken");
            let took = t.join().expect("linger");
            assert!(took < Duration::from_secs(30), "it waited for EOF or its time, not the input end: {took:?}");
        }

        #[test]
        fn it_ends_at_eof_or_after_its_bytes() {
            let (peer, t) = lingering(Vec::new(), LINGER_BYTES);
            drop(peer);
            assert!(t.join().expect("linger") < Duration::from_secs(30));
            let (mut peer, t) = lingering(Vec::new(), 64 * 1024);
            let other = input(&[(5, 2, &[0; 8192], 0)]);
            while !t.is_finished() {
                if peer.write_all(&other).is_err() {
                    break;
                }
            }
            assert!(t.join().expect("linger") < Duration::from_secs(30), "bounded by bytes, not time");
        }

        #[test]
        fn an_input_end_already_received_ends_it_at_once() {
            let (mut peer, t) = lingering(input(&[(5, 1, b"", 0)]), LINGER_BYTES);
            assert!(t.join().expect("linger") < Duration::from_secs(30));
            let _ = peer.write_all(b"x");
        }
    }
}

/// How a direct connection whose response was cut off after its head ends, so that the web
/// server sees a failed response rather than a short one that looks complete.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum CutOff {
    /// The web server keeps the connection (FCGI_KEEP_CONN): EOF without END_REQUEST is a
    /// failure to it.
    Close,
    /// It does not: EOF would be the response's normal end, so it is told otherwise.
    Signal,
}

/// How long a TCP peer is given to read a cut-off response before the reset (its unread
/// byte count is not observable).
pub(crate) const CUT_OFF_TCP_WAIT: Duration = Duration::from_millis(100);
/// On a unix socket, how often and how many times a cut-off looks whether the web server
/// has read the response, before the invalid record.
pub(crate) const CUT_OFF_LOOK: Duration = Duration::from_millis(20);
pub(crate) const CUT_OFF_LOOKS: u32 = 50;

/// Before the caller closes `fd` on a cut-off response: for [`CutOff::Signal`], once the web
/// server has read what was sent (a signal in the same read makes it drop the head before
/// the client has it), a reset over TCP, an invalid record on a unix socket. Blocks for at
/// most a second: call detached from Python.
pub(crate) fn end_cut_off(fd: RawFd, how: CutOff) {
    if how == CutOff::Close {
        return;
    }
    let tcp = crate::sys::is_tcp(fd);
    if tcp {
        std::thread::sleep(CUT_OFF_TCP_WAIT);
        crate::sys::reset_on_close(fd);
        return;
    }
    for _ in 0..CUT_OFF_LOOKS {
        if crate::sys::unsent_bytes(fd).unwrap_or(0) == 0 {
            break;
        }
        std::thread::sleep(CUT_OFF_LOOK);
    }
    let _ = crate::sys::send_all(fd, &fastcgi_server::record::INVALID_RECORD);
}
