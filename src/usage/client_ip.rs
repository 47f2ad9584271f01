//! The client IP recorded with usage.
//!
//! With `trusted_proxy_hops = N > 0`, the client is the N-th address from the
//! right of `x-forwarded-for` (the addresses your N trusted proxies appended,
//! Envoy included when it sets `use_remote_address`). Otherwise, or when that
//! entry is missing or not an address, the source address Envoy reports.

use std::net::{IpAddr, SocketAddr};

pub fn client_ip(
    forwarded_for: Option<&str>,
    source: Option<&str>,
    trusted_hops: usize,
) -> Option<IpAddr> {
    let from_header = forwarded_for
        .filter(|_| trusted_hops > 0)
        .and_then(|header| header.rsplit(',').nth(trusted_hops - 1))
        .and_then(parse_address);
    from_header.or_else(|| source.and_then(parse_address))
}

fn parse_address(raw: &str) -> Option<IpAddr> {
    let raw = raw.trim();
    raw.parse::<IpAddr>()
        .ok()
        .or_else(|| raw.parse::<SocketAddr>().ok().map(|s| s.ip()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trusted_hops_pick_from_the_right() {
        let xff = Some("203.0.113.9, 10.0.0.1, 10.0.0.2");
        assert_eq!(client_ip(xff, Some("10.0.0.3"), 1), "10.0.0.2".parse().ok());
        assert_eq!(
            client_ip(xff, Some("10.0.0.3"), 3),
            "203.0.113.9".parse().ok()
        );
        assert_eq!(client_ip(xff, Some("10.0.0.3"), 0), "10.0.0.3".parse().ok());
    }

    #[test]
    fn malformed_or_short_headers_fall_back_to_the_source() {
        let source = Some("192.0.2.1");
        assert_eq!(
            client_ip(Some("not-an-ip"), source, 1),
            "192.0.2.1".parse().ok()
        );
        assert_eq!(
            client_ip(Some("203.0.113.9"), source, 4),
            "192.0.2.1".parse().ok()
        );
        assert_eq!(client_ip(Some(""), source, 1), "192.0.2.1".parse().ok());
        assert_eq!(client_ip(None, Some("garbage"), 1), None);
        assert_eq!(
            client_ip(Some("[2001:db8::1]:443"), None, 1),
            "2001:db8::1".parse().ok()
        );
    }
}
