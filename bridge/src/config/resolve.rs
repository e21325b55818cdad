//! One file's pools and listeners turned into the model: defaults filled in, values
//! checked, paths made absolute. Checks that need every file live in `validate.rs`.
use super::error::{note, ConfigError, Source};
use super::file::{RawListener, RawPool};
use super::locate::{KeyPath, Seg};
use super::model::{
    App, Dialect, KeyAt, ListenAddress, Listener, Pool, Protocol, RedirectPools, Route, UnroutedRedirect,
};
use super::paths;
use super::LoadOptions;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::Duration;

// Defaults; docs/configuration.md lists the same values.
pub(super) const DEFAULT_PYTHON: &str = "python3";
pub(super) const DEFAULT_THREADS: u32 = 4;
pub(super) const DEFAULT_QUEUE_SIZE: usize = 1024;
pub(super) const DEFAULT_QUEUE_TIMEOUT: Duration = Duration::from_secs(30);
pub(super) const DEFAULT_STARTUP_TIMEOUT: Duration = Duration::from_secs(60);
pub(super) const DEFAULT_BACKLOG: u32 = 1024;
pub(super) const DEFAULT_MAX_PARAMS: usize = 1 << 20;
/// `header-timeout`: SCGI's limit since the start, now FastCGI's too.
pub(super) const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(60);
/// `body-timeout`: as nginx's `client_body_timeout`.
pub(super) const DEFAULT_BODY_TIMEOUT: Duration = Duration::from_secs(60);
/// `body-min-rate`: as Apache's mod_reqtimeout `MinRate` in Debian's default (500 bytes a
/// second, about 4 kbit/s: a slow mobile link passes, a client dripping a byte per timeout
/// does not).
pub(super) const DEFAULT_BODY_MIN_RATE: u64 = 500;
/// `send-timeout`: as nginx's `send_timeout`.
pub(super) const DEFAULT_SEND_TIMEOUT: Duration = Duration::from_secs(60);
/// `keepalive-timeout`: longer than a web server's own idle limit for the connections it
/// keeps (nginx's upstream `keepalive_timeout` is 60 s), so that the web server closes first.
pub(super) const DEFAULT_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(300);
/// `max-connections`: nginx's default `worker_connections` is 512 per worker process.
pub(super) const DEFAULT_MAX_CONNECTIONS: u32 = 1024;
/// Internal redirects one request may take (`max-redirects`).
pub(super) const DEFAULT_MAX_REDIRECTS: u32 = 10;
/// Ranges one request may ask of a file the bridge serves (`max-ranges`).
pub(super) const DEFAULT_MAX_RANGES: u32 = 16;
/// The callable looked up when an app names only a module (PEP 3333 convention).
pub(super) const DEFAULT_CALLABLE: &str = "application";

/// Whole-number keys whose smallest accepted value is 1 (the others accept 0).
const AT_LEAST_ONE: &[&str] = &[
    "threads",
    "concurrency",
    "processes",
    "max-processes",
    "max-spawn-rate",
    "backlog",
    "rlimit-nofile",
    "rlimit-nproc",
    "max-connections",
    "max-instances",
    "spawn-rate",
];

/// The smallest value the whole-number key at `path` accepts, for its error message.
pub(super) fn least(path: &KeyPath) -> u64 {
    match path.0.last() {
        Some(Seg::Key(k)) if AT_LEAST_ONE.contains(&k.as_str()) => 1,
        _ => 0,
    }
}

/// The longest unix socket path the kernel accepts (sun_path minus its NUL).
const MAX_UNIX_PATH: usize = 107;

/// Pool and listener names become log fields, socket names and status page keys.
pub(super) fn check_name(src: &Source, path: &KeyPath, kind: &str, name: &str) -> Result<(), ConfigError> {
    let ok = !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        // `my/app`, `my.app`, `my app` (a path, a domain, words): the same with dashes.
        let dashed: String =
            name.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' { c } else { '-' }).collect();
        let dashed = dashed.trim_matches('-');
        let instead = if dashed.is_empty() { String::new() } else { format!("; e.g. {dashed:?}") };
        Err(src.invalid(path, format!("{kind} name {name:?} may only use letters, digits, '_' and '-'{instead}")))
    }
}

/// A pool from `pools.NAME` in a file whose directory is `dir`. Every key is checked,
/// and every error returned (one bad key does not hide the others); what is accepted but
/// worth a look is added to `warnings` (`file:line: warning: key: message`).
pub(super) fn pool(
    src: &Source,
    dir: &Path,
    name: &str,
    mut raw: RawPool,
    opts: LoadOptions<'_>,
    warnings: &mut Vec<String>,
) -> Result<Pool, ConfigError> {
    let LoadOptions { search_path, privileges, accounts, .. } = opts;
    let here = KeyPath::of(&["pools", name]);
    let mut errs = Vec::new();
    note(&mut errs, check_name(src, &here, "pool", name));
    let raw_isolation = super::isolation::RawIsolation::take(&mut raw);
    let raw_supervision = super::supervision::RawSupervision::take(&mut raw);
    warnings.extend(super::supervision::bare_memory_limit(src, &here, &raw_supervision));
    let raw_interface = super::interface::RawInterface::take(&mut raw);

    let app_key = here.key(if raw.command.is_some() && raw.app.is_none() { "command" } else { "app" });
    let app_at = KeyAt { at: src.at(&app_key).to_string(), key: app_key.to_string(), written: true, chosen_by: None };
    let written_app = (raw.app.take(), raw.command.take());
    let app = pool_app(src, &here, (dir, raw.chdir.as_deref()), written_app, search_path, &mut errs);

    let from = PythonFrom::of(&raw, app.as_ref(), search_path, raw_isolation.chroot());
    let (python, python_at) = pool_python(src, (&here, dir), from, (&mut errs, warnings));

    let chdir = pool_chdir(src, &here, dir, raw.chdir.as_deref(), app.as_ref(), &mut errs);
    let chdir_key = here.key("chdir");
    let (at, key, written) = (src.at(&chdir_key).to_string(), chdir_key.to_string(), raw.chdir.is_some());
    let chdir_at = KeyAt { at, key, written, chosen_by: None };

    let env = pool_env(src, &here, raw.env, &mut errs);

    let queue_size = raw.queue_size.unwrap_or(DEFAULT_QUEUE_SIZE);
    let queue = (queue_size, raw.queue_timeout.map(|d| d.0));
    let supervision = note(&mut errs, super::supervision::resolve(src, &here, raw_supervision, queue));
    let threads = raw.threads.unwrap_or(DEFAULT_THREADS);
    if threads == 0 {
        errs.push(src.invalid(&here.key("threads"), "must be 1 or more"));
    }
    let interface = super::interface::resolve(src, &here, raw_interface).map_err(|e| errs.extend(e)).ok();
    let startup_timeout = raw.startup_timeout.map(|d| d.0).unwrap_or(DEFAULT_STARTUP_TIMEOUT);
    if startup_timeout.is_zero() {
        errs.push(src.invalid(&here.key("startup-timeout"), "must be longer than 0s"));
    }
    let (max_body, slowlog_timeout) = optional_limits(src, &here, (raw.max_body, raw.slowlog_timeout), &mut errs);
    let unknown_length_body = unknown_length_body(src, &here, raw.unknown_length_body.as_deref(), &mut errs);
    let ready_check = raw.ready_check.as_deref().and_then(|text| {
        note(
            &mut errs,
            super::model::ReadyCheck::parse(text.trim()).map_err(|m| src.invalid(&here.key("ready-check"), m)),
        )
    });
    let error_pages = error_pages(src, &here, dir, raw.error_pages, &mut errs);
    let touch_reload = touch_reload(src, &here, dir, raw.touch_reload, &mut errs);
    // The isolation checks need the app, its directory and the interpreter (a chroot must
    // hold them); without them, those that do not are still made.
    let isolation = match (&app, &chdir, &python) {
        (Some(app), Some(chdir), Some(python)) => {
            let runs = super::isolation::Runs { app, chdir, python };
            note(&mut errs, super::isolation::resolve(src, &here, dir, raw_isolation, runs, (privileges, accounts)))
        }
        _ => note(&mut errs, super::isolation::check_without_app(src, &here, raw_isolation, (privileges, accounts)))
            .and(None),
    };

    match (app, python, chdir, supervision, isolation, interface) {
        (Some(app), Some(python), Some(chdir), Some((processes, supervision)), Some(isolation), Some(interface))
            if errs.is_empty() =>
        {
            Ok(Pool {
                name: name.to_owned(),
                python,
                python_at,
                app,
                app_at,
                chdir,
                chdir_at,
                env,
                processes,
                threads,
                interface,
                queue_size,
                queue_timeout: raw.queue_timeout.map(|d| d.0).unwrap_or(DEFAULT_QUEUE_TIMEOUT),
                startup_timeout,
                ready_check,
                slowlog_timeout,
                supervision,
                max_body,
                unknown_length_body,
                pipeline: raw.pipeline.unwrap_or(true),
                error_pages,
                isolation,
                direct: None,
                listened_at: Vec::new(),
                touch_reload,
            })
        }
        _ => Err(ConfigError::several(errs)),
    }
}

