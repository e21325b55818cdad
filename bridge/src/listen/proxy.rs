//! Trusted proxies (mod_wsgi's WSGITrustedProxies / WSGITrustedProxyHeaders): when the web
//! server's peer — REMOTE_ADDR as the web server reports it — is a trusted proxy, the trusted
//! headers it set rewrite REMOTE_ADDR, HTTPS / REQUEST_SCHEME (hence wsgi.url_scheme),
//! HTTP_HOST and SERVER_PORT; from any other peer every forwarding header is removed (the
//! six the bridge knows, trusted or not), so an app never acts on a forged X-Forwarded-For.
//! A listener without `trusted-proxies` never looks at its params here.
use crate::config::{ProxyHeader, TrustedProxies};
use fastcgi_server::Params;
use std::net::IpAddr;

impl ProxyHeader {
    /// The CGI param a web server puts the header in.
    fn param(self) -> &'static [u8] {
        match self {
            Self::XForwardedFor => b"HTTP_X_FORWARDED_FOR",
            Self::XForwardedProto => b"HTTP_X_FORWARDED_PROTO",
            Self::XForwardedHost => b"HTTP_X_FORWARDED_HOST",
            Self::XForwardedPort => b"HTTP_X_FORWARDED_PORT",
            Self::XRealIp => b"HTTP_X_REAL_IP",
            Self::Forwarded => b"HTTP_FORWARDED",
        }
    }
}

impl TrustedProxies {
    fn trusted(&self, ip: &[u8]) -> bool {
        parse_ip(ip).is_some_and(|ip| self.proxies.iter().any(|c| c.contains(ip)))
    }

    /// Rewrite `params` from the trusted headers, or strip them when the peer is untrusted.
    pub fn apply(&self, params: &mut Params) {
        let peer_trusted = params.get(b"REMOTE_ADDR").is_some_and(|a| self.trusted(a));
        if !peer_trusted {
            // All six, not only those believed: an app that reads one itself (Django's
            // USE_X_FORWARDED_HOST) gets none from a peer that no proxy is.
            for h in &ProxyHeader::ALL {
                if params.get(h.param()).is_some() {
                    params.remove(h.param());
                }
            }
            return;
        }
        if let Some(h) = self.unbelieved_address_header(params) {
            warn_once_unbelieved(h, params);
        }
        // Forwarded (RFC 7239) first, so that the X- headers, when also trusted, win.
        if self.headers.contains(&ProxyHeader::Forwarded) {
            if let Some(v) = params.get(b"HTTP_FORWARDED").map(<[u8]>::to_vec) {
                self.apply_forwarded(params, &v);
            }
        }
        self.apply_x_headers(params);
    }

    /// The X- headers, in the order listed (of X-Forwarded-For and X-Real-IP, the last
    /// listed sets REMOTE_ADDR).
    fn apply_x_headers(&self, params: &mut Params) {
        let client = self.client_from_x_forwarded_for(params);
        for h in &self.headers {
            let Some(v) = params.get(h.param()).map(|v| String::from_utf8_lossy(v).into_owned()) else { continue };
            match h {
                ProxyHeader::XForwardedFor => {
                    if let Some(client) = &client {
                        params.insert(&b"REMOTE_ADDR"[..], client.address.as_bytes().to_vec());
                    }
                }
                ProxyHeader::XRealIp => {
                    let ip = v.trim();
                    if parse_ip(ip.as_bytes()).is_some() {
                        params.insert(&b"REMOTE_ADDR"[..], ip.as_bytes().to_vec());
                    }
                }
                ProxyHeader::XForwardedProto => set_scheme(params, value_for_client(&v, client.as_ref())),
                ProxyHeader::XForwardedHost => {
                    let host = value_for_client(&v, client.as_ref());
                    if !host.is_empty() {
                        params.insert(&b"HTTP_HOST"[..], host.as_bytes().to_vec());
                    }
                }
                ProxyHeader::XForwardedPort => {
                    let port = value_for_client(&v, client.as_ref());
                    if port.parse::<u16>().is_ok() {
                        params.insert(&b"SERVER_PORT"[..], port.as_bytes().to_vec());
                    }
                }
                ProxyHeader::Forwarded => {}
            }
        }
    }

