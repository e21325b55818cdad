//! Which pool serves a request: a listener's routes, tried in order, first match wins.
//!
//! Host matching ignores the port and ASCII case; a prefix matches only on a path-segment
//! boundary ("/api" matches "/api" and "/api/x", never "/apix"). The path is the one the web
//! server serves after its own rewrites (see [`request_path`]), so an nginx
//! `rewrite … break` or an Apache `RewriteRule … [PT]` picks the pool as it picks the app.
//!
//! A prefix is also the app's mount point: [`mount`] gives the app SCRIPT_NAME = prefix and
//! PATH_INFO = the rest, and derives PATH_INFO from REQUEST_URI when the web server sent
//! none (nginx's stock fastcgi_params put the whole path in SCRIPT_NAME; Apache ProxyPass
//! does too), so an app sees the same environ behind every server. Both live in the
//! protocol crate (`fastcgi_server::path`), shared with the worker of a `direct` listener.
use fastcgi_server::path::prefix_matches;
pub(crate) use fastcgi_server::path::{mount, percent_decode, request_path};
use fastcgi_server::Params;
use std::borrow::Cow;

/// One compiled route; `target` is whatever the caller maps a pool to (an index, an Arc).
#[derive(Debug, Clone)]
pub(crate) struct Route<T> {
    host: Option<String>,
    prefix: Option<String>,
    /// A prefix with a `{name}` segment (`/~{user}`), matched segment by segment; its
    /// capture fills a template's placeholder (supervise/instances.rs).
    pattern: Option<Vec<PatSeg>>,
    target: T,
}

/// One segment of a prefix pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
enum PatSeg {
    Lit(String),
    /// `before{name}after`: the segment must start and end so, with something between.
    Capture {
        before: String,
        name: String,
        after: String,
    },
}

/// What a pattern captured: (placeholder name, the segment's captured bytes).
pub(crate) type Capture<'r> = (&'r str, Vec<u8>);

/// A request's route: its target, its mount point, and what a pattern captured.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Routed<'r, T> {
    pub target: &'r T,
    pub mount: Option<Cow<'r, str>>,
    pub capture: Option<Capture<'r>>,
}

/// A listener's routing table.
#[derive(Debug, Clone)]
pub(crate) struct Router<T> {
    routes: Vec<Route<T>>,
}

impl<T> Router<T> {
    /// Routes in priority order: (host, prefix, target).
    pub(crate) fn new(routes: impl IntoIterator<Item = (Option<String>, Option<String>, T)>) -> Self {
        let routes = routes
            .into_iter()
            .map(|(host, prefix, target)| {
                let pattern = prefix.as_deref().and_then(parse_pattern);
                Route {
                    host: host.map(|h| strip_port(&h).to_ascii_lowercase()),
                    prefix: if pattern.is_some() { None } else { prefix.map(|p| normalize_prefix(&p)) },
                    pattern,
                    target,
                }
            })
            .collect();
        Self { routes }
    }

    /// Every target, in route order (duplicates possible).
    pub(crate) fn targets(&self) -> impl Iterator<Item = &T> {
        self.routes.iter().map(|r| &r.target)
    }

    /// The target for a request and the matched prefix (`None` for "/" or no prefix), or
    /// `None` (the caller answers 404). A pattern route's mount and capture are in [`Self::routed`].
    #[cfg(test)]
    pub(crate) fn route(&self, params: &Params) -> Option<(&T, Option<&str>)> {
        self.routed(params).map(|r| {
            let mount = match r.mount {
                Some(Cow::Borrowed(m)) => Some(m),
                _ => None,
            };
            (r.target, mount)
        })
    }

    /// A route without a pattern.
    fn plain<'r>(target: &'r T, mount: Option<&'r str>) -> Routed<'r, T> {
        Routed { target, mount: mount.map(Cow::Borrowed), capture: None }
    }

    /// The route of a request: target, mount point and a pattern's capture.
    pub(crate) fn routed(&self, params: &Params) -> Option<Routed<'_, T>> {
        // The common single-pool listener needs no look at the request at all.
        if let [only] = self.routes.as_slice() {
            if only.host.is_none() && only.prefix.is_none() && only.pattern.is_none() {
                return Some(Self::plain(&only.target, None));
            }
        }
        let host = params.get(b"HTTP_HOST").map(strip_port_bytes);
        let mut path: Option<Cow<'_, [u8]>> = None;
        for route in &self.routes {
            if let Some(want) = &route.host {
                match host {
                    Some(h) if h.eq_ignore_ascii_case(want.as_bytes()) => {}
                    _ => continue,
                }
            }
            if let Some(pattern) = &route.pattern {
                let path = path.get_or_insert_with(|| request_path(params));
                let Some((mount, capture)) = match_pattern(pattern, path) else { continue };
                return Some(Routed { target: &route.target, mount: Some(Cow::Owned(mount)), capture });
            }
            if let Some(prefix) = &route.prefix {
                let path = path.get_or_insert_with(|| request_path(params));
                if !prefix_matches(prefix.as_bytes(), path) {
                    continue;
                }
                let mount = (prefix != "/").then_some(prefix.as_str());
                return Some(Self::plain(&route.target, mount));
            }
            return Some(Self::plain(&route.target, None));
        }
        None
    }
}

