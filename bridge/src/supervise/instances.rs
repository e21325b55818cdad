//! Instances of pool templates (config/template.rs): a real pool — its own manager,
//! dispatcher and workers — per key of a request (virtual host, authenticated user),
//! made by the first request for that key, which then waits in the new pool's queue
//! while its first worker starts.
//!
//! Before anything is made, the key is checked (an RFC 1123 host name, a conservative user
//! name, the template's `allow:`), and the app file must exist (a missing one is answered
//! 404 and remembered for `missing-cache`). New instances are limited to `spawn-rate` a
//! second and `max-instances` live ones: at the cap the least recently used idle instance
//! is stopped, else the request gets 503 with Retry-After. An instance refused before it
//! starts (its account, its configuration) is remembered for `missing-cache` too — an
//! account that could not be looked up (NSS answered with an error, not with "no such
//! user") only for its Retry-After, answered 503 meanwhile, so that a directory that hangs
//! costs one lookup per key in that time, not one per request — and pays from a budget of
//! its own, not from `spawn-rate`. An instance with no request running or waiting for
//! `instance-idle-timeout` since its last one ended is stopped. A key being resolved when a
//! reload removes its template (or the daemon stops) starts nothing: 503, Retry-After 1.
//! An instance's configuration is resolved and checked exactly as a written
//! pool's (user, script owner, chroot, the interpreter probe), and a `user:` below
//! `min-uid` is refused. Each key is made under a lock of its own: a key whose resolution
//! hangs (an account directory, an interpreter) holds up no other key, and its refusal is
//! remembered. A live instance's key is looked at again (account, files; the interpreter
//! only when something changed) at every reload and before it starts a worker once its
//! workers have all gone: a deleted account stops it, a changed one rolls it.
use super::manager::{self, ManagerCmd, Reconfig};
use super::{PoolRuntime, Spawner, Stop};
use crate::config::template::{account_refused, fill_raw, find_account, Placeholder, Template};
use crate::config::Pool;
use crate::logging::ratelimit::{Kind, Level, RateLimits, Scope};
use fastcgi_server::Params;
use std::collections::HashMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Where a route leads: a pool, or a template whose instance is picked per request.
#[derive(Clone)]
pub(crate) enum Target {
    Pool(Arc<PoolRuntime>),
    Template(Arc<TemplateRuntime>),
}

impl Target {
    /// The pool's or the template's name.
    pub(crate) fn name(&self) -> &str {
        match self {
            Self::Pool(p) => &p.name,
            Self::Template(t) => &t.name,
        }
    }

    /// Requests taken at once without a 503 (an instance's, for a template).
    pub(crate) fn capacity(&self) -> usize {
        match self {
            Self::Pool(p) => p.capacity(),
            Self::Template(t) => t.config().capacity,
        }
    }
}

/// Why a request gets no instance of a template.
#[derive(Debug, Clone, thiserror::Error)]
pub(crate) enum Refusal {
    #[error("bad {what} {value}: {why}")]
    BadKey { what: &'static str, value: String, why: &'static str },
    #[error("no {0} in the request")]
    NoKey(&'static str),
    #[error("key {0:?} does not match the template's allow pattern")]
    NotAllowed(String),
    #[error("no site for key {key:?}: {why}")]
    Missing { key: String, why: String },
    #[error("instance {key:?} refused: {why}")]
    Account { key: String, why: String },
    #[error("instance {key:?} cannot be made: {why}")]
    Broken { key: String, why: String },
    /// The account could not be looked up (the directory did not answer): remembered for
    /// its Retry-After only.
    #[error("instance {key:?} cannot be made now: {why}")]
    Lookup { key: String, why: String },
    #[error("new instance {0:?} refused: spawn-rate reached")]
    SpawnRate(String),
    #[error("new instance {key:?} refused: max-instances ({max}) live and none idle")]
    Full { key: String, max: u32 },
    /// Its template was removed by a reload, or the daemon is stopping, while the key was
    /// resolved: nothing is started (a retry is routed as the configuration is now).
    #[error("new instance {key:?} not started: {why}")]
    Closed { key: String, why: &'static str },
}

impl Refusal {
    /// The key of a refusal made for one key and remembered for it. A broken instance too:
    /// an interpreter that hangs would otherwise cost every request for its key the probe's
    /// 10 s; remembered for `missing-cache` only, so a fixed one is soon looked at again.
    fn key(&self) -> Option<&str> {
        match self {
            Self::Missing { key, .. }
            | Self::Account { key, .. }
            | Self::Lookup { key, .. }
            | Self::Broken { key, .. } => Some(key),
            _ => None,
        }
    }

    /// The same refusal given again from the cache: its line says so.
    fn cached(self) -> Self {
        let note = |why: String| format!("{why} (remembered for missing-cache)");
        match self {
            Self::Missing { key, why } => Self::Missing { key, why: note(why) },
            Self::Account { key, why } => Self::Account { key, why: note(why) },
            Self::Broken { key, why } => Self::Broken { key, why: note(why) },
            Self::Lookup { key, why } => {
                Self::Lookup { key, why: format!("{why} (remembered for {LOOKUP_RETRY_AFTER}s)") }
            }
            other => other,
        }
    }

    /// How long it is remembered: `missing-cache`, or a failed lookup's Retry-After.
    fn kept_for(&self, missing_cache: Duration) -> Duration {
        match self {
            Self::Lookup { .. } => Duration::from_secs(LOOKUP_RETRY_AFTER.into()),
            _ => missing_cache,
        }
    }

    /// The status the request is answered with, and its Retry-After.
    pub(crate) fn status(&self) -> (u16, Option<u32>) {
        match self {
            Self::BadKey { .. } => (400, None),
            Self::NoKey(what) => (if *what == "user" { 403 } else { 400 }, None),
            Self::NotAllowed(_) | Self::Missing { .. } => (404, None),
            Self::Account { .. } => (403, None),
            Self::Broken { .. } => (500, None),
            Self::Lookup { .. } => (503, Some(LOOKUP_RETRY_AFTER)),
            Self::SpawnRate(_) | Self::Full { .. } | Self::Closed { .. } => (503, Some(1)),
        }
    }

    /// The rate-limited log line it belongs to (logging/ratelimit.rs).
    pub(crate) fn kind(&self) -> &'static Kind {
        match self {
            Self::BadKey { .. } | Self::NoKey(_) => &BAD_KEY,
            Self::NotAllowed(_) | Self::Missing { .. } | Self::Account { .. } => &NO_SITE,
            Self::Broken { .. } => &BROKEN,
            Self::Lookup { .. } => &LOOKUP,
            Self::SpawnRate(_) | Self::Full { .. } => &BUSY,
            Self::Closed { .. } => &CLOSED,
        }
    }
}

/// 400/403: a key that is no host or user name (a client's own doing).
pub(crate) static BAD_KEY: Kind =
    Kind { scope: Scope::Pool, what: "requests refused", reason: "bad template key", level: Level::Info, burst: 5 };
/// 404: no site for the key.
pub(crate) static NO_SITE: Kind = Kind {
    scope: Scope::Pool,
    what: "requests answered 404",
    reason: "no site for the key",
    level: Level::Info,
    burst: 5,
};
/// 500: the instance's configuration is refused.
pub(crate) static BROKEN: Kind = Kind {
    scope: Scope::Pool,
    what: "requests answered 500",
    reason: "instance refused",
    level: Level::Warn,
    burst: 1,
};
/// 503: the instance's account could not be looked up.
pub(crate) static LOOKUP: Kind = Kind {
    scope: Scope::Pool,
    what: "requests answered 503",
    reason: "account lookup failed",
    level: Level::Warn,
    burst: 1,
};
/// Retry-After of a failed account lookup, and how long the failure is remembered for its
/// key: a directory that did not answer is seldom back within the second.
const LOOKUP_RETRY_AFTER: u32 = 5;
/// 503: spawn-rate or max-instances.
pub(crate) static BUSY: Kind = Kind {
    scope: Scope::Pool,
    what: "requests answered 503",
    reason: "no new instance now (spawn-rate or max-instances)",
    level: Level::Warn,
    burst: 1,
};

/// 503: the template was removed (a reload) or the daemon is stopping.
pub(crate) static CLOSED: Kind = Kind {
    scope: Scope::Pool,
    what: "requests answered 503",
    reason: "template removed or daemon stopping",
    level: Level::Warn,
    burst: 1,
};

/// Keys remembered as missing at most (a scan of random names cannot grow the cache).
const MISSING_CACHE_ENTRIES: usize = 4096;
/// How long a stopped instance gets to finish its requests.
const RETIRE_WITHIN: Duration = Duration::from_secs(30);
/// Key locks kept before those nobody holds or waits for are dropped (a request that gave up
/// waiting leaves its key's behind).
const KEY_LOCKS_PRUNED_AT: usize = 1024;
/// How often the key of an instance whose workers fail to start is looked at again (with
/// the interpreter probe): what broke may be what a new instance would be refused for.
const LOOK_AGAIN_WHILE_FAILING: Duration = Duration::from_secs(5);
/// How long a reload waits for the live instances of unchanged templates to be looked at
/// again (account lookups) before it goes on and leaves them to finish in the background.
const RELOOK_WAIT: Duration = Duration::from_secs(5);

/// A template at run time: its live instances.
pub(crate) struct TemplateRuntime {
    pub name: Arc<str>,
    /// The template as configured now, and its generation: bumped only when a reload
    /// changes it, so that an instance resolved with an equal template (a reload that only
    /// moved its lines) is not made again.
    config: Mutex<(Arc<Template>, u64)>,
    /// Why no instance may start any more (its template removed by a reload, the daemon
    /// stopping): set under `entering`'s write side, before the live instances are stopped.
    closed: Mutex<Option<&'static str>>,
    state: Mutex<State>,
    /// A lock per key being made or looked at again: two first requests for one key make
    /// one instance, and one key's slow resolution (an account directory or an interpreter
    /// that hangs) holds up no other key.
    keys: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// A new instance enters `live` under the read side, after its key resolved; a reload
    /// takes the write side once it has set the new template (or closed a removed one), so
    /// that it finds every instance made with the old one, and one resolved with the old
    /// one later is made again (or refused).
    entering: tokio::sync::RwLock<()>,
    /// The daemon's instances it belongs to (gone once the daemon is).
    shelf: std::sync::Weak<Shelf>,
}

#[derive(Default)]
struct State {
    live: HashMap<String, Instance>,
    /// Keys refused before anything was made (app missing, account refused, a broken
    /// instance), answered so again without looking until the instant given.
    refused: HashMap<String, (Instant, Refusal)>,
    /// `spawn-rate`: spent by the instances that start (taken while a key is looked up).
    spawns: Bucket,
    /// Spent by instances refused before they start, so that a tenant hammering a bad name
    /// leaves `spawns` to the sites; past it a refusal spends from `spawns` again, which
    /// keeps the work of looking keys up (an interpreter probe each) at twice spawn-rate.
    refusals: Bucket,
}

/// A token bucket of `rate` tokens, refilled at `rate` a second; full at first.
#[derive(Default)]
struct Bucket {
    tokens: f64,
    refilled: Option<Instant>,
}

impl Bucket {
    /// Whether a token is there now (refilled up to `now`).
    fn has(&mut self, rate: u32, now: Instant) -> bool {
        let rate = f64::from(rate);
        let since = self.refilled.map_or(rate, |at| now.duration_since(at).as_secs_f64() * rate);
        self.tokens = (self.tokens + since).min(rate);
        self.refilled = Some(now);
        self.tokens >= 1.0
    }

