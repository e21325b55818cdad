//! The isolation keys of a pool (user, group, groups, chroot, umask, clear-env, rlimits,
//! nice, allow-root, script-user, script-group): parsed, with every user and group name
//! resolved to its id at load time — the forked child may only make async-signal-safe
//! calls, so no name lookups can happen there (see supervise/isolate.rs).
use super::error::{ConfigError, Source};
use super::file::RawPool;
use super::locate::KeyPath;
use super::model::App;
use super::units::parse_size;
use super::Privileges;
use std::cell::RefCell;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// RLIM_INFINITY as written in the configuration.
pub const UNLIMITED: u64 = u64::MAX;

/// The smallest `rlimit-as` accepted. RLIMIT_AS counts address space, not memory in use: a
/// bare CPython maps 16MiB before it runs a line, and a worker with its native module and
/// one thread 31MiB even when capped (glibc then forgoes its 64MiB per-thread malloc arenas);
/// every further thread adds its stack (8MiB by default). Below this nothing is left for an
/// app and its requests, and a value this small is nearly always a unit mistake
/// (`rlimit-as: 512` is 512 bytes).
pub const MIN_RLIMIT_AS: u64 = 64 << 20;

/// A user or group as the operator wrote it (a name or a number), with its id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    pub written: String,
    pub id: u32,
}

/// The account a pool's workers run as (`user:`), looked up in the user database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunAs {
    pub account: Account,
    /// The user's primary group: used when `group:` is not set.
    pub primary_gid: u32,
    /// The user's groups from the group database: used when `groups:` is not set.
    pub member_of: Vec<u32>,
    pub home: PathBuf,
    pub login: String,
}

/// The resolved isolation settings of one pool (all off by default).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Isolation {
    pub user: Option<RunAs>,
    pub group: Option<Account>,
    /// Supplementary groups; `None` = the user's own groups (when `user:` is set).
    pub groups: Option<Vec<Account>>,
    pub chroot: Option<PathBuf>,
    pub umask: Option<u32>,
    /// Start workers with only the pool's `env:` (plus what the worker needs).
    pub clear_env: bool,
    pub rlimit_nofile: Option<u64>,
    /// Processes and threads of the workers' real user (RLIMIT_NPROC).
    pub rlimit_nproc: Option<u64>,
    /// Bytes; [`UNLIMITED`] for no limit.
    pub rlimit_core: Option<u64>,
    /// Bytes of address space (RLIMIT_AS): a hard cap on what one worker can map.
    pub rlimit_as: Option<u64>,
    pub nice: Option<i32>,
    pub allow_root: bool,
    pub script_user: Option<Account>,
    pub script_group: Option<Account>,
    /// `preload: true`: workers are forked from a template that imported the app once
    /// (supervise/template.rs). Kept here because it, too, decides how a worker process starts.
    pub preload: bool,
}

impl Isolation {
    /// The uid a worker will run as, given the bridge's effective uid.
    pub fn worker_uid(&self, bridge_uid: u32) -> u32 {
        self.user.as_ref().map_or(bridge_uid, |u| u.account.id)
    }

    /// The gid a worker will run as: `group:`, else the user's primary group.
    pub fn worker_gid(&self, bridge_gid: u32) -> u32 {
        match (&self.group, &self.user) {
            (Some(g), _) => g.id,
            (None, Some(u)) => u.primary_gid,
            (None, None) => bridge_gid,
        }
    }

    /// The keys as `fcgibridge check` prints them: (key, value, whether the value is a string to quote).
    pub fn render(&self) -> Vec<(&'static str, String, bool)> {
        let mut out = Vec::new();
        if let Some(u) = &self.user {
            out.push(("user", u.account.written.clone(), true));
        }
        if let Some(g) = &self.group {
            out.push(("group", g.written.clone(), true));
        }
        if let Some(groups) = &self.groups {
            let items: Vec<String> = groups.iter().map(|g| format!("\"{}\"", g.written.replace('"', "\\\""))).collect();
            out.push(("groups", format!("[{}]", items.join(", ")), false));
        }
        if let Some(c) = &self.chroot {
            out.push(("chroot", c.display().to_string(), true));
        }
        if let Some(m) = self.umask {
            out.push(("umask", format!("\"{m:04o}\""), false));
        }
        out.push(("clear-env", self.clear_env.to_string(), false));
        if let Some(n) = self.rlimit_nofile {
            out.push(("rlimit-nofile", n.to_string(), false));
        }
        if let Some(n) = self.rlimit_nproc {
            out.push(("rlimit-nproc", n.to_string(), false));
        }
        if let Some(c) = self.rlimit_core {
            out.push(("rlimit-core", if c == UNLIMITED { "unlimited".into() } else { c.to_string() }, false));
        }
        if let Some(n) = self.rlimit_as {
            out.push(("rlimit-as", super::units::SizeDisplay(n).to_string(), false));
        }
        if let Some(n) = self.nice {
            out.push(("nice", n.to_string(), false));
        }
        out.push(("allow-root", self.allow_root.to_string(), false));
        if let Some(u) = &self.script_user {
            out.push(("script-user", u.written.clone(), true));
        }
        if let Some(g) = &self.script_group {
            out.push(("script-group", g.written.clone(), true));
        }
        out.push(("preload", self.preload.to_string(), false));
        out
    }
}

