//! A FastCGI connection from a web server: many requests (multiplexed or one after the
//! other on a kept connection), each served by its own task.
//!
//! This task owns the socket. It decodes records, hands each request's body to that
//! request's task through a bounded channel, and writes what the request tasks send
//! through one bounded channel shared by the connection. A full body channel pauses
//! reading from the web server (back-pressure) but never writing, so a request waiting
//! for its body to drain can still finish sending its response.
//!
//! A response cut off after its headers (the worker died, the app failed mid-stream)
//! must look truncated to the web server, which FastCGI can only say by closing the
//! connection without END_REQUEST: on a multiplexed connection that also ends the other
//! requests on it (HAProxy retries or fails them). Web servers other than HAProxy never
//! multiplex, so in practice only the failed request is affected.
use super::context::ListenerCtx;
use super::limits::{request_cost, HeaderCharge, OverBudget, RequestCharge};
use crate::dispatch::serve::serve;
use crate::flow::{BodySource, End, FrontGone, ResponseSink};
use bytes::{Bytes, BytesMut};
use fastcgi_server::content_length::ContentLengthError;
use fastcgi_server::record::Padding;
use fastcgi_server::server::{self, ServerConnection, ServerEvent};
use fastcgi_server::{Params, ProtocolStatus, Role};
use std::future::Future;
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

/// Responses in flight from request tasks to this connection's writer.
const OUT_QUEUE: usize = 32;
/// Body chunks in flight from this connection to one request task.
const BODY_QUEUE: usize = 8;
/// Body bytes collected before the request starts; beyond, it streams through the channel.
const BODY_PREFIX: usize = 64 << 10;
/// Write the batch once it grows this large even if more responses are queued.
const WRITE_BATCH: usize = 256 << 10;

/// What a request task sends to the connection.
struct Out {
    id: u16,
    data: Bytes,
    end: Option<End>,
}

enum Req {
    /// BEGIN_REQUEST seen; collecting PARAMS and the first body bytes. `begun`: when its
    /// first byte arrived, for `header-timeout` (None until the connection loop notes it).
    Starting { role: Role, params: Option<Params>, prefix: BytesMut, body_done: bool, begun: Option<Instant> },
    /// Its task is running. `charge`: what it holds against `header-memory` until a worker
    /// takes it; the body bytes sent to it until then are added.
    Running { body: Option<mpsc::Sender<Bytes>>, abort: Option<oneshot::Sender<()>>, charge: Arc<RequestCharge> },
}

/// The state of one web-server connection: its decoder, its requests and its write buffer.
struct FrontConn {
    ctx: Arc<ListenerCtx>,
    peer: String,
    reqs: Vec<(u16, Req)>,
    decoder: ServerConnection,
    /// The request tasks' way to this connection's writer, made at the first request: a
    /// connection that never sends one holds no channel.
    out: Option<(mpsc::Sender<Out>, mpsc::Receiver<Out>)>,
    /// Records for the web server; empty and unallocated while the connection is idle.
    wbuf: BytesMut,
    /// The last BEGIN_REQUEST asked to keep the connection.
    keep_conn: bool,
    /// A body chunk waiting for room in its request's channel.
    pending: Option<(mpsc::Sender<Bytes>, Bytes)>,
    /// One request is polled inside this connection's own task (see [`FrontConn::launch`]).
    inline: Option<RequestFuture>,
    /// When the bytes of a record arrived on a connection with no request, for
    /// `header-timeout`: the request they begin inherits it.
    idle_since: Option<Instant>,
    /// When the connection was accepted, until its first byte: a connection that never
    /// sends one is closed at `header-timeout`, as one that stops inside a record is.
    silent_since: Option<Instant>,
    /// Since when a kept connection has had no request and no bytes of one, for
    /// `keepalive-timeout`.
    kept_since: Option<Instant>,
    /// The last [`FrontConn::process`] consumed received bytes.
    consumed: bool,
    /// Unfinished headers held against the daemon's `header-memory`.
    charge: HeaderCharge,
    /// A request that would have taken the daemon past `header-memory` (its id): the
    /// connection closes, as for unfinished headers past it.
    over_budget: Option<(u16, OverBudget)>,
}

type RequestFuture = std::pin::Pin<Box<dyn Future<Output = ()> + Send>>;

impl Drop for FrontConn {
    fn drop(&mut self) {
        // The connection is going away with a request still running in it: let that
        // request finish on its own task, so it aborts its worker properly and hands the
        // slot back instead of dropping it mid-exchange.
        if let Some(fut) = self.inline.take() {
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(fut);
            }
        }
    }
}

