//! Sans-IO FastCGI 1.0 and SCGI, for both ends of the connection.
//!
//! Bytes in (`feed`, or read a socket straight into `buffer_mut`), typed events out
//! (`next_event`); encoders write into any [`bytes::BufMut`] the caller owns. There are no
//! sockets, no timers and no runtime here, so the same code serves the bridge's tokio listeners,
//! its connections to the workers, and the blocking threads of the Python worker.
//!
//! # The pieces
//! - [`server::ServerConnection`]: the application side. Decodes what a web server sends
//!   (BEGIN_REQUEST, PARAMS, STDIN, DATA, ABORT_REQUEST, GET_VALUES, unknown management types);
//!   `server::write_*` encode the replies.
//! - [`client::ClientConnection`]: the web-server side. `client::write_*` encode requests; the
//!   connection decodes STDOUT, STDERR, END_REQUEST, GET_VALUES_RESULT and UNKNOWN_TYPE.
//! - [`scgi::ScgiDecoder`] and [`scgi::write_request`]: SCGI.
//! - [`cgi::parse_response_head`]: the CGI header block at the start of a worker's STDOUT.
//! - [`content_length::parse`]: CONTENT_LENGTH as a body length, strictly decimal.
//! - [`path::request_path`] and [`path::mount`]: the request's path and the SCRIPT_NAME /
//!   PATH_INFO split an app sees.
//! - [`range::parse`] and [`range::coalesce`]: a `Range` header's byte ranges, and the parts
//!   a response sends for them.
//! - [`redirect::is_local`] and [`redirect::apply`]: a CGI local redirect, and the request
//!   it becomes.
//! - [`sendfile2::parse`]: lighttpd's `X-Sendfile2` response header, the files and ranges an
//!   app hands over.
//! - [`Limits`]: every bound on what a peer can make us hold; exceeding one is a typed [`Error`].
//! - With the `tokio` feature, `fastcgi_server::tokio` reads from an `AsyncRead` into a decoder
//!   until its next event; nothing else depends on a runtime.
//!
//! # The state machine (application side)
//! A connection is a sequence of records. Each complete record yields at most one event; a
//! record that is not complete yet yields `Ok(None)` and waits in the buffer. Per request id:
//!
//! ```text
//!              BEGIN_REQUEST(role, KEEP_CONN)          -> BeginRequest
//!   active:    PARAMS with content  (buffered, a pair may straddle records)
//!              empty PARAMS                            -> Params (the whole stream, once)
//!              STDIN / DATA with content               -> Stdin / Data (zero-copy slices)
//!              empty STDIN / DATA                      -> StdinEnd / DataEnd
//!              ABORT_REQUEST                           -> Abort; the id is released
//!   input complete (RESPONDER: PARAMS+STDIN, AUTHORIZER: PARAMS, FILTER: PARAMS+STDIN+DATA):
//!   later records skipped, but ABORT_REQUEST still reported until the caller answers;
//!   released on ABORT_REQUEST or by `ServerConnection::end_request`.
//! ```
//!
//! Records for ids that are not active are skipped (FastCGI 1.0, section 3.3). An unknown role
//! still yields `BeginRequest` with [`Role::Unknown`], so the caller can answer
//! `END_REQUEST(UNKNOWN_ROLE)`. The reply is the caller's: STDOUT data, then
//! [`server::write_end_request`] (empty STDOUT, END_REQUEST).
//!
//! ```
//! use fastcgi_server::{client, server, Limits, ProtocolStatus, Role};
//! use fastcgi_server::record::Padding;
//! use fastcgi_server::server::{ServerConnection, ServerEvent};
//!
//! // What a web server sends (built here with the client-side encoders).
//! let mut wire = Vec::new();
//! client::write_begin_request(&mut wire, 1, Role::Responder, false);
//! client::write_params(&mut wire, 1, [(&b"REQUEST_METHOD"[..], &b"GET"[..])]);
//! client::write_stdin_end(&mut wire, 1);
//!
//! let mut conn = ServerConnection::new(Limits::default());
//! let mut out = Vec::new();
//! // Bytes may arrive in any pieces; here, two.
//! for piece in wire.chunks(20) {
//!     conn.feed(piece);
//!     while let Some(event) = conn.next_event().expect("well-formed input") {
//!         match event {
//!             ServerEvent::Params { id, params } => {
//!                 assert_eq!(params.get(b"REQUEST_METHOD"), Some(&b"GET"[..]));
//!                 server::write_stdout(&mut out, id, b"Status: 200 OK\r\n\r\nhi", Padding::Align8);
//!             }
//!             ServerEvent::StdinEnd { id } => {
//!                 server::write_end_request(&mut out, id, 0, ProtocolStatus::RequestComplete, Padding::Align8);
//!             }
//!             _ => {}
//!         }
//!     }
//! }
//! assert_eq!(out.len(), 8 + 24 + 8 + 16);
//! ```
//!
//! # Errors
//! Every malformed input is an [`Error`] naming the request and the limit involved; nothing
//! here panics on input, and every buffer is bounded: one record (at most 65535 + 255 + 8
//! bytes) beyond what the caller feeds, plus each active request's PARAMS up to
//! [`Limits::max_params_bytes`].
#![forbid(unsafe_code)]
#![warn(missing_debug_implementations)]
#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod cgi;
pub mod client;
pub mod content_length;
mod error;
mod limits;
pub mod params;
pub mod path;
pub mod range;
pub mod record;
pub mod redirect;
pub mod scgi;
mod search;
pub mod sendfile2;
pub mod server;
#[cfg(feature = "tokio")]
pub mod tokio;

pub use error::Error;
pub use limits::Limits;
pub use params::Params;
pub use record::{ProtocolStatus, RecordType, Role};

/// Compiles the README's examples as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
