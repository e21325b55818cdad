//! The interpreter probe: run each pool's `python` once with a tiny script and refuse an
//! interpreter that is not Python, or is older than the worker supports, before any
//! worker is started from it. Without it such a pool passes `check`, then every worker
//! fails at once and the pool answers 503 for ever behind its backoff.
//!
//! `check`, `run` and a reload call [`check_pools`] after the configuration loaded (it
//! runs programs, so it lives outside `config`, which only reads files). Each distinct
//! interpreter is run once per call.
use crate::config::{App, Pool};
use std::collections::HashMap;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// The oldest Python the worker supports (pyo3's abi3-py39; pyproject's requires-python).
pub(crate) const MIN_PYTHON: (u32, u32) = (3, 9);
/// How long an interpreter may take to print its version (a cold start on a busy machine).
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);
/// What the probe prints first, so that other output (a sitecustomize, a wrapper script)
/// cannot be taken for the version.
const MARK: &str = "fcgibridge-probe";
/// Valid Python 2 and 3 alike: an old interpreter must say its version, not a SyntaxError.
/// Python 2 has no sys.implementation; sys.subversion names it there.
const SCRIPT: &str = "import sys; i = getattr(sys, 'implementation', None); \
    sys.stdout.write('fcgibridge-probe %d.%d.%d %s\\n' % (tuple(sys.version_info[:3]) + \
    ((i.name if i else sys.subversion[0].lower()),)))";

/// An interpreter's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Found {
    pub version: (u32, u32, u32),
    /// `cpython`, `pypy`…
    pub implementation: String,
}

/// Why an interpreter was refused.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ProbeError {
    /// `detail`: where a symlink leads and what denies the pool's user, for the operator who
    /// looks at a link that everyone may read.
    #[error("cannot be run{}: {source}{detail}", .run_as.as_ref().map(|u| format!(" as {u}")).unwrap_or_default())]
    Spawn { source: std::io::Error, run_as: Option<String>, detail: String },
    /// The pool's working directory, entered as its user (as a worker's start does).
    /// `detail`: what denies the pool's user, as for `Spawn`.
    #[error("cannot enter the working directory {} ({origin}){}: {source}{detail}", .dir.display(),
        .run_as.as_ref().map(|u| format!(" as {u}")).unwrap_or_default())]
    Chdir { dir: PathBuf, origin: &'static str, source: std::io::Error, run_as: Option<String>, detail: String },
    /// The app file, opened as the pool's account: every worker would fail to import it.
    #[error("{} cannot be read as {run_as}: {source}{detail}", .path.display())]
    App { path: PathBuf, source: std::io::Error, run_as: String, detail: String },
    #[error("did not print its version within {0:?}")]
    Timeout(Duration),
    #[error("is not a Python interpreter (or cannot start): `{shown} -S -c <version probe>` ended ({how}){said}")]
    NotPython { shown: String, how: String, said: String },
    #[error("is Python {}.{}.{} ({}); fcgibridge workers need Python {}.{} or newer",
        .0.version.0, .0.version.1, .0.version.2, .0.implementation, MIN_PYTHON.0, MIN_PYTHON.1)]
    TooOld(Found),
}

/// Every pool's interpreter refused, as lines `file:line:column: pools.NAME.python: why`.
#[derive(Debug, thiserror::Error)]
#[error("{}", .0.join("\n"))]
pub(crate) struct Refused(pub Vec<String>);

/// What makes two pools' probes the same: chroot, interpreter, working directory, uid and gid.
type ProbeKey = (Option<PathBuf>, PathBuf, PathBuf, u32, u32);

/// A probe's key without the working directory: an interpreter that ran for one pool of an
/// account runs for the others (only their directories are new).
fn interpreter_of(key: &ProbeKey) -> (Option<PathBuf>, PathBuf, u32, u32) {
    (key.0.clone(), key.1.clone(), key.3, key.4)
}

