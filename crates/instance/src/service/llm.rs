//! The private LLM, OpenAI-shaped: `GET /v1/llm/models`, `POST /v1/llm/chat/completions` (one
//! JSON answer, or `stream: true` as SSE `chat.completion.chunk` frames ending in `[DONE]`) and
//! `POST /v1/llm/embeddings`.
//! Handlers only move HTTP in and out: the request rules are `selfcloud_llm::openai`'s, the
//! generation the engine's.

use super::{Ctx, Shared, S};
use crate::api::{json_body, ApiBytes, ApiResult};
use crate::ledger::OWNER;
use crate::part::{Access, Answer, Part, Route};
use crate::protocol::Actor;
use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderValue, Method};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Json;
use futures_util::StreamExt;
use selfcloud_core::{Error, Scope};
use selfcloud_llm::budget::{self, Allowance, Meter};
use selfcloud_llm::constraint::Constraint;
use selfcloud_llm::embeddings::{self, EmbeddingsRequest};
use selfcloud_llm::engine::collect;
use selfcloud_llm::openai::{self, ChatRequest, Generation, Header};
use selfcloud_llm::tools::{self, CallScan, Said};
use selfcloud_llm::{sse, Engine, Event, Events};
use serde_json::json;
use std::sync::Arc;

pub static PART: Part = Part {
    name: "llm",
    about: "The instance's private LLM, OpenAI-shaped: prompts, answers and vectors never leave the instance.",
    routes: &[
        Route::new(Method::GET, "/v1/llm/models", Access::Scope(Scope::LlmChat), "The model the instance's assistant runs, in OpenAI's list shape.", || get(models))
            .errors(&[403, 503]),
        Route::new(
            Method::POST,
            "/v1/llm/chat/completions",
            Access::Scope(Scope::LlmChat),
            "An OpenAI chat completion: JSON, or with `stream: true` server-sent `chat.completion.chunk` events ending in `data: [DONE]`.",
            || post(chat),
        )
        .body(crate::part::Body::Json)
        .answer(Answer::JsonOrEvents)
        .metered()
        .errors(&[400, 403, 429, 503]),
        Route::new(
            Method::POST,
            "/v1/llm/embeddings",
            Access::Scope(Scope::LlmEmbed),
            "OpenAI embeddings of one text or a list: unit-length vectors (floats, or base64 with `encoding_format: \"base64\"`), paid from the caller's token budget like a chat.",
            || post(embeddings),
        )
        .body(crate::part::Body::Json)
        .metered()
        .errors(&[400, 403, 429, 503]),
        Route::new(Method::GET, "/v1/llm/usage", Access::Owner, "What each app spent of the LLM today, and when the day's budgets reset (owner only).", || get(usage))
            .errors(&[403]),
    ],
    collections: &[crate::ledger::COLLECTION],
    sealed: &[],
    channels: &[crate::protocol::broker::Channel::LlmEngine],
};

/// The instance's model, and the upstream provider's when the owner named one.
async fn models(s: S) -> ApiResult<Response> {
    let mut data = Vec::new();
    if let Some(p) = super::upstream::provider(&s).await? {
        data.push(json!({"id": p.model, "object": "model", "created": 0, "owned_by": "upstream"}));
    }
    match s.llm.engine().await {
        Ok(engine) => {
            let m = engine.model();
            data.insert(
                0,
                json!({"id": m.id, "object": "model", "created": 0, "owned_by": "selfcloud",
                                  "context_length": m.context_tokens, "size_bytes": m.size_bytes}),
            );
        }
        Err(e) if data.is_empty() => return Err(e.into()),
        Err(_) => {}
    }
    Ok(Json(json!({"object": "list", "data": data})).into_response())
}