/// Serve one FastCGI connection until the web server closes it.
pub(crate) async fn serve_connection<R, W>(mut rd: R, mut wr: W, ctx: Arc<ListenerCtx>, peer: String, sock: super::Sock)
where
    R: super::ReadHalf,
    W: super::WriteHalf,
{
    let mut stopping = ctx.stopping.clone();
    let mut watch_stop = true;
    // The web server shut down its sending side after complete requests: answer them, read no more.
    let mut eof = false;
    let mut conn = FrontConn::new(ctx, peer);
    loop {
        match conn.decode_and_send(&mut wr).await {
            Turn::Wait => {}
            Turn::Close => break,
            Turn::Leave => return,
        }
        // Shutting down: a kept connection closes as soon as it is idle, so that draining
        // is not kept busy by new requests on old connections.
        if *stopping.borrow() && conn.reqs.is_empty() && conn.inline.is_none() {
            break;
        }
        let pending_tx = conn.pending.as_ref().map(|(tx, _)| tx.clone());
        // Not while reading is paused for a full body channel: then the wait is ours.
        let header_deadline = conn.header_deadline().filter(|_| conn.pending.is_none());
        let keepalive_deadline = conn.keepalive_deadline();
        let turn = tokio::select! {
            biased;
            msg = recv_out(&mut conn.out) => {
                // Never None: `conn` holds a sender.
                let Some(msg) = msg else { return };
                match conn.write_out(msg) {
                    WriteNext::Continue => conn.send(&mut wr).await,
                    WriteNext::Close => {
                        if cut_off(&conn.wbuf, conn.keep_conn, &mut wr, sock, conn.ctx.send_timeout).await {
                            wr.drop_without_fin();
                        }
                        return;
                    }
                }
            }
            permit = reserve(pending_tx), if conn.pending.is_some() => {
                if let (Ok(permit), Some((_, chunk))) = (permit, conn.pending.take()) {
                    permit.send(chunk);
                }
                // A closed channel: the request no longer reads its body; drop the chunk.
                conn.pending = None;
                Turn::Wait
            }
            changed = stopping.changed(), if watch_stop && !*stopping.borrow() => {
                // No sender: nobody will ask this connection to stop.
                watch_stop = changed.is_ok();
                Turn::Wait
            }
            () = super::sleep_until(header_deadline), if header_deadline.is_some() => {
                conn.log_header_timeout();
                let _ = super::write_within(&mut wr, &conn.wbuf, conn.ctx.send_timeout).await;
                Turn::Leave
            }
            () = super::sleep_until(keepalive_deadline), if keepalive_deadline.is_some() => {
                tracing::debug!(listener = %conn.ctx.name, peer = %conn.peer,
                    "no request on a kept connection within keepalive-timeout ({:?}), closing it", conn.ctx.keepalive_timeout);
                Turn::Close
            }
            () = poll_inline(&mut conn.inline), if conn.inline.is_some() => {
                conn.inline = None;
                conn.answered()
            }
            n = super::read_some(&rd, conn.decoder.buffer_mut()), if conn.pending.is_none() && !eof => match n {
                Ok(0) if conn.answer_after_eof(sock) => {
                    tracing::debug!(listener = %conn.ctx.name, peer = %conn.peer, "the web server shut down its sending side after complete requests; answering them");
                    eof = true;
                    Turn::Wait
                }
                Ok(0) | Err(_) => {
                    // The web server closed (or reset) the connection: every request
                    // on it is abandoned. Dropping `conn` drops their abort senders.
                    conn.log_abandoned();
                    Turn::Leave
                }
                Ok(_) => Turn::Wait,
            },
        };
        match turn {
            Turn::Wait => {}
            Turn::Close => break,
            Turn::Leave => return,
        }
    }
    // Not kept: the last request has its END_REQUEST. A request still finishing with its
    // worker continues on its own task while this connection closes gently.
    if let Some(fut) = conn.inline.take() {
        tokio::spawn(fut);
    }
    drop(conn);
    super::lingering_close(&mut rd, &mut wr).await;
}

/// Where the connection loop goes after a step.
enum Turn {
    /// On to the next event.
    Wait,
    /// The last request of a connection not kept is answered: close it gently.
    Close,
    /// Leave at once: an error, the web server gone, a response cut off.
    Leave,
}

/// A response was cut off (it ended without END_REQUEST): send what is queued, then end
/// the connection the way this web server reads as a failed response. True: a reset is
/// armed, and the write half must be dropped without a FIN.
async fn cut_off<W: super::WriteHalf>(
    wbuf: &[u8],
    keep_conn: bool,
    wr: &mut W,
    sock: super::Sock,
    limit: std::time::Duration,
) -> bool {
    let _ = super::write_within(wr, wbuf, limit).await;
    if keep_conn {
        // EOF without END_REQUEST on a kept connection: the web server passes on what it
        // has and ends the response as failed.
        return false;
    }
    // Without keep-conn nginx takes EOF as the normal end. Over TCP a reset says
    // "failed"; on a unix socket there is no reset, and only an invalid record does
    // (nginx then drops the partial response).
    sock.wait_until_read().await;
    if sock.tcp {
        super::reset_on_close(sock.fd);
        return true;
    }
    let _ = super::write_within(wr, &fastcgi_server::record::INVALID_RECORD, limit).await;
    false
}

