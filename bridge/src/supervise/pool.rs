//! The life of one worker slot of a pool: start a worker, wait for READY, open its
//! connections, watch it, and replace it when it exits — with a capped exponential
//! backoff when workers die young (an import error must not turn into a spawn loop).
use super::spawn::{spawn_worker, Spawned};
use super::{PoolRuntime, Stop, WorkerHandle};
use crate::backend::SlotConn;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, BufReader};
use tokio::sync::watch;

const BACKOFF_START: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// A worker that was ready and lived this long is replaced at once; one dying faster
/// (crashing on every request) backs off like one that never became ready.
const HEALTHY_AFTER: Duration = Duration::from_secs(1);
/// How long a worker that closed its readiness pipe without a word gets before it is taken as ready.
const SILENT_READY_GRACE: Duration = Duration::from_secs(1);
const GRACEFUL_EXIT: Duration = Duration::from_secs(10);
const FAST_EXIT: Duration = Duration::from_secs(1);

/// What one slot task needs.
pub struct SlotCtx {
    pub pool: Arc<PoolRuntime>,
    pub index: u32,
    pub python_path: Arc<PathBuf>,
    pub socket_dir: Arc<PathBuf>,
}

enum Readiness {
    Ready,
    Error(String),
    /// The pipe closed without READY or ERROR.
    Silent,
}

/// Keep one worker running in this slot until asked to stop.
pub async fn run_worker_slot(ctx: SlotCtx, mut stop: watch::Receiver<Stop>) {
    let pool_name = ctx.pool.name.clone();
    let pool = &*pool_name;
    let mut generation: u64 = 0;
    let mut backoff = Duration::ZERO;
    loop {
        if *stop.borrow() != Stop::Running {
            return;
        }
        if !backoff.is_zero() {
            tracing::info!(pool, slot = ctx.index, "restarting the worker in {backoff:?}");
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = stop.changed() => return,
            }
        }
        generation += 1;
        let socket = ctx.socket_dir.join(format!("{}-{generation}.sock", ctx.index));
        let Spawned { mut child, pid, mut ready } = match spawn_worker(&ctx.pool.config, &ctx.python_path, &socket).await {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(pool, slot = ctx.index, "cannot start a worker: {e}");
                backoff = next_backoff(backoff);
                continue;
            }
        };
        let spawned_at = Instant::now();
        tracing::info!(pool, pid, slot = ctx.index, generation, "worker started");
        if let Some(out) = child.stdout.take() {
            tokio::spawn(log_lines(out, pool_name.clone(), pid, false));
        }
        if let Some(err) = child.stderr.take() {
            tokio::spawn(log_lines(err, pool_name.clone(), pid, true));
        }
        let handle = Arc::new(WorkerHandle::new(pool_name.clone(), pid, socket.clone()));

        // Wait for READY, an early exit, the startup timeout, or a stop.
        let startup = ctx.pool.config.startup_timeout;
        let readiness = tokio::select! {
            r = tokio::time::timeout(startup, read_readiness(&mut ready)) => r.ok(),
            status = child.wait() => {
                handle.mark_dead();
                let why = status.map(describe_exit).unwrap_or_else(|e| format!("wait failed: {e}"));
                tracing::error!(pool, pid, "worker exited before it was ready: {why}");
                remove_socket(&socket);
                backoff = next_backoff(backoff);
                continue;
            }
            _ = stop.changed() => {
                let how = *stop.borrow();
                stop_child(&mut child, &handle, how).await;
                remove_socket(&socket);
                return;
            }
        };
        let ready_ok = match readiness {
            Some(Readiness::Ready) => true,
            Some(Readiness::Silent) => {
                // php-cgi or flup never write to fd 3: alive after a grace period means ready.
                tokio::select! {
                    _ = tokio::time::sleep(SILENT_READY_GRACE) => true,
                    _ = child.wait() => false,
                }
            }
            Some(Readiness::Error(msg)) => {
                tracing::error!(pool, pid, "worker failed to start: {msg}");
                false
            }
            None => {
                tracing::error!(pool, pid, "worker not ready within startup-timeout {startup:?}; killing it");
                false
            }
        };
        if !ready_ok {
            handle.mark_dead();
            stop_child(&mut child, &handle, Stop::Fast).await;
            remove_socket(&socket);
            backoff = next_backoff(backoff);
            continue;
        }

        let threads = ctx.pool.config.threads;
        let mut connected = 0;
        for _ in 0..threads {
            match SlotConn::connect(handle.clone()).await {
                Ok(slot) => {
                    ctx.pool.dispatcher.release(slot);
                    connected += 1;
                }
                Err(e) => tracing::error!(pool, pid, "cannot connect to the worker socket {}: {e}", socket.display()),
            }
        }
        tracing::info!(pool, pid, connections = connected, "worker ready in {:.0?}", spawned_at.elapsed());
        let ready_at = Instant::now();

        tokio::select! {
            status = child.wait() => {
                handle.mark_dead();
                ctx.pool.dispatcher.purge();
                let why = status.map(describe_exit).unwrap_or_else(|e| format!("wait failed: {e}"));
                tracing::error!(pool, pid, "worker exited: {why}; replacing it");
                remove_socket(&socket);
                backoff = if ready_at.elapsed() >= HEALTHY_AFTER { Duration::ZERO } else { next_backoff(backoff) };
            }
            _ = stop.changed() => {
                let how = *stop.borrow();
                handle.mark_dead();
                ctx.pool.dispatcher.purge();
                stop_child(&mut child, &handle, how).await;
                remove_socket(&socket);
                return;
            }
        }
    }
}

