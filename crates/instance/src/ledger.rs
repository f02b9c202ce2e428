//! The token ledger: what each app spent of the LLM in a UTC day, kept in the user's own store
//! (an internal collection no client path reaches), so the owner sees each app's use and a
//! restart or hibernation does not forget it. The budget rule is `selfcloud_llm::budget`'s.

use crate::local::Local;
use selfcloud_core::{Collection, Error, RecordKey, Result};
use selfcloud_llm::budget::{self, Allowance};
use selfcloud_store::Precondition;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

pub(crate) const COLLECTION: &str = "llm-usage";
/// Days of spending kept; older ones are removed as a new day starts, so the ledger stays a few
/// records per app.
const KEPT_DAYS: u64 = 31;
const DAY_MS: u64 = 24 * 60 * 60 * 1000;

/// One app's spending on one day.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Spend {
    pub grant_id: String,
    pub app_name: String,
    /// The UTC day, as the Unix milliseconds it starts at.
    pub day_ms: u64,
    /// Prompt and answer tokens together.
    pub tokens: u64,
    pub requests: u64,
}

/// Serializes the ledger's read-modify-writes (two answers of one app ending at once), and
/// gives each app its turn at the LLM.
#[derive(Default)]
pub struct Ledger {
    write: tokio::sync::Mutex<()>,
    turns: std::sync::Mutex<std::collections::HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

/// An app's turn at the LLM: while one call of a grant holds it, no other starts, so the check
/// of what its budget leaves and the charge of what the call spent cannot interleave with
/// another call's (concurrent calls would each see what was left before any of them).
pub struct Turn {
    _held: tokio::sync::OwnedMutexGuard<()>,
}

/// How long a call waits for its app's turn before it is refused with 429.
const TURN_WAIT: std::time::Duration = std::time::Duration::from_secs(10);
/// Room the store must have for a call to start: enough to record what it spent (a call
/// whose use could not be recorded would be free).
const RECORD_ROOM: u64 = 4096;

fn collection() -> Collection {
    Collection::internal(COLLECTION)
}

/// Days sort by key, and one day's apps share a prefix: `<day_ms>.<grant>`.
fn key(day_ms: u64, grant_id: &str) -> Result<RecordKey> {
    RecordKey::parse(&format!("{day_ms:013}.{grant_id}"))
}

impl Ledger {
    async fn read(&self, local: &Local, day_ms: u64, grant_id: &str) -> Result<Option<Spend>> {
        let Some(record) = local.get_record(&collection(), &key(day_ms, grant_id)?).await? else { return Ok(None) };
        serde_json::from_slice(&record.value).map(Some).map_err(Error::internal)
    }

    /// Starts one call of `grant_id` under `budget`: waits for the app's turn (429 after
    /// [`TURN_WAIT`]), makes sure the user's store has room to record the call (507 when it is
    /// full) and answers what the budget leaves (429 `budget_exceeded` when it is spent). The
    /// call holds the turn until what it spent is charged.
    pub async fn begin(
        &self,
        local: &Local,
        grant_id: &str,
        budget: Option<u64>,
        now_ms: u64,
    ) -> Result<(Turn, Option<Allowance>)> {
        let turn = {
            let mut turns = self.turns.lock().unwrap_or_else(|e| e.into_inner());
            // A turn no call holds or waits for is dropped (a held one is also a guard's Arc).
            turns.retain(|_, t| Arc::strong_count(t) > 1);
            turns.entry(grant_id.to_owned()).or_default().clone()
        };
        let held = tokio::time::timeout(TURN_WAIT, turn.lock_owned()).await.map_err(|_| Error {
            message: "this app's earlier calls to the assistant are still running; try again shortly".into(),
            ..Error::rate_limited(std::time::Duration::from_secs(1))
        })?;
        let usage = local.storage_usage().await?;
        if usage.quota_bytes.saturating_sub(usage.bytes) < RECORD_ROOM {
            return Err(Error::new(
                selfcloud_core::ErrorCode::QuotaExceeded,
                "the user's storage is full: the assistant's use by this app could not be recorded",
            ));
        }
        Ok((Turn { _held: held }, self.allowance(local, grant_id, budget, now_ms).await?))
    }

    /// What `grant_id` may still spend now under `budget`: the budget's 429 when it is spent.
    pub async fn allowance(
        &self,
        local: &Local,
        grant_id: &str,
        budget: Option<u64>,
        now_ms: u64,
    ) -> Result<Option<Allowance>> {
        if budget.is_none() {
            return Ok(None);
        }
        let spent = self.read(local, budget::window(now_ms), grant_id).await?.map_or(0, |s| s.tokens);
        budget::allowance(budget, spent, now_ms)
    }

