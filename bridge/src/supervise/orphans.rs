//! What the apps start and leave behind. The daemon is a child subreaper
//! (PR_SET_CHILD_SUBREAPER, set at start by [`adopt`]): a process whose parent dies is
//! reparented to the daemon rather than to init, so every descendant of a worker (or of a
//! preload template's fork) that outlives its parent becomes the daemon's child, and is
//! found here among the children the daemon did not start:
//!
//! - one in another session that came from a worker called `setsid()` (a double-forked
//!   daemon, `subprocess.Popen(..., start_new_session=True)`), which also took it out of
//!   its worker's process group, out of reach of the group kill at the worker's exit
//!   (manager.rs `end_left_behind`): it is killed (SIGKILL), logged (rate-limited), and
//!   reaped. "Came from a worker": its environment carries `FCGIBRIDGE_POOL` (inherited
//!   from its worker), or it runs as another user than the daemon (a pool's account). The
//!   daemon's own children never leave its session (spawn.rs, template.rs and probe.rs
//!   only `setpgid`);
//! - any other child in another session is none of the workers': the daemon may have it
//!   from before its exec (a wrapper's `setsid helper &`), or be PID 1 in a container, to
//!   which everything orphaned in it is reparented (an operator's `docker exec` job). It
//!   is left alone, and reaped once it has exited;
//! - one still in the daemon's session (a double fork without `setsid`, `cmd &` in a shell)
//!   is left alone while it is in the process group of a live worker (every worker leads
//!   one): it goes with that worker. One from a worker that moved to a group of its own
//!   (`setpgid`, `Popen(process_group=0)`), or whose worker is gone, is out of reach of the
//!   group kill: it is killed as one that left the session. Every orphan is reaped once it
//!   has exited, so that no zombie piles up.
//!
//! The exit statuses of the daemon's own children belong to tokio::process (and to
//! probe.rs): they are registered as they are started ([`spawn_own`]), and only a pid that
//! is none of them is waited for — that pid alone, never waitpid(-1). When the daemon could
//! not become a subreaper nothing is registered and nothing is looked at.
//!
//! A look is taken on SIGCHLD (an adopted process exited), when a worker exits ([`look`]:
//! what it left was just adopted), every [`LOOK_EVERY`] (a double fork is adopted while
//! its worker runs, and nothing tells the daemon), and once more when the daemon stops.
//! Looks never overlap (one lock from the scan to the last kill): another look could reap a
//! child this one is about to kill, and its pid be reused.
use crate::logging::escape::{clean, prefix};
use crate::logging::ratelimit::{Kind, Level, RateLimits, Scope};
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag};
use nix::unistd::Pid;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;
use tokio::sync::Notify;

/// How often the children are looked at without a signal.
const LOOK_EVERY: Duration = Duration::from_secs(5);
/// The command line logged of a killed process, at most (bytes).
const SHOWN_COMMAND: usize = 200;

/// The pids of the children the daemon started itself (workers, templates, probes).
static OWN: Mutex<Vec<u32>> = Mutex::new(Vec::new());
/// The workers preload templates forked (the templates' children, not the daemon's), each
/// leading a process group of its own, while their tasks hold them.
static FORKED: Mutex<Vec<u32>> = Mutex::new(Vec::new());
/// Held for a whole look: the orphans killed and not reaped yet (each is killed, and
/// logged, once).
static LOOKING: Mutex<Vec<i32>> = Mutex::new(Vec::new());
/// A worker exited: look now.
static LOOK: Notify = Notify::const_new();
/// Whether the daemon became a subreaper (unset before [`adopt`]).
static WATCHING: OnceLock<bool> = OnceLock::new();

/// The kill line, rate-limited per pool (as its process claims it): an app that detaches a
/// helper per request would log one line per request.
static KILLED: Kind = Kind {
    scope: Scope::Pool,
    what: "processes killed",
    reason: "left their worker's process group or session",
    level: Level::Warn,
    burst: 5,
};

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
    // Without a subreaper nothing looks, and nothing would ever prune the registry.
    if WATCHING.get() != Some(&false) {
        own.extend(pid(&child));
    }
    Ok(child)
}

