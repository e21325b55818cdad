//! Unix socket files that nobody finds with other permissions than their own: a listener's
//! `socket-mode`, `socket-owner`, `socket-group`, and the control and status sockets' 0600.
//!
//! A socket bound first and chmod-ed after can be connected to in between, and connect(2)
//! checks the file's permissions first: a web server that would be let in a moment later
//! gets `Permission denied`, as if `socket-group` were wrong. So the file is made right:
//! bound by a thread of its own whose umask gives the mode and whose fsgid the group
//! (unshare(CLONE_FS) and setfsgid change that thread only), so that it keeps its own name
//! (`ss -x`, /proc/net/unix). When that cannot be done — another owner, a group this
//! bridge may not take, a seccomp filter refusing unshare (containers) — it is bound under
//! a temporary name beside the path, finished there, and linked into place.
use nix::unistd::{Gid, Uid};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};

/// What a socket file is to be (None: as bind(2) makes it).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct SocketPerms {
    pub mode: Option<u32>,
    pub owner: Option<Uid>,
    pub group: Option<Gid>,
}

/// The step that failed and its error, for the caller's message.
pub(crate) type Failed = (&'static str, std::io::Error);

/// sun_path holds this many bytes and a NUL.
const MAX_PATH: usize = 107;

/// A listening unix socket at `path` whose file is never seen with other permissions than
/// `perms` (but for a path too long for a temporary name beside it, in a case the thread
/// cannot make right: bound, then finished in place). A file that appears at `path`
/// meanwhile is kept (EADDRINUSE, or EEXIST for the link).
pub(crate) fn bind(path: &Path, backlog: u32, perms: SocketPerms) -> Result<UnixListener, Failed> {
    if perms == SocketPerms::default() {
        return bind_unix(path, backlog).map_err(|e| ("bind", e));
    }
    if let Some(l) = bind_made_right(path, backlog, perms)? {
        // A setgid directory gives its own group instead: put right as before.
        if !has(path, perms) {
            set(path, perms)?;
        }
        return Ok(l);
    }
    match temporary_name(path) {
        Some(temporary) => bind_linked_into_place(path, &temporary, backlog, perms),
        None => {
            let l = bind_unix(path, backlog).map_err(|e| ("bind", e))?;
            set(path, perms)?;
            Ok(l)
        }
    }
}

/// Bind in a thread of its own whose umask and fsgid make the file as `perms` says; None
/// when that thread cannot be given them.
fn bind_made_right(path: &Path, backlog: u32, perms: SocketPerms) -> Result<Option<UnixListener>, Failed> {
    // Only the bridge's own user can own a file it makes, and a umask gives only 0o777.
    if perms.owner.is_some_and(|u| u != Uid::effective()) || perms.mode.is_some_and(|m| m & !0o777 != 0) {
        return Ok(None);
    }
    let made = std::thread::scope(|s| s.spawn(|| bind_in_this_thread(path, backlog, perms)).join());
    made.unwrap_or(Ok(None))
}

/// The thread of [`bind_made_right`]: it ends after this, with its filesystem attributes.
fn bind_in_this_thread(path: &Path, backlog: u32, perms: SocketPerms) -> Result<Option<UnixListener>, Failed> {
    // SAFETY: unshare(2) gives this thread a copy of the process's cwd, root and umask,
    // which only it then uses and changes.
    if unsafe { libc::unshare(libc::CLONE_FS) } != 0 {
        return Ok(None);
    }
    if let Some(mode) = perms.mode {
        // SAFETY: umask(2) of this thread's own (unshared) filesystem attributes.
        unsafe { libc::umask(0o777 & !mode) };
    }
    if let Some(gid) = perms.group.filter(|g| *g != Gid::effective()) {
        // The raw call: it changes the calling thread's fsgid only (glibc's setfsgid does
        // too, but fs_creds.rs explains why the raw calls are used). A gid this bridge may
        // not take leaves the fsgid as it was.
        // SAFETY: plain system calls on integers; an invalid id (-1) only reads the fsgid.
        let now = unsafe {
            libc::syscall(libc::SYS_setfsgid, gid.as_raw());
            libc::syscall(libc::SYS_setfsgid, u32::MAX)
        };
        if now != libc::c_long::from(gid.as_raw()) {
            return Ok(None);
        }
    }
    bind_unix(path, backlog).map(Some).map_err(|e| ("bind", e))
}

/// `.NAME~PID` beside `path`, if that fits in sun_path.
fn temporary_name(path: &Path) -> Option<PathBuf> {
    use std::os::unix::ffi::OsStrExt;
    let mut hidden = std::ffi::OsString::from(".");
    hidden.push(path.file_name()?);
    hidden.push(format!("~{}", std::process::id()));
    Some(path.with_file_name(hidden)).filter(|t| t.as_os_str().as_bytes().len() <= MAX_PATH)
}

/// Bound as `temporary`, given `perms` there, then linked to `path`: whoever finds `path`
/// finds it finished. The socket keeps the temporary name as its address (`ss -x`).
fn bind_linked_into_place(
    path: &Path,
    temporary: &Path,
    backlog: u32,
    perms: SocketPerms,
) -> Result<UnixListener, Failed> {
    use std::os::unix::fs::FileTypeExt;
    // Only a process with this pid could have left it, and that one is dead.
    if std::fs::symlink_metadata(temporary).is_ok_and(|m| m.file_type().is_socket()) {
        let _ = std::fs::remove_file(temporary);
    }
    let l = bind_unix(temporary, backlog).map_err(|e| ("bind", e))?;
    // The file finished and linked is the one opened: another name put at `temporary`
    // meanwhile (a symlink) is neither changed nor linked.
    let placed = finish(temporary, perms).and_then(|file| link_into_place(&file, path));
    let _ = std::fs::remove_file(temporary);
    placed.map(|()| l)
}

/// A second name, `path`, for the very file `file` is open on.
fn link_into_place(file: &std::os::fd::OwnedFd, path: &Path) -> Result<(), Failed> {
    use std::os::unix::ffi::OsStrExt;
    let c = |p: &Path| std::ffi::CString::new(p.as_os_str().as_bytes()).map_err(|e| ("link", std::io::Error::other(e)));
    let (from, to) = (c(&fd_path(file))?, c(path)?);
    // SAFETY: NUL-terminated paths that outlive the call; AT_SYMLINK_FOLLOW makes the
    // /proc/self/fd link give its file, which linkat(2) documents for this use.
    let linked =
        unsafe { libc::linkat(libc::AT_FDCWD, from.as_ptr(), libc::AT_FDCWD, to.as_ptr(), libc::AT_SYMLINK_FOLLOW) };
    if linked != 0 {
        return Err(("link", std::io::Error::last_os_error()));
    }
    Ok(())
}

/// `/proc/self/fd/N`: the file `file` is open on, whatever name it has now.
fn fd_path(file: &std::os::fd::OwnedFd) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd()))
}

