//! Where a node may send a request on a caller's behalf (webhooks, input URLs an app fetches).
//!
//! A caller names the URL, the node makes the request from inside the operator's network: without
//! a rule, `fal_webhook=http://169.254.169.254/...` or an input URL on a private address reaches
//! what only the node should reach. So loopback, private, link-local, unique-local, shared and
//! metadata ranges (and every non-http(s) scheme) are refused unless the operator lists them in
//! `--fetch-allow` (hosts or CIDRs). The same policy is asked three times: on the URL as given
//! ([`FetchPolicy::check_url`]: scheme and IP literals), on every address a name resolves to
//! ([`FetchPolicy::addr_allowed`], by the node's HTTP client's resolver, so no lookup can differ from
//! the connection), and on every redirect target.
//!
//! A refusal never says more than "not an allowed destination": nothing about the target reaches
//! the caller.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use url::{Host, Url};

/// One `--fetch-allow` entry.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Allowed {
    /// An address range (a bare address is a /32 or /128).
    Net { addr: IpAddr, prefix: u8 },
    /// A host name, lowercase; every address it resolves to is allowed.
    Host(String),
}

/// The outbound policy of a node. `Default`: nothing internal allowed (`runmesh run`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FetchPolicy {
    allowed: Vec<Allowed>,
}

/// Why a destination is refused; its text is what a caller may see.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("must be an http(s) URL")]
    Scheme,
    #[error(
        "is not an allowed destination: loopback, private, link-local and metadata addresses \
         are refused unless the node's operator allows them (--fetch-allow)"
    )]
    Destination,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("--fetch-allow entry {entry:?}: {why}")]
pub struct PolicyError {
    entry: String,
    why: &'static str,
}

/// Longest a submit waits on DNS to check a webhook's host; the delivery checks again anyway.
pub const SUBMIT_RESOLVE_TIMEOUT: Duration = Duration::from_secs(1);

impl FetchPolicy {
    /// What `runmesh dev` allows by default: loopback (a developer's own receivers).
    pub fn loopback() -> Self {
        Self {
            allowed: vec![
                Allowed::Net {
                    addr: IpAddr::V4(Ipv4Addr::LOCALHOST),
                    prefix: 8,
                },
                Allowed::Net {
                    addr: IpAddr::V6(Ipv6Addr::LOCALHOST),
                    prefix: 128,
                },
            ],
        }
    }

    /// `--fetch-allow` entries: CIDRs (`10.0.0.0/8`), addresses (`127.0.0.1`, `::1`) or host names
    /// (`minio.internal`). `none` alone allows nothing (to turn off `dev`'s loopback).
    pub fn parse<S: AsRef<str>>(entries: &[S]) -> Result<Self, PolicyError> {
        let mut allowed = Vec::new();
        for raw in entries {
            let entry = raw.as_ref().trim();
            if entry.is_empty() || entry.eq_ignore_ascii_case("none") {
                continue;
            }
            let err = |why| PolicyError {
                entry: entry.to_string(),
                why,
            };
            let (addr_text, prefix_text) = match entry.split_once('/') {
                Some((a, p)) => (a, Some(p)),
                None => (entry, None),
            };
            let bare = addr_text.trim_start_matches('[').trim_end_matches(']');
            if let Ok(addr) = bare.parse::<IpAddr>() {
                let max = if addr.is_ipv4() { 32 } else { 128 };
                let prefix = match prefix_text {
                    None => max,
                    Some(p) => match p.parse::<u8>() {
                        Ok(n) if n <= max => n,
                        _ => return Err(err("the prefix length is out of range")),
                    },
                };
                allowed.push(Allowed::Net { addr, prefix });
            } else if prefix_text.is_some() {
                return Err(err("a CIDR needs an IP address before the '/'"));
            } else {
                let host = entry.trim_end_matches('.').to_ascii_lowercase();
                let valid = !host.is_empty()
                    && host.len() <= 253
                    && host
                        .split('.')
                        .all(|l| !l.is_empty() && l.len() <= 63 && l.bytes().all(is_label_byte));
                if !valid {
                    return Err(err("not an IP address, a CIDR or a host name"));
                }
                allowed.push(Allowed::Host(host));
            }
        }
        Ok(Self { allowed })
    }

