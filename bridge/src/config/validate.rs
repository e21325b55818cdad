//! Merging the files: each global key set once, names unique across files, routes
//! pointing at real pools, no two listeners on one address, at least one listener.
use super::error::{At, ConfigError, Source};
use super::file::{RawBridge, RawFile};
use super::hint;
use super::locate::{KeyPath, Seg};
use super::model::{Config, Global, ListenAddress, Listener, LogFormat, Pool};
use super::{paths, resolve};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub(super) const DEFAULT_LOG_LEVEL: &str = "info";
pub(super) const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);
/// `header-memory`: room for full queues of several pools (each waiting request holds its headers, up to 64 KiB
/// of body read ahead and 16 KiB of bookkeeping) while bounding what clients can pin.
pub(super) const DEFAULT_HEADER_MEMORY: u64 = 256 << 20;

/// One parsed file, ready to merge.
pub(super) struct Parsed {
    pub source: Source,
    /// Absolute directory of the file: relative paths inside it resolve here.
    pub dir: PathBuf,
    pub raw: RawFile,
    /// Keys taken out of the file after errors on them (config/recover.rs).
    pub dropped: Vec<KeyPath>,
}

/// The `bridge:` keys that place the control socket.
pub(super) const SOCKET_KEYS: [&str; 2] = ["runtime-dir", "control-socket"];

/// Those keys of parsed files alone, the rest of the files unchecked (a [`Global`] with
/// defaults otherwise); `None` when they cannot be known: an error on one of them, or on
/// the `bridge:` section holding them.
pub(super) fn socket_keys(files: Vec<Parsed>) -> Option<Global> {
    let mut global = GlobalBuilder::default();
    for Parsed { source, dir, raw, dropped } in files {
        let lost = dropped.iter().any(|d| match &d.0[..] {
            [Seg::Key(b)] => b == "bridge",
            [Seg::Key(b), Seg::Key(k), ..] => b == "bridge" && SOCKET_KEYS.contains(&k.as_str()),
            _ => false,
        });
        if lost {
            return None;
        }
        if let Some(bridge) = raw.bridge {
            let keys = RawBridge {
                runtime_dir: bridge.runtime_dir,
                control_socket: bridge.control_socket,
                ..RawBridge::default()
            };
            global.add(&source, &dir, keys).ok()?;
        }
    }
    Some(global.finish())
}

/// Combine parsed files (in name order) into the effective configuration. `errors` holds
/// those found while reading the files, `incomplete` says a file could not be read to its
/// end; every pool and listener is still checked, and all the errors are returned together.
pub(super) fn merge(
    dir_shown: &str,
    files: Vec<Parsed>,
    opts: super::LoadOptions<'_>,
    mut errors: Vec<ConfigError>,
    incomplete: bool,
) -> Result<Config, ConfigError> {
    let mut files_unreadable = incomplete;
    let mut listeners_written = 0usize;
    // Pools written but refused: routes to them are not reported again as unknown.
    let mut broken_pools: Vec<String> = Vec::new();
    let mut global = GlobalBuilder::default();
    let mut pools: Vec<(Pool, At)> = Vec::new();
    let mut templates: Vec<super::template::Template> = Vec::new();
    let mut listeners: Vec<(Listener, usize)> = Vec::new();
    let mut listener_at: Vec<At> = Vec::new();
    let mut sources: Vec<Source> = Vec::new();
    let mut pool_warnings: Vec<String> = Vec::new();

    for (file_no, parsed) in files.into_iter().enumerate() {
        let Parsed { source, dir, raw, dropped } = parsed;
        // What a key taken out after a parse error held is not reported missing again.
        let mut keep = |e: ConfigError| errors.extend(flatten(e).into_iter().filter(|e| !follows_from(e, &dropped)));
        let (pools_lost, listeners_lost) = note_dropped(&dropped, &mut broken_pools);
        files_unreadable |= pools_lost;
        listeners_written += listeners_lost;
        if let Some(bridge) = raw.bridge {
            if let Err(e) = global.add(&source, &dir, bridge) {
                keep(e);
            }
        }
        for (name, raw_pool) in raw.pools.map(|p| p.0).unwrap_or_default() {
            let path = KeyPath::of(&["pools", &name]);
            if let Some((_, first)) = pools.iter().find(|(p, _)| p.name == name) {
                keep(source.invalid(&path, format!("pool {name:?} is already defined at {first}")));
                continue;
            }
            if let Some(t) = templates.iter().find(|t| t.name == name) {
                keep(source.invalid(&path, format!("pool {name:?} is already defined (a template) in {}", t.file)));
                continue;
            }
            if raw_pool.template.is_some() {
                match super::template::resolve(&source, &dir, &name, raw_pool, opts) {
                    Ok(t) => templates.push(t),
                    Err(e) => {
                        keep(e);
                        broken_pools.push(name);
                    }
                }
                continue;
            }
            pool_warnings.extend(resolve::touch_reload_warnings(&source, &name, &dir, &raw_pool));
            match resolve::pool(&source, &dir, &name, raw_pool, opts, &mut pool_warnings) {
                Ok(pool) => pools.push((pool, source.at(&path))),
                Err(e) => {
                    keep(e);
                    broken_pools.push(name);
                }
            }
        }
        for (name, raw_listener) in raw.listeners.map(|l| l.0).unwrap_or_default() {
            listeners_written += 1;
            let path = KeyPath::of(&["listeners", &name]);
            if let Some(i) = listeners.iter().position(|(l, _)| l.name == name) {
                let first = &listener_at[i];
                keep(source.invalid(&path, format!("listener {name:?} is already defined at {first}")));
                continue;
            }
            match resolve::listener(&source, &dir, &name, raw_listener) {
                Ok(listener) => {
                    listeners.push((listener, file_no));
                    listener_at.push(source.at(&path));
                }
                Err(e) => keep(e),
            }
        }
        sources.push(source);
    }

    if listeners_written == 0 && !files_unreadable {
        errors.push(ConfigError::NoListeners { dir: dir_shown.to_owned() });
    }
    // Routes and addresses are checked among what resolved; a file that could not be read
    // may define the pools its routes name.
    if !files_unreadable {
        errors.extend(check_targets(&listeners, &mut pools, (&broken_pools, &templates), &sources));
    }
    errors.extend(check_addresses(&listeners, &sources, &global));
    errors.extend(check_dirs(&listeners, &sources, &global, opts));
    ConfigError::from_all(errors)?;
    super::template::fit_to_listeners(&mut templates, &listeners.iter().map(|(l, _)| l).collect::<Vec<_>>());
    Ok(Config {
        warnings: pool_warnings.into_iter().chain(warnings(&global, &listeners, &sources, opts)).collect(),
        global: global.finish(),
        pools: with_ready_check_hosts(pools, &listeners),
        listeners: listeners.into_iter().map(|(l, _)| l).collect(),
        templates,
    })
}

