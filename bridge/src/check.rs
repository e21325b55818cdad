//! `fcgibridge check`: validate conf.d and print the effective configuration.
use std::path::Path;
use std::process::ExitCode;

pub fn main(config_dir: &Path) -> ExitCode {
    let _ = config_dir;
    todo!()
}