/// A prefix with a `{name}` segment as a pattern; None for a plain prefix.
fn parse_pattern(prefix: &str) -> Option<Vec<PatSeg>> {
    if !prefix.contains('{') {
        return None;
    }
    let segs = normalize_prefix(prefix)
        .split('/')
        .skip(1)
        .map(|seg| match (seg.find('{'), seg.find('}')) {
            (Some(open), Some(close)) if open < close => PatSeg::Capture {
                before: seg[..open].to_owned(),
                name: seg[open + 1..close].to_owned(),
                after: seg[close + 1..].to_owned(),
            },
            _ => PatSeg::Lit(seg.to_owned()),
        })
        .collect();
    Some(segs)
}

/// The leading segments of `path` against `pattern`: the mount point they make and the
/// capture (a non-empty middle of its segment), or None.
fn match_pattern<'r>(pattern: &'r [PatSeg], path: &[u8]) -> Option<(String, Option<Capture<'r>>)> {
    let mut segs = path.split(|&b| b == b'/').skip(1);
    let mut capture = None;
    let mut mount = Vec::new();
    for want in pattern {
        let seg = segs.next()?;
        match want {
            PatSeg::Lit(lit) if lit.as_bytes() == seg => {}
            PatSeg::Lit(_) => return None,
            PatSeg::Capture { before, name, after } => {
                let inner = seg.strip_prefix(before.as_bytes())?.strip_suffix(after.as_bytes())?;
                if inner.is_empty() {
                    return None;
                }
                capture = Some((name.as_str(), inner.to_vec()));
            }
        }
        mount.push(b'/');
        mount.extend_from_slice(seg);
    }
    Some((String::from_utf8_lossy(&mount).into_owned(), capture))
}

/// "/api/" and "/api" mean the same mount point; "/" (or "") matches everything.
fn normalize_prefix(prefix: &str) -> String {
    let trimmed = prefix.trim_end_matches('/');
    if trimmed.is_empty() {
        "/".to_owned()
    } else if trimmed.starts_with('/') {
        trimmed.to_owned()
    } else {
        format!("/{trimmed}")
    }
}

fn strip_port(host: &str) -> &str {
    match std::str::from_utf8(strip_port_bytes(host.as_bytes())) {
        Ok(h) => h,
        Err(_) => host,
    }
}

