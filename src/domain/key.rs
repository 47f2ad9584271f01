//! The key format `{prefix}_{environment}_{token}`.
//!
//! The token is base58 (Bitcoin alphabet) from the OS CSPRNG followed by a
//! 6-character base58 CRC32 of the random part, so a typo or random garbage is
//! rejected before any cache or database lookup. Only the SHA-256 of the token
//! segment is ever stored.

use rand::{rngs::OsRng, Rng, TryRngCore};
use sha2::{Digest, Sha256};
use std::fmt;

/// Bitcoin's base58 alphabet: no `0`, `O`, `I`, `l`.
pub const BASE58_ALPHABET: &[u8; 58] =
    b"123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz";
const CHECKSUM_LEN: usize = 6;
/// Random-part lengths accepted when parsing, so that keys issued under an
/// earlier `token_length` keep working after the setting changes.
pub const MIN_TOKEN_LENGTH: usize = 16;
pub const MAX_TOKEN_LENGTH: usize = 128;
/// Token characters kept in the displayable `key_prefix`.
const DISPLAY_TOKEN_CHARS: usize = 8;
/// What stands for the secret part of a key wherever it is shown.
pub const MASK: &str = "••••••••";

const IS_BASE58: [bool; 256] = {
    let mut table = [false; 256];
    let mut i = 0;
    while i < BASE58_ALPHABET.len() {
        table[BASE58_ALPHABET[i] as usize] = true;
        i += 1;
    }
    table
};

/// A plaintext key. It exists only to be returned once by CreateKey and
/// RotateKey; `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct PlaintextKey(String);

impl PlaintextKey {
    pub fn expose(&self) -> &str {
        &self.0
    }
    pub fn into_exposed(self) -> String {
        self.0
    }
}

impl fmt::Debug for PlaintextKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PlaintextKey([redacted])")
    }
}

/// SHA-256 of a key's token segment: the only form in which a key is stored
/// or cached. It is as sensitive as a password hash, so `Debug` hides it.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyHash([u8; 32]);

impl KeyHash {
    pub fn of_token(token: &str) -> Self {
        Self(Sha256::digest(token.as_bytes()).into())
    }
    /// The hash an imported key is stored under: the SHA-256 of the whole
    /// key string, as the system it came from kept it.
    pub fn of_imported(key: &str) -> Self {
        Self(Sha256::digest(key.as_bytes()).into())
    }
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        bytes.try_into().ok().map(Self)
    }
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Debug for KeyHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("KeyHash([redacted])")
    }
}

/// A freshly generated key: the plaintext for the caller, the rest to store.
#[derive(Debug)]
pub struct IssuedKey {
    pub plaintext: PlaintextKey,
    pub hash: KeyHash,
    pub key_prefix: String,
}

/// A syntactically valid key, borrowed from the request.
#[derive(Debug, Clone, Copy)]
pub struct ParsedKey<'a> {
    pub environment: &'a str,
    token: &'a str,
}

impl ParsedKey<'_> {
    pub fn hash(&self) -> KeyHash {
        KeyHash::of_token(self.token)
    }
}

/// Why a credential is not a well-formed key of ours.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum KeyParseError {
    /// Some other kind of bearer token (a JWT, another product's key).
    #[error("the credential does not carry this service's key prefix")]
    NotOurPrefix,
    #[error("the key names an environment that is not configured")]
    UnknownEnvironment,
    #[error("the key does not have the expected shape")]
    BadShape,
    #[error("the key's checksum does not match")]
    BadChecksum,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyFormatError {
    #[error("prefix {0:?} must match [a-z][a-z0-9]{{0,15}}")]
    BadPrefix(String),
    #[error("environment {0:?} must match [a-z][a-z0-9]{{0,15}}")]
    BadEnvironment(String),
    #[error("at least one environment is required")]
    NoEnvironments,
    #[error("token length {0} must be between {MIN_TOKEN_LENGTH} and {MAX_TOKEN_LENGTH}")]
    BadTokenLength(usize),
}

/// The configured key format: product prefix, environments, token length.
#[derive(Debug, Clone)]
pub struct KeyFormat {
    prefix: String,
    environments: Vec<String>,
    token_length: usize,
}

fn is_short_identifier(s: &str) -> bool {
    let bytes = s.as_bytes();
    (1..=16).contains(&bytes.len())
        && bytes[0].is_ascii_lowercase()
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
}

