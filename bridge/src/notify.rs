//! The systemd notification protocol (`Type=notify`), spoken directly: one datagram per
//! state change to the socket named by `NOTIFY_SOCKET`, no libsystemd.
//!
//! READY=1 once every listener is bound and every pool has a ready worker (or is past its
//! own startup-timeout; the pools as a reload before READY=1 left them); RELOADING=1
//! while a later reload runs; STOPPING=1 when a stop begins; WATCHDOG=1 every half
//! `WATCHDOG_USEC`. Without `NOTIFY_SOCKET` (not started by systemd) every call is a no-op.
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;

/// Why the notification socket cannot be used.
#[derive(Debug, thiserror::Error)]
pub(crate) enum NotifyError {
    #[error(
        "NOTIFY_SOCKET {0:?} is neither an absolute path nor an abstract name (@name); check the unit's environment"
    )]
    BadAddress(String),
    #[error("cannot create a datagram socket for NOTIFY_SOCKET: {0}")]
    Socket(std::io::Error),
}

/// Where systemd listens for our state changes, taken from the environment at start-up.
pub(crate) struct Notifier {
    target: Option<(UnixDatagram, SocketAddr)>,
    watchdog: Option<Duration>,
}

impl Notifier {
    /// Read NOTIFY_SOCKET, WATCHDOG_USEC and WATCHDOG_PID, then remove them from the
    /// environment so the workers the bridge starts do not talk to systemd in its name.
    /// Call while the process is still single-threaded.
    pub(crate) fn from_env() -> Result<Self, NotifyError> {
        let socket = std::env::var("NOTIFY_SOCKET").ok().filter(|s| !s.is_empty());
        let watchdog_usec = std::env::var("WATCHDOG_USEC").ok();
        let watchdog_pid = std::env::var("WATCHDOG_PID").ok();
        for var in ["NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"] {
            std::env::remove_var(var);
        }
        // WATCHDOG_PID names the process systemd expects pings from; another pid means
        // the variables were inherited from a parent and are not ours.
        let ours = watchdog_pid.is_none_or(|p| p.trim().parse::<u32>().ok() == Some(std::process::id()));
        let watchdog = watchdog_usec
            .and_then(|u| u.trim().parse::<u64>().ok())
            .filter(|&u| u > 0 && ours)
            .map(|u| Duration::from_micros(u / 2));
        let target = match socket {
            None => None,
            Some(name) => {
                let addr = parse_address(&name)?;
                let sock = UnixDatagram::unbound().map_err(NotifyError::Socket)?;
                Some((sock, addr))
            }
        };
        let watchdog = if target.is_some() { watchdog } else { None };
        Ok(Self { target, watchdog })
    }

    /// A notifier that sends nothing (for callers that run without systemd).
    #[allow(dead_code)]
    pub(crate) fn disabled() -> Self {
        Self { target: None, watchdog: None }
    }

    /// How often to send WATCHDOG=1 (half of WATCHDOG_USEC), if systemd asked for it.
    pub(crate) fn watchdog_interval(&self) -> Option<Duration> {
        self.watchdog
    }

    /// Send one notification, e.g. "READY=1\nSTATUS=running". A failure is logged, never
    /// fatal: systemd may be restarting, and the service must keep serving.
    pub(crate) fn send(&self, state: &str) {
        if let Some((sock, addr)) = &self.target {
            if let Err(e) = sock.send_to_addr(state.as_bytes(), addr) {
                tracing::warn!("cannot notify systemd ({}): {e}", state.lines().next().unwrap_or(""));
            }
        }
    }

    /// READY=1 with a status line `systemctl status` shows.
    pub(crate) fn ready(&self, status: &str) {
        self.send(&format!("READY=1\nSTATUS={status}\nMAINPID={}", std::process::id()));
    }

    /// RELOADING=1 with the monotonic timestamp systemd ≥ 253 wants for Type=notify-reload.
    pub(crate) fn reloading(&self) {
        self.send(&format!("RELOADING=1\nMONOTONIC_USEC={}", monotonic_usec()));
    }

    /// STOPPING=1.
    pub(crate) fn stopping(&self) {
        self.send("STOPPING=1\nSTATUS=stopping");
    }
}

