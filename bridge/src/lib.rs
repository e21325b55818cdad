//! fcgibridge: FastCGI/SCGI in front, pools of Python WSGI workers behind.
//!
//! The daemon as a library: `main.rs` parses the command line and calls [`daemon::main`]
//! or one of the commands in [`cli`]. docs/architecture.md follows a request through these
//! modules and has a map of where things are.
#![warn(unreachable_pub)]

mod backend;
mod claim;
pub mod cli;
pub mod config;
mod control;
pub mod daemon;
mod dispatch;
mod flow;
mod heap;
mod listen;
mod logging;
mod notify;
mod registry;
mod reload;
mod respond;
mod rollout;
mod route;
mod scoreboard;
#[cfg(test)]
mod scratch;
mod shared_memory;
mod status;
mod supervise;
mod worker_handle;
