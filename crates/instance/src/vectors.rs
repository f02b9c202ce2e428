//! The assistant's vector index: each of the owner's records embedded by the instance's own
//! embedding model and kept in the user's own store (an internal collection: sealed, counted in
//! the quota, exported with the rest), keyed by a hash of the record's collection and key, with
//! a digest of the text it was made from. It is derived data: lost, or made by another model, it
//! is rebuilt from the records; a record changed since it was embedded is embedded again.
//!
//! The first question builds it; from then on every write brings it up to date shortly after
//! (an instance whose owner never asks never maps the embedding model).

use crate::local::Local;
use base64::Engine as _;
use selfcloud_core::{Collection, Error, RecordKey, Result};
use selfcloud_llm::embed::Embedder;
use selfcloud_llm::retrieve::Passage;
use selfcloud_store::Precondition;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};

pub(crate) const COLLECTION: &str = "vectors";
/// Texts sent to the embedding model at once.
const EMBED_BATCH: usize = 32;

fn collection() -> Collection {
    Collection::internal(COLLECTION)
}

/// One record's vector.
#[derive(Serialize, Deserialize)]
struct Entry {
    collection: String,
    key: String,
    model: String,
    /// What the vector was made from ([`digest`] of the record's text).
    text_sha256: String,
    /// Little-endian f32s, base64.
    vector: String,
}

fn digest(text: &str) -> String {
    hex::encode(Sha256::digest(text.as_bytes()))
}

/// The entry's key: the same for one record always, and within the key grammar whatever the
/// record's key (collection and key together may be longer than a key may be).
fn entry_key(collection: &str, key: &str) -> Result<RecordKey> {
    let mut hash = Sha256::new();
    hash.update(collection.as_bytes());
    hash.update([0]);
    hash.update(key.as_bytes());
    RecordKey::parse(&hex::encode(&hash.finalize()[..16]))
}

fn encode(v: &[f32]) -> String {
    base64::engine::general_purpose::STANDARD.encode(v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>())
}

fn decode(s: &str, dimensions: usize) -> Option<Vec<f32>> {
    let bytes = base64::engine::general_purpose::STANDARD.decode(s).ok()?;
    let v: Vec<f32> = bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
    (v.len() == dimensions && bytes.len() % 4 == 0).then_some(v)
}

#[derive(Default)]
pub struct VectorIndex {
    /// One pass at a time: two would embed the same records twice.
    pass: tokio::sync::Mutex<()>,
    /// A question has built the index in this process: writes now keep it up to date.
    active: AtomicBool,
    /// A pass after a write is already scheduled.
    scheduled: AtomicBool,
}

impl VectorIndex {
    /// Brings the index up to date with `passages` (the records the assistant reads, all of them
    /// when `complete`, which lets entries of records gone be removed) and answers each
    /// passage's vector: `None` for one past the `budget` of records one pass embeds (a
    /// question waits for them; the rest are found by their words until a later pass).
    pub async fn refresh(
        &self,
        local: &Local,
        embedder: &Embedder,
        passages: &[Passage],
        complete: bool,
        budget: usize,
    ) -> Result<Vec<Option<Vec<f32>>>> {
        let _one = self.pass.lock().await;
        self.active.store(true, Ordering::Relaxed);
        let model = embedder.model().id.clone();
        let dimensions = embedder.dimensions();
        let mut stored = self.entries(local).await?;
        let mut vectors: Vec<Option<Vec<f32>>> = Vec::with_capacity(passages.len());
        let mut missing = Vec::new();
        for (i, p) in passages.iter().enumerate() {
            let key = entry_key(&p.collection, &p.key)?;
            let current = stored
                .remove(key.as_str())
                .filter(|e| e.model == model && e.text_sha256 == digest(&p.text))
                .and_then(|e| decode(&e.vector, dimensions));
            if current.is_none() && missing.len() < budget {
                missing.push(i);
            }
            vectors.push(current);
        }
        for batch in missing.chunks(EMBED_BATCH) {
            let texts = batch.iter().map(|&i| passages[i].text.clone()).collect();
            let embedded = embedder.embed(texts, None, Default::default())?.await.map_err(Error::internal)??;
            for (&i, vector) in batch.iter().zip(embedded.vectors) {
                let p = &passages[i];
                let entry = Entry {
                    collection: p.collection.clone(),
                    key: p.key.clone(),
                    model: model.clone(),
                    text_sha256: digest(&p.text),
                    vector: encode(&vector),
                };
                let value = serde_json::to_vec(&entry).map_err(Error::internal)?;
                local.put_record(&collection(), &entry_key(&p.collection, &p.key)?, value, Precondition::None).await?;
                vectors[i] = Some(vector);
            }
        }
        // What is left was made for records that are gone (or are no longer text).
        if complete {
            for key in stored.keys() {
                local.delete_record(&collection(), &RecordKey::parse(key)?, Precondition::None).await?;
            }
        }
        Ok(vectors)
    }

    /// Every entry, by its key (an entry that does not parse counts as missing: it is remade).
    async fn entries(&self, local: &Local) -> Result<HashMap<String, Entry>> {
        let (mut entries, mut cursor) = (HashMap::new(), None::<String>);
        loop {
            let page = local.list_records(&collection(), "", 1000, 4 << 20, cursor.as_deref()).await?;
            for record in page.records {
                if let Ok(entry) = serde_json::from_slice(&record.value) {
                    entries.insert(record.key.as_str().to_owned(), entry);
                }
            }
            match page.cursor {
                Some(next) => cursor = Some(next),
                None => return Ok(entries),
            }
        }
    }

    /// True once, when a write should schedule a pass: the index is in use and no pass waits.
    pub fn should_schedule(&self) -> bool {
        self.active.load(Ordering::Relaxed) && !self.scheduled.swap(true, Ordering::AcqRel)
    }

    /// The scheduled pass is starting: a write from now on schedules the next.
    pub fn starting_scheduled(&self) {
        self.scheduled.store(false, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_keys_are_fixed_valid_and_tell_records_apart() {
        let long = "k".repeat(512);
        assert_eq!(entry_key("notes", "a").unwrap(), entry_key("notes", "a").unwrap());
        assert_ne!(entry_key("notes", "a").unwrap(), entry_key("note", "sa").unwrap());
        assert_eq!(entry_key("notes", &long).unwrap().as_str().len(), 32);
    }

    #[test]
    fn vectors_survive_the_store_and_a_wrong_length_is_refused() {
        let v = vec![0.5, -1.25, 3.0];
        assert_eq!(decode(&encode(&v), 3), Some(v.clone()));
        assert_eq!(decode(&encode(&v), 4), None);
        assert_eq!(decode("not base64!", 3), None);
    }
}