/// What a pool's interpreter is chosen from.
struct PythonFrom<'a> {
    /// `python:` as written.
    written: Option<&'a str>,
    app: Option<&'a App>,
    /// The bridge's PATH, where the default python3 is looked for.
    search_path: Option<&'a std::ffi::OsStr>,
    /// The pool's `env: PATH`: a shebang's `env NAME` searched it under mod_fcgid
    /// (`FcgidInitialEnv PATH`) or spawn-fcgi.
    env_path: Option<&'a std::ffi::OsStr>,
    /// `chroot:` as written.
    chroot: Option<&'a str>,
}

impl<'a> PythonFrom<'a> {
    fn of(
        raw: &'a RawPool,
        app: Option<&'a App>,
        search_path: Option<&'a std::ffi::OsStr>,
        chroot: Option<&'a str>,
    ) -> Self {
        let env_path = raw.env.as_ref().and_then(|e| e.0.iter().find(|(k, v)| k == "PATH" && !v.is_empty()));
        let env_path = env_path.map(|(_, v)| std::ffi::OsStr::new(v.as_str()));
        Self { written: raw.python.as_deref(), app, search_path, env_path, chroot }
    }
}

/// `python` as written; else, for an app run as the main script (a flup script) outside a
/// chroot, the Python its shebang names, as mod_fcgid and spawn-fcgi ran it; else python3
/// from PATH. With where that was decided. A shebang naming a Python that cannot be used,
/// or a script that cannot be read, is a warning, not an error: the default runs, as
/// before shebangs were read.
fn pool_python(
    src: &Source,
    (here, dir): (&KeyPath, &Path),
    from: PythonFrom<'_>,
    (errs, warnings): (&mut Vec<ConfigError>, &mut Vec<String>),
) -> (Option<std::path::PathBuf>, KeyAt) {
    use super::shebang::{self, Shebang};
    let key = here.key("python");
    let mut at =
        KeyAt { at: src.at(&key).to_string(), key: key.to_string(), written: from.written.is_some(), chosen_by: None };
    let script = from.app.filter(|_| from.written.is_none()).and_then(App::script);
    let default = || paths::find_python(from.written.unwrap_or(DEFAULT_PYTHON), dir, from.search_path);
    if let (Some(file), Some(jail)) = (script, from.chroot) {
        let default = default();
        if let (Ok(python), Some(line)) = (&default, shebang::python_line(file)) {
            if !jail.is_empty() && !python.starts_with(paths::resolve(dir, jail)) {
                errs.push(src.invalid(&key, chroot_shebang(python, file, &line)));
            }
        }
        return (note(errs, default.map_err(|m| src.invalid(&key, m))), at);
    }
    let unusable = match script.map(|file| (file, shebang::read(file, from.env_path.or(from.search_path)))) {
        Some((file, Shebang::Python(python))) => {
            at.at = format!("{}:1", file.display());
            at.chosen_by = Some(shebang::CHOSEN_BY.to_owned());
            return (Some(python), at);
        }
        Some((file, Shebang::Unusable { line, why })) => {
            Some((file, format!("the app file's shebang `{line}` names a Python that cannot be used: {why}")))
        }
        Some((file, Shebang::Unreadable(e))) => {
            Some((file, format!("cannot read the app file to read its shebang ({e})")))
        }
        Some((_, Shebang::Silent)) | None => None,
    };
    let default = default();
    if let Some((file, what)) = unusable {
        let runs = match &default {
            Ok(p) => format!("{} (python3 from PATH)", p.display()),
            Err(_) => "python3 from PATH".to_owned(),
        };
        warnings.push(format!(
            "{}:1: warning: {key}: {what}; the pool runs {runs} instead; set `python:` to the interpreter the \
             script needs",
            shebang::escaped(&file.display().to_string())
        ));
    }
    (note(errs, default.map_err(|m| src.invalid(&key, m))), at)
}

/// A chroot pool without `python:` whose script has a Python shebang, when python3 from PATH
/// lies outside the chroot (the chroot check says so too): the shebang is not the answer.
fn chroot_shebang(python: &Path, file: &Path, line: &str) -> String {
    format!(
        "not set, and python3 from PATH ({}) is outside the chroot; the shebang `{line}` at {}:1 is not used for a \
         chroot: pool (its paths were the chroot's, the bridge's are the host's); set python: to the interpreter \
         inside the chroot, as the bridge sees it",
        python.display(),
        super::shebang::escaped(&file.display().to_string())
    )
}

/// `app` or `command`: exactly one of them, resolved.
fn pool_app(
    src: &Source,
    here: &KeyPath,
    (dir, chdir): (&Path, Option<&str>),
    written: (Option<String>, Option<Vec<String>>),
    search_path: Option<&std::ffi::OsStr>,
    errs: &mut Vec<ConfigError>,
) -> Option<App> {
    match written {
        (Some(_), Some(_)) => {
            errs.push(src.invalid(
                &here.key("command"),
                "a pool has either `app` (WSGI) or `command` (a FastCGI program), not both",
            ));
            None
        }
        (None, Some(argv)) => {
            let r =
                super::paths::resolve_command(argv, dir, search_path).map_err(|m| src.invalid(&here.key("command"), m));
            note(errs, r)
        }
        (None, None) => {
            errs.push(
                src.invalid(here, "missing key `app`: name a module (\"package.module:callable\") or a .py/.wsgi file (or `command:` for a FastCGI program)"),
            );
            None
        }
        (Some(app_text), None) => {
            let r = parse_app(&app_text, dir).map_err(|m| m + &in_chdir_instead(&app_text, dir, chdir));
            note(errs, r.map_err(|m| src.invalid(&here.key("app"), m)))
        }
    }
}

