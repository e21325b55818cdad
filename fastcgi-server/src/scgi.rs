//! SCGI: a netstring of NUL-separated headers (CONTENT_LENGTH first), then the body.
//!
//! `70:CONTENT_LENGTH\027\0SCGI\01\0REQUEST_METHOD\0POST\0...,` followed by exactly
//! CONTENT_LENGTH body bytes. `SCGI=1` is not required: nginx omits it unless `scgi_params` is
//! included. A repeated name keeps its last value (nginx repeats overridden params), except
//! CONTENT_LENGTH, whose repetition is refused because it would make the body length ambiguous.
use bytes::{BufMut, Bytes, BytesMut};

use crate::content_length::{self, ContentLengthError};
use crate::search::find_byte;
use crate::{params::Params, Error, Limits};

#[derive(Debug, Clone, PartialEq, Eq)]
/// What an SCGI request yields, in this order.
pub enum ScgiEvent {
    /// The header netstring, parsed; CONTENT_LENGTH is also among `params`.
    Headers { params: Params, content_length: u64 },
    /// Body bytes as they arrive, never past CONTENT_LENGTH.
    Body(Bytes),
    /// CONTENT_LENGTH bytes have been delivered (at once if it is 0).
    BodyEnd,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    Headers,
    Body { remaining: u64 },
    Done,
}

/// Digits allowed in a netstring length or CONTENT_LENGTH (u64 has 20).
const MAX_DIGITS: usize = 20;

/// Decodes one SCGI request: the header netstring, then CONTENT_LENGTH body bytes.
pub struct ScgiDecoder {
    buf: BytesMut,
    limits: Limits,
    stage: Stage,
}

impl ScgiDecoder {
    /// A decoder waiting for the header netstring.
    pub fn new(limits: Limits) -> Self {
        Self { buf: BytesMut::new(), limits, stage: Stage::Headers }
    }
    /// Append received bytes.
    pub fn feed(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }
    /// The receive buffer, for reading from a socket straight into it.
    pub fn buffer_mut(&mut self) -> &mut BytesMut {
        &mut self.buf
    }
    /// Whether `BodyEnd` has been returned: the request is fully read.
    pub fn is_done(&self) -> bool {
        self.stage == Stage::Done
    }
    /// Body bytes still to come, once the headers are parsed.
    pub fn body_remaining(&self) -> Option<u64> {
        match self.stage {
            Stage::Body { remaining } => Some(remaining),
            Stage::Done => Some(0),
            Stage::Headers => None,
        }
    }
    /// Body bytes beyond CONTENT_LENGTH are never returned.
    pub fn next_event(&mut self) -> Result<Option<ScgiEvent>, Error> {
        match self.stage {
            Stage::Headers => {
                let Some((params, content_length)) = self.headers()? else {
                    return Ok(None);
                };
                self.stage = Stage::Body { remaining: content_length };
                Ok(Some(ScgiEvent::Headers { params, content_length }))
            }
            Stage::Body { remaining: 0 } => {
                self.stage = Stage::Done;
                Ok(Some(ScgiEvent::BodyEnd))
            }
            Stage::Body { remaining } => {
                if self.buf.is_empty() {
                    return Ok(None);
                }
                let n = usize::try_from(remaining).unwrap_or(usize::MAX).min(self.buf.len());
                self.stage = Stage::Body { remaining: remaining - n as u64 };
                Ok(Some(ScgiEvent::Body(self.buf.split_to(n).freeze())))
            }
            Stage::Done => Ok(None),
        }
    }

