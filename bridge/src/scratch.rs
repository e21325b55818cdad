//! Scratch directories for tests: one per call, removed when dropped, so a test run leaves
//! nothing in the system temp directory, not even when a test fails (drops run on panic).
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

/// A fresh empty directory `fcgibridge-test-<pid>-<name>-<n>` under the system temp dir.
/// Keep it alive as long as the test uses what is in it: it is removed on drop.
#[must_use = "the directory is removed when this is dropped"]
#[derive(Debug)]
pub(crate) struct ScratchDir(PathBuf);

/// A fresh empty directory for one test; see [`ScratchDir`].
pub(crate) fn scratch_dir(name: &str) -> ScratchDir {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("fcgibridge-test-{}-{name}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir); // left by an earlier process of the same pid
    std::fs::create_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    ScratchDir(dir)
}

impl std::ops::Deref for ScratchDir {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl AsRef<Path> for ScratchDir {
    fn as_ref(&self) -> &Path {
        &self.0
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

mod tests {
    use super::*;

    #[test]
    fn a_scratch_directory_is_gone_once_dropped_even_by_a_panic() {
        let kept = scratch_dir("kept");
        std::fs::create_dir_all(kept.join("a/b")).unwrap();
        std::fs::write(kept.join("a/b/f"), "x").unwrap();
        let path = kept.to_path_buf();
        drop(kept);
        assert!(!path.exists());
        let path = std::panic::catch_unwind(|| {
            let d = scratch_dir("panics");
            std::fs::write(d.join("f"), "x").unwrap();
            std::panic::panic_any(d.to_path_buf());
        })
        .unwrap_err();
        let path = path.downcast::<PathBuf>().unwrap();
        assert!(!path.exists(), "{}", path.display());
    }
}