/// The pools, a `ready-check` that names no host given the host of the first route naming
/// its pool, as the web server would send a request that reaches it (apps check Host:
/// Django's ALLOWED_HOSTS).
fn with_ready_check_hosts(pools: Vec<(Pool, At)>, listeners: &[(Listener, usize)]) -> Vec<Pool> {
    let route_host = |pool: &str| {
        listeners.iter().flat_map(|(l, _)| &l.routes).find_map(|r| r.host.clone().filter(|_| r.pool == pool))
    };
    pools
        .into_iter()
        .map(|(mut pool, _)| {
            if let Some(check) = pool.ready_check.as_mut().filter(|c| c.host.is_none()) {
                check.host = route_host(&pool.name);
            }
            pool.listened_at = addresses_leading_to(&pool.name, listeners.iter().map(|(l, _)| l));
            pool
        })
        .collect()
}

/// The `listeners` with a route to `pool` (or a template), each as its key and address are
/// written (`fastcgi: 127.0.0.1:9000`, `scgi: unix:/run/app.sock`): the protocol too, since
/// a flup SCGI script's address needs an `scgi:` listener. A passed socket (fd:, systemd:)
/// has no address here.
pub(super) fn addresses_leading_to<'a>(pool: &str, listeners: impl Iterator<Item = &'a Listener>) -> Vec<String> {
    listeners
        .filter(|l| l.routes.iter().any(|r| r.pool == pool))
        .filter_map(|l| {
            let address = match &l.address {
                super::model::ListenAddress::Tcp(a) => a.to_string(),
                super::model::ListenAddress::Unix(p) => format!("unix:{}", p.display()),
                super::model::ListenAddress::Fd(_) | super::model::ListenAddress::Systemd(_) => return None,
            };
            Some(format!("{}: {address}", protocol_key(l)))
        })
        .collect()
}

/// Keys a parse error took out of a file: whether they were all its pools, and how many
/// listeners they were; pools taken out one by one are added to `broken_pools`.
fn note_dropped(dropped: &[KeyPath], broken_pools: &mut Vec<String>) -> (bool, usize) {
    let (mut pools_lost, mut listeners_lost) = (false, 0);
    for d in dropped {
        match &d.0[..] {
            [Seg::Key(s)] if s == "pools" => pools_lost = true,
            [Seg::Key(s), Seg::Key(name)] if s == "pools" => broken_pools.push(name.clone()),
            [Seg::Key(s), ..] if s == "listeners" => listeners_lost += 1,
            _ => {}
        }
    }
    (pools_lost, listeners_lost)
}

fn flatten(e: ConfigError) -> Vec<ConfigError> {
    match e {
        ConfigError::Several(all) => all,
        e => vec![e],
    }
}

/// Whether `e` is only the absence of a key taken out after a parse error: an error on that
/// key or inside it, a "missing key" of the mapping that held it, or any error of a mapping
/// whose merge key (`<<`) was taken out.
fn follows_from(e: &ConfigError, dropped: &[KeyPath]) -> bool {
    let ConfigError::Invalid { key, message, .. } = e else { return false };
    let under = |inner: &str, outer: &str| {
        inner == outer || inner.strip_prefix(outer).is_some_and(|rest| rest.starts_with('.') || rest.starts_with('['))
    };
    // A merge (`<<: *anchor`) set aside takes every key it held: what its mapping as a
    // whole then lacks (the app, allow-root) follows from it; its own keys still count.
    let merged_into = |d: &str| d.strip_suffix(".<<") == Some(key.as_str());
    dropped
        .iter()
        .map(ToString::to_string)
        .any(|d| under(key, &d) || (under(&d, key) && message.starts_with("missing key")) || merged_into(&d))
}

fn check_routes(
    listeners: &[(Listener, usize)],
    pools: &[(Pool, At)],
    broken: &[String],
    sources: &[Source],
) -> Vec<ConfigError> {
    let mut errs = Vec::new();
    let names: Vec<&str> =
        pools.iter().map(|(p, _)| p.name.as_str()).chain(broken.iter().map(String::as_str)).collect();
    for (listener, file_no) in listeners {
        let source = &sources[*file_no];
        let single =
            listener.routes.len() == 1 && listener.routes[0].host.is_none() && listener.routes[0].prefix.is_none();
        for (i, route) in listener.routes.iter().enumerate() {
            if names.contains(&route.pool.as_str()) {
                continue;
            }
            let base = KeyPath::of(&["listeners", &listener.name]);
            // `pool: x` is stored as one route; point at whichever key was written.
            let key = if single && source.index.find(&base.key("pool")).is_some() {
                base.key("pool")
            } else {
                base.key("routes").index(i).key("pool")
            };
            let known = if names.is_empty() {
                "; no pools are defined".to_owned()
            } else {
                hint::suggestion(&route.pool, &names)
            };
            errs.push(source.invalid(&key, format!("unknown pool {:?}{known}", route.pool)));
        }
    }
    errs
}

