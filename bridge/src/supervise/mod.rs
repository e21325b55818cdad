//! Process supervision: the bridge starts, watches and replaces the worker processes of
//! every pool (see docs/worker-contract.md for what a worker is given).
pub(crate) mod access;
pub(crate) mod app_import;
pub(crate) mod fs_creds;
pub(crate) mod instances;
mod isolate;
pub(crate) mod manager;
pub(crate) mod orphans;
mod policy;
pub(crate) mod probe;
pub(crate) mod proc_stat;
pub(crate) mod program;
mod ready_check;
/// The param that marks a pool's ready-check request (supervise/ready_check.rs).
pub(crate) const READY_CHECK_PARAM: &[u8] = b"FCGIBRIDGE_READY_CHECK";
pub(crate) mod runtime_dir;
mod spawn;
pub(crate) mod stats;
mod template;
mod touch;
mod worker;
mod worker_child;

use crate::backend::SlotConn;
use crate::config;
use crate::dispatch::Dispatcher;
use crate::reload::Restart;
use manager::{ManagerCmd, Reconfig};
use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

pub(crate) use isolate::inside as inside_chroot;
pub(crate) use runtime_dir::RuntimeDir;
pub(crate) use spawn::{
    block_operator_signals, ignore_operator_signals, keep_inherited_descriptors_from_children, unblock_operator_signals,
};
pub(crate) use worker::describe_exit;

/// What every pool manager of the daemon (template instances' too) shares to start workers.
pub(crate) struct Spawner {
    /// Where the worker package is (the boot line puts it on every worker's `sys.path`).
    python_path: PathBuf,
    next_id: AtomicU64,
    /// The preloaded pools' fork templates (supervise/template.rs).
    templates: template::Templates,
    /// The sockets of the `direct` listeners, by the name of their pool (each has its own,
    /// and keeps it: by listener name, a reload that renames the listener would lose it):
    /// their pools' workers get them as fd 0 (docs/direct.md). Fixed at the start: a
    /// reload does not change them.
    direct_sockets: HashMap<String, Arc<OwnedFd>>,
    /// Each direct listener's relay (spawn.rs, [`spawn::Relay`]), by pool name; none
    /// where one could not be made.
    relays: HashMap<String, Arc<spawn::Relay>>,
}

impl Spawner {
    /// A spawner for workers whose package lives at `python_path`.
    pub(crate) fn new(python_path: PathBuf, direct_sockets: HashMap<String, Arc<OwnedFd>>) -> Arc<Self> {
        let relays = direct_sockets
            .keys()
            .filter_map(|name| match spawn::Relay::new() {
                Ok(r) => Some((name.clone(), Arc::new(r))),
                Err(e) => {
                    tracing::warn!(pool = &**name, "cannot make the direct listener's relay; a request on a kept connection waits for a thread of the process holding it: {e}");
                    None
                }
            })
            .collect();
        Arc::new(Self {
            python_path,
            next_id: AtomicU64::new(1),
            templates: template::Templates::default(),
            direct_sockets,
            relays,
        })
    }

    /// The socket of the `direct` listener of `pool`.
    fn direct_socket(&self, pool: &str) -> Option<Arc<OwnedFd>> {
        self.direct_sockets.get(pool).cloned()
    }

    /// The relay of the `direct` listener of `pool`.
    fn relay(&self, pool: &str) -> Option<Arc<spawn::Relay>> {
        self.relays.get(pool).cloned()
    }

    /// A new worker's generation. Unique across pools and reloads: a pool removed and added
    /// again by two reloads shares its socket directory with its predecessor's last workers.
    fn next_worker_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Retire the fork template of a pool that is removed, no longer preloads or restarts
    /// (`why`, for the log).
    fn retire_template(&self, pool: &str, why: &str) {
        self.templates.retire_pool(pool, why);
    }
}

/// Why a changed preloaded pool's template goes: its workers restart (SIGUSR2, `fcgibridge
/// reload --restart-workers`), or the pool no longer preloads.
fn retire_why(restart: bool) -> &'static str {
    if restart {
        "restart requested (reload --restart-workers or SIGUSR2): new workers fork from freshly imported code"
    } else {
        "preload turned off"
    }
}

/// The pool manager's mailbox and what it publishes for the status page.
pub(crate) struct PoolControl {
    cmd: mpsc::UnboundedSender<ManagerCmd>,
    cmd_rx: Mutex<Option<mpsc::UnboundedReceiver<ManagerCmd>>>,
    pub(crate) view: Mutex<stats::ManagerView>,
    /// Reconfigurations sent to the manager: its view reflects one once its `reconfigures`
    /// reaches this count (how `fcgibridge reload --wait` knows its reload arrived).
    pub(crate) reconfigures_sent: AtomicU64,
    /// Unix time the daemon made the pool (at its start, by a reload, or as a template's
    /// instance); a reload that changes the pool keeps it.
    pub(crate) start_time: f64,
}

