//! Which TCP peers a listener keeps. Two lists, both must admit a peer:
//! - FCGI_WEB_SERVER_ADDRS (FastCGI 1.0, section 3.2): when the variable is set, every TCP
//!   listener accepts connections only from the addresses it lists (comma-separated; the
//!   spec names IPv4, IPv6 literals are accepted too). Web servers that spawn FastCGI
//!   programs may set it; an operator can set it for a bridge started by hand.
//! - a listener's `allowed-clients` (addresses and CIDR blocks, like PHP-FPM's
//!   `listen.allowed_clients`): the front ends of a bridge on a network.
//!
//! Unix-socket listeners are not affected (file permissions guard them).
use crate::config::Cidr;
use crate::logging::ratelimit::RateLimits;
use std::net::{IpAddr, SocketAddr};

const VAR: &str = "FCGI_WEB_SERVER_ADDRS";

/// The allowed peers, `None` when the variable is unset (everyone may connect). Read
/// once at start-up; the daemon's registry keeps the list.
pub(crate) fn from_env() -> Option<Vec<IpAddr>> {
    let value = std::env::var(VAR).ok()?;
    let (list, bad) = parse(&value);
    for b in bad {
        tracing::warn!("{VAR}: ignoring {b:?}, not an IP address");
    }
    tracing::info!("{VAR} is set: TCP connections only from {}", value.trim());
    Some(list)
}

/// The addresses of a FCGI_WEB_SERVER_ADDRS value, and the items that are not addresses.
pub(crate) fn parse(value: &str) -> (Vec<IpAddr>, Vec<String>) {
    let mut ok = Vec::new();
    let mut bad = Vec::new();
    for item in value.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        match item.parse::<IpAddr>() {
            Ok(ip) => ok.push(ip),
            Err(_) => bad.push(item.to_owned()),
        }
    }
    (ok, bad)
}

/// Whether `peer` is in `list` (an IPv4 peer seen as an IPv4-mapped IPv6 address counts).
pub(crate) fn permits(list: &[IpAddr], peer: SocketAddr) -> bool {
    let ip = match peer.ip() {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    };
    list.contains(&ip)
}

/// Whether a just-accepted TCP connection may stay (FCGI_WEB_SERVER_ADDRS's list `env`
/// and the listener's `allowed-clients`); logs the refusal, rate-limited per listener.
pub(crate) fn admit(
    stream: &tokio::net::TcpStream,
    listener: &str,
    env: Option<&[IpAddr]>,
    clients: Option<&[Cidr]>,
    limits: &RateLimits,
) -> bool {
    if env.is_none() && clients.is_none() {
        return true;
    }
    let Ok(peer) = stream.peer_addr() else { return false };
    let why = if env.is_some_and(|list| !permits(list, peer)) {
        VAR
    } else if clients.is_some_and(|list| !list.iter().any(|c| c.contains(peer.ip()))) {
        "allowed-clients"
    } else {
        return true;
    };
    if limits.allow(&crate::logging::ratelimit::PEER_REFUSED, listener) {
        tracing::warn!(listener, %peer, "connection refused: peer not in {why}");
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_matches() {
        let (list, bad) = parse(" 127.0.0.1, 10.0.0.2,,junk,::1");
        assert_eq!(bad, ["junk"]);
        assert_eq!(list.len(), 3);
        assert!(permits(&list, "127.0.0.1:5000".parse().unwrap()));
        assert!(permits(&list, "[::ffff:10.0.0.2]:1".parse().unwrap()));
        assert!(permits(&list, "[::1]:1".parse().unwrap()));
        assert!(!permits(&list, "127.0.0.2:5000".parse().unwrap()));
    }
}
