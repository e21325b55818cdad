//! Record framing (FastCGI 1.0, section 3).
use bytes::BufMut;

pub const VERSION_1: u8 = 1;
pub const HEADER_LEN: usize = 8;
pub const MAX_CONTENT_LEN: usize = 65535;
/// Request id 0 carries management records (GET_VALUES, UNKNOWN_TYPE).
pub const MANAGEMENT_ID: u16 = 0;
pub const FCGI_KEEP_CONN: u8 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordType {
    BeginRequest,
    AbortRequest,
    EndRequest,
    Params,
    Stdin,
    Stdout,
    Stderr,
    Data,
    GetValues,
    GetValuesResult,
    UnknownType,
    Other(u8),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Responder,
    Authorizer,
    Filter,
    Unknown(u16),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProtocolStatus {
    RequestComplete,
    CantMpxConn,
    Overloaded,
    UnknownRole,
    Other(u8),
}

/// Whether encoders pad record content to a multiple of 8 bytes (the spec recommends it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Padding {
    #[default]
    None,
    Align8,
}

/// Write one record; `content.len()` must be ≤ [`MAX_CONTENT_LEN`].
pub fn write_record(out: &mut impl BufMut, ty: RecordType, id: u16, content: &[u8], padding: Padding) {
    let _ = (out, ty, id, content, padding);
    todo!()
}
