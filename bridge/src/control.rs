//! The control socket, the daemon's side: `fcgibridge status [--json]`, `fcgibridge reload`
//! and `fcgibridge stop` (their client is cli/control.rs) talk to the running daemon over a
//! unix socket (mode 0600) whose peer must be the daemon's own user or root (SO_PEERCRED).
//!
//! Protocol: the client writes one command line (`status`, `reload`, `stop`), the daemon
//! answers with `ok <text>` or `error <text>` and closes. `status` answers with the JSON
//! status document.
use crate::registry::Registry;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixListener;
use tokio::sync::watch;

/// Why the control socket cannot be served.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ControlError {
    #[error("control socket {path}: {what}: {source}; change bridge.control-socket or remove the file")]
    Io { path: String, what: &'static str, source: std::io::Error },
    #[error("control socket {path}: {source}")]
    Listen { path: String, source: crate::listen::ListenError },
}

/// Where the control socket is: `control-socket`, else `<runtime-dir>/control.sock`.
pub(crate) fn socket_path(global: &crate::config::Global) -> Option<PathBuf> {
    global.control_socket.clone().or_else(|| global.runtime_dir.as_ref().map(|d| d.join("control.sock")))
}

/// Bind the control socket (owner-only).
pub(crate) fn bind(path: &Path) -> Result<UnixListener, ControlError> {
    let p = path.display().to_string();
    crate::listen::clear_stale_socket("control", path)
        .map_err(|e| ControlError::Listen { path: p.clone(), source: e })?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| ControlError::Io {
            path: p.clone(),
            what: "create directory",
            source: e,
        })?;
    }
    let l = UnixListener::bind(path).map_err(|e| ControlError::Io { path: p.clone(), what: "bind", source: e })?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(|e| ControlError::Io {
        path: p,
        what: "chmod",
        source: e,
    })?;
    Ok(l)
}

/// What a control command asks the daemon's main loop to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Request {
    Reload,
    /// A reload that also restarts every pool's workers (as SIGUSR2): new application code.
    Restart,
    Stop,
}

/// Answer control connections until `stop`; reload and stop requests go to `requests`.
pub(crate) async fn serve(
    l: UnixListener,
    requests: tokio::sync::mpsc::Sender<Request>,
    registry: Arc<Registry>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let conn = tokio::select! {
            biased;
            _ = stop.changed() => return,
            a = l.accept() => match a {
                Ok((c, _)) => c,
                Err(e) => {
                    tracing::warn!("control socket: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let (requests, registry) = (requests.clone(), registry.clone());
        tokio::spawn(async move {
            let _ = tokio::time::timeout(Duration::from_secs(10), answer(conn, requests, &registry)).await;
        });
    }
}

/// The peer may be the daemon's own user or root.
fn peer_allowed(conn: &tokio::net::UnixStream) -> Result<u32, String> {
    let cred = conn.peer_cred().map_err(|e| format!("cannot read the peer's credentials: {e}"))?;
    let me = nix::unistd::geteuid().as_raw();
    if cred.uid() == me || cred.uid() == 0 {
        Ok(cred.uid())
    } else {
        Err(format!("uid {} may not control this daemon (runs as uid {me})", cred.uid()))
    }
}

async fn answer(mut conn: tokio::net::UnixStream, requests: tokio::sync::mpsc::Sender<Request>, registry: &Registry) {
    let uid = match peer_allowed(&conn) {
        Ok(uid) => uid,
        Err(why) => {
            tracing::warn!("control socket: refused a connection: {why}");
            let _ = conn.write_all(format!("error {why}\n").as_bytes()).await;
            return;
        }
    };
    let mut buf = Vec::with_capacity(64);
    let mut chunk = [0u8; 256];
    while !buf.contains(&b'\n') && buf.len() < 1024 {
        match conn.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let line = String::from_utf8_lossy(&buf);
    let command = line.trim();
    let reply = match command {
        "status" => format!("ok {}", crate::status::json::render(&crate::status::snapshot(registry))),
        // Said to the caller, not only logged: the daemon would refuse it (daemon.rs, drain).
        "reload" | "restart" if registry.draining() => {
            tracing::warn!(uid, "control socket: {command} refused during the drain period, the bridge is stopping");
            "error the bridge is draining (stopping): not reloading\n".to_owned()
        }
        "reload" | "restart" | "stop" => {
            let req = match command {
                "reload" => Request::Reload,
                "restart" => Request::Restart,
                _ => Request::Stop,
            };
            tracing::info!(uid, "control socket: {command} requested");
            match requests.send(req).await {
                Ok(()) => format!("ok {command} requested\n"),
                Err(_) => "error the daemon is shutting down\n".to_owned(),
            }
        }
        other if other.starts_with("stop-instance ") => {
            let mut args = other.split_whitespace().skip(1);
            match (args.next(), args.next(), args.next()) {
                (Some(t), Some(k), None) => {
                    tracing::info!(uid, "control socket: {other} requested");
                    match registry.board.instances.stop_instance(t, k) {
                        Ok(text) => format!("ok {text}"),
                        Err(why) => format!("error {why}\n"),
                    }
                }
                _ => "error usage: stop-instance TEMPLATE KEY\n".to_owned(),
            }
        }
        other => format!("error unknown command {other:?}; known: status, reload, stop, stop-instance\n"),
    };
    let _ = conn.write_all(reply.as_bytes()).await;
    let _ = conn.shutdown().await;
}
