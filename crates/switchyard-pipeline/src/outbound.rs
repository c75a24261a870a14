//! Destinations' HTTP client: rustls (webpki roots plus `tls.ca_file`), no redirects followed,
//! and no connection to private, loopback, link-local or similar addresses unless allowed.
//! Names are resolved here and only the allowed addresses are handed to the connector, so the
//! address connected to is the address checked (a DNS answer that changes between a check
//! and the connect — rebinding — cannot slip through).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use reqwest::dns::{Addrs, Name, Resolve, Resolving};

/// Why an address may not be connected to, when it may not.
pub fn forbidden(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => forbidden_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return forbidden_v4(v4);
            }
            let segments = v6.segments();
            let first = segments[0];
            // Addresses that carry an IPv4 address: NAT64 (64:ff9b::/96), 6to4 (2002::/16) and
            // the deprecated IPv4-compatible form (::a.b.c.d).
            let embedded = if segments[..6] == [0x64, 0xff9b, 0, 0, 0, 0] || segments[..6] == [0; 6] && !v6.is_loopback() && !v6.is_unspecified() {
                Some(Ipv4Addr::new((segments[6] >> 8) as u8, segments[6] as u8, (segments[7] >> 8) as u8, segments[7] as u8))
            } else if first == 0x2002 {
                Some(Ipv4Addr::new((segments[1] >> 8) as u8, segments[1] as u8, (segments[2] >> 8) as u8, segments[2] as u8))
            } else {
                None
            };
            if let Some(v4) = embedded {
                return forbidden_v4(v4);
            }
            if v6.is_loopback() {
                Some("loopback")
            } else if v6.is_unspecified() {
                Some("unspecified")
            } else if first & 0xfe00 == 0xfc00 {
                Some("private (unique local)")
            } else if first & 0xffc0 == 0xfe80 {
                Some("link-local")
            } else if first & 0xff00 == 0xff00 {
                Some("multicast")
            } else {
                None
            }
        }
    }
}

fn forbidden_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, ..] = ip.octets();
    if ip.is_loopback() {
        Some("loopback")
    } else if ip.is_private() {
        Some("private")
    } else if ip.is_link_local() {
        Some("link-local")
    } else if a == 0 {
        Some("unspecified")
    } else if a == 100 && (64..128).contains(&b) {
        Some("shared address space (CGNAT)")
    } else if a == 198 && (b == 18 || b == 19) {
        Some("benchmarking")
    } else if a == 192 && b == 0 && ip.octets()[2] == 0 {
        Some("IETF protocol assignments")
    } else if ip.is_broadcast() || ip.is_multicast() || a >= 240 {
        Some("broadcast, multicast or reserved")
    } else {
        None
    }
}

/// Checks a URL's host when it is an address literal (names are checked when resolved).
pub fn check_url(url: &reqwest::Url, allow_private: bool) -> Result<(), String> {
    if allow_private {
        return Ok(());
    }
    let host = url.host_str().unwrap_or_default();
    let Ok(ip) = host.trim_start_matches('[').trim_end_matches(']').parse::<IpAddr>() else {
        return Ok(());
    };
    match forbidden(ip) {
        Some(why) => Err(format!("{ip} is a {why} address; set routing.allow_private_addresses to deliver there")),
        None => Ok(()),
    }
}

struct CheckedResolver;

impl Resolve for CheckedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let allowed: Vec<SocketAddr> = addrs.iter().copied().filter(|a| forbidden(a.ip()).is_none()).collect();
            if allowed.is_empty() {
                let shown: Vec<String> = addrs.iter().map(|a| a.ip().to_string()).collect();
                return Err(format!(
                    "{host} resolves only to private or reserved addresses ({}); set routing.allow_private_addresses to deliver there",
                    shown.join(", ")
                )
                .into());
            }
            Ok(Box::new(allowed.into_iter()) as Addrs)
        })
    }
}

/// The destinations' client.
pub fn client(ca_file: Option<&Path>, allow_private: bool, timeout: Duration) -> Result<reqwest::Client, String> {
    let mut builder = reqwest::Client::builder()
        .use_rustls_tls()
        .redirect(reqwest::redirect::Policy::none())
        // A proxy from the environment would be connected to instead of the checked address.
        .no_proxy()
        .timeout(timeout)
        .connect_timeout(timeout.min(Duration::from_secs(10)))
        .pool_max_idle_per_host(16)
        .user_agent(concat!("switchyard/", env!("CARGO_PKG_VERSION")));
    if let Some(ca_file) = ca_file {
        let pem = std::fs::read(ca_file).map_err(|e| format!("cannot read tls.ca_file {}: {e}", ca_file.display()))?;
        for root in reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| format!("tls.ca_file {}: {e}", ca_file.display()))? {
            builder = builder.add_root_certificate(root);
        }
    }
    if !allow_private {
        builder = builder.dns_resolver(Arc::new(CheckedResolver));
    }
    builder.build().map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_and_reserved_ranges_are_forbidden() {
        for ip in [
            "127.0.0.1", "10.1.2.3", "172.16.0.1", "192.168.1.1", "169.254.169.254", "100.64.0.1", "0.0.0.0", "198.18.0.1", "192.0.0.8", "::1", "fd00::1",
            "fe80::1", "::ffff:127.0.0.1", "::", "64:ff9b::a9fe:a9fe", "2002:7f00:1::", "::10.0.0.1",
        ] {
            assert!(forbidden(ip.parse().unwrap()).is_some(), "{ip}");
        }
        for ip in ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111", "172.32.0.1"] {
            assert!(forbidden(ip.parse().unwrap()).is_none(), "{ip}");
        }
        let url = reqwest::Url::parse("http://[::ffff:10.0.0.1]:8080/x").unwrap();
        assert!(check_url(&url, false).unwrap_err().contains("private"));
        assert!(check_url(&url, true).is_ok());
    }

    #[tokio::test]
    async fn names_resolving_to_loopback_are_not_connected_to() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let client = client(None, false, Duration::from_secs(2)).unwrap();
        let error = client.get(format!("http://localhost:{port}/")).send().await.unwrap_err();
        let chain = format!("{error:?}");
        assert!(chain.contains("private or reserved"), "{chain}");
    }
}
