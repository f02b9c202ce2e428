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
/// The payer the owner's own LLM use is charged under (grant ids start with `grt_`).
pub const OWNER: &str = "owner";

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

/// Serializes the ledger's read-modify-writes (two answers of one app ending at once), gives
/// each payer its turn at the LLM, and remembers what could not be written.
#[derive(Default)]
pub struct Ledger {
    write: tokio::sync::Mutex<()>,
    turns: std::sync::Mutex<std::collections::HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// What a payer's calls computed that the store did not take: its next call writes it first
    /// and does not start while it cannot (a use that is never recorded would be free).
    unpaid: std::sync::Mutex<std::collections::HashMap<String, Vec<Debt>>>,
    /// An attack probe's switch: every write of the ledger fails, as a broken disk makes it.
    #[cfg(feature = "attack-probes")]
    pub(crate) unwritable: std::sync::atomic::AtomicBool,
}

/// Tokens one call spent that are not written yet.
#[derive(Clone, Debug)]
struct Debt {
    app_name: String,
    now_ms: u64,
    tokens: u64,
}

/// A payer's turn at the LLM: while one call of a payer (an app's grant, or the owner) holds
/// it, no other starts, so the check of what its budget leaves and the charge of what the call
/// spent cannot interleave with another call's (concurrent calls would each see what was left
/// before any of them).
pub struct Turn {
    _held: tokio::sync::OwnedMutexGuard<()>,
}

/// How long a call waits for its payer's turn before it is refused with 429.
const TURN_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

fn collection() -> Collection {
    Collection::internal(COLLECTION)
}

/// Days sort by key, and one day's payers share a prefix: `<day_ms>.<grant>`.
fn key(day_ms: u64, grant_id: &str) -> Result<RecordKey> {
    RecordKey::parse(&format!("{day_ms:013}.{grant_id}"))
}

/// A day's record, always as long as the largest counts would make it (JSON ends in spaces):
/// the room it takes is taken when the day's first call starts, and a charge rewrites it in
/// place without needing a byte of free quota, so filling the store during a call cannot make
/// the call free.
fn encode(spend: &Spend) -> Result<Vec<u8>> {
    let widest = Spend { tokens: u64::MAX, requests: u64::MAX, ..spend.clone() };
    let room = serde_json::to_vec(&widest).map_err(Error::internal)?.len();
    let mut value = serde_json::to_vec(spend).map_err(Error::internal)?;
    value.resize(room.max(value.len()), b' ');
    Ok(value)
}

impl Ledger {
    async fn read(&self, local: &Local, day_ms: u64, grant_id: &str) -> Result<Option<Spend>> {
        let Some(record) = local.get_record(&collection(), &key(day_ms, grant_id)?).await? else { return Ok(None) };
        serde_json::from_slice(&record.value).map(Some).map_err(Error::internal)
    }

