//! The private LLM, OpenAI-shaped: `GET /v1/llm/models`, `POST /v1/llm/chat/completions` (one
//! JSON answer, or `stream: true` as SSE `chat.completion.chunk` frames ending in `[DONE]`) and
//! `POST /v1/llm/embeddings`.
//! Handlers only move HTTP in and out: the request rules are `selfcloud_llm::openai`'s, the
//! generation the engine's.

use super::{Ctx, Shared, S};
use crate::api::{json_body, ApiBytes, ApiResult};
use crate::protocol::{Actor, Need};
use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::StreamExt;
use selfcloud_core::{Error, Scope};
use selfcloud_llm::budget::{self, Allowance, Meter};
use selfcloud_llm::embeddings::{self, EmbeddingsRequest};
use selfcloud_llm::engine::collect;
use selfcloud_llm::openai::{self, ChatRequest, Generation, Header};
use selfcloud_llm::{sse, Engine, Event, Events};
use serde_json::json;
use std::sync::Arc;

pub(crate) async fn models(s: S, ctx: Ctx) -> ApiResult<Response> {
    ctx.require(&Need::Scope(Scope::LlmChat))?;
    let engine = s.llm.engine().await?;
    let m = engine.model();
    Ok(Json(json!({
        "object": "list",
        "data": [{"id": m.id, "object": "model", "created": 0, "owned_by": "selfcloud",
                  "context_length": m.context_tokens, "size_bytes": m.size_bytes}],
    }))
    .into_response())
}

pub(crate) async fn chat(s: S, ctx: Ctx, headers: HeaderMap, ApiBytes(body): ApiBytes) -> ApiResult<Response> {
    ctx.require(&Need::Scope(Scope::LlmChat))?;
    let request: ChatRequest = json_body(&headers, &body)?;
    let generation = request.validate(s.llm.limits())?;
    let engine = s.llm.engine().await?;
    let header = Header {
        id: format!("chatcmpl-{}", ctx.0.request_id.as_deref().unwrap_or("local")),
        created_s: ctx.0.now_ms / 1000,
        model: engine.model().id.clone(),
    };
    let (stream, include_usage) = (generation.stream, generation.include_usage);
    let events = start(&s, &engine, &ctx, generation).await?;
    if !stream {
        let (text, finish, usage, timings) = collect(events).await?;
        let mut answer = openai::completion(&header, &text, finish, usage);
        answer["timings"] = json!(timings);
        return Ok(Json(answer).into_response());
    }
    Ok(sse_response(header, events, include_usage))
}

/// Vectors of the texts, by the embedding model. An app pays the tokens the model read from its
/// budget: texts that are more than it leaves are refused whole (429 `budget_exceeded`) before
/// anything is computed.
pub(crate) async fn embeddings(s: S, ctx: Ctx, headers: HeaderMap, ApiBytes(body): ApiBytes) -> ApiResult<Response> {
    ctx.require(&Need::Scope(Scope::LlmEmbed))?;
    let request: EmbeddingsRequest = json_body(&headers, &body)?;
    let embedder = s.llm.embedder().await?;
    let embedding = request.validate(s.llm.max_embedding_inputs(), embedder.dimensions())?;
    let (_, allowance, meter) = payment(&s, &ctx).await?;
    let embedded = embedder.embed(embedding.texts, allowance, meter)?.await.map_err(Error::internal)??;
    let answer = embeddings::answer(&embedder.model().id, &embedded.vectors, embedded.tokens, embedding.base64);
    Ok(Json(answer).into_response())
}

/// `GET /v1/llm/usage`: what each app spent today (owner only), and when the day resets.
pub(crate) async fn usage(s: S, ctx: Ctx) -> ApiResult<Response> {
    ctx.require(&Need::Owner)?;
    let now_ms = ctx.0.now_ms;
    let apps = s.ledger.day(&s.local, now_ms).await?;
    Ok(Json(json!({
        "day_start_ms": budget::window(now_ms),
        "resets_at_ms": budget::resets_at(now_ms),
        "apps": apps,
    }))
    .into_response())
}

