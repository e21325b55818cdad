//! One FastCGI connection from the bridge and the request it is serving.
//!
//! Everything in here runs without Python: it is called with the GIL released
//! (blocking I/O) or briefly with the GIL held (bookkeeping). The Python-facing
//! objects of a request reach it through [`Shared`].
use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use fastcgi_server::record::Padding;
use fastcgi_server::server::{
    write_end_request, write_get_values_result, write_stderr, write_stdout, write_unknown_type, ServerConnection,
    ServerEvent,
};
use fastcgi_server::{Limits, Params, ProtocolStatus, Role};
use pyo3::sync::MutexExt;
use pyo3::Python;

use crate::claim::Claim;
use crate::direct::{Direct, Tag};
use crate::sys::{self, Recv};

/// Output is sent once this much is buffered (and at every flush point).
pub(crate) const OUT_HIGH: usize = 256 * 1024;
/// See [`Conn::flush_point`].
const POLL_INTERVAL: Duration = Duration::from_millis(1);
/// Body bytes that may share a record with the header block.
const SHARED_RECORD_MAX: usize = 16 * 1024;
/// Chunks up to this size are queued and sent with the GIL held (see
/// [`Shared::send_chunk`]); larger ones are copied out in OUT_HIGH pieces with it released.
const NONBLOCKING_CHUNK_MAX: usize = 64 * 1024;
/// How long a fatal signal's handler waits for a lock that another thread holds for a
/// moment (the flusher looking at a held response, a thread registering a connection):
/// long enough for a holder the scheduler preempted, bounded because the holder may be the
/// thread that crashed.
const CRASH_LOCK_WAIT: Duration = Duration::from_millis(20);
/// Bytes asked of each recv(2).
const RECV_CHUNK: usize = 64 * 1024 + 64;
/// While the app writes output we drain the socket (to see an ABORT_REQUEST);
/// body bytes the app has not read yet are buffered up to this much, then left
/// in the socket until the app reads them.
const MAX_READAHEAD: usize = 1 << 20;

/// Room in `buf` for one more receive of [`RECV_CHUNK`] bytes. Unlike `BytesMut::reserve`,
/// which aborts the whole process when the allocation fails, a failure here is false: under
/// the pool's `rlimit-as` a body read whole must cost its request a MemoryError (500), not
/// every request of the worker a 502.
fn make_room(buf: &mut bytes::BytesMut) -> bool {
    if buf.capacity() - buf.len() >= RECV_CHUNK || buf.try_reclaim(RECV_CHUNK) {
        return true;
    }
    let mut grown = Vec::new();
    if grown.try_reserve_exact(buf.len() + RECV_CHUNK).is_err() {
        return false;
    }
    grown.extend_from_slice(buf);
    *buf = bytes::BytesMut::from(bytes::Bytes::from(grown));
    true
}

pub(crate) struct Shared {
    conn: Mutex<Conn>,
    /// Serial of the request being served (0: none), readable without the lock:
    /// objects of an ended request (kept by an app thread) must not wait for the
    /// lock, which the serving thread holds while it waits for the next request.
    current: Arc<AtomicU64>,
    /// A complete response is held for its END_REQUEST ([`Conn::hold`]), readable without
    /// the lock by the flusher thread.
    held: Arc<AtomicBool>,
}

/// From a fatal signal's handler: the lock, once it is free or at once if it is; `None`
/// when it stays held for [`CRASH_LOCK_WAIT`] or its holder panicked. It yields between
/// tries rather than sleep on the lock: no allocation, no futex wait in a handler.
pub(crate) fn try_lock_in_crash<T>(m: &Mutex<T>) -> Option<MutexGuard<'_, T>> {
    let since = Instant::now();
    loop {
        match m.try_lock() {
            Ok(guard) => return Some(guard),
            Err(std::sync::TryLockError::WouldBlock) if since.elapsed() < CRASH_LOCK_WAIT => std::thread::yield_now(),
            Err(_) => return None,
        }
    }
}

impl Shared {
    pub(crate) fn new(fd: OwnedFd, threads: usize) -> Self {
        let current = Arc::new(AtomicU64::new(0));
        let mut conn = Conn::new(fd, threads, current.clone());
        let held = conn.held_flag.clone();
        conn.may_hold = crate::flusher::running();
        Self { conn: Mutex::new(conn), current, held }
    }
    /// A direct worker's connection, new or handed over by another process of the pool
    /// ([`crate::park`]): parked while no request is here, like one kept after a request.
    pub(crate) fn parkable(fd: OwnedFd, threads: usize) -> Self {
        let shared = Self::new(fd, threads);
        shared.lock().kept = true;
        shared
    }
    /// Send a response held longer than `max` (called by the flusher thread). Skipped
    /// while the serving thread has the lock: then it is sending, or waiting for the next
    /// request with nothing held.
    pub(crate) fn flush_overdue(&self, max: Duration) -> bool {
        if !self.held.load(Ordering::Acquire) {
            return false;
        }
        let mut c = match self.conn.try_lock() {
            Ok(c) => c,
            Err(std::sync::TryLockError::Poisoned(e)) => e.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => return true,
        };
        if c.held_at.is_some_and(|t| t.elapsed() >= max) {
            c.flush();
        }
        c.held_at.is_some()
    }
    /// From a fatal signal's handler ([`crate::crash`]): send the finished response this
    /// connection holds, without waiting for its lock or the socket and without
    /// allocating. What went leaves the buffer (should the process live on, nothing is
    /// sent twice). Whether all of it went.
    pub(crate) fn send_held_on_crash(&self) -> bool {
        if !self.held.load(Ordering::Acquire) {
            return false;
        }
        // Still locked after the wait: its holder crashed, or died holding it.
        let Some(mut c) = try_lock_in_crash(&self.conn) else { return false };
        let Some(fd) = c.fd.as_ref().filter(|_| !c.broken && c.held_at.is_some()).map(|fd| fd.as_raw_fd()) else {
            return false;
        };
        let (sent, _) = sys::send_available(fd, &c.out);
        c.out.drain(..sent);
        c.out.is_empty() && {
            c.release_hold();
            true
        }
    }
    /// Whether request `serial` is over (a cheap check before locking).
    pub(crate) fn is_over(&self, serial: u64) -> bool {
        self.current.load(Ordering::Acquire) != serial
    }
    /// Lock while attached to Python (detaches only if it has to wait).
    pub(crate) fn lock_py(&self, py: Python<'_>) -> MutexGuard<'_, Conn> {
        self.conn.lock_py_attached(py).unwrap_or_else(|e| e.into_inner())
    }
    /// Lock while detached from Python.
    pub(crate) fn lock(&self) -> MutexGuard<'_, Conn> {
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queue a body chunk of request `serial` and transmit it before the app is asked
    /// for the next one (PEP 3333). A small chunk goes out in a non-blocking send with
    /// the GIL held: releasing and retaking the GIL around each write costs more than
    /// the write (with several threads the GIL changes hands each time, a futex wake
    /// and a context switch or two). Only when the socket is full (back-pressure)
    /// does it wait, with the GIL released. False once the request is aborted or its
    /// Content-Length is reached: produce no more.
    pub(crate) fn send_chunk(&self, py: Python<'_>, serial: u64, data: &[u8]) -> bool {
        if data.len() <= NONBLOCKING_CHUNK_MAX {
            let (more, sent) = {
                let mut c = self.lock_py(py);
                let (more, sent) = c.push_chunk(serial, data);
                (more && c.cur(serial).is_some_and(|r| !r.aborted), sent)
            };
            if sent {
                return more;
            }
            return py.detach(|| {
                let mut c = self.lock();
                c.flush();
                more && c.cur(serial).is_some_and(|r| !r.aborted)
            });
        }
        py.detach(|| {
            let mut c = self.lock();
            let more = c.push_body(serial, data, true);
            c.flush_point();
            more && c.cur(serial).is_some_and(|r| !r.aborted)
        })
    }
}

/// The request being served on a connection (one at a time, no multiplexing).
pub(crate) struct Req {
    pub id: u16,
    pub serial: u64,
    pub keep_conn: bool,
    pub params: Option<Params>,
    /// Body bytes received and not yet read by the app.
    stdin: VecDeque<Bytes>,
    pub avail: usize,
    pub stdin_done: bool,
    /// CONTENT_LENGTH as the web server declared it: the app never reads past it.
    body_declared: Option<u64>,
    body_received: u64,
    /// STDIN ended before CONTENT_LENGTH bytes (FastCGI 1.0 section 6.2): input raises as
    /// for a disconnect, never returning a short body.
    pub body_short: bool,
    /// CONTENT_LENGTH is neither a body length nor "unknown" (empty, Caddy's -1): why.
    bad_length: Option<String>,
    /// ABORT_REQUEST received, or the connection broke: input raises, output is dropped.
    pub aborted: bool,
    /// start_response has been called.
    pub started: bool,
    /// `Status: ...\r\n` and the header lines, without the blank line.
    pub head: Vec<u8>,
    pub status_code: u16,
    /// The app's Content-Length: no more body than this is sent, and less ends
    /// the request as cut off.
    pub content_length: Option<u64>,
    /// Content-Length the worker may add when the app gave none (a list result).
    pub auto_content_length: Option<u64>,
    /// The app's head hands the body over as a file (X-Sendfile, X-Accel-Redirect): a body
    /// shorter than its Content-Length is no failure.
    pub hands_off: bool,
    pub is_head: bool,
    pub headers_sent: bool,
    pub body_bytes: u64,
    /// The response ended early because the app raised after the headers were sent.
    pub cut_off: bool,
    /// A complete replacement response (the 500 page) has been written.
    pub replaced: bool,
    /// FCGI_AUTHORIZER role: no body, FCGI_ROLE=AUTHORIZER in the environ (docs/authorizer.md).
    pub authorizer: bool,
    /// The bridge piped it behind another request (`FCGIBRIDGE_CLAIM`): it runs only if
    /// its claim is won ([`crate::claim`]).
    claim: Option<Claim>,
    /// A direct worker's id and `METHOD URI` of the request ([`crate::direct`]).
    pub tag: Option<Tag>,
    /// The serving thread's scoreboard slot (a direct worker), told when the head goes out.
    pub slot: Option<&'static crate::scoreboard::Slot>,
    /// A direct worker's app answered a local redirect to this path (status 200 and
    /// `Location: /path`): its body is dropped, and the worker runs the app again for it.
    pub redirect: Option<Vec<u8>>,
    /// The request was redirected: the app gets no body, and what comes of it is dropped.
    pub body_gone: bool,
}

impl Req {
    fn new(id: u16, keep_conn: bool, serial: u64) -> Self {
        Self {
            id,
            serial,
            keep_conn,
            params: None,
            stdin: VecDeque::new(),
            avail: 0,
            stdin_done: false,
            body_declared: None,
            body_received: 0,
            body_short: false,
            bad_length: None,
            aborted: false,
            started: false,
            head: Vec::new(),
            status_code: 0,
            content_length: None,
            auto_content_length: None,
            hands_off: false,
            is_head: false,
            headers_sent: false,
            body_bytes: 0,
            cut_off: false,
            replaced: false,
            authorizer: false,
            claim: None,
            tag: None,
            slot: None,
            redirect: None,
            body_gone: false,
        }
    }

