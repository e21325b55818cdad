//! One file's pools and listeners turned into the model: defaults filled in, values
//! checked, paths made absolute. Checks that need every file live in `validate.rs`.
use super::error::{ConfigError, Source};
use super::file::{RawListener, RawPool};
use super::locate::KeyPath;
use super::model::{App, Dialect, ListenAddress, Listener, Pool, Protocol, Route, UnroutedRedirect};
use super::paths;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::Duration;

// Defaults; docs/configuration.md lists the same values.
pub const DEFAULT_PYTHON: &str = "python3";
pub const DEFAULT_THREADS: u32 = 4;
pub const DEFAULT_QUEUE_SIZE: usize = 1024;
pub const DEFAULT_QUEUE_TIMEOUT: Duration = Duration::from_secs(30);
pub const DEFAULT_STARTUP_TIMEOUT: Duration = Duration::from_secs(60);
pub const DEFAULT_BACKLOG: u32 = 1024;
pub const DEFAULT_MAX_PARAMS: usize = 1 << 20;
/// Internal redirects one request may take (`max-redirects`).
pub const DEFAULT_MAX_REDIRECTS: u32 = 10;
/// The callable looked up when an app names only a module (PEP 3333 convention).
pub const DEFAULT_CALLABLE: &str = "application";

/// The longest unix socket path the kernel accepts (sun_path minus its NUL).
const MAX_UNIX_PATH: usize = 107;

/// Pool and listener names become log fields, socket names and status page keys.
pub fn check_name(src: &Source, path: &KeyPath, kind: &str, name: &str) -> Result<(), ConfigError> {
    let ok = !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(src.invalid(path, format!("{kind} name {name:?} may only use letters, digits, '_' and '-'")))
    }
}