/// Where the listeners' routes lead: to pools and templates that exist, captures to
/// templates that use them, `direct` listeners to pools fit for them.
fn check_targets(
    listeners: &[(Listener, usize)],
    pools: &mut [(Pool, At)],
    (broken, templates): (&[String], &[super::template::Template]),
    sources: &[Source],
) -> Vec<ConfigError> {
    let mut known = broken.to_vec();
    known.extend(templates.iter().map(|t| t.name.clone()));
    let mut errors = check_routes(listeners, pools, &known, sources);
    // A route to a pool refused or unknown is reported once, for that.
    let written: Vec<&str> = pools.iter().map(|(p, _)| p.name.as_str()).collect();
    errors.extend(check_captures(listeners, (&written, templates), sources));
    errors.extend(check_direct(listeners, pools, templates, sources));
    errors
}

/// A `direct` listener's keys that need the bridge on the request path, or that make it
/// other than one FastCGI socket to one pool.
fn direct_listener_refusals(l: &Listener, src: &Source) -> Vec<ConfigError> {
    let key = |k: &str| KeyPath::of(&["listeners", &l.name, k]);
    let written = |k: &str| src.index.written(&key(k));
    let mut errs = Vec::new();
    if l.protocol == super::model::Protocol::Scgi {
        errs.push(src.invalid(
            &key("scgi"),
            "a `direct` listener speaks FastCGI only (its workers do): write `fastcgi:`, or remove `direct`",
        ));
    }
    if written("routes") {
        errs.push(src.invalid(
            &key("routes"),
            "a `direct` listener serves one pool: name it with `pool:` instead of `routes:`, or remove `direct`",
        ));
    }
    // The redirect keys that decide what the bridge does with a redirect it does not
    // follow: a direct listener's workers follow every local redirect, into their pool.
    if l.dialect != super::model::Dialect::Generic {
        errs.push(src.invalid(&key("dialect"), format!("dialect {DIRECT_FOLLOWS_REDIRECTS}")));
    }
    for k in ["redirect-pools", "unrouted-redirect"].into_iter().filter(|k| written(k)) {
        errs.push(src.invalid(&key(k), format!("{k} {DIRECT_FOLLOWS_REDIRECTS}")));
    }
    let set = [("file-handoff", l.file_handoff != super::model::FileHandoff::Pass)];
    let keys = [
        "file-map",
        "file-roots",
        "file-hand-back",
        "max-ranges",
        "status-path",
        "ping-path",
        "trusted-proxies",
        "trusted-proxy-headers",
        "allowed-clients",
        "max-params",
        "max-connections",
        "body-timeout",
        "body-min-rate",
        "send-timeout",
        "keepalive-timeout",
    ];
    let refused =
        set.into_iter().filter(|(_, set)| *set).map(|(k, _)| k).chain(keys.into_iter().filter(|k| written(k)));
    for k in refused {
        errs.push(src.invalid(&key(k), format!("{k} {DIRECT_NEEDS_BRIDGE}; remove it, or `direct`")));
        // (The pool's keys are refused in the same words, naming this listener: check_direct.)
    }
    errs
}

/// Why the keys for redirects the bridge would not follow are refused next to `direct: true`.
const DIRECT_FOLLOWS_REDIRECTS: &str =
    "has nothing to decide on a `direct` listener: its workers follow an app's local \
     redirects themselves, and every path is its one pool's (`max-redirects` applies; docs/direct.md); remove it, or \
     `direct`";

/// The end of every refusal of a key that needs the bridge next to `direct: true`.
const DIRECT_NEEDS_BRIDGE: &str =
    "needs the bridge on the request path; a `direct` listener hands connections to the workers (docs/direct.md)";

