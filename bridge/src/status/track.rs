//! The counters the supervisor's statistics (`supervise/stats.rs`) do not keep: requests
//! per listener, open connections, slow requests, request durations and responses by
//! status class per pool and listener, and their recent history (`history.rs`). One
//! mutex, taken when a request is decoded and when it ends (uncontended with the default
//! single runtime thread); the daemon's registry (registry.rs) holds it.
use super::history::History;
use super::latency::{Classes, Histogram};
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

pub(crate) struct PoolCounters {
    /// The pool these are of: its name's `Arc`, which a reload that changes the pool keeps,
    /// and a pool removed and made again by reloads (or a template instance stopped and made
    /// again) does not — it starts from zero, as its supervisor's counters do. Held, the
    /// `Weak` also keeps the address (the map's key) from going to another pool's name.
    owner: Weak<str>,
    pub slow: u64,
    pub latency: Histogram,
    pub responses: Classes,
}

/// A pool's key in [`State::pools`]: the address of its name's `Arc`.
fn key(pool: &Arc<str>) -> usize {
    Arc::as_ptr(pool).cast::<u8>() as usize
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
    /// The open-connection counter of every listener context, by listener name.
    pub listener_conns: Vec<(String, Weak<AtomicUsize>)>,
    /// By [`key`]: the counters of each pool (incarnation) that served a request.
    pub pools: HashMap<usize, PoolCounters>,
    pub history: History,
}

/// The counters of `pool`, created on first use.
fn pool_entry<'m>(pools: &'m mut HashMap<usize, PoolCounters>, pool: &Arc<str>) -> &'m mut PoolCounters {
    pools.entry(key(pool)).or_insert_with(|| PoolCounters {
        owner: Arc::downgrade(pool),
        slow: 0,
        latency: Histogram::default(),
        responses: Classes::default(),
    })
}

/// `f` on the entry of `key`, created on first use (the key is copied only then).
fn with_entry<T: Default>(map: &mut HashMap<String, T>, key: &str, f: impl FnOnce(&mut T)) {
    match map.get_mut(key) {
        Some(v) => f(v),
        None => f(map.entry(key.to_owned()).or_default()),
    }
}

/// The counters, behind the one mutex (held by the daemon's registry).
#[derive(Default)]
pub(crate) struct Tracker(Mutex<State>);

impl Tracker {
    fn state(&self) -> MutexGuard<'_, State> {
        // Every critical section leaves the maps consistent, so a poisoned lock is usable.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Run `f` on the state (for the status builder and the slowlog).
    pub(crate) fn with_state<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        f(&mut self.state())
    }

    /// A listener context started accepting; `open` counts its socket's open connections.
    /// A reload's context of a kept socket brings the same counter: it is then counted
    /// under its (new) name only.
    pub(crate) fn listener_started(&self, listener: &str, open: &Arc<AtomicUsize>) {
        let mut s = self.state();
        s.listeners.entry(listener.to_owned()).or_default();
        let open = Arc::downgrade(open);
        s.listener_conns.retain(|(_, w)| w.strong_count() > 0 && !w.ptr_eq(&open));
        s.listener_conns.push((listener.to_owned(), open));
    }

    /// A request was decoded on `listener` (the pool side is counted by the dispatcher).
    pub(crate) fn accepted(&self, listener: &str) {
        with_entry(&mut self.state().listeners, listener, |l| l.accepted += 1);
    }

    /// A request on `listener` (served by `pool` when one was chosen) ended with `status`
    /// after `took` (the duration of its access-log line).
    pub(crate) fn finished(&self, listener: &str, pool: Option<&Arc<str>>, status: u16, took: Duration) {
        let mut s = self.state();
        with_entry(&mut s.listeners, listener, |l| {
            l.latency.record(took);
            l.responses.record(status);
        });
        if let Some(pool) = pool {
            let p = pool_entry(&mut s.pools, pool);
            p.latency.record(took);
            p.responses.record(status);
        }
    }

    /// A request of `pool` passed its slowlog-timeout.
    pub(crate) fn slow(&self, pool: &Arc<str>) {
        pool_entry(&mut self.state().pools, pool).slow += 1;
    }
}

/// The counters of `pool` (as its runtime names it), if it has any.
pub(crate) fn pool_counters<'s>(s: &'s State, pool: &Arc<str>) -> Option<&'s PoolCounters> {
    s.pools.get(&key(pool))
}

/// Forget the counters of pools that are gone (removed by a reload, template instances
/// stopped): nothing reads them any more.
pub(crate) fn forget_gone_pools(s: &mut State) {
    s.pools.retain(|_, c| c.owner.strong_count() > 0);
}

/// Forget the request counters of listener names no longer configured (a reload removed
/// or renamed them: they are kept by name, and a new name starts from zero), and the open-
/// connection counters of listener contexts that are gone. A renamed listener's open
/// connections are registered under its new name already ([`Tracker::listener_started`]).
pub(crate) fn forget_gone_listeners(s: &mut State, configured: &[crate::config::Listener]) {
    s.listeners.retain(|name, _| configured.iter().any(|l| l.name == *name));
    s.listener_conns.retain(|(_, w)| w.strong_count() > 0);
}

/// Open connections of a listener now.
pub(crate) fn open_connections(s: &State, listener: &str) -> usize {
    s.listener_conns
        .iter()
        .filter(|(name, _)| name == listener)
        .filter_map(|(_, w)| w.upgrade())
        .map(|c| c.load(Ordering::Relaxed))
        .sum()
}

#[cfg(test)]
mod tests {
    use crate::config::Listener;
    use crate::registry::Registry;
    use std::sync::atomic::AtomicUsize;
    use std::sync::Arc;

    #[test]
    fn the_status_ticker_drops_the_request_counters_of_names_a_reload_removed_or_renamed() {
        let before = ["kept", "old", "gone"].iter().zip(9000..).map(|(n, p)| Listener::for_tests(n, p)).collect();
        let registry = Registry::new(None, 1 << 20, before, Default::default());
        let open = Arc::new(AtomicUsize::new(2));
        registry.track.listener_started("old", &open);
        for name in ["kept", "old", "gone"] {
            registry.track.accepted(name);
        }
        // The reload: "old" renamed "new" on its socket (the new context registers the same
        // open-connection counter under the new name), "gone" removed.
        registry.set_listeners(vec![Listener::for_tests("kept", 9000), Listener::for_tests("new", 9001)]);
        registry.track.listener_started("new", &open);
        crate::status::tick(&registry, std::time::Instant::now());
        registry.track.with_state(|s| {
            let mut names: Vec<&str> = s.listeners.keys().map(String::as_str).collect();
            names.sort_unstable();
            assert_eq!(names, ["kept", "new"]);
            assert_eq!(
                (s.listeners["kept"].accepted, s.listeners["new"].accepted),
                (1, 0),
                "a new name starts from zero"
            );
            assert_eq!(super::open_connections(s, "new"), 2, "open connections follow the new name");
            assert_eq!(super::open_connections(s, "old"), 0);
        });
    }
}