async fn recv_out(out: &mut Option<(mpsc::Sender<Out>, mpsc::Receiver<Out>)>) -> Option<Out> {
    match out {
        Some((_, rx)) => rx.recv().await,
        None => std::future::pending().await,
    }
}

async fn poll_inline(f: &mut Option<RequestFuture>) {
    match f {
        Some(f) => f.await,
        None => std::future::pending().await,
    }
}

async fn reserve(tx: Option<mpsc::Sender<Bytes>>) -> Result<mpsc::OwnedPermit<Bytes>, ()> {
    match tx {
        Some(tx) => tx.reserve_owned().await.map_err(|_| ()),
        None => std::future::pending().await,
    }
}

enum WriteNext {
    Continue,
    Close,
}

impl FrontConn {
    fn new(ctx: Arc<ListenerCtx>, peer: String) -> Self {
        Self {
            decoder: ServerConnection::new(ctx.limits.clone()),
            charge: HeaderCharge::new(ctx.registry.header_budget.clone()),
            over_budget: None,
            idle_since: None,
            silent_since: Some(Instant::now()),
            kept_since: None,
            consumed: false,
            ctx,
            peer,
            reqs: Vec::new(),
            out: None,
            wbuf: BytesMut::new(),
            keep_conn: true,
            pending: None,
            inline: None,
        }
    }

    /// Handle the records received (unless reading is paused for a full body channel),
    /// charge the unfinished headers, and send what that queued. A protocol error or too
    /// much header memory closes this connection only, after what is queued goes out.
    async fn decode_and_send<W: super::WriteHalf>(&mut self, wr: &mut W) -> Turn {
        if self.pending.is_none() {
            if let Err(e) = self.process() {
                if self.ctx.registry.rate_limits.allow(&crate::logging::ratelimit::FASTCGI_PROTOCOL, &self.ctx.name) {
                    tracing::warn!(listener = %self.ctx.name, peer = %self.peer, request = e.request_id(), "FastCGI protocol error, closing the connection: {e}");
                }
                let _ = super::write_within(wr, &self.wbuf, self.ctx.send_timeout).await;
                return Turn::Leave;
            }
        }
        if let Err((request, e)) = self.charge_headers() {
            // This connection only: the others keep their headers and go on.
            if self.ctx.registry.rate_limits.allow(&crate::logging::ratelimit::HEADER_MEMORY, &self.ctx.name) {
                tracing::warn!(listener = %self.ctx.name, peer = %self.peer, request, "{e}; closing the connection");
            }
            let _ = super::write_within(wr, &self.wbuf, self.ctx.send_timeout).await;
            return Turn::Leave;
        }
        if self.wbuf.is_empty() {
            return Turn::Wait;
        }
        self.send(wr).await
    }

    /// Write the write buffer out.
    async fn send<W: super::WriteHalf>(&mut self, wr: &mut W) -> Turn {
        if let Err(e) = super::write_within(wr, &self.wbuf, self.ctx.send_timeout).await {
            if e.kind() == std::io::ErrorKind::TimedOut {
                self.log_send_timeout();
            }
            return Turn::Leave;
        }
        self.written();
        self.answered()
    }

    /// Close once the last request of a connection not kept is answered.
    fn answered(&self) -> Turn {
        if !self.keep_conn && self.reqs.is_empty() {
            Turn::Close
        } else {
            Turn::Wait
        }
    }

    fn log_send_timeout(&self) {
        if self.ctx.registry.rate_limits.allow(&crate::logging::ratelimit::SEND_TIMEOUT, &self.ctx.name) {
            tracing::warn!(
                listener = %self.ctx.name, peer = %self.peer, requests = self.reqs.len(),
                "the web server took no response bytes within send-timeout ({:?}), closing the connection; its requests are abandoned",
                self.ctx.send_timeout
            );
        }
    }

    fn log_header_timeout(&self) {
        if self.ctx.registry.rate_limits.allow(&crate::logging::ratelimit::HEADER_TIMEOUT, &self.ctx.name) {
            if self.silent_since.is_some() {
                tracing::warn!(
                    listener = %self.ctx.name, peer = %self.peer,
                    "a new connection sent nothing within header-timeout ({:?}), closing it",
                    self.ctx.header_timeout
                );
                return;
            }
            tracing::warn!(
                listener = %self.ctx.name, peer = %self.peer,
                "no complete FastCGI request headers within header-timeout ({:?}; {} bytes held), closing the connection",
                self.ctx.header_timeout, self.header_bytes()
            );
        }
    }

    /// The write buffer went out. While requests run it is kept for their next records;
    /// once none does it is freed, with the response channel and the request list, so that
    /// a kept-alive connection waiting for its next request holds none of them (a large
    /// response's buffer would otherwise stay until the connection closes). Every request
    /// that could still send has its entry in `reqs` until its END_REQUEST is written.
    fn written(&mut self) {
        if self.reqs.is_empty() {
            self.wbuf = BytesMut::new();
            self.out = None;
            self.reqs = Vec::new();
        } else {
            self.wbuf.clear();
        }
    }

