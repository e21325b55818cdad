//! A pool's `ready-check`: after a new worker reports READY, and before it takes a single
//! request, the bridge sends it one GET of its own, straight over a connection of its own
//! (not through the web server, not counted as a served request). An answer other than
//! 2xx/3xx within what is left of startup-timeout is a start failure, like an import
//! error: Django imports its URLconf and views at the first request, so a broken deploy
//! would otherwise count as ready and take over from the old workers.
//!
//! The request goes through the backend's own exchange (backend/exchange.rs), as any request.
use crate::backend::exchange::{exchange, First, Next, Outcome, RequestInfo};
use crate::backend::SlotConn;
use crate::config::ReadyCheck;
use crate::flow::{End, FrontGone, NoBody, ResponseSink};
use crate::worker_handle::WorkerHandle;
use bytes::{Bytes, BytesMut};
use fastcgi_server::{Params, Role};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

/// The request id the check's log lines carry.
pub(super) const REQUEST_ID: &str = "ready-check";
/// Response bytes kept to quote the body's first line.
const KEEP: usize = 4096;

/// Why a worker failed its check.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Failure {
    /// It answered, with a status outside 200–399: the status line and the body's first line.
    Answered { status: String, body: Option<String> },
    /// No answer within startup-timeout.
    TimedOut,
    /// No answer at all: what went wrong.
    Broken(String),
    /// The manager stopped the worker first, with this grace period (not the check's doing).
    Stopped(Duration),
}

/// Send the check to the worker behind `handle`, within `left`.
pub(super) async fn run(check: &ReadyCheck, handle: &Arc<WorkerHandle>, left: Duration) -> Result<(), Failure> {
    let (mut slot, _canceller) =
        SlotConn::connect(handle.clone()).await.map_err(|e| Failure::Broken(format!("cannot connect: {e}")))?;
    let params = params(check);
    let info = RequestInfo {
        id: REQUEST_ID,
        uri: &check.uri,
        role: Role::Responder,
        error_pages: None,
        files: None,
        reader: None,
    };
    let (mut body, mut sink) = (NoBody, Kept(BytesMut::new()));
    let sent = exchange(&mut slot, &info, &params, &mut body, &mut sink, First::Encode, None);
    let Ok(Outcome { status, next, .. }) = tokio::time::timeout(left, sent).await else {
        return Err(Failure::TimedOut);
    };
    // The connection closes here: the worker thread that served it goes back to accept().
    drop(slot);
    match next {
        Next::Done | Next::Reroute(_) | Next::File(_) if (200..400).contains(&status) => Ok(()),
        Next::Done | Next::Reroute(_) | Next::File(_) | Next::ErrorPage(_) => Err(answered(status, &sink.0)),
        Next::Error(code) => {
            Err(Failure::Broken(format!("the worker's answer was no valid response (the bridge's {code})")))
        }
        Next::Retry(_) => Err(Failure::Broken("the worker closed the connection".into())),
    }
}

/// The request: a GET as a web server would send it, marked as the bridge's own.
fn params(check: &ReadyCheck) -> Params {
    let (path, query) = check.uri.split_once('?').unwrap_or((&check.uri, ""));
    let host = check.host.as_deref();
    let (server_name, port) = match host.and_then(|h| h.rsplit_once(':')).filter(|(_, p)| p.parse::<u16>().is_ok()) {
        Some((name, port)) => (name, port),
        None => (host.unwrap_or("localhost"), if check.https { "443" } else { "80" }),
    };
    let mut p = Params::default();
    let pairs: [(&[u8], &[u8]); 14] = [
        (b"GATEWAY_INTERFACE", b"CGI/1.1"),
        (b"SERVER_SOFTWARE", b"fcgibridge"),
        (b"SERVER_PROTOCOL", b"HTTP/1.1"),
        (b"REQUEST_METHOD", b"GET"),
        (b"REQUEST_URI", check.uri.as_bytes()),
        (b"SCRIPT_NAME", b""),
        (b"PATH_INFO", &crate::route::percent_decode(path.as_bytes())),
        (b"QUERY_STRING", query.as_bytes()),
        (b"SERVER_NAME", server_name.as_bytes()),
        (b"SERVER_PORT", port.as_bytes()),
        (b"REMOTE_ADDR", b"127.0.0.1"),
        (b"REMOTE_PORT", b"0"),
        (b"HTTP_USER_AGENT", b"fcgibridge ready-check"),
        // What an app can tell the check by (it is not counted as a served request).
        (super::READY_CHECK_PARAM, b"1"),
    ];
    for (name, value) in pairs {
        p.insert(Bytes::copy_from_slice(name), Bytes::copy_from_slice(value));
    }
    if let Some(host) = host {
        p.insert(&b"HTTP_HOST"[..], Bytes::copy_from_slice(host.as_bytes()));
    }
    if check.https {
        p.insert(&b"HTTPS"[..], &b"on"[..]);
        p.insert(&b"REQUEST_SCHEME"[..], &b"https"[..]);
    }
    p
}

