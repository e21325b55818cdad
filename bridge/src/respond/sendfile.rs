//! Sending a handed-off file (respond/file_handoff.rs decides when): only from the listener's
//! `file-roots`, streamed in 64 KiB reads through the response sink, whose `send` waits
//! while the web server is slow (back-pressure); a file is never read whole.
//!
//! For one whole file (X-Sendfile, a mapped X-Accel-Redirect) with the app's status 200,
//! conditional requests (If-None-Match, If-Modified-Since → 304), single and multiple
//! ranges (206, multipart/byteranges; 416 when none is satisfiable) and HEAD are handled.
//! X-Sendfile2 sends the app's ranges one after another with the app's status. The app's
//! headers that do not describe the body are kept.
//!
//! A path is first compared, as written, with the roots: nothing outside them is looked up,
//! so the answer (403) tells nothing of what exists there. A file under them is opened
//! before it is checked, and what was opened is checked (its real path as the kernel names
//! the open file, its fstat), then read through that descriptor: a path whose directories
//! change meanwhile cannot lead out of the roots. For a pool whose workers run as another
//! account ([`Reader`]) the file is found and opened as that account (the thread's
//! filesystem credentials switched for it): only what the kernel lets it read is sent.
//!
//! In `translate` mode the web server sends a file under a `file-map` directory (or
//! `file-roots`); the bridge makes the same checks first and passes the app's hand-off
//! header on only for a file it would have sent itself ([`FileHandoff::to_front`]).
use super::file_handoff::{FileHandoff, FileSpec, Piece};
use crate::flow::{End, ResponseSink};
use crate::supervise::access::Reader;
use bytes::{BufMut, Bytes, BytesMut};
use fastcgi_server::Params;
use std::collections::HashMap;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncReadExt, AsyncSeekExt};

/// Bytes read from the file per write to the web server.
const CHUNK: usize = 64 << 10;
/// Distinct files one X-Sendfile2 may name: each stays open until the response is sent,
/// and the bridge's descriptors are shared by every listener and pool.
pub(crate) const MAX_SENDFILE2_FILES: usize = 64;

/// With `translate`, the `file-map` directories are roots too.
const ALSO_MAPPED: &str = " (translate: or file-map directories)";

/// Why a hand-off is refused.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SendfileError {
    #[error("{0:?} is not a normal path: {1}")]
    BadPath(String, super::file_handoff::PathFlaw),
    #[error("{0:?} is not under any of the listener's file-roots{ALSO_MAPPED}")]
    OutsideRoots(String),
    /// Under a root as written, but a symlink on the way leads out of every root.
    #[error("{path:?} leads to {real:?}, which is not under any of the listener's file-roots{ALSO_MAPPED}")]
    LeadsOutside { path: String, real: PathBuf },
    #[error("{0:?} does not exist")]
    NotFound(String),
    #[error("{0:?} is not a regular file")]
    NotRegular(String),
    #[error("{path:?}: the pool's user (uid {uid}) may not read it ({why})")]
    Unreadable { path: String, uid: u32, why: String },
    /// The thread could not take the pool's account to open the file.
    #[error("{path:?}: {why}")]
    ActAs { path: String, why: String },
    #[error("range {start}-{end} of {path:?} lies beyond its end ({len} bytes): the app asked for bytes the file does not have")]
    BeyondEnd { path: String, start: u64, end: String, len: u64 },
    #[error("{path:?}: {err}")]
    Io { path: String, err: std::io::Error },
    #[error("it names more than {MAX_SENDFILE2_FILES} distinct files")]
    TooManyFiles,
    /// Reading failed after the head went out: the response was cut off (nothing more to send).
    #[error("{path:?} failed after the headers were sent, response cut off: {err}")]
    CutOff { path: String, err: std::io::Error, status: u16, sent: u64 },
}

impl SendfileError {
    /// The status the client gets.
    pub(crate) fn status(&self) -> u16 {
        match self {
            Self::BadPath(..) | Self::OutsideRoots(_) | Self::LeadsOutside { .. } | Self::Unreadable { .. } => 403,
            Self::NotFound(_) | Self::NotRegular(_) => 404,
            Self::BeyondEnd { .. } | Self::Io { .. } | Self::ActAs { .. } | Self::TooManyFiles => 500,
            Self::CutOff { status, .. } => *status,
        }
    }
}

/// Stream `n` bytes from `start` of `file`; a read error cuts the response off.
async fn send_range<K: ResponseSink>(
    file: &mut tokio::fs::File,
    real: &Path,
    start: u64,
    n: u64,
    sink: &mut K,
    status: u16,
    sent: u64,
) -> Result<u64, SendfileError> {
    match copy(file, start, n, sink).await {
        Ok(k) => Ok(k),
        Err(err) => {
            let _ = sink.send(Bytes::new(), Some(End::CutOff)).await;
            Err(SendfileError::CutOff { path: real.display().to_string(), err, status, sent })
        }
    }
}

/// A file found under a root, with what was checked of it; nothing read yet.
#[derive(Debug)]
pub(crate) struct Located {
    /// An `O_PATH` descriptor: it names the file, it cannot read it.
    handle: std::fs::File,
    /// Where the kernel says the opened file is (symlinks resolved).
    pub real: PathBuf,
    /// Its fstat.
    pub meta: std::fs::Metadata,
}

/// A file opened to be sent, with what was checked of it.
#[derive(Debug)]
pub(crate) struct Opened {
    pub file: std::fs::File,
    /// As in [`Located`].
    pub real: PathBuf,
    pub meta: std::fs::Metadata,
}

/// Find `path` under one of `roots` (each as written and with symlinks resolved, as in
/// [`Files`](super::file_handoff::Files)): a normal path (already checked by
/// [`decide`](super::file_handoff::Files::decide); again here, as the last step before the
/// filesystem) under a root as written, so that nothing outside them is looked up; then,
/// on the file opened, its real path under a root (a symlink inside a root may lead
/// elsewhere inside one) and a regular file.
pub(crate) fn locate(roots: &[PathBuf], path: &[u8]) -> Result<Located, SendfileError> {
    let shown = String::from_utf8_lossy(path).into_owned();
    super::file_handoff::normal_path(path, false).map_err(|flaw| SendfileError::BadPath(shown.clone(), flaw))?;
    let p = Path::new(std::ffi::OsStr::from_bytes(path));
    // Whether a file outside the roots exists (403 or 404) is none of the app's business.
    if !roots.iter().any(|r| p.starts_with(r)) {
        return Err(SendfileError::OutsideRoots(shown));
    }
    // O_PATH: nothing is read, and no device or FIFO really opened, before the file is
    // known to be a regular file under a root.
    let handle = match std::fs::OpenOptions::new().read(true).custom_flags(libc::O_PATH).open(p) {
        Ok(h) => h,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(SendfileError::NotFound(shown)),
        Err(err) => return Err(SendfileError::Io { path: shown, err }),
    };
    let real = std::fs::read_link(fd_path(&handle)).map_err(|err| SendfileError::Io { path: shown.clone(), err })?;
    // A symlink inside a root that leads out of it is refused like a path outside.
    if !roots.iter().any(|r| real.starts_with(r)) {
        return Err(SendfileError::LeadsOutside { path: shown, real });
    }
    let meta = handle.metadata().map_err(|err| SendfileError::Io { path: shown.clone(), err })?;
    if !meta.is_file() {
        return Err(SendfileError::NotRegular(shown));
    }
    Ok(Located { handle, real, meta })
}

