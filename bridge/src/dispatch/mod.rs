//! Per-pool dispatch: a FIFO of requests waiting for a free worker connection ("slot").
//!
//! A slot is taken for one request and given back at its END_REQUEST, so a kept-alive
//! web-server connection never pins a worker. The queue is bounded (`queue_size`: beyond
//! it a request gets 503 at once) and a request waits at most `queue_timeout`.
//!
//! The dispatcher is also where the pool's live numbers are kept (what the status page
//! shows, and what the pool manager in `supervise/manager.rs` decides with): per worker
//! process its busy and open connections, requests served, the request each connection
//! is serving and since when; per pool the accepted requests, the queue's high-water mark,
//! how often a request found the pool at its maximum, the 503s. They are plain fields
//! updated under the one lock `acquire` and `release` already take, so the request path
//! pays no extra lock, atomic or system call for them.
//!
//! The manager marks a worker *draining* (recycling, reload, scale-down): its free slots
//! are closed at once and its busy ones when their request ends, so it takes no new
//! request; when its last slot is closed the manager is woken to stop the process.
//!
//! A request whose client went away and that its worker did not end within the pool's
//! abort-grace is *abandoned* (exchange.rs): its slot stays busy (a thread of the worker
//! still runs it) but the manager is told, retires that worker, and counts the slot as
//! nothing left to finish when it drains.
mod direct;
pub(crate) use direct::{request_id_text, Observed as DirectObserved};
pub(crate) mod request_body_limits;
pub(crate) mod serve;

use crate::claim::{self, ClaimPage};
use bytes::Bytes;
use std::collections::VecDeque;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{oneshot, Notify};

/// What the dispatcher needs to know about a slot.
pub(crate) trait Slot: Send + 'static {
    /// False once the worker behind it is gone: such a slot is dropped instead of handed out.
    fn usable(&self) -> bool;
    /// Which worker and which of its connections (see [`Dispatcher::add_conn`]);
    /// [`SlotKey::NONE`] for a slot the dispatcher keeps no numbers for.
    fn key(&self) -> SlotKey {
        SlotKey::NONE
    }
    /// A new way to interrupt the slot's request (after it reconnected), taken by `release`.
    fn take_canceller(&mut self) -> Option<Canceller> {
        None
    }
}

/// A worker process as the dispatcher knows it (an index and a generation, so a key of a
/// removed worker never names its successor).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct WorkerKey {
    index: u32,
    gen: u32,
}

/// One connection of one worker process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SlotKey {
    pub worker: WorkerKey,
    pub conn: u32,
}

impl SlotKey {
    pub(crate) const NONE: Self = Self { worker: WorkerKey { index: u32::MAX, gen: 0 }, conn: 0 };
}

/// Interrupts the request running on a slot (request-timeout): sets the slot's flag and
/// shuts its socket down, so the request's exchange sees the worker connection end and,
/// reading the flag, answers 504 instead of 502.
#[derive(Debug)]
pub(crate) struct Canceller {
    /// A duplicate of the connection's descriptor: shutdown(2) acts on the socket.
    pub fd: OwnedFd,
    pub flag: Arc<AtomicBool>,
}

impl Canceller {
    fn cancel(&self) {
        self.flag.store(true, Ordering::Release);
        self.hang_up();
    }

    /// The worker is gone: end the connection without the request-timeout flag (502).
    fn hang_up(&self) {
        let _ = nix::sys::socket::shutdown(self.fd.as_raw_fd(), nix::sys::socket::Shutdown::Both);
    }
}

/// Why no slot was handed out.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum AcquireError {
    #[error("queue full ({0} requests waiting)")]
    QueueFull(usize),
    #[error("no worker became free within {0:?}")]
    Timeout(Duration),
    /// The pool has no worker and cannot start one (an import error, …), or it is gone.
    #[error("{0}")]
    Unavailable(Arc<str>),
    /// The request was piped onto a worker connection, the worker had started it, and the
    /// connection failed (502, as for any request whose worker died).
    #[error("the worker failed after it had started the request")]
    Lost,
    /// The client went away while the request waited.
    #[error("the client went away")]
    Gone,
}

/// A slot handed to a request.
#[derive(Debug)]
pub(crate) struct Granted<S> {
    pub slot: S,
    /// The request is already in the worker's socket, piped behind the slot's previous
    /// request: its claim cell and tag (`claim.rs`). None: send it.
    pub sent: Option<(u32, u32)>,
}

/// What a waiting request receives.
enum Grant<S> {
    Slot(Granted<S>),
    Lost,
}

/// How long a connection's current request must have run before the request piped
/// behind it is taken back for a slot that frees up: a fast request is not worth a
/// withdraw and a resend; a slow one must not hold the piped one hostage.
pub(crate) const TAKE_BACK_AFTER: Duration = Duration::from_millis(3);
/// The same when no slot is free but one is handed to the request piped onto it: a
/// request piped behind one that has run this long goes back to the front of the queue,
/// to be piped behind the request just handed over. Longer than [`TAKE_BACK_AFTER`]: it
/// trades one wait for another, so only a clearly slow request is undercut.
pub(crate) const TAKE_BACK_BEHIND_BUSY: Duration = Duration::from_millis(50);

/// What the status page shows of a request in progress; also its place in the log.
pub(crate) struct Ticket<'a> {
    pub method: &'a [u8],
    pub uri: &'a [u8],
    pub request_id: u64,
    /// When the request arrived at the bridge.
    pub started: Instant,
}

/// Method and URI of a request, truncated to a fixed buffer (PHP-FPM keeps 128 bytes of
/// the URI in its scoreboard for the same reason: no allocation per request).
#[derive(Clone)]
pub(crate) struct Label {
    method_len: u8,
    len: u16,
    pub request_id: u64,
    pub started: Instant,
    buf: [u8; LABEL_BYTES],
}

const LABEL_BYTES: usize = 240;
const METHOD_BYTES: usize = 16;

impl Label {
    fn empty(now: Instant) -> Self {
        Self { method_len: 0, len: 0, request_id: 0, started: now, buf: [0; LABEL_BYTES] }
    }