    /// Why a direct worker answers 400 without running the app, as the bridge would: a
    /// CONTENT_LENGTH that is no body length, or a body that ended before it (all of it here).
    pub(crate) fn refusal(&self) -> Option<String> {
        if let Some(why) = &self.bad_length {
            return Some(why.clone());
        }
        if !self.body_short {
            return None;
        }
        crate::direct::short_body(self.body_received, self.body_declared)
    }

    /// Position just past the first b'\n' among the first `limit` buffered bytes,
    /// scanning from `from` (bytes already known to hold no newline).
    pub(crate) fn find_newline(&self, from: usize, limit: usize) -> Option<usize> {
        let mut base = 0usize;
        for chunk in &self.stdin {
            let end = base + chunk.len();
            if end > from {
                let start = from.saturating_sub(base);
                let stop = chunk.len().min(limit.saturating_sub(base));
                if start < stop {
                    if let Some(p) = chunk[start..stop].iter().position(|&b| b == b'\n') {
                        return Some(base + start + p + 1);
                    }
                }
            }
            base = end;
            if base >= limit {
                break;
            }
        }
        None
    }

    /// Copy the first `dst.len()` buffered body bytes into `dst` and drop them.
    pub(crate) fn take_into(&mut self, dst: &mut [u8]) {
        let mut filled = 0;
        while filled < dst.len() {
            let Some(front) = self.stdin.front_mut() else {
                break;
            };
            let n = front.len().min(dst.len() - filled);
            dst[filled..filled + n].copy_from_slice(&front[..n]);
            filled += n;
            if n == front.len() {
                self.stdin.pop_front();
            } else {
                let _ = front.split_to(n);
            }
        }
        self.avail -= filled;
    }
}

pub(crate) struct Conn {
    fd: Option<OwnedFd>,
    dec: ServerConnection,
    pub out: Vec<u8>,
    /// The bridge closed its side (or the socket failed on read).
    rd_eof: bool,
    /// Writing failed: the connection is unusable.
    broken: bool,
    pub req: Option<Req>,
    /// A request the bridge piped behind `req` (one deep): its input is kept until `req`
    /// ends, then it becomes `req` without waiting for the socket.
    queued: Option<Req>,
    next_serial: u64,
    threads: Bytes,
    /// When the socket was last read.
    last_recv: Instant,
    current: Arc<AtomicU64>,
    /// Since when `out` holds a complete response waiting for its END_REQUEST.
    held_at: Option<Instant>,
    /// `held_at.is_some()`, for the flusher thread (see [`Shared::flush_overdue`]).
    held_flag: Arc<AtomicBool>,
    /// Holding is allowed: the flusher thread runs, so a hold cannot last.
    may_hold: bool,
    /// Serving a `direct` listener: the peer is the web server, not the bridge.
    direct: Option<&'static Direct>,
    /// The FastCGI id of a direct request answered before the web server had sent all its
    /// input: closing the connection now would fail that sending (Apache's 503), so it is
    /// closed lingering ([`Conn::close_lingering`]).
    linger: Option<u16>,
    /// The last request ended with the connection kept for another ([`Conn::finish`]).
    kept: bool,
    /// A direct request's response was cut off after its head: the connection ends without
    /// END_REQUEST, the way [`crate::direct::end_cut_off`] says.
    cut_off: Option<crate::direct::CutOff>,
}

impl Conn {
    fn new(fd: OwnedFd, threads: usize, current: Arc<AtomicU64>) -> Self {
        Self {
            fd: Some(fd),
            dec: ServerConnection::new(Limits::default()),
            out: Vec::with_capacity(16 * 1024),
            rd_eof: false,
            broken: false,
            req: None,
            queued: None,
            next_serial: 0,
            threads: Bytes::from(threads.to_string()),
            last_recv: Instant::now(),
            current,
            held_at: None,
            held_flag: Arc::new(AtomicBool::new(false)),
            may_hold: false,
            direct: crate::direct::config(),
            linger: None,
            kept: false,
            cut_off: None,
        }
    }

    /// Who sends this connection's requests, for log lines.
    fn peer(&self) -> &'static str {
        if self.direct.is_some() {
            "the web server"
        } else {
            "the bridge"
        }
    }

    /// The current request if it is the one `serial` names.
    pub(crate) fn cur(&mut self, serial: u64) -> Option<&mut Req> {
        self.req.as_mut().filter(|r| r.serial == serial)
    }

    /// Serving a `direct` listener (the web server's connection).
    pub(crate) fn is_direct(&self) -> bool {
        self.direct.is_some()
    }

    /// Request `serial`'s app answered a local redirect the worker follows: forget its
    /// response (nothing of it was sent) and its body, and give the request a new serial,
    /// so that the objects of the first run (its start_response, wsgi.input) are done with.
    /// `None` when the request is gone.
    pub(crate) fn restart_for_redirect(&mut self, serial: u64) -> Option<u64> {
        self.next_serial += 1;
        let next = self.next_serial;
        let r = self.cur(serial)?;
        let (id, keep_conn, is_head) = (r.id, r.keep_conn, r.is_head);
        let fresh = Req::new(id, keep_conn, next);
        let kept = std::mem::replace(r, fresh);
        // What belongs to the connection's request stays: its input's progress and state,
        // its id, tag and slot; the redirected request has no body.
        r.stdin_done = kept.stdin_done;
        r.body_declared = kept.body_declared;
        r.body_received = kept.body_received;
        r.aborted = kept.aborted;
        r.authorizer = kept.authorizer;
        r.is_head = is_head;
        r.tag = kept.tag;
        r.slot = kept.slot;
        r.body_gone = true;
        self.current.store(next, Ordering::Release);
        Some(next)
    }

    pub(crate) fn usable(&self) -> bool {
        self.fd.is_some() && !self.broken
    }

