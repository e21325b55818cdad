//! What the apps start and leave behind. The daemon is a child subreaper
//! (PR_SET_CHILD_SUBREAPER, set at start by [`adopt`]): a process whose parent dies is
//! reparented to the daemon rather than to init, so every descendant of a worker (or of a
//! preload template's fork) that outlives its parent becomes the daemon's child, and is
//! found here among the children the daemon did not start:
//!
//! - one in another session called `setsid()` (a double-forked daemon,
//!   `subprocess.Popen(..., start_new_session=True)`), which also took it out of its
//!   worker's process group, out of reach of the group kill at the worker's exit
//!   (manager.rs `end_left_behind`): it is killed (SIGKILL), logged, and reaped. The
//!   daemon's own children never leave its session (spawn.rs, template.rs and probe.rs
//!   only `setpgid`), so a child in another session is never one of them;
//! - one still in the daemon's session (a double fork without `setsid`, `cmd &` in a
//!   shell) is still in its worker's process group and goes with it: it is only reaped
//!   once it has exited, so that no zombie piles up.
//!
//! The exit statuses of the daemon's own children belong to tokio::process (and to
//! probe.rs): they are registered as they are started ([`spawn_own`]), and only a pid that
//! is none of them is waited for — that pid alone, never waitpid(-1).
//!
//! A look is taken on SIGCHLD (an adopted process exited), when a worker exits ([`look`]:
//! what it left was just adopted), every [`LOOK_EVERY`] (a double fork is adopted while
//! its worker runs, and nothing tells the daemon), and once more when the daemon stops.
use crate::logging::app_lines::{clean, prefix};
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag};
use nix::unistd::Pid;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::Notify;

/// How often the children are looked at without a signal.
const LOOK_EVERY: Duration = Duration::from_secs(5);
/// The command line logged of a killed process, at most (bytes).
const SHOWN_COMMAND: usize = 200;

/// The pids of the children the daemon started itself (workers, templates, probes).
static OWN: Mutex<Vec<u32>> = Mutex::new(Vec::new());
/// The orphans killed and not reaped yet: each is killed, and logged, once.
static KILLED: Mutex<Vec<i32>> = Mutex::new(Vec::new());
/// A worker exited: look now.
static LOOK: Notify = Notify::const_new();

fn lock<T>(m: &'static Mutex<T>) -> MutexGuard<'static, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn own() -> MutexGuard<'static, Vec<u32>> {
    lock(&OWN)
}

/// Start a child of the daemon's own: `spawn` runs with the registry held, so a look never
/// finds the new child unregistered (it would be taken for an orphan).
pub(super) fn spawn_own<C>(
    spawn: impl FnOnce() -> std::io::Result<C>,
    pid: impl FnOnce(&C) -> Option<u32>,
) -> std::io::Result<C> {
    let mut own = own();
    let child = spawn()?;
    own.extend(pid(&child));
    Ok(child)
}

/// Look at the daemon's children soon: a worker exited.
pub(super) fn look() {
    LOOK.notify_one();
}

/// At start: become a child subreaper and watch the children. Without it (an error, which
/// is logged) a process that left its worker's session runs on under init.
pub(crate) fn adopt() {
    if let Err(e) = nix::sys::prctl::set_child_subreaper(true) {
        tracing::warn!("cannot become a child subreaper ({e}): processes the apps start in a session of their own (setsid) will outlive their workers");
        return;
    }
    // Only a runtime without its signal driver cannot: the periodic look would remain.
    let mut chld = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::child())
        .map_err(|e| {
            tracing::warn!("cannot watch SIGCHLD ({e}): the workers' orphans are looked for every {LOOK_EVERY:?} only")
        })
        .ok();
    tokio::spawn(async move {
        let mut every = tokio::time::interval(LOOK_EVERY);
        loop {
            let sigchld = async {
                match &mut chld {
                    Some(s) => s.recv().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = sigchld => {}
                _ = LOOK.notified() => {}
                _ = every.tick() => {}
            }
            look_now().await;
        }
    });
}

/// The daemon stops: what its last workers left.
pub(crate) async fn last_look() {
    look_now().await;
}

async fn look_now() {
    let _ = tokio::task::spawn_blocking(sweep).await;
}

/// A child of the daemon, as its /proc/PID/stat shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Child {
    pid: i32,
    state: u8,
    session: i32,
}