/// A non-2xx/3xx answer: its status line and the first line of its body.
fn answered(status: u16, response: &[u8]) -> Failure {
    let text = String::from_utf8_lossy(response);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status =
        head.lines().find_map(|l| l.strip_prefix("Status: ")).map_or_else(|| status.to_string(), str::to_owned);
    let body = body
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .map(|l| crate::logging::escape::prefix(l, 200).into_owned());
    Failure::Answered { status, body }
}

/// What the app said about its failure, from its stderr lines — `sources`, the most
/// telling first: the check's own STDERR records, then the process's stderr (an app's
/// logging record counts by its message). A traceback's exception line (its last line,
/// `SyntaxError: invalid syntax`), never the caret or tilde lines Python 3.11 draws under
/// a frame's code, the code or a `File "…", line N` line; else the last line that reads
/// `Name: message`; else the last line of text. Cut to a few hundred bytes.
pub(super) fn what_the_app_said(sources: &[&[String]]) -> Option<String> {
    let texts: Vec<Vec<String>> =
        sources.iter().map(|lines| lines.iter().flat_map(|l| text_lines(l)).collect()).collect();
    let said = texts
        .iter()
        .find_map(|t| exception_after_a_frame(t))
        .or_else(|| texts.iter().find_map(|t| t.iter().rfind(|l| exception_name(l).is_some_and(|(_, msg)| msg))))
        .or_else(|| texts.iter().find_map(|t| t.iter().rfind(|l| !is_scaffolding(l))))?;
    Some(crate::logging::escape::prefix(&crate::logging::escape::clean(said.trim()), 300).into_owned())
}

/// The first exception line after a traceback's last frame: the exception that ended it
/// (the last of a chain), not a line the app logged after the traceback; of an exception
/// group, its last sub-exception (each comes after a `+-+---- N ----` line).
fn exception_after_a_frame(lines: &[String]) -> Option<&String> {
    let last_frame = lines.iter().rposition(|l| is_frame(l))?;
    let mut rest = lines[last_frame..].iter();
    let mut said = rest.find(|l| exception_name(l).is_some())?;
    let mut after_separator = false;
    for line in rest {
        if after_separator && exception_name(line).is_some() {
            said = line;
        }
        after_separator = line.trim_start().starts_with("+-");
    }
    Some(said)
}

/// The lines of one line of output: an app's logging record's message, a direct worker's
/// line without its request tag, an exception group's lines without the `|` drawn before them.
fn text_lines(line: &str) -> Vec<String> {
    let text = crate::logging::app_records::message(line).unwrap_or_else(|| line.to_owned());
    let text = crate::logging::app_lines::request_tag(&text).map_or(&*text, |tag| &text[tag.len()..]);
    text.lines()
        .map(|l| match l.trim_start().strip_prefix('|') {
            Some(rest) => rest.strip_prefix(' ').unwrap_or(rest).to_owned(),
            None => l.to_owned(),
        })
        .filter(|l| !l.trim().is_empty())
        .collect()
}

/// `  File "/srv/shop/views.py", line 12, in index` (or `line 12` alone, a SyntaxError's).
fn is_frame(line: &str) -> bool {
    line.trim_start().starts_with("File \"") && line.contains("\", line ")
}

