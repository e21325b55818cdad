//! CGI response headers (RFC 3875 section 6) as a worker writes them on STDOUT.
//!
//! Lines end in `\n` or `\r\n`; the block ends with an empty line. Header names are matched
//! case-insensitively. Continuation lines (obsolete folding), lines without `:`, invalid names,
//! control characters in values, an invalid `Status` or `Content-Length`, and a second
//! `Status`, `Location`, `Content-Type` or `Content-Length` are errors: a bridge that forwarded
//! them would hand the web server an ambiguous response.
use crate::search::find_byte;
use crate::Error;
use bytes::Bytes;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
/// A parsed CGI header block.
pub struct ResponseHead {
    /// From `Status:`; `None` when the header was absent.
    pub status: Option<u16>,
    /// The reason phrase after the status code, `None` when there was none.
    pub reason: Option<Bytes>,
    /// Copy of the `Location` value (the header stays in `headers` too).
    pub location: Option<Bytes>,
    /// Copy of the `Content-Type` value (the header stays in `headers` too).
    pub content_type: Option<Bytes>,
    /// Parsed `Content-Length` (the header stays in `headers` too).
    pub content_length: Option<u64>,
    /// Every header other than Status, in order, names as sent.
    pub headers: Vec<(Bytes, Bytes)>,
}

impl ResponseHead {
    /// The first header named `name` (ASCII case-insensitive).
    pub fn header(&self, name: &[u8]) -> Option<&Bytes> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v)
    }
}

/// The most a response head (its header block, blank line included) may take: what the
/// bridge reads before it gives up on an application's head, and what the bridge's own
/// worker refuses in `start_response`.
pub const MAX_RESPONSE_HEAD: usize = 64 << 10;

/// Parse a header block from the start of `buf`. `Ok(None)`: incomplete (and below `max_len`).
/// On success also returns how many bytes the block took (including the blank line).
pub fn parse_response_head(buf: &[u8], max_len: usize) -> Result<Option<(ResponseHead, usize)>, Error> {
    // Find the blank line first, so an incomplete block costs one scan and no allocation.
    let mut start = 0;
    let end = loop {
        let Some(nl) = find_byte(b'\n', &buf[start..]) else {
            if buf.len() >= max_len {
                return Err(Error::CgiHeadTooLarge { limit: max_len });
            }
            return Ok(None);
        };
        let i = start + nl;
        if i == start || (i == start + 1 && buf[start] == b'\r') {
            break i + 1;
        }
        start = i + 1;
    };
    if end > max_len {
        return Err(Error::CgiHeadTooLarge { limit: max_len });
    }
    let block = Bytes::copy_from_slice(&buf[..end]);
    let mut head = ResponseHead::default();
    let mut pos = 0;
    let mut line_no = 0;
    loop {
        line_no += 1;
        let nl = find_byte(b'\n', &block[pos..]).map_or(block.len(), |n| pos + n);
        let mut line_end = nl;
        if line_end > pos && block[line_end - 1] == b'\r' {
            line_end -= 1;
        }
        if line_end == pos {
            break;
        }
        header_line(&block, pos, line_end, line_no, &mut head)?;
        pos = nl + 1;
    }
    Ok(Some((head, end)))
}

fn header_line(block: &Bytes, start: usize, end: usize, line: usize, head: &mut ResponseHead) -> Result<(), Error> {
    let text = &block[start..end];
    if text[0] == b' ' || text[0] == b'\t' {
        return Err(Error::CgiObsFold { line });
    }
    let colon = text.iter().position(|&c| c == b':').ok_or(Error::CgiMissingColon { line })?;
    let name = &text[..colon];
    if !is_token(name) {
        return Err(Error::CgiBadHeaderName { line });
    }
    let mut vs = colon + 1;
    let mut ve = text.len();
    while vs < ve && (text[vs] == b' ' || text[vs] == b'\t') {
        vs += 1;
    }
    while ve > vs && (text[ve - 1] == b' ' || text[ve - 1] == b'\t') {
        ve -= 1;
    }
    let value = &text[vs..ve];
    if value.iter().any(|&c| (c < 0x20 && c != b'\t') || c == 0x7f) {
        return Err(Error::CgiBadHeaderValue { line });
    }
    let value_bytes = block.slice(start + vs..start + ve);

    if name.eq_ignore_ascii_case(b"status") {
        if head.status.is_some() {
            return Err(Error::CgiDuplicateHeader { line, name: "Status" });
        }
        let bad = || Error::CgiBadStatus { line, value: crate::error::show(value) };
        let code = value.get(..3).ok_or_else(bad)?;
        if !code.iter().all(u8::is_ascii_digit) || code[0] == b'0' {
            return Err(bad());
        }
        let rest = &value[3..];
        if !rest.is_empty() && rest[0] != b' ' && rest[0] != b'\t' {
            return Err(bad());
        }
        head.status = Some(code.iter().fold(0u16, |n, &d| n * 10 + u16::from(d - b'0')));
        // `value` is trimmed, so a non-empty rest has a non-blank reason after its blanks.
        let r = rest.iter().position(|&c| c != b' ' && c != b'\t');
        head.reason = r.map(|r| value_bytes.slice(3 + r..));
        return Ok(());
    }
    if name.eq_ignore_ascii_case(b"content-length") {
        if head.content_length.is_some() {
            return Err(Error::CgiDuplicateHeader { line, name: "Content-Length" });
        }
        let n =
            parse_u64(value).ok_or_else(|| Error::CgiBadContentLength { line, value: crate::error::show(value) })?;
        head.content_length = Some(n);
    } else if name.eq_ignore_ascii_case(b"location") {
        if head.location.is_some() {
            return Err(Error::CgiDuplicateHeader { line, name: "Location" });
        }
        head.location = Some(value_bytes.clone());
    } else if name.eq_ignore_ascii_case(b"content-type") {
        if head.content_type.is_some() {
            return Err(Error::CgiDuplicateHeader { line, name: "Content-Type" });
        }
        head.content_type = Some(value_bytes.clone());
    }
    head.headers.push((block.slice(start..start + colon), value_bytes));
    Ok(())
}

