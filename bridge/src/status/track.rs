//! The counters behind the status view, fed from a few points of the request path
//! (`dispatch/serve.rs`), from worker connections (`backend/mod.rs`) and from listener
//! start-up. One mutex guards all of it: it is taken twice per request, uncontended
//! with the default single runtime thread, which costs far less than one system call.
use crate::listen::ListenerCtx;
use crate::supervise::WorkerHandle;
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::time::{Duration, Instant, SystemTime};

#[derive(Default)]
pub(crate) struct PoolCounters {
    pub accepted: u64,
    pub max_queue: usize,
    pub saturated: u64,
    pub slow: u64,
    pub rejected: u64,
    pub exits: u64,
    pub last_exit: Option<String>,
    pub slowlog_timeout: Option<Duration>,
}

pub(crate) struct WorkerEntry {
    pub pool: Arc<str>,
    pub handle: Weak<WorkerHandle>,
    pub spawn_time: u64,
    pub requests: u64,
    pub restart_reason: Option<String>,
}

pub(crate) struct Inflight {
    pub pool: Arc<str>,
    pub pid: u32,
    pub method: String,
    pub uri: String,
    pub started: Instant,
    pub slow_reported: bool,
}

#[derive(Default)]
pub(crate) struct State {
    pub listeners: HashMap<String, u64>,
    pub listener_ctx: Vec<Weak<ListenerCtx>>,
    pub pools: HashMap<String, PoolCounters>,
    pub workers: HashMap<u32, WorkerEntry>,
    pub inflight: HashMap<u64, Inflight>,
}

fn state() -> MutexGuard<'static, State> {
    static STATE: OnceLock<Mutex<State>> = OnceLock::new();
    // Every critical section leaves the maps consistent, so a poisoned lock is usable.
    STATE.get_or_init(Mutex::default).lock().unwrap_or_else(|e| e.into_inner())
}

/// Run `f` on the state (for the status builder and the slowlog watcher).
pub(crate) fn with_state<T>(f: impl FnOnce(&mut State) -> T) -> T {
    f(&mut state())
}

/// Unix time in seconds.
pub fn unix_now() -> u64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// A pool's slow-request threshold (slowlog-timeout), registered at start-up.
pub fn pool_configured(pool: &str, slowlog_timeout: Option<Duration>) {
    state().pools.entry(pool.to_owned()).or_default().slowlog_timeout = slowlog_timeout;
}

/// A listener started accepting.
pub fn listener_started(ctx: &Arc<ListenerCtx>) {
    let mut s = state();
    s.listeners.entry(ctx.name.clone()).or_insert(0);
    s.listener_ctx.push(Arc::downgrade(ctx));
}

/// Open connections of a listener now.
pub(crate) fn open_connections(s: &State, listener: &str) -> usize {
    s.listener_ctx
        .iter()
        .filter_map(Weak::upgrade)
        .find(|c| c.name == listener)
        .map(|c| c.open_conns.load(Ordering::Relaxed))
        .unwrap_or(0)
}

/// A connection to a worker was opened: the first one makes the worker known.
pub fn worker_connected(handle: &Arc<WorkerHandle>) {
    let mut s = state();
    if s.workers.contains_key(&handle.pid) {
        return;
    }
    let restart_reason = s.pools.get(&*handle.pool).and_then(|p| p.last_exit.clone());
    s.workers.insert(
        handle.pid,
        WorkerEntry {
            pool: handle.pool.clone(),
            handle: Arc::downgrade(handle),
            spawn_time: unix_now(),
            requests: 0,
            restart_reason,
        },
    );
}

/// Forget workers that are gone, counting their exits.
pub(crate) fn reap(s: &mut State) {
    let dead: Vec<u32> = s
        .workers
        .iter()
        .filter(|(_, w)| !w.handle.upgrade().is_some_and(|h| h.is_alive()))
        .map(|(pid, _)| *pid)
        .collect();
    for pid in dead {
        if let Some(w) = s.workers.remove(&pid) {
            let p = s.pools.entry(w.pool.to_string()).or_default();
            p.exits += 1;
            p.last_exit = Some(format!("worker {pid} exited after {} requests", w.requests));
        }
    }
}

/// A request was decoded on `listener` and routed to `pool` (None: no route matched).
pub fn accepted(listener: &str, pool: Option<&str>) {
    let mut s = state();
    match s.listeners.get_mut(listener) {
        Some(n) => *n += 1,
        None => {
            s.listeners.insert(listener.to_owned(), 1);
        }
    }
    if let Some(pool) = pool {
        match s.pools.get_mut(pool) {
            Some(p) => p.accepted += 1,
            None => s.pools.entry(pool.to_owned()).or_default().accepted += 1,
        }
    }
}

/// A request found no free worker thread and joined the queue, now `waiting` long.
pub fn queued(pool: &str, waiting: usize) {
    let mut s = state();
    let p = s.pools.entry(pool.to_owned()).or_default();
    p.saturated += 1;
    p.max_queue = p.max_queue.max(waiting);
}

/// A request was answered 503 (queue full or queue-timeout).
pub fn rejected(pool: &str) {
    state().pools.entry(pool.to_owned()).or_default().rejected += 1;
}

/// A request runs on worker `pid` until the returned guard is dropped.
pub fn begin(pool: &Arc<str>, pid: u32, request_id: u64, method: &str, uri: &str) -> Busy {
    state().inflight.insert(
        request_id,
        Inflight {
            pool: pool.clone(),
            pid,
            method: method.to_owned(),
            uri: uri.to_owned(),
            started: Instant::now(),
            slow_reported: false,
        },
    );
    Busy(request_id)
}

/// Marks a request in progress; dropping it counts the request as served.
pub struct Busy(u64);

impl Drop for Busy {
    fn drop(&mut self) {
        let mut s = state();
        if let Some(r) = s.inflight.remove(&self.0) {
            if let Some(w) = s.workers.get_mut(&r.pid) {
                w.requests += 1;
            }
        }
    }
}
