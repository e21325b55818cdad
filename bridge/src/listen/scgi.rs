//! An SCGI connection: one request (a netstring of headers, then CONTENT_LENGTH bytes of
//! body), one response, close. The response is a CGI response ("Status: ..." header
//! block and body), which is what SCGI clients expect.
//!
//! The request runs in the connection's own task: the body is read from the socket while
//! the response is written to it, both through the exchange's concurrent pump.
use super::context::ListenerCtx;
use super::limits::{request_cost, HeaderCharge};
use crate::backend::exchange::FIRST_WRITE_BODY;
use crate::dispatch::serve::serve;
use crate::flow::{BodySource, End, FrontGone, ResponseSink};
use bytes::{Bytes, BytesMut};
use fastcgi_server::scgi::{ScgiDecoder, ScgiEvent};
use fastcgi_server::{Params, Role};
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};

/// Why the header netstring was not read.
enum HeadError {
    Protocol(String),
    /// Well framed, but its CONTENT_LENGTH is unusable: answered 400.
    BadLength(String),
    /// Headers past `max-params` (or a name past its limit): answered 431.
    TooLarge(String),
    Budget(super::limits::OverBudget),
}

/// Serve one SCGI connection.
pub(crate) async fn serve_connection<R, W>(rd: R, wr: W, ctx: Arc<ListenerCtx>, peer: String, sock: super::Sock)
where
    R: super::ReadHalf,
    W: super::WriteHalf,
{
    let mut decoder = ScgiDecoder::new(ctx.limits.clone());
    // A client that sends no complete header netstring within `header-timeout` is dropped.
    let header_timeout = ctx.header_timeout;
    let mut charge = HeaderCharge::new(ctx.registry.header_budget.clone());
    let read_headers = async {
        loop {
            match decoder.next_event() {
                Ok(Some(ScgiEvent::Headers { params, .. })) => {
                    charge.set(waiting_cost(&params, decoder.buffer_mut().len())).map_err(HeadError::Budget)?;
                    return Ok(Some(params));
                }
                Ok(Some(_)) => return Err(HeadError::Protocol("body before headers".to_owned())),
                Ok(None) => {}
                Err(e) if is_bad_length(&e) => return Err(HeadError::BadLength(e.to_string())),
                Err(e) if is_too_large(&e) => return Err(HeadError::TooLarge(too_large_message(&e))),
                Err(e) => return Err(HeadError::Protocol(e.to_string())),
            }
            charge.set(decoder.buffer_mut().len()).map_err(HeadError::Budget)?;
            match super::read_some(&rd, decoder.buffer_mut()).await {
                Ok(0) => {
                    let got = decoder.buffer_mut().len();
                    if got > 0 {
                        let e = format!(
                            "connection closed before the header netstring was complete ({got} bytes received)"
                        );
                        return Err(HeadError::Protocol(e));
                    }
                    return Ok(None);
                }
                Ok(_) => {}
                Err(e) => return Err(HeadError::Protocol(e.to_string())),
            }
        }
    };
    let params = match tokio::time::timeout(header_timeout, read_headers).await {
        Ok(Ok(Some(p))) => p,
        Ok(Ok(None)) => return,
        Ok(Err(HeadError::BadLength(e))) => {
            // A well-framed request with an unusable CONTENT_LENGTH: say so, like FastCGI.
            if ctx.registry.rate_limits.allow(&crate::logging::ratelimit::BAD_REQUEST, &ctx.name) {
                tracing::warn!(listener = %ctx.name, peer, "invalid SCGI request, answering 400: {e}");
            }
            return answer_and_close(rd, wr, 400, &ctx).await;
        }
        Ok(Err(HeadError::TooLarge(e))) => {
            if ctx.registry.rate_limits.allow(&crate::logging::ratelimit::HEADERS_TOO_LARGE, &ctx.name) {
                tracing::warn!(listener = %ctx.name, peer, "{e}, answering 431 Request Header Fields Too Large");
            }
            return answer_and_close(rd, wr, 431, &ctx).await;
        }
        Ok(Err(HeadError::Protocol(e))) => {
            if ctx.registry.rate_limits.allow(&crate::logging::ratelimit::SCGI_PROTOCOL, &ctx.name) {
                tracing::warn!(listener = %ctx.name, peer, "SCGI protocol error, closing the connection: {e}");
            }
            return;
        }
        Ok(Err(HeadError::Budget(e))) => {
            if ctx.registry.rate_limits.allow(&crate::logging::ratelimit::HEADER_MEMORY, &ctx.name) {
                tracing::warn!(listener = %ctx.name, peer, "{e}; closing the connection");
            }
            return;
        }
        Err(_) => {
            let held = decoder.buffer_mut().len();
            if ctx.registry.rate_limits.allow(&crate::logging::ratelimit::HEADER_TIMEOUT, &ctx.name) {
                tracing::warn!(listener = %ctx.name, peer, "no complete SCGI request headers within header-timeout ({header_timeout:?}; {held} bytes held), closing the connection");
            }
            return;
        }
    };
    let sink_peer = peer.clone();
    let mut source =
        ScgiBody { decoder, rd, ended: false, listener: ctx.name.clone(), peer, sock, charge: Some(charge) };
    let mut sink = ScgiSink { wr, cut_off: false, ctx: ctx.clone(), peer: sink_peer };
    // Boxed: inline, the request's future would size every connection's task, also while
    // it only waits for its headers.
    Box::pin(serve(&ctx, params, Role::Responder, &mut source, &mut sink)).await;
    // A request answered without a worker (a 503, an error page) still held its charge:
    // the request is over, and the lingering close below may take up to 30 s.
    source.release_charge();
    if sink.cut_off {
        // SCGI has no end marker: only a reset tells the web server the response failed.
        // (Over a unix socket there is no reset; the web server sees a short response.)
        if sock.tcp {
            sock.wait_until_read().await;
            super::reset_on_close(sock.fd);
            sink.wr.drop_without_fin();
        }
        return;
    }
    super::lingering_close(&mut source.rd, &mut sink.wr).await;
}

