//! One request over one worker connection: send BEGIN + PARAMS (+ the body that is
//! already here) in one write, then stream the rest of the body to the worker while
//! streaming its response to the front, both with back-pressure.
//!
//! The two directions run concurrently in the same task: a worker that answers while the
//! upload is still arriving (an echo, an early 413) must never deadlock against a bridge
//! that only reads once it has finished writing.
use super::SlotConn;
use crate::respond;
use bytes::{Bytes, BytesMut};
use fastcgi_server::cgi::parse_response_head;
use fastcgi_server::client::{self, ClientEvent};
use fastcgi_server::{Params, ProtocolStatus, Role};
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The web server went away (disconnect or ABORT_REQUEST).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrontGone;

/// How a response ends toward the web server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// The response is complete (FastCGI: END_REQUEST).
    Complete,
    /// The response was cut off: the web server must see a truncated response, so the
    /// connection is closed without ending the request normally.
    CutOff,
}

/// Where the request body comes from.
pub trait BodySource: Send {
    /// A chunk available without waiting: `Some(Some(chunk))`, `Some(None)` at the end of
    /// the body, `None` when the next chunk has not arrived yet.
    fn ready(&mut self) -> Option<Option<Bytes>>;
    /// The next chunk; `Ok(None)` at the end of the body.
    fn next_chunk(&mut self) -> impl Future<Output = Result<Option<Bytes>, FrontGone>> + Send;
    /// Resolves when the web server aborts the request or disconnects. Only called once
    /// the body has been read to its end (or while no body has been read yet).
    fn aborted(&mut self) -> impl Future<Output = ()> + Send;
}

/// Where the response goes: CGI-style bytes (header block, then body).
pub trait ResponseSink: Send {
    fn send(&mut self, data: Bytes, end: Option<End>) -> impl Future<Output = Result<(), FrontGone>> + Send;
}

/// What the log lines of a request name.
pub struct RequestInfo<'a> {
    pub id: &'a str,
    pub uri: &'a str,
    pub role: Role,
    /// The pool's `error-pages` when it has any, or the response this request fetches an
    /// error page for.
    pub error_pages: Option<respond::error_override::Override<'a>>,
    /// `file-handoff: serve | translate` on the listener (respond/handoff.rs); None: pass.
    pub files: Option<&'a respond::handoff::Files>,
}

/// What to do with the worker connection afterwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotFate {
    /// Clean: back to the pool.
    Reuse,
    /// The request was cut short mid-stream: open a fresh connection to the same worker.
    Reconnect,
    /// The worker broke the connection: reconnect only if it answers on the new one.
    Verify,
    /// The worker was killed or is gone.
    Discard,
}

/// The result of [`exchange`], for the access log and the slot.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub status: u16,
    pub body_bytes: u64,
    pub fate: SlotFate,
    /// The very first write failed: the worker never saw the request (it died while the
    /// slot was idle). Nothing went to the front; the request can go to another slot with
    /// [`First::Prepared`] after moving this slot's first-write buffer there.
    pub retry: Option<First>,
    /// The app handed the request on — a CGI local redirect (respond/redirect.rs) or a file
    /// for the bridge to send (respond/sendfile.rs): nothing went to the front yet.
    pub redirect: Option<respond::Handoff>,
}

/// How the first write (BEGIN + PARAMS + early body) is made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum First {
    /// Encode it into the slot's buffer.
    Encode,
    /// The slot's buffer already holds it; `body_done`: it includes the end of STDIN.
    Prepared { body_done: bool },
}

impl SlotConn {
    /// Hand the encoded first write of a failed attempt to another slot.
    pub fn take_first_write(&mut self, from: &mut SlotConn) {
        std::mem::swap(&mut self.wbuf, &mut from.wbuf);
    }
}

