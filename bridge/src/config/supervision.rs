//! The supervision keys of a pool: how many worker processes (`mode` static / dynamic /
//! ondemand and their sizes) and when a worker is recycled or replaced (max-requests,
//! restart-interval, memory and CPU limits, request-timeout, graceful-timeout,
//! abort-grace, min-lifetime). docs/supervision.md explains each one to operators.
use super::error::{ConfigError, Source};
use super::file::RawPool;
use super::locate::KeyPath;
use super::units::{DurationDisplay, HumanDuration, SizeDisplay, WrittenSize};
use std::time::Duration;

// Defaults; docs/configuration.md and docs/supervision.md list the same values.
pub const DEFAULT_STATIC_PROCESSES: u32 = 2;
pub const DEFAULT_MIN_PROCESSES: u32 = 1;
pub const DEFAULT_MAX_PROCESSES: u32 = 4;
pub const DEFAULT_SPARE_PROCESSES: u32 = 1;
/// PHP-FPM's pm.max_spawn_rate default.
pub const DEFAULT_MAX_SPAWN_RATE: u32 = 32;
/// PHP-FPM's pm.process_idle_timeout default.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(10);
pub const DEFAULT_GRACEFUL_TIMEOUT: Duration = Duration::from_secs(30);
pub const DEFAULT_ABORT_GRACE: Duration = Duration::from_secs(5);

/// How the number of worker processes is decided (PHP-FPM's `pm`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Always `processes` workers.
    Static,
    /// Between min- and max-processes, keeping spare-processes idle.
    Dynamic,
    /// None until a request comes; each one goes after idle-timeout without work.
    OnDemand,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Static => "static",
            Self::Dynamic => "dynamic",
            Self::OnDemand => "ondemand",
        }
    }
}

/// The resolved supervision settings of one pool. The pool's `processes` field is the
/// most workers it runs at once (static: all the time; dynamic / ondemand: max-processes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Supervision {
    pub mode: Mode,
    /// Dynamic: fewest workers kept running (0 for the other modes; static runs `processes`).
    pub min_processes: u32,
    /// Dynamic: idle workers kept ready for a burst (0 for the other modes).
    pub spare_processes: u32,
    /// Dynamic / ondemand: most workers started in one round; the rate doubles from 1
    /// each round the pool is still short, up to this.
    pub max_spawn_rate: u32,
    /// Dynamic / ondemand: a worker with no request for this long is stopped (down to
    /// min-processes, keeping spare-processes).
    pub idle_timeout: Duration,
    /// Recycle a worker after this many requests (None: never).
    pub max_requests: Option<u64>,
    /// A random 0..=jitter added per worker, so workers do not all recycle at once.
    pub max_requests_jitter: u64,
    /// Recycle a worker after it has been ready this long (None: never).
    pub restart_interval: Option<Duration>,
    pub restart_interval_jitter: Duration,
    /// A worker is not recycled for max-requests, restart-interval or memory-limit
    /// before it has been ready this long.
    pub min_lifetime: Duration,
    /// A request running longer gets 504, and its worker is replaced (None: no limit).
    pub request_timeout: Option<Duration>,
    /// How long a retiring worker may take to finish its in-flight requests.
    pub graceful_timeout: Duration,
    /// How long a worker gets to end a request the web server aborted; past it the worker
    /// is replaced as for request-timeout (None, written 0: never; the request runs on until
    /// it ends or request-timeout).
    pub abort_grace: Option<Duration>,
    /// Recycle a worker whose resident memory exceeds this many bytes (None: no limit).
    pub memory_limit: Option<u64>,
    /// Recycle a worker that used this much CPU time (RLIMIT_CPU; None: no limit).
    pub cpu_time_limit: Option<Duration>,
}