/// Each `direct` listener's pool: served by that listener alone, a WSGI app of the native
/// worker in a static pool, with no key that needs the bridge on the request path. The
/// pools that pass learn what their workers are told of the listener (`Pool::direct`).
fn check_direct(
    listeners: &[(Listener, usize)],
    pools: &mut [(Pool, At)],
    templates: &[super::template::Template],
    sources: &[Source],
) -> Vec<ConfigError> {
    use super::supervision::{Mode, DEFAULT_ABORT_GRACE};
    let mut errs = Vec::new();
    for (listener, file_no) in listeners.iter().filter(|(l, _)| l.direct) {
        errs.extend(direct_listener_refusals(listener, &sources[*file_no]));
        let at = sources[*file_no].at(&KeyPath::of(&["listeners", &listener.name, "direct"]));
        let Some(name) = listener.routes.first().map(|r| r.pool.as_str()) else { continue };
        let others: Vec<&str> = listeners
            .iter()
            .filter(|(l, _)| l.name != listener.name && l.routes.iter().any(|r| r.pool == name))
            .map(|(l, _)| l.name.as_str())
            .collect();
        let pool_key = KeyPath::of(&["listeners", &listener.name, "pool"]);
        if !others.is_empty() {
            let msg = format!(
                "pool {name:?} is also a route target of listener {}: a `direct` listener's pool serves only its \
                 socket; give the other listener its own pool, or remove `direct` (set at {at})",
                others.join(", ")
            );
            errs.push(sources[*file_no].invalid(&pool_key, msg));
        }
        if templates.iter().any(|t| t.name == name) {
            let msg = format!(
                "{name:?} is a template: a `direct` listener's workers are started with it, so it serves a pool \
                 (write one under `pools:` without `template:`), or remove `direct` (set at {at})"
            );
            errs.push(sources[*file_no].invalid(&pool_key, msg));
        }
        // An unknown pool is reported by check_routes.
        let Some(i) = pools.iter().position(|(p, _)| p.name == name) else { continue };
        let (pool, pool_at) = &pools[i];
        let Some(src) = sources.iter().find(|s| s.file == pool_at.file) else { continue };
        let key = |k: &str| KeyPath::of(&["pools", name, k]);
        let written = |k: &str| src.index.written(&key(k));
        let why_not = |k: &str, m: &str| {
            src.invalid(&key(k), format!("{m}; listener {:?} is `direct` (set at {at})", listener.name))
        };
        let mut refused = Vec::new();
        if matches!(pool.app, super::model::App::Command(_)) {
            refused.push(why_not(
                "command",
                "a `direct` listener's pool runs the native worker: write `app:`, not `command:`",
            ));
        }
        if pool.supervision.mode != Mode::Static {
            refused.push(why_not(
                "mode",
                "a `direct` pool runs `mode: static` (dynamic and ondemand sizing need the bridge to see the requests)",
            ));
        }
        if pool.ready_check.is_some() {
            refused
                .push(why_not("ready-check", "ready-check needs the bridge's own connection to a worker; remove it"));
        }
        let needs_bridge = [
            ("error-pages", !pool.error_pages.is_empty()),
            // Only the dispatcher counts a body (request_body_limits.rs): no worker would.
            ("max-body", pool.max_body.is_some()),
            ("queue-size", written("queue-size")),
            ("queue-timeout", written("queue-timeout")),
            ("abort-grace", pool.supervision.abort_grace != Some(DEFAULT_ABORT_GRACE) || written("abort-grace")),
            ("unknown-length-body", written("unknown-length-body")),
        ];
        for (k, _) in needs_bridge.iter().filter(|(_, set)| *set) {
            let m = format!(
                "{k} {DIRECT_NEEDS_BRIDGE}; remove it, or `direct` on listener {:?} (set at {at})",
                listener.name
            );
            refused.push(src.invalid(&key(k), m));
        }
        if refused.is_empty() && others.is_empty() {
            pools[i].0.direct = Some(super::model::DirectServe {
                listener: listener.name.clone(),
                mount: listener.mount.clone(),
                keep_path_info: listener.keep_path_info,
                header_timeout: listener.header_timeout,
                max_redirects: listener.max_redirects,
            });
        }
        errs.extend(refused);
    }
    errs
}

/// A route prefix that captures a placeholder (`/~{user}`) must lead to a template that
/// uses it. A route to a pool neither in `pools` nor in `templates` (refused, or unknown)
/// is not reported here: its pool's error says why.
fn check_captures(
    listeners: &[(Listener, usize)],
    (pools, templates): (&[&str], &[super::template::Template]),
    sources: &[Source],
) -> Vec<ConfigError> {
    let mut errs = Vec::new();
    for (listener, file_no) in listeners {
        for (i, route) in listener.routes.iter().enumerate() {
            let Some(Ok(Some(p))) = route.prefix.as_deref().map(super::template::route_capture) else { continue };
            let template = templates.iter().find(|t| t.name == route.pool);
            if template.is_some_and(|t| t.keys.contains(&p)) || (template.is_none() && !pools.contains(&&*route.pool)) {
                continue;
            }
            let key = KeyPath::of(&["listeners", &listener.name]).key("routes").index(i).key("prefix");
            let msg = format!("captures {{{}}}, but {:?} is no template that uses it", p.name(), route.pool);
            errs.push(sources[*file_no].invalid(&key, msg));
        }
    }
    errs
}

/// Two listeners conflict on the same address, on one port when either binds the wildcard
/// address of that IP family, or on one port when one binds the IPv6 wildcard and the other
/// an IPv4 address: Linux binds `[::]` for IPv4 too (net.ipv6.bindv6only is 0 by default,
/// and the bridge sets no IPV6_V6ONLY). An IPv4-mapped address (`[::ffff:a.b.c.d]`) binds
/// that IPv4 address.
fn conflicts(a: &ListenAddress, b: &ListenAddress) -> bool {
    match (a, b) {
        (ListenAddress::Tcp(x), ListenAddress::Tcp(y)) => {
            let (x, y) = (unmapped(*x), unmapped(*y));
            x.port() == y.port()
                && ((x.is_ipv4() == y.is_ipv4()
                    && (x.ip() == y.ip() || x.ip().is_unspecified() || y.ip().is_unspecified()))
                    || ipv6_wildcard_over_ipv4(a, b))
        }
        // A socket unit with several ListenStream= lines passes as many sockets under one
        // name; the listeners with that address take them in order (listen/systemd.rs).
        (ListenAddress::Systemd(_), ListenAddress::Systemd(_)) => false,
        _ => a == b,
    }
}

/// The IPv4 address an IPv4-mapped IPv6 address stands for; any other as it is.
fn unmapped(a: SocketAddr) -> SocketAddr {
    match a {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::from((v4, v6.port())),
            None => a,
        },
        SocketAddr::V4(_) => a,
    }
}

/// One of `a` and `b` is the IPv6 wildcard, the other an IPv4 address (or one mapped).
fn ipv6_wildcard_over_ipv4(a: &ListenAddress, b: &ListenAddress) -> bool {
    let wildcard_and_v4 = |x: &ListenAddress, y: &ListenAddress| match (x, y) {
        (ListenAddress::Tcp(x), ListenAddress::Tcp(y)) => {
            x.is_ipv6() && x.ip().is_unspecified() && unmapped(*y).is_ipv4()
        }
        _ => false,
    };
    wildcard_and_v4(a, b) || wildcard_and_v4(b, a)
}

/// What follows an "address already used" error on `a` and `b` that do not look alike.
fn clash_why(a: &ListenAddress, b: &ListenAddress) -> &'static str {
    let mapped = |x: &ListenAddress| matches!(x, ListenAddress::Tcp(t) if unmapped(*t) != *t);
    if ipv6_wildcard_over_ipv4(a, b) {
        " ([::] is an IPv6 wildcard, which Linux binds for IPv4 too)"
    } else if mapped(a) || mapped(b) {
        " ([::ffff:a.b.c.d] is the IPv4 address a.b.c.d)"
    } else {
        ""
    }
}

