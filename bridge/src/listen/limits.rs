//! What one client may hold before a worker takes its request: memory for request headers
//! and the body bytes read ahead of a worker (`header-memory`, shared by every listener of
//! the daemon) and connections (`max-connections`, per listener, whose refusals
//! logging/ratelimit.rs summarises).
use fastcgi_server::Params;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// What a waiting request costs beyond its headers and body bytes: its task, its channels,
/// and the receive buffer (16 KiB) its headers were decoded in and still share. Charged with
/// them, so that many small requests add up as well as a few large ones.
pub(crate) const REQUEST_OVERHEAD: usize = 16 << 10;

/// What a request whose headers are `params` holds while it waits for a worker, before any
/// body byte.
pub(crate) fn request_cost(params: &Params) -> usize {
    params.encoded_len() + REQUEST_OVERHEAD
}

/// Bytes that all connections of the daemon together hold for requests no worker has
/// taken yet: headers still arriving (FastCGI PARAMS and partial records, SCGI netstrings),
/// and the complete headers and read-ahead body bytes of requests waiting for a worker.
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
    "header-memory budget of {limit} bytes reached ({others} bytes held by other connections and waiting requests, this one holds {wanted})"
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

    /// Bytes held now.
    pub(crate) fn held(&self) -> usize {
        self.held
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

/// What one request holds against the [`HeaderBudget`] from its complete headers until a
/// worker takes it (or it ends): its headers and the body bytes read for it meanwhile.
/// Shared by the connection, which charges what it receives for the request, and the
/// request's task, which [releases](Self::release) it all once a worker has the request.
/// The default holds nothing.
#[derive(Default)]
pub(crate) struct RequestCharge(Mutex<Option<HeaderCharge>>);

impl RequestCharge {
    /// A request holding `bytes`; refused when that would take the daemon past its budget.
    pub(crate) fn new(budget: Arc<HeaderBudget>, bytes: usize) -> Result<Self, OverBudget> {
        let mut charge = HeaderCharge::new(budget);
        charge.set(bytes)?;
        Ok(Self(Mutex::new(Some(charge))))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<HeaderCharge>> {
        // Every critical section leaves the charge consistent: a poisoned lock is still usable.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `bytes` more body read for the request (nothing once released). Refused when that
    /// would take the daemon past its budget.
    pub(crate) fn add(&self, bytes: usize) -> Result<(), OverBudget> {
        match &mut *self.lock() {
            Some(charge) => charge.set(charge.held + bytes),
            None => Ok(()),
        }
    }

    /// A worker has the request (or it ended): everything is given back, and nothing more
    /// is charged.
    pub(crate) fn release(&self) {
        self.lock().take();
    }

    /// Bytes held now.
    #[cfg(test)]
    pub(crate) fn held(&self) -> usize {
        self.lock().as_ref().map_or(0, |c| c.held)
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

    #[test]
    fn a_waiting_request_is_charged_until_released() {
        let budget = HeaderBudget::new(100);
        let mut conn = HeaderCharge::new(budget.clone());
        assert!(conn.set(20).is_ok());
        let req = RequestCharge::new(budget.clone(), 50).ok();
        let req = req.as_ref().expect("within the budget");
        // Body bytes read ahead add up; past the budget they are refused, the charge unchanged.
        assert!(req.add(25).is_ok());
        let err = req.add(10).err().map(|e| (e.limit, e.others, e.wanted));
        assert_eq!(err, Some((100, 20, 85)));
        assert_eq!((req.held(), budget.used()), (75, 95));
        // A second request that does not fit is refused whole.
        assert!(RequestCharge::new(budget.clone(), 10).is_err());
        assert_eq!(budget.used(), 95);
        // A worker took it: all given back, and later body bytes are not charged.
        req.release();
        assert_eq!((req.held(), budget.used()), (0, 20));
        assert!(req.add(1000).is_ok());
        assert_eq!(budget.used(), 20);
    }

    #[test]
    fn a_request_that_ends_waiting_gives_its_charge_back() {
        let budget = HeaderBudget::new(100);
        let req = RequestCharge::new(budget.clone(), 60).ok();
        assert_eq!(budget.used(), 60);
        drop(req);
        assert_eq!(budget.used(), 0);
    }

    #[test]
    fn a_request_costs_its_headers_and_a_fixed_overhead() {
        let params = Params::from_pairs(vec![(b"REQUEST_URI"[..].into(), b"/x"[..].into())]);
        // 1 + 1 length bytes, 11 + 2 for the pair.
        assert_eq!(request_cost(&params), 15 + REQUEST_OVERHEAD);
    }
}