/// The name under which the kernel reopens the file `f` names.
fn fd_path(f: &std::fs::File) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", f.as_raw_fd()))
}

/// The very file `found` names, opened for reading: through `/proc/self/fd`, which the
/// kernel lets this process follow under any filesystem credentials, and which checks read
/// permission against the calling thread's.
fn reopen(found: Located, path: &[u8]) -> Result<Opened, SendfileError> {
    let file = std::fs::File::open(fd_path(&found.handle))
        .map_err(|err| SendfileError::Io { path: String::from_utf8_lossy(path).into_owned(), err })?;
    Ok(Opened { file, real: found.real, meta: found.meta })
}

/// [`locate`] and [`reopen`]; for a pool whose workers run as another account (`reader`)
/// both as that account ([`Reader::acting`]): the kernel decides whether it may search
/// every directory on the way and read the file (ACLs, a root_squash NFS), and a refusal is
/// [`SendfileError::Unreadable`].
pub(crate) fn open(roots: &[PathBuf], reader: Option<&Reader>, path: &[u8]) -> Result<Opened, SendfileError> {
    let Some(r) = reader else { return reopen(locate(roots, path)?, path) };
    let shown = || String::from_utf8_lossy(path).into_owned();
    let opened = r
        .acting(|| locate(roots, path).and_then(|found| reopen(found, path)))
        .map_err(|why| SendfileError::ActAs { path: shown(), why })?;
    match opened {
        Err(SendfileError::Io { path: p, err }) if err.kind() == std::io::ErrorKind::PermissionDenied => {
            Err(SendfileError::Unreadable {
                why: why_refused(roots, r, path).unwrap_or_else(|| err.to_string()),
                path: p,
                uid: r.uid,
            })
        }
        other => other,
    }
}

/// What the mode bits say keeps `r` from the file at `path`, which the kernel refused it,
/// looked at as the bridge: the first directory it may not search or the file it may not
/// read, else that they allow it. None when the bridge cannot look either (a root_squash NFS).
fn why_refused(roots: &[PathBuf], r: &Reader, path: &[u8]) -> Option<String> {
    let found = locate(roots, path).ok()?;
    Some(r.why_unreadable(&found.real, &found.meta))
}

/// [`locate`], and for a pool whose workers run as another account (`reader`), only a
/// file that account could open for reading itself ([`open`]); nothing is read.
fn check(roots: &[PathBuf], reader: Option<&Reader>, path: &[u8]) -> Result<(), SendfileError> {
    match reader {
        None => locate(roots, path).map(drop),
        Some(_) => open(roots, reader, path).map(drop),
    }
}

/// The files [`decide`](super::file_handoff::Files::decide) looked up ([`open`]) to judge a
/// hand-off, by path as the app named them, each opened or refused to the pool's account:
/// [`serve`] sends these, so a file is looked up once and the one checked is the one sent.
#[derive(Debug, Default)]
pub(crate) struct Checked(HashMap<Vec<u8>, Result<Opened, SendfileError>>);

impl Checked {
    /// Whether `path` was looked up already.
    pub(crate) fn has(&self, path: &[u8]) -> bool {
        self.0.contains_key(path)
    }

    /// Keep what looking `path` up gave, up to [`MAX_SENDFILE2_FILES`] files: a hand-off
    /// naming more is refused by [`serve`], and the bridge's descriptors are shared.
    pub(crate) fn keep(&mut self, path: &[u8], found: Result<Opened, SendfileError>) {
        if self.0.len() < MAX_SENDFILE2_FILES {
            self.0.insert(path.to_vec(), found);
        }
    }

    /// What was found at `path`, else [`open`] it now. A kept file is stat-ed again: it was
    /// opened when the response's head came, and the app may have written to it since,
    /// until its response ended.
    fn open(&mut self, roots: &[PathBuf], reader: Option<&Reader>, path: &[u8]) -> Result<Opened, SendfileError> {
        match self.0.remove(path) {
            Some(Ok(mut kept)) => {
                if let Ok(now) = kept.file.metadata() {
                    kept.meta = now;
                }
                Ok(kept)
            }
            Some(refused) => refused,
            None => open(roots, reader, path),
        }
    }

    /// What was found at `path`, else [`check`] it now.
    fn check(&mut self, roots: &[PathBuf], reader: Option<&Reader>, path: &[u8]) -> Result<(), SendfileError> {
        self.0.remove(path).map_or_else(|| check(roots, reader, path), |found| found.map(drop))
    }
}

/// What [`serve`] sent, for the access log and the log line of an ignored Range.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Served {
    pub status: u16,
    /// Body bytes sent.
    pub sent: u64,
    /// The client's Range header was ignored and the whole file sent, for this reason.
    pub ranges_ignored: Option<RangesIgnored>,
}

impl Served {
    fn new(status: u16, sent: u64) -> Self {
        Self { status, sent, ranges_ignored: None }
    }
}

/// Send the hand-off `h` to `sink`; `max_ranges` is the listener's `max-ranges`, `reader`
/// the answering pool's ([`PoolRuntime`](crate::supervise::PoolRuntime)). The files `h`
/// holds already ([`Checked`]) are sent as they are, the others looked up here. Nothing has
/// been sent when this fails.
pub(crate) async fn serve<K: ResponseSink>(
    roots: &[PathBuf],
    reader: Option<&Reader>,
    max_ranges: u32,
    params: &Params,
    h: &mut FileHandoff,
    sink: &mut K,
) -> Result<Served, SendfileError> {
    let mut checked = std::mem::take(&mut h.checked);
    let h = &*h;
    if let Some(to_front) = &h.to_front {
        // The web server sends the file, following symlinks and reading as its own user:
        // only one the bridge would send itself goes to it.
        for p in h.spec.paths() {
            checked.check(roots, reader, p)?;
        }
        let _ = sink.send(to_front.clone(), Some(End::Complete)).await;
        return Ok(Served::new(h.status, 0));
    }
    if h.status < 200 || h.status == 204 || h.status == 304 {
        // A status without a body (an app that checked the client's validators itself):
        // the file is only checked, never sent.
        for p in h.spec.paths() {
            checked.check(roots, reader, p)?;
        }
        let _ = sink.send(head(h.status, h, None, &[]).freeze(), Some(End::Complete)).await;
        return Ok(Served::new(h.status, 0));
    }
    match &h.spec {
        FileSpec::Whole(path) => serve_whole(checked.open(roots, reader, path)?, max_ranges, params, h, sink).await,
        FileSpec::Pieces(pieces) => serve_pieces(roots, reader, &mut checked, params, h, pieces, sink)
            .await
            .map(|(st, sent)| Served::new(st, sent)),
    }
}

/// The response head: status, the app's kept headers, then the bridge's own.
fn head(status: u16, h: &FileHandoff, ctype: Option<&[u8]>, own: &[(&str, &str)]) -> BytesMut {
    let mut out = BytesMut::with_capacity(256);
    out.put_slice(b"Status: ");
    out.put_slice(status.to_string().as_bytes());
    out.put_u8(b' ');
    out.put_slice(super::reason_phrase(status).as_bytes());
    out.put_slice(b"\r\n");
    for (n, v) in &h.headers {
        out.put_slice(n);
        out.put_slice(b": ");
        out.put_slice(v);
        out.put_slice(b"\r\n");
    }
    if let Some(t) = ctype {
        out.put_slice(b"Content-Type: ");
        out.put_slice(t);
        out.put_slice(b"\r\n");
    }
    for (n, v) in own {
        put_header(&mut out, n, v);
    }
    out.put_slice(b"\r\n");
    out
}

