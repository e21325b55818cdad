//! One request over one worker connection: send BEGIN + PARAMS (+ the body that is
//! already here) in one write, then stream the rest of the body to the worker while
//! streaming its response to the front, both with back-pressure.
//!
//! The two directions run concurrently in the same task: a worker that answers while the
//! upload is still arriving (an echo, an early 413) must never deadlock against a bridge
//! that only reads once it has finished writing.
//!
//! The exchange never answers for the bridge: when the front has nothing yet and the
//! bridge must answer (its own error, an error page, a file, a local redirect), it says so
//! in [`Next`] and dispatch/serve.rs does it.
use super::SlotConn;
use crate::flow::{BodySource, End, FrontGone, ResponseSink};
use crate::respond;
use crate::respond::error_override::Replaced;
use crate::respond::file_handoff::FileHandoff;
use bytes::{Bytes, BytesMut};
use fastcgi_server::cgi::parse_response_head;
use fastcgi_server::client::{self, ClientEvent};
use fastcgi_server::{Params, ProtocolStatus, Role};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::{ReadHalf, WriteHalf};

/// What the log lines of a request name.
pub(crate) struct RequestInfo<'a> {
    pub id: &'a str,
    pub uri: &'a str,
    pub role: Role,
    /// The pool's `error-pages` when it has any, or the response this request fetches an
    /// error page for.
    pub error_pages: Option<respond::error_override::Override<'a>>,
    /// `file-handoff: serve | translate` on the listener (respond/file_handoff.rs); None: pass.
    pub files: Option<&'a respond::file_handoff::Files>,
    /// The pool's account, when its workers run as another than the bridge's: a file handed
    /// off is looked up as it.
    pub reader: Option<&'a crate::supervise::access::Reader>,
}

/// What to do with the worker connection afterwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SlotFate {
    /// Clean: back to the pool.
    Reuse,
    /// The request was cut short mid-stream: open a fresh connection to the same worker.
    Reconnect,
    /// The worker broke the connection: reconnect only if it answers on the new one.
    Verify,
    /// The worker was killed or is gone.
    Discard,
    /// ABORT_REQUEST went to the worker and its END_REQUEST is still to come: the request
    /// is over for the front, the slot comes back through [`SlotConn::finish_abort`].
    Aborted,
}

/// What happens to the request once the exchange is over.
#[derive(Debug)]
pub(crate) enum Next {
    /// The response went to the front, complete or cut off.
    Done,
    /// The front has nothing yet: the bridge answers with its own error (502, 504).
    Error(u16),
    /// A CGI local redirect (respond/redirect.rs): serve the request again at this path.
    Reroute(Bytes),
    /// A 4xx/5xx whose body an error page replaces (respond/error_override.rs), or, for
    /// the request fetching an error page, that page failing.
    ErrorPage(Replaced),
    /// A file for the bridge to send (respond/sendfile.rs).
    File(Box<FileHandoff>),
    /// The very first write failed: the worker never saw the request (it died while the
    /// slot was idle). Nothing went to the front; the request can go to another slot with
    /// this [`First`] after moving this slot's first-write buffer there.
    Retry(First),
}

impl From<respond::Handoff> for Next {
    fn from(h: respond::Handoff) -> Self {
        match h {
            respond::Handoff::Local(target) => Self::Reroute(target),
            respond::Handoff::File(file) => Self::File(file),
            respond::Handoff::ErrorPage(replaced) => Self::ErrorPage(replaced),
        }
    }
}

/// The result of [`exchange`]: for the access log, the slot, and what comes next.
#[derive(Debug)]
pub(crate) struct Outcome {
    pub status: u16,
    pub body_bytes: u64,
    pub fate: SlotFate,
    pub next: Next,
}

impl Outcome {
    /// Nothing reached the front: the request goes to another slot with `first`.
    fn retry(fate: SlotFate, first: First) -> Self {
        Self { status: 0, body_bytes: 0, fate, next: Next::Retry(first) }
    }
}

/// How the first write (BEGIN + PARAMS + early body) is made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum First {
    /// Encode it into the slot's buffer.
    Encode,
    /// The slot's buffer already holds it; `body_done`: it includes the end of STDIN.
    Prepared { body_done: bool },
    /// It is already in the worker's socket, piped behind the previous request on this
    /// connection under this claim (cell, tag): nothing to write.
    Sent { cell: u32, tag: u32 },
    /// It was [`Sent`](Self::Sent), and taken back before the worker started it: send the
    /// request's kept first write (dispatch/serve.rs) on another slot.
    Resend,
}

impl SlotConn {
    /// Hand the encoded first write of a failed attempt to another slot.
    pub(crate) fn take_first_write(&mut self, from: &mut Self) {
        std::mem::swap(&mut self.wbuf, &mut from.wbuf);
    }

    /// Use a request's kept first write ([`encode_kept`]) as this slot's next one.
    pub(crate) fn load_first_write(&mut self, kept: &[u8]) {
        self.wbuf.clear();
        self.wbuf.extend_from_slice(kept);
    }
}

/// The private param that carries a piped request's claim (`cell.tag`, fixed width so
/// that it is filled in place; tag 0: not piped). The worker strips it from the environ.
const CLAIM_PARAM: &[u8] = b"FCGIBRIDGE_CLAIM";
const NO_CLAIM: &[u8] = b"0000.0000000000";
/// Where its value sits in a first write: after BEGIN (16 bytes), the PARAMS header (8)
/// and the pair's two length bytes and name, as the first pair.
const CLAIM_AT: usize = 16 + 8 + 2 + CLAIM_PARAM.len();

/// How a request goes to another slot when its connection failed before the worker read
/// it; None for a piped request the worker has started (it cannot be sent twice).
fn send_again(first: First, worker: &crate::worker_handle::WorkerHandle, body_done: bool) -> Option<First> {
    match first {
        First::Sent { cell, tag } => {
            worker.claims.as_ref().is_some_and(|p| p.withdraw(cell, tag)).then_some(First::Resend)
        }
        _ => Some(First::Prepared { body_done }),
    }
}

/// Encode a waiting request's first write to be kept (it may be piped onto a busy
/// connection, or sent on a free one later). The caller has seen the whole body arrive
/// (`whole()`), so every chunk goes in, past [`FIRST_WRITE_BODY`] too: a chunk taken from
/// the source and then dropped would be lost to the request. None if the body was not all
/// here after all.
pub(crate) fn encode_kept<S: BodySource>(info: &RequestInfo<'_>, params: &Params, source: &mut S) -> Option<Bytes> {
    let mut buf = BytesMut::new();
    encode_first_write(&mut buf, WORKER_REQUEST_ID, info, params, source, true).then(|| buf.freeze())
}