/// Body bytes sent along with PARAMS in the first write at most; a body of a known length
/// up to this is read whole before the request takes a worker (dispatch/serve.rs).
pub const FIRST_WRITE_BODY: usize = 64 << 10;
/// Small pieces of a response are coalesced up to this size before going to the front.
const COALESCE: usize = 32 << 10;
/// How long a worker gets to end a request after FCGI_ABORT_REQUEST before it is killed.
const ABORT_GRACE: Duration = Duration::from_secs(5);
const WORKER_REQUEST_ID: u16 = 1;

enum PumpEnd {
    FrontGone,
    WorkerGone,
}

enum RespEnd {
    /// END_REQUEST arrived (and was passed on).
    Ended,
    /// The worker closed the connection, failed, or sent garbage.
    WorkerBroken(String),
    /// The worker's socket was closed with our request still unread in it, before it
    /// sent a byte: the kernel says so with ECONNRESET on a unix socket (it died while
    /// idle, after our write went in). The worker never saw the request.
    Unread,
    FrontGone,
}

struct RespState {
    head_buf: BytesMut,
    head_done: bool,
    /// The front already has its whole response (an error made by the bridge).
    front_done: bool,
    status: u16,
    body_bytes: u64,
    /// The Content-Length the app declared, if any.
    content_length: Option<u64>,
    /// A hand-off: the response is dropped (`front_done`), the caller answers instead.
    redirect: Option<respond::Handoff>,
    /// The body bytes the response may carry: its Content-Length, or u64::MAX when it has
    /// none or no body is expected (HEAD, 1xx, 204, 304). Not every program keeps to what
    /// it declared (php-cgi, flup do not check), and a web server trusts it.
    body_limit: u64,
    /// Body bytes past `body_limit`, dropped.
    excess: u64,
    /// The request is a HEAD: its Content-Length describes a body that is not sent.
    head_request: bool,
    /// Any byte came from the worker for this request.
    received: bool,
}

impl RespState {
    /// Arm the Content-Length check once the head has gone out with `st.status`.
    fn arm_body_limit(&mut self) {
        let bodyless = self.head_request || matches!(self.status, 100..=199 | 204 | 304);
        self.body_limit = match self.content_length {
            Some(len) if !bodyless => len,
            _ => u64::MAX,
        };
    }

    /// `data` cut to what the declared Content-Length still allows; the rest is counted
    /// in `excess` and dropped. `body_bytes` never passes `body_limit`.
    #[inline]
    fn within_limit(&mut self, data: Bytes) -> Bytes {
        let room = self.body_limit - self.body_bytes;
        if data.len() as u64 <= room {
            return data;
        }
        self.excess += data.len() as u64 - room;
        data.slice(..room as usize)
    }
}

/// How long a response whose declared body is complete is held for the END_REQUEST that
/// should follow it (see `forward`).
const HOLD_FOR_END: Duration = Duration::from_millis(50);

