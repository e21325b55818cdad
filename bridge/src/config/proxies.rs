//! `trusted-proxies:`, `trusted-proxy-headers:` and `allowed-clients:` as loaded: address
//! blocks and header names (listen/proxy.rs and listen/allow.rs apply them).
use std::net::IpAddr;

/// Why a `trusted-proxies` / `trusted-proxy-headers` entry is not usable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProxyConfigError {
    #[error("{0:?} is not an IP address or CIDR block (e.g. 10.0.0.0/8, ::1)")]
    BadAddress(String),
    #[error("{0:?}: the prefix length is larger than the address")]
    BadPrefix(String),
    #[error("unknown header {0:?}; one of X-Forwarded-For, X-Forwarded-Proto, X-Forwarded-Host, X-Forwarded-Port, X-Real-IP, Forwarded")]
    UnknownHeader(String),
}

/// A header a proxy may be trusted for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyHeader {
    XForwardedFor,
    XForwardedProto,
    XForwardedHost,
    XForwardedPort,
    XRealIp,
    Forwarded,
}

impl ProxyHeader {
    /// Those believed unless `trusted-proxy-headers` says otherwise: the client's address
    /// from the chain of X-Forwarded-For (read from the right, where proxies append) and
    /// the scheme, which proxies set. Not X-Real-IP or Forwarded beside them (a client
    /// writes the one its proxy does not set, and it would win), nor X-Forwarded-Host or
    /// -Port, which many proxies pass on as the client wrote them: a forged host makes the
    /// app's absolute links (a password reset's) point elsewhere.
    pub const DEFAULT: [Self; 2] = [Self::XForwardedFor, Self::XForwardedProto];

    /// Every header: all are removed from a peer that is not trusted.
    pub const ALL: [Self; 6] = [
        Self::XForwardedFor,
        Self::XForwardedProto,
        Self::XForwardedHost,
        Self::XForwardedPort,
        Self::XRealIp,
        Self::Forwarded,
    ];

    /// Parse a header name as an operator writes it.
    pub fn parse(name: &str) -> Result<Self, ProxyConfigError> {
        let n = name.trim().to_ascii_lowercase().replace('_', "-");
        Ok(match n.as_str() {
            "x-forwarded-for" => Self::XForwardedFor,
            "x-forwarded-proto" | "x-forwarded-scheme" => Self::XForwardedProto,
            "x-forwarded-host" => Self::XForwardedHost,
            "x-forwarded-port" => Self::XForwardedPort,
            "x-real-ip" => Self::XRealIp,
            "forwarded" => Self::Forwarded,
            _ => return Err(ProxyConfigError::UnknownHeader(name.to_owned())),
        })
    }

    /// The header's name as the configuration writes it.
    pub fn name(self) -> &'static str {
        match self {
            Self::XForwardedFor => "X-Forwarded-For",
            Self::XForwardedProto => "X-Forwarded-Proto",
            Self::XForwardedHost => "X-Forwarded-Host",
            Self::XForwardedPort => "X-Forwarded-Port",
            Self::XRealIp => "X-Real-IP",
            Self::Forwarded => "Forwarded",
        }
    }
}

/// An address block: an address and how many leading bits must match.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    bits: u8,
}

impl Cidr {
    /// `10.0.0.0/8`, `::1`, `192.168.1.7`.
    pub fn parse(text: &str) -> Result<Self, ProxyConfigError> {
        let text = text.trim();
        let (a, bits) = match text.split_once('/') {
            Some((a, b)) => (a, Some(b.parse::<u8>().map_err(|_| ProxyConfigError::BadAddress(text.to_owned()))?)),
            None => (text, None),
        };
        let addr: IpAddr = a.parse().map_err(|_| ProxyConfigError::BadAddress(text.to_owned()))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let bits = bits.unwrap_or(max);
        if bits > max {
            return Err(ProxyConfigError::BadPrefix(text.to_owned()));
        }
        Ok(Self { addr, bits })
    }

    /// Whether `ip` lies in this block (an IPv4-mapped IPv6 address counts as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        let (a, b, len) = match (self.addr, ip) {
            (IpAddr::V4(a), IpAddr::V4(b)) => {
                (u128::from(u32::from(a)) << 96, u128::from(u32::from(b)) << 96, self.bits)
            }
            (IpAddr::V6(a), IpAddr::V6(b)) => (u128::from(a), u128::from(b), self.bits),
            _ => return false,
        };
        if len == 0 {
            return true;
        }
        let mask = u128::MAX << (128 - u32::from(len));
        a & mask == b & mask
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.bits)
    }
}

/// A listener's trusted proxies and the headers they are trusted for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustedProxies {
    pub proxies: Vec<Cidr>,
    pub headers: Vec<ProxyHeader>,
}
