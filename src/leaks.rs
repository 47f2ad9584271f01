//! GitHub secret-scanning partner reports (docs/behaviour.md, "Key
//! hygiene"): the public keys reports are signed with, signature
//! verification, and the report and answer shapes.
//!
//! GitHub signs the raw request body with ECDSA P-256 over SHA-256 and sends
//! the base64 of the DER signature in `Github-Public-Key-Signature`, naming
//! the key in `Github-Public-Key-Identifier`. The keys come from a file in
//! the format GitHub publishes them in
//! (`{"public_keys":[{"key_identifier","key","is_current"}]}`).

use base64::{engine::general_purpose::STANDARD, Engine};
use p256::{
    ecdsa::{signature::Verifier, Signature, VerifyingKey},
    pkcs8::DecodePublicKey,
};
use serde::{Deserialize, Serialize};

/// Headers GitHub signs reports with.
pub const SIGNATURE_HEADER: &str = "github-public-key-signature";
pub const KEY_ID_HEADER: &str = "github-public-key-identifier";

/// The verifying keys of the configured file, by identifier.
#[derive(Clone)]
pub struct ScanningKeys {
    keys: Vec<(String, VerifyingKey)>,
}

impl std::fmt::Debug for ScanningKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScanningKeys")
            .field(
                "identifiers",
                &self.keys.iter().map(|(id, _)| id).collect::<Vec<_>>(),
            )
            .finish()
    }
}

#[derive(Deserialize)]
struct KeysFile {
    public_keys: Vec<KeyEntry>,
}

#[derive(Deserialize)]
struct KeyEntry {
    key_identifier: String,
    key: String,
}

/// Why a report's signature is not accepted. Every variant is answered the
/// same way (401); the distinction is for the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("the report is not signed")]
    Unsigned,
    #[error("the report names a key that is not configured")]
    UnknownKey,
    #[error("the signature is not base64 DER")]
    Malformed,
    #[error("the signature does not match the body")]
    Mismatch,
}

impl ScanningKeys {
    /// Parses GitHub's public-keys JSON; every key must be a PEM P-256
    /// public key.
    pub fn from_json(text: &str) -> Result<Self, String> {
        let file: KeysFile = serde_json::from_str(text).map_err(|e| {
            format!("not GitHub's public-keys JSON ({{\"public_keys\":[{{\"key_identifier\",\"key\"}}]}}): {e}")
        })?;
        if file.public_keys.is_empty() {
            return Err("public_keys is empty".into());
        }
        let keys = file
            .public_keys
            .into_iter()
            .map(|entry| {
                VerifyingKey::from_public_key_pem(entry.key.trim())
                    .map(|key| (entry.key_identifier.clone(), key))
                    .map_err(|e| {
                        format!(
                            "key {:?} is not a PEM P-256 public key: {e}",
                            entry.key_identifier
                        )
                    })
            })
            .collect::<Result<_, _>>()?;
        Ok(Self { keys })
    }

    /// Checks the signature GitHub sent over `body`.
    pub fn verify(
        &self,
        key_identifier: Option<&str>,
        signature: Option<&str>,
        body: &[u8],
    ) -> Result<(), SignatureError> {
        let (Some(key_identifier), Some(signature)) = (key_identifier, signature) else {
            return Err(SignatureError::Unsigned);
        };
        let key = self
            .keys
            .iter()
            .find(|(id, _)| id == key_identifier.trim())
            .map(|(_, key)| key)
            .ok_or(SignatureError::UnknownKey)?;
        let der = STANDARD
            .decode(signature.trim())
            .map_err(|_| SignatureError::Malformed)?;
        let signature = Signature::from_der(&der).map_err(|_| SignatureError::Malformed)?;
        // Signers need not produce low-S signatures; both forms are valid.
        let signature = signature.normalize_s().unwrap_or(signature);
        key.verify(body, &signature)
            .map_err(|_| SignatureError::Mismatch)
    }
}

/// One token in a report.
#[derive(Debug, Clone, Deserialize)]
pub struct ReportedToken {
    pub token: String,
    #[serde(rename = "type", default)]
    pub token_type: String,
    #[serde(default)]
    pub url: String,
    #[serde(default)]
    pub source: String,
}

/// GitHub's label for one reported token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Label {
    /// A key keygate issued or imported.
    TruePositive,
    /// Anything else, however close to a real key.
    FalsePositive,
}

/// One entry of the answer, in the order of the report.
#[derive(Debug, Clone, Serialize)]
pub struct Verdict {
    pub token_raw: String,
    pub token_type: String,
    pub label: Label,
}

/// The reason a leaked key is revoked with: `leaked: <url>`, the URL cut
/// to keep the reason within what revocation reasons may hold.
pub fn revocation_reason(url: &str) -> String {
    let url: String = url.chars().filter(|c| !c.is_control()).take(400).collect();
    if url.is_empty() {
        "leaked".to_owned()
    } else {
        format!("leaked: {url}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use p256::{
        ecdsa::{signature::Signer, SigningKey},
        pkcs8::{EncodePublicKey, LineEnding},
    };

    fn signing_key(seed: u8) -> SigningKey {
        SigningKey::from_slice(&[seed; 32]).unwrap()
    }

    fn keys_file(entries: &[(&str, &SigningKey)]) -> String {
        let keys: Vec<_> = entries
            .iter()
            .map(|(id, key)| {
                serde_json::json!({
                    "key_identifier": id,
                    "key": key.verifying_key().to_public_key_pem(LineEnding::LF).unwrap(),
                    "is_current": true,
                })
            })
            .collect();
        serde_json::json!({ "public_keys": keys }).to_string()
    }

    fn sign(key: &SigningKey, body: &[u8]) -> String {
        let signature: Signature = key.sign(body);
        STANDARD.encode(signature.to_der().as_bytes())
    }

    #[test]
    fn a_report_signed_by_a_configured_key_verifies_and_a_changed_body_does_not() {
        let (first, second) = (signing_key(1), signing_key(2));
        let keys = ScanningKeys::from_json(&keys_file(&[("a", &first), ("b", &second)])).unwrap();
        let body = br#"[{"token":"x","type":"t","url":"u","source":"content"}]"#;
        let signature = sign(&second, body);
        assert_eq!(keys.verify(Some("b"), Some(&signature), body), Ok(()));
        assert_eq!(
            keys.verify(Some("a"), Some(&signature), body),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            keys.verify(Some("b"), Some(&signature), b"[]"),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            keys.verify(Some("c"), Some(&signature), body),
            Err(SignatureError::UnknownKey)
        );
        assert_eq!(
            keys.verify(Some("b"), Some("not base64!"), body),
            Err(SignatureError::Malformed)
        );
        assert_eq!(
            keys.verify(None, Some(&signature), body),
            Err(SignatureError::Unsigned)
        );
    }

    #[test]
    fn a_keys_file_that_is_not_githubs_format_is_refused() {
        assert!(ScanningKeys::from_json("{}").is_err());
        assert!(ScanningKeys::from_json(r#"{"public_keys":[]}"#).is_err());
        let bad = r#"{"public_keys":[{"key_identifier":"k","key":"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----","is_current":true}]}"#;
        assert!(ScanningKeys::from_json(bad).unwrap_err().contains("\"k\""));
    }

    #[test]
    fn the_revocation_reason_names_the_url_within_bounds() {
        assert_eq!(
            revocation_reason("https://github.com/o/r/blob/x"),
            "leaked: https://github.com/o/r/blob/x"
        );
        assert_eq!(revocation_reason(""), "leaked");
        assert!(revocation_reason(&"u".repeat(2000)).chars().count() <= 500);
    }
}