async fn serve_whole<K: ResponseSink>(
    opened: Opened,
    max_ranges: u32,
    params: &Params,
    h: &FileHandoff,
    sink: &mut K,
) -> Result<Served, SendfileError> {
    let Opened { file, real, meta } = opened;
    let len = meta.len();
    let mtime = meta.modified().ok().and_then(|t| t.duration_since(UNIX_EPOCH).ok()).map_or(0, |d| d.as_secs());
    let etag = format!("\"{mtime:x}-{len:x}\"");
    let last_modified = http_date(mtime);
    let head_only = params.get(b"REQUEST_METHOD") == Some(b"HEAD");
    let ctype: &[u8] = h.content_type.as_deref().unwrap_or(content_type(&real).as_bytes());
    // Ranges and validators describe the file as a resource: only for the app's 200.
    let plain = h.status == 200;

    if plain && not_modified(params, &etag, mtime) {
        let out = head(304, h, None, &[("ETag", &etag), ("Last-Modified", &last_modified)]);
        let _ = sink.send(out.freeze(), Some(End::Complete)).await;
        return Ok(Served::new(304, 0));
    }
    let multipart = Multipart { boundary: boundary(), ctype: String::from_utf8_lossy(ctype).into_owned(), len };
    let mut plan =
        if plain { plan_ranges(params, len, &etag, mtime, now_secs(), max_ranges) } else { RangePlan::Whole };
    if let RangePlan::Ranges(rs) = &plan {
        // The whole file costs less than these parts: send that instead (no amplification).
        let bytes = multipart.body_len(rs);
        if rs.len() > 1 && bytes > len {
            plan = RangePlan::Ignored(RangesIgnored::LargerThanFile { parts: rs.len(), bytes, len });
        }
    }
    if plan == RangePlan::Unsatisfiable {
        let out = head(416, h, None, &[("Content-Range", &format!("bytes */{len}")), ("Content-Length", "0")]);
        let _ = sink.send(out.freeze(), Some(End::Complete)).await;
        return Ok(Served::new(416, 0));
    }
    let mut file = tokio::fs::File::from_std(file);
    let validators: &[(&str, &str)] = if plain { &[("ETag", &etag), ("Last-Modified", &last_modified)] } else { &[] };
    let send_head = |status: u16, ctype: &[u8], mut own: Vec<(&'static str, String)>| {
        own.extend(validators.iter().map(|&(n, v)| (n, v.to_owned())));
        let own: Vec<(&str, &str)> = own.iter().map(|(n, v)| (*n, v.as_str())).collect();
        head(status, h, Some(ctype), &own)
    };
    let (status, out, start, n, ranges_ignored) = match plan {
        RangePlan::Ranges(rs) if rs.len() > 1 => {
            let own = vec![("Content-Length", multipart.body_len(&rs).to_string())];
            let out = send_head(206, multipart.content_type().as_bytes(), own);
            let (status, sent) = send_multipart(&mut file, &real, sink, out, &multipart, &rs, head_only).await?;
            return Ok(Served::new(status, sent));
        }
        RangePlan::Ranges(rs) => {
            let (start, end) = rs.first().copied().unwrap_or((0, len.saturating_sub(1)));
            let own = vec![
                ("Content-Range", format!("bytes {start}-{end}/{len}")),
                ("Content-Length", (end - start + 1).to_string()),
            ];
            (206, send_head(206, ctype, own), start, end - start + 1, None)
        }
        RangePlan::Whole | RangePlan::Unsatisfiable | RangePlan::Ignored(_) => {
            let mut own = vec![("Content-Length", len.to_string())];
            if plain {
                own.push(("Accept-Ranges", if max_ranges == 0 { "none" } else { "bytes" }.to_owned()));
            }
            let ignored = if let RangePlan::Ignored(why) = plan { Some(why) } else { None };
            (h.status, send_head(h.status, ctype, own), 0, len, ignored)
        }
    };
    if head_only {
        let _ = sink.send(out.freeze(), Some(End::Complete)).await;
        return Ok(Served { status, sent: 0, ranges_ignored });
    }
    if sink.send(out.freeze(), None).await.is_err() {
        return Ok(Served { status: 499, sent: 0, ranges_ignored });
    }
    let sent = send_range(&mut file, &real, start, n, sink, status, 0).await?;
    let _ = sink.send(Bytes::new(), Some(End::Complete)).await;
    Ok(Served { status, sent, ranges_ignored })
}

/// If-None-Match (a weak comparison, `*` too), else If-Modified-Since not older than the file.
fn not_modified(params: &Params, etag: &str, mtime: u64) -> bool {
    match params.get(b"HTTP_IF_NONE_MATCH") {
        Some(inm) => inm.split(|&b| b == b',').any(|t| {
            let t = t.trim_ascii();
            t == b"*" || t == etag.as_bytes() || t.strip_prefix(b"W/") == Some(etag.as_bytes())
        }),
        None => {
            params.get(b"HTTP_IF_MODIFIED_SINCE").is_some_and(|ims| parse_http_date(ims).is_some_and(|t| t >= mtime))
        }
    }
}

/// The head `out`, then each range as a part of a multipart/byteranges body: `(status,
/// body bytes)` for the access log (499: the web server left before the head went out).
async fn send_multipart<K: ResponseSink>(
    file: &mut tokio::fs::File,
    real: &Path,
    sink: &mut K,
    out: BytesMut,
    multipart: &Multipart,
    ranges: &[(u64, u64)],
    head_only: bool,
) -> Result<(u16, u64), SendfileError> {
    if head_only {
        let _ = sink.send(out.freeze(), Some(End::Complete)).await;
        return Ok((206, 0));
    }
    if sink.send(out.freeze(), None).await.is_err() {
        return Ok((499, 0));
    }
    let mut sent = 0;
    for &(s, e) in ranges {
        let ph = multipart.part_head(s, e);
        sent += ph.len() as u64;
        if sink.send(Bytes::from(ph), None).await.is_err() {
            return Ok((499, sent));
        }
        sent += send_range(file, real, s, e - s + 1, sink, 206, sent).await?;
    }
    let closing = multipart.closing();
    sent += closing.len() as u64;
    let _ = sink.send(Bytes::from(closing), Some(End::Complete)).await;
    Ok((206, sent))
}

/// Ranges further apart than this are sent as separate parts; closer ones as one range,
/// gap included: RFC 9110 §14.2 puts a part's own overhead at around 80 bytes.
const RANGE_GAP: u64 = 80;

/// Why the client's Range header was ignored and the whole file sent with 200.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum RangesIgnored {
    #[error("{count} ranges, more than max-ranges ({max})")]
    TooMany { count: usize, max: u32 },
    #[error(
        "the {parts} ranges would take {bytes} bytes as multipart/byteranges, more than the whole file ({len} bytes)"
    )]
    LargerThanFile { parts: usize, bytes: u64, len: u64 },
}

/// What the answer to the client's Range header is.
#[derive(Debug, PartialEq, Eq)]
enum RangePlan {
    /// No Range, not a byte-range set, an If-Range that does not match, or ranges off: 200.
    Whole,
    /// The Range header is ignored (logged): 200.
    Ignored(RangesIgnored),
    /// No range is satisfiable: 416.
    Unsatisfiable,
    /// Inclusive ranges, sorted and coalesced (none overlap or lie within RANGE_GAP): 206.
    Ranges(Vec<(u64, u64)>),
}

