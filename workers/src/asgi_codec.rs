//! The FastCGI half of the ASGI worker (`fcgibridge_worker/asgi.py`): records from the bridge
//! decoded with `fastcgi_server`'s sans-IO [`ServerConnection`] and PARAMS turned into the
//! HTTP scope here, and a response's head, STDOUT records and END_REQUEST encoded into one
//! buffer, so the event loop runs no per-byte or per-header Python for either direction.
//! In direct mode (the web server's connections) the codec also does what the bridge would
//! to a request ([`crate::direct`]) and keeps its scoreboard slot ([`crate::scoreboard`]).
use crate::direct::{Direct, Lingering, Tag};
use crate::scoreboard::{self, Slot};
use fastcgi_server::record::Padding;
use fastcgi_server::server::{self, ServerConnection, ServerEvent};
use fastcgi_server::{Limits, Params, ProtocolStatus, Role};
use pyo3::exceptions::{PyException, PyRuntimeError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PyString, PyTuple};
use pyo3::{intern, IntoPyObjectExt};

pyo3::create_exception!(
    fcgibridge_worker,
    AsgiProtocolError,
    PyException,
    "The bridge sent something that is not FastCGI."
);

pyo3::create_exception!(
    fcgibridge_worker,
    ResponseCutOff,
    PyException,
    "Direct mode: the response ended before its Content-Length (logged). args[0]: what to \
     write before the connection is cut."
);

pyo3::create_exception!(
    fcgibridge_worker,
    LocalRedirect,
    PyException,
    "Direct mode: the response is a CGI local redirect (status 200, `Location: /path`), which \
     the worker follows (AsgiConnection.redirect). args[0]: the target."
);

/// Event kinds `AsgiConnection.feed` returns, as `(kind, request id, payload)` tuples.
/// BEGIN's payload: [`BEGIN_AUTHORIZER`] | [`BEGIN_KEEP_CONN`].
const EV_BEGIN: u8 = 1;
const EV_ABORT: u8 = 2;
const EV_PARAMS: u8 = 4;
const EV_STDIN: u8 = 5;
/// Direct mode: a request the bridge's listeners would answer 400 (payload: why, for the
/// log, and whether its input ended): its CONTENT_LENGTH is no body length, or its body
/// ended before it.
const EV_REFUSE: u8 = 6;
/// Bytes to write back at once (GET_VALUES_RESULT, UNKNOWN_TYPE, END_REQUEST UNKNOWN_ROLE).
const EV_REPLY: u8 = 10;
/// The END_REQUEST UNKNOWN_ROLE of a request begun without FCGI_KEEP_CONN: written, then the
/// connection closes unless another request is on it.
const EV_REPLY_LAST: u8 = 11;
const BEGIN_AUTHORIZER: u8 = 1;
const BEGIN_KEEP_CONN: u8 = 2;

/// Characters `urllib.parse.quote` leaves alone with the worker's `safe` set, besides ASCII
/// letters and digits: what a raw path built from a decoded path keeps literally.
const QUOTE_SAFE: &[u8] = b"_.-~/:@!$&'()*+,;=";

/// `quote_from_bytes(path, safe=...)`: every byte outside [`QUOTE_SAFE`] and ASCII
/// alphanumerics as `%XX`.
fn quote(path: &[u8]) -> Vec<u8> {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = Vec::with_capacity(path.len() + 8);
    for &b in path {
        if b.is_ascii_alphanumeric() || QUOTE_SAFE.contains(&b) {
            out.push(b);
        } else {
            out.extend_from_slice(&[b'%', HEX[usize::from(b >> 4)], HEX[usize::from(b & 15)]]);
        }
    }
    out
}

/// The scope's `raw_path`: REQUEST_URI's path is what the client asked for, before the web
/// server's rewrites, so it is used only while it still decodes to the path the app is given.
fn raw_path(request_uri: &[u8], full: &[u8]) -> Vec<u8> {
    let uri_path = request_uri.split(|&b| b == b'?').next().unwrap_or_default();
    if !uri_path.is_empty() && *fastcgi_server::path::percent_decode(uri_path) == *full {
        return uri_path.to_vec();
    }
    quote(full)
}

/// `SERVER_PROTOCOL` as the scope's `http_version` ("1.1", "2", "3").
fn http_version(protocol: &[u8]) -> &[u8] {
    let version = match protocol.iter().position(|&b| b == b'/') {
        Some(i) if i + 1 < protocol.len() => &protocol[i + 1..],
        _ => b"1.1",
    };
    match version {
        b"2.0" => b"2",
        b"3.0" => b"3",
        v => v,
    }
}

/// A request header as the scope has it, from an `HTTP_*` param name.
fn header_name(param: &[u8]) -> Vec<u8> {
    param[5..].iter().map(|&b| if b == b'_' { b'-' } else { b.to_ascii_lowercase() }).collect()
}