/// The isolation keys of a `pools.NAME` entry, taken out of it before the rest is resolved.
#[derive(Debug, Default)]
pub struct RawIsolation {
    user: Option<String>,
    group: Option<String>,
    groups: Option<Vec<String>>,
    chroot: Option<String>,
    umask: Option<String>,
    clear_env: Option<bool>,
    rlimit_nofile: Option<u64>,
    rlimit_nproc: Option<u64>,
    rlimit_core: Option<String>,
    rlimit_as: Option<super::units::ByteSize>,
    nice: Option<i32>,
    allow_root: Option<bool>,
    script_user: Option<String>,
    script_group: Option<String>,
    preload: Option<bool>,
}

impl RawIsolation {
    /// `chroot` as written (a chroot pool does not read its script's shebang).
    pub fn chroot(&self) -> Option<&str> {
        self.chroot.as_deref()
    }

    /// Move the isolation keys out of `raw`.
    pub fn take(raw: &mut RawPool) -> Self {
        Self {
            user: raw.user.take(),
            group: raw.group.take(),
            groups: raw.groups.take(),
            chroot: raw.chroot.take(),
            umask: raw.umask.take(),
            clear_env: raw.clear_env.take(),
            rlimit_nofile: raw.rlimit_nofile.take(),
            rlimit_nproc: raw.rlimit_nproc.take(),
            rlimit_core: raw.rlimit_core.take(),
            rlimit_as: raw.rlimit_as.take(),
            nice: raw.nice.take(),
            allow_root: raw.allow_root.take(),
            script_user: raw.script_user.take(),
            script_group: raw.script_group.take(),
            preload: raw.preload.take(),
        }
    }
}

/// The bridge's own effective ids, as the privilege checks see them.
#[derive(Debug, Clone, Copy)]
pub struct BridgeIds {
    pub uid: u32,
    pub gid: u32,
}

#[cfg(not(test))]
pub(super) fn bridge_ids() -> BridgeIds {
    BridgeIds { uid: nix::unistd::geteuid().as_raw(), gid: nix::unistd::getegid().as_raw() }
}

#[cfg(test)]
thread_local! {
    /// Unit tests pretend to be an unprivileged bridge (uid 4242) unless a test says otherwise,
    /// so that loading a configuration gives the same result whoever runs `cargo test`.
    pub static TEST_BRIDGE_IDS: std::cell::Cell<BridgeIds> = const { std::cell::Cell::new(BridgeIds { uid: 4242, gid: 4242 }) };
}

#[cfg(test)]
pub(super) fn bridge_ids() -> BridgeIds {
    TEST_BRIDGE_IDS.with(|c| c.get())
}

/// The user database's answers for one template's check at load, or one instance's making:
/// its `user:` is read by min-uid and by the pool's checks (template.rs, instances.rs), and
/// asked of NSS — files, or LDAP or SSSD over the network — once.
#[derive(Debug, Default)]
pub struct Accounts(RefCell<HashMap<String, nix::Result<Option<nix::unistd::User>>>>);

impl Accounts {
    /// [`find_account`], asked once per `written`.
    pub fn find(&self, written: &str) -> nix::Result<Option<nix::unistd::User>> {
        self.0.borrow_mut().entry(written.to_owned()).or_insert_with(|| find_account(written)).clone()
    }
}

#[cfg(test)]
thread_local! {
    /// What [`find_account`] asked the user database, for tests that count the lookups.
    pub static USER_LOOKUPS: RefCell<Vec<String>> = const { RefCell::new(Vec::new()) };
}

/// The account `written` names (a name, or a uid in digits): `Ok(None)` when there is no
/// such account, `Err` when the lookup itself failed (NSS could not ask LDAP or SSSD).
pub fn find_account(written: &str) -> nix::Result<Option<nix::unistd::User>> {
    #[cfg(test)]
    USER_LOOKUPS.with(|l| l.borrow_mut().push(written.to_owned()));
    match written.parse::<u32>() {
        Ok(id) => nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(id)),
        Err(_) => nix::unistd::User::from_name(written),
    }
}

/// Whether the bridge runs as root, as the privilege checks see it.
pub fn bridge_is_root() -> bool {
    bridge_ids().uid == 0
}