    fn find(&mut self, id: u16) -> Option<&mut Req> {
        self.reqs.iter_mut().find(|(i, _)| *i == id).map(|(_, r)| r)
    }

    fn remove(&mut self, id: u16) {
        if let Some(i) = self.reqs.iter().position(|(r, _)| *r == id) {
            self.reqs.swap_remove(i);
        }
    }

    /// EOF from the web server. Without KEEP_CONN the connection is the application's to
    /// close, and a simple client sends its whole request and then shuts down its sending
    /// side (shutdown(SHUT_WR)): that is no abort, so complete requests are still answered.
    /// A request with unfinished input, a kept connection (the web server owns it and closed
    /// it) or a peer that closed the socket outright abandons every request, as before.
    fn answer_after_eof(&self, sock: super::Sock) -> bool {
        !self.keep_conn
            && !self.reqs.is_empty()
            && self.decoder.buffered() == 0
            && self.reqs.iter().all(|(_, r)| matches!(r, Req::Running { body: None, .. }))
            && !sock.peer_closed()
    }

    /// The connection ends under its requests: say which had not even arrived completely.
    /// A client causes these lines at will (a thousand BEGIN_REQUESTs, then close): a few in
    /// full a second, then counted (logging/ratelimit.rs).
    fn log_abandoned(&self) {
        use crate::logging::ratelimit::{ABANDONED, PARTIAL_RECORD};
        let limits = &self.ctx.registry.rate_limits;
        let partial = self.decoder.buffered();
        if partial > 0 && limits.allow(&PARTIAL_RECORD, &self.ctx.name) {
            tracing::warn!(listener = %self.ctx.name, peer = %self.peer, "connection closed in the middle of a record ({partial} bytes of an incomplete record discarded)");
        }
        for (id, req) in &self.reqs {
            let what = match req {
                Req::Starting { params: None, .. } => "its PARAMS",
                Req::Starting { .. } | Req::Running { body: Some(_), .. } => "its body (STDIN)",
                Req::Running { body: None, .. } => continue,
            };
            if limits.allow(&ABANDONED, &self.ctx.name) {
                tracing::info!(listener = %self.ctx.name, peer = %self.peer, request = id, "connection closed before {what} was complete; the request is abandoned");
            }
        }
    }

    /// Encode `first` and whatever else is already queued into the write buffer.
    fn write_out(&mut self, first: Out) -> WriteNext {
        let mut msg = first;
        loop {
            if !msg.data.is_empty() {
                server::write_stdout(&mut self.wbuf, msg.id, &msg.data, Padding::None);
            }
            match msg.end {
                None => {}
                Some(End::Complete) => {
                    server::write_end_request(
                        &mut self.wbuf,
                        msg.id,
                        0,
                        ProtocolStatus::RequestComplete,
                        Padding::None,
                    );
                    self.remove(msg.id);
                    // An early response (before the body ended): later records for this id
                    // are skipped and the id may begin again.
                    self.decoder.end_request(msg.id);
                }
                Some(End::CutOff) => {
                    tracing::warn!(listener = %self.ctx.name, peer = %self.peer, request = msg.id, "response cut off: closing the connection without END_REQUEST");
                    return WriteNext::Close;
                }
            }
            if self.wbuf.len() >= WRITE_BATCH {
                return WriteNext::Continue;
            }
            match self.out.as_mut().map(|(_, rx)| rx.try_recv()) {
                Some(Ok(m)) => msg = m,
                _ => return WriteNext::Continue,
            }
        }
    }

    /// Handle every complete record in the receive buffer.
    fn process(&mut self) -> Result<(), fastcgi_server::Error> {
        let before = self.decoder.buffered();
        let result = self.process_records();
        self.consumed = self.decoder.buffered() < before;
        result
    }

    fn process_records(&mut self) -> Result<(), fastcgi_server::Error> {
        while self.pending.is_none() && self.over_budget.is_none() {
            match self.decoder.next_event() {
                Ok(Some(ev)) => {
                    tracing::trace!(event = ?DebugEvent(&ev), buffered = self.decoder.buffered(), "front event");
                    self.on_event(ev)?;
                }
                Ok(None) => break,
                Err(e) if !e.is_fatal() => self.refuse_request(e)?,
                Err(e) => return Err(e),
            }
        }
        self.launch_started();
        Ok(())
    }

