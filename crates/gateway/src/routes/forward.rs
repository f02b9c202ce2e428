//! Calls into the caller's instance: the gateway has authenticated, rate-limited and checked the
//! access the call needs (`protocol::Need`); it now forwards the request as it came, with the
//! call's context and without the client's credentials, and hands back the instance's answer as
//! it streams, rebuilt as an untrusted answer (`crate::untrusted`). The audit middleware records
//! it after.

use crate::auth::{Caller, ScopeUsed};
use crate::error::ApiResult;
use crate::state::AppState;
use crate::untrusted::{self, Promise};
use axum::extract::Request;
use axum::http::header;
use axum::response::Response;
use selfcloud_instance::protocol::Need;
use selfcloud_instance::CallContext;
use std::time::Duration;

/// How long a call waits for its instance's answer to begin (a body then streams for as long as
/// the client reads it).
pub const CALL_TIMEOUT: Duration = Duration::from_secs(60);
/// An import answers only once its whole upload is checked: its time is bounded by the upload's
/// size and the gateway's body-read timeout instead.
pub const IMPORT_TIMEOUT: Duration = Duration::from_secs(6 * 3600);

/// Checks `need`, then forwards `req` to the caller's instance.
pub async fn forward(s: &AppState, caller: &Caller, need: Need, req: Request) -> ApiResult<Response> {
    forward_within(s, caller, need, req, CALL_TIMEOUT).await
}

/// [`forward`], waiting up to `timeout` for the answer to begin.
pub async fn forward_within(
    s: &AppState,
    caller: &Caller,
    need: Need,
    req: Request,
    timeout: Duration,
) -> ApiResult<Response> {
    forward_with(s, caller, need, req, timeout, None).await
}

/// [`forward_within`], telling the instance the app's daily LLM token budget.
pub async fn forward_with(
    s: &AppState,
    caller: &Caller,
    need: Need,
    mut req: Request,
    timeout: Duration,
    token_budget: Option<u64>,
) -> ApiResult<Response> {
    let used = caller.check(&need)?;
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
    let promise = Promise::of_path(req.uri().path());
    let instance = s.control.instance(caller.token.instance_id).await?;
    let mut resp = untrusted::answer(instance.call(&ctx, req).await?, promise).await;
    if let Some(scope) = used {
        resp.extensions_mut().insert(ScopeUsed(scope));
    }
    Ok(resp)
}
