//! A pool's isolation applied to one worker: rlimits (cpu-time-limit's RLIMIT_CPU among
//! them), nice, umask, chroot, supplementary groups, group and user, in the forked child
//! just before exec.
//!
//! Everything that allocates, looks up a name or touches the file system beyond single
//! system calls happens in [`Prepared::for_pool`], in the bridge, before the fork: after
//! fork only async-signal-safe calls are allowed (the child of a multi-threaded process may
//! hold a copy of a locked malloc or NSS mutex). Names were resolved to ids when the
//! configuration was loaded (config/isolation.rs).
//!
//! Order in the child: limits and nice first (raising them needs root), then umask, chroot
//! and the working directory inside it, then groups, gid and uid last (after setuid nothing
//! privileged is possible any more). The parent-death signal is set by spawn.rs *after* this
//! hook, because the kernel clears it when the credentials change.
use super::access::reachable;
use crate::config::Pool;
use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::resource::Resource;
use nix::sys::stat::Mode;
use nix::unistd::{Gid, UnlinkatFlags};
use std::ffi::{CString, OsStr, OsString};
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::process::Command;

/// Where a chroot gets its copy of the worker package (`<chroot>/.fcgibridge/python`).
pub(super) const CHROOT_PACKAGE_DIR: &str = ".fcgibridge/python";
/// PATH of a `clear-env: true` worker unless the pool's env sets one.
const CLEAN_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

/// Why a worker's isolation could not be prepared.
#[derive(Debug, thiserror::Error)]
pub(super) enum IsolateError {
    #[error("{0}")]
    Script(String),
    #[error(
        "the worker user (uid {uid}) cannot reach {path}: {dir} has mode {mode:04o} and owner uid {owner}; \
         set bridge runtime-dir to a directory every parent of which that user may traverse (o+x)"
    )]
    Unreachable { uid: u32, path: PathBuf, dir: PathBuf, mode: u32, owner: u32 },
    #[error("cannot copy the worker package into the chroot at {path}: {source}")]
    Stage { path: PathBuf, source: std::io::Error },
    #[error(
        "refusing to copy the worker package into the chroot: {path} {problem}; \
         remove it and let the bridge create it"
    )]
    Unsafe { path: PathBuf, problem: String },
    #[error("{0} contains a NUL byte")]
    Nul(PathBuf),
}

/// The account a pool's processes take (groups, gid, uid), each `None` where it stays the
/// bridge's: what a worker and the interpreter probe (probe.rs) apply after fork.
#[derive(Debug)]
pub(crate) struct Credentials {
    pub(super) uid: Option<libc::uid_t>,
    gid: Option<libc::gid_t>,
    pub(super) groups: Option<Vec<Gid>>,
    worker_uid: u32,
    pub(super) worker_gid: u32,
    /// "user www (uid 33, gid 33)" when the pool sets `user:`, for error messages.
    run_as: Option<String>,
}

impl Credentials {
    pub(crate) fn of(iso: &crate::config::isolation::Isolation) -> Self {
        let bridge_uid = nix::unistd::geteuid().as_raw();
        let bridge_gid = nix::unistd::getegid().as_raw();
        let worker_uid = iso.worker_uid(bridge_uid);
        let worker_gid = iso.worker_gid(bridge_gid);
        let uid = (worker_uid != bridge_uid).then_some(worker_uid);
        let gid = (worker_gid != bridge_gid || uid.is_some()).then_some(worker_gid);
        let groups = match (&iso.groups, &iso.user) {
            (Some(list), _) => Some(list.iter().map(|g| Gid::from_raw(g.id)).collect::<Vec<_>>()),
            // Like login: the user's own groups, never root's.
            (None, Some(u)) if uid.is_some() => Some(u.member_of.iter().map(|&g| Gid::from_raw(g)).collect()),
            (None, _) if uid.is_some() || gid.is_some() => Some(Vec::new()),
            _ => None,
        };
        let run_as = iso.user.as_ref().map(|u| format!("user {} (uid {worker_uid}, gid {worker_gid})", u.login));
        Self { uid, gid, groups, worker_uid, worker_gid, run_as }
    }