/// `listeners.NAME.fastcgi` or `.scgi`: the key that holds a listener's address.
fn address_key(l: &Listener) -> KeyPath {
    KeyPath::of(&["listeners", &l.name, protocol_key(l)])
}

/// `fastcgi` or `scgi`, the key a listener's address is written under.
fn protocol_key(l: &Listener) -> &'static str {
    match l.protocol {
        super::model::Protocol::FastCgi => "fastcgi",
        super::model::Protocol::Scgi => "scgi",
    }
}

/// Each listener whose address the status listener or an earlier listener already holds
/// (one error per listener).
fn check_addresses(listeners: &[(Listener, usize)], sources: &[Source], global: &GlobalBuilder) -> Vec<ConfigError> {
    let status = global.status.as_ref().map(|s| &s.address).zip(global.status_listen_at.as_ref());
    let mut errs = Vec::new();
    for (i, (listener, file_no)) in listeners.iter().enumerate() {
        let earlier = listeners[..i].iter().find(|(earlier, _)| conflicts(&earlier.address, &listener.address));
        let msg = if let Some((address, at)) = status.filter(|(address, _)| conflicts(address, &listener.address)) {
            let why = clash_why(address, &listener.address);
            format!("address already used by the status listener (bridge.status.listen at {at}){why}")
        } else if let Some((earlier, earlier_file)) = earlier {
            let first_at = sources[*earlier_file].at(&address_key(earlier));
            let why = clash_why(&earlier.address, &listener.address);
            format!("address already used by listener {:?} at {first_at}{why}", earlier.name)
        } else {
            continue;
        };
        errs.push(sources[*file_no].invalid(&address_key(listener), msg));
    }
    errs
}

/// Unix sockets (listeners, the status listener) and, at a start, log files whose
/// directory is missing: `run` would fail at bind. The runtime-dir is the exception, as
/// `run` creates it before binding.
fn check_dirs(
    listeners: &[(Listener, usize)],
    sources: &[Source],
    global: &GlobalBuilder,
    opts: super::LoadOptions<'_>,
) -> Vec<ConfigError> {
    let mut errs = Vec::new();
    // Whether a directory exists is this host's state: the control client, which reads the
    // files only to find its socket, does not ask.
    if opts.privileges == super::Privileges::Skip {
        return errs;
    }
    let runtime_dir = global.runtime_dir.as_deref();
    for (l, file_no) in listeners {
        if let ListenAddress::Unix(path) = &l.address {
            if let Some(m) = socket_dir_problem(path, runtime_dir) {
                errs.push(sources[*file_no].invalid(&address_key(l), m));
            }
        }
    }
    if let (Some(ListenAddress::Unix(path)), Some(at)) =
        (global.status.as_ref().map(|s| &s.address), &global.status_listen_at)
    {
        if let Some(message) = socket_dir_problem(path, runtime_dir) {
            errs.push(ConfigError::Invalid {
                at: at.clone(),
                key: "bridge.status.listen".to_owned(),
                message,
                brought: None,
            });
        }
    }
    if opts.moment == super::Moment::Start {
        errs.extend(check_log_dirs(global));
    }
    errs
}

/// What `check`, `run` and `reload` warn of in a configuration they accept.
fn warnings(
    global: &GlobalBuilder,
    listeners: &[(Listener, usize)],
    sources: &[Source],
    opts: super::LoadOptions<'_>,
) -> Vec<String> {
    let mut all = log_dir_warnings(global, opts);
    all.extend(open_tcp_warnings(listeners, sources));
    all.extend(proxy_header_warnings(listeners, sources));
    if opts.privileges == super::Privileges::Check && super::isolation::bridge_ids().uid == 0 {
        let umask = own_umask();
        all.extend(
            listeners
                .iter()
                .filter_map(|(l, file_no)| root_socket_warning(l, &sources[*file_no].at(&address_key(l)), umask)),
        );
    }
    all.extend(access_format_warning(global));
    all
}

/// A TCP listener on an address other than loopback that anyone who reaches the port may
/// use: FastCGI and SCGI have no authentication, and a request sets every CGI variable
/// (REMOTE_ADDR, HTTPS, …). A `direct` one cannot apply `allowed-clients` (the workers
/// accept its connections); any other has none written (and no FCGI_WEB_SERVER_ADDRS).
/// Said at check, run and reload.
fn open_tcp_warnings(listeners: &[(Listener, usize)], sources: &[Source]) -> Vec<String> {
    let web_server_addrs = std::env::var_os("FCGI_WEB_SERVER_ADDRS").is_some();
    listeners
        .iter()
        .filter_map(|(l, file_no)| {
            let ListenAddress::Tcp(a) = &l.address else { return None };
            if a.ip().is_loopback() || (!l.direct && (l.allowed_clients.is_some() || web_server_addrs)) {
                return None;
            }
            let key = protocol_key(l);
            let at = sources[*file_no].at(&address_key(l));
            Some(if l.direct {
                format!(
                    "{at}: warning: listeners.{}.fastcgi: {a} is a `direct` listener on a TCP address that is not \
                     loopback: allowed-clients cannot apply to it (its workers accept the connections); \
                     restrict who reaches the port with a firewall (docs/direct.md)",
                    l.name
                )
            } else {
                format!(
                    "{at}: warning: listeners.{}.{key}: {a} is not loopback and the listener has no allowed-clients: \
                     whoever reaches the port can send requests with any CGI variables (REMOTE_ADDR, HTTPS, …); \
                     list the web servers in allowed-clients, or listen on 127.0.0.1 when the web server is on \
                     this machine (docs/scale-out.md)",
                    l.name
                )
            })
        })
        .collect()
}

