//! `fcgibridge status|reload|stop`: the client of the daemon's control socket
//! (control.rs has the daemon's side and the protocol).
use crate::control::socket_path;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

/// Why the control socket cannot be found or reached.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "no control socket: set bridge.control-socket or bridge.runtime-dir in the configuration, or pass --socket"
    )]
    NotConfigured,
    #[error("cannot reach the daemon at {path}: {source}{}", hint(source))]
    Connect { path: String, source: std::io::Error },
}

/// What to do about a control socket that cannot be reached, by why.
fn hint(e: &std::io::Error) -> &'static str {
    match e.kind() {
        std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => {
            " (is `fcgibridge run` running with this configuration?)"
        }
        std::io::ErrorKind::PermissionDenied => {
            "; the control socket is the operator's (mode 0600): run this as root or as the daemon's user"
        }
        _ => "",
    }
}

/// The control command of `fcgibridge reload [--restart-workers [POOL…]] [--wait[=D]]`;
/// Err: a POOL that cannot be a name (the daemon lists the pools there are).
pub fn reload_command(
    restart_workers: bool,
    pools: &[String],
    wait: Option<Option<Duration>>,
) -> Result<String, String> {
    let mut command = if restart_workers { "restart".to_owned() } else { "reload".to_owned() };
    if let Some(bad) =
        pools.iter().find(|n| n.is_empty() || n.contains(|c: char| c.is_whitespace() || ",=".contains(c)))
    {
        return Err(format!("{bad:?} is not a pool name"));
    }
    if restart_workers && !pools.is_empty() {
        command.push_str(&format!(" pools={}", pools.join(",")));
    }
    match wait {
        None => {}
        Some(None) => command.push_str(" wait"),
        Some(Some(d)) => command.push_str(&format!(" wait={}", d.as_secs_f64())),
    }
    Ok(command)
}

/// Client side: send `command`, return the daemon's answer text.
pub fn call(path: &Path, command: &str) -> Result<Result<String, String>, ClientError> {
    exchange(connect(path)?, path, command)
}

fn connect(path: &Path) -> Result<std::os::unix::net::UnixStream, ClientError> {
    std::os::unix::net::UnixStream::connect(path)
        .map_err(|e| ClientError::Connect { path: path.display().to_string(), source: e })
}

/// Send `command` over `s`, connected to `path`; the daemon's answer text.
fn exchange(
    mut s: std::os::unix::net::UnixStream,
    path: &Path,
    command: &str,
) -> Result<Result<String, String>, ClientError> {
    let p = path.display().to_string();
    // A reload answers when it is done (interpreters probed, with --wait the rollouts over,
    // which the daemon bounds); the other commands at once.
    let reloading = command.starts_with("reload") || command.starts_with("restart");
    let _ = s.set_read_timeout((!reloading).then_some(Duration::from_secs(30)));
    s.write_all(format!("{command}\n").as_bytes()).map_err(|e| ClientError::Connect { path: p.clone(), source: e })?;
    let mut out = String::new();
    s.read_to_string(&mut out).map_err(|e| ClientError::Connect { path: p, source: e })?;
    Ok(match out.split_once(' ') {
        Some(("ok", rest)) => Ok(rest.to_owned()),
        Some(("error", rest)) => Err(rest.trim().to_owned()),
        _ => Err(format!("unexpected answer {:?}", out.trim())),
    })
}

