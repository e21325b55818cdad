//! The `fcgibridge` command: its command-line syntax, and a call into the library for each
//! command (lib.rs; docs/architecture.md maps the modules).

use clap::{Parser, Subcommand};
use fcgibridge::{cli, config, daemon};
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "fcgibridge",
    version,
    about = "Serve Python WSGI and ASGI apps (and FastCGI programs) to any web server over FastCGI and SCGI"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// `--config`, shared by the commands that read the configuration.
#[derive(clap::Args)]
struct ConfigArg {
    /// Directory of *.yaml files, read in name order (default: $FCGIBRIDGE_CONFIG,
    /// else ./conf.d, else /etc/fcgibridge/conf.d).
    #[arg(long, short)]
    config: Option<PathBuf>,
}

impl ConfigArg {
    /// The directory to read; on stderr, which one and why when it was not given.
    fn resolve(self) -> Result<PathBuf, std::process::ExitCode> {
        match config::discover::config_dir(self.config) {
            Ok((dir, origin)) => {
                if origin != config::discover::Origin::Flag {
                    eprintln!("fcgibridge: configuration {} (from {origin})", dir.display());
                }
                Ok(dir)
            }
            Err(e) => {
                eprintln!("fcgibridge: {e}");
                Err(std::process::ExitCode::from(2))
            }
        }
    }
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon.
    Run {
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Show the running daemon's listeners, pools and workers (over its control socket).
    Status {
        #[command(flatten)]
        config: ConfigArg,
        /// The control socket (default: bridge.control-socket, else <runtime-dir>/control.sock).
        #[arg(long)]
        socket: Option<PathBuf>,
        /// Print the JSON status document instead of tables.
        #[arg(long)]
        json: bool,
    },
    /// A live view of the running daemon: request and 503 rates, pools and workers.
    Top {
        #[command(flatten)]
        config: ConfigArg,
        /// The control socket (default: bridge.control-socket, else <runtime-dir>/control.sock).
        #[arg(long)]
        socket: Option<PathBuf>,
        /// Time between refreshes.
        #[arg(long, short = 'n', default_value = "1s", value_parser = config::units::parse_duration)]
        interval: std::time::Duration,
        /// Stop after this many screens (default: until interrupted).
        #[arg(long)]
        count: Option<u64>,
    },
    /// Have the running daemon reload (as SIGHUP does) and print the outcome: what changed
    /// (exit 0), or why the running configuration stays (exit 1).
    Reload {
        #[command(flatten)]
        config: ConfigArg,
        /// The control socket (default: bridge.control-socket, else <runtime-dir>/control.sock).
        #[arg(long)]
        socket: Option<PathBuf>,
        /// Also restart workers whose configuration did not change, rolling: how new
        /// application code is loaded. Every pool's (as SIGUSR2 does), or only those of
        /// the POOLs named.
        #[arg(long)]
        restart_workers: bool,
        /// With --restart-workers: the pools whose workers restart (a template's name
        /// restarts all its instances). Default: every pool.
        #[arg(value_name = "POOL", requires = "restart_workers")]
        pools: Vec<String>,
        /// Then wait until the rolling restarts are over (every worker taking requests runs
        /// the new code or configuration); exit 1 with the start error if a pool's new
        /// workers cannot start. At most DURATION (default: each pool's startup-timeout per
        /// round of replacements plus its graceful-timeout, at least 2m).
        #[arg(long, value_name = "DURATION", num_args = 0..=1, require_equals = true, value_parser = config::units::parse_duration)]
        wait: Option<Option<std::time::Duration>>,
    },
    /// Ask the running daemon to stop gracefully (as SIGTERM does).
    Stop {
        #[command(flatten)]
        config: ConfigArg,
        /// The control socket (default: bridge.control-socket, else <runtime-dir>/control.sock).
        #[arg(long)]
        socket: Option<PathBuf>,
        /// Then wait until the daemon has exited (its requests finished, its workers
        /// stopped); exit 1 if it still runs after DURATION (default: the configuration's
        /// drain-period + shutdown-timeout + the longest graceful-timeout + 1m).
        #[arg(long, value_name = "DURATION", num_args = 0..=1, require_equals = true, value_parser = config::units::parse_duration)]
        wait: Option<Option<std::time::Duration>>,
    },
    /// Stop one instance of a pool template (a later request for its key makes a new one).
    StopInstance {
        /// The pool template's name (its key under `pools:`).
        template: String,
        /// The instance's key: its host or user name (`fcgibridge status` lists them).
        key: String,
        #[command(flatten)]
        config: ConfigArg,
        /// The control socket (default: bridge.control-socket, else <runtime-dir>/control.sock).
        #[arg(long)]
        socket: Option<PathBuf>,
    },
    /// Validate the configuration and print the effective result.
    Check {
        #[command(flatten)]
        config: ConfigArg,
        /// Then import every pool's app as its workers would — the pool's interpreter, user,
        /// chroot, chdir, env and interface — and report each, `ok` or its start-up error
        /// (on stderr; exit 1 if one fails). This runs the apps' code, as the pools' users.
        /// Nothing is served; an import longer than the pool's startup-timeout is killed.
        /// Templates are skipped (their instances are made on demand), and so are `command:`
        /// pools (FastCGI programs, not Python apps).
        #[arg(long)]
        import: bool,
    },
    /// Send one request to a FastCGI or SCGI address and print the response.
    Request {
        /// host:port, or unix:/path/to/socket (a bare path also works).
        address: String,
        /// Request path, with an optional ?query.
        path: String,
        /// HTTP method (default: GET, or POST when -d is given).
        #[arg(short = 'X', long)]
        method: Option<String>,
        /// "Name: value"; repeatable.
        #[arg(short = 'H', long = "header")]
        headers: Vec<String>,
        /// NAME=VALUE: a CGI param sent as given, in place of the one the command would send
        /// (REMOTE_USER=alice for a `{user}` template, REMOTE_ADDR, HTTPS=on, SCRIPT_NAME…);
        /// repeatable.
        #[arg(short = 'p', long = "param")]
        params: Vec<String>,
        /// Request body, sent as is (with Content-Type application/x-www-form-urlencoded, as
        /// curl's -d, unless -H sets one); @file reads it from a file, @- from stdin.
        #[arg(short = 'd', long = "data")]
        data: Option<String>,
        /// Speak SCGI instead of FastCGI.
        #[arg(long)]
        scgi: bool,
        /// Give up after this long connecting, or waiting on any read or write ("0" = never).
        #[arg(long, default_value = "60s", value_parser = config::units::parse_duration)]
        timeout: std::time::Duration,
    },
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run { config } => config.resolve().map_or_else(|code| code, |dir| daemon::main(&dir)),
        Command::Check { config, import } => {
            config.resolve().map_or_else(|code| code, |dir| cli::check::main(&dir, import))
        }
        Command::Status { config, socket, json } => control_main(config, socket, "status", json),
        Command::Top { config, socket, interval, count } => {
            control_socket(config, socket).map_or_else(|code| code, |path| cli::top::main(&path, interval, count))
        }
        Command::Reload { config, socket, restart_workers, pools, wait } => {
            let command = match cli::control::reload_command(restart_workers, &pools, wait) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("fcgibridge: {e}");
                    return std::process::ExitCode::from(2);
                }
            };
            control_main(config, socket, &command, false)
        }
        Command::Stop { config, socket, wait } => cli::control::stop(&control_target(config, socket), wait),
        Command::StopInstance { template, key, config, socket } => {
            control_main(config, socket, &format!("stop-instance {template} {key}"), false)
        }
        Command::Request { address, path, method, headers, params, data, scgi, timeout } => {
            cli::request::main(cli::request::Args { address, path, method, headers, params, data, scgi, timeout })
        }
    }
}

/// A control command's socket: the one given, or the one the configuration names.
fn control_socket(config: ConfigArg, socket: Option<PathBuf>) -> Result<PathBuf, std::process::ExitCode> {
    if socket.is_some() {
        return cli::control::socket_for(None, socket);
    }
    cli::control::socket_for(Some(&config.resolve()?), None)
}

/// Where a control command finds the daemon: `--socket`, else the configuration.
fn control_target(config: ConfigArg, socket: Option<PathBuf>) -> cli::control::Target {
    use cli::control::Target;
    match socket {
        Some(path) => Target::Socket(path),
        None => config.resolve().map_or_else(Target::Unknown, Target::ConfigDir),
    }
}

/// `status`, `reload`, `stop-instance`: one command over the control socket (a reload
/// without one: its signal to systemd's $MAINPID, cli/control.rs).
fn control_main(config: ConfigArg, socket: Option<PathBuf>, command: &str, json: bool) -> std::process::ExitCode {
    cli::control::main(&control_target(config, socket), command, json)
}
