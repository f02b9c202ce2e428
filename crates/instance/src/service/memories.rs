//! What the owner's assistant keeps, owner only: memories (`/v1/assistant/memories`), kept
//! conversations (`/v1/assistant/conversations`) and its settings (`/v1/assistant/settings`:
//! the collections it may read). The rules and storage are `crate::memory`'s.

use super::{Ctx, S};
use crate::api::{ApiJson, ApiPath, ApiResult};
use crate::memory::{self, AssistantSettings};
use crate::protocol::Need;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;

pub(crate) async fn list(s: S, ctx: Ctx) -> ApiResult<Response> {
    ctx.require(&Need::Owner)?;
    Ok(Json(json!({"memories": memory::list_memories(&s.local).await?})).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct NewMemory {
    text: String,
}

pub(crate) async fn add(s: S, ctx: Ctx, ApiJson(new): ApiJson<NewMemory>) -> ApiResult<Response> {
    ctx.require(&Need::Owner)?;
    let memory = memory::add_memory(&s.local, &new.text, s.llm.limits().assistant_max_memories, ctx.0.now_ms).await?;
    super::assistant::after_write(&s);
    Ok((StatusCode::CREATED, Json(memory)).into_response())
}

pub(crate) async fn delete(s: S, ctx: Ctx, ApiPath(id): ApiPath<String>) -> ApiResult<Response> {
    ctx.require(&Need::Owner)?;
    memory::delete_memory(&s.local, &id).await?;
    super::assistant::after_write(&s);
    Ok(StatusCode::NO_CONTENT.into_response())
}

pub(crate) async fn conversations(s: S, ctx: Ctx) -> ApiResult<Response> {
    ctx.require(&Need::Owner)?;
    Ok(Json(json!({"conversations": memory::list_conversations(&s.local).await?})).into_response())
}

pub(crate) async fn conversation(s: S, ctx: Ctx, ApiPath(id): ApiPath<String>) -> ApiResult<Response> {
    ctx.require(&Need::Owner)?;
    Ok(Json(memory::conversation(&s.local, &id).await?).into_response())
}

pub(crate) async fn delete_conversation(s: S, ctx: Ctx, ApiPath(id): ApiPath<String>) -> ApiResult<Response> {
    ctx.require(&Need::Owner)?;
    memory::delete_conversation(&s.local, &id).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

pub(crate) async fn settings(s: S, ctx: Ctx) -> ApiResult<Response> {
    ctx.require(&Need::Owner)?;
    Ok(Json(memory::settings(&s.local).await?).into_response())
}

pub(crate) async fn set_settings(s: S, ctx: Ctx, ApiJson(new): ApiJson<AssistantSettings>) -> ApiResult<Response> {
    ctx.require(&Need::Owner)?;
    memory::set_settings(&s.local, &new).await?;
    Ok(Json(new).into_response())
}