    /// Take a token if there is one.
    fn take(&mut self, rate: u32, now: Instant) -> bool {
        let ok = self.has(rate, now);
        if ok {
            self.tokens -= 1.0;
        }
        ok
    }

    /// A token taken and not used after all.
    fn give_back(&mut self, rate: u32) {
        self.tokens = (self.tokens + 1.0).min(f64::from(rate));
    }
}

/// One live instance.
#[derive(Clone)]
struct Instance {
    pool: Arc<PoolRuntime>,
    values: Vec<(Placeholder, String)>,
    created: Instant,
    /// When its last request arrived (its dispatcher knows when one last ended: [`idle_for`]).
    last_used: Instant,
    dir: PathBuf,
    /// Its manager's count of workers started when its key was last looked at (made,
    /// reloaded, or looked at again once its workers had gone), and when.
    looked: u64,
    looked_at: Instant,
}

/// An instance as the status page shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct InstanceStats {
    pub template: String,
    pub key: String,
    pub age_seconds: f64,
    pub idle_seconds: f64,
}

/// What every instance needs from the daemon.
struct Env {
    spawner: Arc<Spawner>,
    runtime_dir: PathBuf,
    search_path: Option<OsString>,
}

#[derive(Default)]
struct Book {
    env: Option<Env>,
    templates: Vec<Arc<TemplateRuntime>>,
    /// Stopped instances still finishing their requests, and their socket directories.
    retiring: Vec<(Arc<PoolRuntime>, PathBuf)>,
    next_dir: u64,
}

/// The daemon's pool templates and their live instances: one per daemon, held by the
/// registry's board (supervise/stats.rs), so two daemons in one process share nothing.
#[derive(Default)]
pub(crate) struct Instances(Arc<Shelf>);

/// What the templates reach back to (weakly: the shelf holds them).
#[derive(Default)]
struct Shelf {
    book: Mutex<Book>,
    reaper_started: AtomicBool,
}

impl Shelf {
    fn with<T>(&self, f: impl FnOnce(&mut Book) -> T) -> T {
        f(&mut self.book.lock().unwrap_or_else(|e| e.into_inner()))
    }

    fn spawner(&self) -> Option<Arc<Spawner>> {
        self.with(|b| b.env.as_ref().map(|e| e.spawner.clone()))
    }

    /// Stop an instance: it serves what it has queued and in flight, then ends. `why` ends
    /// "instance removed: …", the reason its workers' stop lines give.
    fn retire(&self, i: Instance, why: &str) {
        i.pool.send(ManagerCmd::Remove { within: RETIRE_WITHIN, why: format!("instance removed: {why}") });
        // A preloaded instance's fork template goes with it (supervise/template.rs).
        if i.pool.config.isolation.preload {
            if let Some(s) = self.spawner() {
                s.retire_template(&i.pool.name, "instance removed");
            }
        }
        self.with(|b| b.retiring.push((i.pool, i.dir)));
    }

    /// The reaper, once.
    fn start_reaper(self: &Arc<Self>) {
        if !self.reaper_started.swap(true, Ordering::AcqRel) {
            tokio::spawn(reaper(Arc::downgrade(self)));
        }
    }

    /// Start an instance's manager: its workers start with the first request (ondemand) or now.
    fn start(&self, cfg: Pool) -> Result<(Arc<PoolRuntime>, PathBuf), String> {
        let (spawner, dir) = self
            .with(|b| {
                let env = b.env.as_ref()?;
                b.next_dir += 1;
                Some((env.spawner.clone(), env.runtime_dir.join("pools").join(format!("instance-{}", b.next_dir))))
            })
            .ok_or("the daemon is not running")?;
        let p = PoolRuntime::new(cfg);
        let cmds = p.control.cmd_rx.lock().unwrap_or_else(|e| e.into_inner()).take().ok_or("no manager mailbox")?;
        // Last: nothing fails past it, so the directory never outlives a failed start.
        {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&dir)
                .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        }
        let (mut m, events) = manager::Manager::new(
            p.name.clone(),
            Arc::new(p.config.clone()),
            p.dispatcher.clone(),
            p.control.clone(),
            spawner,
            dir.clone(),
        );
        m.wait_for_first_start();
        tokio::spawn(manager::run(m, events, cmds));
        Ok((p, dir))
    }
}

impl Instances {
    /// At start: the templates of the configuration, and the reaper of idle instances.
    pub(crate) fn install(&self, templates: &[Template], runtime_dir: &Path, spawner: Arc<Spawner>) {
        let made = templates.iter().map(|t| TemplateRuntime::new(t, &self.0)).collect();
        self.0.with(|b| {
            b.env =
                Some(Env { spawner, runtime_dir: runtime_dir.to_path_buf(), search_path: std::env::var_os("PATH") });
            b.templates = made;
        });
        if !templates.is_empty() {
            self.0.start_reaper();
        }
        for t in templates {
            tracing::info!(template = %t.name, max_instances = t.max_instances, queue_size = t.queue_size, "pool template: an instance per {}", key_names(t));
        }
        warn_of(templates, "");
        if !nix::unistd::geteuid().is_root() && templates.iter().any(|t| t.keys.contains(&Placeholder::User)) {
            tracing::warn!("the bridge is not root: instances of a template with {{user}} can only run as the bridge's own user; others are refused");
        }
    }

    /// The running template of that name.
    pub(crate) fn lookup(&self, name: &str) -> Option<Arc<TemplateRuntime>> {
        self.0.with(|b| b.templates.iter().find(|t| &*t.name == name).cloned())
    }

    /// Every live instance's pool.
    pub(crate) fn live_pools(&self) -> Vec<Arc<PoolRuntime>> {
        let templates = self.0.with(|b| b.templates.clone());
        templates.iter().flat_map(|t| t.lock().live.values().map(|i| i.pool.clone()).collect::<Vec<_>>()).collect()
    }

    /// Every live instance, for the status page.
    pub(crate) fn live(&self) -> Vec<(Arc<PoolRuntime>, InstanceStats)> {
        let templates = self.0.with(|b| b.templates.clone());
        let now = Instant::now();
        let mut out = Vec::new();
        for t in templates {
            let st = t.lock();
            let mut rows: Vec<_> = st.live.iter().collect();
            rows.sort_by(|a, b| a.0.cmp(b.0));
            for (key, i) in rows {
                out.push((
                    i.pool.clone(),
                    InstanceStats {
                        template: t.name.to_string(),
                        key: key.clone(),
                        age_seconds: now.duration_since(i.created).as_secs_f64(),
                        idle_seconds: idle_for(i, now).unwrap_or_default().as_secs_f64(),
                    },
                ));
            }
        }
        out
    }

    /// A reload: unchanged templates keep their instances, each looked at again (its
    /// account, files: a deleted account stops it, a changed one rolls it); a changed one
    /// rolls its instances to the new configuration (each keeps its queue and is restarted
    /// worker by worker, as a changed pool is); a removed one stops its instances. A template
    /// that `restart` names (SIGUSR2: all) rolls every instance with a restart of its
    /// workers. Returns a summary, whether an instance of an unchanged template was stopped
    /// or rolled, and the warnings of the templates and of their live instances (logged).
    pub(crate) async fn reload(
        &self,
        new: &[Template],
        restart: &crate::reload::Restart,
    ) -> (String, bool, Vec<String>) {
        let old = self.0.with(|b| b.templates.clone());
        let (mut changed, mut removed, mut stopped, mut rolled) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let (mut added, mut restarted, mut rekeyed) = (Vec::new(), Vec::new(), Vec::new());
        let mut next = Vec::new();
        // The templates' own warnings (logged by warn_of), then their live instances'.
        let mut warnings: Vec<String> = new.iter().flat_map(|t| t.warnings.iter().cloned()).collect();
        // The unchanged templates' instances are looked at again side by side, in tasks of
        // their own: an account lookup that hangs (NSS, LDAP) holds up its template's
        // instances, never the reload past RELOOK_WAIT.
        let mut looks = tokio::task::JoinSet::new();
        for t in new {
            let restart = restart.includes(&t.name);
            match old.iter().find(|o| *o.name == t.name) {
                Some(o) if *o.config() == *t && !restart => {
                    // The same settings, perhaps on other lines (or in another file): the
                    // errors of its instances name where they are written now; the same
                    // generation, so an instance being made with the old one is started.
                    o.set_config(Arc::new(t.clone()));
                    let o2 = o.clone();
                    looks.spawn(async move {
                        o2.refresh_all(&o2.config(), Again::Reload { probe: false, restart: false }).await
                    });
                    next.push(o.clone());
                }
                Some(o) => {
                    if *o.config() != *t {
                        changed.push(t.name.clone());
                    }
                    if restart {
                        restarted.push(t.name.clone());
                    }
                    // What it refused, the new settings may take.
                    o.lock().refused.clear();
                    let done = o.roll(Arc::new(t.clone()), restart).await;
                    stopped.extend(done.stopped);
                    rekeyed.extend(done.rekeyed);
                    warnings.extend(done.warnings);
                    next.push(o.clone());
                }
                None => {
                    added.push(t.name.clone());
                    next.push(TemplateRuntime::new(t, &self.0));
                }
            }
        }
        let waited = tokio::time::timeout(RELOOK_WAIT, async {
            while let Some(done) = looks.join_next().await {
                if let Ok(done) = done {
                    stopped.extend(done.stopped);
                    rolled.extend(done.rolled);
                    warnings.extend(done.warnings);
                }
            }
        })
        .await;
        if waited.is_err() {
            // Still looking: they finish in the background, each logging what it does.
            tracing::warn!("reload: template instances still being looked at again after {RELOOK_WAIT:?} (an account lookup that hangs?); they go on in the background");
            looks.detach_all();
        }
        for o in &old {
            if !new.iter().any(|t| *o.name == t.name) {
                removed.push(o.name.to_string());
                o.close("its template was removed by a reload").await;
                o.stop_all("its template is gone from the configuration");
            }
        }
        if !next.is_empty() {
            self.0.start_reaper();
        }
        warn_of(new, "reload: ");
        self.0.with(|b| b.templates = next);
        let list = |v: &[String]| if v.is_empty() { "none".to_owned() } else { v.join(", ") };
        let mut summary = format!("templates changed: {}; removed: {}", list(&changed), list(&removed));
        // Each part only when it names something, as the pools' `restarted`.
        let parts = [
            ("restarted", &restarted),
            ("templates added", &added),
            ("instances stopped (their template's key changed)", &rekeyed),
            ("instances refused now and stopped", &stopped),
            ("instances rolled (account or files changed)", &rolled),
        ];
        for (what, names) in parts.into_iter().filter(|(_, names)| !names.is_empty()) {
            summary.push_str(&format!("; {what}: {}", names.join(", ")));
        }
        (summary, !(stopped.is_empty() && rolled.is_empty()), warnings)
    }

