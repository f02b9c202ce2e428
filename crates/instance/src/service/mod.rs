//! The instance's own API, served once: an axum router over its parts ([`Shared`]: the store's
//! [`Local`], the LLM, the ledger, the vector index). In process the gateway calls it directly;
//! out of process the same router is served on the instance's socket (`crate::transport`). The paths are the public API's, so the gateway forwards a request as it
//! came, after authenticating, checking its scope, rate-limiting and auditing it; `/system/…`
//! holds the calls only control makes.
//!
//! Every call must carry a [`CallContext`]; each route is served behind the check of the access
//! its declaration names (the same rule the gateway applied: `protocol::check`).

pub mod assistant;
pub mod backup;
pub mod llm;
pub mod memories;
pub mod portability;
#[cfg(feature = "attack-probes")]
mod probes;
pub mod storage;
pub mod system;
pub mod upstream;

use crate::api::ApiError;
use crate::local::Local;
use crate::part::{Part, Resolved, Route};
use crate::protocol::{CallContext, Settings, CONTEXT_HEADER};
use axum::extract::{DefaultBodyLimit, FromRequestParts, RawPathParams, Request, State};
use axum::http::request::Parts;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
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
    /// One backup snapshot at a time (`backup`).
    pub backup_runs: tokio::sync::Mutex<()>,
    pub settings: Settings,
    /// Requests to outside hosts (an upstream provider's), through control's broker.
    pub egress: Option<crate::broker::HttpChannel>,
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
    router_with(local, settings, None)
}

/// How an instance's parts reach outside it: only through control's broker.
pub(crate) struct Outside {
    pub broker: Arc<crate::broker::Broker>,
    /// The shared LLM engine is another process, reached through the broker (the process
    /// runtime); otherwise it is in this one.
    pub engine_beyond: bool,
}

/// [`router`] with the broker through which its parts reach outside.
pub(crate) fn router_with(local: Local, settings: Settings, outside: Option<Outside>) -> Router {
    let body_limit = settings.max_value_bytes + 64 * 1024;
    let engine_broker = outside.as_ref().filter(|o| o.engine_beyond).map(|o| o.broker.clone());
    let llm = crate::llm::Llm::new(settings.llm.clone(), engine_broker);
    let egress = outside.map(|o| {
        let broken = || Error::unavailable("the way out to outside hosts broke; try again", Duration::from_secs(2));
        crate::broker::HttpChannel::new(o.broker, crate::protocol::broker::Channel::Egress, broken)
    });
    let shared = Arc::new(Shared {
        local,
        llm,
        ledger: Default::default(),
        vectors: Default::default(),
        conversation_writes: Default::default(),
        backup_runs: Default::default(),
        settings,
        egress,
        #[cfg(feature = "attack-probes")]
        hostile: Default::default(),
        #[cfg(feature = "attack-probes")]
        audit_unwritable: Default::default(),
    });
    let mut api = Router::new();
    for route in served() {
        let guarded = (route.serve)().route_layer(axum::middleware::from_fn_with_state(route, require));
        api = api.route(route.path, guarded);
    }
    #[cfg(feature = "attack-probes")]
    let api = api.layer(axum::middleware::from_fn_with_state(shared.clone(), probes::hostile));
    api.fallback(crate::api::not_found)
        .method_not_allowed_fallback(crate::api::method_not_allowed)
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(axum::middleware::from_fn(context))
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(crate::api::panicked))
        .with_state(shared)
}

/// The parts of an instance, each declared once (`crate::part`): what the router serves, the
/// gateway forwards and documents, and an import accepts.
pub static PARTS: [&Part; 8] = [
    &storage::PART,
    &portability::PART,
    &system::AUDIT,
    &llm::PART,
    &upstream::PART,
    &assistant::PART,
    &backup::PART,
    &system::PART,
];

/// The routes this build serves: the parts', and in a test build the attack probes.
fn served() -> impl Iterator<Item = &'static Route> {
    let routes = PARTS.iter().flat_map(|part| part.routes.iter());
    #[cfg(feature = "attack-probes")]
    let routes = routes.chain(probes::PART.routes.iter());
    routes
}

/// The declared route of a public `method` and `path`, the gateway's way to find what it forwards.
pub fn resolve(method: &http::Method, path: &str) -> Result<Resolved<'static>> {
    crate::part::resolve(PARTS.iter().flat_map(|p| p.routes.iter()).filter(|r| r.is_public()), method, path)
}

/// Whether a part of an instance declares `channel`: control's broker hands an instance only
/// those.
pub fn declares_channel(channel: crate::protocol::broker::Channel) -> bool {
    PARTS.iter().any(|part| part.channels.contains(&channel))
}

/// Whether `collection` is an internal one a part keeps sealed (`Part::sealed`): in no export.
pub(crate) fn is_sealed_collection(collection: &selfcloud_core::Collection) -> bool {
    collection.as_str().strip_prefix('_').is_some_and(|name| PARTS.iter().any(|part| part.sealed.contains(&name)))
}

/// Whether `name` (without its `_`) is an internal collection an import may hold.
pub(crate) fn is_internal_collection(name: &str) -> bool {
    PARTS.iter().any(|part| part.collections.contains(&name))
}

/// Checks a call may do what its route's access names, before the route's handler runs: the
/// rule the gateway applied, applied again to what the instance is handed.
async fn require(State(route): State<&'static Route>, params: RawPathParams, req: Request, next: Next) -> Response {
    let need = route.need(|name| params.iter().find(|(n, _)| *n == name).map(|(_, v)| v));
    let ctx = req.extensions().get::<Ctx>();
    match (need, ctx) {
        (Ok(need), Some(ctx)) => match ctx.0.check(&need) {
            Ok(_) => next.run(req).await,
            Err(e) => ApiError(e).into_response(),
        },
        (Err(e), _) => ApiError(e).into_response(),
        (_, None) => ApiError(Error::internal("no call context")).into_response(),
    }
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

impl<St: Send + Sync> FromRequestParts<St> for Ctx {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, _: &St) -> std::result::Result<Self, ApiError> {
        parts.extensions.get::<Ctx>().cloned().ok_or_else(|| ApiError(Error::internal("no call context")))
    }
}

#[cfg(test)]
mod tests;
