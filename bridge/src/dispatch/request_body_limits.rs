//! Limits on a request body: its size and its pace.
//!
//! A pool's `max-body`: a request whose declared length is above it gets 413 before the app
//! runs; a body of unknown length (a chunked upload streamed by nginx with
//! `fastcgi_request_buffering off`, Apache mod_proxy_fcgi) is cut off when it passes the
//! limit — the worker sees an abort (the app's read raises) and the web server gets 413 if
//! the app had not answered yet, or a cut-off response if it had.
//!
//! The declared length: a body that ends part-way, before CONTENT_LENGTH bytes came (a
//! FastCGI STDIN stream closed early), is never passed off as whole: the worker sees an
//! abort and the web server gets 400. A body that is absent altogether is not that: nginx
//! keeps the client's CONTENT_LENGTH on requests it sends without their body (an
//! `error_page` redirect, an `auth_request` subrequest, `fastcgi_pass_request_body off`),
//! such a request still reaches the app, which answers it if it does not read the body
//! (an error page) and gets the worker's "body ended before CONTENT_LENGTH" error if it does.
//!
//! A listener's `body-timeout`: while a request still expects body, the next byte must come
//! within it, or the request ends the same way with 408. A worker sending its response is
//! not idle, so the clock also restarts with every response write. A small body of known
//! length is read whole before the request takes a worker ([`Limited::prefetch`]).
use crate::flow::{BodySource, End, FrontGone, ResponseSink};
use bytes::Bytes;
use fastcgi_server::Params;
use std::collections::VecDeque;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::time::Duration;
use tokio::time::Instant;

/// Whether the declared length is already above `limit`.
pub(crate) fn too_large(params: &Params, limit: u64) -> bool {
    fastcgi_server::content_length::declared(params).ok().flatten().is_some_and(|n| n > limit)
}

/// Why a body was cut short.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Tripped {
    /// It passed `max-body`: 413.
    TooLarge,
    /// No byte came within `body-timeout`: 408.
    Stalled,
    /// Bytes came, but slower than `body-min-rate` on average: 408.
    TooSlow,
    /// The body ended before its declared length: 400.
    Short,
}

/// What the body and the response side of one request share.
pub(crate) struct BodyWatch {
    /// 0: not tripped; else a [`Tripped`] + 1.
    tripped: AtomicU8,
    /// The body is still expected: only then do response writes move the idle clock.
    body_open: AtomicBool,
    /// The reference of `last_out`.
    base: Instant,
    /// Milliseconds after `base` of the last response write while the body was open.
    last_out: AtomicU64,
}

impl BodyWatch {
    /// `started`: when the request arrived.
    pub(crate) fn new(started: std::time::Instant) -> Self {
        Self {
            tripped: AtomicU8::new(0),
            body_open: AtomicBool::new(true),
            base: Instant::from_std(started),
            last_out: AtomicU64::new(0),
        }
    }

    /// Why the body was cut short, if it was.
    pub(crate) fn tripped(&self) -> Option<Tripped> {
        match self.tripped.load(Ordering::Acquire) {
            1 => Some(Tripped::TooLarge),
            2 => Some(Tripped::Stalled),
            3 => Some(Tripped::Short),
            4 => Some(Tripped::TooSlow),
            _ => None,
        }
    }

    fn trip(&self, why: Tripped) {
        let code = match why {
            Tripped::TooLarge => 1,
            Tripped::Stalled => 2,
            Tripped::Short => 3,
            Tripped::TooSlow => 4,
        };
        let _ = self.tripped.compare_exchange(0, code, Ordering::AcqRel, Ordering::Acquire);
    }

    fn is_tripped(&self) -> bool {
        self.tripped.load(Ordering::Acquire) != 0
    }

    fn wrote(&self) {
        if self.body_open.load(Ordering::Relaxed) {
            let ms = u64::try_from(self.base.elapsed().as_millis()).unwrap_or(u64::MAX);
            self.last_out.store(ms, Ordering::Relaxed);
        }
    }

    fn last_out(&self) -> Instant {
        self.base + Duration::from_millis(self.last_out.load(Ordering::Relaxed))
    }

