//! systemd socket activation: the sockets a `.socket` unit passes (LISTEN_PID,
//! LISTEN_FDS, LISTEN_FDNAMES; descriptors from 3 on), handed to the listeners whose
//! address is `systemd:NAME`, NAME being the socket's `FileDescriptorName=` (by default
//! the name of the .socket unit, e.g. `fcgibridge.socket`).
//!
//! Matching is explicit, by address, rather than by listener name: a listener then says
//! in its own configuration where its socket comes from, and `fcgibridge check` shows it.
use std::collections::HashMap;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
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
    #[error("systemd:{name}: every socket systemd passed under that name is another listener's; give the .socket unit one more ListenStream= or remove a listener")]
    AllTaken { name: String },
    #[error("systemd:{name}: cannot use the passed descriptor {fd}: {source}")]
    Duplicate { name: String, fd: RawFd, source: std::io::Error },
}

/// Passed descriptors by name, in order, held open for the daemon's life: a listener gets a
/// duplicate (the daemon's registry keeps them for the listeners a reload adds), so that
/// a socket whose listener a reload removes or refuses is still there for a later one.
/// None: not socket-activated.
#[derive(Debug, Default)]
pub(crate) struct Passed(Mutex<Option<HashMap<String, Vec<Slot>>>>);

/// One passed descriptor and the duplicate a listener holds of it, if any.
#[derive(Debug)]
struct Slot {
    fd: RawFd,
    lent: Option<RawFd>,
}

impl Slot {
    /// A listener still holds its duplicate: the descriptor number is open on the same
    /// socket. Once the listener's socket is dropped the number is closed, or reused by
    /// something else (which is not this socket: only this module duplicates it).
    fn in_use(&self) -> bool {
        self.lent.is_some_and(|dup| same_socket(dup, self.fd))
    }
}

fn same_socket(a: RawFd, b: RawFd) -> bool {
    let id = |fd| {
        let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
        // SAFETY: fstat(2) writes `st` or fails (EBADF for a closed number).
        (unsafe { libc::fstat(fd, st.as_mut_ptr()) } == 0).then(|| {
            // SAFETY: fstat succeeded, so it filled `st`.
            let st = unsafe { st.assume_init() };
            (st.st_dev, st.st_ino)
        })
    };
    matches!((id(a), id(b)), (Some(x), Some(y)) if x == y)
}

/// A close-on-exec duplicate of an inherited descriptor, which stays open: the listener's
/// socket closes with the listener, the inherited one is there for a later reload.
pub(crate) fn duplicate(fd: RawFd) -> std::io::Result<OwnedFd> {
    // SAFETY: F_DUPFD_CLOEXEC makes a new descriptor or fails (EBADF for a closed `fd`).
    let dup = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 3) };
    if dup < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `dup` was just made and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(dup) })
}

impl Passed {
    /// Read and remove LISTEN_PID, LISTEN_FDS and LISTEN_FDNAMES, so the workers the bridge
    /// starts do not take the sockets for theirs. Marks the passed descriptors close-on-exec.
    /// Call once, while the process is still single-threaded.
    pub(crate) fn from_env() -> Self {
        Self(Mutex::new(from_env()))
    }

    /// A duplicate of the first descriptor passed under `name` that no listener holds (a
    /// .socket unit with several ListenStream= lines passes several under one name: one
    /// listener each, in order), with the passed number. Its slot is free again once the
    /// listener drops the duplicate.
    pub(crate) fn take(&self, name: &str) -> Result<(RawFd, OwnedFd), SystemdError> {
        take(&mut self.0.lock().unwrap_or_else(|e| e.into_inner()), name)
    }

    /// Names of passed sockets no listener took (worth a warning: a unit and a config that
    /// disagree).
    pub(crate) fn unused(&self) -> Vec<String> {
        let guard = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let mut out: Vec<String> = guard
            .as_ref()
            .map(|m| m.iter().filter(|(_, v)| v.iter().any(|s| !s.in_use())).map(|(k, _)| k.clone()).collect())
            .unwrap_or_default();
        out.sort_unstable();
        out
    }
}