/// The client's Range, with If-Range, for a `len`-byte file whose validators are `etag`
/// and `mtime` (RFC 9110 §13.1.5, §14.2). More ranges than `max_ranges` are not parsed.
fn plan_ranges(params: &Params, len: u64, etag: &str, mtime: u64, now: u64, max_ranges: u32) -> RangePlan {
    let Some(range) = params.get(b"HTTP_RANGE") else { return RangePlan::Whole };
    if len == 0 || max_ranges == 0 {
        return RangePlan::Whole;
    }
    if params.get(b"HTTP_IF_RANGE").is_some_and(|v| !if_range_matches(v, etag, mtime, now)) {
        return RangePlan::Whole;
    }
    let count = range.split(|&b| b == b',').filter(|r| !r.trim_ascii().is_empty()).count();
    if count > max_ranges as usize {
        return RangePlan::Ignored(RangesIgnored::TooMany { count, max: max_ranges });
    }
    match fastcgi_server::range::parse(range, len) {
        None => RangePlan::Whole,
        Some(rs) if rs.is_empty() => RangePlan::Unsatisfiable,
        Some(rs) => RangePlan::Ranges(fastcgi_server::range::coalesce(rs, RANGE_GAP)),
    }
}

/// If-Range: the file's ETag (a strong comparison: a weak tag never matches) or its
/// Last-Modified date exactly. The ETag and the date have a second's resolution, so they
/// stand for one version of the file only once that second is over (RFC 9110 §8.8.2.2).
fn if_range_matches(value: &[u8], etag: &str, mtime: u64, now: u64) -> bool {
    let v = value.trim_ascii();
    let same = if v.starts_with(b"\"") || v.starts_with(b"W/") {
        v == etag.as_bytes()
    } else {
        parse_http_date(v) == Some(mtime)
    };
    same && now > mtime
}

/// The multipart/byteranges framing of ranges of one `len`-byte file.
struct Multipart {
    boundary: String,
    /// The file's own Content-Type, in each part.
    ctype: String,
    len: u64,
}

impl Multipart {
    fn content_type(&self) -> String {
        format!("multipart/byteranges; boundary={}", self.boundary)
    }

    fn part_head(&self, s: u64, e: u64) -> String {
        format!(
            "\r\n--{}\r\nContent-Type: {}\r\nContent-Range: bytes {s}-{e}/{}\r\n\r\n",
            self.boundary, self.ctype, self.len
        )
    }

    fn closing(&self) -> String {
        format!("\r\n--{}--\r\n", self.boundary)
    }

    /// The body's length: every part with its head, and the closing boundary.
    fn body_len(&self, ranges: &[(u64, u64)]) -> u64 {
        ranges.iter().map(|&(s, e)| self.part_head(s, e).len() as u64 + e - s + 1).sum::<u64>()
            + self.closing().len() as u64
    }
}

/// A multipart boundary no one can foresee: a file that contains it could otherwise end a
/// part early and forge the parts after it.
fn boundary() -> String {
    let n = getrandom::u64().unwrap_or_else(|_| {
        use std::hash::{BuildHasher, Hasher};
        std::collections::hash_map::RandomState::new().build_hasher().finish()
    });
    format!("fcgibridge-{n:016x}")
}

/// X-Sendfile2: every piece is opened and checked (roots, existence, range within the
/// file) before the head goes out, so a refusal is still a clean error response; a file
/// named by several pieces is opened once.
async fn serve_pieces<K: ResponseSink>(
    roots: &[PathBuf],
    reader: Option<&Reader>,
    checked: &mut Checked,
    params: &Params,
    h: &FileHandoff,
    pieces: &[Piece],
    sink: &mut K,
) -> Result<(u16, u64), SendfileError> {
    // The files opened (descriptor, real path, length), and each piece's (file, start, bytes).
    let mut files: Vec<(tokio::fs::File, PathBuf, u64)> = Vec::new();
    let mut index: HashMap<&[u8], usize> = HashMap::new();
    let mut plan = Vec::with_capacity(pieces.len());
    let mut total = 0u64;
    for p in pieces {
        let i = match index.get(&p.path[..]) {
            Some(&i) => i,
            None if files.len() == MAX_SENDFILE2_FILES => return Err(SendfileError::TooManyFiles),
            None => {
                let Opened { file, real, meta } = checked.open(roots, reader, &p.path)?;
                files.push((tokio::fs::File::from_std(file), real, meta.len()));
                index.insert(&p.path, files.len() - 1);
                files.len() - 1
            }
        };
        let len = files[i].2;
        let end = p.end.map_or(len, |e| e.saturating_add(1)); // exclusive
        if p.start > len || end > len {
            return Err(SendfileError::BeyondEnd {
                path: String::from_utf8_lossy(&p.path).into_owned(),
                start: p.start,
                end: p.end.map(|e| e.to_string()).unwrap_or_default(),
                len,
            });
        }
        let n = end.saturating_sub(p.start);
        total += n;
        plan.push((i, p.start, n));
    }
    let ctype: Vec<u8> = match (&h.content_type, files.first()) {
        (Some(t), _) => t.to_vec(),
        (None, Some((_, real, _))) => content_type(real).as_bytes().to_vec(),
        (None, None) => b"application/octet-stream".to_vec(),
    };
    let out = head(h.status, h, Some(&ctype), &[("Content-Length", &total.to_string())]);
    if params.get(b"REQUEST_METHOD") == Some(b"HEAD") {
        let _ = sink.send(out.freeze(), Some(End::Complete)).await;
        return Ok((h.status, 0));
    }
    if sink.send(out.freeze(), None).await.is_err() {
        return Ok((499, 0));
    }
    let mut sent = 0;
    for (i, start, n) in plan {
        if n == 0 {
            continue;
        }
        let (file, real, _) = &mut files[i];
        sent += send_range(file, real, start, n, sink, h.status, sent).await?;
    }
    let _ = sink.send(Bytes::new(), Some(End::Complete)).await;
    Ok((h.status, sent))
}

/// Stream `n` bytes from `start`, one 64 KiB read per write.
async fn copy<K: ResponseSink>(
    file: &mut tokio::fs::File,
    start: u64,
    n: u64,
    sink: &mut K,
) -> Result<u64, std::io::Error> {
    file.seek(std::io::SeekFrom::Start(start)).await?;
    let mut left = n;
    while left > 0 {
        let want = usize::try_from(left).unwrap_or(CHUNK).min(CHUNK);
        let mut buf = BytesMut::zeroed(want);
        let got = file.read(&mut buf).await?;
        if got == 0 {
            // The file shrank while being sent: the response can only be cut off.
            return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "the file shrank while being sent"));
        }
        buf.truncate(got);
        left -= got as u64;
        if sink.send(buf.freeze(), None).await.is_err() {
            break;
        }
    }
    Ok(n - left)
}

fn put_header(out: &mut BytesMut, name: &str, value: &str) {
    out.put_slice(name.as_bytes());
    out.put_slice(b": ");
    out.put_slice(value.as_bytes());
    out.put_slice(b"\r\n");
}

