//! Where a direct WSGI worker's threads wait: one epoll set per process, shared by its
//! serving threads, holding the listening socket and every kept connection (FCGI_KEEP_CONN)
//! between two of its requests ("parked"). Whichever comes first — a new connection or the
//! next request on a parked one — goes to one waiting thread, so a connection the web server
//! keeps open holds no thread while it is idle (nginx's `fastcgi_keep_conn` with an upstream
//! `keepalive`).
//!
//! A parked connection's state lives in [`State::parked`] while it waits, and is taken out
//! by the thread its event wakes; EPOLLONESHOT gives each event to one thread. The
//! listening socket is level-triggered and EPOLLEXCLUSIVE: one process per connection is
//! woken, and a thread that finds it taken (EAGAIN) waits again.
//!
//! A kept connection belongs to the process that accepted it, so a request the web server
//! sends on it would wait for a thread of that process even while another process idles
//! (a quick request behind slow ones). When no thread of the process has become free for
//! [`STUCK_AFTER`], its watcher thread takes the listening socket out of the set and hands
//! each kept connection that has a request waiting to the pool's relay (a datagram socket
//! pair the bridge gives every worker of the pool, `FCGIBRIDGE_RELAY_FDS`): whichever
//! process has a free thread first receives it (SCM_RIGHTS) and serves it — the relay's
//! receiving end is in every process's set, EPOLLEXCLUSIVE like the listening socket.
//! While the last connection handed over is still in the relay, no thread of the pool is
//! free and none more is handed over. While threads take turns ([`crate::turn`]) and one
//! rests, the process is not stuck: the next in line takes the turn from a busy holder.
//!
//! The relay also evens out the pool's queues under load: a process that holds more kept
//! connections than its pace earns moves the next ones whose request it takes there, and
//! the others take from it before they look at their own set ([`crate::balance`]).
//!
//! A retiring worker hands its parked connections to the relay too (the pool's other or
//! new workers take them), unless the bridge stops. One it cannot hand over it keeps
//! serving and closes only once it has been quiet for [`RETIRE_QUIET`]: nginx's keepalive
//! cache is last-in first-out, so the connection it got a response on last is the next one
//! it writes a request to, and a close then meets that request (a reset, a 502 for a POST).
//! One still in use after [`RETIRE_PATIENCE`] is closed after its next request.
use std::collections::HashMap;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::thread::Thread;
use std::time::{Duration, Instant};

use crate::conn::Shared;
use crate::scoreboard::{self, DRAIN_CHECK, STOP, STOP_QUEUE_WINDOW};
use crate::sys;
use crate::turn::Turns;

/// The event data of the listening socket; a parked connection's is its [`Parked::token`].
const LISTENER: u64 = u64::MAX;
/// The event data of the relay's receiving end.
const RELAY: u64 = u64::MAX - 1;
/// How long every thread of a process must have been busy before the requests waiting on
/// its kept connections go to the relay: far above a quick view's time (the hand-over costs
/// a few system calls), far below a slow one's.
pub(crate) const STUCK_AFTER: Duration = Duration::from_millis(1);
/// How many looks finding a thread free before the watcher sleeps until a thread is busy.
const IDLE_LOOKS: u32 = 50;
/// While the process is stuck, how often its watcher looks whether a thread became free.
const STUCK_CHECK: Duration = Duration::from_millis(20);
/// A relayed connection's tag: accepted, its first request not read yet...
const TAG_NEW: u8 = b'N';
/// ...or kept between two requests (the next one maybe waiting on it).
const TAG_KEPT: u8 = b'K';
const PARKED_EVENTS: u32 = (libc::EPOLLIN | libc::EPOLLRDHUP | libc::EPOLLONESHOT) as u32;
const LISTENER_EVENTS: u32 = (libc::EPOLLIN | libc::EPOLLEXCLUSIVE) as u32;
/// While retiring, how long a parked connection must have received nothing before it is
/// closed: the web server has stopped reusing it by then.
const RETIRE_QUIET: Duration = Duration::from_secs(1);
/// Under steady traffic a kept connection may never be quiet that long: past this much
/// time retiring, one is closed after its next request (the race above, once per
/// connection, rather than the bridge's kill at graceful-timeout).
const RETIRE_PATIENCE: Duration = Duration::from_secs(5);

/// A connection a thread serves: its requests run while `ready` (then it is handed back to
/// [`Park::next_connection`]).
pub(crate) struct Served {
    pub(crate) shared: Arc<Shared>,
    pub(crate) ready: bool,
    /// Since when it is idle, when it was woken by input that was not a whole request.
    idle_since: Option<Instant>,
}