impl Default for Supervision {
    fn default() -> Self {
        Self {
            mode: Mode::Static,
            min_processes: 0,
            spare_processes: 0,
            max_spawn_rate: DEFAULT_MAX_SPAWN_RATE,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            max_requests: None,
            max_requests_jitter: 0,
            restart_interval: None,
            restart_interval_jitter: Duration::ZERO,
            min_lifetime: Duration::ZERO,
            request_timeout: None,
            graceful_timeout: DEFAULT_GRACEFUL_TIMEOUT,
            abort_grace: Some(DEFAULT_ABORT_GRACE),
            memory_limit: None,
            cpu_time_limit: None,
        }
    }
}

/// The supervision keys as written, moved out of [`RawPool`].
#[derive(Debug, Default)]
pub struct RawSupervision {
    pub mode: Option<String>,
    pub processes: Option<u32>,
    pub min_processes: Option<u32>,
    pub max_processes: Option<u32>,
    pub spare_processes: Option<u32>,
    pub max_spawn_rate: Option<u32>,
    pub idle_timeout: Option<HumanDuration>,
    pub max_requests: Option<u64>,
    pub max_requests_jitter: Option<u64>,
    pub restart_interval: Option<HumanDuration>,
    pub restart_interval_jitter: Option<HumanDuration>,
    pub min_lifetime: Option<HumanDuration>,
    pub request_timeout: Option<HumanDuration>,
    pub graceful_timeout: Option<HumanDuration>,
    pub abort_grace: Option<HumanDuration>,
    pub memory_limit: Option<WrittenSize>,
    pub cpu_time_limit: Option<HumanDuration>,
}

impl RawSupervision {
    /// Move the supervision keys out of `raw`.
    pub fn take(raw: &mut RawPool) -> Self {
        Self {
            mode: raw.mode.take(),
            processes: raw.processes.take(),
            min_processes: raw.min_processes.take(),
            max_processes: raw.max_processes.take(),
            spare_processes: raw.spare_processes.take(),
            max_spawn_rate: raw.max_spawn_rate.take(),
            idle_timeout: raw.idle_timeout.take(),
            max_requests: raw.max_requests.take(),
            max_requests_jitter: raw.max_requests_jitter.take(),
            restart_interval: raw.restart_interval.take(),
            restart_interval_jitter: raw.restart_interval_jitter.take(),
            min_lifetime: raw.min_lifetime.take(),
            request_timeout: raw.request_timeout.take(),
            graceful_timeout: raw.graceful_timeout.take(),
            abort_grace: raw.abort_grace.take(),
            memory_limit: raw.memory_limit.take(),
            cpu_time_limit: raw.cpu_time_limit.take(),
        }
    }
}

