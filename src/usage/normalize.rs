//! Endpoint normalisation: `/v1/orders/42?x=1` → `/v1/orders/{id}`, so that
//! per-endpoint counts group requests by route rather than by resource.

/// Longest endpoint stored; longer ones are cut at a segment boundary.
const MAX_ENDPOINT_LEN: usize = 256;

pub fn normalize_endpoint(raw: &str) -> String {
    let path = raw.split(['?', '#']).next().unwrap_or("");
    let mut normalized = String::with_capacity(path.len().min(MAX_ENDPOINT_LEN));
    for segment in path.split('/').filter(|s| !s.is_empty()) {
        let decoded = percent_decode(segment);
        let shown = if looks_like_id(decoded.as_deref().unwrap_or(segment)) {
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

/// Decodes `%XX` escapes; `None` when there are none or the result is not
/// UTF-8 (the segment is then judged as written).
fn percent_decode(segment: &str) -> Option<String> {
    if !segment.contains('%') {
        return None;
    }
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (
            bytes[i],
            bytes.get(i + 1).copied().and_then(hex),
            bytes.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(high), Some(low)) => {
                out.push((high * 16 + low) as u8);
                i += 3;
            }
            (byte, _, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
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
