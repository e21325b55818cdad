/// Everything that can be wrong with bytes received from a peer.
///
/// Messages name the request id and, for limits, the size and the limit's value, because they
/// end up in an operator's log; they name no Rust item: the variant says which
/// [`crate::Limits`] field was passed, so that a caller can name its own setting for it. After
/// an error the offending record (or SCGI header) has been consumed; [`Error::is_fatal`] tells
/// whether the byte stream can still be trusted.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    #[error("unsupported FastCGI version {0} (only 1 exists){hint}", hint = version_hint(*.0))]
    BadVersion(u8),
    /// Past `Limits::max_params_bytes`; `len`: the bytes received so far (more may follow).
    #[error("request {request_id}: PARAMS of at least {len} bytes exceed the limit of {limit} bytes")]
    ParamsTooLarge { request_id: u16, len: usize, limit: usize },
    /// Past `Limits::max_params_bytes_per_connection`.
    #[error("request {request_id}: PARAMS of the requests open on this connection reach {held} bytes, above the limit of {limit} bytes per connection")]
    ConnectionParamsTooLarge { request_id: u16, held: usize, limit: usize },
    /// Kept for callers that report their own framing problems; the decoders here use the
    /// precise variants below.
    #[error("malformed: {0}")]
    Malformed(&'static str),

    // ---- FastCGI name-value pairs ----
    /// Past `Limits::max_name_len`.
    #[error("request {request_id}: a parameter name of {len} bytes exceeds the limit of {limit} bytes")]
    NameTooLong { request_id: u16, len: usize, limit: usize },
    /// Past `Limits::max_value_len`.
    #[error("request {request_id}: a parameter value of {len} bytes exceeds the limit of {limit} bytes")]
    ValueTooLong { request_id: u16, len: usize, limit: usize },
    /// Past `Limits::max_params_records`.
    #[error("request {request_id}: more than {limit} PARAMS records")]
    TooManyParamsRecords { request_id: u16, limit: usize },
    #[error("request {request_id}: {record_type} ends inside a name-value pair ({pending} bytes of an incomplete pair left)")]
    TruncatedPair { request_id: u16, record_type: &'static str, pending: usize },

    // ---- FastCGI records ----
    #[error("request {request_id}: FCGI_BEGIN_REQUEST body is {len} bytes, expected 8")]
    BadBeginRequestBody { request_id: u16, len: usize },
    #[error("request {request_id}: FCGI_END_REQUEST body is {len} bytes, expected 8")]
    BadEndRequestBody { request_id: u16, len: usize },
    #[error("FCGI_UNKNOWN_TYPE body is {len} bytes, expected 8")]
    BadUnknownTypeBody { len: usize },
    #[error("request {request_id}: FCGI_BEGIN_REQUEST for a request id that is still active")]
    DuplicateRequestId { request_id: u16 },
    /// Past `Limits::max_concurrent_requests`.
    #[error("request {request_id}: refused, {limit} requests are already active on this connection")]
    TooManyRequests { request_id: u16, limit: usize },
    #[error("request {request_id}: unexpected {name} record (type {record_type}) from the {peer}")]
    UnexpectedRecord { request_id: u16, record_type: u8, name: &'static str, peer: &'static str },
    #[error("request {request_id}: {name} record after that stream's empty end record")]
    RecordAfterStreamEnd { request_id: u16, name: &'static str },
    #[error("request {request_id}: {name} record before the end of its FCGI_PARAMS (the empty PARAMS record)")]
    InputBeforeParams { request_id: u16, name: &'static str },
    /// Never-begun ids are told apart from ended ones, whose late records the spec says to skip.
    #[error("request {request_id}: {name} record for a request that never began (no FCGI_BEGIN_REQUEST for this id on this connection)")]
    RecordWithoutBegin { request_id: u16, name: &'static str },
    #[error("request {request_id}: record type {record_type} is not a FastCGI record type (1 to 11)")]
    UnknownRecordType { request_id: u16, record_type: u8 },

    // ---- SCGI ----
    #[error("SCGI: netstring length is not a decimal number (byte {byte:#04x} at offset {offset})")]
    ScgiBadLength { byte: u8, offset: usize },
    /// Past `Limits::max_params_bytes`; `len`: the length's digits read so far (more may follow).
    #[error("SCGI: header netstring of at least {len} bytes exceeds the limit of {limit} bytes")]
    ScgiHeadersTooLarge { len: u64, limit: usize },
    #[error("SCGI: header netstring is not followed by ',' (found byte {found:#04x})")]
    ScgiMissingComma { found: u8 },
    #[error("SCGI: header netstring does not end with a NUL-terminated string")]
    ScgiUnterminatedString,
    #[error("SCGI: header netstring holds an odd number of strings ({count}); a name lacks its value")]
    ScgiOddStrings { count: usize },
    #[error("SCGI: the first header is not CONTENT_LENGTH")]
    ScgiMissingContentLength,
    #[error("SCGI: CONTENT_LENGTH {value:?} is not a decimal number")]
    ScgiBadContentLength { value: String },
    #[error("SCGI: CONTENT_LENGTH {value} exceeds {max}, the largest body length", max = u64::MAX)]
    ScgiContentLengthTooLarge { value: String },
    #[error("SCGI: CONTENT_LENGTH appears more than once")]
    ScgiDuplicateContentLength,
    /// Past `Limits::max_name_len`.
    #[error("SCGI: a header name of {len} bytes exceeds the limit of {limit} bytes")]
    ScgiNameTooLong { len: usize, limit: usize },
    /// Past `Limits::max_value_len`.
    #[error("SCGI: a header value of {len} bytes exceeds the limit of {limit} bytes")]
    ScgiValueTooLong { len: usize, limit: usize },

    // ---- CGI response head ----
    /// Past `Limits::max_header_block`.
    #[error("CGI response: no end of the header block within {limit} bytes")]
    CgiHeadTooLarge { limit: usize },
    #[error("CGI response: header line {line} has no ':'")]
    CgiMissingColon { line: usize },
    #[error("CGI response: header line {line} is a continuation line (obsolete line folding is not accepted)")]
    CgiObsFold { line: usize },
    #[error("CGI response: header line {line} has an invalid name")]
    CgiBadHeaderName { line: usize },
    #[error("CGI response: header line {line} has a control character in its value")]
    CgiBadHeaderValue { line: usize },
    #[error("CGI response: header line {line}: invalid Status {value:?} (want three digits and an optional reason)")]
    CgiBadStatus { line: usize, value: String },
    #[error("CGI response: header line {line}: invalid Content-Length {value:?}")]
    CgiBadContentLength { line: usize, value: String },
    #[error("CGI response: header line {line}: second {name} header")]
    CgiDuplicateHeader { line: usize, name: &'static str },
}

/// What a first byte that is no FastCGI version says about the peer: the protocol it was
/// set to speak instead (the usual slip when moving from uWSGI or from a proxy).
fn version_hint(first: u8) -> &'static str {
    match first {
        // A uwsgi packet starts with its modifier1, 0 for WSGI requests.
        0 => "; the peer speaks the uwsgi protocol, not FastCGI (nginx: uwsgi_pass where fastcgi_pass belongs?)",
        // "GET ", "POST", "HTTP/1.1 200": a request or a response line.
        b'A'..=b'Z' => "; the peer speaks HTTP, not FastCGI (nginx: proxy_pass where fastcgi_pass belongs?)",
        _ => "",
    }
}

impl Error {
    /// Whether the connection must be closed: the byte stream can no longer be parsed, or the
    /// peer broke the protocol. Non-fatal errors concern one request, which the caller can end
    /// (for example with END_REQUEST and `OVERLOADED`, or an HTTP error for headers past a
    /// limit) while the connection carries on: the request's later records are skipped.
    pub fn is_fatal(&self) -> bool {
        !(matches!(self, Self::TooManyRequests { .. }) || self.is_header_limit())
    }

    /// Whether one request's headers (FastCGI PARAMS) passed a limit of [`crate::Limits`]:
    /// `max_params_bytes`, `max_name_len`, `max_value_len` or `max_params_records`. The
    /// request is dropped; the connection is sound (an HTTP 431 is the usual answer).
    pub fn is_header_limit(&self) -> bool {
        matches!(
            self,
            Self::ParamsTooLarge { .. }
                | Self::NameTooLong { .. }
                | Self::ValueTooLong { .. }
                | Self::TooManyParamsRecords { .. }
        )
    }

    /// The FastCGI request the error concerns, if any.
    pub fn request_id(&self) -> Option<u16> {
        match *self {
            Self::ParamsTooLarge { request_id, .. }
            | Self::ConnectionParamsTooLarge { request_id, .. }
            | Self::NameTooLong { request_id, .. }
            | Self::ValueTooLong { request_id, .. }
            | Self::TooManyParamsRecords { request_id, .. }
            | Self::TruncatedPair { request_id, .. }
            | Self::BadBeginRequestBody { request_id, .. }
            | Self::BadEndRequestBody { request_id, .. }
            | Self::DuplicateRequestId { request_id }
            | Self::TooManyRequests { request_id, .. }
            | Self::UnexpectedRecord { request_id, .. }
            | Self::RecordAfterStreamEnd { request_id, .. }
            | Self::InputBeforeParams { request_id, .. }
            | Self::RecordWithoutBegin { request_id, .. }
            | Self::UnknownRecordType { request_id, .. } => Some(request_id),
            _ => None,
        }
    }
}

/// Bytes for an error message: printable ASCII kept, the rest escaped, at most 64 bytes shown.
pub(crate) fn show(b: &[u8]) -> String {
    let mut s = String::new();
    for &c in b.iter().take(64) {
        s.extend(std::ascii::escape_default(c).map(char::from));
    }
    if b.len() > 64 {
        s.push_str("...");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every variant's message carries what an operator needs: the request and the limit.
    #[test]
    fn messages_name_request_and_limit() {
        let cases: Vec<(Error, &[&str])> = vec![
            (Error::BadVersion(2), &["version 2"]),
            (Error::BadVersion(0), &["version 0", "uwsgi protocol", "fastcgi_pass"]),
            (Error::BadVersion(b'G'), &["version 71", "speaks HTTP", "fastcgi_pass"]),
            (
                Error::ParamsTooLarge { request_id: 7, len: 12, limit: 10 },
                &["request 7", "at least 12 bytes", "limit of 10 bytes"],
            ),
            (Error::Malformed("x"), &["malformed: x"]),
            (Error::NameTooLong { request_id: 3, len: 5, limit: 4 }, &["request 3", "5 bytes", "limit of 4 bytes"]),
            (Error::ValueTooLong { request_id: 3, len: 9, limit: 8 }, &["request 3", "9 bytes", "limit of 8 bytes"]),
            (Error::TooManyParamsRecords { request_id: 9, limit: 2 }, &["request 9", "2 PARAMS"]),
            (
                Error::TruncatedPair { request_id: 1, record_type: "FCGI_PARAMS", pending: 4 },
                &["request 1", "FCGI_PARAMS", "4 bytes"],
            ),
            (Error::BadBeginRequestBody { request_id: 1, len: 3 }, &["request 1", "3 bytes"]),
            (Error::BadEndRequestBody { request_id: 2, len: 4 }, &["request 2", "4 bytes"]),
            (Error::BadUnknownTypeBody { len: 1 }, &["1 bytes"]),
            (Error::DuplicateRequestId { request_id: 1 }, &["request 1", "still active"]),
            (Error::TooManyRequests { request_id: 3, limit: 2 }, &["request 3", "2 requests"]),
            (
                Error::UnexpectedRecord { request_id: 1, record_type: 6, name: "FCGI_STDOUT", peer: "web server" },
                &["request 1", "FCGI_STDOUT", "type 6", "web server"],
            ),
            (Error::RecordAfterStreamEnd { request_id: 1, name: "FCGI_STDIN" }, &["request 1", "FCGI_STDIN"]),
            (
                Error::RecordWithoutBegin { request_id: 5, name: "FCGI_PARAMS" },
                &["request 5", "FCGI_PARAMS", "never began"],
            ),
            (
                Error::UnknownRecordType { request_id: 1, record_type: 0 },
                &["request 1", "record type 0", "not a FastCGI record type"],
            ),
            (Error::ScgiBadLength { byte: b'a', offset: 1 }, &["0x61", "offset 1"]),
            (Error::ScgiHeadersTooLarge { len: 99, limit: 9 }, &["at least 99 bytes", "limit of 9 bytes"]),
            (Error::ScgiMissingComma { found: b';' }, &["','", "0x3b"]),
            (Error::ScgiUnterminatedString, &["NUL"]),
            (Error::ScgiOddStrings { count: 3 }, &["(3)"]),
            (Error::ScgiMissingContentLength, &["CONTENT_LENGTH"]),
            (Error::ScgiBadContentLength { value: "x".into() }, &["\"x\""]),
            (
                Error::ScgiContentLengthTooLarge { value: "99999999999999999999".into() },
                &["CONTENT_LENGTH 99999999999999999999 exceeds 18446744073709551615", "largest body length"],
            ),
            (Error::ScgiDuplicateContentLength, &["more than once"]),
            (Error::ScgiNameTooLong { len: 5, limit: 4 }, &["5 bytes", "limit of 4 bytes"]),
            (Error::ScgiValueTooLong { len: 5, limit: 4 }, &["5 bytes", "limit of 4 bytes"]),
            (Error::CgiHeadTooLarge { limit: 100 }, &["100 bytes"]),
            (Error::CgiMissingColon { line: 2 }, &["line 2", "':'"]),
            (Error::CgiObsFold { line: 2 }, &["line 2", "continuation"]),
            (Error::CgiBadHeaderName { line: 1 }, &["line 1", "name"]),
            (Error::CgiBadHeaderValue { line: 1 }, &["line 1", "control"]),
            (Error::CgiBadStatus { line: 1, value: "20".into() }, &["line 1", "\"20\""]),
            (Error::CgiBadContentLength { line: 1, value: "1x".into() }, &["line 1", "\"1x\""]),
            (Error::CgiDuplicateHeader { line: 2, name: "Status" }, &["line 2", "Status"]),
        ];
        for (e, want) in cases {
            let msg = e.to_string();
            for w in want {
                assert!(msg.contains(w), "{msg:?} lacks {w:?}");
            }
            // An operator reads these: no Rust item names.
            assert!(!msg.contains("Limits::") && !msg.contains("max_"), "{msg:?}");
            let per_request = matches!(
                e,
                Error::TooManyRequests { .. }
                    | Error::ParamsTooLarge { .. }
                    | Error::NameTooLong { .. }
                    | Error::ValueTooLong { .. }
                    | Error::TooManyParamsRecords { .. }
            );
            assert_eq!(e.is_fatal(), !per_request, "{msg:?}");
        }
        assert_eq!(Error::ParamsTooLarge { request_id: 7, len: 2, limit: 1 }.request_id(), Some(7));
        assert_eq!(Error::ScgiDuplicateContentLength.request_id(), None);
        assert_eq!(Error::RecordWithoutBegin { request_id: 9, name: "FCGI_STDIN" }.request_id(), Some(9));
        assert_eq!(Error::UnknownRecordType { request_id: 4, record_type: 0 }.request_id(), Some(4));
    }

    #[test]
    fn show_escapes_and_truncates() {
        assert_eq!(show(b"a\0\xff"), "a\\x00\\xff");
        assert_eq!(show(&[b'x'; 70]).len(), 64 + 3);
    }
}