fn parse_u64(b: &[u8]) -> Option<u64> {
    if b.is_empty() || b.len() > 20 {
        return None;
    }
    b.iter().try_fold(
        0u64,
        |n, &c| {
            if c.is_ascii_digit() {
                n.checked_mul(10)?.checked_add(u64::from(c - b'0'))
            } else {
                None
            }
        },
    )
}

/// Whether `name` can be a header name: a non-empty RFC 9110 token.
pub fn is_token(name: &[u8]) -> bool {
    !name.is_empty() && name.iter().all(|&c| is_tchar(c))
}

/// Headers that describe one hop, not the response (RFC 9110 section 7.6.1 and the
/// de facto `keep-alive` and `proxy-connection`): a gateway never passes them on.
pub const HOP_BY_HOP: &[&[u8]] =
    &[b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer", b"transfer-encoding", b"upgrade"];

/// Whether the header `name` (any case) is hop-by-hop.
pub fn is_hop_by_hop(name: &[u8]) -> bool {
    HOP_BY_HOP.iter().any(|h| name.eq_ignore_ascii_case(h))
}

/// The response headers by which a program hands its body over as a file for the web
/// server (or the bridge) to send: X-Sendfile (and lighttpd's older name for it),
/// X-Sendfile2, X-Accel-Redirect. Such a response's own body never reaches the client,
/// whatever its Content-Length says (Flask's `send_file` gives the file's).
pub const FILE_HANDOFF: &[&[u8]] = &[b"x-sendfile", b"x-lighttpd-send-file", b"x-sendfile2", b"x-accel-redirect"];

/// Whether the header `name` (any case) hands the body over as a file.
pub fn is_file_handoff(name: &[u8]) -> bool {
    FILE_HANDOFF.iter().any(|h| name.eq_ignore_ascii_case(h))
}

/// The standard reason phrase of an HTTP status (`None` for codes without one).
pub fn reason_phrase(status: u16) -> Option<&'static str> {
    Some(match status {
        100 => "Continue",
        101 => "Switching Protocols",
        103 => "Early Hints",
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        203 => "Non-Authoritative Information",
        204 => "No Content",
        205 => "Reset Content",
        206 => "Partial Content",
        207 => "Multi-Status",
        300 => "Multiple Choices",
        301 => "Moved Permanently",
        302 => "Found",
        303 => "See Other",
        304 => "Not Modified",
        307 => "Temporary Redirect",
        308 => "Permanent Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        402 => "Payment Required",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        406 => "Not Acceptable",
        408 => "Request Timeout",
        409 => "Conflict",
        410 => "Gone",
        411 => "Length Required",
        412 => "Precondition Failed",
        413 => "Content Too Large",
        414 => "URI Too Long",
        415 => "Unsupported Media Type",
        416 => "Range Not Satisfiable",
        417 => "Expectation Failed",
        421 => "Misdirected Request",
        422 => "Unprocessable Content",
        425 => "Too Early",
        426 => "Upgrade Required",
        428 => "Precondition Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        451 => "Unavailable For Legal Reasons",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        _ => return None,
    })
}

/// RFC 9110 token characters.
#[inline]
fn is_tchar(c: u8) -> bool {
    TCHAR[c as usize]
}