    /// The client of a believed X-Forwarded-For chain.
    fn client_from_x_forwarded_for(&self, params: &Params) -> Option<ClientHop> {
        if !self.headers.contains(&ProxyHeader::XForwardedFor) {
            return None;
        }
        let chain = String::from_utf8_lossy(params.get(ProxyHeader::XForwardedFor.param())?).into_owned();
        let hops: Vec<&str> = chain.split(',').collect();
        self.client_from_chain(&hops)
    }

    /// A header naming the client that a trusted peer sent when no header believed for it
    /// is there: the client's address stays the proxy's. Behind a proxy that writes only
    /// X-Real-IP this is the configuration's mistake (the default list believed it until
    /// 2026-12-07), and nothing else would tell the operator.
    fn unbelieved_address_header(&self, params: &Params) -> Option<ProxyHeader> {
        const NAMING_THE_CLIENT: [ProxyHeader; 3] =
            [ProxyHeader::XForwardedFor, ProxyHeader::XRealIp, ProxyHeader::Forwarded];
        let mut sent = NAMING_THE_CLIENT.into_iter().filter(|h| params.get(h.param()).is_some());
        let first = sent.next()?;
        if self.headers.contains(&first) || sent.any(|h| self.headers.contains(&h)) {
            return None;
        }
        Some(first)
    }

    /// The client of a proxy chain: the right-most address that is not a trusted proxy
    /// (addresses left of it could have been written by the client itself). Empty hops are
    /// skipped; one that is not an address ends the walk with no client.
    fn client_from_chain(&self, hops: &[&str]) -> Option<ClientHop> {
        let mut client = None;
        for (index, hop) in hops.iter().enumerate().rev() {
            let ip = strip_port(hop);
            if ip.is_empty() {
                continue;
            }
            let parsed = parse_ip(ip.as_bytes())?;
            client = Some(ClientHop { index, hops: hops.len(), address: ip.to_owned() });
            if !self.proxies.iter().any(|c| c.contains(parsed)) {
                break;
            }
        }
        client
    }

    fn apply_forwarded(&self, params: &mut Params, value: &[u8]) {
        let value = String::from_utf8_lossy(value);
        let elements: Vec<&str> = value.split(',').collect();
        let fors: Vec<String> = elements.iter().map(|e| pair(e, "for").unwrap_or_default()).collect();
        let client = self.client_from_chain(&fors.iter().map(String::as_str).collect::<Vec<_>>());
        // proto and host: from the element that named the client (the proxy it connected to
        // wrote how); with no client named, from the element the nearest proxy wrote.
        let element = match &client {
            Some(client) => {
                params.insert(&b"REMOTE_ADDR"[..], client.address.as_bytes().to_vec());
                elements[client.index]
            }
            None => elements.last().copied().unwrap_or(""),
        };
        if let Some(proto) = pair(element, "proto") {
            set_scheme(params, &proto);
        }
        if let Some(host) = pair(element, "host") {
            params.insert(&b"HTTP_HOST"[..], host.as_bytes().to_vec());
        }
    }
}

/// Where a chain's client stands: `index` of `hops` entries, and its address.
struct ClientHop {
    index: usize,
    hops: usize,
    address: String,
}

/// The first time a trusted proxy's client address is lost (see
/// [`TrustedProxies::unbelieved_address_header`]): once per header and process, since every
/// request through that proxy would say it again.
fn warn_once_unbelieved(h: ProxyHeader, params: &Params) {
    use std::sync::atomic::{AtomicBool, Ordering};
    static WARNED: [AtomicBool; ProxyHeader::ALL.len()] = [const { AtomicBool::new(false) }; ProxyHeader::ALL.len()];
    let i = ProxyHeader::ALL.iter().position(|a| *a == h).unwrap_or(0);
    if WARNED[i].swap(true, Ordering::Relaxed) {
        return;
    }
    let peer = params.get(b"REMOTE_ADDR").map(String::from_utf8_lossy).unwrap_or_default();
    tracing::warn!(
        peer = &*peer,
        "trusted proxy {peer} sent {} and no header that trusted-proxy-headers lists for the \
         client's address: REMOTE_ADDR stays the proxy's; add {} to trusted-proxy-headers if \
         this proxy writes it (once per header)",
        h.name(),
        h.name()
    );
}