/// For a relative app file that is missing: where it is when it lies in the pool's `chdir`
/// (uWSGI reads `wsgi-file` after its `chdir`, so a pasted `wsgi-file = app.py` means that
/// one), as the rest of the error; else nothing.
fn in_chdir_instead(text: &str, dir: &Path, chdir: Option<&str>) -> String {
    let Some(chdir) = chdir.filter(|_| !Path::new(text.trim()).is_absolute()) else { return String::new() };
    match parse_app(text, &paths::resolve(dir, chdir)) {
        Ok(App::File { path, callable }) => format!(
            "; a relative path is read from the configuration file's directory, not from chdir: for {} write \
             \"{}:{callable}\"",
            path.display(),
            path.display()
        ),
        _ => String::new(),
    }
}

/// `chdir`, or the app file's directory (the configuration's for a module or a program).
/// Without a valid app the default is unknown; a given one is still checked.
fn pool_chdir(
    src: &Source,
    here: &KeyPath,
    dir: &Path,
    written: Option<&str>,
    app: Option<&App>,
    errs: &mut Vec<ConfigError>,
) -> Option<std::path::PathBuf> {
    let chdir = match (written, app) {
        (Some(chdir), _) => Some(paths::resolve(dir, chdir)),
        (None, Some(App::File { path: file, .. })) => {
            Some(file.parent().map(Path::to_path_buf).unwrap_or_else(|| dir.to_path_buf()))
        }
        (None, Some(App::Module { .. } | App::Command(_))) => Some(dir.to_path_buf()),
        (None, None) => None,
    };
    chdir.filter(|chdir| {
        let ok = chdir.is_dir();
        if !ok {
            errs.push(src.invalid(&here.key("chdir"), format!("{} is not a directory", chdir.display())));
        }
        ok
    })
}

/// `touch-reload`: each path made absolute (against the file's directory). A file need not
/// exist yet: its creation is a change.
fn touch_reload(
    src: &Source,
    here: &KeyPath,
    dir: &Path,
    written: Option<Vec<String>>,
    errs: &mut Vec<ConfigError>,
) -> Vec<std::path::PathBuf> {
    let written = written.unwrap_or_default();
    if written.iter().any(|p| p.trim().is_empty()) {
        errs.push(
            src.invalid(&here.key("touch-reload"), "an empty path; name the file to watch, e.g. /srv/app/reload.txt"),
        );
    }
    written.iter().filter(|p| !p.trim().is_empty()).map(|p| paths::resolve(dir, p)).collect()
}

/// A pool's `touch-reload` files whose directory is missing, as warnings: a deploy that
/// touches `tmp/restart.txt` in the app's directory (Passenger's habit, written relative)
/// never makes the configuration directory's. A template's path with a placeholder
/// (`/srv/sites/{host}/reload.txt`) is looked at up to the directory that holds its first
/// placeholder (`/srv/sites`): past it, each instance's directory is made with its site.
/// `raw` is the entry as written (relative paths not yet made absolute).
pub(super) fn touch_reload_warnings(src: &Source, name: &str, dir: &Path, raw: &RawPool) -> Vec<String> {
    let key = KeyPath::of(&["pools", name, "touch-reload"]);
    let written = raw.touch_reload.iter().flatten().filter(|p| !p.trim().is_empty());
    let missing = written.filter_map(|text| {
        let path = paths::resolve(dir, text);
        let shown = path.display().to_string();
        let (looked_at, what) = match shown.split_once('{') {
            Some((fixed, _)) => {
                let root = fixed.rsplit_once('/').map_or("/", |(root, _)| if root.is_empty() { "/" } else { root });
                (std::path::PathBuf::from(root), format!("{root}, the part of {shown} before its first placeholder,"))
            }
            None => (path.parent()?.to_path_buf(), format!("the directory of {shown}")),
        };
        (!looked_at.is_dir()).then_some((text, what))
    });
    missing
        .map(|(text, what)| {
            let relative = match raw.chdir.as_deref().filter(|_| Path::new(text).is_relative()) {
                Some(c) => format!(
                    "; a relative path is read from the configuration file's directory, not from chdir (there it \
                     would be {})",
                    paths::resolve(&paths::resolve(dir, c), text).display()
                ),
                None if Path::new(text).is_relative() => {
                    "; a relative path is read from the configuration file's directory".to_owned()
                }
                None => String::new(),
            };
            format!(
                "{}: warning: {key}: {what} does not exist: the workers restart only once it and the file are \
                 made{relative}",
                src.at(&key),
            )
        })
        .collect()
}

/// `env`: names checked, errors added to `errs`.
fn pool_env(
    src: &Source,
    here: &KeyPath,
    raw: Option<super::file::Entries<String>>,
    errs: &mut Vec<ConfigError>,
) -> std::collections::BTreeMap<String, String> {
    let env = raw.map(|e| e.0).unwrap_or_default();
    for (key, _) in &env {
        if key.is_empty() || key.contains('=') || key.contains('\0') {
            errs.push(src.invalid(&here.key("env").key(key), "not a valid environment variable name"));
        }
    }
    env.into_iter().collect()
}

/// `unknown-length-body`: `stream` (default), `buffer` or `refuse`.
fn unknown_length_body(
    src: &Source,
    here: &KeyPath,
    written: Option<&str>,
    errs: &mut Vec<ConfigError>,
) -> super::model::UnknownLengthBody {
    use super::model::UnknownLengthBody as U;
    match written.map(str::trim) {
        None | Some("stream") => U::Stream,
        Some("buffer") => U::Buffer,
        Some("refuse") => U::Refuse,
        Some(other) => {
            errs.push(src.invalid(
                &here.key("unknown-length-body"),
                format!("{other:?} is not one of `stream`, `buffer` (read it whole, up to max-body or 16MiB, and pass CONTENT_LENGTH), `refuse` (411)"),
            ));
            U::Stream
        }
    }
}

/// `max-body` and `slowlog-timeout`: absent means none, zero is refused.
fn optional_limits(
    src: &Source,
    here: &KeyPath,
    (max_body, slowlog_timeout): (Option<super::units::ByteSize>, Option<super::units::HumanDuration>),
    errs: &mut Vec<ConfigError>,
) -> (Option<u64>, Option<std::time::Duration>) {
    let max_body = match max_body {
        Some(size) if size.0 == 0 => {
            errs.push(src.invalid(&here.key("max-body"), "must be more than 0 bytes (leave it out for no limit)"));
            None
        }
        other => other.map(|size| size.0),
    };
    let slowlog_timeout = match slowlog_timeout {
        Some(d) if d.0.is_zero() => {
            errs.push(src.invalid(
                &here.key("slowlog-timeout"),
                "must be longer than 0s; leave the key out to turn the slowlog off",
            ));
            None
        }
        other => other.map(|d| d.0),
    };
    (max_body, slowlog_timeout)
}

/// `error-pages`: each entry checked, errors added to `errs`.
fn error_pages(
    src: &Source,
    here: &KeyPath,
    dir: &Path,
    raw: Option<super::file::Entries<super::file::RawErrorPage>>,
    errs: &mut Vec<ConfigError>,
) -> super::ErrorPages {
    use super::{ErrorPageError, ErrorPages, PageSource};
    let mut pages = ErrorPages::default();
    for (status, page) in raw.map(|e| e.0).unwrap_or_default() {
        let file = page.file.as_deref().map(|f| paths::resolve(dir, f));
        let source = match (&file, &page.redirect) {
            (Some(file), None) => Ok(PageSource::File(file)),
            (None, Some(target)) => Ok(PageSource::Redirect(target)),
            (Some(_), Some(_)) => Err(ErrorPageError::BothForms),
            (None, None) => Err(ErrorPageError::NoPage),
        };
        if let Err(e) = source.and_then(|source| pages.insert(&status, source)) {
            errs.push(src.invalid(&here.key("error-pages").key(&status), e.to_string()));
        }
    }
    pages
}