    /// "user www (uid 33, gid 33)" when the pool sets `user:`.
    pub(crate) fn run_as(&self) -> Option<&str> {
        self.run_as.as_deref()
    }

    /// In the forked child: supplementary groups, gid, then uid (async-signal-safe).
    pub(crate) fn apply(&self) -> nix::Result<()> {
        use nix::unistd::{setgroups, setresgid, setresuid, Uid};
        if let Some(groups) = &self.groups {
            setgroups(groups)?;
        }
        if let Some(gid) = self.gid {
            let gid = Gid::from_raw(gid);
            setresgid(gid, gid, gid)?;
        }
        if let Some(uid) = self.uid {
            let uid = Uid::from_raw(uid);
            setresuid(uid, uid, uid)?;
        }
        Ok(())
    }
}

/// The isolation of one worker, ready to be applied after fork without allocating.
#[derive(Debug)]
pub(super) struct Prepared {
    creds: Credentials,
    chroot: Option<CString>,
    /// The working directory (seen from inside the chroot), entered last, as the worker's
    /// user: a directory that user may not enter fails the spawn instead of confusing Python.
    workdir: CString,
    umask: Option<libc::mode_t>,
    rlimits: Vec<(Resource, libc::rlim_t)>,
    /// cpu-time-limit's RLIMIT_CPU ([`cpu_rlimit`]); None for a template.
    cpu: Option<CpuRlimit>,
    nice: Option<libc::c_int>,
    python: PathBuf,
    python_path: PathBuf,
    chroot_dir: Option<PathBuf>,
    env: Vec<(String, String)>,
    clear_env: bool,
}

impl Prepared {
    /// Resolve everything a worker of `pool` needs; `python_path` is `<runtime_dir>/python`.
    pub(super) fn for_pool(pool: &Pool, python_path: &Path) -> Result<Self, IsolateError> {
        let iso = &pool.isolation;
        if let Some(file) = pool.app.file() {
            // Checked at load time too; the file may have changed hands since.
            crate::config::isolation::check_script(iso, file).map_err(IsolateError::Script)?;
        }
        let creds = Credentials::of(iso);

        let mut rlimits = Vec::new();
        if let Some(n) = iso.rlimit_nofile {
            rlimits.push((Resource::RLIMIT_NOFILE, n as libc::rlim_t));
        }
        if let Some(n) = iso.rlimit_nproc {
            rlimits.push((Resource::RLIMIT_NPROC, n as libc::rlim_t));
        }
        if let Some(n) = iso.rlimit_core {
            let v = if n == crate::config::isolation::UNLIMITED { libc::RLIM_INFINITY } else { n as libc::rlim_t };
            rlimits.push((Resource::RLIMIT_CORE, v));
        }
        // Inherited by a preload template's forks, so they need nothing of their own.
        if let Some(n) = iso.rlimit_as {
            rlimits.push((Resource::RLIMIT_AS, n as libc::rlim_t));
        }

        let (chroot, workdir, python, worker_python_path) = match &iso.chroot {
            Some(root) => {
                stage_package(python_path, root)?;
                (
                    Some(cstring(root)?),
                    cstring(&inside(root, &pool.chdir))?,
                    inside(root, &pool.python),
                    PathBuf::from("/").join(CHROOT_PACKAGE_DIR),
                )
            }
            None => {
                if creds.uid.is_some() {
                    let gids: Vec<u32> =
                        creds.groups.iter().flatten().map(|g| g.as_raw()).chain([creds.worker_gid]).collect();
                    reachable(&python_path.join("fcgibridge_worker").join("main.py"), creds.worker_uid, &gids)?;
                }
                (None, cstring(&pool.chdir)?, pool.python.clone(), python_path.to_owned())
            }
        };

        let mut env = Vec::new();
        if let Some(u) = &iso.user {
            env.push(("HOME".to_owned(), u.home.display().to_string()));
            env.push(("USER".to_owned(), u.login.clone()));
            env.push(("LOGNAME".to_owned(), u.login.clone()));
        }
        if iso.clear_env {
            env.push(("PATH".to_owned(), CLEAN_PATH.to_owned()));
        }

        Ok(Self {
            creds,
            chroot,
            workdir,
            umask: iso.umask.map(|m| m as libc::mode_t),
            rlimits,
            cpu: cpu_rlimit(pool),
            nice: iso.nice,
            python,
            python_path: worker_python_path,
            chroot_dir: iso.chroot.clone(),
            env,
            clear_env: iso.clear_env,
        })
    }