/// A port as `int()` reads it; 0 for what is not a number.
fn port(value: Option<&[u8]>) -> u32 {
    let text = value.map(|v| v.trim_ascii()).unwrap_or_default();
    if text.is_empty() || !text.iter().all(u8::is_ascii_digit) {
        return 0;
    }
    std::str::from_utf8(text).ok().and_then(|t| t.parse().ok()).unwrap_or(0)
}

fn latin1<'py>(py: Python<'py>, b: &[u8]) -> PyResult<Bound<'py, PyAny>> {
    crate::latin1(py, b)
}

fn host_port<'py>(py: Python<'py>, host: Option<&[u8]>, p: Option<&[u8]>) -> PyResult<Bound<'py, PyAny>> {
    match host {
        Some(h) if !h.is_empty() => Ok(PyTuple::new(py, [latin1(py, h)?, port(p).into_bound_py_any(py)?])?.into_any()),
        _ => Ok(py.None().into_bound(py)),
    }
}

fn nonempty<'a>(p: &'a Params, name: &[u8]) -> Option<&'a [u8]> {
    p.get(name).filter(|v| !v.is_empty())
}

/// The HTTP scope of a request from its CGI params, mapped as the WSGI environ is
/// (docs/asgi.md), and what the worker keeps beside it:
/// `(scope, request id or None, file roots or None, is HEAD)`. The request id is the
/// bridge's param, or in direct mode the worker's own (`tag`).
fn build_scope<'py>(
    py: Python<'py>,
    p: &Params,
    state: Option<&Bound<'py, PyDict>>,
    tag: Option<&Tag>,
) -> PyResult<Bound<'py, PyTuple>> {
    let script = p.get(b"SCRIPT_NAME").unwrap_or_default();
    let full = [script, p.get(b"PATH_INFO").unwrap_or_default()].concat();
    let headers = PyList::empty(py);
    let length = nonempty(p, b"CONTENT_LENGTH").filter(|v| v.iter().all(u8::is_ascii_digit));
    for (name, value) in p.iter() {
        if !name.starts_with(b"HTTP_") {
            continue;
        }
        // CGI's own CONTENT_TYPE / CONTENT_LENGTH win, as in the environ.
        if (name == b"HTTP_CONTENT_TYPE" || name == b"HTTP_CONTENT_LENGTH") && p.get(&name[5..]).is_some() {
            continue;
        }
        // A chunked upload the web server read whole comes with its length: the body the
        // app gets is no longer chunked, and both headers at once is a message HTTP forbids.
        if name == b"HTTP_TRANSFER_ENCODING" && length.is_some() {
            continue;
        }
        headers.append((PyBytes::new(py, &header_name(name)), PyBytes::new(py, value)))?;
    }
    if let Some(v) = nonempty(p, b"CONTENT_TYPE") {
        headers.append((PyBytes::new(py, b"content-type"), PyBytes::new(py, v)))?;
    }
    if let Some(v) = length {
        headers.append((PyBytes::new(py, b"content-length"), PyBytes::new(py, v)))?;
    }
    let https = p.get(b"HTTPS").is_some_and(|v| v.eq_ignore_ascii_case(b"on") || v == b"1")
        || p.get(b"REQUEST_SCHEME").is_some_and(|v| v.eq_ignore_ascii_case(b"https"));
    let method = p.get(b"REQUEST_METHOD").unwrap_or(b"GET");
    let rid = match tag.map(|t| t.request_id().as_bytes()).or_else(|| nonempty(p, b"FCGIBRIDGE_REQUEST_ID")) {
        Some(v) => latin1(py, v)?,
        None => py.None().into_bound(py),
    };
    let asgi = PyDict::new(py);
    asgi.set_item(intern!(py, "version"), intern!(py, "3.0"))?;
    // 2.3, as uvicorn: at 2.4 Starlette stops listening for http.disconnect while it streams
    // a response and waits for send() to raise, so a generator that sleeps between chunks
    // would run on after its client left.
    asgi.set_item(intern!(py, "spec_version"), intern!(py, "2.3"))?;
    let extensions = PyDict::new(py);
    extensions.set_item(intern!(py, "http.response.pathsend"), PyDict::new(py))?;
    let scope = PyDict::new(py);
    scope.set_item(intern!(py, "type"), intern!(py, "http"))?;
    scope.set_item(intern!(py, "asgi"), asgi)?;
    let version = http_version(p.get(b"SERVER_PROTOCOL").unwrap_or(b"HTTP/1.1"));
    scope.set_item(intern!(py, "http_version"), latin1(py, version)?)?;
    scope.set_item(intern!(py, "method"), latin1(py, method)?)?;
    scope.set_item(intern!(py, "scheme"), if https { intern!(py, "https") } else { intern!(py, "http") })?;
    scope.set_item(intern!(py, "path"), PyString::new(py, &String::from_utf8_lossy(&full)))?;
    let raw = raw_path(p.get(b"REQUEST_URI").unwrap_or_default(), &full);
    scope.set_item(intern!(py, "raw_path"), PyBytes::new(py, &raw))?;
    scope.set_item(intern!(py, "query_string"), PyBytes::new(py, p.get(b"QUERY_STRING").unwrap_or_default()))?;
    scope.set_item(intern!(py, "root_path"), PyString::new(py, &String::from_utf8_lossy(script)))?;
    scope.set_item(intern!(py, "headers"), headers)?;
    scope.set_item(intern!(py, "client"), host_port(py, p.get(b"REMOTE_ADDR"), p.get(b"REMOTE_PORT"))?)?;
    let server_host = nonempty(p, b"SERVER_NAME").or_else(|| p.get(b"SERVER_ADDR"));
    scope.set_item(intern!(py, "server"), host_port(py, server_host, p.get(b"SERVER_PORT"))?)?;
    scope.set_item(intern!(py, "extensions"), extensions)?;
    scope.set_item(intern!(py, "fcgibridge.request_id"), &rid)?;
    if p.get(b"FCGIBRIDGE_READY_CHECK").is_some() {
        // The pool's ready-check (the bridge's own request): what an app tells it by.
        scope.set_item(intern!(py, "fcgibridge.ready_check"), true)?;
    }
    if let Some(state) = state {
        scope.set_item(intern!(py, "state"), state.copy()?)?;
    }
    let roots = match p.get(b"FCGIBRIDGE_FILE_ROOTS") {
        Some(v) => PyBytes::new(py, v).into_any(),
        None => py.None().into_bound(py),
    };
    PyTuple::new(py, [scope.into_any(), rid, roots, (method == b"HEAD").into_bound_py_any(py)?])
}