/// A worker a template forked, known as such while this lives: an orphan in its process
/// group is left to go with it, even once the worker itself is an orphan (its template died,
/// and worker_child.rs kills it).
pub(super) struct ForkedWorker(u32);

impl ForkedWorker {
    pub(super) fn register(pid: u32) -> Self {
        lock(&FORKED).push(pid);
        Self(pid)
    }
}

impl Drop for ForkedWorker {
    fn drop(&mut self) {
        let mut forked = lock(&FORKED);
        if let Some(i) = forked.iter().position(|&p| p == self.0) {
            forked.swap_remove(i);
        }
    }
}

/// Look at the daemon's children soon: a worker exited.
pub(super) fn look() {
    LOOK.notify_one();
}

/// At start: become a child subreaper and watch the children. Without it (an error, which
/// is logged) a process that left its worker's session runs on under init.
pub(crate) fn adopt(limits: Arc<RateLimits>) {
    if let Err(e) = nix::sys::prctl::set_child_subreaper(true) {
        tracing::warn!("cannot become a child subreaper ({e}): processes the apps start in a session of their own (setsid) will outlive their workers");
        let _ = WATCHING.set(false);
        own().clear();
        return;
    }
    let _ = WATCHING.set(true);
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
            look_now(limits.clone()).await;
        }
    });
}

/// The daemon stops: what its last workers left.
pub(crate) async fn last_look(limits: Arc<RateLimits>) {
    if WATCHING.get() == Some(&true) {
        look_now(limits).await;
    }
}

async fn look_now(limits: Arc<RateLimits>) {
    let _ = tokio::task::spawn_blocking(move || sweep(&limits)).await;
}

/// A child of the daemon, as its /proc/PID/stat shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Child {
    pid: i32,
    state: u8,
    group: i32,
    session: i32,
}

/// What an orphan shows of where it came from (read before it is killed).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Origin {
    /// `FCGIBRIDGE_POOL` in its environment, which it inherited from its worker.
    pool: Option<String>,
    /// Its real uid.
    uid: Option<u32>,
}

impl Origin {
    fn of(pid: i32) -> Self {
        let read = |what: &str| std::fs::read(format!("/proc/{pid}/{what}")).unwrap_or_default();
        Self { pool: pool_of(&read("environ")), uid: uid_of(&read("status")) }
    }

    /// A worker's descendant: it carries a worker's environment, or runs as another user
    /// than the daemon (a pool's account). Anything else the daemon may have inherited.
    fn is_a_workers(&self, daemon_uid: u32) -> bool {
        self.pool.is_some() || self.uid.is_some_and(|uid| uid != daemon_uid)
    }
}

/// What a look does with one child of the daemon.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Verdict {
    /// Started by the daemon: its exit status is someone else's.
    Own,
    /// An orphan that has exited: reap it.
    Reap,
    /// A worker's orphan out of reach of its worker's group kill: kill it (and reap it
    /// once it has died).
    Kill(Origin, Escape),
    /// An orphan in a live worker's process group, or one that did not come from a worker:
    /// reaped once it exits.
    Leave,
}

/// How a worker's orphan got out of reach of the kill of its worker's process group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Escape {
    /// `setsid()`: a session (and group) of its own.
    Session,
    /// A process group of its own (`setpgid`), or its worker's group outlived the worker.
    Group,
}

impl Escape {
    fn what(self) -> &'static str {
        match self {
            Self::Session => "a process that left its worker's session (setsid) and lost its parent",
            Self::Group => "a process that left its worker's process group (setpgid) or outlived its worker",
        }
    }
}

/// Where the daemon stands, for [`judge`].
struct Daemon {
    session: i32,
    uid: u32,
}

