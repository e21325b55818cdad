//! The life of one request once a listener has decoded it: route it to a pool, wait for
//! a free worker slot, run the exchange, give the slot back, write the access line.
//!
//! [`serve`] drives a small loop of [`Step`]s: route the request and run it on a worker,
//! serve it again at another path (a CGI local redirect, an error page that is a local
//! path), or finish. The exchange says what comes after it ([`Next`]);
//! `respond::error_override::decide` is the one place that decides how an error is answered.
use super::request_body_limits::{BodyWatch, Limited, LimitedSink, Pace, Tripped};
use crate::backend::exchange::{encode_kept, exchange, First, Next, Outcome, RequestInfo, SlotFate, FIRST_WRITE_BODY};
use crate::backend::SlotConn;
use crate::config::{ErrorPages, UnknownLengthBody};
use crate::dispatch::{AcquireError, Granted, Slot, Ticket};
use crate::flow::{BodySource, End, ResponseSink};
use crate::listen::context::ListenerCtx;
use crate::logging::AccessRecord;
use crate::respond;
use crate::respond::error_override::{decide, Override, PageAnswer, Replaced};
use crate::respond::redirect::{Author, Follow};
use crate::supervise::instances::{Target, TemplateRuntime};
use crate::supervise::PoolRuntime;
use bytes::Bytes;
use fastcgi_server::{Params, Role};
use std::borrow::Cow;
use std::sync::Arc;
use std::sync::OnceLock;
use std::time::Instant;

/// The template instances one request was routed to (each route of a redirect may pick
/// another): held for the request's whole life, as a listener holds its pools.
#[derive(Default)]
struct Pins([OnceLock<Arc<PoolRuntime>>; 12]);

impl Pins {
    /// `p`, kept here; None when the request has gone through too many instances.
    fn pin(&self, p: Arc<PoolRuntime>) -> Option<&Arc<PoolRuntime>> {
        for cell in &self.0 {
            if let Some(q) = cell.get() {
                if Arc::ptr_eq(q, &p) {
                    return Some(q);
                }
                continue;
            }
            let _ = cell.set(p.clone());
            return cell.get();
        }
        None
    }
}

/// Slots a request is offered to when writing to a worker fails outright.
const MAX_ATTEMPTS: u32 = 3;

/// Seconds a client is told to wait after a 503 for a full or slow queue.
const RETRY_AFTER_SECS: u32 = 1;