static TCHAR: [bool; 256] = {
    let mut t = [false; 256];
    let mut c = 0;
    while c < 256 {
        let b = c as u8;
        t[c] = b.is_ascii_alphanumeric()
            || matches!(
                b,
                b'!' | b'#' | b'$' | b'%' | b'&' | b'\'' | b'*' | b'+' | b'-' | b'.' | b'^' | b'_' | b'`' | b'|' | b'~'
            );
        c += 1;
    }
    t
};

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &[u8]) -> Result<Option<(ResponseHead, usize)>, Error> {
        parse_response_head(s, 1024)
    }

    #[test]
    fn typical_head() {
        let raw = b"Status: 404 Not Found\r\nContent-Type: text/html; charset=utf-8\r\nX-A:  b \r\nContent-Length: 12\r\n\r\nbody";
        let (h, n) = parse(raw).expect("ok").expect("complete");
        assert_eq!(n, raw.len() - 4);
        assert_eq!(h.status, Some(404));
        assert_eq!(h.reason.as_deref(), Some(&b"Not Found"[..]));
        assert_eq!(h.content_type.as_deref(), Some(&b"text/html; charset=utf-8"[..]));
        assert_eq!(h.content_length, Some(12));
        assert_eq!(h.headers.len(), 3, "everything but Status");
        assert_eq!(h.headers[1], (Bytes::from_static(b"X-A"), Bytes::from_static(b"b")));
        assert_eq!(h.header(b"x-a").map(|v| &v[..]), Some(&b"b"[..]));
    }

    #[test]
    fn bare_lf_and_case_and_location() {
        let (h, n) = parse(b"location: /x\nSTATUS: 302\n\n").expect("ok").expect("complete");
        assert_eq!(n, 26);
        assert_eq!(h.status, Some(302));
        assert_eq!(h.reason, None);
        assert_eq!(h.location.as_deref(), Some(&b"/x"[..]));
        assert_eq!(h.headers, vec![(Bytes::from_static(b"location"), Bytes::from_static(b"/x"))]);
        let (h, n) = parse(b"\r\nrest").expect("ok").expect("empty block");
        assert_eq!((h, n), (ResponseHead::default(), 2));
        let (h, _) = parse(b"Status: 200 \r\nX:\r\n\n").expect("ok").expect("complete");
        assert_eq!(h.reason, None);
        assert_eq!(h.headers[0].1, Bytes::new());
    }

    #[test]
    fn incomplete() {
        assert_eq!(parse(b""), Ok(None));
        assert_eq!(parse(b"Status: 200"), Ok(None));
        assert_eq!(parse(b"Status: 200\r\n"), Ok(None));
        assert_eq!(parse(b"Status: 200\r\n\r"), Ok(None));
    }

    #[test]
    fn errors() {
        let cases: Vec<(&[u8], Error)> = vec![
            (b"A: b\r\n c\r\n\r\n", Error::CgiObsFold { line: 2 }),
            (b"A: b\r\nnocolon\r\n\r\n", Error::CgiMissingColon { line: 2 }),
            (b"Bad Name: x\n\n", Error::CgiBadHeaderName { line: 1 }),
            (b": x\n\n", Error::CgiBadHeaderName { line: 1 }),
            (b"A: b\rc\n\n", Error::CgiBadHeaderValue { line: 1 }),
            (b"A: b\0\n\n", Error::CgiBadHeaderValue { line: 1 }),
            (b"Status: 20\n\n", Error::CgiBadStatus { line: 1, value: "20".into() }),
            (b"Status: 2000\n\n", Error::CgiBadStatus { line: 1, value: "2000".into() }),
            (b"Status: 099 x\n\n", Error::CgiBadStatus { line: 1, value: "099 x".into() }),
            (b"Status: abc\n\n", Error::CgiBadStatus { line: 1, value: "abc".into() }),
            (b"Status: 200\nStatus: 201\n\n", Error::CgiDuplicateHeader { line: 2, name: "Status" }),
            (b"Content-Length: 1x\n\n", Error::CgiBadContentLength { line: 1, value: "1x".into() }),
            (b"Content-Length: \n\n", Error::CgiBadContentLength { line: 1, value: "".into() }),
            (
                b"Content-Length: 1\ncontent-length: 1\n\n",
                Error::CgiDuplicateHeader { line: 2, name: "Content-Length" },
            ),
            (b"Location: /a\nLocation: /b\n\n", Error::CgiDuplicateHeader { line: 2, name: "Location" }),
            (b"Content-Type: a\nContent-type: b\n\n", Error::CgiDuplicateHeader { line: 2, name: "Content-Type" }),
        ];
        for (raw, want) in cases {
            assert_eq!(parse(raw), Err(want), "{}", crate::error::show(raw));
        }
    }

    #[test]
    fn size_limit() {
        let long = vec![b'a'; 100];
        assert_eq!(parse_response_head(&long, 100), Err(Error::CgiHeadTooLarge { limit: 100 }));
        assert_eq!(parse_response_head(&long, 101), Ok(None));
        let raw = b"Status: 200\r\n\r\n";
        assert_eq!(parse_response_head(raw, 14), Err(Error::CgiHeadTooLarge { limit: 14 }));
        assert!(parse_response_head(raw, 15).expect("ok").is_some());
    }

    #[test]
    fn http_facts() {
        assert!(is_token(b"X-Custom_1"));
        assert!(!is_token(b""));
        assert!(!is_token(b"Bad Name"));
        assert!(!is_token(b"a:b"));
        assert!(is_hop_by_hop(b"Transfer-Encoding"));
        assert!(is_hop_by_hop(b"KEEP-ALIVE"));
        assert!(!is_hop_by_hop(b"Content-Length"));
        assert_eq!(reason_phrase(404), Some("Not Found"));
        assert_eq!(reason_phrase(413), Some("Content Too Large"));
        assert_eq!(reason_phrase(299), None);
    }
}