    /// Whether closing must wait for the web server's end of input ([`Conn::close_lingering`]).
    pub(crate) fn lingers(&self) -> bool {
        self.linger.is_some() || self.cut_off.is_some()
    }

    /// Close after the web server has sent the rest of the input of the request answered
    /// last (a lingering close, bounded in time and bytes: [`crate::direct::linger`]).
    /// Blocks: call detached from Python.
    pub(crate) fn close_lingering(&mut self) {
        self.send_held();
        if let Some(how) = self.cut_off.take() {
            self.flush();
            if let Some(fd) = self.fd.as_ref().filter(|_| !self.broken) {
                crate::direct::end_cut_off(fd.as_raw_fd(), how);
            }
            self.close();
            return;
        }
        if let (Some(id), Some(fd)) = (self.linger.take(), self.fd.as_ref()) {
            if !self.rd_eof && !self.broken {
                // What the decoder holds starts at a record's first byte.
                let buffered = self.dec.buffer_mut().split();
                crate::direct::linger(fd.as_raw_fd(), id, &buffered);
            }
        }
        self.close();
    }

    /// Close the socket now, even if Python objects still refer to this connection.
    pub(crate) fn close(&mut self) {
        self.send_held();
        self.fd = None;
        self.broken = true;
        self.release_hold();
        if let Some(r) = self.req.as_mut() {
            r.aborted = true;
        }
    }

    fn lost(&mut self) {
        let broken = self.broken;
        for r in [self.req.as_mut(), self.queued.as_mut()].into_iter().flatten() {
            if !r.stdin_done || broken {
                r.aborted = true;
            }
        }
    }

    // ---- input ---------------------------------------------------------

    fn recv(&mut self, nonblocking: bool) -> Recv {
        let Some(fd) = self.fd.as_ref().map(|f| f.as_raw_fd()) else {
            self.rd_eof = true;
            return Recv::Eof;
        };
        if self.rd_eof {
            return Recv::Eof;
        }
        // The body chunks this receive may add (one per record) find room in the request's
        // queue of them first: its growth, too, must fail as a MemoryError, not an abort.
        if self.req.as_mut().is_some_and(|r| r.stdin.try_reserve(RECV_CHUNK / 4096 + 2).is_err()) {
            return Recv::NoMemory;
        }
        let buf = self.dec.buffer_mut();
        if !make_room(buf) {
            return Recv::NoMemory;
        }
        let len = buf.len();
        let res = sys::recv_into(fd, buf.spare_capacity_mut(), nonblocking);
        self.last_recv = Instant::now();
        match res {
            Ok(Recv::Data(n)) => {
                // SAFETY: recv initialised `n` bytes of the spare capacity.
                unsafe { buf.set_len(len + n) };
                Recv::Data(n)
            }
            Ok(Recv::WouldBlock) => Recv::WouldBlock,
            Ok(Recv::NoMemory) => Recv::NoMemory,
            Ok(Recv::Eof) => {
                self.rd_eof = true;
                Recv::Eof
            }
            Err(e) => {
                if e.raw_os_error() != Some(104) {
                    eprintln!("fcgibridge worker: reading from {} failed: {e}", self.peer());
                }
                self.rd_eof = true;
                Recv::Eof
            }
        }
    }

    /// Write END_REQUEST for `id` and make the decoder forget it (its remaining
    /// input, if any, is skipped; the id may begin again).
    fn end_id(&mut self, id: u16, app_status: u32, status: ProtocolStatus) {
        write_end_request(&mut self.out, id, app_status, status, Padding::None);
        self.dec.end_request(id);
    }

    /// Handle every complete event in the receive buffer.
    fn process(&mut self) {
        loop {
            match self.dec.next_event() {
                Ok(None) => return,
                // The decoder reports an ABORT_REQUEST until `end_id`, also once the
                // request's input is complete (the app is producing the response).
                Ok(Some(ev)) => self.on_event(ev),
                Err(e) => {
                    self.bad_input(&e);
                    self.rd_eof = true;
                    self.broken = true;
                    self.lost();
                    return;
                }
            }
        }
    }

    /// Say that the peer sent what the protocol forbids (the connection is closed). A direct
    /// worker's line names the web server and the request when it has one.
    fn bad_input(&self, e: &fastcgi_server::Error) {
        let tag = self.req.as_ref().and_then(|r| r.tag.as_ref());
        match tag {
            Some(tag) => eprintln!(
                "fcgibridge worker: bad FastCGI input from {} (request_id={} {}), closing the connection: {e}",
                self.peer(),
                tag.request_id(),
                String::from_utf8_lossy(tag.line())
            ),
            None => eprintln!("fcgibridge worker: bad FastCGI input from {}, closing the connection: {e}", self.peer()),
        }
    }

    /// The current or the queued request with FastCGI id `id`.
    fn by_id(&mut self, id: u16) -> Option<&mut Req> {
        match (&mut self.req, &mut self.queued) {
            (Some(r), _) if r.id == id => Some(r),
            (_, Some(q)) if q.id == id => Some(q),
            _ => None,
        }
    }

    /// PARAMS of request `id` are complete. A queued request without a claim is one the
    /// bridge did not pipe (a client multiplexing): refused as before, CANT_MPX_CONN.
    fn on_params(&mut self, id: u16, mut params: Params) {
        let direct = self.direct;
        if let Some(d) = direct {
            d.prepare(&mut params);
        }
        let claim = params.remove(b"FCGIBRIDGE_CLAIM").and_then(|v| Claim::parse(&v));
        let Some(r) = self.by_id(id) else { return };
        if r.params.is_some() {
            return;
        }
        r.tag = direct.map(|d| d.tag(&params));
        if r.authorizer && params.get(b"FCGI_ROLE").is_none() {
            params.insert(&b"FCGI_ROLE"[..], &b"AUTHORIZER"[..]);
        }
        match fastcgi_server::content_length::declared(&params) {
            Ok(n) => r.body_declared = n,
            Err(e) => r.bad_length = Some(e.to_string()),
        }
        r.params = Some(params);
        r.claim = claim;
        if claim.is_none() && self.queued.as_ref().is_some_and(|q| q.id == id) {
            self.queued = None;
            self.end_id(id, 0, ProtocolStatus::CantMpxConn);
        }
        self.settle();
    }

    fn on_event(&mut self, ev: ServerEvent) {
        match ev {
            ServerEvent::BeginRequest { id, role, keep_conn } => {
                // A queued request comes before any that begins after it.
                self.settle();
                if self.by_id(id).is_some() {
                    eprintln!("fcgibridge worker: request id {id} began twice, closing the connection");
                    self.rd_eof = true;
                    self.broken = true;
                    self.lost();
                } else if role != Role::Responder && role != Role::Authorizer {
                    self.end_id(id, 0, ProtocolStatus::UnknownRole);
                    // Refused alone on the connection without FCGI_KEEP_CONN: it closes
                    // after the END_REQUEST, as after any request that did not keep it.
                    if !keep_conn && self.req.is_none() {
                        self.kept = false;
                    }
                } else if self.req.is_some() && self.queued.is_some() {
                    self.end_id(id, 0, ProtocolStatus::CantMpxConn);
                } else {
                    self.next_serial += 1;
                    let mut req = Req::new(id, keep_conn, self.next_serial);
                    // An authorizer's input is complete with its PARAMS: it has no body.
                    req.authorizer = role == Role::Authorizer;
                    req.stdin_done = req.authorizer;
                    if self.req.is_some() {
                        // Kept until its PARAMS say whether the bridge piped it.
                        self.queued = Some(req);
                    } else {
                        self.req = Some(req);
                        self.current.store(self.next_serial, Ordering::Release);
                    }
                }
            }
            ServerEvent::Params { id, params } => self.on_params(id, params),
            ServerEvent::Stdin { id, data } => {
                if let Some(r) = self.by_id(id) {
                    let mut data = data;
                    if let Some(declared) = r.body_declared {
                        // Bytes beyond the declared length are dropped, never read.
                        let room = declared.saturating_sub(r.body_received);
                        if (data.len() as u64) > room {
                            data.truncate(room as usize);
                        }
                    }
                    r.body_received += data.len() as u64;
                    if !r.stdin_done && !r.aborted && !r.body_gone && !data.is_empty() {
                        r.avail += data.len();
                        r.stdin.push_back(data);
                    }
                }
            }
            ServerEvent::StdinEnd { id } => {
                if let Some(r) = self.by_id(id) {
                    r.stdin_done = true;
                    r.body_short = r.body_declared.is_some_and(|n| r.body_received < n);
                }
            }
            ServerEvent::Data { .. } | ServerEvent::DataEnd { .. } => {}
            ServerEvent::Abort { id } => {
                if let Some(r) = self.by_id(id) {
                    r.aborted = true;
                }
            }
            ServerEvent::GetValues { names } => {
                let threads = self.threads.clone();
                let mut pairs: Vec<(&[u8], &[u8])> = Vec::new();
                for name in &names {
                    match &name[..] {
                        b"FCGI_MAX_CONNS" => pairs.push((b"FCGI_MAX_CONNS", &threads[..])),
                        b"FCGI_MAX_REQS" => pairs.push((b"FCGI_MAX_REQS", &threads[..])),
                        b"FCGI_MPXS_CONNS" => pairs.push((b"FCGI_MPXS_CONNS", b"0")),
                        _ => {}
                    }
                }
                write_get_values_result(&mut self.out, pairs);
            }
            ServerEvent::UnknownType { record_type } => write_unknown_type(&mut self.out, record_type),
        }
    }

