//! `touch-reload`: files a pool's manager looks at once a second; when one changes (its
//! modification time, or another file in its place: a deploy's `mv`, a re-created file),
//! the pool's workers are restarted, rolling, as `fcgibridge reload --restart-workers POOL`
//! would. The way a user without access to the daemon reloads their own app (uWSGI's
//! `touch-reload`, a touched `.wsgi` under mod_wsgi, Passenger's `restart.txt`).
//!
//! The files are looked at off the runtime (a `stat` of a hung network mount must not hold
//! the daemon up; the next look waits for that one) and as the pool's account, the thread's
//! filesystem credentials switched to it ([`Reader::acting`]): the bridge, as root, must not
//! tell a tenant when a file behind a symlink into someone else's private directory
//! changes, and sees a file on a root_squash NFS home, or one an ACL opens to the account.
use super::access::Reader;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Mutex};

/// What a file looked like.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Seen {
    /// Not looked at yet: whatever the first look finds is no change.
    Unknown,
    /// Absent, or not for the pool's account to see.
    Absent,
    /// Its device, inode and modification time (s, ns).
    At(u64, u64, i64, i64),
}

/// The watched files, as last seen.
#[derive(Debug)]
pub(super) struct Watch {
    files: Arc<Mutex<Vec<(PathBuf, Seen)>>>,
    /// The pool's workers' account, when it is not the bridge's.
    reader: Option<Reader>,
    /// The look under way: it says the first file that changed, if any.
    looking: Option<mpsc::Receiver<Option<PathBuf>>>,
}

impl Watch {
    /// Watch `paths` as `reader` (None: as the bridge) could see them; the first look,
    /// begun now, is the baseline, no change.
    pub(super) fn new(paths: &[PathBuf], reader: Option<Reader>) -> Self {
        let files = paths.iter().map(|p| (p.clone(), Seen::Unknown)).collect();
        let mut w = Self { files: Arc::new(Mutex::new(files)), reader, looking: None };
        w.begin();
        w
    }

    /// Watch `paths` from now on (a reload): a path watched already keeps what it was last
    /// seen as, so that a touch since is still a change; a new one starts from its first look.
    pub(super) fn rewatch(&mut self, paths: &[PathBuf], reader: Option<Reader>) {
        let mut files = lock(&self.files);
        let seen = |p: &PathBuf| files.iter().find(|(q, _)| q == p).map_or(Seen::Unknown, |(_, s)| *s);
        let kept = paths.iter().map(|p| (p.clone(), seen(p))).collect();
        *files = kept;
        drop(files);
        self.reader = reader;
        self.begin();
    }

    /// Once a second: the file the last look found changed (if any), and the next look
    /// begun; nothing while a look is still under way.
    pub(super) fn changed(&mut self) -> Option<PathBuf> {
        let mut found = None;
        if let Some(rx) = &self.looking {
            match rx.try_recv() {
                Ok(changed) => found = changed,
                Err(mpsc::TryRecvError::Empty) => return None,
                Err(mpsc::TryRecvError::Disconnected) => {}
            }
            self.looking = None;
        }
        self.begin();
        found
    }

