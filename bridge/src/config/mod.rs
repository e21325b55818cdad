//! Configuration: a directory of YAML files (conf.d/*.yaml) merged in name order.
//! SKELETON: `model` is the contract between the loader and the runtime.

pub mod model;
pub use model::*;

use std::path::Path;

/// Why a configuration was rejected; Display reads "file:line:column: key: what to change".
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

/// Read every `*.yaml` in `dir` in name order, apply defaults, validate.
pub fn load(dir: &Path) -> Result<Config, ConfigError> {
    let _ = dir;
    todo!()
}
