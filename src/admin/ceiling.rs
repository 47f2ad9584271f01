//! Self-service: an owner's own key managing that owner's keys. Such a caller
//! may never hand out more than it holds, so a restricted key cannot mint (or
//! rotate its way to the plaintext of) a key stronger than itself, nor one
//! usable from networks it may not be used from itself. The checks
//! live here, beside the use-cases they guard, so every transport applies them.

use super::{AdminError, AdminResult, Caller, CreateKey, Issued, KeyAdmin, UpdateKey};
use crate::domain::{ability::grants, AllowList, ApiKey};

/// The abilities and networks of a self-service caller: the most it may
/// grant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ceiling {
    superkey: bool,
    abilities: Vec<String>,
    networks: AllowList,
}

impl Ceiling {
    /// A caller usable from every address; see [`Ceiling::within_networks`].
    pub fn new(superkey: bool, abilities: Vec<String>) -> Self {
        Self {
            superkey,
            abilities,
            networks: AllowList::default(),
        }
    }

    /// Limits what the caller grants to the networks of its own
    /// allow-list (open: every address).
    pub fn within_networks(self, networks: AllowList) -> Self {
        Self { networks, ..self }
    }

    /// Whether a key usable from `allowed_cidrs` stays within the caller's
    /// own networks. A superkey caller is held to them too: abilities and
    /// networks are separate limits.
    pub fn permits_networks(&self, allowed_cidrs: &[String]) -> AdminResult<()> {
        match self.networks.first_not_within(allowed_cidrs) {
            Some(outside) => Err(AdminError::AboveCallerNetworks(outside)),
            None => Ok(()),
        }
    }

    /// Whether a key with `superkey` and `abilities` stays within this
    /// ceiling; the error names the first thing above it.
    pub fn permits(&self, superkey: bool, abilities: &[String]) -> AdminResult<()> {
        let holds = |required: &str| self.abilities.iter().any(|held| grants(held, required));
        if self.superkey {
            return Ok(());
        }
        if superkey && !holds("*") {
            return Err(AdminError::AboveCallerAbilities("superkey".to_owned()));
        }
        match abilities.iter().find(|a| !holds(a.trim())) {
            Some(above) => Err(AdminError::AboveCallerAbilities(above.trim().to_owned())),
            None => Ok(()),
        }
    }
}

impl KeyAdmin {
    /// [`KeyAdmin::create_key`] for a caller limited to `ceiling`.
    pub async fn create_key_within(
        &self,
        caller: &Caller,
        ceiling: Option<&Ceiling>,
        request: CreateKey,
    ) -> AdminResult<Issued> {
        if let Some(ceiling) = ceiling {
            ceiling.permits(request.superkey, &request.abilities)?;
            ceiling.permits_networks(&request.allowed_cidrs)?;
        }
        self.create_key(caller, request).await
    }

    /// [`KeyAdmin::update_key`] for a caller limited to `ceiling`: only the
    /// fields being changed are weighed, so renaming a stronger key is fine.
    pub async fn update_key_within(
        &self,
        caller: &Caller,
        ceiling: Option<&Ceiling>,
        owner_id: &str,
        id: &str,
        update: UpdateKey,
    ) -> AdminResult<ApiKey> {
        if let Some(ceiling) = ceiling {
            let changes = |field: &str| update.paths.iter().any(|p| p == field);
            let abilities: &[String] = if changes("abilities") {
                &update.abilities
            } else {
                &[]
            };
            ceiling.permits(changes("superkey") && update.superkey, abilities)?;
            if changes("allowed_cidrs") {
                ceiling.permits_networks(&update.allowed_cidrs)?;
            }
        }
        self.update_key(caller, owner_id, id, update).await
    }

    /// [`KeyAdmin::rotate_key`] for a caller limited to `ceiling`: the
    /// successor inherits the old key's abilities and its plaintext goes to
    /// the caller, so the old key must be within the ceiling.
    pub async fn rotate_key_within(
        &self,
        caller: &Caller,
        ceiling: Option<&Ceiling>,
        owner_id: &str,
        id: &str,
        overlap_minutes: u32,
    ) -> AdminResult<(Issued, ApiKey)> {
        if let Some(ceiling) = ceiling {
            let old = self.get_key(owner_id, id).await?;
            ceiling.permits(old.superkey, &old.abilities)?;
            ceiling.permits_networks(&old.allowed_cidrs)?;
        }
        self.rotate_key(caller, owner_id, id, overlap_minutes).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn abilities(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_restricted_key_may_grant_only_what_it_holds() {
        let ceiling = Ceiling::new(false, abilities(&["keygate:keys", "orders:*"]));
        assert!(ceiling
            .permits(false, &abilities(&["orders:read", "orders:*"]))
            .is_ok());
        assert!(matches!(
            ceiling.permits(false, &abilities(&["orders:read", "billing:read"])),
            Err(AdminError::AboveCallerAbilities(a)) if a == "billing:read"
        ));
        assert!(matches!(
            ceiling.permits(false, &abilities(&["*"])),
            Err(AdminError::AboveCallerAbilities(a)) if a == "*"
        ));
        assert!(matches!(
            ceiling.permits(true, &[]),
            Err(AdminError::AboveCallerAbilities(a)) if a == "superkey"
        ));
    }

    #[test]
    fn a_superkey_or_a_star_key_may_grant_anything() {
        for ceiling in [
            Ceiling::new(true, Vec::new()),
            Ceiling::new(false, abilities(&["*"])),
        ] {
            assert!(ceiling
                .permits(true, &abilities(&["billing:write"]))
                .is_ok());
        }
    }
}
