//! Pools of generic FastCGI programs (`command:` instead of `app:`): php-cgi, an unmodified
//! flup `.fcgi` script, or any program that follows the FastCGI spec's start-up contract —
//! a listening socket on fd 0 (FCGI_LISTENSOCK_FILENO), accept and serve. Such a program is
//! a pool member like the native worker, minus the readiness pipe: it gets no fd 3, so the
//! pipe closes at exec and the worker's task takes the program as ready once it is still alive after
//! a short grace period (see docs/worker-contract.md).
use crate::config::{App, Pool};
use tokio::process::Command;

/// The command line of a program pool's worker, or `None` for a WSGI pool.
///
/// `PHP_FCGI_CHILDREN` defaults to the pool's `threads`: php-cgi without it accepts one
/// connection at a time, and the bridge keeps `threads` connections open to each worker,
/// so all but one would wait in the backlog. Other programs ignore the variable; the
/// pool's `env` (applied afterwards) overrides it.
pub(crate) fn program_command(pool: &Pool) -> Option<Command> {
    let App::Command(argv) = &pool.app else { return None };
    let mut cmd = Command::new(&argv[0]);
    cmd.args(&argv[1..]);
    cmd.env("PHP_FCGI_CHILDREN", pool.threads.to_string());
    Some(cmd)
}
