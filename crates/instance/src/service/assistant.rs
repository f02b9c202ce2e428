//! The owner's assistant: `POST /v1/assistant/chat` answers a question from the owner's own
//! records and names the ones it was given (collection and key). Owner only: an app reaches the
//! model through `/v1/llm`, never through the owner's records. Everything happens inside this
//! instance: its store, its engine; no other instance's records exist here to be retrieved.
//!
//! Sources are found by their words (BM25) and, with an embedding model, by their meaning
//! (the vector index, `crate::vectors`, brought up to date before each question and after writes).

use super::{memories, Ctx, Shared, S};
use crate::api::{json_body, ApiBytes, ApiResult};
use crate::memory::{self, Conversation};
use crate::part::{Access, Answer, Body, Part, Route};
use axum::http::{HeaderMap, Method};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use axum::Json;
use futures_util::StreamExt;
use selfcloud_core::Error;
use selfcloud_llm::engine::collect;
use selfcloud_llm::openai::ChatRequest;
use selfcloud_llm::retrieve::{self, Passage};
use selfcloud_llm::{sse, Event, Events};
use serde::Deserialize;
use serde_json::json;

/// The owner's assistant: owner only, whatever an app's scopes.
pub static PART: Part = Part {
    name: "assistant",
    about: "The owner's assistant: answers from the owner's own records and memories, inside the instance.",
    routes: &[
        Route::new(
            Method::POST,
            "/v1/assistant/chat",
            Access::Owner,
            "An answer from the owner's own records and memories, with the records it was given (collection and key) as citations, and the conversation it belongs to. Body: `{\"message\": \"...\", \"collections\": [\"notes\"], \"conversation\": \"<id>\", \"stream\": false}` (collections: within the assistant's settings; conversation: one to go on with, a new one without).",
            || post(chat),
        )
        .body(Body::Json)
        .answer(Answer::JsonOrEvents)
        .metered()
        .errors(&[400, 403, 404, 429, 503]),
        Route::new(Method::GET, "/v1/assistant/memories", Access::Owner, "The memories the assistant keeps and reads with every question: `{\"memories\": [...]}`.", || get(memories::list))
            .errors(&[403]),
        Route::new(Method::POST, "/v1/assistant/memories", Access::Owner, "A new memory (`{\"text\": \"...\"}`): 201 with its id.", || post(memories::add))
            .body(Body::Json)
            .answer(Answer::Created)
            .errors(&[400, 403, 409]),
        Route::new(Method::DELETE, "/v1/assistant/memories/{id}", Access::Owner, "Forgets one memory (404 when there is none of that id).", || delete(memories::delete))
            .answer(Answer::Empty)
            .errors(&[403, 404]),
        Route::new(Method::GET, "/v1/assistant/conversations", Access::Owner, "The kept conversations, newest last: id, title (the first question), times, turns.", || get(memories::conversations))
            .errors(&[403]),
        Route::new(Method::GET, "/v1/assistant/conversations/{id}", Access::Owner, "One conversation with its turns.", || get(memories::conversation))
            .errors(&[403, 404]),
        Route::new(Method::DELETE, "/v1/assistant/conversations/{id}", Access::Owner, "Forgets one conversation.", || delete(memories::delete_conversation))
            .answer(Answer::Empty)
            .errors(&[403, 404]),
        Route::new(Method::GET, "/v1/assistant/settings", Access::Owner, "The assistant's settings: the collections it may read (`null` for all).", || get(memories::settings))
            .errors(&[403]),
        Route::new(Method::PUT, "/v1/assistant/settings", Access::Owner, "New settings (`{\"collections\": [\"notes\"]}`, `null` for all).", || put(memories::set_settings))
            .body(Body::Json)
            .errors(&[400, 403]),
    ],
    collections: &[crate::vectors::COLLECTION, memory::MEMORIES, memory::CONVERSATIONS, memory::SETTINGS],
    sealed: &[],
    channels: &[],
};

/// Text of one record the assistant ranks, at most (the start of a longer one), and of all the
/// records it reads for one question: it holds them in the instance's memory at once.
const MAX_RECORD_TEXT_BYTES: usize = 16 * 1024;
const MAX_TEXT_BYTES: usize = 32 << 20;
/// The longest question, in bytes.
const MAX_QUESTION_BYTES: usize = 4096;
/// Records handed to the model with the question.
const SOURCES: usize = 3;
/// How long after a write the index is brought up to date (writes in a burst share one pass).
const INDEX_AFTER_WRITE: std::time::Duration = std::time::Duration::from_millis(500);

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AssistantRequest {
    message: String,
    /// The collections the assistant may read for this question (default: all).
    collections: Option<Vec<String>>,
    max_tokens: Option<u32>,
    /// A conversation to go on with (its last turns are read with the question); a new one
    /// starts without.
    conversation: Option<String>,
    /// Answer as server-sent events: the sources first, then the text as it comes.
    #[serde(default)]
    stream: bool,
}