fn next_backoff(current: Duration) -> Duration {
    if current.is_zero() {
        BACKOFF_START
    } else {
        (current * 2).min(BACKOFF_MAX)
    }
}

fn remove_socket(path: &std::path::Path) {
    let _ = std::fs::remove_file(path);
}

/// SIGTERM, then SIGKILL if the worker has not exited in time.
async fn stop_child(child: &mut super::worker_child::WorkerChild, handle: &WorkerHandle, how: Stop) {
    handle.mark_dead();
    if let Some(pid) = child.id().and_then(|p| i32::try_from(p).ok()).filter(|&p| p > 0) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGTERM);
    }
    let grace = if how == Stop::Fast { FAST_EXIT } else { GRACEFUL_EXIT };
    match tokio::time::timeout(grace, child.wait()).await {
        Ok(Ok(status)) => tracing::info!(pool = %handle.pool, pid = handle.pid, "worker stopped: {}", describe_exit(status)),
        _ => {
            tracing::warn!(pool = %handle.pool, pid = handle.pid, "worker did not exit within {grace:?}; killing it");
            let _ = child.kill().await;
        }
    }
}

fn describe_exit(status: std::process::ExitStatus) -> String {
    if let Some(code) = status.code() {
        format!("exit status {code}")
    } else if let Some(sig) = status.signal() {
        let name = nix::sys::signal::Signal::try_from(sig).map(|s| s.as_str()).unwrap_or("unknown");
        format!("killed by signal {sig} ({name}){}", if status.core_dumped() { ", core dumped" } else { "" })
    } else {
        format!("{status}")
    }
}

/// The first line written to the readiness pipe.
async fn read_readiness(pipe: &mut tokio::net::unix::pipe::Receiver) -> Readiness {
    let mut buf = Vec::with_capacity(128);
    let mut chunk = [0u8; 512];
    loop {
        match pipe.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                if buf.contains(&b'\n') || buf.len() > 4096 {
                    break;
                }
            }
        }
    }
    let line = String::from_utf8_lossy(&buf);
    let line = line.lines().next().unwrap_or("").trim();
    if line == "READY" {
        Readiness::Ready
    } else if let Some(msg) = line.strip_prefix("ERROR") {
        Readiness::Error(msg.trim().to_owned())
    } else if line.is_empty() {
        Readiness::Silent
    } else {
        Readiness::Error(format!("unexpected readiness message {line:?}"))
    }
}

/// Log every line a worker prints: stdout at info, stderr at warn, tagged with pool and pid.
async fn log_lines(pipe: impl AsyncRead + Unpin, pool: Arc<str>, pid: u32, is_stderr: bool) {
    const MAX_LINE: usize = 16 << 10;
    let mut reader = BufReader::with_capacity(8192, pipe);
    let mut line: Vec<u8> = Vec::new();
    let emit = |line: &[u8]| {
        let line = line.strip_suffix(b"\n").unwrap_or(line);
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let text = String::from_utf8_lossy(line);
        if is_stderr {
            tracing::warn!(pool = &*pool, pid, "{text}");
        } else {
            tracing::info!(pool = &*pool, pid, "{text}");
        }
    };
    loop {
        let buf = match reader.fill_buf().await {
            Ok([]) | Err(_) => break,
            Ok(b) => b,
        };
        let (take, found) = match buf.iter().position(|&b| b == b'\n') {
            Some(i) => (i + 1, true),
            None => (buf.len(), false),
        };
        line.extend_from_slice(&buf[..take]);
        reader.consume(take);
        if found || line.len() >= MAX_LINE {
            emit(&line);
            line.clear();
        }
    }
    if !line.is_empty() {
        emit(&line);
    }
}
