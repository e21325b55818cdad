//! Pools of generic FastCGI programs (`command:` instead of `app:`): php-cgi, an unmodified
//! flup `.fcgi` script, or any program that follows the FastCGI spec's start-up contract —
//! a listening socket on fd 0 (FCGI_LISTENSOCK_FILENO), accept and serve. Such a program is
//! a pool member like the native worker, minus the readiness pipe: it gets no fd 3, so the
//! pipe closes at exec and the slot takes the program as ready once it is still alive after
//! a short grace period (see docs/worker-contract.md).
use crate::config::{paths, App, Pool};
use std::path::Path;
use tokio::process::Command;

/// The `command:` list of a pool: argv[0] found on `PATH` (or relative to the config file's
/// directory when it contains a `/`), the rest passed as written.
pub fn resolve_command(argv: Vec<String>, dir: &Path, search_path: Option<&std::ffi::OsStr>) -> Result<App, String> {
    let Some(first) = argv.first() else {
        return Err("is empty; name a FastCGI program, e.g. [php-cgi]".into());
    };
    if argv.iter().any(|a| a.contains('\0')) {
        return Err("an argument contains a NUL byte".into());
    }
    let exe = paths::find_python(first, dir, search_path).map_err(|m| {
        // find_python's wording speaks of interpreters; say what is meant here.
        m.replace("set python: to an interpreter path or a virtualenv directory", "write the program's path")
    })?;
    let mut resolved = vec![exe.display().to_string()];
    resolved.extend(argv.into_iter().skip(1));
    Ok(App::Command(resolved))
}

/// The command line of a program pool's worker, or `None` for a WSGI pool.
///
/// `PHP_FCGI_CHILDREN` defaults to the pool's `threads`: php-cgi without it accepts one
/// connection at a time, and the bridge keeps `threads` connections open to each worker,
/// so all but one would wait in the backlog. Other programs ignore the variable; the
/// pool's `env` (applied afterwards) overrides it.
pub fn program_command(pool: &Pool) -> Option<Command> {
    let App::Command(argv) = &pool.app else { return None };
    let mut cmd = Command::new(&argv[0]);
    cmd.args(&argv[1..]);
    cmd.env("PHP_FCGI_CHILDREN", pool.threads.to_string());
    Some(cmd)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argv0_is_resolved_on_path() {
        let path = std::ffi::OsString::from("/bin:/usr/bin");
        let app = resolve_command(vec!["sh".into(), "-c".into(), "x".into()], Path::new("/"), Some(&path));
        match app {
            Ok(App::Command(argv)) => {
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
