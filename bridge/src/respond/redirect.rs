//! CGI local redirects (RFC 3875 section 6.2.2): an app answering status 200 with
//! `Location: /local/path` asks the server to serve that path instead. No web server does this
//! for FastCGI (only mod_fcgid and mod_proxy_scgi), so the bridge does: the first response's
//! body is dropped, and the request goes again — as GET (HEAD stays HEAD), without a body —
//! to whichever pool routes the new path, with REDIRECT_URL, REDIRECT_STATUS,
//! REDIRECT_QUERY_STRING and, along a chain, REDIRECT_REDIRECT_* set as Apache sets them
//! ([`fastcgi_server::redirect`], whose rules a `direct` listener's workers apply too).
//! Error pages that are local paths (respond/error_override.rs) go the same way. A chain
//! longer than the listener's `max-redirects` ends with 500.
//!
//! A redirect the bridge follows never passes the web server's access rules for its target
//! (nginx `allow`/`deny`, `auth_basic`, `auth_request`; Apache's `<Location>`): so an app's
//! redirect is followed only into its own pool (`redirect-pools: same`, see [`follow`]),
//! and one into another pool goes to the web server, which checks it, or is refused.
use crate::config::{Dialect, RedirectPools, UnroutedRedirect};
use bytes::{BufMut, Bytes, BytesMut};
use fastcgi_server::cgi::ResponseHead;
pub(crate) use fastcgi_server::redirect::{apply, is_absolute, ScriptFilename};

/// The local path a response redirects to internally: status 200 (or no Status, CGI's
/// local-redirect form) and a Location starting with one `/`. The common response has no
/// Location and costs one `Option` check.
pub(crate) fn local_target(head: &ResponseHead) -> Option<Bytes> {
    let loc = head.location.as_ref()?;
    fastcgi_server::redirect::is_local(head.status, loc).then(|| loc.clone())
}

/// Who wrote a local redirect's target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Author {
    /// An app's `Location`: followed as the listener's `redirect-pools` says.
    App,
    /// A pool's `error-pages` entry: the operator's, followed into any pool.
    Operator,
}

/// What becomes of a local redirect whose target a route of the listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Follow {
    /// The bridge serves the target itself.
    Bridge,
    /// Handed to the web server, whose access rules for the target then run: nginx gets
    /// X-Accel-Redirect, a server that follows local redirects itself (`unrouted-redirect:
    /// pass`) gets status 200 + `Location`.
    WebServer,
    /// Answered with 500: no web server in front would check the target.
    Refuse,
}

/// Decide how a redirect by `author`, answered by pool `from`, reaches pool `to` (a
/// template instance's name, `template[key]`, for a template). The bridge follows it only
/// within one pool, unless the operator wrote it or `redirect-pools: any` says so: the
/// pools of a listener may belong to different tenants, and the web server's access rules
/// for another pool's paths would be skipped.
pub(crate) fn follow(
    author: Author,
    pools: RedirectPools,
    from: Option<&str>,
    to: &str,
    dialect: Dialect,
    unrouted: UnroutedRedirect,
) -> Follow {
    if author == Author::Operator || pools == RedirectPools::Any || from == Some(to) {
        return Follow::Bridge;
    }
    match (dialect, unrouted) {
        (Dialect::Nginx, _) | (_, UnroutedRedirect::Pass) => Follow::WebServer,
        (_, UnroutedRedirect::NotFound) => Follow::Refuse,
    }
}

