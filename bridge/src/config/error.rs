//! Configuration errors, worded for the operator who has to fix the file.
use super::hint;
use super::locate::{KeyIndex, KeyPath, Pos, Seg};
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
    #[error("{dir}: no *.yaml files found{hint}; a configuration needs at least one listener and one pool")]
    NoFiles { dir: String, hint: &'static str },
    #[error("{file}: the configuration is a directory of *.yaml files, not one file: write --config {dir}")]
    NotADirectory { file: String, dir: String },
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
    Several(Vec<Self>),
}

impl ConfigError {
    /// The file or directory the error is about, and where in it.
    fn place(&self) -> (&str, Option<Pos>) {
        match self {
            Self::ReadDir { dir, .. } | Self::NoFiles { dir, .. } | Self::NoListeners { dir } => (dir, None),
            Self::NotADirectory { file, .. } => (file, None),
            Self::ReadFile { file, .. } => (file, None),
            Self::Syntax { at, .. } | Self::Invalid { at, .. } => (&at.file, at.pos),
            Self::Several(_) => ("", None),
        }
    }

    /// The one error, or all of them (`errors` is not empty).
    pub fn several(errors: Vec<Self>) -> Self {
        match Self::from_all(errors) {
            Err(e) => e,
            Ok(()) => Self::Several(Vec::new()),
        }
    }

    /// Ok, the one error, or all of them.
    pub fn from_all(errors: Vec<Self>) -> Result<(), Self> {
        let mut flat = Vec::with_capacity(errors.len());
        for e in errors {
            match e {
                Self::Several(inner) => flat.extend(inner),
                e => flat.push(e),
            }
        }
        let mut errors = flat;
        // In the files' (name) order, as the operator reads them, and by line in a file.
        errors.sort_by(|a, b| a.place().cmp(&b.place()));
        match errors.len() {
            0 => Ok(()),
            1 => Err(errors.remove(0)),
            _ => Err(Self::Several(errors)),
        }
    }
}

/// The value of `r`, or `None` with its error added to `errors`: one bad key of a pool or
/// listener does not keep its other keys from being checked.
pub(super) fn note<T>(errors: &mut Vec<ConfigError>, r: Result<T, ConfigError>) -> Option<T> {
    r.map_err(|e| errors.push(e)).ok()
}

/// One file's name and key positions, for building errors that point into it.
#[derive(Debug)]
pub struct Source {
    pub file: String,
    pub index: KeyIndex,
}

impl Source {
    /// An error about the key at `path`, placed at that key (or its nearest parent).
    /// A key brought by a merge (`<<: *defaults`) is placed in the anchor, and says so.
    pub fn invalid(&self, path: &KeyPath, message: impl Into<String>) -> ConfigError {
        let mut message = message.into();
        if let Some(via) = self.index.brought_by(path) {
            message.push_str(&via.note());
        }
        ConfigError::Invalid { at: self.at(path), key: path.to_string(), message }
    }

    /// Where the key at `path` was written.
    pub fn at(&self, path: &KeyPath) -> At {
        At { file: self.file.clone(), pos: self.index.find(path) }
    }