    /// Whether the response has started while the body was open: the app then talks back
    /// as it reads, and the body's pace is its business.
    fn responding(&self) -> bool {
        self.last_out.load(Ordering::Relaxed) != 0
    }
}

/// How fast a body must come: a byte within `idle` of asking for it (`body-timeout`), and,
/// once the bridge has spent `idle` in all waiting for body bytes, `min_rate` bytes a second
/// on average over the waiting beyond that (`body-min-rate`, 0: any rate). The rate is what
/// stops a client that sends a byte just before each timeout and so holds a worker thread
/// for as long as the body lasts. Only time spent waiting counts: a request that queued for
/// a worker, or an app that reads slowly, is not the client's fault.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Pace {
    pub idle: Duration,
    pub min_rate: u64,
}

/// A body source that stops at `limit` bytes, or when the web server sends it slower than
/// `pace`: the request then looks aborted to the exchange, and the [`BodyWatch`] says why,
/// so that the response becomes a 413 or a 408.
pub(crate) struct Limited<'a, S> {
    inner: &'a mut S,
    limit: u64,
    seen: u64,
    /// The declared length: the body must not end before it.
    declared: Option<u64>,
    watch: &'a BodyWatch,
    pace: Pace,
    /// Time spent waiting for body bytes that had not arrived yet.
    waited: Duration,
    /// Chunks read ahead by [`prefetch`](Self::prefetch), not yet passed on.
    early: VecDeque<Bytes>,
    /// [`prefetch`](Self::prefetch) reached the end of the body (after `early`).
    early_end: bool,
    /// Internally redirected: the request goes again without a body (respond/redirect.rs).
    no_body: Option<bool>,
}

impl<'a, S: BodySource> Limited<'a, S> {
    /// Wrap `inner`; `watch` trips once the body passes `limit` or comes slower than `pace`.
    pub(crate) fn new(inner: &'a mut S, limit: u64, watch: &'a BodyWatch, pace: Pace) -> Self {
        let early = VecDeque::new();
        let waited = Duration::ZERO;
        Limited { inner, limit, seen: 0, declared: None, watch, pace, waited, early, early_end: false, no_body: None }
    }

    /// Time spent waiting for body bytes that had not arrived yet (what `body-min-rate`
    /// measures).
    pub(crate) fn waited(&self) -> Duration {
        self.waited
    }

    /// Body bytes received from the web server so far.
    pub(crate) fn received(&self) -> u64 {
        self.early.iter().fold(self.seen, |n, c| n.saturating_add(c.len() as u64))
    }

    /// Read the body ahead — until its end or until `upto` bytes are here — so that the
    /// worker gets it whole with the request: a client slow to send a small body then never
    /// holds a worker. Err: the web server went away, or the body stalled (see the watch).
    pub(crate) async fn prefetch(&mut self, upto: u64) -> Result<(), FrontGone> {
        let mut got = self.received();
        while got < upto && !self.early_end && self.no_body.is_none() {
            match self.paced().await? {
                Some(chunk) => {
                    got = got.saturating_add(chunk.len() as u64);
                    self.early.push_back(chunk);
                }
                None => self.early_end = true,
            }
        }
        Ok(())
    }

    /// Whether the request has body bytes at all: waits for the first of them or the end
    /// (read ahead). A body of unknown length is told from none this way: web servers send
    /// GETs with CONTENT_LENGTH empty (nginx) or absent (Apache) too.
    pub(crate) async fn has_body(&mut self) -> Result<bool, FrontGone> {
        if self.no_body.is_some() {
            return Ok(false);
        }
        self.prefetch(1).await?;
        Ok(self.early.iter().any(|c| !c.is_empty()))
    }

    /// Read the whole body ahead if it is at most `limit` bytes: its length, or None when
    /// more came (what was read stays here; the request is to be refused).
    pub(crate) async fn read_whole(&mut self, limit: u64) -> Result<Option<u64>, FrontGone> {
        self.prefetch(limit.saturating_add(1)).await?;
        let received = self.received();
        Ok((self.early_end && received <= limit).then_some(received))
    }

