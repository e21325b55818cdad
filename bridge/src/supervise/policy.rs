//! The pool manager's decisions as plain functions: each takes what the manager knows (a
//! small snapshot) and `now`, and returns what to do; supervise/manager.rs gathers the
//! snapshot, calls them and carries the answer out (spawning, draining, signalling,
//! logging). Nothing here reads a clock, a process or the dispatcher, so the tests below
//! run on made-up instants.
use crate::config::supervision::{Mode, Supervision};
use std::time::{Duration, Instant};

pub(super) const BACKOFF_START: Duration = Duration::from_millis(500);
pub(super) const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// A worker that was ready and lived this long resets the backoff; one dying faster, and
/// serving no request as it died, backs off like one that never became ready.
pub(super) const HEALTHY_AFTER: Duration = Duration::from_secs(1);
/// Sampling, sizing and spawn-rate round.
pub(super) const ROUND: Duration = Duration::from_secs(1);

/// Where a worker is in its life, as the manager tracks it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum State {
    Starting,
    Ready,
    Draining { deadline: Instant, dumped: bool },
    Stopping,
}

/// Why and how a ready worker is to be replaced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Recycle {
    pub reason: String,
    /// Stop taking requests at once (another worker serves meanwhile).
    pub urgent: bool,
    /// SIGKILL instead of SIGTERM once drained (request-timeout: a thread is stuck).
    pub hard: bool,
}

impl Recycle {
    fn calm(reason: String) -> Self {
        Self { reason, urgent: false, hard: false }
    }

    /// A ready worker with a request that its client left and that it did not end within
    /// the pool's abort-grace: replaced like one past request-timeout — it takes no new
    /// requests while another worker serves, its other requests get graceful-timeout, then
    /// it is killed (a thread of it still runs the request). A replacement already that
    /// hard (a request-timeout) stays.
    pub(super) fn after_abandoned(pending: Option<&Self>, reason: String) -> Self {
        match pending {
            Some(r) if r.urgent && r.hard => r.clone(),
            _ => Self { reason, urgent: true, hard: true },
        }
    }
}

/// The backoff after one more start-up failure: 0.5 s doubling to 30 s.
pub(super) fn next_backoff(current: Duration) -> Duration {
    if current.is_zero() {
        BACKOFF_START
    } else {
        (current * 2).min(BACKOFF_MAX)
    }
}

/// Whether a worker ready since `ready_at` has run long enough to count as healthy.
pub(super) fn healthy(ready_at: Option<Instant>, now: Instant) -> bool {
    ready_at.is_some_and(|r| now.duration_since(r) >= HEALTHY_AFTER)
}

/// After a worker that served no request as it died exited unasked: the longer backoff
/// before the next spawn, or `None` when it is replaced at once (it had run healthily).
/// A worker that dies serving a request goes by [`ServingDeaths`] instead: such a request
/// (a segfault, `os._exit`, the OOM killer) says nothing about whether the app starts, and
/// backing off for it would let a few hits on one bad URL (each fresh worker handed the
/// next of them) empty the whole pool. The backoff is left as it was then, for start-up
/// failures to go on from.
pub(super) fn backoff_after_crash(backoff: Duration, ready_at: Option<Instant>, now: Instant) -> Option<Duration> {
    (!healthy(ready_at, now)).then(|| next_backoff(backoff))
}

/// Young workers that died serving a request, one after the other: the first
/// [`SERVING_DEATHS_FREE`] are replaced at once, later ones after a short delay.
pub(super) const SERVING_DEATHS_FREE: u32 = 3;
/// A worker that served a request, or was ready this long, ends a streak of deaths while
/// serving; so does this long without one.
pub(super) const SERVING_DEATH_WINDOW: Duration = Duration::from_secs(10);
/// The longest delay before replacing a worker that died serving: a bound on how often a
/// request that kills every worker makes the host import the app, yet no outage.
pub(super) const SERVING_DEATH_DELAY_MAX: Duration = Duration::from_secs(2);