    /// Translate a serde-saphyr error: position from the parser, key path from the index;
    /// and for an error on one key, how to take that key out so that the rest of the file
    /// can be checked (config/recover.rs). `text` is the text that was parsed.
    pub fn yaml_error_and_fix(&self, err: &serde_saphyr::Error, text: &str) -> (ConfigError, Option<Fix>) {
        use serde_saphyr::{DefaultMessageFormatter, Error as E, MessageFormatter};

        // The position of the outermost error is where the value was used (for an alias,
        // the `*name`); the innermost one says what was wrong with it.
        let pos = err
            .location()
            .filter(|l| l.line() > 0)
            .map(|l| Pos { line: l.line() as usize, column: l.column() as usize });
        let mut err = err;
        let mut aliased = false;
        while let E::AliasError { error, .. } | E::WithSnippet { error, .. } = err {
            aliased |= matches!(err, E::AliasError { .. });
            err = error;
        }
        // For a value an alias brings (`<<: *defaults`), where the anchor has it: the innermost
        // error's own place (the alias error's "defined" one may be where the anchor starts).
        let defined = err
            .location()
            .filter(|l| aliased && l.line() > 0)
            .map(|l| Pos { line: l.line() as usize, column: l.column() as usize });
        let at = At { file: self.file.clone(), pos };
        let brought = self.brought(pos, defined);
        let keyed = |message: String, path: Option<&KeyPath>| match (brought, path) {
            (Some((place, path, via)), _) => {
                let at = At { pos: Some(place), ..at.clone() };
                ConfigError::Invalid { at, key: path.to_string(), message: format!("{message}{}", via.note()) }
            }
            (None, Some(path)) if !path.0.is_empty() => {
                ConfigError::Invalid { at: at.clone(), key: path.to_string(), message }
            }
            _ => ConfigError::Syntax { at: at.clone(), message },
        };
        let path_here = pos.and_then(|p| self.index.path_at(p));
        let fix = |remove: bool| match (path_here, pos) {
            (Some(path), Some(at)) if !path.0.is_empty() => Some(Fix { path: path.clone(), at, remove }),
            _ => None,
        };
        let error = match err {
            E::SerdeUnknownField { field, expected, .. } => {
                let hint = hint::unknown_key(field, expected);
                return (keyed(format!("unknown key{hint}"), path_here), fix(true));
            }
            E::DuplicateMappingKey { .. } => {
                return (keyed("defined twice in this file".to_owned(), path_here), fix(true))
            }
            E::SerdeMissingField { field, .. } => {
                let path = pos.and_then(|p| self.index.container_at(p));
                return (keyed(format!("missing key `{field}`"), path), None);
            }
            E::SerdeInvalidType { unexpected, expected, .. } => {
                keyed(format!("expected {expected}, found {unexpected}"), path_here)
            }
            E::SerdeInvalidValue { unexpected, expected, .. } => {
                keyed(format!("invalid value {unexpected}; expected {expected}"), path_here)
            }
            E::InvalidScalar { ty, .. } => {
                let least = brought.map(|(_, path, _)| path).or(path_here).map_or(0, super::resolve::least);
                keyed(scalar_wanted(ty, least), path_here)
            }
            E::Unexpected { expected, .. } => {
                let wanted = match *expected {
                    "string scalar" => "a single value (a string or number)",
                    "mapping start" => "a mapping (indented `key: value` lines or `{key: value}`)",
                    "sequence start" => "a list (`- item` lines or `[a, b]`)",
                    other => other,
                };
                let misplaced = path_here.and_then(under_indented).unwrap_or_default();
                keyed(format!("expected {wanted}{misplaced}"), path_here)
            }
            E::NullIntoString { .. } => keyed("has no value; write one, or leave the key out".to_owned(), path_here),
            E::Message { .. } => {
                let message = DefaultMessageFormatter.format_message(err).into_owned();
                keyed(message, path_here)
            }
            E::MultipleDocuments { .. } => {
                let message = "a second YAML document (`---`); put each one in its own *.yaml file".to_owned();
                // The parser places it at the document's first node, a line or more after its `---`.
                let at = At { pos: self.index.second_document().or(pos), ..at };
                return (ConfigError::Syntax { at, message }, None);
            }
            other => {
                if let Some(tab) = pos.and_then(|p| indenting_tab(other, text, p)) {
                    let message = "a tab in the indentation; YAML indents with spaces only".to_owned();
                    return (ConfigError::Syntax { at: At { pos: Some(tab), ..at }, message }, None);
                }
                let message = DefaultMessageFormatter.format_message(other).into_owned();
                return (ConfigError::Syntax { at, message }, None);
            }
        };
        // A bad value: the key stays, without its value.
        (error, fix(false))
    }

    /// For an error about a value an alias brings: where the anchor has it, the key the
    /// alias makes of it, and the alias. serde places an error in a merge's anchor
    /// (`<<: *defaults`) at the alias (`pos`) and says where the value is (`defined`); an
    /// unknown key of the anchor it places there, in its `x-` key (read only through its
    /// aliases); one of a mapping merged as written (`<<: {…}`) under `<<`. `None` for any
    /// other error. The fix still sets the alias aside: the anchor may be right for its
    /// other users.
    fn brought(&self, pos: Option<Pos>, defined: Option<Pos>) -> Option<(Pos, &KeyPath, &super::locate::Via)> {
        let place = defined.or(pos)?;
        let written = self.index.path_at(place).map(|p| &p.0[..]).unwrap_or_default();
        let in_x_key = matches!(written.first(), Some(Seg::Key(k)) if k.starts_with("x-"));
        let inline = written.iter().any(|s| matches!(s, Seg::Key(k) if k == "<<"));
        let accept = |via: &super::locate::Via| match (pos, defined) {
            (Some(alias), Some(_)) => via.alias == alias,
            _ => in_x_key || (inline && via.anchor.is_empty()),
        };
        self.index.brought_to(place, accept).map(|(path, via)| (place, path, via))
    }
}

