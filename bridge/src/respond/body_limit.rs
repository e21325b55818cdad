//! A pool's `max-body`: a request whose declared length is above it gets 413 before the app
//! runs; a body of unknown length (a chunked upload streamed by nginx with
//! `fastcgi_request_buffering off`, Apache mod_proxy_fcgi) is cut off when it passes the
//! limit — the worker sees an abort (the app's read raises) and the web server gets 413 if
//! the app had not answered yet, or a cut-off response if it had.
use crate::backend::exchange::{BodySource, End, FrontGone, ResponseSink};
use bytes::Bytes;
use fastcgi_server::content_length::ContentLengthError;
use fastcgi_server::Params;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};

/// The body length the web server declared: `None` when it is absent, empty (nginx,
/// unbuffered chunked upload) or `-1` (Caddy 2.6, chunked upload), i.e. unknown. Any other
/// value must be plain decimal digits (the listeners answer 400 otherwise, before routing).
pub fn declared_length(params: &Params) -> Result<Option<u64>, ContentLengthError> {
    match params.get(b"CONTENT_LENGTH") {
        None | Some(b"" | b"-1") => Ok(None),
        Some(v) => fastcgi_server::content_length::parse(v).map(Some),
    }
}

/// Whether the declared length is already above `limit`.
pub fn too_large(params: &Params, limit: u64) -> bool {
    declared_length(params).ok().flatten().is_some_and(|n| n > limit)
}

/// A body source that stops at `limit` bytes: the request then looks aborted to the
/// exchange, and `tripped` is set so that the response becomes a 413.
pub struct Limited<'a, S> {
    inner: &'a mut S,
    limit: u64,
    seen: u64,
    tripped: &'a AtomicBool,
    /// Internally redirected: the request goes again without a body (respond/redirect.rs).
    no_body: Option<bool>,
}

impl<'a, S: BodySource> Limited<'a, S> {
    /// Wrap `inner`; `tripped` is set once the body passes `limit`.
    pub fn new(inner: &'a mut S, limit: u64, tripped: &'a AtomicBool) -> Self {
        Limited { inner, limit, seen: 0, tripped, no_body: None }
    }

    /// From now on the body is empty (an internal redirect is a GET); an abort of the
    /// request is still reported.
    pub fn end_body(&mut self) {
        self.no_body = Some(false);
    }

    /// Apply `limit` from now on (the pool is known only after routing).
    pub fn set_limit(&mut self, limit: u64) {
        self.limit = limit;
    }

    fn count(&mut self, chunk: &Bytes) -> bool {
        self.seen = self.seen.saturating_add(chunk.len() as u64);
        if self.seen > self.limit {
            self.tripped.store(true, Ordering::Release);
            return false;
        }
        true
    }
}

impl<S: BodySource> BodySource for Limited<'_, S> {
    fn ready(&mut self) -> Option<Option<Bytes>> {
        if let Some(ended) = &mut self.no_body {
            return (!std::mem::replace(ended, true)).then_some(None);
        }
        if self.tripped.load(Ordering::Acquire) {
            return None;
        }
        match self.inner.ready() {
            Some(Some(chunk)) if !self.count(&chunk) => None,
            other => other,
        }
    }

    async fn next_chunk(&mut self) -> Result<Option<Bytes>, FrontGone> {
        if self.no_body.is_some() {
            return Ok(None);
        }
        if self.tripped.load(Ordering::Acquire) {
            return Err(FrontGone);
        }
        match self.inner.next_chunk().await? {
            Some(chunk) if !self.count(&chunk) => Err(FrontGone),
            other => Ok(other),
        }
    }

    async fn aborted(&mut self) {
        if self.tripped.load(Ordering::Acquire) {
            return;
        }
        self.inner.aborted().await
    }
}

/// The response side of a limited request: once the body passed the limit, the normal end
/// the exchange sends for an aborted request becomes a 413 (nothing sent yet) or a cut-off
/// (the app had started its response).
pub struct LimitedSink<'a, K> {
    inner: &'a mut K,
    tripped: &'a AtomicBool,
    started: bool,
}

impl<'a, K: ResponseSink> LimitedSink<'a, K> {
    /// Wrap `inner`, watching `tripped`.
    pub fn new(inner: &'a mut K, tripped: &'a AtomicBool) -> Self {
        LimitedSink { inner, tripped, started: false }
    }
}

impl<K: ResponseSink> ResponseSink for LimitedSink<'_, K> {
    fn send(&mut self, data: Bytes, end: Option<End>) -> impl Future<Output = Result<(), FrontGone>> + Send {
        let (data, end) = if self.tripped.load(Ordering::Acquire) && end == Some(End::Complete) && data.is_empty() {
            if self.started {
                (data, Some(End::CutOff))
            } else {
                (super::error_response(413, None).freeze(), end)
            }
        } else {
            (data, end)
        };
        self.started |= !data.is_empty();
        self.inner.send(data, end)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_lengths() {
        let mut p = Params::default();
        assert_eq!(declared_length(&p), Ok(None));
        for (v, want) in [("", None), ("-1", None), ("12", Some(12)), ("0", Some(0))] {
            p.insert(&b"CONTENT_LENGTH"[..], v.as_bytes());
            assert_eq!(declared_length(&p), Ok(want), "{v:?}");
        }
        for v in ["x", "+5", " 5", "5 ", "0x10", "-2", "1180591620717411303424"] {
            p.insert(&b"CONTENT_LENGTH"[..], v.as_bytes());
            assert!(declared_length(&p).is_err(), "{v:?}");
            assert!(!too_large(&p, 0), "{v:?}");
        }
        p.insert(&b"CONTENT_LENGTH"[..], &b"101"[..]);
        assert!(too_large(&p, 100));
        assert!(!too_large(&p, 101));
    }
}