/// One FastCGI connection from the bridge (or in direct mode the web server), decoded.
#[pyclass(module = "fcgibridge_worker", unsendable)]
pub(crate) struct AsgiConnection {
    conn: ServerConnection,
    /// What GET_VALUES answers for FCGI_MAX_CONNS and FCGI_MAX_REQS.
    concurrency: Vec<u8>,
    direct: Option<&'static Direct>,
    /// Direct mode: each request from its PARAMS to its end, with the slot it holds.
    running: Vec<Running>,
    /// Direct mode: what is read while closing lingering.
    lingering: Option<Lingering>,
    /// Each request with a CONTENT_LENGTH, and how much of it is still to come: body bytes
    /// past it are dropped, never given to the app (as the WSGI worker drops them).
    body_left: Vec<(u16, u64)>,
}

/// A direct request in flight.
struct Running {
    id: u16,
    tag: Tag,
    slot: Option<&'static Slot>,
    /// CLOCK_MONOTONIC ns when its params were read: its duration counts from then.
    began: u64,
    /// Its CONTENT_LENGTH (`None`: unknown), and how much body came.
    body_declared: Option<u64>,
    body_received: u64,
    /// Its response's Content-Length, how much body was sent, and whether body past it
    /// was dropped (said once).
    response_length: Option<u64>,
    response_sent: u64,
    overflowed: bool,
    /// Its params as the app got them, for a local redirect's, and the redirects it took.
    params: Params,
    redirects: u32,
}

fn event<'py>(py: Python<'py>, kind: u8, id: u16, payload: Bound<'py, PyAny>) -> PyResult<Bound<'py, PyTuple>> {
    PyTuple::new(py, [kind.into_bound_py_any(py)?, id.into_bound_py_any(py)?, payload])
}

/// EV_REFUSE: `(why, whether the request's input has ended)`.
fn refuse<'py>(py: Python<'py>, id: u16, why: &str, input_ended: bool) -> PyResult<Bound<'py, PyTuple>> {
    let payload = (PyString::new(py, why), input_ended).into_bound_py_any(py)?;
    event(py, EV_REFUSE, id, payload)
}

impl AsgiConnection {
    /// A direct request's params are ready: as the bridge would pass them, with the worker's
    /// own request id, and its slot showing it from now on.
    fn begin_direct(&mut self, d: &Direct, id: u16, params: &mut Params, body_declared: Option<u64>) -> &Tag {
        d.prepare(params);
        let tag = d.tag(params);
        self.end_direct(id); // an id begun again (a web server that multiplexes)
        let slot = scoreboard::lend_slot();
        let began = crate::sys::monotonic_ns();
        if let Some(slot) = slot {
            slot.begin(tag.board_line(), began);
        }
        self.running.push(Running {
            id,
            tag,
            slot,
            began,
            body_declared,
            body_received: 0,
            response_length: None,
            response_sent: 0,
            overflowed: false,
            params: Params::default(),
            redirects: 0,
        });
        &self.running.last().expect("just pushed").tag
    }

    fn end_direct(&mut self, id: u16) {
        if let Some(i) = self.running.iter().position(|r| r.id == id) {
            let r = self.running.swap_remove(i);
            scoreboard::give_back(r.slot, r.began);
        }
    }