    /// The inner source's next chunk, within `pace.idle` of asking for it or of the last
    /// response write; a chunk that had to be waited for is also held to `pace.min_rate`.
    async fn paced(&mut self) -> Result<Option<Bytes>, FrontGone> {
        if let Some(next) = self.inner.ready() {
            return Ok(next);
        }
        let asked = Instant::now();
        let mut since = asked;
        loop {
            let next = tokio::time::timeout_at(since + self.pace.idle, self.inner.next_chunk()).await;
            if next.is_ok() {
                self.waited += asked.elapsed();
            }
            match next {
                Ok(Ok(Some(chunk))) if self.too_slow(chunk.len() as u64) => {
                    self.watch.trip(Tripped::TooSlow);
                    return Err(FrontGone);
                }
                Ok(next) => return next,
                Err(_) => {
                    let out = self.watch.last_out();
                    if out > since {
                        since = out;
                        continue;
                    }
                    self.watch.trip(Tripped::Stalled);
                    return Err(FrontGone);
                }
            }
        }
    }

    /// Whether the body, with `more` bytes just come, is behind `pace.min_rate` (see
    /// [`Pace`]); never once the response has started.
    fn too_slow(&self, more: u64) -> bool {
        if self.pace.min_rate == 0 || self.watch.responding() {
            return false;
        }
        let Some(beyond) = self.waited.checked_sub(self.pace.idle) else { return false };
        let due = beyond.as_secs_f64() * self.pace.min_rate as f64;
        (self.received().saturating_add(more) as f64) < due
    }

    /// Whether what was read ahead ended part-way, before the declared length (see the
    /// module's notes): the request is refused before it takes a worker.
    pub(crate) fn ended_short(&self) -> bool {
        self.early_end && self.cut_short(self.received())
    }

    /// Whether a body that ended after `received` bytes ended part-way (some, not all of
    /// the declared length).
    fn cut_short(&self, received: u64) -> bool {
        received > 0 && self.declared.is_some_and(|n| received < n)
    }

    /// Whether the whole body is here (read ahead, its end seen), taking what the source
    /// has without waiting: only such a request may be piped (dispatch/mod.rs).
    pub(crate) fn whole(&mut self) -> bool {
        if self.no_body.is_some() || self.early_end {
            return true;
        }
        loop {
            match self.inner.ready() {
                Some(Some(chunk)) => self.early.push_back(chunk),
                Some(None) => {
                    self.early_end = true;
                    return true;
                }
                None => return false,
            }
        }
    }

    /// From now on the body is empty (an internal redirect is a GET); an abort of the
    /// request is still reported.
    pub(crate) fn end_body(&mut self) {
        self.no_body = Some(false);
    }

    /// The length the web server declared (checked by the listener).
    pub(crate) fn set_declared(&mut self, declared: Option<u64>) {
        self.declared = declared;
    }

    /// Apply `limit` from now on (the pool is known only after routing).
    pub(crate) fn set_limit(&mut self, limit: u64) {
        self.limit = limit;
    }

    fn count(&mut self, chunk: &Bytes) -> bool {
        self.seen = self.seen.saturating_add(chunk.len() as u64);
        if self.seen > self.limit {
            self.watch.trip(Tripped::TooLarge);
            return false;
        }
        true
    }

    /// What was read ahead, before the inner source.
    fn take_early(&mut self) -> Option<Option<Bytes>> {
        match self.early.pop_front() {
            Some(chunk) => Some(Some(chunk)),
            // Once: after it the inner source, which has ended too, answers.
            None if self.early_end => {
                self.early_end = false;
                Some(None)
            }
            None => None,
        }
    }

    /// The chunk passed on: counted against the limit; the end closes the idle clock.
    fn pass(&mut self, next: Option<Bytes>) -> Result<Option<Bytes>, FrontGone> {
        match next {
            Some(chunk) if !self.count(&chunk) => Err(FrontGone),
            Some(chunk) => Ok(Some(chunk)),
            None if self.cut_short(self.seen) => {
                self.watch.trip(Tripped::Short);
                Err(FrontGone)
            }
            None => {
                self.watch.body_open.store(false, Ordering::Relaxed);
                Ok(None)
            }
        }
    }
}

