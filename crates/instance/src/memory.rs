//! What the owner's assistant keeps, in the user's own store (internal collections no client
//! path names: sealed, counted in the quota, exported with the rest):
//! - memories: things the owner told it to remember, which it reads with every question like
//!   the owner's records (and cites as `_memories/<id>`);
//! - conversations: each chat's turns, so a follow-up question is read with what came before;
//! - its settings: the collections it may read.

use crate::local::Local;
use selfcloud_core::{Collection, Error, RecordKey, Result};
use selfcloud_llm::openai::Message;
use selfcloud_store::Precondition;
use serde::{Deserialize, Serialize};
use std::hash::{BuildHasher, Hasher};

pub const MEMORIES: &str = "memories";
pub(crate) const CONVERSATIONS: &str = "conversations";
pub(crate) const SETTINGS: &str = "assistant";
const SETTINGS_KEY: &str = "settings";

/// The longest memory, in bytes.
pub const MAX_MEMORY_BYTES: usize = 2048;
/// Turns a conversation keeps (the oldest leave first), and turns of it handed to the model
/// with a follow-up (a small model's context holds few).
pub const MAX_KEPT_TURNS: usize = 100;
pub const TURNS_IN_PROMPT: usize = 4;
/// Bytes of one earlier turn handed to the model.
pub const TURN_QUOTE_BYTES: usize = 600;

pub fn memories() -> Collection {
    Collection::internal(MEMORIES)
}

fn conversations() -> Collection {
    Collection::internal(CONVERSATIONS)
}

/// A fresh id: its creation time first, so ids sort as they were made, then 64 random bits.
pub fn new_id(now_ms: u64) -> String {
    let random = std::collections::hash_map::RandomState::new().build_hasher().finish();
    format!("{now_ms:013}-{random:016x}")
}