impl KeyFormat {
    pub fn new(
        prefix: &str,
        environments: &[String],
        token_length: usize,
    ) -> Result<Self, KeyFormatError> {
        if !is_short_identifier(prefix) {
            return Err(KeyFormatError::BadPrefix(prefix.to_owned()));
        }
        if environments.is_empty() {
            return Err(KeyFormatError::NoEnvironments);
        }
        if let Some(bad) = environments.iter().find(|e| !is_short_identifier(e)) {
            return Err(KeyFormatError::BadEnvironment(bad.clone()));
        }
        if !(MIN_TOKEN_LENGTH..=MAX_TOKEN_LENGTH).contains(&token_length) {
            return Err(KeyFormatError::BadTokenLength(token_length));
        }
        Ok(Self {
            prefix: prefix.to_owned(),
            environments: environments.to_vec(),
            token_length,
        })
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn environments(&self) -> &[String] {
        &self.environments
    }

    /// The environment a key is issued in when the request names none: the
    /// first configured one (`KEYGATE_ENVIRONMENTS`), never a fixed `live`
    /// that the configuration may not have.
    pub fn default_environment(&self) -> &str {
        &self.environments[0]
    }

    pub fn has_environment(&self, environment: &str) -> bool {
        self.environments.iter().any(|e| e == environment)
    }

    /// Generates a key for `environment` (which the caller has validated).
    pub fn generate(&self, environment: &str) -> IssuedKey {
        let mut rng = OsRng.unwrap_err();
        let mut token = String::with_capacity(self.token_length + CHECKSUM_LEN);
        for _ in 0..self.token_length {
            token.push(BASE58_ALPHABET[rng.random_range(0..BASE58_ALPHABET.len())] as char);
        }
        let checksum = checksum(token.as_bytes());
        token.push_str(std::str::from_utf8(&checksum).expect("base58 is ASCII"));
        let hash = KeyHash::of_token(&token);
        let key_prefix = format!(
            "{}_{}_{}",
            self.prefix,
            environment,
            &token[..DISPLAY_TOKEN_CHARS]
        );
        let plaintext = PlaintextKey(format!("{}_{}_{}", self.prefix, environment, token));
        IssuedKey {
            plaintext,
            hash,
            key_prefix,
        }
    }

    /// Parses a credential without allocating. Cheap checks come first so that
    /// garbage is rejected before the checksum is computed.
    pub fn parse<'a>(&self, raw: &'a str) -> Result<ParsedKey<'a>, KeyParseError> {
        let rest = raw
            .strip_prefix(self.prefix.as_str())
            .and_then(|r| r.strip_prefix('_'))
            .ok_or(KeyParseError::NotOurPrefix)?;
        let (environment, token) = rest.split_once('_').ok_or(KeyParseError::BadShape)?;
        if !self.has_environment(environment) {
            return Err(KeyParseError::UnknownEnvironment);
        }
        let random_len = token
            .len()
            .checked_sub(CHECKSUM_LEN)
            .ok_or(KeyParseError::BadShape)?;
        if !(MIN_TOKEN_LENGTH..=MAX_TOKEN_LENGTH).contains(&random_len)
            || !token.bytes().all(|b| IS_BASE58[b as usize])
        {
            return Err(KeyParseError::BadShape);
        }
        let (random, given) = token.as_bytes().split_at(random_len);
        if checksum(random) != given {
            return Err(KeyParseError::BadChecksum);
        }
        Ok(ParsedKey { environment, token })
    }
}

/// CRC32 (IEEE) of the random part as exactly six base58 digits, most
/// significant first. 58^6 > 2^32, so six digits always suffice.
fn checksum(random: &[u8]) -> [u8; CHECKSUM_LEN] {
    let mut value = crc32fast::hash(random);
    let mut digits = [BASE58_ALPHABET[0]; CHECKSUM_LEN];
    for digit in digits.iter_mut().rev() {
        *digit = BASE58_ALPHABET[(value % 58) as usize];
        value /= 58;
    }
    digits
}

/// The masked form shown everywhere: the display prefix and a mask.
pub fn masked(key_prefix: &str) -> String {
    format!("{key_prefix}{MASK}")
}

/// Whether `text` holds something shaped like a key, whatever its prefix:
/// `{prefix}_{environment}_` and at least the shortest token in base58.
/// Looser than [`KeyFormat::parse`] on purpose: it decides what must never
/// be stored as written, and a key issued under another prefix or token
/// length is as secret.
pub fn contains_key_shaped(text: &str) -> bool {
    text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .any(run_holds_key)
}