/// A streak of young workers dying while serving a request ([`Self::after_death`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct ServingDeaths {
    count: u32,
    last: Option<Instant>,
    delay: Duration,
}

impl ServingDeaths {
    /// A worker ready since `ready_at`, having finished `served` requests, died serving
    /// one: `None` to replace it at once, or the delay before its replacement once
    /// [`SERVING_DEATHS_FREE`] young workers in a row died so (every request crashing the
    /// app would otherwise have the host re-import it without pause). The delay grows as
    /// the start-up backoff does, capped at [`SERVING_DEATH_DELAY_MAX`].
    pub(super) fn after_death(&mut self, ready_at: Option<Instant>, served: u64, now: Instant) -> Option<Duration> {
        let young = served == 0 && ready_at.is_none_or(|r| now.duration_since(r) < SERVING_DEATH_WINDOW);
        let recent = self.last.is_some_and(|t| now.duration_since(t) < SERVING_DEATH_WINDOW);
        if !young || !recent {
            *self = Self::default();
        }
        self.last = Some(now);
        if !young {
            return None;
        }
        self.count += 1;
        if self.count <= SERVING_DEATHS_FREE {
            return None;
        }
        self.delay = next_backoff(self.delay).min(SERVING_DEATH_DELAY_MAX);
        Some(self.delay)
    }

    /// How many young workers in a row died serving (for the log line).
    pub(super) fn count(&self) -> u32 {
        self.count
    }
}

/// The requests an exit line names at most.
pub(super) const LISTED_REQUESTS: usize = 5;

/// The first `at_most` of `total` items, comma-separated, then how many more there are.
pub(super) fn list_at_most(items: impl Iterator<Item = String>, total: usize, at_most: usize) -> String {
    let mut line = items.take(at_most).collect::<Vec<_>>().join(", ");
    if total > at_most {
        line += &format!(" … and {} more", total - at_most);
    }
    line
}

/// Whether a worker resets the start-up backoff at a round: healthy, and started with the
/// pool's current configuration. During a rolling restart the old generation keeps
/// serving (healthily) while the new one may fail to start: only the new one's health
/// says the new code starts.
pub(super) fn resets_backoff(worker_gen: u64, current_gen: u64, ready_at: Option<Instant>, now: Instant) -> bool {
    worker_gen == current_gen && healthy(ready_at, now)
}

/// The backoff once a round saw whether some worker of the current configuration runs
/// healthily (which resets it: [`resets_backoff`]).
pub(super) fn backoff_after_round(backoff: Duration, any_healthy: bool) -> Duration {
    if any_healthy {
        Duration::ZERO
    } else {
        backoff
    }
}

/// The pool's state as the status page names it. `rollout-failing`: a rolling restart
/// (reload, SIGUSR2) whose new workers fail to start while the previous generation serves.
pub(super) fn pool_state(p: &PoolState) -> &'static str {
    if p.stopping {
        "stopping"
    } else if p.removing {
        "removing"
    } else if p.failing && p.active == 0 {
        "failing"
    } else if p.failing && p.outdated > 0 {
        "rollout-failing"
    } else if p.active > 0 {
        "running"
    } else if p.ondemand && p.total == 0 {
        "idle"
    } else {
        "starting"
    }
}

/// What [`pool_state`] looks at.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct PoolState {
    pub stopping: bool,
    pub removing: bool,
    /// A start failed and no worker has become ready since.
    pub failing: bool,
    /// Ready workers taking requests.
    pub active: usize,
    /// Workers started with a previous configuration, still there.
    pub outdated: usize,
    /// Ready or starting.
    pub total: usize,
    pub ondemand: bool,
}

/// The worker count a pool starts with.
pub(super) fn initial_target(s: &Supervision, processes: u32) -> u32 {
    match s.mode {
        Mode::Static => processes,
        Mode::Dynamic => s.min_processes.max(s.spare_processes).min(processes),
        Mode::OnDemand => 0,
    }
}

