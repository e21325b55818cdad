//! Listeners: where web servers connect. TCP, unix sockets (with mode/owner/group and
//! safe replacement of stale socket files) and inherited descriptors (fd 0 in spawned
//! mode). Each accepted connection gets one task speaking FastCGI or SCGI.
pub(crate) mod allow;
pub(crate) mod context;
pub(crate) mod fastcgi;
#[cfg(test)]
mod front_tests;
pub(crate) mod limits;
pub(crate) mod proxy;
pub(crate) mod scgi;
pub(crate) mod socket_file;
pub(crate) mod systemd;

use crate::config::{self, ListenAddress, Protocol};
use crate::registry::Registry;
use crate::route::Router;
use crate::supervise::PoolRuntime;
use context::{ListenerCtx, Succession};
use fastcgi_server::Limits;
use std::collections::HashMap;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::watch;

/// The tracing target of this module's events, for a [`ListenError`] the daemon logs
/// when it cannot start (`fcgibridge::listen`).
pub(crate) const LOG_TARGET: &str = module_path!();

/// Why a listener could not be set up.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ListenError {
    #[error("listener {name}: {addr}: address in use by a running process")]
    InUse { name: String, addr: String },
    #[error("listener {name}: {addr}: {what}: {source}")]
    Io { name: String, addr: String, what: &'static str, source: std::io::Error },
    #[error("listener {name}: {path} exists and is not a socket; refusing to replace it")]
    NotASocket { name: String, path: String },
    #[error("listener {name}: socket-{which} {value:?}: no such {which}")]
    NoSuchId { name: String, which: &'static str, value: String },
    #[error("listener {name}: fd {fd} is not a listening socket")]
    BadFd { name: String, fd: i32 },
    #[error("listener {name}: {source}")]
    Systemd { name: String, source: systemd::SystemdError },
    #[error("listener {name}: route to unknown pool {pool:?}")]
    UnknownPool { name: String, pool: String },
}

/// A bound listening socket.
pub(crate) enum Bound {
    Tcp(TcpListener),
    Unix {
        listener: UnixListener,
        path: Option<PathBuf>,
    },
    /// A `direct` listener's, handed to its pool's workers ([`take_direct`]): the bridge
    /// accepts nothing on it; `path` is its socket file, removed at the stop.
    Direct {
        path: Option<PathBuf>,
    },
}

/// Take the sockets of the `direct` listeners out of `bound` (bound as every other, in
/// `listeners`' order), blocking: their pools' workers accept on them (docs/direct.md).
/// Returns them by pool name (a direct listener's pool is its own, and stays while the
/// bridge runs; its name may change by a reload).
pub(crate) fn take_direct(
    listeners: &[config::Listener],
    bound: &mut [Bound],
) -> Result<HashMap<String, Arc<OwnedFd>>, ListenError> {
    let mut sockets = HashMap::new();
    for (cfg, b) in listeners.iter().zip(bound.iter_mut()).filter(|(cfg, _)| cfg.direct) {
        let path = match b {
            Bound::Unix { path, .. } => path.clone(),
            _ => None,
        };
        let io = |source| ListenError::Io {
            name: cfg.name.clone(),
            addr: describe(&cfg.address),
            what: "hand over",
            source,
        };
        let fd: OwnedFd = match std::mem::replace(b, Bound::Direct { path }) {
            Bound::Tcp(l) => {
                let l = l.into_std().map_err(io)?;
                l.set_nonblocking(false).map_err(io)?;
                l.into()
            }
            Bound::Unix { listener, .. } => {
                let l = listener.into_std().map_err(io)?;
                l.set_nonblocking(false).map_err(io)?;
                l.into()
            }
            Bound::Direct { .. } => continue,
        };
        let pool = cfg.routes.first().map(|r| r.pool.clone()).unwrap_or_default();
        sockets.insert(pool, Arc::new(fd));
    }
    Ok(sockets)
}

/// Bind every listener (before any worker starts, so a busy port fails fast). When one
/// fails, the socket files of those bound before it are removed.
pub(crate) fn bind_all(listeners: &[config::Listener], passed: &systemd::Passed) -> Result<Vec<Bound>, ListenError> {
    let mut bound = Vec::new();
    for l in listeners {
        match bind(l, passed) {
            Ok(b) => bound.push(b),
            Err(e) => {
                for p in socket_files(&bound) {
                    let _ = std::fs::remove_file(p);
                }
                return Err(e);
            }
        }
    }
    Ok(bound)
}

/// The unix socket files the bridge bound for `bound` (not those of passed sockets).
pub(crate) fn socket_files(bound: &[Bound]) -> Vec<PathBuf> {
    bound
        .iter()
        .filter_map(|b| match b {
            Bound::Unix { path, .. } | Bound::Direct { path } => path.clone(),
            Bound::Tcp(_) => None,
        })
        .collect()
}

/// The context of one listener: its routes to the running pools, limits and settings;
/// `open_conns` counts its socket's open connections (a reload's new context keeps it).
pub(crate) fn make_ctx(
    cfg: &config::Listener,
    pools: &HashMap<String, Arc<PoolRuntime>>,
    registry: &Arc<Registry>,
    stop: &watch::Receiver<bool>,
    open_conns: Arc<AtomicUsize>,
) -> Result<Arc<ListenerCtx>, ListenError> {
    let mut routes = Vec::new();
    use crate::supervise::instances::Target;
    for r in &cfg.routes {
        // A route names a pool, or a template (supervise/instances.rs).
        let target = match pools.get(&r.pool) {
            Some(pool) => Target::Pool(pool.clone()),
            None => registry
                .board
                .instances
                .lookup(&r.pool)
                .map(Target::Template)
                .ok_or_else(|| ListenError::UnknownPool { name: cfg.name.clone(), pool: r.pool.clone() })?,
        };
        routes.push((r.host.clone(), r.prefix.clone(), target));
    }
    let router = Router::new(routes);
    let mut seen: Vec<&str> = Vec::new();
    let mut max_reqs = 0usize;
    for p in router.targets() {
        if !seen.contains(&p.name()) {
            seen.push(p.name());
            max_reqs += p.capacity();
        }
    }
    let limits = Limits {
        max_params_bytes: cfg.max_params,
        max_value_len: cfg.max_params,
        // A multiplexing peer may hold several requests' PARAMS at once; one request
        // of the configured size must still fit.
        max_params_bytes_per_connection: Limits::default().max_params_bytes_per_connection.max(cfg.max_params),
        ..Limits::default()
    };
    let max_reqs = max_reqs.min(limits.max_concurrent_requests);
    Ok(Arc::new(ListenerCtx {
        name: cfg.name.clone(),
        router,
        limits,
        max_reqs,
        max_conns: usize::try_from(cfg.max_connections).unwrap_or(usize::MAX),
        header_timeout: cfg.header_timeout,
        body_timeout: cfg.body_timeout,
        body_min_rate: cfg.body_min_rate,
        send_timeout: cfg.send_timeout,
        keepalive_timeout: cfg.keepalive_timeout,
        open_conns,
        registry: registry.clone(),
        status_path: cfg.status_path.clone(),
        ping_path: cfg.ping_path.clone(),
        stopping: stop.clone(),
        dialect: cfg.dialect,
        max_redirects: cfg.max_redirects,
        unrouted_redirect: cfg.unrouted_redirect,
        redirect_pools: cfg.redirect_pools,
        trusted_proxies: cfg.trusted_proxies.clone(),
        allowed_clients: cfg.allowed_clients.clone(),
        files: crate::respond::file_handoff::Files::of(cfg).map(Arc::new),
        mount: cfg.mount.clone(),
        keep_path_info: cfg.keep_path_info,
        protocol: cfg.protocol,
        succession: Succession::default(),
    }))
}

/// Sockets bound for the new listeners of a reload.
pub(crate) struct NewSockets(Vec<(usize, Bound)>);

/// One running listener.
struct RunningListener {
    cfg: config::Listener,
    ctx: Arc<ListenerCtx>,
    /// Stops this listener's accept loop (removal by a reload, or the daemon stopping);
    /// its connections close once idle.
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
    socket_file: Option<PathBuf>,
    /// The socket the bridge bound and accepts on (open as long as `task` runs), for a
    /// reload that changes `backlog`; `None` for a passed socket (its owner's backlog)
    /// and a `direct` listener's.
    backlog_fd: Option<std::os::fd::RawFd>,
}

/// The daemon's listeners. A reload keeps the socket of every listener whose address
/// stays (no connection is refused meanwhile), binds the new ones before changing
/// anything, and stops the removed ones.
pub(crate) struct ListenerSet {
    live: Vec<RunningListener>,
    registry: Arc<Registry>,
}

impl ListenerSet {
    /// Start accepting on every bound listener.
    pub(crate) fn start(
        config: &[config::Listener],
        bound: Vec<Bound>,
        pools: &HashMap<String, Arc<PoolRuntime>>,
        registry: Arc<Registry>,
    ) -> Result<Self, ListenError> {
        let mut set = Self { live: Vec::new(), registry };
        for (cfg, b) in config.iter().zip(bound) {
            set.launch(cfg, b, pools)?;
        }
        Ok(set)
    }

    fn launch(
        &mut self,
        cfg: &config::Listener,
        b: Bound,
        pools: &HashMap<String, Arc<PoolRuntime>>,
    ) -> Result<(), ListenError> {
        let (stop, stop_rx) = watch::channel(false);
        let ctx = make_ctx(cfg, pools, &self.registry, &stop_rx, Arc::default())?;
        let socket_file = match &b {
            Bound::Unix { path, .. } | Bound::Direct { path } => path.clone(),
            Bound::Tcp(_) => None,
        };
        let backlog_fd = match (&cfg.address, &b) {
            (ListenAddress::Tcp(_), Bound::Tcp(l)) => Some(l.as_raw_fd()),
            (ListenAddress::Unix(_), Bound::Unix { listener, .. }) => Some(listener.as_raw_fd()),
            _ => None,
        };
        self.registry.track.listener_started(&ctx.name, &ctx.open_conns);
        let task = if let Bound::Direct { .. } = b {
            let pool = cfg.routes.first().map(|r| r.pool.as_str()).unwrap_or_default();
            tracing::info!(listener = %cfg.name, address = %describe(&cfg.address), pool, "listening, direct: the pool's workers accept its connections");
            tokio::spawn(async {})
        } else {
            tracing::info!(listener = %cfg.name, protocol = ?cfg.protocol, address = %describe(&cfg.address), "listening");
            tokio::spawn(accept_loop(b, ctx.clone(), stop_rx))
        };
        self.live.push(RunningListener { cfg: cfg.clone(), ctx, stop, task, socket_file, backlog_fd });
        Ok(())
    }

    pub(crate) fn len(&self) -> usize {
        self.live.len()
    }

    /// For each listener of `config`, the running listener whose socket it keeps: one on
    /// the same address, each taken once, the one of the same name first (several
    /// listeners may share a `systemd:NAME` address, one passed socket each).
    fn kept(&self, config: &[config::Listener]) -> Vec<Option<usize>> {
        let mut taken = vec![false; self.live.len()];
        let mut kept = vec![None; config.len()];
        for same_name in [true, false] {
            for (k, cfg) in config.iter().enumerate() {
                if kept[k].is_some() {
                    continue;
                }
                let found = self.live.iter().enumerate().position(|(i, l)| {
                    !taken[i] && l.cfg.address == cfg.address && (!same_name || l.cfg.name == cfg.name)
                });
                if let Some(i) = found {
                    taken[i] = true;
                    kept[k] = Some(i);
                }
            }
        }
        kept
    }

    /// First half of a reload: bind the addresses that are new (a busy port refuses the
    /// reload before anything changes). Give the result to [`apply`](Self::apply).
    pub(crate) fn bind_new(&self, config: &[config::Listener]) -> Result<NewSockets, ListenError> {
        let mut fresh: Vec<(usize, Bound)> = Vec::new();
        let kept = self.kept(config);
        for (i, cfg) in config.iter().enumerate() {
            if kept[i].is_some() {
                continue;
            }
            match bind(cfg, &self.registry.systemd) {
                Ok(b) => fresh.push((i, b)),
                Err(e) => {
                    for (_, b) in fresh {
                        if let Bound::Unix { path: Some(p), .. } = &b {
                            let _ = std::fs::remove_file(p);
                        }
                    }
                    return Err(e);
                }
            }
        }
        Ok(NewSockets(fresh))
    }

    /// Second half of a reload: listeners that stay switch to their new settings and
    /// routes (to `pools`), new ones start, removed ones stop. Returns a summary.
    pub(crate) fn apply(
        &mut self,
        config: &[config::Listener],
        fresh: NewSockets,
        pools: &HashMap<String, Arc<PoolRuntime>>,
    ) -> Result<String, ListenError> {
        let fresh = fresh.0;
        // New contexts for the listeners that stay, checked before any is switched. A
        // kept socket keeps its count of open connections, under its new name if renamed.
        let mut kept = Vec::new();
        for (cfg, i) in config.iter().zip(self.kept(config)) {
            if let Some(i) = i {
                let l = &self.live[i];
                let ctx = make_ctx(cfg, pools, &self.registry, &l.stop.subscribe(), l.ctx.open_conns.clone())?;
                kept.push((i, cfg.clone(), ctx));
            }
        }
        let before: Vec<config::Listener> = self.live.iter().map(|l| l.cfg.clone()).collect();
        let mut renamed_sockets = Vec::new();
        let mut next: Vec<Option<RunningListener>> = self.live.drain(..).map(Some).collect();
        let mut live = Vec::new();
        for (i, cfg, ctx) in kept {
            let Some(mut l) = next[i].take() else { continue };
            if l.cfg.name != cfg.name {
                renamed_sockets.push((l.cfg.name.clone(), cfg.name.clone()));
            }
            self.switch_kept(&mut l, cfg, ctx);
            live.push(l);
        }
        let removed: Vec<RunningListener> = next.into_iter().flatten().collect();
        self.live = live;
        // A listener on a new address: its new socket (bound by bind_new) starts accepting
        // before the old one stops.
        for (i, b) in fresh {
            self.launch(&config[i], b, pools)?;
        }
        for l in removed {
            match config.iter().find(|c| c.name == l.cfg.name) {
                Some(now) => {
                    tracing::info!(listener = %l.cfg.name, address = %describe(&l.cfg.address), moved_to = %describe(&now.address),
                    "reload: listener moved: this address stops accepting; its connections finish their requests and close once idle")
                }
                None => tracing::info!(listener = %l.cfg.name, address = %describe(&l.cfg.address),
                    "reload: listener removed; its connections close once idle"),
            }
            let _ = l.stop.send(true);
            if let Some(p) = &l.socket_file {
                let _ = std::fs::remove_file(p);
            }
        }
        // Configuration order, as at start.
        self.live.sort_by_key(|l| config.iter().position(|c| c.name == l.cfg.name).unwrap_or(usize::MAX));
        Ok(Outcome::of(&before, config, &renamed_sockets).summary())
    }

    /// A listener that keeps its socket takes `cfg` (its new name too) and `ctx`; the
    /// socket takes the new settings that are its own.
    fn switch_kept(&self, l: &mut RunningListener, cfg: config::Listener, ctx: Arc<ListenerCtx>) {
        if l.cfg.name != cfg.name {
            tracing::info!(listener = %cfg.name, was = %l.cfg.name, address = %describe(&cfg.address),
                "reload: this socket now serves another listener; it keeps its connections");
        }
        if (config::Listener { name: cfg.name.clone(), ..l.cfg.clone() }) != cfg {
            if let ListenAddress::Unix(path) = &cfg.address {
                if let Err(e) = apply_socket_perms(&cfg, path) {
                    tracing::warn!(listener = %cfg.name, "{e}");
                }
            }
            if cfg.backlog != l.cfg.backlog {
                set_backlog(l, cfg.backlog);
            }
        }
        self.registry.track.listener_started(&ctx.name, &ctx.open_conns);
        l.ctx.succeed(ctx.clone());
        l.ctx = ctx;
        l.cfg = cfg;
    }

    /// Stop accepting everywhere and remove the unix socket files; connections close once idle.
    pub(crate) fn stop_accepting(&self) {
        for l in &self.live {
            let _ = l.stop.send(true);
            if let Some(path) = &l.socket_file {
                let _ = std::fs::remove_file(path);
            }
        }
    }

    /// Wait for the accept loops to end (after [`stop_accepting`](Self::stop_accepting)).
    pub(crate) async fn join(self) {
        for l in self.live {
            let _ = l.task.await;
        }
    }
}

/// What a reload did to the listeners, by name, as the configuration reads: which
/// sockets were kept or bound anew is the bridge's business.
#[derive(Default)]
struct Outcome {
    added: Vec<String>,
    /// Settings other than the name and the address.
    changed: Vec<String>,
    removed: Vec<String>,
    /// `NAME (OLD -> NEW)`: a listener on another address.
    moved: Vec<String>,
    /// `OLD -> NEW`: a socket kept under a name new to the configuration, whose old name
    /// is gone from it.
    renamed: Vec<String>,
}

impl Outcome {
    /// From the listeners `before` and `after` a reload, and the kept sockets that serve
    /// a listener of another name now (`sockets`, old name and new).
    fn of(before: &[config::Listener], after: &[config::Listener], sockets: &[(String, String)]) -> Self {
        let was = |name: &str| before.iter().find(|l| l.name == name);
        let is = |name: &str| after.iter().any(|l| l.name == name);
        let renames: Vec<&(String, String)> =
            sockets.iter().filter(|(old, new)| !is(old) && was(new).is_none()).collect();
        let mut o = Self::default();
        for l in after {
            let earlier = was(&l.name).or_else(|| {
                let (old, _) = renames.iter().find(|(_, new)| *new == l.name)?;
                was(old)
            });
            let Some(e) = earlier else {
                o.added.push(l.name.clone());
                continue;
            };
            if e.name != l.name {
                o.renamed.push(format!("{} -> {}", e.name, l.name));
            }
            if e.address != l.address {
                o.moved.push(format!("{} ({} -> {})", l.name, describe(&e.address), describe(&l.address)));
            }
            if (config::Listener { name: l.name.clone(), address: l.address.clone(), ..e.clone() }) != *l {
                o.changed.push(l.name.clone());
            }
        }
        o.removed = before
            .iter()
            .filter(|l| !is(&l.name) && !renames.iter().any(|(old, _)| *old == l.name))
            .map(|l| l.name.clone())
            .collect();
        o
    }

    /// The listeners' part of a reload's outcome line; `moved` and `renamed` only when a
    /// listener moved or was renamed, so that the line of every other reload stays as it was.
    fn summary(&self) -> String {
        let list = |v: &[String]| if v.is_empty() { "none".to_owned() } else { v.join(", ") };
        let mut line = format!(
            "listeners added: {}; changed: {}; removed: {}",
            list(&self.added),
            list(&self.changed),
            list(&self.removed)
        );
        for (what, v) in [("moved", &self.moved), ("renamed", &self.renamed)] {
            if !v.is_empty() {
                line.push_str(&format!("; {what}: {}", v.join(", ")));
            }
        }
        line
    }
}

fn describe(a: &ListenAddress) -> String {
    match a {
        ListenAddress::Tcp(s) => s.to_string(),
        ListenAddress::Unix(p) => format!("unix:{}", p.display()),
        ListenAddress::Fd(fd) => format!("fd:{fd}"),
        ListenAddress::Systemd(n) => format!("systemd:{n}"),
    }
}

/// Counts a connection for as long as it lives: against `max-connections` in `live` (one
/// counter for the listener's whole life, reloads included), and in its context's
/// `open_conns` for the status page.
struct ConnGuard {
    ctx: Arc<ListenerCtx>,
    live: Arc<AtomicUsize>,
}
impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.ctx.open_conns.fetch_sub(1, Ordering::AcqRel);
        self.live.fetch_sub(1, Ordering::AcqRel);
    }
}

