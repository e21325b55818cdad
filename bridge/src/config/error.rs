//! Configuration errors, worded for the operator who has to fix the file.
use super::hint;
use super::locate::{alike, KeyIndex, KeyPath, Pos, Seg, Via};
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
    /// A key has a bad value, is unknown, or conflicts with another. `brought`: the value
    /// is in an anchor, and aliases (`<<: *defaults`) bring it to the key (and others).
    #[error("{at}: {}", invalid_line(.key, .message, .brought.as_deref()))]
    Invalid { at: At, key: String, message: String, brought: Option<Box<Brought>> },
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
        let mut errors = collapse_anchored(flat);
        // In the files' (name) order, as the operator reads them, and by line in a file.
        errors.sort_by(|a, b| a.place().cmp(&b.place()));
        match errors.len() {
            0 => Ok(()),
            1 => Err(errors.remove(0)),
            _ => Err(Self::Several(errors)),
        }
    }
}

/// A key an alias brings a value to: `pools.b.threads` by `<<: *defaults` at line 9.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Landing {
    pub key: KeyPath,
    pub via: Via,
}

/// Where the value of an error comes from when an anchor holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Brought {
    /// The key as the anchor writes it: `x-defaults.threads`.
    pub written: KeyPath,
    /// The keys aliases bring it to, each with its alias (not the written key itself).
    pub landings: Vec<Landing>,
}

impl Brought {
    /// The key and message an error on `key` shows: the anchor's own key when the value
    /// reaches several keys, each named after the message; else the key, and where its
    /// value comes from.
    fn shown(&self, key: &str, message: &str) -> (String, String) {
        match &self.landings[..] {
            [] => (key.to_owned(), message.to_owned()),
            _ if self.written.to_string() == key => {
                (key.to_owned(), format!("{message} (also {})", reached(&self.landings)))
            }
            [one] => (key.to_owned(), format!("{message}{}", one.via.note())),
            all => {
                let anchor = &all[0].via.anchor;
                (self.written.to_string(), format!("{message} (in &{anchor}, {})", reached(all)))
            }
        }
    }
}

/// `key: message` of an invalid key, with where an anchor brought its value.
fn invalid_line(key: &str, message: &str, brought: Option<&Brought>) -> String {
    match brought {
        Some(b) => {
            let (key, message) = b.shown(key, message);
            format!("{key}: {message}")
        }
        None => format!("{key}: {message}"),
    }
}

/// The keys an anchor's value reaches, by pool or listener and line of the alias: `merged
/// into pools a at line 6 and b at line 9; used in pool c at line 12`.
fn reached(landings: &[Landing]) -> String {
    let mut runs: Vec<(bool, &str, Vec<String>)> = Vec::new();
    for l in landings {
        let (section, name) = match &l.key.0[..] {
            [Seg::Key(s), Seg::Key(name), ..] if s == "pools" || s == "listeners" => (s.as_str(), name.clone()),
            _ => ("", l.key.to_string()),
        };
        let item = format!("{name} at line {}", l.via.alias.line);
        match runs.last_mut() {
            Some((merge, s, items)) if *merge == l.via.merge && *s == section => items.push(item),
            _ => runs.push((l.via.merge, section, vec![item])),
        }
    }
    let run = |(merge, section, items): &(bool, &str, Vec<String>)| {
        let verb = if *merge { "merged into" } else { "used in" };
        let word = match (*section, items.len()) {
            ("", _) => "",
            ("pools", 1) => "pool ",
            ("listeners", 1) => "listener ",
            ("pools", _) => "pools ",
            _ => "listeners ",
        };
        format!("{verb} {word}{}", and_list(items))
    };
    runs.iter().map(run).collect::<Vec<_>>().join("; ")
}

/// `a`, `a and b`, `a, b and c`.
fn and_list(items: &[String]) -> String {
    match items {
        [] => String::new(),
        [one] => one.clone(),
        [init @ .., last] => format!("{} and {last}", init.join(", ")),
    }
}

/// Errors on one value that aliases bring to several keys (`<<: *defaults` in pools a, b
/// and c: one place, one message, one key of each pool) as one error naming them all.
fn collapse_anchored(errors: Vec<ConfigError>) -> Vec<ConfigError> {
    let mut kept: Vec<ConfigError> = Vec::with_capacity(errors.len());
    for e in errors {
        match kept.iter_mut().find(|k| one_anchored_value(k, &e)) {
            Some(k) => absorb(k, e),
            None => kept.push(e),
        }
    }
    kept
}

/// Whether `a` and `b` are one error on a value an anchor holds.
fn one_anchored_value(a: &ConfigError, b: &ConfigError) -> bool {
    let (
        ConfigError::Invalid { at, key, message, brought },
        ConfigError::Invalid { at: b_at, key: b_key, message: b_message, brought: b_brought },
    ) = (a, b)
    else {
        return false;
    };
    if at != b_at || at.pos.is_none() || message != b_message {
        return false;
    }
    match (brought, b_brought) {
        (Some(x), Some(y)) => x.written == y.written,
        (Some(x), None) => x.written.to_string() == *b_key,
        (None, Some(y)) => y.written.to_string() == *key,
        (None, None) => false,
    }
}

