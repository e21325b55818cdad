//! Log lines a client can cause once per request or connection (503s under overload, 404s,
//! protocol errors) are rate-limited, so an overload or a scan does not also fill the disk.
//!
//! Per pool (or listener) and kind of line: the first occurrence is logged in full at
//! once (the first few, for kinds whose lines differ in more than the request: [`Kind::burst`]);
//! the others within the next second are only counted, and one summary line per second
//! gives their number ("pool app: 1234 more requests answered 503 (queue full) in the last
//! 1.0s"). The summary is written by the next occurrence after the second, or by the
//! flusher task ([`RateLimits::flusher`]) when none comes, so the count of a burst that stops is never
//! lost; at shutdown [`RateLimits::flush_all`] writes what is left. A kind that stayed quiet for a
//! whole second starts over: its next occurrence is logged in full again.
//!
//! The state ([`RateLimits`], one per daemon, in its registry) is one small list under one
//! mutex, taken only on these (error) paths.
//! `log-rate-limit: false` (bridge section) writes every line in full instead.
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// At most one summary line per kind and pool (or listener) in this time.
pub(crate) const WINDOW: Duration = Duration::from_secs(1);

/// What a rate-limited line is about (the summary's field name).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scope {
    Pool,
    Listener,
}

/// The level of the full line, and of its summaries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Level {
    Info,
    Warn,
}

/// One kind of rate-limited line (compared by address: use the statics below).
#[derive(Debug)]
pub(crate) struct Kind {
    pub scope: Scope,
    /// What happened, plural, as the summary says it: "requests answered 503".
    pub what: &'static str,
    /// Why: "queue full".
    pub reason: &'static str,
    pub level: Level,
    /// Occurrences logged in full in a second before the others are only counted.
    pub burst: u32,
}

/// 503: more requests waiting than `queue-size`.
pub(crate) static QUEUE_FULL: Kind =
    Kind { scope: Scope::Pool, what: "requests answered 503", reason: "queue full", level: Level::Warn, burst: 1 };
/// 503: no worker became free within `queue-timeout`.
pub(crate) static QUEUE_TIMEOUT: Kind =
    Kind { scope: Scope::Pool, what: "requests answered 503", reason: "queue timeout", level: Level::Warn, burst: 1 };
/// 503: the pool has no worker and cannot start one.
pub(crate) static UNAVAILABLE: Kind = Kind {
    scope: Scope::Pool,
    what: "requests answered 503",
    reason: "pool unavailable",
    level: Level::Warn,
    burst: 1,
};
// A client's own mistakes (a URI, a body, a record) differ from one request to the next:
// a few are kept in full each second, to see what a misbehaving client sends.
const CLIENT_BURST: u32 = 5;