    /// A request the decoder dropped while the connection stays sound: too many at once on
    /// this connection (END_REQUEST OVERLOADED), or headers past a limit, answered 431 (an
    /// error about a request this connection does not have closes it after all).
    fn refuse_request(&mut self, e: fastcgi_server::Error) -> Result<(), fastcgi_server::Error> {
        use fastcgi_server::Error as E;
        let Some(id) = e.request_id() else { return Err(e) };
        if let E::TooManyRequests { .. } = e {
            if self.ctx.registry.rate_limits.allow(&crate::logging::ratelimit::MAX_REQUESTS, &self.ctx.name) {
                tracing::warn!(listener = %self.ctx.name, peer = %self.peer, request = id, "{e}, answered FCGI_OVERLOADED");
            }
            server::write_end_request(&mut self.wbuf, id, 0, ProtocolStatus::Overloaded, Padding::None);
            return Ok(());
        }
        if !e.is_header_limit() || !matches!(self.find(id), Some(Req::Starting { params: None, .. })) {
            return Err(e);
        }
        if self.ctx.registry.rate_limits.allow(&crate::logging::ratelimit::HEADERS_TOO_LARGE, &self.ctx.name) {
            let (listener, peer) = (&self.ctx.name, &self.peer);
            match e {
                // The bridge sets both limits to the listener's max-params.
                E::ParamsTooLarge { len, limit, .. } | E::ValueTooLong { len, limit, .. } => tracing::warn!(
                    %listener, %peer, request = id,
                    "request headers (PARAMS) of at least {len} bytes exceed the listener's max-params ({}), answering 431 Request Header Fields Too Large",
                    crate::config::units::SizeDisplay(limit as u64)
                ),
                e => {
                    tracing::warn!(%listener, %peer, request = id, "request headers (PARAMS) past a limit, answering 431 Request Header Fields Too Large: {e}")
                }
            }
        }
        self.remove(id);
        self.ctx.count_refused(431);
        server::write_stdout(&mut self.wbuf, id, &crate::respond::error_response(431, None), Padding::None);
        server::write_end_request(&mut self.wbuf, id, 0, ProtocolStatus::RequestComplete, Padding::None);
        Ok(())
    }

    /// One record's event. Err: the web server broke the protocol; the connection closes.
    fn on_event(&mut self, ev: ServerEvent) -> Result<(), fastcgi_server::Error> {
        match ev {
            ServerEvent::BeginRequest { id, role, keep_conn } => return self.begin(id, role, keep_conn),
            ServerEvent::Params { id, params } => {
                if let Some(Req::Starting { params: p, .. }) = self.find(id) {
                    *p = Some(params);
                }
            }
            ServerEvent::Stdin { id, data } => self.stdin(id, data),
            ServerEvent::StdinEnd { id } => self.stdin_end(id),
            ServerEvent::Data { .. } | ServerEvent::DataEnd { .. } => {}
            ServerEvent::Abort { id } => self.abort(id),
            ServerEvent::GetValues { names } => self.get_values(&names),
            ServerEvent::UnknownType { record_type } => {
                tracing::warn!(listener = %self.ctx.name, peer = %self.peer, record_type, "unknown FastCGI management record type {record_type}, answered FCGI_UNKNOWN_TYPE");
                server::write_unknown_type(&mut self.wbuf, record_type);
            }
        }
        Ok(())
    }

    /// BEGIN_REQUEST: a responder or authorizer starts collecting its PARAMS; another role
    /// is refused with UNKNOWN_ROLE, a request past FCGI_MAX_REQS with OVERLOADED.
    fn begin(&mut self, id: u16, role: Role, keep_conn: bool) -> Result<(), fastcgi_server::Error> {
        if self.find(id).is_some() {
            // The id of a request whose END_REQUEST is not sent yet: the spec keeps an id
            // active until then, and nothing answers this one without ending that one too.
            // A broken or hostile peer; the connection closes, as for other protocol errors.
            return Err(fastcgi_server::Error::DuplicateRequestId { request_id: id });
        }
        self.keep_conn = keep_conn;
        match role {
            // At most FCGI_MAX_REQS requests in flight on one connection, the number the
            // listener announces: what its pools take (slots and queues, at most 1024), so
            // more from one connection would only wait to be answered 503. A multiplexing
            // web server keeps to it (HAProxy asks for it), and a client that does not
            // holds at most that many tasks, each charged to `header-memory` while it waits.
            Role::Responder | Role::Authorizer if self.reqs.len() >= self.ctx.max_reqs => self.refuse_overloaded(id),
            Role::Responder | Role::Authorizer => {
                let begun = self.idle_since.take();
                self.reqs
                    .push((id, Req::Starting { role, params: None, prefix: BytesMut::new(), body_done: false, begun }));
            }
            _ => {
                tracing::warn!(listener = %self.ctx.name, peer = %self.peer, request = id, "unsupported FastCGI role {role:?}");
                // Its later records are skipped.
                self.decoder.end_request(id);
                server::write_end_request(&mut self.wbuf, id, 0, ProtocolStatus::UnknownRole, Padding::None);
            }
        }
        Ok(())
    }

    /// A request past FCGI_MAX_REQS on this connection: FCGI_OVERLOADED, the spec's answer
    /// for a request the application has no room for. Its later records are skipped.
    fn refuse_overloaded(&mut self, id: u16) {
        if self.ctx.registry.rate_limits.allow(&crate::logging::ratelimit::MAX_REQUESTS, &self.ctx.name) {
            tracing::warn!(
                listener = %self.ctx.name, peer = %self.peer, request = id,
                "request refused with FCGI_OVERLOADED: the connection already has {} requests in flight (FCGI_MAX_REQS: what the listener's pools take, slots and queues)",
                self.reqs.len()
            );
        }
        self.decoder.end_request(id);
        server::write_end_request(&mut self.wbuf, id, 0, ProtocolStatus::Overloaded, Padding::None);
    }

