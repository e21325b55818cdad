//! The CGI response-head parser; a parsed head never claims more bytes than it was given.
#![no_main]
use libfuzzer_sys::fuzz_target;

// Each target uses one of the functions.
#[allow(dead_code)]
#[path = "../harness.rs"]
mod harness;

fuzz_target!(|data: &[u8]| harness::cgi(data));
