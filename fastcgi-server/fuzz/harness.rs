//! What each fuzz target does with one input, shared by the cargo-fuzz targets in
//! `fuzz_targets/` and by `tests/fuzz_corpus.rs`, which replays the kept corpus on stable
//! `cargo test`. Living in one file keeps the two from drifting, and the test build makes a
//! change to the crate's API break here at once instead of only in the next fuzz run.
//!
//! For `server`, `client` and `scgi` the first byte of an input picks how the rest is cut into
//! `feed` calls, so splits at every offset get exercised.

use fastcgi_server::cgi::parse_response_head;
use fastcgi_server::client::ClientConnection;
use fastcgi_server::scgi::{ScgiDecoder, ScgiEvent};
use fastcgi_server::server::ServerConnection;
use fastcgi_server::Limits;
use fastcgi_server::{path, range, sendfile2};

/// Limits small enough for short inputs to reach every limit error.
fn small_limits() -> Limits {
    Limits {
        max_params_bytes: 512,
        max_name_len: 64,
        max_value_len: 256,
        max_params_records: 8,
        max_concurrent_requests: 4,
        max_params_bytes_per_connection: 1024,
        max_header_block: 512,
    }
}

/// The application-side decoder; the top bit of the first byte picks small limits (to reach the
/// limit errors) or the default ones (to reach deep parsing).
pub fn server(data: &[u8]) {
    let Some((&cut, input)) = data.split_first() else {
        return;
    };
    let limits = if cut & 0x80 != 0 { small_limits() } else { Limits::default() };
    let mut conn = ServerConnection::new(limits);
    for piece in input.chunks(usize::from(cut & 0x7f).max(1)) {
        conn.feed(piece);
        loop {
            match conn.next_event() {
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(e) if e.is_fatal() => return,
                Err(_) => {}
            }
        }
    }
}

/// The web-server-side decoder of application replies.
pub fn client(data: &[u8]) {
    let Some((&cut, input)) = data.split_first() else {
        return;
    };
    let mut conn = ClientConnection::new(Limits::default());
    for piece in input.chunks(usize::from(cut).max(1)) {
        conn.feed(piece);
        loop {
            match conn.next_event() {
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(e) if e.is_fatal() => return,
                Err(_) => {}
            }
        }
    }
}

/// The SCGI request decoder; body bytes must add up to CONTENT_LENGTH, never more.
pub fn scgi(data: &[u8]) {
    let Some((&cut, input)) = data.split_first() else {
        return;
    };
    let mut d = ScgiDecoder::new(Limits::default());
    let mut declared = None;
    let mut body = 0u64;
    for piece in input.chunks(usize::from(cut).max(1)) {
        d.feed(piece);
        loop {
            match d.next_event() {
                Ok(Some(ScgiEvent::Headers { content_length, .. })) => declared = Some(content_length),
                Ok(Some(ScgiEvent::Body(b))) => body += b.len() as u64,
                Ok(Some(ScgiEvent::BodyEnd)) => assert_eq!(Some(body), declared),
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
    if let Some(n) = declared {
        assert!(body <= n, "{body} body bytes for CONTENT_LENGTH {n}");
    }
}

/// The CGI response-head parser; a parsed head never claims more bytes than it was given.
pub fn cgi(data: &[u8]) {
    let max = data.len().saturating_sub(3).max(1);
    if let Ok(Some((_, used))) = parse_response_head(data, max) {
        assert!(used <= data.len() && used <= max, "head of {used} bytes from {} (max {max})", data.len());
    }
}

/// The parsers of what a response asks the bridge to send: the first byte picks one.
pub fn http(data: &[u8]) {
    let Some((&pick, input)) = data.split_first() else {
        return;
    };
    match pick % 3 {
        0 => ranges(input),
        1 => {
            for p in sendfile2::parse(input).unwrap_or_default() {
                assert!(p.end.is_none_or(|e| e.saturating_add(1) >= p.start), "{p:?}");
                assert!(p.path.len() <= input.len(), "{p:?}");
            }
        }
        _ => assert!(path::percent_decode(input).len() <= input.len()),
    }
}

/// A Range header against a length (eight bytes, shifted right by the ninth's low six bits,
/// so that small lengths come up as often as large ones): every range lies in the
/// representation, and the merged parts are sorted, further apart than the gap, and cover
/// every range with no byte that none of them named beyond the gaps.
fn ranges(input: &[u8]) {
    const GAP: u64 = 80;
    let Some((head, value)) = input.split_first_chunk::<9>() else {
        return;
    };
    let len = u64::from_le_bytes(head[..8].try_into().unwrap_or_default()) >> (head[8] & 63);
    let Some(parsed) = range::parse(value, len) else {
        return;
    };
    for &(s, e) in &parsed {
        assert!(s <= e && e < len, "({s}, {e}) of {len}");
    }
    let merged = range::coalesce(parsed.clone(), GAP);
    assert!(merged.len() <= parsed.len());
    for w in merged.windows(2) {
        assert!(w[1].0 > w[0].1.saturating_add(GAP).saturating_add(1), "{merged:?}");
    }
    for &(s, e) in &parsed {
        assert!(merged.iter().any(|&(ms, me)| ms <= s && e <= me), "({s}, {e}) not in {merged:?}");
    }
    for &(ms, me) in &merged {
        assert!(parsed.iter().any(|&(s, _)| s == ms) && parsed.iter().any(|&(_, e)| e == me), "{merged:?}");
    }
}