/// A traceback's lines other than its exception: frames, their code (indented), the caret
/// and tilde lines under it, the headers, an exception group's frame drawing.
fn is_scaffolding(line: &str) -> bool {
    const HEADERS: [&str; 4] = [
        "Traceback (most recent call last):",
        "Exception Group Traceback (most recent call last):",
        "During handling of the above exception, another exception occurred:",
        "The above exception was the direct cause of the following exception:",
    ];
    let t = line.trim();
    let drawn = t.chars().all(|c| "^~+-| ".contains(c) || c.is_ascii_digit()) && !t.chars().all(|c| c.is_ascii_digit());
    drawn || is_frame(line) || line.starts_with(char::is_whitespace) || HEADERS.iter().any(|h| t.ends_with(h))
}

/// An exception line, `Name: message` or a bare `Name` at the start of the line (a dotted
/// name whose last part is capitalised: `KeyError`, `django.core.exceptions.ImproperlyConfigured`):
/// the name, and whether a message follows.
fn exception_name(line: &str) -> Option<(&str, bool)> {
    let (name, has_message) = match line.split_once(':') {
        Some((name, rest)) => (name, !rest.trim().is_empty()),
        None => (line.trim_end(), false),
    };
    let well_formed = name.split('.').all(|part| {
        part.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && part.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
    });
    let capitalised =
        name.rsplit('.').next().and_then(|last| last.chars().next()).is_some_and(|c| c.is_ascii_uppercase());
    (well_formed && capitalised).then_some((name, has_message))
}

/// The response's first [`KEEP`] bytes; the rest is read and dropped.
struct Kept(BytesMut);