/// Where the tab is that the parser refused as indentation: it reports the tab of a
/// block's indentation at the first character after the line's blanks (a column late for
/// one tab), and a tab indenting the next line of a plain scalar at the scalar's start.
fn indenting_tab(err: &serde_saphyr::Error, text: &str, at: Pos) -> Option<Pos> {
    use serde_saphyr::granit_parser::ErrorKind;
    use serde_saphyr::{Error as E, ExternalMessageSource};
    let E::ExternalMessage { source, .. } = err else { return None };
    let ExternalMessageSource::Parser(scan) = source.as_ref() else { return None };
    // The line the parser names, or the lines after the scalar's first.
    let (first_line, lines) = match scan.kind() {
        ErrorKind::TabInBlockIndentation => (at.line, 1),
        ErrorKind::TabInPlainScalar => (at.line + 1, usize::MAX),
        _ => return None,
    };
    text.split('\n').enumerate().skip(first_line - 1).take(lines).find_map(|(i, line)| {
        let blanks = line.chars().take_while(|c| *c == ' ' || *c == '\t');
        let column = blanks.into_iter().position(|c| c == '\t')? + 1;
        Some(Pos { line: i + 1, column })
    })
}

/// For `listeners.pool` (a listener's key where a listener's name goes: written two spaces
/// short): what to change.
fn under_indented(path: &KeyPath) -> Option<String> {
    const KEYS: [(&str, &str, &[&str]); 2] = [
        ("listeners", "a listener's", &["fastcgi", "scgi", "pool", "routes", "direct", "dialect", "mount"]),
        ("pools", "a pool's", &["app", "python", "processes", "threads", "chdir", "env", "user", "group", "command"]),
    ];
    let [Seg::Key(section), Seg::Key(name)] = &path.0[..] else { return None };
    let (_, whose, _) = KEYS.iter().find(|(s, _, keys)| s == section && keys.contains(&name.as_str()))?;
    Some(format!("; `{name}` is {whose} key: indent it under the name above it"))
}

/// What a key of Rust type `ty` takes, said for the operator (`least`: an unsigned key's
/// smallest accepted value).
fn scalar_wanted(ty: &str, least: u64) -> String {
    let most = match ty {
        "u8" => Some(u64::from(u8::MAX)),
        "u16" => Some(u64::from(u16::MAX)),
        "u32" => Some(u64::from(u32::MAX)),
        "u64" | "usize" => return format!("expected a whole number, {least} or more"),
        _ => None,
    };
    match (most, ty) {
        (Some(most), _) => format!("expected a whole number from {least} to {most}"),
        (None, t) if t.starts_with('i') => "expected a whole number (e.g. -5 or 10)".to_owned(),
        (None, t) if t.starts_with('f') => "expected a number".to_owned(),
        (None, "bool" | "boolean") => "expected true or false".to_owned(),
        (None, other) => format!("expected a value of type {other}"),
    }
}

/// How to take one bad key out of a file's text: `path` was written at or before `at`;
/// `remove` drops the key (unknown, duplicate), else only its value goes.
#[derive(Debug, Clone)]
pub struct Fix {
    pub path: KeyPath,
    pub at: Pos,
    pub remove: bool,
}

impl ConfigError {
    /// This error, saying that the rest of its file was not checked.
    pub fn stops_the_file(self) -> Self {
        const NOTE: &str = " (the rest of this file is not checked until this is fixed)";
        match self {
            Self::Syntax { at, message } => Self::Syntax { at, message: message + NOTE },
            Self::Invalid { at, key, message } => Self::Invalid { at, key, message: message + NOTE },
            other => other,
        }
    }
}