/// `run` is letters, digits and underscores: does some `x_env_token`
/// window of it look like a key?
fn run_holds_key(run: &str) -> bool {
    const SHORTEST_TOKEN: usize = MIN_TOKEN_LENGTH + CHECKSUM_LEN;
    let mut parts = run.split('_');
    let (Some(mut prefix), Some(mut environment)) = (parts.next(), parts.next()) else {
        return false;
    };
    for token in parts {
        let base58 = token.bytes().take_while(|b| IS_BASE58[*b as usize]).count();
        if !prefix.is_empty() && is_short_identifier(environment) && base58 >= SHORTEST_TOKEN {
            return true;
        }
        (prefix, environment) = (environment, token);
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn format(len: usize) -> KeyFormat {
        KeyFormat::new(
            "sk",
            &["live".into(), "test".into(), "staging2".into()],
            len,
        )
        .unwrap()
    }

    #[test]
    fn generated_key_has_the_documented_shape() {
        let issued = format(32).generate("live");
        let key = issued.plaintext.expose();
        assert!(key.starts_with("sk_live_"));
        assert_eq!(key.len(), "sk_live_".len() + 32 + 6);
        assert_eq!(issued.key_prefix, &key[..("sk_live_".len() + 8)]);
        let token = &key["sk_live_".len()..];
        assert!(token.bytes().all(|b| BASE58_ALPHABET.contains(&b)));
    }

    #[test]
    fn debug_output_never_shows_secrets() {
        let issued = format(32).generate("live");
        let shown = format!("{issued:?}");
        assert!(!shown.contains(issued.plaintext.expose()));
        assert!(!shown.contains(&hex::encode(issued.hash.as_bytes())));
    }

    #[test]
    fn parse_classifies_each_kind_of_bad_credential() {
        let f = format(32);
        let key = f.generate("test").plaintext.into_exposed();
        assert_eq!(
            f.parse("eyJhbGciOi.x.y").unwrap_err(),
            KeyParseError::NotOurPrefix
        );
        assert_eq!(
            f.parse("skx_live_abc").unwrap_err(),
            KeyParseError::NotOurPrefix
        );
        assert_eq!(
            f.parse(&key.replace("sk_test_", "sk_prod_")).unwrap_err(),
            KeyParseError::UnknownEnvironment
        );
        assert_eq!(
            f.parse("sk_live_short").unwrap_err(),
            KeyParseError::BadShape
        );
        assert_eq!(f.parse("sk_live").unwrap_err(), KeyParseError::BadShape);
        let with_zero = format!("sk_test_0{}", &key["sk_test_".len() + 1..]);
        assert_eq!(f.parse(&with_zero).unwrap_err(), KeyParseError::BadShape);
        assert!(f.parse(&key).is_ok());
    }

    #[test]
    fn format_rejects_bad_configuration() {
        assert!(KeyFormat::new("Sk", &["live".into()], 32).is_err());
        assert!(KeyFormat::new("sk", &["live_x".into()], 32).is_err());
        assert!(KeyFormat::new("sk", &[], 32).is_err());
        assert!(KeyFormat::new("sk", &["live".into()], 8).is_err());
    }

    #[test]
    fn key_shaped_tokens_are_found_inside_other_text() {
        let key = format(16).generate("live").plaintext.into_exposed();
        for text in [
            key.clone(),
            format!("{key}.json"),
            format!("download-{key}"),
            format!("x{key}_v2"),
            key.replacen("sk_", "pk_", 1),
        ] {
            assert!(contains_key_shaped(&text), "{text}");
        }
        for text in [
            "sk_live_short",
            "orders",
            "snake_case_name",
            "cus_NffrFeUfNV2Hib",
            "_live_3mJr7AoUXx2Wqd9N8t5fLkABCDE",
            "sk_Live_3mJr7AoUXx2Wqd9N8t5fLkABCDE",
        ] {
            assert!(!contains_key_shaped(text), "{text}");
        }
    }

    proptest! {
        #[test]
        fn generate_then_parse_round_trips(len in MIN_TOKEN_LENGTH..=64usize, env in 0usize..3) {
            let f = format(len);
            let environment = f.environments()[env].clone();
            let issued = f.generate(&environment);
            let parsed = f.parse(issued.plaintext.expose()).unwrap();
            prop_assert_eq!(parsed.environment, environment.as_str());
            prop_assert_eq!(parsed.hash(), issued.hash);
        }

        #[test]
        fn any_single_changed_token_character_is_rejected(pos in 0usize..38, replacement in 0usize..58) {
            let f = format(32);
            let key = f.generate("live").plaintext.into_exposed();
            let index = "sk_live_".len() + pos;
            let mut bytes = key.clone().into_bytes();
            prop_assume!(bytes[index] != BASE58_ALPHABET[replacement]);
            bytes[index] = BASE58_ALPHABET[replacement];
            let changed = String::from_utf8(bytes).unwrap();
            prop_assert!(f.parse(&changed).is_err());
        }

        #[test]
        fn parse_never_panics_on_arbitrary_input(raw in any::<Vec<u8>>(), long in 0usize..20_000) {
            let f = format(32);
            let lossy = String::from_utf8_lossy(&raw).into_owned();
            let _ = f.parse(&lossy);
            let _ = f.parse(&format!("sk_live_{lossy}"));
            let _ = f.parse(&format!("sk_live_{}", "A".repeat(long)));
        }
    }
}
