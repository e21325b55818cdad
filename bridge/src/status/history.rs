//! The recent past of every pool and listener, for the status page's charts and the
//! "last minute" numbers: every [`INTERVAL`] the ticker (`slowlog.rs`'s task) stores the
//! cumulative counters and the gauges in a ring of [`SAMPLES`] per pool and listener, so
//! the memory is bounded (about 40 KiB per pool) and nothing runs per request. Rates and
//! percentiles of an interval are differences between two samples.
use super::latency::{Classes, Histogram, Percentiles};
use super::model::{ListenerHistory, PoolHistory};
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Time between two samples.
pub(crate) const INTERVAL: Duration = Duration::from_secs(5);

/// Samples kept per pool and listener: 15 minutes.
pub(crate) const SAMPLES: usize = 180;

/// The span of the "last minute" numbers.
pub(crate) const RECENT: Duration = Duration::from_secs(60);

/// A bounded FIFO: pushing onto a full ring drops its oldest item.
#[derive(Debug)]
pub(crate) struct Ring<T> {
    items: VecDeque<T>,
    cap: usize,
}

impl<T> Ring<T> {
    /// An empty ring holding at most `cap` items.
    pub(crate) fn new(cap: usize) -> Self {
        Self { items: VecDeque::with_capacity(cap), cap: cap.max(1) }
    }

    /// Append, dropping the oldest item when full.
    pub(crate) fn push(&mut self, item: T) {
        if self.items.len() == self.cap {
            self.items.pop_front();
        }
        self.items.push_back(item);
    }

    /// Oldest first.
    pub(crate) fn iter(&self) -> impl DoubleEndedIterator<Item = &T> + ExactSizeIterator {
        self.items.iter()
    }
}

/// A pool's cumulative counters and its gauges at one instant.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct PoolSample {
    pub latency: Histogram,
    pub responses: Classes,
    /// Requests a direct pool's workers answered and did not time (their scoreboards).
    pub direct_requests: u64,
    /// 503s (queue full, queue-timeout, no worker).
    pub rejected: u64,
    /// 504s (request-timeout).
    pub timeouts: u64,
    pub exits: u64,
    pub crashes: u64,
    pub queue: usize,
    pub busy_workers: usize,
    pub idle_workers: usize,
    /// When the daemon made the pool (Unix seconds): a pool removed and made again has
    /// counters from zero, and a series of its own.
    pub born: f64,
}

impl PoolSample {
    /// Requests answered: those the bridge timed and a direct pool's workers' own.
    pub(crate) fn requests(&self) -> u64 {
        self.latency.count() + self.direct_requests
    }

    /// How much each counter that an operator watches moved since `then`.
    pub(crate) fn moved_since(&self, then: &Self) -> Moved {
        Moved {
            requests: self.requests().saturating_sub(then.requests()),
            server_errors: self.responses.server_errors().saturating_sub(then.responses.server_errors()),
            rejected_requests: self.rejected.saturating_sub(then.rejected),
            request_timeouts: self.timeouts.saturating_sub(then.timeouts),
            worker_exits: self.exits.saturating_sub(then.exits),
            worker_crashes: self.crashes.saturating_sub(then.crashes),
        }
    }
}

/// What moved over some span (the counters whose movement an operator must see).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub(crate) struct Moved {
    pub requests: u64,
    pub server_errors: u64,
    pub rejected_requests: u64,
    pub request_timeouts: u64,
    pub worker_exits: u64,
    pub worker_crashes: u64,
}

/// A listener's cumulative counters at one instant.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct ListenerSample {
    pub latency: Histogram,
    pub responses: Classes,
    /// Requests a direct listener's workers answered and did not time (their scoreboards).
    pub direct_requests: u64,
}

impl ListenerSample {
    /// Requests answered: those the bridge timed and a direct listener's workers' own.
    pub(crate) fn requests(&self) -> u64 {
        self.latency.count() + self.direct_requests
    }
}

#[derive(Debug)]
struct Series<T> {
    name: String,
    ring: Ring<(Instant, T)>,
}

/// The rings of every pool and listener, and when the next sample is due.
#[derive(Debug, Default)]
pub(crate) struct History {
    pools: Vec<Series<PoolSample>>,
    listeners: Vec<Series<ListenerSample>>,
    next: Option<Instant>,
    /// The longest queue of each pool seen by the ticker since the last sample: a burst
    /// that queued and drained between two samples still shows.
    queue_peaks: Vec<(String, usize)>,
}

