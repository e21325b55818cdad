//! The per-request Python objects: wsgi.input, wsgi.errors, start_response,
//! write() and wsgi.file_wrapper.
//!
//! Each holds the connection and the serial number of its request; used after
//! that request has ended, input reads return b'', errors go to the process
//! stderr and start_response/write raise.
use std::sync::Arc;

use pyo3::exceptions::{PyRuntimeError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBytes, PyList, PyString, PyTuple, PyType};

use crate::conn::Shared;

/// The package's `ClientDisconnected` class, handed over by `serve()`.
pub(crate) static CLIENT_DISCONNECTED: PyOnceLock<Py<PyType>> = PyOnceLock::new();

pub(crate) fn client_disconnected(py: Python<'_>, msg: &'static str) -> PyErr {
    match CLIENT_DISCONNECTED.get(py) {
        Some(ty) => PyErr::from_type(ty.bind(py).clone(), msg),
        None => pyo3::exceptions::PyConnectionAbortedError::new_err(msg),
    }
}

pub(crate) fn is_client_disconnected(py: Python<'_>, err: &PyErr) -> bool {
    match CLIENT_DISCONNECTED.get(py) {
        Some(ty) => err.get_type(py).is_subclass(ty.bind(py)).unwrap_or(false),
        None => false,
    }
}

const GONE: &str = "the client disconnected";
const SHORT: &str = "the request body ended before CONTENT_LENGTH bytes";

// ---- wsgi.input ----------------------------------------------------------

/// `wsgi.input`: the request body, streamed from the bridge on demand.
#[pyclass(frozen, module = "fcgibridge_worker")]
pub(crate) struct Input {
    pub(crate) shared: Arc<Shared>,
    pub(crate) serial: u64,
}

enum Have {
    /// Bytes to return now (count).
    Take(usize),
    /// Need at least this many buffered bytes.
    Need(usize),
}

impl Input {
    fn empty(py: Python<'_>) -> Bound<'_, PyBytes> {
        PyBytes::new(py, b"")
    }

    /// Loop: decide with the lock held; wait for more with the GIL released.
    fn read_with<'py>(
        &self,
        py: Python<'py>,
        mut decide: impl FnMut(&crate::conn::Req) -> Have,
    ) -> PyResult<Bound<'py, PyBytes>> {
        loop {
            if self.shared.is_over(self.serial) {
                return Ok(Self::empty(py));
            }
            let mut c = self.shared.lock_py(py);
            let Some(r) = c.cur(self.serial) else {
                return Ok(Self::empty(py));
            };
            if r.aborted {
                return Err(client_disconnected(py, GONE));
            }
            if r.body_gone {
                return Ok(Self::empty(py)); // a redirected request has no body
            }
            if r.body_short {
                return Err(client_disconnected(py, SHORT));
            }
            match decide(r) {
                Have::Take(0) => return Ok(Self::empty(py)),
                Have::Take(n) => {
                    return PyBytes::new_with(py, n, |dst| {
                        r.take_into(dst);
                        Ok(())
                    })
                }
                Have::Need(want) => {
                    drop(c);
                    let shared = &self.shared;
                    let serial = self.serial;
                    if !py.detach(|| shared.lock().fill_stdin(serial, want)) {
                        return Err(pyo3::exceptions::PyMemoryError::new_err(
                            "no memory left for the request body (the pool's rlimit-as)",
                        ));
                    }
                }
            }
        }
    }
}

fn size_arg(size: Option<&Bound<'_, PyAny>>) -> PyResult<Option<usize>> {
    match size {
        None => Ok(None),
        Some(s) if s.is_none() => Ok(None),
        Some(s) => {
            let n: i64 = s.extract()?;
            Ok(if n < 0 { None } else { Some(n as usize) })
        }
    }
}

#[pymethods]
impl Input {
    /// read(size=-1): up to `size` bytes (fewer only at the end of the body), all when negative.
    #[pyo3(signature = (size=None))]
    fn read<'py>(&self, py: Python<'py>, size: Option<&Bound<'py, PyAny>>) -> PyResult<Bound<'py, PyBytes>> {
        let limit = size_arg(size)?;
        if limit == Some(0) {
            return Ok(Self::empty(py));
        }
        self.read_with(py, |r| match limit {
            Some(n) if r.avail >= n => Have::Take(n),
            _ if r.stdin_done => Have::Take(r.avail.min(limit.unwrap_or(usize::MAX))),
            Some(n) => Have::Need(n),
            None => Have::Need(usize::MAX),
        })
    }