/// `/run/systemd/notify` or `@abstract-name`.
fn parse_address(name: &str) -> Result<SocketAddr, NotifyError> {
    if let Some(abstract_name) = name.strip_prefix('@') {
        use std::os::linux::net::SocketAddrExt;
        return SocketAddr::from_abstract_name(abstract_name.as_bytes())
            .map_err(|_| NotifyError::BadAddress(name.to_owned()));
    }
    if !name.starts_with('/') {
        return Err(NotifyError::BadAddress(name.to_owned()));
    }
    SocketAddr::from_pathname(name).map_err(|_| NotifyError::BadAddress(name.to_owned()))
}

fn monotonic_usec() -> u64 {
    let Ok(ts) = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC) else { return 0 };
    (ts.tv_sec() as u64) * 1_000_000 + (ts.tv_nsec() as u64) / 1_000
}

/// Send WATCHDOG=1 every `interval` until the runtime stops.
pub(crate) fn spawn_watchdog(notifier: std::sync::Arc<Notifier>) {
    if let Some(interval) = notifier.watchdog_interval() {
        tracing::info!("systemd watchdog: pinging every {interval:?}");
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            loop {
                tick.tick().await;
                notifier.send("WATCHDOG=1");
            }
        });
    }
}

/// READY=1, and the reloads around it. Until READY=1 went out, a reload changes the pools it
/// waits for (the start-up is not over: no RELOADING=1, and no READY=1 for pools that are
/// not ready yet); after, a reload is announced by RELOADING=1 and READY=1 again.
pub(crate) struct Readiness {
    notifier: std::sync::Arc<Notifier>,
    phase: std::sync::Mutex<Phase>,
}

enum Phase {
    /// READY=1 waits for these pools; `reloading`: a reload is replacing them.
    Starting {
        pools: Vec<Waited>,
        reloading: bool,
    },
    Ready,
}

/// A pool READY=1 waits for, and since when: the start, or the reload that added or
/// reconfigured it (its startup-timeout counts from then).
struct Waited {
    pool: std::sync::Arc<crate::supervise::PoolRuntime>,
    since: tokio::time::Instant,
}

impl Readiness {
    /// Start waiting for `pools` (listeners are bound before this runs).
    pub(crate) fn start(
        notifier: std::sync::Arc<Notifier>,
        pools: Vec<std::sync::Arc<crate::supervise::PoolRuntime>>,
    ) -> std::sync::Arc<Self> {
        let now = tokio::time::Instant::now();
        let pools = pools.into_iter().map(|pool| Waited { pool, since: now }).collect();
        let this = std::sync::Arc::new(Self {
            notifier,
            phase: std::sync::Mutex::new(Phase::Starting { pools, reloading: false }),
        });
        tokio::spawn(ready_when_pools_ready(this.clone()));
        this
    }

    fn phase(&self) -> std::sync::MutexGuard<'_, Phase> {
        self.phase.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A reload begins: RELOADING=1 once READY=1 went out; before, READY=1 waits for it.
    pub(crate) fn reload_begins(&self) {
        match &mut *self.phase() {
            Phase::Ready => self.notifier.reloading(),
            Phase::Starting { reloading, .. } => *reloading = true,
        }
    }

    /// A reload ended (applied or refused) and `pools` run now: READY=1 again once READY=1
    /// went out; before, READY=1 waits for these pools — not for a removed one, and for
    /// an added or reconfigured one its own startup-timeout from now.
    pub(crate) fn reload_ends(&self, pools: &[std::sync::Arc<crate::supervise::PoolRuntime>]) {
        match &mut *self.phase() {
            Phase::Ready => self.notifier.ready(&format!("serving {} pools", pools.len())),
            Phase::Starting { pools: waited, reloading } => {
                let now = tokio::time::Instant::now();
                let since = |p: &std::sync::Arc<_>| {
                    waited.iter().find(|w| std::sync::Arc::ptr_eq(&w.pool, p)).map_or(now, |w| w.since)
                };
                *waited = pools.iter().map(|p| Waited { pool: p.clone(), since: since(p) }).collect();
                *reloading = false;
            }
        }
    }
}

