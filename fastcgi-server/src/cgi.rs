//! CGI response headers (RFC 3875 section 6) as a worker writes them on STDOUT.
use crate::Error;
use bytes::Bytes;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResponseHead {
    /// From `Status:`; `None` when the header was absent.
    pub status: Option<u16>,
    pub reason: Option<Bytes>,
    pub location: Option<Bytes>,
    pub content_type: Option<Bytes>,
    pub content_length: Option<u64>,
    /// Every header other than Status, in order, names as sent.
    pub headers: Vec<(Bytes, Bytes)>,
}

/// Parse a header block from the start of `buf`. `Ok(None)`: incomplete (and below `max_len`).
/// On success also returns how many bytes the block took (including the blank line).
pub fn parse_response_head(buf: &[u8], max_len: usize) -> Result<Option<(ResponseHead, usize)>, Error> {
    let _ = (buf, max_len);
    todo!()
}
