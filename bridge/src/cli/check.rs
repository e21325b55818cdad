//! `fcgibridge check`: validate conf.d and print the effective configuration.
//!
//! The output is itself a valid configuration file (YAML, the same schema) with every
//! default written out and every path absolute, so it answers "what will the daemon
//! actually do?" and can be diffed between deployments. Exit status: 0 when valid,
//! 1 when not (the error, `file:line:column: key: message`, goes to stderr). Each pool's
//! interpreter is run once to read its version (supervise/probe.rs). With `--import`, each
//! pool's app is then imported as its workers would import it (supervise/app_import.rs).
use crate::config::units::{DurationDisplay, SizeDisplay};
use crate::config::ErrorPage;
use crate::config::{self, App, Config, ListenAddress, Listener, LogFormat, Pool, Protocol};
use crate::supervise::app_import::Imported;
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::Path;
use std::process::ExitCode;

/// Entry point of the subcommand; `import`: `--import`.
pub fn main(config_dir: &Path, import: bool) -> ExitCode {
    crate::supervise::keep_inherited_descriptors_from_children();
    // The interpreters are run only once the files are valid: their errors come after.
    let loaded = config::load(config_dir).map_err(|e| e.to_string());
    match loaded.and_then(|c| crate::supervise::probe::check_pools(&c.pools).map(|()| c).map_err(|e| e.to_string())) {
        Ok(config) => {
            // Valid, but worth a look (`file:line:column: warning: …`): on stderr, so that
            // the output stays a configuration.
            for w in config.warnings.iter().chain(config.templates.iter().flat_map(|t| &t.warnings)) {
                eprintln!("{w}");
            }
            let text = render(&config, &config_dir.display().to_string(), std::env::var_os("PATH").as_deref());
            let mut out = std::io::stdout().lock();
            // A closed pipe (`fcgibridge check | head`) is not a configuration error.
            let _ = out.write_all(text.as_bytes()).and_then(|()| out.flush());
            // `run` unpacks it whatever the pools; `--import` would fail on it too.
            if let Some(e) = crate::supervise::runtime_dir::native_module_missing() {
                eprintln!("fcgibridge: {e}");
                return ExitCode::FAILURE;
            }
            if import && !import_apps(&config) {
                return ExitCode::FAILURE;
            }
            ExitCode::SUCCESS
        }
        Err(err) => {
            // No prefix: `file:line:column: ...` at the start of the line is what editors jump to.
            eprintln!("{err}");
            ExitCode::FAILURE
        }
    }
}

/// `--import`: every pool's app imported as its workers would import it, one at a time,
/// each reported on stderr as `file:line:column: pools.NAME.app: ok (…)` or `… import
/// failed: <the worker's start-up error>` followed by what the import printed (the
/// traceback), indented. True when every app imported.
fn import_apps(config: &Config) -> bool {
    let package = match crate::supervise::RuntimeDir::for_check(config.global.runtime_dir.as_deref()) {
        Ok(dir) => dir,
        Err(e) => {
            eprintln!("fcgibridge: --import: {e}");
            return false;
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("fcgibridge: --import: cannot start the runtime that waits for the imports: {e}");
            return false;
        }
    };
    let mut stop = {
        let _in_runtime = runtime.enter();
        Interrupts::install()
    };
    let mut all_ok = true;
    for pool in &config.pools {
        let (at, key) = (&pool.app_at.at, &pool.app_at.key);
        if let App::Command(_) = pool.app {
            eprintln!("{at}: {key}: skipped: a FastCGI program, not a Python app");
            continue;
        }
        let python_path = package.python_path();
        let imported = runtime.block_on(async {
            tokio::select! {
                imported = crate::supervise::app_import::import_app(pool, &python_path) => Some(imported),
                signal = stop.next() => {
                    eprintln!("{at}: {key}: import interrupted ({signal}); its processes are killed");
                    None
                }
            }
        });
        // The app's text goes to the operator's terminal: its control characters escaped
        // (an escape sequence could rewrite a line into `ok`).
        let clean = crate::logging::escape::clean;
        match imported {
            Some(Imported::Ok { interface, took }) => {
                eprintln!("{at}: {key}: ok ({interface}, imported in {:.2}s)", took.as_secs_f64())
            }
            Some(Imported::Failed { why, output }) => {
                all_ok = false;
                eprintln!("{at}: {key}: import failed: {}", clean(&why));
                for line in output.lines() {
                    eprintln!("    {}", clean(line));
                }
            }
            // The import's copy of the worker package goes with `package`.
            None => return false,
        }
    }
    for t in &config.templates {
        eprintln!("{}: pools.{}: skipped: a template, its instances are made on demand", t.file, t.name);
    }
    all_ok
}