    /// Adds one request's `tokens` to the app's day.
    pub async fn charge(&self, local: &Local, grant_id: &str, app_name: &str, now_ms: u64, tokens: u64) -> Result<()> {
        let _one_at_a_time = self.write.lock().await;
        let day_ms = budget::window(now_ms);
        let mut spend = match self.read(local, day_ms, grant_id).await? {
            Some(spend) => spend,
            None => {
                self.prune(local, day_ms.saturating_sub(KEPT_DAYS * DAY_MS)).await?;
                Spend { grant_id: grant_id.to_owned(), app_name: app_name.to_owned(), day_ms, ..Spend::default() }
            }
        };
        spend.tokens = spend.tokens.saturating_add(tokens);
        spend.requests += 1;
        let value = serde_json::to_vec(&spend).map_err(Error::internal)?;
        local.put_record(&collection(), &key(day_ms, grant_id)?, value, Precondition::None).await?;
        Ok(())
    }

    /// Removes the days before `cutoff_ms` (keys sort by day, so they come first).
    async fn prune(&self, local: &Local, cutoff_ms: u64) -> Result<()> {
        let cutoff = format!("{cutoff_ms:013}.");
        loop {
            let page = local.list_records(&collection(), "", 256, 1 << 20, None).await?;
            let old: Vec<_> = page.records.iter().filter(|r| r.key.as_str() < cutoff.as_str()).collect();
            for record in &old {
                local.delete_record(&collection(), &record.key, Precondition::None).await?;
            }
            if old.len() < page.records.len() || page.cursor.is_none() || old.is_empty() {
                return Ok(());
            }
        }
    }

    /// Every app's spending on the day `now_ms` falls in.
    pub async fn day(&self, local: &Local, now_ms: u64) -> Result<Vec<Spend>> {
        let prefix = format!("{:013}.", budget::window(now_ms));
        let (mut spends, mut cursor) = (Vec::new(), None::<String>);
        loop {
            let page = local.list_records(&collection(), &prefix, 1000, 1 << 20, cursor.as_deref()).await?;
            for record in page.records {
                // A record that does not read (an imported archive's) is left out, not a 500.
                if let Ok(spend) = serde_json::from_slice(&record.value) {
                    spends.push(spend);
                }
            }
            match page.cursor {
                Some(next) => cursor = Some(next),
                None => return Ok(spends),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn spending_adds_up_per_app_and_day_and_old_days_are_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let (id, key) = (selfcloud_core::InstanceId::random(), crate::DataKey::generate());
        let options = selfcloud_store::StoreOptions { quota_bytes: 1 << 30 };
        let local = Local::create(id, dir.path(), &key, crate::EngineKind::Sqlite, options).unwrap();
        let ledger = Ledger::default();
        let day = |n: u64| n * DAY_MS + 1000;
        ledger.charge(&local, "grt_a", "Notes", day(100), 40).await.unwrap();
        ledger.charge(&local, "grt_a", "Notes", day(100), 2).await.unwrap();
        ledger.charge(&local, "grt_b", "Mail", day(100), 5).await.unwrap();
        let today = ledger.day(&local, day(100)).await.unwrap();
        let got: Vec<_> = today.iter().map(|s| (s.grant_id.as_str(), s.tokens, s.requests)).collect();
        assert_eq!(got, [("grt_a", 42, 2), ("grt_b", 5, 1)]);
        assert_eq!(ledger.allowance(&local, "grt_a", Some(50), day(100)).await.unwrap().unwrap().tokens, 8);
        assert!(ledger.allowance(&local, "grt_a", Some(42), day(100)).await.is_err());
        // A new day starts from nothing; once it is past KEPT_DAYS, the old day is gone.
        assert_eq!(ledger.allowance(&local, "grt_a", Some(50), day(101)).await.unwrap().unwrap().tokens, 50);
        ledger.charge(&local, "grt_a", "Notes", day(100 + KEPT_DAYS), 1).await.unwrap();
        assert_eq!(ledger.day(&local, day(100 + KEPT_DAYS)).await.unwrap().len(), 1);
        ledger.charge(&local, "grt_a", "Notes", day(101 + KEPT_DAYS), 1).await.unwrap();
        assert!(ledger.day(&local, day(100)).await.unwrap().is_empty(), "day 100 outlived its keep");
        assert_eq!(ledger.day(&local, day(100 + KEPT_DAYS)).await.unwrap().len(), 1);
    }
}