    /// `fcgibridge stop-instance TEMPLATE KEY`.
    pub(crate) fn stop_instance(&self, template: &str, key: &str) -> Result<String, String> {
        let t = self.lookup(template).ok_or_else(|| format!("no template {template:?}"))?;
        let inst = t.lock().live.remove(key).ok_or_else(|| format!("template {template:?} has no instance {key:?}"))?;
        tracing::info!(pool = &*inst.pool.name, "instance stopped by the control socket");
        self.0.retire(inst, "stopped through the control socket");
        Ok(format!("instance {template}[{key}] stopping\n"))
    }

    /// The daemon stops: every instance, and those still finishing, stop.
    pub(crate) async fn stop_all(&self, how: Stop) {
        // No instance starts any more: one being made now is live already, stopped below.
        for t in self.0.with(|b| b.templates.clone()) {
            t.close("the daemon is stopping").await;
        }
        let pools: Vec<Arc<PoolRuntime>> = self.0.with(|b| {
            let mut all: Vec<_> = b.retiring.drain(..).map(|(p, _)| p).collect();
            for t in &b.templates {
                all.extend(t.lock().live.drain().map(|(_, i)| i.pool));
            }
            all
        });
        let mut waits = Vec::new();
        for p in pools {
            let (done, rx) = tokio::sync::oneshot::channel();
            // An instance of a template is never direct: no request is waited for there.
            p.send(ManagerCmd::Stop { how, done, until: std::time::Instant::now() });
            waits.push(rx);
        }
        for w in waits {
            let _ = w.await;
        }
    }
}

/// Room for a new instance of `t` under max-instances: none needed, or the key of the least
/// recently used idle instance to stop for it at the cap. Nothing is stopped.
fn room(st: &State, t: &Template, key: &str) -> Result<Option<String>, Refusal> {
    if st.live.len() < t.max_instances as usize {
        return Ok(None);
    }
    let now = Instant::now();
    let lru = st.live.iter().filter_map(|(k, i)| Some((k, idle_for(i, now)?))).max_by_key(|(_, idle)| *idle);
    match lru {
        Some((k, _)) => Ok(Some(k.clone())),
        None => Err(Refusal::Full { key: key.to_owned(), max: t.max_instances }),
    }
}

/// The configuration's warnings about templates (as `fcgibridge check` prints them), each
/// line starting with `occasion`.
fn warn_of(templates: &[Template], occasion: &str) {
    for (t, w) in templates.iter().flat_map(|t| t.warnings.iter().map(move |w| (t, w))) {
        tracing::warn!(template = %t.name, "{occasion}{}", crate::config::logged_warning(w));
    }
}

fn key_names(t: &Template) -> String {
    t.keys.iter().map(|p| p.name()).collect::<Vec<_>>().join(" and ")
}

/// Every second: stop instances idle for their template's timeout; forget stopped ones.
/// Ends with the daemon's [`Instances`].
async fn reaper(shelf: std::sync::Weak<Shelf>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        let Some(shelf) = shelf.upgrade() else { return };
        let templates = shelf.with(|b| {
            b.retiring.retain(|(p, dir)| {
                let running = !p.control.cmd.is_closed();
                if !running {
                    // Its own directory (instance-N under the runtime directory).
                    let _ = std::fs::remove_dir_all(dir);
                }
                running
            });
            b.templates.clone()
        });
        for t in templates {
            let Some(idle) = t.config().idle_timeout else { continue };
            let now = Instant::now();
            let gone: Vec<Instance> = {
                let mut st = t.lock();
                let keys: Vec<String> = st
                    .live
                    .iter()
                    .filter(|(_, i)| idle_for(i, now).is_some_and(|for_| for_ >= idle))
                    .map(|(k, _)| k.clone())
                    .collect();
                keys.iter().filter_map(|k| st.live.remove(k)).collect()
            };
            for i in gone {
                tracing::info!(
                    pool = &*i.pool.name,
                    "instance idle for instance-idle-timeout ({}), stopping",
                    crate::config::units::DurationDisplay(idle)
                );
                shelf.retire(i, "idle for instance-idle-timeout");
            }
        }
    }
}

/// How long the instance has had no request running or waiting (since the later of its
/// last request's arrival and its end); None while it has one.
fn idle_for(i: &Instance, now: Instant) -> Option<Duration> {
    quiet_for(&i.pool.dispatcher.view(), i.last_used, now)
}

/// [`idle_for`] of a pool whose dispatcher shows `v` and whose last request arrived at `arrived`.
fn quiet_for(v: &crate::dispatch::PoolView, arrived: Instant, now: Instant) -> Option<Duration> {
    if v.busy_slots > 0 || v.queue_now > 0 {
        return None;
    }
    let since = v.last_end.map_or(arrived, |end| end.max(arrived));
    Some(now.saturating_duration_since(since))
}

impl TemplateRuntime {
    fn new(t: &Template, shelf: &Arc<Shelf>) -> Arc<Self> {
        Arc::new(Self {
            name: Arc::from(t.name.as_str()),
            config: Mutex::new((Arc::new(t.clone()), 0)),
            closed: Mutex::new(None),
            state: Mutex::default(),
            keys: Mutex::default(),
            entering: tokio::sync::RwLock::new(()),
            shelf: Arc::downgrade(shelf),
        })
    }

    /// Stop an instance (nothing to do once the daemon's instances are gone).
    fn retire(&self, i: Instance, why: &str) {
        if let Some(shelf) = self.shelf.upgrade() {
            shelf.retire(i, why);
        }
    }

    /// `PATH` as the daemon started with it (for a pool's `python:` without a slash).
    fn search_path(&self) -> Option<OsString> {
        self.shelf.upgrade()?.with(|b| b.env.as_ref().and_then(|e| e.search_path.clone()))
    }

    /// The template as configured now.
    pub(crate) fn config(&self) -> Arc<Template> {
        self.current().0
    }

