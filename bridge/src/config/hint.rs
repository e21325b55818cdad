//! "Did you mean …?" for misspelled keys and values.

/// The expected name closest to `given`, if one is close enough to be a plausible typo.
pub(super) fn did_you_mean<'a>(given: &str, expected: &[&'a str]) -> Option<&'a str> {
    let given_lower = given.to_ascii_lowercase();
    expected
        .iter()
        .map(|candidate| (*candidate, strsim::jaro_winkler(&given_lower, candidate)))
        // 0.8 catches transpositions, doubled and dropped letters, and snake_case for
        // kebab-case, while leaving unrelated words without a misleading suggestion.
        .filter(|(_, score)| *score >= 0.8)
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .map(|(candidate, _)| candidate)
}

/// What follows "unknown key" for `given` where `expected` are the keys accepted: the
/// bridge's name for another server's option (an operator pasting from uWSGI or PHP-FPM),
/// else [`suggestion`].
pub(super) fn unknown_key(given: &str, expected: &[&str]) -> String {
    let name = given.to_ascii_lowercase().replace('_', "-");
    // `max_requests` in a pool is a spelling of a key of this very mapping.
    if !expected.contains(&name.as_str()) {
        if let Some(says) = peer_hint(&name, expected) {
            return format!("; {says}");
        }
        if let Some(var) = given.strip_prefix("env[").and_then(|v| v.strip_suffix(']')) {
            return format!("; PHP-FPM's env[{var}] is written in the pool's env: {{{var}: value}}");
        }
        if let Some(php) =
            ["php-value[", "php-admin-value[", "php-flag[", "php-admin-flag["].iter().find(|p| name.starts_with(*p))
        {
            let setting = &given[php.len()..].trim_end_matches(']');
            return format!(
                "; PHP-FPM's {}{setting}] sets a php.ini value, which a Python app has none of: set what it \
                 configures in the app, or pass it in the pool's env",
                php.replace('-', "_")
            );
        }
        if let Some(says) = another_sections_key(&name) {
            return format!("; {says}");
        }
    }
    suggestion(given, expected)
}

/// A listener's or the `bridge:` section's key, written in another mapping (a pool, a
/// template, a route): where it goes. Not those with an answer of their own (MISPLACED,
/// PEERS: `mount`), nor `pool` (at the top level, `pools` misspelt) and `status` (in a
/// listener, `status-path` misspelt).
fn another_sections_key(name: &str) -> Option<String> {
    if listener_keys().any(|k| k == name) {
        Some(format!("{name} is a listener key: put it under listeners.NAME"))
    } else if bridge_keys().any(|k| k == name) {
        Some(format!("{name} is a bridge key: put it under bridge"))
    } else {
        None
    }
}

/// A listener's keys (file.rs, `RawListener`) that [`another_sections_key`] names: all of
/// them but `pool` (at the top level, `pools` misspelt) and those with an answer of their own.
fn listener_keys() -> impl Iterator<Item = &'static str> {
    keys_of::<super::file::RawListener>().filter(|k| !["pool", "mount"].contains(k))
}

/// The `bridge:` keys (file.rs, `RawBridge`) that [`another_sections_key`] names: all of
/// them but `status` (in a listener, `status-path` misspelt) and those [`MISPLACED`] answers.
fn bridge_keys() -> impl Iterator<Item = &'static str> {
    let misplaced = |k: &str| MISPLACED.iter().any(|(names, _)| names.contains(&k));
    keys_of::<super::file::RawBridge>().filter(move |k| *k != "status" && !misplaced(k))
}

/// The keys a mapping's struct accepts, as serde's derive lists them (its names as written,
/// kebab-case): a key added to the struct is known here with nothing else to update.
fn keys_of<'de, T: serde::Deserialize<'de>>() -> impl Iterator<Item = &'static str> {
    let mut keys: &'static [&'static str] = &[];
    let _ = T::deserialize(KeyProbe(&mut keys));
    keys.iter().copied()
}

/// A deserializer that only asks a struct for its field names, and fails.
struct KeyProbe<'a>(&'a mut &'static [&'static str]);

impl<'de> serde::Deserializer<'de> for KeyProbe<'_> {
    type Error = serde::de::value::Error;

    fn deserialize_struct<V: serde::de::Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        _visitor: V,
    ) -> Result<V::Value, Self::Error> {
        *self.0 = fields;
        Err(serde::de::Error::custom("only its keys were asked for"))
    }

    fn deserialize_any<V: serde::de::Visitor<'de>>(self, _visitor: V) -> Result<V::Value, Self::Error> {
        Err(serde::de::Error::custom("not a struct"))
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf option unit
        unit_struct newtype_struct seq tuple tuple_struct map enum identifier ignored_any
    }
}

/// What to write instead of `name`, another server's option or a key of another mapping.
/// Another server's options are pasted into a pool; elsewhere such a name is more likely
/// a misspelling of the mapping's own key (`route` for a listener's `routes`; `cache` in a
/// template means `missing-cache`, not uWSGI's cache2), so there the hint applies only when
/// it names a key of this mapping (`buffer-size` in a listener: `max-params`) and no key
/// of it is spelt like `name`.
fn peer_hint(name: &str, expected: &[&str]) -> Option<&'static str> {
    let find = |table: &[Peer]| table.iter().find(|(names, _)| names.contains(&name)).map(|(_, says)| *says);
    if let Some(says) = find(MISPLACED) {
        return Some(says);
    }
    if is_listener(expected) && ADDRESS_WORDS.contains(&name) {
        return Some(LISTENER_ADDRESS);
    }
    let says = find(PEERS)?;
    let names_own_key = || expected.iter().any(|key| says.contains(&format!("key {key}")));
    (is_pool(expected) || (names_own_key() && did_you_mean(name, expected).is_none())).then_some(says)
}

