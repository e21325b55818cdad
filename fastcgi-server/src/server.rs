//! The application side: decode what a web server sends, encode the replies.
//!
//! [`ServerConnection`] holds the receive buffer and one small state per active request id:
//!
//! ```text
//! BEGIN_REQUEST ──▶ active ──PARAMS…, empty PARAMS──▶ params done ─┐
//!                     │    ──STDIN…,  empty STDIN ──▶ stdin done  ─┼─▶ input complete: id released
//!                     │    ──DATA…,   empty DATA  ──▶ data done   ─┘   (FILTER only needs DATA)
//!                     └── ABORT_REQUEST, or ServerConnection::end_request ──▶ id released
//! ```
//!
//! A request whose input is complete stays *open* until [`ServerConnection::end_request`]:
//! its response is still being produced, and HAProxy sends ABORT_REQUEST exactly then (the
//! client left while the app was working). Further records for it other than ABORT_REQUEST
//! are skipped, and a BEGIN_REQUEST reusing its id ends it implicitly (callers that never call
//! `end_request` keep working).
//!
//! A RESPONDER's input is complete after PARAMS and STDIN end, an AUTHORIZER's after PARAMS
//! (Apache's mod_authnz_fcgi sends no STDIN at all), a FILTER's after PARAMS, STDIN and DATA.
//! Records for an id that is not active any more are skipped, as the spec says the application
//! must (late STDIN after an early answer, an ABORT_REQUEST crossing END_REQUEST); an unknown
//! role is reported (so the caller can answer `UNKNOWN_ROLE`) but not tracked. PARAMS, STDIN or
//! DATA for an id that never had a BEGIN_REQUEST on the connection, and a record type outside
//! 1 to 11 on a request id, are errors: no web server sends them, so the peer is broken or
//! probing, and skipping them silently would hide it.
use bytes::{BufMut, Bytes, BytesMut};

use crate::params::{decode_pairs, write_pair, ParamsDecoder};
use crate::record::{write_record, Header, RecordReader, RecordType, MANAGEMENT_ID, MAX_CONTENT_LEN};
use crate::{params::Params, record::Padding, Error, Limits, ProtocolStatus, Role};

#[derive(Debug, Clone, PartialEq, Eq)]
/// What a web server sent, one event per complete record (PARAMS: per stream).
pub enum ServerEvent {
    /// A request begins (also for an unknown role, which is not tracked further).
    BeginRequest { id: u16, role: Role, keep_conn: bool },
    /// The whole PARAMS stream of a request, emitted once when its empty record arrives.
    Params { id: u16, params: Params },
    /// One non-empty STDIN record's content.
    Stdin { id: u16, data: Bytes },
    /// The empty STDIN record: the request body is complete.
    StdinEnd { id: u16 },
    /// One non-empty DATA record (FILTER role).
    Data { id: u16, data: Bytes },
    /// The empty DATA record.
    DataEnd { id: u16 },
    /// ABORT_REQUEST for an active request; the id is released.
    Abort { id: u16 },
    /// Management GET_VALUES: answer with [`write_get_values_result`].
    GetValues { names: Vec<Bytes> },
    /// A management record type we do not know: answer with [`write_unknown_type`].
    UnknownType { record_type: u8 },
}

/// What the decoder remembers about one active request.
#[derive(Debug)]
struct RequestState {
    id: u16,
    role: Role,
    /// `None` once the empty PARAMS record arrived.
    params: Option<ParamsDecoder>,
    stdin_done: bool,
    data_done: bool,
    /// All input arrived; kept only so that a late ABORT_REQUEST is still reported.
    input_done: bool,
}

impl RequestState {
    fn input_complete(&self) -> bool {
        let params_done = self.params.is_none();
        match self.role {
            Role::Authorizer => params_done,
            Role::Filter => params_done && self.stdin_done && self.data_done,
            _ => params_done && self.stdin_done,
        }
    }
}

/// The request ids that had a BEGIN_REQUEST on a connection. Web servers use small ids (nginx
/// always 1), which fit the inline word; the full bitmap (8 KiB) is allocated only for others.
#[derive(Debug, Default)]
struct BegunIds {
    low: u64,
    high: Option<Box<[u64; 1024]>>,
}

impl BegunIds {
    fn insert(&mut self, id: u16) {
        if id < 64 {
            self.low |= 1 << id;
        } else {
            let bits = self.high.get_or_insert_with(|| Box::new([0; 1024]));
            bits[usize::from(id / 64)] |= 1 << (id % 64);
        }
    }

    fn contains(&self, id: u16) -> bool {
        if id < 64 {
            self.low & (1 << id) != 0
        } else {
            self.high.as_ref().is_some_and(|bits| bits[usize::from(id / 64)] & (1 << (id % 64)) != 0)
        }
    }
}

