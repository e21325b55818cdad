//! The application-side decoder: arbitrary bytes, fed in pieces whose size the first byte picks.
#![no_main]
use libfuzzer_sys::fuzz_target;

// Each target uses one of the functions.
#[allow(dead_code)]
#[path = "../harness.rs"]
mod harness;

fuzz_target!(|data: &[u8]| harness::server(data));