/// 413: the declared body is larger than `max-body`.
pub(crate) static TOO_LARGE: Kind = Kind {
    scope: Scope::Pool,
    what: "requests answered 413",
    reason: "body larger than max-body",
    level: Level::Warn,
    burst: CLIENT_BURST,
};
/// 413: a streamed body passed `max-body`.
pub(crate) static BODY_CUT_OFF: Kind = Kind {
    scope: Scope::Pool,
    what: "requests cut off with 413",
    reason: "streamed body passed max-body",
    level: Level::Warn,
    burst: CLIENT_BURST,
};
/// 413: a body of unknown length larger than what `unknown-length-body: buffer` reads.
pub(crate) static BUFFER_TOO_LARGE: Kind = Kind {
    scope: Scope::Pool,
    what: "requests answered 413",
    reason: "body of unknown length larger than the unknown-length-body: buffer bound",
    level: Level::Warn,
    burst: CLIENT_BURST,
};
/// 411: a body of unknown length refused by `unknown-length-body: refuse`.
pub(crate) static LENGTH_REQUIRED: Kind = Kind {
    scope: Scope::Pool,
    what: "requests answered 411",
    reason: "body of unknown length (unknown-length-body: refuse)",
    level: Level::Warn,
    burst: CLIENT_BURST,
};
/// 404: no route of the listener matches.
pub(crate) static NO_ROUTE: Kind = Kind {
    scope: Scope::Listener,
    what: "requests answered 404",
    reason: "no route matches",
    level: Level::Info,
    burst: CLIENT_BURST,
};
/// A FastCGI connection closed for a protocol error.
pub(crate) static FASTCGI_PROTOCOL: Kind = Kind {
    scope: Scope::Listener,
    what: "connections closed",
    reason: "FastCGI protocol error",
    level: Level::Warn,
    burst: CLIENT_BURST,
};
/// 431: a request's headers (FastCGI PARAMS, the SCGI netstring) past `max-params`.
pub(crate) static HEADERS_TOO_LARGE: Kind = Kind {
    scope: Scope::Listener,
    what: "requests answered 431",
    reason: "request headers larger than max-params",
    level: Level::Warn,
    burst: CLIENT_BURST,
};
/// An SCGI connection closed for a protocol error.
pub(crate) static SCGI_PROTOCOL: Kind = Kind {
    scope: Scope::Listener,
    what: "connections closed",
    reason: "SCGI protocol error",
    level: Level::Warn,
    burst: CLIENT_BURST,
};
/// A FastCGI request refused with FCGI_OVERLOADED: its connection already had FCGI_MAX_REQS.
pub(crate) static MAX_REQUESTS: Kind = Kind {
    scope: Scope::Listener,
    what: "requests refused with FCGI_OVERLOADED",
    reason: "FCGI_MAX_REQS requests in flight on the connection",
    level: Level::Warn,
    burst: CLIENT_BURST,
};
/// A FastCGI request whose connection closed before its PARAMS or body were complete.
pub(crate) static ABANDONED: Kind = Kind {
    scope: Scope::Listener,
    what: "requests abandoned",
    reason: "connection closed before the request was complete",
    level: Level::Info,
    burst: CLIENT_BURST,
};
/// A FastCGI connection closed in the middle of a record.
pub(crate) static PARTIAL_RECORD: Kind = Kind {
    scope: Scope::Listener,
    what: "connections closed",
    reason: "in the middle of a FastCGI record",
    level: Level::Warn,
    burst: CLIENT_BURST,
};
/// A TCP connection from a peer FCGI_WEB_SERVER_ADDRS does not list.
pub(crate) static PEER_REFUSED: Kind = Kind {
    scope: Scope::Listener,
    what: "connections refused",
    reason: "peer not allowed (allowed-clients or FCGI_WEB_SERVER_ADDRS)",
    level: Level::Warn,
    burst: CLIENT_BURST,
};

/// A connection closed at once: the listener already holds `max-connections`.
pub(crate) static MAX_CONNECTIONS: Kind = Kind {
    scope: Scope::Listener,
    what: "connections refused",
    reason: "max-connections reached",
    level: Level::Warn,
    burst: 1,
};
/// 400: a CONTENT_LENGTH that is not plain decimal digits within 64 bits.
pub(crate) static BAD_REQUEST: Kind = Kind {
    scope: Scope::Listener,
    what: "requests answered 400",
    reason: "invalid CONTENT_LENGTH",
    level: Level::Warn,
    burst: CLIENT_BURST,
};
/// A connection closed because its request headers did not complete within `header-timeout`.
pub(crate) static HEADER_TIMEOUT: Kind = Kind {
    scope: Scope::Listener,
    what: "connections closed",
    reason: "header-timeout",
    level: Level::Warn,
    burst: CLIENT_BURST,
};
/// A connection closed because the web server read none of its response within `send-timeout`.
pub(crate) static SEND_TIMEOUT: Kind = Kind {
    scope: Scope::Listener,
    what: "connections closed",
    reason: "send-timeout",
    level: Level::Warn,
    burst: CLIENT_BURST,
};
/// A connection closed because unfinished headers, or a waiting request, passed `header-memory`.
pub(crate) static HEADER_MEMORY: Kind = Kind {
    scope: Scope::Listener,
    what: "connections closed",
    reason: "header-memory budget reached",
    level: Level::Warn,
    burst: CLIENT_BURST,
};
/// 408: a request body stalled for `body-timeout`.
pub(crate) static BODY_STALLED: Kind = Kind {
    scope: Scope::Pool,
    what: "requests ended",
    reason: "request body stalled (body-timeout)",
    level: Level::Warn,
    burst: CLIENT_BURST,
};
/// A request body that ended before its CONTENT_LENGTH.
pub(crate) static BODY_SHORT: Kind = Kind {
    scope: Scope::Pool,
    what: "requests ended",
    reason: "request body shorter than its CONTENT_LENGTH",
    level: Level::Warn,
    burst: CLIENT_BURST,
};
/// 200 instead of 206: too many ranges, or ranges larger than the file.
pub(crate) static RANGE_IGNORED: Kind = Kind {
    scope: Scope::Pool,
    what: "Range headers ignored",
    reason: "too many or too large ranges",
    level: Level::Info,
    burst: CLIENT_BURST,
};