    async fn write(&self, local: &Local, spend: &Spend) -> Result<()> {
        #[cfg(feature = "attack-probes")]
        if self.unwritable.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(Error::internal("the ledger is unwritable (attack probe)"));
        }
        let value = encode(spend)?;
        local.put_record(&collection(), &key(spend.day_ms, &spend.grant_id)?, value, Precondition::None).await?;
        Ok(())
    }

    /// Starts one call of `payer` (a grant's id, or [`OWNER`]) under `budget`: waits for the
    /// payer's turn (429 after [`TURN_WAIT`]), writes what its earlier calls could not (refused
    /// with that error while it still cannot), takes the room the day's record needs (507 when
    /// the store is full) and answers what the budget leaves (429 `budget_exceeded` when it is
    /// spent). The call holds the turn until what it spent is charged.
    pub async fn begin(
        &self,
        local: &Local,
        payer: &str,
        app_name: &str,
        budget: Option<u64>,
        now_ms: u64,
    ) -> Result<(Turn, Option<Allowance>)> {
        let turn = {
            let mut turns = self.turns.lock().unwrap_or_else(|e| e.into_inner());
            // A turn no call holds or waits for is dropped (a held one is also a guard's Arc).
            turns.retain(|_, t| Arc::strong_count(t) > 1);
            turns.entry(payer.to_owned()).or_default().clone()
        };
        let held = tokio::time::timeout(TURN_WAIT, turn.lock_owned()).await.map_err(|_| Error {
            message: "this app's earlier calls to the assistant are still running; try again shortly".into(),
            ..Error::rate_limited(std::time::Duration::from_secs(1))
        })?;
        self.settle(local, payer).await?;
        self.reserve(local, payer, app_name, now_ms).await.map_err(|e| Error {
            message: format!(
                "the LLM's use could not be recorded in the user's store, so no call starts: {}",
                e.message
            ),
            ..e
        })?;
        Ok((Turn { _held: held }, self.allowance(local, payer, budget, now_ms).await?))
    }

    /// Writes what `payer`'s earlier calls could not; the first write that fails again refuses.
    async fn settle(&self, local: &Local, payer: &str) -> Result<()> {
        let debts = self.unpaid.lock().unwrap_or_else(|e| e.into_inner()).remove(payer).unwrap_or_default();
        for (n, debt) in debts.iter().enumerate() {
            if let Err(e) = self.charge(local, payer, &debt.app_name, debt.now_ms, debt.tokens).await {
                self.owe_all(payer, debts[n..].to_vec());
                return Err(Error {
                    message: format!(
                        "what earlier calls spent of the LLM could not be recorded, so no call starts until it is: {}",
                        e.message
                    ),
                    ..e
                });
            }
        }
        Ok(())
    }

    fn owe_all(&self, payer: &str, debts: Vec<Debt>) {
        self.unpaid.lock().unwrap_or_else(|e| e.into_inner()).entry(payer.to_owned()).or_default().extend(debts);
    }

    /// Remembers `tokens` a call of `payer` spent that [`Ledger::charge`] could not write: the
    /// payer's next call writes them first.
    pub fn owe(&self, payer: &str, app_name: &str, now_ms: u64, tokens: u64) {
        self.owe_all(payer, vec![Debt { app_name: app_name.to_owned(), now_ms, tokens }]);
    }

    /// Makes sure the day's record of `payer` exists at its full size.
    async fn reserve(&self, local: &Local, payer: &str, app_name: &str, now_ms: u64) -> Result<()> {
        let _one_at_a_time = self.write.lock().await;
        let day_ms = budget::window(now_ms);
        if self.read(local, day_ms, payer).await?.is_some() {
            return Ok(());
        }
        self.prune(local, day_ms.saturating_sub(KEPT_DAYS * DAY_MS)).await?;
        let spend = Spend { grant_id: payer.to_owned(), app_name: app_name.to_owned(), day_ms, ..Spend::default() };
        self.write(local, &spend).await
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

    /// Adds one request's `tokens` to the payer's day (in the room [`Ledger::begin`] took).
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
        self.write(local, &spend).await
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

    fn store(dir: &std::path::Path, quota_bytes: u64) -> Local {
        let (id, key) = (selfcloud_core::InstanceId::random(), crate::DataKey::generate());
        let options = selfcloud_store::StoreOptions { quota_bytes };
        Local::create(id, dir, &key, crate::EngineKind::Sqlite, options).unwrap()
    }

    /// Fills the store to its last byte with records of the owner's.
    async fn fill(local: &Local) {
        let notes = Collection::parse("notes").unwrap();
        let (mut n, mut size) = (0, 4096);
        while size > 0 {
            let value = format!("\"{}\"", "x".repeat(size)).into_bytes();
            match local
                .put_record(&notes, &RecordKey::parse(&format!("k{n}")).unwrap(), value, Precondition::None)
                .await
            {
                Ok(_) => n += 1,
                Err(_) => size /= 2,
            }
        }
    }

    #[tokio::test]
    async fn a_charge_needs_no_free_quota_once_its_call_has_begun() {
        let dir = tempfile::tempdir().unwrap();
        let local = store(dir.path(), 64 * 1024);
        let ledger = Ledger::default();
        let (turn, allowance) = ledger.begin(&local, "grt_a", "Notes", Some(1000), DAY_MS + 5).await.unwrap();
        assert_eq!(allowance.unwrap().tokens, 1000);
        fill(&local).await;
        ledger.charge(&local, "grt_a", "Notes", DAY_MS + 5, 123_456_789).await.unwrap();
        drop(turn);
        let today = ledger.day(&local, DAY_MS + 5).await.unwrap();
        assert_eq!((today[0].tokens, today[0].requests), (123_456_789, 1));
        // Another payer's first call of the day finds no room: 507, before anything is computed.
        let e = ledger.begin(&local, "grt_b", "Mail", Some(1000), DAY_MS + 5).await.err().unwrap();
        assert_eq!(e.code, selfcloud_core::ErrorCode::QuotaExceeded, "{}", e.message);
    }

    #[tokio::test]
    async fn what_could_not_be_written_is_written_by_the_next_call_or_refuses_it() {
        let dir = tempfile::tempdir().unwrap();
        let local = store(dir.path(), 1 << 30);
        let ledger = Ledger::default();
        ledger.owe("grt_a", "Notes", DAY_MS + 5, 40);
        // The debt is written before what is left is answered.
        let (_turn, allowance) = ledger.begin(&local, "grt_a", "Notes", Some(100), DAY_MS + 6).await.unwrap();
        assert_eq!(allowance.unwrap().tokens, 60);
        assert!(ledger.unpaid.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn spending_adds_up_per_app_and_day_and_old_days_are_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let local = store(dir.path(), 1 << 30);
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
