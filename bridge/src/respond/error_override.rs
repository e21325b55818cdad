//! Error override (mod_wsgi's WSGIErrorOverride): a pool's `error-pages` replace the body of
//! an app's 4xx/5xx response with the configured page, and are also used for the bridge's own
//! 502, 503 and 504 for that pool, so every application behind a site shows the same pages.
//! Pages are read when the configuration is loaded; the status stays the app's.
use bytes::{BufMut, Bytes, BytesMut};
use std::collections::BTreeMap;
use std::path::Path;

/// Why an error page cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ErrorPageError {
    #[error("{0:?} is not an HTTP error status (400..=599)")]
    NotAnError(String),
    #[error("cannot read the error page {path}: {err}")]
    Read { path: String, err: std::io::Error },
}

/// One page: its bytes and Content-Type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorPage {
    pub body: Bytes,
    pub content_type: &'static str,
}

/// A pool's pages by status.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ErrorPages(BTreeMap<u16, ErrorPage>);

impl ErrorPages {
    /// Load `status → file` pairs.
    pub fn load<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a Path)>) -> Result<Self, ErrorPageError> {
        let mut map = BTreeMap::new();
        for (status, file) in pairs {
            let code: u16 = status.trim().parse().ok().filter(|c| (400..=599).contains(c)).ok_or_else(|| ErrorPageError::NotAnError(status.to_owned()))?;
            let body = std::fs::read(file).map_err(|err| ErrorPageError::Read { path: file.display().to_string(), err })?;
            let content_type = match file.extension().and_then(|e| e.to_str()) {
                Some("html" | "htm") => "text/html; charset=utf-8",
                Some("json") => "application/json",
                _ => "text/plain; charset=utf-8",
            };
            map.insert(code, ErrorPage { body: Bytes::from(body), content_type });
        }
        Ok(ErrorPages(map))
    }

    /// Whether no page is configured (then nothing is looked up per response).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The page for `status`, if configured.
    pub fn get(&self, status: u16) -> Option<&ErrorPage> {
        self.0.get(&status)
    }
}

/// A complete CGI response: `status` with `page` as its body.
pub fn page_response(status: u16, page: &ErrorPage, retry_after: Option<u32>) -> BytesMut {
    let mut out = BytesMut::with_capacity(128 + page.body.len());
    out.put_slice(format!("Status: {status} {}\r\nContent-Type: {}\r\n", super::reason_phrase(status), page.content_type).as_bytes());
    if let Some(secs) = retry_after {
        out.put_slice(format!("Retry-After: {secs}\r\n").as_bytes());
    }
    out.put_slice(format!("Content-Length: {}\r\n\r\n", page.body.len()).as_bytes());
    out.put_slice(&page.body);
    out
}

/// The bridge's own error response for a pool: its page when configured, else the default.
pub fn bridge_error(pages: Option<&ErrorPages>, status: u16, retry_after: Option<u32>) -> BytesMut {
    match pages.and_then(|p| p.get(status)) {
        Some(page) => page_response(status, page, retry_after),
        None => super::error_response(status, retry_after),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages() {
        let dir = std::env::temp_dir().join(format!("fcgibridge-errpages-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let f = dir.join("502.html");
        std::fs::write(&f, "<h1>down</h1>").expect("write");
        let pages = ErrorPages::load([("502", f.as_path())]).expect("load");
        let r = bridge_error(Some(&pages), 502, None);
        assert_eq!(&r[..], b"Status: 502 Bad Gateway\r\nContent-Type: text/html; charset=utf-8\r\nContent-Length: 13\r\n\r\n<h1>down</h1>");
        assert!(bridge_error(Some(&pages), 503, Some(1)).starts_with(b"Status: 503 Service Unavailable\r\nContent-Type: text/plain"));
        assert!(matches!(ErrorPages::load([("200", f.as_path())]), Err(ErrorPageError::NotAnError(_))));
        assert!(matches!(ErrorPages::load([("404", dir.join("missing").as_path())]), Err(ErrorPageError::Read { .. })));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