    /// Block until a request's params are complete (`true`) or the connection ends
    /// (`false`). The bridge's connections only: a direct worker parks its connections
    /// between requests ([`crate::park`]).
    pub(crate) fn wait_request(&mut self) -> bool {
        // Waiting for input: the last request's, if it was missing, has come (or is skipped).
        self.linger = None;
        self.kept = false;
        loop {
            if self.buffered_request() {
                return true;
            }
            self.flush();
            if !self.usable() || self.rd_eof {
                return false;
            }
            // Between requests the next one is almost never here yet: a piped one usually
            // came in the read of the current one and is settled above, and the bridge
            // sends any other only once it has read END_REQUEST. Wait first rather than
            // try a recv that fails.
            if let Some(fd) = self.fd.as_ref().map(|f| f.as_raw_fd()) {
                if let Err(e) = sys::wait_readable(fd) {
                    eprintln!("fcgibridge worker: waiting for the bridge failed: {e}");
                }
            }
            // Out of memory between requests: the connection goes (the bridge opens another)
            // rather than spin on bytes it cannot take.
            if let Recv::Eof | Recv::NoMemory = self.recv(false) {
                self.lost();
            }
        }
    }

    /// Whether the next request's PARAMS are complete in what was received (settled, and any
    /// request aborted before the app was called ended). Never waits.
    fn buffered_request(&mut self) -> bool {
        loop {
            self.process();
            self.settle();
            let Some(r) = &self.req else { return false };
            if !r.aborted {
                return r.params.is_some();
            }
            // Aborted before the app was called: nothing to run. Without FCGI_KEEP_CONN
            // the connection closes after its END_REQUEST (a direct worker parks only a kept
            // one).
            let id = r.id;
            self.kept &= r.keep_conn;
            self.req = None;
            self.current.store(0, Ordering::Release);
            self.end_id(id, 1, ProtocolStatus::RequestComplete);
        }
    }

    /// After a request on a kept connection of a direct worker: whether the next one came
    /// with it (pipelined) and can run now. If not, the connection is parked rather than
    /// waited on ([`Conn::parkable`]).
    pub(crate) fn pipelined_request(&mut self) -> bool {
        let ready = self.buffered_request();
        // What a request aborted before it ran queued (its END_REQUEST), unless a response
        // is held for the thread's batch: then it goes with the batch.
        if self.held_at.is_none() {
            self.flush();
        }
        ready
    }

    /// A parked connection has input (or its end): whether a request's PARAMS are complete
    /// now. Never waits: the rest of a request, or the input of one answered before it
    /// ended, leaves the connection parked ([`Conn::parkable`]) rather than pin the thread.
    pub(crate) fn poll_request(&mut self) -> bool {
        self.linger = None;
        loop {
            if self.buffered_request() {
                return true;
            }
            self.flush();
            if !self.usable() || self.rd_eof {
                return false;
            }
            match self.recv(true) {
                Recv::Data(_) => {}
                Recv::WouldBlock => return false,
                Recv::Eof | Recv::NoMemory => {
                    self.lost();
                    return false;
                }
            }
        }
    }

    /// Whether the connection may wait for its next request in a direct worker's epoll set:
    /// its last request kept it (FCGI_KEEP_CONN), it is still open both ways and no request
    /// is ready to run.
    pub(crate) fn parkable(&self) -> bool {
        self.kept && self.usable() && !self.rd_eof && self.req.as_ref().is_none_or(|r| r.params.is_none())
    }

    /// Whether the connection may be handed to another process of the pool: between two
    /// requests with nothing of either buffered here (the next one starts at a record's
    /// first byte on the socket).
    pub(crate) fn relayable(&self) -> bool {
        self.parkable()
            && self.req.is_none()
            && self.queued.is_none()
            && self.out.is_empty()
            && self.held_at.is_none()
            && self.linger.is_none()
            && self.dec.buffered() == 0
            && self.dec.active_requests() == 0
    }

    /// The socket, out of this connection (handed to another process): it is done here.
    pub(crate) fn take_fd(&mut self) -> Option<OwnedFd> {
        self.broken = true;
        self.fd.take()
    }

    /// The socket's descriptor, while it is open.
    pub(crate) fn raw_fd(&self) -> Option<std::os::fd::RawFd> {
        self.fd.as_ref().map(|f| f.as_raw_fd())
    }

    /// The queued request becomes the current one once the current one has ended, and a
    /// current request the bridge piped is claimed as soon as its PARAMS are here — before
    /// any later record is looked at, so that ids and order stay the bridge's. One the
    /// bridge took back (or left: it withdraws before closing) is dropped unanswered; the
    /// decoder skips whatever of it is still to come.
    fn settle(&mut self) {
        loop {
            if self.req.is_none() {
                let Some(q) = self.queued.take() else { return };
                self.current.store(q.serial, Ordering::Release);
                self.req = Some(q);
            }
            let Some(r) = self.req.as_mut() else { return };
            let Some(claim) = r.claim.filter(|_| r.params.is_some()) else { return };
            r.claim = None;
            if !self.rd_eof && !self.broken && claim.start() {
                return;
            }
            let id = r.id;
            self.req = None;
            self.current.store(0, Ordering::Release);
            self.dec.end_request(id);
        }
    }

    /// Block until `want` body bytes are buffered, the body ended, or the request was
    /// aborted. False when there was no memory for more of the body: the app's read raises
    /// MemoryError, as for any allocation past the pool's `rlimit-as`.
    pub(crate) fn fill_stdin(&mut self, serial: u64, want: usize) -> bool {
        loop {
            self.process();
            match self.cur(serial) {
                Some(r) if r.avail < want && !r.stdin_done && !r.aborted => {}
                _ => return true,
            }
            self.flush();
            if !self.usable() {
                self.lost();
                return true;
            }
            match self.recv(false) {
                Recv::Eof => {
                    self.process();
                    self.lost();
                }
                Recv::NoMemory => return false,
                Recv::Data(_) | Recv::WouldBlock => {}
            }
        }
    }

    /// Look for an ABORT_REQUEST (or anything else) without blocking.
    pub(crate) fn poll(&mut self) {
        while self.usable() && !self.rd_eof {
            if self.req.as_ref().is_some_and(|r| r.avail > MAX_READAHEAD) {
                return;
            }
            match self.recv(true) {
                Recv::Data(n) => {
                    self.process();
                    if n < RECV_CHUNK {
                        return;
                    }
                }
                // The body waits in the socket until the app reads it.
                Recv::WouldBlock | Recv::NoMemory => return,
                Recv::Eof => {
                    self.process();
                    self.lost();
                    return;
                }
            }
        }
    }

    // ---- output --------------------------------------------------------

    /// Send everything buffered. A failure makes the connection unusable.
    pub(crate) fn flush(&mut self) {
        if self.out.is_empty() {
            return;
        }
        match self.fd.as_ref() {
            Some(fd) if !self.broken => {
                if let Err(e) = sys::send_all(fd.as_raw_fd(), &self.out) {
                    if !matches!(e.raw_os_error(), Some(32) | Some(104)) {
                        eprintln!("fcgibridge worker: writing to {} failed: {e}", self.peer());
                    }
                    self.broken = true;
                    self.lost();
                }
            }
            _ => {}
        }
        self.out.clear();
        self.release_hold();
        if self.out.capacity() > 4 * OUT_HIGH {
            self.out.shrink_to(OUT_HIGH);
        }
    }

    fn release_hold(&mut self) {
        if self.held_at.take().is_some() {
            self.held_flag.store(false, Ordering::Release);
        }
    }

