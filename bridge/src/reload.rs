//! Reloading the configuration in the running daemon (SIGHUP, `fcgibridge reload`).
//!
//! 1. conf.d is read and validated again, and the pools' interpreters probed (supervise/probe.rs);
//!    an invalid configuration is refused with the same message `fcgibridge check`
//!    prints, and the running one stays.
//! 2. New listener addresses are bound; a busy address refuses the reload (nothing changed).
//! 3. Pools (supervise/mod.rs, `Supervisor::reload`): unchanged pools keep running
//!    untouched; changed ones take their new settings, with a rolling, readiness-gated
//!    restart of their workers when what a worker *is* changed (app, python, env, threads,
//!    isolation…); new pools start; removed ones finish their requests and stop.
//! 4. Listeners (listen/mod.rs, `ListenerSet::apply`): those whose address stays keep their
//!    socket — no connection is refused during a reload — and switch to the new routes at
//!    their next request; new ones start; removed ones stop accepting.
//!
//! `bridge:` settings other than shutdown-timeout take effect at the next restart (a log
//! line says which); so a log file whose directory is missing, which a start refuses, is
//! only warned of. Call [`reload`] from anywhere that owns the daemon's state: the
//! daemon's main loop does, for SIGHUP and SIGUSR2 (which can only log the outcome) and
//! for `fcgibridge reload` (which is answered with it; `--wait` then follows the rolling
//! restarts the reload started, rollout.rs).
use crate::config::{self, Config};
use crate::listen::ListenerSet;
use crate::registry::Registry;
use crate::rollout::Watched;
use crate::supervise::{PoolRuntime, RuntimeDir, Supervisor};
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

/// What a reload changes: the daemon's running state.
pub(crate) struct Live<'a> {
    pub config: &'a mut Config,
    /// The bridge settings the daemon started with: those that apply at a restart only
    /// are still these, whatever reloads came since.
    pub started: &'a config::Global,
    pub supervisor: &'a mut Supervisor,
    pub listeners: &'a mut ListenerSet,
    pub runtime_dir: &'a RuntimeDir,
    pub registry: &'a Registry,
}

/// Whose workers a reload restarts although their configuration did not change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Restart {
    /// Only pools whose workers change roll (SIGHUP, `fcgibridge reload`).
    Changed,
    /// Every pool and template (SIGUSR2, `fcgibridge reload --restart-workers`).
    All,
    /// These pools and templates (a template's name: all its instances), for
    /// `fcgibridge reload --restart-workers NAME…`: deploying one app restarts that app only.
    Only(Vec<String>),
}

impl Restart {
    /// Whether the workers of the pool or template `name` restart.
    pub(crate) fn includes(&self, name: &str) -> bool {
        match self {
            Self::Changed => false,
            Self::All => true,
            Self::Only(names) => names.iter().any(|n| n == name),
        }
    }

    /// Refuse names that are neither a pool nor a template of `config`, listing those there are.
    fn check(&self, config: &Config) -> Result<(), String> {
        let pools: Vec<&str> = config.pools.iter().map(|p| p.name.as_str()).collect();
        let templates: Vec<&str> = config.templates.iter().map(|t| t.name.as_str()).collect();
        self.check_names(&pools, &templates)
    }

    fn check_names(&self, pools: &[&str], templates: &[&str]) -> Result<(), String> {
        let Self::Only(names) = self else { return Ok(()) };
        let unknown: Vec<String> = names
            .iter()
            .filter(|n| !pools.contains(&n.as_str()) && !templates.contains(&n.as_str()))
            .map(|n| format!("{n:?}"))
            .collect();
        if unknown.is_empty() {
            return Ok(());
        }
        let list = |v: &[&str]| if v.is_empty() { "none".to_owned() } else { v.join(", ") };
        let mut why =
            format!("--restart-workers: no pool or template named {}; pools: {}", unknown.join(", "), list(pools));
        if !templates.is_empty() {
            why.push_str(&format!("; templates (all their instances restart): {}", list(templates)));
        }
        Err(why)
    }
}

