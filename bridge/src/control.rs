//! The control socket, the daemon's side: `fcgibridge status [--json]`, `fcgibridge reload`
//! and `fcgibridge stop` (their client is cli/control.rs) talk to the running daemon over a
//! unix socket (mode 0600) whose peer must be the daemon's own user or root (SO_PEERCRED).
//!
//! Protocol: the client writes one command line, the daemon answers with `ok <text>` or
//! `error <text>` and closes. Commands:
//! - `status`: the JSON status document.
//! - `reload [wait[=SECONDS]]`, `restart [pools=NAME,…] [wait[=SECONDS]]` (restart: every
//!   pool's workers, or those of the pools and templates named): answered once the reload
//!   is applied (`reload done: …`) or refused (why the running configuration stays); with
//!   `wait`, once the rolling restarts it started are over or one of them fails
//!   (rollout.rs). SECONDS bounds the wait (default: [`crate::rollout::default_within`]).
//! - `stop`: answered `stop requested`, then a line `graceful-stop-bound-seconds N`: the
//!   longest the stop of the configuration running takes ([`graceful_stop_bound`]), which
//!   `stop --wait` waits by default (an older daemon sends the first line only).
//! - `stop-instance TEMPLATE KEY`.
use crate::registry::Registry;
use crate::reload::{Reloaded, Restart};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixListener;
use tokio::sync::{oneshot, watch};

/// The tracing target of this module's events, for a [`ControlError`] the daemon logs when
/// it cannot start (`fcgibridge::control`), as the control socket's other lines.
pub(crate) const LOG_TARGET: &str = module_path!();

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
    let io = |what, source| ControlError::Io { path: p.clone(), what, source };
    // Owner-only from the start (the peer check refuses others anyway).
    let owner_only = crate::listen::socket_file::SocketPerms { mode: Some(0o600), ..Default::default() };
    let l = crate::listen::socket_file::bind(path, 16, owner_only).map_err(|(what, e)| io(what, e))?;
    UnixListener::from_std(l).map_err(|e| io("register", e))
}

/// What a control command asks the daemon's main loop to do.
pub(crate) enum Request {
    /// A reload (`restart`: whose workers restart although unchanged, for new application
    /// code); `reply` gets the outcome, Err being the whole message for the caller.
    Reload {
        restart: Restart,
        reply: oneshot::Sender<Result<Reloaded, String>>,
    },
    Stop,
}

/// A refused reload's answer: why the running configuration stays, a line per error.
pub(crate) fn refusal(why: &str) -> String {
    let lines: Vec<&str> = why.lines().collect();
    match lines.as_slice() {
        [one] => format!("reload refused, the running configuration stays: {one}"),
        _ => format!("reload refused, the running configuration stays:\n{}", lines.join("\n")),
    }
}

/// A `reload` or `restart` command line.
#[derive(Debug, PartialEq)]
struct ReloadCommand {
    restart: Restart,
    /// `wait`: Some(None) waits for the default time.
    wait: Option<Option<Duration>>,
}

/// Parse `reload …`/`restart …` (None for another command).
fn parse_reload(line: &str) -> Option<Result<ReloadCommand, String>> {
    let mut words = line.split_whitespace();
    let mut restart = match words.next()? {
        "reload" => Restart::Changed,
        "restart" => Restart::All,
        _ => return None,
    };
    let mut wait = None;
    for word in words {
        match word.split_once('=').unwrap_or((word, "")) {
            ("wait", "") => wait = Some(None),
            ("wait", secs) => match secs.parse::<f64>().ok().and_then(|s| Duration::try_from_secs_f64(s).ok()) {
                // A day at most: a deadline is an instant, which cannot be any later.
                Some(d) => wait = Some(Some(d.min(Duration::from_secs(24 * 3600)))),
                None => return Some(Err(format!("wait={secs}: not a number of seconds"))),
            },
            ("pools", names) if restart == Restart::All && !names.is_empty() => {
                restart = Restart::Only(names.split(',').map(str::to_owned).collect());
            }
            _ => {
                return Some(Err(format!(
                    "unexpected {word:?}; usage: reload [wait[=SECONDS]], restart [pools=NAME,…] [wait[=SECONDS]]"
                )))
            }
        }
    }
    Some(Ok(ReloadCommand { restart, wait }))
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
        tokio::spawn(async move { answer(conn, requests, &registry).await });
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
    // The command line comes at once; what follows (a reload, its wait) takes its time.
    let Ok(buf) = tokio::time::timeout(Duration::from_secs(10), read_line(&mut conn)).await else { return };
    let line = String::from_utf8_lossy(&buf);
    let reply = reply(line.trim(), uid, &requests, registry).await;
    let _ = conn.write_all(reply.as_bytes()).await;
    let _ = conn.shutdown().await;
}

