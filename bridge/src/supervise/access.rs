//! What a pool's account may do with a file.
//!
//! Where the bridge itself opens a file on a pool's behalf (a file it serves or checks for a
//! hand-off, respond/sendfile.rs; a `touch-reload` file, touch.rs) the kernel decides:
//! [`Reader::acting`] switches the calling thread's filesystem credentials to the pool's
//! account for the open, so ACLs, security modules and a root_squash NFS judge as they
//! would for the workers themselves.
//!
//! The mode bits, as the kernel reads them for a process without capabilities (ACLs not
//! consulted), remain for what asks no kernel: whether a worker's user reaches the worker
//! package (isolate.rs), the interpreter probe's explanations (probe.rs), and the reason
//! given in the log line when the kernel refused ("/srv/a has mode 0700 and owner uid 0").
use super::isolate::{Credentials, IsolateError};
use std::fs::Metadata;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// The read bit of a mode's owner, group or other triple.
pub(crate) const READ: u32 = 0o4;
/// The execute bit: search, for a directory.
pub(crate) const SEARCH: u32 = 0o1;
/// The execute bit of a file.
const EXECUTE: u32 = 0o1;

/// Whether `uid` with groups `gids` has `bit` ([`READ`], [`SEARCH`]) on a file with `meta`:
/// the owner's bits for its owner, the group's for a member, the others' for the rest.
/// Root may read and search everything.
pub(crate) fn allowed(meta: &Metadata, uid: u32, gids: &[u32], bit: u32) -> bool {
    if uid == 0 {
        return true;
    }
    let mode = meta.mode();
    if meta.uid() == uid {
        mode & (bit << 6) != 0
    } else if gids.contains(&meta.gid()) {
        mode & (bit << 3) != 0
    } else {
        mode & bit != 0
    }
}

/// The account a pool's workers run as when it is not the bridge's: the files the bridge
/// serves for that pool are the ones this account could read itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Reader {
    pub uid: u32,
    /// The workers' primary group.
    pub gid: u32,
    /// Every group of the workers: supplementary and primary.
    pub gids: Vec<u32>,
}

impl Reader {
    /// The workers' account of a pool with `iso`, as [`Credentials::of`] sets it; None when
    /// they keep the bridge's uid (they read what the bridge reads).
    pub(crate) fn of(iso: &crate::config::isolation::Isolation) -> Option<Self> {
        let creds = Credentials::of(iso);
        let uid = creds.uid?;
        let gids = creds.groups.iter().flatten().map(|g| g.as_raw()).chain([creds.worker_gid]).collect();
        Some(Self { uid, gid: creds.worker_gid, gids })
    }

    /// `f`, run with the calling thread's filesystem credentials (fsuid, fsgid and
    /// supplementary groups) switched to this account, and switched back after on every
    /// path, a panic too: what `f` opens or stats, the kernel judges as for the workers
    /// (ACLs, a root_squash NFS). Linux keeps these per thread; `f` is no future, so the
    /// switch never spans an `.await` (another task on this thread would run under it), and
    /// it must start no thread (one would keep the switch). Root needs no switch.
    pub(crate) fn acting<T>(&self, f: impl FnOnce() -> T) -> Result<T, String> {
        if self.uid == 0 {
            return Ok(f());
        }
        let _switched = super::fs_creds::Switched::to(self)
            .map_err(|e| format!("cannot take the filesystem credentials of uid {}: {e}", self.uid))?;
        Ok(f())
    }