/// Resolve the keys of `pools.NAME` (`here`): returns the pool's `processes` (its most
/// workers at once) and the rest. `queue` is the pool's queue-size and queue-timeout (as
/// written), for the ondemand checks.
/// Every key is checked; all the errors are returned.
pub fn resolve(
    src: &Source,
    here: &KeyPath,
    raw: RawSupervision,
    (queue_size, queue_timeout): (usize, Option<std::time::Duration>),
) -> Result<(u32, Supervision), ConfigError> {
    let errs = std::cell::RefCell::new(Vec::new());
    let bad = |key: &str, msg: String| errs.borrow_mut().push(src.invalid(&here.key(key), msg));
    let mode = match raw.mode.as_deref() {
        None | Some("static") => Mode::Static,
        Some("dynamic") => Mode::Dynamic,
        Some("ondemand") | Some("on-demand") => Mode::OnDemand,
        Some(other) => {
            let hint = super::hint::suggestion(other, &["static", "dynamic", "ondemand"]);
            bad("mode", format!("unknown mode {other:?}{hint}"));
            // The keys that depend on the mode are not checked against an unknown one; the
            // rest still are.
            let mut s = Supervision::default();
            recycling(&mut s, &raw, &bad);
            return Err(ConfigError::several(errs.into_inner()));
        }
    };
    let not_in = |key: &str, given: bool, what: &str| {
        if given {
            bad(key, format!("does not apply to mode {}; {what}", mode.as_str()));
        }
    };
    let mut s = Supervision { mode, ..Supervision::default() };
    let processes = match mode {
        Mode::Static => {
            for (key, given) in [
                ("min-processes", raw.min_processes.is_some()),
                ("max-processes", raw.max_processes.is_some()),
                ("spare-processes", raw.spare_processes.is_some()),
                ("max-spawn-rate", raw.max_spawn_rate.is_some()),
                ("idle-timeout", raw.idle_timeout.is_some()),
            ] {
                not_in(key, given, "set `mode: dynamic` or `mode: ondemand`, or use `processes` for a fixed number");
            }
            let n = raw.processes.unwrap_or(DEFAULT_STATIC_PROCESSES);
            if n == 0 {
                bad(
                    "processes",
                    "must be 1 or more (for no process until a request comes, set `mode: ondemand`)".into(),
                );
            }
            n
        }
        Mode::Dynamic => {
            not_in("processes", raw.processes.is_some(), "set min-processes and max-processes");
            let min = raw.min_processes.unwrap_or(DEFAULT_MIN_PROCESSES);
            let max = raw.max_processes.unwrap_or(DEFAULT_MAX_PROCESSES.max(min));
            if max == 0 {
                bad("max-processes", "must be 1 or more".into());
            } else if min > max {
                bad("min-processes", format!("is {min}, more than max-processes ({max})"));
            }
            let spare = raw.spare_processes.unwrap_or(DEFAULT_SPARE_PROCESSES.min(max));
            if spare > max && max > 0 {
                bad("spare-processes", format!("is {spare}, more than max-processes ({max})"));
            }
            s.min_processes = min;
            s.spare_processes = spare;
            max
        }
        Mode::OnDemand => {
            not_in("processes", raw.processes.is_some(), "set max-processes");
            not_in(
                "min-processes",
                raw.min_processes.is_some(),
                "an ondemand pool starts from none (use mode dynamic for a floor)",
            );
            not_in("spare-processes", raw.spare_processes.is_some(), "use mode dynamic to keep idle workers");
            let max = raw.max_processes.unwrap_or(DEFAULT_MAX_PROCESSES);
            if max == 0 {
                bad("max-processes", "must be 1 or more".into());
            }
            if queue_size == 0 {
                bad("mode", "an ondemand pool needs queue-size of 1 or more: the first request waits in the queue while its worker starts".into());
            }
            if queue_timeout.is_some_and(|t| t.is_zero()) {
                bad("queue-timeout", "an ondemand pool's first request waits in the queue while its worker starts: 0 would answer it 503; give it longer than the app takes to start".into());
            }
            s.min_processes = 0;
            max
        }
    };
    // A static pool's scaling keys are refused above, whatever their values.
    if mode != Mode::Static {
        scaling(&mut s, &raw, &bad);
    }
    recycling(&mut s, &raw, &bad);
    ConfigError::from_all(errs.into_inner())?;
    Ok((processes, s))
}

/// The pace of a pool that grows and shrinks (max-spawn-rate, idle-timeout) into `s`.
fn scaling(s: &mut Supervision, raw: &RawSupervision, bad: &dyn Fn(&str, String)) {
    if let Some(rate) = raw.max_spawn_rate {
        if rate == 0 {
            bad("max-spawn-rate", "must be 1 or more".into());
        }
        s.max_spawn_rate = rate;
    }
    if let Some(t) = raw.idle_timeout {
        if t.0.is_zero() {
            bad("idle-timeout", "must be longer than 0s".into());
        }
        s.idle_timeout = t.0;
    }
}

