//! Configuration errors, worded for the operator who has to fix the file.
use super::locate::{KeyIndex, KeyPath, Pos};
use super::hint;
use std::fmt;
use std::io;

/// A place in a config file: `conf.d/10-demo.yaml:7:5`, or just the file when the
/// position is unknown.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct At {
    /// The file as the operator named it (the `--config` directory joined with its name).
    pub file: String,
    pub pos: Option<Pos>,
}

impl fmt::Display for At {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.pos {
            Some(pos) => write!(f, "{}:{}", self.file, pos),
            None => f.write_str(&self.file),
        }
    }
}

/// Why a configuration was rejected. Display reads `file:line:column: key: what to change`.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{dir}: cannot read the configuration directory: {source}")]
    ReadDir { dir: String, source: io::Error },
    #[error("{file}: cannot read: {source}")]
    ReadFile { file: String, source: io::Error },
    #[error("{dir}: no *.yaml files found; a configuration needs at least one listener and one pool")]
    NoFiles { dir: String },
    #[error("{dir}: no listeners are defined; add a `listeners:` section to one of its *.yaml files")]
    NoListeners { dir: String },
    /// The YAML itself is malformed (no key can be named).
    #[error("{at}: {message}")]
    Syntax { at: At, message: String },
    /// A key has a bad value, is unknown, or conflicts with another.
    #[error("{at}: {key}: {message}")]
    Invalid { at: At, key: String, message: String },
    /// Several of the above, in file order: one line each, so one `check` names them all.
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    Several(Vec<ConfigError>),
}

impl ConfigError {
    /// The file or directory the error is about.
    fn file(&self) -> &str {
        match self {
            ConfigError::ReadDir { dir, .. } | ConfigError::NoFiles { dir } | ConfigError::NoListeners { dir } => dir,
            ConfigError::ReadFile { file, .. } => file,
            ConfigError::Syntax { at, .. } | ConfigError::Invalid { at, .. } => &at.file,
            ConfigError::Several(_) => "",
        }
    }

    /// Ok, the one error, or all of them.
    pub fn from_all(mut errors: Vec<ConfigError>) -> Result<(), ConfigError> {
        // In the files' (name) order, as the operator reads them; stable within a file.
        errors.sort_by(|a, b| a.file().cmp(&b.file()));
        match errors.len() {
            0 => Ok(()),
            1 => Err(errors.remove(0)),
            _ => Err(ConfigError::Several(errors)),
        }
    }
}

/// One file's name and key positions, for building errors that point into it.
#[derive(Debug)]
pub struct Source {
    pub file: String,
    pub index: KeyIndex,
}

impl Source {
    /// An error about the key at `path`, placed at that key (or its nearest parent).
    pub fn invalid(&self, path: &KeyPath, message: impl Into<String>) -> ConfigError {
        ConfigError::Invalid { at: self.at(path), key: path.to_string(), message: message.into() }
    }

    /// Where the key at `path` was written.
    pub fn at(&self, path: &KeyPath) -> At {
        At { file: self.file.clone(), pos: self.index.find(path) }
    }

    /// Translate a serde-saphyr error: position from the parser, key path from the index.
    pub fn yaml_error(&self, err: &serde_saphyr::Error) -> ConfigError {
        use serde_saphyr::{DefaultMessageFormatter, Error as E, MessageFormatter};

        // The position of the outermost error is where the value was used (for an alias,
        // the `*name`); the innermost one says what was wrong with it.
        let pos = err
            .location()
            .filter(|l| l.line() > 0)
            .map(|l| Pos { line: l.line() as usize, column: l.column() as usize });
        let mut err = err;
        while let E::AliasError { error, .. } | E::WithSnippet { error, .. } = err {
            err = error;
        }
        let at = At { file: self.file.clone(), pos };
        let keyed = |message: String, path: Option<&KeyPath>| match path {
            Some(path) if !path.0.is_empty() => {
                ConfigError::Invalid { at: at.clone(), key: path.to_string(), message }
            }
            _ => ConfigError::Syntax { at: at.clone(), message },
        };
        let path_here = pos.and_then(|p| self.index.path_at(p));
        match err {
            E::SerdeUnknownField { field, expected, .. } => {
                let hint = hint::suggestion(field, expected);
                keyed(format!("unknown key{hint}"), path_here)
            }
            E::SerdeMissingField { field, .. } => {
                keyed(format!("missing key `{field}`"), pos.and_then(|p| self.index.container_at(p)))
            }
            E::SerdeInvalidType { unexpected, expected, .. } => {
                keyed(format!("expected {expected}, found {unexpected}"), path_here)
            }
            E::SerdeInvalidValue { unexpected, expected, .. } => {
                keyed(format!("invalid value {unexpected}; expected {expected}"), path_here)
            }
            E::DuplicateMappingKey { .. } => keyed("defined twice in this file".to_owned(), path_here),
            E::InvalidScalar { ty, .. } if ty.starts_with('u') => {
                keyed("expected a whole number, 0 or more".to_owned(), path_here)
            }
            E::Unexpected { expected, .. } => {
                let wanted = match *expected {
                    "string scalar" => "a single value (a string or number)",
                    "mapping start" => "a mapping (indented `key: value` lines or `{key: value}`)",
                    "sequence start" => "a list (`- item` lines or `[a, b]`)",
                    other => other,
                };
                keyed(format!("expected {wanted}"), path_here)
            }
            E::NullIntoString { .. } => keyed("has no value; write one, or leave the key out".to_owned(), path_here),
            E::Message { .. } | E::InvalidScalar { .. } => {
                let message = DefaultMessageFormatter.format_message(err).into_owned();
                keyed(message, path_here)
            }
            E::MultipleDocuments { .. } => ConfigError::Syntax {
                at,
                message: "a second YAML document (`---`); put each one in its own *.yaml file".to_owned(),
            },
            other => {
                let message = DefaultMessageFormatter.format_message(other).into_owned();
                ConfigError::Syntax { at, message }
            }
        }
    }
}