/// The bridge settings that apply at a restart only and that `new` sets otherwise than
/// the daemon's `started` ones.
fn restart_needed(started: &config::Global, new: &config::Global) -> Option<Vec<&'static str>> {
    let later: Vec<&str> = [
        (started.runtime_dir != new.runtime_dir, "runtime-dir"),
        (started.log_level != new.log_level, "log-level"),
        (started.log_format != new.log_format, "log-format"),
        (started.access_log != new.access_log, "access-log"),
        (started.access_log_format != new.access_log_format, "access-log-format"),
        (started.status != new.status, "status"),
        (started.control_socket != new.control_socket, "control-socket"),
        (started.header_memory != new.header_memory, "header-memory"),
        (started.log_file != new.log_file, "log-file"),
    ]
    .into_iter()
    .filter_map(|(changed, key)| changed.then_some(key))
    .collect();
    (!later.is_empty()).then_some(later)
}

/// The end of the summary of a reload that found the configuration as it was.
pub(crate) const NOTHING_CHANGED: &str = "nothing changed (a reload loads no new application code: restart the \
                                          workers with fcgibridge reload --restart-workers POOL, or SIGUSR2)";

/// A reload that was applied: its one-line summary, and the pools it reconfigured or
/// started (what `fcgibridge reload --wait` follows).
pub(crate) struct Reloaded {
    pub summary: String,
    pub watched: Vec<Watched>,
}

/// Re-read `dir` and apply it; `restart`: whose workers restart although unchanged (new
/// application code). Err: why the running configuration stays.
pub(crate) async fn reload(dir: &Path, live: Live<'_>, restart: &Restart) -> Result<Reloaded, String> {
    let board = &live.registry.board;
    let before = crate::rollout::sent(live.supervisor.pools().iter().cloned().chain(board.instances.live_pools()));
    match apply(dir, live, restart).await {
        Ok((summary, warnings, pools)) => {
            // Each warning has a line of its own (with file:line) before this one; the
            // reply, which the caller reads without the log, carries them all.
            let counted = match warnings.len() {
                0 => String::new(),
                1 => "; 1 warning (logged above)".to_owned(),
                n => format!("; {n} warnings (logged above)"),
            };
            tracing::info!("reload done: {summary}{counted}");
            let summary = warnings.iter().fold(summary, |all, w| all + "; " + w);
            board.record_reload(true, summary.clone());
            let watched = crate::rollout::reconfigured(&before, &pools, board.instances.live_pools());
            Ok(Reloaded { summary, watched })
        }
        Err(why) => {
            // One line per configuration error (a `check` names them all the same way).
            for line in why.lines() {
                tracing::error!("reload refused, the running configuration stays: {line}");
            }
            board.record_reload(false, why.clone());
            Err(why)
        }
    }
}

/// A `direct` listener's socket belongs to its pool's workers from the bridge's start on
/// (docs/direct.md): adding one, removing one, or changing one's address, pool or
/// `direct` takes a restart of the bridge. Its `mount` and `path-info` reload (its
/// workers restart with them), and so does a new name: a listener is matched with the
/// one on its address first (the socket is kept by address), by name only where no
/// listener is on it. Err: what the reload would change.
fn direct_listeners_unchanged(old: &[config::Listener], new: &[config::Listener]) -> Result<(), String> {
    let shape = |l: &config::Listener| (l.address.clone(), l.direct, l.routes.clone());
    let changed: Vec<&str> = old
        .iter()
        .chain(new)
        .filter(|l| l.direct)
        .filter(|l| {
            let other = if old.iter().any(|o| std::ptr::eq(o, *l)) { new } else { old };
            let same =
                other.iter().find(|o| o.address == l.address).or_else(|| other.iter().find(|o| o.name == l.name));
            same.is_none_or(|o| shape(o) != shape(l))
        })
        .map(|l| l.name.as_str())
        .collect();
    match changed.first() {
        None => Ok(()),
        Some(name) => Err(format!(
            "listener {name:?}: a `direct` listener added, removed, or with a new address, pool or `direct` \
             takes effect at a restart of the bridge (its socket is its workers'); restart fcgibridge, or undo the change"
        )),
    }
}

