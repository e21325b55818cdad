//! The web-server side: encode requests, decode an application's replies.
//!
//! The bridge uses this toward its workers. [`ClientConnection`] keeps no per-request state:
//! the caller knows which ids it started, and every reply record names its id.
use bytes::{BufMut, Bytes, BytesMut};

use crate::params::{decode_pairs, pair_len, write_pair};
use crate::record::{
    write_header, write_record, Header, Padding, RecordReader, RecordType, MANAGEMENT_ID, MAX_CONTENT_LEN,
};
use crate::server::write_management_pairs;
use crate::{params::Params, Error, Limits, ProtocolStatus, Role};

#[derive(Debug, Clone, PartialEq, Eq)]
/// What an application sent, one event per record.
pub enum ClientEvent {
    /// Response bytes (one non-empty STDOUT record).
    Stdout { id: u16, data: Bytes },
    /// The empty STDOUT record that ends the response stream.
    StdoutEnd { id: u16 },
    /// Error-stream bytes (one non-empty STDERR record).
    Stderr { id: u16, data: Bytes },
    /// The empty STDERR record that ends the error stream.
    StderrEnd { id: u16 },
    /// The request is over; nothing more comes for `id`.
    EndRequest { id: u16, app_status: u32, protocol_status: ProtocolStatus },
    /// The answer to a GET_VALUES query.
    GetValuesResult { values: Params },
    /// The application did not understand a management record of this type.
    UnknownType { record_type: u8 },
}

/// The web-server side of one connection: decodes the application's replies.
pub struct ClientConnection {
    reader: RecordReader,
    limits: Limits,
}

impl ClientConnection {
    /// A connection with an empty receive buffer.
    pub fn new(limits: Limits) -> Self {
        Self { reader: RecordReader::default(), limits }
    }
    /// Append received bytes.
    pub fn feed(&mut self, data: &[u8]) {
        self.reader.buf.extend_from_slice(data);
    }
    /// The receive buffer, for reading from a socket straight into it.
    pub fn buffer_mut(&mut self) -> &mut BytesMut {
        &mut self.reader.buf
    }
    /// Bytes received but not yet turned into events.
    pub fn buffered(&self) -> usize {
        self.reader.buf.len()
    }
    /// The next complete event, `Ok(None)` when more bytes are needed. On `Err` the offending
    /// record has been consumed; after `BadVersion` every call returns it again.
    pub fn next_event(&mut self) -> Result<Option<ClientEvent>, Error> {
        while let Some((h, content)) = self.reader.next_record()? {
            if let Some(ev) = self.record(h, content)? {
                return Ok(Some(ev));
            }
        }
        Ok(None)
    }

    fn record(&mut self, h: Header, content: Bytes) -> Result<Option<ClientEvent>, Error> {
        let id = h.request_id;
        let unexpected = |ty: RecordType| Error::UnexpectedRecord {
            request_id: id,
            record_type: ty.as_u8(),
            name: ty.name(),
            peer: "application",
        };
        let management = id == MANAGEMENT_ID;
        Ok(Some(match h.record_type {
            RecordType::Stdout if !management => match content.is_empty() {
                true => ClientEvent::StdoutEnd { id },
                false => ClientEvent::Stdout { id, data: content },
            },
            RecordType::Stderr if !management => match content.is_empty() {
                true => ClientEvent::StderrEnd { id },
                false => ClientEvent::Stderr { id, data: content },
            },
            RecordType::EndRequest if !management => {
                let b: &[u8; 8] = content
                    .get(..8)
                    .and_then(|s| s.try_into().ok())
                    .ok_or(Error::BadEndRequestBody { request_id: id, len: content.len() })?;
                ClientEvent::EndRequest {
                    id,
                    app_status: u32::from_be_bytes([b[0], b[1], b[2], b[3]]),
                    protocol_status: ProtocolStatus::from_u8(b[4]),
                }
            }
            RecordType::GetValuesResult if management => ClientEvent::GetValuesResult {
                values: decode_pairs(content, &self.limits, id, "FCGI_GET_VALUES_RESULT")?,
            },
            RecordType::UnknownType if management => match content.first() {
                Some(&t) if content.len() >= 8 => ClientEvent::UnknownType { record_type: t },
                _ => return Err(Error::BadUnknownTypeBody { len: content.len() }),
            },
            // A record type from a later protocol revision: skip it.
            RecordType::Other(_) => return Ok(None),
            ty => return Err(unexpected(ty)),
        }))
    }
}

