//! The Standard Webhooks signature: `webhook-signature: v1,<base64 of
//! HMAC-SHA256(secret, "{webhook-id}.{webhook-timestamp}.{body}")>`, the
//! secret being the base64-decoded part of `whsec_…`.

use base64::{engine::general_purpose::STANDARD, Engine};
use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::SigningSecret;

/// A secret's HMAC key, prepared: HMAC's key setup (two SHA-256
/// compressions of the padded key) is done once, and each message starts
/// from a copy. The state stands for the secret, so it is kept like one:
/// `Debug` never prints it.
#[derive(Clone)]
pub struct SigningKey(Hmac<Sha256>);

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SigningKey([redacted])")
    }
}

impl SigningKey {
    pub fn new(secret: &SigningSecret) -> SigningKey {
        SigningKey(
            Hmac::<Sha256>::new_from_slice(secret.as_bytes())
                .expect("HMAC takes keys of any length"),
        )
    }

    /// The `webhook-signature` header value for one message; `timestamp` is
    /// the `webhook-timestamp` header's value, so what is signed is what is
    /// sent.
    pub fn sign(self, id: &str, timestamp: &str, body: &str) -> String {
        let mut mac = self.0;
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.as_bytes());
        mac.update(b".");
        mac.update(body.as_bytes());
        // "v1," and the base64 of 32 bytes, in one allocation.
        let mut header = String::with_capacity(3 + 44);
        header.push_str("v1,");
        STANDARD.encode_string(mac.finalize().into_bytes(), &mut header);
        header
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example of the Standard Webhooks specification
    /// (github.com/standard-webhooks/standard-webhooks, spec/standard-webhooks.md).
    #[test]
    fn signs_the_specifications_example() {
        let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let key = STANDARD
            .decode(secret.strip_prefix("whsec_").unwrap())
            .unwrap();
        let secret = SigningSecret::from_bytes(key);
        let expected = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";
        let (id, body) = ("msg_p5jXN8AQM9LWM0D4loKWxJek", r#"{"test": 2432232314}"#);
        // A prepared key signs each message from a copy: the same again.
        let prepared = SigningKey::new(&secret);
        assert_eq!(prepared.clone().sign(id, "1614265330", body), expected);
        assert_eq!(prepared.sign(id, "1614265330", body), expected);
        assert_eq!(
            format!("{:?}", SigningKey::new(&secret)),
            "SigningKey([redacted])"
        );
    }
}
