//! Configuration: a directory of YAML files (conf.d/*.yaml) merged in name order.
//!
//! The path of a file through this module:
//! - `file.rs`: serde structs for one file as written (unknown keys rejected);
//! - `locate.rs`: where each key sits, so every error names file:line:column and key;
//! - `recover.rs`: past an error on one key, the rest of the file is still checked;
//! - `resolve.rs`: one pool or listener with defaults filled in and paths made absolute;
//! - `validate.rs`: the files merged, with the checks that need all of them;
//! - `model.rs`: the result, which the runtime reads.
//!
//! YAML is read by serde-saphyr: maintained, panic-free on any input, and precise about
//! line and column (serde_yaml is deprecated upstream).

pub mod access_format;
pub mod discover;
mod error;
mod error_pages;
mod file;
mod hint;
pub mod interface;
pub mod isolation;
mod locate;
mod log_level;
pub mod model;
pub(crate) mod paths;
mod proxies;
mod recover;
mod resolve;
mod shebang;
mod status_key;
pub mod supervision;
pub mod template;
pub mod units;
mod validate;

pub use error::ConfigError;
pub use error_pages::{ErrorPage, ErrorPageError, ErrorPages, PageSource};
pub use file::RawPool;
pub use model::*;
pub use proxies::{Cidr, ProxyConfigError, ProxyHeader, TrustedProxies};

use error::Source;
use locate::KeyIndex;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use validate::Parsed;

/// A warning as `check` prints it (`file:line: warning: key: message`), for a log line
/// whose level says WARN already: `file:line: key: message`.
pub fn logged_warning(warning: &str) -> String {
    if let Some(rest) = warning.strip_prefix("warning: ") {
        return rest.to_owned();
    }
    match warning.split_once(": warning: ") {
        Some((at, rest)) => format!("{at}: {rest}"),
        None => warning.to_owned(),
    }
}

/// Read every `*.yaml` in `dir` in name order, apply defaults, validate.
pub fn load(dir: &Path) -> Result<Config, ConfigError> {
    let search_path = std::env::var_os("PATH");
    load_with_search_path(dir, search_path.as_deref())
}

/// [`load`] for the control client (`status`, `reload`, `stop`, `top`), which reads the
/// configuration only to find the control socket: its own privileges are not the daemon's,
/// so `sudo fcgibridge status` must not fail on pools that the daemon, as the unit's
/// User=, runs without root.
pub fn load_for_client(dir: &Path) -> Result<Config, ConfigError> {
    let search_path = std::env::var_os("PATH");
    load_with(
        dir,
        LoadOptions {
            search_path: search_path.as_deref(),
            privileges: Privileges::Skip,
            moment: Moment::Start,
            accounts: None,
        },
    )
}

/// Only the `bridge:` keys that place the control socket (`runtime-dir`, `control-socket`):
/// how the control client still finds the running daemon when [`load_for_client`] fails
/// on an error elsewhere (an edit being made). `None` when they cannot be known for sure:
/// an error on one of them, or a file that could not be read to its end and names one.
pub fn load_socket_keys(dir: &Path) -> Option<Global> {
    let abs_dir = paths::absolute_dir(dir).ok()?;
    let mut parsed = Vec::new();
    for name in yaml_files(dir).ok()?.0 {
        let file = dir.join(&name);
        let text = std::fs::read_to_string(&file).ok()?;
        match parse(file.display().to_string(), abs_dir.clone(), &text).0 {
            Some(p) => parsed.push(p),
            // Stopped by a syntax error: what follows it is unknown, unless no key is named.
            None if validate::SOCKET_KEYS.iter().any(|k| text.contains(k)) => return None,
            None => {}
        }
    }
    validate::socket_keys(parsed)
}

/// [`load`] for a reload of the running daemon: a log file whose directory is missing is a
/// warning ([`Config::warnings`]), not an error, as log paths take effect only at a restart.
pub fn load_for_reload(dir: &Path) -> Result<Config, ConfigError> {
    let search_path = std::env::var_os("PATH");
    load_with(
        dir,
        LoadOptions {
            search_path: search_path.as_deref(),
            privileges: Privileges::Check,
            moment: Moment::Reload,
            accounts: None,
        },
    )
}

/// [`load`] with an explicit PATH for finding interpreters.
pub fn load_with_search_path(dir: &Path, search_path: Option<&OsStr>) -> Result<Config, ConfigError> {
    load_with(dir, LoadOptions { search_path, privileges: Privileges::Check, moment: Moment::Start, accounts: None })
}

