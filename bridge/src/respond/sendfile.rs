//! Sending a handed-off file (respond/handoff.rs decides when): only from the listener's
//! `file-roots`, streamed in 64 KiB reads through the response sink, whose `send` waits
//! while the web server is slow (back-pressure); a file is never read whole.
//!
//! For one whole file (X-Sendfile, a mapped X-Accel-Redirect) with the app's status 200,
//! conditional requests (If-None-Match, If-Modified-Since → 304), single and multiple
//! ranges (206, multipart/byteranges; 416 when none is satisfiable) and HEAD are handled.
//! X-Sendfile2 sends the app's ranges one after another with the app's status. The app's
//! headers that do not describe the body are kept.
use super::handoff::{FileHandoff, FileSpec, Piece};
use crate::backend::exchange::{End, ResponseSink};
use bytes::{BufMut, Bytes, BytesMut};
use fastcgi_server::Params;
use std::path::{Component, Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncReadExt, AsyncSeekExt};

/// Bytes read from the file per write to the web server.
const CHUNK: usize = 64 << 10;

/// Why a hand-off is refused.
#[derive(Debug, thiserror::Error)]
pub enum SendfileError {
    #[error("path {0:?} is not absolute or contains `..`")]
    BadPath(String),
    #[error("{0:?} is not under any of the listener's file-roots")]
    OutsideRoots(String),
    #[error("{0:?} does not exist")]
    NotFound(String),
    #[error("{0:?} is not a regular file")]
    NotRegular(String),
    #[error("range {start}-{end} of {path:?} lies beyond its end ({len} bytes): the app asked for bytes the file does not have")]
    BeyondEnd { path: String, start: u64, end: String, len: u64 },
    #[error("{path:?}: {err}")]
    Io { path: String, err: std::io::Error },
    /// Reading failed after the head went out: the response was cut off (nothing more to send).
    #[error("{path:?} failed after the headers were sent, response cut off: {err}")]
    CutOff { path: String, err: std::io::Error, status: u16, sent: u64 },
}