/// `in_a_workers_group` is asked, and `origin` read, only for a live orphan.
fn judge(
    c: &Child,
    own: bool,
    daemon: &Daemon,
    in_a_workers_group: impl FnOnce(i32) -> bool,
    origin: impl FnOnce() -> Origin,
) -> Verdict {
    if own {
        return Verdict::Own;
    } else if c.state == b'Z' {
        return Verdict::Reap;
    }
    let escape = if c.session != daemon.session {
        Escape::Session
    } else if in_a_workers_group(c.group) {
        return Verdict::Leave;
    } else {
        Escape::Group
    };
    let origin = origin();
    if origin.is_a_workers(daemon.uid) {
        Verdict::Kill(origin, escape)
    } else {
        Verdict::Leave
    }
}

/// One look at the daemon's children.
fn sweep(limits: &RateLimits) {
    let mut killed = lock(&LOOKING);
    let me = std::process::id() as i32;
    let Ok(session) = nix::unistd::getsid(None) else { return };
    let daemon = Daemon { session: session.as_raw(), uid: nix::unistd::getuid().as_raw() };
    forget_reaped(me);
    let children = children_of(me);
    // After the scan: a child found there and started by the daemon is registered by now
    // (spawn_own holds the registry from before the fork until it is).
    let own: Vec<bool> = {
        let own = own();
        children.iter().map(|c| u32::try_from(c.pid).is_ok_and(|pid| own.contains(&pid))).collect()
    };
    killed.retain(|pid| children.iter().any(|c| c.pid == *pid && c.state != b'Z'));
    let mut worker_groups = None;
    for (c, own) in children.iter().zip(own) {
        let in_a_workers_group = |group| worker_groups.get_or_insert_with(live_worker_groups).contains(&group);
        match judge(c, own, &daemon, in_a_workers_group, || Origin::of(c.pid)) {
            Verdict::Reap => reap(c.pid),
            Verdict::Kill(origin, escape) if !killed.contains(&c.pid) => {
                killed.push(c.pid);
                end(c.pid, &origin, escape, limits);
            }
            _ => {}
        }
    }
}

/// Drop the registered pids that are no children any more (their owners reaped them). The
/// /proc reads are made without the registry held: spawns do not wait for them.
fn forget_reaped(me: i32) {
    let registered = own().clone();
    let gone: Vec<u32> =
        registered.into_iter().filter(|&pid| i32::try_from(pid).ok().and_then(parent_of) != Some(me)).collect();
    let mut own = own();
    for pid in gone {
        // The first entry: a reused pid registered again since comes after it.
        if let Some(i) = own.iter().position(|&p| p == pid) {
            own.remove(i);
        }
    }
}

/// The processes whose parent is `parent`: those its threads' `children` files list, or
/// where the kernel has none (CONFIG_PROC_CHILDREN), every process's.
fn children_of(parent: i32) -> Vec<Child> {
    let tasks = format!("/proc/{parent}/task");
    let candidates = listed_children(std::path::Path::new(&tasks), parent)
        .unwrap_or_else(|| super::proc_stat::all_pids().unwrap_or_default());
    candidates
        .into_iter()
        .filter_map(|pid| {
            let (of, c) = stat(pid)?;
            (of == parent).then_some(c)
        })
        .collect()
}

/// `tasks`/TID/children (/proc/self/task) of every thread: an orphan is adopted by one of
/// them. None when the kernel has no such files.
fn listed_children(tasks: &std::path::Path, me: i32) -> Option<Vec<i32>> {
    // The main thread lives as long as the daemon: without its file, the kernel has none.
    if !tasks.join(me.to_string()).join("children").exists() {
        return None;
    }
    let mut pids = Vec::new();
    for task in std::fs::read_dir(tasks).ok()?.flatten() {
        // A thread that exited since the listing: its children went to another thread, and
        // the next look finds them.
        let text = std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
        pids.extend(text.split_whitespace().filter_map(|p| p.parse::<i32>().ok()));
    }
    Some(pids)
}