/// Two believed headers that set the same thing (the client's address, the scheme, the
/// host): a proxy sets one of them, and the client can write the other, which may win.
fn proxy_header_warnings(listeners: &[(Listener, usize)], sources: &[Source]) -> Vec<String> {
    use super::ProxyHeader::{Forwarded, XForwardedFor, XForwardedHost, XForwardedProto, XRealIp};
    let overlaps = [
        ("REMOTE_ADDR", &[XForwardedFor, XRealIp, Forwarded][..]),
        ("the scheme", &[XForwardedProto, Forwarded][..]),
        ("HTTP_HOST", &[XForwardedHost, Forwarded][..]),
    ];
    let mut out = Vec::new();
    for (l, file_no) in listeners {
        let Some(t) = &l.trusted_proxies else { continue };
        for (what, group) in overlaps {
            let both: Vec<&str> = group.iter().filter(|h| t.headers.contains(h)).map(|h| h.name()).collect();
            if both.len() > 1 {
                let at = sources[*file_no].at(&KeyPath::of(&["listeners", &l.name, "trusted-proxy-headers"]));
                let each = if both.len() == 2 { "both" } else { "all" };
                out.push(format!(
                    "{at}: warning: listeners.{}.trusted-proxy-headers: {} {each} set {what}; a proxy sets one, \
                     and a client can write another, which may win: list only the header your proxy writes \
                     (docs/trusted-proxies.md)",
                    l.name,
                    both.join(" and ")
                ));
            }
        }
    }
    out
}

/// A unix listener of a root bridge with none of `socket-owner`, `socket-group` and
/// `socket-mode`: its socket is root's, and unless the umask (`None`: unknown) leaves
/// others write permission, a web server that is not root cannot connect (a root bridge is
/// what per-app users need, so a migration from PHP-FPM or uWSGI meets this first).
fn root_socket_warning(l: &Listener, at: &At, umask: Option<u32>) -> Option<String> {
    let ListenAddress::Unix(path) = &l.address else { return None };
    if l.socket_owner.is_some() || l.socket_group.is_some() || l.socket_mode.is_some() {
        return None;
    }
    if umask.is_some_and(|m| m & 0o002 == 0) {
        return None;
    }
    let mode = umask.map_or_else(|| "its umask leaves".to_owned(), |m| format!("{:04o}", 0o777 & !m));
    Some(format!(
        "{at}: warning: {}: the bridge runs as root, so it creates {} as root with mode {mode}: a web server that \
         does not run as root cannot connect (Permission denied); set `socket-group:` (the web server's group) and \
         `socket-mode: \"0660\"`, or `socket-owner:`",
        address_key(l),
        path.display()
    ))
}

/// This process's umask, from /proc/self/status (reading it with umask(2) would change it).
fn own_umask() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let value = status.lines().find_map(|l| l.strip_prefix("Umask:"))?;
    u32::from_str_radix(value.trim(), 8).ok()
}

/// `access-log-format` without an access log file to apply to: the main log's access lines
/// (`access-log: -`) are its structured ones, and without `access-log` there are none.
fn access_format_warning(global: &GlobalBuilder) -> Option<String> {
    let at = global.set_by.get("access-log-format")?;
    let without = match global.access_log.as_deref() {
        Some(p) if p != Path::new("-") => return None,
        Some(_) => "the access lines of `access-log: -` (the main log) are its structured ones",
        None => "no access log is written without `access-log`",
    };
    Some(format!(
        "{at}: warning: bridge.access-log-format: it applies to an access log file, and {without}; set \
         `access-log: /var/log/fcgibridge/access.log` (docs/operator-guide.md)"
    ))
}

/// At a reload, the log files whose directory is missing, as warnings: the running daemon
/// keeps the log files it opened (log paths take effect at a restart), so the reload goes
/// ahead; the next start refuses the configuration as `check` does.
fn log_dir_warnings(global: &GlobalBuilder, opts: super::LoadOptions<'_>) -> Vec<String> {
    if opts.privileges == super::Privileges::Skip || opts.moment == super::Moment::Start {
        return Vec::new();
    }
    let warning = |e| match e {
        ConfigError::Invalid { at, key, message, .. } => format!(
            "{at}: warning: {key}: {message}; the reload goes ahead (log paths take effect at the next \
             restart), but that restart fails until this is fixed"
        ),
        other => format!("warning: {other}"),
    };
    check_log_dirs(global).into_iter().map(warning).collect()
}

/// What keeps a unix socket from being created at `path`, said for the operator; `None`
/// when its directory exists, is the runtime-dir, or cannot be looked at by this user (the
/// bridge may run as another).
fn socket_dir_problem(path: &Path, runtime_dir: Option<&Path>) -> Option<String> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty())?;
    if runtime_dir == Some(dir) {
        return None;
    }
    let shown = dir.display();
    match missing_dir(dir)? {
        Missing::NotADirectory => Some(format!("{shown} is not a directory: the socket file cannot be created in it")),
        Missing::Absent => {
            let instead = match runtime_dir {
                Some(r) => format!("or put the socket in the runtime-dir {}", r.display()),
                None => format!("or make it the runtime-dir (bridge: runtime-dir: {shown})"),
            };
            Some(format!(
                "directory {shown} does not exist: create it before the bridge starts (systemd: \
                 RuntimeDirectory=), {instead}, which the bridge creates"
            ))
        }
    }
}

/// What is wrong with a directory a file is to be made in.
enum Missing {
    Absent,
    NotADirectory,
}

/// `dir` is no directory (None when it is one, or when this user cannot tell: the bridge
/// may run as another).
fn missing_dir(dir: &Path) -> Option<Missing> {
    match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => None,
        Ok(_) => Some(Missing::NotADirectory),
        Err(e) if matches!(e.kind(), std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory) => {
            Some(Missing::Absent)
        }
        Err(_) => None,
    }
}