    /// As [`Self::for_pool`], for a pool's preload template: without RLIMIT_CPU, which
    /// counts the template's own CPU time and would end it. Each fork sets its own
    /// (template.rs's SPAWN), counted from the fork.
    pub(super) fn for_template(pool: &Pool, python_path: &Path) -> Result<Self, IsolateError> {
        Ok(Self { cpu: None, ..Self::for_pool(pool, python_path)? })
    }

    /// "user www (uid 33, gid 33)" when the pool sets `user:`.
    pub(super) fn run_as(&self) -> Option<&str> {
        self.creds.run_as()
    }

    /// The interpreter to exec (inside the chroot when there is one).
    pub(super) fn python(&self) -> &Path {
        &self.python
    }

    /// The directory holding the worker package, as the worker sees it.
    pub(super) fn python_path(&self) -> &Path {
        &self.python_path
    }

    /// A path of the bridge's file system as the worker sees it.
    pub(super) fn worker_path(&self, path: &Path) -> PathBuf {
        match &self.chroot_dir {
            Some(root) => inside(root, path),
            None => path.to_owned(),
        }
    }

    /// Environment: cleared for `clear-env: true`; HOME, USER, LOGNAME of `user:`. Call
    /// before the pool's own `env:` is added, so that the pool's values win.
    pub(super) fn configure_env(&self, cmd: &mut Command) {
        if self.clear_env {
            cmd.env_clear();
        }
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
    }

    /// Register the pre-exec hook, which also enters the working directory (the command
    /// gets no `current_dir`). Register it before any hook that must run with the final
    /// credentials (PR_SET_PDEATHSIG). `steps` learns which step failed (spawn.rs).
    pub(super) fn install(self, cmd: &mut Command, steps: super::spawn::StepMarker) {
        // SAFETY: the closure only makes async-signal-safe system calls (getrlimit, setrlimit,
        // setpriority, umask, chroot, chdir, setgroups, setgid, setuid, write; nix's
        // wrappers of them pass C strings and slices straight through) on data prepared
        // before the fork; it neither allocates nor takes locks.
        unsafe {
            cmd.pre_exec(move || self.apply(steps));
        }
    }

    /// Runs in the forked child.
    fn apply(&self, steps: super::spawn::StepMarker) -> std::io::Result<()> {
        use super::spawn::Step;
        use nix::unistd::{chdir, chroot};
        steps.mark(Step::Limits);
        for &(resource, value) in &self.rlimits {
            nix::sys::resource::setrlimit(resource, value, value)?;
        }
        // Lowering the process's own limit needs no privilege, unlike prlimit(2) on a
        // process of another user (CAP_SYS_RESOURCE, which root lacks in a container).
        // Never above the hard limit it inherits (the bridge's own, systemd's LimitCPU=):
        // the stricter of the two applies, as it would without cpu-time-limit.
        if let Some(CpuRlimit { soft, hard }) = self.cpu {
            let (_, inherited) = nix::sys::resource::getrlimit(Resource::RLIMIT_CPU)?;
            let hard = hard.min(inherited);
            nix::sys::resource::setrlimit(Resource::RLIMIT_CPU, soft.min(hard), hard)?;
        }
        if let Some(n) = self.nice {
            // SAFETY: a plain system call (nix has no setpriority).
            if unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, n) } == -1 {
                return Err(std::io::Error::last_os_error());
            }
        }
        if let Some(m) = self.umask {
            nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(m));
        }
        if let Some(root) = &self.chroot {
            steps.mark(Step::Chroot);
            chroot(root.as_c_str())?;
            chdir(c"/")?;
        }
        steps.mark(Step::Credentials);
        self.creds.apply()?;
        steps.mark(Step::Chdir);
        chdir(self.workdir.as_c_str())?;
        Ok(())
    }
}

