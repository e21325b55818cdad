//! The runtime directory: worker sockets (`pools/<pool>/`) and the worker's Python
//! package with its native module (`python/fcgibridge_worker/`), so that nothing has to
//! be installed into a pool's interpreter or virtualenv.
use std::fs::DirBuilder;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

mod embedded {
    include!(concat!(env!("OUT_DIR"), "/python_package.rs"));
}

/// Why the runtime directory could not be prepared.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RuntimeDirError {
    #[error("cannot create runtime directory {path}: {source}")]
    Create { path: PathBuf, source: std::io::Error },
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error(
        "runtime directory {path}: {why}; workers load their code from there, so it must be the \
         bridge's alone (owned by uid {uid}, writable by nobody else, no symlink): remove it or \
         fix it (chown {uid}, chmod go-w), or set runtime-dir elsewhere"
    )]
    NotOwn { path: PathBuf, why: String, uid: u32 },
    #[error(
        "the native worker module was not found at {0}: it ships beside the fcgibridge binary (the \
         wheel installs both in the same bin/; `cargo build --release` builds both in target/release), \
         or set FCGIBRIDGE_WORKER_LIB to the library"
    )]
    NativeMissing(PathBuf),
    #[error("cannot read the native worker module {path}: {source}")]
    NativeUnreadable { path: PathBuf, source: std::io::Error },
    #[error("runtime-dir {path} is in use by {holder}; stop it, or give this one its own runtime-dir")]
    InUse { path: PathBuf, holder: String },
    #[error("cannot lock {path}: {source}")]
    Lock { path: PathBuf, source: std::io::Error },
}

/// Not found (where to look next), or found but not readable (what the system said).
fn native_error(path: &Path, source: std::io::Error) -> RuntimeDirError {
    match source.kind() {
        std::io::ErrorKind::NotFound => RuntimeDirError::NativeMissing(path.to_owned()),
        _ => RuntimeDirError::NativeUnreadable { path: path.to_owned(), source },
    }
}

/// A prepared runtime directory; removed on drop when the bridge created it.
pub(crate) struct RuntimeDir {
    path: PathBuf,
    remove_on_drop: bool,
}

impl RuntimeDir {
    /// Create (or reuse the configured) directory and unpack the worker package into it.
    pub(crate) fn prepare(configured: Option<&Path>) -> Result<Self, RuntimeDirError> {
        let (path, remove_on_drop) = match configured {
            Some(p) => {
                Self::create(p)?;
                (p.to_owned(), false)
            }
            None => (fresh_dir(&default_base())?, true),
        };
        Self { path, remove_on_drop }.unpacked()
    }

    /// A private copy of the worker package for `fcgibridge check --import`, removed on
    /// drop: in the configured runtime directory when it exists, else where the daemon
    /// would make its own — so that the pools' users reach it as they reach the daemon's.
    /// The daemon's copy is not touched: a running daemon may start workers from it. Except
    /// in a pool's chroot: `Prepared::for_pool` stages this binary's package into
    /// `<chroot>/.fcgibridge/python`, which the daemon's workers there load too (identical
    /// files are left as they are; after an upgrade they are the new ones). Stopped by
    /// Ctrl-C or SIGTERM, check.rs still drops this copy.
    pub(crate) fn for_check(configured: Option<&Path>) -> Result<Self, RuntimeDirError> {
        let base = configured.filter(|p| p.is_dir()).map_or_else(default_base, Path::to_owned);
        Self { path: fresh_dir(&base)?, remove_on_drop: true }.unpacked()
    }

    /// With the worker package unpacked in it.
    fn unpacked(self) -> Result<Self, RuntimeDirError> {
        self.unpack_python()?;
        // Workers of a pool with `user:` must reach python/ (0755) through this directory:
        // traversable (o+x) but not listable. pools/ stays 0700: only the bridge connects.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&self.path, std::fs::Permissions::from_mode(0o711))
            .map_err(|source| RuntimeDirError::Create { path: self.path.clone(), source })?;
        Ok(self)
    }