impl<S: BodySource> BodySource for Limited<'_, S> {
    fn ready(&mut self) -> Option<Option<Bytes>> {
        if let Some(ended) = &mut self.no_body {
            return (!std::mem::replace(ended, true)).then_some(None);
        }
        if self.watch.is_tripped() {
            return None;
        }
        let next = match self.take_early() {
            Some(next) => next,
            None => self.inner.ready()?,
        };
        self.pass(next).ok()
    }

    async fn next_chunk(&mut self) -> Result<Option<Bytes>, FrontGone> {
        if self.no_body.is_some() {
            return Ok(None);
        }
        if self.watch.is_tripped() {
            return Err(FrontGone);
        }
        let next = match self.take_early() {
            Some(next) => next,
            None => self.paced().await?,
        };
        self.pass(next)
    }

    async fn aborted(&mut self) {
        if self.watch.is_tripped() {
            return;
        }
        self.inner.aborted().await
    }

    fn release_charge(&mut self) {
        self.inner.release_charge();
    }
}

/// The response side of a limited request: once the body passed the limit or stalled, the
/// normal end the exchange sends for an aborted request becomes a 413 or a 408 (nothing
/// sent yet) or a cut-off (the app had started its response).
pub(crate) struct LimitedSink<'a, K> {
    inner: &'a mut K,
    watch: &'a BodyWatch,
    started: bool,
    /// The response was cut off because the body tripped a limit.
    cut: bool,
}

impl<'a, K: ResponseSink> LimitedSink<'a, K> {
    /// Wrap `inner`, with the `watch` of its request's body.
    pub(crate) fn new(inner: &'a mut K, watch: &'a BodyWatch) -> Self {
        LimitedSink { inner, watch, started: false, cut: false }
    }

    /// Whether a tripped limit cut off a response already started (rather than answering
    /// 413 or 408).
    pub(crate) fn cut_off(&self) -> bool {
        self.cut
    }
}