impl PoolControl {
    /// The manager has ended: it takes no command in any more.
    pub(crate) fn manager_gone(&self) -> bool {
        self.cmd.is_closed()
    }
}

/// A pool at run time: its configuration, its dispatcher and its manager.
///
/// A reload that changes a pool's configuration makes a new `PoolRuntime` with the new
/// `config` and the *same* dispatcher and manager (the listeners switch to it; requests in
/// flight keep the old one), so the pool's queue, numbers and workers carry over.
pub(crate) struct PoolRuntime {
    pub name: Arc<str>,
    pub config: config::Pool,
    pub dispatcher: Arc<Dispatcher<SlotConn>>,
    pub control: Arc<PoolControl>,
    /// The workers' account when it is not the bridge's: the bridge serves a file the app
    /// hands off (respond/sendfile.rs) only if this account could read it.
    pub reader: Option<access::Reader>,
}

impl PoolRuntime {
    pub(crate) fn new(config: config::Pool) -> Arc<Self> {
        let (cmd, cmd_rx) = mpsc::unbounded_channel();
        Arc::new(Self {
            name: Arc::from(config.name.as_str()),
            dispatcher: Arc::new(Dispatcher::new(config.queue_size, config.queue_timeout)),
            control: Arc::new(PoolControl {
                cmd,
                cmd_rx: Mutex::new(Some(cmd_rx)),
                view: Mutex::default(),
                reconfigures_sent: AtomicU64::new(0),
                start_time: stats::unix_now(),
            }),
            reader: access::Reader::of(&config.isolation),
            config,
        })
    }

    /// Requests this pool takes at once without answering 503: busy slots plus the queue.
    pub(crate) fn capacity(&self) -> usize {
        let slots = self.config.interface.slots(self.config.threads, false);
        (self.config.processes as usize) * (slots as usize) + self.config.queue_size
    }

    /// Serving, or able to serve on demand: a free worker connection, or an ondemand pool
    /// (which has none until a request comes) that is not failing.
    pub(crate) fn serving(&self) -> bool {
        let v = self.dispatcher.view();
        v.idle_slots > 0
            || v.busy_slots > 0
            || (self.config.supervision.mode == config::supervision::Mode::OnDemand && v.unavailable.is_none())
    }

