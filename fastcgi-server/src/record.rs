//! Record framing (FastCGI 1.0, section 3).
//!
//! Every FastCGI message is a record: an 8-byte header (version, type, request id, content
//! length, padding length), up to 65535 bytes of content, then up to 255 bytes of padding that
//! the receiver skips. This module knows the numbers; [`crate::server`] and [`crate::client`]
//! know what the records mean.
use crate::Error;
use bytes::{Buf, BufMut, Bytes, BytesMut};

/// The only FastCGI version.
pub const VERSION_1: u8 = 1;
/// Bytes in a record header.
pub const HEADER_LEN: usize = 8;
/// Most content one record carries.
pub const MAX_CONTENT_LEN: usize = 65535;
/// Request id 0 carries management records (GET_VALUES, UNKNOWN_TYPE).
pub const MANAGEMENT_ID: u16 = 0;
/// BEGIN_REQUEST flag: keep the connection open after the request.
pub const FCGI_KEEP_CONN: u8 = 1;
/// A record header with version 0, which no FastCGI client accepts: written by an
/// application before it closes a connection whose response was cut off, where EOF alone
/// would read as the response's normal end (a web server that does not keep connections).
pub const INVALID_RECORD: [u8; HEADER_LEN] = [0, 6, 0, 0, 0, 0, 0, 0];
/// Longest record on the wire: header, maximal content, maximal padding.
pub const MAX_RECORD_LEN: usize = HEADER_LEN + MAX_CONTENT_LEN + 255;

/// GET_VALUES variable: how many transport connections the application accepts.
pub const FCGI_MAX_CONNS: &[u8] = b"FCGI_MAX_CONNS";
/// GET_VALUES variable: how many concurrent requests the application accepts.
pub const FCGI_MAX_REQS: &[u8] = b"FCGI_MAX_REQS";
/// GET_VALUES variable: "1" when the application multiplexes requests on one connection.
pub const FCGI_MPXS_CONNS: &[u8] = b"FCGI_MPXS_CONNS";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
/// The record types of FastCGI 1.0 (section 8).
pub enum RecordType {
    /// FCGI_BEGIN_REQUEST (1)
    BeginRequest,
    /// FCGI_ABORT_REQUEST (2)
    AbortRequest,
    /// FCGI_END_REQUEST (3)
    EndRequest,
    /// FCGI_PARAMS (4)
    Params,
    /// FCGI_STDIN (5)
    Stdin,
    /// FCGI_STDOUT (6)
    Stdout,
    /// FCGI_STDERR (7)
    Stderr,
    /// FCGI_DATA (8)
    Data,
    /// FCGI_GET_VALUES (9)
    GetValues,
    /// FCGI_GET_VALUES_RESULT (10)
    GetValuesResult,
    /// FCGI_UNKNOWN_TYPE (11)
    UnknownType,
    /// A type this crate does not know.
    Other(u8),
}

impl RecordType {
    /// The type for a wire value; values outside 1..=11 become [`RecordType::Other`].
    pub const fn from_u8(n: u8) -> Self {
        match n {
            1 => Self::BeginRequest,
            2 => Self::AbortRequest,
            3 => Self::EndRequest,
            4 => Self::Params,
            5 => Self::Stdin,
            6 => Self::Stdout,
            7 => Self::Stderr,
            8 => Self::Data,
            9 => Self::GetValues,
            10 => Self::GetValuesResult,
            11 => Self::UnknownType,
            n => Self::Other(n),
        }
    }

    /// The wire value.
    pub const fn as_u8(self) -> u8 {
        match self {
            Self::BeginRequest => 1,
            Self::AbortRequest => 2,
            Self::EndRequest => 3,
            Self::Params => 4,
            Self::Stdin => 5,
            Self::Stdout => 6,
            Self::Stderr => 7,
            Self::Data => 8,
            Self::GetValues => 9,
            Self::GetValuesResult => 10,
            Self::UnknownType => 11,
            Self::Other(n) => n,
        }
    }

    /// The spec's name (`FCGI_STDIN`, ...), for log messages.
    pub const fn name(self) -> &'static str {
        match self {
            Self::BeginRequest => "FCGI_BEGIN_REQUEST",
            Self::AbortRequest => "FCGI_ABORT_REQUEST",
            Self::EndRequest => "FCGI_END_REQUEST",
            Self::Params => "FCGI_PARAMS",
            Self::Stdin => "FCGI_STDIN",
            Self::Stdout => "FCGI_STDOUT",
            Self::Stderr => "FCGI_STDERR",
            Self::Data => "FCGI_DATA",
            Self::GetValues => "FCGI_GET_VALUES",
            Self::GetValuesResult => "FCGI_GET_VALUES_RESULT",
            Self::UnknownType => "FCGI_UNKNOWN_TYPE",
            Self::Other(_) => "unknown record type",
        }
    }
}

impl From<u8> for RecordType {
    fn from(n: u8) -> Self {
        Self::from_u8(n)
    }
}

