//! The life of one request once a listener has decoded it: route it to a pool, wait for
//! a free worker slot, run the exchange, give the slot back, write the access line.
use crate::backend::exchange::{exchange, BodySource, End, First, RequestInfo, ResponseSink, SlotFate, FIRST_WRITE_BODY};
use crate::dispatch::{AcquireError, Ticket};
use crate::listen::ListenerCtx;
use crate::logging::{AccessLog, AccessRecord};
use crate::respond;
use crate::respond::body_limit::Tripped;
use fastcgi_server::{Params, Role};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Instant;
use tokio::sync::Notify;

/// Daemon-wide state every request touches.
pub struct Shared {
    pub access_log: Option<AccessLog>,
    /// `header-memory`: what connections may hold in headers still arriving (listen/limits.rs).
    pub header_budget: std::sync::Arc<crate::listen::limits::HeaderBudget>,
    in_flight: AtomicUsize,
    drained: Notify,
    next_id: AtomicU64,
}

impl Shared {
    pub fn new(access_log: Option<AccessLog>, header_memory: u64) -> Self {
        Shared {
            access_log,
            header_budget: crate::listen::limits::HeaderBudget::new(header_memory),
            in_flight: AtomicUsize::new(0),
            drained: Notify::new(),
            next_id: AtomicU64::new(1),
        }
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
    // `max-body` and `body-timeout` (respond/body_limit.rs): the wrappers cost one flag load
    // per body chunk and per response write, so every request goes through them.
    let started = Instant::now();
    let body_watch = respond::body_limit::BodyWatch::new(started);
    let source = &mut respond::body_limit::Limited::new(source, u64::MAX, &body_watch, lst.body_timeout);
    let sink = &mut respond::body_limit::LimitedSink::new(sink, &body_watch);
    let shared = &*lst.shared;
    let _in_flight = InFlight::enter(shared);
    let mut idbuf = itoa::Buffer::new();
    let request_num = shared.next_id.fetch_add(1, Ordering::Relaxed);
    let request_id = idbuf.format(request_num);
    // Shares the received buffer: no copy, and `params` stays free to be rewritten.
    let uri_bytes = params.get_bytes(b"REQUEST_URI").or_else(|| params.get_bytes(b"SCRIPT_NAME")).unwrap_or_default();
    let uri = String::from_utf8_lossy(&uri_bytes);

    // A CGI local redirect from the app (respond/redirect.rs) serves the request again.
    let mut redirect_to: Option<bytes::Bytes> = None;
    let mut redirects = 0u32;
    // Set while the request fetches an error page that is a local path: the response the
    // page replaces (respond/error_override.rs). REDIRECT_STATUS is its status.
    let mut serving: Option<respond::error_override::Replaced> = None;
    // Hand a response to error override: send the page (or the default text), or dispatch
    // the request to the page's path.
    macro_rules! error_page {
        ($done:lifetime, $pages:expr, $replaced:expr, $pool:expr) => {
            match respond::error_override::next($pages, &mut serving, $replaced) {
                respond::error_override::Next::Send { status, reply } => {
                    let _ = sink.send(reply.freeze(), Some(End::Complete)).await;
                    break $done (status, 0, $pool);
                }
                respond::error_override::Next::Dispatch(target) => {
                    respond::error_override::page_request(&mut params);
                    redirect_to = Some(target);
                    continue $done;
                }
            }
        };
    }
    if let Some(trust) = &lst.trusted_proxies {
        trust.apply(&mut params);
    }
    let (status, bytes, pool_name) = 'done: loop {
        if let Some(target) = redirect_to.take() {
            let shown = String::from_utf8_lossy(&target);
            let redirect_status = serving.as_ref().map_or(200, |r| r.status);
            if let Err(e) = respond::redirect::apply(&mut params, &target, &mut redirects, lst.max_redirects, redirect_status) {
                tracing::error!(listener = %lst.name, request_id, uri = %uri, target = %shown, "internal redirect refused, answering 500: {e}");
                let _ = sink.send(respond::error_response(500, None).freeze(), Some(End::Complete)).await;
                break 'done (500, 0, None);
            }
            tracing::info!(listener = %lst.name, request_id, uri = %uri, target = %shown, "internal redirect");
            source.end_body();
            let routed = lst.router.route(&params).is_some();
            if !routed && serving.is_some() {
                tracing::warn!(listener = %lst.name, request_id, uri = %uri, target = %shown, "no route serves the error page, answering the default page");
                error_page!('done, None, respond::error_override::Replaced::bridge(404, None), None);
            }
            if !routed {
                // Not ours to serve: the web server may (nginx: X-Accel-Redirect).
                let reply = respond::redirect::unrouted(lst.dialect, lst.unrouted_redirect, &target);
                let status = if reply.is_some() { 200 } else { 404 };
                tracing::info!(listener = %lst.name, request_id, uri = %uri, target = %shown, "no route serves the internal redirect target, answering {status}");
                let reply = reply.unwrap_or_else(|| respond::error_response(404, None));
                let _ = sink.send(reply.freeze(), Some(End::Complete)).await;
                break 'done (status, 0, None);
            }
        }
        crate::status::track::accepted(&lst.name);
        if let Some(reply) = crate::status::front::intercept(&lst.name, &params) {
            let _ = sink.send(reply, Some(End::Complete)).await;
            break 'done (200, 0, None);
        }
        let Some((pool, prefix)) = lst.router.route(&params) else {
            if crate::logging::ratelimit::allow(&crate::logging::ratelimit::NO_ROUTE, &lst.name) {
                tracing::info!(listener = %lst.name, request_id, uri = %uri, "no route matches, answering 404");
            }
            let _ = sink.send(respond::error_response(404, None).freeze(), Some(End::Complete)).await;
            break 'done (404, 0, None);
        };
        if !lst.keep_path_info {
            crate::route::mount(&mut params, prefix.or(lst.mount.as_deref()));
        }
        // Where a wsgi.file_wrapper file may come back from as X-Sendfile: the bridge's
        // word only, never the web server's (docs/worker-contract.md).
        respond::handoff::set_worker_roots(&mut params, lst.files.as_deref());
        if let Some(limit) = pool.config.max_body {
            if respond::body_limit::too_large(&params, limit) {
                if crate::logging::ratelimit::allow(&crate::logging::ratelimit::TOO_LARGE, &pool.name) {
                    tracing::warn!(pool = %pool.name, request_id, uri = %uri, limit, "request body is larger than max-body, answering 413");
                }
                let _ = sink.send(respond::error_response(413, None).freeze(), Some(End::Complete)).await;
                break 'done (413, 0, Some(&pool.name));
            }
            source.set_limit(limit);
        }
        // A small body is read whole before a worker is taken: a slow client then holds a
        // connection, never a worker thread.
        let declared = respond::body_limit::declared_length(&params).ok().flatten(); // checked by the listener (400)
        if let Some(n) = declared.filter(|n| (1..=FIRST_WRITE_BODY as u64).contains(n)) {
            if source.prefetch(n).await.is_err() {
                if body_watch.tripped() == Some(Tripped::Stalled) {
                    if crate::logging::ratelimit::allow(&crate::logging::ratelimit::BODY_STALLED, &pool.name) {
                        tracing::warn!(
                            listener = %lst.name, pool = %pool.name, request_id, uri = %uri, received = source.received(), declared = n,
                            "request body stalled: no byte from the web server within body-timeout ({:?}) before a worker was taken, answering 408",
                            lst.body_timeout
                        );
                    }
                    let _ = sink.send(respond::error_response(408, None).freeze(), Some(End::Complete)).await;
                    break 'done (408, 0, Some(&pool.name));
                }
                // Gone while its body arrived (an ABORT_REQUEST wants END_REQUEST).
                let _ = sink.send(bytes::Bytes::new(), Some(End::Complete)).await;
                break 'done (499, 0, Some(&pool.name));
            }
        }
        // What the status page shows while the request runs (copied, not allocated).
        let ticket = Ticket {
            method: params.get(b"REQUEST_METHOD").unwrap_or(b""),
            uri: &uri_bytes,
            request_id: request_num,
            started,
        };
        let acquired = tokio::select! {
            biased;
            r = pool.dispatcher.acquire(&ticket) => Some(r),
            () = source.aborted() => None,
        };
        let mut slot = match acquired {
            Some(Ok(slot)) => slot,
            Some(Err(e)) => {
                if crate::logging::ratelimit::allow(rejection_kind(&e), &pool.name) {
                    tracing::warn!(pool = %pool.name, request_id, uri = %uri, "answering 503: {e}");
                }
                let retry = match e {
                    AcquireError::QueueFull(_) | AcquireError::Timeout(_) | AcquireError::Unavailable(_) => Some(RETRY_AFTER_SECS),
                };
                error_page!('done, Some(&pool.config.error_pages), respond::error_override::Replaced::bridge(503, retry), Some(&pool.name));
            }
            None => {
                // Gone while queued: end it toward the front (an ABORT_REQUEST wants END_REQUEST).
                let _ = sink.send(bytes::Bytes::new(), Some(End::Complete)).await;
                break 'done (499, 0, Some(&pool.name));
            }
        };
        // The request fetching an error page gets no page of its own (no recursion).
        let pages = match &serving {
            Some(replaced) => Some(respond::error_override::Override::Serving(replaced)),
            None => Some(&pool.config.error_pages).filter(|p| !p.is_empty()).map(respond::error_override::Override::Pages),
        };
        let info = RequestInfo { id: request_id, uri: &uri, role, error_pages: pages, files: lst.files.as_deref() };
        let mut first = First::Encode;
        let mut attempts = 0;
        let outcome = loop {
            let outcome = exchange(&mut slot, &info, &params, source, sink, first).await;
            let Some(again) = outcome.retry else { break outcome };
            attempts += 1;
            let next = if attempts < MAX_ATTEMPTS { pool.dispatcher.acquire(&ticket).await.ok() } else { None };
            let Some(mut next) = next else {
                tracing::error!(pool = %pool.name, request_id, uri = %uri, "no worker took the request, answering 502");
                error_page!('done, Some(&pool.config.error_pages), respond::error_override::Replaced::bridge(502, None), Some(&pool.name));
            };
            next.take_first_write(&mut slot);
            let failed = std::mem::replace(&mut slot, next);
            // Usually the worker is gone (then reconnecting fails and the slot is dropped;
            // its supervisor starts a replacement); if only this connection was closed,
            // a fresh one restores the slot.
            let pool2 = pool.clone();
            tokio::spawn(async move {
                let mut failed = failed;
                if failed.reconnect_verified().await {
                    pool2.dispatcher.release(failed);
                } else {
                    pool2.dispatcher.discard(failed);
                }
            });
            first = again;
        };
        let pid = slot.worker.pid;
        match outcome.fate {
            SlotFate::Reuse => pool.dispatcher.release(slot),
            SlotFate::Reconnect => {
                if slot.reconnect().await {
                    pool.dispatcher.release(slot);
                } else {
                    pool.dispatcher.discard(slot);
                }
            }
            SlotFate::Verify => {
                if slot.reconnect_verified().await {
                    pool.dispatcher.release(slot);
                } else {
                    pool.dispatcher.discard(slot);
                }
            }
            SlotFate::Discard => pool.dispatcher.discard(slot),
        }
        match body_watch.tripped() {
            Some(Tripped::TooLarge) => {
                if crate::logging::ratelimit::allow(&crate::logging::ratelimit::BODY_CUT_OFF, &pool.name) {
                    tracing::warn!(pool = %pool.name, request_id, uri = %uri, limit = pool.config.max_body.unwrap_or(0), "streamed request body passed max-body, cut off with 413");
                }
                break 'done (413, outcome.body_bytes, Some(&pool.name));
            }
            Some(Tripped::Stalled) => {
                let cut = sink.cut_off();
                let declared = declared.map_or_else(|| "unknown".to_owned(), |n| n.to_string());
                if crate::logging::ratelimit::allow(&crate::logging::ratelimit::BODY_STALLED, &pool.name) {
                    tracing::warn!(
                        listener = %lst.name, pool = %pool.name, pid, request_id, uri = %uri, received = source.received(), declared,
                        "request body stalled: no byte from the web server within body-timeout ({:?}), request aborted in the worker, {}",
                        lst.body_timeout, if cut { "response cut off" } else { "answering 408" }
                    );
                }
                break 'done (if cut { outcome.status } else { 408 }, outcome.body_bytes, Some(&pool.name));
            }
            None => {}
        }
        match outcome.redirect {
            Some(respond::Handoff::Local(target)) => {
                redirect_to = Some(target);
                continue 'done;
            }
            Some(respond::Handoff::ErrorPage(replaced)) => {
                // The app's error body is replaced; its status stays.
                if let Some(orig) = &serving {
                    tracing::warn!(pool = %pool.name, request_id, uri = %uri, "the error page for {} answered {}, answering the default page", orig.status, replaced.status);
                }
                error_page!('done, Some(&pool.config.error_pages), replaced, Some(&pool.name));
            }
            Some(respond::Handoff::File(file)) => {
                let roots = lst.files.as_ref().map_or(&[][..], |f| &f.roots[..]);
                let max_ranges = lst.files.as_ref().map_or(0, |f| f.max_ranges);
                let header = file.kind.name();
                let (status, sent) = match respond::sendfile::serve(roots, max_ranges, &params, &file, sink).await {
                    Ok(served) => {
                        if let Some(why) = served.ranges_ignored {
                            let peer = String::from_utf8_lossy(params.get(b"REMOTE_ADDR").unwrap_or(b""));
                            if crate::logging::ratelimit::allow(&crate::logging::ratelimit::RANGE_IGNORED, &pool.name) {
                                tracing::info!(listener = %lst.name, pool = %pool.name, pid = file.pid, request_id, uri = %uri, peer = %peer, "Range ignored, answering 200 with the whole file: {why}");
                            }
                        }
                        (served.status, served.sent)
                    }
                    Err(respond::sendfile::SendfileError::CutOff { path, err, status, sent }) => {
                        tracing::error!(pool = %pool.name, pid = file.pid, request_id, uri = %uri, "{header}: reading {path:?} failed after the headers were sent, response cut off: {err}");
                        (status, sent)
                    }
                    Err(e) => {
                        tracing::warn!(pool = %pool.name, pid = file.pid, request_id, uri = %uri, "{header} refused, answering {}: {e}", e.status());
                        let _ = sink.send(respond::error_response(e.status(), None).freeze(), Some(End::Complete)).await;
                        (e.status(), 0)
                    }
                };
                break 'done (status, sent, Some(&pool.name));
            }
            None => {}
        }
        break 'done (outcome.status, outcome.body_bytes, Some(&pool.name));
    };

    let took = started.elapsed();
    crate::status::track::finished(&lst.name, pool_name.map(|p| &**p), status, took);
    if let Some(log) = &shared.access_log {
        let s = |name: &[u8]| String::from_utf8_lossy(params.get(name).unwrap_or(b"")).into_owned();
        log.record(&AccessRecord {
            remote: &s(b"REMOTE_ADDR"),
            method: &s(b"REQUEST_METHOD"),
            uri: &uri,
            status,
            bytes,
            duration: took,
            pool: pool_name.map(|p| &**p).unwrap_or(""),
            request_id,
        });
    }
}

/// The rate-limited log line of a 503 (logging/ratelimit.rs): one kind per reason.
fn rejection_kind(e: &AcquireError) -> &'static crate::logging::ratelimit::Kind {
    use crate::logging::ratelimit as rl;
    match e {
        AcquireError::QueueFull(_) => &rl::QUEUE_FULL,
        AcquireError::Timeout(_) => &rl::QUEUE_TIMEOUT,
        AcquireError::Unavailable(_) => &rl::UNAVAILABLE,
    }
}
