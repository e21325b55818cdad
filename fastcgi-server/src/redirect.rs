//! CGI local redirects (RFC 3875 section 6.2.2): a response with status 200 (or none) and
//! `Location: /local/path` asks the server to serve that path instead. Pure rules on the
//! response's status and Location and on the request's [`Params`], shared by the bridge
//! (which follows redirects for its listeners) and the native worker serving a `direct`
//! listener (which follows them itself), so that an app sees the same environ behind
//! either (docs/internal-redirects.md).
use crate::path::percent_decode;
use crate::Params;

/// Why a local redirect cannot be followed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RedirectError {
    /// The request took more redirects than the listener's `max-redirects`.
    #[error("more than {0} internal redirects (a loop?); raise the listener's max-redirects if the chain is intended")]
    TooMany(u32),
}

/// Whether a response with `status` (`None`: no Status header) and `location` is a local
/// redirect: status 200 or none, and a Location starting with exactly one `/`
/// (`//host/path` is a network-path reference, not a local path).
pub fn is_local(status: Option<u16>, location: &[u8]) -> bool {
    matches!(status, None | Some(200)) && location.first() == Some(&b'/') && location.get(1) != Some(&b'/')
}

/// Whether a Location is absolute (has a scheme): with status 200 it becomes a 302, as
/// mod_fcgid does, since a 200 with an absolute Location redirects nobody.
pub fn is_absolute(loc: &[u8]) -> bool {
    match loc.iter().position(|&b| b == b':') {
        Some(i) if i > 0 => loc[..i].iter().all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(b)),
        _ => false,
    }
}

/// What became of the web server's `SCRIPT_FILENAME` in a redirect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScriptFilename {
    /// None sent, retargeted, or one that does not name the request's path (kept as it is).
    Followed,
    /// It named the first request's file, and the target's path was not plain (a `.` or
    /// `..` segment, `//`, NUL or `\`, as written or percent-decoded): left out rather than
    /// let the app's Location name a file outside the document root.
    Dropped,
}

/// Rewrite `params` for the redirected request to `target`; `depth` counts the redirects
/// of this request so far, `status` is the status of the response that redirected (200 for
/// a CGI local redirect, the error status for an error page). SCRIPT_NAME is left empty
/// and PATH_INFO is the target's decoded path: the caller mounts it again.
pub fn apply(
    params: &mut Params,
    target: &[u8],
    depth: &mut u32,
    max: u32,
    status: u16,
) -> Result<ScriptFilename, RedirectError> {
    *depth += 1;
    if *depth > max {
        return Err(RedirectError::TooMany(max));
    }
    let (path, query) = match target.iter().position(|&b| b == b'?') {
        Some(i) => (&target[..i], &target[i + 1..]),
        None => (target, &b""[..]),
    };
    deepen_chain(params);
    let prev_uri = params.get(b"REQUEST_URI").unwrap_or(b"");
    let prev_path = prev_uri.split(|&b| b == b'?').next().unwrap_or(b"").to_vec();
    let script_filename = retarget_script_filename(params, &prev_path, path);
    let prev_query = params.get(b"QUERY_STRING").unwrap_or(b"").to_vec();
    let prev_method = params.get(b"REQUEST_METHOD").unwrap_or(b"GET").to_vec();
    params.insert(&b"REDIRECT_URL"[..], prev_path);
    params.insert(&b"REDIRECT_QUERY_STRING"[..], prev_query);
    params.insert(&b"REDIRECT_REQUEST_METHOD"[..], prev_method);
    params.insert(&b"REDIRECT_STATUS"[..], status.to_string().into_bytes());
    if params.get(b"REQUEST_METHOD") != Some(b"HEAD") {
        params.insert(&b"REQUEST_METHOD"[..], &b"GET"[..]);
    }
    params.insert(&b"CONTENT_LENGTH"[..], &b""[..]);
    params.insert(&b"CONTENT_TYPE"[..], &b""[..]);
    // nginx passes these request headers as params too; left in place they would describe
    // a body this request does not have (a worker falls back to HTTP_CONTENT_LENGTH).
    for name in [&b"HTTP_CONTENT_LENGTH"[..], b"HTTP_CONTENT_TYPE", b"HTTP_TRANSFER_ENCODING"] {
        params.remove(name);
    }
    params.insert(&b"REQUEST_URI"[..], target.to_vec());
    params.insert(&b"QUERY_STRING"[..], query.to_vec());
    // With REDIRECT_URL set, routing reads the path from SCRIPT_NAME + PATH_INFO (as after
    // Apache's own internal redirects): the decoded path, mounted again by the caller.
    let decoded = percent_decode(path).into_owned();
    params.insert(&b"SCRIPT_NAME"[..], &b""[..]);
    if params.get(b"DOCUMENT_URI").is_some() {
        params.insert(&b"DOCUMENT_URI"[..], decoded.clone());
    }
    params.insert(&b"PATH_INFO"[..], decoded);
    Ok(script_filename)
}