/// The socket file at `at` (not a symlink there) opened without being read, and given
/// `perms` through that descriptor (a file nobody finds yet: the order does not matter).
fn finish(at: &Path, perms: SocketPerms) -> Result<std::os::fd::OwnedFd, Failed> {
    let (file, _) = open_socket(at)?;
    if perms.owner.is_some() || perms.group.is_some() {
        chown(&file, perms.owner.map(Uid::as_raw), perms.group.map(Gid::as_raw))?;
    }
    if let Some(mode) = perms.mode {
        chmod(&file, mode)?;
    }
    Ok(file)
}

/// The socket file at `at`, not a symlink there, opened without being read (O_PATH), and
/// what it is now.
fn open_socket(at: &Path) -> Result<(std::os::fd::OwnedFd, Attrs), Failed> {
    use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_NOFOLLOW)
        .open(at)
        .map_err(|e| ("open", e))?;
    let meta = file.metadata().map_err(|e| ("stat", e))?;
    if !meta.file_type().is_socket() {
        return Err(("open", std::io::Error::other("not a socket (replaced by another file?)")));
    }
    let now = Attrs { mode: meta.permissions().mode() & 0o7777, uid: meta.uid(), gid: meta.gid() };
    Ok((file.into(), now))
}

/// fchownat(2) on the descriptor itself; None: left as it is.
fn chown(file: &std::os::fd::OwnedFd, uid: Option<u32>, gid: Option<u32>) -> Result<(), Failed> {
    let id = |v: Option<u32>| v.unwrap_or(u32::MAX); // -1: left as it is
                                                     // SAFETY: fchownat(2) with AT_EMPTY_PATH acts on the descriptor itself.
    let changed = unsafe { libc::fchownat(file.as_raw_fd(), c"".as_ptr(), id(uid), id(gid), libc::AT_EMPTY_PATH) };
    if changed != 0 {
        return Err(("chown", std::io::Error::last_os_error()));
    }
    Ok(())
}

