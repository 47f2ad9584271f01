//! Opaque page tokens for keyset paging.
//!
//! A token carries the last row's `(instant, id)` and a fingerprint of the
//! query it belongs to, sealed with a digest so that a tampered, truncated or
//! foreign token is refused with INVALID_ARGUMENT instead of silently paging
//! from the wrong place.

use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};
use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};
use uuid::Uuid;

const SEAL: &[u8] = b"keygate.page-token.v1";
const PAYLOAD_LEN: usize = 8 + 16 + 8;
const DIGEST_LEN: usize = 12;

/// Identifies a query, so a token is only accepted by the query that made it.
pub fn fingerprint(parts: &[&str]) -> [u8; 8] {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update((part.len() as u64).to_be_bytes());
        hasher.update(part.as_bytes());
    }
    hasher.finalize()[..8].try_into().expect("8 bytes")
}

fn digest(payload: &[u8]) -> [u8; DIGEST_LEN] {
    let mut hasher = Sha256::new();
    hasher.update(SEAL);
    hasher.update(payload);
    hasher.finalize()[..DIGEST_LEN]
        .try_into()
        .expect("digest length")
}

pub fn encode(at: DateTime<Utc>, id: Uuid, query: [u8; 8]) -> String {
    let mut bytes = Vec::with_capacity(PAYLOAD_LEN + DIGEST_LEN);
    bytes.extend_from_slice(&at.timestamp_micros().to_be_bytes());
    bytes.extend_from_slice(id.as_bytes());
    bytes.extend_from_slice(&query);
    let seal = digest(&bytes);
    bytes.extend_from_slice(&seal);
    URL_SAFE_NO_PAD.encode(bytes)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the page token is invalid: it was altered or belongs to a different query")]
pub struct BadPageToken;

/// Decodes a token made by [`encode`] for the same query; `""` is the first page.
pub fn decode(token: &str, query: [u8; 8]) -> Result<Option<(DateTime<Utc>, Uuid)>, BadPageToken> {
    if token.is_empty() {
        return Ok(None);
    }
    let bytes = URL_SAFE_NO_PAD.decode(token).map_err(|_| BadPageToken)?;
    if bytes.len() != PAYLOAD_LEN + DIGEST_LEN {
        return Err(BadPageToken);
    }
    let (payload, seal) = bytes.split_at(PAYLOAD_LEN);
    if digest(payload) != seal || payload[24..] != query {
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

    #[test]
    fn round_trips_for_the_same_query_only() {
        let at = DateTime::from_timestamp_micros(1_700_000_000_123_456).unwrap();
        let id = Uuid::now_v7();
        let query = fingerprint(&["keys", "owner-1"]);
        let token = encode(at, id, query);
        assert_eq!(decode(&token, query), Ok(Some((at, id))));
        assert_eq!(
            decode(&token, fingerprint(&["keys", "owner-2"])),
            Err(BadPageToken)
        );
        assert_eq!(decode("", query), Ok(None));
    }

    #[test]
    fn any_altered_character_is_refused() {
        let query = fingerprint(&["keys"]);
        let token = encode(Utc::now(), Uuid::now_v7(), query);
        for i in 0..token.len() {
            let mut altered: Vec<char> = token.chars().collect();
            altered[i] = if altered[i] == 'A' { 'B' } else { 'A' };
            let altered: String = altered.into_iter().collect();
            assert_eq!(decode(&altered, query), Err(BadPageToken), "position {i}");
        }
        assert_eq!(decode("not base64!", query), Err(BadPageToken));
        assert_eq!(decode(&token[..10], query), Err(BadPageToken));
    }
}
