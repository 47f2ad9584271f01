//! Opaque page tokens for keyset paging.
//!
//! A token carries the last row's `(instant, id)` and a fingerprint of the
//! query it belongs to, sealed with HMAC-SHA256 under a key kept in the
//! database ([`PageKey`]), so every replica accepts the tokens of every
//! other, and nobody without the key can make one: a tampered, truncated,
//! forged or foreign token is refused with INVALID_ARGUMENT instead of
//! silently paging from the wrong place.

use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};
use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use uuid::Uuid;

/// The name the sealing key is stored under.
pub const SECRET_NAME: &str = "page_token.v2";
const PAYLOAD_LEN: usize = 8 + 16 + 8;
/// 128 bits of the HMAC: forging one takes 2^128 guesses.
const TAG_LEN: usize = 16;

/// The key that seals page tokens. Its `Debug` shows no key material.
#[derive(Clone)]
pub struct PageKey(Hmac<Sha256>);

impl PageKey {
    pub fn new(secret: &[u8]) -> Self {
        Self(Hmac::new_from_slice(secret).expect("HMAC accepts a key of any length"))
    }

    fn mac(&self, payload: &[u8]) -> Hmac<Sha256> {
        let mut mac = self.0.clone();
        mac.update(payload);
        mac
    }
}

impl std::fmt::Debug for PageKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PageKey([redacted])")
    }
}

/// Identifies a query, so a token is only accepted by the query that made it.
pub fn fingerprint(parts: &[&str]) -> [u8; 8] {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update((part.len() as u64).to_be_bytes());
        hasher.update(part.as_bytes());
    }
    hasher.finalize()[..8].try_into().expect("8 bytes")
}

pub fn encode(key: &PageKey, at: DateTime<Utc>, id: Uuid, query: [u8; 8]) -> String {
    let mut bytes = Vec::with_capacity(PAYLOAD_LEN + TAG_LEN);
    bytes.extend_from_slice(&at.timestamp_micros().to_be_bytes());
    bytes.extend_from_slice(id.as_bytes());
    bytes.extend_from_slice(&query);
    let tag = key.mac(&bytes).finalize().into_bytes();
    bytes.extend_from_slice(&tag[..TAG_LEN]);
    URL_SAFE_NO_PAD.encode(bytes)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the page token is invalid: it was altered or belongs to a different query")]
pub struct BadPageToken;

/// Decodes a token made by [`encode`] with the same key for the same query;
/// `""` is the first page.
pub fn decode(
    key: &PageKey,
    token: &str,
    query: [u8; 8],
) -> Result<Option<(DateTime<Utc>, Uuid)>, BadPageToken> {
    if token.is_empty() {
        return Ok(None);
    }
    let bytes = URL_SAFE_NO_PAD.decode(token).map_err(|_| BadPageToken)?;
    if bytes.len() != PAYLOAD_LEN + TAG_LEN {
        return Err(BadPageToken);
    }
    let (payload, tag) = bytes.split_at(PAYLOAD_LEN);
    // Constant time: a comparison that stops at the first wrong byte would
    // let a caller find a valid tag byte by byte.
    key.mac(payload)
        .verify_truncated_left(tag)
        .map_err(|_| BadPageToken)?;
    if payload[24..] != query {
        return Err(BadPageToken);
    }
    let micros = i64::from_be_bytes(payload[..8].try_into().expect("8 bytes"));
    let at = DateTime::from_timestamp_micros(micros).ok_or(BadPageToken)?;
    let id = Uuid::from_slice(&payload[8..24]).map_err(|_| BadPageToken)?;
    Ok(Some((at, id)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> PageKey {
        PageKey::new(&[7; 32])
    }

    #[test]
    fn round_trips_for_the_same_query_only() {
        let at = DateTime::from_timestamp_micros(1_700_000_000_123_456).unwrap();
        let id = Uuid::now_v7();
        let query = fingerprint(&["keys", "owner-1"]);
        let token = encode(&key(), at, id, query);
        assert_eq!(decode(&key(), &token, query), Ok(Some((at, id))));
        assert_eq!(
            decode(&key(), &token, fingerprint(&["keys", "owner-2"])),
            Err(BadPageToken)
        );
        assert_eq!(decode(&key(), "", query), Ok(None));
    }

    #[test]
    fn any_altered_character_is_refused() {
        let query = fingerprint(&["keys"]);
        let token = encode(&key(), Utc::now(), Uuid::now_v7(), query);
        for i in 0..token.len() {
            let mut altered: Vec<char> = token.chars().collect();
            altered[i] = if altered[i] == 'A' { 'B' } else { 'A' };
            let altered: String = altered.into_iter().collect();
            assert_eq!(
                decode(&key(), &altered, query),
                Err(BadPageToken),
                "position {i}"
            );
        }
        assert_eq!(decode(&key(), "not base64!", query), Err(BadPageToken));
        assert_eq!(decode(&key(), &token[..10], query), Err(BadPageToken));
    }

    #[test]
    fn a_token_sealed_with_another_key_is_refused() {
        let query = fingerprint(&["keys", "owner-1"]);
        let forged = encode(
            &PageKey::new(b"keygate.page-token.v1"),
            Utc::now(),
            Uuid::now_v7(),
            query,
        );
        assert_eq!(decode(&key(), &forged, query), Err(BadPageToken));
        assert_eq!(format!("{:?}", key()), "PageKey([redacted])");
    }
}