    /// Queue a body chunk of request `serial` and send it without waiting, unless it
    /// completes the app's Content-Length: then the response is complete but for its
    /// END_REQUEST, which follows once the app's iterable is closed, and both go out in
    /// one write — one send here and one wake-up of the bridge fewer per request (the
    /// bridge would otherwise hold the body for the END_REQUEST, see its exchange). The
    /// flusher thread sends a response held longer than [`crate::flusher::HOLD_MAX`]
    /// (a slow `close()`). Returns (produce more, everything was sent or held).
    pub(crate) fn push_chunk(&mut self, serial: u64, data: &[u8]) -> (bool, bool) {
        let more = self.push_body(serial, data, false);
        let complete =
            self.cur(serial).is_some_and(|r| !r.aborted && r.content_length.is_some_and(|n| r.body_bytes >= n));
        if complete && self.may_hold && self.out.len() < OUT_HIGH {
            self.hold();
            return (more, true);
        }
        (more, self.try_flush_point())
    }

    /// Send a complete response held back (for its END_REQUEST or the thread's batch)
    /// before the connection closes: a retiring worker closes a kept connection right
    /// after a response ([`crate::park`]). At most [`OUT_HIGH`] bytes; blocks.
    fn send_held(&mut self) {
        if self.held_at.is_some() && !self.broken {
            self.flush();
        }
    }

    /// Keep a finished response for the thread's next batch ([`crate::batch`]); false when
    /// there is nothing to keep or it cannot be kept (sent now then).
    pub(crate) fn hold_for_batch(&mut self) -> bool {
        if self.out.is_empty() || !self.may_hold || self.broken || self.out.len() >= OUT_HIGH {
            return false;
        }
        self.hold();
        true
    }

    /// Keep what `out` holds until the next flush (see [`Conn::push_chunk`]).
    fn hold(&mut self) {
        if self.out.is_empty() || self.held_at.is_some() {
            return;
        }
        self.held_at = Some(Instant::now());
        self.held_flag.store(true, Ordering::Release);
        crate::flusher::wake();
    }

    /// Send what is buffered without waiting (callable with the GIL held). Returns
    /// whether everything went; what the socket did not take stays buffered for `flush`.
    pub(crate) fn try_flush(&mut self) -> bool {
        if self.out.is_empty() {
            return true;
        }
        let fd = match self.fd.as_ref() {
            Some(fd) if !self.broken => fd.as_raw_fd(),
            _ => {
                self.out.clear();
                return true;
            }
        };
        let (mut sent, failed) = sys::send_available(fd, &self.out);
        if let Some(e) = failed {
            if !matches!(e.raw_os_error(), Some(32) | Some(104)) {
                eprintln!("fcgibridge worker: writing to {} failed: {e}", self.peer());
            }
            self.broken = true;
            self.lost();
            sent = self.out.len();
        }
        if sent < self.out.len() {
            self.out.drain(..sent);
            return false;
        }
        self.out.clear();
        self.release_hold();
        if self.out.capacity() > 4 * OUT_HIGH {
            self.out.shrink_to(OUT_HIGH);
        }
        true
    }

    /// [`Conn::flush_point`] without waiting (callable with the GIL held): the abort
    /// check is a non-blocking recv anyway. Returns whether everything was sent.
    pub(crate) fn try_flush_point(&mut self) -> bool {
        if self.last_recv.elapsed() >= POLL_INTERVAL {
            self.poll();
        }
        self.try_flush()
    }

    /// Check for an abort, then flush. The check is a recv(2) that usually finds
    /// nothing; it is skipped when the socket was read less than POLL_INTERVAL ago
    /// (a fast response right after its request), so a quick streamed response
    /// costs no extra system call while a slow stream is checked at every chunk.
    pub(crate) fn flush_point(&mut self) {
        if self.last_recv.elapsed() >= POLL_INTERVAL {
            self.poll();
        }
        self.flush();
    }

    /// Queue the CGI header block of request `serial` (once).
    /// A small first body chunk shares the header block's record (`first`, which
    /// the caller then must not push again): one record instead of two.
    fn push_head(&mut self, serial: u64) {
        self.push_head_with(serial, &[]);
    }

    fn push_head_with(&mut self, serial: u64, first: &[u8]) {
        let Some(r) = self.req.as_mut().filter(|r| r.serial == serial) else {
            return;
        };
        if r.headers_sent || r.aborted {
            return;
        }
        r.headers_sent = true;
        let bodyless = r.is_head || r.status_code < 200 || r.status_code == 204 || r.status_code == 304;
        if r.content_length.is_none() && !bodyless {
            if let Some(n) = r.auto_content_length {
                if r.body_bytes == 0 {
                    r.head.extend_from_slice(b"Content-Length: ");
                    r.head.extend_from_slice(n.to_string().as_bytes());
                    r.head.extend_from_slice(b"\r\n");
                }
            }
        }
        r.head.extend_from_slice(b"\r\n");
        if self.direct.is_some() {
            crate::scoreboard::count_response(r.status_code);
            if let Some(slot) = r.slot {
                slot.head_sent(r.status_code);
            }
        }
        r.head.extend_from_slice(first);
        r.body_bytes += first.len() as u64;
        write_stdout(&mut self.out, r.id, &r.head, Padding::None);
        r.head = Vec::new();
    }

    /// Queue body bytes of request `serial`. With `may_flush` (only when detached
    /// from Python) the buffer is sent whenever OUT_HIGH is reached; otherwise the
    /// caller flushes. Returns false once the request is aborted (stop producing).
    pub(crate) fn push_body(&mut self, serial: u64, data: &[u8], may_flush: bool) -> bool {
        match self.cur(serial) {
            // A local redirect's body is dropped: the app is asked for no more of it.
            Some(r) if !r.aborted && r.redirect.is_none() => {}
            _ => return false,
        }
        if data.is_empty() {
            return true;
        }
        let mut data = data;
        let mut full = false;
        let mut dropped = None;
        if let Some(r) = self.cur(serial) {
            if let Some(limit) = r.content_length {
                // PEP 3333: never more than the app's Content-Length; stop there.
                let left = limit.saturating_sub(r.body_bytes);
                if data.len() as u64 >= left {
                    let extra = data.len() as u64 - left;
                    data = &data[..left as usize];
                    full = true;
                    dropped = (extra > 0).then_some((limit, extra));
                }
            }
        }
        if let Some((limit, extra)) = dropped {
            // Said in the request's log (the bridge logs its STDERR with pool, pid and id).
            self.push_stderr(serial, crate::body_past_length(limit, extra).as_bytes());
        }
        if data.is_empty() {
            return !full;
        }
        if self.req.as_ref().is_some_and(|r| !r.headers_sent) {
            let first = if data.len() <= SHARED_RECORD_MAX { data } else { &[][..] };
            self.push_head_with(serial, first);
            data = &data[first.len()..];
        }
        for piece in data.chunks(OUT_HIGH) {
            let Some(r) = self.cur(serial) else {
                return false;
            };
            if r.aborted {
                return false;
            }
            r.body_bytes += piece.len() as u64;
            let id = r.id;
            write_stdout(&mut self.out, id, piece, Padding::None);
            if may_flush && self.out.len() >= OUT_HIGH {
                self.flush_point();
            }
        }
        !full && self.cur(serial).is_some_and(|r| !r.aborted)
    }

    /// Queue a STDERR record for request `serial`; false if that request is over. A direct
    /// worker writes it to its own stderr instead, the bridge's log (a STDERR record would
    /// go to the web server's error log).
    pub(crate) fn push_stderr(&mut self, serial: u64, data: &[u8]) -> bool {
        let Some(r) = self.cur(serial) else {
            return false;
        };
        if let Some(tag) = r.tag.as_mut() {
            tag.stderr(data);
            return true;
        }
        let id = r.id;
        if !self.usable() {
            return true;
        }
        write_stderr(&mut self.out, id, data, Padding::None);
        true
    }

    /// Replace the response with a complete error page (headers not sent yet).
    pub(crate) fn push_error_page(&mut self, serial: u64) {
        self.push_status_page(serial, 500, "Internal Server Error");
    }

    /// Replace the response with a complete plain-text page `status reason` (headers not
    /// sent yet).
    pub(crate) fn push_status_page(&mut self, serial: u64, status: u16, reason: &str) {
        let Some(r) = self.cur(serial) else { return };
        if r.aborted || r.headers_sent {
            return;
        }
        r.redirect = None;
        let text = format!("{status} {reason}\n"); // the body the bridge's own pages have
        let body: &[u8] = if r.is_head { b"" } else { text.as_bytes() };
        r.head = format!(
            "Status: {status} {reason}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\n",
            text.len()
        )
        .into_bytes();
        r.status_code = status;
        r.content_length = Some(text.len() as u64);
        r.replaced = true;
        self.push_head(serial);
        if let Some(r) = self.cur(serial) {
            let id = r.id;
            write_stdout(&mut self.out, id, body, Padding::None);
        }
    }