    /// Body bytes: collected until the request starts (up to [`BODY_PREFIX`] once its
    /// PARAMS are here), then streamed to its task.
    fn stdin(&mut self, id: u16, data: Bytes) {
        if let Some(Req::Starting { prefix, params, .. }) = self.find(id) {
            if prefix.len() + data.len() <= BODY_PREFIX || params.is_none() {
                prefix.extend_from_slice(&data);
                return;
            }
            self.launch(id);
        }
        self.send_body(id, data);
    }

    /// The end of the body: a request not started starts with all of it.
    fn stdin_end(&mut self, id: u16) {
        match self.find(id) {
            Some(Req::Starting { body_done, .. }) => {
                *body_done = true;
                self.launch(id);
            }
            Some(Req::Running { .. }) => {
                // An empty chunk marks the end; then the channel closes.
                self.send_body(id, Bytes::new());
                if let Some(Req::Running { body, .. }) = self.find(id) {
                    *body = None;
                }
            }
            None => {}
        }
    }

    /// FCGI_GET_VALUES: what the pools behind this listener take, and that requests may be
    /// multiplexed.
    fn get_values(&mut self, names: &[Bytes]) {
        let max_conns = self.ctx.max_conns.to_string();
        let max_reqs = self.ctx.max_reqs.to_string();
        let pairs: Vec<(&[u8], &[u8])> = names
            .iter()
            .filter_map(|n| match &n[..] {
                b"FCGI_MAX_CONNS" => Some((&b"FCGI_MAX_CONNS"[..], max_conns.as_bytes())),
                b"FCGI_MAX_REQS" => Some((&b"FCGI_MAX_REQS"[..], max_reqs.as_bytes())),
                b"FCGI_MPXS_CONNS" => Some((&b"FCGI_MPXS_CONNS"[..], &b"1"[..])),
                _ => None,
            })
            .collect();
        server::write_get_values_result(&mut self.wbuf, pairs);
    }

    /// Requests whose PARAMS are complete start now, with the body bytes already here:
    /// nginx sends BEGIN, PARAMS and a small body in one packet, which then reaches the
    /// worker in one write.
    fn launch_started(&mut self) {
        let mut i = 0;
        while let Some(&(id, ref req)) = self.reqs.get(i) {
            if matches!(req, Req::Starting { params: Some(_), .. }) {
                self.launch(id);
                // A refused request was swapped out for the last one: look at `i` again.
                if self.reqs.get(i).is_some_and(|(j, _)| *j != id) {
                    continue;
                }
            }
            i += 1;
        }
    }

    /// Bytes of request headers this connection holds while they are unfinished: the PARAMS
    /// of requests not started, and the receive buffer while it holds the start of one.
    /// (Requests whose headers are complete hold a [`RequestCharge`] of their own.)
    fn header_bytes(&self) -> usize {
        let heading =
            self.reqs.is_empty() || self.reqs.iter().any(|(_, r)| matches!(r, Req::Starting { params: None, .. }));
        let params = self.decoder.params_held();
        if heading {
            params + self.decoder.buffered()
        } else {
            params
        }
    }

    /// After the received records are handled: note when unfinished headers began, and
    /// hold what they take against the daemon's `header-memory`. Err: this connection
    /// would take the daemon past it (with a waiting request, which one).
    fn charge_headers(&mut self) -> Result<(), (Option<u16>, OverBudget)> {
        if let Some((id, e)) = self.over_budget.take() {
            return Err((Some(id), e));
        }
        if self.consumed || self.decoder.buffered() > 0 || !self.reqs.is_empty() {
            self.silent_since = None;
        }
        if self.reqs.is_empty() {
            if self.decoder.buffered() == 0 {
                self.idle_since = None;
            } else if self.idle_since.is_none() || self.consumed {
                // Whole records went by (a body the app ignored, management records): what
                // is left begins here.
                self.idle_since = Some(Instant::now());
            }
        }
        for (_, r) in &mut self.reqs {
            if let Req::Starting { params: None, begun: begun @ None, .. } = r {
                *begun = Some(Instant::now());
            }
        }
        self.charge.set(self.header_bytes()).map_err(|e| (None, e))
    }

    /// When `header-timeout` ends for the oldest unfinished header on this connection.
    fn header_deadline(&self) -> Option<Instant> {
        let mut oldest = self.idle_since.or(self.silent_since);
        for (_, r) in &self.reqs {
            if let Req::Starting { params: None, begun: Some(at), .. } = r {
                oldest = Some(oldest.map_or(*at, |o| o.min(*at)));
            }
        }
        oldest.map(|at| at + self.ctx.header_timeout)
    }

