//! Process supervision: the bridge starts, watches and replaces the worker processes of
//! every pool (see docs/worker-contract.md for what a worker is given).
mod isolate;
pub mod pool;
pub mod program;
pub mod runtime_dir;
mod spawn;
mod template;
mod worker_child;

use crate::backend::SlotConn;
use crate::config;
use crate::dispatch::Dispatcher;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use runtime_dir::RuntimeDir;

/// One running worker process, as the slots connected to it know it.
#[derive(Debug)]
pub struct WorkerHandle {
    pub pool: Arc<str>,
    pub pid: u32,
    /// Its listening socket (fd 0 in the worker).
    pub socket: PathBuf,
    alive: AtomicBool,
}

impl WorkerHandle {
    pub fn new(pool: Arc<str>, pid: u32, socket: PathBuf) -> Self {
        WorkerHandle { pool, pid, socket, alive: AtomicBool::new(true) }
    }

    pub fn is_alive(&self) -> bool {
        self.alive.load(Ordering::Acquire)
    }

    pub fn mark_dead(&self) {
        self.alive.store(false, Ordering::Release);
    }

    /// SIGKILL a worker that no longer responds; its supervisor reaps and replaces it.
    pub fn kill(&self) {
        if !self.is_alive() {
            return;
        }
        self.mark_dead();
        // Never 0 or negative: kill() would then signal a whole process group.
        if let Ok(pid @ 1..) = i32::try_from(self.pid) {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
        }
    }
}

/// A pool at run time: its configuration and its dispatcher.
pub struct PoolRuntime {
    pub name: Arc<str>,
    pub config: config::Pool,
    pub dispatcher: Dispatcher<SlotConn>,
}

impl PoolRuntime {
    pub fn new(config: config::Pool) -> Arc<PoolRuntime> {
        Arc::new(PoolRuntime {
            name: Arc::from(config.name.as_str()),
            dispatcher: Dispatcher::new(config.queue_size, config.queue_timeout),
            config,
        })
    }

    /// Requests this pool takes at once without answering 503: busy slots plus the queue.
    pub fn capacity(&self) -> usize {
        (self.config.processes as usize) * (self.config.threads as usize) + self.config.queue_size
    }
}

/// How the supervisor is asked to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    Running,
    /// SIGTERM the workers, give them time to exit.
    Graceful,
    /// SIGINT/SIGQUIT: stop them now.
    Fast,
}

/// All worker-slot tasks of all pools.
pub struct Supervisor {
    tasks: Vec<JoinHandle<()>>,
    stop: watch::Sender<Stop>,
}

impl Supervisor {
    /// Start `processes` workers for every pool.
    pub fn start(pools: &[Arc<PoolRuntime>], rt: &RuntimeDir) -> Result<Supervisor, runtime_dir::RuntimeDirError> {
        let (stop, stop_rx) = watch::channel(Stop::Running);
        let python_path = Arc::new(rt.python_path());
        let mut tasks = Vec::new();
        for p in pools {
            let dir = Arc::new(rt.pool_dir(&p.name)?);
            for index in 0..p.config.processes {
                let ctx = pool::SlotCtx {
                    pool: p.clone(),
                    index,
                    python_path: python_path.clone(),
                    socket_dir: dir.clone(),
                };
                tasks.push(tokio::spawn(pool::run_worker_slot(ctx, stop_rx.clone())));
            }
        }
        Ok(Supervisor { tasks, stop })
    }

    /// Stop every worker and wait until they are reaped.
    pub async fn stop(self, how: Stop) {
        let _ = self.stop.send(how);
        for t in self.tasks {
            let _ = t.await;
        }
    }
}