/// What a pool's worker runs, already resolved: its app, the directory it starts in and its
/// interpreter (a chroot must contain them).
pub struct Runs<'a> {
    pub app: &'a App,
    pub chdir: &'a Path,
    pub python: &'a Path,
}

/// Resolve and check the isolation keys of pool `here`; with [`Privileges::Skip`], what
/// this process's privileges allow is not checked.
pub fn resolve(
    src: &Source,
    here: &KeyPath,
    dir: &Path,
    mut raw: RawIsolation,
    runs: Runs<'_>,
    (privileges, accounts): (Privileges, Option<&Accounts>),
) -> Result<Isolation, ConfigError> {
    let Runs { app, chdir, python } = runs;
    let me = (privileges == Privileges::Check).then(bridge_ids);
    let written_chroot = raw.chroot.take();
    let (mut iso, mut errs) = accounts_and_limits(src, here, raw, accounts);
    match chroot(dir, written_chroot.as_deref(), app, chdir, python) {
        Ok(c) => iso.chroot = c,
        Err(m) => errs.push(src.invalid(&here.key("chroot"), m)),
    }
    ConfigError::from_all(errs)?;
    checks(src, here, &iso, app, me)?;
    Ok(iso)
}

/// The isolation keys of a pool whose app, chdir or python did not resolve (or, for a
/// template, depend on the key): what needs none of them is still checked — accounts and
/// groups looked up, limits, the privileges the bridge can grant — so that one run of
/// `check` names these mistakes too. The chroot and the script's owner are not.
pub fn check_without_app(
    src: &Source,
    here: &KeyPath,
    mut raw: RawIsolation,
    (privileges, accounts): (Privileges, Option<&Accounts>),
) -> Result<(), ConfigError> {
    raw.chroot = None;
    let (iso, errs) = accounts_and_limits(src, here, raw, accounts);
    ConfigError::from_all(errs)?;
    let me = (privileges == Privileges::Check).then(bridge_ids);
    privileges_allow(src, here, &iso, me)
}

/// Every key but `chroot` parsed and its accounts looked up, with an error for each bad one
/// (every key is checked, so that one run of `check` names each mistake). `accounts`: the
/// lookups a template's check shares (None: each is asked).
fn accounts_and_limits(
    src: &Source,
    here: &KeyPath,
    raw: RawIsolation,
    accounts: Option<&Accounts>,
) -> (Isolation, Vec<ConfigError>) {
    let mut errs = Vec::new();
    let mut bad = |key: KeyPath, msg: String| errs.push(src.invalid(&key, msg));
    let key = |name: &str| here.key(name);

    let user = raw.user.as_deref().and_then(|text| lookup_user(text, accounts).map_err(|m| bad(key("user"), m)).ok());
    let group = raw.group.as_deref().and_then(|text| lookup_group(text).map_err(|m| bad(key("group"), m)).ok());
    let groups = raw.groups.map(|list| {
        let found = list.iter().enumerate().map(|(i, text)| lookup_group(text).map_err(|m| (i, m)));
        found.filter_map(|r| r.map_err(|(i, m)| bad(key("groups").index(i), m)).ok()).collect::<Vec<_>>()
    });
    let script_user = raw
        .script_user
        .as_deref()
        .and_then(|text| lookup_user(text, accounts).map(|u| u.account).map_err(|m| bad(key("script-user"), m)).ok());
    let script_group =
        raw.script_group.as_deref().and_then(|text| lookup_group(text).map_err(|m| bad(key("script-group"), m)).ok());
    let umask = raw.umask.as_deref().and_then(|text| {
        let mode = super::resolve::parse_mode(text).ok().filter(|m| *m <= 0o777);
        mode.ok_or_else(|| bad(key("umask"), format!("{text:?} is not an octal umask; write e.g. \"0027\""))).ok()
    });
    let rlimit_core = match raw.rlimit_core.as_deref() {
        None => None,
        Some("unlimited") | Some("infinity") => Some(UNLIMITED),
        Some(text) => parse_size(text).map_err(|m| bad(key("rlimit-core"), format!("{m}, or \"unlimited\""))).ok(),
    };
    if raw.rlimit_nofile == Some(0) {
        bad(key("rlimit-nofile"), "must be at least 1 (a worker needs descriptors for its socket and pipes)".into());
    }
    if raw.rlimit_nproc == Some(0) {
        bad(key("rlimit-nproc"), "must be at least 1 (it counts the worker itself and its threads)".into());
    }
    let rlimit_as = raw.rlimit_as.map(|b| b.0);
    if let Some(n) = rlimit_as.filter(|n| *n < MIN_RLIMIT_AS) {
        bad(key("rlimit-as"), rlimit_as_too_small(n));
    }
    if let Some(n) = raw.nice.filter(|n| !(-20..=19).contains(n)) {
        bad(key("nice"), format!("{n} is outside -20..19"));
    }
    let iso = Isolation {
        user,
        group,
        groups,
        chroot: None,
        umask,
        clear_env: raw.clear_env.unwrap_or(false),
        rlimit_nofile: raw.rlimit_nofile,
        rlimit_nproc: raw.rlimit_nproc,
        rlimit_core,
        rlimit_as,
        nice: raw.nice,
        allow_root: raw.allow_root.unwrap_or(false),
        script_user,
        script_group,
        preload: raw.preload.unwrap_or(false),
    };
    (iso, errs)
}

