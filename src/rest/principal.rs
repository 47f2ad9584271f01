//! Who is calling the REST API, and for which owner.
//!
//! `Authorization: Bearer …` carries either an admin token, checked against
//! the same table as KeyAdmin's gRPC interceptor, or an owner's own keygate
//! key. A key is resolved exactly as Check resolves it (cache, store, the
//! pure decision, the rate limit) with `keygate:keys` as the route's
//! requirement, so a key Check would refuse (revoked, expired, suspended
//! owner, lacking the ability) is refused here with the same status.

use std::{collections::HashMap, net::SocketAddr, sync::Arc};

use axum::{
    extract::{ConnectInfo, FromRequestParts},
    http::{header, request::Parts},
};

use super::{error::ApiError, RestState};
use crate::{
    admin::{ceiling::Ceiling, AdminRole, Caller},
    authz::{Authorizer, CheckInput, Outcome, EXT_ABILITIES},
    domain::{KeyFormat, KeyParseError},
    grpc::auth::{AdminAuth, TokenError},
};

/// The ability that lets a key manage its owner's keys.
pub const SELF_SERVICE_ABILITY: &str = "keygate:keys";

/// An authenticated caller.
#[derive(Debug, Clone)]
pub enum Principal {
    /// A `service` or `admin` token: names the owner on every call.
    Token(Caller),
    /// An owner's own key: acts for that owner only, within its abilities.
    OwnKey {
        caller: Caller,
        owner_id: String,
        ceiling: Ceiling,
    },
}

/// How the REST API authenticates; built once at start.
pub struct Authenticator {
    tokens: AdminAuth,
    format: KeyFormat,
    authorizer: Arc<Authorizer>,
    requirement: HashMap<String, String>,
}

impl Authenticator {
    pub fn new(tokens: AdminAuth, format: KeyFormat, authorizer: Arc<Authorizer>) -> Self {
        Self {
            tokens,
            format,
            authorizer,
            requirement: HashMap::from([(
                EXT_ABILITIES.to_owned(),
                SELF_SERVICE_ABILITY.to_owned(),
            )]),
        }
    }

    async fn principal(&self, parts: &Parts) -> Result<Principal, ApiError> {
        let header = match parts.headers.get(header::AUTHORIZATION) {
            None => None,
            Some(value) => Some(value.to_str().map_err(|_| {
                ApiError::unauthenticated("the authorization header is not valid text")
            })?),
        };
        let bearer = header
            .and_then(|h| h.get(..7).filter(|s| s.eq_ignore_ascii_case("bearer ")))
            .map(|_| header.unwrap_or_default()[7..].trim());
        match bearer.map(|token| self.format.parse(token)) {
            Some(Err(KeyParseError::NotOurPrefix)) | None => {
                let caller = self
                    .tokens
                    .authenticate(header)
                    .map_err(|error| match error {
                        TokenError::Missing => ApiError::unauthenticated(
                            "send 'authorization: Bearer <admin token or API key>'",
                        ),
                        TokenError::Unknown => {
                            ApiError::unauthenticated("the admin token is not recognised")
                        }
                    })?;
                caller.require_key_admin()?;
                Ok(Principal::Token(caller))
            }
            Some(_) => self.own_key(parts, header).await,
        }
    }

    /// Resolves a keygate key through the Check path.
    async fn own_key(&self, parts: &Parts, header: Option<&str>) -> Result<Principal, ApiError> {
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|ConnectInfo(addr)| addr.ip().to_string());
        let input = CheckInput {
            authorization: header.map(Ok),
            // The client as Check finds it (trusted hops, else the peer),
            // for the key's allow-list and its usage.
            forwarded_for: parts
                .headers
                .get_all("x-forwarded-for")
                .iter()
                .next_back()
                .and_then(|value| value.to_str().ok()),
            source_address: peer.as_deref(),
            method: parts.method.as_str(),
            path: parts.uri.path(),
            context_extensions: Some(&self.requirement),
            ..Default::default()
        };
        let outcome = self.authorizer.check(&input).await.map_err(|error| {
            tracing::warn!(error = %crate::grpc::status::chain(&error), "REST: key lookup failed");
            ApiError::unavailable("the key store is unavailable; retry later")
        })?;
        let allowance = match outcome {
            Outcome::Allow(allowance) => allowance,
            Outcome::Deny(reason) => return Err(ApiError::denied(reason)),
        };
        let Some(cached) = allowance.identity else {
            return Err(ApiError::unauthenticated("the API key is not valid"));
        };
        let key = &cached.key;
        Ok(Principal::OwnKey {
            caller: Caller {
                actor: format!("key:{}", key.key_prefix),
                role: AdminRole::Service,
            },
            owner_id: key.owner_id.clone(),
            ceiling: Ceiling::new(key.superkey, key.abilities.clone())
                .within_networks(key.allow_list.clone()),
        })
    }
}

impl Principal {
    pub fn caller(&self) -> &Caller {
        match self {
            Self::Token(caller) | Self::OwnKey { caller, .. } => caller,
        }
    }

    /// What the caller may grant: `None` (no limit) for a token.
    pub fn ceiling(&self) -> Option<&Ceiling> {
        match self {
            Self::Token(_) => None,
            Self::OwnKey { ceiling, .. } => Some(ceiling),
        }
    }

    /// The owner this call acts for: a token names it (query or body, which
    /// must agree); a key acts for its own owner and may not name another.
    pub fn owner(&self, query: Option<String>, body: Option<String>) -> Result<String, ApiError> {
        let named = match (query, body) {
            (Some(q), Some(b)) if q != b => {
                return Err(ApiError::invalid(
                    "owner_id",
                    "owner_id in the query and in the body differ",
                ))
            }
            (q, b) => q.or(b),
        };
        match (self, named) {
            (Self::Token(_), Some(owner)) => Ok(owner),
            (Self::Token(_), None) => Err(ApiError::invalid(
                "owner_id",
                "owner_id is required with an admin token",
            )),
            (Self::OwnKey { owner_id, .. }, Some(other)) if other != *owner_id => Err(
                ApiError::forbidden("an API key acts only for its own owner"),
            ),
            (Self::OwnKey { owner_id, .. }, _) => Ok(owner_id.clone()),
        }
    }

    /// The admin routes: an `admin` token only.
    pub fn require_admin(&self) -> Result<&Caller, ApiError> {
        match self {
            Self::Token(caller) if caller.role == AdminRole::Admin => Ok(caller),
            _ => Err(ApiError::forbidden("this route requires an admin token")),
        }
    }
}

impl FromRequestParts<Arc<RestState>> for Principal {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<RestState>,
    ) -> Result<Self, ApiError> {
        state.auth.principal(parts).await
    }
}