/// Set every record of the encoded request in `buf` to request id `id` and fill in its
/// claim (None: not piped).
fn retarget(buf: &mut [u8], id: u16, claim: Option<(u32, u32)>) {
    let mut at = 0;
    while at + 8 <= buf.len() {
        buf[at + 2..at + 4].copy_from_slice(&id.to_be_bytes());
        let content = u16::from_be_bytes([buf[at + 4], buf[at + 5]]) as usize;
        at += 8 + content + buf[at + 6] as usize;
    }
    if buf.get(CLAIM_AT - CLAIM_PARAM.len()..CLAIM_AT) == Some(CLAIM_PARAM) {
        if let Some(value) = buf.get_mut(CLAIM_AT..CLAIM_AT + NO_CLAIM.len()) {
            match claim {
                Some((cell, tag)) => {
                    // Written in place (no allocation per piped request); cells and tags
                    // fit the widths (claim::CELLS, claim tags are 30 bits).
                    let _ = std::io::Write::write_fmt(&mut &mut value[..], format_args!("{cell:04}.{tag:010}"));
                }
                None => value.copy_from_slice(NO_CLAIM),
            }
        }
    }
}

/// Body bytes sent along with PARAMS in the first write at most; a body of a known length
/// up to this is read whole before the request takes a worker (dispatch/serve.rs).
pub(crate) const FIRST_WRITE_BODY: usize = 64 << 10;
/// Small pieces of a response are coalesced up to this size before going to the front.
const COALESCE: usize = 32 << 10;
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

/// Where the response toward the front stands.
#[derive(Debug)]
enum Front {
    /// The worker's header block has not arrived whole yet: the front has nothing.
    Head,
    /// The head went out; body bytes follow.
    Body,
    /// The front has its whole response (an error made by the bridge).
    Done,
    /// The app handed the request on: its response is dropped, the caller answers.
    HandedOn(respond::Handoff),
}

impl Front {
    /// Whether the response toward the front is still being written.
    fn open(&self) -> bool {
        matches!(self, Self::Head | Self::Body)
    }
}

struct RespState {
    head_buf: BytesMut,
    front: Front,
    status: u16,
    body_bytes: u64,
    /// The Content-Length the app declared, if any.
    content_length: Option<u64>,
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
    fn new(head_request: bool) -> Self {
        Self {
            head_buf: BytesMut::new(),
            front: Front::Head,
            status: 0,
            body_bytes: 0,
            content_length: None,
            body_limit: u64::MAX,
            excess: 0,
            head_request,
            received: false,
        }
    }

