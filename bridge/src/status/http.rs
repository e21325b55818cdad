//! The status listener: a minimal HTTP/1.1 server (GET/HEAD, one request per connection)
//! on a loopback address or a unix socket. Serves the status page at `status.path`
//! (format by `?json`, `?openmetrics`, `?html` or the Accept header; `?json&history` adds
//! the charts' data), `/metrics` (OpenMetrics) and `/ping`.
use super::reply::{ping_reply, status_reply, Reply};
use crate::config::{ListenAddress, StatusListen};
use crate::registry::Registry;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::watch;

/// The tracing target of this module's events, for a [`StatusError`] the daemon logs when
/// it cannot start (`fcgibridge::status::http`), as the listener's other lines.
pub(crate) const LOG_TARGET: &str = module_path!();

/// Why the status listener could not start.
#[derive(Debug, thiserror::Error)]
pub(crate) enum StatusError {
    #[error("status listener {addr}: {what}: {source}; change bridge.status.listen")]
    Io { addr: String, what: &'static str, source: std::io::Error },
    #[error("status listener {addr}: {source}")]
    Listen { addr: String, source: crate::listen::ListenError },
}

/// A bound status socket.
pub(crate) enum StatusBound {
    Tcp(TcpListener),
    Unix(UnixListener, std::path::PathBuf),
}

impl StatusBound {
    /// The unix socket file to remove at exit.
    pub(crate) fn socket_file(&self) -> Option<std::path::PathBuf> {
        match self {
            Self::Unix(_, p) => Some(p.clone()),
            Self::Tcp(_) => None,
        }
    }
}

/// Bind the status listener (before the workers start, like every listener).
pub(crate) async fn bind(cfg: &StatusListen) -> Result<StatusBound, StatusError> {
    let addr = super::describe(&cfg.address);
    let io = |what, source| StatusError::Io { addr: addr.clone(), what, source };
    match &cfg.address {
        ListenAddress::Tcp(a) => Ok(StatusBound::Tcp(TcpListener::bind(a).await.map_err(|e| io("bind", e))?)),
        ListenAddress::Unix(p) => {
            crate::listen::clear_stale_socket("status", p)
                .map_err(|e| StatusError::Listen { addr: addr.clone(), source: e })?;
            // The page lists every URI in flight: owner only, like the control socket, from
            // the moment it can be connected to.
            let owner_only = crate::listen::socket_file::SocketPerms { mode: Some(0o600), ..Default::default() };
            let l = crate::listen::socket_file::bind(p, 128, owner_only).map_err(|(what, e)| io(what, e))?;
            Ok(StatusBound::Unix(UnixListener::from_std(l).map_err(|e| io("register", e))?, p.clone()))
        }
        _ => Err(io("bind", std::io::Error::other("only a loopback address or a unix socket"))),
    }
}

/// Accept and answer until `stop` turns true.
pub(crate) async fn serve(bound: StatusBound, path: String, registry: Arc<Registry>, mut stop: watch::Receiver<bool>) {
    let path: std::sync::Arc<str> = path.into();
    loop {
        let conn: Box<dyn Conn> = tokio::select! {
            biased;
            _ = stop.changed() => return,
            a = accept(&bound) => match a {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!("status listener: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let (path, registry) = (path.clone(), registry.clone());
        tokio::spawn(async move {
            let _ = tokio::time::timeout(Duration::from_secs(10), answer(conn, &path, &registry)).await;
        });
    }
}

trait Conn: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Conn for T {}

async fn accept(b: &StatusBound) -> std::io::Result<Box<dyn Conn>> {
    Ok(match b {
        StatusBound::Tcp(l) => Box::new(l.accept().await?.0),
        StatusBound::Unix(l, _) => Box::new(l.accept().await?.0),
    })
}

async fn answer(mut conn: Box<dyn Conn>, status_path: &str, registry: &Registry) {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 2048];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        match conn.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
        if buf.len() > 16 << 10 {
            let _ = write_reply(&mut conn, "GET", &plain(431, "request head too large\n")).await;
            return;
        }
    }
    let head = String::from_utf8_lossy(&buf);
    let mut lines = head.split("\r\n");
    let mut parts = lines.next().unwrap_or("").split(' ');
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let accept = lines
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("accept"))
        .map(|(_, v)| v.trim().to_owned())
        .unwrap_or_default();
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let reply = if method != "GET" && method != "HEAD" {
        plain(405, "only GET and HEAD\n")
    } else if path == status_path {
        status_reply(registry, query, &accept)
    } else if path == "/metrics" {
        status_reply(registry, "openmetrics", "")
    } else if path == "/ping" {
        ping_reply(registry)
    } else {
        plain(404, &format!("not found; the status page is at {status_path}\n"))
    };
    let _ = write_reply(&mut conn, method, &reply).await;
}

fn plain(code: u16, body: &str) -> Reply {
    Reply { code, content_type: "text/plain; charset=utf-8", body: body.to_owned() }
}

async fn write_reply(conn: &mut Box<dyn Conn>, method: &str, r: &Reply) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n",
        r.code,
        fastcgi_server::cgi::reason_phrase(r.code).unwrap_or(""),
        r.content_type,
        r.body.len()
    );
    conn.write_all(head.as_bytes()).await?;
    if method != "HEAD" {
        conn.write_all(r.body.as_bytes()).await?;
    }
    conn.shutdown().await
}