/// Probe the interpreter of every pool that runs Python (not `command:` pools), each
/// distinct one once. Blocks for as long as the interpreters take (at most
/// [`PROBE_TIMEOUT`] each); from async code call it through `spawn_blocking`.
pub(crate) fn check_pools(pools: &[Pool]) -> Result<(), Refused> {
    let mut seen: HashMap<ProbeKey, Result<(), ProbeError>> = HashMap::new();
    let mut ran = std::collections::HashSet::new();
    let (euid, egid) = (nix::unistd::geteuid().as_raw(), nix::unistd::getegid().as_raw());
    let mut lines = Vec::new();
    for pool in pools {
        if matches!(pool.app, App::Command(_)) {
            continue;
        }
        // Keyed by the interpreter, its directory and the account that runs it: the first
        // pool that names them is the one probed.
        let iso = &pool.isolation;
        let key =
            (iso.chroot.clone(), pool.python.clone(), pool.chdir.clone(), iso.worker_uid(euid), iso.worker_gid(egid));
        let interpreter = interpreter_of(&key);
        let outcome = seen.entry(key).or_insert_with(|| {
            // A process per interpreter and account, not per pool (a reload probes them all):
            // another directory of an interpreter that ran is looked up as the account.
            if pool.isolation.chroot.is_none() && ran.contains(&interpreter) {
                return may_enter(pool);
            }
            let outcome = probe(&pool.python, pool).map(drop);
            if outcome.is_ok() {
                ran.insert(interpreter);
            }
            outcome
        });
        match outcome {
            Ok(_) => {
                if let Err(e) = may_read_app(pool) {
                    lines.push(format!("{}: {}: {e}", pool.app_at.at, pool.app_at.key));
                }
            }
            Err(e @ ProbeError::Chdir { .. }) => {
                lines.push(format!("{}: {}: {e}", pool.chdir_at.at, pool.chdir_at.key))
            }
            Err(e) => {
                let at = &pool.python_at;
                let (what, then) = match &at.chosen_by {
                    _ if at.written => (pool.python.display().to_string(), ""),
                    Some(by) => (
                        format!("{} ({by})", pool.python.display()),
                        "; set python: to the interpreter the script needs",
                    ),
                    None => (format!("{} (the default python3)", pool.python.display()), ""),
                };
                lines.push(format!("{}: {}: {what} {e}{then}", at.at, at.key));
            }
        }
    }
    if lines.is_empty() {
        Ok(())
    } else {
        Err(Refused(lines))
    }
}

