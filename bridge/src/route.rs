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
//! does too), so an app sees the same environ behind every server.
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

/// The request's path as the web server serves it, decoded, after its rewrites and internal
/// redirects (REQUEST_URI keeps naming the request as the client sent it, so it is the last
/// resort), with `.` and `..` segments resolved (so `/api/../admin` is not under `/api`):
/// 1. DOCUMENT_URI (nginx's stock params: `$document_uri`; Caddy). Caddy's `split_path`
///    makes it stop where PATH_INFO starts, so PATH_INFO is added when it is not its end.
/// 2. SCRIPT_NAME + PATH_INFO when either is non-empty (lighttpd, Apache, h2o, HAProxy;
///    also the bridge's own internal redirects).
/// 3. REQUEST_URI before `?`, percent-decoded.
pub(crate) fn request_path(params: &Params) -> Cow<'_, [u8]> {
    let path_info = params.get(b"PATH_INFO").unwrap_or(b"");
    if let Some(doc) = params.get(b"DOCUMENT_URI").filter(|d| d.first() == Some(&b'/')) {
        if path_info.is_empty() || doc.ends_with(path_info) {
            return resolve_dots(Cow::Borrowed(doc));
        }
        return resolve_dots(Cow::Owned([doc, path_info].concat()));
    }
    let script_name = params.get(b"SCRIPT_NAME").unwrap_or(b"");
    if !script_name.is_empty() || !path_info.is_empty() {
        return resolve_dots(Cow::Owned([script_name, path_info].concat()));
    }
    match params.get(b"REQUEST_URI") {
        Some(uri) => {
            let path = uri.split(|&b| b == b'?').next().unwrap_or(uri);
            // An absolute-form request target ("http://host/path") keeps only its path.
            let path = match path.windows(3).position(|w| w == b"://") {
                Some(i) if path.first() != Some(&b'/') => {
                    let rest = &path[i + 3..];
                    rest.iter().position(|&b| b == b'/').map_or(&b"/"[..], |j| &rest[j..])
                }
                _ => path,
            };
            resolve_dots(percent_decode(path))
        }
        None => Cow::Borrowed(b""),
    }
}

fn resolve_dots(path: Cow<'_, [u8]>) -> Cow<'_, [u8]> {
    if has_dot_segment(&path) {
        Cow::Owned(remove_dot_segments(&path))
    } else {
        path
    }
}

/// Set SCRIPT_NAME and PATH_INFO for the app: mounted at `mount` when a prefix route
/// matched; otherwise left as the web server sent them, unless it sent no PATH_INFO, in
/// which case the whole path becomes PATH_INFO under an empty SCRIPT_NAME.
pub(crate) fn mount(params: &mut Params, mount: Option<&str>) {
    let has_path_info = params.get(b"PATH_INFO").is_some_and(|p| !p.is_empty());
    if mount.is_none() && has_path_info {
        return;
    }
    let full = request_path(params).into_owned();
    let (script, info) = match mount {
        Some(prefix) if prefix_matches(prefix.as_bytes(), &full) => {
            (prefix.as_bytes().to_vec(), full[prefix.len()..].to_vec())
        }
        _ => (Vec::new(), full),
    };
    params.insert(&b"SCRIPT_NAME"[..], script);
    params.insert(&b"PATH_INFO"[..], info);
}

fn has_dot_segment(path: &[u8]) -> bool {
    path.split(|&b| b == b'/').any(|seg| seg == b"." || seg == b"..")
}

/// RFC 3986 section 5.2.4 for an absolute path: `.` segments go, `..` removes the one
/// before it (never above the root); a path that ended in a dot segment keeps its `/`.
fn remove_dot_segments(path: &[u8]) -> Vec<u8> {
    let mut segs: Vec<&[u8]> = Vec::new();
    let mut trailing_slash = false;
    for seg in path.split(|&b| b == b'/').skip(1) {
        trailing_slash = false;
        match seg {
            b"." => trailing_slash = true,
            b".." => {
                segs.pop();
                trailing_slash = true;
            }
            s => segs.push(s),
        }
    }
    let mut out = Vec::with_capacity(path.len());
    for s in &segs {
        out.push(b'/');
        out.extend_from_slice(s);
    }
    if trailing_slash || out.is_empty() {
        out.push(b'/');
    }
    out
}

/// %XX → byte; anything malformed stays as it is. Borrowed when there is nothing to decode.
pub(crate) fn percent_decode(s: &[u8]) -> Cow<'_, [u8]> {
    if !s.contains(&b'%') {
        return Cow::Borrowed(s);
    }
    let hex = |b: u8| match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    };
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        if s[i] == b'%' && i + 2 < s.len() {
            if let (Some(h), Some(l)) = (hex(s[i + 1]), hex(s[i + 2])) {
                out.push(h * 16 + l);
                i += 3;
                continue;
            }
        }
        out.push(s[i]);
        i += 1;
    }
    Cow::Owned(out)
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

