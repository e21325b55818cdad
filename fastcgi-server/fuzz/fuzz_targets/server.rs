//! The application-side decoder: arbitrary bytes, fed in pieces whose size the first byte picks.
#![no_main]
use fastcgi_server::server::ServerConnection;
use fastcgi_server::Limits;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&cut, input)) = data.split_first() else { return };
    // Small limits reach the limit errors; the default ones reach deep parsing.
    let limits = if cut & 0x80 != 0 {
        Limits { max_params_bytes: 512, max_name_len: 64, max_value_len: 256, max_params_records: 8, max_concurrent_requests: 4, max_header_block: 512 }
    } else {
        Limits::default()
    };
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
});
