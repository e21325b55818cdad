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
//! A retiring worker keeps serving its parked connections and closes each only once it has
//! been quiet for [`RETIRE_QUIET`]: nginx's keepalive cache is last-in first-out, so the
//! connection it got a response on last is the next one it writes a request to, and a
//! close then meets that request (a reset, a 502 for a POST). One still in use after
//! [`RETIRE_PATIENCE`] is closed after its next request.
use std::collections::HashMap;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use crate::conn::Shared;
use crate::scoreboard::{self, DRAIN_CHECK, STOP, STOP_QUEUE_WINDOW};
use crate::sys;

/// The event data of the listening socket; a parked connection's is its [`Parked::token`].
const LISTENER: u64 = u64::MAX;
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
    /// The worker retires and nothing is left for this thread: it leaves its loop.
    Leave,
}

pub(crate) struct Park {
    epfd: OwnedFd,
    listen_fd: RawFd,
    /// The listener's `header-timeout`: how long a parked connection may stay idle.
    header_timeout: Duration,
    state: Mutex<State>,
}

struct State {
    /// By descriptor: the connections waiting for their next request.
    parked: HashMap<RawFd, Parked>,
    /// Parks so far, which makes each one's token unique: an event of a connection closed
    /// meanwhile (its descriptor maybe reused) is not taken for a later one's.
    parks: u32,
    /// The listening socket is in the set (until the worker retires).
    listening: bool,
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
    pub(crate) fn get(listen_fd: RawFd) -> io::Result<&'static Self> {
        static PARK: Mutex<Option<&'static Park>> = Mutex::new(None);
        let mut park = PARK.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(p) = *park {
            return Ok(p);
        }
        sys::set_nonblocking(listen_fd)?;
        let epfd = sys::epoll_create()?;
        sys::epoll_ctl(epfd.as_raw_fd(), libc::EPOLL_CTL_ADD, listen_fd, LISTENER_EVENTS, LISTENER)?;
        let header_timeout = crate::direct::config().map_or(Duration::from_secs(60), |d| d.header_timeout);
        let state = State { parked: HashMap::new(), parks: 0, listening: true, swept: Instant::now() };
        let p: &'static Self = Box::leak(Box::new(Self { epfd, listen_fd, header_timeout, state: Mutex::new(state) }));
        *park = Some(p);
        Ok(p)
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Park or close the connection the thread served `last`, then wait for the next one to
    /// serve: a new connection (its first request waited for, within the header timeout, as
    /// without keep), or a parked one with input. `None`: the worker retires, the thread
    /// leaves. Blocks: call detached from Python.
    pub(crate) fn next_connection(&self, last: Option<Served>, threads: usize) -> io::Result<Option<Served>> {
        if let Some(mut last) = last {
            // A retiring thread stops at each request's end, without looking for the next
            // one (lib.rs): one already here is served now rather than parked.
            if scoreboard::draining() {
                let mut c = last.shared.lock();
                if c.parkable() && c.pipelined_request() {
                    drop(c);
                    last.ready = true;
                    return Ok(Some(last));
                }
            }
            self.put_back(last.shared, last.idle_since);
        }
        Ok(Some(match self.next()? {
            Next::Leave => return Ok(None),
            Next::New(fd) => {
                let shared = Arc::new(Shared::new(fd, threads));
                crate::flusher::register(&shared);
                let ready = shared.lock().wait_request();
                Served { shared, ready, idle_since: None }
            }
            Next::Woken(shared, since) => {
                let ready = shared.lock().poll_request();
                Served { shared, ready, idle_since: (!ready).then_some(since) }
            }
        }))
    }

    /// Wait for the next thing to serve.
    fn next(&self) -> io::Result<Next> {
        let wait = DRAIN_CHECK.min(self.header_timeout);
        loop {
            if scoreboard::draining() {
                return self.retiring();
            }
            let event = sys::epoll_wait_one(self.epfd.as_raw_fd(), wait)?;
            let (taken, idle) = {
                let mut st = self.state();
                let idle = if st.swept.elapsed() >= wait {
                    st.sweep(|_, p| p.since.elapsed() >= self.header_timeout)
                } else {
                    Vec::new()
                };
                (event.filter(|&e| e != LISTENER).and_then(|token| st.take(token)), idle)
            };
            for p in idle {
                self.close(p);
                crate::direct::log_header_timeout(self.header_timeout);
            }
            if let Some(p) = taken {
                return Ok(Next::Woken(p.shared, p.since));
            }
            if event == Some(LISTENER) {
                if let Some(fd) = sys::accept_nonblocking(self.listen_fd)? {
                    return Ok(Next::New(fd));
                }
            }
        }
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
        {
            let mut st = self.state();
            if std::mem::take(&mut st.listening) {
                let _ = sys::epoll_ctl(self.epfd.as_raw_fd(), libc::EPOLL_CTL_DEL, self.listen_fd, 0, 0);
            }
        }
        let quiet_limit = RETIRE_QUIET.min(self.header_timeout);
        loop {
            if scoreboard::drain_word() == STOP && STOP_SEEN.get_or_init(Instant::now).elapsed() < STOP_QUEUE_WINDOW {
                if let Some(fd) = sys::accept_nonblocking(self.listen_fd)? {
                    return Ok(Next::New(fd));
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
            let Some(wait) = wait else {
                return Ok(Next::Leave);
            };
            let event = sys::epoll_wait_one(self.epfd.as_raw_fd(), wait)?;
            if let Some(p) = event.filter(|&e| e != LISTENER).and_then(|token| self.state().take(token)) {
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