/// A dotted Python name: `application`, `make.app`.
pub(super) fn is_python_name(s: &str) -> bool {
    !s.is_empty()
        && s.split('.').all(|part| {
            part.chars().next().is_some_and(|c| c.is_alphabetic() || c == '_')
                && part.chars().all(|c| c.is_alphanumeric() || c == '_')
        })
}

/// What may follow an app's last `:`: a dotted Python name, or one followed by `()`, a
/// factory the worker calls without arguments (`create_app()`).
pub(super) fn is_callable_spec(s: &str) -> bool {
    is_python_name(s.strip_suffix("()").unwrap_or(s))
}

/// `app` split at its last `:` when what follows is a callable (`/srv/app.fcgi:app`):
/// (the module or file, the callable if written).
pub(super) fn split_callable(app: &str) -> (&str, Option<&str>) {
    match app.rsplit_once(':') {
        Some((head, tail)) if !head.is_empty() && is_callable_spec(tail) => (head, Some(tail)),
        _ => (app, None),
    }
}

/// `package.module[:callable]`, or a file path (contains '/', ends in .py, or names an
/// existing .wsgi file) with an optional `:callable`: the text after the **last** `:` is
/// the callable when it is a Python name or a factory call (`name()`), so
/// `/srv/a:b/app.fcgi` is a file and `/srv/app.fcgi:app` names `app` in it.
pub(super) fn parse_app(text: &str, dir: &Path) -> Result<App, String> {
    let text = text.trim();
    let (target, callable) = split_callable(text);
    // Django names its WSGI module `project.wsgi`, so a bare `x.wsgi` is a file only
    // when that file exists; `./x.wsgi` always means the file.
    let wsgi_file = target.ends_with(".wsgi") && callable.is_none() && paths::resolve(dir, target).is_file();
    // `app.py:create_app(1)`: a file followed by something that is no callable.
    let py_file_then_junk = callable.is_none() && text.rsplit_once(':').is_some_and(|(head, _)| head.ends_with(".py"));
    if target.ends_with(".py") || target.contains('/') || wsgi_file || py_file_then_junk {
        return parse_file_app(target, callable, text, dir);
    }
    let (module, callable) = match text.split_once(':') {
        Some((module, callable)) => (module, callable),
        None => (text, DEFAULT_CALLABLE),
    };
    if !is_python_name(module) {
        return Err(format!(
            "{text:?} is neither a Python module (\"package.module:callable\") nor a file path (*.py, *.wsgi)"
        ));
    }
    if !is_callable_spec(callable) {
        return Err(format!("{callable:?} {}", not_a_callable(module, callable)));
    }
    Ok(App::Module { module: module.to_owned(), callable: callable.to_owned() })
}

/// Why `callable`, written after `target:`, names nothing the worker can load, and what to
/// write instead.
fn not_a_callable(target: &str, callable: &str) -> String {
    match callable.split_once('(') {
        Some((name, _)) if is_python_name(name) => format!(
            "calls a factory with arguments, which the worker cannot: write \"{target}:{name}()\" (called \
             without arguments), or a module that does `application = {callable}` and name that module"
        ),
        _ => format!(
            "is not a Python name: after the colon write the app object's name in {target} (\"{target}:app\"), \
             or a factory to call without arguments (\"{target}:create_app()\"); without a colon the name \
             is \"application\""
        ),
    }
}

fn parse_file_app(target: &str, callable: Option<&str>, text: &str, dir: &Path) -> Result<App, String> {
    let file = paths::resolve(dir, target);
    if file.is_file() {
        let callable = callable.unwrap_or(DEFAULT_CALLABLE).to_owned();
        return Ok(App::File { path: file, callable });
    }
    if file.is_dir() {
        // mod_wsgi's `python-path`, or a project's directory: the file in it is what runs.
        let found =
            ["wsgi.py", "app.py", "application.py", "main.py"].iter().map(|n| file.join(n)).find(|f| f.is_file());
        let example = found.unwrap_or_else(|| file.join("wsgi.py"));
        return Err(format!("{} is a directory; name the app file in it, e.g. {}", file.display(), example.display()));
    }
    if file.exists() {
        return Err(format!("{} is not a file", file.display()));
    }
    let whole = paths::resolve(dir, text);
    if callable.is_some() && whole.is_file() {
        // A file whose own name ends in `:name`: the rule above took that part as the callable.
        return Err(format!(
            "app file {} does not exist (the name after the last ':' is the callable); for the file {} write \"{}:application\"",
            file.display(),
            whole.display(),
            text
        ));
    }
    // `app.py:create_app(debug=True)`: the file exists, what follows its last ':' is no callable.
    if let Some((head, tail)) = text.rsplit_once(':').filter(|_| callable.is_none()) {
        let file = paths::resolve(dir, head);
        if file.is_file() {
            return Err(format!("{tail:?} after the app file {} {}", file.display(), not_a_callable(head, tail)));
        }
    }
    Err(format!("app file {} does not exist", file.display()))
}

/// A listener from `listeners.NAME`. Route targets are checked once all pools are known.
/// Every key is checked, and every error returned (one bad key does not hide the others).
pub(super) fn listener(src: &Source, dir: &Path, name: &str, mut raw: RawListener) -> Result<Listener, ConfigError> {
    let here = KeyPath::of(&["listeners", name]);
    let mut errs = Vec::new();
    note(&mut errs, check_name(src, &here, "listener", name));

    // What goes with `direct` is checked with its pool (validate.rs).
    let direct = raw.direct == Some(true);
    let (protocol, key, text) = protocol(src, &here, raw.fastcgi.take(), raw.scgi.take(), &mut errs);
    let address =
        text.and_then(|text| note(&mut errs, parse_address(&text, dir).map_err(|m| src.invalid(&here.key(key), m))));
    let socket_mode = socket_options(src, &here, &raw, address.as_ref(), &mut errs);

    let backlog = raw.backlog.unwrap_or(DEFAULT_BACKLOG);
    if backlog == 0 {
        errs.push(src.invalid(&here.key("backlog"), "must be 1 or more"));
    }
    let max_params = match raw.max_params {
        None => DEFAULT_MAX_PARAMS,
        Some(size) => usize::try_from(size.0).ok().filter(|n| *n > 0).unwrap_or_else(|| {
            errs.push(src.invalid(&here.key("max-params"), "must be more than 0 bytes"));
            DEFAULT_MAX_PARAMS
        }),
    };
    let mut positive = |value: Option<super::units::HumanDuration>, key: &str, default: Duration| match value {
        Some(d) if d.0.is_zero() => {
            errs.push(src.invalid(&here.key(key), "must be longer than 0s"));
            default
        }
        Some(d) => d.0,
        None => default,
    };
    let header_timeout = positive(raw.header_timeout, "header-timeout", DEFAULT_HEADER_TIMEOUT);
    let body_timeout = positive(raw.body_timeout, "body-timeout", DEFAULT_BODY_TIMEOUT);
    let send_timeout = positive(raw.send_timeout, "send-timeout", DEFAULT_SEND_TIMEOUT);
    let keepalive_timeout = positive(raw.keepalive_timeout, "keepalive-timeout", DEFAULT_KEEPALIVE_TIMEOUT);
    if protocol == Protocol::Scgi && raw.keepalive_timeout.is_some() {
        errs.push(src.invalid(
            &here.key("keepalive-timeout"),
            "applies only to FastCGI listeners (an SCGI connection carries one request)",
        ));
    }
    let max_connections = raw.max_connections.unwrap_or(DEFAULT_MAX_CONNECTIONS);
    if max_connections == 0 {
        errs.push(src.invalid(&here.key("max-connections"), "must be 1 or more"));
    }
    let routes = routes(src, &here, raw.pool, raw.routes, &mut errs);
    let (dialect, unrouted_redirect, file_handoff, keep_path_info) = listener_words(
        src,
        &here,
        [&raw.dialect, &raw.unrouted_redirect, &raw.file_handoff, &raw.path_info].map(|w| w.as_deref().map(str::trim)),
        &mut errs,
    );
    let redirect_pools = redirect_pools(src, &here, raw.redirect_pools.as_deref().map(str::trim), &mut errs);
    let max_redirects = raw.max_redirects.unwrap_or(DEFAULT_MAX_REDIRECTS);
    let trusted_proxies =
        note(&mut errs, trusted_proxies(src, &here, raw.trusted_proxies, raw.trusted_proxy_headers)).flatten();
    let allowed_clients = note(&mut errs, allowed_clients(src, &here, address.as_ref(), raw.allowed_clients)).flatten();
    let (file_roots, file_map) =
        file_handoff_paths(src, &here, dir, file_handoff, raw.file_roots, raw.file_map, &mut errs);
    let file_hand_back = file_hand_back(src, &here, (file_handoff, dialect), raw.file_hand_back, &mut errs);
    let (mount, status_path, ping_path) =
        listener_paths(src, &here, (raw.mount, raw.status_path, raw.ping_path), &mut errs);

    match (address, routes) {
        (Some(address), Some(routes)) if errs.is_empty() => Ok(Listener {
            name: name.to_owned(),
            protocol,
            address,
            socket_mode,
            socket_owner: raw.socket_owner,
            socket_group: raw.socket_group,
            backlog,
            routes,
            max_params,
            status_path,
            ping_path,
            dialect,
            max_redirects,
            unrouted_redirect,
            redirect_pools,
            trusted_proxies,
            allowed_clients,
            file_handoff,
            file_roots,
            file_map,
            max_ranges: raw.max_ranges.unwrap_or(DEFAULT_MAX_RANGES),
            file_hand_back,
            mount,
            keep_path_info,
            header_timeout,
            body_timeout,
            body_min_rate: raw.body_min_rate.map_or(DEFAULT_BODY_MIN_RATE, |r| r.0),
            send_timeout,
            keepalive_timeout,
            max_connections,
            direct,
        }),
        _ => Err(ConfigError::several(errs)),
    }
}