/// The worker count wanted now, from the sizing target.
pub(super) fn want(s: &Supervision, processes: u32, target: u32) -> u32 {
    match s.mode {
        Mode::Static => processes,
        _ => target.clamp(s.min_processes, processes),
    }
}

/// How often the manager checks request-timeout and draining deadlines.
pub(super) fn tick_period(request_timeout: Option<Duration>) -> Duration {
    match request_timeout {
        Some(t) => (t / 4).clamp(Duration::from_millis(100), ROUND),
        None => ROUND,
    }
}

/// The spawn rate of the next round (PHP-FPM's max_spawn_rate): doubles each round the
/// pool was short, back to 1 otherwise.
pub(super) fn next_spawn_rate(rate: u32, rate_limited: bool, max_rate: u32) -> u32 {
    if rate_limited {
        (rate * 2).min(max_rate.max(1))
    } else {
        1
    }
}

/// xorshift64*: plenty for spreading recycles; seeded by the caller (tests fix it).
#[derive(Debug, Clone)]
pub(super) struct Spread(u64);

impl Spread {
    pub(super) fn new(seed: u64) -> Self {
        Self(seed | 1)
    }

    /// A number in `0..=upto`.
    pub(super) fn upto(&mut self, upto: u64) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        if upto == 0 {
            0
        } else {
            x.wrapping_mul(0x2545_F491_4F6C_DD1D) % (upto + 1)
        }
    }
}

/// A new worker's max-requests: the limit plus up to max-requests-jitter (0: no limit).
pub(super) fn max_requests_for(s: &Supervision, spread: &mut Spread) -> u64 {
    match s.max_requests {
        Some(n) => n + spread.upto(s.max_requests_jitter),
        None => 0,
    }
}

/// When a worker ready at `now` is due for restart-interval (with its jitter drawn).
pub(super) fn lifetime_end(s: &Supervision, now: Instant, spread: &mut Spread) -> Option<Instant> {
    let extra = Duration::from_millis(spread.upto(s.restart_interval_jitter.as_millis() as u64));
    s.restart_interval.map(|d| now + d + extra)
}

/// What the manager knows of one ready worker at a round.
#[derive(Debug, Clone, Default)]
pub(super) struct Sampled {
    pub ready_at: Option<Instant>,
    pub rss: Option<u64>,
    pub cpu: Option<Duration>,
    pub lifetime_end: Option<Instant>,
    pub memory_warned: bool,
}

/// The round's verdict on one ready worker not yet marked for replacement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Verdict {
    Keep,
    /// Over memory-limit but younger than min-lifetime: say so once, recycle later.
    MemoryLater {
        rss: u64,
        limit: u64,
    },
    Memory {
        rss: u64,
        limit: u64,
    },
    Cpu {
        used: Duration,
        limit: Duration,
    },
    Interval {
        lived: Duration,
    },
}

impl Verdict {
    /// The replacement this verdict asks for.
    pub(super) fn recycle(&self) -> Option<Recycle> {
        match *self {
            Self::Keep | Self::MemoryLater { .. } => None,
            Self::Memory { rss, limit } => Some(Recycle {
                reason: format!("memory-limit (RSS {} > {})", Mib(rss), Mib(limit)),
                urgent: true,
                hard: false,
            }),
            Self::Cpu { used, .. } => Some(Recycle {
                reason: format!("cpu-time-limit ({:.1}s of CPU)", used.as_secs_f64()),
                urgent: true,
                hard: false,
            }),
            Self::Interval { lived } => Some(Recycle::calm(format!("restart-interval (ready for {:.0?})", lived))),
        }
    }
}