/// READY=1 once every pool has at least one worker connection free. A pool that cannot
/// start keeps the service "activating" until its own startup-timeout (+1 s) has passed,
/// which is what an operator wants to see; then READY=1 is sent anyway, with a status
/// naming the pools not ready, so the pools that work are served. A healthy pool's longer
/// startup-timeout does not delay it. The pools are those of the moment: a reload before
/// READY=1 changes them ([`Readiness::reload_ends`]).
async fn ready_when_pools_ready(readiness: std::sync::Arc<Readiness>) {
    loop {
        {
            let mut phase = readiness.phase();
            let Phase::Starting { pools, reloading } = &*phase else { return };
            let now = tokio::time::Instant::now();
            let states: Vec<_> = pools
                .iter()
                .map(|w| PoolState {
                    name: &w.pool.name,
                    serving: w.pool.serving(),
                    timeout: w.pool.config.startup_timeout,
                    elapsed: now.duration_since(w.since),
                })
                .collect();
            let settled = if *reloading { None } else { settled(&states) };
            let count = pools.len();
            match settled {
                None => {}
                Some(waiting) if waiting.is_empty() => {
                    tracing::info!("all pools ready");
                    readiness.notifier.ready(&format!("serving {count} pools"));
                    *phase = Phase::Ready;
                    return;
                }
                Some(waiting) => {
                    tracing::warn!("pools not ready after their startup-timeout: {}", waiting.join(", "));
                    readiness.notifier.ready(&format!("serving; not ready: {}", waiting.join(", ")));
                    *phase = Phase::Ready;
                    return;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A pool as READY=1 looks at it: `elapsed` since it started (or a reload before READY=1
/// added or reconfigured it).
struct PoolState<'a> {
    name: &'a str,
    serving: bool,
    timeout: Duration,
    elapsed: Duration,
}

/// None while a pool that is not serving is still within its own startup-timeout (+1 s,
/// for its first worker's start); else the pools not serving (none: all ready).
fn settled(pools: &[PoolState<'_>]) -> Option<Vec<String>> {
    let waiting: Vec<&PoolState<'_>> = pools.iter().filter(|p| !p.serving).collect();
    if waiting.iter().any(|p| p.elapsed < p.timeout + Duration::from_secs(1)) {
        return None;
    }
    Some(waiting.iter().map(|p| p.name.to_owned()).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_waits_for_each_pool_only_its_own_startup_timeout() {
        let at = Duration::from_secs;
        let pools = |p: &[(&'static str, bool, u64)], elapsed: Duration| -> Vec<PoolState<'static>> {
            p.iter().map(|&(name, serving, secs)| PoolState { name, serving, timeout: at(secs), elapsed }).collect()
        };
        // A broken pool (3s) beside a healthy one (60s): READY after ~4 s, not ~61 s.
        let two = [("bad", false, 3), ("good", true, 60)];
        assert_eq!(settled(&pools(&two, at(2))), None);
        assert_eq!(settled(&pools(&two, at(4))), Some(vec!["bad".to_owned()]));
        // A slow pool still within its own startup-timeout is waited for.
        let slow = [("bad", false, 3), ("slow", false, 60)];
        assert_eq!(settled(&pools(&slow, at(10))), None);
        assert_eq!(settled(&pools(&slow, at(61))), Some(vec!["bad".to_owned(), "slow".to_owned()]));
        // Every pool ready: at once.
        assert_eq!(settled(&pools(&[("a", true, 60), ("b", true, 3)], at(0))), Some(vec![]));
        // A pool a reload added late is waited for from then on.
        let mut later = pools(&[("bad", false, 3)], at(30));
        later.push(PoolState { name: "late", serving: false, timeout: at(3), elapsed: at(1) });
        assert_eq!(settled(&later), None);
    }

    #[test]
    fn addresses() {
        assert!(parse_address("/run/systemd/notify").is_ok());
        assert!(parse_address("@sd-notify-test").is_ok());
        assert!(matches!(parse_address("relative/path"), Err(NotifyError::BadAddress(_))));
    }

    #[test]
    fn datagrams_arrive() {
        let dir = crate::scratch::scratch_dir("notify");
        let path = dir.join("notify.sock");
        let server = UnixDatagram::bind(&path).ok();
        let n = Notifier {
            target: UnixDatagram::unbound().ok().zip(SocketAddr::from_pathname(&path).ok()),
            watchdog: None,
        };
        n.stopping();
        let mut buf = [0u8; 256];
        let got = server.as_ref().and_then(|s| s.recv(&mut buf).ok()).unwrap_or(0);
        assert!(buf[..got].starts_with(b"STOPPING=1"), "{:?}", String::from_utf8_lossy(&buf[..got]));
    }
}
