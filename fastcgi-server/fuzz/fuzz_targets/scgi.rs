//! The SCGI request decoder; body bytes must never exceed CONTENT_LENGTH.
#![no_main]
use fastcgi_server::scgi::{ScgiDecoder, ScgiEvent};
use fastcgi_server::Limits;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&cut, input)) = data.split_first() else { return };
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
        assert!(body <= n);
    }
});