/// The recycling and limit keys (max-requests … cpu-time-limit, abort-grace) into `s`; `bad` records
/// an error of a key.
fn recycling(s: &mut Supervision, raw: &RawSupervision, bad: &dyn Fn(&str, String)) {
    // 0 means "off" for the limits, like leaving the key out.
    s.max_requests = raw.max_requests.filter(|&n| n > 0);
    s.max_requests_jitter = match (raw.max_requests_jitter, s.max_requests) {
        (Some(j), Some(_)) => j,
        (Some(j), None) if j > 0 => {
            bad("max-requests-jitter", "needs max-requests".into());
            0
        }
        (Some(_), None) => 0,
        // By default a tenth, so that workers started together do not recycle together.
        (None, Some(n)) => n / 10,
        (None, None) => 0,
    };
    s.restart_interval = raw.restart_interval.map(|d| d.0).filter(|d| !d.is_zero());
    s.restart_interval_jitter = match (raw.restart_interval_jitter, s.restart_interval) {
        (Some(j), Some(_)) => j.0,
        (Some(j), None) if !j.0.is_zero() => {
            bad("restart-interval-jitter", "needs restart-interval".into());
            Duration::ZERO
        }
        (Some(_), None) => Duration::ZERO,
        (None, Some(d)) => d / 10,
        (None, None) => Duration::ZERO,
    };
    s.min_lifetime = raw.min_lifetime.map(|d| d.0).unwrap_or(Duration::ZERO);
    s.request_timeout = raw.request_timeout.map(|d| d.0).filter(|d| !d.is_zero());
    if let Some(g) = raw.graceful_timeout {
        if g.0.is_zero() {
            bad("graceful-timeout", "must be longer than 0s".into());
        }
        s.graceful_timeout = g.0;
    }
    // 0 means "off", as for the other limits.
    s.abort_grace = raw.abort_grace.map_or(Some(DEFAULT_ABORT_GRACE), |d| Some(d.0).filter(|d| !d.is_zero()));
    s.memory_limit = raw.memory_limit.map(|b| b.bytes).filter(|&b| b > 0);
    if let Some(limit) = s.memory_limit {
        if limit < (1 << 20) {
            // Said so that it fits `512` (bytes, meant as MiB) and `1MB` (a unit) alike.
            let m = format!(
                "{limit} bytes is less than 1MiB, the smallest limit; write e.g. \"512MiB\" (a number without a unit \
                 counts bytes)"
            );
            bad("memory-limit", m);
        }
    }
    s.cpu_time_limit = raw.cpu_time_limit.map(|d| d.0).filter(|d| !d.is_zero());
    if let Some(cpu) = s.cpu_time_limit {
        if cpu.subsec_nanos() != 0 {
            bad("cpu-time-limit", "is counted in whole seconds (RLIMIT_CPU); write e.g. \"90s\"".into());
        }
    }
}

/// A `memory-limit` of 1MiB or more written without a unit (`500000000`), as a warning: it
/// is taken as bytes of RSS, a graceful recycle, where mod_wsgi's `memory-limit=` (bytes
/// too, pasted from WSGIDaemonProcess) was a hard limit that makes an allocation past it fail.
/// A unit says which is meant. (Under 1MiB it is an error, which says the same of units.)
pub fn bare_memory_limit(src: &Source, here: &KeyPath, raw: &RawSupervision) -> Option<String> {
    let written = raw.memory_limit.filter(|m| m.bare && m.bytes >= 1 << 20)?;
    let key = here.key("memory-limit");
    let mib = (written.bytes + (1 << 19)) >> 20;
    Some(format!(
        "{}: warning: {key}: {} without a unit is bytes, about {mib}MiB: a worker whose RSS passes it is recycled \
         gracefully (sampled every second). mod_wsgi's memory-limit={} was a hard limit instead (RLIMIT_DATA: an \
         allocation past it fails), nearest here the pool key rlimit-as; write a unit (`memory-limit: {mib}MiB`) \
         and this warning goes",
        src.at(&key),
        written.bytes,
        written.bytes,
    ))
}