fn prefix_matches(prefix: &[u8], path: &[u8]) -> bool {
    if prefix == b"/" {
        return true;
    }
    path.starts_with(prefix) && matches!(path.get(prefix.len()), None | Some(b'/'))
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

    #[test]
    fn apache_internal_redirect_uses_script_name() {
        // mod_fcgid / mod_proxy_scgi after `200 + Location: /local`: REQUEST_URI is the first URI.
        let mut p = params(&[("REQUEST_URI", "/redirect"), ("REDIRECT_URL", "/redirect"), ("SCRIPT_NAME", "/local")]);
        assert_eq!(&*request_path(&p), b"/local");
        mount(&mut p, None);
        assert_eq!(p.get(b"PATH_INFO"), Some(&b"/local"[..]));
        assert_eq!(p.get(b"SCRIPT_NAME"), Some(&b""[..]));
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
        assert_eq!(&*percent_decode(b"/a%20b%zz%4"), b"/a b%zz%4");
        assert_eq!(&*percent_decode(b"/%C3%A9"), "/é".as_bytes());
    }

    fn get(p: &Params, n: &str) -> String {
        String::from_utf8_lossy(p.get(n.as_bytes()).unwrap_or(b"<none>")).into_owned()
    }

    #[test]
    fn mount_splits_at_the_prefix() {
        let mut p = params(&[("REQUEST_URI", "/edge/environ?x=1"), ("SCRIPT_NAME", "/edge/environ")]);
        mount(&mut p, Some("/edge"));
        assert_eq!((get(&p, "SCRIPT_NAME"), get(&p, "PATH_INFO")), ("/edge".into(), "/environ".into()));
        let mut p = params(&[("REQUEST_URI", "/edge")]);
        mount(&mut p, Some("/edge"));
        assert_eq!((get(&p, "SCRIPT_NAME"), get(&p, "PATH_INFO")), ("/edge".into(), "".into()));
    }

    #[test]
    fn stock_params_get_a_path_info() {
        // nginx's stock fastcgi_params: the path only in SCRIPT_NAME and REQUEST_URI.
        let mut p = params(&[("REQUEST_URI", "/environ/sub%20dir?a=1"), ("SCRIPT_NAME", "/environ/sub dir")]);
        mount(&mut p, None);
        assert_eq!((get(&p, "SCRIPT_NAME"), get(&p, "PATH_INFO")), ("".into(), "/environ/sub dir".into()));
    }

    #[test]
    fn a_split_sent_by_the_server_is_kept() {
        let mut p = params(&[("REQUEST_URI", "/app/x"), ("SCRIPT_NAME", "/app"), ("PATH_INFO", "/x")]);
        mount(&mut p, None);
        assert_eq!((get(&p, "SCRIPT_NAME"), get(&p, "PATH_INFO")), ("/app".into(), "/x".into()));
        // `mount: /` (kept as ""): the app is at the root whatever split the server made
        // (mod_fcgid at `<Location />` takes the first segment for the script).
        let mut p = params(&[("REQUEST_URI", "/a/b/c"), ("SCRIPT_NAME", "/a"), ("PATH_INFO", "/b/c")]);
        mount(&mut p, Some(""));
        assert_eq!((get(&p, "SCRIPT_NAME"), get(&p, "PATH_INFO")), ("".into(), "/a/b/c".into()));
    }

    #[test]
    fn dot_segments_are_resolved() {
        assert_eq!(remove_dot_segments(b"/a/b/../c"), b"/a/c");
        assert_eq!(remove_dot_segments(b"/a/./b/."), b"/a/b/");
        assert_eq!(remove_dot_segments(b"/../../etc"), b"/etc");
        assert_eq!(remove_dot_segments(b"/a/.."), b"/");
        assert_eq!(remove_dot_segments(b"/a/..b/c"), b"/a/..b/c");
        let r = router();
        assert_eq!(r.route(&params(&[("REQUEST_URI", "/api/../admin")])).map(|x| x.0), Some(&"default"));
        assert_eq!(r.route(&params(&[("REQUEST_URI", "/x/%2e%2e/api/v1")])).map(|x| x.0), Some(&"api"));
        let mut p = params(&[("REQUEST_URI", "/a/./b/../c?q=/../")]);
        mount(&mut p, None);
        assert_eq!(get(&p, "PATH_INFO"), "/a/c");
    }

    #[test]
    fn the_web_servers_rewrites_count() {
        let r = router();
        // nginx `rewrite ^/old/(.*)$ /api/$1 break;` with the stock params: $document_uri is
        // the rewritten path, $request_uri the client's.
        let nginx = params(&[("REQUEST_URI", "/old/x?q=1"), ("DOCUMENT_URI", "/api/x"), ("SCRIPT_NAME", "/api/x")]);
        assert_eq!(r.route(&nginx), Some((&"api", Some("/api"))));
        let mut p = nginx.clone();
        mount(&mut p, None);
        assert_eq!((get(&p, "SCRIPT_NAME"), get(&p, "PATH_INFO")), ("".into(), "/api/x".into()));
        // The old Django recipe sends the path twice (stock SCRIPT_NAME and PATH_INFO); the
        // document URI is still the path.
        let doubled = params(&[("DOCUMENT_URI", "/api/x"), ("SCRIPT_NAME", "/api/x"), ("PATH_INFO", "/api/x")]);
        assert_eq!(&*request_path(&doubled), b"/api/x");
        // Caddy's split_path: DOCUMENT_URI ends where PATH_INFO starts.
        let caddy = params(&[("DOCUMENT_URI", "/app.fcgi"), ("SCRIPT_NAME", "/app.fcgi"), ("PATH_INFO", "/api/x")]);
        assert_eq!(&*request_path(&caddy), b"/app.fcgi/api/x");
        // nginx's fastcgi_split_path_info: DOCUMENT_URI is the whole path.
        let split = params(&[("DOCUMENT_URI", "/app.fcgi/x"), ("SCRIPT_NAME", "/app.fcgi"), ("PATH_INFO", "/x")]);
        assert_eq!(&*request_path(&split), b"/app.fcgi/x");
        // lighttpd url.rewrite, Apache RewriteRule [PT], HAProxy set-path: no DOCUMENT_URI,
        // the rewritten path in SCRIPT_NAME + PATH_INFO.
        let lighttpd = params(&[("REQUEST_URI", "/old/x"), ("SCRIPT_NAME", ""), ("PATH_INFO", "/api/x")]);
        assert_eq!(r.route(&lighttpd).map(|x| x.0), Some(&"api"));
        let apache = params(&[("REQUEST_URI", "/old/a%20b"), ("SCRIPT_NAME", "/api/a b")]);
        assert_eq!(r.route(&apache).map(|x| x.0), Some(&"api"));
        // Decoded already: a '%' in it is a '%'; dot segments are still resolved.
        assert_eq!(&*request_path(&params(&[("DOCUMENT_URI", "/100%25/x")])), b"/100%25/x");
        assert_eq!(&*request_path(&params(&[("DOCUMENT_URI", "/api/../admin")])), b"/admin");
        // An empty DOCUMENT_URI (Caddy without split_path) or SCRIPT_NAME "" alone: the next source.
        let empty = params(&[("DOCUMENT_URI", ""), ("SCRIPT_NAME", ""), ("REQUEST_URI", "/api/y")]);
        assert_eq!(&*request_path(&empty), b"/api/y");
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