/// Run one request over `slot`.
pub async fn exchange<S: BodySource, K: ResponseSink>(
    slot: &mut SlotConn,
    info: &RequestInfo<'_>,
    params: &Params,
    source: &mut S,
    sink: &mut K,
    first: First,
) -> Outcome {
    let timed_out = slot.timed_out.clone();
    let SlotConn { worker, stream, decoder, wbuf, .. } = slot;
    let worker = &**worker;
    let pid = worker.pid;
    let pool = &*worker.pool;

    let body_done = match first {
        First::Prepared { body_done } => body_done,
        First::Encode => {
            wbuf.clear();
            client::write_begin_request(wbuf, WORKER_REQUEST_ID, info.role, true);
            client::write_params(
                wbuf,
                WORKER_REQUEST_ID,
                params.iter().chain(std::iter::once((&b"FCGIBRIDGE_REQUEST_ID"[..], info.id.as_bytes()))),
            );
            let mut body_done = false;
            while wbuf.len() < FIRST_WRITE_BODY {
                match source.ready() {
                    Some(Some(chunk)) => client::write_stdin(wbuf, WORKER_REQUEST_ID, &chunk),
                    Some(None) => {
                        client::write_stdin_end(wbuf, WORKER_REQUEST_ID);
                        body_done = true;
                        break;
                    }
                    None => break,
                }
            }
            body_done
        }
    };

    let mut st = RespState {
        head_buf: BytesMut::new(),
        head_done: false,
        front_done: false,
        status: 0,
        body_bytes: 0,
        content_length: None,
        redirect: None,
        body_limit: u64::MAX,
        excess: 0,
        head_request: params.get(b"REQUEST_METHOD") == Some(b"HEAD"),
        received: false,
    };

    if let Err(e) = stream.write_all(wbuf).await {
        // On a unix socket a write fails at once when the worker has closed it, before a
        // single byte reached it: the request is safe to send elsewhere.
        tracing::warn!(pool, pid, request_id = info.id, uri = info.uri, error = %e, "could not send the request to the worker; trying another");
        return Outcome { status: 0, body_bytes: 0, fate: SlotFate::Discard, retry: Some(First::Prepared { body_done }), redirect: None };
    }

    let body_sent = AtomicBool::new(body_done);
    let (mut rd, mut wr) = stream.split();

    let resp_end = {
        let body_sent = &body_sent;
        let wr = &mut wr;
        let pump = async move {
            if !body_done {
                let mut pbuf = BytesMut::new();
                loop {
                    let next = source.next_chunk().await;
                    tracing::trace!(request_id = info.id, chunk = ?next.as_ref().map(|c| c.as_ref().map(|b| b.len())), "body chunk for the worker");
                    match next {
                        Ok(Some(chunk)) => {
                            pbuf.clear();
                            client::write_stdin(&mut pbuf, WORKER_REQUEST_ID, &chunk);
                            if wr.write_all(&pbuf).await.is_err() {
                                return PumpEnd::WorkerGone;
                            }
                        }
                        Ok(None) => {
                            pbuf.clear();
                            client::write_stdin_end(&mut pbuf, WORKER_REQUEST_ID);
                            if wr.write_all(&pbuf).await.is_err() {
                                return PumpEnd::WorkerGone;
                            }
                            body_sent.store(true, Ordering::Release);
                            break;
                        }
                        Err(FrontGone) => return PumpEnd::FrontGone,
                    }
                }
            }
            source.aborted().await;
            PumpEnd::FrontGone
        };
        let resp = forward(&mut rd, decoder, &mut *sink, info, pool, pid, &mut st);
        tokio::pin!(pump, resp);
        let mut pump_live = true;
        loop {
            tokio::select! {
                biased;
                r = &mut resp => break r,
                p = &mut pump, if pump_live => match p {
                    PumpEnd::FrontGone => break RespEnd::FrontGone,
                    // The read side will see why; keep forwarding what the worker sent.
                    PumpEnd::WorkerGone => pump_live = false,
                },
            }
        }
    };

    if !matches!(resp_end, RespEnd::Ended) && st.redirect.take().is_some() {
        // The redirecting response was dropped and the front has nothing yet.
        st.front_done = false;
    }
    // The whole request (first write) was in the socket the worker never read: sending it
    // to another worker cannot run it twice. Only for safe methods, as web servers retry
    // only those on another upstream; anything else is answered 502 like any broken worker.
    let resp_end = match resp_end {
        RespEnd::Unread if !body_done || !is_safe_method(params) || timed_out.load(Ordering::Acquire) => {
            RespEnd::WorkerBroken("the worker closed its connection with the request unread (did it exit?)".to_owned())
        }
        other => other,
    };
    match resp_end {
        RespEnd::Ended => {
            let fate = if body_sent.load(Ordering::Acquire) { SlotFate::Reuse } else { SlotFate::Reconnect };
            Outcome { status: st.status, body_bytes: st.body_bytes, fate, retry: None, redirect: st.redirect.take() }
        }
        RespEnd::WorkerBroken(_) if timed_out.load(Ordering::Acquire) => {
            // request-timeout: the pool manager logged it, dumped the worker's stacks and
            // shut this connection down; the worker is being replaced.
            if st.front_done {
            } else if st.head_done {
                tracing::error!(pool, pid, request_id = info.id, uri = info.uri, "request-timeout after the headers were sent, response cut off");
                let _ = sink.send(Bytes::new(), Some(End::CutOff)).await;
            } else {
                tracing::error!(pool, pid, request_id = info.id, uri = info.uri, "request-timeout: answering 504");
                st.status = 504;
                st.redirect = bridge_error(info, sink, 504).await;
            }
            Outcome { status: st.status, body_bytes: st.body_bytes, fate: SlotFate::Discard, retry: None, redirect: st.redirect.take() }
        }
        RespEnd::Unread => {
            tracing::warn!(pool, pid, request_id = info.id, uri = info.uri, "the worker closed its connection with the request unread (it died while idle); trying another");
            Outcome { status: 0, body_bytes: 0, fate: SlotFate::Discard, retry: Some(First::Prepared { body_done: true }), redirect: None }
        }
        RespEnd::WorkerBroken(why) => {
            if st.front_done {
                tracing::error!(pool, pid, request_id = info.id, uri = info.uri, "worker connection failed: {why}");
            } else if st.head_done {
                tracing::error!(pool, pid, request_id = info.id, uri = info.uri, "worker connection failed after the headers were sent, response cut off: {why}");
                let _ = sink.send(Bytes::new(), Some(End::CutOff)).await;
            } else {
                tracing::error!(pool, pid, request_id = info.id, uri = info.uri, "worker connection failed before a response, answering 502: {why}");
                st.status = 502;
                st.redirect = bridge_error(info, sink, 502).await;
            }
            Outcome { status: st.status, body_bytes: st.body_bytes, fate: SlotFate::Verify, retry: None, redirect: st.redirect.take() }
        }
        RespEnd::FrontGone => {
            // End the request toward the front at once (FastCGI ABORT_REQUEST wants an
            // END_REQUEST; a disconnected front ignores this), then let the worker stop.
            if !st.front_done {
                // The front has given up on this request: a normal end is what ABORT_REQUEST
                // asks for, and cutting off would close a multiplexed connection's other requests.
                let _ = sink.send(Bytes::new(), Some(End::Complete)).await;
            }
            tracing::info!(pool, pid, request_id = info.id, uri = info.uri, "client went away, aborting the request in the worker");
            let fate = abort_worker(&mut rd, &mut wr, decoder, worker, info).await;
            let fate = match fate {
                SlotFate::Reuse if !body_sent.load(Ordering::Acquire) => SlotFate::Reconnect,
                f => f,
            };
            Outcome { status: if st.status == 0 { 499 } else { st.status }, body_bytes: st.body_bytes, fate, retry: None, redirect: None }
        }
    }
}