    /// The template as configured now, and its generation.
    fn current(&self) -> (Arc<Template>, u64) {
        self.config.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// A reload's template: a new generation only if its settings changed (an equal one
    /// replaces the old only for where its errors point).
    fn set_config(&self, t: Arc<Template>) {
        let mut cur = self.config.lock().unwrap_or_else(|e| e.into_inner());
        if *cur.0 != *t {
            cur.1 += 1;
        }
        cur.0 = t;
    }

    /// No instance starts from now on (`why`: the refusal's reason): any being made now
    /// either entered `live` already, where the caller stops it next, or is refused.
    async fn close(&self, why: &'static str) {
        let _no_one_entering = self.entering.write().await;
        *self.closed.lock().unwrap_or_else(|e| e.into_inner()) = Some(why);
    }

    /// Refused if no instance may start any more.
    fn open(&self, key: &str) -> Result<(), Refusal> {
        match *self.closed.lock().unwrap_or_else(|e| e.into_inner()) {
            Some(why) => Err(Refusal::Closed { key: key.to_owned(), why }),
            None => Ok(()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The lock of `key`, once no other request holds it.
    async fn hold(&self, key: &str) -> KeyHeld<'_> {
        let lock = {
            let mut keys = self.keys.lock().unwrap_or_else(|e| e.into_inner());
            if keys.len() >= KEY_LOCKS_PRUNED_AT {
                keys.retain(|_, m| Arc::strong_count(m) > 1);
            }
            keys.entry(key.to_owned()).or_default().clone()
        };
        KeyHeld { rt: self, key: key.to_owned(), _guard: lock.lock_owned().await }
    }

    /// The live instance for `key`, marked used now, and whether it is due for a look at its
    /// key before it starts a worker ([`due_for_a_look`]).
    fn touch(&self, key: &str) -> Option<(Arc<PoolRuntime>, Option<Again>)> {
        let mut st = self.lock();
        let i = st.live.get_mut(key)?;
        i.last_used = Instant::now();
        Some((i.pool.clone(), due_for_a_look(i)))
    }

    /// The name of the instance that serves this request (`template[key]`), found from
    /// the request alone: nothing is looked up or started. The template's own name, which
    /// no instance has, when the request has no valid key.
    pub(crate) fn instance_name(&self, params: &Params, capture: Option<(&str, &[u8])>) -> String {
        let t = self.config();
        match key_of(&t, params, capture) {
            Ok(values) => instance_name(&t.name, &joined(&values)),
            Err(_) => t.name.clone(),
        }
    }

    /// The instance serving this request: the live one for its key, or a new one.
    /// `capture`: a route pattern's (placeholder, value), which takes the place of the
    /// request's own value for that placeholder.
    pub(crate) async fn instance(
        &self,
        params: &Params,
        capture: Option<(&str, Vec<u8>)>,
    ) -> Result<Arc<PoolRuntime>, Refusal> {
        let capture = capture.as_ref().map(|(n, v)| (*n, v.as_slice()));
        loop {
            // None: a reload changed the template while the instance was made, or the live
            // instance stopped while this request waited to look at it: again, as it is now.
            let (t, generation) = self.current();
            if let Some(pool) = self.instance_of(&t, generation, params, capture).await? {
                return Ok(pool);
            }
        }
    }

    async fn instance_of(
        &self,
        t: &Arc<Template>,
        generation: u64,
        params: &Params,
        capture: Option<(&str, &[u8])>,
    ) -> Result<Option<Arc<PoolRuntime>>, Refusal> {
        let values = key_of(t, params, capture)?;
        let key = joined(&values);
        match self.touch(&key) {
            Some((pool, None)) => return Ok(Some(pool)),
            Some((_, Some(_))) => return self.look_again(t, &key).await,
            None => self.open(&key)?,
        }
        if t.allow.as_ref().is_some_and(|a| !a.is_match(&key)) {
            return Err(Refusal::NotAllowed(key));
        }
        let filled: Vec<(Placeholder, &str)> = values.iter().map(|(p, v)| (*p, v.as_str())).collect();
        let raw = fill_raw(&t.raw, &filled);
        self.check_present(t, &key, &raw)?;
        let _held = self.hold(&key).await;
        if let Some((pool, _)) = self.touch(&key) {
            // Made while this request waited.
            return Ok(Some(pool));
        }
        // Refused while this request waited (a lookup that failed, a probe that timed out):
        // not looked up again.
        self.remembered(&key)?;
        // Nothing is looked up while no instance could start.
        self.reserve(t, &key)?;
        let name = instance_name(&t.name, &key);
        let pool = match self.resolve(t, name.clone(), raw, None).await {
            Ok((pool, _logged)) => pool,
            Err(r) => return Err(self.refuse(t, r(key))),
        };
        let _entering = self.entering.read().await;
        let now_closed = self.open(&key).err();
        if now_closed.is_some() || generation != self.current().1 {
            self.lock().spawns.give_back(t.spawn_rate);
            return now_closed.map_or(Ok(None), Err);
        }
        self.admit(t, &key)?;
        let shelf =
            self.shelf.upgrade().ok_or_else(|| Refusal::Closed { key: key.clone(), why: "the daemon is stopping" })?;
        let (pool, dir) = shelf.start(pool).map_err(|why| Refusal::Broken { key: key.clone(), why })?;
        // This request is about to queue: the manager looks at the queue at once rather
        // than at its next tick (a permit, kept until the manager waits).
        pool.dispatcher.wake.notify_one();
        tracing::info!(pool = &*name, "new instance of template {}", t.name);
        let now = Instant::now();
        let inst =
            Instance { pool: pool.clone(), values, created: now, last_used: now, dir, looked: 0, looked_at: now };
        self.lock().live.insert(key, inst);
        Ok(Some(pool))
    }

    /// `resolve_instance` on a blocking thread. `running`: a live instance's configuration
    /// (its interpreter is probed only if the key now resolves to another).
    async fn resolve(
        &self,
        t: &Arc<Template>,
        name: String,
        raw: crate::config::RawPool,
        running: Option<Pool>,
    ) -> Result<(Pool, Vec<String>), MakeRefusal> {
        let (t, search_path) = (t.clone(), self.search_path());
        let resolved =
            tokio::task::spawn_blocking(move || resolve_instance(&t, name, raw, search_path, running.as_ref())).await;
        resolved.unwrap_or_else(|e| {
            let why = format!("resolving it failed: {e}");
            Err(Box::new(move |key| Refusal::Broken { key, why }))
        })
    }

    /// A live instance whose workers have all gone, about to start one again: its key is
    /// looked at again first, as a new instance's would be, so that a deleted account, a
    /// removed group or a removed site take effect without a reload. Ok(None): it stopped
    /// meanwhile.
    async fn look_again(&self, t: &Arc<Template>, key: &str) -> Result<Option<Arc<PoolRuntime>>, Refusal> {
        let _held = self.hold(key).await;
        let Some(inst) = self.lock().live.get(key).cloned() else { return Ok(None) };
        let Some(again) = due_for_a_look(&inst) else {
            // Another request looked while this one waited.
            return Ok(Some(inst.pool));
        };
        self.refresh(t, key, inst, again, &mut Vec::new()).await.map(Some)
    }

    /// Every live instance's key resolved again (`again`), one after the other, each under
    /// its key's lock: the names of the instances stopped, and of those rolled.
    async fn refresh_all(&self, t: &Arc<Template>, again: Again) -> Refreshed {
        let keys: Vec<String> = self.lock().live.keys().cloned().collect();
        let mut done = Refreshed::default();
        let restart = matches!(again, Again::Reload { restart: true, .. });
        for key in keys {
            let _held = self.hold(&key).await;
            let Some(inst) = self.lock().live.get(&key).cloned() else { continue };
            let (name, before) = (inst.pool.name.to_string(), inst.pool.clone());
            match self.refresh(t, &key, inst, again, &mut done.warnings).await {
                Err(_) => done.stopped.push(name),
                // Only told of moved listeners, it is not rolled (no worker restarts).
                Ok(p) if !Arc::ptr_eq(&p, &before) && (restart || !p.config.same_but_listeners(&before.config)) => {
                    done.rolled.push(name)
                }
                Ok(_) => {}
            }
        }
        done
    }

    /// Resolve a live instance's key again with `t` and act on it: unchanged, it stays;
    /// changed (or restarted), it rolls to its new configuration as a changed pool does;
    /// refused, it stops and the refusal is remembered as a new instance's would be (the
    /// Err). An account that could not be looked up leaves it as it is. Under `key`'s lock.
    /// Its configuration's warnings are added to `warnings` (and logged).
    async fn refresh(
        &self,
        t: &Arc<Template>,
        key: &str,
        inst: Instance,
        again: Again,
        warnings: &mut Vec<String>,
    ) -> Result<Arc<PoolRuntime>, Refusal> {
        let occasion = again.occasion();
        // A key the (reloaded) template's `allow` no longer takes stops as a new one is refused.
        if t.allow.as_ref().is_some_and(|a| !a.is_match(key)) {
            return Err(self.stop_refused(t, key, &inst, Refusal::NotAllowed(key.to_owned()), occasion));
        }
        let filled: Vec<(Placeholder, &str)> = inst.values.iter().map(|(p, v)| (*p, v.as_str())).collect();
        let raw = fill_raw(&t.raw, &filled);
        let (probe, restart) = match again {
            Again::Look { probe } => (probe, false),
            Again::Reload { probe, restart } => (probe, restart),
        };
        let running = (!probe).then(|| inst.pool.config.clone());
        let resolved = self.resolve(t, inst.pool.name.to_string(), raw, running).await;
        let resolved = resolved.map(|(cfg, found)| {
            // resolve_instance logged them unless the instance is as it runs; a reload says
            // them all, as it does an ordinary pool's.
            if !probe && cfg.same_but_listeners(&inst.pool.config) && matches!(again, Again::Reload { .. }) {
                for w in &found {
                    tracing::warn!(pool = &*inst.pool.name, "reload: {}", crate::config::logged_warning(w));
                }
            }
            warnings.extend(found);
            cfg
        });
        match resolved {
            Ok(cfg) if cfg == inst.pool.config && !restart => {
                self.looked(key, &inst.pool, inst.pool.clone());
                Ok(inst.pool)
            }
            // Listeners that moved, and nothing else: as an ordinary pool (Supervisor::reload),
            // its manager takes the new configuration without restarting a worker
            // (needs_restart leaves the hint out), and the workers it starts from then on are
            // told the new addresses (FCGIBRIDGE_LISTENERS).
            Ok(cfg) => Ok(self.roll_instance(key, &inst, cfg, again)),
            Err(r) => match r(key.to_owned()) {
                r @ Refusal::Lookup { .. } => {
                    tracing::warn!(pool = &*inst.pool.name, "{occasion}: {r}; the instance keeps running as it was");
                    self.looked(key, &inst.pool, inst.pool.clone());
                    Ok(inst.pool)
                }
                r => Err(self.stop_refused(t, key, &inst, r, occasion)),
            },
        }
    }

    /// A live instance whose key is refused now: it stops, and the refusal is remembered as
    /// a new instance's would be.
    fn stop_refused(&self, t: &Template, key: &str, inst: &Instance, r: Refusal, occasion: &str) -> Refusal {
        tracing::warn!(pool = &*inst.pool.name, "{occasion}: {r}; the instance stops");
        // Not under the state lock: retiring takes the shelf's (stop_all takes the two the
        // other way round).
        let gone = {
            let mut st = self.lock();
            let same = st.live.get(key).is_some_and(|i| same_instance(&i.pool, &inst.pool));
            if same {
                st.live.remove(key)
            } else {
                None
            }
        };
        if let Some(i) = gone {
            self.retire(i, &r.to_string());
        }
        self.remember(t, r, Instant::now())
    }

    /// A live instance takes its new configuration `cfg`: its workers restart with it (when
    /// it changes what a worker is, or on a reload's restart). Returns its new runtime.
    fn roll_instance(&self, key: &str, inst: &Instance, cfg: Pool, again: Again) -> Arc<PoolRuntime> {
        let occasion = again.occasion();
        let why = match again {
            Again::Look { .. } => Reconfig::Looked,
            Again::Reload { restart: true, .. } => Reconfig::Restart,
            Again::Reload { restart: false, .. } => Reconfig::Reload,
        };
        let restart = why == Reconfig::Restart;
        let old = &inst.pool;
        if cfg.isolation != old.config.isolation {
            tracing::info!(
                pool = &*old.name,
                "{occasion}: the instance's account changed ({} now, was {}); its workers restart as it is now",
                identity(&cfg.isolation),
                identity(&old.config.isolation)
            );
        }
        // As a changed pool's (Supervisor::reload): new forks from fresh code.
        if old.config.isolation.preload && (!cfg.isolation.preload || restart) {
            if let Some(s) = self.shelf.upgrade().and_then(|shelf| shelf.spawner()) {
                s.retire_template(&old.name, super::retire_why(restart));
            }
        }
        let p = Arc::new(PoolRuntime {
            name: old.name.clone(),
            config: cfg.clone(),
            dispatcher: old.dispatcher.clone(),
            control: old.control.clone(),
            reader: super::access::Reader::of(&cfg.isolation),
        });
        p.send(ManagerCmd::Reconfigure { config: Arc::new(cfg), why });
        self.looked(key, old, p.clone());
        p
    }

    /// The instance at `key` (if still the one `was`) now runs as `now`, its key looked at.
    fn looked(&self, key: &str, was: &PoolRuntime, now: Arc<PoolRuntime>) {
        let spawns = was.control.view.lock().unwrap_or_else(|e| e.into_inner()).spawns;
        let mut st = self.lock();
        if let Some(i) = st.live.get_mut(key).filter(|i| same_instance(&i.pool, was)) {
            i.pool = now;
            i.looked = spawns;
            i.looked_at = Instant::now();
        }
    }

    /// 404 at once, and remembered, when the app file or the directory is missing; a key
    /// refused before (for `missing-cache`) gets its answer again without a look.
    fn check_present(&self, t: &Template, key: &str, raw: &crate::config::RawPool) -> Result<(), Refusal> {
        self.remembered(key)?;
        let now = Instant::now();
        let Some(why) = missing(raw) else { return Ok(()) };
        Err(self.remember(t, Refusal::Missing { key: key.to_owned(), why }, now))
    }

    /// The refusal remembered for `key`, if it still holds.
    fn remembered(&self, key: &str) -> Result<(), Refusal> {
        let now = Instant::now();
        let mut st = self.lock();
        match st.refused.get(key) {
            Some((until, r)) if *until > now => return Err(r.clone()),
            Some(_) => {
                st.refused.remove(key);
            }
            None => {}
        }
        Ok(())
    }

    /// Keep `r` for `missing-cache` (within [`MISSING_CACHE_ENTRIES`]); the answer, which
    /// says it was remembered when it is given again.
    fn remember(&self, t: &Template, r: Refusal, now: Instant) -> Refusal {
        let mut st = self.lock();
        if st.refused.len() >= MISSING_CACHE_ENTRIES {
            st.refused.retain(|_, (until, _)| *until > now);
        }
        let kept_for = r.kept_for(t.missing_cache);
        if st.refused.len() < MISSING_CACHE_ENTRIES && !kept_for.is_zero() {
            if let Some(key) = r.key() {
                st.refused.insert(key.to_owned(), (now + kept_for, r.clone().cached()));
            }
        }
        r
    }

    /// An instance refused before it started: remembered, and paid for from the refusals'
    /// own budget — the spawn-rate token [`Self::reserve`] took is given back — and from
    /// spawn-rate only when that budget is spent.
    fn refuse(&self, t: &Template, r: Refusal) -> Refusal {
        let now = Instant::now();
        {
            let mut st = self.lock();
            if st.refusals.take(t.spawn_rate, now) {
                st.spawns.give_back(t.spawn_rate);
            }
        }
        self.remember(t, r, now)
    }

    /// Before a new key is looked up: room under max-instances (nothing stopped yet) and a
    /// spawn-rate token, taken now, so that keys looked up at once stay within spawn-rate.
    fn reserve(&self, t: &Template, key: &str) -> Result<(), Refusal> {
        let (mut st, now) = (self.lock(), Instant::now());
        if !st.spawns.has(t.spawn_rate, now) {
            return Err(Refusal::SpawnRate(key.to_owned()));
        }
        room(&st, t, key)?;
        st.spawns.take(t.spawn_rate, now);
        Ok(())
    }

    /// max-instances for the new instance, whose token [`Self::reserve`] took: room for it
    /// (the least recently used idle instance is stopped at the cap), else the token back.
    fn admit(&self, t: &Template, key: &str) -> Result<(), Refusal> {
        let victim = {
            let mut st = self.lock();
            match room(&st, t, key) {
                Ok(victim) => victim.and_then(|k| st.live.remove(&k)),
                Err(r) => {
                    st.spawns.give_back(t.spawn_rate);
                    return Err(r);
                }
            }
        };
        if let Some(v) = victim {
            tracing::info!(
                pool = &*v.pool.name,
                "max-instances ({}) reached: stopping the least recently used idle instance",
                t.max_instances
            );
            self.retire(v, "max-instances reached, it was the least recently used idle one");
        }
        Ok(())
    }

    /// A changed template: every live instance takes its new configuration (a rolling
    /// restart when its workers change); one that the new template refuses stops. A
    /// template keyed otherwise now stops them all: none has a key of the new kind (they
    /// finish their requests first, as any retired instance). Returns the instances it
    /// stopped, for the reload's summary.
    async fn roll(&self, new: Arc<Template>, restart: bool) -> Refreshed {
        let was = self.config();
        let keys_changed = was.keys != new.keys;
        self.set_config(new.clone());
        // Every instance made with the old template is live now; any later one is made with
        // the new.
        drop(self.entering.write().await);
        if keys_changed {
            let why = format!(
                "its template's key changed (an instance per {} now, was per {})",
                key_names(&new),
                key_names(&was)
            );
            let rekeyed = self.stop_all(&why);
            return Refreshed { rekeyed, ..Refreshed::default() };
        }
        self.refresh_all(&new, Again::Reload { probe: true, restart }).await
    }

    /// Stop every live instance; their names.
    fn stop_all(&self, why: &str) -> Vec<String> {
        let all: Vec<Instance> = self.lock().live.drain().map(|(_, i)| i).collect();
        let mut names = Vec::with_capacity(all.len());
        for i in all {
            tracing::info!(pool = &*i.pool.name, "instance stopping: {why}");
            names.push(i.pool.name.to_string());
            self.retire(i, why);
        }
        names
    }
}

/// A key's lock, held; the key is forgotten when nobody else waits for it.
struct KeyHeld<'a> {
    rt: &'a TemplateRuntime,
    key: String,
    _guard: tokio::sync::OwnedMutexGuard<()>,
}

impl Drop for KeyHeld<'_> {
    fn drop(&mut self) {
        let mut keys = self.rt.keys.lock().unwrap_or_else(|e| e.into_inner());
        // Held by the map and this guard alone: no request waits for the key.
        if keys.get(&self.key).is_some_and(|m| Arc::strong_count(m) <= 2) {
            keys.remove(&self.key);
        }
    }
}

/// What looking at a template's live instances again did: the names of those stopped and
/// of those rolled, and their configurations' warnings (for a reload's reply).
#[derive(Default)]
struct Refreshed {
    /// Refused now (a narrower `allow`, a deleted account…).
    stopped: Vec<String>,
    /// Stopped because their template is keyed by another placeholder now: no instance
    /// has a key of the new kind, whatever its own key.
    rekeyed: Vec<String>,
    rolled: Vec<String>,
    warnings: Vec<String>,
}

/// Why a live instance's key is resolved again.
#[derive(Clone, Copy)]
enum Again {
    /// Its workers have all gone and a request is about to start one: the account and
    /// files looked up again, the interpreter probed only if the configuration changed — or
    /// (`probe`) because its workers fail to start.
    Look { probe: bool },
    /// A reload: looked at as [`Again::Look`] (an unchanged template), or resolved as a new
    /// instance (`probe`: a changed template), its workers restarted on `restart`.
    Reload { probe: bool, restart: bool },
}

impl Again {
    /// What its log lines begin with.
    fn occasion(self) -> &'static str {
        match self {
            Self::Look { probe: false } => "looked at again before a new worker",
            Self::Look { probe: true } => "looked at again as its workers fail to start",
            Self::Reload { .. } => "reload",
        }
    }
}