/// What keeps this bridge (`me`; None when privileges are not checked) from applying `iso`,
/// as an error at the key to blame.
fn privileges_allow(src: &Source, here: &KeyPath, iso: &Isolation, me: Option<BridgeIds>) -> Result<(), ConfigError> {
    match me.and_then(|me| privilege_problem(iso, me, current_hard_limits())) {
        // Root workers without a user: point at the pool, since allow-root is usually not written.
        Some((key, msg)) => Err(src.invalid(&if key == "allow-root" { here.clone() } else { here.key(key) }, msg)),
        None => Ok(()),
    }
}

/// What the resolved isolation of a pool must satisfy as a whole: `preload` only for WSGI
/// apps, the privileges the bridge can grant, and the script's owner for file apps.
/// `me`: the bridge's ids, None when privileges are not checked (the control client).
fn checks(src: &Source, here: &KeyPath, iso: &Isolation, app: &App, me: Option<BridgeIds>) -> Result<(), ConfigError> {
    let bad = |key: &str, msg: String| src.invalid(&here.key(key), msg);
    if iso.preload && matches!(app, App::Command(_)) {
        return Err(bad(
            "preload",
            "applies to Python apps (WSGI and ASGI) only; a command: program cannot be forked from a template".into(),
        ));
    }

    privileges_allow(src, here, iso, me)?;
    if let Some(file) = app.file() {
        check_script(iso, file)
            .map_err(|m| bad(if iso.script_user.is_some() { "script-user" } else { "script-group" }, m))?;
    } else if iso.script_user.is_some() || iso.script_group.is_some() {
        let key = if iso.script_user.is_some() { "script-user" } else { "script-group" };
        return Err(bad(
            key,
            "applies to file apps (app: /path/app.wsgi) only; a module app has no single script file".into(),
        ));
    }
    Ok(())
}

/// `chroot`: a directory other than / that holds the interpreter, the chdir and the app
/// file (paths as the bridge sees them); not for `command:` programs.
fn chroot(
    dir: &Path,
    written: Option<&str>,
    app: &App,
    chdir: &Path,
    python: &Path,
) -> Result<Option<PathBuf>, String> {
    let chroot = match written {
        None => None,
        Some("") => return Err("is empty; name a directory or leave the key out".into()),
        Some(text) => {
            let dir = super::paths::resolve(dir, text);
            if !dir.is_dir() {
                return Err(format!("{} is not a directory", dir.display()));
            }
            if matches!(app, App::Command(_)) {
                return Err("is not supported for command: pools; run the program's own chroot option".into());
            }
            if dir == Path::new("/") {
                return Err("is / (no isolation); leave the key out".into());
            }
            for (what, path) in [("python", python), ("chdir", chdir)] {
                if !path.starts_with(&dir) {
                    return Err(format!(
                        "{what} {} is outside the chroot {}; paths are written as the bridge sees them and must lie inside it",
                        path.display(),
                        dir.display()
                    ));
                }
            }
            if let Some(file) = app.file() {
                if !file.starts_with(&dir) {
                    return Err(format!("app file {} is outside the chroot {}", file.display(), dir.display()));
                }
            }
            Some(dir)
        }
    };
    Ok(chroot)
}

/// Why an `rlimit-as` below [`MIN_RLIMIT_AS`] is refused, and what to write instead.
fn rlimit_as_too_small(n: u64) -> String {
    use super::units::SizeDisplay;
    let shown = match SizeDisplay(n).to_string() {
        bytes if bytes.bytes().all(|b| b.is_ascii_digit()) => format!("{bytes} bytes"),
        size => size,
    };
    // Under 1MiB the unit was most likely left out.
    let unit = if n < 1 << 20 { " (a bare number is bytes; uWSGI's limit-as counts megabytes)" } else { "" };
    format!(
        "{shown} is below {}: too little address space for a Python worker and its app; RLIMIT_AS counts \
         virtual memory (VmSize in /proc/<pid>/status), far above RSS: set it well above a \
         running worker's VmSize, e.g. \"1G\"{unit}",
        SizeDisplay(MIN_RLIMIT_AS)
    )
}

