//! Path resolution: relative to the naming file's directory, and finding the interpreter.
use std::ffi::OsStr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

/// `path` made absolute against `base` and cleaned of `.` and `..` without touching the
/// file system (a virtualenv's `bin/python` symlink must stay as written: following it
/// would lose the virtualenv).
pub(crate) fn resolve(base: &Path, path: &str) -> PathBuf {
    let joined = base.join(path);
    let mut out = PathBuf::new();
    for component in joined.components() {
        match component {
            Component::CurDir => {}
            Component::ParentDir => {
                // Never climbs above the root, like the kernel.
                if out.parent().is_some() {
                    out.pop();
                }
            }
            other => out.push(other.as_os_str()),
        }
    }
    out
}

/// The directory `dir` made absolute against the current directory.
pub(crate) fn absolute_dir(dir: &Path) -> std::io::Result<PathBuf> {
    let abs = std::path::absolute(dir)?;
    Ok(resolve(&abs, "."))
}

/// The interpreter of a `python:` written as a command line (`/usr/bin/python3 -u`), when
/// its first word is one.
fn interpreter_alone(base: &Path, spec: &str) -> Option<PathBuf> {
    let (first, rest) = spec.split_once(char::is_whitespace)?;
    let path = resolve(base, first);
    (!rest.trim().is_empty() && is_executable_file(&path)).then_some(path)
}

pub(crate) fn is_executable_file(path: &Path) -> bool {
    path.metadata().map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0).unwrap_or(false)
}

/// Whose PATH `check` found the default python3 on: its own, while the daemon looks on the
/// PATH it was started with, which a service manager may set otherwise (a systemd unit's
/// Environment=PATH, or systemd's default). Ends `check`'s comments on the interpreter.
pub(crate) const ON_CHECKS_PATH: &str = "the PATH of this check; the daemon looks on the PATH it was started with";

/// The interpreter a pool names: a command on PATH, a path, or a virtualenv directory.
/// Returns the absolute path to run, or what the operator should change.
pub(crate) fn find_python(spec: &str, base: &Path, search_path: Option<&OsStr>) -> Result<PathBuf, String> {
    if spec.is_empty() {
        return Err("is empty; name an interpreter such as python3, a path, or a virtualenv directory".into());
    }
    if spec.contains('/') {
        let path = resolve(base, spec);
        if path.is_dir() {
            let python = path.join("bin").join("python");
            if is_executable_file(&python) {
                return Ok(python);
            }
            let missing =
                format!("{} is a directory but not a virtualenv: {} is missing", path.display(), python.display());
            // mod_wsgi's python-home=/usr: a prefix with its interpreter under another name.
            let python3 = path.join("bin").join("python3");
            return Err(if is_executable_file(&python3) {
                format!("{missing}; name its interpreter instead: `python: {}`", python3.display())
            } else {
                missing
            });
        }
        return if is_executable_file(&path) {
            Ok(path)
        } else if path.exists() {
            Err(format!("{} is not an executable file", path.display()))
        } else if let Some(alone) = interpreter_alone(base, spec) {
            // `python: /usr/bin/python3 -u`, a command line: uWSGI's and systemd's habit.
            Err(format!(
                "{} does not exist; python: names the interpreter alone: write `python: {}` (its options go in the pool's env as PYTHON* variables: -u is PYTHONUNBUFFERED: 1)",
                path.display(),
                alone.display()
            ))
        } else {
            Err(format!("{} does not exist", path.display()))
        };
    }
    match find_on_path(spec, search_path) {
        Some(found) => found,
        None => {
            Err(format!("{spec:?} was not found on PATH; set python: to an interpreter path or a virtualenv directory"))
        }
    }
}

/// The command `name` (no `/` in it) looked up on `search_path` as a shell would: its
/// absolute path; None when no directory has it.
pub(crate) fn find_on_path(name: &str, search_path: Option<&OsStr>) -> Option<Result<PathBuf, String>> {
    let dirs = search_path.map(|p| std::env::split_paths(p).collect::<Vec<_>>()).unwrap_or_default();
    let dir = dirs.into_iter().find(|dir| is_executable_file(&dir.join(name)))?;
    // A relative PATH entry would change meaning once workers chdir.
    Some(absolute_dir(&dir).map(|d| d.join(name)).map_err(|e| e.to_string()))
}