/// Whether `expected`, the keys of the mapping being read, are a listener's.
fn is_listener(expected: &[&str]) -> bool {
    expected.contains(&"fastcgi") && expected.contains(&"pool")
}

/// What operators call an address (uWSGI's `socket`, PHP-FPM's `listen`, a proxy's `bind`):
/// in a listener they mean its address, whatever key of the listener is spelt alike.
const ADDRESS_WORDS: &[&str] =
    &["socket", "uwsgi-socket", "fastcgi-socket", "listen", "bind", "address", "addr", "host", "port"];
const LISTENER_ADDRESS: &str = "a listener's address is its fastcgi (or scgi) key: `fastcgi: 127.0.0.1:9000`, \
                                `fastcgi: /run/NAME.sock`";

/// Whether `expected`, the keys of the mapping being read, are a pool's.
fn is_pool(expected: &[&str]) -> bool {
    expected.contains(&"app") && expected.contains(&"processes")
}

/// An option of another server: its spellings, in lower case with `-` for `_` (as they are
/// compared), and the rest of the error, after "unknown key; ".
type Peer = (&'static [&'static str], &'static str);

/// The bridge's own keys written in the wrong mapping: named wherever they appear.
const MISPLACED: &[Peer] = &[
    (&["chdir"], "chdir is a pool key: `pools: NAME: chdir: /dir`"),
    (&["processes", "workers"], "processes (uWSGI's workers) is a pool key: `pools: NAME: processes: N`"),
    (&["threads"], "threads is a pool key: `pools: NAME: threads: N`"),
    (&["max-requests"], "max-requests is a pool key: `pools: NAME: max-requests: N`"),
    (&["request-timeout"], "request-timeout is a pool key: `pools: NAME: request-timeout: 30s`"),
    (&["queue-timeout"], "queue-timeout is a pool key: `pools: NAME: queue-timeout: 5s`"),
    (&["queue-size"], "queue-size is a pool key: `pools: NAME: queue-size: N`"),
    (&["max-body"], "max-body is a pool key: `pools: NAME: max-body: 10MiB`"),
    (
        &["shutdown-timeout"],
        "shutdown-timeout is a bridge key, how long SIGTERM waits for the requests in flight; a retiring worker's wait \
         is the pool key graceful-timeout",
    ),
    (
        &["log-format"],
        "log-format is a bridge key, text or json; uWSGI's log-format is the bridge key access-log-format",
    ),
];

