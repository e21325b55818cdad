//! `fcgibridge reload --wait`: follow the pools a reload reconfigured or started until
//! their rolling restarts are over — every worker that takes requests runs the new code
//! or configuration — or until one of them cannot start its new workers, whose error is
//! then the answer.
//!
//! A pool manager takes a reload in asynchronously (a command on its mailbox); its
//! published view counts the reconfigurations it has taken in, so a waiter reads a view
//! only once it is about this reload (`PoolControl::reconfigures_sent`).
use crate::config::units::DurationDisplay;
use crate::supervise::stats::{ManagerView, WorkerInfo};
use crate::supervise::PoolRuntime;
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The shortest default wait: a rollout of quick apps is over long before.
const MIN_DEFAULT_WAIT: Duration = Duration::from_secs(120);
const POLL: Duration = Duration::from_millis(100);

/// A pool to follow, and the reconfigurations its manager must have taken in for its view
/// to tell about this reload.
pub(crate) struct Watched {
    pool: Arc<PoolRuntime>,
    reconfigures: u64,
    /// A template's instance: it may go away during the wait ([`Progress::Gone`]).
    instance: bool,
}

/// Reconfigurations sent so far to each pool, by name (taken before a reload).
pub(crate) fn sent(pools: impl IntoIterator<Item = Arc<PoolRuntime>>) -> HashMap<Arc<str>, u64> {
    pools.into_iter().map(|p| (p.name.clone(), p.control.reconfigures_sent.load(Ordering::Relaxed))).collect()
}

/// What a reload touched: the running `pools` it added or sent a new configuration, and
/// the template `instances` it sent one (an instance made meanwhile for a request is not
/// the reload's), these by name.
pub(crate) fn reconfigured(
    before: &HashMap<Arc<str>, u64>,
    pools: &[Arc<PoolRuntime>],
    mut instances: Vec<Arc<PoolRuntime>>,
) -> Vec<Watched> {
    let touched = |p: &Arc<PoolRuntime>, instance: bool| {
        let sent = p.control.reconfigures_sent.load(Ordering::Relaxed);
        let touched = before.get(&p.name).map_or(!instance, |&b| sent > b);
        touched.then(|| Watched { pool: p.clone(), reconfigures: sent, instance })
    };
    instances.sort_by(|a, b| a.name.cmp(&b.name));
    pools.iter().filter_map(|p| touched(p, false)).chain(instances.iter().filter_map(|p| touched(p, true))).collect()
}

/// How long `--wait` waits when not told: each pool's startup-timeout for every round of
/// replacements (max(1, processes/4) start at a time) plus its graceful-timeout, at
/// least two minutes. Failures end the wait at once; this only bounds a slow rollout.
pub(crate) fn default_within(watched: &[Watched]) -> Duration {
    watched
        .iter()
        .map(|w| {
            let c = &w.pool.config;
            let rounds = c.processes.max(1).div_ceil((c.processes / 4).max(1));
            c.startup_timeout * rounds + c.supervision.graceful_timeout
        })
        .fold(MIN_DEFAULT_WAIT, Duration::max)
}

/// Where a pool's rollout is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Progress {
    /// The manager has not taken the reload in yet, or workers of the previous
    /// configuration still take requests (`outdated`), or fewer new ones are `ready` than
    /// the pool wants; `error`: a start error meanwhile (a pool whose other workers run).
    Rolling { outdated: usize, ready: usize, wanted: u32, error: Option<String> },
    /// Every worker that takes requests is of the new generation, as many as the pool wants.
    Done { ready: usize },
    /// A template's instance that went away meanwhile (instance-idle-timeout, evicted for
    /// max-instances, stop-instance): done too, a request makes it afresh from the new
    /// configuration.
    Gone,
    /// The new workers cannot start (the pool's state and the last start error), or the
    /// pool went away.
    Failed(String),
}

/// A pool's rollout as its manager's view shows it; `reconfigures`: those the view must
/// have taken in to be about this reload.
pub(crate) fn progress(v: &ManagerView, reconfigures: u64) -> Progress {
    if v.state.is_empty() || v.reconfigures < reconfigures {
        return Progress::Rolling { outdated: 0, ready: 0, wanted: 0, error: None };
    }
    let error = v.failing.as_deref().unwrap_or("(no error recorded)");
    match v.state {
        "rollout-failing" => {
            return Progress::Failed(format!(
                "rollout-failing: its new workers cannot start, the previous ones serve on (one that exits is not replaced); worker failed to start: {error}"
            ))
        }
        "failing" => {
            return Progress::Failed(format!(
                "failing: no worker can start, requests get 503; worker failed to start: {error}"
            ))
        }
        "stopping" | "removing" => return Progress::Failed(format!("{}: it is going away", v.state)),
        _ => {}
    }
    // A retired direct worker takes connections until its threads left their accept loop.
    let takes_requests = |w: &WorkerInfo| matches!(w.state, "starting" | "ready") || w.accepting;
    let outdated = v.workers.iter().filter(|w| w.outdated && takes_requests(w)).count();
    let ready = v.workers.iter().filter(|w| !w.outdated && w.state == "ready").count();
    // A pool that wants no worker now (ondemand, idle) is done with none.
    if outdated == 0 && ready >= v.target_processes as usize {
        Progress::Done { ready }
    } else {
        Progress::Rolling { outdated, ready, wanted: v.target_processes, error: v.failing.clone() }
    }
}