    /// Arm the Content-Length check once the head has gone out with `st.status`.
    fn arm_body_limit(&mut self) {
        let bodyless = self.head_request || matches!(self.status, 100..=199 | 204 | 304);
        self.body_limit = match self.content_length {
            // 204 and 304 never have a body (RFC 9110 15.3.5, 15.4.5): one passed on would
            // be read as the start of the next response on a kept HTTP connection.
            _ if !self.head_request && matches!(self.status, 204 | 304) => 0,
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

    /// What follows a request the worker ended: a hand-off, or the bridge's 502 for a
    /// response that never got a complete head.
    fn next_after_end(&mut self) -> Next {
        match std::mem::replace(&mut self.front, Front::Done) {
            Front::HandedOn(h) => h.into(),
            Front::Head => {
                self.status = 502;
                Next::Error(502)
            }
            Front::Body | Front::Done => Next::Done,
        }
    }

    /// The worker failed mid-request: a response already started is cut off; when the
    /// front has nothing yet, the bridge answers `status`.
    async fn worker_failed<K: ResponseSink>(&mut self, sink: &mut K, status: u16) -> Next {
        match self.front {
            Front::Body => {
                let _ = sink.send(Bytes::new(), Some(End::CutOff)).await;
                Next::Done
            }
            Front::Head => {
                self.status = status;
                Next::Error(status)
            }
            Front::Done | Front::HandedOn(_) => Next::Done,
        }
    }
}

/// How long a response whose declared body is complete is held for the END_REQUEST that
/// should follow it (see `forward`).
const HOLD_FOR_END: Duration = Duration::from_millis(50);

/// The first write of the request on `slot` into its buffer, and the waiting request
/// piped behind it when the whole request is in it (`pipe`: the pool's dispatcher, when
/// the pool pipelines). Returns whether the body is complete and the piped claim.
fn prepare<S: BodySource>(
    slot: &mut SlotConn,
    info: &RequestInfo<'_>,
    params: &Params,
    source: &mut S,
    first: First,
    pipe: Option<&crate::dispatch::Dispatcher<SlotConn>>,
) -> (bool, Option<(u32, u32)>, usize) {
    let body_done = match first {
        First::Prepared { body_done } => {
            retarget(&mut slot.wbuf, slot.req_id, None);
            body_done
        }
        First::Encode => encode_first_write(&mut slot.wbuf, slot.req_id, info, params, source, false),
        First::Sent { .. } => {
            slot.wbuf.clear();
            slot.req_id = slot.piped_id;
            true
        }
        First::Resend => unreachable!("dispatch/serve.rs turns Resend into Prepared"),
    };
    let start = slot.wbuf.len();
    let (Some(d), Some(page), true) = (pipe, slot.worker.claims.as_ref(), body_done) else {
        return (body_done, None, start);
    };
    let other = 3 - slot.req_id;
    // A cell per connection and request id: the request handed over a moment ago may not
    // be claimed yet when the next one is piped behind it.
    let cell = slot.key.conn * 2 + u32::from(other - 1);
    let Some((kept, tag)) = d.pipe_onto(slot.key, page, cell) else { return (body_done, None, start) };
    slot.wbuf.extend_from_slice(&kept);
    retarget(&mut slot.wbuf[start..], other, Some((cell, tag)));
    slot.piped_id = other;
    (body_done, Some((cell, tag)), start)
}

/// A connection with no request on it where the worker sent bytes anyway is replaced
/// before this request is written ([`SlotConn::unsolicited`]).
async fn replace_if_unsolicited(slot: &mut SlotConn, info: &RequestInfo<'_>) {
    if let Some(n) = slot.unsolicited() {
        tracing::warn!(
            pool = &*slot.worker.pool,
            pid = slot.worker.pid,
            request_id = info.id,
            "the worker sent {n} bytes on an idle connection (no request was running on it); connection replaced"
        );
        // Nothing is written yet: the request goes on a fresh connection to the worker (or
        // fails on this one when the worker is gone).
        slot.reconnect().await;
    }
}

/// Run one request over `slot`; `pipe`: the pool's dispatcher when it pipelines (a
/// waiting request may then be written behind this one).
pub(crate) async fn exchange<S: BodySource, K: ResponseSink>(
    slot: &mut SlotConn,
    info: &RequestInfo<'_>,
    params: &Params,
    source: &mut S,
    sink: &mut K,
    first: First,
    pipe: Option<&crate::dispatch::Dispatcher<SlotConn>>,
) -> Outcome {
    if matches!(first, First::Encode | First::Prepared { .. }) {
        replace_if_unsolicited(slot, info).await;
    }
    let timed_out = slot.timed_out.clone();
    let (body_done, piped, own_len) = prepare(slot, info, params, source, first, pipe);
    let id = slot.req_id;
    let SlotConn { worker, stream, decoder, wbuf, .. } = slot;
    let worker = &**worker;
    let pid = worker.pid;
    let pool = &*worker.pool;
    let mut st = RespState::new(params.get(b"REQUEST_METHOD") == Some(b"HEAD"));
    if let Some((cell, tag)) = piped {
        tracing::debug!(pool, pid, request_id = info.id, cell, tag, "a waiting request was piped behind this one");
    }

    if let Err(e) = stream.write_all(wbuf).await {
        // On a unix socket a write fails at once when the worker has closed it, before a
        // single byte reached it: the request is safe to send elsewhere.
        tracing::warn!(pool, pid, request_id = info.id, uri = info.uri, error = %e, "could not send the request to the worker; trying another");
        if let Some(again) = send_again(first, worker, body_done) {
            // The piped request's bytes were in the same write; it is taken back with the
            // slot (dispatch/serve.rs `give_back`).
            wbuf.truncate(own_len);
            return Outcome::retry(SlotFate::Discard, again);
        }
    }

    let body_sent = AtomicBool::new(body_done);
    let (mut rd, mut wr) = stream.split();
    let resp_end =
        relay(&mut rd, &mut wr, decoder, source, sink, info, (worker, id), &mut st, &body_sent, body_done).await;
    if let Some(again) = piped_not_started(first, &resp_end, &st, worker, body_done, info) {
        return Outcome::retry(SlotFate::Verify, again);
    }

    if !matches!(resp_end, RespEnd::Ended) && matches!(st.front, Front::HandedOn(_)) {
        // The handed-on response was dropped and the front has nothing yet.
        st.front = Front::Head;
    }
    // The whole request (first write) was in the socket the worker never read: sending it
    // to another worker cannot run it twice. Only for safe methods, as web servers retry
    // only those on another upstream; anything else is answered 502 like any broken worker.
    let resp_end = match resp_end {
        RespEnd::Unread
            if !body_done
                || !is_safe_method(params)
                || timed_out.load(Ordering::Acquire)
                || matches!(first, First::Sent { .. }) =>
        {
            RespEnd::WorkerBroken("the worker closed its connection with the request unread (did it exit?)".to_owned())
        }
        other => other,
    };
    let (fate, next) = match resp_end {
        RespEnd::Ended => {
            let fate = if body_sent.load(Ordering::Acquire) { SlotFate::Reuse } else { SlotFate::Reconnect };
            (fate, st.next_after_end())
        }
        RespEnd::WorkerBroken(why) => {
            let timed_out = timed_out.load(Ordering::Acquire);
            log_worker_failure(&st.front, &why, timed_out, (pool, pid), info);
            // request-timeout: the pool manager logged it, dumped the worker's stacks and
            // shut this connection down; the worker is being replaced.
            let (fate, status) = if timed_out { (SlotFate::Discard, 504) } else { (SlotFate::Verify, 502) };
            (fate, st.worker_failed(sink, status).await)
        }
        RespEnd::Unread => {
            tracing::warn!(
                pool,
                pid,
                request_id = info.id,
                uri = info.uri,
                "the worker closed its connection with the request unread (it died while idle); trying another"
            );
            // Only this request goes again: one piped behind it is taken back with the
            // slot (dispatch/serve.rs `give_back`).
            wbuf.truncate(own_len);
            return Outcome::retry(SlotFate::Discard, First::Prepared { body_done: true });
        }
        RespEnd::FrontGone => {
            end_for_gone_client(&st, sink, (pool, pid), info).await;
            slot.aborting = send_abort(&mut wr, id, info, body_sent.load(Ordering::Acquire)).await;
            // The worker's END_REQUEST is awaited apart; a connection that failed is replaced.
            let fate = if slot.aborting.is_some() { SlotFate::Aborted } else { SlotFate::Reconnect };
            let status = if st.status == 0 { 499 } else { st.status };
            return Outcome { status, body_bytes: st.body_bytes, fate, next: Next::Done };
        }
    };
    Outcome { status: st.status, body_bytes: st.body_bytes, fate, next }
}

/// A piped request the worker never started (it exited after the previous one) goes
/// elsewhere, when its claim says so: how to send it again.
fn piped_not_started(
    first: First,
    resp_end: &RespEnd,
    st: &RespState,
    worker: &crate::worker_handle::WorkerHandle,
    body_done: bool,
    info: &RequestInfo<'_>,
) -> Option<First> {
    let (First::Sent { .. }, RespEnd::WorkerBroken(_) | RespEnd::Unread, false) = (first, resp_end, st.received) else {
        return None;
    };
    let again = send_again(first, worker, body_done)?;
    tracing::warn!(
        pool = &*worker.pool,
        pid = worker.pid,
        request_id = info.id,
        uri = info.uri,
        "the worker closed its connection before it started the piped request; trying another"
    );
    Some(again)
}

/// The error line of a worker connection that failed (`timed_out`: by request-timeout,
/// which the pool manager has logged with the reason), by how far the response got.
fn log_worker_failure(front: &Front, why: &str, timed_out: bool, (pool, pid): (&str, u32), info: &RequestInfo<'_>) {
    let (request_id, uri) = (info.id, info.uri);
    match (front, timed_out) {
        (Front::Body, true) => {
            tracing::error!(pool, pid, request_id, uri, "request-timeout after the headers were sent, response cut off")
        }
        (Front::Head, true) => tracing::error!(pool, pid, request_id, uri, "request-timeout: answering 504"),
        (Front::Done | Front::HandedOn(_), true) => {}
        (Front::Body, false) => tracing::error!(
            pool,
            pid,
            request_id,
            uri,
            "worker connection failed after the headers were sent, response cut off: {why}"
        ),
        (Front::Head, false) => {
            tracing::error!(
                pool,
                pid,
                request_id,
                uri,
                "worker connection failed before a response, answering 502: {why}"
            )
        }
        (Front::Done | Front::HandedOn(_), false) => {
            tracing::error!(pool, pid, request_id, uri, "worker connection failed: {why}")
        }
    }
}

/// The client went away: end the request toward the front at once (FastCGI
/// ABORT_REQUEST wants an END_REQUEST; a disconnected front ignores this) before the
/// worker is told to stop.
async fn end_for_gone_client<K: ResponseSink>(
    st: &RespState,
    sink: &mut K,
    (pool, pid): (&str, u32),
    info: &RequestInfo<'_>,
) {
    if st.front.open() {
        // The front has given up on this request: a normal end is what ABORT_REQUEST
        // asks for, and cutting off would close a multiplexed connection's other requests.
        let _ = sink.send(Bytes::new(), Some(End::Complete)).await;
    }
    if sink.answered_by_bridge() {
        // Not the client: a request body limit (the body ended short, stalled, too slow or
        // too large), which the dispatcher answers and logs.
        tracing::debug!(pool, pid, request_id = info.id, uri = info.uri, "aborting the request in the worker");
        return;
    }
    if matches!(st.front, Front::Done) {
        // Not the client: the bridge answered this request itself (a bad response head).
        tracing::info!(
            pool,
            pid,
            request_id = info.id,
            uri = info.uri,
            "aborting the request in the worker after answering {}",
            st.status
        );
        return;
    }
    tracing::info!(
        pool,
        pid,
        request_id = info.id,
        uri = info.uri,
        "client went away, aborting the request in the worker"
    );
}

/// Encode BEGIN + PARAMS and as much of the body as is already here into `wbuf`; true
/// when that includes the end of the body.
/// `claim`: with the [`CLAIM_PARAM`] placeholder first (a request that may be piped).
fn encode_first_write<S: BodySource>(
    wbuf: &mut BytesMut,
    id: u16,
    info: &RequestInfo<'_>,
    params: &Params,
    source: &mut S,
    claim: bool,
) -> bool {
    wbuf.clear();
    client::write_begin_request(wbuf, id, info.role, true);
    let placeholder = claim.then_some((CLAIM_PARAM, NO_CLAIM));
    client::write_params(
        wbuf,
        id,
        placeholder
            .into_iter()
            // The claim is the bridge's to give: one the web server passed is dropped.
            .chain(params.iter().filter(|(name, _)| *name != CLAIM_PARAM))
            .chain(std::iter::once((&b"FCGIBRIDGE_REQUEST_ID"[..], info.id.as_bytes()))),
    );
    // A kept write (`claim`) takes the whole body, which is here (`encode_kept`).
    let limit = if claim { usize::MAX } else { FIRST_WRITE_BODY };
    while wbuf.len() < limit {
        match source.ready() {
            Some(Some(chunk)) => client::write_stdin(wbuf, id, &chunk),
            Some(None) => {
                client::write_stdin_end(wbuf, id);
                return true;
            }
            None => break,
        }
    }
    false
}

/// Stream the rest of the body to the worker and its response to the front, together,
/// until the response ends one way or another.
#[allow(clippy::too_many_arguments)]
async fn relay<S: BodySource, K: ResponseSink>(
    rd: &mut ReadHalf<'_>,
    wr: &mut WriteHalf<'_>,
    decoder: &mut client::ClientConnection,
    source: &mut S,
    sink: &mut K,
    info: &RequestInfo<'_>,
    (worker, id): (&crate::worker_handle::WorkerHandle, u16),
    st: &mut RespState,
    body_sent: &AtomicBool,
    body_done: bool,
) -> RespEnd {
    let pump = pump_body(source, wr, info, body_sent, body_done, id);
    let resp = forward(rd, decoder, sink, info, (worker, id), st);
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
}

/// Send the body still to come to the worker, then wait for the front to give up.
async fn pump_body<S: BodySource>(
    source: &mut S,
    wr: &mut WriteHalf<'_>,
    info: &RequestInfo<'_>,
    body_sent: &AtomicBool,
    body_done: bool,
    id: u16,
) -> PumpEnd {
    if !body_done {
        let mut pbuf = BytesMut::new();
        loop {
            let next = source.next_chunk().await;
            tracing::trace!(request_id = info.id, chunk = ?next.as_ref().map(|c| c.as_ref().map(|b| b.len())), "body chunk for the worker");
            match next {
                Ok(Some(chunk)) => {
                    pbuf.clear();
                    client::write_stdin(&mut pbuf, id, &chunk);
                    if wr.write_all(&pbuf).await.is_err() {
                        return PumpEnd::WorkerGone;
                    }
                }
                Ok(None) => {
                    pbuf.clear();
                    client::write_stdin_end(&mut pbuf, id);
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
}
/// GET, HEAD, OPTIONS and TRACE: a request that may be sent again (RFC 9110, 9.2.1).
fn is_safe_method(params: &Params) -> bool {
    matches!(params.get(b"REQUEST_METHOD"), Some(b"GET" | b"HEAD" | b"OPTIONS" | b"TRACE"))
}

/// Send FCGI_ABORT_REQUEST for request `id`; None when the connection failed.
async fn send_abort(wr: &mut WriteHalf<'_>, id: u16, info: &RequestInfo<'_>, body_sent: bool) -> Option<Aborting> {
    let mut abort = BytesMut::with_capacity(16);
    client::write_abort(&mut abort, id);
    wr.write_all(&abort).await.ok()?;
    Some(Aborting { request_id: info.id.into(), uri: info.uri.into(), body_sent })
}

/// A request the worker was told to abort, on the slot until its END_REQUEST comes.
#[derive(Debug)]
pub(crate) struct Aborting {
    request_id: Box<str>,
    uri: Box<str>,
    /// The whole body had gone to the worker (else the connection is replaced after).
    body_sent: bool,
}

impl SlotConn {
    /// After [`SlotFate::Aborted`]: discard the worker's output until it ends the aborted
    /// request, and say what to do with the slot then. The slot stays busy meanwhile (a
    /// thread of the worker still runs the request). One not ended within `grace` (the
    /// pool's abort-grace; None: no limit) is abandoned (`Dispatcher::abandon`): the pool manager replaces
    /// the worker, whose other requests get graceful-timeout, and this waits on until the
    /// request ends or the worker is gone.
    pub(crate) async fn finish_abort(
        &mut self,
        dispatcher: &crate::dispatch::Dispatcher<Self>,
        grace: Option<Duration>,
    ) -> SlotFate {
        let Some(aborting) = self.aborting.take() else { return SlotFate::Reconnect };
        let ended = match grace {
            // `abort-grace: 0`: the request runs on until it ends (or request-timeout).
            None => self.drain_aborted(&aborting).await,
            Some(grace) => match tokio::time::timeout(grace, self.drain_aborted(&aborting)).await {
                Ok(ended) => ended,
                Err(_) => {
                    // The manager logs it, with what happens to the worker.
                    dispatcher.abandon(self.key);
                    self.drain_aborted(&aborting).await
                }
            },
        };
        if ended && aborting.body_sent {
            SlotFate::Reuse
        } else {
            // Cut short or broken: a fresh connection, if the worker is still there.
            SlotFate::Reconnect
        }
    }

    /// Read and drop the worker's records until the END_REQUEST of the aborted request
    /// (true) or the connection's end (false). Cancel-safe: what was read stays in the
    /// decoder.
    async fn drain_aborted(&mut self, a: &Aborting) -> bool {
        let id = self.req_id;
        loop {
            loop {
                match self.decoder.next_event() {
                    Ok(Some(ClientEvent::EndRequest { id: ended, .. })) if ended == id => return true,
                    Ok(Some(ClientEvent::Stderr { data, .. })) => {
                        log_stderr(&self.worker, &a.request_id, &a.uri, &data)
                    }
                    Ok(Some(_)) => {}
                    Ok(None) => break,
                    Err(_) => return false,
                }
            }
            let b = self.decoder.buffer_mut();
            b.reserve(16 << 10);
            match self.stream.read_buf(b).await {
                Ok(0) | Err(_) => return false,
                Ok(_) => {}
            }
        }
    }
}

/// Read the worker's records and pass the response on until END_REQUEST.
async fn forward<K: ResponseSink>(
    rd: &mut ReadHalf<'_>,
    decoder: &mut client::ClientConnection,
    sink: &mut K,
    info: &RequestInfo<'_>,
    (worker, id): (&crate::worker_handle::WorkerHandle, u16),
    st: &mut RespState,
) -> RespEnd {
    let (pool, pid) = (&*worker.pool, worker.pid);
    let mut pending = BytesMut::new();
    loop {
        let mut ended: Option<(u32, ProtocolStatus)> = None;
        loop {
            let ev = match decoder.next_event() {
                Ok(Some(ev)) => ev,
                Ok(None) => break,
                Err(e) => {
                    if !pending.is_empty() && st.front.open() {
                        let _ = sink.send(pending.split().freeze(), None).await;
                    }
                    return RespEnd::WorkerBroken(format!("protocol error from the worker: {e}"));
                }
            };
            let passed = match ev {
                ClientEvent::Stdout { id: other, .. }
                | ClientEvent::Stderr { id: other, .. }
                | ClientEvent::EndRequest { id: other, .. }
                    if other != id =>
                {
                    // Only the current request is answered: a piped one starts after it.
                    if worker.app_lines.admit(pool, pid, 0) {
                        tracing::warn!(
                            pool,
                            pid,
                            request_id = info.id,
                            "worker sent a record for request id {other} during request id {id}; ignored"
                        );
                    }
                    Ok(())
                }
                ClientEvent::Stdout { data, .. } => on_stdout(st, data, &mut pending, sink, info, pool, pid).await,
                ClientEvent::Stderr { data, .. } => {
                    log_stderr(worker, info.id, info.uri, &data);
                    Ok(())
                }
                ClientEvent::EndRequest { app_status, protocol_status, .. } => {
                    ended = Some((app_status, protocol_status));
                    break;
                }
                _ => Ok(()),
            };
            if passed.is_err() {
                return RespEnd::FrontGone;
            }
        }
        if let Some((app_status, protocol_status)) = ended {
            return on_end_request(st, &mut pending, sink, info, pool, pid, app_status, protocol_status).await;
        }
        // The whole declared body is here: what follows is END_REQUEST, typically one
        // write later (the app's close() runs in between). Holding the last bytes for it
        // lets head, body and END_REQUEST reach the web server in one write instead of two
        // — without delaying a streamed response, whose length is unknown or not reached.
        let hold = !pending.is_empty() && st.front.open() && st.content_length.is_some_and(|len| st.body_bytes >= len);
        if !hold && !pending.is_empty() && st.front.open() && sink.send(pending.split().freeze(), None).await.is_err() {
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

/// One STDOUT record: the header block until it is whole, then body bytes, coalesced
/// in `pending` up to [`COALESCE`].
async fn on_stdout<K: ResponseSink>(
    st: &mut RespState,
    data: Bytes,
    pending: &mut BytesMut,
    sink: &mut K,
    info: &RequestInfo<'_>,
    pool: &str,
    pid: u32,
) -> Result<(), FrontGone> {
    match st.front {
        Front::Done | Front::HandedOn(_) => Ok(()),
        Front::Body => {
            let data = st.within_limit(data);
            if data.is_empty() {
                return Ok(());
            }
            st.body_bytes += data.len() as u64;
            if pending.len() + data.len() <= COALESCE {
                pending.extend_from_slice(&data);
            } else {
                if !pending.is_empty() {
                    sink.send(pending.split().freeze(), None).await?;
                }
                sink.send(data, None).await?;
            }
            Ok(())
        }
        Front::Head => match take_head(st, data, info, pool, pid) {
            Ok(Some((head, rest))) => {
                *pending = head;
                st.arm_body_limit();
                let rest = st.within_limit(rest);
                st.body_bytes += rest.len() as u64;
                if rest.len() <= COALESCE {
                    pending.extend_from_slice(&rest);
                } else {
                    sink.send(pending.split().freeze(), None).await?;
                    sink.send(rest, None).await?;
                }
                Ok(())
            }
            Ok(None) => Ok(()),
            Err(status) => {
                // Answered at once, while the worker may still be writing: a head that
                // cannot be passed on gets the bridge's plain error, never an error page.
                st.status = status;
                st.front = Front::Done;
                sink.send(respond::error_response(status, None).freeze(), Some(End::Complete)).await
            }
        },
    }
}

/// END_REQUEST: end the response toward the front — complete, or cut off when the app
/// failed or sent less than it declared. A response without a complete head is left to
/// the bridge ([`RespState::next_after_end`]).
#[allow(clippy::too_many_arguments)]
async fn on_end_request<K: ResponseSink>(
    st: &mut RespState,
    pending: &mut BytesMut,
    sink: &mut K,
    info: &RequestInfo<'_>,
    pool: &str,
    pid: u32,
    app_status: u32,
    protocol_status: ProtocolStatus,
) -> RespEnd {
    if !st.front.open() {
        return RespEnd::Ended;
    }
    if protocol_status != ProtocolStatus::RequestComplete {
        tracing::error!(
            pool,
            pid,
            request_id = info.id,
            uri = info.uri,
            "worker refused the request: {protocol_status:?}"
        );
    }
    let end = if matches!(st.front, Front::Head) {
        if protocol_status == ProtocolStatus::RequestComplete {
            tracing::error!(
                pool,
                pid,
                request_id = info.id,
                uri = info.uri,
                "worker ended the request without a complete header block, answering 502"
            );
        }
        return RespEnd::Ended;
    } else if app_status != 0 {
        tracing::error!(
            pool,
            pid,
            request_id = info.id,
            uri = info.uri,
            app_status,
            "the app failed after sending headers, response cut off"
        );
        End::CutOff
    } else if st.body_bytes < st.body_limit && st.body_limit != u64::MAX {
        // A short body that ends normally would look complete to a web server
        // that does not count (and to its cache).
        tracing::error!(
            pool,
            pid,
            request_id = info.id,
            uri = info.uri,
            declared = st.body_limit,
            sent = st.body_bytes,
            "the program ended the response before the body its Content-Length declared, response cut off"
        );
        End::CutOff
    } else {
        End::Complete
    };
    if st.excess > 0 && st.body_limit == 0 && matches!(st.status, 204 | 304) {
        tracing::warn!(
            pool,
            pid,
            request_id = info.id,
            uri = info.uri,
            "a {} response has no body; the {} bytes the program sent with it were dropped",
            st.status,
            st.excess
        );
    } else if st.excess > 0 {
        tracing::error!(
            pool,
            pid,
            request_id = info.id,
            uri = info.uri,
            declared = st.body_limit,
            sent = st.body_bytes + st.excess,
            "the program sent more body than its Content-Length declared; the {} bytes past it were dropped",
            st.excess
        );
    }
    st.front = Front::Done;
    // Even when the front is gone by now, the worker's side is complete: the slot is clean.
    let _ = sink.send(pending.split().freeze(), Some(end)).await;
    RespEnd::Ended
}

/// Accumulate the CGI header block. `Ok(Some((encoded head, body bytes after it)))` once
/// complete; `Err(status)` when it cannot be passed on.
fn take_head(
    st: &mut RespState,
    data: Bytes,
    info: &RequestInfo<'_>,
    pool: &str,
    pid: u32,
) -> Result<Option<(BytesMut, Bytes)>, u16> {
    const MAX_HEAD: usize = fastcgi_server::cgi::MAX_RESPONSE_HEAD;
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
    st.content_length = head.content_length;
    if head.location.is_some() {
        if let Some(target) = respond::redirect::local_target(&head) {
            st.front = Front::HandedOn(respond::Handoff::Local(target));
            return Ok(None);
        }
    }
    if let Some(ov) = info.error_pages {
        if let Some(replaced) = respond::error_override::on_head(ov, &mut head) {
            st.front = Front::HandedOn(replaced);
            return Ok(None);
        }
    }
    if let Some(files) = info.files {
        match files.decide(&mut head, pid, info.reader) {
            respond::file_handoff::Decision::Forward => {}
            respond::file_handoff::Decision::Serve(file) => {
                st.front = Front::HandedOn(respond::Handoff::File(file));
                return Ok(None);
            }
            respond::file_handoff::Decision::Refuse { header, why } => {
                // Passed on, the header would show a filesystem path to the client.
                tracing::error!(
                    pool,
                    pid,
                    request_id = info.id,
                    uri = info.uri,
                    header,
                    "file hand-off dropped, answering 500: {why}"
                );
                return Err(500);
            }
        }
    }
    if head.headers.iter().any(|(name, _)| fastcgi_server::cgi::is_file_handoff(name)) {
        // Passed on to the web server, which sends the file: the body is not the client's,
        // and the Content-Length (the file's, as Flask's send_file gives it) no promise of it.
        st.content_length = None;
    }
    let extra = if rest.len() <= COALESCE { rest.len() } else { 0 };
    match respond::encode_head(&head, extra) {
        Ok((status, buf)) => {
            st.status = status;
            st.front = Front::Body;
            Ok(Some((buf, rest)))
        }
        Err(e) => {
            tracing::error!(
                pool,
                pid,
                request_id = info.id,
                uri = info.uri,
                "invalid response header from the app, answering 500: {e}"
            );
            Err(500)
        }
    }
}

fn bad_head(info: &RequestInfo<'_>, pool: &str, pid: u32, why: &fastcgi_server::Error) -> u16 {
    // A control character in a value is the app's header (response splitting): 500.
    // Anything else means the worker spoke broken CGI: 502.
    let status = if matches!(why, fastcgi_server::Error::CgiBadHeaderValue { .. }) { 500 } else { 502 };
    tracing::error!(
        pool,
        pid,
        request_id = info.id,
        uri = info.uri,
        "invalid response header block from the worker, answering {status}: {why}"
    );
    status
}

/// A worker's STDERR record (wsgi.errors, tracebacks): one log line per line, or in JSON
/// one event for the record (`logging::keeps_lines_together`). A record that holds a
/// Python traceback (the worker writes one whole, in one record) is logged at ERROR, where
/// operators alert; anything else the app writes there at WARN.
fn log_stderr(worker: &crate::worker_handle::WorkerHandle, request_id: &str, uri: &str, data: &[u8]) {
    let (pool, pid) = (&*worker.pool, worker.pid);
    let traceback = crate::logging::app_lines::holds_a_failure(data);
    // Every line repeats the URI: its start is enough to find the request.
    let uri = &*crate::logging::escape::prefix(uri, 256);
    let log = |text: &str| {
        if traceback {
            tracing::error!(pool, pid, request_id, uri, "{text}");
        } else {
            tracing::warn!(pool, pid, request_id, uri, "{text}");
        }
    };
    let text = String::from_utf8_lossy(data);
    if worker.hold(&text) {
        return; // the worker's ready-check: logged once its start is decided
    }
    // Each line counts against the worker's budget, also when the record is one event.
    let lines = text.lines().filter(|l| !l.is_empty() && worker.app_lines.admit(pool, pid, l.len()));
    if crate::logging::keeps_lines_together() {
        let text = crate::logging::app_lines::clean_lines(lines);
        if !text.is_empty() {
            log(&text);
        }
    } else {
        lines.for_each(|line| log(&crate::logging::escape::clean(line)));
    }
}

#[cfg(test)]
mod length_tests {
    use super::*;

    fn state(status: u16, content_length: Option<u64>, head_request: bool) -> RespState {
        let mut st = RespState { front: Front::Body, status, content_length, ..RespState::new(head_request) };
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
        for st in [state(200, Some(5), true), state(204, Some(5), true), state(200, None, false)] {
            assert_eq!(st.body_limit, u64::MAX);
        }
        // 204 and 304 never carry a body, whatever the app sends or declares.
        for st in [state(204, Some(5), false), state(304, None, false)] {
            assert_eq!(st.body_limit, 0);
        }
        let mut st = state(200, None, false);
        assert_eq!(relay(&mut st, b"0123456789").len(), 10);
        assert_eq!(st.excess, 0);
    }
}

#[cfg(test)]
mod unread_tests {
    use super::*;
    use crate::flow::NoBody;
    use crate::worker_handle::WorkerHandle;
    use std::sync::Arc;

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
        let dir = crate::scratch::scratch_dir(&format!("unread-{method}"));
        let path = dir.join("w.sock");
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
        let info =
            RequestInfo { id: "r1", uri: "/", role: Role::Responder, error_pages: None, files: None, reader: None };
        let mut sink = Collect::default();
        let outcome = exchange(&mut slot, &info, &params, &mut NoBody, &mut sink, First::Encode, None).await;
        dies.await.expect("worker task");
        (outcome, sink.0)
    }

    #[test]
    fn a_kept_first_write_is_retargeted_with_its_claim() {
        use fastcgi_server::server::{ServerConnection, ServerEvent};
        let mut params = Params::default();
        params.insert(&b"REQUEST_METHOD"[..], &b"GET"[..]);
        // One the web server sent is not the bridge's claim: dropped.
        params.insert(&b"FCGIBRIDGE_CLAIM"[..], &b"0001.0000000001"[..]);
        let info =
            RequestInfo { id: "9", uri: "/", role: Role::Responder, error_pages: None, files: None, reader: None };
        let kept = encode_kept(&info, &params, &mut NoBody).expect("the whole request");
        let mut buf = BytesMut::from(&kept[..]);
        retarget(&mut buf, 2, Some((3, 7)));
        let mut dec = ServerConnection::new(fastcgi_server::Limits::default());
        dec.buffer_mut().extend_from_slice(&buf);
        let mut seen = Vec::new();
        while let Some(ev) = dec.next_event().expect("valid records") {
            match ev {
                ServerEvent::BeginRequest { id, .. } => seen.push(format!("begin {id}")),
                ServerEvent::Params { id, params } => {
                    let claim =
                        String::from_utf8_lossy(params.get(b"FCGIBRIDGE_CLAIM").unwrap_or_default()).into_owned();
                    seen.push(format!("params {id} {claim}"));
                }
                ServerEvent::StdinEnd { id } => seen.push(format!("stdin-end {id}")),
                _ => {}
            }
        }
        assert_eq!(seen, ["begin 2", "params 2 0003.0000000007", "stdin-end 2"]);
        // Sent on a free connection instead: no claim.
        retarget(&mut buf, 1, None);
        assert_eq!(&buf[CLAIM_AT..CLAIM_AT + NO_CLAIM.len()], NO_CLAIM);
    }

    #[tokio::test]
    async fn a_safe_request_left_unread_by_a_dying_worker_goes_to_another() {
        let (outcome, sent) = outcome_of_unread("GET").await;
        assert!(matches!(outcome.next, Next::Retry(_)), "status {}", outcome.status);
        assert!(sent.is_empty(), "nothing may reach the web server before the retry");
    }

    #[tokio::test]
    async fn a_retry_after_an_unread_request_carries_only_that_request_not_the_one_piped_behind() {
        use crate::dispatch::{Dispatcher, Ticket};
        use fastcgi_server::server::{ServerConnection, ServerEvent};
        let dir = crate::scratch::scratch_dir("unread-piped");
        let path = dir.join("w.sock");
        let listener = tokio::net::UnixListener::bind(&path).expect("bind");
        // It exits once both requests are in its socket, unread.
        let dies = tokio::spawn(async move {
            let (s, _) = listener.accept().await.expect("accept");
            let mut buf = vec![0u8; 1 << 16];
            loop {
                let n = peek(&s, &mut buf).await;
                if begin_records(&buf[..n]) >= 2 {
                    break;
                }
                tokio::task::yield_now().await;
            }
            drop(s);
        });
        let page = Arc::new(crate::claim::ClaimPage::new().expect("page"));
        let worker = Arc::new(WorkerHandle::new("p".into(), 1, path.clone()).with_claims(Some(page)));
        let d = Arc::new(Dispatcher::<crate::backend::SlotConn>::new(8, Duration::from_secs(30)));
        let key = d.add_conn(d.add_worker(0), None).expect("conn");
        let (mut slot, _) = crate::backend::SlotConn::connect(worker).await.expect("connect");
        slot.set_key(key);
        let mut params = Params::default();
        params.insert(&b"REQUEST_METHOD"[..], &b"GET"[..]);
        let info =
            RequestInfo { id: "r1", uri: "/", role: Role::Responder, error_pages: None, files: None, reader: None };
        let kept = encode_kept(&info, &params, &mut NoBody).expect("kept");
        let d2 = d.clone();
        let waiter = tokio::spawn(async move {
            let t = Ticket { method: b"GET", uri: b"/p", request_id: 99, started: std::time::Instant::now() };
            d2.acquire_piped(&t, Some(kept), std::future::pending()).await.map(|g| g.sent)
        });
        while d.waiting() < 1 {
            tokio::task::yield_now().await;
        }
        let outcome =
            exchange(&mut slot, &info, &params, &mut NoBody, &mut Collect::default(), First::Encode, Some(&*d)).await;
        dies.await.expect("worker task");
        waiter.abort();
        assert_eq!(d.view().counters.piped, 1, "a request was piped behind");
        assert!(matches!(outcome.next, Next::Retry(_)));
        let mut dec = ServerConnection::new(fastcgi_server::Limits::default());
        dec.buffer_mut().extend_from_slice(&slot.wbuf);
        let mut begins = 0;
        while let Ok(Some(ev)) = dec.next_event() {
            begins += usize::from(matches!(ev, ServerEvent::BeginRequest { .. }));
        }
        assert_eq!(begins, 1, "the retry's first write is its own request alone");
    }

    /// What is in `s`'s receive queue, left there, once there is something new.
    async fn peek(s: &tokio::net::UnixStream, buf: &mut [u8]) -> usize {
        use nix::sys::socket::{recv, MsgFlags};
        use std::os::fd::AsRawFd;
        loop {
            s.readable().await.expect("readable");
            match s.try_io(tokio::io::Interest::READABLE, || {
                recv(s.as_raw_fd(), buf, MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT).map_err(std::io::Error::from)
            }) {
                Ok(n) => return n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(e) => panic!("peek: {e}"),
            }
        }
    }

    /// BEGIN_REQUEST records in whole records at the start of `buf`.
    fn begin_records(buf: &[u8]) -> usize {
        let (mut at, mut n) = (0, 0);
        while at + 8 <= buf.len() {
            n += usize::from(buf[at + 1] == 1);
            at += 8 + usize::from(u16::from_be_bytes([buf[at + 4], buf[at + 5]])) + usize::from(buf[at + 6]);
        }
        n
    }

    /// A body given in chunks, then its end.
    struct Chunks(std::collections::VecDeque<Option<Bytes>>);
    impl BodySource for Chunks {
        fn ready(&mut self) -> Option<Option<Bytes>> {
            self.0.pop_front()
        }
        async fn next_chunk(&mut self) -> Result<Option<Bytes>, FrontGone> {
            Ok(self.0.pop_front().flatten())
        }
        async fn aborted(&mut self) {
            std::future::pending::<()>().await;
        }
    }

    #[test]
    fn a_kept_write_holds_a_whole_body_that_with_its_params_passes_the_first_write_limit() {
        let mut params = Params::default();
        params.insert(&b"REQUEST_METHOD"[..], &b"POST"[..]);
        params.insert(&b"CONTENT_LENGTH"[..], &b"64512"[..]);
        params.insert(&b"HTTP_COOKIE"[..], vec![b'c'; 1000]);
        let info =
            RequestInfo { id: "9", uri: "/", role: Role::Responder, error_pages: None, files: None, reader: None };
        let mut src = Chunks([Some(Bytes::from(vec![b'x'; 64512])), None].into_iter().collect());
        let kept = encode_kept(&info, &params, &mut src).expect("the whole request is kept");
        assert_eq!(src.ready(), None, "everything was taken");
        let mut dec = fastcgi_server::server::ServerConnection::new(fastcgi_server::Limits::default());
        dec.buffer_mut().extend_from_slice(&kept);
        let (mut body, mut ended) = (0, false);
        while let Ok(Some(ev)) = dec.next_event() {
            match ev {
                fastcgi_server::server::ServerEvent::StdinEnd { .. } => ended = true,
                fastcgi_server::server::ServerEvent::Stdin { data, .. } => body += data.len(),
                _ => {}
            }
        }
        assert_eq!((body, ended), (64512, true));
    }

    /// A front that is gone as soon as the request is under way.
    struct Gone;
    impl BodySource for Gone {
        fn ready(&mut self) -> Option<Option<Bytes>> {
            Some(None)
        }
        async fn next_chunk(&mut self) -> Result<Option<Bytes>, FrontGone> {
            Ok(None)
        }
        async fn aborted(&mut self) {}
    }

    /// A worker that reads the request and its ABORT_REQUEST, and ends the request only
    /// when `end` fires (a sync view that never looks for a disconnect).
    async fn sleeps_through_the_abort(listener: tokio::net::UnixListener, end: tokio::sync::oneshot::Receiver<()>) {
        use fastcgi_server::server::{write_end_request, ServerConnection, ServerEvent};
        let (mut s, _) = listener.accept().await.expect("accept");
        let mut dec = ServerConnection::new(fastcgi_server::Limits::default());
        'read: loop {
            while let Ok(Some(ev)) = dec.next_event() {
                if let ServerEvent::Abort { .. } = ev {
                    break 'read;
                }
            }
            assert!(s.read_buf(dec.buffer_mut()).await.expect("read") > 0, "the bridge hung up");
        }
        let _ = end.await;
        let mut out = BytesMut::new();
        write_end_request(&mut out, WORKER_REQUEST_ID, 0, ProtocolStatus::RequestComplete, Default::default());
        s.write_all(&out).await.expect("write");
        std::future::pending::<()>().await;
    }

    /// A slot whose request the web server aborted and the worker runs on, and `finish_abort`
    /// of it with `grace` spawned; the app ends the request when `end` is sent.
    async fn an_abort_the_worker_runs_on(name: &str, grace: Option<Duration>) -> RunsOn {
        use crate::dispatch::{Dispatcher, Ticket};
        let dir = crate::scratch::scratch_dir(name);
        let path = dir.join("w.sock");
        let listener = tokio::net::UnixListener::bind(&path).expect("bind");
        let (end_tx, end_rx) = tokio::sync::oneshot::channel();
        let app = tokio::spawn(sleeps_through_the_abort(listener, end_rx));
        let d = Arc::new(Dispatcher::<crate::backend::SlotConn>::new(8, Duration::from_secs(30)));
        let w = d.add_worker(0);
        let worker = Arc::new(WorkerHandle::new("p".into(), 1, path.clone()));
        let (mut slot, _) = crate::backend::SlotConn::connect(worker).await.expect("connect");
        slot.set_key(d.add_conn(w, None).expect("conn"));
        d.release(slot);
        let t = Ticket { method: b"GET", uri: b"/slow", request_id: 4, started: std::time::Instant::now() };
        let mut slot = d.acquire(&t).await.expect("slot");
        let mut params = Params::default();
        params.insert(&b"REQUEST_METHOD"[..], &b"GET"[..]);
        let info =
            RequestInfo { id: "4", uri: "/slow", role: Role::Responder, error_pages: None, files: None, reader: None };
        let outcome =
            exchange(&mut slot, &info, &params, &mut Gone, &mut Collect::default(), First::Encode, None).await;
        // The request is over for the front at once; the worker's end of it comes later.
        assert_eq!((outcome.status, outcome.fate), (499, SlotFate::Aborted));
        let d2 = d.clone();
        let finishing = tokio::spawn(async move { (slot.finish_abort(&d2, grace).await, slot) });
        RunsOn { d, w, finishing, end_tx, app, _dir: dir }
    }

    /// An aborted request its worker runs on ([`an_abort_the_worker_runs_on`]).
    struct RunsOn {
        d: Arc<crate::dispatch::Dispatcher<crate::backend::SlotConn>>,
        w: crate::dispatch::WorkerKey,
        finishing: tokio::task::JoinHandle<(SlotFate, crate::backend::SlotConn)>,
        end_tx: tokio::sync::oneshot::Sender<()>,
        app: tokio::task::JoinHandle<()>,
        /// Where the app's socket is; removed when this is dropped.
        _dir: crate::scratch::ScratchDir,
    }

    impl RunsOn {
        /// The app ends the request at last: the slot is free again and its connection serves on.
        async fn app_ends_it(self) {
            let Self { d, w, finishing, end_tx, app, .. } = self;
            assert!(!finishing.is_finished());
            end_tx.send(()).expect("the app waits");
            let (fate, slot) = finishing.await.expect("task");
            assert_eq!(fate, SlotFate::Reuse, "ended cleanly: the connection serves on");
            d.release(slot);
            assert_eq!(d.worker_view(w, false).map(|v| (v.busy, v.abandoned, v.served)), Some((0, 0, 1)));
            app.abort();
        }
    }

    #[tokio::test(start_paused = true)]
    async fn an_abort_the_worker_does_not_end_in_time_is_abandoned_and_keeps_its_slot_busy() {
        let grace = crate::config::supervision::DEFAULT_ABORT_GRACE;
        let run = an_abort_the_worker_runs_on("abandon", Some(grace)).await;
        let (d, w) = (&run.d, run.w);
        tokio::time::sleep(grace - Duration::from_secs(1)).await;
        assert!(d.take_abandoned().is_empty(), "within the grace");
        tokio::time::sleep(Duration::from_secs(2)).await;
        let told = d.take_abandoned();
        assert_eq!(told.iter().map(|a| (a.request_id, a.uri.as_str())).collect::<Vec<_>>(), [(4, "/slow")]);
        // Its thread still runs the request: the slot stays busy, nobody kills the worker.
        assert_eq!(d.worker_view(w, false).map(|v| (v.busy, v.abandoned)), Some((1, 1)));
        run.app_ends_it().await;
    }

    #[tokio::test(start_paused = true)]
    async fn with_abort_grace_off_an_aborted_request_runs_on_and_is_never_abandoned() {
        let run = an_abort_the_worker_runs_on("no-grace", None).await;
        let (d, w) = (&run.d, run.w);
        tokio::time::sleep(Duration::from_secs(3600)).await;
        assert!(d.take_abandoned().is_empty(), "abort-grace: 0 abandoned it");
        assert_eq!(d.worker_view(w, false).map(|v| (v.busy, v.abandoned)), Some((1, 0)));
        run.app_ends_it().await;
    }

    #[tokio::test]
    async fn an_unsafe_request_left_unread_is_answered_502() {
        let (outcome, sent) = outcome_of_unread("POST").await;
        // The bridge's 502 (or error page) is answered by dispatch/serve.rs.
        assert!(matches!(outcome.next, Next::Error(502)), "{:?}", outcome.next);
        assert_eq!(outcome.status, 502);
        assert!(sent.is_empty(), "{}", String::from_utf8_lossy(&sent));
    }
}
