//! Remote image fetching that cannot be pointed at the server's own network.
//!
//! A server that fetches URLs for its callers can be asked for `http://169.254.169.254/`
//! (cloud metadata), `http://localhost:6379/` or any host on the private network behind it.
//! So every fetch:
//! - resolves the host once, in [`PublicOnlyResolver`], and keeps only addresses that are
//!   globally routable ([`is_public`]); a host with none is refused;
//! - connects to exactly those addresses: the resolver's answer is what ureq connects to, so a
//!   second DNS lookup that could return another address (DNS rebinding) never happens;
//! - follows no redirect (one could lead anywhere) and uses no proxy from the environment
//!   (a proxy would resolve the host itself, past the check).
//!
//! `--allowed-media-domains` narrows the host names first; the address check applies to them too.

use std::io::Read;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use ureq::unversioned::resolver::{DefaultResolver, ResolvedSocketAddrs, Resolver};
use ureq::unversioned::transport::{DefaultConnector, NextTimeout};

/// Whether `ip` is a globally routable unicast address: not loopback, private (RFC 1918),
/// shared (CGNAT, 100.64/10), link-local (169.254/16, fe80::/10), multicast, unspecified,
/// broadcast, documentation, benchmarking, reserved (240/4), unique-local (fc00::/7),
/// site-local (fec0::/10), discard-only (100::/64), the IPv4/IPv6 translation prefixes, or an
/// IPv6 form that embeds an IPv4 address (mapped, compatible, NAT64, 6to4, Teredo) — those
/// are judged by, or refused for, the IPv4 address inside.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => is_public_v6(v6),
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    let refused = a == 0 // "this network", 0.0.0.0 included
        || a == 10
        || a == 127
        || (a == 100 && (64..128).contains(&b)) // shared address space (CGNAT)
        || (a == 169 && b == 254)
        || (a == 172 && (16..32).contains(&b))
        || (a == 192 && b == 168)
        || (a == 192 && b == 0 && c == 0) // IETF protocol assignments
        || (a == 192 && b == 0 && c == 2) // TEST-NET-1
        || (a == 192 && b == 88 && c == 99) // 6to4 relay anycast
        || (a == 198 && (b == 18 || b == 19)) // benchmarking
        || (a == 198 && b == 51 && c == 100) // TEST-NET-2
        || (a == 203 && b == 0 && c == 113) // TEST-NET-3
        || a >= 224; // multicast (224/4), reserved (240/4), broadcast
    !refused
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    let s = ip.segments();
    // ::ffff:a.b.c.d (mapped) and ::a.b.c.d (compatible, deprecated): the IPv4 inside decides
    // for mapped; compatible addresses are refused outright (no host uses them, and `::1` and
    // `::` are among them).
    if s[..5] == [0; 5] && s[5] == 0xffff {
        return is_public_v4(Ipv4Addr::new(
            (s[6] >> 8) as u8,
            s[6] as u8,
            (s[7] >> 8) as u8,
            s[7] as u8,
        ));
    }
    if s[..6] == [0; 6] {
        return false; // ::, ::1 and the IPv4-compatible range
    }
    let refused = (s[0] & 0xfe00) == 0xfc00 // unique local fc00::/7
        || (s[0] & 0xffc0) == 0xfe80 // link-local fe80::/10
        || (s[0] & 0xffc0) == 0xfec0 // site-local fec0::/10 (deprecated)
        || (s[0] & 0xff00) == 0xff00 // multicast
        || (s[0] == 0x0064 && s[1] == 0xff9b) // NAT64 64:ff9b::/96 and 64:ff9b:1::/48
        || (s[0] == 0x0100 && s[1..4] == [0, 0, 0]) // discard-only 100::/64
        || (s[0] == 0x2001 && s[1] < 0x0200) // 2001::/23 IETF protocol assignments, Teredo
        || (s[0] == 0x2001 && s[1] == 0x0db8) // documentation
        || s[0] == 0x2002 // 6to4: an IPv4 address inside, routed by relays
        || (s[0] & 0xe000) != 0x2000; // outside global unicast 2000::/3
    !refused
}

/// Resolves with the system resolver, then keeps the public addresses only.
#[derive(Debug, Default)]
pub struct PublicOnlyResolver {
    inner: DefaultResolver,
}

impl Resolver for PublicOnlyResolver {
    fn resolve(
        &self,
        uri: &ureq::http::Uri,
        config: &ureq::config::Config,
        timeout: NextTimeout,
    ) -> Result<ResolvedSocketAddrs, ureq::Error> {
        let all = self.inner.resolve(uri, config, timeout)?;
        let mut kept = self.empty();
        let mut refused: Option<SocketAddr> = None;
        for addr in all.iter() {
            if is_public(addr.ip()) {
                kept.push(*addr);
            } else {
                refused.get_or_insert(*addr);
            }
        }
        if kept.is_empty() {
            let why = match refused {
                Some(a) => format!("the host resolves to {}, which is not a public address", a.ip()),
                None => "the host resolves to no address".into(),
            };
            return Err(ureq::Error::Io(std::io::Error::new(
                std::io::ErrorKind::PermissionDenied,
                why,
            )));
        }
        Ok(kept)
    }
}

/// Fetches `url` (http or https) from a public address only, within `timeout`, reading at
/// most `limit` bytes.
pub fn fetch_public(url: &str, timeout: Duration, limit: u64) -> Result<Vec<u8>, String> {
    let config = ureq::Agent::config_builder()
        .timeout_global(Some(timeout))
        .max_redirects(0)
        .http_status_as_error(true)
        .proxy(None)
        .build();
    let agent = ureq::Agent::with_parts(config, DefaultConnector::default(), PublicOnlyResolver::default());
    let resp = agent.get(url).call().map_err(|e| format!("cannot fetch {url}: {e}"))?;
    let (_, body) = resp.into_parts();
    read_limited(body.into_reader(), limit).map_err(|e| format!("{url}: {e}"))
}

/// At most `limit` bytes of `r`; an error past that.
pub(crate) fn read_limited(r: impl Read, limit: u64) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    r.take(limit + 1).read_to_end(&mut out).map_err(|e| e.to_string())?;
    if out.len() as u64 > limit {
        return Err(format!("the image is over the limit of {limit} bytes"));
    }
    Ok(out)
}
