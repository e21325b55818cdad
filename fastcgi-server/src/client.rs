//! The web-server side: encode requests, decode an application's replies.
use crate::{params::Params, Error, Limits, ProtocolStatus, Role};
use bytes::{BufMut, Bytes, BytesMut};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientEvent {
    Stdout { id: u16, data: Bytes },
    StdoutEnd { id: u16 },
    Stderr { id: u16, data: Bytes },
    StderrEnd { id: u16 },
    EndRequest { id: u16, app_status: u32, protocol_status: ProtocolStatus },
    GetValuesResult { values: Params },
    UnknownType { record_type: u8 },
}

pub struct ClientConnection {
    buf: BytesMut,
    limits: Limits,
}

impl ClientConnection {
    pub fn new(limits: Limits) -> Self {
        ClientConnection { buf: BytesMut::new(), limits }
    }
    pub fn feed(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }
    pub fn buffer_mut(&mut self) -> &mut BytesMut {
        &mut self.buf
    }
    pub fn next_event(&mut self) -> Result<Option<ClientEvent>, Error> {
        let _ = &self.limits;
        todo!()
    }
}

pub fn write_begin_request(out: &mut impl BufMut, id: u16, role: Role, keep_conn: bool) {
    let _ = (out, id, role, keep_conn);
    todo!()
}
/// The whole PARAMS stream including its terminating empty record.
pub fn write_params<'a>(out: &mut impl BufMut, id: u16, pairs: impl IntoIterator<Item = (&'a [u8], &'a [u8])>) {
    let _ = (out, id, pairs.into_iter());
    todo!()
}
/// STDIN content split into records; empty `data` writes nothing.
pub fn write_stdin(out: &mut impl BufMut, id: u16, data: &[u8]) {
    let _ = (out, id, data);
    todo!()
}
pub fn write_stdin_end(out: &mut impl BufMut, id: u16) {
    let _ = (out, id);
    todo!()
}
pub fn write_abort(out: &mut impl BufMut, id: u16) {
    let _ = (out, id);
    todo!()
}
pub fn write_get_values<'a>(out: &mut impl BufMut, names: impl IntoIterator<Item = &'a [u8]>) {
    let _ = (out, names.into_iter());
    todo!()
}