impl std::fmt::Debug for ClientConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientConnection")
            .field("buffered", &self.reader.buf.len())
            .field("broken", &self.reader.broken)
            .finish_non_exhaustive()
    }
}

/// BEGIN_REQUEST for `id` in `role`; `keep_conn` asks the application to keep the connection open.
pub fn write_begin_request(out: &mut impl BufMut, id: u16, role: Role, keep_conn: bool) {
    let r = role.as_u16().to_be_bytes();
    let flags = if keep_conn { crate::record::FCGI_KEEP_CONN } else { 0 };
    write_record(out, RecordType::BeginRequest, id, &[r[0], r[1], flags, 0, 0, 0, 0, 0], Padding::None);
}
/// The whole PARAMS stream including its terminating empty record.
///
/// Records are cut on pair boundaries (up to 65535 bytes each), as Apache does: some
/// application-side parsers (PHP's among them) decode each PARAMS record on its own and break
/// on a pair split across two. Only a single pair larger than a record has to straddle records.
pub fn write_params<'a>(out: &mut impl BufMut, id: u16, pairs: impl IntoIterator<Item = (&'a [u8], &'a [u8])>) {
    let pairs = pairs.into_iter();
    let mut rec = Vec::with_capacity((pairs.size_hint().0 * 32).min(MAX_CONTENT_LEN));
    fn flush(out: &mut impl BufMut, id: u16, content: &[u8]) {
        write_header(out, RecordType::Params, id, content.len(), 0);
        out.put_slice(content);
    }
    for (n, v) in pairs {
        let len = pair_len(n, v);
        if !rec.is_empty() && rec.len() + len > MAX_CONTENT_LEN {
            flush(out, id, &rec);
            rec.clear();
        }
        write_pair(&mut rec, n, v);
        if rec.len() > MAX_CONTENT_LEN {
            let mut start = 0;
            while rec.len() - start > MAX_CONTENT_LEN {
                flush(out, id, &rec[start..start + MAX_CONTENT_LEN]);
                start += MAX_CONTENT_LEN;
            }
            rec.drain(..start);
        }
    }
    if !rec.is_empty() {
        flush(out, id, &rec);
    }
    write_header(out, RecordType::Params, id, 0, 0);
}
/// STDIN content split into records; empty `data` writes nothing.
pub fn write_stdin(out: &mut impl BufMut, id: u16, data: &[u8]) {
    for chunk in data.chunks(MAX_CONTENT_LEN) {
        write_record(out, RecordType::Stdin, id, chunk, Padding::None);
    }
}
/// The empty STDIN record that ends the request body.
pub fn write_stdin_end(out: &mut impl BufMut, id: u16) {
    write_record(out, RecordType::Stdin, id, &[], Padding::None);
}
/// DATA content (FILTER role) split into records; empty `data` writes nothing.
pub fn write_data(out: &mut impl BufMut, id: u16, data: &[u8]) {
    for chunk in data.chunks(MAX_CONTENT_LEN) {
        write_record(out, RecordType::Data, id, chunk, Padding::None);
    }
}
/// The empty DATA record that ends a FILTER's data stream.
pub fn write_data_end(out: &mut impl BufMut, id: u16) {
    write_record(out, RecordType::Data, id, &[], Padding::None);
}
/// ABORT_REQUEST: the client went away; the application should end `id` soon.
pub fn write_abort(out: &mut impl BufMut, id: u16) {
    write_record(out, RecordType::AbortRequest, id, &[], Padding::None);
}
/// One GET_VALUES record (names with empty values). Names past 65535 bytes are left out.
pub fn write_get_values<'a>(out: &mut impl BufMut, names: impl IntoIterator<Item = &'a [u8]>) {
    write_management_pairs(out, RecordType::GetValues, names.into_iter().map(|n| (n, &[][..])));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::{self, ServerConnection, ServerEvent};

    fn drain(c: &mut ClientConnection) -> Vec<ClientEvent> {
        let mut v = Vec::new();
        while let Some(e) = c.next_event().expect("event") {
            v.push(e);
        }
        v
    }

    #[test]
    fn response_sequence() {
        let mut b = Vec::new();
        server::write_stdout(&mut b, 3, b"Status: 200 OK\r\n\r\nhi", Padding::Align8);
        server::write_stderr(&mut b, 3, b"warn", Padding::None);
        write_record(&mut b, RecordType::Stderr, 3, b"", Padding::None);
        server::write_end_request(&mut b, 3, 7, ProtocolStatus::RequestComplete, Padding::Align8);
        let mut c = ClientConnection::new(Limits::default());
        c.feed(&b);
        let ev = drain(&mut c);
        assert_eq!(
            ev,
            vec![
                ClientEvent::Stdout { id: 3, data: Bytes::from_static(b"Status: 200 OK\r\n\r\nhi") },
                ClientEvent::Stderr { id: 3, data: Bytes::from_static(b"warn") },
                ClientEvent::StderrEnd { id: 3 },
                ClientEvent::StdoutEnd { id: 3 },
                ClientEvent::EndRequest { id: 3, app_status: 7, protocol_status: ProtocolStatus::RequestComplete },
            ]
        );
    }

    #[test]
    fn management_replies() {
        let mut b = Vec::new();
        server::write_get_values_result(&mut b, [(&b"FCGI_MAX_REQS"[..], &b"10"[..]), (b"FCGI_MPXS_CONNS", b"0")]);
        server::write_unknown_type(&mut b, 200);
        write_record(&mut b, RecordType::Other(99), 0, b"skip me", Padding::None);
        let mut c = ClientConnection::new(Limits::default());
        c.feed(&b);
        let ev = drain(&mut c);
        assert_eq!(ev.len(), 2);
        match &ev[0] {
            ClientEvent::GetValuesResult { values } => {
                assert_eq!(values.get(b"FCGI_MAX_REQS"), Some(&b"10"[..]))
            }
            e => panic!("{e:?}"),
        }
        assert_eq!(ev[1], ClientEvent::UnknownType { record_type: 200 });
    }

    #[test]
    fn errors() {
        let cases: Vec<(Vec<u8>, Error)> = vec![
            (b"\x00\x06\x00\x01\x00\x00\x00\x00".to_vec(), Error::BadVersion(0)),
            (
                b"\x01\x03\x00\x01\x00\x04\x00\x00\x00\x00\x00\x00".to_vec(),
                Error::BadEndRequestBody { request_id: 1, len: 4 },
            ),
            (b"\x01\x0b\x00\x00\x00\x01\x00\x00\x05".to_vec(), Error::BadUnknownTypeBody { len: 1 }),
            (
                b"\x01\x01\x00\x01\x00\x00\x00\x00".to_vec(),
                Error::UnexpectedRecord {
                    request_id: 1,
                    record_type: 1,
                    name: "FCGI_BEGIN_REQUEST",
                    peer: "application",
                },
            ),
            (
                b"\x01\x06\x00\x00\x00\x00\x00\x00".to_vec(),
                Error::UnexpectedRecord { request_id: 0, record_type: 6, name: "FCGI_STDOUT", peer: "application" },
            ),
            (
                b"\x01\x0a\x00\x00\x00\x02\x00\x00\x05\x00".to_vec(),
                Error::TruncatedPair { request_id: 0, record_type: "FCGI_GET_VALUES_RESULT", pending: 2 },
            ),
        ];
        for (bytes, want) in cases {
            let mut c = ClientConnection::new(Limits::default());
            c.feed(&bytes);
            assert_eq!(c.next_event(), Err(want));
        }
    }

    #[test]
    fn request_encoders_round_trip() {
        let mut b = Vec::new();
        write_begin_request(&mut b, 1, Role::Filter, false);
        assert_eq!(&b[..], b"\x01\x01\x00\x01\x00\x08\x00\x00\x00\x03\x00\x00\x00\x00\x00\x00");
        let big = vec![b'x'; 100_000];
        write_params(&mut b, 1, [(&b"BIG"[..], &big[..]), (b"A", b"b")]);
        write_stdin(&mut b, 1, &big);
        write_stdin_end(&mut b, 1);
        write_data(&mut b, 1, b"dd");
        write_data_end(&mut b, 1);
        let mut s = ServerConnection::new(Limits::default());
        s.feed(&b);
        let mut stdin = 0;
        let mut evs = Vec::new();
        while let Some(e) = s.next_event().expect("event") {
            match e {
                ServerEvent::Stdin { data, .. } => stdin += data.len(),
                ServerEvent::Params { params, .. } => {
                    assert_eq!(params.get(b"BIG").map(<[u8]>::len), Some(100_000));
                    assert_eq!(params.get(b"A"), Some(&b"b"[..]));
                    evs.push("params")
                }
                ServerEvent::BeginRequest { .. } => evs.push("begin"),
                ServerEvent::StdinEnd { .. } => evs.push("stdin end"),
                ServerEvent::Data { .. } => evs.push("data"),
                ServerEvent::DataEnd { .. } => evs.push("data end"),
                e => panic!("{e:?}"),
            }
        }
        assert_eq!(stdin, 100_000);
        assert_eq!(evs, ["begin", "params", "stdin end", "data", "data end"]);
    }

    #[test]
    fn params_records_end_on_pair_boundaries() {
        let v = vec![b'v'; 30000];
        let big = vec![b'w'; 140_000];
        let mut b = Vec::new();
        write_params(&mut b, 1, [(&b"A"[..], &v[..]), (b"B", &v), (b"C", &v), (b"D", &big), (b"E", b"e")]);
        let mut lens = Vec::new();
        let mut pos = 0;
        while let Some(h) = Header::peek(&b[pos..]) {
            lens.push(h.content_length as usize);
            pos += h.record_len();
        }
        // A+B fit one record; C opens the next; D (140 KB) fills whole records from its start;
        // its tail shares the last record with E; then the empty terminator.
        let pair = 1 + 4 + 1 + 30000;
        let d = 1 + 4 + 1 + 140_000;
        assert_eq!(lens, vec![2 * pair, pair, 65535, 65535, d - 2 * 65535 + 4, 0]);
        let mut s = ServerConnection::new(Limits::default());
        s.feed(&b"\x01\x01\x00\x01\x00\x08\x00\x00\x00\x01\x00\x00\x00\x00\x00\x00"[..]);
        s.feed(&b);
        assert!(s.next_event().expect("begin").is_some());
        match s.next_event().expect("params") {
            Some(ServerEvent::Params { params, .. }) => {
                assert_eq!(params.get(b"D"), Some(&big[..]));
                assert_eq!(params.get(b"E"), Some(&b"e"[..]));
            }
            e => panic!("{e:?}"),
        }
    }

    #[test]
    fn params_record_framing() {
        let mut b = Vec::new();
        write_params(&mut b, 2, []);
        assert_eq!(b, b"\x01\x04\x00\x02\x00\x00\x00\x00");
        b.clear();
        write_abort(&mut b, 2);
        assert_eq!(b, b"\x01\x02\x00\x02\x00\x00\x00\x00");
        b.clear();
        write_get_values(&mut b, [&b"FCGI_MAX_CONNS"[..]]);
        assert_eq!(b, b"\x01\x09\x00\x00\x00\x10\x00\x00\x0e\x00FCGI_MAX_CONNS");
    }
}
