//! The counters the supervisor's statistics (`supervise/stats.rs`) do not keep: requests
//! per listener, open connections, and slow requests per pool. One mutex, taken once per
//! request (uncontended with the default single runtime thread).
use crate::listen::ListenerCtx;
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::time::SystemTime;

#[derive(Default)]
pub(crate) struct PoolCounters {
    pub slow: u64,
}

#[derive(Default)]
pub(crate) struct State {
    pub listeners: HashMap<String, u64>,
    pub listener_ctx: Vec<Weak<ListenerCtx>>,
    pub pools: HashMap<String, PoolCounters>,
}

fn state() -> MutexGuard<'static, State> {
    static STATE: OnceLock<Mutex<State>> = OnceLock::new();
    // Every critical section leaves the maps consistent, so a poisoned lock is usable.
    STATE.get_or_init(Mutex::default).lock().unwrap_or_else(|e| e.into_inner())
}

/// Run `f` on the state (for the status builder and the slowlog).
pub(crate) fn with_state<T>(f: impl FnOnce(&mut State) -> T) -> T {
    f(&mut state())
}

/// Unix time in seconds.
pub fn unix_now() -> u64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// A listener started accepting.
pub fn listener_started(ctx: &Arc<ListenerCtx>) {
    let mut s = state();
    s.listeners.entry(ctx.name.clone()).or_insert(0);
    s.listener_ctx.retain(|w| w.strong_count() > 0);
    s.listener_ctx.push(Arc::downgrade(ctx));
}

/// Open connections of a listener now.
pub(crate) fn open_connections(s: &State, listener: &str) -> usize {
    s.listener_ctx
        .iter()
        .filter_map(Weak::upgrade)
        .filter(|c| c.name == listener)
        .map(|c| c.open_conns.load(Ordering::Relaxed))
        .sum()
}

/// A request was decoded on `listener` (the pool side is counted by the dispatcher).
pub fn accepted(listener: &str) {
    let mut s = state();
    match s.listeners.get_mut(listener) {
        Some(n) => *n += 1,
        None => {
            s.listeners.insert(listener.to_owned(), 1);
        }
    }
}

/// A request of `pool` passed its slowlog-timeout.
pub fn slow(pool: &str) {
    state().pools.entry(pool.to_owned()).or_default().slow += 1;
}