/// What to do with one occurrence.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Hit {
    /// Log it in full.
    Log,
    /// Counted for the next summary; write nothing.
    Counted,
    /// Write this summary (which counts the occurrence) instead of the full line.
    Summary(Summary),
}

/// `count` occurrences of a kind that were not logged in full, over `over`.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Summary {
    pub kind: &'static Kind,
    pub name: Box<str>,
    pub count: u64,
    pub over: Duration,
}

impl PartialEq for Kind {
    fn eq(&self, other: &Self) -> bool {
        std::ptr::eq(self, other)
    }
}
impl Eq for Kind {}

struct Entry {
    kind: &'static Kind,
    name: Box<str>,
    /// Start of the current window: the first full line, or the last summary.
    since: Instant,
    /// Full lines in this window (set to the burst after a summary: a flood that goes on
    /// is only summarised).
    logged: u32,
    suppressed: u64,
}

/// The rate limiter itself, with time passed in (the unit tests use a fake clock).
pub(crate) struct Limiter {
    window: Duration,
    /// Few entries (active kinds × pools or listeners): a list beats a map here.
    entries: Vec<Entry>,
}

impl Limiter {
    pub(crate) fn new(window: Duration) -> Self {
        Self { window, entries: Vec::new() }
    }

    /// One occurrence of `kind` for the pool or listener `name` at `now`.
    pub(crate) fn hit(&mut self, kind: &'static Kind, name: &str, now: Instant) -> Hit {
        let Some(e) = self.entries.iter_mut().find(|e| std::ptr::eq(e.kind, kind) && &*e.name == name) else {
            self.entries.push(Entry { kind, name: name.into(), since: now, logged: 1, suppressed: 0 });
            return Hit::Log;
        };
        let over = now.saturating_duration_since(e.since);
        if over < self.window {
            if e.logged < kind.burst {
                e.logged += 1;
                return Hit::Log;
            }
            e.suppressed += 1;
            return Hit::Counted;
        }
        e.since = now;
        if e.suppressed == 0 {
            e.logged = 1;
            return Hit::Log;
        }
        e.logged = kind.burst;
        let count = std::mem::take(&mut e.suppressed) + 1;
        Hit::Summary(Summary { kind, name: e.name.clone(), count, over })
    }

    /// The summaries due at `now`, and when the next one may be due (`None`: nothing
    /// pending). A kind quiet for a whole window is forgotten.
    pub(crate) fn flush(&mut self, now: Instant) -> (Vec<Summary>, Option<Instant>) {
        let mut out = Vec::new();
        let window = self.window;
        self.entries.retain_mut(|e| {
            let over = now.saturating_duration_since(e.since);
            if over < window {
                return true;
            }
            if e.suppressed == 0 {
                return false;
            }
            out.push(Summary { kind: e.kind, name: e.name.clone(), count: std::mem::take(&mut e.suppressed), over });
            e.since = now;
            e.logged = e.kind.burst;
            true
        });
        let next = self.entries.iter().map(|e| e.since + window).min();
        (out, next)
    }

    /// Every pending count, due or not (shutdown); forgets everything.
    pub(crate) fn drain(&mut self, now: Instant) -> Vec<Summary> {
        self.entries
            .drain(..)
            .filter(|e| e.suppressed > 0)
            .map(|e| Summary {
                over: now.saturating_duration_since(e.since),
                kind: e.kind,
                name: e.name,
                count: e.suppressed,
            })
            .collect()
    }

    fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// The daemon's rate limiter: one per registry (registry.rs), so two daemons' worth of
/// state in one process (the tests) never mix.
pub(crate) struct RateLimits {
    limiter: Mutex<Limiter>,
    /// `log-rate-limit`: false logs every occurrence in full.
    enabled: AtomicBool,
    /// Wakes the flusher when the first entry appears (it sleeps while there is none).
    wake: Notify,
}

impl Default for RateLimits {
    fn default() -> Self {
        Self { limiter: Mutex::new(Limiter::new(WINDOW)), enabled: AtomicBool::new(true), wake: Notify::new() }
    }
}

impl RateLimits {
    /// `log-rate-limit` (at start-up and after each reload).
    pub(crate) fn set_enabled(&self, on: bool) {
        self.enabled.store(on, Ordering::Relaxed);
    }

