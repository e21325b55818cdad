//! `fcgibridge_worker._native`: the native half of fcgibridge's Python WSGI worker.
//!
//! `serve()` is called by each worker thread (started by the package's `main.py`
//! with the `threading` module). It accepts FastCGI connections from the bridge
//! on the listening socket, reads each request with the GIL released, builds the
//! PEP 3333 environ, calls the application and streams its response back. See
//! docs/worker-contract.md and docs/worker-module.md.
use std::collections::HashMap;
use std::fs::File;
use std::mem::ManuallyDrop;
use std::os::fd::FromRawFd;
use std::sync::Arc;

use fastcgi_server::Params;
use pyo3::exceptions::{PyRuntimeError, PyTypeError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PyString, PyTuple, PyType};
use pyo3::{ffi, intern};

mod asgi_codec;
mod balance;
mod batch;
mod claim;
mod conn;
mod crash;
mod direct;
mod flusher;
mod objects;
mod park;
mod scoreboard;
mod sys;
mod turn;

use conn::{Shared, OUT_HIGH};
use objects::{Errors, FileWrapper, Input, StartResponse};

/// Per-thread state of `serve()`.
struct Worker {
    app: Py<PyAny>,
    threads: usize,
    multithread: bool,
    multiprocess: bool,
    version: Py<PyTuple>,
    file_wrapper: Py<PyType>,
    /// Environ keys built from param names, reused across requests.
    keys: HashMap<Box<[u8]>, Py<PyString>, BuildFnv>,
    /// Serving a `direct` listener (the web server's connections, no bridge between).
    direct: bool,
    /// This thread's slot in a direct worker's scoreboard.
    slot: Option<&'static scoreboard::Slot>,
    /// A direct worker's threads take turns ([`turn`]).
    turns: Option<&'static turn::Turns>,
}

/// FNV-1a: param names are short and trusted (they come from the bridge), so a
/// cheap hash beats SipHash for the environ key cache.
#[derive(Default, Clone, Copy)]
struct BuildFnv;

struct Fnv(u64);