/// Ok: the summary, the warnings (each logged: the pools', the templates' and their live
/// instances'), and the pools now running.
async fn apply(
    dir: &Path,
    live: Live<'_>,
    restart: &Restart,
) -> Result<(String, Vec<String>, Vec<Arc<PoolRuntime>>), String> {
    let new = config::load_for_reload(dir).map_err(|e| e.to_string())?;
    restart.check(&new)?;
    // The interpreters run on a blocking thread: with one runtime thread, requests would
    // otherwise wait for them.
    let pools = new.pools.clone();
    match tokio::task::spawn_blocking(move || crate::supervise::probe::check_pools(&pools)).await {
        Ok(probed) => probed.map_err(|e| e.to_string())?,
        Err(e) => return Err(format!("the interpreter probe failed: {e}")),
    }
    direct_listeners_unchanged(&live.config.listeners, &new.listeners)?;
    let sockets = live.listeners.bind_new(&new.listeners).map_err(|e| e.to_string())?;

    let mut notes = Vec::new();
    if let Some(later) = restart_needed(live.started, &new.global) {
        tracing::warn!(
            "reload: bridge settings {} differ from those the daemon started with; they take effect when it restarts",
            later.join(", ")
        );
        notes.push(format!("restart needed for bridge.{}", later.join(", bridge.")));
    }

    let before: Vec<(String, config::Pool)> =
        live.supervisor.pools().iter().map(|p| (p.name.to_string(), p.config.clone())).collect();
    let pools = live
        .supervisor
        .reload(&new.pools, live.runtime_dir, restart, new.global.shutdown_timeout)
        .map_err(|e| e.to_string())?;
    live.registry.board.set_pools(pools.clone());
    let by_name: HashMap<String, Arc<PoolRuntime>> = pools.iter().map(|p| (p.name.to_string(), p.clone())).collect();
    // Before the listeners: their new routes name the new templates.
    let (templates, instances_changed, template_warnings) =
        live.registry.board.instances.reload(&new.templates, restart).await;
    let listeners = live.listeners.apply(&new.listeners, sockets, &by_name).map_err(|e| e.to_string())?;

    let PoolsChanged { added, changed, restarted, removed } = pools_changed(&before, &new.pools, restart);
    let list = |v: &[String]| if v.is_empty() { "none".to_owned() } else { v.join(", ") };
    let mut summary =
        format!("pools added: {}; changed: {}; removed: {}", list(&added), list(&changed), list(&removed));
    // Only when asked for (--restart-workers, SIGUSR2): a SIGHUP's line stays as it was.
    if !restarted.is_empty() {
        summary.push_str(&format!("; restarted: {}", restarted.join(", ")));
    }
    summary.push_str(&format!("; {templates}; {listeners}"));
    // SIGHUP loaded new code under uWSGI (and `apachectl graceful` under mod_wsgi): say
    // that this one did not.
    if *restart == Restart::Changed && *live.config == new && !instances_changed {
        notes.push(NOTHING_CHANGED.to_owned());
    }
    // Said once the reload is taken: a refused one names its errors instead.
    for w in &new.warnings {
        tracing::warn!("reload: {}", config::logged_warning(w));
    }
    let warnings = new.warnings.iter().cloned().chain(template_warnings).collect();
    for line in new.pools.iter().filter_map(crate::config::Pool::python_from_shebang) {
        tracing::info!("{line}");
    }
    for n in notes {
        summary.push_str("; ");
        summary.push_str(&n);
    }
    live.registry.rate_limits.set_enabled(new.global.log_rate_limit);
    live.registry.set_listeners(new.listeners.clone());
    live.registry.set_stop_bound(&new);
    *live.config = new;
    Ok((summary, warnings, pools))
}