/// The `command:` list of a pool: argv[0] found on `PATH` (or relative to the config file's
/// directory when it contains a `/`), the rest passed as written.
pub(crate) fn resolve_command(
    argv: Vec<String>,
    dir: &Path,
    search_path: Option<&std::ffi::OsStr>,
) -> Result<super::App, String> {
    let Some(first) = argv.first() else {
        return Err("is empty; name a FastCGI program, e.g. [php-cgi]".into());
    };
    if argv.iter().any(|a| a.contains('\0')) {
        return Err("an argument contains a NUL byte".into());
    }
    let exe = find_python(first, dir, search_path).map_err(|m| {
        // find_python's wording speaks of interpreters; say what is meant here.
        m.replace("set python: to an interpreter path or a virtualenv directory", "write the program's path")
    })?;
    let mut resolved = vec![exe.display().to_string()];
    resolved.extend(argv.into_iter().skip(1));
    Ok(super::App::Command(resolved))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths_resolve_against_the_base() {
        let base = Path::new("/etc/fcgibridge/conf.d");
        assert_eq!(resolve(base, "../examples/app.py"), PathBuf::from("/etc/fcgibridge/examples/app.py"));
        assert_eq!(resolve(base, "./x/./y"), PathBuf::from("/etc/fcgibridge/conf.d/x/y"));
        assert_eq!(resolve(base, "/srv/app.wsgi"), PathBuf::from("/srv/app.wsgi"));
        assert_eq!(resolve(Path::new("/"), "../../x"), PathBuf::from("/x"));
    }

    #[test]
    fn python_is_found_on_the_given_path() {
        let dir = crate::scratch::scratch_dir("python-on-path");
        let bin = dir.join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        let exe = bin.join("python");
        std::fs::write(&exe, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();

        let path = std::env::join_paths([dir.join("nothing-here"), bin.clone()]).unwrap();
        assert_eq!(find_python("python", Path::new("/"), Some(&path)), Ok(exe.clone()));
        // A virtualenv directory means its bin/python.
        assert_eq!(find_python(dir.to_str().unwrap(), Path::new("/"), None), Ok(exe.clone()));
        let missing = find_python("python9", Path::new("/"), Some(&path)).unwrap_err();
        assert!(missing.contains("not found on PATH"), "{missing}");
        let not_venv = find_python(bin.to_str().unwrap(), Path::new("/"), None).unwrap_err();
        assert!(not_venv.contains("not a virtualenv"), "{not_venv}");
        // A command line pasted from uWSGI or a unit file names the interpreter to write.
        let line = find_python(&format!("{} -u", exe.display()), Path::new("/"), None).unwrap_err();
        assert!(
            line.ends_with(&format!(
                "write `python: {}` (its options go in the pool's env as PYTHON* variables: -u is PYTHONUNBUFFERED: 1)",
                exe.display()
            )),
            "{line}"
        );
        let gone = find_python("/nonexistent/python3 -u", Path::new("/"), None).unwrap_err();
        assert_eq!(gone, "/nonexistent/python3 -u does not exist");
    }

    #[test]
    fn argv0_is_resolved_on_path() {
        let path = std::ffi::OsString::from("/bin:/usr/bin");
        let app = resolve_command(vec!["sh".into(), "-c".into(), "x".into()], Path::new("/"), Some(&path));
        match app {
            Ok(crate::config::App::Command(argv)) => {
                assert!(argv[0].ends_with("/sh"), "{argv:?}");
                assert_eq!(&argv[1..], ["-c", "x"]);
            }
            other => panic!("{other:?}"),
        }
        assert!(resolve_command(vec![], Path::new("/"), Some(&path)).is_err());
        let err = resolve_command(vec!["no-such-program-xyz".into()], Path::new("/"), Some(&path)).unwrap_err();
        assert!(err.contains("not found on PATH"), "{err}");
    }
}
