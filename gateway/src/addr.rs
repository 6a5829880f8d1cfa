//! Which addresses the gateway may connect to on a sandbox's behalf when the name came from
//! the sandbox (passthrough hosts, and routes without an admin-written `upstream`): never
//! loopback, private, link-local (where cloud metadata answers), shared, multicast or reserved
//! ranges, in IPv4 or IPv6 (mapped and embedded IPv4 included). A name is resolved once, each
//! address checked, and the connection made to a checked address, so a DNS answer that
//! changes between check and use (rebinding) cannot slip through.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

/// Why `ip` is not a public address, or `None` when it is.
pub fn forbidden(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => forbidden_v4(v4),
        IpAddr::V6(v6) => forbidden_v6(v6),
    }
}

fn forbidden_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let o = ip.octets();
    let n = u32::from(ip);
    let within = |net: u32, bits: u32| n >> (32 - bits) == net >> (32 - bits);
    if o[0] == 0 {
        Some("an unspecified (0.0.0.0/8) address")
    } else if ip.is_loopback() {
        Some("a loopback address")
    } else if ip.is_private() {
        Some("a private address")
    } else if ip.is_link_local() {
        Some("a link-local address (cloud metadata services answer there)")
    } else if within(0x6440_0000, 10) {
        Some("a shared (carrier-grade NAT) address")
    } else if within(0xC000_0000, 24) {
        Some("an IETF protocol address")
    } else if within(0xC612_0000, 15) {
        Some("a benchmarking address")
    } else if ip.is_multicast() || o[0] >= 240 {
        Some("a multicast, reserved or broadcast address")
    } else {
        None
    }
}

fn forbidden_v6(ip: Ipv6Addr) -> Option<&'static str> {
    let s = ip.segments();
    if ip.is_unspecified() {
        return Some("the unspecified address");
    }
    if ip.is_loopback() {
        return Some("a loopback address");
    }
    // IPv4-mapped (::ffff:a.b.c.d), IPv4-compatible (::a.b.c.d), NAT64 (64:ff9b::/96) and 6to4
    // (2002:AABB:CCDD::/48) carry an IPv4 address, which decides.
    let mapped = s[..5] == [0; 5] && (s[5] == 0xffff || s[5] == 0);
    let nat64 = s[..6] == [0x64, 0xff9b, 0, 0, 0, 0];
    let embedded = if mapped || nat64 {
        Some(Ipv4Addr::new(
            (s[6] >> 8) as u8,
            s[6] as u8,
            (s[7] >> 8) as u8,
            s[7] as u8,
        ))
    } else if s[0] == 0x2002 {
        Some(Ipv4Addr::new(
            (s[1] >> 8) as u8,
            s[1] as u8,
            (s[2] >> 8) as u8,
            s[2] as u8,
        ))
    } else {
        None
    };
    if let Some(v4) = embedded {
        return forbidden_v4(v4);
    }
    match s[0] {
        x if x & 0xfe00 == 0xfc00 => Some("a unique local (private) address"),
        x if x & 0xffc0 == 0xfe80 => Some("a link-local address"),
        x if x & 0xffc0 == 0xfec0 => Some("a site-local address"),
        x if x & 0xff00 == 0xff00 => Some("a multicast address"),
        0x0100 if s[1..4] == [0, 0, 0] => Some("a discard address"),
        _ => None,
    }
}

/// Resolves `host:port` once and keeps only addresses [`forbidden`] allows. Fails (with a
/// reason that names no internal detail beyond the address kind) when any address is
/// forbidden: a name that points inside as well as outside is not trusted at all.
pub async fn resolve_public(host: &str, port: u16) -> Result<Vec<SocketAddr>, String> {
    let addrs: Vec<SocketAddr> = match host.parse::<IpAddr>() {
        Ok(ip) => vec![SocketAddr::new(ip, port)],
        Err(_) => tokio::time::timeout(
            Duration::from_secs(10),
            tokio::net::lookup_host((host, port)),
        )
        .await
        .map_err(|_| format!("{host} did not resolve within 10 s"))?
        .map_err(|e| format!("{host} does not resolve: {e}"))?
        .collect(),
    };
    if addrs.is_empty() {
        return Err(format!("{host} has no address"));
    }
    if let Some((a, why)) = addrs
        .iter()
        .find_map(|a| forbidden(a.ip()).map(|why| (a, why)))
    {
        return Err(format!(
            "{host} resolves to {} ({why}), which sandboxes may not reach",
            a.ip()
        ));
    }
    Ok(addrs)
}

/// The DNS resolver of the upstream client for hosts a sandbox named: it answers only with
/// public addresses, and fails for a name with any internal one.
#[derive(Clone, Copy, Debug, Default)]
pub struct PublicResolver;

impl tower_service::Service<hyper_util::client::legacy::connect::dns::Name> for PublicResolver {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = std::io::Error;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>,
    >;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: hyper_util::client::legacy::connect::dns::Name) -> Self::Future {
        let host = name.as_str().to_string();
        Box::pin(async move {
            resolve_public(&host, 0)
                .await
                .map(|a| a.into_iter())
                .map_err(std::io::Error::other)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inside_addresses_are_forbidden_and_public_ones_allowed() {
        for ip in [
            "127.0.0.1",
            "127.8.9.10",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "0.1.2.3",
            "224.0.0.1",
            "255.255.255.255",
            "240.0.0.1",
            "198.18.0.1",
            "192.0.0.8",
            "::1",
            "::",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "::10.0.0.1",
            "64:ff9b::a00:1",
            "2002:c0a8:0101::1",
            "fc00::1",
            "fd00:ec2::254",
            "fe80::1",
            "fec0::1",
            "ff02::1",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert!(forbidden(ip).is_some(), "{ip} must be forbidden");
        }
        for ip in [
            "1.1.1.1",
            "140.82.112.3",
            "172.32.0.1",
            "203.0.113.7",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
            "2002:0808:0808::1",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(forbidden(ip), None, "{ip} is public");
        }
    }

    #[tokio::test]
    async fn a_name_is_checked_on_every_address_it_resolves_to() {
        let err = resolve_public("localhost", 443).await.unwrap_err();
        assert!(err.contains("loopback"), "{err}");
        let err = resolve_public("10.0.0.1", 443).await.unwrap_err();
        assert!(err.contains("private"), "{err}");
        assert_eq!(
            resolve_public("203.0.113.7", 443).await.unwrap(),
            vec!["203.0.113.7:443".parse().unwrap()]
        );
    }
}