/// The application side of one connection: receive buffer plus per-request state.
pub struct ServerConnection {
    reader: RecordReader,
    limits: Limits,
    requests: Vec<RequestState>,
    begun: BegunIds,
}

impl ServerConnection {
    /// A connection with an empty receive buffer.
    pub fn new(limits: Limits) -> Self {
        Self { reader: RecordReader::default(), limits, requests: Vec::new(), begun: BegunIds::default() }
    }
    /// Append received bytes.
    pub fn feed(&mut self, data: &[u8]) {
        self.reader.buf.extend_from_slice(data);
    }
    /// The receive buffer, for reading from a socket straight into it.
    pub fn buffer_mut(&mut self) -> &mut BytesMut {
        &mut self.reader.buf
    }
    /// Bytes received but not yet turned into events (a partial record at EOF means the peer
    /// hung up mid-record).
    pub fn buffered(&self) -> usize {
        self.reader.buf.len()
    }
    /// The limits this connection enforces.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }
    /// Whether `id` has begun and its input is not complete yet.
    pub fn is_active(&self, id: u16) -> bool {
        self.requests.iter().any(|r| r.id == id && !r.input_done)
    }
    /// Whether `id` has begun and [`end_request`](Self::end_request) was not called for it
    /// (an ABORT_REQUEST for it is reported).
    pub fn is_open(&self, id: u16) -> bool {
        self.requests.iter().any(|r| r.id == id)
    }
    /// How many requests are waiting for more input.
    pub fn active_requests(&self) -> usize {
        self.requests.iter().filter(|r| !r.input_done).count()
    }
    /// Forget `id`: call after writing its END_REQUEST. Later records for it are then skipped
    /// (also when the peer had not finished sending its input: an early response, an
    /// authorizer without STDIN) and its id may begin again. Returns whether it was open.
    pub fn end_request(&mut self, id: u16) -> bool {
        match self.requests.iter().position(|r| r.id == id) {
            Some(i) => {
                self.requests.swap_remove(i);
                true
            }
            None => false,
        }
    }

    /// The next complete event, `Ok(None)` when more bytes are needed.
    ///
    /// On `Err` the offending record has been consumed. After a [fatal](Error::is_fatal) error
    /// the caller should close the connection; after `BadVersion` every call returns it again.
    pub fn next_event(&mut self) -> Result<Option<ServerEvent>, Error> {
        while let Some((h, content)) = self.reader.next_record()? {
            if let Some(ev) = self.record(h, content)? {
                return Ok(Some(ev));
            }
        }
        Ok(None)
    }

    /// Consume the complete record at the front of the buffer and interpret it.
    fn record(&mut self, h: Header, content: Bytes) -> Result<Option<ServerEvent>, Error> {
        let id = h.request_id;
        if id == MANAGEMENT_ID {
            return self.management(h.record_type, content);
        }
        match h.record_type {
            RecordType::BeginRequest => self.begin_request(id, &content),
            RecordType::AbortRequest => Ok(self.end_request(id).then_some(ServerEvent::Abort { id })),
            RecordType::Params => self.params(id, content),
            ty @ (RecordType::Stdin | RecordType::Data) => self.input(id, ty, content),
            // Records an application never receives.
            ty @ (RecordType::EndRequest
            | RecordType::Stdout
            | RecordType::Stderr
            | RecordType::GetValues
            | RecordType::GetValuesResult
            | RecordType::UnknownType) => Err(unexpected(id, ty)),
            // FastCGI 1.0 is the last version: no other type will ever be valid.
            RecordType::Other(record_type) => Err(Error::UnknownRecordType { request_id: id, record_type }),
        }
    }

    /// A management record (request id 0): GET_VALUES, or a type this side does not know.
    fn management(&self, ty: RecordType, content: Bytes) -> Result<Option<ServerEvent>, Error> {
        match ty {
            RecordType::GetValues => {
                let params = decode_pairs(content, &self.limits, MANAGEMENT_ID, "FCGI_GET_VALUES")?;
                Ok(Some(ServerEvent::GetValues { names: params.into_iter().map(|(n, _)| n).collect() }))
            }
            RecordType::Other(n) => Ok(Some(ServerEvent::UnknownType { record_type: n })),
            ty => Err(unexpected(MANAGEMENT_ID, ty)),
        }
    }