/// Starts `generation` for the caller: tagged with who asks (the engine's KV cache is reused for
/// the same caller only: the owner, or one grant, whose sign-ins share it), and off the async
/// threads (templating and tokenizing a long prompt takes milliseconds). An app pays from its
/// token budget ([`payment`]).
pub(crate) async fn start(
    s: &Arc<Shared>,
    engine: &Arc<dyn Engine>,
    ctx: &Ctx,
    mut generation: Generation,
) -> Result<Events, Error> {
    (generation.caller, generation.allowance, generation.meter) = payment(s, ctx).await?;
    generation.tenant = s.settings.id.to_string();
    let engine = engine.clone();
    tokio::task::spawn_blocking(move || engine.generate(generation)).await.map_err(Error::internal)?
}

/// Who pays for a call, what their budget leaves it, and the meter that bills it. An app waits
/// for its turn ([`crate::ledger::Ledger::begin`]); what the call computed is written to the
/// ledger once the engine and the answer are both done with the meter, and only then does the
/// app's next call start. The owner has no budget.
pub(crate) async fn payment(s: &Arc<Shared>, ctx: &Ctx) -> Result<(String, Option<Allowance>, Meter), Error> {
    let now_ms = ctx.0.now_ms;
    match &ctx.0.actor {
        Actor::App { grant_id, name, .. } => {
            let (turn, allowance) = s.ledger.begin(&s.local, grant_id, ctx.0.token_budget, now_ms).await?;
            let (shared, grant, app) = (s.clone(), grant_id.clone(), name.clone());
            // The last holder may be an engine's thread: the charge runs on this runtime.
            let runtime = tokio::runtime::Handle::current();
            let meter = Meter::billed(move |tokens| {
                runtime.spawn(async move {
                    if tokens > 0 {
                        if let Err(e) = shared.ledger.charge(&shared.local, &grant, &app, now_ms, tokens).await {
                            tracing::warn!(error = %e.message, "an app's LLM use could not be written to its ledger");
                        }
                    }
                    drop(turn);
                });
            });
            Ok((format!("grant:{grant_id}"), allowance, meter))
        }
        Actor::Owner => Ok(("owner".into(), None, Meter::default())),
        Actor::System => Ok(("system".into(), None, Meter::default())),
    }
}

/// The answer as server-sent events: the role first, then text as it comes, the finish reason,
/// the usage if asked for, and `[DONE]`. A fault after the head went out arrives as an `error`
/// event (the OpenAI clients raise it). The client going away drops `events`, which stops the
/// generation.
fn sse_response(header: Header, events: selfcloud_llm::Events, include_usage: bool) -> Response {
    let first = sse::event(&openai::chunk(&header, json!({"role": "assistant", "content": ""}), None, include_usage));
    let frames = tokio_stream_of(events).flat_map(move |event| {
        let frames: Vec<String> = match event {
            Event::Delta(text) => {
                vec![sse::event(&openai::chunk(&header, json!({"content": text}), None, include_usage))]
            }
            Event::Done { finish, usage, timings } => {
                let mut last = openai::chunk(&header, json!({}), Some(finish), include_usage);
                last["timings"] = json!(timings);
                let mut frames = vec![sse::event(&last)];
                if include_usage {
                    frames.push(sse::event(&openai::usage_chunk(&header, usage)));
                }
                frames.push(sse::DONE.to_owned());
                frames
            }
            Event::Failed(e) => vec![sse::event(&e.body())],
        };
        futures_util::stream::iter(frames)
    });
    sse_body(futures_util::stream::once(async move { first }).chain(frames))
}

/// A response streaming `frames` (whole SSE events) as they come.
pub(crate) fn sse_body(frames: impl futures_util::Stream<Item = String> + Send + 'static) -> Response {
    let body = frames.map(|frame| Ok::<_, std::convert::Infallible>(bytes::Bytes::from(frame)));
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream")),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        ],
        Body::from_stream(body),
    )
        .into_response()
}

fn tokio_stream_of(mut events: selfcloud_llm::Events) -> impl futures_util::Stream<Item = Event> {
    futures_util::stream::poll_fn(move |cx| events.poll_recv(cx))
}