/// The error for a `mount` or route `prefix` written as uWSGI's `mount = PREFIX=APP`.
fn uwsgi_mount(key: &str, value: &str) -> String {
    let prefix = value.split('=').next().unwrap_or_default();
    format!(
        "{value:?} is uWSGI's mount (PREFIX=APP); here `{key}` is the path prefix alone, `{key}: {prefix}`, and the \
         app goes in the pool's `app`"
    )
}

/// `mount` (a path prefix without its trailing slash), `status-path` and `ping-path`.
fn listener_paths(
    src: &Source,
    here: &KeyPath,
    (mount, status_path, ping_path): (Option<String>, Option<String>, Option<String>),
    errs: &mut Vec<ConfigError>,
) -> (Option<String>, Option<String>, Option<String>) {
    let mount = match mount.as_deref().map(str::trim) {
        None | Some("") => None,
        // `/`: mounted at the root — SCRIPT_NAME "" and the whole path as PATH_INFO, even
        // where the web server split the path itself (mod_fcgid at `<Location />`).
        Some(m) if m.trim_start_matches('/').is_empty() => Some(String::new()),
        Some(m) if m.contains('=') => {
            errs.push(src.invalid(&here.key("mount"), uwsgi_mount("mount", m)));
            None
        }
        Some(m) if m.starts_with('/') => Some(m.trim_end_matches('/').to_owned()),
        Some(m) => {
            errs.push(src.invalid(&here.key("mount"), format!("{m:?} must be a path starting with /, e.g. /app")));
            None
        }
    };
    let mut url_path = |key: &str, value: Option<String>| {
        let value = value?;
        let checked =
            super::status_key::check_url_path(&value).map(|()| value).map_err(|m| src.invalid(&here.key(key), m));
        note(errs, checked)
    };
    let status_path = url_path("status-path", status_path);
    let ping_path = url_path("ping-path", ping_path);
    (mount, status_path, ping_path)
}

/// `fastcgi:` or `scgi:` — exactly one of them: the protocol, the key, and the address as written.
fn protocol(
    src: &Source,
    here: &KeyPath,
    fastcgi: Option<String>,
    scgi: Option<String>,
    errs: &mut Vec<ConfigError>,
) -> (Protocol, &'static str, Option<String>) {
    match (fastcgi, scgi) {
        (Some(a), None) => (Protocol::FastCgi, "fastcgi", Some(a)),
        (None, Some(a)) => (Protocol::Scgi, "scgi", Some(a)),
        (Some(_), Some(_)) => {
            errs.push(
                src.invalid(&here.key("scgi"), "a listener speaks one protocol: set fastcgi: or scgi:, not both"),
            );
            (Protocol::FastCgi, "fastcgi", None)
        }
        (None, None) => {
            errs.push(src.invalid(here, "missing key `fastcgi` or `scgi`: the address to listen on"));
            (Protocol::FastCgi, "fastcgi", None)
        }
    }
}

/// The listener's keys that take one of a few words: `dialect`, `unrouted-redirect`,
/// `file-handoff`, `path-info` (whether PATH_INFO is kept).
const DIALECTS: &[&str] = &["nginx", "lighttpd", "apache", "caddy", "h2o", "haproxy", "generic"];

fn listener_words(
    src: &Source,
    here: &KeyPath,
    [dialect, unrouted_redirect, file_handoff, path_info]: [Option<&str>; 4],
    errs: &mut Vec<ConfigError>,
) -> (Dialect, UnroutedRedirect, super::model::FileHandoff, bool) {
    let dialect = match dialect {
        None | Some("generic") => Dialect::Generic,
        Some("nginx") => Dialect::Nginx,
        Some("lighttpd") => Dialect::Lighttpd,
        Some("apache") => Dialect::Apache,
        Some("caddy") => Dialect::Caddy,
        Some("h2o") => Dialect::H2o,
        Some("haproxy") => Dialect::Haproxy,
        Some(other) => {
            // apache2 and httpd are Apache's names in Debian and Red Hat.
            let close = match other.to_ascii_lowercase().as_str() {
                "apache2" | "httpd" => Some("apache"),
                _ => super::hint::did_you_mean(other, DIALECTS),
            };
            let hint = super::hint::meant(close);
            errs.push(src.invalid(
                &here.key("dialect"),
                format!(
                    "unknown web server {other:?}; one of nginx, lighttpd, apache, caddy, h2o, haproxy, generic{hint}"
                ),
            ));
            Dialect::Generic
        }
    };
    let unrouted_redirect = match unrouted_redirect {
        None | Some("404") => UnroutedRedirect::NotFound,
        Some("pass") => UnroutedRedirect::Pass,
        Some(other) => {
            errs.push(src.invalid(&here.key("unrouted-redirect"), format!("{other:?} is neither `pass` nor `404`")));
            UnroutedRedirect::NotFound
        }
    };
    let file_handoff = match file_handoff {
        None | Some("pass") => super::model::FileHandoff::Pass,
        Some("serve") => super::model::FileHandoff::Serve,
        Some("translate") => super::model::FileHandoff::Translate,
        Some(other) => {
            errs.push(
                src.invalid(&here.key("file-handoff"), format!("{other:?} is not one of `pass`, `translate`, `serve`")),
            );
            super::model::FileHandoff::Pass
        }
    };
    let keep_path_info = match path_info {
        None | Some("derive") => false,
        Some("keep") => true,
        Some(other) => {
            errs.push(src.invalid(&here.key("path-info"), format!("{other:?} is neither `derive` nor `keep`")));
            false
        }
    };
    (dialect, unrouted_redirect, file_handoff, keep_path_info)
}