fn from_env() -> Option<HashMap<String, Vec<Slot>>> {
    let pid = std::env::var("LISTEN_PID").ok();
    let count = std::env::var("LISTEN_FDS").ok();
    let names = std::env::var("LISTEN_FDNAMES").ok();
    for var in ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"] {
        std::env::remove_var(var);
    }
    let map = parse(pid.as_deref(), count.as_deref(), names.as_deref(), std::process::id());
    if let Some(map) = &map {
        for slots in map.values() {
            for &Slot { fd, .. } in slots {
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
fn parse(pid: Option<&str>, count: Option<&str>, names: Option<&str>, me: u32) -> Option<HashMap<String, Vec<Slot>>> {
    if pid?.trim().parse::<u32>().ok()? != me {
        return None;
    }
    let n: RawFd = count?.trim().parse().ok()?;
    let names: Vec<&str> = names.map(|s| s.split(':').collect()).unwrap_or_default();
    let mut map: HashMap<String, Vec<Slot>> = HashMap::new();
    for i in 0..n.max(0) {
        // systemd names unnamed sockets "unknown".
        let name = names.get(i as usize).copied().filter(|s| !s.is_empty()).unwrap_or("unknown");
        map.entry(name.to_owned()).or_default().push(Slot { fd: FIRST_FD + i, lent: None });
    }
    Some(map)
}

fn take(passed: &mut Option<HashMap<String, Vec<Slot>>>, name: &str) -> Result<(RawFd, OwnedFd), SystemdError> {
    let map = passed.as_mut().ok_or_else(|| SystemdError::NotActivated { name: name.to_owned() })?;
    if let Some(slots) = map.get_mut(name) {
        let Some(slot) = slots.iter_mut().find(|s| !s.in_use()) else {
            return Err(SystemdError::AllTaken { name: name.to_owned() });
        };
        let dup = duplicate(slot.fd).map_err(|source| SystemdError::Duplicate {
            name: name.to_owned(),
            fd: slot.fd,
            source,
        })?;
        slot.lent = Some(dup.as_raw_fd());
        return Ok((slot.fd, dup));
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

    fn fds(m: &HashMap<String, Vec<Slot>>, name: &str) -> Option<Vec<RawFd>> {
        m.get(name).map(|slots| slots.iter().map(|s| s.fd).collect())
    }

    #[test]
    fn names_map_to_descriptors() {
        let m = parse(Some("42"), Some("3"), Some("web:status:web"), 42).unwrap_or_default();
        assert_eq!(fds(&m, "web"), Some(vec![3, 5]));
        assert_eq!(fds(&m, "status"), Some(vec![4]));
    }

    #[test]
    fn other_pid_or_missing_is_ignored() {
        assert!(parse(Some("41"), Some("1"), None, 42).is_none());
        assert!(parse(None, Some("1"), None, 42).is_none());
        let m = parse(Some("42"), Some("2"), None, 42).unwrap_or_default();
        assert_eq!(fds(&m, "unknown"), Some(vec![3, 4]));
    }

    #[test]
    fn a_passed_socket_is_there_again_once_its_listener_drops_it() {
        let first = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let second = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let slot = |l: &std::net::TcpListener| Slot { fd: l.as_raw_fd(), lent: None };
        let passed = Passed(Mutex::new(Some(HashMap::from([("web".to_owned(), vec![slot(&first), slot(&second)])]))));
        let port = |fd: &OwnedFd| {
            let l = std::net::TcpListener::from(fd.try_clone().expect("dup"));
            l.local_addr().expect("addr").port()
        };
        let (n, a) = passed.take("web").expect("the first socket");
        assert_eq!((n, port(&a)), (first.as_raw_fd(), first.local_addr().unwrap().port()));
        let (_, b) = passed.take("web").expect("the second socket");
        assert_eq!(port(&b), second.local_addr().unwrap().port());
        let e = passed.take("web").err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.starts_with("systemd:web: every socket systemd passed under that name is another listener's"), "{e}");
        assert!(passed.unused().is_empty());
        // The first listener goes (a reload removed it, or refused it): its socket is
        // free again, and still open, while the second stays taken.
        drop(a);
        assert_eq!(passed.unused(), vec!["web".to_owned()]);
        let (n, again) = passed.take("web").expect("the first socket again");
        assert_eq!((n, port(&again)), (first.as_raw_fd(), first.local_addr().unwrap().port()));
        drop(b);
    }
}
