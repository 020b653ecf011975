//! Where a webhook may send: an `http` or `https` URL whose host is not a private, loopback,
//! link-local or otherwise internal address, unless the configuration allows those
//! (`[webhooks] allow_private_targets`). A URL is checked when a webhook is created or changed
//! (its literal address, or `localhost`), and every address its name resolves to is checked
//! again at each call ([`Guard`], the HTTP client's resolver), so that a name that later
//! points inside is refused too.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// Whether `ip` is an address a webhook may not call by default: loopback, private (RFC
/// 1918, unique local), link-local, shared (carrier-grade NAT), unspecified, broadcast,
/// multicast, documentation or benchmarking ranges; an IPv4 address mapped or compatible in
/// IPv6 is judged as the IPv4 address.
pub fn is_internal(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => internal_v4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => internal_v4(v4),
            None => internal_v6(v6),
        },
    }
}

fn internal_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_unspecified()
        || ip.is_broadcast()
        || ip.is_multicast()
        || ip.is_documentation()
        || a == 0
        || (a == 100 && (64..128).contains(&b))
        || (a == 192 && b == 0 && c == 0)
        || (a == 198 && (b == 18 || b == 19))
        || a >= 240
}

fn internal_v6(ip: Ipv6Addr) -> bool {
    let first = ip.segments()[0];
    ip.is_loopback()
        || ip.is_unspecified()
        || ip.is_multicast()
        || (first & 0xfe00) == 0xfc00
        || (first & 0xffc0) == 0xfe80
        || first == 0x2001 && ip.segments()[1] == 0x0db8
        || ip.to_ipv4().is_some_and(internal_v4) && ip.segments()[..6].iter().all(|s| *s == 0)
}

/// Checks a webhook's URL: what is wrong with it, in a sentence, or the parsed URL.
pub fn check_url(url: &str, allow_internal: bool) -> Result<reqwest::Url, String> {
    let parsed = reqwest::Url::parse(url).map_err(|e| format!("invalid url {url:?}: {e}"))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(format!(
            "invalid url {url:?}: the scheme must be http or https"
        ));
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(format!(
            "invalid url {url:?}: credentials in the URL are not kept secret; authenticate the calls by their signature"
        ));
    }
    let host = match parsed.host() {
        Some(h) => h,
        None => return Err(format!("invalid url {url:?}: it has no host")),
    };
    if allow_internal {
        return Ok(parsed);
    }
    let internal = match host {
        url::Host::Ipv4(ip) => is_internal(IpAddr::V4(ip)),
        url::Host::Ipv6(ip) => is_internal(IpAddr::V6(ip)),
        url::Host::Domain(name) => {
            let name = name.trim_end_matches('.').to_ascii_lowercase();
            name == "localhost" || name.ends_with(".localhost")
        }
    };
    if internal {
        return Err(format!(
            "url {url:?} targets a private, loopback or link-local address, which webhooks may not call unless the server's configuration allows it ([webhooks] allow_private_targets = true)"
        ));
    }
    Ok(parsed)
}

/// The HTTP client's resolver: the system's, with every internal address dropped unless
/// allowed; a name left with no address fails the call with the reason.
#[derive(Clone)]
pub struct Guard {
    pub allow_internal: bool,
}

impl reqwest::dns::Resolve for Guard {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let allow = self.allow_internal;
        Box::pin(async move {
            let host = name.as_str().to_string();
            let found: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let kept: Vec<SocketAddr> = found
                .iter()
                .copied()
                .filter(|a| allow || !is_internal(a.ip()))
                .collect();
            if kept.is_empty() {
                let why: Box<dyn std::error::Error + Send + Sync> = if found.is_empty() {
                    format!("{host} has no address").into()
                } else {
                    format!(
                        "{host} resolves only to private, loopback or link-local addresses, which webhooks may not call ([webhooks] allow_private_targets)"
                    )
                    .into()
                };
                return Err(why);
            }
            let addrs: reqwest::dns::Addrs = Box::new(kept.into_iter());
            Ok(addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_addresses_are_refused_and_public_ones_taken() {
        for bad in [
            "http://127.0.0.1/",
            "http://127.1.2.3:8080/x",
            "http://10.0.0.1/",
            "http://172.16.5.4/",
            "http://192.168.1.1/",
            "http://169.254.169.254/latest/meta-data",
            "http://100.64.0.1/",
            "http://0.0.0.0/",
            "http://[::1]/",
            "http://[fe80::1]/",
            "http://[fd00::1]/",
            "http://[::ffff:127.0.0.1]/",
            "http://[::ffff:10.0.0.1]/",
            "http://localhost:9000/",
            "http://api.localhost/",
        ] {
            let e = check_url(bad, false).expect_err(bad);
            assert!(e.contains("allow_private_targets"), "{bad}: {e}");
            assert!(check_url(bad, true).is_ok(), "{bad} allowed");
        }
        for good in [
            "https://example.com/hook",
            "http://93.184.216.34/x",
            "https://[2606:4700::1111]/",
        ] {
            assert!(check_url(good, false).is_ok(), "{good}");
        }
        for (bad, says) in [
            ("ftp://example.com/", "scheme"),
            ("not a url", "invalid url"),
            ("https://user:pw@example.com/", "credentials"),
        ] {
            let e = check_url(bad, true).expect_err(bad);
            assert!(e.contains(says), "{bad}: {e}");
        }
    }
}
