//! The web-server-side decoder of application replies.
#![no_main]
use fastcgi_server::client::ClientConnection;
use fastcgi_server::Limits;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&cut, input)) = data.split_first() else { return };
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
});