    /// The head of request `rid`'s response, status `status`, is made: counted by class,
    /// and marked in its slot (the bridge reads it if the worker dies before the end).
    /// `declared`: the head's Content-Length, when the response has a body.
    fn head_made(&mut self, rid: u16, status: u16, declared: Option<u64>) {
        scoreboard::count_response(status); // direct mode only: no scoreboard otherwise
        if let Some(r) = self.running_mut(rid) {
            r.response_length = declared;
            if let Some(slot) = r.slot {
                slot.head_sent(status);
            }
        }
    }

    fn running_mut(&mut self, id: u16) -> Option<&mut Running> {
        self.running.iter_mut().find(|r| r.id == id)
    }

    /// Direct mode, what the bridge does to a response (backend/exchange.rs): body past the
    /// app's Content-Length is dropped, and a response that ends before it is a failure.
    /// The part of `body` to send, and whether the response ends short.
    fn within_length<'b>(&mut self, rid: u16, body: &'b [u8], more: bool) -> (&'b [u8], bool) {
        let Some(r) = self.running_mut(rid) else { return (body, false) };
        let Some(length) = r.response_length else { return (body, false) };
        let room = usize::try_from(length - r.response_sent).unwrap_or(usize::MAX);
        let sent = body.len().min(room);
        r.response_sent += sent as u64;
        let short = !more && r.response_sent < length;
        let failure = if sent < body.len() {
            (!std::mem::replace(&mut r.overflowed, true))
                .then(|| crate::body_past_length(length, (body.len() - sent) as u64))
        } else {
            short.then(|| crate::body_short_of_length(r.response_sent, length))
        };
        if let Some(text) = failure {
            r.tag.stderr(text.as_bytes());
        }
        (&body[..sent], short)
    }

    /// Direct mode: the body of request `id` ended. Why it is refused, when it ended
    /// before its CONTENT_LENGTH.
    fn short_body(&self, id: u16) -> Option<String> {
        let r = self.running.iter().find(|r| r.id == id)?;
        crate::direct::short_body(r.body_received, r.body_declared)
    }

    fn get_values(&self, names: &[bytes::Bytes]) -> Vec<u8> {
        let answer = |n: &[u8]| -> Option<&[u8]> {
            match n {
                b"FCGI_MAX_CONNS" | b"FCGI_MAX_REQS" => Some(&self.concurrency),
                b"FCGI_MPXS_CONNS" => Some(b"1"),
                _ => None,
            }
        };
        let mut out = Vec::new();
        let pairs: Vec<(&[u8], &[u8])> = names.iter().filter_map(|n| answer(n).map(|v| (&n[..], v))).collect();
        server::write_get_values_result(&mut out, pairs);
        out
    }
}

#[pymethods]
impl AsgiConnection {
    #[new]
    fn new(concurrency: usize) -> Self {
        Self {
            conn: ServerConnection::new(Limits::default()),
            concurrency: concurrency.to_string().into_bytes(),
            direct: crate::direct::config(),
            running: Vec::new(),
            lingering: None,
            body_left: Vec::new(),
        }
    }

