//! Request durations as a fixed-bucket histogram (Prometheus' default buckets, extended
//! to 1 ms and 30 s), and percentiles estimated from its buckets.
//!
//! Recording is a short scan of 14 integer bounds and two additions on a plain array,
//! under the status mutex the request already takes (`track.rs`): no allocation, no
//! float arithmetic on the request path.
use serde::Serialize;
use std::time::Duration;

/// Upper bounds of the finite buckets, nanoseconds (an observation equal to a bound
/// belongs to that bucket, as Prometheus' `le` says).
pub(crate) const BOUNDS_NS: [u64; 14] = [
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    5_000_000_000,
    10_000_000_000,
    30_000_000_000,
];

/// Buckets, the last one (+Inf) included.
pub(crate) const BUCKETS: usize = BOUNDS_NS.len() + 1;

/// The `le` label of each bucket, as OpenMetrics' canonical numbers write them.
pub(crate) const LE: [&str; BUCKETS] = [
    "0.001", "0.0025", "0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1.0", "2.5", "5.0", "10.0", "30.0",
    "+Inf",
];

/// Observations per bucket (not cumulative) and their sum.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Histogram {
    counts: [u64; BUCKETS],
    sum_ns: u64,
}

impl Histogram {
    /// Counts per bucket (+Inf last) and their sum, as a direct worker's scoreboard keeps them.
    pub(crate) fn from_parts(counts: [u64; BUCKETS], sum_ns: u64) -> Self {
        Self { counts, sum_ns }
    }

    /// Both histograms' observations.
    pub(crate) fn plus(mut self, other: Self) -> Self {
        for (c, o) in self.counts.iter_mut().zip(other.counts) {
            *c = c.saturating_add(o);
        }
        self.sum_ns = self.sum_ns.saturating_add(other.sum_ns);
        self
    }

    /// Count one request that took `d`.
    pub(crate) fn record(&mut self, d: Duration) {
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        let i = BOUNDS_NS.iter().position(|&b| ns <= b).unwrap_or(BOUNDS_NS.len());
        self.counts[i] += 1;
        self.sum_ns = self.sum_ns.saturating_add(ns);
    }

    /// Observations in all.
    pub(crate) fn count(&self) -> u64 {
        // Saturating: a direct worker's counts come from memory its app could write.
        self.counts.iter().fold(0, |n: u64, &c| n.saturating_add(c))
    }

    /// Their total duration, seconds.
    pub(crate) fn sum_seconds(&self) -> f64 {
        self.sum_ns as f64 / 1e9
    }

    /// Observations at or below each bound (the `_bucket` series), +Inf last.
    pub(crate) fn cumulative(&self) -> [u64; BUCKETS] {
        let mut out = self.counts;
        for i in 1..BUCKETS {
            out[i] += out[i - 1];
        }
        out
    }

    /// What was observed after `earlier` (a snapshot of the same histogram). A bucket that
    /// went down (the pool was removed and added again) counts as empty.
    pub(crate) fn since(&self, earlier: &Self) -> Self {
        let mut out = Self { counts: [0; BUCKETS], sum_ns: self.sum_ns.saturating_sub(earlier.sum_ns) };
        for (o, (now, then)) in out.counts.iter_mut().zip(self.counts.iter().zip(&earlier.counts)) {
            *o = now.saturating_sub(*then);
        }
        out
    }

    /// The `q`-quantile (0 < q < 1) in seconds, interpolated linearly inside its bucket as
    /// Prometheus' `histogram_quantile` does; one in the +Inf bucket is reported as the
    /// highest finite bound. None without observations.
    pub(crate) fn quantile(&self, q: f64) -> Option<f64> {
        let total = self.count();
        if total == 0 {
            return None;
        }
        let rank = q.clamp(0.0, 1.0) * total as f64;
        let mut below = 0u64;
        for (i, &n) in self.counts.iter().enumerate() {
            if n > 0 && (below + n) as f64 >= rank {
                let Some(&upper) = BOUNDS_NS.get(i) else { break };
                let lower = if i == 0 { 0 } else { BOUNDS_NS[i - 1] };
                let frac = ((rank - below as f64) / n as f64).clamp(0.0, 1.0);
                return Some((lower as f64 + (upper - lower) as f64 * frac) / 1e9);
            }
            below += n;
        }
        Some(BOUNDS_NS[BOUNDS_NS.len() - 1] as f64 / 1e9)
    }

    /// Count and the usual percentiles.
    pub(crate) fn summary(&self) -> Percentiles {
        Percentiles {
            count: self.count(),
            p50: self.quantile(0.5).map(round_us),
            p95: self.quantile(0.95).map(round_us),
            p99: self.quantile(0.99).map(round_us),
        }
    }
}

/// Seconds to the microsecond: finer digits would only be interpolation noise.
fn round_us(s: f64) -> f64 {
    (s * 1e6).round() / 1e6
}

/// Request count and estimated percentiles (seconds) over some span.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub(crate) struct Percentiles {
    pub count: u64,
    pub p50: Option<f64>,
    pub p95: Option<f64>,
    pub p99: Option<f64>,
}

/// Responses by status class: 1xx … 5xx (index 0 … 4).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Classes(pub [u64; 5]);