    fn set(&mut self, t: &Ticket<'_>) {
        let m = t.method.len().min(METHOD_BYTES);
        self.buf[..m].copy_from_slice(&t.method[..m]);
        let u = t.uri.len().min(LABEL_BYTES - m);
        self.buf[m..m + u].copy_from_slice(&t.uri[..u]);
        self.method_len = m as u8;
        self.len = (m + u) as u16;
        self.request_id = t.request_id;
        self.started = t.started;
    }

    fn of(t: &Ticket<'_>) -> Self {
        let mut l = Self::empty(t.started);
        l.set(t);
        l
    }

    /// The method as the status page, the slowlog and the log show it (the client's text,
    /// escaped: logging/escape.rs).
    pub(crate) fn method(&self) -> String {
        crate::logging::escape::clean_bytes(&self.buf[..self.method_len as usize]).into_owned()
    }

    /// The URI (its first bytes) as the status page, the slowlog and the log show it.
    pub(crate) fn uri(&self) -> String {
        crate::logging::escape::clean_bytes(&self.buf[self.method_len as usize..self.len as usize]).into_owned()
    }
}

/// How a request comes to the queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Entry {
    /// Just admitted: counted, refused when the queue is full, waits at the back.
    New,
    /// Admitted before, its connection failed unread: waits at the front.
    Again,
}

/// The free slots and the waiting requests of one pool, and its numbers.
pub(crate) struct Dispatcher<S> {
    inner: Mutex<Inner<S>>,
    /// Wakes the pool manager: a request had to queue while the pool may grow, a worker
    /// reached max-requests, a draining worker closed its last slot.
    pub wake: Notify,
}

struct Inner<S> {
    /// LIFO: the most recently used connection is the warmest.
    idle: Vec<S>,
    waiters: VecDeque<Waiter<S>>,
    queue_size: usize,
    queue_timeout: Duration,
    workers: Vec<WorkerEntry>,
    free: Vec<u32>,
    /// Set by the manager while the pool has no worker and cannot start one.
    unavailable: Option<Arc<str>>,
    /// The pool runs its most workers: a request that has to wait counts as "max reached".
    /// Set by the manager; false until then, as a new pool runs none yet.
    at_max: bool,
    /// The manager wants a wake when a request has to queue (the pool may grow).
    wake_on_queue: bool,
    counters: Counters,
    /// Requests written into a worker's socket behind its current request.
    piped: Vec<Piped<S>>,
    /// The last claim tag handed out.
    tag: u32,
    /// Requests abandoned since the manager last looked ([`Dispatcher::take_abandoned`]).
    abandoned: Vec<Overdue>,
    /// When a request last ended (a template instance's idle clock).
    last_end: Option<Instant>,
}

struct Waiter<S> {
    tx: oneshot::Sender<Grant<S>>,
    label: Label,
    /// The request's number, to find it again when it leaves.
    id: u64,
    /// Its encoded first write, when the whole request is in it: it may be piped.
    kept: Option<Bytes>,
}

/// A waiter piped onto connection `key`: it gets that slot at its current request's end.
struct Piped<S> {
    key: SlotKey,
    waiter: Waiter<S>,
    cell: u32,
    tag: u32,
    page: Arc<ClaimPage>,
}

impl<S> Piped<S> {
    fn withdraw(&self) -> bool {
        self.page.withdraw(self.cell, self.tag)
    }
}

/// Where a request that leaves the queue stood.
enum Left {
    /// It was waiting (or was taken back): gone without a trace.
    Gone,
    /// It was piped and the worker has started it: its slot comes at the hand-over.
    Started,
    /// A slot is already on its way.
    Granted,
}

/// Pool-wide counters since the pool started.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Counters {
    /// Requests that reached the pool (PHP-FPM's "accepted conn").
    pub accepted: u64,
    /// Requests a worker finished (successfully or not).
    pub served: u64,
    /// The most requests that waited at once ("max listen queue").
    pub max_queue: usize,
    /// Requests that found every slot busy while the pool ran its most workers and had to
    /// wait ("max children reached"). Each such request counts, so that the counter keeps
    /// moving while a pool stays saturated (a count of episodes would stand still then).
    pub max_reached: u64,
    pub rejected_queue_full: u64,
    pub rejected_queue_timeout: u64,
    pub rejected_unavailable: u64,
    /// Requests answered 504 by request-timeout.
    pub request_timeouts: u64,
    /// Requests written to a worker connection behind its current request.
    pub piped: u64,
    /// Piped requests taken back before the worker started them (to a slot that freed up,
    /// or after their connection failed).
    pub withdrawn: u64,
    /// Responses by status class that direct workers sent (their scoreboards' counters):
    /// no direct request passes the status counters of track.rs.
    pub direct_responses: crate::status::latency::Classes,
    /// How long direct workers' requests ran (their scoreboards), for the same reason.
    pub direct_latency: crate::status::latency::Histogram,
    /// Kept connections direct workers moved between them to even out their queues.
    pub moved_connections: u64,
}

struct WorkerEntry {
    gen: u32,
    live: bool,
    s: WorkerNumbers,
    conns: Vec<ConnEntry>,
    /// A direct worker's scoreboard as last read (dispatch/direct.rs); empty for a worker
    /// the bridge connects to.
    direct: direct::DirectSeen,
}

struct WorkerNumbers {
    draining: bool,
    /// 0: no max-requests.
    max_requests: u64,
    /// max-requests reached; the manager was woken.
    recycle_flagged: bool,
    served: u64,
    busy: u32,
    open: u32,
    /// Busy connections whose request was abandoned (counted in `busy` and `open` too).
    abandoned: u32,
}

struct ConnEntry {
    open: bool,
    busy: bool,
    timed_out: bool,
    /// Its request was aborted and the worker did not end it in time.
    abandoned: bool,
    /// Its request ended with the connection broken and went nowhere else: the worker
    /// failed under it (kept after the connection closed, for [`Dispatcher::lost_requests`]).
    lost: bool,
    /// When the current request got this slot.
    since: Instant,
    label: Label,
    canceller: Option<Canceller>,
}