/// What the request does next.
enum Step<'p> {
    /// Route the request to a pool and run it on a worker.
    Route,
    /// Serve the request again at this local path: a CGI local redirect, or an error page
    /// (who wrote it says which); and the pool whose answer sent it there (named in the
    /// access log if the bridge answers the redirect itself).
    Reroute(Bytes, Option<&'p Arc<str>>, Author),
    /// Answered: the status and body bytes for the access log, and the pool that served it.
    Done(u16, u64, Option<&'p Arc<str>>),
}

/// What error override does for a request of a pool with `pages`: serve the pages, or,
/// while the request fetches a page, answer for the response it replaces.
fn overrides<'x>(serving: &'x Option<Replaced>, pages: Option<&'x ErrorPages>) -> Option<Override<'x>> {
    match serving {
        Some(replaced) => Some(Override::Serving(replaced)),
        None => pages.filter(|p| !p.is_empty()).map(Override::Pages),
    }
}

/// Give a slot back after a request: to the pool as it is, over a fresh connection, or
/// not at all (its supervisor starts a replacement).
async fn give_back(pool: &PoolRuntime, mut slot: SlotConn, fate: SlotFate) {
    let fate = match fate {
        SlotFate::Aborted => slot.finish_abort(&pool.dispatcher, pool.config.supervision.abort_grace).await,
        fate => fate,
    };
    if matches!(fate, SlotFate::Reconnect | SlotFate::Verify) {
        // The request piped behind this one is taken back before the connection closes.
        pool.dispatcher.unpipe(slot.key());
    }
    let keep = match fate {
        SlotFate::Reuse => true,
        SlotFate::Reconnect => slot.reconnect().await,
        SlotFate::Verify => slot.reconnect_verified().await,
        SlotFate::Discard | SlotFate::Aborted => false,
    };
    if keep {
        pool.dispatcher.release(slot);
    } else {
        pool.dispatcher.discard(slot);
    }
}

/// Give back a slot whose connection failed under a request. Usually the worker is gone
/// (reconnecting fails, the slot is dropped, its supervisor starts a replacement); if only
/// this connection was closed, a fresh one restores the slot. Either way the dispatcher
/// forgets it as busy and takes back a request piped onto it.
fn give_back_failed(pool: &Arc<PoolRuntime>, failed: SlotConn) {
    let pool = Arc::clone(pool);
    tokio::spawn(async move { give_back(&pool, failed, SlotFate::Verify).await });
}

/// Serve one decoded request; the response (or an error page) goes to `sink`.
pub(crate) async fn serve<S: BodySource, K: ResponseSink>(
    lst: &ListenerCtx,
    mut params: Params,
    role: Role,
    source: &mut S,
    sink: &mut K,
) {
    let started = Instant::now();
    let body_watch = BodyWatch::new(started);
    let registry = &*lst.registry;
    let _in_flight = registry.enter();
    let mut idbuf = itoa::Buffer::new();
    let request_num = registry.next_request_id();
    let request_id = idbuf.format(request_num);
    // Shares the received buffer: no copy, and `params` stays free to be rewritten.
    let uri_bytes = params.get_bytes(b"REQUEST_URI").or_else(|| params.get_bytes(b"SCRIPT_NAME")).unwrap_or_default();
    let uri = String::from_utf8_lossy(&uri_bytes);
    let pins = Pins::default();
    if let Some(trust) = &lst.trusted_proxies {
        trust.apply(&mut params);
    }
    // The access line names the request as the web server sent it: an internal redirect
    // or an error page rewrites the method to GET.
    let as_sent = |name: &[u8]| params.get_bytes(name).filter(|_| registry.access_log.is_some()).unwrap_or_default();
    let (method, remote) = (as_sent(b"REQUEST_METHOD"), as_sent(b"REMOTE_ADDR"));
    // Once per request, not per step: a redirect followed here is the same request.
    registry.track.accepted(&lst.name);
    let mut req = Request {
        lst,
        params,
        role,
        request_id,
        request_num,
        uri: &uri,
        uri_bytes: &uri_bytes,
        started,
        body_watch: &body_watch,
        // `max-body`, `body-timeout` and `body-min-rate` (dispatch/request_body_limits.rs): the
        // wrappers cost one flag load per body chunk and per response write, so every request
        // goes through them.
        source: Limited::new(
            source,
            u64::MAX,
            &body_watch,
            Pace { idle: lst.body_timeout, min_rate: lst.body_min_rate },
        ),
        sink: LimitedSink::new(sink, &body_watch),
        serving: None,
        redirects: 0,
        pins: &pins,
        times: WorkerTimes { measured: registry.access_needs.times, ..WorkerTimes::default() },
    };
    let mut step = Step::Route;
    let (status, bytes, pool_name) = loop {
        step = match step {
            Step::Route => req.route().await,
            Step::Reroute(target, from, author) => req.reroute(&target, from, author).await,
            Step::Done(status, bytes, pool) => break (status, bytes, pool),
        };
    };

    let took = started.elapsed();
    registry.track.finished(&lst.name, pool_name, status, took);
    if let Some(log) = &registry.access_log {
        log.record(&AccessRecord {
            remote: &String::from_utf8_lossy(&remote),
            method: &String::from_utf8_lossy(&method),
            uri: &uri,
            status,
            bytes,
            duration: took,
            pool: pool_name.map(|p| &**p).unwrap_or(""),
            request_id,
            web_request_id: registry
                .access_needs
                .web_request_id
                .then(|| crate::logging::web_request_id(&req.params))
                .flatten(),
            queue: req.times.queue,
            app: req.times.app,
            pid: req.times.pid,
        });
    }
}

/// One request while it is served: what its steps read and update.
struct Request<'a, S, K> {
    lst: &'a ListenerCtx,
    params: Params,
    role: Role,
    request_id: &'a str,
    request_num: u64,
    uri: &'a str,
    uri_bytes: &'a Bytes,
    started: Instant,
    body_watch: &'a BodyWatch,
    source: Limited<'a, S>,
    sink: LimitedSink<'a, K>,
    /// Set while the request fetches an error page that is a local path: the response the
    /// page replaces (respond/error_override.rs). REDIRECT_STATUS is its status.
    serving: Option<Replaced>,
    /// Internal redirects so far (respond/redirect.rs).
    redirects: u32,
    /// The template instances it was routed to.
    pins: &'a Pins,
    times: WorkerTimes,
}

/// Where a request's time went, for the access log (summed over internal redirects).
#[derive(Default)]
struct WorkerTimes {
    /// The access log shows `queue` and `app`: without it no clock is read for them.
    measured: bool,
    /// Waiting for a worker.
    queue: Option<std::time::Duration>,
    /// On a worker, from taking it to the end of its response.
    app: Option<std::time::Duration>,
    /// The worker that served it last.
    pid: Option<u32>,
}

impl WorkerTimes {
    /// Now, when the times are measured.
    fn now(&self) -> Option<Instant> {
        self.measured.then(Instant::now)
    }
}

/// The time since `since` (when measured) added to what `total` holds so far.
fn add(total: &mut Option<std::time::Duration>, since: Option<Instant>) {
    if let Some(since) = since {
        *total = Some(total.unwrap_or_default() + since.elapsed());
    }
}

