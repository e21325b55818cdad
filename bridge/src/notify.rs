//! The systemd notification protocol (`Type=notify`), spoken directly: one datagram per
//! state change to the socket named by `NOTIFY_SOCKET`, no libsystemd.
//!
//! READY=1 once every listener is bound and every pool has a ready worker; RELOADING=1
//! while a reload runs; STOPPING=1 when a stop begins; WATCHDOG=1 every half
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

/// READY=1 once every pool has at least one worker connection free (listeners are bound
/// before this runs). A pool that cannot start keeps the service "activating" until
/// systemd's TimeoutStartSec=, which is what an operator wants to see; after the longest
/// startup-timeout READY=1 is sent anyway, with a status naming the pools not ready,
/// so the pools that work are served.
pub(crate) async fn ready_when_pools_ready(
    notifier: std::sync::Arc<Notifier>,
    pools: Vec<std::sync::Arc<crate::supervise::PoolRuntime>>,
) {
    let longest = pools.iter().map(|p| p.config.startup_timeout).max().unwrap_or_default();
    let deadline = tokio::time::Instant::now() + longest + Duration::from_secs(1);
    let not_ready = |pools: &[std::sync::Arc<crate::supervise::PoolRuntime>]| -> Vec<String> {
        pools.iter().filter(|p| !p.serving()).map(|p| p.name.to_string()).collect()
    };
    loop {
        let waiting = not_ready(&pools);
        if waiting.is_empty() {
            tracing::info!("all pools ready");
            notifier.ready(&format!("serving {} pools", pools.len()));
            return;
        }
        if tokio::time::Instant::now() >= deadline {
            tracing::warn!("pools not ready after their startup-timeout: {}", waiting.join(", "));
            notifier.ready(&format!("serving; not ready: {}", waiting.join(", ")));
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        assert!(parse_address("/run/systemd/notify").is_ok());
        assert!(parse_address("@sd-notify-test").is_ok());
        assert!(matches!(parse_address("relative/path"), Err(NotifyError::BadAddress(_))));
    }

    #[test]
    fn datagrams_arrive() {
        let path = std::env::temp_dir().join(format!("fcgibridge-notify-{}.sock", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let server = UnixDatagram::bind(&path).ok();
        let n = Notifier {
            target: UnixDatagram::unbound().ok().zip(SocketAddr::from_pathname(&path).ok()),
            watchdog: None,
        };
        n.stopping();
        let mut buf = [0u8; 256];
        let got = server.as_ref().and_then(|s| s.recv(&mut buf).ok()).unwrap_or(0);
        assert!(buf[..got].starts_with(b"STOPPING=1"), "{:?}", String::from_utf8_lossy(&buf[..got]));
        let _ = std::fs::remove_file(&path);
    }
}
