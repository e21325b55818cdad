//! What a response asks the bridge to send: a Range header's byte ranges and the parts they
//! merge into, lighttpd's X-Sendfile2, a percent-encoded path.
#![no_main]
use libfuzzer_sys::fuzz_target;

// Each target uses one of the functions.
#[allow(dead_code)]
#[path = "../harness.rs"]
mod harness;

fuzz_target!(|data: &[u8]| harness::http(data));