/// A pool from `pools.NAME` in a file whose directory is `dir`.
pub fn pool(
    src: &Source,
    dir: &Path,
    name: &str,
    mut raw: RawPool,
    search_path: Option<&std::ffi::OsStr>,
) -> Result<Pool, ConfigError> {
    let here = KeyPath::of(&["pools", name]);
    check_name(src, &here, "pool", name)?;
    let raw_isolation = super::isolation::RawIsolation::take(&mut raw);
    let raw_supervision = super::supervision::RawSupervision::take(&mut raw);

    let app = match (raw.app, raw.command) {
        (Some(_), Some(_)) => {
            return Err(src.invalid(&here.key("command"), "a pool has either `app` (WSGI) or `command` (a FastCGI program), not both"))
        }
        (None, Some(argv)) => {
            crate::supervise::program::resolve_command(argv, dir, search_path).map_err(|m| src.invalid(&here.key("command"), m))?
        }
        (app_text, None) => {
            let app_text = app_text.ok_or_else(|| {
                src.invalid(&here, "missing key `app`: name a module (\"package.module:callable\") or a .py/.wsgi file")
            })?;
            parse_app(&app_text, dir).map_err(|m| src.invalid(&here.key("app"), m))?
        }
    };

    let python = paths::find_python(raw.python.as_deref().unwrap_or(DEFAULT_PYTHON), dir, search_path)
        .map_err(|m| src.invalid(&here.key("python"), m))?;

    let chdir = match (&raw.chdir, &app) {
        (Some(chdir), _) => paths::resolve(dir, chdir),
        (None, App::File { path: file, .. }) => file.parent().map(Path::to_path_buf).unwrap_or_else(|| dir.to_path_buf()),
        (None, App::Module { .. } | App::Command(_)) => dir.to_path_buf(),
    };
    if !chdir.is_dir() {
        return Err(src.invalid(&here.key("chdir"), format!("{} is not a directory", chdir.display())));
    }

    let env = raw.env.map(|e| e.0).unwrap_or_default();
    for (key, _) in &env {
        if key.is_empty() || key.contains('=') || key.contains('\0') {
            return Err(src.invalid(&here.key("env").key(key), "not a valid environment variable name"));
        }
    }

    let queue_size = raw.queue_size.unwrap_or(DEFAULT_QUEUE_SIZE);
    let (processes, supervision) = super::supervision::resolve(src, &here, raw_supervision, queue_size)?;
    let threads = raw.threads.unwrap_or(DEFAULT_THREADS);
    if threads == 0 {
        return Err(src.invalid(&here.key("threads"), "must be at least 1"));
    }
    let startup_timeout = raw.startup_timeout.map(|d| d.0).unwrap_or(DEFAULT_STARTUP_TIMEOUT);
    if startup_timeout.is_zero() {
        return Err(src.invalid(&here.key("startup-timeout"), "must be longer than 0s"));
    }
    let error_pages = {
        use crate::respond::error_override::{ErrorPageError, ErrorPages, PageSource};
        let mut pages = ErrorPages::default();
        for (status, page) in raw.error_pages.map(|e| e.0).unwrap_or_default() {
            let file = page.file.as_deref().map(|f| paths::resolve(dir, f));
            let source = match (&file, &page.redirect) {
                (Some(file), None) => Ok(PageSource::File(file)),
                (None, Some(target)) => Ok(PageSource::Redirect(target)),
                (Some(_), Some(_)) => Err(ErrorPageError::BothForms),
                (None, None) => Err(ErrorPageError::NoPage),
            };
            source
                .and_then(|source| pages.insert(&status, source))
                .map_err(|e| src.invalid(&here.key("error-pages").key(&status), e.to_string()))?;
        }
        pages
    };
    let max_body = match raw.max_body {
        None => None,
        Some(size) if size.0 == 0 => return Err(src.invalid(&here.key("max-body"), "must be more than 0 bytes (leave it out for no limit)")),
        Some(size) => Some(size.0),
    };
    let isolation = super::isolation::resolve(src, &here, dir, raw_isolation, &app, &chdir, &python)?;

    Ok(Pool {
        name: name.to_owned(),
        python,
        app,
        chdir,
        env: env.into_iter().collect(),
        processes,
        threads,
        queue_size,
        queue_timeout: raw.queue_timeout.map(|d| d.0).unwrap_or(DEFAULT_QUEUE_TIMEOUT),
        startup_timeout,
        slowlog_timeout: match raw.slowlog_timeout {
            Some(d) if d.0.is_zero() => return Err(src.invalid(&here.key("slowlog-timeout"), "must be longer than 0s; leave the key out to turn the slowlog off")),
            other => other.map(|d| d.0),
        },
        supervision,
        max_body,
        error_pages,
        isolation,
    })
}

/// A dotted Python name: `application`, `make.app`.
pub fn is_python_name(s: &str) -> bool {
    !s.is_empty()
        && s.split('.').all(|part| {
            part.chars().next().is_some_and(|c| c.is_alphabetic() || c == '_')
                && part.chars().all(|c| c.is_alphanumeric() || c == '_')
        })
}

/// `package.module[:callable]`, or a file path (contains '/', ends in .py, or names an
/// existing .wsgi file) with an optional `:callable`: the text after the **last** `:` is
/// the callable when it is a Python name, so `/srv/a:b/app.fcgi` is a file and
/// `/srv/app.fcgi:app` names `app` in it.
pub fn parse_app(text: &str, dir: &Path) -> Result<App, String> {
    let text = text.trim();
    let (target, callable) = match text.rsplit_once(':') {
        Some((head, tail)) if !head.is_empty() && is_python_name(tail) => (head, Some(tail)),
        _ => (text, None),
    };
    // Django names its WSGI module `project.wsgi`, so a bare `x.wsgi` is a file only
    // when that file exists; `./x.wsgi` always means the file.
    let wsgi_file = target.ends_with(".wsgi") && callable.is_none() && paths::resolve(dir, target).is_file();
    if target.ends_with(".py") || target.contains('/') || wsgi_file {
        return parse_file_app(target, callable, text, dir);
    }
    let (module, callable) = match text.split_once(':') {
        Some((module, callable)) => (module, callable),
        None => (text, DEFAULT_CALLABLE),
    };
    let dotted = is_python_name;
    if !dotted(module) {
        return Err(format!(
            "{text:?} is neither a Python module (\"package.module:callable\") nor a file path (*.py, *.wsgi)"
        ));
    }
    if !dotted(callable) {
        return Err(format!("{callable:?} is not a Python name; write \"{module}:application\" or leave out the colon"));
    }
    Ok(App::Module { module: module.to_owned(), callable: callable.to_owned() })
}

