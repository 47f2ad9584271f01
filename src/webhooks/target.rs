//! Which URLs a webhook may call (docs/behaviour.md, "Webhooks"): `https`
//! only unless `KEYGATE_WEBHOOK_ALLOW_HTTP`, and never an address that is
//! loopback, private, link-local (the cloud metadata service at
//! 169.254.169.254 among them), shared, reserved or multicast unless
//! `KEYGATE_WEBHOOK_ALLOW_PRIVATE`.
//!
//! The address rule is applied twice: to the URL when an endpoint is
//! registered, and to every address the name resolves to at delivery time
//! (the HTTP client's resolver is [`GuardedResolver`]), so a name that later
//! resolves elsewhere (DNS rebinding) is refused where it matters.

use std::{
    future::Future,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    pin::Pin,
    task::{Context, Poll},
};

use hyper_util::client::legacy::connect::dns::Name;

/// The SSRF switches.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TargetPolicy {
    pub allow_private: bool,
    pub allow_http: bool,
}

/// Why a URL may not be called.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    #[error("url must be an absolute http(s) URL of at most 2000 characters")]
    NotAUrl,
    #[error("url must use https (KEYGATE_WEBHOOK_ALLOW_HTTP is off)")]
    NotHttps,
    #[error("url must not carry a user name or password")]
    Credentials,
    #[error("url points at {0}, a loopback, private, link-local or reserved address (KEYGATE_WEBHOOK_ALLOW_PRIVATE is off)")]
    PrivateAddress(IpAddr),
    #[error("url's host {0} resolves to no address that may be called")]
    NoAllowedAddress(String),
}

const MAX_URL_CHARS: usize = 2000;
/// How long registration waits for DNS before accepting a name unchecked.
const REGISTRATION_LOOKUP: std::time::Duration = std::time::Duration::from_secs(2);

impl TargetPolicy {
    /// Checks a URL's shape, scheme and, when the host is an address
    /// literal or a name that resolves now, its addresses; and that the
    /// HTTP client can send to it (`url` takes hosts with `{`, `"` or a
    /// backtick that `http::Uri` refuses: such an endpoint would fail every
    /// attempt for the whole retry window).
    pub async fn check_url(&self, raw: &str) -> Result<url::Url, TargetError> {
        let url = self.check_shape(raw)?;
        url.as_str()
            .parse::<http::Uri>()
            .map_err(|_| TargetError::NotAUrl)?;
        let Some(host) = url.host_str() else {
            return Err(TargetError::NotAUrl);
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if let Ok(ip) = host.parse::<IpAddr>() {
            self.check_ip(ip)?;
        } else {
            let port = url.port_or_known_default().unwrap_or(443);
            let lookup = tokio::net::lookup_host((host, port));
            // A name that does not resolve (yet, or in time) is accepted:
            // delivery checks again, and retries.
            if let Ok(Ok(addrs)) = tokio::time::timeout(REGISTRATION_LOOKUP, lookup).await {
                for addr in addrs {
                    self.check_ip(addr.ip())?;
                }
            }
        }
        Ok(url)
    }

    /// The checks that need no DNS: parse, scheme, no credentials, and an
    /// address literal's address.
    pub fn check_shape(&self, raw: &str) -> Result<url::Url, TargetError> {
        if raw.chars().count() > MAX_URL_CHARS {
            return Err(TargetError::NotAUrl);
        }
        let url = url::Url::parse(raw.trim()).map_err(|_| TargetError::NotAUrl)?;
        match url.scheme() {
            "https" => {}
            "http" if self.allow_http => {}
            "http" => return Err(TargetError::NotHttps),
            _ => return Err(TargetError::NotAUrl),
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(TargetError::Credentials);
        }
        match url.host() {
            None => Err(TargetError::NotAUrl),
            Some(url::Host::Ipv4(ip)) => self.check_ip(IpAddr::V4(ip)).map(|()| url),
            Some(url::Host::Ipv6(ip)) => self.check_ip(IpAddr::V6(ip)).map(|()| url),
            Some(url::Host::Domain(_)) => Ok(url),
        }
    }

    /// [`check_shape`](Self::check_shape)'s URL as the request URI the
    /// HTTP client takes.
    pub fn check_uri(&self, raw: &str) -> Result<http::Uri, TargetError> {
        let url = self.check_shape(raw)?;
        url.as_str()
            .parse::<http::Uri>()
            .map_err(|_| TargetError::NotAUrl)
    }

    pub fn check_ip(&self, ip: IpAddr) -> Result<(), TargetError> {
        if self.allow_private || is_public(ip) {
            Ok(())
        } else {
            Err(TargetError::PrivateAddress(ip))
        }
    }
}

/// Whether an address is an ordinary public unicast one.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(ip) => is_public_v4(ip),
        IpAddr::V6(ip) => {
            if let Some(v4) = ip.to_ipv4_mapped() {
                return is_public_v4(v4);
            }
            let segments = ip.segments();
            let nat64 = segments[0] == 0x64 && segments[1] == 0xff9b && segments[2..6] == [0; 4];
            if nat64 {
                let [a, b] = segments[6].to_be_bytes();
                let [c, d] = segments[7].to_be_bytes();
                return is_public_v4(Ipv4Addr::new(a, b, c, d));
            }
            // 6to4 (2002::/16) carries the IPv4 address it reaches in its
            // second and third segments: a relay would take 2002:7f00:1::
            // to 127.0.0.1.
            if segments[0] == 0x2002 {
                let [a, b] = segments[1].to_be_bytes();
                let [c, d] = segments[2].to_be_bytes();
                return is_public_v4(Ipv4Addr::new(a, b, c, d));
            }
            !(ip.is_loopback()
                || ip.is_unspecified()
                || ip.is_multicast()
                || (segments[0] & 0xfe00) == 0xfc00 // unique local (fd00:ec2::254 too)
                || (segments[0] & 0xffc0) == 0xfe80 // link-local
                || (segments[0] & 0xffc0) == 0xfec0 // site-local (deprecated)
                || (segments[0] == 0x2001 && segments[1] == 0x0db8) // documentation
                // Teredo (2001::/32) and local-use NAT64 (64:ff9b:1::/48)
                // reach IPv4 addresses this check cannot read reliably.
                || (segments[0] == 0x2001 && segments[1] == 0)
                || (segments[0] == 0x64 && segments[1] == 0xff9b && segments[2] == 1)
                || segments[0] == 0 // IPv4-compatible and other reserved ::/16
                || (segments[0] == 0x100 && segments[1..4] == [0; 3])) // discard-only
        }
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    !(ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local() // 169.254/16: the metadata service
        || ip.is_unspecified()
        || ip.is_broadcast()
        || ip.is_multicast()
        || ip.is_documentation()
        || a == 0
        || (a == 100 && (b & 0xc0) == 64) // shared address space, 100.64/10
        || (a == 192 && b == 0 && c == 0) // IETF protocol assignments
        || (a == 198 && (b & 0xfe) == 18) // benchmarking, 198.18/15
        || a >= 240) // reserved
}