/// How a configuration is read.
#[derive(Debug, Clone, Copy)]
pub struct LoadOptions<'a> {
    /// The PATH interpreters are looked for in.
    pub search_path: Option<&'a OsStr>,
    /// Whether what the pools ask of this process's privileges is checked.
    pub privileges: Privileges,
    /// Whether the daemon is starting or reloading.
    pub moment: Moment,
    /// User lookups shared by the checks of one template (None: each asks the database).
    pub accounts: Option<&'a isolation::Accounts>,
}

/// Whether loading checks the pools' isolation against this process's privileges.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Privileges {
    /// The daemon, `check`, a reload: the workers must be startable by this process.
    Check,
    /// The control client: its privileges are not the daemon's.
    Skip,
}

/// When a configuration is read: what takes effect only when the daemon starts (its log
/// files) is refused at a start, and only warned of at a reload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Moment {
    /// The daemon starting, `fcgibridge check`, the control client.
    Start,
    /// The running daemon reloading (SIGHUP, `fcgibridge reload`).
    Reload,
}

/// One loading of `dir` with these options.
pub fn load_with(dir: &Path, opts: LoadOptions<'_>) -> Result<Config, ConfigError> {
    let shown = dir.display().to_string();
    if dir.is_file() {
        let parent = dir.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        return Err(ConfigError::NotADirectory { file: shown, dir: parent.display().to_string() });
    }
    let (files, yml) = yaml_files(dir).map_err(|source| ConfigError::ReadDir { dir: shown.clone(), source })?;
    if files.is_empty() {
        let hint = if yml.is_empty() { "" } else { " (files ending in .yml are not read: rename them to .yaml)" };
        return Err(ConfigError::NoFiles { dir: shown, hint });
    }
    let abs_dir = paths::absolute_dir(dir).map_err(|source| ConfigError::ReadDir { dir: shown.clone(), source })?;
    let mut parsed = Vec::with_capacity(files.len());
    // Every file is read and checked even after an error, so one run names every mistake.
    let mut errors = Vec::new();
    // A file that could not be read to its end may hold what others refer to.
    let mut incomplete = false;
    for name in files {
        let file = dir.join(&name);
        let display = file.display().to_string();
        let text = match std::fs::read_to_string(&file) {
            Ok(t) => t,
            Err(source) => {
                errors.push(ConfigError::ReadFile { file: display, source });
                incomplete = true;
                continue;
            }
        };
        let (file, file_errors) = parse(display, abs_dir.clone(), &text);
        errors.extend(file_errors);
        match file {
            Some(p) => parsed.push(p),
            None => incomplete = true,
        }
    }
    let mut config = validate::merge(&shown, parsed, opts, errors, incomplete)?;
    // A pool written in a .yml file beside the .yaml ones would be missing without a word.
    config.warnings.extend(yml.iter().map(|name| {
        format!(
            "{}: warning: not read: only files ending in .yaml are; rename it to {}",
            dir.join(name).display(),
            name.with_extension("yaml").display()
        )
    }));
    Ok(config)
}

/// The `*.yaml` names in `dir`, sorted, and the `*.yml` ones (not read); hidden files are
/// skipped (editor leftovers).
pub(super) fn yaml_files(dir: &Path) -> std::io::Result<(Vec<PathBuf>, Vec<PathBuf>)> {
    let (mut names, mut yml) = (Vec::new(), Vec::new());
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = PathBuf::from(entry.file_name());
        let visible = !entry.file_name().to_string_lossy().starts_with('.');
        if !visible || !entry.path().is_file() {
            continue;
        }
        if name.extension() == Some(OsStr::new("yaml")) {
            names.push(name);
        } else if name.extension() == Some(OsStr::new("yml")) {
            yml.push(name);
        }
    }
    names.sort();
    yml.sort();
    Ok((names, yml))
}

/// One file's text into its typed form without the keys that had errors (each error
/// pointing at its key); `None` when a syntax error stopped the file.
fn parse(file: String, dir: PathBuf, text: &str) -> (Option<Parsed>, Vec<ConfigError>) {
    let source = Source { file, index: KeyIndex::build(text) };
    let r = recover::parse(&source, text);
    (r.raw.map(|raw| Parsed { source, dir, raw, dropped: r.dropped }), r.errors)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
pub(crate) mod tests;
