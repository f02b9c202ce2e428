//! What the owner's assistant keeps, owner only: memories (`/v1/assistant/memories`), kept
//! conversations (`/v1/assistant/conversations`) and its settings (`/v1/assistant/settings`:
//! the collections it may read). The rules and storage are `crate::memory`'s; the routes are
//! declared with the assistant's part (`super::assistant::PART`).

use super::{Ctx, S};
use crate::api::{ApiJson, ApiPath, ApiResult};
use crate::memory::{self, AssistantSettings};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;

pub(crate) async fn list(s: S) -> ApiResult<Response> {
    Ok(Json(json!({"memories": memory::list_memories(&s.local).await?})).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct NewMemory {
    text: String,
}

pub(crate) async fn add(s: S, ctx: Ctx, ApiJson(new): ApiJson<NewMemory>) -> ApiResult<Response> {
    let memory = memory::add_memory(&s.local, &new.text, s.llm.limits().assistant_max_memories, ctx.0.now_ms).await?;
    super::assistant::after_write(&s);
    Ok((StatusCode::CREATED, Json(memory)).into_response())
}

pub(crate) async fn delete(s: S, ApiPath(id): ApiPath<String>) -> ApiResult<Response> {
    memory::delete_memory(&s.local, &id).await?;
    super::assistant::after_write(&s);
    Ok(StatusCode::NO_CONTENT.into_response())
}

pub(crate) async fn conversations(s: S) -> ApiResult<Response> {
    Ok(Json(json!({"conversations": memory::list_conversations(&s.local).await?})).into_response())
}

pub(crate) async fn conversation(s: S, ApiPath(id): ApiPath<String>) -> ApiResult<Response> {
    Ok(Json(memory::conversation(&s.local, &id).await?).into_response())
}

pub(crate) async fn delete_conversation(s: S, ApiPath(id): ApiPath<String>) -> ApiResult<Response> {
    memory::delete_conversation(&s.local, &id).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

pub(crate) async fn settings(s: S) -> ApiResult<Response> {
    Ok(Json(memory::settings(&s.local).await?).into_response())
}

pub(crate) async fn set_settings(s: S, ApiJson(new): ApiJson<AssistantSettings>) -> ApiResult<Response> {
    memory::set_settings(&s.local, &new).await?;
    Ok(Json(new).into_response())
}
