//! Which configuration directory a command reads when `--config` is not given.
//!
//! The order is the one an operator tries by hand: what they said
//! (`$FCGIBRIDGE_CONFIG`), what is in front of them (`./conf.d`), then the system's
//! place (`/etc/fcgibridge/conf.d`, where the units and guides put it). The choice is
//! always said, so a command never reads another directory than the operator thinks.
use std::ffi::OsString;
use std::fmt;
use std::path::{Path, PathBuf};

/// The environment variable naming the configuration directory.
pub const ENV_VAR: &str = "FCGIBRIDGE_CONFIG";
/// The directory tried in the current working directory.
pub const LOCAL_DIR: &str = "conf.d";
/// The system-wide directory, tried last.
pub const SYSTEM_DIR: &str = "/etc/fcgibridge/conf.d";

/// Where the configuration directory came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// `--config` on the command line.
    Flag,
    /// `$FCGIBRIDGE_CONFIG`.
    Env,
    /// `./conf.d` in the working directory.
    Local,
    /// `/etc/fcgibridge/conf.d`.
    System,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Flag => "--config",
            Self::Env => "$FCGIBRIDGE_CONFIG",
            Self::Local => "./conf.d in the working directory",
            Self::System => "the system default",
        })
    }
}

/// Why no directory was chosen.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum NotFound {
    /// No directory was given and none of the defaults exists.
    #[error(
        "no configuration directory: pass --config DIR, or set ${ENV_VAR}, or create ./{LOCAL_DIR} or {SYSTEM_DIR}"
    )]
    Nowhere,
    /// `./conf.d` is there, but it holds no `*.yaml` (nor `*.yml`) file: another program's
    /// (nginx's, run from /etc/nginx), which the search must not pass off as this one's.
    #[error(
        "no --config given and ${ENV_VAR} unset, so ./{LOCAL_DIR} was tried: {shown} has no *.yaml files, \
         so it is not a fcgibridge configuration (another program's?); pass --config DIR, e.g. \
         --config {SYSTEM_DIR} (where the installed configuration goes)"
    )]
    Unrelated { shown: String },
}

/// The directory to read and why that one.
pub fn config_dir(flag: Option<PathBuf>) -> Result<(PathBuf, Origin), NotFound> {
    choose(flag, std::env::var_os(ENV_VAR), |p| p.is_dir(), holds_yaml).map_err(|e| match e {
        // Where ./conf.d is, in full: the operator may not know where the shell is.
        NotFound::Unrelated { .. } => NotFound::Unrelated {
            shown: std::path::absolute(LOCAL_DIR).unwrap_or_else(|_| LOCAL_DIR.into()).display().to_string(),
        },
        other => other,
    })
}

/// Whether `dir` has a file the configuration is made of (or a `.yml` one, which loading
/// explains).
fn holds_yaml(dir: &Path) -> bool {
    // The files loading reads (hidden ones and directories are not), so the two agree.
    super::yaml_files(dir).map_or(true, |(yaml, yml)| !yaml.is_empty() || !yml.is_empty())
}

/// The choice itself, with the environment and the file system passed in for tests.
fn choose(
    flag: Option<PathBuf>,
    env: Option<OsString>,
    is_dir: impl Fn(&Path) -> bool,
    holds_yaml: impl Fn(&Path) -> bool,
) -> Result<(PathBuf, Origin), NotFound> {
    if let Some(dir) = flag {
        return Ok((dir, Origin::Flag));
    }
    // A set variable is taken even if the directory is missing: loading then names it,
    // where silently falling back to another directory would hide the typo.
    if let Some(dir) = env.filter(|v| !v.is_empty()) {
        return Ok((PathBuf::from(dir), Origin::Env));
    }
    for (dir, origin) in [(LOCAL_DIR, Origin::Local), (SYSTEM_DIR, Origin::System)] {
        if is_dir(Path::new(dir)) {
            // Not skipped for the next: reading another directory than the one in front
            // of the operator, silently, would be worse than asking.
            if origin == Origin::Local && !holds_yaml(Path::new(dir)) {
                return Err(NotFound::Unrelated { shown: dir.to_owned() });
            }
            return Ok((PathBuf::from(dir), origin));
        }
    }
    Err(NotFound::Nowhere)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flag_wins_over_everything() {
        let got = choose(Some("a".into()), Some("b".into()), |_| true, |_| true).ok();
        assert_eq!(got, Some((PathBuf::from("a"), Origin::Flag)));
    }

    #[test]
    fn env_wins_over_directories_even_when_missing() {
        let got = choose(None, Some("/nope".into()), |_| true, |_| false).ok();
        assert_eq!(got, Some((PathBuf::from("/nope"), Origin::Env)));
    }

    #[test]
    fn empty_env_is_unset() {
        let got = choose(None, Some("".into()), |p| p == Path::new(SYSTEM_DIR), |_| true).ok();
        assert_eq!(got, Some((PathBuf::from(SYSTEM_DIR), Origin::System)));
    }

    #[test]
    fn local_before_system() {
        let got = choose(None, None, |_| true, |_| true).ok();
        assert_eq!(got, Some((PathBuf::from(LOCAL_DIR), Origin::Local)));
    }

    #[test]
    fn a_local_conf_d_without_yaml_files_is_another_program_s() {
        // e.g. run from /etc/nginx: not read, and not passed over for the system default
        let got = choose(None, None, |_| true, |p| p != Path::new(LOCAL_DIR));
        assert_eq!(got, Err(NotFound::Unrelated { shown: LOCAL_DIR.into() }));
        let said = NotFound::Unrelated { shown: "/etc/nginx/conf.d".into() }.to_string();
        assert!(said.contains("./conf.d was tried: /etc/nginx/conf.d has no *.yaml files"), "{said}");
        assert!(said.ends_with("e.g. --config /etc/fcgibridge/conf.d (where the installed configuration goes)"));
    }

    #[test]
    fn nothing_found() {
        assert_eq!(choose(None, None, |_| false, |_| true), Err(NotFound::Nowhere));
    }
}
