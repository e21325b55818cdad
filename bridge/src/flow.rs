//! The two ends of a request as the web server sees it: where its body comes from and
//! where its response goes. Listeners implement them, dispatch/request_body_limits.rs wraps them,
//! and the exchange with a worker (backend/exchange.rs) drives them; this module depends
//! on none of those.
use bytes::Bytes;
use std::future::Future;

/// The web server went away (disconnect or ABORT_REQUEST).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FrontGone;

/// How a response ends toward the web server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum End {
    /// The response is complete (FastCGI: END_REQUEST).
    Complete,
    /// The response was cut off: the web server must see a truncated response, so the
    /// connection is closed without ending the request normally.
    CutOff,
}

/// Where the request body comes from.
pub(crate) trait BodySource: Send {
    /// A chunk available without waiting: `Some(Some(chunk))`, `Some(None)` at the end of
    /// the body, `None` when the next chunk has not arrived yet.
    fn ready(&mut self) -> Option<Option<Bytes>>;
    /// The next chunk; `Ok(None)` at the end of the body.
    fn next_chunk(&mut self) -> impl Future<Output = Result<Option<Bytes>, FrontGone>> + Send;
    /// Resolves when the web server aborts the request or disconnects. Only called once
    /// the body has been read to its end (or while no body has been read yet).
    fn aborted(&mut self) -> impl Future<Output = ()> + Send;
    /// The request stops waiting before a worker (one took it): what the listener charged
    /// against `header-memory` for its headers and read-ahead body is given back
    /// (listen/limits.rs).
    fn release_charge(&mut self) {}
}

/// A request without a body, from nobody who can go away (the bridge's own requests).
pub(crate) struct NoBody;

impl BodySource for NoBody {
    fn ready(&mut self) -> Option<Option<Bytes>> {
        Some(None)
    }
    async fn next_chunk(&mut self) -> Result<Option<Bytes>, FrontGone> {
        Ok(None)
    }
    async fn aborted(&mut self) {
        std::future::pending::<()>().await;
    }
}

/// Where the response goes: CGI-style bytes (header block, then body).
pub(crate) trait ResponseSink: Send {
    fn send(&mut self, data: Bytes, end: Option<End>) -> impl Future<Output = Result<(), FrontGone>> + Send;

    /// Whether the bridge itself ended the request toward the front (a request body limit
    /// tripped: dispatch/request_body_limits.rs), so that its abort in the worker is not the
    /// client's going away; the bridge logged why.
    fn answered_by_bridge(&self) -> bool {
        false
    }
}