    /// BEGIN_REQUEST: a new request, unless its id is still active or there are too many.
    fn begin_request(&mut self, id: u16, content: &[u8]) -> Result<Option<ServerEvent>, Error> {
        if content.len() < 8 {
            return Err(Error::BadBeginRequestBody { request_id: id, len: content.len() });
        }
        let role = Role::from_u16(u16::from_be_bytes([content[0], content[1]]));
        let keep_conn = content[2] & crate::record::FCGI_KEEP_CONN != 0;
        // Also a refused or unknown-role request: its later records are skipped.
        self.begun.insert(id);
        if self.is_active(id) {
            return Err(Error::DuplicateRequestId { request_id: id });
        }
        // An open request whose input was complete: the caller answered it without
        // calling `end_request`; the id begins again.
        self.end_request(id);
        if !matches!(role, Role::Unknown(_)) {
            if self.active_requests() >= self.limits.max_concurrent_requests {
                return Err(Error::TooManyRequests { request_id: id, limit: self.limits.max_concurrent_requests });
            }
            self.requests.push(RequestState {
                id,
                role,
                params: Some(ParamsDecoder::new()),
                stdin_done: false,
                data_done: false,
                input_done: false,
            });
        }
        Ok(Some(ServerEvent::BeginRequest { id, role, keep_conn }))
    }

    /// PARAMS: collected within the limits until the empty record that ends them.
    fn params(&mut self, id: u16, content: Bytes) -> Result<Option<ServerEvent>, Error> {
        let Some(i) = self.input_pending(id) else {
            return self.skip_inactive(id, RecordType::Params);
        };
        let req = &mut self.requests[i];
        let Some(dec) = req.params.as_mut() else {
            return Err(Error::RecordAfterStreamEnd { request_id: id, name: "FCGI_PARAMS" });
        };
        if !content.is_empty() {
            if let Err(e) = dec.push(content, &self.limits, id) {
                self.requests.swap_remove(i);
                return Err(e);
            }
            let held = self.params_held();
            let limit = self.limits.max_params_bytes_per_connection;
            if held > limit {
                self.requests.swap_remove(i);
                return Err(Error::ConnectionParamsTooLarge { request_id: id, held, limit });
            }
            return Ok(None);
        }
        let dec = req.params.take().unwrap_or_default();
        match dec.finish(id, "FCGI_PARAMS") {
            Ok(params) => {
                self.release_if_complete(i);
                Ok(Some(ServerEvent::Params { id, params }))
            }
            Err(e) => {
                self.requests.swap_remove(i);
                Err(e)
            }
        }
    }

    /// STDIN or DATA (`ty`): a chunk, or the empty record that ends the stream.
    fn input(&mut self, id: u16, ty: RecordType, content: Bytes) -> Result<Option<ServerEvent>, Error> {
        let stdin = ty == RecordType::Stdin;
        let Some(i) = self.input_pending(id) else {
            return self.skip_inactive(id, ty);
        };
        let req = &mut self.requests[i];
        if req.params.is_some() {
            // A request's environment comes whole before its input (spec 6.2, 6.4): a body
            // byte sent earlier would be read by nobody until the headers time out.
            return Err(Error::InputBeforeParams { request_id: id, name: ty.name() });
        }
        let done = if stdin { &mut req.stdin_done } else { &mut req.data_done };
        if *done {
            return Err(Error::RecordAfterStreamEnd { request_id: id, name: ty.name() });
        }
        if !content.is_empty() {
            return Ok(Some(if stdin {
                ServerEvent::Stdin { id, data: content }
            } else {
                ServerEvent::Data { id, data: content }
            }));
        }
        *done = true;
        self.release_if_complete(i);
        Ok(Some(if stdin { ServerEvent::StdinEnd { id } } else { ServerEvent::DataEnd { id } }))
    }

    /// A PARAMS, STDIN or DATA record for an id that is not active: skipped if the id began
    /// and ended (the spec's inactive id), an error if it never began.
    fn skip_inactive(&self, id: u16, ty: RecordType) -> Result<Option<ServerEvent>, Error> {
        if self.begun.contains(id) {
            return Ok(None);
        }
        Err(Error::RecordWithoutBegin { request_id: id, name: ty.name() })
    }

    /// Mark the request's input complete; it stays open for a late ABORT_REQUEST.
    fn release_if_complete(&mut self, i: usize) {
        let req = &mut self.requests[i];
        if req.input_complete() {
            req.input_done = true;
        }
    }

    /// The index of `id` if it still expects input.
    fn input_pending(&self, id: u16) -> Option<usize> {
        self.requests.iter().position(|r| r.id == id && !r.input_done)
    }

    /// PARAMS bytes of every request still receiving them, for
    /// `Limits::max_params_bytes_per_connection` and a caller's own memory accounting.
    pub fn params_held(&self) -> usize {
        self.requests.iter().filter_map(|r| r.params.as_ref()).map(ParamsDecoder::total_bytes).sum()
    }
}

impl std::fmt::Debug for ServerConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerConnection")
            .field("buffered", &self.reader.buf.len())
            .field("active", &self.requests.iter().map(|r| r.id).collect::<Vec<_>>())
            .field("broken", &self.reader.broken)
            .finish_non_exhaustive()
    }
}

