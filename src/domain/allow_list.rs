//! A key's IP allow-list (docs/behaviour.md, "Key hygiene"): the networks a
//! key may be used from, IPv4 and IPv6. An empty list allows every address.
//!
//! Entries are validated once, when a key is created or updated, and parsed
//! once more when the key is loaded into the Check cache, so that a Check
//! only compares addresses.

use std::net::IpAddr;

use ipnet::IpNet;

use super::echo::Echo;

/// Entries one key may hold at most.
pub const MAX_ALLOWED_CIDRS: usize = 100;

/// Why an `allowed_cidrs` list is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CidrError {
    #[error(
        "allowed_cidrs[{index}] {value} is not a CIDR such as 203.0.113.0/24 or 2001:db8::/32"
    )]
    Malformed { index: usize, value: Echo },
    #[error(
        "allowed_cidrs[{index}] {value} has bits set after its prefix length; write {network}"
    )]
    HostBitsSet {
        index: usize,
        value: Echo,
        network: String,
    },
    #[error("allowed_cidrs may hold at most {MAX_ALLOWED_CIDRS} entries (got {got})")]
    TooMany { got: usize },
}

/// Validates a requested list and returns it in canonical form: each entry
/// a network (`10.0.0.0/8`); a bare address stands for itself (`/32`,
/// `/128`). Duplicates are dropped, order kept.
pub fn validate(raw: &[String]) -> Result<Vec<String>, CidrError> {
    if raw.len() > MAX_ALLOWED_CIDRS {
        return Err(CidrError::TooMany { got: raw.len() });
    }
    let mut canonical: Vec<String> = Vec::with_capacity(raw.len());
    for (index, entry) in raw.iter().enumerate() {
        let text = entry.trim();
        let network = parse_entry(text).ok_or_else(|| CidrError::Malformed {
            index,
            value: Echo::of(entry),
        })?;
        if network.trunc() != network {
            return Err(CidrError::HostBitsSet {
                index,
                value: Echo::of(entry),
                network: network.trunc().to_string(),
            });
        }
        let text = network.to_string();
        if !canonical.contains(&text) {
            canonical.push(text);
        }
    }
    Ok(canonical)
}

fn parse_entry(text: &str) -> Option<IpNet> {
    text.parse::<IpNet>()
        .ok()
        .or_else(|| text.parse::<IpAddr>().ok().map(IpNet::from))
}

/// The parsed networks of one key, held by the Check cache.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowList {
    /// `None`: every address. `Some`: only these (possibly none).
    networks: Option<Box<[IpNet]>>,
}

impl AllowList {
    /// Parses stored entries. An entry that does not parse (only a damaged
    /// row could hold one) is left out without opening the list: a key with
    /// a non-empty stored list never allows every address.
    pub fn from_stored(entries: &[String]) -> Self {
        if entries.is_empty() {
            return Self::default();
        }
        let networks = entries
            .iter()
            .filter_map(|entry| parse_entry(entry.trim()))
            .collect();
        Self {
            networks: Some(networks),
        }
    }

    pub fn is_open(&self) -> bool {
        self.networks.is_none()
    }

    /// Whether a client at `ip` may use the key. An unknown client address
    /// is allowed only by an open list. IPv4-mapped IPv6 addresses
    /// (`::ffff:192.0.2.1`) are compared as the IPv4 address they carry.
    pub fn permits(&self, ip: Option<IpAddr>) -> bool {
        let Some(networks) = &self.networks else {
            return true;
        };
        let Some(ip) = ip else {
            return false;
        };
        let ip = ip.to_canonical();
        networks.iter().any(|network| network.contains(&ip))
    }