/// memory-limit, cpu-time-limit and restart-interval for one worker; min-lifetime holds
/// back all but the CPU limit (RLIMIT_CPU would end the worker anyway).
pub(super) fn round_verdict(s: &Supervision, w: &Sampled, now: Instant) -> Verdict {
    let lived = w.ready_at.map(|r| now.duration_since(r)).unwrap_or_default();
    let old_enough = lived >= s.min_lifetime;
    if let (Some(limit), Some(rss)) = (s.memory_limit, w.rss) {
        if rss > limit {
            return if old_enough {
                Verdict::Memory { rss, limit }
            } else if !w.memory_warned {
                Verdict::MemoryLater { rss, limit }
            } else {
                Verdict::Keep
            };
        }
    }
    if let (Some(limit), Some(used)) = (s.cpu_time_limit, w.cpu) {
        if used >= limit {
            return Verdict::Cpu { used, limit };
        }
    }
    if w.lifetime_end.is_some_and(|end| now >= end) && old_enough {
        return Verdict::Interval { lived };
    }
    Verdict::Keep
}

/// A ready worker's replacement asked for between rounds: it runs an outdated
/// configuration, or the dispatcher flagged max-requests (held back by min-lifetime).
/// `outdated`: why the worker's configuration generation was replaced ([`RolloutCause`]).
pub(super) fn flagged(
    s: &Supervision,
    outdated: Option<RolloutCause>,
    max_requests_reached: Option<u64>,
    ready_at: Option<Instant>,
    now: Instant,
) -> Option<Recycle> {
    if let Some(cause) = outdated {
        return Some(Recycle::calm(cause.reason().into()));
    }
    let served = max_requests_reached?;
    let lived = ready_at.map(|r| now.duration_since(r)).unwrap_or_default();
    (lived >= s.min_lifetime).then(|| Recycle::calm(format!("max-requests ({served} served)")))
}

/// Why a pool rolls its workers to a new configuration generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum RolloutCause {
    /// A reload changed what a worker is (app, python, env, threads, isolation…).
    Changed,
    /// A template instance looked at again (no reload: before a new worker, or as its
    /// workers fail to start): its account, files or interpreter changed.
    Looked,
    /// SIGUSR2 or `fcgibridge reload --restart-workers` asked to restart the workers; the pool's configuration is as it was.
    Restart,
    /// The same with a changed configuration.
    RestartChanged,
    /// A `touch-reload` file changed.
    Touched,
}

impl RolloutCause {
    /// The restart reason of the workers it retires (log and status page).
    pub(super) fn reason(self) -> &'static str {
        match self {
            Self::Changed => "reload (configuration changed)",
            Self::Looked => "account, files or interpreter changed (looked at again, no reload)",
            Self::Restart => "restart requested (reload --restart-workers or SIGUSR2)",
            Self::RestartChanged => "restart requested (reload --restart-workers or SIGUSR2; configuration changed)",
            Self::Touched => "touch-reload (a watched file changed)",
        }
    }

    /// Every cause, for [`gave`](Self::gave).
    const ALL: [Self; 5] = [Self::Changed, Self::Looked, Self::Restart, Self::RestartChanged, Self::Touched];

    /// Whether a rollout flagged this replacement ([`flagged`]), not max-requests, a limit
    /// or a timeout: a later rollout gives it its own reason.
    pub(super) fn gave(r: &Recycle) -> bool {
        !r.urgent && Self::ALL.iter().any(|c| c.reason() == r.reason)
    }

    /// Why a worker of configuration generation `generation` is replaced by this rollout,
    /// the configuration having last changed at generation `changed_at`: a restart asked
    /// for after a reload that changed the configuration replaces the workers older than
    /// that change for both reasons.
    pub(super) fn for_worker(self, generation: u64, changed_at: u64) -> Self {
        match self {
            Self::Restart if generation < changed_at => Self::RestartChanged,
            other => other,
        }
    }

    /// The stop reason of a worker that was still starting when the rollout began.
    pub(super) fn starting_reason(self) -> &'static str {
        match self {
            Self::Changed => "reload (started with the previous configuration)",
            Self::Looked => "account, files or interpreter changed (started as they were)",
            Self::Restart | Self::RestartChanged => {
                "restart requested (reload --restart-workers or SIGUSR2) while it was starting"
            }
            Self::Touched => "touch-reload (a watched file changed while it was starting)",
        }
    }
}

