//! What one client may hold before its request is complete: memory for request headers
//! still arriving (`header-memory`, shared by every listener of the daemon) and connections
//! (`max-connections`, per listener, whose refusals are logged without flooding the log).
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// Bytes of request headers (FastCGI PARAMS and partial records, SCGI netstrings) that all
/// connections of the daemon together hold while those headers are still arriving.
#[derive(Debug)]
pub struct HeaderBudget {
    limit: usize,
    used: AtomicUsize,
}

impl HeaderBudget {
    /// A budget of `limit` bytes (`header-memory`).
    pub fn new(limit: u64) -> Arc<Self> {
        Arc::new(Self { limit: usize::try_from(limit).unwrap_or(usize::MAX), used: AtomicUsize::new(0) })
    }

    /// Bytes held now, by every connection.
    #[cfg(test)]
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }
}

/// A connection would pass `header-memory`.
#[derive(Debug, thiserror::Error)]
#[error(
    "header-memory budget of {limit} bytes reached ({others} bytes held by other connections, this one holds {wanted})"
)]
pub struct OverBudget {
    pub limit: usize,
    pub others: usize,
    pub wanted: usize,
}

/// What one connection holds against the [`HeaderBudget`]; given back when it drops.
pub struct HeaderCharge {
    budget: Arc<HeaderBudget>,
    held: usize,
}

impl HeaderCharge {
    /// A connection holding nothing yet.
    pub fn new(budget: Arc<HeaderBudget>) -> Self {
        Self { budget, held: 0 }
    }

    /// The connection now holds `bytes` of unfinished headers. Refused (the charge stays as
    /// it was) when that would take the daemon past its budget.
    #[inline]
    pub fn set(&mut self, bytes: usize) -> Result<(), OverBudget> {
        if bytes <= self.held {
            if bytes < self.held {
                self.budget.used.fetch_sub(self.held - bytes, Ordering::AcqRel);
                self.held = bytes;
            }
            return Ok(());
        }
        let more = bytes - self.held;
        let before = self.budget.used.fetch_add(more, Ordering::AcqRel);
        if before.saturating_add(more) > self.budget.limit {
            self.budget.used.fetch_sub(more, Ordering::AcqRel);
            return Err(OverBudget { limit: self.budget.limit, others: before - self.held, wanted: bytes });
        }
        self.held = bytes;
        Ok(())
    }
}

impl Drop for HeaderCharge {
    fn drop(&mut self) {
        if self.held > 0 {
            self.budget.used.fetch_sub(self.held, Ordering::AcqRel);
        }
    }
}

/// How often at most a listener logs the connections `max-connections` refused.
const REFUSAL_SUMMARY: Duration = Duration::from_secs(1);

/// The log of one listener's refused connections: a burst's first refusal gets its own
/// line, the rest of it one summary line with a count per second at most.
#[derive(Debug, Default)]
pub struct Refusals {
    /// When the last line was written.
    logged: Option<Instant>,
    /// Refusals since then that no line mentions yet.
    unlogged: u64,
}

impl Refusals {
    /// A connection from `peer` was refused.
    pub fn refused(&mut self, listener: &str, peer: &str, cap: usize) {
        self.refused_at(Instant::now(), listener, peer, cap);
    }

    fn refused_at(&mut self, now: Instant, listener: &str, peer: &str, cap: usize) {
        match self.logged {
            Some(at) if now.duration_since(at) < REFUSAL_SUMMARY || self.unlogged > 0 => {
                self.unlogged += 1;
                if now.duration_since(at) >= REFUSAL_SUMMARY {
                    self.summarize(listener, cap, now);
                }
            }
            _ => {
                tracing::warn!(listener, peer, "max-connections ({cap}) reached: refusing a new connection");
                self.logged = Some(now);
            }
        }
    }

    /// When the pending summary is due, if one is.
    pub fn due(&self) -> Option<Instant> {
        match self.logged {
            Some(at) if self.unlogged > 0 => Some(at + REFUSAL_SUMMARY),
            _ => None,
        }
    }

    /// Write the pending summary (call at [`due`](Self::due)).
    pub fn flush(&mut self, listener: &str, cap: usize) {
        if self.unlogged > 0 {
            self.summarize(listener, cap, Instant::now());
        }
    }

    fn summarize(&mut self, listener: &str, cap: usize, now: Instant) {
        let since = self.logged.map(|at| now.duration_since(at)).unwrap_or_default();
        tracing::warn!(
            listener,
            refused = self.unlogged,
            "max-connections ({cap}) reached: {} more connections refused in the last {:.1}s",
            self.unlogged,
            since.as_secs_f64()
        );
        self.unlogged = 0;
        self.logged = Some(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charges_stay_within_the_budget_and_are_given_back() {
        let budget = HeaderBudget::new(100);
        let mut a = HeaderCharge::new(budget.clone());
        let mut b = HeaderCharge::new(budget.clone());
        assert!(a.set(60).is_ok());
        assert!(b.set(30).is_ok());
        let err = b.set(50).err().map(|e| (e.limit, e.others, e.wanted));
        assert_eq!(err, Some((100, 60, 50)));
        // Refused: b still holds what it held.
        assert_eq!(budget.used(), 90);
        assert!(a.set(10).is_ok());
        assert!(b.set(50).is_ok());
        assert_eq!(budget.used(), 60);
        drop(a);
        drop(b);
        assert_eq!(budget.used(), 0);
    }

    #[test]
    fn refusals_are_summarized_once_a_second() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut r = Refusals::default();
        r.refused_at(at(0), "l", "p", 2);
        assert_eq!(r.due(), None);
        r.refused_at(at(10), "l", "p", 2);
        r.refused_at(at(20), "l", "p", 2);
        assert_eq!((r.due(), r.unlogged), (Some(at(1000)), 2));
        // Still refusing a second later: the summary goes out with that refusal.
        r.refused_at(at(1000), "l", "p", 2);
        assert_eq!((r.due(), r.unlogged), (None, 0));
        r.refused_at(at(1500), "l", "p", 2);
        assert_eq!(r.due(), Some(at(2000)));
        r.summarize("l", 2, at(2000));
        assert_eq!((r.due(), r.unlogged), (None, 0));
        // Quiet for a second: the next refusal is a new burst's first, logged at once.
        r.refused_at(at(3100), "l", "p", 2);
        assert_eq!((r.due(), r.unlogged), (None, 0));
    }
}