fn parse_file_app(target: &str, callable: Option<&str>, text: &str, dir: &Path) -> Result<App, String> {
    let file = paths::resolve(dir, target);
    if file.is_file() {
        let callable = callable.unwrap_or(DEFAULT_CALLABLE).to_owned();
        return Ok(App::File { path: file, callable });
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
    Err(format!("app file {} does not exist", file.display()))
}

/// A listener from `listeners.NAME`. Route targets are checked once all pools are known.
pub fn listener(src: &Source, dir: &Path, name: &str, raw: RawListener) -> Result<Listener, ConfigError> {
    let here = KeyPath::of(&["listeners", name]);
    check_name(src, &here, "listener", name)?;

    let (protocol, key, text) = match (raw.fastcgi, raw.scgi) {
        (Some(a), None) => (Protocol::FastCgi, "fastcgi", a),
        (None, Some(a)) => (Protocol::Scgi, "scgi", a),
        (Some(_), Some(_)) => {
            return Err(src.invalid(&here.key("scgi"), "a listener speaks one protocol: set fastcgi: or scgi:, not both"))
        }
        (None, None) => {
            return Err(src.invalid(&here, "missing key `fastcgi` or `scgi`: the address to listen on"));
        }
    };
    let address = parse_address(&text, dir).map_err(|m| src.invalid(&here.key(key), m))?;

    let is_unix = matches!(address, ListenAddress::Unix(_));
    for (value, key) in [
        (raw.socket_mode.is_some(), "socket-mode"),
        (raw.socket_owner.is_some(), "socket-owner"),
        (raw.socket_group.is_some(), "socket-group"),
    ] {
        if value && !is_unix {
            return Err(src.invalid(&here.key(key), "applies only to unix socket listeners"));
        }
    }
    let socket_mode = match &raw.socket_mode {
        Some(text) => Some(parse_mode(text).map_err(|m| src.invalid(&here.key("socket-mode"), m))?),
        None => None,
    };
    for (value, key) in [(&raw.socket_owner, "socket-owner"), (&raw.socket_group, "socket-group")] {
        if value.as_deref().is_some_and(str::is_empty) {
            return Err(src.invalid(&here.key(key), "is empty; name a user or group, or leave the key out"));
        }
    }

    let backlog = raw.backlog.unwrap_or(DEFAULT_BACKLOG);
    if backlog == 0 {
        return Err(src.invalid(&here.key("backlog"), "must be at least 1"));
    }
    let max_params = match raw.max_params {
        None => DEFAULT_MAX_PARAMS,
        Some(size) => usize::try_from(size.0)
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| src.invalid(&here.key("max-params"), "must be more than 0 bytes"))?,
    };

    let routes = match (raw.pool, raw.routes) {
        (Some(pool), None) => vec![Route { host: None, prefix: None, pool }],
        (None, Some(raw_routes)) => {
            if raw_routes.is_empty() {
                return Err(src.invalid(&here.key("routes"), "is empty; list at least one route"));
            }
            let mut routes: Vec<Route> = Vec::with_capacity(raw_routes.len());
            for (i, raw) in raw_routes.into_iter().enumerate() {
                let at = here.key("routes").index(i);
                if let Some(catch_all) = routes.iter().position(|r| r.host.is_none() && r.prefix.is_none()) {
                    return Err(src.invalid(
                        &at,
                        format!("can never match: routes[{catch_all}] before it has neither host nor prefix and takes every request"),
                    ));
                }
                let pool = raw.pool.ok_or_else(|| src.invalid(&at, "missing key `pool`"))?;
                let host = match raw.host {
                    Some(h) if h.is_empty() => return Err(src.invalid(&at.key("host"), "is empty")),
                    Some(h) if h.contains(':') && !h.starts_with('[') => {
                        return Err(src.invalid(&at.key("host"), "must not include a port (the port is ignored when matching)"))
                    }
                    other => other.map(|h| h.to_ascii_lowercase()),
                };
                if let Some(prefix) = &raw.prefix {
                    if !prefix.starts_with('/') {
                        return Err(src.invalid(&at.key("prefix"), format!("must start with '/', e.g. \"/{prefix}\"")));
                    }
                }
                routes.push(Route { host, prefix: raw.prefix, pool });
            }
            routes
        }
        (Some(_), Some(_)) => {
            return Err(src.invalid(&here.key("routes"), "set either pool: (everything to one pool) or routes:, not both"))
        }
        (None, None) => return Err(src.invalid(&here, "missing key `pool` or `routes`: where requests go")),
    };

    let dialect = match raw.dialect.as_deref().map(str::trim) {
        None | Some("generic") => Dialect::Generic,
        Some("nginx") => Dialect::Nginx,
        Some("lighttpd") => Dialect::Lighttpd,
        Some("apache") => Dialect::Apache,
        Some("caddy") => Dialect::Caddy,
        Some("h2o") => Dialect::H2o,
        Some("haproxy") => Dialect::Haproxy,
        Some(other) => {
            return Err(src.invalid(
                &here.key("dialect"),
                format!("unknown web server {other:?}; one of nginx, lighttpd, apache, caddy, h2o, haproxy, generic"),
            ))
        }
    };
    let unrouted_redirect = match raw.unrouted_redirect.as_deref().map(str::trim) {
        None | Some("404") => UnroutedRedirect::NotFound,
        Some("pass") => UnroutedRedirect::Pass,
        Some(other) => return Err(src.invalid(&here.key("unrouted-redirect"), format!("{other:?} is neither `pass` nor `404`"))),
    };
    let max_redirects = raw.max_redirects.unwrap_or(DEFAULT_MAX_REDIRECTS);
    let trusted_proxies = trusted_proxies(src, &here, raw.trusted_proxies, raw.trusted_proxy_headers)?;
    let file_handoff = match raw.file_handoff.as_deref().map(str::trim) {
        None | Some("pass") => super::model::FileHandoff::Pass,
        Some("serve") => super::model::FileHandoff::Serve,
        Some("translate") => super::model::FileHandoff::Translate,
        Some(other) => return Err(src.invalid(&here.key("file-handoff"), format!("{other:?} is not one of `pass`, `translate`, `serve`"))),
    };
    let file_roots: Vec<std::path::PathBuf> = raw.file_roots.unwrap_or_default().iter().map(|r| paths::resolve(dir, r)).collect();
    if file_handoff == super::model::FileHandoff::Serve && file_roots.is_empty() {
        return Err(src.invalid(&here.key("file-roots"), "file-handoff: serve needs file-roots: the directories X-Sendfile may name"));
    }
    let mount = match raw.mount.as_deref().map(|m| m.trim().trim_end_matches('/')) {
        None | Some("") => None,
        Some(m) if m.starts_with('/') => Some(m.to_owned()),
        Some(m) => return Err(src.invalid(&here.key("mount"), format!("{m:?} must be a path starting with /, e.g. /app"))),
    };
    let keep_path_info = match raw.path_info.as_deref().map(str::trim) {
        None | Some("derive") => false,
        Some("keep") => true,
        Some(other) => return Err(src.invalid(&here.key("path-info"), format!("{other:?} is neither `derive` nor `keep`"))),
    };
    let mut file_map: Vec<(String, String)> = raw
        .file_map
        .map(|e| e.0)
        .unwrap_or_default()
        .into_iter()
        .map(|(fs, uri)| (fs.trim_end_matches('/').to_owned(), uri.trim_end_matches('/').to_owned()))
        .collect();
    if file_map.iter().any(|(fs, uri)| !fs.starts_with('/') || !uri.starts_with('/')) {
        return Err(src.invalid(&here.key("file-map"), "entries map an absolute filesystem path to an absolute URI path, e.g. /srv/files: /protected"));
    }
    if file_handoff == super::model::FileHandoff::Translate && file_map.is_empty() {
        return Err(src.invalid(&here.key("file-map"), "file-handoff: translate needs file-map: filesystem prefix → internal URI prefix"));
    }
    // Longest prefixes first, so that a nested directory's own mapping wins.
    file_map.sort_by_key(|(fs, _)| std::cmp::Reverse(fs.len()));
    for root in &file_roots {
        if !root.is_dir() {
            return Err(src.invalid(&here.key("file-roots"), format!("{} is not a directory", root.display())));
        }
    }

    Ok(Listener {
        name: name.to_owned(),
        protocol,
        address,
        socket_mode,
        socket_owner: raw.socket_owner,
        socket_group: raw.socket_group,
        backlog,
        routes,
        max_params,
        status_path: match raw.status_path {
            Some(p) => Some(super::status_key::check_url_path(&p).map(|()| p).map_err(|m| src.invalid(&here.key("status-path"), m))?),
            None => None,
        },
        ping_path: match raw.ping_path {
            Some(p) => Some(super::status_key::check_url_path(&p).map(|()| p).map_err(|m| src.invalid(&here.key("ping-path"), m))?),
            None => None,
        },
        dialect,
        max_redirects,
        unrouted_redirect,
        trusted_proxies,
        file_handoff,
        file_roots,
        file_map,
        mount,
        keep_path_info,
    })
}