    /// When `keepalive-timeout` ends for a connection that waits for its next request
    /// (none while a request runs, its bytes arrive, or its answer goes out).
    fn keepalive_deadline(&mut self) -> Option<Instant> {
        let waiting = self.reqs.is_empty()
            && self.inline.is_none()
            && self.pending.is_none()
            && self.silent_since.is_none()
            && self.decoder.buffered() == 0
            && self.wbuf.is_empty();
        if !waiting {
            self.kept_since = None;
            return None;
        }
        Some(*self.kept_since.get_or_insert_with(Instant::now) + self.ctx.keepalive_timeout)
    }

    /// FCGI_ABORT_REQUEST: a request not started yet ends at once; a running one is told
    /// (it ends itself toward the worker and sends END_REQUEST).
    fn abort(&mut self, id: u16) {
        match self.find(id) {
            Some(Req::Starting { .. }) => {
                self.remove(id);
                server::write_end_request(&mut self.wbuf, id, 0, ProtocolStatus::RequestComplete, Padding::None);
            }
            Some(Req::Running { abort, .. }) => {
                if let Some(a) = abort.take() {
                    let _ = a.send(());
                }
            }
            None => {}
        }
    }

    /// Queue a body chunk for a running request, parking it if the channel is full. Until a
    /// worker takes the request the chunk is charged to it.
    fn send_body(&mut self, id: u16, data: Bytes) {
        let Some(Req::Running { body: Some(_), charge, .. }) = self.find(id) else { return };
        if let Err(e) = charge.add(data.len()) {
            self.over_budget = Some((id, e));
            return;
        }
        let Some(Req::Running { body: Some(tx), .. }) = self.find(id) else { return };
        match tx.try_send(data) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(data)) => {
                tracing::trace!(request = id, len = data.len(), "body channel full; pausing reads");
                self.pending = Some((tx.clone(), data));
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }

    /// A CONTENT_LENGTH that is not a body length (`abc`, `+5`, ` 5`, `0x10`, beyond u64): 400
    /// before any worker is taken. A web server in front may have framed the body by another
    /// reading of it, and an app given it would guess.
    fn refuse_length(&mut self, id: u16, e: &ContentLengthError) {
        if self.ctx.registry.rate_limits.allow(&crate::logging::ratelimit::BAD_REQUEST, &self.ctx.name) {
            tracing::warn!(listener = %self.ctx.name, peer = %self.peer, request = id, "invalid request, answering 400: {e}");
        }
        self.remove(id);
        self.ctx.count_refused(400);
        // Its remaining STDIN, if any, is skipped.
        self.decoder.end_request(id);
        server::write_stdout(&mut self.wbuf, id, &crate::respond::error_response(400, None), Padding::None);
        server::write_end_request(&mut self.wbuf, id, 0, ProtocolStatus::RequestComplete, Padding::None);
    }

    /// A request whose headers are complete now holds them (and `body` bytes read ahead)
    /// against `header-memory` on its own, until a worker takes it.
    fn charge_request(&mut self, params: &Params, body: usize) -> Result<Arc<RequestCharge>, OverBudget> {
        // Its headers left the decoder: lower this connection's charge first, so that they
        // are not counted twice (lowering never fails).
        let _ = self.charge.set(self.charge.held().min(self.header_bytes()));
        RequestCharge::new(self.ctx.registry.header_budget.clone(), request_cost(params) + body).map(Arc::new)
    }

    /// Start the request.
    fn launch(&mut self, id: u16) {
        if self.over_budget.is_some() {
            // The connection closes: nothing more starts on it.
            return;
        }
        if self.ctx.superseded() {
            // A reload changed this listener: new requests follow its new routes.
            self.ctx = self.ctx.latest();
        }
        let Some(Req::Starting { role, params, prefix, body_done, .. }) = self.find(id) else { return };
        let Some(params) = params.take() else { return };
        // An AUTHORIZER request has no body (Apache sends no STDIN at all).
        let (role, body_done) = (*role, *body_done || *role == Role::Authorizer);
        let prefix = std::mem::take(prefix).freeze();
        if let Err(e) = fastcgi_server::content_length::declared(&params) {
            self.refuse_length(id, &e);
            return;
        }
        let charge = match self.charge_request(&params, prefix.len()) {
            Ok(charge) => charge,
            Err(e) => {
                self.over_budget = Some((id, e));
                self.remove(id);
                self.decoder.end_request(id);
                return;
            }
        };
        let out_tx = self.out.get_or_insert_with(|| mpsc::channel(OUT_QUEUE)).0.clone();
        let ctx = self.ctx.clone();
        let (abort_tx, abort_rx) = oneshot::channel();
        let (body_tx, body_rx) = if body_done {
            (None, None)
        } else {
            let (t, r) = mpsc::channel(BODY_QUEUE);
            (Some(t), Some(r))
        };
        let mut source = FcgiBody {
            prefix: (!prefix.is_empty()).then_some(prefix),
            rx: body_rx,
            abort: abort_rx,
            ended: false,
            charge: charge.clone(),
        };
        let mut sink = FcgiSink { id, tx: out_tx };
        let Some(req) = self.find(id) else { return };
        *req = Req::Running { body: body_tx, abort: Some(abort_tx), charge };
        let fut = Box::pin(async move {
            serve(&ctx, params, role, &mut source, &mut sink).await;
        });
        // The first request runs inside this task: its worker reply and the write to the web
        // server then need no hop between tasks (or threads). Only multiplexed requests
        // beyond it get tasks of their own.
        if self.inline.is_none() {
            self.inline = Some(fut);
        } else {
            tokio::spawn(fut);
        }
    }
}