/// An instance whose workers have all gone (idle, ondemand) since its key was last looked
/// at: its next request starts a worker, which is to run as the account is now. One whose
/// workers fail to start is looked at (and probed) every [`LOOK_AGAIN_WHILE_FAILING`]: it
/// gets the answer a new instance would get, a 404 for a site that is gone, not a 503.
fn due_for_a_look(i: &Instance) -> Option<Again> {
    let v = i.pool.control.view.lock().unwrap_or_else(|e| e.into_inner());
    if !v.workers.is_empty() {
        return None;
    }
    if v.failing.is_some() {
        return (i.looked_at.elapsed() >= LOOK_AGAIN_WHILE_FAILING).then_some(Again::Look { probe: true });
    }
    (v.spawns > i.looked).then_some(Again::Look { probe: false })
}

/// Two runtimes of the same instance (a roll keeps its manager).
fn same_instance(a: &PoolRuntime, b: &PoolRuntime) -> bool {
    Arc::ptr_eq(&a.control, &b.control)
}

/// The account workers run as, for a log line.
fn identity(iso: &crate::config::isolation::Isolation) -> String {
    let Some(u) = &iso.user else { return "the bridge's own account".into() };
    let groups: Vec<u32> =
        iso.groups.as_ref().map_or_else(|| u.member_of.clone(), |g| g.iter().map(|a| a.id).collect());
    format!("user {} uid {} gid {} groups {groups:?}", u.login, u.account.id, iso.worker_gid(u.primary_gid))
}

/// Why the filled-in entry has no site: its app file or its `chdir` is not there.
fn missing(raw: &crate::config::RawPool) -> Option<String> {
    match (app_file(raw), raw.chdir.as_deref()) {
        (Some(f), _) if !f.is_file() => Some(format!("app file {} does not exist", f.display())),
        (_, Some(d)) if !Path::new(d).is_dir() => Some(format!("chdir {d} is not a directory")),
        _ => None,
    }
}