    /// The configured directory (and its parents) when missing, owner-only until `prepare`
    /// makes it traversable. One that was there already must be the bridge's own: another
    /// user who made it first could replace the worker package every pool loads.
    pub(crate) fn create(p: &Path) -> Result<(), RuntimeDirError> {
        own_dir(p, 0o700)?;
        for dir in p.ancestors().skip(1) {
            check_parent(dir)?;
        }
        Ok(())
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// `<runtime_dir>/python`: the directory put first on the worker's sys.path.
    pub(crate) fn python_path(&self) -> PathBuf {
        self.path.join("python")
    }

    /// `<runtime_dir>/pools/<pool>`, created 0700 (only the bridge connects to workers).
    pub(crate) fn pool_dir(&self, pool: &str) -> Result<PathBuf, RuntimeDirError> {
        let pools = self.path.join("pools");
        own_dir(&pools, 0o700)?;
        let p = pools.join(pool);
        own_dir(&p, 0o700)?;
        Ok(p)
    }

    fn unpack_python(&self) -> Result<(), RuntimeDirError> {
        let pkg = self.python_path().join("fcgibridge_worker");
        own_dir(&self.python_path(), 0o755)?;
        own_dir(&pkg, 0o755)?;
        for (name, contents) in embedded::FILES {
            let target = pkg.join(name);
            if let Some(parent) = target.parent().filter(|d| *d != pkg) {
                own_dir(parent, 0o755)?;
            }
            write_atomically(&target, contents)?;
        }
        let native = native_module_source();
        let bytes = std::fs::read(&native).map_err(|e| native_error(&native, e))?;
        write_atomically(&pkg.join("_native.abi3.so"), &bytes)?;
        Ok(())
    }
}

/// `dir` created with `mode` when missing (its parents too), or, when it was there, checked
/// to be the bridge's own: a directory (not a symlink), owned by the bridge's user and
/// writable by no one else.
fn own_dir(dir: &Path, mode: u32) -> Result<(), RuntimeDirError> {
    DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(dir)
        .map_err(|source| RuntimeDirError::Create { path: dir.to_owned(), source })?;
    let uid = nix::unistd::geteuid().as_raw();
    let not_own = |why: String| RuntimeDirError::NotOwn { path: dir.to_owned(), why, uid };
    let meta = std::fs::symlink_metadata(dir).map_err(|e| not_own(format!("cannot be examined ({e})")))?;
    use std::os::unix::fs::MetadataExt;
    if !meta.file_type().is_dir() {
        return Err(not_own("is a symlink or not a directory".into()));
    }
    if meta.uid() != uid {
        return Err(not_own(format!("belongs to uid {}", meta.uid())));
    }
    if meta.mode() & 0o022 != 0 {
        return Err(not_own(format!("is writable by its group or others (mode {:o})", meta.mode() & 0o7777)));
    }
    Ok(())
}

/// A directory above the runtime directory: whoever may rename entries in it could swap
/// the runtime directory for their own. Root's, the bridge user's, or sticky (`/tmp`).
fn check_parent(dir: &Path) -> Result<(), RuntimeDirError> {
    use std::os::unix::fs::MetadataExt;
    let uid = nix::unistd::geteuid().as_raw();
    let Ok(meta) = std::fs::metadata(dir) else { return Ok(()) };
    let sticky = meta.mode() & 0o1000 != 0;
    let others_write = meta.mode() & 0o022 != 0;
    if (meta.uid() != 0 && meta.uid() != uid) || (others_write && !sticky) {
        return Err(RuntimeDirError::NotOwn {
            path: dir.to_owned(),
            why: format!(
                "(a parent of the runtime directory) lets uid {} or other users rename what is in it (mode {:o})",
                meta.uid(),
                meta.mode() & 0o7777
            ),
            uid,
        });
    }
    Ok(())
}

/// `<runtime-dir>/daemon.lock`, flock'ed for the daemon's life (released when the process
/// ends): a second daemon given the same runtime-dir would rebind the worker sockets of
/// the first (their names repeat in every daemon) and remove them when it stops.
pub(crate) struct DaemonLock {
    _file: std::fs::File,
}

impl DaemonLock {
    /// Take the lock on `dir` (which exists), writing this pid into it; refused at once
    /// when another process holds it.
    pub(crate) fn take(dir: &Path) -> Result<Self, RuntimeDirError> {
        use std::io::{Read, Seek, Write};
        use std::os::fd::AsRawFd;
        use std::os::unix::fs::OpenOptionsExt;
        let path = dir.join("daemon.lock");
        let failed = |source| RuntimeDirError::Lock { path: path.clone(), source };
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)
            .map_err(failed)?;
        // SAFETY: flock(2) on a descriptor `file` owns.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EWOULDBLOCK) {
                return Err(failed(e));
            }
            let mut pid = String::new();
            let _ = file.read_to_string(&mut pid);
            let holder = match pid.trim().parse::<u32>() {
                Ok(pid) => format!("the daemon pid {pid}"),
                Err(_) => "another daemon".to_owned(),
            };
            return Err(RuntimeDirError::InUse { path: dir.to_owned(), holder });
        }
        file.set_len(0).and_then(|()| file.rewind()).map_err(failed)?;
        writeln!(file, "{}", std::process::id()).map_err(failed)?;
        Ok(Self { _file: file })
    }
}