/// What the sizing decisions know of the pool.
#[derive(Debug, Clone, Default)]
pub(super) struct Sizing {
    pub threads: u32,
    /// The pool's upper bound (`processes`).
    pub processes: u32,
    pub idle_slots: usize,
    pub queue_now: usize,
    /// Workers starting, and ready or starting.
    pub starting: usize,
    pub total: usize,
    /// Ready workers not waiting for a replacement, plus those starting.
    pub good_total: u32,
    /// Spawns left in this round.
    pub budget: u32,
}

/// Dynamic / ondemand growth: workers to start for waiting requests and, in dynamic
/// mode, spare-processes worth of free threads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(super) struct Grow {
    pub start: u32,
    /// The spawn budget held some back (the next round's rate doubles).
    pub rate_limited: bool,
    /// The new sizing target, when `start > 0`.
    pub target: u32,
}

/// How many workers to add, at most the round's spawn budget.
pub(super) fn grow(s: &Supervision, z: &Sizing) -> Grow {
    let threads = z.threads.max(1) as usize;
    let starting_slots = z.starting * threads;
    let spare_short = (s.spare_processes as usize * threads).saturating_sub(z.idle_slots + starting_slots);
    let queue_short = z.queue_now.saturating_sub(starting_slots);
    let short = spare_short.max(queue_short);
    if short == 0 {
        return Grow::default();
    }
    let procs = short.div_ceil(threads) as u32;
    let wanted = procs.min(z.processes.saturating_sub(z.total as u32));
    let start = wanted.min(z.budget);
    let target = if start > 0 { (z.good_total + start).min(z.processes) } else { 0 };
    Grow { start, rate_limited: start < wanted, target }
}

/// Ondemand after a failed start: requests answered 503 since are demand to try again.
pub(super) fn demand_after_failure(rejected_now: u64, rejected_seen: u64) -> bool {
    rejected_now > rejected_seen
}

/// Whether a worker stays idle: nothing running and nothing served since the last look.
pub(super) fn still_idle(busy: u32, served: u64, last_served: u64) -> bool {
    busy == 0 && served == last_served
}

/// Workers idle for idle-timeout, longest idle first: `(idle since, id)`.
pub(super) fn idle_candidates(
    idle: &[(u64, Option<Instant>)],
    idle_timeout: Duration,
    now: Instant,
) -> Vec<(Instant, u64)> {
    let mut out: Vec<(Instant, u64)> = idle
        .iter()
        .filter_map(|&(id, since)| since.filter(|&t| now.duration_since(t) >= idle_timeout).map(|t| (t, id)))
        .collect();
    out.sort();
    out
}

/// Whether one more idle worker may stop: min-processes stay, and in dynamic mode
/// spare-processes worth of free threads beyond its own.
pub(super) fn may_retire_idle(s: &Supervision, good_total: u32, idle_slots: usize, threads: u32) -> bool {
    if good_total <= s.min_processes {
        return false;
    }
    let threads = threads as usize;
    s.mode != Mode::Dynamic || idle_slots >= threads + s.spare_processes as usize * threads
}

/// One worker as the replacement plan sees it.
#[derive(Debug, Clone)]
pub(super) struct Member {
    pub id: u64,
    pub state: State,
    pub spawned_at: Instant,
    /// Waiting for a replacement: whether urgently.
    pub recycle_urgent: Option<bool>,
    /// Requests running on it.
    pub busy: u32,
}

