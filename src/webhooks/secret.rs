//! Signing secrets (`whsec_` + base64 of 24 random bytes, as Standard
//! Webhooks libraries expect) and how they rest in the database: sealed with
//! AES-256-GCM under a key that every replica shares through the
//! `server_secrets` table, the endpoint's id as associated data, so a sealed
//! secret copied onto another endpoint's row does not open.

use base64::{engine::general_purpose::STANDARD, Engine};
use ring::{
    aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN},
    rand::{SecureRandom, SystemRandom},
};
use uuid::Uuid;

/// The `server_secrets` row holding the sealing key.
pub const SEAL_KEY_NAME: &str = "webhook_secret_key";
const PREFIX: &str = "whsec_";
const SECRET_BYTES: usize = 24;

/// A signing secret. `Debug` never prints it.
#[derive(Clone, PartialEq, Eq)]
pub struct SigningSecret(Vec<u8>);

impl std::fmt::Debug for SigningSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SigningSecret([redacted])")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("a sealed webhook secret does not open with this server's key")]
    Unseal,
    #[error("the operating system's random source failed")]
    Random,
}

impl SigningSecret {
    pub fn generate() -> Result<SigningSecret, SecretError> {
        let mut bytes = vec![0u8; SECRET_BYTES];
        SystemRandom::new()
            .fill(&mut bytes)
            .map_err(|_| SecretError::Random)?;
        Ok(SigningSecret(bytes))
    }

    /// A secret from its raw bytes (tests, and the decoded `whsec_` form).
    pub fn from_bytes(bytes: Vec<u8>) -> SigningSecret {
        SigningSecret(bytes)
    }

    /// The raw key HMAC-SHA256 signs with.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The `whsec_…` form, shown once, at creation.
    pub fn expose(&self) -> String {
        format!("{PREFIX}{}", STANDARD.encode(&self.0))
    }
}

/// The AES-256-GCM key that seals signing secrets.
pub struct SealKey(LessSafeKey);

impl std::fmt::Debug for SealKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SealKey([redacted])")
    }
}

impl SealKey {
    /// 32 fresh random bytes, to offer as the shared key.
    pub fn fresh_material() -> Result<[u8; 32], SecretError> {
        let mut bytes = [0u8; 32];
        SystemRandom::new()
            .fill(&mut bytes)
            .map_err(|_| SecretError::Random)?;
        Ok(bytes)
    }

    pub fn new(material: &[u8]) -> Result<SealKey, SecretError> {
        UnboundKey::new(&AES_256_GCM, material)
            .map(|key| SealKey(LessSafeKey::new(key)))
            .map_err(|_| SecretError::Unseal)
    }

    /// The key every replica shares, made by the first that needs it.
    pub async fn load(
        store: &crate::store::Store,
        now: chrono::DateTime<chrono::Utc>,
    ) -> crate::store::StoreResult<SealKey> {
        let corrupt = |e: SecretError| crate::store::StoreError::Corrupt(e.to_string());
        let fresh = SealKey::fresh_material().map_err(corrupt)?;
        let material = store.shared_secret(SEAL_KEY_NAME, &fresh, now).await?;
        SealKey::new(&material).map_err(corrupt)
    }

    /// nonce || ciphertext || tag.
    pub fn seal(&self, endpoint: Uuid, secret: &SigningSecret) -> Result<Vec<u8>, SecretError> {
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new()
            .fill(&mut nonce)
            .map_err(|_| SecretError::Random)?;
        let mut sealed = secret.0.clone();
        self.0
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(endpoint.as_bytes()),
                &mut sealed,
            )
            .map_err(|_| SecretError::Random)?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&sealed);
        Ok(out)
    }

    pub fn open(&self, endpoint: Uuid, sealed: &[u8]) -> Result<SigningSecret, SecretError> {
        if sealed.len() < NONCE_LEN {
            return Err(SecretError::Unseal);
        }
        let (nonce, rest) = sealed.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| SecretError::Unseal)?;
        let mut buffer = rest.to_vec();
        let plain = self
            .0
            .open_in_place(nonce, Aad::from(endpoint.as_bytes()), &mut buffer)
            .map_err(|_| SecretError::Unseal)?;
        Ok(SigningSecret(plain.to_vec()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_secret_opens_only_for_its_endpoint() {
        let key = SealKey::new(&SealKey::fresh_material().unwrap()).unwrap();
        let secret = SigningSecret::generate().unwrap();
        let endpoint = Uuid::now_v7();
        let sealed = key.seal(endpoint, &secret).unwrap();
        assert!(!sealed
            .windows(secret.as_bytes().len())
            .any(|w| w == secret.as_bytes()));
        assert_eq!(key.open(endpoint, &sealed).unwrap(), secret);
        assert!(key.open(Uuid::now_v7(), &sealed).is_err());
        let other = SealKey::new(&SealKey::fresh_material().unwrap()).unwrap();
        assert!(other.open(endpoint, &sealed).is_err());
    }

    #[test]
    fn the_exposed_form_is_whsec_and_base64_of_the_key() {
        let secret = SigningSecret::generate().unwrap();
        let shown = secret.expose();
        let encoded = shown.strip_prefix("whsec_").unwrap();
        assert_eq!(STANDARD.decode(encoded).unwrap(), secret.as_bytes());
        assert_eq!(format!("{secret:?}"), "SigningSecret([redacted])");
    }
}