/// `access-log` and `log-file` in a directory that does not exist: `run` would exit (the
/// access log) or log to stderr instead (log-file). The runtime-dir is created before the
/// access log is opened, but after the log file.
fn check_log_dirs(global: &GlobalBuilder) -> Vec<ConfigError> {
    let logs = [
        ("access-log", "access log", global.access_log.as_deref().filter(|p| *p != Path::new("-")), true),
        ("log-file", "log-file", global.log_file.as_deref(), false),
    ];
    let mut errs = Vec::new();
    for (key, what, path, after_runtime_dir) in logs {
        let (Some(path), Some(at)) = (path, global.set_by.get(key)) else { continue };
        let runtime_dir = global.runtime_dir.as_deref().filter(|_| after_runtime_dir);
        if let Some(why) = log_dir_problem(path, runtime_dir) {
            let message = format!("cannot open {what} {}: {why}", path.display());
            errs.push(ConfigError::Invalid { at: at.clone(), key: format!("bridge.{key}"), message, brought: None });
        }
    }
    errs
}

/// What keeps a log file from being opened at `path`, said for the operator; `None` when
/// it can be, or when this user cannot tell (the bridge may run as another).
fn log_dir_problem(path: &Path, runtime_dir: Option<&Path>) -> Option<String> {
    if path.is_dir() {
        return Some("it is a directory; name a file in it".to_owned());
    }
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty())?;
    if runtime_dir == Some(dir) {
        return None;
    }
    let shown = dir.display();
    Some(match missing_dir(dir)? {
        Missing::NotADirectory => format!("{shown} is not a directory"),
        Missing::Absent => {
            format!("directory {shown} does not exist; create it before the bridge starts (systemd: LogsDirectory=)")
        }
    })
}

/// The `bridge:` keys gathered across files, remembering who set each.
#[derive(Default)]
struct GlobalBuilder {
    set_by: HashMap<&'static str, At>,
    runtime_dir: Option<PathBuf>,
    log_level: Option<String>,
    log_format: Option<LogFormat>,
    access_log: Option<PathBuf>,
    log_file: Option<PathBuf>,
    shutdown_timeout: Option<Duration>,
    drain_period: Option<Duration>,
    access_log_format: Option<String>,
    status: Option<super::model::StatusListen>,
    /// Where `bridge.status.listen` was written, for an error about its socket's directory.
    status_listen_at: Option<At>,
    control_socket: Option<PathBuf>,
    header_memory: Option<u64>,
    log_rate_limit: Option<bool>,
}

impl GlobalBuilder {
    fn claim(&mut self, source: &Source, key: &'static str) -> Result<KeyPath, ConfigError> {
        let path = KeyPath::of(&["bridge", key]);
        if let Some(first) = self.set_by.get(key) {
            return Err(
                source.invalid(&path, format!("already set at {first}; each bridge key may be set in one file only"))
            );
        }
        self.set_by.insert(key, source.at(&path));
        Ok(path)
    }

    /// Every key of one file's `bridge:` section; all the errors are returned.
    fn add(&mut self, source: &Source, dir: &Path, mut raw: RawBridge) -> Result<(), ConfigError> {
        let mut errs = Vec::new();
        self.add_places_and_logs(source, dir, &mut raw, &mut errs);
        self.add_files_and_limits(source, dir, &mut raw, &mut errs);
        ConfigError::from_all(errs)
    }

    /// runtime-dir, log-level, log-format, access-log, shutdown-timeout, drain-period.
    fn add_places_and_logs(&mut self, source: &Source, dir: &Path, raw: &mut RawBridge, errs: &mut Vec<ConfigError>) {
        // One closure per key: its first error ends that key only.
        let mut key = |r: Result<(), ConfigError>| errs.extend(r.err());
        if let Some(dir_text) = raw.runtime_dir.take() {
            key((|| {
                let path = self.claim(source, "runtime-dir")?;
                if dir_text.is_empty() {
                    return Err(source.invalid(&path, "is empty; leave the key out for the default"));
                }
                self.runtime_dir = Some(paths::resolve(dir, &dir_text));
                Ok(())
            })());
        }
        if let Some(level) = raw.log_level.take() {
            key((|| {
                let path = self.claim(source, "log-level")?;
                if let Some(problem) = super::log_level::problem(&level) {
                    return Err(source.invalid(&path, problem));
                }
                self.log_level = Some(level);
                Ok(())
            })());
        }
        if let Some(format) = raw.log_format.take() {
            key((|| {
                let path = self.claim(source, "log-format")?;
                self.log_format = Some(match format.as_str() {
                    "text" => LogFormat::Text,
                    "json" => LogFormat::Json,
                    other => {
                        let hint = hint::suggestion(other, &["text", "json"]);
                        return Err(source.invalid(&path, format!("unknown format {other:?}{hint}")));
                    }
                });
                Ok(())
            })());
        }
        if let Some(log) = raw.access_log.take() {
            key((|| {
                let path = self.claim(source, "access-log")?;
                self.access_log = Some(match log.as_str() {
                    "" => {
                        return Err(source.invalid(
                            &path,
                            "is empty; write a file path, \"-\" for the main log, or leave the key out",
                        ))
                    }
                    "-" => PathBuf::from("-"),
                    file => paths::resolve(dir, file),
                });
                Ok(())
            })());
        }
        if let Some(timeout) = raw.shutdown_timeout.take() {
            key((|| {
                self.claim(source, "shutdown-timeout")?;
                self.shutdown_timeout = Some(timeout.0);
                Ok(())
            })());
        }
        if let Some(period) = raw.drain_period.take() {
            key((|| {
                self.claim(source, "drain-period")?;
                self.drain_period = Some(period.0);
                Ok(())
            })());
        }
    }

