//! The commands other than `run`: each a client that does its work and exits
//! (main.rs holds their command-line syntax).
pub mod check;
pub mod control;
pub mod request;
pub mod status_table;
pub mod top;