async fn chat(s: S, ctx: Ctx, headers: HeaderMap, ApiBytes(body): ApiBytes) -> ApiResult<Response> {
    let request: AssistantRequest = json_body(&headers, &body)?;
    for c in request.collections.iter().flatten() {
        selfcloud_core::Collection::parse(c)?;
    }
    if request.message.trim().is_empty() || request.message.len() > MAX_QUESTION_BYTES {
        return Err(Error::invalid(format!("`message` must hold 1 to {MAX_QUESTION_BYTES} bytes")).into());
    }
    // Without a model there is nothing to answer with: say so before reading the store.
    let engine = s.llm.engine().await?;
    let now_ms = ctx.0.now_ms;
    let conversation = match &request.conversation {
        Some(id) => memory::conversation(&s.local, id).await?,
        None => Conversation::new(memory::new_id(now_ms), &request.message, now_ms),
    };
    let settings = memory::settings(&s.local).await?;
    let (passages, complete) = read_passages(&s).await?;
    // Each record's vector (remade where stale) and the question's, with an embedding model.
    let (vectors, question) = match embedder(&s).await {
        Some(embedder) => {
            let budget = s.llm.limits().assistant_embeds_per_pass;
            let vectors = s.vectors.refresh(&s.local, &embedder, &passages, complete, budget).await?;
            let question = embedder
                .embed(vec![request.message.clone()], None, Default::default())?
                .await
                .map_err(Error::internal)??;
            (vectors, question.vectors.into_iter().next())
        }
        None => (vec![None; passages.len()], None),
    };
    // Only what the owner lets it read for this question is ranked.
    let (passages, vectors): (Vec<Passage>, Vec<Option<Vec<f32>>>) = passages
        .into_iter()
        .zip(vectors)
        .filter(|(p, _)| settings.may_read(request.collections.as_deref(), &p.collection))
        .unzip();
    // Ranking thousands of records is CPU work: off the instance's async threads.
    let (ranked, passages, message) = tokio::task::spawn_blocking(move || {
        let ranked = retrieve::hybrid(&request.message, question.as_deref(), &passages, &vectors, SOURCES);
        (ranked, passages, request.message)
    })
    .await
    .map_err(Error::internal)?;
    let sources: Vec<&Passage> = ranked.iter().map(|(i, _)| &passages[*i]).collect();
    // The question goes through the same checks as any chat request; the conversation's last
    // turns come between the notes and the question.
    let mut messages = retrieve::prompt(&message, &sources);
    let question = messages.pop().expect("the prompt ends with the question");
    messages.extend(conversation.recent());
    messages.push(question);
    let chat = ChatRequest {
        messages: messages.into_iter().map(Into::into).collect(),
        temperature: Some(0.0),
        max_tokens: request.max_tokens,
        ..ChatRequest::default()
    };
    let generation = chat.validate(s.llm.limits())?;
    let (events, settled) = super::llm::start(&s, &engine, &ctx, generation).await?;
    let citations: Vec<_> = ranked
        .iter()
        .map(|(i, score)| json!({"collection": passages[*i].collection, "key": passages[*i].key, "score": score}))
        .collect();
    let head = json!({"citations": citations, "conversation": conversation.id, "model": engine.model().id});
    let exchange = Exchange { conversation, is_new: request.conversation.is_none(), question: message, now_ms };
    if request.stream {
        return Ok(stream_answer(s, head, exchange, events, settled));
    }
    let (answer, finish, usage, timings) = collect(events).await?;
    settled.wait().await?;
    exchange.keep(&s, &answer).await?;
    let mut body = head;
    body["answer"] = json!(answer);
    body["finish_reason"] = json!(finish);
    body["usage"] = json!(usage);
    body["timings"] = json!(timings);
    Ok(Json(body).into_response())
}

/// A question on its way to its conversation: kept once its answer is complete.
struct Exchange {
    conversation: Conversation,
    is_new: bool,
    question: String,
    now_ms: u64,
}

impl Exchange {
    async fn keep(self, s: &Shared, answer: &str) -> Result<(), Error> {
        let Exchange { conversation, is_new, question, now_ms } = self;
        memory::add_exchange(&s.local, &s.conversation_writes, &conversation, is_new, (&question, answer), now_ms).await
    }
}