/// chmod(2) of the file `file` is open on (an O_PATH descriptor has no fchmod).
fn chmod(file: &std::os::fd::OwnedFd, mode: u32) -> Result<(), Failed> {
    std::fs::set_permissions(fd_path(file), std::fs::Permissions::from_mode(mode)).map_err(|e| ("chmod", e))
}

/// A file's mode bits and owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Attrs {
    mode: u32,
    uid: u32,
    gid: u32,
}

/// The states a kept socket's file goes through from `now` to `perms` (a reload), one
/// chmod or chown each. The new owner with the old mode, or the new mode with the old
/// owner, could let in for a moment someone whom neither setting lets in: so the mode goes
/// first to what both modes allow (with the old owner, no more than the old setting), then
/// the owner changes (no more than the new setting), then the mode to the new one. A peer
/// that reaches the socket through the owner or group that changes may be refused meanwhile.
fn steps(now: Attrs, perms: SocketPerms) -> Vec<Attrs> {
    let end = Attrs {
        mode: perms.mode.unwrap_or(now.mode),
        uid: perms.owner.map_or(now.uid, Uid::as_raw),
        gid: perms.group.map_or(now.gid, Gid::as_raw),
    };
    let mut steps = Vec::new();
    if (end.uid, end.gid) != (now.uid, now.gid) {
        let both = Attrs { mode: now.mode & end.mode, ..now };
        if both != now {
            steps.push(both);
        }
        steps.push(Attrs { mode: both.mode, ..end });
    }
    if steps.last().copied().unwrap_or(now) != end {
        steps.push(end);
    }
    steps
}

/// Whether the file at `path` is as `perms` says.
fn has(path: &Path, perms: SocketPerms) -> bool {
    std::fs::symlink_metadata(path).is_ok_and(|m| {
        perms.mode.is_none_or(|mode| m.permissions().mode() & 0o7777 == mode)
            && perms.owner.is_none_or(|u| m.uid() == u.as_raw())
            && perms.group.is_none_or(|g| m.gid() == g.as_raw())
    })
}

/// Give the socket file at `at` `perms` (a reload's new values on a kept socket; a file
/// bound in place), never a symlink's target, through [`steps`]: never more open on the
/// way than both what it was and what it becomes.
/// A step that fails puts the mode it began with back: a chown refused after the mode
/// was narrowed would otherwise leave a file that neither setting describes (the web
/// server locked out until the next reload).
pub(crate) fn set(at: &Path, perms: SocketPerms) -> Result<(), Failed> {
    let (file, first) = open_socket(at)?;
    let mut was = first;
    for step in steps(first, perms) {
        let done = if (step.uid, step.gid) != (was.uid, was.gid) {
            let changed = |new: u32, old: u32| (new != old).then_some(new);
            chown(&file, changed(step.uid, was.uid), changed(step.gid, was.gid))
        } else {
            chmod(&file, step.mode)
        };
        if let Err(e) = done {
            if was.mode != first.mode && (was.uid, was.gid) == (first.uid, first.gid) {
                let _ = chmod(&file, first.mode);
            }
            return Err(e);
        }
        was = step;
    }
    Ok(())
}