    /// The events of the whole records in `data` (and what came before), as
    /// `(kind, request id, payload)`: BEGIN (flags), PARAMS (scope, request id, file roots,
    /// is HEAD), STDIN (bytes; b"" at its end), ABORT (None), REPLY (bytes to write).
    /// Raises AsgiProtocolError on what is not FastCGI (the connection is then unusable).
    fn feed<'py>(
        &mut self,
        py: Python<'py>,
        data: &[u8],
        state: Option<&Bound<'py, PyDict>>,
    ) -> PyResult<Bound<'py, PyList>> {
        self.conn.feed(data);
        let out = PyList::empty(py);
        loop {
            let ev = match self.conn.next_event() {
                Ok(Some(ev)) => ev,
                Ok(None) => break,
                Err(e) => return Err(AsgiProtocolError::new_err(e.to_string())),
            };
            let item = match ev {
                ServerEvent::BeginRequest { id, role: role @ (Role::Responder | Role::Authorizer), keep_conn } => {
                    let flags = if role == Role::Authorizer { BEGIN_AUTHORIZER } else { 0 }
                        | if keep_conn { BEGIN_KEEP_CONN } else { 0 };
                    event(py, EV_BEGIN, id, flags.into_bound_py_any(py)?)?
                }
                ServerEvent::BeginRequest { id, keep_conn, .. } => {
                    let mut b = Vec::new();
                    server::write_end_request(&mut b, id, 0, ProtocolStatus::UnknownRole, Padding::None);
                    self.conn.end_request(id); // its id may begin again on a kept connection
                    let kind = if keep_conn { EV_REPLY } else { EV_REPLY_LAST };
                    event(py, kind, id, PyBytes::new(py, &b).into_any())?
                }
                ServerEvent::Params { id, mut params } => {
                    let declared = fastcgi_server::content_length::declared(&params);
                    let known = declared.as_ref().ok().copied().flatten();
                    self.body_left.retain(|(i, _)| *i != id);
                    self.body_left.extend(known.map(|n| (id, n)));
                    let tag = self.direct.map(|d| self.begin_direct(d, id, &mut params, known));
                    out.append(event(py, EV_PARAMS, id, build_scope(py, &params, state, tag)?.into_any())?)?;
                    if let Some(r) = self.running_mut(id) {
                        r.params = params; // kept for a local redirect
                    }
                    match declared {
                        Err(e) if self.direct.is_some() => refuse(py, id, &e.to_string(), false)?,
                        _ => continue,
                    }
                }
                ServerEvent::Stdin { id, mut data } => {
                    if let Some((_, left)) = self.body_left.iter_mut().find(|(i, _)| *i == id) {
                        data.truncate(usize::try_from(*left).unwrap_or(usize::MAX));
                        *left -= data.len() as u64;
                    }
                    if data.is_empty() {
                        continue; // an empty STDIN event is the body's end
                    }
                    if let Some(r) = self.running_mut(id) {
                        r.body_received += data.len() as u64;
                    }
                    event(py, EV_STDIN, id, PyBytes::new(py, &data).into_any())?
                }
                ServerEvent::StdinEnd { id } => match self.short_body(id) {
                    Some(why) => refuse(py, id, &why, true)?,
                    None => event(py, EV_STDIN, id, PyBytes::new(py, b"").into_any())?,
                },
                ServerEvent::Abort { id } => event(py, EV_ABORT, id, py.None().into_bound(py))?,
                ServerEvent::GetValues { names } => {
                    event(py, EV_REPLY, 0, PyBytes::new(py, &self.get_values(&names)).into_any())?
                }
                ServerEvent::UnknownType { record_type } => {
                    let mut b = Vec::new();
                    server::write_unknown_type(&mut b, record_type);
                    event(py, EV_REPLY, 0, PyBytes::new(py, &b).into_any())?
                }
                // The FILTER role is refused at BEGIN_REQUEST: no DATA is expected or used.
                ServerEvent::Data { .. } | ServerEvent::DataEnd { .. } => continue,
            };
            out.append(item)?;
        }
        Ok(out)
    }

    /// Forget request `id` once its END_REQUEST is written: later records for it are skipped.
    /// A direct request's slot is given back (it counts as served); one the web server
    /// aborted before its head counts as 499, as the bridge counts an abort it sees.
    #[pyo3(signature = (id, aborted_headless=false))]
    fn end_request(&mut self, id: u16, aborted_headless: bool) {
        self.conn.end_request(id);
        self.body_left.retain(|(i, _)| *i != id);
        if self.direct.is_some() {
            if aborted_headless {
                scoreboard::count_response(499);
            }
            self.end_direct(id);
        }
    }

    /// encode_response(rid, status_line, headers, status, body, more, is_head) -> bytes
    ///
    /// One write's worth of a response: the head when `status_line` is given (headers
    /// checked, Content-Length added when this is the whole body; a dropped `Status` header
    /// is a warning in a STDERR record before it), the body (left out for HEAD) as STDOUT
    /// records, and when `more` is false the end of the request (empty STDOUT, END_REQUEST 0).
    #[pyo3(signature = (rid, status_line, headers, status, body, more, is_head))]
    #[allow(clippy::too_many_arguments)]
    fn encode_response<'py>(
        &mut self,
        py: Python<'py>,
        rid: u16,
        status_line: Option<&[u8]>,
        headers: &Bound<'py, PyAny>,
        status: u16,
        body: &Bound<'py, PyAny>,
        more: bool,
        is_head: bool,
    ) -> PyResult<Bound<'py, PyBytes>> {
        let owned;
        let body: &[u8] = match body.cast::<PyBytes>() {
            Ok(b) => b.as_bytes(),
            Err(_) => {
                owned = header_bytes(body)?;
                &owned
            }
        };
        let mut status = status;
        let (head, warnings) = match status_line {
            Some(line) => {
                let mut h = head(line, headers, status, (!more).then_some(body.len()), is_head)?;
                // The common head has no Location: one check.
                if h.location.is_some() && self.direct.is_some() {
                    if let Some(target) = h.local_redirect(&mut status) {
                        return Err(LocalRedirect::new_err((PyBytes::new(py, &target).unbind(),)));
                    }
                }
                let has_body = !is_head && status >= 200 && status != 204 && status != 304;
                self.head_made(rid, status, h.declared.filter(|_| has_body));
                (Some(h.block), h.warnings)
            }
            None => (None, Vec::new()),
        };
        let (body, short) = if self.direct.is_some() { self.within_length(rid, body, more) } else { (body, false) };
        if short {
            crate::sys::write_stderr(&warnings);
            // No END_REQUEST: the caller cuts the connection (asgi.py, DirectRequest.end).
            let records = PyBytes::new(py, &response_records(rid, head, body, true, is_head)).unbind();
            return Err(ResponseCutOff::new_err((records,)));
        }
        let records = response_records(rid, head, body, more, is_head);
        if warnings.is_empty() {
            return Ok(PyBytes::new(py, &records));
        }
        if self.direct.is_some() {
            // Not to the web server's error log: to the bridge's.
            crate::sys::write_stderr(&warnings);
            return Ok(PyBytes::new(py, &records));
        }
        let mut out = Vec::with_capacity(warnings.len() + 8 + records.len());
        server::write_stderr(&mut out, rid, &warnings, Padding::None);
        out.extend_from_slice(&records);
        Ok(PyBytes::new(py, &out))
    }

    /// redirect(rid, target, state) -> (scope, request id, file roots, is HEAD) or None
    ///
    /// Direct mode: request `rid`'s app answered a local redirect to `target` (raised as
    /// LocalRedirect): the scope of the request the bridge would make of it
    /// ([`Direct::redirect`]), or None past `max-redirects` (logged; the caller answers 500).
    #[pyo3(signature = (rid, target, state=None))]
    fn redirect<'py>(
        &mut self,
        py: Python<'py>,
        rid: u16,
        target: &[u8],
        state: Option<&Bound<'py, PyDict>>,
    ) -> PyResult<Option<Bound<'py, PyTuple>>> {
        let Some(d) = self.direct else { return Ok(None) };
        let Some(r) = self.running.iter_mut().find(|r| r.id == rid) else { return Ok(None) };
        let from = String::from_utf8_lossy(r.params.get(b"REQUEST_URI").unwrap_or_default()).into_owned();
        let shown = String::from_utf8_lossy(target);
        if let Err(e) = d.redirect(&mut r.params, target, &mut r.redirects) {
            let msg = format!("internal redirect refused, answering 500: {e} (from {from} to {shown})");
            crate::direct::log_record("ERROR", &msg, r.tag.request_id());
            return Ok(None);
        }
        let msg = format!("internal redirect from {from} to {shown}");
        crate::direct::log_record("INFO", &msg, r.tag.request_id());
        (r.response_length, r.response_sent, r.overflowed) = (None, 0, false);
        build_scope(py, &r.params, state, Some(&r.tag)).map(Some)
    }

    /// Direct mode: a running request's `METHOD URI`, for the log.
    fn line(&self, py: Python<'_>, id: u16) -> PyResult<Option<Py<PyAny>>> {
        let running = self.running.iter().find(|r| r.id == id);
        running.map(|r| latin1(py, r.tag.line()).map(Bound::unbind)).transpose()
    }

    /// Direct mode: request `id` was answered before the web server sent the end of its
    /// input, and the connection is to close: from now on the input is only looked through
    /// for that end ([`AsgiConnection::linger_after`]). True when it is here already.
    fn linger(&mut self, id: u16) -> bool {
        // What the decoder holds starts at a record's first byte.
        let buffered = self.conn.buffer_mut().split();
        self.lingering.insert(Lingering::new(id)).done_after(&buffered)
    }

    /// Direct mode, lingering: whether, with `data` read, the connection may close (the
    /// input's end came, or too much other input).
    fn linger_after(&mut self, data: &[u8]) -> bool {
        self.lingering.as_mut().is_none_or(|l| l.done_after(data))
    }

    /// Bytes of a partial record held (a partial record at EOF means the bridge hung up mid-record).
    fn buffered(&self) -> usize {
        self.conn.buffered()
    }
}

