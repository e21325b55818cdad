//! fcgibridge: FastCGI/SCGI in front, pools of Python WSGI workers behind.
//! See docs/architecture.md for the life of a request through these modules.

mod backend;
mod check;
mod config;
mod control;
mod daemon;
mod dispatch;
mod listen;
mod logging;
mod notify;
mod probe;
mod reload;
mod request;
mod respond;
mod route;
mod status;
mod supervise;

use clap::{Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser)]
#[command(name = "fcgibridge", version, about = "Serve Python WSGI apps to any web server over FastCGI and SCGI")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon.
    Run {
        /// Directory of *.yaml files, read in name order.
        #[arg(long, short, default_value = "conf.d")]
        config: PathBuf,
    },
    /// Show the running daemon's listeners, pools and workers (over its control socket).
    Status {
        #[arg(long, short, default_value = "conf.d")]
        config: PathBuf,
        /// The control socket (default: bridge.control-socket, else <runtime-dir>/control.sock).
        #[arg(long)]
        socket: Option<PathBuf>,
        /// Print the JSON status document instead of tables.
        #[arg(long)]
        json: bool,
    },
    /// Ask the running daemon to reload (as SIGHUP does).
    Reload {
        #[arg(long, short, default_value = "conf.d")]
        config: PathBuf,
        #[arg(long)]
        socket: Option<PathBuf>,
    },
    /// Ask the running daemon to stop gracefully (as SIGTERM does).
    Stop {
        #[arg(long, short, default_value = "conf.d")]
        config: PathBuf,
        #[arg(long)]
        socket: Option<PathBuf>,
    },
    /// Validate the configuration and print the effective result.
    Check {
        #[arg(long, short, default_value = "conf.d")]
        config: PathBuf,
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
        /// Request body, sent as is; @file reads it from a file, @- from stdin.
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
        Command::Run { config } => daemon::main(&config),
        Command::Check { config } => check::main(&config),
        Command::Status { config, socket, json } => control::main(&config, socket, "status", json),
        Command::Reload { config, socket } => control::main(&config, socket, "reload", false),
        Command::Stop { config, socket } => control::main(&config, socket, "stop", false),
        Command::Request { address, path, method, headers, data, scgi, timeout } => {
            request::main(request::Args { address, path, method, headers, data, scgi, timeout })
        }
    }
}