    /// Ok when this account could open the file at `real` (a real path: no symlink in it)
    /// whose own metadata is `meta` for reading: it may read the file and search every
    /// directory above it. Otherwise what is in the way; a directory that cannot be
    /// examined is in the way too.
    pub(crate) fn may_read(&self, real: &Path, meta: &Metadata) -> Result<(), String> {
        if !allowed(meta, self.uid, &self.gids, READ) {
            return Err(denied(real, meta));
        }
        let mut dirs: Vec<&Path> = real.ancestors().skip(1).collect();
        dirs.reverse();
        for dir in dirs {
            // stat, not lstat: were a directory swapped for a symlink since, what it leads to counts.
            let m = std::fs::metadata(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
            if !allowed(&m, self.uid, &self.gids, SEARCH) {
                return Err(denied(dir, &m));
            }
        }
        Ok(())
    }

    /// Why the kernel refused this account the file at `real` (`meta`) for reading, as the
    /// mode bits tell it: what [`may_read`](Self::may_read) finds in the way, else that they
    /// allow it (so an ACL or a security module refused).
    pub(crate) fn why_unreadable(&self, real: &Path, meta: &Metadata) -> String {
        use std::os::unix::fs::MetadataExt;
        self.may_read(real, meta).err().unwrap_or_else(|| {
            format!(
                "the mode bits allow it ({:04o}, owner uid {}): an ACL or a security module denies it",
                meta.mode() & 0o7777,
                meta.uid()
            )
        })
    }

    /// The first directory of `dir` and those above it that this account may not search
    /// (and so not enter `dir`), by the mode bits; None when it may.
    pub(crate) fn search_blocker(&self, dir: &Path) -> Option<String> {
        let mut dirs: Vec<&Path> = dir.ancestors().collect();
        dirs.reverse();
        dirs.into_iter().find_map(|d| {
            let m = std::fs::metadata(d).ok()?;
            (!allowed(&m, self.uid, &self.gids, SEARCH)).then(|| denied(d, &m))
        })
    }

    /// What keeps this account from executing `program`, by the mode bits: the first
    /// directory it may not search on the way, first along the path as written, then along
    /// where each of its directories leads (a venv that is a symlink into a private
    /// directory), then where the program itself leads, or the file itself without an
    /// execute bit for it. None when nothing does (or nothing could be examined).
    pub(crate) fn execute_blocker(&self, program: &Path) -> Option<String> {
        let real = std::fs::canonicalize(program).ok();
        let along = |p: &Path| -> Vec<PathBuf> {
            let mut dirs: Vec<PathBuf> = p.ancestors().skip(1).map(Path::to_path_buf).collect();
            dirs.reverse();
            dirs
        };
        let mut dirs = along(program);
        for dir in along(program) {
            // Only where a symlink on the way leads somewhere else: its directories count.
            if let Some(led) = std::fs::canonicalize(&dir).ok().filter(|r| *r != dir) {
                dirs.extend(along(&led.join("x")));
            }
        }
        dirs.extend(real.as_deref().map(along).unwrap_or_default());
        for dir in dirs {
            let Ok(m) = std::fs::metadata(&dir) else { continue };
            if !allowed(&m, self.uid, &self.gids, SEARCH) {
                return Some(denied(&dir, &m));
            }
        }
        let file = real.as_deref().unwrap_or(program);
        let m = std::fs::metadata(file).ok()?;
        (!allowed(&m, self.uid, &self.gids, EXECUTE)).then(|| denied(file, &m))
    }
}

/// "/root has mode 0700 and owner uid 0": why an account was refused `what`.
fn denied(what: &Path, m: &Metadata) -> String {
    format!("{} has mode {:04o} and owner uid {}", what.display(), m.mode() & 0o7777, m.uid())
}

/// Whether a process with `uid` and groups `gids` may traverse every directory above `file`
/// and read it; the first directory or file in the way is the error.
pub(super) fn reachable(file: &Path, uid: u32, gids: &[u32]) -> Result<(), IsolateError> {
    if uid == 0 {
        return Ok(());
    }
    let mut dirs: Vec<&Path> = file.ancestors().skip(1).collect();
    dirs.reverse();
    // Every directory searched, then the file read; one that cannot be examined is skipped.
    for (at, bit) in dirs.into_iter().map(|d| (d, SEARCH)).chain([(file, READ)]) {
        let Ok(meta) = std::fs::metadata(at) else { continue };
        if !allowed(&meta, uid, gids, bit) {
            return Err(IsolateError::Unreachable {
                uid,
                path: file.to_owned(),
                dir: at.to_owned(),
                mode: meta.permissions().mode() & 0o7777,
                owner: meta.uid(),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::fs::Permissions;
    use std::os::unix::fs::chown;

    #[test]
    fn owner_group_and_others_have_their_own_bits() {
        if !nix::unistd::geteuid().is_root() {
            return; // chown
        }
        let dir = crate::scratch::scratch_dir("allowed");
        let f = dir.join("f");
        std::fs::write(&f, "").unwrap();
        chown(&f, Some(4001), Some(4002)).unwrap();
        std::fs::set_permissions(&f, Permissions::from_mode(0o604)).unwrap();
        let m = std::fs::metadata(&f).unwrap();
        assert!(allowed(&m, 4001, &[], READ)); // owner: rw-
        assert!(!allowed(&m, 4003, &[4002], READ)); // group: --- even though others may
        assert!(allowed(&m, 4003, &[4005], READ)); // others: r--
        assert!(!allowed(&m, 4003, &[4005], SEARCH));
        assert!(allowed(&m, 0, &[], READ));
    }

    #[test]
    fn a_private_directory_a_symlink_on_the_way_leads_through_is_named() {
        // A site's venv links into a 0700 directory; its python links to a system python
        // everyone may run: the private directory is what is in the way.
        let dir = crate::scratch::scratch_dir("exec-via-link");
        let open_above = nix::unistd::geteuid().is_root()
            && dir.ancestors().skip(1).all(|d| std::fs::metadata(d).is_ok_and(|m| m.mode() & 0o001 != 0));
        if !open_above {
            return;
        }
        let private = dir.join("private");
        std::fs::create_dir_all(private.join("venv/bin")).unwrap();
        std::os::unix::fs::symlink("/bin/sh", private.join("venv/bin/python")).unwrap();
        std::fs::create_dir_all(dir.join("site")).unwrap();
        std::os::unix::fs::symlink(private.join("venv"), dir.join("site/venv")).unwrap();
        for d in [&dir.to_path_buf(), &dir.join("site"), &private.join("venv"), &private.join("venv/bin")] {
            std::fs::set_permissions(d, Permissions::from_mode(0o755)).unwrap();
        }
        std::fs::set_permissions(&private, Permissions::from_mode(0o700)).unwrap();
        let stranger = Reader { uid: 4001, gid: 4001, gids: vec![4001] };
        let why = stranger.execute_blocker(&dir.join("site/venv/bin/python")).expect("blocked");
        assert_eq!(why, format!("{} has mode 0700 and owner uid 0", private.display()));
        std::fs::set_permissions(&private, Permissions::from_mode(0o755)).unwrap();
        assert_eq!(stranger.execute_blocker(&dir.join("site/venv/bin/python")), None);
    }

    #[test]
    fn a_reader_needs_every_directory_above_searchable() {
        let dir = crate::scratch::scratch_dir("may-read");
        let inner = dir.join("a/b");
        std::fs::create_dir_all(&inner).unwrap();
        let f = inner.join("f");
        std::fs::write(&f, "").unwrap();
        for d in [&dir.to_path_buf(), &dir.join("a"), &inner] {
            std::fs::set_permissions(d, Permissions::from_mode(0o755)).unwrap();
        }
        // Root to chown; every directory above the scratch dir searchable by others.
        let open_above = nix::unistd::geteuid().is_root()
            && dir.ancestors().skip(1).all(|d| std::fs::metadata(d).is_ok_and(|m| m.mode() & 0o001 != 0));
        if !open_above {
            return;
        }
        let stranger = Reader { uid: 4001, gid: 4001, gids: vec![4001] };
        let m = std::fs::metadata(&f).unwrap();
        assert_eq!(stranger.may_read(&f, &m), Ok(()));
        std::fs::set_permissions(dir.join("a"), Permissions::from_mode(0o750)).unwrap();
        let why = stranger.may_read(&f, &m).unwrap_err();
        assert_eq!(why, format!("{} has mode 0750 and owner uid 0", dir.join("a").display()));
        // a member of the directory's group may pass
        chown(dir.join("a"), None, Some(4001)).unwrap();
        assert_eq!(stranger.may_read(&f, &m), Ok(()));
        // the file's own bits: not readable by others
        std::fs::set_permissions(&f, Permissions::from_mode(0o640)).unwrap();
        let m = std::fs::metadata(&f).unwrap();
        assert_eq!(stranger.may_read(&f, &m), Err(format!("{} has mode 0640 and owner uid 0", f.display())));
        std::fs::set_permissions(&f, Permissions::from_mode(0o644)).unwrap();
        let m = std::fs::metadata(&f).unwrap();
        // a directory that is gone is in the way
        let gone = dir.join("gone/f");
        assert!(stranger.may_read(&gone, &m).unwrap_err().contains("gone"));
    }

    #[test]
    fn a_reader_is_the_pool_user_with_its_groups() {
        use crate::config::isolation::{Account, Isolation, RunAs};
        assert_eq!(Reader::of(&Isolation::default()), None);
        let account = |id: u32| Account { written: id.to_string(), id };
        let user = RunAs {
            account: account(4001),
            primary_gid: 4002,
            member_of: vec![4002, 4003],
            home: "/".into(),
            login: "t".into(),
        };
        let mut iso = Isolation { user: Some(user), ..Isolation::default() };
        assert_eq!(Reader::of(&iso), Some(Reader { uid: 4001, gid: 4002, gids: vec![4002, 4003, 4002] }));
        // `groups:` replaces the user's own, `group:` the primary one.
        iso.groups = Some(vec![account(4004)]);
        iso.group = Some(account(4005));
        assert_eq!(Reader::of(&iso), Some(Reader { uid: 4001, gid: 4005, gids: vec![4004, 4005] }));
    }
}