/// "example.com:8080" → "example.com"; "[::1]:80" → "[::1]"; a bare IPv6 address stays whole.
fn strip_port_bytes(host: &[u8]) -> &[u8] {
    if host.first() == Some(&b'[') {
        return match host.iter().position(|&b| b == b']') {
            Some(end) => &host[..=end],
            None => host,
        };
    }
    let colons = host.iter().filter(|&&b| b == b':').count();
    if colons == 1 {
        if let Some(i) = host.iter().position(|&b| b == b':') {
            return &host[..i];
        }
    }
    host
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> Params {
        let mut p = Params::default();
        for (n, v) in pairs {
            p.insert(n.as_bytes().to_vec(), v.as_bytes().to_vec());
        }
        p
    }

    fn router() -> Router<&'static str> {
        Router::new([
            (Some("API.example.com".to_owned()), None, "api-host"),
            (None, Some("/api/".to_owned()), "api"),
            (Some("static.example.com".to_owned()), Some("/files".to_owned()), "files"),
            (None, Some("/".to_owned()), "default"),
        ])
    }

    #[test]
    fn host_ignores_port_and_case() {
        let r = router();
        let p = params(&[("HTTP_HOST", "api.EXAMPLE.com:8443"), ("REQUEST_URI", "/x")]);
        assert_eq!(r.route(&p).map(|x| x.0), Some(&"api-host"));
    }

    #[test]
    fn prefix_on_segment_boundary() {
        let r = router();
        assert_eq!(r.route(&params(&[("REQUEST_URI", "/api")])).map(|x| x.0), Some(&"api"));
        assert_eq!(r.route(&params(&[("REQUEST_URI", "/api/users?x=1")])).map(|x| x.0), Some(&"api"));
        assert_eq!(r.route(&params(&[("REQUEST_URI", "/apix")])).map(|x| x.0), Some(&"default"));
        assert_eq!(r.route(&params(&[("REQUEST_URI", "/api?q=/api/")])).map(|x| x.0), Some(&"api"));
        assert_eq!(r.route(&params(&[("REQUEST_URI", "/apix?q=/api/")])).map(|x| x.0), Some(&"default"));
    }

    #[test]
    fn host_and_prefix_both_required() {
        let r = router();
        let p = params(&[("HTTP_HOST", "static.example.com"), ("REQUEST_URI", "/files/a.txt")]);
        assert_eq!(r.route(&p).map(|x| x.0), Some(&"files"));
        let p = params(&[("HTTP_HOST", "other.example.com"), ("REQUEST_URI", "/files/a.txt")]);
        assert_eq!(r.route(&p).map(|x| x.0), Some(&"default"));
    }

    #[test]
    fn falls_back_to_script_name_and_path_info() {
        let r = router();
        let p = params(&[("SCRIPT_NAME", "/api"), ("PATH_INFO", "/v1")]);
        assert_eq!(r.route(&p).map(|x| x.0), Some(&"api"));
        let p = params(&[("SCRIPT_NAME", ""), ("PATH_INFO", "/apiv1")]);
        assert_eq!(r.route(&p).map(|x| x.0), Some(&"default"));
    }

    #[test]
    fn no_match_is_none() {
        let r: Router<&str> = Router::new([(None, Some("/only".to_owned()), "x")]);
        assert_eq!(r.route(&params(&[("REQUEST_URI", "/other")])).map(|x| x.0), None);
        assert_eq!(r.route(&params(&[])).map(|x| x.0), None);
    }

    #[test]
    fn single_catch_all() {
        let r: Router<&str> = Router::new([(None, None, "x")]);
        assert_eq!(r.route(&params(&[])).map(|x| x.0), Some(&"x"));
    }

    #[test]
    fn prefix_is_returned_as_mount() {
        let r = router();
        let p = params(&[("REQUEST_URI", "/api/x")]);
        assert_eq!(r.route(&p), Some((&"api", Some("/api"))));
        let p = params(&[("REQUEST_URI", "/other")]);
        assert_eq!(r.route(&p), Some((&"default", None)));
    }

    #[test]
    fn percent_encoded_paths_route_decoded() {
        let r = router();
        assert_eq!(r.route(&params(&[("REQUEST_URI", "/%61pi/x")])).map(|x| x.0), Some(&"api"));
    }

    #[test]
    fn dot_segments_are_resolved() {
        let r = router();
        assert_eq!(r.route(&params(&[("REQUEST_URI", "/api/../admin")])).map(|x| x.0), Some(&"default"));
        assert_eq!(r.route(&params(&[("REQUEST_URI", "/x/%2e%2e/api/v1")])).map(|x| x.0), Some(&"api"));
    }

    #[test]
    fn the_web_servers_rewrites_count() {
        let r = router();
        // nginx `rewrite ^/old/(.*)$ /api/$1 break;` with the stock params: $document_uri is
        // the rewritten path, $request_uri the client's.
        let nginx = params(&[("REQUEST_URI", "/old/x?q=1"), ("DOCUMENT_URI", "/api/x"), ("SCRIPT_NAME", "/api/x")]);
        assert_eq!(r.route(&nginx), Some((&"api", Some("/api"))));
        // lighttpd url.rewrite, Apache RewriteRule [PT], HAProxy set-path: no DOCUMENT_URI,
        // the rewritten path in SCRIPT_NAME + PATH_INFO.
        let lighttpd = params(&[("REQUEST_URI", "/old/x"), ("SCRIPT_NAME", ""), ("PATH_INFO", "/api/x")]);
        assert_eq!(r.route(&lighttpd).map(|x| x.0), Some(&"api"));
        let apache = params(&[("REQUEST_URI", "/old/a%20b"), ("SCRIPT_NAME", "/api/a b")]);
        assert_eq!(r.route(&apache).map(|x| x.0), Some(&"api"));
    }

    #[test]
    fn a_pattern_captures_its_segment_and_mounts_what_it_matched() {
        let r: Router<&str> = Router::new([
            (None, Some("/~{user}".to_owned()), "homes"),
            (None, Some("/sites/{host}/app".to_owned()), "sites"),
            (None, Some("/".to_owned()), "default"),
        ]);
        let got = r.routed(&params(&[("REQUEST_URI", "/~alice/x?q=1")])).unwrap();
        assert_eq!((got.target, got.mount.as_deref()), (&"homes", Some("/~alice")));
        assert_eq!(got.capture, Some(("user", b"alice".to_vec())));
        let got = r.routed(&params(&[("REQUEST_URI", "/sites/a.test/app/y")])).unwrap();
        assert_eq!((got.target, got.capture), (&"sites", Some(("host", b"a.test".to_vec()))));
        // No name between the marks, a wrong literal, too short: the next route.
        for uri in ["/~/x", "/sites/a.test/other", "/sites/a.test", "/alice"] {
            assert_eq!(r.routed(&params(&[("REQUEST_URI", uri)])).unwrap().target, &"default", "{uri}");
        }
        // Resolved before matching: no capture of a dot segment.
        assert_eq!(
            r.routed(&params(&[("REQUEST_URI", "/~alice/../~bob/")])).unwrap().capture,
            Some(("user", b"bob".to_vec()))
        );
    }

    #[test]
    fn ipv6_hosts() {
        assert_eq!(strip_port_bytes(b"[::1]:8080"), b"[::1]");
        assert_eq!(strip_port_bytes(b"::1"), b"::1");
        assert_eq!(strip_port_bytes(b"example.com"), b"example.com");
    }
}