    /// read1(size=-1): whatever is buffered (waiting only if nothing is).
    #[pyo3(signature = (size=None))]
    fn read1<'py>(&self, py: Python<'py>, size: Option<&Bound<'py, PyAny>>) -> PyResult<Bound<'py, PyBytes>> {
        let limit = size_arg(size)?.unwrap_or(usize::MAX);
        if limit == 0 {
            return Ok(Self::empty(py));
        }
        self.read_with(py, |r| if r.avail > 0 || r.stdin_done { Have::Take(r.avail.min(limit)) } else { Have::Need(1) })
    }

    /// readline(size=-1): up to and including the next b'\n'.
    #[pyo3(signature = (size=None))]
    fn readline<'py>(&self, py: Python<'py>, size: Option<&Bound<'py, PyAny>>) -> PyResult<Bound<'py, PyBytes>> {
        let limit = size_arg(size)?.unwrap_or(usize::MAX);
        if limit == 0 {
            return Ok(Self::empty(py));
        }
        let mut scanned = 0usize;
        self.read_with(py, |r| {
            if let Some(end) = r.find_newline(scanned, limit) {
                return Have::Take(end);
            }
            scanned = r.avail;
            if r.avail >= limit {
                Have::Take(limit)
            } else if r.stdin_done {
                Have::Take(r.avail)
            } else {
                Have::Need(r.avail.saturating_add(1))
            }
        })
    }

    /// readlines(hint=-1): lines until the end, or until `hint` bytes were read.
    #[pyo3(signature = (hint=None))]
    fn readlines<'py>(&self, py: Python<'py>, hint: Option<&Bound<'py, PyAny>>) -> PyResult<Bound<'py, PyList>> {
        let hint = size_arg(hint)?.filter(|&h| h > 0);
        let lines = PyList::empty(py);
        let mut total = 0usize;
        loop {
            let line = self.readline(py, None)?;
            let n = line.as_bytes().len();
            if n == 0 {
                break;
            }
            lines.append(line)?;
            total += n;
            if hint.is_some_and(|h| total >= h) {
                break;
            }
        }
        Ok(lines)
    }

    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __next__<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyBytes>>> {
        let line = self.readline(py, None)?;
        Ok(if line.as_bytes().is_empty() { None } else { Some(line) })
    }

    fn readable(&self) -> bool {
        true
    }

    fn close(&self) {}
}

// ---- wsgi.errors ---------------------------------------------------------

/// `wsgi.errors`: text written here goes to the bridge's log as STDERR of the request.
#[pyclass(frozen, module = "fcgibridge_worker")]
pub(crate) struct Errors {
    pub(crate) shared: Arc<Shared>,
    pub(crate) serial: u64,
}

impl Errors {
    fn emit(&self, py: Python<'_>, data: &[u8]) -> PyResult<()> {
        if data.is_empty() {
            return Ok(());
        }
        let (sent, full) = if self.shared.is_over(self.serial) {
            (false, false)
        } else {
            let mut c = self.shared.lock_py(py);
            let sent = c.push_stderr(self.serial, data);
            (sent, c.out.len() >= crate::conn::OUT_HIGH)
        };
        if full {
            let shared = &self.shared;
            py.detach(|| shared.lock().flush());
        }
        if !sent {
            // The request is over: the process stderr still reaches the bridge's log.
            let stderr = py.import("sys")?.getattr("stderr")?;
            stderr.call_method1("write", (String::from_utf8_lossy(data),))?;
        }
        Ok(())
    }
}

fn text_bytes(obj: &Bound<'_, PyAny>) -> PyResult<Vec<u8>> {
    if let Ok(s) = obj.cast::<PyString>() {
        let encoded = s.call_method1("encode", ("utf-8", "backslashreplace"))?;
        return Ok(encoded.cast_into::<PyBytes>()?.as_bytes().to_vec());
    }
    if let Ok(b) = obj.cast::<PyBytes>() {
        return Ok(b.as_bytes().to_vec());
    }
    Err(PyTypeError::new_err(format!("wsgi.errors.write() takes str, not {}", obj.get_type().name()?)))
}

