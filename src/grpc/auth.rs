//! Admin-token authentication for KeyAdmin.
//!
//! Tokens are configured by SHA-256 only; a presented token is hashed and
//! compared in constant time. With no token configured the listener is bound
//! to loopback (enforced at config validation) and every caller is treated as
//! a local administrator.

use std::sync::Arc;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tonic::{service::Interceptor, Request, Status};

use super::status;
use crate::admin::{AdminRole, AdminToken, Caller};

/// Audit actor of calls on an unauthenticated development listener.
pub const LOCAL_ACTOR: &str = "local-dev";

#[derive(Clone)]
pub struct AdminAuth {
    tokens: Arc<Vec<AdminToken>>,
}

impl AdminAuth {
    pub fn new(tokens: Vec<AdminToken>) -> Self {
        Self {
            tokens: Arc::new(tokens),
        }
    }

    /// The caller an `authorization` header value names. Shared by every
    /// transport that accepts admin tokens (gRPC here, the REST API too).
    pub fn authenticate(&self, header: Option<&str>) -> Result<Caller, TokenError> {
        if self.tokens.is_empty() {
            return Ok(Caller {
                actor: LOCAL_ACTOR.to_owned(),
                role: AdminRole::Admin,
            });
        }
        let header = header.ok_or(TokenError::Missing)?;
        let token = header
            .get(..7)
            .filter(|scheme| scheme.eq_ignore_ascii_case("bearer "))
            .map(|_| header[7..].trim())
            .filter(|t| !t.is_empty())
            .ok_or(TokenError::Missing)?;
        let presented: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        self.tokens
            .iter()
            .find(|t| bool::from(t.sha256.ct_eq(&presented)))
            .map(|t| Caller {
                actor: t.name.clone(),
                role: t.role,
            })
            .ok_or(TokenError::Unknown)
    }

    fn caller(&self, header: Option<&str>) -> Result<Caller, Status> {
        self.authenticate(header).map_err(|error| match error {
            TokenError::Missing => status::missing_credentials(),
            TokenError::Unknown => status::unknown_token(),
        })
    }
}

/// Why no admin caller could be established.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenError {
    /// No `Bearer` token was sent.
    Missing,
    /// The token matches no configured hash.
    Unknown,
}

/// Who is calling, as the interceptor found it. Handlers read it inside
/// their call metrics, so a call refused for its token is counted in
/// `keygate_admin_calls_total` like any other outcome.
#[derive(Debug, Clone)]
pub struct Authentication(pub Result<Caller, Status>);

impl Interceptor for AdminAuth {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        let authentication = request
            .metadata()
            .get("authorization")
            .map(|v| v.to_str().map_err(|_| status::missing_credentials()))
            .transpose()
            .and_then(|header| self.caller(header));
        request
            .extensions_mut()
            .insert(Authentication(authentication));
        Ok(request)
    }
}

/// A fresh admin token and its config entry, for `keygate admin-token`.
pub fn new_admin_token(name: &str, role: AdminRole) -> (String, String) {
    use rand::{rngs::OsRng, TryRngCore};
    let mut bytes = [0u8; 32];
    OsRng
        .try_fill_bytes(&mut bytes)
        .expect("the OS random source is available");
    let token = format!("kga_{}", bs58::encode(bytes).into_string());
    let hash = hex::encode(Sha256::digest(token.as_bytes()));
    (token, format!("{name}:{}:{hash}", role.as_str()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admin::parse_admin_tokens;

    #[test]
    fn a_generated_token_authenticates_with_its_config_line() {
        let (token, line) = new_admin_token("billing", AdminRole::Service);
        assert!(!line.contains(&token));
        let auth = AdminAuth::new(parse_admin_tokens(&line).unwrap());
        let caller = auth.caller(Some(&format!("Bearer {token}"))).unwrap();
        assert_eq!(
            caller,
            Caller {
                actor: "billing".into(),
                role: AdminRole::Service
            }
        );
        assert_eq!(
            auth.caller(Some("Bearer wrong")).unwrap_err().code(),
            tonic::Code::Unauthenticated
        );
        assert_eq!(
            auth.caller(None).unwrap_err().code(),
            tonic::Code::Unauthenticated
        );
    }
}
