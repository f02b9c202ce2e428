//! The private LLM under `/v1/llm`, answered by the instance
//! (`selfcloud_instance::service::llm`); here only the access check and the documentation.

use crate::auth::Caller;
use crate::error::ApiResult;
use crate::routes::forward::{forward, forward_with, CALL_TIMEOUT};
use crate::routes::ErrorBody;
use crate::state::AppState;
use axum::extract::{Request, State};
use axum::response::Response;
use selfcloud_core::Scope;
use selfcloud_instance::protocol::Need;
use std::sync::Arc;

/// The model the instance's assistant runs, in OpenAI's list shape.
#[utoipa::path(get, path = "/v1/llm/models", tag = "llm", security(("bearer" = ["llm:chat"])),
    responses((status = 200, body = Object), (status = 403, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn models(State(s): State<Arc<AppState>>, caller: Caller, req: Request) -> ApiResult<Response> {
    forward(&s, &caller, Need::Scope(Scope::LlmChat), req).await
}

/// An OpenAI chat completion: JSON, or with `stream: true` server-sent `chat.completion.chunk`
/// events ending in `data: [DONE]`.
#[utoipa::path(post, path = "/v1/llm/chat/completions", tag = "llm", security(("bearer" = ["llm:chat"])),
    request_body(content = Object, content_type = "application/json"),
    responses((status = 200, body = Object), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody),
              (status = 429, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn chat(State(s): State<Arc<AppState>>, caller: Caller, req: Request) -> ApiResult<Response> {
    budgeted(&s, &caller, Scope::LlmChat, req).await
}

/// OpenAI embeddings of one text or a list: unit-length vectors (floats, or base64 with
/// `encoding_format: "base64"`), paid from the caller's token budget like a chat.
#[utoipa::path(post, path = "/v1/llm/embeddings", tag = "llm", security(("bearer" = ["llm:embed"])),
    request_body(content = Object, content_type = "application/json"),
    responses((status = 200, body = Object), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody),
              (status = 429, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn embeddings(State(s): State<Arc<AppState>>, caller: Caller, req: Request) -> ApiResult<Response> {
    budgeted(&s, &caller, Scope::LlmEmbed, req).await
}

/// A call the app pays for in tokens: the scope checked, then forwarded with the budget that
/// applies.
async fn budgeted(s: &AppState, caller: &Caller, scope: Scope, req: Request) -> ApiResult<Response> {
    let need = Need::Scope(scope);
    caller.check(&need)?;
    forward_with(s, caller, need, req, CALL_TIMEOUT, token_budget(s, caller).await?).await
}

/// The caller's daily token budget: an app's is its grant's under the tier's ceiling, the
/// owner's the tier's own setting.
pub(crate) async fn token_budget(s: &AppState, caller: &Caller) -> ApiResult<Option<u64>> {
    if caller.is_owner() {
        return Ok(Some(s.control.owner_token_budget(caller.token.instance_id)));
    }
    match &caller.token.grant {
        Some(g) => Ok(Some(s.control.token_budget(g.grant_id, caller.token.instance_id).await?)),
        None => Ok(None),
    }
}

/// What each app spent of the LLM today, and when the day's budgets reset (owner only).
#[utoipa::path(get, path = "/v1/llm/usage", tag = "llm", security(("bearer" = [])),
    responses((status = 200, body = Object), (status = 403, body = ErrorBody)))]
pub async fn usage(State(s): State<Arc<AppState>>, caller: Caller, req: Request) -> ApiResult<Response> {
    caller.check(&Need::Owner)?;
    forward(&s, &caller, Need::Owner, req).await
}
