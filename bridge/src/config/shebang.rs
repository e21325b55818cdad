//! A flup script's shebang: mod_fcgid and spawn-fcgi executed the script, so its first
//! line (`#!/srv/venv/bin/python`) chose the interpreter. A pool whose app runs as the
//! main script and whose `python:` is not written runs that interpreter (resolve.rs).
use super::paths;
use std::ffi::OsStr;
use std::io::Read;
use std::path::{Path, PathBuf};

/// The most of a script's start the kernel reads for `#!` (Linux's BINPRM_BUF_SIZE).
const SHEBANG_MAX: usize = 256;

/// What a script's first line says of the Python to run it.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Shebang {
    /// No shebang, or one that names no Python (sh, bash, a program of another name).
    Silent,
    /// The interpreter it names: found, executable, a Python 3 by its name.
    Python(PathBuf),
    /// It names a Python that cannot be used; `line` is the first line as written.
    Unusable { line: String, why: String },
}

/// How an interpreter's file name reads.
#[derive(Debug, PartialEq, Eq)]
enum Name {
    /// `python3`, `python3.11`.
    Python3,
    /// `python`, `python2`, `python2.7`: Python 2 unless where it lies says otherwise.
    Unversioned,
    /// Anything else: not ours to read.
    Other,
}

fn name_kind(name: &str) -> Name {
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    match name.strip_prefix("python") {
        Some("3") => Name::Python3,
        Some(v) if v.strip_prefix("3.").is_some_and(digits) => Name::Python3,
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

/// The first line of `file` (its first [`SHEBANG_MAX`] bytes), without its line end; None
/// when it cannot be read or is no text.
fn first_line(file: &Path) -> Option<String> {
    use std::os::unix::fs::OpenOptionsExt;
    // Not blocking, and only a regular file: the path may be in a directory its pool's user
    // owns, and a FIFO put there would otherwise hold the bridge's reload in open().
    let f = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open(file).ok()?;
    if !f.metadata().ok()?.is_file() {
        return None;
    }
    let mut head = Vec::with_capacity(SHEBANG_MAX);
    f.take(SHEBANG_MAX as u64).read_to_end(&mut head).ok()?;
    let line = head.split(|b| *b == b'\n').next()?;
    let line = String::from_utf8(line.to_vec()).ok()?;
    Some(line.trim_end_matches('\r').trim_end().to_owned())
}

/// Read `file`'s shebang; an interpreter named without a `/` is looked up on `search_path`
/// as the default `python3` is.
pub(super) fn read(file: &Path, search_path: Option<&OsStr>) -> Shebang {
    let Some(line) = first_line(file) else { return Shebang::Silent };
    let Some((word, via_env)) = interpreter(&line) else { return Shebang::Silent };
    let name = Path::new(word).file_name().and_then(OsStr::to_str).unwrap_or_default();
    let kind = name_kind(name);
    if kind == Name::Other {
        return Shebang::Silent;
    }
    let found = if via_env && !word.contains('/') {
        paths::find_python(word, Path::new("/"), search_path)
            .map_err(|m| m.split("; set python:").next().unwrap_or_default().to_owned())
    } else if word.starts_with('/') {
        let path = paths::resolve(Path::new("/"), word);
        if paths::is_executable_file(&path) {
            Ok(path)
        } else if path.exists() {
            Err(format!("{} is not an executable file", path.display()))
        } else {
            Err(format!("{} does not exist", path.display()))
        }
    } else {
        Err(format!("{word} is not an absolute path"))
    };
    let python = match found {
        Ok(p) if kind == Name::Python3 || is_python3(&p) => p,
        Ok(p) => {
            let why =
                format!("{} may be Python 2 (it is no Python 3 virtualenv's, nor a link to python3.N)", p.display());
            return Shebang::Unusable { line, why };
        }
        Err(why) => return Shebang::Unusable { line, why },
    };
    Shebang::Python(python)
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
        for other in ["sh", "bash", "pypy3", "python3-config", "python3.", "python3.x", "ipython3"] {
            assert_eq!(name_kind(other), Name::Other, "{other}");
        }
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
        let dir = crate::config::tests::scratch_dir("shebang-unversioned");
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
        let dir = crate::config::tests::scratch_dir("shebang-relative");
        let app = script(&dir, "#!venv/bin/python3");
        assert!(matches!(read(&app, None), Shebang::Unusable { why, .. } if why.contains("not an absolute path")));
        fs::create_dir_all(dir.join("d/python3/bin")).unwrap();
        exe(&dir, "d/python3/bin/python");
        let app = script(&dir, &format!("#!{}", dir.join("d/python3").display()));
        assert!(matches!(read(&app, None), Shebang::Unusable { why, .. } if why.contains("not an executable file")));
    }

    #[test]
    fn a_fifo_in_the_apps_place_is_not_waited_on() {
        let dir = crate::config::tests::scratch_dir("shebang-fifo");
        let fifo = dir.join("app.fcgi");
        let path = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(path.as_ptr(), 0o600) }, 0);
        assert_eq!(read(&fifo, None), Shebang::Silent);
    }
}
