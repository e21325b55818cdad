//! Error override (mod_wsgi's WSGIErrorOverride, Apache's `ErrorDocument`): a pool's
//! `error-pages` replace the body of an app's 4xx/5xx response, and are also used for the
//! bridge's own 502, 503 and 504 for that pool, so every application behind a site shows the
//! same pages. A page is a file (read when the configuration is loaded) or a local path the
//! request is dispatched to again, as Apache's `ErrorDocument 404 /errors/404` does. Either
//! way the status stays the original one, and so do the app's headers that do not describe
//! its body (Set-Cookie, WWW-Authenticate, Retry-After …).
use super::Handoff;
use crate::config::{ErrorPage, ErrorPages};
use bytes::{BufMut, Bytes, BytesMut};
use fastcgi_server::cgi::ResponseHead;

/// A response whose body a page replaces: its status and the headers kept from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Replaced {
    pub status: u16,
    /// The app's headers that do not describe its body, in order.
    pub keep: Vec<(Bytes, Bytes)>,
}

impl Replaced {
    /// One of the bridge's own errors (no app headers; a 503 keeps its Retry-After).
    pub(crate) fn bridge(status: u16, retry_after: Option<u32>) -> Self {
        let keep =
            retry_after.map(|s| (Bytes::from_static(b"Retry-After"), Bytes::from(s.to_string()))).into_iter().collect();
        Self { status, keep }
    }
}