/// The names of the pools a reload adds, changes, restarts and removes.
#[derive(Debug, PartialEq, Eq)]
struct PoolsChanged {
    added: Vec<String>,
    /// Their configuration changed. A pool whose listeners moved is not changed: only its
    /// workers' hint (FCGIBRIDGE_LISTENERS) is.
    changed: Vec<String>,
    /// Their workers restart because the reload asked for it (`--restart-workers`,
    /// SIGUSR2), changed or not.
    restarted: Vec<String>,
    removed: Vec<String>,
}

fn pools_changed(before: &[(String, config::Pool)], new: &[config::Pool], restart: &Restart) -> PoolsChanged {
    let mut names = PoolsChanged { added: Vec::new(), changed: Vec::new(), restarted: Vec::new(), removed: Vec::new() };
    for p in new {
        let Some((_, old)) = before.iter().find(|(n, _)| *n == p.name) else {
            names.added.push(p.name.clone());
            continue;
        };
        if !old.same_but_listeners(p) {
            names.changed.push(p.name.clone());
        }
        if restart.includes(&p.name) {
            names.restarted.push(p.name.clone());
        }
    }
    names.removed =
        before.iter().filter(|(name, _)| !new.iter().any(|p| &p.name == name)).map(|(n, _)| n.clone()).collect();
    names
}

#[cfg(test)]
mod tests {
    use super::{direct_listeners_unchanged, Restart};

    #[test]
    fn a_direct_listener_changes_only_with_a_restart() {
        use crate::config::Listener;
        let plain = Listener::for_tests("web", 9000);
        let direct = Listener { direct: true, ..Listener::for_tests("fast", 9001) };
        let both = [plain.clone(), direct.clone()];
        assert_eq!(direct_listeners_unchanged(&both, &both), Ok(()));
        // Its mount reloads (the workers restart with it); plain listeners come and go.
        let mounted = Listener { mount: Some("/shop".into()), ..direct.clone() };
        assert_eq!(direct_listeners_unchanged(&both, std::slice::from_ref(&mounted)), Ok(()));
        let refused = |old: &[Listener], new: &[Listener]| direct_listeners_unchanged(old, new).unwrap_err();
        assert!(refused(&both, std::slice::from_ref(&plain))
            .starts_with("listener \"fast\": a `direct` listener added, removed"));
        assert!(refused(std::slice::from_ref(&plain), &both).contains("restart fcgibridge"));
        assert!(refused(&both, &[Listener { direct: false, ..direct.clone() }]).starts_with("listener \"fast\""));
        assert!(refused(&both, &[Listener { direct: true, ..plain.clone() }, direct.clone()])
            .starts_with("listener \"web\""));
        let moved = Listener { address: Listener::for_tests("x", 9002).address, ..direct.clone() };
        assert!(refused(&both, &[moved]).starts_with("listener \"fast\""));
        // Renamed on its address, with its pool: the same socket and workers. Its old name
        // on a plain listener elsewhere is another listener.
        let renamed = Listener { name: "quick".into(), ..direct.clone() };
        assert_eq!(direct_listeners_unchanged(&both, &[plain.clone(), renamed.clone()]), Ok(()));
        let old_name_elsewhere = Listener::for_tests("fast", 9003);
        assert_eq!(direct_listeners_unchanged(&both, &[plain.clone(), renamed.clone(), old_name_elsewhere]), Ok(()));
        // Renamed and moved, or renamed onto another pool: a restart.
        let elsewhere = Listener { address: Listener::for_tests("x", 9002).address, ..renamed.clone() };
        assert!(refused(&both, &[plain.clone(), elsewhere]).starts_with("listener \"fast\""));
        let route = crate::config::Route { host: None, prefix: None, pool: "q".into() };
        let other_pool = Listener { routes: vec![route], ..renamed.clone() };
        assert!(refused(&both, &[plain.clone(), other_pool]).starts_with("listener \"fast\""));
        // A plain listener renamed onto the direct one's address and made direct: a restart.
        let took_over = Listener { direct: true, address: direct.address.clone(), ..plain.clone() };
        assert!(refused(std::slice::from_ref(&plain), &[took_over]).contains("restart fcgibridge"));
    }