/// GET, HEAD, OPTIONS and TRACE: a request that may be sent again (RFC 9110, 9.2.1).
fn is_safe_method(params: &Params) -> bool {
    matches!(params.get(b"REQUEST_METHOD"), Some(b"GET" | b"HEAD" | b"OPTIONS" | b"TRACE"))
}

/// Send FCGI_ABORT_REQUEST and discard the worker's output until its END_REQUEST; a
/// worker that does not end the request in time is killed (its slot is then replaced).
async fn abort_worker(
    rd: &mut tokio::net::unix::ReadHalf<'_>,
    wr: &mut tokio::net::unix::WriteHalf<'_>,
    decoder: &mut client::ClientConnection,
    worker: &crate::supervise::WorkerHandle,
    info: &RequestInfo<'_>,
) -> SlotFate {
    let mut buf = BytesMut::with_capacity(16);
    client::write_abort(&mut buf, WORKER_REQUEST_ID);
    if wr.write_all(&buf).await.is_err() {
        return SlotFate::Reconnect;
    }
    let drain = async {
        loop {
            loop {
                match decoder.next_event() {
                    Ok(Some(ClientEvent::EndRequest { .. })) => return true,
                    Ok(Some(ClientEvent::Stderr { data, .. })) => log_stderr(&worker.pool, worker.pid, info, &data),
                    Ok(Some(_)) => {}
                    Ok(None) => break,
                    Err(_) => return false,
                }
            }
            let b = decoder.buffer_mut();
            b.reserve(16 << 10);
            match rd.read_buf(b).await {
                Ok(0) | Err(_) => return false,
                Ok(_) => {}
            }
        }
    };
    match tokio::time::timeout(ABORT_GRACE, drain).await {
        Ok(true) => SlotFate::Reuse,
        Ok(false) => SlotFate::Reconnect,
        Err(_) => {
            tracing::warn!(
                pool = %worker.pool, pid = worker.pid, request_id = info.id, uri = info.uri,
                "worker did not end an aborted request within {ABORT_GRACE:?}; killing it"
            );
            worker.kill();
            SlotFate::Discard
        }
    }
}