/// What a request whose headers are `params` holds until a worker takes it: its headers and
/// the body the bridge reads ahead of a worker (a known length up to 64 KiB; `buffered`
/// bytes of it are here). Charged whole once the headers are complete, so that a request
/// that would pass `header-memory` is refused then, as unfinished headers are.
fn waiting_cost(params: &Params, buffered: usize) -> usize {
    let ahead = fastcgi_server::content_length::declared(params)
        .ok()
        .flatten()
        .filter(|&n| n <= FIRST_WRITE_BODY as u64)
        .map_or(0, |n| n as usize);
    request_cost(params) + buffered.max(ahead)
}

/// Answer a request refused before it was read with the bridge's page for `status`, then
/// close, reading what the client still sends for a while (a reset would lose the answer).
async fn answer_and_close<R: super::ReadHalf, W: super::WriteHalf>(
    mut rd: R,
    mut wr: W,
    status: u16,
    ctx: &ListenerCtx,
) {
    ctx.count_refused(status);
    if super::write_within(&mut wr, &crate::respond::error_response(status, None), ctx.send_timeout).await.is_ok() {
        super::lingering_close(&mut rd, &mut wr).await;
    }
}

/// Header errors about their size, answered 431.
fn is_too_large(e: &fastcgi_server::Error) -> bool {
    use fastcgi_server::Error as E;
    matches!(e, E::ScgiHeadersTooLarge { .. } | E::ScgiNameTooLong { .. } | E::ScgiValueTooLong { .. })
}

/// What the log says of headers past a limit: the listener's key, when it is the one.
fn too_large_message(e: &fastcgi_server::Error) -> String {
    match e {
        // The bridge sets the netstring's limit and a value's to the listener's max-params.
        fastcgi_server::Error::ScgiHeadersTooLarge { len, limit } => format!(
            "request headers (SCGI netstring) of at least {len} bytes exceed the listener's max-params ({})",
            crate::config::units::SizeDisplay(*limit as u64)
        ),
        e => format!("request headers past a limit: {e}"),
    }
}

/// Header errors about CONTENT_LENGTH, answered 400: the netstring itself was sound.
fn is_bad_length(e: &fastcgi_server::Error) -> bool {
    use fastcgi_server::Error as E;
    matches!(
        e,
        E::ScgiBadContentLength { .. }
            | E::ScgiContentLengthTooLarge { .. }
            | E::ScgiDuplicateContentLength
            | E::ScgiMissingContentLength
    )
}