impl From<RecordType> for u8 {
    fn from(t: RecordType) -> Self {
        t.as_u8()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
/// The role a BEGIN_REQUEST asks the application to play.
pub enum Role {
    /// FCGI_RESPONDER (1): an ordinary request.
    Responder,
    /// FCGI_AUTHORIZER (2): allow or deny; PARAMS only.
    Authorizer,
    /// FCGI_FILTER (3): also receives a file on DATA.
    Filter,
    /// Any other value; answer END_REQUEST with `UnknownRole`.
    Unknown(u16),
}

impl Role {
    /// The role for a wire value; unknown values are kept so the caller can answer UNKNOWN_ROLE.
    pub const fn from_u16(n: u16) -> Self {
        match n {
            1 => Self::Responder,
            2 => Self::Authorizer,
            3 => Self::Filter,
            n => Self::Unknown(n),
        }
    }

    /// The wire value.
    pub const fn as_u16(self) -> u16 {
        match self {
            Self::Responder => 1,
            Self::Authorizer => 2,
            Self::Filter => 3,
            Self::Unknown(n) => n,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
/// The protocol status of END_REQUEST.
pub enum ProtocolStatus {
    /// FCGI_REQUEST_COMPLETE (0)
    RequestComplete,
    /// FCGI_CANT_MPX_CONN (1): the application does not multiplex.
    CantMpxConn,
    /// FCGI_OVERLOADED (2): out of some resource.
    Overloaded,
    /// FCGI_UNKNOWN_ROLE (3)
    UnknownRole,
    /// Any other value.
    Other(u8),
}

impl ProtocolStatus {
    /// The status for a wire value.
    pub const fn from_u8(n: u8) -> Self {
        match n {
            0 => Self::RequestComplete,
            1 => Self::CantMpxConn,
            2 => Self::Overloaded,
            3 => Self::UnknownRole,
            n => Self::Other(n),
        }
    }

    /// The wire value.
    pub const fn as_u8(self) -> u8 {
        match self {
            Self::RequestComplete => 0,
            Self::CantMpxConn => 1,
            Self::Overloaded => 2,
            Self::UnknownRole => 3,
            Self::Other(n) => n,
        }
    }
}

/// Whether encoders pad record content to a multiple of 8 bytes (the spec recommends it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Padding {
    #[default]
    /// No padding.
    None,
    /// Pad content to a multiple of 8 bytes.
    Align8,
}

impl Padding {
    /// Padding bytes to add after `content_len` bytes of content.
    pub const fn len_for(self, content_len: usize) -> usize {
        match self {
            Self::None => 0,
            Self::Align8 => (8 - (content_len & 7)) & 7,
        }
    }
}

/// A decoded record header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Must be 1 ([`VERSION_1`]).
    pub version: u8,
    /// What the content means.
    pub record_type: RecordType,
    /// 0 for management records.
    pub request_id: u16,
    /// Content bytes after the header.
    pub content_length: u16,
    /// Bytes to skip after the content.
    pub padding_length: u8,
}

impl Header {
    /// Decode the 8 header bytes (the version is not checked here).
    pub const fn parse(b: &[u8; HEADER_LEN]) -> Self {
        Self {
            version: b[0],
            record_type: RecordType::from_u8(b[1]),
            request_id: u16::from_be_bytes([b[2], b[3]]),
            content_length: u16::from_be_bytes([b[4], b[5]]),
            padding_length: b[6],
        }
    }

    /// Decode the header at the start of `buf`, `None` when fewer than 8 bytes are there.
    pub fn peek(buf: &[u8]) -> Option<Self> {
        let b: &[u8; HEADER_LEN] = buf.get(..HEADER_LEN)?.try_into().ok()?;
        Some(Self::parse(b))
    }

    /// The 8 header bytes.
    pub const fn to_bytes(&self) -> [u8; HEADER_LEN] {
        let id = self.request_id.to_be_bytes();
        let len = self.content_length.to_be_bytes();
        [self.version, self.record_type.as_u8(), id[0], id[1], len[0], len[1], self.padding_length, 0]
    }

    /// Header, content and padding together.
    pub const fn record_len(&self) -> usize {
        HEADER_LEN + self.content_length as usize + self.padding_length as usize
    }
}

/// Frames records out of received bytes: the part of decoding that both sides share.
#[derive(Debug, Default)]
pub(crate) struct RecordReader {
    pub(crate) buf: BytesMut,
    /// Set when the byte stream can no longer be framed; every later call returns it.
    pub(crate) broken: Option<Error>,
}

impl RecordReader {
    /// The next complete record's header and content (padding skipped), `Ok(None)` when more
    /// bytes are needed. A bad version breaks the stream for good: after it no record
    /// boundary can be trusted.
    pub(crate) fn next_record(&mut self) -> Result<Option<(Header, Bytes)>, Error> {
        if let Some(e) = &self.broken {
            return Err(e.clone());
        }
        let Some(h) = Header::peek(&self.buf) else {
            return Ok(None);
        };
        if h.version != VERSION_1 {
            let e = Error::BadVersion(h.version);
            self.broken = Some(e.clone());
            return Err(e);
        }
        let total = h.record_len();
        if self.buf.len() < total {
            self.buf.reserve(total - self.buf.len());
            return Ok(None);
        }
        self.buf.advance(HEADER_LEN);
        let content = match h.content_length {
            0 => Bytes::new(),
            len => self.buf.split_to(len as usize).freeze(),
        };
        self.buf.advance(h.padding_length as usize);
        Ok(Some((h, content)))
    }
}

const ZEROS: [u8; 256] = [0; 256];

/// Write one record; `content.len()` must be ≤ [`MAX_CONTENT_LEN`].
///
/// Longer content is not truncated: it is written as several records of the same type, which is
/// what the stream types expect; for the fixed-body types the caller never has that much.
pub fn write_record(out: &mut impl BufMut, ty: RecordType, id: u16, content: &[u8], padding: Padding) {
    if content.len() <= MAX_CONTENT_LEN {
        write_one(out, ty, id, content, padding);
    } else {
        for chunk in content.chunks(MAX_CONTENT_LEN) {
            write_one(out, ty, id, chunk, padding);
        }
    }
}

#[inline]
fn write_one(out: &mut impl BufMut, ty: RecordType, id: u16, content: &[u8], padding: Padding) {
    let pad = padding.len_for(content.len());
    let header = Header {
        version: VERSION_1,
        record_type: ty,
        request_id: id,
        // Callers split before this point; content.len() <= 65535 here.
        content_length: content.len() as u16,
        padding_length: pad as u8,
    };
    out.put_slice(&header.to_bytes());
    out.put_slice(content);
    out.put_slice(&ZEROS[..pad]);
}

/// Write a record header alone (content follows from the caller).
pub(crate) fn write_header(out: &mut impl BufMut, ty: RecordType, id: u16, content_len: usize, pad: usize) {
    let header = Header {
        version: VERSION_1,
        record_type: ty,
        request_id: id,
        content_length: content_len as u16,
        padding_length: pad as u8,
    };
    out.put_slice(&header.to_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_type_round_trip() {
        for n in 0..=255u8 {
            assert_eq!(RecordType::from_u8(n).as_u8(), n);
        }
        assert_eq!(RecordType::from_u8(5), RecordType::Stdin);
        assert_eq!(RecordType::from_u8(12), RecordType::Other(12));
        assert_eq!(u8::from(RecordType::UnknownType), 11);
    }

    #[test]
    fn role_and_status_round_trip() {
        for n in [0u16, 1, 2, 3, 4, 65535] {
            assert_eq!(Role::from_u16(n).as_u16(), n);
        }
        assert_eq!(Role::from_u16(3), Role::Filter);
        for n in 0..=255u8 {
            assert_eq!(ProtocolStatus::from_u8(n).as_u8(), n);
        }
        assert_eq!(ProtocolStatus::from_u8(2), ProtocolStatus::Overloaded);
    }

    #[test]
    fn header_encode_decode() {
        let h = Header {
            version: 1,
            record_type: RecordType::Params,
            request_id: 0x1234,
            content_length: 0xabcd,
            padding_length: 3,
        };
        let b = h.to_bytes();
        assert_eq!(b, [1, 4, 0x12, 0x34, 0xab, 0xcd, 3, 0]);
        assert_eq!(Header::parse(&b), h);
        assert_eq!(Header::peek(&b[..7]), None);
        assert_eq!(h.record_len(), 8 + 0xabcd + 3);
    }

    #[test]
    fn write_record_with_and_without_padding() {
        let mut out = Vec::new();
        write_record(&mut out, RecordType::Stdout, 1, b"hello", Padding::None);
        assert_eq!(out, b"\x01\x06\x00\x01\x00\x05\x00\x00hello");
        out.clear();
        write_record(&mut out, RecordType::Stdout, 1, b"hello", Padding::Align8);
        assert_eq!(out, b"\x01\x06\x00\x01\x00\x05\x03\x00hello\0\0\0");
        out.clear();
        write_record(&mut out, RecordType::Stdout, 1, b"12345678", Padding::Align8);
        assert_eq!(out.len(), 16);
        out.clear();
        write_record(&mut out, RecordType::Stdin, 7, b"", Padding::Align8);
        assert_eq!(out, b"\x01\x05\x00\x07\x00\x00\x00\x00");
    }

    #[test]
    fn write_record_splits_oversized_content() {
        let content = vec![7u8; MAX_CONTENT_LEN + 10];
        let mut out = Vec::new();
        write_record(&mut out, RecordType::Stdout, 1, &content, Padding::None);
        assert_eq!(out.len(), 2 * HEADER_LEN + content.len());
        let h = Header::peek(&out).expect("header");
        assert_eq!(h.content_length as usize, MAX_CONTENT_LEN);
        let h2 = Header::peek(&out[h.record_len()..]).expect("header");
        assert_eq!(h2.content_length, 10);
    }
}
