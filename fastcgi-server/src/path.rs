//! Where a request's app is mounted: the request's path as the web server serves it, and
//! the SCRIPT_NAME / PATH_INFO split the app sees (CGI 1.1, RFC 3875 section 4.1.5 and
//! 4.1.13). Pure functions on [`Params`], shared by the bridge (which routes and mounts)
//! and the native worker serving a `direct` listener (which mounts), so that an app sees
//! the same environ behind either.
//!
//! [`mount`] derives PATH_INFO from the request's path when the web server sent none
//! (nginx's stock fastcgi_params put the whole path in SCRIPT_NAME; Apache ProxyPass does
//! too), so an app sees the same environ behind every server.
use crate::Params;
use std::borrow::Cow;

/// The request's path as the web server serves it, decoded, after its rewrites and internal
/// redirects (REQUEST_URI keeps naming the request as the client sent it, so it is the last
/// resort), with `.` and `..` segments resolved (so `/api/../admin` is not under `/api`):
/// 1. DOCUMENT_URI (nginx's stock params: `$document_uri`; Caddy). Caddy's `split_path`
///    makes it stop where PATH_INFO starts, so PATH_INFO is added when it is not its end.
/// 2. SCRIPT_NAME + PATH_INFO when either is non-empty (lighttpd, Apache, h2o, HAProxy;
///    also the bridge's own internal redirects).
/// 3. REQUEST_URI before `?`, percent-decoded.
pub fn request_path(params: &Params) -> Cow<'_, [u8]> {
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

/// Set SCRIPT_NAME and PATH_INFO for the app: mounted at `mount` (a matched route's prefix,
/// or the listener's `mount`: a path without its trailing `/`, "" for the root); otherwise left as the web server sent them, unless it sent no PATH_INFO, in
/// which case the whole path becomes PATH_INFO under an empty SCRIPT_NAME.
pub fn mount(params: &mut Params, mount: Option<&str>) {
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
pub fn percent_decode(s: &[u8]) -> Cow<'_, [u8]> {
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

/// Whether `prefix` is `path` or a leading run of its segments ("/api" matches "/api" and
/// "/api/x", never "/apix"); "/" matches every path.
pub fn prefix_matches(prefix: &[u8], path: &[u8]) -> bool {
    if prefix == b"/" {
        return true;
    }
    path.starts_with(prefix) && matches!(path.get(prefix.len()), None | Some(b'/'))
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

    #[test]
    fn percent_decoding() {
        assert_eq!(&*percent_decode(b"/a%20b%zz%4"), b"/a b%zz%4");
        assert_eq!(&*percent_decode(b"/%C3%A9"), "/é".as_bytes());
        assert!(matches!(percent_decode(b"/plain"), Cow::Borrowed(_)), "nothing to decode: no copy");
    }

    #[test]
    fn prefixes_match_on_a_segment_boundary() {
        assert!(prefix_matches(b"/api", b"/api"));
        assert!(prefix_matches(b"/api", b"/api/x"));
        assert!(!prefix_matches(b"/api", b"/apix"));
        assert!(!prefix_matches(b"/api", b"/"));
        assert!(prefix_matches(b"/", b"/anything"));
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
        let mut p = params(&[("REQUEST_URI", "/a/./b/../c?q=/../")]);
        mount(&mut p, None);
        assert_eq!(get(&p, "PATH_INFO"), "/a/c");
    }

    #[test]
    fn the_web_servers_rewrites_count() {
        // nginx `rewrite ^/old/(.*)$ /api/$1 break;` with the stock params: $document_uri is
        // the rewritten path, $request_uri the client's.
        let mut p = params(&[("REQUEST_URI", "/old/x?q=1"), ("DOCUMENT_URI", "/api/x"), ("SCRIPT_NAME", "/api/x")]);
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
        // lighttpd url.rewrite, Apache RewriteRule [PT]: the rewritten path in SCRIPT_NAME + PATH_INFO.
        let lighttpd = params(&[("REQUEST_URI", "/old/x"), ("SCRIPT_NAME", ""), ("PATH_INFO", "/api/x")]);
        assert_eq!(&*request_path(&lighttpd), b"/api/x");
        let apache = params(&[("REQUEST_URI", "/old/a%20b"), ("SCRIPT_NAME", "/api/a b")]);
        assert_eq!(&*request_path(&apache), b"/api/a b");
        // Decoded already: a '%' in it is a '%'; dot segments are still resolved.
        assert_eq!(&*request_path(&params(&[("DOCUMENT_URI", "/100%25/x")])), b"/100%25/x");
        assert_eq!(&*request_path(&params(&[("DOCUMENT_URI", "/api/../admin")])), b"/admin");
        // An empty DOCUMENT_URI (Caddy without split_path) or SCRIPT_NAME "" alone: the next source.
        let empty = params(&[("DOCUMENT_URI", ""), ("SCRIPT_NAME", ""), ("REQUEST_URI", "/api/y")]);
        assert_eq!(&*request_path(&empty), b"/api/y");
        // An absolute-form request target keeps only its path.
        assert_eq!(&*request_path(&params(&[("REQUEST_URI", "http://h.test/a/b?q")])), b"/a/b");
    }
}