/// The answer as server-sent events: `{"type":"sources",...}` (citations, conversation, model),
/// `{"type":"delta","text":...}` as the text comes, then `{"type":"done",...}` (finish reason,
/// usage, timings) once the exchange is kept and its use recorded, or `{"type":"error","error":...}`.
/// A reader that leaves stops the generation, and an answer never finished is not kept.
fn stream_answer(
    s: S,
    mut head: serde_json::Value,
    exchange: Exchange,
    mut events: Events,
    settled: super::llm::Settled,
) -> Response {
    head["type"] = json!("sources");
    let (frames, mut out) = tokio::sync::mpsc::channel::<String>(16);
    tokio::spawn(async move {
        let mut answer = String::new();
        let last = loop {
            let Some(event) = events.recv().await else {
                break Error::internal("the engine stopped without finishing the answer").body();
            };
            match event {
                Event::Delta(text) => {
                    answer.push_str(&text);
                    if frames.send(sse::event(&json!({"type": "delta", "text": text}))).await.is_err() {
                        return; // the reader left: dropping `events` stops the generation
                    }
                }
                Event::Done { finish, usage, timings } => match settled.wait().await {
                    Err(e) => break e.body(),
                    Ok(()) => match exchange.keep(&s, &answer).await {
                        Ok(()) => {
                            break json!({"type": "done", "finish_reason": finish, "usage": usage, "timings": timings})
                        }
                        Err(e) => break e.body(),
                    },
                },
                Event::Failed(e) => break e.body(),
            }
        };
        let mut last = last;
        if last.get("error").is_some() {
            last["type"] = json!("error");
        }
        let _ = frames.send(sse::event(&last)).await;
        let _ = frames.send(sse::DONE.to_owned()).await;
    });
    let out = futures_util::stream::poll_fn(move |cx| out.poll_recv(cx));
    super::llm::sse_body(futures_util::stream::once(async move { sse::event(&head) }).chain(out))
}

/// The embedding model, when the server has one that loads (without, sources are found by their
/// words alone).
async fn embedder(s: &Shared) -> Option<std::sync::Arc<selfcloud_llm::embed::Embedder>> {
    match s.llm.embedder().await {
        Ok(embedder) => Some(embedder),
        Err(e) if s.llm.has_embedder() => {
            tracing::warn!(error = %e.message, "the assistant searches by words alone");
            None
        }
        Err(_) => None,
    }
}

/// After a write: once the owner has asked the assistant, the index is brought up to date
/// shortly after. The pass holds the instance only while it runs (a hibernated instance is not
/// kept open by a pass that waits).
pub(crate) fn after_write(s: &std::sync::Arc<Shared>) {
    if !s.vectors.should_schedule() {
        return;
    }
    let weak = std::sync::Arc::downgrade(s);
    tokio::spawn(async move {
        tokio::time::sleep(INDEX_AFTER_WRITE).await;
        let Some(s) = weak.upgrade() else { return };
        s.vectors.starting_scheduled();
        let Some(embedder) = embedder(&s).await else { return };
        let pass = async {
            let (passages, complete) = read_passages(&s).await?;
            s.vectors.refresh(&s.local, &embedder, &passages, complete, s.llm.limits().assistant_embeds_per_pass).await
        };
        if let Err(e) = pass.await {
            tracing::warn!(error = %e.message, "the assistant's index was not brought up to date");
        }
    });
}

/// The owner's records as passages, page by page, and whether they are all of them (a store
/// past the reading bounds is read in part).
async fn read_passages(s: &Shared) -> Result<(Vec<Passage>, bool), Error> {
    let (mut passages, mut cursor) = (Vec::new(), None::<String>);
    let (mut read, mut bytes) = (0, 0);
    loop {
        let page = s.local.export_records(cursor.as_deref(), 256, 1 << 20).await?;
        for record in page.records {
            // The instance's own collections (the token ledger, the index) are not the owner's
            // notes; the memories the owner gave it are.
            let is_memory = record.collection == memory::memories();
            if record.collection.is_internal() && !is_memory {
                continue;
            }
            let collection = record.collection.as_str().to_owned();
            read += 1;
            let Ok(value) = serde_json::from_slice::<serde_json::Value>(&record.value) else { continue };
            let mut text = match is_memory {
                true => value["text"].as_str().unwrap_or_default().to_owned(),
                false => retrieve::record_text(&value),
            };
            text.truncate(retrieve::prefix(&text, MAX_RECORD_TEXT_BYTES).len());
            bytes += text.len();
            if !text.is_empty() {
                passages.push(Passage { collection, key: record.key.as_str().to_owned(), text });
            }
        }
        match page.cursor {
            Some(next) if read < s.llm.limits().assistant_max_records && bytes < MAX_TEXT_BYTES => cursor = Some(next),
            Some(_) => return Ok((passages, false)),
            None => return Ok((passages, true)),
        }
    }
}