/// uWSGI, PHP-FPM and mod_wsgi daemon options as operators paste them into a pool, and the
/// bridge's keys (docs/migration.md has the same map, with the web server's side).
const PEERS: &[Peer] = &[
    // Where the web server connects.
    (
        &["socket", "uwsgi-socket"],
        "uWSGI's socket is a listener here: `listeners: NAME: {fastcgi: ADDRESS, pool: POOL}` (FastCGI or SCGI, not \
         the uwsgi protocol: nginx's uwsgi_pass becomes fastcgi_pass)",
    ),
    (
        &["fastcgi-socket"],
        "uWSGI's fastcgi-socket is a listener here: `listeners: NAME: {fastcgi: ADDRESS, pool: POOL}`",
    ),
    (
        &["http-socket", "http"],
        "uWSGI's http-socket has no equivalent: the bridge speaks FastCGI and SCGI; a web server in front connects to \
         a listener (`listeners: NAME: {fastcgi: ADDRESS, pool: POOL}`)",
    ),
    (
        &["listen"],
        "listen is, in uWSGI, the listener key backlog; in PHP-FPM, a listener's address: `listeners: NAME: {fastcgi: \
         ADDRESS, pool: POOL}`",
    ),
    (
        &["listen.backlog", "listen-backlog"],
        "PHP-FPM's listen.backlog (mod_wsgi's listen-backlog) is the listener key backlog",
    ),
    (
        &["listen.owner", "chown-socket"],
        "PHP-FPM's listen.owner (uWSGI's chown-socket) is the listener key socket-owner (and socket-group)",
    ),
    (&["listen.group"], "PHP-FPM's listen.group is the listener key socket-group"),
    (
        &["listen.mode", "chmod-socket"],
        "PHP-FPM's listen.mode (uWSGI's chmod-socket) is the listener key socket-mode, quoted: \"0660\"",
    ),
    (
        &["listen.allowed-clients"],
        "PHP-FPM's listen.allowed_clients is the listener key allowed-clients, a list: [127.0.0.1]",
    ),
    (&["buffer-size"], "uWSGI's buffer-size is the listener key max-params (1MiB unless set)"),
    (
        &["listen.acl-users", "listen.acl-groups"],
        "PHP-FPM's listen.acl_users and listen.acl_groups have no equivalent (no ACLs on the socket): give a unix \
         listener's socket to the web server's group with the listener keys socket-group and socket-mode: \"0660\"",
    ),
    (
        &["forwarded-allow-ips"],
        "gunicorn's forwarded_allow_ips is the listener key trusted-proxies, a list of the proxies' addresses; the \
         listener key trusted-proxy-headers says which of their headers are believed",
    ),
    (&["pm.status-path"], "PHP-FPM's pm.status_path is the listener key status-path"),
    (&["ping.path"], "PHP-FPM's ping.path is the listener key ping-path"),
    // The app and its Python.
    (&["module", "wsgi"], "uWSGI's module is the pool key app: `app: package.module:callable`"),
    (
        &["wsgi-file"],
        "uWSGI's wsgi-file is the pool key app: `app: /path/to/app.py` (`:callable` after it when that is not \
         application)",
    ),
    (&["callable"], "uWSGI's callable goes into the pool key app, after a colon: `app: package.module:callable`"),
    (
        &["virtualenv", "venv", "pyhome", "python-home"],
        "uWSGI's virtualenv (mod_wsgi's python-home) is the pool key python: `python: /path/to/venv`",
    ),
    (
        &["home"],
        "home is uWSGI's virtualenv, here the pool key python (`python: /path/to/venv`); mod_wsgi's home= (the working \
         directory) is the pool key chdir",
    ),
    (
        &["pythonpath", "python-path"],
        "uWSGI's pythonpath (mod_wsgi's python-path) goes into the pool key env: `env: {PYTHONPATH: /dir}`",
    ),
    (
        &["lang", "locale"],
        "mod_wsgi's lang= and locale= go into the pool key env: `env: {LANG: C.UTF-8, LC_ALL: C.UTF-8}`",
    ),
    (&["uid"], "uWSGI's uid is the pool key user"),
    (&["gid"], "uWSGI's gid is the pool key group"),
    (
        &["mount"],
        "uWSGI's mount is the listener key mount (or a route's prefix), which sets SCRIPT_NAME; the app goes in the \
         pool key app",
    ),
    (
        &["manage-script-name"],
        "uWSGI's manage-script-name has no equivalent and needs none: the listener key mount (or a route's prefix) \
         sets SCRIPT_NAME and PATH_INFO; drop it",
    ),
    (
        &["single-interpreter"],
        "uWSGI's single-interpreter has no equivalent: every worker runs the app in its process's main interpreter \
         anyway; drop it",
    ),
    (
        &["need-app"],
        "uWSGI's need-app has no equivalent: a worker whose app fails to import never takes a request (the log names \
         the error, and it is retried with a growing delay); drop it",
    ),
    (
        &["py-autoreload", "python-autoreload", "py-auto-reload", "python-auto-reload"],
        "uWSGI's py-autoreload has no equivalent: nothing watches the app's modules; load new code with \
         `fcgibridge reload --restart-workers POOL` (a deploy script adds --wait), or name a file the deploy \
         touches in the pool key touch-reload",
    ),
    (
        &["touch-chain-reload", "touch-workers-reload"],
        "uWSGI's touch-chain-reload is the pool key touch-reload: a path, or a list; when one changes, the \
         workers restart one at a time, each once its replacement is ready",
    ),
    (
        &["plugins", "plugin", "need-plugin", "need-plugins"],
        "uWSGI's plugins has no equivalent: the bridge serves Python itself, and the pool key python picks the \
         interpreter (`python: /usr/bin/python3.11` or a virtualenv); drop it",
    ),
    (
        &["daemonize", "daemonize2", "pidfile", "pidfile2", "safe-pidfile", "safe-pidfile2"],
        "uWSGI's daemonize and pidfile have no equivalent: run the bridge in the foreground under systemd \
         (dist/systemd/fcgibridge.service); `fcgibridge stop`, `reload` and `status` reach it over its control \
         socket (bridge key runtime-dir)",
    ),
    (&["preload-app"], "gunicorn's preload_app is the pool key preload: `preload: true`"),
    (
        &["worker-class"],
        "gunicorn's worker_class: sync is the pool key `threads: 1`, gthread the pool key threads (how many), \
         uvicorn's UvicornWorker the pool key `interface: asgi` (with concurrency); gevent and eventlet have no \
         equivalent",
    ),
    (
        &["security.limit-extensions"],
        "PHP-FPM's security.limit_extensions has no equivalent and needs none: a pool runs the app its pool key app \
         names, whatever file a request's SCRIPT_FILENAME names (a command: pool running php-cgi runs that file: \
         let the web server pass only .php requests to it); drop it",
    ),
    (
        &["process.dumpable"],
        "PHP-FPM's process.dumpable is not needed: a worker takes the pool's user before it starts Python (exec), \
         which leaves it dumpable (ptrace, core files) as any process of that user; the pool key rlimit-core sets \
         the size of its core files; drop it",
    ),
    (
        &["lazy-apps", "lazy"],
        "uWSGI's lazy-apps = true is how the bridge runs anyway; for lazy-apps = false (uWSGI's default), write the \
         pool key `preload: true`",
    ),
    // How many workers.
    (
        &["enable-threads"],
        "uWSGI's enable-threads is not needed: a worker is an ordinary Python process, so threads the app starts \
         run; the pool key threads sets how many requests each worker serves at once; drop it",
    ),
    (&["master"], "uWSGI's master has no equivalent: the bridge always supervises its workers"),
    (
        &["thunder-lock"],
        "uWSGI's thunder-lock has no equivalent: the bridge accepts the web server's connections and hands each \
         request to a free worker itself; drop it",
    ),
    (
        &["procname", "auto-procname", "procname-prefix", "procname-prefix-spaced", "procname-append", "display-name"],
        "uWSGI's procname and auto-procname (mod_wsgi's display-name) are not needed: a worker's command line names \
         its pool (`python -u -c # fcgibridge pool NAME …` in ps and top -c), and `fcgibridge status` lists each \
         pool's workers with their pids",
    ),
    (
        &["spooler", "spooler-processes", "mule", "mules", "cron", "unique-cron", "attach-daemon", "attach-daemon2",
          "smart-attach-daemon"],
        "uWSGI's spooler, mules, cron and attach-daemon have no equivalent, nor has its Python module `uwsgi` \
         (uwsgidecorators' @spool, @cron, @timer): run periodic jobs from systemd timers or cron, background work in \
         a task queue (Celery, RQ) and other daemons as systemd services",
    ),
    (
        &["cache2", "cache"],
        "uWSGI's cache2 has no equivalent (nor has the `uwsgi` module's cache_get/cache_set): use the framework's \
         cache with a cache server such as memcached or Redis",
    ),
    (&["cheaper"], "uWSGI's cheaper is the pool key `mode: dynamic` with min-processes"),
    (
        &["idle"],
        "uWSGI's idle (cheap mode after that many seconds without a request) is the pool key `mode: ondemand` with \
         idle-timeout: a process idle that long stops, and the next request starts one",
    ),
    (
        &["die-on-idle"],
        "uWSGI's die-on-idle has no equivalent: the bridge stays up and keeps its listeners; the pool key \
         `mode: ondemand` (with idle-timeout) stops an idle pool's processes, and the next request starts one",
    ),
    (
        &["cheaper-initial", "cheaper-step", "cheaper-algo", "cheaper-overload", "cheaper-rss-limit-soft",
          "cheaper-rss-limit-hard", "cheaper-busyness-min", "cheaper-busyness-max"],
        "uWSGI's cheaper-* tuning has no equivalent: a pool with `mode: dynamic` starts min-processes (or \
         spare-processes), adds a process while fewer than spare-processes' worth of threads are free, up to \
         max-processes, and stops idle ones after idle-timeout",
    ),
    (&["pm"], "PHP-FPM's pm is the pool key mode: static, dynamic or ondemand"),
    (
        &["pm.max-children", "max-children"],
        "PHP-FPM's pm.max_children is the pool key processes (mode: static) or max-processes (mode: dynamic or \
         ondemand); each process serves `threads` requests at once",
    ),
    (
        &["pm.start-servers", "start-servers"],
        "PHP-FPM's pm.start_servers has no equivalent: a dynamic pool starts the larger of min-processes and \
         spare-processes",
    ),
    (
        &["pm.min-spare-servers", "pm.max-spare-servers", "min-spare-servers", "max-spare-servers"],
        "PHP-FPM's pm.min_spare_servers and pm.max_spare_servers come closest to the pool key spare-processes (free \
         threads' worth of processes); idle processes beyond them stop after idle-timeout",
    ),
    (
        &["pm.process-idle-timeout", "process-idle-timeout"],
        "PHP-FPM's pm.process_idle_timeout is the pool key idle-timeout",
    ),
    (
        &["inactivity-timeout"],
        "mod_wsgi's inactivity-timeout comes closest to the pool key idle-timeout (mode: dynamic or ondemand: an idle \
         process stops); a static pool has no equivalent",
    ),
    // Recycling and time limits.
    (
        &["pm.max-requests", "maximum-requests"],
        "PHP-FPM's pm.max_requests (mod_wsgi's maximum-requests) is the pool key max-requests",
    ),
    (&["max-requests-delta"], "uWSGI's max-requests-delta is the pool key max-requests-jitter"),
    (&["max-worker-lifetime"], "uWSGI's max-worker-lifetime is the pool key restart-interval, a duration such as 1h"),
    (
        &["max-worker-lifetime-delta"],
        "uWSGI's max-worker-lifetime-delta is the pool key restart-interval-jitter, a duration such as 5m",
    ),
    (
        &["reload-mercy"],
        "uWSGI's reload-mercy comes closest to the pool key graceful-timeout (how long a retiring worker's requests \
         may run on); a stop's wait is the bridge key shutdown-timeout",
    ),
    (&["min-worker-lifetime"], "uWSGI's min-worker-lifetime is the pool key min-lifetime"),
    (
        &["reload-on-rss", "evil-reload-on-rss"],
        "uWSGI's reload-on-rss (and evil-reload-on-rss) is the pool key memory-limit, with a unit: reload-on-rss = \
         150 is `memory-limit: 150MiB` (the bridge samples each worker's RSS every second and recycles it \
         gracefully)",
    ),
    (
        &["reload-on-as"],
        "uWSGI's reload-on-as has no equivalent: the pool key memory-limit recycles a worker on its RSS (as \
         reload-on-rss), and the pool key rlimit-as caps its address space hard (an allocation past it fails)",
    ),
    (
        &["limit-as", "virtual-memory-limit"],
        "uWSGI's limit-as (mod_wsgi's virtual-memory-limit) is the pool key rlimit-as, with a unit: limit-as = 512 is \
         `rlimit-as: 512MiB`",
    ),
    (
        &["harakiri", "request-terminate-timeout"],
        "uWSGI's harakiri (PHP-FPM's request_terminate_timeout) is the pool key request-timeout, a duration such as \
         30s",
    ),
    (
        &["harakiri-verbose"],
        "uWSGI's harakiri-verbose has no equivalent: request-timeout always logs the stuck worker's Python stacks",
    ),
    (
        &["worker-reload-mercy", "process-control-timeout"],
        "uWSGI's worker-reload-mercy (PHP-FPM's process_control_timeout) is the pool key graceful-timeout",
    ),
    (&["request-slowlog-timeout"], "PHP-FPM's request_slowlog_timeout is the pool key slowlog-timeout"),
    (
        &["slowlog"],
        "PHP-FPM's slowlog has no equivalent: the stacks of slow requests (pool key slowlog-timeout) go to the \
         bridge's log",
    ),
    (&["limit-post"], "uWSGI's limit-post is the pool key max-body"),
    (
        &["chunked-input-limit"],
        "uWSGI's chunked-input-limit is the pool key max-body, which caps chunked bodies too (the pool key \
         unknown-length-body says how they reach the app)",
    ),
    (&["chunked-input-timeout"], "uWSGI's chunked-input-timeout is the listener key body-timeout"),
    (
        &["post-buffering"],
        "uWSGI's post-buffering has no equivalent: a request body streams to the app as it arrives (nginx buffers it \
         first unless fastcgi_request_buffering is off); the pool key max-body caps it",
    ),
    (
        &["socket-timeout"],
        "uWSGI's socket-timeout comes closest to the listener key header-timeout (with body-timeout and \
         send-timeout)",
    ),
    (
        &["vacuum"],
        "uWSGI's vacuum has no equivalent: the bridge removes its unix sockets when it stops (and replaces a stale one \
         at start); drop it",
    ),
    (
        &["die-on-term"],
        "uWSGI's die-on-term has no equivalent: SIGTERM always stops the bridge gracefully (uWSGI 2.0 reloads on it); \
         drop it",
    ),
    (
        &["strict"],
        "uWSGI's strict has no equivalent: the bridge is always strict, an unknown key is an error (as this one); drop \
         it",
    ),
    (
        &["static-map", "static-map2", "check-static", "static-index", "static-expires-uri"],
        "uWSGI's static-map, static-map2 and check-static have no equivalent: serve them from the web server (nginx: \
         `location /static/ { alias /srv/app/static/; }`; Apache: `Alias` with a `ProxyPass \"/static\" \"!\"` line \
         before the app's ProxyPass)",
    ),
    (
        &["offload-threads"],
        "uWSGI's offload-threads has no equivalent: a file the app hands off (X-Sendfile, X-Accel-Redirect) is sent \
         by the web server or by the bridge, as the listener key file-handoff says, never by a worker thread",
    ),
    (
        &["route", "route-if", "route-if-not", "route-uri", "route-host", "route-run", "final-route", "error-route",
          "response-route"],
        "uWSGI's route has no equivalent: rewrites, redirects and access rules belong in the web server; the listener \
         key routes picks a pool by host and path prefix",
    ),
    (
        &["threads-stacksize", "thread-stacksize", "stack-size"],
        "uWSGI's threads-stacksize (mod_wsgi's stack-size) has no equivalent: the worker's request threads have a \
         stack of fixed size (not the pool key threads, which is how many there are); drop it",
    ),
    (&["max-fd", "rlimit-files"], "uWSGI's max-fd (PHP-FPM's rlimit_files) is the pool key rlimit-nofile"),
    (&["process.priority", "cpu-priority"], "PHP-FPM's process.priority (mod_wsgi's cpu-priority) is the pool key nice"),
    (&["supplementary-groups"], "mod_wsgi's supplementary-groups is the pool key groups, a list: [ssl-cert, shop]"),
    (&["socket-user"], "mod_wsgi's socket-user is the listener key socket-owner (and socket-group)"),
    (
        &["python-eggs"],
        "mod_wsgi's python-eggs has no key: set the variable in the pool key env: `env: {PYTHON_EGG_CACHE: /dir}`",
    ),
    (
        &["forkbomb-delay", "emergency-restart-threshold"],
        "uWSGI's forkbomb-delay (PHP-FPM's emergency_restart_threshold) has no equivalent: a worker that keeps failing \
         is restarted with a growing delay anyway",
    ),
    (
        &["wsgichunkedrequest", "chunked-request"],
        "bodies of unknown length (chunked uploads; mod_wsgi's WSGIChunkedRequest) follow the \
         pool key unknown-length-body: stream (the default), buffer (read whole, CONTENT_LENGTH set: for Django) or \
         refuse (411)",
    ),
    (
        &["deadlock-timeout"],
        "mod_wsgi's deadlock-timeout has no equivalent: the pool key request-timeout replaces a worker whose request \
         runs too long",
    ),
    // Logs and status.
    (
        &["logto"],
        "uWSGI's logto is the bridge key log-file: `bridge: log-file: /path`, one log for every pool (an app \
         that needs its own logs a file of its own with Python's logging)",
    ),
    (
        &["touch-logreopen"],
        "uWSGI's touch-logreopen has no equivalent: SIGUSR1 reopens the bridge's log files (logrotate's \
         postrotate); the pool key touch-reload restarts the workers instead",
    ),
    (
        &["disable-logging"],
        "uWSGI's disable-logging has no equivalent: there is no access log unless the bridge key access-log is set",
    ),
    (&["access.log"], "PHP-FPM's access.log is the bridge key access-log, one access log for every pool (its lines name the pool)"),
    (&["access.format"], "PHP-FPM's access.format is the bridge key access-log-format"),
    (
        &["catch-workers-output"],
        "PHP-FPM's catch_workers_output has no equivalent: the workers' output always goes to the bridge's log",
    ),
    (&["stats"], "uWSGI's stats is the bridge key status: `bridge: status: {listen: 127.0.0.1:9180}`"),
    (
        &["memory-report"],
        "uWSGI's memory-report has no equivalent: `fcgibridge status` and the status page show each worker's RSS",
    ),
];