    fn headers(&mut self) -> Result<Option<(Params, u64)>, Error> {
        let limit = self.limits.max_params_bytes;
        let mut len: u64 = 0;
        let mut colon = None;
        for (i, &c) in self.buf.iter().enumerate() {
            match c {
                b'0'..=b'9' if i < MAX_DIGITS => {
                    len = len * 10 + u64::from(c - b'0');
                    if len > limit as u64 {
                        return Err(Error::ScgiHeadersTooLarge { len, limit });
                    }
                }
                b':' if i > 0 => {
                    colon = Some(i);
                    break;
                }
                _ => return Err(Error::ScgiBadLength { byte: c, offset: i }),
            }
        }
        let Some(colon) = colon else { return Ok(None) };
        // `len` is at most `limit`, a usize.
        let len = len as usize;
        let total = colon + 1 + len + 1;
        if self.buf.len() < total {
            self.buf.reserve(total - self.buf.len());
            return Ok(None);
        }
        let comma = self.buf[total - 1];
        if comma != b',' {
            return Err(Error::ScgiMissingComma { found: comma });
        }
        let block = self.buf.split_to(total).freeze().slice(colon + 1..total - 1);
        parse_block(block, &self.limits).map(Some)
    }
}

/// The strings of a header netstring, checked, into params and the body length.
fn parse_block(block: Bytes, limits: &Limits) -> Result<(Params, u64), Error> {
    if block.last() != Some(&0) {
        return Err(if block.is_empty() { Error::ScgiMissingContentLength } else { Error::ScgiUnterminatedString });
    }
    let mut params = Params::over_block(block.clone(), block.len() / 24 + 1);
    let mut pos = 0;
    let mut content_length = None;
    while pos < block.len() {
        // The block ends with NUL, so every name is terminated; a value may be missing.
        let name_end = pos + find_byte(0, &block[pos..]).unwrap_or(block.len() - pos);
        let value_start = name_end + 1;
        let Some(v) = find_byte(0, &block[value_start..]) else {
            return Err(Error::ScgiOddStrings { count: params.len() * 2 + 1 });
        };
        let value_end = value_start + v;
        let (nl, vl) = (name_end - pos, value_end - value_start);
        if nl > limits.max_name_len {
            return Err(Error::ScgiNameTooLong { len: nl, limit: limits.max_name_len });
        }
        if vl > limits.max_value_len {
            return Err(Error::ScgiValueTooLong { len: vl, limit: limits.max_value_len });
        }
        if &block[pos..name_end] == b"CONTENT_LENGTH" {
            if content_length.is_some() {
                return Err(Error::ScgiDuplicateContentLength);
            }
            let value = &block[value_start..value_end];
            content_length = Some(content_length::parse(value).map_err(|e| match e {
                ContentLengthError::NotDecimal { value } => Error::ScgiBadContentLength { value },
                ContentLengthError::TooLarge { value } => Error::ScgiContentLengthTooLarge { value },
            })?);
        } else if pos == 0 {
            return Err(Error::ScgiMissingContentLength);
        }
        params.push_block_pair(pos..name_end, value_start..value_end);
        pos = value_end + 1;
    }
    params.dedup_last_wins();
    // The loop ran at least once (the block is non-empty) and its first name was CONTENT_LENGTH.
    let content_length = content_length.ok_or(Error::ScgiMissingContentLength)?;
    Ok((params, content_length))
}

impl std::fmt::Debug for ScgiDecoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScgiDecoder")
            .field("buffered", &self.buf.len())
            .field("stage", &self.stage)
            .finish_non_exhaustive()
    }
}

fn put_decimal(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; MAX_DIGITS];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