/// RLIMIT_CPU in seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct CpuRlimit {
    pub soft: libc::rlim_t,
    pub hard: libc::rlim_t,
}

/// cpu-time-limit as RLIMIT_CPU of a worker of `pool`. The bridge retires a worker whose
/// sampled CPU time reaches the limit; the hard limit, graceful-timeout later, is the
/// kernel's SIGKILL for one that keeps spinning. The native worker turns the soft limit's
/// SIGXCPU into a log line; a `command:` program would die of SIGXCPU, so for it soft = hard.
pub(super) fn cpu_rlimit(pool: &Pool) -> Option<CpuRlimit> {
    let limit = pool.supervision.cpu_time_limit?.as_secs();
    let hard = limit + pool.supervision.graceful_timeout.as_secs().max(1) + 1;
    let native = !matches!(pool.app, crate::config::App::Command(_));
    let soft = if native { limit.max(1) } else { hard };
    Some(CpuRlimit { soft: soft as libc::rlim_t, hard: hard as libc::rlim_t })
}

fn cstring(path: &Path) -> Result<CString, IsolateError> {
    CString::new(path.as_os_str().as_bytes()).map_err(|_| IsolateError::Nul(path.to_owned()))
}

/// `path` (under `root`, as the configuration checked) seen from inside the chroot.
pub(crate) fn inside(root: &Path, path: &Path) -> PathBuf {
    match path.strip_prefix(root) {
        Ok(rest) => Path::new("/").join(rest),
        Err(_) => path.to_owned(),
    }
}

/// Copy the worker package into `<root>/.fcgibridge/python/fcgibridge_worker/` (world-readable),
/// skipping files that are already identical. Returns that `python` directory.
///
/// This runs as root, and the tenant may own `root` itself (a jail per user), so no name below
/// it is trusted: each directory is opened through its parent's fd without following symlinks
/// and must be the bridge's and writable by nobody else, and each file is written under a fresh
/// temporary name (O_EXCL|O_NOFOLLOW) and renamed into place within that directory. Once the
/// fds are held, swapping `.fcgibridge` in `root` only detaches the tree being written.
pub(super) fn stage_package(python_path: &Path, root: &Path) -> Result<PathBuf, IsolateError> {
    let pkg_src = python_path.join("fcgibridge_worker");
    let err = |path: &Path| {
        let path = path.to_owned();
        move |source: std::io::Error| IsolateError::Stage { path, source }
    };
    // The chroot itself is the operator's path (a symlink to it is the operator's choice).
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
    let mut dir = nix::fcntl::open(root, flags, Mode::empty()).map_err(|e| err(root)(e.into()))?;
    let mut pkg_dst = root.to_owned();
    for name in [".fcgibridge", "python", "fcgibridge_worker"] {
        pkg_dst.push(name);
        dir = own_subdir(&dir, name, &pkg_dst)?;
    }
    for entry in std::fs::read_dir(&pkg_src).map_err(err(&pkg_src))? {
        let entry = entry.map_err(err(&pkg_src))?;
        let src = entry.path();
        if !src.is_file() {
            continue;
        }
        let data = std::fs::read(&src).map_err(err(&src))?;
        replace_file(&dir, &entry.file_name(), &data).map_err(err(&pkg_dst.join(entry.file_name())))?;
    }
    Ok(root.join(CHROOT_PACKAGE_DIR))
}

