//! A listener's context: what every connection of one listener shares (its routes, limits
//! and settings, and the daemon's registry), and how a reload replaces it.
use crate::config::Protocol;
use crate::registry::Registry;
use crate::route::Router;
use fastcgi_server::Limits;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::sync::watch;

/// What every connection of one listener shares.
pub(crate) struct ListenerCtx {
    pub name: String,
    pub router: Router<crate::supervise::instances::Target>,
    pub limits: Limits,
    /// FCGI_MAX_REQS: requests the pools behind this listener take without a 503, and the
    /// most one FastCGI connection may have in flight (listen/fastcgi.rs).
    pub max_reqs: usize,
    /// `max-connections` (reported as FCGI_MAX_CONNS): beyond it new connections are closed at once.
    pub max_conns: usize,
    /// `header-timeout`: from a request's first byte until its headers are complete.
    pub header_timeout: std::time::Duration,
    /// `body-timeout`: the longest wait for the next body byte (dispatch/request_body_limits.rs).
    pub body_timeout: std::time::Duration,
    /// `body-min-rate`: bytes a second a body must average once `body-timeout` has passed.
    pub body_min_rate: u64,
    /// `send-timeout`: the longest a write to the web server may wait for room.
    pub send_timeout: std::time::Duration,
    /// `keepalive-timeout`: the longest a kept FastCGI connection may sit with no request.
    pub keepalive_timeout: std::time::Duration,
    /// Open connections of this context's socket, shared by the contexts a reload makes
    /// for it (the status page sums a listener's sockets: a moved one's old socket too).
    pub open_conns: Arc<AtomicUsize>,
    /// The daemon's process-wide state (registry.rs).
    pub registry: Arc<Registry>,
    /// `status-path` and `ping-path`: answered by the bridge itself (status/front.rs).
    pub status_path: Option<String>,
    pub ping_path: Option<String>,
    /// Becomes true on SIGTERM: connections close once their requests are done.
    pub stopping: watch::Receiver<bool>,
    /// The web server in front, for internal redirects it must finish (respond/redirect.rs).
    pub dialect: crate::config::Dialect,
    /// Internal redirects one request may take.
    pub max_redirects: u32,
    /// What a local redirect to an unrouted path becomes behind a server other than nginx.
    pub unrouted_redirect: crate::config::UnroutedRedirect,
    /// Which pools an app's local redirect is followed into (`redirect-pools`).
    pub redirect_pools: crate::config::RedirectPools,
    /// Proxies whose forwarding headers are believed (listen/proxy.rs); None: no scan.
    pub trusted_proxies: Option<crate::config::TrustedProxies>,
    /// `allowed-clients`: TCP peers outside it are closed at accept (listen/allow.rs).
    pub allowed_clients: Option<Vec<crate::config::Cidr>>,
    /// `file-handoff: serve | translate` (respond/file_handoff.rs); None (`pass`): headers pass untouched.
    pub files: Option<Arc<crate::respond::file_handoff::Files>>,
    /// `mount`: SCRIPT_NAME for requests no prefix route mounted.
    pub mount: Option<String>,
    /// `path-info: keep`: leave SCRIPT_NAME / PATH_INFO as the web server sent them.
    pub keep_path_info: bool,
    pub protocol: Protocol,
    /// Replaced by a reload (see [`ListenerCtx::latest`]).
    pub succession: Succession,
}

/// How a reload hands a listener's connections to its new settings: the old context
/// points to the new one, and connections switch at their next request (one relaxed load
/// per request, no lock).
#[derive(Default)]
pub(crate) struct Succession {
    superseded: std::sync::atomic::AtomicBool,
    next: std::sync::Mutex<Option<Arc<ListenerCtx>>>,
}

impl ListenerCtx {
    /// True when a reload has replaced this context.
    #[inline]
    pub(crate) fn superseded(&self) -> bool {
        self.succession.superseded.load(Ordering::Relaxed)
    }

    /// The newest context of this listener (after reloads).
    pub(crate) fn latest(self: &Arc<Self>) -> Arc<Self> {
        let mut ctx = self.clone();
        while ctx.superseded() {
            let next = ctx.succession.next.lock().unwrap_or_else(|e| e.into_inner()).clone();
            match next {
                Some(n) => ctx = n,
                None => break,
            }
        }
        ctx
    }

    /// A request the front answers itself with `status` before it is served (a bad
    /// CONTENT_LENGTH, headers past `max-params`): on the status page as any other request
    /// of the listener.
    pub(super) fn count_refused(&self, status: u16) {
        self.registry.track.accepted(&self.name);
        self.registry.track.finished(&self.name, None, status, std::time::Duration::ZERO);
    }

    pub(super) fn succeed(&self, next: Arc<Self>) {
        *self.succession.next.lock().unwrap_or_else(|e| e.into_inner()) = Some(next);
        self.succession.superseded.store(true, Ordering::Release);
    }
}