/// The request netstring; CONTENT_LENGTH is written first and SCGI=1 added. The body follows separately.
///
/// Pairs named CONTENT_LENGTH or SCGI are skipped: those two are always written from the
/// arguments, so the netstring never carries two of them.
pub fn write_request<'a>(
    out: &mut impl BufMut,
    content_length: u64,
    pairs: impl IntoIterator<Item = (&'a [u8], &'a [u8])>,
) {
    let mut body = Vec::with_capacity(1024);
    body.extend_from_slice(b"CONTENT_LENGTH\0");
    put_decimal(&mut body, content_length);
    body.extend_from_slice(b"\0SCGI\x001\0");
    for (n, v) in pairs {
        if n == b"CONTENT_LENGTH" || n == b"SCGI" {
            continue;
        }
        body.extend_from_slice(n);
        body.push(0);
        body.extend_from_slice(v);
        body.push(0);
    }
    let mut len = Vec::with_capacity(MAX_DIGITS + 1);
    put_decimal(&mut len, body.len() as u64);
    len.push(b':');
    out.put_slice(&len);
    out.put_slice(&body);
    out.put_u8(b',');
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::show;

    /// A netstring around `content`, closed by `end`.
    fn ns(content: &[u8], end: &[u8]) -> Vec<u8> {
        let mut v = format!("{}:", content.len()).into_bytes();
        v.extend_from_slice(content);
        v.extend_from_slice(end);
        v
    }

    fn decode_all(input: &[u8], limits: Limits) -> Result<Vec<ScgiEvent>, Error> {
        let mut d = ScgiDecoder::new(limits);
        d.feed(input);
        let mut v = Vec::new();
        while let Some(e) = d.next_event()? {
            v.push(e);
        }
        Ok(v)
    }

    #[test]
    fn nginx_style_without_scgi_1() {
        let raw = ns(b"CONTENT_LENGTH\x005\0REQUEST_METHOD\0POST\0", b",helloEXTRA");
        let ev = decode_all(&raw, Limits::default()).expect("ok");
        assert_eq!(ev.len(), 3);
        match &ev[0] {
            ScgiEvent::Headers { params, content_length: 5 } => {
                assert_eq!(params.get(b"REQUEST_METHOD"), Some(&b"POST"[..]));
                assert_eq!(params.get(b"CONTENT_LENGTH"), Some(&b"5"[..]));
                assert_eq!(params.get(b"SCGI"), None);
            }
            e => panic!("{e:?}"),
        }
        assert_eq!(ev[1], ScgiEvent::Body(Bytes::from_static(b"hello")));
        assert_eq!(ev[2], ScgiEvent::BodyEnd);
    }

    #[test]
    fn zero_length_body_ends_at_once_and_byte_at_a_time() {
        let mut raw = Vec::new();
        write_request(&mut raw, 0, [(&b"A"[..], &b"1"[..]), (b"CONTENT_LENGTH", b"999"), (b"SCGI", b"2")]);
        assert_eq!(&raw[..], b"28:CONTENT_LENGTH\x000\0SCGI\x001\0A\x001\0,");
        let mut d = ScgiDecoder::new(Limits::default());
        let mut ev = Vec::new();
        for &c in &raw {
            d.feed(&[c]);
            while let Some(e) = d.next_event().expect("ok") {
                ev.push(e);
            }
        }
        assert_eq!(ev.len(), 2);
        assert_eq!(ev[1], ScgiEvent::BodyEnd);
        assert!(d.is_done());
        assert_eq!(d.body_remaining(), Some(0));
    }

    #[test]
    fn body_in_pieces_never_exceeds_content_length() {
        let mut raw = Vec::new();
        write_request(&mut raw, 10, []);
        let mut d = ScgiDecoder::new(Limits::default());
        d.feed(&raw);
        assert!(matches!(d.next_event(), Ok(Some(ScgiEvent::Headers { content_length: 10, .. }))));
        assert_eq!(d.next_event(), Ok(None));
        d.feed(b"0123");
        assert_eq!(d.next_event(), Ok(Some(ScgiEvent::Body(Bytes::from_static(b"0123")))));
        assert_eq!(d.body_remaining(), Some(6));
        d.feed(b"456789abc");
        assert_eq!(d.next_event(), Ok(Some(ScgiEvent::Body(Bytes::from_static(b"456789")))));
        assert_eq!(d.next_event(), Ok(Some(ScgiEvent::BodyEnd)));
        assert_eq!(d.next_event(), Ok(None));
        assert_eq!(&d.buffer_mut()[..], b"abc");
    }

    #[test]
    fn repeated_name_last_wins() {
        let raw = ns(b"CONTENT_LENGTH\x000\0X\x001\0Y\x002\0X\x003\0", b",");
        let ev = decode_all(&raw, Limits::default()).expect("ok");
        match &ev[0] {
            ScgiEvent::Headers { params, .. } => {
                assert_eq!(params.get(b"X"), Some(&b"3"[..]));
                assert_eq!(params.len(), 3);
            }
            e => panic!("{e:?}"),
        }
    }

    #[test]
    fn errors() {
        let l = Limits::default();
        let cases: Vec<(Vec<u8>, Error)> = vec![
            (b"1a:".to_vec(), Error::ScgiBadLength { byte: b'a', offset: 1 }),
            (b":".to_vec(), Error::ScgiBadLength { byte: b':', offset: 0 }),
            (b"-1:".to_vec(), Error::ScgiBadLength { byte: b'-', offset: 0 }),
            (b"000000000000000000000000".to_vec(), Error::ScgiBadLength { byte: b'0', offset: 20 }),
            (b"99999999:".to_vec(), Error::ScgiHeadersTooLarge { len: 9999999, limit: 1 << 20 }),
            (ns(b"CONTENT_LENGTH\x000\0", b";"), Error::ScgiMissingComma { found: b';' }),
            (ns(b"CONTENT_LENGTH\x000", b","), Error::ScgiUnterminatedString),
            (ns(b"CONTENT_LENGTH\x000\0X\0", b","), Error::ScgiOddStrings { count: 3 }),
            (ns(b"", b","), Error::ScgiMissingContentLength),
            (ns(b"A\x001\0\0\0", b","), Error::ScgiMissingContentLength),
            (ns(b"CONTENT_LENGTH\x00x\0", b","), Error::ScgiBadContentLength { value: "x".into() }),
            (ns(b"CONTENT_LENGTH\x00\0", b","), Error::ScgiBadContentLength { value: "".into() }),
            (ns(b"CONTENT_LENGTH\x001\0CONTENT_LENGTH\x002\0", b","), Error::ScgiDuplicateContentLength),
        ];
        for (raw, want) in cases {
            assert_eq!(decode_all(&raw, l.clone()), Err(want.clone()), "{:?}", show(&raw));
        }
        let small = Limits { max_name_len: 3, max_value_len: 2, ..Limits::default() };
        assert_eq!(
            decode_all(&ns(b"CONTENT_LENGTH\x000\0ABCD\0\0", b","), small.clone()),
            Err(Error::ScgiNameTooLong { len: 14, limit: 3 })
        );
        let small = Limits { max_name_len: 100, ..small };
        assert_eq!(
            decode_all(&ns(b"CONTENT_LENGTH\x00123\0", b","), small),
            Err(Error::ScgiValueTooLong { len: 3, limit: 2 })
        );
    }

    /// A CONTENT_LENGTH made of digits but beyond u64 says so, instead of "not a decimal
    /// number"; anything else that is not plain digits is still "not a decimal number".
    #[test]
    fn content_length_values() {
        let with = |v: &[u8]| {
            let mut c = b"CONTENT_LENGTH\0".to_vec();
            c.extend_from_slice(v);
            c.extend_from_slice(b"\0");
            decode_all(&ns(&c, b","), Limits::default())
        };
        for big in [&b"18446744073709551616"[..], b"99999999999999999999", b"1180591620717411303424"] {
            let e = with(big).unwrap_err();
            assert_eq!(e, Error::ScgiContentLengthTooLarge { value: String::from_utf8_lossy(big).into_owned() });
            let msg = e.to_string();
            assert!(msg.contains("exceeds 18446744073709551615"), "{msg}");
            assert!(!msg.contains("decimal"), "{msg}");
        }
        for bad in [&b"abc"[..], b"+5", b" 5", b"0x10", b"-1"] {
            assert_eq!(with(bad), Err(Error::ScgiBadContentLength { value: show(bad) }), "{bad:?}");
        }
        match &with(b"18446744073709551615").expect("u64::MAX is a length")[0] {
            ScgiEvent::Headers { content_length, .. } => assert_eq!(*content_length, u64::MAX),
            e => panic!("{e:?}"),
        }
    }
}