/// The HTTP client's resolver (hyper-util's `HttpConnector` calls it for
/// every name; an address literal was checked by `check_shape`): resolves
/// with the system resolver, then keeps only the addresses the policy
/// allows, so the connection is made to an address that was checked.
#[derive(Debug, Clone)]
pub struct GuardedResolver {
    pub policy: TargetPolicy,
}

type ResolveError = Box<dyn std::error::Error + Send + Sync>;

impl tower_service::Service<Name> for GuardedResolver {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = ResolveError;
    type Future =
        Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send + 'static>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Self::Future {
        let policy = self.policy;
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let resolved: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let allowed: Vec<SocketAddr> = resolved
                .into_iter()
                .filter(|addr| policy.check_ip(addr.ip()).is_ok())
                .collect();
            if allowed.is_empty() {
                let refused: ResolveError = Box::new(TargetError::NoAllowedAddress(host));
                return Err(refused);
            }
            Ok(allowed.into_iter())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STRICT: TargetPolicy = TargetPolicy {
        allow_private: false,
        allow_http: false,
    };

    #[test]
    fn private_loopback_link_local_and_metadata_addresses_are_not_public() {
        for refused in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "255.255.255.255",
            "::1",
            "::",
            "fe80::1",
            "fd00:ec2::254",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "64:ff9b::a9fe:a9fe",
            "2002:7f00:1::",
            "2002:a9fe:a9fe::1",
            "2001:0:4136:e378:8000:63bf:3fff:fdd2",
            "64:ff9b:1::a9fe:a9fe",
        ] {
            assert!(!is_public(refused.parse().unwrap()), "{refused}");
        }
        for allowed in [
            "93.184.216.34",
            "1.1.1.1",
            "2606:4700:4700::1111",
            "2002:5db8:d822::1",
        ] {
            assert!(is_public(allowed.parse().unwrap()), "{allowed}");
        }
    }

    #[test]
    fn the_shape_check_refuses_http_credentials_and_address_literals() {
        assert_eq!(
            STRICT.check_shape("http://example.com/hook").unwrap_err(),
            TargetError::NotHttps
        );
        assert_eq!(
            STRICT
                .check_shape("https://user:pw@example.com/hook")
                .unwrap_err(),
            TargetError::Credentials
        );
        assert!(matches!(
            STRICT.check_shape("https://169.254.169.254/latest/meta-data"),
            Err(TargetError::PrivateAddress(_))
        ));
        assert!(matches!(
            STRICT.check_shape("https://[::1]:8443/"),
            Err(TargetError::PrivateAddress(_))
        ));
        assert_eq!(
            STRICT.check_shape("ftp://example.com/").unwrap_err(),
            TargetError::NotAUrl
        );
        assert!(STRICT.check_shape("https://example.com/hook").is_ok());
        let open = TargetPolicy {
            allow_private: true,
            allow_http: true,
        };
        assert!(open.check_shape("http://127.0.0.1:9/hook").is_ok());
    }

    #[tokio::test]
    async fn a_url_the_http_client_cannot_send_to_is_refused_at_registration() {
        for host in ["exa{mple.com", "exa\"mple.com", "exa`mple.com"] {
            let raw = format!("https://{host}/hook");
            // `url` takes it ...
            assert!(STRICT.check_shape(&raw).is_ok(), "{raw}");
            // ... the client does not, so neither does registration.
            assert_eq!(
                STRICT.check_url(&raw).await.unwrap_err(),
                TargetError::NotAUrl,
                "{raw}"
            );
        }
    }
}