/// A listening unix socket, non-blocking and close-on-exec, at `path` as it is.
pub(crate) fn bind_unix(path: &Path, backlog: u32) -> std::io::Result<UnixListener> {
    use nix::sys::socket::{bind, socket, AddressFamily, SockFlag, SockType, UnixAddr};
    let fd = socket(AddressFamily::Unix, SockType::Stream, SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK, None)?;
    let addr = UnixAddr::new(path)?;
    bind(fd.as_raw_fd(), &addr)?;
    // libc's, not nix's Backlog (capped at 4096): the kernel caps it at net.core.somaxconn,
    // as for a TCP listener.
    let n = libc::c_int::try_from(backlog).unwrap_or(libc::c_int::MAX);
    // SAFETY: listen(2) on the socket just made, which `fd` owns.
    if unsafe { libc::listen(fd.as_raw_fd(), n) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(UnixListener::from(fd))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::{FromRawFd, OwnedFd};

    /// A fresh directory of this test's own.
    fn dir(name: &str) -> crate::scratch::ScratchDir {
        crate::scratch::scratch_dir(name)
    }

    /// Watches `dir` for files made, changed or moved in.
    fn watch(dir: &Path) -> OwnedFd {
        use std::os::unix::ffi::OsStrExt;
        // SAFETY: plain system calls; the descriptor is owned at once.
        let fd = unsafe { OwnedFd::from_raw_fd(libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC)) };
        let c_dir = std::ffi::CString::new(dir.as_os_str().as_bytes()).unwrap();
        let mask = libc::IN_CREATE | libc::IN_ATTRIB | libc::IN_MOVED_TO;
        // SAFETY: a NUL-terminated path that outlives the call.
        assert!(unsafe { libc::inotify_add_watch(fd.as_raw_fd(), c_dir.as_ptr(), mask) } >= 0);
        fd
    }

    /// The masks of the events on `name` the watch saw.
    fn events_on(fd: &OwnedFd, name: &str) -> Vec<u32> {
        let mut buf = vec![0u8; 64 * 1024];
        // SAFETY: read(2) into a buffer of that length, on a descriptor the caller owns.
        let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        let (mut events, mut at) = (Vec::new(), 0);
        // struct inotify_event: wd, mask, cookie, len (4 bytes each), then len bytes of name.
        while at + 16 <= usize::try_from(n).unwrap_or(0) {
            let word = |i: usize| u32::from_ne_bytes(buf[at + i..at + i + 4].try_into().unwrap());
            let (mask, len) = (word(4), word(12) as usize);
            if String::from_utf8_lossy(&buf[at + 16..at + 16 + len]).trim_end_matches('\0') == name {
                events.push(mask);
            }
            at += 16 + len;
        }
        events
    }

    fn mode_of(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
    }

    #[tokio::test]
    async fn a_listener_s_socket_is_made_with_its_mode_and_group_and_keeps_its_name() {
        use crate::listen::{systemd::Passed, Bound};
        let d = dir("made");
        let path = d.join("app.sock");
        // A stale socket file there is replaced, as before.
        drop(UnixListener::bind(&path).unwrap());
        let mut cfg = crate::config::Listener::for_tests("t", 0);
        cfg.address = crate::config::ListenAddress::Unix(path.clone());
        // 0o666 passes any umask but 0; as root, a group that is not the bridge's own.
        cfg.socket_mode = Some(0o666);
        let group = if Uid::effective().is_root() { Gid::from_raw(65534) } else { Gid::effective() };
        cfg.socket_group = Some(group.as_raw().to_string());
        let events = watch(&d);
        let bound = crate::listen::bind(&cfg, &Passed::from_env());
        let Ok(Bound::Unix { listener, .. }) = bound else { panic!("{:?}", bound.err().map(|e| e.to_string())) };
        // Made once and never changed after: nobody saw it with the umask's mode or
        // the bridge's group.
        assert_eq!(events_on(&events, "app.sock"), vec![libc::IN_CREATE], "IN_ATTRIB = {:#x}", libc::IN_ATTRIB);
        assert_eq!(mode_of(&path), 0o666);
        assert_eq!(std::fs::metadata(&path).unwrap().gid(), group.as_raw());
        // SAFETY: unshare(2) in a thread that ends right after.
        let unshared = std::thread::spawn(|| unsafe { libc::unshare(libc::CLONE_FS) } == 0).join().unwrap();
        if unshared {
            // (Where a seccomp filter refuses unshare, it is linked into place instead.)
            let addr = listener.local_addr().unwrap();
            assert_eq!(addr.as_pathname(), Some(path.as_path()), "its address (ss -x) is its path");
        }
        assert!(std::os::unix::net::UnixStream::connect(&path).is_ok());
    }

    #[test]
    fn another_owner_is_given_before_the_file_is_linked_into_place() {
        if !Uid::effective().is_root() {
            return; // chown to another user needs root
        }
        let d = dir("linked");
        let path = d.join("app.sock");
        let perms = SocketPerms { mode: Some(0o600), owner: Some(Uid::from_raw(65534)), group: None };
        let events = watch(&d);
        bind(&path, 16, perms).unwrap();
        assert_eq!(events_on(&events, "app.sock"), vec![libc::IN_CREATE]);
        assert!(has(&path, perms), "{:o}", mode_of(&path));
        let left: Vec<_> = std::fs::read_dir(&d).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(left, vec![std::ffi::OsString::from("app.sock")], "the temporary name is gone");
        // No room for a temporary name beside a path of sun_path's length: bound in place.
        let long = d.join("s".repeat(MAX_PATH - d.as_os_str().len() - 1));
        bind(&long, 16, perms).unwrap();
        assert!(has(&long, perms));
    }

    #[test]
    fn a_symlink_s_target_is_never_changed() {
        let d = dir("symlink");
        let target = d.join("secret");
        std::fs::write(&target, "x").unwrap();
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o600)).unwrap();
        let link = d.join("app.sock");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let perms = SocketPerms { mode: Some(0o666), ..Default::default() };
        assert!(set(&link, perms).is_err());
        assert_eq!(mode_of(&target), 0o600);
    }

    /// Whether a peer (its uid; whether it is in `groups`) may connect to a socket file of
    /// `a` (connect(2) needs write permission; only the first class that matches counts).
    fn lets_in(a: Attrs, uid: u32, groups: &[u32]) -> bool {
        let class = if uid == a.uid {
            0o200
        } else if groups.contains(&a.gid) {
            0o020
        } else {
            0o002
        };
        a.mode & class != 0
    }

    /// Every state `set` takes the file through, from `now` to `perms`: nobody is let in
    /// whom neither `now` nor the end lets in (any peer: either owner, in any of the groups).
    fn assert_never_more_open(now: Attrs, perms: SocketPerms) {
        let states = steps(now, perms);
        let end = *states.last().unwrap_or(&now);
        let (uids, gids) = ([now.uid, end.uid, 4242], [now.gid, end.gid]);
        let group_sets: [&[u32]; 4] = [&[], &gids[..1], &gids[1..], &gids];
        for state in &states {
            for uid in uids {
                for groups in group_sets {
                    let wrong =
                        lets_in(*state, uid, groups) && !lets_in(now, uid, groups) && !lets_in(end, uid, groups);
                    let show = |a: Attrs| format!("{:o} {}:{}", a.mode, a.uid, a.gid);
                    let (from, to, via) = (show(now), show(end), show(*state));
                    assert!(
                        !wrong,
                        "{from} -> {to} passes through {via}, which lets in uid {uid} in groups {groups:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn a_reload_s_new_owner_or_mode_never_opens_the_socket_to_anyone_else_meanwhile() {
        let was = Attrs { mode: 0o660, uid: 1000, gid: 33 };
        let ids =
            |uid, gid| SocketPerms { mode: None, owner: Some(Uid::from_raw(uid)), group: Some(Gid::from_raw(gid)) };
        let cases = [
            // Another group, fewer rights: the new group with the old 0660 would let its members in.
            SocketPerms { mode: Some(0o600), ..ids(1000, 44) },
            // Another owner, more rights: the owner first, then the mode.
            SocketPerms { mode: Some(0o666), ..ids(2000, 33) },
            // Group rights moved to the owner of another group.
            SocketPerms { mode: Some(0o606), ..ids(1000, 44) },
            SocketPerms { mode: Some(0o640), ..ids(2000, 44) },
            ids(2000, 44),
            SocketPerms { mode: Some(0o600), ..Default::default() },
        ];
        for perms in cases {
            assert_never_more_open(was, perms);
        }
        // One change at a time, and nothing done for what stays.
        assert_eq!(
            steps(was, cases[0]),
            [Attrs { mode: 0o600, ..was }, Attrs { mode: 0o600, uid: 1000, gid: 44 }],
            "chmod to what both modes allow, then chown (the new mode is that already)"
        );
        assert_eq!(
            steps(was, cases[1]),
            [Attrs { mode: 0o660, uid: 2000, gid: 33 }, Attrs { mode: 0o666, uid: 2000, gid: 33 }]
        );
        assert_eq!(steps(was, SocketPerms { mode: Some(0o660), ..ids(1000, 33) }), []);
    }

    #[test]
    fn a_kept_socket_s_file_takes_its_new_owner_and_mode() {
        if !Uid::effective().is_root() {
            return; // chown to another user needs root
        }
        let d = dir("steps");
        let path = d.join("app.sock");
        let _l = bind(&path, 16, SocketPerms { mode: Some(0o660), ..Default::default() }).unwrap();
        let perms =
            SocketPerms { mode: Some(0o600), owner: Some(Uid::from_raw(65534)), group: Some(Gid::from_raw(65534)) };
        set(&path, perms).unwrap();
        assert!(has(&path, perms), "{:o}", mode_of(&path));
        // Back to the old owner with more rights: chown, then chmod.
        let back = SocketPerms { mode: Some(0o666), owner: Some(Uid::from_raw(0)), group: Some(Gid::from_raw(0)) };
        set(&path, back).unwrap();
        assert!(has(&path, back), "{:o}", mode_of(&path));
    }

    #[test]
    fn a_refused_chown_puts_the_narrowed_mode_back() {
        if !Uid::effective().is_root() {
            return; // the file is given to another user first
        }
        let d = dir("refused");
        let path = d.join("app.sock");
        let _l = bind(&path, 16, SocketPerms::default()).unwrap();
        let nobody =
            SocketPerms { mode: Some(0o666), owner: Some(Uid::from_raw(65534)), group: Some(Gid::from_raw(65534)) };
        set(&path, nobody).unwrap();
        // As nobody (the thread's fsuid: no CAP_CHOWN), the mode narrows, then the chown to
        // root is refused: the file must not stay 0600, which neither setting is.
        let reader = crate::supervise::access::Reader { uid: 65534, gid: 65534, gids: vec![65534] };
        let to_root = SocketPerms { mode: Some(0o600), owner: Some(Uid::from_raw(0)), group: None };
        let refused = reader.acting(|| set(&path, to_root)).unwrap();
        assert_eq!(
            refused.err().map(|(what, e)| (what, e.kind())),
            Some(("chown", std::io::ErrorKind::PermissionDenied))
        );
        assert!(has(&path, nobody), "{:o}", mode_of(&path));
    }

    #[test]
    fn a_file_in_the_way_is_kept() {
        let d = dir("kept");
        let path = d.join("app.sock");
        std::fs::write(&path, "mine").unwrap();
        let perms = SocketPerms { mode: Some(0o600), ..Default::default() };
        assert_eq!(bind(&path, 16, perms).err().map(|(_, e)| e.kind()), Some(std::io::ErrorKind::AddrInUse));
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "mine");
    }
}