/// `trusted-proxies` (addresses, CIDR blocks) and `trusted-proxy-headers` (default: all).
fn trusted_proxies(
    src: &Source,
    here: &KeyPath,
    proxies: Option<Vec<String>>,
    headers: Option<Vec<String>>,
) -> Result<Option<crate::listen::proxy::TrustedProxies>, ConfigError> {
    use crate::listen::proxy::{Cidr, ProxyHeader, TrustedProxies};
    let Some(proxies) = proxies else {
        if headers.is_some() {
            return Err(src.invalid(&here.key("trusted-proxy-headers"), "needs trusted-proxies: the addresses these headers are believed from"));
        }
        return Ok(None);
    };
    let proxies = proxies
        .iter()
        .map(|p| Cidr::parse(p).map_err(|e| src.invalid(&here.key("trusted-proxies"), e.to_string())))
        .collect::<Result<Vec<_>, _>>()?;
    let headers = match headers {
        None => ProxyHeader::ALL.to_vec(),
        Some(h) => h
            .iter()
            .map(|n| ProxyHeader::parse(n).map_err(|e| src.invalid(&here.key("trusted-proxy-headers"), e.to_string())))
            .collect::<Result<Vec<_>, _>>()?,
    };
    Ok(Some(TrustedProxies { proxies, headers }))
}

