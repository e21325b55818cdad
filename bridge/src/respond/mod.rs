//! What goes to the web server: the worker's CGI header block, cleaned up, and the
//! bridge's own error responses.
//!
//! Every response leaves with an explicit `Status:` (web servers disagree on what a
//! missing one means), at most one Content-Length, no Transfer-Encoding and no other
//! hop-by-hop header. A header value carrying CR, LF or NUL would let an app split the
//! response, so it turns the response into a 500. Internal redirects (redirect.rs), file
//! hand-offs (file_handoff.rs decides, sendfile.rs streams) and error pages are decided here too.
use bytes::{BufMut, BytesMut};
use fastcgi_server::cgi::{self, ResponseHead};

pub(crate) mod error_override;
pub(crate) mod file_handoff;
pub(crate) mod redirect;
pub(crate) mod sendfile;

/// How an app handed its request on instead of answering it.
#[derive(Debug)]
pub(crate) enum Handoff {
    /// Status 200 + `Location: /local/path`: serve that path instead.
    Local(bytes::Bytes),
    /// A file the bridge sends itself (X-Sendfile, X-Sendfile2, a mapped X-Accel-Redirect).
    File(Box<file_handoff::FileHandoff>),
    /// A 4xx/5xx whose body the pool's `error-pages` replace (or, for the request fetching
    /// an error page, that page failing).
    ErrorPage(error_override::Replaced),
}

/// Why a worker's header block cannot be passed on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum HeadError {
    #[error("header {0:?} has a CR, LF or NUL in its value")]
    ControlInValue(String),
    #[error("header name {0:?} is not a valid token")]
    InvalidName(String),
    /// 1xx is an interim status, never a CGI response's own; above 599 none exists.
    #[error("Status {0} is not a final HTTP status (200 to 599)")]
    StatusOutOfRange(u16),
    #[error("Status reason has a CR, LF or NUL")]
    ControlInReason,
}

/// The status the front should see.
pub(crate) fn effective_status(head: &ResponseHead) -> u16 {
    match head.status {
        // 200 with an absolute Location redirects nobody: a redirect was meant (mod_fcgid).
        Some(200) if head.location.as_ref().is_some_and(|l| redirect::is_absolute(l)) => 302,
        Some(s) => s,
        None if head.location.is_some() => 302,
        None => 200,
    }
}

/// Encode `head` as the CGI header block sent to the web server, into `out`.
/// `extra` is a capacity hint for body bytes the caller will append.
pub(crate) fn encode_head(head: &ResponseHead, extra: usize) -> Result<(u16, BytesMut), HeadError> {
    let status = effective_status(head);
    if !(200..=599).contains(&status) {
        return Err(HeadError::StatusOutOfRange(status));
    }
    let mut size = 32 + extra;
    for (n, v) in &head.headers {
        size += n.len() + v.len() + 4;
    }
    let mut out = BytesMut::with_capacity(size);
    out.put_slice(b"Status: ");
    put_u16(&mut out, status);
    out.put_u8(b' ');
    match &head.reason {
        // The app's reason belongs to the app's status, not to one the bridge changed.
        Some(r) if !r.is_empty() && head.status == Some(status) => {
            if has_ctl(r) {
                return Err(HeadError::ControlInReason);
            }
            out.put_slice(r);
        }
        _ => out.put_slice(reason_phrase(status).as_bytes()),
    }
    out.put_slice(b"\r\n");
    let mut content_length_sent = false;
    for (name, value) in &head.headers {
        if !cgi::is_token(name) {
            return Err(HeadError::InvalidName(String::from_utf8_lossy(name).into_owned()));
        }
        if has_ctl(value) {
            return Err(HeadError::ControlInValue(String::from_utf8_lossy(name).into_owned()));
        }
        if cgi::is_hop_by_hop(name) || name.eq_ignore_ascii_case(b"status") {
            continue;
        }
        if name.eq_ignore_ascii_case(b"content-length") {
            // One Content-Length, the parsed one: two (even equal) make nginx answer 502.
            // None with a 204 (RFC 9110 8.6; Django sends `0`): nginx and h2o pass it on.
            if content_length_sent || status == 204 {
                continue;
            }
            content_length_sent = true;
            if let Some(len) = head.content_length {
                out.put_slice(b"Content-Length: ");
                put_u64(&mut out, len);
                out.put_slice(b"\r\n");
            }
            continue;
        }
        out.put_slice(name);
        out.put_slice(b": ");
        out.put_slice(value);
        out.put_slice(b"\r\n");
    }
    out.put_slice(b"\r\n");
    Ok((status, out))
}

/// A complete response made by the bridge itself (404, 502, 503 …) in CGI form.
pub(crate) fn error_response(status: u16, retry_after: Option<u32>) -> BytesMut {
    let reason = reason_phrase(status);
    let mut out = BytesMut::with_capacity(160);
    out.put_slice(b"Status: ");
    put_u16(&mut out, status);
    out.put_u8(b' ');
    out.put_slice(reason.as_bytes());
    out.put_slice(b"\r\nContent-Type: text/plain; charset=utf-8\r\n");
    if let Some(secs) = retry_after {
        out.put_slice(b"Retry-After: ");
        put_u64(&mut out, u64::from(secs));
        out.put_slice(b"\r\n");
    }
    out.put_slice(b"Content-Length: ");
    put_u64(&mut out, (status_digits(status) + 1 + reason.len() + 1) as u64);
    out.put_slice(b"\r\n\r\n");
    put_u16(&mut out, status);
    out.put_u8(b' ');
    out.put_slice(reason.as_bytes());
    out.put_u8(b'\n');
    out
}