/// Ctrl-C and SIGTERM during `--import`: handled, so that the import's processes and its
/// copy of the worker package are cleaned up instead of left behind by the default action.
struct Interrupts(Option<(tokio::signal::unix::Signal, tokio::signal::unix::Signal)>);

impl Interrupts {
    /// In the runtime's context. Without handlers (None), the default action stays.
    fn install() -> Self {
        use tokio::signal::unix::{signal, SignalKind};
        Self(signal(SignalKind::interrupt()).ok().zip(signal(SignalKind::terminate()).ok()))
    }

    /// The name of the next one.
    async fn next(&mut self) -> &'static str {
        match &mut self.0 {
            Some((int, term)) => tokio::select! {
                _ = int.recv() => "SIGINT",
                _ = term.recv() => "SIGTERM",
            },
            None => std::future::pending().await,
        }
    }
}

/// The effective configuration as YAML that `config::load` would read back unchanged.
/// `search_path`: the PATH a template's default interpreter is looked for on (check's own).
pub fn render(config: &Config, dir: &str, search_path: Option<&std::ffi::OsStr>) -> String {
    let mut out = String::new();
    // Writing to a String cannot fail; the results below are ignored for that reason.
    let _ = writeln!(
        out,
        "# Effective configuration of {dir}: {} pool(s), {} template(s), {} listener(s); every default written out, a key that is off as a comment.",
        config.pools.len(),
        config.templates.len(),
        config.listeners.len()
    );
    let g = &config.global;
    out.push_str("bridge:\n");
    match &g.runtime_dir {
        Some(dir) => field(&mut out, 2, "runtime-dir", &quote(&dir.display().to_string())),
        None => out.push_str("  # runtime-dir: not set: a private directory under $XDG_RUNTIME_DIR or /tmp\n"),
    }
    field(&mut out, 2, "log-level", &quote(&g.log_level));
    let format = match g.log_format {
        LogFormat::Text => "text",
        LogFormat::Json => "json",
    };
    field(&mut out, 2, "log-format", format);
    match &g.access_log {
        Some(path) => field(&mut out, 2, "access-log", &quote(&path.display().to_string())),
        None => out.push_str("  # access-log: not set: no access log\n"),
    }
    field(&mut out, 2, "shutdown-timeout", &DurationDisplay(g.shutdown_timeout).to_string());
    field(&mut out, 2, "drain-period", &DurationDisplay(g.drain_period).to_string());
    field(&mut out, 2, "header-memory", &SizeDisplay(g.header_memory).to_string());
    field(&mut out, 2, "log-rate-limit", if g.log_rate_limit { "true" } else { "false" });
    crate::status::render_check(&mut out, g);

    let no_pools = config.pools.is_empty() && config.templates.is_empty();
    out.push_str(if no_pools { "pools: {}\n" } else { "pools:\n" });
    for pool in &config.pools {
        let mut block = String::new();
        render_pool(&mut block, pool);
        out.push_str(&if pool.direct.is_some() { inert_for_direct(&block, &DIRECT_INERT_POOL) } else { block });
    }
    for t in &config.templates {
        render_template(&mut out, t, search_path);
    }
    out.push_str("listeners:\n");
    for listener in &config.listeners {
        let mut block = String::new();
        render_listener(&mut block, listener);
        out.push_str(&if listener.direct { inert_for_direct(&block, &DIRECT_INERT_LISTENER) } else { block });
    }
    out
}