impl ConnEntry {
    /// No connection (or a direct worker's idle thread) since `now`.
    fn closed(now: Instant) -> Self {
        Self {
            open: false,
            busy: false,
            timed_out: false,
            abandoned: false,
            lost: false,
            since: now,
            label: Label::empty(now),
            canceller: None,
        }
    }
}

impl ConnEntry {
    /// The request on this connection, as the status page shows it.
    fn current(&self) -> CurrentRequest {
        CurrentRequest {
            request_id: self.label.request_id,
            method: self.label.method(),
            uri: self.label.uri(),
            since: self.since,
            timed_out: self.timed_out,
            abandoned: self.abandoned,
        }
    }
}

/// One worker's numbers, for the manager and the status page.
#[derive(Debug, Clone)]
pub(crate) struct WorkerView {
    pub served: u64,
    pub busy: u32,
    /// Connections open (busy + free).
    pub open: u32,
    /// Busy connections whose request was abandoned: nothing a drain waits for.
    pub abandoned: u32,
    pub draining: bool,
    pub max_requests_reached: bool,
    pub current: Vec<CurrentRequest>,
}

/// A request on one worker connection now.
#[derive(Debug, Clone)]
pub(crate) struct CurrentRequest {
    pub request_id: u64,
    pub method: String,
    pub uri: String,
    /// When the worker got it.
    pub since: Instant,
    /// Timed out (answered 504), waiting for its worker to go.
    pub timed_out: bool,
    /// Its client went away and the worker did not end it: waiting for its worker to go.
    pub abandoned: bool,
}

/// A request that ran past request-timeout and was interrupted, or that was abandoned.
#[derive(Debug, Clone)]
pub(crate) struct Overdue {
    pub worker: WorkerKey,
    pub request_id: u64,
    pub method: String,
    pub uri: String,
    pub running: Duration,
}

/// What [`Dispatcher::cancel_overdue`] found.
#[derive(Debug, Default)]
pub(crate) struct Overdues {
    /// The requests it interrupted just now.
    pub due: Vec<Overdue>,
    /// When the next of the requests running now reaches the timeout: the manager looks
    /// again then, so that a 504 is not late by its tick.
    pub next_at: Option<Instant>,
}

/// The pool-wide view at one instant.
#[derive(Debug, Clone, Default)]
#[allow(dead_code)] // read by supervise/stats.rs for the status renderers
pub(crate) struct PoolView {
    pub counters: Counters,
    pub queue_now: usize,
    pub queue_size: usize,
    pub queue_timeout: Duration,
    pub idle_slots: usize,
    pub busy_slots: usize,
    /// Busy slots whose request was abandoned (their workers are being replaced).
    pub abandoned_slots: usize,
    pub unavailable: Option<Arc<str>>,
    /// When a request last ended; None before the first.
    pub last_end: Option<Instant>,
}