/// A response header name or value, or a body, as bytes (ASGI says bytes; bytearray and
/// memoryview pass too).
fn header_bytes(obj: &Bound<'_, PyAny>) -> PyResult<Vec<u8>> {
    if let Ok(b) = obj.cast::<PyBytes>() {
        return Ok(b.as_bytes().to_vec());
    }
    let py = obj.py();
    let b = py.get_type::<PyBytes>().call1((obj,))?;
    Ok(b.cast_into::<PyBytes>()?.as_bytes().to_vec())
}

/// The CGI header block of an ASGI response, and the warning for the request's STDERR when
/// a header had to be dropped (`Status`: [`crate::is_cgi_status`]). Content-Length is added
/// when the whole body is known (`content_length`) and the app set none — for HEAD only
/// when the app sent GET's body (an empty body says nothing about the length of GET's).
fn head(
    status_line: &[u8],
    headers: &Bound<'_, PyAny>,
    status: u16,
    content_length: Option<usize>,
    is_head: bool,
) -> PyResult<Head> {
    let mut out = Vec::with_capacity(256);
    let mut warnings = Vec::new();
    out.extend_from_slice(status_line);
    let mut has_length = false;
    let mut declared = None;
    let mut hands_off = false;
    let mut location = None;
    for item in headers.try_iter()? {
        let item = item?;
        let name = header_bytes(&item.get_item(0)?)?;
        let value = header_bytes(&item.get_item(1)?)?;
        if name.iter().any(|&b| b == b'\n' || b == b'\r' || b == b':')
            || value.iter().any(|&b| b == b'\n' || b == b'\r')
        {
            return Err(PyRuntimeError::new_err(format!(
                "response header {:?} has a line break or colon in it",
                PyBytes::new(headers.py(), &name)
            )));
        }
        if crate::is_cgi_status(&name) {
            warnings.extend_from_slice(
                crate::dropped_status_warning(&name, &value, "the status is http.response.start's `status`").as_bytes(),
            );
            continue;
        }
        hands_off |= fastcgi_server::cgi::is_file_handoff(&name);
        if name.eq_ignore_ascii_case(b"location") {
            location = Some(value.clone());
        }
        if name.eq_ignore_ascii_case(b"content-length") {
            declared = declared.or(fastcgi_server::content_length::parse(value.trim_ascii()).ok());
            has_length = true;
            if status == 204 {
                continue; // a 204 has none (RFC 9110 8.6): not passed on to the web server
            }
        }
        out.extend_from_slice(&name);
        out.extend_from_slice(b": ");
        out.extend_from_slice(&value);
        out.extend_from_slice(b"\r\n");
    }
    let content_length = content_length.filter(|&n| !(is_head && n == 0));
    if let Some(n) = content_length.filter(|_| !has_length && status >= 200 && status != 204 && status != 304) {
        out.extend_from_slice(format!("Content-Length: {n}\r\n").as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    // A file hand-off's body is not the client's: its Content-Length is no promise of it.
    Ok(Head { block: out, warnings, declared: declared.filter(|_| !hands_off), location })
}

/// An ASGI response's head as [`head`] makes it.
struct Head {
    /// The CGI header block.
    block: Vec<u8>,
    /// Warnings for the request's STDERR (a dropped `Status` header).
    warnings: Vec<u8>,
    /// The app's Content-Length, unless a file hand-off's.
    declared: Option<u64>,
    /// The `Location` header's value: a direct worker follows a local one itself.
    location: Option<Vec<u8>>,
}

impl Head {
    /// Direct mode, what the bridge would do with this head's `Location`: the local path
    /// to follow instead (status 200 and one leading `/`), or none; a 200 with an absolute
    /// Location is made a 302 (a 200 redirects nobody).
    fn local_redirect(&mut self, status: &mut u16) -> Option<Vec<u8>> {
        let loc = self.location.take().filter(|_| *status == 200)?;
        if fastcgi_server::redirect::is_local(Some(200), &loc) {
            return Some(loc);
        }
        if fastcgi_server::redirect::is_absolute(&loc) {
            let line_end = self.block.iter().position(|&b| b == b'\n').map_or(0, |i| i + 1);
            self.block.splice(..line_end, b"Status: 302 Found\r\n".iter().copied());
            *status = 302;
        }
        None
    }
}

/// STDOUT records of `head` and `body` (left out for HEAD), then the end of the request
/// unless `more` follows.
fn response_records(rid: u16, head: Option<Vec<u8>>, body: &[u8], more: bool, is_head: bool) -> Vec<u8> {
    let mut content = head.unwrap_or_default();
    if !is_head {
        content.extend_from_slice(body);
    }
    let mut out = Vec::with_capacity(content.len() + 40);
    server::write_stdout(&mut out, rid, &content, Padding::None);
    if !more {
        server::write_end_request(&mut out, rid, 0, ProtocolStatus::RequestComplete, Padding::None);
    }
    out
}

/// direct_settings() -> (header_timeout, request_timeout or None) in seconds, or None
///
/// Whether this worker serves a `direct` listener (FCGIBRIDGE_DIRECT=1), and its timeouts.
#[pyfunction]
fn direct_settings() -> Option<(f64, Option<f64>)> {
    crate::direct::config().map(|d| (d.header_timeout.as_secs_f64(), d.request_timeout.map(|t| t.as_secs_f64())))
}

/// scoreboard_serve(concurrency): a direct ASGI worker starts serving: `concurrency` slots
/// for its requests in flight, and it accepts connections.
#[pyfunction]
fn scoreboard_serve(concurrency: usize) {
    scoreboard::serve_concurrently(concurrency);
}

/// scoreboard_stop_accepting(): the direct ASGI worker accepts nothing more, for good.
#[pyfunction]
fn scoreboard_stop_accepting() {
    scoreboard::stop_accepting();
}

/// scoreboard_drain() -> int: the bridge's drain word (0; 1 retire; 2 the bridge stops).
#[pyfunction]
fn scoreboard_drain() -> u32 {
    scoreboard::drain_word()
}

/// scoreboard_timed_out(): the worker ended a request for request-timeout.
#[pyfunction]
fn scoreboard_timed_out() {
    scoreboard::count_timeout();
}

/// log_header_timeout(): a connection was closed for header-timeout; the WSGI worker's line,
/// rate-limited the same way.
#[pyfunction]
fn log_header_timeout() {
    if let Some(d) = crate::direct::config() {
        crate::direct::log_header_timeout(d.header_timeout);
    }
}

/// unsent_bytes(fd) -> int
///
/// Bytes written to unix socket `fd` that the web server has not read yet (0 if unknown).
#[pyfunction]
fn unsent_bytes(fd: i32) -> usize {
    crate::sys::unsent_bytes(fd).unwrap_or(0)
}

/// Register the ASGI codec and its direct mode in the `_native` module.
pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<AsgiConnection>()?;
    m.add("AsgiProtocolError", m.py().get_type::<AsgiProtocolError>())?;
    m.add("ResponseCutOff", m.py().get_type::<ResponseCutOff>())?;
    m.add("LocalRedirect", m.py().get_type::<LocalRedirect>())?;
    m.add_function(wrap_pyfunction!(direct_settings, m)?)?;
    m.add_function(wrap_pyfunction!(scoreboard_serve, m)?)?;
    m.add_function(wrap_pyfunction!(scoreboard_stop_accepting, m)?)?;
    m.add_function(wrap_pyfunction!(scoreboard_drain, m)?)?;
    m.add_function(wrap_pyfunction!(scoreboard_timed_out, m)?)?;
    m.add_function(wrap_pyfunction!(log_header_timeout, m)?)?;
    m.add_function(wrap_pyfunction!(unsent_bytes, m)?)?;
    // The WSGI direct worker's periods, for the loop's timers.
    m.add("DRAIN_CHECK", scoreboard::DRAIN_CHECK.as_secs_f64())?;
    m.add("STOP_QUEUE_WINDOW", scoreboard::STOP_QUEUE_WINDOW.as_secs_f64())?;
    m.add("LINGER_TIME", crate::direct::LINGER_TIME.as_secs_f64())?;
    m.add("CUT_OFF_TCP_WAIT", crate::direct::CUT_OFF_TCP_WAIT.as_secs_f64())?;
    m.add("CUT_OFF_LOOK", crate::direct::CUT_OFF_LOOK.as_secs_f64())?;
    m.add("CUT_OFF_LOOKS", crate::direct::CUT_OFF_LOOKS)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_path_keeps_the_request_uri_while_it_decodes_to_the_path() {
        assert_eq!(raw_path(b"/a%20b?x=1", b"/a b"), b"/a%20b");
        assert_eq!(raw_path(b"/a%2Fb", b"/a/b"), b"/a%2Fb");
        // rewritten by the web server: built from the path instead
        assert_eq!(raw_path(b"/old", b"/new path"), b"/new%20path");
        assert_eq!(raw_path(b"", b"/caf\xc3\xa9"), b"/caf%C3%A9");
        assert_eq!(raw_path(b"/x%zz", b"/x%zz"), b"/x%zz");
        assert_eq!(raw_path(b"/x%4", b"/x%4"), b"/x%4");
    }

    #[test]
    fn http_version_and_port_read_as_python_does() {
        assert_eq!(http_version(b"HTTP/1.0"), b"1.0");
        assert_eq!(http_version(b"HTTP/2.0"), b"2");
        assert_eq!(http_version(b"HTTP/3.0"), b"3");
        assert_eq!(http_version(b"HTTP"), b"1.1");
        assert_eq!(port(Some(b"8080")), 8080);
        assert_eq!(port(Some(b"")), 0);
        assert_eq!(port(Some(b"x1")), 0);
        assert_eq!(port(None), 0);
        assert_eq!(header_name(b"HTTP_X_FORWARDED_FOR"), b"x-forwarded-for");
    }

    #[test]
    fn a_response_is_its_head_and_body_in_stdout_records_then_the_end() {
        let out = response_records(3, Some(b"Status: 200 OK\r\n\r\n".to_vec()), &[b'x'; 70_000], false, false);
        let mut dec = fastcgi_server::client::ClientConnection::new(Limits::default());
        dec.feed(&out);
        let mut stdout = Vec::new();
        let mut ended = false;
        while let Some(ev) = dec.next_event().expect("valid records") {
            match ev {
                fastcgi_server::client::ClientEvent::Stdout { id: 3, data } => stdout.extend_from_slice(&data),
                fastcgi_server::client::ClientEvent::EndRequest { id: 3, app_status: 0, .. } => ended = true,
                _ => {}
            }
        }
        assert!(ended);
        assert_eq!(stdout.len(), 18 + 70_000);
        assert!(stdout.starts_with(b"Status: 200 OK\r\n\r\nxx"));
        // HEAD: the head only; more to come: no end
        let head_only = response_records(3, Some(b"H".to_vec()), b"body", true, true);
        assert_eq!(head_only, [1, 6, 0, 3, 0, 1, 0, 0, b'H']);
        assert!(response_records(3, None, b"", true, false).is_empty());
    }
}