    fn limiter(&self) -> std::sync::MutexGuard<'_, Limiter> {
        // Every critical section leaves the list consistent: a poisoned lock is still usable.
        self.limiter.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether to write the full line of this occurrence of `kind` for `name` (a pool or
    /// listener); when not, it is counted, and a due summary is written here.
    pub(crate) fn allow(&self, kind: &'static Kind, name: &str) -> bool {
        if !self.enabled.load(Ordering::Relaxed) {
            return true;
        }
        let now = Instant::now();
        let (hit, was_empty) = {
            let mut l = self.limiter();
            let was_empty = l.is_empty();
            (l.hit(kind, name, now), was_empty)
        };
        match hit {
            Hit::Log => {
                if was_empty {
                    self.wake.notify_one();
                }
                true
            }
            Hit::Counted => false,
            Hit::Summary(s) => {
                emit(&s);
                false
            }
        }
    }

    /// Write the summaries of bursts that stopped; runs for the daemon's life.
    pub(crate) async fn flusher(self: Arc<Self>) {
        loop {
            let (due, next) = self.limiter().flush(Instant::now());
            for s in &due {
                emit(s);
            }
            match next {
                Some(at) => tokio::time::sleep_until(at.into()).await,
                // A permit stored by `notify_one` before this wait is not lost.
                None => self.wake.notified().await,
            }
        }
    }

    /// Write every count still pending (at shutdown).
    pub(crate) fn flush_all(&self) {
        let left = self.limiter().drain(Instant::now());
        for s in &left {
            emit(s);
        }
    }
}

fn emit(s: &Summary) {
    let (k, name, count) = (s.kind, &*s.name, s.count);
    let secs = s.over.as_secs_f64();
    macro_rules! line {
        ($level:ident, $field:ident, $scope:literal) => {
            tracing::$level!(
                $field = name,
                suppressed = count,
                reason = k.reason,
                concat!($scope, " {}: {} more {} ({}) in the last {:.1}s"),
                name,
                count,
                k.what,
                k.reason,
                secs
            )
        };
    }
    match (k.scope, k.level) {
        (Scope::Pool, Level::Warn) => line!(warn, pool, "pool"),
        (Scope::Pool, Level::Info) => line!(info, pool, "pool"),
        (Scope::Listener, Level::Warn) => line!(warn, listener, "listener"),
        (Scope::Listener, Level::Info) => line!(info, listener, "listener"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(t0: Instant, ms: u64) -> Instant {
        t0 + Duration::from_millis(ms)
    }

    fn summary(kind: &'static Kind, name: &str, count: u64, over_ms: u64) -> Summary {
        Summary { kind, name: name.into(), count, over: Duration::from_millis(over_ms) }
    }

    #[test]
    fn first_in_full_then_counted_then_one_summary_per_window() {
        let t0 = Instant::now();
        let mut l = Limiter::new(WINDOW);
        assert_eq!(l.hit(&QUEUE_FULL, "app", t0), Hit::Log);
        for ms in 1..1000 {
            assert_eq!(l.hit(&QUEUE_FULL, "app", at(t0, ms)), Hit::Counted);
        }
        // The next one after the window writes the summary and is counted in it.
        assert_eq!(l.hit(&QUEUE_FULL, "app", at(t0, 1200)), Hit::Summary(summary(&QUEUE_FULL, "app", 1000, 1200)));
        assert_eq!(l.hit(&QUEUE_FULL, "app", at(t0, 1300)), Hit::Counted);
        // Nothing is due before the new window ends.
        let (due, next) = l.flush(at(t0, 2100));
        assert!(due.is_empty());
        assert_eq!(next, Some(at(t0, 2200)));
    }

    #[test]
    fn a_burst_that_stops_is_summarised_by_the_flush_then_forgotten() {
        let t0 = Instant::now();
        let mut l = Limiter::new(WINDOW);
        assert_eq!(l.flush(t0), (vec![], None));
        assert_eq!(l.hit(&QUEUE_FULL, "app", t0), Hit::Log);
        for ms in 1..=41 {
            l.hit(&QUEUE_FULL, "app", at(t0, ms));
        }
        assert_eq!(l.flush(at(t0, 500)), (vec![], Some(at(t0, 1000))));
        assert_eq!(l.flush(at(t0, 1003)), (vec![summary(&QUEUE_FULL, "app", 41, 1003)], Some(at(t0, 2003))));
        // A quiet window: forgotten, and the next occurrence is logged in full again.
        assert_eq!(l.flush(at(t0, 2003)), (vec![], None));
        assert_eq!(l.hit(&QUEUE_FULL, "app", at(t0, 5000)), Hit::Log);
    }

    #[test]
    fn a_lone_occurrence_after_a_quiet_window_is_logged_in_full() {
        // No flush ran in between: the entry is still there, with nothing counted.
        let t0 = Instant::now();
        let mut l = Limiter::new(WINDOW);
        assert_eq!(l.hit(&UNAVAILABLE, "app", t0), Hit::Log);
        assert_eq!(l.hit(&UNAVAILABLE, "app", at(t0, 1500)), Hit::Log);
        assert_eq!(l.hit(&UNAVAILABLE, "app", at(t0, 1600)), Hit::Counted);
    }

    #[test]
    fn a_burst_of_client_errors_keeps_a_few_in_full() {
        let t0 = Instant::now();
        let mut l = Limiter::new(WINDOW);
        for ms in 0..CLIENT_BURST as u64 {
            assert_eq!(l.hit(&FASTCGI_PROTOCOL, "fcgi", at(t0, ms)), Hit::Log);
        }
        assert_eq!(l.hit(&FASTCGI_PROTOCOL, "fcgi", at(t0, 100)), Hit::Counted);
        assert_eq!(l.flush(at(t0, 1000)).0, vec![summary(&FASTCGI_PROTOCOL, "fcgi", 1, 1000)]);
        // The flood went on: the next window is only summarised.
        assert_eq!(l.hit(&FASTCGI_PROTOCOL, "fcgi", at(t0, 1100)), Hit::Counted);
        // Fewer than the burst per second, with quiet seconds between: never suppressed.
        let mut l = Limiter::new(WINDOW);
        for s in 0..10 {
            for ms in 0..CLIENT_BURST as u64 {
                assert_eq!(l.hit(&FASTCGI_PROTOCOL, "fcgi", at(t0, s * 2000 + ms * 100)), Hit::Log);
            }
            l.flush(at(t0, s * 2000 + 1500));
        }
    }

    #[test]
    fn kinds_and_names_are_counted_apart() {
        let t0 = Instant::now();
        let mut l = Limiter::new(WINDOW);
        assert_eq!(l.hit(&QUEUE_FULL, "app", t0), Hit::Log);
        assert_eq!(l.hit(&QUEUE_TIMEOUT, "app", t0), Hit::Log);
        assert_eq!(l.hit(&QUEUE_FULL, "other", t0), Hit::Log);
        assert_eq!(l.hit(&QUEUE_FULL, "app", at(t0, 10)), Hit::Counted);
        assert_eq!(l.hit(&QUEUE_FULL, "app", at(t0, 20)), Hit::Counted);
        assert_eq!(l.hit(&QUEUE_FULL, "other", at(t0, 30)), Hit::Counted);
        let (due, _) = l.flush(at(t0, 1000));
        assert_eq!(due, vec![summary(&QUEUE_FULL, "app", 2, 1000), summary(&QUEUE_FULL, "other", 1, 1000)]);
    }

    #[test]
    fn every_occurrence_is_in_a_full_line_or_a_summary() {
        // A steady stream over ten windows, flushed at odd times: the counts add up.
        let t0 = Instant::now();
        let mut l = Limiter::new(WINDOW);
        let (mut full, mut summed, mut lines) = (0u64, 0u64, 0u64);
        for ms in (0..10_000).step_by(3) {
            match l.hit(&QUEUE_FULL, "app", at(t0, ms)) {
                Hit::Log => full += 1,
                Hit::Counted => {}
                Hit::Summary(s) => {
                    summed += s.count;
                    lines += 1;
                }
            }
            if ms % 700 == 0 {
                for s in l.flush(at(t0, ms)).0 {
                    summed += s.count;
                    lines += 1;
                }
            }
        }
        summed += l.drain(at(t0, 10_000)).iter().map(|s| s.count).sum::<u64>();
        assert_eq!(full + summed, (0..10_000).step_by(3).count() as u64);
        assert_eq!(full, 1);
        assert!(lines <= 11, "{lines} summary lines for ten windows");
    }

    #[test]
    fn two_rate_limits_share_nothing() {
        let (a, b) = (RateLimits::default(), RateLimits::default());
        assert!(a.allow(&QUEUE_FULL, "app"));
        assert!(!a.allow(&QUEUE_FULL, "app"));
        // The other value has seen nothing: its first occurrence is logged in full.
        assert!(b.allow(&QUEUE_FULL, "app"));
        // Turning one off leaves the other limiting.
        a.set_enabled(false);
        assert!(a.allow(&QUEUE_FULL, "app"));
        assert!(!b.allow(&QUEUE_FULL, "app"));
    }
}