/// Append to each named ring (creating it), and forget the rings of names no longer
/// there (a reload removed the pool or listener).
fn append<T>(series: &mut Vec<Series<T>>, now: Instant, samples: Vec<(String, T)>) {
    series.retain(|s| samples.iter().any(|(n, _)| *n == s.name));
    for (name, sample) in samples {
        match series.iter_mut().find(|s| s.name == name) {
            Some(s) => s.ring.push((now, sample)),
            None => {
                let mut ring = Ring::new(SAMPLES);
                ring.push((now, sample));
                series.push(Series { name, ring });
            }
        }
    }
}

/// The newest sample taken at least `span` before `now`.
fn base<'a, T>(series: &'a [Series<T>], name: &str, now: Instant, span: Duration) -> Option<&'a T> {
    let s = series.iter().find(|s| s.name == name)?;
    s.ring.iter().rev().find(|(at, _)| now.saturating_duration_since(*at) >= span).map(|(_, t)| t)
}

impl History {
    /// Whether a sample is due at `now`.
    pub(crate) fn due(&self, now: Instant) -> bool {
        self.next.is_none_or(|n| now >= n)
    }

    /// The ticker saw `len` requests waiting in `pool`'s queue.
    pub(crate) fn observe_queue(&mut self, pool: &str, len: usize) {
        match self.queue_peaks.iter_mut().find(|(n, _)| n == pool) {
            Some((_, peak)) => *peak = (*peak).max(len),
            None if len > 0 => self.queue_peaks.push((pool.to_owned(), len)),
            None => {}
        }
    }

    /// Store one sample of every pool and listener taken at `now`; a pool's queue is the
    /// longest seen since the previous sample.
    pub(crate) fn record(
        &mut self,
        now: Instant,
        mut pools: Vec<(String, PoolSample)>,
        listeners: Vec<(String, ListenerSample)>,
    ) {
        for (name, sample) in &mut pools {
            if let Some((_, peak)) = self.queue_peaks.iter().find(|(n, _)| n == name) {
                sample.queue = sample.queue.max(*peak);
            }
        }
        self.queue_peaks.clear();
        // A pool made again since the previous sample (a reload removed and added it, a
        // template instance was stopped and made again) starts a series of its own: its
        // counters start from zero, and a rate across the two would read as nothing done.
        self.pools.retain(|s| {
            let last = s.ring.iter().next_back().map(|(_, last)| last.born);
            pools.iter().all(|(name, p)| *name != s.name || last.is_none_or(|born| born == p.born))
        });
        // Keep the 5 s grid when the ticker is a little late; restart it after a long stall.
        self.next = Some(match self.next {
            Some(n) if now < n + INTERVAL => n + INTERVAL,
            _ => now + INTERVAL,
        });
        append(&mut self.pools, now, pools);
        append(&mut self.listeners, now, listeners);
    }

    /// The pool's sample about a minute old, or None when the pool is younger (then the
    /// last minute is its whole life: compare with zero).
    pub(crate) fn pool_minute_ago(&self, name: &str, now: Instant) -> Option<&PoolSample> {
        base(&self.pools, name, now, RECENT)
    }

    /// The same for a listener.
    pub(crate) fn listener_minute_ago(&self, name: &str, now: Instant) -> Option<&ListenerSample> {
        base(&self.listeners, name, now, RECENT)
    }

    /// The charts' data of every pool, oldest first; times are Unix seconds.
    pub(crate) fn pools(&self, unix: impl Fn(Instant) -> f64) -> Vec<PoolHistory> {
        self.pools.iter().map(|s| pool_series(s, &unix)).collect()
    }

    /// The same for the listeners.
    pub(crate) fn listeners(&self, unix: impl Fn(Instant) -> f64) -> Vec<ListenerHistory> {
        self.listeners.iter().map(|s| listener_series(s, &unix)).collect()
    }
}

/// Per-second rate of a counter between two samples.
fn rate(now: u64, then: u64, secs: f64) -> f64 {
    if secs <= 0.0 {
        return 0.0;
    }
    ((now.saturating_sub(then)) as f64 / secs * 1000.0).round() / 1000.0
}

