//! The SCGI request decoder; body bytes must never exceed CONTENT_LENGTH.
#![no_main]
use libfuzzer_sys::fuzz_target;

// Each target uses one of the functions.
#[allow(dead_code)]
#[path = "../harness.rs"]
mod harness;

fuzz_target!(|data: &[u8]| harness::scgi(data));