/// `into` (see [`one_anchored_value`]) naming the keys of `e` as well. The error on the
/// anchor's key as written, when one of them is, is the one shown.
fn absorb(into: &mut ConfigError, e: ConfigError) {
    let (ConfigError::Invalid { key, brought, .. }, ConfigError::Invalid { key: e_key, brought: e_brought, .. }) =
        (into, e)
    else {
        return;
    };
    match (brought.as_mut(), e_brought) {
        (Some(mine), Some(theirs)) => {
            for l in theirs.landings {
                if !mine.landings.contains(&l) {
                    mine.landings.push(l);
                }
            }
        }
        (Some(_), None) => *key = e_key,
        (None, theirs) => *brought = theirs,
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
        let at = self.at(path);
        let brought = self.index.brought_by(path).and_then(|via| {
            let written = self.index.path_at(at.pos?)?.clone();
            Some(Box::new(Brought { written, landings: vec![Landing { key: path.clone(), via: via.clone() }] }))
        });
        ConfigError::Invalid { at, key: path.to_string(), message: message.into(), brought }
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
        let path_here = pos.and_then(|p| self.index.path_at(p));
        let shared = self.shared(brought.map(|(place, path, _)| (place, path)).or(pos.zip(path_here)));
        let keyed = |message: String, path: Option<&KeyPath>| match (&shared, brought, path) {
            (Some((place, key, b)), ..) if path == path_here => {
                let at = At { pos: Some(*place), ..at.clone() };
                ConfigError::Invalid { at, key: key.to_string(), message, brought: Some(Box::new(b.clone())) }
            }
            (_, Some((place, path, via)), _) => {
                let brought = self.brought_once(place, path, via);
                ConfigError::Invalid {
                    at: At { pos: Some(place), ..at.clone() },
                    key: path.to_string(),
                    message,
                    brought,
                }
            }
            (_, None, Some(path)) if !path.0.is_empty() => {
                ConfigError::Invalid { at: at.clone(), key: path.to_string(), message, brought: None }
            }
            _ => ConfigError::Syntax { at: at.clone(), message },
        };
        let fix = |remove: bool| Fix::of(shared.as_ref().map(|(place, _, b)| (*place, b)), path_here, pos, remove);
        let error = match err {
            E::SerdeUnknownField { field, expected, .. } => {
                let hint = hint::unknown_key(field, expected);
                return (keyed(format!("unknown key{hint}"), path_here), fix(true));
            }
            E::DuplicateMappingKey { .. } => return (keyed(self.twice(path_here, pos), path_here), fix(true)),
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
                let misplaced = path_here.and_then(under_indented);
                let hint = misplaced.or_else(|| pos.and_then(|p| written_otherwise(expected, path_here, text, p)));
                keyed(format!("expected {wanted}{}", hint.unwrap_or_default()), path_here)
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
                if let Some((place, message)) = pos.and_then(|p| misplaced_text(other, text, p)) {
                    return (ConfigError::Syntax { at: At { pos: Some(place), ..at }, message }, None);
                }
                let message = DefaultMessageFormatter.format_message(other).into_owned();
                return (ConfigError::Syntax { at, message }, None);
            }
        };
        // A bad value: the key stays, without its value.
        (error, fix(false))
    }

    /// A key written twice in one mapping (at `pos`): where the first one is.
    fn twice(&self, path: Option<&KeyPath>, pos: Option<Pos>) -> String {
        match path.and_then(|p| self.index.first_written(p)).filter(|first| Some(*first) < pos) {
            Some(first) => format!("defined twice in this file (first at line {})", first.line),
            None => "defined twice in this file".to_owned(),
        }
    }

    /// Where the value of the key `path` comes from: the anchor's key at `place`, which the
    /// alias `via` brings.
    fn brought_once(&self, place: Pos, path: &KeyPath, via: &Via) -> Option<Box<Brought>> {
        let written = self.index.path_at(place)?.clone();
        Some(Box::new(Brought { written, landings: vec![Landing { key: path.clone(), via: via.clone() }] }))
    }

    /// For an error on the value at `place`, the key `key`: when aliases bring that value to
    /// the same key of other pools (or listeners), and to no other key, the error is one
    /// error naming them all, and its fix takes the value out where it is written (`None`
    /// for the anchor itself, `x-defaults: &defaults`: taking that out would leave its
    /// aliases dangling).
    fn shared<'a>(&self, found: Option<(Pos, &'a KeyPath)>) -> Option<(Pos, &'a KeyPath, Brought)> {
        let (place, key) = found?;
        let written = self.index.path_at(place)?;
        let landings = self.index.landings(place);
        if landings.is_empty() || written.0.len() < 2 || !landings.iter().all(|(k, _)| alike(k, key)) {
            return None;
        }
        let landings = landings.into_iter().map(|(key, via)| Landing { key, via }).collect();
        Some((place, key, Brought { written: written.clone(), landings }))
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

/// For a YAML syntax error that comes from indentation, where it is and what to change: a
/// tab, or a key indented more than the key above it, which has a value of its own (a
/// `key: value` line pasted one level too deep).
fn misplaced_text(err: &serde_saphyr::Error, text: &str, at: Pos) -> Option<(Pos, String)> {
    if let Some(tab) = indenting_tab(err, text, at) {
        return Some((tab, "a tab in the indentation; YAML indents with spaces only".to_owned()));
    }
    use serde_saphyr::granit_parser::ErrorKind;
    use serde_saphyr::{Error as E, ExternalMessageSource};
    let E::ExternalMessage { source, .. } = err else { return None };
    let ExternalMessageSource::Parser(scan) = source.as_ref() else { return None };
    if !matches!(scan.kind(), ErrorKind::MappingValueNotAllowed) {
        return None;
    }
    let lines: Vec<&str> = text.split('\n').collect();
    let indent = |l: &str| l.len() - l.trim_start_matches(' ').len();
    let key =
        |l: &str| l.trim().split_once(": ").map(|(k, v)| (k.trim_start_matches("- ").to_owned(), v.trim().to_owned()));
    let line = lines.get(at.line.checked_sub(1)?)?;
    let (here, _) = key(line)?;
    let above = lines[..at.line - 1].iter().rev().find(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))?;
    let (above_key, value) = key(above)?;
    if indent(line) <= indent(above) || value.is_empty() || value.starts_with('#') {
        return None;
    }
    let message = format!(
        "`{here}` is indented more than `{above_key}` above it, which already has a value: line it up with `{above_key}`"
    );
    Some((Pos { line: at.line, column: indent(line) + 1 }, message))
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

/// For a value of another shape than `expected` at `at`: the same written as expected. A
/// single value where a list goes (PHP-FPM's `listen.allowed_clients = a,b`, a command
/// line): `; write [a, b]`; `pools:` or `listeners:` written as a list: name the entries.
fn written_otherwise(expected: &str, path: Option<&KeyPath>, text: &str, at: Pos) -> Option<String> {
    let line = text.split('\n').nth(at.line.checked_sub(1)?)?;
    let value: String = line.chars().skip(at.column.checked_sub(1)?).collect();
    let value = value.split(" #").next().unwrap_or_default().trim();
    match expected {
        "sequence start" => {
            let value = value.trim_matches(|c| c == '"' || c == '\'');
            if value.is_empty() || value.starts_with(['{', '[', '&', '*', '!', '|', '>']) {
                return None;
            }
            let items: Vec<&str> = match value.contains(',') {
                true => value.split(',').map(str::trim).filter(|i| !i.is_empty()).collect(),
                false => value.split_whitespace().collect(),
            };
            let quoted = |i: &str| match i.contains([':', '{', '}', '[', ']', '#', '"', '\'']) {
                true => format!("{:?}", i),
                false => i.to_owned(),
            };
            Some(format!("; write [{}]", items.iter().map(|i| quoted(i)).collect::<Vec<_>>().join(", ")))
        }
        "mapping start" if value.starts_with('-') => {
            let (section, entry_keys) = match &path?.0[..] {
                [Seg::Key(section)] => (section, false),
                [Seg::Key(section), Seg::Key(_)] => (section, true),
                _ => return None,
            };
            if section != "pools" && section != "listeners" {
                return None;
            }
            if entry_keys {
                return Some(
                    "; its keys are `key: value` lines indented under its name, not list items (`- key: value`)".into(),
                );
            }
            let entry = if section == "pools" { "pool" } else { "listener" };
            let example = if section == "pools" { "demo:" } else { "web:" };
            Some(format!(
                "; {section} are named: each {entry} is a key (`{example}`) with its settings indented under it, not a list item (`- {example}`)"
            ))
        }
        _ => None,
    }
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
    /// The keys aliases bring the value at `path` to, which go with it.
    pub also: Vec<KeyPath>,
}

impl Fix {
    /// Taking out the value at `shared` (where the anchor has it, with the keys it reaches),
    /// else the key `path` written at `at`.
    fn of(shared: Option<(Pos, &Brought)>, path: Option<&KeyPath>, at: Option<Pos>, remove: bool) -> Option<Self> {
        match (shared, path, at) {
            (Some((at, b)), ..) => {
                let also = b.landings.iter().map(|l| l.key.clone()).collect();
                Some(Self { path: b.written.clone(), at, remove, also })
            }
            (None, Some(path), Some(at)) if !path.0.is_empty() => {
                Some(Self { path: path.clone(), at, remove, also: Vec::new() })
            }
            _ => None,
        }
    }
}

impl ConfigError {
    /// This error, saying that the rest of its file was not checked.
    pub fn stops_the_file(self) -> Self {
        const NOTE: &str = " (the rest of this file is not checked until this is fixed)";
        match self {
            Self::Syntax { at, message } => Self::Syntax { at, message: message + NOTE },
            Self::Invalid { at, key, message, brought } => {
                // Said after where the value comes from.
                let (key, message) = match brought {
                    Some(b) => b.shown(&key, &message),
                    None => (key, message),
                };
                Self::Invalid { at, key, message: message + NOTE, brought: None }
            }
            other => other,
        }
    }
}