/// Consecutive pairs of samples: (seconds between them, older, newer).
fn pairs<T>(ring: &Ring<(Instant, T)>) -> impl Iterator<Item = (f64, &(Instant, T), &(Instant, T))> {
    ring.iter().zip(ring.iter().skip(1)).map(|(a, b)| (b.0.saturating_duration_since(a.0).as_secs_f64(), a, b))
}

fn pool_series(s: &Series<PoolSample>, unix: &impl Fn(Instant) -> f64) -> PoolHistory {
    let mut h = PoolHistory { name: s.name.clone(), ..Default::default() };
    for (secs, (_, a), (at, b)) in pairs(&s.ring) {
        h.time.push((unix(*at) * 1000.0).round() / 1000.0);
        h.requests_per_second.push(rate(b.requests(), a.requests(), secs));
        let p = b.latency.since(&a.latency).summary();
        h.p50_seconds.push(p.p50);
        h.p95_seconds.push(p.p95);
        h.p99_seconds.push(p.p99);
        h.queue_length.push(b.queue);
        h.busy_workers.push(b.busy_workers);
        h.idle_workers.push(b.idle_workers);
        h.server_errors_per_second.push(rate(b.responses.server_errors(), a.responses.server_errors(), secs));
        let m = b.moved_since(a);
        h.rejected_requests.push(m.rejected_requests);
        h.request_timeouts.push(m.request_timeouts);
        h.worker_exits.push(m.worker_exits);
        h.worker_crashes.push(m.worker_crashes);
    }
    if let (Some((_, first)), Some((_, last))) = (s.ring.iter().next(), s.ring.iter().next_back()) {
        h.moved = last.moved_since(first);
    }
    h
}

