//! Thin tokio helpers (feature `tokio`): read from an [`AsyncRead`] straight into a decoder's
//! buffer until it has the next event.
//!
//! Protocol errors come back as [`std::io::ErrorKind::InvalidData`] wrapping the [`Error`]
//! (`err.get_ref()` and `downcast_ref::<Error>()` recover it). EOF between events is `Ok(None)`;
//! EOF inside a record or SCGI header is [`std::io::ErrorKind::UnexpectedEof`].
use std::io;

use tokio::io::{AsyncRead, AsyncReadExt};

use crate::client::{ClientConnection, ClientEvent};
use crate::scgi::{ScgiDecoder, ScgiEvent};
use crate::server::{ServerConnection, ServerEvent};
use crate::Error;

/// Bytes asked of the reader per read when the buffer has no room.
const READ_CHUNK: usize = 16 << 10;

fn invalid(e: Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

macro_rules! read_loop {
    ($io:expr, $dec:expr, $pending:expr) => {{
        loop {
            if let Some(ev) = $dec.next_event().map_err(invalid)? {
                return Ok(Some(ev));
            }
            let buf = $dec.buffer_mut();
            buf.reserve(READ_CHUNK);
            if $io.read_buf(buf).await? == 0 {
                return if $pending($dec) {
                    Err(io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed inside a record"))
                } else {
                    Ok(None)
                };
            }
        }
    }};
}

/// The next event from a web server, reading as needed; `Ok(None)` at a clean EOF.
pub async fn read_server_event<R: AsyncRead + Unpin>(
    io: &mut R,
    conn: &mut ServerConnection,
) -> io::Result<Option<ServerEvent>> {
    read_loop!(io, conn, |c: &mut ServerConnection| c.buffered() > 0)
}

/// The next event from an application, reading as needed; `Ok(None)` at a clean EOF.
pub async fn read_client_event<R: AsyncRead + Unpin>(
    io: &mut R,
    conn: &mut ClientConnection,
) -> io::Result<Option<ClientEvent>> {
    read_loop!(io, conn, |c: &mut ClientConnection| c.buffered() > 0)
}

/// The next SCGI event, reading as needed. EOF is clean only after `BodyEnd`.
pub async fn read_scgi_event<R: AsyncRead + Unpin>(io: &mut R, dec: &mut ScgiDecoder) -> io::Result<Option<ScgiEvent>> {
    read_loop!(io, dec, |d: &mut ScgiDecoder| !d.is_done())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{client, scgi, Limits, Role};

    #[tokio::test(flavor = "current_thread")]
    async fn reads_events_across_small_reads() {
        let mut wire = Vec::new();
        client::write_begin_request(&mut wire, 1, Role::Responder, false);
        client::write_params(&mut wire, 1, [(&b"A"[..], &b"B"[..])]);
        client::write_stdin_end(&mut wire, 1);
        let (mut tx, mut rx) = tokio::io::duplex(3);
        let writer = tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            tx.write_all(&wire).await.expect("write");
        });
        let mut conn = ServerConnection::new(Limits::default());
        let mut n = 0;
        while let Some(_ev) = read_server_event(&mut rx, &mut conn).await.expect("read") {
            n += 1;
        }
        writer.await.expect("writer");
        assert_eq!(n, 3);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn eof_and_errors() {
        let mut conn = ServerConnection::new(Limits::default());
        let e = read_server_event(&mut &b"\x01\x05\x00"[..], &mut conn).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
        let mut conn = ClientConnection::new(Limits::default());
        let e = read_client_event(&mut &b"\x09\x06\x00\x01\x00\x00\x00\x00"[..], &mut conn).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        assert_eq!(e.get_ref().and_then(|e| e.downcast_ref::<Error>()), Some(&Error::BadVersion(9)));
        let mut wire = Vec::new();
        scgi::write_request(&mut wire, 2, []);
        wire.extend_from_slice(b"hi");
        let mut dec = ScgiDecoder::new(Limits::default());
        let mut r = &wire[..];
        let mut n = 0;
        while read_scgi_event(&mut r, &mut dec).await.expect("scgi").is_some() {
            n += 1;
        }
        assert_eq!(n, 3);
    }
}