/// The process groups an orphan may stay in: the daemon's own, and those its children
/// (workers, templates, probes) and the templates' workers lead. Asked only when a live
/// orphan is in the daemon's session.
fn live_worker_groups() -> Vec<i32> {
    let mut groups = vec![nix::unistd::getpgrp().as_raw()];
    groups.extend(own().iter().chain(lock(&FORKED).iter()).filter_map(|&pid| i32::try_from(pid).ok()));
    groups
}

fn parent_of(pid: i32) -> Option<i32> {
    stat(pid).map(|(parent, _)| parent)
}

/// The parent and the child as /proc/PID/stat says (None: the process is gone).
fn stat(pid: i32) -> Option<(i32, Child)> {
    let stat = super::proc_stat::ProcStat::of(pid)?;
    Some((stat.parent, Child { pid, state: stat.state, group: stat.group, session: stat.session }))
}

/// Reap an orphan that has exited (that pid only: the daemon's other children are not ours
/// to wait for).
fn reap(pid: i32) {
    match waitpid(Pid::from_raw(pid), Some(WaitPidFlag::WNOHANG)) {
        Ok(status) => tracing::debug!(pid, "reaped an orphan of the workers: {status:?}"),
        Err(e) => tracing::debug!(pid, "cannot reap an orphan of the workers: {e}"),
    }
}