#[pymethods]
impl Errors {
    fn write(&self, py: Python<'_>, s: &Bound<'_, PyAny>) -> PyResult<()> {
        let data = text_bytes(s)?;
        self.emit(py, &data)
    }

    fn writelines(&self, py: Python<'_>, lines: &Bound<'_, PyAny>) -> PyResult<()> {
        let mut data = Vec::new();
        for line in lines.try_iter()? {
            data.extend_from_slice(&text_bytes(&line?)?);
        }
        self.emit(py, &data)
    }

    fn flush(&self, py: Python<'_>) {
        let shared = &self.shared;
        let serial = self.serial;
        if shared.is_over(serial) {
            return;
        }
        let pending = {
            let mut c = shared.lock_py(py);
            c.cur(serial).is_some() && !c.out.is_empty()
        };
        if pending {
            py.detach(|| {
                let mut c = shared.lock();
                if c.cur(serial).is_some() {
                    c.flush();
                }
            });
        }
    }

    fn writable(&self) -> bool {
        true
    }

    fn isatty(&self) -> bool {
        false
    }

    fn close(&self) {}
}

// ---- start_response and write() -------------------------------------------

/// The `start_response` callable of one request.
#[pyclass(frozen, module = "fcgibridge_worker")]
pub(crate) struct StartResponse {
    pub(crate) shared: Arc<Shared>,
    pub(crate) serial: u64,
}

/// Latin-1 bytes of a str, or an error naming `what`.
fn latin1_bytes(obj: &Bound<'_, PyAny>, what: &str) -> PyResult<Vec<u8>> {
    let py = obj.py();
    if !obj.is_instance_of::<PyString>() {
        return Err(PyTypeError::new_err(format!("{what} must be str, not {}", obj.get_type().name()?)));
    }
    // SAFETY: `obj` is a str; PyUnicode_AsLatin1String returns a new reference or NULL.
    let encoded = unsafe { Bound::from_owned_ptr_or_err(py, pyo3::ffi::PyUnicode_AsLatin1String(obj.as_ptr())) };
    match encoded {
        Ok(b) => Ok(b.cast_into::<PyBytes>()?.as_bytes().to_vec()),
        Err(_) => Err(PyValueError::new_err(format!("{what} is not encodable as latin-1: {obj:?}"))),
    }
}

struct Head {
    head: Vec<u8>,
    status_code: u16,
    content_length: Option<u64>,
    /// A file hand-off header is among them: the body is not the client's.
    hands_off: bool,
    /// Warnings for the request's STDERR (a dropped `Status` header).
    warnings: String,
    /// The `Location` header's value: a direct worker follows a local one itself.
    location: Option<Vec<u8>>,
}

