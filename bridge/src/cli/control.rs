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
    #[error(
        "{path} does not answer as fcgibridge's control socket (a listener's socket?): pass the control socket, \
         bridge.control-socket (default <runtime-dir>/control.sock)"
    )]
    NotControl { path: String },
}

/// How long the control socket may take to answer a command that is answered at once.
const PROMPT_ANSWER: Duration = Duration::from_secs(10);

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

/// Whether `path` answers as the control socket does, within `within`: a reload is
/// answered only once it is done, so a socket that never answers (a FastCGI listener
/// waiting for the rest of a record) is found out first with a command every daemon
/// answers at once (unknown ones with `error unknown command`, not logged).
fn probe(path: &Path, within: Duration) -> Result<(), ClientError> {
    let mut s = connect(path)?;
    let not_control = || ClientError::NotControl { path: path.display().to_string() };
    let _ = s.set_read_timeout(Some(within));
    s.write_all(b"ping\n").map_err(|_| not_control())?;
    let mut out = String::new();
    s.read_to_string(&mut out).map_err(|_| not_control())?;
    if out.starts_with("ok ") || out.starts_with("error ") {
        Ok(())
    } else {
        Err(not_control())
    }
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
    let _ = s.set_read_timeout((!reloading).then_some(PROMPT_ANSWER * 3));
    s.write_all(format!("{command}\n").as_bytes()).map_err(|e| ClientError::Connect { path: p.clone(), source: e })?;
    let mut out = String::new();
    match s.read_to_string(&mut out) {
        Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
            return Err(ClientError::NotControl { path: p })
        }
        Err(e) => return Err(ClientError::Connect { path: p, source: e }),
        Ok(_) => {}
    }
    Ok(match out.split_once(' ') {
        Some(("ok", rest)) => Ok(rest.to_owned()),
        Some(("error", rest)) => Err(rest.trim().to_owned()),
        // The probe found the control socket: it closed without an answer (the daemon ended?).
        None if out.is_empty() && reloading => {
            Err("the daemon closed the connection without an answer; its log says why".to_owned())
        }
        _ => return Err(ClientError::NotControl { path: p }),
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

/// Where a control command finds the daemon, as the command line says.
pub enum Target {
    /// `--socket`.
    Socket(PathBuf),
    /// The configuration directory (`--config`, or found), which names the socket.
    ConfigDir(PathBuf),
    /// No configuration directory either: that error was printed, with its exit code.
    Unknown(ExitCode),
}

impl Target {
    fn socket(&self) -> Result<PathBuf, ExitCode> {
        match self {
            Self::Socket(p) => socket_for(None, Some(p.clone())),
            Self::ConfigDir(dir) => socket_for(Some(dir), None),
            Self::Unknown(code) => Err(*code),
        }
    }
}

/// How a command reached the daemon.
enum Reached {
    /// Over the control socket: the daemon's answer, and the process that answered.
    Answered { answer: Result<String, String>, daemon: Option<Daemon> },
    /// With its signal instead (`signal_instead`).
    Signalled(Daemon),
}

/// Send `command` over the control socket, or its signal when that is the fallback. Err:
/// the exit code, the error said.
fn send(target: &Target, command: &str) -> Result<Reached, ExitCode> {
    let path = match target.socket() {
        Ok(p) => p,
        Err(code) => {
            return signal_instead(command).map(Reached::Signalled).ok_or_else(|| {
                if names_no_socket(target) {
                    explain_no_signal(command);
                }
                code
            })
        }
    };
    let connected = probe(&path, PROMPT_ANSWER).and_then(|()| connect(&path)).and_then(|s| {
        let daemon = Daemon::peer(&s);
        // Said once the daemon is there: a wait can be long, and its output comes at the end.
        if command.split(' ').any(|word| word == "wait" || word.starts_with("wait=")) {
            eprintln!("fcgibridge: reloading, then waiting for the rolling restarts to finish");
        }
        exchange(s, &path, command).map(|answer| Reached::Answered { answer, daemon })
    });
    connected.or_else(|e| {
        eprintln!("fcgibridge: {e}");
        signal_instead(command).map(Reached::Signalled).ok_or_else(|| {
            // Under systemd a signal would have stood in for a plain command: say why not.
            if std::env::var_os("MAINPID").is_some() {
                explain_no_signal(command);
            }
            ExitCode::FAILURE
        })
    })
}

/// The configuration is read and names no control socket (not: it cannot be read).
fn names_no_socket(target: &Target) -> bool {
    matches!(target, Target::ConfigDir(dir)
        if crate::config::load_for_client(dir).is_ok_and(|c| socket_path(&c.global).is_none()))
}

/// What of `command` only the control socket can do (no signal stands in for it).
fn needs_control_socket(command: &str) -> Option<&'static str> {
    let mut words = command.split(' ');
    let first = words.next().unwrap_or_default();
    let words: Vec<&str> = words.collect();
    if words.iter().any(|w| w.starts_with("pools=")) {
        Some("restarting named pools needs the control socket (SIGUSR2 restarts every pool)")
    } else if words.iter().any(|w| *w == "wait" || w.starts_with("wait=")) {
        Some("--wait (the outcome of the reload) needs the control socket (a signal is not answered)")
    } else if first == "stop-instance" {
        Some("stopping an instance needs the control socket (no signal does it)")
    } else {
        None
    }
}

/// Why a command that cannot reach the control socket was not sent as a signal either.
fn explain_no_signal(command: &str) {
    if let Some(why) = needs_control_socket(command) {
        eprintln!(
            "fcgibridge: {why}: set bridge.control-socket (or bridge.runtime-dir) and restart the bridge, or pass --socket"
        );
    }
}

/// `fcgibridge status|reload|stop|stop-instance`: find the socket, send, print.
pub fn main(target: &Target, command: &str, json: bool) -> ExitCode {
    let answer = match send(target, command) {
        Err(code) => return code,
        Ok(Reached::Signalled(_)) => return ExitCode::SUCCESS,
        Ok(Reached::Answered { answer, .. }) => answer,
    };
    match answer {
        Err(msg) => {
            eprintln!("fcgibridge: {msg}");
            ExitCode::FAILURE
        }
        Ok(text) if command == "status" && !json => match serde_json::from_str::<serde_json::Value>(&text) {
            Ok(v) => {
                print!("{}", super::status_table::render(&v));
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("fcgibridge: the daemon sent a status this client cannot read: {e}");
                ExitCode::FAILURE
            }
        },
        Ok(text) if command == "stop" => {
            print!("{}", stop_answer(&text).0);
            ExitCode::SUCCESS
        }
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
    }
}

/// The daemon's answer to `stop`: the text to show, and the longest its graceful stop
/// takes, from the line that says it (None from an older daemon, which sends no such line).
fn stop_answer(text: &str) -> (String, Option<Duration>) {
    let mut shown = String::new();
    let mut bound = None;
    for line in text.lines() {
        match line.strip_prefix(crate::control::STOP_BOUND).map(str::trim) {
            Some(secs) => bound = secs.parse::<f64>().ok().and_then(|s| Duration::try_from_secs_f64(s).ok()),
            None => shown.push_str(&format!("{line}\n")),
        }
    }
    (shown, bound.filter(|b| !b.is_zero()))
}

/// `fcgibridge stop [--wait[=DURATION]]`: with `wait`, return once the daemon's process has
/// exited, or exit 1 once DURATION has passed: by default the bound the daemon gives for its
/// graceful stop (that of the configuration it runs, which an edit not reloaded yet does not
/// change), else [`default_stop_wait`] of the configuration on disk.
pub fn stop(target: &Target, wait: Option<Option<Duration>>) -> ExitCode {
    let Some(wait) = wait else { return main(target, "stop", false) };
    let (daemon, told) = match send(target, "stop") {
        Err(code) => return code,
        Ok(Reached::Signalled(daemon)) => (daemon, None),
        Ok(Reached::Answered { answer: Err(msg), .. }) => {
            eprintln!("fcgibridge: {msg}");
            return ExitCode::FAILURE;
        }
        Ok(Reached::Answered { answer: Ok(text), daemon }) => {
            let (shown, told) = stop_answer(&text);
            print!("{shown}");
            let Some(daemon) = daemon else {
                eprintln!(
                    "fcgibridge: cannot tell which process the daemon is (its pid is not visible from here): not waiting for it to exit"
                );
                return ExitCode::FAILURE;
            };
            (daemon, told)
        }
    };
    let within = wait.or(told).unwrap_or_else(|| match target {
        Target::ConfigDir(dir) => default_stop_wait(crate::config::load_for_client(dir).ok().as_ref()),
        _ => default_stop_wait(None),
    });
    let shown = crate::config::units::DurationDisplay(within);
    eprintln!("fcgibridge: waiting up to {shown} for the daemon (pid {}) to exit", daemon.pid);
    let started = std::time::Instant::now();
    while !daemon.exited() {
        if started.elapsed() >= within {
            eprintln!(
                "fcgibridge: the daemon (pid {pid}) is still running after {shown}: it lets requests in flight finish \
                 (shutdown-timeout), then stops its workers; its log says where it is. `kill -INT {pid}` stops it \
                 without waiting for requests",
                pid = daemon.pid
            );
            return ExitCode::FAILURE;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    println!("the daemon (pid {}) exited after {:.1}s", daemon.pid, started.elapsed().as_secs_f64());
    ExitCode::SUCCESS
}

/// How long `stop --wait` waits when the daemon does not say (an older one, or a signal
/// sent instead): the bound of a graceful stop of `config`, the configuration on disk
/// ([`crate::control::graceful_stop_bound`]); two minutes when it cannot be read.
pub fn default_stop_wait(config: Option<&crate::config::Config>) -> Duration {
    config.map_or(Duration::from_secs(120), crate::control::graceful_stop_bound)
}

/// The daemon's process, known well enough to tell when it has gone: its pid, and its start
/// time so that a pid used again by another process does not look like the daemon.
struct Daemon {
    pid: i32,
    started: Option<u64>,
}

impl Daemon {
    /// The process at the other end of the control socket (SO_PEERCRED); None when its pid
    /// is not visible in this pid namespace.
    fn peer(s: &std::os::unix::net::UnixStream) -> Option<Self> {
        use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};
        let pid = getsockopt(s, PeerCredentials).ok()?.pid();
        (pid > 0).then(|| Self::of(pid))
    }

    fn of(pid: i32) -> Self {
        Self { pid, started: proc_stat(pid).map(|(_, started)| started) }
    }

    /// Gone, a zombie, or its pid now another process's.
    fn exited(&self) -> bool {
        match proc_stat(self.pid) {
            Some((state, started)) => "ZX".contains(state) || self.started.is_some_and(|s| s != started),
            // No /proc to read: whether the pid is still there.
            None => nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid), None) == Err(nix::errno::Errno::ESRCH),
        }
    }
}

