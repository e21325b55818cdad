//! A pool's `error-pages:` as loaded: each a file read at load time or a local path to
//! dispatch to (respond/error_override.rs serves them).
use bytes::Bytes;
use std::collections::BTreeMap;
use std::path::Path;

/// Why an error page cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ErrorPageError {
    #[error("{0:?} is not an HTTP error status (400..=599)")]
    NotAnError(String),
    #[error("cannot read the error page {path}: {err}")]
    Read { path: String, err: std::io::Error },
    /// Worded as a missing key: when a misspelt key was taken out of the page, the unknown
    /// key is the one error (validate.rs, `follows_from`).
    #[error("missing key `file` or `redirect`; give a page: a file (a path, or `{{file: path}}`) or `{{redirect: /local/path}}`")]
    NoPage,
    #[error("a page is either `file` or `redirect`, not both")]
    BothForms,
    #[error("redirect {0:?} must be a local path starting with one '/' (like /errors/404)")]
    BadRedirect(String),
}

/// One page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ErrorPage {
    /// A file's bytes and its Content-Type (`path`: where they were read from).
    File { body: Bytes, content_type: &'static str, path: std::path::PathBuf },
    /// A local path (and query) the request is dispatched to.
    Redirect(Bytes),
}

/// Where a page comes from, as configured.
#[derive(Debug, Clone, Copy)]
pub enum PageSource<'a> {
    File(&'a Path),
    Redirect(&'a str),
}

/// A pool's pages by status.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ErrorPages(BTreeMap<u16, ErrorPage>);

impl ErrorPages {
    /// Add the page for `status` (the key as written).
    pub fn insert(&mut self, status: &str, source: PageSource<'_>) -> Result<(), ErrorPageError> {
        let code: u16 = status
            .trim()
            .parse()
            .ok()
            .filter(|c| (400..=599).contains(c))
            .ok_or_else(|| ErrorPageError::NotAnError(status.to_owned()))?;
        let page = match source {
            PageSource::File(file) => {
                let body = std::fs::read(file)
                    .map_err(|err| ErrorPageError::Read { path: file.display().to_string(), err })?;
                let content_type = match file.extension().and_then(|e| e.to_str()) {
                    Some("html" | "htm") => "text/html; charset=utf-8",
                    Some("json") => "application/json",
                    _ => "text/plain; charset=utf-8",
                };
                ErrorPage::File { body: Bytes::from(body), content_type, path: file.to_path_buf() }
            }
            PageSource::Redirect(target) => {
                // "//host" is a network path, not a local one; a control character or a
                // space would break the request line the target becomes.
                let local = target.starts_with('/') && !target.starts_with("//");
                if !local || target.bytes().any(|b| b.is_ascii_control() || b == b' ') {
                    return Err(ErrorPageError::BadRedirect(target.to_owned()));
                }
                ErrorPage::Redirect(Bytes::copy_from_slice(target.as_bytes()))
            }
        };
        self.0.insert(code, page);
        Ok(())
    }

    /// Whether no page is configured (then nothing is looked up per response).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Every page, by status.
    pub fn iter(&self) -> impl Iterator<Item = (u16, &ErrorPage)> {
        self.0.iter().map(|(s, p)| (*s, p))
    }

    /// The page for `status`, if configured.
    pub fn get(&self, status: u16) -> Option<&ErrorPage> {
        self.0.get(&status)
    }
}
