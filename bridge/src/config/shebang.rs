//! A flup script's shebang: mod_fcgid and spawn-fcgi executed the script, so its first
//! line (`#!/srv/venv/bin/python`) chose the interpreter. A pool whose app runs as the
//! main script and whose `python:` is not written runs that interpreter (resolve.rs).
use super::paths;
use std::ffi::OsStr;
use std::io::Read;
use std::path::{Path, PathBuf};

/// The most of a script's start the kernel reads for `#!` (Linux's BINPRM_BUF_SIZE).
const SHEBANG_MAX: usize = 256;

/// A pool's `python_at.chosen_by` when its script's shebang chose the interpreter.
pub(crate) const CHOSEN_BY: &str = "the app file's shebang, as python: is not set";

/// What a script's first line says of the Python to run it.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Shebang {
    /// No shebang, or one that names no Python (sh, bash, a program of another name).
    Silent,
    /// The interpreter it names: found, executable, a Python 3 by its name.
    Python(PathBuf),
    /// It names a Python that cannot be used; `line` is the first line, control and other
    /// invisible characters escaped (it is a tenant's text, echoed to a terminal or log).
    Unusable { line: String, why: String },
    /// The file exists but could not be read (EACCES under NFS root_squash...): the error.
    Unreadable(String),
}

/// How an interpreter's file name reads.
#[derive(Debug, PartialEq, Eq)]
enum Name {
    /// `python3`, `python3.11`, and CPython's builds of it: `python3.13t` (free-threaded),
    /// `python3.11d`, `python3.6m`, Debian's `python3.11-dbg`.
    Python3,
    /// `python`, `python2`, `python2.7`: Python 2 unless where it lies says otherwise.
    Unversioned,
    /// `pypy`, `pypy3`, `pypy3.10`: a Python the native worker cannot run.
    PyPy,
    /// Anything else: not ours to read.
    Other,
}

fn name_kind(name: &str) -> Name {
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    // `3.N` and then ABI flags (`t`, `d`, `m`, each once), then Debian's `-dbg`.
    let cpython3 = |v: &str| {
        let Some(v) = v.strip_prefix("3.") else { return false };
        let v = v.strip_suffix("-dbg").unwrap_or(v);
        let flags = v.trim_start_matches(|c: char| c.is_ascii_digit());
        let unique = flags.chars().enumerate().all(|(i, c)| !flags[i + 1..].contains(c));
        flags.len() < v.len() && flags.chars().all(|c| matches!(c, 't' | 'd' | 'm')) && unique
    };
    if name.starts_with("pypy") {
        return Name::PyPy;
    }
    match name.strip_prefix("python") {
        Some("3") => Name::Python3,
        Some(v) if cpython3(v) => Name::Python3,
        Some("" | "2") => Name::Unversioned,
        Some(v) if v.strip_prefix("2.").is_some_and(digits) => Name::Unversioned,
        _ => Name::Other,
    }
}

/// The interpreter a `#!` line runs and whether it is a name `env` looks up on PATH; None
/// without `#!`. Arguments after it are not the interpreter's concern here; `env`'s own
/// options (`-S`, `-i`, `-u NAME`) and `NAME=value` assignments before it are skipped.
fn interpreter(line: &str) -> Option<(&str, bool)> {
    let mut words = line.strip_prefix("#!")?.split_ascii_whitespace();
    let program = words.next()?;
    if Path::new(program).file_name() != Some(OsStr::new("env")) {
        return Some((program, false));
    }
    while let Some(word) = words.next() {
        match word {
            "-u" | "-C" | "--unset" | "--chdir" => {
                words.next();
            }
            "--" => return words.next().map(|w| (w, true)),
            _ if word.starts_with("-S") && word.len() > 2 => return Some((&word[2..], true)),
            _ if word.starts_with('-') || word.contains('=') => {}
            _ => return Some((word, true)),
        }
    }
    None
}