    /// log-file, access-log-format, status, control-socket, header-memory, log-rate-limit.
    fn add_files_and_limits(&mut self, source: &Source, dir: &Path, raw: &mut RawBridge, errs: &mut Vec<ConfigError>) {
        let mut key = |r: Result<(), ConfigError>| errs.extend(r.err());
        if let Some(file) = raw.log_file.take() {
            key((|| {
                let path = self.claim(source, "log-file")?;
                if file.is_empty() || file == "-" {
                    return Err(source.invalid(&path, "write a file path, or leave the key out to log to stderr"));
                }
                self.log_file = Some(paths::resolve(dir, &file));
                Ok(())
            })());
        }
        if let Some(format) = raw.access_log_format.take() {
            key((|| {
                let path = self.claim(source, "access-log-format")?;
                super::access_format::check(&format).map_err(|m| source.invalid(&path, m))?;
                self.access_log_format = Some(format);
                Ok(())
            })());
        }
        if let Some(status) = raw.status.take() {
            key((|| {
                let path = self.claim(source, "status")?;
                self.status = Some(
                    super::status_key::resolve(status, dir).map_err(|(key, m)| source.invalid(&path.key(key), m))?,
                );
                self.status_listen_at = Some(source.at(&path.key("listen")));
                Ok(())
            })());
        }
        if let Some(sock) = raw.control_socket.take() {
            key((|| {
                let path = self.claim(source, "control-socket")?;
                if sock.is_empty() {
                    return Err(source.invalid(
                        &path,
                        "is empty; write a socket path or leave the key out for <runtime-dir>/control.sock",
                    ));
                }
                self.control_socket = Some(paths::resolve(dir, &sock));
                Ok(())
            })());
        }
        if let Some(size) = raw.header_memory.take() {
            key((|| {
                let path = self.claim(source, "header-memory")?;
                if size.0 == 0 {
                    return Err(source.invalid(&path, "must be more than 0 bytes"));
                }
                self.header_memory = Some(size.0);
                Ok(())
            })());
        }
        if let Some(on) = raw.log_rate_limit.take() {
            key((|| {
                self.claim(source, "log-rate-limit")?;
                self.log_rate_limit = Some(on);
                Ok(())
            })());
        }
    }

    fn finish(self) -> Global {
        Global {
            runtime_dir: self.runtime_dir,
            log_level: self.log_level.unwrap_or_else(|| DEFAULT_LOG_LEVEL.to_owned()),
            log_format: self.log_format.unwrap_or(LogFormat::Text),
            access_log: self.access_log,
            log_file: self.log_file,
            shutdown_timeout: self.shutdown_timeout.unwrap_or(DEFAULT_SHUTDOWN_TIMEOUT),
            drain_period: self.drain_period.unwrap_or(Duration::ZERO),
            access_log_format: self.access_log_format,
            status: self.status,
            control_socket: self.control_socket,
            header_memory: self.header_memory.unwrap_or(DEFAULT_HEADER_MEMORY),
            log_rate_limit: self.log_rate_limit.unwrap_or(true),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::config::isolation::{BridgeIds, TEST_BRIDGE_IDS};

    #[test]
    fn a_root_bridges_unix_socket_without_permissions_is_warned_of() {
        let at = At { file: "conf.d/10-shop.yaml".into(), pos: None };
        let unix = Listener {
            address: ListenAddress::Unix("/run/fcgibridge/shop.sock".into()),
            ..Listener::for_tests("shop", 9000)
        };
        let says = root_socket_warning(&unix, &at, Some(0o022)).unwrap();
        assert_eq!(
            says,
            "conf.d/10-shop.yaml: warning: listeners.shop.fastcgi: the bridge runs as root, so it creates \
             /run/fcgibridge/shop.sock as root with mode 0755: a web server that does not run as root cannot connect \
             (Permission denied); set `socket-group:` (the web server's group) and `socket-mode: \"0660\"`, or \
             `socket-owner:`"
        );
        assert!(root_socket_warning(&unix, &at, None).unwrap().contains("with mode its umask leaves:"));
        // A umask that lets others write: anyone can connect already.
        assert_eq!(root_socket_warning(&unix, &at, Some(0o000)), None);
        // Any of the three keys says the operator decided.
        for l in [
            Listener { socket_group: Some("www-data".into()), ..unix.clone() },
            Listener { socket_owner: Some("www-data".into()), ..unix.clone() },
            Listener { socket_mode: Some(0o600), ..unix.clone() },
        ] {
            assert_eq!(root_socket_warning(&l, &at, Some(0o022)), None);
        }
        let tcp = Listener { address: ListenAddress::Tcp("127.0.0.1:9000".parse().unwrap()), ..unix.clone() };
        assert_eq!(root_socket_warning(&tcp, &at, Some(0o022)), None);
    }

    #[test]
    fn only_a_root_bridge_warns_of_its_unix_sockets() {
        let dir = crate::scratch::scratch_dir("root-socket");
        std::fs::write(dir.join("app.py"), "application = None\n").unwrap();
        let text = "pools:\n  shop: {app: ../app.py, python: /bin/sh, allow-root: true}\n\
                    listeners:\n  shop: {fastcgi: 'unix:/run/shop.sock', pool: shop}\n";
        let conf = dir.join("conf.d");
        std::fs::create_dir_all(&conf).unwrap();
        std::fs::write(conf.join("10-shop.yaml"), text).unwrap();
        let warned = |uid| {
            TEST_BRIDGE_IDS.with(|c| c.set(BridgeIds { uid, gid: uid }));
            let config = crate::config::load_with_search_path(&conf, None);
            TEST_BRIDGE_IDS.with(|c| c.set(BridgeIds { uid: 4242, gid: 4242 }));
            config.unwrap().warnings.iter().any(|w| w.contains("listeners.shop.fastcgi: the bridge runs as root"))
        };
        assert!(!warned(4242));
        // As root: said unless this process's umask lets others write (then anyone connects).
        assert_eq!(warned(0), own_umask().is_none_or(|m| m & 0o002 != 0));
    }
}
