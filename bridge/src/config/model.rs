//! The effective configuration, after defaults and validation. Paths are absolute
//! (relative ones resolve against the directory of the file that named them).
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Config {
    pub global: Global,
    /// In file order, then the order within each file.
    pub listeners: Vec<Listener>,
    pub pools: Vec<Pool>,
    /// Pools made per request key (`template:` entries under `pools:`), in file order.
    pub templates: Vec<super::template::Template>,
    /// What a reload found that only the next start refuses (a log file whose directory is
    /// missing), as `file:line:column: warning: key: message`; empty otherwise.
    pub warnings: Vec<String>,
}

/// What the configuration runs, without the warnings its load gave: a reload of the same
/// files is "nothing changed" whether or not one of them warned.
impl PartialEq for Config {
    fn eq(&self, other: &Self) -> bool {
        let Self { global, listeners, pools, templates, warnings: _ } = self;
        *global == other.global
            && *listeners == other.listeners
            && *pools == other.pools
            && *templates == other.templates
    }
}

/// The `bridge:` section.
#[derive(Debug, Clone, PartialEq)]
pub struct Global {
    /// Worker sockets and the unpacked worker module live here (default: a fresh
    /// private directory under $XDG_RUNTIME_DIR or /tmp).
    pub runtime_dir: Option<PathBuf>,
    /// tracing filter, e.g. "info" or "fcgibridge=debug".
    pub log_level: String,
    pub log_format: LogFormat,
    /// Access log file; "-" means the main log.
    pub access_log: Option<PathBuf>,
    /// The daemon's log file; None: stderr.
    pub log_file: Option<PathBuf>,
    /// How long SIGTERM waits for in-flight requests.
    pub shutdown_timeout: Duration,
    /// After SIGTERM, how long ping paths fail (503) while requests are still served,
    /// before the listeners close (`drain-period`; 0: close at once).
    pub drain_period: Duration,
    /// Access log line template with $variables; None: the built-in format.
    pub access_log_format: Option<String>,
    /// The HTTP status listener, if configured.
    pub status: Option<StatusListen>,
    /// Control socket path; None: `<runtime-dir>/control.sock`.
    pub control_socket: Option<PathBuf>,
    /// Bytes of unfinished request headers all connections together may hold (`header-memory`).
    pub header_memory: u64,
    /// Repeated 503/404/413/protocol-error lines summarised once a second (default on).
    pub log_rate_limit: bool,
}

