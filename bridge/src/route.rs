//! Which pool serves a request: a listener's routes, tried in order, first match wins.
//!
//! Host matching ignores the port and ASCII case; a prefix matches only on a path-segment
//! boundary ("/api" matches "/api" and "/api/x", never "/apix"). The path is the part of
//! REQUEST_URI before `?`; without REQUEST_URI it is SCRIPT_NAME + PATH_INFO.
use fastcgi_server::Params;

/// One compiled route; `target` is whatever the caller maps a pool to (an index, an Arc).
#[derive(Debug, Clone)]
pub struct Route<T> {
    host: Option<String>,
    prefix: Option<String>,
    target: T,
}

/// A listener's routing table.
#[derive(Debug, Clone)]
pub struct Router<T> {
    routes: Vec<Route<T>>,
}

impl<T> Router<T> {
    /// Routes in priority order: (host, prefix, target).
    pub fn new(routes: impl IntoIterator<Item = (Option<String>, Option<String>, T)>) -> Self {
        let routes = routes
            .into_iter()
            .map(|(host, prefix, target)| Route {
                host: host.map(|h| strip_port(&h).to_ascii_lowercase()),
                prefix: prefix.map(|p| normalize_prefix(&p)),
                target,
            })
            .collect();
        Router { routes }
    }

    /// Every target, in route order (duplicates possible).
    pub fn targets(&self) -> impl Iterator<Item = &T> {
        self.routes.iter().map(|r| &r.target)
    }

    /// The target for a request, or `None` (the caller answers 404).
    pub fn route(&self, params: &Params) -> Option<&T> {
        // The common single-pool listener needs no look at the request at all.
        if let [only] = self.routes.as_slice() {
            if only.host.is_none() && only.prefix.is_none() {
                return Some(&only.target);
            }
        }
        let host = params.get(b"HTTP_HOST").map(strip_port_bytes);
        let mut fallback_path: Option<Vec<u8>> = None;
        for route in &self.routes {
            if let Some(want) = &route.host {
                match host {
                    Some(h) if h.eq_ignore_ascii_case(want.as_bytes()) => {}
                    _ => continue,
                }
            }
            if let Some(prefix) = &route.prefix {
                let path: &[u8] = match params.get(b"REQUEST_URI") {
                    Some(uri) => uri.split(|&b| b == b'?').next().unwrap_or(uri),
                    None => fallback_path.get_or_insert_with(|| {
                        let mut p = params.get(b"SCRIPT_NAME").unwrap_or(b"").to_vec();
                        p.extend_from_slice(params.get(b"PATH_INFO").unwrap_or(b""));
                        p
                    }),
                };
                if !prefix_matches(prefix.as_bytes(), path) {
                    continue;
                }
            }
            return Some(&route.target);
        }
        None
    }
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
        assert_eq!(r.route(&p), Some(&"api-host"));
    }

    #[test]
    fn prefix_on_segment_boundary() {
        let r = router();
        assert_eq!(r.route(&params(&[("REQUEST_URI", "/api")])), Some(&"api"));
        assert_eq!(r.route(&params(&[("REQUEST_URI", "/api/users?x=1")])), Some(&"api"));
        assert_eq!(r.route(&params(&[("REQUEST_URI", "/apix")])), Some(&"default"));
        assert_eq!(r.route(&params(&[("REQUEST_URI", "/api?q=/api/")])), Some(&"api"));
        assert_eq!(r.route(&params(&[("REQUEST_URI", "/apix?q=/api/")])), Some(&"default"));
    }

    #[test]
    fn host_and_prefix_both_required() {
        let r = router();
        let p = params(&[("HTTP_HOST", "static.example.com"), ("REQUEST_URI", "/files/a.txt")]);
        assert_eq!(r.route(&p), Some(&"files"));
        let p = params(&[("HTTP_HOST", "other.example.com"), ("REQUEST_URI", "/files/a.txt")]);
        assert_eq!(r.route(&p), Some(&"default"));
    }

    #[test]
    fn falls_back_to_script_name_and_path_info() {
        let r = router();
        let p = params(&[("SCRIPT_NAME", "/api"), ("PATH_INFO", "/v1")]);
        assert_eq!(r.route(&p), Some(&"api"));
        let p = params(&[("SCRIPT_NAME", ""), ("PATH_INFO", "/apiv1")]);
        assert_eq!(r.route(&p), Some(&"default"));
    }

    #[test]
    fn no_match_is_none() {
        let r: Router<&str> = Router::new([(None, Some("/only".to_owned()), "x")]);
        assert_eq!(r.route(&params(&[("REQUEST_URI", "/other")])), None);
        assert_eq!(r.route(&params(&[])), None);
    }

    #[test]
    fn single_catch_all() {
        let r: Router<&str> = Router::new([(None, None, "x")]);
        assert_eq!(r.route(&params(&[])), Some(&"x"));
    }

    #[test]
    fn ipv6_hosts() {
        assert_eq!(strip_port_bytes(b"[::1]:8080"), b"[::1]");
        assert_eq!(strip_port_bytes(b"::1"), b"::1");
        assert_eq!(strip_port_bytes(b"example.com"), b"example.com");
    }
}