type MakeRefusal = Box<dyn FnOnce(String) -> Refusal + Send>;

/// The app file of a filled-in entry (`path:callable` names the callable after the last colon).
fn app_file(raw: &crate::config::RawPool) -> Option<PathBuf> {
    let a = raw.app.as_deref().filter(|a| a.starts_with('/'))?;
    let whole = Path::new(a);
    if whole.exists() {
        return Some(whole.to_path_buf());
    }
    Some(a.rsplit_once(':').map_or_else(|| whole.to_path_buf(), |(p, _)| PathBuf::from(p)))
}

/// `{owner}` filled in: the name of the account owning the app file (its uid when the
/// account has no name). Root or a system account is then refused by `min-uid`.
///
/// As suEXEC: the file itself, never a symbolic link's target, and its directory (first
/// on the worker's `sys.path`) must have the same owner — else one tenant could link or
/// hard-link another's file into her directory and run her modules as that tenant.
fn fill_owner(raw: crate::config::RawPool) -> Result<crate::config::RawPool, MakeRefusal> {
    let Some(file) = app_file(&raw) else {
        return Err(Box::new(|key| Refusal::Broken { key, why: "{owner} needs a file app".into() }));
    };
    let uid = match owner_of_app(&file) {
        Ok(uid) => uid,
        Err(OwnerError::Unreadable(e)) => {
            let why = format!("cannot read the app file's owner: {e}");
            return Err(Box::new(move |key| Refusal::Missing { key, why }));
        }
        Err(OwnerError::Refused(why)) => return Err(Box::new(move |key| Refusal::Account { key, why })),
    };
    let name = match find_account(&uid.to_string()) {
        Ok(Some(user)) => {
            if let Some(why) = numeric_name(&user.name, uid, &file) {
                return Err(Box::new(move |key| Refusal::Account { key, why }));
            }
            user.name
        }
        Err(e) if !means_no_account(e) => return Err(lookup_failed(&uid.to_string(), e)),
        // No name: its uid, which `user:` reads back as this account.
        Ok(None) | Err(_) => uid.to_string(),
    };
    Ok(fill_raw(&raw, &[(Placeholder::Owner, name.as_str())]))
}

/// Why `{owner}` cannot name the account `name` (uid `uid`): `user:` and `group:` read a
/// value in digits as an id, so an account named "1001" would run as whichever account has
/// uid 1001, or with the group whose gid is 1001 — another tenant's.
fn numeric_name(name: &str, uid: u32, file: &Path) -> Option<String> {
    name.parse::<u32>().ok()?;
    Some(format!(
        "{} is owned by the account named \"{name}\" (uid {uid}), a name in digits that user: and group: would read as a uid or gid: rename the account, or serve this site from a pool of its own with user: {uid}",
        file.display()
    ))
}

enum OwnerError {
    Unreadable(std::io::Error),
    Refused(String),
}

/// The uid that owns `file` and its directory, for `{owner}`.
fn owner_of_app(file: &Path) -> Result<u32, OwnerError> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::symlink_metadata(file).map_err(OwnerError::Unreadable)?;
    if meta.file_type().is_symlink() {
        return Err(OwnerError::Refused(format!(
            "{} is a symbolic link: {{owner}} takes the owner of the file itself, not of a link's target",
            file.display()
        )));
    }
    let dir = file.parent().unwrap_or(Path::new("/"));
    let dir_meta = std::fs::metadata(dir).map_err(OwnerError::Unreadable)?;
    // A directory of root's that nobody else may write is as safe as the owner's own.
    let roots_alone = dir_meta.uid() == 0 && dir_meta.mode() & 0o022 == 0;
    if dir_meta.uid() != meta.uid() && !roots_alone {
        return Err(OwnerError::Refused(format!(
            "{} is owned by uid {} but its directory {} by uid {}: {{owner}} needs both owned by the site's account",
            file.display(),
            meta.uid(),
            dir.display(),
            dir_meta.uid()
        )));
    }
    Ok(meta.uid())
}

/// An instance's pool from its filled-in entry: its app file there, resolved and checked as
/// a written pool, `min-uid`, and the interpreter probed — unless the entry resolves to
/// `running`, the configuration of the live instance looked at again (its account and
/// files are, without running anything); with its warnings, logged here unless it is
/// `running`. Blocking (user lookups, files, a process).
fn resolve_instance(
    t: &Template,
    name: String,
    raw: crate::config::RawPool,
    search_path: Option<OsString>,
    running: Option<&Pool>,
) -> Result<(Pool, Vec<String>), MakeRefusal> {
    if let Some(why) = missing(&raw) {
        return Err(Box::new(move |key| Refusal::Missing { key, why }));
    }
    let raw = if t.by_owner { fill_owner(raw)? } else { raw };
    // Before the pool's own checks: a root or system account is refused as such (403),
    // not as a pool that would need allow-root. The pool's checks read the same lookup.
    let accounts = crate::config::isolation::Accounts::default();
    if let Some(written) = raw.user.as_deref() {
        judge_account(t, written, accounts.find(written))?;
    }
    let (mut pool, warnings) = crate::config::template::instantiate(t, raw, search_path.as_deref(), &accounts)
        .map_err(|e| -> MakeRefusal { Box::new(move |key| Refusal::Broken { key, why: e.to_string() }) })?;
    pool.name = name;
    if !running.is_some_and(|r| r.same_but_listeners(&pool)) {
        for w in &warnings {
            tracing::warn!(pool = &*pool.name, "{}", crate::config::logged_warning(w));
        }
        if let Some(line) = pool.python_from_shebang() {
            tracing::info!(pool = &*pool.name, "{line}");
        }
        if let Err(e) = super::probe::check_pools(std::slice::from_ref(&pool)) {
            let why = e.to_string();
            return Err(Box::new(move |key| Refusal::Broken { key, why }));
        }
    }
    Ok((pool, warnings))
}

/// Whether the account `written`, as its lookup `found` it, may run an instance of `t`: a
/// site's account, not root, a system account (`min-uid`) or `nobody`. No account is no
/// site (404, remembered for missing-cache) when a placeholder named it; when `user:` names
/// it as written, the template's configuration is wrong for every key (500, at the key's
/// place). A lookup that failed says nothing yet (503, remembered for its Retry-After).
fn judge_account(
    t: &Template,
    written: &str,
    found: nix::Result<Option<nix::unistd::User>>,
) -> Result<(), MakeRefusal> {
    let user = match found {
        Ok(Some(u)) => u,
        Err(e) if !means_no_account(e) => return Err(lookup_failed(written, e)),
        // `user:` written without a placeholder: the operator's configuration, for every key.
        Ok(None) | Err(_) if t.raw.user.as_deref().is_some_and(|u| !u.contains('{')) => {
            let why = t.key_error(
                "user",
                &format!(
                    "no such user {written:?} on this system (written without a placeholder, it refuses every \
                     instance); create the account or change user:"
                ),
            );
            return Err(Box::new(move |key| Refusal::Broken { key, why }));
        }
        Ok(None) | Err(_) => {
            let why = format!("no account {written:?}");
            return Err(Box::new(move |key| Refusal::Missing { key, why }));
        }
    };
    match account_refused(&user, t.min_uid) {
        Some(why) => Err(Box::new(move |key| Refusal::Account { key, why })),
        None => Ok(()),
    }
}

/// getpwnam_r(3): some NSS modules answer "no such user" with one of these instead of no
/// entry (glibc gives ENOENT for a source that is not there at all, e.g. SSSD's socket).
fn means_no_account(e: nix::errno::Errno) -> bool {
    use nix::errno::Errno;
    matches!(e, Errno::ENOENT | Errno::ESRCH | Errno::EBADF | Errno::EPERM)
}

fn lookup_failed(written: &str, e: nix::errno::Errno) -> MakeRefusal {
    let why = format!(
        "cannot look up user {written:?}: {e} (the account database did not answer; check what nsswitch.conf asks: LDAP, SSSD); requests for it are answered 503 for {LOOKUP_RETRY_AFTER}s, then one looks again"
    );
    Box::new(move |key| Refusal::Lookup { key, why })
}

/// An instance's key: its placeholders' values, in the template's order.
fn joined(values: &[(Placeholder, String)]) -> String {
    values.iter().map(|(_, v)| v.as_str()).collect::<Vec<_>>().join(",")
}

/// The pool name of the instance of `template` for `key`.
fn instance_name(template: &str, key: &str) -> String {
    format!("{template}[{key}]")
}

/// The values of the template's placeholders for this request, each checked.
fn key_of(
    t: &Template,
    params: &Params,
    capture: Option<(&str, &[u8])>,
) -> Result<Vec<(Placeholder, String)>, Refusal> {
    let mut out = Vec::with_capacity(t.keys.len());
    for p in &t.keys {
        let v = match (p, capture) {
            (Placeholder::Host, Some(("host", v))) => host_key(v)?,
            (Placeholder::User, Some(("user", v))) => user_key(v)?,
            _ => match p {
                Placeholder::Host => {
                    // nginx's catch-all `server_name _` names no host: a request without
                    // Host has none.
                    let raw = params
                        .get(b"HTTP_HOST")
                        .filter(|h| !h.is_empty())
                        .or_else(|| params.get(b"SERVER_NAME").filter(|n| !n.is_empty() && *n != b"_"));
                    host_key(raw.ok_or(Refusal::NoKey("host"))?)?
                }
                Placeholder::User => {
                    let raw = params.get(b"REMOTE_USER").filter(|u| !u.is_empty()).ok_or(Refusal::NoKey("user"))?;
                    user_key(raw)?
                }
                // Not from the request: filled in from the app file (`fill_owner`).
                Placeholder::Owner => continue,
            },
        };
        out.push((*p, v));
    }
    Ok(out)
}

/// What a bad key looked like, for the log: escaped, and cut short.
fn shown(raw: &[u8]) -> String {
    let s: String = raw.iter().take(80).flat_map(|b| std::ascii::escape_default(*b)).map(char::from).collect();
    if raw.len() > 80 {
        format!("\"{s}\"… ({} bytes)", raw.len())
    } else {
        format!("\"{s}\"")
    }
}

