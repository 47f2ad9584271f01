//! Endpoint normalisation: `/v1/orders/42?x=1` → `/v1/orders/{id}`, so that
//! per-endpoint counts group requests by route rather than by resource; a
//! segment holding anything key-shaped becomes `{key}`, so that no key ever
//! reaches the usage tables.

use std::{collections::HashMap, sync::Arc};

use percent_encoding::percent_decode_str;

use crate::domain::contains_key_shaped;

/// Longest endpoint stored; longer ones are cut at a segment boundary.
const MAX_ENDPOINT_LEN: usize = 256;

/// Raw paths the memo keeps before it starts afresh.
const MEMO_CAPACITY: usize = 4096;

/// The normalised endpoints of the raw paths seen lately, for the flusher: a
/// client repeating a call costs one normalisation, not one a request, and
/// its events share one endpoint. Bounded: forgotten whole when full.
#[derive(Debug, Default)]
pub struct EndpointMemo {
    known: HashMap<Box<str>, Arc<str>, foldhash::fast::RandomState>,
}

impl EndpointMemo {
    pub fn endpoint(&mut self, raw: &str) -> Arc<str> {
        if let Some(endpoint) = self.known.get(raw) {
            return endpoint.clone();
        }
        if self.known.len() >= MEMO_CAPACITY {
            self.known.clear();
        }
        let endpoint: Arc<str> = normalize_endpoint(raw).into();
        self.known.insert(raw.into(), endpoint.clone());
        endpoint
    }
}

pub fn normalize_endpoint(raw: &str) -> String {
    let path = raw.split(['?', '#']).next().unwrap_or("");
    let mut normalized = String::with_capacity(path.len().min(MAX_ENDPOINT_LEN));
    for segment in path.split('/').filter(|s| !s.is_empty()) {
        let decoded = percent_decode_str(segment).decode_utf8_lossy();
        // A key pasted into a path (`/v1/files/sk_live_….json`) must not be
        // stored, whatever surrounds it.
        let shown = if contains_key_shaped(&decoded) {
            "{key}"
        } else if looks_like_id(&decoded) {
            "{id}"
        } else {
            segment
        };
        if normalized.len() + 1 + shown.len() > MAX_ENDPOINT_LEN {
            break;
        }
        normalized.push('/');
        normalized.push_str(shown);
    }
    if normalized.is_empty() {
        normalized.push('/');
    }
    normalized
}

fn looks_like_id(segment: &str) -> bool {
    let bytes = segment.as_bytes();
    let all = |f: fn(&u8) -> bool| bytes.iter().all(f);
    let any = |f: fn(&u8) -> bool| bytes.iter().any(f);
    if all(u8::is_ascii_digit) {
        return true;
    }
    if is_uuid(segment) {
        return true;
    }
    if bytes.len() >= 16 && all(u8::is_ascii_hexdigit) {
        return true;
    }
    // Opaque tokens: base58 / base64url ids, prefixed ids like cus_NffrFeUfNV2Hib.
    let token_chars = all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'='));
    let mixed =
        any(u8::is_ascii_digit) || (any(u8::is_ascii_uppercase) && any(u8::is_ascii_lowercase));
    token_chars && bytes.len() >= 16 && mixed
}

fn is_uuid(segment: &str) -> bool {
    let bytes = segment.as_bytes();
    bytes.len() == 36
        && bytes.iter().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => *b == b'-',
            _ => b.is_ascii_hexdigit(),
        })
}

#[cfg(test)]
mod tests {
    use super::normalize_endpoint as n;

    #[test]
    fn numbers_uuids_and_hex_become_ids() {
        assert_eq!(n("/v1/orders/42"), "/v1/orders/{id}");
        assert_eq!(
            n("/v1/orders/5f0c6e4e-8d3b-4a7e-9b1c-2d3e4f5a6b7c/items/7"),
            "/v1/orders/{id}/items/{id}"
        );
        assert_eq!(n("/blobs/deadbeefdeadbeefdeadbeef"), "/blobs/{id}");
    }

    #[test]
    fn opaque_tokens_become_ids() {
        assert_eq!(n("/v1/customers/cus_NffrFeUfNV2Hib"), "/v1/customers/{id}");
        assert_eq!(n("/v1/files/3mJr7AoUXx2Wqd9N8t5fLk"), "/v1/files/{id}");
        assert_eq!(n("/v1/files/aGVsbG8td29ybGQtMTIz"), "/v1/files/{id}");
    }

    /// The Envoy module reports endpoints it normalised (docs/envoy-module.md,
    /// "Usage"); keygate normalises them again. It holds for every path:
    /// each segment is mapped on its own, kept or replaced by `{id}` /
    /// `{key}`, which are neither ids nor keys, and the length cut has
    /// already been made.
    #[test]
    fn a_normalised_endpoint_normalises_to_itself() {
        let long = format!("/v1/{}", "segment/".repeat(40));
        for raw in [
            "/v1/orders/42/items/5f0c6e4e-8d3b-4a7e-9b1c-2d3e4f5a6b7c?x=1",
            "/v1/files/sk_live_3mJr7AoUXx2Wqd9N8t5fLkZQ4Fh5Tq9Hb2",
            "/v1/users/john%40example.com/%34%32",
            "",
            &long,
        ] {
            let once = n(raw);
            assert_eq!(n(&once), once, "{raw:?}");
        }
    }

    #[test]
    fn query_strings_fragments_and_trailing_slashes_are_dropped() {
        assert_eq!(n("/v1/orders/42?expand=items"), "/v1/orders/{id}");
        assert_eq!(n("/v1/orders/?page=2"), "/v1/orders");
        assert_eq!(n("/v1//orders#top"), "/v1/orders");
        assert_eq!(n(""), "/");
        assert_eq!(n("/?q=1"), "/");
    }

    #[test]
    fn percent_encoded_ids_are_recognised() {
        assert_eq!(n("/v1/orders/%34%32"), "/v1/orders/{id}");
        assert_eq!(
            n("/v1/users/john%40example.com"),
            "/v1/users/john%40example.com"
        );
        assert_eq!(n("/v1/x/%ZZ"), "/v1/x/%ZZ");
        assert_eq!(n("/v1/x/%FF%FE"), "/v1/x/%FF%FE");
    }

    #[test]
    fn segments_holding_a_key_become_key() {
        let key = "sk_live_3mJr7AoUXx2Wqd9N8t5fLkZQ4Fh5Tq9Hb2";
        let escaped = key.replace('_', "%5F");
        for path in [
            format!("/v1/files/{key}.json"),
            format!("/v1/files/{key}"),
            format!("/v1/files/key={key}"),
            format!("/v1/files/{escaped}.json"),
        ] {
            assert_eq!(n(&path), "/v1/files/{key}", "{path}");
        }
        assert_eq!(n(&format!("/{key}/orders/42")), "/{key}/orders/{id}");
        assert_eq!(
            n("/v1/files/report_2024.json"),
            "/v1/files/report_2024.json"
        );
    }

    #[test]
    fn ordinary_paths_stay_as_they_are() {
        for path in [
            "/v1/orders",
            "/v1/users/me",
            "/healthz",
            "/v2/authentication-settings",
            "/v1/oauth2/token",
        ] {
            assert_eq!(n(path), path);
        }
    }

    #[test]
    fn very_long_paths_are_bounded() {
        let long = format!("/{}", "segment/".repeat(200));
        assert!(n(&long).len() <= 256);
    }
}