impl std::hash::BuildHasher for BuildFnv {
    type Hasher = Fnv;
    fn build_hasher(&self) -> Fnv {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl std::hash::Hasher for Fnv {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

const MAX_CACHED_KEYS: usize = 512;

/// A response header named `Status`: in the CGI header block the worker writes, `Status`
/// is the response's status line, so an app's own header of that name cannot pass through
/// (the bridge would refuse a second Status header with a 502). Both the WSGI and the ASGI
/// worker drop it and say so in the request's log.
fn is_cgi_status(name: &[u8]) -> bool {
    name.eq_ignore_ascii_case(b"status")
}

/// The warning line (for the request's STDERR) about a dropped `Status` header; `hint` says
/// where the app sets the status.
fn dropped_status_warning(name: &[u8], value: &[u8], hint: &str) -> String {
    format!(
        "fcgibridge worker: response header `{}: {}` dropped: a header named Status cannot pass through \
         CGI/FastCGI, where Status is the response's status line ({hint})\n",
        String::from_utf8_lossy(name),
        String::from_utf8_lossy(value)
    )
}

fn latin1<'py>(py: Python<'py>, b: &[u8]) -> PyResult<Bound<'py, PyAny>> {
    // SAFETY: valid pointer/length; PyUnicode_DecodeLatin1 returns a new reference or NULL.
    unsafe {
        Bound::from_owned_ptr_or_err(
            py,
            ffi::PyUnicode_DecodeLatin1(b.as_ptr().cast(), b.len() as ffi::Py_ssize_t, std::ptr::null()),
        )
    }
}

thread_local! {
    /// `FCGIBRIDGE_FILE_ROOTS` of the request this thread serves (one at a time): where a
    /// wsgi.file_wrapper file may be handed back to the bridge as X-Sendfile.
    static FILE_ROOTS: std::cell::RefCell<Option<Box<[u8]>>> = const { std::cell::RefCell::new(None) };
}

/// What the worker needs to know about a request besides its environ.
struct ReqInfo {
    is_head: bool,
}

impl Worker {
    fn key<'py>(&mut self, py: Python<'py>, name: &[u8]) -> PyResult<Bound<'py, PyAny>> {
        if let Some(k) = self.keys.get(name) {
            return Ok(k.bind(py).clone().into_any());
        }
        let k = latin1(py, name)?;
        if self.keys.len() < MAX_CACHED_KEYS {
            if let Ok(s) = k.cast::<PyString>() {
                self.keys.insert(name.into(), s.clone().unbind());
            }
        }
        Ok(k)
    }

    fn environ<'py>(
        &mut self,
        py: Python<'py>,
        params: &Params,
        shared: &Arc<Shared>,
        serial: u64,
        request_id: Option<Bound<'py, PyString>>,
    ) -> PyResult<(Bound<'py, PyDict>, ReqInfo)> {
        let env = PyDict::new(py);
        if let Some(id) = request_id {
            env.set_item(intern!(py, "fcgibridge.request_id"), id)?;
        }
        let mut https = false;
        let mut scheme_https = false;
        let mut is_head = false;
        let mut seen = [false; 3]; // SCRIPT_NAME, PATH_INFO, QUERY_STRING
        let mut have_type = false;
        let mut have_length = false;
        let mut http_type: Option<&[u8]> = None;
        let mut http_length: Option<&[u8]> = None;
        FILE_ROOTS.set(None);
        for (name, value) in params.iter() {
            match name {
                // The bridge's instruction, not part of the request: kept out of the environ.
                b"FCGIBRIDGE_FILE_ROOTS" => {
                    FILE_ROOTS.set(Some(value.into()));
                    continue;
                }
                // nginx also passes these request headers as HTTP_* params; CGI and
                // PEP 3333 have them only as CONTENT_TYPE / CONTENT_LENGTH.
                b"HTTP_CONTENT_TYPE" => {
                    http_type = Some(value);
                    continue;
                }
                b"HTTP_CONTENT_LENGTH" => {
                    http_length = Some(value);
                    continue;
                }
                b"CONTENT_TYPE" => have_type = true,
                // "" (nginx, unbuffered chunked upload) and "-1" (Caddy 2.6, chunked) mean
                // "unknown": the app reads wsgi.input to its end.
                b"CONTENT_LENGTH" if value.is_empty() || value == b"-1" => continue,
                b"CONTENT_LENGTH" => have_length = true,
                b"HTTPS" => https = value.eq_ignore_ascii_case(b"on") || value == b"1",
                b"REQUEST_SCHEME" => scheme_https = value.eq_ignore_ascii_case(b"https"),
                b"REQUEST_METHOD" => is_head = value == b"HEAD",
                b"SCRIPT_NAME" => seen[0] = true,
                b"PATH_INFO" => seen[1] = true,
                b"QUERY_STRING" => seen[2] = true,
                b"FCGIBRIDGE_REQUEST_ID" => {
                    env.set_item(intern!(py, "fcgibridge.request_id"), latin1(py, value)?)?;
                }
                _ => {}
            }
            let k = self.key(py, name)?;
            env.set_item(k, latin1(py, value)?)?;
        }
        if let Some(v) = http_type.filter(|_| !have_type) {
            env.set_item(intern!(py, "CONTENT_TYPE"), latin1(py, v)?)?;
        }
        if let Some(v) = http_length.filter(|v| !have_length && !v.is_empty()) {
            env.set_item(intern!(py, "CONTENT_LENGTH"), latin1(py, v)?)?;
        }
        let empty = intern!(py, "");
        if !seen[0] {
            env.set_item(intern!(py, "SCRIPT_NAME"), empty)?;
        }
        if !seen[1] {
            env.set_item(intern!(py, "PATH_INFO"), empty)?;
        }
        if !seen[2] {
            env.set_item(intern!(py, "QUERY_STRING"), empty)?;
        }
        let scheme = if https || scheme_https { intern!(py, "https") } else { intern!(py, "http") };
        env.set_item(intern!(py, "wsgi.version"), self.version.bind(py))?;
        env.set_item(intern!(py, "wsgi.url_scheme"), scheme)?;
        env.set_item(intern!(py, "wsgi.input"), Bound::new(py, Input { shared: shared.clone(), serial })?)?;
        env.set_item(intern!(py, "wsgi.errors"), Bound::new(py, Errors { shared: shared.clone(), serial })?)?;
        env.set_item(intern!(py, "wsgi.multithread"), self.multithread)?;
        env.set_item(intern!(py, "wsgi.multiprocess"), self.multiprocess)?;
        env.set_item(intern!(py, "wsgi.run_once"), false)?;
        env.set_item(intern!(py, "wsgi.input_terminated"), true)?;
        env.set_item(intern!(py, "wsgi.file_wrapper"), self.file_wrapper.bind(py))?;
        Ok((env, ReqInfo { is_head }))
    }
}

