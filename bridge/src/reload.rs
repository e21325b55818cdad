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
//! line says which). Call [`reload`] from anywhere that owns the daemon's state; the
//! control socket reaches it by raising SIGHUP.
use crate::config::{self, Config};
use crate::listen::ListenerSet;
use crate::registry::Registry;
use crate::supervise::{PoolRuntime, RuntimeDir, Supervisor};
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

/// What a reload changes: the daemon's running state.
pub(crate) struct Live<'a> {
    pub config: &'a mut Config,
    pub supervisor: &'a mut Supervisor,
    pub listeners: &'a mut ListenerSet,
    pub runtime_dir: &'a RuntimeDir,
    pub registry: &'a Registry,
}

/// Re-read `dir` and apply it. `restart_all`: also restart the workers of unchanged pools
/// (new application code). Ok: a summary; Err: why the running configuration stays.
pub(crate) async fn reload(dir: &Path, live: Live<'_>, restart_all: bool) -> Result<String, String> {
    let board = &live.registry.board;
    let outcome = apply(dir, live, restart_all).await;
    match &outcome {
        Ok(summary) => {
            tracing::info!("reload done: {summary}");
            board.record_reload(true, summary.clone());
        }
        Err(why) => {
            // One line per configuration error (a `check` names them all the same way).
            for line in why.lines() {
                tracing::error!("reload refused, the running configuration stays: {line}");
            }
            board.record_reload(false, why.clone());
        }
    }
    outcome
}

async fn apply(dir: &Path, live: Live<'_>, restart_all: bool) -> Result<String, String> {
    let new = config::load(dir).map_err(|e| e.to_string())?;
    // The interpreters run on a blocking thread: with one runtime thread, requests would
    // otherwise wait for them.
    let pools = new.pools.clone();
    match tokio::task::spawn_blocking(move || crate::supervise::probe::check_pools(&pools)).await {
        Ok(probed) => probed.map_err(|e| e.to_string())?,
        Err(e) => return Err(format!("the interpreter probe failed: {e}")),
    }
    let sockets = live.listeners.bind_new(&new.listeners).map_err(|e| e.to_string())?;

    let mut notes = Vec::new();
    let (old_g, new_g) = (&live.config.global, &new.global);
    if old_g != new_g {
        let later: Vec<&str> = [
            (old_g.runtime_dir != new_g.runtime_dir, "runtime-dir"),
            (old_g.log_level != new_g.log_level, "log-level"),
            (old_g.log_format != new_g.log_format, "log-format"),
            (old_g.access_log != new_g.access_log, "access-log"),
            (old_g.access_log_format != new_g.access_log_format, "access-log-format"),
            (old_g.status != new_g.status, "status"),
            (old_g.control_socket != new_g.control_socket, "control-socket"),
            (old_g.header_memory != new_g.header_memory, "header-memory"),
            (old_g.log_file != new_g.log_file, "log-file"),
        ]
        .into_iter()
        .filter_map(|(changed, key)| changed.then_some(key))
        .collect();
        if !later.is_empty() {
            tracing::warn!(
                "reload: bridge settings {} changed; they take effect when the daemon restarts",
                later.join(", ")
            );
            notes.push(format!("restart needed for bridge.{}", later.join(", bridge.")));
        }
    }

    let before: Vec<(String, config::Pool)> =
        live.supervisor.pools().iter().map(|p| (p.name.to_string(), p.config.clone())).collect();
    let pools = live
        .supervisor
        .reload(&new.pools, live.runtime_dir, restart_all, new.global.shutdown_timeout)
        .map_err(|e| e.to_string())?;
    live.registry.board.set_pools(pools.clone());
    let by_name: HashMap<String, Arc<PoolRuntime>> = pools.iter().map(|p| (p.name.to_string(), p.clone())).collect();
    // Before the listeners: their new routes name the new templates.
    let templates = live.registry.board.instances.reload(&new.templates, restart_all).await;
    let listeners = live.listeners.apply(&new.listeners, sockets, &by_name).map_err(|e| e.to_string())?;

    let (mut added, mut changed, mut removed) = (Vec::new(), Vec::new(), Vec::new());
    for p in &new.pools {
        match before.iter().find(|(n, _)| *n == p.name) {
            None => added.push(p.name.clone()),
            Some((_, old)) if old != p || restart_all => changed.push(p.name.clone()),
            Some(_) => {}
        }
    }
    for (name, _) in &before {
        if !new.pools.iter().any(|p| &p.name == name) {
            removed.push(name.clone());
        }
    }
    let list = |v: &[String]| if v.is_empty() { "none".to_owned() } else { v.join(", ") };
    let mut summary = format!(
        "pools added: {}; changed: {}; removed: {}; {templates}; {listeners}",
        list(&added),
        list(&changed),
        list(&removed)
    );
    for n in notes {
        summary.push_str("; ");
        summary.push_str(&n);
    }
    live.registry.rate_limits.set_enabled(new.global.log_rate_limit);
    live.registry.set_listeners(new.listeners.clone());
    *live.config = new;
    Ok(summary)
}
