//! Direct mode (`FCGIBRIDGE_DIRECT=1`): the worker accepts the web server's connections
//! itself on fd 0, with no bridge between them (docs/worker-contract.md, "Direct mode").
//! What the bridge would have done to a request is done here: the web server's
//! `FCGIBRIDGE_*` params are dropped, SCRIPT_NAME / PATH_INFO are set by the bridge's own
//! function ([`fastcgi_server::path::mount`]), each request gets an id, and what a request
//! writes to its error stream goes to the process's stderr (the bridge's log), not to the
//! web server's error log.
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use fastcgi_server::Params;

use crate::scoreboard::LINE_BYTES;

/// A direct worker's settings, from its environment.
pub(crate) struct Direct {
    /// `FCGIBRIDGE_MOUNT`: the listener's `mount` ("" for `/`).
    mount: Option<Box<str>>,
    /// `FCGIBRIDGE_KEEP_PATH_INFO=1`: SCRIPT_NAME and PATH_INFO as the web server sent them.
    keep_path_info: bool,
    pid: u32,
}

static DIRECT: OnceLock<Option<Direct>> = OnceLock::new();
/// The last request id's number in this process.
static REQUESTS: AtomicU64 = AtomicU64::new(0);

/// Read the environment once (before the app is imported, which may change it).
pub(crate) fn init() {
    DIRECT.get_or_init(|| {
        if std::env::var_os("FCGIBRIDGE_DIRECT").is_none_or(|v| v != "1") {
            return None;
        }
        let mount = std::env::var("FCGIBRIDGE_MOUNT").ok().map(|m| m.trim_end_matches('/').into());
        let keep_path_info = std::env::var_os("FCGIBRIDGE_KEEP_PATH_INFO").is_some_and(|v| v == "1");
        Some(Direct { mount, keep_path_info, pid: std::process::id() })
    });
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

    /// The request's id (`<pid>-<n>`) and its `METHOD URI` for the log and the scoreboard.
    pub(crate) fn tag(&self, params: &Params) -> Tag {
        let n = REQUESTS.fetch_add(1, Ordering::Relaxed) + 1;
        Tag::new(self.pid, n, params.get(b"REQUEST_METHOD").unwrap_or(b"-"), params.get(b"REQUEST_URI").unwrap_or(b""))
    }
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

    /// `METHOD URI` as the scoreboard shows it.
    pub(crate) fn line(&self) -> &[u8] {
        &self.text[self.id_len + 1..]
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
        let d = Direct { mount: Some("/app".into()), keep_path_info: false, pid: 1 };
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
        let d = Direct { mount: None, keep_path_info: false, pid: 1 };
        let mut p = params(&[("REQUEST_URI", "/a%20b"), ("SCRIPT_NAME", "/a b")]);
        d.prepare(&mut p);
        assert_eq!((get(&p, "SCRIPT_NAME"), get(&p, "PATH_INFO")), (Some("".into()), Some("/a b".into())));
        // keep-path-info: as the web server sent it.
        let d = Direct { mount: Some("/app".into()), keep_path_info: true, pid: 1 };
        let mut p = params(&[("REQUEST_URI", "/app/x"), ("SCRIPT_NAME", "/app/x")]);
        d.prepare(&mut p);
        assert_eq!((get(&p, "SCRIPT_NAME"), get(&p, "PATH_INFO")), (Some("/app/x".into()), None));
    }

    #[test]
    fn a_tag_names_the_request_and_prefixes_each_line() {
        let mut t = Tag::new(42, 7, b"GET", b"/x?y");
        assert_eq!((t.request_id(), t.line()), ("42-7", &b"GET /x?y"[..]));
        assert_eq!(t.prefixed(b"a\nb"), b"[request_id=42-7 GET /x?y] a\n[request_id=42-7 GET /x?y] b");
        assert_eq!(t.prefixed(b"c\n\n"), b"c\n[request_id=42-7 GET /x?y] \n", "a write continues the open line");
        let long = Tag::new(1, 1, b"GET", &[b'u'; 500]);
        assert_eq!(long.line().len(), LINE_BYTES);
    }
}