/// `redirect-pools`: `same` (default) or `any`.
fn redirect_pools(src: &Source, here: &KeyPath, word: Option<&str>, errs: &mut Vec<ConfigError>) -> RedirectPools {
    match word {
        None | Some("same") => RedirectPools::Same,
        Some("any") => RedirectPools::Any,
        Some(other) => {
            errs.push(src.invalid(
                &here.key("redirect-pools"),
                format!(
                    "{other:?} is neither `same` (follow an app's local redirect only within its own pool) nor `any`"
                ),
            ));
            RedirectPools::Same
        }
    }
}

/// `socket-mode`, `socket-owner`, `socket-group`: only for a unix socket (not checked
/// against an address that did not parse).
fn socket_options(
    src: &Source,
    here: &KeyPath,
    raw: &RawListener,
    address: Option<&ListenAddress>,
    errs: &mut Vec<ConfigError>,
) -> Option<u32> {
    let is_unix = matches!(address, Some(ListenAddress::Unix(_)));
    for (value, key) in [
        (raw.socket_mode.is_some(), "socket-mode"),
        (raw.socket_owner.is_some(), "socket-owner"),
        (raw.socket_group.is_some(), "socket-group"),
    ] {
        if value && address.is_some() && !is_unix {
            errs.push(src.invalid(&here.key(key), "applies only to unix socket listeners"));
        }
    }
    for (value, key) in [(&raw.socket_owner, "socket-owner"), (&raw.socket_group, "socket-group")] {
        let Some(name) = value.as_deref() else { continue };
        if name.is_empty() {
            errs.push(src.invalid(&here.key(key), "is empty; name a user or group, or leave the key out"));
        } else if name.parse::<u32>().is_err() && !account_exists(key == "socket-owner", name) {
            let what = if key == "socket-owner" { "user" } else { "group" };
            errs.push(src.invalid(&here.key(key), format!("no such {what} {name:?} on this system")));
        }
    }
    let mode = raw.socket_mode.as_deref()?;
    note(errs, parse_mode(mode).map_err(|m| src.invalid(&here.key("socket-mode"), m)))
}

/// Whether the user (or group) `name` exists here; a failed lookup counts as existing, so
/// that only a definite "no such account" refuses the file.
fn account_exists(user: bool, name: &str) -> bool {
    let found = if user {
        nix::unistd::User::from_name(name).map(|u| u.is_some())
    } else {
        nix::unistd::Group::from_name(name).map(|g| g.is_some())
    };
    found.unwrap_or(true)
}

/// `pool:` (everything to one pool) or `routes:`; `None` after an error.
fn routes(
    src: &Source,
    here: &KeyPath,
    pool: Option<String>,
    routes: Option<Vec<super::file::RawRoute>>,
    errs: &mut Vec<ConfigError>,
) -> Option<Vec<Route>> {
    let raw_routes = match (pool, routes) {
        (Some(pool), None) => return Some(vec![Route { host: None, prefix: None, pool }]),
        (None, Some(raw_routes)) => raw_routes,
        (Some(_), Some(_)) => {
            errs.push(
                src.invalid(&here.key("routes"), "set either pool: (everything to one pool) or routes:, not both"),
            );
            return None;
        }
        (None, None) => {
            errs.push(src.invalid(here, "missing key `pool` or `routes`: where requests go"));
            return None;
        }
    };
    if raw_routes.is_empty() {
        errs.push(src.invalid(&here.key("routes"), "is empty; list at least one route"));
        return None;
    }
    let before = errs.len();
    let mut routes: Vec<Route> = Vec::with_capacity(raw_routes.len());
    let mut catch_all: Option<usize> = None;
    for (i, raw) in raw_routes.into_iter().enumerate() {
        let at = here.key("routes").index(i);
        if let Some(catch_all) = catch_all {
            errs.push(src.invalid(&at, format!("can never match: routes[{catch_all}] before it has neither host nor prefix and takes every request")));
        }
        if raw.host.is_none() && raw.prefix.is_none() {
            catch_all = catch_all.or(Some(i));
        }
        let host = match raw.host {
            Some(h) if h.is_empty() => {
                errs.push(src.invalid(&at.key("host"), "is empty"));
                None
            }
            Some(h) if h.contains(':') && !h.starts_with('[') => {
                errs.push(src.invalid(&at.key("host"), "must not include a port (the port is ignored when matching)"));
                None
            }
            other => other.map(|h| h.to_ascii_lowercase()),
        };
        if let Some(prefix) = raw.prefix.as_deref().filter(|p| !p.starts_with('/')) {
            errs.push(src.invalid(&at.key("prefix"), format!("must start with '/', e.g. \"/{prefix}\"")));
        } else if let Some(prefix) = raw.prefix.as_deref().filter(|p| p.contains('=')) {
            errs.push(src.invalid(&at.key("prefix"), uwsgi_mount("prefix", prefix)));
        }
        if let Some(Err(m)) = raw.prefix.as_deref().map(super::template::route_capture) {
            errs.push(src.invalid(&at.key("prefix"), m));
        }
        match raw.pool {
            Some(pool) => routes.push(Route { host, prefix: raw.prefix, pool }),
            None => errs.push(src.invalid(&at, "missing key `pool`")),
        }
    }
    (errs.len() == before).then_some(routes)
}

/// `file-roots` and `file-map`, as `file-handoff` needs them.
fn file_handoff_paths(
    src: &Source,
    here: &KeyPath,
    dir: &Path,
    mode: super::model::FileHandoff,
    roots: Option<Vec<String>>,
    map: Option<super::file::Entries<String>>,
    errs: &mut Vec<ConfigError>,
) -> (Vec<std::path::PathBuf>, Vec<(String, String)>) {
    use super::model::FileHandoff;
    let file_roots: Vec<std::path::PathBuf> =
        roots.unwrap_or_default().iter().map(|r| paths::resolve(dir, r)).collect();
    if mode == FileHandoff::Serve && file_roots.is_empty() {
        errs.push(src.invalid(
            &here.key("file-roots"),
            "file-handoff: serve needs file-roots: the directories X-Sendfile may name",
        ));
    }
    let mut file_map: Vec<(String, String)> = map
        .map(|e| e.0)
        .unwrap_or_default()
        .into_iter()
        .map(|(fs, uri)| (fs.trim_end_matches('/').to_owned(), uri.trim_end_matches('/').to_owned()))
        .collect();
    if file_map.iter().any(|(fs, uri)| !fs.starts_with('/') || !uri.starts_with('/')) {
        errs.push(src.invalid(
            &here.key("file-map"),
            "entries map an absolute filesystem path to an absolute URI path, e.g. /srv/files: /protected",
        ));
    } else if mode == FileHandoff::Translate && file_map.is_empty() {
        errs.push(src.invalid(
            &here.key("file-map"),
            "file-handoff: translate needs file-map: filesystem prefix → internal URI prefix",
        ));
    }
    // Longest prefixes first, so that a nested directory's own mapping wins.
    file_map.sort_by_key(|(fs, _)| std::cmp::Reverse(fs.len()));
    for root in &file_roots {
        if !root.is_dir() {
            errs.push(src.invalid(&here.key("file-roots"), format!("{} is not a directory", root.display())));
        }
    }
    (file_roots, file_map)
}