fn build_head(status: &Bound<'_, PyAny>, headers: &Bound<'_, PyAny>) -> PyResult<Head> {
    let status_b = latin1_bytes(status, "status")?;
    let ok_shape = status_b.len() >= 3
        && status_b[..3].iter().all(u8::is_ascii_digit)
        && (status_b.len() == 3 || status_b[3] == b' ')
        && status_b.iter().all(|&b| b >= 0x20 && b != 0x7f);
    if !ok_shape {
        return Err(PyValueError::new_err(format!(
            "status must look like '200 OK' (three digits, a space, a reason), got {status:?}"
        )));
    }
    let status_code =
        u16::from(status_b[0] - b'0') * 100 + u16::from(status_b[1] - b'0') * 10 + u16::from(status_b[2] - b'0');
    let mut head = Vec::with_capacity(128);
    head.extend_from_slice(b"Status: ");
    head.extend_from_slice(&status_b);
    head.extend_from_slice(b"\r\n");
    let mut content_length: Option<u64> = None;
    let mut hands_off = false;
    let mut warnings = String::new();
    let mut location = None;
    if !(headers.is_instance_of::<PyList>() || headers.is_instance_of::<PyTuple>()) {
        return Err(PyTypeError::new_err(format!(
            "response headers must be a list of (name, value) tuples, not {}",
            headers.get_type().name()?
        )));
    }
    for item in headers.try_iter()? {
        let item = item?;
        let pair = match item.cast::<PyTuple>() {
            Ok(t) if t.len() == 2 => t.clone(),
            _ => {
                return Err(PyTypeError::new_err(format!(
                    "each response header must be a (name, value) tuple, got {item:?}"
                )))
            }
        };
        let name = latin1_bytes(&pair.get_item(0)?, "header name")?;
        let value = latin1_bytes(&pair.get_item(1)?, "header value")?;
        if !fastcgi_server::cgi::is_token(&name) {
            return Err(PyValueError::new_err(format!("invalid header name {:?}", String::from_utf8_lossy(&name))));
        }
        if value.iter().any(|&b| b == b'\r' || b == b'\n' || b == 0) {
            return Err(PyValueError::new_err(format!(
                "header value of {} contains CR, LF or NUL",
                String::from_utf8_lossy(&name)
            )));
        }
        let lower = name.to_ascii_lowercase();
        if crate::is_cgi_status(&lower) {
            warnings.push_str(&crate::dropped_status_warning(
                &name,
                &value,
                "the status is start_response's first argument",
            ));
            continue;
        }
        if fastcgi_server::cgi::is_hop_by_hop(&lower) {
            // Hop-by-hop headers belong to the web server's connection (PEP 3333).
            continue;
        }
        hands_off |= fastcgi_server::cgi::is_file_handoff(&lower);
        if lower == b"location" {
            location = Some(value.clone());
        }
        if lower == b"content-length" {
            let text = String::from_utf8_lossy(&value);
            let n = text.trim().parse::<u64>().ok().filter(|_| text.trim().bytes().all(|b| b.is_ascii_digit()));
            match (n, content_length) {
                (None, _) => return Err(PyValueError::new_err(format!("invalid Content-Length {text:?}"))),
                (Some(n), Some(m)) if n != m => {
                    return Err(PyValueError::new_err("two different Content-Length headers"))
                }
                (Some(_), Some(_)) => continue,
                (Some(n), None) => content_length = Some(n),
            }
            if status_code == 204 {
                // Checked, but not sent: a 204 has none (RFC 9110 8.6), and the web
                // server in front of a direct worker passes it on.
                continue;
            }
        }
        head.extend_from_slice(&name);
        head.extend_from_slice(b": ");
        head.extend_from_slice(&value);
        head.extend_from_slice(b"\r\n");
    }
    // With its blank line and a Content-Length the worker may add, the head the bridge reads.
    if head.len() + HEAD_ADDS > MAX_HEAD {
        return Err(PyValueError::new_err(format!(
            "the response headers are {} bytes, more than the {} KiB the bridge reads (nginx's fastcgi_buffer_size, 4 or \
             8 KiB unless set, is smaller still)",
            head.len(),
            MAX_HEAD >> 10
        )));
    }
    Ok(Head { head, status_code, content_length, hands_off, warnings, location })
}

/// The largest response head, refused here so that an app's oversized head is its own 500
/// with a traceback, in a direct worker too, rather than the bridge's or the web server's 502.
const MAX_HEAD: usize = fastcgi_server::cgi::MAX_RESPONSE_HEAD;
/// What `push_head` may add to the app's head: the blank line, a Content-Length.
const HEAD_ADDS: usize = 64;