/// Things that happened while running the app for one request. SystemExit and
/// KeyboardInterrupt raised by the app are that request's errors like any other (a 500, the
/// worker and its other requests go on), as in the ASGI worker: a real SIGINT reaches the
/// main thread only.
#[derive(Default)]
struct Outcome {
    errored: bool,
}

fn format_traceback(py: Python<'_>, err: &PyErr) -> String {
    let formatted = (|| -> PyResult<String> {
        let tb: Bound<'_, PyAny> = match err.traceback(py) {
            Some(tb) => tb.into_any(),
            None => py.None().into_bound(py),
        };
        let lines = py.import(intern!(py, "traceback"))?.getattr(intern!(py, "format_exception"))?.call1((
            err.get_type(py),
            err.value(py),
            tb,
        ))?;
        let text = intern!(py, "").call_method1(intern!(py, "join"), (lines,))?;
        text.extract::<String>()
    })();
    formatted.unwrap_or_else(|_| format!("{err}\n"))
}

/// How the worker's stderr line about an app's failure that has no traceback begins: the
/// bridge logs such a line as an error, as it does a traceback (logging/app_lines.rs).
pub(crate) const APP_FAILED: &str = "fcgibridge worker: the application failed: ";

/// The line for a response with more body than its Content-Length, `extra` bytes dropped.
pub(crate) fn body_past_length(length: u64, extra: u64) -> String {
    format!(
        "{APP_FAILED}the app wrote more body than its Content-Length ({length}); {extra} bytes past it were dropped\n"
    )
}

/// The line for a response that ended after `sent` bytes of its Content-Length.
pub(crate) fn body_short_of_length(sent: u64, length: u64) -> String {
    format!("{APP_FAILED}the response is shorter than its Content-Length ({sent} of {length} bytes)\n")
}

/// Report an exception raised by the app: traceback as STDERR of the request;
/// a 500 page if nothing was sent yet, otherwise the response is cut off.
fn report_error(py: Python<'_>, shared: &Shared, serial: u64, err: PyErr, outcome: &mut Outcome) {
    outcome.errored = true;
    let aborted = !matches!(shared.lock_py(py).cur(serial), Some(r) if !r.aborted);
    if aborted && objects::is_client_disconnected(py, &err) {
        let mut c = shared.lock_py(py);
        if let Some(r) = c.cur(serial) {
            r.cut_off = true;
        }
        return;
    }
    let mut text = format_traceback(py, &err);
    if err.traceback(py).is_none() {
        // Raised by the worker's own checks of what the app did (a str yielded, no
        // start_response): no frame to show, but an app failure all the same, logged as an
        // error by the bridge as a traceback is.
        text.insert_str(0, APP_FAILED);
    }
    let mut c = shared.lock_py(py);
    c.push_stderr(serial, text.as_bytes());
    let Some(r) = c.cur(serial) else { return };
    if !r.headers_sent && !r.aborted {
        c.push_error_page(serial);
    } else {
        r.cut_off = true;
    }
}

fn bytes_of<'a, 'py>(item: &'a Bound<'py, PyAny>) -> PyResult<&'a Bound<'py, PyBytes>> {
    item.cast::<PyBytes>().map_err(|_| {
        PyTypeError::new_err(format!(
            "the application yielded {} instead of bytes",
            item.get_type().name().map(|n| n.to_string()).unwrap_or_default()
        ))
    })
}

/// Before the first body bytes: the app must have called start_response.
/// `Ok(false)` when the request was aborted (stop producing).
fn check_started(py: Python<'_>, shared: &Shared, serial: u64) -> PyResult<bool> {
    let mut c = shared.lock_py(py);
    match c.cur(serial) {
        Some(r) if r.aborted => Ok(false),
        Some(r) if !r.started => {
            Err(PyRuntimeError::new_err("the application returned body data without calling start_response()"))
        }
        Some(_) => Ok(true),
        None => Ok(false),
    }
}

fn is_aborted(py: Python<'_>, shared: &Shared, serial: u64) -> bool {
    !matches!(shared.lock_py(py).cur(serial), Some(r) if !r.aborted)
}

