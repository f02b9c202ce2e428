//! The owner's assistant: `POST /v1/assistant/chat` answers a question from the owner's own
//! records and names the ones it was given (collection and key). Owner only: an app reaches the
//! model through `/v1/llm`, never through the owner's records. Everything happens inside this
//! instance: its store, its engine; no other instance's records exist here to be retrieved.

use super::{Ctx, S};
use crate::api::{ApiBytes, ApiResult};
use crate::protocol::Need;
use axum::response::{IntoResponse, Response};
use axum::Json;
use selfcloud_core::Error;
use selfcloud_llm::engine::collect;
use selfcloud_llm::openai::ChatRequest;
use selfcloud_llm::retrieve::{self, Passage};
use serde::Deserialize;
use serde_json::json;

/// Records the assistant reads for one question, at most (a bigger store is read in part).
const MAX_RECORDS_READ: usize = 10_000;
/// Text of one record the assistant ranks, at most (the start of a longer one), and of all the
/// records it reads for one question: it holds them in the instance's memory at once.
const MAX_RECORD_TEXT_BYTES: usize = 16 * 1024;
const MAX_TEXT_BYTES: usize = 32 << 20;
/// The longest question, in bytes.
const MAX_QUESTION_BYTES: usize = 4096;
/// Records handed to the model with the question.
const SOURCES: usize = 3;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AssistantRequest {
    message: String,
    /// The collections the assistant may read for this question (default: all).
    collections: Option<Vec<String>>,
    max_tokens: Option<u32>,
}

pub(crate) async fn chat(s: S, ctx: Ctx, ApiBytes(body): ApiBytes) -> ApiResult<Response> {
    ctx.require(&Need::Owner)?;
    let request: AssistantRequest =
        serde_json::from_slice(&body).map_err(|e| Error::invalid(format!("the request body: {e}")))?;
    if request.message.trim().is_empty() || request.message.len() > MAX_QUESTION_BYTES {
        return Err(Error::invalid(format!("`message` must hold 1 to {MAX_QUESTION_BYTES} bytes")).into());
    }
    // Without a model there is nothing to answer with: say so before reading the store.
    let engine = s.llm.engine().await?;
    let passages = read_passages(&s, request.collections.as_deref()).await?;
    // Ranking thousands of records is CPU work: off the instance's async threads.
    let (ranked, passages, message) = tokio::task::spawn_blocking(move || {
        (retrieve::rank(&request.message, &passages, SOURCES), passages, request.message)
    })
    .await
    .map_err(Error::internal)?;
    let sources: Vec<&Passage> = ranked.iter().map(|(i, _)| &passages[*i]).collect();
    // The question goes through the same checks as any chat request.
    let chat = ChatRequest {
        messages: retrieve::prompt(&message, &sources),
        temperature: Some(0.0),
        max_tokens: request.max_tokens,
        ..ChatRequest::default()
    };
    let generation = chat.validate(s.llm.limits())?;
    let events = super::llm::start(&s, &engine, &ctx, generation).await?;
    let (answer, finish, usage, timings) = collect(events).await?;
    let citations: Vec<_> = ranked
        .iter()
        .map(|(i, score)| json!({"collection": passages[*i].collection, "key": passages[*i].key, "score": score}))
        .collect();
    Ok(Json(json!({
        "answer": answer,
        "citations": citations,
        "finish_reason": finish,
        "model": engine.model().id,
        "usage": usage,
        "timings": timings,
    }))
    .into_response())
}

/// The owner's records as passages, from the collections allowed, page by page.
async fn read_passages(s: &S, collections: Option<&[String]>) -> Result<Vec<Passage>, Error> {
    let (mut passages, mut cursor) = (Vec::new(), None::<String>);
    let (mut read, mut bytes) = (0, 0);
    loop {
        let page = s.local.export_records(cursor.as_deref(), 256, 1 << 20).await?;
        for record in page.records {
            // The instance's own collections (the token ledger) are not the owner's notes.
            if record.collection.is_internal() {
                continue;
            }
            let collection = record.collection.as_str().to_owned();
            if collections.is_some_and(|allowed| !allowed.contains(&collection)) {
                continue;
            }
            read += 1;
            let Ok(value) = serde_json::from_slice::<serde_json::Value>(&record.value) else { continue };
            let mut text = retrieve::record_text(&value);
            text.truncate(retrieve::prefix(&text, MAX_RECORD_TEXT_BYTES).len());
            bytes += text.len();
            if !text.is_empty() {
                passages.push(Passage { collection, key: record.key.as_str().to_owned(), text });
            }
        }
        match page.cursor {
            Some(next) if read < MAX_RECORDS_READ && bytes < MAX_TEXT_BYTES => cursor = Some(next),
            _ => return Ok(passages),
        }
    }
}