/// The first line of `file` (its first [`SHEBANG_MAX`] bytes), without its line end and a
/// leading UTF-8 byte-order mark (Python skips it too); None when it is missing (the app's
/// own check says so), no regular file, or no text; the error when it cannot be read.
fn first_line(file: &Path) -> Result<Option<String>, std::io::Error> {
    use std::os::unix::fs::OpenOptionsExt;
    // Not blocking, and only a regular file: the path may be in a directory its pool's user
    // owns, and a FIFO put there would otherwise hold the bridge's reload in open().
    let f = match std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open(file) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    if !f.metadata()?.is_file() {
        return Ok(None);
    }
    let mut head = Vec::with_capacity(SHEBANG_MAX);
    f.take(SHEBANG_MAX as u64).read_to_end(&mut head)?;
    let head = head.strip_prefix(b"\xef\xbb\xbf").unwrap_or(&head);
    let line = head.split(|b| *b == b'\n').next().unwrap_or_default();
    let Ok(line) = std::str::from_utf8(line) else { return Ok(None) };
    Ok(Some(line.trim_end_matches('\r').trim_end().to_owned()))
}

/// `text` with control and invisible characters (escape sequences, CR, bidi overrides)
/// written as `\xNN` or `\u{NNNN}`: a tenant's line must not act on an operator's terminal.
pub(crate) fn escaped(text: &str) -> String {
    let invisible = |c: char| {
        c.is_control()
            || matches!(c, '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{feff}')
    };
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match u32::from(c) {
            n if invisible(c) && n < 0x100 => out.push_str(&format!("\\x{n:02x}")),
            n if invisible(c) => out.push_str(&format!("\\u{{{n:04x}}}")),
            _ => out.push(c),
        }
    }
    out
}

/// Where `path`, an absolute interpreter path, cannot be used: not executable, a broken
/// symlink (to what), or missing.
fn not_executable(path: &Path) -> String {
    if path.exists() {
        format!("{} is not an executable file", path.display())
    } else if let Ok(target) = std::fs::read_link(path) {
        format!("{} is a symlink to {}, which does not exist", path.display(), target.display())
    } else {
        format!("{} does not exist", path.display())
    }
}

/// The first line of `file` when it is a shebang naming a Python (by its name, not looked
/// up), escaped: a chroot pool does not read it, and says so.
pub(super) fn python_line(file: &Path) -> Option<String> {
    let line = first_line(file).ok()??;
    let (word, _) = interpreter(&line)?;
    let name = Path::new(word).file_name().and_then(OsStr::to_str).unwrap_or_default();
    (name_kind(name) != Name::Other).then(|| escaped(&line))
}

/// Read `file`'s shebang; an interpreter named without a `/` is looked up on `search_path`
/// (the PATH its `env` would have searched).
pub(super) fn read(file: &Path, search_path: Option<&OsStr>) -> Shebang {
    let line = match first_line(file) {
        Ok(Some(line)) => line,
        Ok(None) => return Shebang::Silent,
        Err(e) => return Shebang::Unreadable(e.to_string().split(" (os error").next().unwrap_or_default().to_owned()),
    };
    let Some((word, via_env)) = interpreter(&line) else { return Shebang::Silent };
    let name = Path::new(word).file_name().and_then(OsStr::to_str).unwrap_or_default();
    let kind = name_kind(name);
    let unusable = |why: String| Shebang::Unusable { line: escaped(&line), why: escaped(&why) };
    match kind {
        Name::Other => return Shebang::Silent,
        Name::PyPy => return unusable(format!("{word} is PyPy, and fcgibridge's worker needs CPython")),
        Name::Python3 | Name::Unversioned => {}
    }
    let found = if via_env && !word.contains('/') {
        paths::find_on_path(word, search_path).unwrap_or_else(|| Err(format!("{word:?} was not found on PATH")))
    } else if word.starts_with('/') {
        let path = paths::resolve(Path::new("/"), word);
        if paths::is_executable_file(&path) {
            Ok(path)
        } else {
            Err(not_executable(&path))
        }
    } else {
        Err(format!("{word} is not an absolute path"))
    };
    let python = match found {
        Ok(p) if kind == Name::Python3 || is_python3(&p) => p,
        Ok(p) => {
            let why =
                format!("{} may be Python 2 (it is no Python 3 virtualenv's, nor a link to python3.N)", p.display());
            return unusable(why);
        }
        Err(why) => return unusable(why),
    };
    Shebang::Python(python)
}