/// Run `python` as a worker of `pool` would start it (its chroot, `env` and account, then
/// its working directory entered as that account: an interpreter or a directory the pool's
/// user may not use is refused here, not at the first spawn) with the version script.
pub(crate) fn probe(python: &Path, pool: &Pool) -> Result<Found, ProbeError> {
    use super::spawn::{Step, StepLog};
    let chroot = pool.isolation.chroot.as_deref();
    let (exe, workdir) = match chroot {
        Some(root) => (super::inside_chroot(root, python), super::inside_chroot(root, &pool.chdir)),
        None => (python.to_path_buf(), pool.chdir.clone()),
    };
    let mut cmd = Command::new(&exe);
    // -S: no site import, so the answer depends on the interpreter alone (and comes fast).
    cmd.arg("-S").arg("-c").arg(SCRIPT).envs(&pool.env);
    let creds = super::isolate::Credentials::of(&pool.isolation);
    let run_as = creds.run_as().map(str::to_owned);
    let spawn_error = |source: std::io::Error| ProbeError::Spawn { source, run_as: None, detail: String::new() };
    let cstr = |p: &Path| std::ffi::CString::new(p.as_os_str().as_bytes()).map_err(|e| spawn_error(e.into()));
    let root = chroot.map(cstr).transpose()?;
    let dir = cstr(&workdir)?;
    let steps = StepLog::new().map_err(spawn_error)?;
    let step = steps.marker();
    // SAFETY: only chroot, chdir, setgroups, setresgid, setresuid and write run in the child
    // here (and run_probe's calls), on data made before the fork.
    unsafe {
        use std::os::unix::process::CommandExt;
        cmd.pre_exec(move || {
            if let Some(root) = &root {
                step.mark(Step::Chroot);
                if libc::chroot(root.as_ptr()) == -1 || libc::chdir(c"/".as_ptr()) == -1 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            step.mark(Step::Credentials);
            creds.apply()?;
            // After the credentials, as a worker's start does (isolate.rs): not as root.
            step.mark(Step::Chdir);
            if libc::chdir(dir.as_ptr()) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            step.mark(Step::Exec);
            Ok(())
        });
    }
    match run_probe(cmd, &exe, PROBE_TIMEOUT) {
        Err(ProbeError::Spawn { source, .. }) if steps.failed_at() == Some(Step::Chdir) => {
            let detail = if chroot.is_none() { why_not_entered(pool, &source) } else { String::new() };
            Err(ProbeError::Chdir { dir: workdir, origin: chdir_origin(pool), source, run_as, detail })
        }
        Err(ProbeError::Spawn { source, .. }) => {
            let detail = if chroot.is_none() { why_not_run(python, pool, &source) } else { String::new() };
            Err(ProbeError::Spawn { source, run_as, detail })
        }
        other => other,
    }
}

/// Whether the pool's workers may open its app file, asked of the kernel as their account
/// (ACLs count): the thread's filesystem credentials switched to it
/// ([`Reader::acting`](super::access::Reader::acting)), the file opened and closed. Only for
/// a file app whose workers run as another account than the bridge's, outside a chroot; a
/// bridge that cannot switch (not root) leaves it to the worker's start.
fn may_read_app(pool: &Pool) -> Result<(), ProbeError> {
    use std::os::unix::fs::OpenOptionsExt;
    let App::File { path, .. } = &pool.app else { return Ok(()) };
    let Some(reader) = super::access::Reader::of(&pool.isolation) else { return Ok(()) };
    if pool.isolation.chroot.is_some() {
        return Ok(());
    }
    // O_NONBLOCK: a FIFO named as the app must not hang the check.
    let open = || std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open(path).map(drop);
    let Ok(Err(source)) = reader.acting(open) else { return Ok(()) };
    let denied = source.kind() == std::io::ErrorKind::PermissionDenied;
    let detail = std::fs::canonicalize(path)
        .and_then(|real| std::fs::metadata(&real).map(|meta| reader.why_unreadable(&real, &meta)))
        .ok()
        .filter(|_| denied)
        .map(|why| format!("; {why}"))
        .unwrap_or_default();
    let run_as = super::isolate::Credentials::of(&pool.isolation).run_as().unwrap_or_default().to_owned();
    Err(ProbeError::App { path: path.clone(), source, run_as, detail })
}

/// Whether the pool's workers may enter its working directory. For another account than the
/// bridge's the kernel judges, with the thread's filesystem credentials switched to it
/// ([`Reader::acting`](super::access::Reader::acting)): ACLs, security modules and a
/// root_squash NFS count as for the workers; the mode bits only explain a refusal, and
/// judge alone where the thread cannot switch (a bridge that is not root).
fn may_enter(pool: &Pool) -> Result<(), ProbeError> {
    let chdir_error = |source: std::io::Error, run_as: Option<String>| ProbeError::Chdir {
        dir: pool.chdir.clone(),
        origin: chdir_origin(pool),
        detail: why_not_entered(pool, &source),
        source,
        run_as,
    };
    let Some(reader) = super::access::Reader::of(&pool.isolation) else {
        return nix::unistd::access(&pool.chdir, nix::unistd::AccessFlags::X_OK)
            .map_err(|e| chdir_error(std::io::Error::from(e), None));
    };
    let run_as = super::isolate::Credentials::of(&pool.isolation).run_as().map(str::to_owned);
    if let Ok(entered) = reader.acting(|| searchable(&pool.chdir)) {
        return entered.map_err(|e| chdir_error(e, run_as));
    }
    match std::fs::metadata(&pool.chdir) {
        Err(e) => Err(chdir_error(e, run_as)),
        Ok(m) if !m.is_dir() => Err(chdir_error(std::io::Error::from_raw_os_error(libc::ENOTDIR), run_as)),
        Ok(_) => match reader.search_blocker(&pool.chdir) {
            None => Ok(()),
            Some(_) => Err(chdir_error(std::io::Error::from_raw_os_error(libc::EACCES), run_as)),
        },
    }
}

/// Ok when the calling thread may make `dir` its working directory: every directory on the
/// way and `dir` itself searched. Opening `dir/.` asks the kernel to search `dir` too (for
/// `.`), which an `O_PATH` open of `dir` alone would not; nothing is read.
fn searchable(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let flags = libc::O_PATH | libc::O_DIRECTORY;
    std::fs::OpenOptions::new().read(true).custom_flags(flags).open(dir.join(".")).map(drop)
}

/// For a working directory the pool's user was refused: the first directory on the way
/// whose mode bits deny it, else that they allow it (an ACL or another layer refused).
fn why_not_entered(pool: &Pool, source: &std::io::Error) -> String {
    let Some(reader) = super::access::Reader::of(&pool.isolation) else { return String::new() };
    if source.kind() != std::io::ErrorKind::PermissionDenied {
        return String::new();
    }
    match reader.search_blocker(&pool.chdir) {
        Some(why) => format!("; {why}"),
        None => "; the mode bits on the way allow it: an ACL, a security module or a network filesystem denies it"
            .to_owned(),
    }
}

/// Where the pool's working directory comes from, for an error about it.
fn chdir_origin(pool: &Pool) -> &'static str {
    match &pool.app {
        _ if pool.chdir_at.written => "pool `chdir:`",
        App::File { .. } => "the pool's default `chdir:`, the app file's directory",
        _ => "the pool's default `chdir:`, the configuration file's directory",
    }
}