/// Create (0755) or open the directory `name` under `parent` without following a symlink, and
/// insist that it belongs to the bridge's euid and is not group- or world-writable.
fn own_subdir(parent: &OwnedFd, name: &str, path: &Path) -> Result<OwnedFd, IsolateError> {
    let stage = |e: Errno| IsolateError::Stage { path: path.to_owned(), source: e.into() };
    let refuse = |problem: String| IsolateError::Unsafe { path: path.to_owned(), problem };
    match nix::sys::stat::mkdirat(parent, name, Mode::from_bits_truncate(0o755)) {
        Ok(()) | Err(Errno::EEXIST) => {}
        Err(e) => return Err(stage(e)),
    }
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let dir = match nix::fcntl::openat(parent, name, flags, Mode::empty()) {
        Ok(fd) => fd,
        Err(Errno::ELOOP | Errno::ENOTDIR) => return Err(refuse("is a symlink or not a directory".to_owned())),
        Err(e) => return Err(stage(e)),
    };
    let st = nix::sys::stat::fstat(&dir).map_err(stage)?;
    let euid = nix::unistd::geteuid().as_raw();
    if st.st_uid != euid {
        return Err(refuse(format!("is owned by uid {}, not the bridge's uid {euid}", st.st_uid)));
    }
    if st.st_mode & 0o022 != 0 {
        return Err(refuse(format!("is group- or world-writable (mode {:04o})", st.st_mode & 0o7777)));
    }
    Ok(dir)
}

