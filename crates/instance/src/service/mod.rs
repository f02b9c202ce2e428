//! The instance's own API, served once: an axum router over its parts ([`Shared`]: the store's
//! [`Local`], the LLM, the ledger, the vector index). In process the gateway calls it directly;
//! out of process the same router is served on the instance's socket (`crate::transport`). The paths are the public API's, so the gateway forwards a request as it
//! came, after authenticating, checking its scope, rate-limiting and auditing it; `/system/…`
//! holds the calls only control makes.
//!
//! Every call must carry a [`CallContext`]; each handler checks the access it needs against it
//! (the same rule the gateway applied: `protocol::check`).

pub mod assistant;
pub mod llm;
pub mod memories;
pub mod portability;
#[cfg(feature = "attack-probes")]
mod probes;
pub mod storage;
pub mod system;

use crate::api::ApiError;
use crate::local::Local;
use crate::protocol::{CallContext, Need, Settings, CONTEXT_HEADER};
use axum::extract::{DefaultBodyLimit, FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use axum::Router;
use selfcloud_core::{Error, Result};
use std::sync::Arc;
use std::time::Duration;

/// What the handlers share.
pub(crate) struct Shared {
    pub local: Local,
    pub llm: crate::llm::Llm,
    pub ledger: crate::ledger::Ledger,
    pub vectors: crate::vectors::VectorIndex,
    /// One conversation write at a time (`memory::add_exchange`).
    pub conversation_writes: tokio::sync::Mutex<()>,
    pub settings: Settings,
    /// How this instance answers when a test has turned it hostile (`probes::Hostility`).
    #[cfg(feature = "attack-probes")]
    pub hostile: std::sync::Mutex<probes::Hostility>,
    /// Every audit append fails as on a full disk while a test has set it (`probes`).
    #[cfg(feature = "attack-probes")]
    pub audit_unwritable: std::sync::atomic::AtomicBool,
}

type S = State<Arc<Shared>>;

/// The instance's API over its parts.
pub fn router(local: Local, settings: Settings) -> Router {
    let body_limit = settings.max_value_bytes + 64 * 1024;
    let llm = crate::llm::Llm::new(settings.llm.clone());
    let shared = Arc::new(Shared {
        local,
        llm,
        ledger: Default::default(),
        vectors: Default::default(),
        conversation_writes: Default::default(),
        settings,
        #[cfg(feature = "attack-probes")]
        hostile: Default::default(),
        #[cfg(feature = "attack-probes")]
        audit_unwritable: Default::default(),
    });
    let api = Router::new()
        .route("/v1/storage/{collection}", get(storage::list))
        .route("/v1/storage/{collection}/{key}", put(storage::put).get(storage::get).delete(storage::delete))
        .route("/v1/llm/models", get(llm::models))
        .route("/v1/llm/chat/completions", post(llm::chat))
        .route("/v1/llm/embeddings", post(llm::embeddings))
        .route("/v1/llm/usage", get(llm::usage))
        .route("/v1/assistant/chat", post(assistant::chat))
        .route("/v1/assistant/memories", get(memories::list).post(memories::add))
        .route("/v1/assistant/memories/{id}", delete(memories::delete))
        .route("/v1/assistant/conversations", get(memories::conversations))
        .route("/v1/assistant/conversations/{id}", get(memories::conversation).delete(memories::delete_conversation))
        .route("/v1/assistant/settings", get(memories::settings).put(memories::set_settings))
        .route("/v1/export", get(portability::export))
        .route("/v1/import", post(portability::import))
        .route("/v1/audit", get(system::read_audit))
        .route("/system/usage", get(system::usage))
        .route("/system/quota", put(system::set_quota))
        .route("/system/verify", post(system::verify))
        .route("/system/audit", post(system::append_audit));
    #[cfg(feature = "attack-probes")]
    let api = api
        .route("/system/probe", post(probes::run))
        .layer(axum::middleware::from_fn_with_state(shared.clone(), probes::hostile));
    api.fallback(crate::api::not_found)
        .method_not_allowed_fallback(crate::api::method_not_allowed)
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(axum::middleware::from_fn(context))
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(crate::api::panicked))
        .with_state(shared)
}

/// Reads the call context and holds the call to its deadline (for the answer's head; a body
/// then streams for as long as the caller reads it).
async fn context(mut req: Request, next: Next) -> Response {
    let ctx = match req.headers().get(CONTEXT_HEADER).map(|v| v.to_str().map(CallContext::decode)) {
        Some(Ok(Ok(ctx))) => ctx,
        Some(Ok(Err(e))) => return ApiError(e).into_response(),
        _ => return ApiError(Error::invalid("a call to an instance carries its context")).into_response(),
    };
    let budget = Duration::from_millis(ctx.timeout_ms);
    req.extensions_mut().insert(Ctx(Arc::new(ctx)));
    match tokio::time::timeout(budget, next.run(req)).await {
        Ok(resp) => resp,
        Err(_) => {
            ApiError(Error::unavailable("the instance did not answer in time", Duration::from_secs(1))).into_response()
        }
    }
}

/// The call's context, for handlers.
#[derive(Clone)]
pub(crate) struct Ctx(pub Arc<CallContext>);

impl Ctx {
    pub fn require(&self, need: &Need) -> Result<()> {
        self.0.check(need).map(drop)
    }
}

impl<St: Send + Sync> FromRequestParts<St> for Ctx {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, _: &St) -> std::result::Result<Self, ApiError> {
        parts.extensions.get::<Ctx>().cloned().ok_or_else(|| ApiError(Error::internal("no call context")))
    }
}

#[cfg(test)]
mod tests;