/// Apache (http_request.c) gives the new request the previous one's environment renamed
/// with a REDIRECT_ prefix, and names the previous request in REDIRECT_URL,
/// REDIRECT_QUERY_STRING and REDIRECT_STATUS. Of that environment a redirect carries the
/// chain: each REDIRECT_* moves one level deeper (REDIRECT_REDIRECT_URL names the request
/// before the previous one), plus the previous request's method.
fn deepen_chain(params: &mut Params) {
    let chain: Vec<(bytes::Bytes, bytes::Bytes)> = params
        .iter()
        .filter(|(n, _)| n.starts_with(b"REDIRECT_"))
        .map(|(n, v)| (bytes::Bytes::copy_from_slice(n), bytes::Bytes::copy_from_slice(v)))
        .collect();
    for (name, _) in &chain {
        params.remove(name);
    }
    for (name, value) in chain {
        params.insert([&b"REDIRECT_"[..], &name].concat(), value);
    }
}

/// A `SCRIPT_FILENAME` the web server built as a directory plus the request's path
/// (HAProxy's `docroot` + path, mod_proxy_fcgi's `proxy:fcgi://host:port/path`, mod_fcgid's
/// document root + path) would still name the first request's file: that path, as written
/// or percent-decoded, becomes the target's in the same form. One that does not end with
/// the path (lighttpd's and Caddy's, a script split off by nginx) is left as it is. The path
/// comes from the app's Location: a `command:` pool (php-cgi) runs the file it names, so a
/// path that is not plain drops the variable instead.
fn retarget_script_filename(params: &mut Params, prev_path: &[u8], path: &[u8]) -> ScriptFilename {
    let Some(old) = params.get(b"SCRIPT_FILENAME") else { return ScriptFilename::Followed };
    let decoded_prev = percent_decode(prev_path);
    let decoded = percent_decode(path);
    let (base, tail) = if !prev_path.is_empty() && old.ends_with(prev_path) {
        (&old[..old.len() - prev_path.len()], path)
    } else if !decoded_prev.is_empty() && old.ends_with(&decoded_prev) {
        (&old[..old.len() - decoded_prev.len()], &decoded[..])
    } else {
        return ScriptFilename::Followed;
    };
    // Decoding only adds separators, so a plain decoded path is plain as written too.
    if !is_plain_path(&decoded) {
        params.remove(b"SCRIPT_FILENAME");
        return ScriptFilename::Dropped;
    }
    let new = [base, tail].concat();
    params.insert(&b"SCRIPT_FILENAME"[..], new);
    ScriptFilename::Followed
}