/// The pool as the replacement plan sees it.
#[derive(Debug, Clone)]
pub(super) struct Roster {
    pub mode: Mode,
    pub want: usize,
    /// A start failed and no worker has become ready since.
    pub failing: bool,
    /// Backoff: no spawn before.
    pub next_spawn_at: Option<Instant>,
    pub members: Vec<Member>,
}

/// A step of the replacement plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Action {
    /// Stop giving it requests for the replacement it waited for.
    Retire(u64),
    /// Stop giving it requests: the pool runs `want` processes now.
    Shrink { id: u64, want: usize },
    /// Start this many workers.
    Spawn(usize),
}

/// Retire the workers waiting for a replacement (urgent ones first, then the oldest;
/// never the last one serving), shrink a static pool to its size, and start workers: up
/// to the wanted number at once, replacements max(1, want/4) at a time, one at a time
/// while failing, none during backoff.
pub(super) fn plan(r: &Roster, now: Instant) -> Vec<Action> {
    let mut out = Vec::new();
    let mut ready: Vec<&Member> = r.members.iter().filter(|m| m.state == State::Ready).collect();
    let mut pending: Vec<(bool, Instant, u64)> =
        ready.iter().filter_map(|m| m.recycle_urgent.map(|urgent| (!urgent, m.spawned_at, m.id))).collect();
    pending.sort();
    let want = r.want;
    let mut active = ready.len();
    for (not_urgent, _, id) in pending {
        let go = if not_urgent { active > want } else { active >= 2 || (want == 0 && active >= 1) };
        if go {
            out.push(Action::Retire(id));
            ready.retain(|m| m.id != id);
            active -= 1;
        }
    }
    if r.mode == Mode::Static && active > want {
        let mut extra: Vec<(u32, u64)> = ready.iter().map(|m| (m.busy, m.id)).collect();
        extra.sort();
        for (_, id) in extra.into_iter().take(active - want) {
            out.push(Action::Shrink { id, want });
            ready.retain(|m| m.id != id);
        }
    }
    let active = ready.len();
    let pending = ready.iter().filter(|m| m.recycle_urgent.is_some()).count();
    let starting = r.members.iter().filter(|m| m.state == State::Starting).count();
    let capacity_short = want.saturating_sub(active + starting);
    let good_short = want.saturating_sub(active - pending + starting);
    let surge = (want / 4).max(1);
    let mut to_spawn = capacity_short.max(good_short.min(surge.saturating_sub(starting)));
    if r.failing {
        to_spawn = to_spawn.min(usize::from(starting == 0));
    }
    if r.next_spawn_at.is_some_and(|t| now < t) {
        to_spawn = 0;
    }
    if to_spawn > 0 {
        out.push(Action::Spawn(to_spawn));
    }
    out
}

/// A draining worker's next step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum DrainStep {
    Wait,
    /// No request left: stop it.
    Finish,
    /// Past graceful-timeout: log its Python stacks, kill it at `until`.
    DumpStacks {
        until: Instant,
    },
    /// Past the deadline: kill it.
    Kill,
}

/// What to do with a draining worker holding `open` connections. A `direct` worker
/// (docs/direct.md) is told to drain by its scoreboard and is done when it exits: it is
/// never stopped early, idle or not.
pub(super) fn drain_step(
    (open, direct): (u32, bool),
    deadline: Instant,
    dumped: bool,
    native: bool,
    now: Instant,
) -> DrainStep {
    if open == 0 && !direct {
        DrainStep::Finish
    } else if now < deadline {
        DrainStep::Wait
    } else if native && !dumped {
        DrainStep::DumpStacks { until: now + super::worker::DUMP_GRACE }
    } else {
        DrainStep::Kill
    }
}

/// A byte count in MiB, for log lines.
pub(super) struct Mib(pub u64);

impl std::fmt::Display for Mib {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:.0}MiB", self.0 as f64 / (1u64 << 20) as f64)
    }
}

#[cfg(test)]
mod tests;