/// A host name: the port dropped, lower-cased, one trailing dot dropped, RFC 1123 labels
/// (letters, digits, inner hyphens; 1–63 bytes each, 253 in all). No IP literal.
pub(crate) fn host_key(raw: &[u8]) -> Result<String, Refusal> {
    let bad = |why| Refusal::BadKey { what: "host", value: shown(raw), why };
    let host = match raw.iter().rposition(|&b| b == b':') {
        Some(i) if raw[i + 1..].iter().all(u8::is_ascii_digit) => &raw[..i],
        Some(_) => return Err(bad("not a host name (a ':' that is no port)")),
        None => raw,
    };
    let host = host.strip_suffix(b".").unwrap_or(host);
    if host.is_empty() || host.len() > 253 {
        return Err(bad("empty or longer than 253 bytes"));
    }
    for label in host.split(|&b| b == b'.') {
        let ok_bytes = label.iter().all(|b| b.is_ascii_alphanumeric() || *b == b'-');
        if label.is_empty() || label.len() > 63 || !ok_bytes || label[0] == b'-' || label[label.len() - 1] == b'-' {
            return Err(bad("not RFC 1123 labels (letters, digits, inner '-', 1-63 bytes, '.' between)"));
        }
    }
    if host.iter().all(|b| b.is_ascii_digit() || *b == b'.') {
        return Err(bad("an IP address, not a host name"));
    }
    Ok(String::from_utf8_lossy(host).to_ascii_lowercase())
}

/// A user name: a lower-case letter or '_', then up to 31 of letters, digits, '_', '-'.
pub(crate) fn user_key(raw: &[u8]) -> Result<String, Refusal> {
    let first_ok = raw.first().is_some_and(|b| b.is_ascii_lowercase() || *b == b'_');
    let rest_ok = raw.iter().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'_' || *b == b'-');
    if first_ok && rest_ok && raw.len() <= 32 {
        Ok(String::from_utf8_lossy(raw).into_owned())
    } else {
        Err(Refusal::BadKey {
            what: "user",
            value: shown(raw),
            why: "not a user name (a lower-case letter or '_', then letters, digits, '_', '-'; 32 at most)",
        })
    }
}

/// Log a refusal (rate-limited per template, as other client-caused lines); whether its
/// line was written.
pub(crate) fn log_refusal(
    limits: &RateLimits,
    r: &Refusal,
    template: &str,
    listener: &str,
    request_id: &str,
    peer: &str,
    uri: &str,
) -> bool {
    if !limits.allow(r.kind(), &limited_as(r, template)) {
        return false;
    }
    match r.status().0 {
        status @ (500 | 503) => tracing::warn!(listener, template, request_id, peer, uri, "{r}, answering {status}"),
        status => tracing::info!(listener, template, request_id, peer, uri, "{r}, answering {status}"),
    }
    true
}