/// Send a list or tuple result: everything is already produced, so it is
/// buffered and sent together (with a Content-Length when the app set none).
fn send_sequence(py: Python<'_>, shared: &Shared, serial: u64, items: &[Bound<'_, PyAny>]) -> PyResult<()> {
    let mut total = 0u64;
    for item in items {
        total += bytes_of(item)?.as_bytes().len() as u64;
    }
    if total > 0 && !check_started(py, shared, serial)? {
        return Ok(());
    }
    {
        let mut c = shared.lock_py(py);
        if let Some(r) = c.cur(serial) {
            r.auto_content_length = Some(total);
        }
    }
    for item in items {
        let data = bytes_of(item)?.as_bytes();
        if data.len() > OUT_HIGH / 4 {
            let more = py.detach(|| shared.lock().push_body(serial, data, true));
            if !more {
                break;
            }
        } else {
            let mut c = shared.lock_py(py);
            if !c.push_body(serial, data, false) {
                break;
            }
            if c.out.len() >= OUT_HIGH {
                drop(c);
                py.detach(|| shared.lock().flush_point());
            }
        }
    }
    Ok(())
}

/// The file_wrapper fast path; `Ok(false)` when the file is not a regular file with a descriptor.
fn send_file(py: Python<'_>, shared: &Shared, serial: u64, fw: &FileWrapper) -> PyResult<bool> {
    let f = fw.filelike.bind(py);
    if !f.hasattr(intern!(py, "fileno"))? {
        return Ok(false);
    }
    let Ok(fd) = f.call_method0(intern!(py, "fileno")).and_then(|x| x.extract::<i32>()) else {
        return Ok(false);
    };
    if fd < 0 {
        return Ok(false);
    }
    // SAFETY: the descriptor stays owned by the Python file object (never closed here).
    let file = ManuallyDrop::new(unsafe { File::from_raw_fd(fd) });
    let size = match file.metadata() {
        Ok(m) if m.is_file() => m.len(),
        _ => return Ok(false),
    };
    // Respect what the app already consumed through the file object.
    let Ok(offset) = f.call_method0(intern!(py, "tell")).and_then(|x| x.extract::<u64>()) else {
        return Ok(false);
    };
    if !check_started(py, shared, serial)? {
        return Ok(true);
    }
    if offset == 0 && hand_off_file(py, shared, serial, &file, fd, size) {
        return Ok(true);
    }
    let file_ref: &File = &file;
    let expect = size.saturating_sub(offset);
    py.detach(|| shared.lock().push_file(serial, file_ref, offset, expect))?;
    Ok(true)
}

/// The wsgi.file_wrapper hand-off (docs/file-handoff.md): when the bridge named roots for
/// this request and the whole file (a 200 whose Content-Length, if any, is the file's size)
/// lies under one of them after following symlinks, answer `X-Sendfile: <real path>` with no
/// body; the bridge serves it or passes it to the web server. `false`: stream it as usual.
fn hand_off_file(py: Python<'_>, shared: &Shared, serial: u64, file: &File, fd: i32, size: u64) -> bool {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::MetadataExt;
    let Some(roots) = FILE_ROOTS.with_borrow(|r| r.clone()) else {
        return false;
    };
    // The open descriptor's path, checked to still be the same file (not renamed or replaced).
    let Ok(real) = std::fs::read_link(format!("/proc/self/fd/{fd}")) else {
        return false;
    };
    let same = match (std::fs::metadata(&real), file.metadata()) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    };
    let path = real.as_os_str().as_bytes();
    // Only paths every hand-off reader takes literally (lighttpd and Apache URL-decode
    // X-Sendfile, so no `%`); anything else is streamed.
    let plain = path.iter().all(|&b| (0x20..0x7f).contains(&b) && b != b'%');
    let under = roots.split(|&b| b == b':').any(|r| !r.is_empty() && real.starts_with(std::ffi::OsStr::from_bytes(r)));
    if !same || !plain || !under {
        return false;
    }
    let mut c = shared.lock_py(py);
    let Some(r) = c.cur(serial) else {
        return false;
    };
    if r.headers_sent || r.aborted || r.status_code != 200 || r.content_length.is_some_and(|n| n != size) {
        return false;
    }
    let mut head = Vec::with_capacity(r.head.len() + path.len() + 16);
    for line in r.head.split_inclusive(|&b| b == b'\n') {
        if line.len() >= 15 && line[..15].eq_ignore_ascii_case(b"content-length:") {
            continue; // the body is the bridge's (or the web server's) to measure
        }
        head.extend_from_slice(line);
    }
    head.extend_from_slice(b"X-Sendfile: ");
    head.extend_from_slice(path);
    head.extend_from_slice(b"\r\n");
    r.head = head;
    r.content_length = Some(0);
    true
}

