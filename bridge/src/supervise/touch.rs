//! `touch-reload`: files a pool's manager looks at once a second; when one changes (its
//! modification time, or another file in its place: a deploy's `mv`, a re-created file),
//! the pool's workers are restarted, rolling, as `fcgibridge reload --restart-workers POOL`
//! would. The way a user without access to the daemon reloads their own app (uWSGI's
//! `touch-reload`, a touched `.wsgi` under mod_wsgi, Passenger's `restart.txt`).
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// What a file looked like: `None` while it does not exist (or cannot be looked at).
type Stamp = Option<(u64, u64, i64, i64)>;

/// The watched files, as last seen.
#[derive(Debug, Default)]
pub(super) struct Watch {
    files: Vec<(PathBuf, Stamp)>,
}

impl Watch {
    /// Watch `paths` from now: what they are now is the baseline, no change.
    pub(super) fn new(paths: &[PathBuf]) -> Self {
        Self { files: paths.iter().map(|p| (p.clone(), stamp(p))).collect() }
    }

    /// Watch `paths` from now on (a reload): a path watched already keeps what it was last
    /// seen as, so that a touch since is still a change; a new one starts from now.
    pub(super) fn rewatch(&mut self, paths: &[PathBuf]) {
        let seen = |p: &PathBuf| self.files.iter().find(|(q, _)| q == p).map(|(_, s)| *s);
        let files = paths.iter().map(|p| (p.clone(), seen(p).unwrap_or_else(|| stamp(p)))).collect();
        self.files = files;
    }

    /// The first file that changed since the last look, if any; every file's stamp is
    /// taken anew. A file that went away is no change (its return is one).
    pub(super) fn changed(&mut self) -> Option<&Path> {
        let mut first = None;
        for (i, (path, seen)) in self.files.iter_mut().enumerate() {
            let now = stamp(path);
            if now.is_some() && now != *seen && first.is_none() {
                first = Some(i);
            }
            *seen = now;
        }
        first.map(|i| self.files[i].0.as_path())
    }
}

/// The file's device, inode and modification time (s, ns), following symlinks.
fn stamp(path: &Path) -> Stamp {
    let m = std::fs::metadata(path).ok()?;
    Some((m.dev(), m.ino(), m.mtime(), m.mtime_nsec()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, SystemTime};

    fn set_mtime(path: &Path, secs_ago: u64) {
        let t = SystemTime::now() - Duration::from_secs(secs_ago);
        std::fs::File::options().write(true).open(path).and_then(|f| f.set_modified(t)).unwrap();
    }

    #[test]
    fn a_touched_replaced_or_created_file_is_a_change_once() {
        let dir = crate::config::tests::scratch_dir("touch-reload");
        let (a, b) = (dir.join("reload.txt"), dir.join("later.txt"));
        std::fs::write(&a, b"").unwrap();
        set_mtime(&a, 100);
        let mut w = Watch::new(&[a.clone(), b.clone()]);
        assert_eq!(w.changed(), None, "the baseline is no change");
        set_mtime(&a, 50);
        assert_eq!(w.changed(), Some(a.as_path()));
        assert_eq!(w.changed(), None, "said once");
        // Another file moved in its place, with an older time: a change all the same.
        let fresh = dir.join("fresh.txt");
        std::fs::write(&fresh, b"new").unwrap();
        set_mtime(&fresh, 1000);
        std::fs::rename(&fresh, &a).unwrap();
        assert_eq!(w.changed(), Some(a.as_path()));
        // Gone is no change; created (the other file) is one.
        std::fs::remove_file(&a).unwrap();
        assert_eq!(w.changed(), None);
        std::fs::write(&b, b"").unwrap();
        assert_eq!(w.changed(), Some(b.as_path()));
        std::fs::write(&a, b"").unwrap();
        assert_eq!(w.changed(), Some(a.as_path()), "back after it went");
        // A reload between a touch and the next look: the kept path's touch still counts,
        // a path added is watched from now.
        set_mtime(&a, 20);
        let c = dir.join("added.txt");
        std::fs::write(&c, b"").unwrap();
        w.rewatch(&[c.clone(), a.clone()]);
        assert_eq!(w.changed(), Some(a.as_path()));
        assert_eq!(w.changed(), None);
    }
}
