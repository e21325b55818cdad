//! The application side: decode what a web server sends, encode the replies.
use crate::{params::Params, record::Padding, Error, Limits, ProtocolStatus, Role};
use bytes::{BufMut, Bytes, BytesMut};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerEvent {
    BeginRequest { id: u16, role: Role, keep_conn: bool },
    /// The whole PARAMS stream of a request, emitted once when its empty record arrives.
    Params { id: u16, params: Params },
    /// One non-empty STDIN record's content.
    Stdin { id: u16, data: Bytes },
    StdinEnd { id: u16 },
    Data { id: u16, data: Bytes },
    DataEnd { id: u16 },
    Abort { id: u16 },
    /// Management GET_VALUES: answer with [`write_get_values_result`].
    GetValues { names: Vec<Bytes> },
    /// A management record type we do not know: answer with [`write_unknown_type`].
    UnknownType { record_type: u8 },
}

pub struct ServerConnection {
    buf: BytesMut,
    limits: Limits,
}

impl ServerConnection {
    pub fn new(limits: Limits) -> Self {
        ServerConnection { buf: BytesMut::new(), limits }
    }
    /// Append received bytes.
    pub fn feed(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }
    /// The receive buffer, for reading from a socket straight into it.
    pub fn buffer_mut(&mut self) -> &mut BytesMut {
        &mut self.buf
    }
    /// The next complete event, `Ok(None)` when more bytes are needed.
    pub fn next_event(&mut self) -> Result<Option<ServerEvent>, Error> {
        let _ = &self.limits;
        todo!()
    }
}

/// STDOUT content, split into records of at most 65535 bytes; empty `data` writes nothing.
pub fn write_stdout(out: &mut impl BufMut, id: u16, data: &[u8], padding: Padding) {
    let _ = (out, id, data, padding);
    todo!()
}
pub fn write_stderr(out: &mut impl BufMut, id: u16, data: &[u8], padding: Padding) {
    let _ = (out, id, data, padding);
    todo!()
}
/// The end of a request: empty STDOUT, then END_REQUEST.
pub fn write_end_request(out: &mut impl BufMut, id: u16, app_status: u32, status: ProtocolStatus, padding: Padding) {
    let _ = (out, id, app_status, status, padding);
    todo!()
}
pub fn write_get_values_result<'a>(out: &mut impl BufMut, pairs: impl IntoIterator<Item = (&'a [u8], &'a [u8])>) {
    let _ = (out, pairs.into_iter());
    todo!()
}
pub fn write_unknown_type(out: &mut impl BufMut, record_type: u8) {
    let _ = (out, record_type);
    todo!()
}