/// Read the worker's records and pass the response on until END_REQUEST.
async fn forward<K: ResponseSink>(
    rd: &mut tokio::net::unix::ReadHalf<'_>,
    decoder: &mut client::ClientConnection,
    sink: &mut K,
    info: &RequestInfo<'_>,
    pool: &str,
    pid: u32,
    st: &mut RespState,
) -> RespEnd {
    let mut pending = BytesMut::new();
    loop {
        let mut ended: Option<(u32, ProtocolStatus)> = None;
        loop {
            let ev = match decoder.next_event() {
                Ok(Some(ev)) => ev,
                Ok(None) => break,
                Err(e) => {
                    if !pending.is_empty() && !st.front_done {
                        let _ = sink.send(pending.split().freeze(), None).await;
                    }
                    return RespEnd::WorkerBroken(format!("protocol error from the worker: {e}"));
                }
            };
            match ev {
                ClientEvent::Stdout { data, .. } => {
                    if st.front_done {
                        continue;
                    }
                    if st.head_done {
                        let data = st.within_limit(data);
                        if data.is_empty() {
                            continue;
                        }
                        st.body_bytes += data.len() as u64;
                        if pending.len() + data.len() <= COALESCE {
                            pending.extend_from_slice(&data);
                        } else {
                            if !pending.is_empty() && sink.send(pending.split().freeze(), None).await.is_err() {
                                return RespEnd::FrontGone;
                            }
                            if sink.send(data, None).await.is_err() {
                                return RespEnd::FrontGone;
                            }
                        }
                        continue;
                    }
                    match take_head(st, data, info, pool, pid) {
                        Ok(Some((head, rest))) => {
                            pending = head;
                            st.arm_body_limit();
                            let rest = st.within_limit(rest);
                            st.body_bytes += rest.len() as u64;
                            if rest.len() <= COALESCE {
                                pending.extend_from_slice(&rest);
                            } else {
                                if sink.send(pending.split().freeze(), None).await.is_err() {
                                    return RespEnd::FrontGone;
                                }
                                if sink.send(rest, None).await.is_err() {
                                    return RespEnd::FrontGone;
                                }
                            }
                        }
                        Ok(None) => {}
                        Err(status) => {
                            st.status = status;
                            st.front_done = true;
                            if sink.send(respond::error_response(status, None).freeze(), Some(End::Complete)).await.is_err() {
                                return RespEnd::FrontGone;
                            }
                        }
                    }
                }
                ClientEvent::Stderr { data, .. } => log_stderr(pool, pid, info, &data),
                ClientEvent::EndRequest { app_status, protocol_status, .. } => {
                    ended = Some((app_status, protocol_status));
                    break;
                }
                _ => {}
            }
        }
        if let Some((app_status, protocol_status)) = ended {
            if st.front_done {
                return RespEnd::Ended;
            }
            if protocol_status != ProtocolStatus::RequestComplete {
                tracing::error!(pool, pid, request_id = info.id, uri = info.uri, "worker refused the request: {protocol_status:?}");
            }
            let end = if !st.head_done {
                if protocol_status == ProtocolStatus::RequestComplete {
                    tracing::error!(pool, pid, request_id = info.id, uri = info.uri, "worker ended the request without a complete header block, answering 502");
                }
                st.status = 502;
                match respond::error_override::bridge_reply(info.error_pages, 502, None) {
                    respond::error_override::Reply::Send(reply) => pending = reply,
                    respond::error_override::Reply::Handoff(h) => {
                        // An error page to dispatch: the caller answers.
                        st.redirect = Some(h);
                        st.front_done = true;
                        return RespEnd::Ended;
                    }
                }
                End::Complete
            } else if app_status != 0 {
                tracing::error!(pool, pid, request_id = info.id, uri = info.uri, app_status, "the app failed after sending headers, response cut off");
                End::CutOff
            } else if st.body_bytes < st.body_limit && st.body_limit != u64::MAX {
                // A short body that ends normally would look complete to a web server
                // that does not count (and to its cache).
                tracing::error!(
                    pool, pid, request_id = info.id, uri = info.uri, declared = st.body_limit, sent = st.body_bytes,
                    "the program ended the response before the body its Content-Length declared, response cut off"
                );
                End::CutOff
            } else {
                End::Complete
            };
            if st.excess > 0 {
                tracing::error!(
                    pool, pid, request_id = info.id, uri = info.uri, declared = st.body_limit, sent = st.body_bytes + st.excess,
                    "the program sent more body than its Content-Length declared; the {} bytes past it were dropped", st.excess
                );
            }
            st.front_done = true;
            if sink.send(pending.split().freeze(), Some(end)).await.is_err() {
                // The worker's side is complete: the slot is clean even so.
                return RespEnd::Ended;
            }
            return RespEnd::Ended;
        }
        // The whole declared body is here: what follows is END_REQUEST, typically one
        // write later (the app's close() runs in between). Holding the last bytes for it
        // lets head, body and END_REQUEST reach the web server in one write instead of two
        // — without delaying a streamed response, whose length is unknown or not reached.
        let hold = !pending.is_empty()
            && !st.front_done
            && st.content_length.is_some_and(|len| st.body_bytes >= len);
        if !hold && !pending.is_empty() && !st.front_done && sink.send(pending.split().freeze(), None).await.is_err() {
            return RespEnd::FrontGone;
        }
        let buf = decoder.buffer_mut();
        buf.reserve(16 << 10);
        let read = if hold {
            match tokio::time::timeout(HOLD_FOR_END, rd.read_buf(buf)).await {
                Ok(r) => r,
                Err(_) => {
                    // The worker is slow to end the request: pass the response on now.
                    if sink.send(pending.split().freeze(), None).await.is_err() {
                        return RespEnd::FrontGone;
                    }
                    rd.read_buf(decoder.buffer_mut()).await
                }
            }
        } else {
            rd.read_buf(buf).await
        };
        match read {
            Ok(0) => return RespEnd::WorkerBroken("the worker closed the connection (did it exit?)".to_owned()),
            Ok(_) => st.received = true,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset && !st.received => return RespEnd::Unread,
            Err(e) => return RespEnd::WorkerBroken(format!("read error: {e}")),
        }
    }
}