/// SIGKILL a worker's orphan out of reach of its group kill; one line names it (rate-limited).
fn end(pid: i32, origin: &Origin, escape: Escape, limits: &RateLimits) {
    // Read before the kill: a dead process has no command line.
    let command = command_line(&std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default());
    let result = kill(Pid::from_raw(pid), Signal::SIGKILL);
    let pool = origin.pool.as_deref().unwrap_or("unknown");
    if !limits.allow(&KILLED, pool) {
        return;
    }
    let uid = origin.uid.map_or_else(|| "unknown".to_owned(), |u| u.to_string());
    let what = escape.what();
    let todo = "the bridge kills what an app detaches from its worker: run a long-lived helper as a service of its own (docs/supervision-isolation.md)";
    match result {
        Ok(()) => tracing::warn!(pool, pid, "killed {what}, uid {uid}: {command}; {todo}"),
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
    fn only_a_workers_orphans_out_of_reach_of_its_group_kill_are_killed_and_only_others_reaped() {
        let child = |state, session| Child { pid: 7, state, group: 7, session };
        let daemon = Daemon { session: 10, uid: 0 };
        let from = |pool: Option<&str>, uid| Origin { pool: pool.map(str::to_owned), uid: Some(uid) };
        let in_group = |live: bool| move |_| live;
        let judged =
            |c: Child, own, live_group, origin: Origin| judge(&c, own, &daemon, in_group(live_group), || origin);
        // A worker's: it carries its worker's environment, or runs as a pool's account.
        let worker = from(Some("shop"), 0);
        let killed = |o: &Origin, e| Verdict::Kill(o.clone(), e);
        assert_eq!(judged(child(b'S', 99), false, false, worker.clone()), killed(&worker, Escape::Session), "setsid");
        let tenant = from(None, 1001);
        assert_eq!(judged(child(b'S', 99), false, false, tenant.clone()), killed(&tenant, Escape::Session));
        // In the daemon's session: left alone in a live worker's group, else out of reach.
        assert_eq!(judged(child(b'S', 10), false, true, worker.clone()), Verdict::Leave, "in its worker's group");
        assert_eq!(judged(child(b'S', 10), false, false, worker.clone()), killed(&worker, Escape::Group), "setpgid");
        // The daemon's own user and no worker's environment: inherited across exec, or
        // reparented to a PID 1 (a `docker exec` job): never killed.
        assert_eq!(judged(child(b'S', 99), false, false, from(None, 0)), Verdict::Leave);
        assert_eq!(judged(child(b'S', 10), false, false, from(None, 0)), Verdict::Leave);
        assert_eq!(judged(child(b'S', 99), false, false, Origin::default()), Verdict::Leave, "gone meanwhile");
        assert_eq!(judged(child(b'Z', 99), false, false, worker.clone()), Verdict::Reap);
        assert_eq!(judged(child(b'Z', 10), false, false, from(None, 0)), Verdict::Reap);
        // A worker, template or probe: tokio::process (or probe.rs) waits for it.
        assert_eq!(judged(child(b'Z', 10), true, false, worker.clone()), Verdict::Own);
        assert_eq!(judged(child(b'S', 99), true, false, worker), Verdict::Own);
        // The groups are asked for, and the origin read, only for a live orphan that may be killed.
        let unread = || -> Origin { panic!("read") };
        let unasked = |_| -> bool { panic!("asked") };
        assert_eq!(judge(&child(b'S', 10), false, &daemon, in_group(true), unread), Verdict::Leave);
        assert_eq!(judge(&child(b'Z', 10), false, &daemon, unasked, unread), Verdict::Reap);
        assert!(matches!(judge(&child(b'S', 99), false, &daemon, unasked, worker_origin), Verdict::Kill(..)));
    }

    fn worker_origin() -> Origin {
        Origin { pool: Some("p".to_owned()), uid: Some(0) }
    }

    #[test]
    fn the_daemons_own_group_and_a_templates_workers_are_groups_an_orphan_may_stay_in() {
        assert!(live_worker_groups().contains(&nix::unistd::getpgrp().as_raw()));
        let worker = ForkedWorker::register(4_000_123);
        assert!(live_worker_groups().contains(&4_000_123));
        drop(worker);
        assert!(!live_worker_groups().contains(&4_000_123));
    }

    #[test]
    fn an_orphans_origin_is_read_from_proc() {
        let me = Origin::of(std::process::id() as i32);
        assert_eq!(me.uid, Some(nix::unistd::getuid().as_raw()));
        assert_eq!(me.is_a_workers(nix::unistd::getuid().as_raw()), me.pool.is_some());
        let mut c = std::process::Command::new("sleep").arg("60").env("FCGIBRIDGE_POOL", "p").spawn().expect("sleep");
        // The environment is read once the exec is done.
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let origin = loop {
            let o = Origin::of(c.id() as i32);
            if o.pool.is_some() || std::time::Instant::now() > deadline {
                break o;
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        c.kill().expect("kill");
        c.wait().expect("wait");
        assert_eq!(origin.pool.as_deref(), Some("p"));
        assert!(origin.is_a_workers(nix::unistd::getuid().as_raw()));
    }

    #[test]
    fn a_thread_that_exits_mid_look_is_no_reason_to_scan_every_process() {
        let tasks = crate::scratch::scratch_dir("orphan-tasks");
        std::fs::create_dir_all(tasks.join("100")).expect("mkdir");
        std::fs::write(tasks.join("100/children"), "5 6 ").expect("write");
        // Listed, then gone before its children file was read.
        std::fs::create_dir_all(tasks.join("101")).expect("mkdir");
        std::fs::create_dir_all(tasks.join("102")).expect("mkdir");
        std::fs::write(tasks.join("102/children"), "7").expect("write");
        let mut found = listed_children(&tasks, 100).expect("the children files are there");
        found.sort_unstable();
        assert_eq!(found, [5, 6, 7]);
        // No file for the main thread: the kernel has none (CONFIG_PROC_CHILDREN).
        assert_eq!(listed_children(&tasks, 101), None);
        let me = std::process::id() as i32;
        assert!(listed_children(std::path::Path::new("/proc/self/task"), me).is_some());
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
    fn the_daemons_own_children_are_registered_and_forgotten_once_reaped() {
        let mut child = spawn_own(|| std::process::Command::new("true").spawn(), |c| Some(c.id())).expect("spawn");
        assert!(own().contains(&child.id()));
        child.wait().expect("wait");
        forget_reaped(std::process::id() as i32);
        assert!(!own().contains(&child.id()), "a reaped child stays registered");
    }
}