impl<'a, S: BodySource, K: ResponseSink> Request<'a, S, K> {
    /// Send a complete response the bridge made, and finish with `status`.
    async fn answer(&mut self, reply: Bytes, status: u16, pool: Option<&'a Arc<str>>) -> Step<'a> {
        // The access log counts body bytes, as for an app's response.
        let body = reply.windows(4).position(|w| w == b"\r\n\r\n").map_or(0, |end| reply.len() - end - 4);
        let _ = self.sink.send(reply, Some(End::Complete)).await;
        Step::Done(status, body as u64, pool)
    }

    /// End the request toward the front with nothing more: it went away (an
    /// ABORT_REQUEST still wants END_REQUEST).
    async fn gone(&mut self, pool: &'a PoolRuntime) -> Step<'a> {
        self.answer(Bytes::new(), 499, Some(&pool.name)).await
    }

    /// Answer with an error page in place of `replaced` (`pages`: the pool's): send it, or
    /// dispatch the request to the page's path.
    async fn error_page(
        &mut self,
        pages: Option<&'a ErrorPages>,
        replaced: Replaced,
        pool: Option<&'a Arc<str>>,
    ) -> Step<'a> {
        match decide(overrides(&self.serving, pages), replaced) {
            PageAnswer::Send { status, reply } => self.answer(reply.freeze(), status, pool).await,
            PageAnswer::Dispatch { target, replaced } => {
                self.serving = Some(replaced);
                respond::error_override::page_request(&mut self.params);
                Step::Reroute(target, pool, Author::Operator)
            }
        }
    }

    /// An error page replaces `replaced`, a response of `pool`'s worker or the bridge's
    /// own error for it.
    async fn replace(&mut self, pool: &'a PoolRuntime, replaced: Replaced) -> Step<'a> {
        // The app's error body is replaced; its status stays.
        if let Some(orig) = &self.serving {
            tracing::warn!(pool = &*pool.name, request_id = self.request_id, uri = %self.uri, "the error page for {} answered {}, answering the default page", orig.status, replaced.status);
        }
        self.error_page(Some(&pool.config.error_pages), replaced, Some(&pool.name)).await
    }

    /// Serve the request again at `target` (respond/redirect.rs), written by `author`:
    /// `Route` when a pool serves it and the bridge may follow the redirect there, else
    /// answered here, in the name of `from`, the pool that redirected.
    async fn reroute(&mut self, target: &[u8], from: Option<&'a Arc<str>>, author: Author) -> Step<'a> {
        let (lst, request_id, uri) = (self.lst, self.request_id, self.uri);
        let shown = String::from_utf8_lossy(target);
        let by = from.map_or("-", |p| &**p);
        let redirect_status = self.serving.as_ref().map_or(200, |r| r.status);
        match respond::redirect::apply(
            &mut self.params,
            target,
            &mut self.redirects,
            lst.max_redirects,
            redirect_status,
        ) {
            Ok(respond::redirect::ScriptFilename::Followed) => {}
            Ok(respond::redirect::ScriptFilename::Dropped) => {
                tracing::warn!(listener = %lst.name, pool = by, request_id, uri = %uri, target = %shown, "internal redirect to a path with a '.' or '..' segment, '//', NUL or '\\': SCRIPT_FILENAME left out (the app should redirect to the plain path)");
            }
            Err(e) => {
                tracing::error!(listener = %lst.name, pool = by, request_id, uri = %uri, target = %shown, "internal redirect refused, answering 500: {e}");
                return self.answer(respond::error_response(500, None).freeze(), 500, from).await;
            }
        }
        self.source.end_body();
        let Some(to) = self.target_pool() else {
            tracing::info!(listener = %lst.name, pool = by, request_id, uri = %uri, target = %shown, "internal redirect");
            return self.unrouted(target, from).await;
        };
        let (pools, dialect, unrouted) = (lst.redirect_pools, lst.dialect, lst.unrouted_redirect);
        match respond::redirect::follow(author, pools, from.map(|p| &**p), &to, dialect, unrouted) {
            Follow::Bridge => {
                tracing::info!(listener = %lst.name, pool = by, request_id, uri = %uri, target = %shown, "internal redirect");
                Step::Route
            }
            how => self.other_pool(target, from, &to, how).await,
        }
    }

    /// The pool a route of the listener gives the request now (for a template, the name
    /// of the instance it would get, `template[key]`), or None when no route serves it.
    fn target_pool(&self) -> Option<Cow<'a, str>> {
        let routed = self.lst.router.routed(&self.params)?;
        Some(match routed.target {
            Target::Pool(pool) => Cow::Borrowed(&*pool.name),
            Target::Template(t) => {
                let capture = routed.capture.as_ref().map(|(name, value)| (*name, value.as_slice()));
                Cow::Owned(t.instance_name(&self.params, capture))
            }
        })
    }

    /// An app's redirect from pool `from` to `target`, which pool `to` serves, that the
    /// bridge does not follow (`redirect-pools: same`): `how` says whether the web server
    /// takes it (and runs its access rules for the target) or it is refused.
    async fn other_pool(&mut self, target: &[u8], from: Option<&'a Arc<str>>, to: &str, how: Follow) -> Step<'a> {
        let (lst, request_id, uri) = (self.lst, self.request_id, self.uri);
        let shown = String::from_utf8_lossy(target);
        let by = from.map_or("-", |p| &**p);
        if self.serving.is_some() {
            // The app serving an error page redirected: that page failed.
            tracing::warn!(listener = %lst.name, pool = by, request_id, uri = %uri, target = %shown, target_pool = to, "the error page's internal redirect goes to another pool, which the bridge does not follow (redirect-pools: same), answering the default page");
            return self.error_page(None, Replaced::bridge(500, None), from).await;
        }
        if how == Follow::WebServer {
            return self.hand_to_web_server(target, from, Some(to)).await;
        }
        tracing::error!(
            listener = %lst.name, pool = by, request_id, uri = %uri, target = %shown, target_pool = to,
            "internal redirect refused, answering 500: the target is pool {to}'s, and the bridge follows an app's redirect only within its own pool (the web server's access rules for the target would not run); set redirect-pools: any on listener {} to follow redirects across pools",
            lst.name
        );
        self.answer(respond::error_response(500, None).freeze(), 500, from).await
    }

    /// A redirect to `target`, which no route serves.
    async fn unrouted(&mut self, target: &[u8], from: Option<&'a Arc<str>>) -> Step<'a> {
        if self.serving.is_some() {
            let (lst, request_id, uri) = (self.lst, self.request_id, self.uri);
            let (shown, by) = (String::from_utf8_lossy(target), from.map_or("-", |p| &**p));
            tracing::warn!(listener = %lst.name, pool = by, request_id, uri = %uri, target = %shown, "no route serves the error page, answering the default page");
            return self.error_page(None, Replaced::bridge(404, None), from).await;
        }
        // Not ours to serve: the web server may (nginx: X-Accel-Redirect).
        self.hand_to_web_server(target, from, None).await
    }

    /// Hand the redirect to `target` to the web server, as the listener's `dialect` and
    /// `unrouted-redirect` allow (nginx: X-Accel-Redirect; `pass`: 200 + `Location`), else
    /// answer 404. `to`: the pool that would serve it, when the bridge chose not to.
    async fn hand_to_web_server(&mut self, target: &[u8], from: Option<&'a Arc<str>>, to: Option<&str>) -> Step<'a> {
        let (lst, request_id, uri) = (self.lst, self.request_id, self.uri);
        let shown = String::from_utf8_lossy(target);
        let by = from.map_or("-", |p| &**p);
        let why = match to {
            Some(_) => "it goes to another pool",
            None => "no route serves it",
        };
        if lst.dialect == crate::config::Dialect::Nginx {
            if let Err(e) = respond::file_handoff::check_redirect_for_nginx(target) {
                tracing::error!(listener = %lst.name, pool = by, request_id, uri = %uri, target = %shown, "internal redirect refused, answering 500: {why}, and as X-Accel-Redirect {e}");
                return self.answer(respond::error_response(500, None).freeze(), 500, from).await;
            }
            // A file-map location: nginx would send the file unchecked (a symlink out of its
            // directory, a file the pool's user could not read). A file hand-off header is
            // checked first; a redirect that would bypass that check is refused.
            if lst.files.as_ref().is_some_and(|f| f.uri_to_fs(target).is_some()) {
                tracing::error!(listener = %lst.name, pool = by, request_id, uri = %uri, target = %shown, "internal redirect refused, answering 500: {why}, and it names a file-map location; hand the file off with X-Sendfile or X-Accel-Redirect, which the bridge checks");
                return self.answer(respond::error_response(500, None).freeze(), 500, from).await;
            }
        }
        let reply = respond::redirect::unrouted(lst.dialect, lst.unrouted_redirect, target);
        let status = if reply.is_some() { 200 } else { 404 };
        match to {
            Some(to) => {
                let how =
                    if lst.dialect == crate::config::Dialect::Nginx { "X-Accel-Redirect" } else { "200 + Location" };
                tracing::info!(listener = %lst.name, pool = by, request_id, uri = %uri, target = %shown, target_pool = to, "internal redirect into another pool handed to the web server as {how}, so that its access rules for the target run (redirect-pools: same)");
            }
            None => {
                tracing::info!(listener = %lst.name, pool = by, request_id, uri = %uri, target = %shown, "no route serves the internal redirect target, answering {status}");
            }
        }
        let reply = reply.unwrap_or_else(|| respond::error_response(404, None));
        self.answer(reply.freeze(), status, from).await
    }

    /// Route the request to a pool, wait for a worker, and run it there.
    async fn route(&mut self) -> Step<'a> {
        let (lst, request_id, uri) = (self.lst, self.request_id, self.uri);
        // Only the request as the web server sent it: an app's internal redirect (or an
        // error page) to status-path would pass the web server's access control for it.
        let (status_path, ping_path) = (lst.status_path.as_deref(), lst.ping_path.as_deref());
        let first = self.redirects == 0 && self.serving.is_none();
        if let Some(reply) = first
            .then(|| crate::status::front::intercept(status_path, ping_path, &lst.registry, &self.params))
            .flatten()
        {
            return self.answer(reply, 200, None).await;
        }
        let Some(crate::route::Routed { target, mount, capture }) = lst.router.routed(&self.params) else {
            if self.lst.registry.rate_limits.allow(&crate::logging::ratelimit::NO_ROUTE, &lst.name) {
                tracing::info!(listener = %lst.name, request_id, uri = %uri, "no route matches, answering 404");
            }
            return self.answer(respond::error_response(404, None).freeze(), 404, None).await;
        };
        let pool = match target {
            Target::Pool(pool) => pool,
            Target::Template(t) => match self.instance(t, capture).await {
                Ok(pool) => pool,
                Err(step) => return step,
            },
        };
        if !lst.keep_path_info {
            crate::route::mount(&mut self.params, mount.as_deref().or(lst.mount.as_deref()));
        }
        // Where a wsgi.file_wrapper file may come back from as X-Sendfile: the bridge's
        // word only, never the web server's (docs/worker-contract.md).
        respond::file_handoff::set_worker_roots(&mut self.params, lst.files.as_deref());
        // The ready-check's mark is the bridge's too: a client's (over a bare FastCGI
        // listener) would let it pass for the check.
        self.params.remove(crate::supervise::READY_CHECK_PARAM);
        let declared = match self.admit(pool).await {
            Ok(declared) => declared,
            Err(step) => return step,
        };
        // What the status page shows while the request runs (shared, not allocated).
        let method = self.params.get_bytes(b"REQUEST_METHOD").unwrap_or_default();
        let ticket =
            Ticket { method: &method, uri: self.uri_bytes, request_id: self.request_num, started: self.started };
        let kept = self.kept(pool, declared);
        let asked = self.times.now();
        let acquired = pool.dispatcher.acquire_piped(&ticket, kept.clone(), self.source.aborted()).await;
        add(&mut self.times.queue, asked);
        // A worker has it, or the bridge answers it now: it waits no more.
        self.source.release_charge();
        match acquired {
            Ok(granted) => self.run(pool, granted, &ticket, declared, kept).await,
            Err(AcquireError::Gone) => self.gone(pool).await,
            Err(AcquireError::Lost) => {
                tracing::error!(pool = &*pool.name, request_id, uri = %uri, "the worker failed after it had started the piped request, answering 502");
                self.error_page(Some(&pool.config.error_pages), Replaced::bridge(502, None), Some(&pool.name)).await
            }
            Err(e) => {
                if self.lst.registry.rate_limits.allow(rejection_kind(&e), &pool.name) {
                    tracing::warn!(pool = &*pool.name, request_id, uri = %uri, "answering 503: {e}");
                }
                self.error_page(
                    Some(&pool.config.error_pages),
                    Replaced::bridge(503, Some(RETRY_AFTER_SECS)),
                    Some(&pool.name),
                )
                .await
            }
        }
    }

    /// The request's first write, encoded now to wait in the queue with it, when the pool
    /// pipelines, has no free slot, and the whole request fits in that write: it may then
    /// be piped onto a busy worker connection (dispatch/mod.rs). None otherwise.
    fn kept(&mut self, pool: &'a PoolRuntime, declared: Option<u64>) -> Option<Bytes> {
        if !crate::claim::pipelines(&pool.config) || declared.is_some_and(|n| n > FIRST_WRITE_BODY as u64) {
            return None;
        }
        if pool.dispatcher.idle() > 0 || !self.source.whole() {
            return None;
        }
        let info = RequestInfo {
            id: self.request_id,
            uri: self.uri,
            role: self.role,
            error_pages: None,
            files: None,
            reader: None,
        };
        encode_kept(&info, &self.params, &mut self.source)
    }

    /// The instance of template `t` for this request (supervise/instances.rs), or the step
    /// that answered it (400/403/404/500/503, logged).
    async fn instance(
        &mut self,
        t: &'a TemplateRuntime,
        capture: Option<(&str, Vec<u8>)>,
    ) -> Result<&'a Arc<PoolRuntime>, Step<'a>> {
        let refusal = match t.instance(&self.params, capture).await {
            Ok(pool) => match self.pins.pin(pool) {
                Some(pool) => return Ok(pool),
                None => crate::supervise::instances::Refusal::Broken {
                    key: String::new(),
                    why: "the request went through too many instances".into(),
                },
            },
            Err(r) => r,
        };
        let peer = String::from_utf8_lossy(self.params.get(b"REMOTE_ADDR").unwrap_or(b""));
        let _ = crate::supervise::instances::log_refusal(
            &self.lst.registry.rate_limits,
            &refusal,
            &t.name,
            &self.lst.name,
            self.request_id,
            &peer,
            self.uri,
        );
        let (status, retry) = refusal.status();
        Err(self.error_page(None, Replaced::bridge(status, retry), None).await)
    }

    /// Before a worker is taken: `max-body` on the declared length, a body of unknown length
    /// as `unknown-length-body` says, and a small body read whole, so that a slow client
    /// holds a connection, never a worker thread. The body's length, if known, or the step
    /// that answered the request.
    async fn admit(&mut self, pool: &'a PoolRuntime) -> Result<Option<u64>, Step<'a>> {
        let (lst, request_id, uri) = (self.lst, self.request_id, self.uri);
        if let Some(limit) = pool.config.max_body {
            if super::request_body_limits::too_large(&self.params, limit) {
                if self.lst.registry.rate_limits.allow(&crate::logging::ratelimit::TOO_LARGE, &pool.name) {
                    tracing::warn!(pool = &*pool.name, request_id, uri = %uri, limit, "request body is larger than max-body, answering 413");
                }
                return Err(self.answer(respond::error_response(413, None).freeze(), 413, Some(&pool.name)).await);
            }
            self.source.set_limit(limit);
        }
        let declared = fastcgi_server::content_length::declared(&self.params).ok().flatten(); // checked by the listener (400)
        self.source.set_declared(declared);
        let declared = match declared {
            Some(n) => Some(n),
            None => self.unknown_length(pool).await?,
        };
        if let Some(n) = declared.filter(|n| (1..=FIRST_WRITE_BODY as u64).contains(n)) {
            if self.source.prefetch(n).await.is_err() {
                return Err(self.read_ahead_failed(pool, declared).await);
            }
            if self.source.ended_short() {
                if self.lst.registry.rate_limits.allow(&crate::logging::ratelimit::BODY_SHORT, &pool.name) {
                    tracing::warn!(
                        listener = %lst.name, pool = &*pool.name, request_id, uri = %uri, received = self.source.received(), declared = n,
                        "request body ended before its CONTENT_LENGTH, answering 400 (no worker taken)"
                    );
                }
                return Err(self.answer(respond::error_response(400, None).freeze(), 400, Some(&pool.name)).await);
            }
        }
        Ok(declared)
    }

    /// A body of unknown length (a chunked upload) under the pool's `unknown-length-body`:
    /// streamed (None, as a request without a body is), refused with 411, or read whole
    /// and passed on with its CONTENT_LENGTH (its length), all before a worker is taken.
    async fn unknown_length(&mut self, pool: &'a PoolRuntime) -> Result<Option<u64>, Step<'a>> {
        let (request_id, uri) = (self.request_id, self.uri);
        let how = pool.config.unknown_length_body;
        if how == UnknownLengthBody::Stream {
            return Ok(None);
        }
        match self.source.has_body().await {
            Ok(true) => {}
            Ok(false) => return Ok(None),
            Err(_) => return Err(self.read_ahead_failed(pool, None).await),
        }
        let limits = &self.lst.registry.rate_limits;
        if how == UnknownLengthBody::Refuse {
            if limits.allow(&crate::logging::ratelimit::LENGTH_REQUIRED, &pool.name) {
                tracing::warn!(pool = &*pool.name, request_id, uri = %uri, "request body of unknown length (a chunked upload), answering 411 Length Required: the pool's unknown-length-body is refuse");
            }
            return Err(self.answer(respond::error_response(411, None).freeze(), 411, Some(&pool.name)).await);
        }
        let limit = pool.config.max_body.unwrap_or(crate::config::DEFAULT_BUFFERED_BODY);
        // What the operator asked to buffer is bounded by that limit per request, not by
        // `header-memory`, which is sized for headers: a few such uploads would fill it.
        self.source.release_charge();
        match self.source.read_whole(limit).await {
            Ok(Some(n)) => {
                self.params.insert(&b"CONTENT_LENGTH"[..], Bytes::from(n.to_string()));
                self.source.set_declared(Some(n));
                Ok(Some(n))
            }
            Ok(None) => {
                let bound =
                    if pool.config.max_body.is_some() { "max-body" } else { "the default: set max-body to change it" };
                if limits.allow(&crate::logging::ratelimit::BUFFER_TOO_LARGE, &pool.name) {
                    tracing::warn!(
                        pool = &*pool.name, request_id, uri = %uri, limit,
                        "request body of unknown length passed {} ({bound}) while unknown-length-body: buffer read it, answering 413",
                        crate::config::units::SizeDisplay(limit)
                    );
                }
                Err(self.answer(respond::error_response(413, None).freeze(), 413, Some(&pool.name)).await)
            }
            Err(_) => Err(self.read_ahead_failed(pool, None).await),
        }
    }

    /// Reading a body ahead, before a worker was taken, failed: it stalled or came too slowly
    /// (408, logged), or the web server went away. `declared`: its length, if known.
    async fn read_ahead_failed(&mut self, pool: &'a PoolRuntime, declared: Option<u64>) -> Step<'a> {
        let Some(why @ (Tripped::Stalled | Tripped::TooSlow)) = self.body_watch.tripped() else {
            // Gone while its body arrived.
            return self.gone(pool).await;
        };
        if self.lst.registry.rate_limits.allow(&crate::logging::ratelimit::BODY_STALLED, &pool.name) {
            let declared = declared.map_or_else(|| "unknown".to_owned(), |n| n.to_string());
            tracing::warn!(
                listener = %self.lst.name, pool = &*pool.name, request_id = self.request_id, uri = %self.uri, received = self.source.received(), declared = %declared,
                "{} before a worker was taken, answering 408", self.too_slow(why)
            );
        }
        self.answer(respond::error_response(408, None).freeze(), 408, Some(&pool.name)).await
    }

    /// Run the request on `slot`, give the slot back, and turn what the exchange says
    /// comes next into the next step.
    async fn run(
        &mut self,
        pool: &'a Arc<PoolRuntime>,
        granted: Granted<SlotConn>,
        ticket: &Ticket<'_>,
        declared: Option<u64>,
        kept: Option<Bytes>,
    ) -> Step<'a> {
        let taken = self.times.now();
        let exchanged = self.exchange_on(pool, granted, ticket, kept).await;
        add(&mut self.times.app, taken);
        let Some((slot, outcome)) = exchanged else {
            tracing::error!(pool = &*pool.name, request_id = self.request_id, uri = %self.uri, "no worker took the request, answering 502");
            return self
                .error_page(Some(&pool.config.error_pages), Replaced::bridge(502, None), Some(&pool.name))
                .await;
        };
        let Outcome { status, body_bytes, fate, next } = outcome;
        let pid = slot.worker.pid;
        self.times.pid = Some(pid);
        // The bridge's own error goes out before the slot is given back (that may wait
        // for a worker's answer); an error page to dispatch waits for it.
        let answered = match next {
            Next::Error(code) => Err(self.replace(pool, Replaced::bridge(code, None)).await),
            next => Ok(next),
        };
        if fate == SlotFate::Aborted {
            // The request is over; the worker's end of it is awaited apart.
            let pool = Arc::clone(pool);
            tokio::spawn(async move { give_back(&pool, slot, fate).await });
        } else {
            give_back(pool, slot, fate).await;
        }
        if let Some(step) = self.tripped(pool, pid, status, body_bytes, declared) {
            return step;
        }
        match answered {
            Err(step) => step,
            Ok(Next::Done | Next::Error(_) | Next::Retry(_)) => Step::Done(status, body_bytes, Some(&pool.name)),
            Ok(Next::Reroute(target)) => Step::Reroute(target, Some(&pool.name), Author::App),
            Ok(Next::ErrorPage(replaced)) => self.replace(pool, replaced).await,
            Ok(Next::File(mut file)) => self.send_file(pool, &mut file).await,
        }
    }

    /// The exchange on `slot`, its first write moved to another slot of the pool when it
    /// never reached the worker. None: no worker took the request (the front has nothing).
    async fn exchange_on(
        &mut self,
        pool: &'a Arc<PoolRuntime>,
        granted: Granted<SlotConn>,
        ticket: &Ticket<'_>,
        kept: Option<Bytes>,
    ) -> Option<(SlotConn, Outcome)> {
        // The request fetching an error page gets no page of its own (no recursion).
        let info = RequestInfo {
            id: self.request_id,
            uri: self.uri,
            role: self.role,
            error_pages: overrides(&self.serving, Some(&pool.config.error_pages)),
            files: self.lst.files.as_deref(),
            reader: pool.reader.as_ref(),
        };
        let Granted { mut slot, sent } = granted;
        let mut first = match (sent, &kept) {
            (Some((cell, tag)), _) => First::Sent { cell, tag },
            (None, Some(kept)) => {
                slot.load_first_write(kept);
                First::Prepared { body_done: true }
            }
            (None, None) => First::Encode,
        };
        let pipe = crate::claim::pipelines(&pool.config).then_some(&*pool.dispatcher);
        let mut attempts = 0;
        loop {
            let outcome = exchange(&mut slot, &info, &self.params, &mut self.source, &mut self.sink, first, pipe).await;
            let Next::Retry(again) = outcome.next else { return Some((slot, outcome)) };
            attempts += 1;
            // A piped request is sent again from the copy it kept; it always has one.
            let resend = matches!(again, First::Resend);
            let next = if attempts < MAX_ATTEMPTS && (!resend || kept.is_some()) {
                pool.dispatcher.acquire_again(ticket).await.ok()
            } else {
                None
            };
            let Some(mut next) = next else {
                give_back_failed(pool, slot);
                return None;
            };
            match &kept {
                Some(kept) if resend => {
                    next.load_first_write(kept);
                    first = First::Prepared { body_done: true };
                }
                _ => {
                    next.take_first_write(&mut slot);
                    first = again;
                }
            }
            give_back_failed(pool, std::mem::replace(&mut slot, next));
        }
    }

    /// A tripped `max-body` or `body-timeout` (dispatch/request_body_limits.rs) decides the status
    /// of a request that ran: logged here, whatever the exchange said comes next.
    fn tripped(
        &self,
        pool: &'a PoolRuntime,
        pid: u32,
        status: u16,
        body_bytes: u64,
        declared: Option<u64>,
    ) -> Option<Step<'a>> {
        let (lst, request_id, uri) = (self.lst, self.request_id, self.uri);
        match self.body_watch.tripped()? {
            Tripped::TooLarge => {
                if self.lst.registry.rate_limits.allow(&crate::logging::ratelimit::BODY_CUT_OFF, &pool.name) {
                    tracing::warn!(pool = &*pool.name, request_id, uri = %uri, limit = pool.config.max_body.unwrap_or(0), "streamed request body passed max-body, cut off with 413");
                }
                Some(Step::Done(413, body_bytes, Some(&pool.name)))
            }
            why @ (Tripped::Stalled | Tripped::TooSlow) => {
                let cut = self.sink.cut_off();
                let declared = declared.map_or_else(|| "unknown".to_owned(), |n| n.to_string());
                if self.lst.registry.rate_limits.allow(&crate::logging::ratelimit::BODY_STALLED, &pool.name) {
                    tracing::warn!(
                        listener = %lst.name, pool = &*pool.name, pid, request_id, uri = %uri, received = self.source.received(), declared,
                        "{}, request aborted in the worker, {}",
                        self.too_slow(why), if cut { "response cut off" } else { "answering 408" }
                    );
                }
                Some(Step::Done(if cut { status } else { 408 }, body_bytes, Some(&pool.name)))
            }
            Tripped::Short => {
                let cut = self.sink.cut_off();
                if self.lst.registry.rate_limits.allow(&crate::logging::ratelimit::BODY_SHORT, &pool.name) {
                    tracing::warn!(
                        listener = %lst.name, pool = &*pool.name, pid, request_id, uri = %uri, received = self.source.received(), declared = declared.unwrap_or(0),
                        "request body ended before its CONTENT_LENGTH: request aborted in the worker, {}",
                        if cut { "response cut off" } else { "answering 400" }
                    );
                }
                Some(Step::Done(if cut { status } else { 400 }, body_bytes, Some(&pool.name)))
            }
        }
    }

    /// What was wrong with a body that came too slowly (`why`: Stalled or TooSlow), for the log.
    fn too_slow(&self, why: Tripped) -> String {
        let lst = self.lst;
        if why == Tripped::TooSlow {
            let waited = self.source.waited().as_secs();
            format!(
                "request body too slow: {} bytes while the bridge waited {waited}s for them, below body-min-rate ({} bytes/s beyond body-timeout, {:?})",
                self.source.received(),
                lst.body_min_rate,
                lst.body_timeout
            )
        } else {
            format!("request body stalled: no byte from the web server within body-timeout ({:?})", lst.body_timeout)
        }
    }

    /// Send the file the app handed on (respond/sendfile.rs).
    async fn send_file(&mut self, pool: &'a PoolRuntime, file: &mut respond::file_handoff::FileHandoff) -> Step<'a> {
        let (lst, request_id, uri) = (self.lst, self.request_id, self.uri);
        let roots = lst.files.as_ref().map_or(&[][..], |f| &f.serve_roots[..]);
        let max_ranges = lst.files.as_ref().map_or(0, |f| f.max_ranges);
        let header = file.kind.name();
        let (status, sent) = match respond::sendfile::serve(
            roots,
            pool.reader.as_ref(),
            max_ranges,
            &self.params,
            file,
            &mut self.sink,
        )
        .await
        {
            Ok(served) => {
                if let Some(why) = served.ranges_ignored {
                    let peer = String::from_utf8_lossy(self.params.get(b"REMOTE_ADDR").unwrap_or(b""));
                    if self.lst.registry.rate_limits.allow(&crate::logging::ratelimit::RANGE_IGNORED, &pool.name) {
                        tracing::info!(listener = %lst.name, pool = &*pool.name, pid = file.pid, request_id, uri = %uri, peer = %peer, "Range ignored, answering 200 with the whole file: {why}");
                    }
                }
                (served.status, served.sent)
            }
            Err(respond::sendfile::SendfileError::CutOff { path, err, status, sent }) => {
                tracing::error!(pool = &*pool.name, pid = file.pid, request_id, uri = %uri, "{header}: reading {path:?} failed after the headers were sent, response cut off: {err}");
                (status, sent)
            }
            Err(e) => {
                tracing::warn!(pool = &*pool.name, pid = file.pid, request_id, uri = %uri, "{header} refused, answering {}: {e}", e.status());
                let _ = self.sink.send(respond::error_response(e.status(), None).freeze(), Some(End::Complete)).await;
                (e.status(), 0)
            }
        };
        Step::Done(status, sent, Some(&pool.name))
    }
}

/// The rate-limited log line of a 503 (logging/ratelimit.rs): one kind per reason.
fn rejection_kind(e: &AcquireError) -> &'static crate::logging::ratelimit::Kind {
    use crate::logging::ratelimit as rl;
    match e {
        AcquireError::QueueFull(_) => &rl::QUEUE_FULL,
        AcquireError::Timeout(_) => &rl::QUEUE_TIMEOUT,
        AcquireError::Unavailable(_) | AcquireError::Lost | AcquireError::Gone => &rl::UNAVAILABLE,
    }
}

#[cfg(test)]
mod error_page_tests {
    use super::*;
    use crate::config::PageSource;

    #[test]
    fn one_decision_for_every_error() {
        // No pages: the default text, byte for byte the bridge's plain error.
        let PageAnswer::Send { status, reply } = decide(overrides(&None, None), Replaced::bridge(502, None)) else {
            panic!("sent")
        };
        assert_eq!((status, &reply[..]), (502, &respond::error_response(502, None)[..]));
        // A page that is a local path is dispatched, and says what it replaces.
        let mut pages = ErrorPages::default();
        pages.insert("503", PageSource::Redirect("/errors/503")).expect("page");
        let PageAnswer::Dispatch { target, replaced } =
            decide(overrides(&None, Some(&pages)), Replaced::bridge(503, Some(1)))
        else {
            panic!("dispatched")
        };
        assert_eq!((&target[..], replaced.status), (&b"/errors/503"[..], 503));
        // That page failing: the default text with the original status and headers.
        let serving = Some(replaced);
        let PageAnswer::Send { status, reply } = decide(overrides(&serving, Some(&pages)), Replaced::bridge(502, None))
        else {
            panic!("sent")
        };
        assert_eq!(status, 503);
        assert!(String::from_utf8_lossy(&reply).contains("Retry-After: 1\r\n"));
    }
}
