//! The calling thread's filesystem credentials, switched to a pool's account and back
//! ([`Reader::acting`](super::access::Reader::acting)).
//!
//! Linux keeps fsuid, fsgid and the supplementary groups per thread in the kernel; glibc's
//! `setgroups()` (like `setuid()`) changes them in every thread of the process, so the
//! groups are set with the raw system call, and so are fsuid and fsgid. Moving fsuid from 0
//! to another uid drops CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH and the other filesystem
//! capabilities from the thread's effective set; moving it back to 0 raises them again
//! (capabilities(7)). CAP_SETUID and CAP_SETGID stay, so switching back cannot be refused.
use super::access::Reader;

/// Capability bits that would let a switched thread open what the account may not.
const DAC_CAPS: u32 = 1 << 1 | 1 << 2; // CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH

/// A thread switched to another account; dropping it switches back.
pub(super) struct Switched {
    groups: Vec<libc::gid_t>,
    /// The fsgid and fsuid before, once each was changed.
    fsgid: Option<u32>,
    fsuid: Option<u32>,
    /// Not Send: dropped on another thread (held across an `.await`), it would switch that
    /// thread back and leave this one as the tenant.
    _this_thread: std::marker::PhantomData<*const ()>,
}

impl Switched {
    /// Switch the calling thread to `r`'s uid, gid and groups (12 system calls, these and
    /// switching back, with a check of each and of the capabilities left).
    pub(super) fn to(r: &Reader) -> Result<Self, String> {
        let mut switched =
            Self { groups: thread_groups()?, fsgid: None, fsuid: None, _this_thread: std::marker::PhantomData };
        set_thread_groups(&r.gids)?;
        switched.fsgid = Some(set_fs_id(libc::SYS_setfsgid, "setfsgid", r.gid)?);
        switched.fsuid = Some(set_fs_id(libc::SYS_setfsuid, "setfsuid", r.uid)?);
        if effective_caps()? & DAC_CAPS != 0 {
            // SECBIT_NO_SETUID_FIXUP, or a bridge whose uid is not 0 but holds the capability.
            return Err("the thread kept CAP_DAC_OVERRIDE or CAP_DAC_READ_SEARCH after setfsuid (securebits \
                        no-setuid-fixup?), so the kernel would not judge as that account; run the bridge as \
                        plain root"
                .into());
        }
        Ok(switched)
    }
}

impl Drop for Switched {
    fn drop(&mut self) {
        let uid = self.fsuid.map_or(Ok(0), |u| set_fs_id(libc::SYS_setfsuid, "setfsuid", u));
        let gid = self.fsgid.map_or(Ok(0), |g| set_fs_id(libc::SYS_setfsgid, "setfsgid", g));
        let groups = set_thread_groups(&self.groups);
        if let Err(e) = uid.and(gid).and(groups) {
            // Never carry on with a thread that acts as a tenant for the daemon's own files.
            tracing::error!("cannot switch a thread's filesystem credentials back, aborting: {e}");
            std::process::abort();
        }
    }
}

/// Set fsuid or fsgid (`call`) to `id`: the previous one, or why it did not take. Both calls
/// answer the previous id whether they succeed or not; an invalid id (-1) changes nothing,
/// so asking with it says what is in force.
fn set_fs_id(call: libc::c_long, name: &str, id: u32) -> Result<u32, String> {
    // SAFETY: plain system calls on integers.
    let (before, now) = unsafe { (libc::syscall(call, id), libc::syscall(call, u32::MAX)) };
    if now as u32 != id {
        return Err(format!("{name}({id}) left it at {now}"));
    }
    Ok(before as u32)
}

/// The calling thread's supplementary groups.
fn thread_groups() -> Result<Vec<libc::gid_t>, String> {
    let mut groups: Vec<libc::gid_t> = vec![0; 64];
    loop {
        // SAFETY: the kernel writes at most `groups.len()` ids.
        let n = unsafe { libc::syscall(libc::SYS_getgroups, groups.len(), groups.as_mut_ptr()) };
        if n >= 0 {
            groups.truncate(n as usize);
            return Ok(groups);
        }
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EINVAL) {
            return Err(format!("getgroups: {err}"));
        }
        // SAFETY: a size of 0 asks only how many there are.
        let count = unsafe { libc::syscall(libc::SYS_getgroups, 0, std::ptr::null_mut::<libc::gid_t>()) };
        groups.resize(count.max(0) as usize, 0);
    }
}

/// Set the calling thread's supplementary groups, and no other thread's.
fn set_thread_groups(groups: &[u32]) -> Result<(), String> {
    // SAFETY: the kernel reads `groups.len()` ids.
    if unsafe { libc::syscall(libc::SYS_setgroups, groups.len(), groups.as_ptr()) } == -1 {
        return Err(format!("setgroups: {}", std::io::Error::last_os_error()));
    }
    Ok(())
}

/// The calling thread's effective capabilities (the low 32: the filesystem ones are there).
fn effective_caps() -> Result<u32, String> {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: libc::c_int,
    }
    #[repr(C)]
    #[derive(Default, Clone, Copy)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const VERSION_3: u32 = 0x2008_0522;
    // pid 0: the calling thread.
    let mut header = Header { version: VERSION_3, pid: 0 };
    let mut data = [Data::default(); 2];
    // SAFETY: version 3 takes two data structs.
    if unsafe { libc::syscall(libc::SYS_capget, &mut header, data.as_mut_ptr()) } == -1 {
        return Err(format!("capget: {}", std::io::Error::last_os_error()));
    }
    Ok(data[0].effective)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
pub(crate) mod tests {
    use super::*;

