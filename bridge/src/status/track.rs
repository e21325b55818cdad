//! The counters the supervisor's statistics (`supervise/stats.rs`) do not keep: requests
//! per listener, open connections, slow requests, request durations and responses by
//! status class per pool and listener, and their recent history (`history.rs`). One
//! mutex, taken when a request is decoded and when it ends (uncontended with the default
//! single runtime thread).
use super::history::History;
use super::latency::{Classes, Histogram};
use crate::listen::ListenerCtx;
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::time::{Duration, SystemTime};

#[derive(Default)]
pub(crate) struct PoolCounters {
    pub slow: u64,
    pub latency: Histogram,
    pub responses: Classes,
}

#[derive(Default)]
pub(crate) struct ListenerCounters {
    pub accepted: u64,
    pub latency: Histogram,
    pub responses: Classes,
}

#[derive(Default)]
pub(crate) struct State {
    pub listeners: HashMap<String, ListenerCounters>,
    pub listener_ctx: Vec<Weak<ListenerCtx>>,
    pub pools: HashMap<String, PoolCounters>,
    pub history: History,
}

/// `f` on the entry of `key`, created on first use (the key is copied only then).
fn with_entry<T: Default>(map: &mut HashMap<String, T>, key: &str, f: impl FnOnce(&mut T)) {
    match map.get_mut(key) {
        Some(v) => f(v),
        None => f(map.entry(key.to_owned()).or_default()),
    }
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
    s.listeners.entry(ctx.name.clone()).or_default();
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
    with_entry(&mut state().listeners, listener, |l| l.accepted += 1);
}

/// A request on `listener` (served by `pool` when one was chosen) ended with `status`
/// after `took` (the duration of its access-log line).
pub fn finished(listener: &str, pool: Option<&str>, status: u16, took: Duration) {
    let mut s = state();
    with_entry(&mut s.listeners, listener, |l| {
        l.latency.record(took);
        l.responses.record(status);
    });
    if let Some(pool) = pool {
        with_entry(&mut s.pools, pool, |p| {
            p.latency.record(took);
            p.responses.record(status);
        });
    }
}

/// A request of `pool` passed its slowlog-timeout.
pub fn slow(pool: &str) {
    with_entry(&mut state().pools, pool, |p| p.slow += 1);
}