/// A direct pool's keys that do nothing (each is refused when written: docs/direct.md).
const DIRECT_INERT_POOL: [&str; 5] = ["queue-size", "queue-timeout", "abort-grace", "unknown-length-body", "pipeline"];

/// A direct listener's keys that do nothing (`header-timeout` and `max-redirects` do: its
/// workers apply them).
const DIRECT_INERT_LISTENER: [&str; 11] = [
    "max-params",
    "body-timeout",
    "body-min-rate",
    "send-timeout",
    "keepalive-timeout",
    "max-connections",
    "dialect",
    "unrouted-redirect",
    "redirect-pools",
    "file-handoff",
    "max-ranges",
];

/// `block` (a pool's or listener's rendering) with its top-level lines of `keys` turned
/// into comments that say they have no effect, as `pipeline` with preload is shown.
fn inert_for_direct(block: &str, keys: &[&str]) -> String {
    let mut out = String::with_capacity(block.len());
    for line in block.lines() {
        let key = line.strip_prefix("    ").filter(|l| !l.starts_with([' ', '#'])).and_then(|l| l.split_once(':'));
        match key {
            Some((k, _)) if keys.contains(&k) => {
                let _ = writeln!(
                    out,
                    "    # {} has no effect: a `direct` listener's workers take its connections",
                    &line[4..]
                );
            }
            _ => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    out
}

fn render_pool(out: &mut String, pool: &Pool) {
    let _ = writeln!(out, "  {}:", quote(&pool.name));
    match &pool.app {
        App::Module { module, callable } => field(out, 4, "app", &quote(&format!("{module}:{callable}"))),
        App::File { path, callable } => field(out, 4, "app", &quote(&App::spec_for(path, callable))),
        App::Command(argv) => field(out, 4, "command", &list(argv)),
    }
    if matches!(pool.app, App::Command(_)) {
        // The program is started as written (its own shebang chooses its interpreter).
        out.push_str("    # python: not used: a command: pool starts its program as written\n");
    } else if let Some(by) = &pool.python_at.chosen_by {
        let _ = writeln!(out, "    # python: from {} ({by})", pool.python_at.at);
    }
    field(out, 4, "python", &quote(&pool.python.display().to_string()));
    field(out, 4, "chdir", &quote(&pool.chdir.display().to_string()));
    if pool.env.is_empty() {
        field(out, 4, "env", "{}");
    } else {
        out.push_str("    env:\n");
        for (name, value) in &pool.env {
            field(out, 6, &quote(name), &quote(value));
        }
    }
    for (key, value, off) in config::supervision::render(&pool.supervision, pool.processes) {
        if off {
            let _ = writeln!(out, "    # {key}: {value} (off)");
        } else {
            field(out, 4, key, &value);
        }
    }
    for (key, value) in pool.interface.render() {
        field(out, 4, key, &value);
    }
    if pool.interface.shows_threads() {
        field(out, 4, "threads", &pool.threads.to_string());
    }
    field(out, 4, "queue-size", &pool.queue_size.to_string());
    field(out, 4, "queue-timeout", &DurationDisplay(pool.queue_timeout).to_string());
    field(out, 4, "startup-timeout", &DurationDisplay(pool.startup_timeout).to_string());
    match &pool.ready_check {
        Some(check) => field(out, 4, "ready-check", &quote(&check.to_string())),
        None => out.push_str("    # ready-check: not set: a worker is ready once its app is imported\n"),
    }
    match pool.slowlog_timeout {
        Some(t) => field(out, 4, "slowlog-timeout", &DurationDisplay(t).to_string()),
        None => out.push_str("    # slowlog-timeout: not set: no slowlog\n"),
    }
    match pool.max_body {
        Some(limit) => field(out, 4, "max-body", &SizeDisplay(limit).to_string()),
        None => out.push_str("    # max-body: not set: no limit\n"),
    }
    field(out, 4, "unknown-length-body", pool.unknown_length_body.name());
    match crate::claim::never_piped(pool) {
        // The key as written would load back the same; the comment says it does nothing.
        Some(why) if pool.pipeline => {
            out.push_str(&format!("    # pipeline: true has no effect: {why} is never piped to\n"))
        }
        _ => field(out, 4, "pipeline", if pool.pipeline { "true" } else { "false" }),
    }
    if let (true, Some(d)) = (pool.error_pages.is_empty(), &pool.direct) {
        // The bridge is not on the request path: no page of its own either.
        let listener = &d.listener;
        out.push_str(&format!(
            "    # error-pages: none: served by the direct listener {listener}, whose web server answers errors\n"
        ));
    } else if pool.error_pages.is_empty() {
        out.push_str("    # error-pages: not set: the bridge's own short pages\n");
    } else {
        out.push_str("    error-pages:\n");
        for (status, page) in pool.error_pages.iter() {
            let value = match page {
                ErrorPage::File { path, .. } => quote(&path.display().to_string()),
                ErrorPage::Redirect(target) => format!("{{redirect: {}}}", quote(&String::from_utf8_lossy(target))),
            };
            field(out, 6, &format!("\"{status}\""), &value);
        }
    }
    if pool.touch_reload.is_empty() {
        out.push_str("    # touch-reload: not set: new code is loaded by fcgibridge reload --restart-workers\n");
    } else {
        field(out, 4, "touch-reload", &list(pool.touch_reload.iter().map(|p| p.display().to_string())));
    }
    let isolation = pool.isolation.render();
    for (key, value, is_text) in &isolation {
        field(out, 4, key, &if *is_text { quote(value) } else { value.clone() });
    }
    for (key, meaning) in &UNSET_ISOLATION {
        if !isolation.iter().any(|(k, _, _)| k == key) {
            let _ = writeln!(out, "    # {key}: not set: {meaning}");
        }
    }
}

/// What an isolation key that is not set means, for `check`'s output.
const UNSET_ISOLATION: [(&str, &str); 11] = [
    ("user", "the bridge's own user"),
    ("group", "the user's primary group"),
    ("groups", "the user's groups"),
    ("chroot", "none"),
    ("umask", "the bridge's"),
    ("rlimit-nofile", "the bridge's"),
    ("rlimit-nproc", "the bridge's"),
    ("rlimit-core", "the bridge's"),
    ("rlimit-as", "the bridge's"),
    ("nice", "the bridge's"),
    ("script-user", "the app file's owner is not checked"),
];

/// A template: its `template:` block with every default, its pool keys as written (paths
/// absolute; the defaults of the others are a pool's, but for queue-size), and, as comments
/// (so that the entry loads back as written), an instance's queue-size and the interpreter
/// its instances run when they are not written.
fn render_template(out: &mut String, t: &config::template::Template, search_path: Option<&std::ffi::OsStr>) {
    let _ = writeln!(out, "  {}:", quote(&t.name));
    out.push_str("    template:\n");
    for (key, value) in t.render_block() {
        field(out, 6, key, &value);
    }
    for (key, value) in t.render_keys() {
        field(out, 4, &key, &value);
    }
    // The one key whose default is not a pool's: say what an instance gets.
    if t.queue_size_shared {
        let _ = writeln!(
            out,
            "    # queue-size: not set: {} for each instance, its fair share of the connections of the listeners that lead to the template",
            t.queue_size
        );
    }
    if let Some(python) = t.default_python_note(search_path) {
        let _ = writeln!(out, "    # python: not set: {python}");
    }
}

/// `[a, b]` with each item quoted as needed.
fn list<T: AsRef<str>>(items: impl IntoIterator<Item = T>) -> String {
    let items: Vec<String> = items.into_iter().map(|i| quote(i.as_ref())).collect();
    format!("[{}]", items.join(", "))
}

fn render_listener(out: &mut String, l: &Listener) {
    let _ = writeln!(out, "  {}:", quote(&l.name));
    let protocol = match l.protocol {
        Protocol::FastCgi => "fastcgi",
        Protocol::Scgi => "scgi",
    };
    let address = match &l.address {
        ListenAddress::Tcp(addr) => addr.to_string(),
        ListenAddress::Unix(path) => format!("unix:{}", path.display()),
        ListenAddress::Fd(fd) => format!("fd:{fd}"),
        ListenAddress::Systemd(name) => format!("systemd:{name}"),
    };
    field(out, 4, protocol, &quote(&address));
    if let Some(mode) = l.socket_mode {
        field(out, 4, "socket-mode", &format!("\"{mode:04o}\""));
    }
    if let Some(owner) = &l.socket_owner {
        field(out, 4, "socket-owner", &quote(owner));
    }
    if let Some(group) = &l.socket_group {
        field(out, 4, "socket-group", &quote(group));
    }
    field(out, 4, "backlog", &l.backlog.to_string());
    field(out, 4, "max-params", &SizeDisplay(l.max_params as u64).to_string());
    field(out, 4, "header-timeout", &DurationDisplay(l.header_timeout).to_string());
    field(out, 4, "body-timeout", &DurationDisplay(l.body_timeout).to_string());
    field(out, 4, "body-min-rate", &l.body_min_rate.to_string());
    field(out, 4, "send-timeout", &DurationDisplay(l.send_timeout).to_string());
    if l.protocol == Protocol::FastCgi {
        field(out, 4, "keepalive-timeout", &DurationDisplay(l.keepalive_timeout).to_string());
    }
    field(out, 4, "max-connections", &l.max_connections.to_string());
    if let Some(p) = &l.status_path {
        field(out, 4, "status-path", &quote(p));
    }
    if let Some(p) = &l.ping_path {
        field(out, 4, "ping-path", &quote(p));
    }
    field(out, 4, "dialect", l.dialect.name());
    field(out, 4, "max-redirects", &l.max_redirects.to_string());
    field(out, 4, "unrouted-redirect", &quote(l.unrouted_redirect.name()));
    field(out, 4, "redirect-pools", l.redirect_pools.name());
    if let Some(t) = &l.trusted_proxies {
        field(out, 4, "trusted-proxies", &list(t.proxies.iter().map(|c| c.to_string())));
        field(out, 4, "trusted-proxy-headers", &list(t.headers.iter().map(|h| h.name())));
    }
    if let Some(c) = &l.allowed_clients {
        field(out, 4, "allowed-clients", &list(c.iter().map(|c| c.to_string())));
    }
    field(out, 4, "file-handoff", l.file_handoff.name());
    if !l.file_roots.is_empty() {
        field(out, 4, "file-roots", &list(l.file_roots.iter().map(|r| r.display().to_string())));
    }
    if !l.file_map.is_empty() {
        let pairs: Vec<String> = l.file_map.iter().map(|(fs, uri)| format!("{}: {}", quote(fs), quote(uri))).collect();
        field(out, 4, "file-map", &format!("{{{}}}", pairs.join(", ")));
    }
    field(out, 4, "max-ranges", &l.max_ranges.to_string());
    if l.file_handoff != crate::config::FileHandoff::Pass {
        field(out, 4, "file-hand-back", if l.file_hand_back { "true" } else { "false" });
    }
    if let Some(m) = &l.mount {
        field(out, 4, "mount", &quote(if m.is_empty() { "/" } else { m }));
    }
    if l.keep_path_info {
        field(out, 4, "path-info", "keep");
    }
    if l.direct {
        // The keys above that need the bridge on the request path are refused with it.
        field(out, 4, "direct", "true");
    }
    match l.routes.as_slice() {
        [only] if only.host.is_none() && only.prefix.is_none() => field(out, 4, "pool", &quote(&only.pool)),
        routes => {
            out.push_str("    routes:\n");
            for route in routes {
                let mut parts = Vec::new();
                if let Some(host) = &route.host {
                    parts.push(format!("host: {}", quote(host)));
                }
                if let Some(prefix) = &route.prefix {
                    parts.push(format!("prefix: {}", quote(prefix)));
                }
                parts.push(format!("pool: {}", quote(&route.pool)));
                let _ = writeln!(out, "      - {{{}}}", parts.join(", "));
            }
        }
    }
}

fn field(out: &mut String, indent: usize, key: &str, value: &str) {
    let _ = writeln!(out, "{:indent$}{key}: {value}", "");
}

/// A YAML scalar: plain when that cannot be misread, double-quoted otherwise.
fn quote(s: &str) -> String {
    let plain_char = |c: char| c.is_ascii_alphanumeric() || "_-./@+=:".contains(c);
    let looks_typed = matches!(
        s.to_ascii_lowercase().as_str(),
        "true" | "false" | "yes" | "no" | "on" | "off" | "y" | "n" | "null" | "~"
    ) || s.parse::<f64>().is_ok()
        || s.starts_with(|c: char| c.is_ascii_digit() || "-.:@".contains(c));
    let colon_safe = !s.contains(": ") && !s.ends_with(':');
    if !s.is_empty() && s.chars().all(plain_char) && !looks_typed && colon_safe {
        return s.to_owned();
    }
    let mut q = String::with_capacity(s.len() + 2);
    q.push('"');
    for c in s.chars() {
        match c {
            '"' => q.push_str("\\\""),
            '\\' => q.push_str("\\\\"),
            '\n' => q.push_str("\\n"),
            '\t' => q.push_str("\\t"),
            c if c.is_control() => {
                let _ = write!(q, "\\u{:04x}", c as u32);
            }
            c => q.push(c),
        }
    }
    q.push('"');
    q
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::config::{Cidr, ProxyHeader, TrustedProxies};
    use crate::config::{ErrorPages, PageSource};
    use crate::config::{Global, Route};
    use std::collections::BTreeMap;
    use std::path::PathBuf;
    use std::time::Duration;

    #[test]
    fn quoting() {
        assert_eq!(quote("demo"), "demo");
        assert_eq!(quote("/srv/app.py"), "/srv/app.py");
        assert_eq!(quote("mysite.wsgi:application"), "mysite.wsgi:application");
        assert_eq!(quote("127.0.0.1:9000"), "\"127.0.0.1:9000\"");
        assert_eq!(quote("yes"), "\"yes\"");
        assert_eq!(quote("12"), "\"12\"");
        assert_eq!(quote(""), "\"\"");
        assert_eq!(quote("a b"), "\"a b\"");
        assert_eq!(quote("say \"hi\"\n"), "\"say \\\"hi\\\"\\n\"");
    }

    #[test]
    fn a_python_a_shebang_chose_says_so() {
        let render = |pool: &Pool| {
            let mut out = String::new();
            render_pool(&mut out, pool);
            out.lines().skip_while(|l| !l.contains("python")).take(2).map(str::to_owned).collect::<Vec<_>>()
        };
        let python_at = config::KeyAt {
            at: "/srv/app/app.fcgi:1".into(),
            key: "pools.p.python".into(),
            written: false,
            chosen_by: Some("the app file's shebang, as python: is not set".into()),
        };
        let pool = Pool { python: "/srv/venv/bin/python".into(), python_at, ..Pool::for_tests() };
        assert_eq!(
            render(&pool),
            [
                "    # python: from /srv/app/app.fcgi:1 (the app file's shebang, as python: is not set)",
                "    python: /srv/venv/bin/python"
            ]
        );
        // The default, as found: no comment, so that the output loads back unchanged
        // (integration/test_cli.py).
        assert_eq!(render(&Pool::for_tests())[0], "    python: python3");
        let command = Pool { app: App::Command(vec!["/srv/app/app.fcgi".into()]), ..Pool::for_tests() };
        assert_eq!(render(&command)[0], "    # python: not used: a command: pool starts its program as written");
    }

    #[test]
    fn pipeline_is_shown_as_it_works() {
        let shown = |pool: &Pool| {
            let mut out = String::new();
            render_pool(&mut out, pool);
            out.lines().find(|l| l.contains("pipeline")).map(str::to_owned)
        };
        let plain = Pool::for_tests();
        assert_eq!(shown(&plain).as_deref(), Some("    pipeline: true"));
        assert_eq!(shown(&Pool { pipeline: false, ..Pool::for_tests() }).as_deref(), Some("    pipeline: false"));
        // docs/configuration.md: a preloaded pool is never piped to, whatever `pipeline` says.
        let mut preloaded = Pool::for_tests();
        preloaded.isolation.preload = true;
        assert_eq!(
            shown(&preloaded).as_deref(),
            Some("    # pipeline: true has no effect: a preloaded pool is never piped to")
        );
        preloaded.pipeline = false;
        assert_eq!(shown(&preloaded).as_deref(), Some("    pipeline: false"));
        // auto may well run a WSGI app: not called ASGI, but not piped to either.
        let mut auto = Pool::for_tests();
        auto.interface.kind = crate::config::interface::Interface::Auto;
        assert_eq!(
            shown(&auto).as_deref(),
            Some(
                "    # pipeline: true has no effect: an interface: auto pool (WSGI or ASGI is known only once its \
                 worker starts) is never piped to"
            )
        );
        auto.interface.kind = crate::config::interface::Interface::Asgi;
        assert_eq!(shown(&auto).as_deref(), Some("    # pipeline: true has no effect: an ASGI pool is never piped to"));
    }

    #[test]
    fn a_direct_pool_is_not_said_to_get_the_bridges_error_pages() {
        let shown = |pool: &Pool| {
            let mut out = String::new();
            render_pool(&mut out, pool);
            out.lines().find(|l| l.contains("error-pages")).map(str::to_owned)
        };
        assert_eq!(
            shown(&Pool::for_tests()).as_deref(),
            Some("    # error-pages: not set: the bridge's own short pages")
        );
        let direct = Pool {
            direct: Some(crate::config::DirectServe {
                listener: "front".into(),
                mount: None,
                keep_path_info: false,
                header_timeout: Duration::from_secs(60),
                max_redirects: 10,
            }),
            ..Pool::for_tests()
        };
        assert_eq!(
            shown(&direct).as_deref(),
            Some("    # error-pages: none: served by the direct listener front, whose web server answers errors")
        );
    }

    /// What `check` prints must load back to the same configuration.
    #[test]
    fn the_output_loads_back_unchanged() {
        let dir = crate::scratch::scratch_dir("check-round-trip");
        let app = dir.join("app.py");
        std::fs::write(&app, "").unwrap();
        std::fs::create_dir_all(dir.join("files")).unwrap();
        let page = dir.join("404.html");
        std::fs::write(&page, "<h1>gone</h1>").unwrap();
        let mut error_pages = ErrorPages::default();
        error_pages.insert("404", PageSource::File(&page)).unwrap();
        error_pages.insert("503", PageSource::Redirect("/errors/503?x=1")).unwrap();
        let config = Config {
            global: Global {
                runtime_dir: Some(dir.join("run")),
                log_level: "fcgibridge=debug,info".into(),
                log_format: LogFormat::Json,
                access_log: Some(PathBuf::from("-")),
                log_file: None,
                shutdown_timeout: Duration::from_millis(90_500),
                drain_period: Duration::from_millis(2_500),
                access_log_format: None,
                status: None,
                control_socket: None,
                header_memory: 3 << 20,
                log_rate_limit: false,
            },
            listeners: vec![
                Listener {
                    address: ListenAddress::Tcp("[::1]:9000".parse().unwrap()),
                    routes: vec![Route { host: None, prefix: None, pool: "a".into() }],
                    allowed_clients: Some(vec![Cidr::parse("127.0.0.1").unwrap(), Cidr::parse("fd00::/8").unwrap()]),
                    ..Listener::for_tests("web", 0)
                },
                Listener {
                    name: "api".into(),
                    protocol: Protocol::Scgi,
                    address: ListenAddress::Unix(dir.join("api.sock")),
                    socket_mode: Some(0o660),
                    socket_owner: Some("www-data".into()),
                    socket_group: Some("1000".into()),
                    backlog: 16,
                    routes: vec![
                        Route { host: Some("api.example.com".into()), prefix: Some("/v1".into()), pool: "b".into() },
                        Route { host: None, prefix: None, pool: "a".into() },
                    ],
                    max_params: 100_000,
                    status_path: None,
                    ping_path: None,
                    dialect: crate::config::Dialect::Nginx,
                    max_redirects: 3,
                    unrouted_redirect: crate::config::UnroutedRedirect::Pass,
                    redirect_pools: crate::config::RedirectPools::Any,
                    trusted_proxies: Some(TrustedProxies {
                        proxies: vec![Cidr::parse("10.0.0.0/8").unwrap(), Cidr::parse("::1").unwrap()],
                        headers: vec![ProxyHeader::XForwardedFor, ProxyHeader::XRealIp],
                    }),
                    allowed_clients: None,
                    file_handoff: crate::config::FileHandoff::Translate,
                    file_roots: vec![dir.join("files")],
                    file_map: vec![("/srv/files".into(), "/protected".into())],
                    max_ranges: 0,
                    file_hand_back: true,
                    mount: Some("/api".into()),
                    keep_path_info: true,
                    header_timeout: Duration::from_millis(1500),
                    body_timeout: Duration::from_secs(300),
                    body_min_rate: 0,
                    send_timeout: Duration::from_secs(60),
                    keepalive_timeout: Duration::from_secs(300),
                    max_connections: 7,
                    direct: false,
                },
            ],
            pools: vec![
                Pool {
                    name: "a".into(),
                    python: PathBuf::from("/bin/sh"),
                    python_at: Default::default(),
                    app: App::File { path: app.clone(), callable: "app".into() },
                    app_at: Default::default(),
                    chdir: dir.to_path_buf(),
                    chdir_at: Default::default(),
                    env: BTreeMap::from([("A".into(), "1".into()), ("QUOTED".into(), "x: \"y\"".into())]),
                    processes: 1,
                    threads: 1,
                    interface: Default::default(),
                    queue_size: 0,
                    queue_timeout: Duration::from_millis(250),
                    startup_timeout: Duration::from_secs(3600),
                    ready_check: None,
                    slowlog_timeout: None,
                    max_body: None,
                    unknown_length_body: crate::config::UnknownLengthBody::Stream,
                    pipeline: true,
                    error_pages: Default::default(),
                    isolation: Default::default(),
                    direct: None,
                    supervision: Default::default(),
                    // Not written: the listeners that lead to it, as loading finds them.
                    listened_at: vec![
                        "fastcgi: [::1]:9000".into(),
                        format!("scgi: unix:{}", dir.join("api.sock").display()),
                    ],
                    touch_reload: vec![dir.join("reload.txt"), dir.join("deploy: stamp")],
                },
                Pool {
                    name: "b".into(),
                    python: PathBuf::from("/bin/sh"),
                    python_at: Default::default(),
                    app: App::Module { module: "mysite.wsgi".into(), callable: "application".into() },
                    app_at: Default::default(),
                    chdir: PathBuf::from("/"),
                    chdir_at: Default::default(),
                    env: BTreeMap::new(),
                    processes: 2,
                    // Not printed for an ASGI pool: it loads back as the default.
                    threads: 4,
                    interface: crate::config::interface::InterfaceConfig {
                        kind: crate::config::interface::Interface::Asgi,
                        concurrency: 250,
                        asgi_loop: crate::config::interface::AsgiLoop::Uvloop,
                    },
                    queue_size: 1024,
                    queue_timeout: Duration::from_secs(30),
                    startup_timeout: Duration::from_secs(60),
                    ready_check: Some(crate::config::ReadyCheck {
                        https: true,
                        host: Some("shop.example:8443".into()),
                        uri: "/healthz?deep=1".into(),
                    }),
                    slowlog_timeout: None,
                    max_body: Some(5 << 20),
                    unknown_length_body: crate::config::UnknownLengthBody::Buffer,
                    pipeline: true,
                    error_pages,
                    isolation: Default::default(),
                    direct: None,
                    supervision: Default::default(),
                    listened_at: vec![format!("scgi: unix:{}", dir.join("api.sock").display())],
                    touch_reload: Vec::new(),
                },
            ],
            templates: Vec::new(),
            warnings: Vec::new(),
        };
        let text = render(&config, "conf.d", None);
        let conf_d = dir.join("conf.d");
        std::fs::create_dir_all(&conf_d).unwrap();
        std::fs::write(conf_d.join("00-effective.yaml"), &text).unwrap();
        match config::load(&conf_d) {
            Ok(loaded) => assert_eq!(loaded, config, "\n{text}"),
            Err(e) => panic!("{e}\n{text}"),
        }
    }
}
