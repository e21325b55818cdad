//! systemd socket activation: the sockets a `.socket` unit passes (LISTEN_PID,
//! LISTEN_FDS, LISTEN_FDNAMES; descriptors from 3 on), handed to the listeners whose
//! address is `systemd:NAME`, NAME being the socket's `FileDescriptorName=` (by default
//! the name of the .socket unit, e.g. `fcgibridge.socket`).
//!
//! Matching is explicit, by address, rather than by listener name: a listener then says
//! in its own configuration where its socket comes from, and `fcgibridge check` shows it.
use std::collections::HashMap;
use std::os::fd::RawFd;
use std::sync::Mutex;

/// The first descriptor systemd passes (SD_LISTEN_FDS_START).
const FIRST_FD: RawFd = 3;

/// Why a `systemd:NAME` listener has no socket.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SystemdError {
    #[error("systemd:{name}: not started by systemd socket activation (no LISTEN_FDS for this process); start the .socket unit, or listen on an address instead")]
    NotActivated { name: String },
    #[error("systemd:{name}: systemd passed no socket of that name (passed: {passed}); set FileDescriptorName={name} in the .socket unit or change the address")]
    NoSuchName { name: String, passed: String },
}

/// Passed descriptors by name, in order; taken out as listeners bind them (the daemon's
/// registry keeps them for the listeners a reload adds). None: not socket-activated.
#[derive(Debug, Default)]
pub(crate) struct Passed(Mutex<Option<HashMap<String, Vec<RawFd>>>>);

impl Passed {
    /// Read and remove LISTEN_PID, LISTEN_FDS and LISTEN_FDNAMES, so the workers the bridge
    /// starts do not take the sockets for theirs. Marks the passed descriptors close-on-exec.
    /// Call once, while the process is still single-threaded.
    pub(crate) fn from_env() -> Self {
        Self(Mutex::new(from_env()))
    }

    /// Take the next descriptor passed under `name` (a .socket unit with several
    /// ListenStream= lines passes several under one name: one listener each, in order).
    pub(crate) fn take(&self, name: &str) -> Result<RawFd, SystemdError> {
        take(&mut self.0.lock().unwrap_or_else(|e| e.into_inner()), name)
    }

    /// Names of passed sockets no listener took (worth a warning: a unit and a config that
    /// disagree).
    pub(crate) fn unused(&self) -> Vec<String> {
        let guard = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let mut out: Vec<String> = guard
            .as_ref()
            .map(|m| m.iter().filter(|(_, v)| !v.is_empty()).map(|(k, _)| k.clone()).collect())
            .unwrap_or_default();
        out.sort_unstable();
        out
    }
}

fn from_env() -> Option<HashMap<String, Vec<RawFd>>> {
    let pid = std::env::var("LISTEN_PID").ok();
    let count = std::env::var("LISTEN_FDS").ok();
    let names = std::env::var("LISTEN_FDNAMES").ok();
    for var in ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"] {
        std::env::remove_var(var);
    }
    let map = parse(pid.as_deref(), count.as_deref(), names.as_deref(), std::process::id());
    if let Some(map) = &map {
        for fds in map.values() {
            for &fd in fds {
                // SAFETY: F_SETFD on a descriptor systemd passed us; an invalid one just fails.
                unsafe {
                    libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC);
                }
            }
        }
    }
    map
}

/// name → descriptors, or None when the variables are absent or meant for another process.
fn parse(pid: Option<&str>, count: Option<&str>, names: Option<&str>, me: u32) -> Option<HashMap<String, Vec<RawFd>>> {
    if pid?.trim().parse::<u32>().ok()? != me {
        return None;
    }
    let n: RawFd = count?.trim().parse().ok()?;
    let names: Vec<&str> = names.map(|s| s.split(':').collect()).unwrap_or_default();
    let mut map: HashMap<String, Vec<RawFd>> = HashMap::new();
    for i in 0..n.max(0) {
        // systemd names unnamed sockets "unknown".
        let name = names.get(i as usize).copied().filter(|s| !s.is_empty()).unwrap_or("unknown");
        map.entry(name.to_owned()).or_default().push(FIRST_FD + i);
    }
    Some(map)
}

fn take(passed: &mut Option<HashMap<String, Vec<RawFd>>>, name: &str) -> Result<RawFd, SystemdError> {
    let map = passed.as_mut().ok_or_else(|| SystemdError::NotActivated { name: name.to_owned() })?;
    if let Some(fds) = map.get_mut(name) {
        if !fds.is_empty() {
            return Ok(fds.remove(0));
        }
    }
    let mut passed: Vec<&str> = map.keys().map(String::as_str).collect();
    passed.sort_unstable();
    Err(SystemdError::NoSuchName {
        name: name.to_owned(),
        passed: if passed.is_empty() { "none".to_owned() } else { passed.join(", ") },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_map_to_descriptors() {
        let m = parse(Some("42"), Some("3"), Some("web:status:web"), 42).unwrap_or_default();
        assert_eq!(m.get("web"), Some(&vec![3, 5]));
        assert_eq!(m.get("status"), Some(&vec![4]));
    }

    #[test]
    fn other_pid_or_missing_is_ignored() {
        assert!(parse(Some("41"), Some("1"), None, 42).is_none());
        assert!(parse(None, Some("1"), None, 42).is_none());
        let m = parse(Some("42"), Some("2"), None, 42).unwrap_or_default();
        assert_eq!(m.get("unknown"), Some(&vec![3, 4]));
    }
}