/// A watched pool's rollout: [`progress`], but an `instance` that is being removed, or
/// whose manager is gone (`manager_gone`: it ended, the reload's command may be unread),
/// is [`Progress::Gone`]. A pool the daemon stops fails the wait all the same.
fn watched_progress(v: &ManagerView, reconfigures: u64, instance: bool, manager_gone: bool) -> Progress {
    if instance && (v.state == "removing" || (manager_gone && v.state != "stopping")) {
        return Progress::Gone;
    }
    progress(v, reconfigures)
}

/// Wait up to `within` for the rollouts of `watched`. Ok: one line of what is ready; Err:
/// a line per pool whose new workers cannot start, or what is still rolling at the deadline.
pub(crate) async fn wait(watched: &[Watched], within: Duration) -> Result<String, String> {
    let deadline = Instant::now() + within;
    loop {
        let now: Vec<(&str, Progress)> = watched
            .iter()
            .map(|w| {
                let view = w.pool.control.view.lock().unwrap_or_else(|e| e.into_inner()).clone();
                let gone = w.pool.control.manager_gone();
                (&*w.pool.name, watched_progress(&view, w.reconfigures, w.instance, gone))
            })
            .collect();
        let failed: Vec<String> = now
            .iter()
            .filter_map(|(name, p)| match p {
                Progress::Failed(why) => Some(format!("pool {name}: {why}")),
                _ => None,
            })
            .collect();
        if !failed.is_empty() {
            return Err(failed.join("\n"));
        }
        if now.iter().all(|(_, p)| matches!(p, Progress::Done { .. } | Progress::Gone)) {
            return Ok(done_line(&now));
        }
        if Instant::now() >= deadline {
            return Err(still_rolling(&now, within));
        }
        tokio::time::sleep(POLL).await;
    }
}

fn workers(n: usize) -> String {
    format!("{n} worker{}", if n == 1 { "" } else { "s" })
}

fn done_line(now: &[(&str, Progress)]) -> String {
    if now.is_empty() {
        return "rollout done: no pool changed".to_owned();
    }
    let pools: Vec<String> = now
        .iter()
        .map(|(name, p)| match p {
            Progress::Done { ready } => format!("{name} ({} ready)", workers(*ready)),
            Progress::Gone => format!("{name} (removed meanwhile)"),
            _ => name.to_string(),
        })
        .collect();
    format!("rollout done: {}", pools.join(", "))
}