/// `file-hand-back`: on by default where what is handed back is surely followed: by the
/// bridge itself (`serve`), or by nginx (`translate`: a mapped file becomes an
/// X-Accel-Redirect to a `file-map` URI, which nginx must already serve for the app's own
/// hand-offs). Other servers follow it only when configured to (lighttpd drops an
/// X-Sendfile silently on a `fastcgi.server` entry without `"x-sendfile" => "enable"`).
fn file_hand_back(
    src: &Source,
    here: &KeyPath,
    (mode, dialect): (super::model::FileHandoff, Dialect),
    value: Option<bool>,
    errs: &mut Vec<ConfigError>,
) -> bool {
    use super::model::FileHandoff;
    if mode == FileHandoff::Pass && value == Some(true) {
        errs.push(src.invalid(
            &here.key("file-hand-back"),
            "file-hand-back needs file-handoff: translate or serve (with pass every file is streamed)",
        ));
    }
    value.unwrap_or(match mode {
        FileHandoff::Serve => true,
        FileHandoff::Translate => dialect == Dialect::Nginx,
        FileHandoff::Pass => false,
    })
}

/// `allowed-clients` (addresses, CIDR blocks): TCP listeners only — a unix socket's file
/// permissions guard it, and its peers have no address to compare.
fn allowed_clients(
    src: &Source,
    here: &KeyPath,
    address: Option<&ListenAddress>,
    clients: Option<Vec<String>>,
) -> Result<Option<Vec<super::Cidr>>, ConfigError> {
    let Some(clients) = clients else { return Ok(None) };
    let key = here.key("allowed-clients");
    if let Some(ListenAddress::Unix(_)) = address {
        return Err(
            src.invalid(&key, "applies to TCP listeners only; guard a unix socket with socket-mode / socket-group")
        );
    }
    if clients.is_empty() {
        return Err(src.invalid(&key, "is empty: nobody could connect; leave the key out to allow every peer"));
    }
    let list = clients
        .iter()
        .map(|c| super::Cidr::parse(c).map_err(|e| src.invalid(&key, e.to_string())))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Some(list))
}

/// `trusted-proxies` (addresses, CIDR blocks) and `trusted-proxy-headers` (default: all).
fn trusted_proxies(
    src: &Source,
    here: &KeyPath,
    proxies: Option<Vec<String>>,
    headers: Option<Vec<String>>,
) -> Result<Option<super::TrustedProxies>, ConfigError> {
    use super::{Cidr, ProxyHeader, TrustedProxies};
    let Some(proxies) = proxies else {
        if headers.is_some() {
            return Err(src.invalid(
                &here.key("trusted-proxy-headers"),
                "needs trusted-proxies: the addresses these headers are believed from",
            ));
        }
        return Ok(None);
    };
    let proxies = proxies
        .iter()
        .map(|p| Cidr::parse(p).map_err(|e| src.invalid(&here.key("trusted-proxies"), e.to_string())))
        .collect::<Result<Vec<_>, _>>()?;
    let headers = match headers {
        None => ProxyHeader::DEFAULT.to_vec(),
        Some(h) => h
            .iter()
            .map(|n| ProxyHeader::parse(n).map_err(|e| src.invalid(&here.key("trusted-proxy-headers"), e.to_string())))
            .collect::<Result<Vec<_>, _>>()?,
    };
    Ok(Some(TrustedProxies { proxies, headers }))
}

/// `host:port`, `[::1]:port`, `*:port`, `unix:/path`, `/abs/path`, `fd:N`.
pub(super) fn parse_address(text: &str, dir: &Path) -> Result<ListenAddress, String> {
    let text = text.trim();
    let unix = text.strip_prefix("unix:").or(if text.starts_with('/') { Some(text) } else { None });
    if let Some(path) = unix {
        if path.is_empty() {
            return Err("unix: needs a socket path, e.g. unix:/run/fcgibridge/app.sock".into());
        }
        let path = paths::resolve(dir, path);
        let len = path.as_os_str().len();
        if len > MAX_UNIX_PATH {
            return Err(format!(
                "unix socket path {} is {len} bytes; the system limit is {MAX_UNIX_PATH}",
                path.display()
            ));
        }
        return Ok(ListenAddress::Unix(path));
    }
    if let Some(name) = text.strip_prefix("systemd:") {
        if name.is_empty() || name.contains(':') {
            return Err("systemd: needs the socket's FileDescriptorName=, e.g. systemd:fcgibridge.socket".into());
        }
        return Ok(ListenAddress::Systemd(name.to_owned()));
    }
    if let Some(fd) = text.strip_prefix("fd:") {
        return fd
            .parse::<i32>()
            .ok()
            .filter(|n| *n >= 0)
            .map(ListenAddress::Fd)
            .ok_or_else(|| format!("{fd:?} is not a file descriptor number; write e.g. fd:0"));
    }
    let explain = || match address_mistake(text) {
        Some(what) => format!("{text:?} is not an address: {what}"),
        None => format!(
            "{text:?} is not an address; write an IP and port (127.0.0.1:9000, [::1]:9000, *:9000), \
             unix:/path/to.sock, or fd:0"
        ),
    };
    let addr = match text.parse::<SocketAddr>() {
        Ok(addr) => addr,
        Err(_) => {
            let (host, port) = text.rsplit_once(':').ok_or_else(explain)?;
            let port: u16 = port.parse().map_err(|_| explain())?;
            let ip = match host {
                "localhost" => IpAddr::V4(Ipv4Addr::LOCALHOST),
                "*" | "" => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                _ => return Err(explain()),
            };
            SocketAddr::new(ip, port)
        }
    };
    if addr.port() == 0 {
        return Err(format!("{text:?}: port 0 would pick a random port no web server could find"));
    }
    Ok(ListenAddress::Tcp(addr))
}

/// What is wrong with an address as other servers' configurations write them, and what
/// to write instead: a port alone (PHP-FPM's `listen = 9000`), an IP without its port, a
/// `tcp://` scheme, a host name, a port past 65535.
fn address_mistake(text: &str) -> Option<String> {
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        return Some(format!(
            "a port alone; write \"127.0.0.1:{text}\" (this host only) or \"*:{text}\" (every address)"
        ));
    }
    if let Ok(ip) = text.trim_matches(['[', ']']).parse::<IpAddr>() {
        let ip = if ip.is_ipv6() { format!("[{ip}]") } else { ip.to_string() };
        return Some(format!("no port; write e.g. \"{ip}:9000\""));
    }
    if let Some(rest) = text.strip_prefix("tcp://").or_else(|| text.strip_prefix("tcp:")) {
        return Some(format!("no scheme; write \"{rest}\""));
    }
    let (host, port) = text.rsplit_once(':')?;
    match port.parse::<u64>() {
        Ok(n) if n > u64::from(u16::MAX) => Some(format!("port {n} is above 65535")),
        Ok(_) if !host.is_empty() && host.parse::<IpAddr>().is_err() && !host.contains(['[', ']', '/']) => {
            Some(format!(
                "{host:?} is a host name; write its IP address (only localhost is taken by name: a name \
             that resolves elsewhere tomorrow would move the socket)"
            ))
        }
        _ => None,
    }
}