/// What a waiting thread is given.
enum Next {
    /// A connection just accepted.
    New(OwnedFd),
    /// A parked connection with input (or its end), idle since the instant.
    Woken(Arc<Shared>, Instant),
    /// A kept connection another process handed over.
    Relayed(OwnedFd),
    /// The connection just served, whose next request is here already.
    Again(Served),
    /// The worker retires and nothing is left for this thread: it leaves its loop.
    Leave,
}

pub(crate) struct Park {
    epfd: OwnedFd,
    listen_fd: RawFd,
    /// The pool's relay (`None`: the bridge gave none, as before it had one).
    relay: Option<Relay>,
    /// The listener's `header-timeout`: how long a parked connection may stay idle.
    header_timeout: Duration,
    state: Mutex<State>,
    /// Threads waiting in [`Park::next`] for something to serve.
    waiting: AtomicUsize,
    /// When a thread last stopped waiting (the last free one: since when all are busy), in
    /// microseconds from `epoch`. Not when it began: time spent idle is not time stuck.
    busy_since: AtomicU64,
    /// How many times a thread began to wait: the watcher's stand-in ends at the next.
    frees: AtomicU64,
    epoch: Instant,
    /// The listening socket and the relay are out of the set: every thread is busy.
    paused: AtomicBool,
    /// The watcher sleeps until a thread becomes busy with none left waiting.
    watcher_asleep: AtomicBool,
    /// The watcher sleeps until no thread rests ([`crate::turn`]).
    watcher_waits_for_rest: AtomicBool,
    /// [`State::held_back`] is not empty.
    has_held_back: AtomicBool,
    /// The watcher stands in for the serving threads ([`Park::while_stuck`]): a retiring
    /// worker's last thread waits for it to give back what it holds.
    in_stand_in: AtomicBool,
    watcher: OnceLock<Thread>,
    /// The serving threads take turns while requests are quick ([`crate::turn`]).
    turns: Turns,
    /// Keeps this process's share of the pool's kept connections in step with its pace.
    balance: Option<crate::balance::Balance>,
    threads: usize,
}

/// The pool's datagram socket pair: descriptors sent on `send` arrive on `recv`, in
/// every process of the pool.
struct Relay {
    send: RawFd,
    recv: RawFd,
}

struct State {
    /// By descriptor: the connections waiting for their next request.
    parked: HashMap<RawFd, Parked>,
    /// Parks so far, which makes each one's token unique: an event of a connection closed
    /// meanwhile (its descriptor maybe reused) is not taken for a later one's.
    parks: u32,
    /// The listening socket is in the set (until the worker retires), unless paused.
    listening: bool,
    /// What the watcher could not hand to the relay (its queue full, or part of a request
    /// read here): served here first, by the next free thread.
    held_back: Vec<Next>,
    /// When idle parked connections were last looked for.
    swept: Instant,
}

struct Parked {
    shared: Arc<Shared>,
    /// Idle since (the end of its last request): the header timeout counts from it.
    since: Instant,
    /// Parked at, after its last input was read: [`RETIRE_QUIET`] counts from it.
    quiet: Instant,
    /// The epoll data it was armed with: the park's number, then the descriptor.
    token: u64,
}