struct ScgiBody<R> {
    decoder: ScgiDecoder,
    rd: R,
    ended: bool,
    listener: String,
    peer: String,
    sock: super::Sock,
    /// The request's `header-memory` charge while it waits for a worker.
    charge: Option<HeaderCharge>,
}

impl<R: AsyncRead + Unpin + Send> ScgiBody<R> {
    fn decoded(&mut self) -> Result<Option<Option<Bytes>>, FrontGone> {
        match self.decoder.next_event() {
            Ok(Some(ScgiEvent::Body(b))) => Ok(Some(Some(b))),
            Ok(Some(ScgiEvent::BodyEnd)) => {
                self.ended = true;
                Ok(Some(None))
            }
            Ok(Some(ScgiEvent::Headers { .. })) | Ok(None) => Ok(None),
            Err(e) => {
                tracing::warn!(listener = %self.listener, peer = %self.peer, "SCGI request body: {e}");
                Err(FrontGone)
            }
        }
    }
}

impl<R: AsyncRead + Unpin + Send> BodySource for ScgiBody<R> {
    fn ready(&mut self) -> Option<Option<Bytes>> {
        if self.ended {
            return None;
        }
        self.decoded().ok().flatten()
    }

    async fn next_chunk(&mut self) -> Result<Option<Bytes>, FrontGone> {
        loop {
            if self.ended {
                return Ok(None);
            }
            if let Some(r) = self.decoded()? {
                return Ok(r);
            }
            let buf = self.decoder.buffer_mut();
            buf.reserve(32 << 10);
            match self.rd.read_buf(buf).await {
                Ok(0) => {
                    // Before CONTENT_LENGTH bytes: the client went away mid-upload (a
                    // half-close too, since the request can never be complete).
                    let missing = self.decoder.body_remaining().unwrap_or(0);
                    tracing::info!(listener = %self.listener, peer = %self.peer, "connection closed with {missing} bytes of the SCGI request body still to come; the request is aborted");
                    return Err(FrontGone);
                }
                Err(_) => return Err(FrontGone),
                Ok(_) => {}
            }
        }
    }

    fn release_charge(&mut self) {
        self.charge = None;
    }

    async fn aborted(&mut self) {
        if !self.ended {
            // The body is still being read by the pump (or not yet): a disconnect shows
            // up there.
            return std::future::pending().await;
        }
        // After the body the client sends nothing more. EOF is either a client that closed
        // (gone) or one that shut down its sending side and waits for the answer, as simple
        // SCGI clients do; only a unix socket tells them apart at once. Over TCP a client
        // that is gone shows up when the response is written.
        let mut scratch = BytesMut::with_capacity(512);
        loop {
            scratch.clear();
            match self.rd.read_buf(&mut scratch).await {
                Ok(0) if !self.sock.peer_closed() => return std::future::pending().await,
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    }
}

struct ScgiSink<W> {
    wr: W,
    cut_off: bool,
    /// For `send-timeout` and its log line.
    ctx: Arc<ListenerCtx>,
    peer: String,
}

impl<W: AsyncWrite + Unpin + Send> ResponseSink for ScgiSink<W> {
    async fn send(&mut self, data: Bytes, end: Option<End>) -> Result<(), FrontGone> {
        if !data.is_empty() {
            if let Err(e) = super::write_within(&mut self.wr, &data, self.ctx.send_timeout).await {
                if e.kind() == std::io::ErrorKind::TimedOut
                    && self.ctx.registry.rate_limits.allow(&crate::logging::ratelimit::SEND_TIMEOUT, &self.ctx.name)
                {
                    tracing::warn!(
                        listener = %self.ctx.name, peer = %self.peer,
                        "the client took no response bytes within send-timeout ({:?}), closing the connection; its request is abandoned",
                        self.ctx.send_timeout
                    );
                }
                return Err(FrontGone);
            }
        }
        if end == Some(End::CutOff) {
            self.cut_off = true;
        }
        Ok(())
    }
}
