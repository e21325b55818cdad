//! `bridge: status:` — where the HTTP status page is served. Only a loopback address or a
//! unix socket: the page names every URI in flight, so exposing it further is left to a
//! web server with its own access control (a listener's `status-path`).
use super::file::RawStatus;
use super::model::{ListenAddress, StatusListen};
use super::resolve::parse_address;
use std::path::Path;

/// Default URL path of the status page.
pub(super) const DEFAULT_STATUS_PATH: &str = "/status";

/// The status listener, or (sub-key, message) for the error.
pub(super) fn resolve(raw: RawStatus, dir: &Path) -> Result<StatusListen, (&'static str, String)> {
    let text = raw
        .listen
        .ok_or(("listen", "missing: write e.g. 127.0.0.1:9180 or unix:/run/fcgibridge/status.sock".to_owned()))?;
    let address = parse_address(&text, dir).map_err(|m| ("listen", m))?;
    match &address {
        ListenAddress::Tcp(a) if a.ip().is_loopback() => {}
        ListenAddress::Tcp(a) => {
            return Err((
                "listen",
                format!("{a} is not a loopback address; the status listener serves 127.0.0.1, [::1] or a unix socket only (use a listener's status-path to publish it through the web server)"),
            ))
        }
        ListenAddress::Unix(_) => {}
        _ => return Err(("listen", "must be a loopback address or unix:/path".to_owned())),
    }
    let path = raw.path.unwrap_or_else(|| DEFAULT_STATUS_PATH.to_owned());
    check_url_path(&path).map_err(|m| ("path", m))?;
    Ok(StatusListen { address, path })
}

/// A URL path for status-path, ping-path and status.path: absolute, no query.
pub(super) fn check_url_path(path: &str) -> Result<(), String> {
    if !path.starts_with('/') || path.contains('?') || path.contains(char::is_whitespace) {
        return Err(format!("{path:?} is not a URL path; write e.g. \"/status\""));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_or_unix_only() {
        let dir = Path::new("/etc/fcgibridge");
        let raw = |l: &str| RawStatus { listen: Some(l.to_owned()), path: None };
        assert!(resolve(raw("127.0.0.1:9180"), dir).is_ok());
        assert!(resolve(raw("[::1]:9180"), dir).is_ok());
        assert!(resolve(raw("unix:/run/s.sock"), dir).is_ok());
        let err = resolve(raw("0.0.0.0:9180"), dir).err().map(|e| e.1).unwrap_or_default();
        assert!(err.contains("not a loopback address"), "{err}");
        let bad_path = RawStatus { listen: Some("127.0.0.1:9180".into()), path: Some("status".into()) };
        assert_eq!(resolve(bad_path, dir).err().map(|e| e.0), Some("path"));
    }
}