/// The bridge's own hard limits: what an unprivileged bridge may grant its workers.
#[derive(Debug, Clone, Copy)]
pub struct HardLimits {
    pub nofile: u64,
    pub core: u64,
    pub nproc: u64,
    pub address_space: u64,
}

fn current_hard_limits() -> HardLimits {
    use nix::sys::resource::{getrlimit, Resource};
    let hard = |r| getrlimit(r).map(|(_, h)| h).unwrap_or(UNLIMITED);
    HardLimits {
        nofile: hard(Resource::RLIMIT_NOFILE),
        core: hard(Resource::RLIMIT_CORE),
        nproc: hard(Resource::RLIMIT_NPROC),
        address_space: hard(Resource::RLIMIT_AS),
    }
}

/// What keeps this bridge (`me`) from applying `iso`: workers as root without `allow-root`,
/// or settings that need root when the bridge is not root. Returns the key to blame.
pub fn privilege_problem(iso: &Isolation, me: BridgeIds, hard: HardLimits) -> Option<(&'static str, String)> {
    let worker_uid = iso.worker_uid(me.uid);
    if worker_uid == 0 && !iso.allow_root {
        let key = if iso.user.is_some() { "user" } else { "allow-root" };
        return Some((
            key,
            "workers would run as root; set user: (and group:) to an unprivileged account, \
             or write allow-root: true if the app really must run as root"
                .into(),
        ));
    }
    if me.uid == 0 {
        return None;
    }
    let need_root = |what: &str| {
        format!(
            "{what} needs the bridge to run as root (it runs as uid {}); remove the key or start fcgibridge as root \
             (the shipped systemd unit runs it as www-data: docs/migration.md, \"Per-app users need a root bridge\", \
             has the User=root override)",
            me.uid
        )
    };
    if let Some(u) = &iso.user {
        if u.account.id != me.uid {
            return Some(("user", need_root(&format!("switching to user {:?}", u.account.written))));
        }
    }
    if iso.worker_gid(me.gid) != me.gid {
        let key = if iso.group.is_some() { "group" } else { "user" };
        return Some((key, need_root("switching the group")));
    }
    if iso.groups.is_some() {
        return Some(("groups", need_root("setting supplementary groups")));
    }
    if iso.chroot.is_some() {
        return Some(("chroot", need_root("chroot")));
    }
    if let Some(n) = iso.nice.filter(|n| *n < 0) {
        return Some(("nice", need_root(&format!("a negative nice value ({n})"))));
    }
    let raising = |n: u64, hard: u64| need_root(&format!("raising the limit to {n} above the hard limit {hard}"));
    if let Some(n) = iso.rlimit_nofile.filter(|n| *n > hard.nofile) {
        return Some(("rlimit-nofile", raising(n, hard.nofile)));
    }
    if let Some(n) = iso.rlimit_nproc.filter(|n| *n > hard.nproc) {
        return Some(("rlimit-nproc", raising(n, hard.nproc)));
    }
    if let Some(n) = iso.rlimit_core.filter(|n| *n > hard.core) {
        return Some(("rlimit-core", raising(n, hard.core)));
    }
    if let Some(n) = iso.rlimit_as.filter(|n| *n > hard.address_space) {
        return Some(("rlimit-as", raising(n, hard.address_space)));
    }
    None
}

/// mod_wsgi's script-user / script-group: the app file must belong to the expected owner
/// and group, and neither it nor its directory may be writable by others (anyone could
/// then replace the code the workers run). Also run before every spawn.
pub fn check_script(iso: &Isolation, file: &Path) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    if iso.script_user.is_none() && iso.script_group.is_none() {
        return Ok(());
    }
    let meta = std::fs::metadata(file).map_err(|e| format!("cannot inspect the app file {}: {e}", file.display()))?;
    if let Some(u) = &iso.script_user {
        if meta.uid() != u.id {
            return Err(format!(
                "the app file {} is owned by uid {}, not by {:?} (uid {}); refusing to run it",
                file.display(),
                meta.uid(),
                u.written,
                u.id
            ));
        }
    }
    if let Some(g) = &iso.script_group {
        if meta.gid() != g.id {
            return Err(format!(
                "the app file {} belongs to gid {}, not to group {:?} (gid {}); refusing to run it",
                file.display(),
                meta.gid(),
                g.written,
                g.id
            ));
        }
    }
    if meta.mode() & 0o002 != 0 {
        return Err(format!("the app file {} is writable by others; refusing to run it (chmod o-w)", file.display()));
    }
    if let Some(dir) = file.parent() {
        let dmeta = std::fs::metadata(dir).map_err(|e| format!("cannot inspect {}: {e}", dir.display()))?;
        // The sticky bit (like /tmp) still lets anyone create files, so it does not help here.
        if dmeta.mode() & 0o002 != 0 {
            return Err(format!(
                "the app file's directory {} is writable by others; refusing to run it (chmod o-w)",
                dir.display()
            ));
        }
    }
    Ok(())
}