/// Of a list-valued X-Forwarded-Proto, -Host or -Port, the client's: the entry at the
/// client's place in X-Forwarded-For when both lists are as long (each proxy of the chain
/// appended to both, so that entry is what the proxy the client connected to saw); else
/// the last (a single value was set, not appended; or the counts disagree, and the last
/// at least is the trusted peer's).
fn value_for_client<'a>(v: &'a str, client: Option<&ClientHop>) -> &'a str {
    let values: Vec<&str> = v.split(',').map(str::trim).collect();
    match client {
        Some(c) if values.len() == c.hops => values[c.index],
        _ => values.last().copied().unwrap_or(""),
    }
}

/// `name=value` from one Forwarded element (`for="[2001:db8::1]:80";proto=https`).
fn pair(element: &str, name: &str) -> Option<String> {
    element.split(';').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim().trim_matches('"').to_owned())
    })
}

fn set_scheme(params: &mut Params, proto: &str) {
    if proto.eq_ignore_ascii_case("https") {
        params.insert(&b"HTTPS"[..], &b"on"[..]);
        params.insert(&b"REQUEST_SCHEME"[..], &b"https"[..]);
    } else if proto.eq_ignore_ascii_case("http") {
        if params.get(b"HTTPS").is_some() {
            params.remove(b"HTTPS");
        }
        params.insert(&b"REQUEST_SCHEME"[..], &b"http"[..]);
    }
}

/// "1.2.3.4:80" → "1.2.3.4", "[::1]:80" → "::1", "::1" stays.
fn strip_port(hop: &str) -> &str {
    let hop = hop.trim();
    if let Some(rest) = hop.strip_prefix('[') {
        return rest.split(']').next().unwrap_or("");
    }
    match hop.matches(':').count() {
        1 => hop.split(':').next().unwrap_or(""),
        _ => hop,
    }
}