/// What an interpreter that could not be run leads to when it is a symlink and, when the
/// pool's user was denied, the first directory (or the file) in that user's way.
fn why_not_run(python: &Path, pool: &Pool, source: &std::io::Error) -> String {
    let target = super::spawn::symlink_target(python).map(|t| format!("it is a symlink to {t}"));
    let blocker = match super::access::Reader::of(&pool.isolation) {
        Some(reader) if source.kind() == std::io::ErrorKind::PermissionDenied => reader.execute_blocker(python),
        _ => None,
    };
    match (target, blocker) {
        (Some(t), Some(b)) => format!("; {t}, and {b}"),
        (Some(t), None) => format!("; {t}"),
        (None, Some(b)) => format!("; {b}"),
        (None, None) => String::new(),
    }
}

/// Start `cmd`, wait for it at most `timeout`, and read its answer.
fn run_probe(mut cmd: Command, exe: &Path, timeout: Duration) -> Result<Found, ProbeError> {
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    // SAFETY: only setpgid, prctl, sigprocmask and sigaction run in the child.
    unsafe {
        use std::os::unix::process::CommandExt;
        cmd.pre_exec(|| {
            // Its own group, so a timeout kills whatever it started too (never its own
            // session: see spawn.rs).
            if libc::setpgid(0, 0) == -1
                || libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0) == -1
            {
                return Err(std::io::Error::last_os_error());
            }
            // A reload signal sent to the whole service must not fail the probe.
            super::ignore_operator_signals()
        });
    }
    let spawn_error = |source| ProbeError::Spawn { source, run_as: None, detail: String::new() };
    let child = super::orphans::spawn_own(|| cmd.spawn(), |c| Some(c.id())).map_err(spawn_error)?;
    let pid = child.id() as libc::pid_t;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let output = match rx.recv_timeout(timeout) {
        Ok(out) => out.map_err(spawn_error)?,
        Err(_) => {
            let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
            return Err(ProbeError::Timeout(timeout));
        }
    };
    let stdout = String::from_utf8_lossy(&output.stdout);
    if output.status.success() {
        if let Some(found) = stdout.lines().find_map(parse) {
            let (major, minor, _) = found.version;
            return if (major, minor) >= MIN_PYTHON { Ok(found) } else { Err(ProbeError::TooOld(found)) };
        }
    }
    let how = super::describe_exit(output.status);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let said = stderr.lines().chain(stdout.lines()).map(str::trim).find(|l| !l.is_empty());
    let said = match said {
        Some(line) => format!(": {}", line.chars().take(200).collect::<String>()),
        None => " and printed nothing".to_owned(),
    };
    Err(ProbeError::NotPython { shown: exe.display().to_string(), how, said })
}