/// The name a refusal is rate-limited under: the template's, but an instance's own for a
/// 500 — each broken site has a reason of its own, which a summary for the template would
/// hide until its key is asked again in a quiet second (its summary names it: `pool
/// sites[beta.test]: 3 more requests answered 500 (instance refused)`).
fn limited_as(r: &Refusal, template: &str) -> String {
    match r {
        Refusal::Broken { key, .. } if !key.is_empty() => instance_name(template, key),
        _ => template.to_owned(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::scratch::ScratchDir;

    /// A template of `user: "{owner}"` over `root/sites/{host}/app.py` where every site's
    /// app.py is a symbolic link (refused before anything starts), and its runtime.
    fn symlinked_sites(
        name: &str,
        spawn_rate: u32,
        hosts: &[&str],
    ) -> (Arc<Template>, Arc<TemplateRuntime>, ScratchDir) {
        let root = crate::scratch::scratch_dir(name);
        std::fs::write(root.join("real.py"), "application = None\n").unwrap();
        for h in hosts {
            std::fs::create_dir_all(root.join("sites").join(h)).unwrap();
            std::os::unix::fs::symlink(root.join("real.py"), root.join("sites").join(h).join("app.py")).unwrap();
        }
        std::fs::create_dir_all(root.join("conf.d")).unwrap();
        let text = format!(
            "pools:\n  sites:\n    template: {{spawn-rate: {spawn_rate}}}\n    app: {}/sites/{{host}}/app.py\n    user: '{{owner}}'\nlisteners:\n  web: {{fastcgi: 127.0.0.1:9000, pool: sites}}\n",
            root.display()
        );
        std::fs::write(root.join("conf.d/10.yaml"), text).unwrap();
        let config = crate::config::load_with_search_path(&root.join("conf.d"), None).unwrap();
        let t = Arc::new(config.templates[0].clone());
        (t.clone(), TemplateRuntime::new(&t, &Arc::new(Shelf::default())), root)
    }

    #[test]
    fn an_owner_named_in_digits_is_refused() {
        let file = Path::new("/srv/sites/a.test/app.py");
        // Filled in as user: "1001", it would run as uid 1001's account, not this one.
        let why = numeric_name("1001", 1500, file).unwrap();
        assert!(why.contains("named \"1001\" (uid 1500)") && why.ends_with("with user: 1500"), "{why}");
        // Its own uid in digits too: group: "{owner}" would read it as a gid.
        assert!(numeric_name("1500", 1500, file).is_some());
        assert!(numeric_name("+15", 1500, file).is_some(), "u32 parsing takes a sign, as the lookups do");
        assert_eq!(numeric_name("alice", 1500, file), None);
        assert_eq!(numeric_name("1001a", 1500, file), None);
    }

    async fn ask(rt: &TemplateRuntime, host: &str) -> Refusal {
        match rt.instance(&Params::default(), Some(("host", host.as_bytes().to_vec()))).await {
            Err(r) => r,
            Ok(p) => panic!("{host}: an instance {} was made", p.name),
        }
    }

    #[tokio::test]
    async fn a_refused_instance_leaves_spawn_rate_to_the_sites_and_is_remembered() {
        let (t, rt, _root) = symlinked_sites("refusals-spend-no-spawn-rate", 2, &["bad.test", "worse.test"]);
        // A tenant hammering its bad name: every answer is its own 403, never a 503.
        for i in 0..10 {
            let r = ask(&rt, "bad.test").await;
            assert!(matches!(r, Refusal::Account { .. }), "request {i}: {r}");
            assert!(r.to_string().contains("is a symbolic link"), "{r}");
            assert_eq!(r.to_string().contains("(remembered for missing-cache)"), i > 0, "{r}");
        }
        // spawn-rate is whole: two new sites could start this second.
        {
            let (mut st, now) = (rt.lock(), Instant::now());
            assert!(st.spawns.take(t.spawn_rate, now) && st.spawns.take(t.spawn_rate, now));
        }
        // Past the refusals' own budget, a refusal spends spawn-rate again: looking keys up
        // stays bounded.
        // Refilled "in an hour": however slow the lookup below, no refusal token comes back.
        rt.lock().refusals = Bucket { tokens: 0.0, refilled: Some(Instant::now() + Duration::from_secs(3600)) };
        rt.lock().spawns = Bucket::default();
        let r = ask(&rt, "worse.test").await;
        assert!(matches!(r, Refusal::Account { .. }), "{r}");
        let left = rt.lock().spawns.tokens;
        assert!((left - 1.0).abs() < 0.5, "one of 2 spent: {left}");
        // No key's lock is kept once nobody holds or waits for it.
        assert!(rt.keys.lock().unwrap().is_empty());
    }

    #[test]
    fn an_instance_is_named_from_the_request_alone() {
        let (_, rt, _root) = symlinked_sites("instance-names", 2, &["alpha.test"]);
        let mut params = Params::default();
        params.insert(&b"HTTP_HOST"[..], &b"Alpha.Test.:8080"[..]);
        assert_eq!(rt.instance_name(&params, None), "sites[alpha.test]");
        // a route pattern's capture takes the place of the request's own value
        assert_eq!(rt.instance_name(&params, Some(("host", b"beta.test"))), "sites[beta.test]");
        // no valid key: the template's name, which no instance has
        assert_eq!(rt.instance_name(&params, Some(("host", b"../x"))), "sites");
        assert_eq!(rt.instance_name(&Params::default(), None), "sites");
        // nothing was looked up or started
        assert!(rt.lock().live.is_empty());
    }

    #[test]
    fn each_broken_instances_first_refusal_is_logged_in_full() {
        let limits = RateLimits::default();
        let broken = |key: &str| Refusal::Broken { key: key.to_owned(), why: format!("{key}'s own reason") };
        let log = |r: &Refusal| log_refusal(&limits, r, "sites", "web", "req", "peer", "/");
        // Two sites broken for different reasons in the same second: both reasons shown.
        assert!(log(&broken("alpha.test")) && log(&broken("beta.test")));
        // The same site again within the second: counted in its own summary.
        assert!(!log(&broken("alpha.test")));
        // 404s stay summed up per template, as other client-caused lines.
        let missing = |key: &str| Refusal::Missing { key: key.to_owned(), why: "no app".into() };
        let logged = ["a.test", "b.test", "c.test", "d.test", "e.test", "f.test", "g.test"].map(|k| log(&missing(k)));
        assert_eq!(logged.iter().filter(|l| **l).count(), NO_SITE.burst as usize, "{logged:?}");
    }

    #[test]
    fn nginxs_catch_all_server_name_is_no_host() {
        let (t, _, _root) = symlinked_sites("server-name-underscore", 2, &["alpha.test"]);
        let mut params = Params::default();
        params.insert(&b"SERVER_NAME"[..], &b"_"[..]);
        assert!(matches!(key_of(&t, &params, None), Err(Refusal::NoKey("host"))));
        let mut params = Params::default();
        params.insert(&b"SERVER_NAME"[..], &b"alpha.test"[..]);
        assert_eq!(key_of(&t, &params, None).unwrap(), vec![(Placeholder::Host, "alpha.test".to_owned())]);
    }

    /// A template of `user: "{user}"` (key: REMOTE_USER) and its runtime.
    fn per_user(name: &str) -> (Arc<Template>, Arc<TemplateRuntime>, ScratchDir) {
        let root = crate::scratch::scratch_dir(name);
        std::fs::create_dir_all(root.join("conf.d")).unwrap();
        let text = format!(
            "pools:\n  homes:\n    template: {{}}\n    app: {}/{{user}}/app.py\n    user: '{{user}}'\nlisteners:\n  web: {{fastcgi: 127.0.0.1:9000, pool: homes}}\n",
            root.display()
        );
        std::fs::write(root.join("conf.d/10.yaml"), text).unwrap();
        let config = crate::config::load_with_search_path(&root.join("conf.d"), None).unwrap();
        let t = Arc::new(config.templates[0].clone());
        (t.clone(), TemplateRuntime::new(&t, &Arc::new(Shelf::default())), root)
    }

    #[test]
    fn a_fixed_user_with_no_account_is_the_operators_500_at_its_key_not_a_missing_site() {
        use crate::config::isolation::{BridgeIds, TEST_BRIDGE_IDS};
        let root = crate::scratch::scratch_dir("fixed-user-gone");
        std::fs::create_dir_all(root.join("conf.d")).unwrap();
        let text = format!(
            "pools:\n  sites:\n    template: {{min-uid: 0}}\n    app: {}/{{host}}/app.py\n    user: root\n    allow-root: true\nlisteners:\n  web: {{fastcgi: 127.0.0.1:9000, pool: sites}}\n",
            root.display()
        );
        std::fs::write(root.join("conf.d/10.yaml"), text).unwrap();
        TEST_BRIDGE_IDS.with(|c| c.set(BridgeIds { uid: 0, gid: 0 }));
        let loaded = crate::config::load_with_search_path(&root.join("conf.d"), None);
        TEST_BRIDGE_IDS.with(|c| c.set(BridgeIds { uid: 4242, gid: 4242 }));
        let t = Arc::new(loaded.unwrap().templates[0].clone());
        let rt = TemplateRuntime::new(&t, &Arc::new(Shelf::default()));
        // The account was removed after the configuration was loaded (root: an account
        // every system has, taken at load as min-uid and allow-root say).
        let Err(r) = judge_account(&t, "root", Ok(None)) else { panic!("no account, yet taken") };
        let r = rt.refuse(&t, r("alpha.test".to_owned()));
        assert_eq!(r.status(), (500, None), "{r}");
        assert!(std::ptr::eq(r.kind(), &BROKEN), "{r}: logged at WARN as the instance's configuration");
        let want = "conf.d/10.yaml:5:5: pools.sites.user: no such user \"root\" on this system";
        assert!(r.to_string().contains(want), "{r}");
        // Made for a key, the instance's account is asked of the user database once, though
        // both min-uid and the pool's checks read it (here the unprivileged tests' bridge
        // refuses to switch to root, after both).
        std::fs::create_dir_all(root.join("alpha.test")).unwrap();
        std::fs::write(root.join("alpha.test/app.py"), "application = None\n").unwrap();
        crate::config::isolation::USER_LOOKUPS.with(|l| l.borrow_mut().clear());
        let raw = fill_raw(&t.raw, &[(Placeholder::Host, "alpha.test")]);
        let Err(r) = resolve_instance(&t, "sites[alpha.test]".into(), raw, None, None) else { panic!("taken") };
        assert!(r("alpha.test".into()).to_string().contains("needs the bridge to run as root"));
        let asked = crate::config::isolation::USER_LOOKUPS.with(|l| l.borrow().iter().filter(|w| *w == "root").count());
        assert_eq!(asked, 1);
        // A placeholder's account stays the tenant's: no site (the test below).
        let (t, _, _root) = per_user("fixed-user-gone-per-user");
        let Err(r) = judge_account(&t, "alice", Ok(None)) else { panic!("no account, yet taken") };
        assert_eq!(r("alice".to_owned()).status(), (404, None));
    }

    #[test]
    fn an_account_lookup_that_fails_is_a_503_remembered_for_its_retry_after() {
        use nix::errno::Errno;
        use nix::unistd::{Gid, Uid, User};
        let (t, rt, _root) = per_user("account-lookup-errors");
        let refusal = |found| match judge_account(&t, "alice", found) {
            Err(r) => rt.refuse(&t, r("alice".to_owned())),
            Ok(()) => panic!("alice was taken"),
        };
        let user = |uid| User {
            name: "alice".into(),
            passwd: Default::default(),
            uid: Uid::from_raw(uid),
            gid: Gid::from_raw(uid),
            gecos: Default::default(),
            dir: "/home/alice".into(),
            shell: "/bin/sh".into(),
        };
        // The directory did not answer: the web server is told to come back, with why, and
        // the next requests for the key get that answer until then, without a lookup.
        for e in [Errno::EIO, Errno::ETIMEDOUT, Errno::EAGAIN] {
            rt.lock().refused.clear();
            let asked = Instant::now();
            let r = refusal(Err(e));
            assert!(matches!(r, Refusal::Lookup { .. }), "{r}");
            assert_eq!(r.status(), (503, Some(LOOKUP_RETRY_AFTER)));
            assert!(r.to_string().contains(&format!("cannot look up user \"alice\": {e}")), "{r}");
            let (until, _) = rt.lock().refused["alice"].clone();
            let kept = until - asked;
            assert!(kept >= Duration::from_secs(5) && kept < Duration::from_secs(6), "{kept:?}, not its Retry-After");
            let again = rt.remembered("alice").unwrap_err();
            assert_eq!(again.status(), (503, Some(LOOKUP_RETRY_AFTER)));
            assert!(again.to_string().ends_with("(remembered for 5s)"), "{again}");
        }
        // Some NSS modules say "no such user" so (getpwnam_r(3)): no site, remembered.
        for e in [Errno::ENOENT, Errno::ESRCH, Errno::EBADF, Errno::EPERM] {
            rt.lock().refused.clear();
            let r = refusal(Err(e));
            assert!(matches!(r, Refusal::Missing { .. }), "{e}: {r}");
            assert_eq!(r.status(), (404, None), "{e}");
            assert_eq!(rt.remembered("alice").unwrap_err().status().0, 404);
        }
        rt.lock().refused.clear();
        // The directory answered: a site's account is taken, a system one refused.
        assert!(judge_account(&t, "alice", Ok(Some(user(1001)))).is_ok());
        let r = refusal(Ok(Some(user(999))));
        assert_eq!(r.status().0, 403, "{r}");
        // No such account: no site, remembered.
        rt.lock().refused.clear();
        let r = refusal(Ok(None));
        assert_eq!(r.status().0, 404, "{r}");
        assert!(rt.lock().refused.contains_key("alice"));
    }

    #[test]
    fn an_instance_is_idle_from_its_last_requests_end_and_never_while_busy() {
        use crate::dispatch::PoolView;
        let now = Instant::now();
        let ago = |s: u64| now - Duration::from_secs(s);
        // A request that arrived 23 s ago and runs still: not idle at all.
        let busy = PoolView { busy_slots: 1, ..PoolView::default() };
        assert_eq!(quiet_for(&busy, ago(23), now), None);
        // One waiting for a worker neither.
        let queued = PoolView { queue_now: 1, ..PoolView::default() };
        assert_eq!(quiet_for(&queued, ago(23), now), None);
        // It ended a second ago: idle for a second, not 23.
        let ended = PoolView { last_end: Some(ago(1)), ..PoolView::default() };
        assert_eq!(quiet_for(&ended, ago(23), now), Some(Duration::from_secs(1)));
        // A request that arrived after the last one ended and went away before it ran (a
        // client gone from the queue): idle since its arrival.
        let earlier = PoolView { last_end: Some(ago(30)), ..PoolView::default() };
        assert_eq!(quiet_for(&earlier, ago(5), now), Some(Duration::from_secs(5)));
        // No request ended yet.
        assert_eq!(quiet_for(&PoolView::default(), ago(7), now), Some(Duration::from_secs(7)));
    }

    #[test]
    fn a_reload_that_moves_a_template_keeps_its_generation() {
        let (t, rt, _scratch) = symlinked_sites("template-generation", 2, &["alpha.test"]);
        assert_eq!(rt.current().1, 0);
        // The same settings (its lines elsewhere): an instance being made with it is started.
        rt.set_config(Arc::new((*t).clone()));
        assert_eq!(rt.current().1, 0);
        let mut changed = (*t).clone();
        changed.spawn_rate += 1;
        rt.set_config(Arc::new(changed.clone()));
        assert_eq!(rt.current().1, 1);
        assert_eq!(rt.config().spawn_rate, changed.spawn_rate);
    }

    #[tokio::test]
    async fn a_closed_template_starts_no_instance() {
        let (_, rt, _scratch) = symlinked_sites("template-closed", 2, &["alpha.test"]);
        rt.close("its template was removed by a reload").await;
        let r = ask(&rt, "alpha.test").await;
        assert!(matches!(r, Refusal::Closed { .. }), "{r}");
        assert_eq!(r.status(), (503, Some(1)));
        assert_eq!(r.to_string(), "new instance \"alpha.test\" not started: its template was removed by a reload");
        // Nothing was looked up: no refusal remembered, spawn-rate whole.
        let (mut st, now) = (rt.lock(), Instant::now());
        assert!(st.refused.is_empty() && st.spawns.take(2, now) && st.spawns.take(2, now));
    }

    #[test]
    fn host_keys() {
        assert_eq!(host_key(b"Alpha.TEST:8080").ok().as_deref(), Some("alpha.test"));
        assert_eq!(host_key(b"alpha.test.").ok().as_deref(), Some("alpha.test"));
        for bad in [&b"../x"[..], b"a b", b"a\0b", b"x/y", b"", b"-a.test", b"a..b", b"[::1]", b"10.0.0.1", b"a_b.test"]
        {
            assert!(host_key(bad).is_err(), "{bad:?}");
        }
        assert!(host_key(&[b'a'; 64]).is_err());
        let long = vec!["a".repeat(63); 5].join(".");
        assert!(host_key(long.as_bytes()).is_err());
    }

    #[test]
    fn user_keys() {
        assert_eq!(user_key(b"alice").ok().as_deref(), Some("alice"));
        for bad in [&b"Alice"[..], b"../x", b"a b", b"", b"root\0", b"1abc", b"a/b"] {
            assert!(user_key(bad).is_err(), "{bad:?}");
        }
    }
}
