//! `fcgibridge check --import`: a pool's app imported as its workers' start imports it —
//! the same interpreter, chroot, limits, account, working directory and environment
//! (spawn.rs), and the worker's own loading code (main.py's `check_import`: `load_app`, the
//! interface check, and on failure the report a worker's start makes) — then the process
//! ends. Nothing is served: no socket, no ASGI lifespan. The app's code runs, as the pool's
//! user, as it would in a worker.
use super::spawn::ImportCheck;
use super::worker::{read_readiness, Readiness};
use crate::config::units::DurationDisplay;
use crate::config::Pool;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::AsyncReadExt;

/// The end of what an import printed that is kept (a traceback comes last).
const OUTPUT_KEPT: usize = 64 << 10;
/// How long a timed-out import gets to print its Python stacks before it is killed.
const STACKS_WAIT: Duration = Duration::from_secs(2);
/// Its stacks have all been read once no output came for this long.
const STACKS_QUIET: Duration = Duration::from_millis(100);
/// How long the output may take to end once the import's processes are gone (a process it
/// moved out of its group may hold the pipe for ever).
const OUTPUT_GRACE: Duration = Duration::from_secs(1);

/// What importing a pool's app came to.
#[derive(Debug)]
pub(crate) enum Imported {
    /// It loads; a worker would serve it as `interface` (`wsgi` or `asgi`).
    Ok { interface: &'static str, took: Duration },
    /// Why it does not: the worker's start-up error, as the daemon logs it after `worker
    /// failed to start:`; `output`: what the import printed (the traceback).
    Failed { why: String, output: String },
}

/// Import the app of `pool` (not a `command:` pool) with the worker package at
/// `python_path`. Its process group (what it started, less what it moved into a session of
/// its own) is killed on every path: when it takes longer than the pool's `startup-timeout`, when it
/// dies before reporting, when this future is dropped.
pub(crate) async fn import_app(pool: &Pool, python_path: &Path) -> Imported {
    let started = Instant::now();
    let ImportCheck { mut child, pid, mut ready, output } = match super::spawn::spawn_import_check(pool, python_path) {
        Ok(check) => check,
        Err(e) => return Imported::Failed { why: e.to_string(), output: String::new() },
    };
    // A process just started has its id; 0 would make the signals below reach this one's group.
    let Some(group) = libc::pid_t::try_from(pid).ok().filter(|&p| p > 0).map(Pid::from_raw) else {
        return Imported::Failed { why: "the started worker has no process id".into(), output: String::new() };
    };
    // Whatever the import started in its group ends with it on every path, also when this
    // future is dropped (Ctrl-C: check.rs); declared after `child`, so dropped before it.
    let mut group_guard = GroupKill(Some(group));
    let printed = Arc::new(Mutex::new(Vec::new()));
    let reader = tokio::spawn(keep_output(output, printed.clone()));
    let limit = pool.startup_timeout;
    let outcome = match tokio::time::timeout(limit, read_readiness(&mut ready)).await {
        Ok(Readiness::Ready { asgi }) => Ok(if asgi { "asgi" } else { "wsgi" }),
        Ok(Readiness::Error(why)) => Err(why),
        // The readiness pipe closed without a word: the process died (a crash in an
        // extension module), or the app closed the descriptor and goes on.
        Ok(Readiness::Silent) => {
            match tokio::time::timeout(limit.saturating_sub(started.elapsed()), leader_exited(pid)).await {
                Ok(()) => {
                    // The leader is not reaped yet: the group's id is still its own.
                    group_guard.kill();
                    let status = child.wait().await;
                    let how = status.map(super::describe_exit).unwrap_or_else(|e| format!("wait failed: {e}"));
                    let why = format!("the worker exited before it reported on the import: {how}");
                    return Imported::Failed { why, output: finish(reader, &printed).await };
                }
                Err(_) => Err(timed_out(group, limit, &printed).await),
            }
        }
        Err(_) => Err(timed_out(group, limit, &printed).await),
    };
    // The process ends here (it exits as soon as it has reported) and whatever the import
    // started with it: the group is the worker's own (child_setup), and its leader is not
    // reaped yet, so the id names no other group.
    group_guard.kill();
    let _ = child.wait().await;
    let output = finish(reader, &printed).await;
    match outcome {
        Ok(interface) => Imported::Ok { interface, took: started.elapsed() },
        Err(why) => Imported::Failed { why, output },
    }
}

/// SIGKILL to the import's process group, once, while its leader is unreaped.
struct GroupKill(Option<Pid>);

impl GroupKill {
    fn kill(&mut self) {
        if let Some(group) = self.0.take() {
            let _ = killpg(group, Signal::SIGKILL);
        }
    }
}

impl Drop for GroupKill {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Until the import's process has exited, without reaping it (its pid, and so its group's
/// id, stays reserved). Where pidfd_open(2) is missing (Linux < 5.3): at once.
async fn leader_exited(pid: u32) {
    if let Some(fd) = super::worker_child::pidfd_open(pid) {
        super::worker_child::wait_exited(&fd).await;
    }
}

/// Past `startup-timeout`: the Python stacks of every thread to the output (SIGUSR2, as the
/// daemon asks of a worker that misses it), then the process group killed.
async fn timed_out(group: Pid, limit: Duration, printed: &Mutex<Vec<u8>>) -> String {
    let printed_len = || printed.lock().unwrap_or_else(|e| e.into_inner()).len();
    let before = printed_len();
    let _ = nix::sys::signal::kill(group, Signal::SIGUSR2);
    // The dump is one write, as soon as the process runs again: done once output came and
    // then none for a moment (at most STACKS_WAIT: an import stuck in C answers late or never).
    let asked = Instant::now();
    let mut last = (before, asked);
    while asked.elapsed() < STACKS_WAIT && (last.0 == before || last.1.elapsed() < STACKS_QUIET) {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let now = printed_len();
        if now != last.0 {
            last = (now, Instant::now());
        }
    }
    let _ = killpg(group, Signal::SIGKILL);
    format!("did not import within startup-timeout {} (killed; its Python stacks follow)", DurationDisplay(limit))
}

/// Read the import's output to its end, keeping the last [`OUTPUT_KEPT`] bytes in `into`.
async fn keep_output(mut pipe: tokio::net::unix::pipe::Receiver, into: Arc<Mutex<Vec<u8>>>) {
    let mut chunk = [0u8; 8192];
    while let Ok(n @ 1..) = pipe.read(&mut chunk).await {
        let mut kept = into.lock().unwrap_or_else(|e| e.into_inner());
        kept.extend_from_slice(&chunk[..n]);
        let excess = kept.len().saturating_sub(OUTPUT_KEPT);
        kept.drain(..excess);
    }
}

/// The output, once the pipe ended or [`OUTPUT_GRACE`] passed.
async fn finish(reader: tokio::task::JoinHandle<()>, printed: &Mutex<Vec<u8>>) -> String {
    let _ = tokio::time::timeout(OUTPUT_GRACE, reader).await;
    let kept = printed.lock().unwrap_or_else(|e| e.into_inner());
    String::from_utf8_lossy(&kept).into_owned()
}
