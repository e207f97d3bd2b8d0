//! Which addresses a webhook may be delivered to (SSRF protection), and endpoint URL rules.
//!
//! The address check runs on every connection after DNS resolution (the transport adapter
//! resolves, filters with [`ip_allowed`], and connects only to what passed), so a DNS name
//! that points at an internal address is refused just like the literal address.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::{Error, Result};

/// Longest endpoint URL accepted.
pub const MAX_URL_LEN: usize = 2048;

fn v4_allowed(ip: Ipv4Addr) -> bool {
    let o = ip.octets();
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local() // 169.254/16: the cloud metadata address lives here
        || ip.is_multicast()
        || ip.is_broadcast()
        || ip.is_documentation()
        || o[0] == 0 // "this network"
        || (o[0] == 100 && (o[1] & 0xC0) == 64) // 100.64/10 carrier-grade NAT
        || (o[0] == 192 && o[1] == 0 && o[2] == 0) // 192.0.0/24 IETF protocol assignments
        || (o[0] == 198 && (o[1] & 0xFE) == 18) // 198.18/15 benchmarking
        || o[0] >= 240) // 240/4 reserved
}

/// Whether a webhook may connect to `ip`.
pub fn ip_allowed(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4_allowed(v4),
        IpAddr::V6(v6) => v6_allowed(v6),
    }
}

fn v6_allowed(ip: Ipv6Addr) -> bool {
    // IPv4 embedded in IPv6 (mapped ::ffff:a.b.c.d, compatible ::a.b.c.d, NAT64
    // 64:ff9b::/96) is judged as the IPv4 address it reaches.
    if let Some(v4) = ip.to_ipv4_mapped() {
        return v4_allowed(v4);
    }
    let s = ip.segments();
    if s[0] == 0x64 && s[1] == 0xff9b && s[2..6] == [0, 0, 0, 0] {
        let v4 = Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
        return v4_allowed(v4);
    }
    if s[..6] == [0, 0, 0, 0, 0, 0] && !ip.is_loopback() && !ip.is_unspecified() {
        let v4 = Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
        return v4_allowed(v4);
    }
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_multicast()
        || (s[0] & 0xfe00) == 0xfc00 // fc00::/7 unique local
        || (s[0] & 0xffc0) == 0xfe80 // fe80::/10 link-local
        || (s[0] & 0xffc0) == 0xfec0 // fec0::/10 site-local (deprecated)
        || s[0] == 0x2001 && s[1] == 0x0db8) // documentation
}

/// Checks an endpoint URL: absolute, `https` (or `http` when allowed), a host, no
/// credentials, at most [`MAX_URL_LEN`] characters. Returns the host.
pub fn validate_url(field: &str, url: &str, allow_http: bool) -> Result<String> {
    let bad = |m: &str| Error::validation(field, m.to_string());
    if url.len() > MAX_URL_LEN {
        return Err(bad("must be at most 2048 characters"));
    }
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(bad("must not contain spaces or control characters"));
    }
    // Schemes are case-insensitive (RFC 3986 3.1): `HTTPS://` is `https://`.
    let scheme = |prefix: &str| {
        url.get(..prefix.len())
            .filter(|head| head.eq_ignore_ascii_case(prefix))
            .map(|_| &url[prefix.len()..])
    };
    let rest = if let Some(r) = scheme("https://") {
        r
    } else if let Some(r) = scheme("http://") {
        if !allow_http {
            return Err(bad("must be an https URL (plain http is not allowed here)"));
        }
        r
    } else {
        return Err(bad("must be an absolute https URL"));
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    if authority.contains('@') {
        return Err(bad("must not contain credentials"));
    }
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (h, rest) = v6
            .split_once(']')
            .ok_or_else(|| bad("has an unclosed IPv6 address"))?;
        if h.parse::<Ipv6Addr>().is_err() {
            return Err(bad("has an invalid IPv6 address"));
        }
        (h, rest.strip_prefix(':'))
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return Err(bad("must name a host"));
    }
    if !authority.starts_with('[')
        && !host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
    {
        return Err(bad("has a host name with characters DNS does not allow"));
    }
    if let Some(p) = port {
        if p.parse::<u16>().map_or(true, |n| n == 0) {
            return Err(bad("has an invalid port"));
        }
    }
    Ok(host.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scheme_in_capitals_is_the_same_scheme() {
        assert_eq!(
            validate_url("url", "HTTPS://Hooks.Example.com/x", false).unwrap(),
            "hooks.example.com"
        );
        assert!(validate_url("url", "HTTP://127.0.0.1:4001/z", true).is_ok());
        assert!(validate_url("url", "HTTP://127.0.0.1:4001/z", false).is_err());
    }

    fn ok(s: &str) -> bool {
        ip_allowed(s.parse().unwrap())
    }

    #[test]
    fn public_addresses_pass() {
        for a in [
            "93.184.216.34",
            "8.8.8.8",
            "2606:4700:4700::1111",
            "100.128.0.1",
            "172.32.0.1",
        ] {
            assert!(ok(a), "{a}");
        }
    }

    #[test]
    fn internal_addresses_are_refused() {
        for a in [
            "127.0.0.1",
            "127.1.2.3",
            "10.0.0.1",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "100.127.255.255",
            "0.0.0.0",
            "224.0.0.1",
            "255.255.255.255",
            "240.0.0.1",
            "::1",
            "::",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "::ffff:10.0.0.1",
            "64:ff9b::7f00:1",
            "::127.0.0.1",
        ] {
            assert!(!ok(a), "{a} should be refused");
        }
    }

    #[test]
    fn urls() {
        assert_eq!(
            validate_url("url", "https://Hooks.Example.com:8443/x?y", false).unwrap(),
            "hooks.example.com"
        );
        assert_eq!(
            validate_url("url", "https://[::1]:80/", false).unwrap(),
            "::1"
        );
        assert!(validate_url("url", "http://example.com", true).is_ok());
        for bad in [
            "http://example.com",
            "ftp://x",
            "example.com",
            "https://",
            "https://u:p@x.com/",
            "https://exa mple.com",
            "https://example.com:99999/",
            "https://example.com:0/",
            "https://example.com:http/",
            "https://exa_mple.com/",
            "https://[::1/",
            "https://[nope]/",
            &format!("https://x.com/{}", "a".repeat(2048)),
        ] {
            assert_eq!(
                validate_url("url", bad, false).unwrap_err().field(),
                Some("url"),
                "{bad}"
            );
        }
    }
}