/// Accumulate the CGI header block. `Ok(Some((encoded head, body bytes after it)))` once
/// complete; `Err(status)` when it cannot be passed on.
fn take_head(st: &mut RespState, data: Bytes, info: &RequestInfo<'_>, pool: &str, pid: u32) -> Result<Option<(BytesMut, Bytes)>, u16> {
    const MAX_HEAD: usize = 64 << 10;
    let parsed = if st.head_buf.is_empty() {
        match parse_response_head(&data, MAX_HEAD) {
            Ok(Some((head, n))) => Some((head, data.slice(n..))),
            Ok(None) => {
                st.head_buf.extend_from_slice(&data);
                None
            }
            Err(e) => return Err(bad_head(info, pool, pid, &e)),
        }
    } else {
        st.head_buf.extend_from_slice(&data);
        match parse_response_head(&st.head_buf, MAX_HEAD) {
            Ok(Some((head, n))) => {
                let rest = st.head_buf.split().freeze().slice(n..);
                Some((head, rest))
            }
            Ok(None) => None,
            Err(e) => return Err(bad_head(info, pool, pid, &e)),
        }
    };
    let Some((mut head, rest)) = parsed else { return Ok(None) };
    st.head_done = true;
    st.content_length = head.content_length;
    if head.location.is_some() {
        if let Some(target) = respond::redirect::local_target(&head) {
            st.redirect = Some(respond::Handoff::Local(target));
            st.head_done = false;
            st.front_done = true;
            return Ok(None);
        }
    }
    if let Some(ov) = info.error_pages {
        if let Some(replaced) = respond::error_override::on_head(ov, &mut head) {
            st.redirect = Some(replaced);
            st.head_done = false;
            st.front_done = true;
            return Ok(None);
        }
    }
    if let Some(files) = info.files {
        match files.decide(&mut head, pid) {
            respond::handoff::Decision::Forward => {}
            respond::handoff::Decision::Serve(file) => {
                st.redirect = Some(respond::Handoff::File(file));
                st.head_done = false;
                st.front_done = true;
                return Ok(None);
            }
            respond::handoff::Decision::Refuse { header, why } => {
                // Passed on, the header would show a filesystem path to the client.
                tracing::error!(pool, pid, request_id = info.id, uri = info.uri, header, "file hand-off dropped, answering 500: {why}");
                return Err(500);
            }
        }
    }
    let extra = if rest.len() <= COALESCE { rest.len() } else { 0 };
    match respond::encode_head(&head, extra) {
        Ok((status, buf)) => {
            st.status = status;
            Ok(Some((buf, rest)))
        }
        Err(e) => {
            tracing::error!(pool, pid, request_id = info.id, uri = info.uri, "invalid response header from the app, answering 500: {e}");
            Err(500)
        }
    }
}