fn status_digits(status: u16) -> usize {
    status.to_string().len()
}

fn has_ctl(v: &[u8]) -> bool {
    v.iter().any(|&b| b == b'\r' || b == b'\n' || b == 0)
}

fn put_u16(out: &mut BytesMut, n: u16) {
    put_u64(out, u64::from(n));
}

fn put_u64(out: &mut BytesMut, n: u64) {
    let mut buf = itoa::Buffer::new();
    out.put_slice(buf.format(n).as_bytes());
}

/// The standard reason phrase; "Unknown" for codes without one.
pub(crate) fn reason_phrase(status: u16) -> &'static str {
    cgi::reason_phrase(status).unwrap_or("Unknown")
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn head(status: Option<u16>, headers: &[(&str, &str)]) -> ResponseHead {
        let headers: Vec<(Bytes, Bytes)> = headers
            .iter()
            .map(|(n, v)| (Bytes::copy_from_slice(n.as_bytes()), Bytes::copy_from_slice(v.as_bytes())))
            .collect();
        let find =
            |name: &str| headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name.as_bytes())).map(|(_, v)| v.clone());
        ResponseHead {
            status,
            reason: None,
            location: find("location"),
            content_type: find("content-type"),
            content_length: find("content-length").and_then(|v| std::str::from_utf8(&v).ok()?.parse().ok()),
            headers,
        }
    }

    fn text(h: &ResponseHead) -> String {
        match encode_head(h, 0) {
            Ok((_, b)) => String::from_utf8_lossy(&b).into_owned(),
            Err(e) => format!("error: {e}"),
        }
    }

    #[test]
    fn a_204_goes_out_without_the_apps_content_length() {
        let h = head(Some(204), &[("Content-Length", "0"), ("X-A", "b")]);
        assert_eq!(text(&h), "Status: 204 No Content\r\nX-A: b\r\n\r\n");
    }

    #[test]
    fn default_status_is_200() {
        assert_eq!(
            text(&head(None, &[("Content-Type", "text/plain")])),
            "Status: 200 OK\r\nContent-Type: text/plain\r\n\r\n"
        );
    }

    #[test]
    fn a_200_with_an_absolute_location_is_302_found_not_302_ok() {
        let mut h = head(Some(200), &[("Location", "http://x/")]);
        h.reason = Some(Bytes::from_static(b"OK"));
        let (status, out) = encode_head(&h, 0).expect("encodes");
        assert_eq!(status, 302);
        assert!(out.starts_with(b"Status: 302 Found\r\n"), "{:?}", String::from_utf8_lossy(&out));
    }

    #[test]
    fn interim_and_unknown_statuses_are_refused() {
        for status in [100, 101, 103, 199, 600, 999] {
            let h = head(Some(status), &[("Content-Type", "text/plain")]);
            assert_eq!(encode_head(&h, 0).err(), Some(HeadError::StatusOutOfRange(status)), "{status}");
        }
        for status in [200, 204, 599] {
            assert!(encode_head(&head(Some(status), &[]), 0).is_ok(), "{status}");
        }
    }

    #[test]
    fn location_without_status_is_302() {
        let h = head(None, &[("Location", "http://x/")]);
        assert_eq!(text(&h), "Status: 302 Found\r\nLocation: http://x/\r\n\r\n");
        let h = head(Some(201), &[("Location", "/new")]);
        assert!(text(&h).starts_with("Status: 201 Created\r\n"));
    }

    #[test]
    fn hop_by_hop_and_transfer_encoding_dropped() {
        let h = head(
            Some(200),
            &[("Transfer-Encoding", "chunked"), ("Connection", "close"), ("Keep-Alive", "5"), ("X-A", "1")],
        );
        assert_eq!(text(&h), "Status: 200 OK\r\nX-A: 1\r\n\r\n");
    }

    #[test]
    fn one_content_length() {
        let h = head(Some(200), &[("Content-Length", "5"), ("content-length", "5")]);
        assert_eq!(text(&h), "Status: 200 OK\r\nContent-Length: 5\r\n\r\n");
    }

    #[test]
    fn repeated_headers_kept() {
        let h = head(Some(200), &[("Set-Cookie", "a=1"), ("Set-Cookie", "b=2")]);
        assert_eq!(text(&h), "Status: 200 OK\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\n\r\n");
    }

    #[test]
    fn crlf_in_value_rejected() {
        let h = head(Some(200), &[("X-Evil", "a\r\nSet-Cookie: x=1")]);
        assert!(matches!(encode_head(&h, 0), Err(HeadError::ControlInValue(_))));
        let h = head(Some(200), &[("X-Evil", "a\nb")]);
        assert!(encode_head(&h, 0).is_err());
        let h = head(Some(200), &[("Bad Name", "x")]);
        assert!(matches!(encode_head(&h, 0), Err(HeadError::InvalidName(_))));
    }

    #[test]
    fn custom_reason_kept() {
        let mut h = head(Some(299), &[]);
        h.reason = Some(Bytes::from_static(b"Fine"));
        assert_eq!(text(&h), "Status: 299 Fine\r\n\r\n");
        h.reason = None;
        assert_eq!(text(&h), "Status: 299 Unknown\r\n\r\n");
    }

    #[test]
    fn error_response_is_consistent() {
        let r = error_response(503, Some(1));
        let s = String::from_utf8_lossy(&r).into_owned();
        assert!(s.starts_with("Status: 503 Service Unavailable\r\n"));
        assert!(s.contains("Retry-After: 1\r\n"));
        let (head, body) = s.split_once("\r\n\r\n").unwrap_or_default();
        assert!(head.contains(&format!("Content-Length: {}", body.len())));
    }
}