    #[test]
    fn a_pool_whose_listener_moved_is_not_changed() {
        use crate::config::Pool;
        let pool = |name: &str, at: &str| Pool { name: name.into(), listened_at: vec![at.into()], ..Pool::for_tests() };
        let before = vec![("a".to_owned(), pool("a", "127.0.0.1:9000")), ("gone".to_owned(), pool("gone", "x"))];
        let new = [pool("a", "127.0.0.1:9001"), pool("b", "x")];
        let names = |v: &[&str]| v.iter().map(|n| n.to_string()).collect::<Vec<_>>();
        let seen = super::pools_changed(&before, &new, &Restart::Changed);
        assert_eq!((seen.added, seen.changed, seen.removed), (names(&["b"]), vec![], names(&["gone"])));
        let threads = [Pool { threads: 8, ..new[0].clone() }];
        assert_eq!(super::pools_changed(&before, &threads, &Restart::Changed).changed, names(&["a"]));
    }

    #[test]
    fn a_pool_restarted_as_asked_is_not_said_changed() {
        use crate::config::Pool;
        let pool = |name: &str, threads| Pool { name: name.into(), threads, ..Pool::for_tests() };
        let before = vec![("a".to_owned(), pool("a", 1)), ("b".to_owned(), pool("b", 1))];
        let names = |v: &[&str]| v.iter().map(|n| n.to_string()).collect::<Vec<_>>();
        let only_a = Restart::Only(names(&["a"]));
        let same = super::pools_changed(&before, &[pool("a", 1), pool("b", 1)], &only_a);
        assert_eq!((same.changed, same.restarted), (vec![], names(&["a"])));
        // Changed and restarted: named under both.
        let edited = super::pools_changed(&before, &[pool("a", 4), pool("b", 4), pool("new", 1)], &only_a);
        assert_eq!((edited.changed, edited.restarted), (names(&["a", "b"]), names(&["a"])));
        // SIGUSR2: every pool that was running; a new one only starts.
        let all = super::pools_changed(&before, &[pool("a", 1), pool("b", 1), pool("new", 1)], &Restart::All);
        assert_eq!((all.added, all.changed, all.restarted), (names(&["new"]), vec![], names(&["a", "b"])));
    }

    #[test]
    fn a_restart_names_pools_and_templates_of_the_configuration() {
        let only = |names: &[&str]| Restart::Only(names.iter().map(|n| n.to_string()).collect());
        assert!(only(&["a"]).includes("a") && !only(&["a"]).includes("b"));
        assert!(Restart::All.includes("b") && !Restart::Changed.includes("b"));
        assert_eq!(only(&["a", "sites"]).check_names(&["a", "b"], &["sites"]), Ok(()));
        assert_eq!(Restart::All.check_names(&[], &[]), Ok(()));
        assert_eq!(
            only(&["a", "shop", "blog"]).check_names(&["a", "b"], &[]),
            Err(r#"--restart-workers: no pool or template named "shop", "blog"; pools: a, b"#.to_owned())
        );
        assert_eq!(
            only(&["x"]).check_names(&["a"], &["sites"]),
            Err(r#"--restart-workers: no pool or template named "x"; pools: a; templates (all their instances restart): sites"#
                .to_owned())
        );
    }
}