/// Make `name` in `dir` hold `data` with mode 0644, unless it already does: write a fresh
/// temporary file (never an existing name, never through a symlink) and rename it over `name`.
fn replace_file(dir: &OwnedFd, name: &OsStr, data: &[u8]) -> std::io::Result<()> {
    use std::io::{Read, Write};
    let read = OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC;
    if let Ok(fd) = nix::fcntl::openat(dir, name, read, Mode::empty()) {
        let mut old = Vec::new();
        if std::fs::File::from(fd).read_to_end(&mut old).is_ok() && old == data {
            return Ok(());
        }
    }
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let mut tmp = OsString::from(".");
    tmp.push(name);
    tmp.push(format!(".tmp{}.{n}", std::process::id()));
    // A leftover of an earlier bridge with the same pid: unlink never follows a symlink.
    let _ = nix::unistd::unlinkat(dir, tmp.as_os_str(), UnlinkatFlags::NoRemoveDir);
    let create = OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let mut file =
        std::fs::File::from(nix::fcntl::openat(dir, tmp.as_os_str(), create, Mode::from_bits_truncate(0o644))?);
    let written = file
        .write_all(data)
        .and_then(|()| Ok(nix::sys::stat::fchmod(&file, Mode::from_bits_truncate(0o644))?))
        .and_then(|()| Ok(nix::fcntl::renameat(dir, tmp.as_os_str(), dir, name)?));
    if written.is_err() {
        let _ = nix::unistd::unlinkat(dir, tmp.as_os_str(), UnlinkatFlags::NoRemoveDir);
    }
    written
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::scratch::ScratchDir;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    #[test]
    fn cpu_time_limit_gives_a_python_worker_its_soft_limit_and_a_program_only_the_hard_one() {
        use std::time::Duration;
        let mut pool = Pool::for_tests();
        assert_eq!(cpu_rlimit(&pool), None);
        pool.supervision.cpu_time_limit = Some(Duration::from_secs(60));
        pool.supervision.graceful_timeout = Duration::from_secs(10);
        // the hard limit: graceful-timeout (at least 1 s) and one second of slack later
        assert_eq!(cpu_rlimit(&pool), Some(CpuRlimit { soft: 60, hard: 71 }));
        pool.supervision.graceful_timeout = Duration::ZERO;
        assert_eq!(cpu_rlimit(&pool), Some(CpuRlimit { soft: 60, hard: 62 }));
        // a `command:` program would die of the soft limit's SIGXCPU
        pool.app = crate::config::App::Command(vec!["/usr/bin/php-cgi".into()]);
        assert_eq!(cpu_rlimit(&pool), Some(CpuRlimit { soft: 62, hard: 62 }));
    }

    #[test]
    fn paths_inside_the_chroot() {
        let root = Path::new("/srv/jail");
        assert_eq!(inside(root, Path::new("/srv/jail/usr/bin/python3")), PathBuf::from("/usr/bin/python3"));
        assert_eq!(inside(root, Path::new("/srv/jail")), PathBuf::from("/"));
    }

    #[test]
    fn reachability_follows_the_mode_bits() {
        let dir = crate::scratch::scratch_dir("reachable");
        let inner = dir.join("a/b");
        std::fs::create_dir_all(&inner).unwrap();
        let file = inner.join("main.py");
        std::fs::write(&file, "").unwrap();
        for d in [&dir.to_path_buf(), &dir.join("a"), &inner] {
            std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        // Someone else (neither owner nor group member) may read it: every level has o+rx.
        let stranger = std::fs::metadata(&file).unwrap().uid() + 12345;
        let ancestors_ok =
            file.ancestors().skip(1).all(|d| std::fs::metadata(d).map(|m| m.mode() & 0o001 != 0).unwrap_or(true));
        if ancestors_ok {
            assert!(reachable(&file, stranger, &[]).is_ok());
        }
        std::fs::set_permissions(dir.join("a"), std::fs::Permissions::from_mode(0o700)).unwrap();
        match reachable(&file, stranger, &[]) {
            Err(IsolateError::Unreachable { dir: blocked, mode, .. }) if ancestors_ok => {
                assert_eq!(blocked, dir.join("a"));
                assert_eq!(mode, 0o700);
            }
            Err(IsolateError::Unreachable { .. }) => {}
            other => panic!("{other:?}"),
        }
        // Root reaches everything.
        assert!(reachable(&file, 0, &[]).is_ok());
        std::fs::set_permissions(dir.join("a"), std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        if ancestors_ok {
            assert!(matches!(reachable(&file, stranger, &[]), Err(IsolateError::Unreachable { .. })));
        }
    }

    #[test]
    fn staging_copies_the_package_once() {
        let dir = crate::scratch::scratch_dir("stage");
        let src = dir.join("run/python/fcgibridge_worker");
        std::fs::create_dir_all(&src).unwrap();
        std::fs::write(src.join("main.py"), "print(1)\n").unwrap();
        let jail = dir.join("jail");
        std::fs::create_dir_all(&jail).unwrap();
        let staged = stage_package(&dir.join("run/python"), &jail).unwrap();
        assert_eq!(staged, jail.join(".fcgibridge/python"));
        let copy = staged.join("fcgibridge_worker/main.py");
        assert_eq!(std::fs::read_to_string(&copy).unwrap(), "print(1)\n");
        assert_eq!(std::fs::metadata(&copy).unwrap().mode() & 0o777, 0o644);
        std::fs::write(src.join("main.py"), "print(2)\n").unwrap();
        stage_package(&dir.join("run/python"), &jail).unwrap();
        assert_eq!(std::fs::read_to_string(&copy).unwrap(), "print(2)\n");
    }

    fn is_root() -> bool {
        nix::unistd::geteuid().is_root()
    }

    /// `<dir>/run/python/fcgibridge_worker/main.py` and an empty `<dir>/jail` (mode 0755):
    /// the scratch dir (keep it), `<dir>/run/python` and the jail.
    fn package_and_jail(name: &str) -> (ScratchDir, PathBuf, PathBuf) {
        let dir = crate::scratch::scratch_dir(name);
        let src = dir.join("run/python/fcgibridge_worker");
        std::fs::create_dir_all(&src).unwrap();
        std::fs::write(src.join("main.py"), "print(1)\n").unwrap();
        let jail = dir.join("jail");
        std::fs::create_dir_all(&jail).unwrap();
        std::fs::set_permissions(&jail, std::fs::Permissions::from_mode(0o755)).unwrap();
        let python = dir.join("run/python");
        (dir, python, jail)
    }

    #[test]
    fn staging_creates_world_readable_files_in_a_fresh_chroot() {
        let (_dir, python, jail) = package_and_jail("stage-fresh");
        let staged = stage_package(&python, &jail).unwrap();
        let file = staged.join("fcgibridge_worker/main.py");
        assert_eq!(std::fs::metadata(&file).unwrap().mode() & 0o7777, 0o644);
        for d in [".fcgibridge", ".fcgibridge/python", ".fcgibridge/python/fcgibridge_worker"] {
            let meta = std::fs::symlink_metadata(jail.join(d)).unwrap();
            assert!(meta.is_dir());
            assert_eq!(meta.uid(), nix::unistd::geteuid().as_raw());
            assert_eq!(meta.mode() & 0o022, 0, "{d}");
        }
        // Only the package's files are left behind (no temporary ones).
        let names: Vec<_> =
            std::fs::read_dir(staged.join("fcgibridge_worker")).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, ["main.py"]);
    }

    #[test]
    fn staging_refuses_a_symlinked_fcgibridge_directory() {
        let (_dir, python, jail) = package_and_jail("stage-symlink");
        let elsewhere = jail.parent().unwrap().join("elsewhere");
        std::fs::create_dir(&elsewhere).unwrap();
        std::os::unix::fs::symlink(&elsewhere, jail.join(".fcgibridge")).unwrap();
        let err = stage_package(&python, &jail).unwrap_err();
        assert!(matches!(err, IsolateError::Unsafe { ref path, .. } if *path == jail.join(".fcgibridge")), "{err:?}");
        assert!(err.to_string().contains("symlink"), "{err}");
        assert_eq!(std::fs::read_dir(&elsewhere).unwrap().count(), 0);
    }

    #[test]
    fn staging_never_writes_through_a_planted_temporary_name() {
        let (_dir, python, jail) = package_and_jail("stage-tmp");
        let staged = stage_package(&python, &jail).unwrap().join("fcgibridge_worker");
        let victim = jail.parent().unwrap().join("victim");
        std::fs::write(&victim, "secret\n").unwrap();
        std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o600)).unwrap();
        // The old and the current temporary names, for this process and a few calls ahead.
        let pid = std::process::id();
        let mut names = vec![format!("main.tmp{pid}"), format!("main.py.tmp{pid}")];
        names.extend((0..64).map(|n| format!(".main.py.tmp{pid}.{n}")));
        for name in &names {
            std::os::unix::fs::symlink(&victim, staged.join(name)).unwrap();
        }
        std::fs::write(python.join("fcgibridge_worker/main.py"), "print(2)\n").unwrap();
        if stage_package(&python, &jail).is_ok() {
            assert_eq!(std::fs::read_to_string(staged.join("main.py")).unwrap(), "print(2)\n");
        }
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "secret\n");
        assert_eq!(std::fs::metadata(&victim).unwrap().mode() & 0o7777, 0o600);
    }

    #[test]
    fn staging_refuses_directories_of_someone_else() {
        if !is_root() {
            return;
        }
        let (_dir, python, jail) = package_and_jail("stage-owner");
        let tenant = jail.join(".fcgibridge");
        std::fs::create_dir(&tenant).unwrap();
        std::os::unix::fs::chown(&tenant, Some(12345), Some(12345)).unwrap();
        let err = stage_package(&python, &jail).unwrap_err();
        assert!(matches!(err, IsolateError::Unsafe { ref path, .. } if *path == tenant), "{err:?}");
        assert!(err.to_string().contains("owned by uid 12345"), "{err}");
        assert!(!tenant.join("python").exists());
        // Root's own directory, but writable by others: refused as well.
        std::os::unix::fs::chown(&tenant, Some(0), Some(0)).unwrap();
        std::fs::set_permissions(&tenant, std::fs::Permissions::from_mode(0o777)).unwrap();
        let err = stage_package(&python, &jail).unwrap_err();
        assert!(err.to_string().contains("writable (mode 0777)"), "{err}");
    }
}