/// A request's body as the FastCGI connection delivers it.
struct FcgiBody {
    prefix: Option<Bytes>,
    /// `None`: the whole body was in `prefix`. An empty chunk marks the end.
    rx: Option<mpsc::Receiver<Bytes>>,
    abort: oneshot::Receiver<()>,
    ended: bool,
    /// The request's `header-memory` charge, given back when a worker takes it or it ends.
    charge: Arc<RequestCharge>,
}

impl Drop for FcgiBody {
    fn drop(&mut self) {
        self.charge.release();
    }
}

impl BodySource for FcgiBody {
    fn ready(&mut self) -> Option<Option<Bytes>> {
        if let Some(p) = self.prefix.take() {
            return Some(Some(p));
        }
        if self.ended {
            return None;
        }
        match &mut self.rx {
            None => {
                self.ended = true;
                Some(None)
            }
            Some(rx) => match rx.try_recv() {
                Ok(chunk) if chunk.is_empty() => {
                    self.ended = true;
                    Some(None)
                }
                Ok(chunk) => Some(Some(chunk)),
                Err(_) => None,
            },
        }
    }

    async fn next_chunk(&mut self) -> Result<Option<Bytes>, FrontGone> {
        if let Some(p) = self.prefix.take() {
            return Ok(Some(p));
        }
        if self.ended {
            return Ok(None);
        }
        let Some(rx) = &mut self.rx else {
            self.ended = true;
            return Ok(None);
        };
        if self.abort.is_terminated() {
            return Err(FrontGone);
        }
        tokio::select! {
            biased;
            _ = &mut self.abort => Err(FrontGone),
            chunk = rx.recv() => match chunk {
                Some(c) if c.is_empty() => {
                    self.ended = true;
                    Ok(None)
                }
                Some(c) => Ok(Some(c)),
                // Closed without the end marker: the connection is gone.
                None => Err(FrontGone),
            },
        }
    }

    async fn aborted(&mut self) {
        // Once it has fired it stays fired: a oneshot polled again after its value panics,
        // and a request the web server aborted while it waited for a worker that had
        // already started it asks again (the exchange's pump).
        if !self.abort.is_terminated() {
            let _ = (&mut self.abort).await;
        }
    }

    fn release_charge(&mut self) {
        self.charge.release();
    }
}

/// A request's response path: into the connection's writer.
struct FcgiSink {
    id: u16,
    tx: mpsc::Sender<Out>,
}

impl ResponseSink for FcgiSink {
    fn send(&mut self, data: Bytes, end: Option<End>) -> impl Future<Output = Result<(), FrontGone>> + Send {
        let msg = Out { id: self.id, data, end };
        async move { self.tx.send(msg).await.map_err(|_| FrontGone) }
    }
}

/// Events in trace logs without their payloads.
struct DebugEvent<'a>(&'a ServerEvent);
impl std::fmt::Debug for DebugEvent<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            ServerEvent::Stdin { id, data } => write!(f, "Stdin(id={id}, {} bytes)", data.len()),
            ServerEvent::Params { id, params } => write!(f, "Params(id={id}, {} pairs)", params.len()),
            ServerEvent::Data { id, data } => write!(f, "Data(id={id}, {} bytes)", data.len()),
            other => write!(f, "{other:?}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn body(rx: Option<mpsc::Receiver<Bytes>>, abort: oneshot::Receiver<()>) -> FcgiBody {
        FcgiBody { prefix: None, rx, abort, ended: false, charge: Arc::default() }
    }

    #[tokio::test]
    async fn an_abort_once_fired_stays_fired() {
        let (tx, rx) = oneshot::channel();
        let (_body_tx, body_rx) = mpsc::channel(1);
        let mut b = body(Some(body_rx), rx);
        tx.send(()).expect("send");
        b.aborted().await;
        // Asked again (the queue's wait saw it, then the exchange's pump): at once, no panic.
        tokio::time::timeout(Duration::from_secs(5), b.aborted()).await.expect("resolves again");
        assert!(matches!(b.next_chunk().await, Err(FrontGone)));
        // A web server that dropped the request (its sender gone) is an abort as well.
        let (tx, rx) = oneshot::channel::<()>();
        let (_body_tx, body_rx) = mpsc::channel(1);
        let mut b = body(Some(body_rx), rx);
        drop(tx);
        assert!(matches!(b.next_chunk().await, Err(FrontGone)));
        tokio::time::timeout(Duration::from_secs(5), b.aborted()).await.expect("resolves");
    }
}