/// The keys as `fcgibridge check` prints them: (key, value, the key is off).
pub fn render(s: &Supervision, processes: u32) -> Vec<(&'static str, String, bool)> {
    let d = |v: Duration| DurationDisplay(v).to_string();
    let on = |key, value| (key, value, false);
    let mut out = vec![on("mode", s.mode.as_str().to_owned())];
    match s.mode {
        Mode::Static => out.push(on("processes", processes.to_string())),
        Mode::Dynamic => {
            out.push(on("min-processes", s.min_processes.to_string()));
            out.push(on("max-processes", processes.to_string()));
            out.push(on("spare-processes", s.spare_processes.to_string()));
        }
        Mode::OnDemand => out.push(on("max-processes", processes.to_string())),
    }
    if s.mode != Mode::Static {
        out.push(on("max-spawn-rate", s.max_spawn_rate.to_string()));
        out.push(on("idle-timeout", d(s.idle_timeout)));
    }
    // A limit that is off: `0`, shown as a comment.
    let limit = |key, value: Option<String>| match value {
        Some(v) => (key, v, false),
        None => (key, "0".to_owned(), true),
    };
    out.push(limit("max-requests", s.max_requests.map(|n| n.to_string())));
    if s.max_requests.is_some() {
        out.push(on("max-requests-jitter", s.max_requests_jitter.to_string()));
    }
    out.push(limit("restart-interval", s.restart_interval.map(d)));
    if s.restart_interval.is_some() {
        out.push(on("restart-interval-jitter", d(s.restart_interval_jitter)));
    }
    out.push(on("min-lifetime", d(s.min_lifetime)));
    out.push(limit("request-timeout", s.request_timeout.map(d)));
    out.push(on("graceful-timeout", d(s.graceful_timeout)));
    // On by default (5s): `0` is a value to keep, not a key left out.
    out.push(on("abort-grace", d(s.abort_grace.unwrap_or_default())));
    out.push(limit("memory-limit", s.memory_limit.map(|b| SizeDisplay(b).to_string())));
    out.push(limit("cpu-time-limit", s.cpu_time_limit.map(d)));
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::config::{load_with_search_path, Config, ConfigError};

    fn load(pool_keys: &str) -> Result<Config, ConfigError> {
        let dir = crate::scratch::scratch_dir("supervision");
        let text = format!(
            "pools:\n  p:\n    app: \"x:application\"\n    python: /bin/sh\n{}listeners:\n  l: {{fastcgi: \"127.0.0.1:9999\", pool: p}}\n",
            pool_keys.lines().map(|l| format!("    {l}\n")).collect::<String>()
        );
        std::fs::write(dir.join("p.yaml"), text).unwrap();
        load_with_search_path(&dir, None)
    }

    fn pool(keys: &str) -> (u32, Supervision) {
        match load(keys) {
            Ok(c) => (c.pools[0].processes, c.pools[0].supervision.clone()),
            Err(e) => panic!("{keys}: {e}"),
        }
    }

    fn error(keys: &str) -> String {
        match load(keys) {
            Ok(_) => panic!("{keys}: expected an error"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn static_is_the_default() {
        let (n, s) = pool("");
        assert_eq!((n, s.mode), (2, Mode::Static));
        assert_eq!(s.max_requests, None);
        assert_eq!(s.graceful_timeout, DEFAULT_GRACEFUL_TIMEOUT);
        let (n, _) = pool("processes: 5");
        assert_eq!(n, 5);
    }

    #[test]
    fn dynamic_and_ondemand_sizes() {
        let (max, s) = pool("mode: dynamic\nmin-processes: 2\nmax-processes: 10\nspare-processes: 3\nmax-spawn-rate: 8\nidle-timeout: 30s");
        assert_eq!((max, s.min_processes, s.spare_processes, s.max_spawn_rate), (10, 2, 3, 8));
        assert_eq!(s.idle_timeout, Duration::from_secs(30));
        let (max, s) = pool("mode: dynamic");
        assert_eq!((max, s.min_processes, s.spare_processes), (DEFAULT_MAX_PROCESSES, 1, 1));
        let (max, s) = pool("mode: ondemand\nmax-processes: 3");
        assert_eq!((max, s.mode, s.min_processes), (3, Mode::OnDemand, 0));
        assert_eq!(s.idle_timeout, DEFAULT_IDLE_TIMEOUT);
    }

    #[test]
    fn keys_of_another_mode_are_errors() {
        assert!(
            error("max-processes: 4").contains("pools.p.max-processes: does not apply to mode static"),
            "{}",
            error("max-processes: 4")
        );
        assert!(error("mode: dynamic\nprocesses: 4").contains("set min-processes and max-processes"));
        assert!(error("mode: ondemand\nmin-processes: 1").contains("does not apply to mode ondemand"));
        // A static pool's scaling key is refused once, not also for its value.
        let once = error("idle-timeout: 0");
        assert!(once.ends_with("p.yaml:5:5: pools.p.idle-timeout: does not apply to mode static; set `mode: dynamic` or `mode: ondemand`, or use `processes` for a fixed number"), "{once}");
        assert!(error("mode: dynamic\nmin-processes: 5\nmax-processes: 2").contains("more than max-processes"));
        assert!(error("mode: ondemand\nqueue-size: 0").contains("queue-size of 1 or more"));
        assert!(error("mode: dynamc").contains("did you mean \"dynamic\""), "{}", error("mode: dynamc"));
        assert!(error("processes: 0").contains("mode: ondemand"));
    }

    #[test]
    fn recycling_limits_and_their_jitter() {
        let (_, s) = pool("max-requests: 1000");
        assert_eq!((s.max_requests, s.max_requests_jitter), (Some(1000), 100), "a tenth by default");
        let (_, s) = pool("max-requests: 50\nmax-requests-jitter: 0");
        assert_eq!((s.max_requests, s.max_requests_jitter), (Some(50), 0));
        let (_, s) = pool("max-requests: 0");
        assert_eq!(s.max_requests, None);
        let (_, s) = pool("restart-interval: 1h");
        assert_eq!(s.restart_interval_jitter, Duration::from_secs(360));
        assert!(error("max-requests-jitter: 5").contains("needs max-requests"));
        let (_, s) = pool(
            "memory-limit: 256MiB\ncpu-time-limit: 5m\nrequest-timeout: 30s\ngraceful-timeout: 10s\nmin-lifetime: 1m",
        );
        assert_eq!(s.memory_limit, Some(256 << 20));
        assert_eq!(s.cpu_time_limit, Some(Duration::from_secs(300)));
        assert_eq!(s.request_timeout, Some(Duration::from_secs(30)));
        assert_eq!(s.graceful_timeout, Duration::from_secs(10));
        assert_eq!(s.min_lifetime, Duration::from_secs(60));
        assert!(error("memory-limit: 512").contains("a number without a unit counts bytes"));
        assert!(error("cpu-time-limit: 1500ms").contains("whole seconds"));
        assert!(error("graceful-timeout: 0").contains("longer than 0s"));
    }

    #[test]
    fn abort_grace_is_a_duration_and_0_turns_it_off() {
        assert_eq!(pool("").1.abort_grace, Some(DEFAULT_ABORT_GRACE));
        assert_eq!(pool("abort-grace: 1500ms").1.abort_grace, Some(Duration::from_millis(1500)));
        assert_eq!(pool("abort-grace: 0").1.abort_grace, None);
        assert_eq!(pool("abort-grace: 0s").1.abort_grace, None);
        let e = error("abort-grace: soon");
        assert!(e.ends_with("p.yaml:5:18: pools.p.abort-grace: invalid duration \"soon\"; write a number with a unit: ms, s, m, h, d (e.g. \"30s\", \"1h30m\", \"250ms\")"), "{e}");
    }

    #[test]
    fn rendered_keys_load_back() {
        for keys in [
            "",
            "mode: dynamic\nmax-processes: 6",
            "mode: ondemand",
            "max-requests: 70\nrestart-interval: 2h\nmemory-limit: 1GiB",
            "abort-grace: 0",
        ] {
            let (n, s) = pool(keys);
            let text: String = render(&s, n).into_iter().map(|(k, v, _)| format!("{k}: {v}\n")).collect();
            let (n2, s2) = pool(&text);
            assert_eq!((n, &s), (n2, &s2), "{text}");
        }
    }
}