fn lookup_user(text: &str, accounts: Option<&Accounts>) -> Result<RunAs, String> {
    if text.is_empty() {
        return Err("is empty; name a user or leave the key out".into());
    }
    let found = accounts
        .map_or_else(|| find_account(text), |a| a.find(text))
        .map_err(|e| format!("cannot look up user {text:?}: {e}"))?;
    match found {
        Some(u) => {
            let name =
                std::ffi::CString::new(u.name.clone()).map_err(|_| format!("user {text:?} has an invalid name"))?;
            let member_of = nix::unistd::getgrouplist(&name, u.gid)
                .map_err(|e| format!("cannot list the groups of user {text:?}: {e}"))?
                .into_iter()
                .map(|g| g.as_raw())
                .collect();
            Ok(RunAs {
                account: Account { written: text.to_owned(), id: u.uid.as_raw() },
                primary_gid: u.gid.as_raw(),
                member_of,
                home: u.dir,
                login: u.name,
            })
        }
        // A bare number with no passwd entry is still a valid uid (containers do this).
        None => match text.parse::<u32>() {
            Ok(id) => Ok(RunAs {
                account: Account { written: text.to_owned(), id },
                primary_gid: id,
                member_of: Vec::new(),
                home: PathBuf::from("/"),
                login: text.to_owned(),
            }),
            Err(_) => Err(match text.split_once(':') {
                // uWSGI's `chown-socket = user:group`, chown's `user:group`.
                Some((user, group))
                    if !user.is_empty()
                        && !group.is_empty()
                        && nix::unistd::User::from_name(user).ok().flatten().is_some() =>
                {
                    format!("no such user {text:?} on this system; write the group apart: `user: {user}` and `group: {group}`")
                }
                _ => format!("no such user {text:?} on this system"),
            }),
        },
    }
}