impl<S: Slot> Dispatcher<S> {
    pub(crate) fn new(queue_size: usize, queue_timeout: Duration) -> Self {
        Self {
            inner: Mutex::new(Inner {
                idle: Vec::new(),
                waiters: VecDeque::new(),
                queue_size,
                queue_timeout,
                workers: Vec::new(),
                free: Vec::new(),
                unavailable: None,
                // A new pool runs no worker: its first requests, which queue before its
                // manager has looked (a new instance's), are no "max children reached".
                at_max: false,
                wake_on_queue: false,
                counters: Counters::default(),
                piped: Vec::new(),
                tag: 0,
                abandoned: Vec::new(),
                last_end: None,
            }),
            wake: Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner<S>> {
        // A panic while holding this lock cannot leave the queue inconsistent (every
        // critical section is a push or a pop), so a poisoned lock is still usable.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A free slot, waiting in FIFO order if none is free (the tests' shorthand for
    /// [`Self::acquire_piped`] without a kept write).
    #[cfg(test)]
    pub(crate) async fn acquire(&self, ticket: &Ticket<'_>) -> Result<S, AcquireError> {
        self.acquire_piped(ticket, None, std::future::pending()).await.map(|g| g.slot)
    }

    /// A slot for the request: a free one, or the one it is piped onto (`kept`: its encoded
    /// first write when that holds the whole request, so it may be piped). Ends with
    /// [`AcquireError::Gone`] when `aborted` completes first — unless the worker has
    /// started the piped request, which then gets its slot to abort it there.
    pub(crate) async fn acquire_piped(
        &self,
        ticket: &Ticket<'_>,
        kept: Option<Bytes>,
        aborted: impl std::future::Future<Output = ()>,
    ) -> Result<Granted<S>, AcquireError> {
        self.wait_for_slot(ticket, kept, Entry::New, aborted).await
    }

    /// A slot for a request already admitted whose worker connection failed before the
    /// worker read it: a free one, or the front of the queue (it has waited longest). It
    /// is not counted as accepted again nor refused for a full queue.
    pub(crate) async fn acquire_again(&self, ticket: &Ticket<'_>) -> Result<S, AcquireError> {
        self.wait_for_slot(ticket, None, Entry::Again, std::future::pending()).await.map(|g| g.slot)
    }

    async fn wait_for_slot(
        &self,
        ticket: &Ticket<'_>,
        kept: Option<Bytes>,
        entry: Entry,
        aborted: impl std::future::Future<Output = ()>,
    ) -> Result<Granted<S>, AcquireError> {
        let (mut rx, timeout) = match self.try_acquire(ticket, kept, entry) {
            Ok(slot) => return Ok(Granted { slot, sent: None }),
            Err(Ok(waiting)) => waiting,
            Err(Err(e)) => return Err(e),
        };
        let received = tokio::select! {
            biased;
            r = tokio::time::timeout(timeout, &mut rx) => r.ok(),
            () = aborted => {
                return match self.leave(ticket.request_id) {
                    Left::Gone => Err(AcquireError::Gone),
                    Left::Started | Left::Granted => self.granted(rx.await.ok()),
                };
            }
        };
        match received {
            Some(Ok(grant)) => self.granted(Some(grant)),
            // The sender was dropped without a slot: the pool became unavailable (or the
            // waiter was cleared some other way; report it as a timeout then).
            Some(Err(_)) => {
                let mut inner = self.lock();
                match &inner.unavailable {
                    Some(why) => {
                        let why = why.clone();
                        inner.counters.rejected_unavailable += 1;
                        Err(AcquireError::Unavailable(why))
                    }
                    None => {
                        inner.counters.rejected_queue_timeout += 1;
                        Err(AcquireError::Timeout(timeout))
                    }
                }
            }
            None => match self.leave(ticket.request_id) {
                Left::Gone => {
                    self.lock().counters.rejected_queue_timeout += 1;
                    Err(AcquireError::Timeout(timeout))
                }
                // Started on a worker, or a slot sent in the instant the timer fired.
                Left::Started | Left::Granted => self.granted(rx.await.ok()),
            },
        }
    }

    fn granted(&self, grant: Option<Grant<S>>) -> Result<Granted<S>, AcquireError> {
        match grant {
            Some(Grant::Slot(g)) => Ok(g),
            Some(Grant::Lost) | None => Err(AcquireError::Lost),
        }
    }

    /// A free slot now, or the queue's receiver and timeout (`Err(Ok)`), or a refusal.
    #[allow(clippy::type_complexity)]
    fn try_acquire(
        &self,
        ticket: &Ticket<'_>,
        kept: Option<Bytes>,
        entry: Entry,
    ) -> Result<S, Result<(oneshot::Receiver<Grant<S>>, Duration), AcquireError>> {
        let mut inner = self.lock();
        if entry == Entry::New {
            inner.counters.accepted += 1;
        }
        while let Some(slot) = inner.pop_idle() {
            if slot.usable() {
                let key = slot.key();
                if let Some((w, c)) = conn_mut(&mut inner.workers, key) {
                    w.busy += 1;
                    c.busy = true;
                    c.since = ticket.started;
                    c.label.set(ticket);
                }
                return Ok(slot);
            }
            inner.close_conn(slot.key(), &self.wake);
        }
        if let Some(why) = &inner.unavailable {
            let why = why.clone();
            inner.counters.rejected_unavailable += 1;
            if inner.wake_on_queue {
                // An ondemand pool whose last start failed: this is demand to retry.
                self.wake.notify_one();
            }
            return Err(Err(AcquireError::Unavailable(why)));
        }
        inner.waiters.retain(|w| !w.tx.is_closed());
        // A piped request still waits for its thread: it counts against the queue as it
        // would without the pipeline.
        let queued = inner.waiters.len() + inner.piped.len();
        if entry == Entry::New && queued >= inner.queue_size {
            inner.counters.rejected_queue_full += 1;
            return Err(Err(AcquireError::QueueFull(queued)));
        }
        let (tx, rx) = oneshot::channel();
        let waiter = Waiter { tx, label: Label::of(ticket), id: ticket.request_id, kept };
        match entry {
            Entry::New => inner.waiters.push_back(waiter),
            Entry::Again => inner.waiters.push_front(waiter),
        }
        let queued = inner.waiters.len();
        if entry == Entry::New && inner.at_max {
            inner.counters.max_reached += 1;
        }
        inner.counters.max_queue = inner.counters.max_queue.max(queued);
        if inner.wake_on_queue {
            self.wake.notify_one();
        }
        Err(Ok((rx, inner.queue_timeout)))
    }

    /// Request `id` stops waiting (timeout, client gone): out of the queue, or taken back
    /// from the connection it was piped onto if the worker has not started it.
    fn leave(&self, id: u64) -> Left {
        let mut inner = self.lock();
        if let Some(i) = inner.waiters.iter().position(|w| w.id == id) {
            inner.waiters.remove(i);
            return Left::Gone;
        }
        let Some(i) = inner.piped.iter().position(|p| p.waiter.id == id) else { return Left::Granted };
        if inner.piped[i].withdraw() {
            inner.piped.swap_remove(i);
            inner.counters.withdrawn += 1;
            Left::Gone
        } else {
            Left::Started
        }
    }

    /// Pipe the oldest waiting request whose first write holds the whole request onto
    /// `key`'s connection, whose current request has been sent whole, under claim `cell`.
    /// Returns that first write and the claim's tag to put in it; the caller writes it
    /// now. Never onto a draining worker or one that its max-requests would stop before
    /// the piped request.
    pub(crate) fn pipe_onto(&self, key: SlotKey, page: &Arc<ClaimPage>, cell: u32) -> Option<(Bytes, u32)> {
        let mut inner = self.lock();
        let inner = &mut *inner;
        if cell >= claim::CELLS || inner.waiters.is_empty() || inner.piped.iter().any(|p| p.key == key) {
            return None;
        }
        let (w, _) = conn_mut(&mut inner.workers, key)?;
        if w.draining || w.recycle_flagged || (w.max_requests != 0 && w.served + u64::from(w.busy) >= w.max_requests) {
            return None;
        }
        let i = inner.waiters.iter().position(|w| w.kept.is_some() && !w.tx.is_closed())?;
        let waiter = inner.waiters.remove(i)?;
        let first = waiter.kept.clone()?;
        let tag = claim::next_tag(&mut inner.tag);
        page.queue(cell, tag);
        inner.piped.push(Piped { key, waiter, cell, tag, page: page.clone() });
        inner.counters.piped += 1;
        Some((first, tag))
    }

    /// The request piped onto `key`'s connection, whose current request failed or was cut
    /// short (the connection is about to close): taken back to the front of the queue if
    /// the worker has not started it, else answered 502 (its worker failed under it).
    pub(crate) fn unpipe(&self, key: SlotKey) {
        let mut inner = self.lock();
        let inner = &mut *inner;
        if let Some(p) = inner.take_piped(key) {
            inner.requeue_or_lose(p, &self.wake);
        }
    }

    /// Give a slot back: to the request piped onto it, to a request piped behind a slow
    /// one elsewhere, to the oldest waiter, else to the idle list. Dead slots, and the
    /// slots of a draining worker, are closed. Also how a new connection joins the pool.
    pub(crate) fn release(&self, slot: S) {
        let mut slot = slot;
        let canceller = slot.take_canceller();
        let key = slot.key();
        let mut inner = self.lock();
        let inner = &mut *inner;
        let mut keep = slot.usable();
        let mut draining = false;
        if let Some((w, c)) = conn_mut(&mut inner.workers, key) {
            if let Some(new) = canceller {
                c.canceller = Some(new);
                c.timed_out = false;
            }
            if c.busy {
                end_request(w, c, &mut inner.last_end);
                w.served += 1;
                inner.counters.served += 1;
                if w.max_requests != 0 && w.served >= w.max_requests && !w.recycle_flagged {
                    w.recycle_flagged = true;
                    self.wake.notify_one();
                }
            }
            draining = w.draining;
            keep &= !c.timed_out;
        }
        if let Some(p) = inner.take_piped(key) {
            // A draining worker still serves a piped request it has started.
            let withdrawn = (!keep || draining).then(|| p.withdraw());
            match withdrawn {
                Some(true) => inner.requeue(p.waiter, &self.wake),
                Some(false) if !keep => {
                    let _ = p.waiter.tx.send(Grant::Lost);
                }
                _ => match inner.hand_over(slot, p) {
                    Ok(()) => {
                        inner.requeue_slow_piped(key);
                        return;
                    }
                    // Its request is gone: the slot is free if the worker never started it.
                    Err((back, true)) => slot = back,
                    Err((back, false)) => {
                        inner.close_conn(key, &self.wake);
                        drop(back);
                        return;
                    }
                },
            }
        }
        if !keep || draining {
            inner.close_conn(key, &self.wake);
            return;
        }
        if let Some(back) = inner.take_back_for(slot) {
            inner.give_to_waiters(back);
        }
    }

    /// A slot that will not come back (its worker died, it was cut short and could not
    /// reconnect, its request timed out): count its request and forget it.
    pub(crate) fn discard(&self, slot: S) {
        let key = slot.key();
        let mut inner = self.lock();
        let inner = &mut *inner;
        // A request sent again elsewhere (its first write failed here) is not lost.
        let went_on = inner.went_elsewhere(key);
        if let Some((w, c)) = conn_mut(&mut inner.workers, key) {
            if c.busy {
                c.lost = !went_on;
                end_request(w, c, &mut inner.last_end);
                w.served += 1;
                inner.counters.served += 1;
            }
        }
        if let Some(p) = inner.take_piped(key) {
            inner.requeue_or_lose(p, &self.wake);
        }
        inner.close_conn(key, &self.wake);
        drop(slot);
    }

    /// Drop idle slots whose worker is gone.
    pub(crate) fn purge(&self) {
        let mut inner = self.lock();
        let inner = &mut *inner;
        let mut i = 0;
        while i < inner.idle.len() {
            if inner.idle[i].usable() {
                i += 1;
            } else {
                let slot = inner.idle.swap_remove(i);
                inner.close_conn(slot.key(), &self.wake);
            }
        }
    }

    /// Requests waiting right now (a piped request waits for its thread too).
    pub(crate) fn waiting(&self) -> usize {
        let mut inner = self.lock();
        inner.waiters.retain(|w| !w.tx.is_closed());
        inner.waiters.len() + inner.piped.len()
    }

    /// Free slots right now.
    #[allow(dead_code)]
    pub(crate) fn idle(&self) -> usize {
        self.lock().idle.len()
    }

    // ---------------------------------------------------------------- for the manager

    /// A reload changed max-requests: `worker` now recycles after `max_requests` requests
    /// (0: never); one that served as many already is flagged at once.
    pub(crate) fn set_max_requests(&self, worker: WorkerKey, max_requests: u64) {
        let mut inner = self.lock();
        let Some(w) = inner.worker_mut(worker) else { return };
        w.s.max_requests = max_requests;
        if max_requests != 0 && w.s.served >= max_requests && !w.s.recycle_flagged {
            w.s.recycle_flagged = true;
            self.wake.notify_one();
        }
    }

    /// A new worker process; `max_requests` 0 = no limit.
    pub(crate) fn add_worker(&self, max_requests: u64) -> WorkerKey {
        let mut inner = self.lock();
        let entry = |gen| WorkerEntry {
            gen,
            live: true,
            s: WorkerNumbers {
                draining: false,
                max_requests,
                recycle_flagged: false,
                served: 0,
                busy: 0,
                open: 0,
                abandoned: 0,
            },
            conns: Vec::new(),
            direct: direct::DirectSeen::default(),
        };
        if let Some(index) = inner.free.pop() {
            let w = &mut inner.workers[index as usize];
            let gen = w.gen.wrapping_add(1);
            *w = entry(gen);
            WorkerKey { index, gen }
        } else {
            let index = inner.workers.len() as u32;
            inner.workers.push(entry(0));
            WorkerKey { index, gen: 0 }
        }
    }

    /// A new connection to worker `worker`; `None` when the worker was removed meanwhile.
    /// The slot then joins the pool through [`release`](Self::release).
    pub(crate) fn add_conn(&self, worker: WorkerKey, canceller: Option<Canceller>) -> Option<SlotKey> {
        let mut inner = self.lock();
        let w = inner.worker_mut(worker)?;
        if w.s.draining {
            return None;
        }
        let conn = ConnEntry { open: true, canceller, ..ConnEntry::closed(Instant::now()) };
        w.s.open += 1;
        let index = match w.conns.iter().position(|c| !c.open) {
            Some(i) => {
                w.conns[i] = conn;
                i
            }
            None => {
                w.conns.push(conn);
                w.conns.len() - 1
            }
        };
        Some(SlotKey { worker, conn: index as u32 })
    }

    /// Take no new request to this worker: close its free slots now, the busy ones when
    /// their request ends. Returns the connections still open, abandoned ones left out.
    pub(crate) fn drain_worker(&self, worker: WorkerKey) -> u32 {
        let mut inner = self.lock();
        let inner = &mut *inner;
        let Some(w) = inner.worker_mut(worker) else { return 0 };
        w.s.draining = true;
        let mut i = 0;
        while i < inner.idle.len() {
            let key = inner.idle[i].key();
            if key.worker == worker {
                inner.idle.swap_remove(i);
                inner.close_conn(key, &self.wake);
            } else {
                i += 1;
            }
        }
        inner.worker_mut(worker).map(|w| w.s.open - w.s.abandoned).unwrap_or(0)
    }

    /// The request on `key`'s connection was aborted and its worker has not ended it within
    /// the abort grace: its slot stays busy (a thread still runs it), the request piped
    /// behind it goes back to the queue (if the worker has not started it), and the
    /// manager is woken to replace the worker. False when the connection is gone.
    pub(crate) fn abandon(&self, key: SlotKey) -> bool {
        let now = Instant::now();
        let mut inner = self.lock();
        let inner = &mut *inner;
        let Some((w, c)) = conn_mut(&mut inner.workers, key) else { return false };
        if !c.busy || c.abandoned {
            return false;
        }
        c.abandoned = true;
        w.abandoned += 1;
        let note = Overdue {
            worker: key.worker,
            request_id: c.label.request_id,
            method: c.label.method(),
            uri: c.label.uri(),
            running: now.saturating_duration_since(c.since),
        };
        inner.abandoned.push(note);
        if let Some(p) = inner.take_piped(key) {
            if p.withdraw() {
                inner.requeue(p.waiter, &self.wake);
            } else {
                inner.piped.push(p);
            }
        }
        self.wake.notify_one();
        true
    }

    /// The requests abandoned since the last call.
    pub(crate) fn take_abandoned(&self) -> Vec<Overdue> {
        std::mem::take(&mut self.lock().abandoned)
    }

    /// The requests a worker that died was serving: those still busy on it, and those
    /// whose connection broke under them (given back already), less those sent again to
    /// another slot (the worker never read them). Asked before [`Self::remove_worker`].
    pub(crate) fn lost_requests(&self, worker: WorkerKey) -> Vec<CurrentRequest> {
        let mut inner = self.lock();
        let inner = &mut *inner;
        let conns = inner.worker_mut(worker).map_or(0, |w| w.conns.len() as u32);
        let resent: Vec<u32> = (0..conns).filter(|&conn| inner.went_elsewhere(SlotKey { worker, conn })).collect();
        let Some(w) = inner.worker_mut(worker) else { return Vec::new() };
        let mut lost: Vec<CurrentRequest> = w
            .conns
            .iter()
            .enumerate()
            .filter(|&(i, c)| ((c.open && c.busy) || c.lost) && !resent.contains(&(i as u32)))
            .map(|(_, c)| c.current())
            .collect();
        lost.sort_by_key(|r| r.request_id);
        lost
    }

    /// The worker process is gone: forget it and its slots. Their connections are shut
    /// down: a process the worker left behind (a child of the app's) may still hold them,
    /// and a request in flight would otherwise wait for an end that never comes.
    pub(crate) fn remove_worker(&self, worker: WorkerKey) {
        let mut inner = self.lock();
        let inner = &mut *inner;
        inner.idle.retain(|s| s.key().worker != worker);
        while let Some(i) = inner.piped.iter().position(|p| p.key.worker == worker) {
            let p = inner.piped.swap_remove(i);
            inner.requeue_or_lose(p, &self.wake);
        }
        if let Some(w) = inner.worker_mut(worker) {
            w.live = false;
            for c in w.conns.iter().filter(|c| c.open) {
                if let Some(canceller) = &c.canceller {
                    canceller.hang_up();
                }
            }
            w.conns.clear();
            inner.free.push(worker.index);
        }
    }

    /// One worker's numbers (`None` once removed).
    pub(crate) fn worker_view(&self, worker: WorkerKey, with_current: bool) -> Option<WorkerView> {
        let mut inner = self.lock();
        let w = inner.worker_mut(worker)?;
        let current = if with_current {
            w.conns.iter().filter(|c| c.open && c.busy).map(ConnEntry::current).collect()
        } else {
            Vec::new()
        };
        Some(WorkerView {
            served: w.s.served,
            busy: w.s.busy,
            open: w.s.open,
            abandoned: w.s.abandoned,
            draining: w.s.draining,
            max_requests_reached: w.s.recycle_flagged,
            current,
        })
    }

    /// Interrupt every request that has had its slot longer than `timeout` (request-timeout):
    /// each gets 504 from its own exchange; the caller replaces their workers.
    pub(crate) fn cancel_overdue(&self, timeout: Duration) -> Overdues {
        let now = Instant::now();
        let mut inner = self.lock();
        let inner = &mut *inner;
        let mut out = Overdues::default();
        for (index, w) in inner.workers.iter_mut().enumerate() {
            if !w.live {
                continue;
            }
            // A direct ASGI worker times its requests out itself (its task is cancelled, the
            // worker goes on; its scoreboard's count reaches the counters, direct.rs), and
            // the request leaves its scoreboard as it counts it. One still running well past
            // it means its event loop is blocked: it counted nothing, and only replacing the
            // worker ends it.
            let timeout = if w.direct.times_out_itself { timeout + direct::BLOCKED_LOOP_GRACE } else { timeout };
            for c in w.conns.iter_mut() {
                // An abandoned request's worker is being replaced already; its client is gone.
                if !(c.open && c.busy) || c.timed_out || c.abandoned {
                    continue;
                }
                let running = now.saturating_duration_since(c.since);
                if running < timeout {
                    let at = c.since + timeout;
                    out.next_at = Some(out.next_at.map_or(at, |t| t.min(at)));
                    continue;
                }
                c.timed_out = true;
                inner.counters.request_timeouts += 1;
                if let Some(cancel) = &c.canceller {
                    cancel.cancel();
                }
                out.due.push(Overdue {
                    worker: WorkerKey { index: index as u32, gen: w.gen },
                    request_id: c.label.request_id,
                    method: c.label.method(),
                    uri: c.label.uri(),
                    running,
                });
            }
        }
        out
    }

    /// While `Some`, a request that finds no free slot gets 503 at once with this reason
    /// (and those waiting get it now).
    pub(crate) fn set_unavailable(&self, why: Option<Arc<str>>) {
        let dropped: Vec<Waiter<S>> = {
            let mut inner = self.lock();
            let changed = inner.unavailable.is_some() != why.is_some();
            inner.unavailable = why;
            if changed && inner.unavailable.is_some() {
                inner.waiters.drain(..).collect()
            } else {
                Vec::new()
            }
        };
        // Dropping the senders wakes the waiters, which then read the reason.
        drop(dropped);
    }

    /// `at_max`: the pool runs its most workers; `wake_on_queue`: wake the manager when a
    /// request has to wait (the pool may start another worker).
    pub(crate) fn set_sizing(&self, at_max: bool, wake_on_queue: bool) {
        let mut inner = self.lock();
        inner.at_max = at_max;
        inner.wake_on_queue = wake_on_queue;
    }

    /// queue-size and queue-timeout after a reload.
    pub(crate) fn set_queue(&self, size: usize, timeout: Duration) {
        let mut inner = self.lock();
        inner.queue_size = size;
        inner.queue_timeout = timeout;
    }

    /// The pool-wide numbers now.
    pub(crate) fn view(&self) -> PoolView {
        let mut inner = self.lock();
        inner.waiters.retain(|w| !w.tx.is_closed());
        let busy = inner.workers.iter().filter(|w| w.live).map(|w| w.s.busy as usize).sum();
        // A direct worker's idle threads wait in accept(2): free slots the bridge does not hold.
        let direct_idle: usize = inner
            .workers
            .iter()
            .filter(|w| w.live && !w.s.draining)
            .map(|w| w.direct.threads.len().saturating_sub(w.s.busy as usize))
            .sum();
        let abandoned = inner.workers.iter().filter(|w| w.live).map(|w| w.s.abandoned as usize).sum();
        PoolView {
            counters: inner.counters,
            // A piped request has no thread yet: it is demand (the manager sizes dynamic
            // pools with this) and waits like a queued one.
            queue_now: inner.waiters.len() + inner.piped.len(),
            queue_size: inner.queue_size,
            queue_timeout: inner.queue_timeout,
            idle_slots: inner.idle.len() + direct_idle,
            busy_slots: busy,
            abandoned_slots: abandoned,
            unavailable: inner.unavailable.clone(),
            last_end: inner.last_end,
        }
    }
}

impl<S: Slot> Inner<S> {
    /// Give `slot` to the request piped onto it (already in the worker). Err: that request
    /// is gone; the slot comes back with whether its piped request was withdrawn.
    fn hand_over(&mut self, slot: S, p: Piped<S>) -> Result<(), (S, bool)> {
        let key = slot.key();
        let Piped { waiter, cell, tag, page, .. } = p;
        self.mark_busy(key, &waiter.label);
        match waiter.tx.send(Grant::Slot(Granted { slot, sent: Some((cell, tag)) })) {
            Ok(()) => Ok(()),
            Err(Grant::Slot(g)) => {
                self.mark_free(key);
                Err((g.slot, page.withdraw(cell, tag)))
            }
            Err(Grant::Lost) => unreachable!("a slot was sent"),
        }
    }

    /// The free slot of the least busy worker, the most recently used among its slots.
    /// Plain LIFO would put every request on the worker whose slot was freed last as long as
    /// it has a free one: for a worker with many slots (threads, ASGI) that is all of them,
    /// while another process sits idle behind its own GIL or event loop.
    fn pop_idle(&mut self) -> Option<S> {
        let busy = |workers: &[WorkerEntry], key: SlotKey| {
            let w = workers.get(key.worker.index as usize).filter(|w| w.live && w.gen == key.worker.gen);
            w.map_or(0, |w| w.s.busy)
        };
        let mut best = self.idle.len().checked_sub(1)?;
        let mut least = busy(&self.workers, self.idle[best].key());
        for i in (0..best).rev() {
            if least == 0 {
                break;
            }
            let b = busy(&self.workers, self.idle[i].key());
            if b < least {
                best = i;
                least = b;
            }
        }
        Some(self.idle.remove(best))
    }

    /// A withdrawn request goes back to the front of the queue (it waited longest), and
    /// takes a free slot if one is idle.
    fn requeue(&mut self, waiter: Waiter<S>, wake: &Notify) {
        self.counters.withdrawn += 1;
        self.waiters.push_front(waiter);
        while let Some(slot) = self.pop_idle() {
            if slot.usable() {
                self.give_to_waiters(slot);
                return;
            }
            self.close_conn(slot.key(), wake);
        }
    }

    /// The request piped onto `key`'s connection, out of the piped list.
    fn take_piped(&mut self, key: SlotKey) -> Option<Piped<S>> {
        let i = self.piped.iter().position(|p| p.key == key)?;
        Some(self.piped.swap_remove(i))
    }

    /// The connection under a piped request failed: requeue it if the worker had not
    /// started it, else it is lost with its worker.
    fn requeue_or_lose(&mut self, p: Piped<S>, wake: &Notify) {
        if p.withdraw() {
            self.requeue(p.waiter, wake);
        } else {
            let _ = p.waiter.tx.send(Grant::Lost);
        }
    }

    /// A free `slot`: taken by the oldest request piped behind a current request that has
    /// run [`TAKE_BACK_AFTER`] or longer, when the worker has not started it yet. Returns
    /// the slot when nobody took it.
    fn take_back_for(&mut self, slot: S) -> Option<S> {
        self.take_back_behind(slot, TAKE_BACK_AFTER)
    }

    /// The same for a request piped behind one that has run `min` or longer.
    fn take_back_behind(&mut self, slot: S, min: Duration) -> Option<S> {
        if self.piped.is_empty() {
            return Some(slot);
        }
        let now = Instant::now();
        let workers = &mut self.workers;
        let slow = self
            .piped
            .iter()
            .enumerate()
            .filter(|(_, p)| !p.waiter.tx.is_closed())
            .filter(|(_, p)| {
                conn_mut(workers, p.key).is_some_and(|(_, c)| now.saturating_duration_since(c.since) >= min)
            })
            .min_by_key(|(_, p)| p.waiter.label.started)
            .map(|(i, _)| i);
        let Some(i) = slow else { return Some(slot) };
        if !self.piped[i].withdraw() {
            // Started: its current request has just ended in the worker; the hand-over comes.
            return Some(slot);
        }
        let p = self.piped.swap_remove(i);
        self.counters.withdrawn += 1;
        let key = slot.key();
        self.mark_busy(key, &p.waiter.label);
        match p.waiter.tx.send(Grant::Slot(Granted { slot, sent: None })) {
            Ok(()) => None,
            Err(Grant::Slot(g)) => {
                self.mark_free(key);
                Some(g.slot)
            }
            Err(Grant::Lost) => unreachable!("a slot was sent"),
        }
    }

    /// After a hand-over on `handed`: requests piped behind a request that has run
    /// [`TAKE_BACK_BEHIND_BUSY`] or longer elsewhere go back to the front of the queue (in
    /// their order), when the worker has not started them.
    fn requeue_slow_piped(&mut self, handed: SlotKey) {
        if self.piped.len() < 2 {
            return;
        }
        let now = Instant::now();
        let mut i = 0;
        let mut back = Vec::new();
        while i < self.piped.len() {
            let p = &self.piped[i];
            let slow = p.key != handed
                && conn_mut(&mut self.workers, p.key)
                    .is_some_and(|(_, c)| now.saturating_duration_since(c.since) >= TAKE_BACK_BEHIND_BUSY);
            if slow && p.withdraw() {
                back.push(self.piped.swap_remove(i));
            } else {
                i += 1;
            }
        }
        back.sort_by_key(|p| std::cmp::Reverse(p.waiter.label.started));
        for p in back {
            self.counters.withdrawn += 1;
            self.waiters.push_front(p.waiter);
        }
    }

    /// A free slot to the oldest waiter, else to a request still piped behind another
    /// (however briefly that one has run: nothing else would free it from a request in
    /// front that turns out slow), else to the idle list.
    fn give_to_waiters(&mut self, slot: S) {
        let mut slot = slot;
        let key = slot.key();
        while let Some(waiter) = self.waiters.pop_front() {
            self.mark_busy(key, &waiter.label);
            match waiter.tx.send(Grant::Slot(Granted { slot, sent: None })) {
                Ok(()) => return,
                Err(Grant::Slot(g)) => {
                    slot = g.slot;
                    self.mark_free(key);
                }
                Err(Grant::Lost) => unreachable!("a slot was sent"),
            }
        }
        if let Some(slot) = self.take_back_behind(slot, Duration::ZERO) {
            self.idle.push(slot);
        }
    }

    fn mark_busy(&mut self, key: SlotKey, label: &Label) {
        if let Some((w, c)) = conn_mut(&mut self.workers, key) {
            w.busy += 1;
            c.busy = true;
            c.since = Instant::now();
            c.label = label.clone();
        }
    }

    fn mark_free(&mut self, key: SlotKey) {
        if let Some((w, c)) = conn_mut(&mut self.workers, key) {
            w.busy -= 1;
            c.busy = false;
        }
    }
}

impl<S> Inner<S> {
    fn worker_mut(&mut self, key: WorkerKey) -> Option<&mut WorkerEntry> {
        self.workers.get_mut(key.index as usize).filter(|w| w.live && w.gen == key.gen)
    }

    /// Forget one connection (its slot has been or is being dropped); wakes the manager
    /// when a draining worker closes its last one.
    fn close_conn(&mut self, key: SlotKey, wake: &Notify) {
        let Some((w, c)) = conn_mut(&mut self.workers, key) else { return };
        c.open = false;
        c.canceller = None;
        if c.busy {
            end_request(w, c, &mut self.last_end);
        }
        w.open -= 1;
        // Abandoned requests are nothing a drain waits for.
        if w.open == w.abandoned && w.draining {
            wake.notify_one();
        }
    }

    /// Whether the request on `key`'s connection was sent again to another slot (its first
    /// write failed there): it waits in the queue, or is busy on another connection.
    fn went_elsewhere(&mut self, key: SlotKey) -> bool {
        // A direct worker's requests never move, and their ids are the worker's own (each
        // worker counts from 1): matched, a request running elsewhere in the pool would hide
        // a dead worker's. Nor does an id 0 (none told).
        let direct = self.workers.get(key.worker.index as usize).is_some_and(|w| !w.direct.threads.is_empty());
        let Some(id) = conn_mut(&mut self.workers, key)
            .filter(|(_, c)| c.busy && c.label.request_id != 0 && !direct)
            .map(|(_, c)| c.label.request_id)
        else {
            return false;
        };
        self.waiters.iter().any(|w| w.id == id)
            || self.piped.iter().any(|p| p.waiter.id == id)
            || self.workers.iter().enumerate().filter(|(_, w)| w.live).any(|(index, w)| {
                w.conns.iter().enumerate().any(|(conn, c)| {
                    c.open
                        && c.busy
                        && c.label.request_id == id
                        && SlotKey { worker: WorkerKey { index: index as u32, gen: w.gen }, conn: conn as u32 } != key
                })
            })
    }
}

/// The connection's request is over (ended, failed or cut off): it is free, and no longer
/// abandoned; `last_end` is now.
fn end_request(w: &mut WorkerNumbers, c: &mut ConnEntry, last_end: &mut Option<Instant>) {
    *last_end = Some(Instant::now());
    c.busy = false;
    w.busy -= 1;
    if c.abandoned {
        c.abandoned = false;
        w.abandoned -= 1;
    }
}

fn conn_mut(workers: &mut [WorkerEntry], key: SlotKey) -> Option<(&mut WorkerNumbers, &mut ConnEntry)> {
    let w = workers.get_mut(key.worker.index as usize).filter(|w| w.live && w.gen == key.worker.gen)?;
    let WorkerEntry { s, conns, .. } = w;
    let c = conns.get_mut(key.conn as usize).filter(|c| c.open)?;
    Some((s, c))
}

#[cfg(test)]
mod tests;