fn write_stream(out: &mut impl BufMut, ty: RecordType, id: u16, data: &[u8], padding: Padding) {
    for chunk in data.chunks(MAX_CONTENT_LEN) {
        write_record(out, ty, id, chunk, padding);
    }
}

/// STDOUT content, split into records of at most 65535 bytes; empty `data` writes nothing.
pub fn write_stdout(out: &mut impl BufMut, id: u16, data: &[u8], padding: Padding) {
    write_stream(out, RecordType::Stdout, id, data, padding);
}
/// STDERR content, split like [`write_stdout`]; empty `data` writes nothing.
pub fn write_stderr(out: &mut impl BufMut, id: u16, data: &[u8], padding: Padding) {
    write_stream(out, RecordType::Stderr, id, data, padding);
}
/// The end of a request: empty STDOUT, then END_REQUEST.
pub fn write_end_request(out: &mut impl BufMut, id: u16, app_status: u32, status: ProtocolStatus, padding: Padding) {
    write_record(out, RecordType::Stdout, id, &[], padding);
    let s = app_status.to_be_bytes();
    let body = [s[0], s[1], s[2], s[3], status.as_u8(), 0, 0, 0];
    write_record(out, RecordType::EndRequest, id, &body, padding);
}
/// One GET_VALUES_RESULT record. Pairs that would push it past 65535 bytes are left out.
pub fn write_get_values_result<'a>(out: &mut impl BufMut, pairs: impl IntoIterator<Item = (&'a [u8], &'a [u8])>) {
    write_management_pairs(out, RecordType::GetValuesResult, pairs);
}
/// One UNKNOWN_TYPE record naming the management record type we did not understand.
pub fn write_unknown_type(out: &mut impl BufMut, record_type: u8) {
    let body = [record_type, 0, 0, 0, 0, 0, 0, 0];
    write_record(out, RecordType::UnknownType, MANAGEMENT_ID, &body, Padding::None);
}

/// A management record of name-value pairs, which must fit one record.
pub(crate) fn write_management_pairs<'a>(
    out: &mut impl BufMut,
    ty: RecordType,
    pairs: impl IntoIterator<Item = (&'a [u8], &'a [u8])>,
) {
    let mut body = Vec::new();
    for (n, v) in pairs {
        if body.len() + crate::params::pair_len(n, v) > MAX_CONTENT_LEN {
            continue;
        }
        write_pair(&mut body, n, v);
    }
    write_record(out, ty, MANAGEMENT_ID, &body, Padding::None);
}