fn lookup_group(text: &str) -> Result<Account, String> {
    use nix::unistd::{Gid, Group};
    if text.is_empty() {
        return Err("is empty; name a group or leave the key out".into());
    }
    if let Ok(id) = text.parse::<u32>() {
        let _ = Group::from_gid(Gid::from_raw(id));
        return Ok(Account { written: text.to_owned(), id });
    }
    match Group::from_name(text).map_err(|e| format!("cannot look up group {text:?}: {e}"))? {
        Some(g) => Ok(Account { written: text.to_owned(), id: g.gid.as_raw() }),
        None => Err(format!("no such group {text:?} on this system")),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn runas(id: u32) -> RunAs {
        RunAs {
            account: Account { written: format!("u{id}"), id },
            primary_gid: id,
            member_of: vec![id],
            home: "/".into(),
            login: format!("u{id}"),
        }
    }

    const ROOT: BridgeIds = BridgeIds { uid: 0, gid: 0 };
    const ALICE: BridgeIds = BridgeIds { uid: 1000, gid: 1000 };
    const HARD: HardLimits = HardLimits { nofile: 4096, core: 0, nproc: 1 << 20, address_space: 8 << 30 };

    #[test]
    fn root_workers_need_allow_root() {
        let none = Isolation::default();
        let (key, msg) = privilege_problem(&none, ROOT, HARD).unwrap();
        assert_eq!(key, "allow-root");
        assert!(msg.contains("allow-root: true"), "{msg}");
        let allowed = Isolation { allow_root: true, ..Default::default() };
        assert!(privilege_problem(&allowed, ROOT, HARD).is_none());
        let as_user = Isolation { user: Some(runas(1001)), ..Default::default() };
        assert!(privilege_problem(&as_user, ROOT, HARD).is_none());
        let to_root = Isolation { user: Some(runas(0)), ..Default::default() };
        assert_eq!(privilege_problem(&to_root, ROOT, HARD).unwrap().0, "user");
        // An unprivileged bridge starts unprivileged workers: nothing to refuse.
        assert!(privilege_problem(&none, ALICE, HARD).is_none());
    }

    #[test]
    fn unprivileged_bridge_refuses_what_needs_root() {
        let cases: Vec<(Isolation, &str)> = vec![
            (Isolation { user: Some(runas(1001)), ..Default::default() }, "user"),
            (Isolation { group: Some(Account { written: "g".into(), id: 7 }), ..Default::default() }, "group"),
            (Isolation { groups: Some(vec![]), ..Default::default() }, "groups"),
            (Isolation { chroot: Some("/srv/jail".into()), ..Default::default() }, "chroot"),
            (Isolation { nice: Some(-5), ..Default::default() }, "nice"),
            (Isolation { rlimit_nofile: Some(100_000), ..Default::default() }, "rlimit-nofile"),
            (Isolation { rlimit_core: Some(UNLIMITED), ..Default::default() }, "rlimit-core"),
            (Isolation { rlimit_nproc: Some(1 << 40), ..Default::default() }, "rlimit-nproc"),
            (Isolation { rlimit_as: Some(16 << 30), ..Default::default() }, "rlimit-as"),
        ];
        for (iso, want) in cases {
            let (key, msg) = privilege_problem(&iso, ALICE, HARD).unwrap();
            assert_eq!(key, want, "{msg}");
            assert!(msg.contains("needs the bridge to run as root"), "{msg}");
            // Under the shipped unit (User=www-data), the way to a root bridge is a drop-in.
            assert!(msg.contains("start fcgibridge as root (the shipped systemd unit runs it as www-data: docs/migration.md, \"Per-app users need a root bridge\", has the User=root override)"), "{msg}");
            assert!(privilege_problem(&Isolation { allow_root: true, ..iso }, ROOT, HARD).is_none());
        }
        // What an unprivileged bridge can do itself is fine: its own user, lowering limits, nice 10.
        let own = Isolation {
            user: Some(runas(1000)),
            nice: Some(10),
            rlimit_nofile: Some(1024),
            rlimit_core: Some(0),
            rlimit_as: Some(1 << 30),
            umask: Some(0o027),
            clear_env: true,
            ..Default::default()
        };
        assert!(privilege_problem(&own, ALICE, HARD).is_none());
    }

    #[test]
    fn script_ownership() {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let dir = crate::scratch::scratch_dir("script-owner");
        let file = dir.join("app.wsgi");
        std::fs::write(&file, "application = None\n").unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        let meta = std::fs::metadata(&file).unwrap();
        let me = Account { written: "me".into(), id: meta.uid() };
        let other = Account { written: "other".into(), id: meta.uid() + 1 };
        let iso = |u: Account| Isolation { script_user: Some(u), ..Default::default() };
        assert_eq!(check_script(&iso(me.clone()), &file), Ok(()));
        let err = check_script(&iso(other), &file).unwrap_err();
        assert!(err.contains("not by \"other\""), "{err}");
        let wrong_group =
            Isolation { script_group: Some(Account { written: "g".into(), id: meta.gid() + 1 }), ..Default::default() };
        assert!(check_script(&wrong_group, &file).unwrap_err().contains("not to group"));
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        let err = check_script(&iso(me.clone()), &file).unwrap_err();
        assert!(err.contains("directory") && err.contains("writable by others"), "{err}");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o666)).unwrap();
        assert!(check_script(&iso(me), &file).unwrap_err().contains("app file"));
        // Without script-user/script-group nothing is checked.
        assert_eq!(check_script(&Isolation::default(), &file), Ok(()));
    }

    /// A conf.d with one pool (`pool_keys` indented under it) and one listener, loaded as a
    /// bridge with the given ids.
    fn load_as(
        ids: BridgeIds,
        name: &str,
        pool_keys: &str,
    ) -> (crate::scratch::ScratchDir, Result<crate::config::Config, ConfigError>) {
        let dir = crate::scratch::scratch_dir(name);
        let conf = dir.join("conf.d");
        std::fs::create_dir_all(&conf).unwrap();
        std::fs::write(dir.join("app.py"), "application = None\n").unwrap();
        let text = format!(
            "pools:\n  demo:\n    app: ../app.py\n    python: /bin/sh\n{pool_keys}listeners:\n  l: {{fastcgi: 127.0.0.1:9999, pool: demo}}\n"
        );
        std::fs::write(conf.join("10-a.yaml"), text).unwrap();
        TEST_BRIDGE_IDS.with(|c| c.set(ids));
        let r = crate::config::load_with_search_path(&conf, None);
        TEST_BRIDGE_IDS.with(|c| c.set(BridgeIds { uid: 4242, gid: 4242 }));
        (dir, r)
    }

    #[test]
    fn every_key_loads_and_check_output_loads_back() {
        let keys = "    user: nobody\n    group: nogroup\n    groups: [nogroup]\n    umask: \"0027\"\n    clear-env: true\n    \
                    rlimit-nofile: 1024\n    rlimit-core: unlimited\n    rlimit-as: 1536M\n    nice: 5\n    preload: true\n";
        let (dir, r) = load_as(ROOT, "iso-all-keys", keys);
        let conf = dir.join("conf.d");
        let config = r.unwrap();
        let iso = &config.pools[0].isolation;
        assert_eq!(iso.user.as_ref().map(|u| u.login.as_str()), Some("nobody"));
        assert_eq!(iso.umask, Some(0o027));
        assert_eq!(iso.rlimit_core, Some(UNLIMITED));
        assert_eq!(iso.rlimit_as, Some(1536 << 20));
        assert!(iso.clear_env && iso.preload && !iso.allow_root);
        let text = crate::cli::check::render(&config, "conf.d", None);
        std::fs::remove_file(conf.join("10-a.yaml")).unwrap();
        std::fs::write(conf.join("00-effective.yaml"), &text).unwrap();
        TEST_BRIDGE_IDS.with(|c| c.set(ROOT));
        let again = crate::config::load_with_search_path(&conf, None);
        TEST_BRIDGE_IDS.with(|c| c.set(BridgeIds { uid: 4242, gid: 4242 }));
        assert_eq!(again.unwrap(), config, "{text}");
    }

    #[test]
    fn errors_name_file_line_column_and_key() {
        // A root bridge and no user: refused at the pool.
        let (_, r) = load_as(ROOT, "iso-root", "");
        let msg = r.unwrap_err().to_string();
        assert!(msg.contains("10-a.yaml:2:3: pools.demo: workers would run as root"), "{msg}");
        // An unprivileged bridge cannot switch users: the key is named where it was written.
        let (_, r) = load_as(ALICE, "iso-unpriv", "    user: nobody\n");
        let msg = r.unwrap_err().to_string();
        assert!(
            msg.contains(
                "10-a.yaml:5:5: pools.demo.user: switching to user \"nobody\" needs the bridge to run as root"
            ),
            "{msg}"
        );
        let (_, r) = load_as(ROOT, "iso-bad-umask", "    allow-root: true\n    umask: \"0999\"\n");
        assert!(r.unwrap_err().to_string().contains("pools.demo.umask"));
        let (_, r) = load_as(ROOT, "iso-no-user", "    user: no-such-user-xyz\n");
        assert!(r.unwrap_err().to_string().contains("no such user"));
    }

    #[test]
    fn rlimit_as_takes_a_size_of_at_least_the_floor() {
        let load = |name: &str, value: &str| load_as(ALICE, name, &format!("    rlimit-as: {value}\n")).1;
        for (value, bytes) in [("512M", 512 << 20), ("2GiB", 2 << 30), ("64MiB", MIN_RLIMIT_AS), ("67108864", 64 << 20)]
        {
            let config = load(&format!("iso-as-{bytes}"), value).unwrap();
            assert_eq!(config.pools[0].isolation.rlimit_as, Some(bytes), "{value}");
        }
        // A bare number is bytes: uWSGI's `limit-as = 512` (megabytes) copied as is.
        let msg = load("iso-as-bare", "512").unwrap_err().to_string();
        assert!(msg.contains("10-a.yaml:5:5: pools.demo.rlimit-as: 512 bytes is below 64MiB"), "{msg}");
        assert!(msg.contains("uWSGI's limit-as counts megabytes") && msg.contains("VmSize"), "{msg}");
        let msg = load("iso-as-small", "63M").unwrap_err().to_string();
        assert!(msg.contains("10-a.yaml:5:5: pools.demo.rlimit-as: 63MiB is below 64MiB"), "{msg}");
        let msg = load("iso-as-zero", "0").unwrap_err().to_string();
        assert!(msg.contains("pools.demo.rlimit-as: 0 bytes is below"), "{msg}");
        let msg = load("iso-as-word", "lots").unwrap_err().to_string();
        assert!(msg.contains("10-a.yaml:5") && msg.contains("rlimit-as") && msg.contains("invalid size"), "{msg}");
        // Left out: the bridge's own limit is inherited.
        let (_, r) = load_as(ALICE, "iso-as-none", "");
        assert_eq!(r.unwrap().pools[0].isolation.rlimit_as, None);
    }

    #[test]
    fn the_control_client_loads_without_privilege_checks() {
        // An unprivileged bridge cannot switch users: refused for the daemon and `check`...
        let (dir, r) = load_as(ALICE, "iso-client", "    user: nobody\n");
        let conf = dir.join("conf.d");
        assert!(r.unwrap_err().to_string().contains("needs the bridge to run as root"));
        // ...but a client only looking for the control socket reads it, and that leaves
        // nothing behind: the next daemon-side load checks again.
        let client = crate::config::load_for_client(&conf).unwrap();
        assert_eq!(client.pools[0].isolation.user.as_ref().map(|u| u.login.as_str()), Some("nobody"));
        assert!(crate::config::load_with_search_path(&conf, None).is_err());
    }

    #[test]
    fn names_resolve_to_ids() {
        let root = lookup_user("root", None).unwrap();
        assert_eq!((root.account.id, root.primary_gid), (0, 0));
        assert_eq!(lookup_user("0", None).unwrap().account.id, 0);
        assert_eq!(lookup_user("54321", None).unwrap().account.id, 54321);
        assert!(lookup_user("no-such-user-xyz", None).unwrap_err().contains("no such user"));
        assert_eq!(lookup_group("root").unwrap().id, 0);
        assert!(lookup_group("no-such-group-xyz").unwrap_err().contains("no such group"));
    }
}