/// `bridge: status:` — a small HTTP server for the status page (loopback or unix only).
#[derive(Debug, Clone, PartialEq)]
pub struct StatusListen {
    /// A loopback TCP address or a unix socket.
    pub address: ListenAddress,
    /// URL path of the page, e.g. "/status".
    pub path: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    FastCgi,
    Scgi,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenAddress {
    Tcp(SocketAddr),
    Unix(PathBuf),
    /// An inherited listening socket (fd 0 in spawned mode).
    Fd(i32),
    /// A socket passed by systemd socket activation, by its FileDescriptorName=.
    Systemd(String),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Listener {
    pub name: String,
    pub protocol: Protocol,
    pub address: ListenAddress,
    /// Unix socket file permissions, e.g. 0o660.
    pub socket_mode: Option<u32>,
    pub socket_owner: Option<String>,
    pub socket_group: Option<String>,
    pub backlog: u32,
    /// Tried in order; the first whose host and prefix both match wins.
    /// `pool: NAME` in YAML is one route with neither host nor prefix.
    pub routes: Vec<Route>,
    /// Bytes of FastCGI PARAMS / SCGI headers accepted per request.
    pub max_params: usize,
    /// Request path answered with the status page instead of being routed.
    pub status_path: Option<String>,
    /// Request path answered with "pong" instead of being routed.
    pub ping_path: Option<String>,
    /// The web server in front (`dialect`), for what the bridge hands back to it.
    pub dialect: Dialect,
    /// Internal redirects one request may take before it ends with 500 (`max-redirects`).
    pub max_redirects: u32,
    /// A local redirect to a path no route serves, behind a web server other than nginx.
    pub unrouted_redirect: UnroutedRedirect,
    /// Which pools an app's local redirect is followed into by the bridge (`redirect-pools`).
    pub redirect_pools: RedirectPools,
    /// `trusted-proxies` / `trusted-proxy-headers`; None: no proxy is trusted and the
    /// params are not looked at.
    pub trusted_proxies: Option<super::TrustedProxies>,
    /// `allowed-clients`: the only TCP peers whose connections are kept; None: everyone.
    pub allowed_clients: Option<Vec<super::Cidr>>,
    /// What X-Sendfile from an app becomes (`file-handoff`).
    pub file_handoff: FileHandoff,
    /// Directories `file-handoff: serve` may send files from (`file-roots`).
    pub file_roots: Vec<std::path::PathBuf>,
    /// `file-map`: filesystem prefix → internal URI prefix, for `file-handoff: translate`.
    pub file_map: Vec<(String, String)>,
    /// Ranges one request may ask of a file the bridge serves (`max-ranges`); more: 200
    /// with the whole file. 0: Range is ignored.
    pub max_ranges: u32,
    /// `file-hand-back`: the worker hands a `wsgi.file_wrapper` (or ASGI pathsend) file back as
    /// X-Sendfile instead of streaming it. Default: on with `serve` (the bridge sends it),
    /// off with `translate` (the web server would, only when configured to follow it).
    pub file_hand_back: bool,
    /// `mount`: where the app is mounted when no prefix route matched (SCRIPT_NAME).
    pub mount: Option<String>,
    /// `path-info: keep`: SCRIPT_NAME / PATH_INFO exactly as the web server sent them.
    pub keep_path_info: bool,
    /// From a request's first byte until its headers (FastCGI PARAMS, SCGI netstring) are
    /// complete at most (`header-timeout`); then the connection is closed.
    pub header_timeout: Duration,
    /// The longest wait for the next body byte while a request still expects body
    /// (`body-timeout`); then 408, or a cut-off response.
    pub body_timeout: Duration,
    /// Bytes a second a request body must average once `body-timeout` has passed since the
    /// request arrived (`body-min-rate`, 0: any rate); then 408, or a cut-off response.
    pub body_min_rate: u64,
    /// The longest the web server may leave response bytes unread (`send-timeout`); then
    /// the connection is closed and its requests abandoned.
    pub send_timeout: Duration,
    /// The longest a kept FastCGI connection may sit between requests (`keepalive-timeout`);
    /// then the bridge closes it.
    pub keepalive_timeout: Duration,
    /// Connections open at once (`max-connections`); beyond it new ones are closed at once.
    pub max_connections: u32,
    /// `direct`: the pool's workers get this socket and accept its connections themselves;
    /// the bridge runs no accept loop for it (docs/direct.md).
    pub direct: bool,
}

#[cfg(test)]
impl Listener {
    /// A FastCGI listener `name` on 127.0.0.1:`port` sending everything to pool `p`, every
    /// other key at its default: a test sets what it looks at.
    pub(crate) fn for_tests(name: &str, port: u16) -> Self {
        Self {
            name: name.into(),
            protocol: Protocol::FastCgi,
            address: ListenAddress::Tcp(SocketAddr::from(([127, 0, 0, 1], port))),
            socket_mode: None,
            socket_owner: None,
            socket_group: None,
            backlog: 1024,
            routes: vec![Route { host: None, prefix: None, pool: "p".into() }],
            max_params: 1 << 20,
            status_path: None,
            ping_path: None,
            dialect: Dialect::Generic,
            max_redirects: 10,
            unrouted_redirect: UnroutedRedirect::NotFound,
            redirect_pools: RedirectPools::Same,
            trusted_proxies: None,
            allowed_clients: None,
            file_handoff: FileHandoff::Pass,
            file_roots: Vec::new(),
            file_map: Vec::new(),
            max_ranges: 16,
            file_hand_back: false,
            mount: None,
            keep_path_info: false,
            header_timeout: Duration::from_secs(60),
            body_timeout: Duration::from_secs(60),
            body_min_rate: 500,
            send_timeout: Duration::from_secs(60),
            keepalive_timeout: Duration::from_secs(300),
            max_connections: 1024,
            direct: false,
        }
    }
}

/// `file-handoff:` of a listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FileHandoff {
    /// Headers go to the web server untouched (nginx, lighttpd, Apache with mod_xsendfile).
    #[default]
    Pass,
    /// The bridge sends the file itself.
    Serve,
    /// X-Sendfile ↔ X-Accel-Redirect by `file-map`, for the listener's `dialect`.
    Translate,
}

impl FileHandoff {
    pub fn name(self) -> &'static str {
        match self {
            Self::Pass => "pass",
            Self::Serve => "serve",
            Self::Translate => "translate",
        }
    }
}

