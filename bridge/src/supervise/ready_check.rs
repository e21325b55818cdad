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