/// What a look does with one child of the daemon.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    /// Started by the daemon: its exit status is someone else's.
    Own,
    /// An orphan that has exited: reap it.
    Reap,
    /// An orphan in a session of its own: kill it (and reap it once it has died).
    Kill,
    /// An orphan still in the daemon's session, so in its worker's process group: it goes
    /// with that worker.
    Leave,
}

fn judge(c: &Child, own: bool, session: i32) -> Verdict {
    if own {
        Verdict::Own
    } else if c.state == b'Z' {
        Verdict::Reap
    } else if c.session != session {
        Verdict::Kill
    } else {
        Verdict::Leave
    }
}

/// One look at the daemon's children.
fn sweep() {
    let me = std::process::id() as i32;
    let Ok(session) = nix::unistd::getsid(None) else { return };
    let children = children_of(me);
    let verdicts: Vec<(Child, Verdict)> = {
        // After the scan: a child found there and started by the daemon is registered by
        // now (spawn_own holds the registry from before the fork until it is).
        let mut own = own();
        // A registered pid that is no child any more was reaped by its owner.
        own.retain(|&pid| i32::try_from(pid).ok().and_then(parent_of) == Some(me));
        let is_own = |c: &Child| u32::try_from(c.pid).is_ok_and(|pid| own.contains(&pid));
        children.iter().map(|c| (*c, judge(c, is_own(c), session.as_raw()))).collect()
    };
    let mut killed = lock(&KILLED);
    killed.retain(|pid| children.iter().any(|c| c.pid == *pid && c.state != b'Z'));
    for (c, verdict) in verdicts {
        match verdict {
            Verdict::Reap => reap(c.pid),
            Verdict::Kill if !killed.contains(&c.pid) => {
                killed.push(c.pid);
                end(c.pid);
            }
            _ => {}
        }
    }
}

/// The processes whose parent is `me`: those its threads' `children` files list, or where
/// the kernel has none (CONFIG_PROC_CHILDREN), every process's.
fn children_of(me: i32) -> Vec<Child> {
    let candidates = listed_children().unwrap_or_else(|| {
        let Ok(dir) = std::fs::read_dir("/proc") else { return Vec::new() };
        dir.flatten().filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok()).collect()
    });
    candidates
        .into_iter()
        .filter_map(|pid| {
            let (parent, c) = stat(pid)?;
            (parent == me).then_some(c)
        })
        .collect()
}

/// /proc/self/task/TID/children of every thread (an orphan is adopted by one of them).
fn listed_children() -> Option<Vec<i32>> {
    let mut pids = Vec::new();
    for task in std::fs::read_dir("/proc/self/task").ok()?.flatten() {
        let text = std::fs::read_to_string(task.path().join("children")).ok()?;
        pids.extend(text.split_whitespace().filter_map(|p| p.parse::<i32>().ok()));
    }
    Some(pids)
}

fn parent_of(pid: i32) -> Option<i32> {
    stat(pid).map(|(parent, _)| parent)
}