/// Content-Type by extension: the common static types; anything else is octet-stream.
fn content_type(path: &Path) -> &'static str {
    let ext = path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase);
    match ext.as_deref() {
        Some("html" | "htm") => "text/html; charset=utf-8",
        Some("txt") => "text/plain; charset=utf-8",
        Some("css") => "text/css",
        Some("js" | "mjs") => "text/javascript",
        Some("json") => "application/json",
        Some("xml") => "application/xml",
        Some("csv") => "text/csv",
        Some("pdf") => "application/pdf",
        Some("zip") => "application/zip",
        Some("gz") => "application/gzip",
        Some("png") => "image/png",
        Some("jpg" | "jpeg") => "image/jpeg",
        Some("gif") => "image/gif",
        Some("svg") => "image/svg+xml",
        Some("webp") => "image/webp",
        Some("ico") => "image/x-icon",
        Some("mp4") => "video/mp4",
        Some("mp3") => "audio/mpeg",
        Some("woff2") => "font/woff2",
        Some("wasm") => "application/wasm",
        _ => "application/octet-stream",
    }
}

/// The last second httpdate formats (it panics past 9999-12-31): a file's mtime is
/// whatever the filesystem holds, so later ones are clamped.
const LAST_HTTP_DATE: u64 = 253_402_300_799;

/// IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`) of seconds since the epoch.
fn http_date(secs: u64) -> String {
    httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_secs(secs.min(LAST_HTTP_DATE)))
}

/// Seconds since the epoch of an HTTP date (IMF-fixdate, or the obsolete RFC 850 and
/// asctime forms recipients must accept); `None` for anything else.
fn parse_http_date(v: &[u8]) -> Option<u64> {
    let t = httpdate::parse_http_date(std::str::from_utf8(v).ok()?.trim()).ok()?;
    t.duration_since(UNIX_EPOCH).ok().map(|d| d.as_secs())
}