/// Send any other iterable, transmitting each chunk before asking for the next (PEP 3333).
fn send_iterable(py: Python<'_>, shared: &Shared, serial: u64, result: &Bound<'_, PyAny>) -> PyResult<()> {
    for item in result.try_iter()? {
        let item = item?;
        let data = bytes_of(&item)?.as_bytes();
        if data.is_empty() {
            if is_aborted(py, shared, serial) {
                break;
            }
            continue;
        }
        if !check_started(py, shared, serial)? {
            break;
        }
        if !shared.send_chunk(py, serial, data) {
            break;
        }
    }
    Ok(())
}

fn send_result(py: Python<'_>, shared: &Shared, serial: u64, result: &Bound<'_, PyAny>) -> PyResult<()> {
    if let Ok(list) = result.cast_exact::<PyList>() {
        let items: Vec<Bound<'_, PyAny>> = list.iter().collect();
        return send_sequence(py, shared, serial, &items);
    }
    if let Ok(tuple) = result.cast_exact::<PyTuple>() {
        let items: Vec<Bound<'_, PyAny>> = tuple.iter().collect();
        return send_sequence(py, shared, serial, &items);
    }
    if let Ok(fw) = result.cast_exact::<FileWrapper>() {
        if send_file(py, shared, serial, fw.get())? {
            return Ok(());
        }
    }
    send_iterable(py, shared, serial, result)
}