/// `host:port`, `[::1]:port`, `*:port`, `unix:/path`, `/abs/path`, `fd:N`.
pub fn parse_address(text: &str, dir: &Path) -> Result<ListenAddress, String> {
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
    let explain = || {
        format!(
            "{text:?} is not an address; write an IP and port (127.0.0.1:9000, [::1]:9000, *:9000), \
             unix:/path/to.sock, or fd:0"
        )
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

/// An octal file mode such as "0660", "660" or "0o660".
pub fn parse_mode(text: &str) -> Result<u32, String> {
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
        let dir = std::env::temp_dir().join(format!("fcgibridge-parse-app-{}", std::process::id()));
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
        assert!(parse_app("./app.fcgi:not-a-name", &dir).unwrap_err().contains("does not exist"));
        // .wsgi with a callable stays Django's module form unless it is a path.
        assert_eq!(parse_app("mysite.wsgi:app", &dir), Ok(App::Module { module: "mysite.wsgi".into(), callable: "app".into() }));
        // What check prints reads back as the same app.
        for app in [file(&dir.join("app.fcgi"), "application"), file(&dir.join("app.fcgi"), "app"), file(&dir.join("file:v2"), "application")] {
            let App::File { path, callable } = &app else { unreachable!() };
            assert_eq!(parse_app(&App::spec_for(path, callable), &dir).as_ref(), Ok(&app));
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