/// Now, in seconds since the epoch.
fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::Permissions;
    use std::os::unix::fs::{chown, PermissionsExt};

    #[test]
    fn dates_round_trip() {
        assert_eq!(http_date(784_111_777), "Sun, 06 Nov 1994 08:49:37 GMT");
        assert_eq!(parse_http_date(b"Sun, 06 Nov 1994 08:49:37 GMT"), Some(784_111_777));
        let now = now_secs();
        assert_eq!(parse_http_date(http_date(now).as_bytes()), Some(now));
        assert_eq!(parse_http_date(b"Sunday, 06-Nov-94 08:49:37 GMT"), Some(784_111_777));
        assert_eq!(parse_http_date(b"yesterday"), None);
        // A filesystem can hold an mtime past what an HTTP date can say: no panic.
        assert_eq!(http_date(u64::MAX), "Fri, 31 Dec 9999 23:59:59 GMT");
    }

    #[test]
    fn empty_list_elements_are_not_ranges_to_count_against_max_ranges() {
        let two = format!("bytes=0-1,{}500-501", ",".repeat(40));
        assert_eq!(plan(&[("HTTP_RANGE", &two)]), RangePlan::Ranges(vec![(0, 1), (500, 501)]));
    }

    fn params(pairs: &[(&str, &str)]) -> Params {
        let mut p = Params::default();
        for (n, v) in pairs {
            p.insert(Bytes::copy_from_slice(n.as_bytes()), Bytes::copy_from_slice(v.as_bytes()));
        }
        p
    }

    const ETAG: &str = "\"6553f100-64\"";
    const MTIME: u64 = 1_700_000_000;
    const NOW: u64 = MTIME + 3600;

    fn plan(pairs: &[(&str, &str)]) -> RangePlan {
        plan_ranges(&params(pairs), 100_000, ETAG, MTIME, NOW, 16)
    }

    #[test]
    fn range_plans() {
        assert_eq!(plan(&[]), RangePlan::Whole);
        assert_eq!(plan(&[("HTTP_RANGE", "bytes=0-9,5-19")]), RangePlan::Ranges(vec![(0, 19)]));
        assert_eq!(plan(&[("HTTP_RANGE", "bytes=200000-")]), RangePlan::Unsatisfiable);
        assert_eq!(plan(&[("HTTP_RANGE", "lines=1-2")]), RangePlan::Whole);
        let many = format!("bytes={}", vec!["0-"; 500].join(","));
        assert_eq!(plan(&[("HTTP_RANGE", &many)]), RangePlan::Ignored(RangesIgnored::TooMany { count: 500, max: 16 }));
        let sixteen = format!("bytes={}", vec!["0-"; 16].join(","));
        assert_eq!(plan(&[("HTTP_RANGE", &sixteen)]), RangePlan::Ranges(vec![(0, 99_999)]));
        // max-ranges 0: ranges are off
        assert_eq!(plan_ranges(&params(&[("HTTP_RANGE", "bytes=0-1")]), 100, ETAG, MTIME, NOW, 0), RangePlan::Whole);
        // an empty file has no ranges to give
        assert_eq!(plan_ranges(&params(&[("HTTP_RANGE", "bytes=0-1")]), 0, ETAG, MTIME, NOW, 16), RangePlan::Whole);
    }

    #[test]
    fn if_range() {
        let with = |v: &str| plan(&[("HTTP_RANGE", "bytes=10-19"), ("HTTP_IF_RANGE", v)]);
        let ranged = RangePlan::Ranges(vec![(10, 19)]);
        assert_eq!(with(ETAG), ranged);
        assert_eq!(with(&http_date(MTIME)), ranged);
        assert_eq!(with("\"other\""), RangePlan::Whole);
        assert_eq!(with(&format!("W/{ETAG}")), RangePlan::Whole); // weak: never a strong match
        assert_eq!(with(&http_date(MTIME - 1)), RangePlan::Whole);
        assert_eq!(with(&http_date(MTIME + 1)), RangePlan::Whole);
        assert_eq!(with("not a date"), RangePlan::Whole);
        // the file changed within the current second: neither validator is trusted yet
        assert!(!if_range_matches(ETAG.as_bytes(), ETAG, MTIME, MTIME));
        assert!(!if_range_matches(http_date(MTIME).as_bytes(), ETAG, MTIME, MTIME));
        assert!(if_range_matches(b"  \"6553f100-64\" ", ETAG, MTIME, MTIME + 1));
        // If-Range without Range means nothing
        assert_eq!(plan(&[("HTTP_IF_RANGE", "\"other\"")]), RangePlan::Whole);
    }

    #[test]
    fn multipart_length_is_what_is_sent() {
        let m = Multipart { boundary: "b".into(), ctype: "text/plain".into(), len: 380 };
        let ranges = [(0, 0), (100, 100)];
        let sent: u64 = ranges.iter().map(|&(s, e)| m.part_head(s, e).len() as u64 + e - s + 1).sum::<u64>()
            + m.closing().len() as u64;
        assert_eq!(m.body_len(&ranges), sent);
        assert_eq!(m.part_head(0, 0), "\r\n--b\r\nContent-Type: text/plain\r\nContent-Range: bytes 0-0/380\r\n\r\n");
    }

    #[test]
    fn non_normal_paths_are_refused_before_the_filesystem() {
        for p in [&b"relative/a"[..], b"/a/../b", b"/a/./b", b"/a//b", b"/a/", b"/a\0b", b"/a\\..\\b"] {
            assert!(matches!(open(&[PathBuf::from("/")], None, p), Err(SendfileError::BadPath(..))), "{p:?}");
        }
    }

    #[test]
    fn nothing_outside_the_roots_is_looked_up() {
        let (base, root) = tree("outside");
        let evil = base.join("root-evil");
        std::fs::create_dir(&evil).unwrap();
        std::fs::write(evil.join("x"), "x").unwrap();
        let roots = [root.clone()];
        // What exists and what does not, beside the root or anywhere: the same 403, decided
        // on the path as written, before the filesystem is asked.
        for p in [base.join("secret.txt"), base.join("missing.txt"), evil.join("x"), evil.join("none")] {
            match open(&roots, None, bytes(&p)) {
                Err(e @ SendfileError::OutsideRoots(_)) => assert_eq!(e.status(), 403),
                other => panic!("{}: {other:?}", p.display()),
            }
        }
        // Elsewhere on the box: a process's environment, a file in a private directory, one
        // that is not there.
        let private = base.join("private");
        std::fs::create_dir(&private).unwrap();
        std::fs::write(private.join(".bashrc"), "x").unwrap();
        std::fs::set_permissions(&private, Permissions::from_mode(0o700)).unwrap();
        let elsewhere = [PathBuf::from("/proc/self/environ"), private.join(".bashrc"), private.join("no-such-file")];
        for p in &elsewhere {
            assert!(matches!(open(&roots, None, bytes(p)), Err(SendfileError::OutsideRoots(_))), "{}", p.display());
        }
        // Under the root, existence is the root's own business.
        assert!(matches!(open(&roots, None, bytes(&root.join("none"))), Err(SendfileError::NotFound(_))));
    }

    fn bytes(p: &Path) -> &[u8] {
        p.as_os_str().as_bytes()
    }

    fn read(mut f: &std::fs::File) -> String {
        use std::io::Read;
        let mut s = String::new();
        f.read_to_string(&mut s).unwrap();
        s
    }

    /// A scratch root with `root/dir/a.txt`, and `secret.txt` beside the root.
    fn tree(name: &str) -> (crate::scratch::ScratchDir, PathBuf) {
        let base = crate::scratch::scratch_dir(name);
        let root = base.join("root");
        std::fs::create_dir_all(root.join("dir")).unwrap();
        std::fs::write(root.join("dir/a.txt"), "inside\n").unwrap();
        std::fs::write(base.join("secret.txt"), "secret\n").unwrap();
        (base, root)
    }

    #[test]
    fn what_is_opened_is_what_is_checked() {
        let (base, root) = tree("opened");
        let roots = [root.clone()];
        let file = root.join("dir/a.txt");
        let opened = open(&roots, None, bytes(&file)).unwrap();
        assert_eq!((opened.real.as_path(), opened.meta.len()), (file.as_path(), 7));
        // The directory is swapped for a symlink out of the root after the check: the
        // descriptor still reads the file that was checked.
        std::fs::rename(root.join("dir"), root.join("old")).unwrap();
        std::os::unix::fs::symlink(&base, root.join("dir")).unwrap();
        assert_eq!(read(&opened.file), "inside\n");
        // Opened now, the same path is the file beside the root: refused, never read.
        std::fs::write(base.join("a.txt"), "outside\n").unwrap();
        match open(&roots, None, bytes(&file)) {
            Err(e @ SendfileError::LeadsOutside { .. }) => {
                assert_eq!(e.status(), 403);
                assert!(e.to_string().contains(&format!("leads to {:?}", base.join("a.txt"))), "{e}");
            }
            other => panic!("{other:?}"),
        }
        // A symlink that stays inside a root is served as its target.
        std::os::unix::fs::symlink(root.join("old/a.txt"), root.join("link.txt")).unwrap();
        assert_eq!(open(&roots, None, bytes(&root.join("link.txt"))).unwrap().real, root.join("old/a.txt"));
        assert!(matches!(open(&roots, None, bytes(&root.join("old"))), Err(SendfileError::NotRegular(_))));
        assert!(matches!(open(&roots, None, bytes(&root.join("none"))), Err(SendfileError::NotFound(_))));
        // A FIFO is refused without being opened for reading (that would wait for a writer).
        nix::unistd::mkfifo(&root.join("fifo"), nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
        assert!(matches!(open(&roots, None, bytes(&root.join("fifo"))), Err(SendfileError::NotRegular(_))));
    }

    /// Root to chown; every directory above the scratch dir searchable by others.
    fn can_test_readers(base: &Path) -> bool {
        nix::unistd::geteuid().is_root()
            && base.ancestors().all(|d| std::fs::metadata(d).is_ok_and(|m| m.permissions().mode() & 0o001 != 0))
    }

    #[test]
    fn a_pool_user_gets_only_what_it_could_read() {
        let (base, root) = tree("readers");
        if !can_test_readers(&base) {
            return;
        }
        let roots = [root.clone()];
        let tenant = Reader { uid: 4101, gid: 4101, gids: vec![4101, 4200] };
        let mode = |p: &Path, m: u32| std::fs::set_permissions(p, Permissions::from_mode(m)).unwrap();
        let open_as = |p: &Path| open(&roots, Some(&tenant), bytes(p));
        std::fs::write(root.join("public.txt"), "public\n").unwrap();
        mode(&root.join("public.txt"), 0o644);
        std::fs::write(root.join("private.txt"), "private\n").unwrap();
        mode(&root.join("private.txt"), 0o600);
        assert_eq!(read(&open_as(&root.join("public.txt")).unwrap().file), "public\n");
        match open_as(&root.join("private.txt")) {
            Err(e @ SendfileError::Unreadable { uid: 4101, .. }) => {
                assert_eq!(e.status(), 403);
                let text = e.to_string();
                assert!(text.contains("the pool's user (uid 4101) may not read it"), "{text}");
                assert!(text.contains("has mode 0600 and owner uid 0"), "{text}");
            }
            other => panic!("{other:?}"),
        }
        // The bridge itself (no reader) and root read everything.
        assert!(open(&roots, None, bytes(&root.join("private.txt"))).is_ok());
        assert!(open(&roots, Some(&Reader { uid: 0, gid: 0, gids: vec![] }), bytes(&root.join("private.txt"))).is_ok());
        // Its own file, a file of one of its groups.
        chown(root.join("private.txt"), Some(4101), None).unwrap();
        assert!(open_as(&root.join("private.txt")).is_ok());
        chown(root.join("private.txt"), Some(4102), Some(4200)).unwrap();
        mode(&root.join("private.txt"), 0o640);
        assert!(open_as(&root.join("private.txt")).is_ok());
        // A readable file in a directory it may not search; decided on the real path, so a
        // symlink from a searchable directory does not help.
        mode(&root.join("dir"), 0o700);
        assert!(matches!(open_as(&root.join("dir/a.txt")), Err(SendfileError::Unreadable { .. })));
        std::os::unix::fs::symlink(root.join("dir/a.txt"), root.join("via.txt")).unwrap();
        let why = open_as(&root.join("via.txt")).unwrap_err().to_string();
        assert!(why.contains(&format!("{} has mode 0700", root.join("dir").display())), "{why}");
    }

    /// The calling thread's ids, groups and capabilities, as the kernel shows them.
    fn thread_creds() -> Vec<String> {
        let status = std::fs::read_to_string("/proc/thread-self/status").unwrap();
        let wanted = ["Uid:", "Gid:", "Groups:", "CapEff:"];
        status.lines().filter(|l| wanted.iter().any(|w| l.starts_with(w))).map(str::to_owned).collect()
    }

    #[test]
    fn the_kernel_decides_for_a_pool_user_acls_included() {
        use crate::supervise::fs_creds::tests::{set_acl, ACL_USER};
        let (base, root) = tree("acl-readers");
        if !can_test_readers(&base) {
            return;
        }
        let roots = [root.clone()];
        let tenant = Reader { uid: 4101, gid: 4101, gids: vec![4101] };
        let open_as = |p: &Path| open(&roots, Some(&tenant), bytes(p));
        let mode = |p: &Path, m: u32| std::fs::set_permissions(p, Permissions::from_mode(m)).unwrap();
        let bridge_creds = thread_creds();
        // The mode bits let others read it; an ACL entry for the tenant's uid does not.
        let denied = root.join("denied.txt");
        std::fs::write(&denied, "denied\n").unwrap();
        mode(&denied, 0o644);
        set_acl(&denied, &[(ACL_USER, 0, 4101)]);
        let m = std::fs::metadata(&denied).unwrap();
        assert_eq!(tenant.may_read(&denied, &m), Ok(()), "the mode bits alone would allow it");
        match open_as(&denied) {
            Err(e @ SendfileError::Unreadable { uid: 4101, .. }) => {
                assert_eq!(e.status(), 403);
                let text = e.to_string();
                assert!(text.contains("the mode bits allow it (0644, owner uid 0): an ACL"), "{text}");
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(check(&roots, Some(&tenant), bytes(&denied)), Err(SendfileError::Unreadable { .. })));
        assert_eq!(thread_creds(), bridge_creds, "the thread is the bridge's again after a refusal");
        // Found as the tenant (O_PATH reads nothing), its reopening through /proc/self/fd
        // refused: the kernel checks reading against the switched thread's credentials.
        let found = tenant.acting(|| locate(&roots, bytes(&denied))).unwrap().unwrap();
        let reopened = tenant.acting(|| reopen(found, bytes(&denied)).map(drop)).unwrap();
        assert!(matches!(reopened, Err(SendfileError::Io { err, .. }) if err.raw_os_error() == Some(libc::EACCES)));
        // The mode bits deny it (0600, root's); an ACL grants the tenant read.
        let granted = root.join("granted.txt");
        std::fs::write(&granted, "granted\n").unwrap();
        mode(&granted, 0o600);
        set_acl(&granted, &[(ACL_USER, 4, 4101)]);
        let m = std::fs::metadata(&granted).unwrap();
        assert!(tenant.may_read(&granted, &m).is_err(), "the mode bits alone would refuse it");
        assert_eq!(read(&open_as(&granted).unwrap().file), "granted\n");
        assert!(check(&roots, Some(&tenant), bytes(&granted)).is_ok());
        // A directory only an ACL lets it search.
        mode(&root.join("dir"), 0o700);
        set_acl(&root.join("dir"), &[(ACL_USER, 1, 4101)]);
        assert_eq!(read(&open_as(&root.join("dir/a.txt")).unwrap().file), "inside\n");
        // Another tenant, whom no ACL names, gets neither.
        let other = Reader { uid: 4102, gid: 4102, gids: vec![4102] };
        for p in [&granted, &root.join("dir/a.txt")] {
            let refused = open(&roots, Some(&other), bytes(p)).unwrap_err();
            assert!(matches!(refused, SendfileError::Unreadable { uid: 4102, .. }), "{refused:?}");
        }
        assert_eq!(thread_creds(), bridge_creds);
        assert_eq!(read(&open(&roots, None, bytes(&granted)).unwrap().file), "granted\n", "the bridge's own");
    }

    #[derive(Default)]
    struct Collect(Vec<u8>);
    impl ResponseSink for Collect {
        async fn send(&mut self, data: Bytes, _end: Option<End>) -> Result<(), crate::flow::FrontGone> {
            self.0.extend_from_slice(&data);
            Ok(())
        }
    }

    fn handoff(spec: FileSpec) -> FileHandoff {
        let kind = super::super::file_handoff::Kind::Sendfile2;
        let checked = Checked::default();
        FileHandoff {
            kind,
            spec,
            status: 200,
            headers: Vec::new(),
            content_type: None,
            pid: 1,
            to_front: None,
            checked,
        }
    }

    #[tokio::test]
    async fn the_multipart_boundary_cannot_be_foreseen() {
        let (_base, root) = tree("boundary");
        let a = root.join("dir/big.txt");
        std::fs::write(&a, "x".repeat(10_000)).unwrap();
        let mut h = handoff(FileSpec::Whole(bytes(&a).to_vec()));
        h.kind = super::super::file_handoff::Kind::Sendfile;
        let ranged = params(&[("HTTP_RANGE", "bytes=0-0,5000-5000")]);
        let mut boundaries = Vec::new();
        for _ in 0..2 {
            let mut sink = Collect::default();
            let served = serve(std::slice::from_ref(&root), None, 16, &ranged, &mut h, &mut sink).await.unwrap();
            assert_eq!(served.status, 206);
            let text = String::from_utf8_lossy(&sink.0).into_owned();
            let after = |key: &str| text.split(key).nth(1).and_then(|t| t.split("\r\n").next()).unwrap().to_owned();
            let (b, etag) = (after("boundary="), after("ETag: "));
            assert!(text.contains(&format!("\r\n--{b}--\r\n")), "{text}");
            // Not made of the file's ETag (its mtime and length), which the client sees.
            assert!(!b.contains(&etag.trim_matches('"').replace('-', "")), "{b} {etag}");
            boundaries.push(b);
        }
        assert_ne!(boundaries[0], boundaries[1]);
    }

    /// A hand-off for nginx: `head` goes out once the file is checked.
    fn for_nginx(path: &Path, head: &'static [u8]) -> FileHandoff {
        let mut h = handoff(FileSpec::Whole(bytes(path).to_vec()));
        h.to_front = Some(Bytes::from_static(head));
        h
    }

    #[tokio::test]
    async fn nginx_gets_only_a_file_the_bridge_would_send() {
        let (base, root) = tree("to-nginx");
        let roots = [root.clone()];
        const HEAD: &[u8] = b"Status: 200 OK\r\nX-Accel-Redirect: /protected/x\r\n\r\n";
        let mut sink = Collect::default();
        let mut h = for_nginx(&root.join("dir/a.txt"), HEAD);
        assert_eq!(serve(&roots, None, 16, &Params::default(), &mut h, &mut sink).await.unwrap(), Served::new(200, 0));
        assert_eq!(sink.0, HEAD);
        // A tenant's symlink out of the directory, to a directory, to nothing: refused as
        // the bridge refuses a file it would send, and nothing goes to nginx.
        std::os::unix::fs::symlink(base.join("secret.txt"), root.join("escape")).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", root.join("passwd")).unwrap();
        std::os::unix::fs::symlink(root.join("dir"), root.join("dirlink")).unwrap();
        std::os::unix::fs::symlink(root.join("none"), root.join("dangling")).unwrap();
        for (name, status) in [("escape", 403), ("passwd", 403), ("dirlink", 404), ("dangling", 404), ("dir", 404)] {
            let mut sink = Collect::default();
            let err = serve(&roots, None, 16, &Params::default(), &mut for_nginx(&root.join(name), HEAD), &mut sink)
                .await
                .unwrap_err();
            assert_eq!((err.status(), sink.0.len()), (status, 0), "{name}: {err}");
        }
        if !can_test_readers(&base) {
            return;
        }
        // The pool's user could not read it: nginx does not send it for that pool either.
        let private = root.join("private.txt");
        std::fs::write(&private, "private\n").unwrap();
        std::fs::set_permissions(&private, Permissions::from_mode(0o600)).unwrap();
        let tenant = Reader { uid: 4101, gid: 4101, gids: vec![4101] };
        let mut sink = Collect::default();
        let err = serve(&roots, Some(&tenant), 16, &Params::default(), &mut for_nginx(&private, HEAD), &mut sink)
            .await
            .unwrap_err();
        assert!(matches!(err, SendfileError::Unreadable { uid: 4101, .. }) && sink.0.is_empty(), "{err:?}");
        let mut sink = Collect::default();
        serve(&roots, None, 16, &Params::default(), &mut for_nginx(&private, HEAD), &mut sink).await.unwrap();
        assert_eq!(sink.0, HEAD);
    }

    /// A `translate` listener behind a web server that follows no hand-off header (the
    /// bridge sends what one names from `root`), and what it decides for `header: value`.
    fn decided(root: &Path, header: &'static str, value: &str, reader: Option<&Reader>) -> FileHandoff {
        use super::super::file_handoff::{Decision, Files, Front, Mode};
        use crate::config::{Dialect, Protocol};
        let caddy = Front { dialect: Dialect::Caddy, protocol: Protocol::FastCgi };
        let map = vec![("/srv/files".to_owned(), "/protected".to_owned())];
        let files = Files::new(Mode::Translate, caddy, vec![root.to_owned()], map, 16, false);
        let mut head = fastcgi_server::cgi::ResponseHead {
            status: Some(200),
            reason: None,
            location: None,
            content_type: None,
            content_length: None,
            headers: vec![(Bytes::from_static(header.as_bytes()), Bytes::copy_from_slice(value.as_bytes()))],
        };
        match files.decide(&mut head, 1, reader) {
            Decision::Serve(h) if h.to_front.is_none() => *h,
            other => panic!("not served by the bridge: {other:?}"),
        }
    }

    #[tokio::test]
    async fn the_file_checked_to_decide_is_the_one_sent() {
        let (base, root) = tree("decided");
        let roots = [root.clone()];
        let a = root.join("dir/a.txt");
        // Another file moved in at the same path after the decision (a deploy, a tenant).
        let replace = |text: &str, mode: u32| {
            let new = root.join("dir/new.txt");
            std::fs::write(&new, text).unwrap();
            std::fs::set_permissions(&new, Permissions::from_mode(mode)).unwrap();
            std::fs::rename(&new, &a).unwrap();
        };
        let body = |sink: &Collect| {
            let text = String::from_utf8_lossy(&sink.0).into_owned();
            text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default()
        };
        let shown = a.display().to_string();
        let mut h = decided(&root, "X-Sendfile", &shown, None);
        replace("replaced\n", 0o644);
        let mut sink = Collect::default();
        let served = serve(&roots, None, 16, &Params::default(), &mut h, &mut sink).await.unwrap();
        assert_eq!((served.status, body(&sink)), (200, "inside\n".to_owned()), "looked up once, when decided");
        // X-Sendfile2: its pieces are cut from the file decided on too.
        let mut h = decided(&root, "X-Sendfile2", &format!("{shown} 0-1, {shown} 4-"), None);
        replace("other\n", 0o644);
        let mut sink = Collect::default();
        serve(&roots, None, 16, &Params::default(), &mut h, &mut sink).await.unwrap();
        assert_eq!(body(&sink), "reaced\n", "the pieces of the file decided on, \"replaced\\n\"");
        // The file decided on, written to after the decision (the app still writing it):
        // its length is the one it has when it is sent.
        let mut h = decided(&root, "X-Sendfile", &shown, None);
        std::io::Write::write_all(&mut std::fs::OpenOptions::new().append(true).open(&a).unwrap(), b"more\n").unwrap();
        let mut sink = Collect::default();
        serve(&roots, None, 16, &Params::default(), &mut h, &mut sink).await.unwrap();
        assert_eq!(body(&sink), "other\nmore\n");
        replace("other\n", 0o644);
        if !can_test_readers(&base) {
            return;
        }
        // As a pool's user: the file it could read when it was checked is sent.
        let tenant = Reader { uid: 4101, gid: 4101, gids: vec![4101] };
        let mut h = decided(&root, "X-Sendfile", &shown, Some(&tenant));
        replace("private\n", 0o600);
        let mut sink = Collect::default();
        serve(&roots, Some(&tenant), 16, &Params::default(), &mut h, &mut sink).await.unwrap();
        assert_eq!(body(&sink), "other\n");
        // The one it may not read, refused when it was checked: 403 without a second look.
        let mut h = decided(&root, "X-Sendfile", &shown, Some(&tenant));
        replace("public\n", 0o644);
        let mut sink = Collect::default();
        let err = serve(&roots, Some(&tenant), 16, &Params::default(), &mut h, &mut sink).await.unwrap_err();
        assert!(matches!(err, SendfileError::Unreadable { uid: 4101, .. }) && sink.0.is_empty(), "{err:?}");
    }

    #[tokio::test]
    async fn x_sendfile2_pieces_are_checked_before_anything_is_sent() {
        let (base, root) = tree("pieces");
        let roots = [root.clone()];
        let a = root.join("dir/a.txt");
        let piece = |p: &Path, start, end| Piece { path: bytes(p).to_vec(), start, end };
        let mut h = handoff(FileSpec::Pieces(vec![piece(&a, 0, Some(1)), piece(&a, 4, None), piece(&a, 2, Some(3))]));
        let mut sink = Collect::default();
        let served = serve(&roots, None, 16, &Params::default(), &mut h, &mut sink).await.unwrap();
        assert_eq!((served.status, served.sent), (200, 7));
        assert!(sink.0.ends_with(b"\r\n\r\ninde\nsi"), "{:?}", String::from_utf8_lossy(&sink.0));
        // Files stay open until the response is sent: a cap on how many one header names.
        let many: Vec<Piece> = (0..=MAX_SENDFILE2_FILES)
            .map(|i| {
                let f = root.join(format!("dir/f{i}"));
                std::fs::write(&f, "x").unwrap();
                piece(&f, 0, None)
            })
            .collect();
        let mut sink = Collect::default();
        let mut h = handoff(FileSpec::Pieces(many[..MAX_SENDFILE2_FILES].to_vec()));
        assert!(serve(&roots, None, 16, &Params::default(), &mut h, &mut sink).await.is_ok());
        let mut sink = Collect::default();
        let mut h = handoff(FileSpec::Pieces(many));
        let err = serve(&roots, None, 16, &Params::default(), &mut h, &mut sink).await.unwrap_err();
        assert!(matches!(err, SendfileError::TooManyFiles) && sink.0.is_empty(), "{err:?}");
        if !can_test_readers(&base) {
            return;
        }
        let private = root.join("private.txt");
        std::fs::write(&private, "private\n").unwrap();
        std::fs::set_permissions(&private, Permissions::from_mode(0o600)).unwrap();
        let mut h = handoff(FileSpec::Pieces(vec![piece(&a, 0, None), piece(&private, 0, None)]));
        let mut sink = Collect::default();
        let tenant = Reader { uid: 4101, gid: 4101, gids: vec![4101] };
        let err = serve(&roots, Some(&tenant), 16, &Params::default(), &mut h, &mut sink).await.unwrap_err();
        assert!(matches!(err, SendfileError::Unreadable { uid: 4101, .. }), "{err:?}");
        assert!(sink.0.is_empty());
        let mut h = handoff(FileSpec::Whole(bytes(&private).to_vec()));
        let err = serve(&roots, Some(&tenant), 16, &Params::default(), &mut h, &mut sink).await.unwrap_err();
        assert_eq!((err.status(), sink.0.len()), (403, 0));
    }
}