fn parse_ip(b: &[u8]) -> Option<IpAddr> {
    std::str::from_utf8(b).ok()?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Cidr, ProxyConfigError};

    fn trust(proxies: &[&str]) -> TrustedProxies {
        TrustedProxies {
            proxies: proxies.iter().map(|p| Cidr::parse(p).expect("cidr")).collect(),
            headers: ProxyHeader::ALL.to_vec(),
        }
    }

    fn params(pairs: &[(&str, &str)]) -> Params {
        let mut p = Params::default();
        for (n, v) in pairs {
            p.insert(n.as_bytes().to_vec(), v.as_bytes().to_vec());
        }
        p
    }

    fn get(p: &Params, n: &str) -> Option<String> {
        p.get(n.as_bytes()).map(|v| String::from_utf8_lossy(v).into_owned())
    }

    #[test]
    fn cidr() {
        let c = Cidr::parse("10.0.0.0/8").expect("v4");
        assert!(c.contains("10.1.2.3".parse().expect("ip")));
        assert!(c.contains("::ffff:10.1.2.3".parse().expect("mapped")));
        assert!(!c.contains("11.0.0.1".parse().expect("ip")));
        assert!(Cidr::parse("::1").expect("v6").contains("::1".parse().expect("ip")));
        assert!(Cidr::parse("0.0.0.0/0").expect("all").contains("8.8.8.8".parse().expect("ip")));
        assert_eq!(Cidr::parse("10.0.0.0/33"), Err(ProxyConfigError::BadPrefix("10.0.0.0/33".into())));
        assert!(Cidr::parse("nonsense").is_err());
    }

    #[test]
    fn trusted_peer_rewrites() {
        let t = trust(&["127.0.0.1", "10.0.0.0/8"]);
        let mut p = params(&[
            ("REMOTE_ADDR", "127.0.0.1"),
            ("HTTP_X_FORWARDED_FOR", "6.6.6.6, 203.0.113.9, 10.0.0.2"),
            ("HTTP_X_FORWARDED_PROTO", "https"),
            ("HTTP_X_FORWARDED_HOST", "public.example"),
            ("HTTP_X_FORWARDED_PORT", "443"),
            ("HTTP_HOST", "internal"),
            ("SERVER_PORT", "8080"),
        ]);
        t.apply(&mut p);
        assert_eq!(get(&p, "REMOTE_ADDR").as_deref(), Some("203.0.113.9"));
        assert_eq!(get(&p, "HTTPS").as_deref(), Some("on"));
        assert_eq!(get(&p, "HTTP_HOST").as_deref(), Some("public.example"));
        assert_eq!(get(&p, "SERVER_PORT").as_deref(), Some("443"));
    }

    #[test]
    fn untrusted_peer_loses_the_headers() {
        // Every forwarding header, also those the listener does not believe.
        let t = TrustedProxies { headers: ProxyHeader::DEFAULT.to_vec(), ..trust(&["10.0.0.0/8"]) };
        let mut p = params(&[
            ("REMOTE_ADDR", "198.51.100.7"),
            ("HTTP_X_FORWARDED_FOR", "1.2.3.4"),
            ("HTTP_X_REAL_IP", "1.2.3.4"),
            ("HTTP_X_FORWARDED_HOST", "evil.example"),
            ("HTTP_FORWARDED", "for=1.2.3.4"),
        ]);
        t.apply(&mut p);
        assert_eq!(get(&p, "REMOTE_ADDR").as_deref(), Some("198.51.100.7"));
        for name in ["HTTP_X_FORWARDED_FOR", "HTTP_X_REAL_IP", "HTTP_X_FORWARDED_HOST", "HTTP_FORWARDED"] {
            assert_eq!(get(&p, name), None, "{name}");
        }
    }

    #[test]
    fn of_several_values_the_one_a_proxy_appended_last_counts() {
        // The client sent "https" over plain HTTP; the proxy appended what it saw. With no
        // X-Forwarded-For there is no client's place to read, so the last counts.
        let t = trust(&["10.0.0.0/8"]);
        let mut p = params(&[
            ("REMOTE_ADDR", "10.0.0.5"),
            ("HTTP_X_FORWARDED_PROTO", "https, http"),
            ("HTTP_X_FORWARDED_HOST", "evil.example, shop.example"),
            ("HTTP_X_FORWARDED_PORT", "8443,443"),
            ("HTTPS", "on"),
        ]);
        t.apply(&mut p);
        assert_eq!(get(&p, "HTTPS"), None);
        assert_eq!(get(&p, "HTTP_HOST").as_deref(), Some("shop.example"));
        assert_eq!(get(&p, "SERVER_PORT").as_deref(), Some("443"));
    }

    #[test]
    fn by_default_a_trusted_peer_s_client_cannot_name_its_address_or_host() {
        // Behind a proxy that appends to X-Forwarded-For and sets X-Forwarded-Proto (a load
        // balancer's way), what the client wrote itself is not believed.
        let t = TrustedProxies { headers: ProxyHeader::DEFAULT.to_vec(), ..trust(&["10.0.0.0/8"]) };
        let mut p = params(&[
            ("REMOTE_ADDR", "10.0.0.5"),
            ("HTTP_X_FORWARDED_FOR", "1.1.1.1, 203.0.113.9"),
            ("HTTP_X_REAL_IP", "6.6.6.6"),
            ("HTTP_FORWARDED", "for=6.6.6.6;host=evil.example"),
            ("HTTP_X_FORWARDED_HOST", "evil.example"),
            ("HTTP_X_FORWARDED_PROTO", "https"),
            ("HTTP_HOST", "shop.example"),
        ]);
        t.apply(&mut p);
        assert_eq!(get(&p, "REMOTE_ADDR").as_deref(), Some("203.0.113.9"));
        assert_eq!(get(&p, "HTTP_HOST").as_deref(), Some("shop.example"));
        assert_eq!(get(&p, "HTTPS").as_deref(), Some("on"));
    }

    #[test]
    fn a_client_address_only_in_a_header_not_believed_is_found() {
        let t = TrustedProxies { headers: ProxyHeader::DEFAULT.to_vec(), ..trust(&["10.0.0.0/8"]) };
        let peer = ("REMOTE_ADDR", "10.0.0.5");
        let only_real_ip = params(&[peer, ("HTTP_X_REAL_IP", "203.0.113.9")]);
        assert_eq!(t.unbelieved_address_header(&only_real_ip), Some(ProxyHeader::XRealIp));
        let both = params(&[peer, ("HTTP_X_REAL_IP", "203.0.113.9"), ("HTTP_X_FORWARDED_FOR", "203.0.113.9")]);
        assert_eq!(t.unbelieved_address_header(&both), None);
        assert_eq!(t.unbelieved_address_header(&params(&[peer])), None);
        let believing_all = trust(&["10.0.0.0/8"]);
        assert_eq!(believing_all.unbelieved_address_header(&only_real_ip), None);
    }

    #[test]
    fn forwarded_header() {
        let t = trust(&["127.0.0.1"]);
        let mut p = params(&[
            ("REMOTE_ADDR", "127.0.0.1"),
            ("HTTP_FORWARDED", "for=\"[2001:db8::7]:4711\";proto=https;host=a.example"),
        ]);
        t.apply(&mut p);
        assert_eq!(get(&p, "REMOTE_ADDR").as_deref(), Some("2001:db8::7"));
        assert_eq!(get(&p, "REQUEST_SCHEME").as_deref(), Some("https"));
        assert_eq!(get(&p, "HTTP_HOST").as_deref(), Some("a.example"));
    }

    /// Each proxy of the chain appended what it saw; the web server's peer is the last.
    fn through_a_chain(t: &TrustedProxies, headers: &[(&str, &str)]) -> Params {
        let mut p = params(&[("REMOTE_ADDR", "10.0.0.2"), ("HTTP_HOST", "internal"), ("SERVER_PORT", "8080")]);
        for (n, v) in headers {
            p.insert(n.as_bytes().to_vec(), v.as_bytes().to_vec());
        }
        t.apply(&mut p);
        p
    }

    #[test]
    fn behind_two_proxies_the_client_s_hop_gives_scheme_host_and_port() {
        // client -https-> load balancer 10.0.0.1 -http-> proxy 10.0.0.2 -> web server
        let t = trust(&["10.0.0.0/8"]);
        let p = through_a_chain(
            &t,
            &[
                ("HTTP_X_FORWARDED_FOR", "203.0.113.9, 10.0.0.1"),
                ("HTTP_X_FORWARDED_PROTO", "https, http"),
                ("HTTP_X_FORWARDED_HOST", "shop.example, lb.internal"),
                ("HTTP_X_FORWARDED_PORT", "443, 80"),
            ],
        );
        assert_eq!(get(&p, "REMOTE_ADDR").as_deref(), Some("203.0.113.9"));
        assert_eq!(get(&p, "HTTPS").as_deref(), Some("on"));
        assert_eq!(get(&p, "REQUEST_SCHEME").as_deref(), Some("https"));
        assert_eq!(get(&p, "HTTP_HOST").as_deref(), Some("shop.example"));
        assert_eq!(get(&p, "SERVER_PORT").as_deref(), Some("443"));
    }

    #[test]
    fn behind_a_chain_a_single_value_was_set_and_counts() {
        let t = trust(&["10.0.0.0/8"]);
        let p = through_a_chain(
            &t,
            &[("HTTP_X_FORWARDED_FOR", "203.0.113.9, 10.0.0.1"), ("HTTP_X_FORWARDED_PROTO", "https")],
        );
        assert_eq!(get(&p, "REQUEST_SCHEME").as_deref(), Some("https"));
    }

    #[test]
    fn when_the_counts_disagree_the_trusted_peer_s_last_value_counts() {
        let t = trust(&["10.0.0.0/8"]);
        // The client sent X-Forwarded-Proto of its own: one entry too many.
        let p = through_a_chain(
            &t,
            &[("HTTP_X_FORWARDED_FOR", "203.0.113.9, 10.0.0.1"), ("HTTP_X_FORWARDED_PROTO", "https, http, http")],
        );
        assert_eq!(get(&p, "REQUEST_SCHEME").as_deref(), Some("http"));
        // A proxy that did not append: one too few.
        let p = through_a_chain(
            &t,
            &[
                ("HTTP_X_FORWARDED_FOR", "6.6.6.6, 203.0.113.9, 10.0.0.1"),
                ("HTTP_X_FORWARDED_HOST", "evil.example, shop.example"),
            ],
        );
        assert_eq!(get(&p, "HTTP_HOST").as_deref(), Some("shop.example"));
    }

    #[test]
    fn with_x_forwarded_for_not_believed_the_last_value_counts() {
        let t = TrustedProxies { headers: vec![ProxyHeader::XForwardedProto], ..trust(&["10.0.0.0/8"]) };
        let p = through_a_chain(
            &t,
            &[("HTTP_X_FORWARDED_FOR", "203.0.113.9, 10.0.0.1"), ("HTTP_X_FORWARDED_PROTO", "https, http")],
        );
        assert_eq!(get(&p, "REMOTE_ADDR").as_deref(), Some("10.0.0.2"));
        assert_eq!(get(&p, "REQUEST_SCHEME").as_deref(), Some("http"));
    }

    #[test]
    fn a_forwarded_chain_gives_proto_and_host_from_the_client_s_element() {
        let t = trust(&["10.0.0.0/8"]);
        let p = through_a_chain(
            &t,
            &[(
                "HTTP_FORWARDED",
                "for=203.0.113.9;proto=https;host=shop.example, for=10.0.0.1;proto=http;host=lb.internal",
            )],
        );
        assert_eq!(get(&p, "REMOTE_ADDR").as_deref(), Some("203.0.113.9"));
        assert_eq!(get(&p, "REQUEST_SCHEME").as_deref(), Some("https"));
        assert_eq!(get(&p, "HTTP_HOST").as_deref(), Some("shop.example"));
    }

    #[test]
    fn a_client_s_forged_earlier_entries_are_not_believed() {
        // The client 198.51.100.7 came over plain HTTP and wrote entries of its own, one
        // claiming a trusted proxy's address; both proxies appended after it.
        let t = trust(&["10.0.0.0/8"]);
        let p = through_a_chain(
            &t,
            &[
                ("HTTP_X_FORWARDED_FOR", "10.0.0.9, 198.51.100.7, 10.0.0.1"),
                ("HTTP_X_FORWARDED_PROTO", "https, http, http"),
                ("HTTP_X_FORWARDED_HOST", "evil.example, shop.example, lb.internal"),
                ("HTTP_X_FORWARDED_PORT", "8443, 80, 80"),
            ],
        );
        assert_eq!(get(&p, "REMOTE_ADDR").as_deref(), Some("198.51.100.7"));
        assert_eq!(get(&p, "HTTPS"), None);
        assert_eq!(get(&p, "REQUEST_SCHEME").as_deref(), Some("http"));
        assert_eq!(get(&p, "HTTP_HOST").as_deref(), Some("shop.example"));
        assert_eq!(get(&p, "SERVER_PORT").as_deref(), Some("80"));
        let p = through_a_chain(
            &t,
            &[(
                "HTTP_FORWARDED",
                "for=10.0.0.9;proto=https;host=evil.example, for=198.51.100.7;proto=http;host=shop.example, \
                 for=10.0.0.1;proto=http;host=lb.internal",
            )],
        );
        assert_eq!(get(&p, "REMOTE_ADDR").as_deref(), Some("198.51.100.7"));
        assert_eq!(get(&p, "REQUEST_SCHEME").as_deref(), Some("http"));
        assert_eq!(get(&p, "HTTP_HOST").as_deref(), Some("shop.example"));
    }
}
