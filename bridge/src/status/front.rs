//! `status-path:` and `ping-path:` on a FastCGI/SCGI listener: the web server forwards
//! that URL (behind its own access control) and the bridge answers it itself, without a
//! pool. The format is chosen by the query string as on the status listener.
use crate::registry::Registry;
use bytes::{BufMut, Bytes, BytesMut};
use fastcgi_server::Params;

/// The CGI response for a status or ping request on a listener with these paths, or None
/// to route it.
pub(crate) fn intercept(
    status_path: Option<&str>,
    ping_path: Option<&str>,
    registry: &Registry,
    params: &Params,
) -> Option<Bytes> {
    if status_path.is_none() && ping_path.is_none() {
        return None;
    }
    let uri = params.get(b"REQUEST_URI").or_else(|| params.get(b"DOCUMENT_URI"))?;
    let uri = String::from_utf8_lossy(uri);
    let (path, query) = uri.split_once('?').unwrap_or((&uri, ""));
    let reply = if status_path == Some(path) {
        let accept = String::from_utf8_lossy(params.get(b"HTTP_ACCEPT").unwrap_or(b""));
        super::reply::status_reply(registry, query, &accept)
    } else if ping_path == Some(path) {
        super::reply::ping_reply(registry)
    } else {
        return None;
    };
    let mut out = BytesMut::with_capacity(reply.body.len() + 128);
    out.put_slice(
        format!(
            "Status: {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nCache-Control: no-store\r\n\r\n",
            reply.code,
            crate::respond::reason_phrase(reply.code),
            reply.content_type,
            reply.body.len()
        )
        .as_bytes(),
    );
    out.put_slice(reply.body.as_bytes());
    Some(out.freeze())
}
