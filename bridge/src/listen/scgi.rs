//! An SCGI connection: one request (a netstring of headers, then CONTENT_LENGTH bytes of
//! body), one response, close. The response is a CGI response ("Status: ..." header
//! block and body), which is what SCGI clients expect.
//!
//! The request runs in the connection's own task: the body is read from the socket while
//! the response is written to it, both through the exchange's concurrent pump.
use super::ListenerCtx;
use crate::backend::exchange::{BodySource, End, FrontGone, ResponseSink};
use crate::dispatch::serve::serve;
use bytes::{Bytes, BytesMut};
use fastcgi_server::scgi::{ScgiDecoder, ScgiEvent};
use fastcgi_server::Role;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// A client that sends no complete header netstring within this time is dropped.
const HEADER_TIMEOUT: Duration = Duration::from_secs(60);

/// Serve one SCGI connection.
pub async fn serve_connection<R, W>(mut rd: R, wr: W, ctx: Arc<ListenerCtx>, peer: String, sock: super::Sock)
where
    R: AsyncRead + Unpin + Send + 'static,
    W: super::WriteHalf,
{
    let mut decoder = ScgiDecoder::new(ctx.limits.clone());
    let read_headers = async {
        loop {
            match decoder.next_event() {
                Ok(Some(ScgiEvent::Headers { params, .. })) => return Ok(Some(params)),
                Ok(Some(_)) => return Err("body before headers".to_owned()),
                Ok(None) => {}
                Err(e) => return Err(e.to_string()),
            }
            let buf = decoder.buffer_mut();
            buf.reserve(8192);
            match rd.read_buf(buf).await {
                Ok(0) => {
                    let got = decoder.buffer_mut().len();
                    if got > 0 {
                        return Err(format!("connection closed before the header netstring was complete ({got} bytes received)"));
                    }
                    return Ok(None);
                }
                Ok(_) => {}
                Err(e) => return Err(e.to_string()),
            }
        }
    };
    let params = match tokio::time::timeout(HEADER_TIMEOUT, read_headers).await {
        Ok(Ok(Some(p))) => p,
        Ok(Ok(None)) => return,
        Ok(Err(e)) => {
            if crate::logging::ratelimit::allow(&crate::logging::ratelimit::SCGI_PROTOCOL, &ctx.name) {
                tracing::warn!(listener = %ctx.name, peer, "SCGI protocol error, closing the connection: {e}");
            }
            return;
        }
        Err(_) => {
            tracing::warn!(listener = %ctx.name, peer, "no complete SCGI request within {HEADER_TIMEOUT:?}, closing the connection");
            return;
        }
    };
    let mut source = ScgiBody { decoder, rd, ended: false, listener: ctx.name.clone(), peer };
    let mut sink = ScgiSink { wr, cut_off: false };
    serve(&ctx, params, Role::Responder, &mut source, &mut sink).await;
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

struct ScgiBody<R> {
    decoder: ScgiDecoder,
    rd: R,
    ended: bool,
    listener: String,
    peer: String,
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
                // EOF before CONTENT_LENGTH bytes: the client went away mid-upload.
                Ok(0) | Err(_) => return Err(FrontGone),
                Ok(_) => {}
            }
        }
    }

    async fn aborted(&mut self) {
        if !self.ended {
            // The body is still being read by the pump (or not yet): a disconnect shows
            // up there.
            return std::future::pending().await;
        }
        // After the body the client sends nothing more; EOF means it went away.
        let mut scratch = BytesMut::with_capacity(512);
        loop {
            scratch.clear();
            match self.rd.read_buf(&mut scratch).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    }
}

struct ScgiSink<W> {
    wr: W,
    cut_off: bool,
}

impl<W: AsyncWrite + Unpin + Send> ResponseSink for ScgiSink<W> {
    async fn send(&mut self, data: Bytes, end: Option<End>) -> Result<(), FrontGone> {
        if !data.is_empty() {
            self.wr.write_all(&data).await.map_err(|_| FrontGone)?;
        }
        if end == Some(End::CutOff) {
            self.cut_off = true;
        }
        Ok(())
    }
}