impl Park {
    /// The process's set, made on first use with the listening socket in it.
    pub(crate) fn get(listen_fd: RawFd, threads: usize) -> io::Result<&'static Self> {
        static PARK: Mutex<Option<&'static Park>> = Mutex::new(None);
        let mut park = PARK.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(p) = *park {
            return Ok(p);
        }
        sys::set_nonblocking(listen_fd)?;
        let epfd = sys::epoll_create()?;
        sys::epoll_ctl(epfd.as_raw_fd(), libc::EPOLL_CTL_ADD, listen_fd, LISTENER_EVENTS, LISTENER)?;
        let fds = crate::direct::relay_fds();
        let relay = fds.map(|f| Relay { send: f.send, recv: f.recv });
        let balance = fds.and_then(|f| f.balance).and_then(crate::balance::Balance::new);
        if let Some(r) = &relay {
            sys::epoll_ctl(epfd.as_raw_fd(), libc::EPOLL_CTL_ADD, r.recv, LISTENER_EVENTS, RELAY)?;
        }
        let header_timeout = crate::direct::config().map_or(Duration::from_secs(60), |d| d.header_timeout);
        let state =
            State { parked: HashMap::new(), parks: 0, listening: true, held_back: Vec::new(), swept: Instant::now() };
        let p: &'static Self = Box::leak(Box::new(Self {
            epfd,
            listen_fd,
            relay,
            header_timeout,
            state: Mutex::new(state),
            waiting: AtomicUsize::new(0),
            busy_since: AtomicU64::new(0),
            frees: AtomicU64::new(0),
            epoch: Instant::now(),
            paused: AtomicBool::new(false),
            watcher_asleep: AtomicBool::new(false),
            watcher_waits_for_rest: AtomicBool::new(false),
            has_held_back: AtomicBool::new(false),
            in_stand_in: AtomicBool::new(false),
            watcher: OnceLock::new(),
            turns: Turns::new(threads > 1),
            balance,
            threads,
        }));
        if p.relay.is_some() {
            match std::thread::Builder::new().name("fcgibridge-relay".into()).spawn(move || p.watch()) {
                Ok(h) => {
                    let _ = p.watcher.set(h.thread().clone());
                }
                Err(e) => eprintln!(
                    "fcgibridge worker: cannot start the relay's watcher thread; a request waits for a thread of the process holding its connection: {e}"
                ),
            }
        }
        *park = Some(p);
        Ok(p)
    }

    pub(crate) fn turns(&self) -> &Turns {
        &self.turns
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Park or close the connection the thread served `last`, then wait for the next one to
    /// serve: a new connection, one another process handed over, or a parked one with input
    /// (`ready` once a whole request is here; otherwise it is parked when handed back).
    /// `None`: the worker retires, the thread leaves. Blocks: call detached from Python.
    pub(crate) fn next_connection(&self, last: Option<Served>, threads: usize) -> io::Result<Option<Served>> {
        // Free from before its connection is parked: the watcher leaves that connection's
        // next request to this thread.
        self.begin_wait();
        let next = self.park_and_wait(last);
        self.end_wait();
        let next = next?;
        if !matches!(next, Next::Leave) {
            self.turns.serving();
            if let Some(b) = &self.balance {
                b.served();
            }
        }
        Ok(Some(match next {
            Next::Leave => return Ok(None),
            Next::Again(served) => served,
            // A new connection whose first request is not here yet is parked like a kept
            // one between two requests: it holds no thread (header-timeout counts from now).
            Next::New(fd) | Next::Relayed(fd) => {
                let shared = Arc::new(Shared::parkable(fd, threads));
                crate::flusher::register(&shared);
                let ready = shared.lock().poll_request();
                Served { shared, ready, idle_since: None }
            }
            Next::Woken(shared, since) => {
                let ready = shared.lock().poll_request();
                Served { shared, ready, idle_since: (!ready).then_some(since) }
            }
        }))
    }

    fn park_and_wait(&self, last: Option<Served>) -> io::Result<Next> {
        if let Some(mut last) = last {
            // A retiring thread stops at each request's end, without looking for the next
            // one (lib.rs): one already here is served now rather than parked.
            if scoreboard::draining() {
                let mut c = last.shared.lock();
                if c.parkable() && c.pipelined_request() {
                    drop(c);
                    last.ready = true;
                    return Ok(Next::Again(last));
                }
            }
            self.put_back(last.shared, last.idle_since);
        }
        self.next()
    }

    /// Wait for the next thing to serve.
    fn next(&self) -> io::Result<Next> {
        let wait = DRAIN_CHECK.min(self.header_timeout);
        loop {
            if scoreboard::draining() {
                crate::batch::send();
                return self.retiring();
            }
            if let Some(next) = self.held_back() {
                return Ok(next);
            }
            // Holding responses back (crate::batch): look without waiting, and send them
            // before waiting when nothing is here.
            let holding = crate::batch::holding();
            // Asked each time round, held responses or not: the holder's look keeps its turn.
            if !self.turns.may_wait() {
                if holding {
                    crate::batch::send();
                }
                // Resting is not waiting for work (the watcher's count of free threads).
                self.end_wait();
                self.turns.rest(wait, || self.has_held_back.load(Ordering::Acquire));
                // The last to stop resting wakes the watcher, asleep while threads rest.
                if !self.turns.resting()
                    && (self.watcher_waits_for_rest.swap(false, Ordering::SeqCst)
                        | self.watcher_asleep.swap(false, Ordering::SeqCst))
                {
                    if let Some(t) = self.watcher.get() {
                        t.unpark();
                    }
                }
                self.begin_wait();
                continue;
            }
            // A connection another process sent here has waited there already: first.
            if self.balance.as_ref().is_some_and(|b| b.one_waits()) {
                if let Some((fd, tag)) = self.take_relayed()? {
                    return Ok(relayed(fd, tag));
                }
            }
            let event = sys::epoll_wait_one(self.epfd.as_raw_fd(), if holding { Duration::ZERO } else { wait })?;
            if holding && event.is_none() {
                crate::batch::send();
                continue;
            }
            // Another thread of the process waits for work: the pool is not behind, and the
            // next request may be a slow one that the held responses would wait behind.
            if holding && self.waiting.load(Ordering::Relaxed) > 1 {
                crate::batch::send();
            }
            let (taken, idle, held) = {
                let mut st = self.state();
                let idle = if st.swept.elapsed() >= wait {
                    st.sweep(|_, p| p.since.elapsed() >= self.header_timeout)
                } else {
                    Vec::new()
                };
                let taken = event.filter(|&e| e != LISTENER && e != RELAY).and_then(|token| st.take(token));
                // The connections held: parked, one per busy thread, and this one's if any.
                let busy = self.threads.saturating_sub(self.waiting.load(Ordering::Relaxed));
                let held = st.parked.len() + busy + usize::from(taken.is_some());
                (taken, idle, held)
            };
            if let Some(b) = &self.balance {
                b.check(held);
            }
            for p in idle {
                self.close(p);
                crate::direct::log_header_timeout(self.header_timeout);
            }
            if let Some(p) = taken {
                let p = match self.balance.as_ref().filter(|b| b.move_one()) {
                    Some(b) => match self.relay(p) {
                        Ok(()) => {
                            b.moved();
                            continue;
                        }
                        Err(p) => p,
                    },
                    None => p,
                };
                return Ok(Next::Woken(p.shared, p.since));
            }
            let conn = match (event, &self.relay) {
                (Some(RELAY), Some(_)) if self.balance.as_ref().is_some_and(|b| b.pass_relay()) => None,
                (Some(RELAY), Some(_)) => self.take_relayed()?,
                (Some(LISTENER), _) => sys::accept_nonblocking(self.listen_fd)?.map(|fd| (fd, TAG_NEW)),
                _ => None,
            };
            if let Some((fd, tag)) = conn {
                return Ok(relayed(fd, tag));
            }
        }
    }

    /// Receive a connection from the relay (`None`: it was empty), keeping the balance's
    /// count of what waits there.
    fn take_relayed(&self) -> io::Result<Option<(OwnedFd, u8)>> {
        let Some(r) = &self.relay else { return Ok(None) };
        let got = sys::recv_fd(r.recv)?;
        if let Some(b) = &self.balance {
            b.taken(got.is_some());
        }
        Ok(got)
    }

    /// What the watcher held back, if anything (without a lock when nothing).
    fn held_back(&self) -> Option<Next> {
        if !self.has_held_back.load(Ordering::Acquire) {
            return None;
        }
        let mut st = self.state();
        let next = (!st.held_back.is_empty()).then(|| st.held_back.remove(0));
        self.has_held_back.store(!st.held_back.is_empty(), Ordering::Release);
        next
    }

    /// Keep `next` for the process's next free thread. `frees`: the watcher's count when
    /// it found every thread busy; a thread that became free since may already wait in
    /// epoll_wait, past its look at what is held back: a connection is armed again for it.
    fn hold_back(&self, next: Next, frees: u64) {
        {
            let mut st = self.state();
            st.held_back.push(next);
            self.has_held_back.store(true, Ordering::Release);
        }
        // A thread that became free may be resting (crate::turn).
        self.turns.wake_one();
        if self.frees.load(Ordering::SeqCst) != frees {
            let woken: Vec<Next> = {
                let mut st = self.state();
                let (woken, rest) =
                    std::mem::take(&mut st.held_back).into_iter().partition(|n| matches!(n, Next::Woken(..)));
                st.held_back = rest;
                self.has_held_back.store(!st.held_back.is_empty(), Ordering::Release);
                woken
            };
            for next in woken {
                if let Next::Woken(shared, since) = next {
                    self.put_back(shared, Some(since));
                }
            }
        }
    }

    /// A thread is free to serve: the listening socket and the relay come back into the
    /// set if the watcher took them out.
    fn begin_wait(&self) {
        self.waiting.fetch_add(1, Ordering::SeqCst);
        self.frees.fetch_add(1, Ordering::SeqCst);
        if self.paused.load(Ordering::SeqCst) {
            self.resume();
        }
    }

    /// The listening socket and the relay back into the set, if the watcher took them out.
    fn resume(&self) {
        let mut st = self.state();
        if self.paused.swap(false, Ordering::SeqCst) && st.listening {
            self.watch_accepts(&mut st, libc::EPOLL_CTL_ADD);
        }
    }

    /// The thread has something to serve: with no other thread left free, the watcher
    /// looks how long this lasts.
    fn end_wait(&self) {
        // Stored before the count drops: the watcher that sees none waiting sees this time
        // (the latest, should a thread preempted here store an earlier one after it).
        self.busy_since.fetch_max(self.epoch.elapsed().as_micros() as u64, Ordering::SeqCst);
        // While threads rest the next in line looks instead (it is woken at the last one's
        // end, above): not a wake-up of the watcher per request.
        if self.waiting.fetch_sub(1, Ordering::SeqCst) == 1
            && !self.turns.resting()
            && self.watcher_asleep.swap(false, Ordering::SeqCst)
        {
            if let Some(t) = self.watcher.get() {
                t.unpark();
            }
        }
    }

    /// Add (`EPOLL_CTL_ADD`) or remove (`EPOLL_CTL_DEL`) the listening socket and the relay.
    fn watch_accepts(&self, _st: &mut State, op: libc::c_int) {
        let epfd = self.epfd.as_raw_fd();
        let relay = self.relay.as_ref().map(|r| (r.recv, RELAY));
        for (fd, token) in [(self.listen_fd, LISTENER)].into_iter().chain(relay) {
            if let Err(e) = sys::epoll_ctl(epfd, op, fd, LISTENER_EVENTS, token) {
                eprintln!("fcgibridge worker: cannot change what the threads wait for: {e}");
            }
        }
    }

    /// The watcher thread: while every serving thread of the process has been busy for
    /// [`STUCK_AFTER`], it stands in for them ([`Park::while_stuck`]). Leaves when the
    /// worker retires.
    fn watch(&self) {
        set_priority(Priority::Idle);
        let mut idle_looks = 0u32;
        while !scoreboard::draining() {
            if self.waiting.load(Ordering::SeqCst) > 0 {
                // A thread is free. Between two requests under load that is brief: look
                // again in a while rather than be woken by the next request's start (a
                // wake-up per request); asleep only once the process has been idle a while.
                idle_looks += 1;
                if idle_looks < IDLE_LOOKS {
                    std::thread::park_timeout(STUCK_AFTER);
                    continue;
                }
                self.watcher_asleep.store(true, Ordering::SeqCst);
                if self.waiting.load(Ordering::SeqCst) > 0 {
                    // No timer while idle: the process ends without it when it retires.
                    std::thread::park();
                }
                self.watcher_asleep.store(false, Ordering::SeqCst);
                idle_looks = 0;
                continue;
            }
            idle_looks = 0;
            let since = Duration::from_micros(self.busy_since.load(Ordering::SeqCst));
            let busy = self.epoch.elapsed().saturating_sub(since);
            if busy < STUCK_AFTER {
                std::thread::park_timeout(STUCK_AFTER - busy);
                continue;
            }
            if self.turns.resting() {
                // Not stuck while a thread rests: the next in line takes the turn from a
                // busy holder. Asleep until none rests (the last one to stop wakes it).
                self.watcher_waits_for_rest.store(true, Ordering::SeqCst);
                if self.turns.resting() {
                    std::thread::park_timeout(DRAIN_CHECK);
                }
                self.watcher_waits_for_rest.store(false, Ordering::SeqCst);
                continue;
            }
            // It takes the locks the serving threads take: not preempted while it holds one.
            set_priority(Priority::Normal);
            self.in_stand_in.store(true, Ordering::SeqCst);
            let stood_in = self.while_stuck();
            self.in_stand_in.store(false, Ordering::SeqCst);
            set_priority(Priority::Idle);
            if let Err(e) = stood_in {
                // Out of descriptors, say: the next try is the serving threads' pace.
                eprintln!("fcgibridge worker: the relay's watcher failed, trying again in a second: {e}");
                std::thread::sleep(DRAIN_CHECK);
            }
        }
    }

    /// Every thread is busy: no new connection is taken here (the listening socket and the
    /// relay leave the set), and a kept connection whose next request comes goes to the
    /// relay, for a free thread of any process. Until a thread begins to wait again.
    fn while_stuck(&self) -> io::Result<()> {
        let frees = self.frees.load(Ordering::SeqCst);
        {
            let mut st = self.state();
            if self.waiting.load(Ordering::SeqCst) > 0 || !st.listening || self.paused.load(Ordering::SeqCst) {
                return Ok(());
            }
            self.paused.store(true, Ordering::SeqCst);
            self.watch_accepts(&mut st, libc::EPOLL_CTL_DEL);
        }
        let mut in_hand = Vec::new();
        let stuck = self.serve_stuck(frees, &mut in_hand);
        // Taken while the relay was occupied: armed again, their input wakes the thread
        // that is free now (or the retiring worker serves them).
        for p in in_hand {
            self.put_back(p.shared, Some(p.since));
        }
        // A thread that began to wait just now may not have seen the pause: put them back
        // on leaving, whoever sees a thread waiting first.
        self.resume();
        stuck
    }

    /// Until a thread becomes free (even one that finds its next request at once: under
    /// load a busy process is never seen waiting, and this is not for it). `in_hand`: the
    /// connections with a request taken while the last one handed over was still in the
    /// relay — no thread of the pool was free (a busy machine rather than slow requests
    /// here), and they would only have waited there too; each goes once the relay is empty.
    fn serve_stuck(&self, frees: u64, in_hand: &mut Vec<Parked>) -> io::Result<()> {
        let stuck = || self.frees.load(Ordering::SeqCst) == frees;
        let relay_busy = || self.relay.as_ref().is_some_and(|r| sys::has_datagram(r.recv));
        while stuck() && !scoreboard::draining() {
            if !in_hand.is_empty() && !relay_busy() {
                let p = in_hand.remove(0);
                self.relay_parked(p, frees);
                continue;
            }
            let wait = if in_hand.is_empty() { STUCK_CHECK } else { STUCK_AFTER };
            // Waits with poll, which takes no event: epoll gives a ready one to the waiter
            // that queued first, and a thread that became free meanwhile must get it, not
            // the watcher (it would arm it again, behind the request the thread took next).
            if !sys::wait_readable_for(self.epfd.as_raw_fd(), wait)? || !stuck() {
                continue;
            }
            // Either may still come: a thread put them back meanwhile.
            let handed = match sys::epoll_wait_one(self.epfd.as_raw_fd(), Duration::ZERO)? {
                None => continue,
                Some(LISTENER) => sys::accept_nonblocking(self.listen_fd)?.map(|fd| (fd, TAG_NEW)),
                Some(RELAY) => self.take_relayed()?,
                Some(token) => {
                    let taken = self.state().take(token);
                    match taken {
                        // A thread became free meanwhile: its to serve (armed again, it
                        // wakes the thread).
                        Some(p) if !stuck() => self.put_back(p.shared, Some(p.since)),
                        Some(p) => in_hand.push(p),
                        None => {}
                    }
                    None
                }
            };
            if let Some((fd, tag)) = handed {
                self.hand_over(fd, tag, frees);
            }
        }
        Ok(())
    }

    /// Send a connection to the relay; kept here (served by the next free thread) when the
    /// relay's queue is full.
    fn hand_over(&self, fd: OwnedFd, tag: u8, frees: u64) {
        if !self.send_relayed(fd.as_raw_fd(), tag) {
            self.hold_back(relayed(fd, tag), frees);
        }
    }

    /// Send a connection to the relay (`false`: there is none, or its queue is full),
    /// keeping the balance's count of what waits there.
    fn send_relayed(&self, fd: RawFd, tag: u8) -> bool {
        let sent = self.relay.as_ref().is_some_and(|r| matches!(sys::send_fd(r.send, fd, tag), Ok(true)));
        if let Some(b) = self.balance.as_ref().filter(|_| sent) {
            b.sent();
        }
        sent
    }

    /// A parked connection with input while every thread is busy: to the relay, unless
    /// part of a request is buffered here (then the next free thread here serves it).
    fn relay_parked(&self, p: Parked, frees: u64) {
        if let Err(p) = self.relay(p) {
            self.hold_back(Next::Woken(p.shared, p.since), frees);
        }
    }

    /// Hand a parked connection to the relay; `Err` (it stays here) when part of a request
    /// is buffered here or the relay's queue is full.
    fn relay(&self, p: Parked) -> Result<(), Parked> {
        let fd = {
            let mut c = p.shared.lock();
            let sent = c.raw_fd().filter(|_| c.relayable()).is_some_and(|fd| self.send_relayed(fd, TAG_KEPT));
            if !sent {
                drop(c);
                return Err(p);
            }
            c.take_fd()
        };
        if let Some(fd) = fd {
            // The process's copy closes; the descriptor in flight keeps the connection.
            let _ = sys::epoll_ctl(self.epfd.as_raw_fd(), libc::EPOLL_CTL_DEL, fd.as_raw_fd(), 0, 0);
        }
        Ok(())
    }

    /// A connection whose requests ended: parked until its next request if the web server
    /// keeps it (also while retiring, for [`RETIRE_PATIENCE`]), else closed. `idle_since`:
    /// when its last request ended, if not just now.
    fn put_back(&self, shared: Arc<Shared>, idle_since: Option<Instant>) {
        let fd = {
            let mut c = shared.lock();
            match c.raw_fd().filter(|_| c.parkable() && !out_of_patience()) {
                Some(fd) => fd,
                None => {
                    c.close_lingering();
                    return;
                }
            }
        };
        let mut st = self.state();
        st.parks = st.parks.wrapping_add(1);
        let token = (u64::from(st.parks) << 32) | u64::from(fd as u32);
        let now = Instant::now();
        st.parked.insert(fd, Parked { shared, since: idle_since.unwrap_or(now), quiet: now, token });
        // Armed once in the map: the thread its event wakes finds it there. A connection
        // parked before is still in the set, disarmed by its last event.
        let epfd = self.epfd.as_raw_fd();
        let armed = match sys::epoll_ctl(epfd, libc::EPOLL_CTL_MOD, fd, PARKED_EVENTS, token) {
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                sys::epoll_ctl(epfd, libc::EPOLL_CTL_ADD, fd, PARKED_EVENTS, token)
            }
            other => other,
        };
        if let Err(e) = armed {
            eprintln!("fcgibridge worker: cannot wait for the next request on a kept connection, closing it: {e}");
            if let Some(p) = st.parked.remove(&fd) {
                drop(st);
                p.shared.lock().close();
            }
        }
    }

    /// The bridge set the drain word: the listening socket leaves the set; the parked
    /// connections are served while the web server sends requests on them, each closed once
    /// quiet for [`RETIRE_QUIET`] (or past the header timeout); the thread leaves when none
    /// is parked (one it serves is parked again after its request, [`Park::put_back`]).
    /// When the bridge stops, the connections already queued on the socket are served
    /// first, within [`STOP_QUEUE_WINDOW`].
    fn retiring(&self) -> io::Result<Next> {
        static STOP_SEEN: OnceLock<Instant> = OnceLock::new();
        out_of_patience(); // counting from now
        if let Some(b) = &self.balance {
            b.leave();
        }
        {
            let mut st = self.state();
            if std::mem::take(&mut st.listening) && !self.paused.load(Ordering::SeqCst) {
                self.watch_accepts(&mut st, libc::EPOLL_CTL_DEL);
            }
        }
        let quiet_limit = RETIRE_QUIET.min(self.header_timeout);
        loop {
            if let Some(next) = self.held_back() {
                return Ok(next);
            }
            if self.relay.is_some() && scoreboard::drain_word() != STOP {
                // Restarted, not stopped: the pool's other workers take the kept
                // connections, so none is closed under a request the web server sends.
                let handed = self.state().sweep(|_, p| p.shared.lock().relayable());
                for p in handed {
                    if let Err(p) = self.relay(p) {
                        self.put_back(p.shared, Some(p.since));
                    }
                }
            }
            let stop_window =
                scoreboard::drain_word() == STOP && STOP_SEEN.get_or_init(Instant::now).elapsed() < STOP_QUEUE_WINDOW;
            if stop_window {
                if let Some(fd) = sys::accept_nonblocking(self.listen_fd)? {
                    return Ok(Next::New(fd));
                }
                // Handed over before the stop, each with a request waiting: served as the
                // connections queued on the socket are.
                if let Some((fd, tag)) = self.take_relayed()? {
                    return Ok(relayed(fd, tag));
                }
            }
            let (done, wait) = {
                let mut st = self.state();
                // Not one with input waiting: a request written just now wakes a thread.
                let done = st.sweep(|fd, p| {
                    (p.since.elapsed() >= self.header_timeout || p.quiet.elapsed() >= quiet_limit)
                        && !sys::wait_readable_for(fd, Duration::ZERO).unwrap_or(true)
                });
                let due = st.parked.values().map(|p| (p.since + self.header_timeout).min(p.quiet + quiet_limit)).min();
                let wait = |due: Instant| {
                    due.saturating_duration_since(Instant::now()).clamp(Duration::from_millis(1), DRAIN_CHECK)
                };
                (done, due.map(wait))
            };
            for p in done {
                self.close(p);
            }
            // Not while the watcher may still give back a connection it took.
            let wait = wait.or_else(|| self.in_stand_in.load(Ordering::SeqCst).then_some(Duration::from_millis(1)));
            let Some(wait) = wait else {
                return Ok(Next::Leave);
            };
            let event = sys::epoll_wait_one(self.epfd.as_raw_fd(), wait)?;
            if let Some(p) = event.filter(|&e| e != LISTENER && e != RELAY).and_then(|token| self.state().take(token)) {
                return Ok(Next::Woken(p.shared, p.since));
            }
        }
    }

    /// Close a connection taken out of the map while it waited (input that came meanwhile,
    /// such as the end of a request already answered, is read first: see
    /// [`sys::discard_input`]).
    fn close(&self, p: Parked) {
        let mut c = p.shared.lock();
        if let Some(fd) = c.raw_fd() {
            let _ = sys::epoll_ctl(self.epfd.as_raw_fd(), libc::EPOLL_CTL_DEL, fd, 0, 0);
            sys::discard_input(fd);
        }
        c.close();
    }
}