    /// Whether an address a URL's host resolved to may be connected to.
    pub fn addr_allowed(&self, ip: IpAddr) -> bool {
        !is_internal(ip) || self.listed_addr(ip)
    }

    /// Whether `host` (a name from a URL) was listed by name: all its addresses are allowed.
    pub fn host_listed(&self, host: &str) -> bool {
        let host = host.trim_end_matches('.');
        self.allowed
            .iter()
            .any(|a| matches!(a, Allowed::Host(h) if h.eq_ignore_ascii_case(host)))
    }

    fn listed_addr(&self, ip: IpAddr) -> bool {
        // An IPv4-mapped IPv6 address is the IPv4 address (the kernel connects to it).
        let ip = canonical(ip);
        self.allowed.iter().any(|a| match *a {
            Allowed::Net { addr, prefix } => in_net(ip, canonical(addr), prefix),
            Allowed::Host(_) => false,
        })
    }

    /// The checks a URL passes before any lookup: http(s), and a host that is an allowed address
    /// or a name (names are checked on what they resolve to). `localhost` names are loopback
    /// whatever DNS says (RFC 6761).
    pub fn check_url(&self, url: &str) -> Result<Url, Refused> {
        let parsed = Url::parse(url.trim()).map_err(|_| Refused::Scheme)?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(Refused::Scheme);
        }
        match parsed.host() {
            None => return Err(Refused::Scheme),
            Some(Host::Ipv4(a)) if !self.addr_allowed(IpAddr::V4(a)) => {
                return Err(Refused::Destination)
            }
            Some(Host::Ipv6(a)) if !self.addr_allowed(IpAddr::V6(a)) => {
                return Err(Refused::Destination)
            }
            Some(Host::Domain(d)) => {
                let d = d.trim_end_matches('.').to_ascii_lowercase();
                let local = d == "localhost" || d.ends_with(".localhost");
                if local && !self.host_listed(&d) && !self.addr_allowed(Ipv4Addr::LOCALHOST.into())
                {
                    return Err(Refused::Destination);
                }
            }
            Some(_) => {}
        }
        Ok(parsed)
    }

    /// [`check_url`](Self::check_url), then the addresses its host name resolves to now (bounded by
    /// `timeout`): any refused address refuses the URL. A name that does not resolve passes: the
    /// request itself is checked again when it is made.
    pub async fn check_resolved(&self, url: &str, timeout: Duration) -> Result<(), Refused> {
        let parsed = self.check_url(url)?;
        let Some(Host::Domain(name)) = parsed.host() else {
            return Ok(());
        };
        if self.host_listed(name) {
            return Ok(());
        }
        let port = parsed.port_or_known_default().unwrap_or(80);
        let lookup = tokio::net::lookup_host((name.to_string(), port));
        match tokio::time::timeout(timeout, lookup).await {
            Ok(Ok(addrs)) => {
                for a in addrs {
                    if !self.addr_allowed(a.ip()) {
                        return Err(Refused::Destination);
                    }
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }
}

fn is_label_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-' || b == b'_'
}

/// The IPv4 address inside an IPv4-mapped IPv6 address; any other address as it is.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(a) => a.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

fn in_net(ip: IpAddr, net: IpAddr, prefix: u8) -> bool {
    match (ip, net) {
        (IpAddr::V4(a), IpAddr::V4(n)) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            u32::from(a) & mask == u32::from(n) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(n)) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
            u128::from(a) & mask == u128::from(n) & mask
        }
        _ => false,
    }
}