/// The control socket: the one given, else the one the configuration in `config_dir`
/// names. An error is printed here, and its exit code returned.
pub fn socket_for(config_dir: Option<&Path>, socket: Option<PathBuf>) -> Result<PathBuf, ExitCode> {
    let not_configured = || {
        eprintln!("fcgibridge: {}", ClientError::NotConfigured);
        ExitCode::from(2)
    };
    match (socket, config_dir) {
        (Some(p), _) => Ok(p),
        (None, None) => Err(not_configured()),
        (None, Some(dir)) => {
            // Only the socket is wanted: whether the workers could run as this user is
            // `check`'s and `run`'s question, not a client's.
            match crate::config::load_for_client(dir) {
                Ok(c) => socket_path(&c.global).ok_or_else(not_configured),
                // The running daemon is still there while an edit elsewhere is being fixed;
                // a reload of that edit is the daemon's to refuse, with its errors.
                Err(e) => match crate::config::load_socket_keys(dir).as_ref().and_then(socket_path) {
                    Some(path) => {
                        eprintln!(
                            "fcgibridge: the configuration in {} has errors (`fcgibridge check` shows them); using the control socket it names, {}",
                            dir.display(),
                            path.display()
                        );
                        Ok(path)
                    }
                    None => {
                        eprintln!("fcgibridge: {e}");
                        Err(ExitCode::from(2))
                    }
                },
            }
        }
    }
}

/// `fcgibridge status|reload|stop`: find the socket, send, print.
pub fn main(config_dir: Option<&Path>, socket: Option<PathBuf>, command: &str, json: bool) -> ExitCode {
    let path = match socket_for(config_dir, socket) {
        Ok(p) => p,
        Err(code) => return signal_instead(command).unwrap_or(code),
    };
    let answer = connect(&path).and_then(|s| {
        // Said once the daemon is there: a wait can be long, and its output comes at the end.
        if command.split(' ').any(|word| word == "wait" || word.starts_with("wait=")) {
            eprintln!("fcgibridge: reloading, then waiting for the rolling restarts to finish");
        }
        exchange(s, &path, command)
    });
    match answer {
        Err(e) => {
            eprintln!("fcgibridge: {e}");
            signal_instead(command).unwrap_or(ExitCode::FAILURE)
        }
        Ok(Err(msg)) => {
            eprintln!("fcgibridge: {msg}");
            ExitCode::FAILURE
        }
        Ok(Ok(text)) if command == "status" && !json => match serde_json::from_str::<serde_json::Value>(&text) {
            Ok(v) => {
                print!("{}", super::status_table::render(&v));
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("fcgibridge: the daemon sent a status this client cannot read: {e}");
                ExitCode::FAILURE
            }
        },
        Ok(Ok(text)) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
    }
}

/// Under systemd (`ExecReload=`, whose `$MAINPID` names the bridge) a plain reload whose
/// control socket is not configured or not reachable (an edit that moves it applies only
/// at restart) is asked for with the daemon's signal instead, as before the control socket
/// answered: SIGHUP, or SIGUSR2 for `--restart-workers`. Its outcome is then in the log only.
fn signal_instead(command: &str) -> Option<ExitCode> {
    use nix::sys::signal::{kill, Signal};
    let signal = match command {
        "reload" => Signal::SIGHUP,
        "restart" => Signal::SIGUSR2,
        _ => return None,
    };
    let pid = std::env::var("MAINPID").ok()?.parse::<i32>().ok().filter(|&p| p > 1)?;
    match kill(nix::unistd::Pid::from_raw(pid), signal) {
        Ok(()) => {
            eprintln!(
                "fcgibridge: sent {signal} to the bridge (pid {pid}, $MAINPID) instead; only its log tells whether the reload was taken"
            );
            Some(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("fcgibridge: cannot signal the bridge (pid {pid}, $MAINPID): {e}");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::reload_command;
    use std::time::Duration;

    #[test]
    fn reload_arguments_become_one_command_line() {
        assert_eq!(reload_command(false, &[], None).as_deref(), Ok("reload"));
        assert_eq!(reload_command(true, &[], Some(None)).as_deref(), Ok("restart wait"));
        let pools = ["shop".to_owned(), "blog".to_owned()];
        assert_eq!(
            reload_command(true, &pools, Some(Some(Duration::from_secs(120)))).as_deref(),
            Ok("restart pools=shop,blog wait=120")
        );
        assert_eq!(reload_command(true, &["a b".to_owned()], None), Err(r#""a b" is not a pool name"#.to_owned()));
    }
}