fn still_rolling(now: &[(&str, Progress)], within: Duration) -> String {
    let pools: Vec<String> = now
        .iter()
        .filter_map(|(name, p)| match p {
            Progress::Rolling { outdated, ready, wanted, error } => Some(format!(
                "pool {name}: still taking requests on the previous code or configuration: {}; ready on the new one: {} of {wanted}{}",
                workers(*outdated),
                workers(*ready),
                error.as_ref().map(|e| format!("; worker failed to start: {e}")).unwrap_or_default()
            )),
            _ => None,
        })
        .collect();
    format!(
        "the rolling restart is not over after {} (it goes on; `fcgibridge status` follows it):\n{}",
        DurationDisplay(within),
        pools.join("\n")
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::supervise::stats::WorkerInfo;

    fn worker(state: &'static str, outdated: bool) -> WorkerInfo {
        WorkerInfo {
            index: 0,
            pid: 1,
            key: crate::dispatch::SlotKey::NONE.worker,
            state,
            spawn_time: 0.0,
            ready_time: None,
            rss_bytes: None,
            cpu_seconds: None,
            max_requests: None,
            recycle_time: None,
            recycle_pending: None,
            retiring_reason: None,
            processes_at_index: 1,
            last_restart_reason: None,
            outdated,
            accepting: false,
        }
    }

    fn view(state: &'static str, reconfigures: u64, workers: Vec<WorkerInfo>) -> ManagerView {
        ManagerView { state, reconfigures, target_processes: 2, workers, ..ManagerView::default() }
    }

    #[test]
    fn a_view_from_before_the_reload_says_nothing() {
        // Not published yet, or published before the manager took the reload in.
        assert!(matches!(progress(&ManagerView::default(), 0), Progress::Rolling { .. }));
        let v = view("running", 1, vec![worker("ready", false), worker("ready", false)]);
        assert!(matches!(progress(&v, 2), Progress::Rolling { .. }));
        assert_eq!(progress(&v, 1), Progress::Done { ready: 2 });
    }

    #[test]
    fn rolling_until_no_old_worker_takes_requests_and_the_new_ones_are_ready() {
        let rolling = |outdated, ready| Progress::Rolling { outdated, ready, wanted: 2, error: None };
        let v = view("running", 1, vec![worker("ready", true), worker("ready", true), worker("starting", false)]);
        assert_eq!(progress(&v, 1), rolling(2, 0));
        // A retired old worker finishing its requests does not hold the rollout up.
        let v = view("running", 1, vec![worker("draining", true), worker("ready", false), worker("ready", false)]);
        assert_eq!(progress(&v, 1), Progress::Done { ready: 2 });
        // A retired direct worker whose threads may still accept is still taking requests.
        let accepting = WorkerInfo { accepting: true, ..worker("draining", true) };
        let v = view("running", 1, vec![accepting, worker("ready", false), worker("ready", false)]);
        assert_eq!(progress(&v, 1), rolling(1, 2));
        // A pool that lost an old worker meanwhile: done once it has its workers again.
        let v = view("running", 1, vec![worker("stopping", true), worker("ready", false), worker("starting", false)]);
        assert_eq!(progress(&v, 1), rolling(0, 1));
        // A pool that was failing and was fixed: its first new worker is not ready yet.
        let v = view("starting", 1, vec![worker("starting", false)]);
        assert_eq!(progress(&v, 1), rolling(0, 0));
        // An ondemand pool that wants no worker is done with none.
        let v = ManagerView { target_processes: 0, ..view("idle", 1, vec![]) };
        assert_eq!(progress(&v, 1), Progress::Done { ready: 0 });
    }

    #[test]
    fn a_pool_whose_new_workers_cannot_start_fails_with_the_start_error() {
        let mut v = view("rollout-failing", 1, vec![worker("ready", true)]);
        v.failing = Some("SyntaxError: invalid syntax (app.py, line 3)".into());
        let Progress::Failed(why) = progress(&v, 1) else { panic!() };
        assert!(why.starts_with("rollout-failing: "), "{why}");
        assert!(why.ends_with("worker failed to start: SyntaxError: invalid syntax (app.py, line 3)"), "{why}");
        v.state = "failing";
        let Progress::Failed(why) = progress(&v, 1) else { panic!() };
        assert!(why.contains("requests get 503"), "{why}");
    }

    #[test]
    fn an_instance_that_goes_away_meanwhile_is_done_a_written_pool_fails() {
        // Retired during the wait (instance-idle-timeout, max-instances, stop-instance).
        let removing = view("removing", 1, vec![worker("draining", true)]);
        assert_eq!(watched_progress(&removing, 1, true, false), Progress::Gone);
        // Its manager ended before it took the reload in: its view is from before.
        assert_eq!(watched_progress(&removing, 2, true, true), Progress::Gone);
        let running = view("running", 0, vec![worker("ready", true)]);
        assert_eq!(watched_progress(&running, 1, true, true), Progress::Gone);
        assert!(matches!(watched_progress(&running, 1, true, false), Progress::Rolling { .. }));
        // A written pool removed by another reload, or the daemon stopping: the wait fails.
        let Progress::Failed(why) = watched_progress(&removing, 1, false, true) else { panic!() };
        assert_eq!(why, "removing: it is going away");
        let stopping = view("stopping", 1, vec![]);
        assert!(matches!(watched_progress(&stopping, 1, true, true), Progress::Failed(_)));
        assert!(matches!(watched_progress(&stopping, 1, false, false), Progress::Failed(_)));
        let now = [("sites[a.test]", Progress::Gone), ("sites[b.test]", Progress::Done { ready: 1 })];
        assert_eq!(done_line(&now), "rollout done: sites[a.test] (removed meanwhile), sites[b.test] (1 worker ready)");
    }

    #[test]
    fn the_lines_name_every_pool() {
        let now = [("a", Progress::Done { ready: 2 }), ("b", Progress::Done { ready: 1 })];
        assert_eq!(done_line(&now), "rollout done: a (2 workers ready), b (1 worker ready)");
        assert_eq!(done_line(&[]), "rollout done: no pool changed");
        let now = [
            ("a", Progress::Done { ready: 2 }),
            ("b", Progress::Rolling { outdated: 1, ready: 0, wanted: 2, error: Some("OSError: x".into()) }),
        ];
        let text = still_rolling(&now, Duration::from_secs(120));
        assert!(text.starts_with("the rolling restart is not over after 2m"), "{text}");
        assert!(
            text.ends_with(
                "\npool b: still taking requests on the previous code or configuration: 1 worker; ready on the new one: 0 workers of 2; worker failed to start: OSError: x"
            ),
            "{text}"
        );
    }
}