#[pymethods]
impl StartResponse {
    #[pyo3(signature = (status, headers, exc_info=None))]
    fn __call__(
        &self,
        py: Python<'_>,
        status: &Bound<'_, PyAny>,
        headers: &Bound<'_, PyAny>,
        exc_info: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Writer> {
        let exc_info = exc_info.filter(|e| !e.is_none());
        if self.shared.is_over(self.serial) {
            return Err(PyRuntimeError::new_err("start_response() called after the request ended"));
        }
        {
            let mut c = self.shared.lock_py(py);
            let Some(r) = c.cur(self.serial) else {
                return Err(PyRuntimeError::new_err("start_response() called after the request ended"));
            };
            match exc_info {
                Some(info) => {
                    if r.headers_sent {
                        drop(c);
                        // PEP 3333: too late to change the response, re-raise.
                        let value = info.get_item(1)?;
                        let tb = info.get_item(2)?;
                        let value = value.call_method1("with_traceback", (tb,))?;
                        return Err(PyErr::from_value(value));
                    }
                }
                None => {
                    if r.started {
                        return Err(PyRuntimeError::new_err("start_response() called a second time without exc_info"));
                    }
                }
            }
        }
        let mut h = build_head(status, headers)?;
        let mut c = self.shared.lock_py(py);
        let direct = c.is_direct();
        let Some(r) = c.cur(self.serial) else {
            return Err(PyRuntimeError::new_err("start_response() called after the request ended"));
        };
        // The bridge reads the Location of a daemon worker's response; a direct worker's
        // goes to the web server, so the worker does what the bridge would.
        r.redirect = match h.location.take() {
            Some(loc) if direct => redirect_of(&mut h, loc),
            _ => None,
        };
        r.started = true;
        r.head = h.head;
        r.status_code = h.status_code;
        r.content_length = h.content_length;
        r.hands_off = h.hands_off;
        if !h.warnings.is_empty() {
            c.push_stderr(self.serial, h.warnings.as_bytes());
        }
        Ok(Writer { shared: self.shared.clone(), serial: self.serial })
    }
}

/// What a direct worker does with a response whose Location is `loc`: the local path to
/// follow (status 200 and one leading `/`), or none; a 200 with an absolute Location is
/// made a 302, as the bridge makes it (a 200 redirects nobody).
fn redirect_of(h: &mut Head, loc: Vec<u8>) -> Option<Vec<u8>> {
    if h.status_code != 200 {
        return None;
    }
    if fastcgi_server::redirect::is_local(Some(200), &loc) {
        return Some(loc);
    }
    if fastcgi_server::redirect::is_absolute(&loc) {
        let line_end = h.head.iter().position(|&b| b == b'\n').map_or(0, |i| i + 1);
        h.head.splice(..line_end, b"Status: 302 Found\r\n".iter().copied());
        h.status_code = 302;
    }
    None
}

/// The write() callable returned by start_response (the legacy imperative API).
#[pyclass(frozen, module = "fcgibridge_worker")]
pub(crate) struct Writer {
    shared: Arc<Shared>,
    serial: u64,
}

#[pymethods]
impl Writer {
    fn __call__(&self, py: Python<'_>, data: &Bound<'_, PyAny>) -> PyResult<()> {
        let Ok(b) = data.cast::<PyBytes>() else {
            return Err(PyTypeError::new_err(format!("write() takes bytes, not {}", data.get_type().name()?)));
        };
        if self.shared.is_over(self.serial) {
            return Err(PyRuntimeError::new_err("write() called after the request ended"));
        }
        {
            let mut c = self.shared.lock_py(py);
            match c.cur(self.serial) {
                None => return Err(PyRuntimeError::new_err("write() called after the request ended")),
                Some(r) if !r.started => return Err(PyRuntimeError::new_err("write() called before start_response()")),
                Some(r) if r.aborted => return Ok(()),
                Some(_) => {}
            }
        }
        self.shared.send_chunk(py, self.serial, b.as_bytes());
        Ok(())
    }
}

// ---- wsgi.file_wrapper ----------------------------------------------------

/// `wsgi.file_wrapper(filelike, blksize=8192)`. Returned as the response, a regular
/// file is sent by the worker from its current position with the GIL released.
#[pyclass(frozen, module = "fcgibridge_worker")]
pub(crate) struct FileWrapper {
    pub(crate) filelike: Py<PyAny>,
    pub(crate) blksize: usize,
}

#[pymethods]
impl FileWrapper {
    #[new]
    #[pyo3(signature = (filelike, blksize=8192))]
    fn new(filelike: Py<PyAny>, blksize: i64) -> Self {
        Self { filelike, blksize: if blksize > 0 { blksize as usize } else { 8192 } }
    }

    #[getter]
    fn filelike(&self, py: Python<'_>) -> Py<PyAny> {
        self.filelike.clone_ref(py)
    }

    #[getter]
    fn blksize(&self) -> usize {
        self.blksize
    }

    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __next__<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyAny>>> {
        let data = self.filelike.bind(py).call_method1("read", (self.blksize,))?;
        Ok(if data.is_truthy()? { Some(data) } else { None })
    }

    fn close(&self, py: Python<'_>) -> PyResult<()> {
        let f = self.filelike.bind(py);
        if f.hasattr("close")? {
            f.call_method0("close")?;
        }
        Ok(())
    }
}