async fn chat(s: S, ctx: Ctx, headers: HeaderMap, ApiBytes(body): ApiBytes) -> ApiResult<Response> {
    // A chat naming the owner's upstream provider's model goes there, as the caller wrote it.
    if let Some(provider) = super::upstream::chosen(&s, &headers, &body).await? {
        return super::upstream::chat(&s, &ctx, provider, body).await;
    }
    let request: ChatRequest = json_body(&headers, &body)?;
    let generation = request.validate(s.llm.limits())?;
    let engine = s.llm.engine().await?;
    let header = Header {
        id: format!("chatcmpl-{}", ctx.0.request_id.as_deref().unwrap_or("local")),
        created_s: ctx.0.now_ms / 1000,
        model: engine.model().id.clone(),
    };
    let (stream, include_usage) = (generation.stream, generation.include_usage);
    let only_calls = matches!(generation.constraint, Some(Constraint::ToolCalls { .. }));
    let tools = generation.tools.clone();
    let (events, settled) = start(&s, &engine, &ctx, generation).await?;
    if !stream {
        let (text, finish, usage, timings) = collect(events).await?;
        settled.wait().await?;
        let (content, calls) = tools::read(tools, only_calls, &text);
        let finish = tools::finish(finish, calls.len());
        let mut answer = openai::completion(&header, &content, &calls, finish, usage);
        answer["timings"] = json!(timings);
        return Ok(Json(answer).into_response());
    }
    Ok(sse_response(header, events, include_usage, CallScan::new(tools, only_calls), settled))
}

/// Vectors of the texts, by the embedding model. An app pays the tokens the model read from its
/// budget: texts that are more than it leaves are refused whole (429 `budget_exceeded`) before
/// anything is computed.
async fn embeddings(s: S, ctx: Ctx, headers: HeaderMap, ApiBytes(body): ApiBytes) -> ApiResult<Response> {
    let request: EmbeddingsRequest = json_body(&headers, &body)?;
    let embedder = s.llm.embedder().await?;
    let embedding = request.validate(s.llm.max_embedding_inputs(), embedder.dimensions())?;
    let Payment { allowance, meter, settled, .. } = payment(&s, &ctx).await?;
    let embedded = embedder.embed(embedding.texts, allowance, meter)?.await.map_err(Error::internal)??;
    settled.wait().await?;
    let answer = embeddings::answer(&embedder.model().id, &embedded.vectors, embedded.tokens, embedding.base64);
    Ok(Json(answer).into_response())
}

/// `GET /v1/llm/usage`: what each app, and the owner's own calls, spent today (owner only), and
/// when the day resets.
async fn usage(s: S, ctx: Ctx) -> ApiResult<Response> {
    let now_ms = ctx.0.now_ms;
    let (owner, apps): (Vec<_>, Vec<_>) =
        s.ledger.day(&s.local, now_ms).await?.into_iter().partition(|d| d.grant_id == OWNER);
    let owner = owner
        .first()
        .map_or(json!({"tokens": 0, "requests": 0}), |o| json!({"tokens": o.tokens, "requests": o.requests}));
    Ok(Json(json!({
        "day_start_ms": budget::window(now_ms),
        "resets_at_ms": budget::resets_at(now_ms),
        "apps": apps,
        "owner": owner,
    }))
    .into_response())
}

/// Starts `generation` for the caller: tagged with who asks (the engine's KV cache is reused for
/// the same caller only: the owner, or one grant, whose sign-ins share it), and off the async
/// threads (templating and tokenizing a long prompt takes milliseconds). The caller pays from
/// its token budget ([`payment`]); the answer ends only once that is written ([`Settled`]).
pub(crate) async fn start(
    s: &Arc<Shared>,
    engine: &Arc<dyn Engine>,
    ctx: &Ctx,
    mut generation: Generation,
) -> Result<(Events, Settled), Error> {
    let Payment { caller, allowance, meter, settled } = payment(s, ctx).await?;
    (generation.caller, generation.allowance, generation.meter) = (caller, allowance, meter);
    generation.tenant = s.settings.id.to_string();
    let engine = engine.clone();
    let events = tokio::task::spawn_blocking(move || engine.generate(generation)).await.map_err(Error::internal)??;
    Ok((events, settled))
}

/// Who pays for a call and how: the caller's tag (whose KV cache it may reuse), what its budget
/// leaves, the meter that bills it, and word of the bill being written.
pub(crate) struct Payment {
    pub caller: String,
    pub allowance: Option<Allowance>,
    pub meter: Meter,
    pub settled: Settled,
}

/// Word that what a call spent is in the ledger; an answer waits for it before it ends, so a
/// call whose use could not be recorded ends with the ledger's error rather than as a success.
pub(crate) struct Settled(Option<tokio::sync::oneshot::Receiver<Result<(), Error>>>);

/// Longest an ended answer waits for its charge to be written (a local write: milliseconds).
const SETTLE_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