fn bad_head(info: &RequestInfo<'_>, pool: &str, pid: u32, why: &fastcgi_server::Error) -> u16 {
    // A control character in a value is the app's header (response splitting): 500.
    // Anything else means the worker spoke broken CGI: 502.
    let status = if matches!(why, fastcgi_server::Error::CgiBadHeaderValue { .. }) { 500 } else { 502 };
    tracing::error!(pool, pid, request_id = info.id, uri = info.uri, "invalid response header block from the worker, answering {status}: {why}");
    status
}

/// The bridge's own error for this request: sent now, or the error page to dispatch.
async fn bridge_error<K: ResponseSink>(info: &RequestInfo<'_>, sink: &mut K, status: u16) -> Option<respond::Handoff> {
    match respond::error_override::bridge_reply(info.error_pages, status, None) {
        respond::error_override::Reply::Send(reply) => {
            let _ = sink.send(reply.freeze(), Some(End::Complete)).await;
            None
        }
        respond::error_override::Reply::Handoff(h) => Some(h),
    }
}

/// A worker's STDERR record (wsgi.errors, tracebacks): one log line per line.
fn log_stderr(pool: &str, pid: u32, info: &RequestInfo<'_>, data: &[u8]) {
    for line in data.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            continue;
        }
        tracing::warn!(pool, pid, request_id = info.id, uri = info.uri, "{}", String::from_utf8_lossy(line));
    }
}

#[cfg(test)]
mod length_tests {
    use super::*;