fn listener_series(s: &Series<ListenerSample>, unix: &impl Fn(Instant) -> f64) -> ListenerHistory {
    let mut h = ListenerHistory { name: s.name.clone(), ..Default::default() };
    for (secs, (_, a), (at, b)) in pairs(&s.ring) {
        h.time.push((unix(*at) * 1000.0).round() / 1000.0);
        h.requests_per_second.push(rate(b.requests(), a.requests(), secs));
        let Percentiles { p50, p95, p99, .. } = b.latency.since(&a.latency).summary();
        h.p50_seconds.push(p50);
        h.p95_seconds.push(p95);
        h.p99_seconds.push(p99);
        h.server_errors_per_second.push(rate(b.responses.server_errors(), a.responses.server_errors(), secs));
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(requests: u64, ms: u64, errors: u64, queue: usize) -> PoolSample {
        let mut s = PoolSample { queue, ..Default::default() };
        for _ in 0..requests {
            s.latency.record(Duration::from_millis(ms));
        }
        for _ in 0..errors {
            s.responses.record(500);
        }
        s
    }

    #[test]
    fn ring_keeps_the_newest() {
        let mut r = Ring::new(3);
        for i in 0..5 {
            r.push(i);
        }
        assert_eq!(r.iter().copied().collect::<Vec<_>>(), vec![2, 3, 4]);
        assert_eq!(r.iter().len(), 3);
    }

    #[test]
    fn samples_follow_a_five_second_grid_with_fake_time() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut h = History::default();
        assert!(h.due(t0));
        h.record(t0, vec![], vec![]);
        assert!(!h.due(at(4_999)));
        assert!(h.due(at(5_000)));
        // 200 ms late: the next one is still due at 10 s, not 10.2 s.
        h.record(at(5_200), vec![], vec![]);
        assert!(!h.due(at(9_999)) && h.due(at(10_000)));
        // After a long stall the grid restarts from now.
        h.record(at(60_000), vec![], vec![]);
        assert!(!h.due(at(64_999)) && h.due(at(65_000)));
    }

    #[test]
    fn bounded_to_fifteen_minutes_and_forgets_removed_pools() {
        let t0 = Instant::now();
        let mut h = History::default();
        for i in 0..(SAMPLES as u64 + 20) {
            let pools = vec![("app".to_owned(), sample(i, 3, 0, 0)), ("old".to_owned(), sample(0, 3, 0, 0))];
            h.record(t0 + INTERVAL * i as u32, pools, vec![]);
        }
        let series = h.pools(|_| 0.0);
        assert_eq!(series.len(), 2);
        assert_eq!(series[0].time.len(), SAMPLES - 1);
        h.record(t0 + INTERVAL * 500, vec![("app".to_owned(), PoolSample::default())], vec![]);
        assert_eq!(h.pools(|_| 0.0).iter().map(|p| p.name.as_str()).collect::<Vec<_>>(), vec!["app"]);
    }

    #[test]
    fn a_pool_made_again_starts_a_series_of_its_own() {
        let t0 = Instant::now();
        let mut h = History::default();
        let born = |at: f64, requests: u64| PoolSample { born: at, ..sample(requests, 3, 0, 0) };
        for i in 0..15u32 {
            h.record(t0 + INTERVAL * i, vec![("app".to_owned(), born(1.0, u64::from(i) * 10))], vec![]);
        }
        // Made again with 3 requests served since: not 3 - 140 requests in 5 s, nor a
        // minute-old base from the pool that was.
        let now = t0 + INTERVAL * 15;
        h.record(now, vec![("app".to_owned(), born(2.0, 3))], vec![]);
        let series = h.pools(|_| 0.0);
        assert_eq!((series.len(), series[0].time.len(), series[0].moved.requests), (1, 0, 0));
        assert!(h.pool_minute_ago("app", now + Duration::from_secs(30)).is_none());
        h.record(now + INTERVAL, vec![("app".to_owned(), born(2.0, 8))], vec![]);
        assert_eq!(h.pools(|_| 0.0)[0].requests_per_second, vec![1.0]);
    }

    #[test]
    fn rates_and_percentiles_per_interval() {
        let t0 = Instant::now();
        let mut h = History::default();
        h.record(t0, vec![("app".to_owned(), sample(0, 0, 0, 0))], vec![]);
        // 50 requests of 3 ms and 5 errors in the first 5 s; the queue is 4 at its end.
        h.record(t0 + INTERVAL, vec![("app".to_owned(), sample(50, 3, 5, 4))], vec![]);
        // Then 10 s with no request.
        h.record(t0 + INTERVAL * 3, vec![("app".to_owned(), sample(50, 3, 5, 0))], vec![]);
        let p = &h.pools(|i| i.duration_since(t0).as_secs_f64() + 1000.0)[0];
        assert_eq!(p.time, vec![1005.0, 1015.0]);
        assert_eq!(p.requests_per_second, vec![10.0, 0.0]);
        assert_eq!(p.server_errors_per_second, vec![1.0, 0.0]);
        assert_eq!(p.queue_length, vec![4, 0]);
        assert_eq!(p.p50_seconds[1], None);
        let p50 = p.p50_seconds[0].unwrap_or(0.0);
        assert!((0.0025..=0.005).contains(&p50), "{p50}");
    }

    #[test]
    fn the_queue_of_a_sample_is_the_peak_since_the_previous_one() {
        let t0 = Instant::now();
        let mut h = History::default();
        h.record(t0, vec![("app".to_owned(), sample(0, 0, 0, 0))], vec![]);
        for len in [0, 3, 7, 2, 0] {
            h.observe_queue("app", len);
        }
        h.observe_queue("other", 0);
        h.record(t0 + INTERVAL, vec![("app".to_owned(), sample(0, 0, 0, 1))], vec![]);
        // Then nothing queued: the next sample has the queue of its own instant.
        h.record(t0 + INTERVAL * 2, vec![("app".to_owned(), sample(0, 0, 0, 0))], vec![]);
        assert_eq!(h.pools(|_| 0.0)[0].queue_length, vec![7, 0]);
    }

    #[test]
    fn a_minute_ago_is_the_newest_sample_at_least_sixty_seconds_old() {
        let t0 = Instant::now();
        let mut h = History::default();
        for i in 0..20u32 {
            h.record(t0 + INTERVAL * i, vec![("app".to_owned(), sample(u64::from(i), 3, 0, 0))], vec![]);
        }
        let now = t0 + INTERVAL * 19 + Duration::from_secs(2);
        // Samples are at 0, 5, …, 95 s; now is 97 s: the newest one at or before 37 s is 35 s.
        assert_eq!(h.pool_minute_ago("app", now).map(|s| s.latency.count()), Some(7));
        // Younger than a minute: none (compare with zero).
        assert!(h.pool_minute_ago("app", t0 + Duration::from_secs(30)).is_none());
        assert!(h.pool_minute_ago("nope", now).is_none());
        let moved = sample(30, 3, 2, 0).moved_since(&sample(7, 3, 0, 0));
        assert_eq!((moved.requests, moved.server_errors), (23, 2));
    }
}