impl Settled {
    pub async fn wait(self) -> Result<(), Error> {
        let Some(written) = self.0 else { return Ok(()) };
        match tokio::time::timeout(SETTLE_WAIT, written).await {
            Ok(Ok(written)) => written,
            _ => Err(Error::internal("what this call spent was not recorded in time")),
        }
    }
}

/// Who pays for a call, what their budget leaves it, and the meter that bills it. An app waits
/// for its turn ([`crate::ledger::Ledger::begin`]); what the call computed is written to the
/// ledger once the engine is done with the meter, and only then does the app's next call start.
/// What could not be written is owed: the app's next call writes it first, or is refused. The
/// owner pays the same way, under [`OWNER`], from the daily budget of their tier.
pub(crate) async fn payment(s: &Arc<Shared>, ctx: &Ctx) -> Result<Payment, Error> {
    let now_ms = ctx.0.now_ms;
    let (payer, app, caller) = match &ctx.0.actor {
        Actor::App { grant_id, name, .. } => (grant_id.clone(), name.clone(), format!("grant:{grant_id}")),
        Actor::Owner => (OWNER.to_owned(), OWNER.to_owned(), "owner".to_owned()),
        Actor::System => return Ok(Payment::free("system")),
    };
    let (turn, allowance) = s.ledger.begin(&s.local, &payer, &app, ctx.0.token_budget, now_ms).await?;
    let (written, settled) = tokio::sync::oneshot::channel();
    let shared = s.clone();
    // The last holder may be an engine's thread: the charge runs on this runtime.
    let runtime = tokio::runtime::Handle::current();
    let meter = Meter::billed(move |tokens| {
        runtime.spawn(async move {
            let charged = match tokens {
                0 => Ok(()),
                _ => shared.ledger.charge(&shared.local, &payer, &app, now_ms, tokens).await,
            };
            if let Err(e) = &charged {
                tracing::error!(error = %e.message, "LLM use could not be written to the ledger; it is owed");
                // Owed before the turn is let go, so the payer's next call finds the debt.
                shared.ledger.owe(&payer, &app, now_ms, tokens);
            }
            drop(turn);
            let _ = written.send(charged);
        });
    });
    Ok(Payment { caller, allowance, meter, settled: Settled(Some(settled)) })
}

impl Payment {
    fn free(caller: &str) -> Self {
        Payment { caller: caller.into(), allowance: None, meter: Meter::default(), settled: Settled(None) }
    }
}

/// The answer as server-sent events: the role first, then text as it comes, the finish reason,
/// the usage if asked for, and `[DONE]`. Tool calls the model makes come each whole in a chunk of
/// its own as its block closes ([`CallScan`]). A fault after the head went out arrives as an
/// `error` event (the OpenAI clients raise it), as does a use the ledger could not record, in
/// place of the finish. The client going away drops `events`, which stops the generation.
fn sse_response(
    header: Header,
    events: selfcloud_llm::Events,
    include_usage: bool,
    mut scan: CallScan,
    settled: Settled,
) -> Response {
    let first = sse::event(&openai::chunk(&header, json!({"role": "assistant", "content": ""}), None, include_usage));
    let mut settled = Some(settled);
    let frames = tokio_stream_of(events).then(move |event| {
        let settled = match event {
            Event::Done { .. } => settled.take(),
            _ => None,
        };
        async move {
            match settled {
                Some(settled) => settled.wait().await.map_or_else(Event::Failed, |()| event),
                None => event,
            }
        }
    });
    let frames = frames.flat_map(move |event| {
        let said = |said: Vec<Said>| -> Vec<String> {
            let delta = |s: Said| match s {
                Said::Text(text) => json!({"content": text}),
                Said::Call(index, call) => call.delta(index),
            };
            said.into_iter().map(|s| sse::event(&openai::chunk(&header, delta(s), None, include_usage))).collect()
        };
        let frames: Vec<String> = match event {
            Event::Delta(text) => said(scan.push(&text)),
            Event::Done { finish, usage, timings } => {
                let mut frames = said(scan.finish());
                let finish = tools::finish(finish, scan.calls);
                let mut last = openai::chunk(&header, json!({}), Some(finish), include_usage);
                last["timings"] = json!(timings);
                frames.push(sse::event(&last));
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