/// An id as the key it is stored under; one outside the key grammar is no id at all (404).
fn id_key(id: &str) -> Result<RecordKey> {
    RecordKey::parse(id).map_err(|_| Error::not_found("no such id"))
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Memory {
    pub id: String,
    pub text: String,
    pub created_ms: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Turn {
    /// `user` or `assistant`.
    pub role: String,
    pub content: String,
    pub at_ms: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Conversation {
    pub id: String,
    /// The first question, shortened.
    pub title: String,
    pub created_ms: u64,
    pub updated_ms: u64,
    pub turns: Vec<Turn>,
}

impl Conversation {
    pub fn new(id: String, first_question: &str, now_ms: u64) -> Self {
        let title = selfcloud_llm::retrieve::prefix(first_question, 80).to_owned();
        Conversation { id, title, created_ms: now_ms, updated_ms: now_ms, turns: Vec::new() }
    }

    /// Adds a question and its answer, keeping the last [`MAX_KEPT_TURNS`] turns.
    pub fn add(&mut self, question: &str, answer: &str, now_ms: u64) {
        for (role, content) in [("user", question), ("assistant", answer)] {
            self.turns.push(Turn { role: role.into(), content: content.into(), at_ms: now_ms });
        }
        let extra = self.turns.len().saturating_sub(MAX_KEPT_TURNS);
        self.turns.drain(..extra);
        self.updated_ms = now_ms;
    }

    /// The last turns as chat messages, each quote bounded, whole exchanges only.
    pub fn recent(&self) -> Vec<Message> {
        let from = self.turns.len().saturating_sub(TURNS_IN_PROMPT);
        let from = from + (from % 2); // a question and its answer together
        self.turns[from..]
            .iter()
            .map(|t| Message {
                role: t.role.clone(),
                content: selfcloud_llm::retrieve::prefix(&t.content, TURN_QUOTE_BYTES).to_owned(),
            })
            .collect()
    }
}

/// The listing of a conversation: everything but its turns.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ConversationSummary {
    pub id: String,
    pub title: String,
    pub created_ms: u64,
    pub updated_ms: u64,
    pub turns: usize,
}

/// The assistant's settings.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AssistantSettings {
    /// The collections it may read; `null`: all of them.
    pub collections: Option<Vec<String>>,
}

impl AssistantSettings {
    /// Whether a question may read `collection`: the owner's setting, narrowed by the question's
    /// own list when it has one. Memories are always read.
    pub fn may_read(&self, asked: Option<&[String]>, collection: &str) -> bool {
        let within = |list: Option<&[String]>| list.is_none_or(|l| l.iter().any(|c| c == collection));
        collection == memories().as_str() || (within(self.collections.as_deref()) && within(asked))
    }
}

async fn all<T: serde::de::DeserializeOwned>(local: &Local, collection: &Collection) -> Result<Vec<T>> {
    let (mut items, mut cursor) = (Vec::new(), None::<String>);
    loop {
        let page = local.list_records(collection, "", 1000, 4 << 20, cursor.as_deref()).await?;
        for record in page.records {
            // One that does not read (an imported archive's, say) is left out, not a 500.
            match serde_json::from_slice(&record.value) {
                Ok(item) => items.push(item),
                Err(e) => tracing::warn!(key = %record.key, error = %e, "an assistant record does not read"),
            }
        }
        match page.cursor {
            Some(next) => cursor = Some(next),
            None => return Ok(items),
        }
    }
}

async fn put<T: Serialize>(local: &Local, collection: &Collection, id: &str, value: &T) -> Result<()> {
    let value = serde_json::to_vec(value).map_err(Error::internal)?;
    local.put_record(collection, &RecordKey::parse(id)?, value, Precondition::None).await.map(drop)
}

/// An imported record of what the assistant keeps, held to the rules its own API writes by:
/// a memory of 1 to [`MAX_MEMORY_BYTES`] under its own id, conversations that read, settings
/// naming client collections only. Other records pass (their readers skip what does not read).
pub fn check_imported(collection: &Collection, key: &RecordKey, value: &[u8]) -> Result<()> {
    let name = collection.as_str().strip_prefix('_').unwrap_or_default();
    let bad = |why: &str| Err(Error::invalid(format!("the archive's {}/{}: {why}", collection.as_str(), key.as_str())));
    match name {
        MEMORIES => match serde_json::from_slice::<Memory>(value) {
            Ok(m) if m.id != key.as_str() => bad("a memory's id must be its key"),
            Ok(m) if m.text.trim().is_empty() || m.text.len() > MAX_MEMORY_BYTES || m.text.contains('\0') => {
                bad(&format!("a memory holds 1 to {MAX_MEMORY_BYTES} bytes of text"))
            }
            Ok(_) => Ok(()),
            Err(_) => bad("not a memory"),
        },
        CONVERSATIONS => match serde_json::from_slice::<Conversation>(value) {
            Ok(c) if c.id != key.as_str() => bad("a conversation's id must be its key"),
            Ok(c) if c.turns.len() > MAX_KEPT_TURNS => bad("too many turns"),
            Ok(_) => Ok(()),
            Err(_) => bad("not a conversation"),
        },
        SETTINGS => match serde_json::from_slice::<AssistantSettings>(value) {
            Ok(s) if s.collections.iter().flatten().all(|c| Collection::parse(c).is_ok()) => Ok(()),
            _ => bad("the assistant's settings name client collections only"),
        },
        _ => Ok(()),
    }
}

pub async fn list_memories(local: &Local) -> Result<Vec<Memory>> {
    all(local, &memories()).await
}

/// Adds a memory, refused (409) when `max` are kept already.
pub async fn add_memory(local: &Local, text: &str, max: usize, now_ms: u64) -> Result<Memory> {
    let text = text.trim();
    if text.is_empty() || text.len() > MAX_MEMORY_BYTES {
        return Err(Error::invalid(format!("`text` must hold 1 to {MAX_MEMORY_BYTES} bytes")));
    }
    if text.contains('\0') {
        return Err(Error::invalid("`text` holds a NUL character"));
    }
    if list_memories(local).await?.len() >= max {
        return Err(Error::conflict(format!("the assistant keeps at most {max} memories; delete some first")));
    }
    let memory = Memory { id: new_id(now_ms), text: text.to_owned(), created_ms: now_ms };
    put(local, &memories(), &memory.id, &memory).await?;
    Ok(memory)
}

/// Deletes a memory; 404 when there is none of that id.
pub async fn delete_memory(local: &Local, id: &str) -> Result<()> {
    local.delete_record(&memories(), &id_key(id)?, Precondition::IfExists).await.map_err(not_found_as("memory"))
}

fn not_found_as(what: &'static str) -> impl Fn(Error) -> Error {
    move |e| match e.code {
        selfcloud_core::ErrorCode::NotFound | selfcloud_core::ErrorCode::PreconditionFailed => {
            Error::not_found(format!("no such {what}"))
        }
        _ => e,
    }
}

pub async fn conversation(local: &Local, id: &str) -> Result<Conversation> {
    let record = local.get_record(&conversations(), &id_key(id)?).await?;
    let record = record.ok_or_else(|| Error::not_found("no such conversation"))?;
    // One that does not read (an imported archive's) is one the assistant cannot go on with.
    serde_json::from_slice(&record.value)
        .map_err(|_| Error::conflict("this conversation's record does not read; delete it"))
}

/// Adds a question and its answer to `asked` as it is in the store now, one writer at a time
/// (`writes`), so two answers of one conversation ending together both stay. A new
/// conversation is written whole; one the owner deleted while it was being answered stays
/// deleted.
pub async fn add_exchange(
    local: &Local,
    writes: &tokio::sync::Mutex<()>,
    asked: &Conversation,
    is_new: bool,
    (question, answer): (&str, &str),
    now_ms: u64,
) -> Result<()> {
    let _one = writes.lock().await;
    let mut current = match conversation(local, &asked.id).await {
        Ok(current) => current,
        Err(e) if e.code == selfcloud_core::ErrorCode::NotFound && is_new => asked.clone(),
        Err(e) if e.code == selfcloud_core::ErrorCode::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    current.add(question, answer, now_ms);
    put(local, &conversations(), &current.id, &current).await
}

pub async fn list_conversations(local: &Local) -> Result<Vec<ConversationSummary>> {
    let all: Vec<Conversation> = all(local, &conversations()).await?;
    Ok(all
        .into_iter()
        .map(|c| ConversationSummary {
            turns: c.turns.len(),
            id: c.id,
            title: c.title,
            created_ms: c.created_ms,
            updated_ms: c.updated_ms,
        })
        .collect())
}

pub async fn delete_conversation(local: &Local, id: &str) -> Result<()> {
    local
        .delete_record(&conversations(), &id_key(id)?, Precondition::IfExists)
        .await
        .map_err(not_found_as("conversation"))
}

pub async fn settings(local: &Local) -> Result<AssistantSettings> {
    let record = local.get_record(&Collection::internal(SETTINGS), &RecordKey::parse(SETTINGS_KEY)?).await?;
    // Settings that do not read (an imported archive's) are the defaults until set again.
    Ok(record.and_then(|r| serde_json::from_slice(&r.value).ok()).unwrap_or_default())
}

pub async fn set_settings(local: &Local, settings: &AssistantSettings) -> Result<()> {
    for c in settings.collections.iter().flatten() {
        Collection::parse(c)?;
    }
    put(local, &Collection::internal(SETTINGS), SETTINGS_KEY, settings).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_import_holds_what_the_assistant_keeps_to_its_own_rules() {
        let check = |c: &str, k: &str, v: serde_json::Value| {
            check_imported(&Collection::internal(c), &RecordKey::parse(k).unwrap(), v.to_string().as_bytes())
        };
        let memory = |id: &str, text: &str| serde_json::json!({"id": id, "text": text, "created_ms": 1});
        assert!(check(MEMORIES, "m1", memory("m1", "my flight is on May 3")).is_ok());
        assert!(check(MEMORIES, "m1", memory("\"><script>", "x")).is_err(), "an id that is not its key");
        assert!(check(MEMORIES, "m1", memory("m1", &"x".repeat(MAX_MEMORY_BYTES + 1))).is_err());
        assert!(check(MEMORIES, "m1", memory("m1", " ")).is_err());
        assert!(check(MEMORIES, "m1", serde_json::json!({"id": "m1", "text": {"a": 1}})).is_err());
        assert!(check(SETTINGS, "settings", serde_json::json!({"collections": ["notes"]})).is_ok());
        assert!(check(SETTINGS, "settings", serde_json::json!({"collections": ["../x"]})).is_err());
        assert!(check(SETTINGS, "settings", serde_json::json!({"collections": ["_memories"]})).is_err());
        let conversation = Conversation::new("c1".into(), "hi", 1);
        assert!(check(CONVERSATIONS, "c1", serde_json::to_value(&conversation).unwrap()).is_ok());
        assert!(check(CONVERSATIONS, "c2", serde_json::to_value(&conversation).unwrap()).is_err());
        assert!(check("ledger", "x", serde_json::json!("anything")).is_ok(), "its reader skips what does not read");
    }

    #[test]
    fn ids_sort_by_time_and_a_path_trick_is_no_id() {
        let (a, b) = (new_id(5), new_id(6));
        assert!(a < b && a.len() == 30, "{a} {b}");
        assert_ne!(new_id(5), new_id(5));
        assert!(id_key(&a).is_ok());
        for bad in ["", "..", "../../etc/passwd", "a/b", &"k".repeat(513)] {
            assert_eq!(id_key(bad).unwrap_err().code, selfcloud_core::ErrorCode::NotFound, "{bad}");
        }
    }

    #[test]
    fn a_conversation_keeps_its_last_turns_and_quotes_whole_exchanges() {
        let mut c = Conversation::new("id".into(), &"why ".repeat(100), 1);
        assert!(c.title.len() <= 80);
        for n in 0..60 {
            c.add(&format!("q{n}"), &format!("a{n}"), n);
        }
        assert_eq!(c.turns.len(), MAX_KEPT_TURNS);
        assert_eq!((c.turns[0].content.as_str(), c.updated_ms), ("q10", 59));
        let recent: Vec<_> = c.recent().into_iter().map(|m| (m.role, m.content)).collect();
        assert_eq!(recent.first(), Some(&("user".to_owned(), "q58".to_owned())));
        assert_eq!(recent.len(), TURNS_IN_PROMPT);
        c.add(&"x".repeat(5000), "short", 70);
        assert!(c.recent().iter().all(|m| m.content.len() <= TURN_QUOTE_BYTES));
    }

    #[test]
    fn the_owners_setting_bounds_what_a_question_reads() {
        let all = AssistantSettings::default();
        assert!(all.may_read(None, "notes") && all.may_read(Some(&["notes".into()]), "notes"));
        assert!(!all.may_read(Some(&["diary".into()]), "notes"));
        let diary = AssistantSettings { collections: Some(vec!["diary".into()]) };
        assert!(diary.may_read(None, "diary") && !diary.may_read(None, "notes"));
        assert!(!diary.may_read(Some(&["notes".into()]), "notes"), "a question cannot widen the setting");
        assert!(diary.may_read(Some(&["notes".into()]), "_memories"), "memories are always read");
    }
}
