//! The life of one request once a listener has decoded it: route it to a pool, wait for
//! a free worker slot, run the exchange, give the slot back, write the access line.
use crate::backend::exchange::{exchange, BodySource, End, First, RequestInfo, ResponseSink, SlotFate};
use crate::dispatch::AcquireError;
use crate::listen::ListenerCtx;
use crate::logging::{AccessLog, AccessRecord};
use crate::respond;
use fastcgi_server::{Params, Role};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Instant;
use tokio::sync::Notify;

/// Daemon-wide state every request touches.
pub struct Shared {
    pub access_log: Option<AccessLog>,
    in_flight: AtomicUsize,
    drained: Notify,
    next_id: AtomicU64,
}

impl Shared {
    pub fn new(access_log: Option<AccessLog>) -> Self {
        Shared { access_log, in_flight: AtomicUsize::new(0), drained: Notify::new(), next_id: AtomicU64::new(1) }
    }

    /// Wait until no request is in flight.
    pub async fn drained(&self) {
        loop {
            let notified = self.drained.notified();
            if self.in_flight.load(Ordering::Acquire) == 0 {
                return;
            }
            notified.await;
        }
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }
}

struct InFlight<'a>(&'a Shared);

impl<'a> InFlight<'a> {
    fn enter(s: &'a Shared) -> Self {
        s.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight(s)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if self.0.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.drained.notify_waiters();
        }
    }
}

/// Slots a request is offered to when writing to a worker fails outright.
const MAX_ATTEMPTS: u32 = 3;

/// Seconds a client is told to wait after a 503 for a full or slow queue.
const RETRY_AFTER_SECS: u32 = 1;

/// Serve one decoded request; the response (or an error page) goes to `sink`.
pub async fn serve<S: BodySource, K: ResponseSink>(
    lst: &ListenerCtx,
    mut params: Params,
    role: Role,
    source: &mut S,
    sink: &mut K,
) {
    let started = Instant::now();
    let shared = &*lst.shared;
    let _in_flight = InFlight::enter(shared);
    let mut idbuf = itoa::Buffer::new();
    let request_id = idbuf.format(shared.next_id.fetch_add(1, Ordering::Relaxed));
    // Shares the received buffer: no copy, and `params` stays free to be rewritten.
    let uri_bytes = params.get_bytes(b"REQUEST_URI").or_else(|| params.get_bytes(b"SCRIPT_NAME")).unwrap_or_default();
    let uri = String::from_utf8_lossy(&uri_bytes);

    let (status, bytes, pool_name) = 'done: {
        let Some((pool, prefix)) = lst.router.route(&params) else {
            tracing::info!(listener = %lst.name, request_id, uri = %uri, "no route matches, answering 404");
            let _ = sink.send(respond::error_response(404, None).freeze(), Some(End::Complete)).await;
            break 'done (404, 0, None);
        };
        crate::route::mount(&mut params, prefix);
        let acquired = tokio::select! {
            biased;
            r = pool.dispatcher.acquire() => Some(r),
            () = source.aborted() => None,
        };
        let mut slot = match acquired {
            Some(Ok(slot)) => slot,
            Some(Err(e)) => {
                tracing::warn!(pool = %pool.name, request_id, uri = %uri, "answering 503: {e}");
                let retry = match e {
                    AcquireError::QueueFull(_) | AcquireError::Timeout(_) => Some(RETRY_AFTER_SECS),
                };
                let _ = sink.send(respond::error_response(503, retry).freeze(), Some(End::Complete)).await;
                break 'done (503, 0, Some(&pool.name));
            }
            None => {
                // Gone while queued: end it toward the front (an ABORT_REQUEST wants END_REQUEST).
                let _ = sink.send(bytes::Bytes::new(), Some(End::Complete)).await;
                break 'done (499, 0, Some(&pool.name));
            }
        };
        let info = RequestInfo { id: request_id, uri: &uri, role };
        let mut first = First::Encode;
        let mut attempts = 0;
        let outcome = loop {
            let outcome = exchange(&mut slot, &info, &params, source, sink, first).await;
            let Some(again) = outcome.retry else { break outcome };
            attempts += 1;
            let next = if attempts < MAX_ATTEMPTS { pool.dispatcher.acquire().await.ok() } else { None };
            let Some(mut next) = next else {
                tracing::error!(pool = %pool.name, request_id, uri = %uri, "no worker took the request, answering 502");
                let _ = sink.send(respond::error_response(502, None).freeze(), Some(End::Complete)).await;
                break 'done (502, 0, Some(&pool.name));
            };
            next.take_first_write(&mut slot);
            let failed = std::mem::replace(&mut slot, next);
            // Usually the worker is gone (then reconnecting fails and the slot is dropped;
            // its supervisor starts a replacement); if only this connection was closed,
            // a fresh one restores the slot.
            let pool2 = pool.clone();
            tokio::spawn(async move {
                if let Some(s) = failed.reconnect().await {
                    pool2.dispatcher.release(s);
                }
            });
            first = again;
        };
        match outcome.fate {
            SlotFate::Reuse => pool.dispatcher.release(slot),
            SlotFate::Reconnect => {
                if let Some(fresh) = slot.reconnect().await {
                    pool.dispatcher.release(fresh);
                }
            }
            SlotFate::Discard => drop(slot),
        }
        (outcome.status, outcome.body_bytes, Some(&pool.name))
    };

    if let Some(log) = &shared.access_log {
        let s = |name: &[u8]| String::from_utf8_lossy(params.get(name).unwrap_or(b"")).into_owned();
        log.record(&AccessRecord {
            remote: &s(b"REMOTE_ADDR"),
            method: &s(b"REQUEST_METHOD"),
            uri: &uri,
            status,
            bytes,
            duration: started.elapsed(),
            pool: pool_name.map(|p| &**p).unwrap_or(""),
            request_id,
        });
    }
}