    fn state(status: u16, content_length: Option<u64>, head_request: bool) -> RespState {
        let mut st = RespState {
            head_buf: BytesMut::new(),
            head_done: true,
            front_done: false,
            status,
            body_bytes: 0,
            content_length,
            redirect: None,
            body_limit: u64::MAX,
            excess: 0,
            head_request,
            received: false,
        };
        st.arm_body_limit();
        st
    }

    fn relay(st: &mut RespState, chunk: &'static [u8]) -> Bytes {
        let out = st.within_limit(Bytes::from_static(chunk));
        st.body_bytes += out.len() as u64;
        out
    }

    #[test]
    fn bytes_past_the_declared_length_are_dropped() {
        let mut st = state(200, Some(5), false);
        assert_eq!(&relay(&mut st, b"012")[..], b"012");
        assert_eq!(&relay(&mut st, b"3456")[..], b"34");
        assert_eq!(&relay(&mut st, b"789")[..], b"");
        assert_eq!((st.body_bytes, st.excess), (5, 5));
    }

    #[test]
    fn bodyless_responses_and_no_length_are_not_counted() {
        for st in [state(200, Some(5), true), state(204, Some(5), false), state(304, Some(5), false), state(200, None, false)] {
            assert_eq!(st.body_limit, u64::MAX);
        }
        let mut st = state(200, None, false);
        assert_eq!(relay(&mut st, b"0123456789").len(), 10);
        assert_eq!(st.excess, 0);
    }
}

#[cfg(test)]
mod unread_tests {
    use super::*;
    use crate::supervise::WorkerHandle;
    use std::sync::Arc;

    struct NoBody;
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

    #[derive(Default)]
    struct Collect(Vec<u8>);
    impl ResponseSink for Collect {
        async fn send(&mut self, data: Bytes, _end: Option<End>) -> Result<(), FrontGone> {
            self.0.extend_from_slice(&data);
            Ok(())
        }
    }

    /// A worker that accepts, waits until the request is in its socket, and exits without
    /// reading it: what a kill -9 of an idle worker looks like from the bridge.
    async fn outcome_of_unread(method: &'static str) -> (Outcome, Vec<u8>) {
        let path = std::env::temp_dir().join(format!("fcgibridge-unread-{}-{method}.sock", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let listener = tokio::net::UnixListener::bind(&path).expect("bind");
        let dies = tokio::spawn(async move {
            let (s, _) = listener.accept().await.expect("accept");
            s.readable().await.expect("readable");
            drop(s); // unread data in the socket: the bridge's side gets ECONNRESET
        });
        let worker = Arc::new(WorkerHandle::new("p".into(), 1, path.clone()));
        let (mut slot, _) = crate::backend::SlotConn::connect(worker).await.expect("connect");
        let mut params = Params::default();
        params.insert(&b"REQUEST_METHOD"[..], method.as_bytes().to_vec());
        let info = RequestInfo { id: "r1", uri: "/", role: Role::Responder, error_pages: None, files: None };
        let mut sink = Collect::default();
        let outcome = exchange(&mut slot, &info, &params, &mut NoBody, &mut sink, First::Encode).await;
        dies.await.expect("worker task");
        let _ = std::fs::remove_file(&path);
        (outcome, sink.0)
    }

    #[tokio::test]
    async fn a_safe_request_left_unread_by_a_dying_worker_goes_to_another() {
        let (outcome, sent) = outcome_of_unread("GET").await;
        assert!(outcome.retry.is_some(), "status {}", outcome.status);
        assert!(sent.is_empty(), "nothing may reach the web server before the retry");
    }

    #[tokio::test]
    async fn an_unsafe_request_left_unread_is_answered_502() {
        let (outcome, sent) = outcome_of_unread("POST").await;
        assert!(outcome.retry.is_none());
        assert_eq!(outcome.status, 502);
        assert!(String::from_utf8_lossy(&sent).starts_with("Status: 502"), "{}", String::from_utf8_lossy(&sent));
    }
}