impl ResponseSink for Kept {
    fn send(&mut self, data: Bytes, _end: Option<End>) -> impl Future<Output = Result<(), FrontGone>> + Send {
        let room = KEEP.saturating_sub(self.0.len());
        self.0.extend_from_slice(&data[..data.len().min(room)]);
        std::future::ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_request_is_a_get_marked_as_the_bridges() {
        let check = ReadyCheck::parse("https://shop.example:8443/health%20z/?deep=1").expect("parses");
        let p = params(&check);
        let get = |k: &[u8]| String::from_utf8_lossy(p.get(k).unwrap_or(b"-")).into_owned();
        assert_eq!(get(b"REQUEST_URI"), "/health%20z/?deep=1");
        assert_eq!((get(b"PATH_INFO"), get(b"QUERY_STRING")), ("/health z/".into(), "deep=1".into()));
        assert_eq!(
            (get(b"HTTP_HOST"), get(b"SERVER_NAME"), get(b"SERVER_PORT")),
            ("shop.example:8443".into(), "shop.example".into(), "8443".into())
        );
        assert_eq!(
            (get(b"HTTPS"), get(b"REMOTE_ADDR"), get(crate::supervise::READY_CHECK_PARAM)),
            ("on".into(), "127.0.0.1".into(), "1".into())
        );
        let p = params(&ReadyCheck::parse("/up").expect("parses"));
        assert!(p.get(b"HTTP_HOST").is_none() && p.get(b"HTTPS").is_none());
        assert_eq!(p.get(b"SERVER_PORT"), Some(&b"80"[..]));
    }

    #[test]
    fn a_failed_answer_is_quoted_by_its_status_and_first_body_line() {
        let r = b"Status: 500 Internal Server Error\r\nContent-Type: text/html\r\n\r\n\n  <h1>Server Error (500)</h1>\nmore\n";
        assert_eq!(
            answered(500, r),
            Failure::Answered {
                status: "500 Internal Server Error".into(),
                body: Some("<h1>Server Error (500)</h1>".into())
            }
        );
        assert_eq!(answered(404, b""), Failure::Answered { status: "404".into(), body: None });
    }

    fn said(sources: &[&str]) -> Option<String> {
        let lines: Vec<Vec<String>> = sources.iter().map(|s| s.lines().map(str::to_owned).collect()).collect();
        let refs: Vec<&[String]> = lines.iter().map(Vec::as_slice).collect();
        what_the_app_said(&refs)
    }

    /// Python 3.11's traceback of a Django app whose views.py does not compile, cut short
    /// at any line: its exception line when that came, never a caret line.
    #[test]
    fn the_app_said_its_tracebacks_exception_not_a_caret_line() {
        let traceback = r#"Traceback (most recent call last):
  File "/venv/lib/python3.11/site-packages/django/core/handlers/exception.py", line 55, in inner
    response = get_response(request)
               ^^^^^^^^^^^^^^^^^^^^^
  File "/venv/lib/python3.11/site-packages/django/urls/resolvers.py", line 711, in urlconf_module
    return import_module(self.urlconf_name)
           ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^
  File "<frozen importlib._bootstrap>", line 1204, in _gcd_import
  File "/srv/blog/blog/views.py", line 12
    def broken(:
               ^
SyntaxError: invalid syntax
Exception ignored in: <function Thing.__del__ at 0x7f>
    result = a[1] + b
             ~~~~~^~~"#;
        assert_eq!(said(&[traceback]).as_deref(), Some("SyntaxError: invalid syntax"));
        let lines: Vec<&str> = traceback.lines().collect();
        for cut in 1..lines.len() {
            let got = said(&[&lines[..cut].join("\n")]).unwrap_or_default();
            assert!(
                !got.starts_with(['^', '~']) && !got.starts_with("File ") && !got.starts_with("Traceback"),
                "{cut}: {got}"
            );
        }
        // The request's own records before the process's stderr; a bare exception name;
        // a dotted one; an exception group's last sub-exception.
        assert_eq!(
            said(&[
                "Traceback (most recent call last):\n  File \"a.py\", line 1, in f\nKeyboardInterrupt",
                "Error: later"
            ])
            .as_deref(),
            Some("KeyboardInterrupt")
        );
        assert_eq!(said(&["", "  File \"s.py\", line 3, in <module>\ndjango.core.exceptions.ImproperlyConfigured: SECRET_KEY is empty\nbye"]).as_deref(), Some("django.core.exceptions.ImproperlyConfigured: SECRET_KEY is empty"));
        let group = "  + Exception Group Traceback (most recent call last):\n  |   File \"g.py\", line 2, in <module>\n  | ExceptionGroup: two (2 sub-exceptions)\n  +-+---------------- 1 ----------------\n    | ValueError: first\n    +------------------------------------";
        assert_eq!(said(&[group]).as_deref(), Some("ValueError: first"));
        // A line the app logged after the traceback is not its exception.
        let then_logged =
            "Traceback (most recent call last):\n  File \"a.py\", line 1, in f\nKeyError: 'x'\nWARNING: retrying";
        assert_eq!(said(&[then_logged]).as_deref(), Some("KeyError: 'x'"));
    }

    #[test]
    fn without_a_traceback_the_app_said_its_last_message_or_line() {
        assert_eq!(said(&["starting\nWarning: cache is cold\nready?"]).as_deref(), Some("Warning: cache is cold"));
        assert_eq!(
            said(&["Internal Server Error: /healthz/\n    ^^^^"]).as_deref(),
            Some("Internal Server Error: /healthz/")
        );
        assert_eq!(said(&["", "   \n^^^"]), None);
        let record = format!("{}{{\"level\":\"ERROR\",\"logger\":\"app\",\"msg\":\"Exception on /healthz [GET]\\nTraceback (most recent call last):\\n  File \\\"app.py\\\", line 9, in healthz\\n    int(x)\\n    ^^^^^^\\nValueError: invalid literal\",\"request_id\":\"ready-check\"}}", crate::logging::app_records::MARKER);
        assert_eq!(said(&["", &record]).as_deref(), Some("ValueError: invalid literal"));
        assert_eq!(said(&["[request_id=ready-check GET /healthz] boom happened"]).as_deref(), Some("boom happened"));
    }

    #[test]
    fn values_are_paths_or_urls_naming_the_host() {
        let ok = |t: &str| ReadyCheck::parse(t).map(|c| c.to_string());
        assert_eq!(ok("/healthz"), Ok("/healthz".into()));
        assert_eq!(ok("http://shop.example"), Ok("http://shop.example/".into()));
        assert_eq!(ok("https://a.b:1/x?y"), Ok("https://a.b:1/x?y".into()));
        for bad in ["healthz", "ftp://x/", "http:///x", "/a b", "/a#b", "http://u@h/"] {
            assert!(ReadyCheck::parse(bad).is_err(), "{bad}");
        }
    }
}
