//! Who calls the use-cases: the configured admin tokens and the caller one
//! of them names (its name is the audit actor, its role what it may do).

use super::AdminError;

/// Who is calling: the admin token's name (the audit actor) and its role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub actor: String,
    pub role: AdminRole,
}

impl Caller {
    pub fn require_admin(&self) -> Result<(), AdminError> {
        match self.role {
            AdminRole::Admin => Ok(()),
            AdminRole::Service | AdminRole::Feed => Err(AdminError::AdminRoleRequired),
        }
    }

    /// KeyAdmin and the REST API: any role but `feed`.
    pub fn require_key_admin(&self) -> Result<(), AdminError> {
        match self.role {
            AdminRole::Admin | AdminRole::Service => Ok(()),
            AdminRole::Feed => Err(AdminError::FeedRoleOnlyFollowsTheFeed),
        }
    }

    /// KeyFeed, where key hashes leave the store: `admin` or `feed`.
    pub fn require_feed(&self) -> Result<(), AdminError> {
        match self.role {
            AdminRole::Admin | AdminRole::Feed => Ok(()),
            AdminRole::Service => Err(AdminError::FeedRoleRequired),
        }
    }
}

/// What a caller may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdminRole {
    /// An application backend acting for its users.
    Service,
    /// An operator; may also call the admin RPCs.
    Admin,
    /// A proxy that decides from keygate's key table (the keygate-envoy
    /// module): `KeyFeed` only, so that the token a proxy holds can neither
    /// issue nor revoke keys.
    Feed,
}

impl AdminRole {
    /// The role as written in `KEYGATE_ADMIN_TOKENS` entries.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Service => "service",
            Self::Admin => "admin",
            Self::Feed => "feed",
        }
    }
}

/// An admin token: its name (the audit actor), role and SHA-256. Tokens
/// are configured by hash only.
#[derive(Clone, PartialEq, Eq)]
pub struct AdminToken {
    pub name: String,
    pub role: AdminRole,
    pub sha256: [u8; 32],
}

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminToken")
            .field("name", &self.name)
            .field("role", &self.role)
            .finish_non_exhaustive()
    }
}

/// Parses `name:role:sha256hex,…` (`KEYGATE_ADMIN_TOKENS`, and what
/// `keygate admin-token` prints).
pub fn parse_admin_tokens(raw: &str) -> Result<Vec<AdminToken>, String> {
    let mut tokens: Vec<AdminToken> = Vec::new();
    for entry in raw.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let mut parts = entry.splitn(3, ':');
        let (Some(name), Some(role), Some(hash)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err("each entry must be name:role:sha256hex".into());
        };
        let role = match role {
            "service" => AdminRole::Service,
            "admin" => AdminRole::Admin,
            "feed" => AdminRole::Feed,
            other => {
                return Err(format!(
                    "role {other:?} for token {name:?} is not service, admin or feed"
                ))
            }
        };
        let sha256: [u8; 32] = hex::decode(hash)
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| {
                format!("token {name:?}: the hash must be 64 hex characters (a SHA-256)")
            })?;
        if name.is_empty() || tokens.iter().any(|t| t.name == name) {
            return Err(format!("token name {name:?} is empty or repeated"));
        }
        // One secret under two names would make the audit actor (and, with
        // two roles, the permissions) depend on the order of the entries.
        if let Some(first) = tokens.iter().find(|t| t.sha256 == sha256) {
            return Err(format!(
                "tokens {:?} and {name:?} have the same hash; give each caller its own token",
                first.name
            ));
        }
        tokens.push(AdminToken {
            name: name.to_owned(),
            role,
            sha256,
        });
    }
    Ok(tokens)
}
