//! Tiers (plans) and the operator's view of instances: metadata and health, never contents.

use crate::tokens::{hash_token, new_token, TokenHash, TokenKind};
use crate::Control;
use selfcloud_core::config::Tier;
use selfcloud_core::{Error, InstanceId, Result};
use std::path::Path;
use subtle::ConstantTimeEq;

/// The operator's token file in the home directory (mode 0600).
pub const OPERATOR_TOKEN_FILE: &str = "operator.token";

/// Reads the operator token, creating it on first start. Only its hash stays in memory.
pub(crate) fn load_or_create_operator_token(home: &Path) -> Result<TokenHash> {
    let path = home.join(OPERATOR_TOKEN_FILE);
    match std::fs::read_to_string(&path) {
        Ok(token) => Ok(hash_token(token.trim())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            // Shaped like a session token but with its own prefix, so it is recognisable in leaks.
            let token = new_token(TokenKind::Session).replacen("scs_", "sco_", 1);
            selfcloud_durable::replace(&path, token.as_bytes())?;
            Ok(hash_token(&token))
        }
        Err(e) => Err(Error::internal(format!("read {}: {e}", path.display()))),
    }
}

/// What the operator sees of one instance.
#[derive(Clone, Debug)]
pub struct InstanceInfo {
    pub id: InstanceId,
    pub username: String,
    pub tier: Tier,
    pub state: String,
    pub created_at: u64,
    /// Running, hibernated or crashed, with what it uses (never its contents).
    pub run: crate::RunStatus,
}

impl Control {
    /// True when `token` is the operator's (constant-time).
    pub fn is_operator(&self, token: &str) -> bool {
        bool::from(hash_token(token).ct_eq(&self.operator_token_hash))
    }

    /// The tier of an instance; unknown instances count as free.
    pub fn tier_of(&self, id: InstanceId) -> Tier {
        self.tiers.read().get(&id).copied().unwrap_or_default()
    }

    pub(crate) fn remember_tier(&self, id: InstanceId, tier: Tier) {
        self.tiers.write().insert(id, tier);
    }

    /// Moves an instance to another tier: its quota and rate limits change at once.
    pub async fn set_tier(&self, id: InstanceId, tier: Tier) -> Result<()> {
        let changed = self.blocking(move |r| r.set_instance_tier(id, tier.as_str())).await?;
        if !changed {
            return Err(Error::not_found("no such instance"));
        }
        self.remember_tier(id, tier);
        self.retier_running(id, tier).await?;
        tracing::info!(instance = %id, tier = %tier, "tier changed");
        Ok(())
    }

    /// Every instance's metadata, oldest first.
    pub async fn list_instances(&self) -> Result<Vec<InstanceInfo>> {
        let rows = self.blocking(|r| r.instances()).await?;
        Ok(rows
            .into_iter()
            .map(|(id, username, tier, state, created_at)| InstanceInfo {
                id,
                username,
                tier: tier.parse().unwrap_or_default(),
                state,
                created_at,
                run: self.run_status(id),
            })
            .collect())
    }
}