impl Classes {
    /// The labels of the classes, in index order.
    pub(crate) const NAMES: [&'static str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

    /// Count one response with `status` (outside 100-599: not counted).
    pub(crate) fn record(&mut self, status: u16) {
        if let Some(n) = (status / 100).checked_sub(1).and_then(|i| self.0.get_mut(usize::from(i))) {
            *n += 1;
        }
    }

    /// These and `other`, class by class.
    pub(crate) fn plus(self, other: Self) -> Self {
        Self(std::array::from_fn(|i| self.0[i] + other.0[i]))
    }

    /// 5xx responses.
    pub(crate) fn server_errors(&self) -> u64 {
        self.0[4]
    }

    /// Responses of every class.
    pub(crate) fn total(&self) -> u64 {
        self.0.iter().sum()
    }
}

impl Serialize for Classes {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(Some(5))?;
        for (k, v) in Self::NAMES.iter().zip(self.0) {
            m.serialize_entry(k, &v)?;
        }
        m.end()
    }
}

#[cfg(test)]
mod tests {
    /// Direct workers count their requests' durations in these buckets themselves: the
    /// worker crate (built alone for the wheel) keeps a copy, which must not drift.
    #[test]
    fn direct_workers_count_in_the_same_buckets() {
        let worker = include_str!("../../../workers/src/scoreboard.rs");
        let decl = "const BOUNDS_NS: [u64; 14] = [";
        let list = worker.split_once(decl).and_then(|(_, rest)| rest.split_once("];")).map(|(l, _)| l);
        let theirs: Vec<u64> =
            list.unwrap_or_default().split(',').filter_map(|n| n.trim().replace('_', "").parse().ok()).collect();
        assert_eq!(theirs, super::BOUNDS_NS);
    }

    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn close(a: Option<f64>, b: f64) -> bool {
        a.is_some_and(|a| (a - b).abs() < 1e-9)
    }

    #[test]
    fn bounds_are_inclusive_and_labels_match_them() {
        let mut h = Histogram::default();
        h.record(ms(1)); // exactly 1 ms: the first bucket
        h.record(Duration::from_nanos(1_000_001)); // just above: the second
        h.record(Duration::from_secs(31)); // past the last bound: +Inf
        assert_eq!(h.cumulative()[0], 1);
        assert_eq!(h.cumulative()[1], 2);
        assert_eq!(h.cumulative()[BUCKETS - 2], 2);
        assert_eq!(h.cumulative()[BUCKETS - 1], 3);
        assert_eq!(h.count(), 3);
        assert!((h.sum_seconds() - 31.002000001).abs() < 1e-9);
        for (b, le) in BOUNDS_NS.iter().zip(LE) {
            assert_eq!(*b as f64 / 1e9, le.parse::<f64>().unwrap_or(f64::NAN), "{le}");
        }
        assert_eq!(LE[BUCKETS - 1], "+Inf");
    }

    #[test]
    fn quantiles_interpolate_inside_the_bucket() {
        let mut h = Histogram::default();
        assert_eq!(h.quantile(0.5), None);
        // 100 requests in (250 ms, 500 ms]: the median is half-way through that bucket.
        for _ in 0..100 {
            h.record(ms(300));
        }
        assert!(close(h.quantile(0.5), 0.375), "{:?}", h.quantile(0.5));
        assert!(close(h.quantile(0.99), 0.4975), "{:?}", h.quantile(0.99));
        // 100 more in the first bucket: the median is now its upper bound, p25 half of it.
        for _ in 0..100 {
            h.record(Duration::from_micros(200));
        }
        assert!(close(h.quantile(0.5), 0.001), "{:?}", h.quantile(0.5));
        assert!(close(h.quantile(0.25), 0.0005), "{:?}", h.quantile(0.25));
        let s = h.summary();
        assert_eq!(s.count, 200);
        assert_eq!(s.p95, Some(0.475));
    }

    #[test]
    fn the_inf_bucket_reports_the_highest_bound() {
        let mut h = Histogram::default();
        h.record(Duration::from_secs(60));
        assert!(close(h.quantile(0.5), 30.0));
        h.record(ms(7));
        assert!(close(h.quantile(0.99), 30.0));
        // rank 1 of 2 lands in (5 ms, 10 ms], at its top.
        assert!(close(h.quantile(0.5), 0.01), "{:?}", h.quantile(0.5));
    }

    #[test]
    fn since_is_the_difference_and_never_negative() {
        let mut a = Histogram::default();
        a.record(ms(3));
        let then = a;
        a.record(ms(3));
        a.record(ms(700));
        let d = a.since(&then);
        assert_eq!(d.count(), 2);
        assert!(close(d.quantile(0.25), 0.0025 + 0.0025 * 0.5));
        assert!((d.sum_seconds() - 0.703).abs() < 1e-9);
        // A reset (the newer histogram is smaller) gives empty buckets, not a wrap-around.
        let reset = Histogram::default().since(&a);
        assert_eq!(reset.count(), 0);
        assert_eq!(reset.sum_seconds(), 0.0);
    }

    #[test]
    fn status_classes() {
        let mut c = Classes::default();
        for s in [200, 204, 302, 404, 499, 500, 502, 503, 504, 0, 99, 600, 999] {
            c.record(s);
        }
        assert_eq!(c.0, [0, 2, 1, 2, 4]);
        assert_eq!(c.server_errors(), 4);
        assert_eq!(
            serde_json::to_value(c).ok(),
            Some(serde_json::json!({"1xx": 0, "2xx": 2, "3xx": 1, "4xx": 2, "5xx": 4}))
        );
    }
}