/// What error override does for one request's response.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Override<'a> {
    /// The pool's pages replace the responses they name.
    Pages(&'a ErrorPages),
    /// This request fetches the page for an earlier response: its 2xx answer goes out with
    /// that response's status and kept headers; anything else means the page failed. No
    /// page of its own replaces it (a failing page does not recurse).
    Serving(&'a Replaced),
}

/// Headers that describe the replaced body, not the response: the page brings its own.
const BODY_HEADERS: &[&[u8]] = &[
    b"content-type",
    b"content-length",
    b"content-encoding",
    b"content-language",
    b"content-range",
    b"content-location",
    b"content-disposition",
    b"content-md5",
    b"etag",
    b"last-modified",
    b"accept-ranges",
    b"location",
];

/// Look at an app's response head: `Some(hand-off)` when a page replaces it (or, for an
/// error page's own request, when the page failed); `None` to pass it on — after giving an
/// error page's answer the original status and headers.
pub(crate) fn on_head(ov: Override<'_>, head: &mut ResponseHead) -> Option<Handoff> {
    let status = super::effective_status(head);
    match ov {
        Override::Pages(pages) => {
            if status < 400 || pages.get(status).is_none() {
                return None;
            }
            // A head the bridge would refuse (CR/LF in a value …) is not replaced: it gets
            // the 500 and the log line every such response gets.
            if super::encode_head(head, 0).is_err() {
                return None;
            }
            let keep = head
                .headers
                .iter()
                .filter(|(n, _)| {
                    !BODY_HEADERS.iter().chain(fastcgi_server::cgi::HOP_BY_HOP).any(|h| n.eq_ignore_ascii_case(h))
                })
                .cloned()
                .collect();
            Some(Handoff::ErrorPage(Replaced { status, keep }))
        }
        Override::Serving(orig) => {
            if !(200..300).contains(&status) {
                return Some(Handoff::ErrorPage(Replaced { status, keep: Vec::new() }));
            }
            head.status = Some(orig.status);
            head.reason = None;
            for (name, value) in &orig.keep {
                // Set-Cookie repeats; of any other header the page's own value wins.
                if name.eq_ignore_ascii_case(b"set-cookie") || head.header(name).is_none() {
                    head.headers.push((name.clone(), value.clone()));
                }
            }
            None
        }
    }
}

/// How a response that a page replaces is answered (see [`decide`]).
#[derive(Debug)]
pub(crate) enum PageAnswer {
    /// Send this complete response; `status` is what the access log shows.
    Send { status: u16, reply: BytesMut },
    /// Dispatch the request to the page at local path `target`; it replaces `replaced`
    /// (the caller serves it under [`Override::Serving`] of `replaced`).
    Dispatch { target: Bytes, replaced: Replaced },
}

/// Decide how `replaced` is answered under `ov`: the pool's file page for its status, a
/// dispatch to its page path, or the bridge's default text. A request fetching an error
/// page gets no page of its own: the page failing means the default text with the status
/// of the response the page was to replace. Every error page is decided here.
pub(crate) fn decide(ov: Option<Override<'_>>, replaced: Replaced) -> PageAnswer {
    let pages = match ov {
        Some(Override::Serving(orig)) => {
            return PageAnswer::Send { status: orig.status, reply: default_response(orig) }
        }
        Some(Override::Pages(pages)) => pages.get(replaced.status),
        None => None,
    };
    match pages {
        Some(ErrorPage::File { body, content_type, .. }) => PageAnswer::Send {
            status: replaced.status,
            reply: response(replaced.status, content_type, body, &replaced.keep),
        },
        Some(ErrorPage::Redirect(target)) => PageAnswer::Dispatch { target: target.clone(), replaced },
        None => PageAnswer::Send { status: replaced.status, reply: default_response(&replaced) },
    }
}

/// Prepare the request fetching an error page: the client's conditional and range headers
/// are dropped, since they describe what the client has of the page it asked for, not of
/// this one; a 304 or 206 would not be the page (Apache sets `no_local_copy` for the same
/// reason).
pub(crate) fn page_request(params: &mut fastcgi_server::Params) {
    for name in [
        &b"HTTP_IF_NONE_MATCH"[..],
        b"HTTP_IF_MODIFIED_SINCE",
        b"HTTP_IF_MATCH",
        b"HTTP_IF_UNMODIFIED_SINCE",
        b"HTTP_IF_RANGE",
        b"HTTP_RANGE",
    ] {
        params.remove(name);
    }
}

/// The bridge's default text page for `r`'s status, with its kept headers.
pub(crate) fn default_response(r: &Replaced) -> BytesMut {
    let text = format!("{} {}\n", r.status, super::reason_phrase(r.status));
    response(r.status, "text/plain; charset=utf-8", text.as_bytes(), &r.keep)
}

/// A complete CGI response: `status`, the kept headers, and `body` of `content_type`.
fn response(status: u16, content_type: &str, body: &[u8], keep: &[(Bytes, Bytes)]) -> BytesMut {
    let mut out =
        BytesMut::with_capacity(128 + body.len() + keep.iter().map(|(n, v)| n.len() + v.len() + 4).sum::<usize>());
    out.put_slice(format!("Status: {status} {}\r\n", super::reason_phrase(status)).as_bytes());
    for (name, value) in keep {
        out.put_slice(name);
        out.put_slice(b": ");
        out.put_slice(value);
        out.put_slice(b"\r\n");
    }
    out.put_slice(format!("Content-Type: {content_type}\r\nContent-Length: {}\r\n\r\n", body.len()).as_bytes());
    out.put_slice(body);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ErrorPageError, PageSource};

    fn head(status: u16, headers: &[(&str, &str)]) -> ResponseHead {
        ResponseHead {
            status: Some(status),
            reason: None,
            location: None,
            content_type: None,
            content_length: None,
            headers: headers
                .iter()
                .map(|(n, v)| (Bytes::copy_from_slice(n.as_bytes()), Bytes::copy_from_slice(v.as_bytes())))
                .collect(),
        }
    }

    fn text(b: &[u8]) -> &str {
        std::str::from_utf8(b).unwrap_or("<not utf-8>")
    }

    #[test]
    fn file_pages() {
        let dir = crate::scratch::scratch_dir("errpages");
        let f = dir.join("502.html");
        std::fs::write(&f, "<h1>down</h1>").expect("write");
        let mut pages = ErrorPages::default();
        pages.insert("502", PageSource::File(&f)).expect("load");
        let PageAnswer::Send { reply: r, .. } = decide(Some(Override::Pages(&pages)), Replaced::bridge(502, None))
        else {
            panic!("a file page is sent")
        };
        assert_eq!(text(&r), "Status: 502 Bad Gateway\r\nContent-Type: text/html; charset=utf-8\r\nContent-Length: 13\r\n\r\n<h1>down</h1>");
        let PageAnswer::Send { reply: r, .. } = decide(Some(Override::Pages(&pages)), Replaced::bridge(503, Some(1)))
        else {
            panic!("no page: default")
        };
        assert!(text(&r).starts_with("Status: 503 Service Unavailable\r\nRetry-After: 1\r\nContent-Type: text/plain"));
        assert!(matches!(pages.insert("200", PageSource::File(&f)), Err(ErrorPageError::NotAnError(_))));
        assert!(matches!(
            pages.insert("404", PageSource::File(&dir.join("missing"))),
            Err(ErrorPageError::Read { .. })
        ));
    }

    #[test]
    fn redirect_pages_are_local_paths() {
        let mut pages = ErrorPages::default();
        pages.insert("404", PageSource::Redirect("/errors/404?x=1")).expect("local");
        for bad in ["errors/404", "//host/x", "http://h/x", "/a b", "/a\r\nX: 1", ""] {
            assert!(
                matches!(pages.insert("404", PageSource::Redirect(bad)), Err(ErrorPageError::BadRedirect(_))),
                "{bad:?}"
            );
        }
        assert_eq!(pages.get(404), Some(&ErrorPage::Redirect(Bytes::from_static(b"/errors/404?x=1"))));
    }

    #[test]
    fn app_headers_kept_body_headers_replaced() {
        let mut pages = ErrorPages::default();
        pages.insert("401", PageSource::Redirect("/errors/401")).expect("page");
        let mut h = head(
            401,
            &[
                ("Content-Type", "application/json"),
                ("WWW-Authenticate", "Basic realm=\"x\""),
                ("Set-Cookie", "a=1"),
                ("Content-Length", "3"),
                ("ETag", "\"e\""),
                ("Set-Cookie", "b=2"),
                ("Connection", "close"),
                ("X-Trace", "t"),
            ],
        );
        let Some(Handoff::ErrorPage(r)) = on_head(Override::Pages(&pages), &mut h) else { panic!("replaced") };
        let names: Vec<&str> = r.keep.iter().map(|(n, _)| text(n)).collect();
        assert_eq!(names, ["WWW-Authenticate", "Set-Cookie", "Set-Cookie", "X-Trace"]);
        assert!(on_head(Override::Pages(&pages), &mut head(404, &[])).is_none(), "no page for 404");
        assert!(
            on_head(Override::Pages(&pages), &mut head(401, &[("X", "a\r\nb")])).is_none(),
            "a bad head is not replaced"
        );

        // The page's answer goes out with the original status and the kept headers.
        let mut page = head(200, &[("Content-Type", "text/html"), ("Set-Cookie", "page=1"), ("X-Trace", "page")]);
        assert!(on_head(Override::Serving(&r), &mut page).is_none());
        let (status, block) = super::super::encode_head(&page, 0).expect("encode");
        assert_eq!(status, 401);
        assert_eq!(
            text(&block),
            "Status: 401 Unauthorized\r\nContent-Type: text/html\r\nSet-Cookie: page=1\r\nX-Trace: page\r\n\
             WWW-Authenticate: Basic realm=\"x\"\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\n\r\n"
        );
        // A failing page is handed back; the default text goes out with the first status.
        let Some(Handoff::ErrorPage(failed)) = on_head(Override::Serving(&r), &mut head(500, &[])) else {
            panic!("failed")
        };
        let PageAnswer::Send { status, reply } = decide(Some(Override::Serving(&r)), failed) else {
            panic!("no recursion")
        };
        assert_eq!(status, 401);
        assert!(text(&reply)
            .starts_with("Status: 401 Unauthorized\r\nWWW-Authenticate: Basic realm=\"x\"\r\nSet-Cookie: a=1\r\n"));
        assert!(text(&reply).ends_with("\r\n\r\n401 Unauthorized\n"));
    }

    #[test]
    fn a_page_request_is_not_conditional() {
        let mut p = fastcgi_server::Params::default();
        for (n, v) in [
            ("HTTP_IF_NONE_MATCH", "\"x\""),
            ("HTTP_RANGE", "bytes=0-1"),
            ("HTTP_IF_MODIFIED_SINCE", "x"),
            ("HTTP_HOST", "h"),
        ] {
            p.insert(n.as_bytes(), v.as_bytes());
        }
        page_request(&mut p);
        let names: Vec<&[u8]> = p.iter().map(|(n, _)| n).collect();
        assert_eq!(names, [&b"HTTP_HOST"[..]]);
    }

    #[test]
    fn a_redirect_page_is_dispatched_with_what_it_replaces() {
        let mut pages = ErrorPages::default();
        pages.insert("503", PageSource::Redirect("/errors/503")).expect("page");
        let PageAnswer::Dispatch { target, replaced } =
            decide(Some(Override::Pages(&pages)), Replaced::bridge(503, Some(1)))
        else {
            panic!("dispatch")
        };
        assert_eq!((&target[..], replaced.status, replaced.keep.len()), (&b"/errors/503"[..], 503, 1));
        // the error page's pool is down too: the default 503, Retry-After kept
        let PageAnswer::Send { status, reply } =
            decide(Some(Override::Serving(&replaced)), Replaced::bridge(502, None))
        else {
            panic!("sent")
        };
        assert_eq!(status, 503);
        assert!(text(&reply).contains("Retry-After: 1\r\n"));
        // no pages: the default text with the response's own status
        let PageAnswer::Send { status, .. } = decide(None, Replaced::bridge(504, None)) else { panic!("sent") };
        assert_eq!(status, 504);
    }
}