/// A record of a type the web server never sends on this id.
fn unexpected(id: u16, ty: RecordType) -> Error {
    Error::UnexpectedRecord { request_id: id, record_type: ty.as_u8(), name: ty.name(), peer: "web server" }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client;

    fn conn() -> ServerConnection {
        ServerConnection::new(Limits::default())
    }

    fn drain(c: &mut ServerConnection) -> Vec<ServerEvent> {
        let mut v = Vec::new();
        while let Some(e) = c.next_event().expect("event") {
            v.push(e);
        }
        v
    }

    fn begin(out: &mut Vec<u8>, id: u16, role: u16, flags: u8) {
        let r = role.to_be_bytes();
        write_record(out, RecordType::BeginRequest, id, &[r[0], r[1], flags, 0, 0, 0, 0, 0], Padding::None);
    }

    #[test]
    fn responder_request() {
        let mut b = Vec::new();
        client::write_begin_request(&mut b, 1, Role::Responder, true);
        client::write_params(&mut b, 1, [(&b"REQUEST_METHOD"[..], &b"POST"[..]), (b"CONTENT_LENGTH", b"5")]);
        client::write_stdin(&mut b, 1, b"hello");
        client::write_stdin_end(&mut b, 1);
        let mut c = conn();
        c.feed(&b);
        let ev = drain(&mut c);
        assert_eq!(ev.len(), 4);
        assert_eq!(ev[0], ServerEvent::BeginRequest { id: 1, role: Role::Responder, keep_conn: true });
        match &ev[1] {
            ServerEvent::Params { id: 1, params } => {
                assert_eq!(params.get(b"REQUEST_METHOD"), Some(&b"POST"[..]));
                assert_eq!(params.len(), 2);
            }
            e => panic!("{e:?}"),
        }
        assert_eq!(ev[2], ServerEvent::Stdin { id: 1, data: Bytes::from_static(b"hello") });
        assert_eq!(ev[3], ServerEvent::StdinEnd { id: 1 });
        assert!(!c.is_active(1));
        assert_eq!(c.buffered(), 0);
        // keep-conn: the same id again
        c.feed(&b);
        assert_eq!(drain(&mut c).len(), 4);
    }

    #[test]
    fn padding_is_skipped() {
        let mut b = Vec::new();
        begin(&mut b, 2, 1, 0);
        let mut p = Vec::new();
        write_pair(&mut p, b"A", b"B");
        write_record(&mut b, RecordType::Params, 2, &p, Padding::Align8);
        write_record(&mut b, RecordType::Params, 2, &[], Padding::Align8);
        write_record(&mut b, RecordType::Stdin, 2, b"xyz", Padding::Align8);
        let mut c = conn();
        c.feed(&b);
        let ev = drain(&mut c);
        assert_eq!(ev.len(), 3);
        assert_eq!(ev[2], ServerEvent::Stdin { id: 2, data: Bytes::from_static(b"xyz") });
    }

    #[test]
    fn incomplete_record_waits() {
        let mut b = Vec::new();
        client::write_stdin(&mut b, 1, b"abc");
        let mut c = conn();
        c.feed(&b[..5]);
        assert_eq!(c.next_event(), Ok(None));
        c.feed(&b[5..10]);
        assert_eq!(c.next_event(), Ok(None));
    }

    #[test]
    fn authorizer_and_filter_and_unknown_role() {
        let mut b = Vec::new();
        begin(&mut b, 1, 2, 0);
        client::write_params(&mut b, 1, []);
        let mut c = conn();
        c.feed(&b);
        let ev = drain(&mut c);
        assert_eq!(ev[0], ServerEvent::BeginRequest { id: 1, role: Role::Authorizer, keep_conn: false });
        assert_eq!(ev[1], ServerEvent::Params { id: 1, params: Params::default() });
        assert!(!c.is_active(1), "an authorizer's input ends with PARAMS");

        let mut b = Vec::new();
        begin(&mut b, 3, 3, 0);
        client::write_params(&mut b, 3, []);
        client::write_stdin_end(&mut b, 3);
        write_record(&mut b, RecordType::Data, 3, b"file", Padding::None);
        write_record(&mut b, RecordType::Data, 3, b"", Padding::None);
        c.feed(&b);
        let ev = drain(&mut c);
        assert_eq!(ev[3], ServerEvent::Data { id: 3, data: Bytes::from_static(b"file") });
        assert_eq!(ev[4], ServerEvent::DataEnd { id: 3 });
        assert!(!c.is_active(3));

        let mut b = Vec::new();
        begin(&mut b, 4, 99, 1);
        client::write_params(&mut b, 4, [(&b"A"[..], &b"B"[..])]);
        c.feed(&b);
        let ev = drain(&mut c);
        assert_eq!(ev, vec![ServerEvent::BeginRequest { id: 4, role: Role::Unknown(99), keep_conn: true }]);
    }

    #[test]
    fn multiplexed_and_abort() {
        let mut b = Vec::new();
        for id in [5u16, 6] {
            client::write_begin_request(&mut b, id, Role::Responder, true);
        }
        client::write_params(&mut b, 6, [(&b"X"[..], &b"6"[..])]);
        client::write_params(&mut b, 5, [(&b"X"[..], &b"5"[..])]);
        client::write_abort(&mut b, 5);
        client::write_abort(&mut b, 5); // no longer active: skipped
        client::write_stdin(&mut b, 5, b"ignored");
        client::write_stdin_end(&mut b, 6);
        let mut c = conn();
        c.feed(&b);
        let ev = drain(&mut c);
        assert_eq!(ev.len(), 6, "{ev:?}");
        assert_eq!(ev[4], ServerEvent::Abort { id: 5 });
        assert_eq!(ev[5], ServerEvent::StdinEnd { id: 6 });
        assert_eq!(c.active_requests(), 0);
    }

    #[test]
    fn abort_after_complete_input_is_reported_until_end_request() {
        // HAProxy's case: the whole request arrived, the app is working, the client leaves.
        let mut b = Vec::new();
        client::write_begin_request(&mut b, 3, Role::Responder, true);
        client::write_params(&mut b, 3, [(&b"A"[..], &b"B"[..])]);
        client::write_stdin_end(&mut b, 3);
        let mut c = conn();
        c.feed(&b);
        assert_eq!(drain(&mut c).len(), 3);
        assert!(!c.is_active(3) && c.is_open(3));
        assert_eq!(c.active_requests(), 0);
        let mut b = Vec::new();
        client::write_stdin(&mut b, 3, b"late body"); // skipped, not an error
        client::write_abort(&mut b, 3);
        client::write_abort(&mut b, 3); // released by the first: skipped
        c.feed(&b);
        assert_eq!(drain(&mut c), vec![ServerEvent::Abort { id: 3 }]);
        assert!(!c.is_open(3));

        // After end_request an ABORT is for nothing and is skipped.
        let mut b = Vec::new();
        client::write_begin_request(&mut b, 4, Role::Authorizer, false);
        client::write_params(&mut b, 4, []);
        c.feed(&b);
        assert_eq!(drain(&mut c).len(), 2);
        assert!(c.is_open(4));
        assert!(c.end_request(4));
        let mut b = Vec::new();
        client::write_abort(&mut b, 4);
        c.feed(&b);
        assert_eq!(drain(&mut c), vec![]);
    }

    #[test]
    fn error_params_held_per_connection() {
        let l = Limits { max_params_bytes: 100, max_params_bytes_per_connection: 150, ..Limits::default() };
        let mut pair = Vec::new();
        write_pair(&mut pair, b"NAME", &[b'v'; 60]);
        let mut b = Vec::new();
        for id in [1u16, 2, 3] {
            client::write_begin_request(&mut b, id, Role::Responder, true);
            write_record(&mut b, RecordType::Params, id, &pair, Padding::None);
        }
        let mut c = ServerConnection::new(l);
        c.feed(&b);
        for _ in 0..3 {
            assert!(c.next_event().expect("begin").is_some());
        }
        let e = c.next_event().unwrap_err();
        assert_eq!(e, Error::ConnectionParamsTooLarge { request_id: 3, held: 3 * pair.len(), limit: 150 });
        assert_eq!(e.request_id(), Some(3));
        assert!(e.is_fatal());
        assert!(!c.is_open(3) && c.is_active(1) && c.is_active(2));
    }

    #[test]
    fn management_records() {
        let mut b = Vec::new();
        client::write_get_values(&mut b, [&b"FCGI_MAX_CONNS"[..], b"FCGI_MPXS_CONNS"]);
        write_record(&mut b, RecordType::Other(42), 0, b"??", Padding::None);
        let mut c = conn();
        c.feed(&b);
        let ev = drain(&mut c);
        assert_eq!(
            ev,
            vec![
                ServerEvent::GetValues {
                    names: vec![Bytes::from_static(b"FCGI_MAX_CONNS"), Bytes::from_static(b"FCGI_MPXS_CONNS")]
                },
                ServerEvent::UnknownType { record_type: 42 },
            ]
        );
    }

    #[test]
    fn records_for_ended_ids_are_skipped() {
        let mut b = Vec::new();
        client::write_begin_request(&mut b, 9, Role::Responder, true);
        client::write_abort(&mut b, 9);
        client::write_params(&mut b, 9, [(&b"A"[..], &b"B"[..])]);
        client::write_stdin(&mut b, 9, b"x");
        client::write_stdin_end(&mut b, 9);
        write_record(&mut b, RecordType::Data, 9, b"", Padding::None);
        // an id above the inline word, ended by the caller (an early answer)
        client::write_begin_request(&mut b, 700, Role::Responder, true);
        let mut c = conn();
        c.feed(&b);
        assert_eq!(drain(&mut c).len(), 3);
        assert!(c.end_request(700));
        let mut b = Vec::new();
        client::write_stdin(&mut b, 700, b"late");
        client::write_abort(&mut b, 700);
        // an ABORT_REQUEST for an id that never began is harmless too
        client::write_abort(&mut b, 8);
        c.feed(&b);
        assert_eq!(drain(&mut c), vec![]);
    }

    #[test]
    fn error_records_for_ids_that_never_began() {
        let cases: [(RecordType, u16, &'static str); 5] = [
            (RecordType::Params, 9, "FCGI_PARAMS"),
            (RecordType::Stdin, 9, "FCGI_STDIN"),
            (RecordType::Data, 9, "FCGI_DATA"),
            (RecordType::Stdin, 64, "FCGI_STDIN"),
            (RecordType::Params, 65535, "FCGI_PARAMS"),
        ];
        for (ty, id, name) in cases {
            for content in [&b""[..], b"x"] {
                let mut b = Vec::new();
                // another id begun (and its bitmap word allocated) changes nothing
                client::write_begin_request(&mut b, 1, Role::Responder, true);
                client::write_begin_request(&mut b, 700, Role::Responder, true);
                write_record(&mut b, ty, id, content, Padding::None);
                let mut c = conn();
                c.feed(&b);
                assert!(c.next_event().expect("begin").is_some());
                assert!(c.next_event().expect("begin").is_some());
                let e = c.next_event().unwrap_err();
                assert_eq!(e, Error::RecordWithoutBegin { request_id: id, name });
                assert!(e.is_fatal());
                assert_eq!(e.request_id(), Some(id));
            }
        }
    }

    #[test]
    fn error_record_type_outside_the_protocol() {
        for (ty, id) in [(0u8, 1u16), (0, 9), (12, 1), (77, 9), (255, 1)] {
            let mut b = Vec::new();
            client::write_begin_request(&mut b, 1, Role::Responder, true);
            write_record(&mut b, RecordType::Other(ty), id, b"future", Padding::None);
            let mut c = conn();
            c.feed(&b);
            assert!(c.next_event().expect("begin").is_some());
            let e = c.next_event().unwrap_err();
            assert_eq!(e, Error::UnknownRecordType { request_id: id, record_type: ty });
            assert!(e.is_fatal());
        }
        // on the management id an unknown type is answered, as the spec says
        let mut b = Vec::new();
        write_record(&mut b, RecordType::Other(0), 0, b"", Padding::None);
        let mut c = conn();
        c.feed(&b);
        assert_eq!(drain(&mut c), vec![ServerEvent::UnknownType { record_type: 0 }]);
    }

    #[test]
    fn error_bad_version_is_sticky() {
        let mut c = conn();
        c.feed(b"\x02\x01\x00\x01\x00\x08\x00\x00");
        assert_eq!(c.next_event(), Err(Error::BadVersion(2)));
        assert_eq!(c.next_event(), Err(Error::BadVersion(2)));
        assert!(Error::BadVersion(2).is_fatal());
    }

    #[test]
    fn error_short_begin_body() {
        let mut c = conn();
        let mut b = Vec::new();
        write_record(&mut b, RecordType::BeginRequest, 1, &[0, 1, 0], Padding::None);
        c.feed(&b);
        assert_eq!(c.next_event(), Err(Error::BadBeginRequestBody { request_id: 1, len: 3 }));
    }

    #[test]
    fn error_duplicate_request_id() {
        let mut b = Vec::new();
        client::write_begin_request(&mut b, 1, Role::Responder, false);
        client::write_begin_request(&mut b, 1, Role::Responder, false);
        let mut c = conn();
        c.feed(&b);
        assert!(c.next_event().expect("first").is_some());
        let e = c.next_event().unwrap_err();
        assert_eq!(e, Error::DuplicateRequestId { request_id: 1 });
        assert_eq!(e.request_id(), Some(1));
        // after end_request the id may begin again
        assert!(c.end_request(1));
        c.feed(&b[..16]);
        assert!(c.next_event().expect("again").is_some());
    }

    #[test]
    fn error_too_many_requests_is_recoverable() {
        let mut b = Vec::new();
        for id in 1..=3 {
            client::write_begin_request(&mut b, id, Role::Responder, true);
        }
        client::write_params(&mut b, 3, [(&b"A"[..], &b"B"[..])]);
        client::write_params(&mut b, 2, []);
        let mut c = ServerConnection::new(Limits { max_concurrent_requests: 2, ..Limits::default() });
        c.feed(&b);
        assert!(c.next_event().expect("1").is_some());
        assert!(c.next_event().expect("2").is_some());
        let e = c.next_event().unwrap_err();
        assert_eq!(e, Error::TooManyRequests { request_id: 3, limit: 2 });
        assert!(!e.is_fatal());
        // the refused request's records are skipped; others carry on
        assert_eq!(c.next_event(), Ok(Some(ServerEvent::Params { id: 2, params: Params::default() })));
    }

    #[test]
    fn error_params_limits_carry_request_id() {
        let l = Limits { max_params_bytes: 10, ..Limits::default() };
        let mut b = Vec::new();
        client::write_begin_request(&mut b, 7, Role::Responder, false);
        client::write_params(&mut b, 7, [(&b"NAME"[..], &b"0123456789"[..])]);
        let mut c = ServerConnection::new(l);
        c.feed(&b);
        assert!(c.next_event().expect("begin").is_some());
        let e = c.next_event().unwrap_err();
        assert_eq!(e, Error::ParamsTooLarge { request_id: 7, len: 16, limit: 10 });
        assert!(!e.is_fatal() && e.is_header_limit());
        assert!(!c.is_active(7));
        assert_eq!(c.next_event(), Ok(None), "the terminator of a dropped request is skipped");
        // Not fatal: its STDIN is skipped, and the connection carries the next request.
        let mut more = Vec::new();
        write_record(&mut more, RecordType::Stdin, 7, b"body", Padding::None);
        client::write_begin_request(&mut more, 7, Role::Responder, false);
        client::write_params(&mut more, 7, [(&b"A"[..], &b"1"[..])]);
        c.feed(&more);
        assert!(matches!(c.next_event(), Ok(Some(ServerEvent::BeginRequest { id: 7, .. }))));
        assert!(matches!(c.next_event(), Ok(Some(ServerEvent::Params { id: 7, .. }))));
    }

    #[test]
    fn error_truncated_pair_at_end_of_params() {
        let mut b = Vec::new();
        client::write_begin_request(&mut b, 1, Role::Responder, false);
        write_record(&mut b, RecordType::Params, 1, b"\x05\x05abc", Padding::None);
        write_record(&mut b, RecordType::Params, 1, b"", Padding::None);
        let mut c = conn();
        c.feed(&b);
        assert!(c.next_event().expect("begin").is_some());
        assert_eq!(c.next_event(), Err(Error::TruncatedPair { request_id: 1, record_type: "FCGI_PARAMS", pending: 5 }));
    }

    #[test]
    fn error_unexpected_records() {
        for (ty, id) in [
            (RecordType::Stdout, 1),
            (RecordType::Stderr, 1),
            (RecordType::EndRequest, 1),
            (RecordType::GetValuesResult, 0),
            (RecordType::UnknownType, 0),
            (RecordType::BeginRequest, 0),
            (RecordType::GetValues, 1),
        ] {
            let mut b = Vec::new();
            write_record(&mut b, ty, id, &[0; 8], Padding::None);
            let mut c = conn();
            c.feed(&b);
            assert_eq!(
                c.next_event(),
                Err(Error::UnexpectedRecord {
                    request_id: id,
                    record_type: ty.as_u8(),
                    name: ty.name(),
                    peer: "web server"
                })
            );
        }
    }

    #[test]
    fn error_record_after_stream_end() {
        let mut b = Vec::new();
        begin(&mut b, 1, 3, 0);
        client::write_params(&mut b, 1, []);
        write_record(&mut b, RecordType::Params, 1, b"\x01\x01AB", Padding::None);
        let mut c = conn();
        c.feed(&b);
        drain_until_err(&mut c, Error::RecordAfterStreamEnd { request_id: 1, name: "FCGI_PARAMS" });
        let mut b = Vec::new();
        begin(&mut b, 1, 3, 0);
        client::write_params(&mut b, 1, []);
        client::write_stdin_end(&mut b, 1);
        client::write_stdin(&mut b, 1, b"late");
        let mut c = conn();
        c.feed(&b);
        drain_until_err(&mut c, Error::RecordAfterStreamEnd { request_id: 1, name: "FCGI_STDIN" });
        // Input before the PARAMS stream ended.
        let mut b = Vec::new();
        begin(&mut b, 1, 3, 0);
        write_record(&mut b, RecordType::Params, 1, b"\x01\x01AB", Padding::None);
        client::write_stdin(&mut b, 1, b"early");
        let mut c = conn();
        c.feed(&b);
        drain_until_err(&mut c, Error::InputBeforeParams { request_id: 1, name: "FCGI_STDIN" });
    }

    fn drain_until_err(c: &mut ServerConnection, want: Error) {
        loop {
            match c.next_event() {
                Ok(Some(_)) => {}
                Ok(None) => panic!("no error"),
                Err(e) => {
                    assert_eq!(e, want);
                    return;
                }
            }
        }
    }

    #[test]
    fn encoders() {
        let mut out = Vec::new();
        write_stdout(&mut out, 1, b"", Padding::None);
        assert!(out.is_empty());
        let data = vec![1u8; 70000];
        write_stdout(&mut out, 1, &data, Padding::None);
        assert_eq!(out.len(), 16 + 70000);
        assert_eq!(&out[..8], b"\x01\x06\x00\x01\xff\xff\x00\x00");
        assert_eq!(&out[8 + 65535..8 + 65535 + 8], b"\x01\x06\x00\x01\x11\x71\x00\x00");
        out.clear();
        write_stderr(&mut out, 2, b"oops", Padding::Align8);
        assert_eq!(out, b"\x01\x07\x00\x02\x00\x04\x04\x00oops\0\0\0\0");
        out.clear();
        write_end_request(&mut out, 1, 0x01020304, ProtocolStatus::Overloaded, Padding::None);
        assert_eq!(
            out,
            b"\x01\x06\x00\x01\x00\x00\x00\x00\x01\x03\x00\x01\x00\x08\x00\x00\x01\x02\x03\x04\x02\x00\x00\x00"
        );
        out.clear();
        write_unknown_type(&mut out, 42);
        assert_eq!(out, b"\x01\x0b\x00\x00\x00\x08\x00\x00\x2a\0\0\0\0\0\0\0");
        out.clear();
        write_get_values_result(&mut out, [(&b"FCGI_MPXS_CONNS"[..], &b"1"[..])]);
        assert_eq!(&out[..8], b"\x01\x0a\x00\x00\x00\x12\x00\x00");
        assert_eq!(&out[8..], b"\x0f\x01FCGI_MPXS_CONNS1");
        out.clear();
        let big = vec![b'v'; 40000];
        write_get_values_result(&mut out, [(&b"A"[..], &big[..]), (&b"B"[..], &big[..]), (&b"C"[..], &b"1"[..])]);
        let h = Header::peek(&out).expect("header");
        assert_eq!(h.record_len(), out.len(), "a single record");
        assert_eq!(h.content_length as usize, 40006 + 4, "B left out, C kept");
    }
}