    /// Read a regular file from `offset` to its end into STDOUT records of request `serial`.
    pub(crate) fn push_file(
        &mut self,
        serial: u64,
        file: &std::fs::File,
        mut offset: u64,
        expect: u64,
    ) -> io::Result<()> {
        use std::os::unix::fs::FileExt;
        // Sized for the file (one extra byte sees EOF at once), at most OUT_HIGH.
        let block_len = usize::try_from(expect.saturating_add(1)).unwrap_or(OUT_HIGH).clamp(512, OUT_HIGH);
        let mut block = vec![0u8; block_len];
        loop {
            match self.cur(serial) {
                Some(r) if !r.aborted => {}
                _ => return Ok(()),
            }
            let n = match file.read_at(&mut block, offset) {
                Ok(0) => return Ok(()),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            offset += n as u64;
            if !self.push_body(serial, &block[..n], true) {
                return Ok(());
            }
        }
    }

    /// Queue the end of request `serial` (headers if still unsent, empty STDOUT,
    /// END_REQUEST) and forget it. Returns whether the connection may serve another.
    pub(crate) fn finish(&mut self, serial: u64) -> bool {
        let Some(r) = self.cur(serial) else {
            return false;
        };
        let keep = r.keep_conn;
        let bodyless = r.is_head || r.status_code < 200 || r.status_code == 204 || r.status_code == 304;
        if let Some(n) = r.content_length {
            if !(r.aborted || r.cut_off || r.replaced || r.hands_off || bodyless) && r.body_bytes < n {
                // The client would wait for the missing bytes: end it as cut off.
                r.cut_off = true;
                let sent = r.body_bytes;
                self.push_stderr(serial, crate::body_short_of_length(sent, n).as_bytes());
            }
        }
        let Some(r) = self.cur(serial) else {
            return false;
        };
        let status = if r.aborted || r.cut_off {
            if !r.headers_sent {
                // Ended without a head (direct mode counts it; no scoreboard otherwise): the
                // web server's client left (499, as nginx logs it and the bridge counts an
                // abort it sees), or the web server answers 502.
                crate::scoreboard::count_response(if r.aborted { 499 } else { 502 });
            }
            1
        } else {
            if !r.headers_sent {
                if r.auto_content_length.is_none() && r.body_bytes == 0 {
                    r.auto_content_length = Some(0);
                }
                self.push_head(serial);
            }
            0
        };
        let direct = self.direct.is_some();
        let cut_off = direct && self.cur(serial).is_some_and(|r| r.cut_off && r.headers_sent && !r.aborted);
        if cut_off {
            let msg = b"fcgibridge worker: the response was cut off after its head: closing the connection without END_REQUEST\n";
            self.push_stderr(serial, msg);
        }
        self.current.store(0, Ordering::Release);
        let Some(mut r) = self.req.take() else {
            return false;
        };
        if let Some(tag) = r.tag.as_mut() {
            tag.close();
        }
        if cut_off {
            // The web server must see a failed response, never a short one that looks
            // complete: no END_REQUEST, and the connection closes (docs/architecture.md,
            // "Cut off").
            self.cut_off = Some(if keep { crate::direct::CutOff::Close } else { crate::direct::CutOff::Signal });
            self.kept = false;
            return false;
        }
        if self.direct.is_some() && !r.stdin_done {
            self.linger = Some(r.id);
        }
        self.end_id(r.id, status, ProtocolStatus::RequestComplete);
        // A request queued behind this one is claimed by `wait_request`, not here: the
        // thread may stop after this request (max-requests, a retirement), and one it never
        // claimed the bridge can still send elsewhere.
        self.kept = keep && !self.rd_eof && self.usable();
        self.kept
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fastcgi_server::client::{
        write_abort, write_begin_request, write_get_values, write_params, write_stdin, write_stdin_end,
        ClientConnection, ClientEvent,
    };
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream;

    fn pair() -> (Conn, UnixStream) {
        let (a, b) = UnixStream::pair().expect("socketpair");
        let conn = Conn::new(OwnedFd::from(a), 4, Arc::new(AtomicU64::new(0)));
        b.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
        (conn, b)
    }

    #[test]
    fn room_for_a_receive_keeps_the_bytes_and_the_held_chunks() {
        let mut buf = bytes::BytesMut::new();
        assert!(make_room(&mut buf));
        assert!(buf.capacity() - buf.len() >= RECV_CHUNK);
        buf.extend_from_slice(&vec![7u8; RECV_CHUNK]);
        // a body chunk the app still holds shares the buffer: a new one is made
        let held = buf.split_to(RECV_CHUNK - 3).freeze();
        assert!(make_room(&mut buf));
        assert!(buf.capacity() - buf.len() >= RECV_CHUNK, "{} of {}", buf.len(), buf.capacity());
        assert_eq!((&buf[..], held.len()), (&[7u8, 7, 7][..], RECV_CHUNK - 3));
    }

    fn request(id: u16, role: Role, body: Option<&[u8]>) -> Vec<u8> {
        let mut out = Vec::new();
        write_begin_request(&mut out, id, role, true);
        let params: [(&[u8], &[u8]); 2] = [(b"REQUEST_METHOD", b"POST"), (b"PATH_INFO", b"/x")];
        write_params(&mut out, id, params);
        if let Some(b) = body {
            write_stdin(&mut out, id, b);
            write_stdin_end(&mut out, id);
        }
        out
    }

    /// Read what the worker sent until `want` END_REQUESTs arrived (or EOF).
    fn replies(peer: &mut UnixStream, want: usize) -> Vec<ClientEvent> {
        let mut dec = ClientConnection::new(Limits::default());
        let mut events = Vec::new();
        let mut ends = 0;
        let mut buf = [0u8; 65536];
        while ends < want {
            while let Some(ev) = dec.next_event().expect("valid reply") {
                if matches!(ev, ClientEvent::EndRequest { .. }) {
                    ends += 1;
                }
                events.push(ev);
            }
            if ends >= want {
                break;
            }
            let n = peer.read(&mut buf).expect("read");
            if n == 0 {
                break;
            }
            dec.feed(&buf[..n]);
        }
        events
    }

    #[test]
    fn find_newline_across_chunks() {
        let mut r = Req::new(1, true, 1);
        for c in [&b"ab"[..], b"c\nde", b"f", b"\n"] {
            r.avail += c.len();
            r.stdin.push_back(Bytes::copy_from_slice(c));
        }
        assert_eq!(r.find_newline(0, usize::MAX), Some(4));
        assert_eq!(r.find_newline(0, 3), None);
        assert_eq!(r.find_newline(4, usize::MAX), Some(8));
        let mut line = [0u8; 4];
        r.take_into(&mut line);
        assert_eq!(&line, b"abc\n");
        assert_eq!(r.avail, 4);
        assert_eq!(r.find_newline(0, usize::MAX), Some(4));
    }

    #[test]
    fn authorizer_has_no_body_and_its_role_in_the_params() {
        // Apache mod_authnz_fcgi: BEGIN_REQUEST role 2, PARAMS, and no STDIN record at all.
        let (mut c, mut peer) = pair();
        peer.write_all(&request(3, Role::Authorizer, None)).expect("send");
        assert!(c.wait_request());
        let r = c.req.as_ref().expect("request");
        assert_eq!(r.id, 3);
        assert!(r.authorizer && r.stdin_done, "an authorizer's input ends with its PARAMS");
        let role = r.params.as_ref().and_then(|p| p.get(b"FCGI_ROLE"));
        assert_eq!(role, Some(&b"AUTHORIZER"[..]));
    }

    #[test]
    fn serves_body_and_ends_request() {
        let (mut c, mut peer) = pair();
        peer.write_all(&request(1, Role::Responder, Some(b"hello body"))).expect("send");
        assert!(c.wait_request());
        let serial = c.req.as_ref().map(|r| r.serial).expect("request");
        c.fill_stdin(serial, usize::MAX);
        let r = c.cur(serial).expect("current");
        assert!(r.stdin_done);
        let mut body = vec![0u8; r.avail];
        r.take_into(&mut body);
        assert_eq!(body, b"hello body");
        r.started = true;
        r.head = b"Status: 200 OK\r\n".to_vec();
        r.status_code = 200;
        r.auto_content_length = Some(2);
        assert!(c.push_body(serial, b"ok", false));
        assert!(c.finish(serial));
        c.flush();
        let ev = replies(&mut peer, 1);
        let stdout: Vec<u8> = ev
            .iter()
            .filter_map(|e| match e {
                ClientEvent::Stdout { data, .. } => Some(data.to_vec()),
                _ => None,
            })
            .flatten()
            .collect();
        assert_eq!(stdout, b"Status: 200 OK\r\nContent-Length: 2\r\n\r\nok");
        assert!(matches!(
            ev.last(),
            Some(ClientEvent::EndRequest { id: 1, app_status: 0, protocol_status: ProtocolStatus::RequestComplete })
        ));
    }

    #[test]
    fn unknown_role_get_values_and_multiplexing() {
        let (mut c, mut peer) = pair();
        let mut out = Vec::new();
        let names: [&[u8]; 3] = [b"FCGI_MAX_CONNS", b"FCGI_MPXS_CONNS", b"FCGI_OTHER"];
        write_get_values(&mut out, names);
        out.extend(request(7, Role::Filter, Some(b"")));
        out.extend(request(1, Role::Responder, None));
        out.extend(request(2, Role::Responder, Some(b"")));
        peer.write_all(&out).expect("send");
        assert!(c.wait_request());
        assert_eq!(c.req.as_ref().map(|r| r.id), Some(1));
        c.process();
        c.flush();
        let ev = replies(&mut peer, 2);
        let values = ev.iter().find_map(|e| match e {
            ClientEvent::GetValuesResult { values } => Some(values.clone()),
            _ => None,
        });
        let values = values.expect("GET_VALUES_RESULT");
        assert_eq!(values.get(b"FCGI_MAX_CONNS"), Some(&b"4"[..]));
        assert_eq!(values.get(b"FCGI_MPXS_CONNS"), Some(&b"0"[..]));
        assert_eq!(values.get(b"FCGI_OTHER"), None);
        let ends: Vec<_> = ev
            .iter()
            .filter_map(|e| match e {
                ClientEvent::EndRequest { id, protocol_status, .. } => Some((*id, *protocol_status)),
                _ => None,
            })
            .collect();
        assert_eq!(ends, vec![(7, ProtocolStatus::UnknownRole), (2, ProtocolStatus::CantMpxConn)]);
    }

    /// A request with the bridge's claim param, as it pipes one (cell, tag).
    fn piped(id: u16, query: &str, claim: &str) -> Vec<u8> {
        let mut out = Vec::new();
        write_begin_request(&mut out, id, Role::Responder, true);
        let params: [(&[u8], &[u8]); 3] =
            [(b"FCGIBRIDGE_CLAIM", claim.as_bytes()), (b"REQUEST_METHOD", b"GET"), (b"QUERY_STRING", query.as_bytes())];
        write_params(&mut out, id, params);
        write_stdin_end(&mut out, id);
        out
    }

    fn end_current(c: &mut Conn) {
        let serial = c.req.as_ref().map(|r| r.serial).expect("request");
        let r = c.cur(serial).expect("current");
        r.started = true;
        r.head = b"Status: 200 OK\r\n".to_vec();
        r.status_code = 200;
        assert!(c.finish(serial));
        c.flush();
    }

    fn query(c: &Conn) -> Vec<u8> {
        let p = c.req.as_ref().and_then(|r| r.params.as_ref()).expect("params");
        assert_eq!(p.get(b"FCGIBRIDGE_CLAIM"), None, "the claim never reaches the app");
        p.get(b"QUERY_STRING").unwrap_or_default().to_vec()
    }

    #[test]
    fn a_piped_request_runs_next_without_waiting_and_a_withdrawn_one_never() {
        let cells = crate::claim::test_cells();
        cells[10].store(crate::claim::queued(5), Ordering::Release);
        cells[11].store(crate::claim::queued(6), Ordering::Release);
        let (mut c, mut peer) = pair();
        let mut out = request(1, Role::Responder, Some(b""));
        out.extend(piped(2, "piped", "0010.0000000005"));
        peer.write_all(&out).expect("send");
        assert!(c.wait_request());
        assert_eq!(c.req.as_ref().map(|r| r.id), Some(1));
        c.poll();
        assert_eq!(c.queued.as_ref().map(|q| q.id), Some(2), "queued behind the current request");
        end_current(&mut c);
        // Not claimed at the end of the current one (the thread may stop there)...
        assert_eq!(c.queued.as_ref().map(|q| q.id), Some(2));
        assert_eq!(cells[10].load(Ordering::Acquire), crate::claim::queued(5), "still the bridge's to take back");
        // ...but as soon as the thread asks for its next request: here, without a recv.
        assert!(c.wait_request());
        assert_eq!(c.req.as_ref().map(|r| r.id), Some(2));
        assert_eq!(query(&c), b"piped");
        assert_eq!(cells[10].load(Ordering::Acquire), (5 << 2) | 2, "claimed: STARTED");
        // The next one piped behind it is withdrawn by the bridge before it starts.
        peer.write_all(&piped(1, "withdrawn", "0011.0000000006")).expect("send");
        c.poll();
        cells[11].store((6 << 2) | 3, Ordering::Release);
        end_current(&mut c);
        assert!(c.req.is_none(), "a withdrawn request is dropped");
        // Then a request on the free connection, with the withdrawn one's id.
        peer.write_all(&request(1, Role::Responder, Some(b""))).expect("send");
        assert!(c.wait_request());
        assert_eq!(c.req.as_ref().map(|r| r.id), Some(1));
        end_current(&mut c);
        let ends: Vec<u16> = replies(&mut peer, 3)
            .iter()
            .filter_map(|e| match e {
                ClientEvent::EndRequest { id, .. } => Some(*id),
                _ => None,
            })
            .collect();
        assert_eq!(ends, vec![1, 2, 1], "the withdrawn request is never answered");
    }

    #[test]
    fn a_kept_connection_is_parkable_until_a_whole_request_is_here() {
        let (mut c, mut peer) = pair();
        peer.write_all(&request(1, Role::Responder, Some(b""))).expect("send");
        assert!(c.wait_request());
        end_current(&mut c);
        assert!(!c.pipelined_request() && c.parkable(), "kept, nothing more: parked");
        // Half of the next request: still parked, never waited for.
        let next = request(1, Role::Responder, Some(b""));
        peer.write_all(&next[..20]).expect("send");
        assert!(!c.poll_request() && c.parkable());
        peer.write_all(&next[20..]).expect("send");
        assert!(c.poll_request() && !c.parkable(), "a request to run");
        end_current(&mut c);
        drop(peer);
        assert!(!c.poll_request() && !c.parkable(), "closed by the web server");
    }

    #[test]
    fn abort_after_complete_input_is_seen() {
        let (mut c, mut peer) = pair();
        peer.write_all(&request(1, Role::Responder, Some(b"body"))).expect("send");
        assert!(c.wait_request());
        let serial = c.req.as_ref().map(|r| r.serial).expect("request");
        c.fill_stdin(serial, usize::MAX);
        assert!(c.cur(serial).is_some_and(|r| r.stdin_done && !r.aborted));
        let mut out = Vec::new();
        write_abort(&mut out, 1);
        peer.write_all(&out).expect("send");
        std::thread::sleep(Duration::from_millis(50));
        c.poll();
        assert!(c.cur(serial).is_some_and(|r| r.aborted));
        assert!(!c.push_body(serial, b"dropped", true));
        assert!(c.finish(serial));
        c.flush();
        let ev = replies(&mut peer, 1);
        assert!(!ev.iter().any(|e| matches!(e, ClientEvent::Stdout { .. })));
        assert!(matches!(ev.last(), Some(ClientEvent::EndRequest { id: 1, app_status: 1, .. })));
    }

    /// A direct worker's connection with one request in its socket that ends before the app
    /// runs (aborted, or a role no app plays), begun with or without FCGI_KEEP_CONN.
    fn ended_unrun(keep_conn: bool, role: Role) -> (Conn, UnixStream) {
        let (mut c, mut peer) = pair();
        c.kept = true; // as Shared::parkable makes a direct worker's connection
        let mut out = Vec::new();
        write_begin_request(&mut out, 1, role, keep_conn);
        if role == Role::Responder {
            write_abort(&mut out, 1);
        }
        peer.write_all(&out).expect("send");
        // Written whole before the poll: the poll sees it all, and finds nothing to run.
        assert!(!c.poll_request() && c.req.is_none());
        assert!(matches!(replies(&mut peer, 1).last(), Some(ClientEvent::EndRequest { id: 1, .. })));
        (c, peer)
    }

    #[test]
    fn a_request_ended_before_it_ran_keeps_the_connection_only_with_keep_conn() {
        for role in [Role::Responder, Role::Filter] {
            assert!(ended_unrun(true, role).0.parkable(), "{role:?} with FCGI_KEEP_CONN stays parked");
            assert!(!ended_unrun(false, role).0.parkable(), "{role:?} without FCGI_KEEP_CONN closes");
        }
    }

    #[test]
    fn eof_mid_body_aborts_and_ends_connection() {
        let (mut c, mut peer) = pair();
        let mut out = request(1, Role::Responder, None);
        write_stdin(&mut out, 1, b"partial");
        peer.write_all(&out).expect("send");
        assert!(c.wait_request());
        let serial = c.req.as_ref().map(|r| r.serial).expect("request");
        peer.shutdown(std::net::Shutdown::Write).expect("shutdown");
        c.fill_stdin(serial, usize::MAX);
        assert!(c.cur(serial).is_some_and(|r| r.aborted && r.avail == 7));
        assert!(!c.finish(serial));
    }

    mod hold {
        use super::*;

        /// What the peer can read right now, without waiting.
        fn try_read(peer: &mut UnixStream) -> Option<Vec<u8>> {
            peer.set_nonblocking(true).expect("nonblocking");
            let mut b = [0u8; 4096];
            let r = peer.read(&mut b);
            peer.set_nonblocking(false).expect("blocking");
            match r {
                Ok(n) if n > 0 => Some(b[..n].to_vec()),
                _ => None,
            }
        }

        /// Everything the peer can read now, the connection staying open.
        fn read_what_is_there(peer: &mut UnixStream) -> Vec<u8> {
            peer.set_nonblocking(true).expect("nonblocking");
            let mut got = Vec::new();
            let mut buf = [0u8; 4096];
            while let Ok(n) = peer.read(&mut buf) {
                assert!(n > 0, "the connection stays open");
                got.extend_from_slice(&buf[..n]);
            }
            got
        }

        /// A request whose app answered 200 with `Content-Length: 2`.
        fn started(c: &mut Conn, peer: &mut UnixStream) -> u64 {
            peer.write_all(&request(1, Role::Responder, Some(b""))).expect("send");
            assert!(c.wait_request());
            let serial = c.req.as_ref().map(|r| r.serial).expect("request");
            let r = c.cur(serial).expect("current");
            r.started = true;
            r.head = b"Status: 200 OK\r\nContent-Length: 2\r\n".to_vec();
            r.status_code = 200;
            r.content_length = Some(2);
            serial
        }

        #[test]
        fn a_complete_body_waits_for_end_request_and_leaves_with_it() {
            let (mut c, mut peer) = pair();
            c.may_hold = true;
            let serial = started(&mut c, &mut peer);
            let (more, sent) = c.push_chunk(serial, b"o");
            assert!(more && sent);
            assert!(try_read(&mut peer).is_some(), "a body short of its Content-Length goes out at once");
            let (more, sent) = c.push_chunk(serial, b"k");
            assert!(!more && sent);
            assert!(try_read(&mut peer).is_none(), "the chunk completing the Content-Length waits for END_REQUEST");
            assert!(c.finish(serial));
            c.flush();
            let mut rest = [0u8; 4096];
            let n = peer.read(&mut rest).expect("read");
            let mut dec = fastcgi_server::client::ClientConnection::new(Limits::default());
            dec.feed(&rest[..n]);
            let mut kinds = Vec::new();
            while let Some(ev) = dec.next_event().expect("valid") {
                kinds.push(match ev {
                    fastcgi_server::client::ClientEvent::Stdout { data, .. } => {
                        format!("out:{}", String::from_utf8_lossy(&data))
                    }
                    fastcgi_server::client::ClientEvent::EndRequest { .. } => "end".to_owned(),
                    _ => "other".to_owned(),
                });
            }
            // One read: the last body byte, the empty STDOUT and END_REQUEST came in one write.
            assert_eq!(kinds.first().map(String::as_str), Some("out:k"));
            assert_eq!(kinds.last().map(String::as_str), Some("end"));
        }

        #[test]
        fn without_the_flusher_nothing_is_held() {
            let (mut c, mut peer) = pair();
            let serial = started(&mut c, &mut peer);
            assert_eq!(c.push_chunk(serial, b"ok"), (false, true));
            assert!(try_read(&mut peer).is_some());
        }

        #[test]
        fn a_held_response_goes_out_when_end_request_is_slow() {
            let (a, mut peer) = UnixStream::pair().expect("socketpair");
            peer.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
            let shared = Arc::new(Shared::new(OwnedFd::from(a), 1));
            crate::flusher::register(&shared);
            let serial = started(&mut shared.lock(), &mut peer);
            let held_at = Instant::now();
            assert_eq!(shared.lock().push_chunk(serial, b"ok"), (false, true));
            // The app's close() never returns here: the flusher sends the response anyway.
            let mut buf = [0u8; 4096];
            let n = peer.read(&mut buf).expect("the flusher sends the held response");
            assert!(n > 0);
            assert!(held_at.elapsed() >= crate::flusher::HOLD_MAX);
            // The flag clears once the flusher's write returned, which may be after the
            // peer read what it wrote (a busy machine).
            let deadline = Instant::now() + Duration::from_secs(30);
            while shared.held.load(Ordering::Acquire) {
                assert!(Instant::now() < deadline, "the hold was never released");
                std::thread::sleep(Duration::from_millis(1));
            }
        }

        #[test]
        fn a_response_sent_from_a_fatal_signals_handler_goes_out_once() {
            let (a, mut peer) = UnixStream::pair().expect("socketpair");
            let shared = Arc::new(Shared::new(OwnedFd::from(a), 1));
            crate::flusher::register(&shared);
            let serial = started(&mut shared.lock(), &mut peer);
            let held = {
                let mut c = shared.lock();
                assert_eq!(c.push_chunk(serial, b"ok"), (false, true));
                c.out.clone()
            };
            assert!(!held.is_empty());
            // The flusher may send it first (HOLD_MAX): either way it goes out once. If the
            // flusher holds the lock at this moment, the handler leaves the response to it,
            // and the hold is released when the flusher's write returns.
            crate::flusher::send_held_on_crash();
            let deadline = Instant::now() + Duration::from_secs(30);
            while shared.held.load(Ordering::Acquire) {
                assert!(Instant::now() < deadline, "the hold was never released");
                std::thread::sleep(Duration::from_millis(1));
            }
            shared.lock().flush();
            assert_eq!(read_what_is_there(&mut peer), held);
        }

        #[test]
        fn a_fatal_signals_handler_waits_a_moment_for_a_lock_another_thread_holds() {
            let (a, mut peer) = UnixStream::pair().expect("socketpair");
            // Not registered with the flusher: only the thread below takes the lock.
            let shared = Arc::new(Shared::new(OwnedFd::from(a), 1));
            let serial = started(&mut shared.lock(), &mut peer);
            let held = {
                let mut c = shared.lock();
                assert_eq!(c.push_chunk(serial, b"ok"), (false, true));
                c.out.clone()
            };
            // Another thread holds the connection's lock for a moment (the flusher looking
            // at it, preempted) when the process crashes: the response still goes out.
            let (locked, is_locked) = std::sync::mpsc::channel();
            let holder = {
                let shared = shared.clone();
                std::thread::spawn(move || {
                    let _c = shared.lock();
                    locked.send(()).expect("send");
                    std::thread::sleep(Duration::from_millis(5));
                })
            };
            is_locked.recv().expect("the lock is held");
            assert!(shared.send_held_on_crash(), "the handler gave up on a lock held for 5 ms");
            holder.join().expect("holder");
            assert_eq!(read_what_is_there(&mut peer), held);
        }

        #[test]
        fn a_hold_wakes_a_sleeping_flusher() {
            let (a, mut peer) = UnixStream::pair().expect("socketpair");
            peer.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
            let shared = Arc::new(Shared::new(OwnedFd::from(a), 1));
            crate::flusher::register(&shared);
            // Idle for its linger time, the thread parks; the next hold must wake it.
            let deadline = Instant::now() + Duration::from_secs(30);
            while !crate::flusher::parked() {
                assert!(Instant::now() < deadline, "the idle flusher never went to sleep");
                std::thread::sleep(Duration::from_millis(10));
            }
            let serial = started(&mut shared.lock(), &mut peer);
            assert_eq!(shared.lock().push_chunk(serial, b"ok"), (false, true));
            let mut buf = [0u8; 4096];
            let n = peer.read(&mut buf).expect("the woken flusher sends the held response");
            assert!(n > 0);
        }
    }
}