/// The error for a pool's `env` written as a string or a list (`items`) instead of a
/// mapping; uWSGI's `NAME=value` items are shown as the mapping to write.
pub(super) fn env_not_a_mapping(items: &[&str]) -> String {
    let pairs: Vec<(&str, &str)> = items.iter().filter_map(|item| item.split_once('=')).collect();
    if pairs.is_empty() || pairs.len() != items.len() {
        return "expected a mapping of variable names to values: `env: {NAME: value}`".to_owned();
    }
    let plain = |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || "._/-".contains(c));
    let written: Vec<String> = pairs
        .iter()
        .map(|(name, value)| if plain(value) { format!("{name}: {value}") } else { format!("{name}: {value:?}") })
        .collect();
    format!(
        "expected a mapping of variable names to values; uWSGI's `env = NAME=value` lines are written `env: {{{}}}`",
        written.join(", ")
    )
}

/// `; did you mean "x"?` for `close`, a word near the one given; empty for None.
pub(super) fn meant(close: Option<&str>) -> String {
    close.map_or(String::new(), |w| format!("; did you mean {w:?}?"))
}

/// `; did you mean "x"?`, or the list of accepted names when nothing is close.
pub(super) fn suggestion(given: &str, expected: &[&str]) -> String {
    if let Some(best) = did_you_mean(&given.replace('_', "-"), expected) {
        meant(Some(best))
    } else if expected.is_empty() {
        String::new()
    } else {
        let list: Vec<String> = expected.iter().map(|e| format!("{e:?}")).collect();
        format!("; expected one of {}", list.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POOL_KEYS: &[&str] = &["app", "python", "chdir", "env", "processes", "threads", "queue-size"];

    #[test]
    fn typos_find_their_key() {
        assert_eq!(did_you_mean("procesess", POOL_KEYS), Some("processes"));
        assert_eq!(did_you_mean("thread", POOL_KEYS), Some("threads"));
        assert_eq!(did_you_mean("Python", POOL_KEYS), Some("python"));
        assert_eq!(suggestion("queue_size", POOL_KEYS), "; did you mean \"queue-size\"?");
    }

    #[test]
    fn another_servers_option_names_the_key_to_write() {
        let pool = POOL_KEYS;
        assert_eq!(
            unknown_key("harakiri", pool),
            "; uWSGI's harakiri (PHP-FPM's request_terminate_timeout) is the pool key request-timeout, a duration such as 30s"
        );
        assert!(unknown_key("request_terminate_timeout", pool).contains("pool key request-timeout"));
        assert!(unknown_key("pm.max_children", pool).contains("max-processes"));
        assert!(unknown_key("max_children", pool).contains("pm.max_children"));
        assert!(unknown_key("Listen.Owner", pool).contains("listener key socket-owner"));
        assert!(unknown_key("limit-as", pool).contains("pool key rlimit-as"));
        assert!(unknown_key("wsgi-file", pool).contains("pool key app"));
        assert_eq!(unknown_key("env[PATH]", pool), "; PHP-FPM's env[PATH] is written in the pool's env: {PATH: value}");
        // A key of this mapping in another spelling stays a typo of it.
        assert_eq!(unknown_key("queue_size", pool), "; did you mean \"queue-size\"?");
        // The bridge's own pool keys, written where a pool's keys do not go.
        assert!(unknown_key("processes", &["fastcgi", "scgi", "pool"])
            .starts_with("; processes (uWSGI's workers) is a pool key"));
        assert!(unknown_key("max-requests", &["fastcgi"]).contains("pool key"));
        // Not another server's name: as before.
        assert_eq!(unknown_key("procesess", pool), "; did you mean \"processes\"?");
    }

    #[test]
    fn other_servers_options_are_named_in_pools_only() {
        let listener = &["fastcgi", "scgi", "pool", "routes", "dialect", "file-handoff"][..];
        let template =
            &["allow", "max-instances", "instance-idle-timeout", "spawn-rate", "missing-cache", "min-uid"][..];
        // A listener's `route` is its `routes` misspelt, not uWSGI's route option.
        assert_eq!(unknown_key("route", listener), "; did you mean \"routes\"?");
        let says = unknown_key("cache", template);
        assert!(says.starts_with("; expected one of \"allow\"") && says.contains("\"missing-cache\""), "{says}");
        assert!(unknown_key("static-map", listener).starts_with("; expected one of"));
        // A hint that names a key of the mapping applies there too.
        let listener = &["fastcgi", "pool", "routes", "max-params"][..];
        assert!(
            unknown_key("buffer-size", listener).starts_with("; uWSGI's buffer-size is the listener key max-params")
        );
        // In a pool both still say what to write instead.
        assert!(unknown_key("route", POOL_KEYS).starts_with("; uWSGI's route has no equivalent"));
        assert!(unknown_key("cache", POOL_KEYS).starts_with("; uWSGI's cache2 has no equivalent"));
        // The bridge's own keys written in the wrong mapping are named anywhere.
        assert!(unknown_key("threads", template).starts_with("; threads is a pool key"));
        // A pool key under a listener (a flat uWSGI ini split in two): named, not a look-alike.
        assert!(unknown_key("queue-timeout", listener).starts_with("; queue-timeout is a pool key"));
        assert!(unknown_key("request_timeout", listener).starts_with("; request-timeout is a pool key"));
    }

    #[test]
    fn the_listener_and_bridge_keys_named_elsewhere_are_theirs_alone() {
        let listener: Vec<_> = listener_keys().collect();
        let bridge: Vec<_> = bridge_keys().collect();
        // Read from the parser's structs: each is there (the probe found them).
        assert!(
            listener.contains(&"fastcgi") && listener.contains(&"file-map") && listener.contains(&"direct"),
            "{listener:?}"
        );
        assert!(bridge.contains(&"runtime-dir") && bridge.contains(&"log-rate-limit"), "{bridge:?}");
        let sections = [("listeners:\n  x:\n    KEY: ~\n", listener), ("bridge:\n  KEY: ~\n", bridge)];
        for (yaml, keys) in sections {
            for key in keys {
                let parsed = serde_saphyr::from_str::<super::super::file::RawFile>(&yaml.replace("KEY", key));
                assert!(parsed.is_ok(), "{key} is no key of {yaml:?}");
                let in_pool =
                    serde_saphyr::from_str::<super::super::file::RawFile>(&format!("pools:\n  x:\n    {key}: ~\n"));
                assert!(in_pool.is_err(), "{key} is a pool key too");
                // Named before any look-alike of the mapping it is written in.
                assert!(unknown_key(key, POOL_KEYS).starts_with(&format!("; {key} is a ")), "{key}");
            }
        }
    }

    #[test]
    fn an_address_written_in_a_listener_is_its_fastcgi_key() {
        let listener = &["fastcgi", "scgi", "pool", "socket-mode", "socket-owner", "backlog"][..];
        // `socket` looks like socket-mode, but the operator wrote the address (uWSGI's socket).
        for name in ["socket", "listen", "bind", "address"] {
            let says = unknown_key(name, listener);
            assert!(says.starts_with("; a listener's address is its fastcgi (or scgi) key"), "{name}: {says}");
        }
        // Elsewhere uWSGI's socket still says where a listener goes.
        assert!(unknown_key("socket", POOL_KEYS).starts_with("; uWSGI's socket is a listener here"));
    }

    #[test]
    fn every_key_the_table_names_is_a_key() {
        let sections = [
            ("pool key ", "pools:\n  x:\n    KEY: ~\n"),
            ("listener key ", "listeners:\n  x:\n    KEY: ~\n"),
            ("bridge key ", "bridge:\n  KEY: ~\n"),
        ];
        let mut checked = 0;
        for (names, says) in MISPLACED.iter().chain(PEERS) {
            for name in *names {
                assert_eq!(*name, name.to_ascii_lowercase().replace('_', "-"), "{name} is never matched");
            }
            for (section, yaml) in sections {
                for (i, _) in says.match_indices(section) {
                    let rest = says[i + section.len()..].trim_start_matches('`');
                    let key: String = rest.chars().take_while(|c| c.is_ascii_lowercase() || *c == '-').collect();
                    let parsed = serde_saphyr::from_str::<super::super::file::RawFile>(&yaml.replace("KEY", &key));
                    assert!(parsed.is_ok(), "{names:?}: {key:?} is no {section}");
                    checked += 1;
                }
            }
        }
        assert!(checked > 40, "{checked}");
    }

    #[test]
    fn well_known_uwsgi_keys_say_what_to_do_instead() {
        let pool = POOL_KEYS;
        for key in ["static-map", "static-map2", "check-static"] {
            let says = unknown_key(key, pool);
            assert!(says.contains("no equivalent: serve them from the web server (nginx: `location"), "{key}: {says}");
        }
        // Each gets its own answer, not a spelling guess (static-map was "startup-timeout",
        // procname "processes", memory-report "memory-limit") nor the list of every key.
        let cases = [
            ("vacuum", "removes its unix sockets when it stops"),
            ("die-on-term", "SIGTERM always stops the bridge gracefully"),
            ("need-app", "never takes a request"),
            ("single-interpreter", "main interpreter"),
            ("post-buffering", "streams to the app"),
            ("thunder-lock", "hands each request to a free worker"),
            ("socket-timeout", "listener key header-timeout"),
            ("py-autoreload", "fcgibridge reload --restart-workers POOL"),
            ("python-autoreload", "nothing watches the app's modules"),
            ("touch-chain-reload", "the pool key touch-reload"),
            ("strict", "always strict"),
            ("auto-procname", "`fcgibridge status` lists each pool's workers"),
            ("procname", "names its pool"),
            ("memory-report", "each worker's RSS"),
            ("spooler", "task queue"),
            ("mule", "systemd timers"),
            ("cron", "systemd timers or cron"),
            ("attach-daemon", "systemd services"),
            ("cache2", "cache server"),
            ("route", "belong in the web server"),
            ("offload-threads", "listener key file-handoff"),
            ("chunked-input-limit", "pool key max-body"),
            ("chunked-input-timeout", "listener key body-timeout"),
            ("cheaper-step", "spare-processes"),
        ];
        for (key, part) in cases {
            let says = unknown_key(key, pool);
            assert!(says.starts_with("; uWSGI's "), "{key}: {says}");
            assert!(says.contains(part), "{key}: {says}");
        }
        // Look-alikes of the pool's own keys that do something else: named, not suggested
        // (touch-logreopen was "touch-reload", which restarts the workers at each log
        // rotation; threads-stacksize was "threads", a stack size in KiB as a thread count).
        let cases = [
            ("touch-logreopen", "SIGUSR1 reopens the bridge's log files"),
            ("threads-stacksize", "not the pool key threads"),
            ("thread-stacksize", "not the pool key threads"),
            ("max-worker-lifetime-delta", "pool key restart-interval-jitter"),
            ("reload-mercy", "pool key graceful-timeout"),
            ("lazy", "`preload: true`"),
            ("plugins", "pool key python picks the interpreter"),
            ("plugin", "drop it"),
            ("daemonize", "in the foreground under systemd"),
            ("pidfile", "control socket"),
        ];
        for (key, part) in cases {
            let says = unknown_key(key, pool);
            assert!(says.starts_with("; uWSGI's "), "{key}: {says}");
            assert!(says.contains(part), "{key}: {says}");
        }
        assert!(unknown_key("stack-size", pool).contains("mod_wsgi's stack-size"));
        // PHP-FPM's php.ini settings of a pool.
        let says = unknown_key("php_admin_value[memory_limit]", pool);
        assert!(says.starts_with("; PHP-FPM's php_admin_value[memory_limit] sets a php.ini value"), "{says}");
        assert!(unknown_key("php_flag[display_errors]", pool).contains("php_flag[display_errors]"));
        // mod_wsgi's chunked bodies: Django needs them buffered.
        let says = unknown_key("WSGIChunkedRequest", pool);
        assert!(says.contains("pool key unknown-length-body") && says.contains("buffer"), "{says}");
        // manage-script-name is not uWSGI's mount.
        let says = unknown_key("manage-script-name", pool);
        assert!(says.starts_with("; uWSGI's manage-script-name has no equivalent and needs none"), "{says}");
        assert!(unknown_key("mount", pool).starts_with("; uWSGI's mount is the listener key mount"));
        // mod_wsgi's daemon options.
        assert!(unknown_key("socket-user", pool).contains("listener key socket-owner"));
        assert!(unknown_key("supplementary-groups", pool).contains("pool key groups"));
        assert!(unknown_key("cpu-priority", pool).contains("pool key nice"));
    }

    #[test]
    fn pasted_uwsgi_php_fpm_and_gunicorn_keys_say_what_to_write() {
        // Each was the list of every key, or a look-alike ("process.dumpable" was "processes",
        // "idle" "idle-timeout" without the mode it needs), or named another server's key.
        let cases = [
            ("die-on-idle", "uWSGI's die-on-idle has no equivalent", "`mode: ondemand`"),
            ("reload-on-as", "uWSGI's reload-on-as has no equivalent", "pool key rlimit-as"),
            ("reload-on-rss", "uWSGI's reload-on-rss", "`memory-limit: 150MiB`"),
            ("evil-reload-on-rss", "uWSGI's reload-on-rss (and evil-reload-on-rss)", "pool key memory-limit"),
            ("idle", "uWSGI's idle", "`mode: ondemand` with idle-timeout"),
            ("cheaper", "uWSGI's cheaper", "`mode: dynamic` with min-processes"),
            ("cheaper-algo", "uWSGI's cheaper-* tuning has no equivalent", "spare-processes"),
            ("vacuum", "uWSGI's vacuum has no equivalent", "drop it"),
            ("thunder-lock", "uWSGI's thunder-lock has no equivalent", "drop it"),
            ("enable-threads", "uWSGI's enable-threads is not needed", "threads the app starts run"),
            ("single-interpreter", "uWSGI's single-interpreter has no equivalent", "drop it"),
            ("need-app", "uWSGI's need-app has no equivalent", "drop it"),
            ("strict", "uWSGI's strict has no equivalent", "drop it"),
            ("listen.acl_users", "PHP-FPM's listen.acl_users and listen.acl_groups", "listener keys socket-group"),
            ("listen.acl_groups", "PHP-FPM's listen.acl_users and listen.acl_groups", "socket-mode"),
            ("process.dumpable", "PHP-FPM's process.dumpable is not needed", "pool key rlimit-core"),
            ("pm.status_path", "PHP-FPM's pm.status_path", "listener key status-path"),
            ("ping.path", "PHP-FPM's ping.path", "listener key ping-path"),
            ("request_slowlog_timeout", "PHP-FPM's request_slowlog_timeout", "pool key slowlog-timeout"),
            ("slowlog", "PHP-FPM's slowlog has no equivalent", "bridge's log"),
            ("rlimit_files", "uWSGI's max-fd (PHP-FPM's rlimit_files)", "pool key rlimit-nofile"),
            ("catch_workers_output", "PHP-FPM's catch_workers_output has no equivalent", "bridge's log"),
            ("security.limit_extensions", "PHP-FPM's security.limit_extensions has no equivalent", "drop it"),
            ("worker_class", "gunicorn's worker_class", "`interface: asgi`"),
            ("preload_app", "gunicorn's preload_app", "`preload: true`"),
            ("forwarded_allow_ips", "gunicorn's forwarded_allow_ips", "listener key trusted-proxies"),
        ];
        let pool = &["app", "processes", "threads", "clear-env", "max-requests-jitter", "graceful-timeout"][..];
        for (key, starts, part) in cases {
            let says = unknown_key(key, pool);
            assert!(says.starts_with(&format!("; {starts}")) && says.contains(part), "{key}: {says}");
        }
        // Spelt as the pool's own key in snake_case, and meaning the same: that key.
        for (key, own) in [
            ("clear_env", "clear-env"),
            ("max_requests_jitter", "max-requests-jitter"),
            ("graceful_timeout", "graceful-timeout"),
        ] {
            assert_eq!(unknown_key(key, pool), format!("; did you mean {own:?}?"));
        }
        // gunicorn's proxies written in a listener: its own key.
        let listener = &["fastcgi", "pool", "trusted-proxies", "trusted-proxy-headers"][..];
        assert!(unknown_key("forwarded_allow_ips", listener).contains("listener key trusted-proxies"));
    }

    #[test]
    fn uwsgi_env_lines_are_shown_as_a_mapping() {
        assert_eq!(
            env_not_a_mapping(&["APP_MODE=production"]),
            "expected a mapping of variable names to values; uWSGI's `env = NAME=value` lines are written \
             `env: {APP_MODE: production}`"
        );
        assert!(env_not_a_mapping(&["LANG=C.UTF-8", "DSN=pg://u@h/db?x=1"])
            .ends_with("`env: {LANG: C.UTF-8, DSN: \"pg://u@h/db?x=1\"}`"));
        assert_eq!(
            env_not_a_mapping(&["A", "B"]),
            "expected a mapping of variable names to values: `env: {NAME: value}`"
        );
    }

    #[test]
    fn unrelated_words_list_the_choices() {
        assert_eq!(did_you_mean("zzz", POOL_KEYS), None);
        assert_eq!(suggestion("x", &["text", "json"]), "; expected one of \"text\", \"json\"");
    }
}