/// What the web server gets for a local redirect no route of the bridge serves, or `None`
/// for a 404.
pub(crate) fn unrouted(dialect: Dialect, policy: UnroutedRedirect, target: &[u8]) -> Option<BytesMut> {
    let header: &[u8] = match (dialect, policy) {
        // nginx serves it from a location (an `internal` one, typically).
        (Dialect::Nginx, _) => b"X-Accel-Redirect: ",
        (_, UnroutedRedirect::Pass) => b"Location: ",
        (_, UnroutedRedirect::NotFound) => return None,
    };
    let mut out = BytesMut::with_capacity(64 + target.len());
    out.put_slice(b"Status: 200 OK\r\n");
    out.put_slice(header);
    out.put_slice(target);
    out.put_slice(b"\r\nContent-Length: 0\r\n\r\n");
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(status: Option<u16>, location: Option<&'static str>) -> ResponseHead {
        ResponseHead {
            status,
            reason: None,
            location: location.map(|l| Bytes::from_static(l.as_bytes())),
            content_type: None,
            content_length: None,
            headers: Vec::new(),
        }
    }

    #[test]
    fn which_responses_redirect_locally() {
        assert_eq!(local_target(&head(Some(200), Some("/x?a=1"))), Some(Bytes::from_static(b"/x?a=1")));
        assert_eq!(local_target(&head(None, Some("/x"))), Some(Bytes::from_static(b"/x")));
        assert_eq!(local_target(&head(Some(302), Some("/x"))), None);
        assert_eq!(local_target(&head(Some(200), Some("http://h/x"))), None);
        assert_eq!(local_target(&head(Some(200), Some("//h/x"))), None);
        assert_eq!(local_target(&head(Some(200), None)), None);
        assert!(is_absolute(b"http://h/x") && is_absolute(b"https://h") && !is_absolute(b"/a:b") && !is_absolute(b"x"));
    }

    #[test]
    fn an_apps_redirect_is_followed_only_within_its_pool() {
        use Follow::{Bridge, Refuse, WebServer};
        let (nginx, generic, apache) = (Dialect::Nginx, Dialect::Generic, Dialect::Apache);
        let (not_found, pass) = (UnroutedRedirect::NotFound, UnroutedRedirect::Pass);
        let same = RedirectPools::Same;
        // within its pool, or its template instance
        assert_eq!(follow(Author::App, same, Some("app"), "app", generic, not_found), Bridge);
        assert_eq!(follow(Author::App, same, Some("homes[alice]"), "homes[alice]", generic, not_found), Bridge);
        // into another pool or instance: the web server's access rules must run
        assert_eq!(follow(Author::App, same, Some("app"), "other", nginx, not_found), WebServer);
        assert_eq!(follow(Author::App, same, Some("homes[alice]"), "homes[bob]", nginx, pass), WebServer);
        assert_eq!(follow(Author::App, same, Some("app"), "other", apache, pass), WebServer);
        assert_eq!(follow(Author::App, same, Some("app"), "other", generic, not_found), Refuse);
        assert_eq!(follow(Author::App, same, Some("homes[alice]"), "homes", apache, not_found), Refuse);
        assert_eq!(follow(Author::App, same, None, "other", generic, not_found), Refuse);
        // the operator opted in, or wrote the target (an error page)
        assert_eq!(follow(Author::App, RedirectPools::Any, Some("app"), "other", generic, not_found), Bridge);
        assert_eq!(follow(Author::App, RedirectPools::Any, Some("app"), "other", nginx, not_found), Bridge);
        assert_eq!(follow(Author::Operator, same, Some("app"), "pages", generic, not_found), Bridge);
        assert_eq!(follow(Author::Operator, same, Some("app"), "pages", nginx, not_found), Bridge);
    }

    #[test]
    fn unrouted_by_dialect() {
        let x = unrouted(Dialect::Nginx, UnroutedRedirect::NotFound, b"/files/a").expect("nginx");
        assert_eq!(&x[..], b"Status: 200 OK\r\nX-Accel-Redirect: /files/a\r\nContent-Length: 0\r\n\r\n");
        let p = unrouted(Dialect::Generic, UnroutedRedirect::Pass, b"/a").expect("pass");
        assert!(p.starts_with(b"Status: 200 OK\r\nLocation: /a\r\n"));
        assert!(unrouted(Dialect::Lighttpd, UnroutedRedirect::NotFound, b"/a").is_none());
    }
}
