//! The token ledger: what each app spent of the LLM in a UTC day, kept in the user's own store
//! (an internal collection no client path reaches), so the owner sees each app's use and a
//! restart or hibernation does not forget it. The budget rule is `selfcloud_llm::budget`'s.

use crate::local::Local;
use selfcloud_core::{Collection, Error, RecordKey, Result};
use selfcloud_llm::budget::{self, Allowance};
use selfcloud_store::Precondition;
use serde::{Deserialize, Serialize};

const COLLECTION: &str = "llm-usage";

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

/// Serializes the ledger's read-modify-writes (two answers of one app ending at once).
#[derive(Default)]
pub struct Ledger {
    write: tokio::sync::Mutex<()>,
}

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
        let mut spend = self.read(local, day_ms, grant_id).await?.unwrap_or_else(|| Spend {
            grant_id: grant_id.to_owned(),
            app_name: app_name.to_owned(),
            day_ms,
            ..Spend::default()
        });
        spend.tokens = spend.tokens.saturating_add(tokens);
        spend.requests += 1;
        let value = serde_json::to_vec(&spend).map_err(Error::internal)?;
        local.put_record(&collection(), &key(day_ms, grant_id)?, value, Precondition::None).await?;
        Ok(())
    }

    /// Every app's spending on the day `now_ms` falls in.
    pub async fn day(&self, local: &Local, now_ms: u64) -> Result<Vec<Spend>> {
        let prefix = format!("{:013}.", budget::window(now_ms));
        let (mut spends, mut cursor) = (Vec::new(), None::<String>);
        loop {
            let page = local.list_records(&collection(), &prefix, 1000, 1 << 20, cursor.as_deref()).await?;
            for record in page.records {
                spends.push(serde_json::from_slice(&record.value).map_err(Error::internal)?);
            }
            match page.cursor {
                Some(next) => cursor = Some(next),
                None => return Ok(spends),
            }
        }
    }
}
