//! API SKELETON — being implemented (issue 2). Signatures are the contract that
//! bridge/ and workers/ code against; bodies are filled in by the protocol work.
//!
//! Sans-IO FastCGI 1.0 and SCGI. Bytes in (`feed` or `buffer_mut`), typed events
//! out (`next_event`); encoders write into any `bytes::BufMut` the caller owns.

pub mod cgi;
pub mod client;
mod error;
mod limits;
pub mod params;
pub mod record;
pub mod scgi;
pub mod server;

pub use error::Error;
pub use limits::Limits;
pub use params::Params;
pub use record::{ProtocolStatus, RecordType, Role};