impl super::Pool {
    /// When its script's shebang chose the interpreter (`python:` not set), the line said at
    /// start and at each reload: an upgrade, or an edited first line, that changes which
    /// Python runs the pool is then seen in the log.
    pub fn python_from_shebang(&self) -> Option<String> {
        (self.python_at.chosen_by.as_deref() == Some(CHOSEN_BY)).then(|| {
            let python = escaped(&self.python.display().to_string());
            format!(
                "pool {}: python {python} from {} (its shebang; python: not set)",
                self.name,
                escaped(&self.python_at.at)
            )
        })
    }
}

/// Whether `python`, named `python` or `python2`, is a Python 3 all the same: it leads
/// (symlinks followed) to a `python3` or `python3.N`, or it is the `bin/python` of a
/// virtualenv whose pyvenv.cfg says version 3.
fn is_python3(python: &Path) -> bool {
    let target = std::fs::canonicalize(python).ok();
    let target_name = target.as_deref().and_then(Path::file_name).and_then(OsStr::to_str).unwrap_or_default();
    if name_kind(target_name) == Name::Python3 {
        return true;
    }
    let Some(cfg) = python.parent().and_then(Path::parent).map(|venv| venv.join("pyvenv.cfg")) else { return false };
    let text = std::fs::read_to_string(cfg).unwrap_or_default();
    text.lines()
        .filter_map(|l| l.split_once('='))
        .any(|(key, value)| matches!(key.trim(), "version" | "version_info") && value.trim().starts_with("3."))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn the_interpreter_word_of_a_shebang_line() {
        assert_eq!(interpreter("#!/srv/venv/bin/python"), Some(("/srv/venv/bin/python", false)));
        assert_eq!(interpreter("#! /usr/bin/python3.11 -u"), Some(("/usr/bin/python3.11", false)));
        assert_eq!(interpreter("#!/usr/bin/env python3"), Some(("python3", true)));
        assert_eq!(interpreter("#!/usr/bin/env -S python3.11 -u -W ignore"), Some(("python3.11", true)));
        assert_eq!(interpreter("#!/usr/bin/env -Spython3 -u"), Some(("python3", true)));
        assert_eq!(interpreter("#!/usr/bin/env -i PYTHONUTF8=1 -u HOME python3"), Some(("python3", true)));
        assert_eq!(interpreter("#!/usr/bin/env"), None);
        assert_eq!(interpreter("# coding: utf-8"), None);
        assert_eq!(interpreter("import sys"), None);
    }

    #[test]
    fn only_python_names_are_read() {
        assert_eq!(name_kind("python3"), Name::Python3);
        assert_eq!(name_kind("python3.11"), Name::Python3);
        assert_eq!(name_kind("python"), Name::Unversioned);
        assert_eq!(name_kind("python2.7"), Name::Unversioned);
        for other in ["sh", "bash", "python3-config", "python3.", "python3.x", "ipython3", "python3.11tt", "python3.t"]
        {
            assert_eq!(name_kind(other), Name::Other, "{other}");
        }
    }

    #[test]
    fn cpython_builds_count_as_python_3_and_pypy_is_named() {
        // Free-threaded, debug, pymalloc and Debian's -dbg builds: the probe judges them later.
        for name in ["python3.13t", "python3.11-dbg", "python3.11d", "python3.6m", "python3.13td", "python3.13t-dbg"] {
            assert_eq!(name_kind(name), Name::Python3, "{name}");
        }
        for name in ["pypy", "pypy3", "pypy3.10"] {
            assert_eq!(name_kind(name), Name::PyPy, "{name}");
        }
        let dir = crate::scratch::scratch_dir("shebang-builds");
        let free = exe(&dir, "bin/python3.13t");
        let app = script(&dir, &format!("#!{}", free.display()));
        assert_eq!(read(&app, None), Shebang::Python(free));
        // PyPy is a warning (the worker is a CPython extension), not silence.
        exe(&dir, "bin/pypy3");
        let app = script(&dir, "#!/usr/bin/env pypy3");
        match read(&app, Some(dir.join("bin").as_os_str())) {
            Shebang::Unusable { why, .. } => assert_eq!(why, "pypy3 is PyPy, and fcgibridge's worker needs CPython"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_broken_symlink_is_named_as_one() {
        let dir = crate::scratch::scratch_dir("shebang-broken-link");
        fs::create_dir_all(dir.join("venv/bin")).unwrap();
        std::os::unix::fs::symlink("/nonexistent/python3.11", dir.join("venv/bin/python3")).unwrap();
        let app = script(&dir, &format!("#!{}", dir.join("venv/bin/python3").display()));
        let want = format!(
            "{} is a symlink to /nonexistent/python3.11, which does not exist",
            dir.join("venv/bin/python3").display()
        );
        assert!(matches!(read(&app, None), Shebang::Unusable { why, .. } if why == want));
    }

    #[test]
    fn a_tenants_first_line_is_echoed_escaped() {
        let dir = crate::scratch::scratch_dir("shebang-escaped");
        let app = script(&dir, "#!/nonexistent/bin/python3 \x1b[2K\rFAKE \u{202e}INFO all good");
        match read(&app, None) {
            Shebang::Unusable { line, .. } => {
                assert_eq!(line, "#!/nonexistent/bin/python3 \\x1b[2K\\x0dFAKE \\u{202e}INFO all good");
            }
            other => panic!("{other:?}"),
        }
        // The path a shebang names is the tenant's text too.
        let app = script(&dir, "#!/nonexistent/\x07bin/python3");
        assert!(
            matches!(read(&app, None), Shebang::Unusable { why, .. } if why == "/nonexistent/\\x07bin/python3 does not exist")
        );
    }

    #[test]
    fn a_byte_order_mark_before_the_shebang_is_skipped() {
        let dir = crate::scratch::scratch_dir("shebang-bom");
        let python = exe(&dir, "venv/bin/python3");
        let app = script(&dir, &format!("\u{feff}#!{}", python.display()));
        assert_eq!(read(&app, None), Shebang::Python(python));
    }

    /// A scratch directory with an executable `rel` in it (parents made).
    fn exe(dir: &Path, rel: &str) -> PathBuf {
        let path = dir.join(rel);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(&path, "#!/bin/sh\n").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    fn script(dir: &Path, first_line: &str) -> PathBuf {
        let path = dir.join("app.fcgi");
        fs::write(&path, format!("{first_line}\nimport sys\n")).unwrap();
        path
    }

    #[test]
    fn an_unversioned_python_counts_only_where_it_is_python_3() {
        let dir = crate::scratch::scratch_dir("shebang-unversioned");
        // A virtualenv's bin/python (copied, not linked), its pyvenv.cfg saying 3.x.
        let venv_python = exe(&dir, "venv/bin/python");
        fs::write(dir.join("venv/pyvenv.cfg"), "home = /usr/bin\nversion = 3.11.2\n").unwrap();
        let app = script(&dir, &format!("#!{}", venv_python.display()));
        assert_eq!(read(&app, None), Shebang::Python(venv_python));
        // A python that links to python3.12.
        let target = exe(&dir, "opt/bin/python3.12");
        std::os::unix::fs::symlink(&target, dir.join("opt/bin/python")).unwrap();
        let app = script(&dir, &format!("#!{}", dir.join("opt/bin/python").display()));
        assert_eq!(read(&app, None), Shebang::Python(dir.join("opt/bin/python")));
        // A bare python2 (or an old virtualenv's python): kept out, with the reason.
        let old = exe(&dir, "old/bin/python2.7");
        let app = script(&dir, &format!("#!{}", old.display()));
        match read(&app, None) {
            Shebang::Unusable { why, .. } => assert!(why.contains("may be Python 2"), "{why}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_relative_or_directory_interpreter_is_unusable() {
        let dir = crate::scratch::scratch_dir("shebang-relative");
        let app = script(&dir, "#!venv/bin/python3");
        assert!(matches!(read(&app, None), Shebang::Unusable { why, .. } if why.contains("not an absolute path")));
        fs::create_dir_all(dir.join("d/python3/bin")).unwrap();
        exe(&dir, "d/python3/bin/python");
        let app = script(&dir, &format!("#!{}", dir.join("d/python3").display()));
        assert!(matches!(read(&app, None), Shebang::Unusable { why, .. } if why.contains("not an executable file")));
    }

    #[test]
    fn a_fifo_in_the_apps_place_is_not_waited_on() {
        let dir = crate::scratch::scratch_dir("shebang-fifo");
        let fifo = dir.join("app.fcgi");
        let path = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(path.as_ptr(), 0o600) }, 0);
        assert_eq!(read(&fifo, None), Shebang::Silent);
    }
}
