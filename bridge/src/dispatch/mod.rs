//! Per-pool dispatch: a FIFO of requests waiting for a free worker connection ("slot").
//!
//! A slot is taken for one request and given back at its END_REQUEST, so a kept-alive
//! web-server connection never pins a worker. The queue is bounded (`queue_size`: beyond
//! it a request gets 503 at once) and a request waits at most `queue_timeout`.
pub mod serve;

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;
use tokio::sync::oneshot;

/// What the dispatcher needs to know about a slot.
pub trait Slot: Send + 'static {
    /// False once the worker behind it is gone: such a slot is dropped instead of handed out.
    fn usable(&self) -> bool;
}

/// Why no slot was handed out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AcquireError {
    #[error("queue full ({0} requests waiting)")]
    QueueFull(usize),
    #[error("no worker became free within {0:?}")]
    Timeout(Duration),
}

/// The free slots and the waiting requests of one pool.
pub struct Dispatcher<S> {
    inner: Mutex<Inner<S>>,
    queue_size: usize,
    queue_timeout: Duration,
}

struct Inner<S> {
    /// LIFO: the most recently used connection is the warmest.
    idle: Vec<S>,
    waiters: VecDeque<oneshot::Sender<S>>,
}

impl<S: Slot> Dispatcher<S> {
    pub fn new(queue_size: usize, queue_timeout: Duration) -> Self {
        Dispatcher {
            inner: Mutex::new(Inner { idle: Vec::new(), waiters: VecDeque::new() }),
            queue_size,
            queue_timeout,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner<S>> {
        // A panic while holding this lock cannot leave the queue inconsistent (every
        // critical section is a push or a pop), so a poisoned lock is still usable.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A free slot, waiting in FIFO order if none is free.
    pub async fn acquire(&self) -> Result<S, AcquireError> {
        let mut rx = {
            let mut inner = self.lock();
            while let Some(slot) = inner.idle.pop() {
                if slot.usable() {
                    return Ok(slot);
                }
            }
            inner.waiters.retain(|w| !w.is_closed());
            if inner.waiters.len() >= self.queue_size {
                return Err(AcquireError::QueueFull(inner.waiters.len()));
            }
            let (tx, rx) = oneshot::channel();
            inner.waiters.push_back(tx);
            rx
        };
        match tokio::time::timeout(self.queue_timeout, &mut rx).await {
            Ok(Ok(slot)) => Ok(slot),
            // The sender side is only dropped by `release` after a failed send or by
            // `retain` after we closed: neither happens while we wait. Treat it as a timeout.
            Ok(Err(_)) => Err(AcquireError::Timeout(self.queue_timeout)),
            Err(_) => {
                // A slot may have been sent in the instant the timer fired: take it rather
                // than lose it.
                rx.close();
                match rx.try_recv() {
                    Ok(slot) => Ok(slot),
                    Err(_) => Err(AcquireError::Timeout(self.queue_timeout)),
                }
            }
        }
    }

    /// Give a slot back: to the oldest waiter, else to the idle list. Dead slots are dropped.
    pub fn release(&self, slot: S) {
        if !slot.usable() {
            return;
        }
        let mut slot = slot;
        let mut inner = self.lock();
        while let Some(waiter) = inner.waiters.pop_front() {
            match waiter.send(slot) {
                Ok(()) => return,
                Err(back) => slot = back,
            }
        }
        inner.idle.push(slot);
    }

    /// Drop idle slots whose worker is gone.
    pub fn purge(&self) {
        let mut inner = self.lock();
        inner.idle.retain(|s| s.usable());
    }

    /// Requests waiting right now.
    #[allow(dead_code)]
    pub fn waiting(&self) -> usize {
        let mut inner = self.lock();
        inner.waiters.retain(|w| !w.is_closed());
        inner.waiters.len()
    }

    /// Free slots right now.
    #[allow(dead_code)]
    pub fn idle(&self) -> usize {
        self.lock().idle.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    #[derive(Debug)]
    struct TestSlot(u32, Arc<AtomicBool>);
    impl Slot for TestSlot {
        fn usable(&self) -> bool {
            self.1.load(Ordering::Relaxed)
        }
    }
    fn slot(n: u32) -> TestSlot {
        TestSlot(n, Arc::new(AtomicBool::new(true)))
    }

    #[tokio::test]
    async fn free_slot_is_immediate() {
        let d = Dispatcher::new(4, Duration::from_secs(1));
        d.release(slot(1));
        assert_eq!(d.acquire().await.map(|s| s.0), Ok(1));
    }

    #[tokio::test]
    async fn overflow_is_rejected_at_once() {
        let d = Arc::new(Dispatcher::<TestSlot>::new(2, Duration::from_secs(30)));
        let mut waiters = Vec::new();
        for _ in 0..2 {
            let d = d.clone();
            waiters.push(tokio::spawn(async move { d.acquire().await.map(|s| s.0) }));
        }
        while d.waiting() < 2 {
            tokio::task::yield_now().await;
        }
        let started = std::time::Instant::now();
        assert!(matches!(d.acquire().await, Err(AcquireError::QueueFull(2))));
        assert!(started.elapsed() < Duration::from_secs(1));
        d.release(slot(7));
        d.release(slot(8));
        let mut got = Vec::new();
        for w in waiters {
            got.push(w.await.ok().and_then(|r| r.ok()));
        }
        got.sort();
        assert_eq!(got, vec![Some(7), Some(8)]);
    }

    #[tokio::test]
    async fn queue_timeout() {
        let d = Dispatcher::<TestSlot>::new(2, Duration::from_millis(50));
        assert_eq!(d.acquire().await.map(|s| s.0), Err(AcquireError::Timeout(Duration::from_millis(50))));
        // The timed-out waiter does not count against the queue nor swallow a slot.
        assert_eq!(d.waiting(), 0);
        d.release(slot(3));
        assert_eq!(d.idle(), 1);
    }

    #[tokio::test]
    async fn fifo_order() {
        let d = Arc::new(Dispatcher::<TestSlot>::new(8, Duration::from_secs(30)));
        let (order_tx, mut order_rx) = tokio::sync::mpsc::unbounded_channel();
        for i in 0..3u32 {
            let d2 = d.clone();
            let order_tx = order_tx.clone();
            tokio::spawn(async move {
                if let Ok(s) = d2.acquire().await {
                    let _ = order_tx.send((i, s.0));
                }
            });
            while d.waiting() < (i + 1) as usize {
                tokio::task::yield_now().await;
            }
        }
        for n in 10..13 {
            d.release(slot(n));
        }
        let mut seen = Vec::new();
        for _ in 0..3 {
            seen.push(order_rx.recv().await);
        }
        assert_eq!(seen, vec![Some((0, 10)), Some((1, 11)), Some((2, 12))]);
    }

    #[tokio::test]
    async fn dead_slots_are_skipped() {
        let d = Dispatcher::new(1, Duration::from_millis(10));
        let dead = slot(1);
        let flag = dead.1.clone();
        d.release(dead);
        d.release(slot(2));
        flag.store(false, Ordering::Relaxed);
        assert_eq!(d.acquire().await.map(|s| s.0), Ok(2));
        // Slot 1 is dead: nothing left.
        assert!(d.acquire().await.is_err());
    }
}
