//! What one client may hold before its request is complete: memory for request headers
//! still arriving (`header-memory`, shared by every listener of the daemon) and connections
//! (`max-connections`, per listener, whose refusals logging/ratelimit.rs summarises).
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// Bytes of request headers (FastCGI PARAMS and partial records, SCGI netstrings) that all
/// connections of the daemon together hold while those headers are still arriving.
#[derive(Debug)]
pub(crate) struct HeaderBudget {
    limit: usize,
    used: AtomicUsize,
}

impl HeaderBudget {
    /// A budget of `limit` bytes (`header-memory`).
    pub(crate) fn new(limit: u64) -> Arc<Self> {
        Arc::new(Self { limit: usize::try_from(limit).unwrap_or(usize::MAX), used: AtomicUsize::new(0) })
    }

    /// Bytes held now, by every connection.
    #[cfg(test)]
    pub(crate) fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }
}

/// A connection would pass `header-memory`.
#[derive(Debug, thiserror::Error)]
#[error(
    "header-memory budget of {limit} bytes reached ({others} bytes held by other connections, this one holds {wanted})"
)]
pub(crate) struct OverBudget {
    pub limit: usize,
    pub others: usize,
    pub wanted: usize,
}

/// What one connection holds against the [`HeaderBudget`]; given back when it drops.
pub(crate) struct HeaderCharge {
    budget: Arc<HeaderBudget>,
    held: usize,
}

impl HeaderCharge {
    /// A connection holding nothing yet.
    pub(crate) fn new(budget: Arc<HeaderBudget>) -> Self {
        Self { budget, held: 0 }
    }

    /// The connection now holds `bytes` of unfinished headers. Refused (the charge stays as
    /// it was) when that would take the daemon past its budget.
    #[inline]
    pub(crate) fn set(&mut self, bytes: usize) -> Result<(), OverBudget> {
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
}
