//! Calls into the caller's instance, on the routes its parts declare (`selfcloud_instance::part`):
//! the gateway has authenticated and rate-limited the caller; here it checks the access the
//! route declares (`protocol::Need`, the rule the instance applies again), then forwards the
//! request as it came, with the call's context and without the client's credentials, and hands
//! back the instance's answer as it streams, rebuilt as an untrusted answer
//! (`crate::untrusted`). The audit middleware records it after.
//!
//! No route is written here: [`routes`] serves every declared public route, and everything about
//! one (its access, whether it is paid in tokens, how long it may take, what it answers) comes
//! from its declaration.

use crate::auth::{Caller, ScopeUsed};
use crate::error::ApiResult;
use crate::state::AppState;
use crate::untrusted::{self, Promise};
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue};
use axum::response::Response;
use axum::routing::{on, MethodFilter};
use axum::Router;
use selfcloud_core::Error;
use selfcloud_instance::part::{Answer, Body, Resolved, Route};
use selfcloud_instance::service::{self, PARTS};
use selfcloud_instance::CallContext;
use std::sync::Arc;
use std::time::Duration;

/// How long a call waits for its instance's answer to begin (a body then streams for as long as
/// the client reads it).
pub const CALL_TIMEOUT: Duration = Duration::from_secs(60);
/// An import answers only once its whole upload is checked: its time is bounded by the upload's
/// size and the gateway's body-read timeout instead.
pub const IMPORT_TIMEOUT: Duration = Duration::from_secs(6 * 3600);

/// The routes of every part, each forwarded by [`call`].
pub fn routes() -> Router<Arc<AppState>> {
    let mut router = Router::new();
    for route in PARTS.iter().flat_map(|part| part.routes.iter()).filter(|r| r.is_public()) {
        let filter = MethodFilter::try_from(route.method.clone()).expect("a declared route's method is a standard one");
        router = router.route(
            route.path,
            on(filter, |State(s): State<Arc<AppState>>, caller: Caller, req: Request| async move {
                call(&s, &caller, req).await
            }),
        );
    }
    router
}

/// Forwards `req` on its declared route: the API's routes, and the Super-App's calls for its
/// pages, which pass the same checks.
pub async fn call(s: &AppState, caller: &Caller, req: Request) -> ApiResult<Response> {
    let (route, params) = match service::resolve(req.method(), req.uri().path())? {
        Resolved::Found(route, params) => (route, params),
        Resolved::WrongMethod | Resolved::NotFound => return Err(Error::not_found("no such endpoint").into()),
    };
    let need = route.need(|name| params.iter().find(|(n, _)| *n == name).map(|(_, v)| v.as_str()))?;
    let used = caller.check(&need)?;
    if route.reads_access_log {
        // The owner always sees their latest requests: what is queued is written first.
        s.audit.flush().await;
    }
    let budget = if route.metered { token_budget(s, caller).await? } else { None };
    let timeout = if route.body == Body::Archive { IMPORT_TIMEOUT } else { CALL_TIMEOUT };
    // A download is named before the instance starts sending it.
    let download = match route.answer {
        Answer::Archive => {
            let profile = s.control.profile(caller.token.user_id).await?;
            let name = format!("attachment; filename=\"selfcloud-{}-{}.tar\"", profile.username, s.clock.now());
            Some(HeaderValue::from_str(&name).map_err(Error::internal)?)
        }
        _ => None,
    };
    let mut resp = send(s, caller, route, req, timeout, budget).await?;
    if let Some(scope) = used {
        resp.extensions_mut().insert(ScopeUsed(scope));
    }
    if let Some(name) = download.filter(|_| resp.status().is_success()) {
        resp.headers_mut().insert(header::CONTENT_DISPOSITION, name);
    }
    Ok(resp)
}

/// Sends a checked call to the caller's instance.
async fn send(
    s: &AppState,
    caller: &Caller,
    route: &Route,
    mut req: Request,
    timeout: Duration,
    token_budget: Option<u64>,
) -> ApiResult<Response> {
    let request_id = req.headers().get("x-request-id").and_then(|v| v.to_str().ok()).map(str::to_owned);
    let mut ctx = CallContext::new(
        caller.actor(),
        &caller.token.scopes,
        request_id,
        s.clock.now_ms(),
        timeout.as_millis() as u64,
    );
    // The owner's LLM use is budgeted on every path in (the dashboard's pages too), not only
    // where a route remembers to say so.
    ctx.token_budget =
        token_budget.or_else(|| caller.is_owner().then(|| s.control.owner_token_budget(caller.token.instance_id)));
    // The instance learns who calls from the context alone; it never sees a credential.
    for name in [header::AUTHORIZATION, header::COOKIE, header::HOST] {
        req.headers_mut().remove(name);
    }
    let instance = s.control.instance(caller.token.instance_id).await?;
    Ok(untrusted::answer(instance.call(&ctx, req).await?, Promise::of(route.answer)).await)
}

/// The caller's daily token budget: an app's is its grant's under the tier's ceiling, the
/// owner's the tier's own setting.
async fn token_budget(s: &AppState, caller: &Caller) -> ApiResult<Option<u64>> {
    if caller.is_owner() {
        return Ok(Some(s.control.owner_token_budget(caller.token.instance_id)));
    }
    match &caller.token.grant {
        Some(g) => Ok(Some(s.control.token_budget(g.grant_id, caller.token.instance_id).await?)),
        None => Ok(None),
    }
}
