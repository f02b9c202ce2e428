//! The owner's assistant under `/v1/assistant`, answered by the instance
//! (`selfcloud_instance::service::{assistant, memories}`): owner only, whatever an app's
//! scopes; here only the access check and the documentation.

use crate::auth::Caller;
use crate::error::ApiResult;
use crate::routes::forward::forward;
use crate::routes::ErrorBody;
use crate::state::AppState;
use axum::extract::{Request, State};
use axum::response::Response;
use selfcloud_instance::protocol::Need;
use std::sync::Arc;

async fn owner_only(s: &AppState, caller: &Caller, req: Request) -> ApiResult<Response> {
    caller.check(&Need::Owner)?;
    forward(s, caller, Need::Owner, req).await
}

/// An answer from the owner's own records and memories, with the records it was given
/// (collection and key) as citations, and the conversation it belongs to. Body:
/// `{"message": "...", "collections": ["notes"], "conversation": "<id>"}` (collections: within
/// the assistant's settings; conversation: one to go on with, a new one without).
#[utoipa::path(post, path = "/v1/assistant/chat", tag = "assistant", security(("bearer" = [])),
    request_body(content = Object, content_type = "application/json"),
    responses((status = 200, body = Object), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody),
              (status = 404, body = ErrorBody), (status = 429, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn chat(State(s): State<Arc<AppState>>, caller: Caller, req: Request) -> ApiResult<Response> {
    owner_only(&s, &caller, req).await
}

/// The memories the assistant keeps (GET: `{"memories": [...]}`), or a new one (POST
/// `{"text": "..."}`: 201 with its id); it reads them with every question.
#[utoipa::path(get, path = "/v1/assistant/memories", tag = "assistant", security(("bearer" = [])),
    responses((status = 200, body = Object), (status = 403, body = ErrorBody)))]
pub async fn memories(State(s): State<Arc<AppState>>, caller: Caller, req: Request) -> ApiResult<Response> {
    owner_only(&s, &caller, req).await
}

/// Forgets one memory (204; 404 when there is none of that id).
#[utoipa::path(delete, path = "/v1/assistant/memories/{id}", tag = "assistant", params(("id" = String, Path)),
    security(("bearer" = [])),
    responses((status = 204), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn memory(State(s): State<Arc<AppState>>, caller: Caller, req: Request) -> ApiResult<Response> {
    owner_only(&s, &caller, req).await
}

/// The kept conversations, newest last: id, title (the first question), times, turns.
#[utoipa::path(get, path = "/v1/assistant/conversations", tag = "assistant", security(("bearer" = [])),
    responses((status = 200, body = Object), (status = 403, body = ErrorBody)))]
pub async fn conversations(State(s): State<Arc<AppState>>, caller: Caller, req: Request) -> ApiResult<Response> {
    owner_only(&s, &caller, req).await
}

/// One conversation with its turns (GET), or gone (DELETE: 204).
#[utoipa::path(get, path = "/v1/assistant/conversations/{id}", tag = "assistant", params(("id" = String, Path)),
    security(("bearer" = [])),
    responses((status = 200, body = Object), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn conversation(State(s): State<Arc<AppState>>, caller: Caller, req: Request) -> ApiResult<Response> {
    owner_only(&s, &caller, req).await
}

/// The assistant's settings (GET), or new ones (PUT `{"collections": ["notes"]}`, `null` for
/// all): the collections it may read.
#[utoipa::path(get, path = "/v1/assistant/settings", tag = "assistant", security(("bearer" = [])),
    responses((status = 200, body = Object), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn settings(State(s): State<Arc<AppState>>, caller: Caller, req: Request) -> ApiResult<Response> {
    owner_only(&s, &caller, req).await
}