    /// Begin a look, unless one is under way (or nothing is watched, or there is no
    /// runtime to look from).
    fn begin(&mut self) {
        if self.looking.is_some() || lock(&self.files).is_empty() {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
        let (tx, rx) = mpsc::channel();
        let (files, reader) = (self.files.clone(), self.reader.clone());
        runtime.spawn_blocking(move || {
            let _ = tx.send(look(&files, reader.as_ref()));
        });
        self.looking = Some(rx);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Look at every file once (the lock is not held meanwhile) and note what each is now:
/// the first that changed. A file that went away is no change (its return is one).
fn look(files: &Mutex<Vec<(PathBuf, Seen)>>, reader: Option<&Reader>) -> Option<PathBuf> {
    let paths: Vec<PathBuf> = lock(files).iter().map(|(p, _)| p.clone()).collect();
    let now: Vec<(PathBuf, Seen)> = paths
        .into_iter()
        .map(|p| {
            let seen = seen_as(&p, reader);
            (p, seen)
        })
        .collect();
    let mut first = None;
    // Matched by path: a reload may have changed the list meanwhile.
    for (path, was) in lock(files).iter_mut() {
        let Some((_, is)) = now.iter().find(|(p, _)| p == path) else { continue };
        let changed = *was != Seen::Unknown && *is != Seen::Absent && is != was;
        if changed && first.is_none() {
            first = Some(path.clone());
        }
        *was = *is;
    }
    first
}

/// The file at `path`, following symlinks, as `reader` (None: the bridge) can see it: the
/// kernel decides, with the thread switched to that account.
fn seen_as(path: &Path, reader: Option<&Reader>) -> Seen {
    let stat = || std::fs::metadata(path).ok();
    let found = match reader {
        None => stat(),
        Some(r) => r.acting(stat).unwrap_or_else(|why| {
            // Once per file, not at every look (each second); every pool's file is named.
            static SAID: Mutex<std::collections::BTreeSet<PathBuf>> = Mutex::new(std::collections::BTreeSet::new());
            if SAID.lock().unwrap_or_else(|e| e.into_inner()).insert(path.to_owned()) {
                tracing::error!("touch-reload: {} cannot be looked at: {why}", path.display());
            }
            None
        }),
    };
    match found {
        Some(m) => Seen::At(m.dev(), m.ino(), m.mtime(), m.mtime_nsec()),
        None => Seen::Absent,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, SystemTime};

    fn set_mtime(path: &Path, secs_ago: u64) {
        let t = SystemTime::now() - Duration::from_secs(secs_ago);
        std::fs::File::options().write(true).open(path).and_then(|f| f.set_modified(t)).unwrap();
    }

    fn watched(paths: &[&Path]) -> Mutex<Vec<(PathBuf, Seen)>> {
        Mutex::new(paths.iter().map(|p| (p.to_path_buf(), Seen::Unknown)).collect())
    }

    #[test]
    fn a_touched_replaced_or_created_file_is_a_change_once() {
        let dir = crate::scratch::scratch_dir("touch-reload");
        let (a, b) = (dir.join("reload.txt"), dir.join("later.txt"));
        std::fs::write(&a, b"").unwrap();
        set_mtime(&a, 100);
        let files = watched(&[&a, &b]);
        assert_eq!(look(&files, None), None, "the first look is the baseline");
        set_mtime(&a, 50);
        assert_eq!(look(&files, None), Some(a.clone()));
        assert_eq!(look(&files, None), None, "said once");
        // Another file moved in its place, with an older time: a change all the same.
        let fresh = dir.join("fresh.txt");
        std::fs::write(&fresh, b"new").unwrap();
        set_mtime(&fresh, 1000);
        std::fs::rename(&fresh, &a).unwrap();
        assert_eq!(look(&files, None), Some(a.clone()));
        // Gone is no change; created (the other file) is one.
        std::fs::remove_file(&a).unwrap();
        assert_eq!(look(&files, None), None);
        std::fs::write(&b, b"").unwrap();
        assert_eq!(look(&files, None), Some(b.clone()));
        std::fs::write(&a, b"").unwrap();
        assert_eq!(look(&files, None), Some(a.clone()), "back after it went");
    }

    #[test]
    fn a_file_the_pool_s_account_cannot_reach_is_not_seen() {
        let dir = crate::scratch::scratch_dir("touch-reload-private");
        let private = dir.join("private");
        std::fs::create_dir(&private).unwrap();
        std::fs::set_permissions(&private, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
        let secret = private.join("restart.txt");
        std::fs::write(&secret, b"").unwrap();
        // The tenant's path leads there through a symlink of theirs.
        let mine = dir.join("mine");
        std::os::unix::fs::symlink(&private, &mine).unwrap();
        let owner = std::fs::metadata(&private).map(|m| m.uid()).unwrap();
        let tenant = Reader { uid: owner + 1, gid: owner + 1, gids: vec![owner + 1] };
        let files = watched(&[&mine.join("restart.txt")]);
        assert_eq!(look(&files, Some(&tenant)), None);
        set_mtime(&secret, 10);
        assert_eq!(look(&files, Some(&tenant)), None, "not the tenant's to see");
        assert_eq!(seen_as(&mine.join("restart.txt"), Some(&tenant)), Seen::Absent);
        assert!(matches!(seen_as(&mine.join("restart.txt"), None), Seen::At(..)), "the bridge's own pool sees it");
    }

    #[test]
    fn a_file_an_acl_opens_to_the_pool_s_account_is_seen() {
        use crate::supervise::fs_creds::tests::{set_acl, ACL_USER};
        use std::os::unix::fs::PermissionsExt;
        let dir = crate::scratch::scratch_dir("touch-reload-acl");
        // Root to switch to the tenant; every directory above searchable by others.
        let open_above = nix::unistd::geteuid().is_root()
            && dir.ancestors().all(|d| std::fs::metadata(d).is_ok_and(|m| m.mode() & 0o001 != 0));
        if !open_above {
            return;
        }
        // A 0700 directory of root's that an ACL lets the tenant (and no one else) search.
        let site = dir.join("site");
        std::fs::create_dir(&site).unwrap();
        std::fs::set_permissions(&site, std::fs::Permissions::from_mode(0o700)).unwrap();
        set_acl(&site, &[(ACL_USER, 1, 4111)]);
        let restart = site.join("restart.txt");
        std::fs::write(&restart, b"").unwrap();
        set_mtime(&restart, 100);
        let tenant = Reader { uid: 4111, gid: 4111, gids: vec![4111] };
        assert!(tenant.search_blocker(&site).is_some(), "the mode bits alone would hide it");
        let files = watched(&[&restart]);
        assert!(matches!(seen_as(&restart, Some(&tenant)), Seen::At(..)));
        assert_eq!(look(&files, Some(&tenant)), None, "the baseline");
        set_mtime(&restart, 10);
        assert_eq!(look(&files, Some(&tenant)), Some(restart.clone()), "the tenant's touch restarts its pool");
        let stranger = Reader { uid: 4112, gid: 4112, gids: vec![4112] };
        assert_eq!(seen_as(&restart, Some(&stranger)), Seen::Absent);
    }

    /// The finding of the look under way, once it ended.
    fn finish(w: &mut Watch) -> Option<PathBuf> {
        let rx = w.looking.take().expect("a look under way");
        rx.recv_timeout(Duration::from_secs(30)).expect("the look ended")
    }

    #[tokio::test]
    async fn looks_run_off_the_runtime_and_a_reload_keeps_a_pending_touch() {
        let dir = crate::scratch::scratch_dir("touch-reload-watch");
        let (a, c) = (dir.join("reload.txt"), dir.join("added.txt"));
        std::fs::write(&a, b"").unwrap();
        set_mtime(&a, 100);
        let mut w = Watch::new(std::slice::from_ref(&a), None);
        assert_eq!(finish(&mut w), None, "the first look, begun at once, is the baseline");
        // Touched, then a reload that keeps the file and adds another before the next look.
        set_mtime(&a, 20);
        std::fs::write(&c, b"").unwrap();
        w.rewatch(&[c.clone(), a.clone()], None);
        assert_eq!(finish(&mut w), Some(a.clone()), "the touch before the reload counts");
        assert_eq!(w.changed(), None, "taken by the test");
        assert_eq!(finish(&mut w), None, "the added file's first look is its baseline");
        set_mtime(&c, 5);
        assert_eq!(w.changed(), None, "a look begins");
        assert_eq!(finish(&mut w), Some(c.clone()));
    }
}