/// `/` followed by segments that are neither empty (but the last), `.` nor `..`, without NUL
/// or `\`: a path that names the same file appended to any directory.
fn is_plain_path(path: &[u8]) -> bool {
    let Some(rest) = path.strip_prefix(b"/") else { return false };
    let segments: Vec<&[u8]> = rest.split(|&b| b == b'/').collect();
    let last = segments.len() - 1;
    !path.contains(&0)
        && !path.contains(&b'\\')
        && segments.iter().enumerate().all(|(i, s)| !matches!(*s, b"." | b"..") && (!s.is_empty() || i == last))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn which_responses_redirect_locally() {
        assert!(is_local(Some(200), b"/x?a=1") && is_local(None, b"/x"));
        assert!(!is_local(Some(302), b"/x") && !is_local(Some(200), b"http://h/x") && !is_local(Some(200), b"//h/x"));
        assert!(!is_local(Some(200), b""));
        assert!(is_absolute(b"http://h/x") && is_absolute(b"https://h") && !is_absolute(b"/a:b") && !is_absolute(b"x"));
    }

    #[test]
    fn apply_rewrites_the_request() {
        let mut p = Params::default();
        for (n, v) in [
            ("REQUEST_METHOD", "POST"),
            ("REQUEST_URI", "/first?q=1"),
            ("QUERY_STRING", "q=1"),
            ("CONTENT_LENGTH", "5"),
            ("HTTP_CONTENT_LENGTH", "5"),
            ("SCRIPT_NAME", ""),
            ("PATH_INFO", "/first"),
        ] {
            p.insert(n.as_bytes(), v.as_bytes());
        }
        let mut depth = 0;
        apply(&mut p, b"/second%20x?b=2", &mut depth, 10, 200).expect("redirect");
        let g = |p: &Params, n: &str| String::from_utf8_lossy(p.get(n.as_bytes()).unwrap_or(b"-")).into_owned();
        assert_eq!(g(&p, "REQUEST_METHOD"), "GET");
        assert_eq!(g(&p, "REQUEST_URI"), "/second%20x?b=2");
        assert_eq!(g(&p, "PATH_INFO"), "/second x");
        assert_eq!(g(&p, "QUERY_STRING"), "b=2");
        assert_eq!(g(&p, "CONTENT_LENGTH"), "");
        assert_eq!(g(&p, "HTTP_CONTENT_LENGTH"), "-");
        assert_eq!(
            (g(&p, "REDIRECT_URL"), g(&p, "REDIRECT_QUERY_STRING"), g(&p, "REDIRECT_STATUS")),
            ("/first".into(), "q=1".into(), "200".into())
        );
        assert_eq!(g(&p, "REDIRECT_REQUEST_METHOD"), "POST");
        apply(&mut p, b"/third", &mut depth, 10, 404).expect("again");
        // As Apache: REDIRECT_* names the previous request, REDIRECT_REDIRECT_* the one before.
        assert_eq!(
            (g(&p, "REDIRECT_URL"), g(&p, "REDIRECT_QUERY_STRING"), g(&p, "REDIRECT_STATUS")),
            ("/second%20x".into(), "b=2".into(), "404".into())
        );
        assert_eq!(g(&p, "REDIRECT_REQUEST_METHOD"), "GET");
        assert_eq!(
            (g(&p, "REDIRECT_REDIRECT_URL"), g(&p, "REDIRECT_REDIRECT_QUERY_STRING")),
            ("/first".into(), "q=1".into())
        );
        assert_eq!(
            (g(&p, "REDIRECT_REDIRECT_STATUS"), g(&p, "REDIRECT_REDIRECT_REQUEST_METHOD")),
            ("200".into(), "POST".into())
        );
        apply(&mut p, b"/fourth", &mut depth, 10, 200).expect("a third hop");
        assert_eq!(
            (g(&p, "REDIRECT_URL"), g(&p, "REDIRECT_REDIRECT_URL"), g(&p, "REDIRECT_REDIRECT_REDIRECT_URL")),
            ("/third".into(), "/second%20x".into(), "/first".into())
        );
        assert_eq!(g(&p, "REDIRECT_REDIRECT_STATUS"), "404");
        let mut depth = 10;
        assert_eq!(apply(&mut p, b"/x", &mut depth, 10, 200), Err(RedirectError::TooMany(10)));
    }

    #[test]
    fn script_filename_follows_the_target() {
        let after = |script_filename: &str, uri: &str, target: &[u8]| {
            let mut p = Params::default();
            p.insert(&b"REQUEST_URI"[..], uri.as_bytes().to_vec());
            p.insert(&b"SCRIPT_FILENAME"[..], script_filename.as_bytes().to_vec());
            apply(&mut p, target, &mut 0, 10, 200).expect("redirect");
            String::from_utf8_lossy(p.get(b"SCRIPT_FILENAME").unwrap_or_default()).into_owned()
        };
        // HAProxy, lighttpd: docroot + path (decoded); Apache: proxy:fcgi://… + path as written
        assert_eq!(after("/srv/www/status/401", "/status/401?x=1", b"/errorpage/401"), "/srv/www/errorpage/401");
        assert_eq!(after("/srv/www/a b", "/a%20b", b"/c%20d?q"), "/srv/www/c d");
        assert_eq!(
            after("proxy:fcgi://127.0.0.1:9000/a%20b", "/a%20b", b"/c%20d"),
            "proxy:fcgi://127.0.0.1:9000/c%20d"
        );
        assert_eq!(after("/srv/www/", "/", b"/local"), "/srv/www/local");
        // a script the server split off stays
        assert_eq!(after("/srv/www/index.php", "/index.php/x", b"/local"), "/srv/www/index.php");
        // The app's Location names the file: one that is not plain names none.
        for target in [
            &b"/php/../../../home/other/x.php"[..],
            b"/php/%2e%2e/%2e%2e/home/other/x.php",
            b"/php/a%2f..%2f..%2fx.php",
            b"/php/x.php%00.txt",
            b"/php//x.php",
            b"/php/./x.php",
            b"/php/..\\x.php",
        ] {
            let mut p = Params::default();
            p.insert(&b"REQUEST_URI"[..], &b"/php/a.php"[..]);
            p.insert(&b"SCRIPT_FILENAME"[..], &b"/srv/www/php/a.php"[..]);
            let shown = String::from_utf8_lossy(target);
            assert_eq!(apply(&mut p, target, &mut 0, 10, 200), Ok(ScriptFilename::Dropped), "{shown}");
            assert_eq!(p.get(b"SCRIPT_FILENAME"), None, "{shown}");
        }
        assert_eq!(after("/srv/www/php/a.php", "/php/a.php", b"/php/b..c/d.php?x=/../"), "/srv/www/php/b..c/d.php");
        assert_eq!(after("/srv/www/a/", "/a/", b"/b/"), "/srv/www/b/");
        // none sent: none made up
        let mut p = Params::default();
        p.insert(&b"REQUEST_URI"[..], &b"/a"[..]);
        apply(&mut p, b"/b", &mut 0, 10, 200).expect("redirect");
        assert_eq!(p.get(b"SCRIPT_FILENAME"), None);
    }
}