    /// The first entry of `requested` (a list as a key would hold it) that
    /// reaches beyond this list, e.g. when a key restricted to some networks
    /// creates another: `None` when every entry lies inside one of ours. An
    /// empty `requested` list means every address, so only an open list
    /// holds it; an entry that does not parse is never within.
    pub fn first_not_within(&self, requested: &[String]) -> Option<String> {
        let networks = self.networks.as_ref()?;
        if requested.is_empty() {
            return Some("every address (an empty allowed_cidrs)".to_owned());
        }
        requested
            .iter()
            .find(|entry| {
                parse_entry(entry.trim()).is_none_or(|wanted| {
                    !networks.iter().any(|held| held.contains(&wanted.trunc()))
                })
            })
            .cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(entries: &[&str]) -> Vec<String> {
        entries.iter().map(|s| s.to_string()).collect()
    }

    fn ip(text: &str) -> Option<IpAddr> {
        Some(text.parse().unwrap())
    }

    #[test]
    fn validation_canonicalises_and_names_the_bad_entry() {
        assert_eq!(
            validate(&list(&[
                " 10.0.0.0/8",
                "2001:DB8::/32",
                "192.0.2.7",
                "10.0.0.0/8"
            ])),
            Ok(list(&["10.0.0.0/8", "2001:db8::/32", "192.0.2.7/32"]))
        );
        assert!(matches!(
            validate(&list(&["10.0.0.0/8", "10.0.0.0/33"])),
            Err(CidrError::Malformed { index: 1, .. })
        ));
        assert!(matches!(
            validate(&list(&["not an address"])),
            Err(CidrError::Malformed { index: 0, .. })
        ));
        let host_bits = validate(&list(&["10.1.2.3/8"])).unwrap_err();
        assert!(host_bits.to_string().contains("write 10.0.0.0/8"));
        let too_many: Vec<String> = (0..=MAX_ALLOWED_CIDRS)
            .map(|i| format!("10.0.{}.{}/32", i / 256, i % 256))
            .collect();
        assert_eq!(
            validate(&too_many),
            Err(CidrError::TooMany {
                got: MAX_ALLOWED_CIDRS + 1
            })
        );
    }

    #[test]
    fn an_empty_list_allows_every_address_even_an_unknown_one() {
        let open = AllowList::from_stored(&[]);
        assert!(open.permits(ip("203.0.113.9")));
        assert!(open.permits(None));
    }

    #[test]
    fn a_list_allows_only_its_networks_in_both_families() {
        let only = AllowList::from_stored(&list(&["203.0.113.0/24", "2001:db8::/32"]));
        assert!(only.permits(ip("203.0.113.200")));
        assert!(!only.permits(ip("203.0.114.1")));
        assert!(only.permits(ip("2001:db8:1::5")));
        assert!(!only.permits(ip("2001:db9::1")));
        assert!(only.permits(ip("::ffff:203.0.113.5")));
        assert!(!only.permits(None));
    }

    #[test]
    fn a_list_holds_only_networks_inside_its_own() {
        let only = AllowList::from_stored(&list(&["10.0.0.0/8", "2001:db8::/32"]));
        assert_eq!(
            only.first_not_within(&list(&["10.1.0.0/16", "2001:db8:5::/48", "10.2.3.4/32"])),
            None
        );
        assert_eq!(
            only.first_not_within(&list(&["10.1.0.0/16", "0.0.0.0/0"])),
            Some("0.0.0.0/0".to_owned())
        );
        assert_eq!(
            only.first_not_within(&list(&["2001:db8::/16"])),
            Some("2001:db8::/16".to_owned())
        );
        assert!(
            only.first_not_within(&[]).is_some(),
            "an empty list is every address"
        );
        assert!(only.first_not_within(&list(&["garbage"])).is_some());
        let open = AllowList::from_stored(&[]);
        assert_eq!(open.first_not_within(&[]), None);
        assert_eq!(open.first_not_within(&list(&["0.0.0.0/0"])), None);
    }

    #[test]
    fn a_damaged_stored_list_stays_closed() {
        let damaged = AllowList::from_stored(&list(&["garbage"]));
        assert!(!damaged.is_open());
        assert!(!damaged.permits(ip("203.0.113.9")));
    }
}