/// Whether the worker has been retiring for [`RETIRE_PATIENCE`] (from when a thread of it
/// first saw the drain word).
fn out_of_patience() -> bool {
    static RETIRING_SINCE: OnceLock<Instant> = OnceLock::new();
    scoreboard::draining() && RETIRING_SINCE.get_or_init(Instant::now).elapsed() >= RETIRE_PATIENCE
}

impl State {
    /// The parked connection `token` names, out of the map; `None` when it was closed since.
    fn take(&mut self, token: u64) -> Option<Parked> {
        let fd = token as u32 as RawFd;
        if self.parked.get(&fd)?.token != token {
            return None;
        }
        self.parked.remove(&fd)
    }

    /// The connections `done` says to close, out of the map.
    fn sweep(&mut self, done: impl Fn(RawFd, &Parked) -> bool) -> Vec<Parked> {
        self.swept = Instant::now();
        let idle: Vec<RawFd> = self.parked.iter().filter(|&(&fd, p)| done(fd, p)).map(|(&fd, _)| fd).collect();
        idle.iter().filter_map(|fd| self.parked.remove(fd)).collect()
    }
}

enum Priority {
    Idle,
    Normal,
}

/// The watcher waits and looks at the lowest priority (SCHED_IDLE): its wake-ups never
/// delay the serving threads or the web server, and on a machine busy to the last cycle —
/// where no thread of the pool is free to take a connection anyway — it hands none over.
/// It stands in for the serving threads at the normal one: it then takes their locks. A
/// thread may leave SCHED_IDLE only with CAP_SYS_NICE or an RLIMIT_NICE of 20 (sched(7)):
/// without, the watcher stays at the normal priority throughout.
fn set_priority(p: Priority) {
    static ALLOWED: OnceLock<bool> = OnceLock::new();
    let allowed = *ALLOWED.get_or_init(|| {
        let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        // SAFETY: getrlimit writes the struct given; geteuid has no arguments.
        let nice_ok = unsafe { libc::getrlimit(libc::RLIMIT_NICE, &mut limit) } == 0 && limit.rlim_cur >= 20;
        nice_ok || unsafe { libc::geteuid() } == 0
    });
    if !allowed {
        return;
    }
    let policy = match p {
        Priority::Idle => libc::SCHED_IDLE,
        Priority::Normal => libc::SCHED_OTHER,
    };
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: pid 0 is the calling thread; `param` is valid for the call.
    if unsafe { libc::sched_setscheduler(0, policy, &param) } != 0 {
        static SAID: std::sync::Once = std::sync::Once::new();
        let e = io::Error::last_os_error();
        SAID.call_once(|| eprintln!("fcgibridge worker: cannot set the relay watcher's priority: {e}"));
    }
}

/// What a connection the relay gave (or the watcher held back) is to a thread.
fn relayed(fd: OwnedFd, tag: u8) -> Next {
    if tag == TAG_NEW {
        Next::New(fd)
    } else {
        Next::Relayed(fd)
    }
}