/// An octal file mode such as "0660", "660" or "0o660".
pub(super) fn parse_mode(text: &str) -> Result<u32, String> {
    let digits = text.trim().trim_start_matches("0o");
    u32::from_str_radix(digits, 8)
        .ok()
        .filter(|m| *m <= 0o7777 && !digits.is_empty())
        .ok_or_else(|| format!("{text:?} is not an octal file mode; write e.g. \"0660\""))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    #[test]
    fn addresses() {
        let dir = Path::new("/etc/fcgibridge/conf.d");
        let tcp = |s: &str| ListenAddress::Tcp(s.parse().unwrap());
        assert_eq!(parse_address("127.0.0.1:9000", dir), Ok(tcp("127.0.0.1:9000")));
        assert_eq!(parse_address("[::1]:9000", dir), Ok(tcp("[::1]:9000")));
        assert_eq!(parse_address("localhost:9000", dir), Ok(tcp("127.0.0.1:9000")));
        assert_eq!(parse_address("*:9000", dir), Ok(tcp("0.0.0.0:9000")));
        // Nothing written: no port-alone hint for an empty text.
        assert!(parse_address("", dir).unwrap_err().starts_with("\"\" is not an address; write an IP and port"));
        assert_eq!(parse_address("unix:/run/a.sock", dir), Ok(ListenAddress::Unix("/run/a.sock".into())));
        assert_eq!(parse_address("/run/a.sock", dir), Ok(ListenAddress::Unix("/run/a.sock".into())));
        assert_eq!(
            parse_address("unix:../run/a.sock", dir),
            Ok(ListenAddress::Unix(PathBuf::from("/etc/fcgibridge/run/a.sock")))
        );
        assert_eq!(parse_address("fd:0", dir), Ok(ListenAddress::Fd(0)));
        assert_eq!(parse_address("systemd:web", dir), Ok(ListenAddress::Systemd("web".into())));
        for bad in ["example.com:9000", "9000", "127.0.0.1", "127.0.0.1:0", "fd:x", "fd:-1", "unix:", "systemd:"] {
            assert!(parse_address(bad, dir).is_err(), "{bad:?} should be rejected");
        }
        let long = format!("unix:/{}", "x".repeat(120));
        assert!(parse_address(&long, dir).unwrap_err().contains("system limit"));
    }

    #[test]
    fn modes() {
        assert_eq!(parse_mode("0660"), Ok(0o660));
        assert_eq!(parse_mode("660"), Ok(0o660));
        assert_eq!(parse_mode("0o600"), Ok(0o600));
        assert!(parse_mode("0880").is_err());
        assert!(parse_mode("rw-rw----").is_err());
        assert!(parse_mode("").is_err());
    }

    #[test]
    fn module_apps() {
        let dir = Path::new("/");
        let module = |m: &str, c: &str| App::Module { module: m.into(), callable: c.into() };
        assert_eq!(parse_app("mysite.wsgi", dir), Ok(module("mysite.wsgi", "application")));
        assert_eq!(parse_app("mysite.wsgi:application", dir), Ok(module("mysite.wsgi", "application")));
        assert_eq!(parse_app("hello:app", dir), Ok(module("hello", "app")));
        assert_eq!(parse_app("pkg.sub:make.app", dir), Ok(module("pkg.sub", "make.app")));
        assert!(parse_app("hello:", dir).is_err());
        // An app factory, called by the worker without arguments (Flask's create_app).
        assert_eq!(parse_app("app:create_app()", dir), Ok(module("app", "create_app()")));
        assert_eq!(parse_app("pkg.web:factories.make()", dir), Ok(module("pkg.web", "factories.make()")));
        let err = parse_app("app:create_app(debug=True)", dir).unwrap_err();
        assert!(err.starts_with("\"create_app(debug=True)\" calls a factory with arguments"), "{err}");
        assert!(err.contains("write \"app:create_app()\""), "{err}");
        for bad in ["app:create_app(", "app:()", "app:create-app", "app:create_app()()"] {
            let err = parse_app(bad, dir).unwrap_err();
            assert!(!err.contains("app:application"), "a Flask app is no `application`: {err}");
            assert!(err.contains("\"app:app\"") || err.contains("calls a factory"), "{bad}: {err}");
        }
        assert!(parse_app("1abc", dir).is_err());
        assert!(parse_app("my-site", dir).is_err());
        // A file path, not a module, because of the extension: and it does not exist.
        let err = parse_app("missing.py", Path::new("/nonexistent")).unwrap_err();
        assert_eq!(err, "app file /nonexistent/missing.py does not exist");
        let err = parse_app("./missing.wsgi", Path::new("/nonexistent")).unwrap_err();
        assert_eq!(err, "app file /nonexistent/missing.wsgi does not exist");
    }

    #[test]
    fn file_apps_name_their_callable_after_the_last_colon() {
        let dir = crate::scratch::scratch_dir("parse-app");
        let odd = dir.join("with:colon");
        std::fs::create_dir_all(&odd).expect("mkdir");
        for f in ["app.fcgi", "plain", "app.py"] {
            std::fs::write(dir.join(f), "").expect("write");
        }
        std::fs::write(odd.join("app.fcgi"), "").expect("write");
        std::fs::write(dir.join("file:v2"), "").expect("write");
        let file = |p: &Path, c: &str| App::File { path: p.to_path_buf(), callable: c.into() };
        assert_eq!(parse_app("./app.fcgi", &dir), Ok(file(&dir.join("app.fcgi"), "application")));
        assert_eq!(parse_app("./app.fcgi:app", &dir), Ok(file(&dir.join("app.fcgi"), "app")));
        assert_eq!(parse_app("./plain:make.app", &dir), Ok(file(&dir.join("plain"), "make.app")));
        assert_eq!(parse_app("app.py:app", &dir), Ok(file(&dir.join("app.py"), "app")));
        // A ':' inside the path is not followed by a Python name: part of the path.
        assert_eq!(parse_app("with:colon/app.fcgi", &dir), Ok(file(&odd.join("app.fcgi"), "application")));
        assert_eq!(parse_app("./file:v2:application", &dir), Ok(file(&dir.join("file:v2"), "application")));
        let err = parse_app("./file:v2", &dir).unwrap_err();
        assert!(err.contains("file:v2:application"), "{err}");
        assert!(parse_app("./app.fcgi:not-a-name", &dir).unwrap_err().contains("is not a Python name"));
        // A factory after the file, in either form of path.
        assert_eq!(parse_app("app.py:create_app()", &dir), Ok(file(&dir.join("app.py"), "create_app()")));
        let abs = format!("{}:create_app()", dir.join("app.py").display());
        assert_eq!(parse_app(&abs, Path::new("/")), Ok(file(&dir.join("app.py"), "create_app()")));
        let err = parse_app("app.py:create_app(1)", &dir).unwrap_err();
        assert!(
            err.starts_with(&format!(
                "\"create_app(1)\" after the app file {} calls a factory",
                dir.join("app.py").display()
            )),
            "{err}"
        );
        assert!(err.contains("write \"app.py:create_app()\""), "{err}");
        assert!(parse_app("./gone.py:create_app()", &dir).unwrap_err().contains("gone.py does not exist"));
        // .wsgi with a callable stays Django's module form unless it is a path.
        assert_eq!(
            parse_app("mysite.wsgi:app", &dir),
            Ok(App::Module { module: "mysite.wsgi".into(), callable: "app".into() })
        );
        // What check prints reads back as the same app.
        for app in [
            file(&dir.join("app.fcgi"), "application"),
            file(&dir.join("app.fcgi"), "app"),
            file(&dir.join("file:v2"), "application"),
            file(&dir.join("app.py"), "create_app()"),
            file(&dir.join("file:v2"), "create_app()"),
        ] {
            let App::File { path, callable } = &app else { unreachable!() };
            assert_eq!(parse_app(&App::spec_for(path, callable), &dir).as_ref(), Ok(&app));
        }
    }
}