/// The web server in front of a listener (`dialect:`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Dialect {
    #[default]
    Generic,
    Nginx,
    Lighttpd,
    Apache,
    Caddy,
    H2o,
    Haproxy,
}

impl Dialect {
    pub fn name(self) -> &'static str {
        match self {
            Self::Generic => "generic",
            Self::Nginx => "nginx",
            Self::Lighttpd => "lighttpd",
            Self::Apache => "apache",
            Self::Caddy => "caddy",
            Self::H2o => "h2o",
            Self::Haproxy => "haproxy",
        }
    }
}

/// What a local redirect to an unrouted path becomes (`unrouted-redirect:`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UnroutedRedirect {
    /// 404 from the bridge.
    #[default]
    NotFound,
    /// Status 200 + Location passed to the web server, which may redirect itself.
    Pass,
}

impl UnroutedRedirect {
    pub fn name(self) -> &'static str {
        match self {
            Self::NotFound => "404",
            Self::Pass => "pass",
        }
    }
}

/// Which pools the bridge follows an app's local redirect into (`redirect-pools:`). A
/// redirect the bridge follows never passes the web server's access rules for its target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RedirectPools {
    /// Only the pool (the template instance) that answered with it; one into another pool
    /// goes to the web server, or is refused with 500.
    #[default]
    Same,
    /// Any pool the listener routes the target to.
    Any,
}