async fn accept_loop(bound: Bound, mut ctx: Arc<ListenerCtx>, mut stop: watch::Receiver<bool>) {
    let live = Arc::new(AtomicUsize::new(0));
    loop {
        let accepted = tokio::select! {
            biased;
            _ = stop.changed() => return,
            a = accept(&bound) => a,
        };
        // The settings of the moment the connection came: a reload while this loop waited
        // in accept() applies to it (allowed-clients, ping-path, keepalive-timeout...).
        if ctx.superseded() {
            ctx = ctx.latest();
        }
        let protocol = ctx.protocol;
        let (conn, peer) = match accepted {
            Ok(c) => c,
            Err(e) => {
                // EMFILE and friends: log, breathe, keep the listener.
                tracing::error!(listener = %ctx.name, "accept failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        if let Accepted::Tcp(s) = &conn {
            if !allow::admit(
                s,
                &ctx.name,
                ctx.registry.web_server_addrs.as_deref(),
                ctx.allowed_clients.as_deref(),
                &ctx.registry.rate_limits,
            ) {
                continue;
            }
        }
        if live.fetch_add(1, Ordering::AcqRel) >= ctx.max_conns {
            live.fetch_sub(1, Ordering::AcqRel);
            if ctx.registry.rate_limits.allow(&crate::logging::ratelimit::MAX_CONNECTIONS, &ctx.name) {
                tracing::warn!(listener = %ctx.name, peer, "max-connections ({}) reached: refusing a new connection", ctx.max_conns);
            }
            continue;
        }
        ctx.open_conns.fetch_add(1, Ordering::AcqRel);
        let guard = ConnGuard { ctx: ctx.clone(), live: live.clone() };
        let ctx = ctx.clone();
        match conn {
            Accepted::Tcp(s) => {
                let sock = Sock { fd: std::os::fd::AsRawFd::as_raw_fd(&s), tcp: true };
                let (r, w) = s.into_split();
                spawn_conn(protocol, r, w, ctx, peer, guard, sock);
            }
            Accepted::Unix(s) => {
                let sock = Sock { fd: std::os::fd::AsRawFd::as_raw_fd(&s), tcp: false };
                let (r, w) = s.into_split();
                spawn_conn(protocol, r, w, ctx, peer, guard, sock);
            }
        }
    }
}

fn spawn_conn<R: ReadHalf, W: WriteHalf>(
    protocol: Protocol,
    r: R,
    w: W,
    ctx: Arc<ListenerCtx>,
    peer: String,
    guard: ConnGuard,
    sock: Sock,
) {
    tokio::spawn(async move {
        match protocol {
            Protocol::FastCgi => fastcgi::serve_connection(r, w, ctx, peer, sock).await,
            Protocol::Scgi => scgi::serve_connection(r, w, ctx, peer, sock).await,
        }
        drop(guard);
    });
}

/// Sleep until `at`; never wakes without one (for a `select!` branch that may be off).
pub(crate) async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// How long a connection is kept open after its response to read (and discard) what the
/// web server is still sending, e.g. a body the app did not read.
const LINGER: std::time::Duration = std::time::Duration::from_secs(30);

/// Close a connection whose response is complete: stop sending (the web server sees the
/// end), then read and discard until it closes its side. Closing at once while it still
/// sends would make it see a reset before it reads the response, and answer 502.
pub(crate) async fn lingering_close<R, W>(rd: &mut R, wr: &mut W)
where
    R: tokio::io::AsyncRead + Unpin,
    W: tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let _ = wr.shutdown().await;
    let drain = async {
        // On the heap, and only now: a buffer in the future itself would be part of every
        // connection's task, also of the idle ones that never get here.
        let mut buf = bytes::BytesMut::with_capacity(LINGER_READ);
        loop {
            buf.clear();
            match rd.read_buf(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    let _ = tokio::time::timeout(LINGER, drain).await;
}

/// The read half of an accepted connection: tokio's readiness API, so that a connection
/// waits for bytes without holding a buffer to read them into.
pub(crate) trait ReadHalf: tokio::io::AsyncRead + Unpin + Send + Sync + 'static {
    /// Wait until the socket is (probably) readable.
    fn readable(&self) -> impl std::future::Future<Output = std::io::Result<()>> + Send;
    /// Read what the socket has without waiting (`WouldBlock` when it has nothing).
    fn try_read_buf(&self, buf: &mut bytes::BytesMut) -> std::io::Result<usize>;
    /// A read came back short, so it emptied the socket: forget the readiness it left
    /// set, as tokio's own `poll_read` does, and the next wait sleeps instead of trying a
    /// recv(2) that fails. No system call; bytes that arrive meanwhile raise a new edge.
    fn drained(&self);
}

impl ReadHalf for tokio::net::tcp::OwnedReadHalf {
    fn readable(&self) -> impl std::future::Future<Output = std::io::Result<()>> + Send {
        Self::readable(self)
    }
    fn try_read_buf(&self, buf: &mut bytes::BytesMut) -> std::io::Result<usize> {
        Self::try_read_buf(self, buf)
    }
    fn drained(&self) {
        let stream: &tokio::net::TcpStream = self.as_ref();
        let _ = stream.try_io(tokio::io::Interest::READABLE, || Err::<(), _>(std::io::ErrorKind::WouldBlock.into()));
    }
}

impl ReadHalf for tokio::net::unix::OwnedReadHalf {
    fn readable(&self) -> impl std::future::Future<Output = std::io::Result<()>> + Send {
        Self::readable(self)
    }
    fn try_read_buf(&self, buf: &mut bytes::BytesMut) -> std::io::Result<usize> {
        Self::try_read_buf(self, buf)
    }
    fn drained(&self) {
        let stream: &tokio::net::UnixStream = self.as_ref();
        let _ = stream.try_io(tokio::io::Interest::READABLE, || Err::<(), _>(std::io::ErrorKind::WouldBlock.into()));
    }
}

/// Room made in a receive buffer before a read: most requests' headers and small bodies
/// arrive in one read.
const READ_CHUNK: usize = 16 << 10;
/// Below this much room, the next read gets a fresh [`READ_CHUNK`].
const READ_MIN_ROOM: usize = 4096;
/// The buffer [`lingering_close`] discards into.
const LINGER_READ: usize = 8192;

/// Read from `rd` into `buf`. An empty buffer is freed before waiting and the room is
/// made only once the socket is readable: an idle connection (a kept-alive one between
/// requests, one that has sent nothing yet) then holds no receive buffer, which is most of
/// what a thousand of them would cost. When bytes are waiting already this is one read, and
/// a short one is the last until the socket is readable again.
pub(crate) async fn read_some<R: ReadHalf>(rd: &R, buf: &mut bytes::BytesMut) -> std::io::Result<usize> {
    loop {
        if buf.is_empty() && buf.capacity() > 0 {
            *buf = bytes::BytesMut::new();
        }
        rd.readable().await?;
        if buf.capacity() - buf.len() < READ_MIN_ROOM {
            buf.reserve(READ_CHUNK);
        }
        let room = buf.capacity() - buf.len();
        match rd.try_read_buf(buf) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Ok(n) if n > 0 && n < room => {
                rd.drained();
                return Ok(n);
            }
            r => return r,
        }
    }
}

/// The write half of an accepted connection.
pub(crate) trait WriteHalf: tokio::io::AsyncWrite + Unpin + Send + 'static {
    /// Drop without the shutdown(SHUT_WR) tokio does on drop, so that a reset armed by
    /// [`reset_on_close`] is not preceded by a FIN (which web servers read as a normal end).
    fn drop_without_fin(self);
}

impl WriteHalf for tokio::net::tcp::OwnedWriteHalf {
    fn drop_without_fin(self) {
        self.forget();
    }
}

impl WriteHalf for tokio::net::unix::OwnedWriteHalf {
    fn drop_without_fin(self) {
        self.forget();
    }
}

/// Write all of `buf` to the web server, as long as it takes some of it within `limit` of
/// each write (`send-timeout`, counted as nginx's `send_timeout` is: between writes that
/// make progress). A peer that reads nothing for that long is an error (`TimedOut`): its
/// connection is closed, and what was waiting on it is let go.
pub(crate) async fn write_within<W: tokio::io::AsyncWrite + Unpin>(
    wr: &mut W,
    mut buf: &[u8],
    limit: std::time::Duration,
) -> std::io::Result<()> {
    use std::task::Poll;
    use tokio::io::AsyncWriteExt;
    while !buf.is_empty() {
        // A write the socket takes at once arms no timer (the common case, on the request
        // path); only one that has to wait for room does.
        let now = std::future::poll_fn(|cx| match std::pin::Pin::new(&mut *wr).poll_write(cx, buf) {
            Poll::Pending => Poll::Ready(None),
            Poll::Ready(r) => Poll::Ready(Some(r)),
        })
        .await;
        let written = match now {
            Some(r) => r,
            None => tokio::time::timeout(limit, wr.write(buf))
                .await
                .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into())),
        };
        match written {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => buf = &buf[n..],
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// The socket under a connection's halves, for the few things tokio does not offer.
/// Valid while either half lives.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Sock {
    pub fd: std::os::fd::RawFd,
    pub tcp: bool,
}

impl Sock {
    /// Before signalling a cut-off: give the web server time to read (and pass on) what was
    /// already written, since a reset or an invalid record arriving in the same read makes
    /// it drop the response before its headers reach the client. On a unix socket the
    /// unread byte count is observable; over TCP it is not, so wait briefly.
    pub(crate) async fn wait_until_read(self) {
        if self.tcp {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            return;
        }
        for _ in 0..50 {
            let mut unread: libc::c_int = 0;
            // SAFETY: TIOCOUTQ (SIOCOUTQ) writes one int; `fd` is a live socket.
            let rc = unsafe { libc::ioctl(self.fd, libc::TIOCOUTQ, std::ptr::addr_of_mut!(unread)) };
            if rc != 0 || unread == 0 {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    /// After EOF: whether the peer closed the socket, rather than only shutting down its
    /// sending side (shutdown(SHUT_WR), which expects an answer). A unix socket tells the two
    /// apart (POLLHUP); over TCP both are a FIN, and a peer that is gone shows up at the first
    /// write instead.
    pub(crate) fn peer_closed(self) -> bool {
        let mut p = libc::pollfd { fd: self.fd, events: libc::POLLIN | libc::POLLRDHUP, revents: 0 };
        // SAFETY: one pollfd on the stack; a zero timeout never blocks.
        let rc = unsafe { libc::poll(std::ptr::addr_of_mut!(p), 1, 0) };
        rc > 0 && p.revents & libc::POLLHUP != 0
    }
}

/// Make the next close of a TCP connection send a reset, which web servers take as a
/// failed response (a plain FIN can look like a complete one).
pub(crate) fn reset_on_close(fd: std::os::fd::RawFd) {
    let linger = libc::linger { l_onoff: 1, l_linger: 0 };
    // SAFETY: `fd` is a socket owned by the caller's live connection; SO_LINGER takes a
    // `struct linger` of exactly this size.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            std::ptr::addr_of!(linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
}

/// A connection just accepted, before its protocol is known to the code that serves it.
enum Accepted {
    Tcp(tokio::net::TcpStream),
    Unix(tokio::net::UnixStream),
}

async fn accept(b: &Bound) -> std::io::Result<(Accepted, String)> {
    match b {
        Bound::Tcp(l) => {
            let (s, peer) = l.accept().await?;
            let _ = s.set_nodelay(true);
            Ok((Accepted::Tcp(s), peer.to_string()))
        }
        Bound::Unix { listener, .. } => {
            let (s, _) = listener.accept().await?;
            Ok((Accepted::Unix(s), "unix".to_owned()))
        }
        // Its pool's workers accept on it; no accept loop runs for it.
        Bound::Direct { .. } => std::future::pending().await,
    }
}

fn bind(cfg: &config::Listener, passed: &systemd::Passed) -> Result<Bound, ListenError> {
    let name = &cfg.name;
    let io = |what: &'static str, source: std::io::Error| ListenError::Io {
        name: name.clone(),
        addr: describe(&cfg.address),
        what,
        source,
    };
    match &cfg.address {
        ListenAddress::Tcp(addr) => {
            let sock = if addr.is_ipv4() { tokio::net::TcpSocket::new_v4() } else { tokio::net::TcpSocket::new_v6() }
                .map_err(|e| io("socket", e))?;
            sock.set_reuseaddr(true).map_err(|e| io("SO_REUSEADDR", e))?;
            // Before listen(): a connection inherits it at its handshake (Linux), also one a
            // `direct` listener's workers accept later than that, once their app is imported.
            sock.set_nodelay(true).map_err(|e| io("TCP_NODELAY", e))?;
            sock.bind(*addr).map_err(|e| {
                if e.kind() == std::io::ErrorKind::AddrInUse {
                    ListenError::InUse { name: name.clone(), addr: addr.to_string() }
                } else {
                    io("bind", e)
                }
            })?;
            let l = sock.listen(cfg.backlog).map_err(|e| io("listen", e))?;
            Ok(Bound::Tcp(l))
        }
        ListenAddress::Unix(path) => {
            clear_stale_socket(name, path)?;
            let std_l = socket_file::bind(path, cfg.backlog, socket_perms(cfg)?).map_err(|(what, e)| io(what, e))?;
            let l = UnixListener::from_std(std_l).map_err(|e| io("register", e))?;
            Ok(Bound::Unix { listener: l, path: Some(path.clone()) })
        }
        // Inherited descriptors stay open: the listener gets a duplicate, which a reload
        // that removes or refuses it closes, and a later reload may take again.
        ListenAddress::Fd(fd) => {
            let dup = systemd::duplicate(*fd).map_err(|_| ListenError::BadFd { name: name.clone(), fd: *fd })?;
            bind_fd(name, *fd, dup)
        }
        ListenAddress::Systemd(fd_name) => {
            let (fd, dup) = passed.take(fd_name).map_err(|e| ListenError::Systemd { name: name.clone(), source: e })?;
            bind_fd(name, fd, dup)
        }
    }
}

/// A reload changed `backlog`: listen(2) again on the listening socket, which Linux takes
/// as the new backlog (connections already queued stay).
fn set_backlog(l: &RunningListener, backlog: u32) {
    let name = &l.cfg.name;
    let Some(fd) = l.backlog_fd else {
        if matches!(l.cfg.address, ListenAddress::Fd(_) | ListenAddress::Systemd(_)) {
            tracing::warn!(listener = %name, "reload: backlog {backlog} not applied: the socket is passed to the bridge, its backlog is set where it is made (systemd's Backlog=)");
        } else {
            tracing::warn!(listener = %name, "reload: backlog {backlog} not applied: the workers accept on this socket (direct); it applies at the next restart");
        }
        return;
    };
    if l.task.is_finished() {
        return; // the listener stopped accepting (its socket is closed): nothing to set
    }
    // The kernel caps the value at net.core.somaxconn, as at the start (nix's Backlog
    // would cap it at 4096 instead).
    let n = libc::c_int::try_from(backlog).unwrap_or(libc::c_int::MAX);
    // SAFETY: listen(2) on a descriptor the accept loop owns and keeps open while it runs
    // (checked above); a bad descriptor would only make it fail.
    if unsafe { libc::listen(fd, n) } == 0 {
        tracing::info!(listener = %name, "reload: backlog now {backlog}");
    } else {
        let e = std::io::Error::last_os_error();
        tracing::warn!(listener = %name, "reload: backlog {backlog} not applied: listen(2): {e}");
    }
}

/// A socket file left by a bridge that died is replaced; one that a live process still
/// accepts on never is. Only ECONNREFUSED proves the file is stale.
pub(crate) fn clear_stale_socket(name: &str, path: &Path) -> Result<(), ListenError> {
    use std::os::unix::fs::FileTypeExt;
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => {
            return Err(ListenError::Io {
                name: name.to_owned(),
                addr: path.display().to_string(),
                what: "stat",
                source: e,
            })
        }
    };
    if !meta.file_type().is_socket() {
        return Err(ListenError::NotASocket { name: name.to_owned(), path: path.display().to_string() });
    }
    match std::os::unix::net::UnixStream::connect(path) {
        Ok(_) => Err(ListenError::InUse { name: name.to_owned(), addr: format!("unix:{}", path.display()) }),
        Err(e) if e.raw_os_error() == Some(libc::ECONNREFUSED) => {
            tracing::info!(listener = name, "replacing stale socket file {}", path.display());
            std::fs::remove_file(path).map_err(|source| ListenError::Io {
                name: name.to_owned(),
                addr: path.display().to_string(),
                what: "remove stale socket",
                source,
            })
        }
        // EAGAIN: alive but its backlog is full; EACCES etc.: not ours to judge. Keep it.
        Err(e) => Err(ListenError::Io {
            name: name.to_owned(),
            addr: path.display().to_string(),
            what: "probing existing socket file",
            source: e,
        }),
    }
}

/// The listener's `socket-mode`, `socket-owner` and `socket-group`, names looked up.
fn socket_perms(cfg: &config::Listener) -> Result<socket_file::SocketPerms, ListenError> {
    Ok(socket_file::SocketPerms {
        mode: cfg.socket_mode,
        owner: cfg.socket_owner.as_deref().map(|u| lookup_user(&cfg.name, u)).transpose()?,
        group: cfg.socket_group.as_deref().map(|g| lookup_group(&cfg.name, g)).transpose()?,
    })
}

/// A reload's new `socket-*` values, applied to the kept socket at `path`
/// ([`socket_file::set`]: never more open on the way than both the old and new values).
fn apply_socket_perms(cfg: &config::Listener, path: &Path) -> Result<(), ListenError> {
    socket_file::set(path, socket_perms(cfg)?).map_err(|(what, source)| ListenError::Io {
        name: cfg.name.clone(),
        addr: path.display().to_string(),
        what,
        source,
    })
}

fn lookup_user(listener: &str, u: &str) -> Result<nix::unistd::Uid, ListenError> {
    if let Ok(n) = u.parse::<u32>() {
        return Ok(nix::unistd::Uid::from_raw(n));
    }
    match nix::unistd::User::from_name(u) {
        Ok(Some(user)) => Ok(user.uid),
        _ => Err(ListenError::NoSuchId { name: listener.to_owned(), which: "owner", value: u.to_owned() }),
    }
}

fn lookup_group(listener: &str, g: &str) -> Result<nix::unistd::Gid, ListenError> {
    if let Ok(n) = g.parse::<u32>() {
        return Ok(nix::unistd::Gid::from_raw(n));
    }
    match nix::unistd::Group::from_name(g) {
        Ok(Some(group)) => Ok(group.gid),
        _ => Err(ListenError::NoSuchId { name: listener.to_owned(), which: "group", value: g.to_owned() }),
    }
}

/// An inherited listening socket (spawned mode: fd 0, FCGI_LISTENSOCK_FILENO).
fn bind_fd(name: &str, fd: i32, owned: OwnedFd) -> Result<Bound, ListenError> {
    use nix::sys::socket::{getsockname, getsockopt, sockopt, AddressFamily, SockaddrLike, SockaddrStorage};
    let bad = || ListenError::BadFd { name: name.to_owned(), fd };
    let listening = getsockopt(&owned, sockopt::AcceptConn).map_err(|_| bad())?;
    if !listening {
        return Err(bad());
    }
    let family = getsockname::<SockaddrStorage>(owned.as_raw_fd()).map_err(|_| bad())?.family();
    let io = |source| ListenError::Io { name: name.to_owned(), addr: format!("fd:{fd}"), what: "register", source };
    match family {
        Some(AddressFamily::Unix) => {
            let l = std::os::unix::net::UnixListener::from(owned);
            l.set_nonblocking(true).map_err(io)?;
            Ok(Bound::Unix { listener: UnixListener::from_std(l).map_err(io)?, path: None })
        }
        Some(AddressFamily::Inet) | Some(AddressFamily::Inet6) => {
            let l = std::net::TcpListener::from(owned);
            l.set_nonblocking(true).map_err(io)?;
            Ok(Bound::Tcp(TcpListener::from_std(l).map_err(io)?))
        }
        _ => Err(bad()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_tcp_listener_sends_without_delay() {
        use nix::sys::socket::{getsockopt, sockopt};
        let cfg = config::Listener::for_tests("t", 0);
        let Ok(Bound::Tcp(l)) = bind(&cfg, &systemd::Passed::from_env()) else { panic!("a TCP listener") };
        // Connections inherit it at their handshake: a `direct` listener's workers accept
        // them later, once their app is imported.
        assert_eq!(getsockopt(&l, sockopt::TcpNoDelay).ok(), Some(true));
    }

    #[test]
    fn the_outcome_names_moves_and_renames_only_when_there_are_some() {
        let o = Outcome { added: vec!["new".into()], ..Default::default() };
        assert_eq!(o.summary(), "listeners added: new; changed: none; removed: none");
        let o = Outcome {
            changed: vec!["b".into()],
            moved: vec!["m (127.0.0.1:9000 -> 127.0.0.1:9001)".into()],
            renamed: vec!["a -> b".into(), "b -> a".into()],
            ..Default::default()
        };
        assert_eq!(
            o.summary(),
            "listeners added: none; changed: b; removed: none; moved: m (127.0.0.1:9000 -> 127.0.0.1:9001); \
             renamed: a -> b, b -> a"
        );
    }

    #[test]
    fn the_outcome_reads_as_the_configuration_changed_by_name() {
        let at = |name: &str, port: u16| config::Listener {
            address: ListenAddress::Tcp(([127, 0, 0, 1], port).into()),
            ..config::Listener::for_tests(name, 0)
        };
        let line = |before: &[config::Listener], after: &[config::Listener], sockets: &[(&str, &str)]| {
            let sockets: Vec<(String, String)> = sockets.iter().map(|(a, b)| ((*a).into(), (*b).into())).collect();
            Outcome::of(before, after, &sockets).summary()
        };
        // a takes b's address (the bridge keeps b's socket for it), b goes: b removed, a moved.
        assert_eq!(
            line(&[at("a", 1), at("b", 2)], &[at("a", 2)], &[("b", "a")]),
            "listeners added: none; changed: none; removed: b; moved: a (127.0.0.1:1 -> 127.0.0.1:2)"
        );
        // A new name on a kept socket whose old name is gone: renamed, with its settings.
        assert_eq!(
            line(&[at("a", 1)], &[config::Listener { backlog: 7, ..at("x", 1) }], &[("a", "x")]),
            "listeners added: none; changed: x; removed: none; renamed: a -> x"
        );
        // Nothing else to say for a listener that stayed as it was.
        assert_eq!(line(&[at("a", 1)], &[at("a", 1)], &[]), "listeners added: none; changed: none; removed: none");
    }

    /// Open connections the status page shows for each of `names`, waited for until they
    /// are `want` (an accept is the listener task's, a little later than the connect).
    async fn wait_open(registry: &Registry, names: &[&str], want: &[usize]) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            let now: Vec<usize> = registry
                .track
                .with_state(|s| names.iter().map(|n| crate::status::track::open_connections(s, n)).collect());
            if now == want {
                return;
            }
            assert!(std::time::Instant::now() < deadline, "open connections of {names:?}: {now:?}, not {want:?}");
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }

    #[tokio::test]
    async fn a_reload_says_which_kept_sockets_were_renamed_and_counts_their_connections_under_the_new_name() {
        let d = crate::scratch::scratch_dir("renamed");
        let at = |name: &str, file: &str| config::Listener {
            address: ListenAddress::Unix(d.join(file)),
            ..config::Listener::for_tests(name, 0)
        };
        let registry = Arc::new(Registry::new(None, 1 << 20, Vec::new(), Default::default()));
        let pools = HashMap::from([("p".to_owned(), PoolRuntime::new(config::Pool::for_tests()))]);
        let first = [at("a", "1.sock"), at("b", "2.sock")];
        let bound = bind_all(&first, &systemd::Passed::default()).unwrap();
        let mut set = ListenerSet::start(&first, bound, &pools, registry.clone()).unwrap();
        let mut reload = |config: &[config::Listener]| {
            let fresh = set.bind_new(config).unwrap();
            set.apply(config, fresh, &pools).unwrap()
        };
        // A web server's connection to 1.sock, open across the reloads.
        let _conn = tokio::net::UnixStream::connect(d.join("1.sock")).await.unwrap();
        wait_open(&registry, &["a", "b"], &[1, 0]).await;

        let renamed = [at("c", "1.sock"), at("b", "2.sock")];
        assert_eq!(reload(&renamed), "listeners added: none; changed: none; removed: none; renamed: a -> c");
        wait_open(&registry, &["a", "b", "c"], &[0, 0, 1]).await;

        // Swapped addresses: each socket keeps its connections, under its new name; the
        // line says it by name, as the configuration reads.
        let sock = |file: &str| format!("unix:{}", d.join(file).display());
        let swapped = [at("c", "2.sock"), at("b", "1.sock")];
        assert_eq!(
            reload(&swapped),
            format!(
                "listeners added: none; changed: none; removed: none; moved: c ({} -> {}), b ({} -> {})",
                sock("1.sock"),
                sock("2.sock"),
                sock("2.sock"),
                sock("1.sock")
            )
        );
        wait_open(&registry, &["b", "c"], &[1, 0]).await;

        // Moved round, with other settings too: c onto b's socket (1.sock), b to a new one.
        // The socket c had (2.sock) stops; c is not said removed, since it goes on.
        let rotated = [config::Listener { max_params: 4096, ..at("c", "1.sock") }, at("b", "3.sock")];
        assert_eq!(
            reload(&rotated),
            format!(
                "listeners added: none; changed: c; removed: none; moved: c ({} -> {}), b ({} -> {})",
                sock("2.sock"),
                sock("1.sock"),
                sock("1.sock"),
                sock("3.sock")
            )
        );
        wait_open(&registry, &["b", "c"], &[0, 1]).await;
        assert!(!d.join("2.sock").exists());
        set.stop_accepting();
    }

    #[test]
    fn stale_socket_is_replaced() {
        let d = crate::scratch::scratch_dir("stale");
        let p = d.join("stale.sock");
        // A bound socket whose listener is gone: connecting gives ECONNREFUSED.
        let l = std::os::unix::net::UnixListener::bind(&p).ok();
        drop(l);
        assert!(p.exists());
        assert!(clear_stale_socket("t", &p).is_ok());
        assert!(!p.exists());
    }

    #[test]
    fn live_socket_is_kept() {
        let d = crate::scratch::scratch_dir("live");
        let p = d.join("live.sock");
        let l = std::os::unix::net::UnixListener::bind(&p);
        assert!(l.is_ok());
        let err = clear_stale_socket("t", &p).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("address in use by a running process"), "{err}");
        assert!(p.exists());
        drop(l);
    }

    #[test]
    fn regular_file_is_not_replaced() {
        let d = crate::scratch::scratch_dir("file");
        let p = d.join("file.sock");
        let _ = std::fs::write(&p, b"x");
        assert!(matches!(clear_stale_socket("t", &p), Err(ListenError::NotASocket { .. })));
    }

    #[test]
    fn missing_file_is_fine() {
        let d = crate::scratch::scratch_dir("none");
        assert!(clear_stale_socket("t", &d.join("none.sock")).is_ok());
    }

    /// Whether tokio would let a read through now, without making one: try_io calls its
    /// closure only while the socket is marked readable.
    fn marked_readable(rd: &tokio::net::unix::OwnedReadHalf) -> bool {
        let stream: &tokio::net::UnixStream = rd.as_ref();
        let mut asked = false;
        let _ = stream.try_io(tokio::io::Interest::READABLE, || {
            asked = true;
            Err::<(), _>(std::io::ErrorKind::WouldBlock.into())
        });
        asked
    }

    #[tokio::test]
    async fn a_short_read_leaves_the_socket_waiting_not_marked_readable() {
        use tokio::io::AsyncWriteExt;
        let (a, mut b) = tokio::net::UnixStream::pair().unwrap();
        let (rd, _wr) = a.into_split();
        let mut buf = bytes::BytesMut::new();
        b.write_all(b"one request").await.unwrap();
        assert_eq!(read_some(&rd, &mut buf).await.unwrap(), 11);
        // Without `drained`, the next wait would return at once and its recv(2) fail.
        assert!(!marked_readable(&rd), "a short read emptied the socket");
        b.write_all(b" and the next").await.unwrap();
        let n =
            tokio::time::timeout(std::time::Duration::from_secs(10), read_some(&rd, &mut buf)).await.unwrap().unwrap();
        assert_eq!((n, &buf[..]), (13, &b"one request and the next"[..]));
    }

    #[tokio::test]
    async fn the_end_behind_a_short_read_is_still_seen() {
        use tokio::io::AsyncWriteExt;
        let (a, mut b) = tokio::net::UnixStream::pair().unwrap();
        let (rd, _wr) = a.into_split();
        b.write_all(b"last words").await.unwrap();
        b.shutdown().await.unwrap();
        drop(b);
        // Let the runtime see the data and the close as one readiness before reading.
        rd.readable().await.unwrap();
        let mut buf = bytes::BytesMut::new();
        assert_eq!(read_some(&rd, &mut buf).await.unwrap(), 10);
        let end = tokio::time::timeout(std::time::Duration::from_secs(10), read_some(&rd, &mut buf)).await;
        assert_eq!(end.expect("the close is not lost").unwrap(), 0);
    }
}