/// The answer to one command line.
async fn reply(command: &str, uid: u32, requests: &tokio::sync::mpsc::Sender<Request>, registry: &Registry) -> String {
    if let Some(parsed) = parse_reload(command) {
        return match parsed {
            Err(why) => format!("error {why}\n"),
            // Said to the caller, not only logged: the daemon would refuse it (daemon.rs, drain).
            Ok(_) if registry.draining() => {
                tracing::warn!(
                    uid,
                    "control socket: {command} refused during the drain period, the bridge is stopping"
                );
                format!("error {DRAINING}\n")
            }
            Ok(cmd) => {
                tracing::info!(uid, "control socket: {command} requested");
                reload(cmd, requests).await
            }
        };
    }
    match command {
        "status" => format!("ok {}", crate::status::json::render(&crate::status::snapshot(registry))),
        "stop" => {
            tracing::info!(uid, "control socket: stop requested");
            match requests.send(Request::Stop).await {
                Ok(()) => format!("ok stop requested\n{STOP_BOUND} {}\n", registry.stop_bound().as_secs_f64()),
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
        other => format!("error unknown command {other:?}; known: status, reload, restart, stop, stop-instance\n"),
    }
}

/// The key of the stop answer's line that tells the daemon's [`graceful_stop_bound`].
pub(crate) const STOP_BOUND: &str = "graceful-stop-bound-seconds";

/// The longest a graceful stop of `config` takes: the drain period, the requests in flight
/// (`shutdown-timeout`), an ASGI worker's `graceful-timeout` (a pool's, or a template's for
/// its instances), and a minute for the workers to go.
pub(crate) fn graceful_stop_bound(config: &crate::config::Config) -> Duration {
    use crate::config::supervision::DEFAULT_GRACEFUL_TIMEOUT;
    let pools = config.pools.iter().map(|p| p.supervision.graceful_timeout);
    let templates = config.templates.iter().map(|t| t.raw.graceful_timeout.map_or(DEFAULT_GRACEFUL_TIMEOUT, |g| g.0));
    let graceful = pools.chain(templates).max().unwrap_or_default();
    config.global.drain_period + config.global.shutdown_timeout + graceful + Duration::from_secs(60)
}

/// Why a reload is refused while the bridge drains (daemon.rs answers the same).
pub(crate) const DRAINING: &str = "the bridge is draining (stopping): not reloading";

/// The client's command line (at most 1 KiB).
async fn read_line(conn: &mut tokio::net::UnixStream) -> Vec<u8> {
    let mut buf = Vec::with_capacity(64);
    let mut chunk = [0u8; 256];
    while !buf.contains(&b'\n') && buf.len() < 1024 {
        match conn.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    buf
}

/// Have the main loop reload; answer with the outcome, and with `wait` with the rollouts'.
async fn reload(cmd: ReloadCommand, requests: &tokio::sync::mpsc::Sender<Request>) -> String {
    let (reply, outcome) = oneshot::channel();
    if requests.send(Request::Reload { restart: cmd.restart, reply }).await.is_err() {
        return "error the daemon is shutting down\n".to_owned();
    }
    let reloaded = match outcome.await {
        Ok(Ok(r)) => r,
        Ok(Err(why)) => return format!("error {why}\n"),
        Err(_) => return "error the daemon is shutting down\n".to_owned(),
    };
    let done = format!("reload done: {}", reloaded.summary);
    let Some(wait) = cmd.wait else { return format!("ok {done}\n") };
    let within = wait.unwrap_or_else(|| crate::rollout::default_within(&reloaded.watched));
    match crate::rollout::wait(&reloaded.watched, within).await {
        Ok(text) => format!("ok {done}\n{text}\n"),
        Err(text) => format!("error {done}\n{text}\n"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(line: &str) -> Result<ReloadCommand, String> {
        parse_reload(line).expect("a reload command")
    }

    #[test]
    fn reload_command_lines() {
        assert_eq!(parsed("reload"), Ok(ReloadCommand { restart: Restart::Changed, wait: None }));
        assert_eq!(parsed("restart"), Ok(ReloadCommand { restart: Restart::All, wait: None }));
        assert_eq!(parsed("reload wait"), Ok(ReloadCommand { restart: Restart::Changed, wait: Some(None) }));
        assert_eq!(
            parsed("restart pools=shop,blog wait=90.5"),
            Ok(ReloadCommand {
                restart: Restart::Only(vec!["shop".into(), "blog".into()]),
                wait: Some(Some(Duration::from_millis(90_500)))
            })
        );
        assert!(parse_reload("status").is_none() && parse_reload("stop").is_none());
        assert!(parsed("reload wait=soon").unwrap_err().starts_with("wait=soon: not a number of seconds"));
        assert!(parsed("reload wait=-1").is_err());
        assert_eq!(parsed("reload wait=1e19").map(|c| c.wait), Ok(Some(Some(Duration::from_secs(24 * 3600)))));
        // Pools are for a restart only; a stray word is refused, not ignored.
        assert!(parsed("reload pools=shop").unwrap_err().starts_with("unexpected \"pools=shop\"; usage: "));
        assert!(parsed("restart shop").is_err());
    }

    #[test]
    fn a_refusal_puts_every_error_on_its_line() {
        assert_eq!(
            refusal("listener extra: 127.0.0.1:8080: address in use"),
            "reload refused, the running configuration stays: listener extra: 127.0.0.1:8080: address in use"
        );
        assert_eq!(
            refusal("a.yaml:1:1: x\na.yaml:2:1: y"),
            "reload refused, the running configuration stays:\na.yaml:1:1: x\na.yaml:2:1: y"
        );
    }
}