impl RedirectPools {
    pub fn name(self) -> &'static str {
        match self {
            Self::Same => "same",
            Self::Any => "any",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// Matched against HTTP_HOST without its port, case-insensitively.
    pub host: Option<String>,
    /// Path prefix on a segment boundary: "/api" matches "/api" and "/api/x", not "/apix".
    pub prefix: Option<String>,
    pub pool: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Pool {
    pub name: String,
    /// Interpreter or virtualenv python to run; when not written, the one a script app's
    /// shebang names (shebang.rs), else "python3" from PATH.
    pub python: PathBuf,
    /// Where `python` was written (or the shebang that chose it, or by default the pool), for
    /// the interpreter probe's errors.
    pub python_at: KeyAt,
    /// "package.module:callable", or the path of a .wsgi/.py file that defines `application`.
    pub app: App,
    /// Where `app` (or `command`) was written, for `check --import`'s report.
    pub app_at: KeyAt,
    /// Working directory of the workers (default: the directory of the config file).
    pub chdir: PathBuf,
    /// Where `chdir` was written (or, by default, the pool), for the interpreter probe's errors.
    pub chdir_at: KeyAt,
    /// Added to the bridge's own environment.
    pub env: BTreeMap<String, String>,
    pub processes: u32,
    pub threads: u32,
    /// `interface` (WSGI / ASGI / auto), `concurrency` and `asgi-loop`.
    pub interface: super::interface::InterfaceConfig,
    /// Requests that may wait for a free worker thread; beyond it: 503 at once.
    pub queue_size: usize,
    /// Longest wait for a free worker thread; then 503 with Retry-After.
    pub queue_timeout: Duration,
    /// How long a worker may take to import the app and become ready (its ready-check
    /// included).
    pub startup_timeout: Duration,
    /// `ready-check`: a GET a new worker must answer 2xx/3xx before it counts as ready.
    pub ready_check: Option<ReadyCheck>,
    /// A request running longer is counted slow and its Python stack logged.
    pub slowlog_timeout: Option<Duration>,
    /// mode (static / dynamic / ondemand) and its sizes, recycling, limits and timeouts;
    /// `processes` above is the most workers the pool runs at once.
    pub supervision: super::supervision::Supervision,
    /// The largest request body passed to the app (`max-body`); beyond it: 413. None: no limit.
    pub max_body: Option<u64>,
    /// What a body of unknown length (a chunked upload) becomes (`unknown-length-body`).
    pub unknown_length_body: UnknownLengthBody,
    /// `pipeline`: a waiting request may be written to a busy worker connection behind its
    /// current request (dispatch/mod.rs). Default true.
    pub pipeline: bool,
    /// `error-pages`: replace an app's 4xx/5xx body and the bridge's own 502/503/504.
    pub error_pages: super::ErrorPages,
    /// user, group, chroot, umask, rlimits, nice, clear-env, script ownership (default: none).
    pub isolation: super::isolation::Isolation,
    /// Served by a `direct` listener: its workers accept that listener's connections
    /// themselves (docs/direct.md). Set when the files are merged.
    pub direct: Option<DirectServe>,
    /// The addresses of the listeners that lead to it (`127.0.0.1:9000`, `unix:/run/app.sock`;
    /// passed sockets have none), for its workers' hints (FCGIBRIDGE_LISTENERS). Set when
    /// the files are merged; a template's instance gets its template's. Left out of what
    /// makes a pool changed ([`Pool::same_but_listeners`]): a hint is no reason to restart.
    pub listened_at: Vec<String>,
    /// `touch-reload`: files whose change restarts the workers, rolling (absolute paths).
    pub touch_reload: Vec<PathBuf>,
}

impl Pool {
    /// Equal but for `listened_at`: listeners that moved change only the words of its
    /// workers' hint, not the pool (a reload's summary, a template's live instances).
    pub fn same_but_listeners(&self, other: &Self) -> bool {
        *self == Self { listened_at: self.listened_at.clone(), ..other.clone() }
    }
}

/// What the workers of a pool behind a `direct` listener are told of the listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirectServe {
    pub listener: String,
    /// The listener's `mount` (FCGIBRIDGE_MOUNT).
    pub mount: Option<String>,
    /// The listener's `path-info: keep` (FCGIBRIDGE_KEEP_PATH_INFO=1).
    pub keep_path_info: bool,
    /// The listener's `header-timeout` (FCGIBRIDGE_HEADER_TIMEOUT, seconds): the worker
    /// closes a connection that sent no complete request's PARAMS within it.
    pub header_timeout: std::time::Duration,
    /// The listener's `max-redirects` (FCGIBRIDGE_MAX_REDIRECTS): the local redirects the
    /// workers follow for one request before answering 500.
    pub max_redirects: u32,
}

#[cfg(test)]
impl Pool {
    /// A pool named `p` of one single-threaded worker for the module `x:application`,
    /// every other key plain: a test sets what it looks at (`Pool { threads: 4, ..for_tests() }`).
    pub(crate) fn for_tests() -> Self {
        Self {
            name: "p".into(),
            python: "python3".into(),
            python_at: Default::default(),
            app: App::Module { module: "x".into(), callable: "application".into() },
            app_at: Default::default(),
            chdir: "/".into(),
            chdir_at: Default::default(),
            env: Default::default(),
            processes: 1,
            threads: 1,
            interface: Default::default(),
            queue_size: 0,
            queue_timeout: Duration::from_secs(1),
            startup_timeout: Duration::from_secs(1),
            ready_check: None,
            slowlog_timeout: None,
            supervision: Default::default(),
            max_body: None,
            unknown_length_body: UnknownLengthBody::Stream,
            pipeline: true,
            error_pages: Default::default(),
            isolation: Default::default(),
            direct: None,
            listened_at: Vec::new(),
            touch_reload: Vec::new(),
        }
    }
}

/// `ready-check: /path` or `http(s)://host/path`: the request the bridge sends a new
/// worker, straight to it, before the worker counts as ready (supervise/ready_check.rs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadyCheck {
    /// Written as `https://…`: the request says HTTPS.
    pub https: bool,
    /// Its Host (and port): written in the URL, else the host of the first route naming the
    /// pool; None: no Host header.
    pub host: Option<String>,
    /// Path and query as the request sends them (`/healthz?deep=1`).
    pub uri: String,
}

impl ReadyCheck {
    /// Read a `ready-check` value; Err: what is wrong with it.
    pub fn parse(text: &str) -> Result<Self, String> {
        let (https, rest) = match text.split_once("://") {
            Some(("http", rest)) => (false, Some(rest)),
            Some(("https", rest)) => (true, Some(rest)),
            _ => (false, None),
        };
        let (host, uri) = match rest {
            Some(rest) => {
                let (host, uri) = rest.find('/').map_or((rest, "/"), |i| rest.split_at(i));
                if host.is_empty() || host.contains(['@', '?', '#']) {
                    return Err(format!("{text:?}: the URL names no host (http://shop.example/healthz)"));
                }
                (Some(host.to_owned()), uri)
            }
            None if text.starts_with('/') => (None, text),
            None => {
                return Err(format!(
                "{text:?} is neither a path (/healthz) nor a URL naming the Host to send (http://shop.example/healthz)"
            ))
            }
        };
        if uri.contains('#') || uri.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(format!("{text:?}: the path has a space, a control character or a '#'"));
        }
        Ok(Self { https, host, uri: uri.to_owned() })
    }
}

