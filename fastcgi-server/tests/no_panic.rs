//! Every decoder over thousands of random inputs: errors are fine, panics and runaway buffers
//! are not. (The cargo-fuzz targets in `fuzz/` do the same guided by coverage: `scripts/fuzz`,
//! and `tests/fuzz_corpus.rs` replays their kept corpus.)
#![allow(clippy::unwrap_used)]

use fastcgi_server::cgi::parse_response_head;
use fastcgi_server::client::ClientConnection;
use fastcgi_server::scgi::ScgiDecoder;
use fastcgi_server::server::ServerConnection;
use fastcgi_server::Limits;
use proptest::collection::vec;
use proptest::prelude::*;

fn small_limits() -> Limits {
    Limits {
        max_params_bytes: 300,
        max_name_len: 40,
        max_value_len: 100,
        max_params_records: 8,
        max_concurrent_requests: 4,
        max_params_bytes_per_connection: 500,
        max_header_block: 200,
    }
}

/// Random bytes, or random record headers (version 1, a plausible type) with random content,
/// which gets much deeper into the state machines than uniform noise.
fn fastcgi_input() -> impl Strategy<Value = Vec<u8>> {
    let record = (0u8..14, 0u16..4, vec(any::<u8>(), 0..40), 0u8..10).prop_map(|(ty, id, content, pad)| {
        let mut r = vec![1, ty];
        r.extend_from_slice(&id.to_be_bytes());
        r.extend_from_slice(&(content.len() as u16).to_be_bytes());
        r.push(pad);
        r.push(0);
        r.extend_from_slice(&content);
        r.extend(std::iter::repeat_n(0, pad as usize));
        r
    });
    prop_oneof![vec(any::<u8>(), 0..300), vec(record, 0..12).prop_map(|rs| rs.concat()),]
}

/// Drive a decoder to the end of its input, continuing past non-fatal errors.
macro_rules! drain {
    ($conn:expr) => {{
        for _ in 0..10_000 {
            match $conn.next_event() {
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(e) if e.is_fatal() => break,
                Err(_) => {}
            }
        }
    }};
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 4000, ..ProptestConfig::default() })]

    #[test]
    fn server_never_panics(input in fastcgi_input(), cut in 1usize..50) {
        for limits in [Limits::default(), small_limits()] {
            let mut c = ServerConnection::new(limits);
            for piece in input.chunks(cut) {
                c.feed(piece);
                drain!(c);
            }
            prop_assert!(c.buffered() <= input.len());
        }
    }

    #[test]
    fn client_never_panics(input in fastcgi_input(), cut in 1usize..50) {
        for limits in [Limits::default(), small_limits()] {
            let mut c = ClientConnection::new(limits);
            for piece in input.chunks(cut) {
                c.feed(piece);
                drain!(c);
            }
        }
    }

    #[test]
    fn scgi_never_panics(input in prop_oneof![
        vec(any::<u8>(), 0..300),
        (vec(prop::sample::select(b"0123456789:,\0CONTENT_LENGTH".to_vec()), 0..300)),
        (0usize..60, vec(prop::sample::select(b"0123\0CONTENT_LENGTHAB".to_vec()), 0..60))
            .prop_map(|(n, s)| { let mut v = format!("{n}:").into_bytes(); v.extend(s); v.push(b','); v }),
    ]) {
        for limits in [Limits::default(), small_limits()] {
            let mut d = ScgiDecoder::new(limits);
            d.feed(&input);
            for _ in 0..1000 {
                match d.next_event() {
                    Ok(Some(_)) => {}
                    _ => break,
                }
            }
        }
    }

    #[test]
    fn cgi_never_panics(input in prop_oneof![
        vec(any::<u8>(), 0..300),
        vec(prop::sample::select(b"Status: 20OK\r\n:abcContent-Length 9".to_vec()), 0..300),
    ], max in 0usize..400) {
        let _ = parse_response_head(&input, max);
        for i in 0..input.len().min(40) {
            let _ = parse_response_head(&input[..i], max);
        }
    }
}