    fn send(&self, cmd: ManagerCmd) {
        let reconfigure = matches!(cmd, ManagerCmd::Reconfigure { .. });
        // A manager that has ended (an instance retired meanwhile) takes nothing in: a
        // reconfiguration counted then would hold `reload --wait` up to its deadline.
        if self.control.cmd.send(cmd).is_ok() && reconfigure {
            self.control.reconfigures_sent.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// How the supervisor is asked to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stop {
    /// SIGTERM the workers, give them time to exit.
    Graceful,
    /// SIGINT/SIGQUIT: stop them now.
    Fast,
}

/// The pool managers of the daemon.
pub(crate) struct Supervisor {
    pools: Vec<Arc<PoolRuntime>>,
    /// Managers of removed pools still finishing their requests.
    retiring: Vec<Arc<PoolRuntime>>,
    tasks: Vec<JoinHandle<()>>,
    spawner: Arc<Spawner>,
}

impl Supervisor {
    /// Start the manager of every pool; each starts its workers. `direct_sockets`: the
    /// `direct` listeners' sockets, by pool name (listen::take_direct).
    pub(crate) fn start(
        pools: &[Arc<PoolRuntime>],
        rt: &RuntimeDir,
        direct_sockets: HashMap<String, Arc<OwnedFd>>,
    ) -> Result<Self, runtime_dir::RuntimeDirError> {
        let mut s = Self {
            pools: Vec::new(),
            retiring: Vec::new(),
            tasks: Vec::new(),
            spawner: Spawner::new(rt.python_path(), direct_sockets),
        };
        for p in pools {
            s.start_manager(p, rt)?;
        }
        s.pools = pools.to_vec();
        Ok(s)
    }

    fn start_manager(&mut self, p: &Arc<PoolRuntime>, rt: &RuntimeDir) -> Result<(), runtime_dir::RuntimeDirError> {
        let Some(cmds) = p.control.cmd_rx.lock().unwrap_or_else(|e| e.into_inner()).take() else { return Ok(()) };
        let dir = rt.pool_dir(&p.name)?;
        let (m, events) = manager::Manager::new(
            p.name.clone(),
            Arc::new(p.config.clone()),
            p.dispatcher.clone(),
            p.control.clone(),
            self.spawner.clone(),
            dir,
        );
        self.tasks.push(tokio::spawn(manager::run(m, events, cmds)));
        Ok(())
    }

    /// What its managers share to start workers (template instances use it too).
    pub(crate) fn spawner(&self) -> Arc<Spawner> {
        self.spawner.clone()
    }

    /// The running pools, in configuration order.
    pub(crate) fn pools(&self) -> &[Arc<PoolRuntime>] {
        &self.pools
    }

    /// Apply a reloaded configuration's pools: unchanged pools stay as they are, changed
    /// ones get their new settings (and a rolling restart when the workers themselves
    /// change; `restart` forces one in the pools it names), new ones start, removed ones
    /// finish their requests (at most `drain_within`) and stop. Returns the pools now running.
    pub(crate) fn reload(
        &mut self,
        new: &[config::Pool],
        rt: &RuntimeDir,
        restart: &Restart,
        drain_within: Duration,
    ) -> Result<Vec<Arc<PoolRuntime>>, runtime_dir::RuntimeDirError> {
        let mut next = Vec::with_capacity(new.len());
        let mut added = Vec::new();
        for cfg in new {
            let restart = restart.includes(&cfg.name);
            match self.pools.iter().find(|p| p.config.name == cfg.name) {
                Some(old) if old.config == *cfg && !restart => next.push(old.clone()),
                Some(old) => {
                    // A restart re-imports the code: a preloaded pool's new workers must
                    // fork from a fresh template, not from the old one.
                    if old.config.isolation.preload && (!cfg.isolation.preload || restart) {
                        self.spawner.retire_template(&cfg.name, retire_why(restart));
                    }
                    let p = Arc::new(PoolRuntime {
                        name: old.name.clone(),
                        config: cfg.clone(),
                        dispatcher: old.dispatcher.clone(),
                        control: old.control.clone(),
                        reader: access::Reader::of(&cfg.isolation),
                    });
                    let why = if restart { Reconfig::Restart } else { Reconfig::Reload };
                    p.send(ManagerCmd::Reconfigure { config: Arc::new(cfg.clone()), why });
                    next.push(p);
                }
                None => {
                    let p = PoolRuntime::new(cfg.clone());
                    added.push(p.clone());
                    next.push(p);
                }
            }
        }
        for p in &added {
            tracing::info!(pool = &*p.name, "reload: new pool");
            self.start_manager(p, rt)?;
        }
        for old in &self.pools {
            if !new.iter().any(|c| c.name == old.config.name) {
                old.send(ManagerCmd::Remove { within: drain_within, why: "pool removed by reload".into() });
                self.spawner.retire_template(&old.config.name, "pool removed");
                self.retiring.push(old.clone());
            }
        }
        self.pools = next.clone();
        Ok(next)
    }

    /// Stop every worker and wait until they are reaped.
    /// Stop every pool. `until`: when a graceful stop gives up on direct workers' requests
    /// (the end of shutdown-timeout; the daemon counts only requests that pass it).
    /// What turns a graceful stop under way into a fast one (SIGINT or SIGQUIT while direct
    /// workers are still finishing their requests).
    pub(crate) fn hastener(&self) -> Hastener {
        Hastener(self.pools.iter().chain(self.retiring.iter()).cloned().collect())
    }

    pub(crate) async fn stop(self, how: Stop, until: std::time::Instant) {
        let mut waits = Vec::new();
        for p in self.pools.iter().chain(self.retiring.iter()) {
            let (done, rx) = oneshot::channel();
            p.send(ManagerCmd::Stop { how, done, until });
            waits.push(rx);
        }
        for w in waits {
            let _ = w.await;
        }
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

/// Every manager, to be told that the stop is now a fast one.
pub(crate) struct Hastener(Vec<Arc<PoolRuntime>>);

impl Hastener {
    /// Stop every worker now (SIGTERM, SIGKILL a second later), whatever it still runs.
    pub(crate) fn hasten(&self) {
        for p in &self.0 {
            // The graceful stop's own waiter is answered when the manager ends.
            let (done, _) = oneshot::channel();
            p.send(ManagerCmd::Stop { how: Stop::Fast, done, until: std::time::Instant::now() });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reconfiguration_counts_only_once_its_manager_has_it() {
        let p = PoolRuntime::new(config::Pool::for_tests());
        let sent = || p.control.reconfigures_sent.load(Ordering::Relaxed);
        let reconfigure = || ManagerCmd::Reconfigure { config: Arc::new(p.config.clone()), why: Reconfig::Restart };
        p.send(reconfigure());
        assert_eq!(sent(), 1);
        assert!(!p.control.manager_gone());
        // The manager ended (an instance retired before the reload reached it): nothing
        // will take the command in, so `reload --wait` must not wait for it.
        drop(p.control.cmd_rx.lock().unwrap().take());
        assert!(p.control.manager_gone());
        p.send(reconfigure());
        assert_eq!(sent(), 1);
    }
}