impl std::fmt::Display for ReadyCheck {
    /// As written in the configuration (`check` prints it).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.host {
            Some(host) => write!(f, "{}://{host}{}", if self.https { "https" } else { "http" }, self.uri),
            None => f.write_str(&self.uri),
        }
    }
}

/// What a request body of unknown length (a chunked upload: CONTENT_LENGTH absent, empty
/// or -1) becomes before it reaches the app (`unknown-length-body`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UnknownLengthBody {
    /// Streamed as it arrives, without CONTENT_LENGTH (`wsgi.input_terminated`).
    #[default]
    Stream,
    /// Read whole before a worker is taken, up to `max-body` (else
    /// [`DEFAULT_BUFFERED_BODY`]), and passed on with its CONTENT_LENGTH; larger: 413.
    Buffer,
    /// Answered 411 Length Required before a worker is taken.
    Refuse,
}

impl UnknownLengthBody {
    pub fn name(self) -> &'static str {
        match self {
            Self::Stream => "stream",
            Self::Buffer => "buffer",
            Self::Refuse => "refuse",
        }
    }
}

/// The largest body of unknown length `unknown-length-body: buffer` reads when the pool sets
/// no `max-body`.
pub const DEFAULT_BUFFERED_BODY: u64 = 16 << 20;

/// Where a key was written: `file:line:column` and its key path, for errors found after
/// loading (the interpreter probe runs programs, so it is no part of `config`). Every two
/// compare equal: moving a pool's lines within its file changes nothing a reload acts on.
#[derive(Debug, Clone, Default)]
pub struct KeyAt {
    /// `conf.d/10-app.yaml:4:5`, or the nearest parent key's place when the key is not written.
    pub at: String,
    /// `pools.app.python`.
    pub key: String,
    /// False when the value is the default.
    pub written: bool,
    /// What chose the value when the key is not written and no plain default did (the app
    /// file's shebang for `python`); `at` then points there.
    pub chosen_by: Option<String>,
}

impl PartialEq for KeyAt {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum App {
    /// `module:callable` (callable defaults to `application`; `name()` is a factory the
    /// worker calls without arguments).
    Module { module: String, callable: String },
    /// A file (any name; run as a script unless it ends in .py or .wsgi) and the callable
    /// it exposes (`application` unless `app:` names one after the last `:`).
    File { path: PathBuf, callable: String },
    /// `command:` — any FastCGI program started with its listening socket on fd 0
    /// (php-cgi, a flup script); argv[0] is resolved to an absolute path.
    Command(Vec<String>),
}

impl App {
    /// The app file of a file app.
    pub fn file(&self) -> Option<&Path> {
        match self {
            Self::File { path, .. } => Some(path),
            _ => None,
        }
    }

    /// The app file when the worker runs it as the main script, as a web server ran a flup
    /// script (the worker's rule: any file not ending in .py or .wsgi, or any with
    /// `:__main__`); None for a file imported as a module, a module, a program.
    pub fn script(&self) -> Option<&Path> {
        match self {
            Self::File { path, callable } => Self::runs_as_script(path, callable).then_some(path.as_path()),
            _ => None,
        }
    }

    /// Whether the app file `path` with `callable` runs as the main script ([`App::script`]).
    pub fn runs_as_script(path: &Path, callable: &str) -> bool {
        let ext = path.extension().and_then(std::ffi::OsStr::to_str);
        callable == "__main__" || !matches!(ext, Some("py" | "wsgi"))
    }

    /// The `app:` value that means this app again (`fcgibridge check`, the worker's
    /// FCGIBRIDGE_APP): a file's callable is written when it is not `application`, or
    /// when the path itself ends in `:name` and would otherwise be split there.
    pub fn spec_for(path: &Path, callable: &str) -> String {
        let shown = path.display().to_string();
        let splits = super::resolve::split_callable(&shown).1.is_some();
        if callable == super::resolve::DEFAULT_CALLABLE && !splits {
            shown
        } else {
            format!("{shown}:{callable}")
        }
    }
}