/// `/proc/PID/stat`'s state and start time; None if it cannot be read (the process is
/// gone, or no /proc).
fn proc_stat(pid: i32) -> Option<(char, u64)> {
    crate::supervise::proc_stat::ProcStat::of(pid).map(|s| (char::from(s.state), s.start_ticks))
}

/// Under systemd (`ExecReload=`, whose `$MAINPID` names the bridge) a command whose control
/// socket is not configured or not reachable (an edit that moves it applies only at
/// restart) is sent as the daemon's signal instead, as before the control socket answered:
/// SIGHUP for a plain reload, SIGUSR2 for `--restart-workers`, SIGTERM for a stop. Its
/// outcome is then in the log only. Returns the process signalled.
fn signal_instead(command: &str) -> Option<Daemon> {
    use nix::sys::signal::{kill, Signal};
    let (signal, what) = match command {
        "reload" => (Signal::SIGHUP, "reload"),
        "restart" => (Signal::SIGUSR2, "reload"),
        "stop" => (Signal::SIGTERM, "stop"),
        _ => return None,
    };
    let pid = std::env::var("MAINPID").ok()?.parse::<i32>().ok().filter(|&p| p > 1)?;
    // Known before the signal: the process it stops may be gone at once.
    let daemon = Daemon::of(pid);
    match kill(nix::unistd::Pid::from_raw(pid), signal) {
        Ok(()) => {
            eprintln!(
                "fcgibridge: sent {signal} to the bridge (pid {pid}, $MAINPID) instead; only its log tells whether the {what} was taken"
            );
            Some(daemon)
        }
        Err(e) => {
            eprintln!("fcgibridge: cannot signal the bridge (pid {pid}, $MAINPID): {e}");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{reload_command, stop_answer};
    use std::time::Duration;

    #[test]
    fn the_stop_answer_s_bound_is_taken_out_of_what_is_shown() {
        let told = stop_answer("stop requested\ngraceful-stop-bound-seconds 95.5\n");
        assert_eq!(told, ("stop requested\n".to_owned(), Some(Duration::from_millis(95_500))));
        // An older daemon's answer: nothing told, the client falls back to the files.
        assert_eq!(stop_answer("stop requested\n"), ("stop requested\n".to_owned(), None));
    }

    #[test]
    fn a_socket_that_does_not_answer_is_not_taken_for_the_control_socket() {
        let dir = crate::scratch::scratch_dir("control-probe");
        let path = dir.join("fastcgi.sock");
        let listener = std::os::unix::net::UnixListener::bind(&path).expect("bind");
        // A FastCGI listener: reads, answers nothing (a record is 8 bytes at least).
        let held = std::thread::spawn(move || {
            let (conn, _) = listener.accept().expect("accept");
            std::thread::sleep(Duration::from_secs(3));
            drop(conn);
        });
        let started = std::time::Instant::now();
        let e = super::probe(&path, Duration::from_millis(300)).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());
        assert!(e.starts_with(&format!("{} does not answer as fcgibridge's control socket", path.display())), "{e}");
        let _ = held.join();
    }

    #[test]
    fn what_only_the_control_socket_does_is_named() {
        use super::needs_control_socket as needs;
        assert_eq!(needs("reload"), None);
        assert_eq!(needs("restart"), None);
        assert_eq!(needs("stop"), None);
        let named = Some("restarting named pools needs the control socket (SIGUSR2 restarts every pool)");
        assert_eq!(needs("restart pools=shop,blog wait"), named);
        assert_eq!(needs("restart pools=shop"), named);
        let wait = Some("--wait (the outcome of the reload) needs the control socket (a signal is not answered)");
        assert_eq!(needs("reload wait"), wait);
        assert_eq!(needs("restart wait=120"), wait);
        assert!(needs("stop-instance sites a.test").is_some());
    }

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