impl SendfileError {
    /// The status the client gets.
    pub fn status(&self) -> u16 {
        match self {
            SendfileError::BadPath(_) | SendfileError::OutsideRoots(_) => 403,
            SendfileError::NotFound(_) | SendfileError::NotRegular(_) => 404,
            SendfileError::BeyondEnd { .. } | SendfileError::Io { .. } => 500,
            SendfileError::CutOff { status, .. } => *status,
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

/// Resolve `path` under one of `roots` (symlinks already resolved, as in
/// [`Files`](super::handoff::Files)): absolute, no `..`, and after following symlinks still
/// inside a root; a regular file.
pub fn resolve(roots: &[PathBuf], path: &[u8]) -> Result<(PathBuf, std::fs::Metadata), SendfileError> {
    let shown = String::from_utf8_lossy(path).into_owned();
    let p = Path::new(std::str::from_utf8(path).map_err(|_| SendfileError::BadPath(shown.clone()))?);
    if !p.is_absolute() || p.components().any(|c| matches!(c, Component::ParentDir)) {
        return Err(SendfileError::BadPath(shown));
    }
    let real = match std::fs::canonicalize(p) {
        Ok(r) => r,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(SendfileError::NotFound(shown)),
        Err(err) => return Err(SendfileError::Io { path: shown, err }),
    };
    // A symlink inside a root that leads out of it is refused like a path outside.
    if !roots.iter().any(|r| real.starts_with(r)) {
        return Err(SendfileError::OutsideRoots(shown));
    }
    let meta = std::fs::metadata(&real).map_err(|err| SendfileError::Io { path: shown.clone(), err })?;
    if !meta.is_file() {
        return Err(SendfileError::NotRegular(shown));
    }
    Ok((real, meta))
}

/// Send the hand-off `h` to `sink`: `(status, body bytes)` for the access log. Nothing
/// has been sent when this fails.
pub async fn serve<K: ResponseSink>(
    roots: &[PathBuf],
    params: &Params,
    h: &FileHandoff,
    sink: &mut K,
) -> Result<(u16, u64), SendfileError> {
    if h.status < 200 || h.status == 204 || h.status == 304 {
        // A status without a body (an app that checked the client's validators itself):
        // the file is only checked, never sent.
        for p in h.spec.paths() {
            resolve(roots, p)?;
        }
        let _ = sink.send(head(h.status, h, None, &[]).freeze(), Some(End::Complete)).await;
        return Ok((h.status, 0));
    }
    match &h.spec {
        FileSpec::Whole(path) => serve_whole(roots, params, h, path, sink).await,
        FileSpec::Pieces(pieces) => serve_pieces(roots, params, h, pieces, sink).await,
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
    roots: &[PathBuf],
    params: &Params,
    h: &FileHandoff,
    path: &[u8],
    sink: &mut K,
) -> Result<(u16, u64), SendfileError> {
    let (real, meta) = resolve(roots, path)?;
    let len = meta.len();
    let mtime = meta.modified().ok().and_then(|t| t.duration_since(UNIX_EPOCH).ok()).map_or(0, |d| d.as_secs());
    let etag = format!("\"{mtime:x}-{len:x}\"");
    let last_modified = http_date(mtime);
    let head_only = params.get(b"REQUEST_METHOD") == Some(b"HEAD");
    let ctype: &[u8] = h.content_type.as_deref().unwrap_or(content_type(&real).as_bytes());
    // Ranges and validators describe the file as a resource: only for the app's 200.
    let plain = h.status == 200;

    let not_modified = plain
        && match params.get(b"HTTP_IF_NONE_MATCH") {
            Some(inm) => inm.split(|&b| b == b',').any(|t| {
                let t = t.trim_ascii();
                t == b"*" || t == etag.as_bytes() || t.strip_prefix(b"W/") == Some(etag.as_bytes())
            }),
            None => params.get(b"HTTP_IF_MODIFIED_SINCE").is_some_and(|ims| parse_http_date(ims).is_some_and(|t| t >= mtime)),
        };
    if not_modified {
        let out = head(304, h, None, &[("ETag", &etag), ("Last-Modified", &last_modified)]);
        let _ = sink.send(out.freeze(), Some(End::Complete)).await;
        return Ok((304, 0));
    }

    let ranges = match params.get(b"HTTP_RANGE") {
        Some(r) if len > 0 && plain => match parse_ranges(r, len) {
            Some(rs) if rs.is_empty() => {
                let out = head(416, h, None, &[("Content-Range", &format!("bytes */{len}")), ("Content-Length", "0")]);
                let _ = sink.send(out.freeze(), Some(End::Complete)).await;
                return Ok((416, 0));
            }
            other => other,
        },
        _ => None,
    };
    let mut file = tokio::fs::File::open(&real).await.map_err(|err| SendfileError::Io { path: real.display().to_string(), err })?;
    let validators: &[(&str, &str)] = if plain { &[("ETag", &etag), ("Last-Modified", &last_modified)] } else { &[] };
    let with = |mut own: Vec<(&'static str, String)>| {
        own.extend(validators.iter().map(|&(n, v)| (n, v.to_owned())));
        own
    };
    let send_head = |status: u16, ctype: &[u8], own: Vec<(&'static str, String)>| {
        let own: Vec<(&str, &str)> = own.iter().map(|(n, v)| (*n, v.as_str())).collect();
        head(status, h, Some(ctype), &own)
    };
    match ranges.as_deref() {
        None => {
            let mut own = vec![("Content-Length", len.to_string())];
            if plain {
                own.push(("Accept-Ranges", "bytes".to_owned()));
            }
            let out = send_head(h.status, ctype, with(own));
            if head_only {
                let _ = sink.send(out.freeze(), Some(End::Complete)).await;
                return Ok((h.status, 0));
            }
            if sink.send(out.freeze(), None).await.is_err() {
                return Ok((499, 0));
            }
            let sent = send_range(&mut file, &real, 0, len, sink, h.status, 0).await?;
            let _ = sink.send(Bytes::new(), Some(End::Complete)).await;
            Ok((h.status, sent))
        }
        Some([(start, end)]) => {
            let own = vec![("Content-Range", format!("bytes {start}-{end}/{len}")), ("Content-Length", (end - start + 1).to_string())];
            let out = send_head(206, ctype, with(own));
            if head_only {
                let _ = sink.send(out.freeze(), Some(End::Complete)).await;
                return Ok((206, 0));
            }
            if sink.send(out.freeze(), None).await.is_err() {
                return Ok((499, 0));
            }
            let sent = send_range(&mut file, &real, *start, end - start + 1, sink, 206, 0).await?;
            let _ = sink.send(Bytes::new(), Some(End::Complete)).await;
            Ok((206, sent))
        }
        Some(many) => {
            let boundary = format!("fcgibridge-{mtime:x}{len:x}");
            let part_ctype = String::from_utf8_lossy(ctype);
            let part_head = |s: u64, e: u64| format!("\r\n--{boundary}\r\nContent-Type: {part_ctype}\r\nContent-Range: bytes {s}-{e}/{len}\r\n\r\n");
            let closing = format!("\r\n--{boundary}--\r\n");
            let total: u64 = many.iter().map(|&(s, e)| part_head(s, e).len() as u64 + e - s + 1).sum::<u64>() + closing.len() as u64;
            let multipart = format!("multipart/byteranges; boundary={boundary}");
            let out = send_head(206, multipart.as_bytes(), with(vec![("Content-Length", total.to_string())]));
            if head_only {
                let _ = sink.send(out.freeze(), Some(End::Complete)).await;
                return Ok((206, 0));
            }
            if sink.send(out.freeze(), None).await.is_err() {
                return Ok((499, 0));
            }
            let mut sent = 0;
            for &(s, e) in many {
                let ph = part_head(s, e);
                sent += ph.len() as u64;
                if sink.send(Bytes::from(ph), None).await.is_err() {
                    return Ok((499, sent));
                }
                sent += send_range(&mut file, &real, s, e - s + 1, sink, 206, sent).await?;
            }
            sent += closing.len() as u64;
            let _ = sink.send(Bytes::from(closing), Some(End::Complete)).await;
            Ok((206, sent))
        }
    }
}

/// X-Sendfile2: every piece is checked (roots, existence, range within the file) before
/// the head goes out, so a refusal is still a clean error response.
async fn serve_pieces<K: ResponseSink>(
    roots: &[PathBuf],
    params: &Params,
    h: &FileHandoff,
    pieces: &[Piece],
    sink: &mut K,
) -> Result<(u16, u64), SendfileError> {
    let mut plan = Vec::with_capacity(pieces.len());
    let mut total = 0u64;
    for p in pieces {
        let (real, meta) = resolve(roots, &p.path)?;
        let len = meta.len();
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
        plan.push((real, p.start, n));
    }
    let ctype: Vec<u8> = match (&h.content_type, plan.first()) {
        (Some(t), _) => t.to_vec(),
        (None, Some((real, _, _))) => content_type(real).as_bytes().to_vec(),
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
    for (real, start, n) in plan {
        if n == 0 {
            continue;
        }
        let mut file = match tokio::fs::File::open(&real).await {
            Ok(f) => f,
            Err(err) => {
                let _ = sink.send(Bytes::new(), Some(End::CutOff)).await;
                return Err(SendfileError::CutOff { path: real.display().to_string(), err, status: h.status, sent });
            }
        };
        sent += send_range(&mut file, &real, start, n, sink, h.status, sent).await?;
    }
    let _ = sink.send(Bytes::new(), Some(End::Complete)).await;
    Ok((h.status, sent))
}

/// Stream `n` bytes from `start`, one 64 KiB read per write.
async fn copy<K: ResponseSink>(file: &mut tokio::fs::File, start: u64, n: u64, sink: &mut K) -> Result<u64, std::io::Error> {
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

/// `bytes=a-b, c-, -n` → satisfiable inclusive ranges; `Some(empty)` when none is
/// satisfiable (416); `None` when the header is not a byte-range set (ignored: 200).
fn parse_ranges(value: &[u8], len: u64) -> Option<Vec<(u64, u64)>> {
    let v = std::str::from_utf8(value).ok()?.trim();
    let set = v.strip_prefix("bytes=")?;
    let mut out = Vec::new();
    for spec in set.split(',') {
        let (a, b) = spec.trim().split_once('-')?;
        let (a, b) = (a.trim(), b.trim());
        let range = if a.is_empty() {
            let n: u64 = b.parse().ok()?;
            if n == 0 {
                continue;
            }
            (len.saturating_sub(n), len - 1)
        } else {
            let s: u64 = a.parse().ok()?;
            let e: u64 = if b.is_empty() { len - 1 } else { b.parse::<u64>().ok()?.min(len - 1) };
            if s > e || s >= len {
                if !b.is_empty() && b.parse::<u64>().ok()? < s {
                    return None; // syntactically invalid: ignore the header
                }
                continue;
            }
            (s, e)
        };
        out.push(range);
    }
    Some(out)
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

const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
const MONTHS: [&str; 12] = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];

/// IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`) of seconds since the epoch.
fn http_date(secs: u64) -> String {
    let days = secs / 86400;
    let rem = secs % 86400;
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{}, {:02} {} {} {:02}:{:02}:{:02} GMT",
        DAYS[(days % 7) as usize],
        d,
        MONTHS[(m - 1) as usize],
        y,
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Seconds since the epoch of an IMF-fixdate; other date forms are not understood.
fn parse_http_date(v: &[u8]) -> Option<u64> {
    let s = std::str::from_utf8(v).ok()?.trim();
    let mut it = s.split_whitespace().skip(1);
    let d: u64 = it.next()?.parse().ok()?;
    let month = it.next()?;
    let m = MONTHS.iter().position(|&x| x == month)? as u64 + 1;
    let y: i64 = it.next()?.parse().ok()?;
    let mut hms = it.next()?.split(':').map(|x| x.parse::<u64>().ok());
    let (h, mi, se) = (hms.next()??, hms.next()??, hms.next()??);
    let days = days_from_civil(y, m, d);
    Some(u64::try_from(days).ok()? * 86400 + h * 3600 + mi * 60 + se)
}

// Howard Hinnant's civil-calendar algorithms (public domain descriptions).
fn civil_from_days(z: i64) -> (i64, u64, u64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097) as u64;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let y = yoe as i64 + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

fn days_from_civil(y: i64, m: u64, d: u64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400) as u64;
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe as i64 - 719_468
}

/// Now, for tests that need a date.
#[allow(dead_code)]
fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_round_trip() {
        assert_eq!(http_date(784_111_777), "Sun, 06 Nov 1994 08:49:37 GMT");
        assert_eq!(parse_http_date(b"Sun, 06 Nov 1994 08:49:37 GMT"), Some(784_111_777));
        let now = now_secs();
        assert_eq!(parse_http_date(http_date(now).as_bytes()), Some(now));
    }

    #[test]
    fn ranges() {
        assert_eq!(parse_ranges(b"bytes=0-9", 100), Some(vec![(0, 9)]));
        assert_eq!(parse_ranges(b"bytes=90-", 100), Some(vec![(90, 99)]));
        assert_eq!(parse_ranges(b"bytes=-5", 100), Some(vec![(95, 99)]));
        assert_eq!(parse_ranges(b"bytes=0-1, 5-200", 100), Some(vec![(0, 1), (5, 99)]));
        assert_eq!(parse_ranges(b"bytes=200-300", 100), Some(vec![]));
        assert_eq!(parse_ranges(b"items=0-1", 100), None);
        assert_eq!(parse_ranges(b"bytes=5-1", 100), None);
    }
}