impl Drop for RuntimeDir {
    fn drop(&mut self) {
        if self.remove_on_drop {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// Where the native worker module is read from: $FCGIBRIDGE_WORKER_LIB, else
/// `libfcgibridge_worker.so` next to the running executable (`check` looks there too).
pub(crate) fn native_module_source() -> PathBuf {
    if let Some(p) = std::env::var_os("FCGIBRIDGE_WORKER_LIB") {
        return PathBuf::from(p);
    }
    let exe_dir =
        std::env::current_exe().ok().and_then(|e| e.parent().map(Path::to_owned)).unwrap_or_else(|| PathBuf::from("."));
    exe_dir.join("libfcgibridge_worker.so")
}

/// What `run` stops with when the native worker module cannot be read where it is looked
/// for ([`native_module_source`]); `check` says it too.
pub(crate) fn native_module_missing() -> Option<RuntimeDirError> {
    missing_at(&native_module_source())
}

/// The error `run` stops with when it cannot read the module at `path`.
fn missing_at(path: &Path) -> Option<RuntimeDirError> {
    std::fs::File::open(path).err().map(|e| native_error(path, e))
}

/// Write through a temporary name and rename, so a worker starting from an older copy
/// (a configured, reused runtime_dir) never imports a half-written file.
fn write_atomically(target: &Path, contents: &[u8]) -> Result<(), RuntimeDirError> {
    let tmp = target.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, contents)
        .and_then(|()| std::fs::rename(&tmp, target))
        .map_err(|source| RuntimeDirError::Write { path: target.to_owned(), source })
}

/// Where a runtime directory that is not configured is made: $XDG_RUNTIME_DIR, else /tmp.
fn default_base() -> PathBuf {
    std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from).filter(|p| p.is_dir()).unwrap_or_else(std::env::temp_dir)
}

/// A new private directory in `base`.
fn fresh_dir(base: &Path) -> Result<PathBuf, RuntimeDirError> {
    let pid = std::process::id();
    let mut last_err = None;
    for attempt in 0..100u32 {
        let nanos =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
        let p = base.join(format!("fcgibridge-{pid}-{:x}", nanos.wrapping_add(attempt)));
        match DirBuilder::new().mode(0o700).create(&p) {
            Ok(()) => return Ok(p),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => last_err = Some(e),
            Err(source) => return Err(RuntimeDirError::Create { path: p, source }),
        }
    }
    Err(RuntimeDirError::Create {
        path: base.to_owned(),
        source: last_err.unwrap_or_else(|| std::io::Error::other("no free name")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_runtime_dir_in_use_is_refused_with_the_holders_pid() {
        let dir = crate::scratch::scratch_dir("daemon-lock");
        let held = DaemonLock::take(&dir).expect("the first lock");
        let pid = std::fs::read_to_string(dir.join("daemon.lock")).unwrap();
        assert_eq!(pid.trim(), std::process::id().to_string());
        // flock: a second open file is refused although this process holds the first.
        let e = DaemonLock::take(&dir).err().map(|e| e.to_string()).unwrap_or_default();
        assert_eq!(
            e,
            format!(
                "runtime-dir {} is in use by the daemon pid {}; stop it, or give this one its own runtime-dir",
                dir.display(),
                std::process::id()
            )
        );
        drop(held);
        assert!(DaemonLock::take(&dir).is_ok(), "free again once the holder is gone");
    }

    #[test]
    fn a_missing_worker_module_is_the_error_run_gives() {
        let dir = crate::scratch::scratch_dir("check-native-module");
        let missing = dir.join("libfcgibridge_worker.so");
        let e = missing_at(&missing).map(|e| e.to_string()).unwrap_or_default();
        assert!(e.starts_with(&format!("the native worker module was not found at {}", missing.display())), "{e}");
        std::fs::write(&missing, b"a module").unwrap();
        assert!(missing_at(&missing).is_none());
        // Found but not readable (as root, a mode cannot refuse it; a file as a directory
        // can): what the system said, not "not found".
        let beneath = missing.join("libfcgibridge_worker.so");
        let e = missing_at(&beneath).map(|e| e.to_string()).unwrap_or_default();
        assert_eq!(
            e,
            format!("cannot read the native worker module {}: Not a directory (os error 20)", beneath.display())
        );
    }

    #[test]
    fn missing_native_module_is_a_clear_error() {
        let scratch = crate::scratch::scratch_dir("rtdir-module");
        let base = scratch.join("run");
        // SAFETY-free: env mutation in a test binary; no other test reads this variable.
        std::env::set_var("FCGIBRIDGE_WORKER_LIB", base.join("nope.so"));
        let r = RuntimeDir::prepare(Some(&base));
        let msg = r.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(msg.contains("cargo build --release"), "{msg}");
        assert!(msg.contains("FCGIBRIDGE_WORKER_LIB"), "{msg}");
        let mode = std::fs::metadata(&base).map(|m| m.permissions().mode() & 0o777).unwrap_or(0);
        assert_eq!(mode, 0o700);
        let fake = base.join("fake.so");
        std::fs::write(&fake, b"not really a module").ok();
        std::env::set_var("FCGIBRIDGE_WORKER_LIB", &fake);
        let dir = RuntimeDir::prepare(Some(&base)).ok();
        assert!(dir.is_some());
        assert!(base.join("python/fcgibridge_worker/_native.abi3.so").is_file());
        std::env::remove_var("FCGIBRIDGE_WORKER_LIB");
    }

    #[test]
    fn a_runtime_directory_someone_else_could_write_is_refused() {
        let scratch = crate::scratch::scratch_dir("rtdir-not-own");
        let base = scratch.join("base");
        std::fs::create_dir(&base).unwrap();
        // Under a umask of 002 the scratch directory would be group-writable: a parent refused.
        for dir in [&scratch.to_path_buf(), &base] {
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        let refused = |p: &Path| RuntimeDir::create(p).err().map(|e| e.to_string()).unwrap_or_default();
        // Made by the bridge, or there already and its own: fine.
        let fine = base.join("fine/run");
        assert!(RuntimeDir::create(&fine).is_ok());
        assert!(RuntimeDir::create(&fine).is_ok());
        // Writable by others: anyone could swap the worker package.
        let open = base.join("open");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
        let msg = refused(&open);
        assert!(msg.contains("writable by its group or others (mode 777)") && msg.contains("chmod go-w"), "{msg}");
        // A symlink to a directory: followed, it could be pointed anywhere.
        let link = base.join("link");
        std::os::unix::fs::symlink(&fine, &link).unwrap();
        assert!(refused(&link).contains("is a symlink"), "{}", refused(&link));
        // Under a directory others may rename entries in (no sticky bit): refused; sticky: fine.
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
        let inside = open.join("run");
        assert!(refused(&inside).contains("(a parent of the runtime directory)"), "{}", refused(&inside));
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o1777)).unwrap();
        assert!(RuntimeDir::create(&inside).is_ok());
        // Another user's (only root can make one in a test).
        if nix::unistd::geteuid().is_root() {
            let theirs = base.join("theirs");
            std::fs::create_dir(&theirs).unwrap();
            std::os::unix::fs::chown(&theirs, Some(65534), None).unwrap();
            assert!(refused(&theirs).contains("belongs to uid 65534"), "{}", refused(&theirs));
            // python/ made by someone else inside an otherwise fine directory
            let pkg = base.join("pkg");
            RuntimeDir::create(&pkg).unwrap();
            std::fs::create_dir(pkg.join("python")).unwrap();
            std::os::unix::fs::chown(pkg.join("python"), Some(65534), None).unwrap();
            let rt = RuntimeDir { path: pkg.clone(), remove_on_drop: false };
            let msg = rt.unpack_python().err().map(|e| e.to_string()).unwrap_or_default();
            assert!(msg.contains("python: belongs to uid 65534"), "{msg}");
        }
    }
}