/// The parent and the child as /proc/PID/stat says (None: the process is gone).
fn stat(pid: i32) -> Option<(i32, Child)> {
    parse_stat(pid, &std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

fn parse_stat(pid: i32, text: &str) -> Option<(i32, Child)> {
    // The command name may hold spaces and parentheses: the fields start after the last ')'.
    let mut fields = text[text.rfind(')')? + 1..].split_whitespace();
    let state = *fields.next()?.as_bytes().first()?;
    let parent = fields.next()?.parse().ok()?;
    let _group = fields.next()?;
    let session = fields.next()?.parse().ok()?;
    Some((parent, Child { pid, state, session }))
}

/// Reap an orphan that has exited (that pid only: the daemon's other children are not ours
/// to wait for).
fn reap(pid: i32) {
    match waitpid(Pid::from_raw(pid), Some(WaitPidFlag::WNOHANG)) {
        Ok(status) => tracing::debug!(pid, "reaped an orphan of the workers: {status:?}"),
        Err(e) => tracing::debug!(pid, "cannot reap an orphan of the workers: {e}"),
    }
}

/// SIGKILL an orphan that left its worker's session; one line names it.
fn end(pid: i32) {
    let read = |what: &str| std::fs::read(format!("/proc/{pid}/{what}")).unwrap_or_default();
    // Read before the kill: a dead process has no command line.
    let pool = pool_of(&read("environ"));
    let pool = pool.as_deref().unwrap_or("unknown");
    let uid = uid_of(&read("status")).map_or_else(|| "unknown".to_owned(), |u| u.to_string());
    let command = command_line(&read("cmdline"));
    let what = "a process that left its worker's session (setsid) and lost its parent";
    match kill(Pid::from_raw(pid), Signal::SIGKILL) {
        Ok(()) => tracing::warn!(pool, pid, "killed {what}, uid {uid}: {command}"),
        Err(e) => tracing::warn!(pool, pid, "cannot kill {what}, uid {uid} ({e}): {command}"),
    }
}

/// The pool named by `FCGIBRIDGE_POOL` in a process's environment (/proc/PID/environ),
/// which it inherited from its worker unless the app changed it.
fn pool_of(environ: &[u8]) -> Option<String> {
    let value = environ.split(|&b| b == 0).find_map(|v| v.strip_prefix(b"FCGIBRIDGE_POOL="))?;
    Some(prefix(&clean(&String::from_utf8_lossy(value)), 100).into_owned())
}

/// The real uid in /proc/PID/status.
fn uid_of(status: &[u8]) -> Option<u32> {
    let text = String::from_utf8_lossy(status);
    text.lines().find_map(|l| l.strip_prefix("Uid:"))?.split_whitespace().next()?.parse().ok()
}

/// /proc/PID/cmdline (arguments ending in NUL) as one line of the log: arguments joined by
/// spaces, control characters escaped, cut at [`SHOWN_COMMAND`] bytes.
fn command_line(raw: &[u8]) -> String {
    let raw = raw.strip_suffix(&[0]).unwrap_or(raw);
    if raw.is_empty() {
        return "(no command line)".to_owned();
    }
    let joined: Vec<u8> = raw.iter().map(|&b| if b == 0 { b' ' } else { b }).collect();
    prefix(&clean(&String::from_utf8_lossy(&joined)), SHOWN_COMMAND).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_session_is_read_after_the_last_parenthesis() {
        let line = "4321 (py (x) y) S 1 4321 4300 0 -1 4194560 5000 0 0 0 250 50 0 0 20 0 5 0 100";
        assert_eq!(parse_stat(4321, line), Some((1, Child { pid: 4321, state: b'S', session: 4300 })));
        assert_eq!(parse_stat(1, "garbage"), None);
        let (me, child) = stat(std::process::id() as i32).expect("/proc/self/stat");
        assert_eq!(me, nix::unistd::getppid().as_raw());
        assert_eq!(child.session, nix::unistd::getsid(None).expect("getsid").as_raw());
    }

    #[test]
    fn orphans_are_killed_only_out_of_the_session_and_reaped_only_when_not_our_own() {
        let child = |state, session| Child { pid: 7, state, session };
        assert_eq!(judge(&child(b'S', 99), false, 10), Verdict::Kill, "left the session");
        assert_eq!(judge(&child(b'S', 10), false, 10), Verdict::Leave, "in its worker's group still");
        assert_eq!(judge(&child(b'Z', 99), false, 10), Verdict::Reap);
        assert_eq!(judge(&child(b'Z', 10), false, 10), Verdict::Reap);
        // A worker, template or probe: tokio::process (or probe.rs) waits for it.
        assert_eq!(judge(&child(b'Z', 10), true, 10), Verdict::Own);
        assert_eq!(judge(&child(b'S', 99), true, 10), Verdict::Own);
    }

    #[test]
    fn a_killed_process_is_named_by_its_pool_uid_and_escaped_command_line() {
        assert_eq!(pool_of(b"A=1\0FCGIBRIDGE_POOL=shop\0B=2\0").as_deref(), Some("shop"));
        assert_eq!(pool_of(b"FCGIBRIDGE_POOL=a\x1bb\0").as_deref(), Some("a\\x1bb"));
        assert_eq!(pool_of(b"A=1\0"), None);
        assert_eq!(uid_of(b"Name:\tpython3\nUid:\t1001\t1001\t1001\t1001\n"), Some(1001));
        assert_eq!(
            command_line(b"python3\0-c\0import time; time.sleep(600)\0"),
            "python3 -c import time; time.sleep(600)"
        );
        assert_eq!(command_line(b"evil\0\n[fake] line\0"), "evil \\n[fake] line");
        assert_eq!(command_line(b""), "(no command line)");
        let long = command_line(&[b'x'; 500]);
        assert!(long.ends_with('…') && long.len() < 210, "{long}");
    }

    #[test]
    fn the_daemons_own_children_are_registered_before_anyone_can_look() {
        let mut child = spawn_own(|| std::process::Command::new("true").spawn(), |c| Some(c.id())).expect("spawn");
        assert!(own().contains(&child.id()));
        child.wait().expect("wait");
    }
}