impl<K: ResponseSink> ResponseSink for LimitedSink<'_, K> {
    fn answered_by_bridge(&self) -> bool {
        self.watch.tripped().is_some()
    }

    fn send(&mut self, data: Bytes, end: Option<End>) -> impl Future<Output = Result<(), FrontGone>> + Send {
        let tripped = if end == Some(End::Complete) && data.is_empty() { self.watch.tripped() } else { None };
        let (data, end) = match tripped {
            Some(_) if self.started => {
                self.cut = true;
                (data, Some(End::CutOff))
            }
            Some(Tripped::TooLarge) => (crate::respond::error_response(413, None).freeze(), end),
            Some(Tripped::Stalled | Tripped::TooSlow) => (crate::respond::error_response(408, None).freeze(), end),
            Some(Tripped::Short) => (crate::respond::error_response(400, None).freeze(), end),
            None => (data, end),
        };
        if !data.is_empty() {
            self.started = true;
            self.watch.wrote();
        }
        self.inner.send(data, end)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_lengths_are_never_too_large() {
        let mut p = Params::default();
        for v in ["", "-1", "x", "+5", " 5", "5 ", "0x10", "-2", "1180591620717411303424"] {
            p.insert(&b"CONTENT_LENGTH"[..], v.as_bytes());
            assert!(!too_large(&p, 0), "{v:?}");
        }
        p.insert(&b"CONTENT_LENGTH"[..], &b"101"[..]);
        assert!(too_large(&p, 100));
        assert!(!too_large(&p, 101));
    }

    /// `n` chunks of `size` bytes, one every `gap`, then the end.
    struct Drip {
        gap: Duration,
        size: usize,
        left: usize,
    }

    impl BodySource for Drip {
        fn ready(&mut self) -> Option<Option<Bytes>> {
            None
        }
        async fn next_chunk(&mut self) -> Result<Option<Bytes>, FrontGone> {
            if self.left == 0 {
                return Ok(None);
            }
            tokio::time::sleep(self.gap).await;
            self.left -= 1;
            Ok(Some(Bytes::from(vec![b'b'; self.size])))
        }
        async fn aborted(&mut self) {
            std::future::pending().await
        }
    }

    /// Read `drip` through the pace rules; what tripped, if anything.
    async fn read_all(mut drip: Drip, pace: Pace, responding: bool) -> Option<Tripped> {
        let watch = BodyWatch::new(std::time::Instant::now());
        if responding {
            tokio::time::sleep(Duration::from_millis(5)).await;
            watch.wrote();
        }
        let mut body = Limited::new(&mut drip, u64::MAX, &watch, pace);
        while let Ok(Some(_)) = body.next_chunk().await {}
        watch.tripped()
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_of_unknown_length_is_read_whole_up_to_a_limit() {
        let pace = Pace { idle: Duration::from_secs(10), min_rate: 0 };
        let watch = BodyWatch::new(std::time::Instant::now());
        let drip = |left| Drip { gap: Duration::from_millis(1), size: 30, left };
        // no body at all: nothing is read whole, nothing made up
        let mut none = drip(0);
        assert_eq!(Limited::new(&mut none, u64::MAX, &watch, pace).has_body().await, Ok(false));
        for (left, limit, want) in [(3, 90, Some(90)), (3, 100, Some(90)), (4, 90, None), (1, 29, None)] {
            let mut d = drip(left);
            let mut body = Limited::new(&mut d, u64::MAX, &watch, pace);
            assert_eq!(body.has_body().await, Ok(true));
            assert_eq!(body.read_whole(limit).await, Ok(want), "{left} chunks, limit {limit}");
            // at most one chunk beyond the limit is held
            assert!(body.received() <= limit + 30);
            if want.is_some() {
                let mut passed = 0;
                while let Ok(Some(c)) = body.next_chunk().await {
                    passed += c.len() as u64;
                }
                assert_eq!(Some(passed), want);
            }
        }
        assert_eq!(watch.tripped(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_dripped_just_inside_the_idle_timeout_is_too_slow() {
        let pace = Pace { idle: Duration::from_secs(10), min_rate: 100 };
        // a byte every 9 s never trips body-timeout alone
        let drip = || Drip { gap: Duration::from_secs(9), size: 1, left: 1000 };
        assert_eq!(read_all(drip(), Pace { min_rate: 0, ..pace }, false).await, None);
        let started = tokio::time::Instant::now();
        assert_eq!(read_all(drip(), pace, false).await, Some(Tripped::TooSlow));
        // at the second byte (18 s): 2 bytes where 800 were due
        assert_eq!(started.elapsed(), Duration::from_secs(18));
        // the app answering as it reads sets its own pace
        assert_eq!(read_all(drip(), pace, true).await, None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_link_above_the_rate_and_a_silent_client_are_told_apart() {
        let pace = Pace { idle: Duration::from_secs(10), min_rate: 100 };
        // 150 bytes a second for 100 s
        let link = Drip { gap: Duration::from_secs(1), size: 150, left: 100 };
        assert_eq!(read_all(link, pace, false).await, None);
        let silent = Drip { gap: Duration::from_secs(11), size: 1, left: 1 };
        assert_eq!(read_all(silent, pace, false).await, Some(Tripped::Stalled));
    }

    #[tokio::test(start_paused = true)]
    async fn time_the_client_was_not_asked_is_not_counted() {
        let pace = Pace { idle: Duration::from_secs(10), min_rate: 100 };
        let watch = BodyWatch::new(std::time::Instant::now());
        // queued for a worker a minute, then an app that reads 10 bytes a second but gets
        // each at once
        tokio::time::sleep(Duration::from_secs(60)).await;
        let mut drip = Drip { gap: Duration::from_millis(1), size: 10, left: 100 };
        let mut body = Limited::new(&mut drip, u64::MAX, &watch, pace);
        while let Ok(Some(_)) = body.next_chunk().await {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        assert_eq!(watch.tripped(), None);
    }
}