/// Call the app with the request's environ and send what it returns (its errors reported
/// into `outcome`).
fn run_app(
    py: Python<'_>,
    w: &mut Worker,
    shared: &Arc<Shared>,
    (serial, params, request_id): (u64, &Params, Option<Bound<'_, PyString>>),
    outcome: &mut Outcome,
) -> PyResult<()> {
    match w.environ(py, params, shared, serial, request_id) {
        Err(e) => report_error(py, shared, serial, e, outcome),
        Ok((env, info)) => {
            if info.is_head {
                if let Some(r) = shared.lock_py(py).cur(serial) {
                    r.is_head = true;
                }
            }
            let start_response = Bound::new(py, StartResponse { shared: shared.clone(), serial })?;
            match w.app.bind(py).call1((env, start_response)) {
                Err(e) => report_error(py, shared, serial, e, outcome),
                Ok(result) => {
                    if let Err(e) = send_result(py, shared, serial, &result) {
                        report_error(py, shared, serial, e, outcome);
                    }
                    // close() is called whatever happened (PEP 3333).
                    let plain = result.is_exact_instance_of::<PyList>() || result.is_exact_instance_of::<PyTuple>();
                    if !plain {
                        if let Ok(close) = result.getattr(intern!(py, "close")) {
                            if let Err(e) = close.call0() {
                                report_error(py, shared, serial, e, outcome);
                            }
                        }
                    }
                }
            }
        }
    }
    Ok(())
}

/// Run the app for request `serial`, and in a direct worker again for each local redirect
/// it answers (the bridge follows them for its own workers: docs/internal-redirects.md);
/// an app that returned without calling start_response is reported. Returns the
/// request's serial at the end (each redirect gives it a new one).
fn run_following_redirects(
    py: Python<'_>,
    w: &mut Worker,
    shared: &Arc<Shared>,
    (mut serial, mut params, request_id): (u64, Params, Option<Bound<'_, PyString>>),
    outcome: &mut Outcome,
) -> PyResult<u64> {
    let mut depth = 0;
    loop {
        run_app(py, w, shared, (serial, &params, request_id.clone()), outcome)?;
        if outcome.errored {
            return Ok(serial);
        }
        let mut c = shared.lock_py(py);
        let Some(r) = c.cur(serial) else { return Ok(serial) };
        // The common response has no local redirect: one check of its head.
        let Some(target) = r.redirect.take().filter(|_| !r.aborted) else {
            if !r.started && !r.aborted {
                drop(c);
                let e = PyRuntimeError::new_err("the application returned without calling start_response()");
                report_error(py, shared, serial, e, outcome);
            }
            return Ok(serial);
        };
        let Some(direct) = direct::config() else { return Ok(serial) };
        let id = request_id.as_ref().map(|id| id.to_string()).unwrap_or_default();
        let shown = String::from_utf8_lossy(&target).into_owned();
        let from = String::from_utf8_lossy(params.get(b"REQUEST_URI").unwrap_or_default()).into_owned();
        if let Err(e) = direct.redirect(&mut params, &target, &mut depth) {
            let msg = format!("internal redirect refused, answering 500: {e} (from {from} to {shown})");
            direct::log_record("ERROR", &msg, &id);
            c.push_error_page(serial);
            outcome.errored = true;
            return Ok(serial);
        }
        direct::log_record("INFO", &format!("internal redirect from {from} to {shown}"), &id);
        let Some(next) = c.restart_for_redirect(serial) else { return Ok(serial) };
        serial = next;
    }
}

/// Run the app for the request whose params are ready; returns whether another
/// request is ready on the connection (waited for with the GIL released).
fn handle_request(py: Python<'_>, w: &mut Worker, shared: &Arc<Shared>) -> PyResult<bool> {
    let (params, mut serial, request_id, refused) = {
        let mut c = shared.lock_py(py);
        match c.req.as_mut() {
            Some(r) => {
                // A direct worker's own request id; its scoreboard slot shows the request
                // from here until its END_REQUEST.
                let request_id = r.tag.as_ref().map(|tag| {
                    if let Some(slot) = w.slot {
                        slot.begin(tag.board_line(), sys::monotonic_ns());
                    }
                    PyString::new(py, tag.request_id())
                });
                r.slot = w.slot;
                let refused = if w.direct { r.refusal() } else { None };
                (r.params.take().unwrap_or_default(), r.serial, request_id, refused)
            }
            None => return Ok(false),
        }
    };
    match refused {
        // What the bridge answers 400 without a worker, a direct worker answers so too.
        Some(why) => {
            let mut c = shared.lock_py(py);
            c.push_stderr(
                serial,
                format!("fcgibridge worker: {why}: answering 400 without running the app\n").as_bytes(),
            );
            c.push_status_page(serial, 400, "Bad Request");
        }
        None => {
            let mut outcome = Outcome::default();
            serial = run_following_redirects(py, w, shared, (serial, params, request_id), &mut outcome)?;
        }
    }
    let (direct, slot, turns) = (w.direct, w.slot, w.turns);
    let next = py.detach(|| {
        let mut c = shared.lock();
        let keep = c.finish(serial);
        let took = slot.map(|slot| slot.end());
        if let (Some(turns), Some(took)) = (turns, took) {
            turns.request_took(took);
        }
        let quick = took.is_some_and(batch::may_hold);
        // A direct worker's response may wait for the thread's next one ([`batch`]).
        let held = quick && direct && keep && c.hold_for_batch();
        if !held {
            c.flush();
        }
        // A retiring direct worker closes a kept connection after its current request; a
        // direct worker parks it rather than wait on it, unless its next request is here.
        let next = keep
            && !(direct && scoreboard::draining())
            && if direct { c.pipelined_request() } else { c.wait_request() };
        drop(c);
        if held {
            batch::hold(shared);
        } else {
            batch::send();
        }
        next
    });
    Ok(next)
}

/// serve(listen_fd, app, threads, processes, client_disconnected)
///
/// Accept connections on `listen_fd` and serve WSGI requests on them, forever.
/// Returns only by raising (a broken listening socket), or,
/// in a direct worker, once its scoreboard says drain and the thread's connection is done.
#[pyfunction]
fn serve(
    py: Python<'_>,
    listen_fd: i32,
    app: Py<PyAny>,
    threads: usize,
    processes: usize,
    client_disconnected: Bound<'_, PyType>,
) -> PyResult<()> {
    let _ = objects::CLIENT_DISCONNECTED.set(py, client_disconnected.unbind());
    let mut w = Worker {
        app,
        threads: threads.max(1),
        multithread: threads > 1,
        multiprocess: processes > 1,
        version: PyTuple::new(py, [1, 0])?.unbind(),
        file_wrapper: py.get_type::<FileWrapper>().unbind(),
        keys: HashMap::with_hasher(BuildFnv),
        direct: direct::config().is_some(),
        slot: None,
        turns: None,
    };
    // Once per process: every serving thread runs this function on the same listener.
    static NO_DELAY: std::sync::Once = std::sync::Once::new();
    NO_DELAY.call_once(|| sys::no_delay_if_tcp(listen_fd));
    if w.direct {
        return serve_direct(py, &mut w, listen_fd);
    }
    loop {
        let threads = w.threads;
        let shared = py.detach(|| -> std::io::Result<(Arc<Shared>, bool)> {
            let shared = Arc::new(Shared::new(sys::accept(listen_fd)?, threads));
            flusher::register(&shared);
            let ready = shared.lock().wait_request();
            Ok((shared, ready))
        });
        let (shared, ready) = match shared {
            Ok(s) => s,
            Err(e) if out_of_resources(&e) => {
                pause_after(py, &e);
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        serve_connection(py, &mut w, &shared, ready)?;
        close(py, &shared);
    }
}

/// A direct worker's thread: it serves what its process's epoll set gives it, a new
/// connection or a kept one whose next request came ([`park`]), and parks each kept
/// connection between its requests rather than wait on it. Returns once the worker retires.
fn serve_direct(py: Python<'_>, w: &mut Worker, listen_fd: i32) -> PyResult<()> {
    let park = park::Park::get(listen_fd, w.threads)?;
    w.slot = scoreboard::claim_slot();
    w.turns = Some(park.turns());
    // The thread counts in its scoreboard's `accepting` until it returns.
    let _accepting = scoreboard::accepting();
    let mut last: Option<park::Served> = None;
    loop {
        let threads = w.threads;
        let next = match py.detach(|| park.next_connection(last.take(), threads)) {
            Ok(Some(s)) => s,
            Ok(None) => return Ok(()),
            Err(e) if out_of_resources(&e) => {
                pause_after(py, &e);
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        serve_connection(py, w, &next.shared, next.ready)?;
        last = Some(next);
    }
}

/// Run the requests of a connection while the next one is ready.
fn serve_connection(py: Python<'_>, w: &mut Worker, shared: &Arc<Shared>, mut ready: bool) -> PyResult<()> {
    while ready {
        ready = match handle_request(py, w, shared) {
            Ok(r) => r,
            Err(e) => {
                shared.lock_py(py).close();
                return Err(e);
            }
        };
    }
    Ok(())
}

/// Out of descriptors or memory: accepting may work again once the condition passes.
fn out_of_resources(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENFILE | libc::EMFILE | libc::ENOBUFS | libc::ENOMEM))
}

/// Say why accepting failed and wait a little before the next try.
fn pause_after(py: Python<'_>, e: &std::io::Error) {
    eprintln!("fcgibridge worker: accept failed, retrying: {e}");
    py.detach(|| std::thread::sleep(std::time::Duration::from_millis(100)));
}

/// Close a served connection: at once, unless a direct worker answered its last request
/// before the web server had sent all of that request's input (then lingering, detached).
fn close(py: Python<'_>, shared: &Shared) {
    let mut c = shared.lock_py(py);
    if !c.lingers() {
        c.close();
        return;
    }
    drop(c);
    py.detach(|| shared.lock().close_lingering());
}

/// A preloaded direct worker's scoreboard, received with its SPAWN: map it (and close `fd`).
#[pyfunction]
fn attach_scoreboard(fd: i32) {
    direct::forked();
    scoreboard::attach(fd);
}

/// Have the kernel SIGKILL this process when its parent (the bridge) goes away.
#[pyfunction]
fn set_parent_death_signal() -> PyResult<()> {
    sys::set_parent_death_signal().map_err(PyErr::from)
}

#[pymodule]
#[pyo3(name = "_native")]
fn native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(serve, m)?)?;
    m.add_function(wrap_pyfunction!(set_parent_death_signal, m)?)?;
    m.add_function(wrap_pyfunction!(attach_scoreboard, m)?)?;
    // Map the claim page (and close its descriptor) before the app is imported: app code
    // then cannot resize or close it under the bridge.
    claim::init();
    // Likewise the scoreboard of a direct worker, and its settings from the environment.
    scoreboard::init();
    direct::init();
    sys::report_cpu_limit();
    m.add_class::<FileWrapper>()?;
    m.add_class::<Input>()?;
    m.add_class::<Errors>()?;
    m.add_class::<StartResponse>()?;
    asgi_codec::register(m)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
