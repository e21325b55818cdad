//! SCGI: a netstring of NUL-separated headers (CONTENT_LENGTH first), then the body.
use crate::{params::Params, Error, Limits};
use bytes::{BufMut, Bytes, BytesMut};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScgiEvent {
    Headers { params: Params, content_length: u64 },
    Body(Bytes),
    BodyEnd,
}

pub struct ScgiDecoder {
    buf: BytesMut,
    limits: Limits,
}

impl ScgiDecoder {
    pub fn new(limits: Limits) -> Self {
        ScgiDecoder { buf: BytesMut::new(), limits }
    }
    pub fn feed(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }
    pub fn buffer_mut(&mut self) -> &mut BytesMut {
        &mut self.buf
    }
    /// Body bytes beyond CONTENT_LENGTH are never returned.
    pub fn next_event(&mut self) -> Result<Option<ScgiEvent>, Error> {
        let _ = &self.limits;
        todo!()
    }
}

/// The request netstring; CONTENT_LENGTH is written first and SCGI=1 added. The body follows separately.
pub fn write_request<'a>(out: &mut impl BufMut, content_length: u64, pairs: impl IntoIterator<Item = (&'a [u8], &'a [u8])>) {
    let _ = (out, content_length, pairs.into_iter());
    todo!()
}
