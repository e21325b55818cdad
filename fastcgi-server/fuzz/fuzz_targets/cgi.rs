//! The CGI response-head parser; a parsed head never claims more bytes than it was given.
#![no_main]
use fastcgi_server::cgi::parse_response_head;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let max = data.len().saturating_sub(3).max(1);
    if let Ok(Some((_, used))) = parse_response_head(data, max) {
        assert!(used <= data.len() && used <= max);
    }
});