/// `fcgibridge-probe 3.11.7 cpython` into its parts.
fn parse(line: &str) -> Option<Found> {
    let mut words = line.trim().split(' ');
    if words.next()? != MARK {
        return None;
    }
    let mut nums = words.next()?.split('.').map(|n| n.parse::<u32>().ok());
    let version = (nums.next()??, nums.next()??, nums.next()??);
    let implementation = words.next().filter(|w| !w.is_empty())?.to_owned();
    Some(Found { version, implementation })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_probe_line_is_parsed() {
        let f = parse("fcgibridge-probe 2.7.18 cpython").unwrap();
        assert_eq!(f, Found { version: (2, 7, 18), implementation: "cpython".into() });
        assert_eq!(parse("fcgibridge-probe 3.13.0 pypy\n").unwrap().version, (3, 13, 0));
        for bad in [
            "",
            "Python 3.11.2",
            "fcgibridge-probe 3.x.1 cpython",
            "fcgibridge-probe 3.11 cpython",
            "fcgibridge-probe 3.11.2",
        ] {
            assert_eq!(parse(bad), None, "{bad}");
        }
    }

    fn sh(script: &str, timeout: Duration) -> Result<Found, ProbeError> {
        let mut cmd = Command::new("/bin/sh");
        cmd.arg("-c").arg(script);
        run_probe(cmd, Path::new("/bin/sh"), timeout)
    }

    #[test]
    fn answers_are_judged() {
        let long = Duration::from_secs(30);
        assert_eq!(sh("echo fcgibridge-probe 3.9.0 cpython", long).unwrap().version, (3, 9, 0));
        let old = sh("echo fcgibridge-probe 3.8.18 cpython", long).unwrap_err().to_string();
        assert_eq!(old, "is Python 3.8.18 (cpython); fcgibridge workers need Python 3.9 or newer");
        // Output around the answer (a wrapper's chatter) does not matter; a failed run does.
        assert!(sh("echo hello; echo fcgibridge-probe 3.12.1 cpython; echo bye", long).is_ok());
        let failed = sh("echo fcgibridge-probe 3.12.1 cpython; echo broken >&2; exit 1", long).unwrap_err().to_string();
        assert!(failed.ends_with("ended (exit status 1): broken"), "{failed}");
        let silent = sh("true", long).unwrap_err().to_string();
        assert!(silent.ends_with("ended (exit status 0) and printed nothing"), "{silent}");
    }

    /// A scratch directory that others may search, and a [`stranger_pool`] in it.
    fn stranger_scratch(name: &str) -> Option<(crate::scratch::ScratchDir, Pool)> {
        use std::os::unix::fs::PermissionsExt;
        let dir = crate::scratch::scratch_dir(name);
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let pool = stranger_pool(&dir)?;
        Some((dir, pool))
    }

    /// A pool whose workers run as uid 4001 (no account needed: the ids are set directly),
    /// when this test runs as root and every directory above the scratch directory may be
    /// searched by others; None otherwise.
    fn stranger_pool(dir: &Path) -> Option<Pool> {
        use crate::config::isolation::{Account, Isolation, RunAs};
        use std::os::unix::fs::MetadataExt;
        let open_above = dir.ancestors().all(|d| std::fs::metadata(d).is_ok_and(|m| m.mode() & 0o001 != 0));
        if !nix::unistd::geteuid().is_root() || !open_above {
            return None;
        }
        let user = RunAs {
            account: Account { written: "4001".into(), id: 4001 },
            primary_gid: 4001,
            member_of: vec![4001],
            home: "/".into(),
            login: "stranger".into(),
        };
        let isolation = Isolation { user: Some(user), ..Isolation::default() };
        Some(Pool { isolation, chdir: dir.to_owned(), ..Pool::for_tests() })
    }

    #[test]
    fn the_working_directory_is_entered_as_the_pools_user() {
        use std::os::unix::fs::PermissionsExt;
        let Some((dir, mut pool)) = stranger_scratch("probe-chdir") else { return };
        let private = dir.join("private");
        std::fs::create_dir(&private).unwrap();
        std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o700)).unwrap();
        // /bin/true is no Python: a directory the user may enter gets as far as the interpreter.
        let err = probe(Path::new("/bin/true"), &pool).unwrap_err();
        assert!(matches!(err, ProbeError::NotPython { .. }), "{err}");
        pool.chdir = private.clone();
        pool.chdir_at.written = true;
        let err = probe(Path::new("/bin/true"), &pool).unwrap_err().to_string();
        assert_eq!(
            err,
            format!(
                "cannot enter the working directory {} (pool `chdir:`) as user stranger (uid 4001, gid 4001): \
                 Permission denied (os error 13); {} has mode 0700 and owner uid 0",
                private.display(),
                private.display()
            )
        );
        // Reported at `chdir:`, not at `python:`.
        pool.chdir_at = crate::config::KeyAt {
            at: "conf.d/x.yaml:7:5".into(),
            key: "pools.p.chdir".into(),
            written: true,
            chosen_by: None,
        };
        let Err(Refused(lines)) = check_pools(&[Pool { python: "/bin/true".into(), ..pool }]) else { panic!() };
        assert_eq!(lines.len(), 1);
        assert!(
            lines[0].starts_with("conf.d/x.yaml:7:5: pools.p.chdir: cannot enter the working directory "),
            "{lines:?}"
        );
    }

    #[test]
    fn another_directory_of_an_interpreter_that_ran_is_looked_up_as_the_pools_user_acls_included() {
        use crate::supervise::fs_creds::tests::{set_acl, ACL_USER};
        use std::os::unix::fs::PermissionsExt;
        let Some((dir, mut pool)) = stranger_scratch("probe-enter") else { return };
        let made = |name: &str, mode: u32| {
            let d = dir.join(name);
            std::fs::create_dir(&d).unwrap();
            std::fs::set_permissions(&d, std::fs::Permissions::from_mode(mode)).unwrap();
            d
        };
        let mut entered = |d: &Path| {
            pool.chdir = d.to_owned();
            may_enter(&pool).map_err(|e| e.to_string())
        };
        let refused = |d: &Path, why: &str| {
            format!(
                "cannot enter the working directory {} (the pool's default `chdir:`, the configuration file's \
                 directory) as user stranger (uid 4001, gid 4001): Permission denied (os error 13); {why}",
                d.display()
            )
        };
        assert_eq!(entered(&made("open", 0o755)), Ok(()));
        // Its entries may be listed, not searched: the directory itself is looked up too.
        let listable = made("listable", 0o744);
        assert_eq!(
            entered(&listable),
            Err(refused(&listable, &format!("{} has mode 0744 and owner uid 0", listable.display())))
        );
        // The mode bits deny it; an ACL entry lets the user search it.
        let granted = made("granted", 0o700);
        set_acl(&granted, &[(ACL_USER, 1, 4001)]);
        assert_eq!(entered(&granted), Ok(()));
        // The mode bits allow it; an ACL entry for the user denies it.
        let denied = made("denied", 0o755);
        set_acl(&denied, &[(ACL_USER, 0, 4001)]);
        let why = "the mode bits on the way allow it: an ACL, a security module or a network filesystem denies it";
        assert_eq!(entered(&denied), Err(refused(&denied, why)));
        // Below a directory it may not search: that one is named.
        let inner = made("private", 0o700).join("wd");
        std::fs::create_dir(&inner).unwrap();
        let private = format!("{} has mode 0700 and owner uid 0", dir.join("private").display());
        assert_eq!(entered(&inner), Err(refused(&inner, &private)));
        // What does not exist, or is no directory, as the kernel says.
        let missing = entered(&dir.join("none")).unwrap_err();
        assert!(missing.ends_with("No such file or directory (os error 2)"), "{missing}");
        std::fs::write(dir.join("file"), "").unwrap();
        let file = entered(&dir.join("file")).unwrap_err();
        assert!(file.ends_with("Not a directory (os error 20)"), "{file}");
    }

    #[test]
    fn an_app_file_the_pools_user_may_not_read_is_refused_at_app() {
        use std::os::unix::fs::PermissionsExt;
        let Some((dir, mut pool)) = stranger_scratch("probe-app") else { return };
        let app = dir.join("app.fcgi");
        std::fs::write(&app, "#!/usr/bin/python3\n").unwrap();
        std::fs::set_permissions(&app, std::fs::Permissions::from_mode(0o644)).unwrap();
        pool.app = App::File { path: app.clone(), callable: "__main__".into() };
        pool.app_at = crate::config::KeyAt {
            at: "conf.d/x.yaml:3:5".into(),
            key: "pools.p.app".into(),
            written: true,
            chosen_by: None,
        };
        assert!(may_read_app(&pool).is_ok());
        std::fs::set_permissions(&app, std::fs::Permissions::from_mode(0o600)).unwrap();
        let err = may_read_app(&pool).unwrap_err().to_string();
        assert_eq!(
            err,
            format!(
                "{} cannot be read as user stranger (uid 4001, gid 4001): Permission denied (os error 13); \
                 {} has mode 0600 and owner uid 0",
                app.display(),
                app.display()
            )
        );
        // The mode bits allow it, an ACL entry for the user does not: the kernel's answer counts.
        std::fs::set_permissions(&app, std::fs::Permissions::from_mode(0o644)).unwrap();
        crate::supervise::fs_creds::tests::set_acl(&app, &[(crate::supervise::fs_creds::tests::ACL_USER, 0, 4001)]);
        let err = may_read_app(&pool).unwrap_err().to_string();
        assert!(
            err.ends_with(
                "(os error 13); the mode bits allow it (0644, owner uid 0): an ACL or a security module denies it"
            ),
            "{err}"
        );
        // check_pools says so at `app:` once the interpreter ran (one every user may run).
        let python = PathBuf::from("/usr/bin/python3");
        if !python.exists() {
            return;
        }
        let Err(Refused(lines)) = check_pools(&[Pool { python, ..pool }]) else { panic!("refused") };
        assert!(lines[0].starts_with("conf.d/x.yaml:3:5: pools.p.app: "), "{lines:?}");
    }

    #[test]
    fn an_interpreter_the_user_may_not_run_names_its_symlink_target_and_what_denies_it() {
        use std::os::unix::fs::PermissionsExt;
        let Some((dir, pool)) = stranger_scratch("probe-denied") else { return };
        let private = dir.join("private");
        std::fs::create_dir(&private).unwrap();
        std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o700)).unwrap();
        let real = private.join("python3");
        std::fs::copy("/bin/true", &real).unwrap();
        let link = dir.join("python");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let err = probe(&link, &pool).unwrap_err().to_string();
        assert_eq!(
            err,
            format!(
                "cannot be run as user stranger (uid 4001, gid 4001): Permission denied (os error 13); \
                 it is a symlink to {}, and {} has mode 0700 and owner uid 0",
                real.display(),
                private.display()
            )
        );
        // Not a symlink: the directory alone.
        let err = probe(&real, &pool).unwrap_err().to_string();
        assert!(err.ends_with(&format!("(os error 13); {} has mode 0700 and owner uid 0", private.display())), "{err}");
    }

    #[test]
    fn an_interpreter_a_shebang_chose_is_refused_at_the_scripts_first_line() {
        let python_at = |at: &str, written, chosen_by: Option<&str>| crate::config::KeyAt {
            at: at.into(),
            key: "pools.p.python".into(),
            written,
            chosen_by: chosen_by.map(str::to_owned),
        };
        let refused = |python_at| {
            let pool = Pool { python: "/bin/true".into(), python_at, ..Pool::for_tests() };
            let Err(Refused(lines)) = check_pools(&[pool]) else { panic!("/bin/true passed the probe") };
            lines.join("\n")
        };
        let why = "is not a Python interpreter (or cannot start): `/bin/true -S -c <version probe>` ended (exit \
                   status 0) and printed nothing";
        let by = "the app file's shebang, as python: is not set";
        assert_eq!(
            refused(python_at("/srv/app/app.fcgi:1", false, Some(by))),
            format!(
                "/srv/app/app.fcgi:1: pools.p.python: /bin/true ({by}) {why}; set python: to the interpreter the \
                 script needs"
            )
        );
        assert_eq!(
            refused(python_at("conf.d/x.yaml:4:5", true, None)),
            format!("conf.d/x.yaml:4:5: pools.p.python: /bin/true {why}")
        );
        assert_eq!(
            refused(python_at("conf.d/x.yaml:2:3", false, None)),
            format!("conf.d/x.yaml:2:3: pools.p.python: /bin/true (the default python3) {why}")
        );
    }

    #[test]
    fn a_hanging_interpreter_times_out_and_is_killed() {
        let dir = crate::scratch::scratch_dir("probe-timeout");
        let pid_file = dir.join("pid");
        let started = std::time::Instant::now();
        // A child of its own too: the whole process group goes.
        let script = format!("echo $$ > {}; sleep 30 & sleep 30", pid_file.display());
        // Long enough for a loaded machine's shell to write its pid first.
        let err = sh(&script, Duration::from_secs(3)).unwrap_err();
        assert!(matches!(err, ProbeError::Timeout(_)), "{err}");
        assert!(started.elapsed() < Duration::from_secs(20));
        let pgid: libc::pid_t = std::fs::read_to_string(&pid_file).unwrap().trim().parse().unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        // No signal: only asks whether the group has members.
        while nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pgid), None).is_ok() {
            assert!(std::time::Instant::now() < deadline, "the probe's process group outlived its timeout");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