    /// The calling thread's ids, groups and effective capabilities, as the kernel shows them.
    #[derive(Debug, PartialEq, Eq)]
    struct Shown {
        uid: String,
        gid: String,
        groups: String,
        cap_eff: String,
    }

    fn shown() -> Shown {
        let status = std::fs::read_to_string("/proc/thread-self/status").unwrap();
        let field = |name: &str| {
            status.lines().find_map(|l| l.strip_prefix(name)).map(|v| v.trim().to_owned()).unwrap_or_default()
        };
        Shown { uid: field("Uid:"), gid: field("Gid:"), groups: field("Groups:"), cap_eff: field("CapEff:") }
    }

    fn tenant() -> Reader {
        Reader { uid: 4301, gid: 4302, gids: vec![4303, 4302] }
    }

    #[test]
    fn only_the_calling_thread_is_switched_and_only_while_acting() {
        if !nix::unistd::geteuid().is_root() {
            return; // setfsuid to another uid
        }
        let before = shown();
        // A thread already running (one made while switched would inherit the switch).
        let (ask, asked) = std::sync::mpsc::channel::<std::sync::mpsc::Sender<Shown>>();
        let other = std::thread::spawn(move || asked.iter().for_each(|reply| reply.send(shown()).unwrap()));
        let show_other = || {
            let (tx, rx) = std::sync::mpsc::channel();
            ask.send(tx).unwrap();
            rx.recv().unwrap()
        };
        let (during, other_thread) = tenant().acting(|| (shown(), show_other())).unwrap();
        // Uid: real, effective, saved, filesystem.
        assert!(during.uid.ends_with("\t4301"), "{during:?}");
        assert!(during.uid.starts_with(before.uid.split('\t').next().unwrap()), "{during:?}");
        assert!(during.gid.ends_with("\t4302"), "{during:?}");
        // The kernel sorts the groups.
        assert_eq!(during.groups, "4302 4303");
        // The filesystem capabilities left with fsuid 0.
        let eff = u64::from_str_radix(&during.cap_eff, 16).unwrap();
        assert_eq!(eff & u64::from(DAC_CAPS), 0, "{during:?}");
        assert_ne!(during.cap_eff, before.cap_eff);
        assert_eq!(other_thread, before, "another thread keeps the bridge's");
        assert_eq!(shown(), before, "all back, capabilities too");
        drop(ask);
        other.join().unwrap();
    }

    #[test]
    fn a_panic_while_acting_switches_back() {
        if !nix::unistd::geteuid().is_root() {
            return;
        }
        let before = shown();
        let r = std::panic::catch_unwind(|| tenant().acting(|| panic!("in the open")));
        assert!(r.is_err());
        assert_eq!(shown(), before);
    }

    #[test]
    fn the_kernel_judges_as_the_account_acls_included() {
        if !nix::unistd::geteuid().is_root() {
            return;
        }
        let dir = crate::scratch::scratch_dir("fs-creds");
        let f = dir.join("f");
        std::fs::write(&f, "x").unwrap();
        std::os::unix::fs::chown(&f, Some(0), Some(0)).unwrap();
        let mode = |m| std::fs::set_permissions(&f, std::os::unix::fs::PermissionsExt::from_mode(m)).unwrap();
        let open = || tenant().acting(|| std::fs::File::open(&f).map(drop).map_err(|e| e.kind())).unwrap();
        mode(0o600);
        assert_eq!(open(), Err(std::io::ErrorKind::PermissionDenied), "no capability overrides it");
        mode(0o644);
        assert_eq!(open(), Ok(()));
        // An ACL entry for the account's uid (`setfacl -m u:4301:---`): its bits, not the
        // others', count.
        set_acl(&f, &[(ACL_USER, 0, 4301)]);
        assert_eq!(open(), Err(std::io::ErrorKind::PermissionDenied));
        mode(0o600);
        set_acl(&f, &[(ACL_GROUP, 4, 4303)]);
        assert_eq!(open(), Ok(()), "a supplementary group's grant");
    }

    pub(crate) const ACL_USER: u16 = 0x02;
    pub(crate) const ACL_GROUP: u16 = 0x08;

    /// Give `path` an access ACL as `setfacl -m` writes it (system.posix_acl_access, no
    /// setfacl needed): its mode's owner, group and other bits, `entries` (tag, permission
    /// bits, id) and the mask that lets each of them count.
    pub(crate) fn set_acl(path: &std::path::Path, entries: &[(u16, u16, u32)]) {
        use std::os::unix::ffi::OsStrExt;
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path).unwrap().permissions().mode();
        let bits = |shift: u32| ((mode >> shift) & 7) as u16;
        let any = u32::MAX;
        let mask = entries.iter().fold(bits(3), |m, e| m | e.1);
        let mut all = vec![(0x01, bits(6), any), (0x04, bits(3), any), (0x10, mask, any), (0x20, bits(0), any)];
        all.extend_from_slice(entries);
        // The kernel takes entries sorted by tag, then id.
        all.sort_by_key(|&(tag, _, id)| (tag, id));
        let mut value = 2u32.to_le_bytes().to_vec();
        for (tag, perm, id) in all {
            value.extend(tag.to_le_bytes());
            value.extend(perm.to_le_bytes());
            value.extend(id.to_le_bytes());
        }
        let name = c"system.posix_acl_access";
        let p = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
        // SAFETY: NUL-terminated name and path, a buffer of the length given.
        let rc = unsafe { libc::setxattr(p.as_ptr(), name.as_ptr(), value.as_ptr().cast(), value.len(), 0) };
        assert_eq!(rc, 0, "setxattr {}: {}", path.display(), std::io::Error::last_os_error());
    }
}