/// Addresses a caller may not reach by default: everything that is not the public internet.
pub fn is_internal(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(a) => v4_internal(a),
        IpAddr::V6(a) => v6_internal(a),
    }
}

fn v4_internal(a: Ipv4Addr) -> bool {
    let [o0, o1, o2, _] = a.octets();
    o0 == 0 // "this network"
        || o0 == 10 // private
        || o0 == 127 // loopback
        || (o0 == 100 && (o1 & 0xc0) == 64) // shared address space (CGNAT; Alibaba's metadata)
        || (o0 == 169 && o1 == 254) // link-local (the cloud metadata address)
        || (o0 == 172 && (o1 & 0xf0) == 16) // private
        || (o0 == 192 && o1 == 168) // private
        || (o0 == 192 && o1 == 0 && (o2 == 0 || o2 == 2)) // IETF protocol assignments, TEST-NET-1
        || (o0 == 198 && (o1 & 0xfe) == 18) // benchmarking
        || (o0 == 198 && o1 == 51 && o2 == 100) // TEST-NET-2
        || (o0 == 203 && o1 == 0 && o2 == 113) // TEST-NET-3
        || o0 >= 224 // multicast, reserved, broadcast
}

fn v6_internal(a: Ipv6Addr) -> bool {
    if let Some(v4) = a.to_ipv4_mapped() {
        return v4_internal(v4);
    }
    let s = a.segments();
    let embedded =
        |hi: u16, lo: u16| v4_internal(Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo)));
    (s[..6] == [0; 6]) // ::, ::1 and the deprecated IPv4-compatible ::a.b.c.d
        || (s[0] & 0xfe00) == 0xfc00 // unique local (fd00:ec2::254 is a metadata address)
        || (s[0] & 0xffc0) == 0xfe80 // link-local
        || (s[0] & 0xffc0) == 0xfec0 // site-local (deprecated)
        || (s[0] & 0xff00) == 0xff00 // multicast
        || (s[0] == 0x0100 && s[1..4] == [0; 3]) // discard
        || (s[0] == 0x2001 && s[1] == 0x0db8) // documentation
        || (s[0] == 0x2001 && s[1] == 0) // Teredo: an obfuscated IPv4 address inside
        || (s[0] == 0x0064 && s[1] == 0xff9b && embedded(s[6], s[7])) // NAT64 of an internal v4
        || (s[0] == 0x2002 && embedded(s[1], s[2])) // 6to4 of an internal v4
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn internal_ranges_are_refused_and_public_ones_pass() {
        let p = FetchPolicy::default();
        for internal in [
            "0.0.0.0",
            "10.1.2.3",
            "127.0.0.1",
            "127.255.0.9",
            "100.100.100.200",
            "169.254.169.254",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "192.0.0.170",
            "198.18.0.1",
            "224.0.0.1",
            "255.255.255.255",
            "::",
            "::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "::127.0.0.1",
            "fd00:ec2::254",
            "fc00::1",
            "fe80::1",
            "ff02::1",
            "64:ff9b::a9fe:a9fe",
            "2002:0a00:0001::1",
            "2001:0:4136:e378::1",
        ] {
            assert!(!p.addr_allowed(ip(internal)), "{internal} allowed");
        }
        for public in [
            "1.1.1.1",
            "8.8.8.8",
            "172.32.0.1",
            "100.128.0.1",
            "169.255.0.1",
            "2606:4700:4700::1111",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
            "2002:0808:0808::1",
        ] {
            assert!(p.addr_allowed(ip(public)), "{public} refused");
        }
    }

    #[test]
    fn urls_are_checked_by_scheme_and_address_literal() {
        let p = FetchPolicy::default();
        assert!(p.check_url("https://example.com/hook?x=1").is_ok());
        assert!(p.check_url("HTTP://Example.COM").is_ok());
        assert!(p.check_url("http://93.184.216.34:8080/").is_ok());
        for scheme in [
            "ftp://x/",
            "file:///etc/passwd",
            "gopher://127.0.0.1/",
            "data:,x",
            "not a url",
            "http://",
        ] {
            assert_eq!(
                p.check_url(scheme).unwrap_err(),
                Refused::Scheme,
                "{scheme}"
            );
        }
        for refused in [
            "http://127.0.0.1:9/",
            "http://[::1]/",
            "http://[::ffff:7f00:1]/",
            "http://169.254.169.254/latest/meta-data/",
            // The same address written the ways a URL parser reads it.
            "http://2130706433/",
            "http://0x7f.1/",
            "http://0177.0.0.1/",
            "http://127.1/",
            "http://user:pw@10.0.0.1/",
            "http://example.com@127.0.0.1/",
            "http://localhost:8080/",
            "http://LOCALHOST./",
            "http://api.localhost/",
        ] {
            assert_eq!(
                p.check_url(refused).unwrap_err(),
                Refused::Destination,
                "{refused}"
            );
        }
        // The authority ends at the first '/', '?' or '#': this host is public.
        assert!(p.check_url("http://example.com/@127.0.0.1").is_ok());
    }

    #[test]
    fn listed_ranges_and_hosts_are_allowed() {
        let p =
            FetchPolicy::parse(&["10.0.0.0/8", "::1", " minio.Internal. ", "127.0.0.1"]).unwrap();
        assert!(p.addr_allowed(ip("10.200.0.1")));
        assert!(p.addr_allowed(ip("::1")));
        assert!(p.addr_allowed(ip("127.0.0.1")));
        // A listed IPv4 address is listed in its IPv6-mapped form too.
        assert!(p.addr_allowed(ip("::ffff:127.0.0.1")));
        assert!(!p.addr_allowed(ip("127.0.0.2")));
        assert!(!p.addr_allowed(ip("192.168.0.1")));
        assert!(p.host_listed("MINIO.internal"));
        assert!(!p.host_listed("other.internal"));
        assert!(p.check_url("http://localhost/").is_ok());

        let dev = FetchPolicy::loopback();
        assert!(dev.check_url("http://127.0.0.1:9/").is_ok());
        assert!(dev.check_url("http://localhost/").is_ok());
        assert!(dev.check_url("http://[::1]:80/").is_ok());
        assert!(dev.check_url("http://10.0.0.1/").is_err());

        assert_eq!(
            FetchPolicy::parse(&["none"]).unwrap(),
            FetchPolicy::default()
        );
        assert_eq!(
            FetchPolicy::parse::<&str>(&[]).unwrap(),
            FetchPolicy::default()
        );
        for bad in ["10.0.0.0/33", "::1/129", "host/8", "a..b", "-/x", "a b"] {
            assert!(FetchPolicy::parse(&[bad]).is_err(), "{bad}");
        }
        let p = FetchPolicy::parse(&["0.0.0.0/0"]).unwrap();
        assert!(p.addr_allowed(ip("169.254.169.254")));
        assert!(!p.addr_allowed(ip("fe80::1")));
    }

    #[tokio::test]
    async fn names_are_checked_on_what_they_resolve_to() {
        let p = FetchPolicy::default();
        // `localhost` resolves to loopback (and is refused by name before that).
        assert_eq!(
            p.check_resolved("http://localhost:9/", SUBMIT_RESOLVE_TIMEOUT)
                .await
                .unwrap_err(),
            Refused::Destination
        );
        // A name that does not resolve passes here (the request is checked when it is made).
        assert!(p
            .check_resolved("http://nothing.invalid/", SUBMIT_RESOLVE_TIMEOUT)
            .await
            .is_ok());
        let listed = FetchPolicy::parse(&["localhost"]).unwrap();
        assert!(listed
            .check_resolved("http://localhost:9/", SUBMIT_RESOLVE_TIMEOUT)
            .await
            .is_ok());
    }
}
